//! `/token`: the docker token realm's endpoint. Parses the request, checks the password or the
//! refresh token, and issues a token whose `access` claim lists what the current rules allow.

use std::net::IpAddr;
use std::time::SystemTime;

use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::{denial, respond, single_header, App, Body, Single, X_REAL_IP};
use crate::decision::{decide_for, narrow_to_scope, AccessRequest, KeyInUse, Subject};
use crate::identity::login::{LoggedIn, LoginSource, PasswordCheck};
use crate::identity::{parse_authorization, Credentials};
use crate::token::{self, Federation, Identity, Scope, TokenKind, TokenRequest, VerifiedToken};

impl App {
    pub(super) async fn token_endpoint(&self, request: Request<Incoming>) -> Response<Body> {
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
        let unavailable = |why: &str| {
            tracing::debug!(target: "csel_auth::token", reason = why, "token not issued: login source unavailable");
            denial(StatusCode::SERVICE_UNAVAILABLE)
        };
        // The binding is the password entry as it was before the password was
        // checked: if the entry changes meanwhile, the token is born ended
        // (fails closed) rather than bound to an entry the password was not
        // checked against.
        let fingerprint = |user: &str| self.store.htpasswd().entry_fingerprint(user).unwrap_or_default();
        let (identity, binding, federation, scopes, wants_refresh, reuse_refresh) = match token_request {
            TokenRequest::Get {
                scopes, offline_token, ..
            } => {
                let mut authorization = headers.get_all(AUTHORIZATION).iter();
                let (first, second) = (authorization.next(), authorization.next());
                if second.is_some() {
                    return unauthorized("repeated Authorization header");
                }
                match parse_authorization(first.map(HeaderValue::as_bytes)) {
                    Ok(Credentials::Anonymous) => (Identity::anonymous(), String::new(), None, scopes, false, None),
                    Ok(Credentials::Basic { user, password }) => {
                        let binding = fingerprint(&user);
                        match self.check_password(&user, &password, client).await {
                            PasswordCheck::Accepted(login) => {
                                let (identity, binding, federation) = bound(login, binding);
                                (identity, binding, federation, scopes, offline_token, None)
                            }
                            PasswordCheck::Refused => return unauthorized("wrong password or unknown user"),
                            PasswordCheck::Unavailable(why) => return unavailable(&why),
                        }
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
                match self.check_password(&username, &password, client).await {
                    PasswordCheck::Accepted(login) => {
                        let (identity, binding, federation) = bound(login, binding);
                        (identity, binding, federation, scopes, access_type_offline, None)
                    }
                    PasswordCheck::Refused => return unauthorized("wrong password or unknown user"),
                    PasswordCheck::Unavailable(why) => return unavailable(&why),
                }
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
                }) if !binding.is_empty()
                    && match token::bound_key(&binding) {
                        // A key's refresh token lives only as long as the key.
                        Some(id) => self.key_in_force(id, &user),
                        None => fingerprint(&user) == binding,
                    } =>
                {
                    (Identity::user(user), binding, None, scopes, false, Some(refresh_token))
                }
                _ => return unauthorized("invalid refresh token (expired, or the password changed)"),
            },
        };
        let no_groups = Vec::new();
        let groups = federation.as_ref().map_or(&no_groups, |f| &f.groups);
        let keys = self.store.access_keys();
        let key = token::bound_key(&binding)
            .and_then(|id| keys.get(id))
            .map(|k| KeyInUse {
                id: k.id.as_str(),
                scope: &k.scope,
            });
        let granted = self.granted_scopes(identity.user.as_deref(), groups, key, &scopes);
        let mut issued = match &federation {
            None => token::issue(
                &realm.key,
                &realm.settings,
                &identity,
                &granted,
                &binding,
                wants_refresh && realm.refresh_tokens,
                SystemTime::now(),
            ),
            Some(federation) => token::issue_federated(
                &realm.key,
                &realm.settings,
                &identity,
                &granted,
                federation,
                SystemTime::now(),
            ),
        };
        if reuse_refresh.is_some() {
            issued.refresh_token = reuse_refresh;
        }
        self.metrics
            .tokens_issued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            target: "csel_auth::token",
            user = identity.user.as_deref().unwrap_or("anonymous"),
            key = key.map(|k| k.id),
            scope = %issued.scope,
            "token issued"
        );
        respond(
            StatusCode::OK,
            "application/json; charset=utf-8",
            token::token_response_json(&issued),
        )
    }

    /// Whether the access key `id` is in the keys file in force, owned by `user` and unexpired.
    fn key_in_force(&self, id: &str, user: &str) -> bool {
        let keys = self.store.access_keys();
        keys.get(id)
            .is_some_and(|k| k.owner == user && !k.is_expired(SystemTime::now()))
    }

    /// The requested scopes, each cut down to the actions the current rules (and the access
    /// key's scope, for a key login) allow. Informational: every request is decided again.
    fn granted_scopes(
        &self,
        user: Option<&str>,
        groups: &[String],
        key: Option<KeyInUse>,
        requested: &[Scope],
    ) -> Vec<Scope> {
        let rules = self.store.rules();
        let allowed = |method: &str, uri: &str| {
            let request = AccessRequest {
                method,
                uri,
                format: "docker",
                content_type: None,
            };
            let decision = decide_for(&rules, &Subject { user, groups }, &request);
            let decision = match key {
                Some(key) => narrow_to_scope(decision, key, user, &request),
                None => decision,
            };
            // A push that may create or move a tag, not both, is still a push: each manifest
            // PUT is decided when it comes, with the registry asked then.
            decision.allowed || decision.tag_check.is_some()
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

/// The token subject of a login and what its token carries: an htpasswd login is bound to its
/// entry; a login from another source is bound to no entry and carries its source and groups.
fn bound(login: LoggedIn, htpasswd_binding: String) -> (Identity, String, Option<Federation>) {
    match login.source {
        LoginSource::Htpasswd => (Identity::user(login.user), htpasswd_binding, None),
        LoginSource::AccessKey { id } => (Identity::user(login.user), token::key_binding(&id), None),
        LoginSource::Ldap | LoginSource::Oidc { .. } => {
            let federation = Federation {
                source: login.source.label(),
                groups: login.groups,
                expires_at: login.expires_at,
            };
            (Identity::user(login.user), String::new(), Some(federation))
        }
    }
}
