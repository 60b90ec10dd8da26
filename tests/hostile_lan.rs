//! One bad host on the LAN cannot lock out the site or guess a password (issue 15), against
//! the real binary.
//!
//! Two sources are needed, and tests may use only the loopback addresses: each test runs
//! itself again inside a network namespace of its own (`unshare --user --map-root-user
//! --net`, which needs no root where user namespaces are allowed; only `lo` in it, up),
//! where the gateway listens on `[::]` and is reached from 127.0.0.1 (the bad host) and from
//! ::1 (the good one) without a port open on any real interface. The stalled-body and quota
//! tests need one source only and run on 127.0.0.1 directly.

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

/// One logged-in connection of alice's (key auth) with `channels` SFTP sessions, each of which
/// sent INIT, got its VERSION, then announced a WRITE of the largest size and sent 9 bytes of
/// it. The returned handles and channels keep them open.
async fn stalled_sessions(
    h: &Harness,
    channels: usize,
) -> (client::Handle<AnyHostKey>, Vec<russh::Channel<client::Msg>>) {
    let config = Arc::new(client::Config::default());
    let mut handle = client::connect(config, ("127.0.0.1", h.sftp_port), AnyHostKey)
        .await
        .expect("connect");
    let key = russh::keys::load_secret_key(&h.key_path, None).expect("client key");
    let key = russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), None);
    let auth = handle
        .authenticate_publickey("alice", key)
        .await
        .expect("auth");
    assert!(auth.success(), "alice logs in with her key");
    let mut open = Vec::new();
    for _ in 0..channels {
        let mut channel = handle
            .channel_open_session()
            .await
            .expect("session channel");
        channel
            .request_subsystem(true, "sftp")
            .await
            .expect("subsystem");
        // INIT, version 3.
        channel
            .data(&[0u8, 0, 0, 5, 1, 0, 0, 0, 3][..])
            .await
            .expect("init");
        loop {
            match channel.wait().await.expect("the version reply") {
                russh::ChannelMsg::Data { .. } => break,
                _ => continue,
            }
        }
        // A WRITE packet's length for the largest packet, its type, its id, and no more.
        let mut stall = (sftpgw::limits::SFTP_PACKET_BYTES_MAX)
            .to_be_bytes()
            .to_vec();
        stall.extend_from_slice(&[6, 0, 0, 0, 7, 0, 0, 0, 4]);
        channel.data(&stall[..]).await.expect("a packet's start");
        open.push(channel);
    }
    (handle, open)
}

/// 64 sessions that announce the largest WRITE and stall hold 64 pieces of the ingest budget,
/// not 64 announced lengths (which would be all of it): an upload from another session of the
/// same host still runs at once. Before the fix it could not start until they timed out.
#[tokio::test(flavor = "multi_thread")]
async fn sixty_four_sessions_stalled_in_a_packet_do_not_stop_another_upload() {
    let mut h = Harness::new(Options {
        sftp_extra: Some("max_sessions_per_source = 64".into()),
        ..Options::default()
    })
    .await;
    h.start_daemon();
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(stalled_sessions(&h, 4).await);
    }
    let local = h.dir.path().join("through.bin");
    let bytes = common::data(32 << 20, 9);
    std::fs::write(&local, &bytes).expect("local file");
    let started = std::time::Instant::now();
    h.sftp_ok("alice", &format!("put {} /through.bin\n", local.display()));
    let took = started.elapsed();
    // Well inside the 30 s after which a stalled body ends its session.
    assert!(took < Duration::from_secs(20), "the put took {took:?}");
    let s = h.status().await;
    assert_eq!(
        s.sftp_sessions, 64,
        "the stalled sessions are still there: {s:#?}"
    );
    let sealed = s
        .files
        .iter()
        .find(|f| f.path == "/through.bin")
        .expect("listed");
    assert_eq!(sealed.size, bytes.len() as u64);
    drop(held);
}

/// Per-user quotas through the real binary and OpenSSH's sftp: over `quota_files` an upload is
/// refused at OPEN, over `quota_bytes` in the middle of its WRITEs; another user is untouched;
/// once the drain delivers the files, room comes back.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_over_quota_is_refused_and_others_are_not() {
    let mut h = Harness::new(Options::default()).await;
    let public = std::fs::read_to_string(h.key_path.with_extension("pub")).expect("public key");
    let mut config = std::fs::read_to_string(&h.config_path).expect("config");
    for (name, quota) in [
        ("carol", "quota_files = 2"),
        ("dave", "quota_bytes = \"100KiB\""),
    ] {
        config.push_str(&format!(
            "\n[[users]]\nname = \"{name}\"\nauthorized_keys = [\"{}\"]\n{quota}\n",
            public.trim()
        ));
    }
    std::fs::write(&h.config_path, config).expect("config");
    h.start_daemon();
    h.drain_cli(&["pause"]);
    let local = h.dir.path().join("60k.bin");
    std::fs::write(&local, common::data(60 << 10, 4)).expect("local");
    let put = |user: &str, name: &str| h.sftp(user, &format!("put {} /{name}\n", local.display()));
    assert!(put("carol", "a.bin").status.success());
    assert!(put("carol", "b.bin").status.success());
    let third = put("carol", "c.bin");
    assert!(
        !third.status.success(),
        "a third file is over carol's quota_files"
    );
    assert!(
        String::from_utf8_lossy(&third.stderr).contains("Failure"),
        "{}",
        String::from_utf8_lossy(&third.stderr)
    );
    assert!(put("dave", "a.bin").status.success(), "60 KiB of 100");
    let second = put("dave", "b.bin");
    assert!(
        !second.status.success(),
        "120 KiB is over dave's quota_bytes"
    );
    assert!(put("alice", "a.bin").status.success(), "alice has no quota");
    assert!(put("alice", "b.bin").status.success());
    assert!(put("alice", "c.bin").status.success());
    let log = h.log();
    assert!(
        log.contains("quota exceeded"),
        "the refusals are logged:\n{log}"
    );
    // Delivered files no longer count: room comes back.
    h.drain_cli(&["resume"]);
    h.wait_drained(Duration::from_secs(60)).await;
    assert!(
        put("carol", "c.bin").status.success(),
        "room after delivery"
    );
    assert!(put("dave", "b.bin").status.success(), "room after delivery");
}
