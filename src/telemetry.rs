//! Process-wide operating counters and the ring of recent errors, for `sftpgw status` and the
//! Prometheus metrics.
//!
//! Errors and byte counts arise in every layer (SFTP sessions, spool writes, S3 calls); a handle
//! threaded through each constructor would touch every layer for numbers that only status
//! reads. So, like a metrics registry, this is one static set per process: a leaf that any
//! module may record into and only `status` (and the gateway's snapshot) reads. Counters only
//! ever grow; the ring keeps the last [`RECENT_ERRORS_COUNT_MAX`] errors.
//!
//! A leaf: it uses nothing of the crate, so that every layer may record into it without a cycle.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Errors kept for `sftpgw status` (the screen shows the newest few).
pub const RECENT_ERRORS_COUNT_MAX: usize = 10;
/// Longest cause text kept per error; longer ones are cut (S3 messages can be long).
pub const ERROR_CAUSE_BYTES_MAX: usize = 512;

/// What went wrong, as a metric label (`sftpgw_errors_total{kind=...}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A transient S3 error (timeout, connection, 5xx): retried.
    S3Transient,
    /// A permanent S3 error: the file became `failed`.
    S3Permanent,
    /// A spool write or seal failed (disk full, I/O error): the upload was refused.
    SpoolWrite,
    /// An SSH client found no algorithm in common with `sftp.algorithms`.
    SshNegotiation,
}

impl ErrorKind {
    /// Every kind, in the order metrics list them.
    pub const ALL: [ErrorKind; 4] = [
        ErrorKind::S3Transient,
        ErrorKind::S3Permanent,
        ErrorKind::SpoolWrite,
        ErrorKind::SshNegotiation,
    ];

    /// The kind as a metric label and a JSON name, `s3_transient`.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::S3Transient => "s3_transient",
            ErrorKind::S3Permanent => "s3_permanent",
            ErrorKind::SpoolWrite => "spool_write",
            ErrorKind::SshNegotiation => "ssh_negotiation",
        }
    }

    fn index(self) -> usize {
        match self {
            ErrorKind::S3Transient => 0,
            ErrorKind::S3Permanent => 1,
            ErrorKind::SpoolWrite => 2,
            ErrorKind::SshNegotiation => 3,
        }
    }
}

/// One error, as the status screen lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEvent {
    /// When it happened, Unix seconds.
    pub at_unix: u64,
    /// What went wrong, broadly.
    pub kind: ErrorKind,
    /// `user:/path` of the file concerned, if any.
    pub file: Option<String>,
    /// The error's message, cut to `ERROR_CAUSE_BYTES_MAX` bytes.
    pub cause: String,
}

static SFTP_SESSIONS_LIVE: AtomicU64 = AtomicU64::new(0);
static SFTP_BYTES_RECEIVED: AtomicU64 = AtomicU64::new(0);
static S3_RETRIES: AtomicU64 = AtomicU64::new(0);
static ERRORS_BY_KIND: [AtomicU64; ErrorKind::ALL.len()] =
    [const { AtomicU64::new(0) }; ErrorKind::ALL.len()];
static RECENT_ERRORS: Mutex<VecDeque<ErrorEvent>> = Mutex::new(VecDeque::new());

/// Counts one live SFTP session for as long as it is held.
#[must_use]
pub struct SessionGuard(());

impl SessionGuard {
    /// Counts one more live session until the guard is dropped.
    pub fn enter() -> SessionGuard {
        SFTP_SESSIONS_LIVE.fetch_add(1, Ordering::Relaxed);
        SessionGuard(())
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        SFTP_SESSIONS_LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The box's host name (what the console, the banner and delivery records call the box).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "sftpgw".to_owned())
}

/// SFTP sessions open now.
pub fn sftp_sessions_live() -> u64 {
    SFTP_SESSIONS_LIVE.load(Ordering::Relaxed)
}

/// File bytes written to the spool by SFTP clients.
pub fn add_bytes_received(n: u64) {
    SFTP_BYTES_RECEIVED.fetch_add(n, Ordering::Relaxed);
}

/// File bytes received over SFTP since the process started.
pub fn bytes_received() -> u64 {
    SFTP_BYTES_RECEIVED.load(Ordering::Relaxed)
}

/// One S3 request retried after a transient error.
pub fn add_s3_retry() {
    S3_RETRIES.fetch_add(1, Ordering::Relaxed);
}

/// S3 requests retried since the process started.
pub fn s3_retries() -> u64 {
    S3_RETRIES.load(Ordering::Relaxed)
}

/// Counts an error and keeps it in the ring of recent errors.
pub fn record_error(kind: ErrorKind, file: Option<String>, cause: &str) {
    ERRORS_BY_KIND[kind.index()].fetch_add(1, Ordering::Relaxed);
    let mut cause = cause.to_owned();
    if cause.len() > ERROR_CAUSE_BYTES_MAX {
        let mut cut = ERROR_CAUSE_BYTES_MAX;
        while !cause.is_char_boundary(cut) {
            cut -= 1;
        }
        cause.truncate(cut);
    }
    let event = ErrorEvent {
        at_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        kind,
        file,
        cause,
    };
    let mut ring = RECENT_ERRORS.lock().unwrap_or_else(|p| p.into_inner());
    if ring.len() == RECENT_ERRORS_COUNT_MAX {
        ring.pop_front();
    }
    ring.push_back(event);
}

/// Errors of `kind` since the process started.
pub fn errors_total(kind: ErrorKind) -> u64 {
    ERRORS_BY_KIND[kind.index()].load(Ordering::Relaxed)
}

/// The recent errors, newest first.
pub fn recent_errors() -> Vec<ErrorEvent> {
    let ring = RECENT_ERRORS.lock().unwrap_or_else(|p| p.into_inner());
    ring.iter().rev().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_ring_keeps_the_newest_and_counts_every_one() {
        let before = errors_total(ErrorKind::SpoolWrite);
        for i in 0..RECENT_ERRORS_COUNT_MAX + 5 {
            record_error(ErrorKind::SpoolWrite, None, &format!("ring test {i}"));
        }
        record_error(
            ErrorKind::SpoolWrite,
            None,
            &"x".repeat(ERROR_CAUSE_BYTES_MAX * 2),
        );
        assert_eq!(
            errors_total(ErrorKind::SpoolWrite) - before,
            RECENT_ERRORS_COUNT_MAX as u64 + 6
        );
        let recent = recent_errors();
        assert_eq!(recent.len(), RECENT_ERRORS_COUNT_MAX);
        assert_eq!(recent[0].cause.len(), ERROR_CAUSE_BYTES_MAX);
        assert_eq!(
            recent[1].cause,
            format!("ring test {}", RECENT_ERRORS_COUNT_MAX + 4)
        );
    }
}
