//! Building the libp2p swarm: TCP (counted per link class) + noise + yamux, and the exchange
//! protocol.
//!
//! The transport is assembled by hand (`with_other_transport`) rather than with the builder's
//! `with_tcp`, because link accounting must wrap the raw TCP stream under noise and yamux.

use crate::codec::Codec;
use crate::traffic::{Classifier, Counted};
use libp2p::core::upgrade::Version;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{StreamProtocol, Swarm, Transport, identity, noise, tcp, yamux};
use std::sync::Arc;
use std::time::Duration;

/// The node's behaviour: one request-response protocol for releases and chunks.
/// (The derive generates `BehaviourEvent`, whose variants mirror these fields.)
#[derive(NetworkBehaviour)]
#[allow(missing_docs)]
pub struct Behaviour {
    /// Releases, announcements and chunks.
    pub exchange: request_response::Behaviour<Codec>,
}

/// Build a swarm for `key`, counting traffic with `classifier`.
pub fn build(
    key: identity::Keypair,
    classifier: Arc<Classifier>,
    request_timeout: Duration,
) -> Result<Swarm<Behaviour>, Box<dyn std::error::Error + Send + Sync>> {
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            let noise = noise::Config::new(key)?;
            let c = classifier.clone();
            Ok(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                .map(move |stream, endpoint| {
                    let class = c.class_of(&endpoint);
                    Counted::new(stream, class, c.clone())
                })
                .upgrade(Version::V1)
                .authenticate(noise)
                .multiplex(yamux::Config::default())
                .timeout(Duration::from_secs(20)))
        })?
        .with_behaviour(|_| Behaviour {
            exchange: request_response::Behaviour::with_codec(
                Codec,
                [(StreamProtocol::new(layerhop_protocol::wire::PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(request_timeout)
                    .with_max_concurrent_streams(256),
            ),
        })?
        // Devices keep their link to the seed open to hear of releases as they are published.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(24 * 3600)))
        .build();
    Ok(swarm)
}
