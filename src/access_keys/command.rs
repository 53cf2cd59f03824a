//! `csel-auth access-key create|list|revoke`, and the keys-file part of `csel-auth check`.
//!
//! Exit statuses: 0 done, 1 refused or failed (the message says why; nothing was written).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};

use super::format::{self, NewLine};
use super::{file, secret, AccessKeys, Expiry};
use crate::csel::Expression;
use crate::diagnostic::did_you_mean;
use crate::rules::ActionSet;

const EXIT_OK: u8 = 0;
const EXIT_FAILED: u8 = 1;

/// The longest description accepted: a line of a file, not a document.
const MAX_DESCRIPTION_CHARS: usize = 500;

/// How many random ids to try before giving up (a collision of 48-bit ids is already rare).
const ID_ATTEMPTS: usize = 16;

#[derive(Args)]
pub struct AccessKeyArgs {
    #[command(subcommand)]
    command: AccessKeyCommand,
}

#[derive(Subcommand)]
enum AccessKeyCommand {
    /// Create a key: print its secret (once) and append its line to the keys file.
    Create(CreateArgs),
    /// List the keys: owner, id, times, scope, description (never a secret or hash).
    List(ListArgs),
    /// Remove a key from the keys file.
    Revoke(RevokeArgs),
}

#[derive(Args)]
struct CreateArgs {
    /// The keys file; created (mode 0600) if missing. Only the new line is written.
    #[arg(long)]
    file: PathBuf,
    /// The user the key logs in as; it is given with the key (`docker login -u USER`).
    #[arg(long)]
    user: String,
    /// When the key stops working: a duration from now (90d, 12h, 1y), a UTC time
    /// (2027-02-27T05:00:00Z), or `never` (which `check` warns about).
    #[arg(long, default_value = "90d")]
    expires: String,
    /// Limit the key to these actions (comma-separated): read, add, edit, delete, pull, push,
    /// * [default: whatever the rules allow the user]
    #[arg(long, value_delimiter = ',')]
    actions: Vec<String>,
    /// Limit the key to requests matching this CSEL expression, e.g.
    /// 'path =^ "/v2/team-app/"' [default: whatever the rules allow the user]
    #[arg(long)]
    on: Option<String>,
    /// What the key is for, shown by `list`.
    #[arg(long)]
    description: Option<String>,
    /// The key's id: ASCII letters, digits and `-` [default: 12 random hexadecimal digits]
    #[arg(long)]
    id: Option<String>,
}

#[derive(Args)]
struct ListArgs {
    /// The keys file.
    #[arg(long)]
    file: PathBuf,
}

#[derive(Args)]
struct RevokeArgs {
    /// The keys file.
    #[arg(long)]
    file: PathBuf,
    /// The id of the key to remove (see `list`).
    #[arg(long)]
    id: String,
}

/// Runs an `access-key` command; the exit status.
pub fn run(args: &AccessKeyArgs) -> u8 {
    let result = match &args.command {
        AccessKeyCommand::Create(args) => create(args),
        AccessKeyCommand::List(args) => list(args),
        AccessKeyCommand::Revoke(args) => revoke(args),
    };
    match result {
        Ok(()) => EXIT_OK,
        Err(message) => {
            eprintln!("{message}");
            EXIT_FAILED
        }
    }
}

fn warn_about_mode(path: &Path) {
    for warning in file::mode_warnings(path) {
        eprintln!("warning: {warning}");
    }
}

/// `--expires`: a duration from `now`, a UTC time, or `never`.
fn expiry(text: &str, now: SystemTime) -> Result<Expiry, String> {
    if text == "never" {
        return Ok(Expiry::Never);
    }
    if !format::in_range(now) {
        return Err("error: this machine's clock is not set (before 1970 or after 9999)".into());
    }
    let when = match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => return Err("error: --expires: a key must work for a while".into()),
        Ok(duration) => now
            .checked_add(duration)
            .ok_or_else(|| format!("error: --expires: `{text}` is too far in the future"))?,
        Err(_) => format::parse_time(text).map_err(|_| {
            format!(
                "error: --expires: `{text}` is not a duration (90d, 12h), a UTC time (2027-02-27T05:00:00Z) or `never`"
            )
        })?,
    };
    // Whole seconds, as the file writes them.
    let when = when
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs()))
        .unwrap_or(when);
    if when <= now {
        return Err(format!(
            "error: --expires: {} is already past",
            format::format_time(when)
        ));
    }
    if !format::in_range(when) {
        return Err(format!("error: --expires: `{text}` is too far in the future"));
    }
    Ok(Expiry::At(when))
}

/// `--actions`: the words, checked, without repeats, comma-separated.
fn action_words(words: &[String]) -> Result<Option<String>, String> {
    if words.is_empty() {
        return Ok(None);
    }
    let mut kept: Vec<&str> = Vec::new();
    for word in words.iter().map(|w| w.trim()) {
        if ActionSet::from_word(word).is_none() {
            let mut message = format!(
                "error: --actions: unknown action `{word}`: the actions are {}",
                ActionSet::ACTION_WORDS
            );
            if let Some(near) = did_you_mean(word, ActionSet::WORDS) {
                message.push_str(&format!(" — did you mean `{near}`?"));
            }
            return Err(message);
        }
        if !kept.contains(&word) {
            kept.push(word);
        }
    }
    Ok(Some(kept.join(",")))
}

fn create(args: &CreateArgs) -> Result<(), String> {
    let now = SystemTime::now();
    format::check_owner(&args.user).map_err(|why| format!("error: --user: {why}"))?;
    if let Some(id) = &args.id {
        secret::check_id(id).map_err(|why| format!("error: --id: {why}"))?;
    }
    let expires = expiry(&args.expires, now)?;
    let actions = action_words(&args.actions)?;
    if let Some(on) = &args.on {
        if on.contains(['\n', '\r']) {
            return Err("error: --on: the expression must be on one line".into());
        }
        // Validated here for an error about the option itself; the line is checked again below.
        Expression::parse_named("--on", on).map_err(|d| d.to_string())?;
    }
    if let Some(description) = &args.description {
        if description.chars().any(char::is_control) {
            return Err("error: --description: control characters (line breaks, tabs) are not allowed".into());
        }
        if description.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(format!(
                "error: --description: longer than {MAX_DESCRIPTION_CHARS} characters"
            ));
        }
    }

    let shown = args.file.display().to_string();
    let mut locked = file::open_locked(&args.file, true).map_err(|e| format!("error: cannot open {shown}: {e}"))?;
    let existing = std::str::from_utf8(&locked.content)
        .map_err(|_| format!("error: {shown} is not valid UTF-8: fix it before adding a key"))
        .and_then(|text| {
            AccessKeys::parse(&shown, text)
                .map_err(|e| format!("{e}\nerror: {shown} has errors: fix them before adding a key"))
        })?;
    let id = match &args.id {
        Some(id) if existing.get(id).is_some() => {
            return Err(format!("error: --id: {shown} already has a key `{id}`"));
        }
        Some(id) => id.clone(),
        None => (0..ID_ATTEMPTS)
            .map(|_| secret::generate_id())
            .find(|id| existing.get(id).is_none())
            .ok_or("error: could not draw an unused key id")?,
    };
    let secret = secret::generate(&id);
    let hash = secret::hash(&secret);
    let line = format::render(&NewLine {
        id: &id,
        owner: &args.user,
        created: now,
        expires,
        actions: actions.as_deref(),
        on: args.on.as_deref(),
        description: args.description.as_deref(),
        hash: &hash,
    });
    // The line must read back as this key, or the service would refuse the whole file.
    let written = AccessKeys::parse(&shown, &line)
        .map_err(|e| format!("{e}\nerror: the new line would not load; nothing was written"))?;
    if written.get(&id).is_none_or(|k| k.owner != args.user) {
        return Err("error: the new line does not read back as the key; nothing was written".into());
    }
    if !locked.created {
        warn_about_mode(&args.file);
    }
    locked
        .append(&line)
        .map_err(|e| format!("error: cannot write to {shown}: {e}; nothing was added"))?;
    println!("{secret}");
    eprintln!(
        "created key {id} for {} (expires {expires}) in {shown}; the secret above is shown only this once",
        args.user
    );
    Ok(())
}

fn list(args: &ListArgs) -> Result<(), String> {
    let keys = AccessKeys::load(&args.file).map_err(|e| match e {
        super::LoadError::Invalid(d) => d.to_string(),
        other => format!("error: {other}"),
    })?;
    warn_about_mode(&args.file);
    if keys.is_empty() {
        println!("{}: no keys", keys.source_name());
        return Ok(());
    }
    let now = SystemTime::now();
    let header = [
        "ID",
        "USER",
        "CREATED",
        "EXPIRES",
        "STATE",
        "ACTIONS",
        "ON",
        "DESCRIPTION",
    ]
    .map(String::from);
    let mut rows = vec![header];
    for key in keys.keys() {
        rows.push([
            key.id.clone(),
            key.owner.clone(),
            format::format_time(key.created),
            key.expires.to_string(),
            if key.is_expired(now) { "expired" } else { "active" }.to_string(),
            key.scope.actions_text().to_string(),
            key.scope.on_text().unwrap_or("*").to_string(),
            key.description.clone().unwrap_or_default(),
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    Ok(())
}

/// Whether `line` is the line of the key `id`: its first words are `key ID`.
fn is_line_of(line: &str, id: &str) -> bool {
    let mut words = line.split_whitespace();
    words.next() == Some("key") && words.next() == Some(id)
}

fn revoke(args: &RevokeArgs) -> Result<(), String> {
    secret::check_id(&args.id).map_err(|why| format!("error: --id: {why}"))?;
    let shown = args.file.display().to_string();
    let locked = file::open_locked(&args.file, false).map_err(|e| format!("error: cannot open {shown}: {e}"))?;
    let mut kept = Vec::with_capacity(locked.content.len());
    let mut removed = Vec::new();
    // Byte for byte, so every other line (comments, spacing, line endings) stays as it was.
    for (index, line) in locked.content.split_inclusive(|b| *b == b'\n').enumerate() {
        if is_line_of(&String::from_utf8_lossy(line), &args.id) {
            removed.push(index + 1);
        } else {
            kept.extend_from_slice(line);
        }
    }
    if removed.is_empty() {
        return Err(format!("error: {shown} has no key `{}`", args.id));
    }
    let warning = locked
        .replace(&kept)
        .map_err(|e| format!("error: cannot rewrite {shown}: {e}; nothing was removed"))?;
    if let Some(warning) = warning {
        eprintln!("warning: {warning}");
    }
    let lines: Vec<String> = removed.iter().map(ToString::to_string).collect();
    println!("revoked key {} (removed line {} of {shown})", args.id, lines.join(", "));
    Ok(())
}

/// `check --access-keys FILE`: prints errors (stderr), warnings and a summary (stdout) as
/// `check` does for rules; whether the file loads.
pub fn check_keys_file(path: &Path) -> bool {
    let keys = match AccessKeys::load(path) {
        Ok(keys) => keys,
        Err(super::LoadError::Invalid(d)) => {
            eprintln!("{d}");
            return false;
        }
        Err(other) => {
            eprintln!("error: {other}");
            return false;
        }
    };
    let now = SystemTime::now();
    let mut warnings: Vec<String> = keys.warnings(now).iter().map(ToString::to_string).collect();
    warnings.extend(file::mode_warnings(path).into_iter().map(|w| format!("warning: {w}")));
    for warning in &warnings {
        println!("{}: {warning}", keys.source_name());
    }
    let expired = keys.keys().iter().filter(|k| k.is_expired(now)).count();
    println!(
        "{}: ok: {} access keys ({expired} expired), {} warnings",
        keys.source_name(),
        keys.len(),
        warnings.len()
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_accepts_durations_times_and_never() {
        let now = format::parse_time("2026-11-29T05:00:00.5Z").unwrap();
        assert_eq!(expiry("90d", now).unwrap().to_string(), "2027-02-27T05:00:00Z");
        assert_eq!(expiry("never", now).unwrap(), Expiry::Never);
        assert_eq!(
            expiry("2030-01-01T00:00:00Z", now).unwrap().to_string(),
            "2030-01-01T00:00:00Z"
        );
        for (bad, wanted) in [
            ("0s", "must work for a while"),
            ("2020-01-01T00:00:00Z", "already past"),
            ("soon", "not a duration"),
            ("100000y", "too far"),
        ] {
            let error = expiry(bad, now).unwrap_err();
            assert!(error.contains(wanted), "{bad}: {error}");
        }
    }

    #[test]
    fn actions_are_checked_and_kept_as_written() {
        assert_eq!(action_words(&[]).unwrap(), None);
        let words = ["pull".to_string(), "push".to_string(), "pull".to_string()];
        assert_eq!(action_words(&words).unwrap().as_deref(), Some("pull,push"));
        let error = action_words(&["pussh".to_string()]).unwrap_err();
        assert!(error.contains("did you mean `push`?"), "{error}");
    }

    #[test]
    fn a_line_of_a_key_is_found_by_its_first_words() {
        assert!(is_line_of("key abc user=x", "abc"));
        assert!(is_line_of("  key\tabc user=x\r\n", "abc"));
        assert!(!is_line_of("key abcd user=x", "abc"));
        assert!(!is_line_of("# key abc user=x", "abc"));
        assert!(!is_line_of("key other description=\"key abc\"", "abc"));
    }
}
