//! `Response::decode` on arbitrary bytes, then every chunk reply through the node's bounded
//! zstd decompression: nothing panics, nothing decompresses past the chunk limit, and whatever
//! decodes round-trips.
#![no_main]

use layerhop_protocol::limits;
use layerhop_protocol::wire::Response;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(r) = Response::decode(data) else { return };
    let again = r.encode().expect("a decoded response re-encodes within the bound");
    assert_eq!(Response::decode(&again).expect("a re-encoded response decodes"), r);
    if let Response::Chunks(replies) = r {
        for reply in replies {
            if let Some(Ok(bytes)) = layerhop_node::codec::decompress(reply) {
                assert!(bytes.len() <= limits::MAX_CHUNK, "a chunk reply expanded to {} bytes", bytes.len());
            }
        }
    }
});
