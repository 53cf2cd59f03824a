//! The CSEL language, driven by the cases in `tests/data/expressions.txt`,
//! plus property tests: the parsers never panic, and printing round-trips.

use std::sync::Arc;

use csel_auth::csel::{CompareOp, Comparison, Expr, Expression, Facts, Operand, Pattern, Variable};
use csel_auth::rules::Rules;
use proptest::prelude::*;

use crate::kit::cases::CaseFile;

fn run_case(kind: &str, expression: &str, rest: &str) -> Result<(), String> {
    let mut words = kind.split_whitespace();
    match words.next() {
        Some(expected @ ("true" | "false")) => {
            let parsed = Expression::parse(expression).map_err(|e| format!("did not parse:\n{e}"))?;
            let mut fields = rest.split_whitespace();
            let format = fields.next().unwrap_or("");
            let path = fields.next().unwrap_or("");
            let method = fields.next().unwrap_or("GET");
            let user = fields.next().filter(|u| *u != "-");
            let facts = Facts {
                format,
                path,
                method,
                user,
            };
            let got = parsed.matches(&facts);
            if got.to_string() != expected {
                return Err(format!("evaluated to {got} for {facts:?}"));
            }
        }
        Some("error") => {
            let position = words.next().unwrap_or("?");
            match Expression::parse(expression) {
                Ok(e) => return Err(format!("was accepted (as `{e}`)")),
                Err(d) => {
                    let at = format!("{}:{}", d.line, d.column);
                    let shown = d.to_string();
                    if at != position || !shown.contains(rest) {
                        return Err(format!(
                            "expected an error at {position} containing `{rest}`, got at {at}:\n{shown}"
                        ));
                    }
                }
            }
        }
        Some("print") => {
            let parsed = Expression::parse(expression).map_err(|e| format!("did not parse:\n{e}"))?;
            if parsed.to_string() != rest {
                return Err(format!("printed as `{parsed}`"));
            }
            let again =
                Expression::parse(&parsed.to_string()).map_err(|e| format!("printed form did not parse:\n{e}"))?;
            if again != parsed {
                return Err("printed form parses to another tree".into());
            }
        }
        other => return Err(format!("unknown case kind {other:?}")),
    }
    Ok(())
}

#[test]
fn expression_cases_from_data_file() {
    CaseFile::read("expressions.txt").check_all(150, |case| {
        let parts: Vec<&str> = case.line.trim().splitn(3, ";;").collect();
        let [kind, expression, rest] = parts[..] else {
            return Err("malformed case line: expected KIND ;; EXPRESSION ;; REST".to_string());
        };
        run_case(kind.trim(), expression.trim(), rest.trim())
    });
}

/// The runner must be able to fail: a wrong expectation is reported.
#[test]
fn case_runner_reports_wrong_expectations() {
    assert!(run_case("true", r#"path == "/a""#, "raw /b").is_err());
    assert!(run_case("false", r#"path == "/a""#, "raw /a").is_err());
    assert!(run_case("error 1:2", r#"path == "/a""#, "x").is_err());
    assert!(run_case("error 1:2", "path ==", "expected").is_err());
    assert!(run_case("print", r#"path=="/a""#, r#"path=="/a""#).is_err());
}

fn operand() -> impl Strategy<Value = Operand> {
    prop_oneof![
        prop::sample::select(vec![Variable::Format, Variable::Path, Variable::Method, Variable::User])
            .prop_map(Operand::Variable),
        any::<String>().prop_map(|s| Operand::Text(s.replace('\u{E000}', ""))),
        "[a-z/${}\\\\\"'.]{0,12}".prop_map(Operand::Text),
    ]
}

fn comparison() -> impl Strategy<Value = Expr> {
    let patterns = prop::sample::select(vec!["/v2/.*", "a|b", r"\d+", "/v2/${user}/.*", r"x\.y", ""]);
    prop_oneof![
        (
            operand(),
            prop::sample::select(vec![CompareOp::Equals, CompareOp::NotEquals, CompareOp::StartsWith]),
            operand()
        )
            .prop_map(|(left, op, right)| Expr::Compare(Comparison {
                left,
                op,
                right,
                pattern: None
            })),
        (operand(), patterns).prop_map(|(left, p)| {
            let pattern = Pattern::new(p).map(Arc::new).ok();
            Expr::Compare(Comparison {
                left,
                op: CompareOp::Matches,
                right: Operand::Text(p.to_string()),
                pattern,
            })
        }),
    ]
}

fn expr() -> impl Strategy<Value = Expr> {
    comparison().prop_recursive(5, 40, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::Or),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            inner.prop_map(|e| Expr::Not(Box::new(e))),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn printed_tree_parses_back_to_the_same_tree(tree in expr()) {
        let printed = tree.to_string();
        let parsed = Expression::parse(&printed).map_err(|e| TestCaseError::fail(format!("{printed}\n{e}")))?;
        prop_assert_eq!(parsed.root(), &tree, "{}", printed);
    }

    #[test]
    fn expression_parser_never_panics(text in any::<String>()) {
        let _ = Expression::parse(&text);
    }

    #[test]
    fn expression_parser_never_panics_on_near_misses(text in r#"[ ()!&|=~^<>a-z"'\\$]{0,40}"#) {
        let _ = Expression::parse(&text);
    }

    #[test]
    fn rules_parser_never_panics(text in r#"(selector|group|grant|on|to|[@,*=()"'#\n a-z])*"#) {
        let _ = Rules::parse("fuzz.rules", &text);
    }

    #[test]
    fn rules_parser_never_panics_on_anything(text in any::<String>()) {
        let _ = Rules::parse("fuzz.rules", &text);
    }
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let deep = format!("{}path == \"/a\"{}", "(".repeat(10_000), ")".repeat(10_000));
    let error = Expression::parse(&deep).unwrap_err();
    assert!(error.message.contains("nested deeper"), "{error}");
    let nots = format!("{}path == \"/a\"", "not ".repeat(10_000));
    assert!(Expression::parse(&nots).is_err());
    let rules = format!(
        "grant read on ({}path == \"/a\"{}) to anonymous",
        "(".repeat(10_000),
        ")".repeat(10_000)
    );
    assert!(Rules::parse("deep.rules", &rules).is_err());
}

#[test]
fn long_string_literal_is_fine() {
    let long = "a".repeat(1 << 20);
    let e = Expression::parse(&format!("path == \"/{long}\"")).unwrap();
    assert!(e.matches(&Facts {
        format: "raw",
        path: &format!("/{long}"),
        method: "GET",
        user: None
    }));
}
