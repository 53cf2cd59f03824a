//! Whether each issuer's keys can be had, and counters for /metrics. An outage is logged once
//! when it starts and once when it ends, however many fetches fail in between.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A snapshot of all issuers, for /metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcStats {
    /// Verified tokens in the cache, expired ones included until looked up or pushed out.
    pub cached_tokens: usize,
    pub issuers: Vec<IssuerStats>,
}

/// One issuer's keys and logins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerStats {
    pub issuer: String,
    /// Whether the last fetch of the keys succeeded; false from the start until the first does.
    pub up: bool,
    /// Usable keys in the current key set (0: none yet, logins are unavailable).
    pub keys: usize,
    /// Time since the keys were last fetched (or the file last checked) successfully; `None`
    /// before the first success.
    pub key_set_age: Option<Duration>,
    /// Fetches of the URL or reads of the file attempted.
    pub fetches: u64,
    /// Fetches that failed (no answer, an error status, not a usable JWKS); the last good key
    /// set stayed in use.
    pub fetch_errors: u64,
    /// Times fetching went from working to failing.
    pub outages: u64,
    /// Early fetches (unknown `kid`, no keys yet) skipped because one had just been made.
    pub fetches_limited: u64,
    /// Tokens whose signature and claims were checked and found good.
    pub verified: u64,
    /// Tokens answered from the cache.
    pub cache_hits: u64,
    /// Tokens from this issuer that were refused.
    pub refused: u64,
    /// Logins that failed because the issuer's keys could not be had.
    pub unavailable: u64,
}

pub(crate) struct Health {
    issuer: String,
    source: String,
    up: AtomicBool,
    last_success: Mutex<Option<Instant>>,
    pub(crate) fetches: AtomicU64,
    fetch_errors: AtomicU64,
    outages: AtomicU64,
    pub(crate) fetches_limited: AtomicU64,
    pub(crate) verified: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) unavailable: AtomicU64,
}

impl Health {
    pub(crate) fn new(issuer: &str, source: &str) -> Health {
        Health {
            issuer: issuer.to_string(),
            source: source.to_string(),
            // Down until the keys arrive: the first success is logged as the start of service.
            up: AtomicBool::new(false),
            last_success: Mutex::new(None),
            fetches: AtomicU64::new(0),
            fetch_errors: AtomicU64::new(0),
            outages: AtomicU64::new(0),
            fetches_limited: AtomicU64::new(0),
            verified: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
        }
    }

    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// The keys were fetched (or the file found unchanged after a good read).
    pub(crate) fn succeeded(&self, keys: usize) {
        *self.last_success.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        if !self.up.swap(true, Ordering::SeqCst) {
            if self.fetch_errors.load(Ordering::Relaxed) == 0 {
                tracing::info!(issuer = %self.issuer, source = %self.source, keys, "OIDC: the issuer's keys are in");
            } else {
                tracing::warn!(issuer = %self.issuer, source = %self.source, keys, "OIDC: the issuer's keys can be fetched again; its tokens are accepted");
            }
        }
    }

    /// A fetch failed. Logged at warn until the first success (an issuer that is not there yet
    /// is no outage), then at error once per outage.
    pub(crate) fn failed(&self, reason: &str, have_keys: bool) {
        Health::count(&self.fetch_errors);
        let was_up = self.up.swap(false, Ordering::SeqCst);
        let first_failure = self.fetch_errors.load(Ordering::Relaxed) == 1;
        if was_up {
            Health::count(&self.outages);
            tracing::error!(
                issuer = %self.issuer, source = %self.source,
                "OIDC: cannot fetch the issuer's keys: {reason}; {}",
                if have_keys { "the last good key set stays in use" } else { "its logins fail until the keys arrive" }
            );
        } else if first_failure && !have_keys {
            tracing::warn!(
                issuer = %self.issuer, source = %self.source,
                "OIDC: cannot fetch the issuer's keys: {reason}; its logins fail until the keys arrive"
            );
        } else {
            tracing::debug!(issuer = %self.issuer, source = %self.source, "OIDC: keys still unavailable: {reason}");
        }
    }

    pub(crate) fn snapshot(&self, keys: usize) -> IssuerStats {
        let last_success = *self.last_success.lock().unwrap_or_else(PoisonError::into_inner);
        IssuerStats {
            issuer: self.issuer.clone(),
            up: self.is_up(),
            keys,
            key_set_age: last_success.map(|at| at.elapsed()),
            fetches: self.fetches.load(Ordering::Relaxed),
            fetch_errors: self.fetch_errors.load(Ordering::Relaxed),
            outages: self.outages.load(Ordering::Relaxed),
            fetches_limited: self.fetches_limited.load(Ordering::Relaxed),
            verified: self.verified.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            unavailable: self.unavailable.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_count_transitions_not_failures() {
        let health = Health::new("https://issuer", "https://issuer/jwks");
        let stats = health.snapshot(0);
        assert!(!stats.up);
        assert_eq!(stats.key_set_age, None);
        health.failed("connection refused", false);
        health.failed("connection refused", false);
        assert_eq!(health.snapshot(0).outages, 0, "not up yet: no outage");
        health.succeeded(2);
        health.succeeded(2);
        health.failed("timeout", true);
        health.failed("timeout", true);
        let stats = health.snapshot(2);
        assert!(!stats.up);
        assert_eq!((stats.fetch_errors, stats.outages, stats.keys), (4, 1, 2));
        assert!(stats.key_set_age.is_some());
    }
}
