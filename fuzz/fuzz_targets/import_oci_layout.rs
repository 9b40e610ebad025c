//! Importing an OCI image layout: `index.json`, nested indexes, manifests, configs and layers.
//! The input is parts separated by `\n@@\n`: part 0 is `index.json`, part N ≥ 1 the blob
//! `blobs/sha256/<its digest>`. A `<N>` in a part stands for `sha256:<digest of part N>`, so
//! the fuzzer can reference blobs it cannot hash (references resolve from the last part to the
//! first, so a part names only later ones). Never panics; a failed import is an error.
#![no_main]

mod common;

use sha2::{Digest, Sha256};

const SEP: &[u8] = b"\n@@\n";

fn split(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(SEP.len()).position(|w| w == SEP) {
        out.push(rest[..i].to_vec());
        rest = &rest[i + SEP.len()..];
    }
    out.push(rest.to_vec());
    out
}

fn substitute(part: &[u8], digests: &[Option<String>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(part.len());
    let mut i = 0;
    while i < part.len() {
        if part[i] == b'<'
            && i + 2 < part.len()
            && part[i + 2] == b'>'
            && let Some(Some(d)) = part[i + 1].checked_sub(b'0').and_then(|n| digests.get(usize::from(n)))
        {
            out.extend_from_slice(d.as_bytes());
            i += 3;
            continue;
        }
        out.push(part[i]);
        i += 1;
    }
    out
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut parts = split(data);
    if parts.len() > 10 {
        return;
    }
    let mut digests: Vec<Option<String>> = vec![None; parts.len()];
    for i in (0..parts.len()).rev() {
        parts[i] = substitute(&parts[i], &digests);
        if i > 0 {
            digests[i] = Some(format!("sha256:{}", hex::encode(Sha256::digest(&parts[i]))));
        }
    }
    common::with_scratch(|store, dir| {
        let layout = dir.join("image");
        let blobs = layout.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).expect("blobs dir");
        std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
        std::fs::write(layout.join("index.json"), &parts[0]).expect("write");
        for (p, d) in parts.iter().zip(&digests).skip(1) {
            if let Some(d) = d {
                std::fs::write(blobs.join(&d["sha256:".len()..]), p).expect("write");
            }
        }
        let _ = layerhop_store::import::import_sources(store, &[layout]);
    });
});
