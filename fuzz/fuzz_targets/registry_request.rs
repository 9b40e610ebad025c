//! The registry mirror's request parsing: the raw path after `/v2/` (first line) and a `Range`
//! header (second line). Never panics; an accepted name passes the OCI grammar (no `..`, no
//! `%`, no leading `/`), and an accepted range lies inside the blob.
#![no_main]

use layerhop_node::registry::blob::parse_range;
use layerhop_node::registry::names::{self, Target};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (path, range) = text.split_once('\n').unwrap_or((&text, ""));
    if let Ok(t) = names::parse_path(path) {
        let name = match &t {
            Target::Manifest(n, _) | Target::Blob(n, _) | Target::Tags(n) => n,
        };
        assert!(names::check_name(name).is_ok(), "accepted an invalid name {name:?}");
        assert!(!name.contains("..") && !name.contains('%') && !name.starts_with('/'), "{name:?}");
        let _ = names::channel_of(name);
    }
    for size in [0, 1, 4096, u64::MAX] {
        if let Ok(Some(r)) = parse_range(range, size) {
            assert!(r.start <= r.end && r.end < size, "range {r:?} outside a blob of {size} bytes");
            let _ = r.len();
        }
    }
});
