//! A bounded map whose keys are an HMAC-SHA256 of secrets (a user and password, a token) under a
//! random per-process key, for the caches of the identity sources: the secrets are never stored,
//! and a table of keys is useless outside this process. Least recently used entries go first;
//! a capacity of 0 keeps nothing.

use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard, PoisonError};

use hmac::{Hmac, Mac};
use lru::LruCache;
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;
pub(crate) type SecretKey = [u8; 32];

pub(crate) struct SecretKeyedLru<V> {
    keyed_mac: HmacSha256,
    /// `None` when the cache is off.
    entries: Option<Mutex<LruCache<SecretKey, V>>>,
}

impl<V> SecretKeyedLru<V> {
    pub(crate) fn new(capacity: usize) -> SecretKeyedLru<V> {
        let mut secret = [0u8; 64];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        SecretKeyedLru {
            keyed_mac: <HmacSha256 as hmac::digest::KeyInit>::new(&secret.into()),
            entries: NonZeroUsize::new(capacity).map(|capacity| Mutex::new(LruCache::new(capacity))),
        }
    }

    /// The key of `parts`, taken together. Length prefixes keep ("ab", "c") and ("a", "bc") apart.
    pub(crate) fn key(&self, parts: &[&str]) -> SecretKey {
        let mut mac = self.keyed_mac.clone();
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    /// Runs `f` on the entries under their lock; `None` when the cache is off.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut LruCache<SecretKey, V>) -> R) -> Option<R> {
        self.entries.as_ref().map(|entries| f(&mut lock(entries)))
    }

    /// Entries held, stale ones included until they are looked up or pushed out.
    pub(crate) fn len(&self) -> usize {
        self.with(|entries| entries.len()).unwrap_or(0)
    }
}

/// A panic elsewhere must not turn every later login into a panic: the cache stays usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_every_part_and_the_process_secret() {
        let cache: SecretKeyedLru<()> = SecretKeyedLru::new(10);
        assert_eq!(cache.key(&["alice", "pw"]), cache.key(&["alice", "pw"]));
        assert_ne!(cache.key(&["alice", "pw"]), cache.key(&["alice", "pw2"]));
        assert_ne!(cache.key(&["ab", "c"]), cache.key(&["a", "bc"]));
        assert_ne!(
            cache.key(&["alice", "pw"]),
            SecretKeyedLru::<()>::new(10).key(&["alice", "pw"])
        );
    }

    #[test]
    fn bounded_and_off_at_zero() {
        let cache = SecretKeyedLru::new(2);
        for part in ["a", "b", "c"] {
            cache.with(|entries| entries.put(cache.key(&[part]), part));
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(
            cache.with(|entries| entries.get(&cache.key(&["a"])).copied()),
            Some(None)
        );
        let off: SecretKeyedLru<&str> = SecretKeyedLru::new(0);
        assert_eq!(off.with(|entries| entries.put(off.key(&["a"]), "a")), None);
        assert_eq!(off.len(), 0);
    }
}
