//! Receipts and queue in the `.sftpgw` directory, read with the real OpenSSH `sftp` from the
//! real binary, checked against the bucket and `sftpgw report`; across a restart.

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

use std::time::Duration;

use common::{Harness, Options};
use serde_json::Value;

const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

fn receipts_by_path(h: &Harness) -> Vec<(String, Value)> {
    h.cli("report", &["--format", "json"])
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON line");
            (v["path"].as_str().expect("path").to_owned(), v)
        })
        .collect()
}

/// OpenSSH's sftp fetches each receipt under `/.sftpgw/receipts` as the delivery log's line
/// for its file, and lists the virtual folders.
fn check_receipts_over_sftp(h: &Harness, reported: &[(String, Value)]) {
    let (ra, rb) = (h.dir.path().join("ra.json"), h.dir.path().join("rb.json"));
    let listing = h.sftp_ok(
        "alice",
        &format!(
            "get /.sftpgw/receipts/a.txt.json {}\nget /.sftpgw/receipts/d/b.bin.json {}\n\
             ls -1 /.sftpgw/receipts\nls -1a /\nls -1 /.sftpgw\n",
            ra.display(),
            rb.display()
        ),
    );
    for (path, file) in [("/a.txt", &ra), ("/d/b.bin", &rb)] {
        let receipt: Value = serde_json::from_slice(&std::fs::read(file).expect("receipt fetched"))
            .expect("a receipt is JSON");
        let line = &reported
            .iter()
            .find(|(p, _)| p == path)
            .expect("reported")
            .1;
        assert_eq!(
            &receipt, line,
            "{path}: the receipt is the delivery log's line"
        );
    }
    for name in ["a.txt.json", "d", ".sftpgw", "queue.txt", "receipts"] {
        assert!(
            listing.lines().any(|l| l.trim_end().ends_with(name)),
            "{name} not listed:\n{listing}"
        );
    }
}

/// Each receipt names its object as the bucket has it: ETag, size, and a full-object checksum.
async fn check_objects_match_receipts(
    h: &Harness,
    reported: &[(String, Value)],
    small: &[u8],
    big: &[u8],
) {
    for (path, line) in reported {
        let head = h
            .s3_client()
            .head_object()
            .bucket(common::BUCKET)
            .key(line["key"].as_str().expect("key"))
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: object of the receipt: {e}"));
        assert_eq!(
            line["etag"].as_str(),
            head.e_tag().map(|e| e.trim_matches('"'))
        );
        assert_eq!(line["size"].as_i64(), head.content_length());
        // A full-object checksum a cloud team can check with standard tools: the SHA-256 of a
        // single PUT, the CRC32C of a multipart object (combined from its parts').
        let b64 = |bytes: &[u8]| base64_simd::STANDARD.encode_to_string(bytes);
        match path.as_str() {
            "/a.txt" => {
                use sha2::Digest as _;
                assert_eq!(
                    head.checksum_sha256(),
                    Some(b64(&sha2::Sha256::digest(small)).as_str())
                );
            }
            _ => assert_eq!(
                head.checksum_crc32_c(),
                Some(b64(&crc32c::crc32c(big).to_be_bytes()).as_str()),
                "{path}"
            ),
        }
        assert_eq!(
            head.checksum_type(),
            Some(&aws_sdk_s3::types::ChecksumType::FullObject)
        );
    }
}

/// Refused, with OpenSSH's message for SSH_FX_PERMISSION_DENIED; nothing is created.
fn check_the_receipts_folder_is_read_only(h: &Harness, local: &std::path::Path) {
    for batch in [
        format!("put {} /.sftpgw/x.txt\n", local.display()),
        format!("put {} /.sftpgw\n", local.display()),
        "mkdir /.sftpgw\n".to_owned(),
        "rm /.sftpgw/receipts/a.txt.json\n".to_owned(),
        "rename /.sftpgw/queue.txt /q.txt\n".to_owned(),
    ] {
        let out = h.sftp("alice", &batch);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{batch}: accepted");
        assert!(stderr.contains("Permission denied"), "{batch}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_sftp_reads_each_receipt_as_the_report_and_the_bucket_have_it_across_a_restart() {
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    let small = common::data(5_000, 1);
    let big = common::data((6 << 20) + 7, 2);
    let (a, b) = (h.dir.path().join("a.txt"), h.dir.path().join("b.bin"));
    std::fs::write(&a, &small).expect("write");
    std::fs::write(&b, &big).expect("write");
    h.sftp_ok(
        "alice",
        &format!(
            "put {} /a.txt\nmkdir /d\nput {} /d/b.bin\n",
            a.display(),
            b.display()
        ),
    );
    h.wait_drained(DRAIN_TIMEOUT).await;
    let reported = receipts_by_path(&h);
    assert_eq!(reported.len(), 2, "{reported:?}");

    check_receipts_over_sftp(&h, &reported);
    check_objects_match_receipts(&h, &reported, &small, &big).await;
    // The index is rebuilt from the log on start: the receipts are still there.
    h.stop_daemon();
    h.start_daemon();
    check_receipts_over_sftp(&h, &reported);
    check_the_receipts_folder_is_read_only(&h, &a);
    assert_eq!(h.status().await.files.len(), 2, "nothing new in the spool");
}
