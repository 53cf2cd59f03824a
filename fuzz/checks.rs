//! The invariants fuzzing checks, shared by two drivers: the libFuzzer targets in
//! `fuzz/fuzz_targets/` (cargo fuzz, nightly) and the proptest runs in
//! `tests/reliability/fuzz.rs` (stable, part of `cargo test`). Each check takes
//! arbitrary input and returns `Err` with a description when an invariant breaks;
//! a panic inside csel-auth is a failure too.

#![allow(dead_code)]

use csel_auth::decision::{decide, AccessRequest};
use csel_auth::identity::{parse_authorization, Credentials, MAX_AUTHORIZATION_LEN};
use csel_auth::request::{canonicalize, DockerRoute, MAX_PATH_BYTES};
use csel_auth::rules::Rules;

/// The example rules the decision oracle knows by heart (see `decision`).
pub const REGISTRY_RULES: &str = include_str!("../examples/registry.rules");

const SHA256: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Requests every parsed rules file is asked about.
const PROBES: [(Option<&str>, &str, &str, &str); 9] = [
    (None, "GET", "/v2/", "docker"),
    (Some("alice"), "GET", "/v2/", "docker"),
    (None, "GET", "/v2/library/alpine/manifests/1", "docker"),
    (Some("alice"), "PUT", "/v2/alice/app/manifests/1", "docker"),
    (Some("bob"), "DELETE", "/v2/_catalog", "docker"),
    (
        Some("bob"),
        "POST",
        "/v2/a/blobs/uploads/?mount=sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855&from=b",
        "docker",
    ),
    (None, "GET", "/v2/library/../secret/manifests/1", "docker"),
    (Some("x"), "BREW", "/v2/library/alpine/manifests/1", "docker"),
    (Some("alice"), "GET", "/files/a/b", "raw"),
];

fn request<'a>(method: &'a str, uri: &'a str, format: &'a str) -> AccessRequest<'a> {
    AccessRequest {
        method,
        uri,
        format,
        content_type: None,
    }
}

/// A rules file either loads or is refused with an error that points into it
/// (`file:line:column`); one that loads can decide any request, and an allow
/// is only ever given to a canonical path and a known method.
pub fn rules_text(text: &str) -> Result<(), String> {
    match Rules::parse("fuzz.rules", text) {
        Err(diagnostics) => {
            let shown = diagnostics.to_string();
            if !shown.contains("--> fuzz.rules:") {
                return Err(format!("error without a position: {shown}"));
            }
            Ok(())
        }
        Ok(rules) => {
            for (user, method, uri, format) in PROBES {
                let decision = decide(&rules, user, &request(method, uri, format));
                if decision.allowed && (canonicalize(uri, format).is_err() || method == "BREW") {
                    return Err(format!("allowed {method} {uri}: {:?}", decision.reason));
                }
            }
            Ok(())
        }
    }
}

/// `canonicalize` accepts only canonical paths (decoded exactly once, no dot
/// segment, `//`, backslash, `%`, `;`, control or non-ASCII character), is a
/// fixed point on its own output, and a docker route lies under its repository.
pub fn canonical(uri: &str) -> Result<(), String> {
    for format in ["docker", "raw"] {
        let Ok(target) = canonicalize(uri, format) else {
            continue;
        };
        let path = &target.path;
        let fail = |what: &str| Err(format!("{uri:?} ({format}) -> {path:?}: {what}"));
        if !path.starts_with('/') {
            return fail("does not start with /");
        }
        if !path.is_ascii() || path.chars().any(char::is_control) {
            return fail("non-ASCII or control character");
        }
        for bad in ["//", "\\", "%", ";", "?", "#"] {
            if path.contains(bad) {
                return fail(&format!("contains {bad}"));
            }
        }
        if path.split('/').any(|s| s == "." || s == "..") {
            return fail("dot segment");
        }
        if path.len() > MAX_PATH_BYTES {
            return fail("too long");
        }
        let raw_path = uri.split('?').next().unwrap_or_default();
        let lower = raw_path.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") {
            return fail("accepted an encoded slash or backslash");
        }
        let once = percent_encoding::percent_decode_str(raw_path).decode_utf8();
        if once.as_deref().ok() != Some(path.as_str()) {
            return fail("not the path decoded exactly once");
        }
        // Decoding again changes nothing: no second reading of the same request.
        match canonicalize(path, format) {
            Ok(again) if again.path == *path && again.docker == target.docker => {}
            other => return fail(&format!("not a fixed point: {other:?}")),
        }
        if let Some(route) = &target.docker {
            if let Some(repository) = route.repository() {
                if !path.starts_with(&format!("/v2/{repository}/")) {
                    return fail(&format!("route {route:?} outside its repository"));
                }
            } else if !matches!(route, DockerRoute::Base | DockerRoute::Catalog) {
                return fail("route without a repository");
            }
        }
        if let Ok(Some(mount)) = target.mount() {
            let source = canonicalize(&mount.source_blob_path(), "docker");
            if !matches!(source, Ok(ref t) if matches!(t.docker, Some(DockerRoute::Blob { .. }))) {
                return fail(&format!("mount source is not a blob route: {source:?}"));
            }
        }
    }
    Ok(())
}

/// The `Authorization` parser: never panics, bounds the length, round-trips
/// Basic credentials, and never shows a password or token in Debug output.
/// (Its errors hold no text from the header at all: their fields are static.)
pub fn authorization(value: &[u8]) -> Result<(), String> {
    let parsed = parse_authorization(Some(value));
    if value.len() > MAX_AUTHORIZATION_LEN && parsed.is_ok() {
        return Err(format!("accepted {} bytes", value.len()));
    }
    match parsed {
        Err(_) | Ok(Credentials::Anonymous) => {}
        Ok(Credentials::Basic { user, password }) => {
            if user.is_empty() || user.chars().any(char::is_control) {
                return Err(format!("bad user name {user:?}"));
            }
            let shown = format!(
                "{:?}",
                Credentials::Basic {
                    user: user.clone(),
                    password: password.clone(),
                }
            );
            let redacted = format!(
                "{:?}",
                Credentials::Basic {
                    user: user.clone(),
                    password: String::new(),
                }
            );
            if password.len() >= 6 && !redacted.contains(&password) && shown.contains(&password) {
                return Err(format!("Debug shows the password: {shown}"));
            }
            use base64::Engine;
            let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            let again = parse_authorization(Some(format!("Basic {encoded}").as_bytes()));
            if again != Ok(Credentials::Basic { user, password }) {
                return Err(format!("Basic credentials do not round-trip: {again:?}"));
            }
        }
        Ok(Credentials::Bearer(token)) => {
            let token68 = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
            if token.is_empty() || !token.chars().all(token68) {
                return Err("Bearer token outside token68".to_string());
            }
            let shown = format!("{:?}", Credentials::Bearer(token.clone()));
            let redacted = format!("{:?}", Credentials::Bearer(String::new()));
            if token.len() >= 6 && !redacted.contains(&token) && shown.contains(&token) {
                return Err(format!("Debug shows the token: {shown}"));
            }
        }
    }
    Ok(())
}

/// Decisions under `examples/registry.rules`, checked against what the file
/// means, written independently of the selector engine: anonymous may only
/// read under `/v2/library/`; carol (a user in no group) may also do anything
/// under `/v2/carol/`, read `/v2/shared/` and ping `/v2/`; alice adds
/// `/v2/alice/` and read/add/edit of `/v2/coolteam/`. A cross-repository mount
/// needs read on its source. Nobody but admins reaches `/v2/_catalog`.
pub fn decision(
    rules: &Rules,
    user: Option<&str>,
    method: &str,
    uri: &str,
    content_type: Option<&str>,
) -> Result<(), String> {
    let access = AccessRequest {
        method,
        uri,
        format: "docker",
        content_type,
    };
    let decision = decide(rules, user, &access);
    if !decision.allowed {
        return Ok(());
    }
    let fail = |what: &str| {
        Err(format!(
            "{user:?} {method} {uri:?} allowed ({:?}): {what}",
            decision.reason
        ))
    };
    let Ok(target) = canonicalize(uri, "docker") else {
        return fail("the path does not canonicalize");
    };
    let path = target.path.as_str();
    let read = matches!(method, "GET" | "HEAD" | "OPTIONS");
    let push = read || matches!(method, "POST" | "PATCH" | "PUT");
    let known = push || method == "DELETE";
    let may = |user: Option<&str>, path: &str, read: bool, push: bool, known: bool| -> bool {
        let public = read && path.starts_with("/v2/library/");
        match user {
            None => public,
            Some(name) => {
                public
                    || path == "/v2/"
                    || (known && path.starts_with(&format!("/v2/{name}/")))
                    || (read && path.starts_with("/v2/shared/"))
                    || (push && name == "alice" && path.starts_with("/v2/coolteam/"))
            }
        }
    };
    if !may(user, path, read, push, known) {
        return fail("not granted by examples/registry.rules");
    }
    if method == "POST" {
        if let Ok(Some(mount)) = target.mount() {
            if !may(user, &mount.source_blob_path(), true, true, true) {
                return fail("mount from a repository the user cannot read");
            }
        }
        if let Some(kind) = content_type {
            let kind = kind.to_ascii_lowercase();
            let upload = matches!(target.docker, Some(DockerRoute::BlobUploadStart { .. }));
            if upload && (kind.contains("form-urlencoded") || kind.contains("multipart/form-data")) {
                return fail("blob upload with a form body");
            }
        }
    }
    Ok(())
}

/// Builds a request for [`decision`] from fuzzer bytes: the first byte picks
/// the user, the second the method, the third whether a form content type is
/// sent; the rest is the URI.
pub fn decision_from_bytes(rules: &Rules, data: &[u8]) -> Result<(), String> {
    let [who, how, form, rest @ ..] = data else {
        return Ok(());
    };
    let Ok(uri) = std::str::from_utf8(rest) else {
        return Ok(());
    };
    let user = [None, Some("carol"), Some("alice")][usize::from(*who) % 3];
    let method = [
        "GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS", "get", "PROPFIND",
    ][usize::from(*how) % 9];
    let content_type = [
        None,
        Some("application/x-www-form-urlencoded"),
        Some("Multipart/Form-Data; boundary=x"),
        Some("application/octet-stream"),
    ][usize::from(*form) % 4];
    decision(rules, user, method, uri, content_type)
}

/// `SHA256` is used by the proptest generators; keep one spelling of it.
pub fn sha256_digest() -> &'static str {
    SHA256
}
