//! Every integration test of csel-auth, in one test binary: each module is a group, run alone
//! with a filter (`cargo test --test main -- reliability::`). What the groups share is in
//! [`kit`].

mod kit;

mod access_keys;
mod catalog;
mod cli;
mod decisions;
mod e2e;
mod identity;
mod language;
mod ldap;
mod oidc;
mod reliability;
mod request;
mod rules;
mod service;
mod token_realm;

/// With `autotests = false`, a file under `tests/` that no `mod` names is never compiled, and its
/// tests never run: every one must be declared by its parent (`main.rs`, `NAME.rs` or
/// `NAME/mod.rs`).
#[test]
fn every_test_file_is_a_module_of_this_binary() {
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap_or_else(|e| panic!("{}: {e}", dir.display())).path();
            if path.is_dir() && !path.ends_with("data") {
                rust_files(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut files = Vec::new();
    rust_files(&tests, &mut files);
    let mut orphans = Vec::new();
    for file in &files {
        let (Some(dir), Some(stem)) = (file.parent(), file.file_stem().and_then(|s| s.to_str())) else {
            continue;
        };
        if file == &tests.join("main.rs") || stem == "mod" {
            continue;
        }
        let parent = if dir == tests {
            tests.join("main.rs")
        } else if dir.join("mod.rs").exists() {
            dir.join("mod.rs")
        } else {
            dir.with_extension("rs")
        };
        let declared = std::fs::read_to_string(&parent).is_ok_and(|text| {
            text.lines()
                .any(|l| l.trim_start_matches("pub ").trim() == format!("mod {stem};"))
        });
        if !declared {
            orphans.push(format!(
                "{} (declare `mod {stem};` in {})",
                file.display(),
                parent.display()
            ));
        }
    }
    assert!(
        files.len() > 30,
        "only {} test files found under {}",
        files.len(),
        tests.display()
    );
    assert!(
        orphans.is_empty(),
        "test files no module declares:\n{}",
        orphans.join("\n")
    );
}
