//! The spool: every user's namespace (directories and files) and the bytes of files that are
//! not yet delivered, on local disk. It owns the file lifecycle
//! (`receiving → partial → sealed → uploading → delivered | failed`), journals every change,
//! and acknowledges a CLOSE only once the data, the rename and the journal record are durable.
//!
//! The spool may use `journal`, `limits`, `num`, `names` and `telemetry`; it must not use
//! `sftp`, `drain`, `config` or `status`, which use it (`tests/architecture.rs` checks part of
//! this). The drain moves files through their upload states only through `uploads.rs`.

pub mod catalog;
pub mod deliveries;
mod engine;
mod handles;
pub mod identity;
mod pwrite;
mod recovery;
pub use catalog::{DeliveredRetention, InvalidTransition, StateCounts};
pub use recovery::{QUARANTINE_LISTED_COUNT_MAX, QuarantinedFile};
mod dir_sync;
mod pool;
mod store;
#[cfg(test)]
mod test_files;
mod uploads;
pub use uploads::{CreatedUpload, DeliveredObject, DeliveryError, NotCurrent};
mod uring;
pub mod vpath;

pub use engine::{EngineChoice, EngineError, SpoolEngine, SyncScope};
pub use handles::{ReadHandle, WriteHandle};
pub use pwrite::PwriteEngine;
pub use store::{Spool, SpoolOpenError, SpoolOptions, now_unix, watermark_refuses};
pub use uring::{ProbeError, UringEngine};
pub use vpath::VPath;

/// What one user may hold in the spool, not yet delivered: files (receiving, partial, sealed,
/// uploading, failed, conflict) and their bytes. `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// Bytes at most.
    pub bytes: Option<u64>,
    /// Files at most.
    pub files: Option<u64>,
}

/// Identifies one version of one file for its whole life, in the journal and in the spool.
pub type FileId = u64;

/// What went wrong with a namespace or file operation; mapped to SSH_FX_* in one place
/// (`sftp::wire::status_of`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsErrorKind {
    /// No such file or directory.
    NotFound,
    /// Refused by policy (the home directory, a delivered file's rename).
    PermissionDenied,
    /// The name is taken.
    AlreadyExists,
    /// The disk's reserve or watermark, or a quota of space.
    NoSpace,
    /// A file operation on a directory.
    IsADirectory,
    /// A directory operation on a file, or a file where a directory is needed.
    NotADirectory,
    /// `rmdir` of a directory with names below it.
    DirectoryNotEmpty,
    /// An operation the gateway does not offer.
    Unsupported,
    /// A name the server refuses (control characters, bidi overrides).
    BadName,
    /// Anything else; the message says what.
    Failure,
}

/// A namespace or file operation refused or failed: the kind a client is told and the
/// message it reads.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct FsError {
    /// What a client is told (one SSH_FX_* code).
    pub kind: FsErrorKind,
    /// What a person reads, with the name concerned.
    pub message: String,
}

impl FsError {
    /// An error of `kind` that says `message`.
    pub fn new(kind: FsErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Where a file is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    /// Open by a session, bytes arriving.
    Receiving,
    /// Its session ended without CLOSE; kept for a resume until `partial_ttl`.
    Partial,
    /// Closed and durable; waiting for the drain.
    Sealed,
    /// A multipart upload of it is recorded; the drain carries it on.
    Uploading,
    /// Verified in S3; the spool copy is freed, the listing kept a while.
    Delivered,
    /// A permanent S3 error; kept, retried on a long backoff or by `sftpgw retry`.
    Failed,
    /// `overwrite = "never"` found another object at the key: kept, alarmed, retried on
    /// `sftpgw retry` (after someone moved the other object away, say).
    Conflict,
}

impl FileState {
    /// The state's name as JSON and the command line spell it (`sealed`, `uploading`, ...).
    pub fn name(self) -> &'static str {
        match self {
            FileState::Receiving => "receiving",
            FileState::Partial => "partial",
            FileState::Sealed => "sealed",
            FileState::Uploading => "uploading",
            FileState::Delivered => "delivered",
            FileState::Failed => "failed",
            FileState::Conflict => "conflict",
        }
    }
}

/// The states of files not delivered, in the order status and `sftpgw files` list them:
/// what moves first (in flight, arriving), then what needs a look, then what waits.
pub const PENDING_STATES_LISTED: [FileState; 6] = [
    FileState::Uploading,
    FileState::Receiving,
    FileState::Failed,
    FileState::Conflict,
    FileState::Partial,
    FileState::Sealed,
];

/// What a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A file.
    File,
}

/// One name in a user's namespace, as `stat` and `readdir` report it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The last component of its path.
    pub name: String,
    /// Directory or file.
    pub kind: EntryKind,
    /// Bytes: the live size while receiving, 0 for a directory.
    pub size: u64,
    /// Seconds since the epoch (0 for a directory).
    pub mtime_unix: u64,
    /// `None` for directories.
    pub state: Option<FileState>,
}

/// How a file is opened for writing (from SFTP's pflags).
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenMode {
    /// SSH_FXF_TRUNC: start the file anew.
    pub truncate: bool,
    /// SSH_FXF_EXCL: fail if the name exists.
    pub exclusive: bool,
}

/// Space of the spool's filesystem, for statvfs@openssh.com.
#[derive(Debug, Clone, Copy)]
pub struct SpaceInfo {
    /// Bytes per block (the fragment size).
    pub block_size: u64,
    /// Blocks in the file system.
    pub blocks_total: u64,
    /// Blocks free.
    pub blocks_free: u64,
    /// Blocks free for an unprivileged process.
    pub blocks_avail: u64,
}
