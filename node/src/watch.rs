//! A node's *watch*: wall time less the time its own event loop did not get through its steps.
//!
//! A site member's silence, a release's age and the site's working-uplink time
//! ([`crate::site`]) are measured on it, not on the wall clock: time during which this node's
//! event loop did not get through its steps (more than [`WATCH_GAP`] between two steps, where
//! an idle loop ticks every 250 ms: a host so loaded that the loop waited seconds for a CPU, or
//! a step of its own that took that long) is not counted against anyone — a node that was not
//! listening cannot tell a silent member from its own deafness. Measured on a 2-core host
//! running a 5 × 50 fleet (250 nodes): the event loops' 250 ms ticks came a median 2.7-4.1 s
//! apart (up to 26 s; two runs) while a loop had spent a median of at most 27 ms handling events
//! in between (the whole host waited for CPU), members' state messages came as late, and 1,405
//! leases were lost to "silence" in one run — 462 of them holding seed claims that the
//! rendezvous then gave to a second member, which fetched those chunks again. The members' own
//! messages are delayed by the same load, so one loaded host discounts its own stalls; a member
//! whose host alone is loaded is judged by a listener that was watching, on the wall clock.
//! With this rule (and lane requests counted as hearing from the member that asks) the same
//! fleet on the same host lost no lease and every site fetched each new chunk from the seed
//! once. The price: a node starved this way notices a member that really died later — after a
//! lease of time it watched, but within a bounded discount (the site allows two leases, see
//! `crate::site::MAX_DISCOUNT_LEASES`); and members starved differently may, for a while,
//! disagree on a chunk's fetcher (as members whose messages are late do on the wall clock).

use std::time::{Duration, Instant};

/// More than this between two steps of this node's event loop (which ticks every 250 ms when
/// idle) means the loop was not getting through them: the excess is time not watched (see the
/// module docs).
pub const WATCH_GAP: Duration = Duration::from_secs(1);

/// A moment on this node's watch: the wall instant, and how much time this node had not
/// watched by then.
#[derive(Debug, Clone, Copy)]
pub struct Moment {
    /// The wall instant.
    pub at: Instant,
    pub(crate) unwatched: Duration,
}

/// When the loop last took a step, and how much time it has not been watching in all.
#[derive(Debug)]
pub struct Watch {
    pub(crate) stepped_at: Instant,
    unwatched: Duration,
}

impl Watch {
    /// A watch starting now.
    pub fn new() -> Self {
        Watch { stepped_at: Instant::now(), unwatched: Duration::ZERO }
    }

    /// The loop takes a step now (called at every step, before what woke it is handled): more
    /// than [`WATCH_GAP`] since the last step adds the excess to the time not watched.
    pub fn step(&mut self, now: Instant) {
        let gap = now.saturating_duration_since(self.stepped_at);
        if gap > WATCH_GAP {
            tracing::debug!(gap_ms = gap.as_millis() as u64, "event loop ran late; the time it missed is not counted as anyone's silence");
        }
        self.unwatched = self.at(now).unwatched;
        self.stepped_at = self.stepped_at.max(now);
    }

    /// `t` on the watch. Its time not watched: what [`Watch::step`] added up, and, past the
    /// last step, what the step now going on has missed so far (so a step stalled midway
    /// counts as late at once, and the total never goes back); before the last step, what was
    /// added up by it.
    pub fn at(&self, t: Instant) -> Moment {
        Moment { at: t, unwatched: self.unwatched + t.saturating_duration_since(self.stepped_at).saturating_sub(WATCH_GAP) }
    }

    /// The time watched between `since` and `now`: the wall time less what this node did not
    /// watch meanwhile, but less at most `most`.
    pub fn since(&self, since: Moment, now: Instant, most: Duration) -> Duration {
        let discount = self.at(now).unwatched.saturating_sub(since.unwatched).min(most);
        now.saturating_duration_since(since.at).saturating_sub(discount)
    }
}

impl Default for Watch {
    fn default() -> Self {
        Self::new()
    }
}
