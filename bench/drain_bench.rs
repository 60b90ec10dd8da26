//! Drain benchmark: one sealed file (1 GiB by default) drained to the embedded S3 server, which
//! runs in a child process so that the numbers below are the drain's alone.
//!
//! ```text
//! cargo build --release --example drain_bench
//! target/release/examples/drain_bench [SIZE_MIB [PART_MIB [CONCURRENCY]]]
//! target/release/examples/drain_bench serve ROOT   # the server alone, e.g. for `aws s3 cp`
//! ```
//!
//! Prints wall time from the drain's start to `Delivered`, CPU seconds (user + system) of this
//! process and of the server during the drain, and peak RSS (VmHWM) of both. The peak of this
//! process is reset (`/proc/self/clear_refs` 5) after the spool file is written, so it covers the
//! drain only. The working directory is under `$TMPDIR` (a real disk, not tmpfs, on our boxes).
//! With `DRAIN_BENCH_PERF=FILE`, `perf record -g` samples this process during the drain only.
//!
//! Measured on the 2-core dev VM (loaded by other builds: wall times vary ±25 %), 1 GiB, 16 MiB
//! parts, medians of 5 interleaved runs; CPU and RSS are the draining process's:
//!
//! | drain                                    | wall   | CPU    | peak RSS |
//! |------------------------------------------|--------|--------|----------|
//! | parts read into memory, payload signed   | 9.4 s  | 1.50 s | 108 MiB  |
//! | parts read into memory, unsigned         | 7.5 s  | 0.77 s | 108 MiB  |
//! | streamed from the spool file, unsigned   | 8.0 s  | 0.63 s | 14 MiB   |
//! | the same, 64 parts in flight             | 6–8 s  | 0.5–1 s| 31 MiB   |
//! | `aws s3 cp` (aws-cli 1.45, same server)  | 9–11 s | 3.3 s  | 92 MiB   |
//!
//! Idle RSS before the drain is about 7.7 MiB of each. The server (s3s-fs) needs 8–9 CPU-s per
//! GiB and bounds the wall time.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sftpgw::config::{ChecksumMode, S3Config};
use sftpgw::drain::aws::AwsStore;
use sftpgw::drain::upload::{Drain, DrainConfig};
use sftpgw::num::f64_from_u64;
use sftpgw::s3server::{S3Server, S3ServerConfig};
use sftpgw::spool::{FileState, OpenMode, Spool, SpoolOptions, VPath};

const MIB: u64 = 1024 * 1024;
/// Linux's USER_HZ: the unit of utime/stime in /proc/PID/stat.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;
const WRITE_CHUNK_BYTES: u64 = MIB;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Runtime::new()?;
    if args.first().map(String::as_str) == Some("serve") {
        let root = args.get(1).ok_or_else(|| anyhow::anyhow!("serve ROOT"))?;
        return rt.block_on(serve(root.into()));
    }
    let num = |i: usize, default: u64| -> anyhow::Result<u64> {
        args.get(i)
            .map_or(Ok(default), |s| s.parse::<u64>())
            .map_err(anyhow::Error::from)
    };
    let size = num(0, 1024)? * MIB;
    let part_size = num(1, 16)? * MIB;
    let concurrency = usize::try_from(num(2, 4)?)?;
    rt.block_on(drain(size, part_size, concurrency))
}

/// Serves until stdin closes; prints the endpoint on the first line of stdout.
async fn serve(root: std::path::PathBuf) -> anyhow::Result<()> {
    let server = S3Server::start(S3ServerConfig::loopback(root)).await?;
    println!("{}", server.endpoint());
    std::io::stdout().flush()?;
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
    })
    .await?;
    server.shutdown().await;
    Ok(())
}

async fn drain(size: u64, part_size: u64, concurrency: usize) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut server = Command::new(std::env::current_exe()?)
        .arg("serve")
        .arg(tmp.path().join("s3"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let endpoint = first_line(&mut server)?;
    let cfg = s3_config(endpoint, part_size, concurrency);
    let spool = Spool::open(SpoolOptions::unlimited(tmp.path().join("spool")))?;
    write_sealed(&spool, size).await?;

    let rss_idle = status_kib("self", "VmRSS:")?;
    std::fs::write("/proc/self/clear_refs", "5")?;
    let perf = start_perf().await?;
    let cpu_before = cpu_secs("self")?;
    let server_cpu_before = cpu_secs(&server.id().to_string())?;
    let started = Instant::now();
    let store = Arc::new(AwsStore::new(&cfg)?);
    let drain = Drain::new(
        store,
        spool.clone(),
        DrainConfig {
            prefix: String::new(),
            part_size,
            concurrency,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            settle: Duration::ZERO,
            early: false,
            failed_retry_first: sftpgw::config::FAILED_RETRY_DEFAULT,
            failed_retry_max: sftpgw::config::FAILED_RETRY_MAX_DEFAULT,
        },
    );
    let task = tokio::spawn(drain.run());
    wait_delivered(&spool).await?;
    let wall = started.elapsed();
    let cpu = cpu_secs("self")? - cpu_before;
    let server_pid = server.id().to_string();
    let server_cpu = cpu_secs(&server_pid)? - server_cpu_before;
    let server_hwm = status_kib(&server_pid, "VmHWM:")?;
    let hwm = status_kib("self", "VmHWM:")?;
    task.abort();
    if let Some(perf) = perf {
        stop_perf(perf)?;
    }
    drop(server.stdin.take());
    server.wait()?;

    let gib = f64_from_u64(size) / (1024.0 * f64_from_u64(MIB));
    println!(
        "size {} MiB, part {} MiB, concurrency {concurrency}",
        size / MIB,
        part_size / MIB
    );
    println!(
        "drain: wall {:.2} s ({:.0} MiB/s), cpu {cpu:.2} s ({:.2} s/GiB), peak RSS {} KiB (idle before {} KiB)",
        wall.as_secs_f64(),
        f64_from_u64(size / MIB) / wall.as_secs_f64(),
        cpu / gib,
        hwm,
        rss_idle
    );
    println!("server: cpu {server_cpu:.2} s, peak RSS {server_hwm} KiB");
    Ok(())
}

/// The store's configuration for the embedded server at `endpoint`, as the gateway would
/// build it (no early drain, checksums only where required).
fn s3_config(endpoint: String, part_size: u64, concurrency: usize) -> S3Config {
    let defaults = S3ServerConfig::loopback("");
    S3Config {
        endpoint: Some(endpoint),
        region: "us-east-1".to_owned(),
        bucket: defaults.bucket,
        prefix: String::new(),
        path_style: true,
        access_key_id: defaults.access_key,
        secret_access_key: defaults.secret_key,
        part_size,
        concurrency,
        checksums: ChecksumMode::WhenRequired,
        early_drain: false,
        failed_retry: sftpgw::config::FAILED_RETRY_DEFAULT,
        failed_retry_max: sftpgw::config::FAILED_RETRY_MAX_DEFAULT,
        overwrite: sftpgw::config::OverwriteMode::Replace,
        manifest_interval: None,
        full_object_checksum: true,
    }
}

/// `perf record` attached to this process when `DRAIN_BENCH_PERF` names its output file.
async fn start_perf() -> anyhow::Result<Option<Child>> {
    Ok(match std::env::var_os("DRAIN_BENCH_PERF") {
        Some(out) => {
            let perf = Command::new("perf")
                .args(["record", "-g", "-F", "1999", "-p"])
                .arg(std::process::id().to_string())
                .arg("-o")
                .arg(out)
                .spawn()?;
            // perf needs a moment to attach.
            tokio::time::sleep(Duration::from_millis(500)).await;
            Some(perf)
        }
        None => None,
    })
}

/// Stops `perf record` so that it writes its output.
fn stop_perf(mut perf: Child) -> anyhow::Result<()> {
    Command::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status()?;
    perf.wait()?;
    Ok(())
}

/// Polls the spool until the bench file is delivered (or failed).
async fn wait_delivered(spool: &Spool) -> anyhow::Result<()> {
    let path = VPath::resolve("big.bin")?;
    loop {
        match spool.stat("u", &path).ok().and_then(|e| e.state) {
            Some(FileState::Delivered) => return Ok(()),
            Some(FileState::Failed) => anyhow::bail!("drain failed: {:?}", spool.files()),
            // Rarely enough that the polling itself costs nothing measurable.
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

fn first_line(child: &mut Child) -> anyhow::Result<String> {
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

/// Writes `size` bytes in order (so the spool keeps the running SHA-256) and seals the file.
async fn write_sealed(spool: &Arc<Spool>, size: u64) -> anyhow::Result<()> {
    let h = spool
        .open_write(
            "u",
            &VPath::resolve("big.bin")?,
            OpenMode {
                truncate: true,
                exclusive: false,
            },
        )
        .await?;
    let mut offset = 0;
    let mut seed = 0u64;
    while offset < size {
        let len = WRITE_CHUNK_BYTES.min(size - offset);
        let chunk: Vec<u8> = (0..len)
            .map(|i| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(i | 1);
                seed.to_be_bytes()[0]
            })
            .collect();
        h.write_at(offset, Bytes::from(chunk)).await?;
        offset += len;
    }
    h.close().await?;
    Ok(())
}

/// utime + stime of a process from /proc/PID/stat, in seconds.
fn cpu_secs(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; fields after its closing paren are plain.
    let rest = stat
        .rsplit_once(')')
        .ok_or_else(|| anyhow::anyhow!("bad stat"))?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(f64_from_u64(ticks) / CLOCK_TICKS_PER_SEC)
}

fn status_kib(pid: &str, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .ok_or_else(|| anyhow::anyhow!("no {field}"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("bad {field}"))?
        .parse()?)
}
