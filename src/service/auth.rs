//! `/auth`: one `auth_request` subrequest answered. Who is asking (anonymous, a Basic login, a
//! token), then [`decide_and_answer`] decides, and the answer is turned into 200 / 401 / 403
//! with the header or challenge that goes with it. The decision is logged, one line per request.

use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use super::panic::CatchPanic;
use super::{
    denial, respond, single_header, App, Body, Single, X_AUTH_USER, X_ORIGINAL_CONTENT_TYPE, X_ORIGINAL_METHOD,
    X_ORIGINAL_URI, X_REAL_IP, X_REPOSITORY_FORMAT,
};

/// A refusal's reason for the client (see `client_message`), read by nginx's
/// `auth_request_set $csel_auth_error $upstream_http_x_auth_error`.
const X_AUTH_ERROR: HeaderName = HeaderName::from_static("x-auth-error");
use crate::access_keys::KeyCheck;
use crate::audit::AuditEntry;
use crate::decision::{decide, decide_and_answer_for, AccessRequest, Answer, Credential, Decision, KeyInUse, Subject};
use crate::identity::ldap::LdapError;
use crate::identity::login::{LoggedIn, LoginSource, PasswordCheck};
use crate::identity::{parse_authorization, Credentials, Login};
use crate::metrics::{Outcome, Watched};
use crate::oidc::OidcCheck;
use crate::request::DockerRoute;
use crate::rules::Action;
use crate::token::{self, Identity, Scope};

/// Why a request was answered as it was, for the log line.
pub(super) struct Verdict {
    pub(super) response: Response<Body>,
    pub(super) outcome: Outcome,
    pub(super) user: Option<String>,
    pub(super) reason: String,
    pub(super) path: Option<String>,
    /// The access key the request logged in with (directly or through its token).
    pub(super) key: Option<String>,
}

impl Verdict {
    /// A refusal before anyone was identified.
    pub(super) fn refused(status: StatusCode, outcome: Outcome, reason: String) -> Verdict {
        Verdict {
            response: denial(status),
            outcome,
            user: None,
            reason,
            path: None,
            key: None,
        }
    }
}

/// Who is asking, as [`App::identify`] found out.
pub(super) struct Caller {
    pub user: Option<String>,
    /// From LDAP, or an OIDC token (carried by csel-auth's token for it).
    pub groups: Vec<String>,
    /// The access key used, directly or through its token; checked: current, unexpired, the user's.
    pub key_id: Option<String>,
    /// Logged in with a token of csel-auth's realm.
    pub token_holder: bool,
    /// The keys file the key was checked against.
    pub keys: std::sync::Arc<crate::access_keys::AccessKeys>,
}

/// What the audit log records beyond the decision log line: how the user authenticated and
/// what the decision found. Filled in by `auth_verdict` as it goes.
#[derive(Default)]
pub(super) struct AuditFacts {
    /// `none`, `htpasswd`, `token`, `access_key`, `ldap`, `oidc`.
    pub(super) auth: Option<&'static str>,
    /// The access key's id or the OIDC issuer.
    pub(super) detail: Option<String>,
    pub(super) action: Option<crate::rules::Action>,
    pub(super) route: Option<DockerRoute>,
    pub(super) rule_line: Option<usize>,
}

impl App {
    /// Answers one `auth_request` subrequest and logs the decision.
    pub(super) async fn auth(&self, headers: &HeaderMap) -> Response<Body> {
        let started = Instant::now();
        let client = match single_header(headers, &X_REAL_IP) {
            Single::Present(ip) => ip.parse::<IpAddr>().ok(),
            _ => None,
        };
        let mut facts = AuditFacts::default();
        let verdict = match CatchPanic(Box::pin(self.auth_verdict(headers, client, &mut facts))).await {
            Ok(verdict) => verdict,
            Err(()) => {
                tracing::error!(target: "csel_auth::service", "internal error while deciding (a bug): denied");
                Verdict {
                    response: denial(StatusCode::FORBIDDEN),
                    outcome: Outcome::Error,
                    user: None,
                    reason: "internal error".into(),
                    path: None,
                    key: None,
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
            key = verdict.key.as_deref(),
        );
        if let Some(audit) = &self.audit {
            audit.record(self.audit_entry(&verdict, facts, method, client));
        }
        verdict.response
    }

    pub(super) fn audit_entry(
        &self,
        verdict: &Verdict,
        facts: AuditFacts,
        method: &str,
        client: Option<IpAddr>,
    ) -> AuditEntry {
        let status = verdict.response.status().as_u16();
        let (repository, reference) = match &facts.route {
            Some(DockerRoute::Manifest { name, reference }) => (Some(name.clone()), Some(reference.clone())),
            Some(DockerRoute::Blob { name, digest } | DockerRoute::Referrers { name, digest }) => {
                (Some(name.clone()), Some(digest.clone()))
            }
            Some(route) => (route.repository().map(str::to_string), None),
            None => (None, None),
        };
        AuditEntry {
            v: 1,
            time: AuditEntry::now(),
            client: client.map(|c| c.to_string()),
            user: verdict
                .user
                .clone()
                .unwrap_or_else(|| crate::csel::ANONYMOUS.to_string()),
            auth: facts.auth.unwrap_or("none"),
            auth_detail: facts.detail.or_else(|| verdict.key.clone()),
            method: method.to_string(),
            path: verdict.path.clone(),
            repository,
            reference,
            action: facts.action.map(|a| a.to_string()),
            status,
            outcome: match verdict.outcome {
                Outcome::Allowed => "allowed",
                Outcome::Forbidden => "denied",
                Outcome::Unauthorized => "unauthorized",
                Outcome::Error => "error",
            },
            rule_line: facts.rule_line,
            reason: verdict.reason.clone(),
            rules_version: self
                .metrics
                .file(Watched::Rules)
                .version
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    async fn auth_verdict(&self, headers: &HeaderMap, client: Option<IpAddr>, facts: &mut AuditFacts) -> Verdict {
        let refuse = Verdict::refused;
        // nginx sets both itself; without them nginx is misconfigured (500,
        // which nginx passes on) and the log says which directive is missing.
        let required = |name: HeaderName, directive: &str| match single_header(headers, &name) {
            Single::Present(v) => Ok(v),
            Single::Absent => {
                tracing::error!(target: "csel_auth::service", "/auth request without {name}: add `{directive}` to the nginx auth location (see nginx/csel-auth.conf)");
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

        let caller = match self.identify(headers, client, &access, facts).await {
            Ok(caller) => caller,
            Err(verdict) => return verdict,
        };
        let Caller {
            user,
            groups,
            key_id,
            token_holder,
            keys,
        } = caller;
        let key = key_id.as_deref().and_then(|id| keys.get(id)).map(|k| KeyInUse {
            id: k.id.as_str(),
            scope: &k.scope,
        });

        let credential = match (token_holder, &user) {
            (true, _) => Credential::Token,
            (false, Some(_)) => Credential::Basic,
            (false, None) => Credential::None,
        };
        let token_mode = self.token.is_some();
        let rules = self.store.rules();
        fault_injection(uri);
        let subject = Subject {
            user: user.as_deref(),
            groups: &groups,
        };
        let (mut decision, mut answer) = decide_and_answer_for(&rules, &subject, credential, token_mode, &access, key);
        // Only the registry knows whether the tag exists; asked only when the answer turns on
        // it, and any trouble asking refuses the push.
        if let Some(check) = decision.tag_check.as_ref().filter(|_| answer != Answer::Challenge) {
            let asked = match &self.registry {
                None => Err(format!(
                    "whether tag {} of {} exists decides this push, and no registry is configured to ask: \
                     set `[registry] url` (or --registry) to the registry's own address",
                    check.tag, check.name
                )),
                Some(registry) => registry
                    .manifest_exists(&check.name, &check.tag)
                    .await
                    .map_err(|e| format!("whether tag {} of {} exists is unknown: {e}", check.tag, check.name)),
            };
            match asked {
                Ok(exists) => {
                    decision = decision.settle(exists);
                    answer = crate::decision::answer(&decision, credential, token_mode);
                }
                Err(why) => {
                    tracing::warn!(target: "csel_auth::service", "{why}: push refused (503)");
                    facts.action = decision.action;
                    facts.route = decision.docker.clone();
                    return Verdict {
                        response: denial(StatusCode::SERVICE_UNAVAILABLE),
                        outcome: Outcome::Error,
                        user,
                        reason: why,
                        path: decision.path,
                        key: key_id.clone(),
                    };
                }
            }
        }
        if token_holder {
            facts.auth = Some("token");
        }
        facts.action = decision.action;
        facts.route = decision.docker.clone();
        if let crate::decision::Reason::Granted { line, .. } = &decision.reason {
            facts.rule_line = Some(*line);
        }

        if answer == Answer::Allow {
            let shown_user = user.as_deref().unwrap_or(crate::csel::ANONYMOUS);
            let Ok(user_header) = HeaderValue::from_bytes(shown_user.as_bytes()) else {
                return Verdict {
                    response: denial(StatusCode::FORBIDDEN),
                    outcome: Outcome::Error,
                    user,
                    reason: "user name cannot be sent in a header".into(),
                    path: decision.path,
                    key: key_id.clone(),
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
                key: key_id.clone(),
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
            verdict.key = key_id;
            if user.is_some() {
                verdict.outcome = Outcome::Forbidden;
                verdict.user = user;
            }
            return verdict;
        }
        let outcome = if malformed { Outcome::Error } else { Outcome::Forbidden };
        let mut response = denial(StatusCode::FORBIDDEN);
        if let Some(message) = client_message(&decision.reason) {
            response.headers_mut().insert(X_AUTH_ERROR, message);
        }
        Verdict {
            response,
            outcome,
            user,
            reason: decision.reason.to_string(),
            path: decision.path,
            key: key_id.clone(),
        }
    }

    /// Who is asking: anonymous, a verified Basic login (password or access key), or a token's
    /// subject, with the groups its identity source gave and the access key it used. A caller
    /// that cannot be identified gets its answer (a challenge, or 503 when a source cannot
    /// decide) as the error.
    pub(super) async fn identify(
        &self,
        headers: &HeaderMap,
        client: Option<IpAddr>,
        access: &AccessRequest<'_>,
        facts: &mut AuditFacts,
    ) -> Result<Caller, Verdict> {
        let refuse = Verdict::refused;
        let access = *access;
        let mut authorization = headers.get_all(AUTHORIZATION).iter();
        let (first, second) = (authorization.next(), authorization.next());
        let credentials = match (first, second) {
            (_, Some(_)) => Err("repeated Authorization header".to_string()),
            (value, None) => parse_authorization(value.map(HeaderValue::as_bytes)).map_err(|e| e.to_string()),
        };
        let credentials = match credentials {
            Ok(c) => c,
            Err(why) => {
                return Err(self.challenge(&access, None, Outcome::Unauthorized, format!("bad credentials: {why}")))
            }
        };

        // Who is asking: anonymous, a verified user, or a token's subject.
        let mut token_holder = false;
        let mut groups: Vec<String> = Vec::new();
        let mut key_id: Option<String> = None;
        let user: Option<String> = match credentials {
            // In token mode this is challenged whatever the rules say (decision::answer).
            Credentials::Anonymous => None,
            Credentials::Basic { user, password } => match self.check_password(&user, &password, client).await {
                PasswordCheck::Accepted(login) => {
                    tracing::debug!(target: "csel_auth::login", user = login.user, source = login.source.label(), "login confirmed");
                    groups = login.groups;
                    (facts.auth, facts.detail) = match &login.source {
                        LoginSource::Htpasswd => (Some("htpasswd"), None),
                        LoginSource::Ldap => (Some("ldap"), None),
                        LoginSource::Oidc { issuer } => (Some("oidc"), Some(issuer.clone())),
                        LoginSource::AccessKey { id } => (Some("access_key"), Some(id.clone())),
                    };
                    if let LoginSource::AccessKey { id } = login.source {
                        key_id = Some(id);
                    }
                    Some(login.user)
                }
                PasswordCheck::Refused => {
                    return Err(self.challenge(
                        &access,
                        None,
                        Outcome::Unauthorized,
                        format!("wrong password or unknown user `{user}`"),
                    ));
                }
                PasswordCheck::Unavailable(why) => {
                    return Err(refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        Outcome::Error,
                        format!("login of `{user}` not checked: {why}"),
                    ));
                }
            },
            Credentials::Bearer(bearer) => {
                let Some(realm) = &self.token else {
                    return Err(self.challenge(
                        &access,
                        None,
                        Outcome::Unauthorized,
                        "bearer token without --token-realm".into(),
                    ));
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
                    // A key's token: the key is checked below, with a Basic key login's.
                    Ok(token::CachedAccess {
                        identity: Identity { user: Some(user) },
                        binding,
                        ..
                    }) if token::bound_key(&binding).is_some() => {
                        token_holder = true;
                        key_id = token::bound_key(&binding).map(str::to_string);
                        Some(user)
                    }
                    // A user of another identity source: the token carries the source and its
                    // groups, good for its short life while that source is still configured.
                    Ok(token::CachedAccess {
                        identity: Identity { user: Some(user) },
                        source: Some(source),
                        groups: token_groups,
                        ..
                    }) if self.source_configured(&source) => {
                        token_holder = true;
                        groups = token_groups;
                        Some(user)
                    }
                    Ok(token::CachedAccess {
                        identity: Identity { user: Some(user) },
                        binding,
                        source: None,
                        ..
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
                        return Err(self.challenge(
                            &access,
                            Some("invalid_token"),
                            Outcome::Unauthorized,
                            format!("token for `{user}` {why}"),
                        ));
                    }
                    Err(e) => {
                        self.metrics
                            .token_failures
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return Err(self.challenge(
                            &access,
                            Some("invalid_token"),
                            Outcome::Unauthorized,
                            format!("invalid token: {e}"),
                        ));
                    }
                }
            }
        };

        // The key as the keys file in force has it now: a revoked or expired key ends its
        // tokens at once, and its scope is the current one.
        let keys = self.store.access_keys();
        if let Some(id) = &key_id {
            match keys.get(id) {
                Some(k) if Some(k.owner.as_str()) == user.as_deref() && !k.is_expired(SystemTime::now()) => {}
                found => {
                    let why = match found {
                        None => "is revoked",
                        Some(k) if Some(k.owner.as_str()) != user.as_deref() => "belongs to another user",
                        Some(_) => "has expired",
                    };
                    if token_holder {
                        self.metrics
                            .token_failures
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    let mut verdict = self.challenge(
                        &access,
                        token_holder.then_some("invalid_token"),
                        Outcome::Unauthorized,
                        format!("access key {id} {why}"),
                    );
                    verdict.key = key_id.clone();
                    return Err(verdict);
                }
            }
        }
        Ok(Caller {
            user,
            groups,
            key_id,
            token_holder,
            keys,
        })
    }

    /// A 401 with the challenge for this request.
    pub(super) fn challenge(
        &self,
        access: &AccessRequest,
        error: Option<&str>,
        outcome: Outcome,
        reason: String,
    ) -> Verdict {
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
            key: None,
        }
    }

    /// Checks a Basic login (or a `/token` password) against the identity sources, in order:
    /// a password with the access key prefix is decided by the access keys alone, before and
    /// without the bcrypt queue (one SHA-256); a user of the htpasswd file is decided by it alone (break-glass users: no fallback on a
    /// wrong password); a JWT of a configured issuer is decided by OIDC alone (the typed name
    /// plays no part); otherwise the LDAP directory, if configured. A source that cannot decide
    /// makes the login unavailable, never accepted. Failures are answered after the throttle's
    /// delay.
    pub(super) async fn check_password(&self, user: &str, password: &str, client: Option<IpAddr>) -> PasswordCheck {
        let keys = self.store.access_keys();
        let now = SystemTime::now();
        match keys.verify(user, password, now) {
            KeyCheck::NotAKey => {}
            KeyCheck::Valid(key) => {
                // The throttle is left alone: a key (maybe scoped narrowly) must not clear the
                // failures of its owner's password, or it would help guess that password.
                self.key_logins.record(key, now);
                return PasswordCheck::Accepted(LoggedIn {
                    user: key.owner.clone(),
                    groups: Vec::new(),
                    source: LoginSource::AccessKey { id: key.id.clone() },
                    expires_at: None,
                });
            }
            KeyCheck::Refused { reason, key } => {
                // The id is not secret (it is in the file and the metrics); the secret is never logged.
                tracing::info!(
                    target: "csel_auth::login",
                    user,
                    key = key.map_or("-", |k| k.id.as_str()),
                    reason = reason.label(),
                    client = %shown(client),
                    "access key refused: {reason}"
                );
                self.throttle.record_failure(user, client);
                self.failure_delay(user, client).await;
                return PasswordCheck::Refused;
            }
        }
        let htpasswd = self.store.htpasswd();
        let federated = self.ldap.is_some() || self.oidc.is_some();
        // A name under an issuer's prefix is that issuer's: only its JWTs log it in, so neither
        // an htpasswd entry nor a directory entry can take a CI job's name and its grants.
        let reserved = self.reserved_by_issuer(user);
        let local = !reserved && (htpasswd.contains(user) || htpasswd.is_disabled(user));
        if !federated || local || user.len() > crate::identity::MAX_USER_NAME_BYTES {
            return self.check_htpasswd(user, password, client).await;
        }
        if let Some(oidc) = &self.oidc {
            match oidc.login(password).await {
                OidcCheck::NotAJwt => {}
                OidcCheck::Valid(login) => {
                    return PasswordCheck::Accepted(LoggedIn {
                        user: login.user().to_string(),
                        groups: login.groups().to_vec(),
                        source: LoginSource::Oidc {
                            issuer: login.issuer().to_string(),
                        },
                        expires_at: Some(login.expires_at()),
                    })
                }
                OidcCheck::Refused(why) => {
                    tracing::debug!(target: "csel_auth::login", client = %shown(client), "JWT refused: {why}");
                    self.throttle.record_failure(user, client);
                    self.failure_delay(user, client).await;
                    return PasswordCheck::Refused;
                }
                OidcCheck::Unavailable => {
                    return PasswordCheck::Unavailable("the JWT issuer's keys are unavailable".into());
                }
            }
        }
        if reserved {
            tracing::info!(target: "csel_auth::login", user, client = %shown(client), "login refused: the name is under a JWT issuer's username_prefix and the password is no JWT of it");
            self.throttle.record_failure(user, client);
            self.failure_delay(user, client).await;
            return PasswordCheck::Refused;
        }
        let Some(ldap) = &self.ldap else {
            // Nobody knows the user: the htpasswd check of an unknown user (same cost, throttled).
            return self.check_htpasswd(user, password, client).await;
        };
        if let Err(limit) = self.throttle.admit(user, client) {
            tracing::info!(target: "csel_auth::login", user, client = %shown(client), "password not checked: {}", limit.describe());
            self.failure_delay(user, client).await;
            return PasswordCheck::Refused;
        }
        match ldap.login(user, password).await {
            Ok(login) if self.reserved_by_issuer(login.user()) => {
                tracing::warn!(target: "csel_auth::login", user = login.user(), "LDAP login refused: the name is under a JWT issuer's username_prefix");
                self.throttle.record_failure(user, client);
                PasswordCheck::Refused
            }
            Ok(login) => {
                self.throttle.record_success(user, client);
                PasswordCheck::Accepted(LoggedIn {
                    user: login.user().to_string(),
                    groups: login.groups().to_vec(),
                    source: LoginSource::Ldap,
                    expires_at: None,
                })
            }
            Err(LdapError::Unavailable(why)) => {
                self.throttle.give_back(user, client);
                // The directory module logs each outage once; this is every request.
                tracing::debug!(target: "csel_auth::login", user, "LDAP login unavailable: {why}");
                PasswordCheck::Unavailable(why)
            }
            Err(LdapError::WrongCredentials | LdapError::UnknownUser) => {
                self.throttle.record_failure(user, client);
                self.failure_delay(user, client).await;
                PasswordCheck::Refused
            }
        }
    }

    /// Whether `name` starts with a JWT issuer's `username_prefix`.
    fn reserved_by_issuer(&self, name: &str) -> bool {
        self.oidc
            .as_ref()
            .is_some_and(|oidc| oidc.settings().any(|s| name.starts_with(s.username_prefix())))
    }

    /// Whether a token's `src` names an identity source the service still uses.
    fn source_configured(&self, source: &str) -> bool {
        match source.split_once(':') {
            None => source == "ldap" && self.ldap.is_some(),
            Some(("oidc", issuer)) => self
                .oidc
                .as_ref()
                .is_some_and(|oidc| oidc.settings().any(|s| s.issuer() == issuer)),
            Some(_) => false,
        }
    }

    /// The throttle's delay before a failed login is answered.
    async fn failure_delay(&self, user: &str, client: Option<IpAddr>) {
        let delay = self.throttle.delay(user, client);
        if !delay.is_zero() {
            self.metrics.record_throttled_login(delay);
            tokio::time::sleep(delay).await;
        }
    }

    /// Checks a login against the htpasswd file. A wrong password (and a guess the throttle
    /// refused unchecked) is answered after the throttle's delay; the verifier has told the
    /// throttle already, also for requests that go away before their answer.
    async fn check_htpasswd(&self, user: &str, password: &str, client: Option<IpAddr>) -> PasswordCheck {
        let htpasswd = self.store.htpasswd();
        match self.verifier.login(&htpasswd, user, password, client).await {
            Login::Accepted => return PasswordCheck::Accepted(LoggedIn::htpasswd(user)),
            Login::Refused => {}
            Login::Limited(limit) => {
                tracing::info!(
                    target: "csel_auth::login",
                    user,
                    client = %shown(client),
                    "password not checked: {}",
                    limit.describe()
                );
            }
            Login::NameTooLong => {
                tracing::info!(
                    target: "csel_auth::login",
                    bytes = user.len(),
                    client = %shown(client),
                    "login refused: the user name is longer than {} bytes",
                    crate::identity::MAX_USER_NAME_BYTES
                );
                return PasswordCheck::Refused;
            }
            Login::Overloaded(why) => {
                tracing::warn!(
                    target: "csel_auth::login",
                    user,
                    client = %shown(client),
                    "login refused without checking the password: {}",
                    why.describe()
                );
                return PasswordCheck::Refused;
            }
        }
        self.failure_delay(user, client).await;
        PasswordCheck::Refused
    }
}

fn shown(client: Option<IpAddr>) -> String {
    client.map_or_else(|| "-".to_string(), |c| c.to_string())
}

/// What the client is told about a refusal it can act on (nginx puts it in the JSON error's
/// message, which docker, podman and skopeo print): why a tag push was refused. Other refusals
/// keep the generic message, which says nothing of the rules. Only characters that need no
/// escaping in JSON or a header.
fn client_message(reason: &crate::decision::Reason) -> Option<HeaderValue> {
    use crate::decision::Reason;
    let text = match reason {
        Reason::TagExists { name, tag } => format!("tag {tag} of {name} exists and may not be overwritten"),
        Reason::TagIsNew { name, tag } => format!("tag {tag} of {name} does not exist and may not be created"),
        _ => return None,
    };
    let safe: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " ._-/:".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect();
    HeaderValue::from_str(&safe).ok()
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
        Action::Add | Action::Edit | Action::Overwrite => &["pull", "push"],
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
