//! The weekly schedule, evaluated: which rate applies at a moment, by which window, and when
//! that changes next. Pure functions of the configuration and a zoned time, so that tests can
//! try any moment in any zone.
//!
//! Owns no state; may use `config`'s schedule types only.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ZonedDateTime};

use crate::config::{DAY_MINUTES, Rate, Window};

/// Days searched ahead for the next change: every window repeats within a week, and one more
/// day covers a window that crosses midnight.
const NEXT_CHANGE_SEARCH_DAYS: i64 = 8;

/// What the schedule says at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduled {
    /// The rate in force.
    pub rate: Rate,
    /// Index of the window in force, `None` for the default rate.
    pub window: Option<usize>,
}

/// The rate at `at`: the first window that holds its local weekday and time, else `default`.
pub fn rate_at(schedule: &[Window], default: Rate, at: &ZonedDateTime) -> Scheduled {
    let weekday = u8::try_from(at.weekday().to_monday_zero_offset()).unwrap_or(0);
    let minute = u16::try_from(i32::from(at.hour()) * 60 + i32::from(at.minute())).unwrap_or(0);
    schedule
        .iter()
        .position(|w| w.contains(weekday, minute))
        .map_or(
            Scheduled {
                rate: default,
                window: None,
            },
            |index| Scheduled {
                rate: schedule[index].rate,
                window: Some(index),
            },
        )
}

/// The first moment after `now` at which [`rate_at`] gives another answer, if any within
/// [`NEXT_CHANGE_SEARCH_DAYS`]. Only window edges can change it, so only they are tried (a
/// local time that does not exist, in a DST gap, maps to the moment after the gap).
pub fn next_change(
    schedule: &[Window],
    default: Rate,
    now: Timestamp,
    zone: &TimeZone,
) -> Option<Timestamp> {
    let here = now.to_zoned_datetime(zone.clone());
    let current = rate_at(schedule, default, &here);
    let today = here.date();
    let mut edges: Vec<Timestamp> = Vec::new();
    for day in 0..=NEXT_CHANGE_SEARCH_DAYS {
        let Ok(date) = today.checked_add(jiff::Span::new().days(day)) else {
            continue;
        };
        for window in schedule {
            for minute in [window.from_minute, window.to_minute] {
                if let Some(edge) = local_moment(date, minute, zone)
                    && edge > now
                {
                    edges.push(edge);
                }
            }
        }
    }
    edges.sort();
    edges.dedup();
    edges
        .into_iter()
        .find(|edge| rate_at(schedule, default, &edge.to_zoned_datetime(zone.clone())) != current)
}

/// `minute` after midnight of `date` in `zone` (24:00 is the next midnight).
fn local_moment(date: Date, minute: u16, zone: &TimeZone) -> Option<Timestamp> {
    let (date, minute) = if minute >= DAY_MINUTES {
        (date.tomorrow().ok()?, minute - DAY_MINUTES)
    } else {
        (date, minute)
    };
    let hour = i8::try_from(minute / 60).ok()?;
    let minute = i8::try_from(minute % 60).ok()?;
    let civil: DateTime = date.at(hour, minute, 0, 0);
    civil
        .to_zoned_datetime(zone.clone())
        .ok()
        .map(|z| z.timestamp())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::config::Days;

    fn window(days: &str, from: u16, to: u16, rate: Rate) -> Window {
        Window {
            days: Days::parse(days).unwrap(),
            label: days.to_owned(),
            from_minute: from,
            to_minute: to,
            rate,
        }
    }

    const MIB: u64 = 1024 * 1024;

    fn office() -> Vec<Window> {
        vec![
            window("mon-fri", 8 * 60, 18 * 60, Rate::BytesPerSec(2 * MIB)),
            window("sat,sun", 0, DAY_MINUTES, Rate::Unlimited),
        ]
    }

    fn at(zone: &str, text: &str) -> ZonedDateTime {
        let civil: DateTime = text.parse().unwrap();
        civil.in_tz(zone).unwrap()
    }

    // 2026-11-23 is a Monday.
    #[test]
    fn weekday_windows_apply_by_local_day_and_time() {
        let s = office();
        let default = Rate::BytesPerSec(10 * MIB);
        let rate = |t: &str| rate_at(&s, default, &at("UTC", t)).rate;
        assert_eq!(rate("2026-11-23T08:00"), Rate::BytesPerSec(2 * MIB));
        assert_eq!(rate("2026-11-23T07:59"), default);
        assert_eq!(rate("2026-11-27T17:59"), Rate::BytesPerSec(2 * MIB));
        assert_eq!(rate("2026-11-27T18:00"), default, "to is exclusive");
        assert_eq!(rate("2026-11-28T12:00"), Rate::Unlimited, "saturday");
        assert_eq!(rate("2026-11-29T23:59"), Rate::Unlimited, "sunday");
    }

    #[test]
    fn a_window_crossing_midnight_holds_the_next_morning() {
        let s = vec![window("fri", 22 * 60, 6 * 60, Rate::Paused)];
        let rate = |t: &str| rate_at(&s, Rate::Unlimited, &at("UTC", t)).rate;
        assert_eq!(rate("2026-11-27T22:00"), Rate::Paused, "friday night");
        assert_eq!(rate("2026-11-28T05:59"), Rate::Paused, "saturday morning");
        assert_eq!(rate("2026-11-28T06:00"), Rate::Unlimited);
        assert_eq!(
            rate("2026-11-27T05:00"),
            Rate::Unlimited,
            "thursday night is not in it"
        );
        assert_eq!(
            rate("2026-11-28T22:30"),
            Rate::Unlimited,
            "saturday is not in it"
        );
    }

    #[test]
    fn the_first_matching_window_wins() {
        let s = vec![
            window("mon", 9 * 60, 10 * 60, Rate::Paused),
            window("mon-fri", 0, DAY_MINUTES, Rate::BytesPerSec(MIB)),
        ];
        let got = rate_at(&s, Rate::Unlimited, &at("UTC", "2026-11-23T09:30"));
        assert_eq!(
            got,
            Scheduled {
                rate: Rate::Paused,
                window: Some(0)
            }
        );
        let got = rate_at(&s, Rate::Unlimited, &at("UTC", "2026-11-23T10:00"));
        assert_eq!(got.window, Some(1));
    }

    #[test]
    fn windows_are_read_in_the_configured_zone() {
        let s = office();
        // 07:30 UTC is 08:30 in Berlin (CET, UTC+1, in November).
        let instant = at("UTC", "2026-11-23T07:30").timestamp();
        let berlin = instant.to_zoned_datetime(TimeZone::get("Europe/Berlin").unwrap());
        let utc = instant.to_zoned_datetime(TimeZone::UTC);
        assert_eq!(rate_at(&s, Rate::Unlimited, &berlin).window, Some(0));
        assert_eq!(rate_at(&s, Rate::Unlimited, &utc).window, None);
    }

    #[test]
    fn next_change_is_the_next_window_edge_that_changes_the_rate() {
        let s = office();
        let zone = TimeZone::get("Europe/Berlin").unwrap();
        let now = at("Europe/Berlin", "2026-11-23T12:00").timestamp();
        let next = next_change(&s, Rate::Unlimited, now, &zone).unwrap();
        assert_eq!(next, at("Europe/Berlin", "2026-11-23T18:00").timestamp());
        // Friday evening: the default rate (unlimited) and Saturday's window (unlimited) are
        // the same rate but another window, so Saturday 00:00 is a change too.
        let now = at("Europe/Berlin", "2026-11-27T19:00").timestamp();
        let next = next_change(&s, Rate::Unlimited, now, &zone).unwrap();
        assert_eq!(next, at("Europe/Berlin", "2026-11-28T00:00").timestamp());
        // Sunday: the weekend window ends at Monday 00:00; then Monday 08:00.
        let now = at("Europe/Berlin", "2026-11-29T10:00").timestamp();
        let next = next_change(&s, Rate::Unlimited, now, &zone).unwrap();
        assert_eq!(next, at("Europe/Berlin", "2026-11-30T00:00").timestamp());
        let next = next_change(&s, Rate::Unlimited, next, &zone).unwrap();
        assert_eq!(next, at("Europe/Berlin", "2026-11-30T08:00").timestamp());
    }

    #[test]
    fn a_schedule_without_windows_never_changes() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        assert_eq!(next_change(&[], Rate::Unlimited, now, &TimeZone::UTC), None);
    }

    fn any_window() -> impl Strategy<Value = Window> {
        (1u8..128, 0u16..DAY_MINUTES, 1u16..=DAY_MINUTES, 0u64..4).prop_filter_map(
            "empty window",
            |(days, from, to, rate)| {
                (from != to).then(|| Window {
                    days: Days::parse(
                        &(0..7)
                            .filter(|d| days & (1 << d) != 0)
                            .map(|d| ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][d])
                            .collect::<Vec<_>>()
                            .join(","),
                    )
                    .unwrap(),
                    label: String::new(),
                    from_minute: from,
                    to_minute: to,
                    rate: match rate {
                        0 => Rate::Paused,
                        1 => Rate::Unlimited,
                        n => Rate::BytesPerSec(n * MIB),
                    },
                })
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// The schedule holds still from now until the next change, and the next change
        /// really changes it: checked minute by minute against [`rate_at`] (the model).
        #[test]
        fn next_change_matches_a_minute_by_minute_scan(
            windows in proptest::collection::vec(any_window(), 0..4),
            start_minute in 0i64..(7 * 24 * 60),
            zone in prop_oneof![Just("UTC"), Just("Europe/Berlin"), Just("America/New_York"), Just("Asia/Kolkata")],
        ) {
            let zone = TimeZone::get(zone).unwrap();
            // Monday 2026-04-06 00:00 UTC plus up to a week and the 8-day horizon: Berlin
            // (switched 2026-03-29) and New York (2026-03-08) have no DST switch in those
            // weeks, so every local minute exists once. (The week of 2026-03-23 used before
            // ran into Berlin's switch, where a window ending at 02:xx does not exist.)
            let now = Timestamp::from_second(1_775_433_600 + start_minute * 60).unwrap();
            let rate = |t: Timestamp| rate_at(&windows, Rate::Unlimited, &t.to_zoned_datetime(zone.clone()));
            let current = rate(now);
            let next = next_change(&windows, Rate::Unlimited, now, &zone);
            let horizon = next.map_or(8 * 24 * 60, |n| (n.as_second() - now.as_second()) / 60);
            for m in 1..horizon {
                let t = Timestamp::from_second(now.as_second() + m * 60).unwrap();
                prop_assert_eq!(rate(t), current.clone(), "changed at +{}min before {:?}", m, next);
            }
            if let Some(next) = next {
                prop_assert_ne!(rate(next), current);
            }
        }
    }
}
