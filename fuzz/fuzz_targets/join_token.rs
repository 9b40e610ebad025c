//! `JoinToken::decode`: the pasted text as given (first byte even), or arbitrary bytes behind
//! the `lhjoin1.` prefix and base64 (first byte odd), so the fuzzer reaches the postcard
//! decoder and the credential check. Never panics; a token that decodes round-trips.
#![no_main]

use base64::Engine;
use layerhop_protocol::token::JoinToken;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let text = if mode & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        format!("lhjoin1.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rest))
    };
    if let Ok(t) = JoinToken::decode(&text) {
        assert_eq!(JoinToken::decode(&t.encode()).expect("a decoded token re-decodes"), t);
    }
});
