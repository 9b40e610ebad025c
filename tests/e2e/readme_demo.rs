//! The README's main command, `layerhop demo`: a seed and a site of devices as real processes,
//! two releases, and the table of what crossed the metered link. Run small (3 devices, an 8 MiB
//! deps layer) so it stays a few seconds; the defaults differ only in size.

use crate::harness::binary;
use std::process::Command;

/// The `site total` and `saved` columns of the row for `release` (`v1`, `v2`), in bytes and as
/// a factor.
fn row(table: &str, release: &str) -> (f64, f64) {
    let line = table.lines().find(|l| l.split_whitespace().next() == Some(release)).unwrap_or_else(|| panic!("no row {release} in\n{table}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    // release, per device (n unit), site total (n unit), docker/device (n unit), docker/site (n unit), saved
    assert_eq!(f.len(), 10, "unexpected row {line:?}");
    let bytes = |n: &str, unit: &str| {
        let n: f64 = n.parse().unwrap_or_else(|_| panic!("not a number in {line:?}"));
        n * match unit {
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            other => panic!("unit {other} in {line:?}"),
        }
    };
    let saved: f64 = f[9].trim_end_matches('x').parse().unwrap_or_else(|_| panic!("no factor in {line:?}"));
    (bytes(f[3], f[4]), saved)
}

#[test]
fn the_demo_runs_and_the_site_pays_about_one_copy() {
    let out = Command::new(binary()).args(["demo", "--devices", "3", "--files", "200", "--deps-mib", "8"]).output().expect("run layerhop demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stdout}\n{stderr}");
    assert!(stdout.contains("bytes over the metered link"), "{stdout}");
    let (v1_site, v1_saved) = row(&stdout, "v1");
    let (v2_site, v2_saved) = row(&stdout, "v2");
    println!("v1: site {v1_site:.0} bytes, saved {v1_saved}x; v2: site {v2_site:.0} bytes, saved {v2_saved}x");
    // Three devices that each pulled the image would move three copies; the site moves about one.
    assert!(v1_saved >= 2.0, "the site of 3 paid more than half of three pulls: {stdout}");
    // Release 2 changes the model (6 KiB) and rebuilds the deps layer with new mtimes only.
    assert!(v2_site < v1_site / 20.0, "the small change cost {v2_site} bytes against {v1_site}: {stdout}");
    assert!(v2_saved > v1_saved, "{stdout}");
    // The temporary homes are gone and no node is left running.
    let root = stdout.lines().next().and_then(|l| l.rsplit(" in ").next()).expect("the demo names its directory").trim();
    assert!(root.contains("layerhop-demo-") && !std::path::Path::new(root).exists(), "{root} was left behind");
    let left: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(root))
        .collect();
    assert!(left.is_empty(), "nodes still running: {left:?}");
}
