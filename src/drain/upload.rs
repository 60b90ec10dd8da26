//! The drain loop: picks sealed files from the spool and delivers them to an [`ObjectStore`],
//! resuming part by part from the journal after any crash.
//!
//! Policy, in one place:
//! - transient errors are retried forever with capped exponential backoff and full jitter;
//! - permanent errors mark the file `failed` (kept in the spool until `sftpgw retry`);
//! - `NoSuchUpload` on a part voids the upload and the object starts again;
//! - a Complete answered `NoSuchUpload` (its earlier response lost) is settled by HEAD with our
//!   upload token;
//! - a file counts as delivered only after HEAD shows its size and our upload token;
//! - objects carry the file's SHA-256 where it is known before the upload (files up to one
//!   part) or early drain is off (then the drain hashes the sealed file first);
//! - early drain: a file still arriving in order has its full parts uploaded as its writer's
//!   append frontier passes them; the object is completed only after the seal, once every early
//!   part is known to hold the sealed bytes (the file was only ever appended to, or each part's
//!   CRC32C matches the sealed file again); a part that does not is sent again.
//!
//! A part (or small-file PUT) starts only once the [`Shaper`], if any, admits it: not in a
//! paused window, and within the byte budgets; its body is paced by the store.
//!
//! At most `concurrency` parts (or small-file PUTs) are in flight at once, so at most
//! `concurrency × part_size` bytes can be sent again after a crash. No part is ever held in
//! memory whole: bodies are ranges of the sealed spool file that the store streams through a
//! few small buffers (and reads again from the file for every attempt), summing each part's
//! CRC32C on the way; the other passes over spool data (the SHA-256 of a file not hashed on
//! arrival, the CRC32C check of early parts) are one bounded helper, `passes`. Memory
//! therefore depends on `concurrency` alone, not on part or file sizes or on how many files
//! wait.
//!
//! This module owns the loop and what its tasks share ([`DrainConfig`], [`DrainStats`], the
//! step context, `Stop`); each step is a submodule named for its concept: `queue` (which
//! pending files start now), `early` (early drain), `create` (a multipart upload's creation),
//! `parts` (parts on the wire), `passes` (whole-file passes), `deliver` (one file's delivery),
//! `completion` (the Complete), `settling` (after the Complete or PUT: HEAD and `Delivered`),
//! `retry` (retry and backoff), `aborts` (strays and dropped versions).
//!
//! The drain may use `spool`, `journal`, `limits`, `num`, `names`, `telemetry` and `events`;
//! it must not touch `sftp`, `status`, `console` or `gateway` (they use it, not the reverse).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::failed_retry::{FAILED_SCAN_INTERVAL, FailedRetries};
use super::shaper::{Admission, Shaper};
use super::store::{ObjectStore, S3Error};
use crate::spool::{FileId, FileState, NotCurrent, Spool};

mod aborts;
mod completion;
mod create;
mod deliver;
mod early;
mod parts;
mod passes;
mod queue;
mod retry;
mod settling;

use passes::FILE_HASH_PASSES_COUNT_MAX;
use queue::Queue;

/// How the drain behaves.
#[derive(Debug, Clone)]
pub struct DrainConfig {
    /// Object key = prefix + user + "/" + path.
    pub prefix: String,
    /// Bytes per part of a new multipart upload (raised for a file that would need more
    /// than 10 000 parts, see [`part_size_for`]); files below it go in one PUT.
    pub part_size: u64,
    /// Parts (or small-file PUTs) in flight at most.
    pub concurrency: usize,
    /// First retry delay; doubles per attempt up to `backoff_max`.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How long a freshly sealed file waits before its upload starts.
    pub settle: Duration,
    /// Upload parts of files still arriving in order (early drain).
    pub early: bool,
    /// A failed file is retried by itself this long after it failed, then after twice
    /// that, up to `failed_retry_max` between attempts (see `failed_retry`).
    pub failed_retry_first: Duration,
    /// Longest delay between automatic retries of a failed file.
    pub failed_retry_max: Duration,
}

/// Default [`DrainConfig::settle`].
pub const SETTLE_DEFAULT: Duration = Duration::from_secs(1);

/// What a task of the drain reports when it ends.
enum Done {
    Nothing,
    Delivery(Ended),
    /// An abort that fenced `key` has been answered.
    Unfenced(String),
}

/// What a delivery task reports when it ends.
struct Ended {
    id: FileId,
    key: String,
    /// The early upload stopped at a permanent error; do not start it again before the seal.
    early_refused: bool,
}

impl DrainConfig {
    /// The object key of `path` uploaded by `user`: prefix + user + "/" + path.
    pub fn object_key(&self, user: &str, path: &crate::spool::VPath) -> String {
        format!("{}{}/{}", self.prefix, user, path.as_str())
    }
}

/// Counters for status and tests.
#[derive(Debug, Default)]
pub struct DrainStats {
    /// Bytes of parts and single PUTs the store accepted (a part sent again counts again).
    pub bytes_sent: AtomicU64,
    /// Parts the store accepted and the journal recorded.
    pub parts_sent: AtomicU64,
    /// Files verified in S3 and journalled `Delivered`.
    pub files_delivered: AtomicU64,
    /// Files currently retrying a transient error, with that error.
    pub retrying: Mutex<HashMap<FileId, String>>,
}

/// A part's place in flight: a concurrency slot and the shaper's admission, released together.
struct PartSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _admission: Option<Admission>,
}

/// Why a delivery attempt stopped early.
enum Stop {
    /// The file was removed, renamed or superseded meanwhile: nothing more to do now.
    Cancelled,
    /// The upload is void; start the object again.
    Restart,
    /// A permanent error: the file becomes `failed`.
    Permanent(S3Error),
    /// `overwrite = "never"` found the key taken (412); to be settled by HEAD.
    Exists(S3Error),
    /// The key holds another object: the file becomes `conflict`.
    Conflict(String),
}

impl From<NotCurrent> for Stop {
    fn from(_: NotCurrent) -> Self {
        Stop::Cancelled
    }
}

/// What every upload step needs; cheap to clone into part tasks.
struct Ctx<S: ObjectStore> {
    store: Arc<S>,
    spool: Arc<Spool>,
    cfg: Arc<DrainConfig>,
    stats: Arc<DrainStats>,
    permits: Arc<Semaphore>,
    /// Admits parts by schedule, override and budget; `None`: every part starts at once.
    shaper: Option<Arc<Shaper>>,
    /// Slots for whole-file SHA-256 passes, [`FILE_HASH_PASSES_COUNT_MAX`] of them.
    hash_permits: Arc<Semaphore>,
    /// Upload ids created by this run and not yet recorded in the journal (so that a search
    /// for strays never aborts them); each leaves once recorded or aborted, so it holds at
    /// most the creates in flight (one per file being delivered).
    created_uploads: Arc<Mutex<HashSet<String>>>,
}

impl<S: ObjectStore> Clone for Ctx<S> {
    fn clone(&self) -> Self {
        Ctx {
            store: self.store.clone(),
            spool: self.spool.clone(),
            cfg: self.cfg.clone(),
            stats: self.stats.clone(),
            permits: self.permits.clone(),
            shaper: self.shaper.clone(),
            hash_permits: self.hash_permits.clone(),
            created_uploads: self.created_uploads.clone(),
        }
    }
}

/// The drain of one gateway.
pub struct Drain<S: ObjectStore> {
    ctx: Ctx<S>,
}

impl<S: ObjectStore> Drain<S> {
    /// A drain whose parts start as soon as a `concurrency` slot is free (no shaper).
    pub fn new(store: Arc<S>, spool: Arc<Spool>, cfg: DrainConfig) -> Arc<Self> {
        Self::with_shaper(store, spool, cfg, None)
    }

    /// A drain whose parts start only when `shaper` admits them.
    pub fn with_shaper(
        store: Arc<S>,
        spool: Arc<Spool>,
        cfg: DrainConfig,
        shaper: Option<Arc<Shaper>>,
    ) -> Arc<Self> {
        let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
        Arc::new(Drain {
            ctx: Ctx {
                store,
                spool,
                cfg: Arc::new(cfg),
                stats: Arc::new(DrainStats::default()),
                permits,
                shaper,
                hash_permits: Arc::new(Semaphore::new(FILE_HASH_PASSES_COUNT_MAX)),
                created_uploads: Arc::new(Mutex::new(HashSet::new())),
            },
        })
    }

    /// The drain's counters (status and tests read them).
    pub fn stats(&self) -> &Arc<DrainStats> {
        &self.ctx.stats
    }

    /// The configuration the drain runs with.
    pub fn config(&self) -> &DrainConfig {
        &self.ctx.cfg
    }

    /// Runs until the task is aborted (the caller aborts it at shutdown). Every upload runs in a task owned by this one, so
    /// aborting it stops them all (every step is crash-safe, so that is a clean stop).
    pub async fn run(self: Arc<Self>) {
        let mut tasks: JoinSet<Done> = JoinSet::new();
        let ctx = self.ctx.clone();
        tasks.spawn(async move {
            ctx.abort_unrecorded_uploads().await;
            Done::Nothing
        });
        let mut queue = Queue::default();
        let mut failed_retries = FailedRetries::new(
            self.ctx.cfg.failed_retry_first,
            self.ctx.cfg.failed_retry_max,
        );
        let failed_scan_every = FAILED_SCAN_INTERVAL.min(self.ctx.cfg.failed_retry_first);
        let mut next_failed_scan = Instant::now();
        // Files already sealed before this start were settled long ago.
        queue.settled_before = self.ctx.spool.next_file_id();
        if self.ctx.cfg.early {
            // Without it an early upload began at the next periodic wake, up to a second
            // after its first part was written (bench/results/round10/e2e-timeline.txt).
            self.ctx
                .spool
                .wake_drain_when_written(self.ctx.cfg.part_size);
        }
        loop {
            for key in self.ctx.spool.take_stray_searches() {
                *queue.fenced_keys.entry(key.clone()).or_default() += 1;
                let ctx = self.ctx.clone();
                tasks.spawn(async move {
                    ctx.abort_strays(&key).await;
                    Done::Unfenced(key)
                });
            }
            for (key, upload_id) in self.ctx.spool.take_aborts() {
                *queue.fenced_keys.entry(key.clone()).or_default() += 1;
                let ctx = self.ctx.clone();
                tasks.spawn(async move {
                    ctx.abort_upload(&key, &upload_id, None).await;
                    Done::Unfenced(key)
                });
            }
            if Instant::now() >= next_failed_scan {
                self.retry_due_failed(&mut failed_retries).await;
                next_failed_scan = Instant::now() + failed_scan_every;
            }
            let wake = self
                .start_pending(&mut tasks, &mut queue)
                .min(next_failed_scan.saturating_duration_since(Instant::now()));
            tokio::select! {
                () = self.ctx.spool.work().notified() => {}
                Some(done) = tasks.join_next() => {
                    if let Ok(Done::Unfenced(key)) = &done
                        && let Some(count) = queue.fenced_keys.get_mut(key)
                    {
                        *count -= 1;
                        if *count == 0 {
                            queue.fenced_keys.remove(key);
                        }
                    }
                    if let Ok(Done::Delivery(Ended { id, key, early_refused })) = done {
                        queue.active.remove(&id);
                        queue.active_keys.remove(&key);
                        queue.first_seen.remove(&id);
                        queue.early.remove(&id);
                        if early_refused {
                            queue.early_refused.insert(id);
                        }
                        lock(&self.ctx.stats.retrying).remove(&id);
                    }
                }
                () = tokio::time::sleep(wake) => {}
            }
        }
    }

    /// Queues again the failed files whose automatic retry is due.
    async fn retry_due_failed(&self, retries: &mut FailedRetries) {
        let failed: Vec<FileId> = self
            .ctx
            .spool
            .files_in(&[FileState::Failed])
            .iter()
            .map(|f| f.id)
            .collect();
        let spool = &self.ctx.spool;
        let is_pending = |id| {
            spool.state_of(id).is_some_and(|s| {
                matches!(
                    s,
                    FileState::Failed | FileState::Sealed | FileState::Uploading
                )
            })
        };
        let due = retries.due(&failed, is_pending, Instant::now());
        if !due.is_empty() {
            let count = self.ctx.spool.retry_ids(&due).await;
            tracing::info!(event = "retried", count, ids = ?due,
                "failed files queued again by the automatic retry (the S3 error may be fixed by now)");
        }
    }
}

/// The part size for a file: the configured one, raised (to whole MiB) where the file would
/// otherwise need more parts than S3 allows.
pub fn part_size_for(configured: u64, file_size: u64) -> u64 {
    const MIB: u64 = 1024 * 1024;
    let needed = file_size
        .div_ceil(crate::limits::PARTS_COUNT_MAX)
        .div_ceil(MIB)
        * MIB;
    configured.max(needed)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_grows_so_that_no_file_needs_more_than_ten_thousand_parts() {
        let mib = 1024 * 1024;
        assert_eq!(part_size_for(16 * mib, 100 * mib), 16 * mib);
        let huge = 400 * 1024 * mib; // 400 GiB
        let p = part_size_for(16 * mib, huge);
        assert!(huge.div_ceil(p) <= crate::limits::PARTS_COUNT_MAX, "{p}");
        assert_eq!(p % mib, 0);
    }
}
