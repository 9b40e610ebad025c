//! Publish throughput, as a ratio against `b3sum --num-threads 1` on the same file in the same run.
//!
//! `layerhop publish` of a model file reads it once, cuts it with FastCDC, names every chunk by
//! its BLAKE3, writes one file per chunk and syncs the store at the end. One single-threaded
//! BLAKE3 pass over the file is the floor of that work, so `b3sum --num-threads 1` is the yardstick
//! (DESIGN.md "Performance": 0.34 s per GiB on these machines; goal: publish ≥ 0.7 of its speed).
//! Measuring both in the same run on the same warm file cancels out the machine, the disk and the
//! page cache, so the ratio is comparable between machines where the seconds are not.
//!
//! Lines measured (median of `--runs`, each on a fresh store):
//! - `b3sum`: the external tool, file warm in the page cache.
//! - `publish`: `Store::open` + `set_durable(false)` + `import_file` + `Store::sync`, exactly
//!   what the seed's publish does for one plain file (node/src/control.rs).
//! - `publish, no sync`: the same without the final sync, to show what durability costs.
//! - `blake3 in-process`: `blake3::Hasher` over 1 MiB reads, to check that the yardstick is not
//!   skewed by something b3sum does (mmap, SIMD dispatch) that the store cannot.
//!
//! The store writes one file per chunk (~13,000 per GiB), so the disk's metadata speed shows:
//! on ext4 without a journal (these machines) creating files is several times slower for a few
//! minutes after many files were deleted on the same disk (a previous run's cleanup, a test
//! suite), and the figures swing with it. Leave a few minutes between runs; `--dir /dev/shm`
//! shows the CPU-bound ceiling.
//!
//! Run: `cargo run --release -p layerhop-simulations --bin bench_publish -- --size-mib 1024`.

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use layerhop_store::Store;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Measure publish (chunk + hash + store) throughput against `b3sum --num-threads 1`.
#[derive(Parser)]
struct Args {
    /// Size of the generated test file, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Directory for the test file and the temporary stores (choose the disk to measure); it
    /// needs about size × (1 + 2 × runs) free; default: the system temp directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Repetitions of each measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Fail instead of running `cargo install b3sum --locked` when b3sum is missing.
    #[arg(long)]
    no_install: bool,
    /// Print one JSON object with the figures instead of the table.
    #[arg(long)]
    json: bool,
}

/// One measured line of the table: its label, its JSON key, its median seconds.
struct Line {
    name: &'static str,
    key: &'static str,
    seconds: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.size_mib > 0 && args.runs > 0, "--size-mib and --runs must be at least 1");
    let b3sum = find_b3sum(args.no_install)?;
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new()
        .prefix("bench_publish-")
        .tempdir_in(&base)
        .with_context(|| format!("create a temp directory in {}", base.display()))?;
    let file = work.path().join("model.bin");
    eprintln!("writing {} MiB of pseudo-random data to {}", args.size_mib, file.display());
    write_random(&file, args.size_mib)?;
    // Warm the page cache so every line below reads the same cached bytes: the ratio is about
    // CPU and store work, not about which run happened to pay for the cold read.
    let expected = hash_file(&file)?;

    // Rounds interleave the four lines, so a burst of load from elsewhere on the machine hits
    // them alike instead of skewing one line's every sample.
    let names = [
        ("b3sum --num-threads 1", "b3sum"),
        ("publish (import + sync)", "publish"),
        ("publish, no sync", "publish_nosync"),
        ("blake3 in-process, 1 MiB reads", "blake3_inprocess"),
    ];
    let mut samples = vec![Vec::new(); names.len()];
    for round in 0..args.runs {
        eprintln!("round {} of {}", round + 1, args.runs);
        samples[0].push(time_b3sum(&b3sum, &file, &expected)?);
        // Each publish gets a fresh store that is kept until the end: deleting thousands of
        // chunk files between runs makes the next run's file creation slower on some
        // filesystems (ext4 without a journal scans recently freed inodes on every create).
        samples[1].push(publish_once(work.path(), &file, true, &expected)?);
        samples[2].push(publish_once(work.path(), &file, false, &expected)?);
        let t = Instant::now();
        ensure!(hash_file(&file)? == expected, "in-process BLAKE3 changed between runs");
        samples[3].push(t.elapsed().as_secs_f64());
    }
    let lines: Vec<Line> = names.iter().zip(samples).map(|(&(name, key), v)| Line { name, key, seconds: median(v) }).collect();
    let b3 = lines[0].seconds;

    let mib = args.size_mib as f64;
    let ratio = b3 / lines[1].seconds;
    if args.json {
        let mut obj = serde_json::json!({
            "size_mib": args.size_mib, "runs": args.runs, "dir": base, "b3sum_path": b3sum,
            "ratio": ratio, "goal": 0.7,
        });
        for l in &lines {
            obj[l.key] = serde_json::json!({ "seconds": l.seconds, "mib_per_s": mib / l.seconds, "ratio": b3 / l.seconds });
        }
        println!("{}", serde_json::to_string_pretty(&obj)?);
    } else {
        println!("{} MiB file in {}, median of {} runs; ratio = b3sum seconds / line seconds", args.size_mib, base.display(), args.runs);
        println!("{:<32} {:>9} {:>9} {:>7}", "", "seconds", "MiB/s", "ratio");
        for l in &lines {
            println!("{:<32} {:>9.3} {:>9.1} {:>7.2}", l.name, l.seconds, mib / l.seconds, b3 / l.seconds);
        }
        println!("publish/b3sum ratio: {ratio:.2} (goal >= 0.70)");
    }
    eprintln!("removing {} (the file and {} stores)", work.path().display(), 2 * args.runs);
    work.close()?;
    Ok(())
}

/// One publish of `file` into a fresh store under `dir`; returns the seconds it took.
fn publish_once(dir: &Path, file: &Path, sync: bool, expected: &str) -> Result<f64> {
    let root = tempfile::Builder::new().prefix("store-").tempdir_in(dir)?.keep();
    let t = Instant::now();
    let (store, _) = Store::open(&root)?;
    store.set_durable(false);
    let artifact = layerhop_store::import::import_file(&store, file, "model.bin".into())?;
    if sync {
        store.sync()?;
    }
    let s = t.elapsed().as_secs_f64();
    ensure!(artifact.blake3.to_hex() == expected, "publish computed BLAKE3 {}, expected {expected}", artifact.blake3.to_hex());
    // Write back the no-sync run's dirty pages outside the timer, so the next run does not pay
    // for them in the background.
    if !sync {
        store.sync()?;
    }
    Ok(s)
}

/// One `b3sum --num-threads 1 file`, checked against the expected hash; returns its seconds.
fn time_b3sum(b3sum: &Path, file: &Path, expected: &str) -> Result<f64> {
    let t = Instant::now();
    let out = Command::new(b3sum).arg("--num-threads").arg("1").arg(file).output()?;
    let s = t.elapsed().as_secs_f64();
    ensure!(out.status.success(), "{} failed: {}", b3sum.display(), String::from_utf8_lossy(&out.stderr));
    let hex = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_owned();
    ensure!(hex == expected, "b3sum printed {hex}, expected {expected}");
    Ok(s)
}

/// The median of at least one sample.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Write `mib` MiB of xorshift64* output: incompressible (so no layer below can shortcut it) and
/// deterministic (so runs and machines chunk the same bytes).
fn write_random(path: &Path, mib: u64) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?);
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for word in buf.chunks_exact_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            word.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        f.write_all(&buf)?;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

/// Single-threaded BLAKE3 of a file read in 1 MiB buffers, as hex.
fn hash_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// b3sum from PATH or ~/.cargo/bin, installed with cargo when missing unless `no_install`.
fn find_b3sum(no_install: bool) -> Result<PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|c| c.join("bin").join("b3sum"));
    let find = || {
        let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
        on_path.map(|d| d.join("b3sum")).chain(cargo_bin.clone()).find(|p| p.is_file())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    let hint = "b3sum is neither on PATH nor in ~/.cargo/bin; it can be installed with `cargo install b3sum`";
    if no_install {
        bail!("{hint} (not installing it because --no-install was given)");
    }
    eprintln!("{hint}; running `cargo install b3sum --locked` now (pass --no-install to skip)");
    // Under `cargo run`, $CARGO is the cargo that built this binary: use the same toolchain.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .args(["install", "b3sum", "--locked"])
        .status()
        .context("could not start `cargo install b3sum --locked`; install b3sum by hand")?;
    ensure!(status.success(), "`cargo install b3sum --locked` failed ({status}); install b3sum by hand and re-run");
    find().context("`cargo install b3sum --locked` succeeded but b3sum is still not on PATH nor in ~/.cargo/bin")
}
