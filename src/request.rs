//! Canonicalization of the original request target (nginx's `$request_uri`) and recognition of
//! the docker distribution API routes.
//!
//! Everything here fails closed: a target that could be read in two ways by csel-auth and by the
//! registry behind nginx is rejected, never guessed at. The rules only ever see a `path` that was
//! percent-decoded exactly once and contains no dot segment, no `//`, no backslash, no control or
//! non-ASCII character, no `;` and no `%`, so a prefix test such as `path =^ "/v2/library/"`
//! cannot be escaped by an encoding trick.

use std::fmt;

/// Longest path, in bytes as sent by the client (the decoded path is never longer).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest query string, in bytes as sent. Registry upload URLs carry a signed `_state` of a few
/// hundred bytes; nothing legitimate comes near this.
pub const MAX_QUERY_BYTES: usize = 8192;
/// Longest repository name (distribution's `NameTotalLengthMax`).
pub const MAX_REPOSITORY_NAME_BYTES: usize = 255;
/// Longest tag (the OCI tag grammar allows 1 + 127 characters).
pub const MAX_TAG_BYTES: usize = 128;
/// Longest digest we accept. sha512 needs 135 bytes; the bound only keeps unknown algorithms sane.
pub const MAX_DIGEST_BYTES: usize = 1024;
/// Longest upload session id. Registries use UUIDs (36 bytes); the bound is generous on purpose.
pub const MAX_UPLOAD_SESSION_BYTES: usize = 256;

/// Why a request target was refused: short, meant for the decision log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
}

impl Rejection {
    pub fn new(reason: impl Into<String>) -> Self {
        Rejection { reason: reason.into() }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Rejection {}

/// The original request, canonicalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTarget {
    /// Percent-decoded once and validated: this is what rules see as `path`.
    pub path: String,
    /// Decoded query parameters in the order sent (the query is never part of `path`).
    pub query: Vec<(String, String)>,
    /// Some for format "docker": every docker path must be a known route.
    pub docker: Option<DockerRoute>,
}

/// A route of the docker / OCI distribution API (`/v2/...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerRoute {
    /// `/v2/` exactly. `/v2` (no slash) is rejected: distribution only answers it with a redirect
    /// to `/v2/`, no client pings it, and accepting it would hand rules a second spelling of the
    /// ping (`path == "/v2/"` would not match it).
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    TagsList { name: String },
    /// `/v2/<name>/manifests/<reference>`, the reference being a tag or a digest.
    Manifest { name: String, reference: String },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: String, digest: String },
    /// `/v2/<name>/blobs/uploads/` (with the trailing slash, as distribution routes it)
    BlobUploadStart { name: String },
    /// `/v2/<name>/blobs/uploads/<session>`
    BlobUpload { name: String, session: String },
    /// `/v2/<name>/referrers/<digest>` (OCI distribution 1.1)
    Referrers { name: String, digest: String },
}

impl DockerRoute {
    /// The repository the route addresses; None for the ping and the catalog.
    pub fn repository(&self) -> Option<&str> {
        match self {
            DockerRoute::Base | DockerRoute::Catalog => None,
            DockerRoute::TagsList { name }
            | DockerRoute::Manifest { name, .. }
            | DockerRoute::Blob { name, .. }
            | DockerRoute::BlobUploadStart { name }
            | DockerRoute::BlobUpload { name, .. }
            | DockerRoute::Referrers { name, .. } => Some(name),
        }
    }

    /// A short name of the route kind, for logs and `explain`.
    pub fn kind(&self) -> &'static str {
        match self {
            DockerRoute::Base => "base",
            DockerRoute::Catalog => "catalog",
            DockerRoute::TagsList { .. } => "tags",
            DockerRoute::Manifest { .. } => "manifest",
            DockerRoute::Blob { .. } => "blob",
            DockerRoute::BlobUploadStart { .. } => "upload-start",
            DockerRoute::BlobUpload { .. } => "upload",
            DockerRoute::Referrers { .. } => "referrers",
        }
    }
}

/// A cross-repository blob mount asked for by a blob-upload start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The blob to mount (the `mount` parameter), a valid digest.
    pub digest: String,
    /// The repository it comes from (the `from` parameter), a valid repository name.
    pub from: String,
}

impl Mount {
    /// The path whose `read` permission the mount also needs: `/v2/<from>/blobs/<digest>`.
    pub fn source_blob_path(&self) -> String {
        format!("/v2/{}/blobs/{}", self.from, self.digest)
    }
}

impl RequestTarget {
    /// For a blob-upload start: the cross-repo mount it asks for, if any.
    ///
    /// Err when `mount`, `from` or `digest` appears more than once, when `from` is not a valid
    /// repository name, when `mount` is not a valid digest, when `from` is given without `mount`,
    /// or when `mount` is given without `from`. The registry reads these with Go's `FormValue`
    /// (the first duplicate wins, a form body may override) so any ambiguity fails closed. A
    /// `mount` without `from` is refused because OCI 1.1 lets a registry then pick the source
    /// repository itself, which no `read` check of ours could cover.
    ///
    /// Routes other than a blob-upload start never mount: Ok(None).
    pub fn mount(&self) -> Result<Option<Mount>, Rejection> {
        if !matches!(self.docker, Some(DockerRoute::BlobUploadStart { .. })) {
            return Ok(None);
        }
        let single = |key: &str| -> Result<Option<&str>, Rejection> {
            let mut values = self.query.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str());
            let first = values.next();
            if values.next().is_some() {
                return Err(Rejection::new(format!(
                    "query parameter `{key}` repeated in a blob upload"
                )));
            }
            Ok(first)
        };
        let mount = single("mount")?;
        let from = single("from")?;
        single("digest")?;
        match (mount, from) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(Rejection::new("blob upload has `from` without `mount`")),
            (Some(_), None) => Err(Rejection::new(
                "blob mount without `from` (registry would choose the source repository)",
            )),
            (Some(digest), Some(from)) => {
                if !is_valid_digest(digest) {
                    return Err(Rejection::new("blob mount: `mount` is not a valid digest"));
                }
                if !is_valid_repository_name(from) {
                    return Err(Rejection::new("blob mount: `from` is not a valid repository name"));
                }
                Ok(Some(Mount {
                    digest: digest.to_string(),
                    from: from.to_string(),
                }))
            }
        }
    }
}

/// Canonicalizes nginx's `$request_uri` (raw path plus optional `?query`, as the client sent it)
/// for a repository of the given format. Only format `"docker"` gets route recognition.
pub fn canonicalize(original_uri: &str, format: &str) -> Result<RequestTarget, Rejection> {
    if !original_uri.starts_with('/') {
        return Err(Rejection::new("request target does not start with /"));
    }
    if original_uri.contains('#') {
        return Err(Rejection::new("request target contains a fragment (#)"));
    }
    let (raw_path, raw_query) = match original_uri.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (original_uri, None),
    };
    if raw_path.len() > MAX_PATH_BYTES {
        return Err(Rejection::new(format!("path longer than {MAX_PATH_BYTES} bytes")));
    }
    let path = decode_path(raw_path)?;
    check_decoded_path(&path)?;
    let query = match raw_query {
        Some(raw) if raw.len() > MAX_QUERY_BYTES => {
            return Err(Rejection::new(format!("query longer than {MAX_QUERY_BYTES} bytes")))
        }
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
    let bytes = decode_percent(raw, PercentMode::Path)?;
    String::from_utf8(bytes).map_err(|_| Rejection::new("path is not UTF-8 after decoding"))
}

fn check_decoded_path(path: &str) -> Result<(), Rejection> {
    for c in path.chars() {
        let problem = match c {
            _ if c.is_control() => "a control character",
            _ if !c.is_ascii() => "a non-ASCII character",
            '\\' => "a backslash",
            ';' => "`;` (path parameter)",
            '%' => "`%` after decoding (double encoding)",
            // Only reachable through %3F / %23: a decoded `?` or `#` would make the path read
            // differently wherever it is printed and parsed again.
            '?' | '#' => "an encoded `?` or `#`",
            _ => continue,
        };
        return Err(Rejection::new(format!("path contains {problem}")));
    }
    if path.contains("//") {
        return Err(Rejection::new("path contains an empty segment (//)"));
    }
    // Besides `.` and `..`, segments made only of dots and spaces are refused: Windows-backed
    // servers strip trailing dots and spaces, turning `.. ` or `...` into `..`.
    if path
        .split('/')
        .any(|segment| segment.contains('.') && segment.bytes().all(|b| b == b'.' || b == b' '))
    {
        return Err(Rejection::new("path contains a dot segment"));
    }
    Ok(())
}

/// Go's `url.ParseQuery` (Go >= 1.17), made strict: where Go skips a bad pair and reports an
/// error that `FormValue` ignores, we refuse the whole request.
fn parse_query(raw: &str) -> Result<Vec<(String, String)>, Rejection> {
    let mut pairs = Vec::new();
    for pair in raw.split('&') {
        if pair.contains(';') {
            return Err(Rejection::new("query contains `;`"));
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
    let bytes = decode_percent(raw, PercentMode::Query)?;
    String::from_utf8(bytes).map_err(|_| Rejection::new("query is not UTF-8 after decoding"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PercentMode {
    /// `%2F` and `%5C` are refused: the registry may or may not decode them before splitting the
    /// path, so csel-auth and the registry could disagree on where a segment ends.
    Path,
    /// `+` is a space, as in Go's `url.QueryUnescape`.
    Query,
}

/// Strict percent-decoding: every `%` must start a two-hex-digit escape.
fn decode_percent(raw: &str, mode: PercentMode) -> Result<Vec<u8>, Rejection> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let value = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&hi), Some(&lo)) => hex_pair_value(hi, lo),
                    _ => None,
                };
                let Some(value) = value else {
                    return Err(Rejection::new(format!("invalid percent escape at byte {i}")));
                };
                if mode == PercentMode::Path && matches!(value, b'/' | b'\\') {
                    let escaped = if value == b'/' {
                        "slash (%2F)"
                    } else {
                        "backslash (%5C)"
                    };
                    return Err(Rejection::new(format!("path contains an encoded {escaped}")));
                }
                decoded.push(value);
                i += 3;
            }
            b'+' if mode == PercentMode::Query => {
                decoded.push(b' ');
                i += 1;
            }
            other => {
                decoded.push(other);
                i += 1;
            }
        }
    }
    Ok(decoded)
}

fn hex_pair_value(hi: u8, lo: u8) -> Option<u8> {
    let hi = (hi as char).to_digit(16)?;
    let lo = (lo as char).to_digit(16)?;
    u8::try_from(hi * 16 + lo).ok()
}

/// Recognizes a distribution API route in an already validated path.
///
/// distribution's router (gorilla/mux) matches each route with one anchored regex such as
/// `^/v2/(?P<name>NAME)/manifests/(?P<reference>TAG|DIGEST)$`, the name part greedy. The part
/// after the name never contains `/`, so the anchored match can only end the name right before
/// the route's last fixed segments: the route is decided by the trailing segments and the name
/// is everything before them, even when a name component is itself `manifests`, `blobs`, `tags`
/// … (`/v2/a/manifests/b/manifests/latest` is name `a/manifests/b`, reference `latest`). The
/// trailing patterns are mutually exclusive, so the order of the checks below does not matter.
/// A test compares this with the anchored regexes on generated paths.
///
/// Differences from distribution, all stricter: names follow the OCI grammar (distribution's
/// router also takes a domain-like first component with upper case or a port); redirect-only
/// spellings (`/v2`, `/v2/<name>/blobs/uploads` without the slash, any trailing slash) are
/// refused rather than redirected.
fn docker_route(path: &str) -> Result<DockerRoute, Rejection> {
    let Some(rest) = path.strip_prefix("/v2/") else {
        if path == "/v2" {
            return Err(Rejection::new("docker ping must be /v2/ (with the slash)"));
        }
        return Err(Rejection::new("docker path outside /v2/"));
    };
    match rest {
        "" => return Ok(DockerRoute::Base),
        "_catalog" => return Ok(DockerRoute::Catalog),
        _ => {}
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let route = match segments.as_slice() {
        [name @ .., "tags", "list"] => DockerRoute::TagsList {
            name: repository_name(name)?,
        },
        [name @ .., "manifests", reference] => {
            if !is_valid_tag(reference) && !is_valid_digest(reference) {
                return Err(Rejection::new("manifest reference is neither a tag nor a digest"));
            }
            DockerRoute::Manifest {
                name: repository_name(name)?,
                reference: reference.to_string(),
            }
        }
        [name @ .., "blobs", "uploads", ""] => DockerRoute::BlobUploadStart {
            name: repository_name(name)?,
        },
        [name @ .., "blobs", "uploads", session] => {
            if !is_valid_upload_session(session) {
                return Err(Rejection::new("invalid blob upload session id"));
            }
            DockerRoute::BlobUpload {
                name: repository_name(name)?,
                session: session.to_string(),
            }
        }
        [name @ .., "blobs", digest] => DockerRoute::Blob {
            name: repository_name(name)?,
            digest: valid_digest(digest)?,
        },
        [name @ .., "referrers", digest] => DockerRoute::Referrers {
            name: repository_name(name)?,
            digest: valid_digest(digest)?,
        },
        _ => return Err(Rejection::new("not a docker registry API route")),
    };
    Ok(route)
}

fn repository_name(components: &[&str]) -> Result<String, Rejection> {
    if components.is_empty() {
        return Err(Rejection::new("not a docker registry API route (no repository name)"));
    }
    let name = components.join("/");
    if name.len() > MAX_REPOSITORY_NAME_BYTES {
        return Err(Rejection::new(format!(
            "repository name longer than {MAX_REPOSITORY_NAME_BYTES} bytes"
        )));
    }
    if !is_valid_repository_name(&name) {
        return Err(Rejection::new(
            "repository name outside the OCI grammar (lower-case [a-z0-9] components joined by . _ __ -)",
        ));
    }
    Ok(name)
}

fn valid_digest(digest: &str) -> Result<String, Rejection> {
    if is_valid_digest(digest) {
        Ok(digest.to_string())
    } else {
        Err(Rejection::new("invalid digest"))
    }
}

/// OCI repository name: components `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*` joined by `/`,
/// at most 255 bytes in all.
pub fn is_valid_repository_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_REPOSITORY_NAME_BYTES && name.split('/').all(is_valid_name_component)
}

fn is_valid_name_component(component: &str) -> bool {
    let is_alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !is_alnum(first) || !is_alnum(last) {
        return false;
    }
    // Between alphanumeric runs, each run of other bytes must be one separator.
    bytes
        .split(is_alnum)
        .filter(|run| !run.is_empty())
        .all(|run| matches!(run, b"." | b"_" | b"__") || run.iter().all(|&b| b == b'-'))
}

/// OCI tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    let Some(first) = bytes.first() else {
        return false;
    };
    bytes.len() <= MAX_TAG_BYTES
        && (first.is_ascii_alphanumeric() || *first == b'_')
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// OCI digest: `[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+`; `sha256` must be followed by
/// exactly 64 and `sha512` by exactly 128 lower-case hex digits.
pub fn is_valid_digest(digest: &str) -> bool {
    if digest.len() > MAX_DIGEST_BYTES {
        return false;
    }
    let Some((algorithm, encoded)) = digest.split_once(':') else {
        return false;
    };
    let is_alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let algorithm_ok = !algorithm.is_empty()
        && algorithm
            .as_bytes()
            .split(|b| matches!(b, b'.' | b'+' | b'_' | b'-'))
            .all(|part| !part.is_empty() && part.iter().all(is_alnum));
    let encoded_ok = !encoded.is_empty()
        && encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'));
    let is_lower_hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let length_ok = match algorithm {
        "sha256" => encoded.len() == 64 && is_lower_hex(encoded),
        "sha512" => encoded.len() == 128 && is_lower_hex(encoded),
        _ => true,
    };
    algorithm_ok && encoded_ok && length_ok
}

/// Upload session id as distribution routes it: `[a-zA-Z0-9._=-]+`, at most 256 bytes.
pub fn is_valid_upload_session(session: &str) -> bool {
    !session.is_empty()
        && session.len() <= MAX_UPLOAD_SESSION_BYTES
        && session
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'=' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use regex::Regex;

    #[test]
    fn inputs_the_data_file_cannot_spell() {
        for uri in ["", " /v2/", "\t/v2/", "/v2/\n", "/v2/a\u{0}/manifests/1", "/v2/\u{7f}"] {
            assert!(canonicalize(uri, "docker").is_err(), "{uri:?} accepted");
        }
        for uri in ["/v2/é/manifests/1", "/v2/a\u{ff0e}\u{ff0e}/x", "/files/\u{2215}etc"] {
            let rejection = canonicalize(uri, "raw").err();
            assert!(
                rejection.as_ref().is_some_and(|r| r.reason.contains("non-ASCII")),
                "{uri:?}: {rejection:?}"
            );
        }
        let target = canonicalize("/files/a%20b?q=left+pad&x=%2B%20", "raw");
        assert_eq!(
            target,
            Ok(RequestTarget {
                path: "/files/a b".to_string(),
                query: vec![
                    ("q".to_string(), "left pad".to_string()),
                    ("x".to_string(), "+ ".to_string()),
                ],
                docker: None,
            })
        );
        let target = canonicalize("/v2/a/tags/list?flag&=v&k=", "docker");
        assert_eq!(
            target.map(|t| t.query),
            Ok(vec![
                ("flag".to_string(), String::new()),
                (String::new(), "v".to_string()),
                ("k".to_string(), String::new()),
            ])
        );
    }

    #[test]
    fn repository_of_each_route() {
        let repository = |uri: &str| {
            canonicalize(uri, "docker")
                .ok()
                .and_then(|t| t.docker)
                .and_then(|route| route.repository().map(str::to_string))
        };
        assert_eq!(repository("/v2/"), None);
        assert_eq!(repository("/v2/_catalog"), None);
        assert_eq!(repository("/v2/a/b/tags/list").as_deref(), Some("a/b"));
        assert_eq!(repository("/v2/a/blobs/uploads/").as_deref(), Some("a"));
        assert_eq!(repository("/v2/a/blobs/uploads/u-1").as_deref(), Some("a"));
    }

    #[test]
    fn mount_source_blob_path_is_itself_a_valid_blob_route() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let uri = format!("/v2/team/app/blobs/uploads/?mount={digest}&from=library/alpine");
        let mount = canonicalize(&uri, "docker").and_then(|t| t.mount());
        let Ok(Some(mount)) = mount else {
            panic!("no mount in {uri}: {mount:?}");
        };
        let source = canonicalize(&mount.source_blob_path(), "docker").map(|t| t.docker);
        assert_eq!(
            source,
            Ok(Some(DockerRoute::Blob {
                name: "library/alpine".to_string(),
                digest
            }))
        );
    }

    // ---- independent oracle: the grammars and distribution's anchored route regexes ----

    const COMPONENT: &str = "[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*";
    const TAG: &str = "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}";
    const DIGEST: &str = "[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+";

    fn anchored(pattern: &str) -> Regex {
        Regex::new(&format!("^(?:{pattern})$")).unwrap_or_else(|e| panic!("{pattern}: {e}"))
    }

    fn name_pattern() -> String {
        format!("{COMPONENT}(?:/{COMPONENT})*")
    }

    fn oracle_name(name: &str) -> bool {
        name.len() <= 255 && anchored(&name_pattern()).is_match(name)
    }

    fn oracle_digest(digest: &str) -> bool {
        let sha_ok = match digest.split_once(':') {
            Some(("sha256", hex)) => anchored("[a-f0-9]{64}").is_match(hex),
            Some(("sha512", hex)) => anchored("[a-f0-9]{128}").is_match(hex),
            _ => true,
        };
        digest.len() <= MAX_DIGEST_BYTES && sha_ok && anchored(DIGEST).is_match(digest)
    }

    fn oracle_tag(tag: &str) -> bool {
        anchored(TAG).is_match(tag)
    }

    /// distribution's routes as gorilla/mux compiles them, tried in its registration order.
    fn oracle_route(path: &str) -> Option<DockerRoute> {
        let name = name_pattern();
        let session = "[a-zA-Z0-9._=-]+";
        let capture = |pattern: String| -> Option<Vec<String>> {
            let captures = anchored(&pattern).captures(path)?;
            Some(
                captures
                    .iter()
                    .skip(1)
                    .map(|m| m.map_or(String::new(), |m| m.as_str().to_string()))
                    .collect(),
            )
        };
        let route = if path == "/v2/" {
            DockerRoute::Base
        } else if let Some(c) = capture(format!("/v2/({name})/tags/list")) {
            DockerRoute::TagsList { name: c[0].clone() }
        } else if let Some(c) = capture(format!("/v2/({name})/manifests/({TAG}|{DIGEST})")) {
            if !oracle_tag(&c[1]) && !oracle_digest(&c[1]) {
                return None;
            }
            DockerRoute::Manifest {
                name: c[0].clone(),
                reference: c[1].clone(),
            }
        } else if let Some(c) = capture(format!("/v2/({name})/blobs/({DIGEST})")) {
            if !oracle_digest(&c[1]) {
                return None;
            }
            DockerRoute::Blob {
                name: c[0].clone(),
                digest: c[1].clone(),
            }
        } else if let Some(c) = capture(format!("/v2/({name})/blobs/uploads/")) {
            DockerRoute::BlobUploadStart { name: c[0].clone() }
        } else if let Some(c) = capture(format!("/v2/({name})/blobs/uploads/({session})")) {
            if c[1].len() > MAX_UPLOAD_SESSION_BYTES {
                return None;
            }
            DockerRoute::BlobUpload {
                name: c[0].clone(),
                session: c[1].clone(),
            }
        } else if let Some(c) = capture(format!("/v2/({name})/referrers/({DIGEST})")) {
            if !oracle_digest(&c[1]) {
                return None;
            }
            DockerRoute::Referrers {
                name: c[0].clone(),
                digest: c[1].clone(),
            }
        } else if path == "/v2/_catalog" {
            DockerRoute::Catalog
        } else {
            return None;
        };
        match route.repository() {
            Some(repository) if !oracle_name(repository) => None,
            _ => Some(route),
        }
    }

    /// Paths built from the words that make routing ambiguous, plus hostile pieces: half of them
    /// end in a route's fixed tail so that accepted routes are common.
    fn docker_like_path() -> impl Strategy<Value = String> {
        let sha256 = format!("sha256:{}", "0123456789abcdef".repeat(4));
        let plain: Vec<String> = [
            "v2",
            "a",
            "library",
            "manifests",
            "blobs",
            "uploads",
            "tags",
            "list",
            "referrers",
            "latest",
            "a-b",
            "a__b",
            "1.0",
            "u-u-i-d=",
            "%61",
        ]
        .iter()
        .map(|w| w.to_string())
        .chain([sha256.clone()])
        .collect();
        let odd: Vec<String> = [
            "_catalog",
            "",
            "Latest",
            "a._b",
            "-a",
            ".",
            "..",
            "%2e%2e",
            "a;b",
            "sha256:abc",
        ]
        .iter()
        .map(|w| w.to_string())
        .chain([format!("{sha256}0"), "x".repeat(130)])
        .collect();
        let segment = prop_oneof![
            6 => prop::sample::select(plain),
            1 => prop::sample::select(odd),
        ];
        let tail = prop::sample::select(vec![
            vec![],
            vec!["tags".to_string(), "list".to_string()],
            vec!["manifests".to_string()],
            vec!["blobs".to_string()],
            vec!["blobs".to_string(), "uploads".to_string()],
            vec!["blobs".to_string(), "uploads".to_string(), String::new()],
            vec!["referrers".to_string()],
            vec!["blobs".to_string(), sha256.clone()],
            vec!["referrers".to_string(), sha256.clone()],
        ]);
        (
            prop::collection::vec(segment.clone(), 0..6),
            tail,
            prop::collection::vec(segment, 0..2),
        )
            .prop_map(|(head, tail, last)| {
                let mut path = String::from("/v2");
                for segment in head.iter().chain(&tail).chain(&last) {
                    path.push('/');
                    path.push_str(segment);
                }
                path
            })
    }

    fn hostile_uri() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec![
            "/",
            "/",
            "/",
            ".",
            "..",
            "%2e",
            "%2E",
            "%2f",
            "%2F",
            "%5c",
            "%25",
            "%252e",
            "%00",
            "%0a",
            "%7f",
            "%C2%85",
            "%EF%BC%8E",
            "%E2%88%95",
            "%c3",
            "%",
            "%4",
            "%zz",
            "\\",
            ";",
            "?",
            "#",
            "&",
            "=",
            "+",
            "a",
            "v2",
            "library",
            "manifests",
            "blobs",
            "uploads",
            "mount=",
            "from=",
            " ",
            "\u{0}",
            "é",
            "%3F",
            "%23",
        ]);
        prop::collection::vec(piece, 0..16).prop_map(|pieces| pieces.concat())
    }

    fn assert_canonical(uri: &str, format: &str) -> Result<(), TestCaseError> {
        let Ok(target) = canonicalize(uri, format) else {
            return Ok(());
        };
        let path = &target.path;
        prop_assert!(path.starts_with('/'), "{uri:?} -> {path:?}");
        prop_assert!(path.is_ascii(), "{uri:?} -> {path:?}");
        prop_assert!(!path.contains("//"), "{uri:?} -> {path:?}");
        prop_assert!(!path.contains('\\'), "{uri:?} -> {path:?}");
        prop_assert!(!path.contains('%'), "{uri:?} -> {path:?}");
        prop_assert!(!path.contains(';'), "{uri:?} -> {path:?}");
        prop_assert!(!path.chars().any(char::is_control), "{uri:?} -> {path:?}");
        prop_assert!(!path.split('/').any(|s| s == "." || s == ".."), "{uri:?} -> {path:?}");
        prop_assert!(path.len() <= MAX_PATH_BYTES);
        // Decoding exactly once, as the percent-encoding crate does it.
        let raw_path = uri.split('?').next().unwrap_or_default();
        let once = percent_encoding::percent_decode_str(raw_path).decode_utf8();
        prop_assert_eq!(once.as_deref().ok(), Some(path.as_str()));
        let lower = raw_path.to_ascii_lowercase();
        prop_assert!(!lower.contains("%2f") && !lower.contains("%5c"), "{:?}", uri);
        prop_assert_eq!(target.docker.is_some(), format == "docker");
        if let Some(repository) = target.docker.as_ref().and_then(DockerRoute::repository) {
            prop_assert!(is_valid_repository_name(repository));
            let route_prefix = format!("/v2/{repository}/");
            prop_assert!(path.starts_with(&route_prefix), "{} not under {}", path, route_prefix);
        }
        if let Ok(Some(mount)) = target.mount() {
            prop_assert!(is_valid_digest(&mount.digest) && is_valid_repository_name(&mount.from));
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn never_panics_and_accepts_only_canonical_paths(uri in any::<String>()) {
            assert_canonical(&uri, "docker")?;
            assert_canonical(&uri, "raw")?;
            let rooted = format!("/{uri}");
            assert_canonical(&rooted, "docker")?;
            assert_canonical(&rooted, "maven")?;
        }

        #[test]
        fn hostile_pieces_never_produce_a_non_canonical_path(tail in hostile_uri()) {
            let uri = format!("/{tail}");
            assert_canonical(&uri, "docker")?;
            assert_canonical(&uri, "npm")?;
        }

        #[test]
        fn routes_agree_with_distribution_router_regexes(path in docker_like_path()) {
            // The oracle only models routing; the generic checks are tested elsewhere.
            let ours = canonicalize(&path, "docker").ok().and_then(|t| t.docker);
            match canonicalize(&path, "raw") {
                // The docker checks only add to the generic ones.
                Err(_) => prop_assert_eq!(ours, None, "{}", path),
                Ok(generic) => {
                    let expected = oracle_route(&generic.path);
                    prop_assert_eq!(ours, expected, "{} decoded {}", path, generic.path);
                }
            }
        }

        #[test]
        fn name_validator_agrees_with_grammar(name in "[a-z0-9._/A-]{0,12}") {
            prop_assert_eq!(is_valid_repository_name(&name), oracle_name(&name), "{}", name);
        }

        #[test]
        fn tag_validator_agrees_with_grammar(tag in "[a-zA-Z0-9._:/-]{0,10}|[a-z_]{120,135}") {
            prop_assert_eq!(is_valid_tag(&tag), oracle_tag(&tag), "{}", tag);
        }

        #[test]
        fn digest_validator_agrees_with_grammar(
            digest in "(sha256|sha512|[a-z0-9.+_A-]{0,6}):?:[a-fA-Z0-9=_:-]{0,6}|sha256:[a-f0-9]{63,65}|sha512:[a-f0-9]{127,129}"
        ) {
            prop_assert_eq!(is_valid_digest(&digest), oracle_digest(&digest), "{}", digest);
        }
    }
}
