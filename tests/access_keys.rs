//! Access keys: the keys file as data (`tests/data/access_keys/`), the `access-key` and
//! `check` commands run as the real binary, and verification through the library on the
//! files those commands wrote.
//!
//! Each data file says what it expects in `# expect:` lines — `ok`, `keys N`,
//! `error LINE:COLUMN TEXT` (every one listed must be reported) or `warning LINE TEXT`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use crate::kit::cases::{expect_error_at, expect_warning_on};
use csel_auth::access_keys::{AccessKeys, KeyCheck, Refusal};
use sha2::{Digest, Sha256};

fn csel_auth(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_csel-auth"))
        .args(args)
        .stdin(Stdio::null())
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

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

const HASH: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

/// `access-key create`, which must succeed; the secret it printed.
fn create(file: &Path, user: &str, extra: &[&str]) -> String {
    let mut args = vec!["access-key", "create", "--file", path_str(file), "--user", user];
    args.extend_from_slice(extra);
    let o = csel_auth(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8(o.stdout.clone()).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout is the secret alone: {stdout:?}");
    lines[0].to_string()
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn is_secret(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("csk_") else {
        return false;
    };
    let Some((id, random)) = rest.rsplit_once('_') else {
        return false;
    };
    !id.is_empty()
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && random.len() == 43
        && random.chars().all(|c| c.is_ascii_alphanumeric())
}

fn load(path: &Path) -> AccessKeys {
    AccessKeys::load(path).unwrap_or_else(|e| panic!("{e}"))
}

fn reason(check: KeyCheck) -> Result<String, Refusal> {
    match check {
        KeyCheck::Valid(key) => Ok(key.id.clone()),
        KeyCheck::Refused { reason, .. } => Err(reason),
        KeyCheck::NotAKey => panic!("taken for a password"),
    }
}

// ---------------------------------------------------------------------------------------------
// The file format, as data
// ---------------------------------------------------------------------------------------------

fn check_data_file(name: &str, text: &str) -> Result<(), String> {
    let expectations: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("# expect: "))
        .collect();
    if expectations.is_empty() {
        return Err("no `# expect:` line".into());
    }
    let parsed = AccessKeys::parse(name, text);
    for expectation in expectations {
        let (kind, rest) = expectation.split_once(' ').unwrap_or((expectation, ""));
        match kind {
            "ok" => {
                if let Err(e) = &parsed {
                    return Err(format!("expected to load, got:\n{e}"));
                }
            }
            "keys" => {
                let keys = parsed.as_ref().map_err(|e| format!("expected to load, got:\n{e}"))?;
                if keys.len().to_string() != rest {
                    return Err(format!("expected {rest} keys, got {}", keys.len()));
                }
            }
            "error" => {
                expect_error_at(name, parsed.as_ref().err(), rest)?;
            }
            "warning" => {
                let (line, wanted) = rest.split_once(' ').unwrap_or((rest, ""));
                let keys = parsed.as_ref().map_err(|e| format!("expected to load, got:\n{e}"))?;
                let warnings = keys.warnings(SystemTime::now());
                expect_warning_on(&warnings, line, wanted, |w| (w.line, w.message.as_str()))?;
            }
            other => return Err(format!("unknown expectation `{other}`")),
        }
    }
    Ok(())
}

#[test]
fn keys_files_from_data_directory() {
    let mut failures = Vec::new();
    let mut entries: Vec<PathBuf> = fs::read_dir("tests/data/access_keys")
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in &entries {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = fs::read_to_string(path).unwrap();
        if let Err(why) = check_data_file(&name, &text) {
            failures.push(format!("{name}: {}", why.replace('\n', "\n    ")));
        }
    }
    assert!(entries.len() >= 25, "only {} keys files", entries.len());
    assert!(
        failures.is_empty(),
        "{} of {} keys files failed:\n{}",
        failures.len(),
        entries.len(),
        failures.join("\n")
    );
}

#[test]
fn the_data_checker_itself_reports_wrong_expectations() {
    let line = format!("key k1 user=ci created=2026-11-29T05:00:00Z expires=never sha256={HASH}");
    assert!(check_data_file("x.keys", &format!("# expect: ok\n{line}\n")).is_ok());
    assert!(check_data_file("x.keys", &format!("# expect: keys 2\n{line}\n")).is_err());
    assert!(check_data_file("x.keys", &format!("# expect: ok\n{line} x=1\n")).is_err());
    let x = line.len() + 2;
    assert!(check_data_file("x.keys", &format!("# expect: error 2:{x} unknown field\n{line} x=1\n")).is_ok());
    let wrong = x - 1;
    assert!(check_data_file(
        "x.keys",
        &format!("# expect: error 2:{wrong} unknown field\n{line} x=1\n")
    )
    .is_err());
    assert!(check_data_file("x.keys", &format!("# expect: warning 2 expired\n{line}\n")).is_err());
    assert!(check_data_file("x.keys", &format!("# expect: warning 2 never expires\n{line}\n")).is_ok());
}

// ---------------------------------------------------------------------------------------------
// create, list, revoke
// ---------------------------------------------------------------------------------------------

/// A keys file with comments, a blank line, CRLF lines and a key, as a person might keep it.
fn kept_by_hand(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("access.keys");
    let content = format!(
        "# Keys of the registry (reviewed like the rules)\n\n# team app\r\nkey hand-1 user=alice \
         created=2026-01-01T00:00:00Z expires=2099-01-01T00:00:00Z sha256={HASH}\r\n   # indented comment\n"
    )
    .into_bytes();
    fs::write(&path, &content).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    (path, content)
}

#[test]
fn create_prints_a_secret_once_and_appends_exactly_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (path, before) = kept_by_hand(dir.path());
    let secret = create(
        &path,
        "ci-bot",
        &[
            "--actions",
            "pull,push",
            "--on",
            "path =^ \"/v2/team-app/\"",
            "--description",
            "CI of \"team app\"",
        ],
    );
    assert!(is_secret(&secret), "{secret}");
    let after = fs::read(&path).unwrap();
    assert_eq!(&after[..before.len()], &before[..], "the lines before are untouched");
    let added = std::str::from_utf8(&after[before.len()..]).unwrap();
    assert_eq!(added.matches('\n').count(), 1, "one line: {added:?}");
    assert!(added.ends_with('\n'));
    let id = secret.strip_prefix("csk_").unwrap().rsplit_once('_').unwrap().0;
    assert!(added.starts_with(&format!("key {id} user=ci-bot created=")), "{added}");
    assert!(added.contains(" actions=pull,push on=(path =^ \"/v2/team-app/\") description=\"CI of \\\"team app\\\"\" "));
    assert!(
        added.trim_end().ends_with(&format!(" sha256={}", sha256_hex(&secret))),
        "the line holds the SHA-256 of the secret: {added}"
    );
    assert!(
        !String::from_utf8_lossy(&after).contains(&secret[4..]),
        "the secret is not stored"
    );
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);

    let keys = load(&path);
    assert_eq!(keys.len(), 2);
    let key = keys.get(id).unwrap();
    assert_eq!(key.owner, "ci-bot");
    assert_eq!(key.description.as_deref(), Some("CI of \"team app\""));
    let expires = match key.expires {
        csel_auth::access_keys::Expiry::At(when) => when,
        other => panic!("{other:?}"),
    };
    let days = expires.duration_since(key.created).unwrap().as_secs() / 86_400;
    assert_eq!(days, 90, "the default expiry is 90 days");

    // A second key is appended after the first, which stays as it was.
    let middle = fs::read(&path).unwrap();
    let other = create(&path, "robot", &["--id", "robot-1", "--expires", "never"]);
    assert!(other.starts_with("csk_robot-1_"), "{other}");
    assert_ne!(other, secret);
    let last = fs::read(&path).unwrap();
    assert_eq!(&last[..middle.len()], &middle[..]);
    assert_eq!(last[middle.len()..].iter().filter(|b| **b == b'\n').count(), 1);
}

#[test]
fn create_makes_a_missing_file_private_and_ends_an_unfinished_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.keys");
    create(&path, "ci", &[]);
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(load(&path).len(), 1);

    let unfinished = dir.path().join("unfinished.keys");
    fs::write(&unfinished, "# no line ending at the end").unwrap();
    create(&unfinished, "ci", &[]);
    let content = fs::read_to_string(&unfinished).unwrap();
    assert!(content.starts_with("# no line ending at the end\nkey "), "{content}");
    assert_eq!(load(&unfinished).len(), 1);
}

#[test]
fn create_with_bad_input_fails_clearly_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (path, before) = kept_by_hand(dir.path());
    let file = path_str(&path);
    let cases: &[(&[&str], &str)] = &[
        (
            &["--user", "ci", "--on", "path =^ \"/v2/x/\" and pth == \"y\""],
            "unknown variable `pth`",
        ),
        (&["--user", "ci", "--on", "path =^"], "expected a string after `=^`"),
        (&["--user", "ci", "--on", "path =~ \"(?=x)\""], "look-around"),
        (
            &["--user", "ci", "--on", "path == \"a\"\nor path == \"b\""],
            "on one line",
        ),
        (&["--user", "ci", "--actions", "pull,pussh"], "did you mean `push`?"),
        (&["--user", "anonymous"], "requests without credentials"),
        (&["--user", ""], "the user name is empty"),
        (&["--user", "ci", "--expires", "2020-01-01T00:00:00Z"], "already past"),
        (&["--user", "ci", "--expires", "soon"], "not a duration"),
        (&["--user", "ci", "--id", "hand-1"], "already has a key `hand-1`"),
        (&["--user", "ci", "--id", "a_b"], "no `_`"),
        (&["--user", "ci", "--description", "two\nlines"], "control characters"),
    ];
    for (args, wanted) in cases {
        let mut all = vec!["access-key", "create", "--file", file];
        all.extend_from_slice(args);
        let o = csel_auth(&all);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {out}");
        assert!(out.contains(wanted), "{args:?}: wanted `{wanted}` in:\n{out}");
        assert!(o.stdout.is_empty(), "{args:?}: no secret is printed: {out}");
        assert_eq!(fs::read(&path).unwrap(), before, "{args:?}: the file is unchanged");
    }
    // The expression's error points into the option's text.
    let o = csel_auth(&[
        "access-key",
        "create",
        "--file",
        file,
        "--user",
        "ci",
        "--on",
        "path =^ \"/v2/x/\" and pth == \"y\"",
    ]);
    assert!(text(&o).contains("--> --on:1:22"), "{}", text(&o));

    // Nothing is created for a refused key either.
    let missing = dir.path().join("missing.keys");
    let o = csel_auth(&[
        "access-key",
        "create",
        "--file",
        path_str(&missing),
        "--user",
        "ci",
        "--on",
        "(",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(!missing.exists());

    // A file with errors gets no new key: the service would not load it.
    let broken = dir.path().join("broken.keys");
    fs::write(&broken, "key k1 user=ci\n").unwrap();
    let o = csel_auth(&["access-key", "create", "--file", path_str(&broken), "--user", "ci"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("broken.keys:1:"), "{}", text(&o));
    assert!(text(&o).contains("fix them before adding a key"), "{}", text(&o));
    assert!(o.stdout.is_empty());
    assert_eq!(fs::read_to_string(&broken).unwrap(), "key k1 user=ci\n");
}

#[test]
fn list_shows_the_keys_without_secrets_or_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = kept_by_hand(dir.path());
    let secret = create(
        &path,
        "ci-bot",
        &["--id", "ci-1", "--actions", "pull", "--description", "CI of the app"],
    );
    fs::write(
        &path,
        format!(
            "{}key old-1 user=bob created=2020-01-01T00:00:00Z expires=2021-01-01T00:00:00Z sha256={HASH}\n",
            fs::read_to_string(&path).unwrap()
        ),
    )
    .unwrap();
    let o = csel_auth(&["access-key", "list", "--file", path_str(&path)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(!out.contains(&secret[4..]), "{out}");
    assert!(!out.contains(&sha256_hex(&secret)), "{out}");
    assert!(!out.contains(HASH), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    let words = |line: &str| line.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        words(lines[0]),
        [
            "ID",
            "USER",
            "CREATED",
            "EXPIRES",
            "STATE",
            "ACTIONS",
            "ON",
            "DESCRIPTION"
        ]
    );
    assert_eq!(
        words(lines[1]),
        [
            "hand-1",
            "alice",
            "2026-01-01T00:00:00Z",
            "2099-01-01T00:00:00Z",
            "active",
            "*",
            "*"
        ]
    );
    let ci = words(lines[2]);
    assert_eq!(
        (ci[0].as_str(), ci[1].as_str(), ci[4].as_str()),
        ("ci-1", "ci-bot", "active")
    );
    assert!(lines[2].ends_with("pull     *   CI of the app"), "{out}");
    assert_eq!(
        words(lines[3]),
        [
            "old-1",
            "bob",
            "2020-01-01T00:00:00Z",
            "2021-01-01T00:00:00Z",
            "expired",
            "*",
            "*"
        ]
    );
}

#[test]
fn revoke_removes_exactly_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = kept_by_hand(dir.path());
    let first = create(&path, "ci", &["--id", "first"]);
    let with_first = fs::read(&path).unwrap();
    create(&path, "ci", &["--id", "second"]);
    let o = csel_auth(&["access-key", "revoke", "--file", path_str(&path), "--id", "second"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("revoked key second (removed line 7 of"),
        "{}",
        text(&o)
    );
    assert_eq!(fs::read(&path).unwrap(), with_first, "every other byte stays");
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);

    // The line in the middle, between CRLF lines and comments.
    let o = csel_auth(&["access-key", "revoke", "--file", path_str(&path), "--id", "hand-1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let now = fs::read_to_string(&path).unwrap();
    let expected = String::from_utf8(with_first.clone()).unwrap().replace(
        &format!("key hand-1 user=alice created=2026-01-01T00:00:00Z expires=2099-01-01T00:00:00Z sha256={HASH}\r\n"),
        "",
    );
    assert_eq!(now, expected);
    assert!(
        now.starts_with("# Keys of the registry (reviewed like the rules)\n\n# team app\r\n   # indented comment\n")
    );
    assert_eq!(
        load(&path).keys().iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        ["first"]
    );
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["access.keys"], "no temporary file is left");

    // An unknown id changes nothing.
    let unchanged = fs::read(&path).unwrap();
    let o = csel_auth(&["access-key", "revoke", "--file", path_str(&path), "--id", "second"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("has no key `second`"), "{}", text(&o));
    assert_eq!(fs::read(&path).unwrap(), unchanged);
    assert!(matches!(
        load(&path).verify("ci", &first, SystemTime::now()),
        KeyCheck::Valid(_)
    ));
}

#[test]
fn concurrent_creations_each_add_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let (path, before) = kept_by_hand(dir.path());
    let children: Vec<_> = (0..8)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_csel-auth"))
                .args([
                    "access-key",
                    "create",
                    "--file",
                    path_str(&path),
                    "--user",
                    &format!("robot-{i}"),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let secrets: Vec<(String, String)> = children
        .into_iter()
        .enumerate()
        .map(|(i, child)| {
            let o = child.wait_with_output().unwrap();
            assert_eq!(o.status.code(), Some(0), "{}", text(&o));
            (
                format!("robot-{i}"),
                String::from_utf8(o.stdout).unwrap().trim().to_string(),
            )
        })
        .collect();
    let after = fs::read(&path).unwrap();
    assert_eq!(&after[..before.len()], &before[..]);
    let keys = load(&path);
    assert_eq!(keys.len(), 9);
    for (user, secret) in &secrets {
        assert!(matches!(keys.verify(user, secret, SystemTime::now()), KeyCheck::Valid(k) if k.owner == *user));
    }
}

// ---------------------------------------------------------------------------------------------
// check
// ---------------------------------------------------------------------------------------------

#[test]
fn check_warns_about_expired_and_endless_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.keys");
    fs::write(
        &path,
        format!("# keys\nkey old-1 user=bob created=2020-01-01T00:00:00Z expires=2021-01-01T00:00:00Z sha256={HASH}\n"),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    create(&path, "robot", &["--id", "forever", "--expires", "never"]);
    create(&path, "ci", &["--id", "fine"]);
    let o = csel_auth(&["check", "--access-keys", path_str(&path)]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let shown = path.display();
    assert!(
        out.contains(&format!(
            "{shown}: warning: line 2: key `old-1` of `bob` expired at 2021-01-01T00:00:00Z: it is refused"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{shown}: warning: line 3: key `forever` of `robot` never expires"
        )),
        "{out}"
    );
    assert!(!out.contains("`fine`"), "{out}");
    assert!(
        out.contains(&format!("{shown}: ok: 3 access keys (1 expired), 2 warnings")),
        "{out}"
    );

    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
    let out = text(&csel_auth(&["check", "--access-keys", path_str(&path)]));
    assert!(
        out.contains("can be written by its group or by others (mode 666)"),
        "{out}"
    );
}

#[test]
fn check_refuses_a_broken_keys_file_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.keys");
    let line = format!(
        "key k1 user=ci created=2026-11-29T05:00:00Z expires=never on=(path =^ \"/v2/\" and pth == \"x\") sha256={HASH}"
    );
    fs::write(&path, format!("# one bad key\n{line}\n")).unwrap();
    let o = csel_auth(&["check", "--access-keys", path_str(&path)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let column = line.find("pth").unwrap() + 1;
    let out = text(&o);
    assert!(out.contains(&format!("--> {}:2:{column}", path.display())), "{out}");
    assert!(out.contains("unknown variable `pth`"), "{out}");
    assert!(out.contains("did you mean `path`?"), "{out}");

    // Beside a rules file, and through the config file: the keys file fails the check.
    let o = csel_auth(&["check", "examples/registry.rules", "--access-keys", path_str(&path)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("registry.rules: ok"),
        "the rules are checked too: {}",
        text(&o)
    );
    let config = dir.path().join("csel-auth.toml");
    let rules = fs::canonicalize("examples/registry.rules").unwrap();
    fs::write(
        &config,
        format!(
            "rules = \"{}\"\n[access_keys]\nfile = \"access.keys\"\n",
            rules.display()
        ),
    )
    .unwrap();
    let o = csel_auth(&["check", "--config", path_str(&config)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("--> {}:2:{column}", path.display())),
        "{}",
        text(&o)
    );

    fs::write(&path, "# no keys\n").unwrap();
    let o = csel_auth(&["check", "--config", path_str(&config)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains(": ok: 0 access keys (0 expired)"), "{}", text(&o));
}

#[test]
fn serve_does_not_start_with_a_broken_keys_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.keys");
    fs::write(&path, "key k1 user=ci sha256=00\n").unwrap();
    let o = csel_auth(&[
        "serve",
        "--rules",
        "examples/registry.rules",
        "--listen",
        "127.0.0.1:0",
        "--access-keys",
        path_str(&path),
    ]);
    // Like a broken rules or htpasswd file: the service does not start (exit 1).
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains(&format!("--> {}:1:", path.display())), "{}", text(&o));
}

// ---------------------------------------------------------------------------------------------
// Verification, through the library, of keys the commands made
// ---------------------------------------------------------------------------------------------

#[test]
fn verification_of_keys_made_by_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.keys");
    let ci = create(&path, "ci-bot", &["--id", "ci-1", "--actions", "pull"]);
    let short = create(&path, "robot", &["--id", "short", "--expires", "1h"]);
    let gone = create(&path, "ci-bot", &["--id", "gone"]);
    let keys = load(&path);
    let now = SystemTime::now();

    // The right secret with its owner's name.
    assert_eq!(reason(keys.verify("ci-bot", &ci, now)), Ok("ci-1".to_string()));
    // A password is not a key: the caller asks the other sources.
    assert!(matches!(keys.verify("ci-bot", "ci-password", now), KeyCheck::NotAKey));
    // A wrong secret for a known id.
    let mut wrong = ci.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'x' { 'y' } else { 'x' });
    assert_eq!(reason(keys.verify("ci-bot", &wrong, now)), Err(Refusal::WrongSecret));
    // A's key with B's name.
    assert_eq!(reason(keys.verify("robot", &ci, now)), Err(Refusal::OtherOwner));
    assert_eq!(reason(keys.verify("alice", &ci, now)), Err(Refusal::OtherOwner));
    // Expired: checked against the time given, on every call.
    assert_eq!(reason(keys.verify("robot", &short, now)), Ok("short".to_string()));
    let later = now + Duration::from_secs(2 * 3600);
    assert_eq!(reason(keys.verify("robot", &short, later)), Err(Refusal::Expired));
    // An id no key has.
    let unknown = ci.replacen("csk_ci-1_", "csk_ci-2_", 1);
    assert_eq!(reason(keys.verify("ci-bot", &unknown, now)), Err(Refusal::UnknownId));
    // Revoked: gone once the file is loaded again.
    assert_eq!(reason(keys.verify("ci-bot", &gone, now)), Ok("gone".to_string()));
    let o = csel_auth(&["access-key", "revoke", "--file", path_str(&path), "--id", "gone"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let reloaded = load(&path);
    assert_eq!(reason(reloaded.verify("ci-bot", &gone, now)), Err(Refusal::UnknownId));
    assert_eq!(reason(reloaded.verify("ci-bot", &ci, now)), Ok("ci-1".to_string()));

    // The scope written by `create` is the one enforced.
    let key = reloaded.get("ci-1").unwrap();
    let facts = csel_auth::csel::Facts {
        format: "docker",
        path: "/v2/team/app/manifests/1",
        method: "PUT",
        user: Some("ci-bot"),
    };
    assert!(key.scope.allows(csel_auth::rules::Action::Read, &facts));
    assert!(!key.scope.allows(csel_auth::rules::Action::Edit, &facts));
}

// ---------------------------------------------------------------------------------------------
// Keys through the service: logins, scope, reload, tokens, metrics
// ---------------------------------------------------------------------------------------------

mod service {
    use std::path::Path;
    use std::time::Duration;

    use super::{create, csel_auth, path_str, text};
    use crate::kit::http::Response;
    use crate::kit::service::{CselAuth, Setup};
    use crate::kit::wait::{time_until, wait_for};
    use crate::kit::{basic, password};

    /// `ci-bot` exists only here (no htpasswd line): a robot whose keys are its only way in.
    const RULES: &str = r#"
selector app   = format == "docker" and path =^ "/v2/team-app/"
selector other = format == "docker" and path =^ "/v2/other/"
group builders = ci-bot
grant push on app to @builders
grant * on app to alice
grant * on other to alice
"#;
    const APP: &str = "/v2/team-app/web/manifests/1.0";
    const OTHER: &str = "/v2/other/web/manifests/1.0";
    /// A key's revocation or expiry is in force within this; generous for a loaded machine
    /// (the reload itself takes milliseconds).
    const DEADLINE: Duration = Duration::from_secs(10);

    fn start(keys: &Path) -> CselAuth {
        Setup::new(RULES).access_keys(keys).start()
    }

    fn status(service: &CselAuth, method: &str, uri: &str, user: &str, secret: &str) -> u16 {
        service.auth(method, uri, Some((user, secret))).status
    }

    fn revoke(keys: &Path, id: &str) {
        let o = csel_auth(&["access-key", "revoke", "--file", path_str(keys), "--id", id]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }

    #[test]
    fn a_key_logs_in_as_its_owner_until_it_is_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("access.keys");
        let secret = create(&keys, "alice", &["--id", "alice-ci"]);
        let service = start(&keys);

        let response = service.auth("PUT", APP, Some(("alice", &secret)));
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.header("x-auth-user"), Some("alice"));
        assert_eq!(status(&service, "GET", "/v2/", "alice", &secret), 200);
        // Counted, and named in the decision log, the secret never.
        let metrics = service.metrics_text();
        assert!(
            metrics.contains("csel_auth_access_key_logins_total{id=\"alice-ci\"} 2"),
            "{metrics}"
        );
        assert!(
            metrics.contains("csel_auth_reloads_total{file=\"access_keys\",result=\"ok\"}"),
            "{metrics}"
        );
        let log = service.wait_for_log("key=\"alice-ci\"", DEADLINE);
        assert!(!log.contains(&secret), "the secret is logged:\n{log}");

        revoke(&keys, "alice-ci");
        wait_for(DEADLINE, "the revoked key to stop logging in", || {
            (status(&service, "PUT", APP, "alice", &secret) == 401).then_some(())
        });
        // Refused, not handed to the password check: the password still works.
        assert_eq!(status(&service, "PUT", APP, "alice", &password("alice")), 200);
        let log = service.wait_for_log("reason=\"unknown_id\"", DEADLINE);
        assert!(!log.contains(&secret), "the secret is logged:\n{log}");
        assert_eq!(
            service.metric("csel_auth_reloads_total{file=\"access_keys\",result=\"ok\"}"),
            1.0
        );
    }

    #[test]
    fn sighup_reparses_the_keys_file() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("access.keys");
        create(&keys, "alice", &["--id", "alice-ci"]);
        let service = start(&keys);
        let reloads = || service.metric("csel_auth_reloads_total{file=\"access_keys\",result=\"ok\"}");
        assert_eq!(reloads(), 0.0);
        service.signal(crate::kit::process::Signal::SIGHUP);
        let reparsed = time_until(DEADLINE, || reloads() == 1.0);
        assert!(reparsed.is_some(), "SIGHUP did not reparse the keys file");
    }

    #[test]
    fn wrong_secrets_other_owners_and_expired_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("access.keys");
        let alices = create(&keys, "alice", &["--id", "alice-ci"]);
        let short = create(&keys, "alice", &["--id", "short", "--expires", "3s"]);
        let service = start(&keys);

        let mut wrong = alices.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == 'x' { 'y' } else { 'x' });
        assert_eq!(status(&service, "GET", APP, "alice", &wrong), 401);
        service.wait_for_log("reason=\"wrong_secret\"", DEADLINE);
        // Alice's key with bob's name (bob has a password; the key is not it).
        assert_eq!(status(&service, "GET", "/v2/", "bob", &alices), 401);
        service.wait_for_log("reason=\"other_owner\"", DEADLINE);
        // Not a password either: a key is never tried as one.
        assert_eq!(status(&service, "GET", APP, "alice", &alices), 200);

        assert_eq!(status(&service, "GET", APP, "alice", &short), 200);
        wait_for(DEADLINE, "the key to expire", || {
            (status(&service, "GET", APP, "alice", &short) == 401).then_some(())
        });
        service.wait_for_log("reason=\"expired\"", DEADLINE);
    }

    #[test]
    fn wrong_keys_are_throttled_like_wrong_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("access.keys");
        let alices = create(&keys, "alice", &["--id", "alice-ci"]);
        let service = start(&keys);
        let mut wrong = alices.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == 'x' { 'y' } else { 'x' });
        // A few failures are free (typos); the ones after them wait before their 401.
        for _ in 0..5 {
            assert_eq!(status(&service, "GET", APP, "alice", &wrong), 401);
        }
        assert!(
            service.metric("csel_auth_throttled_logins_total") >= 1.0,
            "{}",
            service.metrics_text()
        );
        // Without a bcrypt: a key is one SHA-256.
        assert_eq!(service.metric("csel_auth_bcrypt_checks_total"), 0.0);
        assert_eq!(status(&service, "GET", APP, "alice", &alices), 200);
        assert_eq!(service.metric("csel_auth_bcrypt_checks_total"), 0.0);
    }

    #[test]
    fn a_key_is_narrowed_to_its_scope() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("access.keys");
        let pull = create(&keys, "alice", &["--id", "pull-only", "--actions", "pull"]);
        let on_app = create(
            &keys,
            "alice",
            &["--id", "app-only", "--on", r#"path =^ "/v2/team-app/""#],
        );
        let service = start(&keys);

        // Alice can push both; her pull key cannot, and still logs in (docker login pings).
        assert_eq!(service.auth_user("PUT", APP, "alice").status, 200);
        assert_eq!(service.auth_user("PUT", OTHER, "alice").status, 200);
        assert_eq!(status(&service, "GET", "/v2/", "alice", &pull), 200);
        assert_eq!(status(&service, "GET", APP, "alice", &pull), 200);
        assert_eq!(status(&service, "PUT", APP, "alice", &pull), 403);
        assert_eq!(status(&service, "DELETE", APP, "alice", &pull), 403);
        service.wait_for_log("outside the scope of access key pull-only", DEADLINE);

        assert_eq!(status(&service, "PUT", APP, "alice", &on_app), 200);
        assert_eq!(status(&service, "GET", OTHER, "alice", &on_app), 403);
        assert_eq!(status(&service, "PUT", OTHER, "alice", &on_app), 403);
        // A blob mount reads its source: outside the key's repository, refused.
        let digest = format!("sha256:{}", "a".repeat(64));
        let mount = format!("/v2/team-app/web/blobs/uploads/?mount={digest}&from=other/web");
        assert_eq!(service.auth_user("POST", &mount, "alice").status, 200);
        assert_eq!(status(&service, "POST", &mount, "alice", &on_app), 403);
    }

    #[test]
    fn a_robot_only_in_the_rules_logs_in_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("access.keys");
        let robot = create(&keys, "ci-bot", &["--id", "ci-bot-push", "--actions", "push"]);
        let service = start(&keys);

        assert_eq!(status(&service, "GET", "/v2/", "ci-bot", &robot), 200);
        assert_eq!(status(&service, "PUT", APP, "ci-bot", &robot), 200);
        assert_eq!(status(&service, "PUT", OTHER, "ci-bot", &robot), 403);
        // No password logs it in.
        assert_eq!(status(&service, "GET", "/v2/", "ci-bot", "ci-bot-password"), 401);
    }

    fn get_token(service: &CselAuth, user: &str, secret: &str) -> Response {
        let authorization = basic(user, secret);
        service.request(
            "GET",
            "/token?service=test-registry&scope=repository:team-app/web:pull,push",
            &[("Authorization", &authorization)],
            b"",
        )
    }

    fn token_of(response: &Response) -> String {
        assert_eq!(response.status, 200, "{}", response.text());
        response.json()["token"].as_str().unwrap_or_default().to_string()
    }

    #[test]
    fn tokens_from_a_key_end_with_the_key_and_keep_its_scope() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("access.keys");
        let robot = create(&keys, "ci-bot", &["--id", "ci-bot-push", "--actions", "push"]);
        let pull = create(&keys, "alice", &["--id", "pull-only", "--actions", "pull"]);
        let service = Setup::new(RULES)
            .access_keys(&keys)
            .token_realm(dir.path().join("token.key"))
            .start();

        let token = token_of(&get_token(&service, "ci-bot", &robot));
        assert_eq!(service.auth_bearer("PUT", APP, &token).status, 200);
        assert_eq!(service.auth_bearer("GET", "/v2/", &token).status, 200);
        let outside = service.auth_bearer("PUT", OTHER, &token);
        assert_eq!(outside.status, 401);
        assert!(
            outside
                .header("www-authenticate")
                .is_some_and(|c| c.contains("insufficient_scope")),
            "{:?}",
            outside.header("www-authenticate")
        );
        // The password grant too.
        let form = format!("grant_type=password&service=test-registry&client_id=t&username=ci-bot&password={robot}");
        let granted = service.request(
            "POST",
            "/token",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            form.as_bytes(),
        );
        let posted = token_of(&granted);
        assert_eq!(service.auth_bearer("PUT", APP, &posted).status, 200);

        // The key's scope holds for its tokens: alice's pull key cannot push through one.
        let alices = token_of(&get_token(&service, "alice", &pull));
        assert_eq!(service.auth_bearer("GET", APP, &alices).status, 200);
        assert_eq!(service.auth_bearer("PUT", APP, &alices).status, 401);

        revoke(&keys, "ci-bot-push");
        let took = time_until(DEADLINE, || service.auth_bearer("PUT", APP, &token).status == 401);
        assert!(took.is_some(), "a revoked key's token still works after {DEADLINE:?}");
        let ended = service.auth_bearer("PUT", APP, &posted);
        assert_eq!(ended.status, 401);
        assert!(
            ended
                .header("www-authenticate")
                .is_some_and(|c| c.contains("invalid_token")),
            "{:?}",
            ended.header("www-authenticate")
        );
        assert_eq!(get_token(&service, "ci-bot", &robot).status, 401);
    }

    /// A key's refresh token (`--refresh-tokens`) lasts no longer than the key: refreshing
    /// works while the key is in force, not once the file gives the key to another user, nor
    /// once it is revoked; its access tokens end at the same moments.
    #[test]
    fn a_keys_refresh_token_ends_with_the_key_or_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("access.keys");
        let robot = create(&keys, "ci-bot", &["--id", "ci-bot-push", "--actions", "push"]);
        let service = Setup::new(RULES)
            .access_keys(&keys)
            .token_realm(dir.path().join("token.key"))
            .arg("--refresh-tokens")
            .start();
        let post = |form: String| {
            service.request(
                "POST",
                "/token",
                &[("Content-Type", "application/x-www-form-urlencoded")],
                form.as_bytes(),
            )
        };
        let offline = post(format!(
            "grant_type=password&service=test-registry&client_id=t&access_type=offline&username=ci-bot&password={robot}"
        ));
        let access = token_of(&offline);
        let refresh = offline.json()["refresh_token"].as_str().unwrap_or_default().to_string();
        assert!(!refresh.is_empty(), "{}", offline.text());
        let refresh_form = || {
            format!(
                "grant_type=refresh_token&refresh_token={refresh}&service=test-registry&client_id=t&\
                 scope=repository:team-app/web:pull,push"
            )
        };
        let renewed = token_of(&post(refresh_form()));
        assert_eq!(service.auth_bearer("PUT", APP, &renewed).status, 200);

        // The same key line, handed to another user (only its owner changed).
        let text = std::fs::read_to_string(&keys).unwrap();
        let moved = text.replace("user=ci-bot", "user=alice");
        assert_ne!(moved, text);
        crate::kit::files::write_and_rename(&keys, &moved);
        wait_for(DEADLINE, "the key's tokens to end with its owner", || {
            (service.auth_bearer("PUT", APP, &access).status == 401).then_some(())
        });
        assert_eq!(service.auth_bearer("PUT", APP, &renewed).status, 401);
        let refused = post(refresh_form());
        assert_eq!(refused.status, 401, "{}", refused.text());
        service.wait_for_log("access key ci-bot-push belongs to another user", DEADLINE);

        // Back to its owner, then revoked.
        crate::kit::files::write_and_rename(&keys, &text);
        wait_for(DEADLINE, "the key's owner to be back", || {
            (post(refresh_form()).status == 200).then_some(())
        });
        revoke(&keys, "ci-bot-push");
        wait_for(DEADLINE, "the revoked key's refresh token to end", || {
            (post(refresh_form()).status == 401).then_some(())
        });
        assert_eq!(service.auth_bearer("PUT", APP, &access).status, 401);
    }
}

#[test]
fn explain_shows_the_keys_part_of_the_decision() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("access.keys");
    let rules = dir.path().join("registry.rules");
    fs::write(
        &rules,
        "selector app = format == \"docker\" and path =^ \"/v2/team-app/\"\ngrant * on * to alice\n",
    )
    .unwrap();
    create(&keys, "alice", &["--id", "pull-only", "--actions", "pull"]);
    let explain = |method: &str| {
        csel_auth(&[
            "explain",
            "--rules",
            path_str(&rules),
            "--access-keys",
            path_str(&keys),
            "--key",
            "pull-only",
            "--user",
            "alice",
            method,
            "/v2/team-app/web/manifests/1",
        ])
    };
    let o = explain("PUT");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let shown = text(&o);
    assert!(shown.contains("decision: DENY (403)"), "{shown}");
    assert!(
        shown.contains("reason:   outside the scope of access key pull-only"),
        "{shown}"
    );
    assert!(shown.contains("key:      pull-only (actions=pull)"), "{shown}");
    assert!(shown.contains("✗ action in the key's actions"), "{shown}");
    let o = explain("GET");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("✓ action in the key's actions"), "{}", text(&o));

    // The same files named by a config file.
    let config = dir.path().join("csel-auth.toml");
    fs::write(
        &config,
        "rules = \"registry.rules\"\n[access_keys]\nfile = \"access.keys\"\n",
    )
    .unwrap();
    let o = csel_auth(&[
        "explain",
        "--config",
        path_str(&config),
        "--key",
        "pull-only",
        "--user",
        "alice",
        "PUT",
        "/v2/team-app/web/manifests/1",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("reason:   outside the scope of access key pull-only"),
        "{}",
        text(&o)
    );
    // A key without a keys file is an error, not an unscoped answer.
    let o = csel_auth(&[
        "explain",
        "--rules",
        path_str(&rules),
        "--key",
        "pull-only",
        "--user",
        "alice",
        "GET",
        "/v2/",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--key needs --access-keys"), "{}", text(&o));
}
