//! The serial console (`sftpgw console`) and its login banner (`sftpgw banner`), driven like
//! a terminal would: the real binary with its stdin and stdout on pipes, against a real
//! daemon and the embedded S3 server (tests/common).

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
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Harness, Options, SECRET_KEY, data};
use sftpgw::spool::FileState;

const WAIT: Duration = Duration::from_secs(30);

/// A running `sftpgw console`: what it printed so far, and its input.
struct Console {
    child: Child,
    stdin: Option<ChildStdin>,
    output: Arc<Mutex<String>>,
}

impl Console {
    fn start(config: &Path, extra: &[&str]) -> Console {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sftpgw"))
            .arg("console")
            .arg("--config")
            .arg(config)
            .args(extra)
            .env_remove("SFTPGW_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sftpgw console");
        let mut stdout = child.stdout.take().expect("stdout");
        let output = Arc::new(Mutex::new(String::new()));
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdin = child.stdin.take();
        let console = Console {
            child,
            stdin,
            output,
        };
        console.wait_for("choice> ");
        console
    }

    fn text(&self) -> String {
        self.output.lock().expect("lock").clone()
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).expect("write");
        stdin.write_all(b"\n").expect("write");
        stdin.flush().expect("flush");
    }

    /// Waits until `what` was printed (anywhere so far) and returns everything printed.
    fn wait_for(&self, what: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.text();
            if text.contains(what) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "console never printed {what:?}; it printed:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the menu's prompt appeared `n` times.
    fn wait_prompts(&self, n: usize) -> String {
        self.wait_count("choice> ", n)
    }

    /// Waits until `what` was printed `n` times in all.
    fn wait_count(&self, what: &str, n: usize) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.text();
            if text.matches(what).count() >= n {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "console never printed {what:?} {n} times; it printed:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Closes its input (Ctrl-D) and waits for it to end.
    fn finish(mut self) -> (ExitStatus, String) {
        drop(self.stdin.take());
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "console did not exit:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(50));
        (status, self.text())
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("kill");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_status_refuses_unknown_input_and_exits_0_at_end_of_input() {
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    let mut c = Console::start(&h.config_path, &[]);
    c.send("1");
    c.wait_for("QUEUE    0 file(s), 0 B");
    c.send("sh");
    c.wait_for("unknown choice \"sh\"");
    c.send("ls -l /");
    c.wait_for("unknown choice \"ls -l /\"");
    c.send(&"9".repeat(5000));
    c.wait_for("input too long");
    let text = c.wait_prompts(5);
    assert!(
        text.contains("\n  1) Status ") && text.contains("  9) Log out\n"),
        "{text}"
    );
    let (status, text) = c.finish();
    assert!(status.success(), "exit {status}:\n{text}");
    assert!(text.contains("logged out"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_ctrl_c_brings_the_menu_back_and_does_not_end_it() {
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    let mut c = Console::start(&h.config_path, &[]);
    for sig in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGQUIT,
        nix::sys::signal::Signal::SIGTSTP,
    ] {
        c.signal(sig);
    }
    c.wait_for("(interrupted)");
    c.wait_prompts(2);
    // Inside an entry too: Ctrl-C at the pause prompt goes back to the menu.
    c.send("2");
    c.wait_for("for how long?");
    c.signal(nix::sys::signal::Signal::SIGINT);
    c.wait_prompts(3);
    c.send("1");
    c.wait_for("ENGINE   ");
    c.send("9");
    let (status, text) = c.finish();
    assert!(status.success(), "exit {status}:\n{text}");
    assert_eq!(text.matches("(interrupted)").count(), 2, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_pause_shows_the_daemons_answer_cleanly() {
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    let mut c = Console::start(&h.config_path, &[]);
    c.send("2");
    c.send("5x");
    c.wait_for("not a duration: \"5x\"");
    c.send("2");
    c.send("30m");
    c.wait_prompts(3);
    c.send("4");
    c.send("fast");
    c.wait_for("not a rate: \"fast\"");
    let (status, text) = c.finish();
    assert!(status.success(), "exit {status}:\n{text}");
    // The daemon's answer: paused by the override, for 30 minutes.
    assert!(text.contains("Drain PAUSED"), "{text}");
    assert!(!text.contains("refused"), "{text}");
    let status = h.status().await;
    assert!(
        status.shaping.paused && status.shaping.override_active,
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_without_the_daemon_says_so_and_still_offers_network() {
    let h = Harness::new(Options::default()).await;
    let mut c = Console::start(&h.config_path, &[]);
    c.send("1");
    c.wait_for("the daemon is not running");
    c.wait_for("Network (6), diagnostics (7) and reboot (8) still work.");
    c.send("6");
    // The configured endpoint is the embedded S3 server: it resolves and answers.
    let text = c.wait_for("=> ");
    let (status, _) = c.finish();
    assert!(status.success());
    assert!(text.contains("default route:"), "{text}");
    assert!(text.contains("DNS servers:"), "{text}");
    assert!(text.contains("127.0.0.1"), "loopback is listed: {text}");
    assert!(text.contains("=> reachable"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_lists_a_failed_file_and_retries_it() {
    let h = Harness::started_without_its_bucket().await;
    let local = h.dir.path().join("f.bin");
    std::fs::write(&local, data(70_000, 3)).expect("write");
    h.sftp_ok("alice", &format!("put {} f.bin\n", local.display()));
    h.wait_failed(WAIT).await;
    h.create_missing_bucket().await;
    let mut c = Console::start(&h.config_path, &[]);
    c.send("5");
    let text = c.wait_for("Retry which?");
    assert!(text.contains("  1) alice:/f.bin"), "{text}");
    assert!(text.contains("NoSuchBucket"), "{text}");
    c.send("1");
    c.wait_for("1 failed file(s) queued again");
    let (status, _) = c.finish();
    assert!(status.success());
    let s = h.wait_drained(WAIT).await;
    assert!(
        s.files.iter().all(|f| f.state == FileState::Delivered),
        "{s:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantined_files_show_in_status_and_are_delivered_or_deleted_from_the_console() {
    let mut h = Harness::new(Options::default()).await;
    // Two sealed files the journal does not explain and that carry no identity (a journal
    // lost outright, files copied in by hand): the daemon quarantines them at start.
    std::fs::create_dir_all(h.spool_dir.join("sealed")).expect("sealed dir");
    let kept = data(50_000, 11);
    std::fs::write(h.spool_dir.join("sealed/4242"), &kept).expect("plant");
    std::fs::write(h.spool_dir.join("sealed/4243"), data(1_000, 12)).expect("plant");
    h.start_daemon();
    let s = h.status().await;
    assert!(
        s.health
            .reasons
            .iter()
            .any(|r| r.contains("2 file(s) in quarantine")),
        "{:?}",
        s.health
    );
    // The CLI lists them too.
    let out = Command::new(env!("CARGO_BIN_EXE_sftpgw"))
        .args(["quarantine", "list", "--config"])
        .arg(&h.config_path)
        .env_remove("SFTPGW_CONFIG")
        .output()
        .expect("sftpgw quarantine list");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{listed}");
    assert!(
        listed.contains("4242  50000 bytes  no identity") && listed.contains("4243"),
        "{listed}"
    );

    let mut c = Console::start(&h.config_path, &[]);
    c.send("10");
    let text = c.wait_for("Which? (d N: deliver");
    assert!(text.contains("  1) 4242  "), "{text}");
    assert!(text.contains("  2) 4243  "), "{text}");
    assert!(text.contains("no identity"), "{text}");
    c.send("d 1");
    c.wait_for("It carries no identity. Deliver as USER:/PATH ");
    c.send("alice:/restored/4242.bin");
    c.wait_for("4242 sealed as alice:/restored/4242.bin");
    // A deletion asks first; anything but "yes" keeps the file.
    c.send("10");
    c.wait_for("  1) 4243  ");
    c.send("x 1");
    c.wait_for("Delete 4243 for good?");
    c.send("no");
    c.wait_for("nothing deleted");
    assert!(h.spool_dir.join("quarantine/4243").exists());
    c.send("10");
    c.wait_count("Which? (d N: deliver", 3);
    c.send("x 1");
    c.wait_for("Type yes to delete: ");
    c.send("yes");
    c.wait_for("4243 deleted from the quarantine");
    c.send("10");
    c.wait_for("The quarantine is empty.");
    let (status, _) = c.finish();
    assert!(status.success());

    h.wait_drained(WAIT).await;
    assert_eq!(
        h.get_object(&format!("{}alice/restored/4242.bin", common::PREFIX))
            .await
            .as_deref(),
        Some(&kept[..]),
        "the delivered file reached its key with its bytes"
    );
    assert!(!h.spool_dir.join("quarantine/4243").exists());
    let s = h.status().await;
    assert!(
        !s.health.reasons.iter().any(|r| r.contains("quarantine")),
        "{:?}",
        s.health
    );
}

/// A host that lets five connections run out of login grace is banned; the console lists the
/// ban with its time left and lifts it, after which the daemon counts no banned source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_lists_a_banned_source_and_lifts_its_ban() {
    let mut h = Harness::new(Options {
        sftp_extra: Some("login_grace = \"1s\"".into()),
        ..Options::default()
    })
    .await;
    h.start_daemon();
    let mut c = Console::start(&h.config_path, &[]);
    c.send("11");
    c.wait_for("No source on the LAN is banned.");
    let idle: Vec<_> = (0..5)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", h.sftp_port)).expect("connect"))
        .collect();
    let deadline = Instant::now() + WAIT;
    while h.status().await.lan.expect("lan counts").banned_sources == 0 {
        assert!(Instant::now() < deadline, "no ban:\n{}", h.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(idle);
    c.send("11");
    let text = c.wait_for("Lift which?");
    assert!(text.contains("  1) 127.0.0.1  "), "{text}");
    assert!(text.contains("(1 ban(s) within a day)"), "{text}");
    c.send("1");
    c.wait_for("1 ban(s) lifted");
    let (status, _) = c.finish();
    assert!(status.success());
    assert_eq!(h.status().await.lan.expect("lan").banned_sources, 0);
}

fn bundle_members(path: &Path) -> Vec<(String, String)> {
    let file = std::fs::File::open(path).expect("open bundle");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    archive
        .entries()
        .expect("entries")
        .map(|e| {
            let mut e = e.expect("entry");
            let name = e.path().expect("path").display().to_string();
            let mut text = String::new();
            e.read_to_string(&mut text).expect("utf8 member");
            (name, text)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_writes_a_diagnostics_bundle_without_secrets() {
    let mut h = Harness::new(Options::default()).await;
    // A password hash in the configuration, like a real site's.
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";
    let config = std::fs::read_to_string(&h.config_path).expect("read config");
    let config = config.replacen(
        "name = \"bob\"",
        &format!("name = \"bob\"\npassword_hash = \"{hash}\""),
        1,
    );
    std::fs::write(&h.config_path, config).expect("write config");
    h.start_daemon();
    let out_dir = h.dir.path().join("diag");
    let mut c = Console::start(
        &h.config_path,
        &["--diagnostics-dir", out_dir.to_str().expect("utf8")],
    );
    c.send("7");
    let text = c.wait_for(".tar.gz (");
    let (status, _) = c.finish();
    assert!(status.success());
    let line = text
        .lines()
        .find(|l| l.starts_with("Diagnostics written to "))
        .expect("path line");
    let path = PathBuf::from(
        line.trim_start_matches("Diagnostics written to ")
            .rsplit_once(" (")
            .expect("size")
            .0,
    );
    assert_eq!(path.parent(), Some(out_dir.as_path()), "{line}");
    let members = bundle_members(&path);
    let names: Vec<&str> = members
        .iter()
        .map(|(n, _)| n.rsplit('/').next().expect("name"))
        .collect();
    for want in [
        "config.toml",
        "status.json",
        "logs.txt",
        "network.txt",
        "system.txt",
    ] {
        assert!(names.contains(&want), "{want} missing: {names:?}");
    }
    for (name, text) in &members {
        assert!(!text.contains(SECRET_KEY), "{name} holds the S3 secret");
        assert!(
            !text.contains("aGFzaGhhc2hoYXNo"),
            "{name} holds the password hash"
        );
    }
    let member = |n: &str| {
        &members
            .iter()
            .find(|(name, _)| name.ends_with(n))
            .expect("member")
            .1
    };
    let config = member("config.toml");
    assert!(
        config.contains("secret_access_key = \"<redacted>\"")
            && config.contains("password_hash = \"<redacted>\"")
            && config.contains("bucket = \"uploads\""),
        "{config}"
    );
    assert!(member("status.json").contains("\"engine\""));
    assert!(member("system.txt").contains("$ uname -a"));
    assert!(member("network.txt").contains("S3 endpoint"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_reboot_asks_for_confirmation_then_writes_the_request_file() {
    let h = Harness::new(Options::default()).await;
    let request = h.dir.path().join("reboot");
    let mut c = Console::start(
        &h.config_path,
        &["--reboot-request", request.to_str().expect("utf8")],
    );
    c.send("8");
    c.send("no");
    c.wait_for("not rebooting");
    assert!(!request.exists(), "no request without a yes");
    c.send("8");
    c.send("yes");
    c.wait_for("Reboot requested");
    assert!(request.exists(), "the watcher's request file");
    c.signal(nix::sys::signal::Signal::SIGINT);
    c.wait_for("the reboot request stands");
    let (status, _) = c.finish();
    assert!(status.success());
}

fn banner(config: &Path, out: Option<&Path>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sftpgw"));
    cmd.arg("banner").arg("--config").arg(config);
    if let Some(out) = out {
        cmd.arg("--out").arg(out);
    }
    let o = cmd.output().expect("banner");
    assert!(
        o.status.success(),
        "banner failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banner_shows_name_address_health_and_queue_and_is_rewritten_only_on_change() {
    use std::os::unix::fs::MetadataExt;
    let mut h = Harness::new(Options::default()).await;
    h.start_daemon();
    // A machine whose clock the kernel calls unsynchronised (adjtimex) is trusted once the S3
    // server's Date header has been seen; until the first S3 answer the box is DEGRADED.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !h.status().await.shaping.clock_synced {
        assert!(std::time::Instant::now() < deadline, "clock never trusted");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let text = banner(&h.config_path, None);
    let host = nix::unistd::gethostname().expect("hostname");
    assert!(
        text.contains(&format!("sftpgw transfer box {}", host.to_string_lossy())),
        "{text}"
    );
    assert!(text.contains("\naddress: "), "{text}");
    assert!(text.contains("health:  OK\n"), "{text}");
    assert!(
        text.contains("queue:   0 file(s), 0 B waiting for S3"),
        "{text}"
    );

    let file = h.dir.path().join("issue");
    banner(&h.config_path, Some(&file));
    let first = std::fs::metadata(&file).expect("written");
    assert_eq!(std::fs::read_to_string(&file).expect("read"), text);
    banner(&h.config_path, Some(&file));
    let second = std::fs::metadata(&file).expect("still there");
    assert_eq!(first.ino(), second.ino(), "unchanged text: not rewritten");

    h.stop_daemon();
    banner(&h.config_path, Some(&file));
    let third = std::fs::read_to_string(&file).expect("read");
    assert!(
        third.contains("health:  DOWN - daemon not running"),
        "{third}"
    );
    assert!(third.contains("queue:   unknown"), "{third}");
}
