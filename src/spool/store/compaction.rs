//! Journal compaction: when the journal has grown past a threshold, the catalog is written
//! out as a snapshot and the log restarted, once the files of dropped versions are gone.
//!
//! It may use the catalog and the journal; it changes no file's state.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::Spool;
use crate::num::u64_from_usize;

/// Journal size above which the catalog is written out as a snapshot and the log restarted.
/// It bounds the restart time: replay read a 10 MB journal (~100 000 files' histories) and
/// started serving in 0.74 s (bench/scale.sh), so 16 MiB keeps a restart near 1.2 s
/// (issue 14 asks for at most 2 s), while a compaction stays rare (one per ~150 000 files).
pub(super) const JOURNAL_COMPACT_BYTES: u64 = 16 * 1024 * 1024;
/// A generous average size of one encoded record, for sizing compaction thresholds.
const RECORD_BYTES_ESTIMATE: u64 = 128;

impl Spool {
    /// Asks the journal for a compaction once it has grown past the threshold. A compacted
    /// journal no longer says which versions it dropped, so their files must be gone before it
    /// replaces the journal that does: the files of commits not yet carried out are unlinked
    /// by the journal's writer, once those commits' records are durable, and made durable
    /// with a `syncfs`, before the snapshot is written.
    pub(super) fn compact_if_due(&self) {
        let size = self.journal.size_bytes();
        if size <= self.compact_above_bytes.load(Ordering::Relaxed) {
            return;
        }
        let catalog = self.lock();
        // The log shrinks only once the writer has run the compaction asked for last: until
        // then (or, if it was postponed, until the log has grown by another threshold) it is
        // not asked for again.
        let size = self.journal.size_bytes();
        let asked_at = self.compaction_asked_at_bytes.load(Ordering::Relaxed);
        let not_pending = size < asked_at || size > asked_at.saturating_add(JOURNAL_COMPACT_BYTES);
        let due = size > self.compact_above_bytes.load(Ordering::Relaxed);
        if !due || !not_pending {
            return;
        }
        let snapshot = catalog.snapshot_records();
        // The next one is due once the compacted log has grown by a threshold; a large
        // catalog raises it so that compaction stays a small share of the writes.
        let snapshot_bytes = u64_from_usize(snapshot.len()) * RECORD_BYTES_ESTIMATE;
        self.compact_above_bytes.store(
            snapshot_bytes + JOURNAL_COMPACT_BYTES.max(snapshot_bytes),
            Ordering::Relaxed,
        );
        self.compaction_asked_at_bytes
            .store(size, Ordering::Relaxed);
        // Filled under the catalog lock: every commit applied before the snapshot is here
        // until its own unlinks are done (or a compaction took it over, as now).
        let unlink: Vec<PathBuf> = std::mem::take(&mut *self.unlinks_pending())
            .into_iter()
            .flat_map(|id| [self.partial_path(id), self.sealed_path(id)])
            .collect();
        let before = Box::new(move || {
            for path in unlink {
                let _ = fs::remove_file(path);
            }
        });
        drop(self.journal.compact_after(snapshot, before));
    }

    /// Sets the journal size that triggers the next compaction (tests of a full disk).
    #[doc(hidden)]
    pub fn set_journal_compaction_threshold(&self, bytes: u64) {
        self.compact_above_bytes.store(bytes, Ordering::Relaxed);
        self.compaction_asked_at_bytes
            .store(u64::MAX, Ordering::Relaxed);
    }

    /// The journal's length in bytes.
    pub fn journal_bytes(&self) -> u64 {
        self.journal.size_bytes()
    }
}
