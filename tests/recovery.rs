//! What a damaged or lost journal costs: no acknowledged file. Through the spool's public API:
//! damaged frames are skipped and alarmed, sealed files the journal lost are sealed again from
//! the identity they carry, and what cannot be explained is quarantined, never deleted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::as_conversions,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    reason = "a test panics on what it did not expect, and may cast what it made itself"
)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::spool::put;
use sftpgw::spool::{FileState, OpenMode, Spool, SpoolOptions, VPath};

fn open(dir: &Path) -> Arc<Spool> {
    Spool::open(SpoolOptions::unlimited(dir.to_owned())).expect("open spool")
}

fn vp(s: &str) -> VPath {
    VPath::resolve(s).expect("path")
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// (user, path, size, state) of every file, sorted.
fn files(spool: &Spool) -> Vec<(String, String, u64, String)> {
    let mut v: Vec<_> = spool
        .files()
        .into_iter()
        .map(|f| (f.user, f.path.display(), f.size, format!("{:?}", f.state)))
        .collect();
    v.sort();
    v
}

fn sealed_bytes(spool: &Spool, user: &str, path: &str) -> Vec<u8> {
    let f = spool
        .files()
        .into_iter()
        .find(|f| f.user == user && f.path == vp(path) && f.state == FileState::Sealed)
        .unwrap_or_else(|| panic!("{user}:{path} is not sealed"));
    std::fs::read(spool.sealed_path(f.id)).expect("sealed bytes")
}

/// Six files sealed (as while S3 is unreachable), in a directory and at the root.
async fn six_sealed_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let spool = open(dir);
    spool.mkdir("alice", &vp("/scans")).await.expect("mkdir");
    let mut expected = Vec::new();
    for i in 0..6u8 {
        let path = if i % 2 == 0 {
            format!("/scans/page-{i}.pdf")
        } else {
            format!("/log-{i}.txt")
        };
        let data = pattern(1000 + usize::from(i) * 777, i);
        put(&spool, "alice", &path, &data).await;
        expected.push((path, data));
    }
    expected
}

#[tokio::test]
async fn a_flipped_byte_anywhere_in_the_journal_loses_no_sealed_file_and_raises_an_alarm() {
    let tmp = tempfile::tempdir().expect("tmp");
    let original = tmp.path().join("original");
    let expected = six_sealed_files(&original).await;
    let journal = std::fs::read(original.join("journal")).expect("journal");
    // The case is a third of the way in; try offsets all over the journal.
    let step = (journal.len() / 40).max(1);
    let mut offsets: Vec<usize> = (12..journal.len()).step_by(step).collect();
    offsets.push(journal.len() / 3);
    for offset in offsets {
        let dir = tmp.path().join(format!("flip-{offset}"));
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(&original)
            .arg(&dir)
            .status()
            .expect("cp");
        assert!(status.success());
        let mut damaged = journal.clone();
        damaged[offset] ^= 0x5A;
        std::fs::write(dir.join("journal"), &damaged).expect("damage the journal");

        let spool = open(&dir);
        for (path, data) in &expected {
            assert_eq!(
                &sealed_bytes(&spool, "alice", path),
                data,
                "flip at {offset}: {path} lost"
            );
        }
        assert_eq!(spool.quarantined_count(), 0, "flip at {offset}");
        // A flip in the last frame is a torn tail (the last record was then never
        // acknowledged, and here is rebuilt from the identity); anywhere else it is damage.
        let alarms = spool.alarms();
        let last_frame = offset + 64 >= journal.len();
        if !last_frame {
            assert!(
                alarms.iter().any(|a| a.contains("journal was damaged")),
                "flip at {offset}: {alarms:?}"
            );
            let copies: Vec<_> = std::fs::read_dir(&dir)
                .expect("dir")
                .filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("journal.damaged-")
                })
                .collect();
            assert_eq!(copies.len(), 1, "flip at {offset}");
            assert_eq!(std::fs::read(copies[0].path()).expect("copy"), damaged);
        }
        drop(spool);
        // Restarting again finds the same files, and the alarm lasts until the copy is gone.
        let spool = open(&dir);
        assert_eq!(spool.files().len(), expected.len(), "flip at {offset}");
        if !last_frame {
            assert!(!spool.alarms().is_empty());
        }
    }
}

#[tokio::test]
async fn a_lost_journal_rebuilds_every_sealed_file_from_its_identity() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("spool");
    let expected = six_sealed_files(&dir).await;
    {
        // A newer version of one path, and a file of another user.
        let spool = open(&dir);
        put(&spool, "alice", "/log-1.txt", b"version two").await;
        put(&spool, "bob", "/b.bin", b"bob's").await;
    }
    let before = files(&open(&dir));
    std::fs::remove_file(dir.join("journal")).expect("lose the journal");

    let spool = open(&dir);
    let after = files(&spool);
    assert_eq!(
        after, before,
        "the same files, users, paths, sizes and states"
    );
    assert_eq!(sealed_bytes(&spool, "alice", "/log-1.txt"), b"version two");
    for (path, data) in expected.iter().filter(|(p, _)| p != "/log-1.txt") {
        assert_eq!(&sealed_bytes(&spool, "alice", path), data);
    }
    // The directory came back too, and new files get new ids.
    assert!(spool.list_dir("alice", &vp("/scans")).is_ok());
    put(&spool, "alice", "/after.bin", b"after").await;
    assert_eq!(sealed_bytes(&spool, "alice", "/after.bin"), b"after");
    // The older version of /log-1.txt is superseded, not quarantined.
    assert_eq!(spool.quarantined_count(), 0);
}

#[tokio::test]
async fn a_sealed_file_the_journal_cannot_explain_is_quarantined_listed_and_delivered_or_deleted() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("spool");
    drop(open(&dir));
    // Bytes in sealed/ with no journal record and no identity (say, a restored backup).
    std::fs::write(dir.join("sealed/4242"), pattern(5000, 1)).expect("stray");
    std::fs::write(dir.join("sealed/not-an-id"), b"odd").expect("stray");
    let spool = open(&dir);
    assert!(spool.files().is_empty());
    assert_eq!(spool.quarantined_count(), 2);
    assert!(
        spool
            .alarms()
            .iter()
            .any(|a| a.contains("2 file(s) in quarantine")),
        "{:?}",
        spool.alarms()
    );
    let (listed, count) = spool.quarantined(10);
    assert_eq!(count, 2);
    let names: Vec<&str> = listed.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["4242", "not-an-id"]);
    assert_eq!(listed[0].size, 5000);
    assert!(listed[0].identity.is_none());
    assert!(!listed[0].reason.is_empty());
    // Never deleted by a restart.
    drop(spool);
    let spool = open(&dir);
    assert_eq!(spool.quarantined_count(), 2);

    // Without an identity it needs a target; then it is a new sealed upload there.
    assert!(spool.quarantine_deliver("4242", None).await.is_err());
    // Never onto a directory: refused, and the file stays in quarantine.
    spool.mkdir("alice", &vp("/restored")).await.expect("mkdir");
    let onto_dir = spool
        .quarantine_deliver("4242", Some(("alice".into(), vp("/restored"))))
        .await
        .expect_err("a directory is not a file path");
    assert_eq!(
        onto_dir.kind,
        sftpgw::spool::FsErrorKind::IsADirectory,
        "{onto_dir:?}"
    );
    assert_eq!(spool.quarantined_count(), 2);
    assert!(dir.join("quarantine/4242").is_file());
    spool
        .quarantine_deliver("4242", Some(("alice".into(), vp("/restored/4242.bin"))))
        .await
        .expect("deliver");
    assert_eq!(
        sealed_bytes(&spool, "alice", "/restored/4242.bin"),
        pattern(5000, 1)
    );
    spool.quarantine_delete("not-an-id").expect("delete");
    assert!(
        spool.quarantine_delete("../journal").is_err(),
        "names stay inside"
    );
    assert_eq!(spool.quarantined_count(), 0);
    assert!(spool.alarms().is_empty(), "{:?}", spool.alarms());
    drop(spool);
    let spool = open(&dir);
    assert_eq!(
        sealed_bytes(&spool, "alice", "/restored/4242.bin"),
        pattern(5000, 1)
    );
}

#[tokio::test]
async fn a_sealed_file_whose_path_is_now_a_directory_is_quarantined_not_resealed() {
    let tmp = tempfile::tempdir().expect("tmp");
    // A sealed file with its identity (alice:/x.bin), from one spool...
    let first = tmp.path().join("first");
    let spool = open(&first);
    put(&spool, "alice", "/x.bin", &pattern(40_000, 3)).await;
    let id = spool.files()[0].id;
    let sealed = spool.sealed_path(id);
    drop(spool);
    // ...found in the sealed/ folder of a spool whose journal knows /x.bin as a directory (as
    // a journal rewritten around damage may, having lost the file's records).
    let second = tmp.path().join("second");
    let spool = open(&second);
    spool.mkdir("alice", &vp("/x.bin")).await.expect("mkdir");
    drop(spool);
    let status = std::process::Command::new("cp")
        .arg("-a") // keeps the identity's extended attribute
        .arg(&sealed)
        .arg(second.join("sealed").join(id.to_string()))
        .status()
        .expect("cp");
    assert!(status.success());

    let spool = open(&second);
    assert_eq!(spool.quarantined_count(), 1);
    let (listed, _) = spool.quarantined(10);
    assert!(
        listed[0].reason.contains("is a directory now"),
        "{:?}",
        listed[0].reason
    );
    assert!(
        spool.list_dir("alice", &vp("/x.bin")).is_ok(),
        "the directory stays"
    );
}

#[tokio::test]
async fn a_version_dropped_before_a_crash_stays_dropped_though_its_unlink_was_lost() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("spool");
    let spool = open(&dir);
    put(&spool, "alice", "/sup.bin", b"version one").await;
    put(&spool, "alice", "/rm.bin", b"removed later").await;
    // The bytes of both, as a crash would leave them if their unlinks never reached the disk.
    let kept: Vec<(std::path::PathBuf, Vec<u8>)> = spool
        .files()
        .iter()
        .map(|f| {
            let path = spool.sealed_path(f.id);
            let bytes = std::fs::read(&path).expect("sealed bytes");
            (path, bytes)
        })
        .collect();
    put(&spool, "alice", "/sup.bin", b"version two").await;
    spool.remove("alice", &vp("/rm.bin")).await.expect("rm");
    drop(spool);
    for (path, bytes) in &kept {
        std::fs::write(path, bytes).expect("restore the lost unlink");
    }

    let spool = open(&dir);
    let listed = files(&spool);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(sealed_bytes(&spool, "alice", "/sup.bin"), b"version two");
    assert_eq!(
        spool.quarantined_count(),
        0,
        "a dropped version is not quarantined"
    );
    assert!(spool.alarms().is_empty(), "{:?}", spool.alarms());
    for (path, _) in &kept {
        assert!(!path.exists(), "{} left behind", path.display());
    }
}

/// Bytes without a period (unlike `pattern`), so that finding them in the journal means
/// these very bytes are there.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn sealed_id(spool: &Spool, path: &str) -> u64 {
    spool
        .files()
        .into_iter()
        .find(|f| f.path == vp(path))
        .map(|f| f.id)
        .expect("file")
}

#[tokio::test]
async fn a_small_file_sealed_inline_comes_back_from_the_journal_when_a_crash_lost_its_copy() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("spool");
    let small = noise(8 * 1024, 7);
    let large = noise(40 * 1024, 9);
    let (lost, torn, big) = {
        let spool = open(&dir);
        put(&spool, "alice", "/lost.bin", &small).await;
        put(&spool, "alice", "/torn.bin", &small[..5000]).await;
        put(&spool, "alice", "/large.bin", &large).await;
        (
            spool.sealed_path(sealed_id(&spool, "/lost.bin")),
            spool.sealed_path(sealed_id(&spool, "/torn.bin")),
            spool.sealed_path(sealed_id(&spool, "/large.bin")),
        )
    };
    // Small files are sealed with their bytes in the journal; a large one is not.
    let journal = std::fs::read(dir.join("journal")).expect("journal");
    assert!(
        contains(&journal, &small),
        "the small file is in the journal"
    );
    assert!(
        !contains(&journal, &large[..4096]),
        "a file above the inline limit is fsynced by itself, not journalled"
    );
    // A power cut lost the unsynced copies: one is gone, the other is zeros of the same size.
    std::fs::remove_file(&lost).expect("lose a copy");
    std::fs::write(&torn, vec![0u8; 5000]).expect("tear a copy");

    let spool = open(&dir);
    assert_eq!(sealed_bytes(&spool, "alice", "/lost.bin"), small);
    assert_eq!(sealed_bytes(&spool, "alice", "/torn.bin"), &small[..5000]);
    assert_eq!(sealed_bytes(&spool, "alice", "/large.bin"), large);
    assert!(big.exists());
    assert_eq!(spool.quarantined_count(), 0);
    assert!(spool.alarms().is_empty(), "{:?}", spool.alarms());
    drop(spool);
    // The rewritten copies carry their identity again: without the journal they are rebuilt.
    std::fs::remove_file(dir.join("journal")).expect("lose the journal");
    let spool = open(&dir);
    assert_eq!(sealed_bytes(&spool, "alice", "/lost.bin"), small);
    assert_eq!(sealed_bytes(&spool, "alice", "/torn.bin"), &small[..5000]);
    assert_eq!(spool.quarantined_count(), 0);
}

#[tokio::test]
async fn a_small_file_cut_before_its_inline_record_was_durable_is_partial_again_unless_its_bytes_hold()
 {
    for bytes_survived in [true, false] {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("spool");
        let data = pattern(3000, 3);
        let (journal_before_close, sealed) = {
            let spool = open(&dir);
            let h = spool
                .open_write("alice", &vp("/cut.bin"), OpenMode::default())
                .await
                .expect("open");
            h.write_at(0, Bytes::from(data.clone()))
                .await
                .expect("write");
            // The `Opened` record is written (not synced) by the journal's writer thread.
            let mut waited = 0;
            while spool.journal_bytes() <= 12 && waited < 200 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                waited += 1;
            }
            let before = spool.journal_bytes();
            let id = h.id();
            h.close().await.expect("close");
            (before, spool.sealed_path(id))
        };
        // The crash came before the journal's fsync: its tail (the bytes and `Sealed`) is gone,
        // while the rename to sealed/ and the identity reached the disk, the bytes perhaps not.
        let journal = dir.join("journal");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&journal)
            .expect("journal");
        file.set_len(journal_before_close).expect("cut the tail");
        drop(file);
        if !bytes_survived {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&sealed)
                .expect("sealed copy");
            use std::os::unix::fs::FileExt;
            f.write_all_at(&[0u8; 100], 1000).expect("tear the bytes");
        }

        let spool = open(&dir);
        let f = spool
            .files()
            .into_iter()
            .find(|f| f.path == vp("/cut.bin"))
            .expect("the file is known");
        if bytes_survived {
            // Sealed again from its identity: the bytes are exactly what was closed.
            assert_eq!(f.state, FileState::Sealed);
            assert_eq!(sealed_bytes(&spool, "alice", "/cut.bin"), data);
        } else {
            // Never acknowledged, and its bytes do not hash to its identity: partial, as any
            // unacknowledged upload, never sealed with wrong bytes.
            assert_eq!(
                f.state,
                FileState::Partial,
                "bytes_survived = {bytes_survived}"
            );
            assert!(spool.partial_path(f.id).exists());
        }
        assert_eq!(spool.quarantined_count(), 0);
    }
}

#[tokio::test]
async fn a_compaction_drops_inline_bytes_from_the_journal_and_keeps_the_files() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("spool");
    let mut expected = Vec::new();
    {
        let spool = open(&dir);
        for i in 0..20u8 {
            let data = noise(4096 + usize::from(i), u64::from(i));
            put(&spool, "alice", &format!("/f{i}"), &data).await;
            expected.push((format!("/f{i}"), data));
        }
        let grown = spool.journal_bytes();
        spool.set_journal_compaction_threshold(0);
        spool
            .mkdir("alice", &vp("/a"))
            .await
            .expect("asks for a compaction");
        spool
            .mkdir("alice", &vp("/b"))
            .await
            .expect("queued after it");
        assert!(
            spool.journal_bytes() < grown / 4,
            "compacted: {grown} -> {} bytes",
            spool.journal_bytes()
        );
    }
    let journal = std::fs::read(dir.join("journal")).expect("journal");
    for (path, data) in &expected {
        assert!(!contains(&journal, data), "{path}'s bytes left the journal");
    }
    let spool = open(&dir);
    for (path, data) in &expected {
        assert_eq!(&sealed_bytes(&spool, "alice", path), data);
    }
}
