//! csel-auth: answers nginx `auth_request` subrequests for container
//! registries by evaluating Nexus-style content selectors.
//!
//! Dependencies point one way: `csel` (the expression language) ← `rules`
//! (the rules file) ← `decision` ← `service`. The language knows nothing of
//! HTTP; the service knows nothing of pest.

pub mod cli;
pub mod config;
pub mod csel;
pub mod decision;
pub mod diagnostic;
mod grammar;
pub mod identity;
pub mod ldap;
pub mod metrics;
pub mod oidc;
pub mod reload;
pub mod request;
pub mod rules;
pub mod service;
pub mod throttle;
pub mod token;

/// The registry's catalog lists every repository name: only a grant whose
/// target names it explicitly reaches it (`*` does not).
pub const CATALOG_PATH: &str = "/v2/_catalog";
