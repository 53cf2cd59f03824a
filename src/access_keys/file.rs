//! Changing the keys file while the service may be reading it.
//!
//! A new key is appended in one `write` on a file opened with `O_APPEND`: the other lines are
//! never rewritten, and the service's reload (which waits for the writer to close the file)
//! sees the old file or the new one. A revocation writes the new content to a temporary file
//! in the same directory and renames it over the old one, keeping its permissions (and owner,
//! where allowed), so a reader never sees a half-written file. `access-key` commands lock the
//! file (`flock`) while they change it, and check after locking that the name still leads to
//! the file they locked: a creation running while a revocation renames a new file in then
//! appends to the new file, not to the old one that is about to disappear.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::MAX_KEYS_BYTES;

/// Mode of a keys file the commands create.
const NEW_FILE_MODE: u32 = 0o600;

/// How often to reopen a file that was replaced between opening and locking it.
const REOPEN_ATTEMPTS: usize = 20;

/// The keys file, opened, locked, and read.
pub(super) struct Locked {
    file: File,
    /// The real path (symlinks resolved): where a replacement is renamed to.
    pub path: PathBuf,
    pub created: bool,
    pub content: Vec<u8>,
}

fn same_file(file: &File, path: &Path) -> io::Result<bool> {
    let (open, named) = (file.metadata()?, std::fs::metadata(path)?);
    Ok(open.dev() == named.dev() && open.ino() == named.ino())
}

fn read_bounded(file: &mut File) -> io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(0))?;
    let mut content = Vec::new();
    Read::by_ref(file).take(MAX_KEYS_BYTES + 1).read_to_end(&mut content)?;
    if content.len() as u64 > MAX_KEYS_BYTES {
        return Err(io::Error::other(format!(
            "it is larger than {MAX_KEYS_BYTES} bytes: is it the right file?"
        )));
    }
    Ok(content)
}

/// Opens `path` for appending, creating it (mode 0600) when `create` and it is missing, and
/// locks it against the other `access-key` commands.
pub(super) fn open_locked(path: &Path, create: bool) -> io::Result<Locked> {
    for _ in 0..REOPEN_ATTEMPTS {
        let fresh = if create {
            match OpenOptions::new()
                .read(true)
                .append(true)
                .create_new(true)
                .mode(NEW_FILE_MODE)
                .open(path)
            {
                Ok(file) => Some(file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => None,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let created = fresh.is_some();
        let mut file = match fresh {
            Some(file) => file,
            None => match OpenOptions::new().read(true).append(true).open(path) {
                Ok(file) => file,
                // Removed between the two opens: start again.
                Err(e) if create && e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            },
        };
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        file.lock()?;
        match same_file(&file, path) {
            Ok(true) => {}
            // Replaced (or removed) while waiting for the lock: lock what is there now.
            Ok(false) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        let content = read_bounded(&mut file)?;
        return Ok(Locked {
            file,
            path: std::fs::canonicalize(path)?,
            created,
            content,
        });
    }
    Err(io::Error::other(
        "the file kept being replaced while waiting for it: is another program rewriting it?",
    ))
}

impl Locked {
    /// Appends `line` (without its line ending) in one write, after a line ending if the file
    /// lacks a final one, and flushes it to disk. A failed write leaves the file as it was.
    pub(super) fn append(&mut self, line: &str) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        if self.content.last().is_some_and(|b| *b != b'\n') {
            bytes.push(b'\n');
        }
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        let result = self.file.write(&bytes).and_then(|written| {
            if written == bytes.len() {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "only {written} of {} bytes could be written",
                    bytes.len()
                )))
            }
        });
        if let Err(e) = result {
            // The lock keeps other commands out, so the file ends where it ended before.
            let _ = self.file.set_len(self.content.len() as u64);
            return Err(e);
        }
        self.file.sync_data()
    }

    /// Replaces the file's content with `content`: a temporary file in the same directory,
    /// with the same permissions (and owner, when this process may set it), renamed over it.
    /// Returns a warning when the owner could not be kept.
    pub(super) fn replace(self, content: &[u8]) -> io::Result<Option<String>> {
        let meta = self.file.metadata()?;
        let directory = self.path.parent().unwrap_or(Path::new("/"));
        let name = self
            .path
            .file_name()
            .map_or_else(|| "keys".into(), |n| n.to_string_lossy().into_owned());
        let mut temporary = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(directory)?;
        let mut warning = None;
        let new = temporary.as_file();
        if let Err(e) = std::os::unix::fs::fchown(new, Some(meta.uid()), Some(meta.gid())) {
            warning = Some(format!(
                "the file now belongs to this user, not to uid {} gid {} as before ({e})",
                meta.uid(),
                meta.gid()
            ));
        }
        new.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        temporary.write_all(content)?;
        temporary.as_file().sync_all()?;
        temporary.persist(&self.path).map_err(|e| e.error)?;
        // The rename itself must reach the disk before the key counts as revoked.
        File::open(directory)?.sync_all()?;
        Ok(warning)
    }
}

/// What is worth knowing about who may use the file: writing it means adding keys.
pub(super) fn mode_warnings(path: &Path) -> Vec<String> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let mode = meta.mode() & 0o777;
    let shown = path.display();
    let mut warnings = Vec::new();
    if mode & 0o022 != 0 {
        warnings.push(format!(
            "{shown} can be written by its group or by others (mode {mode:03o}): whoever can write it can add \
             a key for any user; chmod 600 or 640"
        ));
    } else if mode & 0o004 != 0 {
        warnings.push(format!(
            "{shown} can be read by others (mode {mode:03o}): it holds no secrets, only their hashes, but it \
             names every key and owner; chmod 600 or 640"
        ));
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_appends_once_and_adds_a_missing_line_ending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.keys");
        let mut locked = open_locked(&path, true).unwrap();
        assert!(locked.created);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        locked.append("one").unwrap();
        drop(locked);
        std::fs::write(&path, "# no final line ending").unwrap();
        let mut locked = open_locked(&path, true).unwrap();
        assert!(!locked.created);
        locked.append("two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "# no final line ending\ntwo\n");
    }

    #[test]
    fn a_missing_file_is_not_created_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let error = open_locked(&dir.path().join("none"), false).err().unwrap();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        assert!(!dir.path().join("none").exists());
    }

    #[test]
    fn replace_keeps_the_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.keys");
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let locked = open_locked(&path, false).unwrap();
        assert_eq!(locked.content, b"old\n");
        assert_eq!(locked.replace(b"new\n").unwrap(), None);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("access.keys")]);
    }

    /// Whether /proc/locks shows a process blocked on an flock of `inode`.
    fn waits_for_lock(inode: u64) -> bool {
        let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
        let suffix = format!(":{inode}");
        locks
            .lines()
            .any(|l| l.contains("-> FLOCK") && l.split_whitespace().any(|f| f.ends_with(&suffix)))
    }

    #[test]
    fn a_creation_waiting_for_a_revocation_appends_to_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.keys");
        std::fs::write(&path, "a\nb\n").unwrap();
        let revoking = open_locked(&path, false).unwrap();
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let creator = {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut locked = open_locked(&path, true).unwrap();
                locked_tx.send(()).unwrap();
                locked.append("c").unwrap();
            })
        };
        // Wait until the creator blocks on the lock (the kernel lists it as waiting).
        let inode = std::fs::metadata(&path).unwrap().ino();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !waits_for_lock(inode) {
            assert!(
                std::time::Instant::now() < deadline,
                "the creator never waited for the lock"
            );
            assert!(
                locked_rx.try_recv().is_err(),
                "the creator got the lock the revocation holds"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        revoking.replace(b"b\n").unwrap();
        creator.join().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b\nc\n");
    }

    #[test]
    fn loose_modes_are_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "").unwrap();
        for (mode, wanted) in [
            (0o600, None),
            (0o640, None),
            (0o644, Some("read by others")),
            (0o620, Some("written")),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let warnings = mode_warnings(&path);
            match wanted {
                None => assert!(warnings.is_empty(), "{mode:o}: {warnings:?}"),
                Some(w) => assert!(warnings[0].contains(w), "{mode:o}: {warnings:?}"),
            }
        }
    }
}
