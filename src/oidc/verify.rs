//! Telling a JWT from a password, and checking one: the signature against the issuer's key,
//! then `iss`, `aud`, `exp`, `nbf`, `iat` and `max_age`, then the claims that become the user
//! name and groups.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::jwks::{Key, KeySet};
use super::settings::OidcSettings;

/// Longer passwords are not taken for tokens (real ones are 1–2 KB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// User and group names longer than this are refused.
pub const MAX_NAME_BYTES: usize = 256;
/// A token with more groups than this is refused.
pub const MAX_GROUPS: usize = 256;

/// Why a token from a configured issuer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("algorithm {0} is not accepted for this issuer")]
    Algorithm(String),
    #[error("the token has a critical header parameter csel-auth does not implement: {0}")]
    Critical(String),
    #[error("the issuer has no key {0:?}")]
    UnknownKey(String),
    #[error("the token names no key (kid) and {0} of the issuer's keys fit it")]
    AmbiguousKey(usize),
    #[error("the token's algorithm {alg} does not fit {kind} (kid {kid:?})")]
    KeyMismatch {
        alg: String,
        kind: &'static str,
        kid: String,
    },
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token is issued in the future (iat)")]
    IssuedInFuture,
    #[error("the token was issued more than max_age ago")]
    TooOld,
    #[error("the token is not meant for this registry (aud)")]
    WrongAudience,
    #[error("the token's iss is not this issuer")]
    WrongIssuer,
    #[error("the token has no {0} claim")]
    MissingClaim(String),
    #[error("the token's {0}")]
    BadClaim(String),
}

/// The unverified header and issuer of something shaped like a JWS in compact form.
pub(crate) struct Peeked {
    pub(crate) header: Header,
    pub(crate) issuer: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Header {
    pub(crate) alg: String,
    #[serde(default)]
    pub(crate) kid: Option<String>,
    #[serde(default)]
    pub(crate) crit: Option<Value>,
}

/// Two dots, and not too long: what every Basic login and every cached token pays (a count
/// the compiler vectorizes), before the cache is asked. A cached token is byte for byte one
/// that passed every check, so nothing else needs looking at first.
pub(crate) fn may_be_jws(text: &str) -> bool {
    // Counted in byte-wide lanes, 128 bytes at a time (a lane cannot overflow): a plain
    // `filter().count()` widens every byte to a usize and is several times slower.
    text.len() <= MAX_TOKEN_BYTES
        && text
            .as_bytes()
            .chunks(128)
            .map(|chunk| usize::from(chunk.iter().fold(0u8, |dots, b| dots + u8::from(*b == b'.'))))
            .sum::<usize>()
            == 2
}

/// Three base64url parts: checked before anything is decoded.
pub(crate) fn is_jws_shaped(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.len() > MAX_TOKEN_BYTES {
        return false;
    }
    let mut outside = false;
    let mut dots = 0u32;
    for &b in bytes {
        let letter = (b | 0x20).wrapping_sub(b'a') < 26;
        let digit = b.wrapping_sub(b'0') < 10;
        let dot = b == b'.';
        outside |= !(letter | digit | dot | (b == b'-') | (b == b'_'));
        dots += u32::from(dot);
    }
    !outside && dots == 2 && !bytes.starts_with(b".") && !text.contains("..")
}

/// The header and `iss` of a JWT, unverified; `None` when `text` is not one (not three base64url
/// parts, a header without a string `alg`, a payload without a string `iss`).
pub(crate) fn peek(text: &str) -> Option<Peeked> {
    if !is_jws_shaped(text) {
        return None;
    }
    let mut parts = text.split('.');
    let header: Header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next()?).ok()?).ok()?;
    #[derive(Deserialize)]
    struct Issuer {
        iss: String,
    }
    let issuer: Issuer = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next()?).ok()?).ok()?;
    Some(Peeked {
        header,
        issuer: issuer.iss,
    })
}

/// The algorithm named in the header, if the issuer accepts it.
pub(crate) fn accepted_algorithm(settings: &OidcSettings, header: &Header) -> Result<Algorithm, Refusal> {
    let refused = || Refusal::Algorithm(format!("{:?}", shorten(&header.alg)));
    // Parsed by name, exactly: `none` and HS* are no Algorithm the allow-list can hold.
    let alg: Algorithm = header.alg.parse().map_err(|_| refused())?;
    if !settings.algorithms.contains(&alg) {
        return Err(refused());
    }
    if let Some(crit) = &header.crit {
        return Err(Refusal::Critical(shorten(&crit.to_string())));
    }
    Ok(alg)
}

/// Where a key for the token was looked for.
pub(crate) enum KeyChoice<'a> {
    Found(Vec<&'a Key>),
    /// No key fits; fetching the keys again may help (a rotation).
    Missing(Refusal),
    /// No key can fit, whatever is fetched.
    Refused(Refusal),
}

/// The keys to check the token with: by `kid`; without one, the single key that fits the
/// algorithm (several would mean trying each, which a stranger's token must not cause).
pub(crate) fn choose_keys<'a>(keys: &'a KeySet, kid: Option<&str>, alg: Algorithm) -> KeyChoice<'a> {
    let candidates = keys.candidates(kid, alg);
    match (kid, candidates.len()) {
        (_, 1) => KeyChoice::Found(candidates),
        (Some(kid), 0) => match keys.has_kid(kid) {
            Some(key) => KeyChoice::Refused(Refusal::KeyMismatch {
                alg: format!("{alg:?}"),
                kind: key.kind.name(),
                kid: shorten(kid),
            }),
            None => KeyChoice::Missing(Refusal::UnknownKey(shorten(kid))),
        },
        (Some(_), _) => KeyChoice::Found(candidates),
        (None, 0) => KeyChoice::Missing(Refusal::UnknownKey(String::new())),
        (None, count) => KeyChoice::Refused(Refusal::AmbiguousKey(count)),
    }
}

/// Header values go into log lines: a stranger's 16 KiB `kid` must not.
fn shorten(text: &str) -> String {
    const SHOWN: usize = 64;
    match text.char_indices().nth(SHOWN) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// What a good token says.
#[derive(Debug)]
pub(crate) struct Verified {
    pub(crate) user: String,
    pub(crate) groups: Vec<String>,
    pub(crate) expires_at: SystemTime,
    /// Until when the cache may answer for it: `exp`, or `iat + max_age` when sooner.
    pub(crate) cache_until: u64,
}

/// Checks the signature with `keys` (one of them must verify it) and every claim.
pub(crate) fn verify(
    settings: &OidcSettings,
    token: &str,
    alg: Algorithm,
    keys: &[&Key],
    now: u64,
) -> Result<Verified, Refusal> {
    let mut validation = Validation::new(alg);
    validation.leeway = settings.leeway.as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = true;
    validation.set_audience(&[&settings.audience]);
    validation.set_issuer(&[&settings.issuer]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    let mut last = Refusal::BadSignature;
    let mut claims = None;
    for key in keys {
        match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation) {
            Ok(data) => {
                claims = Some(data.claims);
                break;
            }
            Err(error) => {
                last = refusal(&error);
                // Only a signature that fails with this key is worth trying the next one.
                if last != Refusal::BadSignature {
                    return Err(last);
                }
            }
        }
    }
    let claims = claims.ok_or(last)?;
    let exp = claims.get("exp").and_then(timestamp).ok_or_else(|| {
        // The library already refused a missing or malformed exp; this is its format.
        Refusal::BadClaim("exp is not a number of seconds".to_string())
    })?;
    let leeway = settings.leeway.as_secs();
    let iat = match claims.get("iat") {
        None | Some(Value::Null) => None,
        Some(value) => {
            Some(timestamp(value).ok_or_else(|| Refusal::BadClaim("iat is not a number of seconds".into()))?)
        }
    };
    if iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
        return Err(Refusal::IssuedInFuture);
    }
    let mut cache_until = exp;
    if let Some(max_age) = settings.max_age {
        let iat = iat.ok_or_else(|| Refusal::MissingClaim("iat".to_string()))?;
        let limit = iat.saturating_add(max_age.as_secs());
        if now > limit.saturating_add(leeway) {
            return Err(Refusal::TooOld);
        }
        cache_until = cache_until.min(limit);
    }
    let user = user_name(settings, &claims)?;
    let groups = groups(settings, &claims)?;
    Ok(Verified {
        user,
        groups,
        expires_at: UNIX_EPOCH + Duration::from_secs(exp),
        cache_until,
    })
}

fn refusal(error: &jsonwebtoken::errors::Error) -> Refusal {
    match error.kind() {
        ErrorKind::InvalidSignature => Refusal::BadSignature,
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::ImmatureSignature => Refusal::NotYetValid,
        ErrorKind::InvalidAudience => Refusal::WrongAudience,
        ErrorKind::InvalidIssuer => Refusal::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) => Refusal::MissingClaim(claim.clone()),
        ErrorKind::InvalidClaimFormat(claim) => Refusal::BadClaim(format!("{claim} has the wrong type")),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => {
            Refusal::Algorithm("(header)".to_string())
        }
        _ => Refusal::Malformed(error.to_string()),
    }
}

/// Seconds since the epoch: JWT's NumericDate, which may have a fraction.
fn timestamp(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64)),
        _ => None,
    }
}

/// `username_prefix` + the username claim, which must be a non-empty string without control
/// characters.
fn user_name(settings: &OidcSettings, claims: &Map<String, Value>) -> Result<String, Refusal> {
    let claim = settings.username_claim.as_str();
    let value = settings
        .username_claim
        .get(claims)
        .ok_or_else(|| Refusal::MissingClaim(claim.to_string()))?;
    let Value::String(name) = value else {
        return Err(Refusal::BadClaim(format!("{claim} is not a string")));
    };
    check_name(claim, name)?;
    Ok(format!("{}{name}", settings.username_prefix))
}

/// The groups claim (absent: no groups), a string or an array of strings, each prefixed like the
/// user name so that an issuer cannot claim a local group.
fn groups(settings: &OidcSettings, claims: &Map<String, Value>) -> Result<Vec<String>, Refusal> {
    let Some(groups_claim) = &settings.groups_claim else {
        return Ok(Vec::new());
    };
    let claim = groups_claim.as_str();
    let names: Vec<&str> = match groups_claim.get(claims) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(name)) => vec![name],
        Some(Value::Array(items)) => {
            if items.len() > MAX_GROUPS {
                return Err(Refusal::BadClaim(format!(
                    "{claim} holds more than {MAX_GROUPS} groups"
                )));
            }
            items
                .iter()
                .map(|item| {
                    item.as_str()
                        .ok_or_else(|| Refusal::BadClaim(format!("{claim} holds something other than strings")))
                })
                .collect::<Result<_, _>>()?
        }
        Some(_) => {
            return Err(Refusal::BadClaim(format!(
                "{claim} is neither a string nor an array of strings"
            )))
        }
    };
    let mut groups = Vec::with_capacity(names.len());
    for name in names {
        check_name(claim, name)?;
        groups.push(format!("{}{name}", settings.username_prefix));
    }
    groups.sort();
    groups.dedup();
    Ok(groups)
}

fn check_name(claim: &str, name: &str) -> Result<(), Refusal> {
    if name.is_empty() {
        return Err(Refusal::BadClaim(format!("{claim} is empty")));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Refusal::BadClaim(format!(
            "{claim} is longer than {MAX_NAME_BYTES} bytes"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Refusal::BadClaim(format!("{claim} contains a control character")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn passwords_are_not_jwts() {
        for text in [
            "hunter2",
            "a.b",
            "a.b.c.d",
            ".b.c",
            "a..c",
            "has space.b.c",
            "a+b.c/d.e=",
            "a@.b.c",
            "a[.b.c",
            "a`.b.c",
            "a{.b.c",
            "a:.b.c",
            "a/.b.c",
            "é.b.c",
            &format!("{}.{}.sig", b64("{\"alg\":\"RS256\"}"), b64("{\"iss\":\"x\"}")).repeat(1000),
        ] {
            assert!(peek(text).is_none(), "{text}");
        }
        for text in ["a.b.c", "a.b.", "AZaz09-_.x.y"] {
            assert!(is_jws_shaped(text), "{text}");
        }
        let long = format!("{}.{}.{}", "a".repeat(200), "b".repeat(300), "c".repeat(100));
        assert!(may_be_jws(&long) && is_jws_shaped(&long));
        assert!(!may_be_jws(&".".repeat(300)), "more dots than a byte lane holds");
        assert!(!may_be_jws(&format!("{long}.")));
        assert!(!may_be_jws(&"a.b.c".repeat(MAX_TOKEN_BYTES)));
        // Shaped like one, but the parts are not the JSON a JWT holds.
        assert!(peek(&format!("{}.{}.sig", b64("[1]"), b64("{\"iss\":\"x\"}"))).is_none());
        assert!(peek(&format!("{}.{}.sig", b64("{\"alg\":1}"), b64("{\"iss\":\"x\"}"))).is_none());
        assert!(peek(&format!(
            "{}.{}.sig",
            b64("{\"alg\":\"RS256\"}"),
            b64("{\"iss\":[\"x\"]}")
        ))
        .is_none());
        assert!(peek(&format!(
            "{}.{}.sig",
            b64("{\"alg\":\"RS256\"}"),
            b64("{\"sub\":\"x\"}")
        ))
        .is_none());
        assert!(peek(&format!("{}.{}.sig", "!!", b64("{\"iss\":\"x\"}"))).is_none());
    }

    #[test]
    fn a_jwt_is_peeked_without_its_signature() {
        let token = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","kid":"k1","typ":"JWT"}"#),
            b64(r#"{"iss":"https://issuer","sub":"x"}"#)
        );
        let peeked = peek(&token).unwrap();
        assert_eq!(peeked.issuer, "https://issuer");
        assert_eq!(peeked.header.alg, "none");
        assert_eq!(peeked.header.kid.as_deref(), Some("k1"));
    }

    #[test]
    fn numeric_dates_may_have_fractions() {
        assert_eq!(timestamp(&serde_json::json!(1_700_000_000)), Some(1_700_000_000));
        assert_eq!(timestamp(&serde_json::json!(1_700_000_000.75)), Some(1_700_000_000));
        assert_eq!(timestamp(&serde_json::json!(-1)), None);
        assert_eq!(timestamp(&serde_json::json!("1700000000")), None);
    }

    #[test]
    fn header_values_are_shortened_for_the_log() {
        assert_eq!(shorten("kid-1"), "kid-1");
        let long = "é".repeat(100);
        assert_eq!(shorten(&long), format!("{}…", "é".repeat(64)));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("sub", "repo:org/app:ref:refs/heads/main").is_ok());
        assert!(check_name("sub", "").is_err());
        assert!(check_name("sub", "a\u{7}b").is_err());
        assert!(check_name("sub", "a\nb").is_err());
        assert!(check_name("sub", &"x".repeat(MAX_NAME_BYTES)).is_ok());
        assert!(check_name("sub", &"x".repeat(MAX_NAME_BYTES + 1)).is_err());
    }
}
