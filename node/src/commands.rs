//! The subcommands other than `run` and `demo`: init, invite, publish, status, export, offer.

use crate::config::{self, Config, Role, TemplateValues};
use crate::control::{self, Request};
use crate::home::{Home, write_secret};
use crate::status::Status;
use crate::upstream;
use anyhow::{Context, Result, anyhow, bail};
use layerhop_protocol::PublisherKey;
use layerhop_protocol::token::{Credential, JoinToken};
use oci_client::secrets::RegistryAuth;
use std::path::{Path, PathBuf};

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}

/// `layerhop init` with the default registry and metrics addresses.
pub fn init(home: &Home, seed: bool, join: Option<&str>, listen: &[String], mdns: bool) -> Result<String> {
    init_with_registry(home, seed, join, listen, mdns, None)
}

/// `layerhop init`; `registry` is `init --registry` ("HOST:PORT" or "off"; None: the default).
pub fn init_with_registry(home: &Home, seed: bool, join: Option<&str>, listen: &[String], mdns: bool, registry: Option<&str>) -> Result<String> {
    init_with(home, &InitOptions { seed, join, listen, mdns, registry, metrics: None })
}

/// What `layerhop init` is told.
#[derive(Debug, Default)]
pub struct InitOptions<'a> {
    /// Make a seed.
    pub seed: bool,
    /// A device's join token.
    pub join: Option<&'a str>,
    /// Listen multiaddrs (empty: the role's default).
    pub listen: &'a [String],
    /// Find site peers by mDNS.
    pub mdns: bool,
    /// `--registry` ("HOST:PORT" or "off"; None: the default).
    pub registry: Option<&'a str>,
    /// `--metrics` ("HOST:PORT" or "off"; None: the default).
    pub metrics: Option<&'a str>,
}

/// `layerhop init`.
pub fn init_with(home: &Home, o: &InitOptions<'_>) -> Result<String> {
    let (seed, join, listen, mdns) = (o.seed, o.join, o.listen, o.mdns);
    let registry = o.registry.unwrap_or(crate::registry::DEFAULT_ADDR);
    config::parse_registry(registry).context("--registry")?;
    let metrics = o.metrics.unwrap_or(crate::metrics::DEFAULT_ADDR);
    config::parse_metrics(metrics).context("--metrics")?;
    if home.config().exists() {
        bail!("{} already exists: this home is initialized", home.config().display());
    }
    for a in listen {
        a.parse::<libp2p::Multiaddr>().with_context(|| format!("--listen {a:?} is not a multiaddr"))?;
    }
    let token = match join {
        Some(t) => Some(JoinToken::decode(t).context("the join token is not valid")?),
        None => None,
    };
    std::fs::create_dir_all(home.root()).with_context(|| format!("creating {}", home.root().display()))?;
    let identity = libp2p::identity::Keypair::generate_ed25519();
    write_secret(&home.identity(), &identity.to_protobuf_encoding()?)?;
    let peer = identity.public().to_peer_id();
    let text = if seed {
        let publisher = PublisherKey::generate()?;
        let fleet = PublisherKey::generate()?;
        write_secret(&home.publisher_key(), &publisher.to_bytes())?;
        write_secret(&home.fleet_key(), &fleet.to_bytes())?;
        config::render(&TemplateValues {
            role: "seed",
            site: "cloud",
            listen,
            seed_addrs: &[],
            seed_peer: "",
            publisher_key: &publisher.public().to_hex(),
            fleet_key: &fleet.public().to_hex(),
            mdns: false,
            registry,
            metrics,
        })
    } else {
        let t = token.ok_or_else(|| anyhow!("pass --seed or --join TOKEN"))?;
        let seed_peer = libp2p::PeerId::from_bytes(&t.seed_peer).context("the join token's seed peer id is invalid")?;
        write_secret(&home.credential(), &encode_credential(&t.credential)?)?;
        config::render(&TemplateValues {
            role: "device",
            site: &t.credential.site,
            listen,
            seed_addrs: &t.seed_addrs,
            seed_peer: &seed_peer.to_string(),
            publisher_key: &t.publisher.to_hex(),
            fleet_key: &t.fleet.to_hex(),
            mdns,
            registry,
            metrics,
        })
    };
    Config::parse(&text).context("the generated config does not validate")?;
    std::fs::write(home.config(), text)?;
    Ok(format!("initialized {} as {} (peer id {peer})", home.root().display(), if seed { "seed" } else { "device" }))
}

fn encode_credential(c: &Credential) -> Result<Vec<u8>> {
    serde_json::to_vec(c).context("encoding credential")
}

/// `layerhop invite`.
pub fn invite(home: &Home, site: &str, addrs: &[String]) -> Result<String> {
    let cfg = Config::load(&home.config())?;
    if cfg.role != Role::Seed {
        bail!("only a seed invites devices; {} is a device", home.root().display());
    }
    let fleet = home.load_signing_key(&home.fleet_key())?;
    let publisher = home.load_signing_key(&home.publisher_key())?;
    let peer = home.load_identity()?.public().to_peer_id();
    let mut seed_addrs: Vec<String> = addrs.to_vec();
    if seed_addrs.is_empty() {
        let running = std::fs::read_to_string(home.listen_addrs()).unwrap_or_default();
        seed_addrs = running.lines().map(str::to_owned).filter(|a| !a.is_empty()).collect();
    }
    if seed_addrs.is_empty() {
        seed_addrs = cfg.listen.iter().map(|a| a.to_string()).filter(|a| !a.contains("/0.0.0.0/") && !a.contains("/::/")).collect();
    }
    if seed_addrs.is_empty() {
        bail!("the seed listens on all interfaces and is not running: pass --addr MULTIADDR (where devices reach it), or start the seed first");
    }
    for a in &seed_addrs {
        a.parse::<libp2p::Multiaddr>().with_context(|| format!("--addr {a:?} is not a multiaddr"))?;
    }
    let pinned = cfg.publisher_key.unwrap_or(publisher.public());
    let token = JoinToken {
        seed_addrs,
        seed_peer: peer.to_bytes(),
        // The newest key, as the seed's stored rotations say (the running seed may hold them).
        publisher: current_publisher_public(home, pinned).unwrap_or(publisher.public()),
        fleet: fleet.public(),
        credential: Credential::issue(&fleet, site, crate::accept::system_now())?,
    };
    eprintln!("token id {} (revoke with `layerhop revoke --token-id {}`)", hex::encode(token.credential.device), hex::encode(token.credential.device));
    Ok(token.encode())
}

/// The newest publisher key: the seed's key file is replaced last in a rotation, so it is
/// the newest key unless a rotation was cut short; the stored chain settles that.
fn current_publisher_public(home: &Home, pinned: layerhop_protocol::release::PublicKey) -> Option<layerhop_protocol::release::PublicKey> {
    let bytes = std::fs::read(home.data().join("trust.json")).ok()?;
    let t: layerhop_store::trust::Trust = serde_json::from_slice(&bytes).ok()?;
    layerhop_protocol::rotation::keys(&pinned, &t.rotations).ok()?.last().copied()
}

/// `layerhop revoke`.
pub fn revoke(home: &Home, peers: &[String], token_ids: &[String]) -> Result<serde_json::Value> {
    block_on(control::call(home, &Request::Revoke { peers: peers.to_vec(), token_ids: token_ids.to_vec() }))
}

/// `layerhop rotate-key`.
pub fn rotate_key(home: &Home) -> Result<serde_json::Value> {
    block_on(control::call(home, &Request::RotateKey))
}

pub(crate) fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

/// What a publish may set besides its sources.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishOptions {
    /// Explicit version (must be newer); default: the next one.
    pub version: Option<u64>,
    /// Validity in seconds; default: the config's `release_ttl_days`.
    pub ttl_secs: Option<u64>,
    /// How devices weigh the release against their metered-link policy (signed with it).
    pub priority: layerhop_protocol::release::Priority,
}

/// `layerhop publish` of files.
pub fn publish(home: &Home, channel: &str, sources: &[PathBuf], o: PublishOptions) -> Result<serde_json::Value> {
    publish_from(home, channel, sources, None, o)
}

/// `publish --from-registry`: the image, which of an index's platforms, and as whom.
pub struct Upstream {
    /// The image.
    pub source: upstream::Source,
    /// The platform taken from a multi-platform index.
    pub platform: upstream::Platform,
    /// Anonymous, or basic credentials (also sent to a token service).
    pub auth: RegistryAuth,
}

impl Upstream {
    /// From the command line; the password comes from standard input (`--password-stdin`) or
    /// `LAYERHOP_REGISTRY_PASSWORD`, never from an argument. None without `--from-registry`.
    pub fn from_args(a: crate::cli::UpstreamArgs) -> Result<Option<Upstream>> {
        let Some(url) = a.from_registry else { return Ok(None) };
        let source = upstream::Source::parse(&url)?;
        let platform = a.platform.as_deref().map(upstream::Platform::parse).transpose()?.unwrap_or_else(upstream::Platform::host);
        let password = if a.password_stdin {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("reading the password from standard input")?;
            let p = line.trim_end_matches(['\n', '\r']).to_owned();
            if p.is_empty() {
                bail!("--password-stdin: standard input held no password");
            }
            Some(p)
        } else {
            std::env::var("LAYERHOP_REGISTRY_PASSWORD").ok()
        };
        let auth = match (a.username, password) {
            (Some(u), Some(p)) => RegistryAuth::Basic(u, p),
            (None, None) => RegistryAuth::Anonymous,
            (Some(u), None) => bail!("user {u:?} needs a password: pass --password-stdin or set LAYERHOP_REGISTRY_PASSWORD"),
            (None, Some(_)) => bail!("a registry password was given without a user name: pass --username or set LAYERHOP_REGISTRY_USERNAME"),
        };
        Ok(Some(Upstream { source, platform, auth }))
    }
}

/// `layerhop publish`: `sources`, and the image of `upstream` downloaded into a temporary OCI
/// layout in the home (removed once the seed has imported it).
pub fn publish_from(
    home: &Home,
    channel: &str,
    sources: &[PathBuf],
    upstream: Option<&Upstream>,
    o: PublishOptions,
) -> Result<serde_json::Value> {
    let PublishOptions { version, ttl_secs, priority } = o;
    let mut sources = sources.iter().map(|s| absolute(s)).collect::<Result<Vec<_>>>()?;
    for s in &sources {
        if !s.exists() {
            bail!("source {} does not exist", s.display());
        }
    }
    block_on(async move {
        let Some(up) = upstream else {
            return control::call(home, &Request::Publish { channel: channel.into(), sources, version, ttl_secs, priority }).await;
        };
        // Fail before a long download, not after it.
        if Config::load(&home.config())?.role != Role::Seed {
            bail!("only a seed publishes; {} is a device", home.root().display());
        }
        control::call(home, &Request::Status).await?;
        let root = absolute(home.root())?;
        let tmp = tempfile::Builder::new().prefix(".from-registry-").tempdir_in(&root).with_context(|| format!("creating a download directory in {}", root.display()))?;
        let layout = tmp.path().join("image");
        let got = upstream::download(&up.source, up.auth.clone(), &up.platform, &layout)
            .await
            .with_context(|| format!("downloading {}", up.source.text()))?;
        tracing::info!(image = up.source.text(), manifest = %got.manifest_digest, layers = got.layers, bytes = got.bytes, "downloaded from the registry");
        sources.push(layout);
        let mut v = control::call(home, &Request::Publish { channel: channel.into(), sources, version, ttl_secs, priority }).await?;
        v["from_registry"] = serde_json::json!({
            "image": up.source.text(),
            "manifest_digest": got.manifest_digest,
            "layers": got.layers,
            "downloaded_bytes": got.bytes,
        });
        drop(tmp);
        Ok(v)
    })
}

/// `layerhop reload`: the running daemon re-reads its metered-link policy.
pub fn reload(home: &Home) -> Result<String> {
    let v = block_on(control::call(home, &Request::Reload))?;
    Ok(v.as_str().unwrap_or_default().to_owned())
}

/// `layerhop status` as a value.
pub fn status(home: &Home) -> Result<Status> {
    let v = block_on(control::call(home, &Request::Status))?;
    serde_json::from_value(v).context("decoding status")
}

/// Human form of a status: who this node is, its site peers, releases with progress, and the
/// bytes it moved by link class since it started.
pub fn render_status(s: &Status) -> String {
    use indicatif::HumanBytes;
    let role = serde_json::to_value(s.role).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    let mut out = format!("peer {}  {role}  site {}\n", s.peer_id, s.site);
    out += &format!("listening on {}\n", s.listen_addrs.join(", "));
    let members: Vec<_> = s.peers.iter().filter(|p| p.site_member).collect();
    let seed = s.peers.iter().find(|p| p.seed);
    match s.role {
        Role::Device => {
            out += &format!("seed: {}\n", seed.map_or("not connected".to_owned(), |p| format!("connected ({}, {} link)", p.peer_id, p.link)));
            out += &format!("site peers: {}\n", members.len());
            for p in &members {
                out += &format!("  {} ({})\n", p.peer_id, p.link);
            }
        }
        Role::Seed => out += &format!("devices connected: {} (see `layerhop fleet`)\n", s.peers.len()),
    }
    let others = s.peers.len() - members.len() - usize::from(seed.is_some() && s.role == Role::Device);
    if s.role == Role::Device && others > 0 {
        out += &format!("other peers: {others} (not members of this site)\n");
    }
    if s.banned_peers > 0 || s.strikes > 0 {
        out += &format!("banned peers: {} ({} strikes given)\n", s.banned_peers, s.strikes);
    }
    out += &format!("releases: {}\n", s.releases.len());
    for r in &s.releases {
        let pct = if r.bytes_total == 0 { 100.0 } else { r.bytes_have as f64 * 100.0 / r.bytes_total as f64 };
        let state = if r.complete {
            "complete".to_owned()
        } else if let Some(why) = &r.stalled {
            format!("stalled: {why}")
        } else {
            format!("fetching, {} chunks to go", r.chunks_missing)
        };
        out += &format!(
            "  {} v{}  {}/{} ({pct:.1}%)  {state}\n",
            r.channel,
            r.version,
            HumanBytes(r.bytes_have),
            HumanBytes(r.bytes_total)
        );
    }
    let t = s.traffic;
    out += &format!(
        "metered link: {} in, {} out (total {})\n",
        HumanBytes(t.metered_in),
        HumanBytes(t.metered_out),
        HumanBytes(t.metered_in + t.metered_out)
    );
    if let Some(p) = &s.policy {
        out += &render_policy(p);
    }
    out += &format!("LAN: {} in, {} out\n", HumanBytes(t.lan_in), HumanBytes(t.lan_out));
    if let Some(port) = s.lane_port {
        out += &format!("lane: port {port}, {} answers received over lanes\n", s.lane_answers);
    }
    out += &format!(
        "chunks fetched: {} from the seed, {} from site peers; served {} chunks ({}) in {} requests\n",
        s.chunks_from_seed,
        s.chunks_from_peers,
        s.served.chunks,
        HumanBytes(s.served.bytes),
        s.served.requests
    );
    out
}

/// The metered-link policy lines of the human status: budgets against what was used, and each
/// release held back with the reason and until when.
fn render_policy(p: &crate::policy::Status) -> String {
    use indicatif::HumanBytes;
    let mut out = String::new();
    for (name, period) in [("today", p.day), ("this month", p.month)] {
        match (period.budget, period.left) {
            (Some(b), Some(left)) => out += &format!("  metered {name}: {} of {} budget ({} left)\n", HumanBytes(period.used), HumanBytes(b), HumanBytes(left)),
            _ => out += &format!("  metered {name}: {} (no budget)\n", HumanBytes(period.used)),
        }
    }
    if let Some(r) = p.rate_limit {
        out += &format!("  metered rate limit: {}/s\n", HumanBytes(r));
    }
    if !p.windows.is_empty() {
        out += &format!("  metered windows (local time): {}\n", p.windows.join(", "));
    }
    for h in &p.holds {
        let until = h.until_local.as_deref().map_or("replies in flight land".to_owned(), |u| u.replace('T', " "));
        let what = if h.reason == crate::policy::Reason::RateLimit { "throttled" } else { "metered fetching paused" };
        out += &format!("  {} v{}: {what}: {}, until {until}\n", h.channel, h.version, h.reason.describe());
    }
    out
}

/// `layerhop fleet` (seed).
pub fn fleet(home: &Home) -> Result<crate::fleet::FleetStatus> {
    let v = block_on(control::call(home, &Request::Fleet))?;
    serde_json::from_value(v).context("decoding the fleet view")
}

/// `layerhop export`.
pub fn export(home: &Home, channel: &str, out: &Path) -> Result<serde_json::Value> {
    block_on(control::call(home, &Request::Export { channel: channel.into(), out: absolute(out)? }))
}

/// `layerhop offer`.
pub fn offer(home: &Home, release: &Path) -> Result<serde_json::Value> {
    let bytes = std::fs::read(release).with_context(|| format!("reading {}", release.display()))?;
    block_on(control::call(home, &Request::Offer { release_hex: hex::encode(bytes) }))
}
