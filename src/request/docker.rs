//! The routes of the docker / OCI distribution API and the grammar of their parts.

use super::{Rejection, MAX_DIGEST_BYTES, MAX_REPOSITORY_NAME_BYTES, MAX_TAG_BYTES, MAX_UPLOAD_SESSION_BYTES};

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
    pub(crate) fn kind(&self) -> &'static str {
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
pub(super) fn docker_route(path: &str) -> Result<DockerRoute, Rejection> {
    let Some(rest) = path.strip_prefix("/v2/") else {
        if path == "/v2" {
            return Err(Rejection::PingWithoutSlash);
        }
        return Err(Rejection::OutsideV2);
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
                return Err(Rejection::BadReference);
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
                return Err(Rejection::BadUploadSession);
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
        _ => return Err(Rejection::NotARoute),
    };
    Ok(route)
}

fn repository_name(components: &[&str]) -> Result<String, Rejection> {
    if components.is_empty() {
        return Err(Rejection::NoRepositoryName);
    }
    let name = components.join("/");
    if name.len() > MAX_REPOSITORY_NAME_BYTES {
        return Err(Rejection::RepositoryNameTooLong);
    }
    if !is_valid_repository_name(&name) {
        return Err(Rejection::BadRepositoryName);
    }
    Ok(name)
}

fn valid_digest(digest: &str) -> Result<String, Rejection> {
    if is_valid_digest(digest) {
        Ok(digest.to_string())
    } else {
        Err(Rejection::BadDigest)
    }
}

/// OCI repository name: components `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*` joined by `/`,
/// at most 255 bytes in all.
pub(crate) fn is_valid_repository_name(name: &str) -> bool {
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
pub(crate) fn is_valid_tag(tag: &str) -> bool {
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
pub(crate) fn is_valid_digest(digest: &str) -> bool {
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
pub(crate) fn is_valid_upload_session(session: &str) -> bool {
    !session.is_empty()
        && session.len() <= MAX_UPLOAD_SESSION_BYTES
        && session
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'=' | b'-'))
}
