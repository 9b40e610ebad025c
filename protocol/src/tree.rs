//! Interior nodes of blob trees: chunk lists stored as chunks.
//!
//! A node is a plain array of fixed 40-byte entries (child id, child length in little-endian
//! u64): no header, so identical child runs give byte-identical nodes. Lists are cut into nodes at
//! content-defined boundaries (a child whose id's low 32 bits are divisible by [`AVG_FANOUT`], or
//! [`MAX_FANOUT`] children), as prolly trees and casync's indexes do: inserting a file in the
//! middle of a layer changes the nodes around it, not every node after it.

use crate::{BlobRef, ChunkId, Error, limits};

/// Bytes per node entry.
pub const ENTRY_LEN: usize = 40;
/// Expected children per node.
pub const AVG_FANOUT: u32 = 64;
/// Most children per node (40 KiB nodes).
pub const MAX_FANOUT: usize = 1024;

/// One child of an interior node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The child chunk.
    pub id: ChunkId,
    /// Bytes of blob under the child.
    pub len: u64,
}

fn is_boundary(id: &ChunkId) -> bool {
    let b = id.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_multiple_of(AVG_FANOUT)
}

/// Serialize a node's entries.
pub fn encode_node(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for e in entries {
        out.extend_from_slice(e.id.as_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
    }
    out
}

/// Parse a node and check that its children add up to `expected_len`.
pub fn decode_node(bytes: &[u8], expected_len: u64) -> Result<Vec<Entry>, Error> {
    Error::check_len("tree node", bytes.len(), MAX_FANOUT * ENTRY_LEN)?;
    if bytes.is_empty() || !bytes.len().is_multiple_of(ENTRY_LEN) {
        return Err(Error::malformed("tree node", format!("length {} is not a positive multiple of {ENTRY_LEN}", bytes.len())));
    }
    let mut total: u64 = 0;
    let mut out = Vec::with_capacity(bytes.len() / ENTRY_LEN);
    for e in bytes.chunks_exact(ENTRY_LEN) {
        let mut id = [0u8; 32];
        id.copy_from_slice(&e[..32]);
        let mut len = [0u8; 8];
        len.copy_from_slice(&e[32..]);
        let len = u64::from_le_bytes(len);
        total = total.checked_add(len).ok_or_else(|| Error::malformed("tree node", "lengths overflow"))?;
        out.push(Entry { id: ChunkId::from_bytes(id), len });
    }
    if total != expected_len {
        return Err(Error::malformed("tree node", format!("children hold {total} bytes, parent says {expected_len}")));
    }
    Ok(out)
}

/// Checks a [`BlobRef`]'s shape before anything is fetched for it.
pub fn check_ref(r: &BlobRef) -> Result<(), Error> {
    if r.height > limits::MAX_TREE_HEIGHT {
        return Err(Error::malformed("blob ref", format!("height {} over {}", r.height, limits::MAX_TREE_HEIGHT)));
    }
    if r.height == 0 && r.len > limits::MAX_CHUNK as u64 {
        return Err(Error::malformed("blob ref", format!("a single chunk of {} bytes", r.len)));
    }
    Ok(())
}

/// Builds a blob's tree from its data chunks, in order, handing each new interior node to `emit`.
#[derive(Default)]
pub struct Builder {
    levels: Vec<Vec<Entry>>,
}

impl Builder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append the next data chunk of the blob.
    pub fn push(&mut self, id: ChunkId, len: u64, emit: &mut dyn FnMut(ChunkId, Vec<u8>)) {
        self.push_at(0, Entry { id, len }, emit);
    }

    fn push_at(&mut self, level: usize, entry: Entry, emit: &mut dyn FnMut(ChunkId, Vec<u8>)) {
        if self.levels.len() <= level {
            self.levels.push(Vec::new());
        }
        self.levels[level].push(entry);
        if is_boundary(&entry.id) || self.levels[level].len() >= MAX_FANOUT {
            let parent = self.cut(level, emit);
            self.push_at(level + 1, parent, emit);
        }
    }

    fn cut(&mut self, level: usize, emit: &mut dyn FnMut(ChunkId, Vec<u8>)) -> Entry {
        let entries = std::mem::take(&mut self.levels[level]);
        let bytes = encode_node(&entries);
        let id = ChunkId::of(&bytes);
        let len = entries.iter().map(|e| e.len).sum();
        emit(id, bytes);
        Entry { id, len }
    }

    /// Close the tree and return its root. A blob with no chunks is the empty chunk.
    pub fn finish(mut self, emit: &mut dyn FnMut(ChunkId, Vec<u8>)) -> BlobRef {
        let mut level = 0;
        while level < self.levels.len() {
            let top = level + 1 == self.levels.len();
            if top && self.levels[level].len() == 1 {
                let e = self.levels[level][0];
                return BlobRef { root: e.id, len: e.len, height: level as u8 };
            }
            if !self.levels[level].is_empty() {
                let parent = self.cut(level, emit);
                if self.levels.len() <= level + 1 {
                    self.levels.push(Vec::new());
                }
                self.levels[level + 1].push(parent);
            }
            level += 1;
        }
        emit(ChunkId::of(&[]), Vec::new());
        BlobRef::empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn build(leaves: &[(ChunkId, u64)]) -> (BlobRef, HashMap<ChunkId, Vec<u8>>) {
        let mut nodes = HashMap::new();
        let mut b = Builder::new();
        let mut emit = |id, bytes| {
            nodes.insert(id, bytes);
        };
        for (id, len) in leaves {
            b.push(*id, *len, &mut emit);
        }
        let root = b.finish(&mut emit);
        (root, nodes)
    }

    fn leaves_of(r: BlobRef, nodes: &HashMap<ChunkId, Vec<u8>>) -> Vec<(ChunkId, u64)> {
        if r.height == 0 {
            return vec![(r.root, r.len)];
        }
        let entries = decode_node(&nodes[&r.root], r.len).expect("node");
        entries
            .into_iter()
            .flat_map(|e| leaves_of(BlobRef { root: e.id, len: e.len, height: r.height - 1 }, nodes))
            .collect()
    }

    fn leaves(n: usize, salt: u8) -> Vec<(ChunkId, u64)> {
        (0..n).map(|i| (ChunkId::of(&[salt, (i >> 16) as u8, (i >> 8) as u8, i as u8]), 1000 + i as u64)).collect()
    }

    #[test]
    fn trees_reproduce_their_leaves() {
        for n in [1, 2, 63, 64, 65, 1000, 5000] {
            let l = leaves(n, 0);
            let (root, nodes) = build(&l);
            assert_eq!(root.len, l.iter().map(|x| x.1).sum::<u64>());
            assert_eq!(leaves_of(root, &nodes), l, "n={n}");
        }
    }

    #[test]
    fn empty_blob_is_the_empty_chunk() {
        let (root, nodes) = build(&[]);
        assert_eq!(root, BlobRef::empty());
        assert!(nodes.contains_key(&ChunkId::of(&[])));
    }

    #[test]
    fn an_insertion_changes_few_nodes() {
        let l = leaves(5000, 1);
        let (_, before) = build(&l);
        let mut l2 = l.clone();
        l2.insert(2500, (ChunkId::of(b"new file"), 77));
        let (_, after) = build(&l2);
        let changed = after.keys().filter(|k| !before.contains_key(k)).count();
        assert!(changed <= 4, "{changed} of {} nodes changed", after.len());
    }

    #[test]
    fn decode_refuses_bad_nodes() {
        assert!(decode_node(&[], 0).is_err());
        assert!(decode_node(&[0u8; 41], 0).is_err());
        let node = encode_node(&[Entry { id: ChunkId::of(b"a"), len: 5 }]);
        assert!(decode_node(&node, 6).is_err());
        assert_eq!(decode_node(&node, 5).expect("ok").len(), 1);
        let overflow = encode_node(&[Entry { id: ChunkId::of(b"a"), len: u64::MAX }, Entry { id: ChunkId::of(b"b"), len: 2 }]);
        assert!(decode_node(&overflow, 1).is_err());
    }
}
