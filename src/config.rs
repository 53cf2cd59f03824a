//! `serve --config FILE`: the service's settings as TOML.
//!
//! Every `serve` flag has a key; a flag given on the command line wins over
//! the file, and the file wins over the built-in default. Unknown keys are
//! errors (with line and column), so a typo never silently keeps a default.
//! Relative paths in the file are resolved against the file's directory, so
//! a config and the files it names can move together. Secrets are never
//! written inline: keys that hold one name a file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The largest config file read: settings, not data.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The config file as written; every key optional.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub rules: Option<PathBuf>,
    pub htpasswd: Option<PathBuf>,
    pub listen: Option<String>,
    /// Octal, as a string (`"660"`): TOML has no octal integers with a leading 0.
    pub socket_mode: Option<String>,
    pub format: Option<String>,
    pub realm: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    pub reload_interval: Option<Duration>,
    pub max_connections: Option<usize>,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub logins: LoginSection,
    pub token: Option<TokenSection>,
    pub ldap: Option<LdapSection>,
    pub access_keys: Option<AccessKeysSection>,
    pub audit: Option<AuditSection>,
    pub registry: Option<RegistrySection>,
    /// `[[oidc]]`: one per trusted token issuer.
    #[serde(default)]
    pub oidc: Vec<OidcSection>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `error`, `warn`, `info`, `debug`, or a tracing filter.
    pub filter: Option<String>,
    /// `text` or `json`.
    pub format: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginSection {
    pub bcrypt_concurrency: Option<usize>,
    pub cache: Option<usize>,
}

/// `[token]`: present means the token realm is served.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSection {
    pub realm: String,
    pub service: Option<String>,
    pub key_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "duration")]
    pub ttl: Option<Duration>,
    pub refresh_tokens: Option<bool>,
    #[serde(default, deserialize_with = "duration")]
    pub refresh_ttl: Option<Duration>,
}

/// `[ldap]`: present means users and groups also come from an LDAP directory
/// (after the htpasswd file). Only `url` and `user_base` are required; see
/// `crate::ldap::LdapSettings` for the defaults and what each key means.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapSection {
    /// `ldap://host[:port]` or `ldaps://host[:port]`.
    pub url: String,
    pub starttls: Option<bool>,
    /// PEM file with the CA certificate(s) trusted for ldaps:// and StartTLS.
    pub ca_file: Option<PathBuf>,
    /// The service account that searches users and groups; absent: anonymous searches.
    pub bind_dn: Option<String>,
    /// The service account's password; the only place it is read from.
    pub bind_password_file: Option<PathBuf>,
    pub user_base: String,
    /// `{user}` stands for the login name, escaped for a filter.
    pub user_filter: Option<String>,
    pub group_base: Option<String>,
    /// `{dn}` stands for the user's (or, when nesting, a group's) DN, escaped for a filter.
    pub group_filter: Option<String>,
    /// Read groups from this attribute of the user entry (`memberOf`) instead of `group_filter`.
    pub member_of_attribute: Option<String>,
    pub group_name_attribute: Option<String>,
    pub nested_groups: Option<bool>,
    #[serde(default, deserialize_with = "duration")]
    pub cache_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<Duration>,
}

/// `[audit]`: one JSON line per decision in this file (docs/operations.md, "Audit log").
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    pub file: PathBuf,
}

/// `[registry]`: the registry's own address, asked whether a tag exists (protected tags) and
/// for its repository list (the filtered catalog); see `crate::registry`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    /// `http://127.0.0.1:5001`: where the registry listens, not nginx.
    pub url: String,
    /// For one request to the registry, connection included.
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<Duration>,
    /// How long the registry's repository list is reused for catalog requests.
    #[serde(default, deserialize_with = "duration")]
    pub catalog_cache: Option<Duration>,
    /// PEM file with the CA certificate(s) trusted for an `https://` url (else the system's).
    pub ca_file: Option<PathBuf>,
}

/// `[access_keys]`: the access keys file (see `crate::access_keys`), `serve --access-keys`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKeysSection {
    pub file: PathBuf,
}

/// `[[oidc]]`: JSON Web Tokens from this issuer are accepted as passwords. Only `issuer`,
/// `audience`, `username_prefix` and one of `jwks_url`/`jwks_file` are required; see
/// `crate::oidc::OidcSettings` for the defaults and what each key means.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSection {
    /// The `iss` claim, exactly as the issuer writes it.
    pub issuer: String,
    /// The `aud` claim the tokens must carry (one of them, when it is a list).
    pub audience: String,
    /// Where the issuer publishes its keys (`https://`; `http://` only on a loopback address).
    pub jwks_url: Option<String>,
    /// Or a file holding the keys (a JWKS document).
    pub jwks_file: Option<PathBuf>,
    /// The claim whose value names the user; `/a/b` is a JSON pointer into nested claims.
    pub username_claim: Option<String>,
    /// Put before every user and group name from this issuer, so they cannot be taken for local ones.
    pub username_prefix: Option<String>,
    /// The claim holding the groups: a string or an array of strings.
    pub groups_claim: Option<String>,
    /// The signature algorithms accepted (`RS256`, `ES256`, ...); never `none` or `HS*`.
    pub algorithms: Option<Vec<String>>,
    /// Tokens issued (`iat`) longer ago than this are refused, whatever their `exp`.
    #[serde(default, deserialize_with = "duration")]
    pub max_age: Option<Duration>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(default, deserialize_with = "duration")]
    pub leeway: Option<Duration>,
    /// How often the keys are fetched again (the file's change is looked for).
    #[serde(default, deserialize_with = "duration")]
    pub jwks_refresh: Option<Duration>,
    /// At most one fetch per this interval besides the schedule (unknown `kid`, keys missing).
    #[serde(default, deserialize_with = "duration")]
    pub jwks_min_interval: Option<Duration>,
    /// For one fetch of `jwks_url`, connection included.
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<Duration>,
    /// PEM file with the CA certificate(s) trusted for an `https://` `jwks_url` (else the
    /// system's).
    pub ca_file: Option<PathBuf>,
}

/// Durations are written as `90s`, `5m`, `1h 30m`, `7d`.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("`{text}` is not a duration such as 90s, 5m or 1h ({e})")))
}

/// Why a config file could not be used.
#[derive(Debug)]
pub enum ConfigError {
    Read { file: PathBuf, reason: String },
    TooLarge { file: PathBuf },
    Syntax { file: PathBuf, message: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { file, reason } => write!(f, "cannot read the config file {}: {reason}", file.display()),
            ConfigError::TooLarge { file } => write!(
                f,
                "the config file {} is larger than {MAX_CONFIG_BYTES} bytes: is it the right file?",
                file.display()
            ),
            // toml's message already holds the line, the column, the text and a caret.
            ConfigError::Syntax { file, message } => {
                write!(f, "in the config file {}: {}", file.display(), message.trim_end())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigFile {
    /// Reads and parses `path`, resolving relative paths in it against its directory.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let read_error = |e: std::io::Error| ConfigError::Read {
            file: path.to_path_buf(),
            reason: e.to_string(),
        };
        let meta = std::fs::metadata(path).map_err(read_error)?;
        if !meta.is_file() {
            return Err(ConfigError::Read {
                file: path.to_path_buf(),
                reason: "not a regular file".into(),
            });
        }
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                file: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        let mut config = ConfigFile::parse(&text).map_err(|message| ConfigError::Syntax {
            file: path.to_path_buf(),
            message,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Parses TOML text; the error is toml's message, with line, column and a caret.
    pub fn parse(text: &str) -> Result<ConfigFile, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        self.rules.as_mut().map(resolve);
        self.htpasswd.as_mut().map(resolve);
        if let Some(token) = &mut self.token {
            token.key_file.as_mut().map(resolve);
        }
        if let Some(ldap) = &mut self.ldap {
            ldap.ca_file.as_mut().map(resolve);
            ldap.bind_password_file.as_mut().map(resolve);
        }
        if let Some(audit) = &mut self.audit {
            resolve(&mut audit.file);
        }
        if let Some(access_keys) = &mut self.access_keys {
            resolve(&mut access_keys.file);
        }
        for oidc in &mut self.oidc {
            oidc.jwks_file.as_mut().map(resolve);
            oidc.ca_file.as_mut().map(resolve);
        }
        if let Some(registry) = &mut self.registry {
            registry.ca_file.as_mut().map(resolve);
        }
        if let Some(listen) = &mut self.listen {
            if let Some(socket) = listen.strip_prefix("unix:") {
                if Path::new(socket).is_relative() && !socket.is_empty() {
                    *listen = format!("unix:{}", base.join(socket).display());
                }
            }
        }
    }

    /// The keys whose values differ between two versions of the file: all
    /// of them need a restart to take effect (the rules and htpasswd files
    /// they name are reloaded on their own).
    pub fn changed_keys(&self, other: &ConfigFile) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut differs = |key: &'static str, same: bool| {
            if !same {
                changed.push(key);
            }
        };
        differs("rules", self.rules == other.rules);
        differs("htpasswd", self.htpasswd == other.htpasswd);
        differs("listen", self.listen == other.listen);
        differs("socket_mode", self.socket_mode == other.socket_mode);
        differs("format", self.format == other.format);
        differs("realm", self.realm == other.realm);
        differs("reload_interval", self.reload_interval == other.reload_interval);
        differs("max_connections", self.max_connections == other.max_connections);
        differs("[log]", self.log == other.log);
        differs("[logins]", self.logins == other.logins);
        differs("[token]", self.token == other.token);
        differs("[ldap]", self.ldap == other.ldap);
        differs("[access_keys]", self.access_keys == other.access_keys);
        differs("[audit]", self.audit == other.audit);
        differs("[[oidc]]", self.oidc == other.oidc);
        differs("[registry]", self.registry == other.registry);
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_file_parses() {
        let config = ConfigFile::parse(
            r#"
rules = "registry.rules"
htpasswd = "/etc/csel-auth/users.htpasswd"
listen = "unix:/run/csel-auth/csel-auth.sock"
socket_mode = "660"
format = "docker"
realm = "registry"
reload_interval = "2s"
max_connections = 1024

[log]
filter = "warn"
format = "json"

[logins]
bcrypt_concurrency = 4
cache = 5000

[token]
realm = "https://registry.example.com/token"
service = "registry.example.com"
key_file = "/var/lib/csel-auth/token.key"
ttl = "5m"
refresh_tokens = true
refresh_ttl = "1d"
"#,
        )
        .unwrap();
        assert_eq!(config.reload_interval, Some(Duration::from_secs(2)));
        assert_eq!(config.logins.cache, Some(5000));
        let token = config.token.unwrap();
        assert_eq!(token.ttl, Some(Duration::from_secs(300)));
        assert_eq!(token.refresh_ttl, Some(Duration::from_secs(86_400)));
        assert_eq!(token.refresh_tokens, Some(true));
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let error = ConfigFile::parse("rules = \"r\"\n\n[token]\nrealm = \"x\"\nkey = \"k\"\n").unwrap_err();
        assert!(error.contains("line 5, column 1"), "{error}");
        assert!(error.contains("unknown field `key`"), "{error}");
        assert!(error.contains("key_file"), "the expected keys are listed: {error}");
    }

    #[test]
    fn unknown_top_level_key_is_an_error() {
        let error = ConfigFile::parse("rule = \"r\"\n").unwrap_err();
        assert!(error.contains("unknown field `rule`"), "{error}");
        assert!(error.contains("line 1, column 1"), "{error}");
    }

    #[test]
    fn bad_duration_says_what_is_expected() {
        let error = ConfigFile::parse("reload_interval = \"soon\"\n").unwrap_err();
        assert!(error.contains("`soon` is not a duration"), "{error}");
        assert!(error.contains("line 1"), "{error}");
        let error = ConfigFile::parse("reload_interval = 2\n").unwrap_err();
        assert!(error.contains("line 1"), "{error}");
    }

    #[test]
    fn token_section_needs_a_realm() {
        let error = ConfigFile::parse("[token]\nservice = \"s\"\n").unwrap_err();
        assert!(error.contains("missing field `realm`"), "{error}");
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csel-auth.toml");
        std::fs::write(
            &path,
            "rules = \"registry.rules\"\nhtpasswd = \"/abs/users\"\nlisten = \"unix:run/s.sock\"\n[token]\nrealm = \"r\"\nkey_file = \"token.key\"\n",
        )
        .unwrap();
        let config = ConfigFile::load(&path).unwrap();
        assert_eq!(config.rules, Some(dir.path().join("registry.rules")));
        assert_eq!(config.htpasswd, Some(PathBuf::from("/abs/users")));
        assert_eq!(config.token.unwrap().key_file, Some(dir.path().join("token.key")));
        assert_eq!(
            config.listen,
            Some(format!("unix:{}", dir.path().join("run/s.sock").display()))
        );
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listen = [1]\n").unwrap();
        let error = ConfigFile::load(&path).unwrap_err().to_string();
        assert!(error.contains("c.toml"), "{error}");
        assert!(error.contains("line 1"), "{error}");
        let missing = ConfigFile::load(&dir.path().join("none.toml")).unwrap_err().to_string();
        assert!(missing.contains("none.toml"), "{missing}");
    }

    #[test]
    fn changed_keys_lists_what_needs_a_restart() {
        let a = ConfigFile::parse("rules = \"a\"\n[log]\nfilter = \"info\"\n").unwrap();
        let b = ConfigFile::parse("rules = \"a\"\n[log]\nfilter = \"warn\"\n").unwrap();
        assert_eq!(a.changed_keys(&b), vec!["[log]"]);
        assert!(a.changed_keys(&a.clone()).is_empty());
    }
    #[test]
    fn registry_section_parses_and_is_checked() {
        let config = ConfigFile::parse(
            "[registry]\nurl = \"http://127.0.0.1:5001\"\ntimeout = \"2s\"\ncatalog_cache = \"30s\"\n",
        )
        .unwrap();
        let section = config.registry.clone().unwrap();
        let settings = crate::registry::RegistrySettings::from_section(&section).unwrap();
        assert_eq!(settings.url(), "http://127.0.0.1:5001");
        assert_eq!(settings.timeout, Duration::from_secs(2));
        assert_eq!(settings.catalog_ttl, Duration::from_secs(30));
        let moved = ConfigFile::parse("[registry]\nurl = \"http://127.0.0.1:5002\"\n").unwrap();
        assert_eq!(config.changed_keys(&moved), vec!["[registry]"]);
        let error = ConfigFile::parse("[registry]\nurl = \"http://r\"\ntimeout = \"soon\"\n").unwrap_err();
        assert!(error.to_string().contains("`soon` is not a duration"), "{error}");
        let error = ConfigFile::parse("[registry]\nadress = \"http://r\"\n").unwrap_err();
        assert!(error.to_string().contains("unknown field `adress`"), "{error}");
    }

    const LDAP_SECTION: &str = r#"
[ldap]
url = "ldap://127.0.0.1:3890"
starttls = false
ca_file = "/etc/csel-auth/ldap-ca.pem"
bind_dn = "cn=csel-auth,dc=example,dc=org"
bind_password_file = "/etc/csel-auth/ldap.password"
user_base = "ou=people,dc=example,dc=org"
user_filter = "(uid={user})"
group_base = "ou=groups,dc=example,dc=org"
group_filter = "(|(member={dn})(uniqueMember={dn}))"
member_of_attribute = ""
group_name_attribute = "cn"
nested_groups = true
cache_ttl = "5m"
timeout = "3s"
"#;

    #[test]
    fn ldap_section_parses_every_key() {
        let config = ConfigFile::parse(LDAP_SECTION).unwrap();
        let ldap = config.ldap.unwrap();
        assert_eq!(ldap.url, "ldap://127.0.0.1:3890");
        assert_eq!(ldap.starttls, Some(false));
        assert_eq!(ldap.ca_file, Some(PathBuf::from("/etc/csel-auth/ldap-ca.pem")));
        assert_eq!(ldap.bind_dn.as_deref(), Some("cn=csel-auth,dc=example,dc=org"));
        assert_eq!(ldap.user_filter.as_deref(), Some("(uid={user})"));
        assert_eq!(
            ldap.group_filter.as_deref(),
            Some("(|(member={dn})(uniqueMember={dn}))")
        );
        assert_eq!(ldap.member_of_attribute.as_deref(), Some(""));
        assert_eq!(ldap.group_name_attribute.as_deref(), Some("cn"));
        assert_eq!(ldap.nested_groups, Some(true));
        assert_eq!(ldap.cache_ttl, Some(Duration::from_secs(300)));
        assert_eq!(ldap.timeout, Some(Duration::from_secs(3)));
    }

    #[test]
    fn ldap_section_rejects_unknown_keys_and_inline_passwords() {
        let error =
            ConfigFile::parse("[ldap]\nurl = \"ldap://h\"\nuser_base = \"dc=x\"\nbind_password = \"s\"\n").unwrap_err();
        assert!(error.contains("unknown field `bind_password`"), "{error}");
        assert!(error.contains("line 4, column 1"), "{error}");
        assert!(
            error.contains("bind_password_file"),
            "the expected keys are listed: {error}"
        );
        let error = ConfigFile::parse("[ldap]\nurl = \"ldap://h\"\n").unwrap_err();
        assert!(error.contains("missing field `user_base`"), "{error}");
        let error =
            ConfigFile::parse("[ldap]\nurl = \"ldap://h\"\nuser_base = \"dc=x\"\ncache_ttl = \"later\"\n").unwrap_err();
        assert!(error.contains("`later` is not a duration"), "{error}");
    }

    #[test]
    fn ldap_paths_follow_the_file_and_changes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csel-auth.toml");
        std::fs::write(
            &path,
            "[ldap]\nurl = \"ldaps://h\"\nuser_base = \"dc=x\"\nca_file = \"ca.pem\"\nbind_password_file = \"/abs/pw\"\n",
        )
        .unwrap();
        let config = ConfigFile::load(&path).unwrap();
        let ldap = config.ldap.clone().unwrap();
        assert_eq!(ldap.ca_file, Some(dir.path().join("ca.pem")));
        assert_eq!(ldap.bind_password_file, Some(PathBuf::from("/abs/pw")));
        let mut other = config.clone();
        other.ldap.as_mut().unwrap().nested_groups = Some(false);
        assert_eq!(config.changed_keys(&other), vec!["[ldap]"]);
    }
    #[test]
    fn the_example_ldap_section_parses_once_uncommented() {
        let example = include_str!("../examples/csel-auth.toml");
        let start = example.find("# [ldap]").expect("the example documents [ldap]");
        let section: String = example[start..]
            .lines()
            .map(|line| line.strip_prefix("# ").unwrap_or(line))
            .map(|line| format!("{line}\n"))
            .collect();
        let config = ConfigFile::parse(&section).unwrap_or_else(|e| panic!("{e}\n{section}"));
        let ldap = config.ldap.unwrap();
        assert_eq!(ldap.url, "ldaps://ldap.example.org");
        assert_eq!(ldap.member_of_attribute.as_deref(), Some(""));
        assert_eq!(ldap.timeout, Some(Duration::from_secs(3)));
    }

    #[test]
    fn access_keys_section_names_a_file_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csel-auth.toml");
        std::fs::write(&path, "[access_keys]\nfile = \"keys/access.keys\"\n").unwrap();
        let config = ConfigFile::load(&path).unwrap();
        assert_eq!(
            config.access_keys.clone().unwrap().file,
            dir.path().join("keys/access.keys")
        );
        let absolute = ConfigFile::parse("[access_keys]\nfile = \"/etc/csel-auth/access.keys\"\n").unwrap();
        assert_eq!(
            absolute.access_keys.clone().unwrap().file,
            PathBuf::from("/etc/csel-auth/access.keys")
        );
        assert_eq!(config.changed_keys(&absolute), vec!["[access_keys]"]);
    }

    #[test]
    fn access_keys_section_rejects_unknown_keys_and_needs_a_file() {
        let error = ConfigFile::parse("[access_keys]\nfile = \"k\"\npath = \"k\"\n").unwrap_err();
        assert!(error.contains("unknown field `path`"), "{error}");
        assert!(error.contains("line 3, column 1"), "{error}");
        assert!(error.contains("file"), "the expected key is named: {error}");
        let error = ConfigFile::parse("[access_keys]\n").unwrap_err();
        assert!(error.contains("missing field `file`"), "{error}");
    }

    const OIDC_SECTIONS: &str = r#"
[[oidc]]
issuer = "https://token.actions.githubusercontent.com"
audience = "registry.example.com"
jwks_url = "https://token.actions.githubusercontent.com/.well-known/jwks"
username_claim = "repository"
username_prefix = "github:"
groups_claim = "groups"
algorithms = ["RS256", "ES256"]
max_age = "1h"
leeway = "30s"
jwks_refresh = "10m"
jwks_min_interval = "30s"
timeout = "5s"

[[oidc]]
issuer = "https://kubernetes.default.svc.cluster.local"
audience = "registry.example.com"
jwks_file = "k8s.jwks"
username_prefix = "k8s:"
"#;

    #[test]
    fn oidc_sections_parse_every_key() {
        let config = ConfigFile::parse(OIDC_SECTIONS).unwrap();
        assert_eq!(config.oidc.len(), 2);
        let github = &config.oidc[0];
        assert_eq!(github.issuer, "https://token.actions.githubusercontent.com");
        assert_eq!(github.audience, "registry.example.com");
        assert_eq!(github.username_claim.as_deref(), Some("repository"));
        assert_eq!(github.username_prefix.as_deref(), Some("github:"));
        assert_eq!(github.groups_claim.as_deref(), Some("groups"));
        assert_eq!(github.algorithms, Some(vec!["RS256".to_string(), "ES256".to_string()]));
        assert_eq!(github.max_age, Some(Duration::from_secs(3600)));
        assert_eq!(github.leeway, Some(Duration::from_secs(30)));
        assert_eq!(github.jwks_refresh, Some(Duration::from_secs(600)));
        assert_eq!(github.jwks_min_interval, Some(Duration::from_secs(30)));
        assert_eq!(github.timeout, Some(Duration::from_secs(5)));
        assert_eq!(config.oidc[1].jwks_file, Some(PathBuf::from("k8s.jwks")));
        assert!(ConfigFile::parse("").unwrap().oidc.is_empty());
    }

    #[test]
    fn oidc_sections_reject_unknown_keys() {
        let error = ConfigFile::parse(
            "[[oidc]]\nissuer = \"i\"\naudience = \"a\"\njwks_url = \"https://h\"\nusername_prefx = \"x:\"\n",
        )
        .unwrap_err();
        assert!(error.contains("unknown field `username_prefx`"), "{error}");
        assert!(error.contains("line 5, column 1"), "{error}");
        assert!(
            error.contains("username_prefix"),
            "the expected keys are listed: {error}"
        );
        let error = ConfigFile::parse("[[oidc]]\nissuer = \"i\"\n").unwrap_err();
        assert!(error.contains("missing field `audience`"), "{error}");
        let error = ConfigFile::parse("[oidc]\nissuer = \"i\"\naudience = \"a\"\n").unwrap_err();
        assert!(error.contains("oidc"), "a single [oidc] table is not the list: {error}");
    }

    #[test]
    fn oidc_jwks_files_follow_the_file_and_changes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csel-auth.toml");
        std::fs::write(&path, OIDC_SECTIONS.replace("k8s.jwks", "keys/k8s.jwks")).unwrap();
        let config = ConfigFile::load(&path).unwrap();
        assert_eq!(config.oidc[1].jwks_file, Some(dir.path().join("keys/k8s.jwks")));
        assert_eq!(config.oidc[0].jwks_file, None);
        let mut other = config.clone();
        other.oidc[0].max_age = None;
        assert_eq!(config.changed_keys(&other), vec!["[[oidc]]"]);
    }

    /// The commented-out section of examples/csel-auth.toml that starts at `marker`, uncommented
    /// and parsed: what an operator gets by removing the `# `.
    fn example_section(marker: &str) -> ConfigFile {
        let example = include_str!("../examples/csel-auth.toml");
        let start = example
            .find(marker)
            .unwrap_or_else(|| panic!("the example documents {marker}"));
        let end = example[start..].find("\n\n").map_or(example.len(), |at| start + at);
        let section: String = example[start..end]
            .lines()
            .map(|line| line.strip_prefix("# ").unwrap_or(line))
            .map(|line| format!("{line}\n"))
            .collect();
        ConfigFile::parse(&section).unwrap_or_else(|e| panic!("{e}\n{section}"))
    }

    #[test]
    fn the_example_registry_section_parses_once_uncommented() {
        let registry = example_section("# [registry]").registry.expect("a [registry] section");
        let settings = crate::registry::RegistrySettings::from_section(&registry).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(settings.url(), "http://127.0.0.1:5001");
    }

    #[test]
    fn the_example_oidc_sections_parse_once_uncommented() {
        let config = example_section("# [[oidc]]");
        let settings = crate::oidc::OidcSettings::from_sections(&config.oidc).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(settings.len(), 2);
        assert_eq!(settings[0].issuer(), "https://token.actions.githubusercontent.com");
    }
}
