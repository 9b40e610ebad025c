//! The metered bytes counted against the budgets: this local day's and this local month's.
//!
//! Kept in `HOME/metered-ledger.json`, a small JSON file written atomically (temp file, fsync,
//! rename) every few seconds while bytes flow and at shutdown, so a restart does not hand out
//! the day's budget again. A crash loses at most those few seconds of counting. A day or month
//! starts at local midnight; when the local date changes (or the clock is set back to another
//! day) that period's count starts from zero.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// Counts per period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ledger {
    /// The local date counted in `day_bytes`.
    day: NaiveDate,
    day_bytes: u64,
    /// The first day of the local month counted in `month_bytes`.
    month: NaiveDate,
    month_bytes: u64,
}

fn first_of_month(d: NaiveDate) -> NaiveDate {
    d.with_day(1).unwrap_or(d)
}

/// A local date-time as a moment in `now`'s offset.
fn at(now: DateTime<FixedOffset>, local: NaiveDateTime) -> DateTime<FixedOffset> {
    now + (local - now.naive_local())
}

/// The next local midnight.
pub(crate) fn next_day(now: DateTime<FixedOffset>) -> DateTime<FixedOffset> {
    let d = now.date_naive();
    at(now, d.succ_opt().unwrap_or(d).and_time(chrono::NaiveTime::MIN))
}

/// The first moment of the next local month.
pub(crate) fn next_month(now: DateTime<FixedOffset>) -> DateTime<FixedOffset> {
    let d = first_of_month(now.date_naive());
    let next = d.checked_add_months(chrono::Months::new(1)).unwrap_or(d);
    at(now, next.and_time(chrono::NaiveTime::MIN))
}

impl Ledger {
    /// Nothing counted yet.
    pub(crate) fn new(now: DateTime<FixedOffset>) -> Ledger {
        let d = now.date_naive();
        Ledger { day: d, day_bytes: 0, month: first_of_month(d), month_bytes: 0 }
    }

    /// Read `path`; a missing file is an empty ledger.
    pub(crate) fn load(path: &Path, now: DateTime<FixedOffset>) -> std::io::Result<Ledger> {
        match std::fs::read(path) {
            Ok(b) => {
                let mut l: Ledger = serde_json::from_slice(&b).map_err(std::io::Error::other)?;
                l.roll(now);
                Ok(l)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ledger::new(now)),
            Err(e) => Err(e),
        }
    }

    /// Write `path` atomically.
    pub(crate) fn save(&self, path: &Path) -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        serde_json::to_writer(&mut tmp, self).map_err(std::io::Error::other)?;
        tmp.write_all(b"\n")?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }

    /// Start new periods if `now` is in another day or month. Returns whether one started.
    pub(crate) fn roll(&mut self, now: DateTime<FixedOffset>) -> bool {
        let d = now.date_naive();
        let mut rolled = false;
        if d != self.day {
            *self = Ledger { day: d, day_bytes: 0, ..self.clone() };
            rolled = true;
        }
        if first_of_month(d) != self.month {
            *self = Ledger { month: first_of_month(d), month_bytes: 0, ..self.clone() };
            rolled = true;
        }
        rolled
    }

    /// Count `bytes` in the current periods.
    pub(crate) fn add(&mut self, bytes: u64) {
        self.day_bytes = self.day_bytes.saturating_add(bytes);
        self.month_bytes = self.month_bytes.saturating_add(bytes);
    }

    /// Bytes counted in `now`'s day and month.
    pub(crate) fn used(&self, now: DateTime<FixedOffset>) -> (u64, u64) {
        let d = now.date_naive();
        (if d == self.day { self.day_bytes } else { 0 }, if first_of_month(d) == self.month { self.month_bytes } else { 0 })
    }
}
