//! Device → seed: which releases this device holds, for the seed's fleet view
//! ([`crate::fleet`]).
//!
//! The report crosses the metered link, so it is sent only when a release becomes complete that
//! was not reported over this connection yet, and once after each (re)connection to the seed,
//! never as a heartbeat: one message of a few hundred bytes per release per device. (Reporting
//! every change of the set of complete releases also reported a release being replaced by its
//! successor: seed-story's second release, 20 KiB to 20 devices, drew 60 reports, 18 KiB of its
//! 40 KiB metered.) The seed learns of fetches in progress from the chunk requests themselves. A
//! report goes out only after the seed answered this node's Hello, so the seed knows the device's
//! site when it arrives.

use crate::event_loop::{EventLoop, Pending};
use layerhop_protocol::wire::{Holding, Request};

/// What was last reported to the seed over the current connection.
#[derive(Debug, Default)]
pub(crate) struct SeedReport {
    /// The seed answered Hello on the current connection.
    ready: bool,
    /// (channel, version) of every complete release reported over this connection.
    sent: Option<std::collections::BTreeSet<(String, u64)>>,
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
        let complete: Vec<(String, u64)> = self.fetches.iter().filter(|(_, f)| f.complete).map(|(c, f)| (c.clone(), f.body.version)).collect();
        if let Some(sent) = &self.report.sent
            && complete.iter().all(|k| sent.contains(k))
        {
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
        self.report.sent.get_or_insert_default().extend(complete);
    }
}
