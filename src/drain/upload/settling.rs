//! Settling, what happens after the object is written (a PUT or a Complete): HEAD shows it is
//! ours (size and upload token) and `Delivered` is journalled; a 412 under `overwrite =
//! "never"` is settled by what HEAD finds at the key (ours, the same bytes, or a conflict).
//!
//! May use the store's HEAD and the spool's delivery log; it writes nothing to the store.

use std::sync::atomic::Ordering;

use super::{Ctx, Stop};
use crate::drain::store::{META_SHA256, META_TOKEN, ObjectHead, ObjectStore, S3Error, S3ErrorKind};
use crate::spool::catalog::FileRecord;
use crate::spool::{DeliveredObject, DeliveryError, FileId};

impl<S: ObjectStore> Ctx<S> {
    /// `overwrite = "never"` and the key is taken (412 on PutObject or Complete). HEAD says by
    /// what: our own object (a retried PUT or a repeated Complete whose first answer was lost;
    /// never a failure), an object with the same size and SHA-256 (the same bytes: delivered),
    /// or another object (a conflict, for a person to settle).
    pub(super) async fn settle_existing(
        &self,
        file: &FileRecord,
        key: &str,
        token: &str,
    ) -> Result<(), Stop> {
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
    pub(super) async fn verify_and_record(
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
    pub(super) async fn record_delivered(
        &self,
        id: FileId,
        key: &str,
        head: &ObjectHead,
    ) -> Result<(), Stop> {
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
