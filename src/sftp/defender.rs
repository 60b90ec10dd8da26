//! What one host on the LAN may cost the others: limits on connections that have not logged in
//! yet ("startups") and on sessions, in all and per source address, random early drop of new
//! startups (OpenSSH's `MaxStartups`), and per-source penalties that end in a ban (OpenSSH's
//! `PerSourcePenalties`, SFTPGo's defender).
//!
//! A source is an IPv4 address or an IPv6 /64 (one host's addresses, as a LAN hands them
//! out); an IPv4-mapped IPv6 address is its IPv4 address. Sources on the allow-list skip the
//! per-source limits and are never penalised; the global limits hold for everyone.
//!
//! Penalties: a failed authentication, a negotiation that fails (garbage, no common
//! algorithm) and a login grace time that runs out each count one failure. `failures_max`
//! failures within `failure_window` ban the source for `ban`, doubled at each ban that follows
//! within a day, up to `ban_max`. A banned source's connections are closed at accept, and a
//! connection already open from it can no longer log in, even with the right credentials.
//!
//! Memory is bounded: at most [`SOURCES_COUNT_MAX`] sources are tracked; when the table is
//! full, sources with nothing to remember are forgotten first; if none, a new source is not
//! tracked (it gets the global limits only, and no penalties: OpenSSH's "permissive" overflow).
//! The logic takes the time as an argument, so that tests drive the clock.
//!
//! Owns the source table and its counts, and decides; it may not touch sockets (the server
//! closes what it refuses), the spool, or the configuration file (`config` fills
//! [`DefenderConfig`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::num::{f64_from_u64, u64_from_usize};

/// Sources tracked at most.
pub const SOURCES_COUNT_MAX: usize = 65_536;
/// A ban that follows an earlier one within this long is longer (doubled).
const BAN_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// `[sftp] max_startups = "start:rate:full"`: connections that have not logged in. From
/// `start` on, a new one is dropped with probability `rate` %, rising linearly to 100 % at
/// `full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Startups {
    /// Connections not logged in below which none is dropped.
    pub start: usize,
    /// Drop probability at `start`, in percent (0..=100).
    pub rate_percent: u8,
    /// Connections not logged in at which every new one is refused.
    pub full: usize,
}

/// The limits and penalties (`[sftp]`); see `docs/OPERATIONS.md` for the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct DefenderConfig {
    /// Connections not logged in, in all (`max_startups`).
    pub startups: Startups,
    /// Connections not logged in from one source; more are closed at accept.
    pub startups_per_source: usize,
    /// Logged-in connections in all; a login beyond is refused.
    pub sessions: usize,
    /// Logged-in connections from one source.
    pub sessions_per_source: usize,
    /// Failures within `failure_window` that ban a source (`max_auth_failures`).
    pub failures_max: u32,
    /// How long a failure counts against its source.
    pub failure_window: Duration,
    /// The first ban's length; each further one within a day doubles it.
    pub ban: Duration,
    /// The longest ban.
    pub ban_max: Duration,
    /// Networks exempt from the per-source limits and from penalties.
    pub allow: Vec<IpNet>,
}

impl Default for DefenderConfig {
    fn default() -> Self {
        DefenderConfig {
            startups: Startups {
                start: 32,
                rate_percent: 30,
                full: 200,
            },
            // Below `startups.start`: one source alone never starts the random early drop
            // that would hit everyone else's new connections too.
            startups_per_source: 16,
            sessions: 64,
            sessions_per_source: 32,
            failures_max: 5,
            failure_window: Duration::from_secs(600),
            ban: Duration::from_secs(60),
            ban_max: Duration::from_secs(3600),
            allow: Vec::new(),
        }
    }
}

/// What counts against a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Penalty {
    /// A rejected password or key signature.
    AuthFailure,
    /// A negotiation that failed: garbage, or no algorithm in common.
    Negotiation,
    /// The login grace time ran out before the client logged in.
    GraceExpired,
}

/// Why a connection or a login is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The source is banned.
    Banned {
        /// Until the ban ends.
        remaining: Duration,
    },
    /// The source has `startups_per_source` connections not logged in.
    StartupsPerSource,
    /// `startups.full` connections are not logged in.
    StartupsFull,
    /// Dropped at random between `startups.start` and `startups.full`.
    EarlyDrop,
    /// The source has `sessions_per_source` sessions.
    SessionsPerSource,
    /// `sessions` sessions are logged in.
    SessionsFull,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Banned { remaining } => {
                write!(f, "banned for {} s more", remaining.as_secs().max(1))
            }
            Refusal::StartupsPerSource => {
                write!(f, "too many connections not logged in from this source")
            }
            Refusal::StartupsFull => write!(f, "too many connections not logged in"),
            Refusal::EarlyDrop => write!(f, "dropped early: many connections not logged in"),
            Refusal::SessionsPerSource => write!(f, "too many sessions from this source"),
            Refusal::SessionsFull => write!(f, "too many sessions"),
        }
    }
}

/// One banned source, for `sftpgw bans` and status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    /// The address, or the /64 for IPv6.
    pub source: String,
    /// Seconds until the ban ends.
    pub remaining_secs: u64,
    /// Bans of this source within a day, this one included.
    pub count: u32,
}

/// Counts for status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefenderCounts {
    /// Connections not logged in yet.
    pub startups: usize,
    /// Logged-in connections.
    pub sessions: usize,
    /// Sources banned now.
    pub banned_sources: usize,
    /// Connections refused at accept or at login since the start.
    pub refused: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SourceKey {
    V4(u32),
    V6Net(u64),
}

impl SourceKey {
    fn of(ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(u32::from(v4)),
                None => SourceKey::V6Net(u64::try_from(u128::from(v6) >> 64).unwrap_or(u64::MAX)),
            },
        }
    }

    fn display(self) -> String {
        match self {
            SourceKey::V4(a) => std::net::Ipv4Addr::from(a).to_string(),
            SourceKey::V6Net(net) => format!("{}/64", Ipv6Addr::from(u128::from(net) << 64)),
        }
    }
}

#[derive(Debug, Default)]
struct Source {
    startups: usize,
    sessions: usize,
    /// Times of the failures within the window, oldest first (at most `failures_max`).
    failures: Vec<Instant>,
    banned_until: Option<Instant>,
    last_ban: Option<Instant>,
    bans: u32,
}

impl Source {
    fn forgettable(&self, now: Instant) -> bool {
        self.startups == 0
            && self.sessions == 0
            && self.banned_until.is_none_or(|t| t <= now)
            && self
                .last_ban
                .is_none_or(|t| now.duration_since(t) > BAN_MEMORY)
            && self.failures.is_empty()
    }
}

#[derive(Debug, Default)]
struct State {
    sources: HashMap<SourceKey, Source>,
    startups: usize,
    sessions: usize,
    refused: u64,
}

/// The shared limits and penalty table of one server.
pub struct Defender {
    config: DefenderConfig,
    state: Mutex<State>,
}

/// A connection that has not logged in yet; releases its count when dropped.
pub struct Startup {
    defender: Arc<Defender>,
    source: Option<SourceKey>,
}

/// A logged-in connection; releases its count when dropped.
pub struct SessionPermit {
    defender: Arc<Defender>,
    source: Option<SourceKey>,
}

impl Defender {
    /// A defender with nothing tracked yet; the server shares it between its connections.
    pub fn new(config: DefenderConfig) -> Arc<Defender> {
        Arc::new(Defender {
            config,
            state: Mutex::new(State::default()),
        })
    }

    /// The limits it enforces.
    pub fn config(&self) -> &DefenderConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.config.allow.iter().any(|net| net.contains(&ip))
    }

    /// A new TCP connection from `ip`: admitted as a startup, or refused.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Startup, Refusal> {
        let allowed = self.allowed(ip);
        let mut state = self.lock();
        let outcome = self.admit_locked(&mut state, ip, allowed, now);
        match outcome {
            Ok(source) => {
                state.startups += 1;
                if let Some(s) = source.and_then(|k| state.sources.get_mut(&k)) {
                    s.startups += 1;
                }
                Ok(Startup {
                    defender: Arc::clone(self),
                    source,
                })
            }
            Err(refusal) => {
                state.refused += 1;
                Err(refusal)
            }
        }
    }

    fn admit_locked(
        &self,
        state: &mut State,
        ip: IpAddr,
        allowed: bool,
        now: Instant,
    ) -> Result<Option<SourceKey>, Refusal> {
        let key = SourceKey::of(ip);
        if !allowed && let Some(s) = state.sources.get(&key) {
            if let Some(until) = s.banned_until.filter(|t| *t > now) {
                return Err(Refusal::Banned {
                    remaining: until - now,
                });
            }
            if s.startups >= self.config.startups_per_source {
                return Err(Refusal::StartupsPerSource);
            }
        }
        let Startups {
            start,
            rate_percent,
            full,
        } = self.config.startups;
        if state.startups >= full {
            return Err(Refusal::StartupsFull);
        }
        if state.startups >= start {
            // OpenSSH's formula: rate % at `start`, rising linearly to 100 % at `full`.
            let rate = f64::from(rate_percent) / 100.0;
            let span = f64_from_u64(u64_from_usize(full.saturating_sub(start).max(1)));
            let above = f64_from_u64(u64_from_usize(state.startups - start));
            let p = rate + (1.0 - rate) * above / span;
            if rand::thread_rng().gen_bool(p.clamp(0.0, 1.0)) {
                return Err(Refusal::EarlyDrop);
            }
        }
        if allowed {
            return Ok(None);
        }
        Ok(self.track(state, key, now))
    }

    /// The entry of `key`, made if the table has room (forgetting idle sources if needed).
    fn track(&self, state: &mut State, key: SourceKey, now: Instant) -> Option<SourceKey> {
        if !state.sources.contains_key(&key) && state.sources.len() >= SOURCES_COUNT_MAX {
            state.sources.retain(|_, s| !s.forgettable(now));
            if state.sources.len() >= SOURCES_COUNT_MAX {
                return None;
            }
        }
        state.sources.entry(key).or_default();
        Some(key)
    }

    /// Counts a penalty against `ip`; returns the ban if this one started it.
    pub fn penalize(&self, ip: IpAddr, penalty: Penalty, now: Instant) -> Option<Duration> {
        if self.allowed(ip) {
            return None;
        }
        let key = SourceKey::of(ip);
        let mut state = self.lock();
        let key = self.track(&mut state, key, now)?;
        let s = state.sources.get_mut(&key)?;
        if s.banned_until.is_some_and(|t| t > now) {
            // What a banned source still tries (connections opened before) is not held
            // against it once the ban is over.
            return None;
        }
        let window = self.config.failure_window;
        s.failures.retain(|t| now.duration_since(*t) < window);
        s.failures.push(now);
        if u32::try_from(s.failures.len()).unwrap_or(u32::MAX) < self.config.failures_max {
            return None;
        }
        let repeat = s
            .last_ban
            .is_some_and(|t| now.duration_since(t) <= BAN_MEMORY);
        s.bans = if repeat { s.bans.saturating_add(1) } else { 1 };
        let factor = 1u32 << (s.bans - 1).min(16);
        let ban = self
            .config
            .ban
            .saturating_mul(factor)
            .min(self.config.ban_max);
        s.banned_until = Some(now + ban);
        s.last_ban = Some(now);
        s.failures.clear();
        tracing::warn!(source = %key.display(), ?penalty, ban_secs = ban.as_secs(), bans = s.bans,
            "source banned after {} failures", self.config.failures_max);
        Some(ban)
    }

    /// Whether `ip` is banned now (a connection from it may not log in).
    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        if self.allowed(ip) {
            return false;
        }
        let state = self.lock();
        state
            .sources
            .get(&SourceKey::of(ip))
            .and_then(|s| s.banned_until)
            .is_some_and(|t| t > now)
    }

    /// The banned sources now, longest remaining first.
    pub fn bans(&self, now: Instant) -> Vec<Ban> {
        let state = self.lock();
        let mut bans: Vec<Ban> = state
            .sources
            .iter()
            .filter_map(|(key, s)| {
                let until = s.banned_until.filter(|t| *t > now)?;
                Some(Ban {
                    source: key.display(),
                    remaining_secs: (until - now).as_secs().max(1),
                    count: s.bans,
                })
            })
            .collect();
        bans.sort_by_key(|b| std::cmp::Reverse(b.remaining_secs));
        bans
    }

    /// Lifts the ban (and forgets the failures) of `source` (an address; for IPv6, any address
    /// of the /64), or of every source; returns how many bans were lifted.
    pub fn clear(&self, source: Option<IpAddr>, now: Instant) -> usize {
        let mut state = self.lock();
        let key = source.map(SourceKey::of);
        let mut lifted = 0;
        for (k, s) in state.sources.iter_mut() {
            if key.is_some_and(|key| key != *k) {
                continue;
            }
            if s.banned_until.is_some_and(|t| t > now) {
                lifted += 1;
            }
            s.banned_until = None;
            s.last_ban = None;
            s.bans = 0;
            s.failures.clear();
        }
        lifted
    }

    /// Counts for status, with bans that have ended by `now` left out.
    pub fn counts(&self, now: Instant) -> DefenderCounts {
        let state = self.lock();
        DefenderCounts {
            startups: state.startups,
            sessions: state.sessions,
            banned_sources: state
                .sources
                .values()
                .filter(|s| s.banned_until.is_some_and(|t| t > now))
                .count(),
            refused: state.refused,
        }
    }
}

impl Startup {
    /// The connection logged in: it becomes a session if the session limits allow.
    pub fn login(self, ip: IpAddr, now: Instant) -> Result<SessionPermit, (Startup, Refusal)> {
        let defender = Arc::clone(&self.defender);
        let allowed = defender.allowed(ip);
        let mut state = defender.lock();
        let source = self.source.and_then(|k| state.sources.get(&k));
        let refusal = if let Some(until) = source
            .and_then(|s| s.banned_until)
            .filter(|t| !allowed && *t > now)
        {
            Some(Refusal::Banned {
                remaining: until - now,
            })
        } else if source.is_some_and(|s| s.sessions >= defender.config.sessions_per_source) {
            Some(Refusal::SessionsPerSource)
        } else if state.sessions >= defender.config.sessions {
            Some(Refusal::SessionsFull)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            state.refused += 1;
            drop(state);
            return Err((self, refusal));
        }
        state.sessions += 1;
        if let Some(s) = self.source.and_then(|k| state.sources.get_mut(&k)) {
            s.sessions += 1;
        }
        let source = self.source;
        drop(state);
        // The startup's count goes with `self`.
        drop(self);
        Ok(SessionPermit { defender, source })
    }
}

impl Drop for Startup {
    fn drop(&mut self) {
        let mut state = self.defender.lock();
        state.startups = state.startups.saturating_sub(1);
        if let Some(s) = self.source.and_then(|k| state.sources.get_mut(&k)) {
            s.startups = s.startups.saturating_sub(1);
        }
    }
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        let mut state = self.defender.lock();
        state.sessions = state.sessions.saturating_sub(1);
        if let Some(s) = self.source.and_then(|k| state.sources.get_mut(&k)) {
            s.sessions = s.sessions.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests;
