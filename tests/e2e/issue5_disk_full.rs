//! Issue 5: the disk fills up while a device fetches. The device says so (in `status --json`
//! and its log), keeps nothing corrupt, stops paying the metered link for chunks it cannot
//! store, and completes on its own, without a restart, once space returns.
//!
//! The device's home is a small tmpfs (root only; the test prints why it skips otherwise),
//! grown with `mount -o remount,size=…` while the node runs.

use crate::harness::noise;
use crate::harness::{Cluster, cli_ok, stored_chunks, wait_for};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A mounted tmpfs, unmounted on drop (lazily, so a node still holding files cannot keep it).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).expect("mount point");
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(path).status().is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(path.to_owned()))
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).status().is_ok_and(|s| s.success());
        assert!(ok, "remounting {} with size {size} failed", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The release's `stalled` text in a status, if any.
fn stalled(s: &serde_json::Value, channel: &str) -> Option<String> {
    s["releases"].as_array()?.iter().find(|r| r["channel"] == channel)?["stalled"].as_str().map(str::to_owned)
}

/// How many writes the node says the full disk refused ("... (writes refused: N): ...").
fn refused_writes(stalled: &str) -> Option<u64> {
    let (_, after) = stalled.split_once("(writes refused: ")?;
    after.split_once(')')?.0.parse().ok()
}

#[test]
fn disk_full_while_fetching_is_reported_and_completes_when_space_returns() {
    if !is_root() {
        println!("skipped: mounting a small tmpfs as the device's home needs root");
        return;
    }
    let c = Cluster::start(0, "lot-4");
    let dir = c.path("r1").join("models");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let files: Vec<Vec<u8>> = (0..12).map(|i| noise(4 << 20, i + 1)).collect();
    for (i, f) in files.iter().enumerate() {
        std::fs::write(dir.join(format!("shard-{i:02}.bin")), f).expect("write");
    }
    let v = c.publish("fill", &[&dir]);

    let mount = c.path("small");
    let Some(fs) = Tmpfs::mount(&mount, "24m") else {
        println!("skipped: cannot mount a tmpfs here (no CAP_SYS_ADMIN in this container?)");
        return;
    };
    let mut d = c.enroll("lot-4", "small/device");
    d.set_config("parallel_requests", "2");
    let egress_start = c.seed.traffic("metered_out");
    d.start();

    // The 48 MiB release does not fit in 24 MiB: the node must say so.
    let (s, reported_after) = {
        let t = Instant::now();
        let s = wait_for("the device to report its full disk", Duration::from_secs(60), || {
            let s = d.status().ok()?;
            stalled(&s, "fill").filter(|why| why.contains("disk full")).map(|_| s)
        })
        .unwrap_or_else(|e| panic!("{e}\n--- status: {:?}\n--- log:\n{}", d.status().ok(), d.log()));
        (s, t.elapsed())
    };
    let why = stalled(&s, "fill").unwrap_or_default();
    println!("after {:.1} s status says: {why}", reported_after.as_secs_f64());
    assert!(why.contains("No space left on device") || why.contains("os error 28"), "the error does not name the cause: {why}");
    assert!(d.log().contains("disk full"), "the log does not mention the full disk");

    // While the disk stays full, through several of the writer's retries (1, 2, then 4 s
    // apart), the device must not keep downloading chunks it cannot store.
    let egress_full = c.seed.traffic("metered_out");
    let held_for = Instant::now();
    wait_for("the writer's fourth refused write on the full disk", Duration::from_secs(60), || {
        let why = stalled(&d.status().ok()?, "fill")?;
        (refused_writes(&why)? >= 4).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n--- status: {:?}\n--- log:\n{}", d.status().ok(), d.log()));
    let egress_held = c.seed.traffic("metered_out") - egress_full;
    println!(
        "seed egress: {} bytes before the error was reported, {egress_held} bytes in the next {:.1} s of full disk (four writes refused)",
        egress_full - egress_start,
        held_for.elapsed().as_secs_f64()
    );
    assert!(egress_held < 4 << 20, "the device kept fetching {egress_held} bytes while its disk was full");

    // Nothing corrupt: every chunk on disk (chunk files, whole pack records) matches its name.
    let mut held = 0;
    for (name, bytes) in stored_chunks(&d.home) {
        assert_eq!(blake3::hash(&bytes).to_hex().as_str(), name, "corrupt stored chunk {name}");
        held += 1;
    }
    println!("{held} chunks stored on the full disk, all verified");

    // Space returns: the running node completes by itself.
    fs.resize("128m");
    let t = Instant::now();
    let s = d.wait_complete("fill", v, Duration::from_secs(120));
    println!("completed {:.1} s after space returned, without a restart; stalled now: {:?}", t.elapsed().as_secs_f64(), stalled(&s, "fill"));
    assert_eq!(stalled(&s, "fill"), None, "the release still reports a stall after completing");
    let total_egress = c.seed.traffic("metered_out") - egress_start;
    println!("seed egress over the whole test: {total_egress} bytes for {} bytes of files", 48 << 20);

    let out = c.path("export");
    cli_ok(&["export", "--home", d.home_arg(), "--channel", "fill", "--out", out.to_str().expect("utf-8")]);
    for (i, f) in files.iter().enumerate() {
        let got = std::fs::read(out.join(format!("models/shard-{i:02}.bin"))).expect("exported");
        assert!(got == *f, "exported shard-{i:02}.bin differs");
    }
    d.stop();
}
