//! The original request target made canonical: the path decoded once and checked, the query
//! split into decoded pairs.

use super::docker::docker_route;
use super::{Rejection, RequestTarget, MAX_PATH_BYTES, MAX_QUERY_BYTES};
use crate::percent::PercentError;

/// Canonicalizes nginx's `$request_uri` (raw path plus optional `?query`, as the client sent it)
/// for a repository of the given format. Only format `"docker"` gets route recognition.
pub fn canonicalize(original_uri: &str, format: &str) -> Result<RequestTarget, Rejection> {
    if !original_uri.starts_with('/') {
        return Err(Rejection::NotAbsolute);
    }
    if original_uri.contains('#') {
        return Err(Rejection::Fragment);
    }
    let (raw_path, raw_query) = match original_uri.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (original_uri, None),
    };
    if raw_path.len() > MAX_PATH_BYTES {
        return Err(Rejection::PathTooLong);
    }
    let path = decode_path(raw_path)?;
    check_decoded_path(&path)?;
    let query = match raw_query {
        Some(raw) if raw.len() > MAX_QUERY_BYTES => return Err(Rejection::QueryTooLong),
        Some(raw) => parse_query(raw)?,
        None => Vec::new(),
    };
    let docker = if format == "docker" {
        Some(docker_route(&path)?)
    } else {
        None
    };
    Ok(RequestTarget { path, query, docker })
}

/// Decodes `%XX` escapes once. Escapes of `/` and `\` are refused because the registry may or may
/// not decode them before splitting the path, so csel-auth and the registry could disagree on
/// where a segment ends.
fn decode_path(raw: &str) -> Result<String, Rejection> {
    let bytes = crate::percent::decode(raw, false, b"/\\").map_err(percent_rejection)?;
    String::from_utf8(bytes).map_err(|_| Rejection::PathNotUtf8)
}

fn check_decoded_path(path: &str) -> Result<(), Rejection> {
    for c in path.chars() {
        return Err(match c {
            _ if c.is_control() => Rejection::ControlCharacter,
            _ if !c.is_ascii() => Rejection::NonAscii,
            '\\' => Rejection::Backslash,
            ';' => Rejection::PathParameter,
            '%' => Rejection::DoubleEncoding,
            // Only reachable through %3F / %23: a decoded `?` or `#` would make the path read
            // differently wherever it is printed and parsed again.
            '?' | '#' => Rejection::EncodedQueryOrFragment,
            _ => continue,
        });
    }
    if path.contains("//") {
        return Err(Rejection::EmptySegment);
    }
    // Besides `.` and `..`, segments made only of dots and spaces are refused: Windows-backed
    // servers strip trailing dots and spaces, turning `.. ` or `...` into `..`.
    if path
        .split('/')
        .any(|segment| segment.contains('.') && segment.bytes().all(|b| b == b'.' || b == b' '))
    {
        return Err(Rejection::DotSegment);
    }
    Ok(())
}

/// Go's `url.ParseQuery` (Go >= 1.17), made strict: where Go skips a bad pair and reports an
/// error that `FormValue` ignores, we refuse the whole request.
fn parse_query(raw: &str) -> Result<Vec<(String, String)>, Rejection> {
    let mut pairs = Vec::new();
    for pair in raw.split('&') {
        if pair.contains(';') {
            return Err(Rejection::QuerySemicolon);
        }
        if pair.is_empty() {
            continue;
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        pairs.push((query_unescape(key)?, query_unescape(value)?));
    }
    Ok(pairs)
}

fn query_unescape(raw: &str) -> Result<String, Rejection> {
    // `+` is a space, as in Go's `url.QueryUnescape`.
    let bytes = crate::percent::decode(raw, true, b"").map_err(percent_rejection)?;
    String::from_utf8(bytes).map_err(|_| Rejection::QueryNotUtf8)
}

/// Why a percent-decoding failed, for the log line.
fn percent_rejection(error: PercentError) -> Rejection {
    match error {
        PercentError::BadEscape { at } => Rejection::BadPercentEscape { at },
        PercentError::Refused { byte: b'/' } => Rejection::EncodedSlash,
        PercentError::Refused { .. } => Rejection::EncodedBackslash,
    }
}
