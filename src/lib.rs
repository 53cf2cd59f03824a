//! csel-auth: answers nginx `auth_request` subrequests for container
//! registries by evaluating Nexus-style content selectors.
//!
//! Where each concept lives:
//!
//! | concept | module |
//! |---|---|
//! | the command line (`serve`, `check`, `explain`, `test`, `eval`) | [`cli`] |
//! | the config file | [`config`] |
//! | the HTTP service: routing, `/auth`, `/token`, the listener | [`service`] |
//! | one request decided: allow, 401 or 403, and why | [`decision`] |
//! | the request target made canonical; docker routes | [`request`] |
//! | the rules file: selectors, groups, grants, warnings | [`rules`] |
//! | the expression language (CSEL) | [`csel`] |
//! | errors and warnings pointing into a source text | [`diagnostic`] |
//! | who is asking: htpasswd, `Authorization`, bcrypt, failed-login limits, LDAP | [`identity`] |
//! | the docker token realm: key, scopes, JWTs, challenges | [`token`] |
//! | watching and reloading the rules and htpasswd files | [`reload`] |
//! | counters and `/metrics` | [`metrics`] |
//!
//! A request's path from `main`: [`cli::run`] → `serve` → [`service::run`] →
//! `service::auth` → [`decision::decide_and_answer`].
//!
//! Dependencies point one way: `csel` (the expression language) ← `rules`
//! (the rules file) ← `decision` (which also knows `request`) ← `service`.
//! The language knows nothing of HTTP; identity sources know nothing of the
//! rules; only `csel`, `rules` and `grammar` know pest; the service knows
//! everything.
//!
//! Only what the integration tests, benches and fuzz targets use is `pub`;
//! everything else is `pub(crate)`, which `unreachable_pub` keeps so.

// In the library only: the integration tests and benches are crates of their own whose shared
// modules are `pub` by necessity and whose helpers unwrap freely.
#![warn(unreachable_pub)]
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod access_keys;
pub mod audit;
pub mod catalog;
/// The `/auth` answer without sockets, for tests.
#[doc(hidden)]
pub use service::in_process;
pub mod cli;
pub mod config;
pub mod csel;
pub mod decision;
pub mod diagnostic;
mod files;
mod grammar;
pub mod identity;
/// The LDAP identity source, at its historical path.
pub use identity::ldap;
pub(crate) mod metrics;
pub mod oidc;
mod outbound;
mod percent;
pub mod registry;
pub(crate) mod reload;
pub mod request;
pub mod rules;
pub(crate) mod service;
pub mod token;

/// The registry's catalog lists every repository name: only a grant whose
/// target names it explicitly reaches it (`*` does not).
pub(crate) const CATALOG_PATH: &str = "/v2/_catalog";
