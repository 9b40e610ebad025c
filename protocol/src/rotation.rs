//! Publisher key rotation: a new release key is trusted only through a statement signed by the
//! key it replaces.
//!
//! A [`SignedRotation`] says "key `old` hands over to key `new`, step `seq`", signed by `old`.
//! A device pins one key at enrollment and follows the chain of statements from it
//! ([`keys`]): the last key of the chain signs new releases; the earlier ones only vouch for
//! releases the device already accepted while they were current. A key that appears in no
//! statement signed by a trusted key is never trusted, however validly it signs.

use crate::release::PublicKey;
use crate::{Error, PublisherKey, limits};
use serde::{Deserialize, Serialize};

const ROTATION_DOMAIN: &[u8] = b"layerhop key rotation v1\0";

/// What a rotation statement says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// 1 for the first rotation away from the original key, then one more each time.
    pub seq: u64,
    /// The key handing over (it signs the statement).
    pub old: PublicKey,
    /// The key taking over.
    pub new: PublicKey,
    /// Unix seconds when it was signed.
    pub issued_at: u64,
}

/// A [`Rotation`] with the old key's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRotation {
    /// The statement.
    pub rotation: Rotation,
    /// `rotation.old`'s signature over a domain tag and the postcard bytes of `rotation`.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl SignedRotation {
    /// `old` hands over to `new` at step `seq`.
    pub fn sign(old: &PublisherKey, new: PublicKey, seq: u64, issued_at: u64) -> Result<Self, Error> {
        let rotation = Rotation { seq, old: old.public(), new, issued_at };
        let msg = postcard::to_allocvec(&rotation).map_err(|e| Error::malformed("rotation", e))?;
        Ok(SignedRotation { signature: old.sign_raw(ROTATION_DOMAIN, &msg), rotation })
    }

    /// Check the old key's signature.
    pub fn verify(&self) -> Result<(), Error> {
        let msg = postcard::to_allocvec(&self.rotation).map_err(|e| Error::malformed("rotation", e))?;
        self.rotation.old.verify("key rotation", ROTATION_DOMAIN, &msg, &self.signature)
    }
}

/// The keys a device that pinned `pinned` trusts, oldest first, following `chain` from the
/// statement signed by `pinned` (a device enrolled after some rotations pins a later key and
/// skips the statements before it). The last key is the one that signs new releases.
///
/// Refuses a chain that is too long, that never names `pinned`, whose steps do not link
/// (each statement signed by the previous statement's new key, `seq` one more), or with a bad
/// signature.
pub fn keys(pinned: &PublicKey, chain: &[SignedRotation]) -> Result<Vec<PublicKey>, Error> {
    Error::check_len("rotation chain", chain.len(), limits::MAX_ROTATIONS)?;
    let mut out = vec![*pinned];
    let start = match chain.iter().position(|s| s.rotation.old == *pinned) {
        Some(i) => i,
        None if chain.is_empty() || chain.iter().any(|s| s.rotation.new == *pinned) => return Ok(out),
        None => return Err(Error::malformed("rotation chain", "it does not include the pinned publisher key")),
    };
    let first = chain[start].rotation.seq;
    for (seq, s) in (first..).zip(&chain[start..]) {
        let current = out[out.len() - 1];
        if s.rotation.old != current || s.rotation.seq != seq {
            return Err(Error::malformed("rotation chain", format!("step {} does not follow from the key before it", s.rotation.seq)));
        }
        s.verify()?;
        if out.contains(&s.rotation.new) {
            return Err(Error::malformed("rotation chain", "a key comes back"));
        }
        out.push(s.rotation.new);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_link_from_the_pinned_key() {
        let k0 = PublisherKey::generate().expect("key");
        let k1 = PublisherKey::generate().expect("key");
        let k2 = PublisherKey::generate().expect("key");
        let chain = vec![
            SignedRotation::sign(&k0, k1.public(), 1, 10).expect("sign"),
            SignedRotation::sign(&k1, k2.public(), 2, 20).expect("sign"),
        ];
        assert_eq!(keys(&k0.public(), &chain).expect("keys"), vec![k0.public(), k1.public(), k2.public()]);
        // A device enrolled after the first rotation pinned k1.
        assert_eq!(keys(&k1.public(), &chain).expect("keys"), vec![k1.public(), k2.public()]);
        assert_eq!(keys(&k2.public(), &chain).expect("keys"), vec![k2.public()]);
        assert_eq!(keys(&k0.public(), &[]).expect("keys"), vec![k0.public()]);

        // A statement signed by a key that was never rotated in does not link.
        let stranger = PublisherKey::generate().expect("key");
        let forged = vec![SignedRotation::sign(&stranger, k2.public(), 1, 10).expect("sign")];
        assert!(keys(&k0.public(), &forged).is_err());
        // A statement naming the right old key but signed by another does not verify.
        let mut bad = SignedRotation::sign(&stranger, k1.public(), 1, 10).expect("sign");
        bad.rotation.old = k0.public();
        assert!(matches!(keys(&k0.public(), &[bad]), Err(Error::BadSignature { .. })));
        // Steps out of order.
        let skipped = vec![chain[1].clone()];
        assert_eq!(keys(&k1.public(), &skipped).expect("keys"), vec![k1.public(), k2.public()]);
        assert!(keys(&k0.public(), &skipped).is_err());
        let too_long = vec![chain[0].clone(); limits::MAX_ROTATIONS + 1];
        assert!(matches!(keys(&k0.public(), &too_long), Err(Error::TooLarge { .. })));
    }
}
