//! Expression evaluation: one compiled CSEL expression against one request.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use csel_auth::csel::{Expression, Facts};

const CASES: [(&str, &str); 6] = [
    ("prefix", r#"path =^ "/v2/library/""#),
    ("format_and_prefix", r#"format == "docker" and path =^ "/v2/library/""#),
    (
        "or_of_three",
        r#"path =^ "/v2/a/" or path =^ "/v2/b/" or (format == "docker" and path =^ "/v2/library/")"#,
    ),
    ("user_template", r#"format == "docker" and path =^ "/v2/${user}/""#),
    (
        "regex",
        r#"format == "docker" and path =~ "/v2/library/[a-z0-9]+/manifests/.*""#,
    ),
    ("regex_with_user", r#"path =~ "/v2/${user}/[a-z0-9]+/.*""#),
];

fn evaluation(c: &mut Criterion) {
    let mut group = c.benchmark_group("csel_eval");
    let library = Facts {
        format: "docker",
        path: "/v2/library/alpine/manifests/3.19",
        method: "GET",
        user: Some("alice"),
    };
    let personal = Facts {
        path: "/v2/alice/app/manifests/1",
        ..library
    };
    for (name, text) in CASES {
        let expression = match Expression::parse(text) {
            Ok(e) => e,
            Err(e) => panic!("{name}: {e}"),
        };
        let facts = if text.contains("${user}") { personal } else { library };
        assert!(expression.matches(&facts), "{name} must match its request");
        group.bench_function(name, |b| b.iter(|| black_box(&expression).matches(black_box(&facts))));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = evaluation
}
criterion_main!(benches);
