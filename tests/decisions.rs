//! Decisions on the example rules: hostile requests from
//! `tests/data/attacks.txt` are all denied, and their honest twins allowed
//! (so the corpus would notice a decision engine that denies everything).

use csel_auth::decision::{decide, AccessRequest, Reason};
use csel_auth::rules::Rules;

fn example_rules() -> Rules {
    Rules::load(std::path::Path::new("examples/registry.rules")).unwrap()
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
        match decide_line(&rules, line) {
            Some((false, _)) => {}
            Some((true, reason)) => allowed.push(format!("attacks.txt:{}: ALLOWED ({reason}): {line}", number + 1)),
            None => allowed.push(format!("attacks.txt:{}: malformed line", number + 1)),
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

/// Every docker extra of SPEC §4, with the reason it gives.
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
