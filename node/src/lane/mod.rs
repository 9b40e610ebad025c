//! Lanes: site peers move chunks to each other on a TCP connection of their own, beside the
//! libp2p one.
//!
//! Why: a device that takes a release from a site peer is bound by CPU, not by the LAN. On the
//! libp2p connection every chunk crosses noise (ChaCha20-Poly1305 only), yamux framing, a
//! request-response stream opened and negotiated per batch, and the swarm's event loop; in the
//! LAN bench (`bench_lan`, 1 GiB between two nodes on one 2-core host) that path used 4.5-4.7 s
//! of CPU per GiB (both nodes), ChaCha20-Poly1305 alone ~0.85 s of it, and moved the release at
//! 0.36-0.40 of the speed of a plain TCP copy; on a lane, 3.2-3.6 s and 0.55-0.65. A lane
//! carries only chunk requests and answers ([`frame`]), pipelined on one connection, read and
//! written by a task of its own off the event loop: a TLS 1.3 handshake ([`tls`]), then records
//! of its own under the keys TLS derived, one per message, so that a chunk is neither copied
//! nor zeroed on its way from the socket to the store ([`record`]).
//!
//! What stays as on the exchange protocol: who may ask (site members over a LAN link, see
//! [`server`]), that a metered link is never used (a lane is opened only to a member whose
//! libp2p connection is LAN, to the address that connection reached, and both ends class the
//! lane's own addresses again and refuse a metered one), that every byte is counted
//! ([`crate::traffic`]), that answers are bounded and paced and a provable fault is struck, and
//! that every chunk is verified before it is stored (answers go the same way as the exchange
//! protocol's, `EventLoop::on_chunks`). A peer learns a member's lane port by asking
//! ([`layerhop_protocol::wire::Request::Lane`]); a member that has no lane (an older build, or
//! `bulk_lane = false`) is asked on the exchange protocol, and so is one whose lane failed, for
//! [`RETRY_AFTER`]. A lane is opened only for a transfer of some size, and used once its
//! handshake is done (see `EventLoop::lane_send`).

pub(crate) mod client;
pub(crate) mod frame;
pub(crate) mod record;
pub(crate) mod server;
pub(crate) mod tls;

use crate::event_loop::{EventLoop, Pending};
use layerhop_protocol::wire::{ChunkReply, Request};
use libp2p::PeerId;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// After a lane to a peer failed, the peer is asked on the exchange protocol this long.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(10);

/// What a lane's task reports to the event loop.
#[derive(Debug)]
pub(crate) enum Event {
    /// The lane's handshake is done: batches may go to it.
    Opened { peer: PeerId, generation: u64 },
    /// The answer to batch `req`.
    Answer { peer: PeerId, req: u64, replies: Vec<ChunkReply> },
    /// The lane closed (or never opened); its unanswered batches are to be asked again.
    Closed { peer: PeerId, generation: u64, why: frame::Failure },
}

/// The event loop's lanes: its own listener's port, and the lanes it opened.
pub(crate) struct Lanes {
    pub(crate) identity: Arc<tls::Identity>,
    pub(crate) port: u16,
    pub(crate) access: Arc<server::Access>,
    /// Answers received on lanes (for status).
    pub(crate) answers: u64,
    clients: HashMap<PeerId, client::Client>,
    /// Lane ports members told, and the address each member's connection reached.
    ports: HashMap<PeerId, u16>,
    ips: HashMap<PeerId, IpAddr>,
    /// Batches sent on a lane and not answered: (peer, lane generation, what was asked).
    pending: HashMap<u64, (PeerId, u64, Pending)>,
    next_req: u64,
    next_generation: u64,
    /// Peers whose lane failed, until when they are asked on the exchange protocol.
    resting: HashMap<PeerId, Instant>,
    /// Batches sent to each peer over libp2p since its last lane closed (see `lane_send`).
    asked: HashMap<PeerId, usize>,
}

impl Lanes {
    pub(crate) fn new(identity: Arc<tls::Identity>, port: u16, access: Arc<server::Access>) -> Lanes {
        Lanes {
            identity,
            port,
            access,
            answers: 0,
            clients: HashMap::new(),
            ports: HashMap::new(),
            ips: HashMap::new(),
            pending: HashMap::new(),
            next_req: 0,
            next_generation: 0,
            resting: HashMap::new(),
            asked: HashMap::new(),
        }
    }

    /// A connection to `peer` reached `ip` (the first one counts).
    pub(crate) fn connected(&mut self, peer: PeerId, ip: IpAddr) {
        self.ips.entry(peer).or_insert(ip);
    }

    /// `peer` is gone (disconnected or banned): no lane to or from it.
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.access.deny(peer);
        self.clients.remove(peer);
        self.ports.remove(peer);
        self.ips.remove(peer);
        self.resting.remove(peer);
        self.asked.remove(peer);
    }
}

impl EventLoop {
    /// A site member joined over the LAN: it may open lanes here.
    pub(crate) fn lane_member(&mut self, peer: PeerId) {
        if let Some(l) = &self.lanes {
            l.access.allow(peer);
        }
    }

    /// Members that asked for chunks on their lanes since the last step are heard from.
    pub(crate) fn lane_requests_heard(&mut self) {
        if let Some(l) = &self.lanes {
            for (p, at) in l.access.take_asked() {
                self.site.heard_at(&p, at);
            }
        }
    }

    /// Both ends took each other as members (so the peer answers): ask for its lane's port.
    pub(crate) fn lane_ask(&mut self, peer: PeerId) {
        if self.lanes.is_some() {
            self.send(&peer, Request::Lane, Pending::Other);
        }
    }

    /// A member told its lane's port.
    pub(crate) fn lane_port(&mut self, peer: PeerId, port: u16) {
        if let Some(l) = &mut self.lanes
            && self.site.is_member(&peer)
        {
            l.ports.insert(peer, port);
        }
    }

    /// Send a batch to `peer` on its lane if it has one open; gives the batch back if not.
    ///
    /// A lane is opened once `peer` has been sent a window's worth of batches
    /// (`parallel_requests`) since its last lane closed: a transfer that small ends about as
    /// soon on the libp2p connection as a handshake would, and a site of 50 moving a small
    /// release would otherwise open a lane between every two members. Batches keep going over
    /// libp2p until the lane's handshake is done, so a slow or failing lane delays nothing.
    // The `Err` is the caller's own batch handed back to send another way, not an error that
    // travels: boxing it would cost an allocation per batch for nothing.
    #[allow(clippy::result_large_err)]
    pub(crate) fn lane_send(&mut self, peer: PeerId, pending: Pending) -> Result<(), Pending> {
        let Some(l) = &mut self.lanes else { return Err(pending) };
        let (Some(port), Some(ip)) = (l.ports.get(&peer), l.ips.get(&peer)) else { return Err(pending) };
        if l.resting.get(&peer).is_some_and(|t| Instant::now() < *t) {
            return Err(pending);
        }
        let Pending::Chunks { ids, .. } = &pending else { return Err(pending) };
        let Some(c) = l.clients.get(&peer) else {
            let asked = l.asked.entry(peer).or_default();
            *asked += 1;
            if *asked >= self.cfg.parallel_requests {
                l.asked.remove(&peer);
                l.next_generation += 1;
                let dial = client::Dial {
                    peer,
                    addr: SocketAddr::new(*ip, *port),
                    generation: l.next_generation,
                    identity: l.identity.clone(),
                    classifier: self.classifier.clone(),
                    timeout: self.cfg.request_timeout,
                    idle: client::IDLE,
                };
                l.clients.insert(peer, client::spawn(dial, self.done_tx.clone()));
            }
            return Err(pending);
        };
        if !c.open {
            return Err(pending);
        }
        let req = l.next_req;
        l.next_req += 1;
        if !c.send(client::Job { req, ids: ids.clone() }) {
            l.clients.remove(&peer);
            return Err(pending);
        }
        l.pending.insert(req, (peer, c.generation, pending));
        Ok(())
    }

    /// An event of a lane's task.
    pub(crate) fn on_lane(&mut self, e: Event) {
        let Some(l) = &mut self.lanes else { return };
        match e {
            Event::Opened { peer, generation } => {
                if let Some(c) = l.clients.get_mut(&peer).filter(|c| c.generation == generation) {
                    c.open = true;
                }
            }
            Event::Answer { peer, req, replies } => {
                let Some((_, _, Pending::Chunks { channel, ids, source })) = l.pending.remove(&req) else { return };
                l.answers += 1;
                self.site.heard(&peer);
                self.request_done(source);
                self.on_chunks(channel, ids, replies, source);
            }
            Event::Closed { peer, generation, why } => {
                if l.clients.get(&peer).is_some_and(|c| c.generation == generation) {
                    l.clients.remove(&peer);
                }
                let lost: Vec<u64> = l.pending.iter().filter(|(_, (p, g, _))| *p == peer && *g == generation).map(|(r, _)| *r).collect();
                let fault = match why {
                    frame::Failure::Fault(f) => Some(f),
                    frame::Failure::Idle => None,
                    frame::Failure::Lost(why) => {
                        // Failed to open, or broke: the exchange carries this peer's batches
                        // for a while (a blocked port costs one attempt per rest, not one per
                        // window of batches).
                        if l.ports.contains_key(&peer) {
                            l.resting.insert(peer, Instant::now() + RETRY_AFTER);
                        }
                        if lost.is_empty() {
                            tracing::debug!(%peer, %why, "lane failed");
                        } else {
                            tracing::info!(%peer, %why, batches = lost.len(), "lane lost; its chunks are asked again");
                        }
                        None
                    }
                };
                let mut retry = Vec::new();
                for r in lost {
                    if let Some((_, _, Pending::Chunks { channel, ids, source })) = l.pending.remove(&r) {
                        retry.push((channel, ids, source));
                    }
                }
                if let Some(f) = &fault {
                    self.judge_fault(peer, f);
                }
                for (channel, ids, source) in retry {
                    self.request_done(source);
                    // A member at fault is not asked for these chunks again.
                    let lacked = fault.is_some().then_some(source);
                    if let Some(f) = self.fetches.get_mut(&channel) {
                        for id in &ids {
                            f.retry(id, lacked);
                        }
                    }
                }
            }
        }
        self.pump_due = true;
    }
}

/// Bind this node's lane listener on the address of its first listen address (port chosen by
/// the system) and start serving.
pub(crate) async fn start(listen: &[libp2p::Multiaddr], s: server::Serving) -> std::io::Result<u16> {
    let ip = listen.iter().find_map(crate::traffic::socket_addr).map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0)).await?;
    let port = listener.local_addr()?.port();
    server::spawn(listener, s);
    Ok(port)
}

#[cfg(test)]
mod tests;
