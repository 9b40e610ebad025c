//! `layerhop-simulations`: run scenarios of many in-process layerhop nodes and print what crossed
//! each site's metered link beside the docker and no-sharing baselines. CLI glue over the
//! library; see `lib.rs` for the pieces and `scenario.rs` for the scenario format.

use anyhow::{Context, Result, bail};
use clap::Parser;
use layerhop_simulations::{report, run, scenario};
use std::path::PathBuf;
use std::time::Instant;

/// Run layerhop scenarios: a seed and sites of devices as real nodes (the node's own code,
/// libp2p over 127.0.0.1) in this process. For every site it measures the metered bytes, the
/// bytes really new to the site, their ratio (amplification; 1.0 = one copy per site), LAN
/// bytes and time to converge, beside two baselines on the same releases: every device
/// pulling gzip layers by digest (docker) and every device fetching its missing chunks from
/// the seed (no site sharing). Prints one JSON object on stdout and a table on stderr.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// Scenario to run (a file name in --scenarios-dir without .toml); repeatable. Default:
    /// every scenario whose `run_by_default` is true (all but fleet-200).
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
    /// Directory of scenario files.
    #[arg(long, value_name = "DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios"))]
    scenarios_dir: PathBuf,
    /// Keep the nodes' homes and the generated releases (their path is printed).
    #[arg(long)]
    keep: bool,
    /// Where to create the work directory (default: the system temp dir; e.g. /dev/shm).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Also write the JSON object to FILE.
    #[arg(long, value_name = "FILE")]
    json_out: Option<PathBuf>,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Internal: host these node homes until stdin closes (a child of a per-site run).
    #[arg(long, num_args = 1.., value_name = "HOME", hide = true)]
    host_nodes: Vec<PathBuf>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // 200 nodes logging at info would drown the table; RUST_LOG still overrides.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    raise_open_files_limit();
    if !cli.host_nodes.is_empty() {
        return layerhop_simulations::host::serve(&cli.host_nodes);
    }
    let available = scenario::list(&cli.scenarios_dir)?;
    let mut chosen = Vec::new();
    for (name, path) in &available {
        let sc = scenario::Scenario::load(path)?;
        if cli.list {
            println!("{name:<14} {}{}", sc.description, if sc.run_by_default { "" } else { " (only when named)" });
        }
        let named = cli.scenarios.contains(name);
        if named || (cli.scenarios.is_empty() && sc.run_by_default) {
            chosen.push(sc);
        }
    }
    if cli.list {
        return Ok(());
    }
    for n in &cli.scenarios {
        if !available.iter().any(|(a, _)| a == n) {
            let names: Vec<&str> = available.iter().map(|(a, _)| a.as_str()).collect();
            bail!("no scenario {n:?} in {} (there are: {})", cli.scenarios_dir.display(), names.join(", "));
        }
    }
    let started = Instant::now();
    let opts = run::Options { keep: cli.keep, work_dir: cli.work_dir.clone() };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let mut results = Vec::new();
    let mut failed = None;
    for sc in &chosen {
        eprintln!("== {}: {}", sc.name, sc.description);
        if let Err(e) = rt.block_on(run::run_scenario(sc, &opts, &mut results)) {
            failed = Some(e);
            break;
        }
    }
    rt.shutdown_background();
    let mut doc = report::document(&results, started.elapsed().as_secs_f64());
    if let Some(e) = &failed {
        doc["error"] = serde_json::Value::String(format!("{e:#}"));
    }
    eprintln!("\n{}", report::table(&results));
    eprintln!("wall {:.1}s, peak RSS {:.0} MiB", started.elapsed().as_secs_f64(), report::peak_rss_bytes() as f64 / (1 << 20) as f64);
    let text = serde_json::to_string_pretty(&doc)?;
    if let Some(p) = &cli.json_out {
        std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
    }
    println!("{text}");
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// 250 in-process nodes hold thousands of sockets (both ends of every LAN link are in this
/// process) and store files: raise the soft open-file limit to the hard one, as servers do.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
