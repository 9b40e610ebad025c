//! Size bounds for everything that crosses a trust boundary.
//!
//! One place so that the encoder, the decoder and the codec agree; a message over its bound is
//! refused before it is read, not after it is buffered.

/// Largest chunk, uncompressed (FastCDC's maximum).
pub const MAX_CHUNK: usize = 256 * 1024;
/// Files up to this size are one chunk; larger files are cut by FastCDC.
pub const SINGLE_CHUNK_FILE: u64 = 64 * 1024;
/// FastCDC (v2020) minimum, average and maximum chunk sizes.
pub const CDC_MIN: u32 = 16 * 1024;
/// See [`CDC_MIN`].
pub const CDC_AVG: u32 = 64 * 1024;
/// See [`CDC_MIN`].
pub const CDC_MAX: u32 = MAX_CHUNK as u32;
/// Chunk ids asked for in one request.
pub const MAX_IDS_PER_REQUEST: usize = 16;
/// Largest encoded request (an announce carries a whole signed release).
pub const MAX_REQUEST: usize = 2 * 1024 * 1024;
/// Largest encoded response: a full batch of incompressible chunks plus framing.
pub const MAX_RESPONSE: usize = MAX_IDS_PER_REQUEST * (MAX_CHUNK + 64) + 4096;
/// Largest encoded signed release.
pub const MAX_RELEASE: usize = 1024 * 1024;
/// Artifacts in one release.
pub const MAX_ARTIFACTS: usize = 4096;
/// Releases in one listing.
pub const MAX_RELEASES_LISTED: usize = 256;
/// Largest encoded join token.
pub const MAX_TOKEN: usize = 8 * 1024;
/// Tree height: 8 levels of at least two-way fan-out is far beyond any real artifact.
pub const MAX_TREE_HEIGHT: u8 = 8;
/// Peers in one peer list.
pub const MAX_PEERS_LISTED: usize = 1024;
/// Short ids in one have-map message (64 KiB of ids).
pub const MAX_HAVE_IDS: usize = 8192;
/// Channels a node may name in its hello.
pub const MAX_CHANNELS: usize = 256;
/// Key rotation statements in one chain.
pub const MAX_ROTATIONS: usize = 64;
/// Entries (credential ids and peer ids) in one revocation list.
pub const MAX_REVOKED: usize = 4096;
