//! Retry and backoff: transient S3 errors are retried forever with capped exponential backoff
//! and full jitter while the file is still current; everything else becomes a `Stop`.
//!
//! May use the store's error kinds, the spool's view of the file, and telemetry; it decides
//! nothing about what a stop means (the caller does).

use std::time::Duration;

use rand::Rng;

use super::{Ctx, Stop, lock};
use crate::drain::store::{ObjectStore, S3Error, S3ErrorKind};
use crate::spool::catalog::FileRecord;
use crate::spool::{FileId, FileState};

impl<S: ObjectStore> Ctx<S> {
    /// Whether a file is still to be delivered under `key` (not removed, renamed, failed or
    /// done; a file still arriving counts, for its early upload): the check the spool makes
    /// before it journals each step of the upload.
    pub(super) fn current<'a>(&'a self, key: &'a str) -> impl Fn(&FileRecord) -> bool + 'a {
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

    pub(super) fn still_current(&self, id: FileId, key: &str) -> bool {
        self.spool.file(id).is_some_and(|f| self.current(key)(&f))
    }

    /// The delay before retry `attempt` (from 0): a random time between half and all of
    /// `backoff_base × 2^attempt`, capped at `backoff_max`, at least a millisecond.
    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        // Durations beyond u64::MAX ms (584 million years) saturate: they are caps anyway.
        let base = u64::try_from(self.cfg.backoff_base.as_millis()).unwrap_or(u64::MAX);
        let cap = u64::try_from(self.cfg.backoff_max.as_millis()).unwrap_or(u64::MAX);
        let ceiling = base.saturating_mul(1u64 << attempt.min(20)).min(cap).max(1);
        Duration::from_millis(rand::thread_rng().gen_range(ceiling / 2..=ceiling))
    }

    /// Runs `op` until it succeeds or fails permanently; transient errors are retried forever
    /// while the file is still current.
    pub(super) async fn retry<T, F, Fut>(&self, id: FileId, key: &str, mut op: F) -> Result<T, Stop>
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
}
