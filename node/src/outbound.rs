//! Events of the exchange protocols: requests from peers go to [`crate::inbound`]; answers to
//! this node's own requests, and requests that failed, are handled here — who is at fault
//! ([`crate::strikes`]), what is asked again, and what each answer starts.

use crate::config::Role;
use crate::event_loop::{EventLoop, Pending};
use crate::fetch::Source;
use layerhop_protocol::wire::{Request, Response};
use libp2p::PeerId;
use libp2p::request_response;

impl EventLoop {
    /// An event of the `exchange` protocol, or (`uplink`) of the seed's chunk protocol.
    pub(crate) fn on_exchange(&mut self, e: request_response::Event<crate::codec::Paced, Response>, uplink: bool) {
        match e {
            request_response::Event::Message { peer, message, .. } => {
                self.site.heard(&peer);
                match message {
                    request_response::Message::Request { request, channel, .. } => self.on_request(peer, request.request, channel),
                    request_response::Message::Response { request_id, response } => {
                        let pending = self.take_pending(uplink, &request_id);
                        self.on_response(peer, pending, response)
                    }
                }
            }
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                tracing::debug!(%peer, %error, "request failed");
                // An oversized, malformed or stalled answer is the peer's fault (struck, see
                // crate::strikes). A timeout is not evidence: an honest peer on an overloaded
                // host misses deadlines too, so a timed-out request is only retried.
                let fault = self.judge_failure(peer, &error);
                match self.take_pending(uplink, &request_id) {
                    Some(Pending::Chunks { channel, ids, source }) => {
                        self.request_done(source);
                        // A site peer at fault is not asked for these chunks again.
                        let lacked = (fault && matches!(source, Source::Peer(_))).then_some(source);
                        if let Some(f) = self.fetches.get_mut(&channel) {
                            for id in &ids {
                                f.retry(id, lacked);
                            }
                        }
                    }
                    Some(Pending::Announce { signed, next }) => self.announce_to_next(signed, next),
                    // The hello is what makes a connection useful (membership, peers): a lost
                    // one (a timeout on a loaded host) is sent again while the peer is connected.
                    Some(Pending::Hello) if self.swarm.is_connected(&peer) && self.cfg.role == Role::Device => {
                        let hello = self.hello();
                        self.send(&peer, Request::Hello(hello), Pending::Hello);
                    }
                    _ => {}
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    pub(crate) fn request_done(&mut self, source: Source) {
        match source {
            Source::Seed => {
                self.seed_in_flight = self.seed_in_flight.saturating_sub(1);
                self.seed_room_freed = true;
            }
            Source::Peer(p) => {
                if let Some(m) = self.site.member_mut(&p) {
                    m.in_flight = m.in_flight.saturating_sub(1);
                }
            }
        }
    }

    fn on_response(&mut self, peer: PeerId, pending: Option<Pending>, response: Response) {
        match (pending, response) {
            (Some(Pending::Releases), Response::Releases(list)) => {
                for signed in list {
                    self.consider_and_forward(signed, peer);
                }
            }
            (Some(Pending::Announce { signed, next }), Response::Refused(why)) => {
                tracing::warn!(%peer, reason = %why, "device refused an announcement");
                self.announce_to_next(signed, next);
            }
            (Some(Pending::Hello), Response::Peers(list)) if Some(peer) == self.seed() => {
                self.on_peers(list);
                self.send(&peer, Request::Releases, Pending::Releases);
                self.seed_ready();
            }
            (Some(Pending::Hello), Response::Ack) if Some(peer) != self.seed() => {
                // The peer took this node as a member: from now on it accepts state messages.
                self.hello_acked.insert(peer);
                if self.site.is_member(&peer) {
                    self.send_full_state(peer);
                    self.lane_ask(peer);
                }
            }
            (Some(Pending::Hello), Response::Refused(why)) => {
                tracing::warn!(%peer, reason = %why, "peer refused this node");
            }
            (_, Response::Lane(port)) => self.lane_port(peer, port),
            (Some(Pending::Chunks { channel, ids, source }), Response::Chunks(replies)) => {
                self.request_done(source);
                self.on_chunks(channel, ids, replies, source);
            }
            (Some(Pending::Chunks { channel, ids, source }), other) => {
                self.request_done(source);
                tracing::warn!(%peer, response = ?other, "unexpected answer to a chunk request");
                if let Some(f) = self.fetches.get_mut(&channel) {
                    for id in &ids {
                        f.retry(id, Some(source));
                    }
                }
            }
            _ => {}
        }
        self.pump_due = true;
    }
}
