//! The one error type of the protocol crate: every decoder and check reports through it.

/// Why bytes from a peer, a token or a file were refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is larger than the bound for its kind; nothing was decoded.
    #[error("{what} is {len} bytes, over the limit of {limit}")]
    TooLarge {
        /// What was being decoded.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The bound.
        limit: usize,
    },
    /// The bytes do not decode as the expected type.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A signature does not verify under the expected key.
    #[error("bad signature on {what}")]
    BadSignature {
        /// What was signed.
        what: &'static str,
    },
    /// A release is signed by a key other than the pinned publisher key.
    #[error("release signed by unknown key {found}, expected {expected}")]
    UnknownKey {
        /// The key that signed.
        found: String,
        /// The pinned key.
        expected: String,
    },
    /// A name (channel, artifact path, tag) is not acceptable.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// Which kind of name.
        what: &'static str,
        /// The offending value (truncated).
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },
}

impl Error {
    pub(crate) fn malformed(what: &'static str, reason: impl std::fmt::Display) -> Self {
        Error::Malformed { what, reason: reason.to_string() }
    }

    pub(crate) fn check_len(what: &'static str, len: usize, limit: usize) -> Result<(), Error> {
        if len > limit {
            return Err(Error::TooLarge { what, len, limit });
        }
        Ok(())
    }
}
