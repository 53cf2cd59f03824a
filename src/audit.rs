//! The audit log: one JSON line per decision, in a file of its own, for a SIEM.
//!
//! A decision never waits for the disk: lines go through a bounded queue to a
//! writer thread, and a line that finds the queue full, or that the disk
//! refuses, is dropped and counted (`csel_auth_audit_dropped_total`) — an
//! audit problem neither allows nor denies anything. `reopen` (SIGUSR1) makes
//! the writer close and open the file again, after logrotate moved it.
//!
//! The line's fields are a stable schema (`"v":1`); docs/operations.md lists them.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Lines waiting for the writer; more are dropped rather than waited for.
const QUEUE_LINES: usize = 16 * 1024;

/// One decision, as the audit log records it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    /// Schema version.
    pub v: u8,
    /// RFC 3339 time, UTC, with milliseconds.
    pub time: String,
    /// `X-Real-IP`, when nginx sent one.
    pub client: Option<String>,
    /// The user the request was decided for; `anonymous` without credentials.
    pub user: String,
    /// How the user authenticated: `none`, `htpasswd`, `token`, `access_key`, `ldap`, `oidc`.
    pub auth: &'static str,
    /// The access key's id, or the OIDC issuer, when that is how the user logged in.
    pub auth_detail: Option<String>,
    pub method: String,
    /// The canonical path, when the request got that far.
    pub path: Option<String>,
    /// The docker repository, reference (tag) or digest the path names.
    pub repository: Option<String>,
    pub reference: Option<String>,
    /// `read`, `add`, `edit`, `delete`, when the method maps to one.
    pub action: Option<String>,
    /// The HTTP status answered, and `allowed` / `denied` / `unauthorized` / `error`.
    pub status: u16,
    pub outcome: &'static str,
    /// The line of the grant that allowed the request.
    pub rule_line: Option<usize>,
    /// Why, in words (the decision log's reason).
    pub reason: String,
    /// The version of the rules file in force (counts loads since start).
    pub rules_version: u64,
}

impl AuditEntry {
    /// The current time in the schema's format.
    pub fn now() -> String {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        format_utc(since.as_secs(), since.subsec_millis())
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` from seconds since the epoch (proleptic Gregorian, UTC).
fn format_utc(seconds: u64, millis: u32) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct AuditStats {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub reopens: AtomicU64,
}

/// The audit log: cheap to clone into every request.
#[derive(Clone)]
pub struct AuditLog {
    queue: SyncSender<AuditEntry>,
    reopen: Arc<AtomicBool>,
    stats: Arc<AuditStats>,
}

impl AuditLog {
    /// Opens (creates, 0640) `path` for appending and starts the writer thread.
    pub fn open(path: &Path) -> io::Result<AuditLog> {
        let file = open_append(path)?;
        let (queue, lines) = sync_channel(QUEUE_LINES);
        let reopen = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(AuditStats::default());
        let writer = Writer {
            path: path.to_path_buf(),
            out: Some(BufWriter::new(file)),
            reopen: Arc::clone(&reopen),
            stats: Arc::clone(&stats),
        };
        std::thread::Builder::new()
            .name("csel-auth-audit".into())
            .spawn(move || writer.run(lines))?;
        Ok(AuditLog { queue, reopen, stats })
    }

    /// Queues one line; never waits.
    pub fn record(&self, entry: AuditEntry) {
        match self.queue.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Closes and opens the file again before the next line (after logrotate).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    pub fn stats(&self) -> &AuditStats {
        &self.stats
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

struct Writer {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    reopen: Arc<AtomicBool>,
    stats: Arc<AuditStats>,
}

impl Writer {
    fn run(mut self, lines: Receiver<AuditEntry>) {
        while let Ok(first) = lines.recv() {
            if self.reopen.swap(false, Ordering::AcqRel) {
                self.reopen_file();
            }
            self.write(&first);
            // Whatever else is queued goes out in the same flush.
            while let Ok(next) = lines.try_recv() {
                self.write(&next);
            }
            if let Some(out) = &mut self.out {
                if let Err(e) = out.flush() {
                    tracing::warn!(target: "csel_auth::audit", file = %self.path.display(), "audit log: {e}");
                }
            }
        }
    }

    fn write(&mut self, entry: &AuditEntry) {
        let Some(out) = &mut self.out else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let written = serde_json::to_writer(&mut *out, entry)
            .map_err(io::Error::other)
            .and_then(|()| out.write_all(b"\n"));
        match written {
            Ok(()) => {
                self.stats.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(target: "csel_auth::audit", "audit line dropped: {e}");
            }
        }
    }

    fn reopen_file(&mut self) {
        if let Some(mut out) = self.out.take() {
            let _ = out.flush();
        }
        match open_append(&self.path) {
            Ok(file) => {
                self.out = Some(BufWriter::new(file));
                self.stats.reopens.fetch_add(1, Ordering::Relaxed);
                tracing::info!(target: "csel_auth::audit", file = %self.path.display(), "audit log reopened");
            }
            Err(e) => tracing::error!(
                target: "csel_auth::audit",
                file = %self.path.display(),
                "audit log cannot be reopened: {e}; its lines are dropped until SIGUSR1 succeeds"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn entry(user: &str) -> AuditEntry {
        AuditEntry {
            v: 1,
            time: AuditEntry::now(),
            client: Some("127.0.0.1".into()),
            user: user.into(),
            auth: "htpasswd",
            auth_detail: None,
            method: "PUT".into(),
            path: Some("/v2/team/app/manifests/1".into()),
            repository: Some("team/app".into()),
            reference: Some("1".into()),
            action: Some("edit".into()),
            status: 200,
            outcome: "allowed",
            rule_line: Some(3),
            reason: "line 3: grant push on team to @team".into(),
            rules_version: 1,
        }
    }

    fn wait_for_lines(path: &Path, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            if lines.len() >= count || Instant::now() > deadline {
                return lines;
            }
            std::thread::yield_now();
        }
    }

    #[test]
    fn utc_times_are_formatted() {
        assert_eq!(format_utc(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(format_utc(1_795_928_400, 999), "2026-11-29T05:00:00.999Z");
    }

    #[test]
    fn lines_are_json_with_the_schema_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        log.record(entry("alice"));
        let lines = wait_for_lines(&path, 1);
        assert_eq!(lines.len(), 1);
        let value: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        for field in [
            "v",
            "time",
            "client",
            "user",
            "auth",
            "method",
            "path",
            "repository",
            "reference",
            "action",
            "status",
            "outcome",
            "rule_line",
            "reason",
            "rules_version",
        ] {
            assert!(value.get(field).is_some(), "{field} missing in {value}");
        }
        assert_eq!(value["user"], "alice");
        assert_eq!(log.stats().written.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn reopen_follows_a_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        log.record(entry("before"));
        assert_eq!(wait_for_lines(&path, 1).len(), 1);
        let rotated = dir.path().join("audit.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        log.record(entry("after"));
        let lines = wait_for_lines(&path, 1);
        assert_eq!(lines.len(), 1, "the new file has the new line");
        assert!(lines[0].contains("\"after\""));
        let old = std::fs::read_to_string(&rotated).unwrap();
        assert!(old.contains("\"before\"") && !old.contains("\"after\""));
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let dir = tempfile::tempdir().unwrap();
        // A FIFO nobody reads: the writer blocks on its first flush, the queue fills.
        let path = dir.path().join("audit.fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // Opening a FIFO for writing waits for a reader: give it one that reads nothing.
        let reader_path = path.clone();
        let _reader = std::thread::spawn(move || {
            let _file = File::open(reader_path);
            std::thread::sleep(Duration::from_secs(30));
        });
        let log = AuditLog::open(&path).unwrap();
        let started = Instant::now();
        let total = QUEUE_LINES + 100_000;
        for _ in 0..total {
            log.record(entry("flood"));
        }
        let dropped = log.stats().dropped.load(Ordering::Relaxed);
        assert!(dropped > 0, "nothing was dropped of {total} lines");
        println!(
            "audit: {total} lines queued against a stalled file in {:?}, {dropped} dropped",
            started.elapsed()
        );
    }
}
