//! Hot reload of the rules and htpasswd files.
//!
//! The versions in force live in `ArcSwap`s: a request takes the current
//! `Arc` once and finishes on it, a reload swaps in a new one without a lock.
//! Changes are noticed three ways, so none is missed: a `notify` watcher on
//! the files' directories (editors' write-and-rename, `git checkout`,
//! Kubernetes' symlink swap all show up there), SIGHUP, and a periodic check.
//! A file is parsed only once its content has stopped changing, so a
//! half-written file is not taken for a new version; a file that does not
//! load leaves the last good version in force.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};

use crate::identity::Htpasswd;
use crate::metrics::{Metrics, Watched};
use crate::rules::Rules;

/// How long a file's content must stay the same before it is parsed.
const SETTLE: Duration = Duration::from_millis(15);
/// How many times to wait for a file that keeps changing before giving up
/// until the next event.
const SETTLE_ATTEMPTS: usize = 20;
/// Events arriving this close together are handled once.
const DEBOUNCE: Duration = Duration::from_millis(5);

type Fingerprint = [u8; 32];

/// The rules and users in force, and where they come from.
pub struct Store {
    rules: ArcSwap<Rules>,
    htpasswd: ArcSwap<Htpasswd>,
    rules_path: PathBuf,
    htpasswd_path: Option<PathBuf>,
    metrics: Arc<Metrics>,
    /// Content last seen for each file (loaded or refused), so an unchanged
    /// file is not parsed again and a broken one is logged once.
    seen: Mutex<[Option<Seen>; 2]>,
    /// One check at a time, so an older read can never be stored after a
    /// newer one.
    checking: Mutex<()>,
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

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Store {
    /// Loads both files; any error stops the start-up.
    pub fn open(rules_path: &Path, htpasswd_path: Option<&Path>, metrics: Arc<Metrics>) -> Result<Store, String> {
        let rules = Rules::load(rules_path).map_err(|e| e.to_string())?;
        let htpasswd = match htpasswd_path {
            Some(p) => Htpasswd::load(p).map_err(|e| e.to_string())?,
            None => Htpasswd::empty(),
        };
        for which in [Watched::Rules, Watched::Htpasswd] {
            metrics.file(which).version.store(1, Ordering::Relaxed);
            metrics.file(which).loaded_at.store(now_unix(), Ordering::Relaxed);
        }
        let store = Store {
            rules: ArcSwap::from_pointee(rules),
            htpasswd: ArcSwap::from_pointee(htpasswd),
            rules_path: rules_path.to_path_buf(),
            htpasswd_path: htpasswd_path.map(Path::to_path_buf),
            metrics,
            seen: Mutex::new([None, None]),
            checking: Mutex::new(()),
        };
        // Remember what was loaded, so the first check does not reload it.
        for which in [Watched::Rules, Watched::Htpasswd] {
            if let Some(path) = store.path(which) {
                if let Ok(bytes) = std::fs::read(path) {
                    store.remember(
                        which,
                        Seen {
                            stamp: stamp(path),
                            fingerprint: Sha256::digest(&bytes).into(),
                        },
                    );
                }
            }
        }
        Ok(store)
    }

    pub fn rules(&self) -> Arc<Rules> {
        self.rules.load_full()
    }

    pub fn htpasswd(&self) -> Arc<Htpasswd> {
        self.htpasswd.load_full()
    }

    fn path(&self, which: Watched) -> Option<&Path> {
        match which {
            Watched::Rules => Some(&self.rules_path),
            Watched::Htpasswd => self.htpasswd_path.as_deref(),
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
    /// unchanged files (SIGHUP).
    pub fn check(&self, how: Check) {
        let _one_at_a_time = self.checking.lock();
        for which in [Watched::Rules, Watched::Htpasswd] {
            self.check_file(which, how);
        }
    }

    fn check_file(&self, which: Watched, how: Check) {
        let Some(path) = self.path(which) else { return };
        let force = how == Check::Forced;
        let last = self.last_seen(which);
        let current_stamp = stamp(path);
        // Only the periodic check trusts metadata: an in-place rewrite of the
        // same length can keep the same modification time.
        if how == Check::Periodic && current_stamp.is_some() && last.as_ref().is_some_and(|l| l.stamp == current_stamp)
        {
            return;
        }
        let Some((bytes, stamp_after)) = read_settled(path) else {
            // Missing or unreadable: keep the version in force, say so once.
            if last.as_ref().is_none_or(|l| l.stamp.is_some()) || force {
                self.refused(
                    which,
                    &format!("cannot read {}: the previous version stays in force", path.display()),
                );
                self.remember(
                    which,
                    Seen {
                        stamp: None,
                        fingerprint: [0; 32],
                    },
                );
            }
            return;
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
                Ok(text) => Rules::parse(&shown, text)
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

    /// The directories to watch: each file's own, and the directory of the
    /// file a symlink points to.
    fn watched_directories(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for path in [Some(self.rules_path.as_path()), self.htpasswd_path.as_deref()]
            .into_iter()
            .flatten()
        {
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            dirs.push(parent.to_path_buf());
            if let Ok(real) = std::fs::canonicalize(path) {
                if let Some(real_parent) = real.parent() {
                    dirs.push(real_parent.to_path_buf());
                }
            }
        }
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Something changed in a watched directory: read the files.
    Event,
    /// The timer: read only files whose size, time or inode changed.
    Periodic,
    /// SIGHUP: reparse both files.
    Forced,
}

/// Reads a file until two reads `SETTLE` apart agree.
fn read_settled(path: &Path) -> Option<(Vec<u8>, Option<FileStamp>)> {
    let limit = crate::rules::MAX_RULES_BYTES;
    let read = |p: &Path| crate::rules::read_bounded(p, limit).ok();
    let mut previous = read(path)?;
    for _ in 0..SETTLE_ATTEMPTS {
        std::thread::sleep(SETTLE);
        let stamp_now = stamp(path);
        let current = read(path)?;
        if current == previous {
            return Some((current, stamp_now));
        }
        previous = current;
    }
    None
}

/// Starts the watcher and the periodic check on their own threads. They run
/// until the process ends.
pub fn start(store: Arc<Store>, period: Duration) -> Result<(), String> {
    let (sender, receiver) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        let _ = sender.send(());
    })
    .map_err(|e| format!("cannot start the file watcher: {e}"))?;
    for dir in store.watched_directories() {
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    }
    let checker = Arc::clone(&store);
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || {
            let _watcher = watcher;
            while receiver.recv().is_ok() {
                std::thread::sleep(DEBOUNCE);
                while receiver.try_recv().is_ok() {}
                checker.check(Check::Event);
            }
        })
        .map_err(|e| format!("cannot start the reload thread: {e}"))?;
    std::thread::Builder::new()
        .name("reload-periodic".into())
        .spawn(move || loop {
            std::thread::sleep(period);
            store.check(Check::Periodic);
        })
        .map_err(|e| format!("cannot start the periodic check: {e}"))?;
    Ok(())
}

/// SIGHUP: reparse both files, off the async threads.
pub fn reload_now(store: &Arc<Store>) {
    let store = Arc::clone(store);
    std::thread::spawn(move || store.check(Check::Forced));
}
