//! Received chunks on their way into the store: written under `incoming/<id>` as they arrive,
//! made durable together by one file-system sync, then named (renamed into `chunks/`).
//!
//! Why: a device receiving a release over the LAN used to store chunks in batches of 64 — write
//! temp files, `syncfs`, rename, `syncfs` — with the network idle meanwhile, and each `syncfs`
//! costs a device flush (10–40 ms on our shared test machine whatever the batch size), so a LAN
//! fetch ran at 50–65 MiB/s. Staging splits the job: one thread writes staged files as chunks
//! arrive (starting their write-back at once, so the sync finds little left to do), another
//! syncs whatever was staged meanwhile and names it. One sync per round instead of two, rounds
//! as large as what arrived during the last sync, and the network never waits for a flush.
//!
//! The rules stay: bytes are verified before they are staged, and a chunk is named only after
//! its bytes were synced. A staged file outlives a `kill -9` (it is in the page cache) and is
//! adopted when the node next starts ([`Staging::adopt`]) if its bytes still match its name
//! (after a power cut they may not: then it is dropped and fetched again), so a crash loses
//! only chunks not yet staged. A staged file is never written twice: a second copy of a chunk whose staged file
//! exists is not written (the file is created exclusively).

use crate::chunks::ChunkFiles;
use crate::error::{Error, Result};
use layerhop_protocol::{ChunkId, limits};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The `incoming/` directory.
#[derive(Debug, Clone)]
pub(crate) struct Staging {
    dir: PathBuf,
}

impl Staging {
    pub(crate) fn open(root: &Path) -> Result<Self> {
        let dir = root.join("incoming");
        std::fs::create_dir_all(&dir).map_err(Error::io("create directory", &dir))?;
        Ok(Staging { dir })
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        self.dir.join(id.to_hex().as_str())
    }

    /// Write verified bytes to the chunk's staged file (not durable, not named); a staged file
    /// that exists already is left as it is.
    pub(crate) fn write(&self, id: &ChunkId, bytes: &[u8]) -> Result<()> {
        let path = self.path(id);
        let mut f = match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(Error::Io { op: "create", path, source: e }),
        };
        if let Err(e) = f.write_all(bytes) {
            drop(f);
            // A partial staged file must not stay: a later copy would be skipped as written.
            let _ = std::fs::remove_file(&path);
            return Err(Error::Io { op: "write", path, source: e });
        }
        start_writeback(&f);
        Ok(())
    }

    /// Name a staged chunk whose bytes a sync made durable: rename it into the chunk
    /// directory. A chunk named meanwhile (its staged file gone) is fine.
    pub(crate) fn name(&self, files: &ChunkFiles, id: &ChunkId) -> Result<()> {
        let from = self.path(id);
        let to = files.path(id);
        if let Some(sub) = to.parent() {
            std::fs::create_dir_all(sub).map_err(Error::io("create directory", sub))?;
        }
        match std::fs::rename(&from, &to) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && to.exists() => Ok(()),
            Err(e) => Err(Error::Io { op: "rename into", path: to, source: e }),
        }
    }

    /// Staged files left by a process that died: those whose bytes match their names are made
    /// durable (one sync) and named; the rest are deleted. Returns the chunks named, with their
    /// lengths.
    pub(crate) fn adopt(&self, files: &ChunkFiles) -> Result<Vec<(ChunkId, usize)>> {
        let mut good = Vec::new();
        for f in std::fs::read_dir(&self.dir).map_err(Error::io("list", &self.dir))?.flatten() {
            let path = f.path();
            let id = f.file_name().to_str().and_then(|n| ChunkId::from_hex(n).ok());
            let len = match (id, std::fs::read(&path)) {
                (Some(id), Ok(b)) if b.len() <= limits::MAX_CHUNK && id.matches(&b) => Some((id, b.len())),
                _ => None,
            };
            match len {
                Some(x) => good.push(x),
                None => {
                    tracing::warn!(path = %path.display(), "staged chunk left by a crash does not match its name; dropped");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        if good.is_empty() {
            return Ok(good);
        }
        files.sync()?;
        let mut named = Vec::with_capacity(good.len());
        for (id, len) in good {
            match self.name(files, &id) {
                Ok(()) => named.push((id, len)),
                Err(e) => tracing::warn!(chunk = %id, error = %e, "staged chunk left by a crash could not be named"),
            }
        }
        tracing::info!(chunks = named.len(), "adopted chunks staged before a crash");
        Ok(named)
    }
}

/// Ask the kernel to start writing the file's pages now (not to wait for them): the sync
/// that makes a round durable then waits for writes already under way.
fn start_writeback(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads the descriptor, which `f` keeps open for the call.
    // A failure only means the later sync does all the writing.
    let _ = unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}
