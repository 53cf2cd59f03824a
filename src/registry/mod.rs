//! The registry's own address (`[registry] url`, `serve --registry URL`), asked what only the
//! registry knows: whether a tag exists (protected tags) and which repositories it holds (the
//! catalog each user sees filtered). csel-auth talks to it directly, not through nginx, and
//! never with a client's credentials: the registry behind nginx trusts nginx, and this address
//! must be one only nginx and csel-auth can reach.
//!
//! Every answer other than a clear yes or no is an error, and the callers turn errors into
//! refusals (5xx): an unreachable registry never lets a push through.

mod catalog;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::outbound::describe;

pub use catalog::CatalogCache;

/// Default for one request to the registry, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for how long the registry's repository list is reused.
pub const DEFAULT_CATALOG_TTL: Duration = Duration::from_secs(10);

/// Every manifest type a push can have written: the registry answers a HEAD by tag with 404
/// when the stored type is not among the accepted ones, which would make an existing tag look
/// new.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.v1+prettyjws, \
    application/vnd.docker.distribution.manifest.v1+json";

/// `[registry]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySettings {
    /// Without a trailing slash: `http://127.0.0.1:5001`.
    url: String,
    pub timeout: Duration,
    pub catalog_ttl: Duration,
    /// The only CA certificates trusted for an `https://` url (else the system's).
    pub ca_file: Option<std::path::PathBuf>,
}

impl RegistrySettings {
    /// `url` must be `http://` or `https://` with a host and nothing after the path.
    pub fn new(
        url: &str,
        timeout: Option<Duration>,
        catalog_ttl: Option<Duration>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<RegistrySettings, String> {
        let parsed =
            reqwest::Url::parse(url).map_err(|e| format!("url `{url}`: {e}; expected e.g. http://127.0.0.1:5001"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("url `{url}`: expected http:// or https://"));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(format!("url `{url}`: no host"));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() || !parsed.username().is_empty() {
            return Err(format!(
                "url `{url}`: expected the registry's address alone, without a query, fragment or user"
            ));
        }
        let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            return Err("timeout: must be more than 0s".into());
        }
        if ca_file.is_some() && parsed.scheme() != "https" {
            return Err(format!("ca_file: is for an https:// url, and `{url}` is not one"));
        }
        Ok(RegistrySettings {
            url: url.trim_end_matches('/').to_string(),
            timeout,
            catalog_ttl: catalog_ttl.unwrap_or(DEFAULT_CATALOG_TTL),
            ca_file: ca_file.map(std::path::Path::to_path_buf),
        })
    }

    pub fn from_section(section: &crate::config::RegistrySection) -> Result<RegistrySettings, String> {
        RegistrySettings::new(
            &section.url,
            section.timeout,
            section.catalog_cache,
            section.ca_file.as_deref(),
        )
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Why the registry gave no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error("the registry at {url} cannot be reached: {why}")]
    Unreachable { url: String, why: String },
    #[error("the registry answered {status} to {url}")]
    Status { url: String, status: u16 },
    #[error("the registry's answer to {url} is not understood: {why}")]
    Malformed { url: String, why: String },
}

/// Requests to the registry, by what they asked and how they ended, for `/metrics`.
#[derive(Debug, Default)]
pub struct RegistryStats {
    pub tag_exists: AtomicU64,
    pub tag_new: AtomicU64,
    pub tag_errors: AtomicU64,
    pub catalog_fetches: AtomicU64,
    pub catalog_errors: AtomicU64,
}

/// The client for the registry's own address.
#[derive(Debug)]
pub struct Registry {
    settings: RegistrySettings,
    client: reqwest::Client,
    stats: RegistryStats,
    catalog: CatalogCache,
}

impl Registry {
    pub fn new(settings: RegistrySettings) -> Result<Registry, String> {
        let client = crate::outbound::http_client(&crate::outbound::ClientSettings {
            timeout: settings.timeout,
            // The registry is on the inside.
            no_proxy: true,
            ca_file: settings.ca_file.as_deref(),
        })?;
        let catalog = CatalogCache::new(settings.catalog_ttl);
        Ok(Registry {
            settings,
            client,
            stats: RegistryStats::default(),
            catalog,
        })
    }

    pub fn settings(&self) -> &RegistrySettings {
        &self.settings
    }

    pub fn stats(&self) -> &RegistryStats {
        &self.stats
    }

    /// Whether the registry holds a manifest for `reference` (a tag) in repository `name`: a
    /// `HEAD` of it. 200 is yes, 404 is no, anything else (another status, no answer in time)
    /// is an error.
    pub async fn manifest_exists(&self, name: &str, reference: &str) -> Result<bool, RegistryError> {
        let url = format!("{}/v2/{name}/manifests/{reference}", self.settings.url);
        let result = match self
            .client
            .head(&url)
            .header(http::header::ACCEPT, MANIFEST_TYPES)
            .send()
            .await
        {
            Err(e) => Err(RegistryError::Unreachable { url, why: describe(&e) }),
            Ok(response) => match response.status().as_u16() {
                200 => Ok(true),
                404 => Ok(false),
                status => Err(RegistryError::Status { url, status }),
            },
        };
        let counter = match &result {
            Ok(true) => &self.stats.tag_exists,
            Ok(false) => &self.stats.tag_new,
            Err(_) => &self.stats.tag_errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_take_an_address_and_nothing_else() {
        let ok = RegistrySettings::new("http://127.0.0.1:5001/", None, None, None).unwrap();
        assert_eq!(ok.url(), "http://127.0.0.1:5001");
        assert_eq!(ok.timeout, DEFAULT_TIMEOUT);
        assert_eq!(ok.catalog_ttl, DEFAULT_CATALOG_TTL);
        for bad in [
            "127.0.0.1:5001",
            "ftp://127.0.0.1",
            "http://127.0.0.1:5001/?a=b",
            "http://user@127.0.0.1:5001",
            "",
        ] {
            let error = RegistrySettings::new(bad, None, None, None).unwrap_err();
            assert!(error.contains("url"), "{bad}: {error}");
        }
        assert!(RegistrySettings::new("http://r", Some(Duration::ZERO), None, None).is_err());
        let ca = std::path::Path::new("/etc/csel-auth/registry-ca.pem");
        let error = RegistrySettings::new("http://r", None, None, Some(ca)).unwrap_err();
        assert!(error.contains("ca_file: is for an https:// url"), "{error}");
        let https = RegistrySettings::new("https://r:5001", None, None, Some(ca)).unwrap();
        assert_eq!(https.ca_file.as_deref(), Some(ca));
    }
}
