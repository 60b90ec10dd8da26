//! Supervision by systemd (`Type=notify`): `STATUS=` a one-line summary, and `WATCHDOG=1` only
//! while a health check passes, so that a gateway that stopped working is restarted (and a
//! box whose daemon keeps failing is reset by the hardware watchdog behind systemd).
//!
//! The check is real, not a timer: every long-running task must still run, and the control
//! socket must answer a status request within [`HEALTH_ANSWER_TIMEOUT`] — that request goes
//! through the async runtime, the control loop, the catalog lock and the spool's filesystem,
//! so a deadlock or a hung spool stops the pings. A broken journal needs no check: the
//! process aborts (see `spool::store`).
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every notification is a no-op.
//!
//! A client of the control socket like any other: it may use `status` (requests, snapshots,
//! `render::human_bytes`), and may not touch the spool, the drain or the sessions directly, so the
//! check goes through the same path a request does.

use std::path::PathBuf;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::AbortHandle;

use crate::status::Snapshot;
use crate::status::control::{self, Request, Response};

/// How long the control socket may take to answer the health check's status request.
pub const HEALTH_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Health check period when systemd runs no watchdog (then only `STATUS=` is sent).
pub const HEALTH_STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// A task that must run as long as the gateway does.
#[derive(Clone)]
pub struct Watched {
    /// What status and the health reasons call the task: `drain`, `SFTP server`, ...
    pub name: &'static str,
    /// The task: if it has finished while the gateway runs, it died.
    pub task: AbortHandle,
}

/// Tells systemd the gateway is ready (journal recovered, every socket listening).
pub fn ready() {
    notify(&[NotifyState::Ready, NotifyState::Status("ready")]);
}

/// Runs the health check forever: at half the watchdog interval if systemd set one
/// (`WATCHDOG_USEC`), else every [`HEALTH_STATUS_INTERVAL`].
pub async fn supervise(socket: PathBuf, tasks: Vec<Watched>) {
    let interval = watchdog_interval(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
    );
    let watchdog = interval.is_some();
    let period = interval.map_or(HEALTH_STATUS_INTERVAL, |i| {
        (i / 2).max(Duration::from_millis(10))
    });
    let mut healthy = true;
    loop {
        tokio::time::sleep(period).await;
        match check(&socket, &tasks).await {
            Ok(summary) => {
                if !healthy {
                    tracing::info!(%summary, "healthy again");
                    healthy = true;
                }
                let status = format!("ok: {summary}");
                if watchdog {
                    notify(&[NotifyState::Status(&status), NotifyState::Watchdog]);
                } else {
                    notify(&[NotifyState::Status(&status)]);
                }
            }
            Err(why) => {
                if healthy {
                    tracing::error!(%why, "health check failed; not feeding the watchdog");
                    healthy = false;
                }
                notify(&[NotifyState::Status(&format!("unhealthy: {why}"))]);
            }
        }
    }
}

/// The watchdog interval systemd asks for, as `sd_watchdog_enabled(3)` reads it: `WATCHDOG_USEC`
/// set, and `WATCHDOG_PID` either unset or ours. (sd-notify 0.4's `watchdog_enabled` also
/// refuses an unset `WATCHDOG_PID`.)
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    let usec: u64 = usec?.parse().ok().filter(|u| *u > 0)?;
    match pid.map(str::parse::<u32>) {
        None => {}
        Some(Ok(pid)) if pid == std::process::id() => {}
        Some(_) => return None,
    }
    Some(Duration::from_micros(usec))
}

/// `Ok(one-line summary)` if every watched task runs and the control socket answers.
pub async fn check(socket: &std::path::Path, tasks: &[Watched]) -> Result<String, String> {
    if let Some(t) = tasks.iter().find(|t| t.task.is_finished()) {
        return Err(format!("the {} task stopped", t.name));
    }
    let answer = tokio::time::timeout(
        HEALTH_ANSWER_TIMEOUT,
        control::request(socket, &Request::Status),
    );
    match answer.await {
        Ok(Ok(Response::Status(s))) => Ok(summary(&s)),
        Ok(Ok(other)) => Err(format!("control socket answered {other:?}")),
        Ok(Err(e)) => Err(format!("control socket: {e}")),
        Err(_) => Err(format!(
            "control socket did not answer within {}s",
            HEALTH_ANSWER_TIMEOUT.as_secs()
        )),
    }
}

/// One line for `systemctl status`: queue, deliveries, spool space, and the health level with
/// its first reason. (A degraded or failing gateway still feeds the watchdog: a full spool or
/// an unreachable S3 is not mended by a reset.)
pub fn summary(s: &Snapshot) -> String {
    let health = match (s.health.level, s.health.reasons.first()) {
        (crate::status::HealthLevel::Ok, _) | (_, None) => "health OK".to_owned(),
        (crate::status::HealthLevel::Degraded, Some(why)) => format!("health DEGRADED: {why}"),
        (crate::status::HealthLevel::Failing, Some(why)) => format!("health FAILING: {why}"),
    };
    format!(
        "queue {} files ({}), {} delivered, spool {} free, engine {}, {health}",
        s.spool.queue_files,
        crate::status::render::human_bytes(s.spool.queue_bytes),
        s.drain.files_delivered,
        crate::status::render::human_bytes(s.spool.free_bytes),
        s.engine
    )
}

fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_ours_unless_systemd_named_another_process() {
        let me = std::process::id().to_string();
        let ms = Some(Duration::from_millis(30_000));
        assert_eq!(watchdog_interval(Some("30000000"), None), ms);
        assert_eq!(watchdog_interval(Some("30000000"), Some(&me)), ms);
        assert_eq!(watchdog_interval(Some("30000000"), Some("1")), None);
        assert_eq!(watchdog_interval(Some("0"), None), None);
        assert_eq!(watchdog_interval(Some("x"), None), None);
        assert_eq!(watchdog_interval(None, Some(&me)), None);
    }
}
