//! The keys file: one key per line, readable in a diff.
//!
//! ```text
//! # CI of the team app
//! key ci-7f3a2b user=ci-bot created=2026-11-29T05:00:00Z expires=2027-02-27T05:00:00Z actions=pull,push on=(path =^ "/v2/team-app/") description="CI of team app" sha256=3b6f…
//! ```
//!
//! A line is `key`, the id, then `field=value` pairs separated by spaces, in any order. Values
//! are bare (no space, quote or parenthesis), or in double quotes (`\"` and `\\` escape a quote
//! and a backslash), except `on`, whose value is a CSEL expression in parentheses, written as
//! in a grant's inline target. Blank lines and lines starting with `#` are ignored; a `#`
//! after a key's fields is not a comment. Required: `user`, `created`, `expires` (a UTC time
//! or `never`) and `sha256`; optional: `actions`, `on` and `description`.

use std::collections::HashMap;
use std::time::SystemTime;

use super::secret::{self, SecretHash};
use super::{Expiry, Key, KeyScope};
use crate::csel::Expression;
use crate::diagnostic::{did_you_mean, Diagnostic, Diagnostics};
use crate::rules::ActionSet;

/// The fields of a key line, in the order they are written.
pub(super) const FIELDS: [&str; 7] = ["user", "created", "expires", "actions", "on", "description", "sha256"];

const REQUIRED: [&str; 4] = ["user", "created", "expires", "sha256"];

/// What a whole key line looks like, for error messages.
const LINE_SHAPE: &str = "a key line: `key ID user=NAME created=TIME expires=TIME|never [actions=…] [on=(EXPRESSION)] \
                          [description=\"…\"] sha256=HEX`";

/// The longest owner name, as for logins.
pub const MAX_OWNER_BYTES: usize = 256;

/// The most errors reported for one file: a file of garbage gives a readable report.
const MAX_ERRORS: usize = 50;

/// Parses a whole keys file: every key, or every problem (up to [`MAX_ERRORS`]).
pub(super) fn parse_file(file: &str, text: &str) -> Result<Vec<Key>, Diagnostics> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut keys: Vec<Key> = Vec::new();
    let mut errors = Vec::new();
    let mut line_of_id: HashMap<String, usize> = HashMap::new();
    for (index, raw) in text.split('\n').enumerate() {
        if errors.len() >= MAX_ERRORS {
            break;
        }
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let mut parser = LineParser {
            file,
            line,
            number: index + 1,
            pos: 0,
            id_start: 0,
        };
        match parser.key() {
            Ok(None) => {}
            Ok(Some(key)) => match line_of_id.get(&key.id) {
                Some(first) => {
                    let start = parser.id_start;
                    errors.push(parser.error(
                        start,
                        start + key.id.len(),
                        format!("duplicate key id `{}` (first on line {first})", key.id),
                    ));
                }
                None => {
                    line_of_id.insert(key.id.clone(), key.line);
                    keys.push(key);
                }
            },
            Err(d) => errors.push(d),
        }
    }
    if errors.is_empty() {
        Ok(keys)
    } else {
        Err(Diagnostics(errors))
    }
}

/// A field's value and where it is on the line (byte offsets of the value, without quotes or
/// parentheses).
struct Value {
    text: String,
    start: usize,
    end: usize,
    /// Where `name=` starts.
    field_start: usize,
}

struct LineParser<'a> {
    file: &'a str,
    line: &'a str,
    number: usize,
    pos: usize,
    /// Where the key id starts, once read.
    id_start: usize,
}

impl LineParser<'_> {
    fn error(&self, start: usize, end: usize, message: impl Into<String>) -> Diagnostic {
        let mut d = Diagnostic::at(self.file, self.line, start, end, message);
        d.line = self.number;
        d
    }

    fn rest(&self) -> &str {
        &self.line[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos >= self.line.len()
    }

    /// Skips spaces and tabs; whether there were any.
    fn skip_blanks(&mut self) -> bool {
        let before = self.pos;
        self.pos += self.rest().len() - self.rest().trim_start_matches([' ', '\t']).len();
        self.pos > before
    }

    /// The text up to the next blank (or the end), consumed.
    fn word(&mut self) -> (usize, usize) {
        let start = self.pos;
        self.pos += self.rest().find([' ', '\t']).unwrap_or(self.rest().len());
        (start, self.pos)
    }

    /// The key on this line, `None` for a blank or comment line.
    fn key(&mut self) -> Result<Option<Key>, Diagnostic> {
        if let Some((at, c)) = self.line.char_indices().find(|(_, c)| c.is_control() && *c != '\t') {
            return Err(self
                .error(
                    at,
                    at + c.len_utf8(),
                    format!("control character {c:?} in the keys file"),
                )
                .with_help("expected printable text; write the description without control characters"));
        }
        self.skip_blanks();
        if self.at_end() || self.rest().starts_with('#') {
            return Ok(None);
        }
        let (start, end) = self.word();
        if &self.line[start..end] != "key" {
            return Err(self.error(
                start,
                end,
                format!("expected {LINE_SHAPE}, found `{}`", &self.line[start..end]),
            ));
        }
        self.skip_blanks();
        if self.at_end() {
            return Err(self.error(self.pos, self.pos, "expected the key id after `key`"));
        }
        let (id_start, id_end) = self.word();
        self.id_start = id_start;
        let id = &self.line[id_start..id_end];
        secret::check_id(id).map_err(|why| self.error(id_start, id_end, why))?;
        let mut values: HashMap<&'static str, Value> = HashMap::new();
        loop {
            let spaced = self.skip_blanks();
            if self.at_end() {
                break;
            }
            if !spaced {
                let (start, end) = self.word();
                return Err(self.error(start, end, "expected a space before the next field"));
            }
            let (field, value) = self.field()?;
            if let Some(first) = values.get(field) {
                return Err(self.error(
                    value.field_start,
                    value.end,
                    format!(
                        "field `{field}` given twice (first at column {})",
                        self.line[..first.field_start].chars().count() + 1
                    ),
                ));
            }
            values.insert(field, value);
        }
        let missing: Vec<String> = REQUIRED
            .iter()
            .filter(|f| !values.contains_key(**f))
            .map(|f| format!("`{f}=`"))
            .collect();
        if !missing.is_empty() {
            return Err(self
                .error(
                    self.line.len(),
                    self.line.len(),
                    format!("missing {} in key `{id}`", missing.join(", ")),
                )
                .with_help(format!("expected {LINE_SHAPE}")));
        }
        self.build(id, &values).map(Some)
    }

    /// `name=value`, with the value's form depending on the field.
    fn field(&mut self) -> Result<(&'static str, Value), Diagnostic> {
        let start = self.pos;
        let name_len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(self.rest().len());
        let name = &self.line[start..start + name_len];
        if !self.rest()[name_len..].starts_with('=') || name.is_empty() {
            let (start, end) = self.word();
            return Err(self
                .error(
                    start,
                    end,
                    format!("expected `FIELD=VALUE`, found `{}`", &self.line[start..end]),
                )
                .with_help(format!("the fields are {}", FIELDS.join(", "))));
        }
        let Some(field) = FIELDS.iter().copied().find(|f| *f == name) else {
            let mut d = self.error(start, start + name_len, format!("unknown field `{name}`"));
            d = match did_you_mean(name, FIELDS) {
                Some(near) => d.with_help(format!("did you mean `{near}`?")),
                None => d.with_help(format!("the fields are {}", FIELDS.join(", "))),
            };
            return Err(d);
        };
        self.pos += name_len + 1;
        let mut value = if field == "on" {
            self.parenthesized()?
        } else if self.rest().starts_with('"') {
            self.quoted()?
        } else {
            let (start, end) = self.word();
            let text = &self.line[start..end];
            if let Some((at, c)) = text.char_indices().find(|(_, c)| matches!(c, '"' | '(' | ')' | '\\')) {
                return Err(self
                    .error(
                        start + at,
                        start + at + c.len_utf8(),
                        format!("unexpected `{c}` in a bare value"),
                    )
                    .with_help("put the value in double quotes, escaping `\"` and `\\` with `\\`"));
            }
            Value {
                text: text.to_string(),
                start,
                end,
                field_start: 0,
            }
        };
        value.field_start = start;
        if value.text.is_empty() && field != "description" {
            return Err(self.error(start, self.pos, format!("expected a value after `{field}=`")));
        }
        if !self.at_end() && !self.rest().starts_with([' ', '\t']) {
            let (start, end) = self.word();
            return Err(self.error(
                start,
                end,
                format!(
                    "expected a space after the value of `{field}`, found `{}`",
                    &self.line[start..end]
                ),
            ));
        }
        Ok((field, value))
    }

    /// `"…"` with `\"` and `\\`.
    fn quoted(&mut self) -> Result<Value, Diagnostic> {
        let open = self.pos;
        let mut text = String::new();
        let mut chars = self.line[open + 1..].char_indices();
        while let Some((offset, c)) = chars.next() {
            let at = open + 1 + offset;
            match c {
                '"' => {
                    self.pos = at + 1;
                    return Ok(Value {
                        text,
                        start: open + 1,
                        end: at,
                        field_start: 0,
                    });
                }
                '\\' => match chars.next() {
                    Some((_, escaped @ ('"' | '\\'))) => text.push(escaped),
                    other => {
                        let end = other.map_or(at + 1, |(o, e)| open + 1 + o + e.len_utf8());
                        return Err(self
                            .error(at, end, "unknown escape in a quoted value")
                            .with_help("inside quotes, write `\\\"` for a quote and `\\\\` for a backslash"));
                    }
                },
                c => text.push(c),
            }
        }
        Err(self.error(open, open + 1, "the quoted value is not closed: expected `\"`"))
    }

    /// `(EXPRESSION)`: parentheses balanced outside CSEL strings.
    fn parenthesized(&mut self) -> Result<Value, Diagnostic> {
        let open = self.pos;
        if !self.rest().starts_with('(') {
            let (start, end) = self.word();
            return Err(self
                .error(
                    open,
                    end.max(start + 1),
                    "expected `(` and a CSEL expression after `on=`",
                )
                .with_help("write the expression in parentheses, as in a grant: on=(path =^ \"/v2/team/\")"));
        }
        let mut depth = 0usize;
        let mut quote: Option<char> = None;
        let mut chars = self.rest().char_indices();
        while let Some((offset, c)) = chars.next() {
            match quote {
                Some(q) => {
                    if c == '\\' {
                        chars.next();
                    } else if c == q {
                        quote = None;
                    }
                }
                None => match c {
                    '"' | '\'' => quote = Some(c),
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            let close = open + offset;
                            self.pos = close + 1;
                            return Ok(Value {
                                text: self.line[open + 1..close].to_string(),
                                start: open + 1,
                                end: close,
                                field_start: 0,
                            });
                        }
                    }
                    _ => {}
                },
            }
        }
        Err(self
            .error(open, open + 1, "the expression of `on=` is not closed: expected `)`")
            .with_help("strings in the expression must be closed too"))
    }

    fn build(&self, id: &str, values: &HashMap<&'static str, Value>) -> Result<Key, Diagnostic> {
        let value = |field: &str| values.get(field);
        let at = |v: &Value, message: String| self.error(v.start, v.end, message);

        let owner = value("user").map_or(Ok(String::new()), |v| {
            check_owner(&v.text).map(|()| v.text.clone()).map_err(|why| at(v, why))
        })?;
        let created = match value("created") {
            Some(v) => parse_time(&v.text).map_err(|why| at(v, why))?,
            None => SystemTime::UNIX_EPOCH,
        };
        let expires = match value("expires") {
            Some(v) => {
                let expires = parse_expiry(&v.text).map_err(|why| at(v, why))?;
                if let Expiry::At(when) = expires {
                    if when <= created {
                        return Err(at(
                            v,
                            format!(
                                "the key expires at {} but was created at {}: expected an expiry after the creation",
                                v.text,
                                format_time(created)
                            ),
                        ));
                    }
                }
                expires
            }
            None => Expiry::Never,
        };
        let actions = match value("actions") {
            None => None,
            Some(v) => {
                let mut set = ActionSet::default();
                let mut offset = v.start;
                for word in v.text.split(',') {
                    match ActionSet::from_word(word) {
                        Some(more) => set = set.union(more),
                        None => {
                            let mut d = self.error(
                                offset,
                                offset + word.len(),
                                if word.is_empty() {
                                    "expected an action word between the commas".to_string()
                                } else {
                                    format!("unknown action `{word}`: the actions are {}", ActionSet::ACTION_WORDS)
                                },
                            );
                            if let Some(near) = did_you_mean(word, ActionSet::WORDS) {
                                d = d.with_help(format!("did you mean `{near}`?"));
                            }
                            return Err(d);
                        }
                    }
                    offset += word.len() + 1;
                }
                Some((set, v.text.clone()))
            }
        };
        let on = match value("on") {
            None => None,
            Some(v) => Some((self.expression(v)?, v.text.trim().to_string())),
        };
        let description = value("description").map(|v| v.text.clone());
        let hash = match value("sha256") {
            Some(v) => secret::hash_from_hex(&v.text).ok_or_else(|| {
                at(
                    v,
                    format!(
                        "`{}` is not a SHA-256: expected 64 hexadecimal digits",
                        v.text.chars().take(80).collect::<String>()
                    ),
                )
            })?,
            None => [0; 32],
        };
        Ok(Key {
            id: id.to_string(),
            owner,
            created,
            expires,
            scope: KeyScope::new(actions, on),
            description,
            line: self.number,
            hash,
        })
    }

    /// Parses the text of `on=(…)` with the csel module, placing its errors on this line.
    fn expression(&self, v: &Value) -> Result<Expression, Diagnostic> {
        Expression::parse_named(self.file, &v.text).map_err(|mut d| {
            // The expression is one line of the file: its columns move by the text before it.
            d.column += self.line[..v.start].chars().count();
            d.line = self.number;
            d.line_text = self.line.to_string();
            d.message = d
                .message
                .replace("the end of the input", "the `)` that closes `on=(…)`");
            d
        })
    }
}

/// Why `name` cannot own a key, if it cannot.
pub fn check_owner(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the user name is empty".into());
    }
    if name.len() > MAX_OWNER_BYTES {
        return Err(format!("the user name is longer than {MAX_OWNER_BYTES} bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("the user name {name:?} contains a control character"));
    }
    if name != name.trim() {
        return Err(format!("the user name {name:?} starts or ends with whitespace"));
    }
    if name == crate::csel::ANONYMOUS {
        return Err("`anonymous` stands for requests without credentials: a key needs a user".into());
    }
    Ok(())
}

/// `2026-11-29T05:00:00Z`: RFC 3339, in UTC.
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339(text).map_err(|_| {
        format!(
            "`{}` is not a UTC time: expected a time such as 2026-11-29T05:00:00Z",
            text.chars().take(80).collect::<String>()
        )
    })
}

fn parse_expiry(text: &str) -> Result<Expiry, String> {
    if text == "never" {
        return Ok(Expiry::Never);
    }
    parse_time(text)
        .map(Expiry::At)
        .map_err(|why| format!("{why}, or `never`"))
}

/// The last second RFC 3339 times can show (the end of year 9999).
const LAST_SECOND: u64 = 253_402_300_799;

/// Whether `time` can be written in the file (between 1970 and the end of year 9999).
pub(super) fn in_range(time: SystemTime) -> bool {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .is_ok_and(|d| d.as_secs() <= LAST_SECOND)
}

/// `2026-11-29T05:00:00Z`; times the format cannot show (a clock before 1970) are shown as
/// the nearest one it can.
pub fn format_time(time: SystemTime) -> String {
    let shown = match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) if d.as_secs() <= LAST_SECOND => time,
        Ok(_) => SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(LAST_SECOND),
        Err(_) => SystemTime::UNIX_EPOCH,
    };
    humantime::format_rfc3339_seconds(shown).to_string()
}

/// A value as written in the file: bare when it can be, quoted otherwise.
fn value_text(value: &str) -> String {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && !matches!(c, '"' | '(' | ')' | '\\'));
    if bare {
        value.to_string()
    } else {
        quoted_text(value)
    }
}

fn quoted_text(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

/// What a new key line holds.
pub(super) struct NewLine<'a> {
    pub id: &'a str,
    pub owner: &'a str,
    pub created: SystemTime,
    pub expires: Expiry,
    pub actions: Option<&'a str>,
    pub on: Option<&'a str>,
    pub description: Option<&'a str>,
    pub hash: &'a SecretHash,
}

/// The line for a new key, without the line ending.
pub(super) fn render(new: &NewLine) -> String {
    let mut line = format!(
        "key {} user={} created={} expires={}",
        new.id,
        value_text(new.owner),
        format_time(new.created),
        match new.expires {
            Expiry::Never => "never".to_string(),
            Expiry::At(when) => format_time(when),
        }
    );
    if let Some(actions) = new.actions {
        line.push_str(&format!(" actions={actions}"));
    }
    if let Some(on) = new.on {
        line.push_str(&format!(" on=({})", on.trim()));
    }
    if let Some(description) = new.description {
        line.push_str(&format!(" description={}", quoted_text(description)));
    }
    line.push_str(&format!(" sha256={}", secret::to_hex(new.hash)));
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const HASH: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn line(fields: &str) -> String {
        format!("key k1 user=ci created=2026-11-29T05:00:00Z expires=2027-02-27T05:00:00Z {fields} sha256={HASH}")
    }

    fn error(text: &str) -> Diagnostic {
        match parse_file("keys", text) {
            Ok(_) => panic!("expected an error for {text:?}"),
            Err(mut e) => e.0.remove(0),
        }
    }

    #[test]
    fn a_full_line_parses() {
        let text = format!(
            "# a comment\n\n   \t\n{}\r\n",
            line("actions=pull,push on=(path =^ \"/v2/team-app/\" and method != \"DELETE\") description=\"CI of \\\"team\\\" app \\\\ #1\"")
        );
        let keys = parse_file("keys", &text).unwrap();
        assert_eq!(keys.len(), 1);
        let key = &keys[0];
        assert_eq!((key.id.as_str(), key.owner.as_str(), key.line), ("k1", "ci", 4));
        assert_eq!(key.created, parse_time("2026-11-29T05:00:00Z").unwrap());
        assert_eq!(
            key.expires,
            Expiry::At(SystemTime::UNIX_EPOCH + Duration::from_secs(1_803_704_400))
        );
        assert_eq!(key.scope.actions_text(), "pull,push");
        assert_eq!(
            key.scope.on_text(),
            Some("path =^ \"/v2/team-app/\" and method != \"DELETE\"")
        );
        assert_eq!(key.description.as_deref(), Some("CI of \"team\" app \\ #1"));
        assert_eq!(secret::to_hex(&key.hash), HASH);
    }

    #[test]
    fn fields_come_in_any_order_and_the_optional_ones_may_be_absent() {
        let text = format!("key k2 sha256={HASH} expires=never created=2026-11-29T05:00:00Z user=\"Ann Smith\"");
        let keys = parse_file("keys", &text).unwrap();
        assert_eq!(keys[0].owner, "Ann Smith");
        assert_eq!(keys[0].expires, Expiry::Never);
        assert_eq!(keys[0].scope.actions_text(), "*");
        assert!(keys[0].scope.on.is_none());
    }

    #[test]
    fn rendered_lines_parse_back_to_the_same_key() {
        let hash = secret::hash("csk_k9_x");
        let created = parse_time("2026-01-02T03:04:05Z").unwrap();
        let rendered = render(&NewLine {
            id: "k9",
            owner: "o'b \"quoted\" \\ name",
            created,
            expires: Expiry::At(created + Duration::from_secs(90 * 86_400)),
            actions: Some("read,delete"),
            on: Some("path =~ \"/v2/(a|b)/.*\" or path == ')'"),
            description: Some("with \"quotes\", (parens) and # hash"),
            hash: &hash,
        });
        let keys = parse_file("keys", &rendered).unwrap_or_else(|e| panic!("{e}\n{rendered}"));
        let key = &keys[0];
        assert_eq!(key.owner, "o'b \"quoted\" \\ name");
        assert_eq!(key.scope.on_text(), Some("path =~ \"/v2/(a|b)/.*\" or path == ')'"));
        assert_eq!(key.description.as_deref(), Some("with \"quotes\", (parens) and # hash"));
        assert_eq!(key.hash, hash);
        assert_eq!(format_time(key.created), "2026-01-02T03:04:05Z");
        assert_eq!(
            rendered,
            format!(
                "key k9 user=\"o'b \\\"quoted\\\" \\\\ name\" created=2026-01-02T03:04:05Z expires=2026-04-02T03:04:05Z \
                 actions=read,delete on=(path =~ \"/v2/(a|b)/.*\" or path == ')') description=\"with \\\"quotes\\\", \
                 (parens) and # hash\" sha256={}",
                secret::to_hex(&hash)
            )
        );
    }

    #[test]
    fn errors_point_at_the_field() {
        let text = line("actions=pull,pish");
        let d = error(&text);
        assert_eq!(
            (d.line, d.column, d.width),
            (1, text.find("pish").unwrap() + 1, 4),
            "{d}"
        );
        assert!(d.message.contains("unknown action `pish`"), "{d}");
        assert_eq!(d.help.as_deref(), Some("did you mean `push`?"));

        let text = line("scope=x");
        let column = text.find("scope").unwrap() + 1;
        let d = error(&format!("\n{text}"));
        assert_eq!((d.line, d.column), (2, column), "{d}");
        assert!(d.message.contains("unknown field `scope`"), "{d}");
        assert!(d.to_string().contains(&format!("--> keys:2:{column}")), "{d}");

        let d = error(&line("descripton=\"x\""));
        assert_eq!(d.help.as_deref(), Some("did you mean `description`?"), "{d}");
    }

    #[test]
    fn expression_errors_are_placed_inside_the_line() {
        let text = line("on=(path =^ \"/v2/x/\" and pth == \"y\")");
        let d = error(&text);
        let column = text.find("pth").unwrap() + 1;
        assert_eq!((d.line, d.column, d.width), (1, column, 3), "{d}");
        assert!(d.message.contains("unknown variable `pth`"), "{d}");
        assert_eq!(d.line_text, text);

        let d = error(&line("on=(path ==)"));
        assert!(d.message.contains("the `)` that closes `on=(…)`"), "{d}");
        let d = error(&line("on=(path =~ \"(\")"));
        assert!(d.message.contains("regular expression"), "{d}");
        let d = error(&line("on=(path == \"x)"));
        assert!(d.message.contains("not closed: expected `)`"), "{d}");
        let d = error(&line("on=path"));
        assert!(d.message.contains("expected `(`"), "{d}");
        let d = error(&line("on=()"));
        assert!(d.message.contains("expected"), "{d}");
    }

    #[test]
    fn bad_lines_say_what_was_expected() {
        for (text, wanted) in [
            ("grant pull on * to ci".to_string(), "expected a key line"),
            ("key".to_string(), "expected the key id"),
            ("key a_b".to_string(), "no `_`"),
            (
                "key k1 user=ci".to_string(),
                "missing `created=`, `expires=`, `sha256=` in key `k1`",
            ),
            (line("user=again"), "field `user` given twice (first at column 8)"),
            (line("description=\"open"), "not closed: expected `\"`"),
            (line("description=\"a\\n\""), "unknown escape"),
            (
                line("description=\"a\"b"),
                "expected a space after the value of `description`",
            ),
            (line("actions="), "expected a value after `actions=`"),
            (line("actions=pull,,push"), "expected an action word between the commas"),
            (line("description=a\"b"), "unexpected `\"` in a bare value"),
            (line("flag"), "expected `FIELD=VALUE`, found `flag`"),
            (line("x\u{7}=1"), "control character"),
            (
                line("").replace("user=ci", "user=anonymous"),
                "requests without credentials",
            ),
            (
                line("").replace("created=2026-11-29T05:00:00Z", "created=yesterday"),
                "not a UTC time",
            ),
            (
                line("").replace("expires=2027-02-27T05:00:00Z", "expires=2027-02-27"),
                "expected a time such as 2026-11-29T05:00:00Z, or `never`",
            ),
            (
                line("").replace("expires=2027-02-27T05:00:00Z", "expires=2026-11-29T04:00:00Z"),
                "expected an expiry after the creation",
            ),
            (line("").replace(HASH, "abc"), "expected 64 hexadecimal digits"),
        ] {
            let d = error(&text);
            assert!(d.to_string().contains(wanted), "{text}\nwanted `{wanted}` in:\n{d}");
            assert_eq!(d.line, 1);
        }
    }

    #[test]
    fn duplicate_ids_are_errors_naming_the_first_line() {
        let text = format!("{}\n# between\n{}\n", line(""), line(""));
        let d = error(&text);
        assert_eq!((d.line, d.column), (3, 5), "{d}");
        assert!(d.message.contains("duplicate key id `k1` (first on line 1)"), "{d}");
    }

    #[test]
    fn every_bad_line_is_reported_up_to_a_limit() {
        let text = "nonsense\n".repeat(MAX_ERRORS * 3);
        let errors = parse_file("keys", &text).unwrap_err();
        assert_eq!(errors.0.len(), MAX_ERRORS);
        assert_eq!(errors.0[1].line, 2);
    }
}
