//! Turning sources into artifacts: `docker save` tarballs, OCI image layouts, plain files.
//!
//! Image layers are decompressed (gzip and zstd layers are never chunked as compressed bytes:
//! compressed streams do not resynchronise, so one changed byte would change every chunk after
//! it) and split by [`crate::tarsplit`] into header columns and file contents. Every column and
//! the contents become blobs of their own, so a layer rebuilt with new mtimes shares everything
//! but its mtime column with the previous build. A layer's SHA-256 is computed here, once, and
//! must equal the diff_id its image config claims.

mod docker;
mod oci;

use crate::blob;
use crate::error::{Error, Result};
use crate::hashing::HashingReader;
use crate::{Store, tarsplit};
use layerhop_protocol::{Artifact, ArtifactKind, Content, Image};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest image config or manifest JSON accepted.
pub(crate) const MAX_JSON: u64 = 16 * 1024 * 1024;

/// A reader that adds what it reads to the store's import counter ([`Store::imported_bytes`]).
pub(crate) struct Counting<R> {
    pub(crate) inner: R,
    pub(crate) n: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// What an import produced.
#[derive(Debug, Default)]
pub struct Imported {
    /// The artifacts, in source order.
    pub artifacts: Vec<Artifact>,
    /// Images built from them (indices into `artifacts`).
    pub images: Vec<Image>,
}

impl Imported {
    fn push(&mut self, a: Artifact) -> u32 {
        self.artifacts.push(a);
        (self.artifacts.len() - 1) as u32
    }
}

/// Import every source: a directory with an `oci-layout` file is an OCI image layout; a tar file
/// with a top-level `manifest.json` is a `docker save` tarball; any other file or directory is
/// taken as plain files (models), named by their path below the source's parent.
pub fn import_sources(store: &Store, sources: &[PathBuf]) -> Result<Imported> {
    let mut out = Imported::default();
    for src in sources {
        let meta = std::fs::metadata(src).map_err(Error::io("read", src))?;
        if meta.is_dir() && src.join("oci-layout").is_file() {
            oci::import(store, src, &mut out)?;
        } else if meta.is_file() && docker::is_docker_save(src) {
            docker::import(store, src, &mut out)?;
        } else if meta.is_dir() {
            let base = src.file_name().map(PathBuf::from).unwrap_or_default();
            import_dir(store, src, &base, &mut out)?;
        } else if meta.is_file() {
            let name = src.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let a = import_file(store, src, name)?;
            out.push(a);
        } else {
            return Err(Error::invalid(src.display().to_string(), "is neither a file nor a directory"));
        }
    }
    Ok(out)
}

fn import_dir(store: &Store, dir: &Path, prefix: &Path, out: &mut Imported) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(Error::io("list", dir))?
        .collect::<std::io::Result<_>>()
        .map_err(Error::io("list", dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let ft = e.file_type().map_err(Error::io("stat", &path))?;
        let name = prefix.join(e.file_name());
        if ft.is_dir() {
            import_dir(store, &path, &name, out)?;
        } else if ft.is_file() {
            let a = import_file(store, &path, name.to_string_lossy().into_owned())?;
            out.push(a);
        } else {
            return Err(Error::invalid(path.display().to_string(), "is a symlink or special file; only regular files and directories can be published"));
        }
    }
    Ok(())
}

/// Import one plain file as an artifact named `name`.
pub fn import_file(store: &Store, path: &Path, name: String) -> Result<Artifact> {
    let f = std::fs::File::open(path).map_err(Error::io("open", path))?;
    let size = f.metadata().map_err(Error::io("stat", path))?.len();
    let mut r = HashingReader::new(std::io::BufReader::with_capacity(1 << 20, store.counting(f)), false);
    let root = blob::with_writer_thread(store, |writer| {
        let mut w = writer();
        w.add_file(&mut r, size)?;
        w.finish()
    })?;
    let d = r.finish();
    Ok(Artifact {
        name,
        kind: ArtifactKind::File,
        size: d.len,
        blake3: d.blake3,
        sha256: d.sha256,
        content: Content::File(root),
    })
}

/// Import small bytes (an image config) as an artifact.
pub(crate) fn import_bytes(store: &Store, bytes: &[u8], name: String, kind: ArtifactKind) -> Result<Artifact> {
    let mut r = HashingReader::new(bytes, true);
    let mut all = Vec::new();
    r.read_to_end(&mut all).map_err(Error::io("read", &name))?;
    let d = r.finish();
    Ok(Artifact {
        name,
        kind,
        size: d.len,
        blake3: d.blake3,
        sha256: d.sha256,
        content: Content::File(blob::write_bytes(store, &all)?),
    })
}

/// Which compression a layer stream uses, from its first bytes.
fn decompress<'a>(mut r: Box<dyn Read + 'a>, what: &str) -> Result<Box<dyn Read + 'a>> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < 4 {
        let k = r.read(&mut magic[n..]).map_err(Error::io("read", what))?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let head = std::io::Cursor::new(magic[..n].to_vec());
    let whole: Box<dyn Read + 'a> = Box::new(head.chain(r));
    Ok(if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(whole))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::stream::read::Decoder::new(whole).map_err(Error::io("start zstd decoder for", what))?)
    } else {
        whole
    })
}

/// Import one layer (a tar, possibly gzip or zstd compressed) as an artifact named `name`.
pub(crate) fn import_layer(store: &Store, r: Box<dyn Read + '_>, name: String) -> Result<Artifact> {
    let tar = decompress(r, &name)?;
    let mut hashed = HashingReader::new(std::io::BufReader::with_capacity(1 << 20, tar), true);
    let (contents, column_refs) = blob::with_writer_thread(store, |writer| {
        let mut contents = writer();
        let columns = tarsplit::split(&mut hashed, |size, file| contents.add_file(file, size).map_err(std::io::Error::other))
            .map_err(|e| Error::invalid(&name, e))?;
        let contents = contents.finish()?;
        let mut column_refs = Vec::new();
        for part in columns.into_parts() {
            let mut w = writer();
            w.add_bytes(&part)?;
            column_refs.push(w.finish()?);
        }
        Ok((contents, column_refs))
    })?;
    let d = hashed.finish();
    Ok(Artifact {
        name,
        kind: ArtifactKind::Layer,
        size: d.len,
        blake3: d.blake3,
        sha256: d.sha256,
        content: Content::Tar { columns: column_refs, contents },
    })
}

/// Parse `sha256:<64 hex>` into bytes; anything else (other algorithms, path tricks) is refused.
pub(crate) fn parse_digest(d: &str) -> Result<[u8; 32]> {
    let hex = d
        .strip_prefix("sha256:")
        .ok_or_else(|| Error::invalid(format!("digest {d:?}"), "only sha256 digests are supported"))?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).map_err(|e| Error::invalid(format!("digest {d:?}"), e))?;
    Ok(out)
}

/// Check the layers' computed SHA-256 against the config's `rootfs.diff_ids`.
pub(crate) fn check_diff_ids(config: &[u8], layers: &[&Artifact], what: &str) -> Result<()> {
    let v: serde_json::Value = serde_json::from_slice(config).map_err(|e| Error::invalid(format!("{what} config"), e))?;
    let ids = v
        .pointer("/rootfs/diff_ids")
        .and_then(|d| d.as_array())
        .ok_or_else(|| Error::invalid(format!("{what} config"), "has no rootfs.diff_ids"))?;
    if ids.len() != layers.len() {
        return Err(Error::invalid(what, format!("config lists {} diff_ids for {} layers", ids.len(), layers.len())));
    }
    for (i, (id, layer)) in ids.iter().zip(layers).enumerate() {
        let want = parse_digest(id.as_str().unwrap_or_default())?;
        if Some(want) != layer.sha256 {
            return Err(Error::invalid(
                what,
                format!("layer {i}: uncompressed sha256 {} differs from the config's diff_id {}", hex::encode(layer.sha256.unwrap_or_default()), hex::encode(want)),
            ));
        }
    }
    Ok(())
}

/// Import an image from its config bytes and layer readers.
pub(crate) fn import_image<'a>(
    store: &Store,
    out: &mut Imported,
    config: &[u8],
    layers: Vec<Box<dyn Read + 'a>>,
    repo_tags: Vec<String>,
    what: &str,
) -> Result<()> {
    let n = out.images.len();
    let mut layer_artifacts = Vec::new();
    for (i, r) in layers.into_iter().enumerate() {
        layer_artifacts.push(import_layer(store, r, format!("images/{n}/layers/{i}.tar"))?);
    }
    check_diff_ids(config, &layer_artifacts.iter().collect::<Vec<_>>(), what)?;
    let config = import_bytes(store, config, format!("images/{n}/config.json"), ArtifactKind::ImageConfig)?;
    let config = out.push(config);
    let layers = layer_artifacts.into_iter().map(|a| out.push(a)).collect();
    out.images.push(Image { repo_tags, config, layers });
    Ok(())
}

#[cfg(test)]
mod tests;
