//! The layerhop node: daemon, CLI commands and the pieces the simulations reuse.
//!
//! `main.rs` is glue over this library. Main items:
//! - [`daemon::run`]: `layerhop run`; [`event_loop`]: the task that owns the libp2p swarm.
//! - [`traffic`]: per-link byte accounting on the raw TCP streams (metered vs LAN).
//! - [`fetch`]: what a device still needs of a release; [`accept`]: whether it trusts one;
//!   [`fleet_trust`]: publisher key rotations and revoked devices.
//! - [`control`]: the daemon's local control socket; [`commands`]: the CLI's subcommands;
//!   [`progress`]: their progress bars.
//! - [`policy`]: the metered-link policy (rate cap, budgets, windows, deferral).
//! - [`status`], [`metrics`] (Prometheus `/metrics`) and [`fleet`] (the seed's view of sites
//!   and devices): what operators see; [`install`]: the systemd unit.
//! - [`registry`]: the OCI registry mirror container engines pull through.
//! - [`upstream`]: downloading an image from an upstream registry for `publish --from-registry`.
//! - [`sample`]: generated images and models for the demo, the tests and the simulations.
//!
//! Errors: library-level pieces with callers that branch on the cause ([`accept::Refusal`])
//! are typed; the command and daemon layers report `anyhow` errors with context, since their
//! only consumer is a person reading the message.
#![warn(missing_docs)]

pub mod accept;
pub mod cli;
pub mod codec;
pub mod commands;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod event_loop;
pub mod fetch;
pub mod fleet;
pub mod fleet_trust;
pub mod home;
pub mod http_endpoint;
mod inbound;
mod incompressible;
pub(crate) mod lane;
pub mod install;
pub mod metrics;
pub mod policy;
pub mod progress;
pub mod registry;
mod outbound;
mod releases;
mod report;
pub mod sample;
mod schedule;
mod writer;
pub mod site;
pub mod status;
pub mod strikes;
// The NetworkBehaviour derive generates an undocumented event enum in this module.
#[allow(missing_docs)]
pub mod swarm;
pub mod traffic;
pub mod upstream;
pub mod watch;
