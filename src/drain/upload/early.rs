//! Early drain: the full parts of a file still arriving in order are uploaded as its writer's
//! append frontier passes them; once the file is sealed it is delivered like any other (which
//! checks those parts against the sealed bytes before the Complete).
//!
//! May use the spool's live view of files being received; parts go through `parts` and the
//! delivery after the seal through `deliver`. It completes nothing itself: after the seal it
//! hands the file to `deliver`, which completes the upload.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::create::has_full_object_crc32c;
use super::queue::{Queue, is_temporary_name};
use super::{Ctx, Done, Drain, Ended, Stop};
use crate::drain::store::{ObjectStore, OpenFile, S3Error, S3ErrorKind};
use crate::spool::catalog::{FileRecord, UploadProgress};
use crate::spool::{FileId, FileState};

/// How often an early upload looks whether its file's writer has passed another part.
/// At 300 MiB/s a 16 MiB part takes 53 ms to arrive.
const EARLY_POLL: Duration = Duration::from_millis(20);

impl<S: ObjectStore> Drain<S> {
    /// Starts early uploads of files still arriving whose first part is written.
    pub(super) fn start_early(&self, tasks: &mut JoinSet<Done>, queue: &mut Queue) {
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

/// How an early upload ends: `Ok(Some(file))` once the file is sealed (it is then delivered
/// like any other), `Ok(None)` when there is nothing more to do now, `Err` at a permanent
/// error.
type EarlyOutcome = Result<Option<FileRecord>, S3Error>;

/// An early upload's parts in flight, and the receiving file they are read from.
struct EarlyParts {
    tasks: JoinSet<(u32, Result<(), Stop>)>,
    /// Numbers of the parts in `tasks`.
    sending: HashSet<u32>,
    /// The file being received, held open while parts are sent from it.
    receiving: Option<OpenFile>,
}

/// What became of an attempt to start an early part.
enum PartStart {
    /// Started, or the receiving file could not be opened: look at the file again.
    Again,
    /// No slot came within a poll: reap finished parts meanwhile.
    Waiting,
    /// The slots are closed: the drain is stopping.
    Closed,
}

impl<S: ObjectStore> Ctx<S> {
    /// Uploads the full parts of a file still arriving as its writer's append frontier passes
    /// them; once the file is sealed, delivers it like any other (checking those parts). Ends
    /// when the file is left partial (its upload stays open for a resume), removed or renamed.
    /// Returns true if the early upload met a permanent error: the file then waits for its
    /// seal, and the error is met again (and recorded) by the ordinary delivery.
    pub(super) async fn deliver_early(&self, id: FileId, key: &str) -> bool {
        let mut parts = EarlyParts {
            tasks: JoinSet::new(),
            sending: HashSet::new(),
            receiving: None,
        };
        let outcome = loop {
            if let ControlFlow::Break(outcome) = self.early_round(id, key, &mut parts).await {
                break outcome;
            }
        };
        // Parts still being sent finish (and are journalled) before anything else looks at
        // the upload, so that none is sent twice.
        while parts.tasks.join_next().await.is_some() {}
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

    /// One look at the file: starts its upload or its next ready part, or reaps a part that
    /// ended (waiting a poll at most).
    async fn early_round(
        &self,
        id: FileId,
        key: &str,
        parts: &mut EarlyParts,
    ) -> ControlFlow<EarlyOutcome> {
        let file = match self.still_receiving(id, key) {
            ControlFlow::Continue(file) => file,
            ControlFlow::Break(outcome) => return ControlFlow::Break(outcome),
        };
        let upload = match file.upload {
            Some(u) => u,
            None => match self.start_upload(&file, key, None).await {
                Ok(u) => u,
                Err(Stop::Permanent(e)) => return ControlFlow::Break(Err(e)),
                // The file changed meanwhile: the next round sees how.
                Err(_) => {
                    tokio::time::sleep(EARLY_POLL).await;
                    return ControlFlow::Continue(());
                }
            },
        };
        if let Some(number) = self.next_early_part(id, &upload, &parts.sending) {
            // Waits a poll at most, then reaps finished parts and looks at the file again
            // (sealed, removed or renamed ends the wait).
            match self.start_early_part(id, key, &upload, number, parts).await {
                PartStart::Again => return ControlFlow::Continue(()),
                PartStart::Closed => return ControlFlow::Break(Ok(None)),
                PartStart::Waiting => {}
            }
        }
        tokio::select! {
            Some(done) = parts.tasks.join_next() => {
                let Ok((number, result)) = done else { return ControlFlow::Continue(()) };
                parts.sending.remove(&number);
                if let Err(e) = self.early_part_ended(id, key, &upload, result).await {
                    return ControlFlow::Break(Err(e));
                }
            }
            () = tokio::time::sleep(EARLY_POLL) => {}
        }
        ControlFlow::Continue(())
    }

    /// The file if it is still being received under `key`; otherwise how the early upload
    /// ends (sealed: delivered; removed, renamed or left partial: nothing more now).
    fn still_receiving(&self, id: FileId, key: &str) -> ControlFlow<EarlyOutcome, FileRecord> {
        let Some(file) = self.spool.file(id) else {
            return ControlFlow::Break(Ok(None));
        };
        if self.cfg.object_key(&file.user, &file.path) != key {
            return ControlFlow::Break(Ok(None));
        }
        match file.state {
            FileState::Receiving => ControlFlow::Continue(file),
            FileState::Sealed | FileState::Uploading => ControlFlow::Break(Ok(Some(file))),
            _ => ControlFlow::Break(Ok(None)),
        }
    }

    /// The lowest full part below the writer's frontier that is neither sent nor being sent
    /// (within the parts S3 allows).
    fn next_early_part(
        &self,
        id: FileId,
        upload: &UploadProgress,
        sending: &HashSet<u32>,
    ) -> Option<u32> {
        let frontier = self.spool.live_frontier(id).unwrap_or(0);
        (1..=frontier / upload.part_size)
            .filter_map(|n| u32::try_from(n).ok())
            .find(|n| !upload.parts.contains_key(n) && !sending.contains(n))
            .filter(|n| u64::from(*n) <= crate::limits::PARTS_COUNT_MAX)
    }

    /// Starts sending part `number` once a slot comes (waiting a poll at most).
    async fn start_early_part(
        &self,
        id: FileId,
        key: &str,
        upload: &UploadProgress,
        number: u32,
        parts: &mut EarlyParts,
    ) -> PartStart {
        let part_size = upload.part_size;
        let permit = match tokio::time::timeout(EARLY_POLL, self.part_permit(part_size)).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return PartStart::Closed,
            Err(_) => {
                if parts.tasks.is_empty() {
                    // The slot is long in coming (the drain paused, the WAN budget
                    // spent): meanwhile the file is not held open, so that its blocks
                    // are freed at once if it is removed (refused on a full disk, say).
                    parts.receiving = None;
                }
                return PartStart::Waiting;
            }
        };
        if parts.receiving.is_none() {
            match self.spool.open_receiving(id) {
                Ok(f) => parts.receiving = Some(OpenFile(Arc::new(f))),
                // Sealed (renamed) or removed meanwhile: the next round sees
                // which. (Out of file descriptors: not in a tight loop.)
                Err(_) => {
                    drop(permit);
                    tokio::time::sleep(EARLY_POLL).await;
                    return PartStart::Again;
                }
            }
        }
        parts.sending.insert(number);
        let (ctx, key, upload_id, open) = (
            self.clone(),
            key.to_owned(),
            upload.upload_id.clone(),
            parts.receiving.clone(),
        );
        let crc32c = has_full_object_crc32c(&upload.token);
        parts.tasks.spawn(async move {
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
        PartStart::Again
    }

    /// An early part ended: a void upload is dropped (the next round creates another); a
    /// permanent error ends the early upload.
    async fn early_part_ended(
        &self,
        id: FileId,
        key: &str,
        upload: &UploadProgress,
        result: Result<(), Stop>,
    ) -> Result<(), S3Error> {
        match result {
            Ok(()) | Err(Stop::Cancelled) => Ok(()),
            Err(Stop::Restart) => {
                // The upload is gone (NoSuchUpload): drop it; the next round
                // creates another.
                let _ = self
                    .spool
                    .reset_upload(id, Some(&upload.upload_id), self.current(key))
                    .await;
                Ok(())
            }
            // UploadPart answers no 412 and settles nothing.
            Err(Stop::Permanent(e) | Stop::Exists(e)) => Err(e),
            Err(Stop::Conflict(why)) => {
                Err(S3Error::new(S3ErrorKind::Permanent, "UploadPart", why))
            }
        }
    }
}
