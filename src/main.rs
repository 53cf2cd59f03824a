fn main() -> std::process::ExitCode {
    csel_auth::cli::run()
}
