//! Running the real `layerhop` binary: homes in a temp dir, processes on 127.0.0.1, status over
//! the CLI, polling with deadlines (never fixed sleeps).

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The binary under test, built once per test run (a no-op when it is fresh).
pub(crate) fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build("layerhop-node", "layerhop"))
}

/// Build a binary of the workspace in release mode (a no-op when it is fresh); its path.
pub(crate) fn build(package: &str, bin: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    // `cargo test` runs this binary with the test crate's CARGO_MANIFEST_DIR, CARGO_PKG_*…;
    // build scripts that watch them (ring's) would see a change and rebuild, and the next
    // `cargo test` would rebuild them back: every run would recompile ring and its dependents.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k == "CARGO_MANIFEST_DIR" || k == "CARGO_MANIFEST_PATH" || k.starts_with("CARGO_PKG_") || k == "CARGO_CRATE_NAME" || k == "CARGO_PRIMARY_PACKAGE" || k == "OUT_DIR" {
            build.env_remove(&*k);
        }
    }
    let status = build
        .args(["build", "--release", "-p", package, "--bin", bin])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap_or_else(|e| panic!("running cargo build for {bin}: {e}"));
    assert!(status.success(), "building {bin} failed");
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("release").join(bin)
}

/// Run the CLI to completion.
pub(crate) fn cli(args: &[&str]) -> Output {
    Command::new(binary()).args(args).output().expect("running layerhop")
}

/// Run the CLI and require success; returns stdout.
pub(crate) fn cli_ok(args: &[&str]) -> String {
    let out = cli(args);
    assert!(out.status.success(), "layerhop {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Poll `f` until it returns `Some`, or fail naming `what` after `limit` (the demo's poller).
pub(crate) use layerhop_node::demo::wait_for;

/// One node: a home and, while running, its process.
pub(crate) struct Node {
    /// Its home directory.
    pub(crate) home: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// A node whose home is `home` (initialized or not), not running.
    pub(crate) fn new(home: PathBuf) -> Node {
        Node { home, child: None }
    }

    /// Replace a top-level key's line in the node's config.toml.
    pub(crate) fn set_config(&self, key: &str, value: &str) {
        let path = self.home.join("config.toml");
        let text = std::fs::read_to_string(&path).expect("config");
        let prefix = format!("{key} =");
        assert!(text.lines().any(|l| l.starts_with(&prefix)), "config has no key {key}");
        let out: String = text.lines().map(|l| if l.starts_with(&prefix) { format!("{key} = {value}\n") } else { format!("{l}\n") }).collect();
        std::fs::write(&path, out).expect("write config");
    }

    /// The home as a CLI argument.
    pub(crate) fn home_arg(&self) -> &str {
        self.home.to_str().expect("utf-8 temp path")
    }

    /// Start `layerhop run` with its log in `HOME/node.log`.
    pub(crate) fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.home.join("node.log")).expect("log file");
        let child = Command::new(binary())
            .args(["run", "--home", self.home_arg()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting layerhop run");
        self.child = Some(child);
        let home = self.home.clone();
        wait_for("the node's control socket", Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(home.join("control.sock")).ok()
        })
        .expect("node started");
    }

    /// Send a signal (`"HUP"`, `"TERM"`) to the running node.
    pub(crate) fn signal(&self, sig: &str) {
        let c = self.child.as_ref().expect("node running");
        let ok = Command::new("kill").args([&format!("-{sig}"), &c.id().to_string()]).status().expect("kill").success();
        assert!(ok, "kill -{sig} failed");
    }

    /// kill -9.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let status = c.wait().expect("wait");
            assert!(status.success(), "node exited with {status} after SIGTERM");
        }
    }

    /// `status --json`.
    pub(crate) fn status(&self) -> Result<Value> {
        let out = cli(&["status", "--home", self.home_arg(), "--json"]);
        if !out.status.success() {
            bail!("status failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        serde_json::from_slice(&out.stdout).context("status is not JSON")
    }

    /// The node's log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("node.log")).unwrap_or_default()
    }

    /// A traffic counter from status.
    pub(crate) fn traffic(&self, key: &str) -> u64 {
        self.status().expect("status")["traffic"][key].as_u64().expect("counter")
    }

    /// Wait until the node holds `channel` at `version`, complete.
    pub(crate) fn wait_complete(&self, channel: &str, version: u64, limit: Duration) -> Value {
        wait_for(&format!("{} to complete {channel} v{version}", self.home.display()), limit, || {
            let s = self.status().ok()?;
            let done = s["releases"].as_array()?.iter().any(|r| r["channel"] == channel && r["version"] == version && r["complete"] == true);
            done.then_some(s)
        })
        .unwrap_or_else(|e| panic!("{e}\n--- log of {}:\n{}", self.home.display(), self.log()))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // LAYERHOP_KEEP_TEST_DIRS=1 keeps the homes and logs of every test for a post-mortem.
        if std::env::var_os("LAYERHOP_KEEP_TEST_DIRS").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!("kept {}", dir.keep().display());
        }
    }
}

/// A seed and devices on one site, all on 127.0.0.1.
pub(crate) struct Cluster {
    /// Holds every home; removed at the end.
    pub(crate) dir: tempfile::TempDir,
    /// The seed.
    pub(crate) seed: Node,
    /// The devices.
    pub(crate) devices: Vec<Node>,
}

impl Cluster {
    /// Initialize and start a seed and `n` devices of site `site`.
    pub(crate) fn start(n: usize, site: &str) -> Cluster {
        let dir = tempfile::Builder::new().prefix("lh-").tempdir().expect("tempdir");
        let mut seed = Node { home: dir.path().join("seed"), child: None };
        // Registry mirrors off unless a test asks for one: many nodes share this host.
        cli_ok(&["init", "--home", seed.home_arg(), "--seed", "--listen", "/ip4/127.0.0.1/tcp/0", "--registry", "off", "--metrics", "127.0.0.1:0"]);
        seed.start();
        let listen = seed.home.join("listen-addrs");
        wait_for("the seed's listen address", Duration::from_secs(30), || std::fs::read_to_string(&listen).ok().filter(|s| !s.trim().is_empty()))
            .expect("seed listens");
        let mut c = Cluster { dir, seed, devices: Vec::new() };
        for _ in 0..n {
            c.add_device(site);
        }
        c
    }

    /// Enroll and start one more device.
    pub(crate) fn add_device(&mut self, site: &str) -> usize {
        self.add_device_with(site, &[])
    }

    /// Enroll and start one more device, passing `extra` to its `init` (e.g. `--registry ADDR`).
    pub(crate) fn add_device_with(&mut self, site: &str, extra: &[&str]) -> usize {
        let token = cli_ok(&["invite", "--home", self.seed.home_arg(), "--site", site]);
        let i = self.devices.len();
        let mut d = Node { home: self.dir.path().join(format!("device-{i}")), child: None };
        let mut args = vec!["init", "--home", d.home_arg(), "--join", token.trim(), "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"];
        args.extend_from_slice(extra);
        if !extra.contains(&"--registry") {
            args.extend_from_slice(&["--registry", "off"]);
        }
        // Metrics on an ephemeral port (HOME/metrics-addr): nodes never contend for one.
        if !extra.contains(&"--metrics") {
            args.extend_from_slice(&["--metrics", "127.0.0.1:0"]);
        }
        cli_ok(&args);
        d.start();
        self.devices.push(d);
        i
    }

    /// Enroll a device of `site` in a home named `name`, without starting it.
    pub(crate) fn enroll(&self, site: &str, name: &str) -> Node {
        let token = cli_ok(&["invite", "--home", self.seed.home_arg(), "--site", site]);
        let d = Node::new(self.dir.path().join(name));
        cli_ok(&["init", "--home", d.home_arg(), "--join", token.trim(), "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--registry", "off", "--metrics", "127.0.0.1:0"]);
        d
    }

    /// Publish and return the new version.
    pub(crate) fn publish(&self, channel: &str, sources: &[&Path]) -> u64 {
        let mut args = vec!["publish", "--home", self.seed.home_arg(), "--channel", channel];
        let s: Vec<String> = sources.iter().map(|p| p.display().to_string()).collect();
        args.extend(s.iter().map(String::as_str));
        let out: Value = serde_json::from_str(&cli_ok(&args)).expect("publish prints JSON");
        out["version"].as_u64().expect("version")
    }

    /// A scratch path inside the cluster's directory.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Every copy of a chunk a node's store holds on disk, by the name it is stored under (its hex
/// id), with its bytes as they are on disk (not verified: that is for the caller): chunk files
/// (temp files excluded) and the records of its pack files, where a device keeps what it
/// received (store/src/packs.rs), the newest possibly not yet synced. A pack may hold a chunk
/// twice; both copies are here, so a check of every copy sees a bad one.
pub(crate) fn stored_chunks(home: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(home.join("data/chunks")).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(sub.path()).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                out.push((name, std::fs::read(f.path()).expect("chunk file")));
            }
        }
    }
    for r in layerhop_store::packs::all_records(&home.join("data")).expect("pack records") {
        out.push((r.id.to_hex(), r.bytes));
    }
    out
}

/// The chunks a node's store holds, each once (see [`stored_chunks`]).
pub(crate) fn distinct_chunks(home: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    stored_chunks(home).into_iter().collect()
}

/// How many chunk copies a node's store holds on disk (chunk files and pack records), without
/// reading their bytes: cheap enough to poll while the node runs.
pub(crate) fn stored_count(home: &Path) -> usize {
    let files: usize = std::fs::read_dir(home.join("data/chunks"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|sub| std::fs::read_dir(sub.path()).into_iter().flatten().flatten().filter(|f| !f.file_name().to_string_lossy().starts_with('.')).count())
        .sum();
    files + layerhop_store::packs::record_ids(&home.join("data")).expect("pack records").len()
}

/// SHA-256 of a file, hex.
pub(crate) fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut f = std::fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    std::io::copy(&mut f, &mut h).expect("read");
    hex::encode(h.finalize())
}

/// The members of a tar file: name → bytes (for small test archives).
pub(crate) fn tar_members(p: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    use std::io::Read;
    let mut out = std::collections::BTreeMap::new();
    let mut ar = tar::Archive::new(std::fs::File::open(p).expect("open tar"));
    for e in ar.entries().expect("entries") {
        let mut e = e.expect("entry");
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = e.path().expect("path").to_string_lossy().into_owned();
        let mut b = Vec::new();
        e.read_to_end(&mut b).expect("read member");
        out.insert(name, b);
    }
    out
}

/// `n` pseudo-random bytes from `seed` (xorshift): content that neither compresses nor repeats,
/// the same for the same seed.
pub(crate) fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}
