//! Issue 7: what operators see and install — `/metrics`, `layerhop fleet`, `wait`'s progress
//! lines, the systemd unit.

use crate::harness::{Cluster, Node, binary, cli, cli_ok, wait_for};
use crate::issue4_registry::get;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

fn models(c: &Cluster, name: &str, bytes: usize, seed: u64) -> PathBuf {
    let dir = c.path(name).join("models");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let b = crate::harness::noise(bytes, seed);
    std::fs::write(dir.join("weights.bin"), b).expect("write");
    dir
}

/// One sample: metric name and its labels, sorted.
type Key = (String, BTreeMap<String, String>);

/// Parse OpenMetrics text strictly: every line is HELP, TYPE, UNIT, a sample of the family
/// declared last (with the suffix its type allows) or the final `# EOF`; names and labels
/// follow the grammar; values are numbers. Returns the samples.
fn parse_openmetrics(text: &str) -> BTreeMap<Key, f64> {
    let name_ok = |n: &str| {
        let mut c = n.chars();
        c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':') && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
    };
    assert!(text.ends_with("# EOF\n"), "no final # EOF:\n{text}");
    let mut family: Option<(String, String)> = None;
    let mut out = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if *line == "# EOF" {
            assert_eq!(i, lines.len() - 1, "# EOF before the end");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            assert!(name_ok(name), "bad family name in {line:?}");
            match kind {
                "HELP" => {}
                "TYPE" => {
                    assert!(["counter", "gauge", "info", "histogram", "summary", "unknown", "stateset", "gaugehistogram"].contains(&arg), "{line:?}");
                    family = Some((name.to_owned(), arg.to_owned()));
                }
                "UNIT" => assert!(name.ends_with(&format!("_{arg}")), "unit {arg} not a suffix of {name}"),
                _ => panic!("unknown descriptor line {line:?}"),
            }
            continue;
        }
        let (fam, ty) = family.clone().unwrap_or_else(|| panic!("sample before any TYPE: {line:?}"));
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels in {line:?}"))),
            None => (series, ""),
        };
        let suffix = name.strip_prefix(fam.as_str()).unwrap_or_else(|| panic!("sample {name} is not of family {fam}"));
        let allowed: &[&str] = match ty.as_str() {
            "counter" => &["_total", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        assert!(allowed.contains(&suffix), "{name}: suffix {suffix:?} not allowed for a {ty}");
        let mut map = BTreeMap::new();
        let mut rest = labels;
        while !rest.is_empty() {
            let (k, v) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line:?}"));
            assert!(name_ok(k), "bad label name {k:?}");
            let end = v.find('"').unwrap_or_else(|| panic!("unclosed label value in {line:?}"));
            map.insert(k.to_owned(), v[..end].to_owned());
            rest = v[end + 1..].strip_prefix(',').unwrap_or(&v[end + 1..]);
        }
        assert!(out.insert((name.to_owned(), map), value).is_none(), "duplicate series {line:?}");
    }
    out
}

pub(crate) fn sample(m: &BTreeMap<Key, f64>, name: &str, labels: &[(&str, &str)]) -> u64 {
    let key = (name.to_owned(), labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    *m.get(&key).unwrap_or_else(|| panic!("no sample {name}{labels:?} in {:?}", m.keys().collect::<Vec<_>>())) as u64
}

pub(crate) fn scrape(node: &Node) -> (String, BTreeMap<Key, f64>) {
    let addr = std::fs::read_to_string(node.home.join("metrics-addr")).expect("metrics-addr");
    let r = get(addr.trim(), "/metrics", &[]);
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").is_some_and(|t| t.starts_with("application/openmetrics-text")), "{:?}", r.header("content-type"));
    let text = String::from_utf8(r.body).expect("utf-8");
    let m = parse_openmetrics(&text);
    (text, m)
}

/// A metric name, its labels and the value it must have.
type Expected = (&'static str, Vec<(&'static str, String)>, u64);

/// The figures `/metrics` must equal, from a status.
fn expected(s: &Value) -> Vec<Expected> {
    let t = &s["traffic"];
    let mut v = vec![
        ("layerhop_link_bytes_total", vec![("class", "metered".into()), ("direction", "in".into())], t["metered_in"].as_u64().unwrap_or(u64::MAX)),
        ("layerhop_link_bytes_total", vec![("class", "metered".into()), ("direction", "out".into())], t["metered_out"].as_u64().unwrap_or(u64::MAX)),
        ("layerhop_link_bytes_total", vec![("class", "lan".into()), ("direction", "in".into())], t["lan_in"].as_u64().unwrap_or(u64::MAX)),
        ("layerhop_link_bytes_total", vec![("class", "lan".into()), ("direction", "out".into())], t["lan_out"].as_u64().unwrap_or(u64::MAX)),
        ("layerhop_chunks_fetched_total", vec![("source", "seed".into())], s["chunks_from_seed"].as_u64().unwrap_or(u64::MAX)),
        ("layerhop_chunks_fetched_total", vec![("source", "peer".into())], s["chunks_from_peers"].as_u64().unwrap_or(u64::MAX)),
        ("layerhop_chunk_requests_served_total", vec![], s["served"]["requests"].as_u64().unwrap_or(u64::MAX)),
        ("layerhop_chunks_served_total", vec![], s["served"]["chunks"].as_u64().unwrap_or(u64::MAX)),
        ("layerhop_served_bytes_total", vec![], s["served"]["bytes"].as_u64().unwrap_or(u64::MAX)),
        ("layerhop_banned_peers", vec![], s["banned_peers"].as_u64().unwrap_or(u64::MAX)),
    ];
    for r in s["releases"].as_array().expect("releases") {
        let l = vec![("channel", r["channel"].as_str().expect("channel").to_owned()), ("version", r["version"].to_string())];
        v.push(("layerhop_release_size_bytes", l.clone(), r["bytes_total"].as_u64().expect("total")));
        v.push(("layerhop_release_held_bytes", l.clone(), r["bytes_have"].as_u64().expect("have")));
        v.push(("layerhop_release_complete", l, u64::from(r["complete"] == true)));
    }
    // A device's metered budgets: what was used (and, where a budget is set, what is left).
    for period in ["day", "month"] {
        let p = &s["policy"][period];
        if let Some(used) = p["used"].as_u64() {
            v.push(("layerhop_metered_budget_used_bytes", vec![("period", period.into())], used));
        }
        if let Some(left) = p["left"].as_u64() {
            v.push(("layerhop_metered_budget_left_bytes", vec![("period", period.into())], left));
        }
    }
    v
}

/// Poll until a scrape and the `status --json` right after it agree on every figure (bytes
/// still in flight on the wire settle within a moment); returns the last scrape.
fn metrics_equal_status(node: &Node) -> BTreeMap<Key, f64> {
    wait_for("/metrics to equal status --json", Duration::from_secs(30), || {
        let (_, m) = scrape(node);
        let s = node.status().ok()?;
        let all = expected(&s).iter().all(|(name, labels, want)| {
            let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            sample(&m, name, &l) == *want
        });
        all.then_some(m)
    })
    .unwrap_or_else(|e| panic!("{e}\nlast scrape:\n{}\nstatus: {:?}", scrape(node).0, node.status()))
}

/// A seed and one device of `depot-1` that holds release `detector` (models of `bytes` from
/// `seed`); returns the cluster and the release's version.
fn one_device_holding_detector(bytes: usize, seed: u64) -> (Cluster, u64) {
    let mut c = Cluster::start(0, "x");
    c.add_device("depot-1");
    let dir = models(&c, "r1", bytes, seed);
    let v = c.publish("detector", &[&dir]);
    c.devices[0].wait_complete("detector", v, Duration::from_secs(120));
    (c, v)
}

#[test]
fn issue7_metrics_equal_status_after_a_release() {
    let (c, v) = one_device_holding_detector(3 << 20, 7);
    let d = &c.devices[0];
    let m = metrics_equal_status(d);
    assert!(sample(&m, "layerhop_link_bytes_total", &[("class", "metered"), ("direction", "in")]) > 3 << 20, "the release came over the metered link");
    assert_eq!(sample(&m, "layerhop_release_complete", &[("channel", "detector"), ("version", &v.to_string())]), 1);
    assert_eq!(sample(&m, "layerhop_peers", &[("link", "metered")]), 1, "connected to the seed");
    let s = d.status().expect("status");
    let node_info = ("layerhop_node_info".to_owned(), [("peer_id", s["peer_id"].as_str().expect("id")), ("role", "device"), ("site", "depot-1")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    assert_eq!(m.get(&node_info), Some(&1.0));
    // The seed: its own counters, and what each site cost.
    let sm = metrics_equal_status(&c.seed);
    let to_site = sample(&sm, "layerhop_site_metered_bytes_total", &[("direction", "to_site"), ("site", "depot-1")]);
    assert!(to_site > 3 << 20, "{to_site}");
    assert!(sample(&sm, "layerhop_chunk_requests_served_total", &[]) > 0);
    assert_eq!(sample(&sm, "layerhop_site_devices_connected", &[("site", "depot-1")]), 1);
}

/// Run `layerhop wait` with stderr and stdout piped (not a terminal): plain lines, no bars.
fn spawn_wait(d: &Node, channel: &str, version: u64) -> std::process::Child {
    Command::new(binary())
        .args(["wait", "--home", d.home_arg(), "--channel", channel, "--version", &version.to_string(), "--timeout-secs", "120"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start layerhop wait")
}

#[test]
fn issue7_fleet_shows_sites_devices_releases_and_metered_bytes() {
    let mut c = Cluster::start(0, "x");
    c.add_device("factory-1");
    c.add_device("depot-2");
    let waiter = spawn_wait(&c.devices[0], "detector", 1);
    let dir = models(&c, "r1", 4 << 20, 11);
    // Publish with progress: stdout stays the JSON result, progress goes to stderr as lines.
    let out = cli(&["publish", "--home", c.seed.home_arg(), "--channel", "detector", dir.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let published: Value = serde_json::from_slice(&out.stdout).expect("publish prints JSON");
    assert_eq!(published["version"], 1);
    let perr = String::from_utf8_lossy(&out.stderr);
    assert!(perr.lines().any(|l| l.starts_with("publish detector: v1 published, ")), "{perr}");
    assert!(!perr.contains('\r') && !perr.contains('\u{1b}'), "no bar control characters off a terminal: {perr:?}");

    let w = waiter.wait_with_output().expect("wait for layerhop wait");
    let (wout, werr) = (String::from_utf8_lossy(&w.stdout), String::from_utf8_lossy(&w.stderr));
    assert!(w.status.success(), "wait failed: {werr}");
    assert!(!werr.contains('\r') && !werr.contains('\u{1b}'), "no bar control characters off a terminal: {werr:?}");
    let total = published["bytes"].as_u64().expect("bytes");
    // The summary: the release, its size, what arrived by link class.
    let summary = wout.trim();
    assert!(summary.starts_with(&format!("detector v1 complete: {total} bytes; received ")), "{summary}");
    let received: u64 = summary.split("received ").nth(1).and_then(|s| s.split(' ').next()).and_then(|n| n.parse().ok()).expect("metered bytes in summary");
    assert!(received >= total * 9 / 10, "the release came over the metered link: {summary}");
    assert!(summary.contains(" bytes lan (0.0% lan)"), "a device alone on its site gets nothing over the LAN: {summary}");
    // Progress lines (at least the first, before the release was known or complete) are plain.
    for l in werr.lines() {
        assert!(l.starts_with("wait detector v1: no such release") || l.starts_with("wait detector: v1 have "), "unexpected line {l:?}");
    }
    assert!(!werr.is_empty(), "wait printed no progress line");

    for d in &c.devices {
        d.wait_complete("detector", 1, Duration::from_secs(120));
    }
    // The seed's view: both sites, each with its device holding v1, and what each site cost on
    // the metered link — the same bytes the device counted at its end of that link.
    let ids: Vec<String> = c.devices.iter().map(|d| d.status().expect("status")["peer_id"].as_str().expect("id").to_owned()).collect();
    let fleet = wait_for("the fleet view to settle", Duration::from_secs(30), || {
        let f: Value = serde_json::from_str(&cli_ok(&["fleet", "--home", c.seed.home_arg(), "--json"])).ok()?;
        let settled = c.devices.iter().zip(&ids).all(|(d, id)| {
            let Ok(s) = d.status() else { return false };
            let (m_in, m_out) = (s["traffic"]["metered_in"].as_u64().unwrap_or(0), s["traffic"]["metered_out"].as_u64().unwrap_or(0));
            f["sites"].as_array().into_iter().flatten().any(|site| {
                site["site"] == s["site"]
                    && site["bytes_to_site"].as_u64() == Some(m_in)
                    && site["bytes_from_site"].as_u64() == Some(m_out)
                    && site["metered_bytes"].as_u64() == Some(m_in + m_out)
                    && site["devices"].as_array().is_some_and(|ds| {
                        ds.len() == 1
                            && ds[0]["peer_id"] == id.as_str()
                            && ds[0]["connected"] == true
                            && ds[0]["releases"].as_array().is_some_and(|r| r.iter().any(|r| r["channel"] == "detector" && r["version"] == 1 && r["complete"] == true && r["bytes_total"].as_u64() == Some(total)))
                    })
            })
        });
        settled.then_some(f)
    })
    .unwrap_or_else(|e| panic!("{e}\nfleet: {}", cli_ok(&["fleet", "--home", c.seed.home_arg(), "--json"])));
    let sites: Vec<&str> = fleet["sites"].as_array().expect("sites").iter().map(|s| s["site"].as_str().expect("name")).collect();
    assert_eq!(sites, ["depot-2", "factory-1"]);
    for s in fleet["sites"].as_array().expect("sites") {
        assert!(s["metered_bytes"].as_u64().expect("bytes") > total, "each site paid about one copy: {s}");
    }
    let human = cli_ok(&["fleet", "--home", c.seed.home_arg()]);
    assert!(human.contains("site factory-1") && human.contains("holds detector v1"), "{human}");
    // A device has no fleet view; its status names its seed link and release.
    let refused = cli(&["fleet", "--home", c.devices[0].home_arg()]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("only a seed"));
    let st = cli_ok(&["status", "--home", c.devices[0].home_arg()]);
    assert!(st.contains("seed: connected") && st.contains("detector v1") && st.contains("complete") && st.contains("metered link: "), "{st}");
}

#[test]
fn issue7_wait_times_out_with_a_reason() {
    let c = Cluster::start(1, "depot-1");
    let out = cli(&["wait", "--home", c.devices[0].home_arg(), "--channel", "nothing", "--timeout-secs", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("timed out") && err.contains("not heard of"), "{err}");
}

/// A second `layerhop run` on a home whose node is running (a unit started twice, an operator
/// trying it by hand) is refused with a reason, and the running node keeps its store: the index
/// used to be taken for damaged, moved aside and rebuilt under it.
#[test]
fn issue7_a_second_run_on_a_running_home_is_refused() {
    let (c, _) = one_device_holding_detector(1 << 20, 3);
    let d = &c.devices[0];
    let before = d.status().expect("status")["releases"].clone();
    let out = Command::new(binary()).args(["run", "--home", d.home_arg()]).stdin(Stdio::null()).output().expect("run layerhop");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second node ran on the same home: {err}");
    assert!(err.contains("in use by another process"), "{err}");
    let data = std::fs::read_dir(d.home.join("data")).expect("data").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>();
    assert!(!data.iter().any(|n| n.contains("damaged")), "{data:?}");
    let s = d.status().expect("the first node still answers");
    assert_eq!(s["releases"], before);
    assert_eq!(before[0]["complete"], true, "{before}");
    assert!(!d.log().contains("rebuilding the index"), "{}", d.log());
}

/// `layerhop status --json | head -1` and the like: a reader that closed its end is not an
/// error of the command (it used to panic in `println!`).
#[test]
fn issue7_output_to_a_closed_pipe_is_not_a_crash() {
    let c = Cluster::start(1, "depot-1");
    for args in [vec!["status", "--json"], vec!["status"]] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let mut full = args.clone();
        full.extend(["--home", c.devices[0].home_arg()]);
        let out = std::process::Command::new(binary()).args(&full).stdout(writer).output().expect("run layerhop");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{full:?} into a closed pipe: {:?}\n{err}", out.status);
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn issue7_install_service_dry_run_is_a_valid_unit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("lh-home");
    let h = home.to_str().expect("utf-8");
    let unit = cli_ok(&["install-service", "--home", h, "--user", "layerhop", "--dry-run"]);
    let exe = binary().canonicalize().expect("binary path");
    for line in [
        format!("ExecStart={} run --home {h}", exe.display()),
        format!("ReadWritePaths={h}"),
        "User=layerhop".into(),
        "NoNewPrivileges=yes".into(),
        "ProtectSystem=strict".into(),
        "PrivateTmp=yes".into(),
        "CapabilityBoundingSet=".into(),
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK".into(),
        "Restart=on-failure".into(),
        "KillSignal=SIGTERM".into(),
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line:?} in\n{unit}");
    }
    // A home systemd would read differently is refused, and nothing is written without a home.
    let bad = cli(&["install-service", "--home", "/srv/with space", "--dry-run"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("with space"));
    let units = dir.path().join("units");
    std::fs::create_dir_all(&units).expect("mkdir");
    let uninit = cli(&["install-service", "--home", h, "--unit-dir", units.to_str().expect("utf-8")]);
    assert!(!uninit.status.success() && String::from_utf8_lossy(&uninit.stderr).contains("not an initialized home"));
    cli_ok(&["init", "--home", h, "--seed", "--registry", "off", "--metrics", "off"]);
    cli_ok(&["install-service", "--home", h, "--unit-dir", units.to_str().expect("utf-8")]);
    let written = std::fs::read_to_string(units.join("layerhop.service")).expect("unit written");
    assert!(written.contains(&format!("ExecStart={} run --home {h}", exe.display())));

    let Ok(v) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: systemd-analyze is not installed; the unit was checked line by line only");
        return;
    };
    assert!(v.status.success());
    // verify without the user (it may not exist here): the same unit as root.
    let plain = cli_ok(&["install-service", "--home", h, "--dry-run"]);
    let path = dir.path().join("layerhop.service");
    std::fs::write(&path, plain).expect("write unit");
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().expect("systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify refused the unit: {err}");
    let about_unit: Vec<&str> = err.lines().filter(|l| l.contains("layerhop.service")).collect();
    assert!(about_unit.is_empty(), "systemd-analyze warned about the unit: {about_unit:?}");
}
