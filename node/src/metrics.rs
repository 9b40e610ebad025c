//! The Prometheus endpoint: `GET /metrics` in the OpenMetrics text format.
//!
//! Why a rendering of [`Status`] and not counters of its own: every figure on `/metrics` is
//! the one `status --json` prints at the same moment, so a dashboard and an operator at the
//! console never disagree. Each scrape asks the event loop for a status (and, on a seed, the
//! fleet view), fills a fresh `prometheus_client` registry and encodes it; a scrape every few
//! seconds costs the node one status computation.
//!
//! Names follow the Prometheus conventions: a `layerhop_` prefix, base units in the name
//! (`_bytes`), `_total` on counters, and labels instead of names for dimensions
//! (`layerhop_link_bytes_total{class="metered",direction="in"}`).
//!
//! Like the registry mirror, the endpoint is optional (`metrics = "off"`) and a node whose
//! address is taken runs without it, logging why. The bound address is written to
//! `HOME/metrics-addr`. It speaks plain HTTP with no authentication: keep it on loopback or a
//! management network.

use crate::config::Config;
use crate::event_loop::{Command, Handle};
use crate::fleet::FleetStatus;
use crate::home::Home;
use crate::status::Status;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::path::PathBuf;

/// The default `metrics` address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9410";

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

fn gauge(v: u64) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
    g
}

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

fn counters(rows: impl IntoIterator<Item = (Labels, u64)>) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    for (l, v) in rows {
        f.get_or_create(&l).inc_by(v);
    }
    f
}

fn gauges(rows: impl IntoIterator<Item = (Labels, u64)>) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    for (l, v) in rows {
        f.get_or_create(&l).set(i64::try_from(v).unwrap_or(i64::MAX));
    }
    f
}

fn release_labels(channel: &str, version: u64) -> Labels {
    vec![("channel", channel.to_owned()), ("version", version.to_string())]
}

/// Encode a status (and a seed's fleet view) as OpenMetrics text.
pub fn render(s: &Status, fleet: Option<&FleetStatus>) -> Result<String, std::fmt::Error> {
    let mut r = Registry::with_prefix("layerhop");
    let role = serde_json::to_value(s.role).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    r.register("node", "The node: its role, site and peer id", Info::new(vec![("role", role), ("site", s.site.clone()), ("peer_id", s.peer_id.clone())]));
    let t = s.traffic;
    let dir = |class: &str, d: &str| vec![("class", class.to_owned()), ("direction", d.to_owned())];
    r.register_with_unit(
        "link",
        "Bytes on the wire by link class (metered: the cellular uplink to the seed; lan: site peers) and direction, handshakes and framing included",
        Unit::Bytes,
        counters([
            (dir("metered", "in"), t.metered_in),
            (dir("metered", "out"), t.metered_out),
            (dir("lan", "in"), t.lan_in),
            (dir("lan", "out"), t.lan_out),
        ]),
    );
    let (mut metered, mut lan, mut members) = (0, 0, 0);
    for p in &s.peers {
        if p.link == "metered" {
            metered += 1;
        } else {
            lan += 1;
        }
        members += u64::from(p.site_member);
    }
    r.register("peers", "Peers connected now, by link class", gauges([(vec![("link", "metered".to_owned())], metered), (vec![("link", "lan".to_owned())], lan)]));
    r.register("site_members", "Enrolled members of this node's site connected over the LAN", gauge(members));
    r.register("banned_peers", "Peers banned now after repeated faults", gauge(s.banned_peers as u64));
    r.register("peer_strikes", "Strikes given to peers (bad chunks; oversized, malformed or stalled answers)", counter(s.strikes));
    r.register(
        "chunks_fetched",
        "Chunks fetched since the node started, by source",
        counters([(vec![("source", "seed".to_owned())], s.chunks_from_seed), (vec![("source", "peer".to_owned())], s.chunks_from_peers)]),
    );
    r.register("lane_answers", "Answers to this node's chunk requests that came over lanes", counter(s.lane_answers));
    r.register("chunk_requests_served", "Chunk requests this node answered", counter(s.served.requests));
    r.register("chunks_served", "Chunks this node sent to others", counter(s.served.chunks));
    r.register_with_unit("served", "Bytes of chunks this node sent to others, as sent", Unit::Bytes, counter(s.served.bytes));
    let rel = |f: &dyn Fn(&crate::status::ReleaseStatus) -> u64| s.releases.iter().map(|x| (release_labels(&x.channel, x.version), f(x))).collect::<Vec<_>>();
    r.register_with_unit("release_size", "Bytes of data in the newest release of each channel", Unit::Bytes, gauges(rel(&|x| x.bytes_total)));
    r.register_with_unit("release_held", "Bytes of that data held on this node", Unit::Bytes, gauges(rel(&|x| x.bytes_have)));
    r.register("release_chunks_missing", "Chunks of the release still to fetch (at the last look)", gauges(rel(&|x| x.chunks_missing as u64)));
    r.register("release_complete", "1 when the node holds every chunk of the release", gauges(rel(&|x| u64::from(x.complete))));
    if let Some(p) = &s.policy {
        let period = |name: &str| vec![("period", name.to_owned())];
        let periods = [("day", p.day), ("month", p.month)];
        r.register_with_unit(
            "metered_budget_used",
            "Device: metered bytes (in and out) counted this local day and month",
            Unit::Bytes,
            gauges(periods.iter().map(|(n, x)| (period(n), x.used))),
        );
        r.register_with_unit(
            "metered_budget",
            "Device: the metered byte budget per local day and month (only those set)",
            Unit::Bytes,
            gauges(periods.iter().filter_map(|(n, x)| Some((period(n), x.budget?)))),
        );
        r.register_with_unit(
            "metered_budget_left",
            "Device: metered bytes the budget still allows this local day and month (only those set)",
            Unit::Bytes,
            gauges(periods.iter().filter_map(|(n, x)| Some((period(n), x.left?)))),
        );
        let paused = p.holds.iter().filter(|h| h.reason != crate::policy::Reason::RateLimit).count() as u64;
        r.register("releases_paused", "Device: releases whose metered fetching the policy pauses now (budget, window, deferral)", gauge(paused));
    }
    if let Some(f) = fleet {
        let site = |name: &str| vec![("site", name.to_owned())];
        let to_from = |name: &str, d: &str| vec![("site", name.to_owned()), ("direction", d.to_owned())];
        r.register_with_unit(
            "site_metered",
            "Seed: bytes between the seed and each site's devices since the seed started (to_site, from_site)",
            Unit::Bytes,
            counters(f.sites.iter().flat_map(|s| [(to_from(&s.site, "to_site"), s.bytes_to_site), (to_from(&s.site, "from_site"), s.bytes_from_site)])),
        );
        r.register("site_devices", "Seed: devices seen per site since the seed started", gauges(f.sites.iter().map(|s| (site(&s.site), s.devices.len() as u64))));
        r.register("site_devices_connected", "Seed: devices connected now per site", gauges(f.sites.iter().map(|s| (site(&s.site), s.devices_connected as u64))));
        let mut complete: std::collections::BTreeMap<(String, String, u64), u64> = Default::default();
        for s in &f.sites {
            for d in &s.devices {
                for h in d.releases.iter().filter(|h| h.complete) {
                    *complete.entry((s.site.clone(), h.channel.clone(), h.version)).or_default() += 1;
                }
            }
        }
        r.register(
            "site_release_devices_complete",
            "Seed: devices per site that reported holding the release complete",
            gauges(complete.into_iter().map(|((s, c, v), n)| (vec![("site", s), ("channel", c), ("version", v.to_string())], n))),
        );
    }
    let mut out = String::new();
    encode(&mut out, &r)?;
    Ok(out)
}

/// `HOME/metrics-addr`: the running endpoint's actual address.
pub fn addr_file(home: &Home) -> PathBuf {
    home.root().join("metrics-addr")
}

/// A running endpoint.
pub use crate::http_endpoint::Running;

async fn scrape(handle: Handle) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let Some(status) = handle.call(Command::Status).await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the node is stopping\n").into_response();
    };
    let fleet = handle.call(Command::Fleet).await.flatten();
    match render(&status, fleet.as_ref()) {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed\n").into_response(),
    }
}

/// Start the endpoint if the config asks for one. Never fails the daemon.
pub async fn start(cfg: &Config, home: &Home, handle: Handle) -> Option<Running> {
    let Some(addr) = cfg.metrics else {
        tracing::info!("metrics endpoint off (metrics = \"off\")");
        return None;
    };
    let app = axum::Router::new().route("/metrics", axum::routing::get(move || scrape(handle.clone())));
    let running = crate::http_endpoint::start("metrics endpoint", "metrics", addr, addr_file(home), app).await?;
    tracing::info!(addr = %running.addr, "metrics endpoint listening on /metrics");
    Some(running)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{PeerStatus, ReleaseStatus, Served};
    use crate::traffic::Totals;

    #[test]
    fn names_follow_the_conventions_and_values_are_the_status() {
        let s = Status {
            peer_id: "12D3KooWtest".into(),
            role: crate::config::Role::Device,
            site: "depot-1".into(),
            listen_addrs: vec![],
            peers: vec![PeerStatus { peer_id: "x".into(), link: "lan".into(), seed: false, site_member: true }],
            releases: vec![ReleaseStatus {
                channel: "detector".into(),
                version: 3,
                complete: false,
                bytes_total: 1000,
                bytes_have: 250,
                artifacts: 1,
                images: 0,
                expires_at: 0,
                chunks_missing: 4,
                stalled: None,
            }],
            traffic: Totals { metered_in: 11, metered_out: 12, lan_in: 13, lan_out: 14 },
            chunks_from_seed: 5,
            chunks_from_peers: 6,
            chunks_being_stored: 0,
            banned_peers: 1,
            strikes: 4,
            revocations_version: 0,
            refused_connections: 0,
            refused_requests: 0,
            revoked: 0,
            publisher_key: None,
            lane_port: Some(40000),
            lane_answers: 7,
            served: Served { requests: 2, chunks: 3, bytes: 99 },
            policy: Some(crate::policy::Status {
                day: crate::policy::Period { used: 700, budget: Some(1000), left: Some(300) },
                month: crate::policy::Period { used: 900, budget: None, left: None },
                holds: vec![crate::policy::ReleaseHold { channel: "detector".into(), version: 3, reason: crate::policy::Reason::DayBudget, until: None, until_local: None }],
                ..Default::default()
            }),
        };
        let text = render(&s, None).expect("encode");
        for line in [
            "# TYPE layerhop_link_bytes counter",
            "# UNIT layerhop_link_bytes bytes",
            "layerhop_link_bytes_total{class=\"metered\",direction=\"in\"} 11",
            "layerhop_link_bytes_total{class=\"lan\",direction=\"out\"} 14",
            "layerhop_peers{link=\"lan\"} 1",
            "layerhop_site_members 1",
            "layerhop_banned_peers 1",
            "layerhop_peer_strikes_total 4",
            "layerhop_chunks_fetched_total{source=\"seed\"} 5",
            "layerhop_lane_answers_total 7",
            "layerhop_chunk_requests_served_total 2",
            "layerhop_served_bytes_total 99",
            "layerhop_release_held_bytes{channel=\"detector\",version=\"3\"} 250",
            "layerhop_release_size_bytes{channel=\"detector\",version=\"3\"} 1000",
            "layerhop_release_complete{channel=\"detector\",version=\"3\"} 0",
            "layerhop_node_info{role=\"device\",site=\"depot-1\",peer_id=\"12D3KooWtest\"} 1",
            "layerhop_metered_budget_left_bytes{period=\"day\"} 300",
            "layerhop_metered_budget_bytes{period=\"day\"} 1000",
            "layerhop_metered_budget_used_bytes{period=\"month\"} 900",
            "layerhop_releases_paused 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(!text.contains("layerhop_metered_budget_left_bytes{period=\"month\"}"), "no month budget, no month left: {text}");
    }
}
