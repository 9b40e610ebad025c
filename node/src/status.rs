//! What `layerhop status` reports, as one serializable value; `/metrics` and the human
//! `status` are renderings of it, so the three always agree.

use crate::config::Role;
use crate::traffic::Totals;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// A node's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// libp2p peer id.
    pub peer_id: String,
    /// Seed or device.
    pub role: Role,
    /// Site name.
    pub site: String,
    /// Addresses the node listens on.
    pub listen_addrs: Vec<String>,
    /// Peers connected now.
    pub peers: Vec<PeerStatus>,
    /// The newest release of every channel the node holds.
    pub releases: Vec<ReleaseStatus>,
    /// Bytes moved, by link class.
    pub traffic: Totals,
    /// Chunks this node fetched from the seed since it started.
    #[serde(default)]
    pub chunks_from_seed: u64,
    /// Chunks this node fetched from site peers since it started.
    #[serde(default)]
    pub chunks_from_peers: u64,
    /// Chunks received and verified or on their way to it, not yet stored (named in the store
    /// after a file-system sync): `releases[].bytes_have` counts a chunk only once it is.
    #[serde(default)]
    pub chunks_being_stored: usize,
    /// Peers banned now (after repeated faults).
    #[serde(default)]
    pub banned_peers: usize,
    /// Strikes given to peers since start (bad chunks; oversized, malformed or stalled answers).
    #[serde(default)]
    pub strikes: u64,
    /// Inbound connections refused since start (connection limits, failed handshakes).
    #[serde(default)]
    pub refused_connections: u64,
    /// Requests refused since start (from peers not enrolled or not of the site).
    #[serde(default)]
    pub refused_requests: u64,
    /// Version of the revocation list in force (0: none).
    #[serde(default)]
    pub revocations_version: u64,
    /// Devices and peers it revokes.
    #[serde(default)]
    pub revoked: usize,
    /// The publisher key new releases must be signed with (after rotations), hex.
    #[serde(default)]
    pub publisher_key: Option<String>,
    /// Device: the TCP port its lane listens on (see the README's "Lanes"); none: no lane.
    #[serde(default)]
    pub lane_port: Option<u16>,
    /// Answers to this node's chunk requests that came over lanes since it started (the other
    /// chunks from site peers came over their libp2p connection).
    #[serde(default)]
    pub lane_answers: u64,
    /// What this node served to others since it started.
    #[serde(default)]
    pub served: Served,
    /// Device: the metered-link policy — budgets used and left, releases held back and until when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::Status>,
}

/// Chunk requests this node answered.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Served {
    /// Chunk requests answered.
    pub requests: u64,
    /// Chunks sent (a chunk asked for but not held is not counted).
    pub chunks: u64,
    /// Bytes of those chunks as sent (compressed where that was smaller).
    pub bytes: u64,
}

/// The counters behind [`Served`], shared with the tasks that read chunks to serve.
#[derive(Debug, Default)]
pub struct ServedCounters {
    requests: AtomicU64,
    chunks: AtomicU64,
    bytes: AtomicU64,
}

impl ServedCounters {
    /// One request answered, with `chunks` chunks of `bytes` bytes.
    pub fn add(&self, chunks: u64, bytes: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.chunks.fetch_add(chunks, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Read them.
    pub fn snapshot(&self) -> Served {
        Served {
            requests: self.requests.load(Ordering::Relaxed),
            chunks: self.chunks.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// One connected peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Its peer id.
    pub peer_id: String,
    /// "metered" or "lan".
    pub link: String,
    /// Whether it is the seed.
    pub seed: bool,
    /// Whether it is an enrolled member of this node's site.
    #[serde(default)]
    pub site_member: bool,
}

/// One release's progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseStatus {
    /// Channel.
    pub channel: String,
    /// Version.
    pub version: u64,
    /// Whether every chunk is present.
    pub complete: bool,
    /// Bytes of chunks the release is made of.
    pub bytes_total: u64,
    /// Bytes of those chunks present.
    pub bytes_have: u64,
    /// Files in the release.
    pub artifacts: usize,
    /// Images in the release.
    pub images: usize,
    /// Expiry, unix seconds.
    pub expires_at: u64,
    /// Chunks still to fetch (at the last look).
    pub chunks_missing: usize,
    /// Why fetching is stuck, if it is.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stalled: Option<String>,
}
