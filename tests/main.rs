//! Every integration test of csel-auth, in one test binary.

mod kit;

mod cli;
mod decisions;
mod e2e;
mod language;
mod ldap;
mod reliability;
mod rules;
mod service;
mod token_realm;
