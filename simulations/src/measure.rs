//! The figures of a run and the two baselines computed on the same releases.
//!
//! Per site and release:
//! - `metered_bytes`: Σ over the site's devices of the growth of `metered_in + metered_out`
//!   (every byte on a link to the seed, handshakes and manifests included). A crashed device's
//!   counters die with it, so the bytes it moved after its last status are missing from that sum;
//!   in a one-site scenario every metered byte crosses the seed's links, so the seed's own
//!   counters are exact and the larger of the two figures is reported (both are in the JSON).
//! - `new_bytes`: what the site did not hold before, each chunk once at its wire size: the union
//!   of chunk ids in the site's stores after the release minus before it (release trees, header
//!   columns and contents are all chunks), each sized as the seed sends it
//!   ([`layerhop_node::codec::compress`]), plus the signed release file.
//! - `amplification` = metered ÷ new: 1.0 is one copy of the new bytes per site.
//! - `lan_bytes`: Σ `lan_in` growth. `seconds_to_converge`: publish reply → last device complete
//!   (site level: the sum over releases).
//! - `docker_bytes`: every device pulls, by digest, the gzip layers and config it lacks, the
//!   manifest, and the model files whose contents changed (a content-addressed file cache).
//! - `no_sharing_bytes`: every device fetches from the seed the chunks it lacked, at their wire
//!   size, plus the release file (what `site_sharing = false` would cost at best).
//!
//! Baselines count the devices that converged on the release; crashed devices are left out of
//! them (which flatters the baselines, not layerhop).

use crate::cluster::Cluster;
use crate::content::DockerRelease;
use anyhow::{Context, Result};
use layerhop_node::home::Home;
use layerhop_node::traffic::Totals;
use layerhop_protocol::wire::ChunkReply;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// A chunk id (32 bytes of BLAKE3).
pub type Id = [u8; 32];

/// The chunk ids in a home's store (its chunk files, temp files skipped, and its pack records).
pub fn chunk_ids(home: &Path) -> Result<HashSet<Id>> {
    let mut out = HashSet::new();
    let dir = home.join("data/chunks");
    for sub in std::fs::read_dir(&dir).into_iter().flatten() {
        let sub = sub?.path();
        if !sub.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&sub).with_context(|| format!("listing {}", sub.display()))? {
            let name = f?.file_name();
            let mut id = [0u8; 32];
            if hex::decode_to_slice(name.to_string_lossy().as_bytes(), &mut id).is_ok() {
                out.insert(id);
            }
        }
    }
    let packed = layerhop_store::packs::record_ids(&home.join("data")).with_context(|| format!("reading the packs of {}", home.display()))?;
    out.extend(packed.into_iter().map(|id| *id.as_bytes()));
    Ok(out)
}

/// Wire sizes of chunks, read from the seed's store (which holds every chunk), cached.
pub struct WireSizes {
    chunks: PathBuf,
    cache: HashMap<Id, u64>,
}

impl WireSizes {
    /// Sizes of the chunks in `seed`'s store.
    pub fn new(seed: &Home) -> WireSizes {
        WireSizes { chunks: seed.data().join("chunks"), cache: HashMap::new() }
    }

    /// Σ wire sizes of `ids`.
    pub fn total<'a>(&mut self, ids: impl Iterator<Item = &'a Id>) -> Result<u64> {
        let mut sum = 0;
        for id in ids {
            sum += match self.cache.get(id) {
                Some(n) => *n,
                None => {
                    let hex = hex::encode(id);
                    let path = self.chunks.join(&hex[..2]).join(&hex);
                    let bytes = std::fs::read(&path).with_context(|| format!("reading chunk {}", path.display()))?;
                    let n = match layerhop_node::codec::compress(bytes) {
                        ChunkReply::Raw(b) | ChunkReply::Zstd(b) => b.len() as u64,
                        ChunkReply::Missing => 0,
                    };
                    self.cache.insert(*id, n);
                    n
                }
            };
        }
        Ok(sum)
    }
}

/// What every node held and had moved at one moment.
#[derive(Clone)]
pub struct Snapshot {
    /// Chunk ids per device (by index; devices added later are absent).
    pub held: Vec<HashSet<Id>>,
    /// Traffic per device over all its runs.
    pub traffic: Vec<Totals>,
    /// (from seed, from peers) chunk counts per device over all its runs.
    pub chunks: Vec<(u64, u64)>,
    /// The seed's traffic.
    pub seed: Totals,
}

/// Poll every running node and list every device's chunks.
pub async fn snapshot(c: &mut Cluster) -> Result<Snapshot> {
    let up = c.up();
    c.poll(&up).await?;
    c.seed.poll().await?;
    let homes: Vec<PathBuf> = c.devices.iter().map(|d| d.home.root().to_owned()).collect();
    let held = tokio::task::spawn_blocking(move || homes.iter().map(|h| chunk_ids(h)).collect::<Result<Vec<_>>>()).await??;
    Ok(Snapshot {
        held,
        traffic: c.devices.iter().map(|d| d.traffic()).collect(),
        chunks: c.devices.iter().map(|d| d.chunks()).collect(),
        seed: c.seed.traffic(),
    })
}

fn metered(t: &Totals) -> u64 {
    t.metered_in + t.metered_out
}

/// Figures of one site for one release (or, summed, for the whole run).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    /// 1-based release index (0 on site totals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<usize>,
    /// Channel version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Devices that converged.
    pub devices: usize,
    /// Metered bytes, both directions (see the module docs).
    pub metered_bytes: u64,
    /// Σ device counters.
    pub metered_bytes_devices: u64,
    /// The seed's counters (one-site scenarios only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metered_bytes_seed: Option<u64>,
    /// Wire bytes new to the site.
    pub new_bytes: u64,
    /// metered ÷ new.
    pub amplification: f64,
    /// LAN bytes received.
    pub lan_bytes: u64,
    /// Publish → last device complete.
    pub seconds_to_converge: f64,
    /// Docker pull baseline.
    pub docker_bytes: u64,
    /// No-sharing baseline.
    pub no_sharing_bytes: u64,
    /// Chunks the site's devices took from the seed.
    pub chunks_from_seed: u64,
    /// Chunks they took from site peers.
    pub chunks_from_peers: u64,
}

impl Figures {
    /// Add another release's figures (site totals).
    pub fn add(&mut self, o: &Figures) {
        self.devices = self.devices.max(o.devices);
        self.metered_bytes += o.metered_bytes;
        self.metered_bytes_devices += o.metered_bytes_devices;
        self.metered_bytes_seed = match (self.metered_bytes_seed, o.metered_bytes_seed) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.new_bytes += o.new_bytes;
        self.lan_bytes += o.lan_bytes;
        self.seconds_to_converge += o.seconds_to_converge;
        self.docker_bytes += o.docker_bytes;
        self.no_sharing_bytes += o.no_sharing_bytes;
        self.chunks_from_seed += o.chunks_from_seed;
        self.chunks_from_peers += o.chunks_from_peers;
        self.amplification = ratio(self.metered_bytes, self.new_bytes);
    }
}

/// a ÷ b, rounded to 4 places (0 when b is 0).
pub fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { (a as f64 / b as f64 * 10_000.0).round() / 10_000.0 }
}

/// Per-device content caches of the docker baseline.
#[derive(Default)]
pub struct DockerCaches(HashMap<usize, HashSet<String>>);

impl DockerCaches {
    /// Bytes device `d` pulls for `r`, and remember what it then has.
    pub fn pull(&mut self, d: usize, r: &DockerRelease) -> u64 {
        let cache = self.0.entry(d).or_default();
        let mut n = r.manifest_bytes;
        for (digest, size) in r.layers.iter().chain(std::iter::once(&r.config)).chain(&r.models) {
            if !digest.is_empty() && cache.insert(digest.clone()) {
                n += size;
            }
        }
        n
    }
}

/// Everything needed to compute one site's figures for one release.
pub struct Inputs<'a> {
    /// Release index (1-based) and version.
    pub release: (usize, u64),
    /// Indices of the site's devices (every one ever started).
    pub members: &'a [usize],
    /// Indices of those that converged.
    pub converged: &'a [usize],
    /// Before and after the release.
    pub before: &'a Snapshot,
    /// After.
    pub after: &'a Snapshot,
    /// Size of the signed release file.
    pub release_file: u64,
    /// Docker's view of the release.
    pub docker: &'a DockerRelease,
    /// Publish → last device complete.
    pub seconds: f64,
    /// Whether the scenario has this one site (the seed's counters are then the site's).
    pub only_site: bool,
}

/// One site's figures for one release; updates the docker caches.
pub fn site_release(i: &Inputs<'_>, wire: &mut WireSizes, caches: &mut DockerCaches) -> Result<Figures> {
    let empty = HashSet::new();
    let before_of = |d: usize| i.before.held.get(d).unwrap_or(&empty);
    let zero = Totals::default();
    let mut f = Figures { release: Some(i.release.0), version: Some(i.release.1), devices: i.converged.len(), seconds_to_converge: i.seconds, ..Figures::default() };
    let mut union_before: HashSet<&Id> = HashSet::new();
    let mut union_after: HashSet<&Id> = HashSet::new();
    for &d in i.members {
        let (tb, ta) = (i.before.traffic.get(d).unwrap_or(&zero), &i.after.traffic[d]);
        f.metered_bytes_devices += metered(ta).saturating_sub(metered(tb));
        f.lan_bytes += ta.lan_in.saturating_sub(tb.lan_in);
        let (cb, ca) = (i.before.chunks.get(d).copied().unwrap_or_default(), i.after.chunks[d]);
        f.chunks_from_seed += ca.0.saturating_sub(cb.0);
        f.chunks_from_peers += ca.1.saturating_sub(cb.1);
        union_before.extend(before_of(d));
        union_after.extend(&i.after.held[d]);
    }
    f.metered_bytes = f.metered_bytes_devices;
    if i.only_site {
        let seed = metered(&i.after.seed).saturating_sub(metered(&i.before.seed));
        f.metered_bytes_seed = Some(seed);
        f.metered_bytes = f.metered_bytes.max(seed);
    }
    f.new_bytes = wire.total(union_after.iter().filter(|id| !union_before.contains(*id)).copied())? + i.release_file;
    f.amplification = ratio(f.metered_bytes, f.new_bytes);
    for &d in i.converged {
        let had = before_of(d);
        f.no_sharing_bytes += wire.total(i.after.held[d].iter().filter(|id| !had.contains(*id)))? + i.release_file;
        f.docker_bytes += caches.pull(d, i.docker);
    }
    Ok(f)
}
