//! Retry: failed and conflicting files queued again (`sftpgw retry`, or the drain's own
//! retry of a failed file after its backoff).
//!
//! It journals `Retried` records through `commit.rs` and wakes the drain; nothing else.

use super::Spool;
use crate::spool::catalog::Record;
use crate::spool::{FileId, FileState, VPath};

impl Spool {
    /// Queues again those of `ids` that are still failed; returns how many.
    pub async fn retry_ids(&self, ids: &[FileId]) -> usize {
        let records: Vec<Record> = {
            let catalog = self.lock();
            ids.iter()
                .filter(|id| {
                    catalog
                        .file(**id)
                        .is_some_and(|f| f.state == FileState::Failed)
                })
                .map(|id| Record::Retried { id: *id })
                .collect()
        };
        let n = records.len();
        if n > 0 {
            // Cannot fail: Retried applies to any state.
            let _ = self.commit(records, true, |_| Ok(())).await;
            self.work.notify_one();
        }
        n
    }

    /// Queues failed and conflicting files again (all of a user's below `path`, or every
    /// one). Returns how many.
    pub async fn retry_failed(&self, filter: Option<(&str, &VPath)>) -> usize {
        let ids: Vec<FileId> = {
            let catalog = self.lock();
            catalog
                .in_state(FileState::Failed)
                .chain(catalog.in_state(FileState::Conflict))
                .filter(|f| filter.is_none_or(|(u, p)| f.user == u && f.path.starts_with(p)))
                .map(|f| f.id)
                .collect()
        };
        let n = ids.len();
        if n > 0 {
            let records = ids.into_iter().map(|id| Record::Retried { id }).collect();
            // Cannot fail: Retried applies to any state.
            let _ = self.commit(records, true, |_| Ok(())).await;
            self.work.notify_one();
        }
        n
    }
}
