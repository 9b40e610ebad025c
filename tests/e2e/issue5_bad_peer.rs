//! Issue 5: a hostile site member. An enrolled device (its join token is real, so it passes the
//! handshake and the hello) says it holds the whole release and answers every chunk request
//! badly: bytes that do not match the chunk ids, answers larger than asked, an endless stream, a
//! trickle. It runs in this process as a libp2p swarm whose codec misbehaves on purpose (same
//! protocol name as the node's); the honest device is the real binary.
//!
//! Pass criteria, per behaviour: each bad answer is cut within a bound; the honest device
//! strikes the member and bans it (status `banned_peers`, `strikes`), which closes its
//! connection and refuses its redial; the chunks come from the seed; the device completes the
//! release byte-exact and every chunk file in its store matches its name; a second device that
//! can reach only the first (the seed is stopped) completes from it, byte-exact, striking
//! nobody.

use crate::harness::{Cluster, Node, cli_ok, noise, stored_chunks, wait_for};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use layerhop_protocol::limits::{MAX_CHUNK, MAX_REQUEST, MAX_RESPONSE};
use layerhop_protocol::token::{Credential, JoinToken};
use layerhop_protocol::wire::{ChunkReply, HaveMap, Hello, PROTOCOL, Request, Response, State};
use layerhop_protocol::{Channel, ChunkId};
use libp2p::request_response::{self, Event, Message, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SITE: &str = "line-4";
const CHANNEL: &str = "models";
/// One chunk per file (a file up to 64 KiB is one chunk), so the release is many small chunks
/// the member is asked for in rounds of up to 128 (8 requests of 16): a trickle is cut, asked
/// again and cut again until the ban.
const FILES: usize = 400;
/// The node's pace for site peers (node/src/codec.rs `SITE_PACE`).
const GRACE: Duration = layerhop_node::codec::SITE_PACE.grace;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Misbehaviour {
    /// Random bytes in place of each chunk.
    Corrupt,
    /// In turn: a length header over the message bound, chunk replies over the chunk bound,
    /// one reply more than asked.
    Oversized,
    /// A length header over the bound then bytes forever, then twice a header at the bound
    /// then bytes forever, and so on.
    Endless,
    /// A length header, then one byte a second.
    Trickle,
}

/// One bad answer, as the member wrote it.
#[derive(Debug, Clone)]
struct Written {
    /// Which chunk request it answered (0 first).
    n: u64,
    started: Instant,
    /// When a write failed (the honest device cut the stream) or the answer was complete.
    ended: Option<Instant>,
    bytes: u64,
    cut: bool,
}

/// What the member saw.
#[derive(Debug, Default)]
struct Seen {
    /// Its peer id.
    me: Option<PeerId>,
    member: bool,
    states_acked: u64,
    chunk_requests: u64,
    first_request: Option<Instant>,
    connections: u64,
    closed: Vec<Instant>,
    answers: Vec<Written>,
}

type Shared = Arc<Mutex<Seen>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// The member's answers: a proper one, or a bad one to the `n`th chunk request.
enum Answer {
    Proper(Response),
    Bad { ids: Vec<ChunkId>, n: u64 },
}

#[derive(Clone)]
struct HostileCodec {
    how: Misbehaviour,
    seen: Shared,
}

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame over its bound"));
    }
    let mut b = Vec::new();
    io.take(len as u64).read_to_end(&mut b).await?;
    Ok(b)
}

/// The book of one bad answer, kept as it is written: the answer's future is dropped
/// unfinished when the honest device closes the connection.
struct Book {
    seen: Shared,
    slot: usize,
}

impl Book {
    fn open(seen: &Shared, n: u64) -> Book {
        let mut s = lock(seen);
        s.answers.push(Written { n, started: Instant::now(), ended: None, bytes: 0, cut: false });
        Book { seen: seen.clone(), slot: s.answers.len() - 1 }
    }

    fn wrote(&mut self, n: usize) {
        lock(&self.seen).answers[self.slot].bytes += n as u64;
    }

    fn close(&mut self, cut: bool) {
        let mut s = lock(&self.seen);
        let w = &mut s.answers[self.slot];
        if w.ended.is_none() {
            w.ended = Some(Instant::now());
            w.cut = cut;
        }
    }
}

impl Drop for Book {
    fn drop(&mut self) {
        self.close(true);
    }
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, body: &[u8], book: Option<&mut Book>) -> io::Result<()> {
    io.write_all(&(body.len() as u32).to_le_bytes()).await?;
    io.write_all(body).await?;
    if let Some(b) = book {
        b.wrote(4 + body.len());
    }
    io.close().await
}

/// A response's bytes by the protocol's own encoder (it bounds only the whole message, so a
/// chunk reply over the chunk bound still encodes).
fn encoded(r: &Response) -> Vec<u8> {
    r.encode().expect("the member's answers stay under the message bound")
}

/// A length header, then `block` again and again until the honest device cuts the stream.
async fn forever<T: AsyncWrite + Unpin + Send>(io: &mut T, len: u32, block: &[u8], pause: Option<Duration>, book: &mut Book) -> io::Result<()> {
    io.write_all(&len.to_le_bytes()).await?;
    io.flush().await?;
    book.wrote(4);
    loop {
        if let Some(p) = pause {
            tokio::time::sleep(p).await;
        }
        io.write_all(block).await?;
        io.flush().await?;
        book.wrote(block.len());
    }
}

impl HostileCodec {
    async fn bad<T: AsyncWrite + Unpin + Send>(&self, io: &mut T, ids: &[ChunkId], n: u64, book: &mut Book) -> io::Result<()> {
        match (self.how, n % 3) {
            (Misbehaviour::Corrupt, _) => {
                let r = Response::Chunks(ids.iter().enumerate().map(|(i, _)| ChunkReply::Raw(noise(4096, n * 100 + i as u64))).collect());
                write_frame(io, &encoded(&r), Some(book)).await
            }
            (Misbehaviour::Oversized, 0) => forever(io, 64 << 20, &[0u8; 64 * 1024], None, book).await,
            (Misbehaviour::Oversized, 1) => {
                let r = Response::Chunks(ids.iter().map(|_| ChunkReply::Raw(vec![0x5A; MAX_CHUNK + 1])).collect());
                write_frame(io, &encoded(&r), Some(book)).await
            }
            (Misbehaviour::Oversized, _) => {
                let r = Response::Chunks((0..=ids.len()).map(|i| ChunkReply::Raw(noise(4096, n * 100 + i as u64))).collect());
                write_frame(io, &encoded(&r), Some(book)).await
            }
            (Misbehaviour::Endless, 0) => forever(io, u32::MAX, &[0u8; 64 * 1024], None, book).await,
            (Misbehaviour::Endless, _) => forever(io, MAX_RESPONSE as u32, &[0u8; 64 * 1024], None, book).await,
            (Misbehaviour::Trickle, _) => forever(io, 1 << 20, &[0u8], Some(Duration::from_secs(1)), book).await,
        }
    }
}

impl request_response::Codec for HostileCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Answer;

    async fn read_request<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request> {
        let b = read_frame(io, MAX_REQUEST).await?;
        Request::decode(&b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Answer> {
        let b = read_frame(io, MAX_RESPONSE).await?;
        Response::decode(&b).map(Answer::Proper).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T, r: Request) -> io::Result<()> {
        write_frame(io, &r.encode().map_err(|e| io::Error::other(e.to_string()))?, None).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T, r: Answer) -> io::Result<()> {
        match r {
            Answer::Proper(r) => write_frame(io, &encoded(&r), None).await,
            Answer::Bad { ids, n } => {
                let mut book = Book::open(&self.seen, n);
                let r = self.bad(io, &ids, n, &mut book).await;
                book.close(r.is_err());
                r
            }
        }
    }
}

/// The member's claim: all of the release, nothing fetched from the seed.
fn state() -> State {
    let have = HaveMap { channel: Channel::new(CHANNEL).expect("channel"), version: 1, complete: true, full: true, ids: vec![], claims: vec![] };
    State { uplink: false, seed_fetched: 0, seed_pending: 0, releases: vec![have] }
}

/// Run the hostile member against `target` until `stop` fires; `redial` asks it to dial again.
async fn member(how: Misbehaviour, credential: Credential, target: (PeerId, Multiaddr), seen: Shared, mut redial: tokio::sync::mpsc::Receiver<()>) {
    let codec = HostileCodec { how, seen: seen.clone() };
    // Its own deadline is long: the honest device is the one that must cut its answers.
    let cfg = request_response::Config::default().with_request_timeout(Duration::from_secs(120));
    let behaviour = request_response::Behaviour::with_codec(codec, [(StreamProtocol::new(PROTOCOL), ProtocolSupport::Full)], cfg);
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(libp2p::tcp::Config::default().nodelay(true), libp2p::noise::Config::new, libp2p::yamux::Config::default)
        .expect("transport")
        .with_behaviour(|_| behaviour)
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    lock(&seen).me = Some(*swarm.local_peer_id());
    let dial = |swarm: &mut libp2p::Swarm<request_response::Behaviour<HostileCodec>>| {
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(target.0).addresses(vec![target.1.clone()]).build();
        swarm.dial(opts).expect("dial");
    };
    dial(&mut swarm);
    let mut hello = None;
    let mut n = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            r = redial.recv() => match r {
                Some(()) => dial(&mut swarm),
                None => return,
            },
            _ = tick.tick() => {
                // The heartbeat that keeps it a live member (the lease is 15 s).
                if lock(&seen).member && swarm.is_connected(&target.0) {
                    swarm.behaviour_mut().send_request(&target.0, Request::State(state()));
                }
            }
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == target.0 => {
                    lock(&seen).connections += 1;
                    let h = Hello { credential: Some(credential.clone()), listen_addrs: vec![], site_sharing: true, channels: vec![] };
                    hello = Some(swarm.behaviour_mut().send_request(&target.0, Request::Hello(h)));
                }
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } if peer_id == target.0 => {
                    let mut s = lock(&seen);
                    s.member = false;
                    s.closed.push(Instant::now());
                }
                SwarmEvent::Behaviour(Event::Message { message: Message::Request { request, channel, .. }, .. }) => {
                    let answer = match request {
                        Request::Chunks(ids) => {
                            let mut s = lock(&seen);
                            s.chunk_requests += 1;
                            s.first_request.get_or_insert_with(Instant::now);
                            n += 1;
                            Answer::Bad { ids, n: n - 1 }
                        }
                        Request::Releases => Answer::Proper(Response::Releases(vec![])),
                        _ => Answer::Proper(Response::Ack),
                    };
                    let _ = swarm.behaviour_mut().send_response(channel, answer);
                }
                SwarmEvent::Behaviour(Event::Message { message: Message::Response { request_id, response }, .. }) => {
                    let ack = matches!(response, Answer::Proper(Response::Ack));
                    if Some(request_id) == hello && ack {
                        lock(&seen).member = true;
                        swarm.behaviour_mut().send_request(&target.0, Request::State(state()));
                    } else if ack && lock(&seen).member {
                        lock(&seen).states_acked += 1;
                    }
                }
                _ => {}
            },
        }
    }
}

struct Hostile {
    seen: Shared,
    redial: tokio::sync::mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hostile {
    fn start(how: Misbehaviour, credential: Credential, target: (PeerId, Multiaddr)) -> Hostile {
        let seen: Shared = Default::default();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let s = seen.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(member(how, credential, target, s, rx));
            rt.shutdown_background();
        });
        Hostile { seen, redial: tx, thread: Some(thread) }
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        let (tx, _) = tokio::sync::mpsc::channel(1);
        drop(std::mem::replace(&mut self.redial, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn target(n: &Node) -> (PeerId, Multiaddr) {
    let s = n.status().expect("status");
    let peer = s["peer_id"].as_str().expect("peer").parse().expect("peer id");
    let addr = s["listen_addrs"][0].as_str().expect("addr").parse().expect("multiaddr");
    (peer, addr)
}

fn count(n: &Node, key: &str) -> u64 {
    n.status().expect("status")[key].as_u64().unwrap_or_else(|| panic!("status has no counter {key}"))
}

fn export_matches(n: &Node, out: &Path, src: &Path) {
    cli_ok(&["export", "--home", n.home_arg(), "--channel", CHANNEL, "--out", out.to_str().expect("utf-8")]);
    for i in 0..FILES {
        let name = format!("f{i:03}.bin");
        let got = std::fs::read(out.join(CHANNEL).join(&name)).unwrap_or_else(|e| panic!("{name} not exported: {e}"));
        assert!(got == std::fs::read(src.join(&name)).expect("source"), "{name} differs from what was published");
    }
}

/// Every chunk a node holds matches its name: nothing unverified was stored.
fn store_verifies(n: &Node) -> usize {
    let chunks = stored_chunks(&n.home);
    for (name, bytes) in &chunks {
        assert_eq!(blake3::hash(bytes).to_hex().as_str(), name, "stored chunk {name} does not match its name");
    }
    chunks.iter().map(|(name, _)| name).collect::<std::collections::HashSet<_>>().len()
}

/// The reasons of the faults the device logged (struck, banned, or a stall of an episode
/// already struck), in order.
fn faults_logged(n: &Node) -> Vec<String> {
    n.log()
        .lines()
        .filter(|l| l.contains("peer struck") || l.contains("peer banned") || l.contains("answer stalled"))
        .filter_map(|l| l.split_once("reason").map(|(_, r)| r.split('"').nth(1).unwrap_or(r).to_owned()))
        .collect()
}

/// Seconds from an answer's first byte to its cut, as the device measured a stall.
fn stall_secs(reason: &str) -> Option<f64> {
    reason.split_once(" bytes in ")?.1.split_once(" s after")?.0.parse().ok()
}

/// What one run measured.
struct Figures {
    ban_after: Duration,
    strikes: u64,
    answers: Vec<Written>,
    faults: Vec<String>,
}

/// Run a member that misbehaves `how` against a device with `parallel` chunk requests in flight
/// per source (its `parallel_requests`), which must ban it within `ban_within` of its first
/// chunk request.
fn run(how: Misbehaviour, parallel: usize, ban_within: Duration) -> Figures {
    let started = Instant::now();
    let mut c = Cluster::start(0, SITE);
    let mut device = c.enroll(SITE, "device-0");
    device.set_config("parallel_requests", &parallel.to_string());
    device.start();
    c.devices.push(device);
    let src = c.path("r1").join(CHANNEL);
    std::fs::create_dir_all(&src).expect("mkdir");
    for i in 0..FILES {
        std::fs::write(src.join(format!("f{i:03}.bin")), noise(2048 + 8 * i, 7000 + i as u64)).expect("write");
    }
    let token = cli_ok(&["invite", "--home", c.seed.home_arg(), "--site", SITE]);
    let credential = JoinToken::decode(token.trim()).expect("join token").credential;
    let honest = &c.devices[0];
    let hostile = Hostile::start(how, credential, target(honest));
    // A member in good standing that claims the whole release before it is published.
    wait_for("the hostile member to be taken as a site member", Duration::from_secs(30), || (lock(&hostile.seen).states_acked > 0).then_some(()))
        .expect("member");
    let v = c.publish(CHANNEL, &[&src]);
    assert_eq!(v, 1, "the member claims version 1");

    // Banned: the device closed its connection.
    let (first, closed) = wait_for("the honest device to ban the hostile member", ban_within + Duration::from_secs(30), || {
        let s = lock(&hostile.seen);
        Some((s.first_request?, *s.closed.first()?))
    })
    .unwrap_or_else(|e| panic!("{e}\n--- log of the honest device:\n{}", honest.log()));
    let ban_after = closed.duration_since(first);
    let s = honest.status().expect("status");
    assert_eq!(s["banned_peers"], 1, "{s}");
    let strikes = s["strikes"].as_u64().expect("strikes");
    // Exactly the strikes that ban: answers in flight when the ban fell are not counted again.
    assert_eq!(strikes, u64::from(layerhop_node::strikes::STRIKES_TO_BAN), "{s}");
    assert!(ban_after <= ban_within, "{how:?}: banned {ban_after:?} after its first chunk request, over the bound of {ban_within:?}");

    // Its redial is refused: the connection is denied and closed, nothing more is asked of it.
    let refused_before = count(honest, "refused_connections");
    let asked = lock(&hostile.seen).chunk_requests;
    hostile.redial.blocking_send(()).expect("redial");
    wait_for("the redial to be refused", Duration::from_secs(30), || (count(honest, "refused_connections") > refused_before).then_some(()))
        .expect("refused");

    // The release completes from the seed, byte-exact, with nothing unverified stored.
    let s = honest.wait_complete(CHANNEL, v, Duration::from_secs(60));
    let seen_now = lock(&hostile.seen);
    assert_eq!(seen_now.chunk_requests, asked, "the banned member was asked for chunks again");
    assert!(seen_now.connections <= 2 && !seen_now.member, "{:?}", *seen_now);
    let me = seen_now.me.expect("peer id").to_string();
    assert!(s["peers"].as_array().expect("peers").iter().all(|p| p["peer_id"] != me.as_str()), "the banned member is connected: {s}");
    let answers = seen_now.answers.clone();
    drop(seen_now);
    assert_eq!(s["chunks_from_peers"], 0, "a chunk was taken from the hostile member: {s}");
    assert!(s["chunks_from_seed"].as_u64().expect("count") >= FILES as u64, "{s}");
    export_matches(honest, &c.path("export-a"), &src);
    let held = store_verifies(honest);
    assert!(held >= FILES, "{held} chunk files");
    drop(hostile);

    // A second device that can reach only the first takes everything from it, correct.
    let mut late = c.enroll(SITE, "late-device");
    c.seed.stop();
    let addr = target(&c.devices[0]).1;
    late.set_config("site_peers", &format!("[\"{addr}\"]"));
    late.start();
    let s = late.wait_complete(CHANNEL, v, Duration::from_secs(60));
    assert_eq!(s["chunks_from_seed"], 0, "{s}");
    assert!(s["chunks_from_peers"].as_u64().expect("count") >= FILES as u64, "{s}");
    assert_eq!(s["strikes"], 0, "the honest device served something bad: {s}");
    export_matches(&late, &c.path("export-b"), &src);
    store_verifies(&late);
    eprintln!("{how:?}: whole run {:.1} s", started.elapsed().as_secs_f64());
    let faults = faults_logged(&c.devices[0]);
    Figures { ban_after, strikes, answers, faults }
}

fn report(how: Misbehaviour, f: &Figures) {
    let cuts: Vec<String> = f
        .answers
        .iter()
        .take(12)
        .map(|w| format!("{:.2}s/{}B{}", w.ended.map_or(f64::NAN, |e| e.duration_since(w.started).as_secs_f64()), w.bytes, if w.cut { "/cut" } else { "" }))
        .collect();
    eprintln!("{how:?}: banned {:.2} s after its first chunk request; {} strikes; {} bad answers (as the member wrote them): {}", f.ban_after.as_secs_f64(), f.strikes, f.answers.len(), cuts.join(" "));
    eprintln!("{how:?}: faults the device logged: {}", f.faults.join(" | "));
}

/// The three faults that banned the member, in order.
fn ban_reasons(f: &Figures) -> &[String] {
    assert!(f.faults.len() >= 3, "{:?}", f.faults);
    &f.faults[..3]
}

#[test]
fn bad_member_sending_corrupt_chunks_is_banned() {
    let f = run(Misbehaviour::Corrupt, 8, Duration::from_secs(10));
    report(Misbehaviour::Corrupt, &f);
    for r in ban_reasons(&f) {
        assert!(r.contains("does not match its bytes"), "{r}");
    }
}

#[test]
fn bad_member_sending_oversized_answers_is_banned() {
    // One request at a time, so the three kinds of oversized answer come in turn.
    let f = run(Misbehaviour::Oversized, 1, Duration::from_secs(10));
    report(Misbehaviour::Oversized, &f);
    let r = ban_reasons(&f);
    assert!(r[0].contains("response of 67108864 bytes is over the"), "{r:?}");
    assert!(r[1].contains("response refused: chunk reply is 262145 bytes"), "{r:?}");
    assert!(r[2].contains("response refused: chunk reply list is 17") || r[2].contains("reply count does not match"), "{r:?}");
    // Refused at its header: the member could push only what the stream's window let through.
    let over = f.answers.iter().find(|w| w.n == 0).expect("the first answer");
    assert!(over.bytes < 32 << 20, "{over:?}");
}

#[test]
fn bad_member_sending_an_endless_stream_is_banned() {
    let f = run(Misbehaviour::Endless, 1, Duration::from_secs(10));
    report(Misbehaviour::Endless, &f);
    // A header over the bound is refused before a byte of the body is read; a header at the
    // bound is read to the bound, then the answer does not decode. Either way it ends.
    let r = ban_reasons(&f);
    assert!(r[0].contains("response of 4294967295 bytes is over the"), "{r:?}");
    assert!(r[1].starts_with("response refused: malformed response"), "{r:?}");
    assert!(r[2].starts_with("response refused: malformed response"), "{r:?}");
    for w in &f.answers {
        assert!(w.bytes < (MAX_RESPONSE as u64) + (32 << 20), "an endless answer was not cut: {w:?}");
    }
}

#[test]
fn bad_member_trickling_is_cut_and_banned() {
    // A ban takes three stall episodes, one grace apart (stalls in flight together count once).
    let f = run(Misbehaviour::Trickle, 8, GRACE * 3 + Duration::from_secs(15));
    report(Misbehaviour::Trickle, &f);
    // Every trickle was cut once its grace was over, as the device measured it (from the
    // answer's first byte); a loaded host may only make it later.
    let cuts: Vec<f64> = f.faults.iter().filter_map(|r| stall_secs(r)).collect();
    assert!(cuts.len() >= 3 && cuts.len() == f.faults.len(), "{:?}", f.faults);
    for t in cuts {
        assert!(t >= GRACE.as_secs_f64() && t < GRACE.as_secs_f64() + 5.0, "a trickle was cut {t} s after its first byte");
    }
}
