//! The chunk writer: two threads between the network and the disk, so the event loop never
//! waits on the disk and the network never waits for a flush.
//!
//! - `chunk-writer` decompresses and verifies each received chunk and stages it (the store's
//!   `stage_many`: appended to a pack file, what its queue holds in one write, see
//!   [`BATCH_BYTES`]), then tells the event loop how
//!   many chunks left its queue ([`Done::Staged`]): the scheduler's backpressure counts only
//!   chunks waiting here, in memory, which are also all a `kill -9` can lose (staged chunks are
//!   adopted from their pack at the next start).
//! - `chunk-syncer` gathers staged chunks into a round, makes the round durable with one
//!   `fdatasync` of the pack and indexes it (`commit_staged`), and reports each chunk
//!   ([`Done::Stored`]). A round takes what is staged, then what follows while chunks keep
//!   coming: it closes at [`ROUND_BYTES`], when the flow pauses ([`ROUND_GAP`]) or when its
//!   first chunk has waited [`ROUND_WAIT`]; at most [`STAGED_MAX`] chunks wait besides (page
//!   cache, and what a power cut can cost again).
//!
//! Why rounds: each `fdatasync` of an appended pack commits ext4's journal and flushes the
//! disk's cache. Taking only what arrived during the previous sync as the next round made
//! ~1,530 rounds of ~0.7 MiB for a 1 GiB release on the LAN bench; gathered, 69. Measured in
//! that bench (`--compare`, runs of two builds alternating): receiver CPU 1.85 s against
//! 2.00 s (medians of five), the time within the host's noise (1.82 s against 1.86 s); rounds
//! of 8 MiB cost more CPU (1.53 s against 1.40 s) for the same time; waiting 25 ms rather
//! than 100 ms (what a relay adds per hop) changed neither, and `fleet-200` converged as
//! before (79.5-82.9 s against 80.1-81.2 s for the build before rounds, back to back). A
//! pause of 5 ms rather than 1 ms held every slow flow's chunk that long before its sync:
//! sites of 50 (`fleet` 5x50) converged in 244-253 s against 205-214 s for the build before
//! rounds, and fetched 2-3 chunks twice from the seed; with 1 ms, 191-193 s and none twice,
//! the LAN bench unchanged (1.48 s against 1.50 s, medians of four).
//!
//! Hashing on a thread of its own, ahead of the writer (so a core stalled in the copy into the
//! page cache does not hold up the hashing), was tried: 1.37 s against 1.35 s on the LAN bench
//! (`--compare`, medians of five), within the host's noise, and not kept. Hashing a lane's
//! chunks on the lane's task as each is decrypted (its bytes then in that core's cache, the
//! writer staging them without hashing again) was tried too: in a profile of the receiving
//! node (two runs of each build, 2000 Hz) BLAKE3 took 385-389 samples against 505-526, but the
//! copy into the page cache, now reading bytes another core had written, 654-741 against
//! 270-282; fetch 1.22 s against 1.24 s, receiver CPU 1.21 s against 1.24 s (`--compare`,
//! medians of ten). A chunk crosses from the reading core to the writing one either way, and
//! BLAKE3 pays that crossing more cheaply than the kernel's copy does; not kept. Nor staging
//! each chunk on the lane's task as it is read, so that one thread reads, decrypts, verifies
//! and writes it with no crossing at all: fetch 1.44 s against 1.21 s, receiver CPU 1.36 s
//! against 1.22 s (`--compare`, medians of five) — the lane's reading then waits on each
//! write, and the pipeline across threads is worth more than the crossing it costs.
//!
//! One message per staged chunk to the syncer, and per stored chunk to the event loop, wakes
//! another thread each time; sending each batch as one message halved the writer's and the
//! syncer's context switches (4,513 and 4,889 against 2,181 and 2,302 in one fetch of 1 GiB)
//! but changed neither the LAN bench (1.24 s against 1.19 s, medians of five) nor `fleet-200`
//! (79.2 and 82.9 s against 74.2 and 79.2 s), so the simpler form stays.
//!
//! After an interior tree node is stored, the syncer walks the subtree below it, so the fetch
//! learns the node's missing children without reading the disk itself. Measured on the LAN
//! bench (256 MiB, two nodes on one 2-core host): batches of 64 chunks with two syncs each,
//! the network idle meanwhile, gave 45–66 MiB/s.
//!
//! A full disk is not a bad chunk: the bytes were verified and fetching them again would cost
//! the metered link again. So on ENOSPC/EDQUOT the writer keeps the chunk, retries it with
//! backoff (1 s doubling to 30 s) until space returns, and meanwhile publishes the error in
//! [`Writer::disk_full`]; the scheduler sends no new chunk requests while it is set, and
//! `status` reports it as the fetch's `stalled` reason.

use crate::event_loop::Done;
use crate::fetch::Source;
use crate::incompressible::Incompressible;
use layerhop_protocol::{BlobRef, ChunkId};
use layerhop_protocol::wire::ChunkReply;
use layerhop_store::Store;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Chunks queued at most; requests in flight bound what can arrive, far below this.
pub(crate) const QUEUE: usize = 8192;
/// Staged chunks waiting for the syncer besides its round (the writer waits beyond): up to
/// 128 MiB of 256 KiB chunks, 32 MiB at the average chunk size — room for what arrives while
/// a round of [`ROUND_BYTES`] is synced.
const STAGED_MAX: usize = 512;
/// A sync round closes once it holds this many bytes...
const ROUND_BYTES: usize = 32 << 20;
/// ...or no chunk was staged for this long (the flow paused or ended)...
const ROUND_GAP: Duration = Duration::from_millis(1);
/// ...or its first chunk has waited this long: what a peer waits, beyond the transfer, to
/// hear a chunk landed here.
const ROUND_WAIT: Duration = Duration::from_millis(25);
/// The writer stages what its queue holds, up to this many bytes (or [`BATCH_CHUNKS`]), with
/// one write (see `layerhop_store::Store::stage_many`): fewer, larger writes cost the kernel
/// less, and each chunk is still in the core's cache when it is copied after being hashed.
/// Measured on the LAN bench (1 GiB, runs alternating between builds): a write per chunk took
/// a median of 1.62-1.65 s, batches of 120-350 KB 1.50 s (receiver CPU 1.50 s against 1.65 s);
/// batches of 1 MiB 2.1-2.6 s, with the kernel's copy into the page cache five times as
/// costly (likely, not verified: a whole batch hashed before any of it is copied has left the
/// core's 1 MiB L2 cache). The size of each write alone matters on the development VM too:
/// `dd` writing 1 GiB into the page cache, eight rounds each (files deleted in between), took
/// 0.22-0.26 s in 256 KiB writes (one slow round aside), 0.21-0.51 s in 512 KiB writes and
/// 0.20-0.86 s in 1 MiB writes, 80 KiB ones 0.30-0.38 s.
const BATCH_BYTES: usize = 256 << 10;
const BATCH_CHUNKS: usize = 64;
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// A failed sync is retried after this (nothing was named; the staged files stay).
const SYNC_RETRY: Duration = Duration::from_millis(200);

/// A received chunk on its way to the store.
pub(crate) struct Incoming {
    pub(crate) channel: String,
    pub(crate) id: ChunkId,
    pub(crate) reply: ChunkReply,
    pub(crate) source: Source,
    /// The subtree the chunk roots.
    pub(crate) entry: BlobRef,
}

/// A staged chunk waiting for its sync.
struct Staged {
    channel: String,
    id: ChunkId,
    len: usize,
    /// It came uncompressed: its sender found it does not pay for compression.
    raw: bool,
    source: Source,
    entry: BlobRef,
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

/// Stage a batch, waiting out a full disk: per chunk Ok(true) staged, Ok(false) held
/// already, or why it was refused; `Err` when the write failed otherwise (none was staged).
fn stage(store: &Store, batch: &[(ChunkId, &[u8])], flag: &Mutex<Option<String>>) -> Result<Vec<Result<bool, layerhop_store::Error>>, layerhop_store::Error> {
    let mut delay = FIRST_RETRY;
    let mut refused = 0u64;
    loop {
        match store.stage_many(batch) {
            Err(e) if e.is_disk_full() => {
                refused += 1;
                let was_full = flag.lock().map(|g| g.is_some()).unwrap_or(true);
                if !was_full {
                    tracing::error!(error = %e, "disk full: holding verified chunks and pausing fetches until space returns");
                }
                // How many writes were refused tells an operator (and a test) that the writer
                // is still trying, and how long it has.
                set(flag, Some(format!("disk full, waiting for space (writes refused: {refused}): {e}")));
                std::thread::sleep(delay);
                delay = (delay * 2).min(MAX_RETRY);
            }
            r => {
                if delay != FIRST_RETRY {
                    tracing::info!("disk space returned; writing chunks again");
                    set(flag, None);
                }
                return r;
            }
        }
    }
}

/// Start the writer and syncer threads; they stop when every sender is dropped.
pub(crate) fn spawn(store: Arc<Store>, done: mpsc::Sender<Done>, incompressible: Arc<Incompressible>) -> std::io::Result<Writer> {
    let (tx, mut rx) = mpsc::channel::<Incoming>(QUEUE);
    let (staged_tx, staged_rx) = std::sync::mpsc::sync_channel::<Staged>(STAGED_MAX);
    let disk_full = Arc::new(Mutex::new(None));
    let flag = disk_full.clone();
    let (w_store, w_done) = (store.clone(), done.clone());
    std::thread::Builder::new().name("chunk-writer".into()).spawn(move || {
        // Chunks taken from the queue and not yet reported as such: told in one message once
        // the queue is empty (or every 16), not one per chunk.
        let mut left = 0;
        let mut batch: Vec<(Staged, Vec<u8>)> = Vec::with_capacity(BATCH_CHUNKS);
        loop {
            // What the queue holds, up to a batch; waiting only when it is empty.
            let mut bytes = 0;
            while batch.len() < BATCH_CHUNKS && bytes < BATCH_BYTES {
                let x = match rx.try_recv() {
                    Ok(x) => x,
                    Err(_) if !batch.is_empty() => break,
                    Err(_) => {
                        if left > 0 {
                            let _ = w_done.blocking_send(Done::Staged(std::mem::take(&mut left)));
                        }
                        match rx.blocking_recv() {
                            Some(x) => x,
                            None => return,
                        }
                    }
                };
                left += 1;
                let Incoming { channel, id, reply, source, entry } = x;
                let raw = matches!(reply, ChunkReply::Raw(_));
                match crate::codec::decompress(reply) {
                    Some(Ok(b)) => {
                        bytes += b.len();
                        batch.push((Staged { channel, id, len: b.len(), raw, source, entry }, b));
                    }
                    Some(Err(e)) => {
                        let result = Err(format!("undecodable compressed chunk: {e}"));
                        let _ = w_done.blocking_send(Done::Stored { channel, id, result, source, below: None });
                    }
                    None => {}
                }
            }
            if left >= 16 {
                let _ = w_done.blocking_send(Done::Staged(std::mem::take(&mut left)));
            }
            let items: Vec<(ChunkId, &[u8])> = batch.iter().map(|(x, b)| (x.id, b.as_slice())).collect();
            let results = stage(&w_store, &items, &flag);
            drop(items);
            let results: Vec<Result<bool, String>> = match results {
                Ok(r) => r.into_iter().map(|r| r.map_err(|e| e.to_string())).collect(),
                Err(e) => vec![Err(e.to_string()); batch.len()],
            };
            for ((x, _), r) in batch.drain(..).zip(results) {
                if r.is_ok() && x.raw {
                    incompressible.note(x.id);
                }
                match r {
                    Ok(true) => {
                        if staged_tx.send(x).is_err() {
                            return;
                        }
                    }
                    // Held already (it landed from elsewhere): stored, nothing to sync.
                    Ok(false) => report(&w_store, &w_done, x.channel, x.id, Ok(()), x.source, x.entry),
                    Err(e) => report(&w_store, &w_done, x.channel, x.id, Err(e), x.source, x.entry),
                }
            }
        }
    })?;
    std::thread::Builder::new().name("chunk-syncer".into()).spawn(move || {
        while let Ok(first) = staged_rx.recv() {
            let round = gather(&staged_rx, first);
            let ids: Vec<ChunkId> = round.iter().map(|s| s.id).collect();
            let mut delay = SYNC_RETRY;
            let results = loop {
                match store.commit_staged(&ids) {
                    Ok(r) => break r,
                    Err(e) => {
                        if delay == SYNC_RETRY {
                            tracing::error!(error = %e, chunks = ids.len(), "cannot sync staged chunks; trying again");
                        }
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(MAX_RETRY);
                    }
                }
            };
            for (s, r) in round.into_iter().zip(results) {
                report(&store, &done, s.channel, s.id, r.map_err(|e| e.to_string()), s.source, s.entry);
            }
        }
    })?;
    Ok(Writer { tx, disk_full })
}

/// A sync round: `first` and what follows it, until the round is full, the flow pauses or
/// the first has waited long enough (see [`ROUND_BYTES`]).
fn gather(rx: &std::sync::mpsc::Receiver<Staged>, first: Staged) -> Vec<Staged> {
    let opened = Instant::now();
    let mut bytes = first.len;
    let mut round = vec![first];
    while bytes < ROUND_BYTES
        && let Ok(x) = rx.try_recv()
    {
        bytes += x.len;
        round.push(x);
    }
    while bytes < ROUND_BYTES {
        let left = ROUND_WAIT.saturating_sub(opened.elapsed());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(ROUND_GAP.min(left)) {
            Ok(x) => {
                bytes += x.len;
                round.push(x);
            }
            Err(_) => break,
        }
    }
    round
}

/// Tell the event loop a chunk is stored (or why not), with the walk below an interior node.
fn report(store: &Store, done: &mpsc::Sender<Done>, channel: String, id: ChunkId, result: Result<(), String>, source: Source, entry: BlobRef) {
    let below = (result.is_ok() && entry.height > 0).then(|| layerhop_store::blob::progress(store, &[entry]).map_err(|e| e.to_string()));
    let _ = done.blocking_send(Done::Stored { channel, id, result, source, below });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(n: u8, len: usize) -> Staged {
        let id = ChunkId::from_bytes([n; 32]);
        Staged { channel: "c".into(), id, len, raw: true, source: Source::Seed, entry: BlobRef { root: id, len: len as u64, height: 0 } }
    }

    #[test]
    fn a_round_takes_what_is_staged_and_ends_when_the_writer_does() {
        let (tx, rx) = std::sync::mpsc::sync_channel(STAGED_MAX);
        for n in 1..=3 {
            tx.send(staged(n, 1000)).expect("send");
        }
        drop(tx);
        let first = rx.recv().expect("first");
        let ids: Vec<u8> = gather(&rx, first).iter().map(|s| s.id.as_bytes()[0]).collect();
        assert_eq!(ids, [1, 2, 3]);
    }

    #[test]
    fn a_round_closes_at_its_byte_bound_and_leaves_the_rest_for_the_next() {
        let (tx, rx) = std::sync::mpsc::sync_channel(STAGED_MAX);
        let big = ROUND_BYTES / 4;
        for n in 1..=6 {
            tx.send(staged(n, big)).expect("send");
        }
        let first = rx.recv().expect("first");
        let round = gather(&rx, first);
        assert_eq!(round.len(), 4, "four chunks of a quarter of the bound fill a round");
        let next = gather(&rx, rx.recv().expect("next"));
        assert_eq!(next.iter().map(|s| s.id.as_bytes()[0]).collect::<Vec<_>>(), [5, 6]);
        drop(tx);
    }
}
