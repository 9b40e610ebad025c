//! Importing a `docker save` tarball (what `layerhop publish` reads): the outer tar's index,
//! `manifest.json`, member links, config JSON and diff_ids, and each layer through tarsplit.
//! Never panics; a failed import is an error.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::with_scratch(|store, dir| {
        let path = dir.join("image.tar");
        std::fs::write(&path, data).expect("write input");
        let _ = layerhop_store::import::import_sources(store, &[path]);
    });
});
