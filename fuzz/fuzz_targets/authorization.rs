//! Any `Authorization` header value: parsed or refused, never echoed.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(problem) = checks::authorization(data) {
        panic!("{problem}");
    }
});
