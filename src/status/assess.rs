//! Judgements over measurements: the health level and its reasons, the spool forecast, and
//! each upload's ETA. Pure functions, so that every rule is tested without a daemon.
//!
//! Owns the health rules, the forecast and the ETA. May use `telemetry`'s error types and
//! [`super::render::human_bytes`] for the reasons it words; may not do I/O or read the clock (the
//! time is an input).

use super::{Forecast, Health, HealthLevel, ShapingStatus};
use crate::telemetry::{ErrorEvent, ErrorKind};

/// Beyond this clock skew against the S3 server the box is degraded (SigV4 refuses requests
/// beyond 15 minutes; this leaves time to act).
pub const CLOCK_SKEW_DEGRADED_SECS: f64 = 5.0 * 60.0;
/// A spool write error this recent makes the box failing.
pub const SPOOL_ERROR_RECENT_SECS: u64 = 10 * 60;

/// Everything the health rules look at.
#[derive(Debug, Clone, Default)]
pub struct HealthInputs<'a> {
    /// Long-running tasks that stopped (see `crate::health`).
    pub tasks_stopped: Vec<&'static str>,
    /// The spool is at or above its high watermark, or down to its reserve (where uploads are
    /// refused with "No space left on device").
    pub spool_full: Option<String>,
    /// Recent errors, newest first; spool write errors among them make the box failing.
    pub recent_errors: &'a [ErrorEvent],
    /// The time to judge `recent_errors` against, Unix seconds.
    pub now_unix: u64,
    /// `Some(false)`: the last S3 request got no answer.
    pub s3_reachable: Option<bool>,
    /// Why the last S3 request got no answer, for the reason shown.
    pub s3_last_error: Option<&'a str>,
    /// Files that failed for good (they wait for `sftpgw retry`).
    pub failed_files: u64,
    /// Files whose key holds another object (`overwrite = "never"`).
    pub conflict_files: u64,
    /// Files whose upload is retrying a transient error.
    pub retrying_files: u64,
    /// S3 `Date` header − our clock, seconds, when measured.
    pub clock_skew_secs: Option<f64>,
    /// The shaper's state: a pause or a spent budget is shown as a reason.
    pub shaping: Option<&'a ShapingStatus>,
    /// What the spool needs an operator for (a damaged journal's copy, quarantined files).
    pub spool_alarms: &'a [String],
}

/// OK / degraded / failing and why, worst reasons first.
pub fn health(i: &HealthInputs<'_>) -> Health {
    let mut failing = Vec::new();
    let mut degraded = Vec::new();
    for t in &i.tasks_stopped {
        failing.push(format!("the {t} task stopped"));
    }
    if let Some(why) = &i.spool_full {
        failing.push(why.clone());
    }
    let spool_errors = i
        .recent_errors
        .iter()
        .filter(|e| e.kind == ErrorKind::SpoolWrite)
        .filter(|e| i.now_unix.saturating_sub(e.at_unix) <= SPOOL_ERROR_RECENT_SECS)
        .count();
    if spool_errors > 0 {
        failing.push(format!(
            "{spool_errors} spool write error(s) in the last {} min",
            SPOOL_ERROR_RECENT_SECS / 60
        ));
    }
    if i.s3_reachable == Some(false) {
        degraded.push(match i.s3_last_error {
            Some(e) => format!("S3 unreachable: {e}"),
            None => "S3 unreachable".to_owned(),
        });
    }
    degraded.extend(i.spool_alarms.iter().cloned());
    if i.conflict_files > 0 {
        degraded.push(format!(
            "{} file(s) in conflict: their key holds another object (overwrite = \"never\")",
            i.conflict_files
        ));
    }
    if i.failed_files > 0 {
        degraded.push(format!(
            "{} failed file(s): see below, `sftpgw retry`",
            i.failed_files
        ));
    }
    if let Some(skew) = i.clock_skew_secs
        && skew.abs() > CLOCK_SKEW_DEGRADED_SECS
    {
        degraded.push(format!(
            "clock {:.0} s {} the S3 server (SigV4 fails beyond 900 s)",
            skew.abs(),
            if skew > 0.0 { "behind" } else { "ahead of" }
        ));
    }
    // The shaper fills `shaping`; until it does (empty reason), `clock_synced` is only its
    // default and says nothing.
    if let Some(s) = i.shaping
        && !s.reason.is_empty()
        && !s.clock_synced
    {
        degraded.push("clock unsynchronised: the shaping fallback applies".to_owned());
    }
    if i.retrying_files > 0 {
        degraded.push(format!("{} file(s) retrying S3 errors", i.retrying_files));
    }
    let level = if !failing.is_empty() {
        HealthLevel::Failing
    } else if !degraded.is_empty() {
        HealthLevel::Degraded
    } else {
        HealthLevel::Ok
    };
    failing.extend(degraded);
    Health {
        level,
        reasons: failing,
    }
}

/// Where the spool is heading: `room_bytes` is what can still arrive before uploads are
/// refused.
pub fn forecast(ingest_bytes_per_sec: u64, drain_bytes_per_sec: u64, room_bytes: u64) -> Forecast {
    if ingest_bytes_per_sec == 0 && drain_bytes_per_sec == 0 {
        return Forecast::Idle;
    }
    if ingest_bytes_per_sec <= drain_bytes_per_sec {
        return Forecast::DrainingFaster;
    }
    Forecast::FullIn {
        secs: room_bytes / (ingest_bytes_per_sec - drain_bytes_per_sec),
    }
}

/// Seconds until `remaining_bytes` are sent when `uploads` files share the drain rate.
pub fn eta_secs(remaining_bytes: u64, drain_bytes_per_sec: u64, uploads: u64) -> Option<u64> {
    let share = drain_bytes_per_sec / uploads.max(1);
    (share > 0).then(|| remaining_bytes.div_ceil(share))
}

/// Bytes before the spool reaches `high_watermark_percent` or its reserve, whichever is first.
pub fn room_bytes(total: u64, free: u64, reserve: u64, high_watermark_percent: u8) -> u64 {
    let used = total.saturating_sub(free);
    let high = total / 100 * u64::from(high_watermark_percent);
    high.saturating_sub(used).min(free.saturating_sub(reserve))
}

/// Why the spool counts as full, if it does.
pub fn spool_full(
    total: u64,
    free: u64,
    reserve: u64,
    high_watermark_percent: u8,
) -> Option<String> {
    if total == 0 {
        return None;
    }
    if free <= reserve {
        return Some(format!(
            "spool full: uploads refused (reserve of {} reached)",
            super::render::human_bytes(reserve)
        ));
    }
    let used_percent = (total - free) * 100 / total;
    (used_percent >= u64::from(high_watermark_percent)).then(|| {
        format!("spool {used_percent}% full, at or above its high watermark of {high_watermark_percent}%")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(kind: ErrorKind, at_unix: u64) -> ErrorEvent {
        ErrorEvent {
            at_unix,
            kind,
            file: None,
            cause: "x".into(),
        }
    }

    #[test]
    fn failing_beats_degraded_and_every_reason_is_named() {
        let errors = [
            error(ErrorKind::SpoolWrite, 1000),
            error(ErrorKind::SpoolWrite, 1),
        ];
        let h = health(&HealthInputs {
            tasks_stopped: vec!["drain"],
            recent_errors: &errors,
            now_unix: 1100,
            s3_reachable: Some(false),
            s3_last_error: Some("connection refused"),
            failed_files: 2,
            ..Default::default()
        });
        assert_eq!(h.level, HealthLevel::Failing);
        assert_eq!(
            h.reasons,
            [
                "the drain task stopped",
                "1 spool write error(s) in the last 10 min",
                "S3 unreachable: connection refused",
                "2 failed file(s): see below, `sftpgw retry`",
            ]
        );
    }

    #[test]
    fn degraded_by_clock_skew_retries_or_an_unsynchronised_shaper_clock() {
        let ok = health(&HealthInputs {
            clock_skew_secs: Some(-299.0),
            s3_reachable: Some(true),
            shaping: Some(&ShapingStatus::default()),
            ..Default::default()
        });
        assert_eq!(ok.level, HealthLevel::Ok, "{ok:?}");
        let skewed = health(&HealthInputs {
            clock_skew_secs: Some(-400.0),
            ..Default::default()
        });
        assert_eq!(skewed.level, HealthLevel::Degraded);
        assert!(skewed.reasons[0].contains("400 s ahead of"), "{skewed:?}");
        let unsynced = ShapingStatus {
            reason: "clock unsynchronised: fallback".into(),
            clock_synced: false,
            ..Default::default()
        };
        let h = health(&HealthInputs {
            shaping: Some(&unsynced),
            retrying_files: 1,
            ..Default::default()
        });
        assert_eq!(h.level, HealthLevel::Degraded);
        assert_eq!(h.reasons.len(), 2, "{h:?}");
    }

    #[test]
    fn forecast_says_when_the_spool_fills_or_that_it_drains_faster() {
        assert_eq!(forecast(0, 0, 1 << 30), Forecast::Idle);
        assert_eq!(forecast(10, 20, 1 << 30), Forecast::DrainingFaster);
        assert_eq!(
            forecast(3 << 20, 1 << 20, 6 * 3600 * (2 << 20)),
            Forecast::FullIn { secs: 6 * 3600 }
        );
        assert_eq!(eta_secs(100, 0, 1), None);
        assert_eq!(eta_secs(100, 20, 2), Some(10));
    }

    #[test]
    fn the_spool_is_full_above_the_high_watermark_or_below_the_reserve() {
        assert_eq!(spool_full(1000, 500, 10, 90), None);
        assert!(spool_full(1000, 100, 10, 90).is_some_and(|w| w.contains("90% full")));
        assert!(spool_full(1000, 5, 10, 99).is_some_and(|w| w.contains("reserve")));
        assert_eq!(room_bytes(1000, 500, 10, 90), 400);
        assert_eq!(room_bytes(1000, 50, 10, 99), 40);
    }
}
