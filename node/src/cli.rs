//! The command line: clap derive; `///` docs are the `--help` text.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// layerhop: get container layers and ML models onto fleets of devices, paying the metered
/// cellular link about once per site.
#[derive(Debug, Parser)]
#[command(name = "layerhop", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
    /// Log format on stderr: "text" or "json". Levels come from RUST_LOG (default: info).
    #[arg(long, global = true, default_value = "text", env = "LAYERHOP_LOG_FORMAT")]
    pub log_format: String,
}

/// The node's home directory.
#[derive(Debug, clap::Args)]
pub struct HomeArg {
    /// The node's home directory (config, keys, store).
    #[arg(long, env = "LAYERHOP_HOME")]
    pub home: PathBuf,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Create a node's home: a seed (`--seed`) or a device (`--join TOKEN`).
    Init {
        /// The node's home.
        #[command(flatten)]
        home: HomeArg,
        /// Make this node the seed: generate the publisher and fleet keys.
        #[arg(long, conflicts_with = "join", required_unless_present = "join")]
        seed: bool,
        /// Enroll this node as a device with a token from `layerhop invite`.
        #[arg(long)]
        join: Option<String>,
        /// Multiaddr to listen on (repeatable). Default: a seed all interfaces on TCP 7410,
        /// a device all interfaces on an ephemeral port.
        #[arg(long)]
        listen: Vec<String>,
        /// Do not look for site peers by mDNS (sets `mdns = false`).
        #[arg(long)]
        no_mdns: bool,
        /// Address of the registry mirror container engines pull through ("HOST:PORT", port 0
        /// for an ephemeral one), or "off". Default: 127.0.0.1:5000.
        #[arg(long, value_name = "ADDR")]
        registry: Option<String>,
        /// Address of the Prometheus endpoint (`GET /metrics`; "HOST:PORT", port 0 for an
        /// ephemeral one), or "off". Default: 127.0.0.1:9410.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
    },
    /// Seed: print a join token for a new device.
    Invite {
        /// The node's home.
        #[command(flatten)]
        home: HomeArg,
        /// The device's site (its LAN).
        #[arg(long, default_value = "default")]
        site: String,
        /// Multiaddr at which devices reach the seed (repeatable). Default: the running seed's
        /// listen addresses.
        #[arg(long)]
        addr: Vec<String>,
    },
    /// Seed: revoke enrolled devices. The seed refuses them at once and signs a new revocation
    /// list that devices receive and enforce (their site peers disconnect them). The seed must
    /// be running.
    Revoke {
        /// The node's home.
        #[command(flatten)]
        home: HomeArg,
        /// A device's libp2p peer id (repeatable); if it is connected, the credential it
        /// presented is revoked too.
        #[arg(long, required_unless_present = "token_id")]
        peer: Vec<String>,
        /// A credential's token id, as `layerhop invite` prints it (repeatable).
        #[arg(long)]
        token_id: Vec<String>,
    },
    /// Seed: replace the publisher key. The current key signs a statement naming a new key;
    /// devices accept releases signed by the new key once they hold the statement (it is pushed
    /// to them), and refuse releases signed by any key that was not rotated in. The seed must
    /// be running.
    RotateKey {
        /// The node's home.
        #[command(flatten)]
        home: HomeArg,
    },
    /// Run the node's daemon (seed or device) until SIGINT/SIGTERM.
    Run {
        /// The node's home.
        #[command(flatten)]
        home: HomeArg,
    },
    /// Seed: publish SOURCEs (docker save tarballs, OCI layouts, model files or directories)
    /// and/or an image from an upstream registry (--from-registry) as the channel's next
    /// release. The seed must be running.
    Publish {
        /// The node's home.
        #[command(flatten)]
        home: HomeArg,
        /// Channel name (a-z, 0-9, '.', '_', '-').
        #[arg(long)]
        channel: String,
        /// Version number (default: one more than the current version).
        #[arg(long)]
        version: Option<u64>,
        /// Validity in seconds (default: the config's `release_ttl_days`).
        #[arg(long)]
        ttl_secs: Option<u64>,
        /// "urgent": devices fetch it outside their metered time windows and without waiting
        /// for site peers (their budget still applies unless --ignore-budget). Signed with the
        /// release.
        #[arg(long, value_enum, default_value = "normal")]
        priority: PriorityArg,
        /// With --priority urgent: devices fetch it even when their metered budget is spent.
        #[arg(long)]
        ignore_budget: bool,
        /// What to publish.
        #[arg(required_unless_present = "from_registry")]
        sources: Vec<PathBuf>,
        /// Registry access for --from-registry.
        #[command(flatten)]
        upstream: UpstreamArgs,
    },
    /// Re-read the metered-link policy keys of the config into the running daemon (as SIGHUP
    /// does); prints the rules now in force, or why the config was refused.
    Reload {
        /// The node's home.
        #[command(flatten)]
        home: HomeArg,
    },
    /// Show the node's peers, releases and traffic.
    Status {
        /// The node's home.
        #[command(flatten)]
        home: HomeArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Seed: list sites, their devices, the release each holds and the metered bytes per site
    /// (counted by the seed since it started).
    Fleet {
        /// The node's home.
        #[command(flatten)]
        home: HomeArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait until the node holds a channel's release complete, showing progress (a bar on a
    /// terminal, plain lines otherwise); exits non-zero on timeout.
    Wait {
        /// The node's home.
        #[command(flatten)]
        home: HomeArg,
        /// Channel name.
        #[arg(long)]
        channel: String,
        /// Wait for this version or a newer one (default: any release of the channel).
        #[arg(long)]
        version: Option<u64>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout_secs: u64,
    },
    /// Install the systemd unit for this home (`/etc/systemd/system/layerhop.service`), or
    /// print it with --dry-run.
    InstallService {
        /// The node's home.
        #[command(flatten)]
        home: HomeArg,
        /// User the service runs as (default: root, without any capability).
        #[arg(long)]
        user: Option<String>,
        /// Print the unit instead of writing it.
        #[arg(long)]
        dry_run: bool,
        /// Directory to write the unit into.
        #[arg(long, default_value = crate::install::UNIT_DIR)]
        unit_dir: PathBuf,
    },
    /// Write a channel's newest release: model files into a directory, each image as a
    /// `docker load`-able tarball (or, for a release that is one image, to OUT if it ends in .tar).
    Export {
        /// The node's home.
        #[command(flatten)]
        home: HomeArg,
        /// Channel name.
        #[arg(long)]
        channel: String,
        /// Output path; must not exist.
        #[arg(long)]
        out: PathBuf,
    },
    /// Hand a signed release file to a running node, as if a peer had announced it (for sites
    /// reached by other means than the network). The node checks it like any release.
    Offer {
        /// The node's home.
        #[command(flatten)]
        home: HomeArg,
        /// A `.release` file.
        release: PathBuf,
    },
    /// Print (or write) the container engine config that makes it pull through this node's
    /// registry mirror: docker/moby daemon.json, or containerd hosts.toml files.
    MirrorConfig {
        /// The node's home.
        #[command(flatten)]
        home: HomeArg,
        /// The engine: docker (also moby under IoT Edge) or containerd.
        #[arg(value_enum)]
        engine: crate::registry::mirror_config::Engine,
        /// Write the files (atomically) instead of printing them; docker's other settings are kept.
        #[arg(long)]
        write: bool,
        /// docker: the daemon.json to update (default /etc/docker/daemon.json); containerd: the
        /// hosts directory (default /etc/containerd/certs.d).
        #[arg(long)]
        path: Option<PathBuf>,
    },
    /// Run a seed and a site of devices on this machine and show what crosses the metered link.
    Demo {
        /// Devices on the site.
        #[arg(long, default_value_t = 3)]
        devices: usize,
        /// Files in the generated deps layer.
        #[arg(long, default_value_t = 3000)]
        files: usize,
        /// Size of the generated deps layer in MiB.
        #[arg(long, default_value_t = 100)]
        deps_mib: u64,
        /// Keep the demo's temporary homes (printed) instead of removing them.
        #[arg(long)]
        keep: bool,
    },
}

/// A release's priority on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PriorityArg {
    /// Fetched within each device's metered-link policy.
    Normal,
    /// Fetched outside time windows and without deferral.
    Urgent,
}

/// `publish --from-registry` and its credentials.
#[derive(Debug, clap::Args)]
pub struct UpstreamArgs {
    /// Also publish the image at this URL of an upstream registry: https://HOST/REPO:TAG (or
    /// REPO@sha256:…); http:// only for a registry without TLS. It is downloaded (every blob
    /// checked against its digest) into a temporary OCI layout in the seed's home, then
    /// published like one.
    #[arg(long, value_name = "URL")]
    pub from_registry: Option<String>,
    /// Which image of a multi-platform index to take: OS/ARCH[/VARIANT]. Default: linux on
    /// this machine's architecture.
    #[arg(long, requires = "from_registry")]
    pub platform: Option<String>,
    /// User name for the registry (basic auth, or credentials for its token service).
    #[arg(long, env = "LAYERHOP_REGISTRY_USERNAME")]
    pub username: Option<String>,
    /// Read the registry password (or token) from the first line of standard input.
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
}
