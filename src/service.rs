//! `csel-auth serve`: the HTTP service nginx talks to.
//!
//! `/auth` answers nginx's `auth_request` subrequest (200 / 401 / 403),
//! `/token` is the docker token realm (with `--token-realm`), and
//! `/healthz` and `/metrics` are for operators. Every path through `/auth`
//! that is not the single allow in [`App::auth`] ends in a denial.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use crate::decision::{decide, decide_and_answer, AccessRequest, Answer, Credential, Decision};
use crate::identity::throttle::LoginThrottle;
use crate::identity::{parse_authorization, Credentials, Login, Verifier};
use crate::metrics::{Metrics, Outcome};
use crate::reload::Store;
use crate::request::DockerRoute;
use crate::rules::Action;
use crate::token::{self, Identity, Scope, TokenKey, TokenKind, TokenRequest, TokenSettings, VerifiedToken};

/// Where to listen.
#[derive(Debug, Clone)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Listen, String> {
        match s.strip_prefix("unix:") {
            Some(path) if !path.is_empty() => Ok(Listen::Unix(PathBuf::from(path))),
            Some(_) => Err("`unix:` needs a socket path, e.g. unix:/run/csel-auth.sock".into()),
            None => s
                .parse()
                .map(Listen::Tcp)
                .map_err(|_| format!("`{s}` is neither HOST:PORT (e.g. 127.0.0.1:9000) nor unix:/path.sock")),
        }
    }
}

/// The token realm's settings.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub realm: String,
    pub service: String,
    pub key_file: PathBuf,
    pub ttl: Duration,
    pub refresh_ttl: Duration,
    /// Issue refresh tokens to clients that ask (`offline_token=true`).
    pub refresh_tokens: bool,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `--config`: the file and what it said at start, to tell on SIGHUP
    /// which of its changes need a restart.
    pub config_file: Option<(PathBuf, crate::config::ConfigFile)>,
    pub rules: PathBuf,
    pub htpasswd: Option<PathBuf>,
    pub listen: Listen,
    pub socket_mode: u32,
    pub default_format: String,
    pub basic_realm: String,
    pub token: Option<TokenConfig>,
    pub reload_period: Duration,
    pub bcrypt_concurrency: usize,
    pub login_cache: usize,
    pub max_connections: usize,
}

struct TokenRealm {
    key: TokenKey,
    settings: TokenSettings,
    refresh_tokens: bool,
}

/// Everything a request needs, shared by all connections.
pub struct App {
    store: Arc<Store>,
    verifier: Verifier,
    throttle: Arc<LoginThrottle>,
    metrics: Arc<Metrics>,
    token: Option<TokenRealm>,
    default_format: String,
    basic_challenge: HeaderValue,
    verified_tokens: token::VerifiedTokenCache,
}

/// Failed-login records kept (users, addresses, and both), about 20 MB at most.
const THROTTLE_RECORDS: usize = 100_000;

const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_REPOSITORY_FORMAT: HeaderName = HeaderName::from_static("x-repository-format");
const X_ORIGINAL_CONTENT_TYPE: HeaderName = HeaderName::from_static("x-original-content-type");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_AUTH_USER: HeaderName = HeaderName::from_static("x-auth-user");

type Body = Full<Bytes>;

/// hyper counts an idle keep-alive connection's wait for the next request
/// against this timeout. nginx keeps idle upstream connections for 60 s
/// (`keepalive_timeout`); if csel-auth closed them first, a subrequest sent
/// just as the connection closes would fail (500). So: longer than that.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(75);

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn denial(status: StatusCode) -> Response<Body> {
    respond(
        status,
        "text/plain; charset=utf-8",
        status.canonical_reason().unwrap_or("denied"),
    )
}

/// A header that must appear at most once and be text.
enum Single<'a> {
    Absent,
    Present(&'a str),
    Invalid(&'static str),
}

fn single_header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Single<'a> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Single::Absent,
        (Some(_), Some(_)) => Single::Invalid("repeated"),
        (Some(v), None) => match v.to_str() {
            Ok(text) => Single::Present(text),
            Err(_) => Single::Invalid("not visible ASCII"),
        },
    }
}

/// Why a request was answered as it was, for the log line.
struct Verdict {
    response: Response<Body>,
    outcome: Outcome,
    user: Option<String>,
    reason: String,
    path: Option<String>,
}

impl App {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<App, String> {
        let store = Arc::new(Store::open(
            &config.rules,
            config.htpasswd.as_deref(),
            Arc::clone(&metrics),
        )?);
        let token = match &config.token {
            None => None,
            Some(t) => Some(TokenRealm {
                key: TokenKey::load_or_create(&t.key_file).map_err(|e| e.to_string())?,
                settings: TokenSettings {
                    realm: t.realm.clone(),
                    service: t.service.clone(),
                    ttl: t.ttl,
                    refresh_ttl: t.refresh_ttl,
                },
                refresh_tokens: t.refresh_tokens,
            }),
        };
        let realm = config.basic_realm.replace(['"', '\\'], "");
        let basic_challenge = HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
            .map_err(|_| format!("--realm `{realm}` cannot be sent in a header"))?;
        let throttle = Arc::new(LoginThrottle::new(THROTTLE_RECORDS));
        Ok(App {
            store,
            verifier: Verifier::with_limits(
                config.login_cache,
                config.bcrypt_concurrency,
                Some(Arc::clone(&throttle)),
                crate::identity::BCRYPT_QUEUE_DEADLINE,
                crate::identity::MAX_BCRYPT_QUEUE,
            ),
            throttle,
            metrics,
            token,
            default_format: config.default_format.clone(),
            basic_challenge,
            verified_tokens: token::VerifiedTokenCache::default(),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        // /auth turns its own panics into a logged 403; anything else that
        // panics answers 500 rather than dropping the connection.
        match CatchPanic(Box::pin(self.route(request))).await {
            Ok(response) => response,
            Err(()) => {
                tracing::error!("internal error (a bug)");
                denial(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }

    async fn route(&self, request: Request<Incoming>) -> Response<Body> {
        match (request.method(), request.uri().path()) {
            (_, "/auth") => self.auth(&request).await,
            (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
            (&Method::GET, "/metrics") => {
                let extra = [
                    (
                        "bcrypt_checks_total",
                        "bcrypt computations run (cache misses, wrong passwords, unknown users).",
                        self.verifier.bcrypt_checks(),
                    ),
                    (
                        "login_cache_hits_total",
                        "Basic logins answered from the verified-login cache.",
                        self.verifier.cache_hits(),
                    ),
                    (
                        "login_shared_waits_total",
                        "Basic logins answered by waiting for the same login's bcrypt already running.",
                        self.verifier.shared_waits(),
                    ),
                    (
                        "token_cache_hits_total",
                        "Bearer tokens answered from the verified-token cache.",
                        self.verified_tokens.hits(),
                    ),
                ];
                let mut text = self.metrics.render(&extra);
                text.push_str(&crate::metrics::render_logins(
                    &self.verifier,
                    &self.throttle,
                    self.store.htpasswd().disabled().len(),
                ));
                respond(StatusCode::OK, "text/plain; version=0.0.4", text)
            }
            (&Method::GET | &Method::POST, "/token") if self.token.is_some() => self.token_endpoint(request).await,
            _ => denial(StatusCode::NOT_FOUND),
        }
    }

    /// Answers one `auth_request` subrequest and logs the decision.
    async fn auth(&self, request: &Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let headers = request.headers();
        let client = match single_header(headers, &X_REAL_IP) {
            Single::Present(ip) => ip.parse::<IpAddr>().ok(),
            _ => None,
        };
        let verdict = match CatchPanic(Box::pin(self.auth_verdict(headers, client))).await {
            Ok(verdict) => verdict,
            Err(()) => {
                tracing::error!("internal error while deciding (a bug): denied");
                Verdict {
                    response: denial(StatusCode::FORBIDDEN),
                    outcome: Outcome::Error,
                    user: None,
                    reason: "internal error".into(),
                    path: None,
                }
            }
        };
        self.metrics.record_decision(verdict.outcome, started.elapsed());
        let method = match single_header(headers, &X_ORIGINAL_METHOD) {
            Single::Present(m) => m,
            _ => "-",
        };
        tracing::info!(
            target: "csel_auth::decision",
            status = verdict.response.status().as_u16(),
            user = verdict.user.as_deref().unwrap_or("anonymous"),
            method,
            path = verdict.path.as_deref().unwrap_or("-"),
            client = %client.map_or_else(|| "-".to_string(), |c| c.to_string()),
            reason = %verdict.reason,
        );
        verdict.response
    }

    async fn auth_verdict(&self, headers: &HeaderMap, client: Option<IpAddr>) -> Verdict {
        let refuse = |status: StatusCode, outcome: Outcome, reason: String| Verdict {
            response: denial(status),
            outcome,
            user: None,
            reason,
            path: None,
        };
        // nginx sets both itself; without them nginx is misconfigured (500,
        // which nginx passes on) and the log says which directive is missing.
        let required = |name: HeaderName, directive: &str| match single_header(headers, &name) {
            Single::Present(v) => Ok(v),
            Single::Absent => {
                tracing::error!("/auth request without {name}: add `{directive}` to the nginx auth location (see nginx/csel-auth.conf)");
                Err((StatusCode::INTERNAL_SERVER_ERROR, format!("missing {name}")))
            }
            Single::Invalid(why) => Err((StatusCode::FORBIDDEN, format!("{name} {why}"))),
        };
        let uri = match required(X_ORIGINAL_URI, "proxy_set_header X-Original-URI $request_uri;") {
            Ok(v) => v,
            Err((status, reason)) => return refuse(status, Outcome::Error, reason),
        };
        let method = match required(X_ORIGINAL_METHOD, "proxy_set_header X-Original-Method $request_method;") {
            Ok(v) => v,
            Err((status, reason)) => return refuse(status, Outcome::Error, reason),
        };
        let format = match single_header(headers, &X_REPOSITORY_FORMAT) {
            Single::Absent => self.default_format.as_str(),
            Single::Present(f) if is_format_name(f) => f,
            _ => {
                return refuse(
                    StatusCode::FORBIDDEN,
                    Outcome::Error,
                    "invalid X-Repository-Format".into(),
                )
            }
        };
        let content_type = match single_header(headers, &X_ORIGINAL_CONTENT_TYPE) {
            Single::Absent => None,
            Single::Present(c) => Some(c),
            Single::Invalid(why) => {
                return refuse(
                    StatusCode::FORBIDDEN,
                    Outcome::Error,
                    format!("X-Original-Content-Type {why}"),
                )
            }
        };
        let access = AccessRequest {
            method,
            uri,
            format,
            content_type,
        };

        let mut authorization = headers.get_all(AUTHORIZATION).iter();
        let (first, second) = (authorization.next(), authorization.next());
        let credentials = match (first, second) {
            (_, Some(_)) => Err("repeated Authorization header".to_string()),
            (value, None) => parse_authorization(value.map(HeaderValue::as_bytes)).map_err(|e| e.to_string()),
        };
        let credentials = match credentials {
            Ok(c) => c,
            Err(why) => return self.challenge(&access, None, Outcome::Unauthorized, format!("bad credentials: {why}")),
        };

        // Who is asking: anonymous, a verified user, or a token's subject.
        let mut token_holder = false;
        let user: Option<String> = match credentials {
            // In token mode this is challenged whatever the rules say (decision::answer).
            Credentials::Anonymous => None,
            Credentials::Basic { user, password } => {
                if !self.check_password(&user, &password, client).await {
                    return self.challenge(
                        &access,
                        None,
                        Outcome::Unauthorized,
                        format!("wrong password or unknown user `{user}`"),
                    );
                }
                Some(user)
            }
            Credentials::Bearer(bearer) => {
                let Some(realm) = &self.token else {
                    return self.challenge(
                        &access,
                        None,
                        Outcome::Unauthorized,
                        "bearer token without --token-realm".into(),
                    );
                };
                let verified = self
                    .verified_tokens
                    .verify(&realm.key, &realm.settings, &bearer, SystemTime::now());
                // A user's token is bound to the password entry it was issued
                // against, checked on every request (cached or not): a changed,
                // removed or re-created entry ends it.
                let current = |user: &str| self.store.htpasswd().entry_fingerprint(user);
                match verified {
                    Ok(token::CachedAccess {
                        identity: Identity { user: None },
                        ..
                    }) => {
                        token_holder = true;
                        None
                    }
                    Ok(token::CachedAccess {
                        identity: Identity { user: Some(user) },
                        binding,
                    }) if !binding.is_empty() && current(&user).as_deref() == Some(binding.as_str()) => {
                        token_holder = true;
                        Some(user)
                    }
                    Ok(token::CachedAccess {
                        identity: Identity { user: Some(user) },
                        ..
                    }) => {
                        self.metrics
                            .token_failures
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let why = if current(&user).is_some() {
                            "issued before their password entry changed"
                        } else {
                            "who is no longer a user"
                        };
                        return self.challenge(
                            &access,
                            Some("invalid_token"),
                            Outcome::Unauthorized,
                            format!("token for `{user}` {why}"),
                        );
                    }
                    Err(e) => {
                        self.metrics
                            .token_failures
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return self.challenge(
                            &access,
                            Some("invalid_token"),
                            Outcome::Unauthorized,
                            format!("invalid token: {e}"),
                        );
                    }
                }
            }
        };

        let credential = match (token_holder, &user) {
            (true, _) => Credential::Token,
            (false, Some(_)) => Credential::Basic,
            (false, None) => Credential::None,
        };
        let token_mode = self.token.is_some();
        let rules = self.store.rules();
        fault_injection(uri);
        let (decision, answer) = decide_and_answer(&rules, user.as_deref(), credential, token_mode, &access);

        if answer == Answer::Allow {
            let shown_user = user.as_deref().unwrap_or(crate::csel::ANONYMOUS);
            let Ok(user_header) = HeaderValue::from_bytes(shown_user.as_bytes()) else {
                return Verdict {
                    response: denial(StatusCode::FORBIDDEN),
                    outcome: Outcome::Error,
                    user,
                    reason: "user name cannot be sent in a header".into(),
                    path: decision.path,
                };
            };
            // The one place that answers 200.
            let mut response = respond(StatusCode::OK, "text/plain; charset=utf-8", "");
            response.headers_mut().insert(X_AUTH_USER, user_header);
            return Verdict {
                response,
                outcome: Outcome::Allowed,
                user,
                // Only the decision log reads it: `--log warn` skips the formatting.
                reason: if tracing::enabled!(target: "csel_auth::decision", tracing::Level::INFO) {
                    decision.reason.to_string()
                } else {
                    String::new()
                },
                path: decision.path,
            };
        }
        let malformed = decision.reason.is_malformed();
        if answer != Answer::Forbidden {
            // A valid token that does not cover the request: RFC 6750's
            // insufficient_scope, which docker reports as "denied".
            let error = (answer == Answer::InsufficientScope).then_some("insufficient_scope");
            let reason = if token_mode && credential == Credential::None {
                "no token".to_string()
            } else {
                decision.reason.to_string()
            };
            let path = decision.path.clone();
            let mut verdict = self.challenge_for(&decision, error, reason);
            verdict.path = path;
            if user.is_some() {
                verdict.outcome = Outcome::Forbidden;
                verdict.user = user;
            }
            return verdict;
        }
        let outcome = if malformed { Outcome::Error } else { Outcome::Forbidden };
        Verdict {
            response: denial(StatusCode::FORBIDDEN),
            outcome,
            user,
            reason: decision.reason.to_string(),
            path: decision.path,
        }
    }

    /// A 401 with the challenge for this request.
    fn challenge(&self, access: &AccessRequest, error: Option<&str>, outcome: Outcome, reason: String) -> Verdict {
        // Decided on empty rules only for the canonical path (for the log)
        // and the docker route (the scope of a Bearer challenge).
        let decision = decide(&crate::rules::Rules::empty(), None, access);
        let mut verdict = self.challenge_for(&decision, error, reason);
        verdict.outcome = outcome;
        verdict.path = decision.path;
        verdict
    }

    fn challenge_for(&self, decision: &Decision, error: Option<&str>, reason: String) -> Verdict {
        let value = match &self.token {
            None => self.basic_challenge.clone(),
            Some(realm) => {
                let scope = challenge_scope(decision);
                let text = token::challenge(&realm.settings, scope.as_ref(), error);
                HeaderValue::from_str(&text).unwrap_or_else(|_| self.basic_challenge.clone())
            }
        };
        let mut response = respond(
            StatusCode::UNAUTHORIZED,
            "application/json; charset=utf-8",
            token::error_json("UNAUTHORIZED", "authentication required"),
        );
        response.headers_mut().insert(WWW_AUTHENTICATE, value);
        Verdict {
            response,
            outcome: Outcome::Unauthorized,
            user: None,
            reason,
            path: None,
        }
    }

    async fn token_endpoint(&self, request: Request<Incoming>) -> Response<Body> {
        let Some(realm) = &self.token else {
            return denial(StatusCode::NOT_FOUND);
        };
        let is_post = request.method() == Method::POST;
        let headers = request.headers().clone();
        let client = match single_header(&headers, &X_REAL_IP) {
            Single::Present(ip) => ip.parse::<IpAddr>().ok(),
            _ => None,
        };
        let parsed = if is_post {
            let content_type = headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match Limited::new(request.into_body(), token::MAX_TOKEN_REQUEST_LEN)
                .collect()
                .await
            {
                Ok(body) => token::parse_token_post(content_type.as_deref(), &body.to_bytes()),
                Err(_) => Err(token::TokenRequestError::TooLarge),
            }
        } else {
            token::parse_token_get(request.uri().query().unwrap_or(""))
        };
        let token_request = match parsed.and_then(|r| r.check_service(&realm.settings).map(|()| r)) {
            Ok(r) => r,
            Err(e) => {
                self.metrics
                    .token_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(target: "csel_auth::token", error = %e, "token request refused");
                let body = if is_post {
                    token::oauth_error_json(e.oauth_error(), &e.to_string())
                } else {
                    token::error_json("UNSUPPORTED", &e.to_string())
                };
                return respond(StatusCode::BAD_REQUEST, "application/json; charset=utf-8", body);
            }
        };
        let unauthorized = |why: &str| {
            self.metrics
                .token_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(target: "csel_auth::token", reason = why, "token refused");
            let mut response = respond(
                StatusCode::UNAUTHORIZED,
                "application/json; charset=utf-8",
                token::oauth_error_json("invalid_grant", "wrong user name or password"),
            );
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, self.basic_challenge.clone());
            response
        };
        // The binding is the password entry as it was before the password was
        // checked: if the entry changes meanwhile, the token is born ended
        // (fails closed) rather than bound to an entry the password was not
        // checked against.
        let fingerprint = |user: &str| self.store.htpasswd().entry_fingerprint(user).unwrap_or_default();
        let (identity, binding, scopes, wants_refresh, reuse_refresh) = match token_request {
            TokenRequest::Get {
                scopes, offline_token, ..
            } => {
                let mut authorization = headers.get_all(AUTHORIZATION).iter();
                let (first, second) = (authorization.next(), authorization.next());
                if second.is_some() {
                    return unauthorized("repeated Authorization header");
                }
                match parse_authorization(first.map(HeaderValue::as_bytes)) {
                    Ok(Credentials::Anonymous) => (Identity::anonymous(), String::new(), scopes, false, None),
                    Ok(Credentials::Basic { user, password }) => {
                        let binding = fingerprint(&user);
                        if !self.check_password(&user, &password, client).await {
                            return unauthorized("wrong password or unknown user");
                        }
                        (Identity::user(user), binding, scopes, offline_token, None)
                    }
                    _ => return unauthorized("unusable Authorization header"),
                }
            }
            TokenRequest::PasswordGrant {
                username,
                password,
                scopes,
                access_type_offline,
                ..
            } => {
                let binding = fingerprint(&username);
                if !self.check_password(&username, &password, client).await {
                    return unauthorized("wrong password or unknown user");
                }
                (Identity::user(username), binding, scopes, access_type_offline, None)
            }
            TokenRequest::RefreshGrant { .. } if !realm.refresh_tokens => {
                self.metrics
                    .token_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(target: "csel_auth::token", "refresh grant refused: refresh tokens are off");
                return respond(
                    StatusCode::BAD_REQUEST,
                    "application/json; charset=utf-8",
                    token::oauth_error_json(
                        "unsupported_grant_type",
                        "this registry does not accept refresh tokens: log in again with your password",
                    ),
                );
            }
            TokenRequest::RefreshGrant {
                refresh_token, scopes, ..
            } => match token::verify(
                &realm.key,
                &realm.settings,
                TokenKind::Refresh,
                &refresh_token,
                SystemTime::now(),
            ) {
                // Bound to the password entry: a changed password or a
                // removed user ends every refresh token issued before.
                Ok(VerifiedToken {
                    identity: Identity { user: Some(user) },
                    binding,
                    ..
                }) if !binding.is_empty() && fingerprint(&user) == binding => {
                    (Identity::user(user), binding, scopes, false, Some(refresh_token))
                }
                _ => return unauthorized("invalid refresh token (expired, or the password changed)"),
            },
        };
        let granted = self.granted_scopes(identity.user.as_deref(), &scopes);
        let mut issued = token::issue(
            &realm.key,
            &realm.settings,
            &identity,
            &granted,
            &binding,
            wants_refresh && realm.refresh_tokens,
            SystemTime::now(),
        );
        if reuse_refresh.is_some() {
            issued.refresh_token = reuse_refresh;
        }
        self.metrics
            .tokens_issued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            target: "csel_auth::token",
            user = identity.user.as_deref().unwrap_or("anonymous"),
            scope = %issued.scope,
            "token issued"
        );
        respond(
            StatusCode::OK,
            "application/json; charset=utf-8",
            token::token_response_json(&issued),
        )
    }

    /// Checks a Basic login. A wrong password (and a guess the throttle refused unchecked) is
    /// answered after the throttle's delay; the verifier has told the throttle already, also for
    /// requests that go away before their answer.
    async fn check_password(&self, user: &str, password: &str, client: Option<IpAddr>) -> bool {
        let htpasswd = self.store.htpasswd();
        let shown_client = || client.map_or_else(|| "-".to_string(), |c| c.to_string());
        match self.verifier.login(&htpasswd, user, password, client).await {
            Login::Accepted => return true,
            Login::Refused => {}
            Login::Limited(limit) => {
                tracing::info!(
                    target: "csel_auth::login",
                    user,
                    client = %shown_client(),
                    "password not checked: {}",
                    limit.describe()
                );
            }
            Login::NameTooLong => {
                tracing::info!(
                    target: "csel_auth::login",
                    bytes = user.len(),
                    client = %shown_client(),
                    "login refused: the user name is longer than {} bytes",
                    crate::identity::MAX_USER_NAME_BYTES
                );
                return false;
            }
            Login::Overloaded(why) => {
                tracing::warn!(
                    target: "csel_auth::login",
                    user,
                    client = %shown_client(),
                    "login refused without checking the password: {}",
                    why.describe()
                );
                return false;
            }
        }
        let delay = self.throttle.delay(user, client);
        if !delay.is_zero() {
            self.metrics.record_throttled_login(delay);
            tokio::time::sleep(delay).await;
        }
        false
    }

    /// The requested scopes, each cut down to the actions the current rules
    /// allow. Informational: every request is decided again by the rules.
    fn granted_scopes(&self, user: Option<&str>, requested: &[Scope]) -> Vec<Scope> {
        let rules = self.store.rules();
        let allowed = |method: &str, uri: &str| {
            decide(
                &rules,
                user,
                &AccessRequest {
                    method,
                    uri,
                    format: "docker",
                    content_type: None,
                },
            )
            .allowed
        };
        requested
            .iter()
            .filter_map(|scope| {
                let actions: Vec<String> = match scope.kind.as_str() {
                    "repository" => {
                        let manifest = format!("/v2/{}/manifests/latest", scope.name);
                        scope
                            .actions
                            .iter()
                            .filter(|a| match a.as_str() {
                                "pull" => allowed("GET", &manifest),
                                "push" => allowed("PUT", &manifest),
                                "delete" => allowed("DELETE", &manifest),
                                "*" => {
                                    allowed("GET", &manifest)
                                        && allowed("PUT", &manifest)
                                        && allowed("DELETE", &manifest)
                                }
                                _ => false,
                            })
                            .cloned()
                            .collect()
                    }
                    "registry" if scope.name == "catalog" => scope
                        .actions
                        .iter()
                        .filter(|_| allowed("GET", crate::CATALOG_PATH))
                        .cloned()
                        .collect(),
                    _ => Vec::new(),
                };
                (!actions.is_empty()).then(|| Scope {
                    kind: scope.kind.clone(),
                    name: scope.name.clone(),
                    actions,
                })
            })
            .collect()
    }
}

/// The scope a Bearer challenge names for this request.
fn challenge_scope(decision: &Decision) -> Option<Scope> {
    let route = decision.docker.as_ref()?;
    if *route == DockerRoute::Catalog {
        return Some(Scope {
            kind: "registry".into(),
            name: "catalog".into(),
            actions: vec!["*".into()],
        });
    }
    let name = route.repository()?;
    let actions: &[&str] = match decision.action? {
        Action::Read => &["pull"],
        Action::Add | Action::Edit => &["pull", "push"],
        Action::Delete => &["delete"],
    };
    Some(Scope {
        kind: "repository".into(),
        name: name.to_string(),
        actions: actions.iter().map(|a| a.to_string()).collect(),
    })
}

fn is_format_name(format: &str) -> bool {
    !format.is_empty()
        && format.len() <= 32
        && format
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A future whose panic is returned as `Err(())` instead of unwinding into
/// the connection task, which would drop the connection unanswered.
struct CatchPanic<F: Future>(Pin<Box<F>>);

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.get_mut().0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

/// Test builds can be told to panic while deciding one path, to prove that a
/// panic ends in a denial. Release builds have no such switch.
fn fault_injection(uri: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("CSEL_AUTH_FAULT_PANIC_URI").is_ok_and(|p| p == uri) {
        panic!("fault injection: panic while deciding {uri}");
    }
    #[cfg(not(debug_assertions))]
    let _ = uri;
}

/// Runs the service until SIGTERM or SIGINT. Returns the exit status.
pub fn run(config: Config) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("{message}");
            tracing::error!("{message}");
            1
        }
    }
}

async fn serve(config: Config) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let metrics = Arc::new(Metrics::default());
    let app = Arc::new(App::new(&config, metrics)?);
    crate::reload::start(Arc::clone(app.store()), config.reload_period)?;

    let mut sighup = signal(SignalKind::hangup()).map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
    // Its own task, so a reload is never held up by the accept loop (which
    // waits for a free connection slot when all are taken).
    let reload_store = Arc::clone(app.store());
    let config_file = config.config_file.clone();
    tokio::spawn(async move {
        while sighup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            crate::reload::reload_now(&reload_store);
            if let Some((path, at_start)) = &config_file {
                warn_about_config_changes(path, at_start);
            }
        }
    });
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    let listener = Listener::bind(&config.listen, config.socket_mode).await?;
    let rules = app.store().rules();
    tracing::info!(
        listen = %listener.describe(),
        rules = %config.rules.display(),
        grants = rules.grants().len(),
        token_realm = config.token.as_ref().map_or("-", |t| t.realm.as_str()),
        "csel-auth ready"
    );
    let connections = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut accept_failures: u64 = 0;
    let mut last_accept_warning: Option<Instant> = None;
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        };
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors (EMFILE/ENFILE) or another failure that retrying at
                // once would only repeat: pause, and say so once a minute at most.
                accept_failures += 1;
                if last_accept_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!("accept failed ({accept_failures} times so far): {e}; retrying in 100 ms");
                    last_accept_warning = Some(Instant::now());
                }
                drop(permit);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    _ = sigterm.recv() => break,
                    _ = sigint.recv() => break,
                }
            }
        };
        let app = Arc::clone(&app);
        let service = service_fn(move |request| {
            let app = Arc::clone(&app);
            async move { Ok::<_, std::convert::Infallible>(app.handle(request).await) }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(true)
            .max_buf_size(64 * 1024)
            .serve_connection(stream, service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    tracing::info!("shutting down: finishing requests in flight");
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections were still open after 10 s");
    }
    if let Listen::Unix(path) = &config.listen {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// The config file's settings are read once, at start: on SIGHUP, say which
/// changes wait for a restart rather than applying half of them.
fn warn_about_config_changes(path: &std::path::Path, at_start: &crate::config::ConfigFile) {
    match crate::config::ConfigFile::load(path) {
        Err(e) => tracing::warn!("SIGHUP: {e}; the settings from the start stay in force"),
        Ok(now) => {
            let changed = at_start.changed_keys(&now);
            if !changed.is_empty() {
                tracing::warn!(
                    config = %path.display(),
                    changed = %changed.join(", "),
                    "SIGHUP: the config file changed; these settings take effect at the next restart"
                );
            }
        }
    }
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

/// A connection of either kind.
type Stream = TokioIo<Box<dyn AsyncStream>>;
trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> AsyncStream for T {}

impl Listener {
    async fn bind(listen: &Listen, mode: u32) -> Result<Listener, String> {
        match listen {
            Listen::Tcp(addr) => tokio::net::TcpListener::bind(addr)
                .await
                .map(Listener::Tcp)
                .map_err(|e| format!("cannot listen on {addr}: {e}")),
            Listen::Unix(path) => {
                use std::os::unix::fs::{FileTypeExt, PermissionsExt};
                // A socket left by a previous run is replaced; any other file is not.
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if meta.file_type().is_socket() {
                        let _ = std::fs::remove_file(path);
                    } else {
                        return Err(format!(
                            "cannot listen on {}: a file that is not a socket is in the way",
                            path.display()
                        ));
                    }
                }
                let listener = tokio::net::UnixListener::bind(path)
                    .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| format!("cannot set mode {mode:o} on {}: {e}", path.display()))?;
                Ok(Listener::Unix(listener, path.clone()))
            }
        }
    }

    async fn accept(&self) -> std::io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (stream, _) = l.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok(TokioIo::new(Box::new(stream)))
            }
            Listener::Unix(l, _) => {
                let (stream, _) = l.accept().await?;
                Ok(TokioIo::new(Box::new(stream)))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map_or_else(|_| "tcp".into(), |a| a.to_string()),
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }
}
