//! Failed files are retried by the box itself, on a long backoff: a permanent S3 error
//! (AccessDenied, NoSuchBucket) is often fixed later by someone far away (a bucket created, a
//! policy corrected), and a box nobody visits must not strand its files waiting for a person
//! to type `sftpgw retry`.
//!
//! Each failed file is retried `first` after it was seen failed, then after twice that, and so
//! on up to `max` between attempts. The schedule lives in memory: after a restart it starts
//! again from `first`.
//!
//! Owns only the schedule of retries; the drain loop asks it which files are due and queues
//! them again through the spool. Uses nothing of the crate but spool's `FileId`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::spool::FileId;

/// How often the drain looks for failed files that are due.
pub const FAILED_SCAN_INTERVAL: Duration = Duration::from_secs(60);

/// When each failed file is due for its next automatic retry.
#[derive(Debug)]
pub struct FailedRetries {
    first: Duration,
    max: Duration,
    /// Attempts so far and when the next one is due, by file. Bounded by the files not yet
    /// delivered: entries of files that are gone are dropped at every scan.
    schedule: HashMap<FileId, (u32, Instant)>,
}

impl FailedRetries {
    /// A schedule that retries a failed file `first` after it failed, then doubling up to
    /// `max` (raised to `first` if below it).
    pub fn new(first: Duration, max: Duration) -> FailedRetries {
        FailedRetries {
            first,
            max: max.max(first),
            schedule: HashMap::new(),
        }
    }

    /// Of `failed` (files failed now), those due for a retry at `now`; `is_pending` says
    /// which files are not yet delivered (failed ones included), whose schedule is kept so
    /// that a file that fails again waits longer. O(failed + scheduled), never all files.
    pub fn due(
        &mut self,
        failed: &[FileId],
        is_pending: impl Fn(FileId) -> bool,
        now: Instant,
    ) -> Vec<FileId> {
        let failed_now: HashSet<FileId> = failed.iter().copied().collect();
        self.schedule
            .retain(|id, _| failed_now.contains(id) || is_pending(*id));
        let (first, max) = (self.first, self.max);
        let mut due = Vec::new();
        for id in failed {
            let (attempts, next) = self.schedule.entry(*id).or_insert((0, now + first));
            if *next <= now {
                *attempts = attempts.saturating_add(1);
                *next = now + delay(first, max, *attempts);
                due.push(*id);
            }
        }
        due
    }
}

/// The wait before the attempt after `attempts` automatic retries.
fn delay(first: Duration, max: Duration, attempts: u32) -> Duration {
    let factor = 1u32.checked_shl(attempts.min(31)).unwrap_or(u32::MAX);
    first.saturating_mul(factor).min(max)
}

impl FailedRetries {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_file_is_retried_after_first_then_doubling_up_to_max() {
        let mut r = FailedRetries::new(Duration::from_secs(900), Duration::from_secs(6 * 3600));
        let t0 = Instant::now();
        assert!(
            r.due(&[7], |id| [7].contains(&id), t0).is_empty(),
            "not at once"
        );
        let mut at = t0 + Duration::from_secs(900);
        let mut waits = Vec::new();
        for _ in 0..8 {
            assert_eq!(r.due(&[7], |id| [7].contains(&id), at), [7]);
            let (_, next) = r.schedule[&7];
            waits.push((next - at).as_secs());
            assert!(
                r.due(&[7], |id| [7].contains(&id), next - Duration::from_secs(1))
                    .is_empty()
            );
            at = next;
        }
        assert_eq!(waits, [1800, 3600, 7200, 14400, 21600, 21600, 21600, 21600]);
    }

    #[test]
    fn the_schedule_survives_a_retry_and_is_dropped_with_the_file() {
        let mut r = FailedRetries::new(Duration::from_secs(10), Duration::from_secs(100));
        let t0 = Instant::now();
        r.due(&[1, 2], |id| [1, 2].contains(&id), t0);
        assert_eq!(
            r.due(
                &[1, 2],
                |id| [1, 2].contains(&id),
                t0 + Duration::from_secs(10)
            ),
            [1, 2]
        );
        // Both retried: 1 is uploading again, 2 was delivered.
        r.due(&[], |id| [1].contains(&id), t0 + Duration::from_secs(11));
        assert_eq!(r.schedule.len(), 1);
        // 1 fails again: it waits 20 s from its last retry, not 10 s from now.
        assert!(
            r.due(&[1], |id| [1].contains(&id), t0 + Duration::from_secs(25))
                .is_empty()
        );
        assert_eq!(
            r.due(&[1], |id| [1].contains(&id), t0 + Duration::from_secs(30)),
            [1]
        );
    }
}
