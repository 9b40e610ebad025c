//! [`BlobRef`]: how a release names a byte string of any size.

use crate::ChunkId;
use serde::{Deserialize, Serialize};

/// The root of a blob's chunk tree.
///
/// At `height` 0, `root` is the blob's only chunk. At height `h > 0`, `root` names an interior
/// node (see [`crate::tree`]) listing the children of height `h - 1` with their lengths, which
/// must sum to `len`. The whole blob is thus pinned by one 32-byte id, and two blobs that share
/// a run of chunks share the nodes above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlobRef {
    /// The root chunk: data at height 0, an interior node above.
    pub root: ChunkId,
    /// Total bytes of the blob.
    pub len: u64,
    /// Levels of interior nodes above the data chunks.
    pub height: u8,
}

impl BlobRef {
    /// The empty blob: one empty data chunk.
    pub fn empty() -> Self {
        BlobRef { root: ChunkId::of(&[]), len: 0, height: 0 }
    }
}
