//! Reload under load: while load threads drive `/auth`, the rules file is rewritten 100 times
//! in every way files change on disk — in place; truncate-then-write in one open (the half must
//! never be read); truncate, write half, close, then append the rest (the half is seen and
//! refused); write-and-rename; a Kubernetes-style symlink swap; in place through the swapped
//! symlink; invalid versions; deletion and re-creation. Every answer is checked against what
//! `decide` says under the version in force before or after the write it overlapped; none may be
//! a 5xx or a dropped connection, and the version in force at the end is the last valid file.
//!
//! Also: a writer pausing half-way for seconds never puts the half in force (for the rules the
//! half parses and is broader than both versions: a fail-open if it were loaded; for htpasswd it
//! drops users), and an idle service reads nothing (its own reads of the files must not wake its
//! watcher).

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use csel_auth::rules::Rules;

use crate::kit::files::write;
use crate::kit::http::{Conn, Request};
use crate::kit::service::{alone, CselAuth};
use crate::kit::wait::wait_for;
use crate::kit::{expected_status, htpasswd, report, scale};

/// One valid rules version. Consecutive versions differ in many decisions: which team
/// namespace `@devs` may push to, whether bob is in `@devs`, whether anonymous may pull the
/// library, carol's read access, bob's delete right. Selectors are defined after the grants that
/// use them in odd versions (order must not matter).
fn version(n: usize) -> String {
    let team = n % 4;
    let statements = [
        "selector library = format == \"docker\" and path =^ \"/v2/library/\"\n".to_string(),
        format!("selector team = format == \"docker\" and path =^ \"/v2/team{team}/\"\n"),
        format!("group devs = alice{}\n", if n.is_multiple_of(2) { ", bob" } else { "" }),
    ];
    let mut grants = String::new();
    if !n.is_multiple_of(3) {
        grants.push_str("grant pull on library to anonymous\n");
    }
    grants.push_str("grant push on team to @devs\n");
    if n % 5 < 2 {
        grants.push_str("grant read on (path =~ \"/v2/team[0-9]/.*\") to carol\n");
    }
    grants.push_str(&format!(
        "grant delete on (path =^ \"/v2/team{}/\" and method == \"DELETE\") to bob\n",
        (n + 1) % 4
    ));
    let definitions = statements.concat();
    if n.is_multiple_of(2) {
        format!("# version {n}\n{definitions}{grants}")
    } else {
        format!("# version {n}\n{grants}{definitions}")
    }
}

/// A version with a load error (an unknown selector): refused, the previous one stays.
fn invalid_version(n: usize) -> String {
    format!("{}grant pull on no-such-selector to anonymous\n", version(n))
}

/// The requests the load threads send, in turn.
fn probes() -> Vec<(Option<&'static str>, &'static str, String)> {
    let users = [None, Some("alice"), Some("bob"), Some("carol")];
    let mut paths: Vec<String> = vec!["/v2/library/alpine/manifests/1".into()];
    paths.extend((0..4).map(|t| format!("/v2/team{t}/app/manifests/1")));
    paths.push("/v2/team9/app/blobs/uploads/".into());
    paths.push("/v2/library/../team1/app/manifests/1".into());
    let mut probes = Vec::new();
    for user in users {
        for method in ["GET", "PUT", "DELETE"] {
            for path in &paths {
                probes.push((user, method, path.clone()));
            }
        }
    }
    probes
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    /// Truncate and write the whole file in one go (`cat new > rules`).
    InPlace,
    /// Truncate, write the first half (cut inside a statement), then the rest, in one open:
    /// the service must never read the half.
    TruncateThenWrite,
    /// Truncate, write the first half and close (`: > f; cat a >> f`), wait until the service
    /// has read the half and refused it, then append the rest (`cat b >> f`).
    HalfSeenThenWrite,
    /// Write a temporary file and rename it over the rules file.
    WriteRename,
    /// Kubernetes' ConfigMap update: the rules file is a symlink into `..data`, itself a symlink
    /// to a new directory swapped in by rename.
    SymlinkSwap,
    /// An invalid version written in place.
    InvalidInPlace,
    /// An invalid version written and renamed.
    InvalidRename,
    /// The rules file (or symlink) removed.
    Delete,
    /// The rules file created again after a deletion.
    Recreate,
}

const CYCLE: [Change; 12] = [
    Change::InPlace,
    Change::TruncateThenWrite,
    Change::WriteRename,
    Change::SymlinkSwap,
    // Through the symlink: the file written lives in a directory swapped in after start-up.
    Change::InPlace,
    Change::InvalidInPlace,
    Change::SymlinkSwap,
    Change::Delete,
    Change::Recreate,
    Change::HalfSeenThenWrite,
    Change::InvalidRename,
    Change::WriteRename,
];

fn valid(write: Change) -> bool {
    !matches!(write, Change::InvalidInPlace | Change::InvalidRename | Change::Delete)
}

/// The half of `text` a truncate-then-write leaves on disk first: cut inside its last grant, so
/// that it cannot load.
fn first_half(text: &str) -> &str {
    let cut = text
        .rfind("grant ")
        .map_or(text.len() / 2, |i| i + "grant pu".len().min(text.len() - i));
    &text[..cut]
}

/// Does the writes; knows where the file is and how the service is doing.
struct Writer<'a> {
    service: &'a CselAuth,
    rules: PathBuf,
    dir: PathBuf,
    swaps: usize,
}

impl Writer<'_> {
    fn rules_metric(&self, series: &str) -> u64 {
        self.service.metric(&format!("csel_auth_{series}")) as u64
    }

    fn failed(&self) -> u64 {
        self.rules_metric("reloads_total{file=\"rules\",result=\"failed\"}")
    }

    fn version(&self) -> u64 {
        self.rules_metric("version{file=\"rules\"}")
    }

    fn truncate_and_write(&self, parts: &[&str], between: impl Fn()) {
        let mut file = File::create(&self.rules).unwrap_or_else(|e| panic!("{}: {e}", self.rules.display()));
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                between();
            }
            file.write_all(part.as_bytes()).unwrap_or_else(|e| panic!("write: {e}"));
            file.flush().unwrap_or_else(|e| panic!("flush: {e}"));
        }
    }

    fn write_rename(&self, text: &str) {
        let temporary = self.dir.join(".rules.rules.tmp");
        write(&temporary, text.as_bytes());
        fs::rename(&temporary, &self.rules).unwrap_or_else(|e| panic!("rename: {e}"));
    }

    /// `rules.rules -> ..data/rules.rules`, `..data -> ..vN`: a new `..vN` is swapped in.
    fn symlink_swap(&mut self, text: &str) {
        self.swaps += 1;
        let version_dir = format!("..v{}", self.swaps);
        let target = self.dir.join(&version_dir);
        fs::create_dir(&target).unwrap_or_else(|e| panic!("mkdir: {e}"));
        write(&target.join("rules.rules"), text.as_bytes());
        let temporary = self.dir.join("..data_tmp");
        symlink(&version_dir, &temporary).unwrap_or_else(|e| panic!("symlink: {e}"));
        fs::rename(&temporary, self.dir.join("..data")).unwrap_or_else(|e| panic!("rename: {e}"));
        if !fs::symlink_metadata(&self.rules).is_ok_and(|m| m.file_type().is_symlink()) {
            let link = self.dir.join(".rules-link.tmp");
            symlink("..data/rules.rules", &link).unwrap_or_else(|e| panic!("symlink: {e}"));
            fs::rename(&link, &self.rules).unwrap_or_else(|e| panic!("rename: {e}"));
        }
        // Kubernetes removes the previous directory once the swap is done.
        if self.swaps > 1 {
            let _ = fs::remove_dir_all(self.dir.join(format!("..v{}", self.swaps - 1)));
        }
    }

    /// Performs one write and waits until the service shows its effect: a new version in force
    /// (valid writes) or one more refused reload (invalid file, deletion). Returns how long the
    /// effect took after the write was complete, and whether a half-written file was seen.
    fn write(&mut self, how: Change, text: &str, versions_loaded: u64) -> (Duration, u64) {
        let failed_before = self.failed();
        match how {
            Change::InPlace | Change::InvalidInPlace | Change::Recreate => self.truncate_and_write(&[text], || {}),
            Change::TruncateThenWrite => {
                let half = first_half(text);
                self.truncate_and_write(&[half, &text[half.len()..]], || {});
            }
            Change::HalfSeenThenWrite => {
                let half = first_half(text);
                self.truncate_and_write(&[half], || {});
                wait_for(Duration::from_secs(5), "the half-written file to be refused", || {
                    (self.failed() > failed_before).then_some(())
                });
                let mut file = fs::OpenOptions::new().append(true).open(&self.rules);
                let appended = file.as_mut().map(|f| f.write_all(&text.as_bytes()[half.len()..]));
                assert!(matches!(appended, Ok(Ok(()))), "appending: {appended:?}");
            }
            Change::WriteRename | Change::InvalidRename => self.write_rename(text),
            Change::SymlinkSwap => self.symlink_swap(text),
            Change::Delete => fs::remove_file(&self.rules).unwrap_or_else(|e| panic!("delete: {e}")),
        }
        let written = Instant::now();
        // Reloads are driven by file events only (the periodic check is set to an hour): a
        // missed event shows up here as a timeout.
        let what = format!("{how:?} to take effect");
        if valid(how) {
            wait_for(Duration::from_secs(5), &what, || {
                (self.version() == versions_loaded + 1).then_some(())
            });
        } else {
            wait_for(Duration::from_secs(5), &what, || {
                (self.failed() > failed_before).then_some(())
            });
        }
        let refused = self.failed() - failed_before;
        (written.elapsed(), if valid(how) { refused } else { 0 })
    }
}

/// One answer: which probe, the write epoch when it was sent and when it came back, and the
/// status (0: the connection failed or was closed).
#[derive(Clone, Copy)]
struct Sample {
    probe: u16,
    sent: u16,
    received: u16,
    status: u16,
}

/// What the writer and the load threads share.
struct Load {
    /// The number of the write under way (its effect may or may not be in force yet).
    epoch: AtomicUsize,
    /// Requests sent so far, by all load threads.
    requests: AtomicU64,
    stop: AtomicBool,
}

fn load_thread(
    service_addr: std::net::SocketAddr,
    requests: Arc<Vec<Vec<u8>>>,
    load: Arc<Load>,
    offset: usize,
    max_requests: u64,
    deadline: Instant,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut connection: Option<Conn> = None;
    let mut i = offset;
    while !load.stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        if load.requests.fetch_add(1, Ordering::SeqCst) >= max_requests {
            break;
        }
        let probe = i % requests.len();
        i += 7;
        let sent = load.epoch.load(Ordering::SeqCst);
        let result = match connection.as_mut() {
            Some(c) => c.send(&requests[probe]),
            None => Conn::tcp(service_addr).and_then(|mut c| {
                let r = c.send(&requests[probe]);
                connection = Some(c);
                r
            }),
        };
        let received = load.epoch.load(Ordering::SeqCst);
        let status = match result {
            Ok(response) => response.status,
            Err(_) => {
                connection = None;
                0
            }
        };
        samples.push(Sample {
            probe: probe as u16,
            sent: sent as u16,
            received: received as u16,
            status,
        });
    }
    samples
}

#[test]
fn reload_under_load_never_answers_wrong_or_fails() {
    let _turn = alone();
    let writes: usize = scale(100, 1000);
    let threads: usize = scale(3, 4);
    let per_epoch: u64 = scale(150, 1000);
    let max_requests: u64 = scale(2_000_000, 50_000_000);
    let time_limit = scale(Duration::from_secs(120), Duration::from_secs(1800));

    // The plan: each write, its text, and the valid version in force after it.
    let plan: Vec<(Change, String)> = (1..=writes)
        .map(|n| {
            let how = if n == writes {
                Change::InvalidRename
            } else {
                CYCLE[(n - 1) % CYCLE.len()]
            };
            let text = match how {
                Change::InvalidInPlace | Change::InvalidRename => invalid_version(n),
                Change::Delete => String::new(),
                _ => version(n),
            };
            (how, text)
        })
        .collect();
    let mut in_force = vec![0usize]; // epoch -> version number in force once its write settled
    for (n, (how, _)) in plan.iter().enumerate() {
        let previous = in_force[n];
        in_force.push(if valid(*how) { n + 1 } else { previous });
    }
    let probes = probes();
    let users = ["alice", "bob", "carol", "admin-parente"];
    // Expected status of every probe under every version that is ever in force.
    let mut expected: Vec<Vec<u16>> = vec![Vec::new(); writes + 1];
    for &v in &in_force {
        if expected[v].is_empty() {
            let rules = Rules::parse("v.rules", &version(v)).unwrap_or_else(|e| panic!("version {v}: {e}"));
            expected[v] = probes
                .iter()
                .map(|(user, method, path)| expected_status(&rules, *user, method, path, None))
                .collect();
        }
    }
    for (how, text) in &plan {
        if matches!(how, Change::InvalidInPlace | Change::InvalidRename) {
            assert!(Rules::parse("x", text).is_err(), "an invalid version loads");
        }
        if matches!(how, Change::TruncateThenWrite | Change::HalfSeenThenWrite) {
            assert!(
                Rules::parse("x", first_half(text)).is_err(),
                "a half-written file loads"
            );
        }
    }
    let distinct = |column: usize| {
        let mut seen: Vec<u16> = in_force.iter().map(|&v| expected[v][column]).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    };
    let changing = (0..probes.len()).filter(|&c| distinct(c) > 1).count();
    assert!(
        changing * 4 > probes.len(),
        "only {changing} of {} probes change between versions",
        probes.len()
    );

    let setup = super::setup(&version(0), &htpasswd(&users, 4))
        .arg("--reload-interval")
        .arg("3600");
    let service = setup.start();
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(
        probes
            .iter()
            .map(|(user, method, path)| {
                Request::subrequest(method, path)
                    .with_nginx_headers()
                    .user(*user)
                    .bytes()
            })
            .collect(),
    );
    let load = Arc::new(Load {
        epoch: AtomicUsize::new(0),
        requests: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let started = Instant::now();
    let deadline = started + time_limit;
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (requests, load, addr) = (Arc::clone(&requests), Arc::clone(&load), service.addr());
            std::thread::spawn(move || load_thread(addr, requests, load, t * 13, max_requests, deadline))
        })
        .collect();

    let mut writer = Writer {
        service: &service,
        rules: service.rules().to_path_buf(),
        dir: service.dir().to_path_buf(),
        swaps: 0,
    };
    let mut effect_times = Vec::new();
    let mut half_written_refused = 0;
    let mut read_while_open = 0;
    let mut loaded = 1u64;
    let mut completed_writes = 0;
    for (n, (how, text)) in plan.iter().enumerate() {
        if Instant::now() > deadline {
            break;
        }
        // Let the load run on the version in force before each write.
        let mark = load.requests.load(Ordering::SeqCst);
        wait_for(Duration::from_secs(30), "load between writes", || {
            (load.requests.load(Ordering::SeqCst) >= mark + per_epoch || load.stop.load(Ordering::SeqCst)).then_some(())
        });
        load.epoch.store(n + 1, Ordering::SeqCst);
        let (took, refused_halves) = writer.write(*how, text, loaded);
        if valid(*how) {
            loaded += 1;
        }
        half_written_refused += refused_halves;
        if *how == Change::TruncateThenWrite {
            read_while_open += refused_halves;
        }
        effect_times.push(took);
        completed_writes += 1;
    }
    let mark = load.requests.load(Ordering::SeqCst);
    wait_for(Duration::from_secs(30), "load after the last write", || {
        (load.requests.load(Ordering::SeqCst) >= mark + per_epoch).then_some(())
    });
    load.stop.store(true, Ordering::SeqCst);
    let samples: Vec<Sample> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap_or_else(|_| panic!("a load thread panicked")))
        .collect();
    let elapsed = started.elapsed();

    // Every answer against the versions that could have been in force while it was decided.
    let mut wrong = Vec::new();
    let (mut server_errors, mut dropped) = (0, 0);
    for sample in &samples {
        let first = usize::from(sample.sent).saturating_sub(1);
        let last = usize::from(sample.received);
        let allowed: Vec<u16> = (first..=last)
            .map(|epoch| expected[in_force[epoch]][usize::from(sample.probe)])
            .collect();
        match sample.status {
            0 => dropped += 1,
            500..=599 => server_errors += 1,
            _ => {}
        }
        if !allowed.contains(&sample.status) {
            wrong.push(*sample);
        }
    }
    // The end state: the last valid version, asked once more for every probe.
    let last_valid = in_force[completed_writes];
    let mut final_mismatches = Vec::new();
    for (i, (user, method, path)) in probes.iter().enumerate() {
        let got = service.auth_status(*user, method, path);
        if got != expected[last_valid][i] {
            final_mismatches.push(format!(
                "{user:?} {method} {path}: {got}, expected {}",
                expected[last_valid][i]
            ));
        }
    }
    let failing = service.metric("csel_auth_reload_failing{file=\"rules\"}");
    let refused = service.metric("csel_auth_reloads_total{file=\"rules\",result=\"failed\"}");
    let reloaded = service.metric("csel_auth_reloads_total{file=\"rules\",result=\"ok\"}");

    effect_times.sort_unstable();
    let percentile = |p: usize| {
        effect_times
            .get(effect_times.len().saturating_sub(1) * p / 100)
            .copied()
            .unwrap_or_default()
    };
    report(&format!(
        "reliability: {} requests, {completed_writes} rewrites, {reloaded} reloads, {refused} refused \
         ({half_written_refused} half-written files seen and refused), {} wrong decisions, {server_errors} 5xx, \
         {dropped} dropped connections; {:.1} s, reload took p50 {:?} / max {:?}",
        samples.len(),
        wrong.len(),
        elapsed.as_secs_f64(),
        percentile(50),
        percentile(100),
    ));
    let describe = |s: &Sample| {
        let (user, method, path) = &probes[usize::from(s.probe)];
        let versions: Vec<usize> = (usize::from(s.sent).saturating_sub(1)..=usize::from(s.received))
            .map(|e| in_force[e])
            .collect();
        format!(
            "{user:?} {method} {path}: got {} in epochs {}..{} (versions {versions:?})",
            s.status, s.sent, s.received
        )
    };
    assert_eq!(
        completed_writes, writes,
        "only {completed_writes} of {writes} writes within {time_limit:?}"
    );
    assert!(
        wrong.is_empty(),
        "{} wrong answers, e.g.:\n{}",
        wrong.len(),
        wrong.iter().take(10).map(describe).collect::<Vec<_>>().join("\n")
    );
    assert_eq!((server_errors, dropped), (0, 0), "5xx answers and dropped connections");
    assert!(
        final_mismatches.is_empty(),
        "final state is not the last valid file:\n{}",
        final_mismatches.join("\n")
    );
    assert_eq!(failing, 1.0, "the last write was invalid: reload_failing must say so");
    assert!(
        half_written_refused >= (writes / CYCLE.len()) as u64,
        "half-written files were not seen"
    );
    assert_eq!(
        read_while_open, 0,
        "a file was read while its writer had it open half-written"
    );
    let min_requests = (completed_writes as u64 + 1) * per_epoch;
    assert!(samples.len() as u64 >= min_requests, "only {} requests", samples.len());
}

/// How long the writers below hold a file open, half written, without writing: longer than the
/// 2 s after which the service used to give up waiting and read the file anyway. This is the
/// scenario (a writer descheduled, stopped, or typing into `cat > file`), not synchronisation.
const WRITER_PAUSE: Duration = Duration::from_secs(4);

/// What the service logs, once, about a writer that keeps a file open.
const WRITER_WARNING: &str = "waits for its writer to close it";

/// Truncates `path`, writes `half` and holds the file open for at least [`WRITER_PAUSE`] and until
/// the service has said that the file waits on its writer (`/metrics` and its log, within a
/// deadline), calling `probe` all along; then writes `rest` and closes. Returns the probe's
/// answers and whether the gauge and the warning were seen while the file was open.
fn write_with_a_long_pause(
    service: &CselAuth,
    which: &str,
    path: &Path,
    (half, rest): (&str, &str),
    mut probe: impl FnMut() -> u16,
) -> (Vec<u16>, bool, bool) {
    let gauge = format!("csel_auth_reload_waiting_for_writer{{file=\"{which}\"}}");
    let mut file = File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.write_all(half.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    file.flush().unwrap_or_else(|e| panic!("{e}"));
    let paused = Instant::now();
    let deadline = paused + Duration::from_secs(20);
    let (mut answers, mut gauge_seen, mut warned) = (Vec::new(), false, false);
    while (paused.elapsed() < WRITER_PAUSE || !(gauge_seen && warned)) && Instant::now() < deadline {
        answers.push(probe());
        gauge_seen |= service.metric(&gauge) == 1.0;
        warned |= warnings(service, path) > 0;
    }
    file.write_all(rest.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    drop(file);
    (answers, gauge_seen, warned)
}

/// The service's warnings that `path` waits for its writer.
fn warnings(service: &CselAuth, path: &Path) -> usize {
    let shown = path.display().to_string();
    service
        .log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(WRITER_WARNING) && l.contains(&shown))
        .count()
}

/// A writer pausing half-way for seconds must not put the half in force. The half below parses,
/// and it is broader than both the old and the new version: `team` loses its `and not …secret…`
/// part, so it would let anonymous pull the secret. The periodic check runs every second during
/// the pause, besides the file events.
#[test]
fn a_writer_pausing_for_seconds_never_puts_half_a_rules_file_in_force() {
    let _turn = alone();
    let old = "grant pull on (path =^ \"/v2/library/\") to anonymous\n";
    let new = format!(
        "{old}grant pull on team to anonymous\n\
         selector team = path =^ \"/v2/team/\" and not path =^ \"/v2/team/secret/\"\n"
    );
    let cut = new.find(" and not").unwrap_or(new.len());
    let half = &new[..cut];
    let secret = "/v2/team/secret/manifests/1";
    let check = |text: &str| Rules::parse("x", text).map(|r| expected_status(&r, None, "GET", secret, None));
    assert_eq!(check(old).ok(), Some(401));
    assert_eq!(check(&new).ok(), Some(401));
    assert_eq!(
        check(half).ok(),
        Some(200),
        "the half must parse and be broader for this test to mean anything"
    );

    let service = super::setup(old, &htpasswd(&["alice"], 4))
        .arg("--reload-interval")
        .arg("1")
        .start();
    let rules = service.rules().to_path_buf();
    let request = Request::subrequest("GET", secret).with_nginx_headers().bytes();
    let mut connection = service.connect();
    let (answers, gauge_seen, warned) = write_with_a_long_pause(&service, "rules", &rules, (half, &new[cut..]), || {
        connection.send(&request).map_or(0, |r| r.status)
    });
    let allowed = answers.iter().filter(|&&s| s == 200).count();
    assert_eq!(
        allowed,
        0,
        "the half-written rules were in force for {allowed} of {} requests while the writer paused",
        answers.len()
    );
    assert!(
        answers.iter().all(|&s| s == 401),
        "answers while the writer paused: {answers:?}"
    );
    assert!(
        gauge_seen,
        "/metrics never said that the rules file waits for its writer"
    );
    assert!(warned, "the log never said that the rules file waits for its writer");

    wait_for(Duration::from_secs(10), "the whole new file to load", || {
        (service.metric("csel_auth_version{file=\"rules\"}") == 2.0).then_some(())
    });
    assert_eq!(
        service.auth_status(None, "GET", secret),
        401,
        "the new version keeps the secret"
    );
    assert_eq!(
        service.auth_status(None, "GET", "/v2/team/app/manifests/1"),
        200,
        "the new version is in force"
    );
    assert_eq!(
        service.metric("csel_auth_reload_waiting_for_writer{file=\"rules\"}"),
        0.0,
        "the writer has closed the file"
    );
    assert_eq!(warnings(&service, &rules), 1, "the wait is logged once");
}

/// The same for the htpasswd file: while its writer pauses with only a new user's line written,
/// the users of the last good version keep logging in (the half would drop them).
#[test]
fn a_writer_pausing_for_seconds_never_puts_half_an_htpasswd_file_in_force() {
    let _turn = alone();
    let rules = "grant pull on (path =^ \"/v2/library/\") to authenticated\n";
    let old = htpasswd(&["alice", "bob"], 4);
    let carol = htpasswd(&["carol"], 4);
    let service = super::setup(rules, &old).arg("--reload-interval").arg("1").start();
    let users = service.htpasswd().to_path_buf();
    let library = "/v2/library/alpine/manifests/1";
    assert_eq!(service.auth_status(Some("alice"), "GET", library), 200);
    assert_eq!(service.auth_status(Some("carol"), "GET", library), 401);

    let request = Request::subrequest("GET", library)
        .with_nginx_headers()
        .user(Some("alice"))
        .bytes();
    let mut connection = service.connect();
    let (answers, gauge_seen, warned) = write_with_a_long_pause(&service, "htpasswd", &users, (&carol, &old), || {
        connection.send(&request).map_or(0, |r| r.status)
    });
    let refused = answers.iter().filter(|&&s| s != 200).count();
    assert_eq!(
        refused,
        0,
        "the half-written htpasswd was in force for {refused} of {} requests while the writer paused",
        answers.len()
    );
    assert!(
        gauge_seen,
        "/metrics never said that the htpasswd file waits for its writer"
    );
    assert!(warned, "the log never said that the htpasswd file waits for its writer");

    wait_for(Duration::from_secs(10), "the whole new file to load", || {
        (service.metric("csel_auth_version{file=\"htpasswd\"}") == 2.0).then_some(())
    });
    for user in ["alice", "bob", "carol"] {
        assert_eq!(
            service.auth_status(Some(user), "GET", library),
            200,
            "{user} in the new version"
        );
    }
    assert_eq!(warnings(&service, &users), 1, "the wait is logged once");
}

/// The same for the access keys file: while its writer pauses with only the first key's line
/// written, the second key (of the last good version) keeps logging in.
#[test]
fn a_writer_pausing_for_seconds_never_puts_half_an_access_keys_file_in_force() {
    let _turn = alone();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let keys = dir.path().join("access.keys");
    let create = |id: &str| {
        let out = std::process::Command::new(crate::kit::service::binary())
            .args(["access-key", "create", "--user", "alice", "--id", id, "--file"])
            .arg(&keys)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    create("first");
    let second = create("second");
    let whole = fs::read_to_string(&keys).unwrap_or_else(|e| panic!("{e}"));
    let cut = whole.find("\nkey second").map_or(whole.len(), |i| i + 1);
    let rules = "grant pull on (path =^ \"/v2/library/\") to authenticated\n";
    let service = super::setup(rules, &htpasswd(&["alice"], 4))
        .access_keys(&keys)
        .arg("--reload-interval")
        .arg("1")
        .start();
    let library = "/v2/library/alpine/manifests/1";
    let request = Request::subrequest("GET", library)
        .with_nginx_headers()
        .basic("alice", &second)
        .bytes();
    // The new version differs from the old only by a comment: a reload needs a change.
    let rest = format!("{}# the second key, and this line: a new version\n", &whole[cut..]);
    let mut connection = service.connect();
    let (answers, gauge_seen, warned) =
        write_with_a_long_pause(&service, "access_keys", &keys, (&whole[..cut], &rest), || {
            connection.send(&request).map_or(0, |r| r.status)
        });
    let refused = answers.iter().filter(|&&s| s != 200).count();
    assert_eq!(
        refused,
        0,
        "the half-written keys file was in force for {refused} of {} requests while the writer paused",
        answers.len()
    );
    assert!(
        gauge_seen,
        "/metrics never said that the keys file waits for its writer"
    );
    assert!(warned, "the log never said that the keys file waits for its writer");
    wait_for(Duration::from_secs(10), "the whole file to load", || {
        (service.metric("csel_auth_version{file=\"access_keys\"}") == 2.0).then_some(())
    });
    assert_eq!(service.auth("GET", library, Some(("alice", &second))).status, 200);
}

/// Reads of the watched files must not wake the watcher again: an idle service reads nothing.
#[test]
fn an_idle_service_does_not_reread_its_files() {
    let service = super::setup(&version(1), &htpasswd(&["alice"], 4)).start();
    let reload_thread_reads = || {
        let tasks = fs::read_dir(format!("/proc/{}/task", service.pid())).unwrap_or_else(|e| panic!("{e}"));
        tasks
            .filter_map(Result::ok)
            .filter(|t| fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "reload"))
            .filter_map(|t| fs::read_to_string(t.path().join("io")).ok())
            .filter_map(|io| {
                io.lines()
                    .find_map(|l| l.strip_prefix("rchar:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .sum::<u64>()
    };
    // One reload, then watch the reload thread for half a second.
    write(service.rules(), version(2).as_bytes());
    wait_for(Duration::from_secs(5), "the reload", || {
        (service.metric("csel_auth_version{file=\"rules\"}") == 2.0).then_some(())
    });
    let mut previous = reload_thread_reads();
    assert!(
        previous > 0,
        "the reload thread read nothing: is it still called `reload`?"
    );
    let settled = wait_for(Duration::from_secs(5), "the reload thread to go quiet", || {
        std::thread::sleep(Duration::from_millis(100));
        let now = reload_thread_reads();
        let quiet = now == previous;
        previous = now;
        quiet.then_some(now)
    });
    let window = Instant::now();
    while window.elapsed() < Duration::from_millis(500) {
        assert_eq!(service.auth_status(None, "GET", "/v2/library/a/manifests/1"), 200);
    }
    let read = reload_thread_reads() - settled;
    assert_eq!(read, 0, "the idle service read {read} bytes of its files in 0.5 s");
}
