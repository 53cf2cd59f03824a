//! Federated identity: JSON Web Tokens from trusted issuers (GitHub Actions, Kubernetes service
//! accounts, any OIDC provider) accepted as registry passwords, configured by `[[oidc]]`
//! sections of the config file.
//!
//! `docker login -u ANYTHING -p <JWT>`: the token is the credential. Its signature is checked
//! against the issuer's published keys (JWKS), then `iss`, `aud`, `exp`, `nbf`, `iat` and
//! `max_age`; the user the rules see is `username_prefix` + the `username_claim`, and the
//! groups are the `groups_claim`, prefixed the same way. The `-u` name is ignored: docker
//! insists on one and CI systems put arbitrary names there, while the token alone says who it
//! is; log the mapped name, not the typed one.
//!
//! Wiring: build one [`Issuers`] from [`Issuers::from_sections`] (the config's `oidc` list),
//! call [`Issuers::start`] once inside the Tokio runtime (first fetch of every issuer's keys,
//! then a background refresh), and share the `Arc`. For each Basic login call
//! [`Issuers::login`] with the password first:
//!
//! * [`OidcCheck::NotAJwt`]: not a token of a configured issuer; try the other sources.
//! * [`OidcCheck::Valid`]: the login succeeded as [`FederatedLogin::user`].
//! * [`OidcCheck::Refused`]: a token of a configured issuer that failed a check: a failed
//!   login (401, throttled like a wrong password). Never fall back to other sources.
//! * [`OidcCheck::Unavailable`]: the issuer's keys could not be had yet. Fail closed, and
//!   answer as for an unavailable LDAP directory (the client's token may be fine; a 401 would
//!   send its owner looking for a mistake they did not make); do not count it as a failed
//!   login. The outage itself is logged once, here.
//!
//! [`Issuers::refresh_all`] re-reads every key set now (SIGHUP), [`Issuers::clear`] forgets
//! the cached tokens, [`Issuers::stats`] is for /metrics.

mod cache;
mod jwks;
mod settings;
mod stats;
mod verify;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use cache::TokenCache;
use jwks::{Fetch, IssuerKeys};
use stats::Health;
use verify::KeyChoice;

use crate::config::OidcSection;

pub use jwks::{MAX_JWKS_BYTES, MAX_KEYS};
pub use settings::{
    Claim, JwksSource, OidcConfigError, OidcSettings, DEFAULT_ALGORITHMS, DEFAULT_CACHE_CAPACITY, DEFAULT_FILE_REFRESH,
    DEFAULT_LEEWAY, DEFAULT_MIN_INTERVAL, DEFAULT_TIMEOUT, DEFAULT_URL_REFRESH, DEFAULT_USERNAME_CLAIM, MAX_LEEWAY,
};
pub use stats::{IssuerStats, OidcStats};
pub use verify::{Refusal, MAX_GROUPS, MAX_NAME_BYTES, MAX_TOKEN_BYTES};

/// A login an issuer's token proved. Cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct FederatedLogin {
    user: Arc<str>,
    groups: Arc<[String]>,
    issuer: Arc<str>,
    expires_at: SystemTime,
}

impl FederatedLogin {
    #[cfg(test)]
    pub(crate) fn new(user: &str, groups: Vec<String>, issuer: &str, expires_at: SystemTime) -> FederatedLogin {
        FederatedLogin {
            user: user.into(),
            groups: groups.into(),
            issuer: issuer.into(),
            expires_at,
        }
    }

    /// `username_prefix` + the username claim: `github:octo-org/app`.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The groups claim's values, each with `username_prefix` before it, sorted, without
    /// duplicates; empty without a `groups_claim`.
    pub fn groups(&self) -> &[String] {
        &self.groups
    }

    /// The issuer (`iss`) that signed the token.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The token's `exp`: the login is good until then.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }
}

impl fmt::Debug for FederatedLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FederatedLogin")
            .field("user", &self.user)
            .field("groups", &self.groups)
            .field("issuer", &self.issuer)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// What a password is, as far as the configured issuers can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OidcCheck {
    /// Not a JWT, or one whose (unverified) `iss` is no configured issuer: ask the other sources.
    NotAJwt,
    /// A good token.
    Valid(FederatedLogin),
    /// A token of a configured issuer that failed a check: a failed login, never a fallback.
    Refused(Refusal),
    /// A token of a configured issuer whose keys could not be had: fail closed.
    Unavailable,
}

enum Failure {
    Refused(Refusal),
    Unavailable,
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Failure {
        Failure::Refused(refusal)
    }
}

/// One trusted issuer.
struct Issuer {
    settings: OidcSettings,
    name: Arc<str>,
    keys: IssuerKeys,
    health: Health,
}

impl Issuer {
    async fn check(&self, token: &str, header: &verify::Header, now: u64) -> Result<(verify::Verified, u64), Failure> {
        let alg = verify::accepted_algorithm(&self.settings, header)?;
        let kid = header.kid.as_deref();
        let mut fetched = false;
        loop {
            // Read before the set: a set newer than its generation only makes the cache entry
            // stale early, never the other way round.
            let generation = self.keys.generation();
            let choice = match self.keys.current() {
                None => None,
                Some(set) => match verify::choose_keys(&set, kid, alg) {
                    KeyChoice::Found(keys) => {
                        let verified = verify::verify(&self.settings, token, alg, &keys, now)?;
                        return Ok((verified, generation));
                    }
                    KeyChoice::Refused(refusal) => return Err(refusal.into()),
                    KeyChoice::Missing(refusal) => Some(refusal),
                },
            };
            if fetched {
                return Err(choice.map_or(Failure::Unavailable, Failure::Refused));
            }
            // No keys yet, or none for this kid: maybe they were rotated. Fetch once, if the
            // rate limit allows.
            self.keys
                .refresh(
                    Fetch::Early {
                        seen_generation: generation,
                    },
                    &self.health,
                )
                .await;
            fetched = true;
        }
    }

    fn stats(&self) -> IssuerStats {
        self.health.snapshot(self.keys.key_count())
    }
}

/// Every configured issuer, and the cache of verified tokens. Share it via `Arc`.
pub struct Issuers {
    issuers: Vec<Arc<Issuer>>,
    by_name: HashMap<String, usize>,
    cache: TokenCache,
    /// The background refreshes, ended when this is dropped.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Issuers {
    /// No I/O: [`Issuers::start`] fetches the keys. An empty list is fine (every password is
    /// [`OidcCheck::NotAJwt`]).
    pub fn new(settings: Vec<OidcSettings>) -> Issuers {
        let issuers: Vec<Arc<Issuer>> = settings
            .into_iter()
            .map(|settings| {
                let source = settings.source.to_string();
                Arc::new(Issuer {
                    name: settings.issuer.as_str().into(),
                    keys: IssuerKeys::new(settings.source.clone(), settings.min_interval),
                    health: Health::new(&settings.issuer, &source),
                    settings,
                })
            })
            .collect();
        let by_name = issuers
            .iter()
            .enumerate()
            .map(|(index, issuer)| (issuer.settings.issuer.clone(), index))
            .collect();
        Issuers {
            issuers,
            by_name,
            cache: TokenCache::new(DEFAULT_CACHE_CAPACITY),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// Checks the config's `[[oidc]]` sections ([`OidcSettings::from_sections`]) and builds.
    pub fn from_sections(sections: &[OidcSection]) -> Result<Issuers, OidcConfigError> {
        Ok(Issuers::new(OidcSettings::from_sections(sections)?))
    }

    /// At most `capacity` verified tokens are cached (0: none, every request checks a signature).
    pub fn with_cache_capacity(mut self, capacity: usize) -> Issuers {
        self.cache = TokenCache::new(capacity);
        self
    }

    /// Fetches every issuer's keys (concurrently, each within its `timeout`) and starts their
    /// refresh in the background. An issuer whose keys cannot be had is logged as a warning;
    /// its logins are [`OidcCheck::Unavailable`] until the keys arrive. Needs a Tokio runtime.
    pub async fn start(self) -> Arc<Issuers> {
        let issuers = Arc::new(self);
        let mut first = tokio::task::JoinSet::new();
        for issuer in &issuers.issuers {
            let issuer = Arc::clone(issuer);
            first.spawn(async move { issuer.keys.refresh(Fetch::Now, &issuer.health).await });
        }
        while first.join_next().await.is_some() {}
        let mut tasks = issuers.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        for issuer in &issuers.issuers {
            tasks.push(tokio::spawn(keep_fresh(Arc::downgrade(issuer))).abort_handle());
        }
        drop(tasks);
        issuers
    }

    /// Checks `password` as a token of one of the issuers. The `-u` user name plays no part.
    pub async fn login(&self, password: &str) -> OidcCheck {
        if self.issuers.is_empty() || !verify::may_be_jws(password) {
            return OidcCheck::NotAJwt;
        }
        let now = unix_now();
        let key = self.cache.key(password);
        if let Some((index, login)) = self.cache.get(&key, now, |index| self.issuers[index].keys.generation()) {
            Health::count(&self.issuers[index].health.cache_hits);
            return OidcCheck::Valid(login);
        }
        let Some(peeked) = verify::peek(password) else {
            return OidcCheck::NotAJwt;
        };
        let Some(&index) = self.by_name.get(&peeked.issuer) else {
            return OidcCheck::NotAJwt;
        };
        let issuer = &self.issuers[index];
        match issuer.check(password, &peeked.header, now).await {
            Ok((verified, generation)) => {
                Health::count(&issuer.health.verified);
                let login = FederatedLogin {
                    user: verified.user.into(),
                    groups: verified.groups.into(),
                    issuer: Arc::clone(&issuer.name),
                    expires_at: verified.expires_at,
                };
                if verified.cache_until > now {
                    self.cache
                        .insert(key, login.clone(), verified.cache_until, index, generation);
                }
                OidcCheck::Valid(login)
            }
            Err(Failure::Refused(refusal)) => {
                Health::count(&issuer.health.refused);
                tracing::debug!(issuer = %issuer.name, "OIDC: token refused: {refusal}");
                OidcCheck::Refused(refusal)
            }
            Err(Failure::Unavailable) => {
                Health::count(&issuer.health.unavailable);
                OidcCheck::Unavailable
            }
        }
    }

    /// Fetches every issuer's keys now, whatever the schedule and rate limit (SIGHUP).
    pub async fn refresh_all(&self) {
        let mut all = tokio::task::JoinSet::new();
        for issuer in &self.issuers {
            let issuer = Arc::clone(issuer);
            all.spawn(async move { issuer.keys.refresh(Fetch::Now, &issuer.health).await });
        }
        while all.join_next().await.is_some() {}
    }

    /// Forgets every cached token: the next request of each checks its signature again.
    pub fn clear(&self) {
        self.cache.clear();
    }

    pub fn stats(&self) -> OidcStats {
        OidcStats {
            cached_tokens: self.cache.len(),
            issuers: self.issuers.iter().map(|issuer| issuer.stats()).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    pub fn settings(&self) -> impl Iterator<Item = &OidcSettings> {
        self.issuers.iter().map(|issuer| &issuer.settings)
    }

    /// Every issuer's [`OidcSettings::warnings`].
    pub fn warnings(&self) -> Vec<String> {
        self.settings().flat_map(OidcSettings::warnings).collect()
    }
}

impl Drop for Issuers {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            task.abort();
        }
    }
}

impl fmt::Debug for Issuers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issuers")
            .field("issuers", &self.settings().collect::<Vec<_>>())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Fetches on the schedule: every `jwks_refresh`, or every `jwks_min_interval` while the keys
/// cannot be had (whichever is sooner), until the issuer is dropped.
async fn keep_fresh(issuer: Weak<Issuer>) {
    loop {
        let wait = match issuer.upgrade() {
            None => return,
            Some(issuer) if issuer.health.is_up() => issuer.settings.refresh,
            Some(issuer) => issuer.settings.refresh.min(issuer.settings.min_interval),
        };
        tokio::time::sleep(wait).await;
        let Some(issuer) = issuer.upgrade() else {
            return;
        };
        issuer.keys.refresh(Fetch::Now, &issuer.health).await;
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(issuer: &str) -> OidcSection {
        OidcSection {
            issuer: issuer.into(),
            audience: "registry.example.com".into(),
            // Port 9 (discard) on loopback: nothing listens, so every fetch fails at once.
            jwks_url: Some("http://127.0.0.1:9/jwks".into()),
            username_prefix: Some("ci:".into()),
            ..OidcSection::default()
        }
    }

    #[test]
    fn issuers_and_their_futures_can_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<Issuers>();
        send_sync::<FederatedLogin>();
        let issuers = Issuers::from_sections(&[section("https://a")]).unwrap();
        send(&issuers.login("x"));
        send(&issuers.refresh_all());
        send(&Issuers::new(vec![]).start());
    }

    #[tokio::test]
    async fn passwords_and_strangers_tokens_are_not_ours() {
        let issuers = Issuers::from_sections(&[section("https://a")]).unwrap().start().await;
        let b64 = |json: &str| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, json);
        let stranger = format!("{}.{}.c2ln", b64(r#"{"alg":"RS256"}"#), b64(r#"{"iss":"https://b"}"#));
        for password in ["hunter2", "a.b.c", stranger.as_str()] {
            assert_eq!(issuers.login(password).await, OidcCheck::NotAJwt, "{password}");
        }
        let ours = format!("{}.{}.c2ln", b64(r#"{"alg":"RS256"}"#), b64(r#"{"iss":"https://a"}"#));
        assert_eq!(
            issuers.login(&ours).await,
            OidcCheck::Unavailable,
            "no keys: fail closed"
        );
        let stats = issuers.stats();
        let a = &stats.issuers[0];
        assert!(!a.up);
        assert_eq!((a.keys, a.unavailable, a.refused, a.verified), (0, 1, 0, 0), "{a:?}");
        assert!(a.fetch_errors >= 1, "{a:?}");
        assert_eq!(Issuers::new(vec![]).login(&ours).await, OidcCheck::NotAJwt);
    }

    #[tokio::test]
    async fn refused_algorithms_are_refused_before_any_key_is_needed() {
        let issuers = Issuers::from_sections(&[section("https://a")]).unwrap();
        let b64 = |json: &str| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, json);
        for alg in ["none", "HS256", "ES384", "rs256"] {
            let token = format!(
                "{}.{}.c2ln",
                b64(&format!(r#"{{"alg":"{alg}"}}"#)),
                b64(r#"{"iss":"https://a"}"#)
            );
            assert!(
                matches!(issuers.login(&token).await, OidcCheck::Refused(Refusal::Algorithm(_))),
                "{alg}"
            );
        }
        let crit = format!(
            "{}.{}.c2ln",
            b64(r#"{"alg":"RS256","crit":["exp"]}"#),
            b64(r#"{"iss":"https://a"}"#)
        );
        assert!(matches!(
            issuers.login(&crit).await,
            OidcCheck::Refused(Refusal::Critical(_))
        ));
    }
}
