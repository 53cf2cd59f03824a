//! The operator commands, run as the real binary: exit statuses and output.

use std::process::{Command, Output};

fn csel_auth(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_csel-auth"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn temp_file(name: &str, content: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, content).unwrap();
    (dir, path.to_string_lossy().into_owned())
}

#[test]
fn example_decisions_hold() {
    for name in ["registry", "readonly-admins", "personal"] {
        let rules = format!("examples/{name}.rules");
        let decisions = format!("examples/{name}.decisions");
        let o = csel_auth(&["test", &rules, &decisions]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(text(&o).contains(" 0 wrong"), "{}", text(&o));
    }
}

#[test]
fn a_wrong_expectation_fails_the_test_command() {
    let (_dir, decisions) = temp_file(
        "wrong.decisions",
        "allow anonymous GET /v2/library/alpine/manifests/1\n# alice cannot delete: this expectation is wrong\nallow alice DELETE /v2/coolteam/app/manifests/1\n",
    );
    let o = csel_auth(&["test", "examples/registry.rules", &decisions]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("wrong.decisions:3: expected allow, got deny"), "{out}");
    assert!(out.contains("1 held, 1 wrong"), "{out}");
}

#[test]
fn malformed_decisions_file_is_an_error() {
    let (_dir, decisions) = temp_file("bad.decisions", "maybe alice GET /v2/\n");
    let o = csel_auth(&["test", "examples/registry.rules", &decisions]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("bad.decisions:1: expected `allow` or `deny`"),
        "{}",
        text(&o)
    );
}

#[test]
fn check_reports_errors_with_position_and_exits_non_zero() {
    let (_dir, rules) = temp_file(
        "r.rules",
        "selector library = path =^ \"/v2/library/\"\ngrant pull on libary to anonymous\n",
    );
    let o = csel_auth(&["check", &rules]);
    assert_eq!(o.status.code(), Some(1));
    let out = text(&o);
    assert!(out.contains("r.rules:2:15"), "{out}");
    assert!(out.contains("did you mean `library`?"), "{out}");
    assert!(out.contains("^^^^^^"), "{out}");
}

#[test]
fn check_warns_about_classic_mistakes() {
    let (dir, rules) = temp_file(
        "r.rules",
        "selector all = format == \"docker\"\nselector team = path =^ \"/v2/team\"\nselector lib = path =~ \"^/v2/library/\"\nselector unused = path == \"/x\"\ngroup g = ghost\ngrant pull on all, team, lib to anonymous, @g\n",
    );
    let htpasswd = dir.path().join("users.htpasswd");
    std::fs::write(
        &htpasswd,
        "alice:$2y$04$2P3vVCpMfwvLN4tC8ALBbOBj35AF8TLN9SHr5.ZaBPRsgFJIwzWaK\n",
    )
    .unwrap();
    let o = csel_auth(&["check", &rules, "--htpasswd", &htpasswd.to_string_lossy()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    for wanted in [
        "anonymous can read `/v2/`",
        "end a path prefix with `/`",
        "must match the whole path",
        "selector `unused` is not used",
        "`ghost` (group `g`) is not in the htpasswd file",
    ] {
        assert!(out.contains(wanted), "missing `{wanted}` in:\n{out}");
    }
    let token_mode = text(&csel_auth(&["check", &rules, "--token-mode"]));
    assert!(!token_mode.contains("anonymous can read `/v2/`"), "{token_mode}");
}

#[test]
fn explain_exit_status_and_output() {
    let allowed = csel_auth(&[
        "explain",
        "--rules",
        "examples/registry.rules",
        "--user",
        "alice",
        "PUT",
        "/v2/coolteam/app/manifests/1.0",
    ]);
    assert_eq!(allowed.status.code(), Some(0), "{}", text(&allowed));
    let out = text(&allowed);
    assert!(out.contains("decision: ALLOW"), "{out}");
    assert!(out.contains("subject:  alice (groups: coolteam)"), "{out}");
    assert!(out.contains("action:   edit (PUT)"), "{out}");
    assert!(out.contains("path:     /v2/coolteam/app/manifests/1.0"), "{out}");
    assert!(out.contains("grant push on coolteam to @coolteam"), "{out}");

    let denied = csel_auth(&[
        "explain",
        "--rules",
        "examples/registry.rules",
        "--user",
        "carol",
        "PUT",
        "/v2/coolteam/app/manifests/1.0",
    ]);
    assert_eq!(denied.status.code(), Some(1));
    let out = text(&denied);
    assert!(out.contains("decision: DENY (403)"), "{out}");
    assert!(out.contains("closest grants:"), "{out}");
    assert!(out.contains("✗ subject"), "{out}");
    assert!(out.contains("path =^ \"/v2/coolteam/\"  → true"), "{out}");

    let anonymous = csel_auth(&[
        "explain",
        "--rules",
        "examples/registry.rules",
        "GET",
        "/v2/coolteam/app/manifests/1",
    ]);
    assert_eq!(anonymous.status.code(), Some(1));
    assert!(text(&anonymous).contains("DENY (401"), "{}", text(&anonymous));

    let missing = csel_auth(&["explain", "--rules", "/nonexistent.rules", "GET", "/v2/"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing).contains("/nonexistent.rules"), "{}", text(&missing));
}

#[test]
fn eval_is_a_selector_preview() {
    let yes = csel_auth(&[
        "eval",
        r#"path =^ "/v2/library/""#,
        "--path",
        "/v2/library/alpine/tags/list",
    ]);
    assert_eq!((yes.status.code(), text(&yes).trim()), (Some(0), "true"));
    let no = csel_auth(&[
        "eval",
        r#"path =~ "/v2/library/""#,
        "--path",
        "/v2/library/alpine/tags/list",
    ]);
    assert_eq!((no.status.code(), text(&no).trim()), (Some(1), "false"));
    // No path checks: any path can be tried.
    let raw = csel_auth(&["eval", r#"path =^ "/v2/library/""#, "--path", "/v2/library/../x"]);
    assert_eq!(raw.status.code(), Some(0));
    let user = csel_auth(&[
        "eval",
        r#"path =^ "/v2/${user}/""#,
        "--path",
        "/v2/bob/x",
        "--user",
        "bob",
    ]);
    assert_eq!(user.status.code(), Some(0));
    let bad = csel_auth(&["eval", r#"path =^ "#, "--path", "/v2/"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad).contains("expected a string after `=^`"), "{}", text(&bad));
}

#[test]
fn check_reports_a_user_with_an_unsupported_hash_as_an_error_and_checks_the_rest() {
    let (dir, rules) = temp_file(
        "r.rules",
        "selector lib = path =^ \"/v2/library/\"\ngroup team = alice, erin, ghost\ngrant pull on lib to @team\n",
    );
    let htpasswd = dir.path().join("users.htpasswd");
    std::fs::write(
        &htpasswd,
        "alice:$2y$04$2P3vVCpMfwvLN4tC8ALBbOBj35AF8TLN9SHr5.ZaBPRsgFJIwzWaK\nerin:$apr1$yk3TsPJK$v/TBpvFFLLK8VcNLgNCTI/\n",
    )
    .unwrap();
    let o = csel_auth(&["check", &rules, "--htpasswd", &htpasswd.to_string_lossy()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("users.htpasswd:2: "), "the error names file:line: {out}");
    assert!(out.contains("Apache MD5"), "{out}");
    assert!(out.contains("user \"erin\" is disabled"), "{out}");
    // The rest of the file is checked, and the rules against it.
    assert!(
        out.contains("`ghost` (group `team`) is not in the htpasswd file"),
        "{out}"
    );
    assert!(!out.contains("`alice` (group `team`)"), "{out}");
    assert!(
        !out.contains("`erin` (group `team`) is not in"),
        "erin is in the file, disabled: {out}"
    );
    assert!(out.contains("1 htpasswd error"), "{out}");
}
