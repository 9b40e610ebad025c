//! layerhop's wire types, codecs and signatures.
//!
//! Pure: no tokio, no disk. Everything a peer, a token or a file hands us passes through a decoder
//! here, and every decoder takes untrusted bytes, checks a size bound before it allocates, and
//! returns a typed [`Error`] instead of panicking.
//!
//! Main items:
//! - [`ChunkId`]: the BLAKE3 name of up to [`limits::MAX_CHUNK`] bytes.
//! - [`BlobRef`] and [`tree`]: a blob of any size is a Merkle tree of chunks whose interior nodes
//!   (chunk lists) are chunks too, cut at content-defined boundaries, so an unchanged file or layer
//!   costs nothing to describe again.
//! - [`release`]: the signed release a seed publishes and devices verify.
//! - [`wire`]: the request/response messages peers exchange.
//! - [`token`]: the join token a seed hands a device.
//! - [`rotation`] and [`revocation`]: publisher key rotation statements and the fleet's signed
//!   list of revoked devices.
#![warn(missing_docs)]

pub mod blob;
pub mod error;
pub mod id;
pub mod limits;
pub mod release;
pub mod revocation;
pub mod rotation;
pub mod token;
pub mod tree;
pub mod wire;

pub use blob::BlobRef;
pub use error::Error;
pub use id::ChunkId;
pub use release::{Artifact, ArtifactKind, Channel, Content, Image, Priority, PublisherKey, ReleaseBody, SignedRelease};
