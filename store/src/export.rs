//! Reassembling artifacts: model files into a directory, images into `docker load` tarballs.
//!
//! Everything streams from chunks (constant memory per artifact) and is hashed as it is
//! written; an output whose BLAKE3 differs from the signed release is an error and is removed.
//! Output is built in a temporary sibling and renamed into place, so `out` is either absent or
//! complete.

use crate::blob::BlobReader;
use crate::error::{Error, Result};
use crate::hashing::HashingWriter;
use crate::{Store, tarsplit};
use layerhop_protocol::{Artifact, ArtifactKind, Content, Image, ReleaseBody};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// What an export wrote.
#[derive(Debug, Default)]
pub struct Exported {
    /// Files written, relative to the output.
    pub files: Vec<PathBuf>,
    /// Bytes written.
    pub bytes: u64,
}

/// Recover the store error a [`BlobReader`] passed through `std::io::Read` (a missing or damaged
/// chunk), so callers see [`Error::Missing`], the error that says "fetch it again", rather than
/// an I/O or format error wrapping its text. Any other I/O error goes to `otherwise`.
fn from_read_error(e: std::io::Error, otherwise: impl FnOnce(std::io::Error) -> Error) -> Error {
    if !e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        return otherwise(e);
    }
    match e.into_inner().map(|inner| inner.downcast::<Error>()) {
        Some(Ok(store_error)) => *store_error,
        // Not reached after the check above; keep the error rather than panic.
        Some(Err(inner)) => otherwise(std::io::Error::other(inner)),
        None => otherwise(std::io::Error::other("I/O error without detail")),
    }
}

/// Write an artifact's exact bytes to `out`, checking its BLAKE3 (and SHA-256 when known).
///
/// A chunk that is absent (or damaged on disk) gives [`Error::Missing`], wherever in the blob it
/// is; the bytes written to `out` before it are then incomplete and must be discarded.
pub fn write_artifact(store: &Store, a: &Artifact, out: &mut dyn Write) -> Result<u64> {
    let mut w = HashingWriter::new(out, false);
    match &a.content {
        Content::File(b) => {
            let mut r = BlobReader::new(store, *b)?;
            std::io::copy(&mut r, &mut w).map_err(|e| from_read_error(e, Error::io("reassemble", &a.name)))?;
        }
        Content::Tar { columns, contents } => {
            let mut parts = Vec::with_capacity(columns.len());
            for c in columns {
                let mut buf = Vec::new();
                BlobReader::new(store, *c)?
                    .read_to_end(&mut buf)
                    .map_err(|e| from_read_error(e, Error::io("read header column of", &a.name)))?;
                parts.push(buf);
            }
            let cols = tarsplit::Columns::from_parts(parts).map_err(|e| Error::invalid(&a.name, e))?;
            let mut r = BlobReader::new(store, *contents)?;
            tarsplit::join(&cols, &mut r, &mut w).map_err(|e| match e {
                // A chunk missing mid-layer reaches here as the content reader's I/O error.
                tarsplit::Error::Io(io) => from_read_error(io, Error::io("reassemble", &a.name)),
                e => Error::invalid(&a.name, e),
            })?;
        }
    }
    let (d, _) = w.finish();
    if d.len != a.size || d.blake3 != a.blake3 {
        return Err(Error::invalid(&a.name, format!("reassembled {} bytes that do not match the release ({} bytes, blake3 {})", d.len, a.size, a.blake3)));
    }
    Ok(d.len)
}

fn image_file_name(img: &Image, n: usize) -> String {
    let tag = img.repo_tags.first().cloned().unwrap_or_else(|| format!("image-{n}"));
    let safe: String = tag.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    format!("{safe}.tar")
}

fn tar_entry(out: &mut dyn Write, name: &str, size: u64, body: &mut dyn FnMut(&mut dyn Write) -> Result<u64>) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).map_err(Error::io("name tar entry", name))?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    out.write_all(h.as_bytes()).map_err(Error::io("write", name))?;
    let written = body(out)?;
    if written != size {
        return Err(Error::invalid(name, format!("wrote {written} bytes, expected {size}")));
    }
    let pad = (512 - size % 512) % 512;
    out.write_all(&vec![0u8; pad as usize]).map_err(Error::io("write", name))?;
    Ok(())
}

/// Write one image as a `docker load`-able tarball: `manifest.json`, `<sha256>.json` config,
/// `<diff_id>/layer.tar` per layer (uncompressed, so each layer's sha256 is its diff_id).
pub fn write_docker_tar(store: &Store, body: &ReleaseBody, img: &Image, out: &mut dyn Write) -> Result<()> {
    let art = |i: u32| body.artifacts.get(i as usize).ok_or_else(|| Error::invalid("release", "image names a missing artifact"));
    let digest = |a: &Artifact| a.sha256.map(hex::encode).ok_or_else(|| Error::invalid(&a.name, "an image artifact carries no sha256"));
    let config = art(img.config)?;
    let config_name = format!("{}.json", digest(config)?);
    let mut layer_names = Vec::new();
    for &l in &img.layers {
        layer_names.push(format!("{}/layer.tar", digest(art(l)?)?));
    }
    let manifest = serde_json::json!([{ "Config": config_name, "RepoTags": img.repo_tags, "Layers": layer_names }]);
    let manifest = serde_json::to_vec(&manifest).map_err(|e| Error::invalid("manifest.json", e))?;
    tar_entry(out, &config_name, config.size, &mut |w| write_artifact(store, config, w))?;
    for (&l, name) in img.layers.iter().zip(&layer_names) {
        let a = art(l)?;
        tar_entry(out, name, a.size, &mut |w| write_artifact(store, a, w))?;
    }
    tar_entry(out, "manifest.json", manifest.len() as u64, &mut |w| {
        w.write_all(&manifest).map_err(Error::io("write", "manifest.json"))?;
        Ok(manifest.len() as u64)
    })?;
    out.write_all(&[0u8; 1024]).map_err(Error::io("write", "tar trailer"))?;
    Ok(())
}

fn write_file(path: &Path, f: &mut dyn FnMut(&mut dyn Write) -> Result<()>) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
    }
    let file = std::fs::File::create(path).map_err(Error::io("create", path))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    f(&mut w)?;
    let file = w.into_inner().map_err(|e| Error::Io { op: "write", path: path.to_owned(), source: e.into_error() })?;
    file.sync_all().map_err(Error::io("fsync", path))
}

/// Export a release to `out`: a directory holding its plain files under their names and each
/// image as `<tag>.tar`; or, when the release is exactly one image and `out` ends in `.tar`,
/// that tarball alone. `out` must not exist.
pub fn export_release(store: &Store, body: &ReleaseBody, out: &Path) -> Result<Exported> {
    // Not `out.exists()`: it follows symlinks, so a dangling symlink looked absent and the
    // rename below replaced it.
    match std::fs::symlink_metadata(out) {
        Ok(_) => return Err(Error::invalid(out.display().to_string(), "already exists; export never overwrites")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("stat", out)(e)),
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(Error::io("create directory", parent))?;
    let files: Vec<&Artifact> = body.artifacts.iter().filter(|a| a.kind == ArtifactKind::File).collect();
    let mut report = Exported::default();
    let single_tar = files.is_empty() && body.images.len() == 1 && out.extension().is_some_and(|e| e == "tar");
    let tmp = tempfile::Builder::new().prefix(".export-").tempdir_in(parent).map_err(Error::io("create temp dir in", parent))?;
    if single_tar {
        let p = tmp.path().join("image.tar");
        write_file(&p, &mut |w| write_docker_tar(store, body, &body.images[0], w))?;
        report.bytes = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        std::fs::rename(&p, out).map_err(Error::io("rename into", out))?;
        report.files.push(out.to_owned());
        return Ok(report);
    }
    let staged = tmp.path().join("out");
    for a in files {
        let rel = PathBuf::from(&a.name);
        write_file(&staged.join(&rel), &mut |w| write_artifact(store, a, w).map(|_| ()))?;
        report.bytes += a.size;
        report.files.push(rel);
    }
    for (n, img) in body.images.iter().enumerate() {
        let rel = PathBuf::from(image_file_name(img, n));
        let p = staged.join(&rel);
        write_file(&p, &mut |w| write_docker_tar(store, body, img, w))?;
        report.bytes += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        report.files.push(rel);
    }
    std::fs::create_dir_all(&staged).map_err(Error::io("create directory", &staged))?;
    std::fs::rename(&staged, out).map_err(Error::io("rename into", out))?;
    Ok(report)
}
