//! Behaviour of the journal file: replay, repair, group commit, durability, compaction.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use super::replay::{self, ReplayEnd};
use super::*;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    submitter: u32,
    seq: u32,
    note: String,
}

fn entry(submitter: u32, seq: u32) -> Entry {
    // Varying lengths so that frames do not line up on any regular boundary.
    Entry {
        submitter,
        seq,
        note: "x".repeat((seq as usize * 7) % 23),
    }
}

fn entries(count: u32) -> Vec<Entry> {
    (0..count).map(|seq| entry(0, seq)).collect()
}

fn journal_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("journal")
}

fn open(path: &Path) -> (Journal<Entry>, Vec<Entry>) {
    Journal::open(path).expect("journal opens")
}

/// Writes `records` durably into a fresh journal at `path` and closes it.
fn write_journal(path: &Path, records: &[Entry]) {
    let (journal, replayed) = open(path);
    assert!(replayed.is_empty());
    journal
        .submit(records.to_vec(), true)
        .wait_blocking()
        .expect("durable submit");
}

/// The records in the file as another process would read them, without repairing anything.
fn read_back(path: &Path) -> Vec<Entry> {
    let bytes = fs::read(path).expect("journal readable");
    let replayed = replay::decode_all::<Entry>(&bytes).expect("valid header");
    assert_eq!(replayed.end, ReplayEnd::Clean, "file has a torn tail");
    replayed.records
}

#[test]
fn records_round_trip_through_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let (journal, replayed) = open(&path);
    assert!(replayed.is_empty());
    let first = entries(10);
    journal
        .submit(first[..4].to_vec(), true)
        .wait_blocking()
        .expect("durable");
    // A non-durable submission is written by the time its ticket resolves.
    journal
        .submit(first[4..].to_vec(), false)
        .wait_blocking()
        .expect("written");
    drop(journal);
    let (journal, replayed) = open(&path);
    assert_eq!(replayed, first);
    journal
        .submit(vec![entry(1, 1)], true)
        .wait_blocking()
        .expect("durable");
    drop(journal);
    let (_journal, replayed) = open(&path);
    assert_eq!(replayed.len(), 11);
    assert_eq!(replayed[10], entry(1, 1));
}

#[test]
fn journal_truncated_at_every_byte_offset_replays_a_prefix_and_never_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let original = dir.path().join("original");
    let records = entries(25);
    write_journal(&original, &records);
    let bytes = fs::read(&original).expect("read journal");
    let copy = dir.path().join("copy");
    for cut in 0..=bytes.len() {
        fs::write(&copy, &bytes[..cut]).expect("write truncated copy");
        let (journal, replayed) = open(&copy);
        assert!(records.starts_with(&replayed), "cut at {cut}: not a prefix");
        // Every frame that is entirely before the cut survives.
        let whole = replay::decode_all::<Entry>(&bytes[..cut]).expect("prefix of ours");
        assert_eq!(replayed, whole.records, "cut at {cut}");
        let appended = entry(9, cut as u32);
        journal
            .submit(vec![appended.clone()], true)
            .wait_blocking()
            .expect("append after repair");
        drop(journal);
        let (_journal, again) = open(&copy);
        let mut expected = replayed;
        expected.push(appended);
        assert_eq!(again, expected, "cut at {cut}: append after reopen");
    }
}

#[test]
fn a_corrupted_frame_in_the_middle_is_skipped_and_every_later_record_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let records = entries(10);
    write_journal(&path, &records);
    let mut bytes = fs::read(&path).expect("read journal");
    // Find where frames 5 and 6 start by encoding the first records alone.
    let offset_of_frame = |n: usize| {
        let scratch = dir.path().join(format!("scratch-{n}"));
        write_journal(&scratch, &records[..n]);
        fs::metadata(&scratch).expect("stat").len() as usize
    };
    let (frame_5, frame_6) = (offset_of_frame(5), offset_of_frame(6));
    bytes[frame_5 + frame::FRAME_HEADER_BYTES + 1] ^= 0x40;
    fs::write(&path, &bytes).expect("write corrupted journal");

    let (journal, replayed) = open(&path);
    let mut expected = records.clone();
    expected.remove(5);
    assert_eq!(replayed, expected, "only the damaged record is lost");
    let report = journal.damage().expect("damage reported").clone();
    assert_eq!(report.ranges.len(), 1);
    assert_eq!(
        (report.ranges[0].offset, report.ranges[0].len),
        (frame_5, frame_6 - frame_5)
    );
    assert_eq!(report.records_kept, 9);
    assert_eq!(
        fs::read(&report.copy).expect("copy kept"),
        bytes,
        "the copy is the damaged file byte for byte"
    );
    // The journal itself was rewritten without the damage, and appends go on.
    assert_eq!(read_back(&path), expected);
    journal
        .submit(vec![entry(1, 0)], true)
        .wait_blocking()
        .expect("append");
    drop(journal);
    let (journal, again) = open(&path);
    assert_eq!(again.len(), 10);
    assert!(journal.damage().is_none(), "a repaired journal is clean");
}

#[test]
fn file_that_is_not_a_journal_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    fs::write(&path, b"[sftp]\nlisten = \"0.0.0.0:22\"\n").expect("write");
    let error = Journal::<Entry>::open(&path).err().expect("refused");
    assert!(matches!(error, JournalError::NotAJournal { .. }), "{error}");
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
    assert_eq!(
        fs::read(&path).expect("read"),
        b"[sftp]\nlisten = \"0.0.0.0:22\"\n"
    );
}

#[test]
fn journal_of_another_version_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let mut bytes = replay::file_header().to_vec();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    fs::write(&path, &bytes).expect("write");
    let error = Journal::<Entry>::open(&path).err().expect("refused");
    assert!(
        matches!(error, JournalError::UnsupportedVersion { found: 2, .. }),
        "{error}"
    );
}

#[test]
fn missing_directory_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("no-such-dir").join("journal");
    let error = Journal::<Entry>::open(&path).err().expect("no directory");
    assert!(matches!(error, JournalError::Io { .. }), "{error}");
    assert!(error.to_string().contains("no-such-dir"), "{error}");
}

#[test]
fn leftover_compaction_file_is_removed_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    write_journal(&path, &entries(3));
    let temp = dir.path().join("journal.tmp");
    fs::write(&temp, b"half a snapshot").expect("write");
    let (_journal, replayed) = open(&path);
    assert_eq!(replayed, entries(3));
    assert!(!temp.exists());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn garbage_files_never_panic_open(
        garbage in proptest::collection::vec(any::<u8>(), 0..300),
        with_header in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = journal_path(&dir);
        let mut bytes = if with_header { replay::file_header().to_vec() } else { Vec::new() };
        bytes.extend_from_slice(&garbage);
        fs::write(&path, &bytes).expect("write");
        if let Ok((journal, _)) = Journal::<Entry>::open(&path) {
            // Whatever was kept, the journal must accept appends that replay afterwards.
            prop_assert!(journal.submit(vec![entry(1, 1)], true).wait_blocking().is_ok());
            drop(journal);
            let (_journal, replayed) = open(&path);
            prop_assert_eq!(replayed.last(), Some(&entry(1, 1)));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_of_many_concurrent_submitters_keeps_each_submitters_order() {
    const SUBMITTERS: u32 = 8;
    const PER_SUBMITTER: u32 = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let (journal, _) = Journal::<Entry>::open(&path).expect("open");
    let journal = Arc::new(journal);
    let mut tasks = Vec::new();
    for submitter in 0..SUBMITTERS {
        let journal = Arc::clone(&journal);
        tasks.push(tokio::spawn(async move {
            let mut tickets = Vec::new();
            for seq in 0..PER_SUBMITTER {
                // Alternate waiting and not waiting, durable and not, to mix batch shapes.
                let ticket = journal.submit(vec![entry(submitter, seq)], seq % 3 != 0);
                if seq % 5 == 0 {
                    ticket.wait().await.expect("committed");
                } else {
                    tickets.push(ticket);
                }
            }
            for ticket in tickets {
                ticket.wait().await.expect("committed");
            }
        }));
    }
    for task in tasks {
        task.await.expect("submitter task");
    }
    drop(journal);
    let replayed = read_back(&path);
    assert_eq!(replayed.len(), (SUBMITTERS * PER_SUBMITTER) as usize);
    for submitter in 0..SUBMITTERS {
        let seqs: Vec<u32> = replayed
            .iter()
            .filter(|e| e.submitter == submitter)
            .map(|e| e.seq)
            .collect();
        assert_eq!(
            seqs,
            (0..PER_SUBMITTER).collect::<Vec<_>>(),
            "submitter {submitter}"
        );
    }
}

/// A `before_sync` hook that reports each fsync on `entered` and then waits for a token on
/// the returned sender (or fails it with EIO if the token is `false`).
fn gated_sync() -> (FaultHook, mpsc::Receiver<()>, mpsc::Sender<bool>) {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<bool>();
    let release_rx = Mutex::new(release_rx);
    let hook: FaultHook = Box::new(move || {
        let _ = entered_tx.send(());
        let ok = release_rx.lock().expect("gate").recv().unwrap_or(true);
        if ok {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(nix::libc::EIO))
        }
    });
    (hook, entered, release)
}

fn open_gated(path: &Path) -> (Journal<Entry>, mpsc::Receiver<()>, mpsc::Sender<bool>) {
    let (hook, entered, release) = gated_sync();
    let faults = Faults {
        before_sync: Some(hook),
        ..Faults::default()
    };
    let (journal, _) = Journal::open_with_faults(path, faults).expect("open");
    (journal, entered, release)
}

const SETTLE: Duration = Duration::from_millis(100);

#[tokio::test]
async fn durable_ticket_resolves_only_after_fsync_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let (journal, entered, release) = open_gated(&path);
    let ticket = journal.submit(vec![entry(0, 0)], true).wait();
    tokio::pin!(ticket);
    entered
        .recv_timeout(Duration::from_secs(5))
        .expect("writer reached fsync");
    // The writer sits just before fsync: the ticket must still be pending.
    assert!(
        tokio::time::timeout(SETTLE, &mut ticket).await.is_err(),
        "acked before fsync"
    );
    release.send(true).expect("release fsync");
    ticket.await.expect("durable after fsync");
    // What the ticket acknowledged is in the file, as another reader sees it.
    assert_eq!(read_back(&path), vec![entry(0, 0)]);
}

#[test]
fn non_durable_submissions_never_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let syncs = Arc::new(Mutex::new(0u32));
    let counter = Arc::clone(&syncs);
    let hook: FaultHook = Box::new(move || {
        *counter.lock().expect("counter") += 1;
        Ok(())
    });
    let faults = Faults {
        before_sync: Some(hook),
        ..Faults::default()
    };
    let (journal, _) = Journal::<Entry>::open_with_faults(&path, faults).expect("open");
    for seq in 0..20 {
        journal
            .submit(vec![entry(0, seq)], false)
            .wait_blocking()
            .expect("written");
    }
    assert_eq!(*syncs.lock().expect("counter"), 0);
    journal
        .submit(Vec::new(), true)
        .wait_blocking()
        .expect("barrier");
    assert_eq!(*syncs.lock().expect("counter"), 1);
    assert_eq!(read_back(&path).len(), 20);
}

#[test]
fn group_commit_fsyncs_once_for_everything_queued_behind_a_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let (journal, entered, release) = open_gated(&path);
    let first = journal.submit(vec![entry(0, 0)], true);
    entered
        .recv_timeout(Duration::from_secs(5))
        .expect("first fsync");
    // Queued while the writer is inside the first fsync: one group.
    let queued: Vec<Ticket> = (1..=10)
        .map(|seq| journal.submit(vec![entry(0, seq)], true))
        .collect();
    release.send(true).expect("release first");
    first.wait_blocking().expect("first durable");
    entered
        .recv_timeout(Duration::from_secs(5))
        .expect("second fsync");
    release.send(true).expect("release second");
    for ticket in queued {
        ticket.wait_blocking().expect("durable");
    }
    assert!(
        entered.try_recv().is_err(),
        "more than one fsync for the queued group"
    );
    assert_eq!(read_back(&path).len(), 11);
}

#[test]
fn failed_fsync_poisons_the_journal_and_nothing_later_is_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let (journal, entered, release) = open_gated(&path);
    let ticket = journal.submit(vec![entry(0, 0)], true);
    entered
        .recv_timeout(Duration::from_secs(5))
        .expect("fsync reached");
    release.send(false).expect("fail the fsync");
    let error = ticket
        .wait_blocking()
        .expect_err("failed fsync must not be acked");
    assert!(
        matches!(
            error,
            JournalError::Io {
                op: "cannot fsync",
                ..
            }
        ),
        "{error}"
    );
    assert!(journal.is_poisoned());
    // Neither a retry nor a later durable or non-durable submission succeeds.
    for durable in [true, false] {
        let error = journal
            .submit(vec![entry(0, 1)], durable)
            .wait_blocking()
            .expect_err("poisoned");
        assert!(matches!(error, JournalError::Poisoned { .. }), "{error}");
    }
    let error = journal
        .compact(vec![entry(0, 2)])
        .wait_blocking()
        .expect_err("poisoned");
    assert!(matches!(error, JournalError::Poisoned { .. }), "{error}");
    assert!(entered.try_recv().is_err(), "fsync was retried");
}

#[test]
fn failed_write_poisons_the_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let hook: FaultHook = Box::new(|| Err(io::Error::from_raw_os_error(nix::libc::ENOSPC)));
    let faults = Faults {
        before_write: Some(hook),
        ..Faults::default()
    };
    let (journal, _) = Journal::<Entry>::open_with_faults(&path, faults).expect("open");
    let error = journal
        .submit(vec![entry(0, 0)], false)
        .wait_blocking()
        .expect_err("ENOSPC");
    assert!(error.to_string().contains("No space left"), "{error}");
    assert!(journal.is_poisoned());
}

#[test]
fn oversized_record_is_refused_without_poisoning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let (journal, _) = open(&path);
    let huge = Entry {
        submitter: 0,
        seq: 0,
        note: "x".repeat(crate::limits::RECORD_BYTES_MAX as usize),
    };
    let error = journal
        .submit(vec![entry(0, 0), huge], true)
        .wait_blocking()
        .expect_err("too big");
    assert!(
        matches!(error, JournalError::RecordTooLarge { .. }),
        "{error}"
    );
    // None of that submission was written, and the journal still works.
    journal
        .submit(vec![entry(0, 1)], true)
        .wait_blocking()
        .expect("still usable");
    assert_eq!(read_back(&path), vec![entry(0, 1)]);
}

#[test]
fn compaction_then_append_then_reopen_gives_snapshot_and_appended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let (journal, _) = open(&path);
    journal
        .submit(entries(50), true)
        .wait_blocking()
        .expect("durable");
    let big = journal.size_bytes();
    // Submitted before compact() without waiting: superseded by the snapshot, yet acknowledged.
    let superseded = journal.submit(vec![entry(7, 7)], true);
    let snapshot = vec![entry(1, 0), entry(1, 1)];
    let compacted = journal.compact(snapshot.clone());
    let after = journal.submit(vec![entry(2, 0)], true);
    superseded
        .wait_blocking()
        .expect("superseded ticket resolves ok");
    compacted.wait_blocking().expect("compacted");
    after.wait_blocking().expect("appended after snapshot");
    assert!(
        journal.size_bytes() < big,
        "{} >= {big}",
        journal.size_bytes()
    );
    assert_eq!(
        journal.size_bytes(),
        fs::metadata(&path).expect("stat").len()
    );
    drop(journal);
    let (_journal, replayed) = open(&path);
    assert_eq!(replayed, vec![entry(1, 0), entry(1, 1), entry(2, 0)]);
    assert!(!dir.path().join("journal.tmp").exists());
}

#[test]
fn a_compaction_that_cannot_write_its_snapshot_is_postponed_never_poisons() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    // The disk is full for the snapshot's fsync (the third fsync of this journal's life: the
    // first append's, then the one that makes what was queued before the compaction durable).
    let syncs = Arc::new(Mutex::new(0u32));
    let counter = syncs.clone();
    let hook: FaultHook = Box::new(move || {
        let mut n = counter.lock().expect("counter");
        *n += 1;
        if *n == 3 {
            Err(io::Error::from_raw_os_error(nix::libc::ENOSPC))
        } else {
            Ok(())
        }
    });
    let faults = Faults {
        before_sync: Some(hook),
        ..Faults::default()
    };
    let (journal, _) = Journal::<Entry>::open_with_faults(&path, faults).expect("open");
    journal
        .submit(entries(20), true)
        .wait_blocking()
        .expect("durable");
    // Queued before the failing compaction: must not be lost with it.
    let before = journal.submit(vec![entry(7, 7)], false);
    let compacted = journal.compact(vec![entry(1, 0)]);
    let after = journal.submit(vec![entry(2, 0)], true);
    assert!(
        compacted.wait_blocking().is_err(),
        "the compaction reports its failure"
    );
    before.wait_blocking().expect("appended anyway");
    after.wait_blocking().expect("the journal goes on");
    assert!(!journal.is_poisoned());
    assert!(
        !dir.path().join("journal.tmp").exists(),
        "no half snapshot left"
    );
    drop(journal);
    let (_journal, replayed) = open(&path);
    let mut expected = entries(20);
    expected.extend([entry(7, 7), entry(2, 0)]);
    assert_eq!(replayed, expected);
}

#[test]
fn size_bytes_tracks_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    let (journal, _) = open(&path);
    assert_eq!(journal.size_bytes(), replay::FILE_HEADER_BYTES as u64);
    journal
        .submit(entries(5), false)
        .wait_blocking()
        .expect("written");
    assert_eq!(
        journal.size_bytes(),
        fs::metadata(&path).expect("stat").len()
    );
    assert!(journal.size_bytes() > replay::FILE_HEADER_BYTES as u64);
}

#[test]
fn dropping_the_journal_finishes_the_queue_and_joins_its_writer_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = journal_path(&dir);
    // The hook lives in the writer thread's state: when that is gone, so is `alive`.
    let alive = Arc::new(());
    let held = Arc::clone(&alive);
    let hook: FaultHook = Box::new(move || {
        let _ = &held;
        Ok(())
    });
    let faults = Faults {
        before_sync: Some(hook),
        ..Faults::default()
    };
    let (journal, _) = Journal::<Entry>::open_with_faults(&path, faults).expect("open");
    let tickets: Vec<Ticket> = (0..100)
        .map(|seq| journal.submit(vec![entry(0, seq)], true))
        .collect();
    drop(journal);
    assert_eq!(
        Arc::strong_count(&alive),
        1,
        "writer state outlived the journal"
    );
    for ticket in tickets {
        ticket
            .wait_blocking()
            .expect("queued work finished before the writer stopped");
    }
    assert_eq!(read_back(&path).len(), 100);
}

#[test]
fn journal_file_is_preallocated_ahead_of_its_end() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("tempdir");
    // Only meaningful where the file system supports preallocation.
    let probe = fs::File::create(dir.path().join("probe")).expect("probe");
    let flags = nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
    if nix::fcntl::fallocate(&probe, flags, 0, 4096).is_err() {
        eprintln!("skipped: no fallocate on this file system");
        return;
    }
    let path = journal_path(&dir);
    let (journal, _) = open(&path);
    journal
        .submit(entries(5), true)
        .wait_blocking()
        .expect("durable");
    let metadata = fs::metadata(&path).expect("stat");
    assert_eq!(
        metadata.len(),
        journal.size_bytes(),
        "preallocation must not change the size"
    );
    assert!(
        metadata.blocks() * 512 >= PREALLOCATION_CHUNK_BYTES,
        "only {} bytes allocated",
        metadata.blocks() * 512
    );
}
