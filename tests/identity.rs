//! htpasswd files and `Authorization` headers, driven by the cases in
//! `tests/data/htpasswd_errors.txt` and `tests/data/authorization.txt`.

use csel_auth::identity::{parse_authorization, Credentials, Htpasswd, Verifier};

use crate::kit::bcrypt_hash;
use crate::kit::cases::{unescape, unescape_text, CaseFile};

/// `<error|disabled>|<line number>|<fragment of the message>|<file>`, the file with `\n`, `\r`,
/// `\t` and `\xNN` escapes; `HASH` stands for a valid cost-4 hash. Every message names
/// `users.htpasswd:<line>: ` and what was expected.
#[test]
fn htpasswd_errors_name_file_line_and_expectation() {
    let valid_hash = bcrypt_hash("pw");
    let (mut errors, mut disabled) = (0, 0);
    CaseFile::read("htpasswd_errors.txt").check_all(40, |case| {
        let mut fields = case.line.splitn(4, '|');
        let (Some(outcome), Some(line), Some(fragment), Some(file)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err("expected `<error|disabled>|<line>|<fragment>|<file>`".to_string());
        };
        let text = unescape_text(file)?.replace("HASH", &valid_hash);
        let message = match outcome {
            "error" => {
                errors += 1;
                match Htpasswd::parse("users.htpasswd", &text) {
                    Ok(parsed) => return Err(format!("accepted: {parsed:?}")),
                    Err(error) => error.to_string(),
                }
            }
            "disabled" => {
                disabled += 1;
                let parsed = Htpasswd::parse("users.htpasswd", &text)
                    .map_err(|error| format!("refused the whole file: {error}"))?;
                let [user] = parsed.disabled() else {
                    return Err(format!("disabled {:?}", parsed.disabled()));
                };
                if user.line.to_string() != line {
                    return Err(format!("disabled on line {}", user.line));
                }
                if parsed.contains(&user.user) || !parsed.is_disabled(&user.user) {
                    return Err(format!("{} is not (only) disabled", user.user));
                }
                if Verifier::new(4, 1).verify_blocking(&parsed, &user.user, "pw") {
                    return Err(format!("{} logged in", user.user));
                }
                // The other users of the file are in force.
                for other in text.lines().filter_map(|l| l.split_once(':')).map(|(u, _)| u) {
                    if other != user.user && !parsed.contains(other) {
                        return Err(format!("{other} lost"));
                    }
                }
                let message = user.to_string();
                if !message.contains(" is disabled") {
                    return Err(format!("gave {message:?}"));
                }
                message
            }
            other => return Err(format!("unknown outcome {other:?}")),
        };
        let prefix = format!("users.htpasswd:{line}: ");
        if message.starts_with(&prefix) && message.contains(fragment) && message.contains(", expected ") {
            Ok(())
        } else {
            Err(format!("gave {message:?}"))
        }
    });
    assert!(errors >= 15 && disabled >= 25, "only {errors} + {disabled} cases");
}

/// `<expected> <= <header value>`: `anonymous`, `basic "<user>" "<password>"`,
/// `bearer "<token>"` or `error <Debug of the error>` (ending in `..`: a prefix); `<missing>` is
/// no header, `<empty>` an empty one.
#[test]
fn authorization_header_cases() {
    CaseFile::read("authorization.txt").check_all(25, |case| {
        let Some((expected, header)) = case.line.split_once(" <= ") else {
            return Err("expected `<expected> <= <header value>`".to_string());
        };
        let header = match header {
            "<missing>" => None,
            "<empty>" => Some(Vec::new()),
            header => Some(unescape(header)?),
        };
        let actual = match parse_authorization(header.as_deref()) {
            Ok(Credentials::Anonymous) => "anonymous".to_string(),
            Ok(Credentials::Basic { user, password }) => format!("basic {user:?} {password:?}"),
            Ok(Credentials::Bearer(token)) => format!("bearer {token:?}"),
            Err(error) => format!("error {error:?}"),
        };
        let expected = expected.trim_end();
        let matches = match expected.strip_suffix("..") {
            Some(prefix) => actual.starts_with(prefix),
            None => actual == expected,
        };
        if matches {
            Ok(())
        } else {
            Err(format!("gave {actual}"))
        }
    });
}
