//! layerhop's scenario runner: many real nodes in one process, scenarios as data, and a JSON
//! summary of what crossed the metered link per site beside two baselines.
//!
//! - [`scenario`]: the TOML format of `simulations/scenarios/*.toml`.
//! - [`content`]: the releases a scenario publishes (generated layers, models, sample images).
//! - [`cluster`]: in-process nodes (the node's own daemon code) on 127.0.0.1; [`host`]: a site's
//!   nodes in a child process, for fleets too big for one process's open-file limit.
//! - [`measure`]: figures and baselines from snapshots of every node.
//! - [`run`]: one scenario from start to figures; [`report`]: the table and the JSON document.
//!
//! `main.rs` is the CLI over this library; the integration test in `tests/` drives it too.

pub mod cluster;
pub mod content;
pub mod host;
pub mod measure;
pub mod report;
pub mod run;
pub mod scenario;
