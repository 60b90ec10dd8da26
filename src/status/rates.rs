//! Moving averages of byte counters (ingest, drain) over the last minute, from one sample per
//! second: the rate is the counter's growth between the oldest and newest sample.
//!
//! Counting between samples rather than averaging instantaneous rates keeps the result exact
//! for bursty counters such as the drain's, which grows a whole part at a time.
//!
//! Pure arithmetic over the samples the gateway takes: it uses nothing of the crate but `num`, and
//! reads no clock of its own.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::num::{f64_from_u64, u64_from_f64_saturating, usize_from_u64};
/// Span of the moving average.
pub const RATE_WINDOW_SECS: u64 = 60;
/// How often the gateway samples its counters.
pub const RATE_SAMPLE_INTERVAL_SECS: u64 = 1;
/// Samples kept: one window's worth plus the one that opens it.
const SAMPLES_COUNT_MAX: usize = usize_from_u64(RATE_WINDOW_SECS / RATE_SAMPLE_INTERVAL_SECS) + 1;

const _: () =
    assert!(RATE_SAMPLE_INTERVAL_SECS > 0 && RATE_SAMPLE_INTERVAL_SECS < RATE_WINDOW_SECS);

/// One counter's recent history.
#[derive(Debug, Default)]
pub struct RateMeter {
    samples: VecDeque<(Instant, u64)>,
}

impl RateMeter {
    /// Records the counter's value `total` at `at`; older samples beyond the window go.
    pub fn sample(&mut self, at: Instant, total: u64) {
        if self.samples.len() == SAMPLES_COUNT_MAX {
            self.samples.pop_front();
        }
        self.samples.push_back((at, total));
        let window = Duration::from_secs(RATE_WINDOW_SECS);
        while let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) {
            if last.0.duration_since(first.0) > window && self.samples.len() > 2 {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// Bytes per second over the samples held; 0 with fewer than two.
    pub fn bytes_per_sec(&self) -> u64 {
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else {
            return 0;
        };
        let secs = last.0.duration_since(first.0).as_secs_f64();
        if secs <= 0.0 {
            return 0;
        }
        // Whole bytes per second, rounded down: a display and a forecast, not an account.
        u64_from_f64_saturating(f64_from_u64(last.1.saturating_sub(first.1)) / secs)
    }

    /// Seconds the average spans now (less than the window just after start).
    pub fn span_secs(&self) -> u64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(first), Some(last)) => last.0.duration_since(first.0).as_secs(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_the_growth_over_the_last_minute() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        assert_eq!(m.bytes_per_sec(), 0);
        // 1000 B/s for two minutes, then 10 000 B/s for a minute: only the last minute counts.
        let mut total = 0;
        for s in 0..=180u64 {
            if s > 0 {
                total += if s <= 120 { 1000 } else { 10_000 };
            }
            m.sample(t0 + Duration::from_secs(s), total);
        }
        assert_eq!(m.bytes_per_sec(), 10_000);
        assert_eq!(m.span_secs(), RATE_WINDOW_SECS);
    }

    #[test]
    fn a_part_sized_burst_is_averaged_over_the_window() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        m.sample(t0, 0);
        m.sample(t0 + Duration::from_secs(30), 0);
        m.sample(t0 + Duration::from_secs(60), 60 << 20);
        assert_eq!(m.bytes_per_sec(), 1 << 20);
    }
}
