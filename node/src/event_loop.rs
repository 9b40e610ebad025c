//! The node's event loop: one task owns the swarm; everything else talks to it through a
//! bounded channel of [`Command`]s with a oneshot reply.
//!
//! Disk work (verifying and storing received chunks, reading chunks to serve) runs on tokio's
//! blocking pool and reports back through a second bounded channel, so the swarm is never
//! stalled by an fsync. Releases (acceptance, announcements) are in [`crate::releases`], inbound
//! requests in [`crate::inbound`], answers to this node's requests in [`crate::outbound`], fetch scheduling and site state messages in
//! [`crate::schedule`].

use crate::config::{Config, Role};
use crate::fetch::{Fetch, Source};
use crate::site::Site;
use crate::status::{PeerStatus, ReleaseStatus, Status};
use crate::swarm::{Behaviour, BehaviourEvent};
use crate::traffic::{Classifier, LinkClass};
use futures::StreamExt;
use layerhop_protocol::release::PublicKey;
use layerhop_protocol::token::Credential;
use layerhop_protocol::wire::{Hello, PeerInfo, Request, Response};
use layerhop_protocol::{ChunkId, SignedRelease};
use layerhop_store::Store;
use libp2p::request_response::{OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How long the higher peer id of a pair waits for the lower one to dial before dialing itself.
const DEFERRED_DIAL: Duration = Duration::from_secs(10);

/// While events keep arriving, the pump still runs this often.
const PUMP_AT_LEAST_EVERY: Duration = Duration::from_millis(20);

/// Requests to the event loop.
#[derive(Debug)]
pub enum Command {
    /// Report the node's status.
    Status(oneshot::Sender<Status>),
    /// Seed: a release was just recorded; announce it to connected peers.
    Announce(SignedRelease, oneshot::Sender<usize>),
    /// Consider a release handed over out of band (`layerhop offer`).
    Offer(SignedRelease, oneshot::Sender<Result<String, String>>),
    /// Seed: the fleet view (None on a device).
    Fleet(oneshot::Sender<Option<crate::fleet::FleetStatus>>),
    /// Seed: revoke these peers and credential ids (`layerhop revoke`).
    Revoke {
        /// Peers to revoke (with the credentials they presented, if connected).
        peers: Vec<PeerId>,
        /// Credential ids to revoke.
        token_ids: Vec<[u8; 16]>,
        /// The new list, or why not.
        reply: oneshot::Sender<Result<serde_json::Value, String>>,
    },
    /// Seed: the trust statements changed (`layerhop rotate-key`); push them to the devices.
    PushTrust(oneshot::Sender<usize>),
    /// New metered-link rules (a config reload); answers with them in words.
    Reload(crate::policy::Rules, oneshot::Sender<String>),
    /// Stop.
    Shutdown(oneshot::Sender<()>),
}

/// A cloneable handle to the event loop.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
}

impl Handle {
    /// Send a command and wait for its reply.
    pub async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.ok()?;
        rx.await.ok()
    }
}

pub(crate) enum Pending {
    Chunks { channel: String, ids: Vec<ChunkId>, source: Source },
    /// Seed: an announcement to one member of a site, with the members to try next.
    Announce { signed: SignedRelease, next: Vec<PeerId> },
    Hello,
    Releases,
    Other,
}

pub(crate) enum Done {
    /// This many chunks left the writer's queue (staged, held already, or refused).
    Staged(usize),
    /// A received chunk was verified and stored (or not); `below` is the walk of the subtree
    /// under an interior node.
    Stored { channel: String, id: ChunkId, result: Result<(), String>, source: Source, below: Option<Result<layerhop_store::blob::Progress, String>> },
    Serve { channel: ResponseChannel<Response>, response: Response },
    /// News from a lane (see [`crate::lane`]).
    Lane(crate::lane::Event),
}

/// What woke the loop: taken out of the `select!` so the loop can note that it runs
/// ([`crate::site::Site::watch`]) before handling it.
enum Step {
    Command(Option<Command>),
    Done(Done),
    Swarm(SwarmEvent<BehaviourEvent>),
    Tick,
    Pump,
}

/// What the seed knows of a connected device.
pub(crate) struct Enrolled {
    pub(crate) site: String,
    pub(crate) addrs: Vec<String>,
    /// Whether it shares with its site (and so hears of releases from a site peer).
    pub(crate) sharing: bool,
}

/// Everything the loop needs besides the swarm.
pub struct Parts {
    /// The store.
    pub store: Arc<Store>,
    /// Validated configuration.
    pub cfg: Config,
    /// Link accounting.
    pub classifier: Arc<Classifier>,
    /// Where to write the listen addresses.
    pub listen_file: std::path::PathBuf,
    /// Device: its fleet credential.
    pub credential: Option<Credential>,
    /// The key credentials are checked with (the fleet key).
    pub fleet_key: Option<PublicKey>,
    /// Seed: the fleet key itself, to sign revocation lists.
    pub fleet_signer: Option<Arc<layerhop_protocol::PublisherKey>>,
    /// Device: the metered-link policy.
    pub policy: crate::policy::Policy,
    /// Device: the certificate of its lane (see [`crate::lane`]); none, no lane.
    pub(crate) lane_identity: Option<Arc<crate::lane::tls::Identity>>,
}

/// The event loop's state.
pub struct EventLoop {
    pub(crate) swarm: Swarm<Behaviour>,
    pub(crate) store: Arc<Store>,
    pub(crate) cfg: Config,
    pub(crate) classifier: Arc<Classifier>,
    commands: mpsc::Receiver<Command>,
    pub(crate) done_tx: mpsc::Sender<Done>,
    done_rx: mpsc::Receiver<Done>,
    pub(crate) pending: HashMap<OutboundRequestId, Pending>,
    /// Chunk requests to the seed on the `uplink` protocol (its request ids are its own).
    pub(crate) uplink_pending: HashMap<OutboundRequestId, Pending>,
    pub(crate) fetches: BTreeMap<String, Fetch>,
    pub(crate) peers: HashMap<PeerId, LinkClass>,
    pub(crate) site: Site,
    pub(crate) writer: crate::writer::Writer,
    pub(crate) seed_in_flight: usize,
    pub(crate) seed_fetched: u64,
    pub(crate) credential: Option<Credential>,
    pub(crate) fleet_key: Option<PublicKey>,
    pub(crate) fleet_signer: Option<Arc<layerhop_protocol::PublisherKey>>,
    /// The revocation list in force (verified; empty if none).
    pub(crate) revoked: layerhop_protocol::revocation::RevocationList,
    /// The credential id each peer presented at hello.
    pub(crate) peer_creds: HashMap<PeerId, [u8; 16]>,
    /// When this node last offered its trust bundle to a peer with a release under an unknown key.
    pub(crate) trust_asked: HashMap<PeerId, Instant>,
    /// Inbound connections that failed or were denied (limits, bad handshakes).
    refused_connections: u64,
    /// Requests refused (not enrolled, not a site member, …).
    pub(crate) refused_requests: u64,
    pub(crate) enrolled: HashMap<PeerId, Enrolled>,
    pub(crate) listen_addrs: Vec<Multiaddr>,
    next_dial: Instant,
    dial_backoff: Duration,
    next_site_dial: Instant,
    listen_file: std::path::PathBuf,
    pub(crate) last_state: Instant,
    pub(crate) state_dirty: bool,
    pub(crate) peer_fetched: u64,
    pub(crate) strikes: crate::strikes::Strikes,
    /// Site peers from the config, with the peer id found at each address once connected.
    configured_peers: HashMap<Multiaddr, Option<PeerId>>,
    /// Site peers that accepted this node's hello (and so accept its state messages).
    pub(crate) hello_acked: HashSet<PeerId>,
    /// Received chunks handed to the writer and not yet reported stored.
    pub(crate) writing: usize,
    /// Chunks handed to the writer and not yet reported stored (or refused).
    pub(crate) unstored: usize,
    /// Something changed that may let the pump send requests.
    pub(crate) pump_due: bool,
    pub(crate) last_pump: Instant,
    /// When the pump last looked at every ready want, and whether the seed has had room freed
    /// since (see [`crate::schedule`]).
    pub(crate) last_full_pass: Instant,
    pub(crate) seed_room_freed: bool,
    last_unpark: Instant,
    /// Site peers this node leaves to dial it, and when to dial them anyway.
    deferred_dials: HashMap<PeerId, (Vec<Multiaddr>, Instant)>,
    /// When each member was last asked for its releases (because it has one unknown here).
    pub(crate) last_releases_ask: HashMap<PeerId, Instant>,
    /// Chunk requests answered (for status and metrics).
    pub(crate) served: Arc<crate::status::ServedCounters>,
    /// Chunks answered raw without a compression probe (see [`crate::incompressible`]).
    pub(crate) incompressible: Arc<crate::incompressible::Incompressible>,
    /// Seed: the devices seen and what they hold.
    pub(crate) fleet: crate::fleet::Fleet,
    /// Device: what was last reported to the seed.
    pub(crate) report: crate::report::SeedReport,
    /// Device: the metered-link policy, and the pause last logged per channel.
    pub(crate) policy: crate::policy::Policy,
    pub(crate) policy_log: HashMap<String, Option<crate::policy::Reason>>,
    /// Device: its lane listener and the lanes it opened (started in `run`).
    pub(crate) lanes: Option<crate::lane::Lanes>,
    lane_identity: Option<Arc<crate::lane::tls::Identity>>,
}

impl EventLoop {
    /// Create the loop and its handle.
    pub fn new(swarm: Swarm<Behaviour>, p: Parts) -> std::io::Result<(EventLoop, Handle)> {
        let (tx, commands) = mpsc::channel(64);
        let (done_tx, done_rx) = mpsc::channel(crate::writer::QUEUE);
        let incompressible = Arc::new(crate::incompressible::Incompressible::default());
        let writer = crate::writer::spawn(p.store.clone(), done_tx.clone(), incompressible.clone())?;
        let me = *swarm.local_peer_id();
        let lease = p.cfg.lease;
        let stall = lease + p.cfg.request_timeout;
        let configured = p.cfg.site_peers.iter().map(|a| (a.clone(), None)).collect();
        let revoked = crate::fleet_trust::load_revocations(p.store.trust().revocations.as_ref(), p.fleet_key.as_ref());
        let el = EventLoop {
            swarm,
            store: p.store,
            cfg: p.cfg,
            classifier: p.classifier,
            commands,
            done_tx,
            done_rx,
            pending: HashMap::new(),
            uplink_pending: HashMap::new(),
            fetches: BTreeMap::new(),
            peers: HashMap::new(),
            site: Site::new(me, lease).with_stall(stall),
            writer,
            seed_in_flight: 0,
            seed_fetched: 0,
            credential: p.credential,
            fleet_key: p.fleet_key,
            fleet_signer: p.fleet_signer,
            revoked,
            peer_creds: HashMap::new(),
            trust_asked: HashMap::new(),
            refused_connections: 0,
            refused_requests: 0,
            enrolled: HashMap::new(),
            listen_addrs: Vec::new(),
            next_dial: Instant::now(),
            dial_backoff: Duration::from_millis(500),
            next_site_dial: Instant::now(),
            listen_file: p.listen_file,
            last_state: Instant::now(),
            state_dirty: false,
            peer_fetched: 0,
            strikes: Default::default(),
            configured_peers: configured,
            hello_acked: HashSet::new(),
            writing: 0,
            unstored: 0,
            pump_due: false,
            last_pump: Instant::now(),
            last_full_pass: Instant::now(),
            seed_room_freed: false,
            last_unpark: Instant::now(),
            deferred_dials: HashMap::new(),
            last_releases_ask: HashMap::new(),
            served: Default::default(),
            incompressible,
            fleet: Default::default(),
            report: Default::default(),
            policy: p.policy,
            policy_log: HashMap::new(),
            lanes: None,
            lane_identity: p.lane_identity,
        };
        Ok((el, Handle { tx }))
    }

    pub(crate) fn seed(&self) -> Option<PeerId> {
        self.cfg.seed_peer
    }

    pub(crate) fn uplink(&self) -> bool {
        self.seed().is_some_and(|s| self.swarm.is_connected(&s))
    }

    /// Resume fetching every recorded release.
    fn resume(&mut self) {
        // Chunks staged before a crash are held once adopted: never fetched again.
        if let Err(e) = self.store.adopt_staged() {
            tracing::error!(error = %e, "cannot adopt chunks staged before a crash; they will be fetched again");
        }
        let keys = self.release_keys();
        if keys.is_empty() {
            return;
        }
        let releases = match self.store.releases() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot list recorded releases");
                return;
            }
        };
        for signed in releases {
            match crate::fleet_trust::verify_recorded(&signed, &keys) {
                Ok(body) => {
                    // A crash between recording a release and raising its trusted version (see
                    // `consider`) leaves trust behind the store: raise it now, or a replay of an
                    // older release would be taken.
                    let trusted = self.store.trust().versions.get(body.channel.as_str()).copied();
                    if trusted.is_none_or(|v| v < body.version)
                        && let Err(e) = self.store.raise_trust(body.channel.as_str(), body.version, body.issued_at)
                    {
                        tracing::error!(channel = %body.channel, error = %e, "cannot raise the trusted version of a recorded release");
                    }
                    self.start_fetch(signed, body)
                }
                Err(e) => tracing::error!(error = %e, "a recorded release no longer verifies; ignored"),
            }
        }
    }

    /// Run until shut down.
    pub async fn run(mut self) {
        for a in self.cfg.listen.clone() {
            if let Err(e) = self.swarm.listen_on(a.clone()) {
                tracing::error!(addr = %a, error = %e, "cannot listen");
            }
        }
        if let Some(identity) = self.lane_identity.take() {
            let access: Arc<crate::lane::server::Access> = Default::default();
            let serving = crate::lane::server::Serving {
                identity: identity.clone(),
                store: self.store.clone(),
                classifier: self.classifier.clone(),
                access: access.clone(),
                served: self.served.clone(),
                incompressible: self.incompressible.clone(),
            };
            match crate::lane::start(&self.cfg.listen, serving).await {
                Ok(port) => {
                    tracing::info!(port, "lane listening");
                    self.lanes = Some(crate::lane::Lanes::new(identity, port, access));
                }
                Err(e) => tracing::error!(error = %e, "cannot listen for lanes: chunks from site peers go over the libp2p connection"),
            }
        }
        if self.cfg.role == Role::Device {
            self.resume();
        }
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let step = tokio::select! {
                biased;
                cmd = self.commands.recv() => Step::Command(cmd),
                Some(done) = self.done_rx.recv() => Step::Done(done),
                event = self.swarm.select_next_some() => Step::Swarm(event),
                _ = tick.tick() => Step::Tick,
                // Last in a biased select: runs once the burst of ready events is drained.
                () = std::future::ready(()), if self.pump_due => Step::Pump,
            };
            // Before anything is heard in this step: time the loop did not run is nobody's
            // silence (see `crate::site`). Lane requests noted meanwhile first, each on the
            // watch as it stood when it came.
            self.lane_requests_heard();
            self.site.watch(Instant::now());
            match step {
                Step::Command(Some(Command::Shutdown(reply))) => {
                    self.shutdown();
                    let _ = reply.send(());
                    return;
                }
                Step::Command(None) => {
                    self.shutdown();
                    return;
                }
                Step::Command(Some(cmd)) => self.on_command(cmd),
                Step::Done(done) => self.on_done(done),
                Step::Swarm(event) => self.on_swarm(event),
                Step::Tick => self.on_tick(),
                Step::Pump => self.pump(),
            }
            // A steady stream of events must not starve the pump either.
            if self.pump_due && self.last_pump.elapsed() >= PUMP_AT_LEAST_EVERY {
                self.pump();
            }
        }
    }

    fn shutdown(&mut self) {
        self.save_policy();
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "index flush at shutdown failed");
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Announce(signed, reply) => {
                let _ = reply.send(self.announce(signed));
            }
            Command::Offer(signed, reply) => {
                let _ = reply.send(self.consider(signed, None).map(|(_, what)| what));
            }
            Command::Fleet(reply) => {
                let _ = reply.send(self.fleet_view());
            }
            Command::Revoke { peers, token_ids, reply } => {
                let _ = reply.send(self.revoke(peers, token_ids));
            }
            Command::PushTrust(reply) => {
                let _ = reply.send(self.push_trust());
            }
            Command::Reload(rules, reply) => {
                let _ = reply.send(self.reload_policy(rules));
            }
            Command::Shutdown(_) => {}
        }
    }

    pub(crate) fn send(&mut self, peer: &PeerId, req: Request, pending: Pending) {
        // Answers from site peers over the LAN must keep a pace (a trickle is cut and struck);
        // the seed's may crawl over a cellular link.
        let lan = Some(*peer) != self.seed() && self.peers.get(peer) == Some(&LinkClass::Lan);
        let paced = crate::codec::Paced { request: req, pace: lan.then_some(crate::codec::SITE_PACE) };
        let id = self.swarm.behaviour_mut().exchange.send_request(peer, paced);
        self.pending.insert(id, pending);
    }

    /// Send a chunk request to the seed on the `uplink` protocol (see [`crate::swarm`]).
    pub(crate) fn send_uplink(&mut self, peer: &PeerId, req: Request, pending: Pending) {
        let id = self.swarm.behaviour_mut().uplink.send_request(peer, req.into());
        self.uplink_pending.insert(id, pending);
    }

    pub(crate) fn take_pending(&mut self, uplink: bool, id: &OutboundRequestId) -> Option<Pending> {
        if uplink { self.uplink_pending.remove(id) } else { self.pending.remove(id) }
    }

    fn dial(&mut self, peer: Option<PeerId>, addrs: Vec<Multiaddr>) {
        let opts = match peer {
            // A fresh source port: two devices that find each other by mDNS in the same instant
            // would otherwise reuse their listen ports, merge both dials into one TCP connection
            // with two noise initiators, and fail (seen in the netns testbed).
            Some(p) => libp2p::swarm::dial_opts::DialOpts::peer_id(p).addresses(addrs).allocate_new_port().build(),
            None => match addrs.into_iter().next() {
                Some(a) => libp2p::swarm::dial_opts::DialOpts::unknown_peer_id().address(a).allocate_new_port().build(),
                None => return,
            },
        };
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(error = %e, "dial not started");
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        if let (Role::Device, Some(seed)) = (self.cfg.role, self.seed())
            && !self.swarm.is_connected(&seed)
            && now >= self.next_dial
            // The seed tells site peers where this node listens: know it before saying hello.
            && !self.listen_addrs.is_empty()
        {
            self.dial(Some(seed), self.cfg.seed_addrs.clone());
            self.next_dial = now + self.dial_backoff;
            self.dial_backoff = (self.dial_backoff * 2).min(Duration::from_secs(30));
        }
        if self.cfg.role == Role::Device && now >= self.next_site_dial {
            self.next_site_dial = now + Duration::from_secs(5);
            let to_dial: Vec<Multiaddr> = self
                .configured_peers
                .iter()
                .filter(|(_, p)| p.is_none_or(|p| !self.swarm.is_connected(&p)))
                .map(|(a, _)| a.clone())
                .collect();
            for a in to_dial {
                self.dial(None, vec![a]);
            }
        }
        let due: Vec<PeerId> = self.deferred_dials.iter().filter(|(_, (_, at))| now >= *at).map(|(p, _)| *p).collect();
        for p in due {
            if let Some((addrs, _)) = self.deferred_dials.remove(&p)
                && !self.swarm.is_connected(&p)
            {
                self.dial(Some(p), addrs);
            }
        }
        // A release passing the lease age changes who takes part in its rendezvous: decisions
        // cached before must be made again (a follower that never reported it drops out).
        let lease = self.site.lease();
        let mut aged = false;
        for f in self.fetches.values_mut() {
            if !f.aged && self.site.watched_since(f.known_since, now) >= lease {
                f.aged = true;
                aged = true;
            }
        }
        if aged {
            self.site.epoch += 1;
            self.pump_due = true;
        }
        if self.site.expire() {
            self.pump_due = true;
        }
        if self.last_unpark.elapsed() >= crate::schedule::UNPARK_SWEEP {
            self.last_unpark = now;
            for f in self.fetches.values_mut() {
                f.unpark_all();
            }
        }
        let idle: Vec<String> = self.fetches.iter().filter(|(_, f)| f.needs_walk()).map(|(c, _)| c.clone()).collect();
        for channel in idle {
            self.next_round(&channel);
        }
        self.lift_bans();
        self.observe_metered(crate::policy::Now::system());
        self.send_state();
        self.report_to_seed();
        self.pump_due = true;
    }

    fn on_swarm(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.listen_addrs.push(address);
                let text: String = self.listen_addrs.iter().map(|a| format!("{a}\n")).collect();
                let _ = std::fs::write(&self.listen_file, text);
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, num_established, .. } => {
                if self.strikes.is_banned(&peer_id, Instant::now()) {
                    tracing::warn!(peer = %peer_id, "banned peer connected; closing");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                if self.is_revoked(&peer_id, None) {
                    tracing::warn!(peer = %peer_id, "revoked peer connected; closing");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                let class = self.classifier.connected(&endpoint, peer_id);
                tracing::info!(peer = %peer_id, link = ?class, "connected");
                if let libp2p::core::ConnectedPoint::Dialer { address, .. } = &endpoint
                    && let Some(slot) = self.configured_peers.get_mut(address)
                {
                    *slot = Some(peer_id);
                }
                self.peers.insert(peer_id, class);
                if let (Some(l), Some(a)) = (&mut self.lanes, crate::traffic::socket_addr(endpoint.get_remote_address())) {
                    l.connected(peer_id, a.ip());
                }
                if num_established.get() == 1 && self.cfg.role == Role::Device {
                    let hello = self.hello();
                    self.send(&peer_id, Request::Hello(hello), Pending::Hello);
                    if Some(peer_id) == self.seed() {
                        self.dial_backoff = Duration::from_millis(500);
                        self.state_dirty = true;
                        self.site.epoch += 1; // this node's uplink is back: rendezvous changes
                    }
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, cause, .. } => {
                tracing::info!(peer = %peer_id, cause = ?cause.map(|c| c.to_string()), "disconnected");
                self.peers.remove(&peer_id);
                self.site.leave(&peer_id);
                if let Some(l) = &mut self.lanes {
                    l.forget(&peer_id);
                }
                self.enrolled.remove(&peer_id);
                if Some(peer_id) == self.seed() {
                    self.state_dirty = true;
                    self.site.epoch += 1;
                }
                self.last_releases_ask.remove(&peer_id);
                self.hello_acked.remove(&peer_id);
                self.peer_creds.remove(&peer_id);
                self.trust_asked.remove(&peer_id);
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                self.refused_connections += 1;
                tracing::debug!(from = %send_back_addr, %error, "incoming connection refused");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, error = %error, "connection failed");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Exchange(e)) => self.on_exchange(e, false),
            SwarmEvent::Behaviour(BehaviourEvent::Uplink(e)) => self.on_exchange(e, true),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(libp2p::mdns::Event::Discovered(found))) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (p, a) in found {
                    by_peer.entry(p).or_default().push(a);
                }
                for (p, addrs) in by_peer {
                    if !self.swarm.is_connected(&p) && Some(p) != self.seed() {
                        tracing::info!(peer = %p, "found by mDNS");
                        self.dial_site_peer(p, addrs);
                    }
                }
            }
            _ => {}
        }
    }

    pub(crate) fn hello(&self) -> Hello {
        Hello { credential: self.credential.clone(), listen_addrs: self.advertised_addrs(), site_sharing: self.cfg.site_sharing, channels: self.cfg.channels.clone() }
    }

    /// Listen addresses worth telling others: the non-loopback ones if there are any.
    pub(crate) fn advertised_addrs(&self) -> Vec<String> {
        let is_loopback = |a: &Multiaddr| crate::traffic::socket_addr(a).is_some_and(|s| s.ip().is_loopback());
        let outside: Vec<String> = self.listen_addrs.iter().filter(|a| !is_loopback(a)).map(|a| a.to_string()).collect();
        if outside.is_empty() { self.listen_addrs.iter().map(|a| a.to_string()).collect() } else { outside }
    }

    /// Dial site members the seed told us about.
    pub(crate) fn on_peers(&mut self, list: Vec<PeerInfo>) {
        if !self.cfg.peer_exchange || !self.cfg.site_sharing {
            return;
        }
        let me = *self.swarm.local_peer_id();
        for info in list {
            let Ok(p) = PeerId::from_bytes(&info.peer) else { continue };
            if p == me || self.swarm.is_connected(&p) {
                continue;
            }
            let addrs: Vec<Multiaddr> = info.listen_addrs.iter().filter_map(|a| a.parse().ok()).collect();
            if !addrs.is_empty() {
                self.dial_site_peer(p, addrs);
            }
        }
    }

    /// Connect to a site peer that also knows of this node (both heard of each other from the
    /// seed, or by mDNS): the lower peer id dials, so a pair holds one connection, not two. The
    /// higher one dials too if no connection came within [`DEFERRED_DIAL`] (a lost message).
    fn dial_site_peer(&mut self, p: PeerId, addrs: Vec<Multiaddr>) {
        if *self.swarm.local_peer_id() < p {
            self.dial(Some(p), addrs);
        } else {
            self.deferred_dials.insert(p, (addrs, Instant::now() + DEFERRED_DIAL));
        }
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Lane(e) => self.on_lane(e),
            Done::Serve { channel, response } => {
                let _ = self.swarm.behaviour_mut().exchange.send_response(channel, response);
            }
            Done::Staged(n) => {
                // Only a pump that the backlog stopped has anything new to do.
                let was_full = self.writing >= crate::schedule::WRITE_BACKLOG;
                self.writing = self.writing.saturating_sub(n);
                self.pump_due |= was_full && self.writing < crate::schedule::WRITE_BACKLOG;
            }
            Done::Stored { channel, id, result, source, below } => {
                self.unstored = self.unstored.saturating_sub(1);
                let ok = match result {
                    Ok(()) => true,
                    Err(reason) => {
                        tracing::warn!(source = ?source, chunk = %id, %reason, "received a bad chunk; discarded");
                        // Only what the peer provably did wrong counts: bytes that do not match
                        // their id, or compressed data that does not decode. A local disk error
                        // (a full disk, too many open files) is not the sender's fault.
                        let peer_fault = reason.contains("does not match") || reason.starts_with("undecodable");
                        if let (Source::Peer(p), true) = (source, peer_fault) {
                            self.strike(p, &reason);
                        }
                        false
                    }
                };
                // Only a failure (wanted again), an interior node (its missing children are
                // new wants) or a finished round gives the pump something new: a data chunk's
                // request slot was freed when its response came. (A pump per stored chunk, each
                // scanning every ready want, was 7% of a receiving node's CPU.)
                let mut new_work = !ok || below.is_some();
                if let Some(f) = self.fetches.get_mut(&channel) {
                    if ok {
                        match below {
                            Some(Err(e)) => {
                                tracing::error!(%channel, error = %e, "release trees are inconsistent; fetch stopped");
                                f.stalled = Some(e);
                                f.landed(id, None);
                            }
                            Some(Ok(sub)) => f.landed(id, Some(sub)),
                            None => f.landed(id, None),
                        }
                        self.state_dirty = true;
                        match source {
                            Source::Seed => {
                                tracing::debug!(chunk = %id, "stored a chunk from the seed");
                                self.seed_fetched += 1;
                                self.site.note_my_progress(Instant::now());
                            }
                            Source::Peer(_) => self.peer_fetched += 1,
                        }
                    } else {
                        f.retry(&id, Some(source));
                    }
                    if f.needs_walk() {
                        self.next_round(&channel);
                        new_work = true;
                    }
                }
                self.pump_due |= new_work;
            }
        }
    }

    fn status(&mut self) -> Status {
        let mut releases = Vec::new();
        let mut seen = HashSet::new();
        for (channel, f) in &self.fetches {
            seen.insert(channel.clone());
            let have = f.have_now();
            releases.push(ReleaseStatus {
                channel: channel.clone(),
                version: f.body.version,
                complete: f.complete,
                bytes_total: f.progress.total,
                bytes_have: have,
                artifacts: f.body.artifacts.len(),
                images: f.body.images.len(),
                expires_at: f.body.expires_at,
                chunks_missing: f.wants.len(),
                stalled: f.stalled.clone().or_else(|| if f.complete { None } else { self.writer.disk_full() }),
            });
        }
        // A seed (or a device whose fetch state was not built) reports recorded releases.
        for signed in self.store.releases().unwrap_or_default() {
            let Ok(body) = signed.peek() else { continue };
            if seen.contains(body.channel.as_str()) {
                continue;
            }
            let blobs: Vec<_> = body.artifacts.iter().flat_map(|a| a.content.blobs()).collect();
            let p = layerhop_store::blob::progress(&self.store, &blobs).unwrap_or_default();
            releases.push(ReleaseStatus {
                channel: body.channel.to_string(),
                version: body.version,
                complete: p.complete(),
                bytes_total: p.total,
                bytes_have: p.have,
                artifacts: body.artifacts.len(),
                images: body.images.len(),
                expires_at: body.expires_at,
                chunks_missing: p.missing.len(),
                stalled: None,
            });
        }
        releases.sort_by(|a, b| a.channel.cmp(&b.channel));
        Status {
            peer_id: self.swarm.local_peer_id().to_string(),
            role: self.cfg.role,
            site: self.cfg.site.clone(),
            listen_addrs: self.listen_addrs.iter().map(|a| a.to_string()).collect(),
            peers: self
                .peers
                .iter()
                .map(|(p, c)| PeerStatus {
                    peer_id: p.to_string(),
                    link: match c {
                        LinkClass::Metered => "metered".into(),
                        LinkClass::Lan => "lan".into(),
                    },
                    seed: Some(*p) == self.seed(),
                    site_member: self.site.is_member(p),
                })
                .collect(),
            releases,
            traffic: self.classifier.counters.totals(),
            chunks_from_seed: self.seed_fetched,
            chunks_from_peers: self.peer_fetched,
            chunks_being_stored: self.unstored,
            banned_peers: self.strikes.banned_count(Instant::now()),
            strikes: self.strikes.total(),
            revocations_version: self.revoked.version,
            refused_connections: self.refused_connections,
            refused_requests: self.refused_requests,
            revoked: self.revoked.devices.len() + self.revoked.peers.len(),
            publisher_key: self.release_keys().last().map(|k| k.to_hex()),
            lane_port: self.lanes.as_ref().map(|l| l.port),
            lane_answers: self.lanes.as_ref().map_or(0, |l| l.answers),
            served: self.served.snapshot(),
            policy: self.policy_status(),
        }
    }
}
