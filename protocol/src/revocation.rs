//! Revoked fleet credentials: the list the seed signs with the fleet key and devices enforce.
//!
//! A device is named by its credential id (the random `device` id of its [`Credential`],
//! printed by `layerhop invite` as the token id) or by its libp2p peer id. The list is
//! versioned (a device keeps the highest version it verified, so an old list cannot be
//! replayed to un-revoke a device) and bounded ([`limits::MAX_REVOKED`] entries).
//!
//! [`Credential`]: crate::token::Credential

use crate::release::PublicKey;
use crate::{Error, PublisherKey, limits};
use serde::{Deserialize, Serialize};

const REVOCATION_DOMAIN: &[u8] = b"layerhop revocation list v1\0";

/// The revoked devices.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    /// Grows with every change.
    pub version: u64,
    /// Unix seconds when it was signed.
    pub issued_at: u64,
    /// Revoked credential ids.
    pub devices: Vec<[u8; 16]>,
    /// Revoked libp2p peer ids, as bytes.
    pub peers: Vec<Vec<u8>>,
}

impl RevocationList {
    /// Whether a peer with this id and credential id is revoked.
    pub fn revokes(&self, peer: &[u8], device: Option<&[u8; 16]>) -> bool {
        self.peers.iter().any(|p| p == peer) || device.is_some_and(|d| self.devices.contains(d))
    }

    fn check(&self) -> Result<(), Error> {
        Error::check_len("revocation list", self.devices.len() + self.peers.len(), limits::MAX_REVOKED)?;
        for p in &self.peers {
            Error::check_len("peer id", p.len(), 64)?;
        }
        Ok(())
    }

    /// Check the bounds and sign with the fleet key.
    pub fn sign(&self, fleet: &PublisherKey) -> Result<SignedRevocations, Error> {
        self.check()?;
        let body = postcard::to_allocvec(self).map_err(|e| Error::malformed("revocation list", e))?;
        Ok(SignedRevocations { signature: fleet.sign_raw(REVOCATION_DOMAIN, &body), body })
    }
}

/// A [`RevocationList`] as signed by the fleet key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRevocations {
    /// The postcard bytes of the list, as signed.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The fleet key's signature over a domain tag and `body`.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl SignedRevocations {
    /// The version the body claims, without checking the signature: only to skip verifying a
    /// list that would not be newer anyway.
    pub fn claimed_version(&self) -> Option<u64> {
        postcard::take_from_bytes::<u64>(&self.body).ok().map(|(v, _)| v)
    }

    /// Check the fleet key's signature and the list's bounds; return the list.
    pub fn verify(&self, fleet: &PublicKey) -> Result<RevocationList, Error> {
        Error::check_len("revocation list", self.body.len(), limits::MAX_REVOKED * 72 + 64)?;
        fleet.verify("revocation list", REVOCATION_DOMAIN, &self.body, &self.signature)?;
        let list: RevocationList = crate::wire::from_exact(&self.body, "revocation list")?;
        list.check()?;
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_lists_verify_and_tampering_is_caught() {
        let fleet = PublisherKey::generate().expect("key");
        let list = RevocationList { version: 3, issued_at: 9, devices: vec![[7; 16]], peers: vec![vec![1, 2, 3]] };
        let signed = list.sign(&fleet).expect("sign");
        assert_eq!(signed.verify(&fleet.public()).expect("verify"), list);
        assert_eq!(signed.claimed_version(), Some(3));
        assert!(list.revokes(&[1, 2, 3], None));
        assert!(list.revokes(&[9], Some(&[7; 16])));
        assert!(!list.revokes(&[9], Some(&[8; 16])));
        let other = PublisherKey::generate().expect("key");
        assert!(matches!(signed.verify(&other.public()), Err(Error::BadSignature { .. })));
        let mut tampered = signed.clone();
        tampered.body[0] ^= 1;
        assert!(tampered.verify(&fleet.public()).is_err());
        let huge = RevocationList { devices: vec![[0; 16]; limits::MAX_REVOKED + 1], ..Default::default() };
        assert!(matches!(huge.sign(&fleet), Err(Error::TooLarge { .. })));
    }
}
