//! Parts on the wire: a slot among the `concurrency` in flight (once the shaper admits it),
//! one part sent and journalled, and request bodies that are ranges of spool files (streamed
//! by the store, never held in memory whole).
//!
//! May use the store, the shaper and the spool's files and journal; which parts to send, and
//! what a part's stop means for the upload, are its callers' to decide.

use std::sync::atomic::Ordering;

use super::{Ctx, PartSlot, Stop};
use crate::drain::store::{Body, FileRange, ObjectStore, OpenFile, S3Error, S3ErrorKind};
use crate::spool::{FileId, FileState};

impl<S: ObjectStore> Ctx<S> {
    /// One of the `concurrency` slots for a part (or a small file) of `len` bytes in flight,
    /// once the shaper admits it.
    pub(super) async fn part_permit(&self, len: u64) -> Result<PartSlot, Stop> {
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

    #[allow(clippy::too_many_arguments)]
    /// Sends part `number` of `upload` (its id, and whether it has a full-object CRC32C).
    pub(super) async fn upload_one_part(
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

    /// `len` bytes of the sealed file `id` from `offset`, as a request body; or of the
    /// receiving file open as `receiving` (early drain).
    pub(super) fn spool_range(
        &self,
        id: FileId,
        offset: u64,
        len: u64,
        receiving: Option<&OpenFile>,
    ) -> Body {
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
    pub(super) fn local_error(&self, id: FileId, what: &str, err: &std::io::Error) -> Stop {
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
}
