//! JWT logins through the real binary: `csel-auth serve` with an `[[oidc]]` section whose keys a
//! JWKS server on 127.0.0.1 serves, and `/auth` subrequests carrying `Basic ANY:<JWT>`.

use std::time::Duration;

use crate::kit::jwks::{github_claims, jwks, JwksServer, SigningKey, AUDIENCE, GITHUB};
use crate::kit::service::{CselAuth, Setup};
use crate::kit::wait::wait_for;

/// The GitHub repository `octo-org/app` may push to `ci/`; the group claim `deployers` (with the
/// issuer's prefix) may pull from `prod/`.
const RULES: &str = r#"
grant push on (path =^ "/v2/ci/") to "github:octo-org/app"
grant pull on (path =^ "/v2/prod/") to @"github:deployers"
grant * on (path =^ "/v2/alice/") to alice
"#;

const CI: &str = "/v2/ci/app/manifests/1";

fn serve(jwks_url: &str) -> CselAuth {
    let setup = Setup::new(RULES);
    let config = format!(
        "rules = \"registry.rules\"\nhtpasswd = \"users.htpasswd\"\n\n[[oidc]]\nissuer = {GITHUB:?}\n\
         audience = {AUDIENCE:?}\njwks_url = {jwks_url:?}\nusername_claim = \"repository\"\n\
         username_prefix = \"github:\"\ngroups_claim = \"groups\"\n"
    );
    let path = setup.path("csel-auth.toml");
    std::fs::write(&path, config).unwrap();
    setup.config_file(path).start()
}

#[test]
fn a_jwt_as_the_password_logs_in_as_the_issuers_subject() {
    let key = SigningKey::rsa("gh-1");
    let server = JwksServer::start(&jwks(&[&key.jwk]));
    let service = serve(&server.url());
    let token = key.sign(&github_claims("octo-org/app"));

    // Any `-u` name: the token says who it is.
    for typed in ["x", "octo-org", "github"] {
        let response = service.auth("PUT", CI, Some((typed, &token)));
        assert_eq!(response.status, 200, "{typed}: {}", service.log());
        assert_eq!(response.header("x-auth-user"), Some("github:octo-org/app"));
    }
    assert_eq!(service.auth("DELETE", CI, Some(("x", &token))).status, 403);
    assert_eq!(
        service
            .auth("GET", "/v2/alice/x/manifests/1", Some(("x", &token)))
            .status,
        403
    );
    assert_eq!(
        service
            .auth("GET", "/v2/prod/x/manifests/1", Some(("x", &token)))
            .status,
        403
    );

    // Groups from the token's claim reach the grants to that group.
    let mut claims = github_claims("octo-org/other");
    claims["groups"] = serde_json::json!(["deployers"]);
    let deployer = key.sign(&claims);
    assert_eq!(
        service
            .auth("GET", "/v2/prod/x/manifests/1", Some(("x", &deployer)))
            .status,
        200
    );
    assert_eq!(service.auth("PUT", CI, Some(("x", &deployer))).status, 403);

    // A token signed by another key, an expired one, one for another audience: 401.
    let stranger = SigningKey::rsa("gh-1");
    assert_eq!(
        service
            .auth("GET", CI, Some(("x", &stranger.sign(&github_claims("octo-org/app")))))
            .status,
        401
    );
    let mut expired = github_claims("octo-org/app");
    expired["exp"] = serde_json::json!(crate::kit::jwks::now() - 3600);
    assert_eq!(service.auth("GET", CI, Some(("x", &key.sign(&expired)))).status, 401);
    let mut elsewhere = github_claims("octo-org/app");
    elsewhere["aud"] = serde_json::json!("other.example.com");
    assert_eq!(service.auth("GET", CI, Some(("x", &key.sign(&elsewhere)))).status, 401);

    // An htpasswd user is decided by the file alone, JWT or not; plain passwords still work.
    assert_eq!(service.auth("GET", CI, Some(("alice", &token))).status, 401);
    assert_eq!(service.auth_user("GET", "/v2/alice/x/manifests/1", "alice").status, 200);

    let metrics = service.get("/metrics").text();
    let issuer = format!("{{issuer=\"{GITHUB}\"}}");
    for line in [
        format!("csel_auth_oidc_up{issuer} 1"),
        format!("csel_auth_oidc_verified_total{issuer} 2"),
        format!("csel_auth_oidc_refused_total{issuer} 3"),
        format!("csel_auth_oidc_fetches_total{issuer} 1"),
    ] {
        assert!(metrics.contains(&format!("\n{line}\n")), "{line} not in\n{metrics}");
    }
}

#[test]
fn keys_unavailable_at_start_fail_closed_then_recover() {
    let key = SigningKey::rsa("gh-1");
    let mut server = JwksServer::down(&jwks(&[&key.jwk]));
    let service = serve(&server.url());
    let token = key.sign(&github_claims("octo-org/app"));
    let first = service.auth("PUT", CI, Some(("x", &token))).status;
    assert!(first == 503 || first == 401, "got {first}");
    server.resume();
    wait_for(
        Duration::from_secs(30),
        "JWT logins once the keys can be fetched",
        || {
            let status = service.auth("PUT", CI, Some(("x", &token))).status;
            assert!(matches!(status, 200 | 401 | 503), "got {status}");
            (status == 200).then_some(())
        },
    );
}

#[test]
fn a_token_for_a_jwt_ends_no_later_than_the_jwt() {
    let key = SigningKey::rsa("gh-1");
    let server = JwksServer::start(&jwks(&[&key.jwk]));
    let setup = Setup::new(RULES);
    let config = format!(
        "rules = \"registry.rules\"\nhtpasswd = \"users.htpasswd\"\n\n[[oidc]]\nissuer = {GITHUB:?}\n\
         audience = {AUDIENCE:?}\njwks_url = {:?}\nusername_claim = \"repository\"\n\
         username_prefix = \"github:\"\n",
        server.url()
    );
    let path = setup.path("csel-auth.toml");
    std::fs::write(&path, config).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let service = setup
        .config_file(path)
        .token_realm(keys.path().join("token.key"))
        .start();
    let mut claims = github_claims("octo-org/app");
    claims["exp"] = serde_json::json!(crate::kit::jwks::now() + 60);
    let jwt = key.sign(&claims);
    let credentials = crate::kit::basic("x", &jwt);
    let response = service.request(
        "GET",
        "/token?service=test-registry&scope=repository:ci/app:pull,push",
        &[("Authorization", &credentials)],
        b"",
    );
    assert_eq!(response.status, 200, "{}", service.log());
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!(expires_in <= 60, "expires_in {expires_in}: longer than the JWT");
    let token = body["token"].as_str().unwrap();
    assert_eq!(service.auth_bearer("PUT", CI, token).status, 200);
    assert_eq!(service.auth_bearer("GET", "/v2/alice/x/manifests/1", token).status, 401);
}

/// With `username_prefix = "github/"`, names under the prefix belong to the issuer: an htpasswd
/// entry of such a name cannot log in (it would take a CI job's grants), while the job's JWT
/// pushes under `${user}`.
#[test]
fn a_slash_prefix_is_reserved_for_the_issuer_and_fits_repository_paths() {
    let key = SigningKey::rsa("gh-1");
    let server = JwksServer::start(&jwks(&[&key.jwk]));
    let rules = "grant push on (path =^ \"/v2/${user}/\") to authenticated\n";
    let htpasswd = format!(
        "github/octo-org/app:{}\nalice:{}\n",
        crate::kit::bcrypt_hash("squatter-password"),
        crate::kit::bcrypt_hash(&crate::kit::password("alice"))
    );
    let setup = Setup::with_users(rules, &htpasswd);
    let config = format!(
        "rules = \"registry.rules\"\nhtpasswd = \"users.htpasswd\"\n\n[[oidc]]\nissuer = {GITHUB:?}\n\
         audience = {AUDIENCE:?}\njwks_url = {:?}\nusername_claim = \"repository\"\n\
         username_prefix = \"github/\"\n",
        server.url()
    );
    let path = setup.path("csel-auth.toml");
    std::fs::write(&path, config).unwrap();
    let service = setup.config_file(path).start();
    let own = "/v2/github/octo-org/app/build/manifests/1";
    let jwt = key.sign(&github_claims("octo-org/app"));
    let response = service.auth("PUT", own, Some(("x", &jwt)));
    assert_eq!(response.status, 200, "{}", service.log());
    assert_eq!(response.header("x-auth-user"), Some("github/octo-org/app"));
    assert_eq!(
        service
            .auth("PUT", "/v2/github/octo-org/other/manifests/1", Some(("x", &jwt)))
            .status,
        403
    );
    // The htpasswd entry under the prefix logs in no one; other entries are unaffected.
    assert_eq!(
        service
            .auth("PUT", own, Some(("github/octo-org/app", "squatter-password")))
            .status,
        401
    );
    assert_eq!(service.auth_user("PUT", "/v2/alice/x/manifests/1", "alice").status, 200);
    // And the typed name does not matter for a JWT, the prefix included.
    assert_eq!(
        service.auth("PUT", own, Some(("github/octo-org/app", &jwt))).status,
        200
    );
}

/// Keys fetched over https from an issuer whose certificate a private CA signed: trusted with
/// `ca_file` naming that CA, and with no other; without `ca_file` the system's CAs do not know
/// it. Untrusted keys are no keys: logins fail closed (503), and the log says why.
#[test]
fn an_https_key_set_is_trusted_through_its_ca_file_only() {
    let key = SigningKey::rsa("gh-1");
    let dir = tempfile::tempdir().unwrap();
    crate::kit::tls::make_certificates(dir.path()).unwrap();
    std::fs::write(dir.path().join("jwks.json"), jwks(&[&key.jwk])).unwrap();
    let server = crate::kit::tls::HttpsFiles::start(dir.path()).unwrap();
    let token = key.sign(&github_claims("octo-org/app"));
    let with_ca = |ca_file: Option<&str>| {
        let setup = Setup::new(RULES);
        let ca = ca_file.map_or(String::new(), |name| {
            format!("ca_file = {:?}\n", dir.path().join(name).display().to_string())
        });
        let config = format!(
            "rules = \"registry.rules\"\nhtpasswd = \"users.htpasswd\"\n\n[[oidc]]\nissuer = {GITHUB:?}\n\
             audience = {AUDIENCE:?}\njwks_url = {:?}\nusername_claim = \"repository\"\n\
             username_prefix = \"github:\"\ntimeout = \"2s\"\n{ca}",
            server.url("jwks.json")
        );
        let path = setup.path("csel-auth.toml");
        std::fs::write(&path, config).unwrap();
        setup.config_file(path).start()
    };

    let trusted = with_ca(Some("ca.pem"));
    let response = wait_for(Duration::from_secs(10), "the https key set to be fetched", || {
        let response = trusted.auth("PUT", CI, Some(("x", &token)));
        (response.status != 503).then_some(response)
    });
    assert_eq!(response.status, 200, "{}", trusted.log());
    assert_eq!(response.header("x-auth-user"), Some("github:octo-org/app"));

    for ca_file in [Some("other-ca.pem"), None] {
        let untrusted = with_ca(ca_file);
        let url = server.url("jwks.json");
        wait_for(Duration::from_secs(10), "a log line on the untrusted key set", || {
            untrusted
                .log()
                .lines()
                .find(|l| l.contains(&url) && l.contains("UnknownIssuer"))
                .map(str::to_string)
        });
        assert_eq!(
            untrusted.auth("PUT", CI, Some(("x", &token))).status,
            503,
            "{ca_file:?}: {}",
            untrusted.log()
        );
    }
}
