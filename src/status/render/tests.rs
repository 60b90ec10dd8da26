//! The 80-column screen: every line fits, and each section says what it must.

use super::*;
use crate::status::{
    DrainSummary, ErrorEvent, Health, QueueStatus, Rates, S3Status, ShapingStatus, SpoolUsage,
};
use crate::telemetry::ErrorKind;

fn file(state: FileState, path: &str, error: Option<&str>) -> FileStatus {
    FileStatus {
        user: "u".into(),
        path: path.into(),
        state,
        size: 40 << 20,
        key: format!("p/u{path}"),
        parts_done: 2,
        parts_total: 4,
        error: error.map(String::from),
        mtime_unix: 0,
        bytes_done: 20 << 20,
        eta_secs: Some(125),
        id: 7,
    }
}

fn snapshot(files: Vec<FileStatus>) -> Snapshot {
    Snapshot {
        version: "0.1.0".into(),
        uptime_secs: 3 * 3600 + 5 * 60,
        engine: "pwrite".into(),
        spool: SpoolUsage {
            dir: "/data/spool".into(),
            total_bytes: 100 << 30,
            free_bytes: 60 << 30,
            queue_bytes: 0,
            queue_files: 0,
        },
        drain: DrainSummary {
            endpoint: "http://10.0.2.2:9000".into(),
            bucket: "uploads".into(),
            bytes_sent: 0,
            parts_sent: 0,
            files_delivered: 0,
        },
        files,
        file_counts: None,
        shaping: ShapingStatus::default(),
        source: SnapshotSource::Daemon,
        health: Health::default(),
        sftp_sessions: 3,
        lan: None,
        rates: Rates {
            ingest_bytes_per_sec: 3 << 20,
            drain_bytes_per_sec: 1 << 20,
            window_secs: 60,
            forecast: Forecast::FullIn { secs: 6 * 3600 },
        },
        queue: QueueStatus {
            files: 12,
            bytes: 3 << 30,
            oldest_age_secs: Some(2 * 3600 + 5 * 60),
        },
        errors: Vec::new(),
        s3: S3Status {
            reachable: Some(true),
            clock_skew_secs: Some(0.4),
            clock_skew_measured_unix: Some(3600 * 13 + 60),
            ..Default::default()
        },
        counters: Default::default(),
    }
}

fn assert_fits(text: &str) {
    for line in text.lines() {
        assert!(
            line.chars().count() <= SCREEN_COLUMNS,
            "line of {} columns:\n{line}\nin:\n{text}",
            line.chars().count()
        );
    }
}

#[test]
fn every_line_fits_80_columns_even_with_long_names() {
    let long = format!("/{}/{}.bin", "deep".repeat(30), "name".repeat(25));
    let mut files: Vec<FileStatus> = (0..10)
        .map(|_| file(FileState::Uploading, &long, None))
        .collect();
    files.push(file(
        FileState::Failed,
        &long,
        Some(&"AccessDenied ".repeat(20)),
    ));
    files.extend((0..20).map(|_| file(FileState::Sealed, &long, None)));
    let mut s = snapshot(files);
    s.drain.endpoint = format!("https://{}.example.com", "s3".repeat(40));
    s.spool.dir = format!("/{}", "spool".repeat(30));
    s.health = Health {
        level: HealthLevel::Degraded,
        reasons: vec![format!("S3 unreachable: {}", "timeout ".repeat(20))],
    };
    s.shaping.reason = format!("schedule {}", "mon-fri 08:00-18:00 ".repeat(5));
    s.errors = (0..10)
        .map(|i| ErrorEvent {
            at_unix: 1_000_000 + i,
            kind: ErrorKind::S3Transient,
            file: Some(format!("u:{long}")),
            cause: "UploadPart: timeout ".repeat(10),
        })
        .collect();
    let text = render_text(&s, false);
    assert_fits(&text);
    assert_fits(&render_text(&s, true));
    // Names are cut in the middle: start and end stay visible.
    assert!(
        text.contains("u:/deepdeep") && text.contains("namename.bin"),
        "{text}"
    );
    assert!(text.contains('…'), "{text}");
    assert!(text.contains("+4 more"), "bounded upload list: {text}");
    assert!(text.contains("+13 more"), "bounded pending list: {text}");
}

#[test]
fn the_screen_shows_health_forecast_queue_progress_eta_errors_and_skew() {
    let mut s = snapshot(vec![
        file(FileState::Uploading, "/a/big.bin", None),
        file(FileState::Failed, "/a/denied.bin", Some("AccessDenied")),
        file(FileState::Delivered, "/a/done.bin", None),
        file(FileState::Receiving, "/a/early.bin", None),
    ]);
    s.health = Health {
        level: HealthLevel::Failing,
        reasons: vec![
            "the drain task stopped".into(),
            "1 failed file(s): see below, `sftpgw retry`".into(),
        ],
    };
    s.errors = vec![ErrorEvent {
        at_unix: 3600 * 13 + 62,
        kind: ErrorKind::S3Permanent,
        file: Some("u:/a/denied.bin".into()),
        cause: "PutObject: AccessDenied".into(),
    }];
    let text = render_text(&s, false);
    assert_fits(&text);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[1].starts_with("HEALTH   FAILING: the drain task stopped"),
        "{text}"
    );
    assert!(lines[2].contains("1 failed file(s)"), "{text}");
    assert!(text.contains("3 session(s)"), "{text}");
    assert!(text.contains("full in 6h00m at current rates"), "{text}");
    assert!(
        text.contains("QUEUE    12 file(s), 3.0 GiB, oldest 2h05m"),
        "{text}"
    );
    assert!(
        text.contains("[##########..........]  50%") && text.contains("ETA 2m05s"),
        "progress bar and ETA: {text}"
    );
    assert!(text.contains("receiving, 2 parts sent"), "{text}");
    assert!(
        text.contains("FAILED") && text.contains("AccessDenied"),
        "{text}"
    );
    assert!(
        text.contains("13:01:02 s3_permanent u:/a/denied.bin: PutObject"),
        "{text}"
    );
    assert!(
        text.contains("reachable") && text.contains("clock skew +0.4 s, measured 13:01:00 UTC"),
        "{text}"
    );
    assert!(text.contains("ENGINE   pwrite"), "{text}");
    assert!(
        !text.contains("done.bin"),
        "delivered files are only counted: {text}"
    );
    assert!(render_text(&s, true).contains("done.bin"));

    s.rates.forecast = Forecast::DrainingFaster;
    assert!(render_text(&s, false).contains("draining faster than filling"));
    s.s3.clock_skew_secs = Some(-400.4);
    let text = render_text(&s, false);
    assert!(
        text.contains("clock skew -400 s (SigV4 fails beyond 900 s)"),
        "{text}"
    );
    assert_fits(&text);
}

#[test]
fn a_journal_snapshot_says_the_daemon_is_not_running() {
    let mut s = snapshot(vec![file(FileState::Sealed, "/a/queued.bin", None)]);
    s.source = SnapshotSource::Journal;
    let text = render_text(&s, false);
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.contains("DAEMON NOT RUNNING")),
        "{text}"
    );
    assert!(
        text.contains("u:/a/queued.bin") && text.contains("not checked"),
        "{text}"
    );
    assert!(
        !text.contains("session(s)") && !text.contains("WAN"),
        "{text}"
    );
}

#[test]
fn shaping_shows_limit_reason_and_pause() {
    let mut s = snapshot(Vec::new());
    s.shaping = ShapingStatus {
        limit_bytes_per_sec: Some(2 << 20),
        rate_bytes_per_sec: 2 << 20,
        reason: "schedule mon-fri 08:00-18:00".into(),
        ..Default::default()
    };
    let text = render_text(&s, false);
    assert!(
        text.contains(
            "WAN      sending 2.0 MiB/s, limit 2.0 MiB/s  (schedule mon-fri 08:00-18:00)"
        ),
        "{text}"
    );
    s.shaping.paused = true;
    assert!(render_text(&s, false).contains("PAUSED"));
}

#[test]
fn fit_cuts_the_middle_and_human_units_read_well() {
    assert_eq!(fit("abcdefghij", 5), "ab…ij");
    assert_eq!(fit("abc", 5), "abc");
    assert_eq!(human_bytes(0), "0 B");
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert_eq!(human_bytes(16 << 20), "16.0 MiB");
    assert_eq!(human_duration(45), "45s");
    assert_eq!(human_duration(3 * 86_400 + 4 * 3600), "3d04h");
}

#[test]
fn names_with_control_characters_are_shown_escaped() {
    let files = vec![
        file(FileState::Failed, "/a\nFORGED\u{1b}[2J", Some("no\rway")),
        file(FileState::Sealed, "/invoice\u{202e}fdp.exe", None),
    ];
    let text = render_text(&snapshot(files), true);
    for line in text.lines() {
        assert!(crate::names::hostile_char(line).is_none(), "{line:?}");
    }
    assert!(!text.lines().any(|l| l.starts_with("FORGED")), "{text}");
    assert!(text.contains("\\u{a}FORGED\\u{1b}[2J"), "{text}");
}
