//! Generated releases: the files a scenario publishes, and what `docker pull` would move for
//! them.
//!
//! A release is either a generation of [`layerhop_node::sample`] (the demo's image and model)
//! or generated layers and model files that evolve from release to release as the scenario says
//! (unchanged, a fraction of files or bytes changed, new). Everything is deterministic — the same
//! scenario gives the same bytes — so runs are comparable. Layers are written once as tar files
//! in the work directory while their sha256 (the diff_id) and gzip size (flate2 default level,
//! what a registry stores) are computed on the way; an unchanged layer reuses its file. The
//! `docker save` tarball around them is what the seed publishes.

use crate::scenario::{Item, Op, Release, SampleSpec};
use anyhow::{Context, Result, bail};
use flate2::Compression;
use flate2::write::GzEncoder;
use layerhop_node::sample;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// 2024-01-01T00:00:00Z: mtime of revision 0.
const BASE_MTIME: u64 = 1_704_067_200;
const DAY: u64 = 86_400;
const BLOCK: usize = 4096;

/// What `docker pull` of a release moves, by content digest so a cache can skip what it has.
#[derive(Debug, Clone, Default)]
pub struct DockerRelease {
    /// (diff_id, gzip size) per layer.
    pub layers: Vec<(String, u64)>,
    /// Config digest and size.
    pub config: (String, u64),
    /// Registry manifest size (always fetched).
    pub manifest_bytes: u64,
    /// (BLAKE3 hex, size) per model file (a plain file download, skipped when unchanged).
    pub models: Vec<(String, u64)>,
}

/// A release ready to publish.
#[derive(Debug, Clone)]
pub struct Built {
    /// Sources for the seed's publish.
    pub sources: Vec<PathBuf>,
    /// The docker baseline's view of it.
    pub docker: DockerRelease,
    /// Uncompressed bytes of its layers and models.
    pub bytes: u64,
}

/// splitmix64: tiny, fast and stable across crate updates.
struct Rng(u64);

impl Rng {
    fn new(a: u64, b: u64) -> Rng {
        let mut r = Rng(a ^ b.rotate_left(29) ^ 0x5851_F42D_4C95_7F2D);
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let z = (self.0 ^ (self.0 >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

struct FileState {
    path: String,
    size: u64,
    version: u64,
    mtime: u64,
}

struct LayerState {
    seed: u64,
    files: Vec<FileState>,
    revision: u64,
    tar: PathBuf,
    diff_id: String,
    gz: u64,
    size: u64,
}

/// Generates a scenario's releases in order, remembering each item's state.
pub struct Generator {
    dir: PathBuf,
    sample: SampleSpec,
    repo_tag: String,
    layers: BTreeMap<String, LayerState>,
    models: BTreeMap<String, (u64, Vec<u8>, u64)>,
}

impl Generator {
    /// A generator writing under `dir`.
    pub fn new(dir: &Path, sample: SampleSpec, repo_tag: &str) -> Generator {
        Generator { dir: dir.to_owned(), sample, repo_tag: repo_tag.to_owned(), layers: BTreeMap::new(), models: BTreeMap::new() }
    }

    /// Write release `index` (0-based).
    pub fn build(&mut self, index: usize, r: &Release) -> Result<Built> {
        let dir = self.dir.join(format!("release-{}", index + 1));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if let Some(g) = r.sample_generation {
            return self.sample_release(&dir, g);
        }
        let mut sources = Vec::new();
        let mut docker = DockerRelease::default();
        let mut bytes = 0;
        if !r.layers.is_empty() {
            let mut order = Vec::new();
            for item in &r.layers {
                self.layer(item, index).with_context(|| format!("layer {:?}", item.name))?;
                order.push(item.name.clone());
            }
            self.layers.retain(|name, _| order.contains(name));
            let layers: Vec<&LayerState> = order.iter().filter_map(|n| self.layers.get(n)).collect();
            bytes += layers.iter().map(|l| l.size).sum::<u64>();
            let image = dir.join("image.tar");
            let (config, manifest_bytes) = write_docker_save(&layers, &self.repo_tag, index as u64, &image)?;
            docker.layers = layers.iter().map(|l| (l.diff_id.clone(), l.gz)).collect();
            docker.config = config;
            docker.manifest_bytes = manifest_bytes;
            sources.push(image);
        }
        if !r.models.is_empty() {
            let models = dir.join("models");
            std::fs::create_dir_all(&models)?;
            let mut names = Vec::new();
            for item in &r.models {
                let data = self.model(item, index).with_context(|| format!("model {:?}", item.name))?;
                std::fs::write(models.join(&item.name), &data)?;
                docker.models.push((blake3::hash(&data).to_hex().to_string(), data.len() as u64));
                bytes += data.len() as u64;
                names.push(item.name.clone());
            }
            self.models.retain(|n, _| names.contains(n));
            sources.push(models);
        }
        Ok(Built { sources, docker, bytes })
    }

    fn sample_release(&self, dir: &Path, generation: u32) -> Result<Built> {
        let spec = sample::Spec {
            seed: self.sample.seed,
            deps_files: self.sample.deps_files,
            deps_bytes: self.sample.deps_bytes.0,
            model_bytes: usize::try_from(self.sample.model_bytes.0)?,
            repo_tag: self.repo_tag.clone(),
        };
        let image = dir.join("image.tar");
        let info = sample::write_docker_save(&spec, generation, &image).context("writing the sample image")?;
        let model = sample::write_model_dir(&spec, generation, &dir.join("models")).context("writing the sample model")?;
        let data = std::fs::read(&model)?;
        let docker = DockerRelease {
            layers: info.diff_ids.iter().cloned().zip(info.gzip_layer_sizes.iter().copied()).collect(),
            config: (info.config_digest.clone(), info.config_bytes),
            manifest_bytes: info.manifest_bytes,
            models: vec![(blake3::hash(&data).to_hex().to_string(), data.len() as u64)],
        };
        let bytes = info.layer_sizes.iter().sum::<u64>() + data.len() as u64;
        Ok(Built { sources: vec![image, dir.join("models")], docker, bytes })
    }

    fn layer(&mut self, item: &Item, index: usize) -> Result<()> {
        match item.op {
            Op::Unchanged => {
                if !self.layers.contains_key(&item.name) {
                    bail!("`unchanged`, but the previous release has no such layer");
                }
                return Ok(());
            }
            Op::New => {
                let (seed, files, bytes) = (item.seed.unwrap_or(1), item.files.unwrap_or(1), item.bytes.map_or(0, |b| b.0));
                let state = LayerState {
                    seed,
                    files: new_files(&item.name, seed, files, bytes),
                    revision: 0,
                    tar: PathBuf::new(),
                    diff_id: String::new(),
                    gz: 0,
                    size: 0,
                };
                self.layers.insert(item.name.clone(), state);
            }
            Op::Change => {
                let Some(l) = self.layers.get_mut(&item.name) else { bail!("`change`, but the previous release has no such layer") };
                l.revision += 1;
                let n = l.files.len();
                let pick = ((item.fraction.unwrap_or(0.0) * n as f64).round() as usize).clamp(1, n);
                let mut rng = Rng::new(l.seed, 0xC4A9_6E00 + l.revision);
                // A partial Fisher–Yates shuffle: `pick` distinct files, the same ones every run.
                let mut idx: Vec<usize> = (0..n).collect();
                for i in 0..pick {
                    let j = i + rng.below((n - i) as u64) as usize;
                    idx.swap(i, j);
                }
                let when = BASE_MTIME + l.revision * DAY;
                for &i in &idx[..pick] {
                    l.files[i].version += 1;
                    l.files[i].mtime = when + fnv(&l.files[i].path) % 120;
                }
                if item.rebuild {
                    for f in &mut l.files {
                        f.mtime = when + fnv(&f.path) % 120;
                    }
                }
            }
        }
        let Some(l) = self.layers.get_mut(&item.name) else { bail!("layer state lost") };
        l.tar = self.dir.join(format!("layer-{}-r{}-{index}.tar", item.name, l.revision));
        let (diff_id, gz, size) = write_layer(l, &l.tar)?;
        (l.diff_id, l.gz, l.size) = (diff_id, gz, size);
        Ok(())
    }

    fn model(&mut self, item: &Item, index: usize) -> Result<Vec<u8>> {
        match item.op {
            Op::New => {
                let seed = item.seed.unwrap_or(1);
                let len = usize::try_from(item.bytes.map_or(0, |b| b.0))?;
                let mut rng = Rng::new(seed, fnv(&item.name));
                let mut data = Vec::with_capacity(len + 4);
                while data.len() < len {
                    data.extend_from_slice(&(((rng.unit() - 0.5) * 0.2) as f32).to_le_bytes());
                }
                data.truncate(len);
                self.models.insert(item.name.clone(), (seed, data, 0));
            }
            Op::Unchanged => {}
            Op::Change => {
                let Some((seed, data, rev)) = self.models.get_mut(&item.name) else { bail!("`change`, but the previous release has no such model") };
                *rev += 1;
                let n = ((item.fraction.unwrap_or(0.0) * data.len() as f64).round() as usize).clamp(1, data.len().max(1));
                let mut rng = Rng::new(*seed, 0x4d0d_e100 + *rev + index as u64);
                let start = data.len().saturating_sub(n);
                for b in &mut data[start..] {
                    *b ^= (rng.next() as u8) | 1; // never 0: every byte in the range changes
                }
            }
        }
        match self.models.get(&item.name) {
            Some((_, data, _)) => Ok(data.clone()),
            None => bail!("`unchanged`, but the previous release has no such model"),
        }
    }
}

/// Paths and sizes of a new layer: log-uniform 256 B – 128 KiB, one file in 64 of 0.5–2 MiB
/// (like real site-packages), scaled to sum to exactly `bytes`.
fn new_files(name: &str, seed: u64, files: usize, bytes: u64) -> Vec<FileState> {
    let mut rng = Rng::new(seed, fnv(name));
    let raw: Vec<f64> = (0..files)
        .map(|_| if rng.below(64) == 0 { 524_288.0 * (1.0 + 3.0 * rng.unit()) } else { 256.0 * 512f64.powf(rng.unit()) })
        .collect();
    let scale = bytes as f64 / raw.iter().sum::<f64>().max(1.0);
    let mut sizes: Vec<u64> = raw.iter().map(|r| (r * scale) as u64).collect();
    let short = bytes.saturating_sub(sizes.iter().sum());
    if let Some(last) = sizes.last_mut() {
        *last += short;
    }
    let exts = ["py", "pyc", "so", "json", "txt", "h", "bin"];
    sizes
        .into_iter()
        .enumerate()
        .map(|(i, size)| {
            let dir = rng.below(24);
            let ext = exts[rng.below(exts.len() as u64) as usize];
            let path = format!("opt/{name}/pkg{dir:02}/m{i:05}_{:04x}.{ext}", rng.below(1 << 16));
            FileState { mtime: BASE_MTIME + fnv(&path) % 120, path, size, version: 0 }
        })
        .collect()
}

/// A file's contents: 4 KiB blocks that are random (weights, machine code), boilerplate from a
/// small per-layer pool (text, tables) or zeros, so gzip gets ~2x as on real layers.
fn contents(seed: u64, pool: &[Vec<u8>], f: &FileState) -> Vec<u8> {
    let mut rng = Rng::new(seed ^ fnv(&f.path), f.version);
    let len = usize::try_from(f.size).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        match rng.below(20) {
            0..=8 => {
                for _ in 0..BLOCK / 8 {
                    out.extend_from_slice(&rng.next().to_le_bytes());
                }
            }
            9..=17 => {
                let end = out.len() + BLOCK;
                while out.len() < end {
                    out.extend_from_slice(&pool[rng.below(pool.len() as u64) as usize]);
                }
                out.truncate(end);
            }
            _ => out.resize(out.len() + BLOCK, 0),
        }
    }
    out.truncate(len);
    out
}

fn text_pool(seed: u64) -> Vec<Vec<u8>> {
    const WORDS: &[&str] = &["def ", "return ", "self.", "import ", "tensor", "(x)", ":\n    ", "config", " = ", "None", "\n", "# ", "array", "shape"];
    let mut rng = Rng::new(seed, 0x9001);
    (0..24)
        .map(|_| (0..40).flat_map(|_| WORDS[rng.below(WORDS.len() as u64) as usize].bytes()).collect())
        .collect()
}

/// Writes into a file while hashing with sha256 and measuring gzip, in one pass.
struct Tee {
    file: BufWriter<File>,
    sha: Sha256,
    gz: GzEncoder<Counter>,
    size: u64,
}

struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write_all(buf)?;
        self.sha.update(buf);
        self.gz.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn header(kind: tar::EntryType, mode: u32, mtime: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(size);
    h
}

/// Write a layer's tar; returns (diff_id, gzip size, tar size).
fn write_layer(l: &LayerState, path: &Path) -> Result<(String, u64, u64)> {
    let pool = text_pool(l.seed);
    let tee = Tee {
        file: BufWriter::with_capacity(1 << 20, File::create(path).with_context(|| format!("creating {}", path.display()))?),
        sha: Sha256::new(),
        gz: GzEncoder::new(Counter(0), Compression::default()),
        size: 0,
    };
    let mut b = tar::Builder::new(tee);
    let mut files: Vec<&FileState> = l.files.iter().collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut dirs_done = std::collections::BTreeSet::new();
    for f in files {
        // Parent directories first, as a real layer lists them.
        let mut acc = String::new();
        for part in f.path.split('/').collect::<Vec<_>>().split_last().map(|(_, d)| d.to_vec()).unwrap_or_default() {
            acc = if acc.is_empty() { part.to_owned() } else { format!("{acc}/{part}") };
            if dirs_done.insert(acc.clone()) {
                b.append_data(&mut header(tar::EntryType::Directory, 0o755, BASE_MTIME, 0), &acc, io::empty())?;
            }
        }
        let data = contents(l.seed, &pool, f);
        b.append_data(&mut header(tar::EntryType::Regular, 0o644, f.mtime, data.len() as u64), &f.path, data.as_slice())?;
    }
    let mut tee = b.into_inner()?;
    tee.flush()?;
    let gz = tee.gz.finish()?.0;
    Ok((format!("sha256:{}", hex::encode(tee.sha.finalize())), gz, tee.size))
}

/// The `docker save` tarball of `layers`; returns the config (digest, size) and the size of the
/// registry manifest that would describe the gzip layers.
fn write_docker_save(layers: &[&LayerState], repo_tag: &str, index: u64, out: &Path) -> Result<((String, u64), u64)> {
    let when = BASE_MTIME + index * DAY;
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "config": {"Cmd": ["python3", "/app/main.py"], "WorkingDir": "/app"},
        "created": when,
        "history": layers.iter().map(|_| json!({"created_by": "RUN build # buildkit"})).collect::<Vec<_>>(),
        "os": "linux",
        "rootfs": {"diff_ids": diff_ids, "type": "layers"}
    }))?;
    let config_hex = hex::encode(Sha256::digest(&config));
    let mut dirs: Vec<String> = Vec::new();
    for d in &diff_ids {
        let parent = dirs.last().cloned().unwrap_or_default();
        dirs.push(hex::encode(Sha256::digest(format!("{parent}\n{d}").as_bytes())));
    }
    let manifest = serde_json::to_vec(&json!([{
        "Config": format!("{config_hex}.json"),
        "Layers": dirs.iter().map(|d| format!("{d}/layer.tar")).collect::<Vec<_>>(),
        "RepoTags": [repo_tag]
    }]))?;
    let blob = |media: &str, digest: &str, size: u64| json!({"digest": digest, "mediaType": media, "size": size});
    let registry = serde_json::to_vec_pretty(&json!({
        "config": blob("application/vnd.docker.container.image.v1+json", &format!("sha256:{config_hex}"), config.len() as u64),
        "layers": layers.iter().map(|l| blob("application/vnd.docker.image.rootfs.diff.tar.gzip", &l.diff_id, l.gz)).collect::<Vec<_>>(),
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "schemaVersion": 2
    }))?;
    let mut b = tar::Builder::new(BufWriter::with_capacity(1 << 20, File::create(out).with_context(|| format!("creating {}", out.display()))?));
    for (dir, l) in dirs.iter().zip(layers) {
        b.append_data(&mut header(tar::EntryType::Directory, 0o755, when, 0), dir, io::empty())?;
        b.append_data(&mut header(tar::EntryType::Regular, 0o644, when, 3), format!("{dir}/VERSION"), &b"1.0"[..])?;
        let f = File::open(&l.tar).with_context(|| format!("opening {}", l.tar.display()))?;
        b.append_data(&mut header(tar::EntryType::Regular, 0o644, when, f.metadata()?.len()), format!("{dir}/layer.tar"), f)?;
    }
    b.append_data(&mut header(tar::EntryType::Regular, 0o644, when, config.len() as u64), format!("{config_hex}.json"), config.as_slice())?;
    b.append_data(&mut header(tar::EntryType::Regular, 0o644, when, manifest.len() as u64), "manifest.json", manifest.as_slice())?;
    b.into_inner()?.flush()?;
    Ok(((format!("sha256:{config_hex}"), config.len() as u64), registry.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Size;

    fn item(name: &str, op: Op) -> Item {
        Item { name: name.into(), op, seed: Some(3), files: Some(40), bytes: Some(Size(300_000)), fraction: Some(0.25), rebuild: false }
    }

    #[test]
    fn layers_evolve_as_the_ops_say() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut g = Generator::new(dir.path(), SampleSpec::default(), "t/app:v1");
        let r1 = Release { sample_generation: None, layers: vec![item("a", Op::New), item("b", Op::New)], models: vec![item("m.bin", Op::New)] };
        let b1 = g.build(0, &r1).expect("r1");
        let r2 = Release { sample_generation: None, layers: vec![item("a", Op::Unchanged), item("b", Op::Change)], models: vec![item("m.bin", Op::Change)] };
        let b2 = g.build(1, &r2).expect("r2");
        assert_eq!(b1.docker.layers[0], b2.docker.layers[0], "unchanged layer keeps its diff_id");
        assert_ne!(b1.docker.layers[1].0, b2.docker.layers[1].0, "changed layer gets a new diff_id");
        assert_ne!(b1.docker.models[0].0, b2.docker.models[0].0);
        assert_eq!(b1.docker.models[0].1, 300_000);
        let ratio = b1.bytes as f64 / b1.docker.layers.iter().map(|l| l.1).sum::<u64>() as f64;
        assert!(ratio > 1.3, "gzip should find something to compress: {ratio}");
        // Byte-identical when generated again.
        let again = tempfile::tempdir().expect("tempdir");
        let mut g2 = Generator::new(again.path(), SampleSpec::default(), "t/app:v1");
        assert_eq!(g2.build(0, &r1).expect("again").docker.layers, b1.docker.layers);
    }
}
