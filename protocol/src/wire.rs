//! Messages peers exchange, and their bounded codec.
//!
//! One request/response protocol carries everything: a device asks for the releases a peer
//! holds and for batches of chunks; a seed pushes a new release to the devices connected to it.
//! A device's chunk requests to the seed use the same messages on a second protocol name
//! ([`UPLINK_PROTOCOL`]), so that the node can give exchanges over the metered uplink a longer
//! deadline than exchanges with site peers.
//! Messages are postcard (varint lengths, raw byte strings); the node's stream codec frames them
//! with a length prefix checked against [`limits`] before anything is read.

use crate::token::Credential;
use crate::{ChunkId, Error, SignedRelease, limits};
use serde::{Deserialize, Serialize};

/// Protocol name on the wire; bumped on incompatible change.
pub const PROTOCOL: &str = "/layerhop/exchange/1";

/// Protocol name of chunk requests from a device to the seed (same messages as [`PROTOCOL`]).
pub const UPLINK_PROTOCOL: &str = "/layerhop/uplink/1";

/// What one peer asks another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The newest release of every channel the peer holds.
    Releases,
    /// These chunks, in this order (at most [`limits::MAX_IDS_PER_REQUEST`]).
    Chunks(Vec<ChunkId>),
    /// A new release the sender wants the receiver to know about.
    Announce(SignedRelease),
    /// First message on a new connection: who the sender is and where it listens.
    Hello(Hello),
    /// Seed to device: members of the device's site it may not know yet.
    Peers(Vec<PeerInfo>),
    /// Site peer to site peer: what the sender holds and is fetching (sent on change and as a
    /// heartbeat; a peer not heard from within its lease is treated as gone).
    State(State),
    /// Device to seed: the releases it holds, sent when that changes, for the seed's view of
    /// the fleet (at most [`limits::MAX_RELEASES_LISTED`]). Added to protocol 1 as the last
    /// variant: a node of an older build that receives it answers with a decode failure, which
    /// the sender only logs.
    Holdings(Vec<Holding>),
    /// The sender's trust state: the publisher key rotations and the revocation list it holds
    /// (pushed by the seed when they change and when a device connects, passed on over the
    /// site; a receiver that holds a newer state answers with its own). Added to protocol 1
    /// as the last variant, like [`Request::Holdings`].
    Trust(TrustBundle),
    /// Site peer to site peer: the TCP port of the sender's lane (the node's own connection
    /// for bulk chunk transfer on the LAN), answered by [`Response::Lane`]. Added to protocol 1
    /// as the last variant, like [`Request::Holdings`]: an older peer's decode failure leaves
    /// the asker on the exchange protocol.
    Lane,
}

/// Signed trust statements a node holds; each part is checked on its own signatures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustBundle {
    /// The publisher key rotations, oldest first.
    pub rotations: Vec<crate::rotation::SignedRotation>,
    /// The newest revocation list.
    pub revocations: Option<crate::revocation::SignedRevocations>,
}

impl TrustBundle {
    /// Whether it says nothing.
    pub fn is_empty(&self) -> bool {
        self.rotations.is_empty() && self.revocations.is_none()
    }
}

/// What a device holds of one release, as it reports it to the seed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    /// The release's channel.
    pub channel: crate::Channel,
    /// Its version.
    pub version: u64,
    /// Whether the device holds every chunk.
    pub complete: bool,
    /// Bytes of the release's data held when the report was sent.
    pub bytes_have: u64,
    /// Bytes of the release's data.
    pub bytes_total: u64,
}

/// A node introducing itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Its enrollment, signed by the fleet key (the seed sends none).
    pub credential: Option<Credential>,
    /// Multiaddrs it listens on.
    pub listen_addrs: Vec<String>,
    /// Whether it shares chunks with its site (a device that does not hears of releases from
    /// the seed directly).
    pub site_sharing: bool,
    /// Channels it follows (empty: every channel). Site members use it to know who will fetch
    /// a release before that member has said it has it.
    pub channels: Vec<crate::Channel>,
}

/// A site member as the seed knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// libp2p peer id bytes.
    #[serde(with = "serde_bytes")]
    pub peer: Vec<u8>,
    /// Its listen addresses.
    pub listen_addrs: Vec<String>,
}

/// The first 8 bytes of a chunk id: enough to say which chunks one holds among a release's
/// thousands (a collision only costs one wasted request, answered `Missing`).
pub type ShortId = [u8; 8];

/// The short form of `id`.
pub fn short_id(id: &ChunkId) -> ShortId {
    let mut s = [0u8; 8];
    s.copy_from_slice(&id.as_bytes()[..8]);
    s
}

/// A site member's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Whether it can reach the seed now.
    pub uplink: bool,
    /// Chunks it has fetched from the seed so far (its progress, for liveness).
    pub seed_fetched: u64,
    /// Chunks it is waiting for from the seed.
    pub seed_pending: u32,
    /// Per release it follows.
    pub releases: Vec<HaveMap>,
}

/// What a member holds of one release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaveMap {
    /// The release's channel.
    pub channel: crate::Channel,
    /// Its version.
    pub version: u64,
    /// It holds every chunk (then `ids` is empty).
    pub complete: bool,
    /// `ids` is the full set held (true) or only those that landed since the last message.
    pub full: bool,
    /// Chunks held.
    pub ids: Vec<ShortId>,
    /// Chunks it is fetching from the seed now (replaces the previous set).
    pub claims: Vec<ShortId>,
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::Releases`].
    Releases(Vec<SignedRelease>),
    /// Answer to [`Request::Chunks`]: one reply per id asked, in order.
    Chunks(Vec<ChunkReply>),
    /// The message was received.
    Ack,
    /// Seed's answer to a device's [`Request::Hello`]: the other members of its site.
    Peers(Vec<PeerInfo>),
    /// The request was refused; the text says why.
    Refused(String),
    /// Answer to [`Request::Lane`]: the port of the lane's listener, on the address the
    /// connection that asked reached.
    Lane(u16),
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

fn check_addrs(a: &[String]) -> Result<(), Error> {
    Error::check_len("address list", a.len(), 32)?;
    for x in a {
        Error::check_len("address", x.len(), 256)?;
    }
    Ok(())
}

pub(crate) fn from_exact<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &'static str) -> Result<T, Error> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| Error::malformed(what, e))?;
    if !rest.is_empty() {
        return Err(Error::malformed(what, format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

/// Encode `v`, refusing it over `limit`, in one allocation of the exact size — after its
/// 4-byte little-endian length if `framed` (the form the exchange sends). Why exact: postcard's
/// `to_allocvec` grows its buffer by doubling, and a 4 MiB answer of chunks was copied about
/// twice over on its way out (then once more to put the length in front).
fn encode<T: Serialize>(v: &T, what: &'static str, limit: usize, framed: bool) -> Result<Vec<u8>, Error> {
    let len = postcard::experimental::serialized_size(v).map_err(|e| Error::malformed(what, e))?;
    Error::check_len(what, len, limit)?;
    let mut out = Vec::with_capacity(len + 4);
    if framed {
        out.extend_from_slice(&(len as u32).to_le_bytes());
    }
    postcard::to_extend(v, out).map_err(|e| Error::malformed(what, e))
}

impl Request {
    /// Encode, refusing a request over its bound.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        encode(self, "request", limits::MAX_REQUEST, false)
    }

    /// [`Request::encode`] after the 4-byte little-endian length of the encoding.
    pub fn encode_framed(&self) -> Result<Vec<u8>, Error> {
        encode(self, "request", limits::MAX_REQUEST, true)
    }

    /// Decode untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        Error::check_len("request", bytes.len(), limits::MAX_REQUEST)?;
        let r: Request = from_exact(bytes, "request")?;
        match &r {
            Request::Chunks(ids) => Error::check_len("chunk id list", ids.len(), limits::MAX_IDS_PER_REQUEST)?,
            Request::Hello(h) => {
                check_addrs(&h.listen_addrs)?;
                Error::check_len("channel list", h.channels.len(), limits::MAX_CHANNELS)?;
            }
            Request::Peers(p) => {
                Error::check_len("peer list", p.len(), limits::MAX_PEERS_LISTED)?;
                for i in p {
                    Error::check_len("peer id", i.peer.len(), 64)?;
                    check_addrs(&i.listen_addrs)?;
                }
            }
            Request::State(s) => {
                Error::check_len("release list", s.releases.len(), limits::MAX_RELEASES_LISTED)?;
                for h in &s.releases {
                    Error::check_len("have-map", h.ids.len(), limits::MAX_HAVE_IDS)?;
                    Error::check_len("claim list", h.claims.len(), limits::MAX_HAVE_IDS)?;
                }
            }
            Request::Holdings(h) => Error::check_len("holding list", h.len(), limits::MAX_RELEASES_LISTED)?,
            Request::Trust(t) => Error::check_len("rotation chain", t.rotations.len(), limits::MAX_ROTATIONS)?,
            Request::Releases | Request::Announce(_) | Request::Lane => {}
        }
        Ok(r)
    }
}

impl Response {
    /// Encode, refusing a response over its bound.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        encode(self, "response", limits::MAX_RESPONSE, false)
    }

    /// [`Response::encode`] after the 4-byte little-endian length of the encoding.
    pub fn encode_framed(&self) -> Result<Vec<u8>, Error> {
        encode(self, "response", limits::MAX_RESPONSE, true)
    }

    /// Decode untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        Error::check_len("response", bytes.len(), limits::MAX_RESPONSE)?;
        let r: Response = from_exact(bytes, "response")?;
        match &r {
            Response::Chunks(c) => {
                Error::check_len("chunk reply list", c.len(), limits::MAX_IDS_PER_REQUEST)?;
                // A chunk is never larger than the chunk bound, and its compressed form is sent
                // only when smaller: a reply over it is more than was asked for.
                for r in c {
                    if let ChunkReply::Raw(b) | ChunkReply::Zstd(b) = r {
                        Error::check_len("chunk reply", b.len(), limits::MAX_CHUNK)?;
                    }
                }
            }
            Response::Releases(r) => Error::check_len("release list", r.len(), limits::MAX_RELEASES_LISTED)?,
            Response::Refused(s) => Error::check_len("refusal text", s.len(), 1024)?,
            Response::Peers(p) => {
                Error::check_len("peer list", p.len(), limits::MAX_PEERS_LISTED)?;
                for i in p {
                    Error::check_len("peer id", i.peer.len(), 64)?;
                    check_addrs(&i.listen_addrs)?;
                }
            }
            Response::Ack | Response::Lane(_) => {}
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
    fn a_chunk_reply_over_the_chunk_bound_is_refused() {
        let at_bound = Response::Chunks(vec![ChunkReply::Raw(vec![7; limits::MAX_CHUNK])]);
        assert_eq!(Response::decode(&at_bound.encode().expect("encode")).expect("decode"), at_bound);
        for over in [ChunkReply::Raw(vec![7; limits::MAX_CHUNK + 1]), ChunkReply::Zstd(vec![7; limits::MAX_CHUNK + 1])] {
            let r = Response::Chunks(vec![ChunkReply::Missing, over]);
            assert!(matches!(Response::decode(&r.encode().expect("encode")), Err(Error::TooLarge { what: "chunk reply", .. })));
        }
    }

    #[test]
    fn holdings_round_trip_and_are_bounded() {
        let h = Holding { channel: crate::Channel::new("detector").expect("channel"), version: 7, complete: true, bytes_have: 10, bytes_total: 10 };
        let r = Request::Holdings(vec![h.clone(); 3]);
        assert_eq!(Request::decode(&r.encode().expect("encode")).expect("decode"), r);
        let big = Request::Holdings(vec![h; limits::MAX_RELEASES_LISTED + 1]);
        assert!(matches!(Request::decode(&big.encode().expect("encode")), Err(Error::TooLarge { .. })));
    }

    #[test]
    fn trust_bundles_round_trip_and_are_bounded() {
        let k0 = crate::PublisherKey::generate().expect("key");
        let k1 = crate::PublisherKey::generate().expect("key");
        let rot = crate::rotation::SignedRotation::sign(&k0, k1.public(), 1, 5).expect("sign");
        let list = crate::revocation::RevocationList { version: 1, issued_at: 5, devices: vec![[1; 16]], peers: vec![] };
        let t = Request::Trust(TrustBundle { rotations: vec![rot.clone()], revocations: Some(list.sign(&k0).expect("sign")) });
        assert_eq!(Request::decode(&t.encode().expect("encode")).expect("decode"), t);
        let long = Request::Trust(TrustBundle { rotations: vec![rot; limits::MAX_ROTATIONS + 1], revocations: None });
        assert!(matches!(Request::decode(&long.encode().expect("encode")), Err(Error::TooLarge { .. })));
    }

    #[test]
    fn oversized_lists_are_refused() {
        let r = Request::Chunks(vec![ChunkId::of(b""); 17]);
        assert!(matches!(Request::decode(&r.encode().expect("encode")), Err(Error::TooLarge { .. })));
        assert!(matches!(Response::decode(&vec![0u8; limits::MAX_RESPONSE + 1]), Err(Error::TooLarge { .. })));
    }
}
