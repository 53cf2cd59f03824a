//! The operator commands, run as the real binary: exit statuses and output.

use crate::kit::service::{binary, Setup};
use crate::kit::{basic, password};

use std::process::{Command, Output};

fn csel_auth(args: &[&str]) -> Output {
    Command::new(binary()).args(args).output().unwrap()
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

/// `csel-auth check r.rules --htpasswd users.htpasswd` on these files: its output, and the
/// directory and the path of the rules file.
fn check_with_htpasswd(rules: &str, htpasswd: &str) -> (Output, tempfile::TempDir, String) {
    let (dir, rules) = temp_file("r.rules", rules);
    let users = dir.path().join("users.htpasswd");
    std::fs::write(&users, htpasswd).unwrap();
    let output = csel_auth(&["check", &rules, "--htpasswd", &users.to_string_lossy()]);
    (output, dir, rules)
}

/// A valid htpasswd line (bcrypt, cost 4).
const ALICE: &str = "alice:$2y$04$2P3vVCpMfwvLN4tC8ALBbOBj35AF8TLN9SHr5.ZaBPRsgFJIwzWaK\n";

#[test]
fn example_decisions_hold() {
    for name in ["registry", "readonly-admins", "personal", "protected-tags"] {
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
fn a_decision_that_turns_on_a_tag_names_the_case() {
    let (_dir, decisions) = temp_file(
        "tags.decisions",
        "allow alice PUT /v2/releases/app/manifests/v1 new-tag\nallow alice PUT /v2/releases/app/manifests/v1 tag-exists\n",
    );
    let o = csel_auth(&["test", "examples/protected-tags.rules", &decisions]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains(
            "tags.decisions:2: expected allow, got deny (tag v1 of releases/app exists and may not be overwritten"
        ),
        "{out}"
    );
    assert!(out.contains("1 held, 1 wrong"), "{out}");

    let (_dir, decisions) = temp_file("open.decisions", "allow alice PUT /v2/releases/app/manifests/v1\n");
    let o = csel_auth(&["test", "examples/protected-tags.rules", &decisions]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("open.decisions:1: this decision depends on whether tag v1 of releases/app exists")
            && text(&o).contains("end the line with `tag-exists` or `new-tag`"),
        "{}",
        text(&o)
    );

    let o = csel_auth(&[
        "explain",
        "--rules",
        "examples/protected-tags.rules",
        "--user",
        "alice",
        "PUT",
        "/v2/releases/app/manifests/v1",
    ]);
    let out = text(&o);
    assert!(
        out.contains("decision: depends on whether tag v1 of releases/app exists"),
        "{out}"
    );
    assert!(
        out.contains("if it exists:  DENY (403): tag v1 of releases/app exists"),
        "{out}"
    );
    assert!(
        out.contains(
            "if it is new:  ALLOW (200): line 30: grant pull, add, edit on release_uploads, release_tags to @ci"
        ),
        "{out}"
    );
}

#[test]
fn check_says_once_per_grant_that_edit_alone_moves_no_tag() {
    let (o, _dir, _rules) = check_with_htpasswd(
        "selector a = path =^ \"/v2/a/\"\ngrant edit on a to alice\ngrant pull, add, edit on a to alice\ngrant push on a to alice\ngrant edit, overwrite on a to alice\ngrant * on a to alice\n",
        ALICE,
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert_eq!(out.matches("`edit` without `overwrite`").count(), 2, "{out}");
    assert!(out.contains("r.rules:2:1"), "{out}");
    assert!(out.contains("r.rules:3:1"), "{out}");
}

#[test]
fn malformed_decisions_file_is_an_error() {
    let (_dir, decisions) = temp_file("bad.decisions", "maybe alice GET /v2/\n");
    let o = csel_auth(&["test", "examples/registry.rules", &decisions]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("bad.decisions:1: expected `allow`, `deny` or a status (200, 401, 403), found `maybe`"),
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
    let (o, _dir, rules) = check_with_htpasswd(
        "selector all = format == \"docker\"\nselector team = path =^ \"/v2/team\"\nselector lib = path =~ \"^/v2/library/\"\nselector unused = path == \"/x\"\ngroup g = ghost\ngrant pull on all, team, lib to anonymous, @g\n",
        ALICE,
    );
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

/// The status `explain` prints: `decision: ALLOW (200)`, `decision: DENY (401 …`.
fn explained_status(output: &str) -> Option<u16> {
    let line = output.lines().find(|l| l.starts_with("decision:"))?;
    let open = line.find('(')?;
    line.get(open + 1..open + 4)?.parse().ok()
}

/// (user, method, uri, content type, status in basic mode, status in token mode)
type AgreementCase<'a> = (Option<&'a str>, &'a str, String, Option<&'a str>, u16, u16);

/// `explain` and the running service answer every request with the same status: one function
/// maps a decision to 200 / 401 / 403 for both, in basic and in token mode (where the subject
/// holds a token from the realm, anonymous an anonymous one).
#[test]
fn explain_and_the_service_agree() {
    let rules = std::fs::read_to_string("examples/registry.rules").unwrap();
    let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let mount = |from: &str| format!("/v2/coolteam/app/blobs/uploads/?mount={digest}&from={from}");
    let form = Some("application/x-www-form-urlencoded");
    let cases: Vec<AgreementCase> = vec![
        // Malformed: 403 for anonymous too (logging in would not help).
        (None, "GET", "/v2/../x".into(), None, 403, 403),
        (
            None,
            "GET",
            "/v2/library/../coolteam/app/manifests/1".into(),
            None,
            403,
            403,
        ),
        (None, "BREW", "/v2/library/alpine/manifests/1".into(), None, 403, 403),
        (None, "POST", "/v2/library/alpine/blobs/uploads/".into(), form, 403, 403),
        (None, "GET", "/v2/library/alpine/manifests/1".into(), None, 200, 200),
        (None, "PUT", "/v2/library/alpine/manifests/1".into(), None, 401, 401),
        (None, "GET", "/v2/coolteam/app/manifests/1".into(), None, 401, 401),
        (None, "GET", "/v2/_catalog".into(), None, 401, 401),
        // The ping: for users; in token mode for every token holder.
        (None, "GET", "/v2/".into(), None, 401, 200),
        (Some("alice"), "GET", "/v2/".into(), None, 200, 200),
        (
            Some("alice"),
            "PUT",
            "/v2/coolteam/app/manifests/1".into(),
            None,
            200,
            200,
        ),
        (Some("alice"), "GET", "/v2/../x".into(), None, 403, 403),
        (
            Some("carol"),
            "PUT",
            "/v2/coolteam/app/manifests/1".into(),
            None,
            403,
            401,
        ),
        (Some("carol"), "GET", "/v2/_catalog".into(), None, 403, 401),
        (Some("admin-parente"), "GET", "/v2/_catalog".into(), None, 200, 200),
        (
            Some("bob"),
            "POST",
            "/v2/coolteam/app/blobs/uploads/".into(),
            form,
            403,
            403,
        ),
        (
            Some("bob"),
            "POST",
            "/v2/coolteam/app/blobs/uploads/".into(),
            Some("application/octet-stream"),
            200,
            200,
        ),
        (Some("bob"), "POST", mount("library/alpine"), None, 200, 200),
        (Some("bob"), "POST", mount("alice/x"), None, 403, 401),
        (
            Some("bob"),
            "POST",
            mount("library/alpine&from=alice/x"),
            None,
            403,
            403,
        ),
    ];
    let mut disagreements = Vec::new();
    for token_mode in [false, true] {
        let keys = tempfile::tempdir().unwrap();
        let mut setup = Setup::new(&rules);
        if token_mode {
            setup = setup.token_realm(keys.path().join("token.key"));
        }
        let service = setup.start();
        let authorization = |user: Option<&str>| -> Option<String> {
            if !token_mode {
                return user.map(|u| basic(u, &password(u)));
            }
            let login = user.map(|u| basic(u, &password(u)));
            let headers: Vec<(&str, &str)> = login.iter().map(|c| ("Authorization", c.as_str())).collect();
            let response = service.request("GET", "/token?service=test-registry", &headers, b"");
            assert_eq!(response.status, 200, "token for {user:?}: {}", response.text());
            let token = response.json()["token"].as_str().unwrap_or_default().to_string();
            assert!(!token.is_empty(), "no token for {user:?}");
            Some(format!("Bearer {token}"))
        };
        for (user, method, uri, content_type, basic_status, token_status) in &cases {
            let mut args = vec!["explain", "--rules", "examples/registry.rules"];
            if let Some(user) = user {
                args.extend(["--user", user]);
            }
            if let Some(content_type) = content_type {
                args.extend(["--content-type", content_type]);
            }
            if token_mode {
                args.push("--token-mode");
            }
            args.extend([*method, uri.as_str()]);
            let explained = csel_auth(&args);
            let explained = explained_status(&text(&explained)).ok_or_else(|| text(&explained));

            let credentials = authorization(*user);
            let mut headers = vec![("X-Original-URI", uri.as_str()), ("X-Original-Method", *method)];
            if let Some(value) = &credentials {
                headers.push(("Authorization", value));
            }
            if let Some(content_type) = content_type {
                headers.push(("X-Original-Content-Type", content_type));
            }
            let served = service.auth_headers(&headers).status;

            let expected = if token_mode { *token_status } else { *basic_status };
            let mode = if token_mode { "token" } else { "basic" };
            let who = user.unwrap_or("anonymous");
            if explained.as_ref().ok() != Some(&served) || served != expected {
                disagreements.push(format!(
                    "{mode} mode, {who} {method} {uri} ({content_type:?}): explain {}, service {served}, expected {expected}",
                    match &explained {
                        Ok(status) => status.to_string(),
                        Err(output) => format!("printed no status: {output}"),
                    }
                ));
            }
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}

#[test]
fn a_config_file_with_an_unknown_key_stops_serve_and_fails_check() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("csel-auth.toml");
    std::fs::write(
        &config,
        "rules = \"examples/registry.rules\"\n\n[token]\nrealm = \"https://r.example/token\"\nkeyfile = \"k\"\n",
    )
    .unwrap();
    let config = config.to_string_lossy().into_owned();
    for args in [vec!["serve", "--config", &config], vec!["check", "--config", &config]] {
        let o = csel_auth(&args);
        assert_ne!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
        let out = text(&o);
        assert!(out.contains("csel-auth.toml"), "{args:?} names the file: {out}");
        assert!(out.contains("line 5, column 1"), "{args:?} names the line: {out}");
        assert!(out.contains("unknown field `keyfile`"), "{args:?}: {out}");
        assert!(out.contains("key_file"), "{args:?} lists the expected keys: {out}");
    }
}

#[test]
fn the_example_config_checks() {
    let o = csel_auth(&["check", "--config", "examples/csel-auth.toml"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("registry.rules: ok:"), "{}", text(&o));
}

#[test]
fn check_with_a_config_checks_the_files_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let examples = std::fs::canonicalize("examples").unwrap();
    let config = dir.path().join("csel-auth.toml");
    std::fs::write(
        &config,
        format!(
            "rules = \"{}/registry.rules\"\nhtpasswd = \"{}/users.htpasswd\"\n",
            examples.display(),
            examples.display()
        ),
    )
    .unwrap();
    let o = csel_auth(&["check", "--config", &config.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("registry.rules: ok:"), "{}", text(&o));

    // The rules it names are checked: a broken one fails.
    std::fs::write(dir.path().join("broken.rules"), "grant pull on nothing to anonymous\n").unwrap();
    std::fs::write(&config, "rules = \"broken.rules\"\n").unwrap();
    let o = csel_auth(&["check", "--config", &config.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("broken.rules:1:15"), "{}", text(&o));
}

#[test]
fn explain_into_a_closed_pipe_ends_without_a_panic() {
    use std::process::Stdio;
    let mut child = Command::new(binary())
        .args([
            "explain",
            "--rules",
            "examples/registry.rules",
            "--user",
            "carol",
            "GET",
            "/v2/coolteam/app/manifests/1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before anything is read, as `| head -0` would.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn check_reports_a_user_with_an_unsupported_hash_as_an_error_and_checks_the_rest() {
    let (o, _dir, _rules) = check_with_htpasswd(
        "selector lib = path =^ \"/v2/library/\"\ngroup team = alice, erin, ghost\ngrant pull on lib to @team\n",
        &format!("{ALICE}erin:$apr1$yk3TsPJK$v/TBpvFFLLK8VcNLgNCTI/\n"),
    );
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
