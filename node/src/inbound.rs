//! Answering requests from other nodes.
//!
//! Who may ask what: a seed answers release listings from anyone (releases are signed and
//! public to the fleet) but serves chunks only to devices that presented a valid fleet
//! credential. A device serves chunks only to enrolled members of its own site reached over a
//! LAN link — never over a metered link, in either direction.

use crate::config::Role;
use crate::event_loop::{Done, Enrolled, EventLoop};
use crate::incompressible::Incompressible;
use crate::status::ServedCounters;
use crate::traffic::LinkClass;
use layerhop_protocol::ChunkId;
use layerhop_protocol::wire::{ChunkReply, Hello, PeerInfo, Request, Response};
use layerhop_store::Store;
use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId};

impl EventLoop {
    fn reply(&mut self, channel: ResponseChannel<Response>, r: Response) {
        let _ = self.swarm.behaviour_mut().exchange.send_response(channel, r);
    }

    fn refuse(&mut self, peer: PeerId, channel: ResponseChannel<Response>, why: &str) {
        tracing::warn!(%peer, reason = why, "request refused");
        self.refused_requests += 1;
        self.reply(channel, Response::Refused(why.into()));
    }

    pub(crate) fn on_request(&mut self, peer: PeerId, request: Request, channel: ResponseChannel<Response>) {
        match request {
            Request::Releases => {
                let releases = self.store.releases().unwrap_or_else(|e| {
                    tracing::error!(error = %e, "cannot list releases");
                    Vec::new()
                });
                self.reply(channel, Response::Releases(releases));
            }
            Request::Announce(signed) => {
                self.reply(channel, Response::Ack);
                self.consider_and_forward(signed, peer);
            }
            Request::Hello(hello) => self.on_hello(peer, hello, channel),
            Request::Trust(bundle) => {
                self.reply(channel, Response::Ack);
                self.on_trust(peer, bundle);
            }
            Request::Peers(list) => {
                self.reply(channel, Response::Ack);
                if Some(peer) == self.seed() {
                    self.on_peers(list);
                }
            }
            Request::State(state) => {
                if self.site.is_member(&peer) {
                    self.reply(channel, Response::Ack);
                    self.on_member_state(peer, state);
                } else {
                    self.refuse(peer, channel, "not a member of this site");
                }
            }
            Request::Holdings(list) => {
                let known = self.cfg.role == Role::Seed
                    && self.enrolled.contains_key(&peer)
                    && self.fleet.report(&peer, list, crate::accept::system_now());
                if known {
                    self.reply(channel, Response::Ack);
                } else {
                    self.refuse(peer, channel, "holdings are reported to the seed, by enrolled devices");
                }
            }
            Request::Lane => match &self.lanes {
                Some(l) if self.site.is_member(&peer) && self.peers.get(&peer) == Some(&LinkClass::Lan) => {
                    let port = l.port;
                    self.reply(channel, Response::Lane(port));
                }
                Some(_) => self.refuse(peer, channel, "lanes are for members of this site over the LAN"),
                // Not a refusal of the peer: this node has no lane (`bulk_lane = false`).
                None => self.reply(channel, Response::Refused("no lane here: chunks go over this connection".into())),
            },
            Request::Chunks(ids) => {
                let allowed = match self.cfg.role {
                    Role::Seed => self.enrolled.contains_key(&peer),
                    Role::Device => self.site.is_member(&peer) && self.peers.get(&peer) == Some(&LinkClass::Lan),
                };
                if !allowed {
                    let why = match self.cfg.role {
                        Role::Seed => "chunks are served to enrolled devices only",
                        Role::Device => "chunks are exchanged only with members of this site over a LAN link",
                    };
                    self.refuse(peer, channel, why);
                    return;
                }
                let store = self.store.clone();
                let done = self.done_tx.clone();
                let served = self.served.clone();
                let known = self.incompressible.clone();
                // The seed's answers cross the metered link: a bad one would be paid for again.
                let read = if self.cfg.role == Role::Seed { Read::Verified } else { Read::ForPeer };
                tokio::task::spawn_blocking(move || {
                    let replies = serve_chunks(&store, &ids, &served, &known, read);
                    let _ = done.blocking_send(Done::Serve { channel, response: Response::Chunks(replies) });
                });
            }
        }
    }

    fn on_hello(&mut self, peer: PeerId, hello: Hello, channel: ResponseChannel<Response>) {
        if Some(peer) == self.seed() {
            self.reply(channel, Response::Ack);
            return;
        }
        let Some(fleet) = self.fleet_key else {
            self.refuse(peer, channel, "this node cannot check credentials (no fleet key)");
            return;
        };
        let Some(cred) = hello.credential else {
            self.refuse(peer, channel, "no fleet credential");
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        };
        if let Err(e) = cred.verify(&fleet) {
            self.refuse(peer, channel, &format!("invalid fleet credential: {e}"));
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        if self.is_revoked(&peer, Some(&cred.device)) {
            tracing::warn!(%peer, token_id = %hex::encode(cred.device), "revoked device refused");
            self.refuse(peer, channel, "this device's credential is revoked");
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        self.peer_creds.insert(peer, cred.device);
        match self.cfg.role {
            Role::Seed => {
                let members: Vec<PeerInfo> = self
                    .enrolled
                    .iter()
                    .filter(|(_, e)| e.site == cred.site)
                    .filter(|(p, _)| **p != peer)
                    .map(|(p, e)| PeerInfo { peer: p.to_bytes(), listen_addrs: e.addrs.clone() })
                    .collect();
                let newcomer = PeerInfo { peer: peer.to_bytes(), listen_addrs: hello.listen_addrs.clone() };
                let others: Vec<PeerId> = members.iter().filter_map(|m| PeerId::from_bytes(&m.peer).ok()).collect();
                tracing::info!(%peer, site = %cred.site, "device enrolled");
                let enrolled = &self.enrolled;
                self.fleet.enrolled(peer, &cred.site, crate::accept::system_now(), |p| enrolled.contains_key(p));
                self.enrolled.insert(peer, Enrolled { site: cred.site, addrs: hello.listen_addrs, sharing: hello.site_sharing });
                self.reply(channel, Response::Peers(members));
                for o in others {
                    self.send(&o, Request::Peers(vec![newcomer.clone()]), crate::event_loop::Pending::Other);
                }
                self.send_trust(peer);
            }
            Role::Device => {
                if cred.site != self.cfg.site {
                    self.refuse(peer, channel, &format!("peer belongs to site {:?}, not {:?}", cred.site, self.cfg.site));
                    let _ = self.swarm.disconnect_peer_id(peer);
                    return;
                }
                if self.peers.get(&peer) != Some(&LinkClass::Lan) {
                    self.refuse(peer, channel, "site peers are reached over the LAN only; this link is metered");
                    return;
                }
                // Both ends must share: a peer that does not (a baseline device) fetches alone
                // and would never answer for the chunks a rendezvous gave it.
                if !self.cfg.site_sharing || !hello.site_sharing {
                    self.reply(channel, Response::Ack);
                    return;
                }
                let addrs: Vec<Multiaddr> = hello.listen_addrs.iter().filter_map(|a| a.parse().ok()).collect();
                let new = !self.site.is_member(&peer);
                self.site.join(peer, addrs, hello.channels);
                self.reply(channel, Response::Ack);
                if new {
                    tracing::info!(%peer, "site peer joined");
                    self.lane_member(peer);
                    // State goes out once both ends took each other as members; whichever of
                    // the two (this join, its ack of our hello) comes last sends it.
                    if self.hello_acked.contains(&peer) {
                        self.send_full_state(peer);
                        self.lane_ask(peer);
                    }
                    self.send_trust(peer);
                    // Learn the releases it holds: the seed may be out of reach, and a release
                    // announced before this node joined reaches it only this way.
                    self.send(&peer, Request::Releases, crate::event_loop::Pending::Releases);
                }
            }
        }
    }
}

/// How chunks are read to be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    /// Every chunk hashed as it is read ([`Store::get`]).
    Verified,
    /// A chunk verified lately is not hashed again: the asking peer verifies it
    /// ([`Store::get_for_peer`]).
    ForPeer,
}

impl Read {
    fn get(self, store: &Store, id: &ChunkId) -> layerhop_store::error::Result<Option<Vec<u8>>> {
        match self {
            Read::Verified => store.get(id),
            Read::ForPeer => store.get_for_peer(id),
        }
    }
}

/// The chunks asked for, as answers to a peer (on the exchange protocol or a lane): read as
/// `read` says, compressed when that pays (without asking again of a chunk in `known`),
/// missing when not held; counted in `served`.
pub(crate) fn serve_chunks(store: &Store, ids: &[ChunkId], served: &ServedCounters, known: &Incompressible, read: Read) -> Vec<ChunkReply> {
    let replies: Vec<ChunkReply> = ids
        .iter()
        .map(|id| match read.get(store, id) {
            Ok(Some(bytes)) => known.wire_form(id, bytes),
            Ok(None) => ChunkReply::Missing,
            Err(e) => {
                tracing::error!(chunk = %id, error = %e, "cannot read chunk to serve");
                ChunkReply::Missing
            }
        })
        .collect();
    let (n, bytes) = replies.iter().fold((0, 0), |(n, b), r| match r {
        ChunkReply::Raw(x) | ChunkReply::Zstd(x) => (n + 1, b + x.len() as u64),
        ChunkReply::Missing => (n, b),
    });
    served.add(n, bytes);
    replies
}
