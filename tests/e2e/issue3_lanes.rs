//! Issue 3, lanes: site peers move chunks on a connection of their own (TLS, AES-GCM) beside the
//! libp2p one; its bytes count as LAN traffic, and a device without a lane still shares.

use crate::harness::{Cluster, noise, stored_chunks};
use std::time::Duration;

const RELEASE: usize = 40 << 20;

/// A seed and one device holding a 40 MiB release; returns the cluster and the version.
fn one_device_holding_a_release(site: &str) -> (Cluster, u64) {
    let c = Cluster::start(1, site);
    let dir = c.path("r1");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("weights.bin"), noise(RELEASE, 11)).expect("write");
    let v = c.publish("detector", &[&dir]);
    c.devices[0].wait_complete("detector", v, Duration::from_secs(120));
    (c, v)
}

fn every_chunk_matches_its_name(home: &std::path::Path) -> usize {
    let chunks = stored_chunks(home);
    for (name, bytes) in &chunks {
        assert_eq!(blake3::hash(bytes).to_hex().as_str(), name, "a stored chunk does not match its name");
    }
    chunks.len()
}

#[test]
fn a_joining_device_takes_the_release_over_a_lane_and_every_byte_is_counted() {
    let (mut c, v) = one_device_holding_a_release("lanes-1");
    let a_before = c.devices[0].status().expect("status");
    let i = c.add_device("lanes-1");
    let s = c.devices[i].wait_complete("detector", v, Duration::from_secs(120));
    let a = c.devices[0].status().expect("status");
    println!(
        "joiner: lane port {} lane answers {} chunks from peers {} from seed {} lan_in {} metered_in {}",
        s["lane_port"], s["lane_answers"], s["chunks_from_peers"], s["chunks_from_seed"], s["traffic"]["lan_in"], s["traffic"]["metered_in"]
    );
    assert!(s["lane_port"].as_u64().is_some_and(|p| p > 0), "the joiner has no lane: {s}");
    assert!(a["lane_port"].as_u64().is_some_and(|p| p > 0), "the holder has no lane: {a}");
    let answers = s["lane_answers"].as_u64().expect("lane_answers");
    let from_peers = s["chunks_from_peers"].as_u64().expect("chunks_from_peers");
    assert!(from_peers > 0, "nothing came from the site peer: {s}");
    // Batches of up to 16 chunks: most of what came from the peer came on the lane (the first
    // requests may leave before the lane's port is known).
    assert!(answers * 16 >= from_peers / 2, "{answers} lane answers for {from_peers} chunks from the peer");
    // The lane's bytes are counted, and on the LAN: the release crossed it, not the metered link.
    let lan_in = s["traffic"]["lan_in"].as_u64().expect("lan_in");
    let metered_in = s["traffic"]["metered_in"].as_u64().expect("metered_in");
    assert!(lan_in >= RELEASE as u64, "lan_in {lan_in} is less than the release ({RELEASE} bytes)");
    assert!(metered_in < RELEASE as u64 / 20, "metered_in {metered_in}: the release crossed the metered link");
    let a_out = a["traffic"]["lan_out"].as_u64().expect("lan_out") - a_before["traffic"]["lan_out"].as_u64().expect("lan_out");
    assert!(a_out >= RELEASE as u64, "the holder's lan_out grew by {a_out}, less than the release");
    assert!(every_chunk_matches_its_name(&c.devices[i].home) > 0);
}

#[test]
fn a_device_without_a_lane_still_shares_over_libp2p() {
    let (mut c, v) = one_device_holding_a_release("lanes-2");
    let mut d = c.enroll("lanes-2", "no-lane");
    d.set_config("bulk_lane", "false");
    d.start();
    let s = d.wait_complete("detector", v, Duration::from_secs(120));
    println!("no-lane device: {} chunks from peers, {} from the seed", s["chunks_from_peers"], s["chunks_from_seed"]);
    assert!(s["lane_port"].is_null(), "bulk_lane = false, yet a lane: {s}");
    assert_eq!(s["lane_answers"].as_u64(), Some(0));
    // The holder asked it for a lane; having none is not a refusal of the peer.
    assert_eq!(s["refused_requests"].as_u64(), Some(0), "{s}");
    assert!(s["chunks_from_peers"].as_u64().expect("n") > 0, "nothing came from the site peer: {s}");
    assert!(s["traffic"]["metered_in"].as_u64().expect("n") < RELEASE as u64 / 20, "the release crossed the metered link: {s}");
    assert!(every_chunk_matches_its_name(&d.home) > 0);
    c.devices.push(d);
}
