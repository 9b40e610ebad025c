//! Publishing straight from an upstream registry: `layerhop publish --from-registry URL`.
//!
//! [`download`] pulls one image (`http(s)://HOST/REPO:TAG` or `…@sha256:…`) into a fresh OCI image
//! layout (`oci-layout`, `index.json`, `blobs/sha256/…`), which the seed then imports exactly as it
//! imports a layout from disk, so a release made from a registry holds the same artifacts as one
//! made from the same image saved to a file. The choice: download to a layout first rather than
//! teach the importer HTTP. The importer stays one code path for every source, every blob is
//! verified against its sha256 before anything is chunked, and a failed download publishes
//! nothing (the layout is a temporary directory that is simply removed).
//!
//! The registry protocol and its auth (anonymous, basic, and bearer tokens fetched from the
//! registry's token service with or without credentials) are `oci-client`'s. Blobs are streamed
//! to disk, never held whole in memory, and cut off past their descriptor's size. Manifests are
//! limited to [`MAX_MANIFEST`] and configs to [`MAX_CONFIG`]. Plain HTTP is used only when the
//! URL says `http://`.

use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Largest manifest or image index accepted (the limit of the reference registry).
pub const MAX_MANIFEST: usize = 4 << 20;
/// Largest image config accepted (the importer's limit for JSON blobs).
pub const MAX_CONFIG: u64 = 16 << 20;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const CONFIGS: [&str; 2] = ["application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"];
/// Layer media types the importer understands: plain, gzip and zstd tars.
const LAYERS: [&str; 6] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
];

/// Why an image could not be downloaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not `http(s)://HOST/REPO[:TAG|@DIGEST]`.
    #[error("--from-registry {url:?} is not an image URL like https://HOST/REPO:TAG: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `--platform` is not `OS/ARCH[/VARIANT]`.
    #[error("--platform {0:?} is not OS/ARCH or OS/ARCH/VARIANT (e.g. linux/amd64, linux/arm/v7)")]
    BadPlatform(String),
    /// No TCP/TLS connection to the registry.
    #[error("cannot reach the registry {registry}: {detail}")]
    Unreachable {
        /// Registry host.
        registry: String,
        /// The underlying error chain.
        detail: String,
    },
    /// 401 and no credentials were given.
    #[error(
        "the registry {registry} requires credentials (401 Unauthorized): pass --username and --password-stdin, or set LAYERHOP_REGISTRY_USERNAME and LAYERHOP_REGISTRY_PASSWORD"
    )]
    NeedsCredentials {
        /// Registry host.
        registry: String,
    },
    /// 401/403 with credentials.
    #[error("the registry {registry} refused access for user {username:?} (401/403): check the username and password")]
    Refused {
        /// Registry host.
        registry: String,
        /// The user name sent.
        username: String,
    },
    /// The repository, tag or digest does not exist.
    #[error("{reference} is unknown to the registry: {detail}")]
    Unknown {
        /// What was asked for.
        reference: String,
        /// The registry's words.
        detail: String,
    },
    /// Downloaded bytes do not hash to their digest.
    #[error("{what} {digest}: the downloaded bytes do not match the digest ({detail})")]
    DigestMismatch {
        /// Manifest, config or layer N.
        what: String,
        /// The expected digest.
        digest: String,
        /// Expected/actual detail.
        detail: String,
    },
    /// A manifest, config or layer of a kind that cannot be published.
    #[error("{what} has media type {media_type:?}, which layerhop cannot publish (supported: {supported})")]
    UnsupportedMediaType {
        /// Manifest, config or layer N.
        what: String,
        /// Its media type.
        media_type: String,
        /// What would have been accepted.
        supported: String,
    },
    /// A blob larger than its limit or its descriptor's size, or shorter than announced.
    #[error("{what}: {detail}")]
    Size {
        /// Manifest, config or layer N.
        what: String,
        /// Sizes involved.
        detail: String,
    },
    /// A malformed manifest, index or descriptor.
    #[error("{what} is malformed: {detail}")]
    Malformed {
        /// Which document.
        what: String,
        /// The parse error.
        detail: String,
    },
    /// An image index with nothing for the wanted platform.
    #[error("{reference} is a multi-platform image without {platform} (it has: {available}); choose one with --platform")]
    NoPlatform {
        /// What was asked for.
        reference: String,
        /// The wanted platform.
        platform: String,
        /// The index's platforms.
        available: String,
    },
    /// Any other registry answer.
    #[error("the registry {registry} failed: {detail}")]
    Registry {
        /// Registry host.
        registry: String,
        /// The underlying error.
        detail: String,
    },
    /// Writing the layout.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, Error>;

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io { action, path: path.to_owned(), source }
}

/// An image in an upstream registry, parsed from `http(s)://HOST/REPO[:TAG][@DIGEST]`.
#[derive(Debug, Clone)]
pub struct Source {
    reference: Reference,
    insecure: bool,
    /// The reference without the scheme, as given (`HOST/REPO:TAG`).
    text: String,
}

impl Source {
    /// Parse a `--from-registry` URL. A reference without tag or digest means `:latest`.
    pub fn parse(url: &str) -> Result<Source> {
        let bad = |reason: &str| Error::BadUrl { url: url.to_owned(), reason: reason.to_owned() };
        let (insecure, rest) = if let Some(r) = url.strip_prefix("https://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (true, r)
        } else {
            return Err(bad("it must start with https:// (or http:// for a registry without TLS)"));
        };
        let (host, path) = rest.split_once('/').ok_or_else(|| bad("it names no repository after the host"))?;
        if host.is_empty() || path.is_empty() || host.contains(['@', '?', '#']) {
            return Err(bad("expected HOST/REPO"));
        }
        // The reference grammar decides by itself whether a first component is a host, so the
        // path is parsed below a stand-in host and put back under the one the URL names.
        let parsed = Reference::try_from(format!("localhost/{path}").as_str()).map_err(|e| bad(&e.to_string()))?;
        let repo = parsed.repository().strip_prefix("localhost/").unwrap_or(parsed.repository()).to_owned();
        let direct = Reference::try_from(rest).ok().filter(|r| r.registry() == host);
        let reference = match direct {
            // Keeps Docker Hub's `library/` for official images.
            Some(r) => r,
            None => match (parsed.tag(), parsed.digest()) {
                (Some(t), Some(d)) => Reference::with_tag_and_digest(host.into(), repo, t.into(), d.into()),
                (_, Some(d)) => Reference::with_digest(host.into(), repo, d.into()),
                (t, None) => Reference::with_tag(host.into(), repo, t.unwrap_or("latest").into()),
            },
        };
        Ok(Source { reference, insecure, text: rest.to_owned() })
    }

    /// `HOST/REPO:TAG` as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn registry(&self) -> String {
        self.reference.registry().to_owned()
    }
}

/// Which image of a multi-platform index to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

impl Platform {
    /// `OS/ARCH[/VARIANT]`.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts[..] {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform { os: os.into(), architecture: arch.into(), variant: None }),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => {
                Ok(Platform { os: os.into(), architecture: arch.into(), variant: Some(v.into()) })
            }
            _ => Err(Error::BadPlatform(s.to_owned())),
        }
    }

    /// linux on this machine's architecture, in OCI's names.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            a => a,
        };
        Platform { os: "linux".into(), architecture: architecture.into(), variant: None }
    }

    fn matches(&self, p: &IndexPlatform) -> bool {
        p.os == self.os && p.architecture == self.architecture && self.variant.as_ref().is_none_or(|v| p.variant.as_ref() == Some(v))
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What [`download`] wrote.
#[derive(Debug)]
pub struct Downloaded {
    /// The OCI layout directory.
    pub layout: PathBuf,
    /// Digest of the image manifest taken (the platform's manifest for an index).
    pub manifest_digest: String,
    /// Layers downloaded.
    pub layers: usize,
    /// Bytes of config and layers as stored upstream (compressed).
    pub bytes: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<IndexPlatform>,
}

#[derive(Deserialize)]
struct IndexPlatform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

impl std::fmt::Display for IndexPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}{}", self.os, self.architecture, self.variant.as_ref().map(|v| format!("/{v}")).unwrap_or_default())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    #[serde(default)]
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// How a download talks to one registry.
struct Session {
    client: Client,
    auth: RegistryAuth,
    source: Source,
}

/// Download `source` (the `platform` image of a multi-platform index) into a new OCI layout at
/// `layout`, which must not exist. Every blob is checked against its sha256 digest.
pub async fn download(source: &Source, auth: RegistryAuth, platform: &Platform, layout: &Path) -> Result<Downloaded> {
    let config = ClientConfig {
        protocol: if source.insecure { ClientProtocol::Http } else { ClientProtocol::Https },
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(120)),
        ..ClientConfig::default()
    };
    // reqwest is built without a default TLS provider (the workspace already has ring through
    // libp2p's noise; a second one would be aws-lc). Installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s = Session { client: Client::new(config), auth, source: source.clone() };
    let blobs = layout.join("blobs/sha256");
    tokio::fs::create_dir_all(&blobs).await.map_err(io("create", &blobs))?;

    let (mut bytes, mut digest) = s.manifest(&s.source.reference, "manifest").await?;
    let mut doc = parse(&bytes, "manifest")?;
    if is_index(&doc) {
        let entries = doc.manifests.take().unwrap_or_default();
        let available = entries.iter().filter_map(|e| e.platform.as_ref().map(|p| p.to_string())).collect::<Vec<_>>().join(", ");
        let pick = entries.into_iter().find(|e| e.platform.as_ref().is_some_and(|p| platform.matches(p))).ok_or_else(|| Error::NoPlatform {
            reference: source.text.clone(),
            platform: platform.to_string(),
            available,
        })?;
        check_digest(&pick.digest, "manifest")?;
        let r = Reference::with_digest(source.reference.registry().into(), source.reference.repository().into(), pick.digest.clone());
        (bytes, digest) = s.manifest(&r, &format!("{platform} manifest")).await?;
        if digest != pick.digest {
            return Err(Error::DigestMismatch { what: format!("{platform} manifest"), digest: pick.digest, detail: format!("got {digest}") });
        }
        doc = parse(&bytes, "manifest")?;
        if is_index(&doc) {
            return Err(unsupported("the platform's manifest", doc.media_type.as_deref().unwrap_or("an image index"), &[OCI_MANIFEST, DOCKER_MANIFEST]));
        }
    }
    let media_type = doc.media_type.clone().unwrap_or_else(|| OCI_MANIFEST.to_owned());
    if doc.schema_version != 2 || ![OCI_MANIFEST, DOCKER_MANIFEST].contains(&media_type.as_str()) {
        let shown = if doc.schema_version != 2 { format!("{media_type} (schema version {})", doc.schema_version) } else { media_type };
        return Err(unsupported("the manifest", &shown, &[OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST]));
    }
    let config = doc.config.as_ref().ok_or_else(|| Error::Malformed { what: "the manifest".into(), detail: "it has no config".into() })?;
    if !CONFIGS.contains(&config.media_type.as_str()) {
        return Err(unsupported("the image config", &config.media_type, &CONFIGS));
    }
    for (i, l) in doc.layers.iter().enumerate() {
        if !LAYERS.contains(&l.media_type.as_str()) {
            return Err(unsupported(&format!("layer {i}"), &l.media_type, &LAYERS));
        }
    }
    if config.size > MAX_CONFIG {
        return Err(Error::Size { what: "the image config".into(), detail: format!("{} bytes, over the limit of {MAX_CONFIG}", config.size) });
    }
    let mut total = s.blob(config, "the image config", &blobs).await?;
    for (i, l) in doc.layers.iter().enumerate() {
        total += s.blob(l, &format!("layer {i}"), &blobs).await?;
    }
    write_file(&blobs.join(hex_of(&digest)), &bytes).await?;
    write_file(&layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).await?;
    let mut entry = serde_json::json!({ "mediaType": media_type, "digest": digest, "size": bytes.len() });
    // A tag names the image in the release (`HOST/REPO:TAG`, as docker would); by digest alone
    // it has no tag.
    if let Some(tag) = source.reference.tag() {
        let named = source.text.split('@').next().unwrap_or_default();
        let has_tag = named.rsplit_once('/').is_some_and(|(_, last)| last.contains(':'));
        let name = if has_tag { named.to_owned() } else { format!("{named}:{tag}") };
        entry["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": name });
    }
    let index = serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry] });
    write_file(&layout.join("index.json"), index.to_string().as_bytes()).await?;
    Ok(Downloaded { layout: layout.to_owned(), manifest_digest: digest, layers: doc.layers.len(), bytes: total })
}

fn is_index(doc: &Document) -> bool {
    matches!(doc.media_type.as_deref(), Some(OCI_INDEX | DOCKER_LIST)) || (doc.media_type.is_none() && doc.manifests.is_some())
}

fn unsupported(what: &str, media_type: &str, supported: &[&str]) -> Error {
    Error::UnsupportedMediaType { what: what.into(), media_type: media_type.into(), supported: supported.join(", ") }
}

fn parse(bytes: &[u8], what: &str) -> Result<Document> {
    serde_json::from_slice(bytes).map_err(|e| Error::Malformed { what: what.into(), detail: e.to_string() })
}

/// `sha256:<64 lowercase hex>`, the only digests accepted (they become file names).
fn check_digest(d: &str, what: &str) -> Result<()> {
    let ok = d.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    if ok { Ok(()) } else { Err(Error::Malformed { what: what.into(), detail: format!("digest {d:?} is not sha256:<64 hex>") }) }
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

async fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    tokio::fs::write(path, bytes).await.map_err(io("write", path))
}

impl Session {
    /// Fetch a manifest or index; returns its bytes and their sha256 digest.
    async fn manifest(&self, r: &Reference, what: &str) -> Result<(Vec<u8>, String)> {
        let accept = [OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST];
        // oci-client reads a manifest response whole; the size is checked once it is in.
        let (bytes, _) = self.client.pull_manifest_raw(r, &self.auth, &accept).await.map_err(|e| self.classify(e, what))?;
        if bytes.len() > MAX_MANIFEST {
            return Err(Error::Size { what: what.into(), detail: format!("{} bytes, over the limit of {MAX_MANIFEST}", bytes.len()) });
        }
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
        if let Some(want) = r.digest().filter(|d| *d != digest) {
            return Err(Error::DigestMismatch { what: what.into(), digest: want.into(), detail: format!("got {digest}") });
        }
        Ok((bytes.to_vec(), digest))
    }

    /// Stream one blob into `blobs/`, verified (by oci-client) against its digest and cut off
    /// past its descriptor's size; returns its size.
    async fn blob(&self, d: &Descriptor, what: &str, blobs: &Path) -> Result<u64> {
        check_digest(&d.digest, what)?;
        let path = blobs.join(hex_of(&d.digest));
        let partial = blobs.join(format!("{}.partial", hex_of(&d.digest)));
        let mut stream = self.client.pull_blob_stream(&self.source.reference, d.digest.as_str()).await.map_err(|e| self.classify(e, what))?;
        let mut file = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::create(&partial).await.map_err(io("create", &partial))?);
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| match e.get_ref().and_then(|i| i.downcast_ref::<oci_client::errors::DigestError>()) {
                Some(de) => Error::DigestMismatch { what: what.into(), digest: d.digest.clone(), detail: de.to_string() },
                None => Error::Registry { registry: self.source.registry(), detail: format!("downloading {what}: {e}") },
            })?;
            n += chunk.len() as u64;
            if n > d.size {
                return Err(Error::Size { what: what.into(), detail: format!("the registry sent more than the manifest's {} bytes", d.size) });
            }
            file.write_all(&chunk).await.map_err(io("write", &partial))?;
        }
        if n != d.size {
            return Err(Error::Size { what: what.into(), detail: format!("the registry sent {n} bytes, the manifest says {}", d.size) });
        }
        file.flush().await.map_err(io("write", &partial))?;
        tokio::fs::rename(&partial, &path).await.map_err(io("rename", &partial))?;
        Ok(n)
    }

    /// Turn oci-client's error into one that names the problem.
    fn classify(&self, e: OciDistributionError, what: &str) -> Error {
        let registry = self.source.registry();
        let denied = || match &self.auth {
            RegistryAuth::Basic(username, _) => Error::Refused { registry: registry.clone(), username: username.clone() },
            _ => Error::NeedsCredentials { registry: registry.clone() },
        };
        let unknown = |detail: String| Error::Unknown { reference: format!("{} ({what})", self.source.text), detail };
        match e {
            OciDistributionError::UnauthorizedError { .. } => denied(),
            OciDistributionError::ServerError { code: 401 | 403, .. } => denied(),
            OciDistributionError::ServerError { code: 404, message, .. } => unknown(format!("404 {}", message.trim())),
            OciDistributionError::ImageManifestNotFoundError(m) => unknown(m),
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let detail = envelope.errors.iter().map(|e| format!("{:?}: {}", e.code, e.message)).collect::<Vec<_>>().join("; ");
                if codes.iter().any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                    denied()
                } else if codes.iter().any(|c| matches!(c, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::BlobUnknown)) {
                    unknown(detail)
                } else {
                    Error::Registry { registry, detail }
                }
            }
            OciDistributionError::DigestError(de) => Error::DigestMismatch { what: what.into(), digest: String::new(), detail: de.to_string() },
            OciDistributionError::RequestError(re) if re.is_connect() || re.is_timeout() => Error::Unreachable { registry, detail: chain(&re) },
            other => Error::Registry { registry, detail: chain(&other) },
        }
    }
}

/// An error and its sources on one line ("error sending request: … : Connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out += &format!(": {s_text}");
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_references() {
        let s = Source::parse("http://127.0.0.1:5000/e2e/app:v1").expect("parse");
        assert!(s.insecure);
        assert_eq!((s.reference.registry(), s.reference.repository(), s.reference.tag()), ("127.0.0.1:5000", "e2e/app", Some("v1")));
        let s = Source::parse("https://registry/app").expect("parse");
        assert!(!s.insecure);
        assert_eq!((s.reference.registry(), s.reference.repository(), s.reference.tag()), ("registry", "app", Some("latest")));
        let s = Source::parse("https://docker.io/alpine:3").expect("parse");
        assert_eq!(s.reference.repository(), "library/alpine");
        let d = format!("sha256:{}", "a".repeat(64));
        let s = Source::parse(&format!("https://r.example:443/x/y@{d}")).expect("parse");
        assert_eq!((s.reference.tag(), s.reference.digest()), (None, Some(d.as_str())));
        for bad in ["127.0.0.1:5000/app:v1", "ftp://h/app", "https://host", "https://host/", "https://host/UPPER:v1", "https://host/a:b:c"] {
            assert!(matches!(Source::parse(bad), Err(Error::BadUrl { .. })), "{bad}");
        }
    }

    #[test]
    fn platforms_parse_and_match() {
        let p = Platform::parse("linux/arm/v7").expect("parse");
        assert!(p.matches(&IndexPlatform { os: "linux".into(), architecture: "arm".into(), variant: Some("v7".into()) }));
        assert!(!p.matches(&IndexPlatform { os: "linux".into(), architecture: "arm".into(), variant: Some("v6".into()) }));
        let p = Platform::parse("linux/arm64").expect("parse");
        assert!(p.matches(&IndexPlatform { os: "linux".into(), architecture: "arm64".into(), variant: Some("v8".into()) }));
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digests_must_be_sha256_hex() {
        assert!(check_digest(&format!("sha256:{}", "0".repeat(64)), "x").is_ok());
        for bad in ["sha256:../../etc/passwd", "sha512:00", &format!("sha256:{}", "A".repeat(64)), "sha256:"] {
            assert!(check_digest(bad, "x").is_err(), "{bad}");
        }
    }
}
