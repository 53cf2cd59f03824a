//! Prints an expression back as CSEL text that parses to the same tree.

use std::fmt::{self, Display, Formatter, Write};

use super::{Comparison, Expr, Operand};

impl Display for Expr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Or(children) => join(f, children, " or ", |c| matches!(c, Expr::Or(_))),
            Expr::And(children) => join(f, children, " and ", |c| matches!(c, Expr::Or(_) | Expr::And(_))),
            Expr::Not(inner) => {
                f.write_str("not ")?;
                child(f, inner, matches!(**inner, Expr::Or(_) | Expr::And(_)))
            }
            Expr::Compare(c) => c.fmt(f),
        }
    }
}

/// Parentheses go where the tree's shape would otherwise be lost: an `or`
/// under an `and`, a group under `not`, and a nested group of the same kind.
fn child(f: &mut Formatter<'_>, expr: &Expr, parenthesise: bool) -> fmt::Result {
    if parenthesise {
        write!(f, "({expr})")
    } else {
        expr.fmt(f)
    }
}

fn join(f: &mut Formatter<'_>, children: &[Expr], separator: &str, needs_parens: fn(&Expr) -> bool) -> fmt::Result {
    for (i, c) in children.iter().enumerate() {
        if i > 0 {
            f.write_str(separator)?;
        }
        child(f, c, needs_parens(c))?;
    }
    Ok(())
}

impl Display for Comparison {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.left, self.op.symbol(), self.right)
    }
}

impl Display for Operand {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Variable(v) => f.write_str(v.name()),
            Operand::Text(text) => write_string_literal(f, text),
        }
    }
}

/// Writes `text` as a double-quoted literal whose unescaped value is `text`.
pub(crate) fn write_string_literal(f: &mut impl Write, text: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in text.chars() {
        match c {
            '\\' => f.write_str(r"\\")?,
            '"' => f.write_str("\\\"")?,
            c if c.is_control() => write!(f, "\\u{:04X}", c as u32)?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}
