//! The embedded S3-compatible server used by `sftpgw demo` and by the tests: `s3s_fs::FileSystem`
//! behind our own [`s3s::S3`] wrapper (module `gateway`, which lists where s3s-fs differs from
//! AWS S3), served over plain HTTP with SigV4 authentication, plus request counters and an upload
//! throttle for tests ([`S3Stats`]). An unknown access key is `InvalidAccessKeyId`, a wrong secret
//! `SignatureDoesNotMatch` (both 403), as on S3.
//!
//! It stands in for a remote store and knows nothing of the gateway: it must not use the
//! gateway's modules (`spool`, `sftp`, `drain`, `journal`, `crate::gateway`). The one exception
//! is [`test_s3_config`], which hands tests a `config::S3Config` that points at it (it uses
//! `config` and `limits` for that).

mod assemble;
mod gateway;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use s3s::{S3Result, s3_error};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::config::{ChecksumMode, S3Config};
use crate::limits::PART_SIZE_BYTES_MIN;

/// How long `shutdown` lets in-flight requests finish before their connections are dropped.
const SHUTDOWN_GRACE_MS: u64 = 1_000;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF_MS: u64 = 100;

/// Where and how to serve.
#[derive(Clone)]
pub struct S3ServerConfig {
    /// Data directory; created if missing. Buckets are its subdirectories.
    pub root: PathBuf,
    /// Port 0 picks a free port; see [`S3Server::addr`].
    pub listen: SocketAddr,
    /// The one access key id the server accepts (SigV4).
    pub access_key: String,
    /// Its secret; never shown by `Debug`.
    pub secret_key: String,
    /// Created if missing.
    pub bucket: String,
}

impl S3ServerConfig {
    /// A server on a free loopback port with fixed test credentials and bucket `uploads`.
    pub fn loopback(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            access_key: "sftpgw-test-access".to_owned(),
            secret_key: "sftpgw-test-secret".to_owned(),
            bucket: "uploads".to_owned(),
        }
    }
}

impl std::fmt::Debug for S3ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3ServerConfig")
            .field("root", &self.root)
            .field("listen", &self.listen)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("bucket", &self.bucket)
            .finish()
    }
}

/// A running server; stops on [`S3Server::shutdown`] or when dropped.
///
/// It runs on a runtime of its own, not on the caller's: it stands in for a remote S3, and its
/// CPU work (s3s-fs hashes every byte with MD5 on its async workers, Complete assembles the
/// object) must not take the workers of the gateway beside it in `sftpgw demo`. On a shared
/// runtime a 1 GiB drain stalled the SFTP sessions of the same process: end to end took
/// 4.3–7.0 s, against 3.5 s with the server in another process (bench/results/round10).
pub struct S3Server {
    addr: SocketAddr,
    stats: Arc<S3Stats>,
    access_key: String,
    secret_key: String,
    bucket: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl S3Server {
    /// Creates `root` and the bucket if missing, binds `listen` and serves in a background task.
    pub async fn start(cfg: S3ServerConfig) -> anyhow::Result<S3Server> {
        anyhow::ensure!(
            s3s::path::check_bucket_name(&cfg.bucket),
            "invalid bucket name {:?}",
            cfg.bucket
        );
        tokio::fs::create_dir_all(&cfg.root)
            .await
            .with_context(|| format!("creating S3 data directory {}", cfg.root.display()))?;
        let root = tokio::fs::canonicalize(&cfg.root)
            .await
            .with_context(|| format!("resolving {}", cfg.root.display()))?;
        let bucket_dir = root.join(&cfg.bucket);
        tokio::fs::create_dir_all(&bucket_dir)
            .await
            .with_context(|| format!("creating bucket directory {}", bucket_dir.display()))?;
        let fs = s3s_fs::FileSystem::new(&root)
            .map_err(|e| anyhow::anyhow!("opening s3s-fs at {}: {e:?}", root.display()))?;

        let stats = Arc::new(S3Stats::default());
        let gateway = gateway::GatewayFs::new(fs, root, Arc::clone(&stats));
        let mut builder = s3s::service::S3ServiceBuilder::new(gateway);
        builder.set_auth(SingleKeyAuth {
            keys: s3s::auth::SimpleAuth::from_single(
                cfg.access_key.clone(),
                cfg.secret_key.clone(),
            ),
        });
        let service = builder.build();

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("s3-server")
            .enable_all()
            .build()
            .context("starting the embedded S3 server's runtime")?;
        let listener = std::net::TcpListener::bind(cfg.listen)
            .with_context(|| format!("binding S3 server to {}", cfg.listen))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = {
            // Registers the socket with the server runtime's reactor, not the caller's.
            let _entered = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let (stop, stopped) = oneshot::channel();
        let task = runtime.spawn(serve(listener, service, stopped));
        tracing::info!(%addr, bucket = %cfg.bucket, "embedded S3 server listening");
        Ok(S3Server {
            addr,
            stats,
            access_key: cfg.access_key,
            secret_key: cfg.secret_key,
            bucket: cfg.bucket,
            stop: Some(stop),
            task: Some(task),
            runtime: Some(runtime),
        })
    }

    /// The address it listens on, with the port chosen when `listen` asked for port 0.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://host:port`, for `S3Config::endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bucket created at start.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Its request counters and upload throttle, live: a test may read and set them while the
    /// server runs.
    pub fn stats(&self) -> &Arc<S3Stats> {
        &self.stats
    }

    /// Stops accepting, gives in-flight requests a short grace period, then drops all connections.
    /// After it returns, connecting to [`S3Server::addr`] is refused.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            // The serve task may already be gone; then there is nothing to stop.
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::warn!("embedded S3 server task ended abnormally: {e}");
        }
        if let Some(runtime) = self.runtime.take() {
            // The serve task is over; what is left (an idle blocking thread) need not be awaited,
            // and a runtime may not be dropped in place from async code.
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for S3Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Server")
            .field("addr", &self.addr)
            .field("bucket", &self.bucket)
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // A server dropped without `shutdown` (a failing test, a runtime going away) stops at
        // once: aborting the serve task drops the listener and, with its JoinSet, every connection.
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// An [`S3Config`] pointing at `server` (path style, its keys and bucket, smallest part size).
#[doc(hidden)]
pub fn test_s3_config(server: &S3Server) -> S3Config {
    S3Config {
        endpoint: Some(server.endpoint()),
        region: "us-east-1".to_owned(),
        bucket: server.bucket.clone(),
        prefix: String::new(),
        path_style: true,
        access_key_id: server.access_key.clone(),
        secret_access_key: server.secret_key.clone(),
        part_size: PART_SIZE_BYTES_MIN,
        concurrency: 4,
        checksums: ChecksumMode::WhenRequired,
        early_drain: true,
        failed_retry: crate::config::FAILED_RETRY_DEFAULT,
        failed_retry_max: crate::config::FAILED_RETRY_MAX_DEFAULT,
        overwrite: crate::config::OverwriteMode::Replace,
        manifest_interval: None,
        full_object_checksum: true,
    }
}

async fn serve(
    listener: TcpListener,
    service: s3s::service::S3Service,
    mut stopped: oneshot::Receiver<()>,
) {
    let http = ConnBuilder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _peer)) => {
                    let conn = http.serve_connection(TokioIo::new(socket), service.clone());
                    let conn = graceful.watch(conn.into_owned());
                    connections.spawn(async move {
                        // A client hanging up mid-request is normal (and provoked by tests).
                        let _ = conn.await;
                    });
                }
                Err(e) => {
                    tracing::warn!("embedded S3 server: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            // Fires on an explicit stop and when the `S3Server` handle is dropped.
            _ = &mut stopped => break,
        }
    }
    drop(listener);
    let grace = Duration::from_millis(SHUTDOWN_GRACE_MS);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("embedded S3 server: grace period over, dropping connections");
    }
    connections.shutdown().await;
}

/// One key pair; an unknown access key is `InvalidAccessKeyId` as on S3 (s3s's `SimpleAuth`
/// answers `NotSignedUp`).
struct SingleKeyAuth {
    keys: s3s::auth::SimpleAuth,
}

#[async_trait::async_trait]
impl s3s::auth::S3Auth for SingleKeyAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<s3s::auth::SecretKey> {
        self.keys.lookup(access_key).cloned().ok_or_else(|| {
            s3_error!(
                InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records."
            )
        })
    }
}

/// S3 operations counted by [`S3Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerOp {
    /// `PutObject`: a whole object in one request.
    PutObject,
    /// `UploadPart`: one part of a multipart upload.
    UploadPart,
    /// `CreateMultipartUpload`: the start of a multipart upload.
    CreateMultipartUpload,
    /// `CompleteMultipartUpload`: the parts assembled into the object.
    CompleteMultipartUpload,
    /// `AbortMultipartUpload`: an upload and its parts dropped.
    AbortMultipartUpload,
    /// `HeadObject`: an object's metadata.
    HeadObject,
    /// `GetObject`: an object's data.
    GetObject,
    /// `ListMultipartUploads`: the uploads in progress (the drain lists them to abort strays).
    ListMultipartUploads,
    /// `ListParts`: the parts of one upload.
    ListParts,
}

impl ServerOp {
    const COUNT: usize = 9;

    /// The slot of `op` in [`S3Stats`]'s counters: declaration order, spelled out so that no
    /// `as` turns an enum into a number.
    const fn index(self) -> usize {
        match self {
            Self::PutObject => 0,
            Self::UploadPart => 1,
            Self::CreateMultipartUpload => 2,
            Self::CompleteMultipartUpload => 3,
            Self::AbortMultipartUpload => 4,
            Self::HeadObject => 5,
            Self::GetObject => 6,
            Self::ListMultipartUploads => 7,
            Self::ListParts => 8,
        }
    }
}

const _: () = assert!(ServerOp::ListParts.index() + 1 == ServerOp::COUNT);

/// Counters and a throttle, shared between the server and the test that owns it.
#[derive(Debug, Default)]
pub struct S3Stats {
    body_bytes_received: AtomicU64,
    requests: [AtomicU64; ServerOp::COUNT],
    /// 0 means unlimited.
    upload_bytes_per_sec: AtomicU64,
    /// When the throttle's budget is free again; shared by all bodies so the limit is global.
    throttle_free_at: Mutex<Option<Instant>>,
}

impl S3Stats {
    /// Body bytes received by PutObject and UploadPart, including requests that later failed.
    pub fn upload_bytes(&self) -> u64 {
        self.body_bytes_received.load(Ordering::Relaxed)
    }

    /// Requests of `op` that passed authentication.
    pub fn requests(&self, op: ServerOp) -> u64 {
        self.requests[op.index()].load(Ordering::Relaxed)
    }

    /// Limits the rate at which PutObject and UploadPart bodies are read, summed over all
    /// requests; `None` (or `Some(0)`) lifts the limit. Takes effect from the next received chunk.
    pub fn set_upload_bytes_per_sec(&self, rate: Option<u64>) {
        self.upload_bytes_per_sec
            .store(rate.unwrap_or(0), Ordering::Relaxed);
    }

    /// The throttle set by [`S3Stats::set_upload_bytes_per_sec`]; `None` when unlimited.
    pub fn upload_bytes_per_sec(&self) -> Option<u64> {
        match self.upload_bytes_per_sec.load(Ordering::Relaxed) {
            0 => None,
            rate => Some(rate),
        }
    }

    fn count(&self, op: ServerOp) {
        self.requests[op.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Books `len` received bytes; returns when the chunk may be passed on under the throttle.
    fn admit(&self, len: usize) -> Option<Instant> {
        let len = u64::try_from(len).unwrap_or(u64::MAX);
        self.body_bytes_received.fetch_add(len, Ordering::Relaxed);
        let rate = self.upload_bytes_per_sec()?;
        let cost_nanos = u128::from(len) * 1_000_000_000 / u128::from(rate);
        let cost = Duration::from_nanos(u64::try_from(cost_nanos).unwrap_or(u64::MAX));
        let now = Instant::now();
        let mut free_at = self
            .throttle_free_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // An idle throttle grants no burst credit: the budget starts now.
        let start = free_at.map_or(now, |t| t.max(now));
        let done = start + cost;
        *free_at = Some(done);
        Some(done)
    }
}

#[cfg(test)]
mod tests {
    use super::ServerOp;

    #[test]
    fn every_operation_counts_in_a_slot_of_its_own() {
        let ops = [
            ServerOp::PutObject,
            ServerOp::UploadPart,
            ServerOp::CreateMultipartUpload,
            ServerOp::CompleteMultipartUpload,
            ServerOp::AbortMultipartUpload,
            ServerOp::HeadObject,
            ServerOp::GetObject,
            ServerOp::ListMultipartUploads,
            ServerOp::ListParts,
        ];
        let mut slots: Vec<usize> = ops.iter().map(|op| op.index()).collect();
        slots.sort_unstable();
        assert_eq!(slots, (0..ServerOp::COUNT).collect::<Vec<_>>());
    }
}
