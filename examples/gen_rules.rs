//! Prints the generated rules the benchmarks use, for measuring the service's memory:
//! `cargo run --release --example gen_rules -- GRANTS [GROUPS] > big.rules` (GROUPS: 10000).

#[path = "../benches/support/mod.rs"]
mod support;

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let (Some(Ok(grants)), groups) = (args.next(), args.next()) else {
        eprintln!("usage: gen_rules GRANTS [GROUPS]");
        std::process::exit(2);
    };
    let groups = match groups {
        None => 10_000,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("GROUPS: {e}");
            std::process::exit(2);
        }
    };
    print!("{}", support::large_rules(grants, groups));
}
