//! Rules files as data: each file in `tests/data/rules/` says what it
//! expects in `# expect:` lines — `ok`, `error LINE:COLUMN TEXT` (every one
//! listed must be reported) or `warning LINE TEXT` (from `check`). A file with the line
//! `# options: external-groups` is loaded as with an identity source (LDAP, OIDC) configured.

use csel_auth::diagnostic::Diagnostics;
use csel_auth::rules::{lint, LintOptions, Rules, RulesOptions};

use crate::kit::cases::{expect_error_at, expect_warning_on, files};

/// Checks every `# expect:` line of the rules file `name`; an error starts with `name:LINE` of
/// the expectation that does not hold.
fn check_file(name: &str, text: &str) -> Result<(), String> {
    let expectations: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter_map(|(index, l)| Some((index + 1, l.strip_prefix("# expect: ")?)))
        .collect();
    if expectations.is_empty() {
        return Err(format!("{name}: no `# expect:` line"));
    }
    let options = RulesOptions {
        external_groups: text.lines().any(|l| l == "# options: external-groups"),
    };
    let parsed = Rules::parse_with(name, text, options);
    for (line, expectation) in expectations {
        check_expectation(name, &parsed, expectation).map_err(|why| format!("{name}:{line}: {why}"))?;
    }
    Ok(())
}

/// Whether the rules `parsed` from the file `name` meet one expectation.
fn check_expectation(name: &str, parsed: &Result<Rules, Diagnostics>, expectation: &str) -> Result<(), String> {
    let (kind, rest) = expectation.split_once(' ').unwrap_or((expectation, ""));
    match kind {
        "ok" => {
            if let Err(e) = parsed {
                return Err(format!("expected to load, got:\n{e}"));
            }
        }
        "error" => {
            expect_error_at(name, parsed.as_ref().err(), rest)?;
        }
        "warning" => {
            let (line, wanted) = rest.split_once(' ').unwrap_or((rest, ""));
            let rules = parsed.as_ref().map_err(|e| format!("expected to load, got:\n{e}"))?;
            let warnings = lint(
                rules,
                &LintOptions {
                    token_mode: false,
                    known_users: None,
                },
            );
            expect_warning_on(&warnings, line, wanted, |w| (w.line, w.message.as_str()))?;
        }
        other => return Err(format!("unknown expectation `{other}`")),
    }
    Ok(())
}

#[test]
fn rules_files_from_data_directory() {
    let rules_files = files("rules");
    let failures: Vec<String> = rules_files
        .iter()
        .filter_map(|(name, text)| check_file(name, text).err())
        .map(|why| format!("rules/{}", why.replace('\n', "\n    ")))
        .collect();
    let count = rules_files.len();
    assert!(count >= 20, "only {count} rules files");
    assert!(
        failures.is_empty(),
        "{} of {count} rules files failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_checker_itself_reports_wrong_expectations() {
    assert!(check_file("x.rules", "# expect: ok\ngrant pul on * to a\n").is_err());
    assert!(check_file("x.rules", "# expect: error 2:7 nope\ngrant pull on * to a\n").is_err());
    assert!(check_file("x.rules", "# expect: error 9:9 unknown action\ngrant pul on * to a\n").is_err());
    assert!(check_file("x.rules", "# expect: warning 2 not used\ngrant pull on * to a\n").is_err());
}

#[test]
fn grants_are_indexed_by_subject() {
    let mut text = String::from("selector s = path =^ \"/v2/shared/\"\n");
    for g in 0..200 {
        text.push_str(&format!(
            "group g{g} = u{g}\ngrant * on (path =^ \"/v2/g{g}/\") to @g{g}\n"
        ));
    }
    let rules = Rules::parse("big.rules", &text).unwrap();
    assert_eq!(rules.grants_for(Some("u7")).len(), 1);
    assert_eq!(rules.grants_for(None).len(), 0);
    assert_eq!(rules.groups_of("u7").collect::<Vec<_>>(), vec!["g7"]);
}
