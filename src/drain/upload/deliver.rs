//! One file's delivery: a single PUT for a file under one part, or a multipart upload whose
//! missing parts are sent (at most `concurrency` in flight) before its completion; and what
//! the end of a delivery means for the file (delivered, conflict, failed, or start again).
//!
//! May use the store, the spool's journal of the upload, and telemetry; it reads no spool
//! bytes itself (bodies are `parts`' ranges, whole-file passes are `passes`').

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::task::JoinSet;

use super::create::{has_full_object_crc32c, new_token};
use super::{Ctx, Stop};
use crate::drain::store::{ObjectStore, S3Error, S3ErrorKind};
use crate::spool::catalog::{FileRecord, UploadProgress};

impl<S: ObjectStore> Ctx<S> {
    pub(super) async fn deliver(&self, mut file: FileRecord, key: &str) {
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
                    // A log field: saturating (after 584 million years) is the right meaning.
                    let duration_ms =
                        u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    tracing::info!(event = "delivered", id = file.id, user = %file.user,
                        path = %file.path.display(), key, size = file.size,
                        duration_ms,
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
                    record_given_up(&file, &why);
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
                    record_given_up(&file, &e.to_string());
                    let _ = self
                        .spool
                        .record_failed(file.id, &e.to_string(), self.current(key))
                        .await;
                    return;
                }
            }
        }
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

    /// A multipart delivery: the upload resumed from the journal (or created), its missing
    /// parts sent, then completed.
    async fn deliver_multipart(&self, file: &FileRecord, key: &str) -> Result<(), Stop> {
        let upload = self.multipart_upload(file, key).await?;
        let part_size = upload.part_size;
        let parts_count = file.size.div_ceil(part_size);
        if upload.early && (file.size < part_size || parts_count > crate::limits::PARTS_COUNT_MAX) {
            // Truncated below one part, or grown past 10 000 of them: start again from the
            // sealed file (a single PUT, or parts of the right size).
            return Err(Stop::Restart);
        }
        let valid = self.parts_still_valid(file, &upload, parts_count).await?;
        self.send_missing_parts(file, key, &upload, parts_count, &valid)
            .await?;
        self.complete(file, key, &upload, parts_count).await
    }

    /// The file's multipart upload under `key`: the journalled one, or a new one. The SHA-256
    /// goes into the object's metadata where it is known or early drain is off; with early
    /// drain on, files longer than a part are never hashed.
    async fn multipart_upload(&self, file: &FileRecord, key: &str) -> Result<UploadProgress, Stop> {
        let sha = match (file.sha256, self.cfg.early) {
            (Some(h), _) => Some(h),
            (None, true) => None,
            (None, false) => Some(self.file_sha256(file).await?),
        };
        match &file.upload {
            Some(u) if u.key == key => Ok(u.clone()),
            Some(_) => Err(Stop::Restart),
            None => self.start_upload(file, key, sha.as_ref()).await,
        }
    }

    /// The parts already sent that hold the sealed file's bytes (among the first
    /// `parts_count`): these are not sent again.
    async fn parts_still_valid(
        &self,
        file: &FileRecord,
        upload: &UploadProgress,
        parts_count: u64,
    ) -> Result<HashSet<u32>, Stop> {
        if upload.early && !file.appended_only {
            // Written out of order, resumed or truncated at some point: parts sent before the
            // seal may hold bytes written again since. Each counts only if its CRC32C still
            // matches the sealed file.
            self.check_early_parts(file, upload, parts_count).await
        } else {
            // Every write was an append: no byte below the frontier an early part was read
            // from was ever written again.
            Ok(upload
                .parts
                .keys()
                .filter(|n| u64::from(**n) <= parts_count)
                .copied()
                .collect())
        }
    }

    /// Sends the parts of `upload` not in `valid`, at most `concurrency` in flight; returns
    /// once all those started have ended (the first error stops the rest from starting).
    async fn send_missing_parts(
        &self,
        file: &FileRecord,
        key: &str,
        upload: &UploadProgress,
        parts_count: u64,
        valid: &HashSet<u32>,
    ) -> Result<(), Stop> {
        let (id, part_size) = (file.id, upload.part_size);
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
        Ok(())
    }
}

/// Counts a file the drain gives up on (failed, or a conflict at its key) among the errors
/// telemetry reports, under its user and path.
fn record_given_up(file: &FileRecord, cause: &str) {
    crate::telemetry::record_error(
        crate::telemetry::ErrorKind::S3Permanent,
        Some(format!("{}:{}", file.user, file.path.display())),
        cause,
    );
}
