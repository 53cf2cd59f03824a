//! csel-auth fails closed under load, faults and hostile input (issue 8).
//!
//! * `reload`: the rules file rewritten 100 times in every way while load runs; every answer
//!   checked against the versions before and after.
//! * `faults`: unreadable, missing, deleted, huge and pathological files; slow clients;
//!   10k concurrent connections.
//! * `hostile`: the corpus `tests/data/hostile.txt` (and `attacks.txt`) replayed against
//!   csel-auth directly and through nginx (1.22 and 1.26, basic and token mode) in front of a
//!   real registry.
//! * `fuzz`: the fuzz targets' invariants (`fuzz/checks.rs`) under proptest.
//! * `timing`: unknown users and wrong passwords cost the same.
//!
//! CI runs trimmed sizes; `CSEL_AUTH_FULL=1` runs the full-size versions (README, "Reliability").

mod faults;
mod fuzz;
mod hostile;
mod reload;
mod timing;

use crate::kit::service::Setup;

/// The service the reliability tests run: `rules` and `htpasswd` in a temporary directory, and
/// no log line per decision (it would make the log the bottleneck of a load test).
fn setup(rules: &str, htpasswd: &str) -> Setup {
    Setup::with_users(rules, htpasswd)
        .arg("--log")
        .arg("csel_auth::decision=warn,info")
}
