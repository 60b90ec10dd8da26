//! The banner above the serial console's login prompt (`sftpgw banner`): the box's name, its
//! addresses, its health and its queue, so that someone at the cable sees at a glance whether
//! the box is fine without logging in.
//!
//! The file is rewritten only when the text changes (atomically: a getty may read it at any
//! moment), and the caller learns whether it did, so that a getty is told to reprint its
//! prompt only then (`agetty --reload` on the Buildroot image). The text holds no uptime or
//! clock, so an idle box does not reprint its prompt. It avoids `\` and `%`, which getty
//! programs treat as escapes in issue files.
//!
//! A client of the control socket like the console: it may use `config`, `status` and the network
//! page, and may not touch the spool, the drain or the sessions.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use super::network::InterfaceAddress;
use crate::status::render::human_bytes;
use crate::status::{HealthLevel, Snapshot};

/// Addresses shown on the banner at most.
const BANNER_ADDRESSES_COUNT_MAX: usize = 4;

/// What the banner is made of, gathered by the caller.
pub struct BannerFacts {
    /// The box's host name, the banner's first line.
    pub hostname: String,
    /// The box's addresses; the banner shows the first few that the LAN can reach.
    pub addresses: Vec<InterfaceAddress>,
    /// The daemon's snapshot, or why there is none.
    pub daemon: Result<Snapshot, String>,
}

/// The health line: OK, or what is wrong in a few words.
pub fn health(daemon: &Result<Snapshot, String>) -> String {
    let s = match daemon {
        Ok(s) => s,
        Err(why) => return format!("DOWN - {why}"),
    };
    // The daemon's own verdict (the first line of `sftpgw status`), plus a paused drain,
    // which is not a fault but explains a queue that does not move.
    let mut problems: Vec<String> = s.health.reasons.iter().take(2).cloned().collect();
    if s.shaping.paused {
        let why = if s.shaping.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", s.shaping.reason)
        };
        problems.push(format!("drain paused{why}"));
    }
    let level = match s.health.level {
        HealthLevel::Ok => "OK",
        HealthLevel::Degraded => "DEGRADED",
        HealthLevel::Failing => "FAILING",
    };
    if problems.is_empty() {
        level.to_owned()
    } else {
        format!("{level} - {}", problems.join(", "))
    }
}

/// The banner's text.
pub fn banner_text(f: &BannerFacts) -> String {
    let mut out = String::new();
    let _ = writeln!(out);
    let _ = writeln!(out, "sftpgw transfer box {}", f.hostname);
    let shown: Vec<String> = f
        .addresses
        .iter()
        .filter(|a| a.is_reachable_from_lan())
        .take(BANNER_ADDRESSES_COUNT_MAX)
        .map(|a| format!("{} ({})", a.address, a.interface))
        .collect();
    let _ = writeln!(
        out,
        "address: {}",
        if shown.is_empty() {
            "none (no network)".to_owned()
        } else {
            shown.join(", ")
        }
    );
    let _ = writeln!(out, "health:  {}", health(&f.daemon));
    match &f.daemon {
        Ok(s) => {
            let _ = writeln!(
                out,
                "queue:   {} file(s), {} waiting for S3",
                s.spool.queue_files,
                human_bytes(s.spool.queue_bytes)
            );
        }
        Err(_) => {
            let _ = writeln!(out, "queue:   unknown (daemon not running)");
        }
    }
    let _ = writeln!(out, "Log in as ops for the console menu.");
    let _ = writeln!(out);
    // Getty programs read escapes in issue files; nothing here may start one.
    out.replace(['\\', '%'], "/")
}

/// Writes `text` to `path` unless the file already holds it; returns whether it wrote.
pub fn write_if_changed(path: &Path, text: &str) -> std::io::Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == text.as_bytes()) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "banner".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        std::fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(true)
}

/// How often `sftpgw banner --watch` looks at the box again.
pub const BANNER_REFRESH_SECS: u64 = 5;
/// How long the daemon may take to answer the banner's status request.
const BANNER_ANSWER_TIMEOUT_SECS: u64 = 5;

/// The banner's facts now: the configuration is read every time (it names the control
/// socket), so a fixed configuration shows without restarting the banner.
pub async fn gather(config_path: &Path) -> BannerFacts {
    let daemon = match crate::config::Config::load(config_path) {
        Err(_) => Err("configuration invalid (sftpgw check-config)".to_owned()),
        Ok(config) => {
            let req = crate::status::control::request(
                &config.control.socket,
                &crate::status::control::Request::Status,
            );
            match tokio::time::timeout(
                std::time::Duration::from_secs(BANNER_ANSWER_TIMEOUT_SECS),
                req,
            )
            .await
            {
                Ok(Ok(crate::status::control::Response::Status(s))) => Ok(*s),
                Ok(Err(crate::status::control::ControlError::Connect(..))) => {
                    Err("daemon not running".to_owned())
                }
                Ok(_) => Err("daemon answers wrongly".to_owned()),
                Err(_) => Err("daemon not answering".to_owned()),
            }
        }
    };
    BannerFacts {
        hostname: super::hostname(),
        addresses: super::network::addresses(),
        daemon,
    }
}

/// `sftpgw banner`: prints the banner, or writes it to `out` when it changed, once or (with
/// `watch`) every [`BANNER_REFRESH_SECS`], running `on_change` with `sh -c` after a change.
pub async fn run(
    config_path: &Path,
    out: Option<&Path>,
    watch: bool,
    on_change: Option<&str>,
) -> std::io::Result<()> {
    loop {
        let text = banner_text(&gather(config_path).await);
        let Some(out) = out else {
            print!("{text}");
            return Ok(());
        };
        match write_if_changed(out, &text) {
            Ok(true) => {
                if let Some(cmd) = on_change {
                    let status = tokio::process::Command::new("/bin/sh")
                        .args(["-c", cmd])
                        .status()
                        .await;
                    if !matches!(status, Ok(s) if s.success()) {
                        tracing::warn!(
                            command = cmd,
                            ?status,
                            "banner: the on-change command failed"
                        );
                    }
                }
            }
            Ok(false) => {}
            Err(e) if watch => {
                tracing::warn!(file = %out.display(), error = %e, "banner: cannot write")
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot write {}: {e}", out.display()),
                ));
            }
        }
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(BANNER_REFRESH_SECS)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Health;
    use std::net::{IpAddr, Ipv4Addr};

    fn snapshot(failed: usize) -> Snapshot {
        // Fields added later default, as they do for an older daemon's answer.
        let mut s: Snapshot = serde_json::from_value(serde_json::json!({
            "version": "0", "uptime_secs": 1, "engine": "pwrite",
            "spool": {"dir": "/s", "total_bytes": 1u64 << 30, "free_bytes": 1u64 << 29,
                      "queue_bytes": 3u64 << 20, "queue_files": 2},
            "drain": {"endpoint": "e", "bucket": "b", "bytes_sent": 0, "parts_sent": 0,
                      "files_delivered": 0},
            "files": [],
        }))
        .expect("snapshot");
        if failed > 0 {
            // What the daemon's health assessment says of failed files.
            s.health = Health {
                level: HealthLevel::Degraded,
                reasons: vec![format!(
                    "{failed} failed file(s): see below, `sftpgw retry`"
                )],
            };
        }
        s
    }

    fn facts(daemon: Result<Snapshot, String>) -> BannerFacts {
        BannerFacts {
            hostname: "box-7".into(),
            addresses: vec![
                InterfaceAddress {
                    interface: "lo".into(),
                    address: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    prefix_len: 8,
                },
                InterfaceAddress {
                    interface: "eth0".into(),
                    address: IpAddr::V4(Ipv4Addr::new(10, 0, 2, 15)),
                    prefix_len: 24,
                },
            ],
            daemon,
        }
    }

    #[test]
    fn banner_shows_name_lan_address_health_and_queue() {
        let text = banner_text(&facts(Ok(snapshot(0))));
        assert!(text.contains("sftpgw transfer box box-7"), "{text}");
        assert!(text.contains("address: 10.0.2.15 (eth0)\n"), "{text}");
        assert!(!text.contains("127.0.0.1"), "{text}");
        assert!(text.contains("health:  OK\n"), "{text}");
        assert!(
            text.contains("queue:   2 file(s), 3.0 MiB waiting"),
            "{text}"
        );
        let text = banner_text(&facts(Ok(snapshot(2))));
        assert!(
            text.contains("health:  DEGRADED - 2 failed file(s)"),
            "{text}"
        );
        let text = banner_text(&facts(Err("daemon not running".into())));
        assert!(
            text.contains("health:  DOWN - daemon not running"),
            "{text}"
        );
        assert!(text.contains("queue:   unknown"), "{text}");
    }

    #[test]
    fn banner_file_is_rewritten_only_when_the_text_changes() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("issue");
        assert!(write_if_changed(&path, "a\n").expect("first"));
        let before = std::fs::metadata(&path).expect("meta");
        assert!(!write_if_changed(&path, "a\n").expect("same"));
        let after = std::fs::metadata(&path).expect("meta");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(before.ino(), after.ino(), "not replaced when unchanged");
        assert!(write_if_changed(&path, "b\n").expect("changed"));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "b\n");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            1,
            "no temp left"
        );
    }
}
