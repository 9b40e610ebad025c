//! `docker save` tarballs: `manifest.json`, config JSON files and layer tars, possibly as
//! symlinks into an OCI `blobs/` directory (newer docker versions).

use super::{Imported, MAX_JSON, import_image};
use crate::Store;
use crate::error::{Error, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

enum Member {
    File { offset: u64, size: u64 },
    Link(String),
}

fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

fn index(path: &Path) -> Result<HashMap<String, Member>> {
    let f = std::fs::File::open(path).map_err(Error::io("open", path))?;
    let mut ar = tar::Archive::new(f);
    let mut out = HashMap::new();
    for e in ar.entries_with_seek().map_err(Error::io("read tar", path))? {
        let e = e.map_err(Error::io("read tar", path))?;
        let name = normalize(&e.path().map_err(Error::io("read tar entry name in", path))?.to_string_lossy());
        let member = match e.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => Member::File { offset: e.raw_file_position(), size: e.size() },
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = e.link_name().ok().flatten().map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
                let base = if e.header().entry_type() == tar::EntryType::Symlink {
                    name.rsplit_once('/').map(|(d, _)| format!("{d}/")).unwrap_or_default()
                } else {
                    String::new()
                };
                Member::Link(normalize(&format!("{base}{target}")))
            }
            _ => continue,
        };
        out.insert(name, member);
    }
    Ok(out)
}

/// Whether `path` is a tar with a top-level `manifest.json`.
pub(super) fn is_docker_save(path: &Path) -> bool {
    index(path).map(|m| m.contains_key("manifest.json")).unwrap_or(false)
}

fn locate(members: &HashMap<String, Member>, name: &str, what: &Path) -> Result<(u64, u64)> {
    let mut name = normalize(name);
    for _ in 0..8 {
        match members.get(&name) {
            Some(Member::File { offset, size }) => return Ok((*offset, *size)),
            Some(Member::Link(target)) => name = target.clone(),
            None => return Err(Error::invalid(what.display().to_string(), format!("has no member {name:?}"))),
        }
    }
    Err(Error::invalid(what.display().to_string(), format!("too many links resolving {name:?}")))
}

fn open_member<'a>(path: &Path, members: &HashMap<String, Member>, name: &str) -> Result<Box<dyn Read + 'a>> {
    let (offset, size) = locate(members, name, path)?;
    let mut f = std::fs::File::open(path).map_err(Error::io("open", path))?;
    f.seek(SeekFrom::Start(offset)).map_err(Error::io("seek in", path))?;
    Ok(Box::new(f.take(size)))
}

fn read_small(path: &Path, members: &HashMap<String, Member>, name: &str) -> Result<Vec<u8>> {
    let (_, size) = locate(members, name, path)?;
    if size > MAX_JSON {
        return Err(Error::invalid(format!("{}: {name}", path.display()), format!("{size} bytes is over the {MAX_JSON}-byte limit")));
    }
    let mut buf = Vec::new();
    open_member(path, members, name)?.read_to_end(&mut buf).map_err(Error::io("read", path))?;
    Ok(buf)
}

/// Import every image of a `docker save` tarball.
pub(super) fn import(store: &Store, path: &Path, out: &mut Imported) -> Result<()> {
    let members = index(path)?;
    let manifest = read_small(path, &members, "manifest.json")?;
    let entries: Vec<ManifestEntry> = serde_json::from_slice(&manifest)
        .map_err(|e| Error::invalid(format!("{}: manifest.json", path.display()), e))?;
    if entries.is_empty() {
        return Err(Error::invalid(path.display().to_string(), "manifest.json lists no images"));
    }
    for entry in entries {
        let config = read_small(path, &members, &entry.config)?;
        let layers = entry
            .layers
            .iter()
            .map(|l| open_member(path, &members, l).map(|r| Box::new(store.counting(r)) as Box<dyn Read>))
            .collect::<Result<Vec<_>>>()?;
        let what = format!("{}: image {}", path.display(), entry.config);
        import_image(store, out, &config, layers, entry.repo_tags.unwrap_or_default(), &what)?;
    }
    Ok(())
}
