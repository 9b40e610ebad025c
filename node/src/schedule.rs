//! Deciding where each wanted chunk comes from, and telling site peers what this node holds.
//!
//! For every wanted chunk, in tree order:
//! 1. a live site member holds it → ask the least-busy such member, over the LAN;
//! 2. a live member is fetching it from the seed (its claim) → wait for it;
//! 3. otherwise the rendezvous winner among members with an uplink fetches it from the seed:
//!    if that is this node, ask the seed; if not, wait (the want is parked, see
//!    [`crate::fetch`]).
//!
//! The pump runs at most once per event-loop wake-up burst (see `EventLoop::run`), not once per
//! event: a site of 20 members answering each other's requests produces thousands of events a
//! second.
//!
//! A pump that has filled every site member's room stops after passing over
//! [`BUSY_SKIP_LIMIT`] wants whose holders are all busy, rather than walking the rest of the
//! ready list for chunks to ask the seed for: a device taking a whole release from one peer
//! has ~16,000 ready wants per GiB, all held by that busy peer, and walking them after every
//! answer was the receiving node's largest CPU cost in `bench_lan` (14%). A seed-bound want
//! behind them is still found: every pump after the seed had room freed, and at least every
//! [`FULL_PASS_EVERY`], looks at every ready want. When such a full pass found every ready want
//! held by a live member (all of them, in a LAN transfer), nothing is left for the seed until
//! something changes — a want added, retried or unparked, the site's epoch (a member joining,
//! leaving, losing its lease) — so until then a pump stops as soon as no member has room, and
//! full passes are skipped, for at most [`QUIET_FULL_PASS_EVERY`]. (The busy skips and the
//! full passes were still ~12% of the receiving node's network threads in `bench_lan` once
//! chunks came over lanes.)
//!
//! With site sharing off (the config's `site_sharing = false`, used as a baseline) every chunk
//! comes from the seed. Each source gets at most `parallel_requests` requests in flight of up
//! to 16 chunks each.

use crate::event_loop::{EventLoop, Pending};
use crate::writer::Incoming;
use crate::fetch::Source;
use crate::site::Fetcher;
use layerhop_protocol::ChunkId;
use layerhop_protocol::limits::{MAX_HAVE_IDS, MAX_IDS_PER_REQUEST};
use layerhop_protocol::wire::{ChunkReply, HaveMap, Request, State, short_id};
use libp2p::PeerId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Wants held only by busy members a pump passes over, once no member has room, before it stops
/// (see the module docs).
const BUSY_SKIP_LIMIT: usize = 256;

/// The longest time between two pumps that look at every ready want.
const FULL_PASS_EVERY: Duration = Duration::from_millis(100);

/// The longest time between two full passes while the last found every ready want held by a
/// live member (a bound on what a change the hint misses can cost).
const QUIET_FULL_PASS_EVERY: Duration = Duration::from_secs(1);

/// How long to leave a chunk the seed said it lacks before asking the seed again.
const SEED_LACK_RETRY: Duration = Duration::from_secs(5);

/// Received chunks waiting in the writer's queue (in memory, not yet staged on disk: what a
/// `kill -9` loses) above which no new chunk is requested.
pub(crate) const WRITE_BACKLOG: usize = 64;

/// Parked wants are all looked at again this often, whatever else happens: a claim can vanish
/// without the member ever holding the chunk (it gave up, or its state message was lost).
pub(crate) const UNPARK_SWEEP: Duration = Duration::from_secs(2);

/// The shortest gap between two state messages of a node with `members` site members.
///
/// Every state message is one exchange (a stream opened, negotiated, answered) with every
/// member, so a site of N members that gossiped at a fixed rate would cost N² exchanges per
/// period: at 50 members and one message every 250 ms that is 10,000 exchanges a second per
/// site, enough on its own to starve the event loops of a small host, make members miss their
/// leases and hand chunks on to be fetched twice. Spacing the messages by 25 ms per member keeps
/// each node at no more than 40 exchanges a second whatever the site's size, while a small site
/// still hears of landed chunks within 250 ms. (What landed meanwhile is carried by the next
/// message; nothing is dropped.)
pub(crate) fn state_interval(members: usize) -> Duration {
    (Duration::from_millis(25) * members as u32).clamp(Duration::from_millis(250), Duration::from_secs(2))
}

impl EventLoop {
    /// Send chunk requests while sources have room. Looks only at ready wants (see
    /// [`crate::fetch`]), and stops as soon as no source has room.
    pub(crate) fn pump(&mut self) {
        self.pump_due = false;
        self.last_pump = Instant::now();
        // A full disk: the writer holds what arrived and retries; new chunks would only be
        // fetched over the link to be dropped (it restarts pumping when a write succeeds).
        if self.writer.disk_full().is_some() {
            return;
        }
        // Backpressure from the disk: received chunks waiting to be staged are memory, and
        // lost (fetched again) if the node dies. A network faster than the disk would otherwise
        // fill the writer's queue; so no new requests while a batch's worth is waiting. Each
        // staged chunk wakes the pump again.
        if self.writing >= WRITE_BACKLOG {
            return;
        }
        let limit = self.cfg.parallel_requests;
        let full = limit * MAX_IDS_PER_REQUEST;
        let uplink = self.uplink();
        let sharing = self.cfg.site_sharing;
        let epoch = self.site.epoch;
        let now = Instant::now();
        let full_pass = self.seed_room_freed || now.duration_since(self.last_full_pass) >= FULL_PASS_EVERY;
        if full_pass {
            self.seed_room_freed = false;
            self.last_full_pass = now;
        }
        let channels: Vec<String> = self.fetches.iter().filter(|(_, f)| !f.complete && f.stalled.is_none()).map(|(c, _)| c.clone()).collect();
        for channel in channels {
            let mut seed_batch: Vec<ChunkId> = Vec::new();
            let mut peer_batches: HashMap<PeerId, Vec<ChunkId>> = HashMap::new();
            let mut seed_room = if uplink { limit.saturating_sub(self.seed_in_flight) * MAX_IDS_PER_REQUEST } else { 0 };
            seed_room = seed_room.min(self.seed_allowance(&channel));
            let mut members_with_room = if sharing { self.site.members().filter(|(_, m)| m.in_flight * MAX_IDS_PER_REQUEST < full).count() } else { 0 };
            let mut to_park = Vec::new();
            let Some(f) = self.fetches.get_mut(&channel) else { continue };
            if f.parked_epoch != epoch {
                f.unpark_all();
                f.parked_epoch = epoch;
            }
            let key = f.key();
            let known_since = f.known_since;
            let holders = if sharing { self.site.holders_of(&key) } else { Vec::new() };
            // Quiet: the last full pass found every ready want held by a live member, and
            // nothing has changed that since (see the module docs).
            let quiet = sharing && !f.maybe_unheld && f.full_pass.is_some_and(|(e, at)| e == epoch && now.duration_since(at) < QUIET_FULL_PASS_EVERY);
            let full_here = full_pass && !quiet;
            if full_here {
                f.maybe_unheld = false;
                f.full_pass = Some((epoch, now));
            }
            let mut busy_skips = 0;
            for id in f.ready.values() {
                if seed_room == 0 && members_with_room == 0 {
                    // Wants left unseen: what they are is not known.
                    f.maybe_unheld |= full_here;
                    break;
                }
                if quiet && members_with_room == 0 {
                    break;
                }
                let Some(w) = f.wants.get_mut(id) else { continue };
                if sharing {
                    let s = short_id(id);
                    let best = holders
                        .iter()
                        .filter(|h| h.have.holds(&s) && !w.tried.contains(&h.peer))
                        .map(|h| (h.peer, h.in_flight * MAX_IDS_PER_REQUEST + peer_batches.get(&h.peer).map_or(0, Vec::len)))
                        .min_by_key(|(_, load)| *load);
                    match best {
                        Some((p, load)) if load < full => {
                            peer_batches.entry(p).or_default().push(*id);
                            if load + 1 == full {
                                members_with_room = members_with_room.saturating_sub(1);
                            }
                            continue;
                        }
                        Some(_) => {
                            // Held on the site; its holders are busy.
                            busy_skips += 1;
                            if !full_here && members_with_room == 0 && busy_skips >= BUSY_SKIP_LIMIT {
                                break;
                            }
                            continue;
                        }
                        None => {}
                    }
                    if self.site.claimed(&key, id) {
                        to_park.push(*id);
                        continue;
                    }
                    let fetcher = match w.fetcher {
                        Some((e, f)) if e == epoch => f,
                        _ => {
                            let f = self.site.fetcher(&key, id, uplink, known_since);
                            w.fetcher = Some((epoch, f));
                            f
                        }
                    };
                    if fetcher != Fetcher::Me {
                        to_park.push(*id);
                        continue;
                    }
                }
                if seed_room == 0 || w.seed_lacked.is_some_and(|t| now.duration_since(t) < SEED_LACK_RETRY) {
                    // Stays ready, held by no member.
                    f.maybe_unheld = true;
                    continue;
                }
                seed_batch.push(*id);
                seed_room -= 1;
            }
            for id in to_park {
                f.park(id);
            }
            for (peer, ids) in peer_batches {
                for batch in ids.chunks(MAX_IDS_PER_REQUEST) {
                    self.request_chunks(&channel, batch.to_vec(), Source::Peer(peer));
                }
            }
            for batch in seed_batch.chunks(MAX_IDS_PER_REQUEST) {
                self.request_chunks(&channel, batch.to_vec(), Source::Seed);
            }
        }
    }

    /// A member's state message: apply it, and look again at chunks waiting on what it now
    /// holds. A release it has that this node has not heard of is asked for (the one LAN
    /// announcement may have been lost).
    pub(crate) fn on_member_state(&mut self, peer: PeerId, state: State) {
        let unknown = state.releases.iter().any(|h| {
            self.cfg.follows(&h.channel) && self.fetches.get(h.channel.as_str()).is_none_or(|f| f.body.version < h.version)
        });
        if unknown && self.last_releases_ask.get(&peer).is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            self.last_releases_ask.insert(peer, Instant::now());
            self.send(&peer, Request::Releases, Pending::Releases);
        }
        for (key, ids) in self.site.on_state(&peer, state) {
            let Some(f) = self.fetches.get_mut(&key.0) else { continue };
            if f.body.version != key.1 {
                continue;
            }
            match ids {
                None => f.unpark_all(),
                Some(ids) => f.unpark(&ids),
            }
            self.pump_due = true;
        }
    }

    fn request_chunks(&mut self, channel: &str, ids: Vec<ChunkId>, source: Source) {
        let peer = match source {
            Source::Seed => match self.seed() {
                Some(s) => s,
                None => return,
            },
            Source::Peer(p) => p,
        };
        if let Some(f) = self.fetches.get_mut(channel) {
            f.requested(&ids, source);
        }
        match source {
            Source::Seed => {
                tracing::debug!(chunks = ?ids, "asking the seed");
                self.seed_in_flight += 1;
                self.state_dirty = true;
            }
            Source::Peer(p) => {
                if let Some(m) = self.site.member_mut(&p) {
                    m.in_flight += 1;
                }
            }
        }
        let pending = Pending::Chunks { channel: channel.to_owned(), ids: ids.clone(), source };
        match source {
            Source::Seed => self.send_uplink(&peer, Request::Chunks(ids), pending),
            // A member's lane if it has one that works (see crate::lane), else the exchange.
            Source::Peer(_) => {
                if let Err(pending) = self.lane_send(peer, pending) {
                    self.send(&peer, Request::Chunks(ids), pending);
                }
            }
        }
    }

    /// Verify and store the chunks of a response, off the event loop.
    pub(crate) fn on_chunks(&mut self, channel: String, ids: Vec<ChunkId>, replies: Vec<ChunkReply>, source: Source) {
        if replies.len() != ids.len() {
            tracing::warn!(?source, asked = ids.len(), got = replies.len(), "chunk reply count does not match the request");
            if let Source::Peer(p) = source {
                self.strike(p, "chunk reply count does not match the request");
            }
            if let Some(f) = self.fetches.get_mut(&channel) {
                for id in &ids {
                    f.retry(id, Some(source));
                }
            }
            return;
        }
        for (id, reply) in ids.into_iter().zip(replies) {
            if matches!(reply, ChunkReply::Missing) {
                if let (Source::Peer(p), Some(f)) = (source, self.fetches.get(&channel)) {
                    let key = f.key();
                    self.site.forget(&p, &key, &id);
                }
                if let Some(f) = self.fetches.get_mut(&channel) {
                    f.retry(&id, Some(source));
                }
                continue;
            }
            // A chunk no longer wanted (it landed from elsewhere meanwhile) is not stored twice.
            let Some(entry) = self.fetches.get(&channel).and_then(|f| f.entry(&id)) else {
                tracing::debug!(chunk = %id, ?source, "chunk arrived but is no longer wanted");
                continue;
            };
            let incoming = Incoming { channel: channel.clone(), id, reply, source, entry };
            if self.writer.try_send(incoming).is_ok() {
                self.writing += 1;
                self.unstored += 1;
            } else {
                // Cannot happen while requests in flight stay far below the queue; if it does,
                // the chunk is simply wanted again.
                tracing::warn!(chunk = %id, "chunk writer queue full; chunk dropped and wanted again");
                if let Some(f) = self.fetches.get_mut(&channel) {
                    f.retry(&id, None);
                }
            }
        }
    }

    fn claims_of(&self, channel: &str) -> Vec<[u8; 8]> {
        self.fetches.get(channel).map(|f| f.seed_claims().map(short_id).collect()).unwrap_or_default()
    }

    fn base_state(&self) -> State {
        State {
            // A member its policy pauses is left out of its peers' rendezvous.
            uplink: self.uplink() && self.policy_open(),
            seed_fetched: self.seed_fetched,
            seed_pending: u32::try_from(self.seed_in_flight).unwrap_or(u32::MAX),
            releases: Vec::new(),
        }
    }

    /// Everything this node holds, for a member that just joined (split to stay bounded).
    pub(crate) fn send_full_state(&mut self, peer: PeerId) {
        let mut messages = Vec::new();
        for (channel, f) in &self.fetches {
            let claims = self.claims_of(channel);
            if f.complete {
                messages.push(HaveMap { channel: f.body.channel.clone(), version: f.body.version, complete: true, full: true, ids: vec![], claims });
                continue;
            }
            let held: Vec<[u8; 8]> = f.held().map(short_id).collect();
            let mut parts = held.chunks(MAX_HAVE_IDS).peekable();
            let mut first = true;
            if parts.peek().is_none() {
                messages.push(HaveMap { channel: f.body.channel.clone(), version: f.body.version, complete: false, full: true, ids: vec![], claims: claims.clone() });
            }
            for part in parts {
                messages.push(HaveMap { channel: f.body.channel.clone(), version: f.body.version, complete: false, full: first, ids: part.to_vec(), claims: claims.clone() });
                first = false;
            }
        }
        let base = self.base_state();
        if messages.is_empty() {
            self.send(&peer, Request::State(base.clone()), Pending::Other);
        }
        for m in messages {
            let mut s = base.clone();
            s.releases.push(m);
            self.send(&peer, Request::State(s), Pending::Other);
        }
    }

    /// Tell every member what landed since the last message, and who this node is fetching
    /// from the seed: at most every [`state_interval`], and at least every third of a lease as
    /// a heartbeat.
    pub(crate) fn send_state(&mut self) {
        let members: Vec<PeerId> = self.site.members().map(|(p, _)| *p).filter(|p| self.hello_acked.contains(p)).collect();
        let since = self.last_state.elapsed();
        if !members.is_empty() && since < state_interval(members.len()) {
            return;
        }
        let heartbeat = since >= self.site.lease() / 3;
        if members.is_empty() || (!self.state_dirty && !heartbeat) {
            for f in self.fetches.values_mut() {
                f.landed_recently.clear();
            }
            return;
        }
        let mut s = self.base_state();
        let channels: Vec<String> = self.fetches.keys().cloned().collect();
        for channel in channels {
            let claims = self.claims_of(&channel);
            let Some(f) = self.fetches.get_mut(&channel) else { continue };
            let n = f.landed_recently.len().min(MAX_HAVE_IDS);
            let ids: Vec<[u8; 8]> = f.landed_recently.drain(..n).map(|id| short_id(&id)).collect();
            let more = !f.landed_recently.is_empty();
            s.releases.push(HaveMap { channel: f.body.channel.clone(), version: f.body.version, complete: f.complete, full: false, ids, claims });
            self.state_dirty |= more;
        }
        self.state_dirty = false;
        for p in members {
            self.send(&p, Request::State(s.clone()), Pending::Other);
        }
        self.last_state = Instant::now();
    }
}
