//! Verified access tokens, remembered until they expire.

use std::fmt;
use std::time::SystemTime;

use sha2::Sha256;

use super::jwt::unix_seconds;
use super::{verify, Identity, TokenError, TokenKey, TokenKind, TokenSettings, MAX_TOKEN_LEN};

/// Verified access tokens remembered for users, least recently used evicted first.
pub(crate) const USER_TOKEN_CACHE_ENTRIES: usize = 10_000;
/// Verified anonymous access tokens remembered. Anyone can get any number of
/// them, so they have their own, smaller cache and never evict a user's entry.
pub(crate) const ANONYMOUS_TOKEN_CACHE_ENTRIES: usize = 1_000;

/// What a cached verification gives back: the subject and the token's binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CachedAccess {
    pub identity: Identity,
    /// See [`VerifiedToken::binding`]; the caller compares it with the current
    /// credential on every request, so a cached entry never outlives it.
    pub binding: String,
    /// The identity source of a user not from the htpasswd file, and its groups.
    pub source: Option<String>,
    pub groups: Vec<String>,
}

/// [`verify`] of access tokens, with the results remembered until the token
/// expires: a pull sends the same token with every request, and verifying it
/// (HMAC, base64, JSON) costs more than deciding. Entries are keyed by the
/// SHA-256 of the token, so an entry's size does not depend on the token's,
/// and kept in two bounded LRU maps, one for users and one for anonymous
/// tokens.
pub(crate) struct VerifiedTokenCache {
    users: std::sync::Mutex<lru::LruCache<[u8; 32], (CachedAccess, u64)>>,
    anonymous: std::sync::Mutex<lru::LruCache<[u8; 32], u64>>,
    hits: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for VerifiedTokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (users, anonymous) = self.len();
        f.debug_struct("VerifiedTokenCache")
            .field("users", &users)
            .field("anonymous", &anonymous)
            .finish_non_exhaustive()
    }
}

impl VerifiedTokenCache {
    /// Room for `users` user tokens and `anonymous` anonymous ones (each at least 1).
    pub(crate) fn new(users: usize, anonymous: usize) -> VerifiedTokenCache {
        let capacity = |n: usize| std::num::NonZeroUsize::new(n).unwrap_or(std::num::NonZeroUsize::MIN);
        VerifiedTokenCache {
            users: std::sync::Mutex::new(lru::LruCache::new(capacity(users))),
            anonymous: std::sync::Mutex::new(lru::LruCache::new(capacity(anonymous))),
            hits: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(crate) fn verify(
        &self,
        key: &TokenKey,
        settings: &TokenSettings,
        token: &str,
        now: SystemTime,
    ) -> Result<CachedAccess, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge);
        }
        let now_secs = unix_seconds(now).ok_or(TokenError::ClockBeforeEpoch)?;
        let id: [u8; 32] = <Sha256 as sha2::Digest>::digest(token.as_bytes()).into();
        // A poisoned lock only costs the cache: verify without it.
        if let Ok(mut users) = self.users.lock() {
            if let Some((access, expires_at)) = users.get(&id) {
                if now_secs < *expires_at {
                    self.count_hit();
                    return Ok(access.clone());
                }
                users.pop(&id);
            }
        }
        if let Ok(mut anonymous) = self.anonymous.lock() {
            if let Some(expires_at) = anonymous.get(&id) {
                if now_secs < *expires_at {
                    self.count_hit();
                    return Ok(CachedAccess {
                        identity: Identity::anonymous(),
                        binding: String::new(),
                        source: None,
                        groups: Vec::new(),
                    });
                }
                anonymous.pop(&id);
            }
        }
        let verified = verify(key, settings, TokenKind::Access, token, now)?;
        let access = CachedAccess {
            identity: verified.identity,
            binding: verified.binding,
            source: verified.source,
            groups: verified.groups,
        };
        if access.identity.user.is_some() {
            if let Ok(mut users) = self.users.lock() {
                users.put(id, (access.clone(), verified.expires_at));
            }
        } else if let Ok(mut anonymous) = self.anonymous.lock() {
            anonymous.put(id, verified.expires_at);
        }
        Ok(access)
    }

    /// Requests answered from the cache.
    pub(crate) fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Entries held: (users, anonymous).
    pub(crate) fn len(&self) -> (usize, usize) {
        let users = self.users.lock().map_or(0, |users| users.len());
        let anonymous = self.anonymous.lock().map_or(0, |anonymous| anonymous.len());
        (users, anonymous)
    }

    fn count_hit(&self) {
        self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Default for VerifiedTokenCache {
    fn default() -> VerifiedTokenCache {
        VerifiedTokenCache::new(USER_TOKEN_CACHE_ENTRIES, ANONYMOUS_TOKEN_CACHE_ENTRIES)
    }
}
