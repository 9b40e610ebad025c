//! layerhop's content-addressed store.
//!
//! Layout under a node's data directory:
//! - `packs/<n>.pack`: chunks received from peers, appended to a few large files (see
//!   [`packs`]).
//! - `chunks/xx/<id>`: one file per chunk, named by the BLAKE3 of its bytes (see `chunks`):
//!   chunks a node imported itself (a seed's releases), and homes made by earlier versions.
//! - `incoming/<id>`: chunks an earlier version had received and not yet named when it
//!   stopped; adopted at the next start (see `staging`).
//! - `index/`: a sled database of metadata only — which chunks are present and where (a chunk
//!   file's length, or its pack, offset and length), how far each pack was synced, and the
//!   newest release of each channel. It is a cache of what the files say: when it is missing or
//!   damaged, [`Store::open`] rebuilds it by re-hashing every chunk file and pack record.
//! - `releases/<channel>/<version>.release`: every recorded signed release, written atomically;
//!   the durable copy from which the index's release table is rebuilt.
//! - `trust.json`: the highest accepted version per channel (see [`trust`]).
//!
//! Main items: [`Store`], [`blob`] (chunk trees), [`tarsplit`] (layers as header columns and
//! contents), [`import`] and [`export`].
#![warn(missing_docs)]

mod chunks;
pub mod blob;
pub mod error;
pub mod export;
mod fsutil;
pub mod packs;
pub mod recent;
mod staging;
pub mod hashing;
pub mod import;
pub mod tarsplit;
pub mod trust;

pub use error::{Error, Result};

use chunks::{ChunkFiles, Read as ChunkRead};
use layerhop_protocol::{ChunkId, ReleaseBody, SignedRelease, limits};
use packs::{Loc, Packs};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const FORMAT_KEY: &[u8] = b"format";
const FORMAT: &[u8] = b"layerhop-index-1";
/// How long [`Store::open`] waits for a locked index before refusing the store as in use.
const INDEX_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What [`Store::open`] found.
#[derive(Debug, Default, Clone)]
pub struct OpenReport {
    /// Whether the index had to be rebuilt from the chunk files.
    pub rebuilt: bool,
    /// Chunk files and pack records found valid during a rebuild.
    pub chunks_kept: usize,
    /// Chunk files and pack records dropped during a rebuild because their bytes did not match
    /// their names.
    pub chunks_dropped: usize,
}

/// The store of one node. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Store {
    root: PathBuf,
    files: ChunkFiles,
    staging: staging::Staging,
    packs: Packs,
    db: sled::Db,
    chunk_index: sled::Tree,
    /// Pack number (u32 BE) → the length up to which its records were synced and indexed.
    pack_index: sled::Tree,
    /// Packed chunks the index refused to record (a full disk): found here until the next start,
    /// which adopts them from the packs.
    unindexed: Mutex<HashMap<ChunkId, Loc>>,
    /// Where packed chunks are when the index cannot be read: after sled fails to write its
    /// log (a full disk) it refuses every operation, reads too, until it is reopened. Built
    /// once from the packs' headers on the first failed lookup, kept until the next start.
    degraded: Mutex<Option<HashMap<ChunkId, Loc>>>,
    /// Tests: make every index lookup fail, as a sled that failed to write its log does.
    #[cfg(test)]
    index_reads_fail: std::sync::atomic::AtomicBool,
    release_index: sled::Tree,
    trust_file: trust::TrustFile,
    trust: Mutex<trust::Trust>,
    /// Whether each chunk write is fsynced before its rename (see [`Store::set_durable`]).
    durable: std::sync::atomic::AtomicBool,
    /// Source bytes read by imports since the store was opened (see [`Store::imported_bytes`]).
    import_read: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Whether an index write failed (logged once).
    index_failed: std::sync::atomic::AtomicBool,
    /// Packed chunks verified lately (see [`Store::get_for_peer`]).
    recent: Mutex<recent::Recent>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

impl Store {
    /// Open (or create) the store under `root`, rebuilding the index if it is missing or damaged.
    pub fn open(root: &Path) -> Result<(Store, OpenReport)> {
        std::fs::create_dir_all(root).map_err(Error::io("create directory", root))?;
        let files = ChunkFiles::open(root)?;
        let staging = staging::Staging::open(root)?;
        let packs = Packs::open(root)?;
        let index_dir = root.join("index");
        let mut report = OpenReport::default();
        Self::wait_until_unlocked(root, &index_dir)?;
        // A new store (no index, no chunks, no releases) is created, not rebuilt: nothing to warn
        // about.
        let fresh = !index_dir.exists() && !root.join("releases").exists() && files.is_empty() && packs.list()?.is_empty();
        let db = match Self::open_index(&index_dir) {
            Ok(db) => db,
            Err(_) if fresh => {
                let db = sled::open(&index_dir)?;
                db.insert(FORMAT_KEY, FORMAT)?;
                db.flush()?;
                db
            }
            // Locked by a process that opened the store since the wait above: not damage.
            Err(_) if Self::locked(&index_dir) => return Err(Error::InUse { path: root.to_owned() }),
            Err(reason) => {
                tracing::warn!(index = %index_dir.display(), %reason, "rebuilding the index from the chunk files");
                let aside = root.join(format!("index.damaged-{}", std::process::id()));
                if index_dir.exists() {
                    let _ = std::fs::remove_dir_all(&aside);
                    std::fs::rename(&index_dir, &aside).map_err(Error::io("move aside", &index_dir))?;
                }
                report.rebuilt = true;
                sled::open(&index_dir)?
            }
        };
        let trust_file = trust::TrustFile::new(root);
        let trust = trust_file.load()?;
        let store = Store {
            root: root.to_owned(),
            chunk_index: db.open_tree("chunks")?,
            release_index: db.open_tree("releases")?,
            pack_index: db.open_tree("packs")?,
            unindexed: Mutex::default(),
            degraded: Mutex::default(),
            #[cfg(test)]
            index_reads_fail: std::sync::atomic::AtomicBool::new(false),
            db,
            files,
            staging,
            packs,
            trust_file,
            trust: Mutex::new(trust),
            durable: std::sync::atomic::AtomicBool::new(true),
            import_read: Default::default(),
            index_failed: std::sync::atomic::AtomicBool::new(false),
            recent: Mutex::default(),
        };
        if report.rebuilt {
            store.rebuild(&mut report)?;
            store.db.insert(FORMAT_KEY, FORMAT)?;
            store.db.flush()?;
        }
        Ok((store, report))
    }

    /// sled holds an exclusive lock on `index/db` while the index is open, and fails to open a
    /// locked one. A lock is not damage: moving the index aside and rebuilding would pull it
    /// from under the node that holds it. Within one process a store just dropped may still
    /// hold the lock for a moment (sled's background threads finish the writes they were
    /// handed, holding the file), so wait briefly before refusing.
    fn wait_until_unlocked(root: &Path, index_dir: &Path) -> Result<()> {
        let deadline = std::time::Instant::now() + INDEX_LOCK_WAIT;
        while Self::locked(index_dir) {
            if std::time::Instant::now() >= deadline {
                return Err(Error::InUse { path: root.to_owned() });
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(())
    }

    /// Whether another open file holds sled's lock on the index (`false` when there is no
    /// index file, or locks are not supported here: sled's own open then reports anything real).
    fn locked(index_dir: &Path) -> bool {
        let Ok(db) = std::fs::File::open(index_dir.join("db")) else { return false };
        matches!(db.try_lock(), Err(std::fs::TryLockError::WouldBlock))
    }

    fn open_index(dir: &Path) -> std::result::Result<sled::Db, String> {
        if !dir.exists() {
            return Err("index is missing".into());
        }
        let db = sled::open(dir).map_err(|e| format!("cannot open: {e}"))?;
        match db.get(FORMAT_KEY) {
            Ok(Some(v)) if v.as_ref() == FORMAT => Ok(db),
            Ok(_) => Err("index has no format marker (created but never completed)".into()),
            Err(e) => Err(format!("cannot read: {e}")),
        }
    }

    fn rebuild(&self, report: &mut OpenReport) -> Result<()> {
        for (id, _) in self.files.scan()? {
            match self.files.read(&id)? {
                ChunkRead::Ok(bytes) => {
                    self.chunk_index.insert(id.as_bytes(), &(bytes.len() as u32).to_le_bytes())?;
                    report.chunks_kept += 1;
                }
                ChunkRead::Damaged | ChunkRead::Absent => report.chunks_dropped += 1,
            }
        }
        for pack in self.packs.list()? {
            let path = self.packs.path(pack);
            let (records, end) = packs::records(&path, pack, 0).map_err(Error::io("read", &path))?;
            for r in records {
                if r.id.matches(&r.bytes) {
                    let loc = Loc { pack, offset: r.offset, len: r.bytes.len() as u32 };
                    self.chunk_index.insert(r.id.as_bytes(), &loc.encode())?;
                    report.chunks_kept += 1;
                } else {
                    report.chunks_dropped += 1;
                }
            }
            // Whatever follows the last whole record is left as it is (it may be damage in the
            // middle of a pack, with records after it): nothing is appended to an old pack.
            let size = std::fs::metadata(&path).map_err(Error::io("stat", &path))?.len();
            if end < size {
                tracing::warn!(pack = %path.display(), at = end, "pack unreadable past this offset; the chunks past it will be fetched again");
            }
            self.pack_index.insert(pack.to_be_bytes(), &size.to_le_bytes())?;
        }
        let dir = self.root.join("releases");
        for channel in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let mut newest: Option<(u64, SignedRelease)> = None;
            for f in std::fs::read_dir(channel.path()).into_iter().flatten().flatten() {
                let Ok(bytes) = std::fs::read(f.path()) else { continue };
                let Ok(signed) = SignedRelease::decode(&bytes) else { continue };
                let Ok(body) = signed.peek() else { continue };
                if newest.as_ref().is_none_or(|(v, _)| body.version > *v) {
                    newest = Some((body.version, signed));
                }
            }
            if let Some((_, signed)) = newest {
                let body = signed.peek()?;
                self.release_index.insert(body.channel.as_str(), signed.encode())?;
            }
        }
        tracing::info!(kept = report.chunks_kept, dropped = report.chunks_dropped, "index rebuilt");
        Ok(())
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Source bytes read by imports since the store was opened: a publish's progress is this
    /// counter's growth against the size of its sources.
    pub fn imported_bytes(&self) -> u64 {
        self.import_read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Count what `r` reads as source bytes imported.
    pub(crate) fn counting<R>(&self, r: R) -> import::Counting<R> {
        import::Counting { inner: r, n: self.import_read.clone() }
    }

    /// Choose whether every chunk write is fsynced (default) or left to the OS until
    /// [`Store::sync`]. Bulk imports turn it off and sync once at the end; chunk reads verify
    /// their bytes anyway, so a chunk torn by a crash is caught and refetched, never served.
    pub fn set_durable(&self, durable: bool) {
        self.durable.store(durable, std::sync::atomic::Ordering::Relaxed);
    }

    /// Make every chunk written so far durable — file data and the renames that named them —
    /// with one `syncfs` of the store's file system (an fsync per chunk file cost 3–30 s per
    /// GiB on our seeds), then flush the index.
    pub fn sync(&self) -> Result<()> {
        self.files.sync()?;
        self.db.flush()?;
        Ok(())
    }

    /// Whether the chunk is present. The index answers first; when it does not know the chunk,
    /// a chunk file written before a crash (after its fsync, before sled persisted the insert)
    /// is verified and adopted, so a crash never makes a device fetch verified bytes again.
    pub fn has(&self, id: &ChunkId) -> bool {
        if !matches!(self.lookup(id), Lookup::Unknown) {
            return true;
        }
        if !self.files.path(id).exists() {
            return false;
        }
        matches!(self.get(id), Ok(Some(_)))
    }

    /// Store bytes received from elsewhere: checked against `id` first.
    pub fn put(&self, id: &ChunkId, bytes: &[u8]) -> Result<()> {
        if bytes.len() > limits::MAX_CHUNK {
            return Err(Error::ChunkTooLarge { len: bytes.len(), limit: limits::MAX_CHUNK });
        }
        if !id.matches(bytes) {
            return Err(Error::Mismatch { id: *id });
        }
        self.put_new(id, bytes).map(|_| ())
    }

    /// Store many chunks received from elsewhere, each checked against its id, with one
    /// durable batch write (see `chunks::write_batch`). One result per chunk.
    pub fn put_batch(&self, chunks: &[(ChunkId, Vec<u8>)]) -> Vec<Result<()>> {
        let mut results: Vec<Option<Result<()>>> = Vec::with_capacity(chunks.len());
        let mut to_write: Vec<(usize, ChunkId, &[u8])> = Vec::new();
        for (i, (id, bytes)) in chunks.iter().enumerate() {
            if bytes.len() > limits::MAX_CHUNK {
                results.push(Some(Err(Error::ChunkTooLarge { len: bytes.len(), limit: limits::MAX_CHUNK })));
            } else if !id.matches(bytes) {
                results.push(Some(Err(Error::Mismatch { id: *id })));
            } else if self.has(id) || to_write.iter().any(|(_, w, _)| w == id) {
                results.push(Some(Ok(())));
            } else {
                results.push(None);
                to_write.push((i, *id, bytes));
            }
        }
        let batch: Vec<(ChunkId, &[u8])> = to_write.iter().map(|(_, id, b)| (*id, *b)).collect();
        for ((i, id, bytes), r) in to_write.iter().zip(self.files.write_batch(&batch)) {
            let r = r.map(|()| self.index_chunk(id, bytes.len()));
            results[*i] = Some(r);
        }
        results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect()
    }

    /// Stage a chunk received from elsewhere, checked against `id` first: its bytes are appended
    /// to a pack (see [`packs`]), neither durable nor found by [`Store::has`] until a
    /// [`Store::commit_staged`] syncs and indexes them. Returns whether there is anything to
    /// commit (false: the chunk is held already).
    pub fn stage(&self, id: &ChunkId, bytes: &[u8]) -> Result<bool> {
        self.stage_many(&[(*id, bytes)])?.into_iter().next().unwrap_or(Ok(false))
    }

    /// [`Store::stage`] for many chunks, appended with one write: one result per chunk (a chunk
    /// too large or not matching its id is refused, the others are staged). `Err` when the
    /// write failed: then none of them is staged.
    ///
    /// "Held already" here asks only the index: a chunk the index does not know is staged even
    /// if an unindexed chunk file holds it (a second copy, harmless), which spares a file-system
    /// lookup per received chunk.
    pub fn stage_many(&self, chunks: &[(ChunkId, &[u8])]) -> Result<Vec<Result<bool>>> {
        let mut fresh: Vec<(ChunkId, &[u8])> = Vec::with_capacity(chunks.len());
        let results: Vec<Result<bool>> = chunks
            .iter()
            .map(|&(id, bytes)| {
                if bytes.len() > limits::MAX_CHUNK {
                    return Err(Error::ChunkTooLarge { len: bytes.len(), limit: limits::MAX_CHUNK });
                }
                if !id.matches(bytes) {
                    return Err(Error::Mismatch { id });
                }
                if !matches!(self.lookup(&id), Lookup::Unknown) {
                    return Ok(false);
                }
                fresh.push((id, bytes));
                Ok(true)
            })
            .collect();
        self.packs.append(&fresh)?;
        let mut recent = lock(&self.recent);
        for (id, _) in &fresh {
            recent.insert(*id);
        }
        Ok(results)
    }

    /// Adopt the chunks a process that died had staged and not yet committed: pack records
    /// past each pack's synced length whose bytes match their ids are synced and indexed, and a
    /// torn last record is cut off (see [`packs`]); staged files an earlier version left under
    /// `incoming/` are adopted the same way (see `staging`). A node does this when it starts,
    /// before it looks at what it lacks; a pack this process appends to is left alone (what it
    /// holds past its synced length is staged, not left by a crash). Returns how many.
    pub fn adopt_staged(&self) -> Result<usize> {
        let adopted = self.staging.adopt(&self.files)?;
        for (id, len) in &adopted {
            self.index_chunk(id, *len);
        }
        let mut n = adopted.len();
        for pack in self.packs.list()? {
            if self.packs.in_use(pack) {
                continue;
            }
            let path = self.packs.path(pack);
            let from = self.synced_len(pack);
            let size = std::fs::metadata(&path).map_err(Error::io("stat", &path))?.len();
            if from >= size {
                continue;
            }
            let (records, end) = packs::records(&path, pack, from).map_err(Error::io("read", &path))?;
            if end < size {
                tracing::warn!(pack = %path.display(), at = end, "cutting off a record torn by a crash");
                self.packs.truncate(pack, end)?;
            }
            let whole = records.len();
            let found: Vec<(ChunkId, Loc)> = records
                .into_iter()
                .filter(|r| r.id.matches(&r.bytes))
                .map(|r| (r.id, Loc { pack, offset: r.offset, len: r.bytes.len() as u32 }))
                .collect();
            if found.len() < whole {
                tracing::warn!(pack = %path.display(), records = whole - found.len(), "staged records whose bytes do not match their ids (a power cut); they will be fetched again");
            }
            std::fs::File::open(&path).and_then(|f| f.sync_data()).map_err(Error::io("fdatasync", &path))?;
            for (id, loc) in &found {
                if !self.has(id) {
                    self.index_packed(id, *loc);
                    n += 1;
                }
            }
            let _ = self.pack_index.insert(pack.to_be_bytes(), &end.to_le_bytes());
        }
        if n > adopted.len() {
            tracing::info!(chunks = n - adopted.len(), "adopted chunks received before a crash");
        }
        Ok(n)
    }

    /// The length up to which a pack's records were synced and indexed.
    fn synced_len(&self, pack: u32) -> u64 {
        match self.pack_index.get(pack.to_be_bytes()) {
            Ok(Some(v)) => v.as_ref().try_into().map(u64::from_le_bytes).unwrap_or(0),
            _ => 0,
        }
    }

    /// Make every chunk staged so far durable (one `fdatasync` per pack written), then index
    /// them; returns one result per chunk of `staged` (chunks staged before this call). Fails
    /// as a whole when the sync fails (nothing is indexed; the chunks stay staged).
    pub fn commit_staged(&self, staged: &[ChunkId]) -> Result<Vec<Result<()>>> {
        let (synced, lengths) = self.packs.sync()?;
        for (id, loc) in &synced {
            self.index_packed(id, *loc);
        }
        for (pack, len) in lengths {
            let _ = self.pack_index.insert(pack.to_be_bytes(), &len.to_le_bytes());
        }
        Ok(staged.iter().map(|id| if synced.contains_key(id) || self.has(id) { Ok(()) } else { Err(Error::Missing { id: *id }) }).collect())
    }

    /// Store bytes whose id the caller just computed; returns whether the chunk was new.
    pub(crate) fn put_new(&self, id: &ChunkId, bytes: &[u8]) -> Result<bool> {
        if bytes.len() > limits::MAX_CHUNK {
            return Err(Error::ChunkTooLarge { len: bytes.len(), limit: limits::MAX_CHUNK });
        }
        if self.has(id) {
            return Ok(false);
        }
        self.files.write(id, bytes, self.durable.load(std::sync::atomic::Ordering::Relaxed))?;
        self.index_chunk(id, bytes.len());
        Ok(true)
    }

    /// Record a stored chunk in the index, best effort. The chunk file is the truth and the
    /// index a cache of it ([`Store::has`] adopts a verified file the index does not know):
    /// after sled fails to write its own log (a full disk) it refuses every later write until
    /// it is reopened, and the store must go on storing chunk files meanwhile.
    fn index_chunk(&self, id: &ChunkId, len: usize) {
        if let Err(e) = self.chunk_index.insert(id.as_bytes(), &(len as u32).to_le_bytes())
            && !self.index_failed.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(error = %e, "the index refuses writes; chunks are still stored and found from their files until the next start");
        }
    }

    /// Record a packed chunk in the index; when the index refuses (a full disk), remember it
    /// in memory until the next start adopts it from its pack.
    fn index_packed(&self, id: &ChunkId, loc: Loc) {
        if let Some(d) = lock(&self.degraded).as_mut() {
            d.insert(*id, loc);
        }
        if let Err(e) = self.chunk_index.insert(id.as_bytes(), &loc.encode()) {
            lock(&self.unindexed).insert(*id, loc);
            if !self.index_failed.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(error = %e, "the index refuses writes; chunks are still stored and found until the next start");
            }
        }
    }

    /// Read a chunk, verified. A damaged chunk is quarantined, forgotten, and reported absent so
    /// it is fetched again; it is never returned.
    pub fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        // One index lookup per read (a seed serves every chunk through here).
        let indexed = match self.lookup(id) {
            Lookup::Packed(loc) => return self.get_packed(id, &loc),
            Lookup::File => true,
            Lookup::Unknown => false,
        };
        match self.files.read(id)? {
            ChunkRead::Ok(b) => {
                if !indexed {
                    self.index_chunk(id, b.len());
                }
                Ok(Some(b))
            }
            ChunkRead::Absent | ChunkRead::Damaged => {
                // Best effort: an index that refuses writes (see `degraded`) keeps the entry until
                // the next start (the chunk reads as missing meanwhile); an error here would stop
                // every fetch that walks past the chunk.
                if indexed {
                    let _ = self.chunk_index.remove(id.as_bytes());
                }
                Ok(None)
            }
        }
    }

    /// Read a chunk to answer a peer that verifies every chunk it receives: as [`Store::get`],
    /// except that a packed chunk whose bytes this store verified lately (when it staged them,
    /// or on an earlier read) is not hashed again (see [`recent`] for why this is safe enough
    /// and what it saves). An answer that crosses a metered link should use [`Store::get`].
    pub fn get_for_peer(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        match self.lookup(id) {
            Lookup::Packed(loc) if lock(&self.recent).contains(id) => match self.packs.read(&loc) {
                Ok(b) => Ok(Some(b)),
                // Cut short, gone, unreadable: the verified path says what it is.
                Err(_) => self.get_packed(id, &loc),
            },
            Lookup::Packed(loc) => self.get_packed(id, &loc),
            Lookup::File | Lookup::Unknown => self.get(id),
        }
    }

    /// Read a packed chunk, verified; a damaged one (bytes that do not match, a pack cut short
    /// or gone) is forgotten (what is left of it stays in the pack, unreferenced) and reported
    /// absent so it is fetched again. Any other read error is returned: it says nothing about
    /// the bytes (a process out of file descriptors), and forgetting a good chunk would cost
    /// fetching it again.
    fn get_packed(&self, id: &ChunkId, loc: &Loc) -> Result<Option<Vec<u8>>> {
        use std::io::ErrorKind::{InvalidData, NotFound, UnexpectedEof};
        let why = match self.packs.read(loc) {
            Ok(b) if id.matches(&b) => {
                lock(&self.recent).insert(*id);
                return Ok(Some(b));
            }
            Ok(_) => "its bytes do not match its name".to_owned(),
            Err(e) if matches!(e.kind(), UnexpectedEof | InvalidData | NotFound) => e.to_string(),
            Err(e) => return Err(Error::Io { op: "read", path: self.packs.path(loc.pack), source: e }),
        };
        tracing::warn!(chunk = %id, pack = %self.packs.path(loc.pack).display(), offset = loc.offset, reason = %why, "packed chunk does not match its name; forgotten, will not be served");
        lock(&self.recent).remove(id);
        lock(&self.unindexed).remove(id);
        if let Some(d) = lock(&self.degraded).as_mut() {
            d.remove(id);
        }
        // Best effort: an index that refuses writes forgets it at the next start's adoption
        // check (the record fails its hash again when read).
        let _ = self.chunk_index.remove(id.as_bytes());
        Ok(None)
    }

    /// Where the index says a chunk is; packed chunks the index refused, or cannot tell about
    /// (see `degraded`), are found in memory.
    fn lookup(&self, id: &ChunkId) -> Lookup {
        #[cfg(test)]
        let read = if self.index_reads_fail.load(std::sync::atomic::Ordering::Relaxed) {
            Err(sled::Error::Io(std::io::Error::from_raw_os_error(libc::ENOSPC)))
        } else {
            self.chunk_index.get(id.as_bytes())
        };
        #[cfg(not(test))]
        let read = self.chunk_index.get(id.as_bytes());
        let failed = match read {
            Ok(Some(v)) => return Loc::decode(&v).map_or(Lookup::File, Lookup::Packed),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if let Some(loc) = lock(&self.unindexed).get(id) {
            return Lookup::Packed(*loc);
        }
        let Some(e) = failed else { return Lookup::Unknown };
        let mut d = lock(&self.degraded);
        if d.is_none() {
            tracing::warn!(error = %e, "the index cannot be read; packed chunks are found from the packs' headers until the next start");
            let pending = self.packs.pending();
            let mut found = self.packs.locations().unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot read the packs' headers; their chunks will be fetched again");
                HashMap::new()
            });
            // Staged, not yet synced: found only once committed (then through `unindexed`).
            found.retain(|id, _| !pending.contains(id));
            *d = Some(found);
        }
        d.as_ref().and_then(|m| m.get(id)).map_or(Lookup::Unknown, |l| Lookup::Packed(*l))
    }

    /// Forget and delete a chunk (a packed chunk's bytes stay in its pack, unreferenced).
    pub fn remove(&self, id: &ChunkId) -> Result<()> {
        lock(&self.recent).remove(id);
        lock(&self.unindexed).remove(id);
        self.chunk_index.remove(id.as_bytes())?;
        self.files.remove(id)
    }

    /// Number of chunks in the index.
    pub fn chunk_count(&self) -> usize {
        self.chunk_index.len() + lock(&self.unindexed).len()
    }

    /// Path of a chunk's file (for tools and tests that inspect the store).
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        self.files.path(id)
    }

    /// Record a verified release as its channel's newest: the file first, then the index.
    pub fn record_release(&self, signed: &SignedRelease, body: &ReleaseBody) -> Result<()> {
        let dir = self.root.join("releases").join(body.channel.as_str());
        std::fs::create_dir_all(&dir).map_err(Error::io("create directory", &dir))?;
        fsutil::write_atomic(&dir.join(format!("{:020}.release", body.version)), &signed.encode())?;
        self.release_index.insert(body.channel.as_str(), signed.encode())?;
        self.db.flush()?;
        Ok(())
    }

    /// The newest recorded release of every channel, as stored (callers re-verify).
    pub fn releases(&self) -> Result<Vec<SignedRelease>> {
        let mut out = Vec::new();
        for kv in self.release_index.iter() {
            let (_, v) = kv?;
            out.push(SignedRelease::decode(&v)?);
        }
        Ok(out)
    }

    /// The newest recorded release of `channel`.
    pub fn release(&self, channel: &str) -> Result<Option<SignedRelease>> {
        match self.release_index.get(channel)? {
            Some(v) => Ok(Some(SignedRelease::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// The durable trust state.
    pub fn trust(&self) -> trust::Trust {
        self.trust.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Raise `channel`'s trusted version to `version` (and the time floor to `issued_at`),
    /// durably. Refuses a version that is not newer.
    pub fn raise_trust(&self, channel: &str, version: u64, issued_at: u64) -> Result<()> {
        let mut t = self.trust.lock().map_err(|_| Error::invalid("trust state", "lock poisoned"))?;
        let trusted = t.versions.get(channel).copied().unwrap_or(0);
        if version <= trusted && t.versions.contains_key(channel) {
            return Err(Error::NotNewer { channel: channel.to_owned(), version, trusted });
        }
        let mut next = t.clone();
        next.versions.insert(channel.to_owned(), version);
        next.newest_time = next.newest_time.max(issued_at);
        self.trust_file.save(&next)?;
        *t = next;
        Ok(())
    }

    /// Replace the rotations and the revocation list (already verified by the caller), durably.
    pub fn set_trust_statements(
        &self,
        rotations: Vec<layerhop_protocol::rotation::SignedRotation>,
        revocations: Option<layerhop_protocol::revocation::SignedRevocations>,
    ) -> Result<()> {
        let mut t = self.trust.lock().map_err(|_| Error::invalid("trust state", "lock poisoned"))?;
        let mut next = t.clone();
        next.rotations = rotations;
        next.revocations = revocations;
        self.trust_file.save(&next)?;
        *t = next;
        Ok(())
    }

    /// Flush the index (at shutdown).
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the index knows of a chunk.
enum Lookup {
    /// A chunk file.
    File,
    /// A pack record.
    Packed(Loc),
    /// Nothing (a chunk file may still exist: see [`Store::has`]).
    Unknown,
}
