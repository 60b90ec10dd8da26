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
