//! The LAN bench the README tells users to run (`bench_lan`) still runs and measures what it
//! says: a small release, one timed run, its JSON read back.

use crate::harness::{binary, build};
use serde_json::Value;
use std::process::Command;

#[test]
fn bench_lan_moves_a_release_over_a_lane_and_reports_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(build("layerhop-simulations", "bench_lan"))
        .args(["--size-mib", "32", "--runs", "1", "--json", "--layerhop"])
        .arg(binary())
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("running bench_lan");
    assert!(out.status.success(), "bench_lan failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("bench_lan prints one JSON object");
    let bytes = v["bytes"].as_u64().expect("bytes");
    assert_eq!(bytes, 32 << 20);
    assert_eq!(v["runs"].as_array().map(Vec::len), Some(1), "{v}");
    for key in ["lan_seconds", "tcp_copy_seconds", "tcp_copy_to_null_seconds", "ratio", "receiver_cpu_seconds", "tcp_copy_cpu_seconds", "lan_cpu_seconds"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key} in {v}");
    }
    assert!(v["receiver_peak_rss_bytes"].as_u64().is_some_and(|x| x > 0), "{v}");
    let lan_in = v["receiver_lan_in"].as_u64().expect("lan_in");
    assert!(lan_in >= bytes, "the release did not come over the LAN: lan_in {lan_in} for {bytes}");
    let metered_in = v["receiver_metered_in"].as_u64().expect("metered_in");
    assert!(metered_in < bytes / 20, "the joining device paid the metered link: {metered_in} bytes");
    assert!(v["receiver_lane_answers"].as_u64().is_some_and(|x| x > 0), "no answer came over a lane: {v}");
}

/// `--compare` runs both devices of the LAN path on each build in turn, restarting the sending
/// device A when the build changes: every run still takes the release from A over a lane.
#[test]
fn bench_lan_compare_alternates_both_lan_devices_between_builds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = dir.path().join("layerhop-other");
    std::fs::copy(binary(), &other).expect("a second build");
    let out = Command::new(build("layerhop-simulations", "bench_lan"))
        .args(["--size-mib", "16", "--runs", "2", "--json", "--layerhop"])
        .arg(binary())
        .arg("--compare")
        .arg(&other)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("running bench_lan");
    assert!(out.status.success(), "bench_lan --compare failed: {}", String::from_utf8_lossy(&out.stderr));
    let builds: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    assert_eq!(builds.len(), 2, "one object per build");
    for (v, build) in builds.iter().zip([binary().to_path_buf(), other]) {
        let runs = v["runs"].as_array().expect("runs");
        assert_eq!(runs.len(), 1, "{v}");
        assert_eq!(runs[0]["build"].as_str(), Some(build.to_string_lossy().as_ref()), "{v}");
        assert!(v["receiver_lane_answers"].as_u64().is_some_and(|x| x > 0), "no answer came over a lane: {v}");
        assert!(v["receiver_lan_in"].as_u64().is_some_and(|x| x >= 16 << 20), "the release did not come over the LAN: {v}");
    }
}
