//! `GET /v2/_catalog` answered by the real binary from a real registry (docs/catalog.md): each
//! caller sees the repositories it may read, paged as the distribution API pages; an explicit
//! catalog grant sees everything; the registry down, slow or in error is a 503 and never a
//! list; every answer is logged and audited. Through nginx: tests/e2e/catalog.rs.

use std::net::TcpListener;
use std::time::Duration;

use crate::kit::basic;
use crate::kit::files::{write, write_and_rename};
use crate::kit::http::Response;
use crate::kit::password;
use crate::kit::registry::Registry;
use crate::kit::service::{CselAuth, Setup};
use crate::kit::stack::RELOAD_TIMEOUT;
use crate::kit::wait::wait_for;

const RULES: &str = r#"
selector library  = format == "docker" and path =^ "/v2/library/"
selector coolteam = format == "docker" and path =^ "/v2/coolteam/"
selector personal = format == "docker" and path =^ "/v2/${user}/"
selector catalog  = format == "docker" and path == "/v2/_catalog"

group coolteam = alice, bob
group admins   = "admin-parente"

grant pull on library      to anonymous
grant push on coolteam     to @coolteam
grant *    on personal     to authenticated
grant *    on *, catalog   to @admins
"#;

const REPOSITORIES: [&str; 6] = [
    "alice/private",
    "carol/y",
    "coolteam/app",
    "dave/z",
    "library/a",
    "library/b",
];

/// A registry holding [`REPOSITORIES`] (one blob each, pushed to the registry itself).
fn registry_with_repositories() -> Registry {
    let registry = Registry::start().unwrap_or_else(|e| panic!("{e:#}"));
    for name in REPOSITORIES {
        registry
            .push_blob(name, format!("a blob of {name}\n").as_bytes())
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    registry
}

/// csel-auth from a config file with [`RULES`], the test users and this `[registry]` section.
fn configured(registry_section: &str) -> CselAuth {
    let setup = Setup::new(RULES);
    let config = setup.path("csel-auth.toml");
    write(
        &config,
        format!(
            "rules = \"{}\"\nhtpasswd = \"{}\"\n\n[registry]\n{registry_section}",
            setup.rules().display(),
            setup.htpasswd().display()
        ),
    );
    setup.config_file(config).start()
}

fn list(service: &CselAuth, user: Option<&str>, query: &str) -> Response {
    let credentials = user.map(|u| basic(u, &password(u)));
    let headers: Vec<(&str, &str)> = credentials.iter().map(|c| ("Authorization", c.as_str())).collect();
    service.request("GET", &format!("/v2/_catalog{query}"), &headers, b"")
}

/// Every name of every page from `first_query` on, following `Link: <…>; rel="next"` until a
/// page has none; a walk longer than `max_pages` pages fails the test.
fn walk(service: &CselAuth, user: Option<&str>, first_query: &str, max_pages: usize) -> Vec<String> {
    let credentials = user.map(|u| basic(u, &password(u)));
    let headers: Vec<(&str, &str)> = credentials.iter().map(|c| ("Authorization", c.as_str())).collect();
    let mut walked = Vec::new();
    let mut target = format!("/v2/_catalog{first_query}");
    for _ in 0..max_pages {
        let response = service.request("GET", &target, &headers, b"");
        walked.extend(names(&response, &target));
        let Some(link) = response.header("link") else {
            return walked;
        };
        target = link
            .strip_prefix('<')
            .and_then(|l| l.split_once(">; rel=\"next\""))
            .map(|(t, _)| t.to_string())
            .unwrap_or_else(|| panic!("link {link}"));
    }
    panic!("the walk from /v2/_catalog{first_query} did not end within {max_pages} pages: {walked:?}");
}

/// The repositories of a 200 answer, which must be the distribution format and carry the API
/// version header.
fn names(response: &Response, context: &str) -> Vec<String> {
    assert_eq!(response.status, 200, "{context}: {}", response.text());
    assert_eq!(
        response.header("docker-distribution-api-version"),
        Some("registry/2.0"),
        "{context}"
    );
    let json = response.json();
    let object = json.as_object().unwrap_or_else(|| panic!("{context}: {json}"));
    assert_eq!(object.len(), 1, "{context}: only `repositories`: {json}");
    serde_json::from_value(json["repositories"].clone()).unwrap_or_else(|e| panic!("{context}: {e}: {json}"))
}

/// A refusal in the distribution error format with this status and code, and no list.
fn assert_error(response: &Response, status: u16, code: &str, context: &str) {
    assert_eq!(response.status, status, "{context}: {}", response.text());
    assert_eq!(
        response.header("docker-distribution-api-version"),
        Some("registry/2.0"),
        "{context}"
    );
    let json = response.json();
    assert_eq!(json["errors"][0]["code"], code, "{context}: {json}");
    assert!(json.get("repositories").is_none(), "{context}: {json}");
}

#[test]
fn each_caller_sees_exactly_what_it_may_read() {
    let registry = registry_with_repositories();
    let setup = Setup::new(RULES);
    let audit = setup.path("audit.log");
    let service = setup
        .arg("--registry")
        .arg(&format!("http://{}", registry.addr()))
        .arg("--audit-log")
        .arg(&audit.to_string_lossy())
        .start();

    assert_eq!(
        names(&list(&service, None, ""), "anonymous"),
        ["library/a", "library/b"]
    );
    assert_eq!(
        names(&list(&service, Some("alice"), ""), "alice"),
        ["alice/private", "coolteam/app", "library/a", "library/b"]
    );
    let carol = names(&list(&service, Some("carol"), ""), "carol");
    assert_eq!(carol, ["carol/y", "library/a", "library/b"]);
    assert!(
        !carol.contains(&"alice/private".to_string()),
        "carol sees alice's repository"
    );
    // A grant that names the catalog: every repository, as the registry lists them.
    assert_eq!(names(&list(&service, Some("admin-parente"), ""), "admin"), REPOSITORIES);

    // Each answer is one decision line with the count shown, and one audit line.
    let log = service.log();
    let line = log
        .lines()
        .find(|l| l.contains("csel_auth::decision") && l.contains("user=\"carol\"") && l.contains("/v2/_catalog"))
        .unwrap_or_else(|| panic!("no decision line for carol's catalog:\n{log}"));
    assert!(line.contains("status=200") && line.contains("repositories=3"), "{line}");
    let audited = wait_for(Duration::from_secs(10), "4 catalog lines in the audit log", || {
        let text = std::fs::read_to_string(&audit).ok()?;
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|j: &serde_json::Value| j["path"] == "/v2/_catalog")
            .collect();
        (lines.len() >= 4).then_some(lines)
    });
    let carol_line = audited
        .iter()
        .find(|j| j["user"] == "carol")
        .unwrap_or_else(|| panic!("{audited:?}"));
    assert_eq!(carol_line["status"], 200, "{carol_line}");
    assert_eq!(carol_line["outcome"], "allowed", "{carol_line}");
    assert_eq!(carol_line["auth"], "htpasswd", "{carol_line}");
    assert_eq!(carol_line["method"], "GET", "{carol_line}");
}

#[test]
fn pages_follow_n_last_and_link_and_bad_queries_are_refused() {
    let registry = registry_with_repositories();
    // Reused for an hour: however slow the machine, the walk below is served by one fetch.
    let service = configured(&format!(
        "url = \"http://{}\"\ncatalog_cache = \"1h\"\n",
        registry.addr()
    ));
    let alice_all = names(&list(&service, Some("alice"), ""), "alice");

    let first = list(&service, Some("alice"), "?n=2");
    assert_eq!(names(&first, "n=2"), ["alice/private", "coolteam/app"]);
    assert_eq!(
        first.header("link"),
        Some(r#"</v2/_catalog?last=coolteam%2Fapp&n=2>; rel="next""#)
    );
    // Following the links walks the whole list once.
    let walked = walk(&service, Some("alice"), "?n=1", 10);
    assert_eq!(walked, alice_all);

    // `last` need not be in the list; n=0 is an empty page; the last page has no link.
    let after = list(&service, Some("alice"), "?last=b");
    assert_eq!(names(&after, "last=b"), ["coolteam/app", "library/a", "library/b"]);
    assert_eq!(after.header("link"), None);
    let empty = list(&service, Some("alice"), "?n=0");
    assert!(names(&empty, "n=0").is_empty());
    assert_eq!(empty.header("link"), None);
    assert_eq!(names(&list(&service, Some("alice"), "?n=1000"), "n=1000"), alice_all);

    for bad in ["?n=1001", "?n=-1", "?n=x", "?n=", "?n=1&n=2"] {
        let code = if bad == "?n=1&n=2" {
            "UNSUPPORTED"
        } else {
            "PAGINATION_NUMBER_INVALID"
        };
        assert_error(&list(&service, Some("alice"), bad), 400, code, bad);
    }
    // Only GET (and HEAD) read the list.
    let post = service.request("POST", "/v2/_catalog", &[], b"");
    assert_error(&post, 405, "UNSUPPORTED", "POST");
    let head = service.request("HEAD", "/v2/_catalog", &[], b"");
    assert_eq!(head.status, 200, "HEAD");
}

#[test]
fn who_is_asking_is_told_as_on_auth() {
    let registry = registry_with_repositories();
    let setup = Setup::new(RULES);
    let rules_path = setup.rules().to_path_buf();
    let service = setup
        .arg("--registry")
        .arg(&format!("http://{}", registry.addr()))
        .start();

    // A wrong password is refused as on /auth, with the Basic challenge; so is a token when
    // there is no token realm.
    let wrong = service.request(
        "GET",
        "/v2/_catalog",
        &[("Authorization", &basic("alice", "wrong"))],
        b"",
    );
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    assert!(wrong
        .header("www-authenticate")
        .is_some_and(|c| c.starts_with("Basic realm=")));
    assert!(wrong.json().get("repositories").is_none());
    let bearer = service.request("GET", "/v2/_catalog", &[("Authorization", "Bearer x.y.z")], b"");
    assert_eq!(bearer.status, 401, "{}", bearer.text());

    // A rule change is in force for the next request: without the anonymous grant, anonymous
    // has nothing to see and is asked to log in (clients send credentials only then).
    write_and_rename(
        &rules_path,
        RULES.replace("grant pull on library      to anonymous\n", ""),
    );
    let challenge = wait_for(RELOAD_TIMEOUT, "the rules without the anonymous grant", || {
        let response = list(&service, None, "");
        (response.status == 401).then_some(response)
    });
    assert!(challenge
        .header("www-authenticate")
        .is_some_and(|c| c.starts_with("Basic realm=")));
    assert_eq!(names(&list(&service, Some("carol"), ""), "carol"), ["carol/y"]);
}

#[test]
fn token_mode_challenges_then_lists_for_the_token_holder() {
    let registry = registry_with_repositories();
    let setup = Setup::new(RULES);
    let key = setup.path("token.key");
    let service = setup
        .token_realm(key)
        .arg("--registry")
        .arg(&format!("http://{}", registry.addr()))
        .start();

    let challenge = list(&service, None, "");
    assert_eq!(challenge.status, 401, "{}", challenge.text());
    let header = challenge.header("www-authenticate").unwrap_or_default();
    assert!(
        header.starts_with("Bearer realm=") && header.contains(r#"scope="registry:catalog:*""#),
        "{header}"
    );

    let token = |user: Option<&str>| {
        let credentials = user.map(|u| basic(u, &password(u)));
        let headers: Vec<(&str, &str)> = credentials.iter().map(|c| ("Authorization", c.as_str())).collect();
        let response = service.request(
            "GET",
            "/token?service=test-registry&scope=registry:catalog:*",
            &headers,
            b"",
        );
        assert_eq!(response.status, 200, "{user:?}: {}", response.text());
        let token = response.json()["token"].as_str().map(str::to_string);
        format!(
            "Bearer {}",
            token.unwrap_or_else(|| panic!("no token: {}", response.text()))
        )
    };
    let with = |authorization: &str| service.request("GET", "/v2/_catalog", &[("Authorization", authorization)], b"");
    assert_eq!(
        names(&with(&token(Some("carol"))), "carol's token"),
        ["carol/y", "library/a", "library/b"]
    );
    assert_eq!(
        names(&with(&token(None)), "anonymous token"),
        ["library/a", "library/b"]
    );
    assert_eq!(
        names(&with(&token(Some("admin-parente"))), "admin's token"),
        REPOSITORIES
    );
    // Basic credentials still work in token mode, as on /auth.
    assert_eq!(names(&list(&service, Some("alice"), ""), "alice basic").len(), 4);
}

#[test]
fn the_registry_down_slow_or_in_error_is_a_503_never_a_list() {
    // Down: nothing listens on port 1 (privileged, and no test's server; a free port picked
    // now could be taken by another test's server before the request).
    let service = Setup::new(RULES).registry("http://127.0.0.1:1").start();
    for user in [None, Some("alice"), Some("admin-parente")] {
        assert_error(
            &list(&service, user, ""),
            503,
            "UNAVAILABLE",
            &format!("{user:?}, registry down"),
        );
    }
    let log = service.log();
    assert!(
        log.lines()
            .any(|l| l.contains("csel_auth::decision") && l.contains("status=503") && l.contains("cannot be reached")),
        "{log}"
    );

    // In error: the registry answers 404 under a path it does not serve.
    let registry = registry_with_repositories();
    let service = Setup::new(RULES)
        .arg("--registry")
        .arg(&format!("http://{}/not-the-registry", registry.addr()))
        .start();
    assert_error(&list(&service, Some("alice"), ""), 503, "UNAVAILABLE", "registry error");
    assert!(service.log().contains("answered 404"), "{}", service.log());

    // Slow: a listener that never answers (the kernel accepts the connection for it).
    let silent = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let silent_addr = silent.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let service = configured(&format!("url = \"http://{silent_addr}\"\ntimeout = \"1s\"\n"));
    assert_error(
        &list(&service, Some("alice"), ""),
        503,
        "UNAVAILABLE",
        "registry silent",
    );
    drop(silent);
}

#[test]
fn without_a_registry_address_the_catalog_is_a_503_that_says_what_to_configure() {
    let service = Setup::new(RULES).start();
    assert_error(
        &list(&service, Some("admin-parente"), ""),
        503,
        "UNAVAILABLE",
        "no [registry]",
    );
    let log = service.log();
    assert!(log.contains("configure `[registry] url`"), "{log}");
}

#[test]
fn the_registrys_pages_are_walked_and_its_list_is_reused() {
    let registry = Registry::start().unwrap_or_else(|e| panic!("{e:#}"));
    // More than one page of the registry's (1000 names per page asked).
    registry
        .add_empty_repositories("library/r", 2345)
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Reused for an hour: however slow the machine, the walk below is served by one fetch.
    let service = configured(&format!(
        "url = \"http://{}\"\ncatalog_cache = \"1h\"\n",
        registry.addr()
    ));
    let walked = walk(&service, None, "?n=1000", 10);
    let expected: Vec<String> = (0..2345).map(|i| format!("library/r/{i:05}")).collect();
    assert_eq!(walked, expected);
    // Three pages, one walk of the registry (three of its pages).
    let fetches = service.metric("csel_auth_registry_catalog_fetches_total{result=\"ok\"}");
    assert_eq!(fetches, 1.0, "walks of the registry's list");
}

#[test]
fn an_access_key_shows_only_what_its_scope_reads() {
    let registry = registry_with_repositories();
    let setup = Setup::new(RULES);
    let keys = setup.path("access.keys");
    let create = |extra: &[&str]| {
        let mut command = std::process::Command::new(crate::kit::service::binary());
        command.args(["access-key", "create", "--file"]).arg(&keys);
        command.args(["--user", "alice"]).args(extra);
        let out = command.output().unwrap_or_else(|e| panic!("{e}"));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let team = create(&["--actions", "pull", "--on", r#"path =^ "/v2/coolteam/""#]);
    let push_only = create(&["--actions", "add"]);
    let service = setup
        .access_keys(&keys)
        .arg("--registry")
        .arg(&format!("http://{}", registry.addr()))
        .start();
    let with = |secret: &str| {
        service.request(
            "GET",
            "/v2/_catalog",
            &[("Authorization", &basic("alice", secret))],
            b"",
        )
    };
    // alice reads four repositories; the key scoped to coolteam shows only that one.
    assert_eq!(names(&with(&team), "team key"), ["coolteam/app"]);
    // A key that may not read shows nothing (an empty list: the caller is known).
    assert!(names(&with(&push_only), "push-only key").is_empty());
    let log = service.log();
    assert!(
        log.lines()
            .any(|l| l.contains("/v2/_catalog") && l.contains("user=\"alice\"") && l.contains("key=")),
        "{log}"
    );
}
