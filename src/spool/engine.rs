//! [`SpoolEngine`]: the one interface through which spool files are written and synced, with
//! an io_uring engine ([`UringEngine`]) and a plain pwrite fallback ([`PwriteEngine`]).
//!
//! Which one runs is decided once, at start ([`SpoolEngine::select`], from `spool.engine`):
//! `auto` probes io_uring and falls back to pwrite with one log line naming the cause (Docker's
//! seccomp profile, `kernel.io_uring_disabled`, a kernel without io_uring, a low memlock limit);
//! `io_uring` refuses to start without it; `pwrite` never tries.
//!
//! Both engines promise the same: `write_at` returns once all bytes are in the file (short
//! writes are continued), and `fsync` covers every write that completed before it was called.
//!
//! The engines write and sync the open files they are handed: they never name a path nor
//! touch the catalog or the journal.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;

use super::pwrite::PwriteEngine;

/// Writes at most this long skip the engine (see [`SpoolEngine::write_at`]).
pub const WRITE_HERE_BYTES_MAX: usize = 16 * 1024;
use super::uring::{ProbeError, UringEngine};

/// `spool.engine`: which engine writes and syncs spool files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineChoice {
    /// io_uring if the kernel allows it, otherwise pwrite (one log line says why).
    #[default]
    Auto,
    /// io_uring or refuse to start.
    IoUring,
    /// pwrite/fsync from a thread pool, never io_uring.
    Pwrite,
}

/// What an fsync must make durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncScope {
    /// The data and what is needed to read it back (`fdatasync`).
    Data,
    /// Data and all metadata (`fsync`).
    All,
}

/// The engine that writes and syncs spool files.
#[derive(Debug)]
pub enum SpoolEngine {
    /// Blocking pwrite and fsync on tokio's blocking threads.
    Pwrite(PwriteEngine),
    /// One io_uring ring served by its own thread.
    IoUring(UringEngine),
}

/// Why no engine could be started.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// io_uring was asked for and the kernel cannot give it.
    #[error("spool.engine is \"io_uring\" but io_uring is unavailable: {0}")]
    IoUringUnavailable(#[source] ProbeError),
}

impl SpoolEngine {
    /// The engine for `choice`; see the module documentation.
    pub fn select(choice: EngineChoice) -> Result<SpoolEngine, EngineError> {
        Self::select_with(choice, UringEngine::start)
    }

    /// [`SpoolEngine::select`] with the io_uring probe given, so that tests can make it fail.
    fn select_with(
        choice: EngineChoice,
        start_uring: impl FnOnce() -> Result<UringEngine, ProbeError>,
    ) -> Result<SpoolEngine, EngineError> {
        match choice {
            EngineChoice::Pwrite => {
                tracing::info!("spool engine: pwrite (configured)");
                Ok(SpoolEngine::Pwrite(PwriteEngine))
            }
            EngineChoice::IoUring => match start_uring() {
                Ok(engine) => {
                    tracing::info!("spool engine: io_uring (configured)");
                    Ok(SpoolEngine::IoUring(engine))
                }
                Err(err) => Err(EngineError::IoUringUnavailable(err)),
            },
            EngineChoice::Auto => match start_uring() {
                Ok(engine) => {
                    tracing::info!("spool engine: io_uring");
                    Ok(SpoolEngine::IoUring(engine))
                }
                Err(err) => {
                    tracing::warn!("spool engine: pwrite, because io_uring is unavailable: {err}");
                    Ok(SpoolEngine::Pwrite(PwriteEngine))
                }
            },
        }
    }

    /// "io_uring" or "pwrite", as `sftpgw status` shows it.
    pub fn name(&self) -> &'static str {
        match self {
            SpoolEngine::Pwrite(_) => "pwrite",
            SpoolEngine::IoUring(_) => "io_uring",
        }
    }

    /// Writes all of `data` at `offset` of `file`.
    ///
    /// A write of at most [`WRITE_HERE_BYTES_MAX`] is a `pwrite` on the calling thread: into
    /// the page cache it takes a few microseconds, where the hops to the ring thread (or the
    /// blocking pool) and back take tens. It returns complete, so a sync asked for after it
    /// covers it as it covers the engine's own writes. (It may wait while the kernel throttles
    /// dirty pages, as the engines' writes do, only on the caller's thread.)
    pub async fn write_at(&self, file: &Arc<File>, offset: u64, data: Bytes) -> io::Result<()> {
        if data.len() <= WRITE_HERE_BYTES_MAX {
            return file.write_all_at(&data, offset);
        }
        match self {
            SpoolEngine::Pwrite(engine) => engine.write_at(file, offset, data).await,
            SpoolEngine::IoUring(engine) => engine.write_at(file, offset, data).await,
        }
    }

    /// Makes every write to `file` that completed before this call durable.
    pub async fn fsync(&self, file: &Arc<File>, scope: SyncScope) -> io::Result<()> {
        match self {
            SpoolEngine::Pwrite(engine) => engine.fsync(file, scope).await,
            SpoolEngine::IoUring(engine) => engine.fsync(file, scope).await,
        }
    }
}

#[cfg(test)]
mod bench;
#[cfg(test)]
pub(super) mod tests;
