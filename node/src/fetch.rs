//! The fetch state of one release on a device: which chunks are wanted and where each request is.
//!
//! A release's chunks are discovered level by level: the release names tree roots; an interior
//! node, once held, names its children. So the fetch works in rounds: every chunk known to be
//! missing is wanted; when no want is left in flight, the trees are walked again and reach one
//! level deeper. Tree heights are 1–3 in practice, so a release takes a few rounds. Where each
//! want comes from (a site peer, the seed, or nobody yet) is decided by the event loop with the
//! [`crate::site::Site`]; this module only keeps the books.

use layerhop_protocol::{BlobRef, ChunkId, ReleaseBody, SignedRelease};
use libp2p::PeerId;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// Where a wanted chunk was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A site peer, over the LAN.
    Peer(PeerId),
    /// The seed, over the metered link.
    Seed,
}

/// One wanted chunk.
#[derive(Debug, Default)]
pub struct Want {
    /// Where it is being fetched from now.
    pub in_flight: Option<Source>,
    /// Peers that answered they do not hold it.
    pub tried: HashSet<PeerId>,
    /// When the seed last answered that it does not hold it.
    pub seed_lacked: Option<Instant>,
    /// Cached fetcher decision, with the site epoch and grace flag it was made under.
    pub fetcher: Option<(u64, bool, crate::site::Fetcher)>,
}

/// One release being fetched.
#[derive(Debug)]
pub struct Fetch {
    /// The signed release.
    pub signed: SignedRelease,
    /// Its verified body.
    pub body: ReleaseBody,
    /// Every blob of every artifact.
    pub blobs: Vec<BlobRef>,
    /// Wanted chunks in tree order, with their state.
    pub order: Vec<ChunkId>,
    /// State of each wanted chunk.
    pub wants: HashMap<ChunkId, Want>,
    /// Last walk's figures.
    pub progress: layerhop_store::blob::Progress,
    /// Whether every chunk is present.
    pub complete: bool,
    /// When the fetch started.
    pub started: Instant,
    /// Why the fetch is stuck, if it is.
    pub stalled: Option<String>,
    /// Chunks that landed since the last state message to site peers.
    pub landed_recently: Vec<ChunkId>,
    /// Chunks that landed since the last tree walk.
    pub landed_since_walk: Vec<ChunkId>,
}

impl Fetch {
    /// A fetch of `body`.
    pub fn new(signed: SignedRelease, body: ReleaseBody) -> Self {
        let blobs = body.artifacts.iter().flat_map(|a| a.content.blobs()).collect();
        Fetch {
            signed,
            body,
            blobs,
            order: Vec::new(),
            wants: HashMap::new(),
            progress: Default::default(),
            complete: false,
            started: Instant::now(),
            stalled: None,
            landed_recently: Vec::new(),
            landed_since_walk: Vec::new(),
        }
    }

    /// The release's key as site peers name it.
    pub fn key(&self) -> (String, u64) {
        (self.body.channel.as_str().to_owned(), self.body.version)
    }

    /// Take the result of a tree walk: every missing chunk is wanted (keeping the state of
    /// those already wanted).
    pub fn refill(&mut self, p: layerhop_store::blob::Progress) {
        self.complete = p.complete();
        let mut wants = HashMap::new();
        for id in &p.missing {
            let w = self.wants.remove(id).unwrap_or_default();
            wants.insert(*id, w);
        }
        self.wants = wants;
        self.order = p.missing.clone();
        self.landed_since_walk.clear();
        self.progress = p;
    }

    /// Whether the round is over: nothing wanted is in flight and nothing lands any more.
    pub fn round_done(&self) -> bool {
        self.wants.values().all(|w| w.in_flight.is_none())
    }

    /// Wanted chunks not in flight, in tree order.
    pub fn idle_wants(&self) -> impl Iterator<Item = &ChunkId> {
        self.order.iter().filter(|id| self.wants.get(id).is_some_and(|w| w.in_flight.is_none()))
    }

    /// Mark `ids` as requested from `source`.
    pub fn requested(&mut self, ids: &[ChunkId], source: Source) {
        for id in ids {
            if let Some(w) = self.wants.get_mut(id) {
                w.in_flight = Some(source);
            }
        }
    }

    /// A chunk landed and is stored.
    pub fn landed(&mut self, id: ChunkId) {
        if self.wants.remove(&id).is_some() {
            self.landed_recently.push(id);
            self.landed_since_walk.push(id);
        }
    }

    /// A chunk did not arrive (request failed, bad bytes, or the source lacks it): want it
    /// again, not from a peer that lacked it nor, for a while, from a seed that lacked it.
    pub fn retry(&mut self, id: &ChunkId, lacked_by: Option<Source>) {
        if let Some(w) = self.wants.get_mut(id) {
            w.in_flight = None;
            match lacked_by {
                Some(Source::Peer(p)) => {
                    w.tried.insert(p);
                }
                Some(Source::Seed) => w.seed_lacked = Some(Instant::now()),
                None => {}
            }
        }
    }

    /// Every chunk held now (from the last walk and since).
    pub fn held(&self) -> impl Iterator<Item = &ChunkId> {
        self.progress.held.iter().chain(&self.landed_since_walk)
    }

    /// Bytes of data chunks held now: the last walk's count plus the data chunks landed since
    /// (a walk happens only when a round is over, which for most releases is at the end).
    pub fn have_now(&self) -> u64 {
        if self.complete {
            return self.progress.total;
        }
        let since: u64 = self.landed_since_walk.iter().filter_map(|id| self.progress.missing_data.get(id)).sum();
        (self.progress.have + since).min(self.progress.total)
    }

    /// Chunks this node is fetching from the seed now.
    pub fn seed_claims(&self) -> impl Iterator<Item = &ChunkId> {
        self.wants.iter().filter(|(_, w)| w.in_flight == Some(Source::Seed)).map(|(id, _)| id)
    }
}
