//! The catalog: every user's namespace and every file's lifecycle, as a pure state machine over
//! journal [`Record`]s.
//!
//! Live operations and journal replay go through the same [`Catalog::apply`], so the state after
//! a restart is the state before it by construction. `apply` is total: a record about an unknown
//! file (for instance after compaction raced a removal) is ignored, never a panic.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::{FileId, FileState, VPath};

/// One journal record. Append-only; the variant order is part of the on-disk format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A directory was created.
    Mkdir { user: String, path: VPath },
    /// An empty directory was removed.
    Rmdir { user: String, path: VPath },
    /// A new file version started receiving at `spool/partial/<id>`. Not fsynced by itself:
    /// an unacknowledged file may be forgotten by a crash.
    Opened {
        id: FileId,
        user: String,
        path: VPath,
        at_unix: u64,
    },
    /// CLOSE: the data is fsynced and renamed to `spool/sealed/<id>`. Fsynced before the ack.
    Sealed {
        id: FileId,
        size: u64,
        sha256: Option<[u8; 32]>,
        at_unix: u64,
    },
    /// The file moved to another name in the same namespace; any upload under the old key
    /// is void.
    Renamed { id: FileId, path: VPath },
    /// The file is gone from the namespace (rm, superseded, or partial TTL expired).
    Removed { id: FileId },
    /// A multipart upload was created for the file under `key`.
    /// `token` is also stored as object metadata: a HEAD that shows it proves the object is ours
    /// (settles a Complete whose response was lost). Before `Sealed` (the file still receiving
    /// or partial) it starts an early upload: see [`UploadProgress::early`].
    UploadStarted {
        id: FileId,
        key: String,
        upload_id: String,
        part_size: u64,
        token: String,
    },
    /// One part is in S3; it counts only once this record is journalled.
    PartDone {
        id: FileId,
        number: u32,
        etag: String,
        crc32c: u32,
    },
    /// The upload is void (NoSuchUpload, or its key no longer matches): start the object again.
    UploadReset { id: FileId },
    /// Verified in S3 by HEAD; the spool copy may be freed.
    Delivered { id: FileId, at_unix: u64 },
    /// A permanent S3 error; kept in the spool until `retry`.
    Failed { id: FileId, error: String },
    /// `sftpgw retry`: a failed file is queued again.
    Retried { id: FileId },
    /// Written by compaction only: the file is a superseded version still being delivered,
    /// reachable by no name.
    Hidden { id: FileId },
    /// CLOSE, like `Sealed`, of a file written only by appends whose SHA-256 was not computed
    /// on the way (it outgrew `SpoolOptions::hash_bytes_max`). Fsynced before the ack.
    SealedAppended { id: FileId, size: u64, at_unix: u64 },
    /// The drain is about to create a multipart upload for the file under `key`; fsynced
    /// before CreateMultipartUpload. If the run dies before `UploadStarted` records the
    /// upload's id, the next start lists uploads of exactly `key` begun since `at_unix` and
    /// aborts the ones the journal does not know: the box aborts only what it created.
    UploadIntent {
        id: FileId,
        key: String,
        at_unix: u64,
    },
    /// `overwrite = "never"`: the key holds another object; the file is kept, not uploaded.
    /// Its upload, if any, is aborted.
    Conflict { id: FileId, error: String },
}

/// Keys with an unresolved [`Record::UploadIntent`] a file keeps at most (one per key, the
/// earliest time); more than this many renames in between is not worth tracking.
pub const UPLOAD_INTENTS_PER_FILE_COUNT_MAX: usize = 8;

/// A CreateMultipartUpload that may have happened without its upload id being journalled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadIntent {
    pub key: String,
    pub at_unix: u64,
}

/// Longest cause a `Failed` record keeps (S3 error messages can be long); with the bounded
/// paths and keys this keeps every record well inside the journal's frame cap.
pub const FAILURE_CAUSE_BYTES_MAX: usize = 512;
const _: () = assert!(
    FAILURE_CAUSE_BYTES_MAX + 2 * crate::limits::KEY_BYTES_MAX
        < crate::limits::RECORD_BYTES_MAX as usize
);

impl Record {
    /// `Failed` with its cause cut to [`FAILURE_CAUSE_BYTES_MAX`] (at a character boundary).
    pub fn failed(id: FileId, cause: &str) -> Record {
        Record::Failed {
            id,
            error: cut_cause(cause),
        }
    }

    /// `Conflict` with its cause cut like [`Record::failed`]'s.
    pub fn conflict(id: FileId, cause: &str) -> Record {
        Record::Conflict {
            id,
            error: cut_cause(cause),
        }
    }
}

fn cut_cause(cause: &str) -> String {
    let mut end = cause.len().min(FAILURE_CAUSE_BYTES_MAX);
    while !cause.is_char_boundary(end) {
        end -= 1;
    }
    cause[..end].to_owned()
}

/// `UploadStarted` and one `PartDone` per part: the records that rebuild `u`.
fn upload_records(id: FileId, u: &UploadProgress, out: &mut Vec<Record>) {
    out.push(Record::UploadStarted {
        id,
        key: u.key.clone(),
        upload_id: u.upload_id.clone(),
        part_size: u.part_size,
        token: u.token.clone(),
    });
    for (number, receipt) in &u.parts {
        out.push(Record::PartDone {
            id,
            number: *number,
            etag: receipt.etag.clone(),
            crc32c: receipt.crc32c,
        });
    }
}

/// The unresolved upload intents of `f` (after its upload records, which would clear them).
fn intent_records(f: &FileRecord, out: &mut Vec<Record>) {
    out.extend(f.upload_intents.iter().map(|i| Record::UploadIntent {
        id: f.id,
        key: i.key.clone(),
        at_unix: i.at_unix,
    }));
}

/// A part already in S3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartReceipt {
    pub etag: String,
    pub crc32c: u32,
}

/// An open multipart upload of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadProgress {
    pub key: String,
    pub upload_id: String,
    pub part_size: u64,
    pub token: String,
    pub parts: BTreeMap<u32, PartReceipt>,
    /// Started before the file was sealed (early drain): parts were read while the file was
    /// still being written, so they are checked against the sealed bytes before Complete, and
    /// the object carries no SHA-256 metadata (unknown when the upload was created).
    pub early: bool,
}

/// Everything known about one file version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub id: FileId,
    pub user: String,
    pub path: VPath,
    pub state: FileState,
    /// Final size once sealed; 0 before (the open handle knows the live size).
    pub size: u64,
    pub sha256: Option<[u8; 32]>,
    /// Sealed after being written only by appends (always so when `sha256` is known): no byte
    /// was written twice, so parts read below the writer's frontier hold the sealed bytes.
    pub appended_only: bool,
    pub mtime_unix: u64,
    pub upload: Option<UploadProgress>,
    pub last_error: Option<String>,
    pub delivered_unix: Option<u64>,
    /// Still in `files` but no longer reachable by name: superseded by a newer version that is
    /// not sealed yet. Its upload goes on; the newer version's seal removes it.
    pub hidden: bool,
    /// Upload creations not known to have been recorded (see [`Record::UploadIntent`]);
    /// cleared once an upload is recorded or the file is delivered.
    pub upload_intents: Vec<UploadIntent>,
}

impl FileRecord {
    /// True while the spool holds the bytes of this file.
    pub fn has_spool_copy(&self) -> bool {
        self.state != FileState::Delivered
    }
}

/// What a name in a namespace points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    Dir,
    File(FileId),
}

/// The whole in-memory state.
#[derive(Debug, Default)]
pub struct Catalog {
    files: HashMap<FileId, FileRecord>,
    /// (user, path) → node. Ordered so that a directory's children are a contiguous range.
    names: BTreeMap<(String, VPath), Node>,
    /// Highest file id ever seen, so that new ids never repeat after a restart.
    pub max_id: FileId,
}

/// Side effects the caller must carry out after a record was applied (the catalog itself
/// never touches the disk or the network).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Spool files (by id) whose bytes are no longer needed.
    pub free_spool: Vec<FileId>,
    /// Multipart uploads that must be aborted: (key, upload id).
    pub abort_uploads: Vec<(String, String)>,
}

impl Catalog {
    pub fn file(&self, id: FileId) -> Option<&FileRecord> {
        self.files.get(&id)
    }

    pub fn files(&self) -> impl Iterator<Item = &FileRecord> {
        self.files.values()
    }

    pub fn lookup(&self, user: &str, path: &VPath) -> Option<Node> {
        if path.is_root() {
            return Some(Node::Dir);
        }
        self.names.get(&(user.to_owned(), path.clone())).copied()
    }

    pub fn is_dir(&self, user: &str, path: &VPath) -> bool {
        self.lookup(user, path) == Some(Node::Dir)
    }

    /// Direct children of `dir`, in name order.
    /// Every name strictly below `dir` (any depth), in order. Names are ordered as strings, so
    /// the range starts at `dir/` and ends where that prefix ends: `d.txt` and `d-x` sort
    /// between `d` and `d/x` and must not cut the scan short.
    fn below<'a>(
        &'a self,
        user: &'a str,
        dir: &VPath,
    ) -> impl Iterator<Item = (&'a VPath, Node)> + 'a {
        let prefix = if dir.is_root() {
            String::new()
        } else {
            format!("{}/", dir.as_str())
        };
        let start = (user.to_owned(), VPath::from_normalized(prefix.clone()));
        self.names
            .range(start..)
            .take_while(move |((u, p), _)| u == user && p.as_str().starts_with(&prefix))
            .filter(|((_, p), _)| !p.is_root())
            .map(|((_, p), node)| (p, *node))
    }

    /// Direct children of `dir`, in name order.
    pub fn children(&self, user: &str, dir: &VPath) -> Vec<(String, Node)> {
        self.below(user, dir)
            .filter(|(p, _)| p.parent().as_ref() == Some(dir))
            .map(|(p, node)| (p.name().to_owned(), node))
            .collect()
    }

    pub fn has_children(&self, user: &str, dir: &VPath) -> bool {
        self.below(user, dir).next().is_some()
    }

    /// Applies one record and returns what the caller must clean up.
    pub fn apply(&mut self, record: &Record) -> Effects {
        let mut effects = Effects::default();
        match record {
            Record::Mkdir { user, path } => {
                self.names
                    .entry((user.clone(), path.clone()))
                    .or_insert(Node::Dir);
            }
            Record::Rmdir { user, path } => {
                let key = (user.clone(), path.clone());
                if self.names.get(&key) == Some(&Node::Dir) {
                    self.names.remove(&key);
                }
            }
            Record::Opened {
                id,
                user,
                path,
                at_unix,
            } => {
                self.max_id = self.max_id.max(*id);
                if self.files.contains_key(id)
                    || self.names.get(&(user.clone(), path.clone())) == Some(&Node::Dir)
                {
                    // Ids never repeat, and a file never replaces a directory.
                    return effects;
                }
                let key = (user.clone(), path.clone());
                if let Some(Node::File(old)) = self.names.get(&key).copied()
                    && let Some(old_file) = self.files.get_mut(&old)
                {
                    match old_file.state {
                        // A partial or receiving version is simply replaced.
                        FileState::Receiving | FileState::Partial => {
                            self.drop_file(old, &mut effects);
                        }
                        // A delivered version is only a listing: replaced too.
                        FileState::Delivered => {
                            self.files.remove(&old);
                        }
                        // A pending version keeps uploading until the new one is sealed.
                        _ => old_file.hidden = true,
                    }
                }
                self.names.insert(key, Node::File(*id));
                self.files.insert(
                    *id,
                    FileRecord {
                        id: *id,
                        user: user.clone(),
                        path: path.clone(),
                        state: FileState::Receiving,
                        size: 0,
                        sha256: None,
                        appended_only: false,
                        mtime_unix: *at_unix,
                        upload: None,
                        last_error: None,
                        delivered_unix: None,
                        hidden: false,
                        upload_intents: Vec::new(),
                    },
                );
            }
            Record::Sealed {
                id,
                size,
                sha256,
                at_unix,
            } => self.seal(
                *id,
                *size,
                *sha256,
                sha256.is_some(),
                *at_unix,
                &mut effects,
            ),
            Record::SealedAppended { id, size, at_unix } => {
                self.seal(*id, *size, None, true, *at_unix, &mut effects)
            }
            Record::Renamed { id, path } => {
                let Some(file) = self.files.get_mut(id) else {
                    return effects;
                };
                if file.hidden
                    || self.names.get(&(file.user.clone(), path.clone())) == Some(&Node::Dir)
                {
                    // Not reachable by name, or onto a directory: not a valid rename.
                    return effects;
                }
                let user = file.user.clone();
                let settled = !matches!(file.state, FileState::Receiving | FileState::Partial);
                let old_key = (user.clone(), file.path.clone());
                file.path = path.clone();
                if file.state == FileState::Uploading {
                    file.state = FileState::Sealed;
                }
                if let Some(upload) = file.upload.take() {
                    effects.abort_uploads.push((upload.key, upload.upload_id));
                }
                if self.names.get(&old_key) == Some(&Node::File(*id)) {
                    self.names.remove(&old_key);
                }
                let new_key = (user.clone(), path.clone());
                if let Some(Node::File(old)) = self.names.insert(new_key, Node::File(*id))
                    && old != *id
                {
                    self.drop_file(old, &mut effects);
                }
                if settled {
                    // Like a seal at the new name: older pending versions there are superseded.
                    self.drop_hidden_versions(&user, path, *id, &mut effects);
                }
            }
            Record::Removed { id } => self.drop_file(*id, &mut effects),
            Record::UploadIntent { id, key, at_unix } => {
                if let Some(file) = self.files.get_mut(id)
                    && file.state != FileState::Delivered
                    && !file.upload_intents.iter().any(|i| &i.key == key)
                    && file.upload_intents.len() < UPLOAD_INTENTS_PER_FILE_COUNT_MAX
                {
                    file.upload_intents.push(UploadIntent {
                        key: key.clone(),
                        at_unix: *at_unix,
                    });
                }
            }
            Record::UploadStarted {
                id,
                key,
                upload_id,
                part_size,
                token,
            } => {
                let Some(file) = self.files.get_mut(id) else {
                    return effects;
                };
                file.upload_intents.clear();
                let early = match file.state {
                    FileState::Sealed | FileState::Uploading => {
                        file.state = FileState::Uploading;
                        false
                    }
                    // Early drain: the state stays; `Sealed` turns it into `Uploading`.
                    FileState::Receiving | FileState::Partial => true,
                    FileState::Delivered | FileState::Failed | FileState::Conflict => {
                        return effects;
                    }
                };
                if let Some(old) = file.upload.take() {
                    effects.abort_uploads.push((old.key, old.upload_id));
                }
                file.upload = Some(UploadProgress {
                    key: key.clone(),
                    upload_id: upload_id.clone(),
                    part_size: *part_size,
                    token: token.clone(),
                    parts: BTreeMap::new(),
                    early,
                });
            }
            Record::PartDone {
                id,
                number,
                etag,
                crc32c,
            } => {
                if let Some(upload) = self.files.get_mut(id).and_then(|f| f.upload.as_mut()) {
                    upload.parts.insert(
                        *number,
                        PartReceipt {
                            etag: etag.clone(),
                            crc32c: *crc32c,
                        },
                    );
                }
            }
            Record::UploadReset { id } => {
                let Some(file) = self.files.get_mut(id) else {
                    return effects;
                };
                if let Some(upload) = file.upload.take() {
                    effects.abort_uploads.push((upload.key, upload.upload_id));
                }
                if file.state == FileState::Uploading {
                    file.state = FileState::Sealed;
                }
            }
            Record::Delivered { id, at_unix } => {
                let Some(file) = self.files.get_mut(id) else {
                    return effects;
                };
                if !matches!(file.state, FileState::Sealed | FileState::Uploading) {
                    return effects;
                }
                file.state = FileState::Delivered;
                file.upload = None;
                file.upload_intents.clear();
                file.last_error = None;
                file.delivered_unix = Some(*at_unix);
                effects.free_spool.push(*id);
                if file.hidden {
                    self.files.remove(id);
                }
            }
            Record::Failed { id, error } => {
                let Some(file) = self.files.get_mut(id) else {
                    return effects;
                };
                if !matches!(file.state, FileState::Sealed | FileState::Uploading) {
                    return effects;
                }
                file.state = FileState::Failed;
                file.last_error = Some(error.clone());
            }
            Record::Conflict { id, error } => {
                let Some(file) = self.files.get_mut(id) else {
                    return effects;
                };
                if !matches!(file.state, FileState::Sealed | FileState::Uploading) {
                    return effects;
                }
                file.state = FileState::Conflict;
                file.last_error = Some(error.clone());
                if let Some(u) = file.upload.take() {
                    effects.abort_uploads.push((u.key, u.upload_id));
                }
            }
            Record::Hidden { id } => {
                let Some(file) = self.files.get_mut(id) else {
                    return effects;
                };
                file.hidden = true;
                let key = (file.user.clone(), file.path.clone());
                if self.names.get(&key) == Some(&Node::File(*id)) {
                    self.names.remove(&key);
                }
            }
            Record::Retried { id } => {
                let Some(file) = self.files.get_mut(id) else {
                    return effects;
                };
                if matches!(file.state, FileState::Failed | FileState::Conflict) {
                    file.last_error = None;
                    file.state = if file.upload.is_some() {
                        FileState::Uploading
                    } else {
                        FileState::Sealed
                    };
                }
            }
        }
        effects
    }

    fn seal(
        &mut self,
        id: FileId,
        size: u64,
        sha256: Option<[u8; 32]>,
        appended_only: bool,
        at_unix: u64,
        effects: &mut Effects,
    ) {
        let Some(file) = self.files.get_mut(&id) else {
            return;
        };
        if !matches!(file.state, FileState::Receiving | FileState::Partial) {
            return;
        }
        // An early upload carries on from its parts.
        file.state = if file.upload.is_some() {
            FileState::Uploading
        } else {
            FileState::Sealed
        };
        file.size = size;
        file.sha256 = sha256;
        file.appended_only = appended_only;
        file.mtime_unix = at_unix;
        let (user, path) = (file.user.clone(), file.path.clone());
        // Older hidden versions of the same name are superseded now.
        self.drop_hidden_versions(&user, &path, id, effects);
    }

    /// Forgets a file: its name (if it still points at it), its spool copy and its upload.
    fn drop_file(&mut self, id: FileId, effects: &mut Effects) {
        let Some(file) = self.files.remove(&id) else {
            return;
        };
        let key = (file.user.clone(), file.path.clone());
        if self.names.get(&key) == Some(&Node::File(id)) {
            self.names.remove(&key);
        }
        if file.has_spool_copy() {
            effects.free_spool.push(id);
        }
        if let Some(upload) = file.upload {
            effects.abort_uploads.push((upload.key, upload.upload_id));
        }
    }

    fn drop_hidden_versions(
        &mut self,
        user: &str,
        path: &VPath,
        keep: FileId,
        effects: &mut Effects,
    ) {
        let superseded: Vec<FileId> = self
            .files
            .values()
            .filter(|f| f.hidden && f.user == user && f.path == *path && f.id != keep)
            .map(|f| f.id)
            .collect();
        for old in superseded {
            self.drop_file(old, effects);
        }
    }

    /// After replay no session is connected: every file still receiving is partial.
    pub fn end_replay(&mut self) {
        for file in self.files.values_mut() {
            if file.state == FileState::Receiving {
                file.state = FileState::Partial;
            }
        }
    }

    /// Marks a receiving file partial (its session ended without CLOSE). Not journalled: on
    /// replay an opened-but-not-sealed file is partial anyway.
    pub fn mark_partial(&mut self, id: FileId) {
        if let Some(file) = self.files.get_mut(&id)
            && file.state == FileState::Receiving
        {
            file.state = FileState::Partial;
        }
    }

    /// Marks a partial file receiving again (a session reopened it).
    pub fn mark_receiving(&mut self, id: FileId) {
        if let Some(file) = self.files.get_mut(&id) {
            file.state = FileState::Receiving;
        }
    }

    /// Records that would rebuild the current state from nothing (journal compaction).
    /// Receiving files are written as partial; their handles keep writing to the same spool
    /// file and their Sealed record follows the snapshot.
    pub fn snapshot_records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        // Hidden versions first (each ends with `Hidden`, which frees its name), so that
        // neither a directory nor the visible version made later under the same name is
        // disturbed by them; then directories; then visible files.
        let mut files: Vec<&FileRecord> = self.files.values().collect();
        files.sort_by_key(|f| (!f.hidden, f.id));
        let visible_from = files.iter().position(|f| !f.hidden).unwrap_or(files.len());
        for (i, f) in files.into_iter().enumerate() {
            if i == visible_from {
                for ((user, path), node) in &self.names {
                    if *node == Node::Dir {
                        out.push(Record::Mkdir {
                            user: user.clone(),
                            path: path.clone(),
                        });
                    }
                }
            }
            out.push(Record::Opened {
                id: f.id,
                user: f.user.clone(),
                path: f.path.clone(),
                at_unix: f.mtime_unix,
            });
            // An early upload was started before the seal, and replays so.
            let (early, late) = match &f.upload {
                Some(u) if u.early => (Some(u), None),
                other => (None, other.as_ref()),
            };
            if let Some(u) = early {
                upload_records(f.id, u, &mut out);
            }
            if matches!(f.state, FileState::Receiving | FileState::Partial) {
                intent_records(f, &mut out);
                continue;
            }
            out.push(if f.appended_only && f.sha256.is_none() {
                Record::SealedAppended {
                    id: f.id,
                    size: f.size,
                    at_unix: f.mtime_unix,
                }
            } else {
                Record::Sealed {
                    id: f.id,
                    size: f.size,
                    sha256: f.sha256,
                    at_unix: f.mtime_unix,
                }
            });
            if let Some(u) = late {
                upload_records(f.id, u, &mut out);
            }
            intent_records(f, &mut out);
            match f.state {
                FileState::Delivered => out.push(Record::Delivered {
                    id: f.id,
                    at_unix: f.delivered_unix.unwrap_or(f.mtime_unix),
                }),
                FileState::Failed => out.push(Record::Failed {
                    id: f.id,
                    error: f.last_error.clone().unwrap_or_default(),
                }),
                FileState::Conflict => out.push(Record::Conflict {
                    id: f.id,
                    error: f.last_error.clone().unwrap_or_default(),
                }),
                _ => {}
            }
            if f.hidden {
                out.push(Record::Hidden { id: f.id });
            }
        }
        if visible_from == self.files.len() {
            for ((user, path), node) in &self.names {
                if *node == Node::Dir {
                    out.push(Record::Mkdir {
                        user: user.clone(),
                        path: path.clone(),
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn vp(s: &str) -> VPath {
        VPath::resolve(s).expect("path")
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        let user = prop_oneof![Just("u".to_owned()), Just("v".to_owned())];
        let path = prop_oneof![
            Just("a"),
            Just("b"),
            Just("d"),
            Just("d/x"),
            Just("d/y"),
            Just("d.txt"),
            Just("d-x/y")
        ]
        .prop_map(vp);
        let id = 1u64..6;
        prop_oneof![
            (user.clone(), path.clone()).prop_map(|(user, path)| Record::Mkdir { user, path }),
            (user.clone(), path.clone()).prop_map(|(user, path)| Record::Rmdir { user, path }),
            (id.clone(), user, path.clone()).prop_map(|(id, user, path)| Record::Opened {
                id,
                user,
                path,
                at_unix: 1
            }),
            (id.clone(), 0u64..100, any::<bool>()).prop_map(|(id, size, hashed)| Record::Sealed {
                id,
                size,
                sha256: hashed.then_some([7; 32]),
                at_unix: 2
            }),
            (id.clone(), 0u64..100).prop_map(|(id, size)| Record::SealedAppended {
                id,
                size,
                at_unix: 2
            }),
            (id.clone(), path).prop_map(|(id, path)| Record::Renamed { id, path }),
            id.clone().prop_map(|id| Record::Removed { id }),
            id.clone().prop_map(|id| Record::UploadStarted {
                id,
                key: format!("k{id}"),
                upload_id: format!("up{id}"),
                part_size: 5,
                token: "t".into()
            }),
            (id.clone(), 1u32..4).prop_map(|(id, number)| Record::PartDone {
                id,
                number,
                etag: "e".into(),
                crc32c: 7
            }),
            id.clone().prop_map(|id| Record::UploadReset { id }),
            id.clone()
                .prop_map(|id| Record::Delivered { id, at_unix: 3 }),
            id.clone().prop_map(|id| Record::Failed {
                id,
                error: "AccessDenied".into()
            }),
            id.clone().prop_map(|id| Record::Retried { id }),
            id.clone().prop_map(|id| Record::Conflict {
                id,
                error: "exists".into()
            }),
            (id, 0u8..3).prop_map(|(id, k)| Record::UploadIntent {
                id,
                key: format!("k{id}-{k}"),
                at_unix: 4
            }),
        ]
    }

    proptest! {
        /// Compaction writes `snapshot_records`; replaying them must rebuild the same namespace
        /// and the same file states, whatever history led there.
        #[test]
        fn snapshot_replays_to_the_same_catalog(records in proptest::collection::vec(arb_record(), 0..60)) {
            let mut live = Catalog::default();
            for r in &records {
                live.apply(r);
            }
            live.end_replay();
            let mut rebuilt = Catalog::default();
            for r in &live.snapshot_records() {
                rebuilt.apply(r);
            }
            rebuilt.end_replay();
            prop_assert_eq!(&live.names, &rebuilt.names);
            prop_assert_eq!(&live.files, &rebuilt.files);
        }

        /// Every name points at a file that exists (no dangling names), whatever the history.
        #[test]
        fn names_never_dangle(records in proptest::collection::vec(arb_record(), 0..60)) {
            let mut c = Catalog::default();
            for r in &records {
                c.apply(r);
                for node in c.names.values() {
                    if let Node::File(id) = node {
                        prop_assert!(c.files.contains_key(id), "dangling name after {:?}", r);
                    }
                }
                // children() agrees with a plain filter over all names.
                for dir in ["", "d", "d-x"] {
                    let dir = if dir.is_empty() { VPath::root() } else { vp(dir) };
                    let model: Vec<String> = c
                        .names
                        .keys()
                        .filter(|(u, p)| u == "u" && p.parent().as_ref() == Some(&dir))
                        .map(|(_, p)| p.name().to_owned())
                        .collect();
                    let got: Vec<String> = c.children("u", &dir).into_iter().map(|(n, _)| n).collect();
                    prop_assert_eq!(model, got);
                }
            }
        }
    }

    #[test]
    fn superseding_a_pending_file_keeps_it_uploading_until_the_new_version_seals() {
        let mut c = Catalog::default();
        let (user, path) = ("u".to_owned(), vp("f"));
        c.apply(&Record::Opened {
            id: 1,
            user: user.clone(),
            path: path.clone(),
            at_unix: 0,
        });
        c.apply(&Record::Sealed {
            id: 1,
            size: 10,
            sha256: None,
            at_unix: 0,
        });
        c.apply(&Record::Opened {
            id: 2,
            user: user.clone(),
            path: path.clone(),
            at_unix: 0,
        });
        assert!(
            c.file(1).expect("old").hidden,
            "old version still pending, hidden"
        );
        assert_eq!(c.lookup(&user, &path), Some(Node::File(2)));
        let effects = c.apply(&Record::Sealed {
            id: 2,
            size: 5,
            sha256: None,
            at_unix: 0,
        });
        assert!(c.file(1).is_none(), "superseded at the new version's seal");
        assert_eq!(effects.free_spool, vec![1]);
    }

    #[test]
    fn rename_voids_the_upload_under_the_old_key() {
        let mut c = Catalog::default();
        c.apply(&Record::Opened {
            id: 1,
            user: "u".into(),
            path: vp("a"),
            at_unix: 0,
        });
        c.apply(&Record::Sealed {
            id: 1,
            size: 10,
            sha256: None,
            at_unix: 0,
        });
        c.apply(&Record::UploadStarted {
            id: 1,
            key: "k".into(),
            upload_id: "x".into(),
            part_size: 5,
            token: "t".into(),
        });
        let effects = c.apply(&Record::Renamed {
            id: 1,
            path: vp("b"),
        });
        assert_eq!(
            effects.abort_uploads,
            vec![("k".to_owned(), "x".to_owned())]
        );
        let f = c.file(1).expect("file");
        assert_eq!((f.state, f.upload.is_none()), (FileState::Sealed, true));
        assert_eq!(c.lookup("u", &vp("a")), None);
    }

    #[test]
    fn an_early_upload_survives_the_seal_compaction_and_replay_and_is_aborted_with_its_file() {
        let mut c = Catalog::default();
        c.apply(&Record::Opened {
            id: 1,
            user: "u".into(),
            path: vp("a"),
            at_unix: 0,
        });
        c.apply(&Record::UploadStarted {
            id: 1,
            key: "k".into(),
            upload_id: "x".into(),
            part_size: 5,
            token: "t".into(),
        });
        c.apply(&Record::PartDone {
            id: 1,
            number: 1,
            etag: "e".into(),
            crc32c: 7,
        });
        let f = c.file(1).expect("file");
        assert_eq!(
            f.state,
            FileState::Receiving,
            "an early upload keeps the state"
        );
        assert!(f.upload.as_ref().is_some_and(|u| u.early));

        // Compaction before the seal (the file then replays as partial, upload kept).
        let mut replayed = Catalog::default();
        for r in c.snapshot_records() {
            replayed.apply(&r);
        }
        replayed.end_replay();
        let f = replayed.file(1).expect("file");
        assert_eq!(f.state, FileState::Partial);
        assert_eq!(f.upload, c.file(1).expect("file").upload);

        c.apply(&Record::Sealed {
            id: 1,
            size: 8,
            sha256: None,
            at_unix: 0,
        });
        let f = c.file(1).expect("file");
        assert_eq!(
            f.state,
            FileState::Uploading,
            "the seal carries on with the upload"
        );
        let mut replayed = Catalog::default();
        for r in c.snapshot_records() {
            replayed.apply(&r);
        }
        assert_eq!(replayed.file(1), c.file(1), "still early after compaction");

        let effects = c.apply(&Record::Removed { id: 1 });
        assert_eq!(
            effects.abort_uploads,
            vec![("k".to_owned(), "x".to_owned())]
        );
    }
}
