//! The chunk writer: one thread that decompresses, verifies and stores received chunks in
//! batches, so a batch of up to 64 chunks costs two file-system syncs instead of one fsync each
//! (see the store's `put_batch`), and the event loop never waits on the disk. After an interior
//! tree node is stored, the writer walks the subtree below it, so the fetch learns the node's
//! missing children without reading the disk itself.

use crate::event_loop::Done;
use crate::fetch::Source;
use layerhop_protocol::{BlobRef, ChunkId};
use layerhop_protocol::wire::ChunkReply;
use layerhop_store::Store;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Chunks queued at most; requests in flight bound what can arrive, far below this.
pub(crate) const QUEUE: usize = 8192;
const BATCH: usize = 64;

/// A received chunk on its way to the store.
pub(crate) struct Incoming {
    pub(crate) channel: String,
    pub(crate) id: ChunkId,
    pub(crate) reply: ChunkReply,
    pub(crate) source: Source,
    /// The subtree the chunk roots.
    pub(crate) entry: BlobRef,
}

/// Start the writer thread; it stops when every sender is dropped.
pub(crate) fn spawn(store: Arc<Store>, done: mpsc::Sender<Done>) -> std::io::Result<mpsc::Sender<Incoming>> {
    let (tx, mut rx) = mpsc::channel::<Incoming>(QUEUE);
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
            let results = store.put_batch(&good);
            for ((channel, id, source, entry), r) in meta.into_iter().zip(results) {
                let result = r.map_err(|e| e.to_string());
                let below = (result.is_ok() && entry.height > 0).then(|| layerhop_store::blob::progress(&store, &[entry]).map_err(|e| e.to_string()));
                let _ = done.blocking_send(Done::Stored { channel, id, result, source, below });
            }
        }
    })?;
    Ok(tx)
}
