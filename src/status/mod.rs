//! Status: one snapshot model of the gateway, the control socket that serves it, and its
//! text and JSON renderings for `sftpgw status`.
//!
//! This module knows nothing of the spool or the drain: the gateway fills a [`Snapshot`] and
//! answers [`control::Request`]s; renderers only read snapshots.

pub mod control;
pub mod render;

use serde::{Deserialize, Serialize};

use crate::spool::FileState;

/// Everything `sftpgw status` shows, taken at one moment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub version: String,
    pub uptime_secs: u64,
    /// Spool write engine in use ("pwrite" or "io_uring").
    pub engine: String,
    pub spool: SpoolUsage,
    pub drain: DrainSummary,
    /// Every file the gateway knows, oldest first.
    pub files: Vec<FileStatus>,
    /// The WAN shaper: limit, schedule window, override, budgets, clock.
    #[serde(default)]
    pub shaping: ShapingStatus,
}

/// What the drain's bandwidth shaper is doing now (`[shaping]` and `sftpgw drain ...`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ShapingStatus {
    /// No new part starts (schedule window `paused`, `sftpgw drain pause`, or a spent budget).
    pub paused: bool,
    /// The WAN limit in force, bytes per second; `None` is unlimited (and also while paused).
    pub limit_bytes_per_sec: Option<u64>,
    /// Upload body bytes per second actually sent, averaged over the last few seconds.
    pub rate_bytes_per_sec: u64,
    /// Why this limit applies, for people: "schedule mon-fri 08:00-18:00",
    /// "override until 14:30", "daily budget spent until 00:00", "clock unsynchronised: fallback".
    pub reason: String,
    /// A runtime override (`sftpgw drain pause|rate`) in force, and when it ends (`None`: until
    /// `sftpgw drain resume`).
    pub override_active: bool,
    pub override_until_unix: Option<u64>,
    /// When the limit changes next by the schedule or a budget period, if known.
    pub next_change_unix: Option<u64>,
    /// Whether the box's clock is trusted (NTP-synchronised, or confirmed by the S3 server's
    /// Date header); when it is not, the configured fallback applies.
    pub clock_synced: bool,
    pub daily_budget: Option<BudgetStatus>,
    pub monthly_budget: Option<BudgetStatus>,
}

/// A byte budget of one period (day or month, in the schedule's time zone).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BudgetStatus {
    pub limit_bytes: u64,
    pub used_bytes: u64,
    /// When the period ends and the budget is full again.
    pub resets_unix: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SpoolUsage {
    pub dir: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// Bytes of files waiting for delivery (sealed, uploading, failed).
    pub queue_bytes: u64,
    pub queue_files: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrainSummary {
    pub endpoint: String,
    pub bucket: String,
    pub bytes_sent: u64,
    pub parts_sent: u64,
    pub files_delivered: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileStatus {
    pub user: String,
    /// As the user sees it, `/dir/name`.
    pub path: String,
    pub state: FileState,
    pub size: u64,
    /// Object key in the bucket.
    pub key: String,
    pub parts_done: u64,
    pub parts_total: u64,
    /// The permanent error of a failed file, or the transient error being retried.
    pub error: Option<String>,
    pub mtime_unix: u64,
}
