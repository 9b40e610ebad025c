//! The splitter: walks the archive block by block and appends every field
//! to its column.

use std::io::{self, BufReader, Read};

use super::format::{
    BLOCK, CHKSUM_FIELD, CHKSUM_FORMATS, FLAG_PAD_ZERO, FLAG_SIZE_CANONICAL,
    GNU_EXT_IS_EXTENDED_AT, GNU_IS_EXTENDED_AT, GNU_MAGIC, GNU_PREFIX_FIELD, GNU_TIMES_FIELD, Kind,
    MAGIC_FIELD, PREFIX_FIELD, PaxSize, SIMPLE_FIELDS, SIZE_FIELD, TYPEFLAG_AT, canonical_size,
    encode_pax, format_chksum, header_sum, pad_len, parse_size, pax_size, put_bytes, put_trimmed,
    put_varint,
};
use super::{Columns, Error, FORMAT_VERSION, MAX_COLUMN_BYTES, MAX_META_RECORD, col};

/// The input with its byte offset, for error messages.
struct Input<R> {
    r: BufReader<R>,
    offset: u64,
}

impl<R: Read> Input<R> {
    /// Fill `buf` as far as the input goes; a short count means end of input.
    fn read_full(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match self.r.read(&mut buf[n..]) {
                Ok(0) => break,
                // `min` guards against a reader reporting more than it was given.
                Ok(k) => n = n.saturating_add(k).min(buf.len()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.offset += n as u64;
        Ok(n)
    }

    fn read_exact_at(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        if self.read_full(buf)? < buf.len() {
            return Err(Error::Truncated {
                offset: self.offset,
            });
        }
        Ok(())
    }
}

/// The reader handed to `on_file`: at most `remaining` bytes, remembering
/// whether the archive ended before that.
struct ContentReader<'a, R> {
    inner: &'a mut BufReader<R>,
    remaining: u64,
    hit_eof: bool,
}

impl<R: Read> Read for ContentReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let max = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..max])?.min(max);
        if n == 0 {
            self.hit_eof = true;
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn stream_content<R: Read>(
    input: &mut Input<R>,
    len: u64,
    on_file: &mut impl FnMut(u64, &mut dyn Read) -> io::Result<()>,
) -> Result<(), Error> {
    let mut reader = ContentReader {
        inner: &mut input.r,
        remaining: len,
        hit_eof: false,
    };
    let result =
        on_file(len, &mut reader).and_then(|()| io::copy(&mut reader, &mut io::sink()).map(drop));
    let (remaining, hit_eof) = (reader.remaining, reader.hit_eof);
    input.offset += len - remaining;
    // A callback failing because the archive ran out is a truncation, not
    // the callback's fault.
    if hit_eof && remaining > 0 {
        return Err(Error::Truncated {
            offset: input.offset,
        });
    }
    result?;
    if remaining > 0 {
        return Err(Error::Truncated {
            offset: input.offset,
        });
    }
    Ok(())
}

fn total_len(cols: &[Vec<u8>]) -> usize {
    cols.iter().map(Vec::len).sum()
}

fn check_total(cols: &[Vec<u8>]) -> Result<(), Error> {
    if total_len(cols) > MAX_COLUMN_BYTES {
        return Err(Error::TooLarge {
            what: "columns",
            limit: MAX_COLUMN_BYTES as u64,
        });
    }
    Ok(())
}

/// Everything from `first` to the end of the input becomes the tail column:
/// a run of zeros (end-of-archive blocks and record padding, counted, not
/// stored) followed by raw bytes.
fn read_tail<R: Read>(
    first: &[u8],
    input: &mut Input<R>,
    cols: &mut [Vec<u8>],
) -> Result<(), Error> {
    let budget = MAX_COLUMN_BYTES.saturating_sub(total_len(cols)) as u64;
    let mut zeros = 0u64;
    let mut raw = Vec::new();
    let mut feed = |piece: &[u8]| -> Result<(), Error> {
        let mut piece = piece;
        if raw.is_empty() {
            let z = piece.iter().take_while(|&&b| b == 0).count();
            zeros += z as u64;
            piece = &piece[z..];
        }
        raw.extend_from_slice(piece);
        if zeros.saturating_add(raw.len() as u64) > budget {
            return Err(Error::TooLarge {
                what: "data after the last entry",
                limit: MAX_COLUMN_BYTES as u64,
            });
        }
        Ok(())
    };
    feed(first)?;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = input.read_full(&mut chunk)?;
        if n == 0 {
            break;
        }
        feed(&chunk[..n])?;
    }
    put_varint(&mut cols[col::TAIL], zeros);
    cols[col::TAIL].extend_from_slice(&raw);
    Ok(())
}

/// The extension blocks that follow an old-GNU sparse header (they are not
/// counted in its size field), as the tar crate and GNU tar read them.
fn read_sparse_extensions<R: Read>(
    block: &[u8; BLOCK],
    input: &mut Input<R>,
) -> Result<Vec<u8>, Error> {
    let mut ext = Vec::new();
    let mut more = block[MAGIC_FIELD] == GNU_MAGIC[..] && block[GNU_IS_EXTENDED_AT] != 0;
    while more {
        if ext.len() + BLOCK > MAX_META_RECORD {
            return Err(Error::TooLarge {
                what: Kind::Sparse.what(),
                limit: MAX_META_RECORD as u64,
            });
        }
        let mut b = [0u8; BLOCK];
        input.read_exact_at(&mut b)?;
        more = b[GNU_EXT_IS_EXTENDED_AT] != 0;
        ext.extend_from_slice(&b);
    }
    Ok(ext)
}

/// Append the header's fields to their columns; returns the flag bits that
/// describe recomputable fields.
fn put_header(block: &[u8; BLOCK], data_len: u64, cols: &mut [Vec<u8>]) -> u8 {
    for f in &SIMPLE_FIELDS {
        let bytes = &block[f.start..f.end];
        if f.trimmed {
            put_trimmed(&mut cols[f.col], bytes);
        } else {
            cols[f.col].extend_from_slice(bytes);
        }
    }
    if block[MAGIC_FIELD] == GNU_MAGIC[..] {
        put_trimmed(&mut cols[col::GNUTIMES], &block[GNU_TIMES_FIELD]);
        put_trimmed(&mut cols[col::PREFIX], &block[GNU_PREFIX_FIELD]);
    } else {
        put_trimmed(&mut cols[col::PREFIX], &block[PREFIX_FIELD]);
    }

    let mut flags = 0u8;
    if block[SIZE_FIELD] == canonical_size(data_len) {
        flags |= FLAG_SIZE_CANONICAL;
    } else {
        cols[col::SIZE].extend_from_slice(&block[SIZE_FIELD]);
    }
    let sum = header_sum(block);
    let stored = &block[CHKSUM_FIELD];
    match (1..=CHKSUM_FORMATS).find(|&f| format_chksum(f, sum).is_some_and(|c| c[..] == *stored)) {
        Some(f) => flags |= f,
        None => cols[col::CHKSUM].extend_from_slice(stored),
    }
    flags
}

pub(super) fn split<R: Read>(
    tar: R,
    mut on_file: impl FnMut(u64, &mut dyn Read) -> io::Result<()>,
) -> Result<Columns, Error> {
    let mut input = Input {
        r: BufReader::with_capacity(64 * 1024, tar),
        offset: 0,
    };
    let mut cols: Vec<Vec<u8>> = vec![Vec::new(); col::COUNT];
    cols[col::VERSION].push(FORMAT_VERSION);
    let mut pending = PaxSize::Absent;
    let mut content_len = 0u64;
    let mut entry_count = 0u64;
    let mut block = [0u8; BLOCK];
    let mut meta = Vec::new();

    loop {
        let n = input.read_full(&mut block)?;
        if n == 0 {
            break;
        }
        if block[..n].iter().all(|&b| b == 0) {
            read_tail(&block[..n], &mut input, &mut cols)?;
            break;
        }
        if n < BLOCK {
            return Err(Error::Truncated {
                offset: input.offset,
            });
        }
        let kind = Kind::of(block[TYPEFLAG_AT]);
        let data_len = if kind.is_extension() {
            parse_size(&block[SIZE_FIELD])
        } else {
            match std::mem::replace(&mut pending, PaxSize::Absent) {
                PaxSize::Size(s) => Some(s),
                PaxSize::Invalid => None,
                PaxSize::Absent => parse_size(&block[SIZE_FIELD]),
            }
        };
        let Some(data_len) = data_len else {
            // We cannot tell where this entry ends, so we cannot structure
            // anything after it; keep it all verbatim.
            read_tail(&block, &mut input, &mut cols)?;
            break;
        };

        let mut flags = put_header(&block, data_len, &mut cols);
        if kind == Kind::Sparse {
            let ext = read_sparse_extensions(&block, &mut input)?;
            put_bytes(&mut cols[col::DATA], &ext);
        }
        if matches!(kind, Kind::Regular | Kind::Sparse) {
            put_varint(&mut cols[col::CLEN], data_len);
            if data_len > 0 {
                stream_content(&mut input, data_len, &mut on_file)?;
            }
            content_len = content_len.saturating_add(data_len);
        } else {
            let len = usize::try_from(data_len)
                .ok()
                .filter(|&l| l <= MAX_META_RECORD)
                .ok_or(Error::TooLarge {
                    what: kind.what(),
                    limit: MAX_META_RECORD as u64,
                })?;
            meta.clear();
            meta.resize(len, 0);
            input.read_exact_at(&mut meta)?;
            match kind {
                Kind::PaxLocal | Kind::PaxGlobal => {
                    let mut times = std::mem::take(&mut cols[col::PAXTIME]);
                    encode_pax(&meta, &mut cols[col::PAX], &mut times);
                    cols[col::PAXTIME] = times;
                    if kind == Kind::PaxLocal {
                        match pax_size(&meta) {
                            PaxSize::Absent => {}
                            found => pending = found,
                        }
                    }
                }
                Kind::LongName => put_bytes(&mut cols[col::LONGNAME], &meta),
                Kind::Other | Kind::Regular | Kind::Sparse => {
                    put_bytes(&mut cols[col::DATA], &meta);
                }
            }
        }

        let pad = pad_len(data_len);
        let mut padding = [0u8; BLOCK];
        input.read_exact_at(&mut padding[..pad])?;
        if padding[..pad].iter().all(|&b| b == 0) {
            flags |= FLAG_PAD_ZERO;
        } else {
            cols[col::PADDING].extend_from_slice(&padding[..pad]);
        }
        cols[col::FLAGS].push(flags);
        entry_count += 1;
        check_total(&cols)?;
    }
    check_total(&cols)?;
    Ok(Columns {
        parts: cols,
        content_len,
        entry_count,
    })
}
