//! Strikes and bans for misbehaving peers.
//!
//! A peer gets a strike for what it provably did wrong: bytes that do not match the chunk id
//! asked for, a reply count that does not match the request, or an answer the codec refused
//! (a [`crate::codec::Fault`]: over the message bound, malformed, or stalled below its pace).
//! Three strikes within the strike window ban it for the ban period: it is put on the swarm's
//! block list, which closes its connections and denies new ones (both ways) before any
//! handler sees them, and it leaves the site. The seed is never banned (there is no other
//! source for what only it holds); its faults are logged.
//!
//! What is not struck: a request that runs into its deadline (an overloaded peer misses it
//! too: 20 nodes on 2 cores in the simulations banned each other when timeouts counted), a
//! connection that closes or resets mid-answer (a peer that crashed or restarted), this node's
//! own stream limit. Those are retried elsewhere.
//!
//! Stalls are counted by episode: stalls of one peer within [`STALL_EPISODE`] of the stall
//! that opened the episode are one strike. A host that freezes (a loaded 2-core box, a VM
//! paused) stalls every answer it was writing at once; that is one event, and three strikes at
//! once would ban an honest peer for an hour. A trickling peer is asked again after each cut
//! (it claims to hold the chunks), so its stalls come one grace apart and reach a ban after
//! three episodes: about three times the pace's grace (see [`crate::codec`]).

use crate::event_loop::EventLoop;
use crate::codec::Fault;
use libp2p::PeerId;
use libp2p::request_response::OutboundFailure;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Strikes before a ban.
pub const STRIKES_TO_BAN: u32 = 3;
/// Strikes older than this are forgotten.
pub const STRIKE_WINDOW: Duration = Duration::from_secs(600);
/// How long a ban lasts.
pub const BAN: Duration = Duration::from_secs(3600);
/// Stalls of one peer this close to the first of an episode count once (the pace's grace:
/// answers cut in one grace were in flight together).
pub const STALL_EPISODE: Duration = crate::codec::SITE_PACE.grace;

/// Per-peer strike counts and bans.
#[derive(Debug, Default)]
pub struct Strikes {
    counts: HashMap<PeerId, (u32, Instant)>,
    banned: HashMap<PeerId, Instant>,
    /// When each peer's current stall episode began.
    stalls: HashMap<PeerId, Instant>,
    total: u64,
}

impl Strikes {
    /// Record a strike; returns true when it bans the peer.
    pub fn strike(&mut self, peer: PeerId, now: Instant) -> bool {
        self.total += 1;
        let entry = self.counts.entry(peer).or_insert((0, now));
        if now.duration_since(entry.1) > STRIKE_WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
        entry.1 = now;
        if entry.0 >= STRIKES_TO_BAN {
            self.counts.remove(&peer);
            self.stalls.remove(&peer);
            self.banned.insert(peer, now + BAN);
            return true;
        }
        false
    }

    /// Record a stalled answer: `None` when it belongs to an episode already struck, else
    /// whether its strike bans the peer.
    pub fn stall(&mut self, peer: PeerId, now: Instant) -> Option<bool> {
        if self.stalls.get(&peer).is_some_and(|t| now.duration_since(*t) < STALL_EPISODE) {
            return None;
        }
        self.stalls.insert(peer, now);
        Some(self.strike(peer, now))
    }

    /// Whether `peer` is banned now.
    pub fn is_banned(&mut self, peer: &PeerId, now: Instant) -> bool {
        match self.banned.get(peer) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.banned.remove(peer);
                false
            }
            None => false,
        }
    }

    /// Forget bans that ran out (returned, to be lifted) and stall episodes that ended.
    pub fn expire(&mut self, now: Instant) -> Vec<PeerId> {
        self.stalls.retain(|_, t| now.duration_since(*t) < STALL_EPISODE);
        let over: Vec<PeerId> = self.banned.iter().filter(|(_, u)| **u <= now).map(|(p, _)| *p).collect();
        for p in &over {
            self.banned.remove(p);
        }
        over
    }

    /// Peers banned now.
    pub fn banned_count(&self, now: Instant) -> usize {
        self.banned.values().filter(|u| **u > now).count()
    }

    /// Strikes given since the node started.
    pub fn total(&self) -> u64 {
        self.total
    }
}

impl EventLoop {
    /// Count a fault against `peer`; the third within the window bans it (never the seed).
    pub(crate) fn strike(&mut self, peer: PeerId, reason: &str) {
        if Some(peer) == self.seed() {
            tracing::warn!(%peer, reason, "the seed misbehaved");
            return;
        }
        // Answers already in flight when the ban fell are not new offences.
        if self.strikes.is_banned(&peer, Instant::now()) {
            tracing::debug!(%peer, reason, "fault from a banned peer");
            return;
        }
        let banned = self.strikes.strike(peer, Instant::now());
        self.struck(peer, reason, banned);
    }

    fn struck(&mut self, peer: PeerId, reason: &str, banned: bool) {
        if banned {
            tracing::warn!(%peer, reason, "peer banned after repeated faults");
            self.site.leave(&peer);
            if let Some(l) = &mut self.lanes {
                l.forget(&peer);
            }
            // Closes its connections and refuses new ones until the ban is lifted.
            self.swarm.behaviour_mut().blocked.block_peer(peer);
        } else {
            tracing::warn!(%peer, reason, "peer struck");
        }
    }

    /// Judge a failed request: returns whether `peer` is at fault (and struck for it; a stall
    /// once per episode). Only a [`Fault`] the codec found is evidence.
    pub(crate) fn judge_failure(&mut self, peer: PeerId, error: &OutboundFailure) -> bool {
        let OutboundFailure::Io(e) = error else { return false };
        let Some(fault) = Fault::of(e) else { return false };
        self.judge_fault(peer, fault);
        true
    }

    /// Strike `peer` for `fault` (a stall once per episode; never the seed).
    pub(crate) fn judge_fault(&mut self, peer: PeerId, fault: &Fault) {
        let reason = fault.to_string();
        if Some(peer) == self.seed() {
            tracing::warn!(%peer, reason, "the seed misbehaved");
        } else if self.strikes.is_banned(&peer, Instant::now()) {
            tracing::debug!(%peer, reason, "fault from a banned peer");
        } else if matches!(fault, Fault::Stalled { .. }) {
            match self.strikes.stall(peer, Instant::now()) {
                Some(banned) => self.struck(peer, &reason, banned),
                None => tracing::info!(%peer, reason, "answer stalled; same episode, not struck again"),
            }
        } else {
            self.strike(peer, &reason);
        }
    }

    /// Lift bans that ran out.
    pub(crate) fn lift_bans(&mut self) {
        for p in self.strikes.expire(Instant::now()) {
            tracing::info!(peer = %p, "ban lifted");
            self.swarm.behaviour_mut().blocked.unblock_peer(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_strikes_ban_and_bans_expire() {
        let mut s = Strikes::default();
        let p = PeerId::random();
        let t0 = Instant::now();
        assert!(!s.strike(p, t0));
        assert!(!s.strike(p, t0));
        assert!(s.strike(p, t0));
        assert!(s.is_banned(&p, t0));
        assert_eq!(s.expire(t0 + BAN - Duration::from_secs(1)), vec![]);
        assert_eq!(s.expire(t0 + BAN + Duration::from_secs(1)), vec![p]);
        assert!(!s.is_banned(&p, t0 + BAN + Duration::from_secs(1)));
        // Strikes spread wider than the window never add up to a ban.
        let q = PeerId::random();
        for i in 0..10u64 {
            assert!(!s.strike(q, t0 + (STRIKE_WINDOW + Duration::from_secs(1)) * i as u32));
        }
        assert_eq!(s.total(), 13);
    }

    #[test]
    fn stalls_count_once_per_episode() {
        let mut s = Strikes::default();
        let p = PeerId::random();
        let t0 = Instant::now();
        // A frozen host: eight answers stall within a second; one strike.
        assert_eq!(s.stall(p, t0), Some(false));
        for i in 1..8u32 {
            assert_eq!(s.stall(p, t0 + Duration::from_millis(100) * i), None);
        }
        assert_eq!(s.total(), 1);
        // A trickler asked again after each cut: a new episode every grace, banned at the third.
        assert_eq!(s.stall(p, t0 + STALL_EPISODE), Some(false));
        assert_eq!(s.stall(p, t0 + STALL_EPISODE * 2 + Duration::from_millis(1)), Some(true));
        assert!(s.is_banned(&p, t0 + STALL_EPISODE * 2));
        // Other faults are not coalesced.
        let q = PeerId::random();
        assert!(!s.strike(q, t0));
        assert_eq!(s.stall(q, t0), Some(false));
        assert!(s.strike(q, t0));
    }
}
