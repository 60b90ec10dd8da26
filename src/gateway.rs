//! The running gateway: opens the spool, starts the drain, the SFTP server, the control socket
//! and the partial-file sweeper, and stops them on shutdown. `sftpgw run` and `sftpgw demo`
//! both come here.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::drain::aws::AwsStore;
use crate::drain::shaper::Shaper;
use crate::drain::upload::{Drain, DrainConfig};
use crate::health::Watched;
use crate::spool::{FileState, Spool, SpoolEngine, SpoolOptions, VPath};
use crate::status::control::{self, Request, Response};
use crate::status::{DrainSummary, FileStatus, Snapshot, SpoolUsage};

/// Bytes kept free on the spool's filesystem: uploads are refused below this, so that the
/// journal and acknowledged files always have room.
pub const SPOOL_RESERVE_BYTES: u64 = 16 * 1024 * 1024;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs the gateway until `shutdown` resolves. `ready` is called once everything listens.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(),
) -> Result<(), BoxError> {
    let started = Instant::now();
    let spool = Spool::open_with_engine(
        SpoolOptions {
            dir: config.spool.dir.clone(),
            partial_ttl: config.spool.partial_ttl,
            reserve_bytes: SPOOL_RESERVE_BYTES,
            // Files up to one part go up with PutObject and need their SHA-256; larger ones
            // drain early (no SHA-256) or are hashed by the drain.
            hash_bytes_max: if config.s3.early_drain {
                config.s3.part_size
            } else {
                u64::MAX
            },
        },
        SpoolEngine::select(config.spool.engine)?,
    )?;
    // The shaper paces upload bodies (through the store) and admits parts (through the drain).
    let shaper = Shaper::new(config.shaping.clone(), &config.spool.dir);
    let shaper_task = tokio::spawn(shaper.clone().run());
    let store = Arc::new(AwsStore::new(&config.s3)?.with_shaper(shaper.clone()));
    let drain = Drain::with_shaper(
        store,
        spool.clone(),
        DrainConfig {
            prefix: config.s3.prefix.clone(),
            part_size: config.s3.part_size,
            concurrency: config.s3.concurrency,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            settle: crate::drain::upload::SETTLE_DEFAULT,
            early: config.s3.early_drain,
        },
        Some(shaper.clone()),
    );
    let drain_task = tokio::spawn(drain.clone().run());

    // The control socket answers before the SFTP port accepts, so that whoever sees the
    // port open can also ask for status.
    let control_listener = control::bind(&config.control.socket)?;
    let handler = control_handler(
        spool.clone(),
        drain.clone(),
        shaper.clone(),
        config.clone(),
        started,
    );
    let control_task = tokio::spawn(control::serve(control_listener, handler));

    let host_key = crate::sftp::server::load_or_generate_host_key(&config.sftp.host_key).await?;
    let users = Arc::new(crate::sftp::namespace::Users::new(&config.users)?);
    let listener = tokio::net::TcpListener::bind(config.sftp.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.sftp.listen))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut sftp_stop = stop_rx.clone();
    let sftp_task = tokio::spawn(crate::sftp::server::serve(
        listener,
        host_key,
        users,
        spool.clone(),
        async move {
            let _ = sftp_stop.wait_for(|s| *s).await;
        },
    ));

    let sweeper_spool = spool.clone();
    let sweep_every =
        (config.spool.partial_ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let sweeper_task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(sweep_every).await;
            sweeper_spool.expire_partials().await;
        }
    });

    tracing::info!(listen = %config.sftp.listen, spool = %config.spool.dir.display(), bucket = %config.s3.bucket, "gateway running");
    ready();
    let watched = vec![
        Watched {
            name: "drain",
            task: drain_task.abort_handle(),
        },
        Watched {
            name: "shaper",
            task: shaper_task.abort_handle(),
        },
        Watched {
            name: "control socket",
            task: control_task.abort_handle(),
        },
        Watched {
            name: "partial sweeper",
            task: sweeper_task.abort_handle(),
        },
        Watched {
            name: "SFTP server",
            task: sftp_task.abort_handle(),
        },
    ];
    let health_task = tokio::spawn(crate::health::supervise(
        config.control.socket.clone(),
        watched,
    ));
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    for t in [
        drain_task,
        control_task,
        sweeper_task,
        health_task,
        shaper_task,
    ] {
        t.abort();
    }
    // Budget counters since the last periodic save (the override is saved when it is set).
    let saver = shaper.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || saver.save_if_dirty()).await {
        tracing::warn!(error = %e, "cannot save the shaping state at shutdown");
    }
    // Sessions still open keep their files partial; give the server a moment to close them.
    let _ = tokio::time::timeout(Duration::from_secs(2), sftp_task).await;
    let _ = std::fs::remove_file(&config.control.socket);
    Ok(())
}

fn control_handler<S: crate::drain::store::ObjectStore>(
    spool: Arc<Spool>,
    drain: Arc<Drain<S>>,
    shaper: Arc<Shaper>,
    config: Config,
    started: Instant,
) -> control::Handler {
    Arc::new(move |req| {
        let (spool, drain, config) = (spool.clone(), drain.clone(), config.clone());
        let shaper = shaper.clone();
        Box::pin(async move {
            match req {
                Request::Status => {
                    let mut snapshot = snapshot(&spool, &drain, &config, started);
                    snapshot.shaping = shaper.status();
                    Response::Status(Box::new(snapshot))
                }
                Request::Retry { user, path } => {
                    let path = match path.as_deref().map(VPath::resolve).transpose() {
                        Ok(p) => p,
                        Err(e) => return Response::Error { message: e.message },
                    };
                    let count = match (&user, &path) {
                        (Some(u), Some(p)) => spool.retry_failed(Some((u, p))).await,
                        (Some(u), None) => spool.retry_failed(Some((u, &VPath::root()))).await,
                        (None, None) => spool.retry_failed(None).await,
                        (None, Some(_)) => {
                            return Response::Error {
                                message: "a path needs --user".into(),
                            };
                        }
                    };
                    Response::Retried {
                        count: count as u64,
                    }
                }
                Request::DrainPause { for_secs } => {
                    shaping_reply(shaper.pause(for_secs.map(Duration::from_secs)))
                }
                Request::DrainResume => shaping_reply(shaper.resume()),
                Request::DrainRate {
                    bytes_per_sec,
                    for_secs,
                } => {
                    shaping_reply(shaper.set_rate(bytes_per_sec, for_secs.map(Duration::from_secs)))
                }
            }
        })
    })
}

/// The reply to a `drain pause|resume|rate` request.
fn shaping_reply(result: std::io::Result<crate::status::ShapingStatus>) -> Response {
    match result {
        Ok(status) => Response::Shaping(Box::new(status)),
        Err(e) => Response::Error {
            message: format!(
                "cannot save the override in the spool directory ({e}); nothing was changed"
            ),
        },
    }
}

/// The status snapshot of a running gateway.
pub fn snapshot<S: crate::drain::store::ObjectStore>(
    spool: &Spool,
    drain: &Drain<S>,
    config: &Config,
    started: Instant,
) -> Snapshot {
    let space = spool.space();
    let stats = drain.stats();
    let retrying = stats.retrying.lock().map(|m| m.clone()).unwrap_or_default();
    let mut queue_bytes = 0;
    let mut queue_files = 0;
    let files: Vec<FileStatus> = spool
        .files()
        .into_iter()
        .filter(|f| !f.hidden)
        .map(|f| {
            if matches!(
                f.state,
                FileState::Sealed | FileState::Uploading | FileState::Failed
            ) {
                queue_bytes += f.size;
                queue_files += 1;
            }
            let part_size = f
                .upload
                .as_ref()
                .map_or(config.s3.part_size, |u| u.part_size);
            let size = match f.state {
                FileState::Receiving | FileState::Partial => {
                    spool.stat(&f.user, &f.path).map(|e| e.size).unwrap_or(0)
                }
                _ => f.size,
            };
            FileStatus {
                key: drain.config().object_key(&f.user, &f.path),
                path: f.path.display(),
                state: f.state,
                size,
                parts_done: f.upload.as_ref().map_or(0, |u| u.parts.len() as u64),
                parts_total: if f.size >= part_size {
                    f.size.div_ceil(part_size)
                } else {
                    1
                },
                error: f
                    .last_error
                    .clone()
                    .or_else(|| retrying.get(&f.id).cloned()),
                mtime_unix: f.mtime_unix,
                user: f.user,
            }
        })
        .collect();
    Snapshot {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_secs: started.elapsed().as_secs(),
        engine: spool.engine_name().to_owned(),
        spool: SpoolUsage {
            dir: config.spool.dir.display().to_string(),
            total_bytes: space.blocks_total * space.block_size,
            free_bytes: space.blocks_avail * space.block_size,
            queue_bytes,
            queue_files,
        },
        drain: DrainSummary {
            endpoint: config
                .s3
                .endpoint
                .clone()
                .unwrap_or_else(|| "AWS".to_owned()),
            bucket: config.s3.bucket.clone(),
            bytes_sent: stats.bytes_sent.load(Ordering::Relaxed),
            parts_sent: stats.parts_sent.load(Ordering::Relaxed),
            files_delivered: stats.files_delivered.load(Ordering::Relaxed),
        },
        files,
        shaping: Default::default(),
    }
}
