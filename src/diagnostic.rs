//! Errors and warnings that point into a source text: `file:line:column`, the
//! line, a caret under the problem, and what was expected.

use std::fmt;

/// How bad a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The source cannot be used.
    Error,
    /// The source loads but is probably not what was meant.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// A problem found in a source text (a rules file or a lone expression).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// File name as the user gave it; `<expression>` for a lone expression.
    pub file: String,
    /// 1-based line and column (column counted in characters).
    pub line: usize,
    pub column: usize,
    /// The whole source line the problem is on, without its line ending.
    pub line_text: String,
    /// How many characters to underline (at least 1).
    pub width: usize,
    pub message: String,
    /// An extra hint (`did you mean …`, the list of valid words).
    pub help: Option<Box<str>>,
}

impl Diagnostic {
    /// An error for the byte range `start..end` of `source`.
    pub(crate) fn at(file: &str, source: &str, start: usize, end: usize, message: impl Into<String>) -> Self {
        let start = floor_char_boundary(source, start.min(source.len()));
        let end = floor_char_boundary(source, end.clamp(start, source.len()));
        let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = source[start..].find('\n').map_or(source.len(), |i| start + i);
        let line = source[..start].matches('\n').count() + 1;
        let column = source[line_start..start].chars().count() + 1;
        let width = source[start..end.min(line_end).max(start)].chars().count().max(1);
        Diagnostic {
            severity: Severity::Error,
            file: file.to_string(),
            line,
            column,
            line_text: source[line_start..line_end].trim_end_matches('\r').to_string(),
            width,
            message: message.into(),
            help: None,
        }
    }

    /// A warning for the byte range `start..end` of `source`.
    pub(crate) fn warning_at(file: &str, source: &str, start: usize, end: usize, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::at(file, source, start, end, message)
        }
    }

    pub(crate) fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into().into_boxed_str());
        self
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Longest part of a source line shown under an error: a 1 MB literal must
/// not make a 1 MB error message.
const SHOWN_LINE_CHARS: usize = 120;

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let number = self.line.to_string();
        let pad = " ".repeat(number.len());
        writeln!(f, "{}: {}", self.severity, self.message)?;
        writeln!(f, "{pad}--> {}:{}:{}", self.file, self.line, self.column)?;
        writeln!(f, "{pad} |")?;
        // A window of the line around the column, marked with `…` where cut.
        let chars: Vec<char> = self
            .line_text
            .chars()
            .map(|c| if c == '\t' { ' ' } else { c })
            .collect();
        let column = self.column.saturating_sub(1).min(chars.len());
        let start = column.saturating_sub(SHOWN_LINE_CHARS / 3);
        let end = (start + SHOWN_LINE_CHARS).min(chars.len());
        let (head, tail) = (
            if start > 0 { "…" } else { "" },
            if end < chars.len() { "…" } else { "" },
        );
        let shown: String = chars[start..end].iter().collect();
        writeln!(f, "{number} | {head}{shown}{tail}")?;
        let lead: String = chars[start..column]
            .iter()
            .map(|c| if c.is_whitespace() { *c } else { ' ' })
            .collect();
        let width = self.width.min(end.saturating_sub(column)).max(1);
        write!(
            f,
            "{pad} | {}{lead}{}",
            if start > 0 { " " } else { "" },
            "^".repeat(width)
        )?;
        if let Some(help) = &self.help {
            write!(f, "\n{pad} = help: {help}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

/// All the problems of one source, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

/// The closest of `candidates` to `word`, if it is close enough to be a
/// likely typo.
pub(crate) fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= c.chars().count().max(word.chars().count()).div_ceil(3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_points_at_the_column() {
        let src = "selector a = path == \"x\"\ngrant pull on libary to anonymous\n";
        let start = src.find("libary").unwrap();
        let d = Diagnostic::at("r.rules", src, start, start + 6, "unknown selector `libary`");
        assert_eq!((d.line, d.column, d.width), (2, 15, 6));
        let shown = d.to_string();
        assert!(shown.contains("--> r.rules:2:15"), "{shown}");
        assert!(shown.ends_with("  |               ^^^^^^"), "{shown}");
    }

    #[test]
    fn long_lines_are_shown_as_a_window() {
        let src = format!("selector x = path == \"{}\" and pth == \"y\"", "a".repeat(1 << 20));
        let start = src.find("pth").unwrap();
        let d = Diagnostic::at("r.rules", &src, start, start + 3, "unknown variable `pth`");
        let shown = d.to_string();
        assert!(shown.len() < 1000, "{} bytes", shown.len());
        let lines: Vec<&str> = shown.lines().collect();
        let caret = lines[4].chars().position(|c| c == '^').unwrap();
        let shown_line: String = lines[3].chars().skip(caret).collect();
        assert!(shown_line.starts_with("pth"), "{shown}");
    }

    #[test]
    fn warnings_are_shown_as_errors_are() {
        let src = "selector team = path =^ \"/v2/team\"\n";
        let d = Diagnostic::warning_at("r.rules", src, 9, 13, "end a path prefix with `/`").with_help("add `/`");
        assert_eq!(d.severity, Severity::Warning);
        assert_eq!(
            d.to_string(),
            "warning: end a path prefix with `/`\n --> r.rules:1:10\n  |\n1 | selector team = path =^ \"/v2/team\"\n  |          ^^^^\n  = help: add `/`"
        );
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        assert_eq!(did_you_mean("libary", ["library", "coolteam"]), Some("library"));
        assert_eq!(did_you_mean("zzz", ["library", "coolteam"]), None);
    }
}
