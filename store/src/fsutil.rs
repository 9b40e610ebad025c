//! Atomic file writes: temp file in the same directory, fsync, rename, fsync the directory.
//!
//! The one way the store puts bytes on disk, so a crash leaves either the old file or the new
//! one, never a torn mix.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// Write `bytes` to `path` atomically and durably.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().ok_or_else(|| Error::invalid(path.display().to_string(), "has no parent directory"))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(Error::io("create temp file in", dir))?;
    tmp.write_all(bytes).map_err(Error::io("write", tmp.path()))?;
    tmp.as_file().sync_all().map_err(Error::io("fsync", tmp.path()))?;
    tmp.persist(path).map_err(|e| Error::Io { op: "rename into", path: path.to_owned(), source: e.error })?;
    sync_dir(dir)
}

/// fsync a directory so a rename in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("fsync directory", dir))
}
