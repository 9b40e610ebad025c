//! `layerhop run`: open the store, start the swarm, the event loop and the control socket, and
//! stop cleanly on SIGINT or SIGTERM (the index is flushed and the socket removed). SIGHUP
//! re-reads the metered-link policy from the config (see [`crate::policy::gate`]).

use crate::config::{Config, Role};
use crate::control;
use crate::event_loop::{Command, EventLoop, Parts};
use layerhop_protocol::token::Credential;
use crate::home::Home;
use crate::traffic::Classifier;
use anyhow::{Context, Result, anyhow};
use layerhop_store::Store;
use std::sync::Arc;

/// Run the daemon of `home` until SIGINT or SIGTERM (or a `shutdown` control request).
pub async fn run(home: &Home) -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("installing SIGTERM handler")?;
    run_until(home, async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
            _ = term.recv() => tracing::info!("terminated; stopping"),
        }
    })
    .await
}

/// Run the daemon of `home` until `stop` completes (the simulations run many nodes in one
/// process this way).
pub async fn run_until(home: &Home, stop: impl std::future::Future<Output = ()>) -> Result<()> {
    let cfg = Config::load(&home.config())?;
    let key = home.load_identity()?;
    let data = home.data();
    let (store, report) = tokio::task::spawn_blocking(move || Store::open(&data)).await??;
    if report.rebuilt {
        tracing::warn!(kept = report.chunks_kept, dropped = report.chunks_dropped, "the index was rebuilt from the chunk files");
    }
    let store = Arc::new(store);
    let publisher = match cfg.role {
        Role::Seed => Some(Arc::new(seed_publisher_key(home, &cfg, &store)?)),
        Role::Device => None,
    };
    let verify_key = cfg.publisher_key;
    let classifier = Classifier::new(cfg.role == Role::Seed, &cfg.seed_addrs, &cfg.metered_interfaces);
    let with_mdns = cfg.role == Role::Device && cfg.mdns && cfg.site_sharing;
    // The lane's certificate proves the node's identity, as the swarm's handshakes do.
    let lane_identity = if cfg.role == Role::Device && cfg.site_sharing && cfg.bulk_lane {
        match crate::lane::tls::Identity::new(&key) {
            Ok(i) => Some(Arc::new(i)),
            Err(e) => {
                tracing::error!(error = %e, "no lane: chunks from site peers go over the libp2p connection");
                None
            }
        }
    } else {
        None
    };
    let swarm = crate::swarm::build(key, classifier.clone(), cfg.request_timeout, with_mdns, cfg.role == Role::Seed, crate::swarm::limits(cfg.role == Role::Seed)).map_err(|e| anyhow!("building the network stack: {e}"))?;
    let fleet_signer = match cfg.role {
        Role::Seed => Some(Arc::new(home.load_signing_key(&home.fleet_key())?)),
        Role::Device => None,
    };
    let (credential, fleet_key) = match cfg.role {
        Role::Seed => (None, fleet_signer.as_ref().map(|k| k.public())),
        Role::Device => {
            let path = home.credential();
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let c: Credential = serde_json::from_slice(&bytes).with_context(|| format!("{} is not a credential", path.display()))?;
            (Some(c), cfg.fleet_key)
        }
    };
    let peer_id = *swarm.local_peer_id();
    let listener = control::bind(&home.control_socket()).await?;
    let registry = crate::registry::start(&cfg, home, store.clone(), verify_key).await;
    let ttl = cfg.release_ttl;
    let metrics_cfg = cfg.clone();
    let role = cfg.role;
    let policy = crate::policy::Policy::open(cfg.policy.clone(), (role == Role::Device).then(|| home.metered_ledger()), crate::policy::Now::system());
    let parts = Parts { store: store.clone(), cfg, classifier, listen_file: home.listen_addrs(), credential, fleet_key, fleet_signer, policy, lane_identity };
    let (event_loop, handle) = EventLoop::new(swarm, parts).context("starting the chunk writer")?;
    let server = Arc::new(control::Server {
        store,
        handle: handle.clone(),
        publisher: std::sync::RwLock::new(publisher),
        verify_key,
        home: home.clone(),
        ttl,
        publish_lock: tokio::sync::Mutex::new(()),
        publishing: Default::default(),
        config: home.config(),
    });
    let metrics = crate::metrics::start(&metrics_cfg, home, handle.clone()).await;
    tracing::info!(%peer_id, ?role, home = %home.root().display(), "layerhop node started");
    let control_task = tokio::spawn(server.serve(listener));
    let mut loop_task = tokio::spawn(event_loop.run());
    let hup_task = tokio::spawn(reload_on_hangup(home.config(), handle.clone()));
    // Dropping this future (a caller aborting the node) stops the node's tasks too, instead of
    // leaving its swarm and sockets running detached.
    let _guard = AbortOnDrop(vec![control_task.abort_handle(), loop_task.abort_handle(), hup_task.abort_handle()]);
    tokio::select! {
        _ = stop => {}
        _ = &mut loop_task => tracing::info!("event loop stopped"),
    }
    handle.call(Command::Shutdown).await;
    control_task.abort();
    if let Some(r) = registry {
        r.stop();
    }
    if let Some(m) = metrics {
        m.stop();
    }
    let _ = std::fs::remove_file(home.control_socket());
    let _ = std::fs::remove_file(home.listen_addrs());
    Ok(())
}

/// The seed's current publisher key: the newest of the rotation chain from the pinned key.
/// Finishes a `rotate-key` cut short after its statement was stored (`publisher.key.next`
/// is the new key) and drops one cut short before (the statement was never stored).
fn seed_publisher_key(home: &Home, cfg: &Config, store: &Store) -> Result<layerhop_protocol::PublisherKey> {
    let pinned = cfg.publisher_key.ok_or_else(|| anyhow!("the seed's config names no publisher_key"))?;
    let keys = layerhop_protocol::rotation::keys(&pinned, &store.trust().rotations).context("the stored key rotations do not verify")?;
    let head = keys.last().copied().unwrap_or(pinned);
    let next = crate::home::next_publisher_key(home);
    if next.exists() {
        if home.load_signing_key(&next)?.public() == head {
            tracing::warn!("finishing an interrupted key rotation");
            crate::home::replace_file(&next, &home.publisher_key())?;
        } else {
            tracing::warn!("dropping the key of a rotation that was never recorded");
            std::fs::remove_file(&next).with_context(|| format!("removing {}", next.display()))?;
        }
    }
    let k = home.load_signing_key(&home.publisher_key())?;
    if k.public() != head {
        anyhow::bail!("{} holds key {}, but the newest trusted publisher key is {}", home.publisher_key().display(), k.public().to_hex(), head.to_hex());
    }
    Ok(k)
}

/// Re-read the policy keys of `config` on every SIGHUP; a bad config is logged and the rules in
/// force stay.
async fn reload_on_hangup(config: std::path::PathBuf, handle: crate::event_loop::Handle) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; use `layerhop reload`");
            return;
        }
    };
    while hup.recv().await.is_some() {
        match crate::policy::gate::reload(&config, &handle).await {
            Ok(words) => tracing::info!("SIGHUP: {words}"),
            Err(e) => tracing::error!(error = format!("{e:#}"), "SIGHUP: reload failed"),
        }
    }
}

/// Aborts the node's tasks when dropped.
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}
