//! The request-response codec: a 4-byte little-endian length, then a postcard message.
//!
//! The length is checked against the protocol's bound before a byte of the body is read, so an
//! oversized message is refused as "too large" (not buffered, not misreported as a decode error),
//! and the body's buffer is reserved at the announced length but filled (its memory touched)
//! only as bytes arrive.
//! Chunk payloads may be zstd-compressed by the sender ([`compress`]); [`decompress`] bounds
//! its output at the chunk limit.
//!
//! What a peer provably did wrong in an answer is an [`io::Error`] carrying a [`Fault`] (too
//! large, malformed, stalled), which the event loop strikes; any other I/O error (a reset, a
//! closed connection, this node's own stream limit) is not evidence against the peer.
//!
//! ## The pace of an answer from a site peer
//!
//! An answer that trickles (≈1 byte/s, or a length header and then bytes forever, slowly) would
//! otherwise hold a request until its deadline (30 s by default), and a deadline alone is not
//! struck: an honest peer on a loaded host misses it too. So a request to a site peer over the
//! LAN carries a [`Pace`] ([`SITE_PACE`]): once the first byte of the answer has arrived, the
//! bytes received must average at least [`SITE_PACE`]'s floor (2 KiB/s) from that byte on,
//! checked from its grace (5 s) on; an answer below it is cut with [`Fault::Stalled`], within
//! the grace for a trickle that never catches up. Why these figures keep honest peers safe:
//! - The clock starts at the answer's first byte, not at the request: the time a loaded peer
//!   takes to get to the request (its event loop, its disk) is the deadline's business. An honest
//!   peer encodes the whole answer before writing its first byte and then writes it in one go,
//!   so from then on only the link and the scheduling of the two connection tasks stand between
//!   the bytes and this node.
//! - The reader counts what is there before it looks at the clock, and when it finds itself
//!   behind with nothing to read it lets the connection's multiplexer run once more before it
//!   judges: a node whose own tasks were starved reads the bytes that queued meanwhile (in the
//!   stream or still in the socket) and passes. (Measured: without that second look, one honest
//!   peer was struck in the 250-node simulation, "4 bytes in 5.8 s".)
//! - The writer sends the length header and the body in one write, so an honest answer's first
//!   frame carries up to 16 KiB of it: 8 s of credit at the floor.
//! - Measured with both: the `fleet` simulation (5 sites × 1, 10, 50 devices) with the host at
//!   a load average of about 30 on 2 cores struck one honest peer once ("16384 bytes in 9.3 s",
//!   250-device stage) and banned none; the 50-device stage struck none (before the two changes
//!   above it struck one). A longer grace would trade that for a slower ban of a trickler.
//! - The average runs from the first byte (not a sliding window): an honest answer that arrived
//!   in bursts around a scheduling stall has banked credit. A 64 KiB chunk already delivered
//!   covers 32 s at the floor, beyond the request's deadline.
//! - 2 KiB/s is the rate at which a single average chunk (64 KiB) would not arrive before the
//!   default deadline: below it a peer is useless as a source whatever its excuse, and four
//!   orders of magnitude above a trickle.
//! - The 5 s grace covers a sender descheduled right after its header on a starved host.
//! - Stalls of one peer within one grace count as one strike (see [`crate::strikes`]): one
//!   frozen host stalls all its answers at once, and that is one episode, not a ban.
//!
//! The seed's answers carry no pace: it is never struck and its cellular link may crawl.
//! A peer that paces just above the floor, or stalls before its first byte, costs each request
//! at most its deadline; it is retried elsewhere, not struck.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use layerhop_protocol::limits;
use layerhop_protocol::wire::{ChunkReply, Request, Response};
use libp2p::StreamProtocol;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// The progress an answer must keep once its first byte has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// From the first byte, time before the floor applies.
    pub grace: Duration,
    /// Bytes per second the answer must average from its first byte.
    pub floor: u64,
}

/// The pace of answers from site peers over the LAN (see the module docs for the figures).
pub const SITE_PACE: Pace = Pace { grace: Duration::from_secs(5), floor: 2048 };

impl Pace {
    /// When an answer whose first byte came at `first` and that has delivered `got` bytes
    /// falls below the pace.
    pub(crate) fn due(&self, first: Instant, got: u64) -> Instant {
        first + self.grace.max(Duration::from_secs_f64(got as f64 / self.floor.max(1) as f64))
    }
}

/// What a peer provably did wrong in a message: carried inside the [`io::Error`] the codec
/// returns (see [`Fault::of`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Fault {
    /// The length header is over the bound.
    #[error("{what} of {len} bytes is over the {limit}-byte limit")]
    TooLarge {
        /// "request" or "response".
        what: &'static str,
        /// The announced length.
        len: usize,
        /// The bound.
        limit: usize,
    },
    /// The message does not decode (or breaks a bound inside it).
    #[error("{what} refused: {reason}")]
    Malformed {
        /// "request" or "response".
        what: &'static str,
        /// The decoder's words.
        reason: String,
    },
    /// The answer fell below its [`Pace`].
    #[error("{what} stalled: {got} bytes in {secs:.1} s after its first byte, under the floor of {floor} bytes/s")]
    Stalled {
        /// "response".
        what: &'static str,
        /// Bytes received.
        got: u64,
        /// Seconds since the first byte.
        secs: f64,
        /// The floor.
        floor: u64,
    },
}

impl Fault {
    /// The fault an I/O error from the codec carries, if it is one.
    pub fn of(e: &io::Error) -> Option<&Fault> {
        e.get_ref()?.downcast_ref::<Fault>()
    }

    fn into_io(self) -> io::Error {
        let kind = match self {
            Fault::Stalled { .. } => io::ErrorKind::TimedOut,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, self)
    }
}

/// The codec. A clone serves one stream: the pace of the request it writes applies to the
/// answer it reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Codec {
    pace: Option<Pace>,
}

/// A request as the exchange carries it: the message, and the pace its answer must keep
/// (`None`: only the request's deadline). Inbound requests carry no pace.
#[derive(Debug, Clone)]
pub struct Paced {
    /// The message.
    pub request: Request,
    /// The pace of the answer.
    pub pace: Option<Pace>,
}

impl From<Request> for Paced {
    fn from(request: Request) -> Self {
        Paced { request, pace: None }
    }
}

/// A reader that fails with [`Fault::Stalled`] once what it delivered since its first byte falls
/// below the pace. It reads before it looks at the clock (see the module docs).
struct Watched<'a, T> {
    inner: &'a mut T,
    pace: Pace,
    first: Option<Instant>,
    got: u64,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The answer was found behind its pace at the last poll, with nothing to read.
    behind: bool,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut *this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 && this.first.is_none() {
                    this.first = Some(Instant::now());
                }
                this.got += n as u64;
                this.behind = false;
                return Poll::Ready(Ok(n));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        // Before the first byte only the request's deadline applies.
        let Some(first) = this.first else { return Poll::Pending };
        loop {
            let due = this.pace.due(first, this.got);
            let now = Instant::now();
            if now >= due {
                // A connection's task polls its handlers before its multiplexer: after a long
                // sleep (a starved host) the bytes may be in the socket, not yet in this
                // stream. Let the multiplexer run once, and judge on the next poll.
                if !this.behind {
                    this.behind = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                let secs = now.duration_since(first).as_secs_f64();
                return Poll::Ready(Err(Fault::Stalled { what: "response", got: this.got, secs, floor: this.pace.floor }.into_io()));
            }
            let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            timer.as_mut().reset(due);
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize, what: &'static str) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > limit {
        return Err(Fault::TooLarge { what, len, limit }.into_io());
    }
    // The announced length (under the bound) is reserved at once — address space, not memory:
    // pages are touched only as bytes arrive, [`READ_STEP`] at a time, so a peer that announces
    // a large message and sends nothing costs nothing (the exchange's deadline, or the answer's
    // pace, ends it). Growing with what arrives instead (`read_to_end`) moved every answer
    // again at each doubling and zero-filled up to twice its size.
    let mut buf = Vec::with_capacity(len);
    let mut filled = 0;
    while filled < len {
        if filled == buf.len() {
            buf.resize((filled + READ_STEP).min(len), 0);
        }
        let n = io.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{what} ended after {filled} of {len} bytes")));
        }
        filled += n;
    }
    Ok(buf)
}

/// How much of a message's buffer is made ready for each read.
const READ_STEP: usize = 64 * 1024;

/// Write a message encoded with its length in front (`encode_framed`) in one write: the
/// multiplexer then sends the header in the same frame as the body's first bytes, so the first
/// byte of an honest answer brings up to a frame (16 KiB) of credit against the reader's pace.
async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, framed: &[u8]) -> io::Result<()> {
    io.write_all(framed).await?;
    io.close().await
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn malformed(what: &'static str, e: impl std::fmt::Display) -> io::Error {
    Fault::Malformed { what, reason: e.to_string() }.into_io()
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Paced;
    type Response = Response;

    async fn read_request<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Paced> {
        let b = read_frame(io, limits::MAX_REQUEST, "request").await?;
        Request::decode(&b).map(Paced::from).map_err(|e| malformed("request", e))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response> {
        let b = match self.pace {
            Some(pace) => read_frame(&mut Watched { inner: io, pace, first: None, got: 0, timer: None, behind: false }, limits::MAX_RESPONSE, "response").await?,
            None => read_frame(io, limits::MAX_RESPONSE, "response").await?,
        };
        Response::decode(&b).map_err(|e| malformed("response", e))
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T, r: Paced) -> io::Result<()> {
        self.pace = r.pace;
        write_frame(io, &r.request.encode_framed().map_err(invalid)?).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T, r: Response) -> io::Result<()> {
        write_frame(io, &r.encode_framed().map_err(invalid)?).await
    }
}

/// The wire form of a chunk: zstd when that saves at least 1/16 of it, else raw. A 4 KiB probe
/// at zstd's fastest level first: model weights and already-compressed files do not compress,
/// and trying costs more than sending them.
pub fn compress(bytes: Vec<u8>) -> ChunkReply {
    const PROBE: usize = 4096;
    if bytes.len() > 2 * PROBE && zstd_with(1, &bytes[..PROBE]).is_ok_and(|z| z.len() + PROBE / 32 >= PROBE) {
        return ChunkReply::Raw(bytes);
    }
    if bytes.len() >= 128
        && let Ok(z) = zstd_with(3, &bytes)
        && z.len() + bytes.len() / 16 < bytes.len()
    {
        return ChunkReply::Zstd(z);
    }
    ChunkReply::Raw(bytes)
}

thread_local! {
    /// One zstd context per level per thread, kept: creating one per chunk (it allocates and
    /// clears its tables) was 4% of a serving node's CPU.
    static COMPRESSORS: std::cell::RefCell<Vec<(i32, zstd::bulk::Compressor<'static>)>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn zstd_with(level: i32, bytes: &[u8]) -> io::Result<Vec<u8>> {
    COMPRESSORS.with(|c| {
        let mut c = c.borrow_mut();
        let i = match c.iter().position(|(l, _)| *l == level) {
            Some(i) => i,
            None => {
                c.push((level, zstd::bulk::Compressor::new(level)?));
                c.len() - 1
            }
        };
        c[i].1.compress(bytes)
    })
}

/// A chunk's bytes from its wire form; compressed data may not expand past the chunk limit.
pub fn decompress(reply: ChunkReply) -> Option<io::Result<Vec<u8>>> {
    match reply {
        ChunkReply::Raw(b) => Some(Ok(b)),
        ChunkReply::Zstd(z) => Some(zstd::bulk::decompress(&z, limits::MAX_CHUNK)),
        ChunkReply::Missing => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec as _;
    use std::collections::VecDeque;

    /// A peer's answer as bytes at times after the start; EOF after the last.
    struct Script {
        steps: VecDeque<(Duration, Vec<u8>)>,
        start: Instant,
        sleep: Pin<Box<tokio::time::Sleep>>,
    }

    impl Script {
        fn new(steps: Vec<(Duration, Vec<u8>)>) -> Self {
            let start = Instant::now();
            Script { steps: steps.into(), start, sleep: Box::pin(tokio::time::sleep_until(start)) }
        }
    }

    impl AsyncRead for Script {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
            let Some(at) = self.steps.front().map(|(at, _)| *at) else { return Poll::Ready(Ok(0)) };
            let due = self.start + at;
            if Instant::now() < due {
                self.sleep.as_mut().reset(due);
                if self.sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            let Some((at, mut bytes)) = self.steps.pop_front() else { return Poll::Ready(Ok(0)) };
            let n = bytes.len().min(buf.len());
            buf[..n].copy_from_slice(&bytes[..n]);
            if n < bytes.len() {
                self.steps.push_front((at, bytes.split_off(n)));
            }
            Poll::Ready(Ok(n))
        }
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut b = (body.len() as u32).to_le_bytes().to_vec();
        b.extend_from_slice(body);
        b
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// [`SITE_PACE`] scaled down to real time in a test: a 300 ms grace, 64 KiB/s.
    const PACE: Pace = Pace { grace: Duration::from_millis(300), floor: 64 * 1024 };

    async fn read(pace: Option<Pace>, script: Vec<(Duration, Vec<u8>)>) -> (io::Result<Response>, Duration) {
        let start = Instant::now();
        let mut s = Script::new(script);
        let protocol = StreamProtocol::new(layerhop_protocol::wire::PROTOCOL);
        let r = Codec { pace }.read_response(&protocol, &mut s).await;
        (r, start.elapsed())
    }

    fn chunks(n: usize) -> Vec<u8> {
        Response::Chunks(vec![ChunkReply::Raw(vec![9; 64 * 1024]); n]).encode().expect("encode")
    }

    /// A header announcing 4 KiB, then one byte every 50 ms.
    fn trickle() -> Vec<(Duration, Vec<u8>)> {
        let mut script = vec![(ms(0), 4096u32.to_le_bytes().to_vec())];
        script.extend((1..200).map(|i| (ms(50 * i), vec![0u8])));
        script
    }

    // These run in real time: the reader reads what is due before it looks at its clock, so a
    // loaded host only makes the cuts later, never turns an answer that kept the pace into a
    // stall.

    #[tokio::test]
    async fn a_trickle_is_cut_once_its_grace_is_over() {
        let (r, took) = read(Some(PACE), trickle()).await;
        let e = r.expect_err("a trickle is cut");
        assert!(matches!(Fault::of(&e), Some(Fault::Stalled { .. })), "{e}");
        assert!(took >= PACE.grace && took < PACE.grace + Duration::from_secs(5), "cut after {took:?}");
    }

    #[tokio::test]
    async fn a_slow_start_or_a_stall_after_a_burst_is_not_a_trickle() {
        let f = framed(&chunks(4));
        // Nothing for a while (the peer's event loop was busy), then the answer at once.
        let (r, _) = read(Some(PACE), vec![(ms(600), f.clone())]).await;
        assert!(matches!(r, Ok(Response::Chunks(c)) if c.len() == 4));
        // Header and 64 KiB at once, then the sender freezes for most of the second that
        // burst pays for.
        let (r, _) = read(Some(PACE), vec![(ms(0), f[..64 * 1024].to_vec()), (ms(800), f[64 * 1024..].to_vec())]).await;
        assert!(matches!(r, Ok(Response::Chunks(c)) if c.len() == 4));
        // The header, then nothing for most of the grace.
        let (r, _) = read(Some(PACE), vec![(ms(0), f[..4].to_vec()), (ms(200), f[4..].to_vec())]).await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn without_a_pace_only_the_deadline_ends_a_trickle() {
        let still = tokio::time::timeout(PACE.grace * 4, read(None, trickle())).await;
        assert!(still.is_err(), "an unpaced read (the seed's) was cut by the codec");
    }

    #[tokio::test]
    async fn oversized_and_malformed_answers_are_faults() {
        let huge = (limits::MAX_RESPONSE as u32 + 1).to_le_bytes().to_vec();
        let (r, _) = read(Some(PACE), vec![(ms(0), huge)]).await;
        assert!(matches!(Fault::of(&r.expect_err("too large")), Some(Fault::TooLarge { .. })));
        let (r, _) = read(None, vec![(ms(0), framed(&[0xFF; 100]))]).await;
        assert!(matches!(Fault::of(&r.expect_err("malformed")), Some(Fault::Malformed { .. })));
        // An answer that ends early is not proof of malice (the peer may have crashed).
        let f = framed(&chunks(1));
        let (r, _) = read(Some(PACE), vec![(ms(0), f[..1000].to_vec())]).await;
        assert!(Fault::of(&r.expect_err("cut short")).is_none());
    }

    #[test]
    fn compression_round_trips_and_is_bounded() {
        let text = b"layerhop ".repeat(5000);
        let r = compress(text.clone());
        assert!(matches!(r, ChunkReply::Zstd(_)));
        assert_eq!(decompress(r).expect("some").expect("ok"), text);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let noise: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(matches!(compress(noise), ChunkReply::Raw(_)));
        let bomb = zstd::bulk::compress(&vec![0u8; limits::MAX_CHUNK + 1], 3).expect("compress");
        assert!(decompress(ChunkReply::Zstd(bomb)).expect("some").is_err());
    }
}
