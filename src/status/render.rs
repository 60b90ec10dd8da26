//! Text rendering of a [`Snapshot`] for people (terminal or serial console, 80 columns).

use std::fmt::Write;

use super::{FileStatus, Snapshot};
use crate::spool::FileState;

/// Bytes as a short human string, `12.3 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
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
    }
}

/// The whole status as text. Delivered files are summarised unless `all` is set.
pub fn render_text(s: &Snapshot, all: bool) -> String {
    let mut out = String::new();
    let count = |st: FileState| s.files.iter().filter(|f| f.state == st).count();
    let _ = writeln!(
        out,
        "sftpgw {}  up {}s  engine {}",
        s.version, s.uptime_secs, s.engine
    );
    let _ = writeln!(
        out,
        "spool  {}  free {} of {}  queue {} in {} files",
        s.spool.dir,
        human_bytes(s.spool.free_bytes),
        human_bytes(s.spool.total_bytes),
        human_bytes(s.spool.queue_bytes),
        s.spool.queue_files
    );
    let _ = writeln!(
        out,
        "drain  {} bucket {}  sent {} ({} parts)  delivered {} files",
        s.drain.endpoint,
        s.drain.bucket,
        human_bytes(s.drain.bytes_sent),
        s.drain.parts_sent,
        s.drain.files_delivered
    );
    let _ = writeln!(
        out,
        "files  receiving {}  partial {}  sealed {}  uploading {}  delivered {}  failed {}",
        count(FileState::Receiving),
        count(FileState::Partial),
        count(FileState::Sealed),
        count(FileState::Uploading),
        count(FileState::Delivered),
        count(FileState::Failed)
    );
    let shown: Vec<&FileStatus> = s
        .files
        .iter()
        .filter(|f| all || f.state != FileState::Delivered)
        .collect();
    if !shown.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "{:<16} {:>10}  {:<12} PATH", "STATE", "SIZE", "USER");
        for f in shown {
            let _ = writeln!(
                out,
                "{:<16} {:>10}  {:<12} {}",
                state_text(f),
                human_bytes(f.size),
                f.user,
                f.path
            );
            if let Some(e) = &f.error {
                let _ = writeln!(out, "{:<16} {}", "", e);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{DrainSummary, SpoolUsage};

    fn file(state: FileState, error: Option<&str>) -> FileStatus {
        FileStatus {
            user: "u".into(),
            path: "/a/b.bin".into(),
            state,
            size: 40 << 20,
            key: "p/u/a/b.bin".into(),
            parts_done: 2,
            parts_total: 3,
            error: error.map(String::from),
            mtime_unix: 0,
        }
    }

    #[test]
    fn text_shows_parts_progress_and_failure_reason() {
        let s = Snapshot {
            version: "0.1.0".into(),
            uptime_secs: 5,
            engine: "pwrite".into(),
            spool: SpoolUsage {
                dir: "/s".into(),
                total_bytes: 1 << 30,
                free_bytes: 1 << 29,
                queue_bytes: 0,
                queue_files: 0,
            },
            drain: DrainSummary {
                endpoint: "e".into(),
                bucket: "b".into(),
                bytes_sent: 0,
                parts_sent: 0,
                files_delivered: 0,
            },
            files: vec![
                file(FileState::Uploading, None),
                file(FileState::Failed, Some("AccessDenied")),
                file(FileState::Delivered, None),
                file(FileState::Receiving, None),
            ],
            shaping: Default::default(),
        };
        let text = render_text(&s, false);
        assert!(text.contains("uploading 2/3"), "{text}");
        assert!(
            text.contains("receiving, 2 parts sent"),
            "early parts show: {text}"
        );
        assert!(
            text.contains("FAILED") && text.contains("AccessDenied"),
            "{text}"
        );
        assert!(text.contains("delivered 1"), "{text}");
        assert_eq!(
            text.matches("/a/b.bin").count(),
            3,
            "delivered files are summarised: {text}"
        );
        assert_eq!(render_text(&s, true).matches("/a/b.bin").count(), 4);
    }

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(16 << 20), "16.0 MiB");
    }
}
