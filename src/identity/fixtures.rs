//! Test fixtures shared by the identity modules' tests.

use std::sync::Arc;

use super::Htpasswd;

/// Written by `htpasswd -nbB -C 4 carol 's3cret:with colon'` (apache2-utils).
pub(super) const APACHE_CAROL: &str = "carol:$2y$04$DWsZRUDKbFKGJpHiB.x6ZurNFGhVgWC72ZapO7HbgaU/xFUrtB2nO";
pub(super) const CAROL_PASSWORD: &str = "s3cret:with colon";
/// Written by `htpasswd -nbB -C 5 dave 'pässwörd'` in a UTF-8 locale.
pub(super) const APACHE_DAVE: &str = "dave:$2y$05$Ewh2fHPm5E885YiZG91U7eLlgAeUdrJLacEiFuLAd8cSAiZRwutKG";
pub(super) const DAVE_PASSWORD: &str = "pässwörd";

pub(super) fn cost4(password: &str) -> String {
    match bcrypt::hash(password, 4) {
        Ok(hash) => hash,
        Err(error) => panic!("bcrypt::hash failed: {error}"),
    }
}

pub(super) fn htpasswd(text: &str) -> Arc<Htpasswd> {
    match Htpasswd::parse("test.htpasswd", text) {
        Ok(parsed) => Arc::new(parsed),
        Err(error) => panic!("{error}"),
    }
}

pub(super) fn parse_error(text: &str) -> String {
    match Htpasswd::parse("users.htpasswd", text) {
        Ok(parsed) => panic!("accepted {text:?}: {parsed:?}"),
        Err(error) => error.to_string(),
    }
}
