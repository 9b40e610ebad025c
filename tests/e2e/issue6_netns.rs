//! Issue 6: the real-network testbed. Sites are Linux network namespaces (a bridge for the LAN,
//! a gateway whose uplink to the cloud is a veth shaped by `tbf`), devices find each other by
//! mDNS alone, and what crosses each site's uplink is read from the kernel's interface
//! counters. `tests/netns/testbed.sh` builds and tears down the topology and runs the real
//! binary; this test drives it and checks the issue's criteria.
//!
//! Needs root and iproute2 (`ip netns`, `tc` with `tbf`) and `jq`; without them it prints why
//! and passes without running (CI runs as root, and `.ci/run` installs the packages).
//!
//! Three testbed runs, one after the other:
//! - A: sites 1 and 2 share (10 devices each) and site 3 is the baseline (10 devices with
//!   `site_sharing = false`), all pulling the same release at the same time; site 2's uplink
//!   goes down for a few seconds mid-release (shorter than the lease);
//! - B: one site of 10 devices whose uplink goes down for longer than the lease;
//! - C: the same, down for longer than the request timeout of exchanges with site peers.
//!
//! Every cut must cost no second copy: each chunk comes from the seed once, and the uplink
//! stays within the issue's bound.
//!
//! Set `LAYERHOP_NETNS_STRICT=1` to also fail on the node bugs the testbed works around or
//! tolerates today (see `known_issues` below).

use crate::harness::noise;
use crate::harness;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const DEVICES: u64 = 10;
const SIZE_MIB: usize = 16;
/// Uplink outage of site 2 in run A: a short drop, well under the default lease (15 s) even
/// with TCP's retransmission backoff after it (the next retransmission comes up to about the
/// outage's length later).
const SHORT_CUT_SECS: u64 = 5;
/// Uplink outage of run B: longer than the default lease (15 s), so every member's seed
/// downloads stall long enough for the site to hand their chunks to others if it took the
/// outage for the members' fault (it measures stalls on its uplink clock, see `node::site`).
const LONG_CUT_SECS: u64 = 20;
/// Uplink outage of run C: twice the default request timeout (30 s), which the chunk requests
/// in flight to the seed must survive (they use the longer uplink deadline, see
/// `node::swarm`), and long enough for TCP's retransmission backoff to delay the connections'
/// return by several seconds after the link is back.
const LONGER_CUT_SECS: u64 = 60;

/// Uplink bytes a device costs besides the release's chunks, once: its connection to the seed
/// (multistream-select, the noise XX handshake carrying the identity key and its signature,
/// yamux setup), its `Hello` with the fleet credential and the seed's answer, and the release
/// listing it asks for on connect; and the seed's `Peers` message about every member of its site
/// that joins later (~250 B each, sent even with `peer_exchange = false`). Measured here (nodes'
/// metered totals before the release): 2.2–6.9 KB per device, the first joiner of 10 at the top;
/// the kernel agreed (54 KB of TCP payload for 10 devices, two of them started twice); an idle
/// meshed site then costs ~4 bytes/s. 8 KiB per device is the allowance (for 10 devices). What grows with the release — chunk ids in requests, yamux and noise frame
/// headers, response framing — measured 0.3% of the new bytes and is inside the 5%; TCP/IP
/// headers and ACKs are not payload and are subtracted per packet (see [`Uplink::payload`]).
const PER_DEVICE_CONSTANT: u64 = 8 * 1024;

/// Ethernet (14) + IPv4 (20) + TCP with the timestamp option (32): the headers of one packet
/// on the uplink veth. The testbed sets `gso_max_segs 1` on both ends, so every skb the
/// counters see is one wire packet.
const HEADERS_PER_PACKET: u64 = 66;
const ETHERNET_PER_PACKET: u64 = 14;

/// Why the testbed cannot run here, if it cannot.
fn skip_reason() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if uid.as_deref() != Some("0") {
        return Some(format!("not root (uid {}); network namespaces need root", uid.unwrap_or_else(|| "unknown".into())));
    }
    for tool in ["ip", "tc", "jq"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).stdout(Stdio::null()).status().is_ok_and(|s| s.success());
        if !found {
            return Some(format!("`{tool}` is not installed (apt-get install iproute2 jq)"));
        }
    }
    // A namespace with a bridge, a veth pair and a tbf qdisc: everything the testbed makes.
    let probe = format!("lh6probe-{}", std::process::id());
    let steps: [&[&str]; 4] = [
        &["ip", "netns", "add", &probe],
        &["ip", "-n", &probe, "link", "add", "name", "br0", "type", "bridge"],
        &["ip", "-n", &probe, "link", "add", "name", "p0", "type", "veth", "peer", "name", "p1"],
        &["tc", "-n", &probe, "qdisc", "add", "dev", "p0", "root", "tbf", "rate", "20mbit", "burst", "32kbit", "latency", "400ms"],
    ];
    let mut why = None;
    for step in steps {
        match Command::new(step[0]).args(&step[1..]).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                why = Some(format!("`{}` fails: {}", step.join(" "), String::from_utf8_lossy(&o.stderr).trim()));
                break;
            }
            Err(e) => {
                why = Some(format!("cannot run {}: {e}", step[0]));
                break;
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).stderr(Stdio::null()).status();
    why
}

fn strict() -> bool {
    std::env::var_os("LAYERHOP_NETNS_STRICT").is_some_and(|v| v != "0")
}

/// Run `testbed.sh run ARGS` with its work dir in `work`; returns the `RESULT` JSON.
fn testbed(work: &Path, data: &Path, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("netns/testbed.sh");
    let bin = harness::binary();
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .arg("run")
        .args(["--binary", bin.to_str().expect("utf-8 path")])
        .args(["--workdir", work.to_str().expect("utf-8 path")])
        .args(["--data", data.to_str().expect("utf-8 path")])
        .args(["--devices", &DEVICES.to_string()])
        .args(args)
        .stderr(Stdio::inherit());
    let out = cmd.output().expect("running tests/netns/testbed.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines().filter(|l| !l.starts_with("RESULT ")) {
        println!("{line}");
    }
    assert!(out.status.success(), "testbed.sh {args:?} failed ({})", out.status);
    let line = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")).expect("testbed.sh prints a RESULT line");
    serde_json::from_str(line).expect("RESULT is JSON")
}

/// The release's new bytes for a site that held nothing: every chunk at its wire size (as the
/// seed sends it: zstd when that pays, raw otherwise) plus the signed release file.
fn new_bytes(complete_home: &Path, release_file: &Path) -> u64 {
    let mut total = std::fs::metadata(release_file).expect("release file").len();
    for bytes in crate::harness::distinct_chunks(complete_home).into_values() {
        total += match layerhop_node::codec::compress(bytes) {
            layerhop_protocol::wire::ChunkReply::Raw(b) | layerhop_protocol::wire::ChunkReply::Zstd(b) => b.len() as u64,
            layerhop_protocol::wire::ChunkReply::Missing => 0,
        };
    }
    total
}

/// A site's uplink counters, from the gateway's `/sys/class/net/up0/statistics`.
struct Uplink {
    rx_bytes: u64,
    tx_bytes: u64,
    rx_packets: u64,
    tx_packets: u64,
}

impl Uplink {
    fn of(site: &Value) -> Uplink {
        let u = &site["uplink"];
        let n = |k: &str| u[k].as_u64().unwrap_or_else(|| panic!("uplink.{k}"));
        Uplink { rx_bytes: n("rx_bytes"), tx_bytes: n("tx_bytes"), rx_packets: n("rx_packets"), tx_packets: n("tx_packets") }
    }
    /// Ethernet frames, both directions: every header, ACK and retransmission.
    fn raw(&self) -> u64 {
        self.rx_bytes + self.tx_bytes
    }
    /// IP packets, both directions: what a cellular operator bills.
    fn ip(&self) -> u64 {
        self.raw() - ETHERNET_PER_PACKET * (self.rx_packets + self.tx_packets)
    }
    /// TCP payload, both directions: the bytes the nodes count on their sockets (plus
    /// retransmissions, which the kernel counts again and the nodes do not).
    fn payload(&self) -> u64 {
        self.raw() - HEADERS_PER_PACKET * (self.rx_packets + self.tx_packets)
    }
    fn payload_in(&self) -> u64 {
        self.rx_bytes - HEADERS_PER_PACKET * self.rx_packets
    }
}

fn u(v: &Value, path: &str) -> u64 {
    path.split('.').fold(v, |v, k| &v[k]).as_u64().unwrap_or_else(|| panic!("{path} in {v}"))
}

/// What the test derives for one site.
struct SiteReport {
    name: String,
    sharing: bool,
    new: u64,
    up: Uplink,
    nodes_in: u64,
    nodes_out: u64,
    lan_in: u64,
    seed_chunks: u64,
    distinct: u64,
    converge: f64,
}

fn site_report(run: &Value, site: &Value) -> SiteReport {
    let work = Path::new(run["work"].as_str().expect("work"));
    let version = u(run, "version");
    let release_file = work.join("seed/data/releases/testbed").join(format!("{version:020}.release"));
    let home = PathBuf::from(site["complete_home"].as_str().expect("complete_home"));
    assert!(home.is_dir(), "{}: no device completed", site["site"]);
    SiteReport {
        name: site["site"].as_str().expect("site").to_owned(),
        sharing: site["sharing"].as_bool().expect("sharing"),
        new: new_bytes(&home, &release_file),
        up: Uplink::of(site),
        nodes_in: u(site, "nodes.metered_in"),
        nodes_out: u(site, "nodes.metered_out"),
        lan_in: u(site, "nodes.lan_in"),
        seed_chunks: u(site, "nodes.chunks_from_seed"),
        // Counted here from the store (each chunk once), not from the testbed's JSON, which
        // counts a chunk appended twice to a pack twice.
        distinct: crate::harness::distinct_chunks(&home).len() as u64,
        converge: site["converge_secs"].as_f64().unwrap_or(f64::NAN),
    }
}

fn print_reports(title: &str, reports: &[SiteReport]) {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!("\n{title}");
    println!(
        "{:<8} {:>7} {:>9} {:>11} {:>9} {:>12} {:>10} {:>8} {:>12} {:>14} {:>10} {:>8} {:>10} {:>10}",
        "site", "sharing", "new MiB", "kernel MiB", "IP MiB", "payload MiB", "nodes MiB", "IP/new", "payload/new", "nodes/payload", "seed chnk", "distinct", "LAN MiB", "converge s"
    );
    for r in reports {
        let nodes = r.nodes_in + r.nodes_out;
        println!(
            "{:<8} {:>7} {:>9.2} {:>11.2} {:>9.2} {:>12.2} {:>10.2} {:>8.3} {:>12.3} {:>14.4} {:>10} {:>8} {:>10.1} {:>10.1}",
            r.name,
            r.sharing,
            mib(r.new),
            mib(r.up.raw()),
            mib(r.up.ip()),
            mib(r.up.payload()),
            mib(nodes),
            r.up.ip() as f64 / r.new as f64,
            r.up.payload() as f64 / r.new as f64,
            nodes as f64 / r.up.payload() as f64,
            r.seed_chunks,
            r.distinct,
            mib(r.lan_in),
            r.converge
        );
    }
}

/// The issue's bound on a site's uplink: 1.05 × the new bytes plus the per-device constant.
fn bound(r: &SiteReport) -> u64 {
    (r.new as f64 * 1.05) as u64 + DEVICES * PER_DEVICE_CONSTANT
}

#[test]
fn issue6_netns_testbed() {
    if let Some(why) = skip_reason() {
        eprintln!("issue6 netns testbed SKIPPED: {why}");
        return;
    }
    let tmp = tempfile::Builder::new().prefix("lh6-test-").tempdir().expect("tempdir");
    // LAYERHOP_KEEP_TEST_DIRS=1 keeps the homes, logs and JSON of both runs, pass or fail.
    let (_guard, root) = if std::env::var_os("LAYERHOP_KEEP_TEST_DIRS").is_some() {
        let kept = tmp.keep();
        eprintln!("keeping {}", kept.display());
        (None, kept)
    } else {
        let root = tmp.path().to_path_buf();
        (Some(tmp), root)
    };
    let data = root.join("release/models");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("weights.bin"), noise(SIZE_MIB << 20, 6)).expect("write release data");

    // Run A: two sharing sites and the baseline site, one release; a short drop of site 2's uplink.
    let a = testbed(
        &root.join("run-a"),
        &data,
        &[
            "--sites",
            "2",
            "--baseline-site",
            // With the defaults the baseline's 10 devices each keep 8 requests of up to 16
            // chunks (~1.2 MB) in flight to the seed over one 20 Mbit/s uplink: ~100 MB queued,
            // 40 s of link time. When chunk requests to the seed had the 30 s request timeout
            // (before node::swarm's uplink protocol), the seed gave up writing answers, the
            // devices asked again, and the baseline moved 20-25 copies instead of 10 and took ~3
            // minutes. Two requests in flight per device keep the queue at ~24 MB (10 s), so the
            // baseline measures what it is meant to, one copy per device, not queueing.
            "--baseline-set",
            "parallel_requests=2",
            "--cut-uplink",
            "2",
            "--cut-at",
            "40",
            "--cut-secs",
            &SHORT_CUT_SECS.to_string(),
        ],
    );
    // Runs B and C: one site whose uplink goes down for longer than the lease, then for
    // longer than the request timeout.
    let b = testbed(
        &root.join("run-b"),
        &data,
        &["--sites", "1", "--cut-uplink", "1", "--cut-at", "40", "--cut-secs", &LONG_CUT_SECS.to_string()],
    );
    let c = testbed(
        &root.join("run-c"),
        &data,
        &["--sites", "1", "--cut-uplink", "1", "--cut-at", "40", "--cut-secs", &LONGER_CUT_SECS.to_string()],
    );

    let sites_a: Vec<&Value> = a["sites"].as_array().expect("sites").iter().collect();
    assert_eq!(sites_a.len(), 3);
    let reports_a: Vec<SiteReport> = sites_a.iter().map(|s| site_report(&a, s)).collect();
    let site_b = &b["sites"][0];
    let report_b = site_report(&b, site_b);
    let site_c = &c["sites"][0];
    let report_c = site_report(&c, site_c);
    print_reports(
        &format!("run A: sites 1 and 2 share, site 3 is the baseline (site_sharing = false); same release, same time; site 2's uplink down {SHORT_CUT_SECS} s"),
        &reports_a,
    );
    print_reports(&format!("run B: site 1's uplink down for {LONG_CUT_SECS} s mid-release"), std::slice::from_ref(&report_b));
    print_reports(&format!("run C: site 1's uplink down for {LONGER_CUT_SECS} s mid-release"), std::slice::from_ref(&report_c));
    let (shared, baseline) = (&reports_a[0], &reports_a[2]);
    println!(
        "\nside by side, {DEVICES} devices: uplink payload with site sharing {:.2} MiB ({:.3}x new), without {:.2} MiB ({:.3}x new): {:.1}x less",
        shared.up.payload() as f64 / 1048576.0,
        shared.up.payload() as f64 / shared.new as f64,
        baseline.up.payload() as f64 / 1048576.0,
        baseline.up.payload() as f64 / baseline.new as f64,
        baseline.up.payload() as f64 / shared.up.payload() as f64
    );
    let mut known_issues = Vec::new();
    for run in [&a, &b, &c] {
        let heals = u(run, "mesh_heal_restarts");
        if heals > 0 {
            known_issues.push(format!(
                "{heals} device restart(s) were needed before every pair of site members was connected: two devices that find each \
                 other by mDNS in the same instant dial each other from their listen ports, TCP simultaneous open yields one \
                 connection on which both start noise as initiator, the handshake fails on both sides, and nothing redials"
            ));
        }
    }

    // Every device of every site completed.
    for (run, name) in [(&a, "A"), (&b, "B"), (&c, "C")] {
        for s in run["sites"].as_array().expect("sites") {
            assert_eq!(s["all_complete"], true, "run {name}, {}: not every device completed the release", s["site"]);
        }
    }

    // (a) One site of 10 devices: the kernel's uplink counters ≤ 1.05 × B + the constant, and
    // the nodes' metered totals agree with the kernel within 5%.
    for r in reports_a[..2].iter().chain([&report_b, &report_c]) {
        assert!(
            r.up.payload() <= bound(r),
            "{}: the uplink carried {} bytes of TCP payload for {} new bytes ({:.3}x; bound {})",
            r.name,
            r.up.payload(),
            r.new,
            r.up.payload() as f64 / r.new as f64,
            bound(r)
        );
        let nodes = r.nodes_in + r.nodes_out;
        let diff = (nodes as f64 - r.up.payload() as f64).abs() / r.up.payload() as f64;
        assert!(diff <= 0.05, "{}: nodes' metered totals {nodes} vs kernel {} ({:.2}% apart)", r.name, r.up.payload(), diff * 100.0);
        let diff_in = (r.nodes_in as f64 - r.up.payload_in() as f64).abs() / r.up.payload_in() as f64;
        assert!(diff_in <= 0.05, "{}: nodes' metered_in {} vs kernel rx {} ({:.2}% apart)", r.name, r.nodes_in, r.up.payload_in(), diff_in * 100.0);
    }

    // (b) Discovery by mDNS alone: no addresses in any config, peer exchange off, and every
    // device of a sharing site sees every other one as a site member.
    for (run, sites) in [("A", &sites_a[..2]), ("B", &[site_b][..]), ("C", &[site_c][..])] {
        for s in sites {
            let mut found = 0;
            for d in s["device_list"].as_array().expect("devices") {
                let home = Path::new(d["home"].as_str().expect("home"));
                let config = std::fs::read_to_string(home.join("config.toml")).expect("config");
                assert!(config.lines().any(|l| l == "site_peers = []"), "{}: site_peers configured", home.display());
                assert!(config.lines().any(|l| l == "peer_exchange = false"), "{}: peer exchange on", home.display());
                assert!(config.lines().any(|l| l == "mdns = true"), "{}: mDNS off", home.display());
                assert_eq!(u(d, "site_members"), DEVICES - 1, "{}: site members seen by {}", s["site"], home.display());
                found += u(d, "mdns_found_lines");
            }
            assert!(found >= DEVICES - 1, "{}: only {found} peers found by mDNS", s["site"]);
            println!(
                "{} (run {}): every device sees {} site members; first mDNS discovery {}s after a device started",
                s["site"].as_str().unwrap_or("?"),
                run,
                DEVICES - 1,
                s["mdns_first_found_secs"]
            );
        }
    }

    // (c) Two sites at once: no device has a peer of the other site, the cloud forwarded
    // nothing between sites (the route exists: plain routing), and each site's uplink carried
    // about its own copy.
    assert_eq!(u(&a, "cloud_forwarded_packets"), 0, "the cloud forwarded packets between sites");
    for (s, r) in sites_a.iter().zip(&reports_a) {
        assert_eq!(u(s, "foreign_peers"), 0, "{}: a device is connected to a device of another site", r.name);
        assert!(r.up.payload_in() >= r.new, "{}: its uplink carried less than one copy", r.name);
    }
    for r in &reports_a[..2] {
        assert!(r.lan_in > 0, "{}: nothing moved over its LAN", r.name);
    }

    // (d) Cutting the uplink mid-release and restoring it: everything completes (checked
    // above), no verified chunk is fetched twice, and the uplink stays within the bound — for a
    // short drop (site 2 of run A), one longer than the lease (B) and one longer than the
    // request timeout (C).
    let site2 = &sites_a[1];
    assert!(site2["cut"].is_object(), "run A did not cut site 2's uplink");
    assert!(site_b["cut"].is_object(), "run B did not cut the uplink");
    assert!(site_c["cut"].is_object(), "run C did not cut the uplink");
    let cuts: [(&str, &Value, &SiteReport); 3] = [("A", *site2, &reports_a[1]), ("B", site_b, &report_b), ("C", site_c, &report_c)];
    for (run, site, r) in cuts {
        println!(
            "cut (run {run}): {} uplink down {} s, {} s after publish: {} chunks from the seed for {} distinct, uplink payload \
             {:.3}x new (bound {:.3}x), converged {:.1} s after publish",
            r.name,
            site["cut"]["down_secs"],
            site["cut"]["down_at_secs"],
            r.seed_chunks,
            r.distinct,
            r.up.payload() as f64 / r.new as f64,
            bound(r) as f64 / r.new as f64,
            r.converge
        );
    }
    for (run, site, r) in cuts {
        assert!(
            r.seed_chunks <= r.distinct,
            "run {run}, {}: after {} s without uplink, {} chunks came from the seed for {} distinct",
            r.name,
            site["cut"]["down_secs"],
            r.seed_chunks,
            r.distinct
        );
        assert!(
            r.up.payload() <= bound(r),
            "run {run}, {}: after {} s without uplink, the uplink carried {:.3}x the new bytes (bound {:.3}x)",
            r.name,
            site["cut"]["down_secs"],
            r.up.payload() as f64 / r.new as f64,
            bound(r) as f64 / r.new as f64
        );
    }

    // (e) The baseline: every device paid for its own copy, and sharing saved most of it.
    assert!(!baseline.sharing);
    assert!(baseline.up.payload_in() >= DEVICES * baseline.new, "baseline: less than one copy per device crossed the uplink");
    assert!(baseline.up.payload() > 5 * shared.up.payload(), "site sharing saved less than 5x over the baseline");

    for k in &known_issues {
        println!("KNOWN NODE ISSUE: {k}");
    }
    assert!(!strict() || known_issues.is_empty(), "LAYERHOP_NETNS_STRICT: {known_issues:#?}");
}
