//! Canonicalization of the original request target (nginx's `$request_uri`) and recognition of
//! the docker distribution API routes.
//!
//! Everything here fails closed: a target that could be read in two ways by csel-auth and by the
//! registry behind nginx is rejected, never guessed at. The rules only ever see a `path` that was
//! percent-decoded exactly once and contains no dot segment, no `//`, no backslash, no control or
//! non-ASCII character, no `;` and no `%`, so a prefix test such as `path =^ "/v2/library/"`
//! cannot be escaped by an encoding trick.

use std::fmt;

mod canonical;
mod docker;
#[cfg(test)]
mod tests;

pub use canonical::canonicalize;
pub use docker::{is_valid_digest, is_valid_repository_name, is_valid_tag, is_valid_upload_session, DockerRoute};

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
