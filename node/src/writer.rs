//! The chunk writer: one thread that decompresses, verifies and stores received chunks in
//! batches, so a batch of up to 64 chunks costs two file-system syncs instead of one fsync each
//! (see the store's `put_batch`), and the event loop never waits on the disk. After an interior
//! tree node is stored, the writer walks the subtree below it, so the fetch learns the node's
//! missing children without reading the disk itself.
//!
//! A full disk is not a bad chunk: the bytes were verified and fetching them again would cost
//! the metered link again. So on ENOSPC/EDQUOT the writer keeps the batch, retries it with
//! backoff (1 s doubling to 30 s) until space returns, and meanwhile publishes the error in
//! [`Writer::disk_full`]; the scheduler sends no new chunk requests while it is set, and
//! `status` reports it as the fetch's `stalled` reason.

use crate::event_loop::Done;
use crate::fetch::Source;
use layerhop_protocol::{BlobRef, ChunkId};
use layerhop_protocol::wire::ChunkReply;
use layerhop_store::Store;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Chunks queued at most; requests in flight bound what can arrive, far below this.
pub(crate) const QUEUE: usize = 8192;
const BATCH: usize = 64;
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// A received chunk on its way to the store.
pub(crate) struct Incoming {
    pub(crate) channel: String,
    pub(crate) id: ChunkId,
    pub(crate) reply: ChunkReply,
    pub(crate) source: Source,
    /// The subtree the chunk roots.
    pub(crate) entry: BlobRef,
}

/// The writer's queue was full (or the thread is gone).
#[derive(Debug)]
pub(crate) struct QueueFull;

/// The event loop's handle on the writer thread.
pub(crate) struct Writer {
    tx: mpsc::Sender<Incoming>,
    disk_full: Arc<Mutex<Option<String>>>,
}

impl Writer {
    /// Queue a chunk without waiting; fails (dropping it) when the queue is full.
    pub(crate) fn try_send(&self, x: Incoming) -> Result<(), QueueFull> {
        self.tx.try_send(x).map_err(|_| QueueFull)
    }

    /// The disk-full error the writer is waiting out, if it is.
    pub(crate) fn disk_full(&self) -> Option<String> {
        self.disk_full.lock().map(|g| g.clone()).unwrap_or_else(|e| e.into_inner().clone())
    }
}

fn set(flag: &Mutex<Option<String>>, v: Option<String>) {
    *flag.lock().unwrap_or_else(|e| e.into_inner()) = v;
}

/// Store `good`, waiting out a full disk: returns one result per chunk, none of them disk-full.
fn store_batch(store: &Store, good: &[(ChunkId, Vec<u8>)], flag: &Mutex<Option<String>>) -> Vec<Result<(), String>> {
    let mut results: Vec<Result<(), layerhop_store::Error>> = store.put_batch(good);
    let mut delay = FIRST_RETRY;
    loop {
        let full: Vec<usize> = (0..results.len()).filter(|&i| results[i].as_ref().is_err_and(|e| e.is_disk_full())).collect();
        let Some(&first) = full.first() else { break };
        let why = results[first].as_ref().err().map(|e| e.to_string()).unwrap_or_default();
        let was_full = flag.lock().map(|g| g.is_some()).unwrap_or(true);
        if !was_full {
            tracing::error!(error = %why, chunks = full.len(), "disk full: holding verified chunks and pausing fetches until space returns");
        }
        set(flag, Some(format!("disk full, waiting for space: {why}")));
        std::thread::sleep(delay);
        delay = (delay * 2).min(MAX_RETRY);
        let again: Vec<(ChunkId, Vec<u8>)> = full.iter().map(|&i| good[i].clone()).collect();
        for (i, r) in full.into_iter().zip(store.put_batch(&again)) {
            results[i] = r;
        }
    }
    if flag.lock().map(|g| g.is_some()).unwrap_or(false) {
        tracing::info!("disk space returned; writing chunks again");
        set(flag, None);
    }
    results.into_iter().map(|r| r.map_err(|e| e.to_string())).collect()
}

/// Start the writer thread; it stops when every sender is dropped.
pub(crate) fn spawn(store: Arc<Store>, done: mpsc::Sender<Done>) -> std::io::Result<Writer> {
    let (tx, mut rx) = mpsc::channel::<Incoming>(QUEUE);
    let disk_full = Arc::new(Mutex::new(None));
    let flag = disk_full.clone();
    std::thread::Builder::new().name("chunk-writer".into()).spawn(move || {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(x) => batch.push(x),
                    Err(_) => break,
                }
            }
            let mut good = Vec::new();
            let mut meta = Vec::new();
            for x in batch {
                match crate::codec::decompress(x.reply) {
                    Some(Ok(bytes)) => {
                        good.push((x.id, bytes));
                        meta.push((x.channel, x.id, x.source, x.entry));
                    }
                    Some(Err(e)) => {
                        let result = Err(format!("undecodable compressed chunk: {e}"));
                        let _ = done.blocking_send(Done::Stored { channel: x.channel, id: x.id, result, source: x.source, below: None });
                    }
                    None => {}
                }
            }
            let results = store_batch(&store, &good, &flag);
            for ((channel, id, source, entry), result) in meta.into_iter().zip(results) {
                let below = (result.is_ok() && entry.height > 0).then(|| layerhop_store::blob::progress(&store, &[entry]).map_err(|e| e.to_string()));
                let _ = done.blocking_send(Done::Stored { channel, id, result, source, below });
            }
        }
    })?;
    Ok(Writer { tx, disk_full })
}
