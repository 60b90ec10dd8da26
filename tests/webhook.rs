//! `[events] webhook` against an HTTPS receiver of the test's own (rustls, a certificate made
//! with `openssl`), which refuses its first requests.

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

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Harness, Options};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A private CA and a certificate it issued for 127.0.0.1, in `dir`: (ca.pem, cert.pem,
/// key.pem).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |name: &str| dir.join(name);
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "1",
                "-subj",
                "/CN=test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "key.pem",
                "-out",
                "leaf.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        p("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ]);
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

/// What the receiver saw: each request's status answered and body.
type Seen = Arc<Mutex<Vec<(u16, String)>>>;

/// Serves HTTPS on 127.0.0.1: answers 503 to the first `refuse` POSTs, then 204.
async fn receiver(cert: &Path, key: &Path, refuse: usize) -> (u16, Seen) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("cert")
        .map(|c| c.expect("cert"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).expect("key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // The head, then Content-Length bytes of body.
            let body = loop {
                let n = tls.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break Some(String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned());
                }
            };
            let Some(body) = body else { continue };
            let status = if log.lock().unwrap().len() < refuse {
                503
            } else {
                204
            };
            log.lock().unwrap().push((status, body));
            let answer =
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = tls.write_all(answer.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    });
    (port, seen)
}

/// Every lifecycle event reaches the webhook, in order, although its receiver refused the
/// first POSTs: they are kept and sent again.
#[tokio::test(flavor = "multi_thread")]
async fn the_webhook_gets_every_event_in_order_after_its_receiver_refused_a_while() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (ca, cert, key) = certificates(tmp.path());
    let (port, seen) = receiver(&cert, &key, 2).await;
    let mut h = Harness::new(Options {
        events: Some(format!(
            "webhook = \"https://127.0.0.1:{port}/hooks/sftpgw?site=a\"\nwebhook_ca = \"{}\"",
            ca.display()
        )),
        ..Options::default()
    })
    .await;
    h.start_daemon();
    let names = ["one.bin", "two.bin", "three.bin"];
    for (i, name) in names.iter().enumerate() {
        let local = h.dir.path().join(name);
        std::fs::write(&local, common::data(10_000 + i, i as u64)).expect("local");
        h.sftp_ok("alice", &format!("put {} {name}\n", local.display()));
    }
    h.wait_drained(Duration::from_secs(60)).await;
    // Accepted POSTs, their events in order.
    let accepted = |seen: &Seen| -> Vec<serde_json::Value> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(status, _)| *status == 204)
            .flat_map(|(_, body)| {
                body.lines()
                    .map(|l| serde_json::from_str(l).expect("a JSON line"))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let delivered = accepted(&seen)
            .iter()
            .filter(|e| e["event"] == "delivered")
            .count();
        if delivered == names.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the webhook got {delivered} deliveries: {:?}\n{}",
            seen.lock().unwrap(),
            h.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let requests = seen.lock().unwrap().clone();
    assert!(requests.len() >= 3, "{requests:?}");
    assert_eq!(requests[0].0, 503);
    assert_eq!(requests[1].0, 503);
    let events = accepted(&seen);
    for name in names {
        let path = format!("/{name}");
        let of = |kind: &str| {
            events
                .iter()
                .position(|e| e["event"] == kind && e["path"] == path.as_str())
        };
        let sealed =
            of("sealed").unwrap_or_else(|| panic!("no sealed event for {path}: {events:?}"));
        let delivered = of("delivered").unwrap_or_else(|| panic!("no delivered event for {path}"));
        assert!(sealed < delivered, "{path}: sealed after delivered");
        assert_eq!(events[delivered]["user"], "alice");
    }
    // What the refused POSTs carried came again, first.
    let refused_first: Vec<&str> = requests[0].1.lines().collect();
    let accepted_first: Vec<&str> = requests[2].1.lines().collect();
    assert!(
        accepted_first.starts_with(&refused_first),
        "the refused events lead the next accepted POST"
    );
}
