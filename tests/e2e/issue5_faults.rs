//! Issue 5: faults. With the seed unreachable, a device completes from a site peer that holds
//! the release, and learns of the release from that peer.

use crate::harness::{Cluster, wait_for};
use std::time::Duration;

#[test]
fn seed_unreachable_device_completes_from_site_peer() {
    let mut c = Cluster::start(1, "plant-2");
    let dir = c.path("r1").join("models");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
    std::fs::write(dir.join("weights.bin"), &payload).expect("write");
    let v = c.publish("models", &[&dir]);
    c.devices[0].wait_complete("models", v, Duration::from_secs(60));
    let mut late = c.enroll("plant-2", "late-device");
    c.seed.stop();
    // No multicast on 127.0.0.1 and no seed to introduce them: point it at the peer directly.
    let peer_addr = wait_for("device 0's address", Duration::from_secs(10), || {
        std::fs::read_to_string(c.devices[0].home.join("listen-addrs")).ok().and_then(|s| s.lines().next().map(str::to_owned))
    })
    .expect("address");
    late.set_config("site_peers", &format!("[\"{peer_addr}\"]"));
    late.start();
    let s = late.wait_complete("models", v, Duration::from_secs(60));
    assert_eq!(s["traffic"]["metered_in"], 0, "the seed was down; nothing may come over the metered link: {s}");
    assert!(s["chunks_from_peers"].as_u64().expect("count") > 0, "nothing came from the site peer: {s}");
    assert_eq!(s["chunks_from_seed"], 0, "{s}");
    let out = c.path("export");
    crate::harness::cli_ok(&["export", "--home", late.home_arg(), "--channel", "models", "--out", out.to_str().expect("utf-8")]);
    assert!(std::fs::read(out.join("models/weights.bin")).expect("exported") == payload);
}
