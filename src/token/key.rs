//! The token signing key: loaded from (or created as) a private key file, and
//! split into one key per kind of token.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::Mac;
use rand::RngCore;

use super::{HmacSha256, TokenKind};

/// Shortest key accepted from a key file or [`TokenKey::from_bytes`].
pub(crate) const MIN_KEY_BYTES: usize = 32;

const GENERATED_KEY_BYTES: usize = 32;
const MAX_KEY_FILE_LEN: u64 = 4096;
/// A key file that another process has created but not yet written (only
/// possible on filesystems without hard links) is waited for this long.
const EMPTY_KEY_FILE_WAIT: Duration = Duration::from_secs(2);
const ACCESS_KEY_LABEL: &[u8] = b"csel-auth token key v1: access";
const REFRESH_KEY_LABEL: &[u8] = b"csel-auth token key v1: refresh";

/// The token signing key. Cloning is cheap; `Debug` never shows key material.
#[derive(Clone)]
pub struct TokenKey {
    access_mac: HmacSha256,
    refresh_mac: HmacSha256,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey { .. }")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenKeyError {
    #[error("cannot {action} token key file {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "token key file {} is accessible by group or others (mode {mode:03o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "token key file {} is owned by {}, not by {}: whoever owns it can replace the key and forge \
         tokens; if its content is trusted run `chown {} {}`, else delete it to have a new key generated",
        path.display(),
        describe_user(*owner),
        expected_owner(*service_user),
        user_name(*service_user).unwrap_or_else(|| service_user.to_string()),
        path.display()
    )]
    Owner {
        path: PathBuf,
        owner: u32,
        service_user: u32,
    },
    #[error("token key file {} is invalid: {reason}", path.display())]
    InvalidFile { path: PathBuf, reason: String },
    #[error("token key is too short: {len} bytes, at least {MIN_KEY_BYTES} are needed")]
    TooShort { len: usize },
}

impl TokenKey {
    /// Uses `bytes` (at least [`MIN_KEY_BYTES`]) as the secret.
    pub fn from_bytes(bytes: &[u8]) -> Result<TokenKey, TokenKeyError> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(TokenKeyError::TooShort { len: bytes.len() });
        }
        Ok(TokenKey {
            access_mac: derive_mac(bytes, ACCESS_KEY_LABEL)?,
            refresh_mac: derive_mac(bytes, REFRESH_KEY_LABEL)?,
        })
    }

    /// Loads the key from `path`, creating it (32 random bytes, hex, mode
    /// 0600) when it does not exist. An existing file must be owned by the
    /// user csel-auth runs as (or root) and unreadable by group and others. Creation is atomic: the content is written
    /// to a temporary file and hard-linked into place, so replicas racing on a
    /// shared file all end up with the one key that won.
    pub fn load_or_create(path: &Path) -> Result<TokenKey, TokenKeyError> {
        if let Some(key) = load_existing(path)? {
            return Ok(key);
        }
        create_key_file(path)
    }

    pub(super) fn mac_for(&self, kind: TokenKind) -> HmacSha256 {
        match kind {
            TokenKind::Access => self.access_mac.clone(),
            TokenKind::Refresh => self.refresh_mac.clone(),
        }
    }
}

fn derive_mac(master: &[u8], label: &[u8]) -> Result<HmacSha256, TokenKeyError> {
    // HMAC accepts keys of any length, so these errors cannot happen; they are
    // mapped rather than unwrapped all the same.
    let mut derivation =
        HmacSha256::new_from_slice(master).map_err(|_| TokenKeyError::TooShort { len: master.len() })?;
    derivation.update(label);
    let derived = derivation.finalize().into_bytes();
    HmacSha256::new_from_slice(&derived).map_err(|_| TokenKeyError::TooShort { len: 0 })
}

/// `Ok(None)` when the file does not exist.
fn load_existing(path: &Path) -> Result<Option<TokenKey>, TokenKeyError> {
    let deadline = Instant::now() + EMPTY_KEY_FILE_WAIT;
    loop {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(TokenKeyError::Io {
                    action: "open",
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        // Checked on the opened handle, so the file read is the file checked.
        let metadata = file.metadata().map_err(|source| TokenKeyError::Io {
            action: "inspect",
            path: path.to_path_buf(),
            source,
        })?;
        if !metadata.is_file() {
            return Err(invalid_key_file(path, "not a regular file".to_string()));
        }
        let owner = metadata.uid();
        let service_user = nix::unistd::geteuid().as_raw();
        if owner != service_user && owner != 0 {
            return Err(TokenKeyError::Owner {
                path: path.to_path_buf(),
                owner,
                service_user,
            });
        }
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokenKeyError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut content = Vec::new();
        (&mut file)
            .take(MAX_KEY_FILE_LEN + 1)
            .read_to_end(&mut content)
            .map_err(|source| TokenKeyError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            })?;
        if content.len() as u64 > MAX_KEY_FILE_LEN {
            return Err(invalid_key_file(path, format!("larger than {MAX_KEY_FILE_LEN} bytes")));
        }
        if content.iter().all(u8::is_ascii_whitespace) {
            if Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            return Err(invalid_key_file(path, format!("empty; {}", key_file_hint(path))));
        }
        let secret = decode_key_text(&content)
            .ok_or_else(|| invalid_key_file(path, format!("not hex or base64 text; {}", key_file_hint(path))))?;
        if secret.len() < MIN_KEY_BYTES {
            return Err(invalid_key_file(
                path,
                format!(
                    "key is {} bytes, at least {MIN_KEY_BYTES} are needed; {}",
                    secret.len(),
                    key_file_hint(path)
                ),
            ));
        }
        return TokenKey::from_bytes(&secret).map(Some);
    }
}

fn create_key_file(path: &Path) -> Result<TokenKey, TokenKeyError> {
    let io_error = |action: &'static str| {
        move |source: io::Error| TokenKeyError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut secret = [0u8; GENERATED_KEY_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut secret)
        .map_err(|error| io_error("generate random bytes for")(io::Error::other(error)))?;
    let text = format!("{}\n", hex::encode(secret));

    let file_name = path
        .file_name()
        .ok_or_else(|| invalid_key_file(path, "the path names no file".to_string()))?;
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut suffix = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut suffix);
    let temporary = directory.join(format!(
        ".{}.{}-{}.tmp",
        file_name.to_string_lossy(),
        std::process::id(),
        hex::encode(suffix)
    ));
    if let Err(source) = write_new_private_file(&temporary, text.as_bytes()) {
        if source.kind() == io::ErrorKind::NotFound && !directory.is_dir() {
            return Err(invalid_key_file(
                path,
                format!(
                    "it cannot be created: directory {} does not exist; create it (owned by the user csel-auth \
                     runs as, mode 700; systemd: StateDirectory=csel-auth) or name another file with --token-key",
                    directory.display()
                ),
            ));
        }
        return Err(io_error("create")(source));
    }
    let linked = fs::hard_link(&temporary, path);
    // Best effort: a leftover temporary file is harmless.
    let _ = fs::remove_file(&temporary);
    match linked {
        Ok(()) => {
            sync_directory(&directory);
            TokenKey::from_bytes(&secret)
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => load_winner(path),
        // Filesystems without hard links: create in place. Another process may
        // briefly see the file empty; `load_existing` waits for it.
        Err(_) => match write_new_private_file(path, text.as_bytes()) {
            Ok(()) => {
                sync_directory(&directory);
                TokenKey::from_bytes(&secret)
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => load_winner(path),
            Err(source) => Err(io_error("create")(source)),
        },
    }
}

fn load_winner(path: &Path) -> Result<TokenKey, TokenKeyError> {
    load_existing(path)?
        .ok_or_else(|| invalid_key_file(path, "created by another process and removed again".to_string()))
}

pub(super) fn write_new_private_file(path: &Path, content: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    let written = file.write_all(content).and_then(|()| file.sync_all());
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

fn sync_directory(directory: &Path) {
    // Durability of the new name only; the key is already usable without it.
    if let Ok(handle) = File::open(directory) {
        let _ = handle.sync_all();
    }
}

/// `uid 65534 (nobody)`, or `uid 65534` when the name cannot be looked up.
fn describe_user(uid: u32) -> String {
    match user_name(uid) {
        Some(name) => format!("uid {uid} ({name})"),
        None => format!("uid {uid}"),
    }
}

/// Who may own the key file: the user csel-auth runs as, or root.
fn expected_owner(service_user: u32) -> String {
    if service_user == 0 {
        "root, the user csel-auth runs as".to_string()
    } else {
        format!("{}, the user csel-auth runs as, or root", describe_user(service_user))
    }
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|user| user.name)
}

fn invalid_key_file(path: &Path, reason: String) -> TokenKeyError {
    TokenKeyError::InvalidFile {
        path: path.to_path_buf(),
        reason,
    }
}

fn key_file_hint(path: &Path) -> String {
    format!(
        "delete it to have a new one generated, or write one with `(umask 077; openssl rand -hex 32 > {})`",
        path.display()
    )
}

fn decode_key_text(content: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(content).ok()?.trim();
    if let Ok(bytes) = hex::decode(text) {
        return Some(bytes);
    }
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}
