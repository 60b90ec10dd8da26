//! Files being received: the live size and append frontier of each open write handle, which
//! quotas, listings and the early drain read while the file is still written.
//!
//! It holds no catalog state and journals nothing.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Spool;
use crate::spool::FileId;
use crate::spool::handles::Live;

impl Spool {
    pub(in crate::spool) fn register_live(&self, id: FileId, live: Arc<Live>) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, live);
    }

    pub(in crate::spool) fn unregister_live(&self, id: FileId) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    pub(super) fn live(&self, id: FileId) -> Option<Arc<Live>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// For a file open for writing: how many bytes from its start have been written (and may
    /// be read back) by appends so far; `None` if no handle has it open.
    pub fn live_frontier(&self, id: FileId) -> Option<u64> {
        self.live(id).map(|l| l.frontier.load(Ordering::Acquire))
    }

    /// Opens the spool file of a file still receiving, for reading parts of it while it is
    /// written (early drain). The open file stays valid when the file is sealed (renamed).
    pub fn open_receiving(&self, id: FileId) -> std::io::Result<File> {
        File::open(self.partial_path(id))
    }

    /// Wakes the drain as soon as the append frontier of a file being received reaches
    /// `bytes` (the early drain's first part), instead of at its next periodic wake.
    pub fn wake_drain_when_written(&self, bytes: u64) {
        self.early_wake_bytes.store(bytes.max(1), Ordering::Relaxed);
    }

    /// A receiving file's append frontier moved from `before` to `after`.
    pub(in crate::spool) fn frontier_moved(&self, before: u64, after: u64) {
        let at = self.early_wake_bytes.load(Ordering::Relaxed);
        if before < at && after >= at {
            self.work.notify_one();
        }
    }
}
