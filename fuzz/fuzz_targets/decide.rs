//! Any request under examples/registry.rules: nothing is allowed that the file
//! does not grant (an oracle written without the selector engine).
#![no_main]

use std::sync::OnceLock;

use csel_auth::rules::Rules;

#[path = "../checks.rs"]
mod checks;

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| Rules::parse("registry.rules", checks::REGISTRY_RULES).expect("examples/registry.rules loads"))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(problem) = checks::decision_from_bytes(rules(), data) {
        panic!("{problem}");
    }
});
