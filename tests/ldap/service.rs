//! LDAP logins through the real binary: `csel-auth serve` with an `[ldap]` section, a real slapd,
//! and `/auth` subrequests. The rules name directory groups that the rules file does not define.

use std::time::Duration;

use crate::kit::process::Signal;
use crate::kit::service::{CselAuth, Setup};
use crate::kit::slapd::{Slapd, SERVICE_DN, SERVICE_PASSWORD};
use crate::kit::wait::wait_for;

use super::{GROUPS, PEOPLE};

const RULES: &str = r#"
group devs = carol
grant push on (path =^ "/v2/devs/") to @devs
grant pull on (path =^ "/v2/ops/") to @ops
grant * on (path =^ "/v2/${user}/") to authenticated
"#;

const DEVS: &str = "/v2/devs/app/manifests/1";
const OPS: &str = "/v2/ops/app/manifests/1";

/// The service with `rules`, an htpasswd file holding `break-glass` and `alice` (its own
/// password: the htpasswd entry wins), and `[ldap]` on `slapd` with `cache_ttl`.
fn serve(slapd: &Slapd, rules: &str, cache_ttl: &str) -> CselAuth {
    configured(slapd, rules, cache_ttl).start()
}

fn configured(slapd: &Slapd, rules: &str, cache_ttl: &str) -> Setup {
    let setup = Setup::bare();
    std::fs::write(setup.rules(), rules).unwrap();
    let htpasswd = format!(
        "break-glass:{}\nshadowed:{}\n",
        crate::kit::bcrypt_hash("break-glass-password"),
        crate::kit::bcrypt_hash("local-password"),
    );
    std::fs::write(setup.path("users.htpasswd"), htpasswd).unwrap();
    std::fs::write(setup.path("ldap.password"), format!("{SERVICE_PASSWORD}\n")).unwrap();
    std::fs::set_permissions(
        setup.path("ldap.password"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let config = format!(
        "rules = \"registry.rules\"\nhtpasswd = \"users.htpasswd\"\n\n[ldap]\nurl = {:?}\nbind_dn = {SERVICE_DN:?}\n\
         bind_password_file = \"ldap.password\"\nuser_base = {PEOPLE:?}\ngroup_base = {GROUPS:?}\n\
         cache_ttl = {cache_ttl:?}\ntimeout = \"2s\"\n",
        slapd.url()
    );
    let path = setup.path("csel-auth.toml");
    std::fs::write(&path, config).unwrap();
    setup.config_file(path)
}

fn status(service: &CselAuth, uri: &str, user: &str, password: &str) -> u16 {
    service.auth("GET", uri, Some((user, password))).status
}

fn put(service: &CselAuth, uri: &str, user: &str, password: &str) -> u16 {
    service.auth("PUT", uri, Some((user, password))).status
}

#[test]
fn directory_users_and_groups_decide_at_auth() {
    let slapd = super::start();
    // `shadowed` is in the directory too, with another password.
    slapd
        .modify(&format!(
            "dn: uid=shadowed,{PEOPLE}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: shadowed\ncn: s\nsn: s\nuserPassword: ldap-password\n"
        ))
        .unwrap();
    let service = serve(&slapd, RULES, "5m");

    // alice is in the directory's devs (not in the file's): push there, not on ops.
    let allowed = service.auth("PUT", DEVS, Some(("alice", "alice-pw")));
    assert_eq!(allowed.status, 200, "{}", service.log());
    assert_eq!(allowed.header("x-auth-user"), Some("alice"));
    assert_eq!(status(&service, OPS, "alice", "alice-pw"), 403);
    // bob is in ops: pull there, nothing on devs.
    assert_eq!(status(&service, OPS, "bob", "bob-pw"), 200);
    assert_eq!(put(&service, OPS, "bob", "bob-pw"), 403);
    assert_eq!(status(&service, DEVS, "bob", "bob-pw"), 403);
    // carol is a member of the file's devs: the union.
    assert_eq!(put(&service, DEVS, "carol", "carol-pw"), 200);
    // The directory's spelling of the name is the user: `${user}` is `alice`.
    let spelled = service.auth("GET", "/v2/alice/x/manifests/1", Some(("Alice", "alice-pw")));
    assert_eq!(spelled.status, 200);
    assert_eq!(spelled.header("x-auth-user"), Some("alice"));

    // Failed logins: wrong, empty, filter syntax.
    assert_eq!(status(&service, DEVS, "alice", "wrong"), 401);
    assert_eq!(status(&service, DEVS, "alice", ""), 401);
    assert_eq!(status(&service, DEVS, "*", "alice-pw"), 401);
    assert_eq!(status(&service, DEVS, "alice*", "alice-pw"), 401);
    assert_eq!(status(&service, DEVS, "nobody", "alice-pw"), 401);

    // An htpasswd user is decided by the file alone: the directory's password does not work.
    assert_eq!(
        status(&service, "/v2/shadowed/x/manifests/1", "shadowed", "ldap-password"),
        401
    );
    assert_eq!(
        status(&service, "/v2/shadowed/x/manifests/1", "shadowed", "local-password"),
        200
    );
    assert_eq!(
        status(
            &service,
            "/v2/break-glass/x/manifests/1",
            "break-glass",
            "break-glass-password"
        ),
        200
    );
}

#[test]
fn a_removed_membership_ends_after_the_ttl_and_at_once_after_sighup() {
    let slapd = super::start();
    let service = serve(&slapd, RULES, "2s");
    assert_eq!(put(&service, DEVS, "alice", "alice-pw"), 200);
    slapd
        .modify(&format!(
            "dn: cn=devs,{GROUPS}\nchangetype: modify\ndelete: member\nmember: uid=alice,{PEOPLE}\n"
        ))
        .unwrap();
    // After the TTL, the directory is asked again.
    wait_for(Duration::from_secs(15), "alice's cached devs membership to end", || {
        (put(&service, DEVS, "alice", "alice-pw") == 403).then_some(())
    });

    // And with a long TTL, SIGHUP ends it at once.
    let service = serve(&slapd, RULES, "1h");
    assert_eq!(put(&service, OPS, "bob", "bob-pw"), 403);
    assert_eq!(status(&service, OPS, "bob", "bob-pw"), 200);
    slapd
        .modify(&format!(
            "dn: cn=ops,{GROUPS}\nchangetype: modify\nreplace: uniqueMember\nuniqueMember: uid=frank,{PEOPLE}\n"
        ))
        .unwrap();
    assert_eq!(status(&service, OPS, "bob", "bob-pw"), 200, "cached for an hour");
    service.signal(Signal::SIGHUP);
    wait_for(Duration::from_secs(10), "SIGHUP to empty the LDAP cache", || {
        (status(&service, OPS, "bob", "bob-pw") == 403).then_some(())
    });
}

#[test]
fn a_stopped_directory_serves_cached_logins_and_nothing_else_then_recovers() {
    let mut slapd = super::start();
    let service = serve(&slapd, RULES, "5m");
    assert_eq!(put(&service, DEVS, "alice", "alice-pw"), 200);
    slapd.stop();
    // Cached: still allowed. Not cached: 503, never 200 nor 401.
    assert_eq!(put(&service, DEVS, "alice", "alice-pw"), 200);
    assert_eq!(status(&service, OPS, "bob", "bob-pw"), 503);
    assert_eq!(status(&service, OPS, "bob", "wrong"), 503);
    let metrics = service.get("/metrics").text();
    assert!(metrics.contains("\ncsel_auth_ldap_up 0\n"), "{metrics}");
    assert!(metrics.contains("\ncsel_auth_ldap_outages_total 1\n"), "{metrics}");
    assert!(metrics.contains("\ncsel_auth_ldap_cache_hits_total 1\n"), "{metrics}");
    assert_eq!(put(&service, DEVS, "alice", "not-the-password"), 503);
    // The htpasswd file needs no directory.
    assert_eq!(
        status(
            &service,
            "/v2/break-glass/x/manifests/1",
            "break-glass",
            "break-glass-password"
        ),
        200
    );
    slapd.restart().unwrap();
    wait_for(Duration::from_secs(20), "LDAP logins to recover", || {
        (status(&service, OPS, "bob", "bob-pw") == 200).then_some(())
    });
    assert!(service.get("/metrics").text().contains("\ncsel_auth_ldap_up 1\n"));
}

#[test]
fn a_group_the_rules_file_does_not_define_needs_an_identity_source() {
    // Without [ldap], the same rules do not load: the service does not start.
    let setup = Setup::new(RULES.replace("group devs = carol\n", "").as_str());
    let (status, log) = setup.start_expecting_failure();
    assert!(!status.success());
    assert!(log.contains("unknown group `@devs`"), "{log}");
}

#[test]
fn a_misconfigured_ldap_section_stops_the_start() {
    let setup = Setup::new(RULES);
    let path = setup.path("csel-auth.toml");
    std::fs::write(
        &path,
        "rules = \"registry.rules\"\n[ldap]\nurl = \"http://x\"\nuser_base = \"dc=x\"\n",
    )
    .unwrap();
    let (status, log) = setup.config_file(path).start_expecting_failure();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("[ldap]"), "{log}");
}

/// A token for `user` from `/token` with `scope`, or the response's status.
fn token_for(service: &CselAuth, scope: &str, user: &str, password: &str) -> Result<String, u16> {
    let credentials = crate::kit::basic(user, password);
    let response = service.request(
        "GET",
        &format!("/token?service=test-registry&scope={scope}"),
        &[("Authorization", &credentials)],
        b"",
    );
    if response.status != 200 {
        return Err(response.status);
    }
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    Ok(body["token"].as_str().unwrap().to_string())
}

#[test]
fn a_directory_users_token_carries_its_groups_for_its_short_life() {
    let mut slapd = super::start();
    let keys = tempfile::tempdir().unwrap();
    let service = configured(&slapd, RULES, "5m")
        .token_realm(keys.path().join("token.key"))
        .start();
    let token = token_for(&service, "repository:devs/app:pull,push", "alice", "alice-pw").unwrap();
    // alice is in htpasswd nowhere: the token is decided with the groups it carries.
    assert_eq!(
        service.auth_bearer("PUT", DEVS, &token).status,
        200,
        "{}",
        service.log()
    );
    assert_eq!(
        service.auth_bearer("GET", "/v2/alice/x/manifests/1", &token).status,
        200
    );
    assert_eq!(
        service.auth_bearer("GET", OPS, &token).status,
        401,
        "insufficient_scope"
    );
    // The token does not need the directory during its life.
    slapd.stop();
    assert_eq!(service.auth_bearer("PUT", DEVS, &token).status, 200);
    // Wrong passwords get no token; a directory that cannot say gives 503, never a token.
    assert_eq!(
        token_for(&service, "repository:devs/app:pull", "bob", "bob-pw"),
        Err(503)
    );
    slapd.restart().unwrap();
    wait_for(
        Duration::from_secs(20),
        "the directory to refuse a wrong password again",
        || {
            let answer = token_for(&service, "repository:devs/app:pull", "alice", "wrong");
            assert!(matches!(answer, Err(401 | 503)), "{answer:?}");
            (answer == Err(401)).then_some(())
        },
    );
}

#[test]
fn check_and_explain_know_the_directory() {
    let slapd = super::start();
    let setup = configured(&slapd, RULES, "5m");
    let dir = setup.dir().to_path_buf();
    let run = |args: &[&str]| {
        let output = std::process::Command::new(crate::kit::service::binary())
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), text)
    };
    // `@ops` is no group of the file: with [ldap] it names the directory's.
    let (code, text) = run(&["check", "--config", "csel-auth.toml"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("[ldap] ldap://"), "{text}");
    assert!(!text.contains("@ops"), "{text}");
    let (code, text) = run(&["check", "registry.rules"]);
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("unknown group `@ops`"), "{text}");

    // explain reads alice's groups from the directory and decides with them.
    let explain = |user: &str, method: &str| {
        run(&[
            "explain",
            "--rules",
            "registry.rules",
            "--config",
            "csel-auth.toml",
            "--user",
            user,
            method,
            DEVS,
        ])
    };
    let (code, text) = explain("alice", "PUT");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("groups of `alice`: devs, engineering, platform"),
        "{text}"
    );
    assert!(text.contains("identity source groups: devs"), "{text}");
    let (code, text) = explain("bob", "PUT");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("ops"), "{text}");
}

#[test]
fn a_directory_users_token_ends_when_the_directory_is_no_longer_configured() {
    let slapd = super::start();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("token.key");
    let own = "/v2/alice/x/manifests/1";
    let with_ldap = configured(&slapd, RULES, "5m").token_realm(key.clone()).start();
    let token = token_for(&with_ldap, "repository:alice/x:pull,push", "alice", "alice-pw").unwrap();
    assert_eq!(with_ldap.auth_bearer("PUT", own, &token).status, 200);
    drop(with_ldap);
    // Same key, same rules for `${user}`, no [ldap]: the token names a source no longer in use.
    let without = Setup::new("grant * on (path =^ \"/v2/${user}/\") to authenticated\n")
        .token_realm(key)
        .start();
    assert_eq!(without.auth_bearer("PUT", own, &token).status, 401, "{}", without.log());
}

#[test]
fn a_directory_name_under_a_jwt_issuers_prefix_logs_in_no_one() {
    let slapd = super::start();
    slapd
        .modify(&format!(
            "dn: uid=github/octo-org/app,{PEOPLE}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: github/octo-org/app\ncn: s\nsn: s\nuserPassword: squat-pw\n"
        ))
        .unwrap();
    let jwks_server = crate::kit::jwks::JwksServer::start(&crate::kit::jwks::jwks(&[]));
    let setup = configured(&slapd, RULES, "5m");
    let path = setup.path("csel-auth.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text += &format!(
        "\n[[oidc]]\nissuer = {:?}\naudience = {:?}\njwks_url = {:?}\nusername_claim = \"repository\"\nusername_prefix = \"github/\"\n",
        crate::kit::jwks::GITHUB,
        crate::kit::jwks::AUDIENCE,
        jwks_server.url()
    );
    std::fs::write(&path, text).unwrap();
    let service = setup.start();
    let own = "/v2/github/octo-org/app/x/manifests/1";
    // Typed as the directory has it, and typed otherwise (LDAP matching ignores case).
    assert_eq!(status(&service, own, "github/octo-org/app", "squat-pw"), 401);
    assert_eq!(status(&service, own, "GitHub/octo-org/app", "squat-pw"), 401);
    // Other directory users are unaffected.
    assert_eq!(put(&service, DEVS, "alice", "alice-pw"), 200);
}
