//! Running one scenario: generate its releases, start a cluster per variant, publish each
//! release, watch every site converge (firing the scenario's events on the way), and turn
//! snapshots taken before and after each release into figures.
//!
//! Waiting is polling with deadlines: statuses every [`POLL`], a release's deadline from the
//! scenario's `timeout_secs`; a site that misses it fails the run naming its laggards.

use crate::cluster::{Cluster, POLL, State};
use crate::content::{Built, Generator};
use crate::measure::{self, DockerCaches, Figures, Inputs, Snapshot, WireSizes};
use crate::scenario::{Action, Event, MAIN_GROUP, Scenario};
use anyhow::{Context, Result, anyhow, bail};
use layerhop_node::control::{self, Request};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How a run is done.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Keep the homes and generated files.
    pub keep: bool,
    /// Where to put them (default: the system's temp dir).
    pub work_dir: Option<PathBuf>,
}

/// One group of a site, over the whole run.
#[derive(Debug, Clone, Serialize)]
pub struct GroupFigures {
    /// Group name.
    pub group: String,
    /// Devices ever started in it.
    pub devices: usize,
    /// Metered bytes (device counters).
    pub metered_bytes: u64,
    /// LAN bytes received.
    pub lan_bytes: u64,
    /// Chunks from the seed.
    pub chunks_from_seed: u64,
    /// Chunks from site peers.
    pub chunks_from_peers: u64,
}

/// One device over the whole run.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceFigures {
    /// `site/group-i`.
    pub name: String,
    /// "up", "down" or "crashed" at the end.
    pub state: String,
    /// Metered bytes, both directions (its own counters).
    pub metered_bytes: u64,
    /// LAN bytes received.
    pub lan_bytes: u64,
    /// Chunks from the seed.
    pub chunks_from_seed: u64,
    /// Chunks from site peers.
    pub chunks_from_peers: u64,
}

/// One site's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SiteFigures {
    /// Site name.
    pub site: String,
    /// Totals over the releases.
    #[serde(flatten)]
    pub totals: Figures,
    /// Per release.
    pub releases: Vec<Figures>,
    /// Per group.
    pub groups: Vec<GroupFigures>,
    /// Per device.
    pub devices: Vec<DeviceFigures>,
}

/// Something an event did.
#[derive(Debug, Clone, Serialize)]
pub struct EventLog {
    /// Release index (1-based).
    pub release: usize,
    /// Site.
    pub site: String,
    /// What happened.
    pub action: String,
    /// The watched progress when it fired (None: it never fired).
    pub progress: Option<f64>,
    /// Seconds after the publish.
    pub seconds: f64,
    /// Devices acted on.
    pub devices: Vec<String>,
}

/// One variant of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioFigures {
    /// Scenario name.
    pub name: String,
    /// `<sites>x<devices>`.
    pub variant: String,
    /// What it shows.
    pub description: String,
    /// Devices per site in the main group.
    pub devices_per_site: usize,
    /// Nodes started (seed included).
    pub nodes: usize,
    /// Wall time of the variant (cluster start to stop).
    pub wall_seconds: f64,
    /// Peak RSS of each child process that hosted a site (processes = "per-site").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub host_peak_rss_bytes: Vec<u64>,
    /// Uncompressed bytes of each release's layers and models.
    pub release_bytes: Vec<u64>,
    /// Seconds each publish took (import + sign).
    pub publish_seconds: Vec<f64>,
    /// Bytes over all of the seed's links.
    pub seed_metered_bytes: u64,
    /// The largest site amplification.
    pub max_amplification: f64,
    /// Events.
    pub events: Vec<EventLog>,
    /// Per site.
    pub sites: Vec<SiteFigures>,
}

/// Run every variant of `sc`, pushing each one's figures onto `out` as soon as it is done (so a
/// failing variant does not lose the ones before it) and printing its table.
pub async fn run_scenario(sc: &Scenario, opts: &Options, out: &mut Vec<ScenarioFigures>) -> Result<()> {
    let mut b = tempfile::Builder::new();
    let prefix = format!("layerhop-sim-{}-", sc.name);
    b.prefix(&prefix);
    let work = match &opts.work_dir {
        Some(d) => b.tempdir_in(d),
        None => b.tempdir(),
    }
    .context("creating the work directory")?;
    eprintln!("[{}] work directory {}", sc.name, work.path().display());
    let started = Instant::now();
    let (content, releases, sample, tag) = (work.path().join("content"), sc.releases.clone(), sc.sample.clone(), format!("{}:latest", sc.channel));
    let built = tokio::task::spawn_blocking(move || -> Result<Vec<Built>> {
        let mut g = Generator::new(&content, sample, &tag);
        releases.iter().enumerate().map(|(i, r)| g.build(i, r).with_context(|| format!("generating release {}", i + 1))).collect()
    })
    .await??;
    eprintln!("[{}] generated {} releases in {:.1}s", sc.name, built.len(), started.elapsed().as_secs_f64());
    let mut result = Ok(());
    for n in sc.devices.list() {
        let root = work.path().join(format!("{}x{n}", sc.sites));
        let r = run_variant(sc, n, &built, &root).await.with_context(|| format!("scenario {} ({}x{n})", sc.name, sc.sites));
        if !opts.keep {
            let _ = std::fs::remove_dir_all(&root); // keep the disk bounded between variants
        }
        match r {
            Ok(f) => {
                eprint!("{}", crate::report::table(std::slice::from_ref(&f)));
                out.push(f);
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if opts.keep {
        eprintln!("[{}] kept {}", sc.name, work.keep().display());
    }
    result
}

fn site_name(i: usize) -> String {
    format!("site-{i}")
}

async fn run_variant(sc: &Scenario, per_site: usize, built: &[Built], root: &Path) -> Result<ScenarioFigures> {
    let started = Instant::now();
    let variant = format!("{}x{per_site}", sc.sites);
    let mut c = Cluster::start(&root.join("nodes"), sc.crashes(), sc.discovery == crate::scenario::Discovery::Config).await?;
    if sc.processes == crate::scenario::Processes::PerSite {
        c.hosts = Some(crate::host::Hosts::default());
    }
    for s in 0..sc.sites {
        for _ in 0..per_site {
            c.add_device(&site_name(s), MAIN_GROUP, &sc.config).await?;
        }
        for g in &sc.groups {
            let mut cfg = sc.config.clone();
            cfg.extend(g.config.clone());
            for _ in 0..g.devices {
                c.add_device(&site_name(s), &g.name, &cfg).await?;
            }
        }
    }
    let all: Vec<usize> = (0..c.devices.len()).collect();
    c.start_devices(&all).await?;
    let meshed = Duration::from_secs(60 + c.devices.len() as u64);
    c.wait_meshed(meshed).await?;
    eprintln!("[{} {variant}] {} devices up and meshed in {:.1}s", sc.name, c.devices.len(), started.elapsed().as_secs_f64());
    let result = releases(sc, &mut c, built).await;
    c.shutdown().await;
    let host_peaks: Vec<u64> = c.hosts.as_ref().map(|h| h.peaks.iter().map(|p| p.1).collect()).unwrap_or_default();
    let (sites, events, publish_seconds, seed_bytes) = result?;
    let max_amplification = sites.iter().map(|s| s.totals.amplification).fold(0.0, f64::max);
    Ok(ScenarioFigures {
        name: sc.name.clone(),
        variant,
        description: sc.description.clone(),
        devices_per_site: per_site,
        nodes: c.devices.len() + 1,
        wall_seconds: started.elapsed().as_secs_f64(),
        host_peak_rss_bytes: host_peaks,
        release_bytes: built.iter().map(|b| b.bytes).collect(),
        publish_seconds,
        seed_metered_bytes: seed_bytes,
        max_amplification,
        events,
        sites,
    })
}

type Outcome = (Vec<SiteFigures>, Vec<EventLog>, Vec<f64>, u64);

async fn releases(sc: &Scenario, c: &mut Cluster, built: &[Built]) -> Result<Outcome> {
    let sites: Vec<String> = (0..sc.sites).map(site_name).collect();
    let mut wire = WireSizes::new(&c.seed.home);
    let mut caches = DockerCaches::default();
    let mut events = Vec::new();
    let mut publish_seconds = Vec::new();
    let mut before = measure::snapshot(c).await?;
    let first = before.clone();
    let mut per_release: BTreeMap<String, Vec<Figures>> = BTreeMap::new();
    for (r, b) in built.iter().enumerate() {
        let index = r + 1;
        let t = Instant::now();
        // The seed's store holds exactly the releases' chunks, so what a publish adds to it is
        // what every up-to-date device must fetch: the yardstick of event progress.
        let seed_chunks = c.seed.home.root().to_owned();
        let seed_before = measure_blocking(seed_chunks.clone()).await?;
        let req = Request::Publish { channel: sc.channel.clone(), sources: b.sources.clone(), version: None, ttl_secs: None, priority: Default::default() };
        let published = control::call(&c.seed.home, &req).await.with_context(|| format!("publishing release {index}"))?;
        let version = published["version"].as_u64().ok_or_else(|| anyhow!("publish answered without a version: {published}"))?;
        publish_seconds.push(t.elapsed().as_secs_f64());
        let new_chunks = measure_blocking(seed_chunks).await?.difference(&seed_before).count() as u64;
        let progress = Progress { new_chunks, start: before.chunks.clone() };
        let seconds = converge(sc, c, index, version, &progress, &mut events).await?;
        let after = measure::snapshot(c).await?;
        let release_file = c.seed.home.data().join("releases").join(&sc.channel).join(format!("{version:020}.release"));
        let release_file = std::fs::metadata(&release_file).with_context(|| format!("reading {}", release_file.display()))?.len();
        for s in &sites {
            let members: Vec<usize> = (0..c.devices.len()).filter(|&i| &c.devices[i].site == s).collect();
            let converged: Vec<usize> = members.iter().copied().filter(|&i| c.devices[i].state == State::Up).collect();
            let inputs = Inputs {
                release: (index, version),
                members: &members,
                converged: &converged,
                before: &before,
                after: &after,
                release_file,
                docker: &b.docker,
                seconds: seconds.get(s).copied().unwrap_or_default(),
                only_site: sites.len() == 1,
            };
            let f = measure::site_release(&inputs, &mut wire, &mut caches)?;
            per_release.entry(s.clone()).or_default().push(f);
        }
        before = after;
    }
    let seed_bytes = (before.seed.metered_in + before.seed.metered_out).saturating_sub(first.seed.metered_in + first.seed.metered_out);
    let out = per_release
        .into_iter()
        .map(|(site, releases)| {
            let mut totals = Figures::default();
            for f in &releases {
                totals.add(f);
            }
            let groups = group_figures(c, &site, &first, &before);
            let devices = device_figures(c, &site, &first, &before);
            SiteFigures { site, totals, releases, groups, devices }
        })
        .collect();
    Ok((out, events, publish_seconds, seed_bytes))
}

fn device_figures(c: &Cluster, site: &str, first: &Snapshot, last: &Snapshot) -> Vec<DeviceFigures> {
    c.devices
        .iter()
        .enumerate()
        .filter(|(_, d)| d.site == site)
        .map(|(i, d)| {
            let (a, b) = (last.traffic[i], first.traffic.get(i).copied().unwrap_or_default());
            let (ca, cb) = (last.chunks[i], first.chunks.get(i).copied().unwrap_or_default());
            DeviceFigures {
                name: d.name.clone(),
                state: format!("{:?}", d.state).to_lowercase(),
                metered_bytes: (a.metered_in + a.metered_out).saturating_sub(b.metered_in + b.metered_out),
                lan_bytes: a.lan_in.saturating_sub(b.lan_in),
                chunks_from_seed: ca.0.saturating_sub(cb.0),
                chunks_from_peers: ca.1.saturating_sub(cb.1),
            }
        })
        .collect()
}

fn group_figures(c: &Cluster, site: &str, first: &Snapshot, last: &Snapshot) -> Vec<GroupFigures> {
    let names: BTreeSet<&str> = c.devices.iter().filter(|d| d.site == site).map(|d| d.group.as_str()).collect();
    names
        .into_iter()
        .map(|g| {
            let mut f = GroupFigures { group: g.into(), devices: 0, metered_bytes: 0, lan_bytes: 0, chunks_from_seed: 0, chunks_from_peers: 0 };
            for (i, _) in c.devices.iter().enumerate().filter(|(_, d)| d.site == site && d.group == g) {
                let (a, b) = (last.traffic[i], first.traffic.get(i).copied().unwrap_or_default());
                f.devices += 1;
                f.metered_bytes += (a.metered_in + a.metered_out).saturating_sub(b.metered_in + b.metered_out);
                f.lan_bytes += a.lan_in.saturating_sub(b.lan_in);
                let (ca, cb) = (last.chunks[i], first.chunks.get(i).copied().unwrap_or_default());
                f.chunks_from_seed += ca.0.saturating_sub(cb.0);
                f.chunks_from_peers += ca.1.saturating_sub(cb.1);
            }
            f
        })
        .collect()
}

async fn measure_blocking(home: PathBuf) -> Result<HashSet<measure::Id>> {
    tokio::task::spawn_blocking(move || measure::chunk_ids(&home)).await?
}

/// How far devices are through a release. The status's `bytes_have` is refreshed only when a
/// device walks the release's trees again (once per tree level), so it jumps; chunk counts move
/// with every chunk stored.
struct Progress {
    /// Chunks the release added to the seed's store.
    new_chunks: u64,
    /// (from seed, from peers) per device when the release was published.
    start: Vec<(u64, u64)>,
}

impl Progress {
    fn of(&self, c: &Cluster, devices: &[usize], channel: &str, version: u64) -> Option<f64> {
        if devices.is_empty() {
            return None;
        }
        if self.new_chunks == 0 {
            let (have, total) = devices.iter().map(|&i| c.devices[i].progress(channel, version)).fold((0, 0), |a, p| (a.0 + p.0, a.1 + p.1));
            return (total > 0).then(|| have as f64 / total as f64);
        }
        let fetched: u64 = devices
            .iter()
            .map(|&i| {
                let (now, then) = (c.devices[i].chunks(), self.start.get(i).copied().unwrap_or_default());
                (now.0 + now.1).saturating_sub(then.0 + then.1).min(self.new_chunks)
            })
            .sum();
        Some(fetched as f64 / (self.new_chunks * devices.len() as u64) as f64)
    }
}

/// Poll until every running device of every site holds `version`, firing events on the way;
/// returns seconds to converge per site.
async fn converge(sc: &Scenario, c: &mut Cluster, index: usize, version: u64, p: &Progress, log: &mut Vec<EventLog>) -> Result<BTreeMap<String, f64>> {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(sc.timeout_secs);
    let sites: Vec<String> = (0..sc.sites).map(site_name).collect();
    let mut done: BTreeMap<String, f64> = BTreeMap::new();
    let events: Vec<(usize, &Event)> = sc.events.iter().enumerate().filter(|(_, e)| e.release == index).collect();
    let mut fired: HashSet<(usize, String)> = HashSet::new();
    loop {
        // Devices already complete need no more polling until the end.
        let pending: Vec<usize> = c.up().into_iter().filter(|&i| !c.devices[i].complete(&sc.channel, version)).collect();
        c.poll_lenient(&pending).await?;
        for s in &sites {
            for &(k, e) in &events {
                if fired.contains(&(k, s.clone())) {
                    continue;
                }
                let watched: Vec<usize> = c.up().into_iter().filter(|&i| &c.devices[i].site == s && e.watch.as_ref().is_none_or(|g| &c.devices[i].group == g)).collect();
                let Some(progress) = p.of(c, &watched, &sc.channel, version) else { continue };
                if progress >= e.at_progress {
                    fired.insert((k, s.clone()));
                    let devices = fire(c, sc, s, e).await.with_context(|| format!("event {:?} on {s} in release {index}", e.action))?;
                    eprintln!("[{}] release {index}, {s}: {:?} {} at {:.0}% ({:.1}s)", sc.name, e.action, devices.join(", "), progress * 100.0, t0.elapsed().as_secs_f64());
                    log.push(EventLog { release: index, site: s.clone(), action: format!("{:?}", e.action).to_lowercase(), progress: Some(progress), seconds: t0.elapsed().as_secs_f64(), devices });
                }
            }
            if !done.contains_key(s) {
                let up: Vec<usize> = c.up().into_iter().filter(|&i| &c.devices[i].site == s).collect();
                if up.iter().all(|&i| c.devices[i].complete(&sc.channel, version)) {
                    done.insert(s.clone(), t0.elapsed().as_secs_f64());
                }
            }
        }
        if done.len() == sites.len() {
            for &(k, e) in &events {
                for s in sites.iter().filter(|s| !fired.contains(&(k, (*s).clone()))) {
                    eprintln!("[{}] warning: release {index}, {s}: {:?} never fired (converged before {:.0}%)", sc.name, e.action, e.at_progress * 100.0);
                    log.push(EventLog { release: index, site: s.clone(), action: format!("{:?}", e.action).to_lowercase(), progress: None, seconds: 0.0, devices: vec![] });
                }
            }
            return Ok(done);
        }
        if Instant::now() > deadline {
            bail!("release {index} (v{version}) did not converge within {} s: {}", sc.timeout_secs, laggards(c, &sc.channel, version));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn laggards(c: &Cluster, channel: &str, version: u64) -> String {
    let mut out = Vec::new();
    for i in c.up() {
        let d = &c.devices[i];
        if d.complete(channel, version) {
            continue;
        }
        let (have, total) = d.progress(channel, version);
        let stalled = d.last.as_ref().and_then(|s| s.releases.iter().find(|r| r.channel == channel).and_then(|r| r.stalled.clone()));
        let (seed, peers) = d.chunks();
        out.push(format!("{} holds {have}/{total} bytes (chunks from seed {seed}, from peers {peers}{})", d.name, stalled.map(|s| format!(", stalled: {s}")).unwrap_or_default()));
    }
    out.join("; ")
}

/// Carry out an event on one site; returns the names of the devices acted on.
async fn fire(c: &mut Cluster, sc: &Scenario, site: &str, e: &Event) -> Result<Vec<String>> {
    let group = e.group();
    let mut chosen: Vec<usize> = c.up().into_iter().filter(|&i| c.devices[i].site == site && c.devices[i].group == group).collect();
    match e.action {
        Action::Crash => {
            if e.seed_fetchers {
                chosen.retain(|&i| c.devices[i].chunks().0 > 0);
                chosen.sort_by_key(|&i| std::cmp::Reverse(c.devices[i].chunks().0));
            }
            chosen.truncate(e.count);
            for &i in &chosen {
                c.devices[i].crash().await;
            }
        }
        Action::Restart => {
            chosen.truncate(e.count);
            let set = e.set.clone();
            let nodes = c.devices.iter_mut().enumerate().filter(|(i, _)| chosen.contains(i)).map(|(_, d)| {
                let set = set.clone();
                async move {
                    d.stop().await?;
                    crate::cluster::set_config(&d.home, &set)?;
                    if let Some(s) = set.get("site_sharing").and_then(toml::Value::as_bool) {
                        d.sharing = s;
                    }
                    d.start().await
                }
            });
            futures::future::try_join_all(nodes).await?;
        }
        Action::Join => {
            // A newcomer is configured like the rest of its group, then `set`.
            let mut cfg = sc.config.clone();
            cfg.extend(sc.groups.iter().filter(|g| g.name == group).flat_map(|g| g.config.clone()));
            cfg.extend(e.set.clone());
            chosen.clear();
            for _ in 0..e.count {
                chosen.push(c.add_device(site, group, &cfg).await?);
            }
            c.start_devices(&chosen).await?;
        }
    }
    Ok(chosen.iter().map(|&i| c.devices[i].name.clone()).collect())
}
