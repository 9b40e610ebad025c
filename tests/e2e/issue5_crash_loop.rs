//! Issue 5: a device killed with SIGKILL at random points while it fetches, 50 times in a row.
//! Every restart opens its store and carries on; what it had verified is never fetched again,
//! so all the runs together cost the seed the release's new bytes plus, per kill, at most what
//! was in flight; the finished release exports byte for byte.
//!
//! The kill points come from a seeded generator; the seed is printed, and
//! `LAYERHOP_CRASH_SEED=N` replays a run.

use crate::harness::{Cluster, Node, binary, cli_ok, stored_chunks, stored_count};
use layerhop_protocol::limits::MAX_IDS_PER_REQUEST;
use std::time::{Duration, Instant};

const KILLS: usize = 50;
/// One chunk per file: a file of at most 64 KiB is a single chunk, so the in-flight window is
/// an exact number of bytes. Many small chunks and one request in flight: a run gains at most
/// one response and one writer batch, so 50 runs cannot finish the release before the last kill
/// (with 1,600 chunks and two requests in flight, a fast machine did).
const FILE: usize = 32 * 1024;
const FILES: usize = 3200;
/// Chunk requests in flight at once on the device (its `parallel_requests`).
const PARALLEL: usize = 1;
/// Chunks the device's writer stores per batch (node/src/writer.rs).
const WRITER_BATCH: usize = 64;

/// Chunks the device has received so far: appended to its packs, synced or not yet.
fn received(home: &std::path::Path) -> usize {
    stored_count(home)
}

/// xorshift64*: reproducible kill points without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        out.extend_from_slice(&r.next().to_le_bytes());
    }
    out.truncate(n);
    out
}

#[test]
fn fifty_kills_while_fetching_never_refetch_verified_chunks() {
    let seed = std::env::var("LAYERHOP_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64));
    println!("kill points from seed {seed} (LAYERHOP_CRASH_SEED={seed} replays them)");
    let mut rng = Rng(seed | 1);

    let c = Cluster::start(0, "yard-1");
    let dir = c.path("r1").join("models");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let files: Vec<Vec<u8>> = (0..FILES).map(|i| noise(FILE, i as u64 + 1)).collect();
    for (i, f) in files.iter().enumerate() {
        std::fs::write(dir.join(format!("part-{i:04}.bin")), f).expect("write");
    }
    let v = c.publish("crash", &[&dir]);
    let release_file = c.seed.home.join("data/releases/crash").join(format!("{v:020}.release"));
    let release_bytes = std::fs::metadata(&release_file).expect("release file").len();

    let mut d = c.enroll("yard-1", "device");
    d.set_config("parallel_requests", &PARALLEL.to_string());
    let egress_before = c.seed.traffic("metered_out");
    let (mut time_kills, mut progress_kills) = (0, 0);
    let started = Instant::now();
    for run in 0..KILLS {
        let held = stored_count(&d.home);
        let mut child = spawn(&d);
        // A kill point: a random instant after the process starts (often before it reaches
        // the seed), or once a random number of new chunks has landed (mid-batch,
        // mid-response). Polled every millisecond: on loopback a batch lands in a few.
        // Chunks are counted as they arrive (appended to a pack), not as they are indexed: a
        // node indexes what it staged once per sync, and while a sync is slow (a busy disk) it
        // goes on receiving, so indexed chunks can jump by hundreds at once. A kill
        // at a random instant still comes no later than a writer batch of progress: on a fast
        // machine 150 ms is hundreds of chunks, and 50 kills would not span the release.
        let got = received(&d.home);
        let (limit, cap) = if rng.below(10) < 3 {
            time_kills += 1;
            (Duration::from_millis(rng.below(150)), got + WRITER_BATCH)
        } else {
            progress_kills += 1;
            (Duration::from_secs(5), got + 1 + rng.below(8) as usize)
        };
        let deadline = Instant::now() + limit;
        while received(&d.home) < cap && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        // What the kill left: every whole pack record matches its id (a torn last record is
        // not whole; the next start cuts it off).
        let now = stored_chunks(&d.home);
        for (name, bytes) in &now {
            assert_eq!(blake3::hash(bytes).to_hex().as_str(), name, "run {run}: stored chunk {name} does not match its id");
        }
        println!("run {run:2}: held {held:3} chunks at start, {:3} at kill", now.len());
    }
    let held_before = stored_count(&d.home);
    d.start();
    let s = d.wait_complete("crash", v, Duration::from_secs(120));
    let final_fetched = s["chunks_from_seed"].as_u64().expect("count") as usize;
    let total_chunks = stored_count(&d.home);
    assert!(held_before < total_chunks, "the device finished before the last kill; the loop did not kill it while fetching");
    let egress = c.seed.traffic("metered_out") - egress_before;
    let loop_secs = started.elapsed().as_secs_f64();

    // Every run killed after progress, and the last, opened the store (runs killed at a random
    // instant may die before they log it).
    let log = d.log();
    let opened = log.matches("layerhop node started").count();
    let rebuilt = log.matches("the index was rebuilt").count();
    assert!(opened > progress_kills, "only {opened} runs logged a start; {progress_kills} fetched before their kill, and one more completed");

    let new_bytes = (FILES * FILE) as u64 + release_bytes;
    // Each kill loses at most what was fetched and not yet durably stored: the responses in
    // flight (PARALLEL requests of MAX_IDS_PER_REQUEST chunks) and one writer batch of chunks
    // received but not yet synced and renamed. Each run also pays its handshake and the release
    // listing (the release itself, at most twice: asked for and announced).
    let window = ((PARALLEL * MAX_IDS_PER_REQUEST + WRITER_BATCH) * (FILE + 64)) as u64;
    let per_run = 2 * release_bytes + 32 * 1024;
    let bound = new_bytes + KILLS as u64 * window + (KILLS as u64 + 1) * per_run;
    println!(
        "{KILLS} kills ({time_kills} at random instants, {progress_kills} after random progress) in {loop_secs:.1} s; \
         {opened} runs opened the store, {rebuilt} rebuilt the index; final run: held {held_before} of {total_chunks} chunks, fetched {final_fetched}"
    );
    println!(
        "seed egress {egress} bytes for {new_bytes} new bytes: {:.3}x; waste {} bytes = {:.0} KiB per kill; bound {bound} ({:.2}x)",
        egress as f64 / new_bytes as f64,
        egress.saturating_sub(new_bytes),
        egress.saturating_sub(new_bytes) as f64 / KILLS as f64 / 1024.0,
        bound as f64 / new_bytes as f64
    );
    assert!(final_fetched <= total_chunks - held_before, "the last run fetched {final_fetched} chunks but only {} were missing", total_chunks - held_before);
    assert!(egress <= bound, "the seed sent {egress} bytes over the loop, more than new bytes + kills x window = {bound}");

    let out = c.path("export");
    cli_ok(&["export", "--home", d.home_arg(), "--channel", "crash", "--out", out.to_str().expect("utf-8")]);
    for (i, f) in files.iter().enumerate() {
        let got = std::fs::read(out.join(format!("models/part-{i:04}.bin"))).expect("exported file");
        assert!(got == *f, "exported part-{i:04}.bin differs from the published file");
    }
    d.stop();
}

/// `layerhop run` of `d` with its log appended to `HOME/node.log`, without waiting for it: the
/// kill may come before the node is up.
fn spawn(d: &Node) -> std::process::Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(d.home.join("node.log")).expect("log file");
    std::process::Command::new(binary())
        .args(["run", "--home", d.home_arg()])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting layerhop run")
}
