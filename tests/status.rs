//! Status, metrics and logs of a real daemon: `sftpgw status` when the daemon is down, a
//! Prometheus scrape over loopback, the lifecycle log lines, secrets kept out of logs, and the
//! clock skew read from the embedded S3 server's `Date` header.

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

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Harness, Options, free_port};
use sftpgw::drain::aws::AwsStore;
use sftpgw::s3server::test_s3_config;
use sftpgw::spool::FileState;
use sftpgw::status::{HealthLevel, Snapshot, SnapshotSource};

fn status_command(h: &Harness, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sftpgw"))
        .arg("status")
        .arg("--config")
        .arg(&h.config_path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run sftpgw status")
}

fn put(h: &Harness, user: &str, name: &str, bytes: &[u8]) {
    let local = h.dir.path().join(name);
    std::fs::write(&local, bytes).expect("write local file");
    h.sftp_ok(user, &format!("put {} /{name}\n", local.display()));
}

/// `GET path` over loopback; returns (status line, body).
fn http_get(port: u16, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect metrics");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// The value of the sample line starting with `name ` (labels included in `name`).
fn sample(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{body}"))
        .trim()
        .parse()
        .expect("a number")
}

/// Waits (30 s at most) until every file the daemon knows has failed.
async fn wait_all_failed(h: &Harness) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while h
        .status()
        .await
        .files
        .iter()
        .any(|f| f.state != FileState::Failed)
    {
        assert!(
            Instant::now() < deadline,
            "files did not fail:\n{}",
            h.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With the daemon down, `status` reads the journal (without changing it), says so and exits 5.
fn check_status_from_the_journal(h: &Harness, journal: &Path) {
    let before = std::fs::read(journal).expect("journal");
    let out = status_command(h, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(5),
        "daemon down → exit 5\n{text}\n{stderr}"
    );
    assert!(text.contains("DAEMON NOT RUNNING"), "{text}");
    assert!(
        text.contains("HEALTH   FAILING: daemon not running"),
        "{text}"
    );
    assert!(
        text.contains("alice:/pending-report.csv") && text.contains("bob:/second.bin"),
        "files from the journal: {text}"
    );
    assert!(text.contains("QUEUE    2 file(s)"), "{text}");
    assert!(stderr.contains("not running"), "{stderr}");
    for line in text.lines() {
        assert!(line.chars().count() <= 80, "{line}");
    }
    let json = status_command(h, &["--json"]);
    assert_eq!(json.status.code(), Some(5));
    let snap: Snapshot = serde_json::from_slice(&json.stdout).expect("status --json");
    assert_eq!(snap.source, SnapshotSource::Journal);
    assert_eq!(snap.files.len(), 2);
    assert_eq!(
        std::fs::read(journal).expect("journal"),
        before,
        "journal untouched"
    );
}

/// `--watch` redraws in place every second (cursor home + clear), daemon or not.
fn check_watch_redraws(h: &Harness) {
    let mut watch = Command::new(env!("CARGO_BIN_EXE_sftpgw"))
        .args(["status", "--watch", "--config"])
        .arg(&h.config_path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("status --watch");
    std::thread::sleep(Duration::from_millis(2500));
    let _ = watch.kill();
    let out = watch.wait_with_output().expect("watch output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.matches("\x1b[H\x1b[2J").count() >= 2,
        "redrawn at least twice: {text:?}"
    );
    assert!(text.contains("DAEMON NOT RUNNING"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reads_the_journal_when_the_daemon_is_down_and_exits_5() {
    // A bucket that does not exist: the file fails permanently and stays pending.
    let mut h = Harness::new(Options {
        bucket: "no-such-bucket",
        ..Options::default()
    })
    .await;
    h.start_daemon();
    put(&h, "alice", "pending-report.csv", &common::data(100_000, 1));
    put(&h, "bob", "second.bin", &common::data(2000, 2));
    wait_all_failed(&h).await;
    let running = status_command(&h, &[]);
    assert!(running.status.success());
    let text = String::from_utf8_lossy(&running.stdout);
    assert!(
        text.contains("HEALTH   DEGRADED: 2 failed file(s)"),
        "{text}"
    );

    h.stop_daemon();
    let journal = h.spool_dir.join("journal");
    check_status_from_the_journal(&h, &journal);
    check_watch_redraws(&h);

    // No journal at all (wrong spool): exit 4, the daemon cannot be reached.
    std::fs::remove_file(&journal).expect("rm journal");
    let out = status_command(&h, &[]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_scraped_over_http_and_change_after_an_upload() {
    let mut h = Harness::new(Options::default()).await;
    let port = free_port();
    let mut config = std::fs::read_to_string(&h.config_path).expect("config");
    config.push_str(&format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    std::fs::write(&h.config_path, config).expect("config");
    h.start_daemon();
    let (status, before) = http_get(port, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{before}");
    assert_eq!(sample(&before, "sftpgw_files_delivered_total"), 0.0);
    assert_eq!(sample(&before, "sftpgw_sftp_received_bytes_total"), 0.0);

    let bytes = common::data(6 << 20, 3);
    put(&h, "alice", "big.bin", &bytes);
    h.wait_drained(Duration::from_secs(60)).await;
    // The counters move just after the state does.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let (_, body) = http_get(port, "/metrics");
        if sample(&body, "sftpgw_files_delivered_total") >= 1.0 || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        sample(&after, "sftpgw_files_delivered_total"),
        1.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "sftpgw_sftp_received_bytes_total"),
        bytes.len() as f64
    );
    assert!(sample(&after, "sftpgw_s3_sent_bytes_total") >= bytes.len() as f64);
    assert_eq!(sample(&after, "sftpgw_files{state=\"delivered\"}"), 1.0);
    assert_eq!(sample(&after, "sftpgw_queue_files"), 0.0);
    assert_eq!(sample(&after, "sftpgw_health"), 0.0, "{after}");
    assert_eq!(sample(&after, "sftpgw_s3_reachable"), 1.0);
    assert!(sample(&after, "sftpgw_s3_clock_skew_seconds").abs() < 2.0);
    let fill = sample(&after, "sftpgw_spool_fill_ratio");
    assert!((0.0..=1.0).contains(&fill), "{fill}");
    assert!(after.contains("# TYPE sftpgw_errors counter"), "{after}");

    let (status, _) = http_get(port, "/other");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    // An oversized request head is refused, not buffered.
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let _ =
        s.write_all(format!("GET /metrics HTTP/1.1\r\nX: {}\r\n", "a".repeat(20_000)).as_bytes());
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_lifecycle_event_logs_one_line_with_its_fields() {
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    let bytes = common::data(70_000, 4);
    put(&h, "alice", "life.txt", &bytes);
    h.wait_drained(Duration::from_secs(60)).await;
    // The delivered line follows the state change that `wait_drained` sees.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !h.log().contains("event=\"delivered\"") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = h.log();
    let line = |event: &str| {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("event=\"{event}\"")))
            .collect();
        assert_eq!(lines.len(), 1, "one {event} line:\n{log}");
        lines[0].to_owned()
    };
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let sealed = line("sealed");
    for want in [
        "user=alice",
        "path=/life.txt",
        "size=70000",
        &format!("sha256={sha}"),
    ] {
        assert!(sealed.contains(want), "{want} in {sealed}");
    }
    let started = line("upload_started");
    assert!(started.contains("key=\"site/alice/life.txt\""), "{started}");
    let delivered = line("delivered");
    for want in [
        "user=alice",
        "path=/life.txt",
        "key=\"site/alice/life.txt\"",
        "size=70000",
        "duration_ms=",
    ] {
        assert!(delivered.contains(want), "{want} in {delivered}");
    }
}

const SECRET_S3_KEY: &str = "Sekr1t-S3-Key-zq9XyW";
const PASSWORD: &str = "pw-Orange-Tractor-417";

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_appear_in_logs_or_status() {
    let mut h = Harness::new(Options::default()).await;
    let hash = common::password_hash(PASSWORD);
    // A wrong S3 secret: every S3 call fails (signature mismatch), with the secret in hand.
    let config = std::fs::read_to_string(&h.config_path)
        .expect("config")
        .replace(
            &format!("secret_access_key = \"{}\"", common::SECRET_KEY),
            &format!("secret_access_key = \"{SECRET_S3_KEY}\""),
        )
        .replacen(
            "name = \"alice\"\n",
            &format!("name = \"alice\"\npassword_hash = \"{hash}\"\n"),
            1,
        );
    assert!(config.contains(SECRET_S3_KEY) && config.contains(&hash));
    std::fs::write(&h.config_path, config).expect("config");
    h.start_daemon_with_env(&[("SFTPGW_LOG", std::ffi::OsStr::new("trace"))]);

    // Log in with the password (askpass answers it), and once with a wrong one.
    let askpass = askpass_script(&h, "askpass.sh", PASSWORD);
    let wrong = askpass_script(&h, "wrong.sh", &format!("{PASSWORD}x"));
    let local = h.dir.path().join("s.bin");
    std::fs::write(&local, common::data(1000, 5)).expect("local");
    let ok = password_login(&h, &askpass, &local);
    assert!(
        ok.status.success(),
        "password login: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let refused = password_login(&h, &wrong, &local);
    assert!(!refused.status.success());

    wait_s3_failure(&h).await;
    let json = status_command(&h, &["--json", "--all"]);
    let text = status_command(&h, &["--all"]);
    h.stop_daemon();
    let log = h.log();
    assert!(
        log.contains("login") && log.contains("failed permanently"),
        "{log}"
    );
    for (what, out) in [
        ("log", log.as_bytes()),
        ("status --json", &json.stdout[..]),
        ("status", &text.stdout[..]),
    ] {
        let out = String::from_utf8_lossy(out);
        for secret in [SECRET_S3_KEY, PASSWORD] {
            assert!(
                !out.contains(secret),
                "{secret} appears in the {what}:\n{out}"
            );
        }
    }
}

/// An SSH_ASKPASS script in the harness directory that answers `answer`.
fn askpass_script(h: &Harness, name: &str, answer: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = h.dir.path().join(name);
    std::fs::write(&script, format!("#!/bin/sh\necho '{answer}'\n")).expect("askpass");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

/// Puts `local` as alice, logging in with the password `script` answers (one try).
fn password_login(h: &Harness, script: &Path, local: &Path) -> Output {
    let mut child = Command::new("sftp")
        .args(["-P", &h.sftp_port.to_string()])
        .args(common::NO_HOST_KEY_CHECK)
        .args([
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password",
            "-o",
            "NumberOfPasswordPrompts=1",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg("alice@127.0.0.1")
        .env("SSH_ASKPASS", script)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sftp");
    writeln!(
        child.stdin.take().expect("stdin"),
        "put {} /s.bin",
        local.display()
    )
    .expect("batch");
    child.wait_with_output().expect("sftp")
}

/// Waits (30 s at most) until some file failed; the health is then not OK.
async fn wait_s3_failure(h: &Harness) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = h.status().await;
        if s.files.iter().any(|f| f.state == FileState::Failed) {
            assert_ne!(s.health.level, HealthLevel::Ok);
            break;
        }
        assert!(Instant::now() < deadline, "no S3 failure:\n{}", h.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_clock_skew_of_the_embedded_s3_server_is_about_zero() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = common::s3::start(dir.path()).await;
    let store = AwsStore::new(&test_s3_config(&server)).expect("store");
    let skew = store.observer().subscribe_skew();
    assert_eq!(store.observer().skew(), None);
    store.probe().await.expect("HeadBucket");
    assert!(
        skew.has_changed().expect("open"),
        "a response updates the skew"
    );
    let s = store.observer().skew().expect("measured");
    assert!(s.skew_secs.abs() < 1.5, "same clock, skew {}", s.skew_secs);
    assert_eq!(store.observer().reachability().reachable, Some(true));

    // A server that is gone: unreachable, with the transport error.
    let cfg = test_s3_config(&server);
    drop(server);
    let gone = AwsStore::new(&cfg).expect("store");
    assert!(gone.probe().await.is_err());
    assert_eq!(gone.observer().reachability().reachable, Some(false));
    assert!(gone.observer().reachability().last_error.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_counts_while_open_and_partial_and_expired_files_log_their_lines() {
    let mut h = Harness::new(Options {
        partial_ttl: "2s",
        ..Options::default()
    })
    .await;
    h.start_daemon();
    let local = h.dir.path().join("slow.bin");
    std::fs::write(&local, common::data(4 << 20, 6)).expect("local");
    // About 1 MB/s (`-l` is in Kbit/s): the put lasts seconds; kill the client meanwhile.
    let mut child = h
        .sftp_command_with("alice", &["-l", "8000"])
        .spawn()
        .expect("sftp");
    writeln!(
        child.stdin.take().expect("stdin"),
        "put {} /slow.bin",
        local.display()
    )
    .expect("batch");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = h.status().await;
        let receiving = s
            .files
            .iter()
            .any(|f| f.state == FileState::Receiving && f.size > 0);
        if receiving && s.sftp_sessions == 1 && s.rates.ingest_bytes_per_sec > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no session receiving: {s:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = h.log();
        let has = |event: &str| {
            log.lines().any(|l| {
                l.contains(&format!("event=\"{event}\""))
                    && l.contains("user=alice")
                    && l.contains("path=/slow.bin")
            })
        };
        if has("partial") && has("expired") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no partial and expired lines:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(h.status().await.sftp_sessions, 0, "the session is gone");
}

#[tokio::test]
async fn the_control_socket_is_group_only_and_refuses_an_endless_request_line() {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    let mode = std::fs::metadata(&h.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "mode {mode:o}");
    // A line that never ends: answered with an error once the limit is passed, then closed.
    let mut stream = std::os::unix::net::UnixStream::connect(&h.socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let chunk = vec![b'x'; 64 * 1024];
    let mut written = 0;
    // The daemon stops reading at the limit: writes beyond the socket buffers may fail.
    while written < 1024 * 1024 {
        match stream.write(&chunk) {
            Ok(n) => written += n,
            Err(_) => break,
        }
        if written > 256 * 1024 {
            break;
        }
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.contains("request too long"), "{answer:?}");
    // The daemon goes on answering.
    let snapshot = h.status().await;
    assert!(!snapshot.version.is_empty());
}

/// `sftpgw files` pages a list longer than a status snapshot and a control-socket page:
/// 1 200 waiting files come out in full, in id order, each once; `--limit` and `--after` cut
/// and resume the listing; status counts them all and points at `sftpgw files`.
#[tokio::test(flavor = "multi_thread")]
async fn files_lists_every_waiting_file_page_by_page_and_resumes_after_an_id() {
    const FILES: usize = 1200;
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    h.drain_cli(&["pause"]);
    let local = h.dir.path().join("one.txt");
    std::fs::write(&local, b"one small page\n").expect("local");
    let batch: String = (0..FILES)
        .map(|i| format!("put {} /f{i:05}.txt\n", local.display()))
        .collect();
    h.sftp_ok("alice", &batch);

    let json = h.cli("files", &["--state", "sealed", "--json"]);
    let listed: Vec<sftpgw::status::FileStatus> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON file per line"))
        .collect();
    assert_eq!(listed.len(), FILES, "every sealed file, across two pages");
    assert!(
        listed.windows(2).all(|w| w[0].id < w[1].id),
        "oldest first, each once"
    );
    assert!(
        listed
            .iter()
            .all(|f| f.state == FileState::Sealed && f.user == "alice")
    );
    let mut paths: Vec<&str> = listed.iter().map(|f| f.path.as_str()).collect();
    paths.sort_unstable();
    let expected: Vec<String> = (0..FILES).map(|i| format!("/f{i:05}.txt")).collect();
    assert_eq!(
        paths,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );

    let head = h.cli("files", &["--state", "sealed", "--json", "--limit", "5"]);
    assert_eq!(head.lines().count(), 5, "--limit: {head}");
    let after = listed[4].id.to_string();
    let rest = h.cli("files", &["--state", "sealed", "--json", "--after", &after]);
    let rest_ids: Vec<u64> = rest
        .lines()
        .map(|l| {
            serde_json::from_str::<sftpgw::status::FileStatus>(l)
                .expect("json")
                .id
        })
        .collect();
    let expected_rest: Vec<u64> = listed[5..].iter().map(|f| f.id).collect();
    assert_eq!(
        rest_ids, expected_rest,
        "--after goes on where --limit stopped"
    );

    // The text form: one line per file with its id, state, size and name.
    let text = h.cli("files", &[]);
    assert_eq!(
        text.lines().count(),
        FILES,
        "{}",
        &text[..text.len().min(400)]
    );
    let first = text.lines().next().expect("a line");
    assert!(
        first.contains(&listed[0].id.to_string()) && first.contains("sealed"),
        "{first}"
    );
    assert_eq!(
        h.cli("files", &["--state", "failed"]).trim(),
        "no such file"
    );

    let status = status_command(&h, &[]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains(&format!("sealed {FILES}")) && status.contains("`sftpgw files`"),
        "{status}"
    );
}

/// `sftpgw report` lists every delivered file from the delivery log, with what the bucket
/// says of the object (its ETag, size, key) and the file's SHA-256; filters by user and time;
/// and reads the log with the daemon stopped.
#[tokio::test(flavor = "multi_thread")]
async fn report_lists_each_delivery_as_the_bucket_has_it_with_the_daemon_up_or_down() {
    use sha2::Digest as _;
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    let small = common::data(10_000, 1);
    let big = common::data(11 << 20, 2);
    put(&h, "alice", "a.txt", &small);
    put(&h, "alice", "big.bin", &big);
    put(&h, "bob", "b,c.txt", &small);
    h.wait_drained(Duration::from_secs(60)).await;

    let json = h.cli("report", &["--format", "json"]);
    let all: Vec<sftpgw::spool::deliveries::Delivery> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(all.len(), 3, "{json}");
    let host = nix::unistd::gethostname()
        .expect("hostname")
        .to_string_lossy()
        .into_owned();
    for d in &all {
        let key = format!("{}{}{}", common::PREFIX, d.user, d.path);
        assert_eq!(d.key, key);
        assert_eq!(d.bucket, common::BUCKET);
        assert_eq!(d.box_name, host);
        let head = h
            .s3_client()
            .head_object()
            .bucket(common::BUCKET)
            .key(&key)
            .send()
            .await
            .expect("the object is in the bucket");
        assert_eq!(
            d.etag.as_deref(),
            head.e_tag().map(|e| e.trim_matches('"')),
            "{d:?}"
        );
        assert_eq!(Some(d.size), head.content_length().map(|n| n as u64));
        // Every object says who uploaded it and from which box; a file sealed before its
        // upload started also when it was sealed.
        let meta = head.metadata().expect("user metadata");
        assert_eq!(meta.get("uploader"), Some(&d.user), "{meta:?}");
        assert_eq!(meta.get("box"), Some(&host), "{meta:?}");
        if d.path != "/big.bin" {
            assert_eq!(meta.get("sealed-at"), Some(&d.sealed_at), "{meta:?}");
        }
        let content = if d.path == "/big.bin" { &big } else { &small };
        if let Some(sha) = &d.sha256 {
            assert_eq!(*sha, hex::encode(sha2::Sha256::digest(content)));
        }
        assert!(d.sealed_at <= d.delivered_at, "{d:?}");
    }
    let small_sha = all.iter().find(|d| d.path == "/a.txt").expect("a.txt");
    assert!(
        small_sha.sha256.is_some(),
        "a small file's SHA-256 is known"
    );

    let bob = h.cli("report", &["--user", "bob"]);
    let lines: Vec<&str> = bob.lines().collect();
    assert_eq!(lines.len(), 2, "the header and bob's file: {bob}");
    assert_eq!(lines[0], sftpgw::report::CSV_HEADER);
    assert!(lines[1].contains(",bob,\"/b,c.txt\","), "{}", lines[1]);
    let future = h.cli("report", &["--since", "2999-01-01"]);
    assert_eq!(future.trim(), sftpgw::report::CSV_HEADER);

    h.stop_daemon();
    let offline = h.cli("report", &["--format", "json"]);
    assert_eq!(offline, json, "the same report with the daemon stopped");
}

/// `sftpgw events --follow` streams each file's lifecycle as JSON lines, whatever the log
/// level: sealed, then delivered, with the user, path and key.
#[tokio::test(flavor = "multi_thread")]
async fn events_follow_streams_sealed_then_delivered_whatever_the_log_level() {
    use std::io::BufRead;
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon_with_env(&[("SFTPGW_LOG", std::ffi::OsStr::new("error"))]);
    let mut follower = Command::new(env!("CARGO_BIN_EXE_sftpgw"))
        .args(["events", "--follow", "--config"])
        .arg(&h.config_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sftpgw events");
    let mut stderr = std::io::BufReader::new(follower.stderr.take().expect("stderr"));
    let mut said = String::new();
    stderr
        .read_line(&mut said)
        .expect("the follower says it follows");
    assert!(said.contains("following"), "{said}");
    let stdout = follower.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    put(&h, "alice", "watched.txt", b"watch me");
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.iter().any(|e| e["event"] == "delivered") {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no delivered event; seen {seen:?}"));
        seen.push(serde_json::from_str(&line).expect("a JSON object per line"));
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let sealed = seen
        .iter()
        .position(|e| e["event"] == "sealed" && e["path"] == "/watched.txt")
        .unwrap_or_else(|| panic!("no sealed event: {seen:?}"));
    let delivered = seen
        .iter()
        .position(|e| e["event"] == "delivered")
        .expect("delivered");
    assert!(sealed < delivered, "{seen:?}");
    let d = &seen[delivered];
    assert_eq!(d["user"], "alice");
    assert_eq!(d["path"], "/watched.txt");
    assert_eq!(d["key"], format!("{}alice/watched.txt", common::PREFIX));
    assert!(d["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{d}");
}

/// Objects under `prefix` in the test bucket, by key: (key, body).
async fn objects_under(h: &Harness, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let listed = h
        .s3_client()
        .list_objects_v2()
        .bucket(common::BUCKET)
        .prefix(prefix)
        .send()
        .await
        .expect("list");
    let mut out = Vec::new();
    for o in listed.contents() {
        let key = o.key().expect("key").to_owned();
        let body = h.get_object(&key).await.expect("listed object");
        out.push((key, body));
    }
    out.sort();
    out
}

/// The delivery log on the spool, its files concatenated.
fn delivery_log_bytes(h: &Harness) -> Vec<u8> {
    let dir = h.spool_dir.join("deliveries");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("deliveries dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|p| std::fs::read(p).expect("log file"))
        .collect()
}

/// Waits (30 s at most) until the manifests under `folder`, joined, are the delivery log;
/// returns them (key, body).
async fn wait_manifests_hold_the_log(h: &Harness, folder: &str) -> Vec<(String, Vec<u8>)> {
    let log = delivery_log_bytes(h);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let manifests = objects_under(h, folder).await;
        let joined: Vec<u8> = manifests.iter().flat_map(|(_, b)| b.clone()).collect();
        if joined == log {
            return manifests;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "manifests {:?} never held the log:\n{}",
            manifests.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            String::from_utf8_lossy(&log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each manifest is named `<folder><date>/<host>-<n>.jsonl` and holds deliveries of that
/// date; together they hold what `sftpgw report` prints.
fn check_manifests_say_what_the_report_says(
    h: &Harness,
    folder: &str,
    manifests: &[(String, Vec<u8>)],
) {
    let host = sftpgw::telemetry::hostname();
    let report = h.cli("report", &["--format", "json"]);
    let reported: Vec<serde_json::Value> = report
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let mut in_manifests: Vec<serde_json::Value> = Vec::new();
    for (key, body) in manifests {
        let text = String::from_utf8(body.clone()).expect("utf-8");
        let date = key
            .strip_prefix(folder)
            .and_then(|k| k.split('/').next())
            .expect("a date folder");
        assert!(
            key.strip_prefix(&format!("{folder}{date}/{host}-"))
                .is_some()
                && key.ends_with(".jsonl"),
            "{key}"
        );
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json line");
            assert!(
                v["delivered_at"]
                    .as_str()
                    .is_some_and(|d| d.starts_with(date)),
                "{line}"
            );
            in_manifests.push(v);
        }
    }
    assert_eq!(
        in_manifests, reported,
        "the manifests say what the report says"
    );
}

/// The box copies its delivery log to `<prefix>_manifests/<date>/<box>-<n>.jsonl`: the
/// manifests hold the log byte for byte (and so what `sftpgw report` prints), a restart goes on
/// with the next number and never writes a manifest again.
#[tokio::test(flavor = "multi_thread")]
async fn manifests_in_the_bucket_hold_the_delivery_log_byte_for_byte_and_are_never_rewritten() {
    let mut h = Harness::new(Options {
        manifest_interval: "1s",
        ..Options::default()
    })
    .await;
    h.start_daemon();
    let small = common::data(10_000, 1);
    put(&h, "alice", "a.txt", &small);
    put(&h, "bob", "b.txt", &small);
    h.wait_drained(Duration::from_secs(60)).await;
    let folder = format!("{}_manifests/", common::PREFIX);
    let first = wait_manifests_hold_the_log(&h, &folder).await;
    check_manifests_say_what_the_report_says(&h, &folder, &first);

    // After a restart one more delivery goes into a new manifest; the old ones are untouched.
    h.stop_daemon();
    h.start_daemon();
    put(&h, "alice", "c.txt", &small);
    h.wait_drained(Duration::from_secs(60)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        let manifests = objects_under(&h, &folder).await;
        if manifests.len() > first.len() {
            break manifests;
        }
        assert!(std::time::Instant::now() < deadline, "no new manifest");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        after.len(),
        first.len() + 1,
        "{:?}",
        after.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    for m in &first {
        assert!(after.contains(m), "{} was rewritten", m.0);
    }
    let joined: Vec<u8> = after.iter().flat_map(|(_, b)| b.clone()).collect();
    assert!(
        joined == delivery_log_bytes(&h),
        "all three deliveries, once each"
    );
}
