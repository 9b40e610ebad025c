//! The lane's records once its TLS handshake is done: what kernel TLS (kTLS) does after a
//! user-space handshake, done in the lane's own tasks.
//!
//! Why not TLS's records: the receiving side is bound by CPU (see [`crate::lane`]), and on it
//! rustls (as any buffered TLS) moved every byte three times besides decrypting it — from the
//! socket's buffer into a read buffer, into its deframer, decrypted there and copied out to the
//! chunk's buffer, which had been zeroed first. In a profile of the LAN bench's receiver those
//! copies, the zeroing and their allocations were ~13% of its CPU (memmove 5.9%, memset 4.0%,
//! malloc/free 2.7%; rustls's record handling besides), and the sending side spent 8.1% copying each
//! 16 KiB record into its send buffer. kTLS would take the records after the handshake in the
//! kernel, but not every device's kernel has it (the bench's host is built without
//! `CONFIG_TLS`).
//!
//! So the handshake stays TLS 1.3 (both ends proven by their libp2p identity, [`super::tls`]),
//! and then both ends protect records themselves, under keys the handshake gave them — by the
//! lane version both ends agreed (ALPN, see [`super::tls`]):
//! - `layerhop-lane/3`, when both ends have AES instructions: AEGIS-128X2 (the CFRG's AEGIS
//!   draft; `aegis`, libaegis), each direction's 16-byte key and 16-byte IV taken from the
//!   handshake's exporter (RFC 8446 §7.5, label [`EXPORTER_LABEL`]), sequence numbers from 0.
//! - `layerhop-lane/2` otherwise (an end without AES instructions, or of an earlier build): the
//!   AEAD the handshake agreed, under its traffic secrets (rustls's
//!   `dangerous_extract_secrets`, the API meant for kTLS), from `aws-lc-rs`, sequence numbers
//!   counted on from where TLS left them.
//!
//! Why AEGIS where it can: it is built of AES rounds with no GHASH, and the cipher runs at both
//! ends of every byte a lane moves. On the development host on the day it was measured (AVX2
//! and VAES, no AVX-512; sealing 1 GiB in 80 KB records, one thread, three rounds): AES-128-GCM
//! (`aws-lc-rs`) 0.255-0.283 s, ChaCha20-Poly1305 0.455-0.504 s, AEGIS-128L 0.073-0.074 s,
//! AEGIS-128X2 0.038-0.043 s. On the LAN bench that day (1 GiB, `--runs 5`): this build's fetch
//! 1.61-1.80 s in four invocations (medians), both nodes' CPU 2.54-2.86 s, ratio to the plain
//! copy 0.81-1.02; the build before, the same hour, 2.41 s, 3.87 s, 0.59. `--compare` (both
//! devices, three runs each): fetch 2.06 s against 2.42 s, CPU 3.44 s against 4.12 s. On an
//! earlier day `aws-lc-rs`'s AES-GCM sealed 1 GiB in 16 KiB records in 94-100 ms (`ring`'s in
//! 116-137 ms): the host is not the same machine every day, and what AES-GCM costs varies
//! with it more than AEGIS does. X2 rather than 128L: it runs two AES states
//! side by side, twice as fast where the CPU has 256-bit AES (VAES) and as fast as 128L where
//! it has not. AEGIS needs AES instructions to be fast and safe from timing, hence only
//! between ends that both have them (ARMv8 boards without them use ChaCha20-Poly1305).
//!
//! - A record is one message — a chunk (up to `MAX_CHUNK`), a request, or the server's `ready`
//!   — as a 5-byte head (kind `u8`, plaintext length `u32` little-endian), the ciphertext, and
//!   a 16-byte tag. The head is the AEAD's associated data, so kind and length are
//!   authenticated too.
//! - The nonce is TLS 1.3's: the direction's IV XOR the record's sequence number (RFC 8446
//!   §5.3). Each direction has its own key, so a record cannot be replayed, reordered,
//!   reflected or dropped without the next one failing to open.
//! - A key protects at most [`MAX_BYTES`] (64 GiB) per direction; TLS 1.3 allows AES-GCM
//!   2^24.5 full records per key (~370 GiB, RFC 8446 §5.5; AEGIS has no such bound, the same
//!   one is kept for both). A lane that reaches it fails as lost: the asking side asks over
//!   the exchange protocol for a while, then opens a new lane.
//! - A record that does not open ends the lane as lost, as a TLS record that fails to decrypt
//!   did: the asking side asks again elsewhere.
//!
//! One record per message is what saves the copies: the receiver reads a chunk's ciphertext
//! straight into the spare capacity of the buffer the chunk is then kept in (nothing zeroed)
//! and opens it there; the sender seals each chunk where it lies and hands head, chunk and tag
//! of a whole answer to one `writev`. Measured on the LAN bench (1 GiB, both devices of each
//! build, runs alternating, five each): fetch 1.40 s against 1.64 s with TLS's records,
//! receiving CPU 1.39 s against 1.65 s (medians); the sending node's CPU 0.52-0.58 s against
//! 0.71-0.82 s (medians of separate invocations).
//!
//! Why encrypt at all, when every chunk is verified by its name anyway: the name proves the
//! bytes, not who may read them, and a site's LAN (a factory's WiFi) carries other machines
//! than the fleet's; every other path a chunk takes (libp2p's noise) is encrypted too. What the
//! cipher costs was measured by taking it out: a build whose records authenticated only their
//! head, the body sent in the clear (an experiment, not kept), against this one on the LAN bench
//! (`--compare`, both devices, five runs each, at f7c9b96): fetch 1.09 s against 1.20 s,
//! receiving CPU 1.09 s against 1.19 s, ratio to the plain copy 0.66 against 0.56 (medians) —
//! about 0.1 s of CPU at each end per GiB on that day's host.
//!
//! Nothing but the handshake goes through rustls. The server sends no session tickets, and
//! neither end writes past its handshake before the other is done with its own: the server's
//! first record is `ready`, and the client writes nothing until it has read it — so no record
//! can sit in rustls's buffers when the keys are taken (a peer that writes early breaks only
//! its own lane: its records fail to open).

use super::frame::Failure;
use super::tls::ALPN_AEGIS;
use crate::codec::{Fault, Pace};
use crate::traffic::Counted;
use aegis::aegis128x2::Aegis128X2;
use aws_lc_rs::aead::{self, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use bytes::BufMut;
use rustls::ConnectionTrafficSecrets;
use std::io::{self, IoSlice};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

/// A record's head: kind and plaintext length.
pub(crate) const HEAD: usize = 5;
/// The AEAD's tag after each record's ciphertext.
pub(crate) const TAG: usize = 16;
/// Bytes one key protects in one direction (see the module docs).
pub(crate) const MAX_BYTES: u64 = 64 << 30;
/// The label of the TLS exporter the AEGIS keys come from (RFC 8446 §7.5).
const EXPORTER_LABEL: &[u8] = b"EXPORTER-layerhop-lane-records";

/// One direction's AEAD, its key and IV.
enum Cipher {
    /// The AEAD the TLS handshake agreed, under its traffic secret ([`super::tls::ALPN`]).
    Tls { key: LessSafeKey, iv: [u8; NONCE_LEN] },
    /// AEGIS-128X2 under a key from the handshake's exporter ([`ALPN_AEGIS`]).
    Aegis { key: aegis::aegis128x2::Key, iv: aegis::aegis128x2::Nonce },
}

/// One direction's key and where its sequence is.
struct Key {
    cipher: Cipher,
    seq: u64,
    bytes: u64,
}

/// The IV with the record's sequence number XORed into its last 8 bytes (RFC 8446 §5.3).
fn nonce<const N: usize>(iv: &[u8; N], seq: u64) -> [u8; N] {
    let mut n = *iv;
    for (b, s) in n[N - 8..].iter_mut().zip(seq.to_be_bytes()) {
        *b ^= s;
    }
    n
}

impl Key {
    /// The key of the AEAD TLS agreed, from its traffic secret, counting on from `seq`.
    fn tls(seq: u64, secrets: &ConnectionTrafficSecrets) -> Result<Key, String> {
        let (algorithm, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&aead::CHACHA20_POLY1305, key, iv),
            _ => return Err("the lane's TLS agreed a cipher its records do not use".into()),
        };
        let iv = iv.as_ref().try_into().map_err(|_| "the lane's TLS gave an IV of an unexpected length".to_string())?;
        let key = UnboundKey::new(algorithm, key.as_ref()).map_err(|_| "the lane's TLS gave a key of an unexpected length".to_string())?;
        Ok(Key { cipher: Cipher::Tls { key: LessSafeKey::new(key), iv }, seq, bytes: 0 })
    }

    /// An AEGIS-128X2 key: its 16 bytes and its IV's 16, from the handshake's exporter.
    fn aegis(material: &[u8]) -> Key {
        let (mut key, mut iv) = ([0u8; 16], [0u8; 16]);
        key.copy_from_slice(&material[..16]);
        iv.copy_from_slice(&material[16..32]);
        Key { cipher: Cipher::Aegis { key, iv }, seq: 0, bytes: 0 }
    }

    /// The next record's sequence number, counting its `len` bytes against [`MAX_BYTES`].
    fn next(&mut self, len: usize) -> io::Result<u64> {
        self.bytes += (len + TAG) as u64;
        if self.bytes > MAX_BYTES {
            return Err(io::Error::other(format!("the lane's key has protected {} GiB; a new lane takes over", MAX_BYTES >> 30)));
        }
        let seq = self.seq;
        self.seq = seq.checked_add(1).ok_or_else(|| io::Error::other("the lane's record sequence ran out"))?;
        Ok(seq)
    }

    /// The AEAD's name, for the logs.
    fn name(&self) -> String {
        match &self.cipher {
            Cipher::Tls { key, .. } => format!("{:?}", key.algorithm()),
            Cipher::Aegis { .. } => "AEGIS_128X2".into(),
        }
    }
}

/// The key records are sealed with (this end's sending direction).
pub(crate) struct Sealing(Key);
/// The key records are opened with (the other end's sending direction).
pub(crate) struct Opening(Key);

/// A record's head.
fn head(kind: u8, len: usize) -> [u8; HEAD] {
    let mut h = [kind, 0, 0, 0, 0];
    h[1..].copy_from_slice(&(len as u32).to_le_bytes());
    h
}

impl Sealing {
    /// Seal `body` in place as a record of `kind`: its head and tag.
    pub(crate) fn seal(&mut self, kind: u8, body: &mut [u8]) -> io::Result<([u8; HEAD], [u8; TAG])> {
        let h = head(kind, body.len());
        let seq = self.0.next(body.len())?;
        let tag = match &self.0.cipher {
            Cipher::Tls { key, iv } => {
                let tag = key.seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce(iv, seq)), Aad::from(h), body).map_err(|_| io::Error::other("sealing a lane record failed"))?;
                tag.as_ref().try_into().map_err(|_| io::Error::other("the lane's AEAD gave a tag of an unexpected length"))?
            }
            Cipher::Aegis { key, iv } => Aegis128X2::<TAG>::new(key, &nonce(iv, seq)).encrypt_in_place(body, &h),
        };
        Ok((h, tag))
    }
}

impl Opening {
    /// Open a record of head `h` whose ciphertext and tag are `sealed`, in place; its plaintext.
    fn open<'a>(&mut self, h: [u8; HEAD], sealed: &'a mut [u8]) -> Result<&'a mut [u8], Failure> {
        let forged = || Failure::Lost("a lane record failed to authenticate".into());
        let len = sealed.len().checked_sub(TAG).ok_or_else(forged)?;
        let seq = self.0.next(len)?;
        match &self.0.cipher {
            Cipher::Tls { key, iv } => key.open_in_place(Nonce::assume_unique_for_key(nonce(iv, seq)), Aad::from(h), sealed).map_err(|_| forged()),
            Cipher::Aegis { key, iv } => {
                let (body, tag) = sealed.split_at_mut(len);
                let tag: &[u8; TAG] = (&*tag).try_into().map_err(|_| forged())?;
                Aegis128X2::<TAG>::new(key, &nonce(iv, seq)).decrypt_in_place(body, tag, &h).map_err(|_| forged())?;
                Ok(body)
            }
        }
    }
}

/// A lane after its handshake: the socket's halves, counted, and the keys for each direction.
pub(crate) struct Lane {
    pub(crate) rd: Counted<OwnedReadHalf>,
    pub(crate) wr: Counted<OwnedWriteHalf>,
    pub(crate) seal: Sealing,
    pub(crate) open: Opening,
    /// The AEAD the handshake agreed (for the logs: it depends on both ends' CPUs, see
    /// [`super::tls`]).
    pub(crate) cipher: String,
}

/// The record keys of a finished TLS handshake, and the AEAD's name: AEGIS-128X2 keys from
/// its exporter when both ends agreed [`ALPN_AEGIS`], else the traffic secrets of the AEAD TLS
/// agreed.
fn keys(conn: rustls::Connection) -> Result<(Sealing, Opening, String), String> {
    let (seal, open) = if conn.alpn_protocol() == Some(ALPN_AEGIS) {
        let client = matches!(conn, rustls::Connection::Client(_));
        let m = conn.export_keying_material([0u8; 64], EXPORTER_LABEL, None).map_err(|e| format!("taking the lane's keys from TLS: {e}"))?;
        // The first 32 bytes key the client's records, the next 32 the server's.
        let (to_server, to_client) = (Key::aegis(&m[..32]), Key::aegis(&m[32..]));
        if client { (Sealing(to_server), Opening(to_client)) } else { (Sealing(to_client), Opening(to_server)) }
    } else {
        let s = conn.dangerous_extract_secrets().map_err(|e| format!("taking the lane's keys from TLS: {e}"))?;
        (Sealing(Key::tls(s.tx.0, &s.tx.1)?), Opening(Key::tls(s.rx.0, &s.rx.1)?))
    };
    let name = seal.0.name();
    Ok((seal, open, name))
}

impl Lane {
    /// Take over `io` from the finished TLS handshake `conn` (see [`keys`]).
    pub(crate) fn new(io: Counted<libp2p::tcp::tokio::TcpStream>, conn: rustls::Connection) -> Result<Lane, String> {
        let (seal, open, cipher) = keys(conn)?;
        let (rd, wr) = io.split(|s| s.0.into_split());
        Ok(Lane { rd, wr, seal, open, cipher })
    }
}

/// Both ends of one direction under one made-up key, for tests of what reads records.
#[cfg(test)]
pub(crate) fn test_keys() -> (Sealing, Opening) {
    let key = |b| Key { cipher: Cipher::Tls { key: LessSafeKey::new(UnboundKey::new(&aead::AES_128_GCM, &[b; 16]).expect("key")), iv: [7; NONCE_LEN] }, seq: 0, bytes: 0 };
    (Sealing(key(1)), Opening(key(1)))
}

/// [`test_keys`] under AEGIS-128X2.
#[cfg(test)]
fn test_keys_aegis() -> (Sealing, Opening) {
    (Sealing(Key::aegis(&[3; 32])), Opening(Key::aegis(&[3; 32])))
}

/// Write `slices` whole (one `writev` for as much as the socket takes).
pub(crate) async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !slices.is_empty() {
        let n = w.write_vectored(slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// Seal `body` as one record of `kind` and write it.
pub(crate) async fn write_one<W: AsyncWrite + Unpin>(w: &mut W, seal: &mut Sealing, kind: u8, mut body: Vec<u8>) -> io::Result<()> {
    let (h, tag) = seal.seal(kind, &mut body)?;
    write_all(w, &mut [IoSlice::new(&h), IoSlice::new(&body), IoSlice::new(tag.as_ref())]).await
}

/// The clock of reading one message (a batch's answer, a request): how long it may wait for its
/// first byte, and the pace its bytes must keep after.
pub(crate) struct Clock {
    pace: Pace,
    /// The first byte must come before this.
    wait_until: Instant,
    first: Option<Instant>,
    got: u64,
}

impl Clock {
    /// A message that may take `wait` to begin.
    pub(crate) fn new(pace: Pace, wait: Duration) -> Clock {
        Clock { pace, wait_until: Instant::now() + wait, first: None, got: 0 }
    }

    /// Whether its first byte has come.
    pub(crate) fn begun(&self) -> bool {
        self.first.is_some()
    }

    /// One read within the clock: what it read.
    async fn read(&mut self, read: impl Future<Output = io::Result<usize>>) -> Result<usize, Failure> {
        let due = match self.first {
            None => self.wait_until,
            Some(first) => self.pace.due(first, self.got),
        };
        let n = match tokio::time::timeout_at(due, read).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(match self.first {
                    None => Failure::Lost("nothing came within the request timeout".into()),
                    Some(first) => Failure::Fault(Fault::Stalled { what: "lane answer", got: self.got, secs: first.elapsed().as_secs_f64(), floor: self.pace.floor }),
                });
            }
        };
        if n > 0 {
            self.first.get_or_insert_with(Instant::now);
            self.got += n as u64;
        }
        Ok(n)
    }
}

/// Read a record's head: its kind and length; `None` if the lane closed before its first byte.
pub(crate) async fn read_head<R: AsyncRead + Unpin>(r: &mut R, clock: &mut Clock) -> Result<Option<([u8; HEAD], u8, usize)>, Failure> {
    let mut h = [0u8; HEAD];
    let mut at = 0;
    while at < HEAD {
        match clock.read(r.read(&mut h[at..])).await? {
            0 if at == 0 => return Ok(None),
            0 => return Err(Failure::Lost("the lane closed mid-record".into())),
            n => at += n,
        }
    }
    Ok(Some((h, h[0], u32::from_le_bytes([h[1], h[2], h[3], h[4]]) as usize)))
}

/// Read the ciphertext and tag of the record of head `h` (its length `len`, checked by the
/// caller) into a buffer of their size, not zeroed first, and open it there: the plaintext.
pub(crate) async fn read_body<R: AsyncRead + Unpin>(r: &mut R, open: &mut Opening, h: [u8; HEAD], len: usize, clock: &mut Clock) -> Result<Vec<u8>, Failure> {
    let want = len + TAG;
    let mut buf = Vec::with_capacity(want);
    while buf.len() < want {
        let left = want - buf.len();
        if clock.read(r.read_buf(&mut (&mut buf).limit(left))).await? == 0 {
            return Err(Failure::Lost("the lane closed mid-record".into()));
        }
    }
    let plain = open.open(h, &mut buf)?.len();
    buf.truncate(plain);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::SITE_PACE;

    fn clock() -> Clock {
        Clock::new(SITE_PACE, Duration::from_secs(5))
    }

    async fn read_one(bytes: Vec<u8>, open: &mut Opening) -> Result<(u8, Vec<u8>), Failure> {
        let mut r = std::io::Cursor::new(bytes);
        let (h, kind, len) = read_head(&mut r, &mut clock()).await?.expect("a head");
        Ok((kind, read_body(&mut r, open, h, len, &mut clock()).await?))
    }

    async fn sealed(seal: &mut Sealing, kind: u8, body: &[u8]) -> Vec<u8> {
        let mut w = Vec::new();
        write_one(&mut w, seal, kind, body.to_vec()).await.expect("write");
        w
    }

    #[tokio::test]
    async fn records_open_in_order_and_say_their_kind() {
        for (mut seal, mut open) in [test_keys(), test_keys_aegis()] {
            let a = sealed(&mut seal, 1, &[9; 1000]).await;
            let b = sealed(&mut seal, 0, &[]).await;
            assert_eq!(a.len(), HEAD + 1000 + TAG);
            assert_ne!(&a[HEAD..HEAD + 1000], &[9; 1000][..], "the body is not sent in the clear");
            assert_eq!(read_one(a, &mut open).await.expect("first"), (1, vec![9; 1000]));
            assert_eq!(read_one(b, &mut open).await.expect("second"), (0, vec![]));
        }
    }

    #[tokio::test]
    async fn a_record_changed_replayed_or_skipped_does_not_open() {
        for (cipher, keys) in [("AES-GCM", test_keys as fn() -> (Sealing, Opening)), ("AEGIS-128X2", test_keys_aegis)] {
            let (mut seal, _) = keys();
            let first = sealed(&mut seal, 1, b"first").await;
            let second = sealed(&mut seal, 1, b"second").await;
            let mut flipped = first.clone();
            flipped[HEAD + 2] ^= 1;
            let mut relabelled = first.clone();
            relabelled[0] = 2;
            let mut tag_flipped = first.clone();
            *tag_flipped.last_mut().expect("a tag") ^= 1;
            for (what, bytes) in [("a flipped bit", flipped), ("another kind in the head", relabelled), ("a flipped bit in the tag", tag_flipped), ("the second record first", second)] {
                let (_, mut open) = keys();
                match read_one(bytes, &mut open).await {
                    Err(Failure::Lost(why)) => assert!(why.contains("authenticate"), "{cipher}, {what}: {why}"),
                    other => panic!("{cipher}, {what}: {other:?}"),
                }
            }
            let (_, mut open) = keys();
            read_one(first.clone(), &mut open).await.expect("the first record");
            assert!(read_one(first, &mut open).await.is_err(), "{cipher}: the first record again");
        }
    }


    #[tokio::test]
    async fn a_record_cut_short_is_lost() {
        let (mut seal, mut open) = test_keys();
        let mut bytes = sealed(&mut seal, 1, &[5; 100]).await;
        bytes.truncate(HEAD + 50);
        assert!(matches!(read_one(bytes, &mut open).await, Err(Failure::Lost(why)) if why.contains("mid-record")));
    }

    /// The AEAD two ends of a handshake agree on, after checking that each opens what the other
    /// sealed, and that the two directions' keys differ (the same bytes, sealed first by either
    /// end, differ: a record reflected to the end that sealed it does not open there).
    async fn across(client_aes: bool, server_aes: bool) -> String {
        let (c, s) = super::super::tls::tests::handshake(client_aes, server_aes);
        let ((mut c_seal, mut c_open, c_name), (mut s_seal, mut s_open, s_name)) = (keys(c).expect("client keys"), keys(s).expect("server keys"));
        assert_eq!(c_name, s_name);
        let to_server = sealed(&mut c_seal, 1, b"the same bytes").await;
        let to_client = sealed(&mut s_seal, 1, b"the same bytes").await;
        assert_ne!(to_server, to_client, "both directions under one key");
        assert_eq!(read_one(to_server, &mut s_open).await.expect("the server opens the client's record"), (1, b"the same bytes".to_vec()));
        assert_eq!(read_one(to_client, &mut c_open).await.expect("the client opens the server's record"), (1, b"the same bytes".to_vec()));
        c_name
    }

    #[tokio::test]
    async fn both_ends_take_the_same_keys_for_each_direction() {
        assert_eq!(across(true, true).await, "AEGIS_128X2", "two ends with AES instructions");
        assert_eq!(across(false, true).await, "CHACHA20_POLY1305");
        assert_eq!(across(true, false).await, "CHACHA20_POLY1305");
    }

    #[test]
    fn a_key_stops_at_its_bound() {
        let (mut seal, _) = test_keys();
        seal.0.bytes = MAX_BYTES - 100 - TAG as u64;
        let _sealed = seal.seal(1, &mut [0; 100]).expect("up to the bound");
        let e = seal.seal(1, &mut [0; 1]).expect_err("past the bound");
        assert!(e.to_string().contains("64 GiB"), "{e}");
    }
}
