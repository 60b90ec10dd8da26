//! Which pending files start now: the oldest sealed files in a bounded window of the queue,
//! one upload per key at a time, none under a key fenced by an abort, and names a client
//! renames right after CLOSE only once they have settled.
//!
//! Owns the drain loop's bookkeeping (`Queue`). May use the spool's queries and the rest of
//! `upload`; it starts delivery tasks but sends nothing to the store itself.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::{Done, Drain, Ended};
use crate::drain::store::ObjectStore;
use crate::spool::{FileId, FileState};

/// Names that clients upload to and rename right after CLOSE (WinSCP's `.filepart`, rclone's
/// `.partial`, ...). They never drain early: the rename would void the upload and every part
/// would be sent again.
const TEMPORARY_NAME_SUFFIXES: &[&str] = &[".filepart", ".part", ".partial", ".tmp"];

/// Pending files the drain looks at on each wake beyond those in flight. Files further back
/// in the queue wait for the next wake; the oldest go first.
const CANDIDATES_COUNT_MAX: usize = 256;

/// The drain loop's bookkeeping.
#[derive(Default)]
pub(super) struct Queue {
    pub(super) active: HashSet<FileId>,
    pub(super) active_keys: HashSet<String>,
    /// When files with a temporary name were first seen sealed (they settle before upload).
    /// Bounded by the candidate window: entries outside the oldest `active +
    /// CANDIDATES_COUNT_MAX` pending files are dropped at every wake.
    pub(super) first_seen: HashMap<FileId, Instant>,
    /// Files with lower ids were sealed before this run started: settled long ago.
    pub(super) settled_before: FileId,
    /// Files whose delivery task started as an early upload (also in `active`).
    pub(super) early: HashSet<FileId>,
    /// Files whose early upload met a permanent error: they wait for their seal. Bounded by
    /// the files being received (pruned to them at every wake).
    pub(super) early_refused: HashSet<FileId>,
    /// Keys with an abort of a dropped version's upload under way, and how many: nothing
    /// starts under such a key until the store has answered. A version dropped while its
    /// Complete was in flight (in a run that then died) could otherwise still land after the
    /// newer version's upload, overwriting it; an abort answered settles that upload (the
    /// store either completed it first or never will).
    pub(super) fenced_keys: HashMap<String, usize>,
}

impl Queue {
    /// Whether an upload under `key` may start now (one per key at a time, none while fenced).
    pub(super) fn key_busy(&self, key: &str) -> bool {
        self.active_keys.contains(key) || self.fenced_keys.contains_key(key)
    }
}

impl<S: ObjectStore> Drain<S> {
    /// Starts uploads for the oldest pending files, within the limits; returns how long until
    /// a file still settling becomes eligible (at most a second). Looks at a bounded window
    /// of the queue (the oldest [`CANDIDATES_COUNT_MAX`] beyond those in flight), so a wake
    /// costs the same with ten files waiting or a million.
    pub(super) fn start_pending(&self, tasks: &mut JoinSet<Done>, queue: &mut Queue) -> Duration {
        let files_active_max = self.ctx.cfg.concurrency.max(1) * 2;
        let now = Instant::now();
        let mut wake = Duration::from_secs(1);
        let window = queue.active.len() + CANDIDATES_COUNT_MAX;
        let pending = self
            .ctx
            .spool
            .oldest_in(&[FileState::Sealed, FileState::Uploading], window);
        // Settling times of files no longer among the oldest pending are dropped: none below
        // the window's first (those are gone), and, when the window held the whole queue,
        // none outside it.
        let lowest = pending.first().map_or(FileId::MAX, |f| f.id);
        let highest = pending.last().map_or(FileId::MIN, |f| f.id);
        let whole_queue = pending.len() < window;
        let in_window: HashSet<FileId> = pending.iter().map(|f| f.id).collect();
        queue.first_seen.retain(|id, _| {
            *id >= lowest && (in_window.contains(id) || (!whole_queue && *id > highest))
        });
        for f in pending {
            if queue.active.len() - queue.early.len() >= files_active_max {
                break;
            }
            // A file sealed under a temporary name (WinSCP's `.filepart`, rsync's
            // `.name.XXXXXX`) waits a moment: the client renames it right after CLOSE, and
            // the rename should not race the upload. Any other file starts at once.
            if f.id >= queue.settled_before && is_renamed_after_close(f.path.as_str()) {
                let seen = *queue.first_seen.entry(f.id).or_insert(now);
                let eligible = seen + self.ctx.cfg.settle;
                if eligible > now {
                    wake = wake.min(eligible - now);
                    continue;
                }
            }
            let key = self.ctx.cfg.object_key(&f.user, &f.path);
            // One upload per key at a time, so that an older version can never complete
            // after a newer one.
            if queue.active.contains(&f.id) || queue.key_busy(&key) {
                continue;
            }
            queue.active.insert(f.id);
            queue.active_keys.insert(key.clone());
            let ctx = self.ctx.clone();
            tasks.spawn(async move {
                let id = f.id;
                ctx.deliver(f, &key).await;
                Done::Delivery(Ended {
                    id,
                    key,
                    early_refused: false,
                })
            });
        }
        if self.ctx.cfg.early {
            self.start_early(tasks, queue);
        }
        wake
    }
}

/// A name clients rename after CLOSE (see [`TEMPORARY_NAME_SUFFIXES`]).
pub(super) fn is_temporary_name(path: &str) -> bool {
    TEMPORARY_NAME_SUFFIXES.iter().any(|s| path.ends_with(s))
}

/// A name a client is likely to rename right after CLOSE: a temporary suffix, or rsync's
/// hidden `.name.XXXXXX` (a leading dot and a six-character random suffix).
fn is_renamed_after_close(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let rsync = name.starts_with('.')
        && name.rsplit_once('.').is_some_and(|(head, tail)| {
            head.len() > 1 && tail.len() == 6 && tail.chars().all(|c| c.is_ascii_alphanumeric())
        });
    is_temporary_name(name) || rsync
}
