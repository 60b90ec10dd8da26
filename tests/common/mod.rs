//! Shared harness for the end-to-end tests: the embedded S3 server in this process, the real
//! `sftpgw` binary as a separate process, and the real OpenSSH `sftp` client. Submodules hold
//! what tests without a daemon share: `s3` (a client of the embedded server), `spool` (the
//! spool and drain in the test's process).
//!
//! It drives the gateway only from outside, as an operator or a client would (configuration
//! file, binary, control socket, SFTP, the bucket): it may not reach into a running daemon's
//! state. Every test file includes it with `mod common;`; not every file uses every helper,
//! hence `dead_code` is allowed here.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics on what it did not expect"
)]
#![allow(dead_code)]

pub mod s3;
pub mod spool;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sftpgw::s3server::{S3Server, S3ServerConfig};
use sftpgw::status::Snapshot;
use sftpgw::status::control::{self, Request, Response};

pub const BUCKET: &str = "uploads";
pub const ACCESS_KEY: &str = "test-access";
pub const SECRET_KEY: &str = "test-secret";
pub const PREFIX: &str = "site/";
/// A bucket name the embedded S3 server does not have unless a test creates it.
pub const MISSING_BUCKET: &str = "not-yet";
/// OpenSSH client options that take the gateway's host key unseen and remember none: each
/// test's gateway has a new one.
pub const NO_HOST_KEY_CHECK: [&str; 4] = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
];

pub struct Options {
    pub part_size: &'static str,
    pub concurrency: usize,
    pub partial_ttl: &'static str,
    pub spool_dir: Option<PathBuf>,
    /// The bucket the gateway is configured with (default: the one the S3 server has).
    pub bucket: &'static str,
    /// Keys of a `[shaping]` section, if any.
    pub shaping: Option<String>,
    /// More lines for the `[sftp]` section (e.g. `algorithms = "compatible"`), if any.
    pub sftp_extra: Option<String>,
    /// More client keys, generated in the harness directory and authorized for every user
    /// next to `key_path` (see [`Harness::extra_key`]).
    pub extra_keys: Vec<ExtraKey>,
    /// The SFTP listen address's host (default "127.0.0.1"; "[::]" only inside a network
    /// namespace of the test's own, see tests/hostile_lan.rs).
    pub listen_host: &'static str,
    /// More `[[users]]` tables, appended to the configuration.
    pub users_extra: Option<String>,
    /// Keys of an `[events]` section, if any.
    pub events: Option<String>,
    /// `[s3] manifest_interval` (default "off": a test that wants manifests asks for them).
    pub manifest_interval: &'static str,
}

/// A client key the harness generates with `ssh-keygen -q -N "" -C test KEYGEN_ARGS -f FILE`
/// in its directory, e.g. an RSA key in PEM format for clients that read no other.
#[derive(Clone, Copy, Debug)]
pub struct ExtraKey {
    /// File name in the harness directory (the public key is `FILE.pub`).
    pub file: &'static str,
    /// Key type and format, e.g. `["-t", "rsa", "-b", "3072", "-m", "PEM"]`.
    pub keygen_args: &'static [&'static str],
}

impl Default for Options {
    fn default() -> Self {
        Options {
            part_size: "5MiB",
            concurrency: 4,
            partial_ttl: "24h",
            spool_dir: None,
            bucket: BUCKET,
            shaping: None,
            sftp_extra: None,
            extra_keys: Vec::new(),
            listen_host: "127.0.0.1",
            users_extra: None,
            manifest_interval: "off",
            events: None,
        }
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub s3: S3Server,
    pub config_path: PathBuf,
    pub socket: PathBuf,
    pub spool_dir: PathBuf,
    pub sftp_port: u16,
    pub key_path: PathBuf,
    daemon: Option<Child>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Writes an ed25519 key pair with ssh-keygen and returns the public key line.
pub fn keygen(path: &Path) -> String {
    keygen_with(path, &["-t", "ed25519"])
}

/// Writes a key pair of the type and format `args` give (`-t rsa -m PEM`, ...) with ssh-keygen,
/// without a passphrase, and returns the public key line.
pub fn keygen_with(path: &Path, args: &[&str]) -> String {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", "test"])
        .args(args)
        .arg("-f")
        .arg(path)
        .status()
        .expect("ssh-keygen (install openssh-client)");
    assert!(status.success());
    std::fs::read_to_string(path.with_extension("pub"))
        .expect("read pub")
        .trim()
        .to_owned()
}

/// Makes the client key at `key_path` and the `extra` ones in `dir`, and returns them as the
/// items of a TOML `authorized_keys` array.
fn authorized_keys(dir: &Path, key_path: &Path, extra: &[ExtraKey]) -> String {
    let public = keygen(key_path);
    let mut authorized = format!("\"{public}\"");
    for extra in extra {
        let line = keygen_with(&dir.join(extra.file), extra.keygen_args);
        authorized.push_str(&format!(", \"{line}\""));
    }
    authorized
}

/// The hash `sftpgw user passwd` prints for `password`.
pub fn password_hash(password: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sftpgw"))
        .args(["user", "passwd"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("user passwd");
    writeln!(child.stdin.take().expect("stdin"), "{password}").expect("password");
    let out = child.wait_with_output().expect("hash");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}

impl Harness {
    /// A harness whose daemon is started with the bucket MISSING_BUCKET, which the S3 server
    /// does not have until the test creates it: every upload fails permanently till then.
    pub async fn started_without_its_bucket() -> Harness {
        let mut h = Harness::new(Options {
            bucket: MISSING_BUCKET,
            ..Options::default()
        })
        .await;
        h.start_daemon();
        h
    }

    /// Creates MISSING_BUCKET on the S3 server: someone fixes what made uploads fail.
    pub async fn create_missing_bucket(&self) {
        self.s3_client()
            .create_bucket()
            .bucket(MISSING_BUCKET)
            .send()
            .await
            .expect("create bucket");
    }

    /// Starts the embedded S3 server, makes the client keys and writes the gateway's
    /// configuration; the daemon is not started (see [`Harness::start_daemon`]).
    pub async fn new(opts: Options) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let s3 = S3Server::start(S3ServerConfig {
            root: dir.path().join("s3"),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
            bucket: BUCKET.into(),
        })
        .await
        .expect("start S3 server");
        let key_path = dir.path().join("client_key");
        let authorized = authorized_keys(dir.path(), &key_path, &opts.extra_keys);
        let spool_dir = opts
            .spool_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("spool"));
        let h = Harness {
            config_path: dir.path().join("sftpgw.toml"),
            socket: dir.path().join("control.sock"),
            dir,
            s3,
            spool_dir,
            sftp_port: free_port(),
            key_path,
            daemon: None,
        };
        h.write_config(&opts, &authorized);
        h
    }

    /// Writes the gateway's configuration for this harness's paths, ports and keys, as
    /// `opts` shapes it.
    fn write_config(&self, opts: &Options, authorized: &str) {
        let config = format!(
            r#"
[sftp]
listen = "{listen_host}:{sftp_port}"
host_key = "{d}/host_key"
{sftp_extra}
[spool]
dir = "{spool}"
partial_ttl = "{ttl}"
# The test machine's disk may be fuller than the default watermark of 90%: tests that
# exercise the watermark set their own.
high_watermark = "100%"
low_watermark = "100%"
[s3]
endpoint = "{ep}"
bucket = "{bucket}"
prefix = "{PREFIX}"
path_style = true
access_key_id = "{ACCESS_KEY}"
secret_access_key = "{SECRET_KEY}"
part_size = "{part}"
concurrency = {conc}
manifest_interval = "{manifest}"
[control]
socket = "{sock}"
[[users]]
name = "alice"
authorized_keys = [{authorized}]
[[users]]
name = "bob"
authorized_keys = [{authorized}]
"#,
            d = self.dir.path().display(),
            spool = self.spool_dir.display(),
            ttl = opts.partial_ttl,
            ep = self.s3.endpoint(),
            part = opts.part_size,
            conc = opts.concurrency,
            manifest = opts.manifest_interval,
            sock = self.socket.display(),
            bucket = opts.bucket,
            sftp_extra = opts.sftp_extra.as_deref().unwrap_or_default(),
            listen_host = opts.listen_host,
            sftp_port = self.sftp_port,
        );
        let config = format!(
            "{config}\n{}\n",
            opts.users_extra.as_deref().unwrap_or_default()
        );
        let config = match &opts.shaping {
            Some(keys) => format!("{config}\n[shaping]\n{keys}\n"),
            None => config,
        };
        let config = match &opts.events {
            Some(keys) => format!("{config}\n[events]\n{keys}\n"),
            None => config,
        };
        std::fs::write(&self.config_path, config).expect("write config");
    }

    pub fn start_daemon(&mut self) {
        self.start_daemon_with_env(&[]);
    }

    /// `start_daemon` with more environment variables for the daemon.
    pub fn start_daemon_with_env(&mut self, env: &[(&str, &std::ffi::OsStr)]) {
        assert!(self.daemon.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_sftpgw"))
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .env("SFTPGW_LOG", "info,sftpgw=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sftpgw");
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        // A killed daemon leaves its socket file behind: wait until one answers.
        while TcpStream::connect(("127.0.0.1", self.sftp_port)).is_err()
            || std::os::unix::net::UnixStream::connect(&self.socket).is_err()
        {
            if let Some(status) = self
                .daemon
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("sftpgw exited early with {status}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "sftpgw did not start; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A key of `Options::extra_keys`, by its file name.
    pub fn extra_key(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The gateway's ed25519 host key (written by the daemon on its first start).
    pub fn host_key_path(&self) -> PathBuf {
        self.dir.path().join("host_key")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// SIGKILL: no chance to clean up, like a power cut for the process.
    pub fn kill_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    pub fn sftp_command(&self, user: &str) -> Command {
        self.sftp_command_with(user, &[])
    }

    /// `sftp_command` with more client options (placed before the destination).
    pub fn sftp_command_with(&self, user: &str, options: &[&str]) -> Command {
        self.sftp_command_to(user, "127.0.0.1", options)
    }

    /// `sftp_command_with` to another address of the gateway (e.g. "[::1]").
    pub fn sftp_command_to(&self, user: &str, host: &str, options: &[&str]) -> Command {
        let mut cmd = Command::new("sftp");
        cmd.args(options);
        cmd.args(["-b", "-", "-i"])
            .arg(&self.key_path)
            .args(["-P", &self.sftp_port.to_string()])
            .args(NO_HOST_KEY_CHECK)
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "Ciphers=aes128-gcm@openssh.com",
            ])
            .arg(format!("{user}@{host}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs an sftp batch (one command per line) as `user`; `-b` stops at the first failing
    /// command unless it is prefixed with `-`.
    pub fn sftp(&self, user: &str, batch: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .sftp_command(user)
            .spawn()
            .expect("spawn sftp (install openssh-client)");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(batch.as_bytes())
            .expect("write batch");
        child.wait_with_output().expect("sftp output")
    }

    pub fn sftp_ok(&self, user: &str, batch: &str) -> String {
        let out = self.sftp(user, batch);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "sftp batch failed:\n{batch}\nstdout:\n{stdout}\nstderr:\n{}\ndaemon log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        stdout
    }

    /// Runs `sftpgw drain ARGS` against the daemon (pause, resume, rate) and checks it worked.
    pub fn drain_cli(&self, args: &[&str]) -> String {
        self.cli("drain", args)
    }

    /// Runs `sftpgw COMMAND ARGS` against the daemon and checks it worked.
    pub fn cli(&self, command: &str, args: &[&str]) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sftpgw"))
            .arg(command)
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .env_remove("SFTPGW_CONFIG")
            .output()
            .expect("run sftpgw");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "sftpgw {command} {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    pub async fn status(&self) -> Snapshot {
        match control::request(&self.socket, &Request::Status)
            .await
            .expect("status request")
        {
            Response::Status(s) => *s,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Waits until some file is `failed` and returns it.
    pub async fn wait_failed(&self, timeout: Duration) -> sftpgw::status::FileStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status().await;
            if let Some(f) = s
                .files
                .iter()
                .find(|f| f.state == sftpgw::spool::FileState::Failed)
            {
                return f.clone();
            }
            assert!(
                Instant::now() < deadline,
                "never failed in {timeout:?}: {s:#?}\nlog:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until nothing is queued (every sealed file delivered or failed).
    pub async fn wait_drained(&self, timeout: Duration) -> Snapshot {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status().await;
            let busy = s.files.iter().any(|f| {
                matches!(
                    f.state,
                    sftpgw::spool::FileState::Sealed | sftpgw::spool::FileState::Uploading
                )
            });
            if !busy {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "not drained in {timeout:?}: {s:#?}\nlog:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client of the embedded S3 server, for looking at the bucket behind the gateway.
    pub fn s3_client(&self) -> aws_sdk_s3::Client {
        s3::client(&self.s3)
    }

    /// The bytes of object `key` (with its prefix), or None if there is none.
    pub async fn get_object(&self, key: &str) -> Option<Vec<u8>> {
        s3::object(&self.s3, key).await
    }

    pub async fn list_keys(&self) -> Vec<String> {
        let out = self
            .s3_client()
            .list_objects_v2()
            .bucket(BUCKET)
            .send()
            .await
            .expect("list");
        let mut keys: Vec<String> = out
            .contents()
            .iter()
            .filter_map(|o| o.key().map(String::from))
            .collect();
        keys.sort();
        keys
    }

    /// Regular files left in the spool's data directories.
    pub fn spool_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for sub in ["partial", "sealed"] {
            if let Ok(rd) = std::fs::read_dir(self.spool_dir.join(sub)) {
                out.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        }
        out
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.kill_daemon();
        if std::env::var_os("SFTPGW_KEEP_TEST_DIR").is_some() {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tmp")).keep();
            eprintln!("test directory kept: {}", kept.display());
        }
    }
}

/// Deterministic pseudo-random bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
