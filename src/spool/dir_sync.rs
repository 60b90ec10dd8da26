//! Group commit for the spool directories: a CLOSE makes its rename into `sealed/` durable by
//! an fsync of `sealed/` and `partial/`, and CLOSEs from many sessions at once share those
//! fsyncs instead of queueing one pair each on the file system's journal.
//!
//! The rule that makes sharing safe: an fsync of a directory makes durable every change to it
//! made before the fsync began. A caller that renamed its file and then asks for a sync is
//! covered by any sync *started* after its request; [`DirSync::sync`] waits for the round in
//! progress to end, then for (or runs) the next one, which covers every request made before
//! it started. A failed round fails every caller it covered: none of them may acknowledge.
//!
//! It syncs the directories it was given and nothing else: it knows no file, record or catalog.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Notify;

/// Syncs a fixed set of directories, one round at a time, for all callers that asked.
pub struct DirSync {
    dirs: Vec<PathBuf>,
    state: Mutex<State>,
    round_ended: Notify,
}

/// One fsync of the directories, shared by every caller that joined it before it began.
#[derive(Default)]
struct Round {
    result: OnceLock<Result<(), (io::ErrorKind, String)>>,
}

#[derive(Default)]
struct State {
    running: bool,
    /// The round that begins once the running one ends: callers join it until it begins.
    pending: Option<Arc<Round>>,
    #[cfg(test)]
    rounds_count: u64,
}

impl DirSync {
    pub fn new(dirs: Vec<PathBuf>) -> DirSync {
        DirSync {
            dirs,
            state: Mutex::new(State::default()),
            round_ended: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every change to the directories made before this call durable.
    pub async fn sync(&self) -> io::Result<()> {
        // Join the round that has not begun yet (or make it): it begins after this point.
        let round = self.lock().pending.get_or_insert_with(Arc::default).clone();
        loop {
            let ended = self.round_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if let Some(result) = round.result.get() {
                return result
                    .clone()
                    .map_err(|(kind, message)| io::Error::new(kind, message));
            }
            let lead = {
                let mut s = self.lock();
                let ours = s.pending.as_ref().is_some_and(|p| Arc::ptr_eq(p, &round));
                if !s.running && ours {
                    s.pending = None;
                    s.running = true;
                    #[cfg(test)]
                    {
                        s.rounds_count += 1;
                    }
                    true
                } else {
                    false
                }
            };
            if !lead {
                ended.await;
                continue;
            }
            let dirs = self.dirs.clone();
            let result = tokio::task::spawn_blocking(move || {
                dirs.iter()
                    .try_for_each(|d| std::fs::File::open(d)?.sync_all())
            })
            .await
            .unwrap_or_else(|e| Err(io::Error::other(format!("directory sync task: {e}"))));
            let _ = round.result.set(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| (e.kind(), e.to_string())),
            );
            self.lock().running = false;
            self.round_ended.notify_waiters();
            return result;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_rounds_and_each_is_covered() {
        let tmp = tempfile::tempdir().expect("tmp");
        let sync = Arc::new(DirSync::new(vec![tmp.path().to_owned()]));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let sync = sync.clone();
                tokio::spawn(async move { sync.sync().await })
            })
            .collect();
        for t in tasks {
            t.await.expect("task").expect("synced");
        }
        let s = sync.lock();
        assert!(!s.running && s.pending.is_none());
        assert!(
            s.rounds_count < 64,
            "{} rounds for 64 callers: none shared",
            s.rounds_count
        );
    }

    #[tokio::test]
    async fn a_failed_round_fails_the_callers_it_covered_and_only_them() {
        let tmp = tempfile::tempdir().expect("tmp");
        let gone = tmp.path().join("gone");
        let sync = DirSync::new(vec![gone.clone()]);
        assert!(sync.sync().await.is_err(), "a directory that is not there");
        std::fs::create_dir(&gone).expect("mkdir");
        sync.sync()
            .await
            .expect("a later request gets a round of its own");
    }
}
