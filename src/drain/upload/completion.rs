//! Completion of a multipart upload: the parts list from the journal (each part's ETag, and
//! its CRC32C where the object carries a full-object one), the Complete, and a Complete whose
//! earlier answer was lost (`NoSuchUpload`), settled by HEAD with our upload token. What
//! follows a Complete is `settling`'s.
//!
//! May use the store and the spool's journal of the upload; it sends no part and never
//! records a delivery itself (`settling` does, after HEAD).

use super::create::has_full_object_crc32c;
use super::{Ctx, Stop};
use crate::drain::store::{CompletedPart, META_TOKEN, ObjectStore};
use crate::num::u64_from_usize;
use crate::spool::catalog::{FileRecord, UploadProgress};

impl<S: ObjectStore> Ctx<S> {
    /// Completes `upload` once all its `parts_count` parts are journalled, then settles the
    /// object (verified and recorded, or a 412 settled by what the key holds).
    pub(super) async fn complete(
        &self,
        file: &FileRecord,
        key: &str,
        upload: &UploadProgress,
        parts_count: u64,
    ) -> Result<(), Stop> {
        let id = file.id;
        if !self.still_current(id, key) {
            return Err(Stop::Cancelled);
        }
        let parts = self.completed_parts(file, upload, parts_count)?;
        if u64_from_usize(parts.len()) != parts_count {
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

    /// The journalled parts of `upload` among the first `parts_count`, as the Complete lists
    /// them. Cancelled if the file no longer has that upload.
    fn completed_parts(
        &self,
        file: &FileRecord,
        upload: &UploadProgress,
        parts_count: u64,
    ) -> Result<Vec<CompletedPart>, Stop> {
        let part_size = upload.part_size;
        let crc32c = has_full_object_crc32c(&upload.token);
        Ok(self
            .spool
            .file(file.id)
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
            .collect())
    }
}
