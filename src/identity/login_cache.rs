//! The verified-login cache: the keys of successful checks, least recently used evicted first.

use lru::LruCache;

/// An HMAC of the user, the password and the htpasswd entry's hash (see [`super::Verifier`]).
pub(super) type CacheKey = [u8; 32];

/// A bounded set of successful-check keys. Grows as logins succeed rather than reserving its
/// whole capacity at start, so a large configured capacity costs nothing until it is used.
pub(super) struct LoginCache {
    entries: LruCache<CacheKey, ()>,
    capacity: usize,
}

impl LoginCache {
    /// Room for `capacity` keys; 0 keeps nothing.
    pub(super) fn new(capacity: usize) -> LoginCache {
        LoginCache {
            entries: LruCache::unbounded(),
            capacity,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether `key` is cached; if so it becomes the most recently used.
    pub(super) fn touch(&mut self, key: &CacheKey) -> bool {
        self.entries.get(key).is_some()
    }

    pub(super) fn insert(&mut self, key: CacheKey) {
        if self.capacity == 0 || self.touch(&key) {
            return;
        }
        while self.entries.len() >= self.capacity {
            self.entries.pop_lru();
        }
        self.entries.put(key, ());
    }
}
