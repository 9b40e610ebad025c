//! Signed releases: `SignedRelease::decode` of the wire/disk form (first byte even), and the
//! body decoder behind `peek`/`verify` on raw body bytes (first byte odd), then `validate`.
//! Nothing panics; a decoded release re-encodes to itself; a body is only verified with a key
//! the fuzzer does not hold, so verification must fail unless the corpus carries its signature.
#![no_main]

use layerhop_protocol::{PublisherKey, SignedRelease};
use std::sync::OnceLock;

fn key() -> &'static PublisherKey {
    static KEY: OnceLock<PublisherKey> = OnceLock::new();
    // The seed corpus signs with this fixed key, so valid signatures are reachable too.
    KEY.get_or_init(|| PublisherKey::from_bytes([7; 32]))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let signed = if mode & 1 == 0 {
        let Ok(s) = SignedRelease::decode(rest) else { return };
        assert_eq!(SignedRelease::decode(&s.encode()).expect("a decoded release re-decodes"), s);
        s
    } else {
        SignedRelease { body: rest.to_vec(), key: key().public(), signature: vec![0; 64] }
    };
    if let Ok(body) = signed.peek()
        && body.validate().is_ok()
    {
        let _ = body.stored_bytes();
    }
    if let Ok(body) = signed.verify(&key().public()) {
        let _ = body.stored_bytes();
    }
});
