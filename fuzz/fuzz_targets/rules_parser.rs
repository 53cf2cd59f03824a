//! Any text as a rules file: loads or is refused with a position, never panics,
//! never overflows the stack; a loaded file allows only canonical requests.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(problem) = checks::rules_text(text) {
            panic!("{problem}");
        }
    }
});
