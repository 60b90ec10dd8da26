//! Text rendering of a [`Snapshot`] for people: one 80-column screen that reads well on a
//! 115200-baud serial console (plain ASCII layout, no colour codes), top to bottom: health,
//! sessions, spool and forecast, queue, WAN rate, uploads in flight, other pending files, last
//! errors, S3, engine. Every line is at most [`SCREEN_COLUMNS`] characters: long names are cut
//! in the middle with `…`, so that both the start and the end of a path stay visible.
//!
//! Reads snapshots only: it uses `names` to escape what clients named and `num` for the numbers
//! shown, and may not do I/O or reach any other module's state.

use std::fmt::Write;

use super::{FileStatus, Forecast, HealthLevel, Snapshot, SnapshotSource};
use crate::num::{f64_from_u64, u64_from_usize, usize_from_u64};
use crate::spool::FileState;

/// Width of the serial console.
pub const SCREEN_COLUMNS: usize = 80;
/// Uploads shown with a progress bar; more are summarised as "+N more".
pub const UPLOADS_SHOWN_COUNT_MAX: usize = 6;
/// Other pending files listed without `--all`.
pub const PENDING_SHOWN_COUNT_MAX: usize = 8;
/// Errors shown (the snapshot holds more; `--json` has them all).
pub const ERRORS_SHOWN_COUNT_MAX: usize = 3;
/// Characters inside a progress bar's brackets.
const PROGRESS_BAR_COLUMNS: usize = 20;

/// Bytes as a short human string, `12.3 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = f64_from_u64(n);
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A duration as its two largest units: `45s`, `12m30s`, `6h05m`, `3d04h`.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// `HH:MM:SS` UTC of a unix time.
fn clock_utc(unix: u64) -> String {
    let s = unix % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// `text` cut to `width` characters by replacing its middle with `…`.
pub fn fit(text: &str, width: usize) -> String {
    let len = text.chars().count();
    if len <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let keep = width - 1;
    let head = keep / 2;
    let tail = keep - head;
    let mut out: String = text.chars().take(head).collect();
    out.push('…');
    out.extend(text.chars().skip(len - tail));
    out
}

fn state_text(f: &FileStatus) -> String {
    match f.state {
        // An early upload sends parts while the file still arrives (or waits for a resume).
        FileState::Receiving if f.parts_done > 0 => {
            format!("receiving, {} parts sent", f.parts_done)
        }
        FileState::Receiving => "receiving".into(),
        FileState::Partial if f.parts_done > 0 => format!("partial, {} parts sent", f.parts_done),
        FileState::Partial => "partial".into(),
        FileState::Sealed => "sealed".into(),
        FileState::Uploading => format!("uploading {}/{}", f.parts_done, f.parts_total),
        FileState::Delivered => "delivered".into(),
        FileState::Failed => "FAILED".into(),
        FileState::Conflict => "CONFLICT".into(),
    }
}

fn rate(bytes_per_sec: u64) -> String {
    format!("{}/s", human_bytes(bytes_per_sec))
}

/// Lines of the screen, each to be fitted to the width by the caller.
struct Screen {
    lines: Vec<String>,
}

impl Screen {
    /// Adds a line, cut to the screen; control characters and bidi overrides (from names,
    /// error causes) escaped, so that nothing shown can repaint the terminal or reorder it.
    fn line(&mut self, text: String) {
        self.lines
            .push(fit(&crate::names::escaped(&text), SCREEN_COLUMNS));
    }
}

/// The whole status as text. Without `all`, pending files are bounded and delivered ones only
/// counted; with it every file is listed.
pub fn render_text(s: &Snapshot, all: bool) -> String {
    let mut sc = Screen { lines: Vec::new() };
    header(&mut sc, s);
    spool_and_queue(&mut sc, s);
    wan(&mut sc, s);
    uploads(&mut sc, s);
    files(&mut sc, s, all);
    errors(&mut sc, s);
    s3(&mut sc, s);
    let mut out = String::new();
    for l in sc.lines {
        let _ = writeln!(out, "{l}");
    }
    out
}

fn header(sc: &mut Screen, s: &Snapshot) {
    let running = match s.source {
        SnapshotSource::Daemon => format!("up {}", human_duration(s.uptime_secs)),
        SnapshotSource::Journal => "DAEMON NOT RUNNING (from the journal)".to_owned(),
    };
    sc.line(format!("sftpgw {}  {running}", s.version));
    let level = match s.health.level {
        HealthLevel::Ok => "OK",
        HealthLevel::Degraded => "DEGRADED",
        HealthLevel::Failing => "FAILING",
    };
    match s.health.reasons.split_first() {
        None => sc.line(format!("HEALTH   {level}")),
        Some((first, rest)) => {
            sc.line(format!("HEALTH   {level}: {first}"));
            for r in rest {
                sc.line(format!("         {r}"));
            }
        }
    }
    if s.source == SnapshotSource::Daemon {
        sc.line(format!(
            "SFTP     {} session(s)  receiving {}",
            s.sftp_sessions,
            rate(s.rates.ingest_bytes_per_sec)
        ));
    }
    if let Some(lan) = s.lan.filter(|l| l.banned_sources > 0 || l.refused > 0) {
        sc.line(format!(
            "LAN      {} source(s) banned  {} connection(s) refused  {} not logged in \
             (sftpgw bans list)",
            lan.banned_sources, lan.refused, lan.startups
        ));
    }
}

fn spool_and_queue(sc: &mut Screen, s: &Snapshot) {
    let total = s.spool.total_bytes;
    let used = total.saturating_sub(s.spool.free_bytes);
    let percent = (used * 100).checked_div(total).unwrap_or(0);
    let forecast = match s.rates.forecast {
        Forecast::Unknown => String::new(),
        Forecast::Idle => "; idle".to_owned(),
        Forecast::DrainingFaster => "; draining faster than filling".to_owned(),
        Forecast::FullIn { secs } => {
            format!("; full in {} at current rates", human_duration(secs))
        }
    };
    sc.line(format!(
        "SPOOL    {percent}% used, {} free of {}{forecast}",
        human_bytes(s.spool.free_bytes),
        human_bytes(total)
    ));
    let oldest = s
        .queue
        .oldest_age_secs
        .map(|a| format!(", oldest {}", human_duration(a)))
        .unwrap_or_default();
    // Since the start of the daemon; the journal knows only what was delivered.
    let done = match s.source {
        SnapshotSource::Daemon => format!(
            "; {} delivered, {} sent",
            s.drain.files_delivered,
            human_bytes(s.drain.bytes_sent)
        ),
        SnapshotSource::Journal => String::new(),
    };
    sc.line(format!(
        "QUEUE    {} file(s), {}{oldest}{done}",
        s.queue.files,
        human_bytes(s.queue.bytes),
    ));
}

fn wan(sc: &mut Screen, s: &Snapshot) {
    if s.source == SnapshotSource::Journal {
        return;
    }
    let sh = &s.shaping;
    // Before the shaper reports (empty reason) only the drain's own rate is known.
    let sent = if sh.rate_bytes_per_sec > 0 {
        sh.rate_bytes_per_sec
    } else {
        s.rates.drain_bytes_per_sec
    };
    let limit = if sh.paused {
        "PAUSED".to_owned()
    } else {
        match sh.limit_bytes_per_sec {
            Some(l) => format!("limit {}", rate(l)),
            None => "no limit".to_owned(),
        }
    };
    let reason = if sh.reason.is_empty() {
        String::new()
    } else {
        format!("  ({})", sh.reason)
    };
    sc.line(format!("WAN      sending {}, {limit}{reason}", rate(sent)));
    for (name, b) in [("daily", &sh.daily_budget), ("monthly", &sh.monthly_budget)] {
        if let Some(b) = b {
            sc.line(format!(
                "         {name} budget {} of {} used",
                human_bytes(b.used_bytes),
                human_bytes(b.limit_bytes)
            ));
        }
    }
}

fn progress_bar(done: u64, total: u64) -> (String, u64) {
    let percent = (done.min(total) * 100)
        .checked_div(total)
        .unwrap_or(100)
        .min(100);
    let filled = (usize_from_u64(percent) * PROGRESS_BAR_COLUMNS) / 100;
    let bar = format!(
        "[{}{}]",
        "#".repeat(filled),
        ".".repeat(PROGRESS_BAR_COLUMNS - filled)
    );
    (bar, percent)
}

fn uploads(sc: &mut Screen, s: &Snapshot) {
    let in_flight: Vec<&FileStatus> = s
        .files
        .iter()
        .filter(|f| f.state == FileState::Uploading)
        .collect();
    if in_flight.is_empty() {
        return;
    }
    sc.line(format!("UPLOADS  {} in flight", in_flight.len()));
    for f in in_flight.iter().take(UPLOADS_SHOWN_COUNT_MAX) {
        let (bar, percent) = progress_bar(f.bytes_done, f.size);
        let eta = f.eta_secs.map_or_else(
            || "ETA ?".to_owned(),
            |e| format!("ETA {}", human_duration(e)),
        );
        let tail = format!(" {bar} {percent:>3}% {:>9} {eta}", human_bytes(f.size));
        let name_width = SCREEN_COLUMNS.saturating_sub(2 + tail.chars().count());
        let name = fit(
            &crate::names::escaped(&format!("{}:{}", f.user, f.path)),
            name_width,
        );
        sc.line(format!("  {name:<name_width$}{tail}"));
    }
    if in_flight.len() > UPLOADS_SHOWN_COUNT_MAX {
        sc.line(format!(
            "  +{} more",
            in_flight.len() - UPLOADS_SHOWN_COUNT_MAX
        ));
    }
}

fn files(sc: &mut Screen, s: &Snapshot, all: bool) {
    let counts = s.counts();
    let count = |st: FileState| counts.get(st);
    // Conflicts are rare (overwrite = "never" only): counted with the failed ones, named when
    // there are any, so that the line stays within 80 columns otherwise.
    let failed = match count(FileState::Conflict) {
        0 => count(FileState::Failed).to_string(),
        conflicts => format!(
            "{} ({conflicts} conflict)",
            count(FileState::Failed) + conflicts
        ),
    };
    sc.line(format!(
        "FILES    receiving {}  partial {}  sealed {}  uploading {}  failed {failed}  delivered {}",
        count(FileState::Receiving),
        count(FileState::Partial),
        count(FileState::Sealed),
        count(FileState::Uploading),
        count(FileState::Delivered),
    ));
    let listed: Vec<&FileStatus> = s
        .files
        .iter()
        .filter(|f| all || !matches!(f.state, FileState::Delivered | FileState::Uploading))
        .collect();
    let shown = if all {
        listed.len()
    } else {
        listed.len().min(PENDING_SHOWN_COUNT_MAX)
    };
    for f in &listed[..shown] {
        for l in file_lines(f, "  ") {
            sc.line(l);
        }
    }
    // The snapshot lists a bounded number of files; the counts cover them all.
    let listable: u64 = if all {
        crate::spool::catalog::STATES
            .iter()
            .map(|st| count(*st))
            .sum()
    } else {
        [
            FileState::Receiving,
            FileState::Partial,
            FileState::Sealed,
            FileState::Failed,
            FileState::Conflict,
        ]
        .iter()
        .map(|st| count(*st))
        .sum()
    };
    let more = listable.saturating_sub(u64_from_usize(shown));
    if more > 0 {
        sc.line(format!("  +{more} more (`sftpgw files` lists them all)"));
    }
}

/// One file as status and `sftpgw files` show it: `{lead}state  size  user:/path` within 80
/// columns, and its error on a second line; names and errors escaped.
pub fn file_lines(f: &FileStatus, lead: &str) -> Vec<String> {
    let head = format!("{lead}{:<24} {:>10}  ", state_text(f), human_bytes(f.size));
    let width = SCREEN_COLUMNS.saturating_sub(head.chars().count());
    let name = format!("{}:{}", f.user, f.path);
    let name = crate::names::escaped(&name);
    let mut lines = vec![fit(&format!("{head}{}", fit(&name, width)), SCREEN_COLUMNS)];
    if let Some(e) = &f.error {
        lines.push(fit(
            &crate::names::escaped(&format!("    {e}")),
            SCREEN_COLUMNS,
        ));
    }
    lines
}

fn errors(sc: &mut Screen, s: &Snapshot) {
    if s.errors.is_empty() {
        return;
    }
    sc.line(format!("ERRORS   last {} (newest first)", s.errors.len()));
    for e in s.errors.iter().take(ERRORS_SHOWN_COUNT_MAX) {
        let file = e
            .file
            .as_deref()
            .map(|f| format!(" {f}"))
            .unwrap_or_default();
        sc.line(format!(
            "  {} {}{file}: {}",
            clock_utc(e.at_unix),
            e.kind.label(),
            e.cause
        ));
    }
}

fn s3(sc: &mut Screen, s: &Snapshot) {
    let reach = match s.s3.reachable {
        _ if s.source == SnapshotSource::Journal => "not checked".to_owned(),
        None => "not contacted yet".to_owned(),
        Some(true) => "reachable".to_owned(),
        Some(false) => format!(
            "UNREACHABLE: {}",
            s.s3.last_error.as_deref().unwrap_or("no answer")
        ),
    };
    let skew = match s.s3.clock_skew_secs {
        // Worth a warning long before SigV4's 15 minutes run out.
        Some(k) if k.abs() > 60.0 => format!("clock skew {k:+.0} s (SigV4 fails beyond 900 s)"),
        Some(k) => format!("clock skew {k:+.1} s"),
        None => "clock skew unknown".to_owned(),
    };
    sc.line(format!(
        "S3       {}/{}  {reach}",
        s.drain.endpoint, s.drain.bucket
    ));
    let measured =
        s.s3.clock_skew_measured_unix
            .map(|t| format!(", measured {} UTC", clock_utc(t)))
            .unwrap_or_default();
    sc.line(format!("         {skew}{measured}"));
    sc.line(format!("ENGINE   {}  spool {}", s.engine, s.spool.dir));
}

#[cfg(test)]
mod tests;
