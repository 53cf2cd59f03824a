//! `=~` patterns: Java regex syntax, as Nexus reads it, run by the linear-time
//! `regex` crate.
//!
//! Java's `String.matches` must match the whole value, and Java's `\d \w \s \b`
//! are ASCII-only; both are preserved by rewriting the pattern before it is
//! compiled. Java features that need backtracking (look-around,
//! back-references, atomic groups, possessive quantifiers) are refused.

use std::sync::{Arc, Mutex};

use lru::LruCache;
use regex::{Regex, RegexBuilder};

/// Compiled size limit: a pattern that would need more is refused at load
/// instead of costing memory on every request.
const COMPILED_SIZE_LIMIT: usize = 4 << 20;
/// Users whose compiled pattern is kept, least recently used dropped first.
#[cfg(not(test))]
const PER_USER_CACHE_LIMIT: usize = 4096;
/// Small in unit tests, where compiling thousands of patterns would be slow.
#[cfg(test)]
const PER_USER_CACHE_LIMIT: usize = 64;

/// Stands in for `${user}` while the pattern is rewritten (a private-use
/// character: it cannot come from a path).
const USER_SLOT: char = '\u{E000}';
pub(crate) const USER_TEMPLATE: &str = "${user}";

/// A compiled `=~` pattern. Patterns that contain `${user}` are compiled
/// once per user name and cached.
#[derive(Debug)]
pub struct Pattern {
    source: String,
    kind: PatternKind,
}

#[derive(Debug)]
enum PatternKind {
    Fixed(Regex),
    PerUser {
        /// The rewritten pattern, split where the user name goes.
        parts: Vec<String>,
        /// Grows as users come rather than reserving [`PER_USER_CACHE_LIMIT`] entries per pattern.
        cache: Mutex<LruCache<String, Arc<Regex>>>,
    },
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}
impl Eq for Pattern {}

/// Why a pattern was refused. `Display` explains it to the person who wrote the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("the pattern contains the reserved character U+E000")]
    ReservedCharacter,
    #[error("look-around is a Java-only feature: csel-auth matches in linear time and does not support it")]
    LookAround,
    #[error("back-references are a Java-only feature: csel-auth matches in linear time and does not support them")]
    BackReference,
    #[error("possessive quantifiers (`*+`, `++`, `?+`) are a Java-only feature: csel-auth does not support them")]
    PossessiveQuantifier,
    #[error("atomic groups `(?>…)` are a Java-only feature: csel-auth does not support them")]
    AtomicGroup,
    #[error("`\\G` is a Java-only feature: csel-auth does not support it")]
    PreviousMatchAnchor,
    /// Not a regular expression at all; the text says where and why.
    #[error("invalid regular expression: {0}")]
    Syntax(String),
    #[error("the pattern is too large once compiled (over {0} bytes): simplify it")]
    TooLarge(usize),
    /// The pattern only fails once a user name is put in for `${user}`.
    #[error("with ${{user}} = `{probe}`: {source}")]
    WithUser {
        probe: &'static str,
        source: Box<PatternError>,
    },
}

impl Pattern {
    /// Compiles a Java-syntax pattern. The error explains what is wrong.
    pub fn new(source: &str) -> Result<Pattern, PatternError> {
        if source.contains(USER_SLOT) {
            return Err(PatternError::ReservedCharacter);
        }
        let slotted = source.replace(USER_TEMPLATE, &USER_SLOT.to_string());
        let rewritten = rewrite_java(&slotted)?;
        if !slotted.contains(USER_SLOT) {
            let regex = build(&rewritten)?;
            return Ok(Pattern {
                source: source.to_string(),
                kind: PatternKind::Fixed(regex),
            });
        }
        let parts: Vec<String> = rewritten.split(USER_SLOT).map(str::to_string).collect();
        // The user name is inserted as an escaped literal, so its content
        // cannot change the pattern's structure; two shapes of name check it.
        for probe in ["x", "Az09._@-"] {
            build(&parts.join(&regex::escape(probe))).map_err(|error| PatternError::WithUser {
                probe,
                source: Box::new(error),
            })?;
        }
        Ok(Pattern {
            source: source.to_string(),
            kind: PatternKind::PerUser {
                parts,
                cache: Mutex::new(LruCache::unbounded()),
            },
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whole-value match. A per-user pattern with no user never matches.
    pub fn matches(&self, value: &str, user: Option<&str>) -> bool {
        match &self.kind {
            PatternKind::Fixed(regex) => regex.is_match(value),
            PatternKind::PerUser { parts, cache } => {
                let Some(user) = user else { return false };
                match self.for_user(parts, cache, user) {
                    Some(regex) => regex.is_match(value),
                    None => false,
                }
            }
        }
    }

    fn for_user(
        &self,
        parts: &[String],
        cache: &Mutex<LruCache<String, Arc<Regex>>>,
        user: &str,
    ) -> Option<Arc<Regex>> {
        if let Ok(mut cache) = cache.lock() {
            if let Some(regex) = cache.get(user) {
                return Some(regex.clone());
            }
        }
        let regex = Arc::new(build(&parts.join(&regex::escape(user))).ok()?);
        if let Ok(mut cache) = cache.lock() {
            while cache.len() >= PER_USER_CACHE_LIMIT {
                cache.pop_lru();
            }
            cache.put(user.to_string(), regex.clone());
        }
        Some(regex)
    }
}

fn build(rewritten: &str) -> Result<Regex, PatternError> {
    RegexBuilder::new(&format!(r"\A(?:{rewritten})\z"))
        .size_limit(COMPILED_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => PatternError::TooLarge(limit),
            other => syntax_error(&other.to_string()),
        })
}

/// Keeps the last line of the regex crate's message: the first lines repeat
/// the (rewritten) pattern, which would confuse more than help.
fn syntax_error(full: &str) -> PatternError {
    let reason = full
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("error:"))
        .unwrap_or(full);
    let reason = reason.trim().trim_start_matches("error:").trim();
    if reason.contains("look-around") {
        PatternError::LookAround
    } else if reason.contains("backreference") {
        PatternError::BackReference
    } else {
        PatternError::Syntax(reason.to_string())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quantified {
    No,
    Yes,
    Lazy,
}

/// The index of the `}` closing a counted repetition (`{2}`, `{2,}`,
/// `{2,5}`) that starts at `start`.
fn counted_repetition_end(chars: &[char], start: usize) -> Option<usize> {
    let close = start + chars[start..].iter().position(|&c| c == '}')?;
    let inside: String = chars[start + 1..close].iter().collect();
    let (low, high) = inside.split_once(',').unwrap_or((&inside, "0"));
    let digits = |s: &str| s.is_empty() || s.chars().all(|c| c.is_ascii_digit());
    (!low.is_empty() && low.chars().all(|c| c.is_ascii_digit()) && digits(high)).then_some(close)
}

const JAVA_DOT: &str = r"[^\n\r\x{85}\x{2028}\x{2029}]";

/// Class contents (without brackets) for Java's ASCII shorthand classes.
fn ascii_class(c: char) -> Option<(&'static str, bool)> {
    Some(match c {
        'd' => ("0-9", false),
        'D' => ("0-9", true),
        'w' => ("0-9A-Za-z_", false),
        'W' => ("0-9A-Za-z_", true),
        's' => (r" \t\n\x0B\f\r", false),
        'S' => (r" \t\n\x0B\f\r", true),
        'h' => (
            r" \t\xA0\x{1680}\x{180E}\x{2000}-\x{200A}\x{202F}\x{205F}\x{3000}",
            false,
        ),
        'H' => (
            r" \t\xA0\x{1680}\x{180E}\x{2000}-\x{200A}\x{202F}\x{205F}\x{3000}",
            true,
        ),
        'v' => (r"\n\x0B\f\r\x{85}\x{2028}\x{2029}", false),
        'V' => (r"\n\x0B\f\r\x{85}\x{2028}\x{2029}", true),
        _ => return None,
    })
}

/// Java's POSIX classes (`\p{Alpha}`), which are US-ASCII only.
fn posix_class(name: &str) -> Option<&'static str> {
    Some(match name {
        "Lower" => "[:lower:]",
        "Upper" => "[:upper:]",
        "ASCII" => "[:ascii:]",
        "Alpha" => "[:alpha:]",
        "Digit" => "[:digit:]",
        "Alnum" => "[:alnum:]",
        "Punct" => "[:punct:]",
        "Graph" => "[:graph:]",
        "Print" => "[:print:]",
        "Blank" => "[:blank:]",
        "Cntrl" => "[:cntrl:]",
        "XDigit" => "[:xdigit:]",
        "Space" => "[:space:]",
        _ => return None,
    })
}

fn rewrite_java(pattern: &str) -> Result<String, PatternError> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut class_depth = 0usize;
    // Java refuses a quantifier on a quantifier (`a**`, `a{2}*`) but allows
    // one lazy `?`; the regex crate would accept them.
    let mut quantified = Quantified::No;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if class_depth == 0 {
            let counted = c == '{' && counted_repetition_end(&chars, i).is_some();
            if matches!(c, '*' | '+' | '?') || counted {
                match (quantified, c) {
                    (Quantified::Yes, '?') => quantified = Quantified::Lazy,
                    (Quantified::Yes, '+') => return Err(PatternError::PossessiveQuantifier),
                    (Quantified::No, _) => {
                        quantified = Quantified::Yes;
                        if let Some(end) = counted.then(|| counted_repetition_end(&chars, i)).flatten() {
                            out.extend(&chars[i..=end]);
                            i = end + 1;
                            continue;
                        }
                    }
                    _ => {
                        return Err(PatternError::Syntax(format!(
                            "dangling meta character `{c}` (a quantifier cannot follow a quantifier)"
                        )))
                    }
                }
            } else {
                quantified = Quantified::No;
            }
        }
        match c {
            '\\' => {
                let Some(&next) = chars.get(i + 1) else {
                    return Err(PatternError::Syntax("the pattern ends with a lone backslash".into()));
                };
                i += 2;
                if let Some((set, negated)) = ascii_class(next) {
                    let caret = if negated { "^" } else { "" };
                    if class_depth > 0 && !negated {
                        out.push_str(set);
                    } else {
                        out.push_str(&format!("[{caret}{set}]"));
                    }
                    continue;
                }
                match next {
                    'b' if class_depth == 0 => out.push_str(r"(?-u:\b)"),
                    'B' if class_depth == 0 => out.push_str(r"(?-u:\B)"),
                    'Z' if class_depth == 0 => out.push_str(r"(?:\n?\z)"),
                    'R' if class_depth == 0 => out.push_str(r"(?:\r\n|[\n\x0B\f\r\x{85}\x{2028}\x{2029}])"),
                    'G' => return Err(PatternError::PreviousMatchAnchor),
                    'k' => return Err(PatternError::BackReference),
                    'Q' => {
                        // Java's quoting: everything up to `\E` is literal.
                        let rest: String = chars[i..].iter().collect();
                        let (literal, consumed) = match rest.find("\\E") {
                            Some(end) => (&rest[..end], end + 2),
                            None => (rest.as_str(), rest.len()),
                        };
                        for lc in literal.chars() {
                            if lc == USER_SLOT {
                                out.push(lc);
                            } else {
                                out.push_str(&regex::escape(&lc.to_string()));
                            }
                        }
                        i += rest[..consumed].chars().count();
                    }
                    'p' | 'P' if chars.get(i) == Some(&'{') => {
                        let close = chars[i..].iter().position(|&x| x == '}').map(|p| i + p);
                        let Some(close) = close else {
                            return Err(PatternError::Syntax("unclosed `\\p{`".into()));
                        };
                        let name: String = chars[i + 1..close].iter().collect();
                        match posix_class(name.strip_prefix("Is").unwrap_or(&name)) {
                            Some(posix) => {
                                let caret = if next == 'P' { "^" } else { "" };
                                if class_depth > 0 && next == 'p' {
                                    out.push_str(posix);
                                } else {
                                    out.push_str(&format!("[{caret}{posix}]"));
                                }
                            }
                            None => {
                                out.push('\\');
                                out.push(next);
                                out.extend(&chars[i..=close]);
                            }
                        }
                        i = close + 1;
                    }
                    digit @ '1'..='9' if class_depth == 0 => {
                        let _ = digit;
                        return Err(PatternError::BackReference);
                    }
                    other => {
                        out.push('\\');
                        out.push(other);
                    }
                }
            }
            '[' => {
                class_depth += 1;
                out.push('[');
                i += 1;
                // A leading `^` negates the class; it is not a literal caret.
                if chars.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
            }
            ']' if class_depth > 0 => {
                class_depth -= 1;
                out.push(']');
                i += 1;
            }
            '.' if class_depth == 0 => {
                out.push_str(JAVA_DOT);
                i += 1;
            }
            '(' if class_depth == 0 && chars.get(i + 1) == Some(&'?') => {
                match chars.get(i + 2) {
                    Some('=') | Some('!') => return Err(PatternError::LookAround),
                    Some('<') if matches!(chars.get(i + 3), Some('=') | Some('!')) => {
                        return Err(PatternError::LookAround)
                    }
                    Some('>') => return Err(PatternError::AtomicGroup),
                    _ => {}
                }
                out.push(c);
                i += 1;
            }
            '*' | '+' | '?' | '}' if class_depth == 0 && chars.get(i + 1) == Some(&'+') => {
                return Err(PatternError::PossessiveQuantifier);
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, value: &str) -> bool {
        Pattern::new(pattern)
            .map(|p| p.matches(value, Some("alice")))
            .unwrap_or_else(|e| panic!("{pattern}: {e}"))
    }

    #[test]
    fn whole_value_match() {
        assert!(!m("/v2/library/", "/v2/library/alpine/manifests/1"));
        assert!(m("/v2/library/.*", "/v2/library/alpine/manifests/1"));
        assert!(m("a|b", "b"));
        assert!(!m("a|b", "ab"));
    }

    #[test]
    fn java_shorthands_are_ascii() {
        assert!(m(r"\d+", "123"));
        assert!(!m(r"\d+", "١٢٣"));
        assert!(!m(r"\w+", "é"));
        assert!(m(r"[\w.]+", "a.b"));
        assert!(m(r"[^\d]+", "abc"));
        assert!(m(r"[\D]+", "abc"));
        assert!(m(r"\p{Alpha}+", "abc"));
        assert!(m(r"(?i)/V2/.*", "/v2/x"));
        assert!(m(r"\Q.*\E", ".*"));
        assert!(!m(r"\Q.*\E", "ab"));
        assert!(!m(".", "\r"));
    }

    #[test]
    fn java_only_features_are_refused() {
        for p in [
            "(?=a)a", "(?!a)b", "(?<=a)b", "(?<!a)b", r"(a)\1", "(?>a)", "a*+", "a++", r"\k<x>",
        ] {
            let err = Pattern::new(p).unwrap_err();
            assert!(err.to_string().contains("Java-only"), "{p}: {err}");
        }
    }

    #[test]
    fn user_template() {
        let p = Pattern::new("/v2/${user}/.*").unwrap();
        assert!(p.matches("/v2/alice/x", Some("alice")));
        assert!(!p.matches("/v2/alice/x", Some("bob")));
        assert!(!p.matches("/v2/alice/x", None));
        let dotted = Pattern::new("/v2/${user}/.*").unwrap();
        assert!(!dotted.matches("/v2/aXb/x", Some("a.b")), "user is a literal");
    }

    #[test]
    fn huge_automaton_is_refused() {
        let err = Pattern::new("(((a{100}){100}){100})").unwrap_err();
        assert!(matches!(err, PatternError::TooLarge(_)), "{err}");
    }

    #[test]
    fn the_per_user_cache_is_bounded_and_keeps_recent_users() {
        let pattern = Pattern::new("/v2/${user}/.*").unwrap();
        for n in 0..PER_USER_CACHE_LIMIT + 10 {
            let user = format!("u{n}");
            assert!(pattern.matches(&format!("/v2/{user}/x"), Some(&user)));
            if n % 10 == 0 {
                assert!(pattern.matches("/v2/u0/x", Some("u0")));
            }
        }
        let PatternKind::PerUser { cache, .. } = &pattern.kind else {
            panic!("not a per-user pattern");
        };
        let cache = cache.lock().unwrap();
        assert_eq!(cache.len(), PER_USER_CACHE_LIMIT);
        assert!(cache.contains("u0"), "a user in use stays");
        assert!(!cache.contains("u1"), "the least recently used goes first");
    }
}
