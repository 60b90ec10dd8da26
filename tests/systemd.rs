//! The daemon under systemd's eyes: READY=1 once it serves, STATUS= a summary, and WATCHDOG=1
//! only while its health check passes. systemd is played by a datagram socket in
//! `NOTIFY_SOCKET`, with `WATCHDOG_USEC` set as systemd sets it for `WatchdogSec=`.

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

use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Harness, Options};

/// Collects every notification the daemon sends, as (arrival, text).
fn listen(sock: UnixDatagram) -> mpsc::Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if tx.send((Instant::now(), text)).is_err() {
                return;
            }
        }
    });
    rx
}

/// Notifications received within `d`.
fn gather(rx: &mpsc::Receiver<(Instant, String)>, d: Duration) -> Vec<String> {
    let end = Instant::now() + d;
    let mut got = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((_, text)) => got.push(text),
            Err(_) => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_then_watchdog_pings_only_while_healthy() {
    let mut h = Harness::new(Options::default()).await;
    let path = h.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind notify socket");
    let rx = listen(sock);
    h.start_daemon_with_env(&[
        ("NOTIFY_SOCKET", path.as_os_str()),
        ("WATCHDOG_USEC", "200000".as_ref()),
    ]);

    let first = gather(&rx, Duration::from_millis(1500));
    assert!(
        first.first().is_some_and(|m| m.contains("READY=1")),
        "READY=1 first: {first:?}"
    );
    let pings = first.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(pings >= 3, "a ping every 100 ms while healthy: {first:?}");
    assert!(
        first
            .iter()
            .any(|m| m.contains("STATUS=ok: queue 0 files") && m.contains("engine")),
        "{first:?}"
    );

    // Break what the health check depends on: the control socket disappears.
    std::fs::remove_file(&h.socket).expect("remove control socket");
    let _ = gather(&rx, Duration::from_millis(300)); // a check may be under way
    let after = gather(&rx, Duration::from_millis(1000));
    assert!(
        !after.iter().any(|m| m.contains("WATCHDOG=1")),
        "no pings once unhealthy: {after:?}"
    );
    assert!(
        after
            .iter()
            .any(|m| m.contains("STATUS=unhealthy: control socket")),
        "status says why: {after:?}"
    );
    h.kill_daemon();
}
