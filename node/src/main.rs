//! The `layerhop` binary: parse the command line, set up logging, dispatch.

use clap::Parser;
use layerhop_node::cli::{Cli, Cmd, PriorityArg};
use layerhop_node::home::Home;
use layerhop_node::{commands, daemon, demo, progress};

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Write a command's output. A reader that went away (`layerhop status --json | head`) is not
/// the command's failure: stop quietly, as Unix tools do, instead of panicking in `println!`.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => Ok(r?),
    }
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    emit(&format!("{}\n", serde_json::to_string_pretty(v)?))
}

/// Keep glibc's malloc from handing buffers of a moving release back to the kernel.
///
/// A node moving chunks allocates and frees buffers of 64 KiB to 4 MiB many times a second
/// (answers as they arrive, the chunks decoded from them). By default glibc serves the large
/// ones with fresh `mmap`s and trims freed memory at the top of its heaps back to the kernel,
/// so the next buffer is new pages again: a page fault and a zeroed page for every 4 KiB
/// touched. Measured with `bench_lan`, that was ~12% of the receiving node's network threads.
/// Fixed thresholds (which also turn off glibc's self-adjusting ones) keep such buffers in
/// the heap for reuse; a node's resident memory then holds up to these bounds of free memory
/// per malloc arena beside what it uses.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets malloc parameters; called before any thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
    }
}

fn main() -> anyhow::Result<()> {
    tune_allocator();
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    match cli.command {
        Cmd::Init { home, seed, join, listen, no_mdns, registry, metrics } => {
            let o = commands::InitOptions { seed, join: join.as_deref(), listen: &listen, mdns: !no_mdns, registry: registry.as_deref(), metrics: metrics.as_deref() };
            emit(&format!("{}\n", commands::init_with(&Home::new(home.home), &o)?))?
        }
        Cmd::Invite { home, site, addr } => emit(&format!("{}\n", commands::invite(&Home::new(home.home), &site, &addr)?))?,
        Cmd::Revoke { home, peer, token_id } => print_json(&commands::revoke(&Home::new(home.home), &peer, &token_id)?)?,
        Cmd::RotateKey { home } => print_json(&commands::rotate_key(&Home::new(home.home))?)?,
        Cmd::Run { home } => tokio::runtime::Runtime::new()?.block_on(daemon::run(&Home::new(home.home)))?,
        Cmd::Publish { home, channel, version, ttl_secs, priority, ignore_budget, sources, upstream } => {
            let home = Home::new(home.home);
            if ignore_budget && priority != PriorityArg::Urgent {
                anyhow::bail!("--ignore-budget is only for an urgent release: add --priority urgent");
            }
            let priority = layerhop_protocol::release::Priority { urgent: priority == PriorityArg::Urgent, ignore_budget };
            let o = commands::PublishOptions { version, ttl_secs, priority };
            let out = match commands::Upstream::from_args(upstream)? {
                Some(up) => commands::publish_from(&home, &channel, &sources, Some(&up), o)?,
                None => progress::publish(&home, &channel, &sources, o)?,
            };
            print_json(&out)?
        }
        Cmd::Status { home, json } => {
            let s = commands::status(&Home::new(home.home))?;
            if json {
                print_json(&s)?;
            } else {
                emit(&commands::render_status(&s))?;
            }
        }
        Cmd::Reload { home } => emit(&format!("{}\n", commands::reload(&Home::new(home.home))?))?,
        Cmd::Fleet { home, json } => {
            let f = commands::fleet(&Home::new(home.home))?;
            if json {
                print_json(&f)?;
            } else {
                emit(&layerhop_node::fleet::render(&f))?;
            }
        }
        Cmd::Wait { home, channel, version, timeout_secs } => {
            let w = progress::WaitFor { channel, version, timeout: std::time::Duration::from_secs(timeout_secs) };
            emit(&format!("{}\n", progress::wait(&Home::new(home.home), &w)?))?
        }
        Cmd::InstallService { home, user, dry_run, unit_dir } => {
            let exe = std::env::current_exe()?;
            let o = layerhop_node::install::Options { home: std::path::absolute(&home.home)?, user, exe };
            emit(&format!("{}\n", layerhop_node::install::run(&o, dry_run, &unit_dir)?))?
        }
        Cmd::Export { home, channel, out } => print_json(&commands::export(&Home::new(home.home), &channel, &out)?)?,
        Cmd::Offer { home, release } => print_json(&commands::offer(&Home::new(home.home), &release)?)?,
        Cmd::MirrorConfig { home, engine, write, path } => {
            emit(&format!("{}\n", layerhop_node::registry::mirror_config::run(&Home::new(home.home), engine, write, path.as_deref())?))?
        }
        Cmd::Demo { devices, files, deps_mib, keep } => demo::run(&demo::Options { devices, files, deps_mib, keep })?,
    }
    Ok(())
}
