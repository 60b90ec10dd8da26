//! State that stays bounded over a box's life, and a drain that starts at once: the real
//! spool and drain against the embedded S3 server.
//! - Delivered files beyond `[spool] delivered_retention` leave listings, memory and the
//!   journal's snapshot, and stay gone after a restart; pending files never leave.
//! - A sealed file starts its upload at once; only names a client renames right after CLOSE
//!   (WinSCP's `.filepart`) wait for the settle time.

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

use std::sync::Arc;
use std::time::Duration;

use common::spool::{put, spool_options, state, wait_state};
use sftpgw::drain::aws::AwsStore;
use sftpgw::drain::upload::{Drain, DrainConfig};
use sftpgw::s3server::test_s3_config;
use sftpgw::spool::{DeliveredRetention, FileState, Spool, SpoolOptions, VPath};

fn open_spool(dir: &std::path::Path, retention: DeliveredRetention) -> Arc<Spool> {
    Spool::open(SpoolOptions {
        delivered_retention: retention,
        ..spool_options(dir.join("spool"))
    })
    .expect("spool")
}

fn drain_config(settle: Duration) -> DrainConfig {
    DrainConfig {
        settle,
        ..common::spool::drain_config()
    }
}

fn listed(spool: &Spool) -> Vec<String> {
    spool
        .list_dir("u", &VPath::root())
        .expect("list")
        .into_iter()
        .map(|e| e.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_files_beyond_the_retention_leave_listings_and_stay_gone_after_a_restart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let server = common::s3::start(tmp.path()).await;
    let store = Arc::new(AwsStore::new(&test_s3_config(&server)).expect("store"));
    let retention = DeliveredRetention {
        files_count_max: 3,
        age_secs_max: 3600,
    };
    let spool = open_spool(tmp.path(), retention);
    let drain =
        tokio::spawn(Drain::new(store.clone(), spool.clone(), drain_config(Duration::ZERO)).run());
    for n in 0..8u8 {
        put(&spool, "u", &format!("f{n}"), &[n; 1000]).await;
        // One at a time, so that delivery order is upload order.
        let name = format!("f{n}");
        wait_state(&spool, "u", &name, FileState::Delivered, "one at a time").await;
    }
    drain.abort();
    let _ = drain.await;
    // Every object is in the bucket; only the newest three deliveries are still listed.
    for n in 0..8u8 {
        let got = common::s3::object(&server, &format!("p/u/f{n}")).await;
        assert_eq!(got.as_deref(), Some(&[n; 1000][..]), "f{n} in the bucket");
    }
    assert_eq!(listed(&spool), ["f5", "f6", "f7"]);
    assert_eq!(spool.counts().files(FileState::Delivered), 3);
    assert_eq!(spool.files().len(), 3, "the older ones left memory too");

    // A file still waiting is never dropped by the retention, however old.
    put(&spool, "u", "pending", b"not yet").await;
    assert_eq!(spool.prune_delivered(), 0, "none older than an hour");

    // After a restart (journal replay) the same files are listed.
    drop(spool);
    let spool = open_spool(tmp.path(), retention);
    assert_eq!(listed(&spool), ["f5", "f6", "f7", "pending"]);
    assert_eq!(state(&spool, "u", "pending"), Some(FileState::Sealed));

    // A smaller retention after a restart applies at once, pending files untouched.
    drop(spool);
    let spool = open_spool(
        tmp.path(),
        DeliveredRetention {
            files_count_max: 1,
            age_secs_max: 3600,
        },
    );
    assert_eq!(listed(&spool), ["f7", "pending"]);
    // By age: none delivered more than 0 s ago may stay (a second later).
    drop(spool);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let spool = open_spool(
        tmp.path(),
        DeliveredRetention {
            files_count_max: 1,
            age_secs_max: 0,
        },
    );
    assert_eq!(listed(&spool), ["pending"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_file_starts_at_once_and_only_temporary_names_wait_to_settle() {
    let tmp = tempfile::tempdir().expect("tmp");
    let server = common::s3::start(tmp.path()).await;
    let store = Arc::new(AwsStore::new(&test_s3_config(&server)).expect("store"));
    let spool = open_spool(tmp.path(), DeliveredRetention::default());
    // A settle time far longer than the test: a file that waited for it would never arrive.
    let drain = tokio::spawn(
        Drain::new(
            store.clone(),
            spool.clone(),
            drain_config(Duration::from_secs(600)),
        )
        .run(),
    );
    put(&spool, "u", "scan-0001.pdf", b"a page").await;
    put(&spool, "u", "upload.bin.filepart", b"renamed soon").await;
    put(&spool, "u", ".photo.jpg.Xa81Qz", b"rsync's temporary name").await;
    let why = "a plain name waited for the settle time";
    wait_state(&spool, "u", "scan-0001.pdf", FileState::Delivered, why).await;
    // The temporary names are still waiting for their rename.
    assert_eq!(
        state(&spool, "u", "upload.bin.filepart"),
        Some(FileState::Sealed)
    );
    assert_eq!(
        state(&spool, "u", ".photo.jpg.Xa81Qz"),
        Some(FileState::Sealed)
    );
    // Renamed into place, the file starts at once under its final name.
    spool
        .rename(
            "u",
            &VPath::resolve("upload.bin.filepart").expect("path"),
            &VPath::resolve("upload.bin").expect("path"),
            true,
        )
        .await
        .expect("rename");
    let why = "the renamed file never arrived";
    wait_state(&spool, "u", "upload.bin", FileState::Delivered, why).await;
    assert_eq!(
        common::s3::object(&server, "p/u/upload.bin")
            .await
            .as_deref(),
        Some(&b"renamed soon"[..])
    );
    drain.abort();
}
