//! LAN transfer benchmark: two real nodes on 127.0.0.1 move a release over the LAN path, timed
//! against a plain TCP copy of the same bytes between two processes, in the same run.
//!
//! Set-up (not timed): a seed publishes a release of `--size-mib` MiB of incompressible data
//! (model weights do not compress) and device A fetches it. Then device B joins the same site:
//! every chunk is held by A, so B takes all of it over the LAN. Timed: from B's start to B
//! holding the whole release. Also reported: B's peak RSS (VmHWM). The timed part (both
//! copies, then a new device B) is repeated `--runs` times and the medians are the result: on
//! a shared host one run in a few is slowed by what else runs, or by the memory the kernel
//! finds for the page cache (on the development VM, memory freed by the previous phase is
//! handed back to the host, and a phase that writes into such memory pays a host fault per
//! page), and that falls on the copy as on the fetch. One copy into a file before the timed runs
//! is not timed: the first one after the set-up was always slow (see `main`).
//!
//! The baseline is the same job done the plainest way: this binary in `sink` mode on one side
//! of a TCP socket, this process reading the release file and writing it into the socket 1 MiB
//! at a time, and the sink writing what it receives to a file in the same directory as the
//! nodes' stores and calling `fsync` once at the end (an `scp` followed by `sync`). The node's
//! job includes storing the bytes durably — a release is reported complete only once every
//! chunk and its name are on disk — so a copy into `/dev/null` would compare a network
//! transfer with a network transfer plus a disk write. The sink is not made slow on purpose:
//! 1 MiB writes through the page cache and one `fsync`, the cheapest way to have the bytes on
//! disk. The copy into `/dev/null` is still run and printed as a second reference, to show what
//! the disk costs on the machine at hand.
//!
//! Beside the times, the CPU both ends used (the copy's sending thread and its sink; the two
//! nodes during the fetch), and what that bounds on this host: when both ends share its cores,
//! neither job can take less than its CPU divided by the cores. On the 2-core development
//! host the fetch (which also encrypts, decrypts, hashes and indexes every chunk) used
//! 1.7-1.9x the copy's CPU while the copy sent 8 KiB at a time, 1.9-2.7x since it sends 1 MiB,
//! which is why the time ratio stays below the goal there.
//!
//! `cargo run --release -p layerhop-simulations --bin bench_lan -- --size-mib 1024`

use anyhow::{Context, Result, bail};
use clap::Parser;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The copy's reads and writes, both ends: 1 MiB.
const COPY_BUF: usize = 1 << 20;

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
    /// Timed runs (each: both copies, then a new device fetching from A); the medians are the
    /// result.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// A second layerhop build for both devices on the LAN path: runs alternate between the
    /// two builds — the receiving device starts with the run's build, and the sending device A
    /// is restarted with it when it changes (a change to the lane's protocol needs both ends
    /// of one build); the seed stays `--layerhop` — and each build's medians are printed (with
    /// `--json`, one object per build, one per line). On a shared host, runs of two builds
    /// interleaved in one process meet the same noise; separate invocations do not.
    #[arg(long)]
    compare: Option<PathBuf>,
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

/// What a copy took: its time, and the CPU both of its ends used.
struct Copy {
    time: Duration,
    cpu: f64,
}

/// CPU seconds (user + system) the calling thread has used so far.
fn thread_cpu() -> f64 {
    // SAFETY: getrusage writes only into the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_THREAD names the calling thread.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// Copy `file` over TCP to a sink process; the sink stores it durably in `store_to`, or drops it.
fn tcp_copy(me: &Path, file: &Path, store_to: Option<&Path>) -> Result<Copy> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut cmd = Command::new(me);
    cmd.args(["--sink", &port.to_string()]);
    if let Some(to) = store_to {
        cmd.arg("--sink-file").arg(to);
    }
    let mut sink = Proc(cmd.stdout(Stdio::piped()).spawn()?);
    let mut conn = wait("the sink", Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).ok())?;
    let started = Instant::now();
    let cpu_before = thread_cpu();
    let mut f = std::fs::File::open(file)?;
    pump(&mut f, &mut conn)?;
    drop(conn);
    let sender_cpu = thread_cpu() - cpu_before;
    let mut out = String::new();
    sink.0.stdout.take().context("sink stdout")?.read_to_string(&mut out)?;
    let elapsed = started.elapsed();
    let (got, sink_cpu) = out.trim().split_once(' ').context("sink output")?;
    let got: u64 = got.parse().context("sink output")?;
    let sink_cpu: f64 = sink_cpu.parse().context("sink output")?;
    if got != std::fs::metadata(file)?.len() {
        bail!("sink received {got} bytes");
    }
    if let Some(to) = store_to {
        std::fs::remove_file(to)?;
    }
    Ok(Copy { time: elapsed, cpu: sender_cpu + sink_cpu })
}

/// Move everything `from` gives to `to`, [`COPY_BUF`] at a time: both ends of the copy
/// (`std::io::copy` does not use `sendfile` here: it reads and sends 8 KiB at a time, 131,072
/// of each per GiB, a weaker baseline than a plain copy need be); the bytes moved.
fn pump(from: &mut impl Read, to: &mut impl Write) -> Result<u64> {
    let mut buf = vec![0u8; COPY_BUF];
    let mut n = 0u64;
    loop {
        let got = from.read(&mut buf)?;
        if got == 0 {
            return Ok(n);
        }
        to.write_all(&buf[..got])?;
        n += got as u64;
    }
}

fn sink(port: u16, to: Option<&Path>) -> Result<()> {
    let l = std::net::TcpListener::bind(("127.0.0.1", port))?;
    let (mut s, _) = l.accept()?;
    let n = match to {
        Some(path) => {
            let mut f = std::fs::File::create(path)?;
            let n = pump(&mut s, &mut f)?;
            f.sync_all()?;
            n
        }
        None => pump(&mut s, &mut std::io::sink())?,
    };
    // The bytes received, and the CPU the sink used (its only thread).
    println!("{n} {}", thread_cpu());
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

/// One timed run: both copies, then a new device fetching the release from A.
#[derive(serde::Serialize, Clone)]
struct Run {
    /// The build of both devices on the LAN path.
    build: String,
    tcp_null: f64,
    tcp: f64,
    /// CPU of both ends of the copy into a file.
    tcp_cpu: f64,
    lan: f64,
    receiver_cpu: f64,
    sender_cpu: f64,
    rss: u64,
    lan_in: u64,
    metered_in: u64,
    lane_answers: u64,
    from_peers: u64,
}

impl Run {
    fn ratio(&self) -> f64 {
        self.tcp / self.lan
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Print every run and the medians (the host is shared: one run can be slowed by what else
/// runs, or by where the kernel finds memory for the page cache).
fn report(runs: &[Run], bytes: u64, json: bool) {
    let med = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
    let (lan, tcp, tcp_null) = (med(|r| r.lan), med(|r| r.tcp), med(|r| r.tcp_null));
    let ratio = med(Run::ratio);
    let ratio_null = med(|r| r.tcp_null / r.lan);
    let rss = runs.iter().map(|r| r.rss).max().unwrap_or(0);
    let (receiver_cpu, sender_cpu) = (med(|r| r.receiver_cpu), med(|r| r.sender_cpu));
    let (copy_cpu, lan_cpu) = (med(|r| r.tcp_cpu), med(|r| r.receiver_cpu + r.sender_cpu));
    if json {
        // Times are medians, RSS the highest, counters the last run's; every run is in "runs".
        let last = runs.last();
        println!(
            "{}",
            serde_json::json!({"bytes": bytes, "tcp_copy_seconds": tcp, "tcp_copy_to_null_seconds": tcp_null,
                "lan_seconds": lan, "ratio": ratio, "ratio_to_null_copy": ratio_null,
                "receiver_peak_rss_bytes": rss, "receiver_lan_in": last.map_or(0, |r| r.lan_in), "receiver_metered_in": last.map_or(0, |r| r.metered_in),
                "receiver_cpu_seconds": receiver_cpu, "sender_cpu_seconds": sender_cpu,
                "tcp_copy_cpu_seconds": copy_cpu, "lan_cpu_seconds": lan_cpu,
                "receiver_chunks_from_peers": last.map_or(0, |r| r.from_peers), "receiver_lane_answers": last.map_or(0, |r| r.lane_answers),
                "runs": runs})
        );
        return;
    }
    let mib_s = |secs: f64| bytes as f64 / (1 << 20) as f64 / secs;
    println!("{:<5} {:>10} {:>10} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9}", "run", "copy→null", "copy→file", "LAN fetch", "ratio", "CPU copy", "CPU recv", "CPU send", "RSS MiB");
    for (i, r) in runs.iter().enumerate() {
        println!("{:<5} {:>9.2}s {:>9.2}s {:>9.2}s {:>7.2} {:>8.2}s {:>8.2}s {:>8.2}s {:>9.1}", i + 1, r.tcp_null, r.tcp, r.lan, r.ratio(), r.tcp_cpu, r.receiver_cpu, r.sender_cpu, r.rss as f64 / (1 << 20) as f64);
    }
    for r in runs {
        println!("receiver: lan_in {} bytes, metered_in {} bytes, {} chunks from site peers, {} answers over the lane (up to 16 chunks each)", r.lan_in, r.metered_in, r.from_peers, r.lane_answers);
    }
    println!("median of {} runs: copy into /dev/null {tcp_null:.2} s ({:.0} MiB/s), into a file+fsync {tcp:.2} s ({:.0} MiB/s), LAN fetch {lan:.2} s ({:.0} MiB/s)", runs.len(), mib_s(tcp_null), mib_s(tcp), mib_s(lan));
    println!("CPU during the LAN fetch (median): receiver {receiver_cpu:.2} s (from its start), sender {sender_cpu:.2} s; receiver peak RSS {:.1} MiB (highest)", rss as f64 / (1 << 20) as f64);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "CPU (median, both ends): copy into a file {copy_cpu:.2} s, LAN fetch {lan_cpu:.2} s ({:.2}x); on {cores} cores shared by both ends, the copy cannot take less than {:.2} s nor the fetch {:.2} s",
        lan_cpu / copy_cpu,
        copy_cpu / cores as f64,
        lan_cpu / cores as f64
    );
    println!("LAN/TCP speed ratio (median): {ratio:.2} (goal >= 0.80; against the copy into /dev/null: {ratio_null:.2})");
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
    if args.compare.as_ref().is_some_and(|c| c == &bin) {
        bail!("--compare names the build --layerhop already runs: {}", bin.display());
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
    let join = |d: &str, port: u16| -> Result<()> {
        let token = run(&bin, &["invite", "--home", &h("seed"), "--site", "bench"])?;
        let listen = format!("/ip4/127.0.0.1/tcp/{port}");
        run(&bin, &[&["init", "--home", &h(d), "--join", token.trim(), "--listen", &listen, "--no-mdns"][..], &quiet].concat())?;
        Ok(())
    };
    // A keeps its address when `--compare` restarts it with the other build.
    let a_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    join("a", a_port)?;
    let mut a = start(&bin, &root.join("a"))?;
    let mut a_build = &bin;
    run(&bin, &["publish", "--home", &h("seed"), "--channel", "bench", &file_dir.to_string_lossy()])?;
    eprintln!("device A fetching {} MiB from the seed (set-up, not timed)", args.size_mib);
    wait("device A", Duration::from_secs(1800), || complete(&rt, &root.join("a")))?;
    // The first copy of 1 GiB into a file after the set-up took 2.7-3.1 s, against 0.8-1.2 s
    // for the ones after it, in every invocation (and the first LAN fetch did not pay the
    // same): whatever the first fill of the page cache after the set-up pays, it is paid here.
    settle();
    let warm = tcp_copy(&me, &file, Some(&root.join("tcp-copy.bin")))?;
    eprintln!("warm-up copy into a file (not timed): {:.2} s", warm.time.as_secs_f64());
    let mut runs = Vec::new();
    for i in 1..=args.runs.max(1) {
        let b = format!("b{i}");
        let build = match &args.compare {
            Some(other) if i % 2 == 0 => other,
            _ => &bin,
        };
        if build != a_build {
            drop(a);
            a = start(build, &root.join("a"))?;
            a_build = build;
            wait("device A, restarted, back with the seed", Duration::from_secs(60), || {
                let s = complete(&rt, &root.join("a"))?;
                s["peers"].as_array()?.iter().any(|p| p["seed"] == true).then_some(())
            })?;
        }
        join(&b, 0)?;
        settle();
        let tcp_null = tcp_copy(&me, &file, None)?;
        settle();
        let tcp = tcp_copy(&me, &file, Some(&root.join("tcp-copy.bin")))?;
        settle();
        eprintln!("device {b} fetching over the LAN from A (timed), run {i} of {}", args.runs.max(1));
        let sender_cpu_before = cpu_seconds(a.0.id());
        let started = Instant::now();
        let node = start(build, &root.join(&b))?;
        let s = wait("the joining device", Duration::from_secs(1800), || complete(&rt, &root.join(&b)))?;
        let lan = started.elapsed();
        runs.push(Run {
            build: build.display().to_string(),
            tcp_null: tcp_null.time.as_secs_f64(),
            tcp: tcp.time.as_secs_f64(),
            tcp_cpu: tcp.cpu,
            lan: lan.as_secs_f64(),
            receiver_cpu: cpu_seconds(node.0.id()),
            sender_cpu: cpu_seconds(a.0.id()) - sender_cpu_before,
            rss: peak_rss(node.0.id()),
            lan_in: s["traffic"]["lan_in"].as_u64().unwrap_or(0),
            metered_in: s["traffic"]["metered_in"].as_u64().unwrap_or(0),
            lane_answers: s["lane_answers"].as_u64().unwrap_or(0),
            from_peers: s["chunks_from_peers"].as_u64().unwrap_or(0),
        });
        drop(node);
        if !args.keep {
            // Its page cache and disk space are the next run's.
            let _ = std::fs::remove_dir_all(root.join(&b));
        }
    }
    match &args.compare {
        None => report(&runs, bytes, args.json),
        Some(other) => {
            for build in [&bin, other] {
                let name = build.display().to_string();
                let mine: Vec<Run> = runs.iter().filter(|r| r.build == name).cloned().collect();
                if !args.json {
                    println!("devices on the LAN path: {name}");
                }
                report(&mine, bytes, args.json);
            }
        }
    }
    drop((a, _seed));
    if args.keep {
        eprintln!("homes kept in {}", tmp.keep().display());
    }
    Ok(())
}
