//! csel-auth's `/metrics` (the Prometheus text format).

use std::collections::HashMap;

/// Every sample, keyed by its name with the labels exactly as rendered
/// (`csel_auth_version{file="rules"}`).
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter_map(|(name, value)| Some((name.to_string(), value.parse().ok()?)))
        .collect()
}
