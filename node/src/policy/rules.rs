//! The policy's rules as the config states them, and how their values are read: sizes with
//! units (`"500MiB"`, by `bytesize`), rates (`"2MiB/s"`), windows of local time
//! (`"01:00-05:00"`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

const DAY_SECS: u32 = 86_400;

/// A device's metered-link rules. The default has none: fetch whenever, as fast as the link goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Rate cap on metered bytes, bytes per second.
    pub rate_limit: Option<u64>,
    /// Metered bytes per local day.
    pub budget_day: Option<u64>,
    /// Metered bytes per local month.
    pub budget_month: Option<u64>,
    /// Local times when metered fetching may happen (empty: any time).
    pub windows: Vec<Window>,
    /// Without site peers, leave a non-urgent release this long after its issue.
    pub defer_alone: Option<Duration>,
}

impl Rules {
    /// Whether no rule is set.
    pub fn is_empty(&self) -> bool {
        *self == Rules::default()
    }

    /// Seconds from `now` (seconds since local midnight) to the start of the next window, or
    /// None when `now` is inside one (or no window is set).
    pub fn secs_to_window(&self, now: u32) -> Option<u32> {
        if self.windows.is_empty() || self.windows.iter().any(|w| w.contains(now)) {
            return None;
        }
        self.windows.iter().map(|w| (w.start + DAY_SECS - now % DAY_SECS) % DAY_SECS).min()
    }
}

/// A window of local time, `start` inclusive, `end` exclusive, in seconds since midnight; a
/// window whose end is before its start crosses midnight (`22:00-02:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    start: u32,
    end: u32,
}

impl Window {
    /// Whether `t` (seconds since local midnight) is inside.
    pub fn contains(&self, t: u32) -> bool {
        if self.start < self.end { (self.start..self.end).contains(&t) } else { t >= self.start || t < self.end }
    }
}

/// A malformed rule value.
#[derive(Debug, thiserror::Error)]
#[error("{value:?}: {reason}")]
pub struct BadValue {
    value: String,
    reason: &'static str,
}

fn bad(value: &str, reason: &'static str) -> BadValue {
    BadValue { value: value.chars().take(80).collect(), reason }
}

fn clock(s: &str, whole: &str) -> Result<u32, BadValue> {
    let (h, m) = s.trim().split_once(':').ok_or_else(|| bad(whole, "a time must be HH:MM"))?;
    let digits = |x: &str, n: std::ops::RangeInclusive<usize>| n.contains(&x.len()) && x.bytes().all(|b| b.is_ascii_digit());
    let (h, m): (u32, u32) = match (digits(h, 1..=2), digits(m, 2..=2), h.parse::<u32>(), m.parse::<u32>()) {
        (true, true, Ok(h), Ok(m)) if m < 60 && (h < 24 || (h == 24 && m == 0)) => (h, m),
        _ => return Err(bad(whole, "a time must be HH:MM between 00:00 and 24:00")),
    };
    Ok(h * 3600 + m * 60)
}

impl FromStr for Window {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, BadValue> {
        let (a, b) = s.split_once('-').ok_or_else(|| bad(s, "a window must be HH:MM-HH:MM (like \"01:00-05:00\")"))?;
        let (start, end) = (clock(a, s)?, clock(b, s)?);
        if start == DAY_SECS {
            return Err(bad(s, "a window cannot start at 24:00"));
        }
        if start == end % DAY_SECS {
            return Err(bad(s, "a window must not start where it ends (for any time, leave the list empty)"));
        }
        Ok(Window { start, end: end % DAY_SECS })
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hm = |t: u32| format!("{:02}:{:02}", t / 3600, t % 3600 / 60);
        write!(f, "{}-{}", hm(self.start), hm(self.end))
    }
}

/// A byte count: a number of bytes, or a size with a unit (`"500MiB"`, `"10GiB"`, `"2 MB"`).
pub fn parse_size(s: &str) -> Result<u64, BadValue> {
    let n = s.trim().parse::<bytesize::ByteSize>().map_err(|_| bad(s, "not a size (like \"500MiB\", \"10GiB\" or a number of bytes)"))?.as_u64();
    if n == 0 {
        return Err(bad(s, "must be more than zero"));
    }
    Ok(n)
}

/// A rate: bytes per second, or a size per second (`"2MiB/s"`).
pub fn parse_rate(s: &str) -> Result<u64, BadValue> {
    let size = s.trim().strip_suffix("/s").ok_or_else(|| bad(s, "a rate must end in /s (like \"2MiB/s\")"))?;
    parse_size(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_or_say_why() {
        assert_eq!(parse_size("500MiB").expect("size"), 500 << 20);
        assert_eq!(parse_size("10GiB").expect("size"), 10 << 30);
        assert_eq!(parse_size("1000").expect("size"), 1000);
        assert_eq!(parse_rate("2MiB/s").expect("rate"), 2 << 20);
        assert!(parse_rate("2MiB").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
        let w: Window = "01:00-05:00".parse().expect("window");
        assert_eq!(w.to_string(), "01:00-05:00");
        assert_eq!("22:30-24:00".parse::<Window>().expect("window").to_string(), "22:30-00:00");
        for bad in ["1-5", "01:00", "25:00-01:00", "01:60-02:00", "03:00-03:00", "00:00-24:00", "24:00-01:00", "001:00-02:00"] {
            assert!(bad.parse::<Window>().is_err(), "{bad}");
        }
    }
}
