//! The `Authorization` header: Basic credentials, a Bearer token, or none.

use std::fmt;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;

/// The longest `Authorization` header value accepted; longer ones are rejected before decoding.
pub const MAX_AUTHORIZATION_LEN: usize = 8 * 1024;

/// RFC 7617 Basic credentials: standard base64; clients disagree about padding, so accept both.
const BASIC_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::fixtures::*;

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
}
