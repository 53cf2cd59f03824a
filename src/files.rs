//! Reading the files csel-auth watches (rules, htpasswd) with a bound on their size.

use std::io::Read;
use std::path::Path;

/// Why a file could not be read.
pub(crate) enum ReadError {
    Io(std::io::Error),
    TooLarge(u64),
}

/// Reads a whole file, refusing one larger than `limit` without reading it,
/// and anything but a regular file without opening it (opening a FIFO blocks).
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    if !std::fs::metadata(path).map_err(ReadError::Io)?.is_file() {
        return Err(ReadError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let file = std::fs::File::open(path).map_err(ReadError::Io)?;
    let size = file.metadata().map_err(ReadError::Io)?.len();
    if size > limit {
        return Err(ReadError::TooLarge(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(ReadError::Io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge(bytes.len() as u64));
    }
    Ok(bytes)
}
