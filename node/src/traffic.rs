//! Link accounting: every byte on every connection, counted on the raw TCP stream.
//!
//! The counters sit under noise and yamux, so they include handshakes, framing, encryption
//! overhead and control messages — what the link really carries (TCP/IP headers aside). Each
//! connection is classed when it is opened: on a seed every link is metered (the seed is in
//! the cloud); on a device, a link is metered when it goes to one of the seed's addresses or
//! when its local address belongs to an interface the config names as metered (`wwan0`,
//! `ppp0`), and LAN otherwise.
//!
//! Each connection also has its own [`LinkBytes`], bound to the peer once the connection is
//! established ([`Classifier::connected`]), so a seed can tell what each device — and so each
//! site — cost on the metered link ([`Classifier::peer_totals`]). Bytes of a connection before
//! its handshake completed are in its `LinkBytes` too: nothing on the wire goes uncounted.

use futures::{AsyncRead, AsyncWrite};
use libp2p::Multiaddr;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use serde::Serialize;
use libp2p::PeerId;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

/// Which kind of link a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkClass {
    /// The cellular uplink: what the fleet pays for.
    Metered,
    /// The site's LAN or WiFi.
    Lan,
}

/// Byte counters by class and direction.
#[derive(Debug, Default)]
pub struct Counters {
    metered_in: AtomicU64,
    metered_out: AtomicU64,
    lan_in: AtomicU64,
    lan_out: AtomicU64,
}

/// A snapshot of [`Counters`], as `status --json` prints it.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Totals {
    /// Bytes received over metered links.
    pub metered_in: u64,
    /// Bytes sent over metered links.
    pub metered_out: u64,
    /// Bytes received over LAN links.
    pub lan_in: u64,
    /// Bytes sent over LAN links.
    pub lan_out: u64,
}

/// The bytes of one connection, both directions.
#[derive(Debug, Default)]
pub struct LinkBytes {
    inbound: AtomicU64,
    outbound: AtomicU64,
}

impl LinkBytes {
    fn add(&self, inbound: bool, n: usize) {
        let c = if inbound { &self.inbound } else { &self.outbound };
        c.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn read(&self) -> (u64, u64) {
        (self.inbound.load(Ordering::Relaxed), self.outbound.load(Ordering::Relaxed))
    }
}

/// What a peer's connections moved, seen from this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerBytes {
    /// The class of its most recent connection.
    pub class: Option<LinkClass>,
    /// Bytes received from it.
    pub received: u64,
    /// Bytes sent to it.
    pub sent: u64,
}

/// Per-peer books: the live connections' counters, and what closed ones moved.
#[derive(Debug, Default)]
struct PeerBook {
    class: Option<LinkClass>,
    live: Vec<Arc<LinkBytes>>,
    closed: (u64, u64),
}

impl PeerBook {
    /// Count `link` in this book, folding connections that are gone (only this book holds
    /// them) into `closed` first: lanes open and close many times over a peer's connection.
    fn add(&mut self, link: Arc<LinkBytes>) {
        let closed = &mut self.closed;
        self.live.retain(|l| {
            if Arc::strong_count(l) > 1 {
                return true;
            }
            let (i, o) = l.read();
            closed.0 += i;
            closed.1 += o;
            false
        });
        self.live.push(link);
    }
}

/// Peers whose books are kept; past this the quietest (no live connection) are forgotten.
const MAX_PEER_BOOKS: usize = 100_000;

impl Counters {
    fn add(&self, class: LinkClass, inbound: bool, n: usize) {
        let c = match (class, inbound) {
            (LinkClass::Metered, true) => &self.metered_in,
            (LinkClass::Metered, false) => &self.metered_out,
            (LinkClass::Lan, true) => &self.lan_in,
            (LinkClass::Lan, false) => &self.lan_out,
        };
        c.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Read the counters.
    pub fn totals(&self) -> Totals {
        Totals {
            metered_in: self.metered_in.load(Ordering::Relaxed),
            metered_out: self.metered_out.load(Ordering::Relaxed),
            lan_in: self.lan_in.load(Ordering::Relaxed),
            lan_out: self.lan_out.load(Ordering::Relaxed),
        }
    }
}

/// Decides a connection's class and owns the counters.
#[derive(Debug)]
pub struct Classifier {
    all_metered: bool,
    seed_addrs: Vec<SocketAddr>,
    metered_interfaces: Vec<String>,
    /// Class decided for each remote socket address at connection time, so the swarm's
    /// connection events agree with the byte counters.
    decided: std::sync::Mutex<HashMap<SocketAddr, LinkClass>>,
    /// Connections not yet bound to a peer, by remote socket address.
    unbound: std::sync::Mutex<HashMap<SocketAddr, Arc<LinkBytes>>>,
    /// Per-peer books.
    peers: std::sync::Mutex<HashMap<PeerId, PeerBook>>,
    /// The counters every connection adds to.
    pub counters: Counters,
}

/// The IP and TCP port of a multiaddr, if it has them.
pub fn socket_addr(a: &Multiaddr) -> Option<SocketAddr> {
    let mut ip: Option<IpAddr> = None;
    for p in a.iter() {
        match p {
            Protocol::Ip4(v) => ip = Some(v.into()),
            Protocol::Ip6(v) => ip = Some(v.into()),
            Protocol::Tcp(port) => return ip.map(|ip| SocketAddr::new(ip, port)),
            _ => {}
        }
    }
    None
}

impl Classifier {
    /// A seed classes every link as metered; a device classes links to `seed_addrs` and links
    /// leaving through `metered_interfaces` as metered.
    pub fn new(all_metered: bool, seed_addrs: &[Multiaddr], metered_interfaces: &[String]) -> Arc<Self> {
        Arc::new(Classifier {
            all_metered,
            seed_addrs: seed_addrs.iter().filter_map(socket_addr).collect(),
            metered_interfaces: metered_interfaces.to_vec(),
            decided: Default::default(),
            unbound: Default::default(),
            peers: Default::default(),
            counters: Counters::default(),
        })
    }

    fn on_metered_interface(&self, local: IpAddr) -> bool {
        if self.metered_interfaces.is_empty() {
            return false;
        }
        if_addrs::get_if_addrs()
            .map(|ifs| ifs.iter().any(|i| i.ip() == local && self.metered_interfaces.contains(&i.name)))
            .unwrap_or(false)
    }

    fn remote_of(endpoint: &ConnectedPoint) -> Option<SocketAddr> {
        socket_addr(match endpoint {
            ConnectedPoint::Dialer { address, .. } => address,
            ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr,
        })
    }

    /// The rule: every link of a seed, a link to a seed address, and one leaving through a
    /// metered interface are metered; the rest is LAN.
    fn class_for(&self, remote: Option<SocketAddr>, local: Option<SocketAddr>) -> LinkClass {
        if self.all_metered || remote.is_some_and(|r| self.seed_addrs.contains(&r)) || local.is_some_and(|l| self.on_metered_interface(l.ip())) {
            LinkClass::Metered
        } else {
            LinkClass::Lan
        }
    }

    /// Decide the class of a new TCP connection from its endpoint and local address, and open
    /// its per-connection counters (bound to a peer by [`Classifier::connected`]).
    pub fn decide(&self, endpoint: &ConnectedPoint, local: Option<SocketAddr>) -> (LinkClass, Arc<LinkBytes>) {
        let remote = Self::remote_of(endpoint);
        let class = self.class_for(remote, local);
        if let (Some(r), Ok(mut d)) = (remote, self.decided.lock()) {
            if d.len() > 4096 {
                d.clear();
            }
            d.insert(r, class);
        }
        let link = Arc::new(LinkBytes::default());
        if let (Some(r), Ok(mut u)) = (remote, self.unbound.lock()) {
            // Connections that died before their handshake completed hold the only other
            // reference: drop them.
            if u.len() > 256 {
                u.retain(|_, l| Arc::strong_count(l) > 1);
            }
            u.insert(r, link.clone());
        }
        (class, link)
    }

    /// A connection to `peer` is established: its class (as [`Classifier::class_of`]), and its
    /// bytes from now on (and since it was opened) count towards `peer`. Two dials to the same
    /// remote address at once cannot be told apart; then one of them stays unattributed.
    pub fn connected(&self, endpoint: &ConnectedPoint, peer: PeerId) -> LinkClass {
        let class = self.class_of(endpoint);
        let link = Self::remote_of(endpoint).and_then(|r| self.unbound.lock().ok()?.remove(&r));
        if let Ok(mut peers) = self.peers.lock() {
            if peers.len() >= MAX_PEER_BOOKS && !peers.contains_key(&peer) {
                peers.retain(|_, b| !b.live.is_empty());
            }
            let book = peers.entry(peer).or_default();
            book.class = Some(class);
            if let Some(link) = link {
                book.add(link);
            }
        }
        class
    }

    /// Class a lane connection (see [`crate::lane`]) between `local` and `remote` by the same
    /// rules as the swarm's connections, and open its counters (bound to a peer by
    /// [`Classifier::bind`] once its handshake proved who it is). The lane refuses a metered one.
    pub fn lane(&self, remote: SocketAddr, local: SocketAddr) -> (LinkClass, Arc<LinkBytes>) {
        (self.class_for(Some(remote), Some(local)), Arc::new(LinkBytes::default()))
    }

    /// From now on (and since it was opened), `link` counts towards `peer`.
    pub fn bind(&self, peer: PeerId, class: LinkClass, link: &Arc<LinkBytes>) {
        if let Ok(mut peers) = self.peers.lock() {
            let book = peers.entry(peer).or_default();
            book.class.get_or_insert(class);
            book.add(link.clone());
        }
    }

    /// What each peer's connections moved since this node started.
    pub fn peer_totals(&self) -> HashMap<PeerId, PeerBytes> {
        let Ok(peers) = self.peers.lock() else { return HashMap::new() };
        peers
            .iter()
            .map(|(p, b)| {
                let (mut received, mut sent) = b.closed;
                for l in &b.live {
                    let (i, o) = l.read();
                    received += i;
                    sent += o;
                }
                (*p, PeerBytes { class: b.class, received, sent })
            })
            .collect()
    }

    /// The class decided for a connection to or from `endpoint`.
    pub fn class_of(&self, endpoint: &ConnectedPoint) -> LinkClass {
        let remote = Self::remote_of(endpoint);
        if let (Some(r), Ok(d)) = (remote, self.decided.lock())
            && let Some(c) = d.get(&r)
        {
            return *c;
        }
        self.class_for(remote, None)
    }
}

/// A stream that adds every byte it moves to the counters of its class.
pub struct Counted<S> {
    inner: S,
    class: LinkClass,
    link: Arc<LinkBytes>,
    classifier: Arc<Classifier>,
}

impl<S> Counted<S> {
    /// Count `inner` as a link of `class`, and in `link` (its per-connection counters).
    pub fn new(inner: S, class: LinkClass, link: Arc<LinkBytes>, classifier: Arc<Classifier>) -> Self {
        Counted { inner, class, link, classifier }
    }

    /// Two counted streams made of this one's halves (e.g. a TCP stream's read and write halves),
    /// counting where this one did.
    pub fn split<A, B>(self, halves: impl FnOnce(S) -> (A, B)) -> (Counted<A>, Counted<B>) {
        let (a, b) = halves(self.inner);
        let other = Counted { inner: b, class: self.class, link: self.link.clone(), classifier: self.classifier.clone() };
        (Counted { inner: a, class: self.class, link: self.link, classifier: self.classifier }, other)
    }

    /// Count what a read (`inbound`) or a write moved, if it moved anything.
    fn count(&self, inbound: bool, r: &Poll<std::io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = r {
            self.classifier.counters.add(self.class, inbound, *n);
            self.link.add(inbound, *n);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.count(true, &r);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count(false, &r);
        r
    }
    /// Forwarded, not left to the default (which writes the first buffer alone): TLS hands
    /// its records over as many buffers, and one `writev` of them is one system call.
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count(false, &r);
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// The same counting for tokio's streams, which may read into memory not yet written (a lane's
/// reader takes each chunk straight into the buffer it is kept in, see `lane::record`).
impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.count(true, &Poll::Ready(Ok(buf.filled().len() - before)));
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count(false, &r);
        r
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count(false, &r);
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
