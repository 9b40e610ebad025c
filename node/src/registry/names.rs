//! Parsing what a client puts in a registry URL: repository names, tags and digests.
//!
//! Everything is checked on the *raw* request path, before any percent-decoding, against the
//! distribution spec's grammar, which has no `%`, no `..` component and no leading `/`: so
//! `..%2f..`, `%2e%2e` and `//etc` are refused as `NAME_INVALID` before a name reaches the
//! store (which only ever sees a validated [`Channel`]).

use super::error::RegistryError;
use layerhop_protocol::Channel;

/// Longest repository name accepted (the spec's recommended bound).
const MAX_NAME: usize = 255;

/// What a `/v2/...` path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/v2/<name>/manifests/<reference>`.
    Manifest(String, Reference),
    /// `/v2/<name>/blobs/<digest>`.
    Blob(String, Digest),
    /// `/v2/<name>/tags/list`.
    Tags(String),
}

/// A manifest reference: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
    Tag(String),
    /// `algorithm:hex`.
    Digest(Digest),
}

/// A content digest. Only sha256 is ever held; other well-formed algorithms are simply unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// As sent (`sha256:…`), for messages and headers.
    pub text: String,
    /// The sha256 bytes, when the algorithm is sha256.
    pub sha256: Option<[u8; 32]>,
}

/// One component of a name: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-", between alphanumerics.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// Check a repository name against the OCI grammar.
pub fn check_name(name: &str) -> Result<(), RegistryError> {
    if name.is_empty() || name.len() > MAX_NAME || !name.split('/').all(valid_component) {
        return Err(RegistryError::NameInvalid(name.chars().take(300).collect()));
    }
    Ok(())
}

/// The channel a valid name stands for: the name itself, or the name below `library/` (docker
/// asks a mirror for `library/<name>` when pulling an unqualified `<name>:<tag>`).
pub fn channel_of(name: &str) -> Result<Channel, RegistryError> {
    let bare = name.strip_prefix("library/").unwrap_or(name);
    Channel::new(bare).map_err(|_| RegistryError::NameUnknown(name.to_owned()))
}

/// Parse `algorithm:encoded`: sha256 must be 64 lower-case hex digits; other algorithms must
/// match the spec's general grammar and are kept as unknown.
pub fn parse_digest(s: &str) -> Result<Digest, RegistryError> {
    let bad = || RegistryError::DigestInvalid(s.chars().take(200).collect());
    let (alg, enc) = s.split_once(':').ok_or_else(bad)?;
    if alg == "sha256" {
        if enc.len() != 64 || !enc.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(enc, &mut out).map_err(|_| bad())?;
        return Ok(Digest { text: s.to_owned(), sha256: Some(out) });
    }
    let alg_ok = !alg.is_empty() && alg.len() <= 64 && alg.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
    let enc_ok = !enc.is_empty() && enc.len() <= 256 && enc.bytes().all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b));
    if alg_ok && enc_ok { Ok(Digest { text: s.to_owned(), sha256: None }) } else { Err(bad()) }
}

/// Parse a manifest reference: a digest if it holds `:`, else a tag.
pub fn parse_reference(s: &str) -> Result<Reference, RegistryError> {
    if s.contains(':') {
        return parse_digest(s).map(Reference::Digest);
    }
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|&x| x.is_ascii_alphanumeric() || b"._-".contains(&x));
    if ok { Ok(Reference::Tag(s.to_owned())) } else { Err(RegistryError::DigestInvalid(s.chars().take(200).collect())) }
}

/// Split the raw path after `/v2/` into what it asks for. The name is everything before the
/// last `/manifests/`, `/blobs/` or `/tags/list`; it is validated before anything else.
pub fn parse_path(rest: &str) -> Result<Target, RegistryError> {
    if let Some(name) = rest.strip_suffix("/tags/list") {
        check_name(name)?;
        return Ok(Target::Tags(name.to_owned()));
    }
    let m = rest.rfind("/manifests/").map(|i| (i, "/manifests/".len(), true));
    let b = rest.rfind("/blobs/").map(|i| (i, "/blobs/".len(), false));
    let Some((i, len, manifest)) = m.into_iter().chain(b).max_by_key(|&(i, _, _)| i) else {
        // Not an API path; if the whole thing is not even a name, say so (traversal attempts).
        check_name(rest.trim_end_matches('/'))?;
        return Err(RegistryError::Unsupported(format!("no such endpoint: /v2/{}", rest.chars().take(200).collect::<String>())));
    };
    let (name, reference) = (&rest[..i], &rest[i + len..]);
    check_name(name)?;
    if reference.contains('/') {
        return Err(RegistryError::DigestInvalid(reference.chars().take(200).collect()));
    }
    if manifest {
        Ok(Target::Manifest(name.to_owned(), parse_reference(reference)?))
    } else {
        Ok(Target::Blob(name.to_owned(), parse_digest(reference)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_oci_grammar() {
        for good in ["anomaly-detector", "library/anomaly-detector", "a", "a.b_c__d---e/f0", "x/y/z"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "..", "../etc", "a/../b", "/abs", "a//b", "A", "a/", "%2e%2e", "a%2fb", "a_", "-a", "a___b", "a..b", ".a"] {
            assert!(matches!(check_name(bad), Err(RegistryError::NameInvalid(_))), "{bad}");
        }
    }

    #[test]
    fn library_prefix_maps_to_the_channel() {
        assert_eq!(channel_of("library/anomaly-detector").expect("channel").as_str(), "anomaly-detector");
        assert!(matches!(channel_of("a/b"), Err(RegistryError::NameUnknown(_))));
    }

    #[test]
    fn digests_and_references() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_digest(&format!("sha256:{hex}")).expect("digest").sha256, Some([0xab; 32]));
        for bad in ["sha256:xyz", "sha256:", "sha256", "sha256:AB", &format!("sha256:{}", "AB".repeat(32)), ":x", "sha256:../../x"] {
            assert!(matches!(parse_digest(bad), Err(RegistryError::DigestInvalid(_))), "{bad}");
        }
        assert_eq!(parse_digest("sha512:abc").expect("other algorithm").sha256, None);
        assert_eq!(parse_reference("v1").expect("tag"), Reference::Tag("v1".into()));
        assert!(parse_reference(".hidden").is_err());
        assert!(parse_reference(&"x".repeat(129)).is_err());
    }

    #[test]
    fn paths_split_at_the_last_endpoint() {
        let hex = "00".repeat(32);
        assert_eq!(
            parse_path(&format!("library/x/blobs/sha256:{hex}")).expect("blob"),
            Target::Blob("library/x".into(), parse_digest(&format!("sha256:{hex}")).expect("d"))
        );
        assert_eq!(parse_path("a/manifests/b/manifests/v1").expect("m"), Target::Manifest("a/manifests/b".into(), Reference::Tag("v1".into())));
        assert_eq!(parse_path("x/tags/list").expect("tags"), Target::Tags("x".into()));
        assert!(matches!(parse_path("../../etc/manifests/v1"), Err(RegistryError::NameInvalid(_))));
        assert!(matches!(parse_path("%2e%2e/manifests/v1"), Err(RegistryError::NameInvalid(_))));
        assert!(matches!(parse_path("x/manifests/a/b"), Err(RegistryError::DigestInvalid(_))));
        assert!(matches!(parse_path("x/blobs/sha256:zz"), Err(RegistryError::DigestInvalid(_))));
        assert!(matches!(parse_path("x/other"), Err(RegistryError::Unsupported(_))));
        assert!(matches!(parse_path("../x"), Err(RegistryError::NameInvalid(_))));
    }
}
