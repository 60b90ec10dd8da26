//! The namespace as SFTP sees it: stat and listings, directories, removal, rename, and
//! opening files for writing or reading (the handles live in `handles.rs`).
//!
//! Every change is checked under the catalog lock and committed (`commit.rs`); it never
//! touches the drain except to wake it after a rename.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Spool;
use crate::spool::catalog::{Catalog, Node, Record};
use crate::spool::handles::{ReadHandle, WriteHandle};
use crate::spool::{Entry, EntryKind, FileId, FileState, FsError, FsErrorKind, OpenMode, VPath};

impl Spool {
    fn entry_of(&self, catalog: &Catalog, name: String, node: Node) -> Entry {
        match node {
            Node::Dir => Entry {
                name,
                kind: EntryKind::Dir,
                size: 0,
                mtime_unix: 0,
                state: None,
            },
            Node::File(id) => {
                let f = catalog.file(id);
                let state = f.map(|f| f.state);
                let size = match state {
                    Some(FileState::Receiving) => self
                        .live(id)
                        .map(|l| l.size.load(Ordering::Relaxed))
                        .unwrap_or(0),
                    Some(FileState::Partial) => fs::metadata(self.partial_path(id))
                        .map(|m| m.len())
                        .unwrap_or(0),
                    _ => f.map(|f| f.size).unwrap_or(0),
                };
                Entry {
                    name,
                    kind: EntryKind::File,
                    size,
                    mtime_unix: f.map(|f| f.mtime_unix).unwrap_or(0),
                    state,
                }
            }
        }
    }

    /// The entry `path` names (a receiving file shows its live size).
    pub fn stat(&self, user: &str, path: &VPath) -> Result<Entry, FsError> {
        let catalog = self.lock();
        let node = catalog.lookup(user, path).ok_or_else(|| not_found(path))?;
        Ok(self.entry_of(&catalog, path.name().to_owned(), node))
    }

    /// The receipts of `paths` (files of `user`): each one's latest delivery in the delivery
    /// log, or `None` where the log holds none or a newer version of the name is still on its
    /// way (the catalog has the name as a file not delivered yet). The log outlives the
    /// catalog's delivered files. Reads the log on a blocking thread: O(paths · log files).
    pub async fn receipts(
        &self,
        user: &str,
        paths: Vec<VPath>,
    ) -> Result<Vec<Option<crate::spool::deliveries::Delivery>>, FsError> {
        let pending: Vec<bool> = {
            let catalog = self.lock();
            paths
                .iter()
                .map(|path| match catalog.lookup(user, path) {
                    Some(Node::File(id)) => catalog
                        .file(id)
                        .is_some_and(|f| f.state != FileState::Delivered),
                    _ => false,
                })
                .collect()
        };
        let log = Arc::clone(&self.deliveries);
        let user = user.to_owned();
        let found = tokio::task::spawn_blocking(move || {
            paths
                .iter()
                .zip(pending)
                .map(|(path, pending)| match pending {
                    true => Ok(None),
                    false => log.latest(&user, &path.display()),
                })
                .collect::<std::io::Result<Vec<_>>>()
        })
        .await
        .map_err(|e| FsError::new(FsErrorKind::Failure, format!("delivery log: {e}")))?;
        found.map_err(|e| FsError::new(FsErrorKind::Failure, format!("delivery log: {e}")))
    }

    /// The entries directly below `path`, sorted by name.
    pub fn list_dir(&self, user: &str, path: &VPath) -> Result<Vec<Entry>, FsError> {
        self.list_dir_page(user, path, None, usize::MAX)
    }

    /// Up to `limit` entries directly below `path` whose names sort after `after`, in name
    /// order: one page of a listing (READDIR), so that a directory of 10^5 entries is never
    /// copied whole nor holds the catalog lock for more than a page.
    pub fn list_dir_page(
        &self,
        user: &str,
        path: &VPath,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Entry>, FsError> {
        let catalog = self.lock();
        match catalog.lookup(user, path) {
            None => return Err(not_found(path)),
            Some(Node::File(_)) => {
                return Err(FsError::new(
                    FsErrorKind::NotADirectory,
                    format!("{}: not a directory", path.display()),
                ));
            }
            Some(Node::Dir) => {}
        }
        Ok(catalog
            .children_page(user, path, after, limit)
            .into_iter()
            .map(|(name, node)| self.entry_of(&catalog, name, node))
            .collect())
    }

    /// Creates a directory under an existing one; durable when it returns.
    pub async fn mkdir(&self, user: &str, path: &VPath) -> Result<(), FsError> {
        let record = Record::Mkdir {
            user: user.to_owned(),
            path: path.clone(),
        };
        self.commit(vec![record], true, |c| {
            if c.lookup(user, path).is_some() {
                return Err(FsError::new(
                    FsErrorKind::AlreadyExists,
                    format!("{}: already exists", path.display()),
                ));
            }
            require_parent_dir(c, user, path)
        })
        .await
    }

    /// Removes an empty directory (never the home directory); durable when it returns.
    pub async fn rmdir(&self, user: &str, path: &VPath) -> Result<(), FsError> {
        if path.is_root() {
            return Err(FsError::new(
                FsErrorKind::PermissionDenied,
                "cannot remove your home directory",
            ));
        }
        let record = Record::Rmdir {
            user: user.to_owned(),
            path: path.clone(),
        };
        self.commit(vec![record], true, |c| match c.lookup(user, path) {
            None => Err(not_found(path)),
            Some(Node::File(_)) => Err(FsError::new(
                FsErrorKind::NotADirectory,
                format!("{}: not a directory", path.display()),
            )),
            Some(Node::Dir) if c.has_children(user, path) => Err(FsError::new(
                FsErrorKind::DirectoryNotEmpty,
                format!("{}: directory not empty", path.display()),
            )),
            Some(Node::Dir) => Ok(()),
        })
        .await
    }

    /// Removes a file from the namespace. A pending upload is cancelled and its spool copy
    /// freed; a delivered object stays in the bucket (the gateway never deletes objects).
    pub async fn remove(&self, user: &str, path: &VPath) -> Result<(), FsError> {
        let id = match self.lock().lookup(user, path) {
            None => return Err(not_found(path)),
            Some(Node::Dir) => {
                return Err(FsError::new(
                    FsErrorKind::IsADirectory,
                    format!("{}: is a directory", path.display()),
                ));
            }
            Some(Node::File(id)) => id,
        };
        self.commit(vec![Record::Removed { id }], true, |c| {
            if c.lookup(user, path) == Some(Node::File(id)) {
                Ok(())
            } else {
                Err(not_found(path))
            }
        })
        .await
    }

    /// `overwrite` is posix-rename@openssh.com; plain SFTP rename refuses an existing target.
    /// Renaming a directory renames everything below it. A file whose upload is under way is
    /// uploaded again under its new key; a delivered file cannot be renamed (its object is
    /// already in the bucket under the old key).
    pub async fn rename(
        &self,
        user: &str,
        from: &VPath,
        to: &VPath,
        overwrite: bool,
    ) -> Result<(), FsError> {
        if from.is_root() || to.is_root() {
            return Err(FsError::new(
                FsErrorKind::PermissionDenied,
                "cannot rename your home directory",
            ));
        }
        if from == to {
            return Ok(());
        }
        let records = {
            let c = self.lock();
            rename_records(&c, user, from, to, overwrite)?
        };
        let expected = records.clone();
        self.commit(records, true, |c| {
            // Recompute under the lock: if the namespace changed meanwhile, refuse.
            if rename_records(c, user, from, to, overwrite)? == expected {
                Ok(())
            } else {
                Err(FsError::new(
                    FsErrorKind::Failure,
                    "the namespace changed during rename; try again",
                ))
            }
        })
        .await?;
        // Sealed files carry their name in their identity: it follows the rename before the
        // rename is acknowledged. (A file still arriving gets its identity at CLOSE, from the
        // name it has then.)
        let moved: Vec<(PathBuf, FileId, VPath)> = expected
            .iter()
            .filter_map(|r| match r {
                Record::Renamed { id, path } => Some((self.sealed_path(*id), *id, path.clone())),
                _ => None,
            })
            .collect();
        if !moved.is_empty() {
            let updated = tokio::task::spawn_blocking(move || {
                for (file, id, path) in &moved {
                    crate::spool::identity::rename(file, *id, path);
                }
            })
            .await;
            if let Err(e) = updated {
                tracing::warn!(error = %e, "updating renamed files' identities failed");
            }
        }
        self.work.notify_one();
        Ok(())
    }

    /// Opens `path` for writing as a new version (see `WriteHandle::open`).
    pub async fn open_write(
        self: &Arc<Self>,
        user: &str,
        path: &VPath,
        mode: OpenMode,
    ) -> Result<WriteHandle, FsError> {
        WriteHandle::open(self, user, path, mode).await
    }

    /// Reading back works while the spool still holds the file (not after delivery).
    pub async fn open_read(
        self: &Arc<Self>,
        user: &str,
        path: &VPath,
    ) -> Result<ReadHandle, FsError> {
        ReadHandle::open(self, user, path)
    }
}

fn not_found(path: &VPath) -> FsError {
    FsError::new(
        FsErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

fn require_parent_dir(c: &Catalog, user: &str, path: &VPath) -> Result<(), FsError> {
    let parent = path.parent().unwrap_or_else(VPath::root);
    match c.lookup(user, &parent) {
        Some(Node::Dir) => Ok(()),
        Some(Node::File(_)) => Err(FsError::new(
            FsErrorKind::NotADirectory,
            format!("{}: not a directory", parent.display()),
        )),
        None => Err(not_found(&parent)),
    }
}

/// The records a rename amounts to, or why it is refused.
fn rename_records(
    c: &Catalog,
    user: &str,
    from: &VPath,
    to: &VPath,
    overwrite: bool,
) -> Result<Vec<Record>, FsError> {
    let source = c.lookup(user, from).ok_or_else(|| not_found(from))?;
    require_parent_dir(c, user, to)?;
    if to.starts_with(from) {
        return Err(FsError::new(
            FsErrorKind::Failure,
            "cannot move a directory into itself",
        ));
    }
    match (source, c.lookup(user, to)) {
        (_, None) => {}
        (Node::File(_), Some(Node::File(_))) if overwrite => {}
        (_, Some(_)) => {
            return Err(FsError::new(
                FsErrorKind::AlreadyExists,
                format!("{}: already exists", to.display()),
            ));
        }
    }
    match source {
        Node::File(id) => {
            if is_delivered(c, id) {
                return Err(refuse_delivered(from));
            }
            Ok(vec![Record::Renamed {
                id,
                path: to.clone(),
            }])
        }
        Node::Dir => dir_rename_records(c, user, from, to),
    }
}

/// The records that rename directory `from` to `to`, walking its whole subtree:
/// directories are created under the new name first, files moved, then the old directories
/// removed deepest first. Refused if a delivered file is below it.
fn dir_rename_records(
    c: &Catalog,
    user: &str,
    from: &VPath,
    to: &VPath,
) -> Result<Vec<Record>, FsError> {
    let mut mkdirs = vec![Record::Mkdir {
        user: user.to_owned(),
        path: to.clone(),
    }];
    let mut moves = Vec::new();
    let mut rmdirs = vec![Record::Rmdir {
        user: user.to_owned(),
        path: from.clone(),
    }];
    let mut stack = vec![from.clone()];
    while let Some(dir) = stack.pop() {
        for (name, node) in c.children(user, &dir) {
            let old = dir.join(&name);
            let rel = &old.as_str()[from.as_str().len() + 1..];
            let new = to.join(rel);
            match node {
                Node::Dir => {
                    mkdirs.push(Record::Mkdir {
                        user: user.to_owned(),
                        path: new,
                    });
                    rmdirs.push(Record::Rmdir {
                        user: user.to_owned(),
                        path: old.clone(),
                    });
                    stack.push(old);
                }
                Node::File(id) => {
                    if is_delivered(c, id) {
                        return Err(refuse_delivered(&old));
                    }
                    moves.push(Record::Renamed { id, path: new });
                }
            }
        }
    }
    rmdirs.reverse();
    mkdirs.extend(moves);
    mkdirs.extend(rmdirs);
    Ok(mkdirs)
}

fn is_delivered(c: &Catalog, id: FileId) -> bool {
    c.file(id).is_some_and(|f| f.state == FileState::Delivered)
}

/// Why a delivered file (at `p`) cannot be renamed.
fn refuse_delivered(p: &VPath) -> FsError {
    FsError::new(
        FsErrorKind::PermissionDenied,
        format!(
            "{}: already delivered to the bucket; it cannot be renamed",
            p.display()
        ),
    )
}
