//! Decisions on the example rules: hostile requests from
//! `tests/data/attacks.txt` are all denied, and their honest twins allowed
//! (so the corpus would notice a decision engine that denies everything).

use csel_auth::decision::{decide, AccessRequest, Answer, Reason};
use csel_auth::rules::Rules;

use crate::kit::answer;
use crate::kit::cases::{attacks, Attack, CaseFile};

fn example_rules() -> Rules {
    Rules::load(std::path::Path::new("examples/registry.rules")).unwrap()
}

/// Whether the request of `line` (`USER METHOD URI [CONTENT-TYPE]`, as in attacks.txt) is
/// allowed under `rules`, and why.
fn decide_line(rules: &Rules, line: &str) -> (bool, Reason) {
    let attack = Attack::parse("line", line).unwrap_or_else(|e| panic!("{e}"));
    let decision = decide(
        rules,
        attack.user.as_deref(),
        &AccessRequest {
            method: &attack.method,
            uri: &attack.uri,
            format: "docker",
            content_type: attack.content_type.as_deref(),
        },
    );
    (decision.allowed, decision.reason)
}

#[test]
fn hostile_requests_are_all_denied() {
    let rules = example_rules();
    let attacks = attacks();
    let mut allowed = Vec::new();
    for attack in &attacks {
        for token_mode in [false, true] {
            let (decision, answer) = answer(
                &rules,
                attack.user.as_deref(),
                token_mode,
                &attack.method,
                &attack.uri,
                attack.content_type.as_deref(),
            );
            if answer == Answer::Allow {
                let who = attack.user.as_deref().unwrap_or("anonymous");
                allowed.push(format!(
                    "{}: ALLOWED ({}, token mode {token_mode}): {who} {} {}",
                    attack.origin, decision.reason, attack.method, attack.uri
                ));
            }
        }
    }
    assert!(
        allowed.is_empty(),
        "{} of {} hostile requests allowed:\n{}",
        allowed.len(),
        attacks.len(),
        allowed.join("\n")
    );
}

#[test]
fn honest_twins_of_the_attacks_are_allowed() {
    let rules = example_rules();
    let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    for line in [
        "alice GET /v2/coolteam/app/manifests/1.0".to_string(),
        format!("alice GET /v2/coolteam/app/blobs/{digest}"),
        "bob GET /v2/coolteam/app/tags/list".to_string(),
        "anonymous GET /v2/library/alpine/manifests/1".to_string(),
        "admin-parente GET /v2/_catalog?n=1000".to_string(),
        format!("bob POST /v2/coolteam/app/blobs/uploads/?mount={digest}&from=library/alpine"),
        "bob POST /v2/coolteam/app/blobs/uploads/".to_string(),
        "carol PUT /v2/carol/app/manifests/1".to_string(),
    ] {
        let (allowed, reason) = decide_line(&rules, &line);
        assert!(allowed, "{line} was denied: {reason}");
    }
}

/// Every docker extra of docs/requests.md, with the reason it gives.
#[test]
fn docker_extras_give_their_reasons() {
    let rules = example_rules();
    let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let cases = [
        (
            format!("bob POST /v2/coolteam/app/blobs/uploads/?mount={digest}&from=alice/x"),
            "mount source alice/x",
        ),
        (
            format!("bob POST /v2/coolteam/app/blobs/uploads/?mount={digest}&from=library/a&from=x/y"),
            "repeated",
        ),
        (
            "bob POST /v2/coolteam/app/blobs/uploads/ application/x-www-form-urlencoded".to_string(),
            "form body",
        ),
        ("alice GET /v2/_catalog".to_string(), "no grant"),
        ("alice GET /v2/coolteam/../x/manifests/1".to_string(), "refused path"),
        (
            "alice BREW /v2/coolteam/app/manifests/1".to_string(),
            "maps to no action",
        ),
    ];
    for (line, wanted) in cases {
        let (allowed, reason) = decide_line(&rules, &line);
        assert!(!allowed, "{line} was allowed");
        assert!(
            reason.to_string().contains(wanted),
            "{line}: reason `{reason}` lacks `{wanted}`"
        );
    }
}

/// `tests/data/catalog.txt`: which targets reach the catalog.
#[test]
fn only_a_target_that_names_the_catalog_reaches_it() {
    CaseFile::read("catalog.txt").check_all(40, |case| {
        let Some((expected, expression)) = case.line.trim().split_once(' ') else {
            return Err("expected `allow|deny EXPRESSION`".to_string());
        };
        let expected = match expected {
            "allow" => true,
            "deny" => false,
            other => return Err(format!("expected allow or deny, found {other}")),
        };
        let source = format!("grant pull on ({expression}) to anonymous\n");
        let rules = Rules::parse("catalog.rules", &source).map_err(|error| error.to_string())?;
        let mut wrong = Vec::new();
        for uri in ["/v2/_catalog", "/v2/_catalog?n=100&last=a"] {
            let decision = decide(
                &rules,
                None,
                &AccessRequest {
                    method: "GET",
                    uri,
                    format: "docker",
                    content_type: None,
                },
            );
            if decision.allowed != expected {
                let what = if decision.allowed { "allowed" } else { "denied" };
                wrong.push(format!("GET {uri} {what} ({})", decision.reason));
            }
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("; "))
        }
    });
}

/// A blob-upload POST may carry no Content-Type or `application/octet-stream` (any case, with
/// parameters) and nothing else: the registry parses any form body it is told about and reads
/// `from` from it, and nginx >= 1.23 joins repeated Content-Type headers with ", " while the
/// registry reads the first.
#[test]
fn blob_upload_content_types_are_an_allow_list() {
    let rules = example_rules();
    let cases: &[(Option<&str>, bool)] = &[
        (None, true),
        (Some("application/octet-stream"), true),
        (Some("Application/Octet-Stream"), true),
        (Some("APPLICATION/OCTET-STREAM"), true),
        (Some("application/octet-stream; charset=binary"), true),
        (Some("application/octet-stream;x=y"), true),
        (Some(" application/octet-stream "), true),
        (Some("\tapplication/octet-stream ; a=b"), true),
        (Some(""), false),
        (Some(" "), false),
        (
            Some("application/x-www-form-urlencoded, application/octet-stream"),
            false,
        ),
        (
            Some("application/x-www-form-urlencoded,application/octet-stream"),
            false,
        ),
        (
            Some("application/octet-stream, application/x-www-form-urlencoded"),
            false,
        ),
        (Some("application/octet-stream, application/octet-stream"), false),
        (Some("application/octet-stream,"), false),
        (Some("application/octet-stream; x=\"a, b\""), false),
        (Some("application/x-www-form-urlencoded"), false),
        (Some("multipart/form-data; boundary=x"), false),
        (Some("text/plain"), false),
        (Some("application/json"), false),
        (Some("application/octet-streamx"), false),
        (Some("application/octet-stream x"), false),
        (Some("application /octet-stream"), false),
        (Some("application/octet"), false),
        (Some("octet-stream"), false),
        (Some("*/*"), false),
    ];
    let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let mut wrong = Vec::new();
    for (content_type, allowed) in cases {
        for uri in [
            "/v2/coolteam/app/blobs/uploads/".to_string(),
            format!("/v2/coolteam/app/blobs/uploads/?mount={digest}&from=library/alpine"),
            format!("/v2/coolteam/app/blobs/uploads/?digest={digest}"),
        ] {
            let decision = decide(
                &rules,
                Some("bob"),
                &AccessRequest {
                    method: "POST",
                    uri: &uri,
                    format: "docker",
                    content_type: *content_type,
                },
            );
            if decision.allowed != *allowed {
                wrong.push(format!(
                    "POST {uri} with Content-Type {content_type:?}: {} ({})",
                    if decision.allowed { "allowed" } else { "denied" },
                    decision.reason
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{} wrong:\n{}", wrong.len(), wrong.join("\n"));
}
