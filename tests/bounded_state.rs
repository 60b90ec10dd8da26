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

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sftpgw::drain::aws::AwsStore;
use sftpgw::drain::upload::{Drain, DrainConfig};
use sftpgw::s3server::{S3Server, S3ServerConfig, test_s3_config};
use sftpgw::spool::{DeliveredRetention, FileState, OpenMode, Spool, SpoolOptions, VPath};

const WAIT: Duration = Duration::from_secs(60);

fn open_spool(dir: &std::path::Path, retention: DeliveredRetention) -> Arc<Spool> {
    Spool::open(SpoolOptions {
        dir: dir.join("spool"),
        partial_ttl: Duration::from_secs(3600),
        reserve_bytes: 0,
        hash_bytes_max: 5 << 20,
        high_watermark_percent: 100,
        low_watermark_percent: 100,
        max_file_size: u64::MAX,
        delivered_retention: retention,
    })
    .expect("spool")
}

fn drain_config(settle: Duration) -> DrainConfig {
    DrainConfig {
        prefix: "p/".into(),
        part_size: 5 << 20,
        concurrency: 4,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        settle,
        early: true,
        failed_retry_first: Duration::from_secs(3600),
        failed_retry_max: Duration::from_secs(3600),
    }
}

async fn put(spool: &Arc<Spool>, name: &str, bytes: &[u8]) {
    let h = spool
        .open_write(
            "u",
            &VPath::resolve(name).expect("path"),
            OpenMode {
                truncate: true,
                exclusive: false,
            },
        )
        .await
        .expect("open");
    h.write_at(0, Bytes::copy_from_slice(bytes))
        .await
        .expect("write");
    h.close().await.expect("close");
}

fn state(spool: &Spool, name: &str) -> Option<FileState> {
    spool
        .stat("u", &VPath::resolve(name).expect("path"))
        .ok()
        .and_then(|e| e.state)
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
    let server = S3Server::start(S3ServerConfig::loopback(tmp.path().join("s3")))
        .await
        .expect("s3");
    let store = Arc::new(AwsStore::new(&test_s3_config(&server)).expect("store"));
    let retention = DeliveredRetention {
        files_count_max: 3,
        age_secs_max: 3600,
    };
    let spool = open_spool(tmp.path(), retention);
    let drain =
        tokio::spawn(Drain::new(store.clone(), spool.clone(), drain_config(Duration::ZERO)).run());
    for n in 0..8u8 {
        put(&spool, &format!("f{n}"), &[n; 1000]).await;
        // One at a time, so that delivery order is upload order.
        let deadline = Instant::now() + WAIT;
        while state(&spool, &format!("f{n}")) != Some(FileState::Delivered) {
            assert!(Instant::now() < deadline, "f{n} never delivered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    drain.abort();
    let _ = drain.await;
    // Every object is in the bucket; only the newest three deliveries are still listed.
    for n in 0..8u8 {
        let got = store_get(&server, &format!("p/u/f{n}")).await;
        assert_eq!(got.as_deref(), Some(&[n; 1000][..]), "f{n} in the bucket");
    }
    assert_eq!(listed(&spool), ["f5", "f6", "f7"]);
    assert_eq!(spool.counts().files(FileState::Delivered), 3);
    assert_eq!(spool.files().len(), 3, "the older ones left memory too");

    // A file still waiting is never dropped by the retention, however old.
    put(&spool, "pending", b"not yet").await;
    assert_eq!(spool.prune_delivered(), 0, "none older than an hour");

    // After a restart (journal replay) the same files are listed.
    drop(spool);
    let spool = open_spool(tmp.path(), retention);
    assert_eq!(listed(&spool), ["f5", "f6", "f7", "pending"]);
    assert_eq!(state(&spool, "pending"), Some(FileState::Sealed));

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

/// The object at `key`, read with a client of its own.
async fn store_get(server: &S3Server, key: &str) -> Option<Vec<u8>> {
    let cfg = test_s3_config(server);
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(server.endpoint())
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            cfg.access_key_id,
            cfg.secret_access_key,
            None,
            None,
            "test",
        ))
        .build();
    let out = aws_sdk_s3::Client::from_conf(conf)
        .get_object()
        .bucket(cfg.bucket)
        .key(key)
        .send()
        .await
        .ok()?;
    Some(out.body.collect().await.ok()?.into_bytes().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_file_starts_at_once_and_only_temporary_names_wait_to_settle() {
    let tmp = tempfile::tempdir().expect("tmp");
    let server = S3Server::start(S3ServerConfig::loopback(tmp.path().join("s3")))
        .await
        .expect("s3");
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
    put(&spool, "scan-0001.pdf", b"a page").await;
    put(&spool, "upload.bin.filepart", b"renamed soon").await;
    put(&spool, ".photo.jpg.Xa81Qz", b"rsync's temporary name").await;
    let deadline = Instant::now() + WAIT;
    while state(&spool, "scan-0001.pdf") != Some(FileState::Delivered) {
        assert!(
            Instant::now() < deadline,
            "a plain name waited for the settle time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The temporary names are still waiting for their rename.
    assert_eq!(
        state(&spool, "upload.bin.filepart"),
        Some(FileState::Sealed)
    );
    assert_eq!(state(&spool, ".photo.jpg.Xa81Qz"), Some(FileState::Sealed));
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
    let deadline = Instant::now() + WAIT;
    while state(&spool, "upload.bin") != Some(FileState::Delivered) {
        assert!(Instant::now() < deadline, "the renamed file never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        store_get(&server, "p/u/upload.bin").await.as_deref(),
        Some(&b"renamed soon"[..])
    );
    drain.abort();
}
