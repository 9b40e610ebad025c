//! What a run prints: one JSON document on stdout (for machines and the README) and a table
//! on stderr (for people), plus the process's peak memory.

use crate::run::ScenarioFigures;
use std::fmt::Write;

/// The JSON document of a run.
pub fn document(scenarios: &[ScenarioFigures], wall_seconds: f64) -> serde_json::Value {
    serde_json::json!({
        "scenarios": scenarios,
        "wall_seconds": (wall_seconds * 100.0).round() / 100.0,
        "peak_rss_bytes": peak_rss_bytes(),
    })
}

/// Peak resident memory of this process (VmHWM), in bytes; 0 where /proc is missing.
pub fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn human(b: u64) -> String {
    const K: f64 = 1024.0;
    let b = b as f64;
    if b >= K * K * K {
        format!("{:.2} GiB", b / (K * K * K))
    } else if b >= K * K {
        format!("{:.1} MiB", b / (K * K))
    } else {
        format!("{:.1} KiB", b / K)
    }
}

/// The table: one line per site and release, and one per site over all its releases.
pub fn table(scenarios: &[ScenarioFigures]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<8} {:>4} {:>5} {:>11} {:>11} {:>7} {:>11} {:>7} {:>11} {:>11}",
        "scenario", "site", "rel", "devs", "metered", "new", "ampl", "lan in", "secs", "docker", "no-sharing"
    );
    for s in scenarios {
        let name = format!("{}/{}", s.name, s.variant);
        for site in &s.sites {
            for f in site.releases.iter().chain(std::iter::once(&site.totals)) {
                let rel = f.release.map_or("all".to_string(), |r| format!("v{}", f.version.unwrap_or(r as u64)));
                let _ = writeln!(
                    out,
                    "{:<20} {:<8} {:>4} {:>5} {:>11} {:>11} {:>7.3} {:>11} {:>7.1} {:>11} {:>11}",
                    name,
                    site.site,
                    rel,
                    f.devices,
                    human(f.metered_bytes),
                    human(f.new_bytes),
                    f.amplification,
                    human(f.lan_bytes),
                    f.seconds_to_converge,
                    human(f.docker_bytes),
                    human(f.no_sharing_bytes)
                );
            }
        }
        let _ = writeln!(
            out,
            "{name}: {} nodes, {:.1}s wall, max amplification {:.3}, seed moved {}",
            s.nodes,
            s.wall_seconds,
            s.max_amplification,
            human(s.seed_metered_bytes)
        );
    }
    out
}
