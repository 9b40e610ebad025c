//! Each rule with injected time; the metered byte total handed to `observe` is what the
//! assertions count.

use super::*;
use chrono::DateTime;
use layerhop_protocol::release::Priority;
use std::time::{Duration, Instant};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// An injected clock: wall-clock moments given in RFC 3339, monotonic time following them.
struct Clock {
    mono0: Instant,
    unix0: i64,
}

impl Clock {
    fn new() -> Clock {
        Clock { mono0: Instant::now(), unix0: 1_700_000_000 }
    }
    fn at(&self, rfc3339: &str) -> Now {
        let local = DateTime::parse_from_rfc3339(rfc3339).expect("time");
        let secs = u64::try_from(local.timestamp() - self.unix0).expect("after the clock's start");
        Now { local, mono: self.mono0 + Duration::from_secs(secs) }
    }
}

const NORMAL: Priority = Priority::NORMAL;
const URGENT: Priority = Priority { urgent: true, ignore_budget: false };
const URGENT_ANY_COST: Priority = Priority { urgent: true, ignore_budget: true };

fn release(priority: Priority) -> Release {
    Release { priority, issued_at: 0 }
}

fn with_peers(seed_in_flight: usize) -> Situation {
    Situation { alone: false, seed_in_flight }
}

fn policy(rules: Rules, now: Now) -> Policy {
    Policy::open(rules, None, now)
}

#[test]
fn no_rules_no_limit() {
    let c = Clock::new();
    let p = policy(Rules::default(), c.at("2026-03-01T12:00:00+00:00"));
    assert_eq!(p.allowance(c.at("2026-03-01T12:00:00+00:00"), release(NORMAL), with_peers(8)), Allowance::OPEN);
}

#[test]
fn windows_across_midnight() {
    let c = Clock::new();
    let rules = Rules { windows: vec!["22:00-02:00".parse().expect("w"), "12:00-12:30".parse().expect("w")], ..Rules::default() };
    let p = policy(rules, c.at("2026-03-01T00:00:00+01:00"));
    let ask = |t: &str, pr| p.allowance(c.at(t), release(pr), with_peers(0));
    for inside in ["2026-03-01T23:30:00+01:00", "2026-03-02T00:00:00+01:00", "2026-03-02T01:59:59+01:00", "2026-03-02T12:10:00+01:00"] {
        assert_eq!(ask(inside, NORMAL), Allowance::OPEN, "{inside}");
    }
    let a = ask("2026-03-02T02:00:00+01:00", NORMAL);
    assert_eq!(a.chunks, 0);
    let h = a.hold.expect("held");
    assert_eq!(h.reason, Reason::Window);
    assert_eq!(h.until.expect("until").to_rfc3339(), "2026-03-02T12:00:00+01:00");
    let h = ask("2026-03-02T21:59:30+01:00", NORMAL).hold.expect("held");
    assert_eq!(h.until.expect("until").to_rfc3339(), "2026-03-02T22:00:00+01:00");
    // An urgent release ignores windows.
    assert_eq!(ask("2026-03-02T15:00:00+01:00", URGENT), Allowance::OPEN);
}

#[test]
fn day_budget_pauses_until_midnight_and_a_restart_keeps_the_count() {
    let c = Clock::new();
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("metered-ledger.json");
    let rules = Rules { budget_day: Some(2 * MIB), ..Rules::default() };
    let t = c.at("2026-03-01T10:00:00+01:00");
    let mut p = Policy::open(rules.clone(), Some(path.clone()), t);
    p.observe(t, 0);
    // 2 MiB left: 8 chunks of at most 256 KiB; one request in flight reserves its 4 MiB.
    assert_eq!(p.allowance(t, release(NORMAL), with_peers(0)).chunks, 8);
    assert_eq!(p.allowance(t, release(NORMAL), with_peers(1)), Allowance { chunks: 0, hold: None });
    p.observe(t, 1900 * KIB);
    assert_eq!(p.used(t), (1900 * KIB, 1900 * KIB));
    let a = p.allowance(t, release(NORMAL), with_peers(0));
    assert_eq!((a.chunks, a.hold.map(|h| h.reason)), (0, Some(Reason::DayBudget)), "148 KiB left is less than a chunk");
    assert_eq!(a.hold.and_then(|h| h.until).expect("until").to_rfc3339(), "2026-03-02T00:00:00+01:00");
    assert!(a.hold.expect("hold").is_pause());
    // Urgent is not enough; urgent and ignore_budget is.
    assert_eq!(p.allowance(t, release(URGENT), with_peers(0)).hold.map(|h| h.reason), Some(Reason::DayBudget));
    assert_eq!(p.allowance(t, release(URGENT_ANY_COST), with_peers(0)), Allowance::OPEN);
    p.save(t);
    // A restart: a new process counts from zero, the ledger remembers the day.
    let t2 = c.at("2026-03-01T18:00:00+01:00");
    let mut p = Policy::open(rules, Some(path.clone()), t2);
    p.observe(t2, 10 * KIB);
    assert_eq!(p.used(t2), (1910 * KIB, 1910 * KIB));
    assert_eq!(p.allowance(t2, release(NORMAL), with_peers(0)).hold.map(|h| h.reason), Some(Reason::DayBudget));
    // The next local day starts from zero.
    let t3 = c.at("2026-03-02T00:00:01+01:00");
    assert_eq!(p.used(t3), (0, 1910 * KIB));
    assert_eq!(p.allowance(t3, release(NORMAL), with_peers(0)).chunks, 8);
    // A reload with a larger budget keeps the count.
    p.set_rules(Rules { budget_day: Some(4 * MIB), ..Rules::default() }, t2);
    assert_eq!(p.allowance(t2, release(NORMAL), with_peers(0)).chunks, ((4 * MIB - 1910 * KIB) / CHUNK_MAX) as usize);
}

#[test]
fn month_budget_rolls_over_with_the_local_month() {
    let c = Clock::new();
    let rules = Rules { budget_month: Some(10 * MIB), ..Rules::default() };
    let t = c.at("2026-01-31T23:59:00-05:00");
    let mut p = policy(rules, t);
    p.observe(t, 10 * MIB);
    let h = p.allowance(t, release(NORMAL), with_peers(0)).hold.expect("held");
    assert_eq!(h.reason, Reason::MonthBudget);
    assert_eq!(h.until.expect("until").to_rfc3339(), "2026-02-01T00:00:00-05:00");
    let feb = c.at("2026-02-01T00:00:00-05:00");
    assert_eq!(p.allowance(feb, release(NORMAL), with_peers(0)).chunks, 40);
    p.observe(feb, 10 * MIB + 3 * MIB);
    assert_eq!(p.used(feb), (3 * MIB, 3 * MIB));
    // December to January: the year changes too.
    let dec = c.at("2026-12-31T12:00:00+00:00");
    p.observe(dec, 20 * MIB);
    let h = p.allowance(dec, release(NORMAL), with_peers(0)).hold;
    assert_eq!(h.map(|h| h.reason), None, "7 MiB this month");
    p.observe(dec, 23 * MIB + 512 * KIB);
    let h = p.allowance(dec, release(NORMAL), with_peers(0)).hold.expect("held");
    assert_eq!(h.until.expect("until").to_rfc3339(), "2027-01-01T00:00:00+00:00");
}

#[test]
fn alone_a_normal_release_waits_until_its_deadline() {
    let c = Clock::new();
    let rules = Rules { defer_alone: Some(Duration::from_secs(12 * 3600)), ..Rules::default() };
    let issued = c.at("2026-03-01T08:00:00+00:00");
    let p = policy(rules, issued);
    let r = Release { priority: NORMAL, issued_at: u64::try_from(issued.local.timestamp()).expect("unix") };
    let alone = Situation { alone: true, seed_in_flight: 0 };
    let a = p.allowance(c.at("2026-03-01T09:00:00+00:00"), r, alone);
    assert_eq!(a.chunks, 0);
    let h = a.hold.expect("deferred");
    assert_eq!(h.reason, Reason::Deferred);
    assert_eq!(h.until.expect("until").to_rfc3339(), "2026-03-01T20:00:00+00:00");
    // On the depot LAN it fetches (its site decides who pays the metered link).
    assert_eq!(p.allowance(c.at("2026-03-01T09:00:00+00:00"), r, with_peers(0)), Allowance::OPEN);
    // Urgent is not deferred; and past the deadline a normal release is fetched alone too.
    assert_eq!(p.allowance(c.at("2026-03-01T09:00:00+00:00"), Release { priority: URGENT, ..r }, alone), Allowance::OPEN);
    assert_eq!(p.allowance(c.at("2026-03-01T20:00:00+00:00"), r, alone), Allowance::OPEN);
}

#[test]
fn the_bucket_holds_the_average_to_the_cap() {
    let c = Clock::new();
    let rules = Rules { rate_limit: Some(MIB), ..Rules::default() };
    let t0 = c.at("2026-03-01T08:00:00+00:00");
    let mut p = policy(rules, t0);
    // Full at the start: one whole request (4 MiB).
    assert_eq!(p.allowance(t0, release(NORMAL), with_peers(0)).chunks, 16);
    p.observe(t0, 4 * MIB);
    let a = p.allowance(t0, release(NORMAL), with_peers(0));
    assert_eq!(a.chunks, 0);
    let h = a.hold.expect("throttled");
    assert_eq!(h.reason, Reason::RateLimit);
    assert!(!h.is_pause(), "a throttle is not a pause");
    assert_eq!(h.until.expect("until").to_rfc3339(), "2026-03-01T08:00:01+00:00");
    // Ten simulated minutes of a fetcher that asks every 100 ms and gets every chunk it asks
    // for at the full 256 KiB, the reply landing before the next ask.
    let mut total = 4 * MIB;
    let mut t = t0;
    for _ in 0..6000 {
        t = Now { local: t.local + chrono::TimeDelta::milliseconds(100), mono: t.mono + Duration::from_millis(100) };
        let n = p.allowance(t, release(NORMAL), with_peers(0)).chunks.min(16) as u64;
        total += n * CHUNK_MAX;
        p.observe(t, total);
    }
    let cap = 4 * MIB + 600 * MIB;
    assert!(total <= cap, "{total} bytes in 600 s at 1 MiB/s (+4 MiB depth)");
    assert!(total >= cap - 4 * MIB, "{total}: the cap is also reached");
    // Urgent, even ignore_budget, is rate-capped too.
    p.observe(t, total + 4 * MIB);
    assert_eq!(p.allowance(t, release(URGENT_ANY_COST), with_peers(0)).chunks, 0);
}
