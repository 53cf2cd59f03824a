//! The `[ldap]` section checked and completed with defaults: everything that can be wrong with
//! it is found when the service starts (or by `check --config`), not at the first login.

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use native_tls::{Certificate, Protocol, TlsConnector};

use super::escape::{is_attribute_name, FilterTemplate};
use crate::config::LdapSection;

pub const DEFAULT_USER_FILTER: &str = "(uid={user})";
pub const DEFAULT_GROUP_FILTER: &str = "(|(member={dn})(uniqueMember={dn}))";
pub const DEFAULT_GROUP_NAME_ATTRIBUTE: &str = "cn";
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// Logins remembered at most; the lead may size it like the htpasswd login cache.
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

/// A password or CA file is a few bytes to a few KB; a large one is the wrong file.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;
const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

/// A mistake in the `[ldap]` section: the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[ldap] {key}: {message}")]
pub struct LdapConfigError {
    pub key: &'static str,
    pub message: String,
}

fn invalid(key: &'static str, message: impl Into<String>) -> LdapConfigError {
    LdapConfigError {
        key,
        message: message.into(),
    }
}

/// Where a user's groups come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupSource {
    /// Neither `group_base` nor `member_of_attribute` given: logins only, no groups.
    None,
    /// Groups are the entries under `base` that `filter` matches, `{dn}` being the member's DN.
    Search { base: String, filter: FilterTemplate },
    /// Groups are the DNs in this attribute of the user entry (and of each group, when nesting).
    MemberOf { attribute: String },
}

/// How to reach the directory and read users and groups from it.
#[derive(Clone)]
pub struct LdapSettings {
    pub(crate) url: String,
    pub(crate) starttls: bool,
    pub(crate) tls: Option<TlsConnector>,
    pub(crate) service_account: Option<(String, String)>,
    pub(crate) user_base: String,
    pub(crate) user_filter: FilterTemplate,
    pub(crate) groups: GroupSource,
    pub(crate) group_name_attribute: String,
    pub(crate) nested_groups: bool,
    pub(crate) cache_ttl: Duration,
    pub(crate) cache_capacity: usize,
    pub(crate) timeout: Duration,
}

impl LdapSettings {
    /// Checks the section, reads the service account's password and the CA file, and fills in
    /// the defaults. Paths are used as given (`ConfigFile::load` already resolved them).
    pub fn from_section(section: &LdapSection) -> Result<LdapSettings, LdapConfigError> {
        let url = check_url(&section.url)?;
        let tls_url = url.starts_with("ldaps://");
        let starttls = section.starttls.unwrap_or(false);
        if starttls && tls_url {
            return Err(invalid(
                "starttls",
                "ldaps:// is TLS from the start; StartTLS is for ldap:// URLs",
            ));
        }
        let tls = match (&section.ca_file, tls_url || starttls) {
            (Some(_), false) => {
                return Err(invalid(
                    "ca_file",
                    "a CA is only used with TLS: use an ldaps:// URL or starttls = true",
                ))
            }
            (ca_file, true) => Some(tls_connector(ca_file.as_deref())?),
            (None, false) => None,
        };
        let service_account = match (&section.bind_dn, &section.bind_password_file) {
            (Some(dn), Some(file)) if !dn.trim().is_empty() => Some((dn.trim().to_string(), read_password(file)?)),
            (Some(_), Some(_)) => return Err(invalid("bind_dn", "is empty")),
            (Some(_), None) => {
                return Err(invalid(
                    "bind_password_file",
                    "missing: bind_dn needs a password file (passwords are never written in the config)",
                ))
            }
            (None, Some(_)) => return Err(invalid("bind_dn", "missing: bind_password_file is set without it")),
            (None, None) => None,
        };
        let user_base = section.user_base.trim().to_string();
        if user_base.is_empty() {
            return Err(invalid("user_base", "is empty"));
        }
        let user_filter = FilterTemplate::new(section.user_filter.as_deref().unwrap_or(DEFAULT_USER_FILTER), "{user}")
            .map_err(|e| invalid("user_filter", e))?;
        let member_of = section.member_of_attribute.as_deref().map(str::trim).unwrap_or("");
        let group_base = section.group_base.as_deref().map(str::trim).unwrap_or("");
        let groups = if !member_of.is_empty() {
            if section.group_filter.is_some() {
                return Err(invalid(
                    "member_of_attribute",
                    "and group_filter are two ways to find groups: remove one of them",
                ));
            }
            if !is_attribute_name(member_of) {
                return Err(invalid(
                    "member_of_attribute",
                    format!("`{member_of}` is not an attribute name"),
                ));
            }
            GroupSource::MemberOf {
                attribute: member_of.to_string(),
            }
        } else if !group_base.is_empty() {
            let filter = FilterTemplate::new(section.group_filter.as_deref().unwrap_or(DEFAULT_GROUP_FILTER), "{dn}")
                .map_err(|e| invalid("group_filter", e))?;
            GroupSource::Search {
                base: group_base.to_string(),
                filter,
            }
        } else if section.group_filter.is_some() {
            return Err(invalid("group_base", "missing: group_filter searches under it"));
        } else {
            GroupSource::None
        };
        let group_name_attribute = section
            .group_name_attribute
            .as_deref()
            .map(str::trim)
            .unwrap_or(DEFAULT_GROUP_NAME_ATTRIBUTE);
        if !is_attribute_name(group_name_attribute) {
            return Err(invalid(
                "group_name_attribute",
                format!("`{group_name_attribute}` is not an attribute name"),
            ));
        }
        let timeout = section.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            return Err(invalid("timeout", "must be longer than 0s"));
        }
        Ok(LdapSettings {
            url,
            starttls,
            tls,
            service_account,
            user_base,
            user_filter,
            groups,
            group_name_attribute: group_name_attribute.to_string(),
            nested_groups: section.nested_groups.unwrap_or(true),
            cache_ttl: section.cache_ttl.unwrap_or(DEFAULT_CACHE_TTL),
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            timeout,
        })
    }

    /// At most `capacity` logins are cached (0: none).
    pub fn with_cache_capacity(mut self, capacity: usize) -> LdapSettings {
        self.cache_capacity = capacity;
        self
    }

    /// The directory's URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn groups(&self) -> &GroupSource {
        &self.groups
    }

    /// Things that work but are probably not meant, for `check` and the start-up log.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.tls.is_none() && !is_loopback_url(&self.url) {
            warnings.push(format!(
                "[ldap] passwords go to {} unencrypted: use an ldaps:// URL or starttls = true",
                self.url
            ));
        }
        if self.service_account.is_none() {
            warnings.push("[ldap] no bind_dn: users and groups are searched anonymously".to_string());
        }
        if self.cache_ttl.is_zero() || self.cache_capacity == 0 {
            warnings.push("[ldap] the login cache is off: every request asks the directory".to_string());
        }
        warnings
    }
}

impl fmt::Debug for LdapSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LdapSettings")
            .field("url", &self.url)
            .field("starttls", &self.starttls)
            .field("tls", &self.tls.is_some())
            .field("bind_dn", &self.service_account.as_ref().map(|(dn, _)| dn))
            .field("user_base", &self.user_base)
            .field("user_filter", &self.user_filter.as_str())
            .field("groups", &self.groups)
            .field("group_name_attribute", &self.group_name_attribute)
            .field("nested_groups", &self.nested_groups)
            .field("cache_ttl", &self.cache_ttl)
            .field("cache_capacity", &self.cache_capacity)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `ldap://host[:port][/]` or `ldaps://...`; a DN or query in the URL is refused, since the
/// bases have keys of their own.
fn check_url(url: &str) -> Result<String, LdapConfigError> {
    let url = url.trim();
    let rest = url
        .strip_prefix("ldap://")
        .or_else(|| url.strip_prefix("ldaps://"))
        .ok_or_else(|| invalid("url", format!("`{url}` is not an ldap:// or ldaps:// URL")))?;
    let host_port = rest.strip_suffix('/').unwrap_or(rest);
    if host_port.contains(['/', '?', '@', ' ']) {
        return Err(invalid(
            "url",
            format!("`{url}`: give only the scheme, host and port (the bases are user_base and group_base)"),
        ));
    }
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && (host.starts_with('[') == host.ends_with(']')) => {
            (host, Some(port))
        }
        _ => (host_port, None),
    };
    if host.is_empty() || host == "[]" {
        return Err(invalid("url", format!("`{url}` names no host")));
    }
    if let Some(port) = port {
        if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
            return Err(invalid("url", format!("`{url}`: `{port}` is not a port number")));
        }
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    ["127.", "localhost", "[::1]"].iter().any(|p| rest.starts_with(p))
}

fn tls_connector(ca_file: Option<&Path>) -> Result<TlsConnector, LdapConfigError> {
    let mut builder = TlsConnector::builder();
    builder.min_protocol_version(Some(Protocol::Tlsv12));
    if let Some(path) = ca_file {
        let pem = read_small_file(path, MAX_CA_FILE_BYTES).map_err(|e| invalid("ca_file", e))?;
        let certificates = Certificate::stack_from_pem(&pem)
            .map_err(|e| invalid("ca_file", format!("{}: not PEM certificates ({e})", path.display())))?;
        if certificates.is_empty() {
            return Err(invalid(
                "ca_file",
                format!("{}: no certificate (-----BEGIN CERTIFICATE-----) in it", path.display()),
            ));
        }
        for certificate in certificates {
            builder.add_root_certificate(certificate);
        }
    }
    builder
        .build()
        .map_err(|e| invalid("ca_file", format!("cannot set up TLS: {e}")))
}

/// The password, with the line end an editor or `echo` leaves trimmed. A file others can read
/// is refused: the password opens the whole directory to whoever reads it.
fn read_password(path: &PathBuf) -> Result<String, LdapConfigError> {
    let key = "bind_password_file";
    let metadata = fs::metadata(path).map_err(|e| invalid(key, format!("{}: {e}", path.display())))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(invalid(
            key,
            format!(
                "{} can be read by every user (mode {mode:03o}); run `chmod o= {}`",
                path.display(),
                path.display()
            ),
        ));
    }
    let bytes = read_small_file(path, MAX_SECRET_FILE_BYTES).map_err(|e| invalid(key, e))?;
    let text = String::from_utf8(bytes).map_err(|_| invalid(key, format!("{}: not UTF-8 text", path.display())))?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        // An empty password would make an unauthenticated bind, which many servers accept
        // as anonymous: never send one.
        return Err(invalid(key, format!("{} is empty", path.display())));
    }
    Ok(password.to_string())
}

fn read_small_file(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let metadata = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !metadata.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    if metadata.len() > limit {
        return Err(format!(
            "{}: larger than {limit} bytes; is it the right file?",
            path.display()
        ));
    }
    fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(url: &str) -> LdapSection {
        LdapSection {
            url: url.to_string(),
            user_base: "ou=people,dc=example,dc=org".to_string(),
            ..LdapSection::default()
        }
    }

    fn error(section: &LdapSection) -> String {
        LdapSettings::from_section(section).unwrap_err().to_string()
    }

    #[test]
    fn defaults_fill_a_minimal_section() {
        let settings = LdapSettings::from_section(&section("ldap://127.0.0.1:3890/")).unwrap();
        assert_eq!(settings.url(), "ldap://127.0.0.1:3890");
        assert_eq!(settings.user_filter.as_str(), DEFAULT_USER_FILTER);
        assert_eq!(settings.groups, GroupSource::None);
        assert_eq!(settings.group_name_attribute, "cn");
        assert!(settings.nested_groups);
        assert_eq!(settings.cache_ttl, DEFAULT_CACHE_TTL);
        assert_eq!(settings.timeout, DEFAULT_TIMEOUT);
        assert!(settings.tls.is_none());
        assert_eq!(
            settings.warnings(),
            vec!["[ldap] no bind_dn: users and groups are searched anonymously"]
        );
    }

    #[test]
    fn urls_are_checked() {
        for (url, expected) in [
            ("http://h", "not an ldap:// or ldaps:// URL"),
            ("ldap://", "names no host"),
            ("ldap://h:0", "not a port number"),
            ("ldap://h:x", "not a port number"),
            ("ldap://h/dc=example,dc=org", "give only the scheme"),
            ("ldap://h?uid", "give only the scheme"),
        ] {
            let message = error(&section(url));
            assert!(message.contains(expected), "{url}: {message}");
            assert!(message.starts_with("[ldap] url: "), "{message}");
        }
        for url in ["ldap://h", "ldaps://h:636", "ldap://[::1]:389", "ldap://[::1]"] {
            let mut s = section(url);
            if url.starts_with("ldaps") {
                s.ca_file = None;
            }
            assert!(LdapSettings::from_section(&s).is_ok(), "{url}");
        }
        let settings = LdapSettings::from_section(&section("ldap://ldap.example.org")).unwrap();
        assert!(
            settings.warnings().iter().any(|w| w.contains("unencrypted")),
            "{:?}",
            settings.warnings()
        );
    }

    #[test]
    fn tls_settings_must_agree() {
        let mut s = section("ldaps://h");
        s.starttls = Some(true);
        assert!(error(&s).contains("ldaps:// is TLS from the start"), "{}", error(&s));
        let mut s = section("ldap://h");
        s.ca_file = Some(PathBuf::from("/nonexistent/ca.pem"));
        assert!(error(&s).contains("only used with TLS"), "{}", error(&s));
        s.starttls = Some(true);
        assert!(error(&s).contains("/nonexistent/ca.pem"), "{}", error(&s));
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        fs::write(&not_pem, "hello\n").unwrap();
        s.ca_file = Some(not_pem);
        assert!(error(&s).contains("no certificate"), "{}", error(&s));
    }

    #[test]
    fn the_password_file_is_read_trimmed_and_guarded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ldap.password");
        fs::write(&file, "s3cret word\r\n").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
        let mut s = section("ldap://127.0.0.1");
        s.bind_dn = Some("cn=csel-auth,dc=example,dc=org".into());
        s.bind_password_file = Some(file.clone());
        let settings = LdapSettings::from_section(&s).unwrap();
        assert_eq!(
            settings.service_account,
            Some(("cn=csel-auth,dc=example,dc=org".to_string(), "s3cret word".to_string()))
        );
        assert!(!format!("{settings:?}").contains("s3cret"));

        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let message = error(&s);
        assert!(message.contains("can be read by every user (mode 644)"), "{message}");
        assert!(message.contains("chmod o="), "{message}");

        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&file, "\n").unwrap();
        assert!(error(&s).contains("is empty"), "{}", error(&s));

        s.bind_password_file = None;
        assert!(error(&s).contains("bind_password_file: missing"), "{}", error(&s));
        s.bind_dn = None;
        s.bind_password_file = Some(file);
        assert!(error(&s).contains("bind_dn: missing"), "{}", error(&s));
        s.bind_password_file = Some(dir.path().join("absent"));
        s.bind_dn = Some("cn=x".into());
        assert!(error(&s).contains("absent"), "{}", error(&s));
    }

    #[test]
    fn group_settings_are_checked() {
        let mut s = section("ldap://127.0.0.1");
        s.group_base = Some("ou=groups,dc=example,dc=org".into());
        let settings = LdapSettings::from_section(&s).unwrap();
        assert!(
            matches!(&settings.groups, GroupSource::Search { filter, .. } if filter.as_str() == DEFAULT_GROUP_FILTER)
        );

        s.member_of_attribute = Some("memberOf".into());
        let settings = LdapSettings::from_section(&s).unwrap();
        assert_eq!(
            settings.groups,
            GroupSource::MemberOf {
                attribute: "memberOf".into()
            }
        );
        s.group_filter = Some("(member={dn})".into());
        assert!(error(&s).contains("remove one of them"), "{}", error(&s));
        s.member_of_attribute = Some(String::new());
        assert!(LdapSettings::from_section(&s).is_ok());
        s.group_filter = Some("(member={user})".into());
        let message = error(&s);
        assert!(message.starts_with("[ldap] group_filter:"), "{message}");
        assert!(message.contains("has no {dn}"), "{message}");

        let mut s = section("ldap://127.0.0.1");
        s.group_filter = Some("(member={dn})".into());
        assert!(error(&s).contains("group_base: missing"), "{}", error(&s));
        let mut s = section("ldap://127.0.0.1");
        s.group_name_attribute = Some("cn)(x".into());
        assert!(error(&s).contains("not an attribute name"), "{}", error(&s));
        let mut s = section("ldap://127.0.0.1");
        s.user_filter = Some("(uid=*)".into());
        assert!(error(&s).starts_with("[ldap] user_filter:"), "{}", error(&s));
        let mut s = section("ldap://127.0.0.1");
        s.timeout = Some(Duration::ZERO);
        assert!(error(&s).contains("timeout"), "{}", error(&s));
        let mut s = section("ldap://127.0.0.1");
        s.user_base = " ".into();
        assert!(error(&s).contains("user_base: is empty"), "{}", error(&s));
    }
}
