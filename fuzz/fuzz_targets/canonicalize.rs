//! Any request target: the path canonicalizer accepts only canonical paths.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(uri) = std::str::from_utf8(data) {
        if let Err(problem) = checks::canonical(uri) {
            panic!("{problem}");
        }
    }
});
