//! Who is asking, on the hot path: a Basic login answered from the verified-login cache (the
//! `Authorization` header parsed, the secret-keyed cache key computed, the cache consulted), and
//! a Bearer token verified.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use csel_auth::identity::{parse_authorization, Credentials, Htpasswd, Verifier};
use csel_auth::token::{self, Identity, Scope, TokenKey, TokenSettings};

const USERS: &str = include_str!("../examples/users.htpasswd");

fn basic_cached(c: &mut Criterion) {
    let htpasswd = match Htpasswd::parse("users.htpasswd", USERS) {
        Ok(h) => Arc::new(h),
        Err(e) => panic!("{e}"),
    };
    let header = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:alice-password")
    );
    let verifier = Verifier::new(10_000, 2);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    let check = |header: &str| {
        let Ok(Credentials::Basic { user, password }) = parse_authorization(Some(header.as_bytes())) else {
            return false;
        };
        runtime.block_on(verifier.verify(&htpasswd, &user, &password))
    };
    assert!(check(&header), "the first check runs bcrypt and fills the cache");
    let bcrypt_runs = verifier.bcrypt_checks();

    let mut group = c.benchmark_group("identity");
    group.bench_function("basic_cached", |b| b.iter(|| check(black_box(&header))));
    group.bench_function("basic_cached_blocking", |b| {
        b.iter(|| verifier.verify_blocking(black_box(&htpasswd), black_box("alice"), black_box("alice-password")))
    });
    assert_eq!(
        verifier.bcrypt_checks(),
        bcrypt_runs,
        "every later check is a cache hit"
    );

    let key = match TokenKey::from_bytes(&[7u8; 32]) {
        Ok(k) => k,
        Err(e) => panic!("{e}"),
    };
    let settings = TokenSettings {
        realm: "http://127.0.0.1/token".into(),
        service: "csel-auth".into(),
        ttl: Duration::from_secs(300),
        refresh_ttl: Duration::from_secs(3600),
    };
    let scopes: Vec<Scope> = token::parse_scopes(&["repository:coolteam/app:pull,push"]);
    let issued = token::issue(
        &key,
        &settings,
        &Identity::user("alice"),
        &scopes,
        "",
        false,
        SystemTime::now(),
    );
    group.bench_function("bearer_verify", |b| {
        b.iter(|| {
            token::verify(
                &key,
                &settings,
                token::TokenKind::Access,
                black_box(&issued.token),
                SystemTime::now(),
            )
            .is_ok()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = basic_cached
}
criterion_main!(benches);
