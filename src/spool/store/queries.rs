//! Reading the catalog for the drain, status and tools: copies of file records and counts,
//! each taken under the catalog lock for a bounded time.
//!
//! It only reads: no record is applied or journalled here.

use super::Spool;
use crate::spool::catalog::FileRecord;
use crate::spool::{FileId, FileState};

impl Spool {
    /// A copy of one file's record.
    pub fn file(&self, id: FileId) -> Option<FileRecord> {
        self.lock().file(id).cloned()
    }

    /// Copies of the records of files in one of `states`, oldest first. O(answer): from the
    /// catalog's index by state.
    pub fn files_in(&self, states: &[FileState]) -> Vec<FileRecord> {
        self.oldest_in(states, usize::MAX)
    }

    /// Copies of the oldest (lowest id) `limit` files in one of `states`: the drain's next
    /// candidates, O(limit · states) however long the queue.
    pub fn oldest_in(&self, states: &[FileState], limit: usize) -> Vec<FileRecord> {
        let catalog = self.lock();
        let mut ids: Vec<FileId> = states
            .iter()
            .flat_map(|s| catalog.ids_in(*s).take(limit))
            .collect();
        ids.sort_unstable();
        ids.truncate(limit);
        ids.iter()
            .filter_map(|id| catalog.file(*id).cloned())
            .collect()
    }

    /// The state of one file, if the catalog still holds it.
    pub fn state_of(&self, id: FileId) -> Option<FileState> {
        self.lock().file(id).map(|f| f.state)
    }

    /// Files and bytes per state (O(1)).
    pub fn counts(&self) -> crate::spool::StateCounts {
        self.lock().counts()
    }

    /// Journal records that did not fit their file's state since the spool opened, replay
    /// included (see [`crate::spool::catalog::Catalog::apply`]): each is a bug or the trace
    /// of a damaged journal.
    pub fn invalid_transitions(&self) -> u64 {
        self.lock().invalid_transitions()
    }

    /// Up to `limit` files for status: every upload in flight and receiving file first (each
    /// bounded by the sessions and the drain's concurrency), then partial, failed and
    /// conflicting ones, then the oldest waiting ones, then the most recently delivered.
    /// Counts per state come from [`Spool::counts`].
    pub fn files_for_status(&self, limit: usize) -> Vec<FileRecord> {
        let catalog = self.lock();
        let mut out: Vec<FileRecord> = Vec::new();
        for state in crate::spool::PENDING_STATES_LISTED {
            let room = limit.saturating_sub(out.len());
            out.extend(
                catalog
                    .in_state(state)
                    .filter(|f| !f.hidden)
                    .take(room)
                    .cloned(),
            );
        }
        let room = limit.saturating_sub(out.len());
        out.extend(catalog.recently_delivered().take(room).cloned());
        out.sort_by_key(|f| f.id);
        out
    }

    /// One page of the files in `state`: up to `limit` after the file `after` (from the oldest
    /// with `None`), oldest first, and the id to pass as `after` for the next page (`None` at
    /// the end). Versions hidden by a newer upload of the same path are left out, as in status.
    /// Costs O(log files + limit) under the catalog lock, whatever the list's length.
    pub fn files_page(
        &self,
        state: FileState,
        after: Option<FileId>,
        limit: usize,
    ) -> (Vec<FileRecord>, Option<FileId>) {
        let limit = limit.max(1);
        let catalog = self.lock();
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut last = None;
        let mut ids = catalog.ids_in_after(state, after);
        for id in ids.by_ref() {
            if out.len() == limit {
                // More remain: the caller goes on after the last one it got.
                return (out, last);
            }
            last = Some(id);
            if let Some(f) = catalog.file(id).filter(|f| !f.hidden) {
                out.push(f.clone());
            }
        }
        (out, None)
    }

    /// Copies of every file record, oldest first: O(all files), for tests and tools only.
    pub fn files(&self) -> Vec<FileRecord> {
        let mut v: Vec<FileRecord> = self.lock().files().cloned().collect();
        v.sort_by_key(|f| f.id);
        v
    }
}
