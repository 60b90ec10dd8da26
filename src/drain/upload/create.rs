//! Creating a multipart upload: its token (which fixes whether it carries a full-object
//! CRC32C), the object's metadata, the intent journalled before the create and the upload
//! journalled after it.
//!
//! May use the store and the spool's journal; strays a lost create answer left are handed to
//! `aborts`. It sends no part and completes nothing.

use std::sync::atomic::{AtomicU32, Ordering};

use rand::Rng;

use super::aborts::ABORT_ATTEMPTS_COUNT_MAX;
use super::{Ctx, Stop, lock, part_size_for};
use crate::drain::store::{
    META_BOX, META_SEALED_AT, META_SHA256, META_TOKEN, META_UPLOADER, ObjectMetadata, ObjectStore,
};
use crate::spool::catalog::{FileRecord, UploadProgress};
use crate::spool::{CreatedUpload, FileState};

/// Tokens of multipart uploads created for a full-object CRC32C start with this.
const FULL_OBJECT_CRC32C_TOKEN_PREFIX: &str = "crc32c-";

/// True for the token of an upload created for a full-object CRC32C.
pub(super) fn has_full_object_crc32c(token: &str) -> bool {
    token.starts_with(FULL_OBJECT_CRC32C_TOKEN_PREFIX)
}

pub(super) fn new_token() -> String {
    format!("{:032x}", rand::thread_rng().r#gen::<u128>())
}

impl<S: ObjectStore> Ctx<S> {
    /// Creates a multipart upload for `file` under `key` (sealed, or still arriving: early
    /// drain) and journals it; the object carries `sha256` if given.
    pub(super) async fn start_upload(
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

    /// The object's metadata: our upload token, the uploader and the box; the SHA-256 and
    /// the seal time where they are known before the upload starts (not for an early upload
    /// of a file still arriving: S3 fixes metadata at the start).
    pub(super) fn metadata(
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
}
