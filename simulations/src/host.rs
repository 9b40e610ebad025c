//! Hosting a site's nodes in a child process (`processes = "per-site"` in a scenario).
//!
//! Why: every node of the main process shares its open-file limit, and on this machine the hard
//! limit is 20,000 and cannot be raised. A 5 × 50 fleet holds ~13,700 sockets once meshed (both
//! ends of every LAN link are in the process), and each node's chunk writer keeps up to 64 temp
//! files open per batch (`store/src/chunks.rs` `write_batch`), so 250 nodes overflow it mid-run.
//! One child per site keeps a site's LAN links inside its own limit; the nodes are still the
//! node's own daemon code, several per process, and the runner reaches them through their control
//! sockets as before. Hosted nodes run until the child's stdin closes; they are not crashed or
//! restarted one by one (scenarios with events run in one process).

use anyhow::{Context, Result, bail};
use layerhop_node::home::Home;
use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The child side: run the nodes of `homes` until stdin closes, stop them cleanly, and print
/// `peak_rss_bytes=N` on stdout.
pub fn serve(homes: &[PathBuf]) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut tasks = Vec::new();
    for h in homes {
        let home = Home::new(h.clone());
        let mut stop = tx.subscribe();
        tasks.push(rt.spawn(async move {
            let r = layerhop_node::daemon::run_until(&home, async move {
                let _ = stop.recv().await;
            })
            .await;
            r.with_context(|| format!("node {}", home.root().display()))
        }));
    }
    // Parent gone or done: stdin reaches EOF.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    let _ = tx.send(());
    for t in tasks {
        match rt.block_on(t) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: {e:#}"),
            Err(e) => eprintln!("warning: a node task failed: {e}"),
        }
    }
    rt.shutdown_background();
    println!("peak_rss_bytes={}", crate::report::peak_rss_bytes());
    Ok(())
}

/// The parent side: one child per site.
#[derive(Default)]
pub struct Hosts {
    children: Vec<(String, Child)>,
    /// Peak RSS of each child that has exited, by site.
    pub peaks: Vec<(String, u64)>,
}

impl Hosts {
    /// Start a child hosting `homes` (the devices of `site`).
    pub fn spawn(&mut self, site: &str, homes: &[PathBuf]) -> Result<()> {
        let exe = std::env::current_exe().context("locating the runner binary")?;
        let child = Command::new(exe)
            .arg("--host-nodes")
            .args(homes)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the host process of {site}"))?;
        self.children.push((site.to_owned(), child));
        Ok(())
    }

    /// Whether every child is still running (a child that exited early is an error).
    pub fn check(&mut self) -> Result<()> {
        for (site, c) in &mut self.children {
            if let Some(status) = c.try_wait()? {
                bail!("the host process of {site} exited early ({status})");
            }
        }
        Ok(())
    }

    /// Close every child's stdin (its nodes stop cleanly), wait for them, and collect their
    /// peak RSS.
    pub fn shutdown(&mut self) {
        for (_, c) in &mut self.children {
            drop(c.stdin.take());
        }
        for (site, mut c) in self.children.drain(..) {
            let mut peak = 0;
            if let Some(out) = c.stdout.take() {
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    if let Some(v) = line.strip_prefix("peak_rss_bytes=") {
                        peak = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            let _ = c.wait();
            self.peaks.push((site, peak));
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
