//! Deterministic generated container images and models for `layerhop demo`, the
//! integration tests and the simulations.
//!
//! A generated *release* mimics an edge ML container: layer [`DEPS_LAYER`] is a big Python
//! `site-packages`-like layer (thousands of `.py`/`.pyc`/`.so`/dist-info files, mostly
//! 1–64 KiB with a few 0.5–4 MiB, plus directories, symlinks, a hard link, long paths and
//! empty files), layer [`APP_LAYER`] a small `app/` layer, and a model ([`MODEL_FILE_NAME`],
//! 6 KiB by default) ships beside the image. [`write_docker_save`] writes a classic
//! `docker save` tarball and returns an [`ImageInfo`]; [`write_model_dir`] writes the model.
//!
//! Why it is built this way:
//! * **Deterministic**: the same `(Spec, generation)` gives byte-identical files (own
//!   splitmix64 PRNG seeded per path, timestamps from [`BASE_MTIME`], entries sorted by path,
//!   JSON keys in sorted order whatever serde_json's `preserve_order`, gzip without mtime).
//! * **Realistic rebuilds**: generation `g > 0` keeps the deps layer's paths, contents, modes
//!   and owners but moves every mtime by exactly `g` days (`BASE_MTIME + g * 86400 +
//!   fnv(path) % 120`): its diff_id changes though only tar headers differ, where digest
//!   dedup fails and content dedup should win. `app/main.py` and the model's last
//!   [`MODEL_DELTA_BYTES`] bytes change too; the model keeps its size.
//! * **Realistic compressibility**: contents mix random segments (like code or weights),
//!   zero padding and repeated boilerplate, so gzip gets ~2.5x on the deps layer as on real
//!   ones, not ~1x (random) or ~1000x (constant bytes).
//! * **Streaming and fast**: a layer tar is teed into a staging file and a SHA-256 while a
//!   second thread gzips it only to measure; memory stays at a few MiB. The default spec
//!   takes ~3.5–4 s in release on 2 cores, mostly deflate.
//!
//! Limitations: no legacy per-layer `json` files (`docker load` reads `manifest.json`); no
//! trailing `/` on directory names; `.so`/`.pyc`/model bytes are only statistically alike
//! real ones; file sizes are nominal ranges scaled (a few percent for the default spec) to
//! sum to exactly `deps_bytes`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Index of the big dependencies layer in the image's layer list and [`ImageInfo`] vectors.
pub const DEPS_LAYER: usize = 0;
/// Index of the small application layer.
pub const APP_LAYER: usize = 1;
/// File name of the model written by [`write_model_dir`].
pub const MODEL_FILE_NAME: &str = "model.onnx";
/// Timestamp (2024-01-01T00:00:00Z) of generation 0; generation `g` adds `g` days.
pub const BASE_MTIME: u64 = 1_704_067_200;
/// Model bytes (at the end of the file, at most half of it) that change in generations `g > 0`.
pub const MODEL_DELTA_BYTES: usize = 384;
/// Smallest `deps_files` honoured: the fixed entries (pip, long paths, `py.typed`) need room.
pub const MIN_DEPS_FILES: usize = 8;

const DAY: u64 = 86_400;
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const SITE: &str = "usr/local/lib/python3.11/site-packages";

/// Parameters of a generated release.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Seed of every pseudo-random choice (paths, sizes, contents).
    pub seed: u64,
    /// Regular files in the deps layer, empty ones included (links and directories are
    /// extra). Values below [`MIN_DEPS_FILES`] are raised to it.
    pub deps_files: usize,
    /// Exact total content bytes of the deps layer's regular files (tar overhead excluded).
    pub deps_bytes: u64,
    /// Exact size of the model file.
    pub model_bytes: usize,
    /// `name:tag` recorded in `manifest.json` and `repositories`.
    pub repo_tag: String,
}

impl Default for Spec {
    /// The demo release: seed 1, 3000 files, 100 MiB of deps, 6 KiB model, `anomaly-detector:v1`.
    fn default() -> Self {
        Spec { seed: 1, deps_files: 3000, deps_bytes: 100 * MIB, model_bytes: 6 * 1024, repo_tag: "anomaly-detector:v1".into() }
    }
}

impl Spec {
    /// A small release (120 files, 2 MiB of deps) that generates in milliseconds, for tests.
    pub fn small(seed: u64) -> Self {
        Spec { seed, deps_files: 120, deps_bytes: 2 * MIB, ..Spec::default() }
    }
}

/// Digests and sizes of a written image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// `sha256:<hex>` of each uncompressed layer tar, in layer order.
    pub diff_ids: Vec<String>,
    /// Uncompressed layer tar sizes.
    pub layer_sizes: Vec<u64>,
    /// Size of each layer gzip-compressed at flate2's default level: what `docker pull` moves.
    pub gzip_layer_sizes: Vec<u64>,
    /// `sha256:<hex>` of each gzip-compressed layer (its registry blob digest).
    pub gzip_layer_digests: Vec<String>,
    /// `sha256:<hex>` of the config JSON (the image ID).
    pub config_digest: String,
    /// Size of the config JSON.
    pub config_bytes: u64,
    /// Size of the docker v2 schema 2 manifest describing the gzip layers.
    pub manifest_bytes: u64,
}

impl ImageInfo {
    /// Bytes a plain `docker pull` transfers: gzip layers + config + manifest.
    pub fn docker_pull_bytes(&self) -> u64 {
        self.gzip_layer_sizes.iter().sum::<u64>() + self.config_bytes + self.manifest_bytes
    }
}

/// Writes generation `generation` of the image to `out` (whose directory must exist) as a
/// classic `docker save` tarball: `<id>/{VERSION,layer.tar}` per layer, `<sha256>.json`
/// config, `manifest.json` and `repositories`. Layer tars are staged in hidden files next
/// to `out` and removed afterwards; `out` is replaced by rename.
pub fn write_docker_save(spec: &Spec, generation: u32, out: &Path) -> io::Result<ImageInfo> {
    let no_name = || io::Error::new(io::ErrorKind::InvalidInput, "output path has no file name");
    let name = out.file_name().ok_or_else(no_name)?.to_string_lossy().into_owned();
    let stage = |what: &str| TempPath(out.with_file_name(format!(".{name}.{what}.tmp")));
    let (deps_tmp, app_tmp, out_tmp) = (stage("deps"), stage("app"), stage("save"));

    let when = BASE_MTIME + u64::from(generation) * DAY;
    let layers = [
        write_layer(&deps_entries(spec), spec.seed, when, &deps_tmp.0)?,
        write_layer(&app_entries(spec, generation), spec.seed, when, &app_tmp.0)?,
    ];
    let diff_ids: Vec<String> = layers.iter().map(|l| format!("sha256:{}", l.sha256)).collect();
    let history = |at: u64, by: &str| json!({"created": rfc3339(at), "created_by": by});
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "config": {
            "Cmd": ["python3", "/app/main.py"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONUNBUFFERED=1"],
            "WorkingDir": "/app"
        },
        "created": rfc3339(when + 600),
        "history": [
            history(when + 300, "RUN /bin/sh -c pip install --no-cache-dir -r requirements.txt # buildkit"),
            history(when + 600, "COPY app /app # buildkit")
        ],
        "os": "linux",
        "rootfs": {"diff_ids": diff_ids, "type": "layers"}
    }))?;
    let config_hex = hex::encode(Sha256::digest(&config));

    // Legacy layer directory names: a chain hash, so (as with docker's v1 IDs) a layer's
    // directory also depends on the layers below it.
    let mut dirs: Vec<String> = Vec::new();
    for diff_id in &diff_ids {
        let parent = dirs.last().cloned().unwrap_or_default();
        dirs.push(hex::encode(Sha256::digest(format!("{parent}\n{diff_id}").as_bytes())));
    }
    let layer_paths: Vec<String> = dirs.iter().map(|d| format!("{d}/layer.tar")).collect();
    let save_manifest =
        serde_json::to_vec(&json!([{"Config": format!("{config_hex}.json"), "Layers": layer_paths, "RepoTags": [spec.repo_tag]}]))?;
    let split = spec.repo_tag.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')); // "host:5000/name" has no tag
    let (repo, tag) = split.unwrap_or((spec.repo_tag.as_str(), "latest"));
    let repositories = serde_json::to_vec(&json!({ repo: { tag: dirs.last() } }))?;

    // Built, not estimated, so manifest_bytes is the real size.
    let blob = |media: &str, hex: &str, size: u64| json!({"digest": format!("sha256:{hex}"), "mediaType": media, "size": size});
    let registry_manifest = serde_json::to_vec_pretty(&json!({
        "config": blob("application/vnd.docker.container.image.v1+json", &config_hex, config.len() as u64),
        "layers": layers.iter().map(|l| blob("application/vnd.docker.image.rootfs.diff.tar.gzip", &l.gz_sha256, l.gz_size))
            .collect::<Vec<_>>(),
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "schemaVersion": 2
    }))?;

    let mut tarball = tar::Builder::new(BufWriter::with_capacity(MIB as usize, File::create(&out_tmp.0)?));
    let mtime = when + 900;
    for (dir, tmp) in dirs.iter().zip([&deps_tmp, &app_tmp]) {
        tarball.append_data(&mut header(tar::EntryType::Directory, 0o755, mtime, 0), dir, io::empty())?;
        append_bytes(&mut tarball, &format!("{dir}/VERSION"), b"1.0", mtime)?;
        let file = File::open(&tmp.0)?;
        let mut h = header(tar::EntryType::Regular, 0o644, mtime, file.metadata()?.len());
        tarball.append_data(&mut h, format!("{dir}/layer.tar"), file)?;
    }
    append_bytes(&mut tarball, &format!("{config_hex}.json"), &config, mtime)?;
    append_bytes(&mut tarball, "manifest.json", &save_manifest, mtime)?;
    append_bytes(&mut tarball, "repositories", &repositories, mtime)?;
    // No fsync: this is regenerable test data, and syncing ~100 MiB would dominate the time.
    tarball.into_inner()?.into_inner().map_err(|e| e.into_error())?;
    fs::rename(&out_tmp.0, out)?;

    Ok(ImageInfo {
        diff_ids,
        layer_sizes: layers.iter().map(|l| l.size).collect(),
        gzip_layer_sizes: layers.iter().map(|l| l.gz_size).collect(),
        gzip_layer_digests: layers.iter().map(|l| format!("sha256:{}", l.gz_sha256)).collect(),
        config_digest: format!("sha256:{config_hex}"),
        config_bytes: config.len() as u64,
        manifest_bytes: registry_manifest.len() as u64,
    })
}

/// Writes generation `generation` of the model to `dir/`[`MODEL_FILE_NAME`], creating
/// `dir`, and returns the file's path.
pub fn write_model_dir(spec: &Spec, generation: u32, dir: &Path) -> io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let path = dir.join(MODEL_FILE_NAME);
    fs::write(&path, model_bytes(spec, generation))?;
    Ok(path)
}

/// The model's bytes: an ONNX-like protobuf preamble, then little-endian f32 weights.
/// For `generation > 0` the last [`MODEL_DELTA_BYTES`] bytes (at most half the file) are
/// XORed with a non-zero per-generation mask — a fine-tuned head — so each of them differs
/// from generation 0 and the size never changes.
pub fn model_bytes(spec: &Spec, generation: u32) -> Vec<u8> {
    let len = spec.model_bytes;
    let mut out = b"\x08\x08\x12\x07pytorch\x1a\x052.1.0:".to_vec();
    out.extend_from_slice(spec.repo_tag.as_bytes());
    let mut rng = Rng(mix(spec.seed, fnv1a(b"model-weights")));
    while out.len() < len {
        out.extend_from_slice(&(((rng.unit() - 0.5) * 0.2) as f32).to_le_bytes());
    }
    out.truncate(len);
    if generation > 0 {
        let mut rng = Rng(mix(spec.seed, 0x4d0d_e100 + u64::from(generation)));
        for b in &mut out[len - MODEL_DELTA_BYTES.min(len / 2)..] {
            *b ^= (rng.next() as u8) | 1;
        }
    }
    out
}

// ---- PRNG and hashing: tiny and self-contained, so output never changes with a crate update.

/// splitmix64: fast, full period, ample statistical quality for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let z = (self.0 ^ (self.0 >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` by multiply-shift (the tiny bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

fn mix(a: u64, b: u64) -> u64 {
    Rng(a ^ b.rotate_left(29)).next()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

// ---- Layer contents.

/// Statistical flavour of a file's contents.
#[derive(Clone, Copy, Debug)]
enum Style {
    /// Source and metadata: mostly boilerplate, some noise (gzip ~4x).
    Text,
    /// Machine code, bytecode, arrays: about half random, some zero padding (gzip ~2x).
    Binary,
}

/// A layer entry; layers are `BTreeMap<path, Kind>` so entries come out sorted.
#[derive(Clone, Debug)]
enum Kind {
    Dir,
    File(u64, Style),
    Inline(Vec<u8>),
    Symlink(String),
    Hardlink(String),
}

const PKGS: &str = "numpy scipy pandas torch onnxruntime sklearn PIL cv2 google/protobuf grpc yaml requests \
    urllib3 certifi charset_normalizer idna dateutil pytz tzdata jinja2 markupsafe click fastapi pydantic \
    pydantic_core starlette uvicorn anyio packaging setuptools pip attr h11 tqdm joblib networkx sympy \
    mpmath filelock fsspec paho/mqtt prometheus_client";
const SUBS: &str = "core _lib lib utils io linalg testing tests ops nn models compat _vendor internal backends \
    fft random sparse stats signal";
const WORDS: &str = "array base common config parser helpers types api registry dispatch format numeric shape \
    tensor module loader cache errors convert session graph stream buffer kernel optim layer metric encoder \
    decoder schema validate pool sched hooks plugin codec util frame index window";
const DIST_FILES: &str = "METADATA RECORD WHEEL INSTALLER top_level.txt LICENSE";
const TOKENS: &[&str] = &[
    "def ", "self", ".", "(", ")", ":\n", "    ", "        ", "return ", "import ", "from ", "class ", "if ",
    "else:\n", "for ", " in ", "None", "True", "False", ", ", " = ", "\n", "raise ", "ValueError", "isinstance",
    "len", "dtype", "shape", "axis", "np.", "torch.", "tensor", "array", "kwargs", "args", "result", "value",
    "key", "name", "data", "config", "_", "0", "1", "\"\"\"", " # ", "[", "]", "{", "}", "'", "lambda ",
];

fn words(list: &'static str) -> Vec<&'static str> {
    list.split_whitespace().collect()
}

/// Boilerplate blocks (docstrings, license headers, symbol tables) shared by a layer's
/// files. The pool (~7 KiB) fits deflate's 32 KiB window so repeats are found, and each
/// block starts with a random identifier so deflate's hash chains stay short: fresh
/// token soup would compress like text too, but makes miniz's deflate ~3x slower.
fn text_pool(seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng(mix(seed, fnv1a(b"text-pool")));
    (0..24)
        .map(|_| {
            let len = 64 + rng.below(449) as usize;
            let mut block: Vec<u8> = (0..6).map(|_| b'a' + rng.below(26) as u8).collect();
            block.push(b'_');
            while block.len() < len {
                block.extend_from_slice(rng.pick(TOKENS).as_bytes());
            }
            block
        })
        .collect()
}

/// A file's deterministic content (depending only on seed and path): segments of
/// 64–1024 bytes, each fresh random bytes, zero padding or a run of pool blocks. Built
/// per file (a few MiB at most), never per layer.
fn content(seed: u64, pool: &[Vec<u8>], path: &str, size: u64, style: Style) -> Vec<u8> {
    let mut rng = Rng(mix(seed, fnv1a(path.as_bytes())));
    // Percent of random / zero segments, tuned for ~2.5x gzip on a whole deps layer.
    let (random, zeros) = match style {
        Style::Text => (22, 0),
        Style::Binary => (45, 8),
    };
    let mut out = Vec::with_capacity(size as usize + 1024);
    while (out.len() as u64) < size {
        let (end, roll) = (out.len() + 64 + rng.below(961) as usize, rng.below(100));
        while out.len() < end {
            if roll < random {
                out.extend_from_slice(&rng.next().to_le_bytes());
            } else if roll < random + zeros {
                out.resize(end, 0);
            } else {
                out.extend_from_slice(&pool[rng.below(pool.len() as u64) as usize]);
            }
        }
        out.truncate(end);
    }
    out.truncate(size as usize);
    out
}

/// The deps layer (independent of the generation). Regular-file sizes sum to exactly
/// `spec.deps_bytes`; the hard link's path sorts after its target's.
fn deps_entries(spec: &Spec) -> BTreeMap<String, Kind> {
    let n = spec.deps_files.max(MIN_DEPS_FILES);
    let [pkgs, subs, names, dist] = [PKGS, SUBS, WORDS, DIST_FILES].map(words);
    let mut rng = Rng(mix(spec.seed, fnv1a(b"deps-layout")));
    // (path, style, class: 0 = empty, 1 = small, 2 = large)
    let mut files: Vec<(String, Style, u8)> = vec![("usr/local/bin/pip".into(), Style::Text, 1)];
    let mut all = BTreeMap::from([
        ("usr/local/bin/pip3".to_string(), Kind::Hardlink("usr/local/bin/pip".into())),
        ("usr/local/bin/python".to_string(), Kind::Symlink("/usr/bin/python3.11".into())),
    ]);
    // Paths over 100 bytes need GNU long-name records, as in real layers.
    for tail in [
        "tensorflow_estimator/python/estimator/canned/linear_optimizer/python/utils/sharded_mutable_dense_hashtable_test_utils.py",
        "google/protobuf/internal/well_known_types_test_proto_generated_descriptor_pool_regression_fixture_pb2.py",
    ] {
        files.push((format!("{SITE}/{tail}"), Style::Text, 1));
    }
    for pkg in pkgs.iter().take((n / 250).clamp(2, pkgs.len())) {
        files.push((format!("{SITE}/{pkg}/py.typed"), Style::Text, 0));
    }
    // Enough large files that, with small files at their mean (63 KiB / ln 64), nominal
    // sizes add up to deps_bytes, keeping the final scaling factor near 1.
    let small_total = n as f64 * 63.0 * KIB as f64 / 64f64.ln();
    let large = (((spec.deps_bytes as f64 - small_total) / (2.25 * MIB as f64)).round() as usize).clamp(1, (n / 20).max(1));
    for i in 0..large {
        let (pkg, word, tag) = (rng.pick(&pkgs).replace('/', "_"), rng.pick(&names), rng.next() as u32);
        let real = format!("lib{word}{i}-{tag:08x}.so");
        if i < 2 {
            // Versioned shared objects are reached through unversioned symlinks.
            all.insert(format!("{SITE}/{pkg}.libs/lib{word}{i}.so"), Kind::Symlink(real.clone()));
        }
        files.push((format!("{SITE}/{pkg}.libs/{real}"), Style::Binary, 2));
    }
    let mut seen: BTreeSet<String> = files.iter().map(|f| f.0.clone()).collect();
    while files.len() < n {
        let pkg = rng.pick(&pkgs);
        let dir = match rng.below(2) {
            0 => format!("{SITE}/{pkg}/{}", rng.pick(&subs)),
            _ => format!("{SITE}/{pkg}"),
        };
        let stem = format!("{}_{}", rng.pick(&names), rng.pick(&names));
        let (dir, stem, ext, style) = match rng.below(100) {
            0..50 => (dir, stem, ".py", Style::Text),
            50..72 => (format!("{dir}/__pycache__"), stem, ".cpython-311.pyc", Style::Binary),
            72..77 => {
                let h = fnv1a(pkg.as_bytes());
                let version = format!("{}.{}.{}", h % 3 + 1, (h >> 8) % 30, (h >> 16) % 10);
                (format!("{SITE}/{}-{version}.dist-info", pkg.replace('/', "_")), rng.pick(&dist).into(), "", Style::Text)
            }
            77..87 => (dir, stem, ".pyi", Style::Text),
            87..90 => (format!("{dir}/data"), stem, ".npy", Style::Binary),
            90..95 => (format!("{dir}/data"), stem, ".json", Style::Text),
            _ => (dir, format!("_{stem}"), ".cpython-311-x86_64-linux-gnu.so", Style::Binary),
        };
        let mut path = format!("{dir}/{stem}{ext}");
        if seen.contains(&path) {
            path = format!("{dir}/{stem}_{}{ext}", files.len());
        }
        if seen.insert(path.clone()) {
            files.push((path, style, 1));
        }
    }

    // Nominal sizes: log-uniform 1–64 KiB (small), uniform 0.5–4 MiB (large); then scaled
    // with integer arithmetic, the remainder going to the largest file, to hit deps_bytes.
    let raw: Vec<u64> = files
        .iter()
        .map(|f| match f.2 {
            0 => 0,
            1 => (1024.0 * 64f64.powf(rng.unit())) as u64,
            _ => MIB / 2 + rng.below(7 * MIB / 2),
        })
        .collect();
    let total = u128::from(raw.iter().sum::<u64>().max(1));
    let mut sizes: Vec<u64> = raw.iter().map(|&r| (u128::from(r) * u128::from(spec.deps_bytes) / total) as u64).collect();
    let short = spec.deps_bytes.saturating_sub(sizes.iter().sum());
    if let Some(big) = (0..sizes.len()).max_by_key(|&i| (raw[i], std::cmp::Reverse(i))) {
        sizes[big] += short;
    }
    for ((path, style, _), size) in files.into_iter().zip(sizes) {
        all.insert(path, Kind::File(size, style));
    }
    with_parent_dirs(all)
}

/// The app layer: a few source and config files; `app/main.py` embeds the generation.
fn app_entries(spec: &Spec, generation: u32) -> BTreeMap<String, Kind> {
    let mut main = format!("#!/usr/bin/env python3\n# build generation {generation}\nBUILD = {generation}\n").into_bytes();
    main.extend(content(spec.seed, &text_pool(spec.seed), "app/main.py", 6 * KIB, Style::Text));
    let config = b"model: /models/model.onnx\nthreshold: 0.87\nwindow: 256\nmqtt:\n  topic: sensors/+/vibration\n";
    with_parent_dirs(BTreeMap::from([
        ("app/main.py".into(), Kind::Inline(main)),
        ("app/config.yaml".into(), Kind::Inline(config.to_vec())),
        ("app/requirements.txt".into(), Kind::Inline(PKGS.replace('/', "-").replace(char::is_whitespace, "\n").into_bytes())),
        ("app/detector/__init__.py".into(), Kind::File(0, Style::Text)),
        ("app/detector/pipeline.py".into(), Kind::File(14 * KIB, Style::Text)),
        ("app/detector/features.py".into(), Kind::File(9 * KIB, Style::Text)),
    ]))
}

/// Adds an entry for every ancestor directory (parents sort before their children).
fn with_parent_dirs(mut all: BTreeMap<String, Kind>) -> BTreeMap<String, Kind> {
    let mut dirs = BTreeSet::new();
    for path in all.keys() {
        let mut p = path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            dirs.insert(parent.to_string());
            p = parent;
        }
    }
    all.extend(dirs.into_iter().map(|d| (d, Kind::Dir)));
    all
}

fn header(kind: tar::EntryType, mode: u32, mtime: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(size);
    h
}

fn append_bytes<W: Write>(b: &mut tar::Builder<W>, path: &str, data: &[u8], mtime: u64) -> io::Result<()> {
    b.append_data(&mut header(tar::EntryType::Regular, 0o644, mtime, data.len() as u64), path, data)
}

// ---- Streaming layer writer.

/// Hashes and counts what passes through to `inner`.
struct Hashed<W> {
    inner: W,
    sha: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct LayerOut {
    sha256: String,
    size: u64,
    gz_sha256: String,
    gz_size: u64,
}

const CHUNK: usize = 256 * 1024;

/// Writes 256 KiB chunks to the staging file and hands them to the gzip thread: deflate is
/// the slowest stage, so on two cores it runs beside generation and hashing.
struct Tee {
    file: File,
    chunk: Vec<u8>,
    tx: mpsc::SyncSender<Vec<u8>>,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = buf.len().min(CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..k]);
        if self.chunk.len() == CHUNK {
            self.flush()?;
        }
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.write_all(&self.chunk)?;
        let full = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
        self.tx.send(full).map_err(|_| io::Error::other("gzip thread stopped"))
    }
}

/// Writes `entries` as a tar to `path`; each entry's mtime is `when + fnv(path) % 120`.
fn write_layer(entries: &BTreeMap<String, Kind>, seed: u64, when: u64, path: &Path) -> io::Result<LayerOut> {
    let pool = text_pool(seed);
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(4);
    thread::scope(|scope| {
        let gz = scope.spawn(move || {
            let mut enc = GzEncoder::new(Hashed { inner: io::sink(), sha: Sha256::new(), len: 0 }, Compression::default());
            rx.into_iter().try_for_each(|chunk| enc.write_all(&chunk))?;
            enc.finish()
        });
        // On an early `?` return the builder, and with it `tx`, is dropped, so the gzip
        // thread sees the channel close and the scope's implicit join cannot hang.
        let tee = Tee { file: File::create(path)?, chunk: Vec::with_capacity(CHUNK), tx };
        let mut b = tar::Builder::new(Hashed { inner: tee, sha: Sha256::new(), len: 0 });
        for (path, kind) in entries {
            let mtime = when + fnv1a(path.as_bytes()) % 120;
            let exec = path.ends_with(".so") || path.starts_with("usr/local/bin/") || path == "app/main.py";
            let mode = if exec { 0o755 } else { 0o644 };
            match kind {
                Kind::Dir => b.append_data(&mut header(tar::EntryType::Directory, 0o755, mtime, 0), path, io::empty())?,
                Kind::File(size, style) => {
                    let data = content(seed, &pool, path, *size, *style);
                    b.append_data(&mut header(tar::EntryType::Regular, mode, mtime, *size), path, data.as_slice())?;
                }
                Kind::Inline(data) => {
                    b.append_data(&mut header(tar::EntryType::Regular, mode, mtime, data.len() as u64), path, data.as_slice())?
                }
                Kind::Symlink(to) => b.append_link(&mut header(tar::EntryType::Symlink, 0o777, mtime, 0), path, to)?,
                Kind::Hardlink(to) => b.append_link(&mut header(tar::EntryType::Link, mode, mtime, 0), path, to)?,
            }
        }
        let Hashed { inner: mut tee, sha, len } = b.into_inner()?;
        tee.flush()?;
        drop(tee); // closes the channel, ending the gzip thread's loop
        let gz = gz.join().map_err(|_| io::Error::other("gzip thread panicked"))??;
        Ok(LayerOut { sha256: hex::encode(sha.finalize()), size: len, gz_sha256: hex::encode(gz.sha.finalize()), gz_size: gz.len })
    })
}

/// A staging file removed on drop, so failures leave no litter next to the output.
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Formats Unix seconds as RFC 3339 UTC (Hinnant's civil-from-days; no date crate needed).
fn rfc3339(secs: u64) -> String {
    let (days, rem) = ((secs / DAY) as i64 + 719_468, secs % DAY);
    let (era, doe) = (days.div_euclid(146_097), days.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let (d, m) = (doy - (153 * mp + 2) / 5 + 1, if mp < 10 { mp + 3 } else { mp - 9 });
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // panicking on unexpected errors is what a test should do
mod tests {
    use super::*;
    use serde_json::Value;
    use std::collections::HashMap;
    use std::io::Read;

    fn tiny(seed: u64) -> Spec {
        Spec { seed, deps_files: 60, deps_bytes: 512 * KIB, model_bytes: 6 * 1024, repo_tag: "t/det:v1".into() }
    }

    /// An image's info, files by path, manifest entry, config and layer tars.
    type Saved = (ImageInfo, HashMap<String, Vec<u8>>, Value, Value, Vec<Vec<u8>>);
    fn save(spec: &Spec, generation: u32, out: &Path) -> Saved {
        let info = write_docker_save(spec, generation, out).unwrap();
        let mut files = HashMap::new();
        for e in tar::Archive::new(File::open(out).unwrap()).entries().unwrap() {
            let (mut e, mut data) = (e.unwrap(), Vec::new());
            e.read_to_end(&mut data).unwrap();
            files.insert(e.path().unwrap().to_string_lossy().into_owned(), data);
        }
        let m = serde_json::from_slice::<Value>(&files["manifest.json"]).unwrap()[0].clone();
        let config = serde_json::from_slice(&files[m["Config"].as_str().unwrap()]).unwrap();
        let layers = m["Layers"].as_array().unwrap().iter().map(|l| files[l.as_str().unwrap()].clone()).collect();
        (info, files, m, config, layers)
    }

    /// A layer tar's entries as ((type, path, mode, uid, gid, link target, data), mtime).
    type Item = (tar::EntryType, String, u32, u64, u64, Option<String>, Vec<u8>);
    fn items(layer: &[u8]) -> Vec<(Item, u64)> {
        let mut ar = tar::Archive::new(layer);
        let entries = ar.entries().unwrap().map(|e| {
            let (mut e, mut data) = (e.unwrap(), Vec::new());
            e.read_to_end(&mut data).unwrap();
            let (h, path) = (e.header().clone(), e.path().unwrap().to_string_lossy().into_owned());
            let link = e.link_name().unwrap().map(|l| l.to_string_lossy().into_owned());
            ((h.entry_type(), path, h.mode().unwrap(), h.uid().unwrap(), h.gid().unwrap(), link, data), h.mtime().unwrap())
        });
        entries.collect()
    }

    fn sha(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    #[test]
    fn same_spec_and_generation_is_byte_identical() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for g in [0, 3] {
            let (pa, pb) = (a.path().join("img.tar"), b.path().join("img.tar"));
            assert_eq!(write_docker_save(&tiny(5), g, &pa).unwrap(), write_docker_save(&tiny(5), g, &pb).unwrap());
            assert_eq!(fs::read(pa).unwrap(), fs::read(pb).unwrap());
            let (ma, mb) = (write_model_dir(&tiny(5), g, a.path()).unwrap(), write_model_dir(&tiny(5), g, b.path()).unwrap());
            assert_eq!(fs::read(ma).unwrap(), fs::read(mb).unwrap());
        }
        assert_eq!(fs::read_dir(a.path()).unwrap().count(), 2, "staging files are removed");
        let other = write_docker_save(&tiny(6), 0, &a.path().join("other.tar")).unwrap();
        assert_ne!(other.diff_ids, write_docker_save(&tiny(5), 0, &a.path().join("img.tar")).unwrap().diff_ids);
    }

    #[test]
    fn rebuild_changes_only_deps_mtimes_and_the_app() {
        let dir = tempfile::tempdir().unwrap();
        let (i0, _, _, _, l0) = save(&tiny(9), 0, &dir.path().join("g0.tar"));
        let (i2, _, _, _, l2) = save(&tiny(9), 2, &dir.path().join("g2.tar"));
        let (e0, e2) = (items(&l0[DEPS_LAYER]), items(&l2[DEPS_LAYER]));
        assert_eq!(e0.len(), e2.len());
        for ((a, t0), (b, t2)) in e0.iter().zip(&e2) {
            assert_eq!(a, b);
            assert_eq!(t2 - t0, 2 * DAY, "{}", a.1);
        }
        assert_eq!(l0[DEPS_LAYER].len(), l2[DEPS_LAYER].len());
        assert_ne!(i0.diff_ids[DEPS_LAYER], i2.diff_ids[DEPS_LAYER]);
        let main = |l: &[u8]| items(l).into_iter().find(|(i, _)| i.1 == "app/main.py").unwrap().0.6;
        assert_ne!(main(&l0[APP_LAYER]), main(&l2[APP_LAYER]));
        assert_ne!(i0.diff_ids[APP_LAYER], i2.diff_ids[APP_LAYER]);
    }

    #[test]
    fn diff_ids_digests_and_sizes_match_the_saved_tarball() {
        let dir = tempfile::tempdir().unwrap();
        let (info, files, m, config, layers) = save(&tiny(3), 59, &dir.path().join("img.tar"));
        assert_eq!(m["RepoTags"], json!(["t/det:v1"]));
        let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
        assert_eq!((layers.len(), &diff_ids), (2, &info.diff_ids));
        assert_eq!(config["rootfs"], json!({"diff_ids": diff_ids, "type": "layers"}));
        assert_eq!(config["history"].as_array().unwrap().len(), layers.len());
        assert_eq!((&config["os"], &config["architecture"]), (&json!("linux"), &json!("amd64")));
        assert_eq!(config["created"], "2024-02-29T00:10:00Z"); // 59 days after BASE_MTIME, a leap day
        let config_name = m["Config"].as_str().unwrap();
        assert_eq!((sha(&files[config_name]), files[config_name].len() as u64), (info.config_digest.clone(), info.config_bytes));
        assert_eq!(format!("sha256:{config_name}"), format!("{}.json", info.config_digest));
        let repos: Value = serde_json::from_slice(&files["repositories"]).unwrap();
        assert_eq!(format!("{}/layer.tar", repos["t/det"]["v1"].as_str().unwrap()), m["Layers"][1].as_str().unwrap());
        for (i, l) in layers.iter().enumerate() {
            let mut gz = GzEncoder::new(Vec::new(), Compression::default());
            gz.write_all(l).unwrap();
            let gz = gz.finish().unwrap();
            assert_eq!(l.len() as u64, info.layer_sizes[i]);
            assert_eq!((gz.len() as u64, sha(&gz)), (info.gzip_layer_sizes[i], info.gzip_layer_digests[i].clone()));
        }
        assert!((300..2000).contains(&info.manifest_bytes), "{}", info.manifest_bytes);
        let gz: u64 = info.gzip_layer_sizes.iter().sum();
        assert_eq!(info.docker_pull_bytes(), gz + info.config_bytes + info.manifest_bytes);
    }

    #[test]
    fn deps_layer_has_realistic_variety_and_exact_totals() {
        let dir = tempfile::tempdir().unwrap();
        let spec = Spec { deps_files: 400, deps_bytes: 6 * MIB, ..tiny(11) };
        let (info, _, _, _, layers) = save(&spec, 0, &dir.path().join("img.tar"));
        let all: Vec<Item> = items(&layers[DEPS_LAYER]).into_iter().map(|(i, _)| i).collect();
        let count = |k: tar::EntryType| all.iter().filter(|i| i.0 == k).count();
        let regular: Vec<&Item> = all.iter().filter(|i| i.0 == tar::EntryType::Regular).collect();
        assert_eq!(regular.len(), spec.deps_files);
        assert_eq!(regular.iter().map(|i| i.6.len() as u64).sum::<u64>(), spec.deps_bytes);
        assert!(regular.iter().filter(|i| i.6.is_empty()).count() >= 2);
        assert!(regular.iter().filter(|i| i.1.len() > 100).count() >= 2);
        assert!(regular.iter().any(|i| i.6.len() as u64 >= MIB / 2));
        assert!(count(tar::EntryType::Directory) > 10 && count(tar::EntryType::Symlink) >= 2);
        assert_eq!(count(tar::EntryType::Link), 1);
        assert!(all.windows(2).all(|w| w[0].1 < w[1].1), "sorted: parents first, hard link after its target");
        let ratio = info.layer_sizes[DEPS_LAYER] as f64 / info.gzip_layer_sizes[DEPS_LAYER] as f64;
        assert!((2.0..3.2).contains(&ratio), "gzip ratio {ratio} should be like a real layer's");
    }

    #[test]
    fn model_changes_between_generations_but_keeps_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let spec = Spec::default();
        let m0 = fs::read(write_model_dir(&spec, 0, &dir.path().join("g0")).unwrap()).unwrap();
        let m1 = fs::read(write_model_dir(&spec, 1, &dir.path().join("g1")).unwrap()).unwrap();
        let m2 = model_bytes(&spec, 2);
        assert_eq!((m0.len(), m1.len(), m2.len()), (6144, 6144, 6144));
        let differ = |a: &[u8], b: &[u8]| a.iter().zip(b).filter(|(x, y)| x != y).count();
        assert_eq!(differ(&m0, &m1), MODEL_DELTA_BYTES);
        assert!((100..=MODEL_DELTA_BYTES).contains(&differ(&m1, &m2)));
        assert_eq!(model_bytes(&Spec { model_bytes: 10, ..spec }, 1).len(), 10);
    }
}
