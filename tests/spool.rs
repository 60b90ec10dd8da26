//! The spool's durability and namespace semantics, through its public API.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::as_conversions,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    reason = "a test panics on what it did not expect, and may cast what it made itself"
)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use sftpgw::spool::{FileState, FsErrorKind, OpenMode, Spool, SpoolOptions, VPath};

fn open(dir: &std::path::Path, ttl: Duration, reserve_bytes: u64) -> Arc<Spool> {
    Spool::open(SpoolOptions {
        dir: dir.to_owned(),
        partial_ttl: ttl,
        reserve_bytes,
        hash_bytes_max: u64::MAX,
        high_watermark_percent: 100,
        low_watermark_percent: 100,
        max_file_size: u64::MAX,
        delivered_retention: Default::default(),
    })
    .expect("open spool")
}

fn vp(s: &str) -> VPath {
    VPath::resolve(s).expect("path")
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success());
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn close_is_acknowledged_only_after_the_file_is_sealed_and_journalled() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("spool");
    let spool = open(&dir, Duration::from_secs(3600), 0);
    let h = spool
        .open_write(
            "u",
            &vp("f.bin"),
            OpenMode {
                truncate: true,
                exclusive: false,
            },
        )
        .await
        .expect("open");
    h.write_at(0, Bytes::from(pattern(100_000, 1)))
        .await
        .expect("write");
    h.close().await.expect("close");
    // The moment CLOSE is acknowledged, what is on disk already holds the sealed file and its
    // journal record: a copy taken now (as a crash would leave it) replays to `sealed`.
    let snapshot = tmp.path().join("after-ack");
    copy_dir(&dir, &snapshot);
    let reopened = open(&snapshot, Duration::from_secs(3600), 0);
    let e = reopened.stat("u", &vp("f.bin")).expect("stat");
    assert_eq!(e.state, Some(FileState::Sealed));
    assert_eq!(e.size, 100_000);
    let r = reopened.open_read("u", &vp("f.bin")).await.expect("read");
    assert_eq!(
        r.read_at(0, 200_000).await.expect("read").to_vec(),
        pattern(100_000, 1)
    );
}

#[tokio::test]
async fn writes_are_accepted_at_any_offset_and_in_any_order() {
    let tmp = tempfile::tempdir().expect("tmp");
    let spool = open(tmp.path(), Duration::from_secs(3600), 0);
    let content = pattern(1 << 20, 9);
    let mut chunks: Vec<(usize, &[u8])> = content
        .chunks(32 * 1024 + 7)
        .scan(0, |off, c| {
            let at = *off;
            *off += c.len();
            Some((at, c))
        })
        .collect();
    chunks.shuffle(&mut rand::rngs::StdRng::seed_from_u64(42));
    let h = spool
        .open_write("u", &vp("shuffled"), OpenMode::default())
        .await
        .expect("open");
    for (at, c) in chunks {
        h.write_at(at as u64, Bytes::copy_from_slice(c))
            .await
            .expect("write");
    }
    assert_eq!(h.size(), content.len() as u64);
    h.close().await.expect("close");
    let r = spool.open_read("u", &vp("shuffled")).await.expect("read");
    assert!(r.read_at(0, 2 << 20).await.expect("read").to_vec() == content);
}

#[tokio::test]
async fn a_session_that_dies_before_close_leaves_the_file_partial_and_resumable() {
    let tmp = tempfile::tempdir().expect("tmp");
    let spool = open(tmp.path(), Duration::from_secs(3600), 0);
    let h = spool
        .open_write(
            "u",
            &vp("p"),
            OpenMode {
                truncate: true,
                exclusive: false,
            },
        )
        .await
        .expect("open");
    h.write_at(0, Bytes::from(pattern(1000, 3)))
        .await
        .expect("write");
    drop(h);
    assert_eq!(
        spool.stat("u", &vp("p")).expect("stat").state,
        Some(FileState::Partial)
    );
    // Reopened without TRUNC (OpenSSH `reput`): the bytes so far are kept.
    let h = spool
        .open_write("u", &vp("p"), OpenMode::default())
        .await
        .expect("reopen");
    assert_eq!(h.size(), 1000);
    h.write_at(1000, Bytes::from(pattern(500, 4)))
        .await
        .expect("write");
    h.close().await.expect("close");
    let e = spool.stat("u", &vp("p")).expect("stat");
    assert_eq!((e.state, e.size), (Some(FileState::Sealed), 1500));
}

#[tokio::test]
async fn partial_files_are_removed_after_their_ttl_and_survive_a_restart_before_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    {
        let spool = open(tmp.path(), Duration::from_secs(1), 0);
        let h = spool
            .open_write("u", &vp("p"), OpenMode::default())
            .await
            .expect("open");
        h.write_at(0, Bytes::from_static(b"abc"))
            .await
            .expect("write");
        drop(h);
        assert_eq!(spool.expire_partials().await, 0, "not expired yet");
    }
    let spool = open(tmp.path(), Duration::from_secs(1), 0);
    assert_eq!(
        spool.stat("u", &vp("p")).expect("stat").state,
        Some(FileState::Partial)
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(spool.expire_partials().await, 1);
    assert_eq!(
        spool.stat("u", &vp("p")).expect_err("gone").kind,
        FsErrorKind::NotFound
    );
    assert_eq!(
        std::fs::read_dir(tmp.path().join("partial"))
            .expect("dir")
            .count(),
        0
    );
}

#[tokio::test]
async fn namespace_mkdir_rmdir_rename_and_remove_follow_posix_expectations() {
    let tmp = tempfile::tempdir().expect("tmp");
    let spool = open(tmp.path(), Duration::from_secs(3600), 0);
    let w = |p: &'static str| {
        let spool = spool.clone();
        async move {
            let h = spool.open_write("u", &vp(p), OpenMode::default()).await?;
            h.write_at(0, Bytes::from_static(b"x")).await?;
            h.close().await
        }
    };
    assert_eq!(
        w("nodir/f").await.expect_err("no parent").kind,
        FsErrorKind::NotFound
    );
    spool.mkdir("u", &vp("d")).await.expect("mkdir");
    assert_eq!(
        spool.mkdir("u", &vp("d")).await.expect_err("exists").kind,
        FsErrorKind::AlreadyExists
    );
    w("d/f").await.expect("write");
    w("g").await.expect("write");
    assert_eq!(
        spool
            .rmdir("u", &vp("d"))
            .await
            .expect_err("not empty")
            .kind,
        FsErrorKind::DirectoryNotEmpty
    );
    assert_eq!(
        spool
            .rename("u", &vp("g"), &vp("d/f"), false)
            .await
            .expect_err("exists")
            .kind,
        FsErrorKind::AlreadyExists
    );
    spool
        .rename("u", &vp("g"), &vp("d/f"), true)
        .await
        .expect("posix rename overwrites");
    spool
        .rename("u", &vp("d"), &vp("e"), false)
        .await
        .expect("directory rename");
    let names: Vec<String> = spool
        .list_dir("u", &vp("e"))
        .expect("ls")
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec!["f".to_owned()]);
    assert!(spool.stat("u", &vp("d")).is_err());
    spool.remove("u", &vp("e/f")).await.expect("rm");
    spool.rmdir("u", &vp("e")).await.expect("rmdir");
    assert!(spool.list_dir("u", &VPath::root()).expect("ls").is_empty());
    assert!(
        spool
            .list_dir("other", &VPath::root())
            .expect("ls")
            .is_empty(),
        "users do not see each other"
    );
    // Everything above is journalled: a restart shows the same namespace.
    drop(spool);
    let spool = open(tmp.path(), Duration::from_secs(3600), 0);
    assert!(spool.list_dir("u", &VPath::root()).expect("ls").is_empty());
    assert_eq!(
        std::fs::read_dir(tmp.path().join("sealed"))
            .expect("dir")
            .count(),
        0,
        "removed files are freed"
    );
}

/// A small tmpfs as the spool's filesystem (needs root; skipped with a message otherwise).
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(size_mib: u64) -> Option<SmallFs> {
        let dir = tempfile::tempdir().expect("tmp").keep();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            Some(SmallFs(dir))
        } else {
            eprintln!("SKIPPED: cannot mount a tmpfs here (not root?)");
            None
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_spool_refuses_with_no_space_and_keeps_earlier_files_intact() {
    let Some(fs) = SmallFs::mount(24) else { return };
    let spool = open(&fs.0, Duration::from_secs(3600), 4 << 20);
    let first = pattern(2 << 20, 5);
    let h = spool
        .open_write("u", &vp("first"), OpenMode::default())
        .await
        .expect("open");
    h.write_at(0, Bytes::from(first.clone()))
        .await
        .expect("write");
    h.close().await.expect("close");

    let h = spool
        .open_write("u", &vp("huge"), OpenMode::default())
        .await
        .expect("open");
    let chunk = Bytes::from(vec![7u8; 256 * 1024]);
    let mut offset = 0u64;
    let err = loop {
        match h.write_at(offset, chunk.clone()).await {
            Ok(()) => offset += chunk.len() as u64,
            Err(e) => break e,
        }
        assert!(offset < 64 << 20, "never ran out of space");
    };
    assert_eq!(err.kind, FsErrorKind::NoSpace);
    assert_eq!(err.to_string(), "No space left on device");
    drop(h);
    // The earlier, acknowledged file is intact, and the journal still takes records.
    let r = spool.open_read("u", &vp("first")).await.expect("read");
    assert!(r.read_at(0, 4 << 20).await.expect("read").to_vec() == first);
    spool
        .remove("u", &vp("huge"))
        .await
        .expect("rm frees space");
    let h = spool
        .open_write("u", &vp("after"), OpenMode::default())
        .await
        .expect("open");
    h.write_at(0, Bytes::from_static(b"ok"))
        .await
        .expect("write after freeing");
    h.close().await.expect("close");
    drop(spool);
    let spool = open(&fs.0, Duration::from_secs(3600), 4 << 20);
    assert_eq!(
        spool.stat("u", &vp("first")).expect("stat").state,
        Some(FileState::Sealed)
    );
    assert_eq!(
        spool.stat("u", &vp("after")).expect("stat").state,
        Some(FileState::Sealed)
    );
}

#[tokio::test]
async fn in_order_files_are_hashed_up_to_the_limit_and_marked_append_only() {
    let tmp = tempfile::tempdir().expect("tmp");
    // Sizes in KiB, all above the inline limit (32 KiB) but "tiny": a file sealed inline is
    // hashed at its seal whatever the limit and however it was written.
    const K: usize = 1024;
    let spool = Spool::open(SpoolOptions {
        dir: tmp.path().to_owned(),
        partial_ttl: Duration::from_secs(3600),
        reserve_bytes: 0,
        hash_bytes_max: 100 * K as u64,
        high_watermark_percent: 100,
        low_watermark_percent: 100,
        max_file_size: u64::MAX,
        delivered_retention: Default::default(),
    })
    .expect("open spool");
    // (name, writes as (offset, len) in KiB): small in order, big in order, big with a
    // rewrite, tiny with a rewrite.
    let cases: [(&str, &[(usize, usize)]); 4] = [
        ("small", &[(0, 60), (60, 40)]),
        ("big", &[(0, 60), (60, 60), (120, 60)]),
        ("rewritten", &[(0, 60), (60, 60), (10, 5)]),
        ("tiny", &[(0, 6), (6, 6), (1, 2)]),
    ];
    let content = pattern(200 * K, 3);
    for (name, writes) in cases {
        let h = spool
            .open_write("u", &vp(name), OpenMode::default())
            .await
            .expect("open");
        for &(at, len) in writes {
            let data = Bytes::copy_from_slice(&content[at * K..(at + len) * K]);
            h.write_at((at * K) as u64, data).await.expect("write");
        }
        h.close().await.expect("close");
    }
    let file = |name: &str| {
        spool
            .files()
            .into_iter()
            .find(|f| f.path.as_str() == name)
            .expect("file")
    };
    use sha2::Digest;
    let small = file("small");
    let want: [u8; 32] = sha2::Sha256::digest(&content[..100 * K]).into();
    assert_eq!((small.sha256, small.appended_only), (Some(want), true));
    let big = file("big");
    assert_eq!(
        (big.sha256, big.appended_only),
        (None, true),
        "longer than the limit: not hashed, still known to be append-only"
    );
    let rewritten = file("rewritten");
    assert_eq!((rewritten.sha256, rewritten.appended_only), (None, false));
    let tiny = file("tiny");
    let want: [u8; 32] = sha2::Sha256::digest(&content[..12 * K]).into();
    assert_eq!(tiny.sha256, Some(want), "sealed inline: hashed as stored");

    // The distinction survives a restart (replay of SealedAppended).
    drop(spool);
    let spool = open(tmp.path(), Duration::from_secs(3600), 0);
    let big = spool
        .files()
        .into_iter()
        .find(|f| f.path.as_str() == "big")
        .expect("big");
    assert_eq!(
        (big.sha256, big.appended_only, big.size),
        (None, true, 180 * K as u64)
    );
}

#[tokio::test]
async fn new_uploads_take_files_created_ahead_and_a_restart_clears_what_was_left() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pool = tmp.path().join("pool");
    let ready = || std::fs::read_dir(&pool).map_or(0, |d| d.count());
    let spool = open(tmp.path(), Duration::from_secs(3600), 0);
    let mut waited = 0;
    while ready() < 16 && waited < 500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    assert_eq!(ready(), 16, "the pool fills up to its size");
    let mut ids = Vec::new();
    for i in 0..40u8 {
        let h = spool
            .open_write("u", &vp(&format!("/f{i}")), OpenMode::default())
            .await
            .expect("open");
        ids.push(h.id());
        h.write_at(0, Bytes::from(pattern(100, i)))
            .await
            .expect("write");
        h.close().await.expect("close");
    }
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted, "ids keep the order of OPENs");
    for (i, id) in ids.iter().enumerate() {
        let bytes = std::fs::read(spool.sealed_path(*id)).expect("sealed");
        assert_eq!(bytes, pattern(100, i as u8));
    }
    let partial: Vec<_> = std::fs::read_dir(tmp.path().join("partial"))
        .expect("partial")
        .collect();
    assert!(partial.is_empty(), "pooled files are not in partial/");
    drop(spool);
    std::fs::write(pool.join("999999"), b"left by a crash").expect("stray");
    let spool = open(tmp.path(), Duration::from_secs(3600), 0);
    assert!(
        !pool.join("999999").exists(),
        "a restart empties the pool before filling it"
    );
    assert_eq!(spool.files().len(), 40);
}

#[test]
fn uploads_are_refused_from_the_high_watermark_until_the_fill_is_below_the_low_one() {
    use sftpgw::spool::watermark_refuses;
    // (refusing before, used %, refusing after) with high 90 %, low 80 %.
    for (before, used, after) in [
        (false, 0, false),
        (false, 89, false),
        (false, 90, true),
        (true, 85, true),
        (true, 80, true),
        (true, 79, false),
        (false, 85, false),
        (false, 100, true),
    ] {
        assert_eq!(
            watermark_refuses(before, used, 90, 80),
            after,
            "refusing {before} at {used}%"
        );
    }
    // 100/100 never refuses below a completely full file system.
    assert!(!watermark_refuses(false, 99, 100, 100));
}

#[tokio::test]
async fn a_new_upload_is_refused_at_the_high_watermark_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The fill of the test machine's disk as the spool counts it; a watermark at (or below)
    // it refuses, one of 100 % does not.
    let s = nix::sys::statvfs::statvfs(dir.path()).expect("statvfs");
    let total = s.blocks() * s.fragment_size();
    let used_percent = (total - s.blocks_available() * s.fragment_size()) * 100 / total;
    let high = u8::try_from(used_percent).expect("percent");
    {
        let spool = Spool::open(SpoolOptions {
            dir: dir.path().to_owned(),
            partial_ttl: Duration::from_secs(3600),
            reserve_bytes: 0,
            hash_bytes_max: u64::MAX,
            high_watermark_percent: high,
            low_watermark_percent: high,
            max_file_size: u64::MAX,
            delivered_retention: Default::default(),
        })
        .expect("open spool");
        let err = spool
            .open_write("u", &vp("refused"), OpenMode::default())
            .await
            .err()
            .expect("an upload at the high watermark is refused");
        assert_eq!(err.kind, FsErrorKind::NoSpace);
        assert!(err.to_string().contains("high watermark"), "{err}");
        assert!(spool.refusing_uploads());
        assert!(spool.files().is_empty(), "a refused upload leaves no file");
    }
    let spool = open(dir.path(), Duration::from_secs(3600), 0);
    let h = spool
        .open_write("u", &vp("accepted"), OpenMode::default())
        .await
        .expect("below the watermark uploads are accepted");
    h.write_at(0, Bytes::from_static(b"x"))
        .await
        .expect("write");
    h.close().await.expect("close");
    assert!(!spool.refusing_uploads());
}

#[tokio::test]
async fn a_record_too_large_for_the_journal_is_refused_without_touching_the_state() {
    use sftpgw::spool::catalog::{FAILURE_CAUSE_BYTES_MAX, Record};
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("spool");
    let spool = open(&dir, Duration::from_secs(3600), 0);
    let h = spool
        .open_write("u", &vp("f.bin"), OpenMode::default())
        .await
        .expect("open");
    h.write_at(0, Bytes::from(pattern(1000, 1)))
        .await
        .expect("write");
    h.close().await.expect("close");
    let id = spool.files()[0].id;
    // A store that answers with a megabyte-long ETag must not crash the box.
    let huge = Record::PartDone {
        id,
        number: 1,
        etag: "e".repeat(1 << 20),
        crc32c: 0,
    };
    let err = spool
        .commit(vec![huge], true, |_| Ok(()))
        .await
        .expect_err("refused");
    assert!(err.message.contains("exceeds the limit"), "{}", err.message);
    assert!(
        spool.files()[0].upload.is_none(),
        "the catalog is unchanged"
    );
    // Long S3 error messages are cut to fit.
    let cause = "AccessDenied: ".to_owned() + &"é".repeat(100_000);
    let Record::Failed { error, .. } = Record::failed(id, &cause) else {
        unreachable!()
    };
    assert!(error.len() <= FAILURE_CAUSE_BYTES_MAX && cause.starts_with(&error));
    spool
        .commit(vec![Record::failed(id, &cause)], true, |_| Ok(()))
        .await
        .expect("a cut cause fits");
    drop(spool);
    let spool = open(&dir, Duration::from_secs(3600), 0);
    assert_eq!(spool.files()[0].state, FileState::Failed);
}

#[tokio::test]
async fn a_sparse_write_counts_its_hole_against_free_space() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("spool");
    std::fs::create_dir_all(&dir).expect("dir");
    let s = nix::sys::statvfs::statvfs(&dir).expect("statvfs");
    let avail = s.blocks_available() * s.fragment_size();
    // Leave 64 MiB above the reserve.
    let spool = open(
        &dir,
        Duration::from_secs(3600),
        avail.saturating_sub(64 << 20),
    );
    let h = spool
        .open_write("u", &vp("holes.bin"), OpenMode::default())
        .await
        .expect("open");
    let far = h.write_at(1 << 30, Bytes::from_static(b"x")).await;
    assert_eq!(far.expect_err("a 1 GiB hole").kind, FsErrorKind::NoSpace);
    h.write_at(1 << 20, Bytes::from_static(b"x"))
        .await
        .expect("a 1 MiB hole fits");
}

#[tokio::test]
async fn copying_a_sealed_file_to_rewrite_it_respects_the_reserve() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("spool");
    {
        let spool = open(&dir, Duration::from_secs(3600), 0);
        let h = spool
            .open_write("u", &vp("big.bin"), OpenMode::default())
            .await
            .expect("open");
        h.write_at(0, Bytes::from(pattern(16 << 20, 1)))
            .await
            .expect("write");
        h.close().await.expect("close");
    }
    let s = nix::sys::statvfs::statvfs(&dir).expect("statvfs");
    let avail = s.blocks_available() * s.fragment_size();
    // 8 MiB above the reserve: the 16 MiB copy does not fit.
    let spool = open(
        &dir,
        Duration::from_secs(3600),
        avail.saturating_sub(8 << 20),
    );
    let resume = OpenMode {
        truncate: false,
        exclusive: false,
    };
    let err = spool
        .open_write("u", &vp("big.bin"), resume)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.kind, FsErrorKind::NoSpace);
    assert_eq!(spool.files().len(), 1, "the sealed version is untouched");
    // Starting the file anew needs no copy.
    let anew = OpenMode {
        truncate: true,
        exclusive: false,
    };
    spool
        .open_write("u", &vp("big.bin"), anew)
        .await
        .expect("truncating open");
}

#[tokio::test]
async fn a_user_over_quota_is_refused_new_files_and_bytes_and_others_are_not() {
    let tmp = tempfile::tempdir().expect("tmp");
    let spool = open(tmp.path(), Duration::from_secs(3600), 0);
    let quota = sftpgw::spool::Quota {
        bytes: Some(10_000),
        files: Some(2),
    };
    spool.set_quotas([("u".to_owned(), quota)].into_iter().collect());
    let put = |user: &'static str, path: &'static str, len: usize| {
        let spool = Arc::clone(&spool);
        async move {
            let h = spool
                .open_write(user, &vp(path), OpenMode::default())
                .await?;
            h.write_at(0, Bytes::from(pattern(len, 1))).await?;
            h.close().await
        }
    };
    put("u", "/a", 6000).await.expect("under both quotas");
    // 6000 + 5000 bytes would pass quota_bytes: the WRITE is refused, the session goes on.
    let h = spool
        .open_write("u", &vp("/b"), OpenMode::default())
        .await
        .expect("a second file is under quota_files");
    let err = h
        .write_at(0, Bytes::from(pattern(5000, 2)))
        .await
        .expect_err("over quota_bytes");
    assert!(err.message.contains("quota exceeded"), "{}", err.message);
    h.write_at(0, Bytes::from(pattern(3000, 2)))
        .await
        .expect("what fits is accepted");
    h.close().await.expect("close");
    // Two files not delivered: a third OPEN is refused.
    let err = put("u", "/c", 10).await.expect_err("over quota_files");
    assert!(err.message.contains("quota_files = 2"), "{}", err.message);
    assert_eq!(err.kind, FsErrorKind::Failure);
    // Another user has no quota.
    put("v", "/c", 50_000).await.expect("no quota for v");
    // Removing one of u's files makes room again.
    spool.remove("u", &vp("/a")).await.expect("rm");
    put("u", "/c", 10).await.expect("room again");
}
