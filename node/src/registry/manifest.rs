//! Manifests rewritten for the layers the node really holds.
//!
//! A release keeps each layer as its *uncompressed* tar (the bytes whose sha256 is the config's
//! diff_id) and never the gzip blob the image was pushed with: re-gzipping would not give the
//! original bytes back, so the original manifest's layer digests cannot be served. The mirror
//! therefore serves a manifest of its own: each layer is the uncompressed tar
//! (`application/vnd.oci.image.layer.v1.tar`, docker: `…rootfs.diff.tar`) with digest = diff_id
//! and size = the tar's size, and the config is the original config, byte for byte (so the image
//! ID and diff_ids an engine computes are the original ones).
//!
//! The bytes are produced by serde from structs (fixed field order, compact), so a manifest's
//! digest is a pure function of the release: the same on every device and every request, which
//! engines need to fetch by the digest they resolved a tag to.

use super::error::RegistryError;
use axum::body::Bytes;
use layerhop_protocol::{Artifact, Image, ReleaseBody};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (multi-platform).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer.
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// Docker image manifest v2, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-platform).
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker uncompressed layer.
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Which family of media types a document uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// OCI image spec.
    Oci,
    /// Docker v2 schema 2.
    Docker,
}

/// What a client's `Accept` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preference {
    /// Media types of a single-image manifest.
    pub manifest: Flavor,
    /// Media types of an index, if the client takes indexes at all.
    pub index: Option<Flavor>,
}

/// Read the `Accept` values (each possibly a comma-separated list with `;q=`), in the client's
/// order of preference. With no `Accept` (or only wildcards), OCI, indexes allowed.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>) -> Preference {
    let mut entries: Vec<(String, f32, usize)> = Vec::new();
    for v in values {
        for part in v.split(',') {
            let mut fields = part.split(';');
            let mt = fields.next().unwrap_or_default().trim().to_ascii_lowercase();
            let q = fields
                .filter_map(|f| f.trim().strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok()))
                .next()
                .unwrap_or(1.0);
            if !mt.is_empty() && q > 0.0 {
                let n = entries.len();
                entries.push((mt, q, n));
            }
        }
    }
    entries.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)));
    let only_wildcards = entries.iter().all(|(mt, _, _)| mt.contains('*'));
    let manifest = entries
        .iter()
        .find_map(|(mt, _, _)| match mt.as_str() {
            OCI_MANIFEST => Some(Flavor::Oci),
            DOCKER_MANIFEST => Some(Flavor::Docker),
            _ => None,
        })
        .unwrap_or(Flavor::Oci);
    let index = entries
        .iter()
        .find_map(|(mt, _, _)| match mt.as_str() {
            OCI_INDEX => Some(Flavor::Oci),
            DOCKER_LIST => Some(Flavor::Docker),
            _ => None,
        })
        .or(only_wildcards.then_some(Flavor::Oci));
    Preference { manifest, index }
}

/// A manifest or index as served: media type, exact bytes and their digest.
#[derive(Clone, Debug)]
pub struct Document {
    /// Its `Content-Type`.
    pub media_type: &'static str,
    /// Its bytes.
    pub bytes: Bytes,
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
}

impl Document {
    fn new(media_type: &'static str, value: &impl Serialize) -> Result<Self, RegistryError> {
        let bytes = serde_json::to_vec(value).map_err(RegistryError::internal)?;
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
        Ok(Document { media_type, bytes: Bytes::from(bytes), digest })
    }
}

/// An image's platform, from its config.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    /// `amd64`, `arm64`, …
    pub architecture: String,
    /// `linux`, …
    pub os: String,
    /// `v7`, `v8`, … for ARM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// The platform a config JSON declares, if it declares one.
pub fn platform_of(config: &[u8]) -> Option<Platform> {
    serde_json::from_slice::<Platform>(config).ok().filter(|p| !p.architecture.is_empty() && !p.os.is_empty())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    media_type: &'a str,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<&'a Platform>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageManifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: Vec<Descriptor<'a>>,
}

fn artifact(body: &ReleaseBody, i: u32) -> Result<&Artifact, RegistryError> {
    body.artifacts
        .get(i as usize)
        .ok_or_else(|| RegistryError::Internal(format!("release {} v{} names a missing artifact {i}", body.channel, body.version)))
}

/// `sha256:<hex>` of an image artifact (its layer diff_id or config digest).
pub fn digest_of(a: &Artifact) -> Result<String, RegistryError> {
    a.sha256
        .map(|d| format!("sha256:{}", hex::encode(d)))
        .ok_or_else(|| RegistryError::Internal(format!("image artifact {} carries no sha256", a.name)))
}

/// The manifest of `img`, each layer its uncompressed tar.
pub fn image_manifest(body: &ReleaseBody, img: &Image, flavor: Flavor) -> Result<Document, RegistryError> {
    let (mt, config_mt, layer_mt) = match flavor {
        Flavor::Oci => (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER),
        Flavor::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER),
    };
    let config = artifact(body, img.config)?;
    let mut layers = Vec::with_capacity(img.layers.len());
    for &l in &img.layers {
        let a = artifact(body, l)?;
        layers.push(Descriptor { media_type: layer_mt, digest: digest_of(a)?, size: a.size, platform: None });
    }
    let m = ImageManifest {
        schema_version: 2,
        media_type: mt,
        config: Descriptor { media_type: config_mt, digest: digest_of(config)?, size: config.size, platform: None },
        layers,
    };
    Document::new(mt, &m)
}

/// An index over per-platform manifests (all of one flavor).
pub fn index(children: &[(Document, Platform)], flavor: Flavor) -> Result<Document, RegistryError> {
    let mt = match flavor {
        Flavor::Oci => OCI_INDEX,
        Flavor::Docker => DOCKER_LIST,
    };
    let manifests = children
        .iter()
        .map(|(d, p)| Descriptor { media_type: d.media_type, digest: d.digest.clone(), size: d.bytes.len() as u64, platform: Some(p) })
        .collect();
    Document::new(mt, &Index { schema_version: 2, media_type: mt, manifests })
}

#[cfg(test)]
mod tests {
    use super::*;
    use layerhop_protocol::{ArtifactKind, BlobRef, Channel, ChunkId, Content};

    fn body() -> ReleaseBody {
        let art = |name: &str, kind, sha: u8, size| Artifact {
            name: name.into(),
            kind,
            size,
            blake3: ChunkId::of(name.as_bytes()),
            sha256: Some([sha; 32]),
            content: Content::File(BlobRef { root: ChunkId::of(name.as_bytes()), len: size, height: 0 }),
        };
        ReleaseBody {
            channel: Channel::new("app").expect("channel"),
            version: 3,
            issued_at: 1,
            expires_at: 2,
            artifacts: vec![art("l0", ArtifactKind::Layer, 1, 1024), art("c", ArtifactKind::ImageConfig, 2, 99)],
            images: vec![Image { repo_tags: vec!["app:v1".into()], config: 1, layers: vec![0] }],
            priority: Default::default(),
        }
    }

    #[test]
    fn manifest_is_deterministic_and_names_uncompressed_layers() {
        let b = body();
        let m = image_manifest(&b, &b.images[0], Flavor::Oci).expect("manifest");
        assert_eq!(m.digest, image_manifest(&b, &b.images[0], Flavor::Oci).expect("again").digest);
        let v: serde_json::Value = serde_json::from_slice(&m.bytes).expect("json");
        assert_eq!(v["layers"][0]["mediaType"], OCI_LAYER);
        assert_eq!(v["layers"][0]["digest"], format!("sha256:{}", "01".repeat(32)));
        assert_eq!(v["layers"][0]["size"], 1024);
        assert_eq!(v["config"]["digest"], format!("sha256:{}", "02".repeat(32)));
        let d = image_manifest(&b, &b.images[0], Flavor::Docker).expect("docker");
        assert_eq!(d.media_type, DOCKER_MANIFEST);
        assert!(String::from_utf8_lossy(&d.bytes).contains(DOCKER_LAYER));
        assert_ne!(d.digest, m.digest);
    }

    #[test]
    fn accept_picks_the_clients_preference() {
        let docker = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";
        assert_eq!(negotiate([docker]), Preference { manifest: Flavor::Docker, index: Some(Flavor::Docker) });
        assert_eq!(negotiate([OCI_MANIFEST]), Preference { manifest: Flavor::Oci, index: None });
        assert_eq!(negotiate(std::iter::empty()), Preference { manifest: Flavor::Oci, index: Some(Flavor::Oci) });
        let q = format!("{DOCKER_MANIFEST};q=0.5, {OCI_MANIFEST}");
        assert_eq!(negotiate([q.as_str()]).manifest, Flavor::Oci);
        assert_eq!(negotiate([OCI_MANIFEST, DOCKER_LIST]).index, Some(Flavor::Docker));
    }

    #[test]
    fn platform_comes_from_the_config() {
        let p = platform_of(br#"{"architecture":"arm","os":"linux","variant":"v7","rootfs":{}}"#).expect("platform");
        assert_eq!(p.variant.as_deref(), Some("v7"));
        assert!(platform_of(b"{}").is_none());
    }
}
