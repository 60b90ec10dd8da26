//! Throughput of the two engines: 1 GiB in 256 KiB writes, then one fsync, in the directory
//! named by `SFTPGW_BENCH_DIR` (default: the current directory). Run it in release:
//! `cargo test --release --lib spool::engine::bench -- --ignored --nocapture`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::*;

const TOTAL_BYTES: usize = 1 << 30;
const WRITE_BYTES: usize = 256 * 1024;
const REPEATS_COUNT: usize = 3;
/// USER_HZ of /proc/*/stat on Linux.
const CLOCK_TICKS_PER_SEC: u64 = 100;

/// User + system CPU seconds of the whole process (all threads, io_uring workers included).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given, which is zeroed and ours.
    let usage = unsafe {
        let mut usage: nix::libc::rusage = std::mem::zeroed();
        assert_eq!(nix::libc::getrusage(nix::libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let seconds = |t: nix::libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// CPU clock ticks (utime + stime) of each live thread of this process whose name starts
/// with `prefix`, by thread id.
fn thread_ticks(prefix: &str) -> HashMap<u64, u64> {
    let mut ticks = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return ticks;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // "tid (comm) state ..." with utime and stime the 14th and 15th fields.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let tid = stat[..open].trim().parse().unwrap_or(0);
        ticks.insert(tid, field(11) + field(12));
    }
    ticks
}

struct Run {
    write_secs: f64,
    total_secs: f64,
    cpu_secs: f64,
    /// io_uring worker threads seen while writing (not syncing), and their CPU ticks.
    io_workers: usize,
    io_worker_ticks: u64,
}

async fn run(engine: &SpoolEngine, file: &Arc<File>, depth: usize) -> Run {
    let chunk = Bytes::from(
        (0..WRITE_BYTES)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    );
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            // Per worker: ticks when first and last seen.
            let mut seen: HashMap<u64, (u64, u64)> = HashMap::new();
            while sampling.load(Ordering::Relaxed) {
                for (tid, ticks) in thread_ticks("iou-wrk") {
                    seen.entry(tid).or_insert((ticks, ticks)).1 = ticks;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let ticks = seen.values().map(|(first, last)| last - first).sum::<u64>();
            (seen.len(), ticks)
        })
    };
    let (cpu_start, start) = (cpu_seconds(), Instant::now());
    let mut in_flight = FuturesUnordered::new();
    for index in 0..TOTAL_BYTES / WRITE_BYTES {
        if in_flight.len() == depth {
            let done: std::io::Result<()> = in_flight.next().await.expect("in flight");
            done.expect("write");
        }
        let offset = (index * WRITE_BYTES) as u64;
        in_flight.push(engine.write_at(file, offset, chunk.clone()));
    }
    while let Some(done) = in_flight.next().await {
        done.expect("write");
    }
    let write_secs = start.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let (io_workers, io_worker_ticks) = sampler.join().expect("sampler");
    engine.fsync(file, SyncScope::All).await.expect("fsync");
    Run {
        write_secs,
        total_secs: start.elapsed().as_secs_f64(),
        cpu_secs: cpu_seconds() - cpu_start,
        io_workers,
        io_worker_ticks,
    }
}

#[test]
#[ignore = "a benchmark: writes several GiB"]
fn engine_throughput_1gib_in_256kib_writes_then_fsync() {
    let Some(uring) = tests::uring_or_skip() else {
        return;
    };
    let dir = std::env::var_os("SFTPGW_BENCH_DIR").unwrap_or_else(|| ".".into());
    let dir = tempfile::tempdir_in(dir).expect("bench dir");
    let engines = [
        SpoolEngine::Pwrite(PwriteEngine),
        SpoolEngine::IoUring(uring),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "engine    depth  write MB/s  write+fsync MB/s  CPU s  iou-wrk threads (CPU s) while writing"
    );
    for repeat in 0..REPEATS_COUNT {
        for depth in [1, 8] {
            for engine in &engines {
                let path = dir
                    .path()
                    .join(format!("{}-{depth}-{repeat}", engine.name()));
                let file = Arc::new(
                    OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .expect("create"),
                );
                let r = rt.block_on(run(engine, &file, depth));
                let mb = TOTAL_BYTES as f64 / 1e6;
                println!(
                    "{:<9} {depth:>5}  {:>10.0}  {:>16.0}  {:>5.2}  {} ({:.2})",
                    engine.name(),
                    mb / r.write_secs,
                    mb / r.total_secs,
                    r.cpu_secs,
                    r.io_workers,
                    r.io_worker_ticks as f64 / CLOCK_TICKS_PER_SEC as f64
                );
                drop(file);
                std::fs::remove_file(&path).expect("remove");
            }
        }
    }
}
