//! The seed's view of the fleet (`layerhop fleet`): sites, their devices, the releases each
//! device holds, and what each site cost on the metered link.
//!
//! Why on the seed: the seed is the one node every device talks to, and every byte between a
//! site and the seed crosses that site's metered uplink — so the seed's per-connection byte
//! counters ([`crate::traffic::Classifier::peer_totals`]), summed over a site's devices, are
//! the figure the operator pays for, measured at one place and not trusted to the devices.
//! A device is placed in its site by the fleet credential it presented at Hello; it reports
//! the releases it holds in a small [`Holding`] list when that changes ([`crate::report`]).
//!
//! The view lives in memory: it starts empty when the seed starts, and bytes count from then.

use crate::event_loop::EventLoop;
use crate::traffic::PeerBytes;
use indicatif::HumanBytes;
use layerhop_protocol::wire::Holding;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Devices remembered; past this, disconnected ones are forgotten first.
const MAX_DEVICES: usize = 100_000;

/// What the seed knows of the devices it has seen.
#[derive(Debug, Default)]
pub struct Fleet {
    devices: HashMap<PeerId, Device>,
}

#[derive(Debug)]
struct Device {
    site: String,
    holdings: Vec<Holding>,
    last_seen: u64,
}

/// The fleet, as `layerhop fleet --json` prints it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetStatus {
    /// Sites by name.
    pub sites: Vec<SiteStatus>,
}

/// One site.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteStatus {
    /// Its name (from its devices' credentials).
    pub site: String,
    /// Devices connected now.
    pub devices_connected: usize,
    /// Bytes the seed sent to the site's devices (every byte on the wire).
    pub bytes_to_site: u64,
    /// Bytes the seed received from them.
    pub bytes_from_site: u64,
    /// Both directions: what crossed the site's metered link to and from the seed.
    pub metered_bytes: u64,
    /// Its devices.
    pub devices: Vec<DeviceStatus>,
}

/// One device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Its peer id.
    pub peer_id: String,
    /// Whether it is connected to the seed now.
    pub connected: bool,
    /// When it last said hello or reported, unix seconds.
    pub last_seen: u64,
    /// Bytes the seed sent to it.
    pub bytes_to_device: u64,
    /// Bytes the seed received from it.
    pub bytes_from_device: u64,
    /// The releases it reported holding.
    pub releases: Vec<HeldRelease>,
}

/// A release a device holds (or is fetching), as it last reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldRelease {
    /// Channel.
    pub channel: String,
    /// Version.
    pub version: u64,
    /// Whether it holds every chunk.
    pub complete: bool,
    /// Bytes held at the report.
    pub bytes_have: u64,
    /// Bytes of the release.
    pub bytes_total: u64,
}

impl Fleet {
    /// A device of `site` presented a valid credential.
    pub fn enrolled(&mut self, peer: PeerId, site: &str, now: u64, connected: impl Fn(&PeerId) -> bool) {
        if self.devices.len() >= MAX_DEVICES && !self.devices.contains_key(&peer) {
            self.devices.retain(|p, _| connected(p));
        }
        let d = self.devices.entry(peer).or_insert_with(|| Device { site: site.to_owned(), holdings: Vec::new(), last_seen: now });
        d.site = site.to_owned();
        d.last_seen = now;
    }

    /// A known device reported its holdings; false if it is not known.
    pub fn report(&mut self, peer: &PeerId, holdings: Vec<Holding>, now: u64) -> bool {
        let Some(d) = self.devices.get_mut(peer) else { return false };
        d.holdings = holdings;
        d.last_seen = now;
        true
    }

    /// The view, with `connected` telling who is connected now and `bytes` each peer's traffic.
    pub fn view(&self, connected: impl Fn(&PeerId) -> bool, bytes: &HashMap<PeerId, PeerBytes>) -> FleetStatus {
        let mut sites: BTreeMap<&str, SiteStatus> = BTreeMap::new();
        for (p, d) in &self.devices {
            let b = bytes.get(p).copied().unwrap_or_default();
            let s = sites.entry(&d.site).or_insert_with(|| SiteStatus {
                site: d.site.clone(),
                devices_connected: 0,
                bytes_to_site: 0,
                bytes_from_site: 0,
                metered_bytes: 0,
                devices: Vec::new(),
            });
            let is_connected = connected(p);
            s.devices_connected += usize::from(is_connected);
            s.bytes_to_site += b.sent;
            s.bytes_from_site += b.received;
            s.metered_bytes += b.sent + b.received;
            let mut releases: Vec<HeldRelease> = d
                .holdings
                .iter()
                .map(|h| HeldRelease {
                    channel: h.channel.to_string(),
                    version: h.version,
                    complete: h.complete,
                    bytes_have: h.bytes_have,
                    bytes_total: h.bytes_total,
                })
                .collect();
            releases.sort_by(|a, b| a.channel.cmp(&b.channel));
            s.devices.push(DeviceStatus {
                peer_id: p.to_string(),
                connected: is_connected,
                last_seen: d.last_seen,
                bytes_to_device: b.sent,
                bytes_from_device: b.received,
                releases,
            });
        }
        let mut sites: Vec<SiteStatus> = sites.into_values().collect();
        for s in &mut sites {
            s.devices.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        }
        FleetStatus { sites }
    }
}

impl EventLoop {
    /// Seed: the fleet view; None on a device.
    pub(crate) fn fleet_view(&self) -> Option<FleetStatus> {
        if self.cfg.role != crate::config::Role::Seed {
            return None;
        }
        let bytes = self.classifier.peer_totals();
        Some(self.fleet.view(|p| self.enrolled.contains_key(p), &bytes))
    }
}

/// The human form of a fleet view.
pub fn render(f: &FleetStatus) -> String {
    let mut out = String::new();
    if f.sites.is_empty() {
        out += "no device has connected since the seed started\n";
    }
    for s in &f.sites {
        out += &format!(
            "site {}  devices {} ({} connected)  metered {} (to site {}, from site {})\n",
            s.site,
            s.devices.len(),
            s.devices_connected,
            HumanBytes(s.metered_bytes),
            HumanBytes(s.bytes_to_site),
            HumanBytes(s.bytes_from_site)
        );
        for d in &s.devices {
            let held: Vec<String> = d
                .releases
                .iter()
                .map(|r| {
                    if r.complete {
                        format!("{} v{}", r.channel, r.version)
                    } else {
                        format!("{} v{} ({}/{})", r.channel, r.version, HumanBytes(r.bytes_have), HumanBytes(r.bytes_total))
                    }
                })
                .collect();
            out += &format!(
                "  {}  {}  metered {}  holds {}\n",
                d.peer_id,
                if d.connected { "connected" } else { "gone" },
                HumanBytes(d.bytes_to_device + d.bytes_from_device),
                if held.is_empty() { "nothing reported".into() } else { held.join(", ") }
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_sum_their_devices() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut f = Fleet::default();
        f.enrolled(a, "depot-1", 1, |_| true);
        f.enrolled(b, "depot-1", 1, |_| true);
        f.enrolled(c, "depot-2", 1, |_| true);
        let h = Holding { channel: layerhop_protocol::Channel::new("m").expect("channel"), version: 2, complete: true, bytes_have: 5, bytes_total: 5 };
        assert!(f.report(&a, vec![h.clone()], 2));
        assert!(!f.report(&PeerId::random(), vec![h], 2));
        let bytes: HashMap<PeerId, PeerBytes> = [
            (a, PeerBytes { class: None, received: 10, sent: 100 }),
            (b, PeerBytes { class: None, received: 1, sent: 20 }),
            (c, PeerBytes { class: None, received: 7, sent: 0 }),
        ]
        .into();
        let v = f.view(|p| *p != b, &bytes);
        assert_eq!(v.sites.len(), 2);
        let s1 = &v.sites[0];
        assert_eq!((s1.site.as_str(), s1.devices_connected, s1.bytes_to_site, s1.bytes_from_site, s1.metered_bytes), ("depot-1", 1, 120, 11, 131));
        assert_eq!(v.sites[1].metered_bytes, 7);
        let da = s1.devices.iter().find(|d| d.peer_id == a.to_string()).expect("a");
        assert_eq!((da.releases.len(), da.releases[0].version), (1, 2));
        assert!(render(&v).contains("m v2"));
    }
}
