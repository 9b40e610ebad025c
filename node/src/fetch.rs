//! The fetch state of one release on a device: which chunks are wanted and where each request is.
//!
//! A release's chunks are discovered level by level: the release names tree roots; an interior
//! node, once held, names its children. The trees are walked once when a fetch starts (what is
//! held already, what is missing at the top); from then on discovery is incremental: when an
//! interior node lands, the chunk writer walks the subtree below it and its missing children
//! become wants. A whole walk happens again only when nothing is wanted, to confirm completion.
//! (Walking the whole release after every landed chunk made a 20-device site spend most of its
//! CPU re-reading trees.) Where each want comes from (a site peer, the seed, or nobody yet) is
//! decided by the event loop with the [`crate::site::Site`]; this module only keeps the books.
//!
//! Wants not in flight are either *ready* (worth looking at on the next pump, in tree order) or
//! *parked*: waiting for another member to fetch them from the seed. A parked want returns to
//! ready when a member says it holds the chunk, when the site changes (a member joins, leaves or
//! loses its lease), or at the periodic sweep; so a pump looks only at chunks that may move,
//! not at the thousands waiting on a site peer.

use layerhop_protocol::{BlobRef, ChunkId, ReleaseBody, SignedRelease};
use libp2p::PeerId;
use layerhop_protocol::wire::{ShortId, short_id};
use std::collections::{BTreeMap, HashMap, HashSet};
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
#[derive(Debug)]
pub struct Want {
    /// Where it is being fetched from now.
    pub in_flight: Option<Source>,
    /// Peers that answered they do not hold it.
    pub tried: HashSet<PeerId>,
    /// When the seed last answered that it does not hold it.
    pub seed_lacked: Option<Instant>,
    /// Cached fetcher decision, with the site epoch it was made under.
    pub fetcher: Option<(u64, crate::site::Fetcher)>,
    /// The subtree the chunk roots (a data chunk at height 0).
    pub entry: BlobRef,
    /// Its place in fetch order.
    seq: u64,
    /// Waiting for another member to fetch it.
    parked: bool,
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
    /// State of each wanted chunk.
    pub wants: HashMap<ChunkId, Want>,
    /// Wants not in flight nor parked, in fetch order.
    pub ready: BTreeMap<u64, ChunkId>,
    /// Parked wants by short id.
    parked: HashMap<ShortId, ChunkId>,
    /// The site epoch the parked wants were parked under.
    pub parked_epoch: u64,
    next_seq: u64,
    /// Last walk's figures, kept up to date as chunks land (`missing` lives in `wants`).
    pub progress: layerhop_store::blob::Progress,
    /// Whether every chunk is present.
    pub complete: bool,
    /// When the fetch started.
    pub started: Instant,
    /// When it started on the site's watch (the release's age decides who takes part in its
    /// rendezvous, see [`crate::site::Site::fetcher`]).
    pub known_since: crate::site::Moment,
    /// Why the fetch is stuck, if it is.
    pub stalled: Option<String>,
    /// The release is older here than a lease: only members that said they have it take part
    /// in the rendezvous now (see [`crate::site::Site::fetcher`]).
    pub aged: bool,
    /// Chunks that landed since the last state message to site peers.
    pub landed_recently: Vec<ChunkId>,
    /// Chunks that landed (or were found held below a landed node) since the last tree walk.
    pub landed_since_walk: Vec<ChunkId>,
    /// A ready want may have no live holder on the site: false only after a pump's full pass
    /// found none, until a want is added, retried or unparked (see [`crate::schedule`]).
    pub maybe_unheld: bool,
    /// The site epoch and time of that full pass.
    pub full_pass: Option<(u64, Instant)>,
}

impl Fetch {
    /// A fetch of `body`.
    pub fn new(known_since: crate::site::Moment, signed: SignedRelease, body: ReleaseBody) -> Self {
        let blobs = body.artifacts.iter().flat_map(|a| a.content.blobs()).collect();
        Fetch {
            signed,
            body,
            blobs,
            wants: HashMap::new(),
            ready: BTreeMap::new(),
            parked: HashMap::new(),
            parked_epoch: 0,
            next_seq: 0,
            progress: Default::default(),
            complete: false,
            started: Instant::now(),
            known_since,
            stalled: None,
            aged: false,
            landed_recently: Vec::new(),
            landed_since_walk: Vec::new(),
            maybe_unheld: true,
            full_pass: None,
        }
    }

    /// The release's key as site peers name it.
    pub fn key(&self) -> (String, u64) {
        (self.body.channel.as_str().to_owned(), self.body.version)
    }

    /// Take the result of a tree walk: every missing chunk is wanted (keeping the state of
    /// those already wanted), and every want not in flight is ready.
    pub fn refill(&mut self, mut p: layerhop_store::blob::Progress) {
        self.complete = p.complete();
        let mut old = std::mem::take(&mut self.wants);
        self.ready.clear();
        self.parked.clear();
        for r in std::mem::take(&mut p.missing) {
            if self.wants.contains_key(&r.root) {
                continue;
            }
            let mut w = old.remove(&r.root).unwrap_or_else(|| Want {
                in_flight: None,
                tried: HashSet::new(),
                seed_lacked: None,
                fetcher: None,
                entry: r,
                seq: 0,
                parked: false,
            });
            w.seq = self.next_seq;
            self.next_seq += 1;
            w.parked = false;
            if w.in_flight.is_none() {
                self.ready.insert(w.seq, r.root);
            }
            self.wants.insert(r.root, w);
        }
        self.landed_since_walk.clear();
        self.progress = p;
        self.maybe_unheld = true;
    }

    fn add_want(&mut self, r: BlobRef) {
        if self.wants.contains_key(&r.root) {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ready.insert(seq, r.root);
        self.maybe_unheld = true;
        self.wants.insert(r.root, Want { in_flight: None, tried: HashSet::new(), seed_lacked: None, fetcher: None, entry: r, seq, parked: false });
    }

    /// Wait for another member to fetch `id`.
    pub fn park(&mut self, id: ChunkId) {
        if let Some(w) = self.wants.get_mut(&id)
            && w.in_flight.is_none()
            && !w.parked
        {
            w.parked = true;
            self.ready.remove(&w.seq);
            self.parked.insert(short_id(&id), id);
        }
    }

    /// Look at these parked chunks again (a member says it holds them).
    pub fn unpark(&mut self, ids: &[ShortId]) {
        for s in ids {
            if let Some(id) = self.parked.remove(s)
                && let Some(w) = self.wants.get_mut(&id)
            {
                w.parked = false;
                self.ready.insert(w.seq, id);
                self.maybe_unheld = true;
            }
        }
    }

    /// Look at every parked chunk again.
    pub fn unpark_all(&mut self) {
        for (_, id) in self.parked.drain() {
            if let Some(w) = self.wants.get_mut(&id) {
                w.parked = false;
                self.ready.insert(w.seq, id);
                self.maybe_unheld = true;
            }
        }
    }

    /// How many wants wait for another member.
    pub fn parked_count(&self) -> usize {
        self.parked.len()
    }

    /// Whether only a whole walk can tell what is next: nothing is wanted but the release is
    /// not known to be complete.
    pub fn needs_walk(&self) -> bool {
        !self.complete && self.stalled.is_none() && self.wants.is_empty()
    }

    /// Mark `ids` as requested from `source`.
    pub fn requested(&mut self, ids: &[ChunkId], source: Source) {
        for id in ids {
            if let Some(w) = self.wants.get_mut(id) {
                w.in_flight = Some(source);
                self.ready.remove(&w.seq);
                if w.parked {
                    w.parked = false;
                    self.parked.remove(&short_id(id));
                }
            }
        }
    }

    /// A chunk landed and is stored; `below` is the walk of the subtree under it (for an
    /// interior node): its missing chunks become wanted, in tree order.
    pub fn landed(&mut self, id: ChunkId, below: Option<layerhop_store::blob::Progress>) {
        if let Some(w) = self.wants.remove(&id) {
            self.ready.remove(&w.seq);
            if w.parked {
                self.parked.remove(&short_id(&id));
            }
            if w.entry.height == 0 {
                self.progress.have += w.entry.len;
            }
            self.landed_recently.push(id);
            self.landed_since_walk.push(id);
        }
        if let Some(sub) = below {
            self.progress.have += sub.have;
            for r in sub.missing {
                self.add_want(r);
            }
            // Chunks already held below a new node (unchanged since an earlier release) are new
            // to the site peers' picture of this release.
            for h in sub.held.into_iter().filter(|h| *h != id) {
                self.landed_recently.push(h);
                self.landed_since_walk.push(h);
            }
        }
        self.progress.have = self.progress.have.min(self.progress.total);
    }

    /// The subtree a wanted chunk roots.
    pub fn entry(&self, id: &ChunkId) -> Option<BlobRef> {
        self.wants.get(id).map(|w| w.entry)
    }

    /// A chunk did not arrive (request failed, bad bytes, or the source lacks it): want it
    /// again, not from a peer that lacked it nor, for a while, from a seed that lacked it.
    pub fn retry(&mut self, id: &ChunkId, lacked_by: Option<Source>) {
        if let Some(w) = self.wants.get_mut(id) {
            if w.in_flight.take().is_some() {
                self.ready.insert(w.seq, *id);
            }
            self.maybe_unheld = true;
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

    /// Bytes of data chunks held now (kept up to date as chunks land, see [`Fetch::landed`]).
    pub fn have_now(&self) -> u64 {
        if self.complete { self.progress.total } else { self.progress.have }
    }

    /// Chunks this node is fetching from the seed now.
    pub fn seed_claims(&self) -> impl Iterator<Item = &ChunkId> {
        self.wants.iter().filter(|(_, w)| w.in_flight == Some(Source::Seed)).map(|(id, _)| id)
    }
}
