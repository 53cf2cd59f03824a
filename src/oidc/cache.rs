//! Verified tokens, remembered until they expire so that the requests of one `docker push`
//! cost one signature check, not one each.
//!
//! The key is an HMAC-SHA256 of the token under a random per-process key (a table of keys is
//! useless outside this process), and the token itself is never stored. An entry ends at the
//! token's `exp` (or `iat + max_age`, when sooner), when the LRU pushes it out, when its
//! issuer's key set changes (a key withdrawn by the issuer stops working at the next fetch,
//! cached tokens included), or on `clear`.

use super::FederatedLogin;
use crate::identity::secret_keyed::{SecretKey, SecretKeyedLru};

pub(crate) type CacheKey = SecretKey;

pub(crate) struct TokenCache {
    entries: SecretKeyedLru<Cached>,
}

struct Cached {
    login: FederatedLogin,
    /// Seconds since the epoch.
    until: u64,
    issuer: usize,
    /// The issuer's key-set generation the token was verified under.
    generation: u64,
}

impl TokenCache {
    /// Off when `capacity` is 0.
    pub(crate) fn new(capacity: usize) -> TokenCache {
        TokenCache {
            entries: SecretKeyedLru::new(capacity),
        }
    }

    pub(crate) fn key(&self, token: &str) -> CacheKey {
        self.entries.key(&[token])
    }

    /// The cached login and its issuer's index, unless expired at `now` or verified under a
    /// key set its issuer no longer has (`generation_of` gives the current one).
    pub(crate) fn get(
        &self,
        key: &CacheKey,
        now: u64,
        generation_of: impl Fn(usize) -> u64,
    ) -> Option<(usize, FederatedLogin)> {
        self.entries
            .with(|entries| {
                let cached = entries.get(key)?;
                if now < cached.until && generation_of(cached.issuer) == cached.generation {
                    return Some((cached.issuer, cached.login.clone()));
                }
                entries.pop(key);
                None
            })
            .flatten()
    }

    pub(crate) fn insert(&self, key: CacheKey, login: FederatedLogin, until: u64, issuer: usize, generation: u64) {
        self.entries.with(|entries| {
            entries.put(
                key,
                Cached {
                    login,
                    until,
                    issuer,
                    generation,
                },
            )
        });
    }

    pub(crate) fn clear(&self) {
        self.entries.with(|entries| entries.clear());
    }

    /// Entries held, expired ones included until they are looked up or pushed out.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn login(user: &str) -> FederatedLogin {
        FederatedLogin::new(user, vec![], "https://issuer", UNIX_EPOCH)
    }

    #[test]
    fn keys_depend_on_the_token_and_the_process_secret() {
        let cache = TokenCache::new(10);
        assert_eq!(cache.key("a.b.c"), cache.key("a.b.c"));
        assert_ne!(cache.key("a.b.c"), cache.key("a.b.d"));
        assert_ne!(cache.key("a.b.c"), TokenCache::new(10).key("a.b.c"));
    }

    #[test]
    fn entries_end_at_their_time_and_with_their_key_set() {
        let cache = TokenCache::new(10);
        let key = cache.key("t");
        cache.insert(key, login("github:a"), 1000, 0, 7);
        assert_eq!(cache.get(&key, 999, |_| 7).unwrap().1.user(), "github:a");
        assert!(cache.get(&key, 999, |_| 8).is_none(), "another key set");
        assert_eq!(cache.len(), 0, "dropped when found stale");
        cache.insert(key, login("github:a"), 1000, 0, 7);
        assert!(cache.get(&key, 1000, |_| 7).is_none(), "expired at `until`");
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn the_cache_is_bounded_clearable_and_can_be_off() {
        let cache = TokenCache::new(2);
        for token in ["a", "b", "c"] {
            cache.insert(cache.key(token), login(token), 10, 0, 0);
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&cache.key("a"), 0, |_| 0).is_none(), "the least recent went");
        cache.clear();
        assert_eq!(cache.len(), 0);
        let off = TokenCache::new(0);
        off.insert(off.key("a"), login("a"), 10, 0, 0);
        assert!(off.get(&off.key("a"), 0, |_| 0).is_none());
    }
}
