//! `tree::decode_node` (chunk lists received from peers): the first 8 bytes are the length the
//! parent claims, the rest the node. Never panics; a node that decodes re-encodes byte for byte.
#![no_main]

use layerhop_protocol::tree;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (len, node) = data.split_at(8);
    let expected = u64::from_le_bytes(len.try_into().expect("8 bytes"));
    if let Ok(entries) = tree::decode_node(node, expected) {
        assert_eq!(tree::encode_node(&entries), node);
    }
});
