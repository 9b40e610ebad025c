//! LAN transfer benchmark: two real nodes on 127.0.0.1 move a release over the LAN path, timed
//! against a plain TCP copy of the same bytes between two processes, in the same run.
//!
//! Set-up (not timed): a seed publishes a release of `--size-mib` MiB of incompressible data
//! (model weights do not compress) and device A fetches it. Then device B joins the same site:
//! every chunk is held by A, so B takes all of it over the LAN. Timed: from B's start to B
//! holding the whole release. Also reported: B's peak RSS (VmHWM).
//!
//! The baseline is the same job done the plainest way: this binary in `sink` mode on one side
//! of a TCP socket, this process writing the release file into it, and the sink writing what it
//! receives to a file in the same directory as the nodes' stores and calling `fsync` once at the
//! end (an `scp` followed by `sync`). The node's job includes storing the bytes durably — a
//! release is reported complete only once every chunk and its name are on disk — so a copy into
//! `/dev/null` would compare a network transfer with a network transfer plus a disk write. The
//! sink is not made slow on purpose: 1 MiB writes through the page cache and one `fsync`, the
//! cheapest way to have the bytes on disk. The copy into `/dev/null` is still run and printed
//! as a second reference, to show what the disk costs on the machine at hand.
//!
//! `cargo run --release -p layerhop-simulations --bin bench_lan -- --size-mib 1024`

use anyhow::{Context, Result, bail};
use clap::Parser;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Time a LAN transfer between two layerhop nodes against a plain TCP copy.
#[derive(Parser)]
struct Args {
    /// Release size in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Directory for the temporary homes (default: the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The layerhop binary (default: target/release/layerhop beside this benchmark).
    #[arg(long)]
    layerhop: Option<PathBuf>,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
    /// Keep the nodes' homes (and their logs, `RUST_LOG` sets the level) and print where.
    #[arg(long)]
    keep: bool,
    /// Internal: act as the TCP sink on this port and print the bytes received.
    #[arg(long, hide = true)]
    sink: Option<u16>,
    /// Internal: the sink writes what it receives to this file and fsyncs it.
    #[arg(long, hide = true)]
    sink_file: Option<PathBuf>,
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(bin: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin).args(args).output().with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!("layerhop {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn start(bin: &Path, home: &Path) -> Result<Proc> {
    let log = std::fs::File::create(home.join("node.log"))?;
    let child = Command::new(bin).args(["run", "--home"]).arg(home).env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())).stdout(Stdio::null()).stderr(log).spawn()?;
    let p = Proc(child);
    wait("control socket", Duration::from_secs(30), || std::os::unix::net::UnixStream::connect(home.join("control.sock")).is_ok().then_some(()))?;
    Ok(p)
}

fn wait<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The node's status over its control socket (not a `layerhop status` process every poll: on
/// two cores, starting one every 20 ms took CPU from the nodes being timed).
fn status(rt: &tokio::runtime::Runtime, home: &Path) -> Option<serde_json::Value> {
    let home = layerhop_node::home::Home::new(home);
    rt.block_on(layerhop_node::control::call(&home, &layerhop_node::control::Request::Status)).ok()
}

fn complete(rt: &tokio::runtime::Runtime, home: &Path) -> Option<serde_json::Value> {
    let s = status(rt, home)?;
    let done = s["releases"].as_array()?.iter().any(|r| r["complete"] == true);
    done.then_some(s)
}

fn write_noise(path: &Path, mib: u64) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for c in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf)?;
    }
    f.flush()?;
    Ok(())
}

/// Copy `file` over TCP to a sink process; the sink stores it durably in `store_to`, or drops it.
fn tcp_copy(me: &Path, file: &Path, store_to: Option<&Path>) -> Result<Duration> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut cmd = Command::new(me);
    cmd.args(["--sink", &port.to_string()]);
    if let Some(to) = store_to {
        cmd.arg("--sink-file").arg(to);
    }
    let mut sink = Proc(cmd.stdout(Stdio::piped()).spawn()?);
    let mut conn = wait("the sink", Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).ok())?;
    let started = Instant::now();
    let mut f = std::fs::File::open(file)?;
    std::io::copy(&mut f, &mut conn)?;
    drop(conn);
    let mut out = String::new();
    sink.0.stdout.take().context("sink stdout")?.read_to_string(&mut out)?;
    let elapsed = started.elapsed();
    let got: u64 = out.trim().parse().context("sink output")?;
    if got != std::fs::metadata(file)?.len() {
        bail!("sink received {got} bytes");
    }
    if let Some(to) = store_to {
        std::fs::remove_file(to)?;
    }
    Ok(elapsed)
}

fn sink(port: u16, to: Option<&Path>) -> Result<()> {
    let l = std::net::TcpListener::bind(("127.0.0.1", port))?;
    let (mut s, _) = l.accept()?;
    let n = match to {
        Some(path) => {
            let mut f = std::fs::File::create(path)?;
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                let got = s.read(&mut buf)?;
                if got == 0 {
                    break;
                }
                f.write_all(&buf[..got])?;
                n += got as u64;
            }
            f.sync_all()?;
            n
        }
        None => std::io::copy(&mut s, &mut std::io::sink())?,
    };
    println!("{n}");
    Ok(())
}

/// Write back every dirty page before a timed phase: the set-up leaves gigabytes of them (the
/// release, the seed's store, A's store, the copy), and the kernel throttles a writer while it
/// flushes someone else's, so without this a phase pays for the one before at random.
fn settle() {
    // SAFETY: sync takes no arguments and only schedules and waits for writeback.
    unsafe { libc::sync() };
}

fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map_or(0, |kib| kib * 1024)
}

/// CPU seconds (user + system) the process has used so far, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which may hold spaces) start at its closing parenthesis;
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after it.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return 0.0 };
    let ticks: u64 = rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<u64>().ok()).sum();
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(port) = args.sink {
        return sink(port, args.sink_file.as_deref());
    }
    let me = std::env::current_exe()?;
    let bin = args.layerhop.clone().unwrap_or_else(|| me.parent().map(|d| d.join("layerhop")).unwrap_or_default());
    if !bin.exists() {
        bail!("{} not found: build it with `cargo build --release -p layerhop-node` or pass --layerhop", bin.display());
    }
    let tmp = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let root = tmp.path();
    let file_dir = root.join("release/models");
    std::fs::create_dir_all(&file_dir)?;
    let file = file_dir.join("weights.bin");
    write_noise(&file, args.size_mib)?;
    let bytes = args.size_mib << 20;
    let h = |n: &str| root.join(n).to_string_lossy().into_owned();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let quiet = ["--registry", "off", "--metrics", "off"];
    run(&bin, &[&["init", "--home", &h("seed"), "--seed", "--listen", "/ip4/127.0.0.1/tcp/0"][..], &quiet].concat())?;
    let _seed = start(&bin, &root.join("seed"))?;
    wait("seed address", Duration::from_secs(30), || std::fs::read_to_string(root.join("seed/listen-addrs")).ok().filter(|s| !s.is_empty()))?;
    for d in ["a", "b"] {
        let token = run(&bin, &["invite", "--home", &h("seed"), "--site", "bench"])?;
        run(&bin, &[&["init", "--home", &h(d), "--join", token.trim(), "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"][..], &quiet].concat())?;
    }
    let a = start(&bin, &root.join("a"))?;
    run(&bin, &["publish", "--home", &h("seed"), "--channel", "bench", &file_dir.to_string_lossy()])?;
    eprintln!("device A fetching {} MiB from the seed (set-up, not timed)", args.size_mib);
    wait("device A", Duration::from_secs(1800), || complete(&rt, &root.join("a")))?;
    settle();
    let tcp_null = tcp_copy(&me, &file, None)?;
    settle();
    let tcp = tcp_copy(&me, &file, Some(&root.join("tcp-copy.bin")))?;
    settle();
    eprintln!("device B fetching over the LAN from A (timed)");
    let sender_cpu_before = cpu_seconds(a.0.id());
    let started = Instant::now();
    let b = start(&bin, &root.join("b"))?;
    let s = wait("device B", Duration::from_secs(1800), || complete(&rt, &root.join("b")))?;
    let lan = started.elapsed();
    let (receiver_cpu, sender_cpu) = (cpu_seconds(b.0.id()), cpu_seconds(a.0.id()) - sender_cpu_before);
    let rss = peak_rss(b.0.id());
    let lan_in = s["traffic"]["lan_in"].as_u64().unwrap_or(0);
    let metered_in = s["traffic"]["metered_in"].as_u64().unwrap_or(0);
    let lane_answers = s["lane_answers"].as_u64().unwrap_or(0);
    let from_peers = s["chunks_from_peers"].as_u64().unwrap_or(0);
    let mib_s = |d: Duration| bytes as f64 / (1 << 20) as f64 / d.as_secs_f64();
    let ratio = tcp.as_secs_f64() / lan.as_secs_f64();
    let ratio_null = tcp_null.as_secs_f64() / lan.as_secs_f64();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"bytes": bytes, "tcp_copy_seconds": tcp.as_secs_f64(), "tcp_copy_to_null_seconds": tcp_null.as_secs_f64(),
                "lan_seconds": lan.as_secs_f64(), "ratio": ratio, "ratio_to_null_copy": ratio_null,
                "receiver_peak_rss_bytes": rss, "receiver_lan_in": lan_in, "receiver_metered_in": metered_in,
                "receiver_cpu_seconds": receiver_cpu, "sender_cpu_seconds": sender_cpu,
                "receiver_chunks_from_peers": from_peers, "receiver_lane_answers": lane_answers})
        );
    } else {
        println!("{:<28} {:>9} {:>10}", "", "seconds", "MiB/s");
        println!("{:<28} {:>9.2} {:>10.1}", "TCP copy into /dev/null", tcp_null.as_secs_f64(), mib_s(tcp_null));
        println!("{:<28} {:>9.2} {:>10.1}", "TCP copy into a file+fsync", tcp.as_secs_f64(), mib_s(tcp));
        println!("{:<28} {:>9.2} {:>10.1}", "layerhop LAN fetch (B ← A)", lan.as_secs_f64(), mib_s(lan));
        println!("receiver: lan_in {lan_in} bytes, metered_in {metered_in} bytes, peak RSS {:.1} MiB", rss as f64 / (1 << 20) as f64);
        println!("receiver: {from_peers} chunks from site peers, {lane_answers} answers over the lane (up to 16 chunks each)");
        println!("CPU during the LAN fetch: receiver {receiver_cpu:.2} s (from its start), sender {sender_cpu:.2} s");
        println!("LAN/TCP speed ratio: {ratio:.2} (goal >= 0.80; against the copy into /dev/null: {ratio_null:.2})");
    }
    drop((a, b, _seed));
    if args.keep {
        eprintln!("homes kept in {}", tmp.keep().display());
    }
    Ok(())
}
