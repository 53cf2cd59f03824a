//! The command line: `serve`, `check`, `explain`, `test`, `eval`, `access-key`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::ConfigError;
use crate::config::ConfigFile;
use crate::csel::{Expression, Facts};
use crate::decision::{decide_and_answer, explain, AccessRequest, Answer, Credential, Explanation, GrantCheck};
use crate::diagnostic::Diagnostic;
use crate::identity::{Htpasswd, HtpasswdError};
use crate::rules::{lint, LintOptions, LoadError, Rules, RulesOptions};
use crate::service::StartError;

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
    Serve(Box<ServeArgs>),
    /// Validate a rules file, like `nginx -t`: errors (exit 1) and warnings.
    Check(CheckArgs),
    /// Show how one request is decided, and why.
    Explain(ExplainArgs),
    /// Check a file of expected decisions (`allow|deny|STATUS USER METHOD PATH [tag-exists|new-tag]`).
    Test(TestArgs),
    /// Evaluate one expression against one request (no path checks).
    Eval(EvalArgs),
    /// Create, list and revoke access keys (secrets for CI jobs and robots).
    AccessKey(crate::access_keys::AccessKeyArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// A TOML config file with keys for these flags; a flag given here wins over the file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The rules file (watched; reloaded when it changes, and on SIGHUP).
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Users and bcrypt password hashes, as made by `htpasswd -B` (watched too).
    #[arg(long)]
    htpasswd: Option<PathBuf>,
    /// The access keys file, made by `csel-auth access-key create`.
    #[arg(long)]
    access_keys: Option<PathBuf>,
    /// HOST:PORT, or unix:/path/to.sock [default: 127.0.0.1:9000]
    #[arg(long)]
    listen: Option<String>,
    /// Permissions of the unix socket, in octal [default: 660]
    #[arg(long)]
    socket_mode: Option<String>,
    /// Format assumed when nginx sends no X-Repository-Format [default: docker]
    #[arg(long)]
    format: Option<String>,
    /// Realm of the Basic challenge [default: csel-auth]
    #[arg(long)]
    realm: Option<String>,
    /// Serve the docker token realm; this URL is announced in Bearer challenges
    /// (e.g. https://registry.example.com/token).
    #[arg(long)]
    token_realm: Option<String>,
    /// Service name of the token realm (`service` in challenges, `aud` of tokens) [default: csel-auth]
    #[arg(long)]
    token_service: Option<String>,
    /// File with the token signing key; created (mode 0600) if missing. Must be
    /// owned by the user csel-auth runs as (or root) and private to it
    /// [default: /var/lib/csel-auth/token.key]
    #[arg(long)]
    token_key: Option<PathBuf>,
    /// Lifetime of access tokens, in seconds [default: 300]
    #[arg(long)]
    token_ttl: Option<u64>,
    /// Lifetime of refresh tokens, in seconds [default: 86400]
    #[arg(long)]
    refresh_token_ttl: Option<u64>,
    /// Issue refresh tokens to clients that ask (`docker login`). Off by default:
    /// docker then keeps the refresh token instead of the password, and podman
    /// and skopeo sharing docker's config.json can no longer log in.
    #[arg(long)]
    refresh_tokens: bool,
    /// Seconds between checks of the watched files (besides file events) [default: 2]
    #[arg(long)]
    reload_interval: Option<u64>,
    /// bcrypt computations allowed at once [default: 2]
    #[arg(long)]
    bcrypt_concurrency: Option<usize>,
    /// Verified logins remembered (keyed by a secret-keyed hash, never the password) [default: 10000]
    #[arg(long)]
    login_cache: Option<usize>,
    /// Connections served at once; more wait to be accepted [default: 4096]
    #[arg(long)]
    max_connections: Option<usize>,
    /// Write one JSON line per decision to this file (reopened on SIGUSR1, for logrotate).
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// The registry's own address (not nginx's), e.g. http://127.0.0.1:5001: asked whether a
    /// tag exists (the `overwrite` action) and for its repository list (the filtered catalog).
    #[arg(long)]
    registry: Option<String>,
    /// Log filter: error, warn, info (one line per decision), debug; or a
    /// tracing filter such as `csel_auth::decision=warn,info` [default: info]
    #[arg(long, env = "CSEL_AUTH_LOG")]
    log: Option<String>,
    /// Log lines as text or JSON [default: text]
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
}

fn parse_octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|_| format!("`{s}` is not an octal mode such as 660"))
}

/// The service's settings: flags over the config file over the defaults.
struct ServeSettings {
    config: crate::service::Config,
    log: String,
    log_format: String,
}

/// The service's settings from `serve` arguments, for [`crate::service::in_process`].
pub(crate) fn serve_config(args: &[&str]) -> Result<crate::service::Config, String> {
    let cli = Cli::try_parse_from(["csel-auth", "serve"].iter().chain(args)).map_err(|e| e.to_string())?;
    match cli.command {
        Command::Serve(args) => serve_settings(*args).map(|s| s.config).map_err(|e| e.to_string()),
        _ => Err("not serve arguments".into()),
    }
}

fn serve_settings(args: ServeArgs) -> Result<ServeSettings, Error> {
    let file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let rules = args.rules.or(file.rules.clone()).ok_or_else(|| {
        Error::Settings("no rules file: give --rules FILE, or `rules = \"FILE\"` in the config file".into())
    })?;
    let listen_text = args
        .listen
        .or(file.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let listen = listen_text
        .parse::<crate::service::Listen>()
        .map_err(|e| Error::Settings(format!("listen: {e}")))?;
    let socket_mode = parse_octal(
        &args
            .socket_mode
            .or(file.socket_mode.clone())
            .unwrap_or_else(|| "660".into()),
    )
    .map_err(|e| Error::Settings(format!("socket_mode: {e}")))?;
    let file_token = file.token.clone().unwrap_or_default();
    let token = match args.token_realm.or(file.token.as_ref().map(|t| t.realm.clone())) {
        None => None,
        Some(realm) => Some(crate::service::TokenConfig {
            realm,
            service: args
                .token_service
                .or(file_token.service)
                .unwrap_or_else(|| "csel-auth".into()),
            key_file: args
                .token_key
                .or(file_token.key_file)
                .unwrap_or_else(|| PathBuf::from("/var/lib/csel-auth/token.key")),
            ttl: args
                .token_ttl
                .map(Duration::from_secs)
                .or(file_token.ttl)
                .unwrap_or(Duration::from_secs(300)),
            refresh_ttl: args
                .refresh_token_ttl
                .map(Duration::from_secs)
                .or(file_token.refresh_ttl)
                .unwrap_or(Duration::from_secs(86_400)),
            refresh_tokens: args.refresh_tokens || file_token.refresh_tokens.unwrap_or(false),
        }),
    };
    let reload_period = args
        .reload_interval
        .map(Duration::from_secs)
        .or(file.reload_interval)
        .unwrap_or(Duration::from_secs(2))
        .max(Duration::from_secs(1));
    let log_format = args
        .log_format
        .or(file.log.format.clone())
        .unwrap_or_else(|| "text".into());
    if log_format != "text" && log_format != "json" {
        return Err(Error::Settings(format!(
            "log format `{log_format}`: expected `text` or `json`"
        )));
    }
    let (ldap, oidc) = identity_sources(&file)?;
    let registry = match (args.registry, &file.registry) {
        (Some(url), section) => Some(crate::registry::RegistrySettings::new(
            &url,
            section.as_ref().and_then(|s| s.timeout),
            section.as_ref().and_then(|s| s.catalog_cache),
            section.as_ref().and_then(|s| s.ca_file.as_deref()),
        )),
        (None, Some(section)) => Some(crate::registry::RegistrySettings::from_section(section)),
        (None, None) => None,
    }
    .transpose()
    .map_err(|e| Error::Settings(format!("[registry] / --registry: {e}")))?;
    Ok(ServeSettings {
        config: crate::service::Config {
            config_file: args.config.clone().map(|path| (path, file.clone())),
            rules,
            htpasswd: args.htpasswd.or(file.htpasswd.clone()),
            listen,
            socket_mode,
            default_format: args.format.or(file.format.clone()).unwrap_or_else(|| "docker".into()),
            basic_realm: args.realm.or(file.realm.clone()).unwrap_or_else(|| "csel-auth".into()),
            token,
            reload_period,
            bcrypt_concurrency: args.bcrypt_concurrency.or(file.logins.bcrypt_concurrency).unwrap_or(2),
            login_cache: args.login_cache.or(file.logins.cache).unwrap_or(10_000),
            max_connections: args.max_connections.or(file.max_connections).unwrap_or(4096),
            audit_file: args.audit_log.or(file.audit.clone().map(|section| section.file)),
            ldap,
            oidc,
            registry,
            access_keys: args
                .access_keys
                .or(file.access_keys.clone().map(|section| section.file)),
        },
        log: args.log.or(file.log.filter.clone()).unwrap_or_else(|| "info".into()),
        log_format,
    })
}

/// The config file's `[ldap]` and `[[oidc]]` sections, checked.
#[allow(clippy::type_complexity)]
fn identity_sources(
    file: &ConfigFile,
) -> Result<
    (
        Option<crate::identity::ldap::LdapSettings>,
        Vec<crate::oidc::OidcSettings>,
    ),
    Error,
> {
    let ldap = file
        .ldap
        .as_ref()
        .map(crate::identity::ldap::LdapSettings::from_section)
        .transpose()
        .map_err(|e| Error::Settings(format!("[ldap]: {e}")))?;
    let oidc =
        crate::oidc::OidcSettings::from_sections(&file.oidc).map_err(|e| Error::Settings(format!("[[oidc]]: {e}")))?;
    Ok((ldap, oidc))
}

fn serve(args: ServeArgs) -> Result<Conclusion, Error> {
    let settings = serve_settings(args)?;
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log).map_err(|source| Error::LogFilter {
        filter: settings.log.clone(),
        source,
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if settings.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    crate::service::run(settings.config)?;
    Ok(Conclusion::Yes)
}

#[derive(Args)]
struct CheckArgs {
    /// The rules file (or the one the config file names).
    #[arg(required_unless_present_any = ["config", "access_keys"])]
    rules: Option<PathBuf>,
    /// Check this config file, then the rules and htpasswd files it names.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Also check group members and users against this htpasswd file.
    #[arg(long)]
    htpasswd: Option<PathBuf>,
    /// The service runs with --token-realm (the /v2/ ping always challenges).
    #[arg(long)]
    token_mode: bool,
    /// Check this access keys file (or the one the config file names): errors, expired keys,
    /// keys that never expire.
    #[arg(long)]
    access_keys: Option<PathBuf>,
}

#[derive(Args)]
struct ExplainArgs {
    #[arg(long, required_unless_present = "config")]
    rules: Option<PathBuf>,
    /// The service's config file: the rules, htpasswd and access keys files it names (the flags
    /// win); with `[ldap]`, the user's groups are read from the directory (service account
    /// only); with `[ldap]` or `[[oidc]]`, `@name` not defined in the rules file names a group
    /// of that source.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A group an identity source (LDAP, OIDC) says the user is in (repeatable).
    #[arg(long = "group", value_name = "NAME")]
    groups: Vec<String>,
    /// The access keys file, for `--key`.
    #[arg(long)]
    access_keys: Option<PathBuf>,
    /// The request logs in with this access key (its owner is `--user`): the decision is
    /// narrowed to the key's scope.
    #[arg(long, requires = "user")]
    key: Option<String>,
    #[arg(long)]
    htpasswd: Option<PathBuf>,
    /// The requesting user; anonymous when absent.
    #[arg(long)]
    user: Option<String>,
    #[arg(long, default_value = "docker")]
    format: String,
    /// The original request's Content-Type (a blob upload may only start with none or
    /// application/octet-stream).
    #[arg(long)]
    content_type: Option<String>,
    #[command(flatten)]
    token: TokenModeArg,
    /// HTTP method of the original request.
    method: String,
    /// Original path and query, as the client sent them.
    path: String,
}

#[derive(Args)]
struct TestArgs {
    rules: PathBuf,
    /// Lines `EXPECTED USER METHOD PATH`: EXPECTED `allow`, `deny` or the status
    /// (200, 401, 403); USER `anonymous` or `-` for no login.
    decisions: PathBuf,
    #[arg(long, default_value = "docker")]
    format: String,
    #[command(flatten)]
    token: TokenModeArg,
}

#[derive(Args)]
struct TokenModeArg {
    /// The service runs with --token-realm and the subject holds a token from it
    /// (anonymous: an anonymous token), as docker clients do; without it, users
    /// send Basic credentials and anonymous none.
    #[arg(long)]
    token_mode: bool,
}

impl TokenModeArg {
    fn credential(&self, user: Option<&str>) -> Credential {
        match (self.token_mode, user) {
            (true, _) => Credential::Token,
            (false, Some(_)) => Credential::Basic,
            (false, None) => Credential::None,
        }
    }
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

/// What a command that ran to its end answers, as its exit status: `check` ok or not, a request
/// allowed or not, every expected decision held or not, an expression true or false.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conclusion {
    Yes = 0,
    No = 1,
}

impl Conclusion {
    fn from(yes: bool) -> Conclusion {
        if yes {
            Conclusion::Yes
        } else {
            Conclusion::No
        }
    }
}

/// Why a command stopped before its answer. Printed once, by [`run`], which exits with
/// [`Error::code`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// Flags or config file settings of `serve` that cannot work.
    #[error("error: {0}")]
    Settings(String),
    #[error("error: log filter `{filter}`: {source}")]
    LogFilter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("error: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Rules(#[from] LoadError),
    #[error("error: {0}")]
    Htpasswd(#[from] HtpasswdError),
    #[error("error: no rules file: give one, or `rules = \"FILE\"` in the config file")]
    NoRulesFile,
    #[error("{0}")]
    Expression(Box<Diagnostic>),
    #[error("error: cannot read {path}: {source}")]
    ReadDecisions {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    DecisionsLine { path: String, line: usize, message: String },
    /// A problem `check` found in the files it checks: that is its answer, as `nginx -t`'s.
    #[error(transparent)]
    Checked(Box<Error>),
}

impl Error {
    /// The exit status: 1 when the service could not start or `check` found a problem, 2 when a
    /// command could not run at all (bad flags, a file missing or invalid).
    pub(crate) fn code(&self) -> u8 {
        match self {
            Error::Start(error) => error.code(),
            Error::Checked(_) => Conclusion::No as u8,
            _ => 2,
        }
    }

    fn expression(diagnostic: Diagnostic) -> Error {
        Error::Expression(Box::new(diagnostic))
    }

    fn checked(error: impl Into<Error>) -> Error {
        Error::Checked(Box::new(error.into()))
    }
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        end_quietly_on_closed_stdout();
    }
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Check(args) => check(&args),
        Command::Explain(args) => explain_command(&args),
        Command::Test(args) => test_command(&args),
        Command::Eval(args) => eval(&args),
        Command::AccessKey(args) => return ExitCode::from(crate::access_keys::run_access_key_command(&args)),
    };
    ExitCode::from(match result {
        Ok(answer) => answer as u8,
        Err(error) => {
            eprintln!("{error}");
            error.code()
        }
    })
}

/// The operator commands print with `println!`, which panics when a reader
/// such as `head` closes the pipe early; like other command-line tools, end
/// silently instead (the default action of SIGPIPE, which Rust ignores).
fn end_quietly_on_closed_stdout() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: restores the default action; no handler code runs in this process.
    if let Err(e) = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) } {
        eprintln!("warning: cannot restore the default SIGPIPE action: {e}");
    }
}

fn load_htpasswd(path: Option<&Path>) -> Result<Option<Htpasswd>, HtpasswdError> {
    path.map(Htpasswd::load).transpose()
}

fn check(args: &CheckArgs) -> Result<Conclusion, Error> {
    let file = match &args.config {
        None => ConfigFile::default(),
        Some(path) => {
            let file = ConfigFile::load(path).map_err(Error::checked)?;
            println!("{}: ok", path.display());
            file
        }
    };
    let keys_path = args
        .access_keys
        .clone()
        .or(file.access_keys.clone().map(|section| section.file));
    let keys_ok = keys_path.as_deref().is_none_or(crate::access_keys::check_keys_file);
    if args.rules.is_none() && file.rules.is_none() && args.access_keys.is_some() && args.config.is_none() {
        return Ok(Conclusion::from(keys_ok));
    }
    let rules_path = args
        .rules
        .clone()
        .or(file.rules.clone())
        .ok_or_else(|| Error::checked(Error::NoRulesFile))?;
    let htpasswd_path = args.htpasswd.clone().or(file.htpasswd.clone());
    let token_mode = args.token_mode || file.token.is_some();
    let (ldap, oidc) = identity_sources(&file).map_err(Error::checked)?;
    if let Some(ldap) = &ldap {
        println!("[ldap] {}: ok", ldap.url());
        for warning in ldap.warnings() {
            println!("warning: [ldap]: {warning}");
        }
    }
    for issuer in &oidc {
        println!("[[oidc]] {}: ok", issuer.issuer());
        for warning in issuer.warnings() {
            println!("warning: [[oidc]] {}: {warning}", issuer.issuer());
        }
    }
    // With an identity source, `@name` not defined in the file is one of its groups.
    let options = RulesOptions {
        external_groups: ldap.is_some() || !oidc.is_empty(),
    };
    let rules = Rules::load_with(&rules_path, options).map_err(Error::checked)?;
    let htpasswd = load_htpasswd(htpasswd_path.as_deref()).map_err(Error::checked)?;
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
        token_mode,
        known_users: known.as_ref().map(|f| f as &dyn Fn(&str) -> bool),
    };
    let warnings = lint(&rules, &options);
    for w in &warnings {
        println!("{w}\n");
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
        return Ok(Conclusion::No);
    }
    Ok(Conclusion::from(keys_ok))
}

fn explain_command(args: &ExplainArgs) -> Result<Conclusion, Error> {
    let file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let (ldap, oidc) = identity_sources(&file)?;
    let options = RulesOptions {
        external_groups: ldap.is_some() || !oidc.is_empty() || !args.groups.is_empty(),
    };
    let Some(rules_path) = args.rules.clone().or(file.rules.clone()) else {
        return Err(Error::NoRulesFile);
    };
    let rules = Rules::load_with(&rules_path, options)?;
    let htpasswd = load_htpasswd(args.htpasswd.clone().or(file.htpasswd.clone()).as_deref())?;
    let keys_path = args
        .access_keys
        .clone()
        .or(file.access_keys.clone().map(|section| section.file));
    let user = args.user.as_deref().filter(|u| *u != "anonymous");
    let mut groups = args.groups.clone();
    if let (Some(settings), Some(u)) = (ldap, user) {
        if htpasswd.as_ref().is_some_and(|h| h.contains(u) || h.is_disabled(u)) {
            println!("note: `{u}` is in the htpasswd file: the service decides its logins there, without LDAP groups");
        } else {
            let directory = crate::identity::ldap::Directory::new(settings);
            let looked_up = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Settings(format!("cannot start the async runtime: {e}")))?
                .block_on(directory.groups_of(u));
            match looked_up {
                Ok(found) => {
                    println!(
                        "ldap:     groups of `{u}`: {}",
                        if found.is_empty() {
                            "(none)".to_string()
                        } else {
                            found.join(", ")
                        }
                    );
                    groups.extend(found);
                }
                Err(e) => println!("note: LDAP groups of `{u}` not read: {e}"),
            }
        }
    }
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
    let credential = args.token.credential(user);
    let keys = match (&keys_path, &args.key) {
        (Some(path), _) => {
            Some(crate::access_keys::AccessKeys::load(path).map_err(|e| Error::Settings(e.to_string()))?)
        }
        (None, Some(_)) => {
            return Err(Error::Settings(
                "--key needs --access-keys FILE, or a config file with [access_keys]".into(),
            ))
        }
        (None, None) => None,
    };
    let key = match (&keys, &args.key) {
        (Some(keys), Some(id)) => {
            let Some(key) = keys.get(id) else {
                return Err(Error::Settings(format!(
                    "{}: no access key has the id `{id}` (see `csel-auth access-key list`)",
                    keys.source_name()
                )));
            };
            if Some(key.owner.as_str()) != user {
                println!(
                    "note: key `{id}` belongs to `{}`: given with another name, the service would answer 401 \
                     before any rule",
                    key.owner
                );
            } else if key.is_expired(std::time::SystemTime::now()) {
                println!(
                    "note: key `{id}` expired at {}: the service would answer 401 before any rule",
                    key.expires
                );
            }
            Some(crate::decision::KeyInUse {
                id: key.id.as_str(),
                scope: &key.scope,
            })
        }
        _ => None,
    };
    let subject = crate::decision::Subject { user, groups: &groups };
    let explanation = explain(&rules, &subject, credential, args.token.token_mode, &request, key);
    print_explanation(&explanation, &args.method);
    Ok(Conclusion::from(explanation.answer == Answer::Allow))
}

fn print_explanation(e: &Explanation, method: &str) {
    let d = &e.decision;
    match &d.tag_check {
        None => println!("decision: {}", e.answer),
        Some(check) => {
            println!(
                "decision: depends on whether tag {} of {} exists (the service asks the registry)",
                check.tag, check.name
            );
            for (exists, case) in [(true, "if it exists:  "), (false, "if it is new:  ")] {
                let settled = d.clone().settle(exists);
                let answer = crate::decision::answer(&settled, e.credential, e.token_mode);
                println!("          {case}{answer}: {}", settled.reason);
            }
        }
    }
    match &e.user {
        None => println!("subject:  anonymous"),
        Some(u) if e.groups.is_empty() => println!("subject:  {u} (no groups)"),
        Some(u) => println!("subject:  {u} (groups: {})", e.groups.join(", ")),
    }
    if e.user.is_some() && !e.external_groups.is_empty() {
        println!("          identity source groups: {}", e.external_groups.join(", "));
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
    if d.tag_check.is_none() {
        println!("reason:   {}", d.reason);
    }
    if let Some((id, scope, check)) = &e.key {
        println!("key:      {id} ({scope})");
        match check {
            None => println!("  (not consulted: the rules decided, or the /v2/ ping needs only a valid key)"),
            Some(c) => {
                let mark = |ok: bool| if ok { "✓" } else { "✗" };
                println!("  {} action in the key's actions", mark(c.action_ok));
                println!("  {} request matches the key's `on` expression", mark(c.on_ok));
                if let Some(mount) = c.mount_ok {
                    println!("  {} mount source inside the key's scope", mark(mount));
                }
            }
        }
    }
    if !e.matched.is_empty() {
        println!("matching grants:");
        for g in &e.matched {
            println!("  line {}: {}", g.line, g.grant);
        }
    }
    if !d.allowed && d.tag_check.is_none() && !e.closest.is_empty() {
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

fn test_command(args: &TestArgs) -> Result<Conclusion, Error> {
    let rules = Rules::load(&args.rules)?;
    let shown = args.decisions.display().to_string();
    let text = std::fs::read_to_string(&args.decisions).map_err(|source| Error::ReadDecisions {
        path: shown.clone(),
        source,
    })?;
    let (mut held, mut wrong) = (0usize, 0usize);
    for (number, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (expected, user, method, path, tag) = match fields[..] {
            [expected, user, method, path] => (expected, user, method, path, None),
            [expected, user, method, path, tag @ ("tag-exists" | "new-tag")] => {
                (expected, user, method, path, Some(tag == "tag-exists"))
            }
            _ => {
                return Err(Error::DecisionsLine {
                    path: shown,
                    line: number + 1,
                    message: format!("expected `allow|deny USER METHOD PATH [tag-exists|new-tag]`, found `{line}`"),
                })
            }
        };
        let user = Some(user).filter(|u| *u != "anonymous" && *u != "-");
        let request = AccessRequest {
            method,
            uri: path,
            format: &args.format,
            content_type: None,
        };
        let credential = args.token.credential(user);
        let (mut decision, mut answer) = decide_and_answer(&rules, user, credential, args.token.token_mode, &request);
        if let Some(check) = &decision.tag_check {
            let Some(exists) = tag else {
                return Err(Error::DecisionsLine {
                    path: shown,
                    line: number + 1,
                    message: format!(
                        "this decision depends on whether tag {} of {} exists (the rules grant `edit` or \
                         `overwrite` here, not both): end the line with `tag-exists` or `new-tag`",
                        check.tag, check.name
                    ),
                });
            };
            decision = decision.settle(exists);
            answer = crate::decision::answer(&decision, credential, args.token.token_mode);
        }
        let (held_here, got) = match expected {
            "allow" | "deny" => {
                let got = if answer == Answer::Allow { "allow" } else { "deny" };
                (got == expected, got.to_string())
            }
            "200" | "401" | "403" => {
                let got = answer.status().to_string();
                (got == expected, got)
            }
            other => {
                return Err(Error::DecisionsLine {
                    path: shown,
                    line: number + 1,
                    message: format!("expected `allow`, `deny` or a status (200, 401, 403), found `{other}`"),
                });
            }
        };
        if held_here {
            held += 1;
        } else {
            wrong += 1;
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
    Ok(Conclusion::from(wrong == 0))
}

fn eval(args: &EvalArgs) -> Result<Conclusion, Error> {
    let expression = Expression::parse(&args.expression).map_err(Error::expression)?;
    let facts = Facts {
        format: &args.format,
        path: &args.path,
        method: &args.method,
        user: args.user.as_deref().filter(|u| *u != "anonymous"),
    };
    let matched = expression.matches(&facts);
    println!("{matched}");
    Ok(Conclusion::from(matched))
}
