//! The defender's limits, bans and memory bound, with a clock the tests drive.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use super::*;

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 168, 1, last))
}

fn config() -> DefenderConfig {
    DefenderConfig {
        startups: Startups {
            start: 1000,
            rate_percent: 100,
            full: 1000,
        },
        ..DefenderConfig::default()
    }
}

#[test]
fn one_source_cannot_hold_more_startups_than_its_share_and_others_still_get_in() {
    let d = Defender::new(config());
    let now = Instant::now();
    let held: Vec<Startup> = (0..16)
        .map(|_| d.admit(v4(1), now).expect("admit"))
        .collect();
    assert_eq!(d.admit(v4(1), now).err(), Some(Refusal::StartupsPerSource));
    let other = d.admit(v4(2), now).expect("another source gets in");
    assert_eq!(d.counts(now).startups, 17);
    drop(held);
    assert_eq!(d.counts(now).startups, 1);
    drop(other);
    assert!(d.admit(v4(1), now).is_ok(), "counts are released");
}

#[test]
fn startups_above_the_start_are_dropped_at_random_and_all_at_full() {
    let d = Defender::new(DefenderConfig {
        startups: Startups {
            start: 10,
            rate_percent: 30,
            full: 100,
        },
        startups_per_source: 1000,
        ..DefenderConfig::default()
    });
    let now = Instant::now();
    let mut held = Vec::new();
    let mut dropped = 0;
    for _ in 0..2000 {
        match d.admit(v4(1), now) {
            Ok(s) => held.push(s),
            Err(Refusal::EarlyDrop) => dropped += 1,
            Err(Refusal::StartupsFull) => break,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(held.len(), 100, "full at 100");
    assert!(dropped > 0, "some were dropped early");
    assert_eq!(d.admit(v4(2), now).err(), Some(Refusal::StartupsFull));
}

#[test]
fn five_failures_ban_the_source_even_with_the_right_password_and_bans_grow() {
    let d = Defender::new(config());
    let t0 = Instant::now();
    for i in 0..4 {
        assert_eq!(
            d.penalize(v4(7), Penalty::AuthFailure, t0 + Duration::from_secs(i)),
            None
        );
    }
    let ban = d.penalize(v4(7), Penalty::AuthFailure, t0 + Duration::from_secs(4));
    assert_eq!(ban, Some(Duration::from_secs(60)));
    let t1 = t0 + Duration::from_secs(5);
    assert!(d.is_banned(v4(7), t1));
    assert!(matches!(d.admit(v4(7), t1), Err(Refusal::Banned { .. })));
    assert!(!d.is_banned(v4(8), t1), "only that source");
    // A connection opened before the ban cannot log in.
    let d2 = Defender::new(config());
    let startup = d2.admit(v4(9), t0).expect("admit");
    for _ in 0..5 {
        d2.penalize(v4(9), Penalty::AuthFailure, t0);
    }
    assert!(matches!(
        startup.login(v4(9), t0),
        Err((_, Refusal::Banned { .. }))
    ));
    // After the ban, in again; five more failures ban for twice as long.
    let t2 = t0 + Duration::from_secs(70);
    assert!(!d.is_banned(v4(7), t2));
    assert!(d.admit(v4(7), t2).is_ok());
    let mut again = None;
    for i in 0..5 {
        again = d.penalize(v4(7), Penalty::GraceExpired, t2 + Duration::from_secs(i));
    }
    assert_eq!(again, Some(Duration::from_secs(120)));
    assert_eq!(d.bans(t2 + Duration::from_secs(5))[0].count, 2);
}

#[test]
fn failures_outside_the_window_do_not_add_up() {
    let d = Defender::new(config());
    let t0 = Instant::now();
    for i in 0..20u64 {
        // One failure every 3 minutes: never 5 within 10 minutes.
        let ban = d.penalize(
            v4(3),
            Penalty::Negotiation,
            t0 + Duration::from_secs(i * 180),
        );
        assert_eq!(ban, None, "failure {i}");
    }
}

#[test]
fn ipv6_sources_are_their_64_and_ipv4_mapped_addresses_are_ipv4() {
    let d = Defender::new(config());
    let now = Instant::now();
    let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
    let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
    let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
    for _ in 0..5 {
        d.penalize(a, Penalty::AuthFailure, now);
    }
    assert!(d.is_banned(b, now), "same /64");
    assert!(!d.is_banned(c, now), "another /64");
    assert_eq!(d.bans(now)[0].source, "2001:db8:1:2::/64");
    let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
    for _ in 0..5 {
        d.penalize(mapped, Penalty::AuthFailure, now);
    }
    assert!(d.is_banned(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), now));
    assert_eq!(d.clear(Some(b), now), 1);
    assert!(!d.is_banned(a, now));
    assert_eq!(d.clear(None, now), 1);
    assert!(d.bans(now).is_empty());
    let _ = Ipv6Addr::LOCALHOST;
}

#[test]
fn the_allow_list_is_never_banned_nor_capped_per_source() {
    let d = Defender::new(DefenderConfig {
        allow: vec!["192.168.1.0/24".parse().expect("net")],
        ..config()
    });
    let now = Instant::now();
    for _ in 0..50 {
        assert_eq!(d.penalize(v4(1), Penalty::AuthFailure, now), None);
    }
    assert!(!d.is_banned(v4(1), now));
    let held: Vec<Startup> = (0..50)
        .map(|_| d.admit(v4(1), now).expect("admit"))
        .collect();
    assert_eq!(held.len(), 50);
}

#[test]
fn sessions_are_limited_in_all_and_per_source() {
    let d = Defender::new(DefenderConfig {
        sessions: 3,
        sessions_per_source: 2,
        ..config()
    });
    let now = Instant::now();
    let login = |ip| d.admit(ip, now).expect("admit").login(ip, now);
    let a = login(v4(1)).ok().expect("first");
    let b = login(v4(1)).ok().expect("second");
    assert!(matches!(login(v4(1)), Err((_, Refusal::SessionsPerSource))));
    let c = login(v4(2)).ok().expect("another source");
    assert!(matches!(login(v4(3)), Err((_, Refusal::SessionsFull))));
    assert_eq!(d.counts(now).sessions, 3);
    assert_eq!(
        d.counts(now).startups,
        0,
        "a refused login's startup is released with it"
    );
    drop((a, b, c));
    assert_eq!(d.counts(now).sessions, 0);
}

#[test]
fn the_table_of_sources_stays_bounded() {
    let d = Defender::new(config());
    let now = Instant::now();
    for n in 0..(SOURCES_COUNT_MAX as u32 + 1000) {
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
        drop(d.admit(ip, now).expect("admit"));
    }
    assert!(d.state.lock().expect("lock").sources.len() <= SOURCES_COUNT_MAX);
}
