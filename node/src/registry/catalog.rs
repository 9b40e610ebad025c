//! What the registry can serve: channels as repositories, releases as tags, artifacts as blobs.
//!
//! - A repository name is a channel (`anomaly-detector`, or `library/anomaly-detector` as docker
//!   asks a mirror).
//! - Tag `v<N>` is release N of the channel when the node holds it (complete or not: its blobs
//!   then wait or answer 404, as configured). Any other tag — an image's own tag (`v1` of
//!   `anomaly-detector:v1`) or `latest` (every image of the release) — is the newest *complete*
//!   release that has it, so an engine never gets a manifest whose layers are still arriving
//!   while an older release would do; when no release having the tag is complete, the newest one
//!   is served if the registry waits for chunks (`registry_wait_secs` > 0), else none is.
//! - A tag naming several images of distinct platforms is an image index; otherwise the first
//!   image's manifest.
//! - A digest is looked up among the manifests and image artifacts of the channel's held
//!   releases (newest first), so an engine can fetch by the digest it resolved a tag to.
//!
//! Every release is verified against the node's publisher key before it is served; verified
//! bodies are cached per (channel, version), and "this artifact's chunks are all here" is cached
//! once true (a release only gains chunks until the store drops one, see [`Catalog::forget`]).

use super::error::RegistryError;
use super::manifest::{self, Document, Flavor, Platform, Preference};
use layerhop_protocol::release::PublicKey;
use layerhop_protocol::{Artifact, Channel, ChunkId, ReleaseBody, SignedRelease};
use layerhop_store::Store;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

/// Newest releases of a channel searched for a tag or digest.
const MAX_VERSIONS: usize = 16;
/// Verified release bodies kept in memory.
const MAX_VIEWS: usize = 64;
/// Largest image config read to learn its platform.
const MAX_CONFIG: u64 = 16 << 20;

/// One verified release.
pub struct View {
    /// Its body.
    pub body: ReleaseBody,
    /// Every manifest and index it can be served as (computed once its configs are readable).
    docs: OnceLock<Arc<Vec<Document>>>,
}

/// Resolves names, tags and digests against the store.
pub struct Catalog {
    store: Arc<Store>,
    key: PublicKey,
    views: Mutex<HashMap<(Channel, u64), Arc<View>>>,
    complete: Mutex<HashSet<ChunkId>>,
}

/// A tag resolved: the release and the images (indices into its body) the tag names.
pub type Resolved = (Arc<View>, Vec<usize>);

fn tag_of(repo_tag: &str) -> Option<&str> {
    let (repo, tag) = repo_tag.rsplit_once(':')?;
    (!tag.contains('/') && !repo.is_empty()).then_some(tag)
}

impl Catalog {
    /// A catalog over `store`, trusting releases signed by `key`.
    pub fn new(store: Arc<Store>, key: PublicKey) -> Self {
        Catalog { store, key, views: Mutex::new(HashMap::new()), complete: Mutex::new(HashSet::new()) }
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Held release versions of `channel`, newest first (at most [`MAX_VERSIONS`]).
    pub fn versions(&self, channel: &Channel) -> Result<Vec<u64>, RegistryError> {
        let mut v = BTreeSet::new();
        if let Some(signed) = self.store.release(channel.as_str())?
            && let Ok(body) = signed.peek()
        {
            v.insert(body.version);
        }
        let dir = self.store.root().join("releases").join(channel.as_str());
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            if let Some(n) = name.to_str().and_then(|n| n.strip_suffix(".release")).and_then(|n| n.parse::<u64>().ok()) {
                v.insert(n);
            }
        }
        Ok(v.into_iter().rev().take(MAX_VERSIONS).collect())
    }

    /// Release `version` of `channel`, verified; None if not held or not valid.
    pub fn view(&self, channel: &Channel, version: u64) -> Result<Option<Arc<View>>, RegistryError> {
        let key = (channel.clone(), version);
        if let Some(v) = self.views.lock().map_err(RegistryError::internal)?.get(&key) {
            return Ok(Some(v.clone()));
        }
        let newest = self.store.release(channel.as_str())?.filter(|s| s.peek().is_ok_and(|b| b.version == version));
        let signed = match newest {
            Some(s) => s,
            None => {
                let path = self.store.root().join("releases").join(channel.as_str()).join(format!("{version:020}.release"));
                let Ok(bytes) = std::fs::read(&path) else { return Ok(None) };
                match SignedRelease::decode(&bytes) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "registry: unreadable release file");
                        return Ok(None);
                    }
                }
            }
        };
        let keys = crate::fleet_trust::release_keys(&self.key, &self.store.trust().rotations);
        let body = match crate::fleet_trust::verify_recorded(&signed, &keys) {
            Ok(b) if b.channel == *channel && b.version == version => b,
            Ok(_) => return Ok(None),
            Err(e) => {
                tracing::warn!(%channel, version, error = %e, "registry: release does not verify; not serving it");
                return Ok(None);
            }
        };
        let view = Arc::new(View { body, docs: OnceLock::new() });
        let mut views = self.views.lock().map_err(RegistryError::internal)?;
        if views.len() >= MAX_VIEWS {
            views.clear();
        }
        views.insert(key, view.clone());
        Ok(Some(view))
    }

    /// Whether every chunk of `a` is in the store.
    pub fn artifact_complete(&self, a: &Artifact) -> Result<bool, RegistryError> {
        if self.complete.lock().map_err(RegistryError::internal)?.contains(&a.blake3) {
            return Ok(true);
        }
        let done = layerhop_store::blob::progress(&self.store, &a.content.blobs())?.complete();
        if done {
            self.complete.lock().map_err(RegistryError::internal)?.insert(a.blake3);
        }
        Ok(done)
    }

    /// Drop the "complete" mark of `a` (a chunk went missing while it was served).
    pub fn forget(&self, a: &Artifact) {
        if let Ok(mut c) = self.complete.lock() {
            c.remove(&a.blake3);
        }
    }

    fn image_artifacts<'a>(body: &'a ReleaseBody, img: usize) -> impl Iterator<Item = &'a Artifact> + 'a {
        body.images
            .get(img)
            .into_iter()
            .flat_map(|i| std::iter::once(i.config).chain(i.layers.iter().copied()))
            .filter_map(|a| body.artifacts.get(a as usize))
    }

    fn images_complete(&self, body: &ReleaseBody, imgs: &[usize]) -> Result<bool, RegistryError> {
        for &i in imgs {
            for a in Self::image_artifacts(body, i) {
                if !self.artifact_complete(a)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// The images a tag names in one release: those whose own tag it is, else every image for
    /// `latest` and `v<version>`.
    fn images_for(body: &ReleaseBody, tag: &str) -> Vec<usize> {
        let own: Vec<usize> = (0..body.images.len()).filter(|&i| body.images[i].repo_tags.iter().any(|t| tag_of(t) == Some(tag))).collect();
        if !own.is_empty() || (tag != "latest" && tag != format!("v{}", body.version)) {
            return own;
        }
        (0..body.images.len()).collect()
    }

    /// Resolve `tag` of `channel` (see the module docs). `Err(NameUnknown)` when the channel has
    /// no release at all; `Ok(None)` when no release has the tag.
    pub fn resolve_tag(&self, name: &str, channel: &Channel, tag: &str, allow_incomplete: bool) -> Result<Option<Resolved>, RegistryError> {
        let versions = self.versions(channel)?;
        if versions.is_empty() {
            return Err(RegistryError::NameUnknown(name.to_owned()));
        }
        if let Some(n) = tag.strip_prefix('v').and_then(|n| n.parse::<u64>().ok())
            && versions.contains(&n)
            && let Some(view) = self.view(channel, n)?
        {
            let imgs: Vec<usize> = (0..view.body.images.len()).collect();
            return Ok((!imgs.is_empty()).then_some((view, imgs)));
        }
        let mut fallback = None;
        for v in versions {
            let Some(view) = self.view(channel, v)? else { continue };
            let imgs = Self::images_for(&view.body, tag);
            if imgs.is_empty() {
                continue;
            }
            if self.images_complete(&view.body, &imgs)? {
                return Ok(Some((view, imgs)));
            }
            fallback.get_or_insert((view, imgs));
        }
        Ok(fallback.filter(|_| allow_incomplete))
    }

    /// Read a small artifact (an image config) whole.
    fn read_small(&self, a: &Artifact) -> Option<Vec<u8>> {
        if a.size > MAX_CONFIG {
            return None;
        }
        let mut buf = Vec::with_capacity(a.size as usize);
        layerhop_store::export::write_artifact(&self.store, a, &mut buf).ok()?;
        Some(buf)
    }

    /// The platforms of `imgs`, if every one declares one and they are all different.
    fn platforms(&self, body: &ReleaseBody, imgs: &[usize]) -> Option<Vec<Platform>> {
        let mut out = Vec::with_capacity(imgs.len());
        for &i in imgs {
            let config = body.artifacts.get(body.images.get(i)?.config as usize)?;
            let p = manifest::platform_of(&self.read_small(config)?)?;
            if out.contains(&p) {
                return None;
            }
            out.push(p);
        }
        Some(out)
    }

    /// The document a client gets for `imgs` of `view`: an index of per-platform manifests when
    /// the tag names several platforms and the client takes indexes, else the first image's
    /// manifest.
    pub fn render(&self, view: &View, imgs: &[usize], pref: Preference) -> Result<Document, RegistryError> {
        let body = &view.body;
        if imgs.len() > 1
            && let Some(flavor) = pref.index
            && let Some(platforms) = self.platforms(body, imgs)
        {
            let mut children = Vec::with_capacity(imgs.len());
            for (&i, p) in imgs.iter().zip(platforms) {
                children.push((manifest::image_manifest(body, &body.images[i], flavor)?, p));
            }
            return manifest::index(&children, flavor);
        }
        let first = imgs.first().and_then(|&i| body.images.get(i)).ok_or_else(|| RegistryError::Internal("a tag resolved to no image".into()))?;
        manifest::image_manifest(body, first, pref.manifest)
    }

    /// Every document `view` can be served as, in both flavors.
    fn documents(&self, view: &View) -> Result<Arc<Vec<Document>>, RegistryError> {
        if let Some(d) = view.docs.get() {
            return Ok(d.clone());
        }
        let body = &view.body;
        let mut docs = Vec::new();
        for img in &body.images {
            for f in [Flavor::Oci, Flavor::Docker] {
                docs.push(manifest::image_manifest(body, img, f)?);
            }
        }
        let mut groups: BTreeSet<Vec<usize>> = BTreeSet::new();
        groups.insert(Self::images_for(body, "latest"));
        for t in body.images.iter().flat_map(|i| &i.repo_tags).filter_map(|t| tag_of(t)) {
            groups.insert(Self::images_for(body, t));
        }
        for g in groups.into_iter().filter(|g| g.len() > 1) {
            if self.platforms(body, &g).is_some() {
                for f in [Flavor::Oci, Flavor::Docker] {
                    docs.push(self.render(view, &g, Preference { manifest: f, index: Some(f) })?);
                }
            }
        }
        // Indexes need the configs' platforms: cache only once every config is here.
        let mut complete = true;
        for img in &body.images {
            complete &= match body.artifacts.get(img.config as usize) {
                Some(c) => self.artifact_complete(c)?,
                None => false,
            };
        }
        let docs = Arc::new(docs);
        if complete {
            let _ = view.docs.set(docs.clone());
        }
        Ok(docs)
    }

    /// The manifest or index of `channel` whose digest is `digest`.
    pub fn find_manifest(&self, channel: &Channel, digest: &str) -> Result<Option<Document>, RegistryError> {
        for v in self.versions(channel)? {
            let Some(view) = self.view(channel, v)? else { continue };
            if let Some(d) = self.documents(&view)?.iter().find(|d| d.digest == digest) {
                return Ok(Some(d.clone()));
            }
        }
        Ok(None)
    }

    /// An image artifact (layer or config) of `channel` with this sha256, preferring one whose
    /// chunks are all here; with whether they are.
    pub fn find_blob(&self, channel: &Channel, sha256: &[u8; 32]) -> Result<Option<(Artifact, bool)>, RegistryError> {
        let mut incomplete = None;
        for v in self.versions(channel)? {
            let Some(view) = self.view(channel, v)? else { continue };
            let body = &view.body;
            for i in 0..body.images.len() {
                for a in Self::image_artifacts(body, i).filter(|a| a.sha256.as_ref() == Some(sha256)) {
                    if self.artifact_complete(a)? {
                        return Ok(Some((a.clone(), true)));
                    }
                    incomplete.get_or_insert_with(|| a.clone());
                }
            }
        }
        Ok(incomplete.map(|a| (a, false)))
    }

    /// Tags of `channel`: `v<N>` of every held release, and the image tags and `latest` of the
    /// releases that have them.
    pub fn tags(&self, name: &str, channel: &Channel) -> Result<Vec<String>, RegistryError> {
        let versions = self.versions(channel)?;
        if versions.is_empty() {
            return Err(RegistryError::NameUnknown(name.to_owned()));
        }
        let mut tags = BTreeSet::new();
        for v in versions {
            let Some(view) = self.view(channel, v)? else { continue };
            tags.insert(format!("v{v}"));
            if !view.body.images.is_empty() {
                tags.insert("latest".to_owned());
            }
            for t in view.body.images.iter().flat_map(|i| &i.repo_tags).filter_map(|t| tag_of(t)) {
                tags.insert(t.to_owned());
            }
        }
        Ok(tags.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::tag_of;

    #[test]
    fn tag_parts() {
        assert_eq!(tag_of("anomaly-detector:v7"), Some("v7"));
        assert_eq!(tag_of("registry:5000/app:1.2"), Some("1.2"));
        assert_eq!(tag_of("registry:5000/app"), None);
        assert_eq!(tag_of("app"), None);
    }
}
