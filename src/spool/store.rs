//! [`Spool`]: the catalog behind a mutex, the journal that makes it durable, and the spool
//! directory that holds the bytes.
//!
//! Every change follows one pattern: under the catalog lock, validate, [`Catalog::apply`] the
//! records and submit them to the journal (so journal order equals apply order); then, outside
//! the lock, wait for durability where the change is acknowledged to a client, and carry out the
//! [`Effects`](super::catalog::Effects) (free spool files, hand uploads to abort to the drain).
//!
//! Layout of `dir`: `journal` (the log), `partial/<id>` (receiving or partial files),
//! `sealed/<id>` (acknowledged files awaiting delivery).
//!
//! This file holds the [`Spool`] itself, its options and its paths; each concept of its API
//! is a module below: `opening` (replay and recovery at start), `commit` (the one way a
//! change reaches the catalog and the journal), `compaction`, `namespace` (what SFTP sees),
//! `admission` (quotas and disk space), `receiving` (live sizes of files being written),
//! `queries` (copies of the catalog for the drain and status), `handoff` (what the drain
//! must take), `retention` and `retry`.
//!
//! The spool may use `journal`, `limits`, `num`, `names` and `telemetry`; it must not use
//! `sftp`, `drain`, `config` or `status` (they use it).

mod admission;
mod commit;
mod compaction;
mod handoff;
mod namespace;
mod opening;
mod queries;
mod receiving;
mod retention;
mod retry;

pub use admission::watermark_refuses;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::Flock;
use tokio::sync::Notify;

use super::catalog::{Catalog, DeliveredRetention, Record};
use super::dir_sync::DirSync;
use super::engine::{EngineError, SpoolEngine};
use super::handles::Live;
use super::pool::FilePool;
use super::recovery::RecoveryState;
use super::{FileId, FsError, FsErrorKind};
use crate::journal::{Journal, JournalError};

/// How the spool is set up.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// The spool directory (journal, `partial/`, `sealed/`, ...).
    pub dir: PathBuf,
    /// How long a partial file (its session gone without CLOSE) is kept for a resume.
    pub partial_ttl: Duration,
    /// Writes are refused with "No space left on device" when fewer bytes than this are free,
    /// so that the journal and the files already acknowledged always have room.
    pub reserve_bytes: u64,
    /// Files that arrive in order are hashed (SHA-256) as they arrive while at most this long;
    /// longer ones are hashed by the drain if their object needs it (not an early upload).
    pub hash_bytes_max: u64,
    /// New uploads are refused once the spool's file system is at least this full (percent of
    /// its size, as `df` counts it) ...
    pub high_watermark_percent: u8,
    /// ... until it is below this again. 100/100 turns the gate off (the reserve still holds).
    pub low_watermark_percent: u8,
    /// A WRITE that would make a file longer than this fails ("file too large"), sparse
    /// writes far past the end included.
    pub max_file_size: u64,
    /// How many delivered files, and for how long, stay listed.
    pub delivered_retention: DeliveredRetention,
}

impl SpoolOptions {
    /// A spool in `dir` that refuses nothing for space or size (no reserve, no watermark gate,
    /// every file hashed, partial files kept an hour, default retention): for tests, tools
    /// and fuzzing, where the limits are not what is tested.
    pub fn unlimited(dir: PathBuf) -> SpoolOptions {
        SpoolOptions {
            dir,
            partial_ttl: Duration::from_secs(3600),
            reserve_bytes: 0,
            hash_bytes_max: u64::MAX,
            high_watermark_percent: 100,
            low_watermark_percent: 100,
            max_file_size: u64::MAX,
            delivered_retention: DeliveredRetention::default(),
        }
    }
}

/// The spool of one gateway, shared by every session and the drain.
pub struct Spool {
    /// Held for the spool's life (flock on `dir/lock`).
    _dir_lock: Flock<fs::File>,
    opts: SpoolOptions,
    /// Writes and syncs the bytes of files being received.
    engine: SpoolEngine,
    partial_dir: PathBuf,
    sealed_dir: PathBuf,
    /// Group commit of `sealed/` and `partial/` fsyncs for CLOSEs (see `dir_sync.rs`).
    dir_sync: DirSync,
    /// Empty files created ahead of OPEN (see `pool.rs`).
    pool: FilePool,
    catalog: Mutex<Catalog>,
    journal: Journal<Record>,
    next_id: AtomicU64,
    /// Journal size that triggers the next compaction.
    compact_above_bytes: AtomicU64,
    /// Journal size when the last compaction was asked for (`u64::MAX`: none asked yet). Until
    /// the writer has run it the journal stays that long, and it must not be asked for again.
    compaction_asked_at_bytes: AtomicU64,
    /// Each user's quota, if any (`set_quotas`): one entry per configured user at most.
    quotas: Mutex<HashMap<String, super::Quota>>,
    /// Files freed by applied records and not unlinked yet (see `compact_if_due`). Bounded by
    /// the commits between their apply and their unlinks (each removes its ids), plus those of
    /// commits dropped in between, which the next compaction takes over and empties.
    unlinks_pending: Mutex<HashSet<FileId>>,
    /// Live sizes of files being received, by id.
    live: Mutex<HashMap<FileId, Arc<Live>>>,
    /// Multipart uploads the drain must abort (key, upload id).
    aborts: Mutex<Vec<(String, String)>>,
    /// Keys whose unknown open uploads the drain must look for and abort (see
    /// `Effects::stray_searches`). Bounded by the removals of files with an unresolved intent
    /// since the drain last took them (it takes all at each wake; at start, those the journal
    /// replays), each with at most `UPLOAD_INTENTS_PER_FILE_COUNT_MAX` keys.
    stray_searches: Mutex<Vec<String>>,
    /// Wakes the drain when there is new work.
    work: Notify,
    /// A file being received whose append frontier reaches this many bytes wakes the drain
    /// (its first early part is ready); `u64::MAX`, never, until the drain sets it.
    early_wake_bytes: AtomicU64,
    /// New uploads are refused: the spool reached its high watermark and has not yet gone
    /// below its low one.
    refusing: AtomicBool,
    /// Damaged-journal copies and the quarantine's size, for the alarms (`recovery`).
    recovery: RecoveryState,
    /// One line per delivered file, written before the journal records it (`deliveries.rs`).
    pub(super) deliveries: Arc<super::deliveries::DeliveryLog>,
    /// The host name, recorded with every delivery.
    pub(super) box_name: String,
}

/// Seconds since the epoch, for records and listings.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Maps an I/O error to what a client is told; ENOSPC and EDQUOT become NoSpace.
pub(super) fn io_error(context: &str, err: &io::Error) -> FsError {
    match err.raw_os_error() {
        Some(nix::libc::ENOSPC | nix::libc::EDQUOT) => no_space(),
        _ => FsError::new(FsErrorKind::Failure, format!("{context}: {err}")),
    }
}

pub(super) fn no_space() -> FsError {
    FsError::new(FsErrorKind::NoSpace, "No space left on device")
}

/// A journal that cannot be written means nothing more can be acknowledged. The process stops
/// so that its supervisor restarts it and replay recovers the last durable state.
fn journal_broken(err: &JournalError) -> ! {
    tracing::error!(error = %err, "journal write failed; stopping so that replay recovers");
    std::process::abort();
}

/// Durably syncs a directory's entries.
pub(super) fn fsync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

impl Spool {
    pub(super) fn lock(&self) -> MutexGuard<'_, Catalog> {
        // A poisoned lock means a panic while mutating the catalog: with panic = "abort" that
        // cannot happen in the daemon; in tests the state is still consistent enough to read.
        self.catalog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How the spool was set up.
    pub fn options(&self) -> &SpoolOptions {
        &self.opts
    }

    /// The engine that writes and syncs files being received.
    pub(super) fn engine(&self) -> &SpoolEngine {
        &self.engine
    }

    /// "io_uring" or "pwrite", for status.
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// Where the bytes of a file being received (or partial) are.
    pub fn partial_path(&self, id: FileId) -> PathBuf {
        self.partial_dir.join(id.to_string())
    }

    /// Where the bytes of a sealed file are, for the drain.
    pub fn sealed_path(&self, id: FileId) -> PathBuf {
        self.sealed_dir.join(id.to_string())
    }

    /// A new, empty file at `path` (in `partial/`): one from the pool if it has one, else
    /// created now.
    pub(super) fn create_spool_file(&self, path: &Path) -> io::Result<fs::File> {
        if let Some(pooled) = self.pool.take() {
            let cwd = rustix::fs::CWD;
            let flags = rustix::fs::RenameFlags::NOREPLACE;
            match rustix::fs::renameat_with(cwd, &pooled.path, cwd, path, flags) {
                Ok(()) => return Ok(pooled.file),
                Err(e) => {
                    // (A file system without RENAME_NOREPLACE, say: creating works all the same.)
                    tracing::debug!(error = %e, "cannot take a pooled spool file");
                    let _ = fs::remove_file(&pooled.path);
                }
            }
        }
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
    }

    pub(super) fn dir_sync(&self) -> &DirSync {
        &self.dir_sync
    }

    pub(super) fn sealed_dir(&self) -> &Path {
        &self.sealed_dir
    }

    pub(super) fn partial_dir(&self) -> &Path {
        &self.partial_dir
    }

    pub(super) fn recovery_state(&self) -> &RecoveryState {
        &self.recovery
    }

    pub(super) fn journal(&self) -> &Journal<Record> {
        &self.journal
    }

    /// The id the next new file version will get: every file known now has a lower one.
    pub fn next_file_id(&self) -> FileId {
        self.next_id.load(Ordering::Relaxed)
    }

    pub(super) fn new_id(&self) -> FileId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The box's host name, recorded with every delivery.
    pub fn box_name(&self) -> &str {
        &self.box_name
    }
}

/// Why the spool could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SpoolOpenError {
    /// The directory, or a file in it, could not be made or read.
    #[error("{0}: {1}")]
    Io(PathBuf, io::Error),
    /// The journal could not be opened or replayed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Another process holds the spool's lock.
    #[error("{0} is in use by another sftpgw process")]
    Locked(PathBuf),
    #[error(transparent)]
    /// The engine asked for could not be started.
    Engine(#[from] EngineError),
}
