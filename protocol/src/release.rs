//! Releases: what a seed publishes and signs, and how a device checks it.
//!
//! A [`SignedRelease`] carries the postcard bytes of a [`ReleaseBody`] exactly as they were
//! signed, so verification never depends on re-encoding. The body names every artifact by the
//! root of its chunk tree ([`BlobRef`]); it grows with the number of artifacts, never with their
//! size. Version order and expiry are policy, checked by the node against its durable trust
//! state; this module only proves who signed what.

use crate::{BlobRef, ChunkId, Error, limits, tree};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

const RELEASE_DOMAIN: &[u8] = b"layerhop release v1\0";

/// A channel name: 1–64 of `a-z 0-9 . _ -`, starting with a letter or digit.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Channel(String);

impl Channel {
    /// Validate a channel name.
    pub fn new(s: &str) -> Result<Self, Error> {
        let bad = |reason| Error::InvalidName { what: "channel", value: s.chars().take(80).collect(), reason };
        if s.is_empty() || s.len() > 64 {
            return Err(bad("must be 1 to 64 characters"));
        }
        if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)) {
            return Err(bad("only a-z, 0-9, '.', '_' and '-' are allowed"));
        }
        if !s.as_bytes()[0].is_ascii_alphanumeric() {
            return Err(bad("must start with a letter or digit"));
        }
        Ok(Channel(s.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Channel {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Channel::new(&s)
    }
}

impl From<Channel> for String {
    fn from(c: Channel) -> String {
        c.0
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an artifact is, which decides how it is exported and served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArtifactKind {
    /// A plain file (a model, a config file), exported under its name.
    File,
    /// An image layer: its uncompressed tar (sha256 = the config's diff_id).
    Layer,
    /// An image config JSON.
    ImageConfig,
}

/// How an artifact's bytes are stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// The bytes themselves, as one blob.
    File(BlobRef),
    /// A tar split into header columns (see the store's `tarsplit`) and the concatenated contents
    /// of its regular files, each file cut into chunks of its own.
    Tar {
        /// One blob per header column, in the column order of the store's splitter.
        columns: Vec<BlobRef>,
        /// The regular files' contents, in archive order.
        contents: BlobRef,
    },
}

impl Content {
    /// Every blob the content is made of.
    pub fn blobs(&self) -> Vec<BlobRef> {
        match self {
            Content::File(b) => vec![*b],
            Content::Tar { columns, contents } => columns.iter().copied().chain([*contents]).collect(),
        }
    }
}

/// One file of a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Relative path (`model/detector.onnx`) or, for images, a stable name (`layers/0`).
    pub name: String,
    /// What it is.
    pub kind: ArtifactKind,
    /// Its size in bytes as exported.
    pub size: u64,
    /// BLAKE3 of the exported bytes: what a device checks.
    pub blake3: ChunkId,
    /// SHA-256 of the exported bytes for layers and configs (their OCI digests, a layer's
    /// diff_id), computed once on the seed. None for plain files: devices check BLAKE3, and
    /// SHA-256 costs ten times BLAKE3 on the seed's publish path.
    pub sha256: Option<[u8; 32]>,
    /// Where its bytes are.
    pub content: Content,
}

/// A container image carried by a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Tags as the source gave them (`anomaly-detector:v7`).
    pub repo_tags: Vec<String>,
    /// Index of the config in [`ReleaseBody::artifacts`].
    pub config: u32,
    /// Indices of the layers, bottom first.
    pub layers: Vec<u32>,
}

/// What a release says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseBody {
    /// The channel it updates.
    pub channel: Channel,
    /// Grows with every release of the channel.
    pub version: u64,
    /// Unix seconds when it was signed.
    pub issued_at: u64,
    /// Unix seconds after which devices refuse it.
    pub expires_at: u64,
    /// Its files.
    pub artifacts: Vec<Artifact>,
    /// Images assembled from its artifacts.
    pub images: Vec<Image>,
    /// How devices weigh it against their metered-link policy. Last on purpose: see
    /// [`Priority`] for how bodies signed before it existed still decode.
    #[serde(default)]
    pub priority: Priority,
}

/// How urgently devices should fetch a release over their metered link, as its publisher
/// decided (`layerhop publish --priority urgent [--ignore-budget]`).
///
/// Encoding: postcard writes a struct as its fields in order with no framing, so a body with
/// the default priority is signed *without* the trailing priority bytes — exactly the bytes of a
/// body from before priorities existed — and a body that ends where the priority would begin
/// decodes with the default. Old devices keep accepting normal releases from a new seed, and
/// new devices keep accepting releases signed by an old one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Priority {
    /// Fetch it outside the device's metered time windows, and without waiting for site peers.
    pub urgent: bool,
    /// Fetch it even when the device's metered byte budget is spent (only with `urgent`).
    pub ignore_budget: bool,
}

impl Priority {
    /// A release fetched like any other.
    pub const NORMAL: Priority = Priority { urgent: false, ignore_budget: false };

    /// Its bytes as they end a body.
    fn suffix(&self) -> Vec<u8> {
        // Two bools: cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }
}

/// Encode a body for signing; a default priority is left out (see [`Priority`]).
fn body_to_bytes(body: &ReleaseBody) -> Result<Vec<u8>, Error> {
    let mut bytes = postcard::to_allocvec(body).map_err(|e| Error::malformed("release", e))?;
    if body.priority == Priority::NORMAL {
        bytes.truncate(bytes.len().saturating_sub(Priority::NORMAL.suffix().len()));
    }
    Ok(bytes)
}

/// Decode signed body bytes; bytes that end where the priority would begin have the default.
fn body_from_bytes(bytes: &[u8]) -> Result<ReleaseBody, Error> {
    match postcard::take_from_bytes::<ReleaseBody>(bytes) {
        Err(postcard::Error::DeserializeUnexpectedEnd) => {
            let mut full = bytes.to_vec();
            full.extend_from_slice(&Priority::NORMAL.suffix());
            crate::wire::from_exact(&full, "release body")
        }
        _ => crate::wire::from_exact(bytes, "release body"),
    }
}

fn check_artifact_name(name: &str) -> Result<(), Error> {
    let bad = |reason| Error::InvalidName { what: "artifact name", value: name.chars().take(80).collect(), reason };
    if name.is_empty() || name.len() > 1024 {
        return Err(bad("must be 1 to 1024 bytes"));
    }
    if name.starts_with('/') || name.contains('\\') || name.contains('\0') {
        return Err(bad("must be a relative path without backslashes or NUL"));
    }
    if name.split('/').any(|c| c.is_empty() || c == "." || c == ".." || c.len() > 255) {
        return Err(bad("each path component must be a plain name"));
    }
    Ok(())
}

impl ReleaseBody {
    /// Check the body's shape: names, counts, indices and tree refs.
    pub fn validate(&self) -> Result<(), Error> {
        Error::check_len("artifact list", self.artifacts.len(), limits::MAX_ARTIFACTS)?;
        let mut names = std::collections::HashSet::new();
        for a in &self.artifacts {
            check_artifact_name(&a.name)?;
            if !names.insert(a.name.as_str()) {
                return Err(Error::InvalidName { what: "artifact name", value: a.name.clone(), reason: "appears twice" });
            }
            if let Content::Tar { columns, .. } = &a.content {
                Error::check_len("tar column list", columns.len(), 64)?;
            }
            for b in a.content.blobs() {
                tree::check_ref(&b)?;
            }
        }
        if self.priority.ignore_budget && !self.priority.urgent {
            return Err(Error::malformed("release", "priority ignore_budget is only for an urgent release"));
        }
        Error::check_len("image list", self.images.len(), 64)?;
        for img in &self.images {
            Error::check_len("repo tag list", img.repo_tags.len(), 64)?;
            let n = self.artifacts.len() as u32;
            let kind_of = |i: u32| self.artifacts.get(i as usize).filter(|_| i < n).map(|a| a.kind);
            if kind_of(img.config) != Some(ArtifactKind::ImageConfig) {
                return Err(Error::malformed("release", "image config index does not name a config"));
            }
            if img.layers.iter().any(|&l| kind_of(l) != Some(ArtifactKind::Layer)) {
                return Err(Error::malformed("release", "image layer index does not name a layer"));
            }
        }
        Ok(())
    }

    /// Bytes of data chunks the release is made of (what `bytes_total` reports).
    pub fn stored_bytes(&self) -> u64 {
        self.artifacts.iter().flat_map(|a| a.content.blobs()).map(|b| b.len).sum()
    }
}

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Wrap raw key bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        PublicKey(b)
    }
    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Verify `signature` over `domain || msg`.
    pub(crate) fn verify(&self, what: &'static str, domain: &[u8], msg: &[u8], signature: &[u8]) -> Result<(), Error> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| Error::BadSignature { what })?;
        let sig = ed25519_dalek::Signature::from_slice(signature).map_err(|_| Error::BadSignature { what })?;
        let mut m = Vec::with_capacity(domain.len() + msg.len());
        m.extend_from_slice(domain);
        m.extend_from_slice(msg);
        key.verify(&m, &sig).map_err(|_| Error::BadSignature { what })
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", &self.to_hex()[..12])
    }
}

/// A secret ed25519 signing key: the publisher's, or the fleet's for join credentials.
pub struct PublisherKey(SigningKey);

impl PublisherKey {
    /// A new random key from the OS's generator.
    pub fn generate() -> Result<Self, Error> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| Error::malformed("random source", e))?;
        Ok(PublisherKey(SigningKey::from_bytes(&secret)))
    }
    /// Load from the 32 secret bytes.
    pub fn from_bytes(secret: [u8; 32]) -> Self {
        PublisherKey(SigningKey::from_bytes(&secret))
    }
    /// The 32 secret bytes, for the key file.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }
    /// Its public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }
    pub(crate) fn sign_raw(&self, domain: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(domain.len() + msg.len());
        m.extend_from_slice(domain);
        m.extend_from_slice(msg);
        self.0.sign(&m).to_bytes().to_vec()
    }
    /// Validate and sign a release body.
    pub fn sign_release(&self, body: &ReleaseBody) -> Result<SignedRelease, Error> {
        body.validate()?;
        let bytes = body_to_bytes(body)?;
        Error::check_len("release body", bytes.len(), limits::MAX_RELEASE - 256)?;
        let signature = self.sign_raw(RELEASE_DOMAIN, &bytes);
        Ok(SignedRelease { body: bytes, key: self.public(), signature })
    }
}

/// A release body with its publisher's signature, as carried on the wire and kept on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRelease {
    /// The postcard bytes of the [`ReleaseBody`], as signed.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The key that signed it.
    pub key: PublicKey,
    /// ed25519 signature over a domain tag and `body`.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl SignedRelease {
    /// Encode for disk or wire.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain bytes and arrays to a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decode untrusted bytes (bounded); the signature is not checked yet.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        Error::check_len("signed release", bytes.len(), limits::MAX_RELEASE)?;
        crate::wire::from_exact(bytes, "signed release")
    }

    /// Check the signature against the pinned publisher key and return the validated body.
    pub fn verify(&self, pinned: &PublicKey) -> Result<ReleaseBody, Error> {
        if self.key != *pinned {
            return Err(Error::UnknownKey { found: self.key.to_hex(), expected: pinned.to_hex() });
        }
        pinned.verify("release", RELEASE_DOMAIN, &self.body, &self.signature)?;
        let body = body_from_bytes(&self.body)?;
        body.validate()?;
        Ok(body)
    }

    /// The body without checking the signature: only for showing what was refused.
    pub fn peek(&self) -> Result<ReleaseBody, Error> {
        body_from_bytes(&self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn body(version: u64) -> ReleaseBody {
        let file = Artifact {
            name: "model/detector.onnx".into(),
            kind: ArtifactKind::File,
            size: 6,
            blake3: ChunkId::of(b"model!"),
            sha256: None,
            content: Content::File(BlobRef { root: ChunkId::of(b"model!"), len: 6, height: 0 }),
        };
        ReleaseBody {
            channel: Channel::new("anomaly-detector").expect("channel"),
            version,
            issued_at: 1,
            expires_at: 2,
            artifacts: vec![file],
            images: vec![],
            priority: Priority::NORMAL,
        }
    }

    /// The body as signed before priorities existed.
    #[derive(Serialize)]
    struct BodyV1 {
        channel: Channel,
        version: u64,
        issued_at: u64,
        expires_at: u64,
        artifacts: Vec<Artifact>,
        images: Vec<Image>,
    }

    #[test]
    fn priority_is_signed_and_old_bodies_still_decode() {
        let k = PublisherKey::generate().expect("key");
        let b = body(5);
        let old = postcard::to_allocvec(&BodyV1 { channel: b.channel.clone(), version: 5, issued_at: 1, expires_at: 2, artifacts: b.artifacts.clone(), images: vec![] }).expect("encode");
        // A normal release is signed as an old body: old devices decode it too.
        let normal = k.sign_release(&b).expect("sign");
        assert_eq!(normal.body, old);
        assert_eq!(normal.verify(&k.public()).expect("verify").priority, Priority::NORMAL);
        let mut u = body(6);
        u.priority = Priority { urgent: true, ignore_budget: true };
        let urgent = k.sign_release(&u).expect("sign");
        let back = SignedRelease::decode(&urgent.encode()).expect("decode").verify(&k.public()).expect("verify");
        assert_eq!(back.priority, u.priority);
        // The priority is under the signature: flipping it breaks the release.
        let mut tampered = urgent.clone();
        let last = tampered.body.len() - 1;
        tampered.body[last] = 0;
        assert!(matches!(tampered.verify(&k.public()), Err(Error::BadSignature { .. })));
        u.priority = Priority { urgent: false, ignore_budget: true };
        assert!(k.sign_release(&u).is_err());
    }

    #[test]
    fn sign_verify_and_tamper() {
        let k = PublisherKey::generate().expect("key");
        let s = k.sign_release(&body(3)).expect("sign");
        let decoded = SignedRelease::decode(&s.encode()).expect("decode");
        assert_eq!(decoded.verify(&k.public()).expect("verify"), body(3));
        let mut bad = decoded.clone();
        let last = bad.body.len() - 1;
        bad.body[last] ^= 1;
        assert!(matches!(bad.verify(&k.public()), Err(Error::BadSignature { .. })));
        let other = PublisherKey::generate().expect("key");
        assert!(matches!(decoded.verify(&other.public()), Err(Error::UnknownKey { .. })));
        let mut forged = other.sign_release(&body(4)).expect("sign");
        forged.key = k.public();
        assert!(matches!(forged.verify(&k.public()), Err(Error::BadSignature { .. })));
    }

    #[test]
    fn names_are_checked() {
        assert!(Channel::new("Bad").is_err());
        assert!(Channel::new("-x").is_err());
        assert!(Channel::new("").is_err());
        for bad in ["/etc/passwd", "../x", "a//b", "a/./b", "a\\b"] {
            let mut b = body(1);
            b.artifacts[0].name = bad.into();
            assert!(b.validate().is_err(), "{bad}");
        }
    }
}
