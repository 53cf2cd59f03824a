//! Password checks: bcrypt at most once per (user, password, htpasswd entry) while the success
//! stays cached, in a bounded queue with a deadline, behind the failed-login throttle.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tokio::sync::{watch, Semaphore};

use super::login_cache::{CacheKey, LoginCache};
use super::throttle::{LimitKind, LoginThrottle};
use super::{Htpasswd, MAX_USER_NAME_BYTES};

/// Checks waiting for a bcrypt place at most (a flood beyond it is refused at once).
pub(crate) const MAX_BCRYPT_QUEUE: usize = 1024;

/// How long a check waits for a bcrypt place before it is answered without one: well under the
/// 30 s `proxy_read_timeout` of the nginx snippet, so the answer comes before nginx gives up.
pub(crate) const BCRYPT_QUEUE_DEADLINE: Duration = Duration::from_secs(10);

type HmacSha256 = Hmac<Sha256>;

/// What became of a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Login {
    /// The password is right.
    Accepted,
    /// A wrong password, or a user who is unknown or disabled (one bcrypt, as for any check).
    Refused,
    /// A user name longer than [`MAX_USER_NAME_BYTES`]: refused before anything was stored.
    NameTooLong,
    /// Too many failed logins: refused without checking the password.
    Limited(LimitKind),
    /// Not checked, the bcrypt queue being full or this check having waited until its deadline.
    Overloaded(Overload),
}

impl Login {
    pub(crate) fn is_accepted(self) -> bool {
        self == Login::Accepted
    }
}

/// Why a check was answered without a bcrypt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overload {
    QueueFull,
    Deadline,
}

impl Overload {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Overload::QueueFull => "queue_full",
            Overload::Deadline => "deadline",
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Overload::QueueFull => "the bcrypt queue is full",
            Overload::Deadline => "no bcrypt place came free before the deadline",
        }
    }
}

/// Checks passwords against an [`Htpasswd`], running bcrypt at most once per
/// (user, password, htpasswd entry) while the success stays cached. Share it via `Arc`.
pub struct Verifier {
    shared: Arc<VerifierState>,
}

struct VerifierState {
    /// HMAC keyed with a random per-process secret; cloned for every key derivation.
    keyed_mac: HmacSha256,
    successes: Mutex<LoginCache>,
    /// Checks queued or being computed, so concurrent requests with the same credentials wait for
    /// one bcrypt. Lock order: `in_flight` before `successes` and the throttle's lock.
    in_flight: Mutex<HashMap<CacheKey, Arc<Check>>>,
    bcrypt_permits: Arc<Semaphore>,
    throttle: Option<Arc<LoginThrottle>>,
    queue_deadline: Duration,
    max_queue: usize,
    bcrypt_checks: AtomicU64,
    cache_hits: AtomicU64,
    shared_waits: AtomicU64,
    bcrypt_running: AtomicUsize,
    bcrypt_running_peak: AtomicUsize,
    queued: AtomicUsize,
    abandoned: AtomicU64,
    overloaded: [AtomicU64; 2],
    limited: [AtomicU64; 3],
    long_names: AtomicU64,
}

/// One queued or running check, shared by the requests waiting for it.
struct Check {
    /// `closed()` tells when every waiting request has gone away.
    outcome: watch::Sender<Option<CheckOutcome>>,
    user: String,
    /// Addresses of the requests that asked (the first is the one admitted by the throttle), each
    /// once, so that a failure counts for each, also when they have gone away.
    clients: Mutex<Vec<Option<IpAddr>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckOutcome {
    Verified(bool),
    Deadline,
}

/// Addresses remembered per check; more requests with the same credentials still share it.
const MAX_CLIENTS_PER_CHECK: usize = 64;

impl Verifier {
    /// `cache_capacity` successful checks are remembered (0 disables the cache); at most
    /// `max_concurrent_bcrypt` bcrypt computations run at once (at least 1). No failed-login
    /// limits (see [`Verifier::with_limits`]).
    pub fn new(cache_capacity: usize, max_concurrent_bcrypt: usize) -> Verifier {
        Verifier::with_limits(
            cache_capacity,
            max_concurrent_bcrypt,
            None,
            BCRYPT_QUEUE_DEADLINE,
            MAX_BCRYPT_QUEUE,
        )
    }

    /// As [`Verifier::new`]; a check that needs a bcrypt must first be admitted by `throttle`,
    /// waits at most `queue_deadline` for a bcrypt place, and is refused at once when `max_queue`
    /// checks are waiting already.
    pub(crate) fn with_limits(
        cache_capacity: usize,
        max_concurrent_bcrypt: usize,
        throttle: Option<Arc<LoginThrottle>>,
        queue_deadline: Duration,
        max_queue: usize,
    ) -> Verifier {
        let mut secret = [0u8; 64];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        Verifier {
            shared: Arc::new(VerifierState {
                keyed_mac: <HmacSha256 as hmac::digest::KeyInit>::new(&secret.into()),
                successes: Mutex::new(LoginCache::new(cache_capacity)),
                in_flight: Mutex::new(HashMap::new()),
                bcrypt_permits: Arc::new(Semaphore::new(max_concurrent_bcrypt.max(1))),
                throttle,
                queue_deadline,
                max_queue,
                bcrypt_checks: AtomicU64::new(0),
                cache_hits: AtomicU64::new(0),
                shared_waits: AtomicU64::new(0),
                bcrypt_running: AtomicUsize::new(0),
                bcrypt_running_peak: AtomicUsize::new(0),
                queued: AtomicUsize::new(0),
                abandoned: AtomicU64::new(0),
                overloaded: Default::default(),
                limited: Default::default(),
                long_names: AtomicU64::new(0),
            }),
        }
    }

    /// Whether `password` is `user`'s password ([`Verifier::login`] without a client address).
    pub async fn verify(&self, htpasswd: &Arc<Htpasswd>, user: &str, password: &str) -> bool {
        self.login(htpasswd, user, password, None).await.is_accepted()
    }

    /// Checks `user`'s `password`, sent from `client`. A cached success answers at once; a check
    /// of the same credentials already queued or running is waited for; otherwise, once the
    /// throttle admits it, a new check waits for a bcrypt place on the blocking thread pool. The
    /// throttle learns every outcome, also when the request went away before it.
    pub(crate) async fn login(
        &self,
        htpasswd: &Arc<Htpasswd>,
        user: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Login {
        let shared = &self.shared;
        if user.len() > MAX_USER_NAME_BYTES {
            shared.long_names.fetch_add(1, Ordering::Relaxed);
            return Login::NameTooLong;
        }
        let (hash, user_exists) = htpasswd.hash_to_check(user);
        let key = shared.cache_key(user, password, hash);
        let mut outcome = {
            let mut in_flight = lock(&shared.in_flight);
            // Checked under the `in_flight` lock: a finishing computation caches its success
            // before it leaves `in_flight`, so we see one or the other and never run twice.
            if lock(&shared.successes).touch(&key) {
                shared.cache_hits.fetch_add(1, Ordering::Relaxed);
                return if user_exists { Login::Accepted } else { Login::Refused };
            }
            match in_flight.get(&key) {
                Some(check) => {
                    shared.shared_waits.fetch_add(1, Ordering::Relaxed);
                    check.add_client(client);
                    // Subscribed under the lock: an abandoned check leaves `in_flight` under it too.
                    check.outcome.subscribe()
                }
                None => {
                    if let Some(throttle) = &shared.throttle {
                        if let Err(limit) = throttle.admit(user, client) {
                            shared.limited[limit as usize].fetch_add(1, Ordering::Relaxed);
                            return Login::Limited(limit);
                        }
                    }
                    if shared.queued.load(Ordering::SeqCst) >= shared.max_queue {
                        shared.overloaded[Overload::QueueFull as usize].fetch_add(1, Ordering::Relaxed);
                        if let Some(throttle) = &shared.throttle {
                            throttle.give_back(user, client);
                        }
                        return Login::Overloaded(Overload::QueueFull);
                    }
                    let (sender, receiver) = watch::channel(None);
                    let check = Arc::new(Check {
                        outcome: sender,
                        user: user.to_string(),
                        clients: Mutex::new(vec![client]),
                    });
                    in_flight.insert(key, Arc::clone(&check));
                    // Counted here, not in the task: a burst sees its own queue at once.
                    let queued = Queued::new(shared);
                    tokio::spawn(run_check(queued, key, check, password.to_string(), hash.to_string()));
                    receiver
                }
            }
        };
        let published = match outcome.wait_for(Option::is_some).await {
            Ok(published) => *published,
            // The check vanished (runtime shutting down): fail closed.
            Err(_) => None,
        };
        match published {
            Some(CheckOutcome::Verified(true)) if user_exists => Login::Accepted,
            Some(CheckOutcome::Deadline) => Login::Overloaded(Overload::Deadline),
            _ => Login::Refused,
        }
    }

    /// Same as [`Verifier::verify`], computing on the calling thread (for the CLI). Shares the
    /// cache but not the concurrency limit, the queue or the throttle.
    pub fn verify_blocking(&self, htpasswd: &Htpasswd, user: &str, password: &str) -> bool {
        if user.len() > MAX_USER_NAME_BYTES {
            return false;
        }
        let (hash, user_exists) = htpasswd.hash_to_check(user);
        let key = self.shared.cache_key(user, password, hash);
        if lock(&self.shared.successes).touch(&key) {
            self.shared.cache_hits.fetch_add(1, Ordering::Relaxed);
            return user_exists;
        }
        let verified = self.shared.run_bcrypt(password, hash);
        if verified {
            lock(&self.shared.successes).insert(key);
        }
        user_exists && verified
    }

    /// bcrypt computations actually run, including those against the dummy hash.
    pub fn bcrypt_checks(&self) -> u64 {
        self.shared.bcrypt_checks.load(Ordering::Relaxed)
    }

    /// Checks answered from the cache of successes.
    pub(crate) fn cache_hits(&self) -> u64 {
        self.shared.cache_hits.load(Ordering::Relaxed)
    }

    /// Checks that waited for an identical check already running instead of starting their own.
    pub(crate) fn shared_waits(&self) -> u64 {
        self.shared.shared_waits.load(Ordering::Relaxed)
    }

    /// Successful checks currently remembered.
    pub(crate) fn cached_successes(&self) -> usize {
        lock(&self.shared.successes).len()
    }

    /// bcrypt computations running right now.
    pub(crate) fn bcrypt_in_progress(&self) -> usize {
        self.shared.bcrypt_running.load(Ordering::Relaxed)
    }

    /// Checks waiting for a bcrypt place right now.
    pub(crate) fn queue_length(&self) -> usize {
        self.shared.queued.load(Ordering::SeqCst)
    }

    /// Checks that left the queue without a bcrypt because every request waiting for them went
    /// away.
    pub(crate) fn abandoned(&self) -> u64 {
        self.shared.abandoned.load(Ordering::Relaxed)
    }

    /// Checks answered without a bcrypt for `why`.
    pub(crate) fn overloaded(&self, why: Overload) -> u64 {
        self.shared.overloaded[why as usize].load(Ordering::Relaxed)
    }

    /// Checks the throttle refused for `limit`.
    pub(crate) fn limited(&self, limit: LimitKind) -> u64 {
        self.shared.limited[limit as usize].load(Ordering::Relaxed)
    }

    /// Logins refused for a user name longer than [`MAX_USER_NAME_BYTES`].
    pub(crate) fn long_names(&self) -> u64 {
        self.shared.long_names.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("bcrypt_checks", &self.bcrypt_checks())
            .field("cache_hits", &self.cache_hits())
            .field("cached_successes", &self.cached_successes())
            .field("queue_length", &self.queue_length())
            .finish_non_exhaustive()
    }
}

impl VerifierState {
    fn cache_key(&self, user: &str, password: &str, hash: &str) -> CacheKey {
        let mut mac = self.keyed_mac.clone();
        // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
        for part in [user, password, hash] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    fn run_bcrypt(&self, password: &str, hash: &str) -> bool {
        self.bcrypt_checks.fetch_add(1, Ordering::Relaxed);
        let running = self.bcrypt_running.fetch_add(1, Ordering::SeqCst) + 1;
        self.bcrypt_running_peak.fetch_max(running, Ordering::SeqCst);
        let verified = matches!(bcrypt::verify(password, hash), Ok(true));
        self.bcrypt_running.fetch_sub(1, Ordering::SeqCst);
        verified
    }

    /// Removes `check` from `in_flight` if no request waits for it any more. Under the lock that
    /// new waiters subscribe under, so none can join a check that is going away.
    fn abandon_if_unwatched(&self, key: &CacheKey, check: &Arc<Check>) -> bool {
        let mut in_flight = lock(&self.in_flight);
        if check.outcome.receiver_count() > 0 {
            return false;
        }
        if in_flight.get(key).is_some_and(|current| Arc::ptr_eq(current, check)) {
            in_flight.remove(key);
        }
        self.abandoned.fetch_add(1, Ordering::Relaxed);
        true
    }
}

impl Check {
    fn add_client(&self, client: Option<IpAddr>) {
        let mut clients = lock(&self.clients);
        if clients.len() < MAX_CLIENTS_PER_CHECK && !clients.contains(&client) {
            clients.push(client);
        }
    }
}

/// Counts a check as queued until dropped.
struct Queued(Arc<VerifierState>);

impl Queued {
    fn new(shared: &Arc<VerifierState>) -> Queued {
        shared.queued.fetch_add(1, Ordering::SeqCst);
        Queued(Arc::clone(shared))
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits for a bcrypt place, runs one bcrypt for everyone waiting on `key`, caches a success,
/// tells the throttle, then publishes the outcome. Leaves the queue without a bcrypt when every
/// waiting request has gone away, and answers [`CheckOutcome::Deadline`] when no place came free in
/// time.
async fn run_check(queued: Queued, key: CacheKey, check: Arc<Check>, password: String, hash: String) {
    let shared = Arc::clone(&queued.0);
    // Leaves `in_flight` even if this task is dropped midway; waiters then see a closed channel.
    let registration = InFlightRegistration {
        shared: Arc::clone(&shared),
        key,
        check: Arc::clone(&check),
    };
    let acquire = Arc::clone(&shared.bcrypt_permits).acquire_owned();
    let deadline = tokio::time::sleep(shared.queue_deadline);
    tokio::pin!(acquire, deadline);
    let permit = loop {
        tokio::select! {
            biased;
            permit = &mut acquire => match permit {
                Ok(permit) => break permit,
                Err(_closed) => {
                    drop(registration);
                    check.outcome.send_replace(Some(CheckOutcome::Verified(false)));
                    return;
                }
            },
            () = check.outcome.closed() => {
                if shared.abandon_if_unwatched(&key, &check) {
                    return;
                }
                // Someone joined as the last one left: keep the place in the queue.
            }
            () = &mut deadline => {
                shared.overloaded[Overload::Deadline as usize].fetch_add(1, Ordering::Relaxed);
                // No bcrypt ran: the admitted request's checks are given back.
                if let (Some(throttle), Some(client)) = (&shared.throttle, lock(&check.clients).first().copied()) {
                    throttle.give_back(&check.user, client);
                }
                drop(registration);
                check.outcome.send_replace(Some(CheckOutcome::Deadline));
                return;
            }
        }
    };
    drop(queued);
    // The place came free after the last request left, before this task noticed.
    if shared.abandon_if_unwatched(&key, &check) {
        return;
    }
    let worker = Arc::clone(&shared);
    let verified = tokio::task::spawn_blocking(move || {
        // The permit lives as long as the computation, even if this task is dropped.
        let _permit = permit;
        worker.run_bcrypt(&password, &hash)
    })
    .await
    .unwrap_or(false);
    if verified {
        lock(&shared.successes).insert(key);
    }
    if let Some(throttle) = &shared.throttle {
        let clients = lock(&check.clients).clone();
        for client in clients {
            if verified {
                throttle.record_success(&check.user, client);
            } else {
                throttle.record_failure(&check.user, client);
            }
        }
    }
    drop(registration);
    check.outcome.send_replace(Some(CheckOutcome::Verified(verified)));
}

struct InFlightRegistration {
    shared: Arc<VerifierState>,
    key: CacheKey,
    check: Arc<Check>,
}

impl Drop for InFlightRegistration {
    fn drop(&mut self) {
        let mut in_flight = lock(&self.shared.in_flight);
        // A newer check of the same credentials may have taken the key since this one left.
        if in_flight
            .get(&self.key)
            .is_some_and(|current| Arc::ptr_eq(current, &self.check))
        {
            in_flight.remove(&self.key);
        }
    }
}

/// A panic elsewhere must not turn every later login into a panic; the guarded data stays
/// consistent enough (a cache and a set of running checks) to keep using.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::fixtures::*;
    use crate::identity::Credentials;

    fn new_runtime() -> tokio::runtime::Runtime {
        match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => panic!("{error}"),
        }
    }

    #[test]
    fn concurrent_identical_checks_run_one_bcrypt_then_hit_the_cache() {
        new_runtime().block_on(async {
            let users = htpasswd(&format!("alice:{}\n", cost4("alice-pw")));
            let verifier = Arc::new(Verifier::new(64, 4));
            let mut checks = Vec::new();
            for _ in 0..100 {
                let verifier = Arc::clone(&verifier);
                let users = Arc::clone(&users);
                checks.push(tokio::spawn(async move {
                    verifier.verify(&users, "alice", "alice-pw").await
                }));
            }
            for check in checks {
                assert!(matches!(check.await, Ok(true)));
            }
            assert_eq!(verifier.bcrypt_checks(), 1);
            assert_eq!(verifier.cache_hits() + verifier.shared_waits(), 99);
            assert!(verifier.verify(&users, "alice", "alice-pw").await);
            assert_eq!(verifier.bcrypt_checks(), 1);
            assert_eq!(verifier.cache_hits() + verifier.shared_waits(), 100);
            assert_eq!(verifier.cached_successes(), 1);
            assert_eq!(verifier.bcrypt_in_progress(), 0);
        });
    }

    #[test]
    fn wrong_passwords_and_unknown_users_cost_a_bcrypt_every_time() {
        new_runtime().block_on(async {
            let users = htpasswd(&format!("alice:{}\n", cost4("alice-pw")));
            let verifier = Verifier::new(64, 4);
            for attempt in 1..=3 {
                assert!(!verifier.verify(&users, "alice", "wrong").await);
                assert_eq!(verifier.bcrypt_checks(), attempt);
            }
            for attempt in 4..=6 {
                assert!(!verifier.verify(&users, "mallory", "alice-pw").await);
                assert_eq!(verifier.bcrypt_checks(), attempt);
            }
            // Same for reserved and odd names, which never exist.
            assert!(!verifier.verify(&users, "anonymous", "").await);
            assert!(!verifier.verify(&users, "", "").await);
            assert_eq!(verifier.bcrypt_checks(), 8);
            assert_eq!(verifier.cache_hits(), 0);
            assert_eq!(verifier.cached_successes(), 0);
            // Passwords differing past bcrypt's 72 bytes are the same password, as in Apache.
            assert!(verifier.verify(&users, "alice", "alice-pw").await);
            assert!(!verifier.verify(&users, "alice", "alice-pw ").await);
            assert!(!verifier.verify(&users, "alice", "alice-p").await);
        });
    }

    #[test]
    fn a_changed_entry_invalidates_its_cached_success() {
        new_runtime().block_on(async {
            let verifier = Verifier::new(64, 4);
            let before = htpasswd(&format!("alice:{}\n{APACHE_CAROL}\n", cost4("old-pw")));
            assert!(verifier.verify(&before, "alice", "old-pw").await);
            assert!(verifier.verify(&before, "carol", CAROL_PASSWORD).await);
            assert_eq!(verifier.bcrypt_checks(), 2);

            // Same password, new salt: a new bcrypt, even though the answer is the same.
            let rehashed = htpasswd(&format!("alice:{}\n{APACHE_CAROL}\n", cost4("old-pw")));
            assert!(verifier.verify(&rehashed, "alice", "old-pw").await);
            assert_eq!(verifier.bcrypt_checks(), 3);
            // carol's entry did not change: still cached.
            assert!(verifier.verify(&rehashed, "carol", CAROL_PASSWORD).await);
            assert_eq!(verifier.bcrypt_checks(), 3);

            // New password: the old one fails at once, and costs a bcrypt.
            let changed = htpasswd(&format!("alice:{}\n", cost4("new-pw")));
            assert!(!verifier.verify(&changed, "alice", "old-pw").await);
            assert_eq!(verifier.bcrypt_checks(), 4);
            assert!(verifier.verify(&changed, "alice", "new-pw").await);
            // Removed user: the cached success does not apply.
            assert!(!verifier.verify(&changed, "carol", CAROL_PASSWORD).await);
            assert_eq!(verifier.bcrypt_checks(), 6);
        });
    }

    #[test]
    fn cache_never_grows_past_capacity_and_keeps_recent_entries() {
        let verifier = Verifier::new(3, 1);
        let mut text = String::new();
        for user in ["u0", "u1", "u2", "u3", "u4"] {
            text.push_str(&format!("{user}:{}\n", cost4(user)));
        }
        let users = htpasswd(&text);
        for user in ["u0", "u1", "u2"] {
            assert!(verifier.verify_blocking(&users, user, user));
        }
        assert_eq!(verifier.cached_successes(), 3);
        // u0 becomes the most recently used, so u1 is the one evicted next.
        assert!(verifier.verify_blocking(&users, "u0", "u0"));
        assert_eq!(verifier.cache_hits(), 1);
        for user in ["u3", "u4"] {
            assert!(verifier.verify_blocking(&users, user, user));
            assert_eq!(verifier.cached_successes(), 3);
        }
        let checks = verifier.bcrypt_checks();
        assert!(verifier.verify_blocking(&users, "u0", "u0"));
        assert_eq!(verifier.bcrypt_checks(), checks);
        assert!(verifier.verify_blocking(&users, "u1", "u1"));
        assert_eq!(verifier.bcrypt_checks(), checks + 1);
        assert_eq!(verifier.cached_successes(), 3);
    }

    #[test]
    fn zero_capacity_disables_the_cache() {
        let verifier = Verifier::new(0, 1);
        let users = htpasswd(&format!("alice:{}\n", cost4("pw")));
        assert!(verifier.verify_blocking(&users, "alice", "pw"));
        assert!(verifier.verify_blocking(&users, "alice", "pw"));
        assert_eq!(verifier.bcrypt_checks(), 2);
        assert_eq!(verifier.cached_successes(), 0);
    }

    #[test]
    fn blocking_and_async_checks_share_the_cache() {
        new_runtime().block_on(async {
            let users = htpasswd(&format!("{APACHE_DAVE}\n"));
            let verifier = Verifier::new(8, 2);
            assert!(verifier.verify_blocking(&users, "dave", DAVE_PASSWORD));
            assert!(verifier.verify(&users, "dave", DAVE_PASSWORD).await);
            assert_eq!(verifier.bcrypt_checks(), 1);
            assert_eq!(verifier.cache_hits(), 1);
        });
    }

    #[test]
    fn concurrent_bcrypt_is_capped() {
        new_runtime().block_on(async {
            let cost8 = match bcrypt::hash("pw", 8) {
                Ok(hash) => hash,
                Err(error) => panic!("{error}"),
            };
            let users = htpasswd(&format!("alice:{cost8}\n"));
            let verifier = Arc::new(Verifier::new(8, 2));
            let mut checks = Vec::new();
            for attempt in 0..8 {
                let verifier = Arc::clone(&verifier);
                let users = Arc::clone(&users);
                checks.push(tokio::spawn(async move {
                    verifier.verify(&users, "alice", &format!("wrong{attempt}")).await
                }));
            }
            for check in checks {
                assert!(matches!(check.await, Ok(false)));
            }
            assert_eq!(verifier.bcrypt_checks(), 8);
            let peak = verifier.shared.bcrypt_running_peak.load(Ordering::SeqCst);
            assert!((1..=2).contains(&peak), "peak {peak}");
        });
    }

    /// Yields to the runtime until `condition` holds; fails after 20 s.
    async fn until(what: &str, condition: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !condition() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// A hash whose bcrypt keeps the only bcrypt place busy while a test queues checks behind it.
    fn slow_hash(password: &str) -> String {
        match bcrypt::hash(password, 11) {
            Ok(hash) => hash,
            Err(error) => panic!("{error}"),
        }
    }

    const CLIENT: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7)));
    const OTHER_CLIENT: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1)));

    fn spawn_login(
        verifier: &Arc<Verifier>,
        users: &Arc<Htpasswd>,
        user: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> tokio::task::JoinHandle<Login> {
        let (verifier, users) = (Arc::clone(verifier), Arc::clone(users));
        let (user, password) = (user.to_string(), password.to_string());
        tokio::spawn(async move { verifier.login(&users, &user, &password, client).await })
    }

    #[test]
    fn checks_every_request_abandoned_leave_the_queue_without_a_bcrypt() {
        new_runtime().block_on(async {
            let users = htpasswd(&format!("slow:{}\n", slow_hash("slow-pw")));
            let verifier = Arc::new(Verifier::new(8, 1));
            let busy = spawn_login(&verifier, &users, "slow", "wrong", None);
            until("the slow check to run", || verifier.bcrypt_in_progress() == 1).await;
            // Requests queue behind it, then their clients hang up (hyper drops their futures).
            let waiting: Vec<_> = (0..20)
                .map(|i| spawn_login(&verifier, &users, &format!("ghost{i}"), "x", None))
                .collect();
            until("20 checks queued", || verifier.queue_length() == 20).await;
            for request in &waiting {
                request.abort();
            }
            until("the queue to empty", || verifier.queue_length() == 0).await;
            assert_eq!(verifier.abandoned(), 20);
            assert!(matches!(busy.await, Ok(Login::Refused)));
            assert_eq!(verifier.bcrypt_checks(), 1, "no abandoned check ran");
            until("in_flight to empty", || lock(&verifier.shared.in_flight).is_empty()).await;
        });
    }

    #[test]
    fn a_check_kept_by_one_request_survives_the_other_leaving() {
        new_runtime().block_on(async {
            let users = htpasswd(&format!("slow:{}\nalice:{}\n", slow_hash("slow-pw"), cost4("pw")));
            let verifier = Arc::new(Verifier::new(8, 1));
            let busy = spawn_login(&verifier, &users, "slow", "wrong", None);
            until("the slow check to run", || verifier.bcrypt_in_progress() == 1).await;
            let first = spawn_login(&verifier, &users, "alice", "pw", CLIENT);
            until("alice's check queued", || verifier.queue_length() == 1).await;
            let second = spawn_login(&verifier, &users, "alice", "pw", OTHER_CLIENT);
            until("the second request to join", || verifier.shared_waits() == 1).await;
            first.abort();
            assert!(matches!(second.await, Ok(Login::Accepted)));
            assert!(matches!(busy.await, Ok(Login::Refused)));
            assert_eq!((verifier.bcrypt_checks(), verifier.abandoned()), (2, 0));
        });
    }

    #[test]
    fn a_check_still_waiting_at_its_deadline_is_answered_without_a_bcrypt() {
        new_runtime().block_on(async {
            let users = htpasswd(&format!("slow:{}\nalice:{}\n", slow_hash("slow-pw"), cost4("pw")));
            let throttle = Arc::new(LoginThrottle::new(100));
            let verifier = Arc::new(Verifier::with_limits(
                8,
                1,
                Some(Arc::clone(&throttle)),
                Duration::from_millis(50),
                MAX_BCRYPT_QUEUE,
            ));
            let busy = spawn_login(&verifier, &users, "slow", "wrong", None);
            until("the slow check to run", || verifier.bcrypt_in_progress() == 1).await;
            let entries = throttle.tracked_entries();
            let late = verifier.login(&users, "alice", "pw", CLIENT).await;
            assert_eq!(late, Login::Overloaded(Overload::Deadline));
            assert_eq!(verifier.overloaded(Overload::Deadline), 1);
            // No guess was made: the throttle got its checks back.
            assert_eq!(throttle.tracked_entries(), entries);
            assert!(matches!(busy.await, Ok(Login::Refused)));
            assert_eq!(verifier.bcrypt_checks(), 1);
            assert_eq!(verifier.queue_length(), 0);
        });
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        new_runtime().block_on(async {
            let users = htpasswd(&format!("slow:{}\n", slow_hash("slow-pw")));
            let verifier = Arc::new(Verifier::with_limits(8, 1, None, BCRYPT_QUEUE_DEADLINE, 2));
            let busy = spawn_login(&verifier, &users, "slow", "wrong", None);
            until("the slow check to run", || verifier.bcrypt_in_progress() == 1).await;
            let queued: Vec<_> = (0..2)
                .map(|i| spawn_login(&verifier, &users, &format!("ghost{i}"), "x", None))
                .collect();
            until("2 checks queued", || verifier.queue_length() == 2).await;
            let refused = verifier.login(&users, "ghost9", "x", None).await;
            assert_eq!(refused, Login::Overloaded(Overload::QueueFull));
            assert_eq!(verifier.overloaded(Overload::QueueFull), 1);
            for request in queued {
                assert!(matches!(request.await, Ok(Login::Refused)));
            }
            assert!(matches!(busy.await, Ok(Login::Refused)));
            assert_eq!(verifier.bcrypt_checks(), 3);
        });
    }

    #[test]
    fn long_user_names_are_refused_before_anything_is_stored() {
        new_runtime().block_on(async {
            let users = htpasswd(&format!("alice:{}\n", cost4("pw")));
            let throttle = Arc::new(LoginThrottle::new(100));
            let verifier = Verifier::with_limits(8, 1, Some(Arc::clone(&throttle)), BCRYPT_QUEUE_DEADLINE, 8);
            for length in [MAX_USER_NAME_BYTES + 1, 6000, 100_000] {
                let name = "n".repeat(length);
                assert_eq!(verifier.login(&users, &name, "pw", CLIENT).await, Login::NameTooLong);
                assert!(!verifier.verify_blocking(&users, &name, "pw"));
            }
            assert_eq!(verifier.long_names(), 3);
            assert_eq!((verifier.bcrypt_checks(), throttle.tracked_entries()), (0, 0));
            assert!(lock(&verifier.shared.in_flight).is_empty());
            // 256 bytes is a name like any other.
            let name = "n".repeat(MAX_USER_NAME_BYTES);
            assert_eq!(verifier.login(&users, &name, "pw", CLIENT).await, Login::Refused);
            assert_eq!(verifier.bcrypt_checks(), 1);
            assert!(throttle.tracked_entries() > 0);
        });
    }

    #[test]
    fn the_throttle_refuses_guesses_before_their_bcrypt_but_not_cached_logins() {
        new_runtime().block_on(async {
            let users = htpasswd(&format!("alice:{}\n", cost4("pw")));
            let throttle = Arc::new(LoginThrottle::new(100));
            let verifier = Verifier::with_limits(8, 1, Some(Arc::clone(&throttle)), BCRYPT_QUEUE_DEADLINE, 8);
            let mut outcomes = Vec::new();
            for guess in 0..10 {
                outcomes.push(verifier.login(&users, "alice", &format!("guess{guess}"), CLIENT).await);
            }
            let burst = crate::identity::throttle::PER_ADDRESS_AND_USER.burst as usize;
            assert!(outcomes[..burst].iter().all(|o| *o == Login::Refused), "{outcomes:?}");
            assert!(
                outcomes[burst..]
                    .iter()
                    .all(|o| *o == Login::Limited(LimitKind::AddressAndUser)),
                "{outcomes:?}"
            );
            assert_eq!(verifier.bcrypt_checks(), burst as u64);
            assert_eq!(verifier.limited(LimitKind::AddressAndUser), 10 - burst as u64);
            assert!(throttle.delay("alice", CLIENT) > Duration::ZERO);
            // The real alice elsewhere gets in; after that, so does her cached login from the
            // guessing address.
            assert_eq!(
                verifier.login(&users, "alice", "pw", OTHER_CLIENT).await,
                Login::Accepted
            );
            assert_eq!(verifier.login(&users, "alice", "pw", CLIENT).await, Login::Accepted);
            assert_eq!(verifier.bcrypt_checks(), burst as u64 + 1);
        });
    }

    #[test]
    fn a_failure_counts_also_when_its_request_went_away() {
        new_runtime().block_on(async {
            let users = htpasswd(&format!("alice:{}\n", slow_hash("pw")));
            let throttle = Arc::new(LoginThrottle::new(100));
            let verifier = Arc::new(Verifier::with_limits(
                8,
                1,
                Some(Arc::clone(&throttle)),
                BCRYPT_QUEUE_DEADLINE,
                8,
            ));
            for guess in 0..crate::identity::throttle::FREE_FAILURES + 1 {
                let request = spawn_login(&verifier, &users, "alice", &format!("guess{guess}"), CLIENT);
                until("the check to run", || verifier.bcrypt_in_progress() == 1).await;
                request.abort();
                until("the check to end", || verifier.bcrypt_in_progress() == 0).await;
                until("in_flight to empty", || lock(&verifier.shared.in_flight).is_empty()).await;
            }
            assert_eq!(verifier.bcrypt_checks(), 4);
            assert_eq!(throttle.delay("alice", CLIENT), crate::identity::throttle::FIRST_DELAY);
        });
    }

    #[test]
    fn shared_types_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Verifier>();
        assert_send_sync::<Htpasswd>();
        assert_send_sync::<Credentials>();
    }
}
