//! Who is asking: the htpasswd file ([`htpasswd`]), the `Authorization` header
//! ([`authorization`]), password checks with bcrypt ([`verifier`], with the cache of successful
//! logins in `login_cache`), the failed-login limits ([`throttle`]) and the LDAP directory
//! ([`ldap`]). Nothing here knows the rules: a source says who the user is, the rules decide.
//!
//! bcrypt is deliberately slow, and a `docker pull` of one image sends dozens of requests with
//! the same credentials, so successful checks are cached. The cache key is an HMAC (with a random
//! per-process key) of the user, the password and the htpasswd entry's hash: the password is
//! never stored, and editing an entry changes the key, which invalidates the cached success at
//! once. Unknown users are checked against a dummy hash of the file's usual cost so that they
//! take as long as a wrong password.
//!
//! bcrypt computations wait in a bounded queue for one of `max_concurrent_bcrypt` places. A check
//! whose requests all went away (nginx gave up and closed the connection) leaves the queue without
//! its bcrypt, and one still waiting at its deadline is answered without one, so a flood of
//! abandoned logins cannot delay real ones for long. Checks that would start a bcrypt pass the
//! [`LoginThrottle`]'s limits first; cached logins never do.

mod authorization;
#[cfg(test)]
mod fixtures;
mod htpasswd;
pub mod ldap;
pub(crate) mod login;
mod login_cache;
pub(crate) mod secret_keyed;
pub(crate) mod throttle;
mod verifier;

pub use authorization::{parse_authorization, AuthHeaderError, Credentials, MAX_AUTHORIZATION_LEN};
pub use htpasswd::{Htpasswd, HtpasswdError};
pub use verifier::Verifier;
pub(crate) use verifier::{Login, Overload, BCRYPT_QUEUE_DEADLINE, MAX_BCRYPT_QUEUE};

/// The longest user name, in bytes, that a login may name: a longer one is refused before
/// anything about it is stored or computed.
pub(crate) const MAX_USER_NAME_BYTES: usize = 256;
