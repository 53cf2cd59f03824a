//! The service's settings, as the command line and the config file give them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where to listen.
#[derive(Debug, Clone)]
pub(crate) enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Listen, String> {
        match s.strip_prefix("unix:") {
            Some(path) if !path.is_empty() => Ok(Listen::Unix(PathBuf::from(path))),
            Some(_) => Err("`unix:` needs a socket path, e.g. unix:/run/csel-auth.sock".into()),
            None => s
                .parse()
                .map(Listen::Tcp)
                .map_err(|_| format!("`{s}` is neither HOST:PORT (e.g. 127.0.0.1:9000) nor unix:/path.sock")),
        }
    }
}

/// The token realm's settings.
#[derive(Debug, Clone)]
pub(crate) struct TokenConfig {
    pub realm: String,
    pub service: String,
    pub key_file: PathBuf,
    pub ttl: Duration,
    pub refresh_ttl: Duration,
    /// Issue refresh tokens to clients that ask (`offline_token=true`).
    pub refresh_tokens: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// `--config`: the file and what it said at start, to tell on SIGHUP
    /// which of its changes need a restart.
    pub config_file: Option<(PathBuf, crate::config::ConfigFile)>,
    pub rules: PathBuf,
    pub htpasswd: Option<PathBuf>,
    /// The access keys file: Basic logins whose password is a key are checked against it.
    pub access_keys: Option<PathBuf>,
    pub listen: Listen,
    pub socket_mode: u32,
    pub default_format: String,
    pub basic_realm: String,
    pub token: Option<TokenConfig>,
    pub reload_period: Duration,
    pub bcrypt_concurrency: usize,
    pub login_cache: usize,
    pub max_connections: usize,
    /// `[audit] file` / `--audit-log`: one JSON line per decision.
    pub audit_file: Option<PathBuf>,
    /// `[ldap]`, checked: users and groups also come from this directory.
    pub ldap: Option<crate::identity::ldap::LdapSettings>,
    /// `[[oidc]]`, checked: JWTs of these issuers are accepted as passwords.
    pub oidc: Vec<crate::oidc::OidcSettings>,
    /// `[registry]` / `--registry`: the registry's own address.
    pub registry: Option<crate::registry::RegistrySettings>,
}
