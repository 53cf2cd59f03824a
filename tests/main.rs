//! Every integration test of csel-auth, in one test binary.

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
