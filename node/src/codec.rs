//! The request-response codec: a 4-byte little-endian length, then a postcard message.
//!
//! The length is checked against the protocol's bound before a byte of the body is read, so an
//! oversized message is refused as "too large" (not buffered, not misreported as a decode error),
//! and the body is buffered as it arrives, never allocated ahead of the bytes.
//! Chunk payloads may be zstd-compressed by the sender ([`compress`]); [`decompress`] bounds
//! its output at the chunk limit.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use layerhop_protocol::limits;
use layerhop_protocol::wire::{ChunkReply, Request, Response};
use libp2p::StreamProtocol;
use std::io;

/// The codec.
#[derive(Debug, Clone, Copy, Default)]
pub struct Codec;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize, what: &str) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{what} of {len} bytes is over the {limit}-byte limit")));
    }
    // Grow with what arrives: a peer that announces a large message and sends nothing costs
    // nothing (the exchange's deadline ends it).
    let mut buf = Vec::with_capacity(len.min(64 * 1024));
    io.take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() != len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{what} ended after {} of {len} bytes", buf.len())));
    }
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    io.write_all(&(bytes.len() as u32).to_le_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request> {
        let b = read_frame(io, limits::MAX_REQUEST, "request").await?;
        Request::decode(&b).map_err(invalid)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response> {
        let b = read_frame(io, limits::MAX_RESPONSE, "response").await?;
        Response::decode(&b).map_err(invalid)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T, r: Request) -> io::Result<()> {
        write_frame(io, &r.encode().map_err(invalid)?).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T, r: Response) -> io::Result<()> {
        write_frame(io, &r.encode().map_err(invalid)?).await
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
