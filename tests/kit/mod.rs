//! The test kit: what the integration tests share.
//!
//! * [`http`]: one HTTP/1.1 client, raw bytes in, parsed answers out, TCP or unix socket.
//! * [`service`]: the real `csel-auth serve` ([`service::Setup`] starts a
//!   [`service::CselAuth`]), and [`service::alone`] for tests that measure time.
//! * [`process`]: servers in their own process group, stopped on drop with their log tail
//!   printed on failure; client commands with a deadline.
//! * [`cases`]: the case files of `tests/data/`, each case named `file:line`.
//! * [`ports`], [`wait`], [`metrics`], [`files`].
//! * The stack: [`nginx`] (both versions), [`registry`], [`docker`], [`containers`] (skopeo and
//!   podman), [`images`], [`slapd`], and [`stack`], which puts nginx, the registry and csel-auth
//!   together.
//!
//! Environment: `CSEL_AUTH_BIN` (the binary under test), `CSEL_AUTH_FULL=1` (full-size
//! reliability runs), `CSEL_RELIABILITY_VERBOSE=1`, `CSEL_NGINX_126` and `CSEL_NGINX_DIR`,
//! `CSEL_E2E_KEEP_TMP=1`, `CI` (a missing nginx 1.26 fails instead of warning).

pub mod cases;
pub mod containers;
pub mod docker;
pub mod files;
pub mod http;
pub mod images;
pub mod jwks;
pub mod metrics;
pub mod nginx;
pub mod ports;
pub mod process;
pub mod registry;
pub mod service;
pub mod slapd;
pub mod stack;
pub mod tls;
pub mod wait;

use std::io::Write;
use std::sync::OnceLock;

use csel_auth::decision::{decide_and_answer, AccessRequest, Answer, Credential, Decision};
use csel_auth::rules::Rules;

pub use http::basic;

/// The rules most tests run on (the README's example).
pub const RULES: &str = r#"
selector library  = format == "docker" and path =^ "/v2/library/"
selector coolteam = format == "docker" and path =^ "/v2/coolteam/"
selector personal = format == "docker" and path =^ "/v2/${user}/"

group coolteam = alice, bob
group admins   = "admin-parente"

grant pull on library  to anonymous
grant push on coolteam to @coolteam
grant *    on personal to authenticated
grant *    on *        to @admins
"#;

/// The users of [`standard_htpasswd`].
pub const USERS: &[&str] = &["alice", "bob", "carol", "admin-parente", "dave"];

/// Every test user's password, as in examples/users.htpasswd: `<user>-password`.
pub fn password(user: &str) -> String {
    format!("{user}-password")
}

/// A bcrypt hash at cost 4 (the minimum: tests stay fast).
pub fn bcrypt_hash(password: &str) -> String {
    match bcrypt::hash(password, 4) {
        Ok(hash) => hash,
        Err(error) => panic!("bcrypt: {error}"),
    }
}

/// An htpasswd file for `users` at bcrypt `cost`, passwords `<user>-password`.
pub fn htpasswd(users: &[&str], cost: u32) -> String {
    users
        .iter()
        .map(|user| match bcrypt::hash(password(user), cost) {
            Ok(hash) => format!("{user}:{hash}\n"),
            Err(error) => panic!("bcrypt: {error}"),
        })
        .collect()
}

/// htpasswd text for [`USERS`] at cost 4, hashed once per test run.
pub fn standard_htpasswd() -> String {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| htpasswd(USERS, 4)).clone()
}

/// What the service decides and answers for `method uri` under `rules`, as `user` (`None`:
/// anonymous): in basic mode with Basic credentials for a user and none for anonymous, in token
/// mode with every subject holding a token. The service's own mapping.
pub fn answer(
    rules: &Rules,
    user: Option<&str>,
    token_mode: bool,
    method: &str,
    uri: &str,
    content_type: Option<&str>,
) -> (Decision, Answer) {
    let credential = match (token_mode, user) {
        (true, _) => Credential::Token,
        (false, Some(_)) => Credential::Basic,
        (false, None) => Credential::None,
    };
    let request = AccessRequest {
        method,
        uri,
        format: "docker",
        content_type,
    };
    decide_and_answer(rules, user, credential, token_mode, &request)
}

/// The status csel-auth must answer for this request under `rules` in basic mode.
pub fn expected_status(rules: &Rules, user: Option<&str>, method: &str, uri: &str, content_type: Option<&str>) -> u16 {
    answer(rules, user, false, method, uri, content_type).1.status()
}

/// `CSEL_AUTH_FULL=1` runs the full-size reliability tests (see the README); CI runs trimmed ones.
pub fn full() -> bool {
    std::env::var("CSEL_AUTH_FULL").is_ok_and(|v| v == "1")
}

/// `ci` normally, `full_size` with `CSEL_AUTH_FULL=1`.
pub fn scale<T>(ci: T, full_size: T) -> T {
    if full() {
        full_size
    } else {
        ci
    }
}

/// Prints a result line that shows in `cargo test` output even when the test passes (written to
/// the process's stderr directly, which the test harness does not capture).
pub fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// [`report`] only with `CSEL_RELIABILITY_VERBOSE=1` (every hostile case's answer).
pub fn verbose(line: &str) {
    if std::env::var("CSEL_RELIABILITY_VERBOSE").is_ok_and(|v| v == "1") {
        report(line);
    }
}
