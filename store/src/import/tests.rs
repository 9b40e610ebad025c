//! End-to-end tests of import and export through the store's public API.
//!
//! Sources are built here with the `tar`, `flate2` and `zstd` crates, imported into a fresh
//! store and exported again; every comparison is byte for byte, because a layer that differs by
//! one byte has another diff_id and `docker load` refuses the image. Bad sources must fail with
//! an error that names the problem and leave the store as consistent as they found it.

use crate::error::Error;
use crate::{Store, export, import};
use layerhop_protocol::{ArtifactKind, Channel, ChunkId, Content, ReleaseBody, tree};
use sha2::Digest;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The huge file: large enough for FastCDC to cut it into a tree of many chunks.
const HUGE: usize = 20 << 20;
const MTIME: u64 = 1_700_000_000;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, _) = Store::open(&dir.path().join("store")).expect("open store");
    // As `publish` does: no fsync per chunk; these tests never crash mid-import.
    s.set_durable(false);
    (dir, s)
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha256(b: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(b).into()
}

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha256(b)))
}

fn header(gnu: bool, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = if gnu { tar::Header::new_gnu() } else { tar::Header::new_ustar() };
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(MTIME);
    h
}

/// One pax record; its length prefix counts itself, so grow it until it is stable.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut n = body.len();
    while n.to_string().len() + body.len() != n {
        n = n.to_string().len() + body.len();
    }
    format!("{n}{body}").into_bytes()
}

const GNU_LONG: &str = "app/gnu-long-name-gggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggg.txt";
const USTAR_SPLIT: &str = "app/ppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp/ustar-prefix-nnnnnnnnnnnnnnn.txt";

fn pax_long() -> String {
    format!("app/pax-long-name-{}.txt", "x".repeat(200))
}

/// A layer holding every kind of entry a real image has: a directory, an empty file, a huge
/// file, a run of zeros, long names in GNU, ustar-prefix and pax form, symlinks (one with a
/// long target), a hard link, and the end-of-archive blocks.
fn rich_layer() -> &'static [u8] {
    static LAYER: OnceLock<Vec<u8>> = OnceLock::new();
    LAYER.get_or_init(|| {
        let mut b = tar::Builder::new(Vec::new());
        let ok = "build rich layer";
        b.append_data(&mut header(true, tar::EntryType::Directory, 0, 0o755), "app/", &[][..]).expect(ok);
        b.append_data(&mut header(true, tar::EntryType::Regular, 0, 0o644), "app/empty", &[][..]).expect(ok);
        let huge = pseudo_random(HUGE, 1);
        b.append_data(&mut header(true, tar::EntryType::Regular, HUGE as u64, 0o755), "app/huge.bin", &huge[..]).expect(ok);
        let zeros = vec![0u8; 3 << 20];
        b.append_data(&mut header(true, tar::EntryType::Regular, zeros.len() as u64, 0o644), "app/zeros.img", &zeros[..]).expect(ok);
        // A GNU header cannot hold a 100+ byte name: the tar crate writes a `././@LongLink` 'L' record.
        b.append_data(&mut header(true, tar::EntryType::Regular, 5, 0o644), GNU_LONG, &b"hello"[..]).expect(ok);
        // A ustar header splits a long name into prefix and name instead.
        b.append_data(&mut header(false, tar::EntryType::Regular, 6, 0o644), USTAR_SPLIT, &b"prefix"[..]).expect(ok);
        // pax: an 'x' record carrying path, a fractional mtime and an xattr, then the entry.
        let mut pax = pax_record("path", &pax_long());
        pax.extend(pax_record("mtime", "1700000000.123456789"));
        pax.extend(pax_record("SCHILY.xattr.user.note", "kept"));
        let mut h = header(false, tar::EntryType::XHeader, pax.len() as u64, 0o644);
        h.set_path("PaxHeaders.0/pax-long-name").expect(ok);
        h.set_cksum();
        b.append(&h, &pax[..]).expect(ok);
        let data = pseudo_random(100_000, 2);
        let mut h = header(false, tar::EntryType::Regular, data.len() as u64, 0o600);
        h.set_path("app/pax-long-name").expect(ok);
        h.set_cksum();
        b.append(&h, &data[..]).expect(ok);
        b.append_link(&mut header(true, tar::EntryType::Symlink, 0, 0o777), "app/link", "huge.bin").expect(ok);
        // A 100+ byte link target in a GNU header becomes a 'K' record.
        b.append_link(&mut header(true, tar::EntryType::Symlink, 0, 0o777), "app/longlink", GNU_LONG).expect(ok);
        b.append_link(&mut header(true, tar::EntryType::Link, 0, 0o644), "app/hard", "app/huge.bin").expect(ok);
        b.into_inner().expect(ok)
    })
}

/// A small layer on top: a file, a file just past one chunk, and a whiteout.
fn small_layer(seed: u64) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let ok = "build small layer";
    b.append_data(&mut header(false, tar::EntryType::Directory, 0, 0o755), "etc/", &[][..]).expect(ok);
    let conf = pseudo_random(1000, seed);
    b.append_data(&mut header(false, tar::EntryType::Regular, 1000, 0o644), "etc/app.conf", &conf[..]).expect(ok);
    let big = pseudo_random(70_000, seed + 1);
    b.append_data(&mut header(false, tar::EntryType::Regular, 70_000, 0o644), "etc/table.bin", &big[..]).expect(ok);
    b.append_data(&mut header(false, tar::EntryType::Regular, 0, 0o644), "app/.wh.zeros.img", &[][..]).expect(ok);
    b.into_inner().expect(ok)
}

fn config_for(layers: &[&[u8]]) -> Vec<u8> {
    let ids: Vec<String> = layers.iter().map(|l| digest(l)).collect();
    let v = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": { "Cmd": ["/app/huge.bin"] },
        "rootfs": { "type": "layers", "diff_ids": ids },
    });
    serde_json::to_vec(&v).expect("config json")
}

/// Write a tar of regular `files` and `symlinks` (name, target).
fn write_tar(path: &Path, files: &[(&str, &[u8])], symlinks: &[(&str, &str)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).expect("create tar"));
    for (name, bytes) in files {
        let mut h = header(false, tar::EntryType::Regular, bytes.len() as u64, 0o644);
        b.append_data(&mut h, name, *bytes).expect("append member");
    }
    for (name, target) in symlinks {
        b.append_link(&mut header(false, tar::EntryType::Symlink, 0, 0o777), name, target).expect("append link");
    }
    b.into_inner().expect("finish tar").sync_all().expect("sync tar");
}

/// A `docker save` tarball. The last layer is stored the newer docker way, as a blob under
/// `blobs/sha256/` with `<id>/layer.tar` a symlink to it.
fn docker_save(path: &Path, config: &[u8], layers: &[&[u8]]) {
    let config_name = format!("{}.json", hex::encode(sha256(config)));
    let names: Vec<String> = layers.iter().map(|l| format!("{}/layer.tar", hex::encode(sha256(l)))).collect();
    let manifest = serde_json::json!([{ "Config": config_name, "RepoTags": ["e2e/app:v1"], "Layers": names }]);
    let manifest = serde_json::to_vec(&manifest).expect("manifest json");
    let blob_name = layers.last().map(|l| format!("blobs/sha256/{}", hex::encode(sha256(l)))).unwrap_or_default();
    let mut files: Vec<(&str, &[u8])> = vec![(config_name.as_str(), config)];
    let (last, rest) = names.split_last().expect("at least one layer");
    files.extend(rest.iter().zip(layers).map(|(n, l)| (n.as_str(), *l)));
    files.push((blob_name.as_str(), layers[layers.len() - 1]));
    files.push(("manifest.json", &manifest));
    write_tar(path, &files, &[(last.as_str(), format!("../{blob_name}").as_str())]);
}

fn put_blob(dir: &Path, bytes: &[u8]) -> String {
    let d = dir.join("blobs/sha256");
    std::fs::create_dir_all(&d).expect("mkdir blobs");
    std::fs::write(d.join(hex::encode(sha256(bytes))), bytes).expect("write blob");
    digest(bytes)
}

fn write_index(dir: &Path, manifest_digest: &str) {
    let index = serde_json::json!({ "schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": 0,
        "annotations": { "org.opencontainers.image.ref.name": "v1" },
    }]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).expect("index json")).expect("write index");
}

/// An OCI image layout of `config` and already compressed `layers` (bytes, media type).
fn oci_layout(dir: &Path, config: &[u8], layers: &[(&[u8], &str)]) {
    std::fs::create_dir_all(dir).expect("mkdir layout");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("write oci-layout");
    let cfg = serde_json::json!({ "mediaType": "application/vnd.oci.image.config.v1+json", "digest": put_blob(dir, config), "size": config.len() });
    let layers: Vec<_> = layers
        .iter()
        .map(|(b, media)| serde_json::json!({ "mediaType": media, "digest": put_blob(dir, b), "size": b.len() }))
        .collect();
    let m = serde_json::json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cfg, "layers": layers });
    write_index(dir, &put_blob(dir, &serde_json::to_vec(&m).expect("manifest json")));
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).expect("gzip");
    e.finish().expect("gzip")
}

fn release(imported: import::Imported) -> ReleaseBody {
    let body = ReleaseBody {
        channel: Channel::new("e2e").expect("channel"),
        version: 1,
        issued_at: MTIME,
        expires_at: MTIME + 86_400,
        artifacts: imported.artifacts,
        images: imported.images,
        priority: Default::default(),
    };
    // What `publish` would sign must pass the checks every device makes.
    body.validate().expect("imported release is valid");
    body
}

fn exported(s: &Store, a: &layerhop_protocol::Artifact) -> Vec<u8> {
    let mut out = Vec::new();
    let n = export::write_artifact(s, a, &mut out).expect("write artifact");
    assert_eq!(n, out.len() as u64);
    out
}

fn untar(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in tar::Archive::new(bytes).entries().expect("entries") {
        let mut e = e.expect("entry");
        let name = e.path().expect("path").to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).expect("read member");
        out.insert(name, data);
    }
    out
}

/// Check an imported image against its source layers, then its `docker load` tarball: each
/// layer byte-identical and hashing to its diff_id. Returns the tarball.
fn check_image(s: &Store, body: &ReleaseBody, config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let img = &body.images[0];
    assert_eq!(img.layers.len(), layers.len());
    let cfg = &body.artifacts[img.config as usize];
    assert_eq!(cfg.kind, ArtifactKind::ImageConfig);
    assert_eq!(exported(s, cfg), config);
    for (&i, want) in img.layers.iter().zip(layers) {
        let a = &body.artifacts[i as usize];
        assert_eq!((a.kind, a.size, a.sha256), (ArtifactKind::Layer, want.len() as u64, Some(sha256(want))), "{}", a.name);
        assert!(matches!(a.content, Content::Tar { .. }), "{} is stored split", a.name);
        assert!(exported(s, a) == *want, "{} is not byte-identical", a.name);
    }
    let mut tarball = Vec::new();
    export::write_docker_tar(s, body, img, &mut tarball).expect("write docker tar");
    let members = untar(&tarball);
    let manifest: serde_json::Value = serde_json::from_slice(&members["manifest.json"]).expect("manifest");
    let cfg_name = manifest[0]["Config"].as_str().expect("Config");
    assert_eq!(members[cfg_name], config);
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!(img.repo_tags));
    let cfg_json: serde_json::Value = serde_json::from_slice(config).expect("config");
    let diff_ids = cfg_json["rootfs"]["diff_ids"].as_array().expect("diff_ids");
    let names = manifest[0]["Layers"].as_array().expect("Layers");
    assert_eq!(names.len(), layers.len());
    for ((name, want), id) in names.iter().zip(layers).zip(diff_ids) {
        let got = &members[name.as_str().expect("layer name")];
        assert!(got == want, "exported {name} is not byte-identical");
        assert_eq!(digest(got), id.as_str().expect("diff_id"));
    }
    tarball
}

/// After a failed import: every chunk file is indexed and intact, no temp file is left, and the
/// store reopens without a rebuild. (Chunks written before the failure stay behind: valid,
/// unreferenced, and reused by the next import of the same bytes.)
fn assert_consistent(s: Store) {
    let root = s.root().to_owned();
    let mut files = 0;
    for sub in std::fs::read_dir(root.join("chunks")).expect("list chunks") {
        for f in std::fs::read_dir(sub.expect("sub").path()).expect("list sub") {
            let name = f.expect("chunk file").file_name().to_string_lossy().into_owned();
            let id = ChunkId::from_hex(&name).unwrap_or_else(|_| panic!("stray file {name} in the chunk directory"));
            assert!(s.has(&id) && s.get(&id).expect("get").is_some(), "chunk {name} is not indexed or damaged");
            files += 1;
        }
    }
    assert_eq!(files, s.chunk_count(), "chunk files and index disagree");
    assert_eq!(std::fs::read_dir(root.join("quarantine")).expect("quarantine").count(), 0);
    drop(s);
    let (_s, report) = Store::open(&root).expect("reopen");
    assert!(!report.rebuilt, "the index survived the failed import");
}

fn import_err(s: &Store, src: &Path) -> String {
    match import::import_sources(s, &[src.to_owned()]) {
        Ok(_) => panic!("{} was imported", src.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn docker_save_round_trips_byte_exact() {
    let (dir, s) = store();
    let rich = rich_layer();
    // The source really holds every long-name form (else this test would prove nothing).
    let paths: Vec<String> = untar(rich).into_keys().collect();
    for p in [GNU_LONG, USTAR_SPLIT, pax_long().as_str(), "app/empty", "app/hard", "app/link"] {
        assert!(paths.iter().any(|q| q == p), "{p} missing from {paths:?}");
    }
    // Exactly two GNU records ('L' for GNU_LONG, 'K' for the long link): USTAR_SPLIT used the prefix.
    assert_eq!(rich.windows(13).filter(|w| w == b"././@LongLink").count(), 2);
    let small = small_layer(10);
    let layers = [rich, &small[..]];
    let config = config_for(&layers);
    let src = dir.path().join("image.tar");
    docker_save(&src, &config, &layers);

    let body = release(import::import_sources(&s, std::slice::from_ref(&src)).expect("import"));
    assert_eq!(body.images[0].repo_tags, ["e2e/app:v1"]);
    let a = &body.artifacts[body.images[0].layers[0] as usize];
    let Content::Tar { contents, .. } = &a.content else { panic!("layer not split") };
    assert!(contents.height >= 1 && s.chunk_count() > HUGE / layerhop_protocol::limits::MAX_CHUNK, "the huge file was cut into chunks");
    let tarball = check_image(&s, &body, &config, &layers);

    // The exported tarball is itself a `docker save`: importing it gives the same artifacts.
    let again = dir.path().join("again.tar");
    std::fs::write(&again, &tarball).expect("write tarball");
    let back = import::import_sources(&s, &[again]).expect("re-import");
    assert_eq!(back.artifacts, body.artifacts);

    // `export_release` to a `.tar` path writes that tarball alone...
    let out = dir.path().join("out/app.tar");
    export::export_release(&s, &body, &out).expect("export");
    assert!(std::fs::read(&out).expect("read export") == tarball);
    // ...and never replaces what is there, not even a dangling symlink.
    let link = dir.path().join("link.tar");
    std::os::unix::fs::symlink("nowhere.tar", &link).expect("symlink");
    let e = export::export_release(&s, &body, &link).expect_err("export over a symlink");
    assert!(e.to_string().contains("already exists"), "{e}");
    assert_eq!(std::fs::read_link(&link).expect("still a symlink"), Path::new("nowhere.tar"));
    assert!(!dir.path().join("nowhere.tar").exists());
}

#[test]
fn oci_layout_with_gzip_and_zstd_layers_round_trips_uncompressed() {
    let (dir, s) = store();
    let rich = rich_layer();
    let (small, top) = (small_layer(20), small_layer(30));
    let layers = [rich, &small[..], &top[..]];
    let config = config_for(&layers);
    // The second layer is two gzip members back to back, as parallel compressors write them.
    let half = small.len() / 2;
    let mut multi = gzip(&small[..half]);
    multi.extend(gzip(&small[half..]));
    let zst = zstd::encode_all(&top[..], 3).expect("zstd");
    let src = dir.path().join("Detector");
    let gz = "application/vnd.oci.image.layer.v1.tar+gzip";
    oci_layout(&src, &config, &[(&gzip(rich)[..], gz), (&multi[..], gz), (&zst[..], "application/vnd.oci.image.layer.v1.tar+zstd")]);

    let body = release(import::import_sources(&s, &[src]).expect("import"));
    // A bare ref.name is a tag of the repository named after the (lowercased) layout directory.
    assert_eq!(body.images[0].repo_tags, ["detector:v1"]);
    check_image(&s, &body, &config, &layers);
}

#[test]
fn model_files_export_under_their_names_and_never_overwrite() {
    let (dir, s) = store();
    let models = dir.path().join("models");
    let files: [(&str, Vec<u8>); 4] = [
        ("detector.onnx", pseudo_random(300_000, 7)),
        ("empty.txt", Vec::new()),
        ("sub/deeper/weights.bin", pseudo_random(70_000, 8)),
        ("sub/labels.txt", b"cat\ndog\n".to_vec()),
    ];
    for (name, bytes) in &files {
        let p = models.join(name);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, bytes).expect("write model");
    }
    let body = release(import::import_sources(&s, &[models]).expect("import"));
    assert!(body.images.is_empty());
    let names: Vec<String> = files.iter().map(|(n, _)| format!("models/{n}")).collect();
    assert_eq!(body.artifacts.iter().map(|a| a.name.clone()).collect::<Vec<_>>(), names);

    // The parent of `out` need not exist.
    let out = dir.path().join("exports/release");
    let report = export::export_release(&s, &body, &out).expect("export");
    assert_eq!(report.files, names.iter().map(PathBuf::from).collect::<Vec<_>>());
    assert_eq!(report.bytes, files.iter().map(|(_, b)| b.len() as u64).sum::<u64>());
    for ((_, want), name) in files.iter().zip(&names) {
        assert!(std::fs::read(out.join(name)).expect("read exported") == *want, "{name}");
    }

    // An existing directory or file is refused and left as it was; no temp dir is left behind.
    std::fs::write(out.join("models/empty.txt"), b"edited").expect("edit");
    let file = dir.path().join("exports/keep.txt");
    std::fs::write(&file, b"keep me").expect("write");
    for existing in [&out, &file] {
        let e = export::export_release(&s, &body, existing).expect_err("export over an existing path");
        assert!(e.to_string().contains("already exists"), "{e}");
    }
    assert_eq!(std::fs::read(out.join("models/empty.txt")).expect("read"), b"edited");
    assert_eq!(std::fs::read(out.join(&names[0])).expect("read"), files[0].1);
    assert_eq!(std::fs::read(&file).expect("read"), b"keep me");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("exports")).expect("list").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(left.len(), 2, "only the two outputs: {left:?}");
}

#[test]
fn docker_save_whose_diff_id_does_not_match_is_refused() {
    let (dir, s) = store();
    let (layer, other) = (small_layer(1), small_layer(2));
    let src = dir.path().join("image.tar");
    docker_save(&src, &config_for(&[&other[..]]), &[&layer[..]]);
    let e = import_err(&s, &src);
    assert!(e.contains("differs from the config's diff_id") && e.contains(&hex::encode(sha256(&other))), "{e}");
    // The chunks the failed import left behind do not get in the way of the right image.
    let good = dir.path().join("good.tar");
    let config = config_for(&[&layer[..]]);
    docker_save(&good, &config, &[&layer[..]]);
    let body = release(import::import_sources(&s, &[good]).expect("import"));
    check_image(&s, &body, &config, &[&layer[..]]);
    assert_consistent(s);
}

#[test]
fn docker_save_naming_a_missing_member_is_refused() {
    let (dir, s) = store();
    let layer = small_layer(1);
    let config = config_for(&[&layer[..]]);
    for missing in ["gone/layer.tar", "../../etc/passwd"] {
        let manifest = serde_json::json!([{ "Config": "c.json", "RepoTags": [], "Layers": [missing] }]).to_string();
        let src = dir.path().join("image.tar");
        write_tar(&src, &[("c.json", &config), ("l/layer.tar", &layer), ("manifest.json", manifest.as_bytes())], &[]);
        let e = import_err(&s, &src);
        // `..` cannot climb out of the tarball: it is resolved inside it, then not found.
        let shown = missing.trim_start_matches("../");
        assert!(e.contains(&format!("has no member {shown:?}")), "{e}");
    }
    assert_consistent(s);
}

#[test]
fn oci_digests_with_path_tricks_or_other_algorithms_are_refused() {
    let (dir, s) = store();
    let layer = small_layer(1);
    let config = config_for(&[&layer[..]]);
    let src = dir.path().join("layout");
    oci_layout(&src, &config, &[(&gzip(&layer)[..], "application/vnd.oci.image.layer.v1.tar+gzip")]);
    // Something a path trick could reach, to be sure it is not what stops the import.
    std::fs::write(dir.path().join("etc"), b"{}").expect("write decoy");
    let sha512 = format!("sha512:{}", "ab".repeat(64));
    for (d, why) in [("sha256:../../etc", "digest \"sha256:../../etc\""), (sha512.as_str(), "only sha256 digests are supported")] {
        write_index(&src, d);
        let e = import_err(&s, &src);
        assert!(e.contains(why), "{d}: {e}");
    }
    // The same trick in a manifest's layer list.
    let m = serde_json::json!({ "schemaVersion": 2, "config": { "digest": digest(&config) }, "layers": [{ "digest": "sha256:../../../../etc/passwd" }] });
    write_index(&src, &put_blob(&src, m.to_string().as_bytes()));
    let e = import_err(&s, &src);
    assert!(e.contains("digest \"sha256:../../../../etc/passwd\""), "{e}");
    // A blob whose bytes are not what its name says.
    let liar = put_blob(&src, b"{}");
    std::fs::write(src.join("blobs/sha256").join(&liar["sha256:".len()..]), b"{ }").expect("tamper");
    write_index(&src, &liar);
    let e = import_err(&s, &src);
    assert!(e.contains("does not match its digest"), "{e}");
    assert_consistent(s);
}

#[test]
fn truncated_layers_are_refused() {
    let (dir, s) = store();
    let layer = small_layer(1);
    // Cut inside the 70,000-byte file's data, and make the config agree with the cut bytes, so
    // the only thing wrong is the truncation.
    let cut = &layer[..2048 + 30_000];
    let src = dir.path().join("image.tar");
    docker_save(&src, &config_for(&[cut]), &[cut]);
    let e = import_err(&s, &src);
    assert!(e.contains("truncated"), "{e}");
    // Compressed streams cut short, against a config naming the whole layer.
    let config = config_for(&[&layer[..]]);
    let gz = gzip(&layer);
    let zst = zstd::encode_all(&layer[..], 3).expect("zstd");
    for (name, bytes, media) in [("gz", &gz, "tar+gzip"), ("zst", &zst, "tar+zstd")] {
        let src = dir.path().join(name);
        oci_layout(&src, &config, &[(&bytes[..bytes.len() / 2], format!("application/vnd.oci.image.layer.v1.{media}").as_str())]);
        let e = import_err(&s, &src);
        // flate2 says "incomplete deflate stream", zstd "incomplete frame".
        assert!(e.contains("images/0/layers/0.tar") && e.contains("incomplete"), "{name}: {e}");
    }
    assert_consistent(s);
}

#[test]
fn symlink_in_model_directory_is_refused() {
    let (dir, s) = store();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).expect("mkdir");
    std::fs::write(models.join("real.bin"), b"weights").expect("write");
    std::os::unix::fs::symlink("real.bin", models.join("alias.bin")).expect("symlink");
    let e = import_err(&s, &models);
    assert!(e.contains("alias.bin") && e.contains("is a symlink"), "{e}");
    assert_consistent(s);
}

/// A data chunk from the middle of a blob: the first leaf under the middle child of each node.
fn middle_leaf(s: &Store, b: layerhop_protocol::BlobRef) -> ChunkId {
    let (mut id, mut len) = (b.root, b.len);
    for _ in 0..b.height {
        let node = s.get(&id).expect("get node").expect("node present");
        let entries = tree::decode_node(&node, len).expect("decode node");
        let e = entries[entries.len() / 2];
        (id, len) = (e.id, e.len);
    }
    id
}

#[test]
fn missing_or_damaged_chunks_give_errors_not_wrong_bytes() {
    let (dir, s) = store();
    let small = small_layer(5);
    let layers = [rich_layer(), &small[..]];
    let src = dir.path().join("image.tar");
    docker_save(&src, &config_for(&layers), &layers);
    let body = release(import::import_sources(&s, &[src]).expect("import"));
    let img = &body.images[0];
    let [rich, small] = [0, 1].map(|i| &body.artifacts[img.layers[i] as usize]);
    let contents = |a: &layerhop_protocol::Artifact| match a.content {
        Content::Tar { contents, .. } => contents,
        Content::File(_) => panic!("{} not split", a.name),
    };

    // A chunk deep inside the huge file: the error surfaces mid-stream, through the tar joiner.
    let victim = middle_leaf(&s, contents(rich));
    s.remove(&victim).expect("remove");
    let e = export::write_artifact(&s, rich, &mut std::io::sink()).expect_err("export without a chunk");
    assert!(matches!(e, Error::Missing { id } if id == victim), "{e:?}");
    // The small layer's whole contents chunk.
    s.remove(&contents(small).root).expect("remove");
    let e = export::write_artifact(&s, small, &mut std::io::sink()).expect_err("export without a chunk");
    assert!(matches!(e, Error::Missing { id } if id == contents(small).root), "{e:?}");
    // A chunk damaged on disk is quarantined and reported missing, never served.
    let Content::File(cfg) = body.artifacts[img.config as usize].content else { panic!("config is a file") };
    std::fs::write(s.chunk_path(&cfg.root), b"{\"not\":\"the config\"}").expect("damage");
    let e = export::write_artifact(&s, &body.artifacts[img.config as usize], &mut std::io::sink()).expect_err("export damaged");
    assert!(matches!(e, Error::Missing { .. }), "{e:?}");

    // `export_release` fails as a whole: no output, no temp dir left.
    let out = dir.path().join("exports/app.tar");
    assert!(export::export_release(&s, &body, &out).is_err());
    assert_eq!(std::fs::read_dir(dir.path().join("exports")).expect("list").count(), 0);
}
