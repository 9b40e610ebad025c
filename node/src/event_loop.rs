//! The node's event loop: one task owns the swarm; everything else talks to it through a
//! bounded channel of [`Command`]s with a oneshot reply.
//!
//! Disk work (verifying and storing received chunks, reading chunks to serve) runs on tokio's
//! blocking pool and reports back through a second bounded channel, so the swarm is never
//! stalled by an fsync.

use crate::accept;
use crate::codec;
use crate::config::{Config, Role};
use crate::fetch::Fetch;
use crate::status::{PeerStatus, ReleaseStatus, Status};
use crate::swarm::{Behaviour, BehaviourEvent};
use crate::traffic::{Classifier, LinkClass};
use futures::StreamExt;
use layerhop_protocol::wire::{ChunkReply, Request, Response};
use layerhop_protocol::{ChunkId, SignedRelease};
use layerhop_store::Store;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Requests to the event loop.
#[derive(Debug)]
pub enum Command {
    /// Report the node's status.
    Status(oneshot::Sender<Status>),
    /// Seed: a release was just recorded; announce it to connected peers.
    Announce(SignedRelease, oneshot::Sender<usize>),
    /// Consider a release handed over out of band (`layerhop offer`).
    Offer(SignedRelease, oneshot::Sender<Result<String, String>>),
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

enum Pending {
    Chunks { channel: String, ids: Vec<ChunkId> },
    Releases,
    Announce,
}

enum Done {
    Stored { channel: String, id: ChunkId, result: Result<(), String>, peer: PeerId },
    Serve { channel: ResponseChannel<Response>, response: Response },
}

/// The event loop's state.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    store: Arc<Store>,
    cfg: Config,
    classifier: Arc<Classifier>,
    commands: mpsc::Receiver<Command>,
    done_tx: mpsc::Sender<Done>,
    done_rx: mpsc::Receiver<Done>,
    pending: HashMap<OutboundRequestId, Pending>,
    in_flight_to: HashMap<PeerId, usize>,
    fetches: BTreeMap<String, Fetch>,
    peers: HashMap<PeerId, LinkClass>,
    listen_addrs: Vec<Multiaddr>,
    next_dial: Instant,
    dial_backoff: Duration,
    listen_file: std::path::PathBuf,
}

impl EventLoop {
    /// Create the loop and its handle.
    pub fn new(
        swarm: Swarm<Behaviour>,
        store: Arc<Store>,
        cfg: Config,
        classifier: Arc<Classifier>,
        listen_file: std::path::PathBuf,
    ) -> (EventLoop, Handle) {
        let (tx, commands) = mpsc::channel(64);
        let (done_tx, done_rx) = mpsc::channel(1024);
        let me = EventLoop {
            swarm,
            store,
            cfg,
            classifier,
            commands,
            done_tx,
            done_rx,
            pending: HashMap::new(),
            in_flight_to: HashMap::new(),
            fetches: BTreeMap::new(),
            peers: HashMap::new(),
            listen_addrs: Vec::new(),
            next_dial: Instant::now(),
            dial_backoff: Duration::from_millis(500),
            listen_file,
        };
        (me, Handle { tx })
    }

    fn seed(&self) -> Option<PeerId> {
        self.cfg.seed_peer
    }

    /// Resume fetching every recorded release that is not complete.
    fn resume(&mut self) {
        let Some(key) = self.cfg.publisher_key else { return };
        let releases = match self.store.releases() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot list recorded releases");
                return;
            }
        };
        for signed in releases {
            match signed.verify(&key) {
                Ok(body) => self.start_fetch(signed, body),
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
        if self.cfg.role == Role::Device {
            self.resume();
        }
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Shutdown(reply)) => {
                        self.shutdown();
                        let _ = reply.send(());
                        return;
                    }
                    None => {
                        self.shutdown();
                        return;
                    }
                    Some(cmd) => self.on_command(cmd),
                },
                Some(done) = self.done_rx.recv() => self.on_done(done),
                event = self.swarm.select_next_some() => self.on_swarm(event),
                _ = tick.tick() => self.on_tick(),
            }
        }
    }

    fn shutdown(&mut self) {
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
                let peers: Vec<PeerId> = self.peers.keys().copied().collect();
                for p in &peers {
                    let id = self.swarm.behaviour_mut().exchange.send_request(p, Request::Announce(signed.clone()));
                    self.pending.insert(id, Pending::Announce);
                }
                let _ = reply.send(peers.len());
            }
            Command::Offer(signed, reply) => {
                let _ = reply.send(self.consider(signed, None));
            }
            Command::Shutdown(_) => {}
        }
    }

    fn on_tick(&mut self) {
        if let (Role::Device, Some(seed)) = (self.cfg.role, self.seed())
            && !self.swarm.is_connected(&seed)
            && Instant::now() >= self.next_dial
        {
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(seed).addresses(self.cfg.seed_addrs.clone()).build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(error = %e, "dial to seed not started");
            }
            self.next_dial = Instant::now() + self.dial_backoff;
            self.dial_backoff = (self.dial_backoff * 2).min(Duration::from_secs(30));
        }
        let idle: Vec<String> = self.fetches.iter().filter(|(_, f)| !f.complete && f.round_done()).map(|(c, _)| c.clone()).collect();
        for channel in idle {
            self.next_round(&channel);
        }
        self.pump();
    }

    fn on_swarm(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.listen_addrs.push(address);
                let text: String = self.listen_addrs.iter().map(|a| format!("{a}\n")).collect();
                let _ = std::fs::write(&self.listen_file, text);
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                let class = self.classifier.class_of(&endpoint);
                tracing::info!(peer = %peer_id, link = ?class, "connected");
                self.peers.insert(peer_id, class);
                if Some(peer_id) == self.seed() {
                    self.dial_backoff = Duration::from_millis(500);
                    let id = self.swarm.behaviour_mut().exchange.send_request(&peer_id, Request::Releases);
                    self.pending.insert(id, Pending::Releases);
                }
                self.pump();
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established, cause, .. } => {
                if num_established == 0 {
                    tracing::info!(peer = %peer_id, cause = ?cause.map(|c| c.to_string()), "disconnected");
                    self.peers.remove(&peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::warn!(peer = ?peer_id, error = %error, "connection failed");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Exchange(e)) => self.on_exchange(e),
            _ => {}
        }
    }

    fn on_exchange(&mut self, e: request_response::Event<Request, Response>) {
        match e {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => self.on_request(peer, request, channel),
                request_response::Message::Response { request_id, response } => self.on_response(peer, request_id, response),
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                tracing::warn!(%peer, %error, "request failed");
                if let Some(Pending::Chunks { channel, ids }) = self.pending.remove(&request_id) {
                    self.request_done(&peer);
                    if let Some(f) = self.fetches.get_mut(&channel) {
                        f.failed(&ids);
                    }
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_request(&mut self, peer: PeerId, request: Request, channel: ResponseChannel<Response>) {
        match request {
            Request::Releases => {
                let releases = self.store.releases().unwrap_or_else(|e| {
                    tracing::error!(error = %e, "cannot list releases");
                    Vec::new()
                });
                let _ = self.swarm.behaviour_mut().exchange.send_response(channel, Response::Releases(releases));
            }
            Request::Announce(signed) => {
                let _ = self.swarm.behaviour_mut().exchange.send_response(channel, Response::Ack);
                let _ = self.consider(signed, Some(peer));
            }
            Request::Chunks(ids) => {
                let store = self.store.clone();
                let done = self.done_tx.clone();
                tokio::task::spawn_blocking(move || {
                    let replies = ids
                        .iter()
                        .map(|id| match store.get(id) {
                            Ok(Some(bytes)) => codec::compress(bytes),
                            Ok(None) => ChunkReply::Missing,
                            Err(e) => {
                                tracing::error!(chunk = %id, error = %e, "cannot read chunk to serve");
                                ChunkReply::Missing
                            }
                        })
                        .collect();
                    let _ = done.blocking_send(Done::Serve { channel, response: Response::Chunks(replies) });
                });
            }
        }
    }

    fn request_done(&mut self, peer: &PeerId) {
        if let Some(n) = self.in_flight_to.get_mut(peer) {
            *n = n.saturating_sub(1);
        }
    }

    fn on_response(&mut self, peer: PeerId, request_id: OutboundRequestId, response: Response) {
        match (self.pending.remove(&request_id), response) {
            (Some(Pending::Releases), Response::Releases(list)) => {
                for signed in list {
                    let _ = self.consider(signed, Some(peer));
                }
            }
            (Some(Pending::Chunks { channel, ids }), Response::Chunks(replies)) => {
                self.request_done(&peer);
                if replies.len() != ids.len() {
                    tracing::warn!(%peer, asked = ids.len(), got = replies.len(), "chunk reply count does not match the request");
                    if let Some(f) = self.fetches.get_mut(&channel) {
                        f.failed(&ids);
                    }
                    return;
                }
                for (id, reply) in ids.into_iter().zip(replies) {
                    match codec::decompress(reply) {
                        None => {
                            if let Some(f) = self.fetches.get_mut(&channel) {
                                f.unavailable(id);
                            }
                        }
                        Some(bytes) => {
                            let store = self.store.clone();
                            let done = self.done_tx.clone();
                            let channel = channel.clone();
                            tokio::task::spawn_blocking(move || {
                                let result = bytes
                                    .map_err(|e| format!("undecodable compressed chunk: {e}"))
                                    .and_then(|b| store.put(&id, &b).map_err(|e| e.to_string()));
                                let _ = done.blocking_send(Done::Stored { channel, id, result, peer });
                            });
                        }
                    }
                }
            }
            (Some(Pending::Chunks { channel, ids }), other) => {
                self.request_done(&peer);
                tracing::warn!(%peer, response = ?other, "unexpected answer to a chunk request");
                if let Some(f) = self.fetches.get_mut(&channel) {
                    f.failed(&ids);
                }
            }
            (Some(Pending::Announce), _) | (Some(Pending::Releases), _) | (None, _) => {}
        }
        self.pump();
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Serve { channel, response } => {
                let _ = self.swarm.behaviour_mut().exchange.send_response(channel, response);
            }
            Done::Stored { channel, id, result, peer } => {
                let ok = match result {
                    Ok(()) => true,
                    Err(reason) => {
                        tracing::warn!(%peer, chunk = %id, %reason, "peer sent a bad chunk; discarded");
                        false
                    }
                };
                if let Some(f) = self.fetches.get_mut(&channel) {
                    f.landed(id, ok);
                    if f.round_done() {
                        self.next_round(&channel);
                    }
                }
                self.pump();
            }
        }
    }

    /// Decide on a release heard from `from` (None: offered locally). Returns a description.
    fn consider(&mut self, signed: SignedRelease, from: Option<PeerId>) -> Result<String, String> {
        let Some(key) = self.cfg.publisher_key else {
            return Err("this node has no pinned publisher key".into());
        };
        if let Ok(body) = signed.peek()
            && let Some(f) = self.fetches.get(body.channel.as_str())
            && f.signed == signed
        {
            return Ok(format!("release {} v{} already known", body.channel, body.version));
        }
        let trust = self.store.trust();
        let body = match accept::check(&signed, &key, &trust, accept::system_now()) {
            Ok(b) => b,
            Err(refusal) => {
                tracing::warn!(from = ?from, reason = %refusal, "release refused");
                return Err(refusal.to_string());
            }
        };
        if !self.cfg.follows(&body.channel) {
            return Ok(format!("channel {} is not followed", body.channel));
        }
        let what = format!("release {} v{}", body.channel, body.version);
        if let Err(e) = self.store.raise_trust(body.channel.as_str(), body.version, body.issued_at) {
            tracing::warn!(error = %e, "release refused");
            return Err(e.to_string());
        }
        if let Err(e) = self.store.record_release(&signed, &body) {
            tracing::error!(error = %e, "cannot record release");
            return Err(e.to_string());
        }
        tracing::info!(channel = %body.channel, version = body.version, artifacts = body.artifacts.len(), bytes = body.stored_bytes(), "release accepted");
        self.start_fetch(signed, body);
        Ok(format!("{what} accepted"))
    }

    fn start_fetch(&mut self, signed: SignedRelease, body: layerhop_protocol::ReleaseBody) {
        let channel = body.channel.as_str().to_owned();
        self.fetches.insert(channel.clone(), Fetch::new(signed, body));
        self.next_round(&channel);
        self.pump();
    }

    /// Walk the release's trees again and queue what is now known to be missing.
    fn next_round(&mut self, channel: &str) {
        let Some(f) = self.fetches.get_mut(channel) else { return };
        match layerhop_store::blob::progress(&self.store, &f.blobs) {
            Ok(p) => {
                let was_complete = f.complete;
                f.refill(p);
                if f.complete && !was_complete {
                    tracing::info!(channel, version = f.body.version, bytes = f.progress.total, secs = f.started.elapsed().as_secs_f64(), "release complete");
                }
                f.stalled = None;
            }
            Err(e) => {
                tracing::error!(channel, error = %e, "release trees are inconsistent; fetch stopped");
                f.stalled = Some(e.to_string());
            }
        }
    }

    /// Send chunk requests while there is room.
    fn pump(&mut self) {
        let Some(seed) = self.seed() else { return };
        if !self.swarm.is_connected(&seed) {
            return;
        }
        let limit = self.cfg.parallel_requests;
        let channels: Vec<String> = self.fetches.keys().cloned().collect();
        for channel in channels {
            loop {
                if self.in_flight_to.get(&seed).copied().unwrap_or(0) >= limit {
                    return;
                }
                let Some(f) = self.fetches.get_mut(&channel) else { break };
                if f.stalled.is_some() {
                    break;
                }
                let Some(ids) = f.next_batch() else { break };
                let id = self.swarm.behaviour_mut().exchange.send_request(&seed, Request::Chunks(ids.clone()));
                self.pending.insert(id, Pending::Chunks { channel: channel.clone(), ids });
                *self.in_flight_to.entry(seed).or_default() += 1;
            }
        }
    }

    fn status(&mut self) -> Status {
        let mut releases = Vec::new();
        let mut seen = HashSet::new();
        for (channel, f) in &self.fetches {
            seen.insert(channel.clone());
            releases.push(ReleaseStatus {
                channel: channel.clone(),
                version: f.body.version,
                complete: f.complete,
                bytes_total: f.progress.total,
                bytes_have: f.progress.have,
                artifacts: f.body.artifacts.len(),
                images: f.body.images.len(),
                expires_at: f.body.expires_at,
                chunks_missing: f.progress.missing.len(),
                stalled: f.stalled.clone(),
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
                })
                .collect(),
            releases,
            traffic: self.classifier.counters.totals(),
        }
    }
}
