//! Unknown users and wrong passwords are answered in the same time: both cost one bcrypt of
//! the file's usual cost (the metric says so), and their answer times, sampled in turns on one
//! connection, have medians within a generous tolerance of each other.

use std::time::{Duration, Instant};

use crate::common::{exclusive, report, scale, Service, Setup, Subrequest};

/// bcrypt cost of every user: high enough that bcrypt dominates an answer, low enough for CI.
const COST: u32 = 8;

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn bcrypt_checks(service: &Service) -> f64 {
    service.metric("csel_auth_bcrypt_checks_total")
}

#[test]
fn unknown_users_and_wrong_passwords_take_the_same_time() {
    let _turn = exclusive();
    let samples: usize = scale(40, 400);
    // One hash for every user (same password): each wrong password is tried on a different user,
    // and each unknown name is new, so the failed-login throttle never delays an answer.
    let hash = bcrypt::hash("the-right-password", COST).unwrap_or_else(|e| panic!("{e}"));
    let users: Vec<String> = (0..samples + 5).map(|i| format!("user{i}")).collect();
    let htpasswd: String = users.iter().map(|u| format!("{u}:{hash}\n")).collect();
    let service = Setup::new("grant pull on (path =^ \"/v2/library/\") to anonymous\n", &htpasswd).start();
    let mut connection = service.connect();
    let mut ask = |user: &str, password: &str| -> (u16, Duration) {
        // No X-Real-IP: the per-address throttle is not involved either.
        let request = Subrequest::new("GET", "/v2/private/app/manifests/1")
            .without(b"X-Real-IP")
            .header(b"Authorization", crate::common::basic(user, password).as_bytes())
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
