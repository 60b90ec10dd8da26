//! `sftpgw status` while the daemon is down: a [`Snapshot`] built by replaying the spool's
//! journal read-only.
//!
//! Nothing is written or locked: the journal is read in one go (a torn tail is skipped, as
//! replay at start would), no file is created, renamed or truncated, so that a daemon starting
//! meanwhile finds the spool exactly as it left it. Receiving files show as partial, as the
//! next start will make them.
//!
//! May use `journal::replay` and `spool::catalog` to rebuild the state in memory; may not open the
//! spool (`Spool::open` locks, replays and writes) nor touch the drain.

use std::path::Path;

use super::{FileStatus, Health, HealthLevel, QueueStatus, Snapshot, SnapshotSource, SpoolUsage};
use crate::config::Config;
use crate::journal::replay::decode_all;
use crate::num::u64_from_usize;
use crate::spool::FileState;
use crate::spool::catalog::{Catalog, FileRecord, Record};

/// Largest journal read for an offline status; compaction keeps journals far below.
pub const OFFLINE_JOURNAL_BYTES_MAX: u64 = 1 << 30;

/// Why no snapshot could be built from the journal.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// The journal could not be read (path, cause).
    #[error("cannot read the journal {0}: {1} (is `spool.dir` right?)")]
    Read(String, std::io::Error),
    /// The journal is not one this version can replay (path, what is wrong).
    #[error("{0} is not a readable sftpgw journal: {1}")]
    Format(String, String),
    /// The journal is larger than the bound given (path, bound in bytes).
    #[error("the journal {0} is larger than {1} bytes; not read")]
    TooLarge(String, u64),
}

/// The snapshot the journal under `config.spool.dir` describes, with health `failing: daemon
/// not running`.
pub fn snapshot_from_journal(config: &Config) -> Result<Snapshot, OfflineError> {
    let mut catalog = replay(config)?;
    let now = crate::spool::now_unix();
    catalog.prune_delivered(now);
    let counts = catalog.counts();
    let queue = QueueStatus::from_counts(&counts, now, |state| {
        catalog.in_state(state).next().map(|f| f.mtime_unix)
    });
    let failed = counts.files(FileState::Failed);
    let files = listed_files(&catalog, config);
    let (total, free) = spool_fs_bytes(&config.spool.dir);
    let mut reasons = vec!["daemon not running (status from the journal)".to_owned()];
    if failed > 0 {
        reasons.push(format!(
            "{failed} failed file(s): see below, `sftpgw retry`"
        ));
    }
    Ok(Snapshot {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_secs: 0,
        engine: "none (daemon not running)".to_owned(),
        spool: SpoolUsage {
            dir: config.spool.dir.display().to_string(),
            total_bytes: total,
            free_bytes: free,
            queue_bytes: queue.bytes,
            queue_files: queue.files,
        },
        drain: super::DrainSummary {
            endpoint: config.s3.endpoint_label(),
            bucket: config.s3.bucket.clone(),
            bytes_sent: 0,
            parts_sent: 0,
            files_delivered: u64_from_usize(counts.files(FileState::Delivered)),
        },
        files,
        file_counts: Some(super::FileCounts::from_spool(&counts)),
        shaping: Default::default(),
        source: SnapshotSource::Journal,
        health: Health {
            level: HealthLevel::Failing,
            reasons,
        },
        sftp_sessions: 0,
        lan: None,
        rates: Default::default(),
        queue,
        errors: Vec::new(),
        s3: Default::default(),
        counters: Default::default(),
    })
}

/// The catalog the journal under `config.spool.dir` leaves once replayed, as a start would.
fn replay(config: &Config) -> Result<Catalog, OfflineError> {
    let path = config.spool.dir.join("journal");
    let shown = path.display().to_string();
    let records = read_records(&path).map_err(|e| match e {
        ReadError::Io(e) => OfflineError::Read(shown.clone(), e),
        ReadError::Format(m) => OfflineError::Format(shown.clone(), m),
        ReadError::TooLarge => OfflineError::TooLarge(shown.clone(), OFFLINE_JOURNAL_BYTES_MAX),
    })?;
    let mut catalog = Catalog::with_retention(config.spool.delivered_retention);
    for r in &records {
        // A record that does not fit its file's state is skipped, as the daemon's replay skips
        // (and counts) it.
        let _ = catalog.apply(r);
    }
    catalog.end_replay();
    Ok(catalog)
}

/// The files status lists, as the daemon lists them: pending files first, then the latest
/// delivered, a bounded list, oldest first.
fn listed_files(catalog: &Catalog, config: &Config) -> Vec<FileStatus> {
    let mut recs: Vec<&FileRecord> = Vec::new();
    for state in [
        FileState::Uploading,
        FileState::Failed,
        FileState::Conflict,
        FileState::Partial,
        FileState::Sealed,
    ] {
        let room = super::FILES_LISTED_COUNT_MAX.saturating_sub(recs.len());
        recs.extend(catalog.in_state(state).filter(|f| !f.hidden).take(room));
    }
    let room = super::FILES_LISTED_COUNT_MAX.saturating_sub(recs.len());
    recs.extend(catalog.recently_delivered().take(room));
    recs.sort_by_key(|f| (f.mtime_unix, f.id));
    recs.iter()
        .map(|f| {
            let key = format!("{}{}/{}", config.s3.prefix, f.user, f.path.as_str());
            // A receiving file's size is only in its spool file; stat it (read-only).
            let size = match f.state {
                FileState::Receiving | FileState::Partial => {
                    std::fs::metadata(config.spool.dir.join("partial").join(f.id.to_string()))
                        .map_or(0, |m| m.len())
                }
                _ => f.size,
            };
            FileStatus::from_record(f, key, size, config.s3.part_size, None)
        })
        .collect()
}

/// The size and the free bytes of the file system holding `dir`; (0, 0) if unknown.
fn spool_fs_bytes(dir: &Path) -> (u64, u64) {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => (
            s.blocks() * s.fragment_size(),
            s.blocks_available() * s.fragment_size(),
        ),
        Err(_) => (0, 0),
    }
}

enum ReadError {
    Io(std::io::Error),
    Format(String),
    TooLarge,
}

fn read_records(path: &Path) -> Result<Vec<Record>, ReadError> {
    let len = std::fs::metadata(path).map_err(ReadError::Io)?.len();
    if len > OFFLINE_JOURNAL_BYTES_MAX {
        return Err(ReadError::TooLarge);
    }
    let bytes = std::fs::read(path).map_err(ReadError::Io)?;
    let replayed = decode_all::<Record>(&bytes).map_err(|e| ReadError::Format(format!("{e:?}")))?;
    Ok(replayed.records)
}
