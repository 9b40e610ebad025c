//! Streaming a blob: an artifact reassembled from its chunks while it is sent.
//!
//! A layer can be gigabytes and a device has little memory, so a blob is never held whole:
//! [`export::write_artifact`] runs on a blocking thread and writes into a bounded channel of
//! 256 KiB pieces ([`DEPTH`] in flight), which the HTTP body drains. A slow client therefore
//! slows the reassembly down instead of growing a buffer, and a client that hangs up stops it at
//! the next piece. Every chunk is verified by BLAKE3 as it is read; a full blob is also checked
//! against the release's BLAKE3 at its end, and a failure then (or a chunk missing midway)
//! aborts the body, so the client sees a truncated transfer, never wrong bytes as a success.
//!
//! A `Range` is served by reassembling from the start and discarding the bytes before it
//! (header columns make a tar layer's byte offsets unknowable without replaying them); it stops
//! as soon as the range is sent.

use super::catalog::Catalog;
use super::error::RegistryError;
use axum::body::{Body, Bytes};
use layerhop_protocol::Artifact;
use layerhop_store::export;
use std::io::{self, Write};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Bytes per piece sent to the HTTP body.
const PIECE: usize = 256 << 10;
/// Pieces buffered between the reassembling thread and the client.
pub const DEPTH: usize = 4;

/// An inclusive byte range within a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive).
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Never true: a range holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Read a `Range` header for a blob of `size` bytes. `Ok(None)`: serve the whole blob (no
/// header, or one this server ignores as HTTP allows: several ranges, other units, bad syntax);
/// `Err(RangeInvalid)`: the range starts at or beyond the end (416).
pub fn parse_range(header: &str, size: u64) -> Result<Option<ByteRange>, RegistryError> {
    let invalid = || RegistryError::RangeInvalid { range: header.chars().take(100).collect(), size };
    let Some(spec) = header.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return Ok(None) };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix range: the last N bytes.
        let Ok(n) = b.parse::<u64>() else { return Ok(None) };
        if n == 0 || size == 0 {
            return Err(invalid());
        }
        return Ok(Some(ByteRange { start: size.saturating_sub(n), end: size - 1 }));
    }
    let Ok(start) = a.parse::<u64>() else { return Ok(None) };
    let end = if b.is_empty() {
        u64::MAX
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e,
            _ => return Ok(None),
        }
    };
    if start >= size {
        return Err(invalid());
    }
    Ok(Some(ByteRange { start, end: end.min(size - 1) }))
}

/// Writes into the channel, keeping only the bytes of the range.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
    /// Bytes still to discard before the range.
    skip: u64,
    /// Bytes of the range still to send.
    remaining: u64,
    /// Whether the writer stopped the reassembly because the range was complete.
    done: bool,
}

impl ChannelWriter {
    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE));
        self.tx.blocking_send(Ok(Bytes::from(piece))).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut d = data;
        let k = (self.skip.min(d.len() as u64)) as usize;
        self.skip -= k as u64;
        d = &d[k..];
        let take = (self.remaining.min(d.len() as u64)) as usize;
        self.buf.extend_from_slice(&d[..take]);
        self.remaining -= take as u64;
        if self.buf.len() >= PIECE {
            self.send_buf()?;
        }
        if take < d.len() {
            // Past the end of the range: stop reassembling.
            self.send_buf()?;
            self.done = true;
            return Err(io::Error::other("range complete"));
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A body streaming `a` (or `range` of it) from the store.
pub fn stream(catalog: Arc<Catalog>, a: Artifact, range: Option<ByteRange>) -> Body {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(DEPTH);
    let range = range.unwrap_or(ByteRange { start: 0, end: a.size.saturating_sub(1) });
    let remaining = if a.size == 0 { 0 } else { range.len() };
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter { tx: tx.clone(), buf: Vec::with_capacity(PIECE), skip: range.start, remaining, done: false };
        let result = export::write_artifact(catalog.store(), &a, &mut w);
        match result {
            Ok(_) => {
                let _ = w.send_buf();
            }
            Err(_) if w.done => {}
            Err(e) => {
                if matches!(e, layerhop_store::Error::Missing { .. }) {
                    catalog.forget(&a);
                }
                if tx.is_closed() {
                    tracing::debug!(artifact = %a.name, "registry: client went away mid-blob");
                } else {
                    tracing::warn!(artifact = %a.name, error = %e, "registry: blob stream aborted");
                    let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
                }
            }
        }
    });
    let pieces = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Body::from_stream(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |h| parse_range(h, 100);
        assert_eq!(r("bytes=0-9").expect("ok"), Some(ByteRange { start: 0, end: 9 }));
        assert_eq!(r("bytes=90-").expect("ok"), Some(ByteRange { start: 90, end: 99 }));
        assert_eq!(r("bytes=90-500").expect("ok"), Some(ByteRange { start: 90, end: 99 }));
        assert_eq!(r("bytes=-10").expect("ok"), Some(ByteRange { start: 90, end: 99 }));
        assert_eq!(r("bytes=-1000").expect("ok"), Some(ByteRange { start: 0, end: 99 }));
        assert_eq!(r("bytes=0-1,5-6").expect("ignored"), None);
        assert_eq!(r("items=0-1").expect("ignored"), None);
        assert_eq!(r("bytes=5-2").expect("ignored"), None);
        assert!(matches!(r("bytes=100-"), Err(RegistryError::RangeInvalid { size: 100, .. })));
        assert!(matches!(r("bytes=-0"), Err(RegistryError::RangeInvalid { .. })));
        assert!(matches!(parse_range("bytes=0-", 0), Err(RegistryError::RangeInvalid { .. })));
    }

    #[test]
    fn writer_keeps_only_the_range() {
        let (tx, mut rx) = mpsc::channel(64);
        let mut w = ChannelWriter { tx, buf: Vec::new(), skip: 3, remaining: 4, done: false };
        assert_eq!(w.write(b"ab").expect("skipped"), 2);
        assert!(w.write(b"cdefghij").is_err());
        assert!(w.done);
        let got = rx.try_recv().expect("piece").expect("bytes");
        assert_eq!(&got[..], b"defg");
    }
}
