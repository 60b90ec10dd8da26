//! The catalog: every user's namespace and every file's lifecycle, as a pure state machine over
//! journal [`Record`]s.
//!
//! Live operations and journal replay go through the same [`Catalog::apply`], so the state after
//! a restart is the state before it by construction. `apply` is total: a record about an unknown
//! file (for instance after compaction raced a removal) is ignored, never a panic; a record that
//! does not fit its file's state is refused with an [`InvalidTransition`], counted and logged.
//!
//! The catalog does no I/O: it never touches the disk, the network or the journal (its
//! callers carry out the [`Effects`] of each record). It may use `limits` and `num` only.

pub(super) mod index;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::{FileId, FileState, VPath};
use index::{Index, state_slot};
pub use index::{STATES, STATES_COUNT};

/// One journal record. Append-only; the variant order is part of the on-disk format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A directory was created.
    Mkdir {
        /// Whose namespace.
        user: String,
        /// The new directory.
        path: VPath,
    },
    /// An empty directory was removed.
    Rmdir {
        /// Whose namespace.
        user: String,
        /// The removed directory.
        path: VPath,
    },
    /// A new file version started receiving at `spool/partial/<id>`. Not fsynced by itself:
    /// an unacknowledged file may be forgotten by a crash.
    Opened {
        /// The file version (its spool file is `partial/<id>` or `sealed/<id>`).
        id: FileId,
        /// Whose namespace.
        user: String,
        /// The name in the namespace.
        path: VPath,
        /// When it was opened, in seconds since the epoch (its mtime until sealed).
        at_unix: u64,
    },
    /// CLOSE: the data is fsynced and renamed to `spool/sealed/<id>`. Fsynced before the ack.
    Sealed {
        /// The file version (its spool file is `partial/<id>` or `sealed/<id>`).
        id: FileId,
        /// The sealed file's length in bytes.
        size: u64,
        /// SHA-256 of the whole file, if it was computed on the way (`None` for a file not written
        /// in order).
        sha256: Option<[u8; 32]>,
        /// When it was sealed, in seconds since the epoch (its mtime).
        at_unix: u64,
    },
    /// The file moved to another name in the same namespace; any upload under the old key
    /// is void.
    Renamed {
        /// The file version (its spool file is `partial/<id>` or `sealed/<id>`).
        id: FileId,
        /// The new name.
        path: VPath,
    },
    /// The file is gone from the namespace (rm, superseded, or partial TTL expired).
    Removed {
        /// The file version (its spool file is `partial/<id>` or `sealed/<id>`).
        id: FileId,
    },
    /// A multipart upload was created for the file under `key`.
    /// `token` is also stored as object metadata: a HEAD that shows it proves the object is ours
    /// (settles a Complete whose response was lost). Before `Sealed` (the file still receiving
    /// or partial) it starts an early upload: see [`UploadProgress::early`].
    UploadStarted {
        /// The file version (its spool file is `partial/<id>` or `sealed/<id>`).
        id: FileId,
        /// The object key the upload was created under.
        key: String,
        /// S3's id of the multipart upload.
        upload_id: String,
        /// Bytes per part (the last may be shorter).
        part_size: u64,
        /// Random proof of ownership, stored as object metadata.
        token: String,
    },
    /// One part is in S3; it counts only once this record is journalled.
    PartDone {
        /// The file version (its spool file is `partial/<id>` or `sealed/<id>`).
        id: FileId,
        /// The part's number, from 1.
        number: u32,
        /// The ETag S3 answered for the part.
        etag: String,
        /// CRC32C of the part's bytes.
        crc32c: u32,
    },
    /// The upload is void (NoSuchUpload, or its key no longer matches): start the object again.
    UploadReset {
        /// The file version (its spool file is `partial/<id>` or `sealed/<id>`).
        id: FileId,
    },
    /// Verified in S3 by HEAD; the spool copy may be freed.
    Delivered {
        /// The file version (its spool file is `partial/<id>` or `sealed/<id>`).
        id: FileId,
        /// When it was verified in S3, in seconds since the epoch.
        at_unix: u64,
    },
    /// A permanent S3 error; kept in the spool until `retry`.
    Failed {
        /// The file version (its spool file is `partial/<id>` or `sealed/<id>`).
        id: FileId,
        /// The cause, cut to [`FAILURE_CAUSE_BYTES_MAX`].
        error: String,
    },
    /// `sftpgw retry`: a failed file is queued again.
    Retried {
        /// The file version (its spool file is `partial/<id>` or `sealed/<id>`).
        id: FileId,
    },
    /// Written by compaction only: the file is a superseded version still being delivered,
    /// reachable by no name.
    Hidden {
        /// The file version (its spool file is `partial/<id>` or `sealed/<id>`).
        id: FileId,
    },
    /// CLOSE, like `Sealed`, of a file written only by appends whose SHA-256 was not computed
    /// on the way (it outgrew `SpoolOptions::hash_bytes_max`). Fsynced before the ack.
    SealedAppended {
        /// The file version (its spool file is `partial/<id>` or `sealed/<id>`).
        id: FileId,
        /// The sealed file's length in bytes.
        size: u64,
        /// When it was sealed, in seconds since the epoch (its mtime).
        at_unix: u64,
    },
    /// The drain is about to create a multipart upload for the file under `key`; fsynced
    /// before CreateMultipartUpload. If the run dies before `UploadStarted` records the
    /// upload's id, the next start lists uploads of exactly `key` begun since `at_unix` and
    /// aborts the ones the journal does not know: the box aborts only what it created.
    UploadIntent {
        /// The file version (its spool file is `partial/<id>` or `sealed/<id>`).
        id: FileId,
        /// The object key the upload will be created under.
        key: String,
        /// When, in seconds since the epoch: uploads of `key` begun since are suspects.
        at_unix: u64,
    },
    /// `overwrite = "never"`: the key holds another object; the file is kept, not uploaded.
    /// Its upload, if any, is aborted.
    Conflict {
        /// The file version (its spool file is `partial/<id>` or `sealed/<id>`).
        id: FileId,
        /// The cause, cut to [`FAILURE_CAUSE_BYTES_MAX`].
        error: String,
    },
    /// The whole bytes of a small file (at most [`crate::limits::SEAL_INLINE_BYTES_MAX`]),
    /// journalled with its `Sealed` record in one submission instead of fsyncing the file and
    /// its directories first. Replay leaves the catalog as it is; recovery rewrites
    /// `sealed/<id>` from it if the crash lost the unsynced copy. A compaction syncs the file
    /// system before its snapshot drops these records.
    InlineData {
        /// The file version (its spool file is `partial/<id>` or `sealed/<id>`).
        id: FileId,
        /// The file's bytes, all of them.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
}

/// Keys with an unresolved [`Record::UploadIntent`] a file keeps at most (one per key, the
/// earliest time); more than this many renames in between is not worth tracking.
pub const UPLOAD_INTENTS_PER_FILE_COUNT_MAX: usize = 8;

/// A CreateMultipartUpload that may have happened without its upload id being journalled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadIntent {
    /// The object key the upload would be created under.
    pub key: String,
    /// When it was journalled, in seconds since the epoch.
    pub at_unix: u64,
}

/// Longest cause a `Failed` record keeps (S3 error messages can be long); with the bounded
/// paths and keys this keeps every record well inside the journal's frame cap.
pub const FAILURE_CAUSE_BYTES_MAX: usize = 512;
const _: () = assert!(
    FAILURE_CAUSE_BYTES_MAX + 2 * crate::limits::KEY_BYTES_MAX
        < crate::num::usize_from_u32(crate::limits::RECORD_BYTES_MAX)
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
    /// The ETag S3 answered for the part (Complete lists it).
    pub etag: String,
    /// CRC32C of the part's bytes, checked against the sealed file before Complete.
    pub crc32c: u32,
}

/// An open multipart upload of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadProgress {
    /// The object key the upload was created under.
    pub key: String,
    /// S3's id of the multipart upload.
    pub upload_id: String,
    /// Bytes per part (the last may be shorter).
    pub part_size: u64,
    /// Random proof of ownership, stored as object metadata (see [`Record::UploadStarted`]).
    pub token: String,
    /// Parts journalled as done, by part number (from 1).
    pub parts: BTreeMap<u32, PartReceipt>,
    /// Started before the file was sealed (early drain): parts were read while the file was
    /// still being written, so they are checked against the sealed bytes before Complete, and
    /// the object carries no SHA-256 metadata (unknown when the upload was created).
    pub early: bool,
}

/// Everything known about one file version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    /// The file version.
    pub id: FileId,
    /// Whose namespace.
    pub user: String,
    /// Its name (kept while hidden: the name it had).
    pub path: VPath,
    /// Where it is in its life.
    pub state: FileState,
    /// Final size once sealed; 0 before (the open handle knows the live size).
    pub size: u64,
    /// SHA-256 of the whole file, if computed on the way.
    pub sha256: Option<[u8; 32]>,
    /// Sealed after being written only by appends (always so when `sha256` is known): no byte
    /// was written twice, so parts read below the writer's frontier hold the sealed bytes.
    pub appended_only: bool,
    /// Seconds since the epoch: opened, then sealed.
    pub mtime_unix: u64,
    /// Its open multipart upload, if one is recorded.
    pub upload: Option<UploadProgress>,
    /// Why it failed or conflicts; cleared on retry and delivery.
    pub last_error: Option<String>,
    /// When it was verified in S3, in seconds since the epoch.
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

    /// Bytes of the file in S3 already: its upload's finished parts.
    pub fn bytes_sent(&self) -> u64 {
        self.upload.as_ref().map_or(0, |u| {
            u.parts
                .keys()
                .map(|n| {
                    let start = u64::from(n.saturating_sub(1)) * u.part_size;
                    u.part_size.min(self.size.saturating_sub(start))
                })
                .sum()
        })
    }
}

/// What a name in a namespace points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir,
    /// A file: the version the name points at.
    File(FileId),
}

/// How long delivered files stay in the catalog (and so in listings and the journal's
/// snapshot): at most `files_count_max` of them, none delivered more than `age_secs_max`
/// ago. Older deliveries live only in the delivery log and the bucket, so that memory and
/// the journal stay bounded however many files a box receives over the years.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveredRetention {
    /// Delivered files kept at most; the oldest deliveries leave first.
    pub files_count_max: usize,
    /// Seconds after its delivery a file is kept at most.
    pub age_secs_max: u64,
}

/// Delivered files kept by default.
pub const DELIVERED_RETENTION_FILES_COUNT_DEFAULT: usize = 10_000;
/// How long delivered files are kept by default (30 days).
pub const DELIVERED_RETENTION_AGE_SECS_DEFAULT: u64 = 30 * 24 * 3600;

impl Default for DeliveredRetention {
    fn default() -> Self {
        DeliveredRetention {
            files_count_max: DELIVERED_RETENTION_FILES_COUNT_DEFAULT,
            age_secs_max: DELIVERED_RETENTION_AGE_SECS_DEFAULT,
        }
    }
}

/// Files per state and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// Files per state, indexed like [`STATES`].
    pub files: [usize; STATES_COUNT],
    /// Their recorded sizes in bytes (0 before the seal), indexed like [`STATES`].
    pub bytes: [u64; STATES_COUNT],
}

impl StateCounts {
    /// Files in `state`.
    pub fn files(&self, state: FileState) -> usize {
        self.files[state_slot(state)]
    }

    /// Bytes of the files in `state`.
    pub fn bytes(&self, state: FileState) -> u64 {
        self.bytes[state_slot(state)]
    }
}

/// The whole in-memory state.
#[derive(Debug, Default)]
pub struct Catalog {
    files: HashMap<FileId, FileRecord>,
    /// (user, path) → node. Ordered so that a directory's children are a contiguous range.
    names: BTreeMap<(String, VPath), Node>,
    /// Highest file id ever seen, so that new ids never repeat after a restart.
    pub max_id: FileId,
    index: Index,
    retention: DeliveredRetention,
    /// Records that did not fit their file's state (see [`Catalog::apply`]).
    invalid_transitions: u64,
    /// Record kinds whose invalid transition was logged already: at most one entry per kind.
    invalid_kinds_logged: Vec<&'static str>,
}

/// A record that does not fit the file it is about: a bug in whoever wrote it, or a journal
/// damaged in the middle. [`Catalog::apply`] ignores it and says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {record} record for file {id} met {met}")]
pub struct InvalidTransition {
    /// The record's kind, as the enum spells it (`Delivered`, `PartDone`, ...).
    pub record: &'static str,
    /// The file the record is about.
    pub id: FileId,
    /// What the record met instead of a state it fits.
    pub met: Met,
}

impl InvalidTransition {
    fn new(record: &'static str, id: FileId, met: Met) -> InvalidTransition {
        InvalidTransition { record, id, met }
    }
}

/// What an invalid record met: why it did not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Met {
    /// The file in this state (a seal of a sealed file, a delivery of a failed one, an
    /// `Opened` of an id already known).
    State(FileState),
    /// A version no name reaches (a rename of it).
    Hidden,
    /// A directory at the file's name (an `Opened` or a rename onto it).
    Directory,
    /// A file without a recorded upload (a part done for it).
    NoUpload,
}

impl std::fmt::Display for Met {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Met::State(state) => write!(f, "it {}", state.name()),
            Met::Hidden => f.write_str("it hidden"),
            Met::Directory => f.write_str("a directory at its name"),
            Met::NoUpload => f.write_str("it without an upload"),
        }
    }
}

/// What a `Sealed` or `SealedAppended` record says of the sealed file.
struct Seal {
    size: u64,
    sha256: Option<[u8; 32]>,
    appended_only: bool,
    at_unix: u64,
}

/// The file a record is about, if any.
fn record_file(record: &Record) -> Option<FileId> {
    match record {
        Record::Mkdir { .. } | Record::Rmdir { .. } | Record::InlineData { .. } => None,
        Record::Opened { id, .. }
        | Record::Sealed { id, .. }
        | Record::SealedAppended { id, .. }
        | Record::Renamed { id, .. }
        | Record::Removed { id }
        | Record::UploadStarted { id, .. }
        | Record::PartDone { id, .. }
        | Record::UploadReset { id }
        | Record::Delivered { id, .. }
        | Record::Failed { id, .. }
        | Record::Retried { id }
        | Record::Hidden { id }
        | Record::UploadIntent { id, .. }
        | Record::Conflict { id, .. } => Some(*id),
    }
}

/// Side effects the caller must carry out after a record was applied (the catalog itself
/// never touches the disk or the network).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Spool files (by id) whose bytes are no longer needed.
    pub free_spool: Vec<FileId>,
    /// Multipart uploads that must be aborted: (key, upload id).
    pub abort_uploads: Vec<(String, String)>,
    /// Keys whose open uploads the journal does not know must be looked for and aborted: a
    /// file removed with an unresolved upload intent (a CreateMultipartUpload whose answer was
    /// lost, or a crash before its id was journalled) takes the intent with it.
    pub stray_searches: Vec<String>,
}

impl Catalog {
    /// An empty catalog that keeps delivered files as `retention` says.
    pub fn with_retention(retention: DeliveredRetention) -> Catalog {
        Catalog {
            retention,
            ..Catalog::default()
        }
    }

    /// The record of file `id`, if the catalog holds it (not removed, not forgotten).
    pub fn file(&self, id: FileId) -> Option<&FileRecord> {
        self.files.get(&id)
    }

    /// Ids of the files in `state`, oldest first; O(answer), not a scan.
    pub fn ids_in(&self, state: FileState) -> impl DoubleEndedIterator<Item = FileId> + '_ {
        self.index.in_state(state).iter().copied()
    }

    /// Ids of the files in `state` after `after` (all with `None`), oldest first: a page of a
    /// long list costs O(log files + page), not a scan from the start.
    pub fn ids_in_after(
        &self,
        state: FileState,
        after: Option<FileId>,
    ) -> impl Iterator<Item = FileId> + '_ {
        let from = match after {
            Some(id) => std::ops::Bound::Excluded(id),
            None => std::ops::Bound::Unbounded,
        };
        self.index
            .in_state(state)
            .range((from, std::ops::Bound::Unbounded))
            .copied()
    }

    /// Files in `state`, oldest first.
    pub fn in_state(&self, state: FileState) -> impl DoubleEndedIterator<Item = &FileRecord> + '_ {
        self.ids_in(state).filter_map(|id| self.files.get(&id))
    }

    /// Files and bytes per state, counted as they change (O(1)).
    /// `user`'s files not delivered, and their recorded bytes.
    pub fn usage(&self, user: &str) -> index::Usage {
        self.index.usage(user)
    }

    /// Files and bytes per state, counted as they change (O(1)).
    pub fn counts(&self) -> StateCounts {
        let mut c = StateCounts::default();
        for state in STATES {
            c.files[state_slot(state)] = self.index.count(state);
            c.bytes[state_slot(state)] = self.index.bytes(state);
        }
        c
    }

    /// Files with upload creations that may not have been recorded.
    pub fn with_upload_intents(&self) -> impl Iterator<Item = &FileRecord> + '_ {
        self.index
            .with_intents()
            .iter()
            .filter_map(|id| self.files.get(id))
    }

    /// The file whose recorded multipart upload has this id.
    pub fn file_of_upload(&self, upload_id: &str) -> Option<FileId> {
        self.index.upload(upload_id)
    }

    /// Files delivered most recently, newest first.
    pub fn recently_delivered(&self) -> impl Iterator<Item = &FileRecord> + '_ {
        self.index
            .delivered()
            .rev()
            .filter_map(|(_, id)| self.files.get(&id))
    }

    /// Every file record, in no order: O(all files).
    pub fn files(&self) -> impl Iterator<Item = &FileRecord> {
        self.files.values()
    }

    /// What `path` names in `user`'s namespace (the root is always a directory).
    pub fn lookup(&self, user: &str, path: &VPath) -> Option<Node> {
        if path.is_root() {
            return Some(Node::Dir);
        }
        self.names.get(&(user.to_owned(), path.clone())).copied()
    }

    /// Whether `path` is a directory of `user`'s.
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

    /// Up to `limit` direct children of `dir` whose names sort after `after` (all from the
    /// first if `None`), in name order: one page of a listing. O(limit · log n): a child
    /// directory's subtree is skipped with one range jump, never walked.
    pub fn children_page(
        &self,
        user: &str,
        dir: &VPath,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<(String, Node)> {
        use std::ops::Bound;
        let prefix = if dir.is_root() {
            String::new()
        } else {
            format!("{}/", dir.as_str())
        };
        let key = |rest: String| (user.to_owned(), VPath::from_normalized(rest));
        let mut from = match after {
            Some(name) => Bound::Excluded(key(format!("{prefix}{name}"))),
            None => Bound::Included(key(prefix.clone())),
        };
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(((u, path), node)) = self.names.range((from, Bound::Unbounded)).next() else {
                break;
            };
            let Some(rest) = path.as_str().strip_prefix(&prefix) else {
                break;
            };
            if u != user {
                break;
            }
            match rest.split_once('/') {
                // Below a child directory: jump past the child's whole subtree ('0' follows
                // '/'), to the next name at this level.
                Some((child, _)) => {
                    from = Bound::Included(key(format!("{prefix}{child}0")));
                }
                None if rest.is_empty() => from = Bound::Excluded(key(prefix.clone())),
                None => {
                    out.push((rest.to_owned(), *node));
                    from = Bound::Excluded(key(path.as_str().to_owned()));
                }
            }
        }
        out
    }

    /// Whether any name is below `dir`.
    pub fn has_children(&self, user: &str, dir: &VPath) -> bool {
        self.below(user, dir).next().is_some()
    }

    /// Applies one record and returns what the caller must clean up. Delivered files beyond
    /// the retention's count leave the catalog here (deterministically, so replay agrees).
    ///
    /// A record that does not fit the state of its file changes nothing and is returned as an
    /// [`InvalidTransition`]: counted ([`Catalog::invalid_transitions`]) and logged once per
    /// record kind. Records that may meet a file in another state by design are not errors
    /// and stay silent: any record about a file the catalog no longer knows (removed,
    /// superseded, forgotten by retention), an upload intent already noted or beyond
    /// [`UPLOAD_INTENTS_PER_FILE_COUNT_MAX`], and `Retried` of a file no longer failed (a
    /// retry raced the drain's own).
    pub fn apply(&mut self, record: &Record) -> Result<Effects, InvalidTransition> {
        if let Some(id) = record_file(record) {
            self.index.touch(id);
        }
        let mut effects = Effects::default();
        let applied = self.apply_to_state(record, &mut effects);
        self.index.refile(&self.files);
        if let Err(invalid) = applied {
            self.count_invalid(&invalid);
            return Err(invalid);
        }
        while self.index.count(FileState::Delivered) > self.retention.files_count_max {
            let Some((_, oldest)) = self.index.delivered().next() else {
                break;
            };
            self.forget_delivered(oldest);
        }
        Ok(effects)
    }

    /// Records that did not fit the state of their file since the catalog was made (journal
    /// replay included): each one is a bug, or a journal damaged in the middle.
    pub fn invalid_transitions(&self) -> u64 {
        self.invalid_transitions
    }

    /// Counts `invalid` and logs it if it is the first of its record kind: a replay of a bad
    /// journal must not flood the log.
    fn count_invalid(&mut self, invalid: &InvalidTransition) {
        self.invalid_transitions += 1;
        if !self.invalid_kinds_logged.contains(&invalid.record) {
            self.invalid_kinds_logged.push(invalid.record);
            tracing::error!(record = invalid.record, id = invalid.id, met = %invalid.met,
                "journal record does not fit its file's state; ignored (further ones of this \
                 kind are only counted)");
        }
    }

    /// Forgets delivered files older than the retention's age (by `now_unix`); returns how
    /// many. Not journalled: replay applies the same rule at the next prune.
    pub fn prune_delivered(&mut self, now_unix: u64) -> usize {
        let before = now_unix.saturating_sub(self.retention.age_secs_max);
        let old: Vec<FileId> = self
            .index
            .delivered()
            .take_while(|(at, _)| *at < before)
            .map(|(_, id)| id)
            .collect();
        for id in &old {
            self.forget_delivered(*id);
        }
        old.len()
    }

    /// A delivered file leaves the catalog: its listing and its record (the delivery log and
    /// the bucket keep what is known of it).
    fn forget_delivered(&mut self, id: FileId) {
        self.index.touch(id);
        if let Some(file) = self.files.remove(&id) {
            debug_assert_eq!(file.state, FileState::Delivered);
            let key = (file.user, file.path);
            if self.names.get(&key) == Some(&Node::File(id)) {
                self.names.remove(&key);
            }
        }
        self.index.refile(&self.files);
    }

    /// The change `record` makes, one helper per record kind. An error leaves the catalog
    /// and `effects` untouched (every check comes before the first change), but for `max_id`:
    /// an `Opened` raises it even when refused, so that an id is never handed out twice.
    fn apply_to_state(
        &mut self,
        record: &Record,
        effects: &mut Effects,
    ) -> Result<(), InvalidTransition> {
        match record {
            // The bytes are for recovery; the `Sealed` record after it changes the state.
            Record::InlineData { .. } => {}
            Record::Mkdir { user, path } => self.mkdir(user, path),
            Record::Rmdir { user, path } => self.rmdir(user, path),
            Record::Opened {
                id,
                user,
                path,
                at_unix,
            } => return self.open_file(*id, user, path, *at_unix, effects),
            Record::Sealed {
                id,
                size,
                sha256,
                at_unix,
            } => {
                let seal = Seal {
                    size: *size,
                    sha256: *sha256,
                    appended_only: sha256.is_some(),
                    at_unix: *at_unix,
                };
                return self.seal("Sealed", *id, seal, effects);
            }
            Record::SealedAppended { id, size, at_unix } => {
                let seal = Seal {
                    size: *size,
                    sha256: None,
                    appended_only: true,
                    at_unix: *at_unix,
                };
                return self.seal("SealedAppended", *id, seal, effects);
            }
            Record::Renamed { id, path } => return self.rename_file(*id, path, effects),
            Record::Removed { id } => self.drop_file(*id, effects),
            Record::UploadIntent { id, key, at_unix } => {
                return self.note_upload_intent(*id, key, *at_unix);
            }
            Record::UploadStarted {
                id,
                key,
                upload_id,
                part_size,
                token,
            } => {
                let upload = UploadProgress {
                    key: key.clone(),
                    upload_id: upload_id.clone(),
                    part_size: *part_size,
                    token: token.clone(),
                    parts: BTreeMap::new(),
                    early: false,
                };
                return self.start_upload(*id, upload, effects);
            }
            Record::PartDone {
                id,
                number,
                etag,
                crc32c,
            } => return self.part_done(*id, *number, etag, *crc32c),
            Record::UploadReset { id } => self.reset_upload(*id, effects),
            Record::Delivered { id, at_unix } => return self.deliver(*id, *at_unix, effects),
            Record::Failed { id, error } => {
                return self.settle_unsent("Failed", *id, FileState::Failed, error, effects);
            }
            Record::Conflict { id, error } => {
                return self.settle_unsent("Conflict", *id, FileState::Conflict, error, effects);
            }
            Record::Hidden { id } => self.hide(*id),
            Record::Retried { id } => self.retry(*id),
        }
        Ok(())
    }

    /// `Mkdir`: a directory at `path`, unless the name is taken.
    fn mkdir(&mut self, user: &str, path: &VPath) {
        self.names
            .entry((user.to_owned(), path.clone()))
            .or_insert(Node::Dir);
    }

    /// `Rmdir`: the directory at `path` leaves the namespace (a file there stays).
    fn rmdir(&mut self, user: &str, path: &VPath) {
        let key = (user.to_owned(), path.clone());
        if self.names.get(&key) == Some(&Node::Dir) {
            self.names.remove(&key);
        }
    }

    /// `Opened`: a new version at `path`, replacing or hiding the version there.
    fn open_file(
        &mut self,
        id: FileId,
        user: &str,
        path: &VPath,
        at_unix: u64,
        effects: &mut Effects,
    ) -> Result<(), InvalidTransition> {
        self.max_id = self.max_id.max(id);
        let key = (user.to_owned(), path.clone());
        // Ids never repeat, and a file never replaces a directory.
        if let Some(file) = self.files.get(&id) {
            return Err(InvalidTransition::new("Opened", id, Met::State(file.state)));
        }
        if self.names.get(&key) == Some(&Node::Dir) {
            return Err(InvalidTransition::new("Opened", id, Met::Directory));
        }
        if let Some(Node::File(old)) = self.names.get(&key).copied()
            && let Some(old_file) = self.files.get_mut(&old)
        {
            self.index.touch(old);
            match old_file.state {
                // A partial or receiving version is simply replaced.
                FileState::Receiving | FileState::Partial => self.drop_file(old, effects),
                // A delivered version is only a listing: replaced too.
                FileState::Delivered => {
                    self.files.remove(&old);
                }
                // A pending version keeps uploading until the new one is sealed.
                _ => old_file.hidden = true,
            }
        }
        self.names.insert(key, Node::File(id));
        self.files.insert(
            id,
            FileRecord {
                id,
                user: user.to_owned(),
                path: path.clone(),
                state: FileState::Receiving,
                size: 0,
                sha256: None,
                appended_only: false,
                mtime_unix: at_unix,
                upload: None,
                last_error: None,
                delivered_unix: None,
                hidden: false,
                upload_intents: Vec::new(),
            },
        );
        Ok(())
    }

    /// `Renamed`: the file moves to `path`; its upload is void.
    fn rename_file(
        &mut self,
        id: FileId,
        path: &VPath,
        effects: &mut Effects,
    ) -> Result<(), InvalidTransition> {
        let Some(file) = self.files.get_mut(&id) else {
            return Ok(());
        };
        // Not reachable by name, or onto a directory: not a valid rename.
        if file.hidden {
            return Err(InvalidTransition::new("Renamed", id, Met::Hidden));
        }
        if self.names.get(&(file.user.clone(), path.clone())) == Some(&Node::Dir) {
            return Err(InvalidTransition::new("Renamed", id, Met::Directory));
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
        if self.names.get(&old_key) == Some(&Node::File(id)) {
            self.names.remove(&old_key);
        }
        let new_key = (user.clone(), path.clone());
        if let Some(Node::File(old)) = self.names.insert(new_key, Node::File(id))
            && old != id
        {
            self.drop_file(old, effects);
        }
        if settled {
            // Like a seal at the new name: older pending versions there are superseded.
            self.drop_hidden_versions(&user, path, id, effects);
        }
        Ok(())
    }

    /// `UploadIntent`: noted once per key, up to [`UPLOAD_INTENTS_PER_FILE_COUNT_MAX`].
    fn note_upload_intent(
        &mut self,
        id: FileId,
        key: &str,
        at_unix: u64,
    ) -> Result<(), InvalidTransition> {
        let Some(file) = self.files.get_mut(&id) else {
            return Ok(());
        };
        if file.state == FileState::Delivered {
            return Err(InvalidTransition::new(
                "UploadIntent",
                id,
                Met::State(file.state),
            ));
        }
        if !file.upload_intents.iter().any(|i| i.key == key)
            && file.upload_intents.len() < UPLOAD_INTENTS_PER_FILE_COUNT_MAX
        {
            file.upload_intents.push(UploadIntent {
                key: key.to_owned(),
                at_unix,
            });
        }
        Ok(())
    }

    /// `UploadStarted`: `upload` becomes the file's, early if the file is not sealed yet.
    fn start_upload(
        &mut self,
        id: FileId,
        mut upload: UploadProgress,
        effects: &mut Effects,
    ) -> Result<(), InvalidTransition> {
        let Some(file) = self.files.get_mut(&id) else {
            return Ok(());
        };
        upload.early = match file.state {
            FileState::Sealed | FileState::Uploading => false,
            // Early drain: the state stays; `Sealed` turns it into `Uploading`.
            FileState::Receiving | FileState::Partial => true,
            FileState::Delivered | FileState::Failed | FileState::Conflict => {
                return Err(InvalidTransition::new(
                    "UploadStarted",
                    id,
                    Met::State(file.state),
                ));
            }
        };
        if !upload.early {
            file.state = FileState::Uploading;
        }
        file.upload_intents.clear();
        if let Some(old) = file.upload.replace(upload) {
            effects.abort_uploads.push((old.key, old.upload_id));
        }
        Ok(())
    }

    /// `PartDone`: the part counts for the file's upload.
    fn part_done(
        &mut self,
        id: FileId,
        number: u32,
        etag: &str,
        crc32c: u32,
    ) -> Result<(), InvalidTransition> {
        let Some(file) = self.files.get_mut(&id) else {
            return Ok(());
        };
        let Some(upload) = file.upload.as_mut() else {
            return Err(InvalidTransition::new("PartDone", id, Met::NoUpload));
        };
        let receipt = PartReceipt {
            etag: etag.to_owned(),
            crc32c,
        };
        upload.parts.insert(number, receipt);
        Ok(())
    }

    /// `UploadReset`: the upload is void; an uploading file is sealed again.
    fn reset_upload(&mut self, id: FileId, effects: &mut Effects) {
        let Some(file) = self.files.get_mut(&id) else {
            return;
        };
        if let Some(upload) = file.upload.take() {
            effects.abort_uploads.push((upload.key, upload.upload_id));
        }
        if file.state == FileState::Uploading {
            file.state = FileState::Sealed;
        }
    }

    /// `Delivered`: verified in S3; the spool copy is freed, a hidden version forgotten.
    fn deliver(
        &mut self,
        id: FileId,
        at_unix: u64,
        effects: &mut Effects,
    ) -> Result<(), InvalidTransition> {
        let Some(file) = self.files.get_mut(&id) else {
            return Ok(());
        };
        if !matches!(file.state, FileState::Sealed | FileState::Uploading) {
            return Err(InvalidTransition::new(
                "Delivered",
                id,
                Met::State(file.state),
            ));
        }
        file.state = FileState::Delivered;
        file.upload = None;
        file.upload_intents.clear();
        file.last_error = None;
        file.delivered_unix = Some(at_unix);
        effects.free_spool.push(id);
        if file.hidden {
            self.files.remove(&id);
        }
        Ok(())
    }

    /// `Failed` or `Conflict` (`state`): the file stays in the spool with its cause; a
    /// conflict's upload is aborted, a failure's kept to resume on retry.
    fn settle_unsent(
        &mut self,
        record: &'static str,
        id: FileId,
        state: FileState,
        error: &str,
        effects: &mut Effects,
    ) -> Result<(), InvalidTransition> {
        let Some(file) = self.files.get_mut(&id) else {
            return Ok(());
        };
        if !matches!(file.state, FileState::Sealed | FileState::Uploading) {
            return Err(InvalidTransition::new(record, id, Met::State(file.state)));
        }
        file.state = state;
        file.last_error = Some(error.to_owned());
        if state == FileState::Conflict
            && let Some(u) = file.upload.take()
        {
            effects.abort_uploads.push((u.key, u.upload_id));
        }
        Ok(())
    }

    /// `Hidden`: the file keeps its state but leaves its name.
    fn hide(&mut self, id: FileId) {
        let Some(file) = self.files.get_mut(&id) else {
            return;
        };
        file.hidden = true;
        let key = (file.user.clone(), file.path.clone());
        if self.names.get(&key) == Some(&Node::File(id)) {
            self.names.remove(&key);
        }
    }

    /// `Retried`: a failed or conflicting file is queued again. Any other state is left as
    /// it is, silently: `sftpgw retry` picks its files before it journals, and the drain's
    /// own retry of a failed file may come in between.
    fn retry(&mut self, id: FileId) {
        let Some(file) = self.files.get_mut(&id) else {
            return;
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

    /// `Sealed` or `SealedAppended` (`record`): CLOSE of a receiving or partial file.
    fn seal(
        &mut self,
        record: &'static str,
        id: FileId,
        seal: Seal,
        effects: &mut Effects,
    ) -> Result<(), InvalidTransition> {
        let Some(file) = self.files.get_mut(&id) else {
            return Ok(());
        };
        if !matches!(file.state, FileState::Receiving | FileState::Partial) {
            return Err(InvalidTransition::new(record, id, Met::State(file.state)));
        }
        // An early upload carries on from its parts.
        file.state = if file.upload.is_some() {
            FileState::Uploading
        } else {
            FileState::Sealed
        };
        file.size = seal.size;
        file.sha256 = seal.sha256;
        file.appended_only = seal.appended_only;
        file.mtime_unix = seal.at_unix;
        let (user, path) = (file.user.clone(), file.path.clone());
        // Older hidden versions of the same name are superseded now.
        self.drop_hidden_versions(&user, &path, id, effects);
        Ok(())
    }

    /// Forgets a file: its name (if it still points at it), its spool copy and its upload.
    fn drop_file(&mut self, id: FileId, effects: &mut Effects) {
        self.index.touch(id);
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
        effects.stray_searches.extend(
            file.upload_intents
                .into_iter()
                .map(|i| i.key)
                .filter(|k| !k.is_empty()),
        );
    }

    fn drop_hidden_versions(
        &mut self,
        user: &str,
        path: &VPath,
        keep: FileId,
        effects: &mut Effects,
    ) {
        // The index is current up to this record: a version hidden by this very record is
        // not superseded by it.
        let superseded: Vec<FileId> = self
            .index
            .hidden_versions(user, path)
            .filter(|id| *id != keep)
            .filter(|id| self.files.get(id).is_some_and(|f| f.hidden))
            .collect();
        for old in superseded {
            self.drop_file(old, effects);
        }
    }

    /// After replay no session is connected: every file still receiving is partial.
    pub fn end_replay(&mut self) {
        let receiving: Vec<FileId> = self.ids_in(FileState::Receiving).collect();
        for id in receiving {
            self.mark_partial(id);
        }
    }

    /// Marks a receiving file partial (its session ended without CLOSE). Not journalled: on
    /// replay an opened-but-not-sealed file is partial anyway.
    pub fn mark_partial(&mut self, id: FileId) {
        if let Some(file) = self.files.get_mut(&id)
            && file.state == FileState::Receiving
        {
            file.state = FileState::Partial;
            self.index.touch(id);
            self.index.refile(&self.files);
        }
    }

    /// Marks a partial file receiving again (a session reopened it).
    pub fn mark_receiving(&mut self, id: FileId) {
        if let Some(file) = self.files.get_mut(&id) {
            file.state = FileState::Receiving;
            self.index.touch(id);
            self.index.refile(&self.files);
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
mod tests;
