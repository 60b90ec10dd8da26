//! `AwsStore` (the real aws-sdk-s3 client) against the embedded S3 server on loopback, and
//! `FaultStore` wrapped around that pair.

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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sftpgw::config::{ChecksumMode, S3Config};
use sftpgw::drain::aws::{AwsStore, AwsTimeouts};
use sftpgw::drain::fault::{Fault, FaultStore, Op};
use sftpgw::drain::store::{
    Body, CompletedPart, FileRange, META_SHA256, META_TOKEN, ObjectMetadata, ObjectStore,
    OpenUpload, S3Error, S3ErrorKind, full_object_crc32c,
};
use sftpgw::limits::PART_SIZE_BYTES_MIN;
use sftpgw::s3server::{S3Server, S3ServerConfig, ServerOp, test_s3_config};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Fixture {
    server: S3Server,
    cfg: S3Config,
    store: AwsStore,
    dir: TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let server = common::s3::start(dir.path()).await;
    // The tests' metadata names a made-up SHA-256 (see `metadata`): not sent as a checksum
    // here; `single_puts_carry_the_full_object_sha256_which_the_store_checks` turns it on.
    let cfg = S3Config {
        full_object_checksum: false,
        ..test_s3_config(&server)
    };
    let store = AwsStore::new(&cfg).unwrap();
    Fixture {
        server,
        cfg,
        store,
        dir,
    }
}

/// Deterministic bytes that differ between parts, so a swapped or repeated part shows.
fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u64 * 31 + u64::from(seed) * 7 + (i as u64 >> 12)) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn metadata(token: &str) -> ObjectMetadata {
    ObjectMetadata::from([
        (META_SHA256.to_owned(), "ab".repeat(32)),
        (META_TOKEN.to_owned(), token.to_owned()),
    ])
}

async fn get(store: &AwsStore, key: &str) -> Bytes {
    store
        .client()
        .get_object()
        .bucket(store.bucket())
        .key(key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes()
}

/// HEAD with the checksums the server verified and stored with the object.
async fn head_with_checksums(
    store: &AwsStore,
    key: &str,
) -> aws_sdk_s3::operation::head_object::HeadObjectOutput {
    store
        .client()
        .head_object()
        .bucket(store.bucket())
        .key(key)
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .unwrap()
}

/// The CRC32 the server verified and stored with the object, if the client sent one.
async fn stored_crc32(store: &AwsStore, key: &str) -> Option<String> {
    head_with_checksums(store, key).await.checksum_crc32
}

/// Uploads `parts` and returns the completed-part list (not completed yet).
async fn upload_parts(
    store: &impl ObjectStore,
    key: &str,
    upload_id: &str,
    parts: &[Bytes],
) -> Vec<CompletedPart> {
    let mut done = Vec::new();
    for (i, body) in parts.iter().enumerate() {
        let number = u32::try_from(i + 1).unwrap();
        let etag = store
            .upload_part(key, upload_id, number, body.clone().into(), false)
            .await
            .unwrap()
            .etag;
        done.push(CompletedPart {
            number,
            etag,
            crc32c: None,
        });
    }
    done
}

/// The error of a small PUT at key `k` that `store` is expected to refuse.
async fn small_put_error(store: &impl ObjectStore) -> S3Error {
    store
        .put_object("k", pattern(10, 0).into(), &ObjectMetadata::new())
        .await
        .unwrap_err()
}

fn three_parts() -> Vec<Bytes> {
    let min = usize::try_from(PART_SIZE_BYTES_MIN).unwrap();
    vec![pattern(min, 1), pattern(min, 2), pattern(123_457, 3)]
}

fn unreachable_store_config(cfg: &S3Config) -> S3Config {
    // Bind then drop: the port is free and nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    S3Config {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..cfg.clone()
    }
}

#[tokio::test]
async fn put_then_head_returns_size_and_user_metadata() {
    let f = fixture().await;
    let body = pattern(10_000, 9);
    f.store
        .put_object("site/u/a.txt", body.clone().into(), &metadata("tok-1"))
        .await
        .unwrap();
    let head = f.store.head_object("site/u/a.txt").await.unwrap().unwrap();
    assert_eq!(head.size, 10_000);
    assert_eq!(head.metadata, metadata("tok-1"));
    assert_eq!(get(&f.store, "site/u/a.txt").await, body);
    // `checksums = when_required`: the SDK adds no checksum header to PutObject.
    assert_eq!(stored_crc32(&f.store, "site/u/a.txt").await, None);
}

#[tokio::test]
async fn head_of_missing_object_is_none() {
    let f = fixture().await;
    assert_eq!(f.store.head_object("nope").await.unwrap(), None);
}

#[tokio::test]
async fn multipart_upload_of_three_parts_assembles_exact_bytes_and_metadata() {
    let f = fixture().await;
    let key = "site/u/big.bin";
    let parts = three_parts();
    let id = f
        .store
        .create_multipart_upload(key, &metadata("tok-mp"), false)
        .await
        .unwrap();
    let done = upload_parts(&f.store, key, &id, &parts).await;
    f.store
        .complete_multipart_upload(key, &id, &done)
        .await
        .unwrap();

    let expected: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    assert_eq!(get(&f.store, key).await, expected);
    let head = f.store.head_object(key).await.unwrap().unwrap();
    assert_eq!(head.size, expected.len() as u64);
    assert_eq!(head.metadata, metadata("tok-mp"));
    assert!(f.store.list_multipart_uploads("").await.unwrap().is_empty());

    // S3's multipart ETag: the MD5 of the parts' MD5s, then the number of parts.
    use md5::Digest as _;
    let mut of_md5s = md5::Md5::new();
    for p in &parts {
        of_md5s.update(md5::Md5::digest(p));
    }
    let expected_etag: String = of_md5s
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let etag = f
        .store
        .client()
        .head_object()
        .bucket(f.store.bucket())
        .key(key)
        .send()
        .await
        .unwrap()
        .e_tag;
    assert_eq!(etag, Some(format!("\"{expected_etag}-3\"")));
    // Nothing of the upload is left in the server's root: no part, no temporary file.
    let root = f.dir.path().join("s3");
    let leftovers: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".upload") || n.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn list_multipart_uploads_shows_open_uploads_under_prefix_only_and_abort_removes_them() {
    let f = fixture().await;
    let meta = ObjectMetadata::new();
    let a = f
        .store
        .create_multipart_upload("site-a/x", &meta, false)
        .await
        .unwrap();
    let b = f
        .store
        .create_multipart_upload("site-a/y/z", &meta, false)
        .await
        .unwrap();
    let other = f
        .store
        .create_multipart_upload("site-b/x", &meta, false)
        .await
        .unwrap();
    // A completed upload is no longer open.
    let done = f
        .store
        .create_multipart_upload("site-a/done", &meta, false)
        .await
        .unwrap();
    let parts = upload_parts(&f.store, "site-a/done", &done, &[pattern(10, 0)]).await;
    f.store
        .complete_multipart_upload("site-a/done", &done, &parts)
        .await
        .unwrap();

    let mut listed = f.store.list_multipart_uploads("site-a/").await.unwrap();
    listed.sort_by(|l, r| l.key.cmp(&r.key));
    assert_eq!(
        listed,
        vec![
            OpenUpload {
                key: "site-a/x".into(),
                upload_id: a.clone()
            },
            OpenUpload {
                key: "site-a/y/z".into(),
                upload_id: b.clone()
            },
        ]
    );
    assert_eq!(f.store.list_multipart_uploads("").await.unwrap().len(), 3);

    f.store
        .abort_multipart_upload("site-a/x", &a)
        .await
        .unwrap();
    let listed = f.store.list_multipart_uploads("site-a/").await.unwrap();
    assert_eq!(
        listed,
        vec![OpenUpload {
            key: "site-a/y/z".into(),
            upload_id: b
        }]
    );
    let err = f
        .store
        .upload_part("site-a/x", &a, 1, pattern(10, 0).into(), false)
        .await
        .unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::NoSuchUpload, "{err}");
    assert_eq!(
        f.store.list_multipart_uploads("site-b/").await.unwrap(),
        vec![OpenUpload {
            key: "site-b/x".into(),
            upload_id: other
        }]
    );
}

#[tokio::test]
async fn server_pages_list_multipart_uploads_with_markers() {
    let f = fixture().await;
    let meta = ObjectMetadata::new();
    let mut expected = Vec::new();
    for key in ["p/a", "p/a", "p/b", "p/c"] {
        let id = f
            .store
            .create_multipart_upload(key, &meta, false)
            .await
            .unwrap();
        expected.push((key.to_owned(), id));
    }
    expected.sort();

    let mut seen = Vec::new();
    let (mut key_marker, mut id_marker) = (None, None);
    for _ in 0..10 {
        let out = f
            .store
            .client()
            .list_multipart_uploads()
            .bucket(f.store.bucket())
            .prefix("p/")
            .max_uploads(1)
            .set_key_marker(key_marker.take())
            .set_upload_id_marker(id_marker.take())
            .send()
            .await
            .unwrap();
        for u in out.uploads() {
            seen.push((
                u.key().unwrap().to_owned(),
                u.upload_id().unwrap().to_owned(),
            ));
        }
        if out.is_truncated() != Some(true) {
            break;
        }
        key_marker = out.next_key_marker().map(str::to_owned);
        id_marker = out.next_upload_id_marker().map(str::to_owned);
    }
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn unknown_upload_id_is_no_such_upload_for_part_complete_and_abort() {
    let f = fixture().await;
    let unknown = "0f8e3c2a-1b2c-4d5e-8f90-a1b2c3d4e5f6";
    let err = f
        .store
        .upload_part("k", unknown, 1, pattern(10, 0).into(), false)
        .await
        .unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::NoSuchUpload, "{err}");
    assert_eq!(err.operation, "UploadPart");
    let part = [CompletedPart {
        number: 1,
        etag: "\"x\"".into(),
        crc32c: None,
    }];
    let err = f
        .store
        .complete_multipart_upload("k", unknown, &part)
        .await
        .unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::NoSuchUpload, "{err}");
    let err = f
        .store
        .abort_multipart_upload("k", unknown)
        .await
        .unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::NoSuchUpload, "{err}");
    // Not even shaped like an id.
    let err = f
        .store
        .upload_part("k", "garbage", 1, pattern(10, 0).into(), false)
        .await
        .unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::NoSuchUpload, "{err}");
    // A real id used with another key is unknown too, as on S3.
    let id = f
        .store
        .create_multipart_upload("k", &ObjectMetadata::new(), false)
        .await
        .unwrap();
    let err = f
        .store
        .upload_part("other", &id, 1, pattern(10, 0).into(), false)
        .await
        .unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::NoSuchUpload, "{err}");
}

#[tokio::test]
async fn repeated_complete_is_no_such_upload_and_object_stays() {
    let f = fixture().await;
    let id = f
        .store
        .create_multipart_upload("k", &metadata("t"), false)
        .await
        .unwrap();
    let parts = upload_parts(&f.store, "k", &id, &[pattern(100, 1)]).await;
    f.store
        .complete_multipart_upload("k", &id, &parts)
        .await
        .unwrap();
    let err = f
        .store
        .complete_multipart_upload("k", &id, &parts)
        .await
        .unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::NoSuchUpload, "{err}");
    assert_eq!(f.store.head_object("k").await.unwrap().unwrap().size, 100);
}

#[tokio::test]
async fn rejected_complete_is_permanent_and_keeps_the_upload_open() {
    let f = fixture().await;
    let key = "k";
    let id = f
        .store
        .create_multipart_upload(key, &ObjectMetadata::new(), false)
        .await
        .unwrap();
    // Part 1 below the minimum size while not last.
    let small = upload_parts(&f.store, key, &id, &[pattern(10, 1), pattern(10, 2)]).await;
    let err = f
        .store
        .complete_multipart_upload(key, &id, &small)
        .await
        .unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::Permanent, "{err}");
    assert!(err.message.contains("EntityTooSmall"), "{err}");

    // A stale ETag.
    let stale = [CompletedPart {
        number: 1,
        etag: "\"0123\"".into(),
        crc32c: None,
    }];
    let err = f
        .store
        .complete_multipart_upload(key, &id, &stale)
        .await
        .unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::Permanent, "{err}");
    assert!(err.message.contains("InvalidPart"), "{err}");

    // A part never uploaded.
    let missing = [
        CompletedPart {
            number: 1,
            etag: small[0].etag.clone(),
            crc32c: None,
        },
        CompletedPart {
            number: 2,
            etag: small[1].etag.clone(),
            crc32c: None,
        },
        CompletedPart {
            number: 3,
            etag: "\"x\"".into(),
            crc32c: None,
        },
    ];
    let err = f
        .store
        .complete_multipart_upload(key, &id, &missing)
        .await
        .unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::Permanent, "{err}");

    // Still open and completable once the parts are right.
    assert_eq!(f.store.list_multipart_uploads("").await.unwrap().len(), 1);
    let good = upload_parts(
        &f.store,
        key,
        &id,
        &[pattern(PART_SIZE_BYTES_MIN as usize, 1), pattern(10, 2)],
    )
    .await;
    f.store
        .complete_multipart_upload(key, &id, &good)
        .await
        .unwrap();
    assert_eq!(
        f.store.head_object(key).await.unwrap().unwrap().size,
        PART_SIZE_BYTES_MIN + 10
    );
}

#[tokio::test]
async fn wrong_secret_is_permanent() {
    let f = fixture().await;
    let cfg = S3Config {
        secret_access_key: "wrong".into(),
        ..f.cfg.clone()
    };
    let store = AwsStore::new(&cfg).unwrap();
    let err = small_put_error(&store).await;
    assert_eq!(err.kind, S3ErrorKind::Permanent, "{err}");
    assert!(err.message.contains("SignatureDoesNotMatch"), "{err}");
    let err = store.head_object("k").await.unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::Permanent, "{err}");
    assert_eq!(f.server.stats().requests(ServerOp::PutObject), 0);
}

#[tokio::test]
async fn unknown_access_key_is_permanent() {
    let f = fixture().await;
    let cfg = S3Config {
        access_key_id: "nobody".into(),
        ..f.cfg.clone()
    };
    let err = AwsStore::new(&cfg)
        .unwrap()
        .create_multipart_upload("k", &ObjectMetadata::new(), false)
        .await
        .unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::Permanent, "{err}");
    assert!(err.message.contains("InvalidAccessKeyId"), "{err}");
}

#[tokio::test]
async fn nothing_listening_is_transient() {
    let f = fixture().await;
    let store = AwsStore::new(&unreachable_store_config(&f.cfg)).unwrap();
    let err = small_put_error(&store).await;
    assert_eq!(err.kind, S3ErrorKind::Transient, "{err}");
    let err = store.head_object("k").await.unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::Transient, "{err}");
    let err = store.list_multipart_uploads("").await.unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::Transient, "{err}");
}

#[tokio::test]
async fn server_that_never_answers_times_out_as_transient() {
    let f = fixture().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accept and hold connections without ever answering.
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let cfg = S3Config {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..f.cfg.clone()
    };
    let timeouts = AwsTimeouts {
        control_attempt: Duration::from_millis(500),
        ..AwsTimeouts::default()
    };
    let store = AwsStore::with_timeouts(&cfg, timeouts).unwrap();
    let started = Instant::now();
    let err = store.head_object("k").await.unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::Transient, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    hold.abort();
}

#[tokio::test]
async fn stopped_server_is_transient() {
    let f = fixture().await;
    f.store.head_object("k").await.unwrap();
    f.server.shutdown().await;
    let err = f.store.head_object("k").await.unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::Transient, "{err}");
}

#[tokio::test]
async fn missing_bucket_is_permanent_and_not_created() {
    let f = fixture().await;
    let cfg = S3Config {
        bucket: "no-such-bucket".into(),
        ..f.cfg.clone()
    };
    let store = AwsStore::new(&cfg).unwrap();
    let err = small_put_error(&store).await;
    assert_eq!(err.kind, S3ErrorKind::Permanent, "{err}");
    assert!(err.message.contains("NoSuchBucket"), "{err}");
    let err = store
        .create_multipart_upload("k", &ObjectMetadata::new(), false)
        .await
        .unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::Permanent, "{err}");
    let err = store.list_multipart_uploads("").await.unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::Permanent, "{err}");
    // A second try still fails: the first PUT did not create the bucket.
    let err = small_put_error(&store).await;
    assert_eq!(err.kind, S3ErrorKind::Permanent, "{err}");
}

#[tokio::test]
async fn stats_count_requests_and_uploaded_body_bytes() {
    let f = fixture().await;
    let stats = f.server.stats();
    f.store
        .put_object("a", pattern(1000, 0).into(), &ObjectMetadata::new())
        .await
        .unwrap();
    let parts = three_parts();
    let id = f
        .store
        .create_multipart_upload("b", &ObjectMetadata::new(), false)
        .await
        .unwrap();
    let done = upload_parts(&f.store, "b", &id, &parts).await;
    f.store
        .complete_multipart_upload("b", &id, &done)
        .await
        .unwrap();
    let aborted = f
        .store
        .create_multipart_upload("c", &ObjectMetadata::new(), false)
        .await
        .unwrap();
    f.store.abort_multipart_upload("c", &aborted).await.unwrap();
    f.store.head_object("b").await.unwrap();

    let part_bytes: u64 = parts.iter().map(|p| p.len() as u64).sum();
    assert_eq!(stats.upload_bytes(), 1000 + part_bytes);
    assert_eq!(stats.requests(ServerOp::PutObject), 1);
    assert_eq!(stats.requests(ServerOp::CreateMultipartUpload), 2);
    assert_eq!(stats.requests(ServerOp::UploadPart), 3);
    assert_eq!(stats.requests(ServerOp::CompleteMultipartUpload), 1);
    assert_eq!(stats.requests(ServerOp::AbortMultipartUpload), 1);
    assert_eq!(stats.requests(ServerOp::HeadObject), 1);
}

#[tokio::test]
async fn upload_throttle_slows_bodies_to_the_set_rate() {
    let f = fixture().await;
    f.server.stats().set_upload_bytes_per_sec(Some(1024 * 1024));
    let started = Instant::now();
    f.store
        .put_object(
            "slow",
            pattern(512 * 1024, 0).into(),
            &ObjectMetadata::new(),
        )
        .await
        .unwrap();
    let elapsed = started.elapsed();
    // 512 KiB at 1 MiB/s: half a second, give or take the first chunk.
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    f.server.stats().set_upload_bytes_per_sec(None);
    let started = Instant::now();
    f.store
        .put_object(
            "fast",
            pattern(512 * 1024, 0).into(),
            &ObjectMetadata::new(),
        )
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sdk_default_checksums_are_accepted_by_the_embedded_server() {
    let f = fixture().await;
    let cfg = S3Config {
        checksums: ChecksumMode::Always,
        ..f.cfg.clone()
    };
    let store = AwsStore::new(&cfg).unwrap();
    store
        .put_object("a", pattern(70_000, 1).into(), &metadata("t"))
        .await
        .unwrap();
    assert_eq!(get(&store, "a").await, pattern(70_000, 1));
    assert!(
        stored_crc32(&store, "a").await.is_some(),
        "the SDK sent no checksum"
    );
    let parts = three_parts();
    let id = store
        .create_multipart_upload("b", &metadata("t"), false)
        .await
        .unwrap();
    let done = upload_parts(&store, "b", &id, &parts).await;
    store
        .complete_multipart_upload("b", &id, &done)
        .await
        .unwrap();
    let expected: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    assert_eq!(get(&store, "b").await, expected);
}

/// DESIGN.md hazard: file bodies are streamed with aws-chunked encoding and a trailing CRC.
/// The drain sends in-memory bodies (plain Content-Length), but the embedded server must also
/// take what the current SDK sends for files, e.g. from `aws s3 cp`-like tools in the demo.
#[tokio::test]
async fn sdk_aws_chunked_file_bodies_with_trailing_checksums_are_accepted() {
    let f = fixture().await;
    let cfg = S3Config {
        checksums: ChecksumMode::Always,
        ..f.cfg.clone()
    };
    let store = AwsStore::new(&cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("body");
    let body = pattern(300_000, 4);
    std::fs::write(&path, &body).unwrap();
    let stream = aws_sdk_s3::primitives::ByteStream::read_from()
        .path(&path)
        .build()
        .await
        .unwrap();
    store
        .client()
        .put_object()
        .bucket(store.bucket())
        .key("file")
        .body(stream)
        .send()
        .await
        .unwrap();
    assert_eq!(get(&store, "file").await, body);
    assert!(stored_crc32(&store, "file").await.is_some());
}

#[tokio::test]
async fn open_uploads_and_objects_survive_a_server_restart_on_the_same_root() {
    let dir = tempfile::tempdir().unwrap();
    let server_cfg = S3ServerConfig::loopback(dir.path().join("s3"));
    let server = S3Server::start(server_cfg.clone()).await.unwrap();
    let store = AwsStore::new(&S3Config {
        full_object_checksum: false,
        ..test_s3_config(&server)
    })
    .unwrap();
    store
        .put_object("done", pattern(10, 0).into(), &metadata("t1"))
        .await
        .unwrap();
    let id = store
        .create_multipart_upload("open", &metadata("t2"), false)
        .await
        .unwrap();
    let part = store
        .upload_part("open", &id, 1, pattern(10, 1).into(), false)
        .await
        .unwrap()
        .etag;
    server.shutdown().await;

    let server = S3Server::start(server_cfg).await.unwrap();
    let store = AwsStore::new(&S3Config {
        full_object_checksum: false,
        ..test_s3_config(&server)
    })
    .unwrap();
    assert_eq!(
        store.head_object("done").await.unwrap().unwrap().metadata,
        metadata("t1")
    );
    assert_eq!(
        store.list_multipart_uploads("").await.unwrap(),
        vec![OpenUpload {
            key: "open".into(),
            upload_id: id.clone()
        }]
    );
    store
        .complete_multipart_upload(
            "open",
            &id,
            &[CompletedPart {
                number: 1,
                etag: part,
                crc32c: None,
            }],
        )
        .await
        .unwrap();
    assert_eq!(get(&store, "open").await, pattern(10, 1));
    assert_eq!(
        store.head_object("open").await.unwrap().unwrap().metadata,
        metadata("t2")
    );
}

// ---- FaultStore ----

async fn fault_fixture() -> (Fixture, FaultStore<AwsStore>) {
    let f = fixture().await;
    let store = FaultStore::new(f.store.clone());
    (f, store)
}

#[tokio::test]
async fn fault_server_error_is_transient_and_never_reaches_the_store() {
    let (f, store) = fault_fixture().await;
    let id = store
        .create_multipart_upload("k", &ObjectMetadata::new(), false)
        .await
        .unwrap();
    store.fail_next(Op::UploadPart, Fault::ServerError);
    let err = store
        .upload_part("k", &id, 1, pattern(10, 0).into(), false)
        .await
        .unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::Transient, "{err}");
    assert_eq!(err.operation, "UploadPart");
    assert_eq!(f.server.stats().requests(ServerOp::UploadPart), 0);
    // The retry goes through.
    store
        .upload_part("k", &id, 1, pattern(10, 0).into(), false)
        .await
        .unwrap();
    assert_eq!(f.server.stats().requests(ServerOp::UploadPart), 1);
    assert_eq!(store.calls(Op::UploadPart), 2);
    assert_eq!(store.faults_injected(Op::UploadPart), 1);
}

#[tokio::test]
async fn fault_connection_reset_mid_part_is_transient_and_stores_nothing() {
    let (f, store) = fault_fixture().await;
    let id = store
        .create_multipart_upload("k", &ObjectMetadata::new(), false)
        .await
        .unwrap();
    store.inject(Op::UploadPart, 2, Fault::ConnectionReset);
    let parts = three_parts();
    let etag1 = store
        .upload_part("k", &id, 1, parts[0].clone().into(), false)
        .await
        .unwrap()
        .etag;
    let err = store
        .upload_part("k", &id, 2, parts[1].clone().into(), false)
        .await
        .unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::Transient, "{err}");
    assert_eq!(f.server.stats().upload_bytes(), parts[0].len() as u64);
    let etag2 = store
        .upload_part("k", &id, 2, parts[1].clone().into(), false)
        .await
        .unwrap()
        .etag;
    let etag3 = store
        .upload_part("k", &id, 3, parts[2].clone().into(), false)
        .await
        .unwrap()
        .etag;
    let done = [
        CompletedPart {
            number: 1,
            etag: etag1,
            crc32c: None,
        },
        CompletedPart {
            number: 2,
            etag: etag2,
            crc32c: None,
        },
        CompletedPart {
            number: 3,
            etag: etag3,
            crc32c: None,
        },
    ];
    store
        .complete_multipart_upload("k", &id, &done)
        .await
        .unwrap();
}

#[tokio::test]
async fn fault_no_such_upload_on_part_really_ends_the_upload() {
    let (f, store) = fault_fixture().await;
    let id = store
        .create_multipart_upload("k", &ObjectMetadata::new(), false)
        .await
        .unwrap();
    store.fail_next(Op::UploadPart, Fault::NoSuchUpload);
    let err = store
        .upload_part("k", &id, 1, pattern(10, 0).into(), false)
        .await
        .unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::NoSuchUpload, "{err}");
    assert!(store.list_multipart_uploads("").await.unwrap().is_empty());
    let err = f
        .store
        .upload_part("k", &id, 1, pattern(10, 0).into(), false)
        .await
        .unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::NoSuchUpload, "{err}");
}

#[tokio::test]
async fn fault_no_such_upload_on_complete_really_ends_the_upload() {
    let (f, store) = fault_fixture().await;
    let id = store
        .create_multipart_upload("k", &ObjectMetadata::new(), false)
        .await
        .unwrap();
    let done = upload_parts(&store, "k", &id, &[pattern(10, 0)]).await;
    store.fail_next(Op::CompleteMultipartUpload, Fault::NoSuchUpload);
    let err = store
        .complete_multipart_upload("k", &id, &done)
        .await
        .unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::NoSuchUpload, "{err}");
    assert_eq!(store.head_object("k").await.unwrap(), None);
    assert!(f.store.list_multipart_uploads("").await.unwrap().is_empty());
}

#[tokio::test]
async fn fault_lost_complete_response_is_transient_but_the_object_exists() {
    let (f, store) = fault_fixture().await;
    let id = store
        .create_multipart_upload("k", &metadata("tok-lost"), false)
        .await
        .unwrap();
    let done = upload_parts(&store, "k", &id, &[pattern(10, 0)]).await;
    store.fail_next(Op::CompleteMultipartUpload, Fault::ResponseLost);
    let err = store
        .complete_multipart_upload("k", &id, &done)
        .await
        .unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::Transient, "{err}");
    assert_eq!(
        f.server.stats().requests(ServerOp::CompleteMultipartUpload),
        1
    );
    // The ambiguity is settled by HEAD and the token, as the drain does.
    let head = store.head_object("k").await.unwrap().unwrap();
    assert_eq!(
        head.metadata.get(META_TOKEN).map(String::as_str),
        Some("tok-lost")
    );
    let err = store
        .complete_multipart_upload("k", &id, &done)
        .await
        .unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::NoSuchUpload, "{err}");
}

#[tokio::test]
async fn fault_access_denied_is_permanent_and_never_reaches_the_store() {
    let (f, store) = fault_fixture().await;
    store.fail_always(Op::PutObject, Fault::AccessDenied);
    for _ in 0..2 {
        let err = small_put_error(&store).await;
        assert_eq!(err.kind, S3ErrorKind::Permanent, "{err}");
    }
    assert_eq!(f.server.stats().requests(ServerOp::PutObject), 0);
    store.clear();
    store
        .put_object("k", pattern(10, 0).into(), &ObjectMetadata::new())
        .await
        .unwrap();
    assert_eq!(store.calls(Op::PutObject), 3);
    assert_eq!(store.faults_injected(Op::PutObject), 2);
}

#[tokio::test]
async fn fault_rule_can_target_one_part_of_one_key() {
    let (f, store) = fault_fixture().await;
    let mut fired = false;
    store.add_rule(move |c| {
        if c.op == Op::UploadPart && c.key == "b" && c.part_number == Some(2) && !fired {
            fired = true;
            return Some(Fault::ServerError);
        }
        None
    });
    let meta = ObjectMetadata::new();
    let a = store
        .create_multipart_upload("a", &meta, false)
        .await
        .unwrap();
    let b = store
        .create_multipart_upload("b", &meta, false)
        .await
        .unwrap();
    assert!(
        store
            .upload_part("a", &a, 2, pattern(10, 0).into(), false)
            .await
            .is_ok()
    );
    assert!(
        store
            .upload_part("b", &b, 1, pattern(10, 0).into(), false)
            .await
            .is_ok()
    );
    assert!(
        store
            .upload_part("b", &b, 2, pattern(10, 0).into(), false)
            .await
            .is_err()
    );
    assert!(
        store
            .upload_part("b", &b, 2, pattern(10, 0).into(), false)
            .await
            .is_ok()
    );
    assert_eq!(f.server.stats().requests(ServerOp::UploadPart), 3);
}

// ---- File bodies ----

/// Writes `bytes` to `name` in a fresh directory; returns the directory (keep it) and the path.
fn spool_like_file(name: &str, bytes: &[u8]) -> (TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

fn range(path: &std::path::Path, offset: usize, len: usize) -> Body {
    Body::File(FileRange {
        path: path.to_owned(),
        offset: offset as u64,
        len: len as u64,
        open: None,
    })
}

#[tokio::test]
async fn file_range_bodies_arrive_byte_exact_and_report_their_crc32c() {
    let f = fixture().await;
    let min = usize::try_from(PART_SIZE_BYTES_MIN).unwrap();
    // Ranges that start off any chunk boundary, and a last part that ends off one.
    let (skip, last) = (777, 300_001);
    let file = pattern(skip + min + last + 99, 5);
    let (_dir, path) = spool_like_file("sealed", &file);
    let id = f
        .store
        .create_multipart_upload("k", &ObjectMetadata::new(), false)
        .await
        .unwrap();
    let mut done = Vec::new();
    for (number, offset, len) in [(1, skip, min), (2, skip + min, last)] {
        let part = f
            .store
            .upload_part("k", &id, number, range(&path, offset, len), false)
            .await
            .unwrap();
        assert_eq!(
            part.crc32c,
            crc32c::crc32c(&file[offset..offset + len]),
            "part {number}"
        );
        done.push(CompletedPart {
            number,
            etag: part.etag,
            crc32c: None,
        });
    }
    f.store
        .complete_multipart_upload("k", &id, &done)
        .await
        .unwrap();
    assert_eq!(get(&f.store, "k").await, file[skip..skip + min + last]);

    f.store
        .put_object("small", range(&path, 5, 200_000), &metadata("t"))
        .await
        .unwrap();
    assert_eq!(get(&f.store, "small").await, file[5..200_005]);
    f.store
        .put_object("empty", range(&path, 10, 0), &metadata("t"))
        .await
        .unwrap();
    assert_eq!(f.store.head_object("empty").await.unwrap().unwrap().size, 0);
}

#[tokio::test]
async fn file_range_bodies_carry_sdk_checksums_when_asked() {
    let f = fixture().await;
    let store = AwsStore::new(&S3Config {
        checksums: ChecksumMode::Always,
        ..f.cfg.clone()
    })
    .unwrap();
    let file = pattern(400_000, 6);
    let (_dir, path) = spool_like_file("sealed", &file);
    store
        .put_object("a", range(&path, 1, 399_999), &metadata("t"))
        .await
        .unwrap();
    assert_eq!(get(&store, "a").await, file[1..]);
    assert!(
        stored_crc32(&store, "a").await.is_some(),
        "the SDK sent no checksum"
    );
}

#[tokio::test]
async fn an_unreadable_file_body_is_a_permanent_error_naming_the_file() {
    let f = fixture().await;
    let (dir, path) = spool_like_file("short", &pattern(1000, 7));
    let id = f
        .store
        .create_multipart_upload("k", &ObjectMetadata::new(), false)
        .await
        .unwrap();
    let missing = dir.path().join("missing");
    let err = f
        .store
        .upload_part("k", &id, 1, range(&missing, 0, 10), false)
        .await
        .unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::Permanent, "{err}");
    assert!(err.message.contains("missing"), "{err}");
    // The file ends before the range does.
    let err = f
        .store
        .put_object("k", range(&path, 500, 1000), &ObjectMetadata::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::Permanent, "{err}");
    assert!(err.message.contains("short"), "{err}");
    assert_eq!(f.store.head_object("k").await.unwrap(), None);
}

/// A TCP proxy to `upstream` that closes, in the middle of a request, the first connection
/// whose client has sent more than `cut_after` bytes. Later connections pass untouched.
async fn cutting_proxy(upstream: SocketAddr, cut_after: u64) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let cut_any = cut.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(upstream).await else {
                continue;
            };
            let cut = cut_any.clone();
            tokio::spawn(async move {
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                let down = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                });
                let mut buf = vec![0; 64 * 1024];
                let mut sent = 0u64;
                loop {
                    let n = match from_client.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    sent += n as u64;
                    if sent > cut_after && !cut.swap(true, Ordering::SeqCst) {
                        // Drops both connections with the request half sent.
                        down.abort();
                        return;
                    }
                    if to_server.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = to_server.shutdown().await;
                let _ = down.await;
            });
        }
    });
    (addr, cut)
}

#[tokio::test]
async fn a_file_body_cut_mid_stream_is_read_again_from_the_file_on_retry() {
    let f = fixture().await;
    let (proxy, cut) = cutting_proxy(f.server.addr(), 1 << 20).await;
    let store = AwsStore::new(&S3Config {
        endpoint: Some(format!("http://{proxy}")),
        ..f.cfg.clone()
    })
    .unwrap();
    let min = usize::try_from(PART_SIZE_BYTES_MIN).unwrap();
    let skip = 1000;
    let (_dir, path) = spool_like_file("sealed", &pattern(skip + min, 1));
    let id = store
        .create_multipart_upload("k", &ObjectMetadata::new(), false)
        .await
        .unwrap();
    let err = store
        .upload_part("k", &id, 1, range(&path, skip, min), false)
        .await
        .unwrap_err();
    assert_eq!(err.kind, S3ErrorKind::Transient, "{err}");
    assert!(cut.load(Ordering::SeqCst), "the proxy never cut: {err}");
    // Sealed spool files never change; this one does, so that the retry shows it read the
    // file again instead of replaying bytes kept from the first attempt.
    let file = pattern(skip + min, 2);
    std::fs::write(&path, &file).unwrap();
    let part = store
        .upload_part("k", &id, 1, range(&path, skip, min), false)
        .await
        .unwrap();
    assert_eq!(part.crc32c, crc32c::crc32c(&file[skip..]));
    store
        .complete_multipart_upload(
            "k",
            &id,
            &[CompletedPart {
                number: 1,
                etag: part.etag,
                crc32c: None,
            }],
        )
        .await
        .unwrap();
    assert_eq!(get(&f.store, "k").await, file[skip..]);
}

/// An HTTP/1.1 server that answers every request 200 with an ETag and keeps the request heads,
/// lower-cased.
async fn recording_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let kept = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = vec![0; 64 * 1024];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    // With the CRLF of its last line, so that every header line ends in one.
                    let head = String::from_utf8_lossy(&buf[..end + 2]).to_ascii_lowercase();
                    let body_len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < end + 4 + body_len {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + 4 + body_len);
                    kept.lock().unwrap().push(head);
                    let response = "HTTP/1.1 200 OK\r\netag: \"e\"\r\ncontent-length: 0\r\n\r\n";
                    if conn.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads)
}

/// Payloads are not signed, over plain HTTP either: SigV4 would hash every byte with SHA-256
/// (measured: about 0.8 CPU-s per GiB in the drain, and the server hashes again to check), and
/// a file body would have to be read twice for it. Bodies go with a plain Content-Length, not
/// aws-chunked, which several S3-compatible stores reject.
#[tokio::test]
async fn bodies_are_sent_unsigned_with_a_plain_content_length_even_over_http() {
    let f = fixture().await;
    let (addr, heads) = recording_server().await;
    let store = AwsStore::new(&S3Config {
        endpoint: Some(format!("http://{addr}")),
        ..f.cfg.clone()
    })
    .unwrap();
    let (_dir, path) = spool_like_file("sealed", &pattern(300_000, 8));
    store
        .put_object("a", pattern(10, 0).into(), &ObjectMetadata::new())
        .await
        .unwrap();
    store
        .put_object("b", range(&path, 0, 300_000), &ObjectMetadata::new())
        .await
        .unwrap();
    store
        .upload_part("c", "upload", 1, range(&path, 7, 200_000), false)
        .await
        .unwrap();
    let heads = heads.lock().unwrap();
    assert_eq!(heads.len(), 3, "{heads:?}");
    for (head, len) in heads.iter().zip([10, 300_000, 200_000]) {
        assert!(
            head.contains("\r\nx-amz-content-sha256: unsigned-payload\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\ncontent-length: {len}\r\n")),
            "{head}"
        );
        assert!(!head.contains("aws-chunked"), "{head}");
        assert!(!head.contains("transfer-encoding"), "{head}");
    }
}

/// The embedded server runs on a runtime of its own: the demo's gateway shares a process with
/// it, and its MD5 and copying must not take the gateway's workers (nor wait for them).
#[test]
fn the_server_answers_while_the_runtime_that_started_it_does_not_run() {
    use std::io::{Read as _, Write as _};
    let caller = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tmp");
    let server = caller
        .block_on(S3Server::start(S3ServerConfig::loopback(
            dir.path().join("s3"),
        )))
        .expect("s3");
    // `caller` is idle from here until the shutdown: nothing of the server may need it.
    let mut socket = std::net::TcpStream::connect(server.addr()).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    socket
        .write_all(b"GET /uploads HTTP/1.1\r\nHost: s3\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut reply = Vec::new();
    let read = socket.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        read.is_ok() && reply.starts_with("HTTP/1.1 403"),
        "an unsigned request is refused at once ({read:?}): {reply}"
    );
    caller.block_on(server.shutdown());
}

/// A box whose manifest cursor is lost finds its numbers taken by its own older manifests:
/// it never overwrites one, keeps the numbers it passed when it gives up for this interval,
/// and at the next interval writes the log under the first free number.
#[tokio::test]
async fn manifests_skip_numbers_taken_by_other_objects_and_keep_going_after_a_lost_cursor() {
    use sftpgw::drain::manifests::{Cursor, load_cursor, manifest_key, ship_one};
    use sftpgw::spool::deliveries::{Delivery, DeliveryLog};
    let f = fixture().await;
    let spool = f.dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let log = DeliveryLog::open(&spool).unwrap();
    let delivery = Delivery {
        delivered_at: "2026-12-07T10:00:00Z".into(),
        user: "alice".into(),
        path: "/a.bin".into(),
        bucket: "uploads".into(),
        key: "alice/a.bin".into(),
        size: 3,
        sha256: None,
        etag: None,
        version_id: None,
        sealed_at: "2026-12-07T09:59:59Z".into(),
        box_name: "box".into(),
        id: 1,
    };
    log.append(&delivery).unwrap();
    let line = format!("{}\n", serde_json::to_string(&delivery).unwrap());
    // Numbers 0..20 hold older manifests (other contents; number 0 of the same size).
    let older = |n: u64| match n {
        0 => format!("{}\n", "x".repeat(line.len() - 1)),
        n => format!("older {n}\n"),
    };
    for n in 0..20 {
        let key = manifest_key("", "2026-12-07", "box", n);
        f.store
            .put_object(&key, Bytes::from(older(n)).into(), &ObjectMetadata::new())
            .await
            .unwrap();
    }
    let mut cursor = Cursor::default();
    let first = ship_one(&f.store, &spool, "", "box", &mut cursor).await;
    assert!(first.is_err(), "gives up for this interval: {first:?}");
    assert_eq!(load_cursor(&spool).next, 17, "the numbers passed are kept");
    assert_eq!(cursor.next, 17);
    assert_eq!(
        ship_one(&f.store, &spool, "", "box", &mut cursor).await,
        Ok(true)
    );
    assert_eq!(
        get(&f.store, &manifest_key("", "2026-12-07", "box", 20)).await,
        line.as_bytes()
    );
    for n in 0..20 {
        let kept = get(&f.store, &manifest_key("", "2026-12-07", "box", n)).await;
        assert_eq!(kept, older(n).as_bytes(), "manifest {n} untouched");
    }
    assert_eq!(
        ship_one(&f.store, &spool, "", "box", &mut cursor).await,
        Ok(false),
        "nothing new"
    );
    assert_eq!(load_cursor(&spool).next, 21);
}

/// The SHA-256 the server verified and stored with the object, if the client sent one.
async fn stored_sha256(store: &AwsStore, key: &str) -> Option<String> {
    head_with_checksums(store, key).await.checksum_sha256
}

/// `full_object_checksum`: a single PUT whose metadata names the file's SHA-256 carries it as
/// `x-amz-checksum-sha256`: the store checks the bytes against it (a mismatch is refused,
/// BadDigest) and keeps it for `head-object --checksum-mode ENABLED`. Off, for
/// stores that reject the header, nothing is sent.
#[tokio::test]
async fn single_puts_carry_the_full_object_sha256_which_the_store_checks() {
    use sha2::Digest as _;
    let f = fixture().await;
    let on = AwsStore::new(&S3Config {
        full_object_checksum: true,
        ..f.cfg.clone()
    })
    .unwrap();
    let body = pattern(100_000, 9);
    let sha = sha2::Sha256::digest(&body);
    let meta = |hex_sha: String| ObjectMetadata::from([(META_SHA256.to_owned(), hex_sha)]);
    on.put_object("sha/right", body.clone().into(), &meta(hex::encode(sha)))
        .await
        .expect("the right checksum is accepted");
    assert_eq!(
        stored_sha256(&on, "sha/right").await.as_deref(),
        Some(base64_simd::STANDARD.encode_to_string(sha).as_str())
    );
    let mut wrong = sha;
    wrong[0] ^= 1;
    let refused = on
        .put_object("sha/wrong", body.clone().into(), &meta(hex::encode(wrong)))
        .await
        .expect_err("bytes that do not match their SHA-256 are refused");
    assert!(refused.to_string().contains("BadDigest"), "{refused}");
    // (S3 then stores nothing; s3s-fs has already renamed the object into place: see
    // src/s3server/gateway.rs.)
    let off = &f.store;
    off.put_object("sha/off", body.into(), &meta(hex::encode(wrong)))
        .await
        .expect("no checksum sent, nothing to check");
    assert_eq!(stored_sha256(off, "sha/off").await, None);
}

/// `full_object_checksum` on a multipart upload: created for a full-object CRC32C, each part
/// sent with its CRC32C (a file range's read ahead of the body), Complete with the object's,
/// combined from the parts' without reading the file again. The store checks the parts and the
/// whole (a wrong one is refused, BadDigest, and the upload stays open) and keeps the object's
/// for `head-object --checksum-mode ENABLED`.
#[tokio::test]
async fn multipart_uploads_carry_a_full_object_crc32c_checked_part_by_part_and_whole() {
    let f = fixture().await;
    let on = AwsStore::new(&S3Config {
        full_object_checksum: true,
        ..f.cfg.clone()
    })
    .unwrap();
    assert!(on.full_object_checksums() && !f.store.full_object_checksums());
    let parts = three_parts();
    let whole: Vec<u8> = parts.concat();
    let id = on
        .create_multipart_upload("crc/obj", &metadata("t"), true)
        .await
        .unwrap();
    let done = upload_parts_with_crc32c(&on, "crc/obj", &id, &parts).await;
    assert_eq!(full_object_crc32c(&done), Some(crc32c::crc32c(&whole)));
    let mut wrong = done.clone();
    wrong[2].crc32c = wrong[2].crc32c.map(|(crc, len)| (crc ^ 1, len));
    let refused = on
        .complete_multipart_upload("crc/obj", &id, &wrong)
        .await
        .expect_err("an object checksum the bytes do not have is refused");
    assert!(refused.to_string().contains("BadDigest"), "{refused}");
    on.complete_multipart_upload("crc/obj", &id, &done)
        .await
        .expect("the upload stayed open; the right checksum completes it");
    let head = head_with_checksums(&on, "crc/obj").await;
    assert_eq!(
        head.checksum_crc32_c.as_deref(),
        Some(base64_simd::STANDARD.encode_to_string(crc32c::crc32c(&whole).to_be_bytes()))
            .as_deref()
    );
    assert_eq!(
        head.checksum_type,
        Some(aws_sdk_s3::types::ChecksumType::FullObject)
    );
    assert!(get(&on, "crc/obj").await == whole);

    a_part_that_is_not_its_crc32c_is_refused(&on).await;
    // Without the setting nothing is sent, and the object has no checksum.
    let id = f
        .store
        .create_multipart_upload("crc/off", &metadata("t"), false)
        .await
        .unwrap();
    let done = upload_parts(&f.store, "crc/off", &id, &parts).await;
    f.store
        .complete_multipart_upload("crc/off", &id, &done)
        .await
        .unwrap();
    assert_eq!(
        head_with_checksums(&f.store, "crc/off")
            .await
            .checksum_crc32_c,
        None
    );
}

/// Uploads `parts` with their CRC32C (the second from a spool-like file, as the drain sends
/// it), checks the CRC32C each answer carries, and returns the completed-part list.
async fn upload_parts_with_crc32c(
    on: &AwsStore,
    key: &str,
    id: &str,
    parts: &[Bytes],
) -> Vec<CompletedPart> {
    let (_tmp, path) = spool_like_file("part2", &parts[1]);
    let mut done = Vec::new();
    for (i, bytes) in parts.iter().enumerate() {
        let number = u32::try_from(i + 1).unwrap();
        let body = match number {
            2 => range(&path, 0, bytes.len()),
            _ => bytes.clone().into(),
        };
        let sent = on
            .upload_part(key, id, number, body, true)
            .await
            .expect("a part with its CRC32C");
        assert_eq!(sent.crc32c, crc32c::crc32c(bytes));
        done.push(CompletedPart {
            number,
            etag: sent.etag,
            crc32c: Some((sent.crc32c, bytes.len() as u64)),
        });
    }
    done
}

/// A part whose bytes do not match its header is refused.
async fn a_part_that_is_not_its_crc32c_is_refused(on: &AwsStore) {
    let id = on
        .create_multipart_upload("crc/bad-part", &metadata("t"), true)
        .await
        .unwrap();
    let refused = on
        .client()
        .upload_part()
        .bucket(on.bucket())
        .key("crc/bad-part")
        .upload_id(&id)
        .part_number(1)
        .checksum_crc32_c("AAAAAA==")
        .body(pattern(1000, 1).into())
        .send()
        .await
        .expect_err("a part that is not its CRC32C is refused");
    assert!(
        format!("{}", aws_sdk_s3::error::DisplayErrorContext(&refused)).contains("BadDigest"),
        "{refused:?}"
    );
}
