//! Split an uncompressed tar (a container image layer) into *columns* of
//! metadata plus a *content stream*, and join them back byte-exactly.
//!
//! The content stream is the concatenation of every regular file's data; the
//! caller chunks it by content elsewhere. Everything else in the archive —
//! header blocks, pax and GNU long-name records, other entries' data,
//! padding, the end-of-archive blocks and whatever follows them — goes into
//! [`Columns`], each of which the caller stores as its own content-addressed,
//! zstd-compressed blob.
//!
//! Main items: [`split`], [`join`], [`Columns`] (see [`Columns::names`] for
//! the column list) and [`Error`].
//!
//! # The choice: one column per header field
//!
//! A layer rebuilt with identical files but new mtimes differs only in the
//! mtime fields, in the pax time records and in the header checksums. Storing
//! headers as 512-byte blocks would make the whole metadata blob new on every
//! rebuild. Splitting each ustar field into its own column confines the change
//! to the `mtime` (and `paxtime`) columns, and the checksum is recomputed on
//! join rather than stored whenever the original matches one of the common
//! formattings (the format id goes into the per-entry `flags` byte). Length
//! fields that the data already implies (the size of pax/long-name headers,
//! pax record length prefixes) are likewise recomputed, so a time value that
//! changes length does not ripple into other columns. Per-field columns also
//! group similar bytes, which compresses better than interleaved headers.
//!
//! Exactness wins over compactness: every byte we do not understand is stored
//! raw (a checksum in an unknown format, padding that is not zero, unused
//! header bytes, malformed pax data, and — from the first unparseable header
//! on — the whole rest of the archive in the `tail` column). `join(split(x))`
//! reproduces `x` for every `x` that `split` accepts.
//!
//! Hostile input never panics and never allocates without bound: one
//! metadata record is capped at [`MAX_META_RECORD`] bytes and all columns
//! together at [`MAX_COLUMN_BYTES`]; [`Columns::from_parts`] fully validates
//! arbitrary column bytes before [`join`] sees them.

mod format;
mod join;
#[cfg(test)]
mod prop_tests;
mod split;
#[cfg(test)]
mod tests;

use std::io;

/// Largest pax, GNU long-name or other non-file data record accepted, in bytes.
pub const MAX_META_RECORD: usize = 1 << 20;

/// Largest total size of all columns (counting the zero run of the tail as
/// if it were stored), in bytes.
pub const MAX_COLUMN_BYTES: usize = 512 << 20;

const FORMAT_VERSION: u8 = 1;

/// Column indices; must match the order of `NAMES`.
mod col {
    pub(super) const VERSION: usize = 0;
    pub(super) const FLAGS: usize = 1;
    pub(super) const TYPEFLAG: usize = 2;
    pub(super) const NAME: usize = 3;
    pub(super) const MODE: usize = 4;
    pub(super) const UID: usize = 5;
    pub(super) const GID: usize = 6;
    pub(super) const SIZE: usize = 7;
    pub(super) const MTIME: usize = 8;
    pub(super) const CHKSUM: usize = 9;
    pub(super) const LINKNAME: usize = 10;
    pub(super) const MAGIC: usize = 11;
    pub(super) const UNAME: usize = 12;
    pub(super) const GNAME: usize = 13;
    pub(super) const DEVMAJOR: usize = 14;
    pub(super) const DEVMINOR: usize = 15;
    pub(super) const PREFIX: usize = 16;
    pub(super) const GNUTIMES: usize = 17;
    pub(super) const PAD: usize = 18;
    pub(super) const CLEN: usize = 19;
    pub(super) const LONGNAME: usize = 20;
    pub(super) const PAX: usize = 21;
    pub(super) const PAXTIME: usize = 22;
    pub(super) const DATA: usize = 23;
    pub(super) const PADDING: usize = 24;
    pub(super) const TAIL: usize = 25;
    pub(super) const COUNT: usize = 26;
}

const NAMES: [&str; col::COUNT] = [
    "version", "flags", "typeflag", "name", "mode", "uid", "gid", "size", "mtime", "chksum",
    "linkname", "magic", "uname", "gname", "devmajor", "devminor", "prefix", "gnutimes", "pad",
    "clen", "longname", "pax", "paxtime", "data", "padding", "tail",
];

/// The metadata of one tar archive, as separately storable columns.
///
/// Column formats (one item per tar header, in archive order, unless noted;
/// "trimmed" means a varint length followed by the field without its
/// trailing NULs; varints are unsigned LEB128):
///
/// - `version`: one byte, the format version (1), once.
/// - `flags`: one byte: bits 0–2 checksum format (0 = stored raw in
///   `chksum`), bit 3 size field is the canonical spelling of the data length
///   (else stored in `size`), bit 4 the data padding is all zeros (else
///   stored in `padding`).
/// - `typeflag`: one byte. Its length is the number of entries.
/// - `name`, `linkname`, `uname`, `gname`, `pad` (header bytes 500..512):
///   trimmed.
/// - `mode`, `uid`, `gid`, `devmajor`, `devminor` (8 bytes), `mtime`
///   (12 bytes), `magic` (magic + version, 8 bytes): raw.
/// - `size` (12 bytes), `chksum` (8 bytes): raw, only when not recomputable.
/// - `prefix`: trimmed ustar prefix; for GNU-magic headers only bytes
///   369..500, with atime+ctime (345..369) trimmed in `gnutimes`.
/// - `clen`: varint data length of each regular file ('0', '\0', '7') and
///   GNU sparse file ('S'); the data itself is in the content stream.
/// - `longname`: GNU 'L'/'K' data, varint length + bytes.
/// - `pax`: pax 'x'/'g' data: raw (0, varint length, bytes) or records
///   (1, varint count, then per record kind 0 "key=value", 1 time key whose
///   value is in `paxtime`, 2 raw record — each as varint length + bytes).
/// - `paxtime`: values of pax `mtime`/`atime`/`ctime` records.
/// - `data`: data of all other entries (directories, links, devices,
///   unknown types), and the extension blocks of old-GNU sparse headers,
///   varint length + bytes.
/// - `padding`: raw data padding of entries whose padding is not all zero.
/// - `tail`: empty, or a varint count of zero bytes followed by raw bytes:
///   everything from the first all-zero (end-of-archive) block or the first
///   header we cannot parse, to the end of the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Columns {
    parts: Vec<Vec<u8>>,
    content_len: u64,
    entry_count: u64,
}

impl Columns {
    /// The stable column names, in the order of [`Columns::into_parts`].
    #[must_use]
    pub fn names() -> &'static [&'static str] {
        &NAMES
    }

    /// The column bytes, in [`Columns::names`] order.
    #[must_use]
    pub fn into_parts(self) -> Vec<Vec<u8>> {
        self.parts
    }

    /// Borrow the column bytes, in [`Columns::names`] order.
    #[must_use]
    pub fn parts(&self) -> &[Vec<u8>] {
        &self.parts
    }

    /// Rebuild from stored column bytes (in [`Columns::names`] order).
    ///
    /// The columns are decoded completely, so a successful result is
    /// guaranteed to [`join`] (given enough content bytes); arbitrary input
    /// yields an error, never a panic or an unbounded allocation.
    pub fn from_parts(parts: Vec<Vec<u8>>) -> Result<Columns, Error> {
        if parts.len() != col::COUNT {
            return Err(Error::ColumnCount {
                expected: col::COUNT,
                found: parts.len(),
            });
        }
        let total = parts
            .iter()
            .fold(0usize, |acc, p| acc.saturating_add(p.len()));
        if total > MAX_COLUMN_BYTES {
            return Err(Error::TooLarge {
                what: "columns",
                limit: MAX_COLUMN_BYTES as u64,
            });
        }
        let summary = join::decode(&parts, &mut join::Measure::default())?;
        Ok(Columns {
            parts,
            content_len: summary.content_len,
            entry_count: summary.entry_count,
        })
    }

    /// Total bytes of file contents: the sum of all regular (and GNU
    /// sparse) files' data lengths, i.e. the length of the content stream
    /// [`join`] expects.
    #[must_use]
    pub fn content_len(&self) -> u64 {
        self.content_len
    }

    /// Number of tar headers, counting pax and GNU long-name headers as
    /// entries of their own.
    #[must_use]
    pub fn entry_count(&self) -> u64 {
        self.entry_count
    }
}

/// Read a tar from `tar`, returning its metadata columns.
///
/// For each regular file entry (typeflag '0', '\0' or '7', and GNU sparse
/// 'S', whose stored data is file content too) with a non-zero data length,
/// `on_file(size, reader)` is called, where `reader` yields
/// exactly `size` bytes of that file's content. The callback may stop
/// reading early: the unread rest is drained here, so the archive position
/// stays right. The data length comes from the header's size field (octal or
/// base-256) or from a preceding pax `size` record.
///
/// Every other byte of the input goes into the columns. The input is read to
/// its end.
///
/// Errors: [`Error::Truncated`] if the input ends inside a header block that
/// is not all zeros or inside an entry's data or padding;
/// [`Error::TooLarge`] past the size limits; [`Error::Io`] for read errors
/// and errors returned by `on_file`.
pub fn split<R: io::Read>(
    tar: R,
    on_file: impl FnMut(u64, &mut dyn io::Read) -> io::Result<()>,
) -> Result<Columns, Error> {
    split::split(tar, on_file)
}

/// Write the original tar bytes to `out`: headers and other metadata from
/// `columns`, file contents read in order from `contents`, which must supply
/// the concatenation of all regular files' contents (at least
/// [`Columns::content_len`] bytes; nothing past that is read).
///
/// Returns the number of bytes written. Fails with [`Error::ContentShort`] if
/// `contents` ends early.
pub fn join<W: io::Write>(
    columns: &Columns,
    contents: &mut dyn io::Read,
    out: W,
) -> Result<u64, Error> {
    join::join(columns, contents, out)
}

/// Errors from [`split`], [`join`] and [`Columns::from_parts`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading, writing, or the `on_file` callback failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The archive ends in the middle of a header, data or padding.
    #[error("tar archive truncated at byte offset {offset}")]
    Truncated {
        /// Offset of the end of the input.
        offset: u64,
    },
    /// A size limit was exceeded.
    #[error("{what} exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The limit, in bytes.
        limit: u64,
    },
    /// [`Columns::from_parts`] got the wrong number of columns.
    #[error("expected {expected} columns, got {found}")]
    ColumnCount {
        /// The number of columns of this format.
        expected: usize,
        /// The number supplied.
        found: usize,
    },
    /// Column bytes that [`split`] cannot have produced.
    #[error("malformed column {column}: {reason}")]
    MalformedColumns {
        /// Name of the offending column.
        column: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The content stream given to [`join`] ended early.
    #[error("content stream ended after {got} of {expected} bytes")]
    ContentShort {
        /// Bytes the columns call for.
        expected: u64,
        /// Bytes actually read.
        got: u64,
    },
}
