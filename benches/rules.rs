//! Parsing and compiling a rules file (what start-up and every reload cost).

mod support;

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use csel_auth::rules::Rules;

fn parse_and_compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("rules_parse");
    group.sample_size(10);
    for grants in [1_000usize, 100_000] {
        let text = support::large_rules(grants, 10_000);
        group.bench_with_input(BenchmarkId::from_parameter(grants), &text, |b, text| {
            b.iter(|| match Rules::parse("bench.rules", black_box(text)) {
                Ok(rules) => rules,
                Err(e) => panic!("{e}"),
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    targets = parse_and_compile
}
criterion_main!(benches);
