//! Issue 3: a site of devices pays the metered link about once, and a device killed mid-download
//! does not stall the others.

use crate::harness::noise;
use crate::harness::{Cluster, Node, distinct_chunks, wait_for};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn model_dir(c: &Cluster, name: &str, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let dir = c.path(name).join("models");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (n, b) in files {
        std::fs::write(dir.join(n), b).expect("write");
    }
    dir
}

/// What the release's chunks cost on the wire (each as the seed sends it) plus the signed
/// release: the bytes a site that held nothing must receive at least once.
fn new_bytes(device: &Node, release_file: &Path) -> u64 {
    let mut total = std::fs::metadata(release_file).expect("release file").len();
    for bytes in distinct_chunks(&device.home).into_values() {
        total += match layerhop_node::codec::compress(bytes) {
            layerhop_protocol::wire::ChunkReply::Raw(b) | layerhop_protocol::wire::ChunkReply::Zstd(b) => b.len() as u64,
            layerhop_protocol::wire::ChunkReply::Missing => 0,
        };
    }
    total
}

#[test]
fn four_devices_cost_the_seed_one_copy() {
    let c = Cluster::start(4, "factory-7");
    let dir = model_dir(&c, "r1", &[("weights.bin", noise(24 << 20, 1)), ("labels.txt", b"ok\n".repeat(20_000))]);
    let seed_before = c.seed.traffic("metered_out");
    let v = c.publish("detector", &[&dir]);
    for d in &c.devices {
        d.wait_complete("detector", v, Duration::from_secs(120));
    }
    let egress = c.seed.traffic("metered_out") - seed_before;
    let release_file = c.seed.home.join("data/releases/detector").join(format!("{v:020}.release"));
    let new = new_bytes(&c.devices[0], &release_file);
    let ratio = egress as f64 / new as f64;
    let mut from_peers = 0;
    for (i, d) in c.devices.iter().enumerate() {
        let s = d.status().expect("status");
        println!(
            "device {i}: metered_in {} lan_in {} chunks from seed {} from peers {}",
            s["traffic"]["metered_in"], s["traffic"]["lan_in"], s["chunks_from_seed"], s["chunks_from_peers"]
        );
        from_peers += s["chunks_from_peers"].as_u64().expect("count");
    }
    println!("seed egress {egress} bytes for {new} new bytes: {ratio:.4}x");
    assert!(ratio <= 1.05, "the seed sent {ratio:.3}x the release's new bytes ({egress} / {new})");
    assert!(from_peers > 0, "no chunk moved over the LAN");
}

#[test]
fn a_device_killed_mid_download_does_not_stall_the_others() {
    let mut c = Cluster::start(4, "depot-3");
    let dir = model_dir(&c, "r1", &[("weights.bin", noise(80 << 20, 2))]);
    let v = c.publish("detector", &[&dir]);
    let victim = &c.devices[0];
    wait_for("device 0 to be partway", Duration::from_secs(120), || {
        let s = victim.status().ok()?;
        let r = s["releases"].as_array()?.iter().find(|r| r["version"] == v)?.clone();
        let (have, total) = (r["bytes_have"].as_u64()?, r["bytes_total"].as_u64()?);
        (have > 0 && have < total).then_some(())
    })
    .expect("device 0 started fetching");
    c.devices[0].kill9();
    for d in &c.devices[1..] {
        d.wait_complete("detector", v, Duration::from_secs(120));
    }
    // The killed device comes back and completes; what it had verified is not fetched again.
    let mut victim = c.devices.remove(0);
    let held_before: u64 = count_chunks(&victim.home);
    victim.start();
    let s = victim.wait_complete("detector", v, Duration::from_secs(120));
    let refetched = s["chunks_from_seed"].as_u64().expect("n") + s["chunks_from_peers"].as_u64().expect("n");
    let total = count_chunks(&victim.home);
    println!("restarted device held {held_before} chunks, fetched {refetched} more, holds {total}");
    assert!(refetched <= total - held_before, "verified chunks were fetched again: {refetched} fetched, {} were missing", total - held_before);
}

fn count_chunks(home: &Path) -> u64 {
    distinct_chunks(home).len() as u64
}
