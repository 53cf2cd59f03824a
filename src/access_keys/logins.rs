//! Logins per key, for `/metrics`: a key nobody logs in with any more is one to revoke.
//!
//! Only keys that logged in are counted, so the map holds no more ids than the file has
//! keys; [`KeyLogins::forget_missing`] drops the ids of revoked keys after a reload. Counting
//! takes a read lock and an atomic add; the write lock is taken once per key id.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{AccessKeys, Expiry, Key};

#[derive(Default)]
struct Counter {
    logins: AtomicU64,
    /// Unix seconds of the last login.
    last: AtomicU64,
}

/// How one key has been used since the process started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyUse {
    pub logins: u64,
    /// Unix seconds of the last login; 0 when none.
    pub last_login: u64,
}

/// Successful logins per key id. Share it (`Arc`) between requests; it outlives reloads.
#[derive(Default)]
pub struct KeyLogins {
    by_id: RwLock<HashMap<String, Counter>>,
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl KeyLogins {
    pub fn new() -> KeyLogins {
        KeyLogins::default()
    }

    /// Counts a login with `key` (a [`super::KeyCheck::Valid`] one) at `now`.
    pub fn record(&self, key: &Key, now: SystemTime) {
        let seconds = unix_seconds(now);
        let count = |counter: &Counter| {
            counter.logins.fetch_add(1, Ordering::Relaxed);
            counter.last.fetch_max(seconds, Ordering::Relaxed);
        };
        {
            let by_id = self.by_id.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(counter) = by_id.get(&key.id) {
                count(counter);
                return;
            }
        }
        let mut by_id = self.by_id.write().unwrap_or_else(PoisonError::into_inner);
        count(by_id.entry(key.id.clone()).or_default());
    }

    /// How the key `id` has been used.
    pub fn usage(&self, id: &str) -> KeyUse {
        let by_id = self.by_id.read().unwrap_or_else(PoisonError::into_inner);
        by_id.get(id).map_or_else(KeyUse::default, |c| KeyUse {
            logins: c.logins.load(Ordering::Relaxed),
            last_login: c.last.load(Ordering::Relaxed),
        })
    }

    /// Drops the counts of keys that are no longer in `keys` (call after a reload).
    pub fn forget_missing(&self, keys: &AccessKeys) {
        let mut by_id = self.by_id.write().unwrap_or_else(PoisonError::into_inner);
        by_id.retain(|id, _| keys.get(id).is_some());
    }

    /// Prometheus text for every key of `keys` (the version in force), unused ones with 0:
    /// `csel_auth_access_key_logins_total{id="…"}`, the last login's time (keys that logged
    /// in) and the expiry (keys that have one), each with its `# HELP` and `# TYPE`.
    pub fn render(&self, keys: &AccessKeys, out: &mut String) {
        let usage: Vec<(&Key, KeyUse)> = keys.keys().iter().map(|k| (k, self.usage(&k.id))).collect();
        let _ = writeln!(
            out,
            "# HELP csel_auth_access_key_logins_total Successful logins with each access key since the start, \
             by key id."
        );
        let _ = writeln!(out, "# TYPE csel_auth_access_key_logins_total counter");
        for (key, used) in &usage {
            let _ = writeln!(
                out,
                "csel_auth_access_key_logins_total{{id=\"{}\"}} {}",
                label(&key.id),
                used.logins
            );
        }
        let _ = writeln!(
            out,
            "# HELP csel_auth_access_key_last_login_timestamp_seconds Time of the last successful login with \
             each access key that logged in since the start."
        );
        let _ = writeln!(out, "# TYPE csel_auth_access_key_last_login_timestamp_seconds gauge");
        for (key, used) in usage.iter().filter(|(_, u)| u.logins > 0) {
            let _ = writeln!(
                out,
                "csel_auth_access_key_last_login_timestamp_seconds{{id=\"{}\"}} {}",
                label(&key.id),
                used.last_login
            );
        }
        let _ = writeln!(
            out,
            "# HELP csel_auth_access_key_expiry_timestamp_seconds When each access key expires (keys that \
             never expire are left out)."
        );
        let _ = writeln!(out, "# TYPE csel_auth_access_key_expiry_timestamp_seconds gauge");
        for (key, _) in &usage {
            if let Expiry::At(when) = key.expires {
                let _ = writeln!(
                    out,
                    "csel_auth_access_key_expiry_timestamp_seconds{{id=\"{}\"}} {}",
                    label(&key.id),
                    unix_seconds(when)
                );
            }
        }
    }
}

/// A Prometheus label value. Ids are letters, digits and `-` already; escaping keeps the
/// output well-formed whatever they become.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn keys(ids: &[&str]) -> AccessKeys {
        let hash = "00".repeat(32);
        let text: String = ids
            .iter()
            .map(|id| {
                format!("key {id} user=u created=2026-01-01T00:00:00Z expires=2027-01-01T00:00:00Z sha256={hash}\n")
            })
            .collect();
        AccessKeys::parse("keys", &text).unwrap()
    }

    #[test]
    fn counts_logins_and_renders_every_key() {
        let file = keys(&["a", "b"]);
        let logins = KeyLogins::new();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        logins.record(file.get("a").unwrap(), now);
        logins.record(file.get("a").unwrap(), now - Duration::from_secs(5));
        assert_eq!(
            logins.usage("a"),
            KeyUse {
                logins: 2,
                last_login: 1_800_000_000
            }
        );
        assert_eq!(logins.usage("b"), KeyUse::default());
        let mut out = String::new();
        logins.render(&file, &mut out);
        for wanted in [
            "# TYPE csel_auth_access_key_logins_total counter\n",
            "csel_auth_access_key_logins_total{id=\"a\"} 2\n",
            "csel_auth_access_key_logins_total{id=\"b\"} 0\n",
            "csel_auth_access_key_last_login_timestamp_seconds{id=\"a\"} 1800000000\n",
            "csel_auth_access_key_expiry_timestamp_seconds{id=\"b\"} 1798761600\n",
        ] {
            assert!(out.contains(wanted), "missing {wanted:?} in:\n{out}");
        }
        assert!(!out.contains("last_login_timestamp_seconds{id=\"b\"}"), "{out}");
    }

    #[test]
    fn revoked_keys_are_forgotten_after_a_reload() {
        let before = keys(&["a", "b"]);
        let logins = KeyLogins::new();
        logins.record(before.get("a").unwrap(), SystemTime::now());
        logins.record(before.get("b").unwrap(), SystemTime::now());
        let after = keys(&["b"]);
        logins.forget_missing(&after);
        assert_eq!(logins.usage("a").logins, 0);
        assert_eq!(logins.usage("b").logins, 1);
        let mut out = String::new();
        logins.render(&after, &mut out);
        assert!(!out.contains("id=\"a\""), "{out}");
    }
}
