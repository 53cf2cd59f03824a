//! Access keys: long random secrets for CI jobs and robots, each owned by one user, with an
//! expiry and optionally a narrower scope than its owner's.
//!
//! The keys file (format in `format`) holds one line per key and never a secret: only the
//! SHA-256 of it, so the file can be reviewed in git beside the rules. `csel-auth access-key
//! create` prints the secret once and appends the line; `revoke` removes it (`command`, with
//! the file handling in `file`).
//!
//! A secret is `csk_<id>_<random>` (`secret`): the prefix tells a key from a password, the id
//! finds the key's line at once, and checking it costs one SHA-256 — microseconds, where a
//! bcrypt password costs tens of milliseconds — so key logins need no cache.
//!
//! Wiring, for the login path: load the file with [`AccessKeys::load`] (or
//! [`AccessKeys::parse`] from a reload; the value is immutable, share it in an `Arc` and
//! replace it whole, like `Htpasswd`). For Basic credentials `(user, password)` call
//! [`AccessKeys::verify`] with the current time on every request:
//! [`KeyCheck::NotAKey`] — the password is not a key, try the other identity sources;
//! [`KeyCheck::Refused`] — 401, and no other source may accept this password;
//! [`KeyCheck::Valid`] — the user is the key's owner, and a request is allowed when the rules
//! allow the owner AND [`KeyScope::allows`] the action and request. Count logins with
//! [`KeyLogins::record`] and render them on `/metrics` with [`KeyLogins::render`].

mod command;
mod file;
mod format;
mod logins;
mod secret;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

pub use command::{check_keys_file, run as run_access_key_command, AccessKeyArgs};
pub use format::{check_owner, format_time, parse_time, MAX_OWNER_BYTES};
pub use logins::{KeyLogins, KeyUse};
pub use secret::{check_id, MAX_ID_CHARS, SECRET_PREFIX};

use crate::csel::{Expression, Facts};
use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::rules::{Action, ActionSet};

/// The largest keys file read (the reload's bound for every watched file).
pub const MAX_KEYS_BYTES: u64 = crate::rules::MAX_RULES_BYTES;

/// Whether a password is meant as an access key (it has the key prefix). Such a password is
/// never checked against another identity source.
pub fn is_access_key(password: &str) -> bool {
    password.starts_with(SECRET_PREFIX)
}

/// When a key stops working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Allowed in the file, and warned about by `check`.
    Never,
    At(SystemTime),
}

impl Expiry {
    /// Whether the key no longer works at `now` (it works until just before its expiry time).
    pub fn is_past(&self, now: SystemTime) -> bool {
        match self {
            Expiry::Never => false,
            Expiry::At(when) => now >= *when,
        }
    }
}

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expiry::Never => f.write_str("never"),
            Expiry::At(when) => f.write_str(&format_time(*when)),
        }
    }
}

/// What a key may be used for, on top of what the rules allow its owner.
#[derive(Debug, Clone)]
pub struct KeyScope {
    /// Every action when the line names none.
    pub actions: ActionSet,
    /// Requests the key is limited to, evaluated like a grant's target (with the owner as
    /// `user`); any request when absent.
    pub on: Option<Expression>,
    /// `actions=` and `on=(…)` as written, for listing.
    action_words: Option<String>,
    on_text: Option<String>,
}

impl KeyScope {
    fn new(actions: Option<(ActionSet, String)>, on: Option<(Expression, String)>) -> KeyScope {
        let every = ActionSet::from_word("*").unwrap_or_default();
        let (actions, action_words) = match actions {
            Some((set, words)) => (set, Some(words)),
            None => (every, None),
        };
        let (on, on_text) = match on {
            Some((expression, text)) => (Some(expression), Some(text)),
            None => (None, None),
        };
        KeyScope {
            actions,
            on,
            action_words,
            on_text,
        }
    }

    /// Whether the key may be used for `action` on the request of `facts` (whose `user` is
    /// the key's owner). The rules must allow the owner too: this only narrows.
    pub fn allows(&self, action: Action, facts: &Facts) -> bool {
        self.actions.contains(action) && self.on.as_ref().is_none_or(|on| on.matches(facts))
    }

    /// Whether the key can do whatever its owner can.
    pub fn is_unrestricted(&self) -> bool {
        self.action_words.is_none() && self.on.is_none()
    }

    /// The action words as written (`pull,push`), `*` when the line names none.
    pub fn actions_text(&self) -> &str {
        self.action_words.as_deref().unwrap_or("*")
    }

    /// The `on` expression as written.
    pub fn on_text(&self) -> Option<&str> {
        self.on_text.as_deref()
    }
}

impl fmt::Display for KeyScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "actions={}", self.actions_text())?;
        if let Some(on) = self.on_text() {
            write!(f, " on=({on})")?;
        }
        Ok(())
    }
}

/// One key of the file.
pub struct Key {
    pub id: String,
    /// The user the key logs in as; the `-u` name given with it must be this one.
    pub owner: String,
    pub created: SystemTime,
    pub expires: Expiry,
    pub scope: KeyScope,
    pub description: Option<String>,
    /// Line of the file.
    pub line: usize,
    hash: secret::SecretHash,
}

impl Key {
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires.is_past(now)
    }
}

/// Without the hash: there is no reason to print it.
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("created", &format_time(self.created))
            .field("expires", &self.expires.to_string())
            .field("scope", &self.scope.to_string())
            .field("description", &self.description)
            .field("line", &self.line)
            .finish()
    }
}

/// The outcome of [`AccessKeys::verify`].
#[derive(Debug)]
pub enum KeyCheck<'a> {
    /// The password does not start with `csk_`: not a key; ask the other identity sources.
    NotAKey,
    /// The right secret of an unexpired key, given with its owner's name.
    Valid(&'a Key),
    /// A key that does not log in (answer 401). `key` is the file's key the secret names,
    /// when there is one: its id may be logged.
    Refused { reason: Refusal, key: Option<&'a Key> },
}

/// Why a key was refused, for logs (never for the client, which only sees 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Starts with `csk_` but is not `csk_<id>_<random>` of a sensible length.
    Malformed,
    /// No key of the file has the id the secret names (never created, or revoked).
    UnknownId,
    WrongSecret,
    /// The right secret, given with another user's name.
    OtherOwner,
    /// The right secret of a key whose expiry has passed.
    Expired,
}

impl Refusal {
    /// A short label, for metrics and structured logs.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::UnknownId => "unknown_id",
            Refusal::WrongSecret => "wrong_secret",
            Refusal::OtherOwner => "other_owner",
            Refusal::Expired => "expired",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Malformed => "not the shape of an access key (csk_<id>_<random>)",
            Refusal::UnknownId => "no access key has this id (never created, or revoked)",
            Refusal::WrongSecret => "wrong secret for this access key",
            Refusal::OtherOwner => "the access key belongs to another user",
            Refusal::Expired => "the access key has expired",
        })
    }
}

/// Something `check` points out in a keys file that loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyWarning {
    pub line: usize,
    pub id: String,
    pub message: String,
}

impl fmt::Display for KeyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "warning: line {}: {}", self.line, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the access keys file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("the access keys file {path} is {size} bytes; the limit is {limit} bytes")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Keys created this far ahead of the clock are warned about: the clock or the file is wrong.
const FUTURE_SLACK: Duration = Duration::from_secs(5 * 60);

/// The keys of one keys file. Immutable once loaded; a reload builds a new one, so share it
/// behind an `Arc`.
pub struct AccessKeys {
    source_name: String,
    keys: Vec<Key>,
    by_id: HashMap<String, usize>,
}

impl fmt::Debug for AccessKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessKeys")
            .field("source_name", &self.source_name)
            .field("keys", &self.keys)
            .finish()
    }
}

impl AccessKeys {
    /// Parses and validates a keys file's text; `file_name` is used in error messages. Every
    /// bad line is reported (up to 50), with its line and column.
    pub fn parse(file_name: &str, text: &str) -> Result<AccessKeys, Diagnostics> {
        let keys = format::parse_file(file_name, text)?;
        let by_id = keys.iter().enumerate().map(|(i, k)| (k.id.clone(), i)).collect();
        Ok(AccessKeys {
            source_name: file_name.to_string(),
            keys,
            by_id,
        })
    }

    /// Reads and parses a keys file (at most [`MAX_KEYS_BYTES`]).
    pub fn load(path: &Path) -> Result<AccessKeys, LoadError> {
        let shown = path.display().to_string();
        let bytes = crate::files::read_bounded(path, MAX_KEYS_BYTES).map_err(|e| match e {
            crate::files::ReadError::Io(source) => LoadError::Io {
                path: shown.clone(),
                source,
            },
            crate::files::ReadError::TooLarge(size) => LoadError::TooLarge {
                path: shown.clone(),
                size,
                limit: MAX_KEYS_BYTES,
            },
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let offset = e.utf8_error().valid_up_to();
            let valid = String::from_utf8_lossy(&e.as_bytes()[..offset]).into_owned();
            LoadError::Invalid(
                Diagnostic::at(
                    &shown,
                    &valid,
                    offset,
                    offset,
                    "the access keys file is not valid UTF-8 here",
                )
                .into(),
            )
        })?;
        AccessKeys::parse(&shown, &text).map_err(LoadError::Invalid)
    }

    /// No keys: every key is refused as unknown.
    pub fn empty() -> AccessKeys {
        AccessKeys {
            source_name: "<no access keys>".into(),
            keys: Vec::new(),
            by_id: HashMap::new(),
        }
    }

    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// The keys, in the order of the file.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    pub fn get(&self, id: &str) -> Option<&Key> {
        self.by_id.get(id).map(|i| &self.keys[*i])
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks Basic credentials against the keys: is `secret` the secret of an unexpired key
    /// owned by `user`, at `now`? One SHA-256 and one lookup. The secret is hashed before the
    /// id is looked up, so an unknown id costs the same as a wrong secret; the owner and the
    /// expiry are told apart only once the secret is right.
    pub fn verify(&self, user: &str, secret: &str, now: SystemTime) -> KeyCheck<'_> {
        if !is_access_key(secret) {
            return KeyCheck::NotAKey;
        }
        let refused = |reason, key| KeyCheck::Refused { reason, key };
        if secret.len() > secret::MAX_SECRET_BYTES {
            return refused(Refusal::Malformed, None);
        }
        let Some(id) = secret::id_of(secret) else {
            return refused(Refusal::Malformed, None);
        };
        let presented = secret::hash(secret);
        let Some(key) = self.get(id) else {
            return refused(Refusal::UnknownId, None);
        };
        if !secret::same_hash(&presented, &key.hash) {
            return refused(Refusal::WrongSecret, Some(key));
        }
        if key.owner != user {
            return refused(Refusal::OtherOwner, Some(key));
        }
        if key.is_expired(now) {
            return refused(Refusal::Expired, Some(key));
        }
        KeyCheck::Valid(key)
    }

    /// What `check` points out: expired keys (refused, and better removed), keys that never
    /// expire, and keys created in the future.
    pub fn warnings(&self, now: SystemTime) -> Vec<KeyWarning> {
        let mut warnings = Vec::new();
        for key in &self.keys {
            let mut warn = |message: String| {
                warnings.push(KeyWarning {
                    line: key.line,
                    id: key.id.clone(),
                    message,
                })
            };
            match key.expires {
                Expiry::At(when) if when <= now => warn(format!(
                    "key `{}` of `{}` expired at {}: it is refused; remove it with `csel-auth access-key revoke \
                     --id {}`",
                    key.id,
                    key.owner,
                    format_time(when),
                    key.id
                )),
                Expiry::Never => warn(format!(
                    "key `{}` of `{}` never expires: a leaked secret works until it is revoked; give keys an \
                     expiry and replace them before it",
                    key.id, key.owner
                )),
                Expiry::At(_) => {}
            }
            if key.created > now + FUTURE_SLACK {
                warn(format!(
                    "key `{}` was created at {}, in the future: is this machine's clock right?",
                    key.id,
                    format_time(key.created)
                ));
            }
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATED: &str = "2026-11-29T05:00:00Z";
    const EXPIRES: &str = "2027-02-27T05:00:00Z";

    fn file_with(secret: &str, id: &str, owner: &str, fields: &str) -> AccessKeys {
        let text = format!(
            "key {id} user={owner} created={CREATED} expires={EXPIRES} {fields} sha256={}\n",
            secret::to_hex(&secret::hash(secret))
        );
        AccessKeys::parse("keys", &text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn at(text: &str) -> SystemTime {
        parse_time(text).unwrap()
    }

    fn reason(check: KeyCheck) -> Option<Refusal> {
        match check {
            KeyCheck::Refused { reason, .. } => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn verify_tells_every_case_apart() {
        let secret = secret::generate("ci-1");
        let keys = file_with(&secret, "ci-1", "ci-bot", "");
        let now = at("2027-01-01T00:00:00Z");
        assert!(matches!(keys.verify("ci-bot", &secret, now), KeyCheck::Valid(k) if k.id == "ci-1"));
        assert!(matches!(keys.verify("ci-bot", "hunter2", now), KeyCheck::NotAKey));
        let mut wrong = secret.clone();
        wrong.pop();
        wrong.push(if secret.ends_with('a') { 'b' } else { 'a' });
        assert_eq!(reason(keys.verify("ci-bot", &wrong, now)), Some(Refusal::WrongSecret));
        assert_eq!(reason(keys.verify("alice", &secret, now)), Some(Refusal::OtherOwner));
        // The owner is told apart only with the right secret.
        assert_eq!(reason(keys.verify("alice", &wrong, now)), Some(Refusal::WrongSecret));
        let other_id = secret.replacen("ci-1", "ci-2", 1);
        assert_eq!(reason(keys.verify("ci-bot", &other_id, now)), Some(Refusal::UnknownId));
        for malformed in ["csk_", "csk_nounderscore", &format!("{secret}{}", "x".repeat(200))] {
            assert_eq!(
                reason(keys.verify("ci-bot", malformed, now)),
                Some(Refusal::Malformed),
                "{malformed}"
            );
        }
    }

    #[test]
    fn expiry_is_checked_at_every_call() {
        let secret = secret::generate("k");
        let keys = file_with(&secret, "k", "ci", "");
        let expiry = at(EXPIRES);
        assert!(matches!(
            keys.verify("ci", &secret, expiry - Duration::from_secs(1)),
            KeyCheck::Valid(_)
        ));
        assert_eq!(reason(keys.verify("ci", &secret, expiry)), Some(Refusal::Expired));
        assert_eq!(
            reason(keys.verify("ci", &secret, expiry + Duration::from_secs(86_400))),
            Some(Refusal::Expired)
        );
    }

    #[test]
    fn scope_narrows_actions_and_requests() {
        let secret = secret::generate("k");
        let keys = file_with(&secret, "k", "ci", "actions=pull on=(path =^ \"/v2/${user}/\")");
        let key = keys.get("k").unwrap();
        let facts = |path| Facts {
            format: "docker",
            path,
            method: "GET",
            user: Some("ci"),
        };
        assert!(key.scope.allows(Action::Read, &facts("/v2/ci/app/manifests/1")));
        assert!(!key.scope.allows(Action::Edit, &facts("/v2/ci/app/manifests/1")));
        assert!(!key.scope.allows(Action::Read, &facts("/v2/other/app/manifests/1")));
        assert!(!key.scope.is_unrestricted());
        assert_eq!(key.scope.to_string(), "actions=pull on=(path =^ \"/v2/${user}/\")");

        let open = file_with(&secret, "k", "ci", "");
        let key = open.get("k").unwrap();
        assert!(key.scope.is_unrestricted());
        for action in Action::ALL {
            assert!(key.scope.allows(action, &facts("/v2/anything")));
        }
        let push = file_with(&secret, "k", "ci", "actions=push");
        let key = push.get("k").unwrap();
        assert!(key.scope.allows(Action::Add, &facts("/v2/x")));
        assert!(!key.scope.allows(Action::Delete, &facts("/v2/x")));
    }

    #[test]
    fn warnings_name_expired_and_endless_keys() {
        let h = secret::to_hex(&secret::hash("x"));
        let text = format!(
            "key old user=a created={CREATED} expires={EXPIRES} sha256={h}\n\
             key forever user=b created={CREATED} expires=never sha256={h}\n\
             key fine user=c created={CREATED} expires=2030-01-01T00:00:00Z sha256={h}\n\
             key ahead user=d created=2029-01-01T00:00:00Z expires=2030-01-01T00:00:00Z sha256={h}\n"
        );
        let keys = AccessKeys::parse("keys", &text).unwrap();
        let warnings = keys.warnings(at("2028-01-01T00:00:00Z"));
        let shown: Vec<String> = warnings.iter().map(ToString::to_string).collect();
        assert_eq!(warnings.len(), 3, "{shown:#?}");
        assert!(shown[0].starts_with("warning: line 1: key `old` of `a` expired at 2027-02-27T05:00:00Z"));
        assert!(shown[1].starts_with("warning: line 2: key `forever` of `b` never expires"));
        assert!(shown[2].starts_with("warning: line 4: key `ahead` was created at 2029-01-01T00:00:00Z, in the future"));
    }

    #[test]
    fn debug_output_has_no_hash() {
        let secret = secret::generate("k");
        let keys = file_with(&secret, "k", "ci", "");
        let shown = format!("{keys:?}");
        assert!(!shown.contains(&secret::to_hex(&secret::hash(&secret))), "{shown}");
        assert!(shown.contains("\"ci\""), "{shown}");
    }
}
