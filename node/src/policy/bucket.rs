//! The rate cap: a token bucket of metered bytes.
//!
//! Why not `governor`: it admits cells of a cost known *before* the work, while a chunk reply's
//! size is known only once it crossed the link (a chunk is 1 byte to 256 KiB, compressed or not).
//! This bucket is filled at the cap and drained by the bytes the link counters really saw; it
//! may go below zero (a reply bigger than expected), and then nothing new is asked for until it
//! has refilled. Its depth is one second at the cap, and at least one full request
//! ([`super::REQUEST_MAX`]) so that a full request can ever be afforded.

use std::time::Instant;

/// Bytes, refilled at `rate` per second up to `depth`.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    rate: Option<u64>,
    /// Level at `at`, in bytes; negative after an overdraw.
    level: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket for `rate` bytes per second (None: no cap).
    pub(crate) fn new(rate: Option<u64>, now: Instant) -> Bucket {
        let mut b = Bucket { rate, level: 0.0, at: now };
        b.level = b.depth();
        b
    }

    fn depth(&self) -> f64 {
        self.rate.map_or(0.0, |r| r.max(super::REQUEST_MAX) as f64)
    }

    fn refill(&mut self, now: Instant) {
        self.level = self.level_at(now);
        self.at = self.at.max(now);
    }

    fn level_at(&self, now: Instant) -> f64 {
        let Some(rate) = self.rate else { return 0.0 };
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        (self.level + secs * rate as f64).min(self.depth())
    }

    /// A new cap (a reload); the level is kept, within the new depth.
    pub(crate) fn set_rate(&mut self, rate: Option<u64>, now: Instant) {
        self.refill(now);
        let was = self.rate;
        self.rate = rate;
        self.level = if was.is_none() { self.depth() } else { self.level.min(self.depth()) };
    }

    /// `bytes` crossed the metered link.
    pub(crate) fn spend(&mut self, bytes: u64, now: Instant) {
        if self.rate.is_none() {
            return;
        }
        self.refill(now);
        self.level -= bytes as f64;
    }

    /// Whole bytes available now (None: no cap).
    pub(crate) fn level(&self, now: Instant) -> Option<u64> {
        self.rate.map(|_| self.level_at(now).max(0.0) as u64)
    }

    /// Whole seconds (rounded up) until `bytes` are available.
    pub(crate) fn secs_until(&self, bytes: u64, now: Instant) -> i64 {
        let Some(rate) = self.rate.filter(|r| *r > 0) else { return 0 };
        let short = bytes as f64 - self.level_at(now);
        if short <= 0.0 { 0 } else { (short / rate as f64).ceil() as i64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn refills_at_the_rate_up_to_its_depth_and_can_be_overdrawn() {
        let t0 = Instant::now();
        let mib = 1 << 20;
        let mut b = Bucket::new(Some(mib), t0);
        // Depth: one full request (4 MiB) even though the rate is 1 MiB/s.
        assert_eq!(b.level(t0), Some(super::super::REQUEST_MAX));
        b.spend(6 * mib, t0);
        assert_eq!(b.level(t0), Some(0), "overdrawn by 2 MiB");
        assert_eq!(b.secs_until(mib, t0), 3);
        assert_eq!(b.level(t0 + Duration::from_secs(3)), Some(mib));
        assert_eq!(b.level(t0 + Duration::from_secs(3600)), Some(4 * mib), "never above its depth");
        b.set_rate(None, t0);
        assert_eq!(b.level(t0), None);
    }
}
