//! Writes csel-auth's man pages and shell completions, generated from the
//! command-line definition itself so they never drift from `--help`:
//!
//! ```sh
//! cargo run --example manpages -- OUT_DIR
//! ```
//!
//! `OUT_DIR/man/` gets `csel-auth.1` and one page per subcommand
//! (`csel-auth-serve.1`, ...); `OUT_DIR/completions/` gets `csel-auth.bash`,
//! `_csel-auth` (zsh) and `csel-auth.fish`. scripts/package-deb runs it before
//! `cargo deb`, which installs them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use csel_auth::cli::Cli;

const BIN_NAME: &str = "csel-auth";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: cargo run --example manpages -- OUT_DIR");
        return ExitCode::from(2);
    };
    match write_all(&PathBuf::from(out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn write_all(out: &Path) -> Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    clap_mangen::generate_to(Cli::command(), &man)
        .with_context(|| format!("writing man pages into {}", man.display()))?;
    for (shell, file) in [
        (Shell::Bash, "csel-auth.bash"),
        (Shell::Zsh, "_csel-auth"),
        (Shell::Fish, "csel-auth.fish"),
    ] {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), BIN_NAME, &mut text);
        let path = completions.join(file);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
