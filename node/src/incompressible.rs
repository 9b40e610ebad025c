//! Which chunks are known not to pay for compression, so serving them skips the probe.
//!
//! A chunk is answered in its wire form ([`crate::codec::compress`]): zstd when that saves at
//! least 1/16, else raw, decided by a 4 KiB probe at zstd's fastest level. The decision depends
//! only on the bytes, so it need not be made twice for one chunk: a chunk that arrived raw (its
//! sender's probe decided so) or that this node found raw when it served it is answered raw
//! next time without a probe. Model weights and already-compressed layers are all such chunks,
//! and a device serving a release to its site probed every chunk once per asking member: on
//! the LAN bench (1 GiB of incompressible data, two nodes) the probes were ~6% of the sending
//! node's CPU.
//!
//! What is kept: the ids of the last 65,536 to 131,072 such chunks (two generations, as the
//! store's set of chunks verified lately), forgotten at restart. A peer that sends a chunk raw
//! that would compress (an older or a hostile peer) costs only bytes on the LAN: the chunk is
//! verified as any other, and answered raw while its id is kept.

use layerhop_protocol::ChunkId;
use layerhop_protocol::wire::ChunkReply;
use layerhop_store::recent::Recent;
use std::sync::Mutex;

#[derive(Default)]
pub(crate) struct Incompressible(Mutex<Recent>);

impl Incompressible {
    /// `id`'s bytes do not pay for compression.
    pub(crate) fn note(&self, id: ChunkId) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
    }

    fn known(&self, id: &ChunkId) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).contains(id)
    }

    /// `bytes` (the chunk `id`) in their wire form, without a probe when the answer is known.
    pub(crate) fn wire_form(&self, id: &ChunkId, bytes: Vec<u8>) -> ChunkReply {
        if self.known(id) {
            return ChunkReply::Raw(bytes);
        }
        let reply = crate::codec::compress(bytes);
        if matches!(reply, ChunkReply::Raw(_)) {
            self.note(*id);
        }
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_found_raw_is_answered_raw_and_others_are_still_compressed() {
        let known = Incompressible::default();
        let text = b"layerhop ".repeat(4096);
        let text_id = ChunkId::of(&text);
        assert!(matches!(known.wire_form(&text_id, text.clone()), ChunkReply::Zstd(_)));
        assert!(matches!(known.wire_form(&text_id, text.clone()), ChunkReply::Zstd(_)), "a compressible chunk is not taken for raw");
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..64 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let noise_id = ChunkId::of(&noise);
        assert!(!known.known(&noise_id));
        assert!(matches!(known.wire_form(&noise_id, noise.clone()), ChunkReply::Raw(_)));
        assert!(known.known(&noise_id), "found raw once, known after");
        // A chunk noted raw (it arrived so) is answered raw with no probe, whatever its bytes.
        let other = b"compressible, but it came raw ".repeat(1024);
        let other_id = ChunkId::of(&other);
        known.note(other_id);
        assert_eq!(known.wire_form(&other_id, other.clone()), ChunkReply::Raw(other));
    }
}
