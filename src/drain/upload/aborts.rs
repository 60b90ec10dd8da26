//! Aborting multipart uploads: the strays a crash left unrecorded (looked for by exact key,
//! never by prefix), and the uploads of versions the spool dropped (which fence their key).
//!
//! May use the store and the spool's journal of uploads; it never starts or completes one.

use super::{Ctx, lock};
use crate::drain::store::{ObjectStore, S3ErrorKind};

/// Transient errors an abort that fences nothing is retried through before it is left to the
/// next start's reconciliation.
pub(super) const ABORT_ATTEMPTS_COUNT_MAX: u32 = 8;

impl<S: ObjectStore> Ctx<S> {
    /// Multipart uploads this box created but a crash kept it from recording: nobody will
    /// complete them. Only keys with an unresolved `UploadIntent` are looked at, each listed
    /// by its exact key, and only uploads of that exact key the journal does not know are
    /// aborted; every other upload in the bucket (another box's, a person's, even under our
    /// prefix) is left alone. Retried until the store answers (after a power cut the WAN may
    /// come up late). Uploads this run created are never taken for strays.
    pub(super) async fn abort_unrecorded_uploads(&self) {
        for key in self.spool.upload_intent_keys() {
            self.abort_strays(&key).await;
        }
    }

    /// Aborts the open uploads of exactly `key` that neither the journal nor this run knows:
    /// uploads this box created but never learned the id of (a crash, or a lost response).
    pub(super) async fn abort_strays(&self, key: &str) {
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
    pub(super) async fn abort_upload(&self, key: &str, upload_id: &str, attempts: Option<u32>) {
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
}
