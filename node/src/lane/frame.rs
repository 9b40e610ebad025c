//! The lane's messages, each one record ([`super::record`]): the server's first record is
//! `ready` (empty); a request is a record of 1 to 16 chunk ids (32 bytes each); the answer is
//! one record per id, in order, of kind missing (empty), raw or zstd. Nothing else travels on
//! a lane.
//!
//! What the reading side checks before it reads a byte of a record's body: the kind is one it
//! expects, a missing chunk has no bytes, and the length is within the chunk bound — so a
//! hostile peer can make a reader hold at most one chunk's bound of memory per record. Each
//! read of an answer also keeps the answer's pace ([`Clock`]): once a batch's first byte has
//! come, the bytes must keep up with the pace's floor (as for answers on the exchange protocol,
//! see [`crate::codec`]); before it, the batch waits at most the request timeout, which is not
//! held against the peer.

use super::record::{self, Clock, Opening, Sealing};
use crate::codec::Fault;
use layerhop_protocol::ChunkId;
use layerhop_protocol::limits::{MAX_CHUNK, MAX_IDS_PER_REQUEST};
use layerhop_protocol::wire::ChunkReply;
use std::io::{self, IoSlice};
use tokio::io::{AsyncRead, AsyncWrite};

/// Record kinds.
const MISSING: u8 = 0;
const RAW: u8 = 1;
const ZSTD: u8 = 2;
const REQUEST: u8 = 3;
const READY: u8 = 4;

/// Why reading or writing on a lane ended.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The peer provably misbehaved (struck, see [`crate::strikes`]).
    Fault(Fault),
    /// The connection failed or timed out: not evidence against the peer.
    Lost(String),
    /// The asking side closed it, idle.
    Idle,
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Lost(e.to_string())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Fault(fault) => fault.fmt(f),
            Failure::Lost(why) => f.write_str(why),
            Failure::Idle => f.write_str("idle"),
        }
    }
}

fn malformed(what: &'static str, reason: String) -> Failure {
    Failure::Fault(Fault::Malformed { what, reason })
}

/// The server's first record: its handshake is done and it reads requests.
pub(crate) async fn write_ready<W: AsyncWrite + Unpin>(w: &mut W, seal: &mut Sealing) -> io::Result<()> {
    record::write_one(w, seal, READY, Vec::new()).await
}

/// Wait for the server's `ready` (the client writes nothing before it, see [`record`]).
pub(crate) async fn read_ready<R: AsyncRead + Unpin>(r: &mut R, open: &mut Opening, clock: &mut Clock) -> Result<(), Failure> {
    match record::read_head(r, clock).await? {
        None => Err(Failure::Lost("the lane closed before it was ready".into())),
        Some((h, READY, 0)) => record::read_body(r, open, h, 0, clock).await.map(drop),
        Some((_, kind, len)) => Err(malformed("lane greeting", format!("a record of kind {kind} and {len} bytes, not ready"))),
    }
}

/// Write a request for `ids` (1 to [`MAX_IDS_PER_REQUEST`] of them).
pub(crate) async fn write_request<W: AsyncWrite + Unpin>(w: &mut W, seal: &mut Sealing, ids: &[ChunkId]) -> io::Result<()> {
    debug_assert!(!ids.is_empty() && ids.len() <= MAX_IDS_PER_REQUEST);
    record::write_one(w, seal, REQUEST, ids.iter().flat_map(|id| *id.as_bytes()).collect()).await
}

/// Read a request; `Ok(None)` when the peer closed the lane between requests.
pub(crate) async fn read_request<R: AsyncRead + Unpin>(r: &mut R, open: &mut Opening, clock: &mut Clock) -> Result<Option<Vec<ChunkId>>, Failure> {
    let Some((h, kind, len)) = record::read_head(r, clock).await? else { return Ok(None) };
    if kind != REQUEST || len == 0 || len % 32 != 0 || len / 32 > MAX_IDS_PER_REQUEST {
        return Err(malformed("lane request", format!("a record of kind {kind} and {len} bytes, not a request for 1 to {MAX_IDS_PER_REQUEST} chunks")));
    }
    let raw = record::read_body(r, open, h, len, clock).await?;
    Ok(Some(raw.chunks_exact(32).map(|c| ChunkId::from_bytes(c.try_into().unwrap_or([0; 32]))).collect()))
}

/// Write the answer to one request: one record per reply, in order, each chunk sealed where it
/// lies (so `replies` holds ciphertext after), the whole answer handed to the socket as one
/// vectored write.
pub(crate) async fn write_replies<W: AsyncWrite + Unpin>(w: &mut W, seal: &mut Sealing, replies: &mut [ChunkReply]) -> io::Result<()> {
    let mut sealed = Vec::with_capacity(replies.len());
    for r in replies.iter_mut() {
        sealed.push(match r {
            ChunkReply::Missing => seal.seal(MISSING, &mut [])?,
            ChunkReply::Raw(b) => seal.seal(RAW, b)?,
            ChunkReply::Zstd(b) => seal.seal(ZSTD, b)?,
        });
    }
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(3 * replies.len());
    for ((h, tag), r) in sealed.iter().zip(replies.iter()) {
        slices.push(IoSlice::new(h));
        if let ChunkReply::Raw(b) | ChunkReply::Zstd(b) = r {
            slices.push(IoSlice::new(b));
        }
        slices.push(IoSlice::new(tag.as_ref()));
    }
    record::write_all(w, &mut slices).await
}

/// Read the answer to a request for `n` chunks.
pub(crate) async fn read_replies<R: AsyncRead + Unpin>(r: &mut R, open: &mut Opening, n: usize, clock: &mut Clock) -> Result<Vec<ChunkReply>, Failure> {
    let mut replies = Vec::with_capacity(n);
    for _ in 0..n {
        let Some((h, kind, len)) = record::read_head(r, clock).await? else {
            return Err(Failure::Lost(if clock.begun() { "the lane closed mid-answer" } else { "the lane closed" }.into()));
        };
        if len > MAX_CHUNK {
            return Err(Failure::Fault(Fault::TooLarge { what: "lane chunk", len, limit: MAX_CHUNK }));
        }
        let reply = match kind {
            MISSING if len == 0 => {
                record::read_body(r, open, h, 0, clock).await?;
                ChunkReply::Missing
            }
            MISSING => return Err(malformed("lane answer", format!("a missing chunk with {len} bytes"))),
            RAW => ChunkReply::Raw(record::read_body(r, open, h, len, clock).await?),
            ZSTD => ChunkReply::Zstd(record::read_body(r, open, h, len, clock).await?),
            k => return Err(malformed("lane answer", format!("unknown record kind {k}"))),
        };
        replies.push(reply);
    }
    Ok(replies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::SITE_PACE;
    use std::io::Cursor;
    use std::time::Duration;

    fn id(b: u8) -> ChunkId {
        ChunkId::from_bytes([b; 32])
    }

    fn clock() -> Clock {
        Clock::new(SITE_PACE, Duration::from_secs(5))
    }

    #[tokio::test]
    async fn requests_and_answers_round_trip() {
        let (mut seal, mut open) = record::test_keys();
        let mut w = Vec::new();
        write_ready(&mut w, &mut seal).await.expect("ready");
        write_request(&mut w, &mut seal, &[id(1), id(2)]).await.expect("write");
        let mut r = Cursor::new(w);
        read_ready(&mut r, &mut open, &mut clock()).await.expect("ready");
        assert_eq!(read_request(&mut r, &mut open, &mut clock()).await.expect("read"), Some(vec![id(1), id(2)]));
        assert!(read_request(&mut r, &mut open, &mut clock()).await.expect("end").is_none());

        let replies = vec![ChunkReply::Raw(vec![7; 1000]), ChunkReply::Missing, ChunkReply::Zstd(vec![1, 2, 3])];
        let mut w = Vec::new();
        write_replies(&mut w, &mut seal, &mut replies.clone()).await.expect("write");
        let got = read_replies(&mut Cursor::new(w), &mut open, 3, &mut clock()).await.expect("read");
        assert_eq!(got, replies);
    }

    /// A head as a hostile peer would write it (no body follows: it must not be read).
    fn head(kind: u8, len: u32) -> Vec<u8> {
        let mut h = vec![kind];
        h.extend_from_slice(&len.to_le_bytes());
        h
    }

    #[tokio::test]
    async fn hostile_answers_are_faults_before_their_bodies_are_read() {
        let cases = [(head(1, u32::MAX), "over"), (head(9, 0), "unknown record kind 9"), (head(0, 5), "a missing chunk with 5 bytes"), (head(READY, 0), "unknown record kind 4")];
        for (bytes, words) in cases {
            let (_, mut open) = record::test_keys();
            match read_replies(&mut Cursor::new(bytes.clone()), &mut open, 1, &mut clock()).await {
                Err(Failure::Fault(f)) => assert!(f.to_string().contains(words), "{f}"),
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
        // Cut short: lost, not a fault (an honest peer that died mid-answer).
        let (mut seal, mut open) = record::test_keys();
        let mut w = Vec::new();
        write_replies(&mut w, &mut seal, &mut [ChunkReply::Raw(vec![3; 10])]).await.expect("write");
        w.truncate(w.len() - 4);
        assert!(matches!(read_replies(&mut Cursor::new(w), &mut open, 1, &mut clock()).await, Err(Failure::Lost(_))));
    }

    #[tokio::test]
    async fn bad_requests_and_greetings_are_refused() {
        for bytes in [head(REQUEST, 0), head(REQUEST, 17 * 32), head(REQUEST, 33), head(RAW, 32)] {
            let (_, mut open) = record::test_keys();
            assert!(read_request(&mut Cursor::new(bytes.clone()), &mut open, &mut clock()).await.is_err(), "{bytes:?}");
        }
        let (_, mut open) = record::test_keys();
        assert!(matches!(read_ready(&mut Cursor::new(head(RAW, 0)), &mut open, &mut clock()).await, Err(Failure::Fault(_))));
    }
}
