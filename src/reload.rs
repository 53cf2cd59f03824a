//! Hot reload of the rules, htpasswd and access keys files.
//!
//! The versions in force live in `ArcSwap`s: a request takes the current
//! `Arc` once and finishes on it, a reload swaps in a new one without a lock.
//! Changes are noticed three ways, so none is missed: a `notify` watcher on
//! the files' directories (editors' write-and-rename, `git checkout`,
//! Kubernetes' symlink swap all show up there), SIGHUP, and a periodic check.
//! A file being written is read only once its writer has closed it, however
//! long that takes, and parsed only once its content has stopped changing, so
//! a half-written file is not taken for a new version even when its writer
//! stops half-way; a file that does not load leaves the last good version in
//! force. Writers are seen through the watcher: a write to a watched file not
//! yet followed by a close-after-writing (inotify's `IN_MODIFY` and
//! `IN_CLOSE_WRITE`, which report every process of this kernel, whatever its
//! user or mount namespace). Writers the kernel does not report (another host
//! over NFS, a lost event) are not seen: write-and-rename is safe regardless.
//! A writer that keeps a file open for [`WRITER_WARNING`] is logged once, and
//! `/metrics` shows which file waits. Opening and reading a file is not a
//! change: the checks' own reads do not wake the watcher again.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};

use crate::access_keys::AccessKeys;
use crate::identity::{Htpasswd, HtpasswdError};
use crate::metrics::{Metrics, Watched};
use crate::rules::{LoadError, Rules, RulesOptions};

/// How long a file's content must stay the same before it is parsed.
const SETTLE: Duration = Duration::from_millis(15);
/// How many times to wait for a file that keeps changing before giving up
/// until the next event.
const SETTLE_ATTEMPTS: usize = 20;
/// Events arriving this close together are handled once.
const DEBOUNCE: Duration = Duration::from_millis(5);
/// How long a writer may keep a watched file open before the wait is logged.
/// Writers normally close within milliseconds; the wait goes on regardless.
pub(crate) const WRITER_WARNING: Duration = Duration::from_secs(5);
/// Longest wait for a pause in a stream of events before checking anyway.
const MAX_DEBOUNCE: Duration = Duration::from_millis(100);

type Fingerprint = [u8; 32];

/// The rules, users and access keys in force, and where they come from.
pub(crate) struct Store {
    rules: ArcSwap<Rules>,
    htpasswd: ArcSwap<Htpasswd>,
    access_keys: ArcSwap<AccessKeys>,
    rules_path: PathBuf,
    htpasswd_path: Option<PathBuf>,
    access_keys_path: Option<PathBuf>,
    metrics: Arc<Metrics>,
    /// Content last seen for each file (loaded or refused), so an unchanged
    /// file is not parsed again and a broken one is logged once.
    seen: Mutex<[Option<Seen>; 3]>,
    /// One check at a time, so an older read can never be stored after a
    /// newer one.
    checking: Mutex<()>,
    /// Watched files written to and not closed since (kept up to date by the
    /// watcher), by the path the events name.
    writers: Mutex<HashMap<PathBuf, Writer>>,
    /// Counts writes to each watched file: a read that overlapped one is not used.
    writes: [AtomicU64; 3],
}

/// A watched file written to and not closed since.
struct Writer {
    which: Watched,
    since: Instant,
    /// Whether the wait was logged (once per writer).
    logged: bool,
}

#[derive(Clone, PartialEq, Eq)]
struct Seen {
    stamp: Option<FileStamp>,
    fingerprint: Fingerprint,
}

/// Cheap identity of a file version, to skip reading unchanged files.
#[derive(Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode: meta.ino(),
    })
}

/// What a file holds now, for comparing with what is loaded.
fn fingerprint_of(path: &Path) -> Option<Seen> {
    let stamp = stamp(path);
    let bytes = crate::files::read_bounded(path, crate::rules::MAX_RULES_BYTES).ok()?;
    Some(Seen {
        stamp,
        fingerprint: Sha256::digest(&bytes).into(),
    })
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Why the files could not be loaded at start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error(transparent)]
    Rules(#[from] LoadError),
    #[error(transparent)]
    Htpasswd(#[from] HtpasswdError),
    #[error(transparent)]
    AccessKeys(#[from] crate::access_keys::LoadError),
}

/// Why watching the files could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WatchError {
    #[error("cannot start the file watcher: {0}")]
    Watcher(#[source] notify::Error),
    #[error("cannot watch {}: {source}", directory.display())]
    Directory {
        directory: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("cannot start the {what}: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl Store {
    /// Loads the files; any error stops the start-up.
    pub(crate) fn open(
        rules_path: &Path,
        htpasswd_path: Option<&Path>,
        rules_options: RulesOptions,
        access_keys_path: Option<&Path>,
        metrics: Arc<Metrics>,
    ) -> Result<Store, OpenError> {
        let rules_before = fingerprint_of(rules_path);
        let htpasswd_before = htpasswd_path.and_then(fingerprint_of);
        let access_keys_before = access_keys_path.and_then(fingerprint_of);
        let rules = Rules::load_with(rules_path, rules_options)?;
        let htpasswd = match htpasswd_path {
            Some(p) => Htpasswd::load(p)?,
            None => Htpasswd::empty(),
        };
        let access_keys = match access_keys_path {
            Some(p) => AccessKeys::load(p)?,
            None => AccessKeys::empty(),
        };
        for which in Watched::ALL {
            metrics.file(which).version.store(1, Ordering::Relaxed);
            metrics.file(which).loaded_at.store(now_unix(), Ordering::Relaxed);
        }
        let store = Store {
            rules: ArcSwap::from_pointee(rules),
            htpasswd: ArcSwap::from_pointee(htpasswd),
            access_keys: ArcSwap::from_pointee(access_keys),
            rules_path: rules_path.to_path_buf(),
            htpasswd_path: htpasswd_path.map(Path::to_path_buf),
            access_keys_path: access_keys_path.map(Path::to_path_buf),
            metrics,
            seen: Mutex::new([None, None, None]),
            checking: Mutex::new(()),
            writers: Mutex::new(HashMap::new()),
            writes: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
        };
        // Remember what was loaded, so the first check does not reload it.
        // Only when the file did not change while it was being loaded:
        // otherwise the first check must load the newer content.
        for (which, before) in [
            (Watched::Rules, rules_before),
            (Watched::Htpasswd, htpasswd_before),
            (Watched::AccessKeys, access_keys_before),
        ] {
            if let Some(path) = store.path(which) {
                if let (Some(before), Some(after)) = (before, fingerprint_of(path)) {
                    if before == after {
                        store.remember(which, before);
                    }
                }
            }
        }
        Ok(store)
    }

    pub(crate) fn rules(&self) -> Arc<Rules> {
        self.rules.load_full()
    }

    pub(crate) fn htpasswd(&self) -> Arc<Htpasswd> {
        self.htpasswd.load_full()
    }

    /// The access keys in force (none without a keys file). Read on every request that uses
    /// a key or a key's token, so a revocation ends them with the reload.
    pub(crate) fn access_keys(&self) -> Arc<AccessKeys> {
        self.access_keys.load_full()
    }

    fn path(&self, which: Watched) -> Option<&Path> {
        match which {
            Watched::Rules => Some(&self.rules_path),
            Watched::Htpasswd => self.htpasswd_path.as_deref(),
            Watched::AccessKeys => self.access_keys_path.as_deref(),
        }
    }

    fn remember(&self, which: Watched, seen: Seen) {
        if let Ok(mut all) = self.seen.lock() {
            all[which as usize] = Some(seen);
        }
    }

    fn last_seen(&self, which: Watched) -> Option<Seen> {
        self.seen.lock().ok().and_then(|all| all[which as usize].clone())
    }

    /// Reloads whichever file changed. `Check::Forced` reparses even
    /// unchanged files (SIGHUP). A file open for writing is left alone: its
    /// writer's close brings the next check.
    pub(crate) fn check(&self, how: Check) {
        let _one_at_a_time = self.checking.lock();
        let to_read: Vec<(Watched, &Path)> = Watched::ALL
            .into_iter()
            .filter_map(|which| Some((which, self.path(which)?)))
            .filter(|(which, path)| how != Check::Periodic || self.may_have_changed(*which, path))
            .filter(|(which, path)| {
                let written = self.being_written(*which);
                if written && how == Check::Forced {
                    tracing::warn!(
                        file = %path.display(),
                        kind = which.label(),
                        "not reloaded: a writer has the file open; it is read when the writer closes it"
                    );
                }
                !written
            })
            .collect();
        // The files settle together: a change to one is not held up by the
        // other's wait.
        let paths: Vec<&Path> = to_read.iter().map(|(_, path)| *path).collect();
        let writes_before: Vec<u64> = to_read.iter().map(|(which, _)| self.write_count(*which)).collect();
        let contents = read_settled(&paths);
        for (((which, path), content), before) in to_read.iter().zip(contents).zip(writes_before) {
            if self.write_count(*which) != before || self.being_written(*which) {
                // What was read may be half a file.
                tracing::debug!(
                    kind = which.label(),
                    "the file is being written: its reload waits for the writer"
                );
                continue;
            }
            self.apply(*which, path, how, content);
        }
    }

    fn write_count(&self, which: Watched) -> u64 {
        self.writes[which as usize].load(Ordering::SeqCst)
    }

    /// Only the periodic check trusts metadata: an in-place rewrite of the
    /// same length can keep the same modification time.
    fn may_have_changed(&self, which: Watched, path: &Path) -> bool {
        let current_stamp = stamp(path);
        current_stamp.is_none() || self.last_seen(which).is_none_or(|l| l.stamp != current_stamp)
    }

    fn apply(&self, which: Watched, path: &Path, how: Check, content: Result<Settled, String>) {
        let force = how == Check::Forced;
        let last = self.last_seen(which);
        let (bytes, stamp_after) = match content {
            Ok(settled) => settled,
            Err(why) => {
                // Missing, unreadable, too large: keep the version in force, say so once.
                if last.as_ref().is_none_or(|l| l.stamp.is_some()) || force {
                    self.refused(which, &format!("cannot read {}: {why}", path.display()));
                    self.remember(
                        which,
                        Seen {
                            stamp: None,
                            fingerprint: [0; 32],
                        },
                    );
                }
                return;
            }
        };
        let fingerprint: Fingerprint = Sha256::digest(&bytes).into();
        let seen = Seen {
            stamp: stamp_after,
            fingerprint,
        };
        if !force && last.as_ref().is_some_and(|l| l.fingerprint == fingerprint) {
            self.remember(which, seen);
            return;
        }
        self.remember(which, seen);
        let shown = path.display().to_string();
        let result = match which {
            Watched::Rules => match std::str::from_utf8(&bytes) {
                Ok(text) => Rules::parse_with(&shown, text, self.rules.load().options())
                    .map(|r| self.rules.store(Arc::new(r)))
                    .map_err(|e| e.to_string()),
                Err(_) => Err(format!("{shown}: the rules file is not valid UTF-8")),
            },
            Watched::Htpasswd => match std::str::from_utf8(&bytes) {
                Ok(text) => Htpasswd::parse(&shown, text)
                    .map(|h| self.htpasswd.store(Arc::new(h)))
                    .map_err(|e| e.to_string()),
                Err(_) => Err(format!("{shown}: the htpasswd file is not valid UTF-8")),
            },
            Watched::AccessKeys => match std::str::from_utf8(&bytes) {
                Ok(text) => AccessKeys::parse(&shown, text)
                    .map(|k| self.access_keys.store(Arc::new(k)))
                    .map_err(|e| e.to_string()),
                Err(_) => Err(format!("{shown}: the access keys file is not valid UTF-8")),
            },
        };
        match result {
            Ok(()) => {
                let m = self.metrics.file(which);
                m.reloads_ok.fetch_add(1, Ordering::Relaxed);
                m.last_reload_failed.store(0, Ordering::Relaxed);
                let version = m.version.fetch_add(1, Ordering::Relaxed) + 1;
                m.loaded_at.store(now_unix(), Ordering::Relaxed);
                tracing::info!(file = %shown, kind = which.label(), version, "reloaded");
            }
            Err(message) => self.refused(which, &message),
        }
    }

    fn refused(&self, which: Watched, message: &str) {
        let m = self.metrics.file(which);
        m.reloads_failed.fetch_add(1, Ordering::Relaxed);
        m.last_reload_failed.store(1, Ordering::Relaxed);
        tracing::error!(
            kind = which.label(),
            "reload refused, the previous version stays in force:\n{message}"
        );
    }

    /// The directories to watch: for each file, the directory of every link
    /// on the way from the configured path to the real file (Kubernetes:
    /// `registry.rules -> ..data/registry.rules`, `..data -> ..2024_…`).
    /// Symlinks can be retargeted, so this is recomputed after each change.
    fn watched_directories(&self) -> BTreeSet<PathBuf> {
        [
            Some(self.rules_path.as_path()),
            self.htpasswd_path.as_deref(),
            self.access_keys_path.as_deref(),
        ]
        .into_iter()
        .flatten()
        .flat_map(directories_on_the_way)
        .collect()
    }
}

/// Most symlinks followed from a configured path (the kernel's limit).
const MAX_SYMLINK_HOPS: usize = 40;

fn directories_on_the_way(path: &Path) -> Vec<PathBuf> {
    let real = |directory: &Path| std::fs::canonicalize(directory).unwrap_or_else(|_| directory.to_path_buf());
    let mut directories = Vec::new();
    let mut current = path.to_path_buf();
    for _ in 0..MAX_SYMLINK_HOPS {
        let parent = current
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        directories.push(real(&parent));
        match std::fs::read_link(&current) {
            // An absolute target replaces the path, a relative one is joined.
            Ok(target) => current = parent.join(target),
            Err(_) => break,
        }
    }
    if let Some(real_parent) = std::fs::canonicalize(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        directories.push(real_parent);
    }
    directories
}

/// Watches `wanted` and stops watching what is no longer wanted. Returns
/// what could not be watched, and why.
fn sync_watches(
    watcher: &mut impl Watcher,
    watched: &mut BTreeSet<PathBuf>,
    wanted: &BTreeSet<PathBuf>,
) -> Vec<WatchError> {
    for gone in watched.difference(wanted).cloned().collect::<Vec<_>>() {
        // The directory may be deleted already (Kubernetes removes the old
        // data directory): nothing to undo then.
        let _ = watcher.unwatch(&gone);
        watched.remove(&gone);
    }
    let mut failures = Vec::new();
    for directory in wanted.difference(watched).cloned().collect::<Vec<_>>() {
        match watcher.watch(&directory, RecursiveMode::NonRecursive) {
            Ok(()) => {
                watched.insert(directory);
            }
            Err(source) => failures.push(WatchError::Directory { directory, source }),
        }
    }
    failures
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// Something changed in a watched directory: read the files.
    Event,
    /// The timer: read only files whose size, time or inode changed.
    Periodic,
    /// SIGHUP: reparse every file.
    Forced,
}

/// A file's settled content and its metadata stamp.
type Settled = (Vec<u8>, Option<FileStamp>);

/// Reads a regular file, bounded (a FIFO is refused, not opened); the error
/// says why it cannot be read.
fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    let limit = crate::rules::MAX_RULES_BYTES;
    crate::files::read_bounded(path, limit).map_err(|e| match e {
        crate::files::ReadError::Io(e) => e.to_string(),
        crate::files::ReadError::TooLarge(size) => format!("it is {size} bytes; the limit is {limit} bytes"),
    })
}

/// Reads each file until two reads `SETTLE` apart agree (an error: missing,
/// unreadable, too large or still changing after `SETTLE_ATTEMPTS`). A
/// missing file is waited for as long: `git checkout` and some editors delete
/// a file and create it again, which is not a failed reload.
fn read_settled(paths: &[&Path]) -> Vec<Result<Settled, String>> {
    let mut previous: Vec<Result<Vec<u8>, String>> = paths.iter().map(|p| read_file(p)).collect();
    let mut settled: Vec<Option<Settled>> = paths.iter().map(|_| None).collect();
    for _ in 0..SETTLE_ATTEMPTS {
        if settled.iter().all(Option::is_some) {
            break;
        }
        std::thread::sleep(SETTLE);
        for (index, path) in paths.iter().enumerate() {
            if settled[index].is_some() {
                continue;
            }
            let stamp_now = stamp(path);
            match (&previous[index], read_file(path)) {
                (Ok(before), Ok(now)) if *before == now => settled[index] = Some((now, stamp_now)),
                (_, now) => previous[index] = now,
            }
        }
    }
    settled
        .into_iter()
        .zip(previous)
        .map(|(settled, last_read)| match (settled, last_read) {
            (Some(settled), _) => Ok(settled),
            (None, Err(why)) => Err(why),
            (None, Ok(_)) => Err(format!("it kept changing for {:?}", SETTLE * SETTLE_ATTEMPTS as u32)),
        })
        .collect()
}

impl Store {
    /// Which watched file `path` is, or resolves to.
    fn watched_file(&self, path: &Path) -> Option<Watched> {
        let real = std::fs::canonicalize(path).ok()?;
        Watched::ALL.into_iter().find(|which| {
            self.path(*which)
                .is_some_and(|p| std::fs::canonicalize(p).is_ok_and(|r| r == real))
        })
    }

    fn writers(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Writer>> {
        self.writers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a writer has `which` open (written to and not closed since).
    fn being_written(&self, which: Watched) -> bool {
        self.writers().values().any(|w| w.which == which)
    }

    /// Forgets the writers of `paths` (they closed the file, or the name now
    /// holds another file); true if there were any.
    fn writers_gone(&self, paths: &[PathBuf]) -> bool {
        let mut writers = self.writers();
        let before = writers.len();
        writers.retain(|p, _| !paths.contains(p));
        let gone = writers.len() != before;
        self.show_writers(&writers);
        gone
    }

    /// `/metrics`: which files wait for a writer.
    fn show_writers(&self, writers: &HashMap<PathBuf, Writer>) {
        for which in Watched::ALL {
            let waiting = writers.values().any(|w| w.which == which);
            self.metrics
                .file(which)
                .waiting_for_writer
                .store(u64::from(waiting), Ordering::Relaxed);
        }
    }

    /// Logs, once per writer, the files whose writer has kept them open for
    /// [`WRITER_WARNING`]; returns how long until the next one is due.
    fn log_long_writers(&self) -> Option<Duration> {
        let mut writers = self.writers();
        let mut next = None::<Duration>;
        for (path, writer) in writers.iter_mut().filter(|(_, w)| !w.logged) {
            let open_for = writer.since.elapsed();
            if open_for >= WRITER_WARNING {
                writer.logged = true;
                tracing::warn!(
                    file = %path.display(),
                    kind = writer.which.label(),
                    "the file waits for its writer to close it (open for writing for {} s); the previous \
                     version stays in force until then",
                    open_for.as_secs()
                );
            } else {
                let due = WRITER_WARNING - open_for;
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        next
    }

    /// Records what a file event means; false when it cannot change a
    /// watched file (opening and reading — the checks' own reads among them
    /// — or writing another file in a watched directory).
    fn note_event(&self, event: notify::Result<notify::Event>) -> bool {
        use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
        let Ok(event) = event else {
            return true;
        };
        match event.kind {
            EventKind::Modify(ModifyKind::Data(_)) => {
                let written: Vec<(PathBuf, Watched)> = event
                    .paths
                    .into_iter()
                    .filter_map(|p| {
                        let which = self.watched_file(&p)?;
                        Some((p, which))
                    })
                    .collect();
                if written.is_empty() {
                    return false;
                }
                let now = Instant::now();
                let mut writers = self.writers();
                for (path, which) in written {
                    self.writes[which as usize].fetch_add(1, Ordering::SeqCst);
                    writers.entry(path).or_insert(Writer {
                        which,
                        since: now,
                        logged: false,
                    });
                }
                self.show_writers(&writers);
                true
            }
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => self.writers_gone(&event.paths),
            EventKind::Access(_) => false,
            // Permissions, owner or times changed (`chmod`, `chown`): a writer may
            // still be half-way, so it is not forgotten.
            EventKind::Modify(ModifyKind::Metadata(_)) => true,
            // Created, renamed, removed: whatever was being written under
            // that name is gone or complete.
            _ => {
                self.writers_gone(&event.paths);
                true
            }
        }
    }

    /// Waits for the next event; while a writer keeps a watched file open,
    /// wakes up to log it once it has for [`WRITER_WARNING`]. False when the
    /// watcher is gone.
    fn wait_for_event(&self, wake: &Receiver<()>) -> bool {
        loop {
            let received = match self.log_long_writers() {
                Some(due) => wake.recv_timeout(due),
                None => wake.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match received {
                Ok(()) => return true,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    /// After a first event: waits until events pause for `DEBOUNCE` (at most
    /// `MAX_DEBOUNCE`). False when the watcher is gone.
    fn debounce(&self, wake: &Receiver<()>) -> bool {
        let started = Instant::now();
        while started.elapsed() < MAX_DEBOUNCE {
            match wake.recv_timeout(DEBOUNCE) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
        while wake.try_recv().is_ok() {}
        true
    }
}

/// Starts the watcher and the periodic check on their own threads. They run
/// until the process ends.
pub(crate) fn start(store: Arc<Store>, period: Duration) -> Result<(), WatchError> {
    let (sender, receiver) = std::sync::mpsc::channel::<()>();
    let noted = Arc::clone(&store);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if noted.note_event(event) {
            let _ = sender.send(());
        }
    })
    .map_err(WatchError::Watcher)?;
    let mut watched = BTreeSet::new();
    if let Some(failure) = sync_watches(&mut watcher, &mut watched, &store.watched_directories()).pop() {
        return Err(failure);
    }
    // A change made between the start-up load and the first watch. Before
    // the service answers, so that no later write races with this check.
    store.check(Check::Event);
    let checker = Arc::clone(&store);
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || {
            let mut resync = move |checker: &Store| {
                for failure in sync_watches(&mut watcher, &mut watched, &checker.watched_directories()) {
                    tracing::warn!("{failure}; changes there are seen by the periodic check only");
                }
            };
            loop {
                resync(&checker);
                if !checker.wait_for_event(&receiver) || !checker.debounce(&receiver) {
                    break;
                }
                // A symlink may point elsewhere now: watch there before
                // reading, so that a write right after the reload is seen.
                resync(&checker);
                checker.check(Check::Event);
            }
        })
        .map_err(|source| WatchError::Thread {
            what: "reload thread",
            source,
        })?;
    std::thread::Builder::new()
        .name("reload-periodic".into())
        .spawn(move || loop {
            std::thread::sleep(period);
            store.check(Check::Periodic);
        })
        .map_err(|source| WatchError::Thread {
            what: "periodic check",
            source,
        })?;
    Ok(())
}

/// SIGHUP: reparse every file, off the async threads.
pub(crate) fn reload_now(store: &Arc<Store>) {
    let store = Arc::clone(store);
    std::thread::spawn(move || store.check(Check::Forced));
}
