//! `layerhop mirror-config docker|containerd [--write]`: the engine configuration that points a
//! device's container engine at its node.
//!
//! - docker and moby (IoT Edge's engine): `daemon.json` with the node in `registry-mirrors`
//!   (docker then asks the node first for every Docker Hub image and falls back to the hub on a
//!   404) and in `insecure-registries` (the node speaks plain HTTP on loopback). Other keys of
//!   an existing `daemon.json` are kept, and so are other mirrors.
//! - containerd: `hosts.toml` files in its hosts directory (`config_path`), one for `docker.io`
//!   with the node as a pull/resolve host before the hub, one for the node's own address so
//!   `ctr images pull ADDR/name:tag` needs no `--plain-http`.
//!
//! Without `--write` the files are printed (what `--write` would write); with it they are
//! replaced atomically (temp file, rename).

use crate::config::Config;
use crate::home::Home;
use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// docker's default `daemon.json`.
pub const DOCKER_DAEMON_JSON: &str = "/etc/docker/daemon.json";
/// containerd's conventional hosts directory (`config_path`).
pub const CONTAINERD_HOSTS_DIR: &str = "/etc/containerd/certs.d";

/// Which engine to configure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// docker or moby (IoT Edge): daemon.json.
    Docker,
    /// containerd: hosts.toml.
    Containerd,
}

/// The address an engine on this machine should use: the running registry's, else the
/// configured one; an unspecified IP (listening on all interfaces) becomes loopback.
pub fn engine_addr(cfg: &Config, home: &Home) -> Result<SocketAddr> {
    let Some(configured) = cfg.registry else { bail!("the registry is off in {} (registry = \"off\")", home.config().display()) };
    let running = std::fs::read_to_string(super::addr_file(home)).ok().and_then(|s| s.trim().parse::<SocketAddr>().ok());
    let mut addr = running.unwrap_or(configured);
    if addr.port() == 0 {
        bail!("the registry listens on an ephemeral port (registry = \"{configured}\") and the node is not running: start it first");
    }
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    Ok(addr)
}

/// `existing` (a daemon.json object, or nothing) with the node added as a mirror and an
/// insecure registry.
pub fn docker_json(existing: Option<serde_json::Value>, addr: SocketAddr) -> Result<serde_json::Value> {
    let mut v = existing.unwrap_or_else(|| serde_json::json!({}));
    let obj = v.as_object_mut().context("daemon.json is not a JSON object")?;
    for (key, value) in [("registry-mirrors", format!("http://{addr}")), ("insecure-registries", addr.to_string())] {
        let list = obj.entry(key).or_insert_with(|| serde_json::json!([]));
        let arr = list.as_array_mut().with_context(|| format!("daemon.json key {key:?} is not a list"))?;
        if !arr.iter().any(|x| x.as_str() == Some(value.as_str())) {
            arr.push(serde_json::Value::String(value));
        }
    }
    Ok(v)
}

/// containerd's hosts files, relative to its hosts directory.
pub fn containerd_files(addr: SocketAddr) -> Vec<(PathBuf, String)> {
    let host = format!(
        "[host.\"http://{addr}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"
    );
    let hub = format!(
        "# Written by `layerhop mirror-config containerd`: pull Docker Hub images through the local\n\
         # layerhop node first; the hub is the fallback.\nserver = \"https://registry-1.docker.io\"\n\n{host}"
    );
    let own = format!("# Written by `layerhop mirror-config containerd`: the local layerhop node, plain HTTP.\nserver = \"http://{addr}\"\n\n{host}");
    vec![(PathBuf::from("docker.io/hosts.toml"), hub), (PathBuf::from(addr.to_string()).join("hosts.toml"), own)]
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("creating a temp file in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// Print, or with `write` write, the configuration of `engine` for the node of `home`.
/// `path` overrides docker's daemon.json or containerd's hosts directory.
pub fn run(home: &Home, engine: Engine, write: bool, path: Option<&Path>) -> Result<String> {
    let cfg = Config::load(&home.config())?;
    let addr = engine_addr(&cfg, home)?;
    match engine {
        Engine::Docker => {
            let path = path.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(DOCKER_DAEMON_JSON));
            let existing = match std::fs::read(&path) {
                Ok(b) if !b.iter().all(u8::is_ascii_whitespace) => {
                    Some(serde_json::from_slice(&b).with_context(|| format!("{} is not valid JSON", path.display()))?)
                }
                Ok(_) => None,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            let mut text = serde_json::to_string_pretty(&docker_json(existing, addr)?)?;
            text.push('\n');
            if !write {
                return Ok(text);
            }
            write_atomic(&path, text.as_bytes())?;
            Ok(format!("wrote {} (mirror http://{addr}); restart the engine: systemctl restart docker", path.display()))
        }
        Engine::Containerd => {
            let dir = path.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(CONTAINERD_HOSTS_DIR));
            let files = containerd_files(addr);
            if !write {
                return Ok(files.iter().map(|(rel, text)| format!("# --- {}\n{text}", dir.join(rel).display())).collect::<Vec<_>>().join("\n"));
            }
            let mut out = Vec::new();
            for (rel, text) in &files {
                let p = dir.join(rel);
                write_atomic(&p, text.as_bytes())?;
                out.push(format!("wrote {}", p.display()));
            }
            out.push(format!(
                "containerd reads these when its config sets config_path = \"{}\" (CRI: [plugins.\"io.containerd.grpc.v1.cri\".registry]); ctr: --hosts-dir {}",
                dir.display(),
                dir.display()
            ));
            Ok(out.join("\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_json_merges_without_duplicates() {
        let addr: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let existing = serde_json::json!({"log-level": "warn", "registry-mirrors": ["https://mirror.example"]});
        let v = docker_json(Some(existing), addr).expect("merge");
        let again = docker_json(Some(v.clone()), addr).expect("merge again");
        assert_eq!(v, again);
        assert_eq!(v["log-level"], "warn");
        assert_eq!(v["registry-mirrors"], serde_json::json!(["https://mirror.example", "http://127.0.0.1:5000"]));
        assert_eq!(v["insecure-registries"], serde_json::json!(["127.0.0.1:5000"]));
        assert!(docker_json(Some(serde_json::json!([])), addr).is_err());
    }

    #[test]
    fn containerd_hosts_files_parse_as_toml() {
        for (rel, text) in containerd_files("127.0.0.1:5000".parse().expect("addr")) {
            let v: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", rel.display()));
            assert_eq!(v["host"]["http://127.0.0.1:5000"]["capabilities"], toml::Value::Array(vec!["pull".into(), "resolve".into()]));
        }
    }
}
