//! `layerhop demo`: a seed and a site of devices as real processes on 127.0.0.1, two releases,
//! and a table of what crossed the metered link next to what `docker pull` would have moved.
//!
//! Everything lives in a temporary directory removed at the end (unless `--keep`). The nodes
//! are this same binary run as `layerhop run`, so the demo exercises exactly what a fleet runs.

use crate::commands;
use crate::home::Home;
use crate::sample;
use crate::status::Status;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Demo settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Devices on the site.
    pub devices: usize,
    /// Files in the deps layer.
    pub files: usize,
    /// Size of the deps layer, MiB.
    pub deps_mib: u64,
    /// Keep the temporary homes.
    pub keep: bool,
}

/// Child processes killed when dropped, so a failed demo leaves nothing running.
#[derive(Default)]
pub struct Nodes {
    children: Vec<Child>,
}

impl Nodes {
    /// Start `layerhop run --home HOME` with its log in `HOME/node.log`.
    pub fn start(&mut self, exe: &Path, home: &Path) -> Result<()> {
        let log = std::fs::File::create(home.join("node.log"))?;
        let child = Command::new(exe)
            .args(["run", "--home"])
            .arg(home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        self.children.push(child);
        Ok(())
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Poll `f` every 100 ms until it returns `Some`, or fail after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_complete(home: &Home, channel: &str, version: u64) -> Result<Status> {
    wait_for(&format!("{} to hold {channel} v{version}", home.root().display()), Duration::from_secs(600), || {
        let s = commands::status(home).ok()?;
        s.releases.iter().any(|r| r.channel == channel && r.version == version && r.complete).then_some(s)
    })
}

fn mib(b: u64) -> String {
    if b >= 1 << 20 { format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64) } else { format!("{:.1} KiB", b as f64 / 1024.0) }
}

struct Row {
    release: String,
    per_device: Vec<u64>,
    docker_per_device: u64,
}

/// Run the demo and print its table.
pub fn run(o: &Options) -> Result<()> {
    let exe = std::env::current_exe().context("locating the layerhop binary")?;
    let tmp = tempfile::Builder::new().prefix("layerhop-demo-").tempdir()?;
    let root = tmp.path().to_owned();
    println!("layerhop demo: 1 seed + {} devices on one site (127.0.0.1), in {}", o.devices, root.display());
    let mut nodes = Nodes::default();
    let seed = Home::new(root.join("seed"));
    let listen = ["/ip4/127.0.0.1/tcp/0".to_owned()];
    let off = commands::InitOptions { listen: &listen, registry: Some("off"), metrics: Some("off"), ..Default::default() };
    commands::init_with(&seed, &commands::InitOptions { seed: true, ..off })?;
    nodes.start(&exe, seed.root())?;
    wait_for("the seed to listen", Duration::from_secs(30), || {
        std::fs::read_to_string(seed.listen_addrs()).ok().filter(|s| !s.trim().is_empty())
    })?;
    let mut devices = Vec::new();
    for i in 0..o.devices {
        let token = commands::invite(&seed, "demo-site", &[])?;
        let home = Home::new(root.join(format!("device-{i}")));
        // mDNS off: the demo's nodes share 127.0.0.1, and it must not multicast on the host's LAN.
        // The registry mirror and metrics are off too: every device would want the same port.
        commands::init_with(&home, &commands::InitOptions { join: Some(&token), listen: &listen, registry: Some("off"), metrics: Some("off"), ..Default::default() })?;
        nodes.start(&exe, home.root())?;
        devices.push(home);
    }
    let spec = sample::Spec { deps_files: o.files, deps_bytes: o.deps_mib << 20, ..sample::Spec::default() };
    let channel = "anomaly-detector";
    let mut rows = Vec::new();
    let mut before: Vec<u64> = vec![0; devices.len()];
    for generation in 0..2u32 {
        let dir = root.join(format!("release-{generation}"));
        std::fs::create_dir_all(&dir)?;
        let image_path = dir.join("image.tar");
        let started = Instant::now();
        let info = sample::write_docker_save(&spec, generation, &image_path)?;
        let model = sample::write_model_dir(&spec, generation, &dir.join("model"))?;
        println!(
            "release {}: generated image ({} layers, {}) and model ({} bytes) in {:.1}s",
            generation + 1,
            info.diff_ids.len(),
            mib(info.layer_sizes.iter().sum()),
            std::fs::metadata(&model).map(|m| m.len()).unwrap_or(0),
            started.elapsed().as_secs_f64()
        );
        let model_dir: PathBuf = model.parent().map(Path::to_path_buf).unwrap_or(dir.join("model"));
        let published = commands::publish(&seed, channel, &[image_path, model_dir], Default::default())?;
        let version = published["version"].as_u64().unwrap_or(0);
        println!("release {}: published as {channel} v{version} in {:.1}s; waiting for the devices", generation + 1, published["seconds"].as_f64().unwrap_or(0.0));
        let mut per_device = Vec::new();
        for (i, d) in devices.iter().enumerate() {
            let s = wait_complete(d, channel, version)?;
            per_device.push(s.traffic.metered_in + s.traffic.metered_out - before[i]);
            before[i] = s.traffic.metered_in + s.traffic.metered_out;
        }
        let model_bytes = std::fs::metadata(&model).map(|m| m.len()).unwrap_or(0);
        rows.push(Row { release: format!("v{version}"), per_device, docker_per_device: info.docker_pull_bytes() + model_bytes });
    }
    println!();
    println!("bytes over the metered link (both directions, every byte on the wire: chunks, manifests, handshakes)");
    println!("{:<8} {:>14} {:>14} {:>20} {:>20} {:>9}", "release", "per device", "site total", "docker pull/device", "docker pull/site", "saved");
    for r in &rows {
        let site: u64 = r.per_device.iter().sum();
        let avg = site / r.per_device.len().max(1) as u64;
        let docker_site = r.docker_per_device * r.per_device.len() as u64;
        println!(
            "{:<8} {:>14} {:>14} {:>20} {:>20} {:>8.1}x",
            r.release,
            mib(avg),
            mib(site),
            mib(r.docker_per_device),
            mib(docker_site),
            docker_site as f64 / site.max(1) as f64
        );
    }
    println!();
    println!("the devices share one site: each chunk crossed the metered link once (fetched by one member,");
    println!("chosen by rendezvous hash) and went to the others over the LAN; the seed announced each release");
    println!("to one member, which passed it on. docker pull = gzip layers + config + manifest + model, per device.");
    drop(nodes);
    if o.keep {
        let kept = tmp.keep();
        println!("kept {}", kept.display());
    }
    Ok(())
}
