//! Issue 5: fleet trust on the real binary. A revoked device is cut off by the seed and by its
//! site peers and cannot come back, while the rest of the site completes a new release; a
//! rotated publisher key is followed by devices (also one that was away, also after a restart)
//! and a release signed by a key that was not rotated in is refused.

use crate::harness::{Cluster, Node, cli, cli_ok, wait_for};
use layerhop_protocol::{PublisherKey, SignedRelease};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

fn model_dir(c: &Cluster, name: &str, seed: u32) -> PathBuf {
    let dir = c.path(name).join("models");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let bytes: Vec<u8> = (0..400_000u32).map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 9) as u8).collect();
    std::fs::write(dir.join("weights.bin"), bytes).expect("write");
    dir
}

fn peer_id(n: &Node) -> String {
    n.status().expect("status")["peer_id"].as_str().expect("peer id").to_owned()
}

fn connected_to(n: &Node, peer: &str) -> bool {
    n.status().is_ok_and(|s| s["peers"].as_array().is_some_and(|ps| ps.iter().any(|p| p["peer_id"] == peer)))
}

fn site_members(n: &Node) -> usize {
    n.status().ok().and_then(|s| s["peers"].as_array().map(|ps| ps.iter().filter(|p| p["site_member"] == true).count())).unwrap_or(0)
}

fn log_lines(n: &Node, all: &[&str]) -> usize {
    n.log().lines().filter(|l| all.iter().all(|w| l.contains(w))).count()
}

fn holds_complete(n: &Node, channel: &str, version: u64) -> bool {
    n.status().is_ok_and(|s| {
        s["releases"].as_array().is_some_and(|rs| rs.iter().any(|r| r["channel"] == channel && r["version"] == version && r["complete"] == true))
    })
}

#[test]
fn revoked_device_is_cut_off_by_seed_and_site_peers() {
    let c = Cluster::start(3, "plant-9");
    let v1 = c.publish("models", &[&model_dir(&c, "r1", 1)]);
    for d in &c.devices {
        d.wait_complete("models", v1, LIMIT);
    }
    for d in &c.devices {
        wait_for("a full site mesh", LIMIT, || (site_members(d) == 2).then_some(())).expect("site peers connected");
    }
    let victim = peer_id(&c.devices[2]);

    let out: Value = serde_json::from_str(&cli_ok(&["revoke", "--home", c.seed.home_arg(), "--peer", &victim])).expect("revoke prints JSON");
    assert_eq!(out["version"], 1, "{out}");
    assert_eq!(out["token_ids"].as_array().map(Vec::len), Some(1), "the connected device's credential is revoked too: {out}");
    assert_eq!(out["disconnected"], 1, "{out}");

    // The seed and both site peers drop it, and keep it out: it redials and is closed again.
    for n in [&c.seed, &c.devices[0], &c.devices[1]] {
        wait_for("the revoked device to be dropped", LIMIT, || (!connected_to(n, &victim)).then_some(())).expect("dropped");
    }
    for d in &c.devices[..2] {
        wait_for("the revocation list to reach the site", LIMIT, || (d.status().ok()?["revocations_version"] == 1).then_some(()))
            .expect("list received");
        assert!(log_lines(d, &["revoked peer", &victim]) >= 1, "{} did not cut off the revoked peer:\n{}", d.home.display(), d.log());
    }
    wait_for("the revoked device to try again and be refused", LIMIT, || (log_lines(&c.seed, &["revoked peer connected; closing", &victim]) >= 2).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.seed.log()));

    // The others still complete a new release; the revoked device does not get it.
    let v2 = c.publish("models", &[&model_dir(&c, "r2", 2)]);
    for d in &c.devices[..2] {
        d.wait_complete("models", v2, LIMIT);
    }
    assert!(!holds_complete(&c.devices[2], "models", v2), "the revoked device completed the new release");
    for n in [&c.seed, &c.devices[0], &c.devices[1]] {
        assert!(!connected_to(n, &victim), "{} is connected to the revoked device again", n.home.display());
    }

    // Revoking an unused token by its id: the device it enrolls is refused at hello.
    let invite = cli(&["invite", "--home", c.seed.home_arg(), "--site", "plant-9"]);
    assert!(invite.status.success());
    let token = String::from_utf8_lossy(&invite.stdout).trim().to_owned();
    let note = String::from_utf8_lossy(&invite.stderr).into_owned();
    let token_id = note.split_whitespace().skip_while(|w| *w != "id").nth(1).expect("invite names the token id").to_owned();
    let out: Value = serde_json::from_str(&cli_ok(&["revoke", "--home", c.seed.home_arg(), "--token-id", &token_id])).expect("JSON");
    assert_eq!(out["version"], 2, "{out}");
    let mut late = Node::new(c.path("late"));
    cli_ok(&["init", "--home", late.home_arg(), "--join", &token, "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--registry", "off", "--metrics", "127.0.0.1:0"]);
    late.start();
    let late_id = peer_id(&late);
    wait_for("the seed to refuse the revoked token", LIMIT, || (log_lines(&c.seed, &["revoked device refused", &late_id, &token_id]) >= 1).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.seed.log()));
    assert!(!holds_complete(&late, "models", v2), "a device with a revoked token completed a release");
    let bad = cli(&["revoke", "--home", c.seed.home_arg(), "--token-id", "xyz"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("not hex"), "a malformed token id is named");
}

fn release_file(seed: &Node, channel: &str, version: u64) -> PathBuf {
    seed.home.join("data/releases").join(channel).join(format!("{version:020}.release"))
}

fn key_at(path: &Path) -> PublisherKey {
    PublisherKey::from_bytes(std::fs::read(path).expect("key file").try_into().expect("32 bytes"))
}

/// A genuine-looking next release of `channel`, signed by `key`.
fn signed_by(seed: &Node, channel: &str, version: u64, key: &PublisherKey, out: &Path) {
    let genuine = SignedRelease::decode(&std::fs::read(release_file(seed, channel, version)).expect("read")).expect("decode");
    let mut body = genuine.peek().expect("body");
    body.version = version + 1;
    std::fs::write(out, key.sign_release(&body).expect("sign").encode()).expect("write");
}

#[test]
fn rotated_publisher_key_is_followed_and_strangers_are_refused() {
    let mut c = Cluster::start(2, "depot-4");
    let v1 = c.publish("models", &[&model_dir(&c, "r1", 1)]);
    for d in &c.devices {
        d.wait_complete("models", v1, LIMIT);
    }
    let old_key = key_at(&c.seed.home.join("publisher.key"));
    // Device 1 is away while the key rotates.
    c.devices[1].stop();

    let out: Value = serde_json::from_str(&cli_ok(&["rotate-key", "--home", c.seed.home_arg()])).expect("rotate-key prints JSON");
    assert_eq!(out["seq"], 1, "{out}");
    let new_key = out["new_key"].as_str().expect("new key").to_owned();
    assert_eq!(out["old_key"], old_key.public().to_hex(), "{out}");
    assert_ne!(new_key, old_key.public().to_hex());
    assert_eq!(key_at(&c.seed.home.join("publisher.key")).public().to_hex(), new_key, "the seed signs with the new key now");
    let d0 = &c.devices[0];
    wait_for("the rotation to reach device 0", LIMIT, || (d0.status().ok()?["publisher_key"] == new_key.as_str()).then_some(())).expect("rotation pushed");

    let v2 = c.publish("models", &[&model_dir(&c, "r2", 2)]);
    let genuine = SignedRelease::decode(&std::fs::read(release_file(&c.seed, "models", v2)).expect("read")).expect("decode");
    assert_eq!(genuine.key.to_hex(), new_key, "v2 is signed by the new key");
    d0.wait_complete("models", v2, LIMIT);
    // The device that was away learns the rotation when it comes back, then takes v2.
    c.devices[1].start();
    c.devices[1].wait_complete("models", v2, LIMIT);
    assert_eq!(c.devices[1].status().expect("status")["publisher_key"], new_key.as_str());

    // The rotation is durable: after a restart device 0 still takes releases of the new key.
    let mut d0 = c.devices.remove(0);
    d0.stop();
    d0.start();
    assert_eq!(d0.status().expect("status")["publisher_key"], new_key.as_str(), "the rotation survived the restart");
    let v3 = c.publish("models", &[&model_dir(&c, "r3", 3)]);
    d0.wait_complete("models", v3, LIMIT);

    // A release signed by a key that was never rotated in, or by the key rotated out, is refused.
    let stranger = PublisherKey::generate().expect("key");
    for (name, key) in [("stranger", &stranger), ("rotated-out", &old_key)] {
        let file = c.path(&format!("{name}.release"));
        signed_by(&c.seed, "models", v3, key, &file);
        let out = cli(&["offer", "--home", d0.home_arg(), file.to_str().expect("utf-8")]);
        let msg = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "a release signed by the {name} key was accepted: {msg}");
        assert!(msg.contains("unknown key"), "{name}: {msg}");
    }
    let s = d0.status().expect("status");
    assert!(s["releases"].as_array().expect("releases").iter().any(|r| r["version"] == v3), "the device still holds v3: {s}");
    assert!(!s["releases"].as_array().expect("releases").iter().any(|r| r["version"] == v3 + 1), "{s}");
}
