//! The `[[oidc]]` sections checked and completed with defaults: everything that can be wrong
//! with them is found when the service starts (or by `check --config`), not at the first login.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::config::OidcSection;

pub const DEFAULT_USERNAME_CLAIM: &str = "sub";
/// What GitHub Actions, Kubernetes, GitLab and most OIDC providers sign with.
pub const DEFAULT_ALGORITHMS: [Algorithm; 2] = [Algorithm::RS256, Algorithm::ES256];
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// The most clock skew that may be allowed: more would make `exp` meaningless.
pub const MAX_LEEWAY: Duration = Duration::from_secs(5 * 60);
/// Issuers rotate keys rarely and publish new ones ahead of use; an unknown `kid` triggers an
/// early fetch anyway.
pub const DEFAULT_URL_REFRESH: Duration = Duration::from_secs(10 * 60);
/// A file is only looked at (its size, time and inode), and read again when it changed.
pub const DEFAULT_FILE_REFRESH: Duration = Duration::from_secs(5);
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Verified tokens remembered at most (all issuers together).
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;
/// Longer prefixes are refused: they are meant to be short tags such as `github:`.
const MAX_PREFIX_BYTES: usize = 64;

/// A mistake in an `[[oidc]]` section: which one, the key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[[oidc]] {section}: {key}: {message}")]
pub struct OidcConfigError {
    /// `issuer = "..."`, or the section's number when it has no usable issuer.
    pub section: String,
    pub key: &'static str,
    pub message: String,
}

/// Where an issuer's keys come from.
#[derive(Clone)]
pub enum JwksSource {
    /// Fetched over HTTPS (or HTTP on a loopback address).
    Url { url: String, client: reqwest::Client },
    /// Read from a JWKS file, again whenever it changes.
    File { path: PathBuf },
}

impl fmt::Debug for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksSource::Url { url, .. } => f.debug_tuple("Url").field(url).finish(),
            JwksSource::File { path } => f.debug_tuple("File").field(path).finish(),
        }
    }
}

impl fmt::Display for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksSource::Url { url, .. } => f.write_str(url),
            JwksSource::File { path } => write!(f, "{}", path.display()),
        }
    }
}

/// A claim: a top-level name (`repository`), or a JSON pointer into nested claims
/// (`/kubernetes.io/namespace`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    Name(String),
    Pointer(String),
}

impl Claim {
    fn parse(text: &str) -> Result<Claim, String> {
        if text.is_empty() {
            return Err("is empty".to_string());
        }
        if text.chars().any(char::is_control) {
            return Err(format!("{text:?} contains a control character"));
        }
        if text.starts_with('/') {
            if text.len() == 1 {
                return Err("`/` points at the whole claims object, not at one claim".to_string());
            }
            Ok(Claim::Pointer(text.to_string()))
        } else {
            Ok(Claim::Name(text.to_string()))
        }
    }

    /// The claim's value in `claims`, if present.
    pub(crate) fn get<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        match self {
            Claim::Name(name) => claims.get(name),
            Claim::Pointer(pointer) => {
                let (first, rest) = split_pointer(pointer);
                let value = claims.get(&unescape_pointer(first))?;
                if rest.is_empty() {
                    Some(value)
                } else {
                    value.pointer(rest)
                }
            }
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Claim::Name(text) | Claim::Pointer(text) => text,
        }
    }
}

/// `/a/b/c` as `a` and `/b/c`.
fn split_pointer(pointer: &str) -> (&str, &str) {
    let body = &pointer[1..];
    match body.find('/') {
        Some(at) => (&body[..at], &body[at..]),
        None => (body, ""),
    }
}

/// RFC 6901: `~1` is `/` and `~0` is `~`, in that order.
fn unescape_pointer(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// One trusted issuer: how to get its keys and how its tokens become users and groups.
#[derive(Clone)]
pub struct OidcSettings {
    pub(crate) issuer: String,
    pub(crate) audience: String,
    pub(crate) source: JwksSource,
    pub(crate) username_claim: Claim,
    pub(crate) username_prefix: String,
    pub(crate) groups_claim: Option<Claim>,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) max_age: Option<Duration>,
    pub(crate) leeway: Duration,
    pub(crate) refresh: Duration,
    pub(crate) min_interval: Duration,
    pub(crate) timeout: Duration,
}

impl OidcSettings {
    /// Checks every section, and that no issuer appears twice. Paths are used as given
    /// (`ConfigFile::load` already resolved them).
    pub fn from_sections(sections: &[OidcSection]) -> Result<Vec<OidcSettings>, OidcConfigError> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut all = Vec::with_capacity(sections.len());
        for (number, section) in sections.iter().enumerate() {
            let settings = OidcSettings::from_section(section).map_err(|mut e| {
                if section.issuer.trim().is_empty() {
                    e.section = format!("#{}", number + 1);
                }
                e
            })?;
            if let Some(first) = seen.insert(&section.issuer, number) {
                return Err(OidcConfigError {
                    section: format!("issuer = {:?}", section.issuer),
                    key: "issuer",
                    message: format!(
                        "sections #{} and #{} trust the same issuer: merge them (a token names one issuer, so \
                         only one section could apply)",
                        first + 1,
                        number + 1
                    ),
                });
            }
            all.push(settings);
        }
        Ok(all)
    }

    /// Checks one section and fills in the defaults.
    pub fn from_section(section: &OidcSection) -> Result<OidcSettings, OidcConfigError> {
        let invalid = |key: &'static str, message: String| OidcConfigError {
            section: format!("issuer = {:?}", section.issuer),
            key,
            message,
        };
        let issuer = exact_text(&section.issuer).map_err(|e| invalid("issuer", e))?;
        let audience = exact_text(&section.audience).map_err(|e| invalid("audience", e))?;
        let timeout = section.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            return Err(invalid("timeout", "must be longer than 0s".to_string()));
        }
        let source = match (&section.jwks_url, &section.jwks_file) {
            (Some(url), None) => {
                let url = check_url(url).map_err(|e| invalid("jwks_url", e))?;
                if section.ca_file.is_some() && !url.starts_with("https://") {
                    return Err(invalid(
                        "ca_file",
                        "is for an https:// jwks_url; remove it, or fetch the keys over https".to_string(),
                    ));
                }
                let client = crate::outbound::http_client(&crate::outbound::ClientSettings {
                    timeout,
                    no_proxy: reqwest::Url::parse(&url).is_ok_and(|u| u.host_str().is_some_and(is_loopback)),
                    ca_file: section.ca_file.as_deref(),
                })
                .map_err(|e| invalid("ca_file", e))?;
                JwksSource::Url { url, client }
            }
            (None, Some(_)) if section.ca_file.is_some() => {
                return Err(invalid(
                    "ca_file",
                    "is for an https:// jwks_url; a jwks_file is read, not fetched".to_string(),
                ))
            }
            (None, Some(path)) => {
                if path.as_os_str().is_empty() {
                    return Err(invalid("jwks_file", "is empty".to_string()));
                }
                JwksSource::File { path: path.clone() }
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "jwks_url",
                    "and jwks_file are both set: the keys come from one place, remove one of them".to_string(),
                ))
            }
            (None, None) => {
                return Err(invalid(
                    "jwks_url",
                    "missing: give the issuer's key set as jwks_url (fetched) or jwks_file (read)".to_string(),
                ))
            }
        };
        let username_claim = Claim::parse(section.username_claim.as_deref().unwrap_or(DEFAULT_USERNAME_CLAIM))
            .map_err(|e| invalid("username_claim", e))?;
        let username_prefix = match section.username_prefix.as_deref() {
            None => {
                return Err(invalid(
                    "username_prefix",
                    "missing: names from this issuer need a prefix of their own (such as \"github:\") so that \
                     a token can never log in as a local user"
                        .to_string(),
                ))
            }
            Some("") => {
                return Err(invalid(
                    "username_prefix",
                    "is empty: without a prefix a token could log in as a local user of the same name".to_string(),
                ))
            }
            Some(prefix) if prefix.chars().any(|c| c.is_control() || c.is_whitespace()) => {
                return Err(invalid(
                    "username_prefix",
                    format!("{prefix:?} contains white space or a control character"),
                ))
            }
            Some(prefix) if prefix.len() > MAX_PREFIX_BYTES => {
                return Err(invalid(
                    "username_prefix",
                    format!("is longer than {MAX_PREFIX_BYTES} bytes"),
                ))
            }
            Some(prefix) => prefix.to_string(),
        };
        let groups_claim = section
            .groups_claim
            .as_deref()
            .map(Claim::parse)
            .transpose()
            .map_err(|e| invalid("groups_claim", e))?;
        let algorithms = match &section.algorithms {
            None => DEFAULT_ALGORITHMS.to_vec(),
            Some(names) => parse_algorithms(names).map_err(|e| invalid("algorithms", e))?,
        };
        if section.max_age.is_some_and(|age| age.is_zero()) {
            return Err(invalid("max_age", "must be longer than 0s".to_string()));
        }
        let leeway = section.leeway.unwrap_or(DEFAULT_LEEWAY);
        if leeway > MAX_LEEWAY {
            return Err(invalid(
                "leeway",
                format!(
                    "{} is more than {}: clocks that far apart need fixing, not tolerating",
                    humantime::format_duration(leeway),
                    humantime::format_duration(MAX_LEEWAY)
                ),
            ));
        }
        let refresh = section.jwks_refresh.unwrap_or(match source {
            JwksSource::Url { .. } => DEFAULT_URL_REFRESH,
            JwksSource::File { .. } => DEFAULT_FILE_REFRESH,
        });
        if refresh.is_zero() {
            return Err(invalid("jwks_refresh", "must be longer than 0s".to_string()));
        }
        let min_interval = section.jwks_min_interval.unwrap_or(DEFAULT_MIN_INTERVAL);
        if min_interval.is_zero() {
            return Err(invalid(
                "jwks_min_interval",
                "must be longer than 0s: it is what keeps made-up key ids from making csel-auth hammer the \
                 issuer"
                    .to_string(),
            ));
        }
        Ok(OidcSettings {
            issuer,
            audience,
            source,
            username_claim,
            username_prefix,
            groups_claim,
            algorithms,
            max_age: section.max_age,
            leeway,
            refresh,
            min_interval,
            timeout,
        })
    }

    /// The `iss` value this section trusts.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    pub fn username_prefix(&self) -> &str {
        &self.username_prefix
    }

    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// Things that work but are probably not meant, for `check` and the start-up log.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        // `/` at the end: csel-auth reserves the prefix (no htpasswd or LDAP user whose name
        // starts with it can log in), and the names fit a repository path (`${user}`).
        if !self.username_prefix.contains(':') && !self.username_prefix.ends_with('/') {
            warnings.push(format!(
                "[[oidc]] issuer = {:?}: username_prefix {:?} has no ':' and does not end with '/', so a name \
                 from this issuer could run into another's; a prefix such as \"github/\" (usable in \
                 repository paths) or \"github:\" rules that out",
                self.issuer, self.username_prefix
            ));
        }
        warnings
    }
}

impl fmt::Debug for OidcSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcSettings")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("source", &self.source)
            .field("username_claim", &self.username_claim)
            .field("username_prefix", &self.username_prefix)
            .field("groups_claim", &self.groups_claim)
            .field("algorithms", &self.algorithms)
            .field("max_age", &self.max_age)
            .field("leeway", &self.leeway)
            .field("refresh", &self.refresh)
            .field("min_interval", &self.min_interval)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Claims are compared byte for byte: white space around a value would never match.
fn exact_text(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("is empty".to_string());
    }
    if text.trim() != text || text.chars().any(char::is_control) {
        return Err(format!(
            "{text:?} has white space around it or a control character; tokens are compared byte for byte"
        ));
    }
    Ok(text.to_string())
}

/// The allow-list. `none` and the HMAC algorithms are refused outright: an issuer's keys are
/// public, and accepting HS256 "signed" with a public key is the classic key-confusion attack.
/// The public-key signature algorithms csel-auth accepts, by their JOSE names (case-sensitive).
pub(super) fn public_key_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    if names.is_empty() {
        return Err("is empty: no token could be accepted".to_string());
    }
    let mut algorithms = Vec::new();
    for name in names {
        let algorithm = match public_key_algorithm(name) {
            Some(algorithm) => algorithm,
            None if name.eq_ignore_ascii_case("none") => {
                return Err("`none` means unsigned tokens: it is never accepted".to_string())
            }
            None if name.to_ascii_uppercase().starts_with("HS") => {
                return Err(format!(
                    "`{name}` (HMAC) needs a shared secret, and an issuer's keys are public: it is never \
                     accepted"
                ))
            }
            None => {
                return Err(format!(
                    "`{name}` is not a signature algorithm csel-auth knows; expected some of RS256, RS384, \
                     RS512, PS256, PS384, PS512, ES256, ES384, EdDSA (names are case-sensitive)"
                ))
            }
        };
        if !algorithms.contains(&algorithm) {
            algorithms.push(algorithm);
        }
    }
    Ok(algorithms)
}

/// `https://host[:port]/path`, or `http://` to a loopback address (a sidecar, a test): keys
/// fetched in clear text over a network could be replaced on the way, and whoever replaces
/// them logs in as anyone.
fn check_url(text: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("`{text}` is not a URL ({e})"))?;
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("`{text}` names no host"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "`{text}` holds credentials: JWKS are public, fetch them without"
        ));
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(host) => {}
        "http" => {
            return Err(format!(
                "`{text}`: keys fetched over plain http could be swapped on the way; use https:// (http:// is \
                 only allowed to a loopback address)"
            ))
        }
        other => return Err(format!("`{text}`: `{other}` is not http or https")),
    }
    Ok(text.to_string())
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section() -> OidcSection {
        OidcSection {
            issuer: "https://token.actions.githubusercontent.com".into(),
            audience: "registry.example.com".into(),
            jwks_url: Some("https://token.actions.githubusercontent.com/.well-known/jwks".into()),
            username_prefix: Some("github:".into()),
            ..OidcSection::default()
        }
    }

    fn error(section: &OidcSection) -> String {
        OidcSettings::from_section(section).unwrap_err().to_string()
    }

    #[test]
    fn a_ca_file_goes_with_an_https_url_and_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = section();
        s.ca_file = Some(dir.path().join("missing.pem"));
        let message = error(&s);
        assert!(
            message.contains("ca_file") && message.contains("cannot read it"),
            "{message}"
        );
        s.jwks_url = Some("http://127.0.0.1:8080/jwks".into());
        assert!(
            error(&s).contains("ca_file: is for an https:// jwks_url"),
            "{}",
            error(&s)
        );
        s.jwks_url = None;
        s.jwks_file = Some(dir.path().join("keys.json"));
        assert!(error(&s).contains("a jwks_file is read, not fetched"), "{}", error(&s));
    }

    #[test]
    fn defaults_fill_a_minimal_section() {
        let settings = OidcSettings::from_section(&section()).unwrap();
        assert_eq!(settings.username_claim, Claim::Name("sub".into()));
        assert_eq!(settings.algorithms, DEFAULT_ALGORITHMS.to_vec());
        assert_eq!(settings.leeway, DEFAULT_LEEWAY);
        assert_eq!(settings.refresh, DEFAULT_URL_REFRESH);
        assert_eq!(settings.min_interval, DEFAULT_MIN_INTERVAL);
        assert_eq!(settings.max_age, None);
        assert!(settings.warnings().is_empty(), "{:?}", settings.warnings());
        let mut file = section();
        file.jwks_url = None;
        file.jwks_file = Some("/etc/csel-auth/k8s.jwks".into());
        assert_eq!(OidcSettings::from_section(&file).unwrap().refresh, DEFAULT_FILE_REFRESH);
    }

    #[test]
    fn exactly_one_key_source() {
        let mut s = section();
        s.jwks_file = Some("/x".into());
        assert!(error(&s).contains("both set"), "{}", error(&s));
        s.jwks_url = None;
        s.jwks_file = None;
        assert!(error(&s).contains("jwks_url: missing"), "{}", error(&s));
        s.jwks_file = Some(PathBuf::new());
        assert!(error(&s).contains("jwks_file: is empty"), "{}", error(&s));
    }

    #[test]
    fn urls_must_be_https_except_on_loopback() {
        for (url, expected) in [
            ("http://issuer.example.com/jwks", "plain http"),
            ("http://10.0.0.1/jwks", "plain http"),
            ("ftp://h/jwks", "not http or https"),
            ("https://user:pw@h/jwks", "credentials"),
            ("not a url", "not a URL"),
        ] {
            let mut s = section();
            s.jwks_url = Some(url.into());
            let message = error(&s);
            assert!(message.contains(expected), "{url}: {message}");
            assert!(message.contains("jwks_url:"), "{message}");
        }
        for url in [
            "http://127.0.0.1:8080/jwks",
            "http://localhost/jwks",
            "http://[::1]:9/jwks",
            "https://h/jwks",
        ] {
            let mut s = section();
            s.jwks_url = Some(url.into());
            assert!(OidcSettings::from_section(&s).is_ok(), "{url}");
        }
    }

    #[test]
    fn none_and_hmac_are_config_errors() {
        for (names, expected) in [
            (vec!["RS256", "none"], "`none` means unsigned"),
            (vec!["NONE"], "`none` means unsigned"),
            (vec!["HS256"], "HMAC"),
            (vec!["ES256", "hs512"], "HMAC"),
            (vec!["rs256"], "case-sensitive"),
            (vec![], "is empty"),
        ] {
            let mut s = section();
            s.algorithms = Some(names.iter().map(|n| n.to_string()).collect());
            let message = error(&s);
            assert!(message.contains(expected), "{names:?}: {message}");
            assert!(message.contains("algorithms:"), "{message}");
        }
        let mut s = section();
        s.algorithms = Some(vec!["ES256".into(), "PS256".into(), "ES256".into(), "EdDSA".into()]);
        assert_eq!(
            OidcSettings::from_section(&s).unwrap().algorithms,
            vec![Algorithm::ES256, Algorithm::PS256, Algorithm::EdDSA]
        );
    }

    #[test]
    fn the_prefix_is_required_and_checked() {
        let mut s = section();
        s.username_prefix = None;
        assert!(error(&s).contains("username_prefix: missing"), "{}", error(&s));
        s.username_prefix = Some(String::new());
        assert!(error(&s).contains("username_prefix: is empty"), "{}", error(&s));
        s.username_prefix = Some("git hub:".into());
        assert!(error(&s).contains("white space"), "{}", error(&s));
        s.username_prefix = Some("x".repeat(65));
        assert!(error(&s).contains("longer than 64"), "{}", error(&s));
        s.username_prefix = Some("ci-".into());
        let settings = OidcSettings::from_section(&s).unwrap();
        assert!(
            settings.warnings()[0].contains("has no ':'"),
            "{:?}",
            settings.warnings()
        );
        s.username_prefix = Some("ci/".into());
        assert_eq!(OidcSettings::from_section(&s).unwrap().warnings(), Vec::<String>::new());
    }

    #[test]
    fn texts_and_durations_are_checked() {
        let mut s = section();
        s.issuer = " https://h".into();
        assert!(error(&s).contains("issuer: "), "{}", error(&s));
        let mut s = section();
        s.audience = String::new();
        assert!(error(&s).contains("audience: is empty"), "{}", error(&s));
        let mut s = section();
        s.max_age = Some(Duration::ZERO);
        assert!(error(&s).contains("max_age"), "{}", error(&s));
        let mut s = section();
        s.leeway = Some(Duration::from_secs(600));
        assert!(error(&s).contains("leeway: 10m is more than 5m"), "{}", error(&s));
        let mut s = section();
        s.jwks_min_interval = Some(Duration::ZERO);
        assert!(error(&s).contains("jwks_min_interval"), "{}", error(&s));
        let mut s = section();
        s.jwks_refresh = Some(Duration::ZERO);
        assert!(error(&s).contains("jwks_refresh"), "{}", error(&s));
        let mut s = section();
        s.timeout = Some(Duration::ZERO);
        assert!(error(&s).contains("timeout"), "{}", error(&s));
        let mut s = section();
        s.username_claim = Some(String::new());
        assert!(error(&s).contains("username_claim: is empty"), "{}", error(&s));
        s.username_claim = Some("/".into());
        assert!(error(&s).contains("whole claims object"), "{}", error(&s));
        let mut s = section();
        s.groups_claim = Some("gro\nups".into());
        assert!(error(&s).contains("groups_claim"), "{}", error(&s));
    }

    #[test]
    fn duplicate_issuers_are_an_error() {
        let mut other = section();
        other.audience = "other".into();
        let message = OidcSettings::from_sections(&[section(), other])
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("sections #1 and #2 trust the same issuer"),
            "{message}"
        );
        let mut nameless = section();
        nameless.issuer = String::new();
        let message = OidcSettings::from_sections(&[section(), nameless])
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("[[oidc]] #2: issuer: is empty"), "{message}");
    }

    #[test]
    fn claims_are_names_or_json_pointers() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"sub": "s", "kubernetes.io": {"namespace": "ci", "serviceaccount": {"name": "builder"}},
                "a/b": 1, "t~": 2}"#,
        )
        .unwrap();
        let get = |text: &str| Claim::parse(text).unwrap().get(&claims).cloned();
        assert_eq!(get("sub"), Some(Value::from("s")));
        assert_eq!(get("/kubernetes.io/namespace"), Some(Value::from("ci")));
        assert_eq!(get("/kubernetes.io/serviceaccount/name"), Some(Value::from("builder")));
        assert_eq!(get("kubernetes.io"), claims.get("kubernetes.io").cloned());
        assert_eq!(get("/a~1b"), Some(Value::from(1)));
        assert_eq!(get("/t~0"), Some(Value::from(2)));
        assert_eq!(get("/kubernetes.io/nothing"), None);
        assert_eq!(get("missing"), None);
    }
}
