//! [`PwriteEngine`]: the fallback spool engine. Every write is one `pwrite` loop
//! (`write_all_at`) and every sync one `fsync`/`fdatasync`, each on tokio's blocking pool.
//! It works wherever the daemon runs (containers, old kernels, io_uring switched off).
//!
//! Like every engine it writes only the open files it is handed (see `engine.rs`).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;

use super::engine::SyncScope;

/// Writes and syncs with plain system calls on the blocking pool.
#[derive(Debug, Default)]
pub struct PwriteEngine;

impl PwriteEngine {
    /// Writes all of `data` at `offset` (a short `pwrite` continues where it stopped).
    pub async fn write_at(&self, file: &Arc<File>, offset: u64, data: Bytes) -> io::Result<()> {
        let file = file.clone();
        tokio::task::spawn_blocking(move || file.write_all_at(&data, offset))
            .await
            .map_err(task_failed)?
    }

    /// Makes the writes that completed before this call durable.
    pub async fn fsync(&self, file: &Arc<File>, scope: SyncScope) -> io::Result<()> {
        let file = file.clone();
        tokio::task::spawn_blocking(move || match scope {
            SyncScope::Data => file.sync_data(),
            SyncScope::All => file.sync_all(),
        })
        .await
        .map_err(task_failed)?
    }
}

fn task_failed(err: tokio::task::JoinError) -> io::Error {
    io::Error::other(format!("spool I/O task failed: {err}"))
}
