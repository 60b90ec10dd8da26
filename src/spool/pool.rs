//! Empty spool files created ahead of OPEN, so that a new upload takes one instead of waiting
//! for a file creation on its request path.
//!
//! Why: on the ext4 spool of the benchmark machine a file created right after a journal
//! `fdatasync` takes 0.5–1 ms (the new inode waits on the metadata the commit just wrote),
//! against 0.03 ms without the fsync in between; a CLOSE is exactly such an fsync, so every
//! small file paid it at its OPEN (bench/results/round9). Taking a pooled file costs one
//! rename (about 0.03 ms) into `partial/<id>`.
//!
//! The pool is a directory `pool/` of empty files named by a counter (behind the process id
//! and the pool's number in the process) and one thread that keeps
//! [`POOL_FILES_COUNT`] of them open and ready. Ids are still given at OPEN, so they keep the
//! order of OPENs (recovery relies on it). A pooled file holds no data and no journal record:
//! whatever a crash leaves in `pool/` is deleted at the next start. When the pool is empty
//! (a burst, or creating files fails), OPEN creates its file itself, as before.
//!
//! It owns `pool/` only; what it creates holds no data and no record.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

/// Empty files kept ready (each holds an open descriptor).
pub const POOL_FILES_COUNT: usize = 16;
const _: () = assert!(POOL_FILES_COUNT >= 2);
/// How long the pool's thread waits after a failed creation (a full disk, no descriptors).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A created, empty, open spool file and where it is.
pub(super) struct PooledFile {
    pub path: PathBuf,
    pub file: File,
}

/// The pool: see the module documentation.
pub(super) struct FilePool {
    ready: Mutex<Receiver<PooledFile>>,
}

impl FilePool {
    /// Empties `dir` (leftovers of an earlier run) and starts the thread that fills it.
    pub fn start(dir: &Path) -> io::Result<FilePool> {
        fs::create_dir_all(dir)?;
        for entry in fs::read_dir(dir)? {
            // The thread of a pool dropped a moment ago (a spool closed and opened again in
            // one process) may be removing its last file right now.
            match fs::remove_file(entry?.path()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        // Names of this pool's own, so that such a thread never touches one of them.
        static POOLS_STARTED: AtomicU64 = AtomicU64::new(0);
        let instance = format!(
            "{}.{}",
            std::process::id(),
            POOLS_STARTED.fetch_add(1, Ordering::Relaxed)
        );
        // The thread holds one more, created, while it waits to hand it over.
        let (sender, ready) = sync_channel(POOL_FILES_COUNT - 1);
        let dir = dir.to_owned();
        std::thread::Builder::new()
            .name("spool-pool".into())
            .spawn(move || fill(&dir, &instance, &sender))?;
        Ok(FilePool {
            ready: Mutex::new(ready),
        })
    }

    /// A ready file, if the pool has one; never waits for one to be created.
    pub fn take(&self) -> Option<PooledFile> {
        self.ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_recv()
            .ok()
    }
}

/// Creates files in `dir` (named `instance.n`) and hands them over until the pool is dropped.
fn fill(dir: &Path, instance: &str, sender: &SyncSender<PooledFile>) {
    let mut warned = false;
    for n in 0u64.. {
        let path = dir.join(format!("{instance}.{n}"));
        let created = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        let file = match created {
            Ok(file) => file,
            Err(e) => {
                if !warned {
                    tracing::warn!(dir = %dir.display(), error = %e,
                        "cannot create spool files ahead; uploads create their own");
                    warned = true;
                }
                std::thread::sleep(RETRY_AFTER);
                continue;
            }
        };
        warned = false;
        if let Err(unsent) = sender.send(PooledFile { path, file }) {
            // The spool is gone.
            let _ = fs::remove_file(&unsent.0.path);
            return;
        }
    }
}
