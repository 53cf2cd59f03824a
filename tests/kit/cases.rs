//! The case files of `tests/data/`: one reader for all of them. A case is a line that is neither
//! blank nor a comment (`#`), named `file:line` in every failure; each format's runner parses
//! its own lines, with the placeholders and escapes below where its format has them.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// `tests/data/<name>`.
pub fn data_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn read(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => panic!("cannot read {}: {error}", path.display()),
    }
}

/// One case file.
pub struct CaseFile {
    name: String,
    text: String,
}

/// One case: where it is and its line, as written.
pub struct Case<'a> {
    /// `paths.txt:12`
    pub origin: String,
    pub line: &'a str,
}

impl fmt::Display for Case<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.line)
    }
}

impl CaseFile {
    /// `tests/data/<name>`, read now; a missing file fails the test.
    pub fn read(name: &str) -> CaseFile {
        CaseFile {
            name: name.to_string(),
            text: read(&data_path(name)),
        }
    }

    /// Every case, in order.
    pub fn cases(&self) -> impl Iterator<Item = Case<'_>> {
        self.text.lines().enumerate().filter_map(|(index, line)| {
            let trimmed = line.trim();
            (!trimmed.is_empty() && !trimmed.starts_with('#')).then(|| Case {
                origin: format!("{}:{}", self.name, index + 1),
                line,
            })
        })
    }

    /// Runs `check` on every case; fails the test with every failing case and why, or when the
    /// file holds fewer than `at_least` cases (so that a truncated file is noticed).
    pub fn check_all(&self, at_least: usize, mut check: impl FnMut(&Case) -> Result<(), String>) {
        let mut failures = Vec::new();
        let mut count = 0;
        for case in self.cases() {
            count += 1;
            if let Err(why) = check(&case) {
                failures.push(format!("{case}\n    {}", why.replace('\n', "\n    ")));
            }
        }
        assert!(count >= at_least, "only {count} cases in {}", self.name);
        assert!(
            failures.is_empty(),
            "{} of {count} cases of {} failed:\n{}",
            failures.len(),
            self.name,
            failures.join("\n")
        );
    }
}

/// The files of `tests/data/<dir>/`, sorted by name: (name, text).
pub fn files(dir: &str) -> Vec<(String, String)> {
    let path = data_path(dir);
    let entries = match std::fs::read_dir(&path) {
        Ok(entries) => entries,
        Err(error) => panic!("cannot list {}: {error}", path.display()),
    };
    let mut files: Vec<(String, String)> = entries
        .map(|entry| match entry {
            Ok(entry) => (entry.file_name().to_string_lossy().into_owned(), read(&entry.path())),
            Err(error) => panic!("cannot list {}: {error}", path.display()),
        })
        .collect();
    files.sort();
    files
}

/// Expands the placeholders of a field: `{TEXT*N}` is TEXT repeated N times (so long names stay
/// readable in a file), `{NAME}` the value of NAME in `names`.
pub fn expand(field: &str, names: &HashMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = field;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .map(|c| open + c)
            .ok_or_else(|| format!("unclosed `{{` in {field}"))?;
        let inner = &rest[open + 1..close];
        match (names.get(inner), inner.rsplit_once('*')) {
            (Some(value), _) => out.push_str(value),
            (None, Some((text, count))) => {
                let count: usize = count
                    .parse()
                    .map_err(|_| format!("bad repeat count in `{{{inner}}}`"))?;
                out.push_str(&text.repeat(count));
            }
            (None, None) => return Err(format!("`{{{inner}}}` is neither {{TEXT*N}} nor a known name")),
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Decodes the escapes of a field: `\s` (space), `\t`, `\r`, `\n`, `\\` and `\xNN` (a byte).
pub fn unescape(field: &str) -> Result<Vec<u8>, String> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let (byte, used) = match bytes.get(i + 1) {
            Some(b's') => (b' ', 2),
            Some(b't') => (b'\t', 2),
            Some(b'r') => (b'\r', 2),
            Some(b'n') => (b'\n', 2),
            Some(b'\\') => (b'\\', 2),
            Some(b'x') => {
                let hex = bytes.get(i + 2..i + 4).and_then(|h| std::str::from_utf8(h).ok());
                let value = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
                (value.ok_or_else(|| format!("bad \\x escape in {field:?}"))?, 4)
            }
            _ => return Err(format!("bad escape in {field:?}")),
        };
        out.push(byte);
        i += used;
    }
    Ok(out)
}

/// [`unescape`] for a field that must stay text.
pub fn unescape_text(field: &str) -> Result<String, String> {
    String::from_utf8(unescape(field)?).map_err(|_| format!("{field:?} is not UTF-8 once unescaped"))
}

/// One line of `attacks.txt`: `USER METHOD URI [CONTENT-TYPE]`, a request every rules file in
/// the examples must refuse.
#[derive(Clone, Debug)]
pub struct Attack {
    pub origin: String,
    /// `None`: anonymous.
    pub user: Option<String>,
    pub method: String,
    pub uri: String,
    pub content_type: Option<String>,
}

impl Attack {
    /// Parses `USER METHOD URI [CONTENT-TYPE]`. The URI is the rest of the line up to a trailing
    /// content type (it may hold spaces: `/v2/library/.. /coolteam/…`).
    pub fn parse(origin: &str, line: &str) -> Result<Attack, String> {
        let mut parts = line.splitn(3, ' ');
        let (Some(user), Some(method), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("{origin}: expected `USER METHOD URI [CONTENT-TYPE]`"));
        };
        let (uri, content_type) = match rest.rsplit_once(' ') {
            Some((uri, last)) if last.contains('/') && !last.starts_with('/') => (uri, Some(last.to_string())),
            _ => (rest, None),
        };
        Ok(Attack {
            origin: origin.to_string(),
            user: Some(user).filter(|u| *u != "anonymous").map(str::to_string),
            method: method.to_string(),
            uri: uri.to_string(),
            content_type,
        })
    }
}

/// Every attack of `tests/data/attacks.txt`.
pub fn attacks() -> Vec<Attack> {
    let file = CaseFile::read("attacks.txt");
    let attacks: Vec<Attack> = file
        .cases()
        .map(|case| Attack::parse(&case.origin, case.line).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert!(attacks.len() > 400, "only {} attacks in attacks.txt", attacks.len());
    attacks
}

/// The `# expect: error LINE:COLUMN TEXT` check of the data files: one of the
/// diagnostics is at LINE:COLUMN and contains TEXT, and the printed errors
/// point at `NAME:LINE:COLUMN`.
pub fn expect_error_at(
    name: &str,
    errors: Option<&csel_auth::diagnostic::Diagnostics>,
    rest: &str,
) -> Result<(), String> {
    let (position, wanted) = rest.split_once(' ').unwrap_or((rest, ""));
    let Some(errors) = errors else {
        return Err(format!("expected an error at {position}, but it loaded"));
    };
    let found = errors
        .0
        .iter()
        .any(|d| format!("{}:{}", d.line, d.column) == position && d.to_string().contains(wanted));
    if !found {
        return Err(format!(
            "expected an error at {position} containing `{wanted}`, got:\n{errors}"
        ));
    }
    if !errors.to_string().contains(&format!("--> {name}:{position}")) {
        return Err(format!("the error does not show `{name}:{position}`:\n{errors}"));
    }
    Ok(())
}

/// The `# expect: warning LINE TEXT` check: one of `warnings` is on LINE and contains TEXT.
pub fn expect_warning_on<W: std::fmt::Display>(
    warnings: &[W],
    line: &str,
    wanted: &str,
    line_and_message: impl Fn(&W) -> (usize, &str),
) -> Result<(), String> {
    let found = warnings.iter().any(|w| {
        let (at, message) = line_and_message(w);
        at.to_string() == line && message.contains(wanted)
    });
    if found {
        return Ok(());
    }
    let shown: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    Err(format!(
        "expected a warning on line {line} containing `{wanted}`, got {shown:#?}"
    ))
}
