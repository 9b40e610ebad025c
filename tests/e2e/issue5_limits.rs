//! Issue 5: per-peer limits. A flood of hostile dials (raw TCP sending garbage) and requests
//! (libp2p connections without a credential asking for chunks) at the seed and a device does
//! not stop two devices from completing a release; the hostile traffic is refused, and the
//! nodes count it.

use crate::harness::{Cluster, Node, wait_for};
use futures::StreamExt;
use layerhop_node::swarm::BehaviourEvent;
use layerhop_protocol::ChunkId;
use layerhop_protocol::wire::{Request, Response};
use libp2p::request_response::{Event, Message};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use std::io::Write;
use std::time::{Duration, Instant};

const DIALS: usize = 500;
const REQUESTS: usize = 500;

fn target(n: &Node) -> (PeerId, Multiaddr) {
    let s = n.status().expect("status");
    let peer = s["peer_id"].as_str().expect("peer").parse().expect("peer id");
    let addr = s["listen_addrs"][0].as_str().expect("addr").parse().expect("multiaddr");
    (peer, addr)
}

/// Raw TCP connections that send garbage instead of a handshake.
fn garbage_dials(addrs: Vec<std::net::SocketAddr>, n: usize) -> usize {
    let mut made = 0;
    for i in 0..n {
        let a = addrs[i % addrs.len()];
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)) {
            let _ = s.write_all(&[0xA5u8; 64]);
            made += 1;
        }
    }
    made
}

/// Chunk requests from a libp2p peer that never says hello (no credential): returns
/// (answers refused, other answers or failures).
fn hostile_requests(targets: Vec<(PeerId, Multiaddr)>, per_target: usize) -> (usize, usize) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let classifier = layerhop_node::traffic::Classifier::new(false, &[], &[]);
        let mut swarm = layerhop_node::swarm::build(key, classifier, Duration::from_secs(20), false, false, layerhop_node::swarm::limits(false)).expect("swarm");
        for (p, a) in &targets {
            swarm.dial(libp2p::swarm::dial_opts::DialOpts::peer_id(*p).addresses(vec![a.clone()]).build()).expect("dial");
        }
        let (mut refused, mut other) = (0, 0);
        let mut sent = std::collections::HashSet::new();
        let total = targets.len() * per_target;
        let deadline = Instant::now() + Duration::from_secs(90);
        while refused + other < total && Instant::now() < deadline {
            let Ok(ev) = tokio::time::timeout(Duration::from_secs(5), swarm.select_next_some()).await else { continue };
            match ev {
                // The garbage dials may fill a node's handshake slots and get this dial refused:
                // the limits working. A hostile peer simply dials again.
                SwarmEvent::OutgoingConnectionError { peer_id: Some(p), .. } if !sent.contains(&p) => {
                    if let Some((_, a)) = targets.iter().find(|(t, _)| *t == p) {
                        let _ = swarm.dial(libp2p::swarm::dial_opts::DialOpts::peer_id(p).addresses(vec![a.clone()]).build());
                    }
                }
                SwarmEvent::ConnectionEstablished { peer_id, .. } if sent.insert(peer_id) => {
                    for i in 0..per_target {
                        let ids = vec![ChunkId::of(&(i as u64).to_le_bytes())];
                        swarm.behaviour_mut().exchange.send_request(&peer_id, Request::Chunks(ids).into());
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Exchange(Event::Message { message: Message::Response { response, .. }, .. })) => {
                    if matches!(response, Response::Refused(_)) {
                        refused += 1;
                    } else {
                        other += 1;
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Exchange(Event::OutboundFailure { .. })) => other += 1,
                _ => {}
            }
        }
        (refused, other)
    })
}

#[test]
fn hostile_flood_does_not_stop_devices_completing() {
    let c = Cluster::start(2, "yard-7");
    let seed = target(&c.seed);
    let dev = target(&c.devices[0]);
    let socket = |a: &Multiaddr| layerhop_node::traffic::socket_addr(a).expect("tcp address");
    let addrs = vec![socket(&seed.1), socket(&dev.1)];
    let dir = c.path("r1").join("models");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let payload: Vec<u8> = (0..4_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    std::fs::write(dir.join("weights.bin"), &payload).expect("write");

    let dials = std::thread::spawn(move || garbage_dials(addrs, DIALS));
    let requests = std::thread::spawn(move || hostile_requests(vec![seed, dev], REQUESTS / 2));
    let v = c.publish("models", &[&dir]);
    for d in &c.devices {
        d.wait_complete("models", v, Duration::from_secs(120));
    }
    let made = dials.join().expect("dials");
    let (refused, other) = requests.join().expect("requests");
    eprintln!("hostile: {made} garbage connections made, {refused} requests refused, {other} other outcomes");
    assert_eq!(refused + other, REQUESTS, "every hostile request got an answer or failed");
    assert!(refused > 0, "no hostile request was refused");
    let out = c.path("export");
    crate::harness::cli_ok(&["export", "--home", c.devices[1].home_arg(), "--channel", "models", "--out", out.to_str().expect("utf-8")]);
    assert!(std::fs::read(out.join("models/weights.bin")).expect("exported") == payload);

    let count = |n: &Node, k: &str| n.status().expect("status")[k].as_u64().expect("counter");
    // Every garbage connection fails its handshake (or is denied) and is counted.
    wait_for("the garbage connections to be counted", Duration::from_secs(60), || {
        (count(&c.seed, "refused_connections") + count(&c.devices[0], "refused_connections") >= made as u64).then_some(())
    })
    .expect("refused connections counted");
    let counted = count(&c.seed, "refused_requests") + count(&c.devices[0], "refused_requests");
    assert!(counted >= refused as u64, "nodes counted {counted} refusals, the client saw {refused}");
    for n in [&c.seed, &c.devices[0]] {
        let s = n.status().expect("status");
        eprintln!("{}: refused_connections {} refused_requests {}", n.home.display(), s["refused_connections"], s["refused_requests"]);
    }
}
