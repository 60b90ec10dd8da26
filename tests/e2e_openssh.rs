//! End to end with the real OpenSSH `sftp` client against the real `sftpgw` binary and the
//! embedded S3 server: every object is compared byte for byte through the S3 API.

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

use std::time::{Duration, Instant};

use common::{Harness, Options, PREFIX, data};
use sftpgw::spool::FileState;

fn write_local(h: &Harness, name: &str, bytes: &[u8]) -> String {
    let p = h.dir.path().join(name);
    std::fs::write(&p, bytes).expect("write local file");
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_mkdir_ls_rename_rm_nested_and_objects_match_byte_for_byte() {
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    let sizes: [(usize, &str); 5] = [
        (0, "empty.bin"),
        (1, "one.bin"),
        (3 << 20, "three.bin"),
        ((5 << 20) + 1, "five-plus.bin"),
        (12 << 20, "twelve.bin"),
    ];
    let mut batch = String::from("mkdir in\nmkdir in/deep\nmkdir in/deep/er\n");
    for (i, (len, name)) in sizes.iter().enumerate() {
        let local = write_local(&h, name, &data(*len, i as u64));
        batch.push_str(&format!("put {local} in/deep/er/{name}\n"));
    }
    let gone = write_local(&h, "gone.bin", &data(1000, 99));
    batch.push_str(&format!("put {gone} in/gone.bin\nrm in/gone.bin\n"));
    batch.push_str("rename in/deep/er/one.bin in/renamed.bin\nls -l in/deep/er\n");
    // A sealed file starts uploading at once, and a delivered one can no longer be renamed:
    // the drain is paused during the batch so that rm and rename act on pending files.
    h.drain_cli(&["pause"]);
    let out = h.sftp_ok("alice", &batch);
    h.drain_cli(&["resume"]);
    let listing = out
        .split("sftp> ls -l in/deep/er")
        .nth(1)
        .unwrap_or_default();
    assert!(listing.contains("twelve.bin"), "ls shows the files: {out}");
    assert!(
        !listing.contains("one.bin"),
        "renamed file gone from the old directory: {out}"
    );

    let s = h.wait_drained(Duration::from_secs(60)).await;
    assert!(
        s.files.iter().all(|f| f.state == FileState::Delivered),
        "{s:#?}"
    );
    for (i, (len, name)) in sizes.iter().enumerate() {
        let key = if *name == "one.bin" {
            format!("{PREFIX}alice/in/renamed.bin")
        } else {
            format!("{PREFIX}alice/in/deep/er/{name}")
        };
        let got = h
            .get_object(&key)
            .await
            .unwrap_or_else(|| panic!("{key} missing; log:\n{}", h.log()));
        assert_eq!(got.len(), *len, "{key}");
        assert!(got == data(*len, i as u64), "{key} differs");
    }
    let keys = h.list_keys().await;
    assert!(
        !keys.iter().any(|k| k.contains("gone.bin")),
        "removed before delivery or delivered then removed: {keys:?}"
    );
    assert!(
        !keys.iter().any(|k| k.ends_with("er/one.bin")),
        "renamed file not under its old key: {keys:?}"
    );
    assert!(
        h.spool_files().is_empty(),
        "spool copies freed: {:?}",
        h.spool_files()
    );

    // Listings survive a restart, and delivered files stay listed.
    h.stop_daemon();
    h.start_daemon();
    let out = h.sftp_ok("alice", "ls -l in/deep/er\n");
    assert!(
        out.contains("twelve.bin") && out.contains("three.bin"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_files_in_one_session_and_several_sessions_at_once() {
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    let mut handles = Vec::new();
    for (u, user) in ["alice", "bob"].iter().enumerate() {
        for s in 0..2 {
            let mut batch = format!("-mkdir s{s}\n");
            for f in 0..20 {
                let name = format!("{user}-{s}-{f}.txt");
                let local = write_local(
                    &h,
                    &name,
                    &data(1000 + f * 37, (u * 100 + s * 20 + f) as u64),
                );
                batch.push_str(&format!("put {local} s{s}/{name}\n"));
            }
            let cmd_out = {
                let mut child = h.sftp_command(user).spawn().expect("sftp");
                let mut stdin = child.stdin.take().expect("stdin");
                std::thread::spawn(move || {
                    use std::io::Write;
                    let _ = stdin.write_all(batch.as_bytes());
                });
                child
            };
            handles.push(cmd_out);
        }
    }
    for child in handles {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    h.wait_drained(Duration::from_secs(60)).await;
    for (u, user) in ["alice", "bob"].iter().enumerate() {
        for s in 0..2 {
            for f in 0..20 {
                let name = format!("{user}-{s}-{f}.txt");
                let key = format!("{PREFIX}{user}/s{s}/{name}");
                let got = h
                    .get_object(&key)
                    .await
                    .unwrap_or_else(|| panic!("{key} missing"));
                assert!(
                    got == data(1000 + f * 37, (u * 100 + s * 20 + f) as u64),
                    "{key} differs"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_outside_the_jail_is_permission_denied() {
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    let local = write_local(&h, "x.bin", b"x");
    let out = h.sftp("alice", &format!("put {local} ../../etc/evil\n"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Permission denied"), "{stderr}");
    let out = h.sftp("alice", "ls /../bob\n");
    assert!(!out.status.success());
    // Another user's files are not visible: each user's root is their own.
    h.sftp_ok("bob", &format!("put {local} secret.bin\n"));
    let out = h.sftp_ok("alice", "ls -1\n");
    assert!(!out.contains("secret.bin"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_refuses_an_existing_target_and_posix_rename_overwrites() {
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    let a = write_local(&h, "a.bin", &data(100, 1));
    let b = write_local(&h, "b.bin", &data(200, 2));
    // `rename -l` forces the plain SFTP rename, which refuses an existing target (the leading
    // `-` lets the batch go on); plain `rename` uses posix-rename@openssh.com, which replaces it.
    // The drain is paused meanwhile, so that the renames find the files still pending (a
    // delivered file cannot be renamed).
    h.drain_cli(&["pause"]);
    let out = h.sftp(
        "alice",
        &format!("put {a} a\nput {b} b\n-rename -l a b\nls -1\nrename a b\nls -1\n"),
    );
    h.drain_cli(&["resume"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("remote rename"),
        "the plain rename was refused: {stderr}"
    );
    let listings: Vec<&str> = stdout.split("sftp> ls -1").skip(1).collect();
    assert!(
        listings[0].lines().any(|l| l.trim() == "a"),
        "a still there after the refused rename: {stdout}"
    );
    assert!(
        !listings[1].lines().any(|l| l.trim() == "a"),
        "a gone after posix-rename: {stdout}"
    );
    h.wait_drained(Duration::from_secs(30)).await;
    assert_eq!(
        h.get_object(&format!("{PREFIX}alice/b")).await.expect("b"),
        data(100, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reput_resumes_a_partial_file_which_is_never_uploaded_before_close() {
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    let len = 48 << 20;
    let full = write_local(&h, "big.bin", &data(len, 7));
    // Start a put and kill the client while it is sending.
    let mut child = h.sftp_command("alice").spawn().expect("sftp");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(format!("put {full} big.bin\n").as_bytes())
            .expect("batch");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = h.status().await;
        if s.files
            .iter()
            .any(|f| f.state == FileState::Receiving && f.size > 0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "upload never started: {s:#?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    let partial_size = loop {
        let s = h.status().await;
        if let Some(f) = s
            .files
            .iter()
            .find(|f| f.path == "/big.bin" && f.state == FileState::Partial)
        {
            break f.size;
        }
        if s.files
            .iter()
            .any(|f| f.path == "/big.bin" && f.state != FileState::Receiving)
        {
            // The client finished before the kill: nothing to resume, test is inconclusive.
            panic!("upload finished before it could be interrupted: {s:#?}");
        }
        assert!(
            Instant::now() < deadline,
            "file did not become partial: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(partial_size < len as u64);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        h.list_keys().await.is_empty(),
        "a partial file is never uploaded"
    );
    // A restart keeps it partial.
    h.kill_daemon();
    h.start_daemon();
    let s = h.status().await;
    assert!(
        s.files
            .iter()
            .any(|f| f.path == "/big.bin" && f.state == FileState::Partial),
        "{s:#?}"
    );
    h.sftp_ok("alice", &format!("reput {full} big.bin\n"));
    h.wait_drained(Duration::from_secs(60)).await;
    let got = h
        .get_object(&format!("{PREFIX}alice/big.bin"))
        .await
        .expect("object");
    assert!(got == data(len, 7), "resumed object differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_shows_states_as_text_and_json() {
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    let local = write_local(&h, "s.bin", &data(10_000, 3));
    h.sftp_ok("alice", &format!("put {local} s.bin\n"));
    h.wait_drained(Duration::from_secs(30)).await;
    let bin = env!("CARGO_BIN_EXE_sftpgw");
    let out = std::process::Command::new(bin)
        .args(["status", "--json", "--config"])
        .arg(&h.config_path)
        .output()
        .expect("status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["files"][0]["state"], "delivered");
    assert_eq!(v["files"][0]["path"], "/s.bin");
    let out = std::process::Command::new(bin)
        .args(["status", "--all", "--config"])
        .arg(&h.config_path)
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("delivered 1") && text.contains("/s.bin"),
        "{text}"
    );
    h.stop_daemon();
    let out = std::process::Command::new(bin)
        .args(["status", "--config"])
        .arg(&h.config_path)
        .output()
        .expect("status");
    // Down: the status comes from the journal, and the exit code says so (5).
    assert_eq!(out.status.code(), Some(5), "daemon not running → exit 5");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DAEMON NOT RUNNING"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_is_shown_in_status_and_retry_delivers_once_it_is_fixed() {
    let h = Harness::started_without_its_bucket().await;
    let local = write_local(&h, "f.bin", &data(70_000, 11));
    h.sftp_ok("alice", &format!("put {local} f.bin\n"));
    let failed = h.wait_failed(Duration::from_secs(30)).await;
    assert!(
        failed
            .error
            .as_deref()
            .unwrap_or("")
            .contains("NoSuchBucket"),
        "{failed:?}"
    );
    let bin = env!("CARGO_BIN_EXE_sftpgw");
    let text = std::process::Command::new(bin)
        .args(["status", "--config"])
        .arg(&h.config_path)
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("FAILED") && text.contains("NoSuchBucket"),
        "{text}"
    );
    assert!(
        !h.spool_files().is_empty(),
        "a failed file keeps its spool copy"
    );
    // Someone creates the bucket; an operator retries.
    h.create_missing_bucket().await;
    let out = std::process::Command::new(bin)
        .args(["retry", "--config"])
        .arg(&h.config_path)
        .output()
        .expect("retry");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 failed file"));
    let s = h.wait_drained(Duration::from_secs(30)).await;
    assert_eq!(s.files[0].state, FileState::Delivered, "{s:#?}");
    let got = h
        .s3_client()
        .get_object()
        .bucket(common::MISSING_BUCKET)
        .key(format!("{PREFIX}alice/f.bin"))
        .send()
        .await
        .expect("get")
        .body
        .collect()
        .await
        .expect("body")
        .into_bytes();
    assert!(got.to_vec() == data(70_000, 11));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_still_arriving_from_openssh_drains_before_close() {
    use sftpgw::s3server::ServerOp;
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    let bytes = data(24 << 20, 31);
    let local = write_local(&h, "slow.bin", &bytes);
    // `-l 40000` (Kbit/s, about 5 MB/s): the put takes about 5 s, long enough for the drain
    // to see the first parts arrive.
    let mut child = h
        .sftp_command_with("alice", &["-l", "40000"])
        .spawn()
        .expect("sftp");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(format!("put {local} slow.bin\n").as_bytes())
            .expect("batch");
    }
    let out = child.wait_with_output().expect("sftp");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parts_before_close = h.s3.stats().requests(ServerOp::UploadPart);
    assert!(
        parts_before_close >= 2,
        "only {parts_before_close} parts reached S3 while the file arrived\n{}",
        h.log()
    );
    let s = h.wait_drained(Duration::from_secs(60)).await;
    assert!(
        s.files.iter().all(|f| f.state == FileState::Delivered),
        "{s:#?}"
    );
    let got = h
        .get_object(&format!("{PREFIX}alice/slow.bin"))
        .await
        .expect("object");
    assert!(got == bytes, "object differs");
    assert_eq!(
        h.s3.stats().requests(ServerOp::UploadPart),
        5,
        "24 MiB in 5 MiB parts, each sent once"
    );
}
