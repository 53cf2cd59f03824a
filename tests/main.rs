//! Every integration test of csel-auth, in one test binary: each module is a group, run alone
//! with a filter (`cargo test --test main -- reliability::`). What the groups share is in
//! [`kit`].

mod kit;

mod cli;
mod decisions;
mod e2e;
mod identity;
mod language;
mod ldap;
mod reliability;
mod request;
mod rules;
mod service;
mod token_realm;
