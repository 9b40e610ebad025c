//! Link accounting: every byte on every connection, counted on the raw TCP stream.
//!
//! The counters sit under noise and yamux, so they include handshakes, framing, encryption
//! overhead and control messages — what the link really carries (TCP/IP headers aside). Each
//! connection is classed when it is opened: on a seed every link is metered (the seed is in
//! the cloud); on a device, a link is metered when it goes to one of the seed's addresses or
//! when its local address belongs to an interface the config names as metered (`wwan0`,
//! `ppp0`), and LAN otherwise.

use futures::{AsyncRead, AsyncWrite};
use libp2p::Multiaddr;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use serde::Serialize;
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
    decided: std::sync::Mutex<std::collections::HashMap<SocketAddr, LinkClass>>,
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
            counters: Counters::default(),
        })
    }

    fn on_metered_interface(&self, local: IpAddr) -> bool {
        if self.metered_interfaces.is_empty() {
            return false;
        }
        if_addrs::get_if_addrs()
            .map(|ifs| ifs.iter().any(|i| i.ip() == local && self.metered_interfaces.iter().any(|m| *m == i.name)))
            .unwrap_or(false)
    }

    fn remote_of(endpoint: &ConnectedPoint) -> Option<SocketAddr> {
        socket_addr(match endpoint {
            ConnectedPoint::Dialer { address, .. } => address,
            ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr,
        })
    }

    /// Decide the class of a new TCP connection from its endpoint and local address.
    pub fn decide(&self, endpoint: &ConnectedPoint, local: Option<SocketAddr>) -> LinkClass {
        let remote = Self::remote_of(endpoint);
        let class = if self.all_metered
            || remote.is_some_and(|r| self.seed_addrs.contains(&r))
            || local.is_some_and(|l| self.on_metered_interface(l.ip()))
        {
            LinkClass::Metered
        } else {
            LinkClass::Lan
        };
        if let (Some(r), Ok(mut d)) = (remote, self.decided.lock()) {
            if d.len() > 4096 {
                d.clear();
            }
            d.insert(r, class);
        }
        class
    }

    /// The class decided for a connection to or from `endpoint`.
    pub fn class_of(&self, endpoint: &ConnectedPoint) -> LinkClass {
        let remote = Self::remote_of(endpoint);
        if let (Some(r), Ok(d)) = (remote, self.decided.lock())
            && let Some(c) = d.get(&r)
        {
            return *c;
        }
        if self.all_metered || remote.is_some_and(|r| self.seed_addrs.contains(&r)) { LinkClass::Metered } else { LinkClass::Lan }
    }
}

/// A stream that adds every byte it moves to the counters of its class.
pub struct Counted<S> {
    inner: S,
    class: LinkClass,
    classifier: Arc<Classifier>,
}

impl<S> Counted<S> {
    /// Count `inner` as a link of `class`.
    pub fn new(inner: S, class: LinkClass, classifier: Arc<Classifier>) -> Self {
        Counted { inner, class, classifier }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.classifier.counters.add(self.class, true, *n);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.classifier.counters.add(self.class, false, *n);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}
