//! Generated rules files for benchmarks and the memory measurement (never committed: they are
//! rebuilt from these functions). Shared by the benches and `examples/gen_rules.rs`.

/// The example rules (`examples/registry.rules`): the grants that concern `alice`, the user the
/// benchmarks ask for. Generated rules contain them too, so her answer never changes with size.
pub const EXAMPLE_RULES: &str = include_str!("../../examples/registry.rules");

/// The example rules plus `grants` grants spread over `groups` groups `team0..`, none of which
/// concern `alice`. Group `team{i}` has the three members `u{i}`, `u{i+1}`, `u{i+2}` (mod
/// `groups`), so every generated user is in three groups; one grant in ten goes to a single
/// user instead of a group. Targets alternate between the group's named selector
/// (`format == "docker" and path =^ "/v2/team{g}/"`) and an inline prefix below it, and one
/// grant in a hundred has an inline regex, so the expression count grows with the grants.
pub fn large_rules(grants: usize, groups: usize) -> String {
    use std::fmt::Write;
    let groups = groups.max(1);
    let mut text = String::with_capacity(grants * 64 + groups * 96 + EXAMPLE_RULES.len());
    text.push_str(EXAMPLE_RULES);
    text.push_str("\n# generated\n");
    for g in 0..groups {
        let _ = writeln!(
            text,
            "selector ns{g} = format == \"docker\" and path =^ \"/v2/team{g}/\""
        );
        let _ = writeln!(
            text,
            "group team{g} = u{}, u{}, u{}",
            g,
            (g + 1) % groups,
            (g + 2) % groups
        );
    }
    const ACTIONS: [&str; 4] = ["pull", "push", "*", "delete"];
    for i in 0..grants {
        let g = i % groups;
        let action = ACTIONS[(i / groups) % ACTIONS.len()];
        let target = if i % 100 == 50 {
            format!("(path =~ \"/v2/team{g}/r{i}/[a-z0-9]+/manifests/.*\")")
        } else if (i / groups).is_multiple_of(2) {
            format!("ns{g}")
        } else {
            format!("(path =^ \"/v2/team{g}/p{i}/\")")
        };
        let subject = if i % 10 == 9 {
            format!("u{g}")
        } else {
            format!("@team{g}")
        };
        let _ = writeln!(text, "grant {action} on {target} to {subject}");
    }
    text
}
