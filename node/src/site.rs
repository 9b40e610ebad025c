//! The site: which LAN peers are members, what each holds and claims, and who fetches what
//! from the seed.
//!
//! The rule that keeps a site's metered bytes near one copy of the new data: a chunk that no
//! member holds is fetched from the seed by exactly one member — the live member with an uplink
//! that wins a rendezvous hash of (chunk, peer id) — and the others wait and take it over the
//! LAN. Members tell each other what they hold and which chunks they are fetching from the
//! seed (claims) in [`State`] messages, sent when something changes (spaced more widely the
//! larger the site, see `schedule::state_interval`) and at least every third of a lease.
//! A member is live while it is connected, has been heard from within the lease, and — if it
//! says it is waiting on the seed — has made progress within a stall bound *of working uplink*
//! (a lease plus the request timeout, below). A
//! member that leaves, crashes or stalls therefore drops out, and the rendezvous hands its
//! chunks to the next member: nothing waits forever.
//!
//! Why "of working uplink": the members share one uplink. When it goes down, every member's
//! seed downloads stall at once, and nobody can do better than the member that holds a chunk's
//! lease; handing its chunks on only queues a second copy behind the first (the first is in the
//! seed's buffers and crosses the link when it returns). Measured in the netns testbed (a 20 s
//! outage of a 10-device site): comparing each member's last progress with this node's own
//! (the earlier rule) still handed chunks on twice — during the outage, to a node whose last
//! chunk landed a few seconds after the member's (requests queue behind each other on the
//! link), and after it, to the first node whose TCP connection came out of retransmission
//! backoff while the others' had not yet — and the site fetched 413 seed chunks for 211
//! distinct. So [`Site`] keeps an *uplink clock*: the time between consecutive seed chunks
//! landing anywhere on the site (this node or a member), counting only gaps shorter than
//! [`Site::working_window`]; a member's stall is measured on that clock. An outage stops the
//! clock for everyone and its gap never counts; after it, every member gets what was left of
//! its lease (a lease less the working-link time it had already waited before the outage) to
//! resume — with TCP's retransmission backoff, connections come back at different times.
//!
//! Silence is measured on this node's *watch* ([`crate::watch`]), not the wall clock: time
//! its own event loop did not get through its steps is not counted against any member. The
//! same watch ages a release (who takes part in its rendezvous, see [`Site::fetcher`]) and runs
//! the uplink clock above: time not watched is not time the uplink was seen working.
//!
//! The stall bound on that clock is longer than the lease: the lease plus the request timeout
//! ([`Site::with_stall`]). A seed serving a whole fleet at once answers some devices later than
//! others while the site as a whole makes progress; a member whose requests are merely queued
//! at the seed is not stuck, and handing its chunks on fetches them twice (a 5 × 50 fleet on a
//! 2-core host did so ~10,000 times in one release with a 15 s bound).

use layerhop_protocol::{Channel, ChunkId};
use layerhop_protocol::wire::{ShortId, State, short_id};
use libp2p::{Multiaddr, PeerId};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

pub use crate::watch::Moment;
use crate::watch::Watch;

/// Unwatched time discounted from any one silence or age is at most this many leases: a node
/// starved for minutes still hands a dead member's chunks on within three leases of wall time
/// (45 s by default). The longest silence of a live member measured on a starved host was 33 s.
pub const MAX_DISCOUNT_LEASES: u32 = 2;

/// A release, as members name it.
pub type ReleaseKey = (String, u64);

/// What one member holds of one release.
#[derive(Debug, Default)]
pub struct PeerHave {
    /// It holds every chunk.
    pub complete: bool,
    /// Chunks it holds (short ids).
    pub ids: HashSet<ShortId>,
    /// Chunks it is fetching from the seed.
    pub claims: HashSet<ShortId>,
}

impl PeerHave {
    /// Whether it holds the chunk.
    pub fn holds(&self, s: &ShortId) -> bool {
        self.complete || self.ids.contains(s)
    }
}

/// A live member that says what it holds of a release.
pub struct Holder<'a> {
    /// The member.
    pub peer: PeerId,
    /// What it holds of the release.
    pub have: &'a PeerHave,
    /// Chunk requests in flight to it.
    pub in_flight: usize,
}

/// One LAN peer of the same site.
#[derive(Debug)]
pub struct Member {
    /// Where it listens.
    pub addrs: Vec<Multiaddr>,
    /// When it was last heard from.
    pub last_heard: Moment,
    /// Whether it can reach the seed.
    pub uplink: bool,
    /// Its seed-fetch counter, and when that last grew (or it had nothing pending): wall time
    /// for the logs, and the site's uplink clock (see the module docs).
    seed_fetched: u64,
    last_progress: Instant,
    clock_at_progress: Duration,
    seed_pending: u32,
    /// Per release.
    pub haves: HashMap<ReleaseKey, PeerHave>,
    /// Chunk requests in flight to it.
    pub in_flight: usize,
    /// Channels it follows (empty: all), from its hello.
    channels: Vec<Channel>,
}

impl Member {
    fn follows(&self, channel: &str) -> bool {
        self.channels.is_empty() || self.channels.iter().any(|c| c.as_str() == channel)
    }
}

/// The members of this node's site.
#[derive(Debug)]
pub struct Site {
    me: PeerId,
    lease: Duration,
    /// How much working uplink a member waiting on the seed may go without seed progress.
    stall: Duration,
    /// When anyone on the site (this node or a member) last received a chunk from the seed.
    site_progress: Option<Moment>,
    /// How long the site's uplink has been seen working (see the module docs).
    uplink_clock: Duration,
    /// This node's watch ([`Site::watch`]).
    clock: Watch,
    members: HashMap<PeerId, Member>,
    /// Members found not live at the last [`Site::expire`].
    stale: HashSet<PeerId>,
    /// Grows whenever membership or liveness may have changed; fetch decisions cached under an
    /// older epoch are recomputed.
    pub epoch: u64,
}

/// Who should fetch a chunk no member holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fetcher {
    /// This node, from the seed.
    Me,
    /// Another member; wait for it.
    Peer(PeerId),
    /// Nobody can (no member, this one included, has an uplink).
    Nobody,
}

/// Rendezvous score of `peer` for `id`.
pub fn score(id: &ChunkId, peer: &PeerId) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(id.as_bytes());
    h.update(&peer.to_bytes());
    let out = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&out.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

impl Site {
    /// An empty site for node `me`; members expire after `lease` of silence.
    pub fn new(me: PeerId, lease: Duration) -> Self {
        Site {
            me,
            lease,
            stall: lease,
            site_progress: None,
            uplink_clock: Duration::ZERO,
            clock: Watch::new(),
            members: HashMap::new(),
            stale: HashSet::new(),
            epoch: 0,
        }
    }

    /// A member waiting on the seed that made no seed progress for `stall` of working uplink
    /// loses its chunks; default: the lease.
    pub fn with_stall(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    /// This node's event loop takes a step now (called at every step of the loop, before what
    /// woke it is handled): see [`Watch::step`].
    pub fn watch(&mut self, now: Instant) {
        self.clock.step(now);
    }

    /// Now, on this node's watch.
    pub fn moment(&self) -> Moment {
        self.clock.at(Instant::now())
    }

    /// The time watched between `since` and `now` ([`Watch::since`]), discounting at most
    /// [`MAX_DISCOUNT_LEASES`] leases — a node starved for long still notices a member that
    /// died, that much later than on the wall clock.
    pub fn watched_since(&self, since: Moment, now: Instant) -> Duration {
        self.clock.since(since, now, self.lease * MAX_DISCOUNT_LEASES)
    }

    /// A peer proved it is an enrolled member of this site; it follows `channels` (empty: all).
    pub fn join(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, channels: Vec<Channel>) {
        let now = Instant::now();
        let heard = self.moment();
        self.members.insert(
            peer,
            Member {
                addrs,
                last_heard: heard,
                uplink: true,
                seed_fetched: 0,
                last_progress: now,
                clock_at_progress: self.uplink_clock,
                seed_pending: 0,
                haves: HashMap::new(),
                in_flight: 0,
                channels,
            },
        );
        self.epoch += 1;
    }

    /// A member disconnected.
    pub fn leave(&mut self, peer: &PeerId) {
        if self.members.remove(peer).is_some() {
            self.epoch += 1;
        }
    }

    /// Whether `peer` is a member.
    pub fn is_member(&self, peer: &PeerId) -> bool {
        self.members.contains_key(peer)
    }

    /// The members.
    pub fn members(&self) -> impl Iterator<Item = (&PeerId, &Member)> {
        self.members.iter()
    }

    /// A member by id.
    pub fn member_mut(&mut self, peer: &PeerId) -> Option<&mut Member> {
        self.members.get_mut(peer)
    }

    /// Apply a member's state message. Returns, per release, the chunks it newly holds (whole
    /// release: `None`), so chunks waiting on it can be asked for.
    pub fn on_state(&mut self, peer: &PeerId, s: State) -> Vec<(ReleaseKey, Option<Vec<ShortId>>)> {
        let mut news = Vec::new();
        if !self.members.contains_key(peer) {
            return news;
        }
        let now = Instant::now();
        let progressed = self.members.get(peer).is_some_and(|m| s.seed_fetched > m.seed_fetched);
        if progressed {
            self.note_progress(now);
        }
        let clock = self.uplink_clock;
        let heard = self.moment();
        let Some(m) = self.members.get_mut(peer) else { return news };
        m.last_heard = heard;
        if progressed || s.seed_pending == 0 {
            m.last_progress = now;
            m.clock_at_progress = clock;
        }
        if m.uplink != s.uplink {
            self.epoch += 1;
        }
        m.uplink = s.uplink;
        m.seed_fetched = s.seed_fetched;
        m.seed_pending = s.seed_pending;
        for h in s.releases {
            let key = (h.channel.as_str().to_owned(), h.version);
            let is_new = !m.haves.contains_key(&key);
            let have = m.haves.entry(key.clone()).or_default();
            if h.full {
                have.ids.clear();
            }
            if h.complete && !have.complete {
                news.push((key, None));
            } else if !h.ids.is_empty() {
                news.push((key, Some(h.ids.clone())));
            }
            have.complete = h.complete;
            have.ids.extend(h.ids);
            have.claims = h.claims.into_iter().collect();
            if is_new {
                self.epoch += 1;
            }
        }
        news
    }

    /// Any message from `peer` (a request, an answer) shows it is alive: a member busy serving
    /// chunks whose state messages are delayed behind them is not gone.
    pub fn heard(&mut self, peer: &PeerId) {
        let heard = self.moment();
        if let Some(m) = self.members.get_mut(peer) {
            m.last_heard = heard;
        }
    }

    /// `peer` was heard from at `at`, which this node learns only now (a request over a lane,
    /// noted by the lane server): counted unless something later was heard already.
    pub fn heard_at(&mut self, peer: &PeerId, at: Instant) {
        let heard = self.clock.at(at);
        if let Some(m) = self.members.get_mut(peer)
            && at > m.last_heard.at
        {
            m.last_heard = heard;
        }
    }

    /// This node received a chunk from the seed.
    pub fn note_my_progress(&mut self, now: Instant) {
        self.note_progress(now);
    }

    /// Seed progress by anyone: the uplink clock advances by the time since the previous
    /// progress, if that gap was shorter than [`Site::working_window`]; a longer gap is an
    /// outage (or a pause with nothing to fetch) and does not count against anyone.
    fn note_progress(&mut self, now: Instant) {
        if let Some(p) = self.site_progress {
            // Time this node did not watch is not time the uplink was seen working.
            let gap = self.watched_since(p, now);
            if gap < self.working_window() {
                self.uplink_clock += gap;
            }
        }
        let here = self.clock.at(now);
        self.site_progress = Some(self.site_progress.filter(|p| p.at > now).unwrap_or(here));
    }

    /// Two seed chunks landing on the site within this long means its uplink worked between
    /// them: a third of the lease (5 s by default). A gap this long or longer counts for
    /// nothing, so an outage of a few seconds costs no lease, and on a working link the site
    /// lands chunks far more often (10 devices on 20 Mbit/s: every ~30 ms). The price: on a
    /// link so slow that the whole site lands a chunk less often than this, the clock stands
    /// still and a member stuck alone keeps its chunks until its own requests fail (raise
    /// `lease_secs` for such links).
    pub fn working_window(&self) -> Duration {
        self.lease / 3
    }

    /// Note members whose lease ran out (or who came back); returns whether the set of live
    /// members changed.
    pub fn expire(&mut self) -> bool {
        let now = Instant::now();
        let stale: HashSet<PeerId> = self.members.iter().filter(|(_, m)| !self.alive(m, now)).map(|(p, _)| *p).collect();
        let changed = stale != self.stale;
        if changed {
            for p in stale.difference(&self.stale) {
                if let Some(m) = self.members.get(p) {
                    tracing::info!(
                        peer = %p,
                        silent_ms = now.saturating_duration_since(m.last_heard.at).as_millis() as u64,
                        silent_watched_ms = self.watched_since(m.last_heard, now).as_millis() as u64,
                        no_seed_progress_ms = now.duration_since(m.last_progress).as_millis() as u64,
                        of_working_uplink_ms = self.uplink_clock.saturating_sub(m.clock_at_progress).as_millis() as u64,
                        seed_pending = m.seed_pending,
                        "site member lost its lease"
                    );
                }
            }
            for p in self.stale.difference(&stale) {
                tracing::info!(peer = %p, "site member live again");
            }
            self.stale = stale;
            self.epoch += 1;
        }
        changed
    }

    fn alive(&self, m: &Member, now: Instant) -> bool {
        self.watched_since(m.last_heard, now) < self.lease
            && (m.seed_pending == 0 || self.uplink_clock.saturating_sub(m.clock_at_progress) < self.stall)
    }

    /// Whether a member is live now.
    pub fn live(&self, peer: &PeerId) -> bool {
        self.members.get(peer).is_some_and(|m| self.alive(m, Instant::now()))
    }

    /// Live members holding `id` of `release`.
    #[cfg(test)]
    pub fn holders<'a>(&'a self, release: &'a ReleaseKey, id: &ChunkId) -> impl Iterator<Item = Holder<'a>> + 'a {
        let s = short_id(id);
        self.holders_of(release).into_iter().filter(move |h| h.have.holds(&s))
    }

    /// The live members that say what they hold of `release`, looked up once per pump: the
    /// pump asks which of them hold each of up to ~16,000 wanted chunks per GiB, and asking
    /// per chunk which live members hold it read the clock and hashed the release's key every time.
    pub fn holders_of<'a>(&'a self, release: &ReleaseKey) -> Vec<Holder<'a>> {
        let now = Instant::now();
        self.members
            .iter()
            .filter(|(_, m)| self.alive(m, now))
            .filter_map(|(p, m)| Some(Holder { peer: *p, have: m.haves.get(release)?, in_flight: m.in_flight }))
            .collect()
    }

    /// Whether a live member is fetching `id` from the seed now.
    pub fn claimed(&self, release: &ReleaseKey, id: &ChunkId) -> bool {
        let s = short_id(id);
        let now = Instant::now();
        self.members
            .values()
            .any(|m| self.alive(m, now) && m.haves.get(release).is_some_and(|h| h.claims.contains(&s)))
    }

    /// Who fetches `id` from the seed: the highest rendezvous score among this node (if it has
    /// an uplink) and the live members with an uplink that fetch the release — those that said
    /// they have it, and, while the release is younger here than a lease (`known_since`), those
    /// that follow its channel: they heard of it at about the same time and their state is on
    /// the way. Counting only members already heard from made members disagree under load (one
    /// counted a slow member, another not yet) and fetch the same chunk twice; counting
    /// followers forever would wait on a member that refuses the release.
    pub fn fetcher(&self, release: &ReleaseKey, id: &ChunkId, my_uplink: bool, known_since: Moment) -> Fetcher {
        let now = Instant::now();
        let young = self.watched_since(known_since, now) < self.lease;
        let mut best: Option<(u64, Fetcher)> = my_uplink.then(|| (score(id, &self.me), Fetcher::Me));
        for (p, m) in &self.members {
            if !m.uplink || !self.alive(m, now) {
                continue;
            }
            if !(m.haves.contains_key(release) || (young && m.follows(&release.0))) {
                continue;
            }
            let s = score(id, p);
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, Fetcher::Peer(*p)));
            }
        }
        best.map(|(_, f)| f).unwrap_or(Fetcher::Nobody)
    }

    /// How long a member stays live without being heard from.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// A member answered that it does not hold `id` after all.
    pub fn forget(&mut self, peer: &PeerId, release: &ReleaseKey, id: &ChunkId) {
        if let Some(h) = self.members.get_mut(peer).and_then(|m| m.haves.get_mut(release)) {
            h.complete = false;
            h.ids.remove(&short_id(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use layerhop_protocol::Channel;
    use layerhop_protocol::wire::HaveMap;

    /// A release known here for longer than any lease in these tests.
    fn long_ago() -> Moment {
        Moment { at: Instant::now() - Duration::from_secs(60), unwatched: Duration::ZERO }
    }

    fn state(release: &ReleaseKey, ids: Vec<ShortId>, claims: Vec<ShortId>) -> State {
        State {
            uplink: true,
            seed_fetched: 0,
            seed_pending: 0,
            releases: vec![HaveMap {
                channel: Channel::new(&release.0).expect("channel"),
                version: release.1,
                complete: false,
                full: true,
                ids,
                claims,
            }],
        }
    }

    #[test]
    fn every_member_agrees_on_one_fetcher() {
        let peers: Vec<PeerId> = (0..10).map(|_| PeerId::random()).collect();
        let release: ReleaseKey = ("models".into(), 1);
        let sites: Vec<Site> = peers
            .iter()
            .map(|me| {
                let mut s = Site::new(*me, Duration::from_secs(10));
                for p in peers.iter().filter(|p| *p != me) {
                    s.join(*p, vec![], vec![]);
                    s.on_state(p, state(&release, vec![], vec![]));
                }
                s
            })
            .collect();
        let mut per_peer = HashMap::new();
        for i in 0..1000u32 {
            let id = ChunkId::of(&i.to_le_bytes());
            let chosen: Vec<PeerId> = sites
                .iter()
                .zip(&peers)
                .map(|(s, me)| match s.fetcher(&release, &id, true, long_ago()) {
                    Fetcher::Me => *me,
                    Fetcher::Peer(p) => p,
                    Fetcher::Nobody => panic!("nobody"),
                })
                .collect();
            assert!(chosen.iter().all(|c| *c == chosen[0]), "members disagree on chunk {i}");
            *per_peer.entry(chosen[0]).or_insert(0) += 1;
        }
        // The split spreads the work (and the uplinks) over the members.
        assert_eq!(per_peer.len(), 10);
        assert!(per_peer.values().all(|&n| n > 50), "{per_peer:?}");
    }

    #[test]
    fn holders_claims_and_departures() {
        let me = PeerId::random();
        let other = PeerId::random();
        let release: ReleaseKey = ("models".into(), 1);
        let held = ChunkId::of(b"held");
        let claimed = ChunkId::of(b"claimed");
        let mut s = Site::new(me, Duration::from_secs(10));
        s.join(other, vec![], vec![]);
        s.on_state(&other, state(&release, vec![short_id(&held)], vec![short_id(&claimed)]));
        assert_eq!(s.holders(&release, &held).count(), 1);
        assert!(s.claimed(&release, &claimed));
        s.leave(&other);
        assert_eq!(s.holders(&release, &held).count(), 0);
        assert!(!s.claimed(&release, &claimed));
        assert_eq!(s.fetcher(&release, &held, true, long_ago()), Fetcher::Me);
        assert_eq!(s.fetcher(&release, &held, false, long_ago()), Fetcher::Nobody);
    }

    #[test]
    fn a_silent_member_loses_its_chunks_after_the_lease() {
        let me = PeerId::random();
        let other = PeerId::random();
        let release: ReleaseKey = ("models".into(), 1);
        let mut s = Site::new(me, Duration::from_secs(10));
        s.join(other, vec![], vec![]);
        s.on_state(&other, state(&release, vec![], vec![]));
        let theirs = (0..100u32).map(|i| ChunkId::of(&i.to_le_bytes())).find(|id| s.fetcher(&release, id, true, long_ago()) != Fetcher::Me).expect("some chunk is theirs");
        assert!(!s.expire());
        // Eleven seconds of silence, without waiting for them.
        s.member_mut(&other).expect("member").last_heard.at -= Duration::from_secs(11);
        assert!(s.expire());
        assert_eq!(s.fetcher(&release, &theirs, true, long_ago()), Fetcher::Me);
    }

    /// This node's loop takes no step for `d` (its host gave it no CPU), then takes one now.
    fn stall(s: &mut Site, d: Duration) {
        s.clock.stepped_at -= d;
        s.watch(Instant::now());
    }

    /// A member of a site with a 10 s lease that holds some chunk this node would fetch.
    fn site_with_a_member() -> (Site, PeerId, ReleaseKey, ChunkId) {
        let release: ReleaseKey = ("models".into(), 1);
        let mut s = Site::new(PeerId::random(), Duration::from_secs(10));
        let other = PeerId::random();
        s.join(other, vec![], vec![]);
        s.on_state(&other, state(&release, vec![], vec![]));
        let theirs = (0..100u32).map(|i| ChunkId::of(&i.to_le_bytes())).find(|id| s.fetcher(&release, id, true, long_ago()) != Fetcher::Me).expect("some chunk is theirs");
        (s, other, release, theirs)
    }

    #[test]
    fn time_this_node_did_not_run_is_nobody_s_silence() {
        let (mut s, other, release, theirs) = site_with_a_member();
        // Heard 25 s ago; this node's loop took no step for the last 20 s of them: 19 s not
        // watched (the first second of a gap counts), 6 s watched, the member keeps its chunks.
        pass(&mut s, Duration::from_secs(25));
        stall(&mut s, Duration::from_secs(20));
        assert!(!s.expire());
        assert_eq!(s.fetcher(&release, &theirs, true, long_ago()), Fetcher::Peer(other));
        // The loop runs on time from now on: 9.5 s watched, still live; 10.25 s, gone.
        pass(&mut s, Duration::from_millis(3500));
        assert!(!s.expire());
        pass(&mut s, Duration::from_millis(750));
        assert!(s.expire());
        assert_eq!(s.fetcher(&release, &theirs, true, long_ago()), Fetcher::Me);
        // Heard again (a chunk request on a lane, noted a moment ago): live again.
        s.heard_at(&other, Instant::now() - Duration::from_millis(100));
        assert!(s.expire());
        assert_eq!(s.fetcher(&release, &theirs, true, long_ago()), Fetcher::Peer(other));
        // Something heard earlier than what was heard already changes nothing.
        s.heard_at(&other, Instant::now() - Duration::from_secs(20));
        assert!(!s.expire());
    }

    #[test]
    fn a_starved_node_still_drops_a_dead_member_within_three_leases() {
        let (mut s, other, release, theirs) = site_with_a_member();
        // Heard 29 s ago, 28 s of them not watched: at most two leases (20 s) are discounted,
        // so 9 s count; 1.5 s more and the lease is over.
        pass(&mut s, Duration::from_secs(29));
        stall(&mut s, Duration::from_secs(28));
        assert!(!s.expire());
        pass(&mut s, Duration::from_millis(1500));
        assert!(s.expire());
        assert_eq!(s.fetcher(&release, &theirs, true, long_ago()), Fetcher::Me);
        assert!(!s.live(&other));
    }

    #[test]
    fn a_lane_request_noted_before_a_stall_counts_from_when_it_came() {
        let (mut s, other, _, _) = site_with_a_member();
        // The member asked 15.9 s ago, just after this node's last step; the loop then took
        // no step for 16 s, and the request is taken from the lane's notes before the step
        // that ends the stall: 0.9 s of silence watched, not 15.9.
        pass(&mut s, Duration::from_secs(30));
        s.clock.stepped_at -= Duration::from_secs(16);
        s.heard_at(&other, Instant::now() - Duration::from_millis(15_900));
        s.watch(Instant::now());
        assert!(!s.expire());
        assert!(s.live(&other));
    }

    #[test]
    fn time_not_watched_is_not_working_uplink() {
        let (mut s, _, _, _) = site_with_a_member();
        s.note_my_progress(Instant::now());
        // The next seed chunk lands 4 s later (inside the 3.3 s working window only if the 3 s
        // the loop took no step are left out): the uplink clock advances by 1 s.
        pass(&mut s, Duration::from_secs(4));
        stall(&mut s, Duration::from_secs(4));
        s.note_my_progress(Instant::now());
        let d = s.uplink_clock.abs_diff(Duration::from_secs(1));
        assert!(d < Duration::from_millis(100), "uplink clock {:?}", s.uplink_clock);
    }

    #[test]
    fn a_release_ages_on_this_node_s_watch() {
        let (me, follower) = (PeerId::random(), PeerId::random());
        let release: ReleaseKey = ("models".into(), 1);
        let mut s = Site::new(me, Duration::from_secs(10));
        s.join(follower, vec![], vec![Channel::new("models").expect("channel")]);
        let ids: Vec<ChunkId> = (0..200u32).map(|i| ChunkId::of(&i.to_le_bytes())).collect();
        let follower_fetches = |s: &Site, since: Moment| ids.iter().any(|id| s.fetcher(&release, id, true, since) == Fetcher::Peer(follower));
        // Known 25 s ago on the wall clock, 20 s of which this node's loop took no step: 6 s
        // watched, still young: the follower that has not reported the release yet keeps its
        // share. (Known 60 s ago: old, it has none.)
        let since = s.moment();
        let since = Moment { at: since.at - Duration::from_secs(25), ..since };
        stall(&mut s, Duration::from_secs(20));
        assert!(follower_fetches(&s, since));
        assert!(!follower_fetches(&s, long_ago()));
        // 4.5 s more on time: 10.5 s watched, old.
        let since = Moment { at: since.at - Duration::from_millis(4500), ..since };
        assert!(!follower_fetches(&s, since));
    }

    /// Let `d` pass: every instant the site holds moves back by `d`.
    fn pass(s: &mut Site, d: Duration) {
        if let Some(p) = s.site_progress.as_mut() {
            p.at -= d;
        }
        for m in s.members.values_mut() {
            m.last_heard.at -= d;
            m.last_progress -= d;
        }
    }

    /// A member's heartbeat: it is waiting on `pending` seed requests, having fetched `fetched`.
    fn heartbeat(s: &mut Site, peer: &PeerId, release: &ReleaseKey, fetched: u64, pending: u32) {
        let mut st = state(release, vec![], vec![]);
        st.seed_fetched = fetched;
        st.seed_pending = pending;
        st.releases[0].full = false;
        s.on_state(peer, st);
    }

    #[test]
    fn an_uplink_outage_hands_no_chunk_on() {
        let me = PeerId::random();
        let other = PeerId::random();
        let release: ReleaseKey = ("models".into(), 1);
        let mut s = Site::new(me, Duration::from_secs(15));
        s.join(other, vec![], vec![]);
        heartbeat(&mut s, &other, &release, 0, 3);
        let theirs = (0..100u32).map(|i| ChunkId::of(&i.to_le_bytes())).find(|id| s.fetcher(&release, id, true, long_ago()) != Fetcher::Me).expect("some chunk is theirs");
        // Both download; the member's last chunk landed 3 s before this node's last one.
        heartbeat(&mut s, &other, &release, 5, 3);
        pass(&mut s, Duration::from_secs(3));
        s.note_my_progress(Instant::now());
        // The shared uplink goes down for 60 s: nobody makes progress, the member still talks.
        for _ in 0..60 {
            pass(&mut s, Duration::from_secs(1));
            heartbeat(&mut s, &other, &release, 5, 3);
            s.expire();
            assert_ne!(s.fetcher(&release, &theirs, true, long_ago()), Fetcher::Me, "handed on during the outage");
        }
        // The link is back and this node's connection resumes first; the member's resumes 10 s
        // later (TCP retransmission backoff): it keeps its chunks meanwhile.
        for _ in 0..10 {
            s.note_my_progress(Instant::now());
            pass(&mut s, Duration::from_secs(1));
            heartbeat(&mut s, &other, &release, 5, 3);
            s.expire();
            assert_ne!(s.fetcher(&release, &theirs, true, long_ago()), Fetcher::Me, "handed on after the outage");
        }
        heartbeat(&mut s, &other, &release, 6, 3);
        // Had it not resumed within a lease of working uplink, its chunks would have moved.
        for _ in 0..16 {
            s.note_my_progress(Instant::now());
            pass(&mut s, Duration::from_secs(1));
            heartbeat(&mut s, &other, &release, 6, 3);
        }
        assert!(s.expire());
        assert_eq!(s.fetcher(&release, &theirs, true, long_ago()), Fetcher::Me);
    }

    /// This node and two members fetching `release` from the seed; returns `other`, the third
    /// member, and a chunk `other` is to fetch.
    fn two_fetching_members(s: &mut Site, release: &ReleaseKey) -> (PeerId, PeerId, ChunkId) {
        let (other, third) = (PeerId::random(), PeerId::random());
        s.join(other, vec![], vec![]);
        s.join(third, vec![], vec![]);
        heartbeat(s, &other, release, 0, 3);
        heartbeat(s, &third, release, 0, 3);
        let theirs = (0..100u32)
            .map(|i| ChunkId::of(&i.to_le_bytes()))
            .find(|id| s.fetcher(release, id, true, long_ago()) == Fetcher::Peer(other))
            .expect("some chunk is theirs");
        (other, third, theirs)
    }

    /// `third` lands a seed chunk every second while `other` lands none: `other` keeps `theirs`
    /// for `bound` seconds of that working uplink, and loses it just after.
    fn stuck_beside_a_working_member(s: &mut Site, release: &ReleaseKey, (other, third, theirs): (PeerId, PeerId, ChunkId), bound: u64) {
        for i in 1..bound {
            pass(s, Duration::from_secs(1));
            heartbeat(s, &other, release, 0, 3);
            heartbeat(s, &third, release, i, 3);
            s.expire();
            assert_eq!(s.fetcher(release, &theirs, true, long_ago()), Fetcher::Peer(other), "handed on after {i} s");
        }
        pass(s, Duration::from_secs(2));
        heartbeat(s, &other, release, 0, 3);
        heartbeat(s, &third, release, bound, 3);
        assert!(s.expire());
        assert_ne!(s.fetcher(release, &theirs, true, long_ago()), Fetcher::Peer(other));
    }

    #[test]
    fn a_member_stalled_alone_loses_its_chunks_after_a_lease_of_working_uplink() {
        let release: ReleaseKey = ("models".into(), 1);
        let mut s = Site::new(PeerId::random(), Duration::from_secs(15));
        let members = two_fetching_members(&mut s, &release);
        stuck_beside_a_working_member(&mut s, &release, members, 15);
        // A member with nothing pending is never stalled.
        let (other, _, theirs) = members;
        heartbeat(&mut s, &other, &release, 0, 0);
        assert!(s.expire());
        assert_eq!(s.fetcher(&release, &theirs, true, long_ago()), Fetcher::Peer(other));
    }

    #[test]
    fn a_member_slow_at_the_seed_keeps_its_chunks_until_the_stall_bound() {
        // A busy seed answers `other` later than a lease: it keeps its chunks until the bound.
        let release: ReleaseKey = ("models".into(), 1);
        let mut s = Site::new(PeerId::random(), Duration::from_secs(15)).with_stall(Duration::from_secs(45));
        let members = two_fetching_members(&mut s, &release);
        stuck_beside_a_working_member(&mut s, &release, members, 45);
    }

    #[test]
    fn followers_count_while_the_release_is_young_then_only_members_that_have_it() {
        let me = PeerId::random();
        let follower = PeerId::random();
        let other_channel = PeerId::random();
        let release: ReleaseKey = ("models".into(), 1);
        let mut s = Site::new(me, Duration::from_secs(10));
        s.join(follower, vec![], vec![Channel::new("models").expect("channel")]);
        s.join(other_channel, vec![], vec![Channel::new("maps").expect("channel")]);
        let ids: Vec<ChunkId> = (0..200u32).map(|i| ChunkId::of(&i.to_le_bytes())).collect();
        let chosen = |s: &Site, since: Moment| -> HashSet<Fetcher> { ids.iter().map(|id| s.fetcher(&release, id, true, since)).collect() };
        // Young release: the follower fetches its share before it has said a word about it;
        // the member that follows another channel never does.
        let young = chosen(&s, s.moment());
        assert!(young.contains(&Fetcher::Peer(follower)) && young.contains(&Fetcher::Me));
        assert!(!young.contains(&Fetcher::Peer(other_channel)));
        // A lease later, a follower that never reported the release (it refused it) drops out.
        assert_eq!(chosen(&s, long_ago()), HashSet::from([Fetcher::Me]));
        // Once it reports the release it counts again, however old the release is.
        s.on_state(&follower, state(&release, vec![], vec![]));
        assert!(chosen(&s, long_ago()).contains(&Fetcher::Peer(follower)));
    }
}
