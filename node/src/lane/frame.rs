//! The lane's messages, inside TLS: a request is a count and that many 32-byte chunk ids; the
//! answer is one record per id, in order: a kind byte (0 missing, 1 raw, 2 zstd), a 4-byte
//! little-endian length, the bytes. No other framing: the lane carries nothing else.
//!
//! What the reading side checks before it reads a byte of a record's body: the kind is known, a
//! missing chunk has no bytes, and the length is within the chunk bound — so a hostile peer can
//! make a reader hold at most one chunk's bound of memory per record. Each read also keeps the
//! answer's [`Pace`]: once a batch's first byte has come, the bytes must keep up with the pace's
//! floor (as for answers on the exchange protocol, see [`crate::codec`]); before it, the batch
//! waits at most the request timeout, which is not held against the peer.

use crate::codec::{Fault, Pace};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use layerhop_protocol::ChunkId;
use layerhop_protocol::limits::{MAX_CHUNK, MAX_IDS_PER_REQUEST};
use layerhop_protocol::wire::ChunkReply;
use std::io::{self, IoSlice};
use std::time::Duration;
use tokio::time::Instant;

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

fn malformed(reason: String) -> Failure {
    Failure::Fault(Fault::Malformed { what: "lane answer", reason })
}

/// Write a request for `ids` (1 to [`MAX_IDS_PER_REQUEST`] of them).
pub(crate) async fn write_request<W: AsyncWrite + Unpin>(w: &mut W, ids: &[ChunkId]) -> io::Result<()> {
    debug_assert!(!ids.is_empty() && ids.len() <= MAX_IDS_PER_REQUEST);
    let mut buf = Vec::with_capacity(1 + 32 * ids.len());
    buf.push(ids.len() as u8);
    for id in ids {
        buf.extend_from_slice(id.as_bytes());
    }
    w.write_all(&buf).await?;
    w.flush().await
}

/// Read a request; `Ok(None)` when the peer closed the lane between requests.
pub(crate) async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Vec<ChunkId>>, String> {
    let mut n = [0u8; 1];
    match r.read(&mut n).await {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(e.to_string()),
    }
    let n = n[0] as usize;
    if n == 0 || n > MAX_IDS_PER_REQUEST {
        return Err(format!("a lane request for {n} chunks (1 to {MAX_IDS_PER_REQUEST})"));
    }
    let mut raw = vec![0u8; 32 * n];
    r.read_exact(&mut raw).await.map_err(|e| e.to_string())?;
    Ok(Some(raw.chunks_exact(32).map(|c| ChunkId::from_bytes(c.try_into().unwrap_or([0; 32]))).collect()))
}

/// Write the answer to one request: one record per reply, in order, handed to the writer as
/// one vectored write (under TLS: full records across chunk boundaries, not a record for each
/// 5-byte head, and the records out in as few system calls as TLS's send buffer allows).
pub(crate) async fn write_replies<W: AsyncWrite + Unpin>(w: &mut W, replies: &[ChunkReply]) -> io::Result<()> {
    let heads: Vec<[u8; 5]> = replies
        .iter()
        .map(|r| {
            let (kind, len) = match r {
                ChunkReply::Missing => (0, 0),
                ChunkReply::Raw(b) => (1, b.len()),
                ChunkReply::Zstd(b) => (2, b.len()),
            };
            let mut head = [kind, 0, 0, 0, 0];
            head[1..].copy_from_slice(&(len as u32).to_le_bytes());
            head
        })
        .collect();
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 * replies.len());
    for (head, r) in heads.iter().zip(replies) {
        slices.push(IoSlice::new(head));
        if let ChunkReply::Raw(b) | ChunkReply::Zstd(b) = r {
            slices.push(IoSlice::new(b));
        }
    }
    let mut left = &mut slices[..];
    while !left.is_empty() {
        let n = w.write_vectored(left).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut left, n);
    }
    w.flush().await
}

/// The clock of one batch's answer: how long it may wait for its first byte, and the pace after.
pub(crate) struct Clock {
    pace: Pace,
    /// The first byte must come before this.
    wait_until: Instant,
    first: Option<Instant>,
    got: u64,
}

impl Clock {
    /// A batch whose answer may take `wait` to begin.
    pub(crate) fn new(pace: Pace, wait: Duration) -> Clock {
        Clock { pace, wait_until: Instant::now() + wait, first: None, got: 0 }
    }

    fn deadline(&self) -> Instant {
        match self.first {
            None => self.wait_until,
            Some(first) => self.pace.due(first, self.got),
        }
    }
}

/// Fill `buf`, keeping `clock`.
async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8], clock: &mut Clock) -> Result<(), Failure> {
    let mut at = 0;
    while at < buf.len() {
        let n = match tokio::time::timeout_at(clock.deadline(), r.read(&mut buf[at..])).await {
            Ok(Ok(0)) => return Err(Failure::Lost("the lane closed mid-answer".into())),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(match clock.first {
                    None => Failure::Lost("no answer within the request timeout".into()),
                    Some(first) => Failure::Fault(Fault::Stalled { what: "lane answer", got: clock.got, secs: first.elapsed().as_secs_f64(), floor: clock.pace.floor }),
                });
            }
        };
        clock.first.get_or_insert_with(Instant::now);
        clock.got += n as u64;
        at += n;
    }
    Ok(())
}

/// Read the answer to a request for `n` chunks.
pub(crate) async fn read_replies<R: AsyncRead + Unpin>(r: &mut R, n: usize, clock: &mut Clock) -> Result<Vec<ChunkReply>, Failure> {
    let mut replies = Vec::with_capacity(n);
    for _ in 0..n {
        let mut head = [0u8; 5];
        fill(r, &mut head, clock).await?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_CHUNK {
            return Err(Failure::Fault(Fault::TooLarge { what: "lane chunk", len, limit: MAX_CHUNK }));
        }
        let reply = match head[0] {
            0 if len == 0 => ChunkReply::Missing,
            0 => return Err(malformed(format!("a missing chunk with {len} bytes"))),
            kind @ (1 | 2) => {
                let mut bytes = vec![0u8; len];
                fill(r, &mut bytes, clock).await?;
                if kind == 1 { ChunkReply::Raw(bytes) } else { ChunkReply::Zstd(bytes) }
            }
            k => return Err(malformed(format!("unknown record kind {k}"))),
        };
        replies.push(reply);
    }
    Ok(replies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::SITE_PACE;
    use futures::io::Cursor;

    fn id(b: u8) -> ChunkId {
        ChunkId::from_bytes([b; 32])
    }

    #[tokio::test]
    async fn requests_and_answers_round_trip() {
        let mut w = Cursor::new(Vec::new());
        write_request(&mut w, &[id(1), id(2)]).await.expect("write");
        let mut r = Cursor::new(w.into_inner());
        assert_eq!(read_request(&mut r).await.expect("read"), Some(vec![id(1), id(2)]));
        assert_eq!(read_request(&mut r).await.expect("end"), None);

        let replies = vec![ChunkReply::Raw(vec![7; 1000]), ChunkReply::Missing, ChunkReply::Zstd(vec![1, 2, 3])];
        let mut w = Cursor::new(Vec::new());
        write_replies(&mut w, &replies).await.expect("write");
        let mut r = Cursor::new(w.into_inner());
        let got = read_replies(&mut r, 3, &mut Clock::new(SITE_PACE, Duration::from_secs(5))).await.expect("read");
        assert_eq!(got, replies);
    }

    #[tokio::test]
    async fn hostile_answers_are_faults_before_their_bodies_are_read() {
        let cases: [(&[u8], &str); 3] = [
            (&[1, 0xff, 0xff, 0xff, 0xff], "over"),
            (&[9, 0, 0, 0, 0], "unknown record kind 9"),
            (&[0, 5, 0, 0, 0], "a missing chunk with 5 bytes"),
        ];
        for (bytes, words) in cases {
            let mut r = Cursor::new(bytes.to_vec());
            match read_replies(&mut r, 1, &mut Clock::new(SITE_PACE, Duration::from_secs(5))).await {
                Err(Failure::Fault(f)) => assert!(f.to_string().contains(words), "{f}"),
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
        // Cut short: lost, not a fault (an honest peer that died mid-answer).
        let mut r = Cursor::new(vec![1, 10, 0, 0, 0, 1, 2]);
        assert!(matches!(read_replies(&mut r, 1, &mut Clock::new(SITE_PACE, Duration::from_secs(5))).await, Err(Failure::Lost(_))));
    }

    #[tokio::test]
    async fn bad_requests_are_refused() {
        for bytes in [vec![0u8], vec![17u8], vec![2u8; 40]] {
            let mut r = Cursor::new(bytes.clone());
            assert!(read_request(&mut r).await.is_err(), "{bytes:?}");
        }
    }
}
