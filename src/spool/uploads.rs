//! The upload API: how the drain moves a file through its upload states. The drain says what
//! happened (an upload created, a part done, delivered, failed) and which file it was working
//! for; the spool builds the journal records, checks that the file is still the one the
//! upload is for, and journals the step durably before it counts. The drain never builds a
//! [`Record`] nor reads the catalog under its lock.
//!
//! "Still the one": each step takes the drain's `is_current` predicate over the file's
//! record (the drain knows how keys are made; the spool does not), and the step is refused
//! with [`NotCurrent`] when the file was removed, renamed, superseded, failed or delivered
//! meanwhile, or (for part and reset steps) when its recorded upload is no longer `upload_id`.
//!
//! It never calls the drain: the drain calls it.

use std::sync::Arc;

use super::catalog::{FileRecord, Record, UploadProgress};
use super::deliveries::{Delivery, rfc3339};
use super::{FileId, FsError, FsErrorKind, Spool, now_unix};

/// A step refused because the file is no longer what the upload was for.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the file is no longer current: {0}")]
pub struct NotCurrent(String);

impl From<FsError> for NotCurrent {
    fn from(e: FsError) -> Self {
        NotCurrent(e.message)
    }
}

/// Where a delivered file is in S3 and as what (from the HEAD that verified it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredObject {
    /// The bucket.
    pub bucket: String,
    /// The object key.
    pub key: String,
    /// The ETag HEAD answered.
    pub etag: Option<String>,
    /// The object's version, in a versioned bucket.
    pub version_id: Option<String>,
}

/// Why a delivery was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The file is no longer the one delivered.
    #[error(transparent)]
    NotCurrent(#[from] NotCurrent),
    /// The delivery log could not be written (the journal was not touched).
    #[error("cannot write the delivery log: {0}")]
    Log(std::io::Error),
}

impl From<FsError> for DeliveryError {
    fn from(e: FsError) -> Self {
        DeliveryError::NotCurrent(e.into())
    }
}

fn not_current(why: &str) -> FsError {
    FsError::new(FsErrorKind::NotFound, why)
}

/// The file's record if `is_current` holds for it.
fn current<'a>(
    file: Option<&'a FileRecord>,
    is_current: &impl Fn(&FileRecord) -> bool,
) -> Result<&'a FileRecord, FsError> {
    file.filter(|f| is_current(f))
        .ok_or_else(|| not_current("no longer current"))
}

/// The recorded upload of `file`, if it is `upload_id`.
fn with_upload(file: &FileRecord, upload_id: &str) -> Result<(), FsError> {
    match &file.upload {
        Some(u) if u.upload_id == upload_id => Ok(()),
        _ => Err(not_current("upload no longer current")),
    }
}

/// What a created multipart upload is.
pub struct CreatedUpload<'a> {
    /// The object key it was created under.
    pub key: &'a str,
    /// S3's id of the multipart upload.
    pub upload_id: &'a str,
    /// Bytes per part (the last may be shorter).
    pub part_size: u64,
    /// Random proof of ownership, stored as object metadata.
    pub token: &'a str,
    /// The create was retried (a first answer may have been lost and left an upload open):
    /// the intent stays journalled with the upload, so the next start searches `key` again.
    pub keep_intent: bool,
}

impl Spool {
    /// Journals `record` durably if the file is still the one `is_current` accepts.
    async fn commit_if_current(
        &self,
        id: FileId,
        record: Record,
        is_current: impl Fn(&FileRecord) -> bool,
    ) -> Result<(), NotCurrent> {
        self.commit(vec![record], true, |c| {
            current(c.file(id), &is_current).map(|_| ())
        })
        .await?;
        Ok(())
    }

    /// Journals that an upload of `id` under `key` is about to be created, before
    /// CreateMultipartUpload, so that a crash before its id is recorded leaves a trace.
    pub async fn record_upload_intent(
        &self,
        id: FileId,
        key: &str,
        is_current: impl Fn(&FileRecord) -> bool,
    ) -> Result<(), NotCurrent> {
        let record = Record::UploadIntent {
            id,
            key: key.to_owned(),
            at_unix: now_unix(),
        };
        self.commit_if_current(id, record, is_current).await
    }

    /// Journals a created multipart upload; refused if the file has one already. Returns
    /// the upload as recorded.
    pub async fn record_upload_started(
        &self,
        id: FileId,
        created: &CreatedUpload<'_>,
        is_current: impl Fn(&FileRecord) -> bool,
    ) -> Result<UploadProgress, NotCurrent> {
        let mut records = vec![Record::UploadStarted {
            id,
            key: created.key.to_owned(),
            upload_id: created.upload_id.to_owned(),
            part_size: created.part_size,
            token: created.token.to_owned(),
        }];
        if created.keep_intent {
            records.push(Record::UploadIntent {
                id,
                key: created.key.to_owned(),
                at_unix: now_unix(),
            });
        }
        self.commit(records, true, |c| {
            if current(c.file(id), &is_current)?.upload.is_some() {
                return Err(not_current("already uploading"));
            }
            Ok(())
        })
        .await?;
        self.file(id)
            .and_then(|f| f.upload)
            .ok_or_else(|| NotCurrent("gone once recorded".to_owned()))
    }

    /// Journals a part of upload `upload_id` as done; it counts only from here on.
    pub async fn record_part_done(
        &self,
        id: FileId,
        upload_id: &str,
        number: u32,
        etag: String,
        crc32c: u32,
    ) -> Result<(), NotCurrent> {
        let record = Record::PartDone {
            id,
            number,
            etag,
            crc32c,
        };
        self.commit(vec![record], true, |c| match c.file(id) {
            Some(f) => with_upload(f, upload_id),
            None => Err(not_current("no longer current")),
        })
        .await?;
        Ok(())
    }

    /// Drops the file's upload (`NoSuchUpload`, or parts that no longer match): the next
    /// attempt creates another. With `upload_id`, only if that is still the recorded one.
    pub async fn reset_upload(
        &self,
        id: FileId,
        upload_id: Option<&str>,
        is_current: impl Fn(&FileRecord) -> bool,
    ) -> Result<(), NotCurrent> {
        self.commit(vec![Record::UploadReset { id }], true, |c| {
            let f = current(c.file(id), &is_current)?;
            upload_id.map_or(Ok(()), |u| with_upload(f, u))
        })
        .await?;
        Ok(())
    }

    /// Writes the file's line to the delivery log (flushed to disk), then journals it as
    /// delivered (verified in S3: `object` says where and as what); its spool copy is freed.
    /// A crash between the two writes the line again on the next attempt: no delivery is
    /// missing from the log (see `deliveries.rs`). A log that cannot be written stops the
    /// delivery, which is retried like a store error.
    pub async fn record_delivered(
        &self,
        id: FileId,
        object: DeliveredObject,
        is_current: impl Fn(&FileRecord) -> bool,
    ) -> Result<(), DeliveryError> {
        let at_unix = now_unix();
        // Only what the line needs, not the record (whose upload may list thousands of parts).
        let line = {
            let catalog = self.lock();
            let file = current(catalog.file(id), &is_current)?;
            Delivery {
                delivered_at: rfc3339(at_unix),
                user: file.user.clone(),
                path: file.path.display(),
                bucket: object.bucket,
                key: object.key,
                size: file.size,
                sha256: file.sha256.map(hex::encode),
                etag: object.etag,
                version_id: object.version_id,
                sealed_at: rfc3339(file.mtime_unix),
                box_name: self.box_name.clone(),
                id,
            }
        };
        let log = Arc::clone(&self.deliveries);
        tokio::task::spawn_blocking(move || log.append(&line))
            .await
            .map_err(|e| DeliveryError::Log(std::io::Error::other(e)))?
            .map_err(DeliveryError::Log)?;
        let record = Record::Delivered { id, at_unix };
        self.commit_if_current(id, record, is_current).await?;
        Ok(())
    }

    /// Journals a permanent failure (the cause cut to a bounded length); the file is kept.
    pub async fn record_failed(
        &self,
        id: FileId,
        cause: &str,
        is_current: impl Fn(&FileRecord) -> bool,
    ) -> Result<(), NotCurrent> {
        self.commit_if_current(id, Record::failed(id, cause), is_current)
            .await
    }

    /// Journals a conflict (`overwrite = "never"` met another object); the file is kept.
    pub async fn record_conflict(
        &self,
        id: FileId,
        cause: &str,
        is_current: impl Fn(&FileRecord) -> bool,
    ) -> Result<(), NotCurrent> {
        self.commit_if_current(id, Record::conflict(id, cause), is_current)
            .await
    }
}
