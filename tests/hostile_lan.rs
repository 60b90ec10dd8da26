//! One bad host on the LAN cannot lock out the site or guess a password (issue 15), against
//! the real binary.
//!
//! Two sources are needed, and tests may use only the loopback addresses: each test runs
//! itself again inside a network namespace of its own (`unshare --user --map-root-user
//! --net`, which needs no root where user namespaces are allowed; only `lo` in it, up),
//! where the gateway listens on `[::]` and is reached from 127.0.0.1 (the bad host) and from
//! ::1 (the good one) without a port open on any real interface.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{Harness, Options};
use russh::client;

const NETNS_ENV: &str = "SFTPGW_TEST_IN_NETNS";

/// Whether this process is the one inside the namespace. If not, runs test `name` of this
/// binary again inside a new one, asserts that it passed, and returns false.
fn inside_netns(name: &str) -> bool {
    if std::env::var_os(NETNS_ENV).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "--", "sh", "-c"])
        .arg("ip link set lo up && exec \"$0\" --exact \"$1\" --nocapture --test-threads=1")
        .arg(&exe)
        .arg(name)
        .env(NETNS_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run unshare (util-linux) and ip (iproute2)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{name} in a network namespace:\n{text}"
    );
    assert!(
        text.contains("1 passed"),
        "{name} did not run in the namespace:\n{text}"
    );
    false
}

async fn harness(sftp_extra: &str, users_extra: Option<String>) -> Harness {
    let mut h = Harness::new(Options {
        listen_host: "[::]",
        sftp_extra: Some(sftp_extra.into()),
        users_extra,
        ..Options::default()
    })
    .await;
    h.start_daemon();
    h
}

/// Uploads `name` as alice from `host` with OpenSSH's sftp; true if the put was acknowledged.
fn put_from(h: &Harness, host: &str, name: &str) -> bool {
    use std::io::Write;
    let local = h.dir.path().join(name);
    std::fs::write(&local, common::data(10_000, 7)).expect("local file");
    let mut child = h
        .sftp_command_to("alice", host, &["-o", "ConnectTimeout=10"])
        .spawn()
        .expect("sftp");
    let batch = format!("put {} /{name}\n", local.display());
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(batch.as_bytes())
        .expect("batch");
    child.wait_with_output().expect("sftp").status.success()
}

struct AnyHostKey;

impl client::Handler for AnyHostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// One password login over a new connection from `host`: Ok(accepted?), or Err if the
/// connection itself was refused or closed.
async fn password_login(port: u16, host: &str, user: &str, password: &str) -> Result<bool, String> {
    let config = Arc::new(client::Config::default());
    let addr = format!("{host}:{port}");
    let mut handle = client::connect(config, addr.as_str(), AnyHostKey)
        .await
        .map_err(|e| e.to_string())?;
    let result = handle
        .authenticate_password(user, password)
        .await
        .map_err(|e| e.to_string())?;
    Ok(result.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_from_one_host_lock_out_neither_another_host_nor_the_log() {
    if !inside_netns("idle_connections_from_one_host_lock_out_neither_another_host_nor_the_log") {
        return;
    }
    let h = harness("login_grace = \"3s\"", None).await;
    // The bad host opens 300 connections and says nothing.
    let mut idle = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", h.sftp_port)).await {
            idle.push(s);
        }
    }
    // The good host logs in and uploads meanwhile.
    assert!(put_from(&h, "[::1]", "good.bin"), "log:\n{}", h.log());
    let lan = h.status().await.lan.expect("lan counts");
    assert!(lan.startups <= 16, "one source holds at most 16: {lan:?}");
    assert!(lan.refused >= 250, "the rest were refused: {lan:?}");
    // Those it held run out of login grace: each counts against it, and it is banned.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while h.status().await.lan.expect("lan").banned_sources == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no ban; log:\n{}",
            h.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listed = h.cli("bans", &["list"]);
    assert!(listed.contains("127.0.0.1"), "{listed}");
    assert!(
        !put_from(&h, "127.0.0.1", "bad.bin"),
        "a banned host cannot log in"
    );
    assert!(
        put_from(&h, "[::1]", "good2.bin"),
        "the good host still can"
    );
    // One warning per ban, not one per refused connection.
    let log = h.log();
    assert_eq!(log.matches("source banned").count(), 1, "{log}");
    drop(idle);
    // Lifted by hand: the host is back.
    assert!(
        h.cli("bans", &["clear", "127.0.0.1"])
            .contains("1 ban(s) lifted")
    );
    assert!(put_from(&h, "127.0.0.1", "back.bin"));
}

#[tokio::test(flavor = "multi_thread")]
async fn five_wrong_passwords_ban_the_host_even_for_the_right_password_and_no_other() {
    if !inside_netns("five_wrong_passwords_ban_the_host_even_for_the_right_password_and_no_other") {
        return;
    }
    let hash = sftpgw::sftp::namespace::hash_password("right horse battery");
    let users = format!("[[users]]\nname = \"carol\"\npassword_hash = \"{hash}\"\n");
    let h = harness("", Some(users)).await;
    let port = h.sftp_port;
    // The right password works before.
    assert_eq!(
        password_login(port, "127.0.0.1", "carol", "right horse battery").await,
        Ok(true)
    );
    for attempt in 0..5 {
        let outcome = password_login(port, "127.0.0.1", "carol", "wrong").await;
        assert_eq!(outcome, Ok(false), "attempt {attempt}; log:\n{}", h.log());
    }
    // Now even the right password from that host fails; from another host it works.
    let banned = password_login(port, "127.0.0.1", "carol", "right horse battery").await;
    assert_ne!(banned, Ok(true), "the banned host logged in");
    assert_eq!(
        password_login(port, "[::1]", "carol", "right horse battery").await,
        Ok(true)
    );
    let lan = h.status().await.lan.expect("lan");
    assert_eq!(lan.banned_sources, 1, "{lan:?}");
    let listed = h.cli("bans", &["list"]);
    assert!(
        listed.contains("127.0.0.1") && listed.contains("1 ban(s)"),
        "{listed}"
    );
    let text = h.cli("status", &[]);
    assert!(text.contains("1 source(s) banned"), "{text}");
    assert!(h.cli("bans", &["clear"]).contains("1 ban(s) lifted"));
    assert_eq!(
        password_login(port, "127.0.0.1", "carol", "right horse battery").await,
        Ok(true)
    );
}
