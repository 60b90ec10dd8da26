//! The diagnostics bundle field-ops hand to support: one `.tar.gz` with the configuration
//! (secrets redacted), recent logs, the daemon's status (or a note that it is down), the
//! network report, `uname -a` and the uptime.
//!
//! Where it goes: the USB stick mounted at [`USB_MOUNT_DIR`] if there is one, else a
//! directory the ops user can write (`<spool dir>/../diagnostics` by default: next to the
//! spool, never inside it, so the drain does not pick it up). Only the newest
//! [`BUNDLES_COUNT_MAX`] bundles are kept there, because that directory shares its file system
//! with the spool.
//!
//! It packs and writes only what its caller gathered, plus logs and system facts it reads itself;
//! it may not touch the daemon's state, and reads the configuration file without ever writing it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use crate::num::u64_from_usize;
/// Where the privileged side mounts a removable USB partition (writable by the ops user).
pub const USB_MOUNT_DIR: &str = "/media/usb";
/// Bundles kept in the fallback directory; older ones are deleted when a new one is written.
pub const BUNDLES_COUNT_MAX: usize = 8;
/// Log lines put in the bundle.
pub const LOG_LINES_COUNT_MAX: usize = 2000;
/// Where helper programs are looked for: a fixed path, whatever the login set (busybox login
/// gives unprivileged users only `/bin:/usr/bin`, and `logread` lives in `/sbin`).
const HELPER_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// A helper program (journalctl, uname, ...) may take this long.
const COMMAND_TIMEOUT_SECS: u64 = 20;
/// At most this much output of one helper program goes in the bundle.
const COMMAND_OUTPUT_BYTES_MAX: usize = 4 << 20;
const BUNDLE_PREFIX: &str = "sftpgw-diag-";
const BUNDLE_SUFFIX: &str = ".tar.gz";
const REDACTED: &str = "\"<redacted>\"";

/// Whether a configuration key holds a secret: `secret_access_key`, `password_hash`, and any
/// future key named like a secret, password, token or private key.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.trim().trim_matches(['"', '\'']).to_ascii_lowercase();
    ["secret", "password", "token", "private"]
        .iter()
        .any(|w| k.contains(w))
}

/// The configuration file's text with every secret value replaced by `"<redacted>"`.
///
/// Line by line first (comments and layout stay, as support wants to see the file as it
/// is). If the file parses as TOML, every secret string in it is then looked for in the
/// result; one that survived (an inline table, a multi-line string) makes the whole file be
/// written out again from its parsed and redacted form instead.
pub fn redact_config(text: &str) -> String {
    let by_line: String = text
        .lines()
        .map(|line| match line.split_once('=') {
            Some((key, _)) if !line.trim_start().starts_with('#') && is_secret_key(key) => {
                format!("{}= {REDACTED}", key)
            }
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let Ok(mut table) = text.parse::<toml::Table>() else {
        return format!(
            "# The file does not parse as TOML: secrets were redacted line by line.\n{by_line}\n"
        );
    };
    let mut secrets = Vec::new();
    redact_table(&mut table, &mut secrets);
    if secrets.iter().all(|s| !by_line.contains(s.as_str())) {
        return by_line + "\n";
    }
    let rewritten = toml::to_string(&table).unwrap_or_default();
    format!("# Rewritten from the parsed file to redact every secret.\n{rewritten}")
}

/// Replaces the secret values of a TOML tree and collects the non-empty ones.
fn redact_table(table: &mut toml::Table, secrets: &mut Vec<String>) {
    for (key, value) in table.iter_mut() {
        if is_secret_key(key) {
            collect_strings(value, secrets);
            *value = toml::Value::String("<redacted>".into());
        } else {
            redact_value(value, secrets);
        }
    }
}

fn redact_value(value: &mut toml::Value, secrets: &mut Vec<String>) {
    match value {
        toml::Value::Table(t) => redact_table(t, secrets),
        toml::Value::Array(items) => items.iter_mut().for_each(|v| redact_value(v, secrets)),
        _ => {}
    }
}

fn collect_strings(value: &toml::Value, out: &mut Vec<String>) {
    match value {
        toml::Value::String(s) if !s.is_empty() => out.push(s.clone()),
        toml::Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        toml::Value::Table(t) => t.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

/// What goes in a bundle, gathered by the caller (the console knows the daemon and the
/// network; this module only packs and writes).
pub struct BundleContents {
    /// The configuration file, copied into the bundle with its secrets masked.
    pub config_path: PathBuf,
    /// The daemon's status as JSON, or why there is none.
    pub status: Result<String, String>,
    /// The network page (addresses, route, DNS, endpoint check) as the console shows it.
    pub network_report: String,
}

/// Where a bundle is written: the USB stick if mounted, else `fallback`.
pub fn target_dir(fallback: &Path) -> (PathBuf, bool) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let usb = mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(USB_MOUNT_DIR));
    if usb {
        (PathBuf::from(USB_MOUNT_DIR), true)
    } else {
        (fallback.to_owned(), false)
    }
}

/// Writes the bundle into `dir` (durably: file fsynced, renamed, directory fsynced, so a
/// stick can be pulled once the path is printed) and returns its path.
pub async fn write_bundle(
    dir: &Path,
    hostname: &str,
    contents: &BundleContents,
    prune: bool,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
    })?;
    let stamp = utc_stamp(SystemTime::now());
    let host: String = hostname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = format!("{BUNDLE_PREFIX}{host}-{stamp}");
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let config = match std::fs::read_to_string(&contents.config_path) {
        Ok(text) => redact_config(&text),
        Err(e) => format!("# cannot read {}: {e}\n", contents.config_path.display()),
    };
    files.push(("config.toml".into(), config.into_bytes()));
    let status = match &contents.status {
        Ok(json) => ("status.json", json.clone()),
        Err(why) => ("status.txt", format!("{why}\n")),
    };
    files.push((status.0.into(), status.1.into_bytes()));
    files.push(("logs.txt".into(), logs().await.into_bytes()));
    files.push((
        "network.txt".into(),
        contents.network_report.clone().into_bytes(),
    ));
    files.push(("system.txt".into(), system_info().await.into_bytes()));

    let path = dir.join(format!("{name}{BUNDLE_SUFFIX}"));
    let tmp = dir.join(format!(".{name}{BUNDLE_SUFFIX}.tmp"));
    let result = pack(&tmp, &name, &files).and_then(|()| {
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(std::io::Error::new(
            e.kind(),
            format!("cannot write {}: {e}", path.display()),
        ));
    }
    if prune {
        prune_old_bundles(dir, BUNDLES_COUNT_MAX);
    }
    Ok(path)
}

fn pack(path: &Path, prefix: &str, files: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(path)?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mtime = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(u64_from_usize(data.len()));
        header.set_mode(0o640);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, format!("{prefix}/{name}"), data.as_slice())?;
    }
    let gz = tar.into_inner()?;
    let mut file = gz.finish()?;
    file.flush()?;
    file.sync_all()
}

/// Deletes all but the newest `keep` bundles in `dir` (names sort by time).
fn prune_old_bundles(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(BUNDLE_PREFIX) && n.ends_with(BUNDLE_SUFFIX))
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep);
    for n in names.into_iter().take(excess) {
        let _ = std::fs::remove_file(dir.join(n));
    }
}

/// `20261127T052452Z`: sortable, and valid on a FAT stick (no colons).
fn utc_stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

/// Output of a program, or a line saying why there is none. Its own process group, so that
/// Ctrl-C on the console does not kill it halfway.
async fn command_output(program: &str, args: &[&str]) -> Result<String, String> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .env("PATH", HELPER_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let out = tokio::time::timeout(
        Duration::from_secs(COMMAND_TIMEOUT_SECS),
        child.wait_with_output(),
    )
    .await
    .map_err(|_| format!("{program}: no result within {COMMAND_TIMEOUT_SECS} s"))?
    .map_err(|e| format!("{program}: {e}"))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    if text.len() > COMMAND_OUTPUT_BYTES_MAX {
        let mut cut = text.len() - COMMAND_OUTPUT_BYTES_MAX;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text = text.split_off(cut);
    }
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        text.push_str(&format!(
            "\n({program} exited {}: {})\n",
            out.status,
            err.trim()
        ));
    }
    Ok(text)
}

/// The systemd journal of this boot if there is one, else busybox syslogd's ring buffer
/// (the QEMU test image).
async fn logs() -> String {
    let lines = LOG_LINES_COUNT_MAX.to_string();
    let journal = command_output("journalctl", &["-b", "-n", &lines, "--no-pager"]).await;
    let (source, result) = match journal {
        Ok(text) => ("journalctl -b", Ok(text)),
        Err(journal_error) => match command_output("logread", &[]).await {
            Ok(text) => {
                // logread has no line limit of its own: keep the last lines.
                let all: Vec<&str> = text.lines().collect();
                let start = all.len().saturating_sub(LOG_LINES_COUNT_MAX);
                ("logread", Ok(all[start..].join("\n") + "\n"))
            }
            Err(e) => ("none", Err(format!("{journal_error}; {e}"))),
        },
    };
    match result {
        Ok(text) => format!("# source: {source}\n{text}"),
        Err(e) => format!("# no logs: {e}\n"),
    }
}

async fn system_info() -> String {
    let mut out = String::new();
    for (title, program, args) in [
        ("uname -a", "uname", &["-a"][..]),
        ("uptime", "uptime", &[][..]),
        ("df -k", "df", &["-k"][..]),
    ] {
        let text = command_output(program, args)
            .await
            .unwrap_or_else(|e| e + "\n");
        out.push_str(&format!("$ {title}\n{text}\n"));
    }
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    out.push_str(&format!("/proc/uptime: {uptime}"));
    out.push_str(&format!(
        "written: {}\n",
        humantime::format_rfc3339_seconds(SystemTime::now())
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"# site config
[s3]
bucket = "uploads"
access_key_id = "AKIDEXAMPLE"
secret_access_key = "wJalrXUtnFEMI/K7MDENG"   # the secret
[[users]]
name = "partner1"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"
"#;

    #[test]
    fn redacted_config_keeps_layout_and_loses_every_secret() {
        let out = redact_config(CONFIG);
        assert!(!out.contains("wJalrXUtnFEMI"), "{out}");
        assert!(!out.contains("argon2id"), "{out}");
        assert!(out.contains("# site config"), "comments stay: {out}");
        assert!(out.contains("access_key_id = \"AKIDEXAMPLE\""), "{out}");
        assert!(out.contains("secret_access_key = \"<redacted>\""), "{out}");
        assert!(out.contains("password_hash = \"<redacted>\""), "{out}");
    }

    #[test]
    fn secrets_in_inline_tables_and_multi_line_strings_are_redacted_too() {
        let text = "users = [{ name = \"a\", password_hash = \"HASH-ONE\" }]\n\
            [s3]\nsecret_access_key = \"\"\"\nSECRET-TWO\"\"\"\n";
        let out = redact_config(text);
        assert!(
            !out.contains("HASH-ONE") && !out.contains("SECRET-TWO"),
            "{out}"
        );
        let bad = "secret_access_key = \"S3CR3T\"\n[[[broken\n";
        let out = redact_config(bad);
        assert!(
            !out.contains("S3CR3T") && out.contains("does not parse"),
            "{out}"
        );
    }

    #[test]
    fn old_bundles_beyond_the_limit_are_pruned_oldest_first() {
        let dir = tempfile::tempdir().expect("tmp");
        for i in 0..5 {
            let name = format!("{BUNDLE_PREFIX}h-2026010{i}T000000Z{BUNDLE_SUFFIX}");
            std::fs::write(dir.path().join(name), b"x").expect("write");
        }
        std::fs::write(dir.path().join("other.txt"), b"x").expect("write");
        prune_old_bundles(dir.path(), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                "other.txt".to_owned(),
                format!("{BUNDLE_PREFIX}h-20260103T000000Z{BUNDLE_SUFFIX}"),
                format!("{BUNDLE_PREFIX}h-20260104T000000Z{BUNDLE_SUFFIX}"),
            ]
        );
    }
}
