//! Byte-level conventions shared by the splitter and the joiner: where each
//! header field lives, the checksum and size formattings we can recompute,
//! the varint/length-prefix encodings used inside columns, and pax records.
//!
//! Everything that `split` writes must be decoded by `join` with exactly the
//! same rules, so both sides take these definitions from here.

use std::ops::Range;

use super::{Error, col};

/// Size of a tar block; headers, data padding and end-of-archive markers all
/// come in units of it.
pub(super) const BLOCK: usize = 512;

pub(super) const SIZE_FIELD: Range<usize> = 124..136;
pub(super) const CHKSUM_FIELD: Range<usize> = 148..156;
pub(super) const TYPEFLAG_AT: usize = 156;
pub(super) const MAGIC_FIELD: Range<usize> = 257..265;
/// Old GNU headers put atime/ctime (and sparse data) where ustar has `prefix`.
pub(super) const GNU_MAGIC: &[u8; 8] = b"ustar  \0";
pub(super) const GNU_TIMES_FIELD: Range<usize> = 345..369;
pub(super) const GNU_PREFIX_FIELD: Range<usize> = 369..500;
pub(super) const PREFIX_FIELD: Range<usize> = 345..500;
/// Old GNU sparse headers: "more sparse map blocks follow" flags, in the
/// header and in each extension block.
pub(super) const GNU_IS_EXTENDED_AT: usize = 482;
pub(super) const GNU_EXT_IS_EXTENDED_AT: usize = 504;

/// A header field copied to its own column unchanged.
pub(super) struct Field {
    pub(super) col: usize,
    pub(super) start: usize,
    pub(super) end: usize,
    /// Text fields are mostly NUL padding; storing only the significant
    /// prefix keeps the column dense for the compressor.
    pub(super) trimmed: bool,
}

const fn field(col: usize, start: usize, end: usize, trimmed: bool) -> Field {
    Field {
        col,
        start,
        end,
        trimmed,
    }
}

/// Fields handled uniformly. `size`, `chksum` and `prefix` are missing on
/// purpose: they are recomputed or laid out depending on other fields.
pub(super) const SIMPLE_FIELDS: [Field; 13] = [
    field(col::NAME, 0, 100, true),
    field(col::MODE, 100, 108, false),
    field(col::UID, 108, 116, false),
    field(col::GID, 116, 124, false),
    field(col::MTIME, 136, 148, false),
    field(col::TYPEFLAG, 156, 157, false),
    field(col::LINKNAME, 157, 257, true),
    field(col::MAGIC, 257, 265, false),
    field(col::UNAME, 265, 297, true),
    field(col::GNAME, 297, 329, true),
    field(col::DEVMAJOR, 329, 337, false),
    field(col::DEVMINOR, 337, 345, false),
    field(col::PAD, 500, 512, true),
];

/// Per-entry flag bits (one byte per entry in the `flags` column).
pub(super) const FLAG_CHKSUM_MASK: u8 = 0b0000_0111;
pub(super) const FLAG_SIZE_CANONICAL: u8 = 0b0000_1000;
pub(super) const FLAG_PAD_ZERO: u8 = 0b0001_0000;
pub(super) const FLAG_KNOWN: u8 = FLAG_CHKSUM_MASK | FLAG_SIZE_CANONICAL | FLAG_PAD_ZERO;

/// Number of checksum formattings `format_chksum` knows (ids 1..=this).
pub(super) const CHKSUM_FORMATS: u8 = 6;

/// How the data that follows a header is stored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    /// File content: goes to the content stream, not to the columns.
    Regular,
    /// GNU sparse file: content like `Regular`, but old-GNU headers may be
    /// followed by extension blocks holding more of the sparse map.
    Sparse,
    PaxLocal,
    PaxGlobal,
    /// GNU `L`/`K` long name or long link name.
    LongName,
    Other,
}

impl Kind {
    pub(super) fn of(typeflag: u8) -> Kind {
        match typeflag {
            b'0' | b'\0' | b'7' => Kind::Regular,
            b'S' => Kind::Sparse,
            b'x' => Kind::PaxLocal,
            b'g' => Kind::PaxGlobal,
            b'L' | b'K' => Kind::LongName,
            _ => Kind::Other,
        }
    }

    /// Extension headers describe the next real entry; a pending pax `size`
    /// skips over them and applies to that entry.
    pub(super) fn is_extension(self) -> bool {
        matches!(self, Kind::PaxLocal | Kind::PaxGlobal | Kind::LongName)
    }

    pub(super) fn what(self) -> &'static str {
        match self {
            Kind::Regular => "file content",
            Kind::Sparse => "GNU sparse map",
            Kind::PaxLocal | Kind::PaxGlobal => "pax header data",
            Kind::LongName => "GNU long name data",
            Kind::Other => "non-file entry data",
        }
    }
}

/// Bytes of zero padding after `len` data bytes.
pub(super) fn pad_len(len: u64) -> usize {
    // The value is < 512, so the cast cannot truncate.
    ((BLOCK as u64 - len % BLOCK as u64) % BLOCK as u64) as usize
}

/// Write `v` in octal right-aligned into `dst`, left-filled with `fill`.
/// Returns false when it does not fit.
pub(super) fn put_octal(dst: &mut [u8], mut v: u64, fill: u8) -> bool {
    let mut i = dst.len();
    while i > 0 {
        i -= 1;
        dst[i] = b'0' + (v & 7) as u8;
        v >>= 3;
        if v == 0 {
            dst[..i].fill(fill);
            return true;
        }
    }
    false
}

/// The header checksum: byte sum with the checksum field read as spaces.
pub(super) fn header_sum(h: &[u8; BLOCK]) -> u32 {
    h.iter()
        .enumerate()
        .map(|(i, &b)| {
            if CHKSUM_FIELD.contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(b)
            }
        })
        .sum()
}

/// The checksum field as written by one of the writers we know, so a
/// matching field can be stored as a format id instead of bytes that change
/// whenever any other header byte (e.g. the mtime) changes.
pub(super) fn format_chksum(fmt: u8, sum: u32) -> Option<[u8; 8]> {
    let mut f = [0u8; 8];
    let s = u64::from(sum);
    let fits = match fmt {
        // GNU tar, Go archive/tar, libarchive, Python tarfile: "%06o\0 ".
        1 => {
            f[7] = b' ';
            put_octal(&mut f[..6], s, b'0')
        }
        // The Rust tar crate: "%07o\0".
        2 => put_octal(&mut f[..7], s, b'0'),
        3 => {
            f[6] = b' ';
            put_octal(&mut f[..6], s, b'0')
        }
        4 => {
            f[7] = b' ';
            put_octal(&mut f[..7], s, b'0')
        }
        5 => {
            f[6] = b' ';
            f[7] = b' ';
            put_octal(&mut f[..6], s, b'0')
        }
        // Old Unix tars pad with spaces instead of zeros.
        6 => {
            f[7] = b' ';
            put_octal(&mut f[..6], s, b' ')
        }
        _ => false,
    };
    fits.then_some(f)
}

/// The size field every common writer produces for `len`: 11 octal digits
/// and a NUL, or GNU base-256 once octal no longer fits (>= 8 GiB).
pub(super) fn canonical_size(len: u64) -> [u8; 12] {
    let mut f = [0u8; 12];
    if !put_octal(&mut f[..11], len, b'0') {
        f = [0u8; 12];
        f[4..].copy_from_slice(&len.to_be_bytes());
        f[0] = 0x80;
    }
    f
}

/// Parse a numeric header field: octal text (leading/trailing blanks, NUL
/// terminated) or GNU base-256 (high bit of the first byte set). `None` for
/// anything else, for negative base-256 values, and on overflow.
pub(super) fn parse_size(f: &[u8]) -> Option<u64> {
    let (&first, rest) = f.split_first()?;
    if first & 0x80 != 0 {
        if first & 0x40 != 0 {
            return None;
        }
        let mut v = u64::from(first & 0x3f);
        for &b in rest {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
    let digits = f[..end].trim_ascii();
    if digits.is_empty() {
        return None;
    }
    let mut v = 0u64;
    for &b in digits {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(super) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Store a NUL-padded field without its trailing NULs.
pub(super) fn put_trimmed(out: &mut Vec<u8>, f: &[u8]) {
    let len = f.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    put_bytes(out, &f[..len]);
}

/// Cursor over one column during decoding; every read is bounds-checked and
/// failures name the column.
pub(super) struct ColReader<'a> {
    name: &'static str,
    buf: &'a [u8],
}

impl<'a> ColReader<'a> {
    pub(super) fn new(name: &'static str, buf: &'a [u8]) -> Self {
        ColReader { name, buf }
    }

    pub(super) fn err(&self, reason: &'static str) -> Error {
        Error::MalformedColumns {
            column: self.name,
            reason,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(super) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(super) fn bytes(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.buf.len() {
            return Err(self.err("column ends early"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(super) fn byte(&mut self) -> Result<u8, Error> {
        Ok(self.bytes(1)?[0])
    }

    pub(super) fn varint(&mut self) -> Result<u64, Error> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let low = u64::from(b & 0x7f);
            if shift == 63 && low > 1 {
                return Err(self.err("varint overflows u64"));
            }
            v |= low << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint too long"))
    }

    /// A length-prefixed byte string of at most `max` bytes.
    pub(super) fn prefixed(&mut self, max: usize) -> Result<&'a [u8], Error> {
        let len = self.varint()?;
        match usize::try_from(len) {
            Ok(len) if len <= max => self.bytes(len),
            _ => Err(self.err("length prefix too large")),
        }
    }

    /// Fill `dst` (all zeros on entry) from a trimmed field.
    pub(super) fn trimmed_into(&mut self, dst: &mut [u8]) -> Result<(), Error> {
        let b = self.prefixed(dst.len())?;
        dst[..b.len()].copy_from_slice(b);
        Ok(())
    }
}

fn decimal_digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Length of the shortest self-consistent record "<len> <kv>\n" (the length
/// counts its own digits, so a few lengths admit two spellings; writers use
/// the shortest).
pub(super) fn pax_record_len(kv_len: usize) -> usize {
    let mut d = 1;
    loop {
        let len = kv_len.saturating_add(d + 2);
        if decimal_digits(len) <= d {
            return len;
        }
        d += 1;
    }
}

/// One pax record at the start of `data`.
pub(super) struct PaxRecord<'a> {
    /// The whole record, length prefix to newline.
    pub(super) raw: &'a [u8],
    /// "key=value" (or whatever sits between the space and the newline).
    pub(super) kv: &'a [u8],
    /// True when re-serialising `kv` reproduces `raw` exactly.
    pub(super) canonical: bool,
}

pub(super) fn pax_record(data: &[u8]) -> Option<PaxRecord<'_>> {
    let sp = data.iter().take(21).position(|&b| b == b' ')?;
    let digits = &data[..sp];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut len = 0usize;
    for &b in digits {
        len = len.checked_mul(10)?.checked_add(usize::from(b - b'0'))?;
    }
    if len < sp + 2 || len > data.len() || data[len - 1] != b'\n' {
        return None;
    }
    let kv = &data[sp + 1..len - 1];
    let canonical = sp == decimal_digits(len) && len == pax_record_len(kv.len());
    Some(PaxRecord {
        raw: &data[..len],
        kv,
        canonical,
    })
}

/// Append the canonical record for key/value given as concatenated parts.
pub(super) fn put_pax_record(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let kv_len = parts.iter().map(|p| p.len()).sum();
    out.extend_from_slice(pax_record_len(kv_len).to_string().as_bytes());
    out.push(b' ');
    for p in parts {
        out.extend_from_slice(p);
    }
    out.push(b'\n');
}

/// Keys whose values change on every rebuild; they get their own column so
/// the rest of the pax data stays byte-identical.
pub(super) fn is_time_key(key: &[u8]) -> bool {
    matches!(key, b"mtime" | b"atime" | b"ctime")
}

/// What a local pax header says about the next entry's data length.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum PaxSize {
    Absent,
    Size(u64),
    /// A `size` record we cannot interpret: the next entry's extent is
    /// unknown, so the splitter stops structuring the archive there.
    Invalid,
}

/// The last `size` record among the well-formed leading records of `data`.
pub(super) fn pax_size(mut data: &[u8]) -> PaxSize {
    let mut found = PaxSize::Absent;
    while let Some(rec) = pax_record(data) {
        data = &data[rec.raw.len()..];
        if let Some(value) = rec.kv.strip_prefix(b"size=") {
            found = std::str::from_utf8(value)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .map_or(PaxSize::Invalid, PaxSize::Size);
        }
    }
    found
}

/// Encode pax data: well-formed records are stored without their length
/// prefixes (those depend on value lengths) and time values are diverted to
/// `times`; anything malformed is stored raw.
pub(super) fn encode_pax(data: &[u8], pax: &mut Vec<u8>, times: &mut Vec<u8>) {
    let mut records = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        match pax_record(rest) {
            Some(rec) => {
                rest = &rest[rec.raw.len()..];
                records.push(rec);
            }
            None => {
                pax.push(PAX_RAW);
                put_bytes(pax, data);
                return;
            }
        }
    }
    pax.push(PAX_RECORDS);
    put_varint(pax, records.len() as u64);
    for rec in records {
        let eq = rec.kv.iter().position(|&b| b == b'=');
        match eq {
            Some(eq) if rec.canonical && is_time_key(&rec.kv[..eq]) => {
                pax.push(REC_TIME);
                put_bytes(pax, &rec.kv[..eq]);
                put_bytes(times, &rec.kv[eq + 1..]);
            }
            _ if rec.canonical => {
                pax.push(REC_KV);
                put_bytes(pax, rec.kv);
            }
            _ => {
                pax.push(REC_RAW);
                put_bytes(pax, rec.raw);
            }
        }
    }
}

const PAX_RAW: u8 = 0;
const PAX_RECORDS: u8 = 1;
const REC_KV: u8 = 0;
const REC_TIME: u8 = 1;
const REC_RAW: u8 = 2;

/// Inverse of `encode_pax`, appending to `out`, which never grows past
/// `max` (plus one record) however the columns were mangled.
pub(super) fn decode_pax(
    pax: &mut ColReader<'_>,
    times: &mut ColReader<'_>,
    out: &mut Vec<u8>,
    max: usize,
) -> Result<(), Error> {
    match pax.byte()? {
        PAX_RAW => out.extend_from_slice(pax.prefixed(max)?),
        PAX_RECORDS => {
            let count = pax.varint()?;
            for _ in 0..count {
                match pax.byte()? {
                    REC_KV => put_pax_record(out, &[pax.prefixed(max)?]),
                    REC_TIME => {
                        let key = pax.prefixed(max)?;
                        let value = times.prefixed(max)?;
                        put_pax_record(out, &[key, b"=", value]);
                    }
                    REC_RAW => out.extend_from_slice(pax.prefixed(max)?),
                    _ => return Err(pax.err("unknown pax record kind")),
                }
                if out.len() > max {
                    return Err(pax.err("pax data exceeds the record limit"));
                }
            }
        }
        _ => return Err(pax.err("unknown pax encoding")),
    }
    Ok(())
}
