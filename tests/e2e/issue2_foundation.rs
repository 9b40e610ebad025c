//! Issue 2: publish on a seed, fetch byte-exact on devices; a rebuilt layer costs only its headers.

use crate::harness::{Cluster, sha256_file, tar_members};
use layerhop_node::sample;
use sha2::Digest;
use std::time::Duration;

const CHANNEL: &str = "anomaly-detector";

#[test]
fn seed_and_two_devices_fetch_image_and_model_byte_exact() {
    let c = Cluster::start(2, "depot-1");
    let spec = sample::Spec { deps_files: 400, deps_bytes: 12 << 20, ..sample::Spec::default() };
    let image = c.path("image.tar");
    let info = sample::write_docker_save(&spec, 0, &image).expect("image");
    let model_dir = c.path("models");
    let model = sample::write_model_dir(&spec, 0, &model_dir).expect("model");
    let v = c.publish(CHANNEL, &[&image, &model_dir]);
    assert_eq!(v, 1);
    let original_layers: Vec<Vec<u8>> = {
        let members = tar_members(&image);
        let manifest: serde_json::Value = serde_json::from_slice(&members["manifest.json"]).expect("manifest");
        manifest[0]["Layers"].as_array().expect("layers").iter().map(|l| members[l.as_str().expect("str")].clone()).collect()
    };
    for (i, d) in c.devices.iter().enumerate() {
        d.wait_complete(CHANNEL, 1, Duration::from_secs(120));
        let out = c.path(&format!("export-{i}"));
        crate::harness::cli_ok(&["export", "--home", d.home_arg(), "--channel", CHANNEL, "--out", out.to_str().expect("utf-8")]);
        assert_eq!(sha256_file(&out.join("models").join(sample::MODEL_FILE_NAME)), sha256_file(&model), "model differs on device {i}");
        let tar = out.join("anomaly-detector_v1.tar");
        let members = tar_members(&tar);
        let manifest: serde_json::Value = serde_json::from_slice(&members["manifest.json"]).expect("exported manifest");
        let layers = manifest[0]["Layers"].as_array().expect("layers");
        assert_eq!(layers.len(), info.diff_ids.len());
        for (j, l) in layers.iter().enumerate() {
            let bytes = &members[l.as_str().expect("str")];
            assert_eq!(format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes))), info.diff_ids[j], "layer {j} diff_id on device {i}");
            assert!(bytes == &original_layers[j], "layer {j} bytes differ on device {i}");
        }
        let config = manifest[0]["Config"].as_str().expect("config");
        let config_json: serde_json::Value = serde_json::from_slice(&members[config]).expect("config json");
        assert_eq!(config_json["rootfs"]["diff_ids"], serde_json::json!(info.diff_ids));
        assert_eq!(manifest[0]["RepoTags"], serde_json::json!([spec.repo_tag]));
    }
}

#[test]
fn rebuilt_layer_costs_only_its_headers() {
    let c = Cluster::start(2, "depot-2");
    let spec = sample::Spec::default();
    assert!(spec.deps_files >= 3000 && spec.deps_bytes >= 100 << 20);
    let mut before = vec![0u64; c.devices.len()];
    for generation in 0..2u32 {
        let dir = c.path(&format!("gen-{generation}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let image = dir.join("image.tar");
        let info = sample::write_docker_save(&spec, generation, &image).expect("image");
        let model_dir = dir.join("models");
        let model = sample::write_model_dir(&spec, generation, &model_dir).expect("model");
        let model_size = std::fs::metadata(&model).expect("model").len();
        let v = c.publish(CHANNEL, &[&image, &model_dir]);
        let mut site_total = 0;
        for (i, d) in c.devices.iter().enumerate() {
            d.wait_complete(CHANNEL, v, Duration::from_secs(300));
            let metered_in = d.traffic("metered_in");
            let delta = metered_in - before[i];
            before[i] = metered_in;
            site_total += delta;
            println!(
                "release v{v}: device {i} metered_in {delta} bytes (layers {} bytes uncompressed, docker pull {} bytes, model {model_size} bytes)",
                info.layer_sizes.iter().sum::<u64>(),
                info.docker_pull_bytes()
            );
            if generation == 1 {
                assert!(delta <= 64 * 1024 + model_size, "device {i} took {delta} metered bytes for the rebuilt release (limit {})", 64 * 1024 + model_size);
            }
        }
        println!("release v{v}: site metered_in {site_total} bytes");
        if generation == 0 {
            // The first release really crossed the link (so the second's figure means something).
            assert!(site_total >= info.layer_sizes[sample::DEPS_LAYER] / 4, "release 1 moved suspiciously few bytes: {site_total}");
        }
    }
}
