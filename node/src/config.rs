//! The node's configuration file, `config.toml` in its home.
//!
//! Load → fill defaults → validate: every key has a default (shown in [`TEMPLATE`], which
//! `layerhop init` writes), and a bad value is an error naming its key. The typed result is the
//! only form the rest of the node sees.

use anyhow::{Context, Result, anyhow, bail};
use layerhop_protocol::Channel;
use layerhop_protocol::release::PublicKey;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// The port a seed listens on unless told otherwise.
pub const SEED_PORT: u16 = 7410;

/// What `layerhop init` writes; documents every key with its default.
pub const TEMPLATE: &str = r#"# layerhop node configuration. Keys left out take the default shown in the comment.

# "seed" (the cloud node that publishes) or "device". Set by `layerhop init`.
role = "{role}"

# Site this device belongs to (its LAN). Set from the join token. Default: "default".
site = "{site}"

# Multiaddrs to listen on. Default: a seed listens on all interfaces on TCP port 7410,
# a device on all interfaces on an ephemeral port (so many devices can share a host).
listen = [{listen}]

# Device: where the seed is (multiaddrs) and its peer id. Set from the join token.
seed_addrs = [{seed_addrs}]
seed_peer = "{seed_peer}"

# Device: the publisher key releases must be signed with (hex). Pinned at enrollment.
publisher_key = "{publisher_key}"

# Device: the key that signs fleet credentials (hex); site peers must present one. From the token.
fleet_key = "{fleet_key}"

# Device: find site peers by mDNS on the LAN. Default: true.
mdns = {mdns}

# Device: addresses of site peers to dial, for LANs without multicast. Default: [].
site_peers = []

# Device: dial the site peers the seed reports (their advertised listen addresses). Default: true.
peer_exchange = true

# Device: share chunks with site peers (LAN first, one metered download per site). Default: true.
site_sharing = true

# Device: move chunks between site peers on a lane of their own (TLS 1.3 with AES-GCM, both
# ends proven by their node identity) beside the libp2p connection, on an ephemeral TCP port
# of the same address; chunks go over the libp2p connection with a peer that has none.
# Default: true.
bulk_lane = true

# Device: network interfaces whose links are metered (cellular), besides any link to the seed.
# Default: ["wwan0", "ppp0"].
metered_interfaces = ["wwan0", "ppp0"]

# Device: seconds a site peer may stay silent before the chunks it was to fetch are handed to
# another member (one making no progress on its seed downloads: this plus request_timeout_secs
# of working uplink). Default: 15.
lease_secs = 15

# Channels this device follows. Default: [] = every channel the seed publishes.
channels = []

# Seed: how long a published release stays valid, in days. Default: 30.
release_ttl_days = 30

# Chunk requests kept in flight per peer. Default: 8.
parallel_requests = 8

# Seconds before an unanswered request is given up and retried elsewhere. Default: 30.
request_timeout_secs = 30

# The registry mirror (OCI distribution API, pull side) the container engine pulls through:
# "HOST:PORT" to listen on, or "off". Default: "127.0.0.1:5000". See `layerhop mirror-config`.
registry = "{registry}"

# Seconds a registry blob request waits for chunks still being fetched; 0 answers 404 at once
# (the engine then falls back to its upstream registry). Default: 0.
registry_wait_secs = 0

# The Prometheus endpoint (GET /metrics, OpenMetrics text): "HOST:PORT" to listen on, or "off".
# Plain HTTP without authentication: keep it on loopback or a management network.
# Default: "127.0.0.1:9410".
metrics = "{metrics}"

# Device: the metered-link policy. These keys take effect without a restart on SIGHUP
# (`systemctl reload layerhop`) or `layerhop reload`; downloads in flight go on.
# Sizes are bytes or a number with a unit ("500MiB", "10GiB"); "off" means no limit.

# Cap on metered bytes per second, both directions: "2MiB/s", a number of bytes, or "off".
# Default: "off".
metered_rate_limit = "off"

# Metered bytes (in and out) per local day and per local month. When one is spent, fetching
# from the seed pauses until the next local midnight / first of the month; LAN sharing goes on.
# A release published with `--priority urgent --ignore-budget` is fetched anyway.
# Default: "off".
metered_budget_day = "off"
metered_budget_month = "off"

# Local times when fetching from the seed may happen, like ["01:00-05:00"] or
# ["22:00-02:00", "12:00-13:00"]. An urgent release ignores them. Default: [] = any time.
metered_windows = []

# With no site peer connected (a vehicle away from its depot), leave a non-urgent release this
# many hours after it was issued, waiting for the site's LAN, then fetch it over the metered
# link. Default: 0 = fetch at once.
defer_alone_hours = 0
"#;

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct File {
    role: String,
    #[serde(default)]
    site: Option<String>,
    #[serde(default)]
    listen: Option<Vec<String>>,
    #[serde(default)]
    seed_addrs: Vec<String>,
    #[serde(default)]
    seed_peer: Option<String>,
    #[serde(default)]
    publisher_key: Option<String>,
    #[serde(default)]
    fleet_key: Option<String>,
    #[serde(default)]
    mdns: Option<bool>,
    #[serde(default)]
    site_peers: Vec<String>,
    #[serde(default)]
    site_sharing: Option<bool>,
    #[serde(default)]
    bulk_lane: Option<bool>,
    #[serde(default)]
    peer_exchange: Option<bool>,
    #[serde(default)]
    metered_interfaces: Option<Vec<String>>,
    #[serde(default)]
    lease_secs: Option<u64>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    release_ttl_days: Option<u64>,
    #[serde(default)]
    parallel_requests: Option<usize>,
    #[serde(default)]
    request_timeout_secs: Option<u64>,
    #[serde(default)]
    registry: Option<String>,
    #[serde(default)]
    registry_wait_secs: Option<u64>,
    #[serde(default)]
    metrics: Option<String>,
    #[serde(default)]
    metered_rate_limit: Option<Amount>,
    #[serde(default)]
    metered_budget_day: Option<Amount>,
    #[serde(default)]
    metered_budget_month: Option<Amount>,
    #[serde(default)]
    metered_windows: Vec<String>,
    #[serde(default)]
    defer_alone_hours: Option<u64>,
}

/// A size or rate as the file may give it: a number of bytes, or text ("500MiB", "off").
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
enum Amount {
    Bytes(u64),
    Text(String),
}

impl Amount {
    /// None for "off"; `text` reads a string with a unit.
    fn read(&self, text: fn(&str) -> Result<u64, crate::policy::rules::BadValue>) -> Result<Option<u64>> {
        match self {
            Amount::Bytes(0) => bail!("0 is not allowed; use \"off\" for no limit"),
            Amount::Bytes(n) => Ok(Some(*n)),
            Amount::Text(t) if t.trim() == "off" => Ok(None),
            Amount::Text(t) => Ok(Some(text(t)?)),
        }
    }
}

/// The policy keys of the file as [`crate::policy::Rules`].
fn policy_rules(f: &File) -> Result<crate::policy::Rules> {
    use crate::policy::rules::{parse_rate, parse_size};
    let size = |key: &str, v: &Option<Amount>| v.as_ref().map_or(Ok(None), |a| a.read(parse_size)).with_context(|| format!("key `{key}`"));
    let rate_limit = f.metered_rate_limit.as_ref().map_or(Ok(None), |a| a.read(parse_rate)).context("key `metered_rate_limit`")?;
    let windows = f
        .metered_windows
        .iter()
        .map(|w| w.parse().with_context(|| "key `metered_windows`".to_owned()))
        .collect::<Result<Vec<_>>>()?;
    let defer = f.defer_alone_hours.unwrap_or(0);
    if defer > 24 * 90 {
        bail!("key `defer_alone_hours`: {defer} is more than 2160 (90 days)");
    }
    Ok(crate::policy::Rules {
        rate_limit,
        budget_day: size("metered_budget_day", &f.metered_budget_day)?,
        budget_month: size("metered_budget_month", &f.metered_budget_month)?,
        windows,
        defer_alone: (defer > 0).then(|| Duration::from_secs(defer * 3600)),
    })
}

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Publishes releases and serves them over the metered link.
    Seed,
    /// Follows channels and fetches releases.
    Device,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seed or device.
    pub role: Role,
    /// Site name.
    pub site: String,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Device: the seed's addresses.
    pub seed_addrs: Vec<Multiaddr>,
    /// Device: the seed's peer id.
    pub seed_peer: Option<PeerId>,
    /// Device: the pinned publisher key.
    pub publisher_key: Option<PublicKey>,
    /// Device: the fleet key credentials are checked with.
    pub fleet_key: Option<PublicKey>,
    /// Discover site peers by mDNS.
    pub mdns: bool,
    /// Site peers to dial.
    pub site_peers: Vec<Multiaddr>,
    /// Share chunks with site peers.
    pub site_sharing: bool,
    /// Move chunks between site peers on lanes (see `crate::lane`).
    pub bulk_lane: bool,
    /// Dial the site peers the seed reports.
    pub peer_exchange: bool,
    /// Interfaces whose links are metered.
    pub metered_interfaces: Vec<String>,
    /// Lease of a silent or stalled site member.
    pub lease: Duration,
    /// Followed channels; empty means all.
    pub channels: Vec<Channel>,
    /// Seed: validity of a published release.
    pub release_ttl: Duration,
    /// Requests in flight per peer.
    pub parallel_requests: usize,
    /// Per-request deadline.
    pub request_timeout: Duration,
    /// Where the registry mirror listens; None when it is off.
    pub registry: Option<std::net::SocketAddr>,
    /// How long a registry blob request waits for missing chunks (zero: 404 at once).
    pub registry_wait: Duration,
    /// Where the Prometheus endpoint listens; None when it is off.
    pub metrics: Option<std::net::SocketAddr>,
    /// Device: the metered-link policy.
    pub policy: crate::policy::Rules,
}

/// A `metrics` value: "off", or an address to listen on ("HOST:PORT", an IP host).
pub fn parse_metrics(v: &str) -> Result<Option<std::net::SocketAddr>> {
    parse_registry(v)
}

/// A `registry` value: "off", or an address to listen on ("HOST:PORT", an IP host).
pub fn parse_registry(v: &str) -> Result<Option<std::net::SocketAddr>> {
    if v == "off" {
        return Ok(None);
    }
    v.parse().map(Some).map_err(|_| anyhow!("{v:?} is neither \"off\" nor an IP address with a port (like \"127.0.0.1:5000\")"))
}

fn parse_key(hex_key: &str) -> Result<PublicKey> {
    let mut b = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut b).map_err(|e| anyhow!("{e}"))?;
    Ok(PublicKey::from_bytes(b))
}

impl Config {
    /// Read and validate `path`.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in config {}", path.display()))
    }

    /// Parse and validate config text.
    pub fn parse(text: &str) -> Result<Config> {
        let f: File = toml::from_str(text)?;
        let policy = policy_rules(&f)?;
        let role = match f.role.as_str() {
            "seed" => Role::Seed,
            "device" => Role::Device,
            other => bail!("key `role`: {other:?} is neither \"seed\" nor \"device\""),
        };
        let site = f.site.unwrap_or_else(|| "default".into());
        layerhop_protocol::token::check_site(&site).context("key `site`")?;
        let default_listen = match role {
            Role::Seed => format!("/ip4/0.0.0.0/tcp/{SEED_PORT}"),
            Role::Device => "/ip4/0.0.0.0/tcp/0".into(),
        };
        let listen = f.listen.filter(|l| !l.is_empty()).unwrap_or_else(|| vec![default_listen]);
        let listen = listen
            .iter()
            .map(|a| a.parse().with_context(|| format!("key `listen`: {a:?} is not a multiaddr")))
            .collect::<Result<Vec<Multiaddr>>>()?;
        let seed_addrs = f
            .seed_addrs
            .iter()
            .map(|a| a.parse().with_context(|| format!("key `seed_addrs`: {a:?} is not a multiaddr")))
            .collect::<Result<Vec<Multiaddr>>>()?;
        let seed_peer = match f.seed_peer.filter(|s| !s.is_empty()) {
            Some(p) => Some(p.parse().map_err(|e| anyhow!("key `seed_peer`: {e}"))?),
            None => None,
        };
        let publisher_key = match f.publisher_key.filter(|s| !s.is_empty()) {
            Some(k) => Some(parse_key(&k).context("key `publisher_key`")?),
            None => None,
        };
        let fleet_key = match f.fleet_key.filter(|s| !s.is_empty()) {
            Some(k) => Some(parse_key(&k).context("key `fleet_key`")?),
            None => None,
        };
        let site_peers = f
            .site_peers
            .iter()
            .map(|a| a.parse().with_context(|| format!("key `site_peers`: {a:?} is not a multiaddr")))
            .collect::<Result<Vec<Multiaddr>>>()?;
        let lease = f.lease_secs.unwrap_or(15);
        if !(1..=3600).contains(&lease) {
            bail!("key `lease_secs`: {lease} is not between 1 and 3600");
        }
        let channels = f
            .channels
            .iter()
            .map(|c| Channel::new(c).context("key `channels`"))
            .collect::<Result<Vec<_>>>()?;
        if role == Role::Device {
            if seed_addrs.is_empty() {
                bail!("key `seed_addrs`: a device needs at least one seed address");
            }
            if seed_peer.is_none() {
                bail!("key `seed_peer`: a device needs the seed's peer id");
            }
            if publisher_key.is_none() {
                bail!("key `publisher_key`: a device needs the pinned publisher key");
            }
        }
        let parallel_requests = f.parallel_requests.unwrap_or(8);
        if !(1..=256).contains(&parallel_requests) {
            bail!("key `parallel_requests`: {parallel_requests} is not between 1 and 256");
        }
        let timeout = f.request_timeout_secs.unwrap_or(30);
        if !(1..=3600).contains(&timeout) {
            bail!("key `request_timeout_secs`: {timeout} is not between 1 and 3600");
        }
        let registry = parse_registry(f.registry.as_deref().unwrap_or(crate::registry::DEFAULT_ADDR)).context("key `registry`")?;
        let metrics = parse_metrics(f.metrics.as_deref().unwrap_or(crate::metrics::DEFAULT_ADDR)).context("key `metrics`")?;
        let registry_wait = f.registry_wait_secs.unwrap_or(0);
        if registry_wait > 3600 {
            bail!("key `registry_wait_secs`: {registry_wait} is not between 0 and 3600");
        }
        let ttl = f.release_ttl_days.unwrap_or(30);
        if !(1..=3650).contains(&ttl) {
            bail!("key `release_ttl_days`: {ttl} is not between 1 and 3650");
        }
        Ok(Config {
            role,
            site,
            listen,
            seed_addrs,
            seed_peer,
            publisher_key,
            fleet_key,
            mdns: f.mdns.unwrap_or(true),
            site_peers,
            site_sharing: f.site_sharing.unwrap_or(true),
            bulk_lane: f.bulk_lane.unwrap_or(true),
            peer_exchange: f.peer_exchange.unwrap_or(true),
            metered_interfaces: f.metered_interfaces.unwrap_or_else(|| vec!["wwan0".into(), "ppp0".into()]),
            lease: Duration::from_secs(lease),
            channels,
            release_ttl: Duration::from_secs(ttl * 86_400),
            parallel_requests,
            request_timeout: Duration::from_secs(timeout),
            registry,
            registry_wait: Duration::from_secs(registry_wait),
            metrics,
            policy,
        })
    }

    /// Whether this node follows `channel`.
    pub fn follows(&self, channel: &Channel) -> bool {
        self.channels.is_empty() || self.channels.contains(channel)
    }
}

/// Values to fill [`TEMPLATE`] with.
pub struct TemplateValues<'a> {
    /// "seed" or "device".
    pub role: &'a str,
    /// Site name.
    pub site: &'a str,
    /// Listen multiaddrs.
    pub listen: &'a [String],
    /// Seed multiaddrs.
    pub seed_addrs: &'a [String],
    /// Seed peer id.
    pub seed_peer: &'a str,
    /// Publisher key, hex.
    pub publisher_key: &'a str,
    /// Fleet key, hex.
    pub fleet_key: &'a str,
    /// Whether mDNS is on.
    pub mdns: bool,
    /// The registry address or "off".
    pub registry: &'a str,
    /// The metrics address or "off".
    pub metrics: &'a str,
}

/// Render the config file for `layerhop init`.
pub fn render(v: &TemplateValues<'_>) -> String {
    let list = |l: &[String]| l.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
    TEMPLATE
        .replace("{role}", v.role)
        .replace("{site}", v.site)
        .replace("{listen}", &list(v.listen))
        .replace("{seed_addrs}", &list(v.seed_addrs))
        .replace("{seed_peer}", v.seed_peer)
        .replace("{publisher_key}", v.publisher_key)
        .replace("{fleet_key}", v.fleet_key)
        .replace("{mdns}", if v.mdns { "true" } else { "false" })
        .replace("{registry}", v.registry)
        .replace("{metrics}", v.metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_and_errors_name_their_key() {
        let seed = render(&TemplateValues { role: "seed", site: "default", listen: &[], seed_addrs: &[], seed_peer: "", publisher_key: "", fleet_key: "", mdns: true, registry: "127.0.0.1:5000", metrics: "127.0.0.1:9410" });
        let c = Config::parse(&seed).expect("seed config");
        assert_eq!(c.metrics, Some("127.0.0.1:9410".parse().expect("addr")));
        assert_eq!(c.listen[0].to_string(), "/ip4/0.0.0.0/tcp/7410");
        let err = format!("{:#}", Config::parse("role = \"seed\"\nparallel_requests = 0").expect_err("bad"));
        assert!(err.contains("parallel_requests"), "{err}");
        let err = format!("{:#}", Config::parse("role = \"device\"").expect_err("bad"));
        assert!(err.contains("seed_addrs"), "{err}");
        let err = format!("{:#}", Config::parse("role = \"seed\"\nlisten = [\"nope\"]").expect_err("bad"));
        assert!(err.contains("listen"), "{err}");
        assert!(Config::parse("role = \"seed\"\nbogus = 1").is_err());
    }

    #[test]
    fn registry_key() {
        let c = Config::parse("role = \"seed\"").expect("defaults");
        assert_eq!(c.registry, Some("127.0.0.1:5000".parse().expect("addr")));
        assert!(c.registry_wait.is_zero());
        assert_eq!(Config::parse("role = \"seed\"\nregistry = \"off\"").expect("off").registry, None);
        let err = format!("{:#}", Config::parse("role = \"seed\"\nregistry = \"localhost\"").expect_err("bad"));
        assert!(err.contains("registry"), "{err}");
        assert_eq!(Config::parse("role = \"seed\"\nmetrics = \"off\"").expect("off").metrics, None);
        let err = format!("{:#}", Config::parse("role = \"seed\"\nmetrics = \"9410\"").expect_err("bad"));
        assert!(err.contains("metrics"), "{err}");
        let err = format!("{:#}", Config::parse("role = \"seed\"\nregistry_wait_secs = 99999").expect_err("bad"));
        assert!(err.contains("registry_wait_secs"), "{err}");
    }

    #[test]
    fn policy_keys() {
        let c = Config::parse("role = \"seed\"").expect("defaults");
        assert!(c.policy.is_empty());
        let c = Config::parse(
            "role = \"seed\"\nmetered_rate_limit = \"2MiB/s\"\nmetered_budget_day = 1000\nmetered_budget_month = \"10GiB\"\nmetered_windows = [\"01:00-05:00\"]\ndefer_alone_hours = 12",
        )
        .expect("policy");
        assert_eq!(c.policy.rate_limit, Some(2 << 20));
        assert_eq!(c.policy.budget_day, Some(1000));
        assert_eq!(c.policy.budget_month, Some(10 << 30));
        assert_eq!(c.policy.windows.len(), 1);
        assert_eq!(c.policy.defer_alone, Some(Duration::from_secs(12 * 3600)));
        for (key, value) in [
            ("metered_rate_limit", "\"2MiB\""),
            ("metered_budget_day", "\"lots\""),
            ("metered_budget_month", "0"),
            ("metered_windows", "[\"1-5\"]"),
            ("defer_alone_hours", "100000"),
        ] {
            let err = format!("{:#}", Config::parse(&format!("role = \"seed\"\n{key} = {value}")).expect_err("bad"));
            assert!(err.contains(key), "{err}");
        }
    }
}
