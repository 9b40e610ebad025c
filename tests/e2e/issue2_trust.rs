//! Issue 2: a device refuses a tampered, replayed or expired release, and a corrupted chunk in
//! the seed's store is never served.

use crate::harness::{Cluster, Node, cli, stored_chunks, wait_for};
use layerhop_protocol::{PublisherKey, SignedRelease};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn model_dir(c: &Cluster, name: &str, bytes: &[u8]) -> PathBuf {
    let dir = c.path(name).join("models");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("model.bin"), bytes).expect("write");
    dir
}

fn release_file(seed: &Node, channel: &str, version: u64) -> PathBuf {
    seed.home.join("data/releases").join(channel).join(format!("{version:020}.release"))
}

fn offer(d: &Node, file: &Path) -> (bool, String) {
    let out = cli(&["offer", "--home", d.home_arg(), file.to_str().expect("utf-8")]);
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn tampered_replayed_and_expired_releases_are_refused() {
    let mut c = Cluster::start(1, "yard");
    let d = &c.devices[0];
    let v1 = c.publish("models", &[&model_dir(&c, "r1", &[1u8; 5000])]);
    d.wait_complete("models", v1, Duration::from_secs(60));
    let v2 = c.publish("models", &[&model_dir(&c, "r2", &[2u8; 5000])]);
    d.wait_complete("models", v2, Duration::from_secs(60));

    // Tampered: one byte of the signed body flipped.
    let mut bytes = std::fs::read(release_file(&c.seed, "models", v2)).expect("release file");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let tampered = c.path("tampered.release");
    std::fs::write(&tampered, &bytes).expect("write");
    let (ok, msg) = offer(d, &tampered);
    assert!(!ok, "tampered release accepted: {msg}");
    assert!(msg.contains("signature") || msg.contains("malformed"), "{msg}");

    // Replayed: the genuine, older v1.
    let (ok, msg) = offer(d, &release_file(&c.seed, "models", v1));
    assert!(!ok, "replayed release accepted: {msg}");
    assert!(msg.contains("not newer"), "{msg}");

    // Expired: a genuinely signed v3 whose expiry has passed.
    let key_bytes: [u8; 32] = std::fs::read(c.seed.home.join("publisher.key")).expect("key").try_into().expect("32 bytes");
    let key = PublisherKey::from_bytes(key_bytes);
    let genuine = SignedRelease::decode(&std::fs::read(release_file(&c.seed, "models", v2)).expect("read")).expect("decode");
    let mut body = genuine.peek().expect("body");
    body.version = v2 + 1;
    body.issued_at -= 7200;
    body.expires_at = body.issued_at + 60;
    let expired = c.path("expired.release");
    std::fs::write(&expired, key.sign_release(&body).expect("sign").encode()).expect("write");
    let (ok, msg) = offer(d, &expired);
    assert!(!ok, "expired release accepted: {msg}");
    assert!(msg.contains("expired"), "{msg}");

    let log = d.log();
    for reason in ["bad signature", "not newer", "expired"] {
        assert!(log.lines().any(|l| l.contains("release refused") && l.contains(reason)), "no log line names {reason:?}:\n{log}");
    }
    let s = d.status().expect("status");
    let r = &s["releases"][0];
    assert_eq!(r["version"], v2, "the device still holds v2");

    // The trusted version survives a restart: v1 is still refused afterwards.
    let mut d = c.devices.remove(0);
    d.stop();
    d.start();
    let (ok, msg) = offer(&d, &release_file(&c.seed, "models", v1));
    assert!(!ok && msg.contains("not newer"), "after restart: {msg}");
}

#[test]
fn corrupted_chunk_in_seed_store_is_not_served() {
    let mut c = Cluster::start(1, "yard");
    // Stop the device so the corruption happens before anything is fetched.
    let mut d = c.devices.pop().expect("device");
    d.stop();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let v = c.publish("models", &[&model_dir(&c, "r1", &payload)]);
    // Corrupt every data chunk file of the model on the seed: flip a byte in each.
    let chunks = c.seed.home.join("data/chunks");
    let mut corrupted = 0;
    for sub in std::fs::read_dir(&chunks).expect("chunks").flatten() {
        for f in std::fs::read_dir(sub.path()).expect("sub").flatten() {
            let mut b = std::fs::read(f.path()).expect("read");
            if b.len() >= 16 * 1024 {
                b[100] ^= 1;
                std::fs::write(f.path(), &b).expect("write");
                corrupted += 1;
            }
        }
    }
    assert!(corrupted > 0, "no data chunk found to corrupt");
    d.start();
    wait_for("the seed to detect the corruption", Duration::from_secs(60), || {
        c.seed.log().contains("does not match its name").then_some(())
    })
    .expect("seed detected corruption");
    let s = d.status().expect("status");
    let r = s["releases"].as_array().expect("releases").iter().find(|r| r["version"] == v).cloned().expect("release known");
    assert_eq!(r["complete"], false, "device completed from corrupted chunks: {s}");
    // Nothing damaged reached the device's store: every chunk there matches its name.
    for (name, b) in stored_chunks(&d.home) {
        assert_eq!(blake3::hash(&b).to_hex().as_str(), name, "device stored a bad chunk");
    }
    // Publishing the same bytes again repairs the seed; the device then completes.
    let v2 = c.publish("models", &[&model_dir(&c, "r1", &payload)]);
    d.wait_complete("models", v2, Duration::from_secs(60));
}
