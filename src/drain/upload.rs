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
//! arrival, the CRC32C check of early parts) are one bounded helper, `sealed_pass`. Memory therefore depends on `concurrency` alone,
//! not on part or file sizes or on how many files wait.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use super::failed_retry::{FAILED_SCAN_INTERVAL, FailedRetries};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::shaper::{Admission, Shaper};
use super::store::{
    Body, CompletedPart, FileRange, META_BOX, META_SEALED_AT, META_SHA256, META_TOKEN,
    META_UPLOADER, ObjectHead, ObjectMetadata, ObjectStore, OpenFile, S3Error, S3ErrorKind,
};
use crate::spool::catalog::{FileRecord, UploadProgress};
use crate::spool::{
    CreatedUpload, DeliveredObject, DeliveryError, FileId, FileState, NotCurrent, Spool,
};

/// How the drain behaves.
#[derive(Debug, Clone)]
pub struct DrainConfig {
    /// Object key = prefix + user + "/" + path.
    pub prefix: String,
    pub part_size: u64,
    /// Parts (or small-file PUTs) in flight at most.
    pub concurrency: usize,
    /// First retry delay; doubles per attempt up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long a freshly sealed file waits before its upload starts.
    pub settle: Duration,
    /// Upload parts of files still arriving in order (early drain).
    pub early: bool,
    /// A failed file is retried by itself this long after it failed, then after twice
    /// that, up to `failed_retry_max` between attempts (see `failed_retry`).
    pub failed_retry_first: Duration,
    pub failed_retry_max: Duration,
}

/// Default [`DrainConfig::settle`].
pub const SETTLE_DEFAULT: Duration = Duration::from_secs(1);

/// Read buffer of the SHA-256 pass over a whole file (only for files written out of order).
const FILE_HASH_BUFFER_BYTES: usize = 1024 * 1024;
/// Whole-file SHA-256 passes at once. They are CPU-bound, so more than the box has cores only
/// adds buffers; the bound also keeps their memory independent of `concurrency`.
const FILE_HASH_PASSES_COUNT_MAX: usize = 2;

/// Names that clients upload to and rename right after CLOSE (WinSCP's `.filepart`, rclone's
/// `.partial`, ...). They never drain early: the rename would void the upload and every part
/// would be sent again.
const TEMPORARY_NAME_SUFFIXES: &[&str] = &[".filepart", ".part", ".partial", ".tmp"];
/// Pending files the drain looks at on each wake beyond those in flight. Files further back
/// in the queue wait for the next wake; the oldest go first.
const CANDIDATES_COUNT_MAX: usize = 256;
/// How often an early upload looks whether its file's writer has passed another part.
/// At 300 MiB/s a 16 MiB part takes 53 ms to arrive.
const EARLY_POLL: Duration = Duration::from_millis(20);

/// The drain loop's bookkeeping.
#[derive(Default)]
struct Queue {
    active: HashSet<FileId>,
    active_keys: HashSet<String>,
    /// When files with a temporary name were first seen sealed (they settle before upload).
    /// Bounded by the candidate window: entries outside the oldest `active +
    /// CANDIDATES_COUNT_MAX` pending files are dropped at every wake.
    first_seen: HashMap<FileId, Instant>,
    /// Files with lower ids were sealed before this run started: settled long ago.
    settled_before: FileId,
    /// Files whose delivery task started as an early upload (also in `active`).
    early: HashSet<FileId>,
    /// Files whose early upload met a permanent error: they wait for their seal. Bounded by
    /// the files being received (pruned to them at every wake).
    early_refused: HashSet<FileId>,
    /// Keys with an abort of a dropped version's upload under way, and how many: nothing
    /// starts under such a key until the store has answered. A version dropped while its
    /// Complete was in flight (in a run that then died) could otherwise still land after the
    /// newer version's upload, overwriting it; an abort answered settles that upload (the
    /// store either completed it first or never will).
    fenced_keys: HashMap<String, usize>,
}

impl Queue {
    /// Whether an upload under `key` may start now (one per key at a time, none while fenced).
    fn key_busy(&self, key: &str) -> bool {
        self.active_keys.contains(key) || self.fenced_keys.contains_key(key)
    }
}

/// Transient errors an abort that fences nothing is retried through before it is left to the
/// next start's reconciliation.
const ABORT_ATTEMPTS_COUNT_MAX: u32 = 8;

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
    pub fn object_key(&self, user: &str, path: &crate::spool::VPath) -> String {
        format!("{}{}/{}", self.prefix, user, path.as_str())
    }
}

/// Counters for status and tests.
#[derive(Debug, Default)]
pub struct DrainStats {
    pub bytes_sent: AtomicU64,
    pub parts_sent: AtomicU64,
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

    pub fn stats(&self) -> &Arc<DrainStats> {
        &self.ctx.stats
    }

    pub fn config(&self) -> &DrainConfig {
        &self.ctx.cfg
    }

    /// Runs forever (the caller aborts the task at shutdown: every step is crash-safe).
    /// Runs until the task is aborted. Every upload runs in a task owned by this one, so
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

    /// Starts uploads for the oldest pending files, within the limits; returns how long until
    /// a file still settling becomes eligible (at most a second). Looks at a bounded window
    /// of the queue (the oldest [`CANDIDATES_COUNT_MAX`] beyond those in flight), so a wake
    /// costs the same with ten files waiting or a million.
    fn start_pending(&self, tasks: &mut JoinSet<Done>, queue: &mut Queue) -> Duration {
        let files_active_max = self.ctx.cfg.concurrency.max(1) * 2;
        let now = Instant::now();
        let mut wake = Duration::from_secs(1);
        let window = queue.active.len() + CANDIDATES_COUNT_MAX;
        let pending = self
            .ctx
            .spool
            .oldest_in(&[FileState::Sealed, FileState::Uploading], window);
        // Settling times of files no longer among the oldest pending are dropped: none below
        // the window's first (those are gone), and, when the window held the whole queue,
        // none outside it.
        let lowest = pending.first().map_or(FileId::MAX, |f| f.id);
        let highest = pending.last().map_or(FileId::MIN, |f| f.id);
        let whole_queue = pending.len() < window;
        let in_window: HashSet<FileId> = pending.iter().map(|f| f.id).collect();
        queue.first_seen.retain(|id, _| {
            *id >= lowest && (in_window.contains(id) || (!whole_queue && *id > highest))
        });
        for f in pending {
            if queue.active.len() - queue.early.len() >= files_active_max {
                break;
            }
            // A file sealed under a temporary name (WinSCP's `.filepart`, rsync's
            // `.name.XXXXXX`) waits a moment: the client renames it right after CLOSE, and
            // the rename should not race the upload. Any other file starts at once.
            if f.id >= queue.settled_before && is_renamed_after_close(f.path.as_str()) {
                let seen = *queue.first_seen.entry(f.id).or_insert(now);
                let eligible = seen + self.ctx.cfg.settle;
                if eligible > now {
                    wake = wake.min(eligible - now);
                    continue;
                }
            }
            let key = self.ctx.cfg.object_key(&f.user, &f.path);
            // One upload per key at a time, so that an older version can never complete
            // after a newer one.
            if queue.active.contains(&f.id) || queue.key_busy(&key) {
                continue;
            }
            queue.active.insert(f.id);
            queue.active_keys.insert(key.clone());
            let ctx = self.ctx.clone();
            tasks.spawn(async move {
                let id = f.id;
                ctx.deliver(f, &key).await;
                Done::Delivery(Ended {
                    id,
                    key,
                    early_refused: false,
                })
            });
        }
        if self.ctx.cfg.early {
            self.start_early(tasks, queue);
        }
        wake
    }

    /// Starts early uploads of files still arriving whose first part is written.
    fn start_early(&self, tasks: &mut JoinSet<Done>, queue: &mut Queue) {
        let early_max = self.ctx.cfg.concurrency.max(1);
        let receiving = self.ctx.spool.files_in(&[FileState::Receiving]);
        let receiving_ids: HashSet<FileId> = receiving.iter().map(|f| f.id).collect();
        queue.early_refused.retain(|id| receiving_ids.contains(id));
        for f in receiving {
            if queue.early.len() >= early_max {
                break;
            }
            if queue.active.contains(&f.id)
                || queue.early_refused.contains(&f.id)
                || is_temporary_name(f.path.as_str())
            {
                continue;
            }
            let frontier = self.ctx.spool.live_frontier(f.id).unwrap_or(0);
            if frontier < self.ctx.cfg.part_size {
                continue;
            }
            let key = self.ctx.cfg.object_key(&f.user, &f.path);
            if queue.key_busy(&key) {
                continue;
            }
            queue.active.insert(f.id);
            queue.active_keys.insert(key.clone());
            queue.early.insert(f.id);
            let ctx = self.ctx.clone();
            tasks.spawn(async move {
                let id = f.id;
                let early_refused = ctx.deliver_early(id, &key).await;
                Done::Delivery(Ended {
                    id,
                    key,
                    early_refused,
                })
            });
        }
    }
}

impl<S: ObjectStore> Ctx<S> {
    /// Multipart uploads this box created but a crash kept it from recording: nobody will
    /// complete them. Only keys with an unresolved `UploadIntent` are looked at, each listed
    /// by its exact key, and only uploads of that exact key the journal does not know are
    /// aborted; every other upload in the bucket (another box's, a person's, even under our
    /// prefix) is left alone. Retried until the store answers (after a power cut the WAN may
    /// come up late). Uploads this run created are never taken for strays.
    async fn abort_unrecorded_uploads(&self) {
        for key in self.spool.upload_intent_keys() {
            self.abort_strays(&key).await;
        }
    }

    /// Aborts the open uploads of exactly `key` that neither the journal nor this run knows:
    /// uploads this box created but never learned the id of (a crash, or a lost response).
    async fn abort_strays(&self, key: &str) {
        let mut attempt = 0u32;
        let open = loop {
            match self.store.list_multipart_uploads(key).await {
                Ok(open) => break open,
                Err(e) => {
                    tracing::warn!(key, error = %e, "listing open multipart uploads failed; retrying");
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        };
        let created = lock(&self.created_uploads).clone();
        let strays = open.into_iter().filter(|u| {
            u.key == key
                && !created.contains(&u.upload_id)
                && !self.spool.knows_upload(&u.upload_id)
        });
        for u in strays {
            tracing::info!(key = %u.key, upload_id = %u.upload_id,
                "aborting a multipart upload this box created but did not record");
            self.abort_upload(&u.key, &u.upload_id, Some(ABORT_ATTEMPTS_COUNT_MAX))
                .await;
        }
    }

    /// Aborts an upload, retrying transient errors `attempts` times (`None`: until the store
    /// answers, for an abort that fences its key).
    async fn abort_upload(&self, key: &str, upload_id: &str, attempts: Option<u32>) {
        for attempt in 0..attempts.unwrap_or(u32::MAX) {
            match self.store.abort_multipart_upload(key, upload_id).await {
                Ok(()) => return,
                Err(e) if e.kind == S3ErrorKind::NoSuchUpload => return,
                Err(e) if e.is_retryable() => tokio::time::sleep(self.backoff(attempt)).await,
                Err(e) => {
                    tracing::warn!(key, upload_id, error = %e, "could not abort multipart upload");
                    return;
                }
            }
        }
        // Left for the next start's reconciliation, which aborts uploads it does not know.
        tracing::warn!(
            key,
            upload_id,
            "giving up aborting multipart upload for now"
        );
    }

    async fn deliver(&self, mut file: FileRecord, key: &str) {
        let started = Instant::now();
        tracing::info!(event = "upload_started", id = file.id, user = %file.user,
            path = %file.path.display(), key, size = file.size, resumed = file.upload.is_some(),
            "upload started");
        loop {
            // An upload already journalled is resumed with its own part size even if the
            // configured one changed since.
            let attempt = if file.upload.is_none() && file.size < self.cfg.part_size {
                self.deliver_single(&file, key).await
            } else {
                self.deliver_multipart(&file, key).await
            };
            match attempt {
                Ok(()) => {
                    tracing::info!(event = "delivered", id = file.id, user = %file.user,
                        path = %file.path.display(), key, size = file.size,
                        duration_ms = started.elapsed().as_millis() as u64,
                        "delivered: verified in S3, spool copy freed");
                    return;
                }
                Err(Stop::Cancelled) => return,
                Err(Stop::Restart) => {
                    let id = file.id;
                    let reset = self.spool.reset_upload(id, None, self.current(key)).await;
                    if reset.is_err() {
                        return;
                    }
                    match self.spool.file(id) {
                        Some(f) => file = f,
                        None => return,
                    }
                }
                Err(Stop::Conflict(why)) => {
                    tracing::error!(event = "conflict", id = file.id, user = %file.user,
                        path = %file.path.display(), key, cause = %why,
                        "not uploaded: the key holds another object; kept on the spool until `sftpgw retry`");
                    crate::telemetry::record_error(
                        crate::telemetry::ErrorKind::S3Permanent,
                        Some(format!("{}:{}", file.user, file.path.display())),
                        &why,
                    );
                    let _ = self
                        .spool
                        .record_conflict(file.id, &why, self.current(key))
                        .await;
                    return;
                }
                // Only the delivery steps settle a 412; one anywhere else is an error.
                Err(Stop::Exists(e) | Stop::Permanent(e)) => {
                    tracing::error!(event = "failed", id = file.id, user = %file.user,
                        path = %file.path.display(), key, cause = %e,
                        "upload failed permanently; kept on the spool and retried by itself on a long backoff, or at once with `sftpgw retry`");
                    crate::telemetry::record_error(
                        crate::telemetry::ErrorKind::S3Permanent,
                        Some(format!("{}:{}", file.user, file.path.display())),
                        &e.to_string(),
                    );
                    let _ = self
                        .spool
                        .record_failed(file.id, &e.to_string(), self.current(key))
                        .await;
                    return;
                }
            }
        }
    }

    /// Whether a file is still to be delivered under `key` (not removed, renamed, failed or
    /// done; a file still arriving counts, for its early upload): the check the spool makes
    /// before it journals each step of the upload.
    fn current<'a>(&'a self, key: &'a str) -> impl Fn(&FileRecord) -> bool + 'a {
        move |f| {
            matches!(
                f.state,
                FileState::Receiving
                    | FileState::Partial
                    | FileState::Sealed
                    | FileState::Uploading
            ) && self.cfg.object_key(&f.user, &f.path) == key
        }
    }

    fn still_current(&self, id: FileId, key: &str) -> bool {
        self.spool.file(id).is_some_and(|f| self.current(key)(&f))
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.cfg.backoff_base.as_millis() as u64;
        let cap = self.cfg.backoff_max.as_millis() as u64;
        let ceiling = base.saturating_mul(1u64 << attempt.min(20)).min(cap).max(1);
        Duration::from_millis(rand::thread_rng().gen_range(ceiling / 2..=ceiling))
    }

    /// Runs `op` until it succeeds or fails permanently; transient errors are retried forever
    /// while the file is still current.
    async fn retry<T, F, Fut>(&self, id: FileId, key: &str, mut op: F) -> Result<T, Stop>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, S3Error>>,
    {
        let mut attempt = 0u32;
        loop {
            match op().await {
                Ok(v) => {
                    if attempt > 0 {
                        lock(&self.stats.retrying).remove(&id);
                    }
                    return Ok(v);
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(id, key, attempt, error = %e, "transient S3 error; retrying");
                    crate::telemetry::add_s3_retry();
                    crate::telemetry::record_error(
                        crate::telemetry::ErrorKind::S3Transient,
                        Some(key.to_owned()),
                        &e.to_string(),
                    );
                    lock(&self.stats.retrying).insert(id, e.to_string());
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt = attempt.saturating_add(1);
                    if !self.still_current(id, key) {
                        return Err(Stop::Cancelled);
                    }
                }
                Err(e) if e.kind == S3ErrorKind::NoSuchUpload => return Err(Stop::Restart),
                Err(e) if e.kind == S3ErrorKind::PreconditionFailed => return Err(Stop::Exists(e)),
                Err(e) => return Err(Stop::Permanent(e)),
            }
        }
    }

    async fn file_sha256(&self, file: &FileRecord) -> Result<[u8; 32], Stop> {
        if let Some(h) = file.sha256 {
            return Ok(h);
        }
        let whole = vec![(0, file.size)];
        let hasher = self
            .sealed_pass(
                file,
                "hashing the spool file",
                whole,
                Sha256::new(),
                |h, _, b| {
                    h.update(b);
                },
            )
            .await?;
        Ok(hasher.finalize().into())
    }

    /// The drain's one kind of read besides request bodies: a pass over `ranges` (offset,
    /// length) of the sealed file, at most [`FILE_HASH_PASSES_COUNT_MAX`] at once, through one
    /// [`FILE_HASH_BUFFER_BYTES`] buffer on a blocking thread; `step(acc, range, bytes)` sees
    /// each range's bytes in order. A read that fails is `what` failing (see `local_error`).
    async fn sealed_pass<A, F>(
        &self,
        file: &FileRecord,
        what: &str,
        ranges: Vec<(u64, u64)>,
        acc: A,
        step: F,
    ) -> Result<A, Stop>
    where
        A: Send + 'static,
        F: Fn(&mut A, usize, &[u8]) + Send + 'static,
    {
        let _permit = self
            .hash_permits
            .acquire()
            .await
            .map_err(|_| Stop::Cancelled)?;
        let path = self.spool.sealed_path(file.id);
        let done = tokio::task::spawn_blocking(move || -> std::io::Result<A> {
            let f = File::open(path)?;
            let mut buf = vec![0u8; FILE_HASH_BUFFER_BYTES];
            let mut acc = acc;
            for (i, (start, len)) in ranges.into_iter().enumerate() {
                let (mut at, end) = (start, start + len);
                while at < end {
                    let n = usize::try_from(end - at).map_or(buf.len(), |left| left.min(buf.len()));
                    f.read_exact_at(&mut buf[..n], at)?;
                    step(&mut acc, i, &buf[..n]);
                    at += n as u64;
                }
            }
            Ok(acc)
        })
        .await;
        match done {
            Ok(Ok(acc)) => Ok(acc),
            Ok(Err(e)) => Err(self.local_error(file.id, what, &e)),
            Err(_) => Err(Stop::Cancelled),
        }
    }

    /// `len` bytes of the sealed file `id` from `offset`, as a request body; or of the
    /// receiving file open as `receiving` (early drain).
    fn spool_range(&self, id: FileId, offset: u64, len: u64, receiving: Option<&OpenFile>) -> Body {
        let path = match receiving {
            Some(_) => self.spool.partial_path(id),
            None => self.spool.sealed_path(id),
        };
        Body::File(FileRange {
            path,
            offset,
            len,
            open: receiving.cloned(),
        })
    }

    /// A local read failed. If the file was freed meanwhile (removed, superseded) there is
    /// nothing to send; otherwise the spool copy is broken, and the file is marked failed
    /// instead of being retried in a loop.
    fn local_error(&self, id: FileId, what: &str, err: &std::io::Error) -> Stop {
        let current = self
            .spool
            .file(id)
            .is_some_and(|f| matches!(f.state, FileState::Sealed | FileState::Uploading));
        if current {
            Stop::Permanent(S3Error::new(
                S3ErrorKind::Permanent,
                "spool",
                format!("{what}: {err}"),
            ))
        } else {
            Stop::Cancelled
        }
    }

    /// The object's metadata: our upload token, the uploader and the box; the SHA-256 and
    /// the seal time where they are known before the upload starts (not for an early upload
    /// of a file still arriving: S3 fixes metadata at the start).
    fn metadata(
        &self,
        file: &FileRecord,
        sha256: Option<&[u8; 32]>,
        token: &str,
    ) -> ObjectMetadata {
        let mut m = ObjectMetadata::new();
        if let Some(sha256) = sha256 {
            m.insert(META_SHA256.to_owned(), hex::encode(sha256));
        }
        if matches!(file.state, FileState::Sealed | FileState::Uploading) {
            m.insert(
                META_SEALED_AT.to_owned(),
                crate::spool::deliveries::rfc3339(file.mtime_unix),
            );
        }
        m.insert(META_UPLOADER.to_owned(), file.user.clone());
        m.insert(META_BOX.to_owned(), self.spool.box_name().to_owned());
        m.insert(META_TOKEN.to_owned(), token.to_owned());
        m
    }

    /// One of the `concurrency` slots for a part (or a small file) of `len` bytes in flight,
    /// once the shaper admits it.
    async fn part_permit(&self, len: u64) -> Result<PartSlot, Stop> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Stop::Cancelled)?;
        let admission = match &self.shaper {
            Some(shaper) => Some(shaper.admit(len).await),
            None => None,
        };
        Ok(PartSlot {
            _permit: permit,
            _admission: admission,
        })
    }

    async fn deliver_single(&self, file: &FileRecord, key: &str) -> Result<(), Stop> {
        let sha = self.file_sha256(file).await?;
        let token = new_token();
        let meta = self.metadata(file, Some(&sha), &token);
        let permit = self.part_permit(file.size).await?;
        // The wait for a slot and the shaper's admission can be long (a paused drain): a file
        // renamed or removed meanwhile must not be put under its old key, where no abort
        // could take it back.
        if !self.still_current(file.id, key) {
            return Err(Stop::Cancelled);
        }
        let body = self.spool_range(file.id, 0, file.size, None);
        let put = self
            .retry(file.id, key, || {
                self.store.put_object(key, body.clone(), &meta)
            })
            .await;
        // The permit is held until `Delivered` is durable: a file whose PUT is done but not
        // yet journalled is sent again after a crash, and counts against the bound.
        let delivered = match put {
            Ok(()) => {
                self.stats
                    .bytes_sent
                    .fetch_add(file.size, Ordering::Relaxed);
                self.verify_and_record(file, key, &token).await
            }
            Err(Stop::Exists(_)) => self.settle_existing(file, key, &token).await,
            Err(e) => Err(e),
        };
        drop(permit);
        delivered
    }

    /// Creates a multipart upload for `file` under `key` (sealed, or still arriving: early
    /// drain) and journals it; the object carries `sha256` if given.
    async fn start_upload(
        &self,
        file: &FileRecord,
        key: &str,
        sha256: Option<&[u8; 32]>,
    ) -> Result<UploadProgress, Stop> {
        let id = file.id;
        // Whether the object gets a full-object CRC32C is fixed here and kept in the token, so
        // that the parts and the Complete of this upload agree with its creation whatever the
        // configuration says by then (or an older version created it).
        let crc32c = self.store.full_object_checksums();
        let token = match crc32c {
            true => format!("{FULL_OBJECT_CRC32C_TOKEN_PREFIX}{}", new_token()),
            false => new_token(),
        };
        let meta = self.metadata(file, sha256, &token);
        // Recorded before the upload exists, so that a crash before its id is journalled
        // leaves the next start a trace of exactly what to look for (see
        // `abort_unrecorded_uploads`).
        if self
            .spool
            .record_upload_intent(id, key, self.current(key))
            .await
            .is_err()
        {
            return Err(Stop::Cancelled);
        }
        let attempts = AtomicU32::new(0);
        let upload_id = self
            .retry(id, key, || {
                attempts.fetch_add(1, Ordering::Relaxed);
                self.store.create_multipart_upload(key, &meta, crc32c)
            })
            .await?;
        lock(&self.created_uploads).insert(upload_id.clone());
        // A failed attempt may have created an upload whose answer was lost: the intent stays
        // journalled with the upload (the next start looks for strays under `key`), and the
        // strays are looked for now, once this upload is recorded.
        let retried = attempts.load(Ordering::Relaxed) > 1;
        // An early upload does not know the final size: it uses the configured part size and
        // starts again at the seal if the file outgrew 10 000 of them.
        let part_size = match file.state {
            FileState::Receiving | FileState::Partial => self.cfg.part_size,
            _ => part_size_for(self.cfg.part_size, file.size),
        };
        let created = CreatedUpload {
            key,
            upload_id: &upload_id,
            part_size,
            token: &token,
            keep_intent: retried,
        };
        let started = self
            .spool
            .record_upload_started(id, &created, self.current(key))
            .await;
        // Recorded now (the journal knows it), or aborted below: this run need not remember it,
        // so the set stays as small as the uploads being created.
        let Ok(upload) = started else {
            self.abort_upload(key, &upload_id, Some(ABORT_ATTEMPTS_COUNT_MAX))
                .await;
            lock(&self.created_uploads).remove(&upload_id);
            if retried {
                self.abort_strays(key).await;
            }
            return Err(Stop::Cancelled);
        };
        lock(&self.created_uploads).remove(&upload_id);
        if retried {
            self.abort_strays(key).await;
        }
        Ok(upload)
    }

    async fn deliver_multipart(&self, file: &FileRecord, key: &str) -> Result<(), Stop> {
        let id = file.id;
        // The SHA-256 goes into the object's metadata where it is known or early drain is
        // off; with early drain on, files longer than a part are never hashed.
        let sha = match (file.sha256, self.cfg.early) {
            (Some(h), _) => Some(h),
            (None, true) => None,
            (None, false) => Some(self.file_sha256(file).await?),
        };
        let upload = match &file.upload {
            Some(u) if u.key == key => u.clone(),
            Some(_) => return Err(Stop::Restart),
            None => self.start_upload(file, key, sha.as_ref()).await?,
        };
        let part_size = upload.part_size;
        let parts_count = file.size.div_ceil(part_size);
        if upload.early && (file.size < part_size || parts_count > crate::limits::PARTS_COUNT_MAX) {
            // Truncated below one part, or grown past 10 000 of them: start again from the
            // sealed file (a single PUT, or parts of the right size).
            return Err(Stop::Restart);
        }
        let valid = if upload.early && !file.appended_only {
            // Written out of order, resumed or truncated at some point: parts sent before the
            // seal may hold bytes written again since. Each counts only if its CRC32C still
            // matches the sealed file.
            self.check_early_parts(file, &upload, parts_count).await?
        } else {
            // Every write was an append: no byte below the frontier an early part was read
            // from was ever written again.
            upload
                .parts
                .keys()
                .filter(|n| u64::from(**n) <= parts_count)
                .copied()
                .collect()
        };
        let mut tasks: JoinSet<Result<(), Stop>> = JoinSet::new();
        for number in 1..=parts_count {
            let number = u32::try_from(number).map_err(|_| {
                Stop::Permanent(S3Error::new(
                    S3ErrorKind::Permanent,
                    "UploadPart",
                    "too many parts",
                ))
            })?;
            if valid.contains(&number) {
                continue;
            }
            let offset = u64::from(number - 1) * part_size;
            let len = part_size.min(file.size - offset);
            let permit = self.part_permit(len).await?;
            if !self.still_current(id, key) {
                break;
            }
            let (ctx, key, upload_id) = (self.clone(), key.to_owned(), upload.upload_id.clone());
            let crc32c = has_full_object_crc32c(&upload.token);
            tasks.spawn(async move {
                let r = ctx
                    .upload_one_part(id, &key, (&upload_id, crc32c), number, offset, len, None)
                    .await;
                drop(permit);
                r
            });
            // Collect finished parts early so that an error stops the rest soon.
            while let Some(done) = tasks.try_join_next() {
                done.map_err(|_| Stop::Cancelled)??;
            }
        }
        while let Some(done) = tasks.join_next().await {
            done.map_err(|_| Stop::Cancelled)??;
        }
        if !self.still_current(id, key) {
            return Err(Stop::Cancelled);
        }
        let crc32c = has_full_object_crc32c(&upload.token);
        let parts: Vec<CompletedPart> = self
            .spool
            .file(id)
            .and_then(|f| f.upload)
            .filter(|u| u.upload_id == upload.upload_id)
            .ok_or(Stop::Cancelled)?
            .parts
            .into_iter()
            .filter(|(number, _)| u64::from(*number) <= parts_count)
            .map(|(number, r)| {
                let len = part_size.min(file.size - u64::from(number - 1) * part_size);
                CompletedPart {
                    number,
                    etag: r.etag,
                    crc32c: crc32c.then_some((r.crc32c, len)),
                }
            })
            .collect();
        if parts.len() as u64 != parts_count {
            return Err(Stop::Restart);
        }
        tracing::debug!(id, parts = parts.len(), "completing the upload");
        let completed = self
            .retry(id, key, || {
                self.store
                    .complete_multipart_upload(key, &upload.upload_id, &parts)
            })
            .await;
        match completed {
            Ok(()) => {}
            // overwrite = "never": ours already (a repeated Complete), the same bytes, or not.
            Err(Stop::Exists(_)) => {
                return self.settle_existing(file, key, &upload.token).await;
            }
            // Completed before, but the answer was lost: HEAD with our token settles it.
            Err(Stop::Restart) => {
                let head = self.retry(id, key, || self.store.head_object(key)).await?;
                let ours = head.as_ref().is_some_and(|h| {
                    h.size == file.size && h.metadata.get(META_TOKEN) == Some(&upload.token)
                });
                if !ours {
                    return Err(Stop::Restart);
                }
            }
            Err(e) => return Err(e),
        }
        self.verify_and_record(file, key, &upload.token).await
    }

    /// The parts of an early upload whose bytes the sealed file still holds: each part's
    /// CRC32C, as journalled when it was sent, against the sealed file's range.
    async fn check_early_parts(
        &self,
        file: &FileRecord,
        upload: &UploadProgress,
        parts_count: u64,
    ) -> Result<HashSet<u32>, Stop> {
        let (part_size, size) = (upload.part_size, file.size);
        let sent: Vec<(u32, u32)> = upload
            .parts
            .iter()
            .filter(|(n, _)| u64::from(**n) <= parts_count)
            .map(|(n, r)| (*n, r.crc32c))
            .collect();
        let ranges = sent
            .iter()
            .map(|(number, _)| {
                let start = u64::from(number - 1) * part_size;
                (start, part_size.min(size - start))
            })
            .collect();
        let crcs = self
            .sealed_pass(
                file,
                "checking early parts",
                ranges,
                vec![0u32; sent.len()],
                |crcs, i, bytes| crcs[i] = crc32c::crc32c_append(crcs[i], bytes),
            )
            .await?;
        let mut valid = HashSet::new();
        for ((number, crc_sent), crc) in sent.into_iter().zip(crcs) {
            if crc == crc_sent {
                valid.insert(number);
            } else {
                tracing::info!(
                    number,
                    "an early part no longer matches the sealed file; sending it again"
                );
            }
        }
        Ok(valid)
    }

    /// Uploads the full parts of a file still arriving as its writer's append frontier passes
    /// them; once the file is sealed, delivers it like any other (checking those parts). Ends
    /// when the file is left partial (its upload stays open for a resume), removed or renamed.
    /// Returns true if the early upload met a permanent error: the file then waits for its
    /// seal, and the error is met again (and recorded) by the ordinary delivery.
    async fn deliver_early(&self, id: FileId, key: &str) -> bool {
        let mut tasks: JoinSet<(u32, Result<(), Stop>)> = JoinSet::new();
        let mut sending: HashSet<u32> = HashSet::new();
        let mut receiving: Option<OpenFile> = None;
        let outcome: Result<Option<FileRecord>, S3Error> = loop {
            let Some(file) = self.spool.file(id) else {
                break Ok(None);
            };
            if self.cfg.object_key(&file.user, &file.path) != key {
                break Ok(None);
            }
            match file.state {
                FileState::Receiving => {}
                FileState::Sealed | FileState::Uploading => break Ok(Some(file)),
                _ => break Ok(None),
            }
            let upload = match file.upload {
                Some(u) => u,
                None => match self.start_upload(&file, key, None).await {
                    Ok(u) => u,
                    Err(Stop::Permanent(e)) => break Err(e),
                    // The file changed meanwhile: the next round sees how.
                    Err(_) => {
                        tokio::time::sleep(EARLY_POLL).await;
                        continue;
                    }
                },
            };
            let part_size = upload.part_size;
            let frontier = self.spool.live_frontier(id).unwrap_or(0);
            let ready = (1..=frontier / part_size)
                .filter_map(|n| u32::try_from(n).ok())
                .find(|n| !upload.parts.contains_key(n) && !sending.contains(n));
            if let Some(number) = ready
                && u64::from(number) <= crate::limits::PARTS_COUNT_MAX
            {
                // Waits a poll at most, then reaps finished parts and looks at the file again
                // (sealed, removed or renamed ends the wait).
                match tokio::time::timeout(EARLY_POLL, self.part_permit(part_size)).await {
                    Ok(Ok(permit)) => {
                        if receiving.is_none() {
                            match self.spool.open_receiving(id) {
                                Ok(f) => receiving = Some(OpenFile(Arc::new(f))),
                                // Sealed (renamed) or removed meanwhile: the next round sees
                                // which. (Out of file descriptors: not in a tight loop.)
                                Err(_) => {
                                    drop(permit);
                                    tokio::time::sleep(EARLY_POLL).await;
                                    continue;
                                }
                            }
                        }
                        sending.insert(number);
                        let (ctx, key, upload_id, open) = (
                            self.clone(),
                            key.to_owned(),
                            upload.upload_id.clone(),
                            receiving.clone(),
                        );
                        let crc32c = has_full_object_crc32c(&upload.token);
                        tasks.spawn(async move {
                            let offset = u64::from(number - 1) * part_size;
                            let r = ctx
                                .upload_one_part(
                                    id,
                                    &key,
                                    (&upload_id, crc32c),
                                    number,
                                    offset,
                                    part_size,
                                    open.as_ref(),
                                )
                                .await;
                            drop(permit);
                            (number, r)
                        });
                        continue;
                    }
                    Ok(Err(_)) => break Ok(None),
                    Err(_) => {
                        if tasks.is_empty() {
                            // The slot is long in coming (the drain paused, the WAN budget
                            // spent): meanwhile the file is not held open, so that its blocks
                            // are freed at once if it is removed (refused on a full disk, say).
                            receiving = None;
                        }
                    }
                }
            }
            tokio::select! {
                Some(done) = tasks.join_next() => {
                    let Ok((number, result)) = done else { continue };
                    sending.remove(&number);
                    match result {
                        Ok(()) | Err(Stop::Cancelled) => {}
                        Err(Stop::Restart) => {
                            // The upload is gone (NoSuchUpload): drop it; the next round
                            // creates another.
                            let _ = self
                                .spool
                                .reset_upload(id, Some(&upload.upload_id), self.current(key))
                                .await;
                        }
                        // UploadPart answers no 412 and settles nothing.
                        Err(Stop::Permanent(e) | Stop::Exists(e)) => break Err(e),
                        Err(Stop::Conflict(why)) => {
                            break Err(S3Error::new(S3ErrorKind::Permanent, "UploadPart", why));
                        }
                    }
                }
                () = tokio::time::sleep(EARLY_POLL) => {}
            }
        };
        // Parts still being sent finish (and are journalled) before anything else looks at
        // the upload, so that none is sent twice.
        while tasks.join_next().await.is_some() {}
        match outcome {
            // Read the record again: the parts that were in flight are in it now.
            Ok(Some(_)) => {
                if let Some(file) = self.spool.file(id) {
                    self.deliver(file, key).await;
                }
                false
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(id, key, error = %e, "early upload stopped; the file is uploaded after its seal");
                true
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    /// Sends part `number` of `upload` (its id, and whether it has a full-object CRC32C).
    async fn upload_one_part(
        &self,
        id: FileId,
        key: &str,
        upload: (&str, bool),
        number: u32,
        offset: u64,
        len: u64,
        receiving: Option<&OpenFile>,
    ) -> Result<(), Stop> {
        let (upload_id, crc32c) = upload;
        let body = self.spool_range(id, offset, len, receiving);
        let uploaded = self
            .retry(id, key, || {
                self.store
                    .upload_part(key, upload_id, number, body.clone(), crc32c)
            })
            .await?;
        self.spool
            .record_part_done(id, upload_id, number, uploaded.etag, uploaded.crc32c)
            .await?;
        self.stats.bytes_sent.fetch_add(len, Ordering::Relaxed);
        self.stats.parts_sent.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(id, number, early = receiving.is_some(), "part sent");
        Ok(())
    }

    /// `overwrite = "never"` and the key is taken (412 on PutObject or Complete). HEAD says by
    /// what: our own object (a retried PUT or a repeated Complete whose first answer was lost;
    /// never a failure), an object with the same size and SHA-256 (the same bytes: delivered),
    /// or another object (a conflict, for a person to settle).
    async fn settle_existing(&self, file: &FileRecord, key: &str, token: &str) -> Result<(), Stop> {
        let head = self
            .retry(file.id, key, || self.store.head_object(key))
            .await?;
        let Some(head) = head else {
            // Gone again meanwhile: the next attempt writes it.
            return Err(Stop::Restart);
        };
        if head.size == file.size
            && head.metadata.get(META_TOKEN).map(String::as_str) == Some(token)
        {
            return self.verify_and_record(file, key, token).await;
        }
        let same_bytes = file.sha256.is_some_and(|sha| {
            head.size == file.size
                && head.metadata.get(META_SHA256).map(String::as_str)
                    == Some(hex::encode(sha).as_str())
        });
        if same_bytes {
            self.record_delivered(file.id, key, &head).await?;
            tracing::info!(
                id = file.id,
                key,
                "the key already holds the same bytes (same SHA-256): delivered"
            );
            return Ok(());
        }
        Err(Stop::Conflict(format!(
            "{key} already holds another object ({} bytes{}); overwrite = \"never\" keeps it",
            head.size,
            head.metadata
                .get(META_SHA256)
                .map(|s| format!(", sha256 {s}"))
                .unwrap_or_default()
        )))
    }

    /// HEAD shows the object with the file's size and the token of the upload that created
    /// it (so it is ours, and no later write replaced it); then `Delivered` is journalled.
    /// The token, not the SHA-256 metadata, is checked: both are only what we sent; the bytes
    /// themselves were checked per request on the way (CRC32C, ETag).
    async fn verify_and_record(
        &self,
        file: &FileRecord,
        key: &str,
        token: &str,
    ) -> Result<(), Stop> {
        let id = file.id;
        let head = self.retry(id, key, || self.store.head_object(key)).await?;
        let verified = head.as_ref().filter(|h| {
            h.size == file.size && h.metadata.get(META_TOKEN).map(String::as_str) == Some(token)
        });
        let Some(verified) = verified else {
            return Err(Stop::Permanent(S3Error::new(
                S3ErrorKind::Permanent,
                "HeadObject",
                format!(
                    "verification failed: expected {} bytes with {META_TOKEN} {token}, found {head:?}",
                    file.size
                ),
            )));
        };
        self.record_delivered(id, key, verified).await?;
        tracing::debug!(id, key, size = file.size, "verified");
        Ok(())
    }

    /// Logs and journals `Delivered` (the spool copy is then freed) and counts it. The object
    /// is in S3 and verified, so a delivery log that cannot be written (a full or failing
    /// spool disk) is waited out, retried on the drain's backoff, never a failure.
    async fn record_delivered(&self, id: FileId, key: &str, head: &ObjectHead) -> Result<(), Stop> {
        let object = DeliveredObject {
            bucket: self.store.bucket().to_owned(),
            key: key.to_owned(),
            etag: head.etag.clone(),
            version_id: head.version_id.clone(),
        };
        let mut attempt = 0u32;
        loop {
            match self
                .spool
                .record_delivered(id, object.clone(), self.current(key))
                .await
            {
                Ok(()) => break,
                Err(DeliveryError::NotCurrent(_)) => return Err(Stop::Cancelled),
                Err(DeliveryError::Log(e)) => {
                    tracing::warn!(id, key, attempt, error = %e,
                        "delivered, but the delivery log cannot be written; retrying");
                    if attempt == 0 {
                        crate::telemetry::record_error(
                            crate::telemetry::ErrorKind::SpoolWrite,
                            None,
                            &format!("delivery log: {e}"),
                        );
                    }
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
        self.stats.files_delivered.fetch_add(1, Ordering::Relaxed);
        Ok(())
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

/// A name clients rename after CLOSE (see [`TEMPORARY_NAME_SUFFIXES`]).
fn is_temporary_name(path: &str) -> bool {
    TEMPORARY_NAME_SUFFIXES.iter().any(|s| path.ends_with(s))
}

/// A name a client is likely to rename right after CLOSE: a temporary suffix, or rsync's
/// hidden `.name.XXXXXX` (a leading dot and a six-character random suffix).
fn is_renamed_after_close(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let rsync = name.starts_with('.')
        && name.rsplit_once('.').is_some_and(|(head, tail)| {
            head.len() > 1 && tail.len() == 6 && tail.chars().all(|c| c.is_ascii_alphanumeric())
        });
    is_temporary_name(name) || rsync
}

/// Tokens of multipart uploads created for a full-object CRC32C start with this.
const FULL_OBJECT_CRC32C_TOKEN_PREFIX: &str = "crc32c-";

/// True for the token of an upload created for a full-object CRC32C.
fn has_full_object_crc32c(token: &str) -> bool {
    token.starts_with(FULL_OBJECT_CRC32C_TOKEN_PREFIX)
}

fn new_token() -> String {
    format!("{:032x}", rand::thread_rng().r#gen::<u128>())
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
