//! Chunks an earlier version of layerhop received and left staged under `incoming/<id>` when
//! it stopped: written and verified, not yet synced and named. Received chunks now go to pack
//! files (see `packs`); a home made by an earlier version may still hold staged files after a
//! crash, and they are adopted when the node next starts ([`Staging::adopt`]) if their bytes
//! still match their names (after a power cut they may not: then they are dropped and fetched
//! again), so upgrading never costs the metered link what it already paid for.

use crate::chunks::ChunkFiles;
use crate::error::{Error, Result};
use layerhop_protocol::{ChunkId, limits};
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
