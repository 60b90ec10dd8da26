//! `[events] webhook`: the lifecycle events of `sftpgw events --follow` (sealed, delivered,
//! failed, ...), POSTed to an HTTPS URL as JSON lines.
//!
//! - The events are taken from the broadcast (`events::subscribe`) into a queue of at most
//!   [`QUEUE_EVENTS_MAX`]; beyond it the oldest are dropped and counted (logged). Nothing here
//!   ever makes ingest or drain wait: the broadcast never blocks its senders either.
//! - A POST carries up to [`BATCH_EVENTS_MAX`] events, one JSON object a line
//!   (`application/x-ndjson`), oldest first; a 2xx answer takes them off the queue. Anything
//!   else (no answer, TLS failure, a non-2xx status) keeps them and tries again after a backoff
//!   doubling from 1 s to 60 s, so a receiver that is down for a while gets every event still
//!   queued, in order, once it is back (at least once: a POST whose answer was lost is sent
//!   again).
//! - TLS with rustls, checked against the system's CA certificates plus those of
//!   `webhook_ca` (a private CA), through `https.rs` (one request a connection, shared with the
//!   console's endpoint check) rather than an HTTP client crate: a POST and a status line are
//!   all it needs.
//!
//! It may read the `events` broadcast and post with `https`; it may not touch the spool or the
//! drain, and nothing of theirs ever waits on it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, broadcast};

use crate::num::u64_from_usize;
/// Events kept while the receiver does not take them; the oldest go beyond it.
pub const QUEUE_EVENTS_MAX: usize = 10_000;
/// Events in one POST.
pub const BATCH_EVENTS_MAX: usize = 100;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Where the events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// An `https://` URL.
    pub url: url::Url,
    /// More CA certificates (PEM) to trust, beside the system's.
    pub ca_file: Option<PathBuf>,
}

struct Queue {
    events: VecDeque<Arc<str>>,
    /// Events dropped since the last warning.
    dropped: u64,
    /// Events ever taken off the front (sent or dropped): the front's sequence number.
    gone: u64,
}

impl Queue {
    /// Takes events off the front up to (not including) sequence number `end`.
    fn pop_until(&mut self, end: u64) {
        while self.gone < end && self.events.pop_front().is_some() {
            self.gone += 1;
        }
    }
}

/// Runs the webhook until the process ends.
pub async fn run(cfg: WebhookConfig) {
    let rx = crate::events::subscribe();
    let queue = Arc::new(Mutex::new(Queue {
        events: VecDeque::new(),
        dropped: 0,
        gone: 0,
    }));
    let wake = Arc::new(Notify::new());
    let collector = tokio::spawn(collect(rx, Arc::clone(&queue), Arc::clone(&wake)));
    send(&cfg, &queue, &wake).await;
    collector.abort();
}

fn lock(q: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    q.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn collect(
    mut rx: broadcast::Receiver<Arc<str>>,
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
) {
    loop {
        match rx.recv().await {
            Ok(event) => {
                let mut q = lock(&queue);
                if q.events.len() == QUEUE_EVENTS_MAX {
                    let front = q.gone + 1;
                    q.pop_until(front);
                    q.dropped += 1;
                }
                q.events.push_back(event);
            }
            Err(broadcast::error::RecvError::Lagged(n)) => lock(&queue).dropped += n,
            Err(broadcast::error::RecvError::Closed) => return,
        }
        wake.notify_one();
    }
}

async fn send(cfg: &WebhookConfig, queue: &Mutex<Queue>, wake: &Notify) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        let (batch, first, dropped) = {
            let mut q = lock(queue);
            let batch: Vec<Arc<str>> = q.events.iter().take(BATCH_EVENTS_MAX).cloned().collect();
            (batch, q.gone, std::mem::take(&mut q.dropped))
        };
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "webhook: events dropped, the queue was full (the receiver is down or slow)"
            );
        }
        if batch.is_empty() {
            wake.notified().await;
            continue;
        }
        let mut body = String::new();
        for event in &batch {
            body.push_str(event);
            body.push('\n');
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, post(cfg, body.as_bytes())).await {
            Ok(Ok(())) => {
                // Take the batch off the front; some of it may have been dropped meanwhile
                // (the queue full), never anything after it.
                lock(queue).pop_until(first + u64_from_usize(batch.len()));
                backoff = BACKOFF_FIRST;
            }
            Ok(Err(e)) => {
                tracing::warn!(url = %cfg.url, error = %e, retry_in_secs = backoff.as_secs(), "webhook: POST failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            Err(_) => {
                tracing::warn!(url = %cfg.url, retry_in_secs = backoff.as_secs(), "webhook: no answer in time");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// One POST of `body`; `Ok` on a 2xx answer.
async fn post(cfg: &WebhookConfig, body: &[u8]) -> std::io::Result<()> {
    let url = &cfg.url;
    let host = url
        .host_str()
        .ok_or_else(|| std::io::Error::other("the webhook URL has no host"))?;
    let port = url.port_or_known_default().unwrap_or(443);
    let stream =
        TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port)).await?;
    stream.set_nodelay(true)?;
    let tls = crate::https::connect(stream, host, cfg.ca_file.as_deref()).await?;
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    exchange(tls, &authority, &path, body).await
}

/// Writes the request and reads the status line of the answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    authority: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: sftpgw/{}\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    let line = crate::https::status_line(&mut stream).await?;
    match crate::https::status_code(&line) {
        Some(200..=299) => Ok(()),
        _ => Err(std::io::Error::other(format!(
            "the receiver answered {line:?}"
        ))),
    }
}
