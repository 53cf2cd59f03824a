//! From pest's parse tree to a validated [`Expr`]: variables checked, string
//! escapes applied, regexes compiled, errors placed in the source.

use std::sync::Arc;

use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::Pair;

use super::{CompareOp, Comparison, Expr, Operand, Pattern, Variable};
use crate::diagnostic::{did_you_mean, Diagnostic};
use crate::grammar::Rule;

/// Deeper nesting is refused before parsing: the parser recurses per level.
pub(crate) const MAX_NESTING: usize = 64;

/// Where the text being built comes from, for error messages.
///
/// The parsed text may be a slice of `source` (a rules file is parsed a few statements at a time,
/// so the parse tree of a large file never exists whole): pest's positions are then relative to
/// the slice, which starts at byte `offset` of `source`, on line and column `origin`.
pub(crate) struct BuildContext<'s> {
    pub file: &'s str,
    pub source: &'s str,
    pub offset: usize,
    pub origin: (usize, usize),
}

impl<'s> BuildContext<'s> {
    /// For text parsed whole.
    pub(crate) fn whole(file: &'s str, source: &'s str) -> Self {
        BuildContext {
            file,
            source,
            offset: 0,
            origin: (1, 1),
        }
    }

    pub(crate) fn error_at(&self, pair: &Pair<Rule>, message: impl Into<String>) -> Diagnostic {
        let span = pair.as_span();
        Diagnostic::at(
            self.file,
            self.source,
            self.offset + span.start(),
            self.offset + span.end(),
            message,
        )
    }

    /// 1-based line and column (in characters) of the pair's start in `source`.
    pub(crate) fn line_col(&self, pair: &Pair<Rule>) -> (usize, usize) {
        match pair.line_col() {
            (1, column) => (self.origin.0, self.origin.1 + column - 1),
            (line, column) => (self.origin.0 + line - 1, column),
        }
    }

    /// Turns pest's error into "expected X after `Y`".
    pub(crate) fn syntax_error(&self, error: pest::error::Error<Rule>) -> Diagnostic {
        let position = self.offset
            + match error.location {
                InputLocation::Pos(p) => p,
                InputLocation::Span((s, _)) => s,
            };
        let expected = match &error.variant {
            ErrorVariant::ParsingError { positives, .. } => describe_expected(positives),
            ErrorVariant::CustomError { message } => message.clone(),
        };
        let previous = previous_token(self.source, position);
        let found = found_text(self.source, position);
        let mut message = match previous {
            Some(prev) if matches!(prev, "=~" | "=^") && expected.contains("a string") => {
                format!("expected a string after `{prev}`")
            }
            Some(prev) => format!("expected {expected} after `{prev}`"),
            None => format!("expected {expected}"),
        };
        message.push_str(&format!(", found {found}"));
        let end = position + self.source[position..].chars().next().map_or(0, char::len_utf8);
        let mut diagnostic = Diagnostic::at(self.file, self.source, position, end, message);
        let next_word = self.source[position..].split(|c: char| !c.is_ascii_alphabetic()).next();
        let shouted = |w: &str| matches!(w, "AND" | "OR" | "NOT" | "And" | "Or" | "Not");
        if next_word.is_some_and(shouted) || previous.is_some_and(shouted) {
            diagnostic = diagnostic.with_help("keywords are lower-case: and, or, not");
        }
        diagnostic
    }
}

fn found_text(source: &str, position: usize) -> String {
    let rest = &source[position..];
    match rest.chars().next() {
        None => "the end of the input".into(),
        Some('\n') | Some('\r') => "the end of the line".into(),
        Some(_) => {
            let token: String = rest.chars().take_while(|c| !c.is_whitespace()).take(20).collect();
            format!("`{token}`")
        }
    }
}

fn previous_token(source: &str, position: usize) -> Option<&str> {
    let before = source[..position].trim_end();
    if before.is_empty() {
        return None;
    }
    // Past the whitespace character, which may be more than one byte (U+2000).
    let start = before
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_whitespace())
        .map_or(0, |(i, c)| i + c.len_utf8());
    let token = &before[start..];
    let token = if token.chars().count() > 24 {
        let cut = token.char_indices().rev().nth(23).map_or(0, |(i, _)| i);
        &token[cut..]
    } else {
        token
    };
    Some(token)
}

fn describe_expected(rules: &[Rule]) -> String {
    let mut words: Vec<&str> = Vec::new();
    for rule in rules {
        let word = match rule {
            Rule::string => "a string",
            Rule::variable => "a variable (format, path, method, user)",
            Rule::compare_op => "an operator (==, !=, =~, =^)",
            Rule::or_op | Rule::and_op => "`and` or `or`",
            Rule::not_op
            | Rule::or_expr
            | Rule::and_expr
            | Rule::unary
            | Rule::primary
            | Rule::group
            | Rule::comparison => "an expression",
            Rule::EOI => "the end of the input",
            Rule::kw_selector | Rule::kw_group | Rule::kw_grant => "a statement (selector, group or grant)",
            Rule::kw_on => "`on`",
            Rule::kw_to => "`to`",
            Rule::action | Rule::actions => "an action (read, add, edit, delete, pull, push or *)",
            Rule::everything | Rule::inline_selector | Rule::targets => {
                "a target (a selector name, `(expression)` or *)"
            }
            Rule::bare_name | Rule::member => "a name",
            Rule::group_ref | Rule::subjects => "a subject (anonymous, authenticated, a user or @group)",
            _ => "something else",
        };
        if !words.contains(&word) {
            words.push(word);
        }
    }
    match words.len() {
        0 => "something else".into(),
        1 => words[0].into(),
        n => format!("{} or {}", words[..n - 1].join(", "), words[n - 1]),
    }
}

/// Builds an `or_expr` pair (and everything below it).
pub(crate) fn build_expression(ctx: &BuildContext, pair: Pair<Rule>) -> Result<Expr, Diagnostic> {
    match pair.as_rule() {
        Rule::or_expr => n_ary(ctx, pair, Rule::and_expr, Expr::Or),
        Rule::and_expr => n_ary(ctx, pair, Rule::unary, Expr::And),
        Rule::unary => {
            let mut negations = 0;
            let mut primary = None;
            for child in pair.into_inner() {
                match child.as_rule() {
                    Rule::not_op => negations += 1,
                    _ => primary = Some(child),
                }
            }
            let Some(primary) = primary else {
                return Err(shape_error(ctx));
            };
            if negations > MAX_NESTING {
                return Err(ctx.error_at(&primary, format!("more than {MAX_NESTING} negations in a row")));
            }
            let mut expr = build_expression(ctx, primary)?;
            for _ in 0..negations {
                expr = Expr::Not(Box::new(expr));
            }
            Ok(expr)
        }
        Rule::primary | Rule::group => match pair.into_inner().next() {
            Some(inner) => build_expression(ctx, inner),
            None => Err(shape_error(ctx)),
        },
        Rule::comparison => build_comparison(ctx, pair),
        _ => Err(shape_error(ctx)),
    }
}

/// The grammar guarantees the shapes matched here; should they ever disagree,
/// the text is refused rather than the process stopped.
fn shape_error(ctx: &BuildContext) -> Diagnostic {
    Diagnostic::at(
        ctx.file,
        ctx.source,
        0,
        0,
        "internal error: the csel grammar and its builder disagree",
    )
}

fn n_ary(
    ctx: &BuildContext,
    pair: Pair<Rule>,
    child_rule: Rule,
    make: fn(Vec<Expr>) -> Expr,
) -> Result<Expr, Diagnostic> {
    let mut children = Vec::new();
    for child in pair.into_inner().filter(|p| p.as_rule() == child_rule) {
        children.push(build_expression(ctx, child)?);
    }
    Ok(if children.len() == 1 {
        children.remove(0)
    } else {
        make(children)
    })
}

fn build_comparison(ctx: &BuildContext, pair: Pair<Rule>) -> Result<Expr, Diagnostic> {
    let mut parts = pair.into_inner();
    let (Some(left), Some(op), Some(right)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(shape_error(ctx));
    };
    let op_kind = match op.as_str() {
        "==" | "eq" => CompareOp::Equals,
        "!=" | "ne" => CompareOp::NotEquals,
        "=~" => CompareOp::Matches,
        "=^" => CompareOp::StartsWith,
        _ => return Err(shape_error(ctx)),
    };
    let left_operand = build_operand(ctx, &left)?;
    let right_operand = build_operand(ctx, &right)?;
    let pattern = if op_kind == CompareOp::Matches {
        let Operand::Text(regex) = &right_operand else {
            return Err(ctx.error_at(
                &right,
                "the right side of `=~` must be a string (the pattern is compiled once, at load)",
            ));
        };
        let compiled = Pattern::new(regex).map_err(|why| ctx.error_at(&right, why.to_string()))?;
        Some(Arc::new(compiled))
    } else {
        None
    };
    Ok(Expr::Compare(Comparison {
        left: left_operand,
        op: op_kind,
        right: right_operand,
        pattern,
    }))
}

fn build_operand(ctx: &BuildContext, pair: &Pair<Rule>) -> Result<Operand, Diagnostic> {
    match pair.as_rule() {
        Rule::variable => {
            let name = pair.as_str();
            match Variable::from_name(name) {
                Some(v) => Ok(Operand::Variable(v)),
                None => {
                    let mut d = ctx.error_at(
                        pair,
                        format!("unknown variable `{name}`: the variables are format, path, method, user"),
                    );
                    if let Some(near) = did_you_mean(name, Variable::NAMES) {
                        d = d.with_help(format!("did you mean `{near}`?"));
                    } else if matches!(name, "and" | "or" | "not") {
                        d = d.with_help(format!("`{name}` cannot start a comparison here"));
                    }
                    Err(d)
                }
            }
        }
        Rule::string => {
            let inner = pair.clone().into_inner().next().map_or("", |p| p.as_str());
            Ok(Operand::Text(unescape(inner)))
        }
        _ => Err(shape_error(ctx)),
    }
}

/// Nexus (JEXL) escapes: `\\` is a backslash, `\uXXXX` that character, any
/// other backslash is kept as written; `\"` and `\'` give a quote.
pub(crate) fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.peek().copied() {
            Some('\\') | Some('"') | Some('\'') => {
                out.push(chars.next().unwrap_or('\\'));
            }
            Some('u') => {
                let lookahead: String = chars.clone().skip(1).take(4).collect();
                let code = (lookahead.len() == 4 && lookahead.chars().all(|h| h.is_ascii_hexdigit()))
                    .then(|| u32::from_str_radix(&lookahead, 16).ok())
                    .flatten()
                    .and_then(char::from_u32);
                match code {
                    Some(decoded) => {
                        out.push(decoded);
                        for _ in 0..5 {
                            chars.next();
                        }
                    }
                    None => out.push('\\'),
                }
            }
            _ => out.push('\\'),
        }
    }
    out
}

/// Refuses parentheses nested deeper than [`MAX_NESTING`] before the
/// recursive parser sees them. Strings (and, in rules files, comments) are
/// skipped.
pub(crate) fn check_nesting(file: &str, text: &str, comments: bool) -> Result<(), Diagnostic> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut in_comment = false;
    for (i, c) in text.char_indices() {
        if in_comment {
            in_comment = c != '\n';
            continue;
        }
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q || c == '\n' {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '#' if comments => in_comment = true,
            '(' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(Diagnostic::at(
                        file,
                        text,
                        i,
                        i + 1,
                        format!("parentheses nested deeper than {MAX_NESTING} levels"),
                    ));
                }
            }
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn multibyte_whitespace_before_an_error_is_no_panic() {
        let text = "'.\u{1EEA7}Q\u{2000}&'";
        assert!(crate::csel::Expression::parse(text).is_err());
    }

    #[test]
    fn escapes_follow_nexus() {
        assert_eq!(unescape(r"\."), r"\.");
        assert_eq!(unescape(r"\\."), r"\.");
        assert_eq!(unescape(r"\u0041b"), "Ab");
        assert_eq!(unescape(r#"\""#), "\"");
        assert_eq!(unescape(r"\'"), "'");
        assert_eq!(unescape(r"\uZZ"), r"\uZZ");
        assert_eq!(unescape(r"a\"), r"a\");
    }
}
