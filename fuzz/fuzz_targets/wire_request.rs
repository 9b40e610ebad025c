//! `Request::decode` on arbitrary bytes: never panics, and whatever decodes re-encodes within
//! the bound and decodes to itself.
#![no_main]

use layerhop_protocol::wire::Request;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Request::decode(data) {
        let again = r.encode().expect("a decoded request re-encodes within the bound");
        assert_eq!(Request::decode(&again).expect("a re-encoded request decodes"), r);
    }
});
