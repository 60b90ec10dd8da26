//! Where in the delivery log the latest line of each (user, path) is: what a receipt
//! (`.sftpgw/receipts/<path>.json`) is read from without scanning the log.
//!
//! One `u64` per log line: the high 42 bits of a keyed hash of (user, path), the
//! low [`OFFSET_BITS`] bits the line's offset in its file (a log file never passes 4 MiB, so
//! every line starts below 2^22). Per log file kept, one vector: in file order while the file
//! is written, sorted once it is closed, so a lookup is a binary search per closed file and a
//! short scan of the current one. The index is bounded by the log (16 files of 4 MiB: at most
//! about 270 000 lines of 250 bytes or more, 2.2 MB) and lives in memory only: it is rebuilt
//! from the log when the spool opens, on a thread of its own so that start-up does not wait
//! for it; a lookup meanwhile waits (at most the time to read 64 MiB).
//!
//! A hash names a candidate only: the line is read back and its user and path compared, so
//! collisions cost a read, never a wrong receipt.
//!
//! It only reads the log files; writing them is `deliveries.rs`'s.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use serde::Deserialize;

use super::{Delivery, LOG_FILE_BYTES_MAX, file_path};
use crate::num::u64_from_usize;

/// Bits of an entry that hold the line's offset in its file.
const OFFSET_BITS: u32 = 22;
const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;

/// Every line of a log file starts below its size bound, so below 2^OFFSET_BITS.
pub(super) const FILE_BYTES_INDEXED_MAX: u64 = 1 << OFFSET_BITS;
const _: () = assert!(LOG_FILE_BYTES_MAX <= FILE_BYTES_INDEXED_MAX);

/// The index of one spool's delivery log.
pub(super) struct PathIndex {
    dir: PathBuf,
    hasher: RandomState,
    state: Mutex<State>,
    /// Signalled when the lines written before the spool opened are indexed.
    built: Condvar,
}

struct State {
    /// Entries per log file number.
    files: BTreeMap<u64, Vec<u64>>,
    /// The file being appended to: its entries are in file order, every other file's sorted.
    current: u64,
    /// Files below this number were rotated away (the builder must not bring them back).
    oldest_kept: u64,
    /// False until the builder has indexed what was on disk at open.
    built: bool,
}

/// The fields of a log line the index needs (the rest is read only for a hit).
#[derive(Deserialize)]
struct Keyed<'a> {
    #[serde(borrow)]
    user: Cow<'a, str>,
    #[serde(borrow)]
    path: Cow<'a, str>,
}

impl PathIndex {
    /// An index of the log in `dir` whose file `current` is `current_bytes` long now; call
    /// [`PathIndex::build`] (on a thread of its own) to index what is already there.
    pub(super) fn new(dir: PathBuf, current: u64) -> PathIndex {
        PathIndex {
            dir,
            hasher: RandomState::new(),
            state: Mutex::new(State {
                files: BTreeMap::new(),
                current,
                oldest_kept: 0,
                built: false,
            }),
            built: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn hash(&self, user: &str, path: &str) -> u64 {
        self.hasher.hash_one((user, path)) >> OFFSET_BITS
    }

    fn entry(&self, user: &str, path: &str, offset: u64) -> Option<u64> {
        (offset <= OFFSET_MASK).then(|| (self.hash(user, path) << OFFSET_BITS) | offset)
    }

    /// Indexes the log files `files` (number, path; oldest first) up to `current_bytes` of the
    /// current one: the lines written before the spool opened. Lines appended since are
    /// indexed by [`PathIndex::appended`] already and stay after these.
    pub(super) fn build(&self, files: &[(u64, PathBuf)], current: u64, current_bytes: u64) {
        for (number, path) in files {
            let limit = if *number == current {
                current_bytes
            } else {
                u64::MAX
            };
            // A file that cannot be read gives no receipts; the log's appends go on.
            let entries = match self.scan(path, limit) {
                Ok(entries) => entries,
                Err(e) => {
                    if e.kind() != io::ErrorKind::NotFound {
                        tracing::warn!(file = %path.display(), error = %e,
                            "delivery log file not indexed: its receipts are not shown");
                    }
                    continue;
                }
            };
            let mut state = self.lock();
            if *number < state.oldest_kept {
                continue;
            }
            let appended = state.files.remove(number).unwrap_or_default();
            let mut all = entries;
            all.extend(appended);
            if *number != state.current {
                all.sort_unstable();
            }
            state.files.insert(*number, all);
        }
        self.lock().built = true;
        self.built.notify_all();
    }

    /// The entries of the lines of one log file below `limit` bytes, in file order.
    fn scan(&self, path: &Path, limit: u64) -> io::Result<Vec<u64>> {
        let mut reader = BufReader::new(File::open(path)?);
        let mut entries = Vec::new();
        let mut offset = 0u64;
        let mut line = Vec::new();
        while offset < limit {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            if let Ok(k) = serde_json::from_slice::<Keyed<'_>>(&line)
                && let Some(entry) = self.entry(&k.user, &k.path, offset)
            {
                entries.push(entry);
            }
            offset += u64_from_usize(n);
        }
        Ok(entries)
    }

    /// Records a line just appended at `offset` of file `number`.
    pub(super) fn appended(&self, number: u64, offset: u64, user: &str, path: &str) {
        let Some(entry) = self.entry(user, path, offset) else {
            return;
        };
        let mut state = self.lock();
        if number != state.current {
            // The previous file is closed: sorted from now on.
            let previous = state.current;
            if let Some(entries) = state.files.get_mut(&previous) {
                entries.sort_unstable();
            }
            state.current = number;
        }
        state.files.entry(number).or_default().push(entry);
    }

    /// Forgets the files below `number` (rotated away).
    pub(super) fn removed_below(&self, number: u64) {
        let mut state = self.lock();
        state.oldest_kept = state.oldest_kept.max(number);
        state.files = state.files.split_off(&number);
    }

    /// The latest delivery of `path` (as the user sees it, `/dir/name`) by `user` in the log,
    /// if the log still holds one. Waits until the index is built. Blocking (reads the log).
    pub(super) fn latest(&self, user: &str, path: &str) -> io::Result<Option<Delivery>> {
        let hash = self.hash(user, path);
        let candidates: Vec<(u64, u64)> = {
            let mut state = self.lock();
            while !state.built {
                state = self
                    .built
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            let mut found = Vec::new();
            for (&number, entries) in state.files.iter().rev() {
                let of_hash = |e: &&u64| **e >> OFFSET_BITS == hash;
                if number == state.current {
                    found.extend(
                        entries
                            .iter()
                            .rev()
                            .filter(of_hash)
                            .map(|e| (number, e & OFFSET_MASK)),
                    );
                } else {
                    let start = entries.partition_point(|e| *e >> OFFSET_BITS < hash);
                    let end = entries.partition_point(|e| *e >> OFFSET_BITS <= hash);
                    found.extend(
                        entries[start..end]
                            .iter()
                            .rev()
                            .map(|e| (number, e & OFFSET_MASK)),
                    );
                }
            }
            found
        };
        // Newest first: the first line that really is this user's path is the receipt.
        for (number, offset) in candidates {
            let Some(delivery) = read_line_at(&file_path(&self.dir, number), offset)? else {
                continue;
            };
            if delivery.user == user && delivery.path == path {
                return Ok(Some(delivery));
            }
        }
        Ok(None)
    }

    /// Lines indexed (tests).
    #[cfg(test)]
    pub(super) fn entries_count(&self) -> usize {
        self.lock().files.values().map(Vec::len).sum()
    }
}

/// The delivery on the line at `offset` of `path`; `None` if the file is gone (rotated away
/// since the lookup) or the line does not parse.
fn read_line_at(path: &Path, offset: u64) -> io::Result<Option<Delivery>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(offset))?;
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    Ok(serde_json::from_slice(&line).ok())
}
