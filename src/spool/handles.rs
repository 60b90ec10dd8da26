//! Open files: [`WriteHandle`] (receiving, sealed by `close`) and [`ReadHandle`].
//!
//! The durability point of the whole product is [`WriteHandle::close`]:
//! fsync(file) → rename `partial/<id>` → `sealed/<id>` → fsync(dirs) → journal `Sealed`, fsynced.
//!
//! Handles change the catalog only through `Spool::commit`, and reach the drain only through
//! the spool's wake-up signal.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::catalog::{FileRecord, Node, Record};
use super::engine::SyncScope;
use super::identity::{self, SealedIdentity};
use super::store::{io_error, no_space, now_unix};
use super::{FileId, FileState, FsError, FsErrorKind, OpenMode, Spool, VPath};
use crate::limits::SEAL_INLINE_BYTES_MAX;
use crate::num::{u64_from_usize, usize_from_u32};

/// Writes at most this long are hashed on the calling task (about 10 µs with SHA extensions)
/// instead of on the blocking pool.
const HASH_HERE_BYTES_MAX: usize = 16 * 1024;

/// Follows a file that arrives in order: whether every write so far was an append, and the
/// SHA-256 of what was appended while the file is at most `hash_bytes_max` long. Gives up
/// hashing (leaving it to the drain where it needs one) at the first write that is not
/// exactly at the end, or when the file outgrows the limit.
struct SequentialHash {
    /// `None` once the file outgrew `hash_bytes_max` (or stopped arriving in order).
    hasher: Option<Sha256>,
    appended_bytes: u64,
    in_order: bool,
    hash_bytes_max: u64,
}

/// What [`SequentialHash`] knows at the seal.
struct Sealing {
    sha256: Option<[u8; 32]>,
    /// Every write was an append: no byte was written twice.
    appended_only: bool,
}

impl SequentialHash {
    fn new(hash_bytes_max: u64) -> Self {
        Self {
            hasher: Some(Sha256::new()),
            appended_bytes: 0,
            in_order: true,
            hash_bytes_max,
        }
    }

    /// Whether a write of `len` bytes at `offset` would be hashed (the costly case).
    fn wants(&self, offset: u64, len: usize) -> bool {
        self.in_order
            && self.hasher.is_some()
            && offset == self.appended_bytes
            && self.appended_bytes + u64_from_usize(len) <= self.hash_bytes_max
    }

    fn update(&mut self, offset: u64, data: &[u8]) {
        if !self.in_order {
            return;
        }
        if offset == self.appended_bytes {
            let end = self.appended_bytes + u64_from_usize(data.len());
            match &mut self.hasher {
                Some(h) if end <= self.hash_bytes_max => h.update(data),
                // Too big to hash here: the early drain does not need the hash, and the
                // drain hashes the sealed file where it does.
                _ => self.hasher = None,
            }
            self.appended_bytes = end;
        } else {
            // A gap or a rewrite: the running hash no longer describes the file.
            self.in_order = false;
            self.hasher = None;
        }
    }

    fn finish(self, size: u64) -> Sealing {
        let appended_only = self.in_order && self.appended_bytes == size;
        Sealing {
            sha256: self
                .hasher
                .filter(|_| appended_only)
                .map(|h| h.finalize().into()),
            appended_only,
        }
    }
}

/// What the rest of the spool may see of a file open for writing.
#[derive(Debug, Default)]
pub(super) struct Live {
    /// Whose upload this is (for quotas).
    pub(super) user: Arc<str>,
    /// Highest offset written (the size a listing shows).
    pub(super) size: AtomicU64,
    /// Every byte below this was written by a write that has completed, and only appends
    /// (writes starting at or below the frontier) move it: the early drain may read up to it.
    pub(super) frontier: AtomicU64,
}

/// An open file being written. Dropping it without [`WriteHandle::close`] leaves the file
/// `partial` (resumable for `partial_ttl`).
pub struct WriteHandle {
    spool: Arc<Spool>,
    id: FileId,
    file: Arc<File>,
    live: Arc<Live>,
    hash: Arc<Mutex<Option<SequentialHash>>>,
    /// Set when an fsync failed: this version can never be acknowledged.
    poisoned: std::sync::atomic::AtomicBool,
    closed: bool,
}

impl WriteHandle {
    pub(super) async fn open(
        spool: &Arc<Spool>,
        user: &str,
        path: &VPath,
        mode: OpenMode,
    ) -> Result<WriteHandle, FsError> {
        enum Plan {
            New { copy_from: Option<FileId> },
            Resume(FileId),
        }
        let plan = {
            let c = spool.lock();
            match c.lookup(user, path) {
                Some(Node::Dir) => {
                    return Err(FsError::new(
                        FsErrorKind::IsADirectory,
                        format!("{}: is a directory", path.display()),
                    ));
                }
                None => {
                    let parent = path.parent().unwrap_or_else(VPath::root);
                    if !c.is_dir(user, &parent) {
                        return Err(FsError::new(
                            FsErrorKind::NotFound,
                            format!("{}: no such directory", parent.display()),
                        ));
                    }
                    Plan::New { copy_from: None }
                }
                Some(Node::File(_)) if mode.exclusive => {
                    return Err(FsError::new(
                        FsErrorKind::AlreadyExists,
                        format!("{}: already exists", path.display()),
                    ));
                }
                Some(Node::File(id)) => {
                    let state = c.file(id).map(|f| f.state);
                    match state {
                        Some(FileState::Receiving) => {
                            return Err(FsError::new(
                                FsErrorKind::Failure,
                                format!("{}: being written by another session", path.display()),
                            ));
                        }
                        Some(FileState::Partial) => Plan::Resume(id),
                        _ if mode.truncate => Plan::New { copy_from: None },
                        Some(FileState::Delivered) => {
                            return Err(FsError::new(
                                FsErrorKind::Failure,
                                format!(
                                    "{}: already delivered and no longer in the spool; upload it again in full",
                                    path.display()
                                ),
                            ));
                        }
                        _ => Plan::New {
                            copy_from: Some(id),
                        },
                    }
                }
            }
        };
        // Checked after the lookup, so that a client is told about a wrong path first.
        spool.admit_upload()?;
        match plan {
            Plan::Resume(id) => Self::resume(spool, user, path, id, mode.truncate),
            Plan::New { copy_from } => {
                spool.admit_new_file(user)?;
                Self::create(spool, user, path, copy_from).await
            }
        }
    }

    fn resume(
        spool: &Arc<Spool>,
        user: &str,
        path: &VPath,
        id: FileId,
        truncate: bool,
    ) -> Result<WriteHandle, FsError> {
        {
            let mut c = spool.lock();
            let still_partial = c.lookup(user, path) == Some(Node::File(id))
                && c.file(id).is_some_and(|f| f.state == FileState::Partial);
            if !still_partial {
                return Err(FsError::new(
                    FsErrorKind::Failure,
                    "file changed while opening; try again",
                ));
            }
            c.mark_receiving(id);
        }
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .open(spool.partial_path(id));
        let file = match opened {
            Ok(f) => f,
            Err(e) => {
                spool.lock().mark_partial(id);
                return Err(io_error("reopening partial file", &e));
            }
        };
        if truncate && let Err(e) = file.set_len(0) {
            spool.lock().mark_partial(id);
            return Err(io_error("truncating partial file", &e));
        }
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self::new(spool, user, id, file, len))
    }

    async fn create(
        spool: &Arc<Spool>,
        user: &str,
        path: &VPath,
        copy_from: Option<FileId>,
    ) -> Result<WriteHandle, FsError> {
        let id = spool.new_id();
        let partial = spool.partial_path(id);
        let file = spool
            .create_spool_file(&partial)
            .map_err(|e| io_error("creating spool file", &e))?;
        if let Some(src) = copy_from {
            let src_path = spool.sealed_path(src);
            // The copy is a write like any other: it may not eat into the reserve.
            let src_len = fs::metadata(&src_path).map_or(0, |m| m.len());
            if src_len > spool.free_after_reserve() {
                let _ = fs::remove_file(&partial);
                return Err(no_space());
            }
            let dst = partial.clone();
            let copied = tokio::task::spawn_blocking(move || fs::copy(src_path, dst)).await;
            match copied {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    let _ = fs::remove_file(&partial);
                    return Err(io_error("copying the earlier version", &e));
                }
                Err(e) => {
                    let _ = fs::remove_file(&partial);
                    return Err(FsError::new(
                        FsErrorKind::Failure,
                        format!("copy task failed: {e}"),
                    ));
                }
            }
        }
        let record = Record::Opened {
            id,
            user: user.to_owned(),
            path: path.clone(),
            at_unix: now_unix(),
        };
        let committed = spool
            .commit(vec![record], false, |c| match c.lookup(user, path) {
                Some(Node::File(other))
                    if c.file(other)
                        .is_some_and(|f| f.state == FileState::Receiving) =>
                {
                    Err(FsError::new(
                        FsErrorKind::Failure,
                        format!("{}: being written by another session", path.display()),
                    ))
                }
                Some(Node::Dir) => Err(FsError::new(
                    FsErrorKind::IsADirectory,
                    format!("{}: is a directory", path.display()),
                )),
                _ => Ok(()),
            })
            .await;
        if let Err(e) = committed {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self::new(spool, user, id, file, len))
    }

    fn new(spool: &Arc<Spool>, user: &str, id: FileId, file: File, len: u64) -> WriteHandle {
        let live = Arc::new(Live {
            user: Arc::from(user),
            size: AtomicU64::new(len),
            frontier: AtomicU64::new(len),
        });
        spool.register_live(id, live.clone());
        // A resumed or copied file starts with bytes we did not see: the drain hashes it. So
        // does a file that already has an (early) upload: its running hash would not cover
        // the bytes those parts were read from, and a SHA-256 at the seal is what tells the
        // drain that every part was read from bytes never written again.
        let fresh = len == 0 && spool.lock().file(id).is_none_or(|f| f.upload.is_none());
        let hash_bytes_max = spool.options().hash_bytes_max;
        let hash = fresh.then(|| SequentialHash::new(hash_bytes_max));
        WriteHandle {
            spool: spool.clone(),
            id,
            file: Arc::new(file),
            live,
            hash: Arc::new(Mutex::new(hash)),
            poisoned: std::sync::atomic::AtomicBool::new(false),
            closed: false,
        }
    }

    /// The file version this handle writes.
    pub fn id(&self) -> FileId {
        self.id
    }

    /// Writes at any offset, in any order. Calls for one handle should be awaited in order for
    /// the running hash to stay valid (out-of-order writes are correct, only slower to drain).
    pub async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), FsError> {
        let end = offset
            .checked_add(u64_from_usize(data.len()))
            .ok_or_else(|| FsError::new(FsErrorKind::Failure, "offset out of range"))?;
        let max = self.spool.options().max_file_size;
        if end > max {
            return Err(FsError::new(
                FsErrorKind::Failure,
                format!(
                    "file too large: a write up to byte {end} is above [spool] max_file_size ({max} bytes)"
                ),
            ));
        }
        // A write past the end also takes the hole before it: the file is uploaded with its
        // holes as zeros, and the disk may fill them in later, so they count as used space.
        let growth = end
            .saturating_sub(self.size())
            .max(u64_from_usize(data.len()));
        if growth > self.spool.free_after_reserve() {
            return Err(no_space());
        }
        self.spool
            .admit_bytes(&self.live.user, end.saturating_sub(self.size()))?;
        // The hash runs on the blocking pool while the engine writes; both finish before this
        // returns, so hash updates keep the order in which the writes were awaited.
        let hashing = self.hash_in_background(offset, data.clone());
        let writing = self.spool.engine().write_at(&self.file, offset, data);
        let (hashed, written) = tokio::join!(hashing, writing);
        hashed?;
        written.map_err(|e| io_error("writing spool file", &e))?;
        self.live.size.fetch_max(end, Ordering::Relaxed);
        crate::telemetry::add_bytes_received(end - offset);
        // Writes of one handle are awaited one after another, so an append here extends the
        // written prefix; a write beyond it (a gap) does not, and the frontier stays put.
        if offset <= self.live.frontier.load(Ordering::Acquire) {
            let before = self.live.frontier.fetch_max(end, Ordering::Release);
            self.spool.frontier_moved(before, end);
        }
        Ok(())
    }

    /// Feeds `data` to the running hash on the blocking pool, unless the hash has given up or
    /// would give up at this write, or the write is small (then it is done here).
    async fn hash_in_background(&self, offset: u64, data: Bytes) -> Result<(), FsError> {
        {
            let mut hash = self.hash.lock().unwrap_or_else(|p| p.into_inner());
            match hash.as_mut() {
                // A small write costs less to hash here than a hop to the blocking pool.
                Some(h) if h.wants(offset, data.len()) && data.len() > HASH_HERE_BYTES_MAX => {}
                Some(h) => {
                    h.update(offset, &data);
                    return Ok(());
                }
                None => return Ok(()),
            }
        }
        let hash = self.hash.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(h) = hash.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                h.update(offset, &data);
            }
        })
        .await
        .map_err(|e| FsError::new(FsErrorKind::Failure, format!("hash task failed: {e}")))
    }

    /// fsync@openssh.com: the bytes written so far are durable (the file is still `receiving`).
    pub async fn fsync(&self) -> Result<(), FsError> {
        let synced = self.spool.engine().fsync(&self.file, SyncScope::Data).await;
        synced.map_err(|e| {
            // The kernel may have dropped the dirty pages: a later fsync could succeed without
            // them. This version can never be acknowledged.
            self.poisoned.store(true, Ordering::Relaxed);
            io_error("fsync", &e)
        })
    }

    /// Current size (highest offset written, or the resumed size).
    pub fn size(&self) -> u64 {
        self.live.size.load(Ordering::Relaxed)
    }

    /// Seals the file: fsync(file) (through the engine, after every write awaited before) →
    /// rename → fsync(dirs) → journal "Sealed" fsynced.
    /// Only when this returns `Ok` may the client be told SSH_FX_OK.
    ///
    /// The work runs in its own task, so a client that disconnects in the middle cannot leave
    /// the file half sealed. If an fsync fails the version is discarded (never retried and then
    /// acknowledged) and the client is told to upload it again; other errors leave it `partial`.
    pub async fn close(self) -> Result<(), FsError> {
        tokio::spawn(self.seal()).await.unwrap_or_else(|e| {
            Err(FsError::new(
                FsErrorKind::Failure,
                format!("seal task failed: {e}"),
            ))
        })
    }

    async fn seal(mut self) -> Result<(), FsError> {
        let spool = self.spool.clone();
        let id = self.id;
        if spool.lock().file(id).is_none() {
            // Removed while open (like unlink of an open file): the bytes go with it.
            self.closed = true;
            spool.unregister_live(id);
            let _ = fs::remove_file(spool.partial_path(id));
            return Ok(());
        }
        if self.poisoned.load(Ordering::Relaxed) {
            return self.discard("an earlier fsync failed").await;
        }
        // Every write has been applied: the length is final.
        let size = self
            .file
            .metadata()
            .map_err(|e| io_error("sealing", &e))?
            .len();
        let sealing = self
            .hash
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .map(|h| h.finish(size));
        let file = spool.file(id);
        let inline = size <= SEAL_INLINE_BYTES_MAX
            && sealing.is_some()
            && file.as_ref().is_some_and(|f| f.upload.is_none());
        let records = if inline {
            self.inline_records(size, file.as_ref())?
        } else {
            match self.fsync_and_rename(size, sealing, file.as_ref()).await {
                Ok(records) => records,
                Err(SealError::Sync(e)) => {
                    self.poisoned.store(true, Ordering::Relaxed);
                    return self.discard(&format!("fsync failed: {e}")).await;
                }
                Err(SealError::Other(e)) => return Err(io_error("sealing", &e)),
            }
        };
        let sha256_hex = records
            .iter()
            .find_map(|r| match r {
                Record::Sealed {
                    sha256: Some(sha), ..
                } => Some(hex::encode(sha)),
                _ => None,
            })
            .unwrap_or_default();
        let result = spool
            .commit(records, true, |c| {
                if c.file(id).is_some() {
                    Ok(())
                } else {
                    Err(FsError::new(FsErrorKind::NotFound, "removed while closing"))
                }
            })
            .await;
        self.closed = true;
        spool.unregister_live(id);
        match result {
            Ok(()) => {
                if let Some(f) = spool.file(id) {
                    tracing::info!(event = "sealed", id, user = %f.user, path = %f.path.display(),
                        size, sha256 = %sha256_hex, "file sealed: durable on the spool, acknowledged");
                }
                spool.work().notify_one();
                Ok(())
            }
            Err(e) if e.kind == FsErrorKind::NotFound => {
                let _ = fs::remove_file(spool.sealed_path(id));
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The slow, general seal: the identity on the file, fsync(file) (after every write
    /// awaited before), rename to `sealed/`, fsync of both directories (a round shared with
    /// other sessions' CLOSEs). Returns the `Sealed` record to journal.
    async fn fsync_and_rename(
        &self,
        size: u64,
        sealing: Option<Sealing>,
        file: Option<&FileRecord>,
    ) -> Result<Vec<Record>, SealError> {
        let (spool, id) = (&self.spool, self.id);
        // The identity goes on the file before its fsync, which makes it durable with the bytes.
        if let Some(f) = file {
            let sha256 = sealing.as_ref().and_then(|s| s.sha256);
            identity::write(&self.file, &identity_of(f, size, sha256));
        }
        spool
            .engine()
            .fsync(&self.file, SyncScope::All)
            .await
            .map_err(SealError::Sync)?;
        let (partial, sealed) = (spool.partial_path(id), spool.sealed_path(id));
        fs::rename(&partial, &sealed).map_err(SealError::Other)?;
        // Both directories synced, in a round shared with the CLOSEs of other sessions.
        if let Err(e) = spool.dir_sync().sync().await {
            // Not durable as sealed: put it back so that the state on disk matches the
            // catalog (partial) whatever happens next.
            let _ = fs::rename(&sealed, &partial);
            return Err(SealError::Sync(e));
        }
        Ok(vec![match sealing {
            Some(Sealing {
                sha256: None,
                appended_only: true,
            }) => Record::SealedAppended {
                id,
                size,
                at_unix: now_unix(),
            },
            other => Record::Sealed {
                id,
                size,
                sha256: other.and_then(|s| s.sha256),
                at_unix: now_unix(),
            },
        }])
    }

    /// The fast seal of a small file written in full through this handle: its bytes, read
    /// back from the page cache, go into the journal with the `Sealed` record, and the one
    /// journal fsync (shared with other sessions) makes the file durable. The file is renamed
    /// to `sealed/` unsynced; recovery rewrites it from the record if a crash lost it, and a
    /// compaction syncs the file system before its snapshot drops the record.
    fn inline_records(&self, size: u64, file: Option<&FileRecord>) -> Result<Vec<Record>, FsError> {
        let (spool, id) = (&self.spool, self.id);
        let len = usize::try_from(size)
            .map_err(|_| FsError::new(FsErrorKind::Failure, "file too large to seal inline"))?;
        let mut data = vec![0u8; len];
        self.file
            .read_exact_at(&mut data, 0)
            .map_err(|e| io_error("reading back a small file", &e))?;
        // The hash of what the journal holds: exactly the bytes that will be uploaded.
        let sha256: [u8; 32] = Sha256::digest(&data).into();
        // Written before the rename, as in the slow seal, so that a file the journal loses
        // is sealed again; recovery believes it only if the bytes match this SHA-256, since
        // nothing here made them durable.
        if let Some(f) = file {
            identity::write(&self.file, &identity_of(f, size, Some(sha256)));
        }
        fs::rename(spool.partial_path(id), spool.sealed_path(id))
            .map_err(|e| io_error("sealing", &e))?;
        Ok(vec![
            Record::InlineData { id, data },
            Record::Sealed {
                id,
                size,
                sha256: Some(sha256),
                at_unix: now_unix(),
            },
        ])
    }

    /// Drops this version after a durability failure and tells the client why.
    async fn discard(mut self, why: &str) -> Result<(), FsError> {
        tracing::error!(
            id = self.id,
            why,
            "discarding a file that could not be made durable"
        );
        self.closed = true;
        self.spool.unregister_live(self.id);
        let id = self.id;
        let _ = self
            .spool
            .commit(vec![Record::Removed { id }], true, |_| Ok(()))
            .await;
        Err(FsError::new(
            FsErrorKind::Failure,
            format!("{why}; the file was not stored, upload it again"),
        ))
    }
}

/// The identity of `f`, sealed now at `size` bytes.
fn identity_of(f: &FileRecord, size: u64, sha256: Option<[u8; 32]>) -> SealedIdentity {
    SealedIdentity {
        id: f.id,
        user: f.user.clone(),
        path: f.path.clone(),
        size,
        sha256: sha256.map(hex::encode),
        sealed_at_unix: now_unix(),
    }
}

enum SealError {
    /// fsync of the file or a directory failed: durability unknown.
    Sync(std::io::Error),
    Other(std::io::Error),
}

impl Drop for WriteHandle {
    fn drop(&mut self) {
        if !self.closed {
            self.spool.unregister_live(self.id);
            let mut catalog = self.spool.lock();
            catalog.mark_partial(self.id);
            let (user, path) = catalog
                .file(self.id)
                .map(|f| (f.user.clone(), f.path.display()))
                .unwrap_or_default();
            drop(catalog);
            tracing::info!(
                event = "partial",
                id = self.id,
                user = %user,
                path = %path,
                size = self.live.size.load(Ordering::Relaxed),
                "session ended without CLOSE; file kept partial"
            );
        }
    }
}

/// An open file being read back from the spool.
pub struct ReadHandle {
    file: Arc<File>,
    size: u64,
}

impl ReadHandle {
    pub(super) fn open(
        spool: &Arc<Spool>,
        user: &str,
        path: &VPath,
    ) -> Result<ReadHandle, FsError> {
        let c = spool.lock();
        let id = match c.lookup(user, path) {
            Some(Node::File(id)) => id,
            Some(Node::Dir) => {
                return Err(FsError::new(
                    FsErrorKind::IsADirectory,
                    format!("{}: is a directory", path.display()),
                ));
            }
            None => {
                return Err(FsError::new(
                    FsErrorKind::NotFound,
                    format!("{}: no such file", path.display()),
                ));
            }
        };
        let state = c.file(id).map(|f| f.state);
        let disk = match state {
            Some(FileState::Receiving | FileState::Partial) => spool.partial_path(id),
            Some(FileState::Delivered) | None => {
                return Err(FsError::new(
                    FsErrorKind::PermissionDenied,
                    format!(
                        "{}: delivered to the bucket; read it from S3",
                        path.display()
                    ),
                ));
            }
            Some(_) => spool.sealed_path(id),
        };
        // Opened under the catalog lock so that the drain cannot free it in between.
        let file = File::open(disk).map_err(|e| io_error("opening spool file", &e))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(ReadHandle {
            file: Arc::new(file),
            size,
        })
    }

    /// Returns fewer bytes than asked at the end of the file and an empty buffer at EOF.
    pub async fn read_at(&self, offset: u64, len: u32) -> Result<Bytes, FsError> {
        // Past the end (up to u64::MAX from the wire, which pread refuses): end of file.
        if offset >= self.size {
            return Ok(Bytes::new());
        }
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; usize_from_u32(len)];
            let mut filled = 0;
            while filled < buf.len() {
                // An offset from the wire near u64::MAX reads as the end of the file.
                let Some(at) = offset.checked_add(u64_from_usize(filled)) else {
                    break;
                };
                match file.read_at(&mut buf[filled..], at) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(filled);
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(|e| FsError::new(FsErrorKind::Failure, format!("read task failed: {e}")))?
        .map_err(|e| io_error("reading spool file", &e))
    }

    /// The file's length when it was opened for reading, in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}
