//! Join tokens: everything a device needs to enroll with a seed, in one pasteable string.
//!
//! `lhjoin1.` followed by base64url (no padding) of the postcard [`JoinToken`]. The token carries
//! the seed's addresses and peer id, the publisher key the device pins, the fleet key, and a
//! credential signed by the fleet key naming the device's site. Whoever holds a token can enroll
//! a device: treat it as a secret.

use crate::release::PublicKey;
use crate::{Error, PublisherKey, limits};
use base64::Engine;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "lhjoin1.";
const CREDENTIAL_DOMAIN: &[u8] = b"layerhop fleet credential v1\0";

/// A device's proof of enrollment, signed by the fleet key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// Random id of the enrolled device.
    pub device: [u8; 16],
    /// The site it belongs to.
    pub site: String,
    /// Unix seconds when it was issued.
    pub issued_at: u64,
    /// Fleet key's signature over the fields above.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

#[derive(Serialize)]
struct CredentialFields<'a> {
    device: &'a [u8; 16],
    site: &'a str,
    issued_at: u64,
}

impl Credential {
    /// Issue a credential for a new device of `site`.
    pub fn issue(fleet: &PublisherKey, site: &str, issued_at: u64) -> Result<Self, Error> {
        check_site(site)?;
        let mut device = [0u8; 16];
        getrandom::fill(&mut device).map_err(|e| Error::malformed("random source", e))?;
        let msg = postcard::to_allocvec(&CredentialFields { device: &device, site, issued_at })
            .map_err(|e| Error::malformed("credential", e))?;
        Ok(Credential { device, site: site.to_owned(), issued_at, signature: fleet.sign_raw(CREDENTIAL_DOMAIN, &msg) })
    }

    /// Check the fleet key's signature.
    pub fn verify(&self, fleet: &PublicKey) -> Result<(), Error> {
        let msg = postcard::to_allocvec(&CredentialFields { device: &self.device, site: &self.site, issued_at: self.issued_at })
            .map_err(|e| Error::malformed("credential", e))?;
        fleet.verify("credential", CREDENTIAL_DOMAIN, &msg, &self.signature)
    }
}

/// Validate a site name: 1–64 of `a-z 0-9 . _ -`.
pub fn check_site(site: &str) -> Result<(), Error> {
    crate::Channel::new(site).map(|_| ()).map_err(|_| Error::InvalidName {
        what: "site",
        value: site.chars().take(80).collect(),
        reason: "must be 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit",
    })
}

/// What `layerhop invite` prints and `layerhop init --join` reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// Multiaddrs at which devices reach the seed.
    pub seed_addrs: Vec<String>,
    /// The seed's libp2p peer id, as bytes.
    #[serde(with = "serde_bytes")]
    pub seed_peer: Vec<u8>,
    /// The key that signs releases; the device pins it.
    pub publisher: PublicKey,
    /// The key that signs credentials.
    pub fleet: PublicKey,
    /// The device's enrollment.
    pub credential: Credential,
}

impl JoinToken {
    /// The pasteable text form.
    pub fn encode(&self) -> String {
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        format!("{PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Parse and check a token's shape and credential signature.
    pub fn decode(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        Error::check_len("join token", text.len(), limits::MAX_TOKEN)?;
        let body = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| Error::malformed("join token", format!("does not start with {PREFIX:?}")))?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| Error::malformed("join token", e))?;
        let t: JoinToken = crate::wire::from_exact(&bytes, "join token")?;
        if t.seed_addrs.is_empty() || t.seed_addrs.len() > 16 {
            return Err(Error::malformed("join token", "must list 1 to 16 seed addresses"));
        }
        check_site(&t.credential.site)?;
        t.credential.verify(&t.fleet)?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_and_tamper() {
        let fleet = PublisherKey::generate().expect("key");
        let publisher = PublisherKey::generate().expect("key");
        let t = JoinToken {
            seed_addrs: vec!["/ip4/127.0.0.1/tcp/7410".into()],
            seed_peer: vec![1, 2, 3],
            publisher: publisher.public(),
            fleet: fleet.public(),
            credential: Credential::issue(&fleet, "depot-12", 5).expect("cred"),
        };
        let text = t.encode();
        assert_eq!(JoinToken::decode(&text).expect("decode"), t);
        let mut forged = t.clone();
        forged.credential.site = "depot-13".into();
        assert!(matches!(JoinToken::decode(&forged.encode()), Err(Error::BadSignature { .. })));
        assert!(JoinToken::decode("lhjoin1.!!!").is_err());
        assert!(JoinToken::decode("hello").is_err());
    }
}
