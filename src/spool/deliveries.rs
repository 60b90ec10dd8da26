//! The delivery log: one JSON line per file delivered to S3, kept on the spool after the
//! catalog has forgotten the file (`[spool] delivered_retention`), for `sftpgw report` and for
//! whoever audits the box.
//!
//! Files `deliveries/deliveries-NNNNNNNN.jsonl` in the spool directory, appended in order; a file
//! is closed at [`LOG_FILE_BYTES_MAX`] and a new one started, and beyond [`LOG_FILES_COUNT_MAX`]
//! files the oldest is removed, so the log is bounded (64 MiB) and holds the latest few hundred
//! thousand deliveries.
//!
//! A line is written and flushed to disk (fdatasync) *before* the journal records the file as
//! delivered: a crash in between leaves a line for a file the journal still has as uploading,
//! whose upload then finds its object in S3 and writes the line again. So no delivery is ever
//! missing from the log, and a file may appear twice (same id, same key): readers keep the
//! last line of an id ([`read`] does).
//!
//! It owns the files under `deliveries/`; it never reads or changes the catalog or the journal.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

mod index;
use crate::num::u64_from_usize;
use index::PathIndex;

/// A log file is closed at this size and a new one started.
pub const LOG_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Log files kept; the oldest goes when one more is started.
pub const LOG_FILES_COUNT_MAX: usize = 16;

const DIR_NAME: &str = "deliveries";
const FILE_PREFIX: &str = "deliveries-";
const FILE_SUFFIX: &str = ".jsonl";

/// One delivered file, as the log, `sftpgw report` and receipts show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// When HEAD found the object in S3 (RFC 3339, UTC).
    pub delivered_at: String,
    /// Whose file.
    pub user: String,
    /// As the user sees it, `/dir/name`.
    pub path: String,
    /// The bucket it went to.
    pub bucket: String,
    /// Its object key.
    pub key: String,
    /// Its length in bytes.
    pub size: u64,
    /// Hex SHA-256 of the whole file, when the box knew it.
    pub sha256: Option<String>,
    /// The object's ETag as S3 answered it (quotes removed).
    pub etag: Option<String>,
    /// The object's version id, when the bucket has versioning.
    pub version_id: Option<String>,
    /// When the file was sealed (its last write; RFC 3339, UTC).
    pub sealed_at: String,
    /// The box that delivered it (its host name).
    #[serde(rename = "box")]
    pub box_name: String,
    /// The spool's id of the file (two lines with one id are one delivery written twice).
    pub id: u64,
}

/// A unix time as RFC 3339 UTC, to the second.
pub fn rfc3339(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map_or_else(|| unix.to_string(), |t| format!("{t:.0}"))
}

/// The log of one spool directory, open for appending.
pub struct DeliveryLog {
    dir: PathBuf,
    file_bytes_max: u64,
    files_count_max: usize,
    current: Mutex<Current>,
    /// Where each (user, path)'s latest line is, for receipts.
    index: Arc<PathIndex>,
}

struct Current {
    file: File,
    number: u64,
    bytes: u64,
}

impl DeliveryLog {
    /// Opens (creating it if needed) the log under `spool_dir`, with the default bounds.
    pub fn open(spool_dir: &Path) -> io::Result<DeliveryLog> {
        Self::open_bounded(spool_dir, LOG_FILE_BYTES_MAX, LOG_FILES_COUNT_MAX)
    }

    /// [`DeliveryLog::open`] with other bounds (tests).
    pub fn open_bounded(
        spool_dir: &Path,
        file_bytes_max: u64,
        files_count_max: usize,
    ) -> io::Result<DeliveryLog> {
        let dir = spool_dir.join(DIR_NAME);
        if !dir.exists() {
            fs::create_dir_all(&dir)?;
            File::open(spool_dir)?.sync_all()?;
        }
        let files = log_files(&dir)?;
        let number = files.last().map_or(1, |(n, _)| *n);
        let current = open_file(&dir, number)?;
        let index = Arc::new(PathIndex::new(dir.clone(), number));
        let (builder, bytes) = (Arc::clone(&index), current.bytes);
        std::thread::Builder::new()
            .name("delivery-index".into())
            .spawn(move || builder.build(&files, number, bytes))?;
        Ok(DeliveryLog {
            dir,
            file_bytes_max: file_bytes_max.clamp(1, index::FILE_BYTES_INDEXED_MAX),
            files_count_max: files_count_max.max(1),
            current: Mutex::new(current),
            index,
        })
    }

    /// The latest delivery of `path` (`/dir/name`) by `user` that the log still holds: a
    /// receipt. O(log files + lines of the current file), whatever else the log holds; waits
    /// for the index just after the spool opened. Blocking (reads a line or so of the log).
    pub fn latest(&self, user: &str, path: &str) -> io::Result<Option<Delivery>> {
        self.index.latest(user, path)
    }

    /// Appends one line and flushes it to disk. Blocking (a write and an fdatasync): call it
    /// from a blocking thread.
    pub fn append(&self, delivery: &Delivery) -> io::Result<()> {
        let mut line = serde_json::to_vec(delivery).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.bytes > 0 && current.bytes + u64_from_usize(line.len()) > self.file_bytes_max {
            *current = open_file(&self.dir, current.number + 1)?;
            self.remove_oldest_beyond_bound()?;
        }
        let offset = current.bytes;
        current.file.write_all(&line)?;
        current.file.sync_data()?;
        current.bytes += u64_from_usize(line.len());
        self.index
            .appended(current.number, offset, &delivery.user, &delivery.path);
        Ok(())
    }

    fn remove_oldest_beyond_bound(&self) -> io::Result<()> {
        let files = log_files(&self.dir)?;
        let extra = files.len().saturating_sub(self.files_count_max);
        for (_, path) in files.iter().take(extra) {
            fs::remove_file(path)?;
        }
        if let Some((oldest_kept, _)) = files.get(extra) {
            self.index.removed_below(*oldest_kept);
        }
        Ok(())
    }
}

fn file_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{FILE_PREFIX}{number:08}{FILE_SUFFIX}"))
}

/// Opens log file `number` for appending. A line cut by a crash is ended first, so that the
/// next line starts on a line of its own (readers skip the cut one).
fn open_file(dir: &Path, number: u64) -> io::Result<Current> {
    let path = file_path(dir, number);
    let created = !path.exists();
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(&path)?;
    if created {
        // The new name must be durable too: a flushed line is no use in a file that a power
        // cut takes out of its directory.
        File::open(dir)?.sync_all()?;
    }
    let mut bytes = file.metadata()?.len();
    if bytes > 0 {
        use std::io::{Read, Seek, SeekFrom};
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(bytes - 1))?;
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
            bytes += 1;
        }
    }
    Ok(Current {
        file,
        number,
        bytes,
    })
}

/// The log files of `dir`, oldest first.
fn log_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let number = name
            .to_str()
            .and_then(|n| n.strip_prefix(FILE_PREFIX))
            .and_then(|n| n.strip_suffix(FILE_SUFFIX))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(number) = number {
            files.push((number, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// Every delivery in the log under `spool_dir` that `keep` accepts, oldest first, each id once
/// (its last line). Lines that do not parse (a line cut by a crash) are skipped. Reads the log
/// files only: works while the daemon runs or not.
pub fn read(spool_dir: &Path, keep: impl Fn(&Delivery) -> bool) -> io::Result<Vec<Delivery>> {
    let dir = spool_dir.join(DIR_NAME);
    let files = match log_files(&dir) {
        Ok(files) => files,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out: Vec<Delivery> = Vec::new();
    let mut at: HashMap<u64, usize> = HashMap::new();
    for (_, path) in files {
        let file = match File::open(&path) {
            Ok(f) => f,
            // Removed by a rotation since it was listed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in BufReader::new(file).lines() {
            let Ok(d) = serde_json::from_str::<Delivery>(&line?) else {
                continue;
            };
            if !keep(&d) {
                continue;
            }
            match at.get(&d.id) {
                Some(&i) => out[i] = d,
                None => {
                    at.insert(d.id, out.len());
                    out.push(d);
                }
            }
        }
    }
    Ok(out)
}

/// A place in the log: a log file's number and a byte offset in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPosition {
    /// The log file's number (`deliveries/<n>.jsonl`, by creation).
    pub file: u64,
    /// Bytes from that file's start.
    pub offset: u64,
}

/// What [`read_from`] found.
#[derive(Debug, Default)]
pub struct LogChunk {
    /// Whole lines, as written (each ends with a newline); empty when nothing is new.
    pub lines: Vec<u8>,
    /// Where the next read starts.
    pub next: LogPosition,
    /// The position asked for was rotated away: lines between it and `lines` are gone.
    pub skipped: bool,
}

/// The whole lines of the log under `spool_dir` from `at` on: at most `bytes_max` of them
/// (but at least one line if any is there), from one log file. Moves to the next file once
/// `at`'s file is read to its end and a newer one exists (the writer never goes back to a
/// file). A line still being written is left for the next read.
pub fn read_from(spool_dir: &Path, at: LogPosition, bytes_max: usize) -> io::Result<LogChunk> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let dir = spool_dir.join(DIR_NAME);
    let files = match log_files(&dir) {
        Ok(files) => files,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(LogChunk {
                next: at,
                ..LogChunk::default()
            });
        }
        Err(e) => return Err(e),
    };
    let mut at = at;
    let mut skipped = false;
    for (i, (number, path)) in files.iter().enumerate() {
        if *number < at.file {
            continue;
        }
        if *number > at.file {
            // `at`'s file is gone (rotated away) or was finished: start this one.
            skipped |= !(at.file == 0 && at.offset == 0) && i == 0;
            at = LogPosition {
                file: *number,
                offset: 0,
            };
        }
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        file.seek(SeekFrom::Start(at.offset))?;
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() >= bytes_max && buf.contains(&b'\n') {
                break;
            }
        }
        // Whole lines only, and no more than bytes_max of them unless one line is longer.
        let within = &buf[..buf.len().min(bytes_max)];
        let end = within
            .iter()
            .rposition(|b| *b == b'\n')
            .or_else(|| buf.iter().position(|b| *b == b'\n'))
            .map_or(0, |last| last + 1);
        if end > 0 {
            buf.truncate(end);
            let next = LogPosition {
                file: at.file,
                offset: at.offset + u64_from_usize(end),
            };
            return Ok(LogChunk {
                lines: buf,
                next,
                skipped,
            });
        }
        // Nothing new here: go on only if a newer file exists.
    }
    Ok(LogChunk {
        lines: Vec::new(),
        next: at,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: u64, user: &str) -> Delivery {
        Delivery {
            delivered_at: rfc3339(1_765_000_000 + id),
            user: user.into(),
            path: format!("/f{id}.bin"),
            bucket: "uploads".into(),
            key: format!("site/{user}/f{id}.bin"),
            size: id * 10,
            sha256: Some("ab".repeat(32)),
            etag: Some("0cc175b9c0f1b6a831c399e269772661".into()),
            version_id: None,
            sealed_at: rfc3339(1_765_000_000),
            box_name: "box-1".into(),
            id,
        }
    }

    /// A log of 100 deliveries (ids 1000..1100), three lines a file, at most `files_max` files;
    /// and the length of one line.
    fn log_of_100_lines(files_max: usize) -> (tempfile::TempDir, u64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let line = serde_json::to_vec(&delivery(1000, "alice"))
            .expect("json")
            .len() as u64
            + 1;
        let log = DeliveryLog::open_bounded(dir.path(), 3 * line, files_max).expect("open");
        for id in 1000..1100 {
            log.append(&delivery(id, "alice")).expect("append");
        }
        (dir, line)
    }

    /// Reads the whole log through `read_from` in chunks of `bytes_max`.
    fn read_all_from(dir: &Path, mut at: LogPosition, bytes_max: usize) -> (Vec<u8>, bool) {
        let (mut out, mut skipped) = (Vec::new(), false);
        loop {
            let chunk = read_from(dir, at, bytes_max).expect("read_from");
            skipped |= chunk.skipped;
            if chunk.lines.is_empty() {
                assert_eq!(chunk.next, at, "nothing read, nothing moved");
                return (out, skipped);
            }
            assert!(chunk.lines.ends_with(b"\n"), "whole lines only");
            out.extend_from_slice(&chunk.lines);
            at = chunk.next;
        }
    }

    #[test]
    fn read_from_returns_every_line_once_in_chunks_across_files() {
        // 34 files.
        let (dir, line) = log_of_100_lines(100);
        let line = usize::try_from(line).expect("small");
        let mut whole = Vec::new();
        for (_, path) in log_files(&dir.path().join(DIR_NAME)).expect("files") {
            whole.extend(fs::read(path).expect("read"));
        }
        for bytes_max in [1, line - 1, line, 2 * line + 5, 1 << 20] {
            let (got, skipped) = read_all_from(dir.path(), LogPosition::default(), bytes_max);
            assert!(
                got == whole,
                "chunks of {bytes_max} bytes: the log byte for byte"
            );
            assert!(!skipped);
        }
        // A line still being written (no newline yet) is left for later.
        let (_, end) = {
            let mut at = LogPosition::default();
            loop {
                let c = read_from(dir.path(), at, 1 << 20).expect("read");
                if c.lines.is_empty() {
                    break ((), at);
                }
                at = c.next;
            }
        };
        let last = log_files(&dir.path().join(DIR_NAME))
            .expect("files")
            .pop()
            .expect("a file");
        OpenOptions::new()
            .append(true)
            .open(&last.1)
            .expect("open")
            .write_all(b"{\"cut")
            .expect("write");
        assert!(
            read_from(dir.path(), end, 1 << 20)
                .expect("read")
                .lines
                .is_empty()
        );
    }

    #[test]
    fn read_from_a_position_rotated_away_says_so_and_goes_on_from_the_oldest_file() {
        let (dir, line) = log_of_100_lines(4);
        let files = log_files(&dir.path().join(DIR_NAME)).expect("files");
        let (got, skipped) = read_all_from(
            dir.path(),
            LogPosition {
                file: 1,
                offset: line,
            },
            1 << 20,
        );
        assert!(skipped, "file 1 is gone");
        let mut newest = Vec::new();
        for (_, path) in files {
            newest.extend(fs::read(path).expect("read"));
        }
        assert!(got == newest, "the four files kept, whole");
    }

    #[test]
    fn deliveries_come_back_in_order_each_id_once_across_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = DeliveryLog::open(dir.path()).expect("open");
        for id in 1..=3 {
            log.append(&delivery(id, "alice")).expect("append");
        }
        drop(log);
        // Written again after a crash between the line and the journal: one delivery.
        let log = DeliveryLog::open(dir.path()).expect("reopen");
        let mut again = delivery(2, "alice");
        again.delivered_at = rfc3339(1_765_000_100);
        log.append(&again).expect("append");
        log.append(&delivery(4, "bob")).expect("append");
        let all = read(dir.path(), |_| true).expect("read");
        let ids: Vec<u64> = all.iter().map(|d| d.id).collect();
        assert_eq!(ids, vec![1, 2, 3, 4]);
        assert_eq!(all[1], again, "the last line of an id wins");
        let bob = read(dir.path(), |d| d.user == "bob").expect("read");
        assert_eq!(bob, vec![delivery(4, "bob")]);
    }

    #[test]
    fn the_log_is_bounded_and_keeps_the_newest_files() {
        let (dir, line) = log_of_100_lines(4);
        let files = log_files(&dir.path().join(DIR_NAME)).expect("files");
        assert_eq!(files.len(), 4, "{files:?}");
        let total: u64 = files
            .iter()
            .map(|(_, p)| fs::metadata(p).expect("meta").len())
            .sum();
        assert!(total <= 4 * 3 * line, "{total} bytes");
        let kept: Vec<u64> = read(dir.path(), |_| true)
            .expect("read")
            .iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(kept.last(), Some(&1099), "the newest is kept");
        assert!(kept.windows(2).all(|w| w[0] + 1 == w[1]), "{kept:?}");
    }

    #[test]
    fn a_line_cut_by_a_crash_is_skipped_and_the_next_starts_on_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = DeliveryLog::open(dir.path()).expect("open");
        log.append(&delivery(1, "alice")).expect("append");
        drop(log);
        let path = file_path(&dir.path().join(DIR_NAME), 1);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"delivered_at\":\"2026-").expect("cut line");
        drop(f);
        let log = DeliveryLog::open(dir.path()).expect("reopen");
        log.append(&delivery(2, "alice")).expect("append");
        let ids: Vec<u64> = read(dir.path(), |_| true)
            .expect("read")
            .iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(ids, vec![1, 2]);
    }

    #[test]
    fn the_latest_line_of_a_users_path_is_found_across_rotation_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let line = serde_json::to_vec(&delivery(1000, "alice"))
            .expect("json")
            .len() as u64
            + 1;
        let log = DeliveryLog::open_bounded(dir.path(), 3 * line, 4).expect("open");
        let at = |id: u64, user: &str, path: &str| {
            let mut d = delivery(id, user);
            d.path = path.into();
            d
        };
        log.append(&at(1, "alice", "/a.bin")).expect("append");
        log.append(&at(2, "bob", "/a.bin")).expect("append");
        for id in 3..8 {
            log.append(&at(id, "alice", &format!("/other{id}")))
                .expect("append");
        }
        // Delivered again (overwritten and uploaded anew), in a later file.
        log.append(&at(8, "alice", "/a.bin")).expect("append");
        let latest = |log: &DeliveryLog, user: &str, path: &str| {
            log.latest(user, path).expect("latest").map(|d| d.id)
        };
        assert_eq!(latest(&log, "alice", "/a.bin"), Some(8), "the newest line");
        assert_eq!(latest(&log, "bob", "/a.bin"), Some(2), "each user's own");
        assert_eq!(latest(&log, "alice", "/other5"), Some(5));
        assert_eq!(latest(&log, "alice", "/nothing"), None);
        assert_eq!(latest(&log, "carol", "/a.bin"), None);
        drop(log);
        // Rebuilt from the files on open; a line appended after is found too.
        let log = DeliveryLog::open_bounded(dir.path(), 3 * line, 4).expect("reopen");
        assert_eq!(latest(&log, "alice", "/a.bin"), Some(8));
        assert_eq!(latest(&log, "bob", "/a.bin"), Some(2));
        log.append(&at(9, "bob", "/a.bin")).expect("append");
        assert_eq!(latest(&log, "bob", "/a.bin"), Some(9));
        // Enough lines to rotate every old file away: their receipts go with them, and the
        // index forgets their lines.
        for id in 10..30 {
            log.append(&at(id, "carol", &format!("/c{id}")))
                .expect("append");
        }
        assert_eq!(latest(&log, "alice", "/a.bin"), None, "rotated away");
        assert_eq!(latest(&log, "carol", "/c29"), Some(29));
        assert!(log.index.entries_count() <= 4 * 3, "bounded like the log");
    }

    #[test]
    fn a_log_of_a_hundred_thousand_lines_is_indexed_on_open_and_each_path_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_dir = dir.path().join(DIR_NAME);
        fs::create_dir_all(&log_dir).expect("mkdir");
        // Written as the log would hold them (16 files), without 10^5 fsyncs.
        let lines_count = 100_000u64;
        let per_file = lines_count / LOG_FILES_COUNT_MAX as u64;
        for file in 0..LOG_FILES_COUNT_MAX as u64 {
            let mut out = Vec::new();
            for id in file * per_file..(file + 1) * per_file {
                let mut d = delivery(id, if id % 2 == 0 { "alice" } else { "bob" });
                d.path = format!("/dir{}/file{id}.bin", id % 100);
                out.extend(serde_json::to_vec(&d).expect("json"));
                out.push(b'\n');
            }
            assert!((out.len() as u64) < LOG_FILE_BYTES_MAX);
            fs::write(file_path(&log_dir, file + 1), out).expect("write");
        }
        let log = DeliveryLog::open(dir.path()).expect("open");
        for id in [0, 1, 4_999, 50_000, 77_777, 99_999] {
            let user = if id % 2 == 0 { "alice" } else { "bob" };
            let path = format!("/dir{}/file{id}.bin", id % 100);
            let found = log.latest(user, &path).expect("latest");
            assert_eq!(found.map(|d| d.id), Some(id), "{user}:{path}");
            let other = if id % 2 == 0 { "bob" } else { "alice" };
            assert_eq!(log.latest(other, &path).expect("latest"), None);
        }
        assert_eq!(log.index.entries_count(), 100_000);
    }

    #[test]
    fn times_are_rfc3339_utc_to_the_second() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_765_054_800), "2025-12-06T21:00:00Z");
    }
}
