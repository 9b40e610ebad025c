//! Writes the starting corpus of every fuzz target from the real encoders, so the fuzzers start
//! from valid messages, releases, tokens, tars and image layouts instead of from nothing.
//!
//! `cargo run --release --features seeds --bin seed_corpus` (from `fuzz/`); writes
//! `corpus/<target>/seed-*`, leaving other corpus files alone.

use layerhop_protocol::token::{Credential, JoinToken};
use layerhop_protocol::wire::{ChunkReply, HaveMap, Hello, PeerInfo, Request, Response, State};
use layerhop_protocol::{Artifact, ArtifactKind, BlobRef, Channel, ChunkId, Content, Image, PublisherKey, ReleaseBody, tree};
use layerhop_store::tarsplit;
use std::path::Path;

fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

fn with_mode(mode: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(bytes);
    v
}

fn body(version: u64) -> ReleaseBody {
    let blob = |s: &[u8]| BlobRef { root: ChunkId::of(s), len: s.len() as u64, height: 0 };
    let file = |name: &str, kind, s: &[u8]| Artifact {
        name: name.into(),
        kind,
        size: s.len() as u64,
        blake3: ChunkId::of(s),
        sha256: (kind != ArtifactKind::File).then_some([1; 32]),
        content: Content::File(blob(s)),
    };
    let layer = Artifact {
        content: Content::Tar { columns: vec![blob(b"c0"), blob(b"c1")], contents: BlobRef { root: ChunkId::of(b"n"), len: 1 << 20, height: 1 } },
        ..file("images/0/layers/0.tar", ArtifactKind::Layer, b"layer")
    };
    ReleaseBody {
        channel: Channel::new("anomaly-detector").expect("channel"),
        version,
        issued_at: 1_700_000_000,
        expires_at: 1_800_000_000,
        artifacts: vec![
            file("model/detector.onnx", ArtifactKind::File, b"model!"),
            file("images/0/config.json", ArtifactKind::ImageConfig, b"{}"),
            layer,
        ],
        images: vec![Image { repo_tags: vec!["anomaly-detector:v1".into()], config: 1, layers: vec![2] }],
        priority: Default::default(),
    }
}

fn tar_of(entries: &[(&str, tar::EntryType, &[u8])], gnu: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data) in entries {
        let mut h = if gnu { tar::Header::new_gnu() } else { tar::Header::new_ustar() };
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        if *kind == tar::EntryType::Symlink {
            b.append_link(&mut h, name, "target/file").expect("link");
        } else {
            b.append_data(&mut h, name, *data).expect("append");
        }
    }
    b.into_inner().expect("tar")
}

fn pax_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let long = "usr/lib/python3/site-packages/a-very-long-directory-name-to-need-pax/".repeat(2) + "file.py";
    b.append_pax_extensions([("mtime", b"1700000000.5".as_slice()), ("path", long.as_bytes())]).expect("pax");
    let mut h = tar::Header::new_ustar();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "short", &b"hello"[..]).expect("append");
    b.into_inner().expect("tar")
}

fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

fn main() {
    let publisher = PublisherKey::from_bytes([7; 32]);
    let fleet = PublisherKey::from_bytes([9; 32]);
    let signed = publisher.sign_release(&body(3)).expect("sign");
    let credential = Credential::issue(&fleet, "depot-12", 5).expect("credential");
    let ids: Vec<ChunkId> = (0u8..3).map(|i| ChunkId::of(&[i])).collect();
    let short = |i: &ChunkId| layerhop_protocol::wire::short_id(i);

    // Wire messages.
    let requests = [
        ("releases", Request::Releases),
        ("chunks", Request::Chunks(ids.clone())),
        ("announce", Request::Announce(signed.clone())),
        ("hello", Request::Hello(Hello { credential: Some(credential.clone()), listen_addrs: vec!["/ip4/10.0.0.2/tcp/7410".into()], site_sharing: true, channels: vec![Channel::new("models").expect("channel")] })),
        ("peers", Request::Peers(vec![PeerInfo { peer: vec![0, 36, 8, 1], listen_addrs: vec!["/ip4/10.0.0.3/tcp/1".into()] }])),
        (
            "state",
            Request::State(State {
                uplink: true,
                seed_fetched: 9,
                seed_pending: 2,
                releases: vec![HaveMap { channel: Channel::new("anomaly-detector").expect("c"), version: 3, complete: false, full: true, ids: ids.iter().map(short).collect(), claims: vec![short(&ids[0])] }],
            }),
        ),
    ];
    for (name, r) in requests {
        put("wire_request", name, &r.encode().expect("encode"));
    }
    let text = b"layerhop chunk ".repeat(100);
    let responses = [
        ("releases", Response::Releases(vec![signed.clone()])),
        ("chunks", Response::Chunks(vec![ChunkReply::Raw(b"raw".to_vec()), layerhop_node::codec::compress(text), ChunkReply::Missing])),
        ("ack", Response::Ack),
        ("peers", Response::Peers(vec![PeerInfo { peer: vec![1; 38], listen_addrs: vec!["/ip4/10.0.0.3/tcp/1".into()] }])),
        ("refused", Response::Refused("no credential".into())),
    ];
    for (name, r) in responses {
        put("wire_response", name, &r.encode().expect("encode"));
    }

    // Releases.
    put("release", "signed", &with_mode(0, &signed.encode()));
    put("release", "body", &with_mode(1, &signed.body));

    // Tree nodes.
    let entries: Vec<tree::Entry> = ids.iter().map(|&id| tree::Entry { id, len: 65_536 }).collect();
    let mut node = (3u64 * 65_536).to_le_bytes().to_vec();
    node.extend_from_slice(&tree::encode_node(&entries));
    put("tree_node", "three", &node);

    // Join tokens.
    let token = JoinToken {
        seed_addrs: vec!["/ip4/203.0.113.5/tcp/7410".into()],
        seed_peer: vec![0, 36, 8, 1, 18, 32],
        publisher: publisher.public(),
        fleet: fleet.public(),
        credential,
    };
    put("join_token", "text", &with_mode(0, token.encode().as_bytes()));
    put("join_token", "raw", &with_mode(1, &postcard::to_allocvec(&token).expect("postcard")));

    // Tars and their columns.
    let plain = tar_of(
        &[
            ("dir/", tar::EntryType::Directory, b""),
            ("dir/file.txt", tar::EntryType::Regular, b"hello world\n"),
            ("dir/link", tar::EntryType::Symlink, b""),
            ("dir/empty", tar::EntryType::Regular, b""),
        ],
        false,
    );
    let gnu = tar_of(&[(&"deep/".repeat(30).to_string(), tar::EntryType::Directory, b""), ("f", tar::EntryType::Regular, b"gnu")], true);
    for (name, t) in [("ustar", &plain), ("gnu-longname", &gnu), ("pax", &pax_tar())] {
        put("tarsplit", name, t);
        let columns = tarsplit::split(&t[..], |_, r| std::io::copy(r, &mut std::io::sink()).map(|_| ())).expect("split");
        let mut enc = Vec::new();
        for p in columns.parts() {
            enc.extend_from_slice(&u16::try_from(p.len()).expect("small column").to_le_bytes());
            enc.extend_from_slice(p);
        }
        put("tarsplit_columns", name, &enc);
    }

    // A docker save tarball: manifest, config, one layer (plain) and one behind a symlink.
    let config = format!(r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}","{}"]}}}}"#, sha(&plain), sha(&gnu));
    let manifest = r#"[{"Config":"config.json","RepoTags":["anomaly-detector:v1"],"Layers":["l1/layer.tar","l2/layer.tar"]}]"#;
    let mut save = tar::Builder::new(Vec::new());
    for (name, data) in [("manifest.json", manifest.as_bytes()), ("config.json", config.as_bytes()), ("l1/layer.tar", &plain), ("blobs/l2", &gnu)] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        save.append_data(&mut h, name, data).expect("append");
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    save.append_link(&mut h, "l2/layer.tar", "../blobs/l2").expect("link");
    put("import_docker_save", "two-layers", &save.into_inner().expect("tar"));

    // An OCI layout in the target's `\n@@\n` form: index → manifest → config, layer.
    let oci_config = format!(r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#, sha(&plain));
    let oci_manifest = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"<2>","size":1},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"<3>","size":1}]}"#;
    let oci_index = r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"<1>","size":1,"annotations":{"org.opencontainers.image.ref.name":"v1"},"platform":{"architecture":"amd64","os":"linux"}}]}"#;
    let mut oci = Vec::new();
    for (i, part) in [oci_index.as_bytes(), oci_manifest.as_bytes(), oci_config.as_bytes(), &plain].iter().enumerate() {
        if i > 0 {
            oci.extend_from_slice(b"\n@@\n");
        }
        oci.extend_from_slice(part);
    }
    put("import_oci_layout", "one-layer", &oci);

    // Registry requests: path after /v2/, newline, Range header.
    let hex = "ab".repeat(32);
    for (name, req) in [
        ("manifest", "library/anomaly-detector/manifests/v1\nbytes=0-99".to_string()),
        ("blob", format!("anomaly-detector/blobs/sha256:{hex}\nbytes=-512")),
        ("tags", "a.b_c__d---e/f0/tags/list\nbytes=10-".to_string()),
        ("traversal", "..%2f../manifests/v1\nbytes=5-1".to_string()),
    ] {
        put("registry_request", name, req.as_bytes());
    }
    println!("seed corpus written under {}/corpus", env!("CARGO_MANIFEST_DIR"));
}
