//! `spool.engine` reaches the running daemon: `sftpgw status` names the engine in use.

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

use common::{Harness, Options};

/// Starts a daemon with `engine_line` added to `[spool]` and returns its status's engine.
async fn engine_in_status(engine_line: &str) -> (String, String) {
    let mut h = Harness::new(Options::default()).await;
    let config = std::fs::read_to_string(&h.config_path).expect("read config");
    let config = config.replacen("[spool]\n", &format!("[spool]\n{engine_line}\n"), 1);
    std::fs::write(&h.config_path, config).expect("write config");
    h.start_daemon();
    let engine = h.status().await.engine;
    h.stop_daemon();
    (engine, h.log())
}

fn io_uring_available() -> bool {
    // The same probe the daemon runs, without starting one.
    match sftpgw::spool::UringEngine::start() {
        Ok(_) => true,
        Err(err) => {
            eprintln!("io_uring is unavailable on this machine: {err}");
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_pwrite_when_configured() {
    let (engine, log) = engine_in_status("engine = \"pwrite\"").await;
    assert_eq!(engine, "pwrite");
    assert!(
        log.contains("spool engine: pwrite (configured)"),
        "log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_engine_auto_picked() {
    let (engine, log) = engine_in_status("").await;
    if io_uring_available() {
        assert_eq!(engine, "io_uring");
    } else {
        assert_eq!(engine, "pwrite");
        assert!(
            log.contains("because io_uring is unavailable"),
            "log:\n{log}"
        );
    }
}
