//! OCI image layouts: `oci-layout`, `index.json`, and content-addressed `blobs/sha256/`.

use super::{Imported, MAX_JSON, import_image, parse_digest};
use crate::Store;
use crate::error::{Error, Result};
use serde::Deserialize;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf> {
    parse_digest(digest)?;
    Ok(dir.join("blobs/sha256").join(&digest["sha256:".len()..]))
}

fn read_json_blob(dir: &Path, digest: &str) -> Result<Vec<u8>> {
    let p = blob_path(dir, digest)?;
    let f = std::fs::File::open(&p).map_err(Error::io("open", &p))?;
    let mut buf = Vec::new();
    f.take(MAX_JSON + 1).read_to_end(&mut buf).map_err(Error::io("read", &p))?;
    if buf.len() as u64 > MAX_JSON {
        return Err(Error::invalid(p.display().to_string(), "JSON blob is over 16 MiB"));
    }
    let want = parse_digest(digest)?;
    let got: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&buf).into();
    if got != want {
        return Err(Error::invalid(p.display().to_string(), "content does not match its digest"));
    }
    Ok(buf)
}

fn is_index(media_type: &str) -> bool {
    media_type.contains("image.index") || media_type.contains("manifest.list")
}

/// Pick the manifest for this machine from an index: linux on the host architecture, else the first.
fn pick(dir: &Path, d: Descriptor, depth: u8) -> Result<(Manifest, Vec<String>)> {
    let bytes = read_json_blob(dir, &d.digest)?;
    let tag = d.annotations.get("org.opencontainers.image.ref.name").cloned();
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| Error::invalid(d.digest.clone(), e))?;
    let media = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or(&d.media_type).to_owned();
    if is_index(&media) || v.get("manifests").is_some() {
        if depth > 4 {
            return Err(Error::invalid(dir.display().to_string(), "image indexes nest too deeply"));
        }
        let idx: Index = serde_json::from_value(v).map_err(|e| Error::invalid(d.digest.clone(), e))?;
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            a => a,
        };
        let mut ms = idx.manifests;
        let i = ms
            .iter()
            .position(|m| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch))
            .unwrap_or(0);
        if ms.is_empty() {
            return Err(Error::invalid(d.digest, "image index lists no manifests"));
        }
        let (m, tags) = pick(dir, ms.swap_remove(i), depth + 1)?;
        return Ok((m, if tags.is_empty() { tag.into_iter().collect() } else { tags }));
    }
    let m: Manifest = serde_json::from_value(v).map_err(|e| Error::invalid(d.digest.clone(), e))?;
    Ok((m, tag.into_iter().collect()))
}

/// Import every image named by an OCI layout's `index.json`.
pub(super) fn import(store: &Store, dir: &Path, out: &mut Imported) -> Result<()> {
    let index_path = dir.join("index.json");
    let bytes = std::fs::read(&index_path).map_err(Error::io("read", &index_path))?;
    let index: Index = serde_json::from_slice(&bytes).map_err(|e| Error::invalid(index_path.display().to_string(), e))?;
    if index.manifests.is_empty() {
        return Err(Error::invalid(index_path.display().to_string(), "lists no manifests"));
    }
    for d in index.manifests {
        let what = format!("{}: {}", dir.display(), d.digest);
        let (manifest, tags) = pick(dir, d, 0)?;
        let config = read_json_blob(dir, &manifest.config.digest)?;
        let mut layers: Vec<Box<dyn Read>> = Vec::new();
        for l in &manifest.layers {
            let p = blob_path(dir, &l.digest)?;
            layers.push(Box::new(store.counting(std::fs::File::open(&p).map_err(Error::io("open", &p))?)));
        }
        // A bare `ref.name` is a tag; the layout's directory name stands in for the repository.
        let repo = dir.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_else(|| "image".into());
        let tags = tags.into_iter().map(|t| if t.contains(':') { t } else { format!("{repo}:{t}") }).collect();
        import_image(store, out, &config, layers, tags, &what)?;
    }
    Ok(())
}
