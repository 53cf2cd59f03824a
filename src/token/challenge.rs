//! `WWW-Authenticate` challenges and the JSON error bodies of the token realm.

use serde_json::json;

use super::{Scope, TokenSettings};

/// `WWW-Authenticate` value:
/// `Bearer realm="…",service="…"[,scope="…"][,error="…"]`. Quotes and
/// backslashes are escaped; control characters (CR, LF, …) are dropped, so
/// the result is always a valid header value.
pub(crate) fn challenge(settings: &TokenSettings, scope: Option<&Scope>, error: Option<&str>) -> String {
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
pub(crate) fn error_json(code: &str, message: &str) -> String {
    json!({"errors": [{"code": code, "message": message, "detail": null}]}).to_string()
}

/// OAuth2 error body for `POST /token` (RFC 6749 section 5.2) that also holds
/// the distribution `errors` list, so OAuth clients and the docker client both
/// understand it: `{"error":…,"error_description":…,"errors":[…]}`.
pub(crate) fn oauth_error_json(oauth_error: &str, description: &str) -> String {
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
