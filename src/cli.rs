//! The command line: `serve`, `check`, `explain`, `test`, `eval`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::csel::{Expression, Facts};
use crate::decision::{decide, explain, AccessRequest, Explanation, GrantCheck};
use crate::identity::Htpasswd;
use crate::rules::{lint, LintOptions, Rules};

#[derive(Parser)]
#[command(
    name = "csel-auth",
    version,
    about = "nginx auth_request service for container registries, driven by Nexus-style content selectors"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer nginx auth_request subrequests.
    Serve(ServeArgs),
    /// Validate a rules file, like `nginx -t`: errors (exit 1) and warnings.
    Check(CheckArgs),
    /// Show how one request is decided, and why.
    Explain(ExplainArgs),
    /// Check a file of expected decisions (`allow|deny USER METHOD PATH`).
    Test(TestArgs),
    /// Evaluate one expression against one request (no path checks).
    Eval(EvalArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// The rules file (watched; reloaded when it changes, and on SIGHUP).
    #[arg(long)]
    rules: PathBuf,
    /// Users and bcrypt password hashes, as made by `htpasswd -B` (watched too).
    #[arg(long)]
    htpasswd: Option<PathBuf>,
    /// HOST:PORT, or unix:/path/to.sock.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: crate::service::Listen,
    /// Permissions of the unix socket, in octal.
    #[arg(long, default_value = "660", value_parser = parse_octal)]
    socket_mode: u32,
    /// Format assumed when nginx sends no X-Repository-Format.
    #[arg(long, default_value = "docker")]
    format: String,
    /// Realm of the Basic challenge.
    #[arg(long, default_value = "csel-auth")]
    realm: String,
    /// Serve the docker token realm; this URL is announced in Bearer challenges
    /// (e.g. https://registry.example.com/token).
    #[arg(long)]
    token_realm: Option<String>,
    /// Service name of the token realm (`service` in challenges, `aud` of tokens).
    #[arg(long, default_value = "csel-auth")]
    token_service: String,
    /// File with the token signing key; created (mode 0600) if missing.
    #[arg(long, default_value = "csel-auth.key")]
    token_key: PathBuf,
    /// Lifetime of access tokens, in seconds.
    #[arg(long, default_value_t = 300)]
    token_ttl: u64,
    /// Lifetime of refresh tokens, in seconds.
    #[arg(long, default_value_t = 86_400)]
    refresh_token_ttl: u64,
    /// Seconds between checks of the watched files (besides file events).
    #[arg(long, default_value_t = 2)]
    reload_interval: u64,
    /// bcrypt computations allowed at once.
    #[arg(long, default_value_t = 2)]
    bcrypt_concurrency: usize,
    /// Verified logins remembered (keyed by a secret-keyed hash, never the password).
    #[arg(long, default_value_t = 10_000)]
    login_cache: usize,
    /// Connections served at once; more wait to be accepted.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Log filter: error, warn, info (one line per decision), debug; or a
    /// tracing filter such as `csel_auth::decision=warn,info`.
    #[arg(long, default_value = "info", env = "CSEL_AUTH_LOG")]
    log: String,
    /// Log lines as text or JSON.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn parse_octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|_| format!("`{s}` is not an octal mode such as 660"))
}

fn serve(args: ServeArgs) -> u8 {
    let filter = match tracing_subscriber::EnvFilter::try_new(&args.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: --log `{}`: {e}", args.log);
            return EXIT_ERROR;
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if args.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    let config = crate::service::Config {
        rules: args.rules,
        htpasswd: args.htpasswd,
        listen: args.listen,
        socket_mode: args.socket_mode,
        default_format: args.format,
        basic_realm: args.realm,
        token: args.token_realm.map(|realm| crate::service::TokenConfig {
            realm,
            service: args.token_service,
            key_file: args.token_key,
            ttl: std::time::Duration::from_secs(args.token_ttl),
            refresh_ttl: std::time::Duration::from_secs(args.refresh_token_ttl),
        }),
        reload_period: std::time::Duration::from_secs(args.reload_interval.max(1)),
        bcrypt_concurrency: args.bcrypt_concurrency,
        login_cache: args.login_cache,
        max_connections: args.max_connections,
    };
    crate::service::run(config)
}

#[derive(Args)]
struct CheckArgs {
    /// The rules file.
    rules: PathBuf,
    /// Also check group members and users against this htpasswd file.
    #[arg(long)]
    htpasswd: Option<PathBuf>,
    /// The service runs with --token-realm (the /v2/ ping always challenges).
    #[arg(long)]
    token_mode: bool,
}

#[derive(Args)]
struct ExplainArgs {
    #[arg(long)]
    rules: PathBuf,
    #[arg(long)]
    htpasswd: Option<PathBuf>,
    /// The requesting user; anonymous when absent.
    #[arg(long)]
    user: Option<String>,
    #[arg(long, default_value = "docker")]
    format: String,
    /// The original request's Content-Type (form bodies on blob uploads are refused).
    #[arg(long)]
    content_type: Option<String>,
    /// HTTP method of the original request.
    method: String,
    /// Original path and query, as the client sent them.
    path: String,
}

#[derive(Args)]
struct TestArgs {
    rules: PathBuf,
    /// Lines `allow|deny USER METHOD PATH`; USER `anonymous` or `-` for no login.
    decisions: PathBuf,
    #[arg(long, default_value = "docker")]
    format: String,
}

#[derive(Args)]
struct EvalArgs {
    /// A CSEL expression, e.g. 'format == "docker" and path =^ "/v2/library/"'.
    expression: String,
    #[arg(long)]
    path: String,
    #[arg(long, default_value = "docker")]
    format: String,
    #[arg(long, default_value = "GET")]
    method: String,
    /// The requesting user; anonymous when absent.
    #[arg(long)]
    user: Option<String>,
}

/// Exit statuses shared by `explain`, `eval` and `test`.
const EXIT_YES: u8 = 0;
const EXIT_NO: u8 = 1;
const EXIT_ERROR: u8 = 2;

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    ExitCode::from(match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => check(&args),
        Command::Explain(args) => explain_command(&args),
        Command::Test(args) => test_command(&args),
        Command::Eval(args) => eval(&args),
    })
}

fn load_rules(path: &Path) -> Result<Rules, u8> {
    Rules::load(path).map_err(|e| {
        eprintln!("{e}");
        EXIT_ERROR
    })
}

fn load_htpasswd(path: Option<&Path>) -> Result<Option<Htpasswd>, u8> {
    match path {
        None => Ok(None),
        Some(p) => Htpasswd::load(p).map(Some).map_err(|e| {
            eprintln!("error: {e}");
            EXIT_ERROR
        }),
    }
}

fn check(args: &CheckArgs) -> u8 {
    let rules = match Rules::load(&args.rules) {
        Ok(rules) => rules,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_NO;
        }
    };
    let htpasswd = match load_htpasswd(args.htpasswd.as_deref()) {
        Ok(h) => h,
        Err(_) => return EXIT_NO,
    };
    // A line that disables its user is an error here, though the service runs with the rest of
    // the file; the rules are still checked against the whole file.
    let disabled = htpasswd.as_ref().map_or(&[][..], |h| h.disabled());
    for user in disabled {
        eprintln!("error: {user}");
    }
    let known = htpasswd
        .as_ref()
        .map(|h| move |user: &str| h.contains(user) || h.is_disabled(user));
    let options = LintOptions {
        token_mode: args.token_mode,
        known_users: known.as_ref().map(|f| f as &dyn Fn(&str) -> bool),
    };
    let warnings = lint(&rules, &options);
    for w in &warnings {
        println!("{}: {w}", rules.source_name());
    }
    println!(
        "{}: ok: {} selectors, {} groups, {} grants, {} warnings",
        rules.source_name(),
        rules.selectors().len(),
        rules.groups().len(),
        rules.grants().len(),
        warnings.len()
    );
    if let (Some(path), false) = (&args.htpasswd, disabled.is_empty()) {
        println!(
            "{}: {} htpasswd error{}: {} disabled",
            path.display(),
            disabled.len(),
            if disabled.len() == 1 { "" } else { "s" },
            disabled.iter().map(|d| d.user.as_str()).collect::<Vec<_>>().join(", ")
        );
        return EXIT_NO;
    }
    EXIT_YES
}

fn explain_command(args: &ExplainArgs) -> u8 {
    let rules = match load_rules(&args.rules) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let htpasswd = match load_htpasswd(args.htpasswd.as_deref()) {
        Ok(h) => h,
        Err(code) => return code,
    };
    let user = args.user.as_deref().filter(|u| *u != "anonymous");
    if let (Some(h), Some(u)) = (&htpasswd, user) {
        if h.is_disabled(u) {
            println!("note: `{u}` is disabled in the htpasswd file (its line has an error): the service would answer 401 before any rule");
        } else if !h.contains(u) {
            println!("note: `{u}` is not in the htpasswd file: the service would answer 401 before any rule");
        }
    }
    let request = AccessRequest {
        method: &args.method,
        uri: &args.path,
        format: &args.format,
        content_type: args.content_type.as_deref(),
    };
    let explanation = explain(&rules, user, &request);
    print_explanation(&explanation, &args.method);
    if explanation.decision.allowed {
        EXIT_YES
    } else {
        EXIT_NO
    }
}

fn print_explanation(e: &Explanation, method: &str) {
    let d = &e.decision;
    let status = match (d.allowed, &e.user) {
        (true, _) => "ALLOW (200)",
        (false, None) => "DENY (401: anonymous, the client is asked to log in)",
        (false, Some(_)) => "DENY (403)",
    };
    println!("decision: {status}");
    match &e.user {
        None => println!("subject:  anonymous"),
        Some(u) if e.groups.is_empty() => println!("subject:  {u} (no groups)"),
        Some(u) => println!("subject:  {u} (groups: {})", e.groups.join(", ")),
    }
    match d.action {
        Some(a) => println!("action:   {a} ({method})"),
        None => println!("action:   none ({method} maps to no action)"),
    }
    match &d.path {
        Some(p) => println!("path:     {p}"),
        None => println!("path:     (refused before any rule)"),
    }
    if let Some(route) = &d.docker {
        match route.repository() {
            Some(repo) => println!("route:    docker {} of {repo}", route.kind()),
            None => println!("route:    docker {}", route.kind()),
        }
    }
    println!("reason:   {}", d.reason);
    if !e.matched.is_empty() {
        println!("matching grants:");
        for g in &e.matched {
            println!("  line {}: {}", g.line, g.grant);
        }
    }
    if !d.allowed && !e.closest.is_empty() {
        println!("closest grants:");
        for g in &e.closest {
            println!("  line {}: {}", g.line, g.grant);
            for why in why_not(g) {
                println!("      {why}");
            }
        }
    }
}

fn why_not(g: &GrantCheck) -> Vec<String> {
    let mut out = Vec::new();
    if !g.subject_ok {
        out.push("✗ subject: not for this user".to_string());
    }
    if !g.action_ok {
        out.push("✗ action: not granted by this grant".to_string());
    }
    for t in &g.targets {
        let mark = if t.matched { "✓" } else { "✗" };
        out.push(format!("{mark} target {}", t.text));
        for (comparison, value) in &t.comparisons {
            out.push(format!("    {comparison}  → {value}"));
        }
    }
    out
}

fn test_command(args: &TestArgs) -> u8 {
    let rules = match load_rules(&args.rules) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let shown = args.decisions.display().to_string();
    let text = match std::fs::read_to_string(&args.decisions) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {shown}: {e}");
            return EXIT_ERROR;
        }
    };
    let (mut held, mut wrong) = (0usize, 0usize);
    for (number, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [expected, user, method, path] = fields[..] else {
            eprintln!(
                "{shown}:{}: expected `allow|deny USER METHOD PATH`, found `{line}`",
                number + 1
            );
            return EXIT_ERROR;
        };
        let expect_allow = match expected {
            "allow" => true,
            "deny" => false,
            other => {
                eprintln!("{shown}:{}: expected `allow` or `deny`, found `{other}`", number + 1);
                return EXIT_ERROR;
            }
        };
        let user = Some(user).filter(|u| *u != "anonymous" && *u != "-");
        let request = AccessRequest {
            method,
            uri: path,
            format: &args.format,
            content_type: None,
        };
        let decision = decide(&rules, user, &request);
        if decision.allowed == expect_allow {
            held += 1;
        } else {
            wrong += 1;
            let got = if decision.allowed { "allow" } else { "deny" };
            println!(
                "{shown}:{}: expected {expected}, got {got} ({})  {line}",
                number + 1,
                decision.reason
            );
        }
    }
    println!(
        "{shown}: {} decisions checked: {held} held, {wrong} wrong",
        held + wrong
    );
    if wrong == 0 {
        EXIT_YES
    } else {
        EXIT_NO
    }
}

fn eval(args: &EvalArgs) -> u8 {
    let expression = match Expression::parse(&args.expression) {
        Ok(e) => e,
        Err(d) => {
            eprintln!("{d}");
            return EXIT_ERROR;
        }
    };
    let facts = Facts {
        format: &args.format,
        path: &args.path,
        method: &args.method,
        user: args.user.as_deref().filter(|u| *u != "anonymous"),
    };
    let matched = expression.matches(&facts);
    println!("{matched}");
    if matched {
        EXIT_YES
    } else {
        EXIT_NO
    }
}
