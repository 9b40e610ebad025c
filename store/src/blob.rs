//! Writing, reading and walking blobs: byte strings stored as trees of chunks.
//!
//! [`BlobWriter`] cuts each file on its own (a file up to 64 KiB is one chunk; larger files
//! go through FastCDC v2020 at 16/64/256 KiB), so a file's chunks depend only on its bytes, never
//! on what precedes it in a layer. [`BlobReader`] streams a blob back in constant memory.
//! [`progress`] finds what a device still lacks, descending only into interior nodes it holds.

use crate::Store;
use crate::error::{Error, Result};
use layerhop_protocol::tree::{self, Entry};
use layerhop_protocol::{BlobRef, ChunkId, limits};
use std::collections::HashSet;
use std::io::Read;

/// Where a [`BlobWriter`] puts its chunks.
#[derive(Clone)]
enum Sink<'a> {
    /// Straight into the store, on the calling thread.
    Store(&'a Store),
    /// To a writer thread (see [`with_writer_thread`]).
    Thread(std::sync::mpsc::SyncSender<(ChunkId, Vec<u8>)>),
}

impl Sink<'_> {
    fn put(&self, id: ChunkId, data: Vec<u8>) -> Result<()> {
        match self {
            Sink::Store(s) => s.put_new(&id, &data).map(|_| ()),
            Sink::Thread(tx) => tx.send((id, data)).map_err(|_| Error::invalid("chunk writer", "stopped early")),
        }
    }
}

/// Run `f` with a chunk writer thread: chunking and hashing stay on the calling thread while
/// chunk files are written on the other core (publish on a 2-core seed was bound by the two
/// in turn). The writer's first error is returned if `f` itself succeeded.
pub fn with_writer_thread<T>(store: &Store, f: impl FnOnce(&mut dyn FnMut() -> BlobWriter<'static>) -> Result<T>) -> Result<T> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(ChunkId, Vec<u8>)>(64);
        let writer = scope.spawn(move || -> Result<()> {
            let mut first_error = None;
            for (id, data) in rx {
                if let Err(e) = store.put_new(&id, &data) {
                    first_error.get_or_insert(e);
                }
            }
            first_error.map_or(Ok(()), Err)
        });
        let mut make = || BlobWriter { sink: Sink::Thread(tx.clone()), tree: tree::Builder::new(), error: None };
        let out = f(&mut make);
        drop(tx);
        let written = writer.join().unwrap_or_else(|_| Err(Error::invalid("chunk writer", "panicked")));
        let out = out?;
        written?;
        Ok(out)
    })
}

/// Builds one blob from files and byte strings appended in order.
pub struct BlobWriter<'a> {
    sink: Sink<'a>,
    tree: tree::Builder,
    error: Option<Error>,
}

impl<'a> BlobWriter<'a> {
    /// Start a blob in `store`, written on the calling thread.
    pub fn new(store: &'a Store) -> Self {
        BlobWriter { sink: Sink::Store(store), tree: tree::Builder::new(), error: None }
    }

    fn put_leaf(&mut self, data: Vec<u8>) -> Result<()> {
        let id = ChunkId::of(&data);
        let len = data.len() as u64;
        self.sink.put(id, data)?;
        let sink = &self.sink;
        let error = &mut self.error;
        self.tree.push(id, len, &mut |nid, bytes| {
            if let Err(e) = sink.put(nid, bytes) {
                error.get_or_insert(e);
            }
        });
        Ok(())
    }

    /// Append `bytes` as one file.
    pub fn add_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() as u64 <= limits::SINGLE_CHUNK_FILE {
            return self.put_leaf(bytes.to_vec());
        }
        self.add_file(&mut &bytes[..], bytes.len() as u64)
    }

    /// Append one file of `size` bytes read from `r`.
    pub fn add_file(&mut self, r: &mut dyn Read, size: u64) -> Result<()> {
        if size == 0 {
            return Ok(());
        }
        if size <= limits::SINGLE_CHUNK_FILE {
            let mut buf = Vec::with_capacity(size as usize);
            r.take(size).read_to_end(&mut buf).map_err(Error::io("read", "file contents"))?;
            if buf.len() as u64 != size {
                return Err(Error::invalid("file contents", format!("ended after {} of {size} bytes", buf.len())));
            }
            return self.put_leaf(buf);
        }
        let mut read = 0u64;
        let cdc = fastcdc::v2020::StreamCDC::new(r.take(size), limits::CDC_MIN as usize, limits::CDC_AVG as usize, limits::CDC_MAX as usize);
        for chunk in cdc {
            let chunk = chunk.map_err(|e| Error::invalid("file contents", e))?;
            read += chunk.length as u64;
            self.put_leaf(chunk.data)?;
        }
        if read != size {
            return Err(Error::invalid("file contents", format!("ended after {read} of {size} bytes")));
        }
        Ok(())
    }

    /// Close the blob and return its root.
    pub fn finish(mut self) -> Result<BlobRef> {
        let sink = &self.sink;
        let error = &mut self.error;
        let root = self.tree.finish(&mut |nid, bytes| {
            if let Err(e) = sink.put(nid, bytes) {
                error.get_or_insert(e);
            }
        });
        match self.error {
            Some(e) => Err(e),
            None => Ok(root),
        }
    }
}

/// Store `bytes` as a blob of one file.
pub fn write_bytes(store: &Store, bytes: &[u8]) -> Result<BlobRef> {
    let mut w = BlobWriter::new(store);
    w.add_bytes(bytes)?;
    w.finish()
}

/// Streams a blob's bytes from the store, checking every length against the tree.
pub struct BlobReader<'a> {
    store: &'a Store,
    /// Interior nodes being walked: entries, next index, height of the entries.
    stack: Vec<(Vec<Entry>, usize, u8)>,
    leaf: Vec<u8>,
    pos: usize,
}

impl<'a> BlobReader<'a> {
    /// Read the blob `r` from `store`.
    pub fn new(store: &'a Store, r: BlobRef) -> Result<Self> {
        tree::check_ref(&r)?;
        let mut me = BlobReader { store, stack: Vec::new(), leaf: Vec::new(), pos: 0 };
        me.enter(Entry { id: r.root, len: r.len }, r.height)?;
        Ok(me)
    }

    fn load(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.store.get(id)?.ok_or(Error::Missing { id: *id })
    }

    fn enter(&mut self, e: Entry, height: u8) -> Result<()> {
        if height == 0 {
            let data = self.load(&e.id)?;
            if data.len() as u64 != e.len {
                return Err(Error::invalid(format!("chunk {}", e.id), format!("holds {} bytes, tree says {}", data.len(), e.len)));
            }
            self.leaf = data;
            self.pos = 0;
            return Ok(());
        }
        let node = self.load(&e.id)?;
        let entries = tree::decode_node(&node, e.len)?;
        self.stack.push((entries, 0, height - 1));
        Ok(())
    }

    /// Move to the next leaf; false at the end.
    fn advance(&mut self) -> Result<bool> {
        loop {
            let Some((entries, next, height)) = self.stack.last_mut() else { return Ok(false) };
            if *next == entries.len() {
                self.stack.pop();
                continue;
            }
            let e = entries[*next];
            let h = *height;
            *next += 1;
            self.enter(e, h)?;
            if h == 0 {
                return Ok(true);
            }
        }
    }
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.leaf.len() {
            if !self.advance().map_err(std::io::Error::other)? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.leaf.len() - self.pos);
        buf[..n].copy_from_slice(&self.leaf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// What a set of blobs needs: the chunks known to be missing now, and byte counts.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    /// Bytes of data chunks in all blobs.
    pub total: u64,
    /// Bytes of data chunks present.
    pub have: u64,
    /// Chunks missing and reachable now (data chunks, and interior nodes whose parent is held).
    pub missing: Vec<ChunkId>,
    /// Chunks present (data chunks and interior nodes), each once.
    pub held: Vec<ChunkId>,
    /// The missing data chunks among `missing`, with their lengths (so a fetch can count the
    /// bytes that land before the next walk).
    pub missing_data: std::collections::HashMap<ChunkId, u64>,
}

impl Progress {
    /// Whether every chunk is present.
    pub fn complete(&self) -> bool {
        self.missing.is_empty() && self.have == self.total
    }
}

/// Walk `blobs` and report what is present and what to fetch next.
pub fn progress(store: &Store, blobs: &[BlobRef]) -> Result<Progress> {
    let mut p = Progress::default();
    let mut seen = HashSet::new();
    let mut stack: Vec<(Entry, u8)> = blobs.iter().map(|b| (Entry { id: b.root, len: b.len }, b.height)).collect();
    for b in blobs {
        tree::check_ref(b)?;
        p.total += b.len;
    }
    while let Some((e, height)) = stack.pop() {
        if height == 0 {
            if store.has(&e.id) {
                p.have += e.len;
                if seen.insert(e.id) {
                    p.held.push(e.id);
                }
            } else if seen.insert(e.id) {
                p.missing.push(e.id);
                p.missing_data.insert(e.id, e.len);
            }
            continue;
        }
        if !store.has(&e.id) {
            if seen.insert(e.id) {
                p.missing.push(e.id);
            }
            continue;
        }
        match store.get(&e.id)? {
            Some(node) => {
                if seen.insert(e.id) {
                    p.held.push(e.id);
                }
                let entries = tree::decode_node(&node, e.len)?;
                stack.extend(entries.into_iter().rev().map(|c| (c, height - 1)));
            }
            None => {
                if seen.insert(e.id) {
                    p.missing.push(e.id);
                }
            }
        }
    }
    Ok(p)
}
