//! Slows down password guessing: after a few wrong passwords for the same user, or from the same
//! client address, each further 401 is answered after a growing delay.
//!
//! It only ever delays; it never refuses (no 429), so a legitimate user who finally types the
//! right password gets in at once. Failures are forgotten after a quiet period, and the number of
//! tracked users and addresses is bounded so a flood of invented names cannot exhaust memory.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Failures answered without delay (typos happen).
pub const FREE_FAILURES: u32 = 3;
/// Delay after the first failure beyond the free ones; it doubles with each further failure.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The delay never grows beyond this.
pub const MAX_DELAY: Duration = Duration::from_secs(5);
/// A user or address with no failure for this long starts again from zero.
pub const FORGET_AFTER: Duration = Duration::from_secs(10 * 60);

/// Failed-login bookkeeping per user and per client address. `Send + Sync`; share it via `Arc`.
///
/// Usage on a failed login: `record_failure`, then wait `delay` before answering 401.
pub struct LoginThrottle {
    state: Mutex<ThrottleState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ThrottleKey {
    User(String),
    Client(IpAddr),
}

struct FailureRecord {
    failures: u32,
    last_failure: Instant,
    /// Position in `ThrottleState::by_recency`.
    recency: u64,
}

struct ThrottleState {
    max_entries: usize,
    records: HashMap<ThrottleKey, FailureRecord>,
    /// Keys by the time of their last failure, oldest first: what gets evicted or forgotten.
    by_recency: BTreeMap<u64, ThrottleKey>,
    next_recency: u64,
}

impl LoginThrottle {
    /// Tracks at most `max_entries` users and addresses together (at least 2: one of each).
    pub fn new(max_entries: usize) -> LoginThrottle {
        LoginThrottle {
            state: Mutex::new(ThrottleState {
                max_entries: max_entries.max(2),
                records: HashMap::new(),
                by_recency: BTreeMap::new(),
                next_recency: 0,
            }),
        }
    }

    /// The delay to wait before answering 401 to a failed login by `user` from `client`: the
    /// larger of the user's and the address's, counting failures already recorded.
    pub fn delay(&self, user: &str, client: Option<IpAddr>) -> Duration {
        self.delay_at(user, client, Instant::now())
    }

    pub fn delay_at(&self, user: &str, client: Option<IpAddr>, now: Instant) -> Duration {
        let state = self.lock();
        keys(user, client)
            .filter_map(|key| state.records.get(&key))
            .map(|record| delay_for_failures(record.failures_at(now)))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    pub fn record_failure(&self, user: &str, client: Option<IpAddr>) {
        self.record_failure_at(user, client, Instant::now());
    }

    pub fn record_failure_at(&self, user: &str, client: Option<IpAddr>, now: Instant) {
        let mut state = self.lock();
        state.forget_expired(now);
        for key in keys(user, client) {
            state.count_failure(key, now);
        }
    }

    /// A correct password clears the user's failures. The address keeps its count: one valid
    /// account must not let a client reset its count while it guesses other users' passwords.
    pub fn record_success(&self, user: &str, client: Option<IpAddr>) {
        self.record_success_at(user, client, Instant::now());
    }

    pub fn record_success_at(&self, user: &str, _client: Option<IpAddr>, now: Instant) {
        let mut state = self.lock();
        // The usual case, nobody failing: nothing to forget, no key to build.
        if state.records.is_empty() {
            return;
        }
        state.forget_expired(now);
        state.remove(&ThrottleKey::User(user.to_string()));
    }

    /// Users and addresses currently tracked (for metrics).
    pub fn tracked_entries(&self) -> usize {
        self.lock().records.len()
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

fn keys(user: &str, client: Option<IpAddr>) -> impl Iterator<Item = ThrottleKey> {
    std::iter::once(ThrottleKey::User(user.to_string()))
        .chain(client.map(|address| ThrottleKey::Client(client_identity(address))))
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

impl FailureRecord {
    fn is_expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_failure) >= FORGET_AFTER
    }

    fn failures_at(&self, now: Instant) -> u32 {
        if self.is_expired(now) {
            0
        } else {
            self.failures
        }
    }
}

impl ThrottleState {
    fn count_failure(&mut self, key: ThrottleKey, now: Instant) {
        let recency = self.next_recency;
        self.next_recency += 1;
        if let Some(record) = self.records.get_mut(&key) {
            record.failures = record.failures_at(now).saturating_add(1);
            record.last_failure = now;
            self.by_recency.remove(&record.recency);
            record.recency = recency;
            self.by_recency.insert(recency, key);
            return;
        }
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
        self.records.insert(
            key.clone(),
            FailureRecord {
                failures: 1,
                last_failure: now,
                recency,
            },
        );
        self.by_recency.insert(recency, key);
    }

    fn remove(&mut self, key: &ThrottleKey) {
        if let Some(record) = self.records.remove(key) {
            self.by_recency.remove(&record.recency);
        }
    }

    /// Drops records whose last failure is older than `FORGET_AFTER`. They are the oldest, so
    /// they sit at the front of `by_recency`.
    fn forget_expired(&mut self, now: Instant) {
        while let Some((&recency, key)) = self.by_recency.first_key_value() {
            match self.records.get(key) {
                Some(record) if !record.is_expired(now) => break,
                Some(_) => {
                    let key = key.clone();
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
}
