//! The trusted version of every channel, kept in a small file written atomically.
//!
//! sled's `flush` is not an fsync of the disk, and a rollback defence that a power cut can undo
//! is no defence: so the highest version a device has accepted per channel lives in
//! `trust.json`, replaced atomically (temp, fsync, rename, fsync dir) before the release is
//! acted on. The publisher key rotations and the fleet's revocation list a node has verified
//! live here too, for the same reason: a device that forgot a rotation would refuse every
//! release after it, and one that forgot a revocation would let the revoked device back in.

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Durable trust state.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Trust {
    /// Highest accepted version per channel.
    pub versions: BTreeMap<String, u64>,
    /// The newest `issued_at` seen in any verified release (unix seconds): a floor for a device
    /// whose clock is behind.
    pub newest_time: u64,
    /// The publisher key rotations verified so far, oldest first (see the protocol's `rotation`).
    #[serde(default)]
    pub rotations: Vec<layerhop_protocol::rotation::SignedRotation>,
    /// The newest revocation list verified so far.
    #[serde(default)]
    pub revocations: Option<layerhop_protocol::revocation::SignedRevocations>,
}

pub(crate) struct TrustFile {
    path: PathBuf,
}

impl TrustFile {
    pub(crate) fn new(root: &Path) -> Self {
        TrustFile { path: root.join("trust.json") }
    }

    pub(crate) fn load(&self) -> Result<Trust> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::invalid(self.path.display().to_string(), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Trust::default()),
            Err(e) => Err(Error::Io { op: "read", path: self.path.clone(), source: e }),
        }
    }

    pub(crate) fn save(&self, t: &Trust) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(t).map_err(|e| Error::invalid("trust state", e))?;
        write_atomic(&self.path, &bytes)
    }
}
