//! Device → seed: which releases this device holds, for the seed's fleet view
//! ([`crate::fleet`]).
//!
//! The report crosses the metered link, so it is sent only when the set of complete releases
//! changes, and once after each (re)connection to the seed, never as a heartbeat: one message of
//! a few hundred bytes per release per device. (Reporting each release's start as well doubled
//! that; on a small release to 20 devices the reports were a third of the metered bytes.) The
//! seed learns of fetches in progress from the chunk requests themselves. It goes out only after the seed
//! answered this node's Hello, so the seed knows the device's site when it arrives.

use crate::event_loop::{EventLoop, Pending};
use layerhop_protocol::wire::{Holding, Request};

/// What was last reported to the seed over the current connection.
#[derive(Debug, Default)]
pub(crate) struct SeedReport {
    /// The seed answered Hello on the current connection.
    ready: bool,
    /// (channel, version) of each complete release at the last report.
    sent: Option<Vec<(String, u64)>>,
}

impl EventLoop {
    /// The seed answered this node's Hello: report (again) on the next tick.
    pub(crate) fn seed_ready(&mut self) {
        self.report = SeedReport { ready: true, sent: None };
    }

    /// Send the seed the releases held, if that changed since the last report.
    pub(crate) fn report_to_seed(&mut self) {
        let Some(seed) = self.seed() else { return };
        if !self.uplink() {
            self.report = SeedReport::default();
            return;
        }
        if !self.report.ready {
            return;
        }
        let key: Vec<(String, u64)> = self.fetches.iter().filter(|(_, f)| f.complete).map(|(c, f)| (c.clone(), f.body.version)).collect();
        if self.report.sent.as_ref() == Some(&key) {
            return;
        }
        let holdings: Vec<Holding> = self
            .fetches
            .values()
            .take(layerhop_protocol::limits::MAX_RELEASES_LISTED)
            .map(|f| Holding {
                channel: f.body.channel.clone(),
                version: f.body.version,
                complete: f.complete,
                bytes_have: f.have_now(),
                bytes_total: f.progress.total,
            })
            .collect();
        self.send(&seed, Request::Holdings(holdings), Pending::Other);
        self.report.sent = Some(key);
    }
}
