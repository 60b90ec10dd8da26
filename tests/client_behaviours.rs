//! Request sequences of GUI SFTP clients (FileZilla, WinSCP, Cyberduck) that no test can run
//! directly, sent with paramiko by `tests/clients/paramiko_behaviours.py` against the real
//! `sftpgw` binary and the embedded S3 server (on 127.0.0.1), and checked byte for byte in S3.
//!
//! Needs a Python 3 with paramiko: `SFTPGW_TEST_PYTHON` if set, else `/usr/bin/python3`, else
//! `python3` from PATH (Debian: `apt-get install python3-paramiko`; `.ci/run` installs it).
//! Without one every test fails under CI (`CI` set) and is skipped otherwise.

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

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Harness, Options, PREFIX, data};
use serde_json::Value;
use sftpgw::spool::FileState;
use sftpgw::status::control::{self, Request, Response};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/clients/paramiko_behaviours.py"
);
/// One run of the script (connect, a few MiB over loopback, disconnect).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);
/// `python -c 'import paramiko'`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

const SSH_FX_OK: i64 = 0;
const SSH_FX_NO_SUCH_FILE: i64 = 2;
const SSH_FX_PERMISSION_DENIED: i64 = 3;
const SSH_FX_FAILURE: i64 = 4;

const INSTALL: &str = "install the Debian package python3-paramiko (`apt-get install \
                       python3-paramiko`; .ci/run does) or set SFTPGW_TEST_PYTHON";

static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Waits for `child` until `timeout`; kills it and returns None when it takes longer.
fn wait_with_deadline(child: &mut std::process::Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn imports_paramiko(python: &Path) -> Result<(), String> {
    let mut child = Command::new(python)
        .args(["-c", "import paramiko"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|err| format!("{}: {err}", python.display()))?;
    match wait_with_deadline(&mut child, PROBE_TIMEOUT) {
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(format!(
            "{} cannot import paramiko ({status})",
            python.display()
        )),
        None => Err(format!(
            "{} -c 'import paramiko' took more than {PROBE_TIMEOUT:?}",
            python.display()
        )),
    }
}

fn find_python() -> Result<PathBuf, String> {
    if let Some(python) = std::env::var_os("SFTPGW_TEST_PYTHON") {
        let python = PathBuf::from(python);
        return imports_paramiko(&python)
            .map(|()| python)
            .map_err(|err| format!("SFTPGW_TEST_PYTHON: {err}"));
    }
    let mut reasons = Vec::new();
    for candidate in ["/usr/bin/python3", "python3"] {
        let python = PathBuf::from(candidate);
        match imports_paramiko(&python) {
            Ok(()) => return Ok(python),
            Err(err) => reasons.push(err),
        }
    }
    Err(format!("no Python with paramiko ({})", reasons.join("; ")))
}

/// The interpreter to run the script with; None (after saying why) when the test is skipped.
fn paramiko_python() -> Option<PathBuf> {
    match PYTHON.get_or_init(find_python) {
        Ok(python) => Some(python.clone()),
        Err(reason) if std::env::var_os("CI").is_some() => panic!("{reason}; {INSTALL}"),
        Err(reason) => {
            eprintln!("skipped: {reason}; {INSTALL}");
            None
        }
    }
}

/// Starts the harness and the daemon, or None when there is no paramiko.
async fn start(opts: Options) -> Option<(Harness, Client)> {
    let python = paramiko_python()?;
    let mut h = Harness::new(opts).await;
    h.start_daemon();
    Some((h, Client { python }))
}

struct Client {
    python: PathBuf,
}

impl Client {
    /// Runs one subcommand of the script as `user` and returns the JSON it printed.
    async fn run(&self, h: &Harness, user: &str, args: &[&str]) -> Value {
        let mut cmd = tokio::process::Command::new(&self.python);
        cmd.arg(SCRIPT)
            .args(["--host", "127.0.0.1", "--port"])
            .arg(h.sftp_port.to_string())
            .args(["--user", user, "--key"])
            .arg(&h.key_path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let output = match tokio::time::timeout(SCRIPT_TIMEOUT, cmd.output()).await {
            Ok(output) => output.expect("run the paramiko script"),
            Err(_) => panic!(
                "paramiko_behaviours.py {args:?} did not finish within {SCRIPT_TIMEOUT:?}\n\
                 daemon log:\n{}",
                log_tail(h)
            ),
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "paramiko_behaviours.py {args:?} failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}\n\
             daemon log:\n{}",
            output.status,
            log_tail(h)
        );
        let line = stdout.lines().last().unwrap_or_default();
        let value: Value = serde_json::from_str(line).unwrap_or_else(|err| {
            panic!("script output is not JSON ({err}):\n{stdout}\nstderr:\n{stderr}")
        });
        eprintln!("paramiko_behaviours.py {}: {value}", args[0]);
        value
    }
}

fn log_tail(h: &Harness) -> String {
    let log = h.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

/// Writes `bytes` to a local file in the test directory and returns its path.
fn local(h: &Harness, name: &str, bytes: &[u8]) -> String {
    let path = h.dir.path().join(name);
    std::fs::write(&path, bytes).expect("write local file");
    path.to_str().expect("UTF-8 temp path").to_owned()
}

fn key(user: &str, name: &str) -> String {
    format!("{PREFIX}{user}/{name}")
}

/// The SSH_FX_* code of a step (-1 if the step is missing or failed in the client).
fn code(step: &Value) -> i64 {
    step["status"].as_i64().unwrap_or(-1)
}

fn assert_ok(step: &Value, what: &str, h: &Harness) {
    assert_eq!(
        code(step),
        SSH_FX_OK,
        "{what}: {step}\ndaemon log:\n{}",
        log_tail(h)
    );
}

/// Waits until the file at `path` (as alice sees it) is in `state`; returns its size.
async fn wait_state(h: &Harness, path: &str, state: FileState) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = h.status().await;
        if let Some(f) = s
            .files
            .iter()
            .find(|f| f.user == "alice" && f.path == path && f.state == state)
        {
            return f.size;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never became {state:?}: {:#?}\ndaemon log:\n{}",
            s.files,
            log_tail(h)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// FileZilla's and WinSCP's resume: the connection drops mid-upload (no CLOSE), the file stays
/// `partial`; a new session STATs it and reopens it with SSH_FXF_APPEND, writing the rest from
/// the reported size. WinSCP opens with exactly WRITE|APPEND (no CREAT, no TRUNC); paramiko's
/// `open(.., 'a')` (like OpenSSH's `reput`) sends WRITE|CREAT|APPEND and FSTATs the handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_upload_resumed_with_append_is_delivered_byte_exact() {
    let Some((h, client)) = start(Options::default()).await else {
        return;
    };
    // Over one part (5 MiB) so that early drain has sent a part of the partial file.
    let len = (7 << 20) + 12_345;
    let first = (5 << 20) + 777;
    for (style, seed) in [("winscp", 11), ("paramiko", 12)] {
        let name = format!("resume-{style}.bin");
        let bytes = data(len, seed);
        let file = local(&h, &name, &bytes);
        let out = client
            .run(
                &h,
                "alice",
                &["upload-partial", &name, &file, &first.to_string()],
            )
            .await;
        assert_ok(&out["open"], "OPEN of the first session", &h);
        assert_eq!(out["write_errors"], Value::Array(vec![]), "{out}");
        let partial = wait_state(&h, &format!("/{name}"), FileState::Partial).await;
        assert_eq!(partial, first as u64, "size of the partial file");
        assert!(
            h.get_object(&key("alice", &name)).await.is_none(),
            "a partial file is never an object"
        );

        let out = client
            .run(&h, "alice", &["resume", &name, &file, "--style", style])
            .await;
        assert_eq!(out["resumed_from"], first, "size seen by the client: {out}");
        if style == "winscp" {
            assert_ok(&out["stat"], "STAT of the partial file", &h);
            assert_ok(&out["open"], "OPEN WRITE|APPEND of the partial file", &h);
            assert_eq!(out["write_errors"], Value::Array(vec![]), "{out}");
        } else {
            assert_eq!(
                out["handle_position"], first,
                "FSTAT of the handle opened with 'a': {out}"
            );
        }
        assert_ok(&out["close"], "CLOSE after the resume", &h);
    }
    h.wait_drained(DRAIN_TIMEOUT).await;
    for (style, seed) in [("winscp", 11), ("paramiko", 12)] {
        let got = h
            .get_object(&key("alice", &format!("resume-{style}.bin")))
            .await
            .unwrap_or_else(|| panic!("no object for the {style} resume"));
        assert!(
            got == data(len, seed),
            "{style} resume: the object ({} bytes) is not the file ({len} bytes)",
            got.len()
        );
    }
}

/// "Preserve timestamps": FSETSTAT of ATIME/MTIME before CLOSE (WinSCP) and SETSTAT after it
/// (FileZilla, WinSCP; with the permissions too when WinSCP sets them) all answer SSH_FX_OK,
/// and the object is the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_set_before_and_after_close_are_accepted_and_the_object_is_exact() {
    let Some((h, client)) = start(Options::default()).await else {
        return;
    };
    let bytes = data(300_000, 21);
    let file = local(&h, "stamped.txt", &bytes);
    let out = client
        .run(&h, "alice", &["setstat", "stamped.txt", &file])
        .await;
    assert_ok(&out["open"], "OPEN", &h);
    assert_eq!(out["write_errors"], Value::Array(vec![]), "{out}");
    assert_ok(
        &out["fsetstat_times"],
        "FSETSTAT ATIME/MTIME before CLOSE",
        &h,
    );
    assert_ok(&out["close"], "CLOSE", &h);
    assert_ok(&out["setstat_times"], "SETSTAT ATIME/MTIME after CLOSE", &h);
    assert_ok(
        &out["setstat_mode_times"],
        "SETSTAT PERMISSIONS|ATIME/MTIME after CLOSE",
        &h,
    );
    assert_ok(&out["paramiko_utime"], "paramiko utime (SETSTAT)", &h);
    assert_ok(&out["stat"], "STAT", &h);
    assert_eq!(out["stat"]["size"], bytes.len(), "{out}");
    h.wait_drained(DRAIN_TIMEOUT).await;
    assert!(
        h.get_object(&key("alice", "stamped.txt")).await == Some(bytes),
        "the object is not the file"
    );
}

/// REALPATH as GUI clients send it: WinSCP `.` at start, FileZilla `..` when the user opens
/// the parent entry at the root. Like OpenSSH's internal-sftp in a chroot, `..` at the jail's
/// root is `/` for REALPATH; requests that would act above the root (OPEN, MKDIR, RENAME,
/// posix-rename) are refused with SSH_FX_PERMISSION_DENIED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realpath_of_dotdot_at_the_root_is_the_root_but_acting_above_it_is_denied() {
    let Some((h, client)) = start(Options::default()).await else {
        return;
    };
    let out = client.run(&h, "alice", &["realpath"]).await;
    let mut wrong = Vec::new();
    for (path, expected) in [
        (".", "/"),
        ("/", "/"),
        ("..", "/"),
        ("/a/..", "/"),
        ("/..", "/"),
    ] {
        let step = &out["realpath"][path];
        let answer = &step["names"];
        if code(step) != SSH_FX_OK || *answer != serde_json::json!([expected]) {
            wrong.push(format!(
                "REALPATH {path:?}: expected NAME [{expected:?}], got {step}"
            ));
        }
    }
    assert!(
        out["upload_inside"]["ok"] == true,
        "upload of /inside.txt: {out}"
    );
    for step in [
        "open_above_root",
        "mkdir_above_root",
        "rename_above_root",
        "posix_rename_above_root",
    ] {
        if code(&out[step]) != SSH_FX_PERMISSION_DENIED {
            wrong.push(format!(
                "{step}: expected SSH_FX_PERMISSION_DENIED, got {}",
                out[step]
            ));
        }
    }
    if out["paramiko_open_above_root"]["permission_error"] != true {
        wrong.push(format!(
            "paramiko open('/../x', 'w'): expected PermissionError (EACCES), got {}",
            out["paramiko_open_above_root"]
        ));
    }
    assert!(
        wrong.is_empty(),
        "{}\nscript output: {out}\ndaemon log:\n{}",
        wrong.join("\n"),
        log_tail(&h)
    );
    // Nothing escaped the jail: the only object is the one file inside.
    h.wait_drained(DRAIN_TIMEOUT).await;
    assert_eq!(h.list_keys().await, vec![key("alice", "inside.txt")]);
}

/// statvfs@openssh.com (FileZilla's and WinSCP's free space) answers sensible numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statvfs_reports_block_size_total_and_free_space() {
    let Some((h, client)) = start(Options::default()).await else {
        return;
    };
    let out = client.run(&h, "alice", &["statvfs", "/", "."]).await;
    for path in ["/", "."] {
        let step = &out["results"][path];
        assert_ok(step, &format!("statvfs@openssh.com {path:?}"), &h);
        let v = &step["statvfs"];
        let field = |name: &str| {
            v[name]
                .as_u64()
                .unwrap_or_else(|| panic!("{name} in {step}"))
        };
        assert!(field("bsize") > 0, "{step}");
        assert!(field("frsize") > 0, "{step}");
        assert!(field("blocks") > 0, "{step}");
        assert!(field("bfree") <= field("blocks"), "{step}");
        assert!(field("bavail") <= field("blocks"), "{step}");
    }
}

/// `temp-rename` over a delivered report.csv (and a plain RENAME of second.csv over it,
/// refused); returns the new version and second.csv's bytes.
async fn rename_over_a_delivered_target(h: &Harness, client: &Client) -> (Vec<u8>, Vec<u8>) {
    let old = data(50_000, 31);
    let new = data(70_001, 32);
    let second = data(1_000, 33);
    let old_file = local(h, "old.csv", &old);
    let new_file = local(h, "new.csv", &new);
    let second_file = local(h, "second.csv", &second);
    let out = client
        .run(h, "alice", &["upload", "report.csv", &old_file])
        .await;
    assert_ok(&out, "upload of report.csv", h);
    h.wait_drained(DRAIN_TIMEOUT).await;
    assert!(h.get_object(&key("alice", "report.csv")).await == Some(old.clone()));
    let out = client
        .run(
            h,
            "alice",
            &[
                "temp-rename",
                "report.csv",
                &new_file,
                "--plain-source",
                "second.csv",
                &second_file,
            ],
        )
        .await;
    assert!(out["temp_upload"]["ok"] == true, "{out}");
    assert_ok(
        &out["posix_rename"],
        "posix-rename report.csv.filepart over a delivered report.csv",
        h,
    );
    assert_ok(&out["stat_target"], "STAT report.csv after the rename", h);
    assert_eq!(out["stat_target"]["size"], new.len(), "{out}");
    assert_eq!(
        code(&out["stat_temp"]),
        SSH_FX_NO_SUCH_FILE,
        "report.csv.filepart after the rename: {out}"
    );
    assert!(out["plain_source_upload"]["ok"] == true, "{out}");
    assert_eq!(
        code(&out["plain_rename"]),
        SSH_FX_FAILURE,
        "plain RENAME over an existing target: {out}"
    );

    (new, second)
}

/// `temp-rename` over a pending.csv uploaded a moment before in the same session; returns the
/// new version.
async fn rename_over_a_pending_target(h: &Harness, client: &Client) -> Vec<u8> {
    let old2 = data(40_000, 34);
    let new2 = data(45_000, 35);
    let old2_file = local(h, "old2.csv", &old2);
    let new2_file = local(h, "new2.csv", &new2);
    let out = client
        .run(
            h,
            "alice",
            &[
                "temp-rename",
                "pending.csv",
                &new2_file,
                "--first",
                &old2_file,
            ],
        )
        .await;
    assert!(out["first"]["ok"] == true, "{out}");
    assert!(out["temp_upload"]["ok"] == true, "{out}");
    assert_ok(
        &out["posix_rename"],
        "posix-rename pending.csv.filepart over a pending pending.csv",
        h,
    );
    assert_eq!(out["stat_target"]["size"], new2.len(), "{out}");

    new2
}

/// WinSCP's "transfer to temporary filename" and Cyberduck's atomic upload: the new version
/// goes to `NAME.filepart`, then posix-rename@openssh.com replaces NAME, whether NAME is
/// delivered already or still pending. The object is the new version and nothing is left
/// under the temporary name. A plain RENAME over an existing name is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_upload_posix_renamed_over_the_target_delivers_the_new_bytes() {
    let Some((h, client)) = start(Options::default()).await else {
        return;
    };
    let (new, second) = rename_over_a_delivered_target(&h, &client).await;
    let new2 = rename_over_a_pending_target(&h, &client).await;
    h.wait_drained(DRAIN_TIMEOUT).await;
    let got = h.get_object(&key("alice", "report.csv")).await;
    assert!(
        got.as_deref() == Some(&new[..]),
        "report.csv is not the new version ({:?} bytes)",
        got.map(|g| g.len())
    );
    let got = h.get_object(&key("alice", "pending.csv")).await;
    assert!(
        got.as_deref() == Some(&new2[..]),
        "pending.csv is not the new version ({:?} bytes)",
        got.map(|g| g.len())
    );
    assert!(h.get_object(&key("alice", "second.csv")).await == Some(second));
    let keys = h.list_keys().await;
    assert!(
        !keys.iter().any(|k| k.ends_with(".filepart")),
        "an object under a temporary name: {keys:?}"
    );
}

/// paramiko's `put` (pipelined 32 KiB writes, then STAT to confirm the size) of a file over
/// one part, and its `get` (STAT, prefetched reads) of that file while it is still pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paramiko_put_is_byte_exact_and_get_reads_a_pending_file_back() {
    let Some((h, client)) = start(Options::default()).await else {
        return;
    };
    // Held, so that the file is still in the spool when it is read back.
    match control::request(&h.socket, &Request::DrainPause { for_secs: None })
        .await
        .expect("drain pause")
    {
        Response::Shaping(status) => assert!(status.paused, "{status:?}"),
        other => panic!("unexpected {other:?}"),
    }
    let len = (6 << 20) + 4_321;
    let bytes = data(len, 41);
    let file = local(&h, "big.bin", &bytes);
    let out = client.run(&h, "alice", &["put", &file, "big.bin"]).await;
    assert_ok(&out, "paramiko put", &h);
    assert_eq!(out["size"], len, "{out}");
    let back: OsString = h.dir.path().join("back.bin").into_os_string();
    let back = back.to_str().expect("UTF-8 temp path").to_owned();
    let out = client.run(&h, "alice", &["get", "big.bin", &back]).await;
    assert_ok(&out, "paramiko get of a pending file", &h);
    assert!(
        std::fs::read(&back).expect("read back") == bytes,
        "the file read back differs"
    );
    assert!(
        h.get_object(&key("alice", "big.bin")).await.is_none(),
        "delivered while the drain was paused"
    );
    match control::request(&h.socket, &Request::DrainResume)
        .await
        .expect("drain resume")
    {
        Response::Shaping(status) => assert!(!status.paused, "{status:?}"),
        other => panic!("unexpected {other:?}"),
    }
    h.wait_drained(DRAIN_TIMEOUT).await;
    assert!(
        h.get_object(&key("alice", "big.bin")).await == Some(bytes),
        "the object is not the file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paramiko_script_polls_for_its_receipt_and_reads_where_the_file_is_in_s3() {
    use sha2::Digest as _;
    let Some((h, client)) = start(Options::default()).await else {
        return;
    };
    // Below a part: one PUT, and the SHA-256 taken at ingest (a larger file drained early
    // has none; tests/receipts.rs reads one).
    let len = (3 << 20) + 99;
    let bytes = data(len, 77);
    let file = local(&h, "report.bin", &bytes);
    let out = client
        .run(&h, "alice", &["receipt", &file, "/report.bin"])
        .await;
    assert_ok(&out, "put, then poll for the receipt", &h);
    let receipt = &out["receipt"];
    // The receipt says where the file is, and the bucket agrees.
    let head = h
        .s3_client()
        .head_object()
        .bucket(common::BUCKET)
        .key(key("alice", "report.bin"))
        .send()
        .await
        .expect("the object named by the receipt is in the bucket");
    assert_eq!(receipt["bucket"], common::BUCKET, "{out}");
    assert_eq!(receipt["key"], key("alice", "report.bin"), "{out}");
    assert_eq!(receipt["size"], len, "{out}");
    assert_eq!(
        receipt["etag"].as_str(),
        head.e_tag().map(|e| e.trim_matches('"')),
        "{out}"
    );
    assert_eq!(
        receipt["sha256"].as_str(),
        Some(hex::encode(sha2::Sha256::digest(&bytes)).as_str()),
        "{out}"
    );
    assert_eq!(receipt["user"], "alice");
    assert_eq!(receipt["path"], "/report.bin");
    assert_eq!(out["stat_size"], out["receipt_bytes"], "{out}");
    // It is the delivery log's line, as `sftpgw report` prints it.
    let report: Value =
        serde_json::from_str(h.cli("report", &["--format", "json"]).trim()).expect("one line");
    assert_eq!(&report, receipt);
    assert_eq!(out["top"], serde_json::json!(["queue.txt", "receipts"]));
    assert_eq!(out["receipts"], serde_json::json!(["report.bin.json"]));
    assert!(
        out["root"]
            .as_array()
            .is_some_and(|r| r.contains(&".sftpgw".into())),
        "{out}"
    );
    assert!(
        out["queue"]
            .as_str()
            .is_some_and(|q| q.contains("state\tsent_bytes") && !q.contains("/report.bin")),
        "{out}"
    );
    // Every change is refused with EACCES (SSH_FX_PERMISSION_DENIED).
    for (name, refusal) in out["refusals"].as_object().expect("refusals") {
        assert_eq!(refusal["errno"], 13, "{name}: {refusal}");
    }
    assert_eq!(out["refusals"].as_object().map(|r| r.len()), Some(5));
}
