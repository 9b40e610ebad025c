//! The scenario format: one TOML file per scenario in `simulations/scenarios/`.
//!
//! Scenarios are data so that a new fleet shape or release pattern is a new file, not new code,
//! and so that the figures in the README can be reproduced from what is in the repo.
//!
//! ```toml
//! name = "fleet"                 # default: the file name without .toml
//! description = "…"
//! channel = "edge-app"           # default "app"
//! run_by_default = true          # false: runs only when named with --scenario
//! timeout_secs = 600             # deadline for every device to converge on one release
//! sites = 5                      # sites named site-0, site-1, …
//! devices = [1, 10, 50]          # devices per site (group "device"); a list runs one variant
//!                                # per entry, one after another, each on a fresh cluster
//! config = { lease_secs = 5 }    # config.toml keys written into every device's config
//! processes = "one"              # "one": every node in this process; "per-site": each site's
//!                                # devices in a child process (see host.rs; no events then)
//! discovery = "seed"             # how site peers meet: "seed" (the seed's peer exchange, the
//!                                # default deployment) or "config" (fixed ports; each device's
//!                                # `site_peers` lists the devices enrolled before it, so every
//!                                # pair has one connection; see cluster.rs for why)
//!
//! [[group]]                      # more devices per site, with their own config keys
//! name = "vehicle"
//! devices = 4
//! config = { site_sharing = false }
//!
//! [sample]                       # the spec of `sample_generation` releases (layerhop_node::sample)
//! deps_files = 3000
//! deps_bytes = "40 MiB"          # sizes: an integer of bytes or "N B|KiB|MiB|GiB"
//! model_bytes = "6 KiB"
//!
//! [[release]]                    # a release: either a sample generation …
//! sample_generation = 0
//!
//! [[release]]                    # … or generated layers (an image) and model files
//! layers = [
//!   { name = "os", seed = 1, files = 600, bytes = "6 MiB" },           # op "new" by default
//!   { name = "deps", op = "change", fraction = 0.1, rebuild = true },  # 10% of files new
//!   { name = "base", op = "unchanged" },                               # byte-identical
//! ]
//! models = [
//!   { name = "detector.onnx", seed = 7, bytes = "3 MiB" },
//!   { name = "detector.onnx", op = "change", fraction = 0.05 },        # last 5% of bytes
//! ]
//!
//! [[event]]                      # something that happens to every site during a release
//! release = 1                    # 1-based index of the release
//! at_progress = 0.3              # once the watched devices fetched 30% of the release's new chunks
//! watch = "vehicle"              # whose progress (a group); default every device of the site
//! action = "crash"               # crash (task dropped, like kill -9) | restart | join
//! group = "device"               # whom; default "device"
//! count = 5
//! seed_fetchers = true           # crash: only devices that fetched from the seed, most first
//! set = { site_sharing = true }  # restart, join: config keys written before (re)starting
//! ```
//!
//! Layer ops: `new` needs `seed`, `files` (≥ 1) and `bytes`; `unchanged` keeps the previous
//! release's tar byte for byte (same diff_id); `change` gives `fraction` of the files new
//! contents (and mtimes), and with `rebuild = true` moves every file's mtime too, like a rebuilt
//! layer. A layer left out of a release is dropped from the image. Model ops are the same, with
//! `fraction` the share of the file's bytes (at its end) that change.

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The name of the group every site has: the `devices` count.
pub const MAIN_GROUP: &str = "device";

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Scenario name (default: the file stem).
    #[serde(default)]
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// Channel the releases are published on.
    #[serde(default = "default_channel")]
    pub channel: String,
    /// Whether it runs when no `--scenario` is named.
    #[serde(default = "yes")]
    pub run_by_default: bool,
    /// Deadline for one release to reach every device of every site.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Number of sites.
    pub sites: usize,
    /// Devices per site in the main group; one variant per entry.
    pub devices: Counts,
    /// Config keys for every device.
    #[serde(default)]
    pub config: toml::Table,
    /// How site peers find each other.
    #[serde(default)]
    pub discovery: Discovery,
    /// Where the devices run.
    #[serde(default)]
    pub processes: Processes,
    /// Further groups of devices per site.
    #[serde(default, rename = "group")]
    pub groups: Vec<Group>,
    /// Spec of `sample_generation` releases.
    #[serde(default)]
    pub sample: SampleSpec,
    /// The releases, published one after another.
    #[serde(rename = "release")]
    pub releases: Vec<Release>,
    /// Events during releases.
    #[serde(default, rename = "event")]
    pub events: Vec<Event>,
}

fn default_channel() -> String {
    "app".into()
}
fn yes() -> bool {
    true
}
fn default_timeout() -> u64 {
    600
}

/// One count or a list of counts (variants).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Counts {
    /// One variant.
    One(usize),
    /// One variant per entry.
    Many(Vec<usize>),
}

impl Counts {
    /// The counts, one per variant.
    pub fn list(&self) -> Vec<usize> {
        match self {
            Counts::One(n) => vec![*n],
            Counts::Many(v) => v.clone(),
        }
    }
}

/// Where the devices run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Processes {
    /// All in this process.
    #[default]
    One,
    /// One child process per site.
    PerSite,
}

/// How the devices of a site find each other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    /// The seed tells each device its site's members (`peer_exchange`).
    #[default]
    Seed,
    /// Configured `site_peers` addresses, later devices dialing earlier ones.
    Config,
}

/// A group of devices on every site.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Group name (device names are `<group>-<i>`).
    pub name: String,
    /// Devices of this group per site.
    pub devices: usize,
    /// Config keys for these devices (over the scenario's).
    #[serde(default)]
    pub config: toml::Table,
}

/// A size in bytes: an integer or a string like "40 MiB".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Text(s) => parse_size(&s).map(Size).map_err(serde::de::Error::custom),
        }
    }
}

/// "40 MiB" → bytes. Fractions are allowed ("1.5 MiB").
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().with_context(|| format!("size {s:?}: {num:?} is not a number"))?;
    let mult = match unit.trim() {
        "" | "B" => 1u64,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => bail!("size {s:?}: unit {other:?} is not one of B, KiB, MiB, GiB"),
    };
    Ok((n * mult as f64).round() as u64)
}

/// Parameters of `sample_generation` releases.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleSpec {
    /// Generator seed.
    #[serde(default = "one")]
    pub seed: u64,
    /// Files in the deps layer.
    #[serde(default = "demo_files")]
    pub deps_files: usize,
    /// Content bytes of the deps layer.
    #[serde(default = "demo_bytes")]
    pub deps_bytes: Size,
    /// Size of the model.
    #[serde(default = "demo_model")]
    pub model_bytes: Size,
}

fn one() -> u64 {
    1
}
fn demo_files() -> usize {
    3000
}
fn demo_bytes() -> Size {
    Size(100 << 20)
}
fn demo_model() -> Size {
    Size(6 << 10)
}

impl Default for SampleSpec {
    fn default() -> Self {
        SampleSpec { seed: one(), deps_files: demo_files(), deps_bytes: demo_bytes(), model_bytes: demo_model() }
    }
}

/// What a release is made of.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// The sample image and model of this generation.
    #[serde(default)]
    pub sample_generation: Option<u32>,
    /// Generated image layers, bottom first.
    #[serde(default)]
    pub layers: Vec<Item>,
    /// Generated model files.
    #[serde(default)]
    pub models: Vec<Item>,
}

/// How an item changes from the previous release.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// A new item (or one replaced whole).
    #[default]
    New,
    /// Byte-identical to the previous release's.
    Unchanged,
    /// Part of it changed.
    Change,
}

/// A layer or model in a release.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// Name: a layer's identity across releases, or a model's file name.
    pub name: String,
    /// What happened to it.
    #[serde(default)]
    pub op: Op,
    /// New: generator seed.
    pub seed: Option<u64>,
    /// New layer: regular files in it.
    pub files: Option<usize>,
    /// New: content bytes.
    pub bytes: Option<Size>,
    /// Change: share of the files (layer) or bytes (model) that change.
    pub fraction: Option<f64>,
    /// Change of a layer: every mtime moves too.
    #[serde(default)]
    pub rebuild: bool,
}

/// What an event does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Drop the node's runtime at once: its sockets close, nothing is flushed (kill -9).
    Crash,
    /// Stop the node cleanly, rewrite config keys, start it again.
    Restart,
    /// Enroll and start new devices.
    Join,
}

/// Something that happens on every site during a release.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// 1-based release index.
    pub release: usize,
    /// Fraction of the release's new chunks (what it added to the seed's store) the watched
    /// devices have fetched, together, when it fires.
    pub at_progress: f64,
    /// Group whose progress counts; default every live device of the site.
    #[serde(default)]
    pub watch: Option<String>,
    /// What happens.
    pub action: Action,
    /// Group acted on; default the main group.
    #[serde(default)]
    pub group: Option<String>,
    /// How many devices.
    pub count: usize,
    /// Crash: pick only devices that fetched chunks from the seed, most first.
    #[serde(default)]
    pub seed_fetchers: bool,
    /// Config keys written before a restart or join.
    #[serde(default)]
    pub set: toml::Table,
}

impl Event {
    /// The group acted on.
    pub fn group(&self) -> &str {
        self.group.as_deref().unwrap_or(MAIN_GROUP)
    }
}

impl Scenario {
    /// Load and check a scenario file.
    pub fn load(path: &Path) -> Result<Scenario> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut s: Scenario = toml::from_str(&text).with_context(|| format!("in scenario {}", path.display()))?;
        if s.name.is_empty() {
            s.name = path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        }
        s.check().with_context(|| format!("in scenario {}", path.display()))?;
        Ok(s)
    }

    fn check(&self) -> Result<()> {
        ensure!(self.sites >= 1, "`sites` must be at least 1");
        ensure!(!self.releases.is_empty(), "at least one [[release]] is needed");
        ensure!(self.devices.list().iter().all(|&n| n >= 1) && !self.devices.list().is_empty(), "`devices` must be ≥ 1");
        let mut groups = BTreeSet::from([MAIN_GROUP.to_owned()]);
        for g in &self.groups {
            ensure!(groups.insert(g.name.clone()), "group {:?} is defined twice", g.name);
        }
        for (i, r) in self.releases.iter().enumerate() {
            let n = i + 1;
            ensure!(
                r.sample_generation.is_some() != (!r.layers.is_empty() || !r.models.is_empty()),
                "release {n}: give either `sample_generation` or `layers`/`models`"
            );
            for item in r.layers.iter().chain(&r.models) {
                let what = format!("release {n}, {:?}", item.name);
                match item.op {
                    Op::New => ensure!(item.seed.is_some() && item.bytes.is_some(), "{what}: a new item needs `seed` and `bytes`"),
                    Op::Change => ensure!(
                        item.fraction.is_some_and(|f| f > 0.0 && f <= 1.0),
                        "{what}: `change` needs a `fraction` in (0, 1]"
                    ),
                    Op::Unchanged => {}
                }
                ensure!(item.op == Op::New || i > 0, "{what}: the first release can only have new items");
            }
            for l in &r.layers {
                ensure!(l.op != Op::New || l.files.is_some_and(|f| f >= 1), "release {n}, layer {:?}: a new layer needs `files` ≥ 1", l.name);
            }
        }
        ensure!(self.processes == Processes::One || self.events.is_empty(), "events need `processes = \"one\"`");
        for e in &self.events {
            ensure!((1..=self.releases.len()).contains(&e.release), "event: release {} does not exist", e.release);
            ensure!((0.0..1.0).contains(&e.at_progress), "event: `at_progress` must be in [0, 1)");
            for g in [Some(e.group()), e.watch.as_deref()].into_iter().flatten() {
                ensure!(groups.contains(g), "event: no group {g:?}");
            }
        }
        Ok(())
    }

    /// Whether any event crashes a node (those scenarios give every node its own runtime).
    pub fn crashes(&self) -> bool {
        self.events.iter().any(|e| e.action == Action::Crash)
    }
}

/// The scenario files of `dir`, by name.
pub fn list(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "toml") {
            let name = p.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            out.push((name, p));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("40 MiB").expect("ok"), 40 << 20);
        assert_eq!(parse_size("1.5KiB").expect("ok"), 1536);
        assert_eq!(parse_size("12").expect("ok"), 12);
        assert!(parse_size("3 MB").is_err());
    }

    #[test]
    fn the_shipped_scenarios_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let all = list(&dir).expect("list");
        assert!(all.len() >= 5, "{all:?}");
        for (_, p) in all {
            Scenario::load(&p).expect("loads");
        }
    }

    #[test]
    fn mistakes_are_named() {
        let bad = "sites = 1\ndevices = 2\n[[release]]\nlayers = [{ name = \"a\", op = \"change\", fraction = 0.5 }]\n";
        let s: Scenario = toml::from_str(bad).expect("parses");
        let err = format!("{:#}", s.check().expect_err("first release cannot change"));
        assert!(err.contains("first release"), "{err}");
    }
}
