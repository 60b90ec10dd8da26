//! The command line as an operator uses it: `check-config`, `user passwd`, `demo`, exit codes.

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

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn sftpgw() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sftpgw"))
}

/// `sftpgw check-config PATH`.
fn check_config(path: &Path) -> Output {
    sftpgw()
        .arg("check-config")
        .arg(path)
        .output()
        .expect("run")
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_accepts_the_example_and_names_file_line_and_key_of_a_mistake() {
    let tmp = tempfile::tempdir().expect("tmp");
    let good = tmp.path().join("good.toml");
    std::fs::write(&good, sftpgw::config::EXAMPLE).expect("write");
    let out = check_config(&good);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));

    let bad = tmp.path().join("bad.toml");
    let text = sftpgw::config::EXAMPLE.replace("part_size = \"16MiB\"", "part_size = \"4MiB\"");
    assert_ne!(text, sftpgw::config::EXAMPLE, "the example sets part_size");
    std::fs::write(&bad, &text).expect("write");
    let line = text
        .lines()
        .position(|l| l.starts_with("part_size"))
        .expect("line")
        + 1;
    let out = check_config(&bad);
    assert_eq!(out.status.code(), Some(3), "invalid config → exit 3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:{line}:", bad.display())),
        "{stderr}"
    );
    assert!(stderr.contains("part_size"), "{stderr}");

    let out = check_config(&tmp.path().join("missing.toml"));
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn user_passwd_prints_an_argon2id_hash_of_the_password() {
    use argon2::PasswordVerifier;
    let hash = common::password_hash("correct horse");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let parsed = argon2::PasswordHash::new(&hash).expect("PHC string");
    assert!(
        argon2::Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok()
    );
    assert!(
        argon2::Argon2::default()
            .verify_password(b"wrong", &parsed)
            .is_err()
    );
}

#[test]
fn usage_errors_exit_with_2() {
    let out = sftpgw().arg("no-such-command").output().expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn demo_writes_a_config_and_key_serves_sftp_and_stops_cleanly_on_ctrl_c() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("demo");
    let log_path = tmp.path().join("demo.log");
    let port = common::free_port();
    let child = start_demo(&dir, port, &log_path);
    let config = std::fs::read_to_string(dir.join("sftpgw.toml")).expect("config written");
    assert!(
        config.contains("[[users]]") && config.contains("name = \"demo\""),
        "{config}"
    );
    assert!(dir.join("client_ed25519").exists() && dir.join("client_ed25519.pub").exists());
    // The config it wrote is valid.
    assert_success(&check_config(&dir.join("sftpgw.toml")));
    // A real upload with the key it wrote.
    let local = tmp.path().join("hello.txt");
    std::fs::write(&local, b"hello from the demo\n").expect("write");
    put_with_the_demo_key(&dir, port, &local);
    // It lands in the embedded S3 server's directory (bucket "uploads", prefix "site-a/").
    let object = dir.join("s3/uploads/site-a/demo/hello.txt");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read(&object).ok().as_deref() != Some(&b"hello from the demo\n"[..]) {
        assert!(
            Instant::now() < deadline,
            "object never appeared at {}",
            object.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop_demo_with_ctrl_c(child, &dir);
    check_demo_names_its_keys(&dir, &log_path);
}

/// Starts `sftpgw demo` in `dir` with SFTP on `port` (its log to `log_path`) and waits until
/// it listens.
fn start_demo(dir: &Path, port: u16, log_path: &Path) -> Child {
    let log = std::fs::File::create(log_path).expect("log");
    let mut child = sftpgw()
        .arg("demo")
        .arg("--dir")
        .arg(dir)
        .args(["--port", &port.to_string(), "--s3-port", "0"])
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn demo");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "demo exited early"
        );
        assert!(Instant::now() < deadline, "demo did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Puts `local` as `hello.txt` with the client key the demo wrote, and checks it worked.
fn put_with_the_demo_key(dir: &Path, port: u16, local: &Path) {
    let mut sftp = Command::new("sftp")
        .args(["-b", "-", "-i"])
        .arg(dir.join("client_ed25519"))
        .args(["-P", &port.to_string()])
        .args(common::NO_HOST_KEY_CHECK)
        .args(["-o", "BatchMode=yes", "demo@127.0.0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sftp");
    sftp.stdin
        .take()
        .expect("stdin")
        .write_all(format!("put {} hello.txt\n", local.display()).as_bytes())
        .expect("batch");
    assert_success(&sftp.wait_with_output().expect("sftp"));
}

/// Ctrl-C stops the demo cleanly, and what it printed says how to connect.
fn stop_demo_with_ctrl_c(child: Child, dir: &Path) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("signal");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "Ctrl-C stops the demo cleanly");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("sftp -i {}", dir.join("client_ed25519").display())),
        "{stdout}"
    );
}

/// Each generated key is named for what it is in the demo's log.
fn check_demo_names_its_keys(dir: &Path, log_path: &Path) {
    let log = std::fs::read_to_string(log_path).expect("log");
    let generated: Vec<&str> = log.lines().filter(|l| l.contains("generated")).collect();
    assert!(
        generated
            .iter()
            .any(|l| l.contains("demo client key generated")
                && l.contains(&*dir.join("client_ed25519").to_string_lossy())),
        "{log}"
    );
    assert!(
        generated.iter().any(|l| l.contains("host key generated")
            && l.contains(&*dir.join("ssh_host_ed25519_key").to_string_lossy())),
        "{log}"
    );
}

#[test]
fn config_is_accepted_before_or_after_the_subcommand_and_required_where_needed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = tmp.path().join("sftpgw.toml");
    // The example's control socket does not exist here: a command that got as far as asking
    // the daemon exits 4 ("not reachable"); one whose line clap refused exits 2.
    std::fs::write(&config, sftpgw::config::EXAMPLE).expect("write");
    for args in [
        vec!["drain", "pause", "--config"],
        vec!["drain", "--config"],
        vec!["--config"],
        vec!["drain", "pause", "-c"],
    ] {
        let mut cmd = sftpgw();
        cmd.args(&args).arg(&config);
        // Where the option came last or in the middle, the rest of the line follows it.
        match args.as_slice() {
            ["drain", "--config"] => cmd.arg("pause"),
            ["--config"] => cmd.args(["drain", "pause"]),
            _ => &mut cmd,
        };
        let out = cmd.env_remove("SFTPGW_CONFIG").output().expect("run");
        assert_eq!(
            out.status.code(),
            Some(4),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = sftpgw()
        .args(["drain", "pause"])
        .env_remove("SFTPGW_CONFIG")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "no --config: a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
    let out = sftpgw()
        .args(["status", "--json"])
        .env("SFTPGW_CONFIG", &config)
        .output()
        .expect("run");
    assert_ne!(
        out.status.code(),
        Some(2),
        "SFTPGW_CONFIG stands for --config"
    );
}
