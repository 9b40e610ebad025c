//! Lanes between real sockets on 127.0.0.1: who is served, who is trusted, and that a metered
//! link is refused.

use super::client::{self, Dial, Job};
use super::server::{Access, Serving};
use super::tls::Identity;
use super::{Event, frame::Failure};
use crate::event_loop::Done;
use crate::traffic::Classifier;
use layerhop_protocol::ChunkId;
use layerhop_protocol::wire::ChunkReply;
use layerhop_store::Store;
use libp2p::{PeerId, identity::Keypair};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

struct Server {
    addr: SocketAddr,
    peer: PeerId,
    access: Arc<Access>,
    data: Vec<u8>,
    id: ChunkId,
    _dir: tempfile::TempDir,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(dir.path()).expect("store");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let id = ChunkId::of(&data);
    store.put(&id, &data).expect("put");
    let key = Keypair::generate_ed25519();
    let access = Arc::new(Access::default());
    let serving = Serving {
        identity: Arc::new(Identity::new(&key).expect("identity")),
        store: Arc::new(store),
        classifier: Classifier::new(false, &[], &[]),
        access: access.clone(),
        served: Default::default(),
        incompressible: Default::default(),
    };
    let port = super::start(&["/ip4/127.0.0.1/tcp/0".parse().expect("addr")], serving).await.expect("listen");
    Server { addr: SocketAddr::from(([127, 0, 0, 1], port)), peer: key.public().to_peer_id(), access, data, id, _dir: dir }
}

/// A lane to `peer` at `addr` as `key` (closing after `idle` with nothing asked), and its events.
fn lane(key: &Keypair, addr: SocketAddr, peer: PeerId, classifier: Arc<Classifier>, generation: u64, idle: Duration) -> (client::Client, mpsc::Receiver<Done>) {
    lane_as(Identity::new(key).expect("identity"), addr, peer, classifier, generation, idle)
}

/// [`lane`] with the asking side's identity made by the caller.
fn lane_as(identity: Identity, addr: SocketAddr, peer: PeerId, classifier: Arc<Classifier>, generation: u64, idle: Duration) -> (client::Client, mpsc::Receiver<Done>) {
    let (tx, rx) = mpsc::channel(16);
    (client::spawn(Dial { peer, addr, generation, identity: Arc::new(identity), classifier, timeout: Duration::from_secs(10), idle }, tx), rx)
}

/// The lane's next event after its handshake.
async fn next(rx: &mut mpsc::Receiver<Done>) -> Event {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
            Ok(Some(Done::Lane(Event::Opened { .. }))) => continue,
            Ok(Some(Done::Lane(e))) => return e,
            Ok(_) => panic!("no lane event"),
            Err(_) => panic!("no lane event within 20 s"),
        }
    }
}

/// Ask `ids` of the server at `addr` as `key`, expecting `peer` there; the first event back
/// after the handshake.
async fn ask(key: &Keypair, addr: SocketAddr, peer: PeerId, classifier: Arc<Classifier>, ids: Vec<ChunkId>) -> Event {
    let (c, mut rx) = lane(key, addr, peer, classifier, 1, client::IDLE);
    assert!(c.send(Job { req: 7, ids }));
    next(&mut rx).await
}

/// A new peer the server `s` serves.
fn member(s: &Server) -> Keypair {
    let me = Keypair::generate_ed25519();
    s.access.allow(me.public().to_peer_id());
    me
}

fn lan() -> Arc<Classifier> {
    Classifier::new(false, &[], &[])
}

#[tokio::test]
async fn a_member_gets_verified_chunks_and_missing_ones_are_said() {
    let s = server().await;
    let me = member(&s);
    let missing = ChunkId::of(b"not held");
    let before = std::time::Instant::now();
    match ask(&me, s.addr, s.peer, lan(), vec![s.id, missing]).await {
        Event::Answer { peer, req, replies } => {
            assert_eq!((peer, req), (s.peer, 7));
            assert_eq!(replies.len(), 2);
            let got = crate::codec::decompress(replies[0].clone()).expect("a chunk").expect("decodes");
            assert_eq!(got, s.data);
            assert_eq!(replies[1], ChunkReply::Missing);
        }
        other => panic!("{other:?}"),
    }
    // The member asked: the event loop hears of it (and counts it as heard from), once.
    let asked = s.access.take_asked();
    assert!(asked.get(&me.public().to_peer_id()).is_some_and(|at| *at >= before), "{asked:?}");
    assert_eq!(asked.len(), 1);
    assert!(s.access.take_asked().is_empty());
}

#[tokio::test]
async fn a_member_without_aes_instructions_is_served_over_chacha20() {
    // Such a client and this server agree on `layerhop-lane/2` and ChaCha20-Poly1305
    // (`tls::tests`); the lane's own records then use it. (The other tests' lanes, between ends
    // of this host, use AEGIS-128X2 where it has AES instructions.)
    let s = server().await;
    let me = member(&s);
    let (c, mut rx) = lane_as(Identity::with_aes(&me, false).expect("identity"), s.addr, s.peer, lan(), 1, client::IDLE);
    assert!(c.send(Job { req: 7, ids: vec![s.id] }));
    match next(&mut rx).await {
        Event::Answer { replies, .. } => assert_eq!(crate::codec::decompress(replies[0].clone()).expect("a chunk").expect("decodes"), s.data),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn requests_sent_together_are_answered_in_order() {
    let s = server().await;
    let me = member(&s);
    let missing = ChunkId::of(b"not held");
    let (c, mut rx) = lane(&me, s.addr, s.peer, lan(), 1, client::IDLE);
    // Alternating answers, so one out of order or lost shows.
    let asks: Vec<Vec<ChunkId>> = (0..8).map(|i| if i % 2 == 0 { vec![s.id, missing] } else { vec![missing] }).collect();
    for (req, ids) in asks.iter().enumerate() {
        assert!(c.send(Job { req: req as u64, ids: ids.clone() }));
    }
    for (want, ids) in asks.iter().enumerate() {
        match next(&mut rx).await {
            Event::Answer { req, replies, .. } => {
                assert_eq!(req, want as u64, "answers out of order");
                assert_eq!(replies.len(), ids.len());
                if ids.len() == 2 {
                    assert_eq!(crate::codec::decompress(replies[0].clone()).expect("a chunk").expect("decodes"), s.data);
                }
                assert_eq!(replies.last(), Some(&ChunkReply::Missing));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_peer_not_allowed_is_not_served() {
    let s = server().await;
    let stranger = Keypair::generate_ed25519();
    match ask(&stranger, s.addr, s.peer, lan(), vec![s.id]).await {
        Event::Closed { why: Failure::Lost(_), .. } => {}
        other => panic!("a stranger was answered: {other:?}"),
    }
    assert!(s.access.take_asked().is_empty(), "a stranger's request counted as a member heard from");
}

#[tokio::test]
async fn a_server_that_is_not_the_expected_peer_is_refused() {
    let s = server().await;
    let me = member(&s);
    let someone_else = Keypair::generate_ed25519().public().to_peer_id();
    match ask(&me, s.addr, someone_else, lan(), vec![s.id]).await {
        Event::Closed { why: Failure::Lost(why), .. } => assert!(why.contains("TLS handshake"), "{why}"),
        other => panic!("an impostor was trusted: {other:?}"),
    }
}

#[tokio::test]
async fn a_lane_over_a_metered_link_is_not_opened() {
    let s = server().await;
    let me = member(&s);
    // The server's address is a seed address to this classifier: the link is metered.
    let metered = Classifier::new(false, &[format!("/ip4/127.0.0.1/tcp/{}", s.addr.port()).parse().expect("addr")], &[]);
    match ask(&me, s.addr, s.peer, metered.clone(), vec![s.id]).await {
        Event::Closed { why: Failure::Lost(why), .. } => assert!(why.contains("metered"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(metered.counters.totals().metered_out, 0, "nothing was sent on the metered link");
}

#[tokio::test]
async fn an_idle_lane_closes_itself_without_blame() {
    let s = server().await;
    let me = member(&s);
    let (c, mut rx) = lane(&me, s.addr, s.peer, lan(), 3, client::IDLE);
    assert!(c.send(Job { req: 1, ids: vec![s.id] }));
    let mut events = Vec::new();
    while let Ok(Some(Done::Lane(e))) = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
        let closed = matches!(e, Event::Closed { .. });
        events.push(e);
        if closed {
            break;
        }
    }
    assert!(matches!(events.as_slice(), [Event::Opened { generation: 3, .. }, Event::Answer { req: 1, .. }, Event::Closed { generation: 3, why: Failure::Idle, .. }]), "{events:?}");
}

/// Open a lane to `s` as `me` that stays open for the whole test, and ask for its chunk: the
/// lane's handle, its events, and the first event after the handshake.
async fn open(s: &Server, me: &Keypair, generation: u64) -> (client::Client, mpsc::Receiver<Done>, Event) {
    let (c, mut rx) = lane(me, s.addr, s.peer, lan(), generation, Duration::from_secs(600));
    assert!(c.send(Job { req: generation, ids: vec![s.id] }));
    let e = next(&mut rx).await;
    (c, rx, e)
}

#[tokio::test]
async fn a_peer_gets_two_lanes_at_once_not_three() {
    let s = server().await;
    let me = member(&s);
    let (first, mut first_events, e1) = open(&s, &me, 1).await;
    let (_second, _second_events, e2) = open(&s, &me, 2).await;
    assert!(matches!((&e1, &e2), (Event::Answer { .. }, Event::Answer { .. })), "{e1:?} {e2:?}");
    let (_, _, e3) = open(&s, &me, 3).await;
    assert!(matches!(e3, Event::Closed { why: Failure::Lost(_), .. }), "a third lane was served: {e3:?}");
    // Once one closes, a new one is served.
    drop(first);
    while !matches!(first_events.recv().await, Some(Done::Lane(Event::Closed { .. })) | None) {}
    // The server notices the close when it reads the end of the stream: poll with a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut g = 4;
    loop {
        if let (_, _, Event::Answer { .. }) = open(&s, &me, g).await {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no lane was served after one closed");
        g += 1;
    }
}

/// A raw TLS connection to the server `s` as `me`, offering `alpn`.
async fn handshake(s: &Server, me: &Keypair, alpn: &[u8]) -> std::io::Result<futures_rustls::client::TlsStream<libp2p::tcp::tokio::TcpStream>> {
    let mut config = (*Identity::new(me).expect("identity").client(s.peer).expect("config")).clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(s.addr).await?;
    let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into());
    futures_rustls::TlsConnector::from(Arc::new(config)).connect(name, libp2p::tcp::tokio::TcpStream(tcp)).await
}

#[tokio::test]
async fn a_lane_of_another_version_is_refused_at_its_handshake() {
    let s = server().await;
    let me = member(&s);
    let refused = handshake(&s, &me, b"layerhop-lane/1").await;
    assert!(refused.is_err(), "a client of the lane's first version shook hands");
    // The same member speaking this version is served.
    handshake(&s, &me, super::tls::ALPN).await.expect("this version's handshake");
}

#[tokio::test]
async fn a_member_whose_records_do_not_open_is_let_go_and_others_are_still_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = server().await;
    let me = member(&s);
    let (io, _) = handshake(&s, &me, super::tls::ALPN).await.expect("handshake").into_inner();
    let mut tcp = io.0;
    // A well-formed head of a request for one chunk, then bytes not sealed by the lane's key.
    let mut forged = vec![3, 32, 0, 0, 0];
    forged.extend_from_slice(&[0x5a; 32 + 16]);
    tcp.write_all(&forged).await.expect("write");
    // The server closes the lane: its `ready` record, then the end of the stream.
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut got)).await.expect("the lane was not closed").expect("read");
    assert_eq!(got.len(), super::record::HEAD + super::record::TAG, "only `ready` came back: {got:?}");
    assert!(matches!(ask(&me, s.addr, s.peer, lan(), vec![s.id]).await, Event::Answer { .. }), "the member was not served afterwards");
}
