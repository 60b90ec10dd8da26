//! Admission: what a user may still upload (quotas on files and bytes not delivered) and
//! whether the spool's file system has room (the reserve and the high/low watermarks).
//!
//! It reads the catalog's usage and the live sizes of files being received; it never
//! journals anything.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::Spool;
use crate::spool::{FsError, FsErrorKind, SpaceInfo};

impl Spool {
    /// Sets every user's quota (users not named have none).
    pub fn set_quotas(&self, quotas: HashMap<String, crate::spool::Quota>) {
        *self.quotas.lock().unwrap_or_else(|p| p.into_inner()) = quotas;
    }

    fn quota_of(&self, user: &str) -> crate::spool::Quota {
        self.quotas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .copied()
            .unwrap_or_default()
    }

    /// A new file for `user`, unless its `quota_files` is reached (files not delivered,
    /// uploads in progress and partial ones included).
    pub(in crate::spool) fn admit_new_file(&self, user: &str) -> Result<(), FsError> {
        let Some(max) = self.quota_of(user).files else {
            return Ok(());
        };
        let held = self.lock().usage(user).files;
        if held >= max {
            return Err(FsError::new(
                FsErrorKind::Failure,
                format!(
                    "quota exceeded: {held} files not yet delivered, quota_files = {max}; \
                     new uploads are accepted again as files are delivered"
                ),
            ));
        }
        Ok(())
    }

    /// `growth` more bytes for `user`, unless its `quota_bytes` would be passed: the recorded
    /// sizes of its files not delivered plus what its uploads in progress have written.
    pub(in crate::spool) fn admit_bytes(&self, user: &str, growth: u64) -> Result<(), FsError> {
        let Some(max) = self.quota_of(user).bytes else {
            return Ok(());
        };
        if growth == 0 {
            return Ok(());
        }
        let recorded = self.lock().usage(user).bytes;
        let receiving: u64 = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|l| &*l.user == user)
            .map(|l| l.size.load(Ordering::Relaxed))
            .sum();
        let held = recorded + receiving;
        if held.saturating_add(growth) > max {
            return Err(FsError::new(
                FsErrorKind::Failure,
                format!(
                    "quota exceeded: {held} bytes not yet delivered, quota_bytes = {max}; \
                     accepted again as files are delivered"
                ),
            ));
        }
        Ok(())
    }

    /// Space of the spool's file system (statvfs); all zero if it cannot be read.
    pub fn space(&self) -> SpaceInfo {
        match nix::sys::statvfs::statvfs(&self.opts.dir) {
            Ok(s) => SpaceInfo {
                block_size: s.fragment_size(),
                blocks_total: s.blocks(),
                blocks_free: s.blocks_free(),
                blocks_avail: s.blocks_available(),
            },
            Err(_) => SpaceInfo {
                block_size: 4096,
                blocks_total: 0,
                blocks_free: 0,
                blocks_avail: 0,
            },
        }
    }

    /// Refuses a new upload (or the resume of a partial one) while the spool is between its
    /// watermarks after reaching the high one; uploads already open go on writing.
    pub(in crate::spool) fn admit_upload(&self) -> Result<(), FsError> {
        let s = self.space();
        let total = s.blocks_total * s.block_size;
        if total == 0 {
            return Ok(());
        }
        let used_percent = total.saturating_sub(s.blocks_avail * s.block_size) * 100 / total;
        let was = self.refusing.load(Ordering::Relaxed);
        let now = watermark_refuses(
            was,
            used_percent,
            self.opts.high_watermark_percent,
            self.opts.low_watermark_percent,
        );
        if now != was {
            self.refusing.store(now, Ordering::Relaxed);
            if now {
                tracing::warn!(
                    used_percent,
                    high_watermark_percent = self.opts.high_watermark_percent,
                    "spool at its high watermark: new uploads are refused until it drains below the low watermark"
                );
            } else {
                tracing::info!(
                    used_percent,
                    "spool below its low watermark: uploads accepted again"
                );
            }
        }
        if now {
            return Err(FsError::new(
                FsErrorKind::NoSpace,
                format!(
                    "spool {used_percent}% full (high watermark {}%): uploads are refused until it drains",
                    self.opts.high_watermark_percent
                ),
            ));
        }
        Ok(())
    }

    /// Whether new uploads are refused now (the last [`Spool::admit_upload`] said so).
    pub fn refusing_uploads(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    /// Bytes free for new data, after the reserve and the room a journal compaction needs.
    ///
    /// A compaction writes the snapshot next to the journal before replacing it; the snapshot
    /// is no larger than the live journal, so uploads leave that much free on top of the fixed
    /// reserve: a compaction never needs space that the reserve did not hold back.
    pub(in crate::spool) fn free_after_reserve(&self) -> u64 {
        let s = self.space();
        (s.blocks_avail * s.block_size)
            .saturating_sub(self.opts.reserve_bytes)
            .saturating_sub(self.journal.size_bytes())
    }
}

/// Whether uploads are refused after a fill of `used_percent`, given whether they were
/// refused before: refusal starts at the high watermark and lasts until the fill is below the
/// low one, so that a spool near its limit does not flap between accepting and refusing.
pub fn watermark_refuses(refusing: bool, used_percent: u64, high: u8, low: u8) -> bool {
    if refusing {
        used_percent >= u64::from(low)
    } else {
        used_percent >= u64::from(high)
    }
}
