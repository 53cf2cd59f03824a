//! Docker token realm core (docs/token-realm.md): signing key, token issue and
//! verification, scope parsing, token endpoint request parsing, challenges.
//! No HTTP server code lives here.
//!
//! Decisions (documented here because callers rely on them):
//!
//! * Tokens are compact JWTs, HS256, header exactly `{"alg":"HS256","typ":"JWT"}`.
//!   A header naming any other algorithm, carrying key material (`jwk`, `jku`,
//!   `kid`, `x5c`, `x5u`, `x5t`) or any other field is rejected before the
//!   signature is even looked at.
//! * Access and refresh tokens are signed with two different keys derived from
//!   the key file (HMAC-SHA256 of the file key with a fixed label), and carry a
//!   `typ` claim (`"access"` / `"refresh"`). A token of one kind can therefore
//!   never verify as the other, even if a claim check were lost.
//! * Anonymous access tokens have `sub: ""`. No refresh token is ever issued for
//!   an anonymous identity (nothing to refresh), and a refresh token with an
//!   empty subject is rejected. `Identity { user: Some("") }` is treated as
//!   anonymous.
//! * Claims are `iss` and `aud` (both the configured service), `sub`, `exp`,
//!   `nbf`, `iat`, `jti`, `typ`, `access` (distribution's `{type,name,actions}`
//!   list), and for users `bnd`, a fingerprint of the password entry the token
//!   was issued against (the caller refuses the token once the entry changed). Unknown claims are rejected, so an older replica never ignores a
//!   restriction a newer one added. A token whose lifetime (`exp - nbf`) exceeds
//!   the currently configured TTL is rejected, so shortening a TTL takes effect
//!   for tokens already issued. Clock leeway is [`CLOCK_LEEWAY`].
//! * The `access` claim is informational: every request is decided by the
//!   current rules. It is trimmed to keep every token under
//!   [`MAX_TOKEN_LEN`] (nginx's default header buffer is 8 KiB).
//! * Token endpoint parameters: `scope` may repeat (each value may hold several
//!   space-separated scopes); every other known parameter given twice is an
//!   error (ambiguous input fails closed); unknown parameters are ignored, as
//!   clients send extras. Empty `service`, `account`, `client_id` count as
//!   absent (Go's `FormValue` semantics, which clients are written against).
//! * Error bodies: [`error_json`] gives the distribution shape, which the docker
//!   client parses on GET and POST failures. [`oauth_error_json`] gives one body
//!   holding both the OAuth2 (RFC 6749 5.2) fields and the distribution
//!   `errors` list, for POST /token failures.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Shortest key accepted from a key file or [`TokenKey::from_bytes`].
pub const MIN_KEY_BYTES: usize = 32;
/// Longest token [`verify_access`] / [`verify_refresh`] will look at.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Allowed clock difference between replicas (and clients) for `exp`/`nbf`.
pub const CLOCK_LEEWAY: Duration = Duration::from_secs(30);
/// The distribution spec: never hand out a token with less than 60 s to live.
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(60);
/// Most distinct scopes [`parse_scopes`] keeps; further ones are ignored.
pub const MAX_SCOPES: usize = 16;
/// Longest resource name accepted in a scope (OCI limits names to 255).
pub const MAX_SCOPE_NAME_LEN: usize = 255;
/// Most distinct actions accepted in one scope; more makes the scope malformed.
pub const MAX_ACTIONS_PER_SCOPE: usize = 8;
/// Largest query string or POST body the token endpoint parsers accept.
pub const MAX_TOKEN_REQUEST_LEN: usize = 16 * 1024;

const GENERATED_KEY_BYTES: usize = 32;
const MAX_KEY_FILE_LEN: u64 = 4096;
/// A key file that another process has created but not yet written (only
/// possible on filesystems without hard links) is waited for this long.
const EMPTY_KEY_FILE_WAIT: Duration = Duration::from_secs(2);
/// Claims JSON budget: base64 turns 5 KiB into ~6.8 KiB, leaving room for the
/// header, the signature and the `Authorization: Bearer ` prefix under 8 KiB.
const CLAIMS_JSON_BUDGET: usize = 5 * 1024;
const JWT_HEADER_JSON: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
const ACCESS_KEY_LABEL: &[u8] = b"csel-auth token key v1: access";
const REFRESH_KEY_LABEL: &[u8] = b"csel-auth token key v1: refresh";
/// Latest instant `issued_at` can represent with a four-digit year.
const MAX_RFC3339_SECS: u64 = 253_402_300_799;

// ---------------------------------------------------------------------------
// Key
// ---------------------------------------------------------------------------

/// The token signing key. Cloning is cheap; `Debug` never shows key material.
#[derive(Clone)]
pub struct TokenKey {
    access_mac: HmacSha256,
    refresh_mac: HmacSha256,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey { .. }")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenKeyError {
    #[error("cannot {action} token key file {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "token key file {} is accessible by group or others (mode {mode:03o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "token key file {} is owned by {}, not by {}: whoever owns it can replace the key and forge \
         tokens; if its content is trusted run `chown {} {}`, else delete it to have a new key generated",
        path.display(),
        describe_user(*owner),
        expected_owner(*service_user),
        user_name(*service_user).unwrap_or_else(|| service_user.to_string()),
        path.display()
    )]
    Owner {
        path: PathBuf,
        owner: u32,
        service_user: u32,
    },
    #[error("token key file {} is invalid: {reason}", path.display())]
    InvalidFile { path: PathBuf, reason: String },
    #[error("token key is too short: {len} bytes, at least {MIN_KEY_BYTES} are needed")]
    TooShort { len: usize },
}

impl TokenKey {
    /// Uses `bytes` (at least [`MIN_KEY_BYTES`]) as the secret.
    pub fn from_bytes(bytes: &[u8]) -> Result<TokenKey, TokenKeyError> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(TokenKeyError::TooShort { len: bytes.len() });
        }
        Ok(TokenKey {
            access_mac: derive_mac(bytes, ACCESS_KEY_LABEL)?,
            refresh_mac: derive_mac(bytes, REFRESH_KEY_LABEL)?,
        })
    }

    /// Loads the key from `path`, creating it (32 random bytes, hex, mode
    /// 0600) when it does not exist. An existing file must be owned by the
    /// user csel-auth runs as (or root) and unreadable by group and others. Creation is atomic: the content is written
    /// to a temporary file and hard-linked into place, so replicas racing on a
    /// shared file all end up with the one key that won.
    pub fn load_or_create(path: &Path) -> Result<TokenKey, TokenKeyError> {
        if let Some(key) = load_existing(path)? {
            return Ok(key);
        }
        create_key_file(path)
    }

    fn mac_for(&self, kind: TokenKind) -> HmacSha256 {
        match kind {
            TokenKind::Access => self.access_mac.clone(),
            TokenKind::Refresh => self.refresh_mac.clone(),
        }
    }
}

fn derive_mac(master: &[u8], label: &[u8]) -> Result<HmacSha256, TokenKeyError> {
    // HMAC accepts keys of any length, so these errors cannot happen; they are
    // mapped rather than unwrapped all the same.
    let mut derivation =
        HmacSha256::new_from_slice(master).map_err(|_| TokenKeyError::TooShort { len: master.len() })?;
    derivation.update(label);
    let derived = derivation.finalize().into_bytes();
    HmacSha256::new_from_slice(&derived).map_err(|_| TokenKeyError::TooShort { len: 0 })
}

/// `Ok(None)` when the file does not exist.
fn load_existing(path: &Path) -> Result<Option<TokenKey>, TokenKeyError> {
    let deadline = Instant::now() + EMPTY_KEY_FILE_WAIT;
    loop {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(TokenKeyError::Io {
                    action: "open",
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        // Checked on the opened handle, so the file read is the file checked.
        let metadata = file.metadata().map_err(|source| TokenKeyError::Io {
            action: "inspect",
            path: path.to_path_buf(),
            source,
        })?;
        if !metadata.is_file() {
            return Err(invalid_key_file(path, "not a regular file".to_string()));
        }
        let owner = metadata.uid();
        let service_user = nix::unistd::geteuid().as_raw();
        if owner != service_user && owner != 0 {
            return Err(TokenKeyError::Owner {
                path: path.to_path_buf(),
                owner,
                service_user,
            });
        }
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokenKeyError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut content = Vec::new();
        (&mut file)
            .take(MAX_KEY_FILE_LEN + 1)
            .read_to_end(&mut content)
            .map_err(|source| TokenKeyError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            })?;
        if content.len() as u64 > MAX_KEY_FILE_LEN {
            return Err(invalid_key_file(path, format!("larger than {MAX_KEY_FILE_LEN} bytes")));
        }
        if content.iter().all(u8::is_ascii_whitespace) {
            if Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            return Err(invalid_key_file(path, format!("empty; {}", key_file_hint(path))));
        }
        let secret = decode_key_text(&content)
            .ok_or_else(|| invalid_key_file(path, format!("not hex or base64 text; {}", key_file_hint(path))))?;
        if secret.len() < MIN_KEY_BYTES {
            return Err(invalid_key_file(
                path,
                format!(
                    "key is {} bytes, at least {MIN_KEY_BYTES} are needed; {}",
                    secret.len(),
                    key_file_hint(path)
                ),
            ));
        }
        return TokenKey::from_bytes(&secret).map(Some);
    }
}

fn create_key_file(path: &Path) -> Result<TokenKey, TokenKeyError> {
    let io_error = |action: &'static str| {
        move |source: io::Error| TokenKeyError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut secret = [0u8; GENERATED_KEY_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut secret)
        .map_err(|error| io_error("generate random bytes for")(io::Error::other(error)))?;
    let text = format!("{}\n", hex_encode(&secret));

    let file_name = path
        .file_name()
        .ok_or_else(|| invalid_key_file(path, "the path names no file".to_string()))?;
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut suffix = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut suffix);
    let temporary = directory.join(format!(
        ".{}.{}-{}.tmp",
        file_name.to_string_lossy(),
        std::process::id(),
        hex_encode(&suffix)
    ));
    if let Err(source) = write_new_private_file(&temporary, text.as_bytes()) {
        if source.kind() == io::ErrorKind::NotFound && !directory.is_dir() {
            return Err(invalid_key_file(
                path,
                format!(
                    "it cannot be created: directory {} does not exist; create it (owned by the user csel-auth \
                     runs as, mode 700; systemd: StateDirectory=csel-auth) or name another file with --token-key",
                    directory.display()
                ),
            ));
        }
        return Err(io_error("create")(source));
    }
    let linked = fs::hard_link(&temporary, path);
    // Best effort: a leftover temporary file is harmless.
    let _ = fs::remove_file(&temporary);
    match linked {
        Ok(()) => {
            sync_directory(&directory);
            TokenKey::from_bytes(&secret)
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => load_winner(path),
        // Filesystems without hard links: create in place. Another process may
        // briefly see the file empty; `load_existing` waits for it.
        Err(_) => match write_new_private_file(path, text.as_bytes()) {
            Ok(()) => {
                sync_directory(&directory);
                TokenKey::from_bytes(&secret)
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => load_winner(path),
            Err(source) => Err(io_error("create")(source)),
        },
    }
}

fn load_winner(path: &Path) -> Result<TokenKey, TokenKeyError> {
    load_existing(path)?
        .ok_or_else(|| invalid_key_file(path, "created by another process and removed again".to_string()))
}

fn write_new_private_file(path: &Path, content: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    let written = file.write_all(content).and_then(|()| file.sync_all());
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

fn sync_directory(directory: &Path) {
    // Durability of the new name only; the key is already usable without it.
    if let Ok(handle) = File::open(directory) {
        let _ = handle.sync_all();
    }
}

/// `uid 65534 (nobody)`, or `uid 65534` when the name cannot be looked up.
fn describe_user(uid: u32) -> String {
    match user_name(uid) {
        Some(name) => format!("uid {uid} ({name})"),
        None => format!("uid {uid}"),
    }
}

/// Who may own the key file: the user csel-auth runs as, or root.
fn expected_owner(service_user: u32) -> String {
    if service_user == 0 {
        "root, the user csel-auth runs as".to_string()
    } else {
        format!("{}, the user csel-auth runs as, or root", describe_user(service_user))
    }
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|user| user.name)
}

fn invalid_key_file(path: &Path, reason: String) -> TokenKeyError {
    TokenKeyError::InvalidFile {
        path: path.to_path_buf(),
        reason,
    }
}

fn key_file_hint(path: &Path) -> String {
    format!(
        "delete it to have a new one generated, or write one with `(umask 077; openssl rand -hex 32 > {})`",
        path.display()
    )
}

fn decode_key_text(content: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(content).ok()?.trim();
    if text.len().is_multiple_of(2) && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return hex_decode(text);
    }
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| Some((hex_value(pair[0])? << 4) | hex_value(pair[1])?))
        .collect()
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Settings, identities, scopes
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    /// URL of the token endpoint, as announced in challenges.
    pub realm: String,
    /// Service name: `iss` and `aud` of every token, `service` in challenges.
    pub service: String,
    /// Access token lifetime (raised to [`MIN_TOKEN_TTL`] if shorter).
    pub ttl: Duration,
    /// Refresh token lifetime (raised to [`MIN_TOKEN_TTL`] if shorter).
    pub refresh_ttl: Duration,
}

impl TokenSettings {
    fn lifetime(&self, kind: TokenKind) -> u64 {
        let configured = match kind {
            TokenKind::Access => self.ttl,
            TokenKind::Refresh => self.refresh_ttl,
        };
        configured.max(MIN_TOKEN_TTL).as_secs()
    }
}

/// Who a token speaks for. `user: None` is anonymous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: Option<String>,
}

impl Identity {
    pub fn anonymous() -> Identity {
        Identity { user: None }
    }

    pub fn user(name: impl Into<String>) -> Identity {
        Identity {
            user: Some(name.into()),
        }
    }

    fn subject(&self) -> &str {
        self.user.as_deref().unwrap_or("")
    }
}

/// One resource scope, `kind:name:action,action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// `repository` or `registry` (any `[a-z0-9]+` type, optionally with a
    /// `(class)`, is parsed; the caller decides what it grants).
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }
}

/// Space-separated scope list, as in the OAuth `scope` response field.
pub fn format_scopes(scopes: &[Scope]) -> String {
    scopes.iter().map(Scope::to_string).collect::<Vec<_>>().join(" ")
}

/// Parses `scope` parameter values. Each value may hold several
/// space-separated scopes. The type ends at the first `:` and the actions
/// start after the last one, so names may contain `host:port`. Malformed
/// scopes are ignored; scopes naming the same resource are merged (actions in
/// first-seen order, without duplicates); at most [`MAX_SCOPES`] are kept.
pub fn parse_scopes(values: &[&str]) -> Vec<Scope> {
    let mut scopes: Vec<Scope> = Vec::new();
    for item in values.iter().flat_map(|value| value.split(' ')) {
        let Some(scope) = parse_one_scope(item) else {
            continue;
        };
        if let Some(existing) = scopes
            .iter_mut()
            .find(|known| known.kind == scope.kind && known.name == scope.name)
        {
            for action in scope.actions {
                if !existing.actions.contains(&action) && existing.actions.len() < MAX_ACTIONS_PER_SCOPE {
                    existing.actions.push(action);
                }
            }
        } else if scopes.len() < MAX_SCOPES {
            scopes.push(scope);
        }
    }
    scopes
}

fn parse_one_scope(item: &str) -> Option<Scope> {
    let (kind, rest) = item.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    if !is_resource_type(kind) || !is_resource_name(name) {
        return None;
    }
    let mut parsed: Vec<String> = Vec::new();
    for action in actions.split(',') {
        let valid = action == "*" || (!action.is_empty() && action.bytes().all(|b| b.is_ascii_lowercase()));
        if !valid {
            return None;
        }
        if !parsed.iter().any(|known| known == action) {
            parsed.push(action.to_string());
        }
    }
    if parsed.len() > MAX_ACTIONS_PER_SCOPE {
        return None;
    }
    Some(Scope {
        kind: kind.to_string(),
        name: name.to_string(),
        actions: parsed,
    })
}

/// `resourcetype := [a-z0-9]+ [ '(' [a-z0-9]+ ')' ]` (distribution scope grammar).
fn is_resource_type(kind: &str) -> bool {
    let is_value =
        |value: &str| !value.is_empty() && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    match kind.split_once('(') {
        None => is_value(kind),
        Some((base, class)) => is_value(base) && class.strip_suffix(')').is_some_and(is_value),
    }
}

fn is_resource_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SCOPE_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':'))
}

// ---------------------------------------------------------------------------
// Issuing
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    Access,
    Refresh,
}

impl TokenKind {
    fn claim(self) -> &'static str {
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
/// claim, trimmed so the token stays under [`MAX_TOKEN_LEN`].
pub fn issue(
    key: &TokenKey,
    settings: &TokenSettings,
    identity: &Identity,
    access: &[Scope],
    with_refresh: bool,
    now: SystemTime,
) -> IssuedToken {
    issue_bound(key, settings, identity, access, "", with_refresh, now)
}

/// As [`issue`], with `binding` (e.g. a fingerprint of the user's password
/// entry) in the access token and in the refresh token, so that the caller of
/// [`verify_access_token`] / [`verify_refresh_bound`] can refuse them once the
/// credential changed. An empty binding is left out.
pub fn issue_bound(
    key: &TokenKey,
    settings: &TokenSettings,
    identity: &Identity,
    access: &[Scope],
    binding: &str,
    with_refresh: bool,
    now: SystemTime,
) -> IssuedToken {
    // A clock before 1970 yields tokens that are long expired: fails closed.
    let now_secs = unix_seconds(now).unwrap_or(0);
    let subject = identity.subject();
    let ttl = settings.lifetime(TokenKind::Access);

    let mut claims = base_claims(settings, subject, TokenKind::Access, now_secs);
    if !binding.is_empty() && !subject.is_empty() {
        claims["bnd"] = Value::String(binding.to_string());
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
        "jti": hex_encode(&token_id),
        "typ": kind.claim(),
        "access": [],
    })
}

fn sign(key: &TokenKey, kind: TokenKind, claims: &Value) -> String {
    sign_raw(key, kind, JWT_HEADER_JSON.as_bytes(), claims.to_string().as_bytes())
}

fn sign_raw(key: &TokenKey, kind: TokenKind, header: &[u8], payload: &[u8]) -> String {
    let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    let mut mac = key.mac_for(kind);
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// `{"token","access_token","expires_in","issued_at","scope"[,"refresh_token"]}`.
/// `scope` is OAuth's required field; distribution clients ignore it.
pub fn token_response_json(issued: &IssuedToken) -> String {
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

// ---------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------

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
    /// What [`issue_bound`] bound the token to (empty if nothing).
    pub binding: String,
}

pub fn verify_access(
    key: &TokenKey,
    settings: &TokenSettings,
    token: &str,
    now: SystemTime,
) -> Result<Identity, TokenError> {
    verify_token(key, settings, token, now, TokenKind::Access).map(|verified| verified.identity)
}

pub fn verify_refresh(
    key: &TokenKey,
    settings: &TokenSettings,
    token: &str,
    now: SystemTime,
) -> Result<Identity, TokenError> {
    verify_token(key, settings, token, now, TokenKind::Refresh).map(|verified| verified.identity)
}

/// [`verify_refresh`], also returning the token's binding (see [`issue_bound`]).
pub fn verify_refresh_bound(
    key: &TokenKey,
    settings: &TokenSettings,
    token: &str,
    now: SystemTime,
) -> Result<(Identity, String), TokenError> {
    verify_token(key, settings, token, now, TokenKind::Refresh).map(|verified| (verified.identity, verified.binding))
}

/// [`verify_access`] returning all verified claims.
pub fn verify_access_token(
    key: &TokenKey,
    settings: &TokenSettings,
    token: &str,
    now: SystemTime,
) -> Result<VerifiedToken, TokenError> {
    verify_token(key, settings, token, now, TokenKind::Access)
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessClaim {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    actions: Vec<String>,
}

fn verify_token(
    key: &TokenKey,
    settings: &TokenSettings,
    token: &str,
    now: SystemTime,
    kind: TokenKind,
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

/// The token of an `Authorization: Bearer <token>` header value (scheme
/// case-insensitive), or `None` when it is not a well-formed Bearer value.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, rest) = authorization.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_matches(' ');
    let body = token.trim_end_matches('=');
    let is_token68 = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/'));
    is_token68.then_some(token)
}

// ---------------------------------------------------------------------------
// Verified-token cache
// ---------------------------------------------------------------------------

/// Verified access tokens remembered for users, least recently used evicted first.
pub const USER_TOKEN_CACHE_ENTRIES: usize = 10_000;
/// Verified anonymous access tokens remembered. Anyone can get any number of
/// them, so they have their own, smaller cache and never evict a user's entry.
pub const ANONYMOUS_TOKEN_CACHE_ENTRIES: usize = 1_000;

/// What a cached verification gives back: the subject and the token's binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedAccess {
    pub identity: Identity,
    /// See [`VerifiedToken::binding`]; the caller compares it with the current
    /// credential on every request, so a cached entry never outlives it.
    pub binding: String,
}

/// [`verify_access_token`] with the results remembered until the token
/// expires: a pull sends the same token with every request, and verifying it
/// (HMAC, base64, JSON) costs more than deciding. Entries are keyed by the
/// SHA-256 of the token, so an entry's size does not depend on the token's,
/// and kept in two bounded LRU maps, one for users and one for anonymous
/// tokens.
pub struct VerifiedTokenCache {
    users: std::sync::Mutex<lru::LruCache<[u8; 32], (CachedAccess, u64)>>,
    anonymous: std::sync::Mutex<lru::LruCache<[u8; 32], u64>>,
    hits: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for VerifiedTokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (users, anonymous) = self.len();
        f.debug_struct("VerifiedTokenCache")
            .field("users", &users)
            .field("anonymous", &anonymous)
            .finish_non_exhaustive()
    }
}

impl VerifiedTokenCache {
    /// Room for `users` user tokens and `anonymous` anonymous ones (each at least 1).
    pub fn new(users: usize, anonymous: usize) -> VerifiedTokenCache {
        let capacity = |n: usize| std::num::NonZeroUsize::new(n).unwrap_or(std::num::NonZeroUsize::MIN);
        VerifiedTokenCache {
            users: std::sync::Mutex::new(lru::LruCache::new(capacity(users))),
            anonymous: std::sync::Mutex::new(lru::LruCache::new(capacity(anonymous))),
            hits: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn verify(
        &self,
        key: &TokenKey,
        settings: &TokenSettings,
        token: &str,
        now: SystemTime,
    ) -> Result<CachedAccess, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge);
        }
        let now_secs = unix_seconds(now).ok_or(TokenError::ClockBeforeEpoch)?;
        let id: [u8; 32] = <Sha256 as sha2::Digest>::digest(token.as_bytes()).into();
        // A poisoned lock only costs the cache: verify without it.
        if let Ok(mut users) = self.users.lock() {
            if let Some((access, expires_at)) = users.get(&id) {
                if now_secs < *expires_at {
                    self.count_hit();
                    return Ok(access.clone());
                }
                users.pop(&id);
            }
        }
        if let Ok(mut anonymous) = self.anonymous.lock() {
            if let Some(expires_at) = anonymous.get(&id) {
                if now_secs < *expires_at {
                    self.count_hit();
                    return Ok(CachedAccess {
                        identity: Identity::anonymous(),
                        binding: String::new(),
                    });
                }
                anonymous.pop(&id);
            }
        }
        let verified = verify_access_token(key, settings, token, now)?;
        let access = CachedAccess {
            identity: verified.identity,
            binding: verified.binding,
        };
        if access.identity.user.is_some() {
            if let Ok(mut users) = self.users.lock() {
                users.put(id, (access.clone(), verified.expires_at));
            }
        } else if let Ok(mut anonymous) = self.anonymous.lock() {
            anonymous.put(id, verified.expires_at);
        }
        Ok(access)
    }

    /// Requests answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Entries held: (users, anonymous).
    pub fn len(&self) -> (usize, usize) {
        let users = self.users.lock().map_or(0, |users| users.len());
        let anonymous = self.anonymous.lock().map_or(0, |anonymous| anonymous.len());
        (users, anonymous)
    }

    fn count_hit(&self) {
        self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Default for VerifiedTokenCache {
    fn default() -> VerifiedTokenCache {
        VerifiedTokenCache::new(USER_TOKEN_CACHE_ENTRIES, ANONYMOUS_TOKEN_CACHE_ENTRIES)
    }
}

// ---------------------------------------------------------------------------
// Challenges and error bodies
// ---------------------------------------------------------------------------

/// `WWW-Authenticate` value:
/// `Bearer realm="…",service="…"[,scope="…"][,error="…"]`. Quotes and
/// backslashes are escaped; control characters (CR, LF, …) are dropped, so
/// the result is always a valid header value.
pub fn challenge(settings: &TokenSettings, scope: Option<&Scope>, error: Option<&str>) -> String {
    let mut value = format!(
        "Bearer realm={},service={}",
        quoted_string(&settings.realm),
        quoted_string(&settings.service)
    );
    if let Some(scope) = scope {
        value.push_str(",scope=");
        value.push_str(&quoted_string(&scope.to_string()));
    }
    if let Some(error) = error {
        value.push_str(",error=");
        value.push_str(&quoted_string(error));
    }
    value
}

fn quoted_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Distribution error body: `{"errors":[{"code":…,"message":…,"detail":null}]}`
/// (codes such as `UNAUTHORIZED`, `DENIED`, `UNSUPPORTED`). This is what the
/// docker client parses on any 4xx from the token endpoint.
pub fn error_json(code: &str, message: &str) -> String {
    json!({"errors": [{"code": code, "message": message, "detail": null}]}).to_string()
}

/// OAuth2 error body for `POST /token` (RFC 6749 section 5.2) that also holds
/// the distribution `errors` list, so OAuth clients and the docker client both
/// understand it: `{"error":…,"error_description":…,"errors":[…]}`.
pub fn oauth_error_json(oauth_error: &str, description: &str) -> String {
    let code = match oauth_error {
        "invalid_grant" | "invalid_client" | "invalid_token" => "UNAUTHORIZED",
        "unsupported_grant_type" => "UNSUPPORTED",
        _ => "DENIED",
    };
    json!({
        "error": oauth_error,
        "error_description": description,
        "errors": [{"code": code, "message": description, "detail": null}],
    })
    .to_string()
}

// ---------------------------------------------------------------------------
// Token endpoint requests
// ---------------------------------------------------------------------------

#[derive(Clone, PartialEq, Eq)]
pub enum TokenRequest {
    /// `GET /token?service=…&scope=…&account=…&offline_token=true`; credentials,
    /// if any, come in the `Authorization` header. `client_id` is accepted and
    /// ignored.
    Get {
        service: Option<String>,
        scopes: Vec<Scope>,
        account: Option<String>,
        offline_token: bool,
    },
    /// `POST /token`, `grant_type=password`.
    PasswordGrant {
        username: String,
        password: String,
        service: Option<String>,
        scopes: Vec<Scope>,
        access_type_offline: bool,
        client_id: Option<String>,
    },
    /// `POST /token`, `grant_type=refresh_token`.
    RefreshGrant {
        refresh_token: String,
        service: Option<String>,
        scopes: Vec<Scope>,
    },
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenRequest::Get {
                service,
                scopes,
                account,
                offline_token,
            } => f
                .debug_struct("Get")
                .field("service", service)
                .field("scopes", scopes)
                .field("account", account)
                .field("offline_token", offline_token)
                .finish(),
            TokenRequest::PasswordGrant {
                username,
                service,
                scopes,
                access_type_offline,
                client_id,
                ..
            } => f
                .debug_struct("PasswordGrant")
                .field("username", username)
                .field("password", &"<redacted>")
                .field("service", service)
                .field("scopes", scopes)
                .field("access_type_offline", access_type_offline)
                .field("client_id", client_id)
                .finish(),
            TokenRequest::RefreshGrant { service, scopes, .. } => f
                .debug_struct("RefreshGrant")
                .field("refresh_token", &"<redacted>")
                .field("service", service)
                .field("scopes", scopes)
                .finish(),
        }
    }
}

impl TokenRequest {
    pub fn service(&self) -> Option<&str> {
        match self {
            TokenRequest::Get { service, .. }
            | TokenRequest::PasswordGrant { service, .. }
            | TokenRequest::RefreshGrant { service, .. } => service.as_deref(),
        }
    }

    pub fn scopes(&self) -> &[Scope] {
        match self {
            TokenRequest::Get { scopes, .. }
            | TokenRequest::PasswordGrant { scopes, .. }
            | TokenRequest::RefreshGrant { scopes, .. } => scopes,
        }
    }

    /// The parsers do not know the configuration: call this before issuing.
    /// A `service` naming another service is an error; an absent one is fine.
    pub fn check_service(&self, settings: &TokenSettings) -> Result<(), TokenRequestError> {
        match self.service() {
            Some(service) if service != settings.service => Err(TokenRequestError::WrongService {
                expected: settings.service.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// Why a token request was refused. Display never contains parameter values
/// (passwords, tokens), only parameter names and configured text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRequestError {
    #[error("token request larger than {MAX_TOKEN_REQUEST_LEN} bytes")]
    TooLarge,
    #[error("token requests must be application/x-www-form-urlencoded (UTF-8)")]
    UnsupportedContentType,
    #[error("token request is not valid form encoding (bad % escape or not UTF-8)")]
    BadEncoding,
    #[error("parameter `{0}` given more than once")]
    DuplicateParameter(&'static str),
    #[error("parameter `{0}` is required")]
    MissingParameter(&'static str),
    #[error("parameter `{0}` has an invalid value")]
    InvalidParameter(&'static str),
    #[error("grant_type not supported (use password or refresh_token)")]
    UnsupportedGrantType,
    #[error("this token server serves service \"{expected}\"")]
    WrongService { expected: String },
}

impl TokenRequestError {
    /// The RFC 6749 `error` code for a 400 answer.
    pub fn oauth_error(&self) -> &'static str {
        match self {
            TokenRequestError::UnsupportedGrantType => "unsupported_grant_type",
            _ => "invalid_request",
        }
    }
}

pub fn parse_token_get(query: &str) -> Result<TokenRequest, TokenRequestError> {
    let query = query.strip_prefix('?').unwrap_or(query);
    if query.len() > MAX_TOKEN_REQUEST_LEN {
        return Err(TokenRequestError::TooLarge);
    }
    let form = Form::parse(query)?;
    let service = form.single_non_empty("service")?;
    let account = form.single_non_empty("account")?;
    if account.as_deref().is_some_and(has_control) {
        return Err(TokenRequestError::InvalidParameter("account"));
    }
    form.client_id()?;
    let offline_token = match form.single("offline_token")? {
        None => false,
        Some(value) => match value.to_ascii_lowercase().as_str() {
            "true" | "1" => true,
            "false" | "0" | "" => false,
            _ => return Err(TokenRequestError::InvalidParameter("offline_token")),
        },
    };
    Ok(TokenRequest::Get {
        service,
        scopes: form.scopes(),
        account,
        offline_token,
    })
}

pub fn parse_token_post(content_type: Option<&str>, body: &[u8]) -> Result<TokenRequest, TokenRequestError> {
    if !is_form_content_type(content_type) {
        return Err(TokenRequestError::UnsupportedContentType);
    }
    if body.len() > MAX_TOKEN_REQUEST_LEN {
        return Err(TokenRequestError::TooLarge);
    }
    let body = std::str::from_utf8(body).map_err(|_| TokenRequestError::BadEncoding)?;
    let form = Form::parse(body)?;
    let grant_type = form
        .single("grant_type")?
        .ok_or(TokenRequestError::MissingParameter("grant_type"))?;
    let service = form.single_non_empty("service")?;
    let client_id = form.client_id()?;
    let access_type_offline = match form.single("access_type")?.as_deref() {
        None | Some("") | Some("online") => false,
        Some("offline") => true,
        Some(_) => return Err(TokenRequestError::InvalidParameter("access_type")),
    };
    let scopes = form.scopes();
    match grant_type.as_str() {
        "password" => {
            let username = form
                .single("username")?
                .filter(|name| !name.is_empty())
                .ok_or(TokenRequestError::MissingParameter("username"))?;
            if has_control(&username) {
                return Err(TokenRequestError::InvalidParameter("username"));
            }
            let password = form
                .single("password")?
                .ok_or(TokenRequestError::MissingParameter("password"))?;
            Ok(TokenRequest::PasswordGrant {
                username,
                password,
                service,
                scopes,
                access_type_offline,
                client_id,
            })
        }
        "refresh_token" => {
            let refresh_token = form
                .single("refresh_token")?
                .filter(|token| !token.is_empty())
                .ok_or(TokenRequestError::MissingParameter("refresh_token"))?;
            Ok(TokenRequest::RefreshGrant {
                refresh_token,
                service,
                scopes,
            })
        }
        _ => Err(TokenRequestError::UnsupportedGrantType),
    }
}

fn is_form_content_type(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return false;
    };
    let mut parts = content_type.split(';');
    let media_type = parts.next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return false;
    }
    parts.all(|parameter| match parameter.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
            let charset = value.trim().trim_matches('"');
            charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8")
        }
        _ => true,
    })
}

fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    fn parse(input: &str) -> Result<Form, TokenRequestError> {
        let pairs = input
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                Ok((form_decode(name)?, form_decode(value)?))
            })
            .collect::<Result<_, TokenRequestError>>()?;
        Ok(Form { pairs })
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn single(&self, name: &'static str) -> Result<Option<String>, TokenRequestError> {
        let mut values = self.all(name);
        let first = values.next();
        if values.next().is_some() {
            return Err(TokenRequestError::DuplicateParameter(name));
        }
        Ok(first.map(str::to_string))
    }

    fn single_non_empty(&self, name: &'static str) -> Result<Option<String>, TokenRequestError> {
        Ok(self.single(name)?.filter(|value| !value.is_empty()))
    }

    /// RFC 6749 appendix A.1: `client_id` is VSCHAR (printable ASCII).
    fn client_id(&self) -> Result<Option<String>, TokenRequestError> {
        let client_id = self.single_non_empty("client_id")?;
        if client_id
            .as_deref()
            .is_some_and(|id| !id.bytes().all(|b| (0x20..=0x7e).contains(&b)))
        {
            return Err(TokenRequestError::InvalidParameter("client_id"));
        }
        Ok(client_id)
    }

    fn scopes(&self) -> Vec<Scope> {
        parse_scopes(&self.all("scope").collect::<Vec<_>>())
    }
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte;
/// a `%` not followed by two hex digits, or a result that is not UTF-8, is an
/// error rather than being passed through.
fn form_decode(text: &str) -> Result<String, TokenRequestError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' => {
                let high = bytes.get(index + 1).copied().and_then(hex_value);
                let low = bytes.get(index + 2).copied().and_then(hex_value);
                let (Some(high), Some(low)) = (high, low) else {
                    return Err(TokenRequestError::BadEncoding);
                };
                out.push((high << 4) | low);
                index += 2;
            }
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8(out).map_err(|_| TokenRequestError::BadEncoding)
}

// ---------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------

fn unix_seconds(time: SystemTime) -> Option<u64> {
    time.duration_since(UNIX_EPOCH).ok().map(|elapsed| elapsed.as_secs())
}

fn rfc3339_utc(secs: u64) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "registry.example.com";

    fn settings() -> TokenSettings {
        TokenSettings {
            realm: "https://auth.example.com/token".to_string(),
            service: SERVICE.to_string(),
            ttl: Duration::from_secs(300),
            refresh_ttl: Duration::from_secs(30 * 86_400),
        }
    }

    fn key() -> TokenKey {
        TokenKey::from_bytes(&[7u8; 32]).unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    const NOW: u64 = 1_700_000_000;

    fn alice() -> Identity {
        Identity::user("alice")
    }

    fn pull(name: &str) -> Scope {
        Scope {
            kind: "repository".to_string(),
            name: name.to_string(),
            actions: vec!["pull".to_string()],
        }
    }

    fn access_token(identity: &Identity) -> String {
        issue(&key(), &settings(), identity, &[pull("library/alpine")], false, at(NOW)).token
    }

    fn claims_of(token: &str) -> Value {
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    fn forge(kind: TokenKind, header: &str, claims: &Value) -> String {
        sign_raw(&key(), kind, header.as_bytes(), claims.to_string().as_bytes())
    }

    // --- issue / verify -----------------------------------------------------

    #[test]
    fn round_trip_user() {
        let issued = issue(&key(), &settings(), &alice(), &[pull("library/alpine")], true, at(NOW));
        assert_eq!(issued.expires_in, 300);
        assert_eq!(issued.issued_at, "2023-11-14T22:13:20Z");
        assert_eq!(issued.scope, "repository:library/alpine:pull");
        let verified = verify_access_token(&key(), &settings(), &issued.token, at(NOW + 10)).unwrap();
        assert_eq!(verified.identity, alice());
        assert_eq!(verified.access, vec![pull("library/alpine")]);
        assert_eq!(verified.expires_at, NOW + 300);
        assert_eq!(verified.token_id.len(), 32);
        let refresh = issued.refresh_token.unwrap();
        assert_eq!(
            verify_refresh(&key(), &settings(), &refresh, at(NOW + 86_400)),
            Ok(alice())
        );
        let claims = claims_of(&issued.token);
        assert_eq!(claims["iss"], SERVICE);
        assert_eq!(claims["aud"], SERVICE);
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["typ"], "access");
        assert_eq!(
            claims["access"],
            json!([{"type": "repository", "name": "library/alpine", "actions": ["pull"]}])
        );
        let header = issued.token.split('.').next().unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(header).unwrap(), JWT_HEADER_JSON.as_bytes());
    }

    #[test]
    fn round_trip_anonymous_has_empty_subject_and_no_refresh_token() {
        let issued = issue(&key(), &settings(), &Identity::anonymous(), &[], true, at(NOW));
        assert_eq!(issued.refresh_token, None);
        assert_eq!(claims_of(&issued.token)["sub"], "");
        assert_eq!(
            verify_access(&key(), &settings(), &issued.token, at(NOW)),
            Ok(Identity::anonymous())
        );
        let empty_user = issue(&key(), &settings(), &Identity::user(""), &[], true, at(NOW));
        assert_eq!(empty_user.refresh_token, None);
        assert_eq!(
            verify_access(&key(), &settings(), &empty_user.token, at(NOW)),
            Ok(Identity::anonymous())
        );
    }

    #[test]
    fn tokens_have_distinct_ids() {
        assert_ne!(
            claims_of(&access_token(&alice()))["jti"],
            claims_of(&access_token(&alice()))["jti"]
        );
    }

    #[test]
    fn short_ttl_is_raised_to_sixty_seconds() {
        let mut short = settings();
        short.ttl = Duration::from_secs(5);
        let issued = issue(&key(), &short, &alice(), &[], false, at(NOW));
        assert_eq!(issued.expires_in, 60);
        assert!(verify_access(&key(), &short, &issued.token, at(NOW + 59)).is_ok());
    }

    #[test]
    fn expired_token_is_rejected_after_leeway() {
        let token = access_token(&alice());
        let expiry = NOW + 300;
        assert!(verify_access(&key(), &settings(), &token, at(expiry + 29)).is_ok());
        assert_eq!(
            verify_access(&key(), &settings(), &token, at(expiry + 30)),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify_access(&key(), &settings(), &token, at(expiry + 86_400)),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn not_yet_valid_token_is_rejected() {
        let issued = issue(&key(), &settings(), &alice(), &[], false, at(NOW + 3600));
        assert_eq!(
            verify_access(&key(), &settings(), &issued.token, at(NOW)),
            Err(TokenError::NotYetValid)
        );
        assert!(verify_access(&key(), &settings(), &issued.token, at(NOW + 3600 - 29)).is_ok());
    }

    #[test]
    fn lifetime_longer_than_configured_is_rejected() {
        let mut long = settings();
        long.ttl = Duration::from_secs(3600);
        let issued = issue(&key(), &long, &alice(), &[], false, at(NOW));
        assert_eq!(
            verify_access(&key(), &settings(), &issued.token, at(NOW)),
            Err(TokenError::LifetimeTooLong)
        );
    }

    #[test]
    fn tampered_payload_is_rejected() {
        let token = access_token(&alice());
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims = claims_of(&token);
        claims["sub"] = json!("admin");
        let forged_payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(
            verify_access(&key(), &settings(), &forged, at(NOW)),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn tampered_signature_is_rejected() {
        let token = access_token(&alice());
        let (signing_input, signature) = token.rsplit_once('.').unwrap();
        let mut signature = signature.to_string();
        let first = if signature.starts_with('A') { "B" } else { "A" };
        signature.replace_range(0..1, first);
        let forged = format!("{signing_input}.{signature}");
        assert_eq!(
            verify_access(&key(), &settings(), &forged, at(NOW)),
            Err(TokenError::BadSignature)
        );
        let without_signature = format!("{signing_input}.");
        assert_eq!(
            verify_access(&key(), &settings(), &without_signature, at(NOW)),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn alg_none_is_rejected() {
        let claims = claims_of(&access_token(&alice()));
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        assert_eq!(
            verify_access(&key(), &settings(), &unsigned, at(NOW)),
            Err(TokenError::UnsupportedAlgorithm)
        );
        // Even a correct HMAC does not make another algorithm acceptable.
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"RS256","typ":"JWT"}"#,
            r#"{"alg":"hs256","typ":"JWT"}"#,
            r#"{"alg":"HS512","typ":"JWT"}"#,
            r#"{"typ":"JWT"}"#,
            r#"{"alg":["HS256"],"typ":"JWT"}"#,
        ] {
            let forged = forge(TokenKind::Access, header, &claims);
            assert_eq!(
                verify_access(&key(), &settings(), &forged, at(NOW)),
                Err(TokenError::UnsupportedAlgorithm),
                "{header}"
            );
        }
    }

    #[test]
    fn key_material_or_extra_fields_in_header_are_rejected() {
        let claims = claims_of(&access_token(&alice()));
        for header in [
            r#"{"alg":"HS256","typ":"JWT","jwk":{"kty":"oct","k":"AAAA"}}"#,
            r#"{"alg":"HS256","typ":"JWT","kid":"../../dev/null"}"#,
            r#"{"alg":"HS256","jku":"https://evil.example/keys"}"#,
            r#"{"alg":"HS256","x5c":["MIIB"]}"#,
        ] {
            let forged = forge(TokenKind::Access, header, &claims);
            assert_eq!(
                verify_access(&key(), &settings(), &forged, at(NOW)),
                Err(TokenError::HeaderKeyMaterial),
                "{header}"
            );
        }
        for header in [
            r#"{"alg":"HS256","typ":"JWT","crit":["exp"]}"#,
            r#"{"alg":"HS256","typ":"JOSE+JSON"}"#,
        ] {
            let forged = forge(TokenKind::Access, header, &claims);
            assert_eq!(
                verify_access(&key(), &settings(), &forged, at(NOW)),
                Err(TokenError::UnsupportedHeader),
                "{header}"
            );
        }
        // Without `typ` the header is still acceptable.
        let minimal = forge(TokenKind::Access, r#"{"alg":"HS256"}"#, &claims);
        assert!(verify_access(&key(), &settings(), &minimal, at(NOW)).is_ok());
    }

    #[test]
    fn wrong_issuer_or_audience_is_rejected() {
        let token = access_token(&alice());
        let mut other = settings();
        other.service = "other.example.com".to_string();
        assert_eq!(
            verify_access(&key(), &other, &token, at(NOW)),
            Err(TokenError::WrongIssuer)
        );
        let mut claims = claims_of(&token);
        claims["aud"] = json!("other.example.com");
        let forged = forge(TokenKind::Access, JWT_HEADER_JSON, &claims);
        assert_eq!(
            verify_access(&key(), &settings(), &forged, at(NOW)),
            Err(TokenError::WrongAudience)
        );
        claims["aud"] = json!([SERVICE]);
        let forged = forge(TokenKind::Access, JWT_HEADER_JSON, &claims);
        assert_eq!(
            verify_access(&key(), &settings(), &forged, at(NOW)),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn unknown_or_missing_claims_are_rejected() {
        let mut claims = claims_of(&access_token(&alice()));
        claims["admin"] = json!(true);
        let forged = forge(TokenKind::Access, JWT_HEADER_JSON, &claims);
        assert_eq!(
            verify_access(&key(), &settings(), &forged, at(NOW)),
            Err(TokenError::Malformed)
        );
        let mut claims = claims_of(&access_token(&alice()));
        claims.as_object_mut().unwrap().remove("exp");
        let forged = forge(TokenKind::Access, JWT_HEADER_JSON, &claims);
        assert_eq!(
            verify_access(&key(), &settings(), &forged, at(NOW)),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn refresh_and_access_tokens_are_not_interchangeable() {
        let issued = issue(&key(), &settings(), &alice(), &[], true, at(NOW));
        let refresh = issued.refresh_token.unwrap();
        assert_eq!(
            verify_access(&key(), &settings(), &refresh, at(NOW)),
            Err(TokenError::RefreshTokenAsAccess)
        );
        assert_eq!(
            verify_refresh(&key(), &settings(), &issued.token, at(NOW)),
            Err(TokenError::AccessTokenAsRefresh)
        );
        // A `typ` claim edited to match, signed with the other kind's key, is
        // still refused: the claim and the key must agree.
        let mut claims = claims_of(&refresh);
        claims["typ"] = json!("access");
        let forged = forge(TokenKind::Refresh, JWT_HEADER_JSON, &claims);
        assert_eq!(
            verify_access(&key(), &settings(), &forged, at(NOW)),
            Err(TokenError::RefreshTokenAsAccess)
        );
        let mut claims = claims_of(&issued.token);
        claims["typ"] = json!("refresh");
        let forged = forge(TokenKind::Access, JWT_HEADER_JSON, &claims);
        assert_eq!(
            verify_access(&key(), &settings(), &forged, at(NOW)),
            Err(TokenError::RefreshTokenAsAccess)
        );
    }

    #[test]
    fn refresh_token_outlives_access_token_and_then_expires() {
        let issued = issue(&key(), &settings(), &alice(), &[], true, at(NOW));
        let refresh = issued.refresh_token.unwrap();
        let later = NOW + 10 * 86_400;
        assert_eq!(
            verify_access(&key(), &settings(), &issued.token, at(later)),
            Err(TokenError::Expired)
        );
        assert_eq!(verify_refresh(&key(), &settings(), &refresh, at(later)), Ok(alice()));
        assert_eq!(
            verify_refresh(&key(), &settings(), &refresh, at(NOW + 31 * 86_400)),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn anonymous_refresh_token_is_rejected() {
        let claims = json!({
            "iss": SERVICE, "sub": "", "aud": SERVICE, "exp": NOW + 60, "nbf": NOW,
            "iat": NOW, "jti": "x", "typ": "refresh", "access": [],
        });
        let forged = forge(TokenKind::Refresh, JWT_HEADER_JSON, &claims);
        assert_eq!(
            verify_refresh(&key(), &settings(), &forged, at(NOW)),
            Err(TokenError::NoSubject)
        );
    }

    #[test]
    fn token_signed_with_another_key_is_rejected() {
        let other = TokenKey::from_bytes(&[8u8; 32]).unwrap();
        let issued = issue(&other, &settings(), &alice(), &[], true, at(NOW));
        assert_eq!(
            verify_access(&key(), &settings(), &issued.token, at(NOW)),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify_refresh(&key(), &settings(), &issued.refresh_token.unwrap(), at(NOW)),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn truncated_tokens_are_rejected() {
        let token = access_token(&alice());
        for cut in [1, 5, 43, 44, token.len() / 2, token.len() - 1] {
            let truncated = &token[..token.len() - cut];
            assert!(
                verify_access(&key(), &settings(), truncated, at(NOW)).is_err(),
                "cut {cut}"
            );
        }
        let two_parts = token.rsplit_once('.').unwrap().0.to_string();
        assert_eq!(
            verify_access(&key(), &settings(), &two_parts, at(NOW)),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            verify_access(&key(), &settings(), &format!("{token}.x"), at(NOW)),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            verify_access(&key(), &settings(), "", at(NOW)),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn huge_token_is_rejected_before_parsing() {
        let huge = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(
            verify_access(&key(), &settings(), &huge, at(NOW)),
            Err(TokenError::TooLarge)
        );
        let token = access_token(&alice());
        let padded = format!("{token}{}", "A".repeat(MAX_TOKEN_LEN));
        assert_eq!(
            verify_access(&key(), &settings(), &padded, at(NOW)),
            Err(TokenError::TooLarge)
        );
    }

    #[test]
    fn garbage_is_rejected() {
        let token = access_token(&alice());
        let parts: Vec<&str> = token.split('.').collect();
        for garbage in [
            "!!!.###.$$$".to_string(),
            "a.b.c".to_string(),
            "..".to_string(),
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}.{}==", parts[0], parts[1], parts[2]),
            format!("{} .{}.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}.{}", URL_SAFE_NO_PAD.encode("not json"), parts[1], parts[2]),
            format!("{}.{}.{}", URL_SAFE_NO_PAD.encode("[1,2]"), parts[1], parts[2]),
        ] {
            assert_eq!(
                verify_access(&key(), &settings(), &garbage, at(NOW)),
                Err(TokenError::Malformed),
                "{garbage}"
            );
        }
        let signed_garbage = sign_raw(
            &key(),
            TokenKind::Access,
            JWT_HEADER_JSON.as_bytes(),
            b"\xff\xfe not json",
        );
        assert_eq!(
            verify_access(&key(), &settings(), &signed_garbage, at(NOW)),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn access_claim_is_trimmed_to_keep_tokens_small() {
        let scopes: Vec<Scope> = (0..200)
            .map(|i| Scope {
                kind: "repository".to_string(),
                name: format!("team-{i:03}/{}", "x".repeat(200)),
                actions: vec!["pull".to_string(), "push".to_string()],
            })
            .collect();
        let issued = issue(&key(), &settings(), &alice(), &scopes, false, at(NOW));
        assert!(issued.token.len() <= MAX_TOKEN_LEN - 100, "{}", issued.token.len());
        let verified = verify_access_token(&key(), &settings(), &issued.token, at(NOW)).unwrap();
        assert!(!verified.access.is_empty());
        assert_eq!(verified.access, scopes[..verified.access.len()]);
        assert_eq!(issued.scope, format_scopes(&verified.access));
    }

    #[test]
    fn token_error_display_is_fixed_text() {
        let token = access_token(&alice());
        for error in [
            verify_access(&key(), &settings(), &token, at(NOW + 86_400)).unwrap_err(),
            verify_access(&key(), &settings(), &token[1..], at(NOW)).unwrap_err(),
        ] {
            let text = error.to_string();
            assert!(text.len() < 60 && !text.contains(&token[10..20]), "{text}");
        }
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let issued = issue(&key(), &settings(), &alice(), &[], true, at(NOW));
        let debug = format!("{issued:?} {:?}", key());
        assert!(!debug.contains(&issued.token[..20]), "{debug}");
        assert!(!debug.contains("0707"), "{debug}");
        let request = parse_token_post(
            Some("application/x-www-form-urlencoded"),
            b"grant_type=password&username=alice&password=hunter2",
        )
        .unwrap();
        assert!(!format!("{request:?}").contains("hunter2"));
    }

    // --- key file -------------------------------------------------------------

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("token.key");
        let first = TokenKey::load_or_create(&path).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        let content = fs::read_to_string(&path).unwrap();
        assert_eq!(content.trim().len(), 64);
        let second = TokenKey::load_or_create(&path).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), content);
        let issued = issue(&first, &settings(), &alice(), &[], true, at(NOW));
        assert_eq!(verify_access(&second, &settings(), &issued.token, at(NOW)), Ok(alice()));
        assert_eq!(
            verify_refresh(&second, &settings(), &issued.refresh_token.unwrap(), at(NOW)),
            Ok(alice())
        );
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(directory.path()).unwrap().count(), 1);
        // A fresh file holds a different key.
        let other_path = directory.path().join("other.key");
        let other = TokenKey::load_or_create(&other_path).unwrap();
        let issued = issue(&other, &settings(), &alice(), &[], false, at(NOW));
        assert_eq!(
            verify_access(&first, &settings(), &issued.token, at(NOW)),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn racing_creators_agree_on_one_key() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("token.key");
        let keys: Vec<TokenKey> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| TokenKey::load_or_create(&path).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let issued = issue(&keys[0], &settings(), &alice(), &[], false, at(NOW));
        for key in &keys {
            assert_eq!(verify_access(key, &settings(), &issued.token, at(NOW)), Ok(alice()));
        }
    }

    #[test]
    fn key_file_readable_by_others_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("token.key");
        TokenKey::load_or_create(&path).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let error = TokenKey::load_or_create(&path).unwrap_err();
            let message = error.to_string();
            assert!(matches!(error, TokenKeyError::Permissions { .. }), "{message}");
            assert!(message.contains(&format!("chmod 600 {}", path.display())), "{message}");
            assert!(message.contains(&format!("{mode:03o}")), "{message}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(TokenKey::load_or_create(&path).is_ok());
    }

    fn write_key_file(directory: &Path, content: &[u8]) -> PathBuf {
        let path = directory.join("token.key");
        let _ = fs::remove_file(&path);
        write_new_private_file(&path, content).unwrap();
        path
    }

    #[test]
    fn key_file_content_is_validated() {
        let directory = tempfile::tempdir().unwrap();
        let short = write_key_file(directory.path(), format!("{}\n", "ab".repeat(31)).as_bytes());
        let message = TokenKey::load_or_create(&short).unwrap_err().to_string();
        assert!(
            message.contains("31 bytes") && message.contains("openssl rand"),
            "{message}"
        );

        let text = write_key_file(directory.path(), b"correct horse battery staple, but not hex\n");
        let message = TokenKey::load_or_create(&text).unwrap_err().to_string();
        assert!(message.contains("not hex or base64"), "{message}");

        let huge = write_key_file(directory.path(), "ab".repeat(4096).as_bytes());
        let message = TokenKey::load_or_create(&huge).unwrap_err().to_string();
        assert!(message.contains("larger than"), "{message}");

        let secret = [42u8; 32];
        let base64 = write_key_file(directory.path(), format!("{}\n", STANDARD.encode(secret)).as_bytes());
        let from_file = TokenKey::load_or_create(&base64).unwrap();
        let issued = issue(&from_file, &settings(), &alice(), &[], false, at(NOW));
        let direct = TokenKey::from_bytes(&secret).unwrap();
        assert_eq!(verify_access(&direct, &settings(), &issued.token, at(NOW)), Ok(alice()));

        let upper_hex = write_key_file(directory.path(), hex_encode(&secret).to_uppercase().as_bytes());
        let from_hex = TokenKey::load_or_create(&upper_hex).unwrap();
        assert_eq!(
            verify_access(&from_hex, &settings(), &issued.token, at(NOW)),
            Ok(alice())
        );
    }

    #[test]
    fn key_file_problems_name_the_file() {
        let directory = tempfile::tempdir().unwrap();
        let missing_directory = directory.path().join("absent").join("token.key");
        let message = TokenKey::load_or_create(&missing_directory).unwrap_err().to_string();
        assert!(message.contains(&missing_directory.display().to_string()), "{message}");

        let message = TokenKey::load_or_create(directory.path()).unwrap_err().to_string();
        assert!(message.contains("not a regular file"), "{message}");
    }

    #[test]
    fn key_file_owned_by_another_user_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        let path = write_key_file(directory.path(), format!("{}\n", "0".repeat(64)).as_bytes());
        if let Err(error) = std::os::unix::fs::chown(&path, Some(65_534), None) {
            // Only root can give a file away.
            eprintln!("skipped: cannot chown to uid 65534 ({error})");
            return;
        }
        let error = TokenKey::load_or_create(&path).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, TokenKeyError::Owner { owner: 65_534, .. }), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("owned by uid 65534"), "{message}");
        assert!(message.contains(&format!("chown root {}", path.display())), "{message}");
        // Root may own the key of a service running as another user.
        std::os::unix::fs::chown(&path, Some(0), None).unwrap();
        assert!(TokenKey::load_or_create(&path).is_ok());
    }

    #[test]
    fn a_missing_key_directory_is_explained() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("absent").join("token.key");
        let message = TokenKey::load_or_create(&path).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(
            message.contains(&format!(
                "directory {} does not exist",
                directory.path().join("absent").display()
            )),
            "{message}"
        );
        assert!(message.contains("--token-key"), "{message}");
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(matches!(
            TokenKey::from_bytes(&[1u8; 31]),
            Err(TokenKeyError::TooShort { len: 31 })
        ));
        assert!(TokenKey::from_bytes(&[]).is_err());
        assert!(TokenKey::from_bytes(&[1u8; 64]).is_ok());
    }

    // --- bindings and the verified-token cache -------------------------------

    #[test]
    fn user_tokens_carry_their_binding() {
        let issued = issue_bound(&key(), &settings(), &alice(), &[], "b1nd", true, at(NOW));
        assert_eq!(claims_of(&issued.token)["bnd"], "b1nd");
        let verified = verify_access_token(&key(), &settings(), &issued.token, at(NOW)).unwrap();
        assert_eq!(verified.binding, "b1nd");
        let refresh = issued.refresh_token.unwrap();
        assert_eq!(
            verify_refresh_bound(&key(), &settings(), &refresh, at(NOW)),
            Ok((alice(), "b1nd".to_string()))
        );
        let unbound = issue(&key(), &settings(), &alice(), &[], false, at(NOW));
        assert!(claims_of(&unbound.token).get("bnd").is_none());
        assert_eq!(unbound.refresh_token, None);
        // Anonymous tokens name no credential.
        let anonymous = issue_bound(&key(), &settings(), &Identity::anonymous(), &[], "b1nd", true, at(NOW));
        assert!(claims_of(&anonymous.token).get("bnd").is_none());
        assert_eq!(anonymous.refresh_token, None);
    }

    fn user_token(user: &str, binding: &str) -> String {
        issue_bound(&key(), &settings(), &Identity::user(user), &[], binding, false, at(NOW)).token
    }

    fn anonymous_token() -> String {
        issue(&key(), &settings(), &Identity::anonymous(), &[], false, at(NOW)).token
    }

    #[test]
    fn cache_answers_repeated_tokens_with_their_binding() {
        let cache = VerifiedTokenCache::default();
        let token = user_token("alice", "b1nd");
        let expected = CachedAccess {
            identity: alice(),
            binding: "b1nd".to_string(),
        };
        assert_eq!(cache.verify(&key(), &settings(), &token, at(NOW)), Ok(expected.clone()));
        assert_eq!(cache.hits(), 0);
        assert_eq!(cache.verify(&key(), &settings(), &token, at(NOW + 1)), Ok(expected));
        assert_eq!(cache.hits(), 1);
        let anonymous = anonymous_token();
        for _ in 0..2 {
            assert_eq!(
                cache
                    .verify(&key(), &settings(), &anonymous, at(NOW))
                    .map(|a| a.identity),
                Ok(Identity::anonymous())
            );
        }
        assert_eq!(cache.hits(), 2);
        assert_eq!(cache.len(), (1, 1));
    }

    #[test]
    fn cache_never_keeps_bad_or_expired_tokens() {
        let cache = VerifiedTokenCache::default();
        let forged = issue(
            &TokenKey::from_bytes(&[8u8; 32]).unwrap(),
            &settings(),
            &alice(),
            &[],
            false,
            at(NOW),
        )
        .token;
        for _ in 0..2 {
            assert_eq!(
                cache.verify(&key(), &settings(), &forged, at(NOW)),
                Err(TokenError::BadSignature)
            );
        }
        assert_eq!(cache.len(), (0, 0));
        let token = user_token("alice", "b1nd");
        assert!(cache.verify(&key(), &settings(), &token, at(NOW)).is_ok());
        let expired = at(NOW + 300 + CLOCK_LEEWAY.as_secs());
        assert_eq!(
            cache.verify(&key(), &settings(), &token, expired),
            Err(TokenError::Expired)
        );
        assert_eq!(cache.hits(), 0);
        assert_eq!(
            cache.verify(&key(), &settings(), &"a".repeat(MAX_TOKEN_LEN + 1), at(NOW)),
            Err(TokenError::TooLarge)
        );
    }

    #[test]
    fn cache_evicts_the_least_recently_used_user_token() {
        let cache = VerifiedTokenCache::new(2, 1);
        let [a, b, c] = ["a", "b", "c"].map(|user| user_token(user, "x"));
        for token in [&a, &b, &a, &c] {
            assert!(cache.verify(&key(), &settings(), token, at(NOW)).is_ok());
        }
        assert_eq!(cache.hits(), 1, "a's second use");
        assert_eq!(cache.len(), (2, 0));
        assert!(cache.verify(&key(), &settings(), &a, at(NOW)).is_ok());
        assert_eq!(cache.hits(), 2, "a stayed: b was the least recently used");
        assert!(cache.verify(&key(), &settings(), &b, at(NOW)).is_ok());
        assert_eq!(cache.hits(), 2, "b was evicted");
    }

    #[test]
    fn anonymous_tokens_never_evict_user_tokens() {
        let cache = VerifiedTokenCache::default();
        let alice = user_token("alice", "b1nd");
        assert!(cache.verify(&key(), &settings(), &alice, at(NOW)).is_ok());
        for _ in 0..20_000 {
            assert!(cache.verify(&key(), &settings(), &anonymous_token(), at(NOW)).is_ok());
        }
        assert_eq!(cache.hits(), 0);
        assert_eq!(cache.len(), (1, ANONYMOUS_TOKEN_CACHE_ENTRIES));
        assert!(cache.verify(&key(), &settings(), &alice, at(NOW)).is_ok());
        assert_eq!(cache.hits(), 1, "alice's entry was evicted");
        // Entries are keyed by a 32-byte hash, whatever the token's length.
        let long = issue(
            &key(),
            &settings(),
            &Identity::anonymous(),
            &(0..MAX_SCOPES)
                .map(|n| pull(&format!("{n}/{}", "x".repeat(200))))
                .collect::<Vec<_>>(),
            false,
            at(NOW),
        )
        .token;
        assert!(long.len() > 4096, "{}", long.len());
        assert!(cache.verify(&key(), &settings(), &long, at(NOW)).is_ok());
        assert_eq!(cache.len(), (1, ANONYMOUS_TOKEN_CACHE_ENTRIES));
    }

    // --- scopes -------------------------------------------------------------

    fn scope(kind: &str, name: &str, actions: &[&str]) -> Scope {
        Scope {
            kind: kind.to_string(),
            name: name.to_string(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn scopes_are_parsed() {
        assert_eq!(
            parse_scopes(&["repository:samalba/my-app:pull,push"]),
            vec![scope("repository", "samalba/my-app", &["pull", "push"])]
        );
        assert_eq!(
            parse_scopes(&["repository:a/b:pull repository:c:push", "registry:catalog:*"]),
            vec![
                scope("repository", "a/b", &["pull"]),
                scope("repository", "c", &["push"]),
                scope("registry", "catalog", &["*"]),
            ]
        );
        assert_eq!(
            parse_scopes(&["repository:host:5000/a/b:pull,push"]),
            vec![scope("repository", "host:5000/a/b", &["pull", "push"])]
        );
        assert_eq!(
            parse_scopes(&["repository(plugin):vieux/sshfs:pull"]),
            vec![scope("repository(plugin)", "vieux/sshfs", &["pull"])]
        );
        assert_eq!(
            parse_scopes(&["  repository:x_y.z-w:pull  "]),
            vec![scope("repository", "x_y.z-w", &["pull"])]
        );
    }

    #[test]
    fn scopes_for_one_resource_are_merged() {
        assert_eq!(
            parse_scopes(&["repository:a:pull", "repository:a:push,pull repository:a:delete"]),
            vec![scope("repository", "a", &["pull", "push", "delete"])]
        );
        assert_eq!(
            parse_scopes(&["repository:a:pull,pull"]),
            vec![scope("repository", "a", &["pull"])]
        );
    }

    #[test]
    fn malformed_scopes_are_ignored() {
        for malformed in [
            "",
            "repository",
            "repository:a",
            "repository:a:",
            ":a:pull",
            "repository::pull",
            "Repository:a:pull",
            "repository:a:Pull",
            "repository:a:pull,",
            "repository:a:pull,,push",
            "repository:a b:pull",
            "repository:a\n:pull",
            "repository:a\"b:pull",
            "repository(:a:pull",
            "repository(x:a:pull",
            "repository():a:pull",
            "repository:a:p*",
            "repository:a:a,b,c,d,e,f,g,h,i",
        ] {
            assert_eq!(parse_scopes(&[malformed]), vec![], "{malformed:?}");
        }
        let long_name = format!("repository:{}:pull", "a".repeat(MAX_SCOPE_NAME_LEN + 1));
        assert_eq!(parse_scopes(&[&long_name]), vec![]);
        assert_eq!(
            parse_scopes(&["bad repository:ok:pull :x:y"]),
            vec![scope("repository", "ok", &["pull"])]
        );
    }

    #[test]
    fn scope_count_is_bounded() {
        let many: Vec<String> = (0..100).map(|i| format!("repository:r{i}:pull")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let parsed = parse_scopes(&refs);
        assert_eq!(parsed.len(), MAX_SCOPES);
        assert_eq!(parsed[0].name, "r0");
    }

    #[test]
    fn scopes_display_round_trip() {
        let parsed = parse_scopes(&["repository:host:5000/a:pull,push registry:catalog:*"]);
        assert_eq!(
            format_scopes(&parsed),
            "repository:host:5000/a:pull,push registry:catalog:*"
        );
    }

    // --- token requests ---------------------------------------------------------

    #[test]
    fn get_request_is_parsed() {
        let request = parse_token_get(
            "service=registry.example.com&scope=repository%3Asamalba%2Fmy-app%3Apull%2Cpush\
             &scope=repository:a:pull+repository:b:push&account=alice&offline_token=true&client_id=docker",
        )
        .unwrap();
        assert_eq!(
            request,
            TokenRequest::Get {
                service: Some(SERVICE.to_string()),
                scopes: vec![
                    scope("repository", "samalba/my-app", &["pull", "push"]),
                    scope("repository", "a", &["pull"]),
                    scope("repository", "b", &["push"]),
                ],
                account: Some("alice".to_string()),
                offline_token: true,
            }
        );
        assert!(request.check_service(&settings()).is_ok());
    }

    #[test]
    fn get_request_defaults_and_leniency() {
        for query in ["", "?", "service=", "foo=bar&&", "offline_token=false", "account="] {
            assert_eq!(
                parse_token_get(query),
                Ok(TokenRequest::Get {
                    service: None,
                    scopes: vec![],
                    account: None,
                    offline_token: false,
                }),
                "{query:?}"
            );
        }
        assert!(matches!(
            parse_token_get("offline_token=1"),
            Ok(TokenRequest::Get {
                offline_token: true,
                ..
            })
        ));
        assert!(matches!(
            parse_token_get("scope=repository:a:pull&scope=garbage"),
            Ok(TokenRequest::Get { ref scopes, .. }) if scopes.len() == 1
        ));
    }

    #[test]
    fn get_request_errors() {
        assert_eq!(
            parse_token_get("service=a&service=b"),
            Err(TokenRequestError::DuplicateParameter("service"))
        );
        assert_eq!(
            parse_token_get("account=a&account=a"),
            Err(TokenRequestError::DuplicateParameter("account"))
        );
        assert_eq!(
            parse_token_get("offline_token=yes"),
            Err(TokenRequestError::InvalidParameter("offline_token"))
        );
        assert_eq!(
            parse_token_get("account=al%0Aice"),
            Err(TokenRequestError::InvalidParameter("account"))
        );
        for bad in ["scope=%zz", "scope=%4", "scope=%", "account=%ff"] {
            assert_eq!(parse_token_get(bad), Err(TokenRequestError::BadEncoding), "{bad}");
        }
        let long = format!("scope={}", "a".repeat(MAX_TOKEN_REQUEST_LEN));
        assert_eq!(parse_token_get(&long), Err(TokenRequestError::TooLarge));
    }

    #[test]
    fn wrong_service_is_refused_unless_absent() {
        let request = parse_token_get("service=other.example.com").unwrap();
        let error = request.check_service(&settings()).unwrap_err();
        assert!(error.to_string().contains(SERVICE));
        assert!(!error.to_string().contains("other.example.com"));
        assert!(parse_token_get("").unwrap().check_service(&settings()).is_ok());
        let post = parse_token_post(
            Some("application/x-www-form-urlencoded"),
            b"grant_type=refresh_token&refresh_token=x&service=evil",
        )
        .unwrap();
        assert!(post.check_service(&settings()).is_err());
    }

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    #[test]
    fn docker_password_grant_is_parsed() {
        let request = parse_token_post(
            FORM,
            b"grant_type=password&username=johndoe&password=A3d%26dj3w%3D+x&service=registry.example.com\
              &client_id=docker&access_type=offline",
        )
        .unwrap();
        assert_eq!(
            request,
            TokenRequest::PasswordGrant {
                username: "johndoe".to_string(),
                password: "A3d&dj3w= x".to_string(),
                service: Some(SERVICE.to_string()),
                scopes: vec![],
                access_type_offline: true,
                client_id: Some("docker".to_string()),
            }
        );
    }

    #[test]
    fn refresh_grant_is_parsed() {
        let request = parse_token_post(
            Some("Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
            b"grant_type=refresh_token&refresh_token=abc.def.ghi&service=registry.example.com\
              &client_id=docker&scope=repository%3Asamalba%2Fmy-app%3Apull%2Cpush",
        )
        .unwrap();
        assert_eq!(
            request,
            TokenRequest::RefreshGrant {
                refresh_token: "abc.def.ghi".to_string(),
                service: Some(SERVICE.to_string()),
                scopes: vec![scope("repository", "samalba/my-app", &["pull", "push"])],
            }
        );
    }

    #[test]
    fn post_request_errors() {
        let cases: &[(Option<&str>, &[u8], TokenRequestError)] = &[
            (None, b"grant_type=password", TokenRequestError::UnsupportedContentType),
            (
                Some("application/json"),
                b"{}",
                TokenRequestError::UnsupportedContentType,
            ),
            (
                Some("multipart/form-data; boundary=x"),
                b"",
                TokenRequestError::UnsupportedContentType,
            ),
            (
                Some("application/x-www-form-urlencoded; charset=latin1"),
                b"grant_type=password",
                TokenRequestError::UnsupportedContentType,
            ),
            (FORM, b"", TokenRequestError::MissingParameter("grant_type")),
            (
                FORM,
                b"grant_type=authorization_code&code=x",
                TokenRequestError::UnsupportedGrantType,
            ),
            (
                FORM,
                b"grant_type=client_credentials",
                TokenRequestError::UnsupportedGrantType,
            ),
            (
                FORM,
                b"grant_type=password&grant_type=refresh_token&refresh_token=x",
                TokenRequestError::DuplicateParameter("grant_type"),
            ),
            (
                FORM,
                b"grant_type=password&password=x",
                TokenRequestError::MissingParameter("username"),
            ),
            (
                FORM,
                b"grant_type=password&username=&password=x",
                TokenRequestError::MissingParameter("username"),
            ),
            (
                FORM,
                b"grant_type=password&username=a",
                TokenRequestError::MissingParameter("password"),
            ),
            (
                FORM,
                b"grant_type=password&username=a&password=x&password=y",
                TokenRequestError::DuplicateParameter("password"),
            ),
            (
                FORM,
                b"grant_type=password&username=a%0d%0aforged&password=x",
                TokenRequestError::InvalidParameter("username"),
            ),
            (
                FORM,
                b"grant_type=refresh_token",
                TokenRequestError::MissingParameter("refresh_token"),
            ),
            (
                FORM,
                b"grant_type=refresh_token&refresh_token=a&refresh_token=b",
                TokenRequestError::DuplicateParameter("refresh_token"),
            ),
            (
                FORM,
                b"grant_type=password&username=a&password=b&access_type=sometimes",
                TokenRequestError::InvalidParameter("access_type"),
            ),
            (
                FORM,
                b"grant_type=password&username=a&password=b&client_id=%01",
                TokenRequestError::InvalidParameter("client_id"),
            ),
            (
                FORM,
                b"grant_type=password&username=a&password=%e9",
                TokenRequestError::BadEncoding,
            ),
            (
                FORM,
                b"grant_type=password&username=a&password=\xff",
                TokenRequestError::BadEncoding,
            ),
        ];
        for (content_type, body, expected) in cases {
            assert_eq!(
                parse_token_post(*content_type, body).as_ref(),
                Err(expected),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let oversized = vec![b'a'; MAX_TOKEN_REQUEST_LEN + 1];
        assert_eq!(parse_token_post(FORM, &oversized), Err(TokenRequestError::TooLarge));
        assert_eq!(
            TokenRequestError::UnsupportedGrantType.oauth_error(),
            "unsupported_grant_type"
        );
        assert_eq!(TokenRequestError::TooLarge.oauth_error(), "invalid_request");
    }

    #[test]
    fn request_errors_never_echo_values() {
        let error = parse_token_post(FORM, b"grant_type=hunter2").unwrap_err();
        assert!(!error.to_string().contains("hunter2"));
        let error = parse_token_post(FORM, b"grant_type=password&username=a&password=x&password=hunter2").unwrap_err();
        assert!(!error.to_string().contains("hunter2"));
    }

    // --- challenge, responses -------------------------------------------------

    #[test]
    fn challenge_format() {
        assert_eq!(
            challenge(&settings(), None, None),
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com""#
        );
        assert_eq!(
            challenge(
                &settings(),
                Some(&scope("repository", "samalba/my-app", &["pull", "push"])),
                Some("invalid_token")
            ),
            "Bearer realm=\"https://auth.example.com/token\",service=\"registry.example.com\",\
             scope=\"repository:samalba/my-app:pull,push\",error=\"invalid_token\""
        );
    }

    #[test]
    fn challenge_quoting_is_safe() {
        let hostile = TokenSettings {
            realm: "https://a\"b\\c/token\r\nSet-Cookie: x=1".to_string(),
            service: "svc\",scope=\"repository:*:*".to_string(),
            ..settings()
        };
        let value = challenge(&hostile, None, Some("bad\"\n"));
        assert_eq!(
            value,
            "Bearer realm=\"https://a\\\"b\\\\c/tokenSet-Cookie: x=1\",\
             service=\"svc\\\",scope=\\\"repository:*:*\",error=\"bad\\\"\""
        );
        assert!(http::HeaderValue::from_str(&value).is_ok());
    }

    #[test]
    fn token_response_fields() {
        let issued = issue(&key(), &settings(), &alice(), &[pull("a")], true, at(NOW));
        let body: Value = serde_json::from_str(&token_response_json(&issued)).unwrap();
        assert_eq!(body["token"], issued.token.as_str());
        assert_eq!(body["access_token"], issued.token.as_str());
        assert_eq!(body["expires_in"], 300);
        assert_eq!(body["issued_at"], "2023-11-14T22:13:20Z");
        assert_eq!(body["scope"], "repository:a:pull");
        assert_eq!(body["refresh_token"], issued.refresh_token.unwrap().as_str());

        let anonymous = issue(&key(), &settings(), &Identity::anonymous(), &[], false, at(NOW));
        let body: Value = serde_json::from_str(&token_response_json(&anonymous)).unwrap();
        assert!(body.get("refresh_token").is_none());
        assert_eq!(body["scope"], "");
    }

    #[test]
    fn error_bodies() {
        let body: Value = serde_json::from_str(&error_json("UNAUTHORIZED", "bad \"creds\"")).unwrap();
        assert_eq!(
            body,
            json!({"errors": [{"code": "UNAUTHORIZED", "message": "bad \"creds\"", "detail": null}]})
        );
        let body: Value = serde_json::from_str(&oauth_error_json("invalid_grant", "wrong password")).unwrap();
        assert_eq!(body["error"], "invalid_grant");
        assert_eq!(body["error_description"], "wrong password");
        assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
        let body: Value = serde_json::from_str(&oauth_error_json("unsupported_grant_type", "no")).unwrap();
        assert_eq!(body["errors"][0]["code"], "UNSUPPORTED");
    }

    #[test]
    fn bearer_token_extraction() {
        assert_eq!(bearer_token("Bearer abc.def-_ghi"), Some("abc.def-_ghi"));
        assert_eq!(bearer_token("bearer   abc=="), Some("abc=="));
        assert_eq!(bearer_token("Basic YWxpY2U6eA=="), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer a b"), None);
        assert_eq!(bearer_token("Bearer a\"b"), None);
        assert_eq!(bearer_token("Bearer =="), None);
    }

    #[test]
    fn rfc3339_formatting() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_257_894_000), "2009-11-10T23:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(rfc3339_utc(u64::MAX), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn issuing_with_a_clock_before_1970_yields_an_expired_token() {
        let issued = issue(
            &key(),
            &settings(),
            &alice(),
            &[],
            false,
            UNIX_EPOCH - Duration::from_secs(5),
        );
        assert_eq!(
            verify_access(&key(), &settings(), &issued.token, at(NOW)),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify_access(&key(), &settings(), &issued.token, UNIX_EPOCH - Duration::from_secs(5)),
            Err(TokenError::ClockBeforeEpoch)
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn verify_never_panics_or_accepts_noise(token in "[A-Za-z0-9_.=-]{0,400}") {
            proptest::prop_assert!(verify_access(&key(), &settings(), &token, at(NOW)).is_err());
        }

        #[test]
        fn request_parsers_never_panic(input in ".{0,200}") {
            let _ = parse_token_get(&input);
            let _ = parse_token_post(FORM, input.as_bytes());
            let _ = parse_scopes(&[&input]);
        }

        #[test]
        fn challenge_is_always_a_valid_header(realm in ".{0,40}", service in ".{0,40}") {
            let hostile = TokenSettings { realm, service, ..settings() };
            let value = challenge(&hostile, None, Some("invalid_token"));
            proptest::prop_assert!(http::HeaderValue::from_str(&value).is_ok());
        }
    }
}
