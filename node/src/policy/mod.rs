//! The metered-link policy of a device: what it may fetch from the seed, and when.
//!
//! Rules (each optional, all from the config, re-read on SIGHUP or `layerhop reload`):
//! - a **rate cap** on metered bytes ([`bucket`]);
//! - a **byte budget** per local day and per local month ([`ledger`], persisted in the home so a
//!   restart does not hand out the day's budget again); a spent budget pauses seed fetching until
//!   the next local midnight or first of the month — LAN sharing goes on;
//! - **time windows** of local time in which metered fetching may happen (`01:00-05:00`,
//!   windows may cross midnight);
//! - **deferral when alone**: a device with no site peer (a vehicle away from its depot) leaves a
//!   non-urgent release until `issued_at + defer_alone_hours`, hoping to reach the depot's LAN,
//!   then fetches it over the metered link. The deadline counts from the *signed* issue time,
//!   so it survives restarts and is the same on every device of the fleet.
//!
//! A release's [`Priority`] (signed by the publisher) bends them: `urgent` ignores windows and
//! deferral but not the budget; `ignore_budget` (only with `urgent`) ignores the budget too. The
//! rate cap always applies: it protects the link, not the bill.
//!
//! Local time is read afresh at every decision, so a change of time zone or daylight saving
//! time takes effect at once; an "until" shown in status is computed in the offset of the
//! moment it was shown, so one that spans a daylight-saving change is off by the shift.
//!
//! Everything here is pure: time comes in as a [`Now`] and bytes as the metered counter's
//! running total, so the tests drive days, months and buckets without waiting. The event loop
//! asks [`Policy::allowance`] how many chunks it may ask the seed for (see [`gate`]).
//!
//! The one choice that shapes the numbers: a seed request in flight is counted at its largest
//! possible size ([`REQUEST_MAX`]: 16 chunks of 256 KiB) until its reply lands, and a new chunk
//! at [`CHUNK_MAX`]. So chunk bytes never cross a budget or run ahead of the bucket; the price is
//! that near the end of a budget (or with a small bucket) one request is in flight at a time.
//! Bytes are counted as they cross the link — handshakes, framing and the device's own messages
//! to the seed included — so a budget is what the operator's bill counts.

pub(crate) mod bucket;
pub(crate) mod gate;
pub(crate) mod ledger;
pub mod rules;

use chrono::{DateTime, FixedOffset, Timelike};
use layerhop_protocol::limits::MAX_IDS_PER_REQUEST;
use layerhop_protocol::release::Priority;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use rules::{Rules, Window};

/// The largest chunk, in bytes.
pub const CHUNK_MAX: u64 = 256 * 1024;
/// The most bytes one chunk request to the seed can bring.
pub const REQUEST_MAX: u64 = CHUNK_MAX * MAX_IDS_PER_REQUEST as u64;

/// How often the ledger is written while bytes flow (and at shutdown).
const SAVE_EVERY: Duration = Duration::from_secs(5);

/// A moment, as the policy sees it: local wall-clock time (windows, days, months, deadlines)
/// and the monotonic clock (the rate bucket).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Local time with its offset from UTC.
    pub local: DateTime<FixedOffset>,
    /// Monotonic time.
    pub mono: Instant,
}

impl Now {
    /// The system's clocks.
    pub fn system() -> Now {
        Now { local: chrono::Local::now().fixed_offset(), mono: Instant::now() }
    }

    /// Unix seconds.
    fn unix(&self) -> i64 {
        self.local.timestamp()
    }

    /// This moment plus `secs` seconds, in the same offset.
    fn plus_secs(&self, secs: i64) -> DateTime<FixedOffset> {
        self.local + chrono::TimeDelta::seconds(secs)
    }
}

/// Why seed fetching of a release is held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The day's metered budget is spent.
    DayBudget,
    /// The month's metered budget is spent.
    MonthBudget,
    /// Now is outside every metered time window.
    Window,
    /// No site peer: waiting for the site's LAN until the deferral deadline.
    Deferred,
    /// The rate cap: waiting for the bucket to fill (a throttle, not a pause).
    RateLimit,
}

impl Reason {
    /// Words for the human status.
    pub fn describe(&self) -> &'static str {
        match self {
            Reason::DayBudget => "the day's metered budget is spent",
            Reason::MonthBudget => "the month's metered budget is spent",
            Reason::Window => "outside the metered time windows",
            Reason::Deferred => "no site peer; waiting for the site LAN",
            Reason::RateLimit => "metered rate cap",
        }
    }
}

/// What holds a release back, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// Why.
    pub reason: Reason,
    /// When it ends (None: when in-flight replies land).
    pub until: Option<DateTime<FixedOffset>>,
}

impl Hold {
    /// Whether the hold stops seed fetching for a while (a budget, a window, a deferral), as
    /// opposed to throttling it.
    pub fn is_pause(&self) -> bool {
        self.reason != Reason::RateLimit
    }
}

/// The answer to "how many chunk ids may go to the seed now".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Chunk ids that may be requested now (`usize::MAX`: no limit).
    pub chunks: usize,
    /// Why fewer than wanted, if a rule says so.
    pub hold: Option<Hold>,
}

impl Allowance {
    const OPEN: Allowance = Allowance { chunks: usize::MAX, hold: None };

    fn held(reason: Reason, until: Option<DateTime<FixedOffset>>) -> Allowance {
        Allowance { chunks: 0, hold: Some(Hold { reason, until }) }
    }
}

/// What the policy needs to know of a release.
#[derive(Debug, Clone, Copy)]
pub struct Release {
    /// Its signed priority.
    pub priority: Priority,
    /// Its signed issue time, unix seconds.
    pub issued_at: u64,
}

/// The situation of this node when it asks.
#[derive(Debug, Clone, Copy)]
pub struct Situation {
    /// No site peer is connected.
    pub alone: bool,
    /// Chunk requests to the seed in flight.
    pub seed_in_flight: usize,
}

/// A device's metered-link policy: the rules and the counts they are checked against.
#[derive(Debug)]
pub struct Policy {
    rules: Rules,
    ledger: ledger::Ledger,
    bucket: bucket::Bucket,
    /// The metered counter's total at the last observation.
    seen: u64,
    /// Where the ledger lives (None: not persisted).
    path: Option<PathBuf>,
    dirty: bool,
    saved_at: Option<Instant>,
    /// Numbers the writes; the file holds the highest number written (see [`Policy::observe`]).
    seq: u64,
    written: std::sync::Arc<std::sync::Mutex<u64>>,
    /// A write failed: the ledger is dirty again.
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Policy {
    /// The policy with `rules`, its ledger read from `path` if there is one (a missing file is an
    /// empty ledger; an unreadable one is logged and replaced).
    pub fn open(rules: Rules, path: Option<PathBuf>, now: Now) -> Policy {
        let ledger = match &path {
            Some(p) => ledger::Ledger::load(p, now.local).unwrap_or_else(|e| {
                tracing::error!(path = %p.display(), error = %e, "the metered-budget ledger is unreadable; counting from zero");
                ledger::Ledger::new(now.local)
            }),
            None => ledger::Ledger::new(now.local),
        };
        let bucket = bucket::Bucket::new(rules.rate_limit, now.mono);
        Policy { rules, ledger, bucket, seen: 0, path, dirty: false, saved_at: None, seq: 0, written: Default::default(), failed: Default::default() }
    }

    /// The rules in force.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// New rules (a reload): the day's and month's counts and the bucket's level are kept.
    pub fn set_rules(&mut self, rules: Rules, now: Now) {
        self.bucket.set_rate(rules.rate_limit, now.mono);
        self.rules = rules;
    }

    /// Count what crossed the metered link since the last look: `total` is the running total of
    /// metered bytes (in + out) of this process. Writes the ledger when due — on tokio's blocking
    /// pool when there is a runtime: the write ends in an fsync, and the event loop calling this
    /// must not wait on the disk (a host of 50 nodes stalled on their ledgers' fsyncs, and their
    /// site peers took the silence for departures).
    pub fn observe(&mut self, now: Now, total: u64) {
        let delta = total.saturating_sub(self.seen);
        self.seen = self.seen.max(total);
        let rolled = self.ledger.roll(now.local);
        self.ledger.add(delta);
        self.bucket.spend(delta, now.mono);
        self.dirty |= delta > 0 || rolled || self.failed.swap(false, std::sync::atomic::Ordering::Relaxed);
        if self.dirty && self.saved_at.is_none_or(|t| now.mono.duration_since(t) >= SAVE_EVERY) {
            let write = self.write(now);
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(write)),
                Err(_) => write(),
            }
        }
    }

    /// Write the ledger now if it changed (at shutdown).
    pub fn save(&mut self, now: Now) {
        self.write(now)();
    }

    /// The write of the ledger as it is now. Writes may finish out of order (each on its own
    /// blocking thread); one never replaces the file written by a later one. A failed write
    /// leaves the ledger dirty for the next.
    fn write(&mut self, now: Now) -> impl FnOnce() + Send + 'static {
        self.saved_at = Some(now.mono);
        self.dirty |= self.failed.swap(false, std::sync::atomic::Ordering::Relaxed);
        let job = match (&self.path, self.dirty) {
            (Some(p), true) => {
                self.seq += 1;
                self.dirty = false;
                Some((p.clone(), self.ledger.clone(), self.seq, self.written.clone(), self.failed.clone()))
            }
            _ => None,
        };
        move || {
            let Some((path, ledger, seq, written, failed)) = job else { return };
            let mut last = written.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if *last >= seq {
                return;
            }
            match ledger.save(&path) {
                Ok(()) => *last = seq,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the metered-budget ledger");
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }

    /// Bytes counted this local day and month (as of the last [`Policy::observe`], rolled to
    /// `now`).
    pub fn used(&self, now: Now) -> (u64, u64) {
        self.ledger.used(now.local)
    }

    /// What a budget leaves, if it is set.
    fn left(budget: Option<u64>, used: u64) -> Option<u64> {
        budget.map(|b| b.saturating_sub(used))
    }

    /// How many chunk ids of `release` may go to the seed now.
    pub fn allowance(&self, now: Now, release: Release, at: Situation) -> Allowance {
        if self.rules.is_empty() {
            return Allowance::OPEN;
        }
        let reserved = at.seed_in_flight as u64 * REQUEST_MAX;
        let (day_used, month_used) = self.used(now);
        let day_left = Self::left(self.rules.budget_day, day_used);
        let month_left = Self::left(self.rules.budget_month, month_used);
        if !release.priority.ignore_budget {
            // Less than one largest chunk left counts as spent: a download is only started when
            // the budget surely covers it.
            if month_left.is_some_and(|l| l < CHUNK_MAX) {
                return Allowance::held(Reason::MonthBudget, Some(ledger::next_month(now.local)));
            }
            if day_left.is_some_and(|l| l < CHUNK_MAX) {
                return Allowance::held(Reason::DayBudget, Some(ledger::next_day(now.local)));
            }
        }
        if !release.priority.urgent {
            if let Some(secs) = self.rules.secs_to_window(now.local.num_seconds_from_midnight()) {
                return Allowance::held(Reason::Window, Some(now.plus_secs(i64::from(secs))));
            }
            if let (true, Some(defer)) = (at.alone, self.rules.defer_alone) {
                let deadline = i64::try_from(release.issued_at.saturating_add(defer.as_secs())).unwrap_or(i64::MAX);
                if now.unix() < deadline {
                    return Allowance::held(Reason::Deferred, Some(now.plus_secs(deadline - now.unix())));
                }
            }
        }
        let mut chunks = u64::MAX;
        if !release.priority.ignore_budget {
            for left in [day_left, month_left].into_iter().flatten() {
                chunks = chunks.min(left.saturating_sub(reserved) / CHUNK_MAX);
            }
        }
        let mut hold = None;
        if let Some(level) = self.bucket.level(now.mono) {
            let room = level.saturating_sub(reserved) / CHUNK_MAX;
            if room == 0 {
                let until = (at.seed_in_flight == 0).then(|| now.plus_secs(self.bucket.secs_until(CHUNK_MAX, now.mono)));
                hold = Some(Hold { reason: Reason::RateLimit, until });
            }
            chunks = chunks.min(room);
        }
        Allowance { chunks: usize::try_from(chunks).unwrap_or(usize::MAX), hold }
    }

    /// The status view: budgets, what is left, and the rules.
    pub fn status(&self, now: Now, holds: Vec<ReleaseHold>) -> Status {
        let (day_used, month_used) = self.used(now);
        Status {
            day: Period { used: day_used, budget: self.rules.budget_day, left: Self::left(self.rules.budget_day, day_used) },
            month: Period { used: month_used, budget: self.rules.budget_month, left: Self::left(self.rules.budget_month, month_used) },
            rate_limit: self.rules.rate_limit,
            windows: self.rules.windows.iter().map(ToString::to_string).collect(),
            defer_alone_secs: self.rules.defer_alone.map(|d| d.as_secs()),
            holds,
        }
    }
}

/// One budget period in the status.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Period {
    /// Metered bytes (in + out) counted this period.
    pub used: u64,
    /// The budget, if one is set.
    pub budget: Option<u64>,
    /// What the budget leaves.
    pub left: Option<u64>,
}

/// A release held back by the policy, in the status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReleaseHold {
    /// Channel.
    pub channel: String,
    /// Version.
    pub version: u64,
    /// Why.
    pub reason: Reason,
    /// When it ends, unix seconds (None: when in-flight replies land).
    pub until: Option<i64>,
    /// The same in local time, RFC 3339.
    pub until_local: Option<String>,
}

impl ReleaseHold {
    /// The status line for `hold` of a release.
    pub fn new(channel: &str, version: u64, hold: Hold) -> ReleaseHold {
        ReleaseHold {
            channel: channel.to_owned(),
            version,
            reason: hold.reason,
            until: hold.until.map(|t| t.timestamp()),
            until_local: hold.until.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, false)),
        }
    }
}

/// The policy as `status` reports it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    /// This local day.
    pub day: Period,
    /// This local month.
    pub month: Period,
    /// The rate cap, bytes per second.
    pub rate_limit: Option<u64>,
    /// Metered time windows (empty: any time).
    pub windows: Vec<String>,
    /// Deferral of non-urgent releases while alone, seconds after their issue.
    pub defer_alone_secs: Option<u64>,
    /// Releases held back now.
    pub holds: Vec<ReleaseHold>,
}

#[cfg(test)]
mod tests;
