//! Bandwidth shaping of the drain, end to end: the real `sftpgw` binary, the real OpenSSH
//! `sftp` client on the (never throttled) LAN side, and the embedded S3 server on the WAN side.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::as_conversions,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    reason = "a test panics on what it did not expect, and may cast what it made itself"
)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Harness, Options, PREFIX, data};
use sftpgw::spool::FileState;
use sftpgw::status::ShapingStatus;
use sftpgw::status::control::{self, Request, Response};

const MIB: u64 = 1024 * 1024;

fn shaped(shaping: &str, concurrency: usize) -> Options {
    Options {
        shaping: Some(shaping.to_owned()),
        concurrency,
        ..Options::default()
    }
}

/// Writes `len` bytes to a local file and uploads it as `name` (as alice).
fn put(h: &Harness, name: &str, len: usize, seed: u64) -> Vec<u8> {
    let bytes = data(len, seed);
    let local = h.dir.path().join(name);
    std::fs::write(&local, &bytes).expect("write local file");
    h.sftp_ok("alice", &format!("put {} {name}\n", local.display()));
    bytes
}

async fn request(h: &Harness, req: Request) -> ShapingStatus {
    match control::request(&h.socket, &req).await.expect("control") {
        Response::Shaping(status) => *status,
        other => panic!("unexpected {other:?}"),
    }
}

fn key(name: &str) -> String {
    format!("{PREFIX}alice/{name}")
}

fn delivered(snapshot: &sftpgw::status::Snapshot, name: &str) -> bool {
    snapshot
        .files
        .iter()
        .any(|f| f.path == format!("/{name}") && f.state == FileState::Delivered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_mib_per_second_limit_holds_for_a_multi_part_file_and_sftp_is_not_throttled() {
    let mut h = Harness::new(shaped("rate = \"2MiB/s\"", 4)).await;
    h.start_daemon();
    // Held first, so that the measurement starts with the whole file waiting to drain.
    request(&h, Request::DrainPause { for_secs: None }).await;
    let started = Instant::now();
    let bytes = put(&h, "big.bin", 24 << 20, 1);
    let put_secs = started.elapsed().as_secs_f64();
    // 24 MiB at 2 MiB/s would take 12 s: the LAN side is not held back by the WAN shaper.
    assert!(put_secs < 6.0, "the SFTP upload took {put_secs} s");
    // Past the drain's settle time: every part is ready and waits for admission.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let resumed = Instant::now();
    let status = request(&h, Request::DrainResume).await;
    assert_eq!(status.limit_bytes_per_sec, Some(2 * MIB));
    h.wait_drained(Duration::from_secs(60)).await;
    let secs = resumed.elapsed().as_secs_f64();
    eprintln!("24 MiB put in {put_secs:.2} s, drained at 2 MiB/s in {secs:.2} s");
    // 12 s, within ±15%.
    assert!(
        (10.2..=13.8).contains(&secs),
        "24 MiB at 2 MiB/s drained in {secs:.2} s; log:\n{}",
        h.log()
    );
    assert!(h.get_object(&key("big.bin")).await == Some(bytes));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_pause_stops_new_parts_within_a_second_and_resume_continues() {
    let mut h = Harness::new(shaped("rate = \"8MiB/s\"", 1)).await;
    h.start_daemon();
    let bytes = put(&h, "paused.bin", 40 << 20, 2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.status().await.drain.parts_sent == 0 {
        assert!(Instant::now() < deadline, "no part sent; log:\n{}", h.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = request(&h, Request::DrainPause { for_secs: None }).await;
    let parts_at_pause = h.status().await.drain.parts_sent;
    assert!(status.paused && status.override_active, "{status:?}");
    // The part in flight (5 MiB at 8 MiB/s: 0.65 s) finishes; nothing new starts.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let parts_after = h.status().await.drain.parts_sent;
    assert!(
        parts_after <= parts_at_pause + 1,
        "{parts_at_pause} parts at the pause, {parts_after} 1.5 s later"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let snapshot = h.status().await;
    assert_eq!(
        snapshot.drain.parts_sent, parts_after,
        "a part was sent while paused"
    );
    assert!(snapshot.shaping.paused);
    assert!(h.get_object(&key("paused.bin")).await.is_none());
    let status = request(&h, Request::DrainResume).await;
    assert!(!status.paused && !status.override_active, "{status:?}");
    h.wait_drained(Duration::from_secs(30)).await;
    assert!(h.get_object(&key("paused.bin")).await == Some(bytes));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_in_flight_at_a_pause_finishes_at_a_low_rate_without_a_stalled_stream_error() {
    let mut h = Harness::new(shaped("rate = \"512KiB/s\"", 1)).await;
    h.start_daemon();
    // One part (a single PUT) of 5 MiB: 10 s at 512 KiB/s.
    let bytes = put(&h, "slow.bin", 5 << 20, 3);
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.status().await.shaping.rate_bytes_per_sec == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing is sent; log:\n{}",
            h.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = request(&h, Request::DrainPause { for_secs: None }).await;
    assert!(status.paused);
    assert!(
        !delivered(&h.status().await, "slow.bin"),
        "delivered before the pause"
    );
    let snapshot = h.wait_drained(Duration::from_secs(40)).await;
    assert!(delivered(&snapshot, "slow.bin"), "{snapshot:#?}");
    assert!(
        snapshot.shaping.paused,
        "still paused: the part in flight finished anyway"
    );
    assert!(h.get_object(&key("slow.bin")).await == Some(bytes));
    let log = h.log();
    assert!(
        !log.contains("transient S3 error") && !log.contains("stalled"),
        "the paced body failed:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_survives_a_daemon_restart_and_expires() {
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    let status = request(&h, Request::DrainPause { for_secs: Some(8) }).await;
    let until = status.override_until_unix.expect("an expiry");
    h.stop_daemon();
    h.start_daemon();
    let snapshot = h.status().await;
    assert!(snapshot.shaping.paused && snapshot.shaping.override_active);
    assert_eq!(snapshot.shaping.override_until_unix, Some(until));
    assert!(snapshot.shaping.reason.starts_with("override until"));
    let bytes = put(&h, "later.bin", 1 << 20, 4);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        h.get_object(&key("later.bin")).await.is_none(),
        "delivered during the override"
    );
    let snapshot = h.wait_drained(Duration::from_secs(20)).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now >= until, "drained before the override expired");
    assert!(!snapshot.shaping.override_active);
    assert!(h.get_object(&key("later.bin")).await == Some(bytes));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_daily_budget_pauses_the_drain_and_status_says_so() {
    let mut h = Harness::new(shaped("daily_budget = \"8MiB\"", 4)).await;
    h.start_daemon();
    let first = put(&h, "first.bin", 5 << 20, 5);
    h.wait_drained(Duration::from_secs(30)).await;
    assert!(h.get_object(&key("first.bin")).await == Some(first));
    // 5 + 5 MiB would overrun 8 MiB: the second file does not start.
    put(&h, "second.bin", 5 << 20, 6);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(h.get_object(&key("second.bin")).await.is_none());
    let shaping = h.status().await.shaping;
    assert!(shaping.paused, "{shaping:?}");
    assert!(
        shaping.reason.starts_with("daily budget spent until "),
        "{}",
        shaping.reason
    );
    let budget = shaping.daily_budget.expect("a daily budget");
    assert_eq!(budget.limit_bytes, 8 * MIB);
    assert!(budget.used_bytes >= 5 * MIB, "{budget:?}");
    // The count survives a restart (saved at shutdown).
    h.stop_daemon();
    h.start_daemon();
    let shaping = h.status().await.shaping;
    assert!(shaping.daily_budget.unwrap().used_bytes >= 5 * MIB);
    assert!(h.get_object(&key("second.bin")).await.is_none());
}

fn cli(h: &Harness, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sftpgw"))
        .arg("drain")
        .arg("-c")
        .arg(&h.config_path)
        .args(args)
        .output()
        .expect("run sftpgw drain")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_rate_via_the_cli_prints_the_result() {
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    let out = cli(&h, &["rate", "5MiB/s", "--for", "1h"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.starts_with("drain limited to 5MiB/s (override until "),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 1);
    assert_eq!(h.status().await.shaping.limit_bytes_per_sec, Some(5 * MIB));

    let out = cli(&h, &["pause"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout.trim(),
        "drain paused (override until `sftpgw drain resume`)"
    );

    let out = cli(&h, &["resume"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("override ended: drain unlimited ("),
        "{stdout}"
    );
    assert!(!h.status().await.shaping.override_active);

    let out = cli(&h, &["rate", "5 furlongs"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a rate"));
    let out = cli(&h, &["pause", "--for", "0s"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("longer than zero"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_into_a_paused_schedule_says_how_to_override() {
    let mut h = Harness::new(shaped(
        "rate = \"paused\"\nclock_unknown_rate = \"paused\"",
        4,
    ))
    .await;
    h.start_daemon();
    let out = cli(&h, &["resume"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("drain paused")
            && stdout.contains("to drain anyway: sftpgw drain rate RATE --for DURATION"),
        "{stdout}"
    );
}
