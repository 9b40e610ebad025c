//! A node's home directory: where its config, keys, store and control socket live.
//!
//! ```text
//! HOME/config.toml       the configuration (see `config`)
//! HOME/identity.key      libp2p identity (protobuf-encoded ed25519 keypair), mode 0600
//! HOME/publisher.key     seed only: the release signing key (32 secret bytes), mode 0600
//! HOME/publisher.key.next seed only, during `rotate-key`: the key taking over
//! HOME/fleet.key         seed only: the key that signs join credentials, mode 0600
//! HOME/credential        device only: its fleet credential, from the join token
//! HOME/data/             the content-addressed store
//! HOME/control.sock      the running daemon's control socket
//! HOME/listen-addrs      the running daemon's actual listen addresses, one per line
//! HOME/metered-ledger.json  device: metered bytes counted this local day and month (budgets)
//! ```

use anyhow::{Context, Result, bail};
use layerhop_protocol::PublisherKey;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Paths inside a home.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// The home at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Home { root: root.into() }
    }
    /// Its directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `config.toml`.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    /// `identity.key`.
    pub fn identity(&self) -> PathBuf {
        self.root.join("identity.key")
    }
    /// `publisher.key`.
    pub fn publisher_key(&self) -> PathBuf {
        self.root.join("publisher.key")
    }
    /// `fleet.key`.
    pub fn fleet_key(&self) -> PathBuf {
        self.root.join("fleet.key")
    }
    /// `credential`.
    pub fn credential(&self) -> PathBuf {
        self.root.join("credential")
    }
    /// `data/`.
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }
    /// `control.sock`.
    pub fn control_socket(&self) -> PathBuf {
        self.root.join("control.sock")
    }
    /// `metered-ledger.json`.
    pub fn metered_ledger(&self) -> PathBuf {
        self.root.join("metered-ledger.json")
    }
    /// `listen-addrs`.
    pub fn listen_addrs(&self) -> PathBuf {
        self.root.join("listen-addrs")
    }

    /// Load the libp2p identity.
    pub fn load_identity(&self) -> Result<libp2p::identity::Keypair> {
        let p = self.identity();
        let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        libp2p::identity::Keypair::from_protobuf_encoding(&bytes).with_context(|| format!("{} is not a valid identity key", p.display()))
    }

    /// Load a 32-byte signing key.
    pub fn load_signing_key(&self, path: &Path) -> Result<PublisherKey> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let secret: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| anyhow::anyhow!("{} must hold exactly 32 bytes, found {}", path.display(), bytes.len()))?;
        Ok(PublisherKey::from_bytes(secret))
    }
}

/// Where `rotate-key` writes the new publisher key before it replaces the old one.
pub fn next_publisher_key(home: &Home) -> PathBuf {
    home.root().join("publisher.key.next")
}

/// Rename `from` over `to` and make the rename durable (fsync of the directory).
pub fn replace_file(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
    if let Some(dir) = to.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

/// Create `path` with `bytes`, readable by the owner only; refuses to overwrite.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        bail!("{} already exists; refusing to overwrite a key", path.display());
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}
