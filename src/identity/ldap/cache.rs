//! Logins the directory confirmed, remembered for `cache_ttl` so that the requests of one
//! `docker pull` cost one round trip, not one each.
//!
//! The key is an HMAC-SHA256 of user and password under a random per-process key: the password
//! is never stored, and a table of keys is useless outside this process. A changed password
//! is a different key, so the old one stops working when its entry expires; a cleared cache
//! (SIGHUP) forgets every entry at once, including those of logins still in flight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::LdapLogin;
use crate::identity::secret_keyed::{SecretKey, SecretKeyedLru};

pub(crate) type CacheKey = SecretKey;

pub(crate) struct LoginCache {
    entries: SecretKeyedLru<Cached>,
    ttl: Duration,
    /// Bumped by `clear`: a login that started before it must not fill the cache after it.
    generation: AtomicU64,
}

struct Cached {
    login: LdapLogin,
    expires: Instant,
}

impl LoginCache {
    /// Off when `capacity` or `ttl` is 0.
    pub(crate) fn new(capacity: usize, ttl: Duration) -> LoginCache {
        LoginCache {
            entries: SecretKeyedLru::new(if ttl.is_zero() { 0 } else { capacity }),
            ttl,
            generation: AtomicU64::new(0),
        }
    }

    pub(crate) fn key(&self, user: &str, password: &str) -> CacheKey {
        self.entries.key(&[user, password])
    }

    /// The cached login for `key`, unless it has expired.
    pub(crate) fn get(&self, key: &CacheKey) -> Option<LdapLogin> {
        let now = Instant::now();
        self.entries
            .with(|entries| match entries.get(key) {
                Some(cached) if cached.expires > now => Some(cached.login.clone()),
                Some(_) => {
                    entries.pop(key);
                    None
                }
                None => None,
            })
            .flatten()
    }

    /// A mark to pass to `insert`, taken before the directory is asked.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Remembers `login` until `confirmed + ttl`, where `confirmed` is when the directory was
    /// first asked: the entry never outlives what the directory said by more than the TTL.
    pub(crate) fn insert(&self, key: CacheKey, login: LdapLogin, confirmed: Instant, generation: u64) {
        self.entries.with(|entries| {
            // Checked under the lock that `clear` also takes, so a clear cannot slip in between.
            if self.generation.load(Ordering::SeqCst) == generation {
                entries.put(
                    key,
                    Cached {
                        login,
                        expires: confirmed + self.ttl,
                    },
                );
            }
        });
    }

    pub(crate) fn clear(&self) {
        let cleared = self.entries.with(|entries| {
            self.generation.fetch_add(1, Ordering::SeqCst);
            entries.clear();
        });
        if cleared.is_none() {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Entries held, expired ones included until they are looked up or pushed out.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(name: &str) -> LdapLogin {
        LdapLogin::new(name, &format!("uid={name},dc=x"), vec!["g".to_string()])
    }

    #[test]
    fn keys_depend_on_user_and_password() {
        let cache = LoginCache::new(10, Duration::from_secs(60));
        assert_eq!(cache.key("alice", "pw"), cache.key("alice", "pw"));
        assert_ne!(cache.key("alice", "pw"), cache.key("alice", "pw2"));
        assert_ne!(cache.key("ab", "c"), cache.key("a", "bc"));
    }

    #[test]
    fn entries_expire_after_the_ttl_from_confirmation() {
        let cache = LoginCache::new(10, Duration::from_secs(60));
        let key = cache.key("alice", "pw");
        cache.insert(key, login("alice"), Instant::now(), cache.generation());
        assert_eq!(cache.get(&key).unwrap().user(), "alice");
        // Confirmed long enough ago that its TTL is over: gone at once.
        let old = Instant::now().checked_sub(Duration::from_secs(61)).unwrap();
        cache.insert(key, login("alice"), old, cache.generation());
        assert!(cache.get(&key).is_none());
        assert_eq!(cache.len(), 0, "an expired entry is dropped when found");
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_recent_entries() {
        let cache = LoginCache::new(3, Duration::from_secs(60));
        let keys: Vec<_> = (0..5).map(|i| cache.key(&format!("u{i}"), "pw")).collect();
        for (i, key) in keys.iter().enumerate().take(3) {
            cache.insert(*key, login(&format!("u{i}")), Instant::now(), cache.generation());
        }
        assert!(cache.get(&keys[0]).is_some(), "u0 is now the most recent");
        cache.insert(keys[3], login("u3"), Instant::now(), cache.generation());
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&keys[1]).is_none(), "the least recently used went");
        assert!(cache.get(&keys[0]).is_some());
        assert!(cache.get(&keys[3]).is_some());
    }

    #[test]
    fn clear_forgets_everything_and_refuses_logins_begun_before_it() {
        let cache = LoginCache::new(10, Duration::from_secs(60));
        let key = cache.key("alice", "pw");
        cache.insert(key, login("alice"), Instant::now(), cache.generation());
        let before = cache.generation();
        cache.clear();
        assert!(cache.get(&key).is_none());
        cache.insert(key, login("alice"), Instant::now(), before);
        assert!(cache.get(&key).is_none(), "a login begun before clear() is not cached");
        cache.insert(key, login("alice"), Instant::now(), cache.generation());
        assert!(cache.get(&key).is_some());
    }

    #[test]
    fn zero_capacity_or_ttl_turns_the_cache_off() {
        for cache in [
            LoginCache::new(0, Duration::from_secs(60)),
            LoginCache::new(10, Duration::ZERO),
        ] {
            let key = cache.key("alice", "pw");
            cache.insert(key, login("alice"), Instant::now(), cache.generation());
            assert!(cache.get(&key).is_none());
            assert_eq!(cache.len(), 0);
        }
    }
}
