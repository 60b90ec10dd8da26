//! The kill test: the daemon is killed with SIGKILL at random moments during the upload and the
//! drain of a mixed workload, and restarted each time. At the end every acknowledged file is in
//! S3 byte-exact, exactly once; no multipart upload is left open; the spool is empty; and the
//! bytes sent again after each kill are at most `concurrency × part_size`.
//!
//! The seed is printed; `SFTPGW_KILL_SEED=<seed>` replays a run.

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

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Harness, Options, PREFIX, data};
use rand::{Rng, SeedableRng};
use sftpgw::drain::store::ObjectStore;
use sftpgw::spool::FileState;

const KILLS: usize = 20;
const PART_SIZE: u64 = 5 << 20;
const CONCURRENCY: u64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_random_moments_every_acknowledged_file_arrives_exactly_once() {
    let seed = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut h = Harness::new(Options {
        part_size: "5MiB",
        concurrency: CONCURRENCY as usize,
        ..Options::default()
    })
    .await;
    // Slow the S3 side down so that kills also land in the middle of the drain.
    h.s3.stats().set_upload_bytes_per_sec(Some(40 << 20));
    let workload = write_workload(&h, seed);
    let total_bytes: u64 = workload.values().map(|v| v.len() as u64).sum();

    // Files the sftp client saw acknowledged: the daemon must never lose one of them.
    let mut client_acked: BTreeSet<String> = BTreeSet::new();
    // Parts sent early for files left partial by a kill that the client then uploads again
    // with `put` (a new version): sent for nothing, by the client's choice.
    let mut abandoned_early_bytes = 0u64;
    for kill in 0..KILLS {
        abandoned_early_bytes +=
            upload_and_kill(&mut h, &mut rng, &workload, &mut client_acked, (seed, kill)).await;
    }
    let sent_before_final = h.s3.stats().upload_bytes();

    abandoned_early_bytes += finish_without_kills(&mut h, &workload, seed).await;
    check_bucket_and_spool(&h, &workload, seed).await;
    check_delivery_log(&h, &workload, seed);

    let sent = h.s3.stats().upload_bytes();
    print_requests(&h, seed);
    let resend_bound = KILLS as u64 * CONCURRENCY * PART_SIZE;
    println!(
        "seed {seed}: {total_bytes} bytes in the workload, {sent} received by S3 ({sent_before_final} before the final run), {abandoned_early_bytes} in early parts of abandoned partial files"
    );
    assert!(
        sent <= total_bytes + resend_bound + abandoned_early_bytes,
        "seed {seed}: {sent} bytes sent for {total_bytes} bytes of files: more than {KILLS} kills × {CONCURRENCY} × {PART_SIZE} again (plus {abandoned_early_bytes} of abandoned early parts)"
    );
    h.stop_daemon();
}

/// `SFTPGW_KILL_SEED`, or a random seed; printed either way.
fn seed() -> u64 {
    let seed: u64 = std::env::var("SFTPGW_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().r#gen());
    println!("kill test seed: {seed} (replay with SFTPGW_KILL_SEED={seed})");
    seed
}

/// The mixed workload (path → bytes), each file also written to the harness directory for the
/// client to put.
fn write_workload(h: &Harness, seed: u64) -> BTreeMap<String, Vec<u8>> {
    let m = 5usize << 20;
    let sizes = [0, 1, m - 1, m + 1, 40 << 20];
    let mut workload: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (i, len) in sizes.iter().enumerate() {
        workload.insert(format!("a/b/c/f{i}.bin"), data(*len, seed ^ i as u64));
        workload.insert(format!("d/f{i}.bin"), data(*len, seed ^ (100 + i) as u64));
    }
    for (path, bytes) in &workload {
        let local = h.dir.path().join(path.replace('/', "_"));
        std::fs::write(local, bytes).expect("write local");
    }
    workload
}

/// Paths of the files the daemon holds for good (sealed, uploading or delivered).
fn durable_paths(status: &sftpgw::status::Snapshot) -> BTreeSet<String> {
    status
        .files
        .iter()
        .filter(|f| {
            matches!(
                f.state,
                FileState::Sealed | FileState::Uploading | FileState::Delivered
            )
        })
        .map(|f| f.path.trim_start_matches('/').to_owned())
        .collect()
}

/// An sftp batch that makes the directories and puts `paths` from their local copies.
fn put_batch(h: &Harness, paths: &[&String]) -> String {
    let mut batch = String::from("-mkdir a\n-mkdir a/b\n-mkdir a/b/c\n-mkdir d\n");
    for p in paths {
        let local = h.dir.path().join(p.replace('/', "_"));
        batch.push_str(&format!("put {} {p}\n", local.display()));
    }
    batch
}

/// One round: starts the daemon, checks that no acknowledged file was lost, puts what is not
/// durable yet, and kills the daemon at a random moment. Records the puts the client saw
/// acknowledged and returns the early bytes of abandoned partial files.
async fn upload_and_kill(
    h: &mut Harness,
    rng: &mut rand::rngs::StdRng,
    workload: &BTreeMap<String, Vec<u8>>,
    client_acked: &mut BTreeSet<String>,
    (seed, kill): (u64, usize),
) -> u64 {
    h.start_daemon();
    let status = h.status().await;
    let durable = durable_paths(&status);
    let lost: Vec<&String> = client_acked.difference(&durable).collect();
    assert!(
        lost.is_empty(),
        "seed {seed}: acknowledged files lost after kill {kill}: {lost:?}\n{status:#?}"
    );

    let remaining: Vec<&String> = workload.keys().filter(|p| !durable.contains(*p)).collect();
    let abandoned = abandoned_early_parts(&status, &remaining) * PART_SIZE;
    let client = if remaining.is_empty() {
        None
    } else {
        let batch = put_batch(h, &remaining);
        let mut child = h.sftp_command("alice").spawn().expect("sftp");
        let mut stdin = child.stdin.take().expect("stdin");
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(batch.as_bytes());
        });
        Some(child)
    };
    tokio::time::sleep(Duration::from_millis(rng.gen_range(0..1200))).await;
    h.kill_daemon();
    if let Some(child) = client {
        let out = child.wait_with_output().expect("sftp output");
        client_acked.extend(acknowledged_puts(&out));
    }
    abandoned
}

/// The paths of the puts an interrupted `sftp -b` batch completed. sftp -b echoes each
/// command before running it: every put echoed before the last echoed command completed (and
/// the last one too if the batch succeeded).
fn acknowledged_puts(out: &std::process::Output) -> Vec<String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let puts: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("sftp> "))
        .map(|c| c.to_owned())
        .collect();
    let done = if out.status.success() {
        puts.len()
    } else {
        puts.len().saturating_sub(1)
    };
    puts[..done]
        .iter()
        .filter_map(|cmd| cmd.strip_prefix("put ").and_then(|c| c.split(' ').nth(1)))
        .map(str::to_owned)
        .collect()
}

/// Starts the daemon a last time, uploads whatever was never acknowledged, and drains without
/// kills. Returns the early bytes of abandoned partial files.
async fn finish_without_kills(
    h: &mut Harness,
    workload: &BTreeMap<String, Vec<u8>>,
    seed: u64,
) -> u64 {
    h.start_daemon();
    let s = h.wait_drained(Duration::from_secs(120)).await;
    let durable = durable_paths(&s);
    let missing: Vec<&String> = workload.keys().filter(|p| !durable.contains(*p)).collect();
    let abandoned = abandoned_early_parts(&s, &missing) * PART_SIZE;
    if !missing.is_empty() {
        h.sftp_ok("alice", &put_batch(h, &missing));
    }
    let s = h.wait_drained(Duration::from_secs(120)).await;
    assert!(
        s.files.iter().all(|f| f.state == FileState::Delivered),
        "seed {seed}: {s:#?}"
    );
    abandoned
}

/// Every file is in the bucket byte-exact, exactly once; no multipart upload is left open; the
/// spool is empty.
async fn check_bucket_and_spool(h: &Harness, workload: &BTreeMap<String, Vec<u8>>, seed: u64) {
    for (path, bytes) in workload {
        let key = format!("{PREFIX}alice/{path}");
        let got = h
            .get_object(&key)
            .await
            .unwrap_or_else(|| panic!("seed {seed}: {key} missing\n{}", h.log()));
        assert!(
            got == *bytes,
            "seed {seed}: {key} differs ({} vs {} bytes)",
            got.len(),
            bytes.len()
        );
    }
    let keys = h
        .s3_client()
        .list_objects_v2()
        .bucket(common::BUCKET)
        .send()
        .await
        .expect("list");
    assert_eq!(
        keys.contents().len(),
        workload.len(),
        "seed {seed}: exactly one object per file"
    );

    let store =
        sftpgw::drain::aws::AwsStore::new(&sftpgw::s3server::test_s3_config(&h.s3)).expect("store");
    let open = store
        .list_multipart_uploads("")
        .await
        .expect("list uploads");
    assert!(
        open.is_empty(),
        "seed {seed}: multipart uploads left open: {open:?}"
    );
    assert!(
        h.spool_files().is_empty(),
        "seed {seed}: spool not empty: {:?}",
        h.spool_files()
    );
}

/// The delivery log holds every delivered file, each once, however the kills fell.
fn check_delivery_log(h: &Harness, workload: &BTreeMap<String, Vec<u8>>, seed: u64) {
    let report = h.cli("report", &["--format", "json"]);
    let mut logged: Vec<String> = report
        .lines()
        .map(|l| {
            serde_json::from_str::<sftpgw::spool::deliveries::Delivery>(l)
                .expect("a delivery")
                .path
        })
        .collect();
    logged.sort();
    let mut expected: Vec<String> = workload.keys().map(|p| format!("/{p}")).collect();
    expected.sort();
    // A file put again after a kill lost it is a second delivery of its path.
    logged.dedup();
    assert_eq!(logged, expected, "seed {seed}: the delivery log");
}

fn print_requests(h: &Harness, seed: u64) {
    use sftpgw::s3server::ServerOp::*;
    let st = h.s3.stats();
    println!(
        "seed {seed}: requests: put {} create {} part {} complete {} abort {} head {}",
        st.requests(PutObject),
        st.requests(CreateMultipartUpload),
        st.requests(UploadPart),
        st.requests(CompleteMultipartUpload),
        st.requests(AbortMultipartUpload),
        st.requests(HeadObject)
    );
}

/// Parts already sent (early) of the files in `paths` that are partial in `status`.
fn abandoned_early_parts(status: &sftpgw::status::Snapshot, paths: &[&String]) -> u64 {
    status
        .files
        .iter()
        .filter(|f| f.state == FileState::Partial)
        .filter(|f| {
            paths
                .iter()
                .any(|p| f.path.trim_start_matches('/') == p.as_str())
        })
        .map(|f| f.parts_done)
        .sum()
}
