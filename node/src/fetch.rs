//! The fetch state of one release on a device: what to ask for next and what is in flight.
//!
//! A release's chunks are discovered level by level: the release names tree roots; an interior
//! node, once held, names its children. So the fetch works in rounds: take every chunk known to
//! be missing, fetch them all (many requests in flight), then walk the trees again, which now
//! reach one level deeper. Tree heights are 1–3 in practice, so a release takes a few rounds.
//! Requests that fail put their chunks back in the queue; chunks the source lacks are retried
//! on the next round tick.

use layerhop_protocol::{BlobRef, ChunkId, ReleaseBody, SignedRelease, limits};
use std::collections::{HashSet, VecDeque};
use std::time::Instant;

/// One release being fetched.
#[derive(Debug)]
pub struct Fetch {
    /// The signed release.
    pub signed: SignedRelease,
    /// Its verified body.
    pub body: ReleaseBody,
    /// Every blob of every artifact.
    pub blobs: Vec<BlobRef>,
    queue: VecDeque<ChunkId>,
    in_flight: HashSet<ChunkId>,
    /// Last walk's figures.
    pub progress: layerhop_store::blob::Progress,
    /// Whether every chunk is present.
    pub complete: bool,
    /// Chunks the source answered as missing in this round.
    pub unavailable: HashSet<ChunkId>,
    /// When the fetch started.
    pub started: Instant,
    /// Why the fetch is stuck, if it is.
    pub stalled: Option<String>,
}

impl Fetch {
    /// A fetch of `body`.
    pub fn new(signed: SignedRelease, body: ReleaseBody) -> Self {
        let blobs = body.artifacts.iter().flat_map(|a| a.content.blobs()).collect();
        Fetch {
            signed,
            body,
            blobs,
            queue: VecDeque::new(),
            in_flight: HashSet::new(),
            progress: Default::default(),
            complete: false,
            unavailable: HashSet::new(),
            started: Instant::now(),
            stalled: None,
        }
    }

    /// Take the result of a tree walk: queue every missing chunk not already in flight.
    pub fn refill(&mut self, p: layerhop_store::blob::Progress) {
        self.complete = p.complete();
        self.queue = p.missing.iter().filter(|id| !self.in_flight.contains(id)).copied().collect();
        self.unavailable.clear();
        self.progress = p;
    }

    /// Whether the round is over: nothing queued, nothing in flight.
    pub fn round_done(&self) -> bool {
        self.queue.is_empty() && self.in_flight.is_empty()
    }

    /// The next batch to request.
    pub fn next_batch(&mut self) -> Option<Vec<ChunkId>> {
        let mut ids = Vec::new();
        while ids.len() < limits::MAX_IDS_PER_REQUEST {
            let Some(id) = self.queue.pop_front() else { break };
            if self.in_flight.insert(id) {
                ids.push(id);
            }
        }
        (!ids.is_empty()).then_some(ids)
    }

    /// A chunk landed (or was found damaged, `ok == false`, and goes back in the queue).
    pub fn landed(&mut self, id: ChunkId, ok: bool) {
        if self.in_flight.remove(&id) && !ok {
            self.queue.push_back(id);
        }
    }

    /// The source does not hold `id` now.
    pub fn unavailable(&mut self, id: ChunkId) {
        self.in_flight.remove(&id);
        self.unavailable.insert(id);
    }

    /// A request failed: its chunks go back in the queue.
    pub fn failed(&mut self, ids: &[ChunkId]) {
        for id in ids {
            if self.in_flight.remove(id) {
                self.queue.push_back(*id);
            }
        }
    }

    /// Chunks in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}
