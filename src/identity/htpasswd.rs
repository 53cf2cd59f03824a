//! The htpasswd file: users and their bcrypt hashes.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, NO_PAD};
use base64::Engine;
use rand::RngCore;

use super::MAX_USER_NAME_BYTES;

/// The largest htpasswd file read, at start and on reload (about 400 000 users).
pub(crate) const MAX_HTPASSWD_BYTES: u64 = 32 << 20;

/// Cost of the dummy hash when the htpasswd file has no entries to copy it from.
const DEFAULT_DUMMY_COST: u32 = 10;

/// What a bcrypt hash looks like, for error messages.
const EXPECTED_BCRYPT: &str = "expected a bcrypt hash ($2y$, $2b$ or $2a$) as written by `htpasswd -B`";

/// bcrypt's own base64 alphabet, without padding, rejecting non-canonical trailing bits exactly
/// as `bcrypt::verify` does, so a hash accepted at load can always be verified.
const BCRYPT_BASE64: GeneralPurpose = GeneralPurpose::new(&alphabet::BCRYPT, NO_PAD);

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
        let bytes = crate::files::read_bounded(path, MAX_HTPASSWD_BYTES).map_err(|e| HtpasswdError::Io {
            file: file.clone(),
            source: match e {
                crate::files::ReadError::Io(source) => source,
                crate::files::ReadError::TooLarge(size) => {
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
    pub(crate) fn empty() -> Htpasswd {
        Htpasswd {
            hashes: BTreeMap::new(),
            dummy_hash: random_unmatchable_bcrypt_hash(DEFAULT_DUMMY_COST),
            disabled: Vec::new(),
        }
    }

    /// The user names, in sorted order.
    #[cfg(test)]
    fn users(&self) -> impl Iterator<Item = &str> {
        self.hashes.keys().map(String::as_str)
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
        Some(hex::encode(&digest[..12]))
    }

    /// The hash to verify `user`'s password against, and whether the user exists. Unknown users
    /// get the dummy hash so that the work done is the same.
    pub(super) fn hash_to_check(&self, user: &str) -> (&str, bool) {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::identity::fixtures::*;
    use crate::identity::Verifier;

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
}
