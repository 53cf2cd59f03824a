//! Parsing of token endpoint requests: `GET /token?…` and `POST /token` forms.

use std::fmt;

use super::{parse_scopes, Scope, TokenSettings};

/// Largest query string or POST body the token endpoint parsers accept.
pub(crate) const MAX_TOKEN_REQUEST_LEN: usize = 16 * 1024;

#[derive(Clone, PartialEq, Eq)]
pub(crate) enum TokenRequest {
    /// `GET /token?service=…&scope=…&account=…&offline_token=true`; credentials,
    /// if any, come in the `Authorization` header. `client_id` is accepted and
    /// ignored.
    Get {
        service: Option<String>,
        scopes: Vec<Scope>,
        account: Option<String>,
        offline_token: bool,
    },
    /// `POST /token`, `grant_type=password`.
    PasswordGrant {
        username: String,
        password: String,
        service: Option<String>,
        scopes: Vec<Scope>,
        access_type_offline: bool,
        client_id: Option<String>,
    },
    /// `POST /token`, `grant_type=refresh_token`.
    RefreshGrant {
        refresh_token: String,
        service: Option<String>,
        scopes: Vec<Scope>,
    },
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenRequest::Get {
                service,
                scopes,
                account,
                offline_token,
            } => f
                .debug_struct("Get")
                .field("service", service)
                .field("scopes", scopes)
                .field("account", account)
                .field("offline_token", offline_token)
                .finish(),
            TokenRequest::PasswordGrant {
                username,
                service,
                scopes,
                access_type_offline,
                client_id,
                ..
            } => f
                .debug_struct("PasswordGrant")
                .field("username", username)
                .field("password", &"<redacted>")
                .field("service", service)
                .field("scopes", scopes)
                .field("access_type_offline", access_type_offline)
                .field("client_id", client_id)
                .finish(),
            TokenRequest::RefreshGrant { service, scopes, .. } => f
                .debug_struct("RefreshGrant")
                .field("refresh_token", &"<redacted>")
                .field("service", service)
                .field("scopes", scopes)
                .finish(),
        }
    }
}

impl TokenRequest {
    pub(crate) fn service(&self) -> Option<&str> {
        match self {
            TokenRequest::Get { service, .. }
            | TokenRequest::PasswordGrant { service, .. }
            | TokenRequest::RefreshGrant { service, .. } => service.as_deref(),
        }
    }

    /// The parsers do not know the configuration: call this before issuing.
    /// A `service` naming another service is an error; an absent one is fine.
    pub(crate) fn check_service(&self, settings: &TokenSettings) -> Result<(), TokenRequestError> {
        match self.service() {
            Some(service) if service != settings.service => Err(TokenRequestError::WrongService {
                expected: settings.service.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// Why a token request was refused. Display never contains parameter values
/// (passwords, tokens), only parameter names and configured text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenRequestError {
    #[error("token request larger than {MAX_TOKEN_REQUEST_LEN} bytes")]
    TooLarge,
    #[error("token requests must be application/x-www-form-urlencoded (UTF-8)")]
    UnsupportedContentType,
    #[error("token request is not valid form encoding (bad % escape or not UTF-8)")]
    BadEncoding,
    #[error("parameter `{0}` given more than once")]
    DuplicateParameter(&'static str),
    #[error("parameter `{0}` is required")]
    MissingParameter(&'static str),
    #[error("parameter `{0}` has an invalid value")]
    InvalidParameter(&'static str),
    #[error("grant_type not supported (use password or refresh_token)")]
    UnsupportedGrantType,
    #[error("this token server serves service \"{expected}\"")]
    WrongService { expected: String },
}

impl TokenRequestError {
    /// The RFC 6749 `error` code for a 400 answer.
    pub(crate) fn oauth_error(&self) -> &'static str {
        match self {
            TokenRequestError::UnsupportedGrantType => "unsupported_grant_type",
            _ => "invalid_request",
        }
    }
}

pub(crate) fn parse_token_get(query: &str) -> Result<TokenRequest, TokenRequestError> {
    let query = query.strip_prefix('?').unwrap_or(query);
    if query.len() > MAX_TOKEN_REQUEST_LEN {
        return Err(TokenRequestError::TooLarge);
    }
    let form = Form::parse(query)?;
    let service = form.single_non_empty("service")?;
    let account = form.single_non_empty("account")?;
    if account.as_deref().is_some_and(has_control) {
        return Err(TokenRequestError::InvalidParameter("account"));
    }
    form.client_id()?;
    let offline_token = match form.single("offline_token")? {
        None => false,
        Some(value) => match value.to_ascii_lowercase().as_str() {
            "true" | "1" => true,
            "false" | "0" | "" => false,
            _ => return Err(TokenRequestError::InvalidParameter("offline_token")),
        },
    };
    Ok(TokenRequest::Get {
        service,
        scopes: form.scopes(),
        account,
        offline_token,
    })
}

pub(crate) fn parse_token_post(content_type: Option<&str>, body: &[u8]) -> Result<TokenRequest, TokenRequestError> {
    if !is_form_content_type(content_type) {
        return Err(TokenRequestError::UnsupportedContentType);
    }
    if body.len() > MAX_TOKEN_REQUEST_LEN {
        return Err(TokenRequestError::TooLarge);
    }
    let body = std::str::from_utf8(body).map_err(|_| TokenRequestError::BadEncoding)?;
    let form = Form::parse(body)?;
    let grant_type = form
        .single("grant_type")?
        .ok_or(TokenRequestError::MissingParameter("grant_type"))?;
    let service = form.single_non_empty("service")?;
    let client_id = form.client_id()?;
    let access_type_offline = match form.single("access_type")?.as_deref() {
        None | Some("") | Some("online") => false,
        Some("offline") => true,
        Some(_) => return Err(TokenRequestError::InvalidParameter("access_type")),
    };
    let scopes = form.scopes();
    match grant_type.as_str() {
        "password" => {
            let username = form
                .single("username")?
                .filter(|name| !name.is_empty())
                .ok_or(TokenRequestError::MissingParameter("username"))?;
            if has_control(&username) {
                return Err(TokenRequestError::InvalidParameter("username"));
            }
            let password = form
                .single("password")?
                .ok_or(TokenRequestError::MissingParameter("password"))?;
            Ok(TokenRequest::PasswordGrant {
                username,
                password,
                service,
                scopes,
                access_type_offline,
                client_id,
            })
        }
        "refresh_token" => {
            let refresh_token = form
                .single("refresh_token")?
                .filter(|token| !token.is_empty())
                .ok_or(TokenRequestError::MissingParameter("refresh_token"))?;
            Ok(TokenRequest::RefreshGrant {
                refresh_token,
                service,
                scopes,
            })
        }
        _ => Err(TokenRequestError::UnsupportedGrantType),
    }
}

fn is_form_content_type(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return false;
    };
    let mut parts = content_type.split(';');
    let media_type = parts.next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return false;
    }
    parts.all(|parameter| match parameter.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
            let charset = value.trim().trim_matches('"');
            charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8")
        }
        _ => true,
    })
}

fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    fn parse(input: &str) -> Result<Form, TokenRequestError> {
        let pairs = input
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                Ok((form_decode(name)?, form_decode(value)?))
            })
            .collect::<Result<_, TokenRequestError>>()?;
        Ok(Form { pairs })
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn single(&self, name: &'static str) -> Result<Option<String>, TokenRequestError> {
        let mut values = self.all(name);
        let first = values.next();
        if values.next().is_some() {
            return Err(TokenRequestError::DuplicateParameter(name));
        }
        Ok(first.map(str::to_string))
    }

    fn single_non_empty(&self, name: &'static str) -> Result<Option<String>, TokenRequestError> {
        Ok(self.single(name)?.filter(|value| !value.is_empty()))
    }

    /// RFC 6749 appendix A.1: `client_id` is VSCHAR (printable ASCII).
    fn client_id(&self) -> Result<Option<String>, TokenRequestError> {
        let client_id = self.single_non_empty("client_id")?;
        if client_id
            .as_deref()
            .is_some_and(|id| !id.bytes().all(|b| (0x20..=0x7e).contains(&b)))
        {
            return Err(TokenRequestError::InvalidParameter("client_id"));
        }
        Ok(client_id)
    }

    fn scopes(&self) -> Vec<Scope> {
        parse_scopes(&self.all("scope").collect::<Vec<_>>())
    }
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte;
/// a `%` not followed by two hex digits, or a result that is not UTF-8, is an
/// error rather than being passed through.
fn form_decode(text: &str) -> Result<String, TokenRequestError> {
    let bytes = crate::percent::decode(text, true, b"").map_err(|_| TokenRequestError::BadEncoding)?;
    String::from_utf8(bytes).map_err(|_| TokenRequestError::BadEncoding)
}
