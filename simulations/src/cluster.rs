//! In-process nodes: a seed and devices, each the node's own daemon code
//! ([`layerhop_node::daemon::run_until`]) with its own home, talking real libp2p over 127.0.0.1.
//!
//! Why in-process: 200+ nodes as separate processes would cost a process each and a CLI call
//! per status; as tasks they share one tokio runtime and the orchestrator reaches them through
//! their control sockets ([`layerhop_node::control::call`]), exactly as the CLI does.
//!
//! Crashes: aborting the task that runs `run_until` does not stop a node — `run_until` spawns
//! the event loop (which owns the swarm) and the control server as detached tasks, so they keep
//! running and the sockets stay open. A scenario that crashes nodes therefore gives every node
//! its own small runtime, and a crash is `Runtime::shutdown_background`: every task of the node
//! is dropped at once, its connections close and nothing is flushed, as with kill -9. Other
//! scenarios share the caller's runtime.
//!
//! Peer discovery: with the seed's peer exchange, a newcomer dials the members the seed lists
//! while the seed tells each member about the newcomer, so both ends dial and most pairs end up
//! with two connections. Both ends of every link are in this process, so a 5 × 50 fleet would
//! need some 25,000 sockets, over the 20,000 open files this machine allows (and a hard limit
//! that cannot be raised here). `discovery = "config"` gives each device a fixed port and a
//! `site_peers` list of the devices enrolled before it (`peer_exchange = false`): one connection
//! per pair, the same site protocol once connected.
//!
//! A node's traffic counters start at zero with each run, so a node keeps the totals of its
//! earlier runs (as last seen before it went down) in [`Node::earlier`].

use anyhow::{Context, Result, anyhow, bail};
use layerhop_node::control::{self, Request};
use layerhop_node::commands::InitOptions;
use layerhop_node::daemon;
use layerhop_node::home::Home;
use layerhop_node::status::Status;
use layerhop_node::traffic::Totals;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How often to look again while waiting for something.
pub const POLL: Duration = Duration::from_millis(100);

/// Whether a node is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started, or stopped cleanly.
    Down,
    /// Running.
    Up,
    /// Crashed on purpose; it stays down.
    Crashed,
}

struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which tokio forbids inside async code: let it go instead.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// One node.
pub struct Node {
    /// Display name (`site-0/device-3`).
    pub name: String,
    /// Its site ("cloud" for the seed).
    pub site: String,
    /// Its group within the site.
    pub group: String,
    /// Its home.
    pub home: Home,
    /// Up, down or crashed.
    pub state: State,
    /// Its peer id, once started.
    pub peer_id: String,
    /// Whether it shares with its site (its config's `site_sharing`).
    pub sharing: bool,
    /// Its fixed listen address (config discovery).
    pub listen: Option<String>,
    /// Traffic of its earlier runs.
    pub earlier: Totals,
    /// Chunks from the seed / from peers in its earlier runs.
    pub earlier_chunks: (u64, u64),
    /// The last status seen in this run.
    pub last: Option<Status>,
    isolate: bool,
    running: Option<Running>,
}

fn add(a: Totals, b: Totals) -> Totals {
    Totals { metered_in: a.metered_in + b.metered_in, metered_out: a.metered_out + b.metered_out, lan_in: a.lan_in + b.lan_in, lan_out: a.lan_out + b.lan_out }
}

impl Node {
    fn new(name: String, site: &str, group: &str, home: PathBuf, isolate: bool) -> Node {
        Node {
            name,
            site: site.into(),
            group: group.into(),
            home: Home::new(home),
            state: State::Down,
            peer_id: String::new(),
            sharing: true,
            listen: None,
            earlier: Totals::default(),
            earlier_chunks: (0, 0),
            last: None,
            isolate,
            running: None,
        }
    }

    /// Traffic over every run so far (as last seen).
    pub fn traffic(&self) -> Totals {
        add(self.earlier, self.last.as_ref().map(|s| s.traffic).unwrap_or_default())
    }

    /// Metered bytes in both directions over every run so far.
    pub fn metered(&self) -> u64 {
        let t = self.traffic();
        t.metered_in + t.metered_out
    }

    /// (chunks from the seed, chunks from peers) over every run so far.
    pub fn chunks(&self) -> (u64, u64) {
        let (s, p) = self.last.as_ref().map_or((0, 0), |s| (s.chunks_from_seed, s.chunks_from_peers));
        (self.earlier_chunks.0 + s, self.earlier_chunks.1 + p)
    }

    /// Whether the last status shows `version` of `channel` complete.
    pub fn complete(&self, channel: &str, version: u64) -> bool {
        self.last.as_ref().is_some_and(|s| s.releases.iter().any(|r| r.channel == channel && r.version == version && r.complete))
    }

    /// (bytes held, bytes total) of `version` of `channel` in the last status.
    pub fn progress(&self, channel: &str, version: u64) -> (u64, u64) {
        let r = self.last.as_ref().and_then(|s| s.releases.iter().find(|r| r.channel == channel && r.version == version));
        r.map_or((0, 0), |r| (r.bytes_have, r.bytes_total))
    }

    /// Ask the node for its status and remember it.
    pub async fn poll(&mut self) -> Result<&Status> {
        let v = control::call(&self.home, &Request::Status).await.with_context(|| format!("status of {}", self.name))?;
        let s: Status = serde_json::from_value(v).with_context(|| format!("decoding the status of {}", self.name))?;
        self.peer_id = s.peer_id.clone();
        Ok(self.last.insert(s))
    }

    /// Start the daemon and wait until its control socket answers. A restart right after a
    /// clean stop may find the store still locked by the previous run's last disk tasks, so a
    /// failed start is retried until the deadline.
    pub async fn start(&mut self) -> Result<()> {
        if self.running.is_some() {
            bail!("{} is already running", self.name);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (stop, rx) = oneshot::channel::<()>();
            let home = self.home.clone();
            let run = async move {
                daemon::run_until(&home, async move {
                    let _ = rx.await;
                })
                .await
            };
            let (task, runtime) = if self.isolate {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .max_blocking_threads(8)
                    .thread_name("layerhop-node")
                    .enable_all()
                    .build()
                    .context("building a node runtime")?;
                (rt.spawn(run), Some(rt))
            } else {
                (tokio::spawn(run), None)
            };
            let mut running = Running { stop: Some(stop), task, runtime };
            let failed = loop {
                if running.task.is_finished() {
                    let r = (&mut running.task).await;
                    break match r {
                        Ok(Ok(())) => anyhow!("{} stopped right after starting", self.name),
                        Ok(Err(e)) => e,
                        Err(e) => anyhow!("{} panicked: {e}", self.name),
                    };
                }
                if self.poll().await.is_ok() {
                    self.running = Some(running);
                    self.state = State::Up;
                    return Ok(());
                }
                if Instant::now() > deadline {
                    break anyhow!("{}'s control socket did not answer within 60 s", self.name);
                }
                tokio::time::sleep(POLL / 2).await;
            };
            if let Some(rt) = running.runtime.take() {
                rt.shutdown_background();
            }
            if Instant::now() > deadline {
                return Err(failed.context(format!("starting {}", self.name)));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn bank(&mut self) {
        self.earlier = self.traffic();
        self.earlier_chunks = self.chunks();
        self.last = None;
    }

    /// Stop cleanly: the daemon flushes its store and closes its connections.
    pub async fn stop(&mut self) -> Result<()> {
        let _ = self.poll().await;
        self.bank();
        let Some(mut r) = self.running.take() else { return Ok(()) };
        self.state = State::Down;
        if let Some(stop) = r.stop.take() {
            let _ = stop.send(());
        }
        let result = (&mut r.task).await;
        if let Some(rt) = r.runtime.take() {
            rt.shutdown_background();
        }
        match result {
            Ok(r) => r.with_context(|| format!("{} did not stop cleanly", self.name)),
            Err(e) => bail!("{} panicked while stopping: {e}", self.name),
        }
    }

    /// Crash: every task of the node is dropped at once (see the module docs). Bytes it moved
    /// after its last status are not in its own counters; the seed's counters still have them.
    pub async fn crash(&mut self) {
        let _ = self.poll().await;
        self.bank();
        self.state = State::Crashed;
        let Some(mut r) = self.running.take() else { return };
        match r.runtime.take() {
            Some(rt) => rt.shutdown_background(),
            None => {
                // Shared runtime: the detached event loop must be told to stop, or it goes on.
                let _ = control::call(&self.home, &Request::Shutdown).await;
                r.task.abort();
            }
        }
    }
}

/// Rewrite (or add) top-level keys of a node's `config.toml`, keeping the rest of the file and
/// its comments.
pub fn set_config(home: &Home, keys: &toml::Table) -> Result<()> {
    let path = home.config();
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for (k, v) in keys {
        let line = format!("{k} = {v}");
        let at = lines.iter().position(|l| l.split('=').next().is_some_and(|lhs| lhs.trim() == k));
        match at {
            Some(i) => lines[i] = line,
            None => lines.push(line),
        }
    }
    std::fs::write(&path, lines.join("\n") + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Init options shared by every simulated node: no mDNS (the nodes share 127.0.0.1, and a
/// simulation must not multicast on the host's LAN), and no registry mirror or metrics server
/// (hundreds of nodes would fight over one port).
fn no_servers() -> InitOptions<'static> {
    InitOptions { registry: Some("off"), metrics: Some("off"), ..Default::default() }
}

/// A seed and the devices of every site.
pub struct Cluster {
    /// Where the homes live.
    pub root: PathBuf,
    /// The seed.
    pub seed: Node,
    /// Every device ever started, crashed ones included.
    pub devices: Vec<Node>,
    isolate: bool,
    config_discovery: bool,
    next_port: u16,
    /// Child processes hosting each site's devices, when the scenario asks for them.
    pub hosts: Option<crate::host::Hosts>,
}

impl Cluster {
    /// Initialize and start the seed under `root`.
    pub async fn start(root: &Path, isolate: bool, config_discovery: bool) -> Result<Cluster> {
        let mut seed = Node::new("seed".into(), "cloud", "seed", root.join("seed"), isolate);
        let home = seed.home.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let listen = ["/ip4/127.0.0.1/tcp/0".to_owned()];
            layerhop_node::commands::init_with(&home, &InitOptions { seed: true, listen: &listen, ..no_servers() })?;
            Ok(())
        })
        .await?
        .context("initializing the seed")?;
        seed.start().await?;
        let listen = seed.home.listen_addrs();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::read_to_string(&listen).map_or(true, |s| s.trim().is_empty()) {
            if Instant::now() > deadline {
                bail!("the seed wrote no listen address to {} within 30 s", listen.display());
            }
            tokio::time::sleep(POLL / 2).await;
        }
        // Fixed ports come from below the kernel's ephemeral range (32768 and up), so no outgoing
        // connection can take one before its node binds it; the offset keeps concurrent runs apart.
        let next_port = 20_000 + (std::process::id() % 100) as u16 * 120;
        Ok(Cluster { root: root.to_owned(), seed, devices: Vec::new(), isolate, config_discovery, next_port, hosts: None })
    }

    /// Enroll a device of `site` and `group` with `config` keys (not started yet); returns its
    /// index.
    pub async fn add_device(&mut self, site: &str, group: &str, config: &toml::Table) -> Result<usize> {
        let i = self.devices.iter().filter(|d| d.site == site && d.group == group).count();
        let name = format!("{site}/{group}-{i}");
        let mut node = Node::new(name.clone(), site, group, self.root.join(site).join(format!("{group}-{i}")), self.isolate);
        let mut cfg = config.clone();
        let mut listen = "/ip4/127.0.0.1/tcp/0".to_owned();
        if self.config_discovery {
            let port = self.free_port()?;
            listen = format!("/ip4/127.0.0.1/tcp/{port}");
            let earlier: Vec<toml::Value> = self
                .devices
                .iter()
                .filter(|d| d.site == site && d.state != State::Crashed)
                .filter_map(|d| d.listen.clone().map(toml::Value::String))
                .collect();
            cfg.insert("site_peers".into(), toml::Value::Array(earlier));
            cfg.insert("peer_exchange".into(), toml::Value::Boolean(false));
            node.listen = Some(listen.clone());
        }
        node.sharing = cfg.get("site_sharing").and_then(toml::Value::as_bool).unwrap_or(true);
        let (seed, home, site_owned) = (self.seed.home.clone(), node.home.clone(), site.to_owned());
        tokio::task::spawn_blocking(move || -> Result<()> {
            let token = layerhop_node::commands::invite(&seed, &site_owned, &[])?;
            if let Some(parent) = home.root().parent() {
                std::fs::create_dir_all(parent)?;
            }
            // mDNS off: the nodes share 127.0.0.1, and a test must not multicast on the host's LAN.
            let listen = [listen];
            layerhop_node::commands::init_with(&home, &InitOptions { join: Some(&token), listen: &listen, ..no_servers() })?;
            set_config(&home, &cfg)
        })
        .await?
        .with_context(|| format!("enrolling {name}"))?;
        self.devices.push(node);
        Ok(self.devices.len() - 1)
    }

    /// The next port that nobody listens on, for a device's fixed listen address.
    fn free_port(&mut self) -> Result<u16> {
        for _ in 0..2000 {
            let port = self.next_port;
            self.next_port = if port >= 32_000 { 20_000 } else { port + 1 };
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
        bail!("no free port between 20000 and 32000")
    }

    /// Start the given devices together.
    pub async fn start_devices(&mut self, which: &[usize]) -> Result<()> {
        if let Some(hosts) = &mut self.hosts {
            let mut by_site: std::collections::BTreeMap<String, Vec<PathBuf>> = Default::default();
            for &i in which {
                by_site.entry(self.devices[i].site.clone()).or_default().push(self.devices[i].home.root().to_owned());
            }
            for (site, homes) in by_site {
                hosts.spawn(&site, &homes)?;
            }
            let deadline = Instant::now() + Duration::from_secs(120);
            for &i in which {
                while self.devices[i].poll().await.is_err() {
                    hosts.check()?;
                    if Instant::now() > deadline {
                        bail!("{} did not answer within 120 s of its host starting", self.devices[i].name);
                    }
                    tokio::time::sleep(POLL / 2).await;
                }
                self.devices[i].state = State::Up;
            }
            return Ok(());
        }
        let nodes = self.devices.iter_mut().enumerate().filter(|(i, _)| which.contains(i)).map(|(_, d)| d.start());
        futures::future::try_join_all(nodes).await?;
        Ok(())
    }

    /// Poll the status of the given devices together; a device that does not answer is an error.
    pub async fn poll(&mut self, which: &[usize]) -> Result<()> {
        let nodes = self.devices.iter_mut().enumerate().filter(|(i, _)| which.contains(i)).map(|(_, d)| d.poll());
        futures::future::try_join_all(nodes).await?;
        Ok(())
    }

    /// Poll like [`Cluster::poll`], but a device that does not answer this time keeps its last
    /// status (a busy or briefly starved node is not a failure; the caller's deadline is).
    pub async fn poll_lenient(&mut self, which: &[usize]) -> Result<()> {
        if let Some(h) = &mut self.hosts {
            h.check()?;
        }
        let nodes = self.devices.iter_mut().enumerate().filter(|(i, _)| which.contains(i)).map(|(_, d)| d.poll());
        let _ = futures::future::join_all(nodes).await;
        Ok(())
    }

    /// Indices of the devices that are up.
    pub fn up(&self) -> Vec<usize> {
        (0..self.devices.len()).filter(|&i| self.devices[i].state == State::Up).collect()
    }

    /// Wait until every running device is connected to the seed and every sharing device has
    /// every other running sharing device of its site as a site member, so a release is fetched
    /// by a formed site (not by devices that have not met yet).
    pub async fn wait_meshed(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let up = self.up();
            self.poll(&up).await?;
            let mut waiting = None;
            for &i in &up {
                let d = &self.devices[i];
                let Some(s) = &d.last else { continue };
                if !s.peers.iter().any(|p| p.seed) {
                    waiting = Some(format!("{} to connect to the seed", d.name));
                    break;
                }
                if !d.sharing {
                    continue;
                }
                let lacking = up.iter().map(|&j| &self.devices[j]).filter(|o| o.site == d.site && o.sharing && o.peer_id != d.peer_id);
                if let Some(o) = lacking.into_iter().find(|o| !s.peers.iter().any(|p| p.site_member && p.peer_id == o.peer_id)) {
                    waiting = Some(format!("{} to know {} as a site member", d.name, o.name));
                    break;
                }
            }
            let Some(what) = waiting else { return Ok(()) };
            if Instant::now() > deadline {
                bail!("timed out after {limit:?} waiting for {what}");
            }
            tokio::time::sleep(POLL * 2).await;
        }
    }

    /// Stop every node (clean stops; errors of crashed nodes' leftovers are ignored).
    pub async fn shutdown(&mut self) {
        if let Some(hosts) = &mut self.hosts {
            for d in &mut self.devices {
                d.state = State::Down;
            }
            hosts.shutdown();
        }
        let up = self.up();
        let nodes = self.devices.iter_mut().enumerate().filter(|(i, _)| up.contains(i)).map(|(_, d)| d.stop());
        for r in futures::future::join_all(nodes).await {
            if let Err(e) = r {
                eprintln!("warning: {e:#}");
            }
        }
        if let Err(e) = self.seed.stop().await {
            eprintln!("warning: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_are_rewritten_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = Home::new(dir.path());
        std::fs::write(home.config(), "# c\nrole = \"device\"\nsite_sharing = true\n").expect("write");
        let mut t = toml::Table::new();
        t.insert("site_sharing".into(), toml::Value::Boolean(false));
        t.insert("lease_secs".into(), toml::Value::Integer(5));
        set_config(&home, &t).expect("set");
        let text = std::fs::read_to_string(home.config()).expect("read");
        assert_eq!(text, "# c\nrole = \"device\"\nsite_sharing = false\nlease_secs = 5\n");
    }
}
