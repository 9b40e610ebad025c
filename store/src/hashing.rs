//! Readers and writers that hash what passes through them.
//!
//! An artifact's BLAKE3 (what devices check) and, for layers and configs, its SHA-256 (the OCI
//! digest, computed once on the seed) are taken while the bytes stream by, never in a second pass.

use layerhop_protocol::ChunkId;
use sha2::Digest;
use std::io::{Read, Write};

/// Hashes of a byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digests {
    /// Bytes seen.
    pub len: u64,
    /// BLAKE3 of them.
    pub blake3: ChunkId,
    /// SHA-256 of them, when asked for.
    pub sha256: Option<[u8; 32]>,
}

struct Hashers {
    len: u64,
    blake3: blake3::Hasher,
    sha256: Option<sha2::Sha256>,
}

impl Hashers {
    fn new(with_sha256: bool) -> Self {
        Hashers { len: 0, blake3: blake3::Hasher::new(), sha256: with_sha256.then(sha2::Sha256::new) }
    }
    fn update(&mut self, b: &[u8]) {
        self.len += b.len() as u64;
        self.blake3.update(b);
        if let Some(s) = &mut self.sha256 {
            s.update(b);
        }
    }
    fn finish(self) -> Digests {
        Digests { len: self.len, blake3: self.blake3.finalize().into(), sha256: self.sha256.map(|s| s.finalize().into()) }
    }
}

/// A reader that hashes everything read through it.
pub struct HashingReader<R> {
    inner: R,
    h: Hashers,
}

impl<R: Read> HashingReader<R> {
    /// Wrap `inner`; `with_sha256` also computes SHA-256.
    pub fn new(inner: R, with_sha256: bool) -> Self {
        HashingReader { inner, h: Hashers::new(with_sha256) }
    }
    /// The digests of what was read.
    pub fn finish(self) -> Digests {
        self.h.finish()
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.h.update(&buf[..n]);
        Ok(n)
    }
}

/// A writer that hashes everything written through it.
pub struct HashingWriter<W> {
    inner: W,
    h: Hashers,
}

impl<W: Write> HashingWriter<W> {
    /// Wrap `inner`; `with_sha256` also computes SHA-256.
    pub fn new(inner: W, with_sha256: bool) -> Self {
        HashingWriter { inner, h: Hashers::new(with_sha256) }
    }
    /// The digests of what was written, and the inner writer.
    pub fn finish(self) -> (Digests, W) {
        (self.h.finish(), self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.h.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
