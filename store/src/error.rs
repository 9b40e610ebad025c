//! The store's error type.

use layerhop_protocol::ChunkId;
use std::path::PathBuf;

/// What went wrong in the store, naming the path or chunk involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file-system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The sled index failed.
    #[error("index: {0}")]
    Index(#[from] sled::Error),
    /// Bytes handed to the store do not hash to the id they were given under.
    #[error("chunk {id} does not match its bytes")]
    Mismatch {
        /// The claimed id.
        id: ChunkId,
    },
    /// A chunk needed to read a blob is not in the store.
    #[error("chunk {id} is missing")]
    Missing {
        /// The chunk.
        id: ChunkId,
    },
    /// A source to import or a stored structure is not what it should be.
    #[error("{what}: {reason}")]
    Invalid {
        /// What was being read (a path, a layer, a tree).
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// A chunk is larger than any chunk may be.
    #[error("chunk of {len} bytes is over the {limit}-byte limit")]
    ChunkTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A protocol structure failed to decode or verify.
    #[error(transparent)]
    Protocol(#[from] layerhop_protocol::Error),
    /// A tar could not be split or joined.
    #[error("tar: {0}")]
    Tar(#[from] crate::tarsplit::Error),
    /// Another process has the store open (sled holds a lock on its index while open).
    #[error("the store at {path} is in use by another process (its index is locked); stop that node first")]
    InUse {
        /// The store's directory.
        path: PathBuf,
    },
    /// A release being recorded is not newer than the trusted one.
    #[error("channel {channel}: version {version} is not newer than trusted version {trusted}")]
    NotNewer {
        /// The channel.
        channel: String,
        /// The offered version.
        version: u64,
        /// The version already trusted.
        trusted: u64,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl std::fmt::Display) -> Error {
        Error::Invalid { what: what.into(), reason: reason.to_string() }
    }

    /// Whether the error is the file system being out of space (ENOSPC) or over a quota
    /// (EDQUOT): nothing is wrong with the data, and writing again once space returns succeeds.
    pub fn is_disk_full(&self) -> bool {
        let full = |e: &std::io::Error| matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) || e.kind() == std::io::ErrorKind::StorageFull;
        matches!(self, Error::Io { source, .. } if full(source))
    }
}

/// Results of store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
