//! The joiner: replays the columns entry by entry. The same decoder also
//! validates columns in `Columns::from_parts`, with a sink that only counts.

use std::io::{self, BufWriter, Read, Write};

use super::format::{
    BLOCK, CHKSUM_FIELD, CHKSUM_FORMATS, ColReader, FLAG_CHKSUM_MASK, FLAG_KNOWN, FLAG_PAD_ZERO,
    FLAG_SIZE_CANONICAL, GNU_MAGIC, GNU_PREFIX_FIELD, GNU_TIMES_FIELD, Kind, MAGIC_FIELD,
    PREFIX_FIELD, SIMPLE_FIELDS, SIZE_FIELD, TYPEFLAG_AT, canonical_size, decode_pax,
    format_chksum, header_sum, pad_len,
};
use super::{Columns, Error, FORMAT_VERSION, MAX_COLUMN_BYTES, MAX_META_RECORD, NAMES, col};

/// Where decoded archive pieces go.
pub(super) trait Sink {
    fn bytes(&mut self, b: &[u8]) -> Result<(), Error>;
    fn zeros(&mut self, n: u64) -> Result<(), Error>;
    /// `n` bytes of regular file content, taken from the content stream.
    fn content(&mut self, n: u64) -> Result<(), Error>;
}

pub(super) struct Summary {
    pub(super) content_len: u64,
    pub(super) entry_count: u64,
}

/// A sink that only checks that the content length adds up.
#[derive(Default)]
pub(super) struct Measure {
    content: u64,
}

impl Sink for Measure {
    fn bytes(&mut self, _: &[u8]) -> Result<(), Error> {
        Ok(())
    }
    fn zeros(&mut self, _: u64) -> Result<(), Error> {
        Ok(())
    }
    fn content(&mut self, n: u64) -> Result<(), Error> {
        self.content = self.content.checked_add(n).ok_or(Error::MalformedColumns {
            column: NAMES[col::CLEN],
            reason: "total content length overflows",
        })?;
        Ok(())
    }
}

/// Decode all columns into `sink`; every column must be consumed exactly.
pub(super) fn decode(parts: &[Vec<u8>], sink: &mut impl Sink) -> Result<Summary, Error> {
    if parts.len() != col::COUNT {
        return Err(Error::ColumnCount {
            expected: col::COUNT,
            found: parts.len(),
        });
    }
    let mut c: Vec<ColReader<'_>> = parts
        .iter()
        .zip(NAMES)
        .map(|(p, name)| ColReader::new(name, p))
        .collect();

    if c[col::VERSION].byte()? != FORMAT_VERSION {
        return Err(c[col::VERSION].err("unsupported format version"));
    }
    let mut content_len = 0u64;
    let mut entry_count = 0u64;
    let mut pax_buf = Vec::new();
    while !c[col::TYPEFLAG].is_empty() {
        let flags = c[col::FLAGS].byte()?;
        let chksum_format = flags & FLAG_CHKSUM_MASK;
        if flags & !FLAG_KNOWN != 0 || chksum_format > CHKSUM_FORMATS {
            return Err(c[col::FLAGS].err("unknown flag bits"));
        }

        let mut h = [0u8; BLOCK];
        for f in &SIMPLE_FIELDS {
            let dst = &mut h[f.start..f.end];
            if f.trimmed {
                c[f.col].trimmed_into(dst)?;
            } else {
                dst.copy_from_slice(c[f.col].bytes(dst.len())?);
            }
        }
        if h[MAGIC_FIELD] == GNU_MAGIC[..] {
            c[col::GNUTIMES].trimmed_into(&mut h[GNU_TIMES_FIELD])?;
            c[col::PREFIX].trimmed_into(&mut h[GNU_PREFIX_FIELD])?;
        } else {
            c[col::PREFIX].trimmed_into(&mut h[PREFIX_FIELD])?;
        }

        let kind = Kind::of(h[TYPEFLAG_AT]);
        let sparse_map = match kind {
            Kind::Sparse => c[col::DATA].prefixed(MAX_META_RECORD)?,
            _ => &[],
        };
        // `None` means the data is file content from the content stream.
        let data: Option<&[u8]> = match kind {
            Kind::Regular | Kind::Sparse => None,
            Kind::PaxLocal | Kind::PaxGlobal => {
                pax_buf.clear();
                let (pax, rest) = c[col::PAX..].split_at_mut(1);
                decode_pax(&mut pax[0], &mut rest[0], &mut pax_buf, MAX_META_RECORD)?;
                Some(&pax_buf)
            }
            Kind::LongName => Some(c[col::LONGNAME].prefixed(MAX_META_RECORD)?),
            Kind::Other => Some(c[col::DATA].prefixed(MAX_META_RECORD)?),
        };
        let data_len = match data {
            Some(d) => d.len() as u64,
            None => c[col::CLEN].varint()?,
        };

        if flags & FLAG_SIZE_CANONICAL != 0 {
            h[SIZE_FIELD].copy_from_slice(&canonical_size(data_len));
        } else {
            h[SIZE_FIELD].copy_from_slice(c[col::SIZE].bytes(SIZE_FIELD.len())?);
        }
        if chksum_format == 0 {
            h[CHKSUM_FIELD].copy_from_slice(c[col::CHKSUM].bytes(CHKSUM_FIELD.len())?);
        } else {
            let formatted = format_chksum(chksum_format, header_sum(&h))
                .ok_or_else(|| c[col::FLAGS].err("checksum does not fit its format"))?;
            h[CHKSUM_FIELD].copy_from_slice(&formatted);
        }

        sink.bytes(&h)?;
        sink.bytes(sparse_map)?;
        match data {
            Some(d) => sink.bytes(d)?,
            None => {
                sink.content(data_len)?;
                content_len = content_len
                    .checked_add(data_len)
                    .ok_or_else(|| c[col::CLEN].err("total content length overflows"))?;
            }
        }
        let pad = pad_len(data_len);
        if flags & FLAG_PAD_ZERO != 0 {
            sink.zeros(pad as u64)?;
        } else {
            sink.bytes(c[col::PADDING].bytes(pad)?)?;
        }
        entry_count += 1;
    }

    if !c[col::TAIL].is_empty() {
        let zeros = c[col::TAIL].varint()?;
        if zeros > MAX_COLUMN_BYTES as u64 {
            return Err(c[col::TAIL].err("zero run exceeds the column limit"));
        }
        sink.zeros(zeros)?;
        let raw = c[col::TAIL].rest();
        sink.bytes(raw)?;
    }
    if let Some(left) = c.iter().find(|r| !r.is_empty()) {
        return Err(left.err("unconsumed trailing bytes"));
    }
    Ok(Summary {
        content_len,
        entry_count,
    })
}

struct WriteSink<'c, W: Write> {
    out: BufWriter<W>,
    contents: &'c mut dyn Read,
    written: u64,
    content_read: u64,
    content_expected: u64,
}

static ZEROS: [u8; 8192] = [0; 8192];

impl<W: Write> Sink for WriteSink<'_, W> {
    fn bytes(&mut self, b: &[u8]) -> Result<(), Error> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn zeros(&mut self, mut n: u64) -> Result<(), Error> {
        while n > 0 {
            let k = usize::try_from(n).unwrap_or(usize::MAX).min(ZEROS.len());
            self.bytes(&ZEROS[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    fn content(&mut self, n: u64) -> Result<(), Error> {
        let copied = io::copy(&mut Read::take(&mut *self.contents, n), &mut self.out)?;
        self.written += copied;
        self.content_read += copied;
        if copied < n {
            return Err(Error::ContentShort {
                expected: self.content_expected,
                got: self.content_read,
            });
        }
        Ok(())
    }
}

pub(super) fn join<W: Write>(
    columns: &Columns,
    contents: &mut dyn Read,
    out: W,
) -> Result<u64, Error> {
    let mut sink = WriteSink {
        out: BufWriter::with_capacity(64 * 1024, out),
        contents,
        written: 0,
        content_read: 0,
        content_expected: columns.content_len,
    };
    decode(&columns.parts, &mut sink)?;
    sink.out.flush()?;
    Ok(sink.written)
}
