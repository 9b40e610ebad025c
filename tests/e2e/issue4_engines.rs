//! Issue 4: real container engines pull through a device's registry mirror — docker (Debian's
//! `docker.io`) with `--registry-mirror`, and containerd with the `hosts.toml` that
//! `layerhop mirror-config containerd --write` writes.
//!
//! Each engine runs as a private daemon: its own root, state and socket under the test's temp
//! dir, no bridge, no iptables, the `vfs`/`native` snapshotter (no overlay mounts), so it neither
//! needs nor touches the machine's engine. The daemons are stopped (SIGTERM, then SIGKILL after a
//! deadline) when the test ends, pass or fail.

use crate::harness::{Cluster, cli_ok, wait_for};
use crate::issue4_registry::{Original, get, have_tool, original, registry_addr};
use layerhop_node::sample;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHANNEL: &str = "anomaly-detector";

/// A daemon process, stopped on drop.
struct Daemon {
    child: Child,
    log: std::path::PathBuf,
}

impl Daemon {
    fn spawn(cmd: &mut Command, log: &Path) -> Daemon {
        let out = std::fs::File::create(log).expect("daemon log");
        let child = cmd.stdin(Stdio::null()).stdout(out.try_clone().expect("log")).stderr(out).spawn().expect("starting daemon");
        Daemon { child, log: log.to_owned() }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a client command; panics with its output and the daemon's log on failure.
fn run_ok(cmd: &mut Command, daemon: &Daemon) -> String {
    let out = cmd.output().expect("running client");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}\n--- daemon log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A seed and one device holding `spec`'s image as v1, with its registry address.
fn device_with_image(site: &str, seed: u64) -> (Cluster, String, Original) {
    let mut c = Cluster::start(0, site);
    c.add_device_with(site, &["--registry", "127.0.0.1:0"]);
    let image = c.path("image.tar");
    let info = sample::write_docker_save(&sample::Spec::small(seed), 0, &image).expect("image");
    c.publish(CHANNEL, &[&image]);
    c.devices[0].wait_complete(CHANNEL, 1, Duration::from_secs(120));
    let addr = registry_addr(&c.devices[0]);
    (c, addr, original(&image, info))
}

#[test]
fn docker_engine_pulls_through_the_mirror() {
    if !have_tool("dockerd", "docker_engine_pulls_through_the_mirror") {
        return;
    }
    let (c, addr, orig) = device_with_image("eng-1", 51);
    let d = c.path("docker");
    for sub in ["data", "exec"] {
        std::fs::create_dir_all(d.join(sub)).expect("mkdir");
    }
    std::fs::write(d.join("daemon.json"), "{}").expect("daemon.json");
    let host = format!("unix://{}", d.join("docker.sock").display());
    let dockerd = Daemon::spawn(
        Command::new("dockerd")
            .arg(format!("--registry-mirror=http://{addr}"))
            .arg(format!("--insecure-registry={addr}"))
            .args(["--storage-driver=vfs", "--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-masq=false", "--ip-forward=false"])
            .arg(format!("--config-file={}", d.join("daemon.json").display()))
            .arg(format!("--data-root={}", d.join("data").display()))
            .arg(format!("--exec-root={}", d.join("exec").display()))
            .arg(format!("--pidfile={}", d.join("docker.pid").display()))
            .args(["-H", &host]),
        &d.join("dockerd.log"),
    );
    let docker = || {
        let mut cmd = Command::new("docker");
        cmd.args(["-H", &host]).env("DOCKER_CONFIG", d.join("client"));
        cmd
    };
    wait_for("dockerd to answer", Duration::from_secs(90), || docker().arg("version").output().ok().filter(|o| o.status.success()))
        .unwrap_or_else(|e| panic!("{e}\n--- dockerd log:\n{}", dockerd.log()));
    // An unqualified name is a Docker Hub image: docker asks its mirror for library/<name>.
    run_ok(docker().args(["pull", &format!("{CHANNEL}:v1")]), &dockerd);
    let layers = run_ok(docker().args(["image", "inspect", "--format", "{{json .RootFS.Layers}}", &format!("{CHANNEL}:v1")]), &dockerd);
    let layers: Vec<String> = serde_json::from_str(layers.trim()).expect("layers JSON");
    assert_eq!(layers, orig.info.diff_ids, "docker's diff_ids");
    let id = run_ok(docker().args(["image", "inspect", "--format", "{{.Id}}", &format!("{CHANNEL}:v1")]), &dockerd);
    assert_eq!(id.trim(), orig.info.config_digest, "docker's image id (the config's digest)");
    assert!(c.devices[0].log().contains("registry mirror listening"));
}

#[test]
fn containerd_pulls_through_the_mirror_with_hosts_toml() {
    if !have_tool("containerd", "containerd_pulls_through_the_mirror_with_hosts_toml") || !have_tool("ctr", "containerd_pulls_through_the_mirror_with_hosts_toml") {
        return;
    }
    let (c, addr, orig) = device_with_image("eng-2", 52);
    let d = c.path("containerd");
    std::fs::create_dir_all(&d).expect("mkdir");
    let sock = d.join("containerd.sock");
    let config = format!(
        "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{}\"\n",
        d.join("root").display(),
        d.join("state").display(),
        sock.display()
    );
    std::fs::write(d.join("config.toml"), config).expect("config");
    let containerd = Daemon::spawn(Command::new("containerd").arg("--config").arg(d.join("config.toml")), &d.join("containerd.log"));
    let certs = d.join("certs.d");
    cli_ok(&["mirror-config", "--home", c.devices[0].home_arg(), "containerd", "--write", "--path", certs.to_str().expect("utf-8")]);
    let ctr = || {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&sock).args(["--namespace", "layerhop-test"]);
        cmd
    };
    wait_for("containerd to answer", Duration::from_secs(60), || ctr().arg("version").output().ok().filter(|o| o.status.success()))
        .unwrap_or_else(|e| panic!("{e}\n--- containerd log:\n{}", containerd.log()));
    let reference = format!("docker.io/library/{CHANNEL}:v1");
    run_ok(ctr().args(["images", "pull", "--snapshotter", "native", "--hosts-dir"]).arg(&certs).arg(&reference), &containerd);
    // The image's digest is the mirror's manifest; its config is the original, byte for byte.
    let listed = run_ok(ctr().args(["images", "ls"]), &containerd);
    let line = listed.lines().find(|l| l.starts_with(&reference)).unwrap_or_else(|| panic!("{reference} not listed:\n{listed}"));
    let digest = line.split_whitespace().find(|w| w.starts_with("sha256:")).expect("digest column").to_owned();
    let manifest = get(&addr, &format!("/v2/{CHANNEL}/manifests/{digest}"), &[]);
    assert_eq!(manifest.status, 200, "containerd's image digest is not one the mirror serves");
    let stored = run_ok(ctr().args(["content", "get", &digest]), &containerd);
    let m: serde_json::Value = serde_json::from_str(&stored).expect("manifest JSON");
    let layers: Vec<&str> = m["layers"].as_array().expect("layers").iter().map(|l| l["digest"].as_str().expect("digest")).collect();
    assert_eq!(layers, orig.info.diff_ids);
    let config = Command::new("ctr").arg("--address").arg(&sock).args(["--namespace", "layerhop-test", "content", "get", &orig.info.config_digest]).output().expect("ctr");
    assert!(config.status.success() && config.stdout == orig.config, "containerd's config differs from the original");
}

/// Resident set size of a process (kB): `VmRSS`, or `VmHWM` (its peak since the last reset).
fn proc_kb(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The pid of the `layerhop run` process of `home`.
fn daemon_pid(home: &Path) -> u32 {
    let needle = format!("run\0--home\0{}\0", home.display());
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if std::fs::read(e.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle)) {
            return pid;
        }
    }
    panic!("no layerhop process for {}", home.display());
}

/// GET a blob, hashing it as it arrives (the test never holds it whole either).
fn stream_blob(addr: &str, path: &str) -> (u16, String, u64) {
    use sha2::Digest;
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("request");
    let mut r = BufReader::with_capacity(1 << 20, s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status");
    loop {
        line.clear();
        r.read_line(&mut line).expect("header");
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let (mut h, mut n, mut buf) = (sha2::Sha256::new(), 0u64, vec![0u8; 1 << 20]);
    loop {
        let k = r.read(&mut buf).expect("body");
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    (status, format!("sha256:{}", hex::encode(h.finalize())), n)
}

#[test]
fn pulling_a_200_mib_image_keeps_the_node_rss_growth_under_64_mib() {
    let mut c = Cluster::start(0, "rss-1");
    c.add_device_with("rss-1", &["--registry", "127.0.0.1:0"]);
    let spec = sample::Spec { deps_files: 2000, deps_bytes: 200 << 20, ..sample::Spec::default() };
    let image = c.path("image.tar");
    let info = sample::write_docker_save(&spec, 0, &image).expect("image");
    c.publish(CHANNEL, &[&image]);
    c.devices[0].wait_complete(CHANNEL, 1, Duration::from_secs(600));
    let addr = registry_addr(&c.devices[0]);
    let pid = daemon_pid(&c.devices[0].home);
    assert_eq!(get(&addr, &format!("/v2/{CHANNEL}/manifests/v1"), &[]).status, 200);
    let before = proc_kb(pid, "VmRSS:");
    // Reset the kernel's peak-RSS mark so VmHWM is the peak of the pull alone (root only; the
    // sampler below covers machines where it is refused).
    let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(proc_kb(pid, "VmRSS:"));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    let started = Instant::now();
    let pulls: Vec<_> = info
        .diff_ids
        .iter()
        .map(|d| {
            let (addr, path) = (addr.clone(), format!("/v2/{CHANNEL}/blobs/{d}"));
            std::thread::spawn(move || stream_blob(&addr, &path))
        })
        .collect();
    let mut bytes = 0;
    for (p, (diff_id, size)) in pulls.into_iter().zip(info.diff_ids.iter().zip(&info.layer_sizes)) {
        let (status, digest, n) = p.join().expect("pull thread");
        assert_eq!((status, &digest, n), (200, diff_id, *size));
        bytes += n;
    }
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sampled = sampler.join().expect("sampler");
    let peak = if reset { proc_kb(pid, "VmHWM:").max(sampled) } else { sampled };
    let growth_mib = peak.saturating_sub(before) as f64 / 1024.0;
    println!(
        "registry pull of {:.1} MiB in {secs:.2} s ({:.0} MiB/s): node RSS {:.1} MiB before, peak {:.1} MiB, growth {growth_mib:.1} MiB",
        bytes as f64 / 1048576.0,
        bytes as f64 / 1048576.0 / secs,
        before as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    assert!(bytes >= 200 << 20);
    assert!(growth_mib < 64.0, "node RSS grew {growth_mib:.1} MiB during the pull");
}
