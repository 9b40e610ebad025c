//! `Columns::from_parts` on arbitrary column bytes (as a device receives them from peers): the
//! input is the 26 columns, each a little-endian u16 length and its bytes. Never panics; columns
//! it accepts join (given enough content) as documented, into a capped buffer.
#![no_main]

use layerhop_store::tarsplit::{self, Columns};
use std::io::{self, Write};

/// A writer that refuses to grow past a cap, so a tail declaring a long zero run stays cheap.
struct Capped(Vec<u8>);

impl Write for Capped {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.0.len() + b.len() > 4 << 20 {
            return Err(io::Error::other("over the fuzz cap"));
        }
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut parts = Vec::new();
    for _ in 0..Columns::names().len() {
        let n = match rest {
            [a, b, tail @ ..] => {
                rest = tail;
                usize::from(u16::from_le_bytes([*a, *b]))
            }
            _ => 0,
        };
        let n = n.min(rest.len());
        parts.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    let Ok(columns) = Columns::from_parts(parts) else { return };
    if columns.content_len() > 1 << 20 {
        return;
    }
    let mut contents = io::repeat(0x5a);
    match tarsplit::join(&columns, &mut contents, Capped(Vec::new())) {
        Ok(_) => {}
        Err(tarsplit::Error::Io(e)) if e.to_string().contains("fuzz cap") => {}
        Err(e) => panic!("columns that from_parts accepted failed to join: {e}"),
    }
});
