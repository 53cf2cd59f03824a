//! The docker token realm (docs/token-realm.md) through the real binary: the
//! `/token` endpoint, Bearer challenges, tokens on `/auth`, and the key
//! file shared across restarts and replicas.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use csel_auth::identity::Htpasswd;
use csel_auth::token::{self, Identity, Scope, TokenKey, TokenSettings};
use serde_json::Value;

use crate::kit::files::{write, write_and_rename};
use crate::kit::http::Response;
use crate::kit::service::{alone, binary, CselAuth, Setup, RELOAD_DEADLINE};
use crate::kit::wait::{time_until, wait_for};
use crate::kit::{basic, bcrypt_hash, password, standard_htpasswd, RULES};

const SERVICE: &str = "test-registry";
const LIBRARY: &str = "/v2/library/alpine/manifests/3.19";
const COOLTEAM: &str = "/v2/coolteam/app/manifests/1.0";
const SCOPES: &str = "scope=repository:library/alpine:pull&scope=repository:coolteam/app:pull,push";

fn key_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("csel-auth-key-").tempdir().unwrap()
}

fn start(key: &Path) -> CselAuth {
    Setup::new(RULES).token_realm(key.to_path_buf()).start()
}

fn start_with_refresh_tokens(key: &Path) -> CselAuth {
    Setup::new(RULES)
        .token_realm(key.to_path_buf())
        .arg("--refresh-tokens")
        .start()
}

/// GET /token with optional Basic credentials.
fn get_token(service: &CselAuth, query: &str, login: Option<(&str, &str)>) -> Response {
    let credentials = login.map(|(user, pass)| basic(user, pass));
    let headers: Vec<(&str, &str)> = credentials.iter().map(|c| ("Authorization", c.as_str())).collect();
    service.request("GET", &format!("/token?{query}"), &headers, b"")
}

fn post_token(service: &CselAuth, form: &str) -> Response {
    service.request(
        "POST",
        "/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    )
}

/// The access token of a successful token response.
fn token_of(response: &Response) -> String {
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    let token = body["token"].as_str().unwrap_or_default().to_string();
    assert!(!token.is_empty(), "{body}");
    assert_eq!(body["access_token"], body["token"], "{body}");
    assert!(body["expires_in"].as_u64().is_some_and(|s| s >= 60), "{body}");
    assert!(body["issued_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{body}");
    token
}

fn user_token(service: &CselAuth, user: &str) -> String {
    token_of(&get_token(
        service,
        &format!("service={SERVICE}"),
        Some((user, &password(user))),
    ))
}

fn anonymous_token(service: &CselAuth) -> String {
    token_of(&get_token(service, &format!("service={SERVICE}"), None))
}

/// The claims of a token, without checking it.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap_or_default();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn challenge(service: &CselAuth, scope: Option<&str>, error: Option<&str>) -> String {
    let mut value = format!("Bearer realm=\"{}\",service=\"{SERVICE}\"", service.realm());
    if let Some(scope) = scope {
        value.push_str(&format!(",scope=\"{scope}\""));
    }
    if let Some(error) = error {
        value.push_str(&format!(",error=\"{error}\""));
    }
    value
}

fn assert_challenged(response: &Response, expected: &str, context: &str) {
    assert_eq!(response.status, 401, "{context}: {}", response.text());
    assert_eq!(response.header("www-authenticate"), Some(expected), "{context}");
    assert_eq!(response.header("x-auth-user"), None, "{context}");
}

fn assert_allowed(response: &Response, user: &str, context: &str) {
    assert_eq!(response.status, 200, "{context}: {}", response.text());
    assert_eq!(response.header("x-auth-user"), Some(user), "{context}");
}

#[test]
fn token_endpoint_answers_anonymous_and_users_and_refuses_wrong_passwords() {
    let keys = key_dir();
    let service = start(&keys.path().join("key"));

    let anonymous = anonymous_token(&service);
    assert_eq!(claims(&anonymous)["sub"], "");
    assert_eq!(claims(&anonymous)["aud"], SERVICE);
    // The service parameter may be left out.
    token_of(&get_token(&service, "", None));

    let alice = user_token(&service, "alice");
    assert_eq!(claims(&alice)["sub"], "alice");

    for (user, pass) in [("alice", "wrong"), ("mallory", "mallory-password")] {
        let response = get_token(&service, &format!("service={SERVICE}"), Some((user, pass)));
        assert_eq!(response.status, 401, "{user}: {}", response.text());
        assert!(response.json().get("token").is_none());
    }
    assert_eq!(service.metric("csel_auth_tokens_issued_total"), 3.0);

    // Two Authorization headers are ambiguous: refused, even if both are right.
    let alice = basic("alice", &password("alice"));
    let response = service.request(
        "GET",
        &format!("/token?service={SERVICE}"),
        &[("Authorization", &alice), ("Authorization", &alice)],
        b"",
    );
    assert_eq!(response.status, 401, "{}", response.text());
}

#[test]
fn granted_scopes_follow_the_rules() {
    let keys = key_dir();
    let service = start(&keys.path().join("key"));
    let scope_for = |login: Option<&str>| {
        let password = login.map(password);
        let credentials = login.zip(password.as_deref());
        let response = get_token(&service, &format!("service={SERVICE}&{SCOPES}"), credentials);
        assert_eq!(response.status, 200, "{login:?}: {}", response.text());
        response.json()["scope"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(scope_for(None), "repository:library/alpine:pull");
    assert_eq!(scope_for(Some("carol")), "repository:library/alpine:pull");
    assert_eq!(
        scope_for(Some("alice")),
        "repository:library/alpine:pull repository:coolteam/app:pull,push"
    );
    // The token's access claim says the same.
    let response = get_token(
        &service,
        &format!("service={SERVICE}&{SCOPES}"),
        Some(("bob", &password("bob"))),
    );
    let access = &claims(&token_of(&response))["access"];
    assert_eq!(access[1]["name"], "coolteam/app");
    assert_eq!(access[1]["actions"], serde_json::json!(["pull", "push"]));
    // Actions the rules do not give are left out.
    let response = get_token(
        &service,
        &format!("service={SERVICE}&scope=repository:coolteam/app:pull,push,delete"),
        Some(("alice", &password("alice"))),
    );
    assert_eq!(response.json()["scope"], "repository:coolteam/app:pull,push");
}

#[test]
fn oauth_password_and_refresh_grants() {
    let keys = key_dir();
    let service = start_with_refresh_tokens(&keys.path().join("key"));
    let password_grant = |extra: &str| {
        post_token(
            &service,
            &format!(
                "grant_type=password&username=alice&password=alice-password&service={SERVICE}&client_id=test{extra}"
            ),
        )
    };
    let plain = password_grant("");
    token_of(&plain);
    assert!(plain.json().get("refresh_token").is_none(), "{}", plain.text());

    let offline = password_grant("&access_type=offline");
    let access = token_of(&offline);
    assert_eq!(claims(&access)["sub"], "alice");
    let refresh = offline.json()["refresh_token"].as_str().unwrap_or_default().to_string();
    assert!(!refresh.is_empty(), "{}", offline.text());

    // GET with offline_token=true gives one too.
    let get = get_token(
        &service,
        &format!("service={SERVICE}&offline_token=true"),
        Some(("alice", &password("alice"))),
    );
    token_of(&get);
    assert!(get.json()["refresh_token"].as_str().is_some_and(|t| !t.is_empty()));

    let refreshed = post_token(
        &service,
        &format!("grant_type=refresh_token&refresh_token={refresh}&service={SERVICE}&client_id=test&{SCOPES}"),
    );
    let renewed = token_of(&refreshed);
    assert_eq!(claims(&renewed)["sub"], "alice");
    assert_eq!(
        refreshed.json()["scope"],
        "repository:library/alpine:pull repository:coolteam/app:pull,push"
    );
    assert_allowed(
        &service.auth_bearer("PUT", COOLTEAM, &renewed),
        "alice",
        "refreshed token",
    );

    // Each kind only works as itself.
    let expected = challenge(
        &service,
        Some("repository:coolteam/app:pull,push"),
        Some("invalid_token"),
    );
    assert_challenged(
        &service.auth_bearer("PUT", COOLTEAM, &refresh),
        &expected,
        "refresh token as access token",
    );
    let response = post_token(
        &service,
        &format!("grant_type=refresh_token&refresh_token={access}&service={SERVICE}"),
    );
    assert_eq!(
        response.status,
        401,
        "access token as refresh token: {}",
        response.text()
    );

    let response = post_token(
        &service,
        &format!("grant_type=password&username=alice&password=wrong&service={SERVICE}"),
    );
    assert_eq!(response.status, 401, "{}", response.text());
    assert_eq!(response.json()["error"], "invalid_grant");
}

#[test]
fn a_wrong_service_is_a_bad_request() {
    let keys = key_dir();
    let service = start(&keys.path().join("key"));
    let response = get_token(&service, "service=other-registry", Some(("alice", &password("alice"))));
    assert_eq!(response.status, 400, "{}", response.text());
    let response = post_token(
        &service,
        "grant_type=password&username=alice&password=alice-password&service=other-registry",
    );
    assert_eq!(response.status, 400, "{}", response.text());
    assert_eq!(service.metric("csel_auth_tokens_issued_total"), 0.0);
}

#[test]
fn requests_without_a_token_are_challenged_with_their_scope() {
    let keys = key_dir();
    let service = start(&keys.path().join("key"));
    let cases = [
        ("GET", COOLTEAM, Some("repository:coolteam/app:pull")),
        ("HEAD", LIBRARY, Some("repository:library/alpine:pull")),
        ("PUT", COOLTEAM, Some("repository:coolteam/app:pull,push")),
        (
            "POST",
            "/v2/coolteam/app/blobs/uploads/",
            Some("repository:coolteam/app:pull,push"),
        ),
        (
            "PATCH",
            "/v2/coolteam/app/blobs/uploads/1234",
            Some("repository:coolteam/app:pull,push"),
        ),
        ("GET", "/v2/", None),
    ];
    for (method, uri, scope) in cases {
        let expected = challenge(&service, scope, None);
        assert_challenged(&service.auth(method, uri, None), &expected, &format!("{method} {uri}"));
        // Empty Basic credentials (podman, skopeo) are no credentials.
        let response = service.auth_headers(&[
            ("X-Original-URI", uri),
            ("X-Original-Method", method),
            ("Authorization", "Basic Og=="),
        ]);
        assert_challenged(&response, &expected, &format!("{method} {uri} with Og=="));
    }
}

#[test]
fn tokens_carry_the_subject_and_the_rules_decide() {
    let keys = key_dir();
    let service = start(&keys.path().join("key"));
    let anonymous = anonymous_token(&service);
    assert_allowed(
        &service.auth_bearer("GET", "/v2/", &anonymous),
        "anonymous",
        "the ping with a token",
    );
    assert_allowed(
        &service.auth_bearer("GET", LIBRARY, &anonymous),
        "anonymous",
        "anonymous pull",
    );
    // Anonymous token, denied: 401 insufficient_scope (docker: "pull access
    // denied … may require 'docker login'").
    assert_challenged(
        &service.auth_bearer("GET", COOLTEAM, &anonymous),
        &challenge(
            &service,
            Some("repository:coolteam/app:pull"),
            Some("insufficient_scope"),
        ),
        "anonymous token on coolteam",
    );
    assert_challenged(
        &service.auth_bearer("PUT", LIBRARY, &anonymous),
        &challenge(
            &service,
            Some("repository:library/alpine:pull,push"),
            Some("insufficient_scope"),
        ),
        "anonymous push",
    );

    let alice = user_token(&service, "alice");
    assert_allowed(&service.auth_bearer("PUT", COOLTEAM, &alice), "alice", "alice pushes");
    assert_allowed(
        &service.auth_bearer("GET", LIBRARY, &alice),
        "alice",
        "alice pulls library",
    );
    // A valid token that does not cover the request: 401 insufficient_scope
    // (as the distribution registry answers), which docker reports as "denied".
    let response = service.auth_bearer("DELETE", COOLTEAM, &alice);
    assert_eq!(response.status, 401, "alice deletes: {}", response.text());
    assert_eq!(
        response.header("www-authenticate"),
        Some(
            challenge(
                &service,
                Some("repository:coolteam/app:delete"),
                Some("insufficient_scope")
            )
            .as_str()
        )
    );

    let carol = user_token(&service, "carol");
    assert_eq!(service.auth_bearer("GET", COOLTEAM, &carol).status, 401);
    assert_allowed(&service.auth_bearer("GET", "/v2/", &carol), "carol", "the ping");
    assert_allowed(
        &service.auth_bearer("PUT", "/v2/carol/x/manifests/1", &carol),
        "carol",
        "own namespace",
    );

    // Basic credentials keep working in token mode (challenges are Bearer).
    assert_allowed(&service.auth_user("PUT", COOLTEAM, "alice"), "alice", "Basic alice");
    assert_eq!(service.auth_user("GET", COOLTEAM, "carol").status, 403);
    assert_challenged(
        &service.auth("GET", COOLTEAM, Some(("alice", "wrong"))),
        &challenge(&service, Some("repository:coolteam/app:pull"), None),
        "wrong Basic password",
    );
}

fn test_settings() -> TokenSettings {
    TokenSettings {
        realm: "unused".into(),
        service: SERVICE.into(),
        ttl: Duration::from_secs(300),
        refresh_ttl: Duration::from_secs(86_400),
    }
}

/// A token as the service would issue it: a user's is bound to their entry in
/// [`standard_htpasswd`].
fn craft(key: &TokenKey, user: Option<&str>, now: SystemTime) -> String {
    let identity = match user {
        Some(user) => Identity::user(user),
        None => Identity::anonymous(),
    };
    let htpasswd = Htpasswd::parse("users.htpasswd", &standard_htpasswd()).unwrap();
    let binding = user
        .and_then(|user| htpasswd.entry_fingerprint(user))
        .unwrap_or_default();
    token::issue(
        key,
        &test_settings(),
        &identity,
        &coolteam_access(),
        &binding,
        false,
        now,
    )
    .token
}

fn coolteam_access() -> [Scope; 1] {
    [Scope {
        kind: "repository".into(),
        name: "coolteam/app".into(),
        actions: vec!["pull".into(), "push".into()],
    }]
}

#[test]
fn invalid_tokens_are_refused_with_invalid_token() {
    let keys = key_dir();
    let key_path = keys.path().join("key");
    let service = start(&key_path);
    let key = TokenKey::load_or_create(&key_path).unwrap();
    let now = SystemTime::now();

    // A token crafted here with the service's key is accepted...
    let crafted = craft(&key, Some("alice"), now);
    assert_allowed(
        &service.auth_bearer("PUT", COOLTEAM, &crafted),
        "alice",
        "crafted token",
    );

    let expired = craft(&key, Some("alice"), now - Duration::from_secs(3600));
    let forged = craft(&TokenKey::from_bytes(&[7; 32]).unwrap(), Some("alice"), now);
    let other_service = token::issue(
        &key,
        &TokenSettings {
            service: "other-registry".into(),
            ..test_settings()
        },
        &Identity::user("alice"),
        &[],
        "",
        false,
        now,
    )
    .token;
    // carol's token turned into admin-parente's.
    let carol = craft(&key, Some("carol"), now);
    let parts: Vec<&str> = carol.split('.').collect();
    let mut payload = claims(&carol);
    payload["sub"] = "admin-parente".into();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        parts[2]
    );
    let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let alg_none = format!("{none_header}.{}.", parts[1]);
    let hs256_unsigned = format!("{}.{}.", parts[0], parts[1]);

    // Signed with the right key, but bound to no password entry.
    let unbound = token::issue(
        &key,
        &test_settings(),
        &Identity::user("alice"),
        &coolteam_access(),
        "",
        false,
        now,
    )
    .token;
    let bad: [(&str, &str); 10] = [
        ("unbound", &unbound),
        ("expired", &expired),
        ("forged", &forged),
        ("for another service", &other_service),
        ("tampered", &tampered),
        ("alg none", &alg_none),
        ("no signature", &hs256_unsigned),
        ("malformed", "abc"),
        ("malformed, three parts", "a.b.c"),
        ("malformed, base64 of garbage", "eyJ9.eyJ9.AAAA"),
    ];
    let expected = challenge(
        &service,
        Some("repository:coolteam/app:pull,push"),
        Some("invalid_token"),
    );
    for (what, token) in bad {
        assert_challenged(&service.auth_bearer("PUT", COOLTEAM, token), &expected, what);
    }
    // Not even the ping or an anonymous pull gets through with a bad token.
    let ping = challenge(&service, None, Some("invalid_token"));
    assert_challenged(
        &service.auth_bearer("GET", "/v2/", &forged),
        &ping,
        "forged token on the ping",
    );
    assert_challenged(
        &service.auth_bearer("GET", LIBRARY, &expired),
        &challenge(&service, Some("repository:library/alpine:pull"), Some("invalid_token")),
        "expired token on library",
    );
}

#[test]
fn a_rule_change_revokes_tokens_already_issued() {
    let _alone = alone();
    let keys = key_dir();
    let service = Setup::new(RULES).token_realm(keys.path().join("key")).start();
    let alice = user_token(&service, "alice");
    assert_allowed(
        &service.auth_bearer("PUT", COOLTEAM, &alice),
        "alice",
        "before the change",
    );

    let without_team = RULES.replace("grant push on coolteam to @coolteam", "");
    assert_ne!(without_team, RULES);
    write_and_rename(service.rules(), &without_team);
    let revoked = time_until(RELOAD_DEADLINE, || {
        service.auth_bearer("PUT", COOLTEAM, &alice).status == 401
    });
    assert!(
        revoked.is_some(),
        "the token still worked {RELOAD_DEADLINE:?} after the rule change"
    );
    assert_eq!(service.auth_bearer("GET", COOLTEAM, &alice).status, 401);
    assert_allowed(
        &service.auth_bearer("GET", LIBRARY, &alice),
        "alice",
        "library is still open",
    );

    // A user removed from htpasswd loses their tokens too.
    let htpasswd = service.htpasswd().to_path_buf();
    let remaining: String = standard_htpasswd()
        .lines()
        .filter(|line| !line.starts_with("alice:"))
        .map(|line| format!("{line}\n"))
        .collect();
    write_and_rename(&htpasswd, &remaining);
    let expected = challenge(&service, Some("repository:library/alpine:pull"), Some("invalid_token"));
    let removed = time_until(RELOAD_DEADLINE, || {
        service.auth_bearer("GET", LIBRARY, &alice).header("www-authenticate") == Some(expected.as_str())
    });
    assert!(removed.is_some(), "a removed user's token still worked");
}

#[test]
fn tokens_survive_restarts_and_are_shared_by_replicas() {
    let keys = key_dir();
    let key_path: PathBuf = keys.path().join("shared.key");
    let first = start(&key_path);
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key file mode");
    let key_text = std::fs::read_to_string(&key_path).unwrap();

    let second = start(&key_path);
    let from_first = user_token(&first, "alice");
    let from_second = user_token(&second, "bob");
    assert_allowed(
        &second.auth_bearer("PUT", COOLTEAM, &from_first),
        "alice",
        "first's token on second",
    );
    assert_allowed(
        &first.auth_bearer("PUT", COOLTEAM, &from_second),
        "bob",
        "second's token on first",
    );

    drop(first);
    let restarted = start(&key_path);
    assert_allowed(
        &restarted.auth_bearer("PUT", COOLTEAM, &from_first),
        "alice",
        "a token from before the restart",
    );
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), key_text, "the key is kept");

    // A service with another key does not accept them.
    let other_keys = key_dir();
    let stranger = start(&other_keys.path().join("key"));
    assert_eq!(stranger.auth_bearer("PUT", COOLTEAM, &from_first).status, 401);
}

#[test]
fn a_password_change_ends_refresh_tokens_issued_before_it() {
    let keys = key_dir();
    let service = start_with_refresh_tokens(&keys.path().join("key"));
    let offline = post_token(
        &service,
        &format!("grant_type=password&username=alice&password=alice-password&service={SERVICE}&access_type=offline"),
    );
    token_of(&offline);
    let refresh = offline.json()["refresh_token"].as_str().unwrap_or_default().to_string();
    let refresh_grant = || {
        post_token(
            &service,
            &format!("grant_type=refresh_token&refresh_token={refresh}&service={SERVICE}"),
        )
    };
    token_of(&refresh_grant());

    // Same password, new hash (a new salt): the entry changed, so the token ends.
    let htpasswd = service.dir().join("users.htpasswd");
    let changed = standard_htpasswd()
        .lines()
        .map(|line| match line.strip_prefix("alice:") {
            Some(_) => format!("alice:{}\n", bcrypt_hash("alice-new-password")),
            None => format!("{line}\n"),
        })
        .collect::<String>();
    write(&htpasswd, &changed);
    wait_for(Duration::from_secs(5), "the new password in force", || {
        (service
            .auth("GET", LIBRARY, Some(("alice", "alice-new-password")))
            .status
            == 200)
            .then_some(())
    });
    let refused = refresh_grant();
    assert_eq!(refused.status, 401, "{}", refused.text());
}

/// `csel_auth_version{file="htpasswd"}`: the number of the htpasswd version in force.
fn htpasswd_version(service: &CselAuth) -> f64 {
    service.metric("csel_auth_version{file=\"htpasswd\"}")
}

/// Replaces the htpasswd file (write + rename) and waits until the service
/// has the new version in force.
fn replace_htpasswd(service: &CselAuth, text: &str) {
    let before = htpasswd_version(service);
    let path = service.htpasswd().to_path_buf();
    write_and_rename(&path, text);
    wait_for(Duration::from_secs(10), "the new htpasswd in force", || {
        (htpasswd_version(service) > before).then_some(())
    });
}

/// [`standard_htpasswd`] with `user`'s line replaced by one for `password`
/// (`None`: the user removed).
fn htpasswd_with(user: &str, password: Option<&str>) -> String {
    let prefix = format!("{user}:");
    let mut text: String = standard_htpasswd()
        .lines()
        .filter(|line| !line.starts_with(&prefix))
        .map(|line| format!("{line}\n"))
        .collect();
    if let Some(password) = password {
        text.push_str(&format!("{user}:{}\n", bcrypt_hash(password)));
    }
    text
}

#[test]
fn a_changed_or_recreated_password_entry_ends_access_tokens() {
    let keys = key_dir();
    let service = start(&keys.path().join("key"));
    const OWN: &str = "/v2/carol/x/manifests/1";
    let ended = challenge(&service, Some("repository:carol/x:pull"), Some("invalid_token"));
    let carol_token = |password: &str| {
        token_of(&get_token(
            &service,
            &format!("service={SERVICE}"),
            Some(("carol", password)),
        ))
    };

    let first = user_token(&service, "carol");
    // Used twice: the second answer comes from the verified-token cache.
    for _ in 0..2 {
        assert_allowed(&service.auth_bearer("GET", OWN, &first), "carol", "before the change");
    }

    replace_htpasswd(&service, &htpasswd_with("carol", Some("carol-second-password")));
    assert_challenged(
        &service.auth_bearer("GET", OWN, &first),
        &ended,
        "a token from before the password change",
    );
    let second = carol_token("carol-second-password");
    assert_allowed(
        &service.auth_bearer("GET", OWN, &second),
        "carol",
        "a token issued with the new password",
    );

    // Removed, then re-created with another password: neither old token comes back.
    replace_htpasswd(&service, &htpasswd_with("carol", None));
    assert_challenged(&service.auth_bearer("GET", OWN, &second), &ended, "carol removed");
    replace_htpasswd(&service, &htpasswd_with("carol", Some("carol-third-password")));
    for (what, token) in [("the first token", &first), ("the second token", &second)] {
        assert_challenged(
            &service.auth_bearer("GET", OWN, token),
            &ended,
            &format!("{what} after carol was re-created"),
        );
    }
    let third = carol_token("carol-third-password");
    assert_allowed(
        &service.auth_bearer("GET", OWN, &third),
        "carol",
        "the re-created carol",
    );
    // Other users' tokens are untouched.
    let alice = user_token(&service, "alice");
    assert_allowed(&service.auth_bearer("PUT", COOLTEAM, &alice), "alice", "alice");
}

/// Runs `csel-auth serve` in token mode with the key file `key`, expecting it
/// to refuse to start; returns its exit status and log. Fails if it starts
/// serving instead.
fn start_failure(key: &Path) -> (std::process::ExitStatus, String) {
    Setup::new(RULES)
        .arg("--token-realm")
        .arg("http://127.0.0.1/token")
        .arg("--token-key")
        .arg(&key.display().to_string())
        .start_expecting_failure()
}

#[test]
fn a_key_file_owned_by_another_user_is_refused() {
    let keys = key_dir();
    let key_path = keys.path().join("token.key");
    std::fs::write(&key_path, format!("{}\n", "0".repeat(64))).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    if let Err(error) = std::os::unix::fs::chown(&key_path, Some(65534), Some(65534)) {
        // Only root can give a file away; the refusal cannot be provoked otherwise.
        eprintln!("skipped: cannot chown the key file to uid 65534 ({error}); run as root");
        return;
    }
    let (status, stderr) = start_failure(&key_path);
    assert!(!status.success(), "exit status {status}; stderr:\n{stderr}");
    let shown = key_path.display().to_string();
    for needle in [shown.as_str(), "owned by", "65534", "chown"] {
        assert!(stderr.contains(needle), "{needle:?} missing from:\n{stderr}");
    }
    // Given back to the service's user (root here), the same file is accepted.
    std::os::unix::fs::chown(&key_path, Some(0), Some(0)).unwrap();
    let service = start(&key_path);
    token_of(&get_token(&service, "", None));
}

#[test]
fn the_default_key_file_is_absolute() {
    let output = std::process::Command::new(binary())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains("[default: /var/lib/csel-auth/token.key]"),
        "serve --help:\n{help}"
    );
}

#[test]
fn anonymous_tokens_do_not_evict_a_users_cached_token() {
    let keys = key_dir();
    let key_path = keys.path().join("key");
    let service = start(&key_path);
    let hits = || service.metric("csel_auth_token_cache_hits_total");
    let alice = user_token(&service, "alice");
    let mut connection = service.connect();
    let mut auth = |token: &str| {
        let authorization = format!("Bearer {token}");
        connection.request(
            "GET",
            "/auth",
            &[
                ("X-Original-URI", LIBRARY),
                ("X-Original-Method", "GET"),
                ("Authorization", &authorization),
            ],
            b"",
        )
    };
    assert_allowed(&auth(&alice), "alice", "first use");
    let before = hits();
    assert_allowed(&auth(&alice), "alice", "second use");
    assert_eq!(hits(), before + 1.0, "alice's second request is a cache hit");

    // Anonymous tokens cost nothing to get: 20 000 of them, each used once.
    let key = TokenKey::load_or_create(&key_path).unwrap();
    let now = SystemTime::now();
    for n in 0..20_000 {
        let anonymous = token::issue(&key, &test_settings(), &Identity::anonymous(), &[], "", false, now).token;
        let response = auth(&anonymous);
        assert_eq!(response.status, 200, "anonymous token {n}: {}", response.text());
    }
    let before = hits();
    assert_allowed(&auth(&alice), "alice", "after the anonymous flood");
    assert_eq!(
        hits(),
        before + 1.0,
        "alice's token was evicted from the cache by anonymous tokens"
    );
}

#[test]
fn refresh_tokens_are_issued_only_when_turned_on() {
    let keys = key_dir();
    let key_path = keys.path().join("key");
    let without = start(&key_path);
    let offline_get = |service: &CselAuth| {
        get_token(
            service,
            &format!("service={SERVICE}&offline_token=true"),
            Some(("alice", &password("alice"))),
        )
    };
    let offline_post = |service: &CselAuth| {
        post_token(
            service,
            &format!(
                "grant_type=password&username=alice&password=alice-password&service={SERVICE}&access_type=offline"
            ),
        )
    };

    for response in [offline_get(&without), offline_post(&without)] {
        token_of(&response);
        assert!(
            response.json().get("refresh_token").is_none(),
            "a refresh token without --refresh-tokens: {}",
            response.text()
        );
    }

    // Turned on, with the same key file and (hashed once per test binary) the
    // same htpasswd entries.
    let with = start_with_refresh_tokens(&key_path);
    let issued = offline_get(&with);
    token_of(&issued);
    let refresh = issued.json()["refresh_token"].as_str().unwrap_or_default().to_string();
    assert!(!refresh.is_empty(), "{}", issued.text());
    let refresh_grant = |service: &CselAuth| {
        post_token(
            service,
            &format!("grant_type=refresh_token&refresh_token={refresh}&service={SERVICE}"),
        )
    };
    token_of(&refresh_grant(&with));
    // A refresh token from when they were on is refused once they are off.
    let refused = refresh_grant(&without);
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert_eq!(refused.json()["error"], "unsupported_grant_type", "{}", refused.text());
    assert!(refused.json().get("token").is_none());
}
