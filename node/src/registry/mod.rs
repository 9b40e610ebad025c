//! The node's registry mirror: the pull side of the OCI distribution API, served from the store.
//!
//! Why: on a device the container engine (moby under IoT Edge, docker, containerd) must get its
//! images from the local node like from any registry, without knowing about chunks. Pointed at
//! the node (`layerhop mirror-config`), it pulls `anomaly-detector:v7` and gets the release's
//! image: each layer as the uncompressed tar the node reassembles from its chunks, the config
//! byte for byte, so the image ID and diff_ids are the original ones.
//!
//! - [`names`]: the URL grammar (names, tags, digests; traversal refused on the raw path).
//! - [`catalog`]: channel → releases → tags, digests and completeness.
//! - [`manifest`]: manifests and indexes rewritten for uncompressed layers, OCI or docker.
//! - [`blob`]: streaming an artifact as it is reassembled, with `Range`.
//! - [`routes`]: the axum handlers; [`error`]: OCI error bodies.
//! - [`mirror_config`]: the engine configuration that points at the node.
//!
//! The server is optional (`registry = "off"`), and a node whose registry address is taken
//! keeps running without it: the mirror is a convenience beside the node's main job, fetching
//! over the metered link, which must not stop because another program holds the port. The
//! bound address is written to `HOME/registry-addr` (useful with port 0).

pub mod blob;
pub mod catalog;
pub mod error;
pub mod manifest;
pub mod mirror_config;
pub mod names;
pub mod routes;

use crate::config::Config;
use crate::home::Home;
use layerhop_protocol::release::PublicKey;
use layerhop_store::Store;
use std::path::PathBuf;
use std::sync::Arc;

pub use error::RegistryError;

/// The default listen address (`registry` in the config).
pub const DEFAULT_ADDR: &str = "127.0.0.1:5000";

/// `HOME/registry-addr`: the running registry's actual address.
pub fn addr_file(home: &Home) -> PathBuf {
    home.root().join("registry-addr")
}

/// A running registry.
pub use crate::http_endpoint::Running;

/// Start the registry if the config asks for one. Never fails the daemon: a registry that cannot
/// start is logged and left off.
pub async fn start(cfg: &Config, home: &Home, store: Arc<Store>, key: Option<PublicKey>) -> Option<Running> {
    let Some(addr) = cfg.registry else {
        tracing::info!("registry mirror off (registry = \"off\")");
        return None;
    };
    let Some(key) = key else {
        tracing::warn!("registry mirror not started: no publisher key to verify releases with");
        return None;
    };
    let state = Arc::new(routes::AppState { catalog: Arc::new(catalog::Catalog::new(store, key)), wait: cfg.registry_wait });
    let running = crate::http_endpoint::start("registry mirror", "registry", addr, addr_file(home), routes::router(state)).await?;
    tracing::info!(addr = %running.addr, wait_secs = cfg.registry_wait.as_secs(), "registry mirror listening");
    Some(running)
}
