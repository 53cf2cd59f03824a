//! Access keys on the login path: verifying a key (one SHA-256 and one lookup, target ≤ 2 µs)
//! in a file of 10 000 keys, the refusals, the scope check, and loading the file (a reload).

use std::fmt::Write;
use std::time::SystemTime;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use csel_auth::access_keys::{AccessKeys, KeyCheck};
use csel_auth::csel::Facts;
use csel_auth::rules::Action;
use sha2::{Digest, Sha256};

const KEYS: usize = 10_000;

/// A file of `KEYS` keys and the secret of each (made as `access-key create` makes them).
fn keys_file() -> (String, Vec<String>) {
    let mut text = String::from("# bench keys\n");
    let mut secrets = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        let random: String = format!("{:0>43}", format!("{i}r{}", i * 7919))
            .chars()
            .take(43)
            .collect();
        let secret = format!("csk_k{i:05}_{random}");
        let hash: String = Sha256::digest(secret.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let _ = writeln!(
            text,
            "key k{i:05} user=robot-{i} created=2026-01-01T00:00:00Z expires=2099-01-01T00:00:00Z actions=pull,push \
             on=(path =^ \"/v2/team-{i}/\") description=\"bench key {i}\" sha256={hash}"
        );
        secrets.push(secret);
    }
    (text, secrets)
}

fn verify(c: &mut Criterion) {
    let (text, secrets) = keys_file();
    let keys = match AccessKeys::parse("bench.keys", &text) {
        Ok(k) => k,
        Err(e) => panic!("{e}"),
    };
    let now = SystemTime::now();
    let secret = &secrets[KEYS / 2];
    let user = format!("robot-{}", KEYS / 2);
    let mut wrong = secret.clone();
    wrong.pop();
    wrong.push('#');
    let unknown = secret.replacen("csk_k", "csk_x", 1);
    assert!(matches!(keys.verify(&user, secret, now), KeyCheck::Valid(_)));
    assert!(matches!(keys.verify(&user, &wrong, now), KeyCheck::Refused { .. }));
    assert!(matches!(keys.verify(&user, &unknown, now), KeyCheck::Refused { .. }));

    let mut group = c.benchmark_group("access_keys");
    group.bench_function("verify_valid", |b| {
        b.iter(|| {
            matches!(
                keys.verify(black_box(&user), black_box(secret), now),
                KeyCheck::Valid(_)
            )
        })
    });
    group.bench_function("verify_wrong_secret", |b| {
        b.iter(|| keys.verify(black_box(&user), black_box(&wrong), now))
    });
    group.bench_function("verify_unknown_id", |b| {
        b.iter(|| keys.verify(black_box(&user), black_box(&unknown), now))
    });
    group.bench_function("verify_not_a_key", |b| {
        b.iter(|| keys.verify(black_box(&user), black_box("user-password"), now))
    });
    let KeyCheck::Valid(key) = keys.verify(&user, secret, now) else {
        panic!("the key verifies");
    };
    let path = format!("/v2/team-{}/app/manifests/1", KEYS / 2);
    let facts = Facts {
        format: "docker",
        path: &path,
        method: "GET",
        user: Some(&user),
    };
    assert!(key.scope.allows(Action::Read, &facts));
    group.bench_function("verify_and_scope", |b| {
        b.iter(|| match keys.verify(black_box(&user), black_box(secret), now) {
            KeyCheck::Valid(key) => key.scope.allows(Action::Read, black_box(&facts)),
            _ => false,
        })
    });
    group.sample_size(10);
    group.bench_function("parse_10000_keys", |b| {
        b.iter(|| AccessKeys::parse("bench.keys", black_box(&text)).map(|k| k.len()))
    });
    group.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
