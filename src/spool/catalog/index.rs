//! The catalog's indexes: files by state, hidden versions by name, files with unresolved
//! upload intents, upload ids, and delivered files by delivery time, plus counts and bytes
//! per state. They let every question the gateway asks often (the drain's queue, status,
//! health, metrics, the seal of a new version) cost O(answer) instead of a scan of every
//! file ever seen.
//!
//! Kept right by construction: the catalog marks every file it touches ([`Index::touch`])
//! and [`Index::refile`] then files each touched file again from its record, removing what
//! it was filed under before (remembered in `filed`). A proptest checks every index against
//! a full scan after every record (`indexes_agree_with_a_full_scan`).
//!
//! Derived state only: it never decides a transition, and only the catalog calls it.

use std::collections::{BTreeSet, HashMap};

use super::FileRecord;
use crate::spool::{FileId, FileState, VPath};

/// How many [`FileState`]s there are.
pub const STATES_COUNT: usize = 7;

/// Every state, in the order of [`state_slot`].
pub const STATES: [FileState; STATES_COUNT] = [
    FileState::Receiving,
    FileState::Partial,
    FileState::Sealed,
    FileState::Uploading,
    FileState::Delivered,
    FileState::Failed,
    FileState::Conflict,
];

pub const fn state_slot(state: FileState) -> usize {
    match state {
        FileState::Receiving => 0,
        FileState::Partial => 1,
        FileState::Sealed => 2,
        FileState::Uploading => 3,
        FileState::Delivered => 4,
        FileState::Failed => 5,
        FileState::Conflict => 6,
    }
}

/// What one file is filed under; compared to decide whether it must move.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Filing {
    state: FileState,
    size: u64,
    hidden_name: Option<(String, VPath)>,
    has_intents: bool,
    upload_id: Option<String>,
    delivered_unix: Option<u64>,
    /// The user whose quota the file counts against (every state but delivered).
    held_by: Option<String>,
}

impl Filing {
    fn of(f: &FileRecord) -> Filing {
        Filing {
            state: f.state,
            size: f.size,
            hidden_name: f.hidden.then(|| (f.user.clone(), f.path.clone())),
            has_intents: !f.upload_intents.is_empty(),
            upload_id: f.upload.as_ref().map(|u| u.upload_id.clone()),
            delivered_unix: (f.state == FileState::Delivered)
                .then(|| f.delivered_unix.unwrap_or(f.mtime_unix)),
            held_by: (f.state != FileState::Delivered).then(|| f.user.clone()),
        }
    }
}

#[derive(Debug, Default)]
pub struct Index {
    filed: HashMap<FileId, Filing>,
    by_state: [BTreeSet<FileId>; STATES_COUNT],
    bytes_by_state: [u64; STATES_COUNT],
    hidden: BTreeSet<(String, VPath, FileId)>,
    with_intents: BTreeSet<FileId>,
    upload_ids: HashMap<String, FileId>,
    /// Delivered files by (delivery time, id): the oldest leave first.
    delivered: BTreeSet<(u64, FileId)>,
    /// Files not delivered and their recorded bytes, per user (users with none are absent).
    usage: HashMap<String, Usage>,
    touched: Vec<FileId>,
}

/// One user's files in the spool not yet delivered, and their recorded sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub files: u64,
    pub bytes: u64,
}

impl Index {
    /// Notes that `id`'s record may change (or go); [`Index::refile`] files it again.
    pub fn touch(&mut self, id: FileId) {
        self.touched.push(id);
    }

    /// Files every touched file again from `files`.
    pub fn refile(&mut self, files: &HashMap<FileId, FileRecord>) {
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        for id in touched.drain(..) {
            let now = files.get(&id).map(Filing::of);
            if self.filed.get(&id) == now.as_ref() {
                continue;
            }
            if let Some(old) = self.filed.remove(&id) {
                self.unfile(id, &old);
            }
            if let Some(new) = now {
                self.file(id, &new);
                self.filed.insert(id, new);
            }
        }
        // Keep the allocation for the next record.
        self.touched = touched;
    }

    fn unfile(&mut self, id: FileId, f: &Filing) {
        let slot = state_slot(f.state);
        self.by_state[slot].remove(&id);
        self.bytes_by_state[slot] -= f.size;
        if let Some((user, path)) = &f.hidden_name {
            self.hidden.remove(&(user.clone(), path.clone(), id));
        }
        if f.has_intents {
            self.with_intents.remove(&id);
        }
        if let Some(u) = &f.upload_id
            && self.upload_ids.get(u) == Some(&id)
        {
            self.upload_ids.remove(u);
        }
        if let Some(at) = f.delivered_unix {
            self.delivered.remove(&(at, id));
        }
        if let Some(user) = &f.held_by
            && let Some(u) = self.usage.get_mut(user)
        {
            u.files -= 1;
            u.bytes -= f.size;
            if u.files == 0 {
                self.usage.remove(user);
            }
        }
    }

    fn file(&mut self, id: FileId, f: &Filing) {
        let slot = state_slot(f.state);
        self.by_state[slot].insert(id);
        self.bytes_by_state[slot] += f.size;
        if let Some((user, path)) = &f.hidden_name {
            self.hidden.insert((user.clone(), path.clone(), id));
        }
        if f.has_intents {
            self.with_intents.insert(id);
        }
        if let Some(u) = &f.upload_id {
            self.upload_ids.insert(u.clone(), id);
        }
        if let Some(at) = f.delivered_unix {
            self.delivered.insert((at, id));
        }
        if let Some(user) = &f.held_by {
            let u = self.usage.entry(user.clone()).or_default();
            u.files += 1;
            u.bytes += f.size;
        }
    }

    /// `user`'s files not delivered, and their recorded bytes.
    pub fn usage(&self, user: &str) -> Usage {
        self.usage.get(user).copied().unwrap_or_default()
    }

    /// Files in `state`, oldest (lowest id) first.
    pub fn in_state(&self, state: FileState) -> &BTreeSet<FileId> {
        &self.by_state[state_slot(state)]
    }

    pub fn count(&self, state: FileState) -> usize {
        self.by_state[state_slot(state)].len()
    }

    pub fn bytes(&self, state: FileState) -> u64 {
        self.bytes_by_state[state_slot(state)]
    }

    /// Hidden (superseded, still pending) versions of `user`'s `path`.
    pub fn hidden_versions<'a>(
        &'a self,
        user: &'a str,
        path: &'a VPath,
    ) -> impl Iterator<Item = FileId> + 'a {
        let start = (user.to_owned(), path.clone(), FileId::MIN);
        self.hidden
            .range(start..)
            .take_while(move |(u, p, _)| u == user && p == path)
            .map(|(_, _, id)| *id)
    }

    pub fn with_intents(&self) -> &BTreeSet<FileId> {
        &self.with_intents
    }

    /// The file whose recorded upload has this id.
    pub fn upload(&self, upload_id: &str) -> Option<FileId> {
        self.upload_ids.get(upload_id).copied()
    }

    /// Delivered files, oldest delivery first.
    pub fn delivered(&self) -> impl DoubleEndedIterator<Item = (u64, FileId)> + '_ {
        self.delivered.iter().copied()
    }

    /// Checks every index against a full scan of `files` (tests).
    #[cfg(test)]
    pub fn check(&self, files: &HashMap<FileId, FileRecord>) -> Result<(), String> {
        let mut fresh = Index::default();
        for id in files.keys() {
            fresh.touch(*id);
        }
        fresh.refile(files);
        let same = self.filed == fresh.filed
            && self.by_state == fresh.by_state
            && self.bytes_by_state == fresh.bytes_by_state
            && self.hidden == fresh.hidden
            && self.with_intents == fresh.with_intents
            && self.upload_ids == fresh.upload_ids
            && self.delivered == fresh.delivered
            && self.usage == fresh.usage;
        if same {
            Ok(())
        } else {
            Err(format!("index {self:?}\n!= full scan {fresh:?}"))
        }
    }
}
