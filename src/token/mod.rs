//! Docker token realm core (docs/token-realm.md): the signing key ([`key`]),
//! scopes ([`scope`]), issuing and verifying tokens ([`jwt`]), the cache of
//! verified tokens ([`cache`]), challenges and error bodies ([`challenge`]) and
//! token endpoint request parsing ([`endpoint`]). No HTTP server code lives
//! here: the `/token` endpoint itself is `service::token_endpoint`.
//!
//! Decisions (documented here because callers rely on them):
//!
//! * Tokens are compact JWTs, HS256, header exactly `{"alg":"HS256","typ":"JWT"}`.
//!   A header naming any other algorithm, carrying key material (`jwk`, `jku`,
//!   `kid`, `x5c`, `x5u`, `x5t`) or any other field is rejected before the
//!   signature is even looked at.
//! * Access and refresh tokens are signed with two different keys derived from
//!   the key file (HMAC-SHA256 of the file key with a fixed label), and carry a
//!   `typ` claim (`"access"` / `"refresh"`). A token of one kind can therefore
//!   never verify as the other, even if a claim check were lost.
//! * Anonymous access tokens have `sub: ""`. No refresh token is ever issued for
//!   an anonymous identity (nothing to refresh), and a refresh token with an
//!   empty subject is rejected. `Identity { user: Some("") }` is treated as
//!   anonymous.
//! * Claims are `iss` and `aud` (both the configured service), `sub`, `exp`,
//!   `nbf`, `iat`, `jti`, `typ`, `access` (distribution's `{type,name,actions}`
//!   list), and for users `bnd`, a fingerprint of the password entry the token
//!   was issued against (the caller refuses the token once the entry changed). Unknown claims are rejected, so an older replica never ignores a
//!   restriction a newer one added. A token whose lifetime (`exp - nbf`) exceeds
//!   the currently configured TTL is rejected, so shortening a TTL takes effect
//!   for tokens already issued. Clock leeway is [`CLOCK_LEEWAY`].
//! * The `access` claim is informational: every request is decided by the
//!   current rules. It is trimmed to keep every token under
//!   [`MAX_TOKEN_LEN`] (nginx's default header buffer is 8 KiB).
//! * Token endpoint parameters: `scope` may repeat (each value may hold several
//!   space-separated scopes); every other known parameter given twice is an
//!   error (ambiguous input fails closed); unknown parameters are ignored, as
//!   clients send extras. Empty `service`, `account`, `client_id` count as
//!   absent (Go's `FormValue` semantics, which clients are written against).
//! * Error bodies: [`error_json`] gives the distribution shape, which the docker
//!   client parses on GET and POST failures. [`oauth_error_json`] gives one body
//!   holding both the OAuth2 (RFC 6749 5.2) fields and the distribution
//!   `errors` list, for POST /token failures.

mod cache;
mod challenge;
mod endpoint;
mod jwt;
mod key;
mod scope;
#[cfg(test)]
mod tests;

use std::time::Duration;

use hmac::Hmac;
use sha2::Sha256;

pub(crate) use cache::{CachedAccess, VerifiedTokenCache};
pub(crate) use challenge::{challenge, error_json, oauth_error_json};
pub(crate) use endpoint::{parse_token_get, parse_token_post, TokenRequest, TokenRequestError, MAX_TOKEN_REQUEST_LEN};
pub(crate) use jwt::token_response_json;
pub use jwt::{issue, issue_federated, verify, Federation, IssuedToken, TokenError, TokenKind, VerifiedToken};
pub use key::{TokenKey, TokenKeyError};
pub(crate) use scope::format_scopes;
pub use scope::{parse_scopes, Scope};

type HmacSha256 = Hmac<Sha256>;

/// Longest token [`verify`] will look at.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Allowed clock difference between replicas (and clients) for `exp`/`nbf`.
pub const CLOCK_LEEWAY: Duration = Duration::from_secs(30);
/// The distribution spec: never hand out a token with less than 60 s to live.
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    /// URL of the token endpoint, as announced in challenges.
    pub realm: String,
    /// Service name: `iss` and `aud` of every token, `service` in challenges.
    pub service: String,
    /// Access token lifetime (raised to [`MIN_TOKEN_TTL`] if shorter).
    pub ttl: Duration,
    /// Refresh token lifetime (raised to [`MIN_TOKEN_TTL`] if shorter).
    pub refresh_ttl: Duration,
}

impl TokenSettings {
    fn lifetime(&self, kind: TokenKind) -> u64 {
        let configured = match kind {
            TokenKind::Access => self.ttl,
            TokenKind::Refresh => self.refresh_ttl,
        };
        configured.max(MIN_TOKEN_TTL).as_secs()
    }
}

/// Who a token speaks for. `user: None` is anonymous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: Option<String>,
}

impl Identity {
    pub fn anonymous() -> Identity {
        Identity { user: None }
    }

    pub fn user(name: impl Into<String>) -> Identity {
        Identity {
            user: Some(name.into()),
        }
    }

    fn subject(&self) -> &str {
        self.user.as_deref().unwrap_or("")
    }
}

/// A token issued for an access key login is bound to the key rather than to a password
/// entry: its `bnd` claim is `key:<id>` (a password entry's binding is hex, never this). On
/// every request the key must still exist, belong to the token's subject and be unexpired.
const KEY_BINDING_PREFIX: &str = "key:";

/// The binding of a token issued for a login with the key `id`.
pub(crate) fn key_binding(id: &str) -> String {
    format!("{KEY_BINDING_PREFIX}{id}")
}

/// The key id a token's binding names, when the token was issued for a key login.
pub(crate) fn bound_key(binding: &str) -> Option<&str> {
    binding.strip_prefix(KEY_BINDING_PREFIX).filter(|id| !id.is_empty())
}
