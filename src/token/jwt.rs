//! Tokens as compact JWTs (HS256): [`issue`] and [`verify`].

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::Mac;
use rand::RngCore;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{format_scopes, Identity, Scope, TokenKey, TokenSettings, CLOCK_LEEWAY, MAX_TOKEN_LEN};

/// Claims JSON budget: base64 turns 5 KiB into ~6.8 KiB, leaving room for the
/// header, the signature and the `Authorization: Bearer ` prefix under 8 KiB.
const CLAIMS_JSON_BUDGET: usize = 5 * 1024;
pub(super) const JWT_HEADER_JSON: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
/// Latest instant `issued_at` can represent with a four-digit year.
const MAX_RFC3339_SECS: u64 = 253_402_300_799;

/// The two kinds of token. They are signed with different keys, so one never
/// verifies as the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Access,
    Refresh,
}

impl TokenKind {
    pub(super) fn claim(self) -> &'static str {
        match self {
            TokenKind::Access => "access",
            TokenKind::Refresh => "refresh",
        }
    }

    fn other(self) -> TokenKind {
        match self {
            TokenKind::Access => TokenKind::Refresh,
            TokenKind::Refresh => TokenKind::Access,
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    pub expires_in: u64,
    /// RFC 3339 UTC, e.g. `2009-11-10T23:00:00Z`.
    pub issued_at: String,
    pub refresh_token: Option<String>,
    /// The scopes actually written into the token, space-separated (OAuth's
    /// required `scope` response field).
    pub scope: String,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .field("issued_at", &self.issued_at)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "<redacted>"))
            .field("scope", &self.scope)
            .finish()
    }
}

/// Issues an access token for `identity` (and a refresh token when asked and
/// the identity is a user). `access` goes into the informational `access`
/// claim, trimmed so the token stays under [`MAX_TOKEN_LEN`]. A non-empty
/// `binding` (a fingerprint of the user's password entry) goes into both
/// tokens, so that whoever [`verify`]s them can refuse them once the
/// credential changed; anonymous access tokens carry none.
pub fn issue(
    key: &TokenKey,
    settings: &TokenSettings,
    identity: &Identity,
    access: &[Scope],
    binding: &str,
    with_refresh: bool,
    now: SystemTime,
) -> IssuedToken {
    issue_with(key, settings, identity, access, binding, None, with_refresh, now)
}

/// A user an identity source other than the htpasswd file confirmed (LDAP, OIDC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Federation {
    /// The source, as the `src` claim names it (`ldap`, `oidc:<issuer>`).
    pub source: String,
    /// The groups the source gave: the `grp` claim, which the rules decide with.
    pub groups: Vec<String>,
    /// When the source's proof ends (a JWT's `exp`): the token ends no later.
    pub expires_at: Option<SystemTime>,
}

/// Issues an access token (never a refresh token) for a user of another identity source: the
/// token carries the source and the groups, is bound to no password entry, and ends when the
/// source's proof does if that is sooner.
pub fn issue_federated(
    key: &TokenKey,
    settings: &TokenSettings,
    identity: &Identity,
    access: &[Scope],
    federation: &Federation,
    now: SystemTime,
) -> IssuedToken {
    issue_with(key, settings, identity, access, "", Some(federation), false, now)
}

#[allow(clippy::too_many_arguments)]
fn issue_with(
    key: &TokenKey,
    settings: &TokenSettings,
    identity: &Identity,
    access: &[Scope],
    binding: &str,
    federation: Option<&Federation>,
    with_refresh: bool,
    now: SystemTime,
) -> IssuedToken {
    // A clock before 1970 yields tokens that are long expired: fails closed.
    let now_secs = unix_seconds(now).unwrap_or(0);
    let subject = identity.subject();
    let mut ttl = settings.lifetime(TokenKind::Access);

    let mut claims = base_claims(settings, subject, TokenKind::Access, now_secs);
    if !binding.is_empty() && !subject.is_empty() {
        claims["bnd"] = Value::String(binding.to_string());
    }
    if let (Some(federation), false) = (federation, subject.is_empty()) {
        claims["src"] = Value::String(federation.source.clone());
        claims["grp"] = json!(federation.groups);
        if let Some(end) = federation.expires_at {
            // Before now (an expired proof): the token is born expired and fails closed.
            let end = unix_seconds(end).unwrap_or(0);
            let exp = now_secs.saturating_add(ttl).min(end);
            claims["exp"] = json!(exp);
            ttl = exp.saturating_sub(now_secs);
        }
    }
    let mut size = claims.to_string().len();
    let mut granted: Vec<Scope> = Vec::new();
    let mut entries: Vec<Value> = Vec::new();
    for scope in access {
        let entry = json!({"type": scope.kind, "name": scope.name, "actions": scope.actions});
        let entry_size = entry.to_string().len() + 1;
        if size + entry_size > CLAIMS_JSON_BUDGET {
            break;
        }
        size += entry_size;
        entries.push(entry);
        granted.push(scope.clone());
    }
    claims["access"] = Value::Array(entries);
    let token = sign(key, TokenKind::Access, &claims);

    let refresh_token = (with_refresh && !subject.is_empty()).then(|| {
        let mut refresh_claims = base_claims(settings, subject, TokenKind::Refresh, now_secs);
        if !binding.is_empty() {
            refresh_claims["bnd"] = Value::String(binding.to_string());
        }
        sign(key, TokenKind::Refresh, &refresh_claims)
    });

    IssuedToken {
        token,
        expires_in: ttl,
        issued_at: rfc3339_utc(now_secs),
        refresh_token,
        scope: format_scopes(&granted),
    }
}

fn base_claims(settings: &TokenSettings, subject: &str, kind: TokenKind, now_secs: u64) -> Value {
    let mut token_id = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut token_id);
    json!({
        "iss": settings.service,
        "sub": subject,
        "aud": settings.service,
        "exp": now_secs.saturating_add(settings.lifetime(kind)),
        "nbf": now_secs,
        "iat": now_secs,
        "jti": hex::encode(token_id),
        "typ": kind.claim(),
        "access": [],
    })
}

fn sign(key: &TokenKey, kind: TokenKind, claims: &Value) -> String {
    sign_raw(key, kind, JWT_HEADER_JSON.as_bytes(), claims.to_string().as_bytes())
}

pub(super) fn sign_raw(key: &TokenKey, kind: TokenKind, header: &[u8], payload: &[u8]) -> String {
    let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    let mut mac = key.mac_for(kind);
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// `{"token","access_token","expires_in","issued_at","scope"[,"refresh_token"]}`.
/// `scope` is OAuth's required field; distribution clients ignore it.
pub(crate) fn token_response_json(issued: &IssuedToken) -> String {
    let mut body = json!({
        "token": issued.token,
        "access_token": issued.token,
        "expires_in": issued.expires_in,
        "issued_at": issued.issued_at,
        "scope": issued.scope,
    });
    if let Some(refresh_token) = &issued.refresh_token {
        body["refresh_token"] = Value::String(refresh_token.clone());
    }
    body.to_string()
}

/// Why a token was refused. Display is short, fixed text: safe to log, never
/// contains the token or anything taken from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token too large")]
    TooLarge,
    #[error("malformed token")]
    Malformed,
    #[error("token algorithm not accepted (only HS256)")]
    UnsupportedAlgorithm,
    #[error("token header carries key material")]
    HeaderKeyMaterial,
    #[error("token header has unsupported fields")]
    UnsupportedHeader,
    #[error("token signature invalid")]
    BadSignature,
    #[error("refresh token presented as access token")]
    RefreshTokenAsAccess,
    #[error("access token presented as refresh token")]
    AccessTokenAsRefresh,
    #[error("token issued by another service")]
    WrongIssuer,
    #[error("token issued for another service")]
    WrongAudience,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token lifetime exceeds the configured maximum")]
    LifetimeTooLong,
    #[error("refresh token names no user")]
    NoSubject,
    #[error("system clock is before 1970")]
    ClockBeforeEpoch,
}

/// What a verified token says, for callers that want more than the identity
/// (e.g. to log the token id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub identity: Identity,
    /// The informational `access` claim (empty for refresh tokens).
    pub access: Vec<Scope>,
    /// The `jti` claim.
    pub token_id: String,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// What [`issue`] bound the token to (empty if nothing).
    pub binding: String,
    /// The identity source of a user not from the htpasswd file ([`issue_federated`]).
    pub source: Option<String>,
    /// The groups that source gave.
    pub groups: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    typ: String,
    access: Vec<AccessClaim>,
    /// Fingerprint of the credential the token was issued for (users only).
    #[serde(default)]
    bnd: Option<String>,
    /// The identity source of a user not from the htpasswd file.
    #[serde(default)]
    src: Option<String>,
    /// That source's groups of the user.
    #[serde(default)]
    grp: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessClaim {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    actions: Vec<String>,
}

/// Verifies a token of `kind` and returns what it says. Every refusal is a
/// [`TokenError`]; the header, the signature and every claim are checked.
pub fn verify(
    key: &TokenKey,
    settings: &TokenSettings,
    kind: TokenKind,
    token: &str,
    now: SystemTime,
) -> Result<VerifiedToken, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLarge);
    }
    let mut segments = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (segments.next(), segments.next(), segments.next(), segments.next())
    else {
        return Err(TokenError::Malformed);
    };
    check_header(header)?;
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
    let signing_input = &token[..header.len() + 1 + payload.len()];
    if !signature_matches(key, kind, signing_input, &signature) {
        // Only to say something useful in the log: the kinds use separate keys.
        if signature_matches(key, kind.other(), signing_input, &signature) {
            return Err(match kind {
                TokenKind::Access => TokenError::RefreshTokenAsAccess,
                TokenKind::Refresh => TokenError::AccessTokenAsRefresh,
            });
        }
        return Err(TokenError::BadSignature);
    }
    let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;

    if claims.typ != kind.claim() {
        return Err(match kind {
            TokenKind::Access => TokenError::RefreshTokenAsAccess,
            TokenKind::Refresh => TokenError::AccessTokenAsRefresh,
        });
    }
    if claims.iss != settings.service {
        return Err(TokenError::WrongIssuer);
    }
    if claims.aud != settings.service {
        return Err(TokenError::WrongAudience);
    }
    let now_secs = unix_seconds(now).ok_or(TokenError::ClockBeforeEpoch)?;
    let leeway = CLOCK_LEEWAY.as_secs();
    if claims.nbf > claims.exp || claims.iat > claims.exp {
        return Err(TokenError::Malformed);
    }
    if now_secs >= claims.exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if claims.nbf.max(claims.iat) > now_secs.saturating_add(leeway) {
        return Err(TokenError::NotYetValid);
    }
    if claims.exp - claims.nbf > settings.lifetime(kind) {
        return Err(TokenError::LifetimeTooLong);
    }
    if kind == TokenKind::Refresh && claims.sub.is_empty() {
        return Err(TokenError::NoSubject);
    }
    Ok(VerifiedToken {
        identity: Identity {
            user: (!claims.sub.is_empty()).then_some(claims.sub),
        },
        access: claims
            .access
            .into_iter()
            .map(|entry| Scope {
                kind: entry.kind,
                name: entry.name,
                actions: entry.actions,
            })
            .collect(),
        token_id: claims.jti,
        expires_at: claims.exp,
        binding: claims.bnd.unwrap_or_default(),
        source: claims.src,
        groups: claims.grp,
    })
}

fn signature_matches(key: &TokenKey, kind: TokenKind, signing_input: &str, signature: &[u8]) -> bool {
    let mut mac = key.mac_for(kind);
    mac.update(signing_input.as_bytes());
    mac.verify_slice(signature).is_ok()
}

fn check_header(segment: &str) -> Result<(), TokenError> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| TokenError::Malformed)?;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    for name in header.keys() {
        match name.as_str() {
            "alg" | "typ" => {}
            "jwk" | "jku" | "kid" | "x5c" | "x5u" | "x5t" | "x5t#S256" => return Err(TokenError::HeaderKeyMaterial),
            _ => return Err(TokenError::UnsupportedHeader),
        }
    }
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "HS256" => {}
        _ => return Err(TokenError::UnsupportedAlgorithm),
    }
    match header.get("typ") {
        None => Ok(()),
        Some(Value::String(typ)) if typ == "JWT" => Ok(()),
        Some(_) => Err(TokenError::UnsupportedHeader),
    }
}

pub(super) fn unix_seconds(time: SystemTime) -> Option<u64> {
    time.duration_since(UNIX_EPOCH).ok().map(|elapsed| elapsed.as_secs())
}

pub(super) fn rfc3339_utc(secs: u64) -> String {
    let secs = secs.min(MAX_RFC3339_SECS);
    let days = secs / 86_400;
    let second_of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's algorithm, restricted to dates after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let shifted = days + 719_468;
    let era = shifted / 146_097;
    let day_of_era = shifted - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}
