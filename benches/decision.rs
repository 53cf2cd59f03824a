//! Whole decisions (path canonicalization, action, grant lookup and evaluation) on the example
//! rules and on generated rules of 10, 1k and 100k grants over 10k groups. `alice`'s grants are
//! the same in every generated file, so her cost must not change with the file's size.

mod support;

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use csel_auth::decision::{decide, AccessRequest};
use csel_auth::rules::Rules;

/// (name, user, method, uri, expected allowed)
type Case = (&'static str, Option<&'static str>, &'static str, &'static str, bool);

const EXAMPLE_CASES: [Case; 6] = [
    ("anonymous_pull", None, "GET", "/v2/library/alpine/manifests/3.19", true),
    ("team_push", Some("alice"), "PUT", "/v2/coolteam/app/manifests/1", true),
    (
        "personal_delete",
        Some("carol"),
        "DELETE",
        "/v2/carol/x/manifests/1",
        true,
    ),
    (
        "admin_blob",
        Some("admin-parente"),
        "GET",
        "/v2/coolteam/app/blobs/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        true,
    ),
    (
        "denied_other_team",
        Some("carol"),
        "GET",
        "/v2/coolteam/app/manifests/1",
        false,
    ),
    ("denied_anonymous", None, "GET", "/v2/coolteam/app/manifests/1", false),
];

fn request(method: &'static str, uri: &'static str) -> AccessRequest<'static> {
    AccessRequest {
        method,
        uri,
        format: "docker",
        content_type: None,
    }
}

fn parse(text: &str) -> Rules {
    match Rules::parse("bench.rules", text) {
        Ok(rules) => rules,
        Err(e) => panic!("{e}"),
    }
}

fn example_rules(c: &mut Criterion) {
    let rules = parse(support::EXAMPLE_RULES);
    let mut group = c.benchmark_group("decide_example");
    for (name, user, method, uri, allowed) in EXAMPLE_CASES {
        let access = request(method, uri);
        assert_eq!(decide(&rules, user, &access).allowed, allowed, "{name}");
        group.bench_function(name, |b| {
            b.iter(|| decide(black_box(&rules), black_box(user), black_box(&access)))
        });
    }
    group.finish();
}

fn large_rules(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide_large");
    // (name, user, method, uri); allowed at every size when the name ends in `allowed`.
    let cases: [(&str, &str, &str, &str); 3] = [
        ("alice_allowed", "alice", "PUT", "/v2/coolteam/app/manifests/1"),
        ("alice_denied", "alice", "GET", "/v2/team5/app/manifests/1"),
        // u5 is in team3, team4 and team5, whose grants grow with the file: every one of them
        // is evaluated before the denial.
        ("u5_denied", "u5", "GET", "/v2/coolteam/app/manifests/1"),
    ];
    for grants in [10usize, 1_000, 100_000] {
        let rules = parse(&support::large_rules(grants, 10_000));
        assert_eq!(rules.grants().len(), grants + 5);
        for (name, user, method, uri) in cases {
            let access = request(method, uri);
            let expected = name.ends_with("allowed");
            assert_eq!(decide(&rules, Some(user), &access).allowed, expected, "{name} {grants}");
            group.bench_with_input(BenchmarkId::new(name, grants), &access, |b, access| {
                b.iter(|| decide(black_box(&rules), black_box(Some(user)), black_box(access)))
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = example_rules, large_rules
}
criterion_main!(benches);
