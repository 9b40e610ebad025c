//! Issue 4: which release and which document a tag gets — multi-platform releases as image
//! indexes, and a release whose chunks are still missing (404 at once, or a bounded wait that
//! ends when the chunks arrive).

use crate::harness::{Cluster, cli_ok, tar_members, wait_for};
use crate::issue4_registry::{get, original, registry_addr};
use layerhop_node::sample;
use sha2::Digest;
use std::path::Path;
use std::time::{Duration, Instant};

const CHANNEL: &str = "anomaly-detector";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Copy a `docker save` tarball with its config's architecture replaced (same layers, same tag).
fn with_architecture(src: &Path, arch: &str, out: &Path) -> String {
    let members = tar_members(src);
    let manifest: serde_json::Value = serde_json::from_slice(&members["manifest.json"]).expect("manifest.json");
    let config_name = manifest[0]["Config"].as_str().expect("config");
    let mut config: serde_json::Value = serde_json::from_slice(&members[config_name]).expect("config");
    config["architecture"] = arch.into();
    let config = serde_json::to_vec(&config).expect("json");
    let digest = hex::encode(sha2::Sha256::digest(&config));
    let mut m = manifest.clone();
    m[0]["Config"] = format!("{digest}.json").into();
    let mut b = tar::Builder::new(std::fs::File::create(out).expect("create"));
    let mut add = |name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, bytes).expect("append");
    };
    for l in manifest[0]["Layers"].as_array().expect("layers") {
        let l = l.as_str().expect("layer");
        add(l, &members[l]);
    }
    add(&format!("{digest}.json"), &config);
    add("manifest.json", &serde_json::to_vec(&m).expect("json"));
    b.finish().expect("finish");
    format!("sha256:{digest}")
}

#[test]
fn multi_platform_release_is_served_as_an_index() {
    let mut c = Cluster::start(0, "idx-1");
    c.add_device_with("idx-1", &["--registry", "127.0.0.1:0"]);
    let amd = c.path("amd64.tar");
    let info = sample::write_docker_save(&sample::Spec::small(61), 0, &amd).expect("image");
    let arm = c.path("arm64.tar");
    let arm_config = with_architecture(&amd, "arm64", &arm);
    c.publish(CHANNEL, &[&amd, &arm]);
    c.devices[0].wait_complete(CHANNEL, 1, Duration::from_secs(120));
    let addr = registry_addr(&c.devices[0]);
    for (accept, index_type, child_type) in
        [(format!("{OCI_MANIFEST}, {OCI_INDEX}"), OCI_INDEX, OCI_MANIFEST), (format!("{DOCKER_MANIFEST}, {DOCKER_LIST}"), DOCKER_LIST, DOCKER_MANIFEST)]
    {
        let r = get(&addr, &format!("/v2/{CHANNEL}/manifests/latest"), &[("Accept", &accept)]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some(index_type));
        let idx = r.json();
        let entries = idx["manifests"].as_array().expect("manifests");
        let archs: Vec<&str> = entries.iter().map(|e| e["platform"]["architecture"].as_str().expect("arch")).collect();
        assert_eq!(archs, ["amd64", "arm64"]);
        let mut configs = Vec::new();
        for e in entries {
            assert_eq!(e["mediaType"], child_type);
            let child = get(&addr, &format!("/v2/{CHANNEL}/manifests/{}", e["digest"].as_str().expect("digest")), &[("Accept", child_type)]);
            assert_eq!(child.status, 200);
            assert_eq!(child.body.len() as u64, e["size"].as_u64().expect("size"));
            let m = child.json();
            configs.push(m["config"]["digest"].as_str().expect("config").to_owned());
            let layers: Vec<&str> = m["layers"].as_array().expect("layers").iter().map(|l| l["digest"].as_str().expect("digest")).collect();
            assert_eq!(layers, info.diff_ids);
        }
        assert_eq!(configs, [info.config_digest.clone(), arm_config.clone()]);
    }
    // A client that takes no index gets the first image's manifest.
    let single = get(&addr, &format!("/v2/{CHANNEL}/manifests/latest"), &[("Accept", OCI_MANIFEST)]);
    assert_eq!(single.header("content-type"), Some(OCI_MANIFEST));
    assert_eq!(single.json()["config"]["digest"].as_str(), Some(info.config_digest.as_str()));
}

/// Set a key of a stopped node's config.
fn set_config(home: &Path, key: &str, value: &str) {
    let p = home.join("config.toml");
    let text = std::fs::read_to_string(&p).expect("config");
    let text: String = text.lines().map(|l| if l.starts_with(&format!("{key} =")) { format!("{key} = {value}\n") } else { format!("{l}\n") }).collect();
    std::fs::write(&p, text).expect("write config");
}

#[test]
fn incomplete_release_blobs_answer_404_or_wait_for_their_chunks() {
    let mut c = Cluster::start(0, "wait-1");
    c.add_device_with("wait-1", &["--registry", "127.0.0.1:0"]);
    let spec = sample::Spec::small(62);
    let (v1_image, v2_image) = (c.path("v1.tar"), c.path("v2.tar"));
    let v1 = original(&v1_image, sample::write_docker_save(&spec, 0, &v1_image).expect("v1"));
    let v2 = original(&v2_image, sample::write_docker_save(&spec, 1, &v2_image).expect("v2"));
    c.publish(CHANNEL, &[&v1_image]);
    c.devices[0].wait_complete(CHANNEL, 1, Duration::from_secs(120));
    // v2 reaches the device while the seed is down: it holds the release, not its new chunks.
    c.devices[0].stop();
    assert_eq!(c.publish(CHANNEL, &[&v2_image]), 2);
    let seed_addr = std::fs::read_to_string(c.seed.home.join("listen-addrs")).expect("listen-addrs");
    let seed_addr = seed_addr.lines().next().expect("an address").split("/p2p/").next().expect("addr").to_owned();
    c.seed.stop();
    c.devices[0].start();
    let release = c.seed.home.join(format!("data/releases/{CHANNEL}/{:020}.release", 2));
    cli_ok(&["offer", "--home", c.devices[0].home_arg(), release.to_str().expect("utf-8")]);
    let addr = registry_addr(&c.devices[0]);
    let digest_of = |tag: &str| get(&addr, &format!("/v2/{CHANNEL}/manifests/{tag}"), &[("Accept", OCI_MANIFEST)]).json()["config"]["digest"].clone();
    // `latest` stays on the newest complete release; `v2` names the incomplete one.
    assert_eq!(digest_of("latest"), v1.info.config_digest.as_str());
    assert_eq!(digest_of("v2"), v2.info.config_digest.as_str());
    let new_layer = v2.info.diff_ids.iter().find(|d| !v1.info.diff_ids.contains(d)).expect("a changed layer").clone();
    let blob = format!("/v2/{CHANNEL}/blobs/{new_layer}");
    let t = Instant::now();
    let r = get(&addr, &blob, &[]);
    assert_eq!((r.status, r.json()["errors"][0]["code"].as_str()), (404, Some("BLOB_UNKNOWN")));
    assert!(t.elapsed() < Duration::from_secs(2), "registry_wait_secs = 0 must not wait ({:?})", t.elapsed());

    // With a bounded wait: a 404 after the bound while the seed stays down ...
    c.devices[0].stop();
    set_config(&c.devices[0].home, "registry_wait_secs", "3");
    c.devices[0].start();
    let addr = registry_addr(&c.devices[0]);
    let t = Instant::now();
    assert_eq!(get(&addr, &blob, &[]).status, 404);
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(2900) && waited < Duration::from_secs(15), "waited {waited:?} for a 3 s bound");
    println!("blob of an incomplete release: 404 after {waited:?} (registry_wait_secs = 3)");

    // ... and the layer itself once the seed is back within the bound.
    c.devices[0].stop();
    set_config(&c.devices[0].home, "registry_wait_secs", "120");
    c.devices[0].start();
    let addr = registry_addr(&c.devices[0]);
    let pending = std::thread::spawn(move || get(&addr, &blob, &[]));
    set_config(&c.seed.home, "listen", &format!("[\"{seed_addr}\"]"));
    c.seed.start();
    let r = pending.join().expect("request thread");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(format!("sha256:{}", hex::encode(sha2::Sha256::digest(&r.body))), new_layer);
    wait_for("v2 complete", Duration::from_secs(60), || c.devices[0].status().ok().filter(|s| s["releases"][0]["complete"] == true)).expect("complete");
}
