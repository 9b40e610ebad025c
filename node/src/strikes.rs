//! Strikes and bans for misbehaving peers.
//!
//! A peer that sends bytes that do not match the chunk id asked for, or a malformed or
//! oversized response, gets a strike. A request that runs into its deadline (a trickle, or
//! just an overloaded peer) is retried elsewhere but not struck: timeouts alone banned honest
//! peers on loaded hosts. Three strikes
//! within the strike window ban it for the ban period: its connections are closed, new ones
//! are dropped as soon as they are established, and nothing is asked of it. The seed is never
//! banned (there is no other source for what only it holds); its faults are logged.

use libp2p::PeerId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Strikes before a ban.
pub const STRIKES_TO_BAN: u32 = 3;
/// Strikes older than this are forgotten.
pub const STRIKE_WINDOW: Duration = Duration::from_secs(600);
/// How long a ban lasts.
pub const BAN: Duration = Duration::from_secs(3600);

/// Per-peer strike counts and bans.
#[derive(Debug, Default)]
pub struct Strikes {
    counts: HashMap<PeerId, (u32, Instant)>,
    banned: HashMap<PeerId, Instant>,
}

impl Strikes {
    /// Record a strike; returns true when it bans the peer.
    pub fn strike(&mut self, peer: PeerId, now: Instant) -> bool {
        let entry = self.counts.entry(peer).or_insert((0, now));
        if now.duration_since(entry.1) > STRIKE_WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
        entry.1 = now;
        if entry.0 >= STRIKES_TO_BAN {
            self.counts.remove(&peer);
            self.banned.insert(peer, now + BAN);
            return true;
        }
        false
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

    /// Peers banned now.
    pub fn banned_count(&self, now: Instant) -> usize {
        self.banned.values().filter(|u| **u > now).count()
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
        assert!(!s.is_banned(&p, t0 + BAN + Duration::from_secs(1)));
        // Strikes spread wider than the window never add up to a ban.
        let q = PeerId::random();
        for i in 0..10u64 {
            assert!(!s.strike(q, t0 + (STRIKE_WINDOW + Duration::from_secs(1)) * i as u32));
        }
    }
}
