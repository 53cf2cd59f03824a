//! The OIDC/JWT identity source against keys and tokens the tests make, with the issuer's JWKS
//! served by a small HTTP server on 127.0.0.1 (tests/kit/jwks.rs) that counts requests and can be
//! switched off, broken and rotated: good tokens of GitHub Actions' and Kubernetes' shapes,
//! every claim check, the classic JWT attacks, key rotation, the fetch rate limit, outages.

use crate::kit::jwks as kit;

mod service;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use csel_auth::config::{ConfigFile, OidcSection};
use csel_auth::oidc::{Issuers, OidcCheck, Refusal};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kit::{
    assemble, github_claims, jwks, kubernetes_claims, now, sign_raw, split, JwksServer, Mode, SigningKey, AUDIENCE,
    GITHUB, KUBERNETES,
};
use serde_json::{json, Value};

/// The GitHub Actions section of the issue's example, keys from `url`.
fn github(url: &str) -> OidcSection {
    OidcSection {
        issuer: GITHUB.into(),
        audience: AUDIENCE.into(),
        jwks_url: Some(url.into()),
        username_claim: Some("repository".into()),
        username_prefix: Some("github:".into()),
        groups_claim: Some("groups".into()),
        algorithms: Some(vec!["RS256".into(), "ES256".into()]),
        max_age: Some(Duration::from_secs(3600)),
        ..OidcSection::default()
    }
}

fn kubernetes(url: &str) -> OidcSection {
    OidcSection {
        issuer: KUBERNETES.into(),
        audience: AUDIENCE.into(),
        jwks_url: Some(url.into()),
        username_prefix: Some("k8s:".into()),
        groups_claim: Some("/kubernetes.io/namespace".into()),
        ..OidcSection::default()
    }
}

async fn start(sections: &[OidcSection]) -> Arc<Issuers> {
    let issuers = Issuers::from_sections(sections).unwrap_or_else(|e| panic!("{e}"));
    match tokio::time::timeout(Duration::from_secs(30), issuers.start()).await {
        Ok(issuers) => issuers,
        Err(_) => panic!("start() did not return within 30 s"),
    }
}

fn valid(check: OidcCheck) -> csel_auth::oidc::FederatedLogin {
    match check {
        OidcCheck::Valid(login) => login,
        other => panic!("expected a valid login, got {other:?}"),
    }
}

fn refused(check: OidcCheck) -> Refusal {
    match check {
        OidcCheck::Refused(refusal) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Retries `attempt` until it gives something, for at most 10 s (the polling pause is not a
/// synchronisation: the condition is what is waited for).
async fn wait_for<T, F: Future<Output = Option<T>>>(what: &str, mut attempt: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn with(mut claims: Value, changes: Value) -> Value {
    for (name, value) in changes.as_object().into_iter().flatten() {
        if value.is_null() {
            claims.as_object_mut().map(|c| c.remove(name));
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

#[tokio::test]
async fn a_github_actions_token_logs_in_as_its_repository() {
    let key = SigningKey::rsa("gh-1");
    let server = JwksServer::start(&jwks(&[&key.jwk]));
    let issuers = start(&[github(&server.url())]).await;
    let claims = github_claims("octo-org/octo-repo");
    let token = key.sign(&claims);
    let login = valid(issuers.login(&token).await);
    assert_eq!(login.user(), "github:octo-org/octo-repo");
    assert_eq!(login.issuer(), GITHUB);
    assert!(login.groups().is_empty());
    assert_eq!(
        login.expires_at(),
        UNIX_EPOCH + Duration::from_secs(claims["exp"].as_u64().unwrap())
    );
    // The next request of the same push is answered from the cache: no signature check.
    assert_eq!(valid(issuers.login(&token).await), login);
    let stats = issuers.stats();
    let github = &stats.issuers[0];
    assert_eq!(
        (github.verified, github.cache_hits, github.refused),
        (1, 1, 0),
        "{github:?}"
    );
    assert!(github.up && github.keys == 1 && github.fetches == 1, "{github:?}");
    assert!(github.key_set_age.is_some_and(|age| age < Duration::from_secs(60)));
    assert_eq!(stats.cached_tokens, 1);
    // Plain passwords and tokens of other issuers are for the other sources.
    assert_eq!(issuers.login("alice-password").await, OidcCheck::NotAJwt);
    let stranger = key.sign(&with(claims, json!({"iss": "https://gitlab.example.com"})));
    assert_eq!(issuers.login(&stranger).await, OidcCheck::NotAJwt);
}

#[tokio::test]
async fn a_kubernetes_token_logs_in_as_its_service_account_with_its_namespace() {
    let key = SigningKey::p256("k8s-1");
    let server = JwksServer::start(&jwks(&[&key.bare_jwk()]));
    let issuers = start(&[kubernetes(&server.url())]).await;
    let login = valid(issuers.login(&key.sign(&kubernetes_claims("ci", "builder"))).await);
    assert_eq!(login.user(), "k8s:system:serviceaccount:ci:builder");
    assert_eq!(login.groups(), ["k8s:ci"]);
    assert_eq!(login.issuer(), KUBERNETES);
}

#[tokio::test]
async fn two_issuers_side_by_side_and_no_token_crosses_over() {
    let github_key = SigningKey::rsa("shared-kid");
    let k8s_key = SigningKey::rsa("shared-kid");
    let github_server = JwksServer::start(&jwks(&[&github_key.jwk]));
    let k8s_server = JwksServer::start(&jwks(&[&k8s_key.jwk]));
    let issuers = start(&[github(&github_server.url()), kubernetes(&k8s_server.url())]).await;
    assert_eq!(
        valid(issuers.login(&github_key.sign(&github_claims("o/a"))).await).user(),
        "github:o/a"
    );
    assert_eq!(
        valid(issuers.login(&k8s_key.sign(&kubernetes_claims("ns", "sa"))).await).user(),
        "k8s:system:serviceaccount:ns:sa"
    );
    // Issuer A's claims signed with issuer B's key (same kid, so only the signature tells).
    let forged = k8s_key.sign(&github_claims("o/a"));
    assert_eq!(refused(issuers.login(&forged).await), Refusal::BadSignature);
    // And with a kid A does not have: no key of A's to check it with.
    let other = SigningKey::rsa("k8s-only");
    k8s_server.set_keys(&jwks(&[&k8s_key.jwk, &other.jwk]));
    let forged = other.sign(&github_claims("o/a"));
    assert_eq!(
        refused(issuers.login(&forged).await),
        Refusal::UnknownKey("k8s-only".into())
    );
}

#[tokio::test]
async fn the_audience_must_be_ours() {
    let key = SigningKey::rsa("k");
    let server = JwksServer::start(&jwks(&[&key.jwk]));
    let issuers = start(&[github(&server.url())]).await;
    let claims = github_claims("o/a");
    for aud in [
        json!("https://github.com/octo-org"),
        json!(["other", "sts.amazonaws.com"]),
        json!([]),
    ] {
        let token = key.sign(&with(claims.clone(), json!({ "aud": aud })));
        assert_eq!(
            refused(issuers.login(&token).await),
            Refusal::WrongAudience,
            "aud {aud}"
        );
    }
    let token = key.sign(&with(claims.clone(), json!({"aud": null})));
    assert_eq!(
        refused(issuers.login(&token).await),
        Refusal::MissingClaim("aud".into())
    );
    let token = key.sign(&with(claims, json!({ "aud": ["sts.amazonaws.com", AUDIENCE] })));
    valid(issuers.login(&token).await);
}

#[tokio::test]
async fn expired_early_and_old_tokens_are_refused() {
    let key = SigningKey::rsa("k");
    let server = JwksServer::start(&jwks(&[&key.jwk]));
    let issuers = start(&[github(&server.url())]).await;
    let now = now();
    let claims = github_claims("o/a");
    let cases = [
        (
            json!({"exp": now - 120, "iat": now - 600, "nbf": now - 600}),
            Refusal::Expired,
        ),
        (json!({"exp": null}), Refusal::MissingClaim("exp".into())),
        (json!({"exp": "tomorrow"}), Refusal::MissingClaim("exp".into())),
        (json!({"nbf": now + 300}), Refusal::NotYetValid),
        (json!({"iat": now + 300}), Refusal::IssuedInFuture),
        // max_age is 1h: issued 2h ago, though exp is still ahead.
        (json!({"iat": now - 7200, "nbf": now - 7200}), Refusal::TooOld),
        (json!({"iat": null}), Refusal::MissingClaim("iat".into())),
    ];
    for (changes, expected) in cases {
        let token = key.sign(&with(claims.clone(), changes.clone()));
        assert_eq!(refused(issuers.login(&token).await), expected, "{changes}");
    }
    // Within the 60 s leeway: accepted, but not cached past its exp.
    let token = key.sign(&with(claims.clone(), json!({"exp": now - 30})));
    valid(issuers.login(&token).await);
    let token = key.sign(&with(claims, json!({"nbf": now + 30, "iat": now + 30})));
    valid(issuers.login(&token).await);
    assert_eq!(issuers.stats().cached_tokens, 1, "only the not-yet-expired one");
    assert_eq!(issuers.stats().issuers[0].refused, 7);
}

#[tokio::test]
async fn a_cached_token_ends_at_its_exp() {
    let key = SigningKey::rsa("k");
    let server = JwksServer::start(&jwks(&[&key.jwk]));
    // Expires within the next three seconds: cached until then, refused after (leeway 0).
    let mut section = github(&server.url());
    section.leeway = Some(Duration::ZERO);
    let strict = start(&[section]).await;
    let exp = now() + 3;
    let token = key.sign(&with(github_claims("o/a"), json!({ "exp": exp })));
    valid(strict.login(&token).await);
    valid(strict.login(&token).await);
    assert_eq!(strict.stats().issuers[0].cache_hits, 1);
    wait_for("the token to expire", || async { (now() > exp).then_some(()) }).await;
    assert_eq!(refused(strict.login(&token).await), Refusal::Expired);
    assert_eq!(
        strict.stats().issuers[0].cache_hits,
        1,
        "not answered from the cache after exp"
    );
}

#[tokio::test]
async fn unsigned_and_hmac_tokens_are_refused() {
    let key = SigningKey::rsa("k");
    let server = JwksServer::start(&jwks(&[&key.jwk]));
    let issuers = start(&[github(&server.url())]).await;
    let claims = github_claims("o/a");
    // alg none, with and without a signature part.
    for signature in ["", "c2ln"] {
        let token = assemble(&json!({"alg": "none", "typ": "JWT", "kid": "k"}), &claims, signature);
        assert!(matches!(refused(issuers.login(&token).await), Refusal::Algorithm(_)));
    }
    // The key-confusion attack: HS256 with the issuer's public key as the HMAC secret.
    for secret in [
        key.public_pem.as_bytes(),
        key.jwk["n"].as_str().unwrap_or_default().as_bytes(),
    ] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k".into());
        let encoding = EncodingKey::from_secret(secret).unwrap();
        let token = jsonwebtoken::encode(&header, &claims, &encoding).unwrap();
        assert!(matches!(refused(issuers.login(&token).await), Refusal::Algorithm(_)));
    }
    // An algorithm outside this issuer's list (RS384 is RSA too, but not allowed here).
    let token = sign_raw(&json!({"alg": "RS384", "kid": "k"}), &claims, &key);
    assert!(matches!(refused(issuers.login(&token).await), Refusal::Algorithm(_)));
    assert_eq!(issuers.stats().issuers[0].verified, 0);
}

#[tokio::test]
async fn the_algorithm_must_fit_the_key() {
    let rsa = SigningKey::rsa("rsa");
    let ec = SigningKey::p256("ec");
    let server = JwksServer::start(&jwks(&[&rsa.bare_jwk(), &ec.bare_jwk()]));
    let issuers = start(&[github(&server.url())]).await;
    let claims = github_claims("o/a");
    valid(issuers.login(&rsa.sign(&claims)).await);
    valid(issuers.login(&ec.sign(&claims)).await);
    // An ES256 token naming the RSA key (signed with the EC key): the header's alg never
    // chooses how a key is used.
    let token = sign_raw(&json!({"alg": "ES256", "kid": "rsa"}), &claims, &ec);
    assert!(matches!(
        refused(issuers.login(&token).await),
        Refusal::KeyMismatch { kind: "an RSA key", .. }
    ));
    let token = sign_raw(&json!({"alg": "RS256", "kid": "ec"}), &claims, &rsa);
    assert!(matches!(
        refused(issuers.login(&token).await),
        Refusal::KeyMismatch {
            kind: "a P-256 key",
            ..
        }
    ));
}

#[tokio::test]
async fn every_offered_algorithm_verifies() {
    let rsa = SigningKey::rsa("rsa");
    let p256 = SigningKey::p256("p256");
    let p384 = SigningKey::p384("p384");
    let ed = SigningKey::ed25519("ed");
    // The RSA key without an `alg` of its own, so that every RSA algorithm may use it.
    let server = JwksServer::start(&jwks(&[&rsa.bare_jwk(), &p256.jwk, &p384.jwk, &ed.jwk]));
    let mut section = github(&server.url());
    section.algorithms = Some(
        [
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
        ]
        .map(String::from)
        .to_vec(),
    );
    let issuers = start(&[section]).await;
    let claims = github_claims("o/a");
    use Algorithm::*;
    for alg in [RS256, RS384, RS512, PS256, PS384, PS512] {
        let token = rsa.sign_as(alg, &claims);
        assert_eq!(valid(issuers.login(&token).await).user(), "github:o/a", "{alg:?}");
    }
    for key in [&p256, &p384, &ed] {
        assert_eq!(
            valid(issuers.login(&key.sign(&claims)).await).user(),
            "github:o/a",
            "{:?}",
            key.alg
        );
    }
    // The default list is RS256 and ES256 only.
    let issuers = start(&[github(&server.url())]).await;
    for key in [&p384, &ed] {
        assert!(matches!(
            refused(issuers.login(&key.sign(&claims)).await),
            Refusal::Algorithm(_)
        ));
    }
}

#[tokio::test]
async fn tampered_tokens_and_embedded_keys_are_refused() {
    let key = SigningKey::rsa("k");
    let server = JwksServer::start(&jwks(&[&key.jwk]));
    let issuers = start(&[github(&server.url())]).await;
    let token = key.sign(&github_claims("o/a"));
    // Another repository in the claims, the signature kept.
    let (header, mut claims, signature) = split(&token);
    claims["repository"] = json!("o/admin");
    assert_eq!(
        refused(issuers.login(&assemble(&header, &claims, &signature)).await),
        Refusal::BadSignature
    );
    // A flipped bit in the signature.
    let mut bytes = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &signature).unwrap();
    bytes[10] ^= 1;
    let flipped = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes);
    let (header, claims, _) = split(&token);
    assert_eq!(
        refused(issuers.login(&assemble(&header, &claims, &flipped)).await),
        Refusal::BadSignature
    );
    // The attacker's own key in the header (jwk, jku): never used, never fetched.
    let attacker = SigningKey::rsa("k");
    let attacker_server = JwksServer::start(&jwks(&[&attacker.jwk]));
    let header = json!({"alg": "RS256", "kid": "k", "jwk": attacker.jwk, "jku": attacker_server.url()});
    let token = sign_raw(&header, &github_claims("o/a"), &attacker);
    assert_eq!(refused(issuers.login(&token).await), Refusal::BadSignature);
    assert_eq!(attacker_server.requests(), 0);
    let header = json!({"alg": "RS256", "kid": "attacker", "jwk": attacker.jwk});
    let token = sign_raw(&header, &github_claims("o/a"), &attacker);
    assert_eq!(
        refused(issuers.login(&token).await),
        Refusal::UnknownKey("attacker".into())
    );
    assert_eq!(issuers.stats().issuers[0].verified, 0);
}

#[tokio::test]
async fn groups_come_as_a_string_or_an_array_of_strings() {
    let key = SigningKey::rsa("k");
    let server = JwksServer::start(&jwks(&[&key.jwk]));
    let issuers = start(&[github(&server.url())]).await;
    let claims = github_claims("o/a");
    let groups_of = |groups: Value| key.sign(&with(claims.clone(), json!({ "groups": groups })));
    let login = valid(issuers.login(&groups_of(json!("release"))).await);
    assert_eq!(login.groups(), ["github:release"]);
    let login = valid(issuers.login(&groups_of(json!(["ops", "dev", "ops"]))).await);
    assert_eq!(login.groups(), ["github:dev", "github:ops"]);
    assert!(valid(issuers.login(&groups_of(json!([]))).await).groups().is_empty());
    assert!(valid(issuers.login(&groups_of(Value::Null)).await).groups().is_empty());
    for bad in [
        json!(["ops", 1]),
        json!({"a": "b"}),
        json!(7),
        json!([""]),
        json!(["a\nb"]),
    ] {
        assert!(
            matches!(
                refused(issuers.login(&groups_of(bad.clone())).await),
                Refusal::BadClaim(_)
            ),
            "{bad}"
        );
    }
    let many: Vec<String> = (0..300).map(|i| format!("g{i}")).collect();
    assert!(matches!(
        refused(issuers.login(&groups_of(json!(many))).await),
        Refusal::BadClaim(_)
    ));
}

#[tokio::test]
async fn the_user_name_claim_must_be_a_plain_string() {
    let key = SigningKey::rsa("k");
    let server = JwksServer::start(&jwks(&[&key.jwk]));
    let issuers = start(&[github(&server.url())]).await;
    let claims = github_claims("o/a");
    assert_eq!(
        refused(
            issuers
                .login(&key.sign(&with(claims.clone(), json!({"repository": null}))))
                .await
        ),
        Refusal::MissingClaim("repository".into())
    );
    for bad in [
        json!(""),
        json!(42),
        json!(["o/a"]),
        json!("o/a\u{0}"),
        json!("x".repeat(257)),
    ] {
        let token = key.sign(&with(claims.clone(), json!({ "repository": bad })));
        assert!(
            matches!(refused(issuers.login(&token).await), Refusal::BadClaim(_)),
            "{bad}"
        );
    }
    let token = key.sign(&with(claims, json!({"repository": "x".repeat(256)})));
    assert_eq!(valid(issuers.login(&token).await).user().len(), "github:".len() + 256);
}

#[tokio::test]
async fn a_token_without_kid_needs_exactly_one_fitting_key() {
    let one = SigningKey::rsa("one");
    let ec = SigningKey::p256("ec");
    let server = JwksServer::start(&jwks(&[&one.jwk, &ec.jwk]));
    let issuers = start(&[github(&server.url())]).await;
    let claims = github_claims("o/a");
    let unnamed = |key: &SigningKey| key.sign_with(&Header::new(key.alg), &claims);
    // One RSA key and one EC key: each fits only its own algorithm.
    valid(issuers.login(&unnamed(&one)).await);
    valid(issuers.login(&unnamed(&ec)).await);
    let two = SigningKey::rsa("two");
    server.set_keys(&jwks(&[&one.jwk, &two.jwk, &ec.jwk]));
    issuers.refresh_all().await;
    assert_eq!(refused(issuers.login(&unnamed(&two)).await), Refusal::AmbiguousKey(2));
}

#[tokio::test]
async fn an_unknown_kid_fetches_the_keys_once() {
    let key = SigningKey::rsa("k");
    let stranger = SigningKey::rsa("made-up");
    let token = stranger.sign(&github_claims("o/a"));
    let server = JwksServer::start(&jwks(&[&key.jwk]));
    let mut section = github(&server.url());
    // Generous, so that a loaded machine still makes the first login within it.
    section.jwks_min_interval = Some(Duration::from_secs(2));
    let issuers = start(&[section]).await;
    assert_eq!(server.requests(), 1);
    // Within the rate limit of the start-up fetch: refused without asking the issuer.
    assert_eq!(
        refused(issuers.login(&token).await),
        Refusal::UnknownKey("made-up".into())
    );
    assert_eq!(server.requests(), 1);
    wait_for("the rate limit to pass", || async {
        let age = issuers.stats().issuers[0].key_set_age?;
        (age > Duration::from_secs(2)).then_some(())
    })
    .await;
    assert_eq!(
        refused(issuers.login(&token).await),
        Refusal::UnknownKey("made-up".into())
    );
    assert_eq!(server.requests(), 2, "one early fetch for the unknown kid");
}

#[tokio::test]
async fn a_flood_of_made_up_kids_costs_the_issuer_one_request() {
    let key = SigningKey::rsa("k");
    let server = JwksServer::start(&jwks(&[&key.jwk]));
    let mut section = github(&server.url());
    // Longer than the flood takes, even on a loaded machine.
    section.jwks_min_interval = Some(Duration::from_secs(2));
    let issuers = start(&[section]).await;
    wait_for("the rate limit to pass", || async {
        let age = issuers.stats().issuers[0].key_set_age?;
        (age > Duration::from_secs(2)).then_some(())
    })
    .await;
    let before = server.requests();
    let attacker = SigningKey::rsa("unused");
    let mut logins = tokio::task::JoinSet::new();
    for i in 0..100 {
        let issuers = Arc::clone(&issuers);
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(format!("made-up-{i}"));
        let token = attacker.sign_with(&header, &github_claims("o/a"));
        logins.spawn(async move { issuers.login(&token).await });
    }
    while let Some(check) = logins.join_next().await {
        assert!(matches!(refused(check.unwrap()), Refusal::UnknownKey(_)));
    }
    let fetched = server.requests() - before;
    assert!(
        (1..=2).contains(&fetched),
        "100 made-up kids made {fetched} fetches (expected 1, at most 2)"
    );
    let stats = &issuers.stats().issuers[0];
    assert!(stats.fetches_limited >= 98, "{stats:?}");
    assert_eq!(stats.refused, 100);
}

#[tokio::test]
async fn rotated_keys_are_picked_up_and_withdrawn_ones_stop_working() {
    let old = SigningKey::rsa("2024");
    let new = SigningKey::rsa("2025");
    let server = JwksServer::start(&jwks(&[&old.jwk]));
    let mut section = github(&server.url());
    section.jwks_min_interval = Some(Duration::from_millis(100));
    let issuers = start(&[section]).await;
    let old_token = old.sign(&github_claims("o/a"));
    valid(issuers.login(&old_token).await);
    // The issuer publishes the new key and signs with it: the unknown kid fetches it.
    server.set_keys(&jwks(&[&new.jwk]));
    let new_token = new.sign(&github_claims("o/a"));
    let login = wait_for("the new key", || async {
        match issuers.login(&new_token).await {
            OidcCheck::Valid(login) => Some(login),
            OidcCheck::Refused(Refusal::UnknownKey(_)) => None,
            other => panic!("{other:?}"),
        }
    })
    .await;
    assert_eq!(login.user(), "github:o/a");
    // The old key is gone from the set, so its token no longer passes, cached or not.
    assert_eq!(
        refused(issuers.login(&old_token).await),
        Refusal::UnknownKey("2024".into())
    );
    assert_eq!(issuers.stats().issuers[0].keys, 1);
}

#[tokio::test]
async fn keys_missing_at_start_fail_closed_until_they_arrive() {
    let key = SigningKey::rsa("k");
    let mut server = JwksServer::down(&jwks(&[&key.jwk]));
    let mut section = github(&server.url());
    section.jwks_min_interval = Some(Duration::from_millis(100));
    let issuers = start(&[section]).await;
    let stats = &issuers.stats().issuers[0];
    assert!(!stats.up && stats.keys == 0 && stats.fetch_errors >= 1, "{stats:?}");
    let token = key.sign(&github_claims("o/a"));
    assert_eq!(issuers.login(&token).await, OidcCheck::Unavailable);
    server.resume();
    let login = wait_for("the keys", || async {
        match issuers.login(&token).await {
            OidcCheck::Valid(login) => Some(login),
            OidcCheck::Unavailable => None,
            other => panic!("{other:?}"),
        }
    })
    .await;
    assert_eq!(login.user(), "github:o/a");
    let stats = &issuers.stats().issuers[0];
    assert!(stats.up && stats.keys == 1 && stats.unavailable >= 1, "{stats:?}");
}

#[tokio::test]
async fn keys_missing_at_start_arrive_on_the_schedule() {
    let key = SigningKey::rsa("k");
    let mut server = JwksServer::down(&jwks(&[&key.jwk]));
    let mut section = github(&server.url());
    // No early fetch can happen: only the schedule brings the keys.
    section.jwks_min_interval = Some(Duration::from_secs(3600));
    section.jwks_refresh = Some(Duration::from_millis(100));
    let issuers = start(&[section]).await;
    let token = key.sign(&github_claims("o/a"));
    assert_eq!(issuers.login(&token).await, OidcCheck::Unavailable);
    server.resume();
    wait_for("the scheduled fetch", || async {
        issuers.stats().issuers[0].up.then_some(())
    })
    .await;
    valid(issuers.login(&token).await);
    assert!(issuers.stats().issuers[0].fetches_limited >= 1);
}

#[tokio::test]
async fn the_last_good_key_set_stays_when_the_issuer_goes_away() {
    let key = SigningKey::rsa("k");
    let mut server = JwksServer::start(&jwks(&[&key.jwk]));
    let issuers = start(&[github(&server.url())]).await;
    let token = key.sign(&github_claims("o/a"));
    valid(issuers.login(&token).await);
    issuers.clear();
    // Down, then answering with errors, then with something that is no key set.
    server.stop();
    issuers.refresh_all().await;
    valid(issuers.login(&token).await);
    server.resume();
    server.set_mode(Mode::Status(503));
    issuers.refresh_all().await;
    server.set_mode(Mode::Serve);
    server.set_keys("<html>maintenance</html>");
    issuers.refresh_all().await;
    server.set_keys(r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#);
    issuers.refresh_all().await;
    issuers.clear();
    let login = valid(issuers.login(&token).await);
    assert_eq!(login.user(), "github:o/a");
    let stats = &issuers.stats().issuers[0];
    assert!(!stats.up, "{stats:?}");
    assert_eq!((stats.keys, stats.fetch_errors, stats.outages), (1, 4, 1), "{stats:?}");
    assert_eq!(stats.verified, 3, "checked again after each clear, with the old key");
}

#[tokio::test]
async fn a_hanging_issuer_times_out() {
    let key = SigningKey::rsa("k");
    let server = JwksServer::start(&jwks(&[&key.jwk]));
    server.set_mode(Mode::Hang);
    let mut section = github(&server.url());
    section.timeout = Some(Duration::from_millis(300));
    // `start` itself fails the test if it does not return.
    let issuers = start(&[section]).await;
    let stats = &issuers.stats().issuers[0];
    assert!(
        !stats.up && stats.fetch_errors == 1 && server.requests() == 1,
        "{stats:?}"
    );
    assert_eq!(
        issuers.login(&key.sign(&github_claims("o/a"))).await,
        OidcCheck::Unavailable
    );
}

#[tokio::test]
async fn keys_from_a_file_follow_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let first = SigningKey::p256("k8s-a");
    let second = SigningKey::p256("k8s-b");
    let jwks_path = dir.path().join("k8s.jwks");
    std::fs::write(&jwks_path, jwks(&[&first.jwk])).unwrap();
    let config = dir.path().join("csel-auth.toml");
    std::fs::write(
        &config,
        format!(
            "[[oidc]]\nissuer = {KUBERNETES:?}\naudience = {AUDIENCE:?}\njwks_file = \"k8s.jwks\"\n\
             username_prefix = \"k8s:\"\njwks_refresh = \"50ms\"\n"
        ),
    )
    .unwrap();
    let sections = ConfigFile::load(&config).unwrap().oidc;
    let issuers = start(&sections).await;
    let claims = kubernetes_claims("ci", "builder");
    valid(issuers.login(&first.sign(&claims)).await);
    // Replaced the way deployments do it (write elsewhere, rename over).
    let next = dir.path().join("k8s.jwks.new");
    std::fs::write(&next, jwks(&[&second.jwk])).unwrap();
    std::fs::rename(&next, &jwks_path).unwrap();
    let token = second.sign(&claims);
    wait_for("the changed file", || async {
        matches!(issuers.login(&token).await, OidcCheck::Valid(_)).then_some(())
    })
    .await;
    assert_eq!(
        refused(issuers.login(&first.sign(&claims)).await),
        Refusal::UnknownKey("k8s-a".into())
    );
    // A broken file keeps the last good keys.
    std::fs::write(&jwks_path, "{ not json").unwrap();
    wait_for("the broken file to be noticed", || async {
        (!issuers.stats().issuers[0].up).then_some(())
    })
    .await;
    issuers.clear();
    valid(issuers.login(&token).await);
    // Reported once: looking at the unchanged broken file again reads and counts nothing.
    let before = issuers.stats().issuers[0].clone();
    for _ in 0..3 {
        issuers.refresh_all().await;
    }
    let after = &issuers.stats().issuers[0];
    assert_eq!(
        (after.fetches, after.fetch_errors),
        (before.fetches, before.fetch_errors)
    );
    // Repaired: read again.
    std::fs::write(&jwks_path, jwks(&[&second.jwk, &first.jwk])).unwrap();
    issuers.refresh_all().await;
    let repaired = &issuers.stats().issuers[0];
    assert!(repaired.up && repaired.keys == 2, "{repaired:?}");
}

#[tokio::test]
async fn a_missing_file_at_start_is_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::rsa("k");
    let path = dir.path().join("later.jwks");
    let section = OidcSection {
        jwks_url: None,
        jwks_file: Some(path.clone()),
        jwks_refresh: Some(Duration::from_millis(50)),
        ..github("")
    };
    let issuers = start(&[section]).await;
    let token = key.sign(&github_claims("o/a"));
    assert_eq!(issuers.login(&token).await, OidcCheck::Unavailable);
    std::fs::write(&path, jwks(&[&key.jwk])).unwrap();
    wait_for("the file to appear", || async {
        matches!(issuers.login(&token).await, OidcCheck::Valid(_)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn dropping_the_issuers_ends_their_refresh() {
    let key = SigningKey::rsa("k");
    let server = JwksServer::start(&jwks(&[&key.jwk]));
    let mut section = github(&server.url());
    section.jwks_refresh = Some(Duration::from_millis(20));
    let issuers = start(&[section]).await;
    wait_for("a scheduled fetch", || async { (server.requests() >= 2).then_some(()) }).await;
    drop(issuers);
    // The refresh task is aborted at once; give a started request the time to land, then
    // check that none follows.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = server.requests();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.requests(), after);
}
