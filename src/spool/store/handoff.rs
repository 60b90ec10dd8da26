//! The drain's hand-off: the uploads it must abort, the keys it must search for stray
//! uploads, and the signal that wakes it. The spool queues and signals; the drain takes.
//!
//! It may use the catalog (read only); it never calls the drain.

use std::sync::Mutex;

use tokio::sync::Notify;

use super::Spool;

impl Spool {
    /// Queues `items` for the drain (which takes them with `take_aborts` /
    /// `take_stray_searches`) and wakes it, if there are any.
    pub(super) fn hand_to_drain<T>(&self, queue: &Mutex<Vec<T>>, items: Vec<T>) {
        if items.is_empty() {
            return;
        }
        queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(items);
        self.work.notify_one();
    }

    /// Uploads the drain must abort, taken once.
    pub fn take_aborts(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.aborts.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Keys whose open uploads unknown to the journal the drain must abort, taken once.
    pub fn take_stray_searches(&self) -> Vec<String> {
        let mut keys = std::mem::take(
            &mut *self
                .stray_searches
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        keys.sort();
        keys.dedup();
        keys
    }

    /// The drain's wake-up signal.
    pub fn work(&self) -> &Notify {
        &self.work
    }

    /// Keys with an unresolved upload intent (creations that may not have been recorded).
    pub fn upload_intent_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .lock()
            .with_upload_intents()
            .flat_map(|f| f.upload_intents.iter().map(|i| i.key.clone()))
            .filter(|key| !key.is_empty())
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Whether a file's recorded multipart upload has this id.
    pub fn knows_upload(&self, upload_id: &str) -> bool {
        self.lock().file_of_upload(upload_id).is_some()
    }
}
