//! The registry's full repository list, read page by page and reused for a short while.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::{Registry, RegistryError};
use crate::outbound::describe;

/// Repositories asked for per page; the registry may answer fewer (its own limit).
const PAGE: usize = 1000;
/// A registry that keeps sending pages is cut off: far more repositories than any registry holds.
const MAX_REPOSITORIES: usize = 1_000_000;
/// The largest page accepted.
const MAX_PAGE_BYTES: usize = 16 << 20;

/// The last list read and when; one fetch at a time, so a burst of catalog requests after the
/// list went stale costs the registry one walk, not one each.
#[derive(Debug)]
pub struct CatalogCache {
    ttl: Duration,
    last: Mutex<Option<(Instant, Arc<Vec<String>>)>>,
}

impl CatalogCache {
    pub(super) fn new(ttl: Duration) -> CatalogCache {
        CatalogCache {
            ttl,
            last: Mutex::new(None),
        }
    }
}

#[derive(serde::Deserialize)]
struct Page {
    #[serde(default)]
    repositories: Vec<String>,
}

impl Registry {
    /// Every repository of the registry, sorted, from the cache when it is younger than
    /// `catalog_ttl`. An error is never cached: the next request asks again.
    pub async fn catalog(&self) -> Result<Arc<Vec<String>>, RegistryError> {
        let mut last = self.catalog.last.lock().await;
        if let Some((when, list)) = last.as_ref() {
            if when.elapsed() < self.catalog.ttl {
                return Ok(Arc::clone(list));
            }
        }
        self.stats
            .catalog_fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.fetch_catalog().await {
            Ok(list) => {
                let list = Arc::new(list);
                *last = Some((Instant::now(), Arc::clone(&list)));
                Ok(list)
            }
            Err(e) => {
                self.stats
                    .catalog_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Walks the registry's pages (`n`, then each `Link: <…>; rel="next"`).
    async fn fetch_catalog(&self) -> Result<Vec<String>, RegistryError> {
        let base = self.settings.url();
        let mut url = format!("{base}/v2/_catalog?n={PAGE}");
        let mut repositories: Vec<String> = Vec::new();
        loop {
            let mut response = self
                .client
                .get(&url)
                .header(http::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| RegistryError::Unreachable {
                    url: url.clone(),
                    why: describe(&e),
                })?;
            if response.status() != reqwest::StatusCode::OK {
                return Err(RegistryError::Status {
                    url,
                    status: response.status().as_u16(),
                });
            }
            let next = response
                .headers()
                .get(http::header::LINK)
                .map(|v| next_link(v.as_bytes()))
                .transpose()
                .map_err(|why| RegistryError::Malformed { url: url.clone(), why })?
                .flatten();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| RegistryError::Unreachable {
                url: url.clone(),
                why: describe(&e),
            })? {
                if body.len() + chunk.len() > MAX_PAGE_BYTES {
                    return Err(RegistryError::Malformed {
                        url,
                        why: format!("a page larger than {MAX_PAGE_BYTES} bytes"),
                    });
                }
                body.extend_from_slice(&chunk);
            }
            let page: Page = serde_json::from_slice(&body).map_err(|e| RegistryError::Malformed {
                url: url.clone(),
                why: format!("expected {{\"repositories\": [...]}}: {e}"),
            })?;
            if repositories.len() + page.repositories.len() > MAX_REPOSITORIES {
                return Err(RegistryError::Malformed {
                    url,
                    why: format!("more than {MAX_REPOSITORIES} repositories"),
                });
            }
            let got = page.repositories.len();
            repositories.extend(page.repositories);
            match next {
                Some(path) if got > 0 => url = format!("{base}{path}"),
                _ => break,
            }
        }
        repositories.sort_unstable();
        repositories.dedup();
        Ok(repositories)
    }
}

/// The target of `rel="next"` in a `Link` header, which must be a path on the registry
/// (`</v2/_catalog?last=b&n=1000>; rel="next"`), or `None`.
fn next_link(value: &[u8]) -> Result<Option<String>, String> {
    let text = std::str::from_utf8(value).map_err(|_| "a Link header that is not text".to_string())?;
    for link in text.split(',') {
        let link = link.trim();
        let Some(rest) = link.strip_prefix('<') else {
            return Err(format!("a Link header `{text}` without <target>"));
        };
        let Some((target, params)) = rest.split_once('>') else {
            return Err(format!("a Link header `{text}` without <target>"));
        };
        let is_next = params
            .split(';')
            .map(str::trim)
            .any(|p| p.eq_ignore_ascii_case("rel=\"next\"") || p.eq_ignore_ascii_case("rel=next"));
        if !is_next {
            continue;
        }
        // Relative to the registry: a full URL could send the walk (and nothing else) elsewhere.
        if !target.starts_with("/v2/_catalog?") {
            return Err(format!("a next page `{target}` outside /v2/_catalog"));
        }
        return Ok(Some(target.to_string()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::next_link;

    #[test]
    fn next_links_are_read_and_kept_on_the_registry() {
        assert_eq!(
            next_link(br#"</v2/_catalog?last=b&n=1000>; rel="next""#),
            Ok(Some("/v2/_catalog?last=b&n=1000".to_string()))
        );
        // The CNCF registry 2.8 escapes the slash of the last name.
        assert_eq!(
            next_link(br#"</v2/_catalog?last=team%2Fapp&n=1000>; rel="next""#),
            Ok(Some("/v2/_catalog?last=team%2Fapp&n=1000".to_string()))
        );
        assert_eq!(next_link(br#"</v2/_catalog?last=b>; rel="prev""#), Ok(None));
        assert!(next_link(br#"<http://elsewhere/v2/_catalog?last=b>; rel="next""#).is_err());
        assert!(next_link(b"rel=next").is_err());
    }
}
