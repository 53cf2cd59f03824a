//! The service (docs/requests.md, docs/operations.md) through the real binary: the outcome
//! table over TCP and a unix socket, throttling, keep-alive, panics, hot
//! reload, the login cache, graceful shutdown and /metrics.
//!
//! Reload latencies are printed; see them with `--nocapture`.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::kit::files::{write, write_and_rename};
use crate::kit::http::{Conn, Endpoint, Response};
use crate::kit::metrics::parse_metrics;
use crate::kit::process::Signal;
use crate::kit::service::{alone, Answers, CselAuth, InProcessAuth, Setup, RELOAD_DEADLINE};
use crate::kit::wait::{time_until, wait_for};
use crate::kit::{basic, bcrypt_hash, password, standard_htpasswd, RULES};

const LIBRARY: &str = "/v2/library/alpine/manifests/3.19";
const COOLTEAM: &str = "/v2/coolteam/app/manifests/1.0";

fn assert_basic_challenge(response: &Response, context: &str) {
    assert_eq!(response.status, 401, "{context}: {}", response.text());
    let challenge = response.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Basic realm=\"csel-auth\""),
        "{context}: challenge {challenge:?}"
    );
    assert_eq!(response.header("x-auth-user"), None, "{context}");
}

fn assert_status(response: &Response, status: u16, context: &str) {
    assert_eq!(response.status, status, "{context}: {}", response.text());
    if status != 200 {
        assert_eq!(response.header("x-auth-user"), None, "{context}");
    }
    if status == 403 || status == 500 {
        assert_eq!(
            response.header("www-authenticate"),
            None,
            "{context}: no challenge on {status}"
        );
    }
}

/// Every row of the outcome table in docs/requests.md.
fn check_outcome_table(service: &impl Answers) {
    // allowed → 200 + X-Auth-User
    let response = service.auth("GET", LIBRARY, None);
    assert_status(&response, 200, "anonymous pull of library");
    assert_eq!(response.header("x-auth-user"), Some("anonymous"));
    let response = service.auth_user("PUT", COOLTEAM, "alice");
    assert_status(&response, 200, "alice pushes to coolteam");
    assert_eq!(response.header("x-auth-user"), Some("alice"));
    let response = service.auth_user("GET", "/v2/", "carol");
    assert_status(&response, 200, "the ping for a user");
    assert_eq!(response.header("x-auth-user"), Some("carol"));

    // denied, anonymous → 401 with a Basic challenge
    assert_basic_challenge(&service.auth("GET", COOLTEAM, None), "anonymous pull of coolteam");
    assert_basic_challenge(&service.auth("GET", "/v2/", None), "anonymous ping");

    // wrong or unknown credentials → 401 with a challenge, even where
    // anonymous would be allowed
    assert_basic_challenge(
        &service.auth("GET", COOLTEAM, Some(("alice", "wrong"))),
        "wrong password",
    );
    assert_basic_challenge(
        &service.auth("GET", LIBRARY, Some(("mallory", "mallory-password"))),
        "unknown user",
    );
    let alice = basic("alice", &password("alice"));
    assert_basic_challenge(
        &service.auth_headers(&[
            ("X-Original-URI", LIBRARY),
            ("X-Original-Method", "GET"),
            ("Authorization", &alice),
            ("Authorization", &alice),
        ]),
        "repeated Authorization",
    );
    assert_basic_challenge(
        &service.auth_headers(&[
            ("X-Original-URI", LIBRARY),
            ("X-Original-Method", "GET"),
            ("Authorization", "Digest username=\"alice\""),
        ]),
        "unsupported scheme",
    );

    // denied, authenticated → 403 without a challenge
    assert_status(
        &service.auth_user("GET", COOLTEAM, "carol"),
        403,
        "carol pulls coolteam",
    );
    assert_status(&service.auth_user("DELETE", COOLTEAM, "alice"), 403, "alice deletes");

    // malformed → 403, for anonymous too (no challenge: logging in would not help)
    for uri in [
        "/v2/library/../coolteam/app/manifests/1",
        "/v2/library/./alpine/manifests/1",
        "/v2/library//alpine/manifests/1",
        "/v2/library%2Falpine/manifests/1",
        "/v2/library/alpine%00/manifests/1",
        "/v2/library\\alpine/manifests/1",
        "/v2/library/Alpine/manifests/1",
    ] {
        assert_status(&service.auth("GET", uri, None), 403, uri);
        assert_status(&service.auth_user("GET", uri, "admin-parente"), 403, uri);
    }
    assert_status(
        &service.auth("TRACE", LIBRARY, None),
        403,
        "a method that maps to no action",
    );

    // nginx misconfigured → 500 and a log line naming the directive
    assert_status(
        &service.auth_headers(&[("X-Original-Method", "GET")]),
        500,
        "no X-Original-URI",
    );
    assert_status(
        &service.auth_headers(&[("X-Original-URI", LIBRARY)]),
        500,
        "no X-Original-Method",
    );

    // a repeated X-Original-* header is ambiguous → 403, even when each copy allows
    assert_status(
        &service.auth_headers(&[
            ("X-Original-URI", LIBRARY),
            ("X-Original-URI", LIBRARY),
            ("X-Original-Method", "GET"),
        ]),
        403,
        "repeated X-Original-URI",
    );
    assert_status(
        &service.auth_headers(&[
            ("X-Original-URI", LIBRARY),
            ("X-Original-Method", "GET"),
            ("X-Original-Method", "GET"),
        ]),
        403,
        "repeated X-Original-Method",
    );

    // empty Basic credentials (podman, skopeo) are anonymous
    let empty = |uri: &str| {
        service.auth_headers(&[
            ("X-Original-URI", uri),
            ("X-Original-Method", "GET"),
            ("Authorization", "Basic Og=="),
        ])
    };
    let response = empty(LIBRARY);
    assert_status(&response, 200, "Og== on library");
    assert_eq!(response.header("x-auth-user"), Some("anonymous"));
    assert_basic_challenge(&empty(COOLTEAM), "Og== on coolteam");
}

/// What only the running binary shows: the log line that names the missing nginx directive,
/// and the 404 for anything that is not one of its paths.
fn check_binary_extras(service: &CselAuth) {
    service.auth_headers(&[("X-Original-Method", "GET")]);
    service.wait_for_log("proxy_set_header X-Original-URI $request_uri", Duration::from_secs(10));
    service.auth_headers(&[("X-Original-URI", LIBRARY)]);
    service.wait_for_log(
        "proxy_set_header X-Original-Method $request_method",
        Duration::from_secs(10),
    );
    assert_eq!(service.get("/").status, 404);
}

/// The whole outcome table against the service value, without a process or a socket.
#[test]
fn outcome_table_in_process() {
    check_outcome_table(&InProcessAuth::start(RULES, &[]));
}

#[test]
fn outcome_table_over_tcp() {
    let service = Setup::new(RULES).start();
    check_outcome_table(&service);
    check_binary_extras(&service);
}

#[test]
fn outcome_table_over_a_unix_socket_with_its_mode() {
    let mut service = Setup::new(RULES).unix_socket(Some("600")).start();
    let Endpoint::Unix(socket) = service.endpoint().clone() else {
        panic!("not a unix socket: {:?}", service.endpoint());
    };
    let mode = std::fs::metadata(&socket).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode.ok(), Some(0o600), "--socket-mode 600");
    check_outcome_table(&service);
    check_binary_extras(&service);

    service.signal(Signal::SIGTERM);
    assert!(service.wait_exit(Duration::from_secs(15)).success());
    assert!(!socket.exists(), "the socket is removed at exit");

    let default = Setup::new(RULES).unix_socket(None).start();
    let Endpoint::Unix(socket) = default.endpoint().clone() else {
        panic!("not a unix socket");
    };
    let mode = std::fs::metadata(&socket).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode.ok(), Some(0o660), "default socket mode");
}

#[test]
fn repeated_wrong_passwords_are_answered_after_a_growing_delay() {
    let service = Setup::new(RULES).start();
    let delayed = || service.metric("csel_auth_throttle_delay_seconds_total");
    let uri = "/v2/alice/app/manifests/1";
    let attempt_from = |address: &str, user: &str, pass: &str| {
        let credentials = basic(user, pass);
        service.auth_headers(&[
            ("X-Original-URI", uri),
            ("X-Original-Method", "GET"),
            ("X-Real-IP", address),
            ("Authorization", &credentials),
        ])
    };
    let attempt = |user: &str, pass: &str| attempt_from("192.0.2.7", user, pass);
    let mut delays = Vec::new();
    for _ in 0..5 {
        let before = delayed();
        assert_basic_challenge(&attempt("alice", "wrong"), "wrong password");
        delays.push(delayed() - before);
    }
    assert_eq!(
        &delays[..3],
        &[0.0, 0.0, 0.0],
        "the first failures are free: {delays:?}"
    );
    assert!(delays[3] > 0.0 && delays[4] > delays[3], "growing delay: {delays:?}");
    assert_eq!(service.metric("csel_auth_throttled_logins_total"), 2.0);

    // Five failures spent this address's budget for alice: not even the right password is checked
    // from here for now (it gets the same delay)...
    let checks = service.metric("csel_auth_bcrypt_checks_total");
    assert_basic_challenge(&attempt("alice", &password("alice")), "right password, spent budget");
    assert_eq!(service.metric("csel_auth_bcrypt_checks_total"), checks);
    assert_eq!(
        service.metric("csel_auth_login_rate_limited_total{limit=\"address_and_user\"}"),
        1.0
    );
    // ...while from an address that has not failed it gets in at once.
    let before = delayed();
    assert_status(
        &attempt_from("198.51.100.8", "alice", &password("alice")),
        200,
        "right password from another address",
    );
    assert_eq!(delayed(), before);
    // The client address stays throttled for other user names.
    assert_basic_challenge(&attempt("carol", "wrong"), "another user, same address");
    assert!(delayed() > before, "the address is throttled across user names");
}

#[test]
fn many_requests_share_one_keep_alive_connection() {
    let service = Setup::new(RULES).start();
    let mut connection = service.connect();
    for round in 0..50 {
        let allowed = connection.auth("GET", LIBRARY, None);
        assert_eq!(allowed.status, 200, "round {round}");
        assert_eq!(
            allowed.header("connection"),
            None,
            "round {round}: {:?}",
            allowed.headers
        );
        assert_eq!(connection.auth("GET", COOLTEAM, None).status, 401, "round {round}");
        assert_eq!(
            connection
                .auth("PUT", COOLTEAM, Some(("alice", &password("alice"))))
                .status,
            200
        );
        assert_eq!(
            connection
                .auth("GET", COOLTEAM, Some(("carol", &password("carol"))))
                .status,
            403
        );
        assert_eq!(
            connection
                .request("GET", "/auth", &[("X-Original-Method", "GET")], b"")
                .status,
            500
        );
        assert_eq!(connection.request("GET", "/healthz", &[], b"").status, 200);
    }
    let metrics = connection.request("GET", "/metrics", &[], b"");
    assert_eq!(
        parse_metrics(&metrics.text())["csel_auth_decisions_total{outcome=\"allowed\"}"],
        100.0
    );
}

#[test]
fn a_panic_while_deciding_is_a_denial_not_a_dropped_connection() {
    if !cfg!(debug_assertions) {
        eprintln!("skipped: fault injection exists in debug builds only");
        return;
    }
    let boom = "/v2/library/boom/manifests/1";
    let service = Setup::new(RULES).env("CSEL_AUTH_FAULT_PANIC_URI", boom).start();
    let mut connection = service.connect();
    for credentials in [None, Some(("admin-parente", password("admin-parente")))] {
        let login = credentials.as_ref().map(|(u, p)| (*u, p.as_str()));
        let response = connection.auth("GET", boom, login);
        assert_eq!(response.status, 403, "{}", response.text());
        assert_eq!(response.header("x-auth-user"), None);
        // The same connection still works.
        assert_eq!(connection.auth("GET", LIBRARY, login).status, 200);
    }
    service.wait_for_log("fault injection", Duration::from_secs(10));
    assert_eq!(service.metric("csel_auth_decisions_total{outcome=\"error\"}"), 2.0);
    assert_eq!(service.metric("csel_auth_decisions_total{outcome=\"allowed\"}"), 2.0);
}

// ---------------------------------------------------------------------------
// Hot reload

/// The example rules plus anonymous pull of `/v2/<namespace>/`.
fn rules_opening(namespace: &str) -> String {
    format!("{RULES}\ngrant pull on (path =^ \"/v2/{namespace}/\") to anonymous\n")
}

fn is_open(service: &CselAuth, namespace: &str) -> bool {
    service
        .auth("GET", &format!("/v2/{namespace}/x/manifests/1"), None)
        .status
        == 200
}

/// Applies `change` (rules opening `to` instead of `from`) and waits, at
/// most [`RELOAD_DEADLINE`] from the moment `change` returns, for the
/// decision to flip. Returns and prints the latency.
fn assert_flips(service: &CselAuth, what: &str, from: &str, to: &str, change: impl FnOnce()) -> Duration {
    assert!(
        is_open(service, from) && !is_open(service, to),
        "{what}: before the change"
    );
    change();
    let latency = time_until(RELOAD_DEADLINE, || is_open(service, to));
    let Some(latency) = latency else {
        panic!("{what}: the new version was not in force within {RELOAD_DEADLINE:?}");
    };
    assert!(!is_open(service, from), "{what}: the old grant is gone");
    println!("reload latency, {what}: {:.1} ms", latency.as_secs_f64() * 1000.0);
    latency
}

#[test]
fn reload_after_an_in_place_write() {
    let _alone = alone();
    let setup = Setup::new(&rules_opening("ns-a"));
    let service = setup.start();
    let rules = service.rules().to_path_buf();
    assert_flips(&service, "in-place write", "ns-a", "ns-b", || {
        write(&rules, rules_opening("ns-b"))
    });
    // Same length again: the modification time alone may not change.
    assert_flips(&service, "in-place write, same size", "ns-b", "ns-a", || {
        write(&rules, rules_opening("ns-a"))
    });
    assert_eq!(service.metric("csel_auth_version{file=\"rules\"}"), 3.0);
    assert_eq!(
        service.metric("csel_auth_reloads_total{file=\"rules\",result=\"ok\"}"),
        2.0
    );
}

#[test]
fn reload_after_write_to_temporary_and_rename() {
    let _alone = alone();
    let service = Setup::new(&rules_opening("ns-a")).start();
    let rules = service.rules().to_path_buf();
    assert_flips(&service, "write and rename", "ns-a", "ns-b", || {
        write_and_rename(&rules, rules_opening("ns-b"))
    });
    assert_flips(&service, "write and rename, again", "ns-b", "ns-a", || {
        write_and_rename(&rules, rules_opening("ns-a"))
    });
}

fn git(directory: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=csel-auth test",
            "-c",
            "user.email=test@example.invalid",
        ])
        .args(args)
        .current_dir(directory)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("HOME", directory)
        .output();
    match output {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Ok(out) => panic!("git {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(error) => panic!("cannot run git (needed by this test): {error}"),
    }
}

#[test]
fn reload_after_git_checkout() {
    let _alone = alone();
    let setup = Setup::new(&rules_opening("ns-a"));
    let directory = setup.dir().to_path_buf();
    let rules = setup.path("registry.rules");
    git(&directory, &["init", "-q"]);
    git(&directory, &["add", "registry.rules"]);
    git(&directory, &["commit", "-q", "-m", "open ns-a"]);
    let first = git(&directory, &["rev-parse", "HEAD"]);
    write(&rules, rules_opening("ns-b"));
    git(&directory, &["commit", "-q", "-a", "-m", "open ns-b"]);
    let second = git(&directory, &["rev-parse", "HEAD"]);
    git(&directory, &["checkout", "-q", &first]);

    let service = setup.start();
    assert_flips(&service, "git checkout", "ns-a", "ns-b", || {
        git(&directory, &["checkout", "-q", &second]);
    });
    assert_flips(&service, "git checkout, back", "ns-b", "ns-a", || {
        git(&directory, &["checkout", "-q", &first]);
    });
}

/// A Kubernetes ConfigMap volume: `registry.rules -> ..data/registry.rules`,
/// `..data -> ..<timestamp>`; an update writes a new timestamped directory,
/// renames a new `..data` symlink over the old one, and deletes the old
/// directory.
#[test]
fn reload_after_a_kubernetes_symlink_swap() {
    let _alone = alone();
    let setup = Setup::bare();
    let volume = setup.path("config");
    let publish = |version: &str, rules: &str| {
        let data = volume.join(version);
        std::fs::create_dir_all(&data).unwrap();
        write(&data.join("registry.rules"), rules);
        write(&data.join("users.htpasswd"), standard_htpasswd());
    };
    let swap_to = |version: &str| {
        let new_link = volume.join("..data_tmp");
        symlink(version, &new_link).unwrap();
        std::fs::rename(&new_link, volume.join("..data")).unwrap();
    };
    publish("..2024_01_01_00_00_00.1", &rules_opening("ns-a"));
    symlink("..2024_01_01_00_00_00.1", volume.join("..data")).unwrap();
    symlink("..data/registry.rules", volume.join("registry.rules")).unwrap();
    symlink("..data/users.htpasswd", volume.join("users.htpasswd")).unwrap();
    let service = setup
        .rules_at(volume.join("registry.rules"))
        .htpasswd_at(Some(volume.join("users.htpasswd")))
        .start();

    publish("..2024_01_02_00_00_00.2", &rules_opening("ns-b"));
    assert_flips(&service, "kubernetes symlink swap", "ns-a", "ns-b", || {
        swap_to("..2024_01_02_00_00_00.2");
        std::fs::remove_dir_all(volume.join("..2024_01_01_00_00_00.1")).unwrap();
    });
    // Again, now that the directory the service started on is gone.
    publish("..2024_01_03_00_00_00.3", &rules_opening("ns-a"));
    assert_flips(&service, "kubernetes symlink swap, again", "ns-b", "ns-a", || {
        swap_to("..2024_01_03_00_00_00.3");
        std::fs::remove_dir_all(volume.join("..2024_01_02_00_00_00.2")).unwrap();
    });
    assert_eq!(service.metric("csel_auth_reload_failing{file=\"htpasswd\"}"), 0.0);
}

#[test]
fn reload_after_a_file_is_deleted_and_created_again() {
    let _alone = alone();
    let service = Setup::new(&rules_opening("ns-a")).start();
    let rules = service.rules().to_path_buf();
    assert_flips(&service, "delete, then create", "ns-a", "ns-b", || {
        std::fs::remove_file(&rules).unwrap();
        // A slow writer: the service sees the file missing for a while.
        std::thread::sleep(Duration::from_millis(40));
        write(&rules, rules_opening("ns-b"));
    });
    assert_eq!(
        service.metric("csel_auth_reloads_total{file=\"rules\",result=\"failed\"}"),
        0.0
    );
    assert_eq!(service.metric("csel_auth_reload_failing{file=\"rules\"}"), 0.0);
}

/// `registry.rules -> a/registry.rules` is pointed at `b/registry.rules`;
/// later edits of `b/registry.rules` must be seen as quickly.
#[test]
fn reload_follows_a_symlink_to_its_new_directory() {
    let _alone = alone();
    let setup = Setup::bare();
    let (first, second) = (setup.path("a"), setup.path("b"));
    for (directory, namespace) in [(&first, "ns-a"), (&second, "ns-b")] {
        std::fs::create_dir(directory).unwrap();
        write(&directory.join("registry.rules"), rules_opening(namespace));
    }
    let link = setup.path("registry.rules");
    symlink("a/registry.rules", &link).unwrap();
    let service = setup.start();
    assert_flips(&service, "symlink retargeted", "ns-a", "ns-b", || {
        let new_link = link.with_extension("new-link");
        symlink("b/registry.rules", &new_link).unwrap();
        std::fs::rename(&new_link, &link).unwrap();
    });
    assert_flips(
        &service,
        "in-place write behind the retargeted symlink",
        "ns-b",
        "ns-c",
        || write(&second.join("registry.rules"), rules_opening("ns-c")),
    );
    // The old directory is no longer the rules: changing it changes nothing.
    write(&first.join("registry.rules"), rules_opening("ns-d"));
    service.signal(Signal::SIGHUP);
    wait_for(Duration::from_secs(10), "the SIGHUP reload", || {
        (service.metric("csel_auth_version{file=\"rules\"}") == 4.0).then_some(())
    });
    assert!(is_open(&service, "ns-c") && !is_open(&service, "ns-d"));
}

#[test]
fn sighup_is_handled_while_every_connection_slot_is_taken() {
    let service = Setup::new(RULES)
        .arg("--max-connections")
        .arg("1")
        .arg("--reload-interval")
        .arg("3600")
        .start();
    // The only slot: the service cannot accept another connection now.
    let mut connection = service.connect();
    let version = |connection: &mut Conn| {
        let response = connection.request("GET", "/metrics", &[], b"");
        parse_metrics(&response.text())["csel_auth_version{file=\"rules\"}"]
    };
    assert_eq!(version(&mut connection), 1.0);
    service.signal(Signal::SIGHUP);
    wait_for(Duration::from_secs(10), "the SIGHUP reload", || {
        (version(&mut connection) == 2.0).then_some(())
    });
}

#[test]
fn sighup_reloads_both_files() {
    let _alone = alone();
    // No periodic check during the test: only the signal can cause the reload.
    let service = Setup::new(RULES).arg("--reload-interval").arg("3600").start();
    let version = |file: &str| service.metric(&format!("csel_auth_version{{file=\"{file}\"}}"));
    assert_eq!((version("rules"), version("htpasswd")), (1.0, 1.0));
    service.signal(Signal::SIGHUP);
    let latency = time_until(RELOAD_DEADLINE, || {
        version("rules") == 2.0 && version("htpasswd") == 2.0
    });
    let Some(latency) = latency else {
        panic!("SIGHUP: no reload within {RELOAD_DEADLINE:?}");
    };
    println!("reload latency, SIGHUP: {:.1} ms", latency.as_secs_f64() * 1000.0);
    // Still serving, on the same rules.
    assert!(is_open(&service, "library") && !is_open(&service, "coolteam"));
}

#[test]
fn a_broken_rules_file_keeps_the_old_rules_until_fixed() {
    let _alone = alone();
    let service = Setup::new(&rules_opening("ns-a")).start();
    let rules = service.rules().to_path_buf();
    let sample = |name: &str| service.metric(name);
    const FAILING: &str = "csel_auth_reload_failing{file=\"rules\"}";
    const FAILED: &str = "csel_auth_reloads_total{file=\"rules\",result=\"failed\"}";
    const OK: &str = "csel_auth_reloads_total{file=\"rules\",result=\"ok\"}";
    assert_eq!((sample(FAILING), sample(FAILED), sample(OK)), (0.0, 0.0, 0.0));

    write_and_rename(&rules, format!("{RULES}\ngrant pull on libary to anonymous\n"));
    let latency = time_until(RELOAD_DEADLINE, || sample(FAILING) == 1.0);
    let Some(latency) = latency else {
        panic!("the failed reload did not show in /metrics within {RELOAD_DEADLINE:?}");
    };
    println!(
        "reload latency, broken file seen: {:.1} ms",
        latency.as_secs_f64() * 1000.0
    );
    assert_eq!(sample(FAILED), 1.0);
    service.wait_for_log("unknown selector `libary`", Duration::from_secs(10));
    let location = service.wait_for_log("registry.rules:", Duration::from_secs(10));
    let line_column = location.rsplit("registry.rules:").next().unwrap_or_default();
    assert!(
        line_column.split(':').take(2).all(|n| n.trim().parse::<u32>().is_ok()),
        "the log names file:line:column: {location}"
    );
    assert!(is_open(&service, "ns-a"), "the last good rules stay in force");
    assert_eq!(sample("csel_auth_version{file=\"rules\"}"), 1.0);

    write_and_rename(&rules, rules_opening("ns-b"));
    let latency = time_until(RELOAD_DEADLINE, || is_open(&service, "ns-b") && sample(FAILING) == 0.0);
    let Some(latency) = latency else {
        panic!("the fixed file was not in force within {RELOAD_DEADLINE:?}");
    };
    println!("reload latency, fixed file: {:.1} ms", latency.as_secs_f64() * 1000.0);
    assert!(!is_open(&service, "ns-a"));
    assert_eq!((sample(FAILED), sample(OK)), (1.0, 1.0));
    assert_eq!(sample("csel_auth_version{file=\"rules\"}"), 2.0);
}

#[test]
fn an_htpasswd_change_invalidates_cached_logins_at_once() {
    let _alone = alone();
    let service = Setup::new(RULES).start();
    let htpasswd = service.htpasswd().to_path_buf();
    let own = |user: &str, pass: &str| service.auth("GET", &format!("/v2/{user}/app/manifests/1"), Some((user, pass)));
    let bcrypt = || service.metric("csel_auth_bcrypt_checks_total");
    for user in ["alice", "bob", "carol"] {
        assert_eq!(own(user, &password(user)).status, 200, "{user}");
        assert_eq!(own(user, &password(user)).status, 200, "{user}, cached");
    }
    assert_eq!(bcrypt(), 3.0, "one bcrypt per user");

    // alice's password changes: her cached login no longer counts.
    let mut lines: Vec<String> = standard_htpasswd().lines().map(str::to_string).collect();
    lines.retain(|line| !line.starts_with("alice:"));
    lines.push(format!("alice:{}", bcrypt_hash("alice-new-password")));
    write_and_rename(&htpasswd, &(lines.join("\n") + "\n"));
    let latency = time_until(RELOAD_DEADLINE, || own("alice", &password("alice")).status == 401);
    let Some(latency) = latency else {
        panic!("alice's old password still worked {RELOAD_DEADLINE:?} after the change");
    };
    println!(
        "reload latency, htpasswd password change: {:.1} ms",
        latency.as_secs_f64() * 1000.0
    );
    assert_eq!(own("alice", "alice-new-password").status, 200);
    let checks = bcrypt();
    assert_eq!(own("bob", &password("bob")).status, 200);
    assert_eq!(bcrypt(), checks, "bob's entry did not change: still cached");

    // carol is removed.
    lines.retain(|line| !line.starts_with("carol:"));
    write_and_rename(&htpasswd, &(lines.join("\n") + "\n"));
    let latency = time_until(RELOAD_DEADLINE, || own("carol", &password("carol")).status == 401);
    let Some(latency) = latency else {
        panic!("removed carol still got in {RELOAD_DEADLINE:?} after the change");
    };
    println!(
        "reload latency, htpasswd user removed: {:.1} ms",
        latency.as_secs_f64() * 1000.0
    );
    assert_basic_challenge(&own("carol", &password("carol")), "removed user");
    assert_eq!(service.metric("csel_auth_version{file=\"htpasswd\"}"), 3.0);
}

// ---------------------------------------------------------------------------

#[test]
fn a_burst_of_logins_costs_one_bcrypt() {
    let service = Setup::new(RULES).start();
    let sample = |name: &str| service.metric(name);
    const BCRYPT: &str = "csel_auth_bcrypt_checks_total";
    const HITS: &str = "csel_auth_login_cache_hits_total";
    const WAITS: &str = "csel_auth_login_shared_waits_total";

    // 100 in a row on one connection, as a pull of many layers.
    let mut connection = service.connect();
    for request in 0..100 {
        let response = connection.auth("GET", LIBRARY, Some(("alice", &password("alice"))));
        assert_eq!(response.status, 200, "request {request}");
    }
    assert_eq!(sample(BCRYPT), 1.0);
    assert_eq!(sample(HITS), 99.0);

    // 100 at once, each on its own connection, none cached yet.
    let (hits, waits) = (sample(HITS), sample(WAITS));
    let start = Barrier::new(100);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..100)
            .map(|_| {
                scope.spawn(|| {
                    let mut connection = service.connect();
                    start.wait();
                    connection.auth("GET", COOLTEAM, Some(("bob", &password("bob")))).status
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(sample(BCRYPT), 2.0, "one more bcrypt for 100 concurrent logins");
    assert_eq!(sample(HITS) - hits + sample(WAITS) - waits, 99.0);
}

#[test]
fn sigterm_lets_requests_in_flight_finish_and_exits_zero() {
    let mut service = Setup::new(RULES).start();
    let wrong = || service.auth("GET", COOLTEAM, Some(("alice", "wrong")));
    // Three free failures, then 100 and 200 ms: the next one waits 400 ms.
    for _ in 0..5 {
        assert_eq!(wrong().status, 401);
    }
    let throttled = service.metric("csel_auth_throttled_logins_total");
    let mut connection = service.connect();
    let response = std::thread::scope(|scope| {
        let in_flight = scope.spawn(move || connection.auth("GET", COOLTEAM, Some(("alice", "wrong"))));
        wait_for(Duration::from_secs(10), "the login to be held back", || {
            (service.metric("csel_auth_throttled_logins_total") > throttled).then_some(())
        });
        service.signal(Signal::SIGTERM);
        in_flight.join().unwrap()
    });
    assert_basic_challenge(&response, "the request in flight at SIGTERM");
    let status = service.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit status {status:?}");
    let log = service.log();
    let shutdown = log.find("shutting down").unwrap_or(usize::MAX);
    let answered = log.rfind("status=401").unwrap_or(0);
    assert!(shutdown < answered, "the request was answered after SIGTERM:\n{log}");
}

#[test]
fn metrics_cover_decisions_reloads_logins_and_latency() {
    let service = Setup::new(RULES).start();
    let statuses = [
        service.auth("GET", LIBRARY, None).status,
        service.auth_user("PUT", COOLTEAM, "alice").status,
        service.auth_user("GET", COOLTEAM, "alice").status,
        service.auth("GET", COOLTEAM, None).status,
        service.auth("GET", COOLTEAM, Some(("alice", "wrong"))).status,
        service.auth_user("GET", COOLTEAM, "carol").status,
        service.auth("GET", "/v2/library/../x/manifests/1", None).status,
        service.auth_headers(&[("X-Original-Method", "GET")]).status,
    ];
    assert_eq!(statuses, [200, 200, 200, 401, 401, 403, 403, 500]);

    let text = service.metrics_text();
    let metrics = parse_metrics(&text);
    let get = |name: &str| match metrics.get(name) {
        Some(value) => *value,
        None => panic!("/metrics has no {name}:\n{text}"),
    };
    for (outcome, count) in [
        ("allowed", 3.0),
        ("unauthorized", 2.0),
        ("forbidden", 1.0),
        ("error", 2.0),
    ] {
        assert_eq!(
            get(&format!("csel_auth_decisions_total{{outcome=\"{outcome}\"}}")),
            count,
            "{outcome}"
        );
    }
    for file in ["rules", "htpasswd"] {
        for result in ["ok", "failed"] {
            assert_eq!(
                get(&format!(
                    "csel_auth_reloads_total{{file=\"{file}\",result=\"{result}\"}}"
                )),
                0.0
            );
        }
        assert_eq!(get(&format!("csel_auth_reload_failing{{file=\"{file}\"}}")), 0.0);
        assert_eq!(get(&format!("csel_auth_version{{file=\"{file}\"}}")), 1.0);
        let loaded = get(&format!("csel_auth_loaded_timestamp_seconds{{file=\"{file}\"}}"));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        assert!((now - loaded).abs() < 120.0, "{file} loaded at {loaded}, now {now}");
    }
    // alice once, alice's wrong password, carol once.
    assert_eq!(get("csel_auth_bcrypt_checks_total"), 3.0);
    assert_eq!(get("csel_auth_login_cache_hits_total"), 1.0);
    assert_eq!(get("csel_auth_throttled_logins_total"), 0.0);

    assert!(text.contains("# TYPE csel_auth_decision_duration_seconds histogram"));
    let mut buckets: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|(name, value)| {
            let bound = name
                .strip_prefix("csel_auth_decision_duration_seconds_bucket{le=\"")?
                .strip_suffix("\"}")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, *value))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() >= 5, "{buckets:?}");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative buckets: {buckets:?}"
    );
    assert_eq!(buckets.last().map(|b| b.1), Some(8.0));
    assert_eq!(get("csel_auth_decision_duration_seconds_count"), 8.0);
    assert!(get("csel_auth_decision_duration_seconds_sum") > 0.0);
    let response = service.get("/metrics");
    assert!(response
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/plain"));
}

#[test]
fn serve_takes_its_settings_from_a_config_file_and_flags_win() {
    let _alone = alone();
    let setup = Setup::new(RULES);
    let config = setup.path("csel-auth.toml");
    // Relative paths follow the config file; `listen` here is overridden by
    // the kit's `--listen`, so the service answering proves flags win.
    write(
        &config,
        "rules = \"registry.rules\"\nhtpasswd = \"users.htpasswd\"\nlisten = \"127.0.0.1:1\"\nrealm = \"from-the-config\"\n\n[log]\nfilter = \"info\"\n",
    );
    let service = setup.config_file(config).start();
    assert_status(&service.auth("GET", LIBRARY, None), 200, "anonymous pull of library");
    let anonymous = service.auth("GET", COOLTEAM, None);
    assert_status(&anonymous, 401, "anonymous on coolteam");
    assert_eq!(
        anonymous.header("www-authenticate"),
        Some("Basic realm=\"from-the-config\", charset=\"UTF-8\""),
        "the realm comes from the config file"
    );
    let alice = password("alice");
    assert_status(
        &service.auth("PUT", COOLTEAM, Some(("alice", &alice))),
        200,
        "the htpasswd named in the config",
    );
}

#[test]
fn sighup_says_which_config_changes_need_a_restart() {
    let _alone = alone();
    let setup = Setup::new(RULES);
    let config = setup.path("csel-auth.toml");
    write(
        &config,
        "rules = \"registry.rules\"\nhtpasswd = \"users.htpasswd\"\nrealm = \"one\"\n",
    );
    let service = setup
        .config_file(config.clone())
        .arg("--reload-interval")
        .arg("3600")
        .start();
    write(
        &config,
        "rules = \"registry.rules\"\nhtpasswd = \"users.htpasswd\"\nrealm = \"two\"\n",
    );
    service.signal(Signal::SIGHUP);
    let line = service.wait_for_log("take effect at the next restart", RELOAD_DEADLINE);
    assert!(line.contains("realm"), "the changed key is named: {line}");
    let anonymous = service.auth("GET", COOLTEAM, None);
    assert_eq!(
        anonymous.header("www-authenticate"),
        Some("Basic realm=\"one\", charset=\"UTF-8\""),
        "the running settings are those from the start"
    );
}

// ---------------------------------------------------------------------------
// Password guessing, long names and htpasswd problems

/// One `/auth` subrequest for `user:pass` from client address `address`.
fn login_from(service: &CselAuth, address: &str, user: &str, pass: &str) -> Response {
    let credentials = basic(user, pass);
    service.auth_headers(&[
        ("X-Original-URI", &format!("/v2/{user}/app/manifests/1")),
        ("X-Original-Method", "GET"),
        ("X-Real-IP", address),
        ("Authorization", &credentials),
    ])
}

/// Guesses at `user`'s password: `connections` connections at once, each sending `per_connection`
/// wrong passwords in turn, connection `i` from `address(i)`. Returns every answer's status.
fn guess_in_parallel(
    service: &CselAuth,
    user: &str,
    connections: usize,
    per_connection: usize,
    address: impl Fn(usize) -> String + Sync,
) -> Vec<u16> {
    let start = Barrier::new(connections);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..connections)
            .map(|i| {
                let (start, address) = (&start, &address);
                scope.spawn(move || {
                    let mut connection = service.connect();
                    let from = address(i);
                    start.wait();
                    (0..per_connection)
                        .map(|guess| {
                            let credentials = basic(user, &format!("guess-{i}-{guess}"));
                            let uri = format!("/v2/{user}/app/manifests/1");
                            connection
                                .request(
                                    "GET",
                                    "/auth",
                                    &[
                                        ("X-Original-URI", &uri),
                                        ("X-Original-Method", "GET"),
                                        ("X-Real-IP", &from),
                                        ("Authorization", &credentials),
                                    ],
                                    b"",
                                )
                                .status
                        })
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    })
}

/// The most attempts a GCRA limit of `burst` lets through in `elapsed`, refilling one every
/// `interval`.
fn allowed_by(burst: u32, interval: Duration, elapsed: Duration) -> f64 {
    f64::from(burst) + (elapsed.as_secs_f64() / interval.as_secs_f64()).ceil()
}

#[test]
fn parallel_guessing_is_limited_by_count_per_user_and_address() {
    // The limits the README documents: per user and address 5 failed logins, then one every 12 s;
    // per user, from addresses past their first forgiven failure, 10, then one every 6 s.
    const FORGIVEN_FAILURES: u32 = 1;
    let (pair_burst, pair_interval) = (5, Duration::from_secs(12));
    let (user_burst, user_interval) = (10, Duration::from_secs(6));
    let service = Setup::new(RULES).start();
    let bcrypt = || service.metric("csel_auth_bcrypt_checks_total");
    const ATTACKER: &str = "192.0.2.66";

    // carol logged in from the attacker's address before: her cached login is not guessing.
    assert_status(
        &login_from(&service, ATTACKER, "carol", &password("carol")),
        200,
        "carol",
    );

    // 100 connections from one address, 3 guesses each.
    let started = Instant::now();
    let before = bcrypt();
    let statuses = guess_in_parallel(&service, "alice", 100, 3, |_| ATTACKER.to_string());
    let elapsed = started.elapsed();
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    let checked = bcrypt() - before;
    let bound = allowed_by(pair_burst, pair_interval, elapsed);
    println!(
        "guessing: 300 guesses on 100 connections from one address in {elapsed:.1?}: {checked} passwords checked (bound {bound})"
    );
    assert!(
        checked <= bound,
        "300 guesses from one address ran {checked} bcrypt checks; at most {bound} may"
    );
    assert!(
        service.metric("csel_auth_login_rate_limited_total{limit=\"address_and_user\"}") >= 300.0 - bound,
        "the refused guesses are counted"
    );

    // The real alice, from an address that has not failed, gets in at once.
    let response = login_from(&service, "198.51.100.20", "alice", &password("alice"));
    assert_status(&response, 200, "alice from a clean address during the attack");
    // A cached login from the attacker's own address is not a guess either.
    assert_status(
        &login_from(&service, ATTACKER, "carol", &password("carol")),
        200,
        "carol, cached",
    );

    // 50 addresses, 3 guesses each, at bob: past its forgiven failure each address joins bob's
    // shared limit.
    let started = Instant::now();
    let before = bcrypt();
    let statuses = guess_in_parallel(&service, "bob", 50, 3, |i| format!("203.0.113.{}", i + 1));
    let elapsed = started.elapsed();
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    let checked = bcrypt() - before;
    let bound = 50.0 * f64::from(FORGIVEN_FAILURES + 1) + allowed_by(user_burst, user_interval, elapsed);
    println!(
        "guessing: 150 guesses at bob from 50 addresses in {elapsed:.1?}: {checked} passwords checked (bound {bound})"
    );
    assert!(
        checked <= bound,
        "150 guesses from 50 addresses ran {checked} bcrypt checks; at most {bound} may"
    );
    // bob himself, from a clean address, is not locked out.
    let response = login_from(&service, "198.51.100.21", "bob", &password("bob"));
    assert_status(&response, 200, "bob from a clean address during the attack");
}

#[test]
fn overlong_user_names_are_refused_before_anything_is_stored() {
    let keys = tempfile::Builder::new().prefix("csel-auth-key-").tempdir().unwrap();
    let service = Setup::new(RULES).token_realm(keys.path().join("key")).start();
    let state = || {
        let metrics = service.metrics();
        let get = |name: &str| metrics.get(name).copied().unwrap_or(0.0);
        (
            get("csel_auth_bcrypt_checks_total"),
            get("csel_auth_login_throttle_entries"),
            get("csel_auth_login_throttle_bytes"),
        )
    };
    let before = state();
    for length in [257, 1000, 5000] {
        let name = "n".repeat(length);
        let response = login_from(&service, "192.0.2.9", &name, "password");
        assert_eq!(response.status, 401, "/auth, {length}-byte name: {}", response.text());
        let credentials = basic(&name, "password");
        let response = service.request(
            "GET",
            "/token?service=test-registry",
            &[("Authorization", &credentials), ("X-Real-IP", "192.0.2.9")],
            b"",
        );
        assert_eq!(
            response.status,
            401,
            "GET /token, {length}-byte name: {}",
            response.text()
        );
        let form = format!("grant_type=password&username={name}&password=x&service=test-registry");
        let response = service.request(
            "POST",
            "/token",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("X-Real-IP", "192.0.2.9"),
            ],
            form.as_bytes(),
        );
        assert_eq!(
            response.status,
            401,
            "POST /token, {length}-byte name: {}",
            response.text()
        );
        assert_eq!(
            state(),
            before,
            "a {length}-byte name was refused before anything was stored"
        );
    }
    // 256 bytes is still a name: checked (one bcrypt), and remembered as a failure.
    let response = login_from(&service, "192.0.2.9", &"n".repeat(256), "password");
    assert_eq!(response.status, 401);
    let after = state();
    assert_eq!(after.0, before.0 + 1.0, "a 256-byte name is checked");
    assert!(after.1 > before.1, "and its failure remembered: {after:?}");
}

#[test]
fn an_unsupported_hash_disables_only_its_user() {
    let service = Setup::new(RULES).start();
    let htpasswd = service.htpasswd().to_path_buf();
    let own = |user: &str, pass: &str| service.auth("GET", &format!("/v2/{user}/app/manifests/1"), Some((user, pass)));
    for user in ["alice", "carol"] {
        assert_eq!(own(user, &password(user)).status, 200, "{user}");
    }
    // One edit: carol removed, erin added with an Apache MD5 hash (`htpasswd -m`).
    let mut lines: Vec<String> = standard_htpasswd().lines().map(str::to_string).collect();
    lines.retain(|line| !line.starts_with("carol:"));
    lines.push("erin:$apr1$yk3TsPJK$v/TBpvFFLLK8VcNLgNCTI/".to_string());
    let erin_line = lines.len();
    write_and_rename(&htpasswd, &(lines.join("\n") + "\n"));
    wait_for(Duration::from_secs(10), "carol's removal to take effect", || {
        (own("carol", &password("carol")).status == 401).then_some(())
    });
    assert_basic_challenge(&own("carol", &password("carol")), "removed carol");
    assert_basic_challenge(&own("erin", "erin-password"), "erin, whose hash is not bcrypt");
    for user in ["alice", "bob", "dave", "admin-parente"] {
        assert_eq!(own(user, &password(user)).status, 200, "{user} still gets in");
    }
    assert_eq!(service.metric("csel_auth_htpasswd_disabled_users"), 1.0);
    assert_eq!(service.metric("csel_auth_reload_failing{file=\"htpasswd\"}"), 0.0);
    assert_eq!(service.metric("csel_auth_version{file=\"htpasswd\"}"), 2.0);
    let logged = service.wait_for_log(&format!("users.htpasswd:{erin_line}: "), Duration::from_secs(10));
    assert!(logged.contains("erin") && logged.contains("Apache MD5"), "{logged}");
    assert!(logged.contains("ERROR"), "logged as an error: {logged}");

    // A duplicate user is still a load error naming the line: the last good version stays.
    lines.push(format!("alice:{}", bcrypt_hash("another")));
    write_and_rename(&htpasswd, &(lines.join("\n") + "\n"));
    wait_for(Duration::from_secs(10), "the refused reload", || {
        (service.metric("csel_auth_reload_failing{file=\"htpasswd\"}") == 1.0).then_some(())
    });
    service.wait_for_log(
        &format!("users.htpasswd:{}: duplicate user \"alice\"", lines.len()),
        Duration::from_secs(10),
    );
    assert_eq!(own("alice", &password("alice")).status, 200);
    assert_eq!(own("carol", &password("carol")).status, 401);
}

#[test]
fn systemd_is_told_ready_only_once_the_rules_loaded() {
    use std::os::unix::net::UnixDatagram;
    let setup = Setup::new(RULES);
    let socket_path = setup.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let service = setup.env("NOTIFY_SOCKET", &socket_path.to_string_lossy()).start();
    let mut buffer = [0u8; 64];
    let received = socket.recv(&mut buffer).expect("no readiness message within 20 s");
    assert_eq!(&buffer[..received], b"READY=1\n");
    // Ready means answering, on the rules from the file.
    assert_eq!(service.auth_status(None, "GET", LIBRARY), 200);

    // A rules file that does not load: the service stops, and never says it is ready.
    let broken = Setup::new("grant pull on nothing to anonymous\n");
    let broken_socket_path = broken.path("notify.sock");
    let broken_socket = UnixDatagram::bind(&broken_socket_path).unwrap();
    broken_socket.set_nonblocking(true).unwrap();
    let broken = broken.env("NOTIFY_SOCKET", &broken_socket_path.to_string_lossy());
    let (status, log) = broken.start_expecting_failure();
    assert!(!status.success(), "{log}");
    assert!(
        broken_socket.recv(&mut buffer).is_err(),
        "a service that did not start said READY"
    );
}

#[test]
fn the_audit_log_has_one_json_line_per_decision_and_follows_logrotate() {
    let setup = Setup::new(RULES);
    let audit = setup.path("audit.log");
    let service = setup.arg("--audit-log").arg(&audit.to_string_lossy()).start();
    let read_lines = |path: &Path, count: usize| -> Vec<serde_json::Value> {
        wait_for(
            Duration::from_secs(10),
            &format!("{count} audit lines in {}", path.display()),
            || {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let lines: Vec<serde_json::Value> = text
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
                    .collect();
                (lines.len() >= count).then_some(lines)
            },
        )
    };
    let alice = password("alice");
    let push = service.request(
        "GET",
        "/auth",
        &[
            ("X-Original-URI", COOLTEAM),
            ("X-Original-Method", "PUT"),
            ("X-Real-IP", "192.0.2.7"),
            ("Authorization", &basic("alice", &alice)),
        ],
        b"",
    );
    assert_eq!(push.status, 200);
    assert_eq!(service.auth("PUT", COOLTEAM, None).status, 401);
    let lines = read_lines(&audit, 2);
    let allowed = &lines[0];
    println!("audit line of one push: {allowed}");
    assert_eq!(allowed["v"], 1);
    assert_eq!(allowed["user"], "alice");
    assert_eq!(allowed["auth"], "htpasswd");
    assert_eq!(allowed["client"], "192.0.2.7");
    assert_eq!(allowed["method"], "PUT");
    assert_eq!(allowed["repository"], "coolteam/app");
    assert_eq!(allowed["reference"], "1.0");
    assert_eq!(allowed["action"], "edit");
    assert_eq!(allowed["status"], 200);
    assert_eq!(allowed["outcome"], "allowed");
    assert!(allowed["rule_line"].as_u64().is_some(), "{allowed}");
    assert_eq!(allowed["rules_version"], 1);
    let refused = &lines[1];
    assert_eq!(
        (refused["user"].as_str(), refused["outcome"].as_str()),
        (Some("anonymous"), Some("unauthorized"))
    );
    assert!(refused["rule_line"].is_null());

    // logrotate moves the file and sends SIGUSR1: the next lines go to a new file.
    let rotated = audit.with_extension("log.1");
    std::fs::rename(&audit, &rotated).unwrap();
    service.signal(Signal::SIGUSR1);
    wait_for(RELOAD_DEADLINE, "a new audit file after SIGUSR1", || {
        service.auth("GET", LIBRARY, None);
        audit.exists().then_some(())
    });
    let lines = read_lines(&audit, 1);
    assert_eq!(lines[0]["path"], LIBRARY);
    assert_eq!(
        std::fs::read_to_string(&rotated).unwrap().lines().count(),
        2,
        "the rotated file keeps its lines"
    );
    assert!(service.metric("csel_auth_audit_lines_total") >= 3.0);
    assert_eq!(service.metric("csel_auth_audit_dropped_total"), 0.0);
}

/// A push whose answer turns on whether a tag exists is refused (503) when the registry cannot
/// say: none configured, or nothing listening there. Pushes that need no tag check go on.
#[test]
fn a_tag_push_is_refused_when_the_registry_cannot_say() {
    let rules = crate::kit::files::example("protected-tags.rules").unwrap();
    let v1 = "/v2/releases/app/manifests/v1";
    let unchecked = [
        ("PUT", "/v2/releases/app/manifests/latest"),
        ("POST", "/v2/releases/app/blobs/uploads/"),
    ];

    let without = Setup::new(&rules).start();
    assert_eq!(without.auth_user("PUT", v1, "alice").status, 503);
    without.wait_for_log(
        "no registry is configured to ask: set `[registry] url`",
        RELOAD_DEADLINE,
    );
    for (method, uri) in unchecked {
        assert_eq!(without.auth_user(method, uri, "alice").status, 200, "{method} {uri}");
    }

    // Port 1: privileged, and nothing of the tests listens there (a free port picked now could
    // be taken by another test's server before the check).
    let unreachable = Setup::new(&rules).registry("http://127.0.0.1:1").start();
    assert_eq!(unreachable.auth_user("PUT", v1, "alice").status, 503);
    unreachable.wait_for_log("whether tag v1 of releases/app exists is unknown", RELOAD_DEADLINE);
    assert_eq!(
        unreachable.metric("csel_auth_registry_tag_checks_total{result=\"error\"}"),
        1.0,
        "{}",
        unreachable.metrics_text()
    );
    for (method, uri) in unchecked {
        assert_eq!(
            unreachable.auth_user(method, uri, "alice").status,
            200,
            "{method} {uri}"
        );
    }
    // Nobody is asked for a user who may do both, or neither.
    assert_eq!(unreachable.auth_user("PUT", v1, "admin-parente").status, 200);
    assert_eq!(unreachable.auth_user("PUT", v1, "carol").status, 403);
    assert_eq!(
        unreachable.metric("csel_auth_registry_tag_checks_total{result=\"error\"}"),
        1.0
    );
}

/// The registry's own address over https, its certificate from a private CA: trusted with
/// `[registry] ca_file` naming that CA, and not with another. Untrusted, the tag check and the
/// catalog refuse (503) rather than go on without the registry's answer.
#[test]
fn an_https_registry_is_trusted_through_its_ca_file_only() {
    let registry = crate::kit::registry::Registry::start_tls().unwrap();
    registry.add_empty_repositories("releases/app", 2).unwrap();
    let rules = crate::kit::files::example("protected-tags.rules").unwrap();
    let with_ca = |ca_file: &Path| {
        let setup = Setup::new(&rules);
        let config = format!(
            "rules = \"registry.rules\"\nhtpasswd = \"users.htpasswd\"\n\n[registry]\nurl = \"https://{}\"\n\
             timeout = \"2s\"\nca_file = {:?}\n",
            registry.addr(),
            ca_file.display().to_string()
        );
        let path = setup.path("csel-auth.toml");
        write(&path, &config);
        setup.config_file(path).start()
    };
    let admin = basic("admin-parente", &password("admin-parente"));
    let v1 = "/v2/releases/app/manifests/v1";

    let trusted = with_ca(&registry.ca_file());
    // A new tag (the registry answers 404 over https): alice's `edit` creates it.
    assert_eq!(trusted.auth_user("PUT", v1, "alice").status, 200, "{}", trusted.log());
    assert_eq!(
        trusted.metric("csel_auth_registry_tag_checks_total{result=\"new\"}"),
        1.0
    );
    let catalog = trusted.request("GET", "/v2/_catalog", &[("Authorization", &admin)], b"");
    assert_eq!(catalog.status, 200, "{}", trusted.log());
    assert_eq!(
        catalog.text(),
        "{\"repositories\":[\"releases/app/00000\",\"releases/app/00001\"]}"
    );

    let untrusted = with_ca(&registry.other_ca_file());
    assert_eq!(untrusted.auth_user("PUT", v1, "alice").status, 503);
    untrusted.wait_for_log("UnknownIssuer", RELOAD_DEADLINE);
    let catalog = untrusted.request("GET", "/v2/_catalog", &[("Authorization", &admin)], b"");
    assert_eq!(catalog.status, 503, "{}", catalog.text());
}
