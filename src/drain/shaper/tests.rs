//! The shaper with a hand-set wall clock: admission, override, budgets, clock trust, pacing.
//!
//! Tests only: they may use anything of the shaper, and nothing outside the drain but
//! `config`.

use std::time::Duration;

use jiff::civil::DateTime;
use jiff::tz::TimeZone;

use super::clock::ManualClock;
use super::*;
use crate::config::{Days, Window};

const MIB: u64 = 1024 * 1024;

fn berlin(text: &str) -> Timestamp {
    let civil: DateTime = text.parse().unwrap();
    civil.in_tz("Europe/Berlin").unwrap().timestamp()
}

fn config(rate: Rate) -> ShapingConfig {
    ShapingConfig {
        rate,
        schedule: Vec::new(),
        timezone: TimeZone::get("Europe/Berlin").unwrap(),
        timezone_name: "Europe/Berlin".into(),
        clock_unknown_rate: rate,
        daily_budget_bytes: None,
        monthly_budget_bytes: None,
    }
}

fn shaper(config: ShapingConfig, clock: &Arc<ManualClock>, path: Option<PathBuf>) -> Arc<Shaper> {
    Shaper::with_clock(config, path, clock.clone())
}

/// Whether `admit(len)` gets through within `wait`.
async fn admitted_within(shaper: &Arc<Shaper>, len: u64, wait: Duration) -> Option<Admission> {
    tokio::time::timeout(wait, shaper.admit(len)).await.ok()
}

#[tokio::test]
async fn pause_blocks_new_parts_at_once_and_resume_releases_them() {
    let clock = Arc::new(ManualClock::new(berlin("2026-11-27T12:00"), true));
    let s = shaper(config(Rate::Unlimited), &clock, None);
    assert!(
        admitted_within(&s, 10, Duration::from_millis(50))
            .await
            .is_some()
    );
    let status = s.pause(None).unwrap();
    assert!(status.paused && status.override_active);
    assert_eq!(status.override_until_unix, None);
    let waiting = tokio::spawn({
        let s = s.clone();
        async move { s.admit(10).await.len }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a part started while paused");
    let resumed_at = std::time::Instant::now();
    let status = s.resume().unwrap();
    assert!(!status.paused && !status.override_active);
    assert_eq!(waiting.await.unwrap(), 10);
    assert!(
        resumed_at.elapsed() < Duration::from_millis(200),
        "resume woke the waiting part late: {:?}",
        resumed_at.elapsed()
    );
}

#[tokio::test]
async fn a_spent_daily_budget_pauses_until_local_midnight_and_says_so() {
    let clock = Arc::new(ManualClock::new(berlin("2026-11-27T15:00"), true));
    let mut cfg = config(Rate::Unlimited);
    cfg.daily_budget_bytes = Some(10 * MIB);
    let s = shaper(cfg, &clock, None);
    let _ = s.pace(usize::try_from(8 * MIB).unwrap());
    s.evaluate();
    assert!(!s.status().paused, "2 MiB are left");
    // 8 + 3 MiB would overrun: that part does not start.
    assert!(
        admitted_within(&s, 3 * MIB, Duration::from_millis(100))
            .await
            .is_none()
    );
    s.evaluate();
    let status = s.status();
    assert!(status.paused, "{status:?}");
    assert_eq!(status.reason, "daily budget spent until 00:00");
    let budget = status.daily_budget.unwrap();
    assert_eq!((budget.limit_bytes, budget.used_bytes), (10 * MIB, 8 * MIB));
    assert_eq!(budget.resets_unix, unix(berlin("2026-11-28T00:00")));
    assert_eq!(status.next_change_unix, Some(budget.resets_unix));
    // Exactly the rest fits; then nothing more, counting the admitted part.
    let last = admitted_within(&s, 2 * MIB, Duration::from_millis(100)).await;
    assert!(last.is_some());
    assert!(
        admitted_within(&s, 1, Duration::from_millis(100))
            .await
            .is_none()
    );
    drop(last);
    // Next day, local time: a new budget.
    clock.set(berlin("2026-11-28T00:00:01"));
    s.evaluate();
    assert!(!s.status().paused);
    assert_eq!(s.status().daily_budget.unwrap().used_bytes, 0);
    assert!(
        admitted_within(&s, 3 * MIB, Duration::from_millis(100))
            .await
            .is_some()
    );
}

#[tokio::test]
async fn a_monthly_budget_resets_on_the_first_of_the_next_month() {
    let clock = Arc::new(ManualClock::new(berlin("2026-11-30T23:00"), true));
    let mut cfg = config(Rate::Unlimited);
    cfg.monthly_budget_bytes = Some(MIB);
    let s = shaper(cfg, &clock, None);
    let _ = s.pace(usize::try_from(MIB).unwrap());
    s.evaluate();
    let status = s.status();
    assert_eq!(status.reason, "monthly budget spent until 00:00");
    assert_eq!(
        status.monthly_budget.unwrap().resets_unix,
        unix(berlin("2026-12-01T00:00"))
    );
    clock.set(berlin("2026-12-01T00:00"));
    s.evaluate();
    assert!(!s.status().paused);
}

#[tokio::test]
async fn an_override_persists_with_its_expiry_and_then_expires() {
    let dir = tempfile::tempdir().unwrap();
    let path = state::path_in(dir.path());
    let clock = Arc::new(ManualClock::new(berlin("2026-11-27T12:00"), true));
    let s = shaper(config(Rate::Unlimited), &clock, Some(path.clone()));
    let status = s
        .set_rate(Some(5 * MIB), Some(Duration::from_secs(60)))
        .unwrap();
    assert_eq!(status.limit_bytes_per_sec, Some(5 * MIB));
    assert_eq!(status.reason, "override until 12:01");
    drop(s);
    // A restart: the override comes back from the state file.
    let s = shaper(config(Rate::Unlimited), &clock, Some(path));
    let status = s.status();
    assert!(status.override_active);
    assert_eq!(status.limit_bytes_per_sec, Some(5 * MIB));
    assert_eq!(
        status.override_until_unix,
        Some(unix(berlin("2026-11-27T12:01")))
    );
    clock.set(berlin("2026-11-27T12:01"));
    s.evaluate();
    let status = s.status();
    assert!(!status.override_active);
    assert_eq!(status.limit_bytes_per_sec, None);
    assert_eq!(status.reason, "configured rate");
}

#[tokio::test]
async fn an_unsynchronised_clock_uses_the_fallback_until_the_server_confirms_it() {
    let clock = Arc::new(ManualClock::new(berlin("2026-11-27T12:00"), false));
    let mut cfg = config(Rate::Unlimited);
    cfg.clock_unknown_rate = Rate::BytesPerSec(MIB);
    let s = shaper(cfg, &clock, None);
    let status = s.status();
    assert!(!status.clock_synced);
    assert_eq!(status.limit_bytes_per_sec, Some(MIB));
    assert_eq!(status.reason, "clock unsynchronised: fallback rate");
    s.note_server_clock_skew(120.0);
    assert!(
        !s.status().clock_synced,
        "two minutes off is not confirmation"
    );
    s.note_server_clock_skew(-3.0);
    let status = s.status();
    assert!(status.clock_synced);
    assert_eq!(status.limit_bytes_per_sec, None);
    clock.set_synced(true);
    s.note_server_clock_skew(500.0);
    assert!(s.status().clock_synced, "the kernel's NTP state suffices");
}

#[tokio::test]
async fn the_schedule_window_in_force_sets_the_limit_and_the_reason() {
    let clock = Arc::new(ManualClock::new(berlin("2026-11-27T09:00"), true));
    let mut cfg = config(Rate::Unlimited);
    cfg.schedule = vec![Window {
        days: Days::parse("mon-fri").unwrap(),
        label: "mon-fri 08:00-18:00".into(),
        from_minute: 8 * 60,
        to_minute: 18 * 60,
        rate: Rate::BytesPerSec(32 * 1024),
    }];
    let s = shaper(cfg, &clock, None);
    let status = s.status();
    assert_eq!(status.limit_bytes_per_sec, Some(32 * 1024));
    assert_eq!(status.reason, "schedule mon-fri 08:00-18:00");
    assert_eq!(
        status.next_change_unix,
        Some(unix(berlin("2026-11-27T18:00")))
    );
    assert_eq!(s.chunk_bytes(128 * 1024), 2 * 1024, "1/16 s of 32 KiB/s");
    clock.set(berlin("2026-11-27T18:00"));
    s.evaluate();
    assert_eq!(s.status().limit_bytes_per_sec, None);
    assert_eq!(s.chunk_bytes(128 * 1024), 128 * 1024);
}

#[tokio::test]
async fn a_paused_window_keeps_the_last_rate_for_parts_in_flight() {
    let clock = Arc::new(ManualClock::new(berlin("2026-11-27T12:00"), true));
    let s = shaper(config(Rate::BytesPerSec(64 * 1024)), &clock, None);
    s.pause(None).unwrap();
    assert_eq!(
        s.status().limit_bytes_per_sec,
        None,
        "paused shows no limit"
    );
    // Bodies already sending keep pacing at 64 KiB/s: never stopped, never unlimited.
    assert_eq!(s.chunk_bytes(128 * 1024), 4 * 1024);
    #[allow(clippy::float_cmp)]
    {
        assert_eq!(s.limiter.speed_limit(), 64.0 * 1024.0);
    }
}

#[tokio::test]
async fn pacing_holds_the_rate_and_counts_wan_bytes() {
    let clock = Arc::new(ManualClock::new(berlin("2026-11-27T12:00"), true));
    let s = shaper(config(Rate::BytesPerSec(MIB)), &clock, None);
    let started = std::time::Instant::now();
    let total = 2 * MIB;
    let mut sent = 0;
    while sent < total {
        let chunk = s.chunk_bytes(128 * 1024);
        tokio::time::sleep(s.pace(chunk)).await;
        sent += chunk as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    // 2 MiB at 1 MiB/s, less the bucket's first 100 ms burst.
    assert!((1.75..2.3).contains(&secs), "took {secs} s");
    assert_eq!(s.wan_bytes_total(), sent);
}
