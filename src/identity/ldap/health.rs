//! Whether the directory answers, and counters for /metrics. An outage is logged once when it
//! starts and once when it ends, however many requests fail in between.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// A snapshot of the directory's state and counters, for /metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LdapStats {
    /// Whether the directory answered the last operation sent to it (`ldap_up` 0/1); true
    /// until the first failure. An error answer (a search under a base that does not exist)
    /// still counts as an answer: it is in `errors` and logged once per distinct message.
    pub up: bool,
    /// Calls of `login` and `groups_of`.
    pub logins: u64,
    /// Logins answered from the cache, without a round trip.
    pub cache_hits: u64,
    /// Logins that waited for an identical one already asking the directory.
    pub shared: u64,
    /// Logins refused: unknown user, wrong or empty password, ambiguous user.
    pub refused: u64,
    /// Operations sent to the directory: connects, binds and searches.
    pub requests: u64,
    /// Operations that got no usable answer: down, timeout, TLS failure, refused service
    /// bind, or an error answer to a search (a missing base, no access).
    pub errors: u64,
    /// Times the directory went from answering to not answering.
    pub outages: u64,
    /// Logins in the cache, expired ones included until they are looked up or pushed out.
    pub cached_logins: usize,
    /// Distinct logins being asked of the directory right now.
    pub logins_in_flight: usize,
}

pub(crate) struct Health {
    url: String,
    up: AtomicBool,
    pub(crate) logins: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
    pub(crate) shared: AtomicU64,
    pub(crate) refused: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    outages: AtomicU64,
    /// The last error answer logged, so a misconfiguration is logged once, not per request.
    last_problem: Mutex<Option<String>>,
}

impl Health {
    pub(crate) fn new(url: &str) -> Health {
        Health {
            url: url.to_string(),
            up: AtomicBool::new(true),
            logins: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            shared: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            outages: AtomicU64::new(0),
            last_problem: Mutex::new(None),
        }
    }

    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// An operation is about to be sent.
    pub(crate) fn request(&self) {
        Health::count(&self.requests);
    }

    /// The directory answered (whatever it said).
    pub(crate) fn answered(&self) {
        if !self.up.swap(true, Ordering::SeqCst) {
            tracing::warn!(url = %self.url, "LDAP directory answers again");
        }
    }

    /// The directory could not be asked, or gave no usable answer.
    pub(crate) fn failed(&self, reason: &str) {
        Health::count(&self.errors);
        if self.up.swap(false, Ordering::SeqCst) {
            Health::count(&self.outages);
            tracing::error!(
                url = %self.url,
                "LDAP directory unavailable: {reason}; only cached logins pass until it answers again"
            );
        } else {
            tracing::debug!(url = %self.url, "LDAP directory still unavailable: {reason}");
        }
    }

    /// The directory answered with an error that makes the answer unusable (a missing base,
    /// no access): a configuration problem rather than an outage.
    pub(crate) fn problem(&self, reason: &str) {
        Health::count(&self.errors);
        let mut last = self.last_problem.lock().unwrap_or_else(PoisonError::into_inner);
        if last.as_deref() != Some(reason) {
            tracing::error!(url = %self.url, "LDAP directory answered with an error: {reason}; check the [ldap] settings");
            *last = Some(reason.to_string());
        }
    }

    pub(crate) fn snapshot(&self, cached_logins: usize, logins_in_flight: usize) -> LdapStats {
        LdapStats {
            up: self.up.load(Ordering::SeqCst),
            logins: self.logins.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            shared: self.shared.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            outages: self.outages.load(Ordering::Relaxed),
            cached_logins,
            logins_in_flight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_count_transitions_not_failures() {
        let health = Health::new("ldap://h");
        assert!(health.snapshot(0, 0).up);
        health.failed("connection refused");
        health.failed("connection refused");
        health.answered();
        health.answered();
        health.failed("timeout");
        let stats = health.snapshot(0, 0);
        assert!(!stats.up);
        assert_eq!(stats.errors, 3);
        assert_eq!(stats.outages, 2);
    }

    #[test]
    fn error_answers_count_but_leave_the_directory_up() {
        let health = Health::new("ldap://h");
        health.answered();
        health.problem("noSuchObject (32)");
        health.problem("noSuchObject (32)");
        let stats = health.snapshot(0, 0);
        assert!(stats.up);
        assert_eq!((stats.errors, stats.outages), (2, 0));
    }
}
