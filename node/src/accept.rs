//! Whether a device accepts a release: who signed it, whether it is newer, whether it expired.
//!
//! Clock policy: a device's clock may be wrong (no RTC battery, no NTP on a closed site). It
//! takes "now" as the later of its own clock and the newest `issued_at` it has seen in any
//! verified release, stored durably in `trust.json`. A clock that is behind therefore cannot
//! make an expired release look valid once a newer release has been seen; a clock that is ahead
//! only makes the device stricter.

use layerhop_protocol::release::PublicKey;
use layerhop_protocol::{ReleaseBody, SignedRelease};
use layerhop_store::trust::Trust;

/// Why a release was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Signature, key or shape.
    #[error("refused release: {0}")]
    Invalid(#[from] layerhop_protocol::Error),
    /// Version not newer than the trusted one.
    #[error("refused release {channel} v{version}: not newer than trusted version {trusted} (replayed or rolled back)")]
    NotNewer {
        /// Channel.
        channel: String,
        /// Offered version.
        version: u64,
        /// Trusted version.
        trusted: u64,
    },
    /// Past its expiry.
    #[error("refused release {channel} v{version}: expired at {expires_at}, now is {now}")]
    Expired {
        /// Channel.
        channel: String,
        /// Offered version.
        version: u64,
        /// Its expiry (unix seconds).
        expires_at: u64,
        /// The device's notion of now.
        now: u64,
    },
}

/// Unix seconds by the system clock.
pub fn system_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What the device takes as the current time.
pub fn trusted_now(trust: &Trust, system: u64) -> u64 {
    system.max(trust.newest_time)
}

/// Check `signed` against the pinned key and the trust state.
pub fn check(signed: &SignedRelease, pinned: &PublicKey, trust: &Trust, system: u64) -> Result<ReleaseBody, Refusal> {
    let body = signed.verify(pinned)?;
    let channel = body.channel.as_str().to_owned();
    if let Some(&trusted) = trust.versions.get(&channel)
        && body.version <= trusted
    {
        return Err(Refusal::NotNewer { channel, version: body.version, trusted });
    }
    let now = trusted_now(trust, system);
    if body.expires_at <= now {
        return Err(Refusal::Expired { channel, version: body.version, expires_at: body.expires_at, now });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use layerhop_protocol::{Channel, PublisherKey};

    fn release(key: &PublisherKey, version: u64, issued_at: u64, expires_at: u64) -> SignedRelease {
        let body = ReleaseBody {
            channel: Channel::new("models").expect("channel"),
            version,
            issued_at,
            expires_at,
            artifacts: vec![],
            images: vec![],
            priority: Default::default(),
        };
        key.sign_release(&body).expect("sign")
    }

    #[test]
    fn policy() {
        let k = PublisherKey::generate().expect("key");
        let mut trust = Trust::default();
        assert!(check(&release(&k, 1, 100, 200), &k.public(), &trust, 150).is_ok());
        assert!(matches!(check(&release(&k, 1, 100, 200), &k.public(), &trust, 250), Err(Refusal::Expired { .. })));
        trust.versions.insert("models".into(), 5);
        assert!(matches!(check(&release(&k, 5, 100, 200), &k.public(), &trust, 150), Err(Refusal::NotNewer { .. })));
        assert!(matches!(check(&release(&k, 4, 100, 200), &k.public(), &trust, 150), Err(Refusal::NotNewer { .. })));
        // A clock stuck in the past does not revive an expired release once newer time was seen.
        trust.newest_time = 300;
        assert!(matches!(check(&release(&k, 6, 100, 200), &k.public(), &trust, 10), Err(Refusal::Expired { .. })));
        let other = PublisherKey::generate().expect("key");
        assert!(matches!(check(&release(&other, 9, 100, 900), &k.public(), &trust, 150), Err(Refusal::Invalid(_))));
    }
}
