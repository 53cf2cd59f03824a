//! The catalog filter: a 10 000-repository list kept to what one caller may read, on the example
//! rules and on generated rules of 1 000 grants (examples/registry.rules plus teams). The whole
//! filter runs on every catalog request (the registry's list is cached, the answer is not).

mod support;

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use csel_auth::catalog::visible;
use csel_auth::decision::Subject;
use csel_auth::rules::Rules;

const REPOSITORIES: usize = 10_000;

fn parse(text: &str) -> Rules {
    match Rules::parse("bench.rules", text) {
        Ok(rules) => rules,
        Err(e) => panic!("{e}"),
    }
}

/// 10 000 sorted names over the namespaces the rules speak of and many they do not: the
/// library, coolteam, shared, personal namespaces of a few users, and `team{i}` namespaces.
fn catalog() -> Vec<String> {
    let mut names: Vec<String> = (0..REPOSITORIES)
        .map(|i| match i % 10 {
            0 => format!("library/image-{i}"),
            1 => format!("coolteam/app-{i}"),
            2 => format!("shared/tool-{i}"),
            3 => format!("alice/project-{i}"),
            4 => format!("carol/project-{i}"),
            _ => format!("team{}/service-{i}", i % 500),
        })
        .collect();
    names.sort();
    names
}

fn filter(c: &mut Criterion) {
    let names = catalog();
    let mut group = c.benchmark_group("catalog_filter_10k");
    for (label, text) in [
        ("example_rules", support::EXAMPLE_RULES.to_string()),
        ("1k_grants", support::large_rules(1_000, 500)),
    ] {
        let rules = parse(&text);
        for user in [None, Some("alice"), Some("carol")] {
            let subject = Subject::local(user);
            let shown = visible(&rules, &subject, None, &names).len();
            assert!(shown > 0 && shown < REPOSITORIES, "{user:?} sees {shown}");
            let id = BenchmarkId::new(label, user.unwrap_or("anonymous"));
            group.bench_with_input(id, &subject, |b, subject| {
                b.iter(|| visible(black_box(&rules), black_box(subject), None, black_box(&names)))
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
    targets = filter
}
criterion_main!(benches);
