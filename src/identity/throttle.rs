//! Slows down password guessing, in two ways.
//!
//! * **Delays.** After a few wrong passwords for the same user, or from the same client address,
//!   each further 401 is answered after a growing delay.
//! * **Limits by count over time.** Delays alone do not slow guessing in parallel: 100
//!   connections each wait out their own delay. So a password is only checked (a bcrypt) while the
//!   checks of the same user and address, of the same user, and of the same address stay within a
//!   budget ([`Limit`], a GCRA: `burst` checks at once, then one more every `interval`). A guess over
//!   budget is answered 401 without its password being checked.
//!
//! How the limits keep out guessers without locking out the real user:
//!
//! * Only checks that need a bcrypt are counted or limited. A login verified before (the login
//!   cache) and a login waiting for the same check already running pass before any limit, from any
//!   address: `docker compose pull` with the right password is never slowed.
//! * [`PER_ADDRESS_AND_USER`]: one address guessing one user's password, over any number of
//!   connections, gets as many checks as a single connection would.
//! * [`PER_USER`], across addresses: enforced only for an address that has had more than
//!   [`FORGIVEN_FAILURES`] checks of this user's password since its last correct one (remembered
//!   until the record is forgotten), i.e. that has failed for this user. The real user on an
//!   address that has not failed (or after a typo) is never held back by what an attacker does
//!   elsewhere. Every check is counted, so guesses spread over many addresses share one budget
//!   once each address is past its forgiven failure.
//! * [`PER_ADDRESS`], across users: one password tried on many user names. This one does hold back
//!   the other users behind the same address (a shared NAT) once that address has failed often;
//!   their cached logins still pass.
//! * A correct password resets its (user, address) budget and gives back the one check it took
//!   from the user's and the address's budgets. Checks that never ran (the bcrypt queue was past its
//!   deadline) are given back too; a request abandoned by its client keeps its checks counted.
//!
//! Memory is bounded whatever the names: records are keyed by a salted 128-bit hash of the user
//! name and by the client's address, so every record has the same size; at most `max_entries` are
//! kept (the least recently active go first), and a record idle for [`FORGET_AFTER`] is dropped.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Failures answered without delay (typos happen).
pub(crate) const FREE_FAILURES: u32 = 3;
/// Delay after the first failure beyond the free ones; it doubles with each further failure.
pub(crate) const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The delay never grows beyond this.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(5);
/// A user or address with no failure for this long starts again from zero.
pub(crate) const FORGET_AFTER: Duration = Duration::from_secs(10 * 60);

/// A budget of password checks: `burst` at once, then one more every `interval` (the generic
/// cell rate algorithm, GCRA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit {
    pub burst: u32,
    pub interval: Duration,
}

/// Checks of one user's password from one client address: 5, then 5 a minute.
pub(crate) const PER_ADDRESS_AND_USER: Limit = Limit {
    burst: 5,
    interval: Duration::from_secs(12),
};
/// Checks of one user's password from addresses that failed for that user: 10, then 10 a minute.
pub(crate) const PER_USER: Limit = Limit {
    burst: 10,
    interval: Duration::from_secs(6),
};
/// Checks of any user's password from one client address: 20, then 20 a minute.
pub(crate) const PER_ADDRESS: Limit = Limit {
    burst: 20,
    interval: Duration::from_secs(3),
};
/// Checks of a user's password from an address, since its last correct one, that do not yet
/// make [`PER_USER`] apply to that address (a typo).
pub(crate) const FORGIVEN_FAILURES: u32 = 1;

/// Which budget refused a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitKind {
    AddressAndUser,
    User,
    Address,
}

impl LimitKind {
    pub(crate) const ALL: [LimitKind; 3] = [LimitKind::AddressAndUser, LimitKind::User, LimitKind::Address];

    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            LimitKind::AddressAndUser => "address_and_user",
            LimitKind::User => "user",
            LimitKind::Address => "address",
        }
    }

    /// For the log.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            LimitKind::AddressAndUser => "too many failed logins for this user from this address",
            LimitKind::User => "too many failed logins for this user",
            LimitKind::Address => "too many failed logins from this address",
        }
    }
}

/// Failed-login bookkeeping per user, per client address, and per both. `Send + Sync`; share it
/// via `Arc`.
///
/// Usage: [`LoginThrottle::admit`] before a check that needs a bcrypt; then on a wrong password
/// `record_failure` and wait `delay` before answering 401; on a right one `record_success`; for a
/// check that never ran, `give_back`.
pub(crate) struct LoginThrottle {
    state: Mutex<ThrottleState>,
    /// Salt of the user-name hashes, so nobody can pick names that collide.
    salt: [u8; 16],
}

/// A user name, as a salted hash: 16 bytes whatever the name's length.
type NameHash = [u8; 16];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ThrottleKey {
    User(NameHash),
    Client(IpAddr),
    UserAtClient(NameHash, Option<IpAddr>),
}

impl ThrottleKey {
    fn limit(self) -> Limit {
        match self {
            ThrottleKey::User(_) => PER_USER,
            ThrottleKey::Client(_) => PER_ADDRESS,
            ThrottleKey::UserAtClient(..) => PER_ADDRESS_AND_USER,
        }
    }
}

struct FailureRecord {
    /// User and address records: wrong passwords, for the delay. (User, address) records: checks
    /// admitted since the last correct password, which tell an address that has failed for the
    /// user (until the record is forgotten) from one that has not.
    failures: u32,
    last_active: Instant,
    /// When the budget is full again (GCRA's theoretical arrival time); `None` when it is.
    full_at: Option<Instant>,
    /// Position in `ThrottleState::by_recency`.
    recency: u64,
}

struct ThrottleState {
    max_entries: usize,
    records: HashMap<ThrottleKey, FailureRecord>,
    /// Keys by the time of their last activity, oldest first: what gets evicted or forgotten.
    by_recency: BTreeMap<u64, ThrottleKey>,
    next_recency: u64,
}

/// Memory of one record, in both maps, with the hash table's control byte and spare capacity
/// (its load factor is at most 7/8), and the B-tree's nodes at their worst (half full).
const BYTES_PER_ENTRY: usize = (std::mem::size_of::<ThrottleKey>() + std::mem::size_of::<FailureRecord>() + 1) * 8 / 7
    + (std::mem::size_of::<u64>() + std::mem::size_of::<ThrottleKey>()) * 2;

impl LoginThrottle {
    /// Tracks at most `max_entries` records (at least 3: one check touches three), which takes at
    /// most about `max_entries` × [`LoginThrottle::bytes_per_entry`] bytes.
    pub(crate) fn new(max_entries: usize) -> LoginThrottle {
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        LoginThrottle {
            state: Mutex::new(ThrottleState {
                max_entries: max_entries.max(3),
                records: HashMap::new(),
                by_recency: BTreeMap::new(),
                next_recency: 0,
            }),
            salt,
        }
    }

    /// Memory per tracked record, whatever the length of the user name.
    #[cfg(test)]
    const fn bytes_per_entry() -> usize {
        BYTES_PER_ENTRY
    }

    /// Whether `user`'s password, sent from `client`, may be checked now; if so the check is
    /// counted in every budget. `Err` names the budget that is spent.
    pub(crate) fn admit(&self, user: &str, client: Option<IpAddr>) -> Result<(), LimitKind> {
        self.admit_at(user, client, Instant::now())
    }

    pub(crate) fn admit_at(&self, user: &str, client: Option<IpAddr>, now: Instant) -> Result<(), LimitKind> {
        let name = self.name_hash(user);
        let client = client.map(client_identity);
        let mut state = self.lock();
        state.forget_expired(now);
        let pair = ThrottleKey::UserAtClient(name, client);
        let user_key = ThrottleKey::User(name);
        let client_key = client.map(ThrottleKey::Client);
        let full_at = |key: &ThrottleKey| state.records.get(key).and_then(|r| r.full_at);
        let pair_full_at = full_at(&pair);
        if !PER_ADDRESS_AND_USER.allows(pair_full_at, now) {
            return Err(LimitKind::AddressAndUser);
        }
        let checks_here = state.records.get(&pair).map_or(0, |record| record.failures_at(now));
        let failed_here = checks_here > FORGIVEN_FAILURES;
        if failed_here && !PER_USER.allows(full_at(&user_key), now) {
            return Err(LimitKind::User);
        }
        if let Some(key) = &client_key {
            if !PER_ADDRESS.allows(full_at(key), now) {
                return Err(LimitKind::Address);
            }
        }
        for key in [Some(pair), Some(user_key), client_key].into_iter().flatten() {
            let record = state.touch(key, now);
            record.full_at = key.limit().charge(record.full_at, now);
        }
        let record = state.touch(pair, now);
        record.failures = record.failures.saturating_add(1);
        Ok(())
    }

    /// Gives back the checks [`LoginThrottle::admit`] counted for a check that never ran.
    pub(crate) fn give_back(&self, user: &str, client: Option<IpAddr>) {
        self.give_back_at(user, client, Instant::now());
    }

    pub(crate) fn give_back_at(&self, user: &str, client: Option<IpAddr>, now: Instant) {
        let name = self.name_hash(user);
        let client = client.map(client_identity);
        let mut state = self.lock();
        for key in [
            Some(ThrottleKey::UserAtClient(name, client)),
            Some(ThrottleKey::User(name)),
            client.map(ThrottleKey::Client),
        ]
        .into_iter()
        .flatten()
        {
            state.give_back(key, now);
        }
    }

    /// The delay to wait before answering 401 to a failed login by `user` from `client`: the
    /// larger of the user's and the address's, counting failures already recorded.
    pub(crate) fn delay(&self, user: &str, client: Option<IpAddr>) -> Duration {
        self.delay_at(user, client, Instant::now())
    }

    pub(crate) fn delay_at(&self, user: &str, client: Option<IpAddr>, now: Instant) -> Duration {
        let keys = self.keys(user, client);
        let state = self.lock();
        keys.iter()
            .filter_map(|key| state.records.get(key))
            .map(|record| delay_for_failures(record.failures_at(now)))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    pub(crate) fn record_failure(&self, user: &str, client: Option<IpAddr>) {
        self.record_failure_at(user, client, Instant::now());
    }

    pub(crate) fn record_failure_at(&self, user: &str, client: Option<IpAddr>, now: Instant) {
        let keys = self.keys(user, client);
        let mut state = self.lock();
        state.forget_expired(now);
        for key in keys {
            let record = state.touch(key, now);
            record.failures = record.failures_at(now).saturating_add(1);
        }
    }

    /// A correct password clears the user's failures and this address's budget for the user, and
    /// gives back the check it took from the user's and the address's budgets. The address keeps
    /// its failures: one valid account must not let a client reset its count while it guesses
    /// other users' passwords.
    pub(crate) fn record_success(&self, user: &str, client: Option<IpAddr>) {
        self.record_success_at(user, client, Instant::now());
    }

    pub(crate) fn record_success_at(&self, user: &str, client: Option<IpAddr>, now: Instant) {
        let mut state = self.lock();
        // The usual case, nobody failing: nothing to forget, no key to build.
        if state.records.is_empty() {
            return;
        }
        state.forget_expired(now);
        let name = self.name_hash(user);
        let client = client.map(client_identity);
        state.remove(&ThrottleKey::UserAtClient(name, client));
        let user_key = ThrottleKey::User(name);
        if let Some(record) = state.records.get_mut(&user_key) {
            record.failures = 0;
        }
        state.give_back(user_key, now);
        if let Some(client) = client {
            state.give_back(ThrottleKey::Client(client), now);
        }
    }

    /// Records currently tracked (for metrics).
    pub(crate) fn tracked_entries(&self) -> usize {
        self.lock().records.len()
    }

    /// Memory the records take, about (for metrics).
    pub(crate) fn approximate_bytes(&self) -> usize {
        self.tracked_entries() * BYTES_PER_ENTRY
    }

    fn keys(&self, user: &str, client: Option<IpAddr>) -> Vec<ThrottleKey> {
        std::iter::once(ThrottleKey::User(self.name_hash(user)))
            .chain(client.map(|address| ThrottleKey::Client(client_identity(address))))
            .collect()
    }

    fn name_hash(&self, user: &str) -> NameHash {
        let digest = Sha256::new()
            .chain_update(self.salt)
            .chain_update(user.as_bytes())
            .finalize();
        let mut name = [0u8; 16];
        name.copy_from_slice(&digest[..16]);
        name
    }

    fn lock(&self) -> MutexGuard<'_, ThrottleState> {
        // The state stays usable after a panic elsewhere; losing throttling is not an option.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginThrottle")
            .field("tracked_entries", &self.tracked_entries())
            .finish_non_exhaustive()
    }
}

/// One client per IPv4 address, and per IPv6 /64 (the smallest block a site usually gets, so a
/// single client can rotate through all of it).
fn client_identity(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// 0 for the first `FREE_FAILURES`, then `FIRST_DELAY` doubling up to `MAX_DELAY`.
fn delay_for_failures(failures: u32) -> Duration {
    if failures <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (failures - FREE_FAILURES - 1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

impl Limit {
    /// The whole budget's worth of time.
    fn window(self) -> Duration {
        self.interval.saturating_mul(self.burst)
    }

    /// Whether one more check fits in a budget that is full again at `full_at`.
    fn allows(self, full_at: Option<Instant>, now: Instant) -> bool {
        let spent = full_at.map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
        spent + self.interval <= self.window()
    }

    /// Counts one check. A check counted beyond the budget (one not enforced) pushes it no further
    /// than one whole budget ahead, so it is earned back in at most one window.
    fn charge(self, full_at: Option<Instant>, now: Instant) -> Option<Instant> {
        let start = full_at.filter(|at| *at > now).unwrap_or(now);
        Some((start + self.interval).min(now + self.window()))
    }

    fn give_back(self, full_at: Option<Instant>, now: Instant) -> Option<Instant> {
        full_at
            .and_then(|at| at.checked_sub(self.interval))
            .filter(|at| *at > now)
    }
}

impl FailureRecord {
    /// Idle for `FORGET_AFTER` (longer than any budget's window): nothing left to remember.
    fn is_expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_active) >= FORGET_AFTER
    }

    fn failures_at(&self, now: Instant) -> u32 {
        if self.is_expired(now) {
            0
        } else {
            self.failures
        }
    }

    fn is_empty(&self, now: Instant) -> bool {
        self.failures_at(now) == 0 && self.full_at.is_none_or(|at| at <= now)
    }
}

impl ThrottleState {
    /// The record of `key`, created if needed, marked as the most recently active.
    fn touch(&mut self, key: ThrottleKey, now: Instant) -> &mut FailureRecord {
        let recency = self.next_recency;
        self.next_recency += 1;
        if let Some(old) = self.records.get(&key).map(|record| record.recency) {
            self.by_recency.remove(&old);
        } else {
            while self.records.len() >= self.max_entries {
                match self.by_recency.pop_first() {
                    Some((_, oldest)) => {
                        self.records.remove(&oldest);
                    }
                    // The two maps disagree (only after a panic mid-update): start afresh rather
                    // than grow past the bound.
                    None => self.records.clear(),
                }
            }
        }
        self.by_recency.insert(recency, key);
        let record = self.records.entry(key).or_insert(FailureRecord {
            failures: 0,
            last_active: now,
            full_at: None,
            recency,
        });
        if record.is_expired(now) {
            record.failures = 0;
            record.full_at = None;
        }
        record.last_active = now;
        record.recency = recency;
        record
    }

    fn give_back(&mut self, key: ThrottleKey, now: Instant) {
        let Some(record) = self.records.get_mut(&key) else {
            return;
        };
        record.full_at = key.limit().give_back(record.full_at, now);
        if matches!(key, ThrottleKey::UserAtClient(..)) {
            record.failures = record.failures.saturating_sub(1);
        }
        if record.is_empty(now) {
            self.remove(&key);
        }
    }

    fn remove(&mut self, key: &ThrottleKey) {
        if let Some(record) = self.records.remove(key) {
            self.by_recency.remove(&record.recency);
        }
    }

    /// Drops records idle for `FORGET_AFTER`. They are the oldest, so they sit at the front of
    /// `by_recency`.
    fn forget_expired(&mut self, now: Instant) {
        while let Some((&recency, key)) = self.by_recency.first_key_value() {
            match self.records.get(key) {
                Some(record) if !record.is_expired(now) => break,
                Some(_) => {
                    let key = *key;
                    self.records.remove(&key);
                    self.by_recency.remove(&recency);
                }
                None => {
                    self.by_recency.remove(&recency);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const CLIENT: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
    const OTHER_CLIENT: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)));

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn delay_is_free_for_three_failures_then_doubles_up_to_the_cap() {
        let throttle = LoginThrottle::new(100);
        let start = Instant::now();
        let mut delays = Vec::new();
        for failure in 0..12 {
            let now = start + ms(failure);
            throttle.record_failure_at("alice", CLIENT, now);
            delays.push(throttle.delay_at("alice", CLIENT, now));
        }
        let expected: Vec<Duration> = [0, 0, 0, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]
            .into_iter()
            .map(ms)
            .collect();
        assert_eq!(delays, expected);
        // Never overflows, however many failures.
        assert_eq!(delay_for_failures(u32::MAX), MAX_DELAY);
        assert_eq!(delay_for_failures(0), Duration::ZERO);
    }

    #[test]
    fn a_user_is_throttled_across_client_addresses() {
        let throttle = LoginThrottle::new(100);
        let now = Instant::now();
        for octet in 0..5 {
            let client = Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, octet)));
            throttle.record_failure_at("alice", client, now);
        }
        let fresh_client = Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 99)));
        assert_eq!(throttle.delay_at("alice", fresh_client, now), ms(200));
        assert_eq!(throttle.delay_at("alice", None, now), ms(200));
        assert_eq!(throttle.delay_at("bob", fresh_client, now), Duration::ZERO);
    }

    #[test]
    fn a_client_is_throttled_across_user_names() {
        let throttle = LoginThrottle::new(100);
        let now = Instant::now();
        for user in ["a", "b", "c", "d", "e", "f"] {
            throttle.record_failure_at(user, CLIENT, now);
        }
        assert_eq!(throttle.delay_at("zed", CLIENT, now), ms(400));
        assert_eq!(throttle.delay_at("zed", OTHER_CLIENT, now), Duration::ZERO);
        assert_eq!(throttle.delay_at("a", OTHER_CLIENT, now), Duration::ZERO);
        // The delay is the larger of the two.
        for _ in 0..3 {
            throttle.record_failure_at("a", OTHER_CLIENT, now);
        }
        assert_eq!(throttle.delay_at("a", OTHER_CLIENT, now), ms(100));
        assert_eq!(throttle.delay_at("a", CLIENT, now), ms(400));
    }

    #[test]
    fn ipv6_clients_are_grouped_by_64_and_mapped_ipv4_is_ipv4() {
        let throttle = LoginThrottle::new(100);
        let now = Instant::now();
        for host in 1..=5u16 {
            let address = Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, host);
            throttle.record_failure_at(&format!("user{host}"), Some(IpAddr::V6(address)), now);
        }
        let same_64 = Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 9, 9, 9, 9)));
        let other_64 = Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1)));
        assert_eq!(throttle.delay_at("x", same_64, now), ms(200));
        assert_eq!(throttle.delay_at("x", other_64, now), Duration::ZERO);

        for _ in 0..4 {
            throttle.record_failure_at("y", CLIENT, now);
        }
        let mapped = match CLIENT {
            Some(IpAddr::V4(v4)) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
            _ => None,
        };
        assert_eq!(throttle.delay_at("x", mapped, now), ms(100));
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_period() {
        let throttle = LoginThrottle::new(100);
        let start = Instant::now();
        for _ in 0..6 {
            throttle.record_failure_at("alice", CLIENT, start);
        }
        let almost = start + FORGET_AFTER - ms(1);
        assert_eq!(throttle.delay_at("alice", CLIENT, almost), ms(400));
        let later = start + FORGET_AFTER;
        assert_eq!(throttle.delay_at("alice", CLIENT, later), Duration::ZERO);
        // Counting restarts from one, not from where it was.
        for _ in 0..3 {
            throttle.record_failure_at("alice", CLIENT, later);
        }
        assert_eq!(throttle.delay_at("alice", CLIENT, later), Duration::ZERO);
        throttle.record_failure_at("alice", CLIENT, later);
        assert_eq!(throttle.delay_at("alice", CLIENT, later), ms(100));
        // Each new failure restarts the quiet period.
        let still = later + FORGET_AFTER - ms(1);
        assert_eq!(throttle.delay_at("alice", CLIENT, still), ms(100));
    }

    #[test]
    fn expired_records_are_dropped() {
        let throttle = LoginThrottle::new(100);
        let start = Instant::now();
        for user in ["a", "b", "c"] {
            throttle.record_failure_at(user, CLIENT, start);
        }
        assert_eq!(throttle.tracked_entries(), 4);
        throttle.record_failure_at("d", OTHER_CLIENT, start + FORGET_AFTER);
        assert_eq!(throttle.tracked_entries(), 2);
    }

    #[test]
    fn success_clears_the_user_but_not_the_address() {
        let throttle = LoginThrottle::new(100);
        let now = Instant::now();
        for _ in 0..5 {
            throttle.record_failure_at("alice", CLIENT, now);
        }
        throttle.record_success_at("alice", CLIENT, now);
        assert_eq!(throttle.delay_at("alice", OTHER_CLIENT, now), Duration::ZERO);
        assert_eq!(throttle.delay_at("bob", CLIENT, now), ms(200));
        assert_eq!(throttle.delay_at("alice", CLIENT, now), ms(200));
        // Succeeding as another user does not reset alice.
        for _ in 0..5 {
            throttle.record_failure_at("alice", OTHER_CLIENT, now);
        }
        throttle.record_success_at("bob", OTHER_CLIENT, now);
        assert_eq!(throttle.delay_at("alice", None, now), ms(200));
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_entries_go_first() {
        let throttle = LoginThrottle::new(10);
        let start = Instant::now();
        for _ in 0..5 {
            throttle.record_failure_at("target", None, start);
        }
        for index in 0..100u64 {
            throttle.record_failure_at(&format!("noise{index}"), None, start + ms(index));
            assert!(throttle.tracked_entries() <= 10);
        }
        assert_eq!(throttle.tracked_entries(), 10);
        let now = start + ms(100);
        assert_eq!(throttle.delay_at("target", None, now), Duration::ZERO);
        // The most recent ones are still there.
        for _ in 0..3 {
            throttle.record_failure_at("noise99", None, now);
        }
        assert_eq!(throttle.delay_at("noise99", None, now), ms(100));

        // Repeated failures refresh an entry, so an active guesser is not the one evicted.
        let throttle = LoginThrottle::new(4);
        for index in 0..20u64 {
            let now = start + ms(index);
            throttle.record_failure_at("victim", CLIENT, now);
            throttle.record_failure_at(&format!("noise{index}"), None, now);
        }
        assert_eq!(throttle.delay_at("x", CLIENT, start + ms(20)), MAX_DELAY);
        assert_eq!(throttle.tracked_entries(), 4);
    }

    #[test]
    fn tiny_capacity_still_tracks_a_user_and_an_address() {
        let throttle = LoginThrottle::new(0);
        let now = Instant::now();
        for _ in 0..4 {
            throttle.record_failure_at("alice", CLIENT, now);
        }
        assert_eq!(throttle.delay_at("alice", None, now), ms(100));
        assert_eq!(throttle.delay_at("bob", CLIENT, now), ms(100));
        assert_eq!(throttle.tracked_entries(), 2);
    }

    #[test]
    fn wall_clock_methods_work() {
        let throttle = LoginThrottle::new(10);
        for _ in 0..4 {
            throttle.record_failure("alice", CLIENT);
        }
        assert_eq!(throttle.delay("alice", None), ms(100));
        throttle.record_success("alice", CLIENT);
        assert_eq!(throttle.delay("alice", None), Duration::ZERO);
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<LoginThrottle>();
    }

    // --- limits by count -----------------------------------------------------------------

    fn address(last: u8) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, last)))
    }

    #[test]
    fn parallel_checks_from_one_address_get_one_budget() {
        let throttle = LoginThrottle::new(100);
        let now = Instant::now();
        let results: Vec<_> = (0..100).map(|_| throttle.admit_at("alice", CLIENT, now)).collect();
        let admitted = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(admitted, PER_ADDRESS_AND_USER.burst as usize);
        assert!(results[5..].iter().all(|r| *r == Err(LimitKind::AddressAndUser)));
        // One more per interval after that.
        let later = now + PER_ADDRESS_AND_USER.interval;
        assert_eq!(throttle.admit_at("alice", CLIENT, later), Ok(()));
        assert_eq!(
            throttle.admit_at("alice", CLIENT, later),
            Err(LimitKind::AddressAndUser)
        );
        // Another user from the same address, and the same user from elsewhere, are not this budget.
        assert_eq!(throttle.admit_at("bob", CLIENT, later), Ok(()));
        assert_eq!(throttle.admit_at("alice", OTHER_CLIENT, later), Ok(()));
    }

    #[test]
    fn the_user_budget_binds_addresses_that_failed_and_spares_clean_ones() {
        let throttle = LoginThrottle::new(10_000);
        let now = Instant::now();
        let mut admitted = 0;
        for last in 1..=50 {
            for _ in 0..4 {
                if throttle.admit_at("alice", address(last), now).is_ok() {
                    admitted += 1;
                }
            }
        }
        // Each address's forgiven checks, plus at most the user's budget.
        let forgiven = 50 * (FORGIVEN_FAILURES as usize + 1);
        assert!(
            (forgiven..=forgiven + PER_USER.burst as usize).contains(&admitted),
            "{admitted} checks admitted"
        );
        assert_eq!(throttle.admit_at("alice", address(1), now), Err(LimitKind::User));
        // A fresh address (the real alice) is let through, also after a typo.
        let home = address(200);
        assert_eq!(throttle.admit_at("alice", home, now), Ok(()));
        throttle.record_failure_at("alice", home, now);
        assert_eq!(throttle.admit_at("alice", home, now), Ok(()));
        // Past the forgiven failure, the spent budget applies to her too.
        assert_eq!(throttle.admit_at("alice", home, now), Err(LimitKind::User));
        // Another user is not concerned.
        assert_eq!(throttle.admit_at("bob", address(1), now), Ok(()));
        // Every budget is earned back within its window.
        let later = now + PER_USER.interval * PER_USER.burst;
        assert_eq!(throttle.admit_at("alice", address(1), later), Ok(()));
    }

    #[test]
    fn the_user_budget_counts_checks_in_flight() {
        // Checks admitted at once from one address: only the forgiven ones skip the user budget,
        // even before any of them has failed.
        let throttle = LoginThrottle::new(100);
        let now = Instant::now();
        for last in 1..=PER_USER.burst as u8 {
            assert_eq!(throttle.admit_at("alice", address(last), now), Ok(()));
        }
        assert_eq!(throttle.admit_at("alice", CLIENT, now), Ok(()));
        assert_eq!(throttle.admit_at("alice", CLIENT, now), Ok(()));
        assert_eq!(throttle.admit_at("alice", CLIENT, now), Err(LimitKind::User));
    }

    #[test]
    fn the_address_budget_spans_user_names() {
        let throttle = LoginThrottle::new(1000);
        let now = Instant::now();
        for index in 0..PER_ADDRESS.burst {
            assert_eq!(throttle.admit_at(&format!("user{index}"), CLIENT, now), Ok(()));
        }
        assert_eq!(throttle.admit_at("zed", CLIENT, now), Err(LimitKind::Address));
        assert_eq!(throttle.admit_at("zed", OTHER_CLIENT, now), Ok(()));
        // Without an address there is no address budget.
        for index in 0..2 * PER_ADDRESS.burst {
            assert_eq!(throttle.admit_at(&format!("user{index}"), None, now), Ok(()));
        }
    }

    #[test]
    fn a_correct_password_resets_its_budget_and_gives_back_its_checks() {
        let throttle = LoginThrottle::new(100);
        let now = Instant::now();
        for _ in 0..PER_ADDRESS_AND_USER.burst {
            assert_eq!(throttle.admit_at("alice", CLIENT, now), Ok(()));
        }
        assert!(throttle.admit_at("alice", CLIENT, now).is_err());
        throttle.record_success_at("alice", CLIENT, now);
        assert_eq!(throttle.admit_at("alice", CLIENT, now), Ok(()));
        // A real user's login leaves nothing behind.
        let throttle = LoginThrottle::new(100);
        assert_eq!(throttle.admit_at("bob", CLIENT, now), Ok(()));
        assert_eq!(throttle.tracked_entries(), 3);
        throttle.record_success_at("bob", CLIENT, now);
        assert_eq!(throttle.tracked_entries(), 0);
    }

    #[test]
    fn checks_that_never_ran_are_given_back() {
        let throttle = LoginThrottle::new(100);
        let now = Instant::now();
        for _ in 0..3 * PER_ADDRESS_AND_USER.burst {
            assert_eq!(throttle.admit_at("alice", CLIENT, now), Ok(()));
            throttle.give_back_at("alice", CLIENT, now);
        }
        assert_eq!(throttle.tracked_entries(), 0);
    }

    #[test]
    fn records_have_one_size_whatever_the_name() {
        let throttle = LoginThrottle::new(500);
        let now = Instant::now();
        for index in 0..2000u16 {
            let name = format!("{index}{}", "n".repeat(6000));
            let client = Some(IpAddr::V4(Ipv4Addr::from(u32::from(index) + 1)));
            let _ = throttle.admit_at(&name, client, now);
            throttle.record_failure_at(&name, client, now);
            assert!(throttle.tracked_entries() <= 500);
        }
        assert_eq!(throttle.tracked_entries(), 500);
        assert_eq!(throttle.approximate_bytes(), 500 * LoginThrottle::bytes_per_entry());
        assert!(
            LoginThrottle::bytes_per_entry() < 256,
            "{} bytes per record",
            LoginThrottle::bytes_per_entry()
        );
        // 100 000 records, the service's bound, stay within about 25 MB.
        assert!(100_000 * LoginThrottle::bytes_per_entry() < 25_000_000);
    }

    #[test]
    fn records_outlive_every_budget_window() {
        for limit in [PER_ADDRESS_AND_USER, PER_USER, PER_ADDRESS] {
            assert!(limit.window() < FORGET_AFTER, "{limit:?}");
        }
    }
}
