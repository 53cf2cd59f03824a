//! CSEL, the Nexus content selector language: parse, validate, print and
//! evaluate expressions such as `format == "docker" and path =^ "/v2/library/"`.
//!
//! This module knows nothing of HTTP or files: it evaluates an expression
//! against four strings ([`Facts`]).

mod build;
mod pattern;
mod print;

use std::sync::Arc;

pub(crate) use build::{build_expression, check_nesting, unescape as unescape_literal, BuildContext};
pub use pattern::{Pattern, PatternError};

use crate::diagnostic::Diagnostic;
use crate::grammar::{Grammar, Rule};
use pest::Parser;

/// The values an expression is evaluated against.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub format: &'a str,
    pub path: &'a str,
    pub method: &'a str,
    /// `None` for anonymous requests (`user` then reads `"anonymous"`, and an
    /// expression that uses `${user}` never matches).
    pub user: Option<&'a str>,
}

/// What the variable `user` holds for anonymous requests.
pub(crate) const ANONYMOUS: &str = "anonymous";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variable {
    Format,
    Path,
    Method,
    User,
}

impl Variable {
    pub(crate) const NAMES: [&'static str; 4] = ["format", "path", "method", "user"];

    pub(crate) fn from_name(name: &str) -> Option<Variable> {
        Some(match name {
            "format" => Variable::Format,
            "path" => Variable::Path,
            "method" => Variable::Method,
            "user" => Variable::User,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Variable::Format => "format",
            Variable::Path => "path",
            Variable::Method => "method",
            Variable::User => "user",
        }
    }

    fn value<'a>(self, facts: &Facts<'a>) -> &'a str {
        match self {
            Variable::Format => facts.format,
            Variable::Path => facts.path,
            Variable::Method => facts.method,
            Variable::User => facts.user.unwrap_or(ANONYMOUS),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `==`
    Equals,
    /// `!=`
    NotEquals,
    /// `=~`: the whole value matches a Java-syntax regex.
    Matches,
    /// `=^`: literal prefix.
    StartsWith,
}

impl CompareOp {
    pub(crate) fn symbol(self) -> &'static str {
        match self {
            CompareOp::Equals => "==",
            CompareOp::NotEquals => "!=",
            CompareOp::Matches => "=~",
            CompareOp::StartsWith => "=^",
        }
    }
}

/// One side of a comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    Variable(Variable),
    /// A string literal, escapes already applied; may contain `${user}`.
    Text(String),
}

impl Operand {
    fn uses_user_template(&self) -> bool {
        matches!(self, Operand::Text(t) if t.contains(pattern::USER_TEMPLATE))
    }

    fn resolve<'a>(&'a self, facts: &Facts<'a>) -> std::borrow::Cow<'a, str> {
        match self {
            Operand::Variable(v) => v.value(facts).into(),
            Operand::Text(t) if has_user_template(t) => {
                t.replace(pattern::USER_TEMPLATE, facts.user.unwrap_or_default()).into()
            }
            Operand::Text(t) => t.as_str().into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    pub left: Operand,
    pub op: CompareOp,
    pub right: Operand,
    /// The compiled right side of `=~` (always a literal there).
    pub pattern: Option<Arc<Pattern>>,
}

impl Comparison {
    fn evaluate(&self, facts: &Facts) -> bool {
        if self.op == CompareOp::Matches {
            let left = self.left.resolve(facts);
            return match &self.pattern {
                Some(pattern) => pattern.matches(&left, facts.user),
                None => false,
            };
        }
        // The usual shape, `path =^ "/v2/library/"` or `path =^ "/v2/${user}/"`: nothing to build.
        if let (Operand::Variable(variable), Operand::Text(text)) = (&self.left, &self.right) {
            let value = variable.value(facts);
            if !has_user_template(text) {
                return compare(self.op, value, text);
            }
            let rest = template_prefix_of(text, facts.user.unwrap_or_default(), value);
            return match self.op {
                CompareOp::StartsWith => rest.is_some(),
                CompareOp::NotEquals => rest != Some(""),
                _ => rest == Some(""),
            };
        }
        compare(self.op, &self.left.resolve(facts), &self.right.resolve(facts))
    }
}

impl Comparison {
    /// See [`Expression::names_path`].
    fn names_path(&self, name: &str, positive: bool) -> bool {
        const PATH: Operand = Operand::Variable(Variable::Path);
        fn literal(operand: &Operand) -> Option<&str> {
            match operand {
                Operand::Text(text) => Some(text),
                Operand::Variable(_) => None,
            }
        }
        match self.op {
            CompareOp::Equals | CompareOp::NotEquals => {
                // `!=` is a negated `==`.
                if positive != (self.op == CompareOp::Equals) {
                    return false;
                }
                let text = if self.left == PATH {
                    literal(&self.right)
                } else if self.right == PATH {
                    literal(&self.left)
                } else {
                    None
                };
                text == Some(name)
            }
            CompareOp::StartsWith => positive && self.left == PATH && literal(&self.right) == Some(name),
            CompareOp::Matches => {
                positive
                    && self.left == PATH
                    && literal(&self.right).is_some_and(|regex| {
                        regex.match_indices(name).any(|(at, _)| {
                            !regex[at + name.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                        })
                    })
            }
        }
    }
}

fn compare(op: CompareOp, left: &str, right: &str) -> bool {
    match op {
        CompareOp::Equals => left == right,
        CompareOp::NotEquals => left != right,
        CompareOp::StartsWith => left.starts_with(right),
        // A pattern is compiled at load; without one nothing matches.
        CompareOp::Matches => false,
    }
}

/// Where the first `${user}` of `text` starts. Asked at every evaluation, so a plain byte scan
/// for `$` rather than a substring search, whose set-up costs more than these short texts.
fn find_user_template(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(dollar) = bytes[from..].iter().position(|b| *b == b'$') {
        let at = from + dollar;
        if bytes[at..].starts_with(pattern::USER_TEMPLATE.as_bytes()) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

fn has_user_template(text: &str) -> bool {
    find_user_template(text).is_some()
}

/// When `template` with every `${user}` replaced by `user` is a prefix of `value`: the rest of
/// `value`. Nothing is built.
fn template_prefix_of<'v>(mut template: &str, user: &str, value: &'v str) -> Option<&'v str> {
    let mut rest = value;
    while let Some(at) = find_user_template(template) {
        rest = rest.strip_prefix(&template[..at])?.strip_prefix(user)?;
        template = &template[at + pattern::USER_TEMPLATE.len()..];
    }
    rest.strip_prefix(template)
}

/// The syntax tree. Parentheses leave no node of their own; `Or` and `And`
/// hold two or more children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Compare(Comparison),
}

impl Expr {
    fn evaluate(&self, facts: &Facts) -> bool {
        match self {
            Expr::Or(children) => children.iter().any(|c| c.evaluate(facts)),
            Expr::And(children) => children.iter().all(|c| c.evaluate(facts)),
            Expr::Not(inner) => !inner.evaluate(facts),
            Expr::Compare(comparison) => comparison.evaluate(facts),
        }
    }

    fn uses_user_template(&self) -> bool {
        match self {
            Expr::Or(children) | Expr::And(children) => children.iter().any(Expr::uses_user_template),
            Expr::Not(inner) => inner.uses_user_template(),
            Expr::Compare(c) => c.left.uses_user_template() || c.right.uses_user_template(),
        }
    }

    /// See [`Expression::names_path`]; `positive` is false under an odd number of `not`.
    fn names_path(&self, name: &str, positive: bool) -> bool {
        match self {
            Expr::Or(children) | Expr::And(children) => children.iter().any(|c| c.names_path(name, positive)),
            Expr::Not(inner) => inner.names_path(name, !positive),
            Expr::Compare(comparison) => comparison.names_path(name, positive),
        }
    }

    /// Every comparison, in source order.
    pub(crate) fn comparisons(&self) -> Vec<&Comparison> {
        let mut out = Vec::new();
        self.collect_comparisons(&mut out);
        out
    }

    fn collect_comparisons<'a>(&'a self, out: &mut Vec<&'a Comparison>) {
        match self {
            Expr::Or(children) | Expr::And(children) => children.iter().for_each(|c| c.collect_comparisons(out)),
            Expr::Not(inner) => inner.collect_comparisons(out),
            Expr::Compare(c) => out.push(c),
        }
    }
}

/// A validated expression, ready to evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression {
    root: Expr,
    uses_user: bool,
}

impl Expression {
    pub(crate) fn new(root: Expr) -> Expression {
        let uses_user = root.uses_user_template();
        Expression { root, uses_user }
    }

    /// Parses and validates one expression (the whole text).
    pub fn parse(text: &str) -> Result<Expression, Diagnostic> {
        Self::parse_named("<expression>", text)
    }

    /// As [`Expression::parse`], naming the source in errors.
    pub(crate) fn parse_named(source_name: &str, text: &str) -> Result<Expression, Diagnostic> {
        check_nesting(source_name, text, false)?;
        let ctx = BuildContext::whole(source_name, text);
        let mut pairs = Grammar::parse(Rule::expression, text).map_err(|e| ctx.syntax_error(e))?;
        let Some(expression) = pairs.next() else {
            return Err(Diagnostic::at(source_name, text, 0, 0, "expected an expression"));
        };
        let Some(or_expr) = expression.into_inner().find(|p| p.as_rule() == Rule::or_expr) else {
            return Err(Diagnostic::at(source_name, text, 0, 0, "expected an expression"));
        };
        build_expression(&ctx, or_expr).map(Expression::new)
    }

    /// Does the request described by `facts` match?
    pub fn matches(&self, facts: &Facts) -> bool {
        if self.uses_user && facts.user.is_none() {
            return false;
        }
        self.root.evaluate(facts)
    }

    pub fn root(&self) -> &Expr {
        &self.root
    }

    /// Whether a positive comparison of `path` selects `name` by name: `path == "NAME"` (either
    /// side), `path =^ "NAME"`, or `path =~ "…NAME…"` with NAME written out in the regex and not
    /// followed by a letter, digit or `_`. A comparison under an odd number of `not` (`!=`
    /// counts as one) names nothing: `path != "/v2/_catalogue"` and `not (path == NAME)` select
    /// everything else. Look-alikes (`=^ "/v2/_cat"`, `=~ "/v2/_catalogue|.*"`) name nothing.
    pub(crate) fn names_path(&self, name: &str) -> bool {
        self.root.names_path(name, true)
    }
}

impl std::fmt::Display for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.root.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(path: &str) -> Facts<'_> {
        Facts {
            format: "docker",
            path,
            method: "GET",
            user: Some("alice"),
        }
    }

    #[test]
    fn precedence_and_binds_tighter() {
        let e = Expression::parse(r#"path == "a" or path == "b" and format == "npm""#).unwrap();
        assert!(e.matches(&facts("a")));
        assert!(!e.matches(&facts("b")));
    }

    #[test]
    fn user_template_compares_as_the_replaced_text() {
        for (text, path, expected) in [
            (r#"path =^ "/v2/${user}/""#, "/v2/alice/x", true),
            (r#"path =^ "/v2/${user}/""#, "/v2/alicex/x", false),
            (r#"path =^ "/v2/${user}/""#, "/v2/alic", false),
            (r#"path == "/v2/${user}/${user}""#, "/v2/alice/alice", true),
            (r#"path == "/v2/${user}/${user}""#, "/v2/alice/alice/", false),
            (r#"path != "/v2/${user}/""#, "/v2/alice/", false),
            (r#"path != "/v2/${user}/""#, "/v2/alice/x", true),
            (r#"path == "${user}""#, "alice", true),
            (r#"path =^ "${user}${user}""#, "alicealice", true),
            (r#""/v2/${user}/x" =^ path"#, "/v2/alice/", true),
            (r#""/v2/${user}/x" =^ path"#, "/v2/bob/", false),
        ] {
            let e = Expression::parse(text).unwrap();
            assert_eq!(e.matches(&facts(path)), expected, "{text} on {path}");
        }
    }

    #[test]
    fn anonymous_never_matches_user_template() {
        let e = Expression::parse(r#"not path =^ "/v2/${user}/""#).unwrap();
        let anon = Facts {
            user: None,
            ..facts("/v2/x/")
        };
        assert!(!e.matches(&anon));
        assert!(e.matches(&facts("/v2/x/")));
    }
}
