//! The running gateway: opens the spool, starts the drain, the SFTP server, the control socket
//! and the partial-file sweeper, and stops them on shutdown. `sftpgw run` and `sftpgw demo`
//! both come here.
//!
//! The wiring: the one module that knows every subsystem and may use any of them; none may use
//! it back but `demo` and the binary, which run it. It maps control requests onto the
//! subsystems and keeps no rules of its own: health and renderings belong to `status`, files
//! to `spool`, uploads to `drain`, sessions to `sftp`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::drain::aws::AwsStore;
use crate::drain::observer::S3Observer;
use crate::drain::shaper::Shaper;
use crate::drain::upload::{Drain, DrainConfig};
use crate::health::Watched;
use crate::num::u64_from_usize;
use crate::spool::{FileState, Spool, SpoolEngine, SpoolOptions, VPath};
use crate::status::assess::{self, HealthInputs};
use crate::status::control::{self, Request, Response};
use crate::status::rates::{RATE_SAMPLE_INTERVAL_SECS, RateMeter};
use crate::status::{
    Counters, DrainSummary, FileStatus, QueueStatus, Rates, S3Status, Snapshot, SpoolUsage,
};
use crate::telemetry;
use tokio::task::{AbortHandle, JoinHandle};

/// When the drain has sent nothing for this long, a HeadBucket probe checks that S3 answers
/// and measures the clock skew again.
pub const S3_PROBE_IDLE_SECS: u64 = 60;

/// What a snapshot needs beyond the spool and the drain: rates, the S3 observer, the tasks
/// whose death makes the gateway failing.
pub struct Monitor {
    started: Instant,
    /// Ingest (SFTP bytes received) and drain (bytes sent) meters.
    rates: Mutex<(RateMeter, RateMeter)>,
    observer: Arc<S3Observer>,
    shaper: Arc<Shaper>,
    watched: OnceLock<Vec<Watched>>,
    /// The SSH port's limits and bans, for status.
    defender: Arc<crate::sftp::defender::Defender>,
    /// The drain meter's rate at the last sample, for the ETAs of `.sftpgw/queue.txt`.
    drain_rate: Arc<AtomicU64>,
}

impl Monitor {
    fn sample(&self, bytes_sent: u64) {
        let now = Instant::now();
        let mut r = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        r.0.sample(now, telemetry::bytes_received());
        r.1.sample(now, bytes_sent);
        self.drain_rate
            .store(r.1.bytes_per_sec(), Ordering::Relaxed);
    }

    /// The names of the watched tasks that have stopped; none before they are watched.
    fn tasks_stopped(&self) -> Vec<&'static str> {
        self.watched
            .get()
            .map(|w| {
                w.iter()
                    .filter(|t| t.task.is_finished())
                    .map(|t| t.name)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The S3 observer: reachability and the clock skew, whose
    /// [`S3Observer::subscribe_skew`] feeds the shaper.
    pub fn observer(&self) -> &Arc<S3Observer> {
        &self.observer
    }
}

/// Bytes kept free on the spool's filesystem: uploads are refused below this, so that the
/// journal and acknowledged files always have room.
pub const SPOOL_RESERVE_BYTES: u64 = 16 * 1024 * 1024;

/// Any error that stops the gateway from starting; `main` prints it and exits 1.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Size of the file system holding the spool directory (created if missing); 0 if unknown.
fn spool_fs_bytes(dir: &std::path::Path) -> u64 {
    let _ = std::fs::create_dir_all(dir);
    nix::sys::statvfs::statvfs(dir).map_or(0, |s| s.blocks() * s.fragment_size())
}

/// Runs the gateway until `shutdown` resolves. `ready` is called once everything listens.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(),
) -> Result<(), BoxError> {
    let started = Instant::now();
    let spool = open_spool(&config)?;
    let core = start_drain(&config, &spool, started)?;
    // The control socket answers before the SFTP port accepts, so that whoever sees the
    // port open can also ask for status.
    let control = start_control(&config, &spool, &core)?;
    let metrics = start_metrics(&config, &spool, &core).await?;
    let (stop_tx, sftp_task) = start_sftp(&config, &spool, &core.monitor).await?;
    let sweeper = start_sweeper(&config, &spool);

    tracing::info!(listen = %config.sftp.listen, spool = %config.spool.dir.display(), bucket = %config.s3.bucket, "gateway running");
    ready();
    let tasks = Tasks {
        drain: core.tasks.drain,
        monitor: core.tasks.monitor,
        shaper: core.tasks.shaper,
        control,
        sweeper,
        sftp: sftp_task.abort_handle(),
        metrics,
        webhook: core.tasks.webhook,
        manifests: core.tasks.manifests,
    };
    let watched = tasks.watched();
    let _ = core.monitor.watched.set(watched.clone());
    let health_task = tokio::spawn(crate::health::supervise(
        config.control.socket.clone(),
        watched,
    ));
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    tasks.abort(&health_task.abort_handle());
    // Budget counters since the last periodic save (the override is saved when it is set).
    let saver = core.monitor.shaper.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || saver.save_if_dirty()).await {
        tracing::warn!(error = %e, "cannot save the shaping state at shutdown");
    }
    // Sessions still open keep their files partial; give the server a moment to close them.
    let _ = tokio::time::timeout(Duration::from_secs(2), sftp_task).await;
    let _ = std::fs::remove_file(&config.control.socket);
    Ok(())
}

/// The gateway's long-running tasks: the health supervisor watches them, shutdown aborts them
/// (all but the SFTP server, which is told to stop and given a moment to close its sessions).
struct Tasks {
    drain: AbortHandle,
    monitor: AbortHandle,
    shaper: AbortHandle,
    control: AbortHandle,
    sweeper: AbortHandle,
    sftp: AbortHandle,
    metrics: Option<AbortHandle>,
    webhook: Option<AbortHandle>,
    manifests: Option<AbortHandle>,
}

impl Tasks {
    /// The tasks whose death makes the gateway failing, with the names status shows.
    fn watched(&self) -> Vec<Watched> {
        let always = [
            ("drain", &self.drain),
            ("status monitor", &self.monitor),
            ("shaper", &self.shaper),
            ("control socket", &self.control),
            ("partial sweeper", &self.sweeper),
            ("SFTP server", &self.sftp),
        ];
        let optional = [
            ("metrics server", &self.metrics),
            ("webhook", &self.webhook),
            ("manifests", &self.manifests),
        ];
        always
            .into_iter()
            .chain(
                optional
                    .into_iter()
                    .filter_map(|(name, task)| task.as_ref().map(|t| (name, t))),
            )
            .map(|(name, task)| Watched {
                name,
                task: task.clone(),
            })
            .collect()
    }

    /// Aborts every task but the SFTP server, and `health`, the supervisor watching them.
    fn abort(&self, health: &AbortHandle) {
        for t in [
            &self.drain,
            &self.control,
            &self.sweeper,
            health,
            &self.monitor,
            &self.shaper,
        ]
        .into_iter()
        .chain(&self.metrics)
        .chain(&self.manifests)
        .chain(&self.webhook)
        {
            t.abort();
        }
    }
}

/// Opens the spool the configuration describes and sets each user's quota.
fn open_spool(config: &Config) -> Result<Arc<Spool>, BoxError> {
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
            high_watermark_percent: config.spool.high_watermark_percent,
            low_watermark_percent: config.spool.low_watermark_percent,
            max_file_size: config
                .spool
                .max_file_size_for(spool_fs_bytes(&config.spool.dir)),
            delivered_retention: config.spool.delivered_retention,
        },
        SpoolEngine::select(config.spool.engine)?,
    )?;
    spool.set_quotas(
        config
            .users
            .iter()
            .map(|u| (u.name.clone(), u.quota))
            .collect(),
    );
    Ok(spool)
}

/// The drain and what it needs to run: the S3 store, the shaper, the status monitor.
struct Core {
    drain: Arc<Drain<AwsStore>>,
    monitor: Arc<Monitor>,
    tasks: CoreTasks,
}

/// The tasks [`start_drain`] spawns.
struct CoreTasks {
    shaper: AbortHandle,
    drain: AbortHandle,
    webhook: Option<AbortHandle>,
    manifests: Option<AbortHandle>,
    monitor: AbortHandle,
}

/// Starts the shaper, the drain, the webhook and manifest shippers if configured, and the
/// status monitor.
fn start_drain(config: &Config, spool: &Arc<Spool>, started: Instant) -> Result<Core, BoxError> {
    // The shaper paces upload bodies (through the store) and admits parts (through the drain).
    let shaper = Shaper::new(config.shaping.clone(), &config.spool.dir);
    let shaper_task = tokio::spawn(shaper.clone().run());
    let store = Arc::new(AwsStore::new(&config.s3)?.with_shaper(shaper.clone()));
    let defender = crate::sftp::defender::Defender::new(config.sftp.defender.clone());
    let monitor = Arc::new(Monitor {
        defender: Arc::clone(&defender),
        started,
        rates: Mutex::new((RateMeter::default(), RateMeter::default())),
        drain_rate: Arc::default(),
        observer: store.observer().clone(),
        shaper: shaper.clone(),
        watched: OnceLock::new(),
    });
    let drain = Drain::with_shaper(
        store.clone(),
        spool.clone(),
        drain_config(config),
        Some(shaper.clone()),
    );
    let drain_task = tokio::spawn(drain.clone().run());
    let webhook_task = config
        .webhook
        .clone()
        .map(|w| tokio::spawn(crate::webhook::run(w)));
    let manifests_task = config.s3.manifest_interval.map(|interval| {
        tokio::spawn(crate::drain::manifests::run(
            store.clone(),
            config.spool.dir.clone(),
            config.s3.prefix.clone(),
            spool.box_name().to_owned(),
            interval,
        ))
    });
    let monitor_task = tokio::spawn(monitor_loop(
        monitor.clone(),
        drain.stats().clone(),
        store.clone(),
    ));
    Ok(Core {
        drain,
        monitor,
        tasks: CoreTasks {
            shaper: shaper_task.abort_handle(),
            drain: drain_task.abort_handle(),
            webhook: webhook_task.map(|t| t.abort_handle()),
            manifests: manifests_task.map(|t| t.abort_handle()),
            monitor: monitor_task.abort_handle(),
        },
    })
}

/// The drain's settings from the `[s3]` section.
fn drain_config(config: &Config) -> DrainConfig {
    DrainConfig {
        prefix: config.s3.prefix.clone(),
        part_size: config.s3.part_size,
        concurrency: config.s3.concurrency,
        backoff_base: Duration::from_millis(200),
        backoff_max: Duration::from_secs(30),
        settle: crate::drain::upload::SETTLE_DEFAULT,
        early: config.s3.early_drain,
        failed_retry_first: config.s3.failed_retry,
        failed_retry_max: config.s3.failed_retry_max,
    }
}

/// Binds the control socket and serves it.
fn start_control(
    config: &Config,
    spool: &Arc<Spool>,
    core: &Core,
) -> Result<AbortHandle, BoxError> {
    let control_listener = control::bind(&config.control.socket)?;
    let handler = control_handler(
        spool.clone(),
        core.drain.clone(),
        config.clone(),
        core.monitor.clone(),
        Arc::clone(&core.monitor.defender),
    );
    Ok(tokio::spawn(control::serve(control_listener, handler)).abort_handle())
}

/// Binds and serves `/metrics` when `[metrics]` is configured.
async fn start_metrics(
    config: &Config,
    spool: &Arc<Spool>,
    core: &Core,
) -> Result<Option<AbortHandle>, BoxError> {
    let Some(m) = config.metrics.as_ref() else {
        return Ok(None);
    };
    let listener = crate::status::metrics::bind(m.listen).await?;
    let (spool, drain, config, monitor) = (
        spool.clone(),
        core.drain.clone(),
        config.clone(),
        core.monitor.clone(),
    );
    let snapshot_fn: crate::status::metrics::SnapshotFn =
        Arc::new(move || snapshot(&spool, &drain, &config, &monitor));
    tracing::info!(listen = %m.listen, "metrics at http://{}/metrics", m.listen);
    Ok(Some(
        tokio::spawn(crate::status::metrics::serve(listener, snapshot_fn)).abort_handle(),
    ))
}

/// The SFTP server's task, which returns once its sessions have ended.
type SftpTask = JoinHandle<Result<(), crate::sftp::server::ServeError>>;

/// Loads the host keys and users, binds the SFTP port and serves it until `true` is sent on
/// the returned channel.
async fn start_sftp(
    config: &Config,
    spool: &Arc<Spool>,
    monitor: &Monitor,
) -> Result<(tokio::sync::watch::Sender<bool>, SftpTask), BoxError> {
    let ssh = crate::sftp::SshSetup {
        algorithms: config.sftp.algorithms,
        host_keys: crate::sftp::load_host_keys(&config.sftp.host_key, config.sftp.algorithms)
            .await?,
        login_grace: config.sftp.login_grace,
        session: crate::sftp::SessionPolicy {
            names: if config.sftp.allow_control_characters {
                crate::sftp::NamePolicy::AllowAll
            } else {
                crate::sftp::NamePolicy::RefuseHostile
            },
            idle_timeout: config.sftp.idle_timeout,
            virtual_dir: config.sftp.virtual_dir.as_deref().map(|name| {
                crate::sftp::receipts::VirtualDir::new(name, Arc::clone(&monitor.drain_rate))
            }),
        },
        defender: Arc::clone(&monitor.defender),
    };
    let users = Arc::new(crate::sftp::namespace::Users::new(&config.users)?);
    let listener = tokio::net::TcpListener::bind(config.sftp.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.sftp.listen))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut sftp_stop = stop_rx.clone();
    let sftp_task = tokio::spawn(crate::sftp::server::serve(
        listener,
        ssh,
        users,
        spool.clone(),
        async move {
            let _ = sftp_stop.wait_for(|s| *s).await;
        },
    ));
    Ok((stop_tx, sftp_task))
}

/// Expires stale partial files and prunes old delivered ones, every tenth of the partial TTL
/// (between 1 s and 60 s).
fn start_sweeper(config: &Config, spool: &Arc<Spool>) -> AbortHandle {
    let sweeper_spool = spool.clone();
    let sweep_every =
        (config.spool.partial_ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(sweep_every).await;
            sweeper_spool.expire_partials().await;
            sweeper_spool.prune_delivered();
        }
    })
    .abort_handle()
}

/// Samples the rates every second and probes S3 when the drain has been quiet.
async fn monitor_loop(
    monitor: Arc<Monitor>,
    stats: Arc<crate::drain::upload::DrainStats>,
    store: Arc<AwsStore>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(RATE_SAMPLE_INTERVAL_SECS));
    let mut probing: Option<tokio::task::JoinHandle<()>> = None;
    // Every new reading of the S3 server's clock goes to the shaper, which trusts our clock
    // while it agrees with the server's (and uses its fallback rate otherwise).
    let mut skews = monitor.observer.subscribe_skew();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = skews.changed() => {
                if changed.is_ok()
                    && let Some(skew) = *skews.borrow_and_update()
                {
                    monitor.shaper.note_server_clock_skew(skew.skew_secs);
                }
                continue;
            }
        }
        monitor.sample(stats.bytes_sent.load(Ordering::Relaxed));
        let last = monitor.observer.reachability().last_request_unix;
        let quiet =
            last.is_none_or(|t| crate::spool::now_unix().saturating_sub(t) >= S3_PROBE_IDLE_SECS);
        if quiet && probing.as_ref().is_none_or(|p| p.is_finished()) {
            let store = store.clone();
            // In its own task: a probe waiting for a timeout must not stop the sampling.
            probing = Some(tokio::spawn(async move {
                if let Err(e) = store.probe().await {
                    tracing::debug!(error = %e, "S3 probe failed");
                }
            }));
        }
    }
}

fn control_handler<S: crate::drain::store::ObjectStore>(
    spool: Arc<Spool>,
    drain: Arc<Drain<S>>,
    config: Config,
    monitor: Arc<Monitor>,
    defender: Arc<crate::sftp::defender::Defender>,
) -> control::Handler {
    Arc::new(move |req| {
        let (spool, drain, config, monitor, defender) = (
            spool.clone(),
            drain.clone(),
            config.clone(),
            monitor.clone(),
            defender.clone(),
        );
        let shaper = monitor.shaper.clone();
        Box::pin(async move {
            match req {
                Request::Status => {
                    Response::Status(Box::new(snapshot(&spool, &drain, &config, &monitor)))
                }
                Request::Retry { user, path } => retry(&spool, user, path).await,
                Request::DrainPause { for_secs } => {
                    shaping_reply(shaper.pause(for_secs.map(Duration::from_secs)))
                }
                Request::DrainResume => shaping_reply(shaper.resume()),
                Request::QuarantineList => {
                    let (files, count) =
                        spool.quarantined(crate::spool::QUARANTINE_LISTED_COUNT_MAX);
                    Response::Quarantine { files, count }
                }
                Request::QuarantineDeliver { name, user, path } => {
                    quarantine_deliver(&spool, &config, name, user, path).await
                }
                Request::QuarantineDelete { name } => match spool.quarantine_delete(&name) {
                    Ok(()) => Response::Done {
                        message: format!("{name} deleted from the quarantine"),
                    },
                    Err(e) => Response::Error { message: e.message },
                },
                Request::Files {
                    state,
                    after,
                    limit,
                } => files_page(&spool, &drain, &config, (state, after, limit)),
                // The control socket streams events itself; a handler never sees it.
                Request::Events => Response::Error {
                    message: "events are streamed by the control socket".into(),
                },
                Request::BansList => Response::Bans {
                    bans: defender.bans(std::time::Instant::now()),
                },
                Request::BansClear { source } => bans_clear(&defender, source),
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

/// `sftpgw retry [--user U [PATH]]`: queues failed files again, all or one user's or those
/// under one path.
async fn retry(spool: &Spool, user: Option<String>, path: Option<String>) -> Response {
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
        count: u64_from_usize(count),
    }
}

/// `sftpgw quarantine deliver NAME [--as USER:/PATH]`: seals a quarantined file as a new
/// upload, where its identity says or where `--as` says.
async fn quarantine_deliver(
    spool: &Spool,
    config: &Config,
    name: String,
    user: Option<String>,
    path: Option<String>,
) -> Response {
    let target = match (user, path.as_deref().map(VPath::resolve)) {
        (Some(user), Some(Ok(path))) => Some((user, path)),
        (_, Some(Err(e))) => return Response::Error { message: e.message },
        (None, None) => None,
        _ => {
            return Response::Error {
                message: "--as needs USER:/PATH".into(),
            };
        }
    };
    if let Some((user, _)) = &target
        && !config.users.iter().any(|u| &u.name == user)
    {
        return Response::Error {
            message: format!("{user}: no such user in the configuration"),
        };
    }
    match spool.quarantine_deliver(&name, target).await {
        Ok((user, path)) => Response::Done {
            message: format!(
                "{name} sealed as {user}:{}; it is queued for delivery",
                path.display()
            ),
        },
        Err(e) => Response::Error { message: e.message },
    }
}

/// `sftpgw bans clear [SOURCE]`: lifts every ban, or the bans of one IP address.
fn bans_clear(defender: &crate::sftp::defender::Defender, source: Option<String>) -> Response {
    let ip = match source.as_deref().map(str::parse::<std::net::IpAddr>) {
        Some(Err(_)) => {
            return Response::Error {
                message: format!("{:?} is not an IP address", source.unwrap_or_default()),
            };
        }
        Some(Ok(ip)) => Some(ip),
        None => None,
    };
    let lifted = defender.clear(ip, std::time::Instant::now());
    tracing::info!(source = ?ip, lifted, "bans cleared from the control socket");
    Response::Done {
        message: format!("{lifted} ban(s) lifted"),
    }
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

/// How status shows one file: its live size while it arrives, its object key, its parts, and
/// the transient error its upload is retrying, if any.
fn file_status<S: crate::drain::store::ObjectStore>(
    spool: &Spool,
    drain: &Drain<S>,
    config: &Config,
    f: &crate::spool::catalog::FileRecord,
    retrying: &std::collections::HashMap<crate::spool::FileId, String>,
) -> FileStatus {
    let size = match f.state {
        FileState::Receiving | FileState::Partial => {
            spool.stat(&f.user, &f.path).map(|e| e.size).unwrap_or(0)
        }
        _ => f.size,
    };
    FileStatus::from_record(
        f,
        drain.config().object_key(&f.user, &f.path),
        size,
        config.s3.part_size,
        retrying.get(&f.id).cloned(),
    )
}

/// One page of `sftpgw files`.
fn files_page<S: crate::drain::store::ObjectStore>(
    spool: &Spool,
    drain: &Drain<S>,
    config: &Config,
    (state, after, limit): (FileState, Option<u64>, Option<usize>),
) -> Response {
    let limit = limit
        .unwrap_or(crate::status::FILES_PAGE_COUNT_MAX)
        .clamp(1, crate::status::FILES_PAGE_COUNT_MAX);
    let (records, next) = spool.files_page(state, after, limit);
    let retrying = drain
        .stats()
        .retrying
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    Response::Files {
        files: records
            .iter()
            .map(|f| file_status(spool, drain, config, f, &retrying))
            .collect(),
        next,
        count: u64_from_usize(spool.counts().files(state)),
    }
}

/// The status snapshot of a running gateway.
pub fn snapshot<S: crate::drain::store::ObjectStore>(
    spool: &Spool,
    drain: &Drain<S>,
    config: &Config,
    monitor: &Monitor,
) -> Snapshot {
    let space = spool.space();
    let stats = drain.stats();
    let retrying = stats.retrying.lock().map(|m| m.clone()).unwrap_or_default();
    let now = crate::spool::now_unix();
    // Counts come from the spool's index; only a bounded list of files is copied, so a
    // snapshot (and the health check behind the watchdog) costs the same with a million files.
    let counts = spool.counts();
    let queue = QueueStatus::from_counts(&counts, now, |state| {
        spool.oldest_in(&[state], 1).pop().map(|f| f.mtime_unix)
    });
    let mut files: Vec<FileStatus> = spool
        .files_for_status(crate::status::FILES_LISTED_COUNT_MAX)
        .into_iter()
        .map(|f| file_status(spool, drain, config, &f, &retrying))
        .collect();
    let (ingest, drained, window_secs) = {
        let r = monitor.rates.lock().unwrap_or_else(|p| p.into_inner());
        (r.0.bytes_per_sec(), r.1.bytes_per_sec(), r.0.span_secs())
    };
    set_upload_etas(&mut files, drained);
    let total_bytes = space.blocks_total * space.block_size;
    let free_bytes = space.blocks_avail * space.block_size;
    let high = config.spool.high_watermark_percent;
    let reach = monitor.observer.reachability();
    let skew = monitor.observer.skew();
    let errors = telemetry::recent_errors();
    let shaping = monitor.shaper.status();
    let tasks_stopped = monitor.tasks_stopped();
    let spool_alarms = spool.alarms();
    let health = assess::health(&HealthInputs {
        tasks_stopped,
        spool_full: spool_full(spool, config, total_bytes, free_bytes),
        recent_errors: &errors,
        now_unix: now,
        s3_reachable: reach.reachable,
        s3_last_error: reach.last_error.as_deref(),
        failed_files: u64_from_usize(counts.files(FileState::Failed)),
        conflict_files: u64_from_usize(counts.files(FileState::Conflict)),
        retrying_files: u64_from_usize(retrying.len()),
        clock_skew_secs: skew.map(|k| k.skew_secs),
        shaping: Some(&shaping),
        spool_alarms: &spool_alarms,
    });
    Snapshot {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_secs: monitor.started.elapsed().as_secs(),
        engine: spool.engine_name().to_owned(),
        spool: SpoolUsage {
            dir: config.spool.dir.display().to_string(),
            total_bytes,
            free_bytes,
            queue_bytes: queue.bytes,
            queue_files: queue.files,
        },
        drain: drain_summary(config, stats),
        files,
        file_counts: Some(crate::status::FileCounts::from_spool(&counts)),
        shaping,
        source: crate::status::SnapshotSource::Daemon,
        health,
        sftp_sessions: telemetry::sftp_sessions_live(),
        lan: Some(monitor.defender.counts(Instant::now())),
        rates: Rates {
            ingest_bytes_per_sec: ingest,
            drain_bytes_per_sec: drained,
            window_secs,
            forecast: assess::forecast(
                ingest,
                drained,
                assess::room_bytes(total_bytes, free_bytes, SPOOL_RESERVE_BYTES, high),
            ),
        },
        queue,
        errors,
        s3: s3_status(reach, skew),
        counters: counters(spool.invalid_transitions()),
    }
}

/// Each uploading file's ETA, sharing the drain rate `drained` among the uploads listed.
fn set_upload_etas(files: &mut [FileStatus], drained: u64) {
    let uploading = u64_from_usize(
        files
            .iter()
            .filter(|f| f.state == FileState::Uploading)
            .count(),
    );
    for f in files.iter_mut().filter(|f| f.state == FileState::Uploading) {
        f.eta_secs = assess::eta_secs(f.size.saturating_sub(f.bytes_done), drained, uploading);
    }
}

/// Why the spool refuses uploads, if it does: too full now, or not yet drained below the low
/// watermark since it was.
fn spool_full(spool: &Spool, config: &Config, total_bytes: u64, free_bytes: u64) -> Option<String> {
    let high = config.spool.high_watermark_percent;
    // The spool's own gate first: it keeps refusing until the fill is below the low
    // watermark, which a reading of the fill alone cannot tell.
    assess::spool_full(total_bytes, free_bytes, SPOOL_RESERVE_BYTES, high).or_else(|| {
        spool.refusing_uploads().then(|| {
            format!(
                "spool refuses uploads until it drains below its low watermark of {}%",
                config.spool.low_watermark_percent
            )
        })
    })
}

/// What the drain has sent since the daemon started, and where to.
fn drain_summary(config: &Config, stats: &crate::drain::upload::DrainStats) -> DrainSummary {
    DrainSummary {
        endpoint: config.s3.endpoint_label(),
        bucket: config.s3.bucket.clone(),
        bytes_sent: stats.bytes_sent.load(Ordering::Relaxed),
        parts_sent: stats.parts_sent.load(Ordering::Relaxed),
        files_delivered: stats.files_delivered.load(Ordering::Relaxed),
    }
}

/// What the S3 observer saw of the endpoint: its answers and its clock.
fn s3_status(
    reach: crate::drain::observer::S3Reachability,
    skew: Option<crate::drain::observer::ServerClockSkew>,
) -> S3Status {
    S3Status {
        reachable: reach.reachable,
        last_request_unix: reach.last_request_unix,
        last_error: reach.last_error,
        clock_skew_secs: skew.map(|k| k.skew_secs),
        clock_skew_measured_unix: skew.map(|k| k.measured_unix),
    }
}

/// The process-wide counters of [`telemetry`], and the catalog's count of refused records.
fn counters(invalid_transitions: u64) -> Counters {
    Counters {
        invalid_transitions,
        bytes_received: telemetry::bytes_received(),
        s3_retries: telemetry::s3_retries(),
        errors_by_kind: telemetry::ErrorKind::ALL
            .iter()
            .map(|k| (k.label().to_owned(), telemetry::errors_total(*k)))
            .collect(),
    }
}
