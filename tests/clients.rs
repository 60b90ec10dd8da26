//! Client matrix: real SFTP clients (OpenSSH `sftp` and `scp`, sshfs, lftp, curl/libssh2,
//! rclone, PuTTY `psftp`, JSch) against the real `sftpgw` binary and the embedded S3 server,
//! on 127.0.0.1. Every uploaded object is compared with its local file byte for byte in S3.
//!
//! The clients are Debian packages (`.ci/run` installs them): openssh-client, sshfs + fuse3,
//! rsync, lftp, curl, rclone, putty-tools, libjsch-java + default-jdk-headless. A missing
//! client fails its test when `CI` is set and skips it (with "skipped: ..." on stderr)
//! otherwise. sshfs also needs a usable `/dev/fuse`; without one its test is skipped always.
//! Every command runs with a deadline ([`CMD_TIMEOUT`]), so no client can hang the suite.

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

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{ExtraKey, Harness, Options, PREFIX, data};
use sftpgw::spool::FileState;

/// Deadline of one client command.
const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an acknowledged file may take to show up in S3.
const OBJECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The options every OpenSSH-based client gets (`ssh`, `sftp`, `scp`, sshfs, lftp's `ssh`).
const SSH_OPTIONS: [&str; 4] = [
    "StrictHostKeyChecking=no",
    "UserKnownHostsFile=/dev/null",
    "BatchMode=yes",
    "LogLevel=ERROR",
];
/// JSch 0.1.5x reads neither ed25519 keys nor the `openssh-key-v1` format: an RSA key in PEM.
const RSA_PEM: ExtraKey = ExtraKey {
    file: "client_rsa_pem",
    keygen_args: &["-t", "rsa", "-b", "3072", "-m", "PEM"],
};
const JSCH_JAR: &str = "/usr/share/java/jsch.jar";
const JSCH_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/JschUpload.java");

// ---------------------------------------------------------------------------------------------
// Helpers: tools, commands with a deadline, local files, objects.

/// Whether the client `tool` (a program on PATH or an absolute path) is here. When it is not:
/// a panic naming the Debian `package` under CI, else "skipped: ..." on stderr and false.
fn have(tool: &str, package: &str) -> bool {
    let found = if tool.contains('/') {
        Path::new(tool).exists()
    } else {
        on_path(tool)
    };
    if found {
        return true;
    }
    let reason = format!("{tool} not found: install the Debian package {package}");
    assert!(std::env::var_os("CI").is_none(), "{reason} (CI is set)");
    eprintln!("skipped: {reason}");
    false
}

/// Whether an executable `program` is on PATH.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// What a finished command printed.
struct Ran {
    cmdline: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn success(&self) -> bool {
        self.status.success()
    }

    fn report(&self) -> String {
        format!(
            "`{}` exited with {}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.cmdline, self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` with stdin from /dev/null, its output in files under `dir` (a client that
/// leaves a process behind, like sshfs's ssh, cannot hold a pipe open), in a process group of
/// its own that is SIGKILLed at `timeout` (then this panics).
fn run(dir: &Path, cmd: &mut Command, timeout: Duration) -> Ran {
    try_run(dir, cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// [`run`], with Err instead of a panic when the command cannot start or times out.
fn try_run(dir: &Path, cmd: &mut Command, timeout: Duration) -> Result<Ran, String> {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    let out_path = dir.join(format!("cmd-{n}.stdout"));
    let err_path = dir.join(format!("cmd-{n}.stderr"));
    let cmdline = format!("{cmd:?}");
    let file = |p: &Path| std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()));
    cmd.stdin(Stdio::null())
        .stdout(file(&out_path)?)
        .stderr(file(&err_path)?)
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run `{cmdline}`: {e}"))?;
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            waited => {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = child.wait();
                return Err(format!(
                    "`{cmdline}` did not finish within {timeout:?} ({waited:?}; killed)\n\
                     --- stdout:\n{}\n--- stderr:\n{}",
                    read(&out_path),
                    read(&err_path)
                ));
            }
        }
    };
    Ok(Ran {
        cmdline,
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
    })
}

/// [`run`] with [`CMD_TIMEOUT`] in the harness directory; panics (with the daemon's log) unless
/// the command exits 0.
fn run_ok(h: &Harness, cmd: &mut Command) -> Ran {
    let ran = run(h.dir.path(), cmd, CMD_TIMEOUT);
    assert!(
        ran.success(),
        "{}\n--- daemon log:\n{}",
        ran.report(),
        log_tail(h)
    );
    ran
}

/// [`run`] with [`CMD_TIMEOUT`] in the harness directory; panics unless the command fails.
fn run_fails(h: &Harness, cmd: &mut Command, why: &str) -> Ran {
    let ran = run(h.dir.path(), cmd, CMD_TIMEOUT);
    assert!(
        !ran.success(),
        "expected a non-zero exit ({why}):\n{}\n--- daemon log:\n{}",
        ran.report(),
        log_tail(h)
    );
    ran
}

/// The last lines of the daemon's log.
fn log_tail(h: &Harness) -> String {
    let log = h.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Writes `len` deterministic bytes to `name` in the harness directory.
fn local_file(h: &Harness, name: &str, len: usize, seed: u64) -> PathBuf {
    let path = h.dir.path().join(name);
    std::fs::write(&path, data(len, seed)).expect("write local file");
    path
}

/// A directory under the harness directory (created).
fn subdir(h: &Harness, name: &str) -> PathBuf {
    let path = h.dir.path().join(name);
    std::fs::create_dir_all(&path).expect("create dir");
    path
}

fn key_of(user: &str, path: &str) -> String {
    format!("{PREFIX}{user}/{path}")
}

/// Waits until `user`'s `path` is an object in S3 and checks that it equals `local` byte for
/// byte.
async fn assert_object(h: &Harness, user: &str, path: &str, local: &Path) {
    let key = key_of(user, path);
    let want = std::fs::read(local).expect("read local file");
    let deadline = Instant::now() + OBJECT_TIMEOUT;
    let got = loop {
        if let Some(got) = h.get_object(&key).await {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "{key} not in S3 after {OBJECT_TIMEOUT:?}; keys: {:?}\n--- daemon log:\n{}",
            h.list_keys().await,
            log_tail(h)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if got != want {
        let at = got.iter().zip(&want).position(|(a, b)| a != b);
        panic!(
            "{key}: {} bytes in S3, {} in {}; first difference at byte {}",
            got.len(),
            want.len(),
            local.display(),
            at.unwrap_or(got.len().min(want.len()))
        );
    }
}

/// `-o OPTION` for each of [`SSH_OPTIONS`].
fn ssh_option_args() -> Vec<String> {
    SSH_OPTIONS
        .iter()
        .flat_map(|o| ["-o".to_owned(), (*o).to_owned()])
        .collect()
}

/// OpenSSH `sftp -b BATCH` as alice with the harness key; `-b` stops at the first failing
/// command unless it is prefixed with `-`, and then exits non-zero.
fn openssh_sftp_batch(h: &Harness, batch: &str) -> Ran {
    static BATCHES: AtomicUsize = AtomicUsize::new(0);
    let file = h
        .dir
        .path()
        .join(format!("batch-{}", BATCHES.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&file, batch).expect("write batch");
    let mut cmd = Command::new("sftp");
    cmd.args(ssh_option_args())
        .arg("-P")
        .arg(h.sftp_port.to_string())
        .arg("-i")
        .arg(&h.key_path)
        .arg("-b")
        .arg(&file)
        .arg("alice@127.0.0.1");
    run(h.dir.path(), &mut cmd, CMD_TIMEOUT)
}

fn scp(h: &Harness, local: &Path, target: &str) -> Command {
    let mut cmd = Command::new("scp");
    cmd.args(ssh_option_args())
        .arg("-P")
        .arg(h.sftp_port.to_string())
        .arg("-i")
        .arg(&h.key_path)
        .arg(local)
        .arg(format!("alice@127.0.0.1:{target}"));
    cmd
}

/// `sftpgw drain -c CONFIG pause|resume`: holds files pending while a test works on them.
fn drain(h: &Harness, what: &str) {
    run_ok(
        h,
        Command::new(env!("CARGO_BIN_EXE_sftpgw"))
            .arg("drain")
            .arg("-c")
            .arg(&h.config_path)
            .arg(what),
    );
}

/// Waits until alice's `path` is sealed (acknowledged, not yet sent) in the gateway.
async fn wait_sealed(h: &Harness, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = h.status().await;
        if s.files
            .iter()
            .any(|f| f.user == "alice" && f.path == path && f.state == FileState::Sealed)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "alice:{path} never sealed: {:#?}\n--- daemon log:\n{}",
            s.files,
            log_tail(h)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 1. OpenSSH sftp -b

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_sftp_batch_uploads_byte_exact_and_exits_as_documented() {
    if !have("sftp", "openssh-client") {
        return;
    }
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    // More than the harness's 5 MiB part: a multipart upload.
    let big = local_file(&h, "big.bin", (6 << 20) + 123, 1);
    let small = local_file(&h, "small.bin", 1000, 2);

    let ran = openssh_sftp_batch(&h, &format!("put {} big.bin\nmkdir d\n", big.display()));
    assert!(ran.success(), "{}\n{}", ran.report(), log_tail(&h));
    assert_object(&h, "alice", "big.bin", &big).await;

    // sftp(1): in batch mode sftp "will abort if any of the following commands fail: get,
    // put, ..., mkdir, ..."; a command prefixed with `-` may fail without ending the batch or
    // making the exit status non-zero.
    let refused = format!("put {} /../outside\n", small.display());
    let ran = openssh_sftp_batch(&h, &refused);
    assert!(!ran.success(), "put above the root: {}", ran.report());
    assert!(
        ran.stderr.contains("Permission denied"),
        "put above the root is refused with permission denied: {}",
        ran.report()
    );
    let ran = openssh_sftp_batch(
        &h,
        &format!("-{refused}put {} after.bin\n", small.display()),
    );
    assert!(ran.success(), "`-put` failing is ignored: {}", ran.report());
    assert_object(&h, "alice", "after.bin", &small).await;

    let ran = openssh_sftp_batch(&h, "mkdir d\n");
    assert!(!ran.success(), "mkdir of an existing dir: {}", ran.report());
    let ran = openssh_sftp_batch(&h, "-mkdir d\nls\n");
    assert!(
        ran.success(),
        "`-mkdir` failing is ignored: {}",
        ran.report()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. OpenSSH scp (SFTP protocol, the default since OpenSSH 9.0)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_scp_exits_0_on_success_and_non_zero_on_a_refused_path() {
    if !have("scp", "openssh-client") {
        return;
    }
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    let local = local_file(&h, "scp.bin", (3 << 20) + 7, 3);
    run_ok(&h, &mut scp(&h, &local, ""));
    assert_object(&h, "alice", "scp.bin", &local).await;

    run_fails(&h, &mut scp(&h, &local, "/../x"), "a path above the root");
    run_fails(
        &h,
        &mut scp(&h, &local, "scp.bin/x"),
        "a path under a regular file",
    );
    assert!(
        !h.list_keys().await.iter().any(|k| k.ends_with("/x")),
        "refused uploads made no object: {:?}",
        h.list_keys().await
    );
}

// ---------------------------------------------------------------------------------------------
// 3. sshfs

/// An sshfs mount, unmounted when dropped (also when the test panics).
struct SshfsMount {
    dir: PathBuf,
    fusermount: &'static str,
}

impl SshfsMount {
    /// Mounts alice's home at `dir`; Err(reason) when FUSE is not usable here.
    fn mount(h: &Harness, dir: &Path) -> Result<SshfsMount, String> {
        let fusermount = if on_path("fusermount3") {
            "fusermount3"
        } else {
            "fusermount"
        };
        let mut options = SSH_OPTIONS.join(",");
        options.push_str(&format!(
            ",IdentityFile={},port={}",
            h.key_path.display(),
            h.sftp_port
        ));
        let ran = run(
            h.dir.path(),
            Command::new("sshfs")
                .arg("-o")
                .arg(options)
                .arg("alice@127.0.0.1:")
                .arg(dir),
            CMD_TIMEOUT,
        );
        if !ran.success() {
            // FUSE's own complaints ("fuse: device not found", "fusermount3: mount failed:
            // Operation not permitted") mean this machine cannot mount; anything else is ours.
            if ran.stderr.to_lowercase().contains("fuse") {
                return Err(format!("sshfs cannot mount here: {}", ran.stderr.trim()));
            }
            panic!("{}\n--- daemon log:\n{}", ran.report(), log_tail(h));
        }
        Ok(SshfsMount {
            dir: dir.to_owned(),
            fusermount,
        })
    }
}

impl Drop for SshfsMount {
    fn drop(&mut self) {
        let parent = self.dir.parent().expect("mount point parent").to_owned();
        // Never panics: this runs while a failed test unwinds, too.
        for flags in ["-u", "-uz"] {
            match try_run(
                &parent,
                Command::new(self.fusermount).arg(flags).arg(&self.dir),
                Duration::from_secs(20),
            ) {
                Ok(ran) if ran.success() => return,
                Ok(ran) => eprintln!("unmount: {}", ran.report()),
                Err(e) => eprintln!("unmount: {e}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshfs_cp_mv_ls_rm_rsync_and_df_through_a_mount() {
    if !sshfs_available() {
        return;
    }
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    let mnt = subdir(&h, "mnt");
    let mount = match SshfsMount::mount(&h, &mnt) {
        Ok(mount) => mount,
        Err(reason) => {
            eprintln!("skipped: {reason}");
            return;
        }
    };
    // (remote path, local file) of every object that must arrive.
    let mut expected: Vec<(String, PathBuf)> = Vec::new();
    // Failed steps of the known bugs below, reported together once every step has run.
    let mut problems: Vec<String> = Vec::new();
    sshfs_cp(&h, &mount, &mut expected, &mut problems);
    sshfs_mv_rm_and_ls_while_pending(&h, &mount, &mut expected, &mut problems).await;
    sshfs_rsync_and_df(&h, &mount, &mut expected);
    check_sshfs_objects(&h, &expected, &problems).await;
    drop(mount);
}

/// Whether this machine has what the sshfs test needs (it says what is missing if not).
fn sshfs_available() -> bool {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: sshfs needs /dev/fuse, which this machine does not have");
        return false;
    }
    have("sshfs", "sshfs")
        && (on_path("fusermount3") || have("fusermount", "fuse3"))
        && have("rsync", "rsync")
}

fn sshfs_cp(
    h: &Harness,
    mount: &SshfsMount,
    expected: &mut Vec<(String, PathBuf)>,
    problems: &mut Vec<String>,
) {
    let m = |name: &str| mount.dir.join(name);
    // cp: sshfs sends OPEN(CREAT|TRUNC) and pipelines an LSTAT of the new name right behind
    // it, so a gateway that answers them out of order fails cp with "No such file or
    // directory". Small files and ~3 MB ones, several times each; all failures are reported.
    for i in 0..12u64 {
        let len = if i % 2 == 0 {
            1000 + i as usize * 37
        } else {
            (3 << 20) + i as usize
        };
        let name = format!("cp-{i}.bin");
        let local = local_file(h, &name, len, 100 + i);
        let ran = run(
            h.dir.path(),
            Command::new("cp").arg(&local).arg(m(&name)),
            CMD_TIMEOUT,
        );
        if ran.success() {
            expected.push((name, local));
        } else {
            problems.push(format!("`cp` {i} of 12 failed: {}", ran.report()));
        }
    }

    // cp -p: SETSTAT of times, mode (and, as root, owner) after the data.
    let local = local_file(h, "cp-p.bin", 200_000, 200);
    run_ok(
        h,
        Command::new("cp").arg("-p").arg(&local).arg(m("cp-p.bin")),
    );
    expected.push(("cp-p.bin".into(), local));
}

async fn sshfs_mv_rm_and_ls_while_pending(
    h: &Harness,
    mount: &SshfsMount,
    expected: &mut Vec<(String, PathBuf)>,
    problems: &mut Vec<String>,
) {
    let m = |name: &str| mount.dir.join(name);
    // mv and rm of files still pending: the drain is paused so that they are.
    drain(h, "pause");
    let moving = local_file(h, "moving.bin", 50_000, 300);
    let gone = local_file(h, "gone.bin", 60_000, 301);
    run_ok(h, Command::new("cp").arg(&moving).arg(m("moving.bin")));
    run_ok(h, Command::new("cp").arg(&gone).arg(m("gone.bin")));
    run_ok(h, Command::new("mkdir").arg(m("sub")));
    wait_sealed(h, "/moving.bin").await;
    wait_sealed(h, "/gone.bin").await;
    run_ok(
        h,
        Command::new("mv")
            .arg(m("moving.bin"))
            .arg(m("sub/moved.bin")),
    );
    run_ok(h, Command::new("rm").arg(m("gone.bin")));
    expected.push(("sub/moved.bin".into(), moving));
    // ls -l: sshfs pipelines two READDIRs on the directory's handle; answered out of order,
    // the first gets the EOF and the listing comes out empty. Several listings, all reported.
    for i in 0..5 {
        let ls = run_ok(h, Command::new("ls").arg("-l").arg(m("")).arg(m("sub")));
        let shown = |name: &str| ls.stdout.contains(&format!(" {name}\n"));
        if !(shown("cp-0.bin") && shown("cp-p.bin") && shown("sub") && shown("moved.bin"))
            || shown("gone.bin")
            || shown("moving.bin")
        {
            problems.push(format!(
                "`ls -l` {i} of 5 missed files (cp-0.bin, cp-p.bin, sub, sub/moved.bin) or \
                 showed the removed gone.bin or the old name moving.bin: {}",
                ls.report()
            ));
        }
    }
    drain(h, "resume");
}

fn sshfs_rsync_and_df(h: &Harness, mount: &SshfsMount, expected: &mut Vec<(String, PathBuf)>) {
    let m = |name: &str| mount.dir.join(name);
    // rsync --inplace writes the target itself; plain rsync writes `.NAME.XXXXXX`, sets its
    // mode and times and renames it over NAME.
    let local = local_file(h, "rsync-inplace.bin", (2 << 20) + 11, 400);
    run_ok(
        h,
        Command::new("rsync")
            .arg("--inplace")
            .arg(&local)
            .arg(m("rsync-inplace.bin")),
    );
    expected.push(("rsync-inplace.bin".into(), local));
    let local = local_file(h, "rsync-plain.bin", (2 << 20) + 13, 401);
    run_ok(
        h,
        Command::new("rsync").arg(&local).arg(m("rsync-plain.bin")),
    );
    expected.push(("rsync-plain.bin".into(), local));

    // df: statvfs@openssh.com.
    let df = run_ok(h, Command::new("df").arg(&mount.dir));
    assert!(
        df.stdout.contains(&*mount.dir.to_string_lossy()),
        "df shows the mount: {}",
        df.report()
    );
}

/// Every expected object arrived byte-exact, and nothing else; then the steps that failed.
async fn check_sshfs_objects(h: &Harness, expected: &[(String, PathBuf)], problems: &[String]) {
    for (path, local) in expected {
        assert_object(h, "alice", path, local).await;
    }
    assert!(
        problems.is_empty(),
        "{} sshfs steps failed (every other step passed):\n{}\n--- daemon log:\n{}",
        problems.len(),
        problems.join("\n"),
        log_tail(h)
    );
    h.wait_drained(OBJECT_TIMEOUT).await;
    let mut want: Vec<String> = expected.iter().map(|(p, _)| key_of("alice", p)).collect();
    want.sort();
    assert_eq!(
        h.list_keys().await,
        want,
        "exactly these objects: no removed file, no old name of a renamed one, no rsync \
         temporary file"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. lftp

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lftp_put_uploads_byte_exact() {
    if !have("lftp", "lftp") || !have("ssh", "openssh-client") {
        return;
    }
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    let local = local_file(&h, "lftp-local.bin", (3 << 20) + 5, 4);
    let connect = format!(
        "ssh -a -x -i {} {}",
        h.key_path.display(),
        ssh_option_args().join(" ")
    );
    let script = |target: &str| {
        format!(
            "set sftp:connect-program \"{connect}\"; set net:max-retries 1; \
             set net:timeout 20; put {} -o {target} || exit 1; exit 0",
            local.display()
        )
    };
    let lftp = |target: &str| {
        let mut cmd = Command::new("lftp");
        cmd.env("HOME", subdir(&h, "home"))
            .arg("-u")
            .arg("alice,")
            .arg("-e")
            .arg(script(target))
            .arg(format!("sftp://127.0.0.1:{}", h.sftp_port));
        cmd
    };
    run_ok(&h, &mut lftp("lftp.bin"));
    assert_object(&h, "alice", "lftp.bin", &local).await;
    // The script's exit status is put's: a refused upload shows.
    run_fails(&h, &mut lftp("/../x"), "put above the root");
}

// ---------------------------------------------------------------------------------------------
// 5. curl (libssh2)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_sftp_upload_is_byte_exact() {
    if !have("curl", "curl") {
        return;
    }
    // libssh2 1.10 (bookworm) offers no ETM MAC and no AEAD cipher: only the "compatible"
    // profile admits it.
    let mut h = Harness::new(Options {
        sftp_extra: Some("algorithms = \"compatible\"".into()),
        ..Options::default()
    })
    .await;
    h.start_daemon();
    let version = run_ok(&h, Command::new("curl").arg("-V"));
    if !version.stdout.contains("sftp") {
        let reason = "this curl has no sftp:// (Debian's curl is built with libssh2)";
        assert!(std::env::var_os("CI").is_none(), "{reason} (CI is set)");
        eprintln!("skipped: {reason}");
        return;
    }
    let local = local_file(&h, "curl-local.bin", (3 << 20) + 9, 5);
    run_ok(
        &h,
        Command::new("curl")
            .args([
                "-sS",
                "--insecure",
                "--connect-timeout",
                "20",
                "--max-time",
                "50",
            ])
            .arg("--key")
            .arg(&h.key_path)
            .arg("--pubkey")
            .arg(h.key_path.with_extension("pub"))
            .args(["-u", "alice:"])
            .arg("-T")
            .arg(&local)
            .arg(format!("sftp://127.0.0.1:{}/curl.bin", h.sftp_port)),
    );
    assert_object(&h, "alice", "curl.bin", &local).await;
}

// ---------------------------------------------------------------------------------------------
// 6. rclone

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rclone_sftp_copyto_is_byte_exact() {
    if !have("rclone", "rclone") {
        return;
    }
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    let local = local_file(&h, "rclone-local.bin", (3 << 20) + 3, 6);
    // The gateway runs no shell commands: no remote md5sum/sha1sum.
    let remote = format!(
        ":sftp,host=127.0.0.1,port={},user=alice,key_file={},disable_hashcheck=true:rclone.bin",
        h.sftp_port,
        h.key_path.display()
    );
    run_ok(
        &h,
        Command::new("rclone")
            .env("HOME", subdir(&h, "home"))
            .args([
                "--config",
                "/dev/null",
                "--retries",
                "1",
                "--low-level-retries",
                "1",
            ])
            .args(["--contimeout", "20s", "--timeout", "30s"])
            .arg("copyto")
            .arg(&local)
            .arg(remote),
    );
    assert_object(&h, "alice", "rclone.bin", &local).await;
}

// ---------------------------------------------------------------------------------------------
// 7. PuTTY psftp

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn putty_psftp_batch_put_is_byte_exact() {
    if !have("psftp", "putty-tools")
        || !have("puttygen", "putty-tools")
        || !have("ssh-keygen", "openssh-client")
    {
        return;
    }
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    let ppk = h.dir.path().join("client_key.ppk");
    run_ok(
        &h,
        Command::new("puttygen")
            .arg(&h.key_path)
            .args(["-O", "private", "-o"])
            .arg(&ppk),
    );
    // "256 SHA256:... comment (ED25519)": psftp -hostkey takes the SHA256 fingerprint.
    let fingerprint = run_ok(
        &h,
        Command::new("ssh-keygen").arg("-lf").arg(h.host_key_path()),
    );
    let fingerprint = fingerprint
        .stdout
        .split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_owned();
    let local = local_file(&h, "psftp-local.bin", (3 << 20) + 1, 7);
    let script = h.dir.path().join("psftp-script");
    std::fs::write(
        &script,
        format!("put {} psftp.bin\nquit\n", local.display()),
    )
    .expect("script");
    run_ok(
        &h,
        Command::new("psftp")
            .env("HOME", subdir(&h, "home"))
            .arg("-batch")
            .arg("-P")
            .arg(h.sftp_port.to_string())
            .arg("-i")
            .arg(&ppk)
            .arg("-hostkey")
            .arg(&fingerprint)
            .arg("-b")
            .arg(&script)
            .arg("alice@127.0.0.1"),
    );
    assert_object(&h, "alice", "psftp.bin", &local).await;
}

// ---------------------------------------------------------------------------------------------
// 8. JSch (Debian libjsch-java)

/// Compiles `tests/clients/JschUpload.java` into the harness directory and returns the
/// command that uploads `local` to `remote` as alice with the RSA PEM key; None when skipped.
fn jsch_upload(h: &Harness, local: &Path, remote: &str) -> Option<Command> {
    if !have(JSCH_JAR, "libjsch-java")
        || !have("javac", "default-jdk-headless")
        || !have("java", "default-jdk-headless")
    {
        return None;
    }
    let classes = subdir(h, "jsch-classes");
    run_ok(
        h,
        Command::new("javac")
            .args(["-cp", JSCH_JAR, "-d"])
            .arg(&classes)
            .arg(JSCH_SOURCE),
    );
    let mut cmd = Command::new("java");
    cmd.arg("-cp")
        .arg(format!("{JSCH_JAR}:{}", classes.display()))
        .arg("JschUpload")
        .arg("127.0.0.1")
        .arg(h.sftp_port.to_string())
        .arg("alice")
        .arg(h.extra_key(RSA_PEM.file))
        .arg(local)
        .arg(remote);
    Some(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsch_uploads_byte_exact_with_the_compatible_profile() {
    // JSch 0.1.5x: ecdh-sha2-nistp*/diffie-hellman-group14-sha1/group-exchange kex, ssh-rsa
    // and ecdsa host keys, aes*-ctr, hmac-sha2-256 (not ETM) and hmac-sha1, and ssh-rsa
    // (SHA-1) user signatures: the "compatible" profile.
    let mut h = Harness::new(Options {
        sftp_extra: Some("algorithms = \"compatible\"".into()),
        extra_keys: vec![RSA_PEM],
        ..Options::default()
    })
    .await;
    let local = local_file(&h, "jsch-local.bin", (3 << 20) + 17, 8);
    let Some(mut cmd) = jsch_upload(&h, &local, "jsch.bin") else {
        return;
    };
    h.start_daemon();
    let ran = run_ok(&h, &mut cmd);
    eprintln!(
        "{}",
        ran.stderr.lines().take(2).collect::<Vec<_>>().join("\n")
    );
    assert_object(&h, "alice", "jsch.bin", &local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsch_is_refused_by_the_modern_profile_and_the_log_names_the_fix() {
    let mut h = Harness::new(Options {
        extra_keys: vec![RSA_PEM],
        ..Options::default()
    })
    .await;
    let local = local_file(&h, "jsch-local.bin", 1000, 9);
    let Some(mut cmd) = jsch_upload(&h, &local, "jsch.bin") else {
        return;
    };
    h.start_daemon();
    let ran = run_fails(&h, &mut cmd, "JSch against the modern profile");
    assert!(
        ran.stderr.contains("negotiation fail"),
        "refused at the algorithm negotiation: {}",
        ran.report()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !h.log().contains("algorithms = \"compatible\"") {
        assert!(
            Instant::now() < deadline,
            "the daemon log names `algorithms = \"compatible\"` after a failed negotiation:\n{}",
            log_tail(&h)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(h.list_keys().await.is_empty(), "{:?}", h.list_keys().await);
}
