//! Which chunks this store verified lately, so a chunk served to one site peer after another
//! is hashed once, not once per peer.
//!
//! Every chunk a peer receives is verified by that peer before it is stored (and a bad one
//! costs the sender a strike and the asker a retry from another holder), so re-hashing on the
//! serving side only guards against this disk having changed the bytes since they were last
//! verified. A device's chunks were verified when it received them, or when it last read them;
//! serving them again to the next member of its site re-hashed them every time: on the LAN
//! bench (1 GiB between two nodes on two shared cores) that was ~0.2 s of the sender's
//! ~1.1 s of CPU, and a member of a site of 50 serves each chunk up to 49 times.
//! IPFS's blockstore makes the same trade by default (`HashOnRead` off).
//!
//! What is kept: the ids of the last [`RECENT`] to 2 × [`RECENT`] chunks verified, in two
//! generations (the older dropped when the newer fills), ~5 MiB of memory at most. A chunk
//! read for a peer outside the set is verified as every read is. Serving a trusted chunk
//! unverified is a choice of the caller (`Store::get_for_peer`): the seed, whose answers
//! cross the metered link, verifies every one.
//!
//! The cost when a disk does change bytes silently within that window: the damaged chunk is
//! served until it leaves the set (or the node reads it for itself, which verifies and
//! forgets it), each asker refuses it and strikes this node, and an asker that took it three
//! times within the strike window bans this node for the ban period (see the node's
//! `strikes`); the chunk is fetched from another holder meanwhile.

use layerhop_protocol::ChunkId;
use std::collections::HashSet;

/// Chunks per generation: at the average chunk size (~64 KiB) about 4 GiB of recent chunks.
pub const RECENT: usize = 1 << 16;

/// The ids of the last [`RECENT`] to 2 × [`RECENT`] chunks inserted, in two generations (also
/// used by the node for other facts about chunks it handled lately).
#[derive(Default)]
pub struct Recent {
    newer: HashSet<ChunkId>,
    older: HashSet<ChunkId>,
}

impl Recent {
    /// Keep `id` (for the store: its bytes were just verified).
    pub fn insert(&mut self, id: ChunkId) {
        if self.newer.len() >= RECENT {
            self.older = std::mem::take(&mut self.newer);
        }
        self.newer.insert(id);
    }

    /// Whether `id` is among the ids inserted lately.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.newer.contains(id) || self.older.contains(id)
    }

    /// Forget `id` (for the store: its bytes were found damaged, or it is no longer held).
    pub fn remove(&mut self, id: &ChunkId) {
        self.newer.remove(id);
        self.older.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_generations_and_forgets_older_ones() {
        let id = |i: usize| ChunkId::of(&i.to_le_bytes());
        let mut r = Recent::default();
        for i in 0..2 * RECENT {
            r.insert(id(i));
        }
        assert!(r.contains(&id(0)) && r.contains(&id(2 * RECENT - 1)), "two generations are kept");
        r.insert(id(2 * RECENT));
        assert!(!r.contains(&id(0)), "the oldest generation is dropped once the newer fills");
        assert!(r.contains(&id(RECENT)) && r.contains(&id(2 * RECENT)));
        r.remove(&id(RECENT));
        assert!(!r.contains(&id(RECENT)));
    }
}
