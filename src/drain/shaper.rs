//! `drain::Shaper`: the WAN bandwidth of the drain. One shared limiter paces every upload body;
//! admission keeps new parts from starting in a paused window or over a byte budget.
//!
//! What applies, first match wins: a spent daily or monthly budget (paused until the period
//! ends); the runtime override (`sftpgw drain pause|rate [--for D]`); while the clock is not
//! trusted, `clock_unknown_rate`; the first schedule window that holds the local time; `rate`.
//! A task re-evaluates this every second, and an override re-evaluates at once, so a change
//! applies within a second. The override and the budget counters persist in the spool
//! directory ([`state`]).
//!
//! The limiter is `async-speed-limit`'s `Limiter` (TiKV's; used for years by TiKV's backup and
//! restore): a token bucket shared by clones, whose `set_speed_limit` changes the rate at run
//! time without disturbing what was already consumed, and whose `consume_duration` returns the
//! wait instead of sleeping, so that a body can sleep on Tokio's timer inside `poll_frame`.
//! `leaky-bucket` was the other candidate: its rate is fixed at build (a new rate means a new
//! limiter, and bodies in flight would keep the old one), and it hands tokens to waiters in
//! whole refills, which makes small chunks at low rates bursty.
//!
//! Pacing: a body takes each chunk's bytes from the limiter before handing the chunk out, and
//! chunks are about 1/[`PACE_CHUNKS_PER_SEC`] s of the rate, so no body waits long between
//! chunks and aws-sdk-s3's stalled-stream protection (below 1 B/s for 20 s fails the body)
//! never fires. A pause never changes the limiter: parts in flight when a pause begins finish
//! at the last rate in force (unlimited if there was none); only new parts wait.
//!
//! Owns the limiter, the admission of parts, and the override and budget state. May use
//! `config` (its settings), `num`, and the spool directory for its state file; it must not
//! touch the catalog, the journal or the drain loop. It still builds `status`'s
//! `ShapingStatus` for the status screen: the one use of `status` left in the drain.

pub mod clock;
mod period;
pub mod schedule;
pub mod state;

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_speed_limit::Limiter;
use jiff::{Timestamp, ZonedDateTime};
use tokio::sync::Notify;
use tokio::time::Instant;

use self::clock::{SystemClock, TokioClock, WallClock};
use self::period::{PeriodKind, roll_period, unix, when};
use self::state::{Override, PeriodUsage, PersistedState};
use crate::config::{Rate, ShapingConfig};
use crate::num::{f64_from_u64, u64_from_f64_saturating, u64_from_usize, usize_from_u64};
use crate::status::{BudgetStatus, ShapingStatus};

/// How often the schedule, override expiry and budgets are evaluated.
pub const EVALUATE_INTERVAL_SECS: u64 = 1;
/// How often changed budget counters are written to the state file: a crash loses at most
/// this much of counted traffic (and the override is written at once).
pub const STATE_SAVE_INTERVAL_SECS: u64 = 5;
/// A paced chunk carries about this fraction of a second of the rate.
pub const PACE_CHUNKS_PER_SEC: u64 = 16;
/// Smallest paced chunk: at the slowest rate (1 KiB/s) a body waits about a second per chunk.
pub const PACE_CHUNK_BYTES_MIN: usize = 1024;
/// The limiter's bucket holds this much time of the rate: the largest burst.
const LIMITER_REFILL_MILLIS: u64 = 100;
/// The S3 server's Date header confirms our clock for this long after a probe.
pub const SERVER_SKEW_FRESH_SECS: u64 = 15 * 60;
/// A clock within this of the S3 server's is trusted.
pub const SERVER_SKEW_SECS_MAX: f64 = 60.0;
/// The measured rate is averaged over this many evaluation intervals.
const RATE_SAMPLES_COUNT: usize = 5;

/// The instant a decision is made for: the time, its local time in the configured zone (which
/// the schedule and the budget periods read), and whether the clock is trusted (kernel NTP
/// sync, or the S3 server's Date header agreeing); when it is not, the fallback applies.
#[derive(Clone, Copy)]
struct Moment<'a> {
    now: Timestamp,
    here: &'a ZonedDateTime,
    clock_synced: bool,
}

/// The decision of one evaluation.
#[derive(Debug, Clone, Default)]
struct Decision {
    paused: bool,
    /// Paused by the schedule, override or clock fallback (not by a budget, which admission
    /// checks against each part's length itself).
    paused_by_rate: bool,
    limit: Option<u64>,
    reason: String,
    next_change: Option<Timestamp>,
    clock_synced: bool,
}

struct Inner {
    persisted: PersistedState,
    /// Budget counters changed since the last save.
    dirty: bool,
    /// `wan_bytes` already added to the period counters.
    accounted_bytes: u64,
    /// Bytes of parts admitted and not finished: counted against budgets before they are sent.
    reserved_bytes: u64,
    /// A part waiting for budget, and its length: the budget counts as spent for it.
    blocked_len: Option<u64>,
    decision: Decision,
    server_skew: Option<(Instant, f64)>,
    /// `(when, wan_bytes)` at the last evaluations, for the measured rate.
    samples: VecDeque<(Instant, u64)>,
}

/// The drain's bandwidth shaper. Cheap to share (`Arc`); see the module doc.
pub struct Shaper {
    config: ShapingConfig,
    limiter: Limiter<TokioClock>,
    clock: Arc<dyn WallClock>,
    /// `None`: nothing is persisted (tests, tools).
    state_path: Option<PathBuf>,
    inner: Mutex<Inner>,
    /// Upload body bytes handed to the network.
    wan_bytes: AtomicU64,
    /// Wakes parts waiting for admission after each evaluation.
    changed: Notify,
}

/// A part admitted to start; its bytes stay reserved against the budgets until it is dropped.
pub struct Admission {
    shaper: Arc<Shaper>,
    len: u64,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut inner = self.shaper.lock();
        inner.reserved_bytes = inner.reserved_bytes.saturating_sub(self.len);
    }
}

impl std::fmt::Debug for Shaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shaper")
            .field("config", &self.config)
            .field("state_path", &self.state_path)
            .finish_non_exhaustive()
    }
}

impl Shaper {
    /// The shaper of a gateway whose spool is `spool_dir` (where its state persists).
    pub fn new(config: ShapingConfig, spool_dir: &std::path::Path) -> Arc<Shaper> {
        Self::with_clock(
            config,
            Some(state::path_in(spool_dir)),
            Arc::new(SystemClock),
        )
    }

    /// An unlimited shaper that persists nothing.
    pub fn unlimited() -> Arc<Shaper> {
        Self::with_clock(ShapingConfig::default(), None, Arc::new(SystemClock))
    }

    /// A shaper for `config` on `clock`; it loads and saves its override and budget counters
    /// at `state_path` (`None`: persists nothing). The rate applies at once.
    pub fn with_clock(
        config: ShapingConfig,
        state_path: Option<PathBuf>,
        clock: Arc<dyn WallClock>,
    ) -> Arc<Shaper> {
        let persisted = state_path.as_deref().map(state::load).unwrap_or_default();
        // No minimum wait: a body wakes when the bucket is back at zero, not when it is full,
        // so that a late timer wake-up is absorbed by the bucket instead of losing tokens
        // (which would pace below the rate).
        let limiter = Limiter::<TokioClock>::builder(f64::INFINITY)
            .refill(Duration::from_millis(LIMITER_REFILL_MILLIS))
            .min_wait(Duration::ZERO)
            .build();
        let shaper = Arc::new(Shaper {
            config,
            limiter,
            clock,
            state_path,
            inner: Mutex::new(Inner {
                persisted,
                dirty: false,
                accounted_bytes: 0,
                reserved_bytes: 0,
                blocked_len: None,
                decision: Decision::default(),
                server_skew: None,
                samples: VecDeque::with_capacity(RATE_SAMPLES_COUNT + 1),
            }),
            wan_bytes: AtomicU64::new(0),
            changed: Notify::new(),
        });
        shaper.evaluate();
        shaper
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves the state consistent; a panic elsewhere cannot tear it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Re-evaluates every [`EVALUATE_INTERVAL_SECS`] and saves changed counters every
    /// [`STATE_SAVE_INTERVAL_SECS`], until the task is aborted (then call [`Shaper::save`]).
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(EVALUATE_INTERVAL_SECS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_save = Instant::now();
        loop {
            tick.tick().await;
            self.evaluate();
            self.sample_rate();
            if last_save.elapsed() >= Duration::from_secs(STATE_SAVE_INTERVAL_SECS) {
                last_save = Instant::now();
                let shaper = self.clone();
                let saved = tokio::task::spawn_blocking(move || shaper.save_if_dirty()).await;
                if let Ok(Err(e)) = saved {
                    tracing::warn!(error = %e, "cannot save the shaping state; budget counters are kept in memory");
                }
            }
        }
    }

    /// Notes the bytes sent so far, for the measured rate.
    fn sample_rate(&self) {
        let wan = self.wan_bytes.load(Ordering::Relaxed);
        let mut inner = self.lock();
        inner.samples.push_back((Instant::now(), wan));
        while inner.samples.len() > RATE_SAMPLES_COUNT {
            inner.samples.pop_front();
        }
    }

    /// Writes the state file now if the budget counters changed (at shutdown).
    pub fn save_if_dirty(&self) -> io::Result<()> {
        let snapshot = {
            let mut inner = self.lock();
            self.account(&mut inner);
            if !inner.dirty {
                return Ok(());
            }
            inner.dirty = false;
            inner.persisted.clone()
        };
        self.write_state(&snapshot)
    }

    fn write_state(&self, state: &PersistedState) -> io::Result<()> {
        match &self.state_path {
            Some(path) => state::save(path, state),
            None => Ok(()),
        }
    }

    /// Adds the bytes sent since the last call to the period counters.
    fn account(&self, inner: &mut Inner) {
        let total = self.wan_bytes.load(Ordering::Relaxed);
        let fresh = total - inner.accounted_bytes;
        if fresh == 0 {
            return;
        }
        inner.accounted_bytes = total;
        for usage in [&mut inner.persisted.daily, &mut inner.persisted.monthly]
            .into_iter()
            .flatten()
        {
            usage.used_bytes = usage.used_bytes.saturating_add(fresh);
        }
        inner.dirty = true;
    }

    /// Evaluates what applies now, sets the limiter and wakes waiting parts.
    fn evaluate(&self) {
        let now = self.clock.now();
        let here = now.to_zoned_datetime(self.config.timezone.clone());
        let kernel_synced = self.clock.kernel_synced();
        let mut inner = self.lock();
        self.account(&mut inner);
        roll_period(&mut inner, PeriodKind::Day, &here);
        roll_period(&mut inner, PeriodKind::Month, &here);
        if let Some(Override {
            until_unix: Some(until),
            ..
        }) = inner.persisted.override_
            && unix(now) >= until
        {
            inner.persisted.override_ = None;
            inner.dirty = true;
            tracing::info!("drain override expired; the schedule applies again");
        }
        let server_confirms = inner.server_skew.is_some_and(|(at, skew)| {
            at.elapsed() < Duration::from_secs(SERVER_SKEW_FRESH_SECS)
                && skew.abs() < SERVER_SKEW_SECS_MAX
        });
        let clock_synced = kernel_synced || server_confirms;
        let decision = self.decide(
            &inner,
            Moment {
                now,
                here: &here,
                clock_synced,
            },
        );
        match (decision.paused, decision.limit) {
            // Paused: parts in flight go on at the last rate (see the module doc).
            (true, _) => {}
            (false, Some(limit)) => self.set_limit(f64_from_u64(limit)),
            (false, None) => self.set_limit(f64::INFINITY),
        }
        inner.decision = decision;
        drop(inner);
        self.changed.notify_waiters();
    }

    #[allow(clippy::float_cmp)] // Both sides come from the same u64 conversions.
    fn set_limit(&self, bytes_per_sec: f64) {
        if self.limiter.speed_limit() != bytes_per_sec {
            self.limiter.set_speed_limit(bytes_per_sec);
        }
    }

    fn decide(&self, inner: &Inner, at: Moment<'_>) -> Decision {
        let (now, here, clock_synced) = (at.now, at.here, at.clock_synced);
        let zone = &self.config.timezone;
        let spent = |limit: Option<u64>, usage: &Option<PeriodUsage>| {
            let used = usage.as_ref().map_or(0, |u| u.used_bytes);
            limit.is_some_and(|limit| {
                used.saturating_add(inner.reserved_bytes)
                    .saturating_add(inner.blocked_len.unwrap_or(1))
                    > limit
            })
        };
        let base = self.decide_rate(inner, at);
        for (name, limit, usage, end) in [
            (
                "daily",
                self.config.daily_budget_bytes,
                &inner.persisted.daily,
                PeriodKind::Day.end(here),
            ),
            (
                "monthly",
                self.config.monthly_budget_bytes,
                &inner.persisted.monthly,
                PeriodKind::Month.end(here),
            ),
        ] {
            if spent(limit, usage) {
                return Decision {
                    paused: true,
                    paused_by_rate: base.paused_by_rate,
                    limit: None,
                    reason: format!("{name} budget spent until {}", when(end, now, zone)),
                    next_change: end,
                    clock_synced,
                };
            }
        }
        base
    }

    /// What the override, the clock fallback or the schedule say (budgets aside).
    fn decide_rate(&self, inner: &Inner, at: Moment<'_>) -> Decision {
        let (now, here, clock_synced) = (at.now, at.here, at.clock_synced);
        let zone = &self.config.timezone;
        if let Some(o) = inner.persisted.override_ {
            let until = o
                .until_unix
                .and_then(|s| i64::try_from(s).ok())
                .and_then(|s| Timestamp::from_second(s).ok());
            let reason = match until {
                Some(t) => format!("override until {}", when(Some(t), now, zone)),
                None => "override until `sftpgw drain resume`".to_owned(),
            };
            return Decision {
                paused: o.rate == Rate::Paused,
                paused_by_rate: o.rate == Rate::Paused,
                limit: o.rate.limit(),
                reason,
                next_change: until,
                clock_synced,
            };
        }
        if !clock_synced {
            let rate = self.config.clock_unknown_rate;
            return Decision {
                paused: rate == Rate::Paused,
                paused_by_rate: rate == Rate::Paused,
                limit: rate.limit(),
                reason: "clock unsynchronised: fallback rate".to_owned(),
                next_change: None,
                clock_synced,
            };
        }
        let scheduled = schedule::rate_at(&self.config.schedule, self.config.rate, here);
        let reason = match scheduled.window {
            Some(index) => format!("schedule {}", self.config.schedule[index].label),
            None => "configured rate".to_owned(),
        };
        Decision {
            paused: scheduled.rate == Rate::Paused,
            paused_by_rate: scheduled.rate == Rate::Paused,
            limit: scheduled.rate.limit(),
            reason,
            next_change: schedule::next_change(&self.config.schedule, self.config.rate, now, zone),
            clock_synced,
        }
    }

    /// Waits until a part (or single PUT) of `len` bytes may start: not paused, and within
    /// every budget counting the parts already admitted. Keep the admission while the part is
    /// being sent.
    pub async fn admit(self: &Arc<Self>, len: u64) -> Admission {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut inner = self.lock();
                let fits = |limit: Option<u64>, usage: &Option<PeriodUsage>| {
                    let used = usage.as_ref().map_or(0, |u| u.used_bytes);
                    let sent = self.wan_bytes.load(Ordering::Relaxed) - inner.accounted_bytes;
                    limit.is_none_or(|limit| {
                        used.saturating_add(sent)
                            .saturating_add(inner.reserved_bytes)
                            .saturating_add(len)
                            <= limit
                    })
                };
                let within_budget = fits(self.config.daily_budget_bytes, &inner.persisted.daily)
                    && fits(self.config.monthly_budget_bytes, &inner.persisted.monthly);
                if within_budget && !inner.decision.paused_by_rate {
                    inner.reserved_bytes += len;
                    inner.blocked_len = None;
                    return Admission {
                        shaper: self.clone(),
                        len,
                    };
                }
                if !within_budget && inner.blocked_len.is_none_or(|b| len < b) {
                    inner.blocked_len = Some(len);
                }
            }
            // Evaluations wake us; the timeout is only a backstop.
            let _ =
                tokio::time::timeout(Duration::from_secs(EVALUATE_INTERVAL_SECS), changed).await;
        }
    }

    /// The pacing hook of upload bodies: counts `len` bytes about to go to the network and
    /// returns how long to wait before handing them out.
    pub fn pace(&self, len: usize) -> Duration {
        self.wan_bytes
            .fetch_add(u64_from_usize(len), Ordering::Relaxed);
        self.limiter.consume_duration(len)
    }

    /// How many bytes a body should hand out at once at the current rate, at most `max`:
    /// about 1/[`PACE_CHUNKS_PER_SEC`] s of the rate.
    pub fn chunk_bytes(&self, max: usize) -> usize {
        let limit = self.limiter.speed_limit();
        if !limit.is_finite() {
            return max;
        }
        let chunk = usize_from_u64(u64_from_f64_saturating(
            limit / f64_from_u64(PACE_CHUNKS_PER_SEC),
        ));
        chunk.clamp(PACE_CHUNK_BYTES_MIN, max.max(PACE_CHUNK_BYTES_MIN))
    }

    /// Upload body bytes handed to the network since start (every attempt counts).
    pub fn wan_bytes_total(&self) -> u64 {
        self.wan_bytes.load(Ordering::Relaxed)
    }

    /// The S3 server's Date header minus our clock, from a probe: a small skew confirms the
    /// clock for [`SERVER_SKEW_FRESH_SECS`].
    pub fn note_server_clock_skew(&self, skew_secs: f64) {
        self.lock().server_skew = Some((Instant::now(), skew_secs));
        self.evaluate();
    }

    /// `sftpgw drain pause [--for D]`.
    pub fn pause(&self, duration: Option<Duration>) -> io::Result<ShapingStatus> {
        self.set_override(Some(Rate::Paused), duration)
    }

    /// `sftpgw drain resume`: ends the override; the schedule applies again.
    pub fn resume(&self) -> io::Result<ShapingStatus> {
        self.set_override(None, None)
    }

    /// `sftpgw drain rate R [--for D]`; `None` is unlimited.
    pub fn set_rate(
        &self,
        bytes_per_sec: Option<u64>,
        duration: Option<Duration>,
    ) -> io::Result<ShapingStatus> {
        let rate = bytes_per_sec.map_or(Rate::Unlimited, Rate::BytesPerSec);
        self.set_override(Some(rate), duration)
    }

    fn set_override(
        &self,
        rate: Option<Rate>,
        duration: Option<Duration>,
    ) -> io::Result<ShapingStatus> {
        let now = unix(self.clock.now());
        let wanted = rate.map(|rate| Override {
            rate,
            until_unix: duration.map(|d| now.saturating_add(d.as_secs().max(1))),
        });
        let mut next = {
            let mut inner = self.lock();
            self.account(&mut inner);
            inner.persisted.clone()
        };
        next.override_ = wanted;
        // Durable before it applies or is reported: the override survives a restart, and a
        // failed write changes nothing.
        self.write_state(&next)?;
        self.lock().persisted.override_ = wanted;
        tracing::info!(override = ?wanted, "drain override set");
        self.evaluate();
        Ok(self.status())
    }

    /// What `sftpgw status` shows of the shaper.
    pub fn status(&self) -> ShapingStatus {
        let inner = self.lock();
        let d = &inner.decision;
        let rate_bytes_per_sec = match (inner.samples.front(), inner.samples.back()) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
                u64_from_f64_saturating(f64_from_u64(b1 - b0) / (*t1 - *t0).as_secs_f64())
            }
            _ => 0,
        };
        let sent = self.wan_bytes.load(Ordering::Relaxed) - inner.accounted_bytes;
        let here = self
            .clock
            .now()
            .to_zoned_datetime(self.config.timezone.clone());
        let budget = |limit: Option<u64>, usage: &Option<PeriodUsage>, kind: PeriodKind| {
            limit.map(|limit_bytes| BudgetStatus {
                limit_bytes,
                used_bytes: usage.as_ref().map_or(0, |u| u.used_bytes) + sent,
                resets_unix: kind.end(&here).map_or(0, unix),
            })
        };
        ShapingStatus {
            paused: d.paused,
            limit_bytes_per_sec: if d.paused { None } else { d.limit },
            rate_bytes_per_sec,
            reason: d.reason.clone(),
            override_active: inner.persisted.override_.is_some(),
            override_until_unix: inner.persisted.override_.and_then(|o| o.until_unix),
            next_change_unix: d.next_change.map(unix),
            clock_synced: d.clock_synced,
            daily_budget: budget(
                self.config.daily_budget_bytes,
                &inner.persisted.daily,
                PeriodKind::Day,
            ),
            monthly_budget: budget(
                self.config.monthly_budget_bytes,
                &inner.persisted.monthly,
                PeriodKind::Month,
            ),
        }
    }
}

/// One line for `sftpgw drain ...`: what applies now and why.
pub fn summary(status: &ShapingStatus) -> String {
    let what = if status.paused {
        "drain paused".to_owned()
    } else {
        match status.limit_bytes_per_sec {
            Some(limit) => format!("drain limited to {}", Rate::BytesPerSec(limit)),
            None => "drain unlimited".to_owned(),
        }
    };
    format!("{what} ({})", status.reason)
}

#[cfg(test)]
mod tests;
