//! Canonicalization of the original request target (nginx's `$request_uri`) and recognition of
//! the docker distribution API routes.
//!
//! Everything here fails closed: a target that could be read in two ways by csel-auth and by the
//! registry behind nginx is rejected, never guessed at. The rules only ever see a `path` that was
//! percent-decoded exactly once and contains no dot segment, no `//`, no backslash, no control or
//! non-ASCII character, no `;` and no `%`, so a prefix test such as `path =^ "/v2/library/"`
//! cannot be escaped by an encoding trick.

mod canonical;
pub(crate) mod docker;
#[cfg(test)]
mod tests;

pub use canonical::canonicalize;
pub use docker::DockerRoute;
use docker::{is_valid_digest, is_valid_repository_name};

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

/// Why a request target was refused. `Display` is short, meant for the decision log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("request target does not start with /")]
    NotAbsolute,
    #[error("request target contains a fragment (#)")]
    Fragment,
    #[error("path longer than {MAX_PATH_BYTES} bytes")]
    PathTooLong,
    #[error("query longer than {MAX_QUERY_BYTES} bytes")]
    QueryTooLong,
    #[error("invalid percent escape at byte {at}")]
    BadPercentEscape { at: usize },
    #[error("path contains an encoded slash (%2F)")]
    EncodedSlash,
    #[error("path contains an encoded backslash (%5C)")]
    EncodedBackslash,
    #[error("path is not UTF-8 after decoding")]
    PathNotUtf8,
    #[error("path contains a control character")]
    ControlCharacter,
    #[error("path contains a non-ASCII character")]
    NonAscii,
    #[error("path contains a backslash")]
    Backslash,
    #[error("path contains `;` (path parameter)")]
    PathParameter,
    #[error("path contains `%` after decoding (double encoding)")]
    DoubleEncoding,
    /// Only reachable through `%3F` / `%23`.
    #[error("path contains an encoded `?` or `#`")]
    EncodedQueryOrFragment,
    #[error("path contains an empty segment (//)")]
    EmptySegment,
    #[error("path contains a dot segment")]
    DotSegment,
    #[error("query contains `;`")]
    QuerySemicolon,
    #[error("query is not UTF-8 after decoding")]
    QueryNotUtf8,
    #[error("docker ping must be /v2/ (with the slash)")]
    PingWithoutSlash,
    #[error("docker path outside /v2/")]
    OutsideV2,
    #[error("not a docker registry API route")]
    NotARoute,
    #[error("not a docker registry API route (no repository name)")]
    NoRepositoryName,
    #[error("repository name longer than {MAX_REPOSITORY_NAME_BYTES} bytes")]
    RepositoryNameTooLong,
    #[error("repository name outside the OCI grammar (lower-case [a-z0-9] components joined by . _ __ -)")]
    BadRepositoryName,
    #[error("manifest reference is neither a tag nor a digest")]
    BadReference,
    #[error("invalid digest")]
    BadDigest,
    #[error("invalid blob upload session id")]
    BadUploadSession,
    #[error("query parameter `{0}` repeated in a blob upload")]
    RepeatedMountParameter(&'static str),
    #[error("blob upload has `from` without `mount`")]
    FromWithoutMount,
    #[error("blob mount without `from` (registry would choose the source repository)")]
    MountWithoutFrom,
    #[error("blob mount: `mount` is not a valid digest")]
    BadMountDigest,
    #[error("blob mount: `from` is not a valid repository name")]
    BadMountSource,
}

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
        let single = |key: &'static str| -> Result<Option<&str>, Rejection> {
            let mut values = self.query.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str());
            let first = values.next();
            if values.next().is_some() {
                return Err(Rejection::RepeatedMountParameter(key));
            }
            Ok(first)
        };
        let mount = single("mount")?;
        let from = single("from")?;
        single("digest")?;
        match (mount, from) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(Rejection::FromWithoutMount),
            (Some(_), None) => Err(Rejection::MountWithoutFrom),
            (Some(digest), Some(from)) => {
                if !is_valid_digest(digest) {
                    return Err(Rejection::BadMountDigest);
                }
                if !is_valid_repository_name(from) {
                    return Err(Rejection::BadMountSource);
                }
                Ok(Some(Mount {
                    digest: digest.to_string(),
                    from: from.to_string(),
                }))
            }
        }
    }
}
