//! An HTTP endpoint the daemon runs beside the node (the registry mirror, `/metrics`): bound to
//! its configured address, its actual address written to a file in the home (for tools and
//! tests that asked for port 0), stopped with the daemon. Starting one never fails the daemon:
//! a port another program holds is logged and the endpoint left off, since the node's own job
//! (fetching over the metered link) must go on.

use std::net::SocketAddr;
use std::path::PathBuf;

/// A running endpoint.
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    file: PathBuf,
}

impl Running {
    /// Stop serving and remove the address file.
    pub fn stop(self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Serve `app` on `addr` and record the bound address in `file`. `what` names the endpoint in
/// logs, `key` its config key (named in the hint when the address is taken).
pub(crate) async fn start(what: &str, key: &str, addr: SocketAddr, file: PathBuf, app: axum::Router) -> Option<Running> {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%addr, error = %e, "{what} not started: cannot listen (set `{key}` in config.toml to a free address, or \"off\")");
            return None;
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    let tmp = file.with_extension("tmp");
    if let Err(e) = std::fs::write(&tmp, format!("{bound}\n")).and_then(|()| std::fs::rename(&tmp, &file)) {
        tracing::warn!(path = %file.display(), error = %e, "cannot record the {what} address");
    }
    let name = what.to_owned();
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "{name} stopped");
        }
    });
    Some(Running { addr: bound, task, file })
}
