//! [`ChunkId`]: the BLAKE3 hash naming a chunk's uncompressed bytes.

use serde::{Deserialize, Serialize};

/// The name of a chunk: BLAKE3 of its uncompressed bytes. Short `Debug` form for logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId([u8; 32]);

impl ChunkId {
    /// Hash `data` and name it.
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// Wrap a hash computed elsewhere (e.g. by a streaming hasher).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        ChunkId(bytes)
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self, crate::Error> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| crate::Error::malformed("chunk id", e))?;
        Ok(ChunkId(out))
    }

    /// Whether `data` is what this id names.
    pub fn matches(&self, data: &[u8]) -> bool {
        blake3::hash(data).as_bytes() == &self.0
    }
}

impl From<blake3::Hash> for ChunkId {
    fn from(h: blake3::Hash) -> Self {
        ChunkId(*h.as_bytes())
    }
}

impl std::fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..12])
    }
}

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_short_debug() {
        let id = ChunkId::of(b"hello");
        assert_eq!(ChunkId::from_hex(&id.to_hex()).expect("hex"), id);
        assert!(id.matches(b"hello"));
        assert!(!id.matches(b"hellO"));
        assert_eq!(format!("{id:?}").len(), "ChunkId()".len() + 12);
        assert!(ChunkId::from_hex("zz").is_err());
    }
}
