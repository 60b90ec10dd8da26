//! Recovery at start, and the quarantine: what the spool does with files on disk that the
//! journal does not explain.
//!
//! Rules (docs/SEMANTICS.md, "Damaged journals"):
//! - `partial/` holds only unacknowledged bytes: a file there the journal does not know is a
//!   leftover of a crash before its `Opened` record, and is removed.
//! - A file in `sealed/` was fsynced completely before its rename, so it may be acknowledged;
//!   it is never deleted unless the journal says it was delivered. When the journal does not
//!   explain it (unknown id, or the journal was damaged) it is sealed again from its identity
//!   (`identity`) if it has one and its path holds no newer version, else moved to
//!   `quarantine/`, where an operator lists, delivers (`--as`) or deletes it.
//! - A sealed file whose journal says "partial" was renamed but its `Sealed` record was lost
//!   (a torn or damaged tail): with an identity it is sealed again (complete and fsynced, so
//!   delivering it is right whether or not CLOSE was answered); without one (a file sealed
//!   before identities existed) and an undamaged journal it is partial again, resumable, as
//!   before; otherwise quarantined.
//!
//! Recovery changes the catalog only with records it journals (or that replay derives again)
//! and moves files only between `partial/`, `sealed/` and `quarantine/`; it never talks to S3.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::catalog::{Catalog, Node, Record};
use super::identity::{self, SealedIdentity};
use super::store::{fsync_dir, now_unix};
use super::{FileId, FileState, FsError, FsErrorKind, Spool, VPath};
use crate::limits::SEAL_INLINE_BYTES_MAX;
use crate::num::u64_from_usize;
use sha2::{Digest, Sha256};

/// Files `sftpgw quarantine list` shows at most; it says how many there are in all.
pub const QUARANTINE_LISTED_COUNT_MAX: usize = 200;

/// A file in `quarantine/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantinedFile {
    /// Its name in `quarantine/` (the id it had in `sealed/`), what the CLI takes.
    pub name: String,
    /// Its length in bytes.
    pub size: u64,
    /// What its identity says, if it has one (it may be in doubt: see `reason`).
    pub identity: Option<SealedIdentity>,
    /// Why recovery set it aside.
    pub reason: String,
}

/// The alarms' inputs, kept so that reading them costs no directory scan.
#[derive(Debug, Default)]
pub(super) struct RecoveryState {
    /// Files in `quarantine/` (counted once at open, then kept up to date).
    quarantined: AtomicU64,
    /// `journal.damaged-*` copies found at open.
    damaged_copies: Mutex<Vec<PathBuf>>,
}

/// What recovery did at start, for the log and the alarms.
#[derive(Debug, Default)]
pub(super) struct Recovered {
    pub resealed: usize,
    pub quarantined: usize,
    /// Highest file id seen on disk: new ids must be above it.
    pub max_id_on_disk: FileId,
}

impl Spool {
    pub(super) fn quarantine_dir(&self) -> PathBuf {
        self.options().dir.join("quarantine")
    }

    /// Reconciles the files on disk with the catalog after replay (see the module doc).
    /// `journal_damaged`: replay skipped damaged records, so the catalog may be missing any of
    /// them.
    pub(super) fn reconcile_disk(&self, journal_damaged: bool) -> io::Result<Recovered> {
        fs::create_dir_all(self.quarantine_dir())?;
        self.scan_recovery_state()?;
        let mut recovered = Recovered::default();
        self.reconcile_partial_dir(&mut recovered)?;
        // Sealed again oldest first, so that of two versions of one path the newer wins.
        let mut candidates = Vec::new();
        for entry in fs::read_dir(self.sealed_dir())? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let id = name.parse::<FileId>().ok();
            recovered.max_id_on_disk = recovered.max_id_on_disk.max(id.unwrap_or(0));
            let state = id.and_then(|id| self.lock().file(id).map(|f| f.state));
            match (id, state) {
                (
                    Some(_),
                    Some(
                        FileState::Sealed
                        | FileState::Uploading
                        | FileState::Failed
                        | FileState::Conflict,
                    ),
                ) => {}
                (Some(_), Some(FileState::Delivered)) => fs::remove_file(entry.path())?,
                (Some(id), state) => candidates.push((id, state, entry.path(), name)),
                (None, _) => {
                    self.quarantine(&entry.path(), &name, "not a spool file name")?;
                    recovered.quarantined += 1;
                }
            }
        }
        candidates.sort_by_key(|(id, ..)| *id);
        let mut reseal = Vec::new();
        for (id, state, path, name) in candidates {
            match self.resealable(id, state, &path) {
                Ok(records) => {
                    let mut catalog = self.lock();
                    for record in &records {
                        let applied = catalog.apply(record);
                        debug_assert!(applied.is_ok(), "a reseal refused: {applied:?}");
                    }
                    drop(catalog);
                    tracing::warn!(id, "sealed file sealed again from its identity");
                    recovered.resealed += 1;
                    reseal.extend(records);
                }
                // Renamed to sealed/ before identities existed, and the `Sealed` record never
                // made it: CLOSE was not acknowledged, so it is partial again (resumable).
                Err(_)
                    if !journal_damaged
                        && matches!(state, Some(FileState::Partial | FileState::Receiving)) =>
                {
                    fs::rename(&path, self.partial_path(id))?;
                }
                Err(reason) => {
                    self.quarantine(&path, &name, &reason)?;
                    recovered.quarantined += 1;
                }
            }
        }
        self.mark_missing_files(journal_damaged);
        if !reseal.is_empty() {
            self.journal()
                .submit(reseal, true)
                .wait_blocking()
                .map_err(io::Error::other)?;
        }
        Ok(recovered)
    }

    /// Rewrites `sealed/<id>` from its `InlineData` record for every small file sealed inline
    /// whose unsynced copy a crash lost or tore (the journal holds the bytes until a
    /// compaction has synced the file system). Runs before the rest of recovery looks at the
    /// directories. The rewrite is not synced either: the record stays until that compaction.
    pub(super) fn restore_inline_files(&self, records: &[Record]) -> io::Result<usize> {
        let mut restored = 0;
        for record in records {
            let Record::InlineData { id, data } = record else {
                continue;
            };
            let Some(f) = self.lock().file(*id).cloned() else {
                continue;
            };
            let expects_sealed_copy = matches!(
                f.state,
                FileState::Sealed | FileState::Uploading | FileState::Failed | FileState::Conflict
            );
            if !expects_sealed_copy || f.size != u64_from_usize(data.len()) {
                continue;
            }
            let sealed = self.sealed_path(*id);
            let intact = fs::read(&sealed).is_ok_and(|bytes| bytes == *data)
                && identity::read(&sealed, *id).is_some();
            if intact {
                continue;
            }
            let temp = self.partial_path(*id);
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(data)?;
            let identity = SealedIdentity {
                id: *id,
                user: f.user.clone(),
                path: f.path.clone(),
                size: f.size,
                sha256: f.sha256.map(hex::encode),
                sealed_at_unix: f.mtime_unix,
            };
            identity::write(&file, &identity);
            fs::rename(&temp, &sealed)?;
            tracing::warn!(id, path = %f.path.display(),
                "small file sealed inline rewritten from the journal after a crash");
            restored += 1;
        }
        Ok(restored)
    }

    /// Counts the quarantine and finds the damaged-journal copies (once, at open).
    fn scan_recovery_state(&self) -> io::Result<()> {
        let state = self.recovery_state();
        let quarantined = fs::read_dir(self.quarantine_dir())?.count();
        state
            .quarantined
            .store(u64_from_usize(quarantined), Ordering::Relaxed);
        let mut copies: Vec<PathBuf> = fs::read_dir(&self.options().dir)?
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("journal.damaged-")
            })
            .map(|e| e.path())
            .collect();
        copies.sort();
        *state
            .damaged_copies
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = copies;
        Ok(())
    }

    fn damaged_journal_copies(&self) -> Vec<PathBuf> {
        let state = self.recovery_state();
        let mut copies = state
            .damaged_copies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(report) = self.journal().damage()
            && !copies.contains(&report.copy)
        {
            copies.push(report.copy.clone());
        }
        copies
    }

    /// Files in `quarantine/`.
    pub fn quarantined_count(&self) -> u64 {
        self.recovery_state().quarantined.load(Ordering::Relaxed)
    }

    fn count_quarantined(&self, delta: i64) {
        let counter = &self.recovery_state().quarantined;
        if delta >= 0 {
            counter.fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
        } else {
            let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(delta.unsigned_abs()))
            });
        }
    }

    /// Leftovers in `partial/` the journal does not know were never acknowledged.
    fn reconcile_partial_dir(&self, recovered: &mut Recovered) -> io::Result<()> {
        for entry in fs::read_dir(self.partial_dir())? {
            let entry = entry?;
            let id = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<FileId>().ok());
            recovered.max_id_on_disk = recovered.max_id_on_disk.max(id.unwrap_or(0));
            let known = id
                .and_then(|id| self.lock().file(id).map(|f| f.state))
                .is_some_and(|s| matches!(s, FileState::Partial | FileState::Receiving));
            if !known {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Acknowledged files whose bytes are gone are marked failed, never silently dropped;
    /// receiving or partial ones without bytes are forgotten.
    fn mark_missing_files(&self, journal_damaged: bool) {
        let mut fixes = Vec::new();
        for f in self.lock().files() {
            match f.state {
                FileState::Partial | FileState::Receiving if !self.partial_path(f.id).exists() => {
                    fixes.push(Record::Removed { id: f.id });
                }
                FileState::Sealed | FileState::Uploading if !self.sealed_path(f.id).exists() => {
                    let error = if journal_damaged {
                        "spool copy missing after a damaged journal (its delivery may be among the damaged records)"
                    } else {
                        "spool copy missing after restart"
                    };
                    tracing::error!(id = f.id, path = %f.path.display(), error, "sealed file missing from the spool");
                    fixes.push(Record::Failed {
                        id: f.id,
                        error: error.into(),
                    });
                }
                _ => {}
            }
        }
        if !fixes.is_empty() {
            let mut catalog = self.lock();
            for r in &fixes {
                let applied = catalog.apply(r);
                debug_assert!(applied.is_ok(), "a recovery fix refused: {applied:?}");
            }
            drop(catalog);
            // Durability is not needed: replaying without these records reaches the same fixes.
            drop(self.journal().submit(fixes, false));
        }
    }

    /// The records that seal `sealed/<id>` again from its identity, or why it cannot be.
    fn resealable(
        &self,
        id: FileId,
        state: Option<FileState>,
        path: &Path,
    ) -> Result<Vec<Record>, String> {
        let Some(identity) = identity::read(path, id) else {
            return Err(match state {
                None => "the journal does not know it and it carries no identity".into(),
                Some(_) => "the journal lost its seal and it carries no identity".into(),
            });
        };
        // A small file may have been sealed inline: renamed here with its identity but made
        // durable only by its journal record. Without the record its bytes are believed only
        // if they still hash to what the identity says.
        if identity.size <= SEAL_INLINE_BYTES_MAX
            && let Some(sha256) = &identity.sha256
        {
            let bytes = fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
            if hex::encode(Sha256::digest(&bytes)) != *sha256 {
                return Err(
                    "its bytes do not match its identity (sealed inline, cut by a \
                    crash before its record was durable)"
                        .into(),
                );
            }
        }
        let catalog = self.lock();
        match catalog.lookup(&identity.user, &identity.path) {
            Some(Node::File(other)) if other > id => {
                return Err(format!(
                    "{}:{} holds a newer version (file {other})",
                    identity.user,
                    identity.path.display()
                ));
            }
            // A journal with gaps (damage cut out) may have lost the file's records while a
            // directory took its name: a file never replaces a directory.
            Some(Node::Dir) => {
                return Err(format!(
                    "{}:{} is a directory now",
                    identity.user,
                    identity.path.display()
                ));
            }
            _ => {}
        }
        Ok(reseal_records(&catalog, &identity, state.is_some()))
    }

    /// Moves `path` into `quarantine/` under `name` (or `name.N` if taken), durably.
    fn quarantine(&self, path: &Path, name: &str, reason: &str) -> io::Result<()> {
        let dir = self.quarantine_dir();
        let mut target = dir.join(name);
        let mut n = 1;
        while target.exists() {
            target = dir.join(format!("{name}.{n}"));
            n += 1;
        }
        fs::rename(path, &target)?;
        fsync_dir(&dir)?;
        fsync_dir(self.sealed_dir())?;
        self.count_quarantined(1);
        let identity = identity::read(&target, name.parse().unwrap_or(0));
        tracing::error!(event = "quarantined", file = %target.display(), reason,
            user = identity.as_ref().map(|i| i.user.as_str()), path = identity.as_ref().map(|i| i.path.display()),
            "a sealed file the journal does not explain was quarantined (never deleted): \
             `sftpgw quarantine list`");
        // The reason stays with the file for `quarantine list`.
        let _ = rustix::fs::setxattr(
            &target,
            QUARANTINE_REASON_XATTR,
            reason.as_bytes(),
            rustix::fs::XattrFlags::empty(),
        );
        Ok(())
    }

    /// What needs an operator, for the health verdict: copies of damaged journals kept for
    /// diagnosis (the alarm lasts until they are removed) and files in quarantine. Cheap: a
    /// counter and a `stat` per damaged copy, never a directory scan.
    pub fn alarms(&self) -> Vec<String> {
        let mut alarms = Vec::new();
        let copies = self.damaged_journal_copies();
        for copy in copies.iter().filter(|c| c.exists()) {
            alarms.push(format!(
                "the journal was damaged: records were skipped (see the log); a copy is kept at {} \
                 (remove it once diagnosed)",
                copy.display()
            ));
        }
        let quarantined = self.quarantined_count();
        if quarantined > 0 {
            alarms.push(format!(
                "{quarantined} file(s) in quarantine: `sftpgw quarantine list`"
            ));
        }
        alarms
    }

    /// The files in `quarantine/`, at most `limit`, and how many there are in all.
    pub fn quarantined(&self, limit: usize) -> (Vec<QuarantinedFile>, usize) {
        let Ok(entries) = fs::read_dir(self.quarantine_dir()) else {
            return (Vec::new(), 0);
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let count = names.len();
        let listed = names
            .into_iter()
            .take(limit)
            .map(|name| {
                let path = self.quarantine_dir().join(&name);
                let id = name
                    .split('.')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let mut reason = vec![0u8; 512];
                let reason = rustix::fs::getxattr(&path, QUARANTINE_REASON_XATTR, &mut reason[..])
                    .map(|len| String::from_utf8_lossy(&reason[..len]).into_owned())
                    .unwrap_or_default();
                QuarantinedFile {
                    size: fs::metadata(&path).map_or(0, |m| m.len()),
                    identity: identity::read(&path, id),
                    name,
                    reason,
                }
            })
            .collect();
        (listed, count)
    }

    /// Deletes a quarantined file (the operator decided it is not needed).
    pub fn quarantine_delete(&self, name: &str) -> Result<(), FsError> {
        let path = self.quarantined_path(name)?;
        fs::remove_file(&path).map_err(|e| quarantine_error(name, &e))?;
        self.count_quarantined(-1);
        tracing::warn!(name, "quarantined file deleted by the operator");
        Ok(())
    }

    /// Delivers a quarantined file as `user`'s `path` (or as its identity says, if `None`):
    /// it becomes a new sealed version there, uploaded like any other.
    pub async fn quarantine_deliver(
        &self,
        name: &str,
        target: Option<(String, VPath)>,
    ) -> Result<(String, VPath), FsError> {
        let path = self.quarantined_path(name)?;
        let id_in_name = name
            .split('.')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let identity = identity::read(&path, id_in_name);
        let (user, vpath) = match (target, &identity) {
            (Some(target), _) => target,
            (None, Some(i)) => (i.user.clone(), i.path.clone()),
            (None, None) => {
                return Err(FsError::new(
                    FsErrorKind::Failure,
                    format!("{name} carries no identity: say where it goes with --as USER:/PATH"),
                ));
            }
        };
        if vpath.is_root() {
            return Err(FsError::new(FsErrorKind::Failure, "--as needs a file path"));
        }
        let onto_a_directory = |catalog: &Catalog| {
            if catalog.lookup(&user, &vpath) == Some(Node::Dir) {
                return Err(FsError::new(
                    FsErrorKind::IsADirectory,
                    format!(
                        "{user}:{} is a directory: say where the file goes with --as USER:/PATH",
                        vpath.display()
                    ),
                ));
            }
            Ok(())
        };
        onto_a_directory(&self.lock())?;
        let size = fs::metadata(&path)
            .map_err(|e| quarantine_error(name, &e))?
            .len();
        let id = self.new_id();
        // The hash is only trusted from an identity that matched the file.
        let sha256 = identity
            .as_ref()
            .filter(|i| i.user == user && i.path == vpath)
            .and_then(|i| i.sha256.as_deref())
            .and_then(|h| hex::decode(h).ok())
            .and_then(|h| <[u8; 32]>::try_from(h).ok());
        let sealed = self.sealed_path(id);
        fs::rename(&path, &sealed).map_err(|e| quarantine_error(name, &e))?;
        let synced = fsync_dir(self.sealed_dir()).and_then(|()| fsync_dir(&self.quarantine_dir()));
        synced.map_err(|e| quarantine_error(name, &e))?;
        self.count_quarantined(-1);
        let at_unix = now_unix();
        let mut records = missing_dirs(&self.lock(), &user, &vpath);
        records.extend([
            Record::Opened {
                id,
                user: user.clone(),
                path: vpath.clone(),
                at_unix,
            },
            Record::Sealed {
                id,
                size,
                sha256,
                at_unix,
            },
        ]);
        if let Err(e) = self.commit(records, true, onto_a_directory).await {
            if e.kind == FsErrorKind::IsADirectory {
                // Refused before anything was applied (a directory was made at the path since
                // the check above): the file goes back where the operator found it.
                fs::rename(&sealed, &path).map_err(|e| quarantine_error(name, &e))?;
                self.count_quarantined(1);
            }
            return Err(e);
        }
        tracing::warn!(name, id, user, path = %vpath.display(), "quarantined file delivered by the operator");
        self.work().notify_one();
        Ok((user, vpath))
    }

    fn quarantined_path(&self, name: &str) -> Result<PathBuf, FsError> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(FsError::new(
                FsErrorKind::Failure,
                format!("{name}: not a quarantined file name"),
            ));
        }
        let path = self.quarantine_dir().join(name);
        if !path.is_file() {
            return Err(FsError::new(
                FsErrorKind::NotFound,
                format!("{name}: no such quarantined file (see `sftpgw quarantine list`)"),
            ));
        }
        Ok(path)
    }
}

/// `Mkdir` for each directory above `path` that the catalog does not have, outermost first.
fn missing_dirs(catalog: &Catalog, user: &str, path: &VPath) -> Vec<Record> {
    let mut missing = Vec::new();
    let mut dir = path.parent();
    while let Some(d) = dir.filter(|d| !d.is_root()) {
        dir = d.parent();
        if catalog.lookup(user, &d).is_none() {
            missing.push(Record::Mkdir {
                user: user.to_owned(),
                path: d,
            });
        }
    }
    missing.reverse();
    missing
}

/// Why a file was quarantined, kept on the file itself.
const QUARANTINE_REASON_XATTR: &str = "user.sftpgw.quarantined";

fn quarantine_error(name: &str, e: &io::Error) -> FsError {
    FsError::new(
        FsErrorKind::Failure,
        format!("quarantined file {name}: {e}"),
    )
}

/// `Opened` (if the catalog does not know the file) and `Sealed` from an identity, after
/// `Mkdir` of the directories above it the catalog lost too.
fn reseal_records(catalog: &Catalog, identity: &SealedIdentity, known: bool) -> Vec<Record> {
    let mut records = missing_dirs(catalog, &identity.user, &identity.path);
    if !known {
        records.push(Record::Opened {
            id: identity.id,
            user: identity.user.clone(),
            path: identity.path.clone(),
            at_unix: identity.sealed_at_unix,
        });
    }
    let sha256 = identity
        .sha256
        .as_deref()
        .and_then(|h| hex::decode(h).ok())
        .and_then(|h| <[u8; 32]>::try_from(h).ok());
    records.push(Record::Sealed {
        id: identity.id,
        size: identity.size,
        sha256,
        at_unix: identity.sealed_at_unix,
    });
    records
}
