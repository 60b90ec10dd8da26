//! `[shaping]`: the WAN rate of the drain, its weekly schedule, the time zone it is read in,
//! the fallback while the clock is not trusted, and byte budgets per day and month.
//!
//! This module only parses and validates; `drain::shaper` evaluates the schedule. It uses
//! nothing of the drain: the drain reads these types, never the reverse.

use std::fmt;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::values::{Budget, RateValue, TimeOfDay, ZoneName, display_bytes};
use super::{ConfigError, Source};

/// The slowest rate that can be set: a paced body hands out at least
/// `PACE_CHUNK_BYTES_MIN` per chunk, and must not wait long between chunks (see the shaper).
pub const RATE_BYTES_PER_SEC_MIN: u64 = 1024;
/// Minutes in a day; a window's `to` may be this (`"24:00"`).
pub const DAY_MINUTES: u16 = 24 * 60;

/// A WAN rate: unlimited, paused (no new part starts), or a limit in bytes per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rate {
    /// No limit.
    Unlimited,
    /// No new part starts; parts in flight finish.
    Paused,
    /// At most this many bytes per second, at least [`RATE_BYTES_PER_SEC_MIN`].
    BytesPerSec(u64),
}

impl Rate {
    /// `"unlimited"`, `"paused"`, or a size per second like `"10MiB/s"`, `"500 KiB/s"`.
    pub fn parse(text: &str) -> Result<Rate, String> {
        let trimmed = text.trim();
        match trimmed.to_ascii_lowercase().as_str() {
            "unlimited" => return Ok(Rate::Unlimited),
            "paused" => return Ok(Rate::Paused),
            _ => {}
        }
        let bad = || {
            format!(
                "{text:?} is not a rate: use \"unlimited\", \"paused\" or a size per second like \"10MiB/s\""
            )
        };
        let size = trimmed.strip_suffix("/s").ok_or_else(bad)?.trim_end();
        let bytes = size
            .parse::<bytesize::ByteSize>()
            .map_err(|_| bad())?
            .as_u64();
        if bytes < RATE_BYTES_PER_SEC_MIN {
            return Err(format!(
                "{text:?} is below the slowest rate of {}/s (use \"paused\" to stop the drain)",
                display_bytes(RATE_BYTES_PER_SEC_MIN)
            ));
        }
        Ok(Rate::BytesPerSec(bytes))
    }

    /// The limit in bytes per second; `None` when unlimited or paused.
    pub fn limit(self) -> Option<u64> {
        match self {
            Rate::BytesPerSec(bytes) => Some(bytes),
            Rate::Unlimited | Rate::Paused => None,
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Unlimited => f.write_str("unlimited"),
            Rate::Paused => f.write_str("paused"),
            Rate::BytesPerSec(bytes) => write!(f, "{}/s", display_bytes(*bytes)),
        }
    }
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A set of weekdays; bit 0 is Monday.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Days(u8);

impl Days {
    /// Every day of the week.
    pub const ALL: Days = Days(0x7f);

    /// `"mon-fri"`, `"sat,sun"`, `"mon"`, `"mon-wed,fri"`, `"fri-mon"` (wraps over Sunday).
    pub fn parse(text: &str) -> Result<Days, String> {
        let day = |name: &str| {
            let name = name.trim().to_ascii_lowercase();
            DAY_NAMES.iter().position(|d| name == *d).ok_or_else(|| {
                format!(
                    "{name:?} in {text:?} is not a day: use mon, tue, wed, thu, fri, sat, sun, \
                         ranges like \"mon-fri\" or lists like \"sat,sun\""
                )
            })
        };
        let mut bits = 0u8;
        for item in text.split(',') {
            match item.split_once('-') {
                Some((first, last)) => {
                    let (first, last) = (day(first)?, day(last)?);
                    let mut d = first;
                    loop {
                        bits |= 1 << d;
                        if d == last {
                            break;
                        }
                        d = (d + 1) % 7;
                    }
                }
                None => bits |= 1 << day(item)?,
            }
        }
        Ok(Days(bits))
    }

    /// Whether the set holds the day `monday_zero` days after Monday (0..=6).
    pub fn contains(self, monday_zero: u8) -> bool {
        monday_zero < 7 && self.0 & (1 << monday_zero) != 0
    }
}

/// One schedule entry: on `days`, from `from_minute` to `to_minute` (minutes after local
/// midnight), the drain runs at `rate`. A window with `to_minute <= from_minute` crosses
/// midnight: it starts on one of `days` and ends the next morning.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// The weekdays the window starts on.
    pub days: Days,
    /// As written, for status ("schedule mon-fri 08:00-18:00").
    pub label: String,
    /// Minutes after local midnight the window opens (0..[`DAY_MINUTES`]).
    pub from_minute: u16,
    /// Minutes after local midnight it closes, exclusive (at most [`DAY_MINUTES`]).
    pub to_minute: u16,
    /// The drain's rate while the window holds.
    pub rate: Rate,
}

impl Window {
    /// Whether the window holds the local time `minute` of the day `monday_zero`.
    pub fn contains(&self, monday_zero: u8, minute: u16) -> bool {
        if self.from_minute < self.to_minute {
            self.days.contains(monday_zero) && (self.from_minute..self.to_minute).contains(&minute)
        } else {
            let yesterday = (monday_zero + 6) % 7;
            (self.days.contains(monday_zero) && minute >= self.from_minute)
                || (self.days.contains(yesterday) && minute < self.to_minute)
        }
    }
}

/// `[shaping]`, validated.
#[derive(Debug, Clone)]
pub struct ShapingConfig {
    /// The rate outside every schedule window.
    pub rate: Rate,
    /// The first window that holds the local time wins.
    pub schedule: Vec<Window>,
    /// The zone the schedule and the budget periods are read in.
    pub timezone: jiff::tz::TimeZone,
    /// Its name as configured, or "local" / "UTC".
    pub timezone_name: String,
    /// The rate while the clock is not trusted.
    pub clock_unknown_rate: Rate,
    /// Bytes the drain may send per local day (`shaping.daily_budget`; `None`: no budget).
    pub daily_budget_bytes: Option<u64>,
    /// Bytes it may send per calendar month (`shaping.monthly_budget`; `None`: no budget).
    pub monthly_budget_bytes: Option<u64>,
}

impl Default for ShapingConfig {
    fn default() -> Self {
        let (timezone, timezone_name) = system_zone();
        ShapingConfig {
            rate: Rate::Unlimited,
            schedule: Vec::new(),
            timezone,
            timezone_name,
            clock_unknown_rate: Rate::Unlimited,
            daily_budget_bytes: None,
            monthly_budget_bytes: None,
        }
    }
}

/// The box's local zone (/etc/localtime), UTC if it has none.
fn system_zone() -> (jiff::tz::TimeZone, String) {
    match jiff::tz::TimeZone::try_system() {
        Ok(zone) => {
            let name = zone.iana_name().unwrap_or("local").to_owned();
            (zone, name)
        }
        Err(_) => (jiff::tz::TimeZone::UTC, "UTC".to_owned()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShaping {
    rate: Option<RateValue>,
    #[serde(default)]
    schedule: Vec<Spanned<RawWindow>>,
    timezone: Option<ZoneName>,
    clock_unknown_rate: Option<RateValue>,
    daily_budget: Option<Spanned<Budget>>,
    monthly_budget: Option<Spanned<Budget>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    days: Spanned<String>,
    from: Option<TimeOfDay>,
    to: Option<TimeOfDay>,
    rate: RateValue,
}

impl RawShaping {
    /// `part_size` is checked against the budgets: a part never starts unless it fits.
    pub(super) fn validate(
        self,
        source: &Source<'_>,
        part_size: u64,
    ) -> Result<ShapingConfig, ConfigError> {
        let rate = self.rate.map_or(Rate::Unlimited, |r| r.0);
        let mut schedule = Vec::with_capacity(self.schedule.len());
        for (index, window) in self.schedule.into_iter().enumerate() {
            let start = window.span().start;
            let window = window.into_inner();
            let days_text = window.days.get_ref().clone();
            let days = Days::parse(&days_text).map_err(|message| {
                source.invalid(
                    window.days.span().start,
                    &format!("shaping.schedule[{index}].days"),
                    message,
                )
            })?;
            let from_minute = window.from.map_or(0, |t| t.0);
            let to_minute = window.to.map_or(DAY_MINUTES, |t| t.0);
            if from_minute == to_minute || from_minute == DAY_MINUTES {
                return Err(source.invalid(
                    start,
                    &format!("shaping.schedule[{index}]"),
                    "the window is empty: `from` must differ from `to` (omit both for the whole day)",
                ));
            }
            let hhmm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
            let label = if from_minute == 0 && to_minute == DAY_MINUTES {
                days_text.trim().to_owned()
            } else {
                format!(
                    "{} {}-{}",
                    days_text.trim(),
                    hhmm(from_minute),
                    hhmm(to_minute)
                )
            };
            schedule.push(Window {
                days,
                label,
                from_minute,
                to_minute,
                rate: window.rate.0,
            });
        }
        let (timezone, timezone_name) = match self.timezone {
            Some(ZoneName((name, zone))) => (zone, name),
            None => system_zone(),
        };
        for (key, budget) in [
            ("shaping.daily_budget", &self.daily_budget),
            ("shaping.monthly_budget", &self.monthly_budget),
        ] {
            if let Some(budget) = budget
                && budget.get_ref().0 < part_size
            {
                return Err(source.invalid(
                    budget.span().start,
                    key,
                    format!(
                        "{} is below s3.part_size ({}): no part could ever start",
                        display_bytes(budget.get_ref().0),
                        display_bytes(part_size)
                    ),
                ));
            }
        }
        Ok(ShapingConfig {
            rate,
            schedule,
            timezone,
            timezone_name,
            clock_unknown_rate: self.clock_unknown_rate.map_or(rate, |r| r.0),
            daily_budget_bytes: self.daily_budget.map(|b| b.into_inner().0),
            monthly_budget_bytes: self.monthly_budget.map(|b| b.into_inner().0),
        })
    }
}
