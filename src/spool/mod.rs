//! The spool: every user's namespace (directories and files) and the bytes of files that are
//! not yet delivered, on local disk. It owns the file lifecycle
//! (`receiving → partial → sealed → uploading → delivered | failed`), journals every change,
//! and acknowledges a CLOSE only once the data, the rename and the journal record are durable.

pub mod catalog;
pub mod vpath;

use std::sync::Arc;

use bytes::Bytes;

pub use vpath::VPath;

/// Identifies one version of one file for its whole life, in the journal and in the spool.
pub type FileId = u64;

/// What went wrong with a namespace or file operation; mapped to SSH_FX_* in one place
/// (`sftp::session`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsErrorKind {
    NotFound,
    PermissionDenied,
    AlreadyExists,
    NoSpace,
    IsADirectory,
    NotADirectory,
    DirectoryNotEmpty,
    Unsupported,
    Failure,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct FsError {
    pub kind: FsErrorKind,
    pub message: String,
}

impl FsError {
    pub fn new(kind: FsErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

/// Where a file is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    Receiving,
    Partial,
    Sealed,
    Uploading,
    Delivered,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
}

/// One name in a user's namespace, as `stat` and `readdir` report it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
    pub mtime_unix: u64,
    /// `None` for directories.
    pub state: Option<FileState>,
}

/// How a file is opened for writing (from SFTP's pflags).
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenMode {
    /// SSH_FXF_TRUNC: start the file anew.
    pub truncate: bool,
    /// SSH_FXF_EXCL: fail if the name exists.
    pub exclusive: bool,
}

/// Space of the spool's filesystem, for statvfs@openssh.com.
#[derive(Debug, Clone, Copy)]
pub struct SpaceInfo {
    pub block_size: u64,
    pub blocks_total: u64,
    pub blocks_free: u64,
    pub blocks_avail: u64,
}

/// The spool of one gateway. Shared by every session and the drain.
pub struct Spool {
    _private: (),
}

impl Spool {
    pub fn stat(&self, _user: &str, _path: &VPath) -> Result<Entry, FsError> {
        todo!()
    }

    /// The entries directly below `path`, sorted by name.
    pub fn list_dir(&self, _user: &str, _path: &VPath) -> Result<Vec<Entry>, FsError> {
        todo!()
    }

    pub async fn mkdir(&self, _user: &str, _path: &VPath) -> Result<(), FsError> {
        todo!()
    }

    pub async fn rmdir(&self, _user: &str, _path: &VPath) -> Result<(), FsError> {
        todo!()
    }

    pub async fn remove(&self, _user: &str, _path: &VPath) -> Result<(), FsError> {
        todo!()
    }

    /// `overwrite` is posix-rename@openssh.com; plain SFTP rename refuses an existing target.
    pub async fn rename(
        &self,
        _user: &str,
        _from: &VPath,
        _to: &VPath,
        _overwrite: bool,
    ) -> Result<(), FsError> {
        todo!()
    }

    pub async fn open_write(
        self: &Arc<Self>,
        _user: &str,
        _path: &VPath,
        _mode: OpenMode,
    ) -> Result<WriteHandle, FsError> {
        todo!()
    }

    /// Reading back works while the spool still holds the file (not after delivery).
    pub async fn open_read(self: &Arc<Self>, _user: &str, _path: &VPath) -> Result<ReadHandle, FsError> {
        todo!()
    }

    pub fn space(&self) -> SpaceInfo {
        todo!()
    }
}

/// An open file being written. Dropping it without [`WriteHandle::close`] leaves the file
/// `partial` (resumable for `partial_ttl`).
pub struct WriteHandle {
    _private: (),
}

impl WriteHandle {
    /// Writes at any offset, in any order. Concurrent calls are allowed.
    pub async fn write_at(&self, _offset: u64, _data: Bytes) -> Result<(), FsError> {
        todo!()
    }

    /// fsync@openssh.com: the bytes written so far are durable (the file is still `receiving`).
    pub async fn fsync(&self) -> Result<(), FsError> {
        todo!()
    }

    /// Current size (highest offset written, or the resumed size).
    pub fn size(&self) -> u64 {
        todo!()
    }

    /// Seals the file: fsync(file) → rename → fsync(dir) → journal "Sealed" fsynced.
    /// Only when this returns `Ok` may the client be told SSH_FX_OK.
    pub async fn close(self) -> Result<(), FsError> {
        todo!()
    }
}

/// An open file being read back from the spool.
pub struct ReadHandle {
    _private: (),
}

impl ReadHandle {
    /// Returns fewer bytes than asked at the end of the file and an empty buffer at EOF.
    pub async fn read_at(&self, _offset: u64, _len: u32) -> Result<Bytes, FsError> {
        todo!()
    }

    pub fn size(&self) -> u64 {
        todo!()
    }
}
