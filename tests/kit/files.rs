//! Temporary directories and the files the tests write.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A temporary directory under /tmp (short: unix socket paths are limited to ~107 bytes),
/// removed on drop unless `CSEL_E2E_KEEP_TMP=1`.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    pub fn new(label: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("csel-{label}-"))
            .tempdir_in("/tmp")
            .context("creating a temporary directory in /tmp")?;
        let path = dir.path().to_path_buf();
        Ok(Self { dir: Some(dir), path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `contents` to `name` inside the directory and returns the path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> Result<PathBuf> {
        let path = self.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    pub fn mkdir(&self, name: &str) -> Result<PathBuf> {
        let path = self.join(name);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        if std::env::var_os("CSEL_E2E_KEEP_TMP").is_some_and(|v| v == "1") {
            eprintln!("CSEL_E2E_KEEP_TMP=1: keeping {}", dir.keep().display());
            return;
        }
        if let Err(err) = dir.close() {
            eprintln!("warning: could not remove {}: {err}", self.path.display());
        }
    }
}

/// Writes a file in one piece, failing the test if it cannot.
pub fn write(path: &Path, contents: impl AsRef<[u8]>) {
    if let Err(error) = fs::write(path, contents) {
        panic!("cannot write {}: {error}", path.display());
    }
}

/// Writes `contents` to a temporary file beside `path` and renames it over `path`, as editors and
/// config tools do.
pub fn write_and_rename(path: &Path, contents: impl AsRef<[u8]>) {
    let temporary = path.with_extension("tmp-new");
    write(&temporary, contents);
    if let Err(error) = fs::rename(&temporary, path) {
        panic!("cannot rename onto {}: {error}", path.display());
    }
}

/// The text of `examples/<name>`.
pub fn example(name: &str) -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name);
    fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}
