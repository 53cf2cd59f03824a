//! Who a Basic login (or a `/token` password grant) proved to be, and which identity source
//! confirmed it. The rules decide with the name and the groups; the token realm binds htpasswd
//! logins to their entry and carries the others' source and groups in the token.

use std::time::SystemTime;

/// The identity source that confirmed a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LoginSource {
    /// The htpasswd file (break-glass and local users): the token binds to the entry.
    Htpasswd,
    /// The LDAP directory of `[ldap]`.
    Ldap,
    /// A JWT from this `[[oidc]]` issuer.
    Oidc { issuer: String },
    /// The access key with this id (its owner is the user): requests are narrowed to its scope,
    /// and a token issued for it is bound to the key.
    AccessKey { id: String },
}

impl LoginSource {
    /// How the source is named in logs and in the token's `src` claim.
    pub(crate) fn label(&self) -> String {
        match self {
            LoginSource::Htpasswd => "htpasswd".into(),
            LoginSource::Ldap => "ldap".into(),
            LoginSource::Oidc { issuer } => format!("oidc:{issuer}"),
            LoginSource::AccessKey { id } => format!("access_key:{id}"),
        }
    }
}

/// A confirmed login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoggedIn {
    /// The name the rules see: the htpasswd name, the directory's spelling of the LDAP name, or
    /// the issuer's prefixed subject (never the typed `-u` name for a JWT).
    pub user: String,
    /// Groups the source says the user is in, on top of the rules file's own.
    pub groups: Vec<String>,
    pub source: LoginSource,
    /// When the source's proof ends (a JWT's `exp`); a token issued for it ends no later.
    pub expires_at: Option<SystemTime>,
}

impl LoggedIn {
    pub(crate) fn htpasswd(user: &str) -> LoggedIn {
        LoggedIn {
            user: user.to_string(),
            groups: Vec::new(),
            source: LoginSource::Htpasswd,
            expires_at: None,
        }
    }
}

/// The outcome of checking a password against the configured sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PasswordCheck {
    Accepted(LoggedIn),
    /// Wrong credentials (or refused unchecked): 401.
    Refused,
    /// The source that must decide could not (directory down, issuer keys missing): 503, never
    /// a success.
    Unavailable(String),
}
