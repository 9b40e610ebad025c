//! Pack files: chunks received from peers, appended to a few large files under `packs/`.
//!
//! Why: a device used to store every received chunk as a file of its own (~16,000 files per
//! GiB at the average chunk size): creating, writing back, renaming and looking up a small file
//! per chunk cost the receiving node more CPU than the network and the hashing together
//! (measured on the LAN bench, 1 GiB: receiver CPU 4.0-4.5 s with a file per chunk, 2.7-3.1 s
//! appending to one file), and a device holding a terabyte would have needed millions of
//! inodes. Appending to a pack is one write per batch of chunks, made durable by one
//! `fdatasync` of the pack per round, and reading a chunk back is one positional read.
//!
//! Format: `packs/<n>.pack`, numbered from 1, each up to [`PACK_MAX`] bytes, a sequence of
//! records: `MAGIC` (4 bytes), the chunk's length (u32 LE), its id (32 bytes), its bytes.
//! Nothing else is in a pack, so a pack can always be read back by walking it from the start.
//!
//! The rules of the store hold: bytes are verified before they are appended and on every read;
//! a chunk is found ([`crate::Store::has`]) only once its pack was synced and the chunk indexed
//! (see [`crate::Store::commit_staged`]). The index records, per pack, the length up to which
//! every record was synced and indexed; after a crash, the records past it are read back when
//! the node starts and adopted if their bytes match their ids, and a torn last record is cut
//! off. A chunk found damaged on a read is forgotten (its bytes stay in the pack, unreferenced)
//! and fetched again.
//!
//! Packs are written through the page cache, not with direct I/O (`O_DIRECT`): a chunk a
//! device just received is what its site peers ask it for next, and with direct writes it had
//! to come back from the disk. Tried on the LAN bench (1 GiB): the receiver's fetch took
//! 1.59-1.77 s against 1.25-2.04 s buffered (synchronous writes of a batch wait for the disk),
//! and a device serving a release it had written directly used 2.09 s of CPU (one run) against
//! 0.5-0.7 s.
//!
//! Space held by chunks that were removed is not reclaimed: nothing removes chunks from packs
//! yet. A later compaction would copy a pack's live records into a new pack.

use crate::error::{Error, Result};
use crate::lock;
use layerhop_protocol::{ChunkId, limits};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A record's first bytes.
const MAGIC: [u8; 4] = *b"LHC1";
/// Header: magic, length, id.
pub const HEADER: usize = 4 + 4 + 32;
/// A pack is closed once it would grow past this; the next record starts a new pack.
const PACK_MAX: u64 = 256 << 20;

fn header(id: &ChunkId, len: usize) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    h[8..].copy_from_slice(id.as_bytes());
    h
}

/// Write every slice at `offset` on, as `pwritev` calls (a call may write less than asked).
fn write_all_at(file: &File, mut slices: &mut [std::io::IoSlice], mut offset: u64) -> std::io::Result<()> {
    while !slices.is_empty() {
        // At most IOV_MAX (1024 on Linux) slices per call.
        let n = rustix::io::pwritev(file, &slices[..slices.len().min(1024)], offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        offset += n as u64;
        std::io::IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// Read `len` bytes at `offset` into a new buffer, without zeroing it first (zeroing every
/// chunk a node serves was ~4% of the serving node's CPU samples in a profile of the LAN bench).
fn read_at(file: &File, len: usize, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let at = offset + buf.len() as u64;
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // The capacity may exceed `len`, and a read with it the record.
    buf.truncate(len);
    Ok(buf)
}

/// Where a chunk's bytes are: pack number, offset of the bytes (past the header), length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub(crate) pack: u32,
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

impl Loc {
    /// The index's value for a packed chunk (16 bytes; a chunk file's value is its 4-byte length).
    pub(crate) fn encode(&self) -> [u8; 16] {
        let mut v = [0u8; 16];
        v[..4].copy_from_slice(&self.pack.to_le_bytes());
        v[4..12].copy_from_slice(&self.offset.to_le_bytes());
        v[12..].copy_from_slice(&self.len.to_le_bytes());
        v
    }

    pub(crate) fn decode(v: &[u8]) -> Option<Loc> {
        let v: &[u8; 16] = v.try_into().ok()?;
        Some(Loc {
            pack: u32::from_le_bytes(v[..4].try_into().ok()?),
            offset: u64::from_le_bytes(v[4..12].try_into().ok()?),
            len: u32::from_le_bytes(v[12..].try_into().ok()?),
        })
    }
}

/// The pack being appended to, and the chunks appended since the last sync.
#[derive(Default)]
struct Appender {
    /// Pack number, file, length.
    current: Option<(u32, Arc<File>, u64)>,
    /// Appended, not yet synced and indexed.
    pending: HashMap<ChunkId, Loc>,
    /// Packs written since the last sync, with their lengths.
    dirty: HashMap<u32, u64>,
}

/// What a sync made durable: the chunks with their places, and each synced pack's length.
pub(crate) type Synced = (HashMap<ChunkId, Loc>, Vec<(u32, u64)>);

/// The `packs/` directory.
pub(crate) struct Packs {
    dir: PathBuf,
    appender: Mutex<Appender>,
    readers: Mutex<HashMap<u32, Arc<File>>>,
}

impl std::fmt::Debug for Packs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packs").field("dir", &self.dir).finish()
    }
}

impl Packs {
    pub(crate) fn open(root: &Path) -> Result<Self> {
        let dir = root.join("packs");
        std::fs::create_dir_all(&dir).map_err(Error::io("create directory", &dir))?;
        Ok(Packs { dir, appender: Mutex::default(), readers: Mutex::default() })
    }

    pub(crate) fn path(&self, pack: u32) -> PathBuf {
        pack_path(&self.dir, pack)
    }

    /// Pack numbers present, ascending.
    pub(crate) fn list(&self) -> Result<Vec<u32>> {
        list(&self.dir)
    }

    /// Append verified chunks, all with one positional write; each is pending until
    /// [`Packs::sync`]. A chunk pending already (or twice in `chunks`) is appended once. On a
    /// failed write the pack is cut back to where the first record began, so it stays a
    /// sequence of whole records and none of `chunks` is pending.
    ///
    /// One write for many records because the kernel's cost of a buffered write is mostly per
    /// call and per page-cache folio, and a larger write gets larger folios: a loop writing
    /// 1 GiB in 80 KB writes (the average chunk) took 0.34-0.40 s of system time on the
    /// development host, in 0.25-1.9 MB writes 0.21-0.23 s. (In 2 and 4 MiB writes it took
    /// 1.9-2.8 s, all of it copying into the page cache: the callers keep batches small.)
    pub(crate) fn append(&self, chunks: &[(ChunkId, &[u8])]) -> Result<()> {
        let mut a = lock(&self.appender);
        let mut fresh: Vec<&(ChunkId, &[u8])> = Vec::with_capacity(chunks.len());
        for c in chunks {
            if !a.pending.contains_key(&c.0) && !fresh.iter().any(|f| f.0 == c.0) {
                fresh.push(c);
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        let size: u64 = fresh.iter().map(|(_, b)| (HEADER + b.len()) as u64).sum();
        let (pack, file, start) = match a.current.take() {
            Some((n, f, len)) if len + size <= PACK_MAX || len == 0 => (n, f, len),
            old => {
                let next = old.map(|(n, _, _)| n).or(self.list()?.last().copied()).unwrap_or(0) + 1;
                let path = self.path(next);
                let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(Error::io("create", &path))?;
                // The new file's name must survive a power cut with the records synced into it.
                File::open(&self.dir).and_then(|d| d.sync_all()).map_err(Error::io("fsync", &self.dir))?;
                (next, Arc::new(f), 0)
            }
        };
        let headers: Vec<[u8; HEADER]> = fresh.iter().map(|(id, bytes)| header(id, bytes.len())).collect();
        let mut slices: Vec<std::io::IoSlice> = Vec::with_capacity(2 * fresh.len());
        for (h, (_, bytes)) in headers.iter().zip(&fresh) {
            slices.push(std::io::IoSlice::new(h));
            slices.push(std::io::IoSlice::new(bytes));
        }
        if let Err(e) = write_all_at(&file, &mut slices, start) {
            let _ = file.set_len(start);
            a.current = Some((pack, file, start));
            return Err(Error::Io { op: "append to", path: self.path(pack), source: e });
        }
        let mut at = start;
        for (id, bytes) in fresh {
            a.pending.insert(*id, Loc { pack, offset: at + HEADER as u64, len: bytes.len() as u32 });
            at += (HEADER + bytes.len()) as u64;
        }
        a.dirty.insert(pack, at);
        a.current = Some((pack, file, at));
        Ok(())
    }

    /// Make every pending chunk durable (`fdatasync` of each pack written since the last
    /// sync); returns them with their places, and each synced pack with its length. On
    /// failure nothing is returned and the chunks stay pending.
    pub(crate) fn sync(&self) -> Result<Synced> {
        let (files, dirty, pending) = {
            let mut a = lock(&self.appender);
            let dirty: Vec<(u32, u64)> = a.dirty.drain().collect();
            let pending = std::mem::take(&mut a.pending);
            let current = a.current.as_ref().map(|(n, f, _)| (*n, f.clone()));
            (current, dirty, pending)
        };
        for (pack, _) in &dirty {
            let synced = match &files {
                Some((n, f)) if n == pack => f.sync_data(),
                _ => File::open(self.path(*pack)).and_then(|f| f.sync_data()),
            };
            if let Err(e) = synced {
                let mut a = lock(&self.appender);
                for (p, len) in &dirty {
                    let l = a.dirty.entry(*p).or_insert(*len);
                    *l = (*l).max(*len);
                }
                a.pending.extend(pending);
                return Err(Error::Io { op: "fdatasync", path: self.path(*pack), source: e });
            }
        }
        Ok((pending, dirty))
    }

    /// Whether this process appends to the pack, or has appended to it since the last sync:
    /// its records past the synced length are staged, not left by a crash.
    pub(crate) fn in_use(&self, pack: u32) -> bool {
        let a = lock(&self.appender);
        a.current.as_ref().is_some_and(|(n, _, _)| *n == pack) || a.dirty.contains_key(&pack)
    }

    /// Chunks appended and not yet synced.
    pub(crate) fn pending(&self) -> std::collections::HashSet<ChunkId> {
        lock(&self.appender).pending.keys().copied().collect()
    }

    /// Where every whole record of every pack is, from the headers alone (for when the index
    /// cannot be read; see `Store::lookup`).
    pub(crate) fn locations(&self) -> std::io::Result<HashMap<ChunkId, Loc>> {
        let mut out = HashMap::new();
        walk_all(&self.dir, |id, loc| {
            out.insert(id, loc);
        })?;
        Ok(out)
    }

    /// Read a chunk's bytes (not verified: the caller checks them against the id).
    pub(crate) fn read(&self, loc: &Loc) -> std::io::Result<Vec<u8>> {
        if loc.len as usize > limits::MAX_CHUNK {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "length over the chunk limit"));
        }
        let file = {
            let mut r = lock(&self.readers);
            match r.get(&loc.pack) {
                Some(f) => f.clone(),
                None => {
                    let f = Arc::new(File::open(self.path(loc.pack))?);
                    r.insert(loc.pack, f.clone());
                    f
                }
            }
        };
        read_at(&file, loc.len as usize, loc.offset)
    }

    /// Cut a pack back to `len` (a torn last record).
    pub(crate) fn truncate(&self, pack: u32, len: u64) -> Result<()> {
        let path = self.path(pack);
        let f = std::fs::OpenOptions::new().write(true).open(&path).map_err(Error::io("open", &path))?;
        f.set_len(len).map_err(Error::io("truncate", &path))?;
        f.sync_all().map_err(Error::io("fsync", &path))
    }
}

fn pack_path(dir: &Path, pack: u32) -> PathBuf {
    dir.join(format!("{pack:08}.pack"))
}

fn list(dir: &Path) -> Result<Vec<u32>> {
    let mut out: Vec<u32> = std::fs::read_dir(dir)
        .map_err(Error::io("list", dir))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".pack")?.parse().ok())
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// A record read back from a pack: the id it claims, where its bytes are, the bytes.
pub struct Record {
    /// The id the record claims (not checked).
    pub id: ChunkId,
    /// Pack number.
    pub pack: u32,
    /// Offset of the bytes in the pack.
    pub offset: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// Walk a pack's records from `from` (a record boundary). Returns the whole records and the
/// offset where they end: past it there is nothing, or a torn or foreign tail.
pub fn records(path: &Path, pack: u32, from: u64) -> std::io::Result<(Vec<Record>, u64)> {
    let f = File::open(path)?;
    let mut out = Vec::new();
    let end = walk(&f, from, |id, offset, len| {
        let mut bytes = vec![0u8; len];
        f.read_exact_at(&mut bytes, offset)?;
        out.push(Record { id, pack, offset, bytes });
        Ok(())
    })?;
    Ok((out, end))
}

/// Visit each whole record's header from `from`: (claimed id, offset of the bytes, length).
/// Returns the offset where whole records end. A pack that shrinks while it is walked (a node
/// cutting off a torn record as another process reads) ends the walk where it now ends.
fn walk(f: &File, from: u64, mut visit: impl FnMut(ChunkId, u64, usize) -> std::io::Result<()>) -> std::io::Result<u64> {
    let eof = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(true),
        r => r.map(|()| false),
    };
    let size = f.metadata()?.len();
    let mut at = from;
    let mut header = [0u8; HEADER];
    while at + HEADER as u64 <= size {
        if eof(f.read_exact_at(&mut header, at))? {
            break;
        }
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as u64;
        if header[..4] != MAGIC || len as usize > limits::MAX_CHUNK || at + HEADER as u64 + len > size {
            break;
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&header[8..]);
        if eof(visit(ChunkId::from_bytes(id), at + HEADER as u64, len as usize))? {
            break;
        }
        at += HEADER as u64 + len;
    }
    Ok(at)
}

/// The ids the whole records in the packs of a store's data directory claim, in order
/// (headers only: cheap enough to poll while a node runs).
pub fn record_ids(data_dir: &Path) -> std::io::Result<Vec<ChunkId>> {
    let mut out = Vec::new();
    walk_all(&data_dir.join("packs"), |id, _| out.push(id))?;
    Ok(out)
}

/// Visit the header of every whole record of every pack in `dir` (none when there is no such
/// directory), in order.
fn walk_all(dir: &Path, mut visit: impl FnMut(ChunkId, Loc)) -> std::io::Result<()> {
    for pack in list(dir).unwrap_or_default() {
        walk(&File::open(pack_path(dir, pack))?, 0, |id, offset, len| {
            visit(id, Loc { pack, offset, len: len as u32 });
            Ok(())
        })?;
    }
    Ok(())
}

/// Every whole record in the packs of a store's data directory, in order: for checking a
/// store from outside (tests, tools). The ids are the records' claims, not checked.
pub fn all_records(data_dir: &Path) -> std::io::Result<Vec<Record>> {
    let dir = data_dir.join("packs");
    let mut out = Vec::new();
    let packs = match list(&dir) {
        Ok(p) => p,
        Err(_) if !dir.exists() => return Ok(out),
        Err(e) => return Err(std::io::Error::other(e.to_string())),
    };
    for n in packs {
        out.extend(records(&pack_path(&dir, n), n, 0)?.0);
    }
    Ok(out)
}
