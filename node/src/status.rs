//! What `layerhop status` reports, as one serializable value.

use crate::config::Role;
use crate::traffic::Totals;
use serde::{Deserialize, Serialize};

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
