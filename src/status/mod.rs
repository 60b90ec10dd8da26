//! Status: one snapshot model of the gateway, the control socket that serves it, and its
//! text and JSON renderings for `sftpgw status`.
//!
//! The gateway fills a [`Snapshot`] and answers [`control::Request`]s; renderers ([`render`],
//! [`metrics`]) only read snapshots. [`assess`] turns measurements into health and forecast;
//! [`offline`] builds a snapshot from the journal when the daemon is down.
//!
//! Status may read `spool`'s public types (states, counts, records), the defender's counts and bans
//! as data, `telemetry`, `names`, `config` and `num`, and `journal` read-only for [`offline`]. It
//! may not touch `drain` at all, nor `sftp` beyond those data types, nor change the spool: what a
//! request does is the gateway's handler, not status's.

pub mod assess;
pub mod control;
pub mod metrics;
pub mod offline;
pub mod rates;
pub mod render;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::num::u64_from_usize;
use crate::spool::FileState;
pub use crate::telemetry::ErrorEvent;

/// Everything `sftpgw status` shows, taken at one moment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    /// The daemon's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Seconds since the daemon started; 0 from the journal.
    pub uptime_secs: u64,
    /// Spool write engine in use ("pwrite" or "io_uring").
    pub engine: String,
    /// The spool's file system and what waits in it.
    pub spool: SpoolUsage,
    /// What the drain has sent and where to.
    pub drain: DrainSummary,
    /// Files the gateway knows, oldest first: every upload in flight and file arriving, then
    /// failed, partial and waiting ones, then the latest delivered, at most
    /// [`FILES_LISTED_COUNT_MAX`] in all. `file_counts` counts them all.
    pub files: Vec<FileStatus>,
    /// How many files are in each state (`None` from a daemon older than this field: count
    /// `files`). See [`Snapshot::counts`].
    #[serde(default)]
    pub file_counts: Option<FileCounts>,
    /// The WAN shaper: limit, schedule window, override, budgets, clock.
    #[serde(default)]
    pub shaping: ShapingStatus,
    /// Who made this snapshot: the running daemon, or `sftpgw status` replaying the journal
    /// because the daemon does not answer.
    #[serde(default)]
    pub source: SnapshotSource,
    /// OK, degraded or failing, and why.
    #[serde(default)]
    pub health: Health,
    /// Live SFTP sessions (subsystem channels).
    #[serde(default)]
    pub sftp_sessions: u64,
    /// Connections not logged in, logged-in connections, banned sources and refusals on the
    /// SSH port (`None` from a daemon older than this field, or without one).
    #[serde(default)]
    pub lan: Option<crate::sftp::defender::DefenderCounts>,
    /// Ingest and drain rates, and what they mean for the spool.
    #[serde(default)]
    pub rates: Rates,
    /// Files waiting for delivery.
    #[serde(default)]
    pub queue: QueueStatus,
    /// The last errors, newest first (at most `telemetry::RECENT_ERRORS_COUNT_MAX`).
    #[serde(default)]
    pub errors: Vec<ErrorEvent>,
    /// Reachability of the S3 store and its clock.
    #[serde(default)]
    pub s3: S3Status,
    /// Counters since the daemon started, for metrics.
    #[serde(default)]
    pub counters: Counters,
}

/// Files a snapshot lists at most: status, health and metrics cost the same with ten files or
/// a million.
pub const FILES_LISTED_COUNT_MAX: usize = 256;

/// Files one page of `sftpgw files` holds at most (the request's `limit` is cut to it): a
/// reply stays a few hundred KiB and the catalog lock is held for a page, not a list.
pub const FILES_PAGE_COUNT_MAX: usize = 1000;

/// Files per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCounts {
    /// Files being written by an SFTP client.
    pub receiving: u64,
    /// Files left unfinished by a client, kept until they expire.
    pub partial: u64,
    /// Files complete and waiting for the drain.
    pub sealed: u64,
    /// Files being uploaded.
    pub uploading: u64,
    /// Files delivered and still remembered (see `spool.delivered_retention`).
    pub delivered: u64,
    /// Files that failed for good, waiting for `sftpgw retry`.
    pub failed: u64,
    /// Files whose key already holds another object.
    pub conflict: u64,
}

impl FileCounts {
    /// The count of one state.
    pub fn get(&self, state: FileState) -> u64 {
        match state {
            FileState::Receiving => self.receiving,
            FileState::Partial => self.partial,
            FileState::Sealed => self.sealed,
            FileState::Uploading => self.uploading,
            FileState::Delivered => self.delivered,
            FileState::Failed => self.failed,
            FileState::Conflict => self.conflict,
        }
    }

    fn slot(&mut self, state: FileState) -> &mut u64 {
        match state {
            FileState::Receiving => &mut self.receiving,
            FileState::Partial => &mut self.partial,
            FileState::Sealed => &mut self.sealed,
            FileState::Uploading => &mut self.uploading,
            FileState::Delivered => &mut self.delivered,
            FileState::Failed => &mut self.failed,
            FileState::Conflict => &mut self.conflict,
        }
    }

    /// Counted from the spool's index.
    pub fn from_spool(c: &crate::spool::StateCounts) -> FileCounts {
        let mut out = FileCounts::default();
        for state in crate::spool::catalog::STATES {
            *out.slot(state) = u64_from_usize(c.files(state));
        }
        out
    }

    /// Counted from a list of files.
    pub fn of_files(files: &[FileStatus]) -> FileCounts {
        let mut out = FileCounts::default();
        for f in files {
            *out.slot(f.state) += 1;
        }
        out
    }
}

impl Snapshot {
    /// Files per state: all of them, not only those listed.
    pub fn counts(&self) -> FileCounts {
        self.file_counts
            .unwrap_or_else(|| FileCounts::of_files(&self.files))
    }
}

/// Who made a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotSource {
    /// The running daemon.
    #[default]
    Daemon,
    /// The daemon is not running: read from the spool's journal (no rates, sessions, S3).
    Journal,
}

/// How the gateway is doing, worst last.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthLevel {
    /// Doing its job.
    #[default]
    Ok,
    /// Working, but something needs attention (S3 unreachable, failed files, clock, retries).
    Degraded,
    /// Not doing its job (a task died, uploads refused, spool write errors, daemon down).
    Failing,
}

/// The health level and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The worst level any reason gives.
    pub level: HealthLevel,
    /// Why, one short sentence each, worst first.
    pub reasons: Vec<String>,
}

/// Ingest and drain rates and the forecast they make.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    /// SFTP file bytes written to the spool per second, averaged over `window_secs`.
    pub ingest_bytes_per_sec: u64,
    /// Bytes sent to S3 per second (finished parts), averaged over `window_secs`.
    pub drain_bytes_per_sec: u64,
    /// Seconds the averages span (less than a minute just after start).
    pub window_secs: u64,
    /// When the spool fills at these rates.
    pub forecast: Forecast,
}

/// What the current rates mean for the spool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Forecast {
    /// Not known (no rates yet, or no daemon).
    #[default]
    Unknown,
    /// Nothing arrives and nothing drains.
    Idle,
    /// The drain keeps up: the spool does not fill.
    DrainingFaster,
    /// At current rates uploads are refused (high watermark) in this many seconds.
    FullIn {
        /// Seconds until the high watermark.
        secs: u64,
    },
}

/// The states of files waiting for delivery.
pub const WAITING_STATES: [FileState; 4] = [
    FileState::Sealed,
    FileState::Uploading,
    FileState::Failed,
    FileState::Conflict,
];

impl QueueStatus {
    /// The queue from the spool's counts per state; `oldest_mtime` gives the seal time of the
    /// oldest file in a state (the lowest id), so nothing scans the queue.
    pub fn from_counts(
        counts: &crate::spool::StateCounts,
        now_unix: u64,
        oldest_mtime: impl Fn(FileState) -> Option<u64>,
    ) -> QueueStatus {
        QueueStatus {
            files: WAITING_STATES
                .iter()
                .map(|s| u64_from_usize(counts.files(*s)))
                .sum(),
            bytes: WAITING_STATES.iter().map(|s| counts.bytes(*s)).sum(),
            oldest_age_secs: WAITING_STATES
                .iter()
                .filter_map(|s| oldest_mtime(*s))
                .map(|m| now_unix.saturating_sub(m))
                .max(),
        }
    }
}

/// The files waiting for delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStatus {
    /// Files waiting for delivery (sealed, uploading, failed) and their bytes.
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
    /// Age of the oldest of them, seconds since it was sealed.
    pub oldest_age_secs: Option<u64>,
}

/// What the drain's observer saw of the S3 endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct S3Status {
    /// Whether the last request got an answer; `None` before the first one.
    pub reachable: Option<bool>,
    /// When the last request was made, Unix seconds.
    pub last_request_unix: Option<u64>,
    /// Why the last request got no answer.
    pub last_error: Option<String>,
    /// S3 `Date` header − our clock, seconds; SigV4 fails beyond 900 s.
    pub clock_skew_secs: Option<f64>,
    /// When the skew was measured, Unix seconds.
    pub clock_skew_measured_unix: Option<u64>,
}

/// Counters since the daemon started, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// File bytes received over SFTP.
    pub bytes_received: u64,
    /// S3 requests retried after a transient error.
    pub s3_retries: u64,
    /// Errors by kind (`s3_transient`, `s3_permanent`, `spool_write`).
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Journal records that did not fit their file's state, refused by the catalog (each is a
    /// bug; the first of each kind is in the log). 0 from a daemon older than this field.
    #[serde(default)]
    pub invalid_transitions: u64,
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
    /// When the override ends, Unix seconds.
    pub override_until_unix: Option<u64>,
    /// When the limit changes next by the schedule or a budget period, if known.
    pub next_change_unix: Option<u64>,
    /// Whether the box's clock is trusted (NTP-synchronised, or confirmed by the S3 server's
    /// Date header); when it is not, the configured fallback applies.
    pub clock_synced: bool,
    /// Today's byte budget, if one is set.
    pub daily_budget: Option<BudgetStatus>,
    /// This month's byte budget, if one is set.
    pub monthly_budget: Option<BudgetStatus>,
}

/// A byte budget of one period (day or month, in the schedule's time zone).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BudgetStatus {
    /// Bytes the period allows.
    pub limit_bytes: u64,
    /// Bytes sent in the period so far.
    pub used_bytes: u64,
    /// When the period ends and the budget is full again.
    pub resets_unix: u64,
}

/// The spool's file system and what waits in it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SpoolUsage {
    /// The spool directory.
    pub dir: String,
    /// Size of the file system holding it.
    pub total_bytes: u64,
    /// Free bytes on that file system (including the reserve).
    pub free_bytes: u64,
    /// Bytes of files waiting for delivery (sealed, uploading, failed).
    pub queue_bytes: u64,
    /// Files waiting for delivery.
    pub queue_files: u64,
}

/// What the drain has sent since the daemon started, and where to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrainSummary {
    /// The S3 endpoint, or `AWS` for the default.
    pub endpoint: String,
    /// The bucket files go to.
    pub bucket: String,
    /// Bytes of finished parts and single PUTs.
    pub bytes_sent: u64,
    /// Parts and single PUTs sent.
    pub parts_sent: u64,
    /// Files delivered and verified.
    pub files_delivered: u64,
}

/// How status shows one file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileStatus {
    /// The SFTP user who uploaded it.
    pub user: String,
    /// As the user sees it, `/dir/name`.
    pub path: String,
    /// Where the file is in its life.
    pub state: FileState,
    /// Bytes: received so far while arriving, the sealed size after.
    pub size: u64,
    /// Object key in the bucket.
    pub key: String,
    /// Parts finished in S3.
    pub parts_done: u64,
    /// Parts the upload needs (1 for a single PUT).
    pub parts_total: u64,
    /// The permanent error of a failed file, or the transient error being retried.
    pub error: Option<String>,
    /// The file's modification time, Unix seconds: when it was sealed, once it is.
    pub mtime_unix: u64,
    /// Bytes already in S3 (finished parts), for the progress bar.
    #[serde(default)]
    pub bytes_done: u64,
    /// Seconds until delivered at the current drain rate, while uploading.
    #[serde(default)]
    pub eta_secs: Option<u64>,
    /// The spool's id of the file (ids grow with each upload): `sftpgw files --after ID` goes
    /// on after it. 0 from a daemon older than this field.
    #[serde(default)]
    pub id: u64,
}

impl FileStatus {
    /// The status of one catalog record. `size` is the live size for a file still arriving;
    /// `retrying` the transient error being retried, if any.
    pub fn from_record(
        f: &crate::spool::catalog::FileRecord,
        key: String,
        size: u64,
        default_part_size: u64,
        retrying: Option<String>,
    ) -> FileStatus {
        let part_size = f.upload.as_ref().map_or(default_part_size, |u| u.part_size);
        let parts_done = f
            .upload
            .as_ref()
            .map_or(0, |u| u64_from_usize(u.parts.len()));
        let parts_total = if f.size >= part_size {
            f.size.div_ceil(part_size)
        } else {
            1
        };
        let bytes_done = f.bytes_sent();
        FileStatus {
            user: f.user.clone(),
            path: f.path.display(),
            state: f.state,
            size,
            key,
            parts_done,
            parts_total,
            error: f.last_error.clone().or(retrying),
            mtime_unix: f.mtime_unix,
            bytes_done,
            eta_secs: None,
            id: f.id,
        }
    }
}
