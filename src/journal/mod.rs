//! The journal: an append-only log of framed records, the source of truth for every file's
//! state. Generic over the record type, which the spool defines
//! ([`crate::spool::catalog::Record`]); records are encoded with postcard.
//!
//! # On-disk format
//!
//! ```text
//! file   = header frame*
//! header = b"SFTPGWJ\0" | version: u32 LE            (12 bytes, version 1)
//! frame  = len: u32 LE | crc32c(len bytes ‖ payload): u32 LE | payload (len bytes, postcard)
//! ```
//!
//! `len` is at most [`crate::limits::RECORD_BYTES_MAX`]; it is checked before anything is
//! allocated. A frame that is short, oversized, fails its checksum, or does not decode to
//! exactly one record is bad. A bad frame with no good frame after it is a torn tail: it was
//! never acknowledged, and [`Journal::open`] truncates the file to the last good frame so that
//! appends continue cleanly. A bad frame followed by good ones is damage: replay skips to the
//! next good frame and keeps every record after it; [`Journal::open`] keeps a copy of the file
//! as it was (`journal.damaged-<unix seconds>`), rewrites the journal without the damaged
//! ranges, logs each one with its offset, and reports them ([`Journal::damage`]) so that the
//! spool can raise an alarm.
//! A file that does not start with the magic, or has another version, is refused, never
//! truncated. A file holding only a prefix of the header (a torn creation) is recreated empty.
//!
//! # Durability
//!
//! [`Journal::submit`] only enqueues; a single writer thread commits in groups and resolves
//! each [`Ticket`] after the write, and after `fdatasync` returned Ok if the submission was
//! durable. After any I/O error the journal is poisoned and every later ticket fails.
//! [`Journal::compact`] replaces the contents with a snapshot: `syncfs` of the journal's file
//! system first (what the dropped records made durable, such as small files sealed inline,
//! must be on disk by itself), then temporary file `<path>.tmp`, fsync, rename, directory
//! fsync; a leftover temporary file is deleted at open.
//!
//! Files: [`frame`] (one frame), [`replay`] (header and decoding an image), `log` (the file and
//! its writer thread).
//!
//! # Dependencies
//!
//! A leaf over [`crate::limits`] and [`crate::num`]: the journal owns its file and the frame
//! format, and knows nothing of what its records mean. It must not use `spool`, `sftp`, `drain`
//! or `config` (`tests/architecture.rs` checks it); the spool drives it, never the reverse.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod frame;
mod log;
pub mod replay;

pub use log::{
    DamageReport, FaultHook, Faults, Frames, Journal, PREALLOCATION_CHUNK_BYTES,
    SUBMISSIONS_QUEUED_COUNT_MAX, Ticket,
};

/// What can go wrong with the journal. Cloneable: one failed group commit fails every ticket
/// in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// A system call on a journal file (or its snapshot, copy or directory) failed.
    #[error("journal {}: {op}: {error}", path.display())]
    Io {
        /// The file or directory the call was on.
        path: PathBuf,
        /// What was being done, as a phrase for the message ("cannot fsync").
        op: &'static str,
        /// The error of the call, shared by every ticket of the failed group commit.
        error: Arc<io::Error>,
    },
    /// The file does not start with [`replay::MAGIC`]: it is left untouched.
    #[error("{} is not an sftpgw journal (bad magic); refusing to touch it", path.display())]
    NotAJournal {
        /// The file that was opened.
        path: PathBuf,
    },
    /// A journal of a format version other than [`replay::VERSION`]: it is left untouched.
    #[error("journal {}: format version {found} is not supported (this build reads {})", path.display(), replay::VERSION)]
    UnsupportedVersion {
        /// The file that was opened.
        path: PathBuf,
        /// The version its header holds.
        found: u32,
    },
    /// A record encodes to more than [`crate::limits::RECORD_BYTES_MAX`]; nothing of its
    /// submission was written.
    #[error(
        "journal record of {bytes} bytes exceeds the limit of {} bytes",
        crate::limits::RECORD_BYTES_MAX
    )]
    RecordTooLarge {
        /// The encoded size of the record.
        bytes: usize,
    },
    /// postcard could not encode a record.
    #[error("cannot encode a journal record: {message}")]
    Encode {
        /// postcard's error, as text.
        message: String,
    },
    /// An earlier I/O error poisoned the journal: nothing later is acknowledged.
    #[error("journal {} refuses writes after an earlier failure: {first}", path.display())]
    Poisoned {
        /// The journal file.
        path: PathBuf,
        /// The error that poisoned it.
        first: Box<JournalError>,
    },
    /// The journal's writer is gone (the journal is being dropped, or its thread stopped)
    /// before it answered: the submission is not known to be written.
    #[error("journal {} is closed", path.display())]
    Closed {
        /// The journal file.
        path: PathBuf,
    },
}

impl JournalError {
    fn io(path: &Path, op: &'static str, error: io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            op,
            error: Arc::new(error),
        }
    }
}

#[cfg(test)]
mod tests;
