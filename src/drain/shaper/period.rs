//! Budget periods (a local day, a calendar month) and how times are shown to people, in the
//! schedule's zone.
//!
//! Pure calendar arithmetic over jiff; uses nothing of the crate but its parent's types.

use jiff::{Timestamp, ZonedDateTime};

use super::Inner;
use super::state::PeriodUsage;

/// A budget period.
#[derive(Debug, Clone, Copy)]
pub(super) enum PeriodKind {
    Day,
    Month,
}

impl PeriodKind {
    /// The period holding `here`, as stored in the state file.
    pub(super) fn key(self, here: &ZonedDateTime) -> String {
        match self {
            PeriodKind::Day => here.date().to_string(),
            PeriodKind::Month => format!("{:04}-{:02}", here.year(), here.month()),
        }
    }

    /// When the period holding `here` ends (local midnight).
    pub(super) fn end(self, here: &ZonedDateTime) -> Option<Timestamp> {
        let start = match self {
            PeriodKind::Day => here.tomorrow().ok()?,
            PeriodKind::Month => here
                .first_of_month()
                .ok()?
                .checked_add(jiff::Span::new().months(1))
                .ok()?,
        };
        start.start_of_day().ok().map(|z| z.timestamp())
    }
}

/// Starts a new count when the period of `kind` changed (or none was kept).
pub(super) fn roll_period(inner: &mut Inner, kind: PeriodKind, here: &ZonedDateTime) {
    let key = kind.key(here);
    let usage = match kind {
        PeriodKind::Day => &mut inner.persisted.daily,
        PeriodKind::Month => &mut inner.persisted.monthly,
    };
    if usage.as_ref().is_none_or(|u| u.period != key) {
        *usage = Some(PeriodUsage {
            period: key,
            used_bytes: 0,
        });
        inner.dirty = true;
        inner.blocked_len = None;
    }
}

pub(super) fn unix(t: Timestamp) -> u64 {
    u64::try_from(t.as_second()).unwrap_or(0)
}

/// `t` for people, in `zone`: "14:30" within a day of `now`, else "2026-12-01 00:00".
pub(super) fn when(t: Option<Timestamp>, now: Timestamp, zone: &jiff::tz::TimeZone) -> String {
    let Some(t) = t else {
        return "unknown".to_owned();
    };
    let local = t.to_zoned_datetime(zone.clone());
    if t.as_second() - now.as_second() < 24 * 60 * 60 {
        local.strftime("%H:%M").to_string()
    } else {
        local.strftime("%Y-%m-%d %H:%M").to_string()
    }
}
