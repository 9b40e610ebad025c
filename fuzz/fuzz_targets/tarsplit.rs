//! `tarsplit::split` on arbitrary bytes (an image layer as a publisher hands it over). Never
//! panics; whatever it accepts joins back byte for byte, and its columns pass `from_parts`.
#![no_main]

use layerhop_store::tarsplit::{self, Columns};
use std::io::Read;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut contents = Vec::new();
    let split = tarsplit::split(data, |_, file| file.read_to_end(&mut contents).map(|_| ()));
    let Ok(columns) = split else { return };
    assert_eq!(columns.content_len(), contents.len() as u64);
    let mut out = Vec::new();
    tarsplit::join(&columns, &mut &contents[..], &mut out).expect("split's columns join");
    assert!(out == data, "join(split(x)) != x");
    let again = Columns::from_parts(columns.parts().to_vec()).expect("split's columns validate");
    assert_eq!(again, columns);
});
