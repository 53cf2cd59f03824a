//! Warnings for rules that load but are probably not what was meant — the
//! classic mistakes of content selectors and registry auth.

use super::{Action, Rules, Subject, Target};
use crate::csel::{CompareOp, Facts, Operand, Variable};
use crate::diagnostic::Diagnostic;

/// A warning before it is placed in the source.
struct Warning {
    line: usize,
    column: usize,
    message: String,
}

pub struct LintOptions<'a> {
    /// In token mode the `/v2/` ping always gets a challenge, so an
    /// anonymous grant on it does no harm.
    pub token_mode: bool,
    /// The users of the htpasswd file, when one was given.
    pub known_users: Option<&'a dyn Fn(&str) -> bool>,
}

/// The warnings for `rules`, in line order, each a [`Diagnostic`] of severity warning with a
/// caret under the selector, grant or member it is about.
pub fn lint(rules: &Rules, options: &LintOptions) -> Vec<Diagnostic> {
    let mut warnings = Vec::new();

    let mut expressions: Vec<(usize, usize, &crate::csel::Expression)> = Vec::new();
    for s in rules.selectors() {
        expressions.push((s.line, s.column, &s.expression));
    }
    for g in rules.grants() {
        for t in &g.targets {
            if let Target::Inline(e) = t {
                expressions.push((g.line, g.column, e));
            }
        }
    }
    for (line, column, expression) in expressions {
        for c in expression.root().comparisons() {
            if c.left != Operand::Variable(Variable::Path) {
                continue;
            }
            let Operand::Text(text) = &c.right else { continue };
            match c.op {
                CompareOp::StartsWith if !text.ends_with('/') => warnings.push(Warning {
                    line,
                    column,
                    message: format!(
                        "`path =^ \"{text}\"` also matches paths such as `{text}x/…`: end a path prefix with `/`"
                    ),
                }),
                CompareOp::Matches => {
                    if let Some(why) = regex_trap(text) {
                        warnings.push(Warning {
                            line,
                            column,
                            message: format!("`path =~ \"{text}\"` {why}"),
                        });
                    }
                }
                _ => {}
            }
        }
    }

    if !options.token_mode {
        let ping = Facts {
            format: "docker",
            path: "/v2/",
            method: "GET",
            user: None,
        };
        if let Some(grant) = rules.find_grant(None, Action::Read, &ping) {
            warnings.push(Warning {
                line: grant.line,
                column: grant.column,
                message: format!(
                    "anonymous can read `/v2/` through `{}`: docker then never sends credentials (no 401 challenge), so logged-in users are treated as anonymous. Use --token-realm for anonymous pull, or exclude `/v2/` from this grant",
                    grant.text
                ),
            });
        }
    }

    for (i, selector) in rules.selectors().iter().enumerate() {
        let used = rules
            .grants()
            .iter()
            .any(|g| g.targets.iter().any(|t| matches!(t, Target::Selector(s) if *s == i)));
        if !used {
            warnings.push(Warning {
                line: selector.line,
                column: selector.column,
                message: format!("selector `{}` is not used by any grant", selector.name),
            });
        }
    }

    for grant in rules.grants() {
        if grant.actions.contains(Action::Edit) && !grant.actions.contains(Action::Overwrite) {
            warnings.push(Warning {
                line: grant.line,
                column: grant.column,
                message: "`edit` without `overwrite`: this grant creates tags but does not move existing ones (a PUT \
                          of a tag the registry already holds needs `overwrite`; `push` and `*` include it). Add \
                          `overwrite` if moving tags is meant"
                    .to_string(),
            });
        }
    }

    let group_names: Vec<&str> = rules.groups().iter().map(|g| g.name.as_str()).collect();
    for grant in rules.grants() {
        for subject in &grant.subjects {
            if let Subject::User(user) = subject {
                if group_names.contains(&user.as_str()) {
                    warnings.push(Warning {
                        line: grant.line,
                        column: grant.column,
                        message: format!("`{user}` is a user here; the group of that name is written `@{user}`"),
                    });
                }
                if let Some(known) = options.known_users {
                    if !known(user) {
                        warnings.push(Warning {
                            line: grant.line,
                            column: grant.column,
                            message: format!("user `{user}` is not in the htpasswd file"),
                        });
                    }
                }
            }
        }
    }
    if let Some(known) = options.known_users {
        for group in rules.groups() {
            for member in &group.members {
                if !known(&member.name) {
                    warnings.push(Warning {
                        line: member.line,
                        column: member.column,
                        message: format!("`{}` (group `{}`) is not in the htpasswd file", member.name, group.name),
                    });
                }
            }
        }
    }
    warnings.sort_by_key(|w| (w.line, w.column));
    let source = rules.source();
    // One pass over the source for all warnings: a file with many unknown users must not be
    // scanned once per warning.
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(source.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    warnings
        .into_iter()
        .map(|w| {
            let line_start = line_starts
                .get(w.line.saturating_sub(1))
                .copied()
                .unwrap_or(source.len());
            let line_end = source[line_start..].find('\n').map_or(source.len(), |i| line_start + i);
            let line = &source[line_start..line_end];
            let (start, end) = word_at(line, w.column);
            let mut diagnostic = Diagnostic::warning_at(rules.source_name(), line, start, end, w.message);
            diagnostic.line = w.line;
            diagnostic
        })
        .collect()
}

/// The byte range of the word at `column` (1-based, in characters) of `line`: up to the next
/// whitespace, and at least the position itself.
fn word_at(line: &str, column: usize) -> (usize, usize) {
    let start = line
        .char_indices()
        .nth(column.saturating_sub(1))
        .map_or(line.len(), |(offset, _)| offset);
    let word = line[start..].find(char::is_whitespace).unwrap_or(line.len() - start);
    (start, start + word)
}

/// Why a path regex is probably wrong, if it is.
fn regex_trap(pattern: &str) -> Option<String> {
    let body = pattern.trim_start_matches('^');
    let anchored = pattern.starts_with('^') || (pattern.ends_with('$') && !pattern.ends_with("\\$"));
    if anchored && !body.trim_end_matches('$').ends_with(".*") && !has_repetition(body) {
        return Some(
            "must match the whole path (as Java's String.matches): `^` and `$` are implied, and without `.*` it matches one exact path only".into(),
        );
    }
    if !has_repetition(body) && body.ends_with('/') {
        return Some(format!(
            "matches only the exact path `{body}`: `=~` must match the whole path, so add `.*` to match what is below it"
        ));
    }
    let first = body.chars().next();
    if matches!(first, Some(c) if c.is_ascii_alphanumeric()) {
        return Some("can never match: every path starts with `/`".into());
    }
    None
}

fn has_repetition(pattern: &str) -> bool {
    pattern.contains(['*', '+', '?', '{', '|'])
}
