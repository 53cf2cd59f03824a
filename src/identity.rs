//! Who is asking: the htpasswd file, the `Authorization` header, and bcrypt verification.
//!
//! bcrypt is deliberately slow, and a `docker pull` of one image sends dozens of requests with
//! the same credentials, so successful checks are cached. The cache key is an HMAC (with a random
//! per-process key) of the user, the password and the htpasswd entry's hash: the password is
//! never stored, and editing an entry changes the key, which invalidates the cached success at
//! once. Unknown users are checked against a dummy hash of the file's usual cost so that they
//! take as long as a wrong password.
//!
//! bcrypt computations wait in a bounded queue for one of `max_concurrent_bcrypt` places. A check
//! whose requests all went away (nginx gave up and closed the connection) leaves the queue without
//! its bcrypt, and one still waiting at its deadline is answered without one, so a flood of
//! abandoned logins cannot delay real ones for long. Checks that would start a bcrypt pass the
//! [`LoginThrottle`]'s limits first; cached logins never do.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tokio::sync::{watch, Semaphore};

use crate::throttle::{LimitKind, LoginThrottle};

/// The largest htpasswd file read, at start and on reload (about 400 000 users).
pub const MAX_HTPASSWD_BYTES: u64 = crate::rules::MAX_RULES_BYTES;

/// The longest `Authorization` header value accepted; longer ones are rejected before decoding.
pub const MAX_AUTHORIZATION_LEN: usize = 8 * 1024;

/// The longest user name, in bytes, that a login may name: a longer one is refused before
/// anything about it is stored or computed.
pub const MAX_USER_NAME_BYTES: usize = 256;

/// Checks waiting for a bcrypt place at most (a flood beyond it is refused at once).
pub const MAX_BCRYPT_QUEUE: usize = 1024;

/// How long a check waits for a bcrypt place before it is answered without one: well under the
/// 30 s `proxy_read_timeout` of the nginx snippet, so the answer comes before nginx gives up.
pub const BCRYPT_QUEUE_DEADLINE: Duration = Duration::from_secs(10);

/// Cost of the dummy hash when the htpasswd file has no entries to copy it from.
const DEFAULT_DUMMY_COST: u32 = 10;

/// What a bcrypt hash looks like, for error messages.
const EXPECTED_BCRYPT: &str = "expected a bcrypt hash ($2y$, $2b$ or $2a$) as written by `htpasswd -B`";

/// bcrypt's own base64 alphabet, without padding, rejecting non-canonical trailing bits exactly
/// as `bcrypt::verify` does, so a hash accepted at load can always be verified.
const BCRYPT_BASE64: GeneralPurpose = GeneralPurpose::new(&alphabet::BCRYPT, NO_PAD);

/// RFC 7617 Basic credentials: standard base64; clients disagree about padding, so accept both.
const BASIC_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

// ---------------------------------------------------------------------------------------------
// htpasswd
// ---------------------------------------------------------------------------------------------

/// The users of an htpasswd file and their bcrypt hashes. Immutable once loaded; a reload builds
/// a new one, so share it behind an `Arc`.
pub struct Htpasswd {
    /// user name -> bcrypt hash exactly as written in the file
    hashes: BTreeMap<String, String>,
    /// A random, well-formed bcrypt hash no password matches, with the file's most common cost;
    /// unknown users are verified against it so they cost the same time as a wrong password.
    dummy_hash: String,
    /// Users whose line has a problem that concerns them alone (a hash that is not bcrypt): they
    /// cannot log in, and the rest of the file is in force.
    disabled: Vec<DisabledUser>,
}

/// A user who cannot log in because of their line in the htpasswd file. `Display` names the file,
/// the line and the problem, as a load error does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisabledUser {
    pub user: String,
    pub file: String,
    pub line: usize,
    pub problem: String,
    pub expected: &'static str,
}

impl fmt::Display for DisabledUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}, {}; user {:?} is disabled until the line is fixed",
            self.file, self.line, self.problem, self.expected, self.user
        )
    }
}

/// Why an htpasswd file could not be loaded. `Display` names the file (and line) to fix.
#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    #[error("{file}: cannot read the htpasswd file: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {problem}, {expected}")]
    Line {
        file: String,
        line: usize,
        problem: String,
        expected: &'static str,
    },
}

/// What is wrong with one line: the problem and what was expected instead.
type LineProblem = (String, &'static str);

impl Htpasswd {
    /// Parses htpasswd text; `file_name` only appears in error messages.
    ///
    /// A line that cannot be read as `user:hash`, a reserved or malformed user name, and a user
    /// listed twice make the whole file an error: which entry was meant is unclear. A hash that is
    /// not a usable bcrypt hash (another scheme, a typo) only disables its user, who is then
    /// refused like an unknown user; the problem is logged as an error with the file and line, and
    /// listed by [`Htpasswd::disabled`].
    pub fn parse(file_name: &str, text: &str) -> Result<Htpasswd, HtpasswdError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut hashes = BTreeMap::new();
        let mut line_of_user: HashMap<&str, usize> = HashMap::new();
        let mut users_per_cost: BTreeMap<u32, usize> = BTreeMap::new();
        let mut disabled = Vec::new();

        for (index, raw_line) in text.split('\n').enumerate() {
            let line_number = index + 1;
            let line_error = |(problem, expected): LineProblem| HtpasswdError::Line {
                file: file_name.to_string(),
                line: line_number,
                problem,
                expected,
            };
            // Trailing whitespace (including the `\r` of CRLF files) can never be part of a
            // bcrypt hash, and editors add it invisibly.
            let line = raw_line.trim_end_matches(['\r', ' ', '\t']);
            let content = line.trim_start_matches([' ', '\t']);
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(line_error((
                    "no ':' between user name and password hash".to_string(),
                    "expected `user:hash` as written by `htpasswd -B`",
                )));
            };
            check_user_name(user).map_err(line_error)?;
            if let Some(first_line) = line_of_user.get(user) {
                return Err(line_error((
                    format!("duplicate user {user:?} (first defined on line {first_line})"),
                    "expected each user exactly once",
                )));
            }
            line_of_user.insert(user, line_number);
            match check_login_name(user).and_then(|()| check_bcrypt_hash(user, hash)) {
                Ok(cost) => {
                    hashes.insert(user.to_string(), hash.to_string());
                    *users_per_cost.entry(cost).or_default() += 1;
                }
                Err((problem, expected)) => disabled.push(DisabledUser {
                    user: user.to_string(),
                    file: file_name.to_string(),
                    line: line_number,
                    problem,
                    expected,
                }),
            }
        }
        for user in &disabled {
            tracing::error!(target: "csel_auth::htpasswd", "{user}");
        }

        // The most common cost; on a tie the higher one, so unknown users are never cheaper.
        let dummy_cost = users_per_cost
            .iter()
            .max_by_key(|(cost, users)| (**users, **cost))
            .map_or(DEFAULT_DUMMY_COST, |(cost, _)| *cost);
        Ok(Htpasswd {
            hashes,
            dummy_hash: random_unmatchable_bcrypt_hash(dummy_cost),
            disabled,
        })
    }

    /// Reads and parses an htpasswd file (at most [`MAX_HTPASSWD_BYTES`], the
    /// same bound as on reload).
    pub fn load(path: &Path) -> Result<Htpasswd, HtpasswdError> {
        let file = path.display().to_string();
        let bytes = crate::rules::read_bounded(path, MAX_HTPASSWD_BYTES).map_err(|e| HtpasswdError::Io {
            file: file.clone(),
            source: match e {
                crate::rules::ReadError::Io(source) => source,
                crate::rules::ReadError::TooLarge(size) => {
                    std::io::Error::other(format!("it is {size} bytes; the limit is {MAX_HTPASSWD_BYTES} bytes"))
                }
            },
        })?;
        match String::from_utf8(bytes) {
            Ok(text) => Htpasswd::parse(&file, &text),
            Err(not_utf8) => {
                let valid = &not_utf8.as_bytes()[..not_utf8.utf8_error().valid_up_to()];
                Err(HtpasswdError::Line {
                    file,
                    line: valid.iter().filter(|byte| **byte == b'\n').count() + 1,
                    problem: "the line is not valid UTF-8".to_string(),
                    expected: "expected a UTF-8 text file",
                })
            }
        }
    }

    /// No users at all: every Basic login fails (after the same bcrypt time as any other).
    pub fn empty() -> Htpasswd {
        Htpasswd {
            hashes: BTreeMap::new(),
            dummy_hash: random_unmatchable_bcrypt_hash(DEFAULT_DUMMY_COST),
            disabled: Vec::new(),
        }
    }

    /// Whether `user` can log in (is listed, and not disabled).
    pub fn contains(&self, user: &str) -> bool {
        self.hashes.contains_key(user)
    }

    /// Users listed in the file who cannot log in, in file order.
    pub fn disabled(&self) -> &[DisabledUser] {
        &self.disabled
    }

    /// Whether `user` is listed but disabled.
    pub fn is_disabled(&self, user: &str) -> bool {
        self.disabled.iter().any(|d| d.user == user)
    }

    /// The user names, in sorted order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.hashes.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// A short fingerprint of `user`'s entry, which changes whenever the entry
    /// does (a new password, even the same one re-hashed). It reveals nothing
    /// usable about the password: the bcrypt salt stays inside the hash.
    pub fn entry_fingerprint(&self, user: &str) -> Option<String> {
        use sha2::Digest;
        let hash = self.hashes.get(user)?;
        let digest = sha2::Sha256::digest(hash.as_bytes());
        Some(digest[..12].iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The hash to verify `user`'s password against, and whether the user exists. Unknown users
    /// get the dummy hash so that the work done is the same.
    fn hash_to_check(&self, user: &str) -> (&str, bool) {
        match self.hashes.get(user) {
            Some(hash) => (hash, true),
            None => (&self.dummy_hash, false),
        }
    }
}

impl fmt::Debug for Htpasswd {
    // Hashes are secrets too (they can be attacked offline): list only the users.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Htpasswd")
            .field("users", &self.hashes.keys().collect::<Vec<_>>())
            .field("disabled", &self.disabled.iter().map(|d| &d.user).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn check_user_name(user: &str) -> Result<(), LineProblem> {
    if user.is_empty() {
        return Err((
            "empty user name".to_string(),
            "expected `user:hash` with a user name before ':'",
        ));
    }
    if user.chars().any(char::is_control) {
        return Err((
            format!("user name {user:?} contains a control character"),
            "expected a user name without control characters",
        ));
    }
    if user != user.trim() {
        return Err((
            format!("user name {user:?} starts or ends with whitespace"),
            "expected the user name at the start of the line, directly followed by ':'",
        ));
    }
    if user == "anonymous" {
        return Err((
            "user name \"anonymous\" is reserved for requests without credentials".to_string(),
            "expected a different user name",
        ));
    }
    Ok(())
}

/// A name no login can send is a user who can never log in.
fn check_login_name(user: &str) -> Result<(), LineProblem> {
    if user.len() > MAX_USER_NAME_BYTES {
        return Err((
            format!(
                "user name {:?}… is {} bytes long, more than the {MAX_USER_NAME_BYTES} a login may send",
                user.chars().take(32).collect::<String>(),
                user.len()
            ),
            "expected a shorter user name",
        ));
    }
    Ok(())
}

/// Checks that `hash` is a bcrypt hash that `bcrypt::verify` will accept, and returns its cost.
/// Error messages describe the hash's scheme but never quote it: it could be a plain password.
fn check_bcrypt_hash(user: &str, hash: &str) -> Result<u32, LineProblem> {
    if hash.is_empty() {
        return Err((format!("user {user:?} has an empty password hash"), EXPECTED_BCRYPT));
    }
    let Some(after_prefix) = ["$2y$", "$2b$", "$2a$"]
        .iter()
        .find_map(|prefix| hash.strip_prefix(prefix))
    else {
        return Err((
            format!(
                "user {user:?} has a password hash of an unsupported scheme: {}",
                describe_scheme(hash)
            ),
            EXPECTED_BCRYPT,
        ));
    };
    let malformed = |detail: String| {
        (
            format!("the password hash of user {user:?} is not a well-formed bcrypt hash: {detail}"),
            EXPECTED_BCRYPT,
        )
    };
    let Some((cost_digits, salt_and_hash)) = after_prefix.split_once('$') else {
        return Err(malformed("no '$' after the cost".to_string()));
    };
    let two_digits = cost_digits.len() == 2 && cost_digits.bytes().all(|b| b.is_ascii_digit());
    let cost = match cost_digits.parse::<u32>() {
        Ok(cost) if two_digits && (4..=31).contains(&cost) => cost,
        _ => return Err(malformed("the cost must be two digits from 04 to 31".to_string())),
    };
    if salt_and_hash.contains(':') {
        return Err(malformed(
            "a ':' follows the hash (extra fields are not supported)".to_string(),
        ));
    }
    let length = salt_and_hash.chars().count();
    if length != 53 {
        return Err(malformed(format!(
            "expected 53 characters of salt and hash after the cost, found {length}"
        )));
    }
    if !salt_and_hash
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'/')
    {
        return Err(malformed(
            "salt and hash may only contain the characters ./A-Za-z0-9".to_string(),
        ));
    }
    let (salt, digest) = salt_and_hash.split_at(22);
    let decodes_to = |text: &str, length: usize| BCRYPT_BASE64.decode(text).is_ok_and(|bytes| bytes.len() == length);
    if !decodes_to(salt, 16) || !decodes_to(digest, 23) {
        return Err(malformed(
            "the salt or the hash does not decode (wrong last character)".to_string(),
        ));
    }
    Ok(cost)
}

fn describe_scheme(hash: &str) -> &'static str {
    const CRYPT_PREFIXES: [(&str, &str); 7] = [
        ("{SHA}", "SHA-1 ({SHA}, from `htpasswd -s`)"),
        (
            "$apr1$",
            "Apache MD5 ($apr1$, the `htpasswd` default; use `htpasswd -B`)",
        ),
        ("$1$", "MD5-crypt ($1$)"),
        ("$5$", "SHA-256-crypt ($5$)"),
        ("$6$", "SHA-512-crypt ($6$)"),
        ("$2x$", "bcrypt $2x$ (the variant for a historic bug)"),
        ("$argon2", "Argon2"),
    ];
    if let Some((_, name)) = CRYPT_PREFIXES.iter().find(|(prefix, _)| hash.starts_with(prefix)) {
        return name;
    }
    let crypt_alphabet = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'/';
    if hash.starts_with('$') {
        "an unknown crypt scheme"
    } else if hash.len() == 13 && hash.bytes().all(crypt_alphabet) {
        "DES crypt (from `htpasswd -d`) or a plain-text password"
    } else {
        "a plain-text password or an unknown scheme"
    }
}

/// A syntactically valid bcrypt hash built from random bytes: verifying any password against it
/// costs one full bcrypt of `cost` and fails (a match would need a 2^-184 coincidence). Building
/// it costs nothing, unlike hashing a dummy password.
fn random_unmatchable_bcrypt_hash(cost: u32) -> String {
    let mut salt = [0u8; 16];
    let mut digest = [0u8; 23];
    rand::thread_rng().fill_bytes(&mut salt);
    rand::thread_rng().fill_bytes(&mut digest);
    format!(
        "$2b${cost:02}${}{}",
        BCRYPT_BASE64.encode(salt),
        BCRYPT_BASE64.encode(digest)
    )
}

// ---------------------------------------------------------------------------------------------
// Authorization header
// ---------------------------------------------------------------------------------------------

/// The credentials a request carries.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Anonymous,
    Basic { user: String, password: String },
    Bearer(String),
}

impl fmt::Debug for Credentials {
    // Debug output ends up in logs: never print a password or a token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { user, .. } => f
                .debug_struct("Basic")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// Why an `Authorization` header was refused. Messages never quote the credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthHeaderError {
    #[error("Authorization header is {length} bytes long, more than the {max} accepted")]
    TooLong { length: usize, max: usize },
    #[error("Authorization header has no credentials after the {scheme} scheme")]
    MissingCredentials { scheme: &'static str },
    #[error("Authorization scheme {scheme} is not supported, expected Basic or Bearer")]
    UnsupportedScheme { scheme: &'static str },
    #[error("Basic credentials are not valid base64")]
    InvalidBase64,
    #[error("Basic credentials are not valid UTF-8")]
    NotUtf8,
    #[error("Basic credentials have no ':' between user name and password")]
    MissingColon,
    #[error("Basic credentials have a password but an empty user name")]
    EmptyUser,
    #[error("Basic credentials have a control character in the user name")]
    ControlCharacterInUser,
    #[error("Bearer token has characters outside the token68 syntax")]
    InvalidBearerToken,
}

/// Parses an `Authorization` header value (`None` when the header is absent).
///
/// A missing or empty header, and Basic credentials with both user and password empty (`Og==`,
/// which podman and skopeo send), are anonymous. Anything not understood is an error, which the
/// caller turns into a deny.
pub fn parse_authorization(value: Option<&[u8]>) -> Result<Credentials, AuthHeaderError> {
    let Some(value) = value else {
        return Ok(Credentials::Anonymous);
    };
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(AuthHeaderError::TooLong {
            length: value.len(),
            max: MAX_AUTHORIZATION_LEN,
        });
    }
    let value = value.trim_ascii();
    // nginx drops headers set to an empty value, but a proxy in between may not: an empty header
    // carries no credentials, and anonymous is the least privilege there is.
    if value.is_empty() {
        return Ok(Credentials::Anonymous);
    }
    let (scheme, credentials) = match value.iter().position(|byte| *byte == b' ') {
        Some(space) => (&value[..space], value[space..].trim_ascii_start()),
        None => (value, &[][..]),
    };
    if scheme.eq_ignore_ascii_case(b"basic") {
        parse_basic(credentials)
    } else if scheme.eq_ignore_ascii_case(b"bearer") {
        parse_bearer(credentials)
    } else {
        Err(AuthHeaderError::UnsupportedScheme {
            scheme: name_of_other_scheme(scheme),
        })
    }
}

fn parse_basic(encoded: &[u8]) -> Result<Credentials, AuthHeaderError> {
    if encoded.is_empty() {
        return Err(AuthHeaderError::MissingCredentials { scheme: "Basic" });
    }
    let decoded = BASIC_BASE64
        .decode(encoded)
        .map_err(|_| AuthHeaderError::InvalidBase64)?;
    let decoded = String::from_utf8(decoded).map_err(|_| AuthHeaderError::NotUtf8)?;
    let Some((user, password)) = decoded.split_once(':') else {
        return Err(AuthHeaderError::MissingColon);
    };
    if user.is_empty() {
        return if password.is_empty() {
            Ok(Credentials::Anonymous)
        } else {
            Err(AuthHeaderError::EmptyUser)
        };
    }
    // The user name ends up in logs and in the X-Auth-User header.
    if user.chars().any(char::is_control) {
        return Err(AuthHeaderError::ControlCharacterInUser);
    }
    Ok(Credentials::Basic {
        user: user.to_string(),
        password: password.to_string(),
    })
}

fn parse_bearer(token: &[u8]) -> Result<Credentials, AuthHeaderError> {
    if token.is_empty() {
        return Err(AuthHeaderError::MissingCredentials { scheme: "Bearer" });
    }
    // token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let body_length = token.len() - token.iter().rev().take_while(|b| **b == b'=').count();
    let (body, _padding) = token.split_at(body_length);
    let token68 = |byte: &u8| byte.is_ascii_alphanumeric() || b"-._~+/".contains(byte);
    if body.is_empty() || !body.iter().all(token68) {
        return Err(AuthHeaderError::InvalidBearerToken);
    }
    match std::str::from_utf8(token) {
        Ok(token) => Ok(Credentials::Bearer(token.to_string())),
        Err(_) => Err(AuthHeaderError::InvalidBearerToken),
    }
}

/// Names a refused scheme for the error message only if it is a well-known one: a client that
/// forgot the scheme would otherwise have its base64 credentials copied into the logs.
fn name_of_other_scheme(scheme: &[u8]) -> &'static str {
    const KNOWN: [&str; 9] = [
        "Digest",
        "Negotiate",
        "NTLM",
        "Token",
        "HOBA",
        "Mutual",
        "SCRAM-SHA-1",
        "SCRAM-SHA-256",
        "AWS4-HMAC-SHA256",
    ];
    KNOWN
        .iter()
        .find(|known| scheme.eq_ignore_ascii_case(known.as_bytes()))
        .copied()
        .unwrap_or("(unrecognised)")
}

// ---------------------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------------------

type HmacSha256 = Hmac<Sha256>;
type CacheKey = [u8; 32];

/// What became of a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    /// The password is right.
    Accepted,
    /// A wrong password, or a user who is unknown or disabled (one bcrypt, as for any check).
    Refused,
    /// A user name longer than [`MAX_USER_NAME_BYTES`]: refused before anything was stored.
    NameTooLong,
    /// Too many failed logins: refused without checking the password.
    Limited(LimitKind),
    /// Not checked, the bcrypt queue being full or this check having waited until its deadline.
    Overloaded(Overload),
}

impl Login {
    pub fn is_accepted(self) -> bool {
        self == Login::Accepted
    }
}

/// Why a check was answered without a bcrypt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overload {
    QueueFull,
    Deadline,
}

impl Overload {
    pub fn label(self) -> &'static str {
        match self {
            Overload::QueueFull => "queue_full",
            Overload::Deadline => "deadline",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Overload::QueueFull => "the bcrypt queue is full",
            Overload::Deadline => "no bcrypt place came free before the deadline",
        }
    }
}

/// Checks passwords against an [`Htpasswd`], running bcrypt at most once per
/// (user, password, htpasswd entry) while the success stays cached. Share it via `Arc`.
pub struct Verifier {
    shared: Arc<VerifierState>,
}

struct VerifierState {
    /// HMAC keyed with a random per-process secret; cloned for every key derivation.
    keyed_mac: HmacSha256,
    successes: Mutex<SuccessCache>,
    /// Checks queued or being computed, so concurrent requests with the same credentials wait for
    /// one bcrypt. Lock order: `in_flight` before `successes` and the throttle's lock.
    in_flight: Mutex<HashMap<CacheKey, Arc<Check>>>,
    bcrypt_permits: Arc<Semaphore>,
    throttle: Option<Arc<LoginThrottle>>,
    queue_deadline: Duration,
    max_queue: usize,
    bcrypt_checks: AtomicU64,
    cache_hits: AtomicU64,
    shared_waits: AtomicU64,
    bcrypt_running: AtomicUsize,
    bcrypt_running_peak: AtomicUsize,
    queued: AtomicUsize,
    abandoned: AtomicU64,
    overloaded: [AtomicU64; 2],
    limited: [AtomicU64; 3],
    long_names: AtomicU64,
}

/// One queued or running check, shared by the requests waiting for it.
struct Check {
    /// `closed()` tells when every waiting request has gone away.
    outcome: watch::Sender<Option<CheckOutcome>>,
    user: String,
    /// Addresses of the requests that asked (the first is the one admitted by the throttle), each
    /// once, so that a failure counts for each, also when they have gone away.
    clients: Mutex<Vec<Option<IpAddr>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckOutcome {
    Verified(bool),
    Deadline,
}

/// Addresses remembered per check; more requests with the same credentials still share it.
const MAX_CLIENTS_PER_CHECK: usize = 64;

impl Verifier {
    /// `cache_capacity` successful checks are remembered (0 disables the cache); at most
    /// `max_concurrent_bcrypt` bcrypt computations run at once (at least 1). No failed-login
    /// limits (see [`Verifier::with_limits`]).
    pub fn new(cache_capacity: usize, max_concurrent_bcrypt: usize) -> Verifier {
        Verifier::with_limits(
            cache_capacity,
            max_concurrent_bcrypt,
            None,
            BCRYPT_QUEUE_DEADLINE,
            MAX_BCRYPT_QUEUE,
        )
    }

    /// As [`Verifier::new`]; a check that needs a bcrypt must first be admitted by `throttle`,
    /// waits at most `queue_deadline` for a bcrypt place, and is refused at once when `max_queue`
    /// checks are waiting already.
    pub fn with_limits(
        cache_capacity: usize,
        max_concurrent_bcrypt: usize,
        throttle: Option<Arc<LoginThrottle>>,
        queue_deadline: Duration,
        max_queue: usize,
    ) -> Verifier {
        let mut secret = [0u8; 64];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        Verifier {
            shared: Arc::new(VerifierState {
                keyed_mac: <HmacSha256 as hmac::digest::KeyInit>::new(&secret.into()),
                successes: Mutex::new(SuccessCache::new(cache_capacity)),
                in_flight: Mutex::new(HashMap::new()),
                bcrypt_permits: Arc::new(Semaphore::new(max_concurrent_bcrypt.max(1))),
                throttle,
                queue_deadline,
                max_queue,
                bcrypt_checks: AtomicU64::new(0),
                cache_hits: AtomicU64::new(0),
                shared_waits: AtomicU64::new(0),
                bcrypt_running: AtomicUsize::new(0),
                bcrypt_running_peak: AtomicUsize::new(0),
                queued: AtomicUsize::new(0),
                abandoned: AtomicU64::new(0),
                overloaded: Default::default(),
                limited: Default::default(),
                long_names: AtomicU64::new(0),
            }),
        }
    }

    /// Whether `password` is `user`'s password ([`Verifier::login`] without a client address).
    pub async fn verify(&self, htpasswd: &Arc<Htpasswd>, user: &str, password: &str) -> bool {
        self.login(htpasswd, user, password, None).await.is_accepted()
    }

    /// Checks `user`'s `password`, sent from `client`. A cached success answers at once; a check
    /// of the same credentials already queued or running is waited for; otherwise, once the
    /// throttle admits it, a new check waits for a bcrypt place on the blocking thread pool. The
    /// throttle learns every outcome, also when the request went away before it.
    pub async fn login(&self, htpasswd: &Arc<Htpasswd>, user: &str, password: &str, client: Option<IpAddr>) -> Login {
        let shared = &self.shared;
        if user.len() > MAX_USER_NAME_BYTES {
            shared.long_names.fetch_add(1, Ordering::Relaxed);
            return Login::NameTooLong;
        }
        let (hash, user_exists) = htpasswd.hash_to_check(user);
        let key = shared.cache_key(user, password, hash);
        let mut outcome = {
            let mut in_flight = lock(&shared.in_flight);
            // Checked under the `in_flight` lock: a finishing computation caches its success
            // before it leaves `in_flight`, so we see one or the other and never run twice.
            if lock(&shared.successes).touch(&key) {
                shared.cache_hits.fetch_add(1, Ordering::Relaxed);
                return if user_exists { Login::Accepted } else { Login::Refused };
            }
            match in_flight.get(&key) {
                Some(check) => {
                    shared.shared_waits.fetch_add(1, Ordering::Relaxed);
                    check.add_client(client);
                    // Subscribed under the lock: an abandoned check leaves `in_flight` under it too.
                    check.outcome.subscribe()
                }
                None => {
                    if let Some(throttle) = &shared.throttle {
                        if let Err(limit) = throttle.admit(user, client) {
                            shared.limited[limit as usize].fetch_add(1, Ordering::Relaxed);
                            return Login::Limited(limit);
                        }
                    }
                    if shared.queued.load(Ordering::SeqCst) >= shared.max_queue {
                        shared.overloaded[Overload::QueueFull as usize].fetch_add(1, Ordering::Relaxed);
                        if let Some(throttle) = &shared.throttle {
                            throttle.give_back(user, client);
                        }
                        return Login::Overloaded(Overload::QueueFull);
                    }
                    let (sender, receiver) = watch::channel(None);
                    let check = Arc::new(Check {
                        outcome: sender,
                        user: user.to_string(),
                        clients: Mutex::new(vec![client]),
                    });
                    in_flight.insert(key, Arc::clone(&check));
                    // Counted here, not in the task: a burst sees its own queue at once.
                    let queued = Queued::new(shared);
                    tokio::spawn(run_check(queued, key, check, password.to_string(), hash.to_string()));
                    receiver
                }
            }
        };
        let published = match outcome.wait_for(Option::is_some).await {
            Ok(published) => *published,
            // The check vanished (runtime shutting down): fail closed.
            Err(_) => None,
        };
        match published {
            Some(CheckOutcome::Verified(true)) if user_exists => Login::Accepted,
            Some(CheckOutcome::Deadline) => Login::Overloaded(Overload::Deadline),
            _ => Login::Refused,
        }
    }

    /// Same as [`Verifier::verify`], computing on the calling thread (for the CLI). Shares the
    /// cache but not the concurrency limit, the queue or the throttle.
    pub fn verify_blocking(&self, htpasswd: &Htpasswd, user: &str, password: &str) -> bool {
        if user.len() > MAX_USER_NAME_BYTES {
            return false;
        }
        let (hash, user_exists) = htpasswd.hash_to_check(user);
        let key = self.shared.cache_key(user, password, hash);
        if lock(&self.shared.successes).touch(&key) {
            self.shared.cache_hits.fetch_add(1, Ordering::Relaxed);
            return user_exists;
        }
        let verified = self.shared.run_bcrypt(password, hash);
        if verified {
            lock(&self.shared.successes).insert(key);
        }
        user_exists && verified
    }

    /// bcrypt computations actually run, including those against the dummy hash.
    pub fn bcrypt_checks(&self) -> u64 {
        self.shared.bcrypt_checks.load(Ordering::Relaxed)
    }

    /// Checks answered from the cache of successes.
    pub fn cache_hits(&self) -> u64 {
        self.shared.cache_hits.load(Ordering::Relaxed)
    }

    /// Checks that waited for an identical check already running instead of starting their own.
    pub fn shared_waits(&self) -> u64 {
        self.shared.shared_waits.load(Ordering::Relaxed)
    }

    /// Successful checks currently remembered.
    pub fn cached_successes(&self) -> usize {
        lock(&self.shared.successes).len()
    }

    /// bcrypt computations running right now.
    pub fn bcrypt_in_progress(&self) -> usize {
        self.shared.bcrypt_running.load(Ordering::Relaxed)
    }

    /// Checks waiting for a bcrypt place right now.
    pub fn queue_length(&self) -> usize {
        self.shared.queued.load(Ordering::SeqCst)
    }

    /// Checks that left the queue without a bcrypt because every request waiting for them went
    /// away.
    pub fn abandoned(&self) -> u64 {
        self.shared.abandoned.load(Ordering::Relaxed)
    }

    /// Checks answered without a bcrypt for `why`.
    pub fn overloaded(&self, why: Overload) -> u64 {
        self.shared.overloaded[why as usize].load(Ordering::Relaxed)
    }

    /// Checks the throttle refused for `limit`.
    pub fn limited(&self, limit: LimitKind) -> u64 {
        self.shared.limited[limit as usize].load(Ordering::Relaxed)
    }

    /// Logins refused for a user name longer than [`MAX_USER_NAME_BYTES`].
    pub fn long_names(&self) -> u64 {
        self.shared.long_names.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("bcrypt_checks", &self.bcrypt_checks())
            .field("cache_hits", &self.cache_hits())
            .field("cached_successes", &self.cached_successes())
            .field("queue_length", &self.queue_length())
            .finish_non_exhaustive()
    }
}

impl VerifierState {
    fn cache_key(&self, user: &str, password: &str, hash: &str) -> CacheKey {
        let mut mac = self.keyed_mac.clone();
        // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
        for part in [user, password, hash] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    fn run_bcrypt(&self, password: &str, hash: &str) -> bool {
        self.bcrypt_checks.fetch_add(1, Ordering::Relaxed);
        let running = self.bcrypt_running.fetch_add(1, Ordering::SeqCst) + 1;
        self.bcrypt_running_peak.fetch_max(running, Ordering::SeqCst);
        let verified = matches!(bcrypt::verify(password, hash), Ok(true));
        self.bcrypt_running.fetch_sub(1, Ordering::SeqCst);
        verified
    }

    /// Removes `check` from `in_flight` if no request waits for it any more. Under the lock that
    /// new waiters subscribe under, so none can join a check that is going away.
    fn abandon_if_unwatched(&self, key: &CacheKey, check: &Arc<Check>) -> bool {
        let mut in_flight = lock(&self.in_flight);
        if check.outcome.receiver_count() > 0 {
            return false;
        }
        if in_flight.get(key).is_some_and(|current| Arc::ptr_eq(current, check)) {
            in_flight.remove(key);
        }
        self.abandoned.fetch_add(1, Ordering::Relaxed);
        true
    }
}

impl Check {
    fn add_client(&self, client: Option<IpAddr>) {
        let mut clients = lock(&self.clients);
        if clients.len() < MAX_CLIENTS_PER_CHECK && !clients.contains(&client) {
            clients.push(client);
        }
    }
}

/// Counts a check as queued until dropped.
struct Queued(Arc<VerifierState>);

impl Queued {
    fn new(shared: &Arc<VerifierState>) -> Queued {
        shared.queued.fetch_add(1, Ordering::SeqCst);
        Queued(Arc::clone(shared))
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits for a bcrypt place, runs one bcrypt for everyone waiting on `key`, caches a success,
/// tells the throttle, then publishes the outcome. Leaves the queue without a bcrypt when every
/// waiting request has gone away, and answers [`CheckOutcome::Deadline`] when no place came free in
/// time.
async fn run_check(queued: Queued, key: CacheKey, check: Arc<Check>, password: String, hash: String) {
    let shared = Arc::clone(&queued.0);
    // Leaves `in_flight` even if this task is dropped midway; waiters then see a closed channel.
    let registration = InFlightRegistration {
        shared: Arc::clone(&shared),
        key,
        check: Arc::clone(&check),
    };
    let acquire = Arc::clone(&shared.bcrypt_permits).acquire_owned();
    let deadline = tokio::time::sleep(shared.queue_deadline);
    tokio::pin!(acquire, deadline);
    let permit = loop {
        tokio::select! {
            biased;
            permit = &mut acquire => match permit {
                Ok(permit) => break permit,
                Err(_closed) => {
                    drop(registration);
                    check.outcome.send_replace(Some(CheckOutcome::Verified(false)));
                    return;
                }
            },
            () = check.outcome.closed() => {
                if shared.abandon_if_unwatched(&key, &check) {
                    return;
                }
                // Someone joined as the last one left: keep the place in the queue.
            }
            () = &mut deadline => {
                shared.overloaded[Overload::Deadline as usize].fetch_add(1, Ordering::Relaxed);
                // No bcrypt ran: the admitted request's checks are given back.
                if let (Some(throttle), Some(client)) = (&shared.throttle, lock(&check.clients).first().copied()) {
                    throttle.give_back(&check.user, client);
                }
                drop(registration);
                check.outcome.send_replace(Some(CheckOutcome::Deadline));
                return;
            }
        }
    };
    drop(queued);
    // The place came free after the last request left, before this task noticed.
    if shared.abandon_if_unwatched(&key, &check) {
        return;
    }
    let worker = Arc::clone(&shared);
    let verified = tokio::task::spawn_blocking(move || {
        // The permit lives as long as the computation, even if this task is dropped.
        let _permit = permit;
        worker.run_bcrypt(&password, &hash)
    })
    .await
    .unwrap_or(false);
    if verified {
        lock(&shared.successes).insert(key);
    }
    if let Some(throttle) = &shared.throttle {
        let clients = lock(&check.clients).clone();
        for client in clients {
            if verified {
                throttle.record_success(&check.user, client);
            } else {
                throttle.record_failure(&check.user, client);
            }
        }
    }
    drop(registration);
    check.outcome.send_replace(Some(CheckOutcome::Verified(verified)));
}

struct InFlightRegistration {
    shared: Arc<VerifierState>,
    key: CacheKey,
    check: Arc<Check>,
}

impl Drop for InFlightRegistration {
    fn drop(&mut self) {
        let mut in_flight = lock(&self.shared.in_flight);
        // A newer check of the same credentials may have taken the key since this one left.
        if in_flight
            .get(&self.key)
            .is_some_and(|current| Arc::ptr_eq(current, &self.check))
        {
            in_flight.remove(&self.key);
        }
    }
}

/// Bounded set of successful-check keys, evicting the least recently used.
struct SuccessCache {
    capacity: usize,
    last_use: HashMap<CacheKey, u64>,
    by_last_use: BTreeMap<u64, CacheKey>,
    clock: u64,
}

impl SuccessCache {
    fn new(capacity: usize) -> SuccessCache {
        SuccessCache {
            capacity,
            last_use: HashMap::new(),
            by_last_use: BTreeMap::new(),
            clock: 0,
        }
    }

    fn len(&self) -> usize {
        self.last_use.len()
    }

    /// Whether `key` is cached; if so it becomes the most recently used.
    fn touch(&mut self, key: &CacheKey) -> bool {
        let Some(used) = self.last_use.get_mut(key) else {
            return false;
        };
        self.by_last_use.remove(used);
        self.clock += 1;
        *used = self.clock;
        self.by_last_use.insert(self.clock, *key);
        true
    }

    fn insert(&mut self, key: CacheKey) {
        if self.capacity == 0 || self.touch(&key) {
            return;
        }
        while self.last_use.len() >= self.capacity {
            match self.by_last_use.pop_first() {
                Some((_, oldest)) => {
                    self.last_use.remove(&oldest);
                }
                // The two maps disagree (only after a panic mid-update): start afresh rather
                // than grow past the bound.
                None => self.last_use.clear(),
            }
        }
        self.clock += 1;
        self.last_use.insert(key, self.clock);
        self.by_last_use.insert(self.clock, key);
    }
}

/// A panic elsewhere must not turn every later login into a panic; the guarded data stays
/// consistent enough (a cache and a set of running checks) to keep using.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by `htpasswd -nbB -C 4 carol 's3cret:with colon'` (apache2-utils).
    const APACHE_CAROL: &str = "carol:$2y$04$DWsZRUDKbFKGJpHiB.x6ZurNFGhVgWC72ZapO7HbgaU/xFUrtB2nO";
    const CAROL_PASSWORD: &str = "s3cret:with colon";
    /// Written by `htpasswd -nbB -C 5 dave 'pässwörd'` in a UTF-8 locale.
    const APACHE_DAVE: &str = "dave:$2y$05$Ewh2fHPm5E885YiZG91U7eLlgAeUdrJLacEiFuLAd8cSAiZRwutKG";
    const DAVE_PASSWORD: &str = "pässwörd";

    fn cost4(password: &str) -> String {
        match bcrypt::hash(password, 4) {
            Ok(hash) => hash,
            Err(error) => panic!("bcrypt::hash failed: {error}"),
        }
    }

    fn htpasswd(text: &str) -> Arc<Htpasswd> {
        match Htpasswd::parse("test.htpasswd", text) {
            Ok(parsed) => Arc::new(parsed),
            Err(error) => panic!("{error}"),
        }
    }

    fn parse_error(text: &str) -> String {
        match Htpasswd::parse("users.htpasswd", text) {
            Ok(parsed) => panic!("accepted {text:?}: {parsed:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn parses_users_comments_blank_lines_and_crlf() {
        let alice = cost4("alice-pw");
        let bob = cost4("bob-pw").replacen("$2b$", "$2a$", 1);
        let text = format!(
            "\u{feff}# team accounts\r\n\r\nalice:{alice}\r\n   # indented comment\n{APACHE_CAROL}  \n\t\nbob:{bob}\n{APACHE_DAVE}"
        );
        let parsed = htpasswd(&text);
        assert_eq!(parsed.len(), 4);
        assert!(!parsed.is_empty());
        assert_eq!(parsed.users().collect::<Vec<_>>(), ["alice", "bob", "carol", "dave"]);
        assert!(parsed.contains("carol"));
        assert!(!parsed.contains("anonymous"));
        assert!(!parsed.contains("Alice"));
        let verifier = Verifier::new(16, 2);
        assert!(verifier.verify_blocking(&parsed, "alice", "alice-pw"));
        assert!(verifier.verify_blocking(&parsed, "bob", "bob-pw"));
        assert!(verifier.verify_blocking(&parsed, "carol", CAROL_PASSWORD));
        assert!(verifier.verify_blocking(&parsed, "dave", DAVE_PASSWORD));
        assert!(!verifier.verify_blocking(&parsed, "carol", "s3cret"));
    }

    #[test]
    fn empty_file_and_empty_htpasswd_have_no_users() {
        for parsed in [htpasswd(""), htpasswd("# nothing\n\n"), Arc::new(Htpasswd::empty())] {
            assert_eq!(parsed.len(), 0);
            assert!(parsed.is_empty());
            assert_eq!(parsed.users().count(), 0);
            assert!(parsed.dummy_hash.starts_with("$2b$10$"));
        }
    }

    #[test]
    fn a_bad_hash_disables_its_user_and_the_rest_of_the_file_loads() {
        let text = format!(
            "alice:{}\nerin:$apr1$yk3TsPJK$v/TBpvFFLLK8VcNLgNCTI/\nfrank:{{SHA}}5en6G6MezRroT3XKqkdPOmY/BfQ=\n{APACHE_CAROL}\n",
            cost4("alice-pw")
        );
        let parsed = htpasswd(&text);
        assert_eq!(parsed.users().collect::<Vec<_>>(), ["alice", "carol"]);
        let disabled: Vec<(&str, usize)> = parsed.disabled().iter().map(|d| (d.user.as_str(), d.line)).collect();
        assert_eq!(disabled, [("erin", 2), ("frank", 3)]);
        let verifier = Verifier::new(8, 1);
        assert!(verifier.verify_blocking(&parsed, "alice", "alice-pw"));
        assert!(verifier.verify_blocking(&parsed, "carol", CAROL_PASSWORD));
        assert!(!verifier.verify_blocking(&parsed, "erin", "anything"));
        // A disabled user costs the same bcrypt as an unknown one, and has no refresh binding.
        assert_eq!(verifier.bcrypt_checks(), 3);
        assert_eq!(parsed.entry_fingerprint("erin"), None);
        // The hash is never quoted, not even in the Debug output.
        let shown = format!("{parsed:?} {}", parsed.disabled()[1]);
        assert!(!shown.contains("5en6G6") && !shown.contains("yk3TsPJK"), "{shown}");
    }

    #[test]
    fn errors_never_quote_the_hash() {
        let disabled_message = |text: &str| match htpasswd(text).disabled() {
            [user] => user.to_string(),
            other => panic!("{other:?}"),
        };
        let message = disabled_message("plain:MySecretPassword\n");
        assert!(!message.contains("MySecretPassword"), "{message}");
        let message = disabled_message("sha:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n");
        assert!(!message.contains("5en6G6"), "{message}");
        let message = parse_error("sha:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\nsha:MySecretPassword\n");
        assert!(
            !message.contains("5en6G6") && !message.contains("MySecret"),
            "{message}"
        );
    }

    #[test]
    fn load_reports_missing_file_and_bad_utf8_with_the_path() {
        let directory = match tempfile::tempdir() {
            Ok(directory) => directory,
            Err(error) => panic!("{error}"),
        };
        let missing = directory.path().join("missing.htpasswd");
        match Htpasswd::load(&missing) {
            Err(error @ HtpasswdError::Io { .. }) => {
                assert!(error.to_string().contains("missing.htpasswd"), "{error}")
            }
            other => panic!("{other:?}"),
        }
        let latin1 = directory.path().join("latin1.htpasswd");
        let mut bytes = format!("{APACHE_CAROL}\n# comment\n").into_bytes();
        bytes.extend_from_slice(b"j\xe9r\xf4me:x\n");
        if let Err(error) = std::fs::write(&latin1, bytes) {
            panic!("{error}");
        }
        let message = match Htpasswd::load(&latin1) {
            Err(error) => error.to_string(),
            Ok(parsed) => panic!("accepted {parsed:?}"),
        };
        assert!(message.contains("latin1.htpasswd:3: "), "{message}");
        assert!(message.contains("UTF-8"), "{message}");

        let good = directory.path().join("good.htpasswd");
        if let Err(error) = std::fs::write(&good, format!("{APACHE_CAROL}\n")) {
            panic!("{error}");
        }
        match Htpasswd::load(&good) {
            Ok(parsed) => assert_eq!(parsed.users().collect::<Vec<_>>(), ["carol"]),
            Err(error) => panic!("{error}"),
        }
    }

    #[test]
    fn dummy_hash_uses_the_most_common_cost_and_never_matches() {
        let four = cost4("x");
        let five = match bcrypt::hash("x", 5) {
            Ok(hash) => hash,
            Err(error) => panic!("{error}"),
        };
        let parsed = htpasswd(&format!("a:{four}\nb:{five}\nc:{four}\n"));
        assert!(parsed.dummy_hash.starts_with("$2b$04$"), "{}", parsed.dummy_hash);
        // A tie goes to the higher cost.
        let parsed = htpasswd(&format!("a:{four}\nb:{five}\n"));
        assert!(parsed.dummy_hash.starts_with("$2b$05$"), "{}", parsed.dummy_hash);
        // It is valid for bcrypt (an error would make unknown users fast) and matches nothing.
        assert!(check_bcrypt_hash("dummy", &parsed.dummy_hash).is_ok());
        assert!(matches!(bcrypt::verify("", &parsed.dummy_hash), Ok(false)));
        assert!(matches!(bcrypt::verify("x", &parsed.dummy_hash), Ok(false)));
        assert_ne!(parsed.dummy_hash, htpasswd(&format!("a:{four}\n")).dummy_hash);
    }

    #[test]
    fn authorization_rejects_non_utf8_and_overlong_headers() {
        let mut latin1 = b"Basic ".to_vec();
        latin1.extend_from_slice(BASIC_BASE64.encode(b"j\xe9r\xf4me:pw").as_bytes());
        assert_eq!(parse_authorization(Some(&latin1)), Err(AuthHeaderError::NotUtf8));
        assert_eq!(
            parse_authorization(Some(b"Basic \xff\xfe")),
            Err(AuthHeaderError::InvalidBase64)
        );
        assert_eq!(
            parse_authorization(Some(b"Bearer abc\xff")),
            Err(AuthHeaderError::InvalidBearerToken)
        );

        let user_and_password = format!("alice:{}", "p".repeat(6000));
        let header = format!("Basic {}", BASIC_BASE64.encode(&user_and_password));
        assert!(header.len() <= MAX_AUTHORIZATION_LEN);
        assert!(matches!(
            parse_authorization(Some(header.as_bytes())),
            Ok(Credentials::Basic { .. })
        ));
        let too_long = format!("Bearer {}", "a".repeat(MAX_AUTHORIZATION_LEN));
        assert_eq!(
            parse_authorization(Some(too_long.as_bytes())),
            Err(AuthHeaderError::TooLong {
                length: MAX_AUTHORIZATION_LEN + 7,
                max: MAX_AUTHORIZATION_LEN
            })
        );
    }

    #[test]
    fn debug_output_and_errors_hide_secrets() {
        let basic = Credentials::Basic {
            user: "alice".into(),
            password: "hunter2".into(),
        };
        let bearer = Credentials::Bearer("tok3n".into());
        let shown = format!("{basic:?} {bearer:?}");
        assert!(shown.contains("alice"), "{shown}");
        assert!(!shown.contains("hunter2") && !shown.contains("tok3n"), "{shown}");
        let error = parse_authorization(Some(b"YWxpY2U6aHVudGVyMg=="));
        let shown = format!(
            "{error:?} {}",
            error.clone().err().map(|e| e.to_string()).unwrap_or_default()
        );
        assert!(!shown.contains("YWxp"), "{shown}");
        let parsed = htpasswd(&format!("{APACHE_CAROL}\n"));
        assert!(!format!("{parsed:?}").contains("$2y$"));
    }

    fn new_runtime() -> tokio::runtime::Runtime {
        match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => panic!("{error}"),
        }
    }

    #[test]
    fn concurrent_identical_checks_run_one_bcrypt_then_hit_the_cache() {
        new_runtime().block_on(async {
            let users = htpasswd(&format!("alice:{}\n", cost4("alice-pw")));
            let verifier = Arc::new(Verifier::new(64, 4));
            let mut checks = Vec::new();
            for _ in 0..100 {
                let verifier = Arc::clone(&verifier);
                let users = Arc::clone(&users);
                checks.push(tokio::spawn(async move {
                    verifier.verify(&users, "alice", "alice-pw").await
                }));
            }
            for check in checks {
                assert!(matches!(check.await, Ok(true)));
            }
            assert_eq!(verifier.bcrypt_checks(), 1);
            assert_eq!(verifier.cache_hits() + verifier.shared_waits(), 99);
            assert!(verifier.verify(&users, "alice", "alice-pw").await);
            assert_eq!(verifier.bcrypt_checks(), 1);
            assert_eq!(verifier.cache_hits() + verifier.shared_waits(), 100);
            assert_eq!(verifier.cached_successes(), 1);
            assert_eq!(verifier.bcrypt_in_progress(), 0);
        });
    }

    #[test]
    fn wrong_passwords_and_unknown_users_cost_a_bcrypt_every_time() {
        new_runtime().block_on(async {
            let users = htpasswd(&format!("alice:{}\n", cost4("alice-pw")));
            let verifier = Verifier::new(64, 4);
            for attempt in 1..=3 {
                assert!(!verifier.verify(&users, "alice", "wrong").await);
                assert_eq!(verifier.bcrypt_checks(), attempt);
            }
            for attempt in 4..=6 {
                assert!(!verifier.verify(&users, "mallory", "alice-pw").await);
                assert_eq!(verifier.bcrypt_checks(), attempt);
            }
            // Same for reserved and odd names, which never exist.
            assert!(!verifier.verify(&users, "anonymous", "").await);
            assert!(!verifier.verify(&users, "", "").await);
            assert_eq!(verifier.bcrypt_checks(), 8);
            assert_eq!(verifier.cache_hits(), 0);
            assert_eq!(verifier.cached_successes(), 0);
            // Passwords differing past bcrypt's 72 bytes are the same password, as in Apache.
            assert!(verifier.verify(&users, "alice", "alice-pw").await);
            assert!(!verifier.verify(&users, "alice", "alice-pw ").await);
            assert!(!verifier.verify(&users, "alice", "alice-p").await);
        });
    }

    #[test]
    fn a_changed_entry_invalidates_its_cached_success() {
        new_runtime().block_on(async {
            let verifier = Verifier::new(64, 4);
            let before = htpasswd(&format!("alice:{}\n{APACHE_CAROL}\n", cost4("old-pw")));
            assert!(verifier.verify(&before, "alice", "old-pw").await);
            assert!(verifier.verify(&before, "carol", CAROL_PASSWORD).await);
            assert_eq!(verifier.bcrypt_checks(), 2);

            // Same password, new salt: a new bcrypt, even though the answer is the same.
            let rehashed = htpasswd(&format!("alice:{}\n{APACHE_CAROL}\n", cost4("old-pw")));
            assert!(verifier.verify(&rehashed, "alice", "old-pw").await);
            assert_eq!(verifier.bcrypt_checks(), 3);
            // carol's entry did not change: still cached.
            assert!(verifier.verify(&rehashed, "carol", CAROL_PASSWORD).await);
            assert_eq!(verifier.bcrypt_checks(), 3);

            // New password: the old one fails at once, and costs a bcrypt.
            let changed = htpasswd(&format!("alice:{}\n", cost4("new-pw")));
            assert!(!verifier.verify(&changed, "alice", "old-pw").await);
            assert_eq!(verifier.bcrypt_checks(), 4);
            assert!(verifier.verify(&changed, "alice", "new-pw").await);
            // Removed user: the cached success does not apply.
            assert!(!verifier.verify(&changed, "carol", CAROL_PASSWORD).await);
            assert_eq!(verifier.bcrypt_checks(), 6);
        });
    }

    #[test]
    fn cache_never_grows_past_capacity_and_keeps_recent_entries() {
        let verifier = Verifier::new(3, 1);
        let mut text = String::new();
        for user in ["u0", "u1", "u2", "u3", "u4"] {
            text.push_str(&format!("{user}:{}\n", cost4(user)));
        }
        let users = htpasswd(&text);
        for user in ["u0", "u1", "u2"] {
            assert!(verifier.verify_blocking(&users, user, user));
        }
        assert_eq!(verifier.cached_successes(), 3);
        // u0 becomes the most recently used, so u1 is the one evicted next.
        assert!(verifier.verify_blocking(&users, "u0", "u0"));
        assert_eq!(verifier.cache_hits(), 1);
        for user in ["u3", "u4"] {
            assert!(verifier.verify_blocking(&users, user, user));
            assert_eq!(verifier.cached_successes(), 3);
        }
        let checks = verifier.bcrypt_checks();
        assert!(verifier.verify_blocking(&users, "u0", "u0"));
        assert_eq!(verifier.bcrypt_checks(), checks);
        assert!(verifier.verify_blocking(&users, "u1", "u1"));
        assert_eq!(verifier.bcrypt_checks(), checks + 1);
        assert_eq!(verifier.cached_successes(), 3);
    }

    #[test]
    fn zero_capacity_disables_the_cache() {
        let verifier = Verifier::new(0, 1);
        let users = htpasswd(&format!("alice:{}\n", cost4("pw")));
        assert!(verifier.verify_blocking(&users, "alice", "pw"));
        assert!(verifier.verify_blocking(&users, "alice", "pw"));
        assert_eq!(verifier.bcrypt_checks(), 2);
        assert_eq!(verifier.cached_successes(), 0);
    }

    #[test]
    fn blocking_and_async_checks_share_the_cache() {
        new_runtime().block_on(async {
            let users = htpasswd(&format!("{APACHE_DAVE}\n"));
            let verifier = Verifier::new(8, 2);
            assert!(verifier.verify_blocking(&users, "dave", DAVE_PASSWORD));
            assert!(verifier.verify(&users, "dave", DAVE_PASSWORD).await);
            assert_eq!(verifier.bcrypt_checks(), 1);
            assert_eq!(verifier.cache_hits(), 1);
        });
    }

    #[test]
    fn concurrent_bcrypt_is_capped() {
        new_runtime().block_on(async {
            let cost8 = match bcrypt::hash("pw", 8) {
                Ok(hash) => hash,
                Err(error) => panic!("{error}"),
            };
            let users = htpasswd(&format!("alice:{cost8}\n"));
            let verifier = Arc::new(Verifier::new(8, 2));
            let mut checks = Vec::new();
            for attempt in 0..8 {
                let verifier = Arc::clone(&verifier);
                let users = Arc::clone(&users);
                checks.push(tokio::spawn(async move {
                    verifier.verify(&users, "alice", &format!("wrong{attempt}")).await
                }));
            }
            for check in checks {
                assert!(matches!(check.await, Ok(false)));
            }
            assert_eq!(verifier.bcrypt_checks(), 8);
            let peak = verifier.shared.bcrypt_running_peak.load(Ordering::SeqCst);
            assert!((1..=2).contains(&peak), "peak {peak}");
        });
    }

    /// Yields to the runtime until `condition` holds; fails after 20 s.
    async fn until(what: &str, condition: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !condition() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// A hash whose bcrypt keeps the only bcrypt place busy while a test queues checks behind it.
    fn slow_hash(password: &str) -> String {
        match bcrypt::hash(password, 11) {
            Ok(hash) => hash,
            Err(error) => panic!("{error}"),
        }
    }

    const CLIENT: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7)));
    const OTHER_CLIENT: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1)));

    fn spawn_login(
        verifier: &Arc<Verifier>,
        users: &Arc<Htpasswd>,
        user: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> tokio::task::JoinHandle<Login> {
        let (verifier, users) = (Arc::clone(verifier), Arc::clone(users));
        let (user, password) = (user.to_string(), password.to_string());
        tokio::spawn(async move { verifier.login(&users, &user, &password, client).await })
    }

    #[test]
    fn checks_every_request_abandoned_leave_the_queue_without_a_bcrypt() {
        new_runtime().block_on(async {
            let users = htpasswd(&format!("slow:{}\n", slow_hash("slow-pw")));
            let verifier = Arc::new(Verifier::new(8, 1));
            let busy = spawn_login(&verifier, &users, "slow", "wrong", None);
            until("the slow check to run", || verifier.bcrypt_in_progress() == 1).await;
            // Requests queue behind it, then their clients hang up (hyper drops their futures).
            let waiting: Vec<_> = (0..20)
                .map(|i| spawn_login(&verifier, &users, &format!("ghost{i}"), "x", None))
                .collect();
            until("20 checks queued", || verifier.queue_length() == 20).await;
            for request in &waiting {
                request.abort();
            }
            until("the queue to empty", || verifier.queue_length() == 0).await;
            assert_eq!(verifier.abandoned(), 20);
            assert!(matches!(busy.await, Ok(Login::Refused)));
            assert_eq!(verifier.bcrypt_checks(), 1, "no abandoned check ran");
            until("in_flight to empty", || lock(&verifier.shared.in_flight).is_empty()).await;
        });
    }

    #[test]
    fn a_check_kept_by_one_request_survives_the_other_leaving() {
        new_runtime().block_on(async {
            let users = htpasswd(&format!("slow:{}\nalice:{}\n", slow_hash("slow-pw"), cost4("pw")));
            let verifier = Arc::new(Verifier::new(8, 1));
            let busy = spawn_login(&verifier, &users, "slow", "wrong", None);
            until("the slow check to run", || verifier.bcrypt_in_progress() == 1).await;
            let first = spawn_login(&verifier, &users, "alice", "pw", CLIENT);
            until("alice's check queued", || verifier.queue_length() == 1).await;
            let second = spawn_login(&verifier, &users, "alice", "pw", OTHER_CLIENT);
            until("the second request to join", || verifier.shared_waits() == 1).await;
            first.abort();
            assert!(matches!(second.await, Ok(Login::Accepted)));
            assert!(matches!(busy.await, Ok(Login::Refused)));
            assert_eq!((verifier.bcrypt_checks(), verifier.abandoned()), (2, 0));
        });
    }

    #[test]
    fn a_check_still_waiting_at_its_deadline_is_answered_without_a_bcrypt() {
        new_runtime().block_on(async {
            let users = htpasswd(&format!("slow:{}\nalice:{}\n", slow_hash("slow-pw"), cost4("pw")));
            let throttle = Arc::new(LoginThrottle::new(100));
            let verifier = Arc::new(Verifier::with_limits(
                8,
                1,
                Some(Arc::clone(&throttle)),
                Duration::from_millis(50),
                MAX_BCRYPT_QUEUE,
            ));
            let busy = spawn_login(&verifier, &users, "slow", "wrong", None);
            until("the slow check to run", || verifier.bcrypt_in_progress() == 1).await;
            let entries = throttle.tracked_entries();
            let late = verifier.login(&users, "alice", "pw", CLIENT).await;
            assert_eq!(late, Login::Overloaded(Overload::Deadline));
            assert_eq!(verifier.overloaded(Overload::Deadline), 1);
            // No guess was made: the throttle got its checks back.
            assert_eq!(throttle.tracked_entries(), entries);
            assert!(matches!(busy.await, Ok(Login::Refused)));
            assert_eq!(verifier.bcrypt_checks(), 1);
            assert_eq!(verifier.queue_length(), 0);
        });
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        new_runtime().block_on(async {
            let users = htpasswd(&format!("slow:{}\n", slow_hash("slow-pw")));
            let verifier = Arc::new(Verifier::with_limits(8, 1, None, BCRYPT_QUEUE_DEADLINE, 2));
            let busy = spawn_login(&verifier, &users, "slow", "wrong", None);
            until("the slow check to run", || verifier.bcrypt_in_progress() == 1).await;
            let queued: Vec<_> = (0..2)
                .map(|i| spawn_login(&verifier, &users, &format!("ghost{i}"), "x", None))
                .collect();
            until("2 checks queued", || verifier.queue_length() == 2).await;
            let refused = verifier.login(&users, "ghost9", "x", None).await;
            assert_eq!(refused, Login::Overloaded(Overload::QueueFull));
            assert_eq!(verifier.overloaded(Overload::QueueFull), 1);
            for request in queued {
                assert!(matches!(request.await, Ok(Login::Refused)));
            }
            assert!(matches!(busy.await, Ok(Login::Refused)));
            assert_eq!(verifier.bcrypt_checks(), 3);
        });
    }

    #[test]
    fn long_user_names_are_refused_before_anything_is_stored() {
        new_runtime().block_on(async {
            let users = htpasswd(&format!("alice:{}\n", cost4("pw")));
            let throttle = Arc::new(LoginThrottle::new(100));
            let verifier = Verifier::with_limits(8, 1, Some(Arc::clone(&throttle)), BCRYPT_QUEUE_DEADLINE, 8);
            for length in [MAX_USER_NAME_BYTES + 1, 6000, 100_000] {
                let name = "n".repeat(length);
                assert_eq!(verifier.login(&users, &name, "pw", CLIENT).await, Login::NameTooLong);
                assert!(!verifier.verify_blocking(&users, &name, "pw"));
            }
            assert_eq!(verifier.long_names(), 3);
            assert_eq!((verifier.bcrypt_checks(), throttle.tracked_entries()), (0, 0));
            assert!(lock(&verifier.shared.in_flight).is_empty());
            // 256 bytes is a name like any other.
            let name = "n".repeat(MAX_USER_NAME_BYTES);
            assert_eq!(verifier.login(&users, &name, "pw", CLIENT).await, Login::Refused);
            assert_eq!(verifier.bcrypt_checks(), 1);
            assert!(throttle.tracked_entries() > 0);
        });
    }

    #[test]
    fn the_throttle_refuses_guesses_before_their_bcrypt_but_not_cached_logins() {
        new_runtime().block_on(async {
            let users = htpasswd(&format!("alice:{}\n", cost4("pw")));
            let throttle = Arc::new(LoginThrottle::new(100));
            let verifier = Verifier::with_limits(8, 1, Some(Arc::clone(&throttle)), BCRYPT_QUEUE_DEADLINE, 8);
            let mut outcomes = Vec::new();
            for guess in 0..10 {
                outcomes.push(verifier.login(&users, "alice", &format!("guess{guess}"), CLIENT).await);
            }
            let burst = crate::throttle::PER_ADDRESS_AND_USER.burst as usize;
            assert!(outcomes[..burst].iter().all(|o| *o == Login::Refused), "{outcomes:?}");
            assert!(
                outcomes[burst..]
                    .iter()
                    .all(|o| *o == Login::Limited(LimitKind::AddressAndUser)),
                "{outcomes:?}"
            );
            assert_eq!(verifier.bcrypt_checks(), burst as u64);
            assert_eq!(verifier.limited(LimitKind::AddressAndUser), 10 - burst as u64);
            assert!(throttle.delay("alice", CLIENT) > Duration::ZERO);
            // The real alice elsewhere gets in; after that, so does her cached login from the
            // guessing address.
            assert_eq!(
                verifier.login(&users, "alice", "pw", OTHER_CLIENT).await,
                Login::Accepted
            );
            assert_eq!(verifier.login(&users, "alice", "pw", CLIENT).await, Login::Accepted);
            assert_eq!(verifier.bcrypt_checks(), burst as u64 + 1);
        });
    }

    #[test]
    fn a_failure_counts_also_when_its_request_went_away() {
        new_runtime().block_on(async {
            let users = htpasswd(&format!("alice:{}\n", slow_hash("pw")));
            let throttle = Arc::new(LoginThrottle::new(100));
            let verifier = Arc::new(Verifier::with_limits(
                8,
                1,
                Some(Arc::clone(&throttle)),
                BCRYPT_QUEUE_DEADLINE,
                8,
            ));
            for guess in 0..crate::throttle::FREE_FAILURES + 1 {
                let request = spawn_login(&verifier, &users, "alice", &format!("guess{guess}"), CLIENT);
                until("the check to run", || verifier.bcrypt_in_progress() == 1).await;
                request.abort();
                until("the check to end", || verifier.bcrypt_in_progress() == 0).await;
                until("in_flight to empty", || lock(&verifier.shared.in_flight).is_empty()).await;
            }
            assert_eq!(verifier.bcrypt_checks(), 4);
            assert_eq!(throttle.delay("alice", CLIENT), crate::throttle::FIRST_DELAY);
        });
    }

    #[test]
    fn shared_types_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Verifier>();
        assert_send_sync::<Htpasswd>();
        assert_send_sync::<Credentials>();
    }
}
