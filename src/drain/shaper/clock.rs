//! Where the shaper gets its time: the wall clock and whether the kernel trusts it (a trait, so
//! that tests set both), and a Tokio-timed clock for the `async-speed-limit` limiter (so that
//! the limiter runs on the runtime's timer, and tests can pause time).
//!
//! Owns time for the shaper; uses nothing of the crate.

use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::Timestamp;

/// The wall clock, as the shaper sees it.
pub trait WallClock: Send + Sync {
    /// The current wall time (which may be wrong: see `kernel_synced`).
    fn now(&self) -> Timestamp;
    /// Whether the kernel says the clock is synchronised (NTP).
    fn kernel_synced(&self) -> bool;
}

/// The system clock; synchronised when the kernel's NTP state has no `STA_UNSYNC`
/// (`adjtimex(2)` with no modes only reads it).
#[derive(Debug, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn kernel_synced(&self) -> bool {
        use nix::libc;
        // SAFETY: `timex` is plain data that adjtimex fills; modes 0 only reads the state.
        let mut timex: libc::timex = unsafe { std::mem::zeroed() };
        // SAFETY: a valid pointer to a `timex` owned by this frame.
        let state = unsafe { libc::adjtimex(&mut timex) };
        state >= 0 && state != libc::TIME_ERROR && timex.status & libc::STA_UNSYNC == 0
    }
}

/// A clock that tests set by hand.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Timestamp>,
    synced: AtomicBool,
}

impl ManualClock {
    /// A clock stopped at `now`, synchronised or not.
    pub fn new(now: Timestamp, synced: bool) -> Self {
        Self {
            now: Mutex::new(now),
            synced: AtomicBool::new(synced),
        }
    }

    /// Moves the clock to `now` (backwards too).
    pub fn set(&self, now: Timestamp) {
        *self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = now;
    }

    /// Sets whether the kernel would call the clock synchronised.
    pub fn set_synced(&self, synced: bool) {
        self.synced.store(synced, Ordering::Relaxed);
    }
}

impl WallClock for ManualClock {
    fn now(&self) -> Timestamp {
        *self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn kernel_synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }
}

/// The limiter's clock: Tokio's monotonic time and timer.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl async_speed_limit::clock::Clock for TokioClock {
    type Instant = tokio::time::Instant;
    type Delay = Pin<Box<tokio::time::Sleep>>;

    fn now(&self) -> Self::Instant {
        tokio::time::Instant::now()
    }

    fn sleep(&self, dur: Duration) -> Self::Delay {
        Box::pin(tokio::time::sleep(dur))
    }
}
