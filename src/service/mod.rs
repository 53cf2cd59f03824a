//! `csel-auth serve`: the HTTP service nginx talks to.
//!
//! `/auth` answers nginx's `auth_request` subrequest (200 / 401 / 403) in [`auth`], which
//! hands the request to [`crate::decision::decide_and_answer`]; `/token` is the docker token
//! realm (with `--token-realm`) in [`token_endpoint`]; `/v2/_catalog` is the repository list
//! filtered for the caller, in [`catalog`]; `/healthz` and `/metrics` are for
//! operators. Every path through `/auth` that is not the single allow in `auth` ends in a
//! denial. The listener and the accept loop are in [`listener`], the settings in [`config`].

mod auth;
mod catalog;
mod config;
pub mod in_process;
mod listener;
mod panic;
mod token_endpoint;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

pub(crate) use config::{Config, Listen, TokenConfig};
pub(crate) use listener::run;

/// Why the service could not start. Each is the end of `csel-auth serve`, with exit status
/// [`StartError::code`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error(transparent)]
    Files(#[from] crate::reload::OpenError),
    #[error(transparent)]
    TokenKey(#[from] crate::token::TokenKeyError),
    #[error("cannot open the audit log {}: {source}", path.display())]
    Audit {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("[registry]: {0}")]
    Registry(String),
    #[error("--realm `{0}` cannot be sent in a header")]
    Realm(String),
    #[error(transparent)]
    Watch(#[from] crate::reload::WatchError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot handle {signal}: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {}: a file that is not a socket is in the way", .0.display())]
    NotASocket(std::path::PathBuf),
    #[error("cannot set mode {mode:o} on {}: {source}", path.display())]
    SocketMode {
        mode: u32,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StartError {
    /// The exit status of a service that could not start.
    pub(crate) fn code(&self) -> u8 {
        1
    }
}

use crate::identity::throttle::LoginThrottle;
use crate::identity::Verifier;
use crate::metrics::Metrics;
use crate::reload::Store;
use crate::token::{self, TokenKey, TokenSettings};
use panic::CatchPanic;

struct TokenRealm {
    key: TokenKey,
    settings: TokenSettings,
    refresh_tokens: bool,
}

/// Everything a request needs, shared by all connections.
pub(crate) struct App {
    store: Arc<Store>,
    verifier: Verifier,
    throttle: Arc<LoginThrottle>,
    metrics: Arc<Metrics>,
    token: Option<TokenRealm>,
    default_format: String,
    basic_challenge: HeaderValue,
    verified_tokens: token::VerifiedTokenCache,
    /// `[audit] file`: one JSON line per decision, written off the request path.
    pub(crate) audit: Option<crate::audit::AuditLog>,
    /// `[ldap]`: the directory checked after the htpasswd file.
    ldap: Option<Arc<crate::identity::ldap::Directory>>,
    /// `[[oidc]]`: issuers whose JWTs are accepted as passwords.
    oidc: Option<Arc<crate::oidc::Issuers>>,
    /// Logins per access key, for `/metrics`.
    key_logins: crate::access_keys::KeyLogins,
    /// `[registry]`: asked whether a tag exists, and for the repository list.
    registry: Option<Arc<crate::registry::Registry>>,
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

impl App {
    /// Loads the files and starts the identity sources. A directory or an issuer that cannot be
    /// reached now is a warning: its logins fail closed until it answers.
    pub(crate) async fn new(config: &Config, metrics: Arc<Metrics>) -> Result<App, StartError> {
        let rules_options = crate::rules::RulesOptions {
            external_groups: config.ldap.is_some() || !config.oidc.is_empty(),
        };
        let store = Arc::new(Store::open(
            &config.rules,
            config.htpasswd.as_deref(),
            rules_options,
            config.access_keys.as_deref(),
            Arc::clone(&metrics),
        )?);
        if let Some(path) = &config.access_keys {
            tracing::info!(file = %path.display(), keys = store.access_keys().len(), "access keys loaded");
        }
        let ldap = config
            .ldap
            .clone()
            .map(|settings| Arc::new(crate::identity::ldap::Directory::new(settings)));
        if let Some(directory) = &ldap {
            match directory.check().await {
                Ok(()) => {
                    tracing::info!(target: "csel_auth::service", url = directory.settings().url(), "LDAP directory reachable")
                }
                Err(e) => tracing::warn!(target: "csel_auth::service", "{e}: LDAP logins fail (503) until it answers"),
            }
        }
        let oidc = if config.oidc.is_empty() {
            None
        } else {
            Some(crate::oidc::Issuers::new(config.oidc.clone()).start().await)
        };
        let token = match &config.token {
            None => None,
            Some(t) => Some(TokenRealm {
                key: TokenKey::load_or_create(&t.key_file)?,
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
            .map_err(|_| StartError::Realm(realm.clone()))?;
        let registry = match &config.registry {
            None => None,
            Some(settings) => Some(Arc::new(
                crate::registry::Registry::new(settings.clone()).map_err(StartError::Registry)?,
            )),
        };
        let throttle = Arc::new(LoginThrottle::new(THROTTLE_RECORDS));
        let audit = match &config.audit_file {
            None => None,
            Some(path) => Some(crate::audit::AuditLog::open(path).map_err(|source| StartError::Audit {
                path: path.clone(),
                source,
            })?),
        };
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
            audit,
            ldap,
            oidc,
            key_logins: crate::access_keys::KeyLogins::new(),
            registry,
        })
    }

    /// SIGHUP: the LDAP directory is asked again at each user's next login (a removed user or
    /// membership takes effect at once), and every issuer's keys are fetched again.
    pub(crate) async fn refresh_identity_sources(&self) {
        if let Some(ldap) = &self.ldap {
            ldap.clear();
            tracing::info!(target: "csel_auth::service", "SIGHUP: LDAP login cache emptied");
        }
        if let Some(oidc) = &self.oidc {
            oidc.refresh_all().await;
            tracing::info!(target: "csel_auth::service", "SIGHUP: JWT issuer keys fetched again");
        }
    }

    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub(super) async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        // /auth turns its own panics into a logged 403; anything else that
        // panics answers 500 rather than dropping the connection.
        match CatchPanic(Box::pin(self.route(request))).await {
            Ok(response) => response,
            Err(()) => {
                tracing::error!(target: "csel_auth::service", "internal error (a bug)");
                denial(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }

    async fn route(&self, request: Request<Incoming>) -> Response<Body> {
        match (request.method(), request.uri().path()) {
            (_, "/auth") => self.auth(request.headers()).await,
            // nginx sends every method here; the handler answers 405 to all but GET and HEAD.
            (_, crate::CATALOG_PATH) => self.catalog(request).await,
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
                    (
                        "audit_lines_total",
                        "Decisions written to the audit log.",
                        self.audit.as_ref().map_or(0, |a| a.stats().written.load(std::sync::atomic::Ordering::Relaxed)),
                    ),
                    (
                        "audit_dropped_total",
                        "Audit lines dropped (queue full, or the file could not be written); no decision waits for the audit log.",
                        self.audit.as_ref().map_or(0, |a| a.stats().dropped.load(std::sync::atomic::Ordering::Relaxed)),
                    ),
                ];
                let mut text = self.metrics.render(&extra);
                text.push_str(&crate::metrics::render_logins(
                    &self.verifier,
                    &self.throttle,
                    self.store.htpasswd().disabled().len(),
                ));
                if let Some(ldap) = &self.ldap {
                    text.push_str(&crate::metrics::render_ldap(&ldap.stats()));
                }
                if let Some(oidc) = &self.oidc {
                    text.push_str(&crate::metrics::render_oidc(&oidc.stats()));
                }
                if let Some(registry) = &self.registry {
                    text.push_str(&crate::metrics::render_registry(registry.stats()));
                }
                // Revoked keys' counts go with them: the map holds no more ids than the file.
                let keys = self.store.access_keys();
                self.key_logins.forget_missing(&keys);
                self.key_logins.render(&keys, &mut text);
                respond(StatusCode::OK, "text/plain; version=0.0.4", text)
            }
            (&Method::GET | &Method::POST, "/token") if self.token.is_some() => self.token_endpoint(request).await,
            _ => denial(StatusCode::NOT_FOUND),
        }
    }
}
