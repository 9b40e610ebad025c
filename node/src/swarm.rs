//! Building the libp2p swarm: TCP (counted per link class) + noise + yamux, and the exchange
//! protocol.
//!
//! Limits against floods: at most [`MAX_PENDING_INCOMING`] handshakes at once, two
//! connections per peer, a cap on established connections (larger on a seed, which serves the
//! fleet), [`MAX_STREAMS`] request streams per connection (a stream over the cap is dropped
//! unread), and every exchange bounded by the request timeout; the codec buffers only bytes that
//! arrived, so a peer's memory cost is bounded by streams × message bound. A banned peer (see
//! [`crate::strikes`]) is on a block list: its connections are denied once established, before
//! any protocol handler runs.
//!
//! A device's chunk requests to the seed travel on a protocol of their own (`uplink`, the same
//! messages) whose exchanges may last [`UPLINK_REQUEST_TIMEOUT`] instead of the configured
//! request timeout. Why: an exchange that times out is lost whole — the requester drops the
//! stream, the part of the answer already received is thrown away, and the part already in the
//! seed's socket buffers still crosses the uplink — and then the chunks are asked for again. A
//! cellular uplink that drops for a minute (a vehicle in a tunnel) would so pay for every answer
//! in flight twice: measured in the netns testbed, a 60 s outage of a 10-device site moved
//! 1.64x the new bytes with the 30 s timeout, every chunk stored once. The connection itself
//! survives such an outage (TCP retransmits), so the answers complete once the link is back;
//! and the site does not wait on a member whose link alone is stuck (its lease runs out on the
//! site's uplink clock, [`crate::site`]). Exchanges with site peers keep the short timeout: a
//! LAN peer that stops answering is given up on quickly. Only devices ask on `uplink` and only
//! the seed answers on it, so no LAN peer can hold a stream open for the long deadline.
//!
//! The transport is assembled by hand (`with_other_transport`) rather than with the builder's
//! `with_tcp`, because link accounting must wrap the raw TCP stream under noise and yamux.

use crate::codec::Codec;
use crate::traffic::{Classifier, Counted};
use libp2p::core::upgrade::Version;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::allow_block_list;
use libp2p::mdns;
use libp2p::{StreamProtocol, Swarm, Transport, identity, noise, tcp, yamux};
use std::sync::Arc;
use std::time::Duration;

/// Handshakes in progress at once.
pub const MAX_PENDING_INCOMING: u32 = 64;
/// Request streams in flight on one connection (both directions), per protocol.
pub const MAX_STREAMS: usize = 64;

/// Deadline of a chunk exchange with the seed (see the module docs): rides out uplink outages
/// of a few minutes; a connection that is really dead ends sooner (the seed restarting closes
/// it, TCP gives up on it).
pub const UPLINK_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// The connection limits of a seed (`seed`) or a device.
pub fn limits(seed: bool) -> ConnectionLimits {
    ConnectionLimits::default()
        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
        .with_max_established_per_peer(Some(2))
        .with_max_established_incoming(Some(if seed { 20_000 } else { 256 }))
}

/// The node's behaviour: one request-response protocol for releases, chunks and site state,
/// and mDNS to find site peers. (The derive generates `BehaviourEvent`.)
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Banned peers (see [`crate::strikes`]): their connections are closed and new ones denied.
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    /// Connection caps (early: a denied connection never reaches the others).
    pub limits: connection_limits::Behaviour,
    /// Releases, announcements, chunks and site state.
    pub exchange: request_response::Behaviour<Codec>,
    /// A device's chunk requests to the seed (see the module docs).
    pub uplink: request_response::Behaviour<Codec>,
    /// Site peer discovery on the LAN (off on seeds and when the config says so).
    pub mdns: Toggle<mdns::tokio::Behaviour>,
}

/// Build a swarm for `key` (a seed's if `seed`), counting traffic with `classifier`.
pub fn build(
    key: identity::Keypair,
    classifier: Arc<Classifier>,
    request_timeout: Duration,
    with_mdns: bool,
    seed: bool,
    limits: ConnectionLimits,
) -> Result<Swarm<Behaviour>, Box<dyn std::error::Error + Send + Sync>> {
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            let noise = noise::Config::new(key)?;
            let c = classifier.clone();
            Ok(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                .map(move |stream: tcp::tokio::TcpStream, endpoint| {
                    let (class, link) = c.decide(&endpoint, stream.0.local_addr().ok());
                    Counted::new(stream, class, link, c.clone())
                })
                .upgrade(Version::V1)
                .authenticate(noise)
                .multiplex(yamux::Config::default())
                .timeout(Duration::from_secs(20)))
        })?
        .with_behaviour(|key| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> { Ok(Behaviour {
            blocked: Default::default(),
            limits: connection_limits::Behaviour::new(limits),
            exchange: request_response::Behaviour::with_codec(
                Codec::default(),
                [(StreamProtocol::new(layerhop_protocol::wire::PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(request_timeout)
                    .with_max_concurrent_streams(MAX_STREAMS),
            ),
            uplink: request_response::Behaviour::with_codec(
                Codec::default(),
                [(
                    StreamProtocol::new(layerhop_protocol::wire::UPLINK_PROTOCOL),
                    if seed { ProtocolSupport::Inbound } else { ProtocolSupport::Outbound },
                )],
                request_response::Config::default()
                    .with_request_timeout(UPLINK_REQUEST_TIMEOUT.max(request_timeout))
                    .with_max_concurrent_streams(MAX_STREAMS),
            ),
            mdns: Toggle::from(if with_mdns {
                let cfg = mdns::Config { query_interval: Duration::from_secs(30), ..Default::default() };
                Some(mdns::tokio::Behaviour::new(cfg, key.public().to_peer_id())?)
            } else {
                None
            }),
        }) })?
        // Devices keep their link to the seed open to hear of releases as they are published.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(24 * 3600)))
        .build();
    Ok(swarm)
}
