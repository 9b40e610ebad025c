//! The control socket: how `layerhop publish|status|export|offer` talk to a running daemon.
//!
//! A Unix socket in the node's home (so only users who can reach the home can use it), one JSON
//! request line and one JSON reply line per connection. The daemon holds the store's lock;
//! commands that need the store go through here instead of opening it a second time.

use crate::event_loop::{Command, Handle};
use crate::home::Home;
use anyhow::{Context, Result, anyhow, bail};
use layerhop_protocol::{Channel, PublisherKey, ReleaseBody, SignedRelease, release::PublicKey};
use layerhop_store::Store;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

const MAX_LINE: usize = 1 << 20;

/// A request on the control socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The node's status.
    Status,
    /// Seed: import sources and publish them as the channel's next release.
    Publish {
        /// Channel name.
        channel: String,
        /// Absolute source paths.
        sources: Vec<PathBuf>,
        /// Explicit version (must be newer); default: the next one.
        version: Option<u64>,
        /// Validity in seconds; default: the config's `release_ttl_days`.
        ttl_secs: Option<u64>,
        /// How devices weigh it against their metered-link policy.
        #[serde(default)]
        priority: layerhop_protocol::release::Priority,
    },
    /// Reassemble the newest release of a channel into `out`.
    Export {
        /// Channel name.
        channel: String,
        /// Absolute output path.
        out: PathBuf,
    },
    /// Hand over a signed release file's bytes (hex), as if a peer had announced it.
    Offer {
        /// Hex of the encoded signed release.
        release_hex: String,
    },
    /// Seed: the fleet view (sites, devices, releases held, metered bytes per site).
    Fleet,
    /// Seed: revoke devices by peer id and/or token (credential) id, hex.
    Revoke {
        /// libp2p peer ids.
        peers: Vec<String>,
        /// Credential ids (32 hex digits), as `layerhop invite` prints them.
        token_ids: Vec<String>,
    },
    /// Seed: replace the publisher key by a new one, through a statement signed by the old.
    RotateKey,
    /// Progress of the publish running now, if any.
    PublishProgress,
    /// Re-read the metered-link policy from the config.
    Reload,
    /// Stop the daemon.
    Shutdown,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Ok(serde_json::Value),
    Error(String),
}

/// What the control server needs.
pub struct Server {
    /// The store.
    pub store: Arc<Store>,
    /// The event loop.
    pub handle: Handle,
    /// Seed: the publisher key (replaced by `rotate-key`).
    pub publisher: std::sync::RwLock<Option<Arc<PublisherKey>>>,
    /// The pinned publisher key: releases are verified with it and the rotations from it.
    pub verify_key: Option<PublicKey>,
    /// The node's home (where a seed's key files are).
    pub home: Home,
    /// Default validity of published releases.
    pub ttl: Duration,
    /// Serializes publishes so versions are assigned in order.
    pub publish_lock: tokio::sync::Mutex<()>,
    /// The store's import counter when the running publish started (None: no publish).
    pub publishing: std::sync::Mutex<Option<u64>>,
    /// The config file, re-read by `Reload`.
    pub config: PathBuf,
}

/// How far the running publish is, as `PublishProgress` answers.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct PublishProgress {
    /// Whether a publish is importing now.
    pub active: bool,
    /// Source bytes it has read so far.
    pub bytes_read: u64,
}

/// Clears the running publish's start mark when the publish ends, however it ends.
struct Publishing<'a>(&'a std::sync::Mutex<Option<u64>>);

impl Drop for Publishing<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.0.lock() {
            *p = None;
        }
    }
}

/// Bind the socket, replacing a stale one left by a crashed daemon.
pub async fn bind(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!("a daemon is already running with this home (control socket {} answers)", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    UnixListener::bind(path).with_context(|| format!("binding control socket {}", path.display()))
}

impl Server {
    /// Serve connections until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: UnixListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.connection(stream).await {
                    tracing::debug!(error = %e, "control connection failed");
                }
            });
        }
    }

    async fn connection(&self, stream: UnixStream) -> Result<()> {
        let (r, mut w) = stream.into_split();
        let mut line = String::new();
        let n = BufReader::new(r).take(MAX_LINE as u64).read_line(&mut line).await?;
        let reply = if n == 0 || !line.ends_with('\n') {
            Reply::Error("request must be one JSON line of at most 1 MiB".into())
        } else {
            match serde_json::from_str::<Request>(&line) {
                Ok(req) => match self.handle(req).await {
                    Ok(v) => Reply::Ok(v),
                    Err(e) => Reply::Error(format!("{e:#}")),
                },
                Err(e) => Reply::Error(format!("bad request: {e}")),
            }
        };
        let mut out = serde_json::to_vec(&reply)?;
        out.push(b'\n');
        w.write_all(&out).await?;
        Ok(())
    }

    async fn handle(&self, req: Request) -> Result<serde_json::Value> {
        match req {
            Request::Status => {
                let s = self.handle.call(Command::Status).await.ok_or_else(|| anyhow!("daemon is stopping"))?;
                Ok(serde_json::to_value(s)?)
            }
            Request::Publish { channel, sources, version, ttl_secs, priority } => {
                let o = crate::commands::PublishOptions { version, ttl_secs, priority };
                self.publish(channel, sources, o).await
            }
            Request::Export { channel, out } => self.export(channel, out).await,
            Request::Offer { release_hex } => {
                let bytes = hex::decode(release_hex.trim()).context("release is not hex")?;
                let signed = SignedRelease::decode(&bytes)?;
                let r = self.handle.call(|tx| Command::Offer(signed, tx)).await.ok_or_else(|| anyhow!("daemon is stopping"))?;
                r.map(serde_json::Value::String).map_err(|e| anyhow!(e))
            }
            Request::Fleet => {
                let f = self.handle.call(Command::Fleet).await.ok_or_else(|| anyhow!("daemon is stopping"))?;
                let f = f.ok_or_else(|| anyhow!("only a seed keeps the fleet view; this node is a device"))?;
                Ok(serde_json::to_value(f)?)
            }
            Request::Revoke { peers, token_ids } => {
                let peers = peers.iter().map(|p| p.parse::<libp2p::PeerId>().with_context(|| format!("{p:?} is not a peer id"))).collect::<Result<Vec<_>>>()?;
                let token_ids = token_ids.iter().map(|t| parse_token_id(t)).collect::<Result<Vec<_>>>()?;
                if peers.is_empty() && token_ids.is_empty() {
                    bail!("name at least one device to revoke: --peer PEERID or --token-id ID");
                }
                let r = self.handle.call(|reply| Command::Revoke { peers, token_ids, reply }).await.ok_or_else(|| anyhow!("daemon is stopping"))?;
                r.map_err(|e| anyhow!(e))
            }
            Request::RotateKey => self.rotate_key().await,
            Request::PublishProgress => {
                let start = self.publishing.lock().map_err(|_| anyhow!("publish state poisoned"))?.to_owned();
                let p = match start {
                    Some(s) => PublishProgress { active: true, bytes_read: self.store.imported_bytes().saturating_sub(s) },
                    None => PublishProgress::default(),
                };
                Ok(serde_json::to_value(p)?)
            }
            Request::Reload => Ok(serde_json::Value::String(crate::policy::gate::reload(&self.config, &self.handle).await?)),
            Request::Shutdown => {
                self.handle.call(Command::Shutdown).await;
                Ok(serde_json::Value::Null)
            }
        }
    }

    async fn publish(&self, channel: String, sources: Vec<PathBuf>, o: crate::commands::PublishOptions) -> Result<serde_json::Value> {
        let crate::commands::PublishOptions { version, ttl_secs, priority } = o;
        let key = self.current_publisher()?;
        let channel = Channel::new(&channel)?;
        if sources.is_empty() {
            bail!("nothing to publish: name at least one source");
        }
        let _guard = self.publish_lock.lock().await;
        if let Ok(mut p) = self.publishing.lock() {
            *p = Some(self.store.imported_bytes());
        }
        let _publishing = Publishing(&self.publishing);
        let store = self.store.clone();
        let ttl = ttl_secs.map(Duration::from_secs).unwrap_or(self.ttl);
        let started = std::time::Instant::now();
        let (signed, body) = tokio::task::spawn_blocking(move || -> Result<(SignedRelease, ReleaseBody)> {
            let current = store.trust().versions.get(channel.as_str()).copied().unwrap_or(0);
            let version = match version {
                Some(v) if v <= current => bail!("version {v} is not newer than the channel's current version {current}"),
                Some(v) => v,
                None => current + 1,
            };
            store.set_durable(false);
            let imported = layerhop_store::import::import_sources(&store, &sources);
            store.set_durable(true);
            let imported = imported?;
            store.sync()?;
            let now = crate::accept::system_now();
            let body = ReleaseBody {
                channel: channel.clone(),
                version,
                issued_at: now,
                expires_at: now.saturating_add(ttl.as_secs()),
                artifacts: imported.artifacts,
                images: imported.images,
                priority,
            };
            let signed = key.sign_release(&body)?;
            store.raise_trust(channel.as_str(), version, now)?;
            store.record_release(&signed, &body)?;
            Ok((signed, body))
        })
        .await??;
        let release_bytes = signed.encode().len();
        let announced = self.handle.call(|tx| Command::Announce(signed, tx)).await.unwrap_or(0);
        tracing::info!(channel = %body.channel, version = body.version, artifacts = body.artifacts.len(), "published");
        Ok(serde_json::json!({
            "channel": body.channel.as_str(),
            "version": body.version,
            "artifacts": body.artifacts.len(),
            "images": body.images.len(),
            "bytes": body.artifacts.iter().map(|a| a.size).sum::<u64>(),
            "stored_bytes": body.stored_bytes(),
            "release_bytes": release_bytes,
            "urgent": body.priority.urgent,
            "ignore_budget": body.priority.ignore_budget,
            "announced_to": announced,
            "seconds": started.elapsed().as_secs_f64(),
        }))
    }

    async fn export(&self, channel: String, out: PathBuf) -> Result<serde_json::Value> {
        let key = self.verify_key.ok_or_else(|| anyhow!("no key to verify releases with"))?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || -> Result<serde_json::Value> {
            let signed = store.release(&channel)?.ok_or_else(|| anyhow!("no release of channel {channel:?} is held"))?;
            let keys = crate::fleet_trust::release_keys(&key, &store.trust().rotations);
            let body = crate::fleet_trust::verify_recorded(&signed, &keys)?;
            let blobs: Vec<_> = body.artifacts.iter().flat_map(|a| a.content.blobs()).collect();
            let p = layerhop_store::blob::progress(&store, &blobs)?;
            if !p.complete() {
                bail!("release {channel} v{} is incomplete: {} of {} bytes held", body.version, p.have, p.total);
            }
            let e = layerhop_store::export::export_release(&store, &body, &out)?;
            Ok(serde_json::json!({
                "channel": channel,
                "version": body.version,
                "out": out,
                "files": e.files,
                "bytes": e.bytes,
            }))
        })
        .await?
    }
}

fn parse_token_id(t: &str) -> Result<[u8; 16]> {
    let b = hex::decode(t.trim()).with_context(|| format!("token id {t:?} is not hex"))?;
    b.try_into().map_err(|_| anyhow!("token id {t:?} must be 32 hex digits"))
}

impl Server {
    fn current_publisher(&self) -> Result<Arc<PublisherKey>> {
        self.publisher
            .read()
            .map_err(|_| anyhow!("publisher key lock poisoned"))?
            .clone()
            .ok_or_else(|| anyhow!("only a seed publishes (this node has no publisher key)"))
    }

    /// `layerhop rotate-key`: the current key signs a statement handing over to a new one. The
    /// new secret is written beside the old (`publisher.key.next`), the statement is stored in
    /// `trust.json`, then the new secret replaces the old by rename; a crash in between is
    /// finished at the next start (see [`crate::daemon`]). Publishing waits meanwhile.
    async fn rotate_key(&self) -> Result<serde_json::Value> {
        let _guard = self.publish_lock.lock().await;
        let old = self.current_publisher()?;
        let pinned = self.verify_key.ok_or_else(|| anyhow!("the config names no publisher key"))?;
        let trust = self.store.trust();
        let keys = layerhop_protocol::rotation::keys(&pinned, &trust.rotations)?;
        if keys.last() != Some(&old.public()) {
            bail!("publisher.key is not the newest key of the rotation chain; refusing to rotate from it");
        }
        let seq = trust.rotations.last().map_or(1, |r| r.rotation.seq + 1);
        let new = PublisherKey::generate()?;
        let statement = layerhop_protocol::rotation::SignedRotation::sign(&old, new.public(), seq, crate::accept::system_now())?;
        let mut rotations = trust.rotations.clone();
        rotations.push(statement);
        layerhop_protocol::rotation::keys(&pinned, &rotations)?;
        let next = crate::home::next_publisher_key(&self.home);
        crate::home::write_secret(&next, &new.to_bytes())?;
        self.store.set_trust_statements(rotations, trust.revocations)?;
        crate::home::replace_file(&next, &self.home.publisher_key())?;
        *self.publisher.write().map_err(|_| anyhow!("publisher key lock poisoned"))? = Some(Arc::new(new));
        let new_key = self.current_publisher()?.public().to_hex();
        tracing::info!(seq, key = %new_key, "publisher key rotated");
        let told = self.handle.call(Command::PushTrust).await.unwrap_or(0);
        Ok(serde_json::json!({ "seq": seq, "old_key": old.public().to_hex(), "new_key": new_key, "devices_told": told }))
    }
}

/// Send one request to the daemon of `home` and return its result.
pub async fn call(home: &Home, req: &Request) -> Result<serde_json::Value> {
    let path = home.control_socket();
    let stream = UnixStream::connect(&path)
        .await
        .with_context(|| format!("no daemon answers at {} (start it with `layerhop run --home {}`)", path.display(), home.root().display()))?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    let mut reply = String::new();
    BufReader::new(r).take(64 << 20).read_line(&mut reply).await?;
    match serde_json::from_str::<Reply>(&reply).with_context(|| format!("daemon sent a malformed reply: {reply:?}"))? {
        Reply::Ok(v) => Ok(v),
        Reply::Error(e) => Err(anyhow!(e)),
    }
}
