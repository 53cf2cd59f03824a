//! Hostile requests as data — `tests/data/hostile.txt` (path, header, credential and mount
//! tricks) and `tests/data/attacks.txt` — replayed against csel-auth directly, and through nginx
//! (the repository's `nginx/` files, on nginx 1.22 and 1.26, with csel-auth in basic and in
//! token mode) in front of a real CNCF distribution registry holding private blobs. Nothing private may ever come back: directly, every hostile request is a 401
//! or 403 (or not even HTTP); through nginx, none is a 2xx, no answer carries a private blob, and
//! csel-auth's metrics show it allowed none of them. Honest controls must pass both ways.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::common::{basic, exclusive, password, report, Conn, Setup, Subrequest};
use crate::e2e::harness;
use crate::e2e::stack::{Mode, Stack};

const HOSTILE: &str = include_str!("../data/hostile.txt");
const ATTACKS: &str = include_str!("../data/attacks.txt");
const RULES: &str = include_str!("../../examples/registry.rules");
const USERS: &str = include_str!("../../examples/users.htpasswd");

/// The blobs the nginx replay pushes (the private ones say SECRET), and where.
const BLOBS: [(&str, &str, &str); 3] = [
    (
        "PUBLIC_BLOB",
        "library/alpine",
        "csel-auth hostile corpus: a public layer\n",
    ),
    (
        "ALICE_BLOB",
        "alice/secret",
        "csel-auth hostile corpus: SECRET of alice\n",
    ),
    (
        "TEAM_BLOB",
        "coolteam/app",
        "csel-auth hostile corpus: SECRET of coolteam\n",
    ),
];
/// What no answer to a hostile request may contain.
const PRIVATE_MARK: &[u8] = b"SECRET";

fn digest(content: &str) -> String {
    let hash = Sha256::digest(content.as_bytes());
    format!("sha256:{}", hash.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn placeholders() -> HashMap<String, String> {
    BLOBS
        .iter()
        .map(|(name, _, content)| (name.to_string(), digest(content)))
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Deny,
    Allow,
    Misconfigured,
}

#[derive(Clone, Debug)]
struct Case {
    /// `hostile.txt:12` or `attacks.txt:40`.
    origin: String,
    expect: Expect,
    /// Whom a successful login makes of the request, for `X-Auth-User`.
    user: Option<String>,
    authorization: Option<Vec<u8>>,
    method: Vec<u8>,
    uri: Vec<u8>,
    client_headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// nginx's headers left out (direct replay only).
    removed: Vec<Vec<u8>>,
    body: Vec<u8>,
}

/// Expands `{TEXT*N}` and `{NAME}` placeholders, then the escapes `\s \t \r \n \xNN \\`.
fn expand(field: &str, names: &HashMap<String, String>) -> Vec<u8> {
    let mut text = String::new();
    let mut rest = field;
    while let Some(open) = rest.find('{') {
        text.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}').map(|i| open + i) else {
            break;
        };
        let inner = &rest[open + 1..close];
        match (names.get(inner), inner.rsplit_once('*')) {
            (Some(value), _) => text.push_str(value),
            (None, Some((piece, count))) if count.parse::<usize>().is_ok() => {
                text.push_str(&piece.repeat(count.parse().unwrap_or(0)));
            }
            _ => panic!("unknown placeholder {{{inner}}} in {field:?}"),
        }
        rest = &rest[close + 1..];
    }
    text.push_str(rest);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let (byte, used) = match bytes.get(i + 1) {
            Some(b's') => (b' ', 2),
            Some(b't') => (b'\t', 2),
            Some(b'r') => (b'\r', 2),
            Some(b'n') => (b'\n', 2),
            Some(b'\\') => (b'\\', 2),
            Some(b'x') => {
                let hex = std::str::from_utf8(&bytes[i + 2..(i + 4).min(bytes.len())]).unwrap_or("");
                let value = u8::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("bad \\x escape in {field:?}"));
                (value, 4)
            }
            _ => panic!("bad escape in {field:?}"),
        };
        out.push(byte);
        i += used;
    }
    out
}

fn parse_hostile(names: &HashMap<String, String>) -> Vec<Case> {
    let mut cases = Vec::new();
    for (index, line) in HOSTILE.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let origin = format!("hostile.txt:{}", index + 1);
        let fields: Vec<&str> = line.split(' ').collect();
        let [expect, auth, method, uri, options @ ..] = fields.as_slice() else {
            panic!("{origin}: expected EXPECT AUTH METHOD URI [OPTION...]");
        };
        let expect = match *expect {
            "deny" => Expect::Deny,
            "allow" => Expect::Allow,
            "misconfigured" => Expect::Misconfigured,
            other => panic!("{origin}: unknown expectation {other}"),
        };
        let (user, authorization) = match *auth {
            "-" => (None, None),
            raw if raw.starts_with("raw:") => (None, Some(expand(&raw["raw:".len()..], names))),
            user => (Some(user.to_string()), Some(basic(user, &password(user)).into_bytes())),
        };
        let mut case = Case {
            origin,
            expect,
            user,
            authorization,
            method: expand(method, names),
            uri: expand(uri, names),
            client_headers: Vec::new(),
            removed: Vec::new(),
            body: Vec::new(),
        };
        for option in options {
            if let Some(header) = option.strip_prefix('+') {
                let (name, value) = header
                    .split_once(':')
                    .unwrap_or_else(|| panic!("{}: {option}", case.origin));
                case.client_headers.push((expand(name, names), expand(value, names)));
            } else if let Some(name) = option.strip_prefix('-') {
                case.removed.push(expand(name, names));
            } else if let Some(body) = option.strip_prefix("body:") {
                case.body = expand(body, names);
            } else {
                panic!("{}: unknown option {option}", case.origin);
            }
        }
        cases.push(case);
    }
    cases
}

/// `attacks.txt`: `USER METHOD URI [CONTENT-TYPE]`, every one to be denied.
fn parse_attacks() -> Vec<Case> {
    ATTACKS
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.trim().starts_with('#'))
        .map(|(index, line)| {
            let fields: Vec<&str> = line.split(' ').collect();
            let (user, method, uri) = (fields[0], fields[1], fields[2]);
            let user = Some(user).filter(|u| *u != "anonymous");
            Case {
                origin: format!("attacks.txt:{}", index + 1),
                expect: Expect::Deny,
                user: user.map(str::to_string),
                authorization: user.map(|u| basic(u, &password(u)).into_bytes()),
                method: method.as_bytes().to_vec(),
                uri: uri.as_bytes().to_vec(),
                client_headers: fields
                    .get(3)
                    .map(|t| vec![(b"Content-Type".to_vec(), t.as_bytes().to_vec())])
                    .unwrap_or_default(),
                removed: Vec::new(),
                body: Vec::new(),
            }
        })
        .collect()
}

fn all_cases(names: &HashMap<String, String>) -> Vec<Case> {
    let mut cases = parse_hostile(names);
    let counted = |e: Expect| cases.iter().filter(|c| c.expect == e).count();
    assert!(
        counted(Expect::Deny) >= 150 && counted(Expect::Allow) >= 5,
        "hostile.txt lost its cases"
    );
    cases.extend(parse_attacks());
    cases
}

/// A distinct loopback client address per case, so that the failed-login slow-down per address
/// (which is meant to slow down exactly such a corpus) does not make the replay slow.
fn client_address(index: usize) -> [u8; 4] {
    [127, 0, (index / 250 % 250) as u8, (2 + index % 250) as u8]
}

/// The subrequest nginx's snippet would send for this case, plus what a proxy that passes
/// client headers on would add.
fn subrequest(case: &Case, index: usize) -> Vec<u8> {
    let [a, b, c, d] = client_address(index);
    let mut request = Subrequest::raw(&case.method, &case.uri)
        .without(b"X-Real-IP")
        .header(b"X-Real-IP", format!("{a}.{b}.{c}.{d}").as_bytes());
    if let Some(value) = &case.authorization {
        request = request.header(b"Authorization", value);
    }
    let mut content_type_set = false;
    for (name, value) in &case.client_headers {
        if name.eq_ignore_ascii_case(b"Content-Type") {
            if !content_type_set {
                request = request.header(b"X-Original-Content-Type", value);
                content_type_set = true;
            }
        } else {
            request = request.header(name, value);
        }
    }
    for name in &case.removed {
        request = request.without(name);
    }
    request.bytes()
}

#[test]
fn hostile_requests_straight_to_csel_auth_are_denied() {
    let names = placeholders();
    let cases = all_cases(&names);
    let service = Setup::new(RULES, USERS).start();
    let mut failures = Vec::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (index, case) in cases.iter().enumerate() {
        let answer = Conn::connect(service.addr).and_then(|mut c| c.send(&subrequest(case, index)));
        let shown = answer
            .as_ref()
            .map_or_else(|e| format!("closed ({e})"), |r| r.status.to_string());
        *counts.entry(shown.chars().take(3).collect()).or_default() += 1;
        let right = match (case.expect, &answer) {
            (Expect::Allow, Ok(r)) => {
                r.status == 200 && r.header("X-Auth-User") == Some(case.user.as_deref().unwrap_or("anonymous"))
            }
            (Expect::Misconfigured, Ok(r)) => r.status == 500,
            (Expect::Deny, Ok(r)) => matches!(r.status, 401 | 403 | 400 | 431),
            // Not even HTTP: the connection is closed, nothing is allowed.
            (Expect::Deny, Err(_)) => true,
            (_, Err(_)) => false,
        };
        verbose(&format!("{} {:?} direct: {shown}", case.origin, case.expect));
        if !right {
            failures.push(format!("{} ({:?}): {shown}", case.origin, case.expect));
        }
    }
    let mut statuses: Vec<_> = counts.into_iter().collect();
    statuses.sort();
    report(&format!(
        "reliability: hostile corpus straight to csel-auth: {} requests, {} wrong; answers {statuses:?}",
        cases.len(),
        failures.len()
    ));
    assert!(failures.is_empty(), "wrong answers:\n{}", failures.join("\n"));
}

/// Sends `bytes` to nginx from the loopback address `from` and reads the whole answer (the
/// request says `Connection: close`).
fn send_from(from: [u8; 4], to: SocketAddr, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((from, 0)))?;
        socket.connect(to).await?.into_std()
    })?;
    let mut stream = stream;
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(bytes)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(answer)
}

/// The request the client sends to nginx.
fn client_request(case: &Case, host: SocketAddr) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&case.method);
    out.push(b' ');
    out.extend_from_slice(&case.uri);
    out.extend_from_slice(format!(" HTTP/1.1\r\nHost: {host}\r\n").as_bytes());
    let mut header = |name: &[u8], value: &[u8]| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    if let Some(value) = &case.authorization {
        header(b"Authorization", value);
    }
    for (name, value) in &case.client_headers {
        header(name, value);
    }
    if !case.body.is_empty() || matches!(case.method.as_slice(), b"POST" | b"PUT" | b"PATCH") {
        header(b"Content-Length", case.body.len().to_string().as_bytes());
    }
    header(b"Connection", b"close");
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&case.body);
    out
}

fn status_of(answer: &[u8]) -> u16 {
    answer
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Through nginx, in basic and in token mode, on every nginx version the tests run on (1.22 and
/// 1.26: nginx 1.23 changed how repeated headers reach `$content_type`). Each combination gets a
/// fresh registry, csel-auth and nginx, and prints its own summary line.
#[test]
fn hostile_requests_through_nginx_and_a_registry_return_nothing_private() {
    let _turn = exclusive();
    let names = placeholders();
    let cases = all_cases(&names);
    let binaries = match harness::nginx_binaries() {
        Ok(binaries) => binaries,
        Err(error) => panic!("{error:#}"),
    };
    let mut failed = Vec::new();
    for nginx in &binaries {
        for mode in [Mode::Basic, Mode::Token] {
            report(&format!(
                "reliability: hostile corpus through nginx, {mode} mode, nginx -v: {} ({})",
                nginx.version,
                nginx.path.display()
            ));
            if let Err(error) = replay_through_nginx(nginx, mode, &cases, &names) {
                failed.push(format!("=== {} {mode} mode:\n{error:#}", nginx.version));
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// The `Authorization` a case sends in token mode: a user's Basic credentials become a token
/// the realm issued to that user, and no credentials an anonymous token (what docker sends);
/// hostile raw values stay as written. Tokens are fetched again after a minute, well within
/// their lifetime.
struct Tokens<'a> {
    stack: &'a Stack,
    issued: HashMap<Option<String>, (Instant, String)>,
}

impl Tokens<'_> {
    fn authorization(&mut self, case: &Case) -> anyhow::Result<Option<Vec<u8>>> {
        if case.authorization.is_some() && case.user.is_none() {
            return Ok(case.authorization.clone());
        }
        let fresh = self
            .issued
            .get(&case.user)
            .filter(|(at, _)| at.elapsed() < Duration::from_secs(60))
            .map(|(_, token)| token.clone());
        let token = match fresh {
            Some(token) => token,
            None => {
                let token = self
                    .stack
                    .authorization(case.user.as_deref())?
                    .ok_or_else(|| anyhow::anyhow!("no token for {:?}", case.user))?;
                self.issued.insert(case.user.clone(), (Instant::now(), token.clone()));
                token
            }
        };
        Ok(Some(token.into_bytes()))
    }
}

fn replay_through_nginx(
    nginx: &harness::NginxBinary,
    mode: Mode,
    cases: &[Case],
    names: &HashMap<String, String>,
) -> anyhow::Result<()> {
    let stack = Stack::start_on(nginx, mode, RULES)?;
    for (name, repository, content) in BLOBS {
        let pushed = stack.registry.push_blob(repository, content.as_bytes())?;
        anyhow::ensure!(pushed == names[name], "{name}: pushed {pushed}");
    }
    let allowed = || -> anyhow::Result<f64> {
        let metrics = stack.auth.request("GET", "/metrics", &[], b"")?;
        Ok(super::common::parse_metrics(&metrics.body_text())
            .get("csel_auth_decisions_total{outcome=\"allowed\"}")
            .copied()
            .unwrap_or(0.0))
    };
    let mut tokens = Tokens {
        stack: &stack,
        issued: HashMap::new(),
    };
    let address = stack.nginx.addr();
    let mut failures = Vec::new();
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    let mut replayed = 0;
    for (index, case) in cases.iter().enumerate() {
        // nginx always sets its headers; an absolute-form target reaches csel-auth as the
        // origin-form path nginx made of it, decided like any other (attacks.txt has one
        // for the library, which is public).
        let absolute = case.uri.starts_with(b"http://") && case.origin.starts_with("attacks");
        if case.expect == Expect::Misconfigured || absolute {
            continue;
        }
        let mut case = case.clone();
        let mut expect = case.expect;
        if mode == Mode::Token {
            // A control whose raw credentials carry no token is challenged in token mode.
            if expect == Expect::Allow && case.user.is_none() && case.authorization.is_some() {
                expect = Expect::Deny;
            }
            case.authorization = tokens.authorization(&case)?;
        }
        replayed += 1;
        let before = allowed()?;
        let answer = send_from(client_address(index), address, &client_request(&case, address))?;
        let after = allowed()?;
        let status = status_of(&answer);
        *statuses.entry(status).or_default() += 1;
        let problem = match expect {
            Expect::Allow if !(200..300).contains(&status) => Some(format!("control answered {status}")),
            Expect::Allow if after != before + 1.0 => Some("control not allowed by csel-auth".to_string()),
            Expect::Deny if (200..300).contains(&status) => Some(format!("answered {status}")),
            Expect::Deny if after != before => Some(format!("csel-auth allowed it (answer {status})")),
            Expect::Deny if contains(&answer, PRIVATE_MARK) => Some("private content in the answer".into()),
            _ => None,
        };
        verbose(&format!(
            "{} {expect:?} via {} {mode}: {status}",
            case.origin, nginx.version
        ));
        if let Some(problem) = problem {
            failures.push(format!("{}: {problem}", case.origin));
        }
    }
    // No mount trick copied a private blob into a repository its reader may see.
    for (repository, blob) in [
        ("coolteam/app", "ALICE_BLOB"),
        ("library/alpine", "ALICE_BLOB"),
        ("library/alpine", "TEAM_BLOB"),
        ("carol/x", "ALICE_BLOB"),
    ] {
        let found = stack.registry.get(&format!("/v2/{repository}/blobs/{}", names[blob]))?;
        if found.status != 404 {
            failures.push(format!("{blob} is readable in {repository}: {}", found.status));
        }
    }
    let mut statuses: Vec<_> = statuses.into_iter().collect();
    statuses.sort();
    report(&format!(
        "reliability: hostile corpus through {} and the registry, {mode} mode: {replayed} requests, {} wrong; \
         answers {statuses:?}",
        nginx.version,
        failures.len()
    ));
    anyhow::ensure!(
        failures.is_empty(),
        "through nginx:\n{}\n--- csel-auth log (tail) ---\n{}",
        failures.join("\n"),
        tail(&stack.auth.log(), 30)
    );
    Ok(())
}

/// `CSEL_RELIABILITY_VERBOSE=1` prints every case's answer.
fn verbose(line: &str) {
    if std::env::var("CSEL_RELIABILITY_VERBOSE").is_ok_and(|v| v == "1") {
        report(line);
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
