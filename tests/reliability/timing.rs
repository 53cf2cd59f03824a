//! Unknown users and wrong passwords are answered in the same time: both cost one bcrypt of
//! the file's usual cost (the metric says so), and their answer times, sampled in turns on one
//! connection, have medians within a generous tolerance of each other.

use std::time::{Duration, Instant};

use crate::kit::http::{Conn, Request};
use crate::kit::service::{alone, CselAuth};
use crate::kit::wait::wait_for;
use crate::kit::{basic, htpasswd, report, scale};

/// bcrypt cost of every user: high enough that bcrypt dominates an answer, low enough for CI.
const COST: u32 = 8;

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn bcrypt_checks(service: &CselAuth) -> f64 {
    service.metric("csel_auth_bcrypt_checks_total")
}

#[test]
fn unknown_users_and_wrong_passwords_take_the_same_time() {
    let _turn = alone();
    let samples: usize = scale(40, 400);
    // One hash for every user (same password): each wrong password is tried on a different user,
    // and each unknown name is new, so the failed-login throttle never delays an answer.
    let hash = bcrypt::hash("the-right-password", COST).unwrap_or_else(|e| panic!("{e}"));
    let users: Vec<String> = (0..samples + 5).map(|i| format!("user{i}")).collect();
    let htpasswd: String = users.iter().map(|u| format!("{u}:{hash}\n")).collect();
    let service = super::setup("grant pull on (path =^ \"/v2/library/\") to anonymous\n", &htpasswd).start();
    let mut connection = service.connect();
    let mut ask = |user: &str, password: &str| -> (u16, Duration) {
        // No X-Real-IP: the per-address throttle is not involved either.
        let request = Request::subrequest("GET", "/v2/private/app/manifests/1")
            .with_nginx_headers()
            .without(b"X-Real-IP")
            .header(b"Authorization", basic(user, password).as_bytes())
            .bytes();
        let started = Instant::now();
        let status = connection.send(&request).map_or(0, |r| r.status);
        (status, started.elapsed())
    };
    let (mut unknown, mut wrong) = (Vec::new(), Vec::new());
    let mut bcrypt_per_answer = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let before = bcrypt_checks(&service);
        let (status_unknown, time_unknown) = ask(&format!("ghost{i}"), "the-right-password");
        let between = bcrypt_checks(&service);
        let (status_wrong, time_wrong) = ask(user, "a-wrong-password");
        let after = bcrypt_checks(&service);
        assert_eq!((status_unknown, status_wrong), (401, 401), "sample {i}");
        bcrypt_per_answer.push((between - before, after - between));
        // The first answers warm caches and the allocator: not counted.
        if i >= 5 {
            unknown.push(time_unknown);
            wrong.push(time_wrong);
        }
    }
    let (unknown_median, wrong_median) = (median(&mut unknown), median(&mut wrong));
    let ratio = unknown_median.as_secs_f64() / wrong_median.as_secs_f64();
    report(&format!(
        "reliability: timing over {samples} pairs: unknown user median {unknown_median:?}, wrong password \
         median {wrong_median:?} (ratio {ratio:.2}); one bcrypt each"
    ));
    assert!(
        bcrypt_per_answer.iter().all(|&pair| pair == (1.0, 1.0)),
        "bcrypt computations per (unknown user, wrong password): {bcrypt_per_answer:?}"
    );
    // A cost-8 bcrypt takes milliseconds: it must be what the time is spent on.
    assert!(
        wrong_median > Duration::from_millis(2),
        "a wrong password took only {wrong_median:?}"
    );
    assert!(
        (0.8..=1.25).contains(&ratio),
        "unknown users ({unknown_median:?}) and wrong passwords ({wrong_median:?}) are told apart by time"
    );
}

/// Logins of unknown users in the flood, each from its own address.
const FLOOD: usize = 1000;
/// Each flood request's client gives up this long after sending it (as nginx would).
const ABANDON_AFTER: Duration = Duration::from_millis(500);
/// A new flood request this often: about 170 abandoned requests are open at any time.
const FLOOD_PACE: Duration = Duration::from_millis(3);

/// A flood of abandoned logins must not hold up real ones: a request whose client went away
/// leaves the bcrypt queue without a bcrypt. Timed on purpose, with the required bounds, measured
/// while the flood runs with one bcrypt at a time: a cached login answers in < 10 ms, a correct
/// uncached one in < 2 s (a bcrypt of cost 8 takes ~30-80 ms here, so both leave a wide margin).
#[test]
fn timing_real_logins_under_a_flood_of_abandoned_ones() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let _turn = alone();
    let htpasswd = htpasswd(&["alice", "bob"], COST);
    let service = super::setup("grant pull on (path =^ \"/v2/library/\") to authenticated\n", &htpasswd)
        .arg("--bcrypt-concurrency")
        .arg("1")
        .start();
    let login = |connection: &mut Conn, user: &str, password: &str, from: &str| -> (u16, Duration) {
        let request = Request::subrequest("GET", "/v2/library/alpine/manifests/1")
            .with_nginx_headers()
            .without(b"X-Real-IP")
            .header(b"X-Real-IP", from.as_bytes())
            .header(b"Authorization", basic(user, password).as_bytes())
            .bytes();
        let started = Instant::now();
        match connection.send(&request) {
            Ok(response) => (response.status, started.elapsed()),
            Err(e) => panic!("{user}: no answer after {:?}: {e}", started.elapsed()),
        }
    };
    let mut alice = service.connect();
    assert_eq!(login(&mut alice, "alice", "alice-password", "198.51.100.1").0, 200);
    let (_, one_bcrypt) = login(&mut service.connect(), "calibration", "x", "198.51.100.2");
    let checks_before = bcrypt_checks(&service);

    let sent = AtomicUsize::new(0);
    let addr = service.addr();
    let (cached, uncached) = std::thread::scope(|scope| {
        let flood = scope.spawn(|| {
            let mut open: std::collections::VecDeque<(Instant, std::net::TcpStream)> = Default::default();
            let close_expired = |open: &mut std::collections::VecDeque<(Instant, std::net::TcpStream)>| {
                while open.front().is_some_and(|(at, _)| at.elapsed() >= ABANDON_AFTER) {
                    open.pop_front();
                }
            };
            for i in 0..FLOOD {
                let request = Request::subrequest("GET", "/v2/library/alpine/manifests/1")
                    .with_nginx_headers()
                    .without(b"X-Real-IP")
                    .header(b"X-Real-IP", format!("198.18.{}.{}", i / 250, i % 250 + 1).as_bytes())
                    .header(b"Authorization", basic(&format!("ghost-{i}"), "guess").as_bytes())
                    .bytes();
                let mut stream = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("flood {i}: {e}"));
                std::io::Write::write_all(&mut stream, &request).unwrap_or_else(|e| panic!("flood {i}: {e}"));
                open.push_back((Instant::now(), stream));
                sent.fetch_add(1, Ordering::SeqCst);
                close_expired(&mut open);
                std::thread::sleep(FLOOD_PACE);
            }
            while !open.is_empty() {
                close_expired(&mut open);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        // Measure once the flood is well under way.
        wait_for(Duration::from_secs(30), "the flood to be under way", || {
            (sent.load(Ordering::SeqCst) >= FLOOD / 3).then_some(())
        });
        let mut cached: Vec<Duration> = (0..20)
            .map(|_| {
                let (status, time) = login(&mut alice, "alice", "alice-password", "198.51.100.1");
                assert_eq!(status, 200, "alice, cached");
                time
            })
            .collect();
        cached.sort_unstable();
        let (status, uncached) = login(&mut service.connect(), "bob", "bob-password", "198.51.100.3");
        assert_eq!(status, 200, "bob's correct password");
        let still_flooding = sent.load(Ordering::SeqCst) < FLOOD;
        flood.join().unwrap_or_else(|_| panic!("the flood thread failed"));
        assert!(
            still_flooding,
            "the measurements ended after the flood: make the flood longer"
        );
        (cached, uncached)
    });
    wait_for(Duration::from_secs(30), "the bcrypt queue to empty", || {
        (service.metric("csel_auth_bcrypt_queue_length") == 0.0).then_some(())
    });
    let flood_checks = bcrypt_checks(&service) - checks_before;
    let abandoned = service.metric("csel_auth_bcrypt_abandoned_total");
    report(&format!(
        "reliability: flood of {FLOOD} abandoned unknown-user logins (one bcrypt of cost {COST} takes {one_bcrypt:.1?}, \
         1 at a time): cached login max {:.2?} (median {:.2?}), correct uncached login {uncached:.0?}; \
         {flood_checks} bcrypts ran, {abandoned} requests left the queue unchecked",
        cached[cached.len() - 1],
        cached[cached.len() / 2],
    ));
    assert!(
        cached[cached.len() - 1] < Duration::from_millis(10),
        "a cached login took {:?} during the flood",
        cached[cached.len() - 1]
    );
    assert!(
        uncached < Duration::from_secs(2),
        "a correct uncached login took {uncached:?} during the flood"
    );
    // Abandoned requests never start a bcrypt: only those still waiting when their turn came.
    assert!(
        flood_checks < (FLOOD / 4) as f64,
        "{flood_checks} bcrypts ran for {FLOOD} abandoned requests"
    );
}
