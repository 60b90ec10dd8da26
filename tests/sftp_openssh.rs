//! The SFTP server driven by the real OpenSSH client (`/usr/bin/sftp`, `/usr/bin/ssh`) against
//! a real spool, on 127.0.0.1.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::as_conversions,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    reason = "a test panics on what it did not expect, and may cast what it made itself"
)]

use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use russh_sftp::protocol::{FileAttributes, Init, Open, OpenFlags, Packet, Read, Write};
use sftpgw::config::User;
use sftpgw::sftp::server::{SshSetup, generate_ed25519, write_private_key};
use sftpgw::sftp::{Users, hash_password, serve};
use sftpgw::spool::{FileState, OpenMode, Spool, SpoolOptions, VPath};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const PASSWORD: &str = "correct horse battery";

struct Gateway {
    dir: tempfile::TempDir,
    port: u16,
    key: PathBuf,
    spool: Arc<Spool>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), sftpgw::sftp::ServeError>>,
}

async fn start() -> Gateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(SpoolOptions::unlimited(dir.path().join("spool"))).expect("spool");
    let client = generate_ed25519("test client");
    let key = dir.path().join("client_ed25519");
    write_private_key(&key, &client).expect("client key");
    let users = Users::new(&[User {
        name: "alice".into(),
        authorized_keys: vec![client.public_key().to_openssh().expect("public key")],
        password_hash: Some(hash_password(PASSWORD)),
        quota: Default::default(),
    }])
    .expect("users");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        SshSetup::modern(generate_ed25519("host")),
        Arc::new(users),
        Arc::clone(&spool),
        async move {
            let _ = stopped.await;
        },
    ));
    Gateway {
        dir,
        port,
        key,
        spool,
        stop: Some(stop),
        server,
    }
}

/// Options for `sftp` (`-P port`); see [`ssh_options`] for `ssh`.
fn client_options(port: u16) -> Vec<String> {
    let mut options = vec!["-P".to_owned(), port.to_string()];
    options.extend(common_options(true));
    options
}

fn ssh_options(port: u16, batch: bool) -> Vec<String> {
    let mut options = vec!["-p".to_owned(), port.to_string()];
    options.extend(common_options(batch));
    options
}

fn common_options(batch: bool) -> Vec<String> {
    let batch = if batch {
        "BatchMode=yes"
    } else {
        "BatchMode=no"
    };
    [
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "LogLevel=ERROR",
        batch,
    ]
    .iter()
    .flat_map(|o| ["-o".to_owned(), (*o).to_owned()])
    .collect()
}

impl Gateway {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `sftp -b` with `commands` as user alice with her key.
    async fn sftp(&self, commands: &str) -> Output {
        let batch = self.path("batch");
        std::fs::write(&batch, commands).expect("batch file");
        let mut cmd = tokio::process::Command::new("/usr/bin/sftp");
        cmd.args(client_options(self.port))
            .arg("-i")
            .arg(&self.key)
            .arg("-b")
            .arg(&batch)
            .arg("alice@127.0.0.1")
            .current_dir(self.dir.path());
        run(cmd).await
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .expect("server stops within 10 s")
            .expect("server task");
        result.expect("serve returns Ok");
    }
}

async fn run(mut cmd: tokio::process::Command) -> Output {
    cmd.kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("client finished within 120 s")
        .expect("client runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn state_of(spool: &Spool, path: &str) -> Option<FileState> {
    let path = VPath::resolve(path).expect("path");
    spool
        .files()
        .into_iter()
        .find(|f| f.path == path && f.user == "alice")
        .map(|f| f.state)
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "sftp failed: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_put_ls_mkdir_rename_get_rm_roundtrip() {
    let gw = start().await;
    let data = pattern(3 * 1024 * 1024, 5);
    std::fs::write(gw.path("upload.bin"), &data).unwrap();
    let output = gw
        .sftp(
            "put upload.bin up.bin\n\
             ls -l\n\
             mkdir inbox\n\
             rename up.bin inbox/final.bin\n\
             ls -l inbox\n\
             get inbox/final.bin back.bin\n\
             df\n\
             rm inbox/final.bin\n\
             ls -l inbox\n\
             rmdir inbox\n",
        )
        .await;
    assert_success(&output);
    let stdout = text(&output.stdout);
    // `ls -l` prints our long names verbatim.
    assert!(
        stdout.contains("-rw-r--r--   1 alice    alice     3145728 "),
        "{stdout}"
    );
    assert!(stdout.contains(" up.bin\n"), "{stdout}");
    assert!(stdout.contains(" final.bin\n"), "{stdout}");
    // statvfs@openssh.com is recognised (revision 2), or `df` would fail the batch.
    assert!(stdout.contains("Avail"), "{stdout}");
    assert_eq!(std::fs::read(gw.path("back.bin")).unwrap(), data);
    assert_eq!(state_of(&gw.spool, "inbox/final.bin"), None, "removed");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_upload_is_sealed_when_put_returns() {
    let gw = start().await;
    let data = pattern(5 * 1024 * 1024 + 3, 1);
    std::fs::write(gw.path("f.bin"), &data).unwrap();
    let output = gw.sftp("put f.bin sealed.bin\n").await;
    assert_success(&output);
    // `put` returns after CLOSE was acknowledged: the spool must already hold it sealed.
    let state = state_of(&gw.spool, "sealed.bin");
    assert!(
        matches!(
            state,
            Some(FileState::Sealed | FileState::Uploading | FileState::Delivered)
        ),
        "{state:?}"
    );
    let entry = gw
        .spool
        .stat("alice", &VPath::resolve("sealed.bin").unwrap())
        .unwrap();
    assert_eq!(entry.size, data.len() as u64);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_paths_outside_the_jail_are_permission_denied() {
    let gw = start().await;
    std::fs::write(gw.path("f.bin"), b"x").unwrap();
    let output = gw
        .sftp(
            "-put f.bin ../escape.bin\n\
             -put f.bin /../../etc/escape.bin\n\
             -mkdir ../outside\n\
             cd ..\n\
             pwd\n\
             -rename f.bin ../x\n\
             ls -l\n",
        )
        .await;
    assert_success(&output);
    // `cd ..` at the top stays there, as in a chroot (REALPATH clamps `..`).
    assert!(
        text(&output.stdout).contains("Remote working directory: /\n"),
        "{}",
        text(&output.stdout)
    );
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("\"/../escape.bin\": Permission denied"),
        "{stderr}"
    );
    assert!(
        stderr.contains("\"/../../etc/escape.bin\": Permission denied"),
        "{stderr}"
    );
    assert!(
        stderr.contains("remote mkdir \"/../outside\": Permission denied"),
        "{stderr}"
    );
    assert!(
        stderr.contains("remote rename \"/f.bin\" to \"/../x\": Permission denied"),
        "{stderr}"
    );
    assert!(gw.spool.files().is_empty(), "nothing was written");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_reput_resumes_a_partial_upload() {
    let gw = start().await;
    let data = pattern(2 * 1024 * 1024, 7);
    std::fs::write(gw.path("resume.bin"), &data).unwrap();
    // A session that ended after the first MiB: the spool keeps it partial.
    let first = gw
        .spool
        .open_write(
            "alice",
            &VPath::resolve("resume.bin").unwrap(),
            OpenMode::default(),
        )
        .await
        .unwrap();
    first
        .write_at(0, Bytes::copy_from_slice(&data[..1024 * 1024]))
        .await
        .unwrap();
    drop(first);
    assert_eq!(state_of(&gw.spool, "resume.bin"), Some(FileState::Partial));

    let output = gw
        .sftp("reput resume.bin resume.bin\nget resume.bin back.bin\n")
        .await;
    assert_success(&output);
    assert_eq!(std::fs::read(gw.path("back.bin")).unwrap(), data);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_password_login_works_and_wrong_password_fails() {
    let gw = start().await;
    let askpass = gw.path("askpass.sh");
    // `sftp -b` forces BatchMode (no passwords), so log in with `ssh`: a successful login is
    // then refused a shell (exit 1), a failed one ends with "Permission denied" (exit 255).
    let attempt = |password: &str| {
        std::fs::write(&askpass, format!("#!/bin/sh\necho '{password}'\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut cmd = tokio::process::Command::new("/usr/bin/ssh");
        cmd.args(ssh_options(gw.port, false))
            .args([
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "PreferredAuthentications=password",
            ])
            .args(["-o", "NumberOfPasswordPrompts=1"])
            .arg("alice@127.0.0.1")
            .arg("true")
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .stdin(std::process::Stdio::null());
        cmd
    };
    let right = run(attempt(PASSWORD)).await;
    assert_eq!(right.status.code(), Some(1), "{}", text(&right.stderr));
    assert!(
        text(&right.stderr).contains("only offers SFTP"),
        "{}",
        text(&right.stderr)
    );
    let wrong = run(attempt("wrong")).await;
    assert_eq!(wrong.status.code(), Some(255));
    assert!(
        text(&wrong.stderr).contains("Permission denied"),
        "{}",
        text(&wrong.stderr)
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_key_login_does_not_pay_the_rejection_delay_and_shells_are_refused() {
    let gw = start().await;
    // OpenSSH's first `none` probe must be rejected without the 500 ms rejection delay
    // (SSH_AUTH_REJECTION_MILLISECONDS): a whole login plus `ls` takes about 50 ms here.
    let started = Instant::now();
    assert_success(&gw.sftp("ls\n").await);
    let elapsed = started.elapsed();
    eprintln!("key login + ls took {elapsed:?}");
    assert!(elapsed < Duration::from_millis(450), "{elapsed:?}");

    let mut cmd = tokio::process::Command::new("/usr/bin/ssh");
    cmd.args(ssh_options(gw.port, true))
        .arg("-i")
        .arg(&gw.key)
        .arg("alice@127.0.0.1")
        .arg("cat /etc/passwd");
    let output = run(cmd).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("only offers SFTP"),
        "{}",
        text(&output.stderr)
    );
    assert!(output.stdout.is_empty());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_is_refused_like_a_wrong_key() {
    let gw = start().await;
    std::fs::write(gw.path("batch"), "ls\n").unwrap();
    let mut cmd = tokio::process::Command::new("/usr/bin/sftp");
    cmd.args(client_options(gw.port))
        .arg("-i")
        .arg(&gw.key)
        .arg("-b")
        .arg(gw.path("batch"))
        .arg("mallory@127.0.0.1");
    let output = run(cmd).await;
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("Permission denied (publickey,password)"),
        "{}",
        text(&output.stderr)
    );
    gw.stop().await;
}

/// CPU seconds this process (the server side) has used so far, from /proc/self/stat.
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Throughput of `put` of 1 GiB with OpenSSH's client over loopback, durable close included.
/// Run: `cargo test --release --test sftp_openssh -- --ignored --nocapture put_1gib`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, takes tens of seconds"]
async fn put_1gib_throughput() {
    let gw = start().await;
    let source = std::env::var("SFTPGW_BENCH_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let path = gw.path("1gib.bin");
            let mut data = pattern(1024 * 1024, 11);
            let mut file = std::fs::File::create(&path).unwrap();
            for i in 0..1024u32 {
                data[0..4].copy_from_slice(&i.to_be_bytes());
                std::io::Write::write_all(&mut file, &data).unwrap();
            }
            path
        });
    let cipher = std::env::var("SFTPGW_BENCH_CIPHER").unwrap_or("aes128-gcm@openssh.com".into());
    let mut runs = Vec::new();
    for run_index in 0..3 {
        let batch = format!("put {} big{run_index}.bin\n", source.display());
        std::fs::write(gw.path("batch"), batch).unwrap();
        let mut cmd = tokio::process::Command::new("/usr/bin/sftp");
        cmd.args(client_options(gw.port))
            .args(["-c", &cipher, "-i"])
            .arg(&gw.key)
            .arg("-b")
            .arg(gw.path("batch"))
            .arg("alice@127.0.0.1");
        let cpu_before = process_cpu_seconds();
        let started = Instant::now();
        let output = run(cmd).await;
        let elapsed = started.elapsed().as_secs_f64();
        let server_cpu = process_cpu_seconds() - cpu_before;
        assert_success(&output);
        eprintln!(
            "put 1 GiB ({cipher}): {elapsed:.2} s, {:.0} MiB/s, server CPU {server_cpu:.2} s",
            1024.0 / elapsed
        );
        runs.push(elapsed);
        // Free the spool copy so that runs do not pile up gigabytes in the page cache.
        assert_success(&gw.sftp(&format!("rm big{run_index}.bin\n")).await);
    }
    runs.sort_by(f64::total_cmp);
    eprintln!("median {:.2} s ({:.0} MiB/s)", runs[1], 1024.0 / runs[1]);
    gw.stop().await;
}

/// Raw SFTP over `ssh -s sftp`, to send requests without reading replies.
struct RawSftp {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
}

impl RawSftp {
    async fn connect(gw: &Gateway) -> RawSftp {
        let mut cmd = tokio::process::Command::new("/usr/bin/ssh");
        cmd.args(ssh_options(gw.port, true))
            .arg("-i")
            .arg(&gw.key)
            .args(["-s", "alice@127.0.0.1", "sftp"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("ssh");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let mut raw = RawSftp {
            child,
            stdin,
            stdout,
        };
        raw.send(Packet::Init(Init::new())).await;
        assert!(matches!(raw.recv().await, Packet::Version(_)));
        raw
    }

    async fn send(&mut self, packet: Packet) {
        let bytes = Bytes::try_from(packet).expect("encode");
        self.stdin.write_all(&bytes).await.expect("send");
    }

    async fn recv(&mut self) -> Packet {
        let mut len = [0u8; 4];
        self.stdout
            .read_exact(&mut len)
            .await
            .expect("reply length");
        let mut body = vec![0; u32::from_be_bytes(len) as usize];
        self.stdout.read_exact(&mut body).await.expect("reply body");
        Packet::try_from(&mut Bytes::from(body)).expect("reply")
    }

    async fn open(&mut self, id: u32, path: &str, pflags: OpenFlags) -> String {
        let attrs = FileAttributes::empty();
        let open = Open {
            id,
            filename: path.into(),
            pflags,
            attrs,
        };
        self.send(Packet::Open(open)).await;
        match self.recv().await {
            Packet::Handle(handle) => handle.handle,
            other => panic!("open {path}: {other:?}"),
        }
    }

    /// Opens `path` for writing (request 1) and writes `len` bytes of `byte` at its start
    /// (request 2), which the server acknowledges: an upload in progress.
    async fn start_upload(&mut self, path: &str, byte: u8, len: usize) {
        let handle = self
            .open(1, path, OpenFlags::WRITE | OpenFlags::CREATE)
            .await;
        let write = Write {
            id: 2,
            handle,
            offset: 0,
            data: vec![byte; len],
        };
        self.send(Packet::Write(write)).await;
        assert!(matches!(self.recv().await, Packet::Status(_)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_while_replies_wait_for_its_window_ends_the_session() {
    let gw = start().await;
    let big = VPath::resolve("big.bin").unwrap();
    let writer = gw
        .spool
        .open_write("alice", &big, OpenMode::default())
        .await
        .unwrap();
    writer
        .write_at(0, Bytes::from(pattern(64 * 1024 * 1024, 1)))
        .await
        .unwrap();
    writer.close().await.unwrap();

    let mut raw = RawSftp::connect(&gw).await;
    raw.start_upload("/open.bin", 1, 1000).await;
    let reader = raw.open(3, "/big.bin", OpenFlags::READ).await;
    // 64 MiB of replies that nobody reads: ssh's stdout pipe fills, the SSH window closes,
    // and the session's writer waits for window that will never come.
    for i in 0..256u32 {
        let read = Read {
            id: 100 + i,
            handle: reader.clone(),
            offset: u64::from(i) << 18,
            len: 1 << 18,
        };
        raw.send(Packet::Read(read)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(state_of(&gw.spool, "open.bin"), Some(FileState::Receiving));

    raw.child.start_kill().expect("kill ssh");
    let _ = raw.child.wait().await;
    // The connection is gone: the session must end and drop its write handle.
    let deadline = Instant::now() + Duration::from_secs(10);
    while state_of(&gw.spool, "open.bin") != Some(FileState::Partial) {
        assert!(
            Instant::now() < deadline,
            "session did not end after its client was killed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_not_held_up_by_a_silent_or_a_busy_client() {
    let gw = start().await;
    // One client that never sends its SSH version, one in the middle of an SFTP session.
    let _silent = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    let mut raw = RawSftp::connect(&gw).await;
    raw.start_upload("/busy.bin", 3, 4096).await;
    let spool = Arc::clone(&gw.spool);
    // `stop` fails the test if serve does not return within 10 s.
    gw.stop().await;
    assert_eq!(state_of(&spool, "busy.bin"), Some(FileState::Partial));
    let _ = raw.child.wait().await;
}
