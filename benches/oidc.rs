//! A docker login with a JWT as its password: answered from the cache of verified tokens (the
//! secret-keyed hash of the token, one LRU lookup), and checked in full (signature with an RSA
//! 2048 or P-256 key, then the claims) with the cache off. Also what every other Basic login
//! pays for OIDC being configured: telling its password is no JWT. Keys, tokens and the JWKS
//! server come from tests/kit/jwks.rs; the benchmark checks afterwards that the server was
//! asked once per issuer set-up and that each login gave the expected answer.

#[path = "../tests/kit/jwks.rs"]
mod kit;

use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use csel_auth::config::OidcSection;
use csel_auth::oidc::{Issuers, OidcCheck};
use kit::{github_claims, jwks, JwksServer, SigningKey, AUDIENCE, GITHUB};

fn section(url: &str) -> OidcSection {
    OidcSection {
        issuer: GITHUB.into(),
        audience: AUDIENCE.into(),
        jwks_url: Some(url.into()),
        username_claim: Some("repository".into()),
        username_prefix: Some("github:".into()),
        max_age: Some(Duration::from_secs(3600)),
        ..OidcSection::default()
    }
}

fn issuers(runtime: &tokio::runtime::Runtime, url: &str, cache: usize) -> Arc<Issuers> {
    let issuers = Issuers::from_sections(&[section(url)])
        .unwrap_or_else(|e| panic!("{e}"))
        .with_cache_capacity(cache);
    runtime.block_on(issuers.start())
}

fn oidc(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let rsa = SigningKey::rsa("rsa");
    let ec = SigningKey::p256("ec");
    let server = JwksServer::start(&jwks(&[&rsa.jwk, &ec.jwk]));
    let claims = github_claims("octo-org/octo-repo");
    let rs256 = rsa.sign(&claims);
    let es256 = ec.sign(&claims);
    let is_valid =
        |check: OidcCheck| matches!(check, OidcCheck::Valid(login) if login.user() == "github:octo-org/octo-repo");

    let cached = issuers(&runtime, &server.url(), 10_000);
    assert!(is_valid(runtime.block_on(cached.login(&rs256))));
    c.bench_function("oidc_login_cached", |b| {
        b.iter(|| runtime.block_on(cached.login(black_box(&rs256))))
    });
    let stats = &cached.stats().issuers[0];
    assert_eq!(
        stats.verified, 1,
        "every benchmarked login came from the cache: {stats:?}"
    );

    let uncached = issuers(&runtime, &server.url(), 0);
    for (name, token) in [
        ("oidc_login_uncached_rs256", &rs256),
        ("oidc_login_uncached_es256", &es256),
    ] {
        assert!(is_valid(runtime.block_on(uncached.login(token))));
        c.bench_function(name, |b| b.iter(|| runtime.block_on(uncached.login(black_box(token)))));
    }
    assert_eq!(uncached.stats().issuers[0].cache_hits, 0);

    let stranger = {
        let mut claims = claims.clone();
        claims["iss"] = "https://gitlab.example.com".into();
        rsa.sign(&claims)
    };
    for (name, password) in [
        ("oidc_not_a_jwt_password", "alice-password"),
        ("oidc_not_a_jwt_other_issuer", stranger.as_str()),
    ] {
        assert_eq!(runtime.block_on(cached.login(password)), OidcCheck::NotAJwt);
        c.bench_function(name, |b| b.iter(|| runtime.block_on(cached.login(black_box(password)))));
    }
    assert_eq!(server.requests(), 2, "one fetch per Issuers, none while measuring");
}

criterion_group!(benches, oidc);
criterion_main!(benches);
