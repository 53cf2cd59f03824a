//! `GET /v2/_catalog`, answered by csel-auth itself (nginx routes it here with the client's
//! credentials): the registry's repository list kept to what the caller may read
//! ([`crate::catalog::visible`]) and paged as the distribution API pages it. A caller whose
//! grant names `/v2/_catalog` sees every repository. The registry's list may come from the
//! cache; the filter is applied to every request with the rules in force. Every way the list
//! cannot be read ends in a 5xx, never in a partial or unfiltered list.

use std::net::IpAddr;
use std::time::Instant;

use http::header::{HeaderMap, HeaderName, HeaderValue, LINK};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::auth::{AuditFacts, Caller, Verdict};
use super::panic::CatchPanic;
use super::{respond, single_header, App, Body, Single, X_REAL_IP};
use crate::catalog::{page, page_json, parse_query, visible};
use crate::decision::{decide_for, narrow_to_scope, AccessRequest, KeyInUse, Subject};
use crate::metrics::Outcome;
use crate::token;

const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
const JSON: &str = "application/json; charset=utf-8";

/// The catalog request as a decision sees it: its path without the query, which names no
/// repository.
const CATALOG_REQUEST: AccessRequest<'static> = AccessRequest {
    method: "GET",
    uri: crate::CATALOG_PATH,
    format: "docker",
    content_type: None,
};

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    respond(status, JSON, token::error_json(code, message))
}

impl App {
    /// Answers one catalog request and logs it like a decision, with the number of
    /// repositories shown.
    pub(super) async fn catalog(&self, request: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let headers = request.headers();
        let client = match single_header(headers, &X_REAL_IP) {
            Single::Present(ip) => ip.parse::<IpAddr>().ok(),
            _ => None,
        };
        let mut facts = AuditFacts {
            action: Some(crate::rules::Action::Read),
            ..AuditFacts::default()
        };
        // Any method reaches this handler; an extension method's name is shown cut short.
        let method: String = request.method().as_str().chars().take(32).collect();
        let (mut verdict, shown) = if request.method() == Method::GET || request.method() == Method::HEAD {
            let query = request.uri().query();
            match CatchPanic(Box::pin(self.catalog_verdict(headers, query, client, &mut facts))).await {
                Ok(answer) => answer,
                Err(()) => {
                    tracing::error!(target: "csel_auth::service", "internal error while listing the catalog (a bug): refused");
                    (
                        Verdict {
                            response: error(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "UNKNOWN",
                                "internal error while listing the repositories",
                            ),
                            outcome: Outcome::Error,
                            user: None,
                            reason: "internal error".into(),
                            path: None,
                            key: None,
                        },
                        None,
                    )
                }
            }
        } else {
            let mut response = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                "the repository list is read with GET",
            );
            response
                .headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            (
                Verdict {
                    response,
                    outcome: Outcome::Error,
                    user: None,
                    reason: format!("method {method} on the catalog"),
                    path: None,
                    key: None,
                },
                None,
            )
        };
        verdict.path.get_or_insert_with(|| crate::CATALOG_PATH.to_string());
        tracing::info!(
            target: "csel_auth::decision",
            status = verdict.response.status().as_u16(),
            user = verdict.user.as_deref().unwrap_or("anonymous"),
            method = method.as_str(),
            path = verdict.path.as_deref().unwrap_or("-"),
            client = %client.map_or_else(|| "-".to_string(), |c| c.to_string()),
            reason = %verdict.reason,
            key = verdict.key.as_deref(),
            repositories = shown,
            elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        );
        if let Some(audit) = &self.audit {
            audit.record(self.audit_entry(&verdict, facts, method.as_str(), client));
        }
        let mut response = verdict.response;
        // Clients recognise a v2 registry by it, on errors too.
        response
            .headers_mut()
            .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
        response
    }

    /// The answer and, when a list was sent, how many repositories it showed.
    async fn catalog_verdict(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        client: Option<IpAddr>,
        facts: &mut AuditFacts,
    ) -> (Verdict, Option<usize>) {
        let caller = match self.identify(headers, client, &CATALOG_REQUEST, facts).await {
            Ok(caller) => caller,
            Err(verdict) => return (verdict, None),
        };
        let Caller {
            user,
            groups,
            key_id,
            token_holder,
            keys,
        } = caller;
        if token_holder {
            facts.auth = Some("token");
        }
        let refusal = |response: Response<Body>, outcome: Outcome, reason: String| Verdict {
            response,
            outcome,
            user: user.clone(),
            reason,
            path: None,
            key: key_id.clone(),
        };
        // Docker sends credentials only after a challenge: in token mode every request without
        // a token gets one, as on /auth.
        if self.token.is_some() && !token_holder && user.is_none() {
            let mut verdict = self.challenge(&CATALOG_REQUEST, None, Outcome::Unauthorized, "no token".into());
            verdict.key = key_id;
            return (verdict, None);
        }
        let request = match parse_query(query) {
            Ok(request) => request,
            Err(e) => {
                return (
                    refusal(
                        error(StatusCode::BAD_REQUEST, e.code(), &e.to_string()),
                        Outcome::Error,
                        format!("bad catalog query: {e}"),
                    ),
                    None,
                )
            }
        };
        let Some(registry) = &self.registry else {
            tracing::error!(target: "csel_auth::service", "GET /v2/_catalog needs the registry's address: configure `[registry] url` (or `serve --registry URL`)");
            return (
                refusal(
                    error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "UNAVAILABLE",
                        "the repository list is not available",
                    ),
                    Outcome::Error,
                    "no [registry] url configured".into(),
                ),
                None,
            );
        };
        let all = match registry.catalog().await {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!(target: "csel_auth::service", "catalog refused: {e}");
                return (
                    refusal(
                        error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "UNAVAILABLE",
                            "the registry's repository list cannot be read now",
                        ),
                        Outcome::Error,
                        format!("registry: {e}"),
                    ),
                    None,
                );
            }
        };

        let rules = self.store.rules();
        let key = key_id.as_deref().and_then(|id| keys.get(id));
        let subject = Subject {
            user: user.as_deref(),
            groups: &groups,
        };
        // A grant that names the catalog shows every repository, as it does on /auth.
        let mut whole = decide_for(&rules, &subject, &CATALOG_REQUEST);
        if let Some(k) = key {
            let in_use = KeyInUse {
                id: k.id.as_str(),
                scope: &k.scope,
            };
            whole = narrow_to_scope(whole, in_use, user.as_deref(), &CATALOG_REQUEST);
        }
        let (names, reason): (Vec<&str>, String) = if whole.allowed {
            if let crate::decision::Reason::Granted { line, .. } = &whole.reason {
                facts.rule_line = Some(*line);
            }
            (all.iter().map(String::as_str).collect(), whole.reason.to_string())
        } else {
            let names = visible(&rules, &subject, key.map(|k| &k.scope), &all);
            let reason = format!("{} of {} repositories readable", names.len(), all.len());
            (names, reason)
        };
        // Basic mode: a client sends its credentials only after a challenge, so an anonymous
        // caller with nothing to see is asked to log in rather than shown an empty list.
        if names.is_empty() && user.is_none() && !token_holder {
            let mut verdict = self.challenge(&CATALOG_REQUEST, None, Outcome::Unauthorized, reason);
            verdict.key = key_id;
            return (verdict, None);
        }
        let page = page(&names, &request);
        let mut response = respond(StatusCode::OK, JSON, page_json(&page));
        if let Some(next) = &page.next {
            match HeaderValue::from_str(&format!("<{next}>; rel=\"next\"")) {
                Ok(link) => {
                    response.headers_mut().insert(LINK, link);
                }
                // The link is built from checked names and escaped; if it still cannot be
                // sent, a page without the rest would read as the whole list.
                Err(_) => {
                    return (
                        refusal(
                            error(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "UNKNOWN",
                                "cannot link the next page",
                            ),
                            Outcome::Error,
                            "next-page link not sendable".into(),
                        ),
                        None,
                    )
                }
            }
        }
        let shown = page.repositories.len();
        let verdict = Verdict {
            response,
            outcome: Outcome::Allowed,
            user,
            reason,
            path: None,
            key: key_id,
        };
        (verdict, Some(shown))
    }
}
