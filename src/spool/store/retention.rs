//! Retention: delivered files leave the catalog after the retention's age, and partial
//! files (sessions that ended without CLOSE) are removed after `partial_ttl`.
//!
//! It changes the catalog only through `Catalog::prune_delivered` and committed `Removed`
//! records.

use std::fs;
use std::time::SystemTime;

use super::{Spool, now_unix};
use crate::spool::catalog::Record;
use crate::spool::{FileId, FileState, FsError, FsErrorKind};

impl Spool {
    /// Forgets delivered files older than the retention's age; returns how many. (Those
    /// beyond its count leave as they are delivered.)
    pub fn prune_delivered(&self) -> usize {
        self.lock().prune_delivered(now_unix())
    }

    /// Removes partial files older than `partial_ttl`; returns how many.
    pub async fn expire_partials(&self) -> usize {
        let now = SystemTime::now();
        let expired: Vec<(FileId, String, String)> = self
            .lock()
            .in_state(FileState::Partial)
            .filter(|f| {
                match fs::metadata(self.partial_path(f.id)).and_then(|m| m.modified()) {
                    Ok(m) => now
                        .duration_since(m)
                        .is_ok_and(|age| age > self.opts.partial_ttl),
                    // Its bytes are gone: nothing left to resume.
                    Err(_) => true,
                }
            })
            .map(|f| (f.id, f.user.clone(), f.path.display()))
            .collect();
        let mut n = 0;
        for (id, user, path) in expired {
            let r = self
                .commit(vec![Record::Removed { id }], false, |c| {
                    if c.file(id).is_some_and(|f| f.state == FileState::Partial) {
                        Ok(())
                    } else {
                        Err(FsError::new(FsErrorKind::Failure, "reopened"))
                    }
                })
                .await;
            if r.is_ok() {
                tracing::info!(event = "expired", id, user = %user, path = %path, "partial file expired after partial_ttl; removed");
                n += 1;
            }
        }
        n
    }
}
