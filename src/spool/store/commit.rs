//! Committing a change: under the catalog lock, check, apply the records and submit them to
//! the journal (so journal order equals apply order); then wait for durability if asked and
//! carry out the effects (free spool files, hand uploads to abort to the drain).
//!
//! Every change of the catalog goes through here; it may use the catalog and the journal and
//! leaves the meaning of each change to its caller.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::sync::MutexGuard;

use super::{Spool, journal_broken};
use crate::journal::Journal;
use crate::spool::catalog::{Catalog, Effects, Record};
use crate::spool::{FileId, FsError, FsErrorKind};

impl Spool {
    /// Applies `records` if `check` passes on the current catalog, submits them to the journal
    /// in the same order, waits for durability if asked, and carries out their effects.
    /// Returns `false` (nothing applied) if the check failed.
    pub async fn commit(
        &self,
        records: Vec<Record>,
        durable: bool,
        check: impl FnOnce(&Catalog) -> Result<(), FsError>,
    ) -> Result<(), FsError> {
        // A record that cannot be journalled (above the frame cap) is refused before anything
        // acts on it: the catalog never holds a state the journal would not replay.
        let frames = Journal::encode(&records).map_err(|e| {
            tracing::error!(error = %e, "journal record refused");
            FsError::new(
                FsErrorKind::Failure,
                format!("cannot record this change: {e}"),
            )
        })?;
        let (ticket, effects) = {
            let mut catalog = self.lock();
            check(&catalog)?;
            let mut effects = Effects::default();
            for r in &records {
                // `check` and the catalog lock make every live record fit: one that does not
                // is a bug (counted and logged by the catalog; a test fails on it).
                let applied = catalog.apply(r);
                debug_assert!(applied.is_ok(), "a live record refused: {applied:?}");
                let Ok(e) = applied else {
                    continue;
                };
                effects.free_spool.extend(e.free_spool);
                effects.abort_uploads.extend(e.abort_uploads);
                effects.stray_searches.extend(e.stray_searches);
            }
            let ticket = self.journal.submit_encoded(frames, durable);
            if !effects.free_spool.is_empty() {
                self.unlinks_pending()
                    .extend(effects.free_spool.iter().copied());
            }
            (ticket, effects)
        };
        if durable && let Err(e) = ticket.wait().await {
            journal_broken(&e);
        }
        self.carry_out(effects);
        self.compact_if_due();
        Ok(())
    }

    pub(super) fn unlinks_pending(&self) -> MutexGuard<'_, HashSet<FileId>> {
        self.unlinks_pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn carry_out(&self, effects: Effects) {
        for id in effects.free_spool {
            self.unlinks_pending().remove(&id);
            for path in [self.partial_path(id), self.sealed_path(id)] {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "could not free spool file")
                    }
                }
            }
        }
        self.hand_to_drain(&self.aborts, effects.abort_uploads);
        self.hand_to_drain(&self.stray_searches, effects.stray_searches);
    }
}
