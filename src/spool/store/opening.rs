//! Opening the spool: the directory lock, journal replay into the catalog, the removal of
//! versions the journal dropped, and the hand-over to recovery (`recovery.rs`), which
//! reconciles the files on disk.
//!
//! It may use the catalog, the journal, the delivery log and recovery; it serves no client
//! and never talks to the drain (it only queues what replay says the drain must abort).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::fcntl::{Flock, FlockArg};
use tokio::sync::Notify;

use super::compaction::JOURNAL_COMPACT_BYTES;
use super::{Spool, SpoolOpenError, SpoolOptions, now_unix};
use crate::journal::Journal;
use crate::spool::catalog::{Catalog, Record};
use crate::spool::dir_sync::DirSync;
use crate::spool::engine::{EngineChoice, SpoolEngine};
use crate::spool::pool::FilePool;
use crate::spool::recovery::RecoveryState;

impl Spool {
    /// Opens the spool directory, replays the journal and reconciles the files on disk with it:
    /// spool files the journal does not know are unacknowledged leftovers and are deleted;
    /// acknowledged files whose bytes are missing are marked failed, never silently dropped.
    ///
    /// Files are written with io_uring if the kernel allows it, else with pwrite.
    pub fn open(opts: SpoolOptions) -> Result<Arc<Spool>, SpoolOpenError> {
        Self::open_with_engine(opts, SpoolEngine::select(EngineChoice::Auto)?)
    }

    /// [`Spool::open`] with the engine that writes files chosen by the caller.
    pub fn open_with_engine(
        opts: SpoolOptions,
        engine: SpoolEngine,
    ) -> Result<Arc<Spool>, SpoolOpenError> {
        let partial_dir = opts.dir.join("partial");
        let sealed_dir = opts.dir.join("sealed");
        let dir_lock = lock_spool_dir(&opts, &partial_dir, &sealed_dir)?;
        let (journal, records) = Journal::<Record>::open(&opts.dir.join("journal"))?;
        let records_count = records.len();
        let replayed = replay(&records, &opts, [&partial_dir, &sealed_dir])?;
        let pool_dir = opts.dir.join("pool");
        let pool = FilePool::start(&pool_dir).map_err(|e| SpoolOpenError::Io(pool_dir, e))?;
        let deliveries = crate::spool::deliveries::DeliveryLog::open(&opts.dir)
            .map_err(|e| SpoolOpenError::Io(opts.dir.join("deliveries"), e))?;
        let box_name = crate::telemetry::hostname();
        let spool = Spool {
            _dir_lock: dir_lock,
            engine,
            dir_sync: DirSync::new(vec![sealed_dir.clone(), partial_dir.clone()]),
            pool,
            partial_dir,
            sealed_dir,
            next_id: AtomicU64::new(replayed.catalog.max_id + 1),
            compact_above_bytes: AtomicU64::new(JOURNAL_COMPACT_BYTES),
            compaction_asked_at_bytes: AtomicU64::new(u64::MAX),
            unlinks_pending: Mutex::new(HashSet::new()),
            quotas: Mutex::new(HashMap::new()),
            catalog: Mutex::new(replayed.catalog),
            journal,
            live: Mutex::new(HashMap::new()),
            aborts: Mutex::new(replayed.aborts),
            stray_searches: Mutex::new(replayed.stray_searches),
            work: Notify::new(),
            early_wake_bytes: AtomicU64::new(u64::MAX),
            refusing: AtomicBool::new(false),
            recovery: RecoveryState::default(),
            deliveries: Arc::new(deliveries),
            box_name,
            opts,
        };
        let restored = spool.recover(records)?;
        tracing::info!(records = records_count, restored, dir = %spool.opts.dir.display(), engine = spool.engine.name(), "spool opened");
        Ok(Arc::new(spool))
    }

    /// Reconciles the disk with the replayed catalog (`recovery.rs`): small files sealed with
    /// their bytes in the journal are restored from `records`, unexplained files resealed or
    /// quarantined, and new ids start above every id on disk. Returns how many were restored.
    fn recover(&self, records: Vec<Record>) -> Result<usize, SpoolOpenError> {
        let restored = self
            .restore_inline_files(&records)
            .map_err(|e| SpoolOpenError::Io(self.sealed_dir.clone(), e))?;
        drop(records);
        let recovered = self
            .reconcile_disk(self.journal.damage().is_some())
            .map_err(|e| SpoolOpenError::Io(self.opts.dir.clone(), e))?;
        self.next_id
            .fetch_max(recovered.max_id_on_disk + 1, Ordering::Relaxed);
        if recovered.resealed + recovered.quarantined > 0 {
            tracing::warn!(
                resealed = recovered.resealed,
                quarantined = recovered.quarantined,
                "sealed files the journal did not explain: sealed again from their identity, or quarantined"
            );
        }
        Ok(restored)
    }
}

/// Creates the spool's directories and takes its lock (flock on `dir/lock`, held for the
/// spool's life): one daemon per spool, as a second one would interleave journal appends.
fn lock_spool_dir(
    opts: &SpoolOptions,
    partial_dir: &Path,
    sealed_dir: &Path,
) -> Result<Flock<fs::File>, SpoolOpenError> {
    for d in [opts.dir.as_path(), partial_dir, sealed_dir] {
        fs::create_dir_all(d).map_err(|e| SpoolOpenError::Io(d.to_path_buf(), e))?;
    }
    let lock_path = opts.dir.join("lock");
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| SpoolOpenError::Io(lock_path.clone(), e))?;
    Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
        .map_err(|_| SpoolOpenError::Locked(opts.dir.clone()))
}

/// The catalog the journal rebuilds, and what replay says the drain must still do.
struct Replayed {
    catalog: Catalog,
    /// Multipart uploads to abort: (key, upload id).
    aborts: Vec<(String, String)>,
    /// Keys to search for uploads the journal does not know.
    stray_searches: Vec<String>,
}

/// Replays `records` into a catalog (every file still receiving is partial after it, old
/// deliveries pruned) and removes the spool files of the versions they dropped from
/// `spool_dirs` (`partial/` and `sealed/`).
fn replay(
    records: &[Record],
    opts: &SpoolOptions,
    spool_dirs: [&Path; 2],
) -> Result<Replayed, SpoolOpenError> {
    let mut catalog = Catalog::with_retention(opts.delivered_retention);
    let mut aborts = Vec::new();
    let mut stray_searches = Vec::new();
    // Versions the journal dropped (removed, superseded): their unlink may not have reached
    // the disk before a crash. They go now, before recovery could take them for files the
    // journal lost and deliver them again.
    let mut freed = Vec::new();
    for record in records {
        // A record that does not fit is counted and logged by the catalog: a journal that
        // was damaged in the middle once (and rewritten without the damage) replays so.
        let Ok(effects) = catalog.apply(record) else {
            continue;
        };
        aborts.extend(effects.abort_uploads);
        stray_searches.extend(effects.stray_searches);
        freed.extend(effects.free_spool);
    }
    catalog.end_replay();
    catalog.prune_delivered(now_unix());
    for id in freed.into_iter().filter(|id| catalog.file(*id).is_none()) {
        for dir in spool_dirs {
            match fs::remove_file(dir.join(id.to_string())) {
                Ok(()) => {
                    tracing::info!(id, "removed a dropped version's spool file left by a crash")
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(SpoolOpenError::Io(dir.join(id.to_string()), e)),
            }
        }
    }
    Ok(Replayed {
        catalog,
        aborts,
        stray_searches,
    })
}
