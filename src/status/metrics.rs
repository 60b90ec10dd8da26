//! Prometheus metrics: `GET /metrics` on the optional `[metrics] listen` address, encoded by
//! the `prometheus-client` crate (OpenMetrics text, which Prometheus reads) from a fresh
//! [`Snapshot`] per scrape, so that metrics and `sftpgw status` never disagree.
//!
//! The server is a few lines over tokio rather than hyper: it answers one GET per connection
//! and closes, reads at most [`REQUEST_HEAD_BYTES_MAX`] within [`REQUEST_TIMEOUT_SECS`], and
//! serves at most [`SCRAPES_COUNT_MAX`] connections at once, so a misbehaving client cannot
//! hold memory or tasks. Anything but `GET /metrics` gets 404 (or 405 for another method).
//!
//! Owns the metrics text and its small HTTP server. It reads snapshots only, through the
//! [`SnapshotFn`] the gateway gives it, and may not touch the spool, the drain or the sessions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::{HealthLevel, Snapshot, SnapshotSource};
use crate::num::f64_from_u64;

/// Longest request head read; a scrape's is a few hundred bytes.
pub const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// Time a client has to send its request head and read the answer.
pub const REQUEST_TIMEOUT_SECS: u64 = 5;
/// Connections served at once; more wait for a slot.
pub const SCRAPES_COUNT_MAX: usize = 4;
/// The media type of what [`encode`] writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

fn gauge_f64(registry: &mut Registry, name: &str, help: &str, value: f64) {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(value);
    registry.register(name, help, g);
}

/// Registered without `_total`: the encoder appends it to counters.
fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One metric of a table: its name, its help text, its value.
type Row<'a> = (&'a str, &'a str, u64);

/// Registers a gauge per row, in order (values beyond `i64::MAX` show as `i64::MAX`).
fn gauges(registry: &mut Registry, rows: &[Row<'_>]) {
    for &(name, help, value) in rows {
        gauge(registry, name, help, as_i64(value));
    }
}

/// Registers a counter per row, in order.
fn counters(registry: &mut Registry, rows: &[Row<'_>]) {
    for &(name, help, value) in rows {
        counter(registry, name, help, value);
    }
}

/// The metrics text of one snapshot. The families are registered, and so written, in the
/// order of the helpers below; scrapers do not care, but the tests compare the text.
pub fn encode_snapshot(s: &Snapshot) -> String {
    let mut r = Registry::default();
    register_daemon(&mut r, s);
    register_transfers(&mut r, s);
    register_backlog(&mut r, s);
    register_rates(&mut r, s);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}

/// The daemon itself: health, uptime, SFTP sessions, and the SSH port's limits and bans.
fn register_daemon(r: &mut Registry, s: &Snapshot) {
    let health = match s.health.level {
        HealthLevel::Ok => 0,
        HealthLevel::Degraded => 1,
        HealthLevel::Failing => 2,
    };
    gauge(r, "sftpgw_health", "0 ok, 1 degraded, 2 failing", health);
    let up = i64::from(s.source == SnapshotSource::Daemon);
    gauge(r, "sftpgw_up", "1 when the daemon made this snapshot", up);
    gauges(
        r,
        &[
            (
                "sftpgw_uptime_seconds",
                "Since the daemon started",
                s.uptime_secs,
            ),
            (
                "sftpgw_sftp_sessions",
                "Live SFTP sessions",
                s.sftp_sessions,
            ),
        ],
    );
    if let Some(lan) = s.lan {
        gauge(
            r,
            "sftpgw_ssh_banned_sources",
            "Sources refused for a while after repeated failures",
            i64::try_from(lan.banned_sources).unwrap_or(i64::MAX),
        );
        gauge(
            r,
            "sftpgw_ssh_connections_not_logged_in",
            "SSH connections that have not logged in yet",
            i64::try_from(lan.startups).unwrap_or(i64::MAX),
        );
        counter(
            r,
            "sftpgw_ssh_connections_refused",
            "SSH connections refused at accept or at login (limits, bans)",
            lan.refused,
        );
    }
}

/// What went through: bytes received and sent, parts, files delivered, retries, errors.
fn register_transfers(r: &mut Registry, s: &Snapshot) {
    counters(
        r,
        &[
            (
                "sftpgw_sftp_received_bytes",
                "File bytes received over SFTP",
                s.counters.bytes_received,
            ),
            (
                "sftpgw_s3_sent_bytes",
                "Bytes of finished parts sent to S3",
                s.drain.bytes_sent,
            ),
            (
                "sftpgw_s3_parts_sent",
                "Parts (and single PUTs) sent to S3",
                s.drain.parts_sent,
            ),
            (
                "sftpgw_files_delivered",
                "Files delivered and verified",
                s.drain.files_delivered,
            ),
            (
                "sftpgw_s3_retries",
                "S3 requests retried after a transient error",
                s.counters.s3_retries,
            ),
            (
                "sftpgw_journal_invalid_transitions",
                "Journal records refused because they did not fit their file's state (a bug)",
                s.counters.invalid_transitions,
            ),
        ],
    );
    let errors = Family::<Labels, Counter>::default();
    for kind in crate::telemetry::ErrorKind::ALL {
        let n = s
            .counters
            .errors_by_kind
            .get(kind.label())
            .copied()
            .unwrap_or(0);
        errors
            .get_or_create(&vec![("kind".to_owned(), kind.label().to_owned())])
            .inc_by(n);
    }
    r.register("sftpgw_errors", "Errors by kind", errors);
}

/// What waits: the queue, the spool's fill, the files by state.
fn register_backlog(r: &mut Registry, s: &Snapshot) {
    gauges(
        r,
        &[
            (
                "sftpgw_queue_files",
                "Files waiting for delivery",
                s.queue.files,
            ),
            (
                "sftpgw_queue_bytes",
                "Bytes waiting for delivery",
                s.queue.bytes,
            ),
        ],
    );
    if let Some(age) = s.queue.oldest_age_secs {
        gauge(
            r,
            "sftpgw_queue_oldest_age_seconds",
            "Age of the oldest queued file",
            as_i64(age),
        );
    }
    let total = s.spool.total_bytes;
    let fill = if total == 0 {
        0.0
    } else {
        f64_from_u64(total.saturating_sub(s.spool.free_bytes)) / f64_from_u64(total)
    };
    gauge_f64(
        r,
        "sftpgw_spool_fill_ratio",
        "Used fraction of the spool file system",
        fill,
    );
    gauge(
        r,
        "sftpgw_spool_free_bytes",
        "Free bytes on the spool file system",
        as_i64(s.spool.free_bytes),
    );
    let files = Family::<Labels, Gauge>::default();
    for state in crate::spool::catalog::STATES {
        let n = s.counts().get(state);
        let label = format!("{state:?}").to_lowercase();
        files
            .get_or_create(&vec![("state".to_owned(), label)])
            .set(as_i64(n));
    }
    r.register("sftpgw_files", "Files the gateway knows, by state", files);
}

/// How fast: ingest and drain rates, the shaper's rate, limit and pause, and S3's state.
fn register_rates(r: &mut Registry, s: &Snapshot) {
    gauges(
        r,
        &[
            (
                "sftpgw_ingest_rate_bytes_per_second",
                "SFTP ingest, 1 min average",
                s.rates.ingest_bytes_per_sec,
            ),
            (
                "sftpgw_drain_rate_bytes_per_second",
                "S3 drain, 1 min average",
                s.rates.drain_bytes_per_sec,
            ),
            (
                "sftpgw_wan_rate_bytes_per_second",
                "WAN rate the shaper measures",
                s.shaping.rate_bytes_per_sec,
            ),
        ],
    );
    if let Some(limit) = s.shaping.limit_bytes_per_sec {
        gauge(
            r,
            "sftpgw_wan_limit_bytes_per_second",
            "WAN limit in force (absent: unlimited)",
            as_i64(limit),
        );
    }
    let paused = i64::from(s.shaping.paused);
    gauge(
        r,
        "sftpgw_drain_paused",
        "1 while no new part may start",
        paused,
    );
    if let Some(reachable) = s.s3.reachable {
        gauge(
            r,
            "sftpgw_s3_reachable",
            "1 if the last S3 request got an answer",
            i64::from(reachable),
        );
    }
    if let Some(skew) = s.s3.clock_skew_secs {
        gauge_f64(
            r,
            "sftpgw_s3_clock_skew_seconds",
            "S3 Date header minus our clock",
            skew,
        );
    }
}

/// What a scrape answers: the current snapshot.
pub type SnapshotFn = Arc<dyn Fn() -> Snapshot + Send + Sync>;

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, snapshot: SnapshotFn) {
    let slots = Arc::new(Semaphore::new(SCRAPES_COUNT_MAX));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            let timeout = Duration::from_secs(REQUEST_TIMEOUT_SECS);
            let _ = tokio::time::timeout(timeout, answer(stream, &snapshot)).await;
            drop(slot);
        });
    }
}

/// Binds the metrics address with an error that says what to do.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for metrics on {addr}: {e} (check [metrics] listen)"))
}

async fn answer(mut stream: TcpStream, snapshot: &SnapshotFn) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= REQUEST_HEAD_BYTES_MAX {
            respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request too large\n",
            )
            .await?;
            // Read (and drop) what the client still sends, up to a bound, so that closing
            // with unread bytes does not reset the connection before it reads the answer.
            let mut left = REQUEST_HEAD_BYTES_MAX * 8;
            while left > 0 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
            return Ok(());
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let snapshot = snapshot.clone();
            let body = tokio::task::spawn_blocking(move || encode_snapshot(&snapshot()))
                .await
                .unwrap_or_default();
            respond(&mut stream, "200 OK", CONTENT_TYPE, &body).await
        }
        ("GET", _) => {
            respond(
                &mut stream,
                "404 Not Found",
                "text/plain",
                "only /metrics is served\n",
            )
            .await
        }
        _ => {
            respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain",
                "only GET /metrics\n",
            )
            .await
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoding_has_the_documented_names_types_and_labels() {
        let s: Snapshot = serde_json::from_value(serde_json::json!({
            "version": "0", "uptime_secs": 1, "engine": "pwrite",
            "spool": {"dir": "/s", "total_bytes": 1000, "free_bytes": 250, "queue_bytes": 7, "queue_files": 1},
            "drain": {"endpoint": "e", "bucket": "b", "bytes_sent": 42, "parts_sent": 2, "files_delivered": 1},
            "files": [],
            "s3": {"reachable": true, "clock_skew_secs": -1.5},
            "counters": {"bytes_received": 99, "s3_retries": 3, "errors_by_kind": {"s3_transient": 3}, "invalid_transitions": 2},
        }))
        .expect("snapshot json");
        let text = encode_snapshot(&s);
        for want in [
            "# TYPE sftpgw_sftp_received_bytes counter",
            "sftpgw_sftp_received_bytes_total 99",
            "sftpgw_s3_sent_bytes_total 42",
            "sftpgw_s3_retries_total 3",
            "sftpgw_journal_invalid_transitions_total 2",
            "sftpgw_errors_total{kind=\"s3_transient\"} 3",
            "sftpgw_errors_total{kind=\"spool_write\"} 0",
            "# TYPE sftpgw_spool_fill_ratio gauge",
            "sftpgw_spool_fill_ratio 0.75",
            "sftpgw_files{state=\"sealed\"} 0",
            "sftpgw_s3_clock_skew_seconds -1.5",
            "sftpgw_s3_reachable 1",
            "sftpgw_health 0",
            "# EOF",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert!(
            !text.contains("sftpgw_wan_limit_bytes_per_second"),
            "unlimited has no limit: {text}"
        );
    }
}
