//! Hostile requests as data — `tests/data/hostile.txt` (path, header, credential and mount
//! tricks) and `tests/data/attacks.txt` — replayed against csel-auth directly, and through nginx
//! (the repository's `nginx/` files, on nginx 1.22 and 1.26, with csel-auth in basic and in
//! token mode) in front of a real CNCF distribution registry holding private blobs. Nothing private may ever come back: directly, every hostile request is a 401
//! or 403 (or not even HTTP); through nginx, none is a 2xx, no answer carries a private blob, and
//! csel-auth's metrics show it allowed none of them — except `GET /v2/_catalog` itself, which
//! csel-auth answers through nginx with exactly the repositories the caller may read. Honest
//! controls must pass both ways.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::kit::cases::{attacks, expand, unescape, CaseFile};
use crate::kit::http::{Conn, Request};
use crate::kit::metrics::parse_metrics;
use crate::kit::nginx::{nginx_binaries, NginxBinary};
use crate::kit::process::tail;
use crate::kit::service::alone;
use crate::kit::stack::{Mode, Stack};
use crate::kit::{basic, password, report, verbose};

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

/// A field of hostile.txt: `{TEXT*N}` and `{NAME}` placeholders, then the escapes
/// `\s \t \r \n \xNN \\`.
fn field(case: &str, field: &str, names: &HashMap<String, String>) -> Vec<u8> {
    match expand(field, names).and_then(|text| unescape(&text)) {
        Ok(bytes) => bytes,
        Err(why) => panic!("{case}: {why}"),
    }
}

fn parse_hostile(names: &HashMap<String, String>) -> Vec<Case> {
    let file = CaseFile::read("hostile.txt");
    let mut cases = Vec::new();
    for line in file.cases() {
        let origin = line.origin.clone();
        let expand = |text: &str| field(&origin, text, names);
        let fields: Vec<&str> = line.line.trim().split(' ').collect();
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
            raw if raw.starts_with("raw:") => (None, Some(expand(&raw["raw:".len()..]))),
            user => (Some(user.to_string()), Some(basic(user, &password(user)).into_bytes())),
        };
        let mut case = Case {
            origin: origin.clone(),
            expect,
            user,
            authorization,
            method: expand(method),
            uri: expand(uri),
            client_headers: Vec::new(),
            removed: Vec::new(),
            body: Vec::new(),
        };
        for option in options {
            if let Some(header) = option.strip_prefix('+') {
                let (name, value) = header.split_once(':').unwrap_or_else(|| panic!("{origin}: {option}"));
                case.client_headers.push((expand(name), expand(value)));
            } else if let Some(name) = option.strip_prefix('-') {
                case.removed.push(expand(name));
            } else if let Some(body) = option.strip_prefix("body:") {
                case.body = expand(body);
            } else {
                panic!("{origin}: unknown option {option}");
            }
        }
        cases.push(case);
    }
    cases
}

/// `attacks.txt`: every one to be denied.
fn parse_attacks() -> Vec<Case> {
    attacks()
        .into_iter()
        .map(|attack| Case {
            origin: attack.origin,
            expect: Expect::Deny,
            authorization: attack.user.as_deref().map(|u| basic(u, &password(u)).into_bytes()),
            user: attack.user,
            method: attack.method.into_bytes(),
            uri: attack.uri.into_bytes(),
            client_headers: attack
                .content_type
                .map(|t| vec![(b"Content-Type".to_vec(), t.into_bytes())])
                .unwrap_or_default(),
            removed: Vec::new(),
            body: Vec::new(),
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
    let mut request = Request::subrequest_raw(&case.method, &case.uri)
        .with_nginx_headers()
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
    let service = super::setup(RULES, USERS).start();
    let mut failures = Vec::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (index, case) in cases.iter().enumerate() {
        let answer = Conn::tcp(service.addr()).and_then(|mut c| c.send(&subrequest(case, index)));
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

/// The request the client sends to nginx (`Connection: close`).
fn client_request(case: &Case, host: SocketAddr) -> Vec<u8> {
    let mut request = Request::raw(&case.method, &case.uri).host(&host.to_string());
    if let Some(value) = &case.authorization {
        request = request.header("Authorization", value);
    }
    for (name, value) in &case.client_headers {
        request = request.header(name, value);
    }
    request.header("Connection", "close").body(&case.body).bytes()
}

/// What nginx answered `request` sent from the loopback address `from`: the status, whether
/// the answer (head or body) shows private content, and the body; status 0 when no whole answer
/// came.
fn replay(from: [u8; 4], to: SocketAddr, request: &[u8]) -> std::io::Result<(u16, bool, Vec<u8>)> {
    let mut connection = Conn::tcp_from(from, to)?;
    Ok(match connection.send(request) {
        Ok(response) => {
            let head = format!("{:?}", response.headers);
            let private = contains(&response.body, PRIVATE_MARK) || contains(head.as_bytes(), PRIVATE_MARK);
            (response.status, private, response.body)
        }
        Err(_) => (0, false, Vec::new()),
    })
}

/// `GET /v2/_catalog` exactly (any query): csel-auth answers it through nginx with the
/// repositories the caller may read (tests/e2e/catalog.rs), so it is no longer a denial; the
/// list must hold nothing the caller may not read.
fn is_catalog(case: &Case) -> bool {
    case.method == b"GET" && case.uri.split(|b| *b == b'?').next() == Some(&b"/v2/_catalog"[..])
}

/// The list `user` must get from the repositories of [`BLOBS`] under examples/registry.rules.
fn catalog_view(user: Option<&str>) -> Option<Vec<&'static str>> {
    match user {
        None | Some("carol") | Some("dave") => Some(vec!["library/alpine"]),
        Some("alice") => Some(vec!["alice/secret", "coolteam/app", "library/alpine"]),
        Some("bob") => Some(vec!["coolteam/app", "library/alpine"]),
        _ => None,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Through nginx, in basic and in token mode, on every nginx version the tests run on (1.22 and
/// 1.26: nginx 1.23 changed how repeated headers reach `$content_type`). Each combination gets a
/// fresh registry, csel-auth and nginx, and prints its own summary line.
#[test]
fn hostile_requests_through_nginx_and_a_registry_return_nothing_private() {
    let _turn = alone();
    let names = placeholders();
    let cases = all_cases(&names);
    let binaries = match nginx_binaries() {
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
    nginx: &NginxBinary,
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
        let metrics = stack.auth.endpoint().get("/metrics")?;
        Ok(parse_metrics(&metrics.text())
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
        // Anonymous, or a user's own credentials: not a raw hostile Authorization value.
        let honest_catalog = is_catalog(&case) && case.authorization.is_some() == case.user.is_some();
        if mode == Mode::Token {
            // A control whose raw credentials carry no token is challenged in token mode.
            if expect == Expect::Allow && case.user.is_none() && case.authorization.is_some() {
                expect = Expect::Deny;
            }
            case.authorization = tokens.authorization(&case)?;
        }
        replayed += 1;
        let before = allowed()?;
        let (status, private, body) = replay(client_address(index), address, &client_request(&case, address))?;
        let after = allowed()?;
        *statuses.entry(status).or_default() += 1;
        if honest_catalog {
            let listed = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|json| serde_json::from_value::<Vec<String>>(json["repositories"].clone()).ok());
            let expected = catalog_view(case.user.as_deref());
            let same = match (&listed, &expected) {
                (Some(listed), Some(expected)) => listed.iter().map(String::as_str).eq(expected.iter().copied()),
                _ => false,
            };
            if status != 200 || !same || private {
                failures.push(format!(
                    "{}: catalog answered {status} {listed:?}, expected {expected:?}",
                    case.origin
                ));
            }
            continue;
        }
        let problem = match expect {
            Expect::Allow if !(200..300).contains(&status) => Some(format!("control answered {status}")),
            Expect::Allow if after != before + 1.0 => Some("control not allowed by csel-auth".to_string()),
            Expect::Deny if (200..300).contains(&status) => Some(format!("answered {status}")),
            Expect::Deny if after != before => Some(format!("csel-auth allowed it (answer {status})")),
            Expect::Deny if private => Some("private content in the answer".into()),
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
