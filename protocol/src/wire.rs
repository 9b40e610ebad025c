//! Messages peers exchange, and their bounded codec.
//!
//! One request/response protocol carries everything: a device asks for the releases a peer
//! holds and for batches of chunks; a seed pushes a new release to the devices connected to it.
//! Messages are postcard (varint lengths, raw byte strings); the node's stream codec frames them
//! with a length prefix checked against [`limits`] before anything is read.

use crate::{ChunkId, Error, SignedRelease, limits};
use serde::{Deserialize, Serialize};

/// Protocol name on the wire; bumped on incompatible change.
pub const PROTOCOL: &str = "/layerhop/exchange/1";

/// What one peer asks another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The newest release of every channel the peer holds.
    Releases,
    /// These chunks, in this order (at most [`limits::MAX_IDS_PER_REQUEST`]).
    Chunks(Vec<ChunkId>),
    /// A new release the sender wants the receiver to know about.
    Announce(SignedRelease),
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::Releases`].
    Releases(Vec<SignedRelease>),
    /// Answer to [`Request::Chunks`]: one reply per id asked, in order.
    Chunks(Vec<ChunkReply>),
    /// The announce was received.
    Ack,
    /// The request was refused; the text says why.
    Refused(String),
}

/// One chunk of a [`Response::Chunks`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkReply {
    /// The chunk's bytes.
    Raw(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The chunk's bytes, zstd-compressed; sent only when that is smaller.
    Zstd(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The peer does not hold the chunk (or found it damaged).
    Missing,
}

impl std::fmt::Debug for ChunkReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChunkReply::Raw(b) => write!(f, "Raw({} bytes)", b.len()),
            ChunkReply::Zstd(b) => write!(f, "Zstd({} bytes)", b.len()),
            ChunkReply::Missing => f.write_str("Missing"),
        }
    }
}

pub(crate) fn from_exact<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &'static str) -> Result<T, Error> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| Error::malformed(what, e))?;
    if !rest.is_empty() {
        return Err(Error::malformed(what, format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

fn to_vec<T: Serialize>(v: &T, what: &'static str) -> Result<Vec<u8>, Error> {
    postcard::to_allocvec(v).map_err(|e| Error::malformed(what, e))
}

impl Request {
    /// Encode, refusing a request over its bound.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let b = to_vec(self, "request")?;
        Error::check_len("request", b.len(), limits::MAX_REQUEST)?;
        Ok(b)
    }

    /// Decode untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        Error::check_len("request", bytes.len(), limits::MAX_REQUEST)?;
        let r: Request = from_exact(bytes, "request")?;
        if let Request::Chunks(ids) = &r {
            Error::check_len("chunk id list", ids.len(), limits::MAX_IDS_PER_REQUEST)?;
        }
        Ok(r)
    }
}

impl Response {
    /// Encode, refusing a response over its bound.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let b = to_vec(self, "response")?;
        Error::check_len("response", b.len(), limits::MAX_RESPONSE)?;
        Ok(b)
    }

    /// Decode untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        Error::check_len("response", bytes.len(), limits::MAX_RESPONSE)?;
        let r: Response = from_exact(bytes, "response")?;
        match &r {
            Response::Chunks(c) => Error::check_len("chunk reply list", c.len(), limits::MAX_IDS_PER_REQUEST)?,
            Response::Releases(r) => Error::check_len("release list", r.len(), limits::MAX_RELEASES_LISTED)?,
            Response::Refused(s) => Error::check_len("refusal text", s.len(), 1024)?,
            Response::Ack => {}
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> impl Strategy<Value = ChunkId> {
        any::<[u8; 32]>().prop_map(ChunkId::from_bytes)
    }

    fn reply() -> impl Strategy<Value = ChunkReply> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(ChunkReply::Raw),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(ChunkReply::Zstd),
            Just(ChunkReply::Missing),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(ids in proptest::collection::vec(id(), 0..=16)) {
            let r = Request::Chunks(ids);
            prop_assert_eq!(Request::decode(&r.encode().expect("encode")).expect("decode"), r);
        }

        #[test]
        fn responses_round_trip(replies in proptest::collection::vec(reply(), 0..=16)) {
            let r = Response::Chunks(replies);
            prop_assert_eq!(Response::decode(&r.encode().expect("encode")).expect("decode"), r);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&bytes);
            let _ = SignedRelease::decode(&bytes);
            let _ = crate::token::JoinToken::decode(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn mutated_messages_never_panic(ids in proptest::collection::vec(id(), 1..=16), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut b = Request::Chunks(ids).encode().expect("encode");
            for (at, x) in flips { let n = b.len(); b[at % n] ^= x; }
            let _ = Request::decode(&b);
            let _ = Response::decode(&b);
        }
    }

    #[test]
    fn oversized_lists_are_refused() {
        let r = Request::Chunks(vec![ChunkId::of(b""); 17]);
        assert!(matches!(Request::decode(&r.encode().expect("encode")), Err(Error::TooLarge { .. })));
        assert!(matches!(Response::decode(&vec![0u8; limits::MAX_RESPONSE + 1]), Err(Error::TooLarge { .. })));
    }
}
