//! Decisions on the example rules: hostile requests from
//! `tests/data/attacks.txt` are all denied, and their honest twins allowed
//! (so the corpus would notice a decision engine that denies everything).

use csel_auth::decision::{decide, decide_and_answer, AccessRequest, Answer, Credential, Reason};
use csel_auth::rules::Rules;

fn example_rules() -> Rules {
    Rules::load(std::path::Path::new("examples/registry.rules")).unwrap()
}

/// `USER METHOD URI [CONTENT-TYPE]` decided and answered as the service would in basic mode
/// (`token_mode` false: Basic credentials or none) or in token mode (every subject holds a token).
fn answer_line(rules: &Rules, line: &str, token_mode: bool) -> Option<(Answer, Reason)> {
    let mut fields = line.split(' ');
    let (user, method, uri) = (fields.next()?, fields.next()?, fields.next()?);
    let content_type = fields.next();
    let user = Some(user).filter(|u| *u != "anonymous");
    let credential = match (token_mode, user) {
        (true, _) => Credential::Token,
        (false, Some(_)) => Credential::Basic,
        (false, None) => Credential::None,
    };
    let request = AccessRequest {
        method,
        uri,
        format: "docker",
        content_type,
    };
    let (decision, answer) = decide_and_answer(rules, user, credential, token_mode, &request);
    Some((answer, decision.reason))
}

fn decide_line(rules: &Rules, line: &str) -> Option<(bool, Reason)> {
    let mut fields = line.split(' ');
    let (user, method, uri) = (fields.next()?, fields.next()?, fields.next()?);
    let content_type = fields.next();
    let user = Some(user).filter(|u| *u != "anonymous");
    let decision = decide(
        rules,
        user,
        &AccessRequest {
            method,
            uri,
            format: "docker",
            content_type,
        },
    );
    Some((decision.allowed, decision.reason))
}

#[test]
fn hostile_requests_are_all_denied() {
    let rules = example_rules();
    let text = include_str!("data/attacks.txt");
    let mut allowed = Vec::new();
    let mut count = 0;
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        count += 1;
        for token_mode in [false, true] {
            match answer_line(&rules, line, token_mode) {
                Some((answer, _)) if answer != Answer::Allow => {}
                Some((_, reason)) => allowed.push(format!(
                    "attacks.txt:{}: ALLOWED ({reason}, token mode {token_mode}): {line}",
                    number + 1
                )),
                None => allowed.push(format!("attacks.txt:{}: malformed line", number + 1)),
            }
        }
    }
    assert!(count >= 400, "only {count} attack lines");
    assert!(
        allowed.is_empty(),
        "{} of {count} hostile requests allowed:\n{}",
        allowed.len(),
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
        let (allowed, reason) = decide_line(&rules, &line).unwrap();
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
        let (allowed, reason) = decide_line(&rules, &line).unwrap();
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
    let text = include_str!("data/catalog.txt");
    let mut wrong = Vec::new();
    let mut count = 0;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        count += 1;
        let origin = format!("catalog.txt:{}", number + 1);
        let Some((expected, expression)) = line.split_once(' ') else {
            panic!("{origin}: expected `allow|deny EXPRESSION`");
        };
        let expected = match expected {
            "allow" => true,
            "deny" => false,
            other => panic!("{origin}: expected allow or deny, found {other}"),
        };
        let source = format!("grant pull on ({expression}) to anonymous\n");
        let rules = match Rules::parse("catalog.rules", &source) {
            Ok(rules) => rules,
            Err(error) => panic!("{origin}: {error}"),
        };
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
                wrong.push(format!(
                    "{origin}: GET {uri} {} ({}): {expression}",
                    if decision.allowed { "allowed" } else { "denied" },
                    decision.reason
                ));
            }
        }
    }
    assert!(count >= 40, "only {count} catalog cases");
    assert!(wrong.is_empty(), "{} wrong:\n{}", wrong.len(), wrong.join("\n"));
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
