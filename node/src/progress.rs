//! Progress on the console for `layerhop publish` and `layerhop wait`.
//!
//! On a terminal, an indicatif bar (bytes, rate, ETA, and for `wait` the LAN vs metered share
//! of what arrived); when stderr is not a terminal (a log, a CI job, a pipe), one plain line
//! every few seconds and a last one, since bars would fill a log with control characters.
//! Both poll the daemon over the control socket — the daemon keeps no per-client state, and a
//! command interrupted with ^C leaves nothing behind. Progress goes to stderr; the result
//! (publish's JSON, wait's summary) to stdout.

use crate::commands;
use crate::control::{self, PublishProgress, Request};
use crate::home::Home;
use crate::status::{ReleaseStatus, Status};
use anyhow::{Context, Result, bail};
use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often the daemon is asked.
const POLL: Duration = Duration::from_millis(250);
/// How often a plain line is printed when not on a terminal.
const LINE_EVERY: Duration = Duration::from_secs(2);

/// A bar on a terminal, plain lines elsewhere.
struct Display {
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Option<Instant>,
}

impl Display {
    fn new(prefix: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let style = ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            let b = ProgressBar::new(0).with_style(style).with_prefix(prefix.to_owned());
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Display { bar, started: Instant::now(), last_line: None }
    }

    /// Show `pos` of `total`; `line` renders the plain line (called only when one is due).
    fn update(&mut self, pos: u64, total: u64, msg: &str, line: impl FnOnce(&str) -> String) {
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(pos);
            b.set_message(msg.to_owned());
        } else if self.last_line.is_none_or(|t| t.elapsed() >= LINE_EVERY) {
            self.last_line = Some(Instant::now());
            eprintln!("{}", line(&rate_eta(pos, total, self.started.elapsed())));
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// "12.0 MiB/s, eta 3s" from bytes done so far.
fn rate_eta(pos: u64, total: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = pos as f64 / secs;
    let eta = if rate > 0.0 && total > pos { format!("{:#}", HumanDuration(Duration::from_secs_f64((total - pos) as f64 / rate))) } else { "-".into() };
    format!("{}/s, eta {eta}", HumanBytes(rate as u64))
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 { 100.0 } else { a as f64 * 100.0 / b as f64 }
}

fn source_bytes(p: &Path) -> u64 {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::read_dir(p).map(|d| d.flatten().map(|e| source_bytes(&e.path())).sum()).unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// `layerhop publish` with progress: runs the publish and shows the import's progress.
pub fn publish(home: &Home, channel: &str, sources: &[PathBuf], o: commands::PublishOptions) -> Result<serde_json::Value> {
    let total: u64 = sources.iter().map(|s| source_bytes(s)).sum();
    let job = {
        let (home, channel, sources) = (home.clone(), channel.to_owned(), sources.to_vec());
        std::thread::spawn(move || commands::publish(&home, &channel, &sources, o))
    };
    let mut d = Display::new(&format!("publish {channel}"));
    let mut seen = 0;
    while !job.is_finished() {
        if let Ok(v) = commands::block_on(control::call(home, &Request::PublishProgress))
            && let Ok(p) = serde_json::from_value::<PublishProgress>(v)
            && p.active
        {
            seen = p.bytes_read.min(total);
            d.update(seen, total, "importing", |re| {
                format!("publish {channel}: read {seen}/{total} bytes ({:.1}%), {re}", pct(seen, total))
            });
        }
        std::thread::sleep(POLL);
    }
    d.finish();
    let out = job.join().map_err(|_| anyhow::anyhow!("the publish thread panicked"))??;
    let secs = out["seconds"].as_f64().unwrap_or_default();
    eprintln!(
        "publish {channel}: v{} published, {} of sources read in {secs:.1} s ({}/s), {} new in the store",
        out["version"],
        HumanBytes(total.max(seen)),
        HumanBytes((total as f64 / secs.max(1e-3)) as u64),
        HumanBytes(out["stored_bytes"].as_u64().unwrap_or_default())
    );
    Ok(out)
}

/// What `wait` waits for.
#[derive(Debug, Clone)]
pub struct WaitFor {
    /// The channel.
    pub channel: String,
    /// At least this version (None: the newest release the node hears of).
    pub version: Option<u64>,
    /// Give up after this long.
    pub timeout: Duration,
}

fn find<'a>(s: &'a Status, w: &WaitFor) -> Option<&'a ReleaseStatus> {
    s.releases.iter().find(|r| r.channel == w.channel && w.version.is_none_or(|v| r.version >= v))
}

/// `layerhop wait`: until the node holds the release complete; returns the summary line.
pub fn wait(home: &Home, w: &WaitFor) -> Result<String> {
    let first = commands::status(home).context("asking the node for its status")?;
    let t0 = first.traffic;
    let deadline = Instant::now() + w.timeout;
    let want = match w.version {
        Some(v) => format!("{} v{v}", w.channel),
        None => w.channel.clone(),
    };
    let mut d = Display::new(&format!("wait {want}"));
    loop {
        let s = commands::status(home)?;
        let got_metered = s.traffic.metered_in.saturating_sub(t0.metered_in);
        let got_lan = s.traffic.lan_in.saturating_sub(t0.lan_in);
        let lan_share = pct(got_lan, got_metered + got_lan);
        let share = format!("metered {} lan {} ({lan_share:.0}% lan)", HumanBytes(got_metered), HumanBytes(got_lan));
        match find(&s, w) {
            Some(r) if r.complete => {
                d.finish();
                return Ok(format!(
                    "{} v{} complete: {} bytes; received {got_metered} bytes metered, {got_lan} bytes lan ({lan_share:.1}% lan) in {:.1} s",
                    r.channel,
                    r.version,
                    r.bytes_total,
                    d.started.elapsed().as_secs_f64()
                ));
            }
            Some(r) => {
                let (have, total, version) = (r.bytes_have, r.bytes_total, r.version);
                d.update(have, total, &share, |re| {
                    format!(
                        "wait {}: v{version} have {have}/{total} bytes ({:.1}%), {re}; received {got_metered} bytes metered, {got_lan} bytes lan ({lan_share:.1}% lan)",
                        w.channel,
                        pct(have, total)
                    )
                });
                if let Some(why) = &r.stalled {
                    bail!("{want} is stalled: {why}");
                }
            }
            None => d.update(0, 0, "no release yet", |_| format!("wait {want}: no such release on the node yet")),
        }
        if Instant::now() >= deadline {
            d.finish();
            let have = find(&s, w).map(|r| format!("{} of {} bytes held", r.bytes_have, r.bytes_total)).unwrap_or_else(|| "not heard of".into());
            bail!("timed out after {} waiting for {want}: {have}", HumanDuration(w.timeout));
        }
        std::thread::sleep(POLL);
    }
}
