//! The policy inside the event loop: the pump's one gate, what a device tells its site, the
//! status view, and reloading the rules.
//!
//! Reloading: the rules are re-read from `config.toml` on SIGHUP (what systemd's `ExecReload`
//! sends) and on `layerhop reload` (which answers with the rules now in force, or the config's
//! error — a signal cannot). Nothing is restarted: downloads in flight go on, and the day's and
//! month's counts stay. Only the policy keys take effect this way; the others at the next start.

use super::{Allowance, Now, Release, ReleaseHold, Rules, Situation};
use crate::config::{Config, Role};
use crate::event_loop::{Command, EventLoop, Handle};
use anyhow::{Context, anyhow};
use std::path::Path;

impl EventLoop {
    /// The pump's gate: how many chunk ids of `channel`'s release may go to the seed now.
    pub(crate) fn seed_allowance(&mut self, channel: &str) -> usize {
        let now = Now::system();
        self.observe_metered(now);
        let Some(a) = self.release_allowance(channel, now) else { return usize::MAX };
        let pause = a.hold.filter(super::Hold::is_pause);
        if self.policy_log.get(channel) != Some(&pause.map(|h| h.reason)) {
            match pause {
                Some(h) => tracing::info!(channel, reason = h.reason.describe(), until = ?h.until, "metered fetching paused"),
                None if self.policy_log.contains_key(channel) => tracing::info!(channel, "metered fetching resumed"),
                None => {}
            }
            self.policy_log.insert(channel.to_owned(), pause.map(|h| h.reason));
        }
        a.chunks
    }

    /// Count the metered bytes since the last look against the budgets and the bucket.
    pub(crate) fn observe_metered(&mut self, now: Now) {
        let t = self.classifier.counters.totals();
        self.policy.observe(now, t.metered_in.saturating_add(t.metered_out));
    }

    fn situation(&self) -> Situation {
        Situation { alone: self.site.members().next().is_none(), seed_in_flight: self.seed_in_flight }
    }

    /// The policy's answer for `channel`'s release (None: no such release, or a seed).
    fn release_allowance(&self, channel: &str, now: Now) -> Option<Allowance> {
        if self.cfg.role != Role::Device {
            return None;
        }
        let f = self.fetches.get(channel)?;
        let release = Release { priority: f.body.priority, issued_at: f.body.issued_at };
        Some(self.policy.allowance(now, release, self.situation()))
    }

    /// Whether this node would fetch from the seed now — for some release it still lacks, or,
    /// lacking none, for a normal new one. Told to site peers as its uplink, so that a member
    /// paused by its policy drops out of their rendezvous and holds no chunk it will not fetch.
    pub(crate) fn policy_open(&self) -> bool {
        if self.cfg.role != Role::Device || self.policy.rules().is_empty() {
            return true;
        }
        let now = Now::system();
        let open = |a: Allowance| a.hold.is_none_or(|h| !h.is_pause());
        let mut lacking = self.fetches.iter().filter(|(_, f)| !f.complete).peekable();
        if lacking.peek().is_none() {
            let normal = Release { priority: Default::default(), issued_at: 0 };
            return open(self.policy.allowance(now, normal, self.situation()));
        }
        lacking.any(|(c, _)| self.release_allowance(c, now).is_none_or(open))
    }

    /// The policy part of `status` (None on a seed).
    pub(crate) fn policy_status(&mut self) -> Option<super::Status> {
        if self.cfg.role != Role::Device {
            return None;
        }
        let now = Now::system();
        self.observe_metered(now);
        let holds = self
            .fetches
            .iter()
            .filter(|(_, f)| !f.complete && f.stalled.is_none())
            .filter_map(|(c, f)| Some(ReleaseHold::new(c, f.body.version, self.release_allowance(c, now)?.hold?)))
            .collect();
        Some(self.policy.status(now, holds))
    }

    /// New rules from a reload; returns them in words.
    pub(crate) fn reload_policy(&mut self, rules: Rules) -> String {
        let now = Now::system();
        self.observe_metered(now);
        self.policy.set_rules(rules, now);
        // Peers learn at once whether this node fetches from the seed now.
        self.state_dirty = true;
        self.pump_due = true;
        self.policy_log.clear();
        let r = self.policy.rules();
        tracing::info!(rules = ?r, "metered-link policy reloaded");
        describe(r)
    }

    /// The ledger to disk (at shutdown).
    pub(crate) fn save_policy(&mut self) {
        let now = Now::system();
        self.observe_metered(now);
        self.policy.save(now);
    }
}

/// The rules in words.
pub(crate) fn describe(r: &Rules) -> String {
    let size = |v: Option<u64>| v.map_or("none".to_owned(), |b| bytesize::ByteSize(b).display().iec().to_string());
    let windows = if r.windows.is_empty() { "any time".to_owned() } else { r.windows.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ") };
    format!(
        "metered-link policy: rate limit {}, day budget {}, month budget {}, windows {windows}, defer when alone {}",
        r.rate_limit.map_or("none".to_owned(), |b| format!("{}/s", size(Some(b)))),
        size(r.budget_day),
        size(r.budget_month),
        r.defer_alone.map_or("no".to_owned(), |d| format!("{} h", d.as_secs() / 3600)),
    )
}

/// Re-read the policy keys of `config` and hand them to the running loop.
pub(crate) async fn reload(config: &Path, handle: &Handle) -> anyhow::Result<String> {
    let cfg = Config::load(config).context("config not reloaded; the rules in force are unchanged")?;
    let words = handle.call(|tx| Command::Reload(cfg.policy, tx)).await.ok_or_else(|| anyhow!("daemon is stopping"))?;
    Ok(format!("{words} (other keys take effect at the next start)"))
}

