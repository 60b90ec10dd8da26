//! `sftpgw report`: the delivery log (`spool::deliveries`) filtered by time and user, as CSV or
//! JSON lines, one line per delivered file. It reads the log files of the spool directory, so
//! it works whether the daemon runs or not.
//!
//! May read `spool::deliveries`' log files; may not open the spool or its journal, and writes only
//! to its output.

use std::io::{self, Write};
use std::path::Path;

use crate::spool::deliveries::{self, Delivery};

/// What to report.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Deliveries at or after this time (RFC 3339 UTC, as [`parse_time`] gives it).
    pub since: Option<String>,
    /// Deliveries before this time.
    pub until: Option<String>,
    /// Only this user's deliveries.
    pub user: Option<String>,
}

impl Filter {
    fn keeps(&self, d: &Delivery) -> bool {
        // RFC 3339 UTC times of one format compare as strings.
        self.since.as_ref().is_none_or(|s| d.delivered_at >= *s)
            && self.until.as_ref().is_none_or(|u| d.delivered_at < *u)
            && self.user.as_ref().is_none_or(|u| d.user == *u)
    }
}

/// How `sftpgw report` writes each delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per line, as the delivery log holds it.
    Json,
}

/// A time on the command line, `2026-12-06` (midnight UTC) or RFC 3339 with any offset
/// (`2026-12-06T08:00:00+01:00`), as the log writes it: RFC 3339 UTC to the second.
pub fn parse_time(text: &str) -> Result<String, String> {
    let at = match text.parse::<jiff::Timestamp>() {
        Ok(t) => t,
        Err(_) => text
            .parse::<jiff::civil::Date>()
            .and_then(|d| d.to_zoned_datetime(jiff::tz::TimeZone::UTC))
            .map(|z| z.timestamp())
            .map_err(|_| {
                format!("{text:?} is not a date (2026-12-06) or a time (2026-12-06T08:00:00Z)")
            })?,
    };
    Ok(format!("{at:.0}"))
}

/// The CSV header, in the order of [`csv_line`].
pub const CSV_HEADER: &str =
    "delivered_at,user,path,bucket,key,size,sha256,etag,version_id,sealed_at,box,id";

/// One delivery as a CSV line (RFC 4180 quoting). By hand: one escaping rule, not worth a
/// dependency in the firmware.
pub fn csv_line(d: &Delivery) -> String {
    let field = |s: &str| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_owned()
        }
    };
    let opt = |s: &Option<String>| field(s.as_deref().unwrap_or(""));
    [
        field(&d.delivered_at),
        field(&d.user),
        field(&d.path),
        field(&d.bucket),
        field(&d.key),
        d.size.to_string(),
        opt(&d.sha256),
        opt(&d.etag),
        opt(&d.version_id),
        field(&d.sealed_at),
        field(&d.box_name),
        d.id.to_string(),
    ]
    .join(",")
}

/// Writes the report of the spool in `spool_dir` to `out`; returns how many deliveries.
pub fn write(
    spool_dir: &Path,
    filter: &Filter,
    format: Format,
    out: &mut impl Write,
) -> io::Result<usize> {
    let found = deliveries::read(spool_dir, |d| filter.keeps(d))?;
    if format == Format::Csv {
        writeln!(out, "{CSV_HEADER}")?;
    }
    for d in &found {
        match format {
            Format::Csv => writeln!(out, "{}", csv_line(d))?,
            Format::Json => writeln!(
                out,
                "{}",
                serde_json::to_string(d).map_err(io::Error::other)?
            )?,
        }
    }
    Ok(found.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(at: &str, user: &str, path: &str) -> Delivery {
        Delivery {
            delivered_at: at.into(),
            user: user.into(),
            path: path.into(),
            bucket: "b".into(),
            key: format!("p/{user}{path}"),
            size: 3,
            sha256: None,
            etag: Some("e".into()),
            version_id: None,
            sealed_at: at.into(),
            box_name: "box".into(),
            id: 1,
        }
    }

    #[test]
    fn times_on_the_command_line_become_the_logs_utc_form() {
        assert_eq!(parse_time("2026-12-06").unwrap(), "2026-12-06T00:00:00Z");
        assert_eq!(
            parse_time("2026-12-06T08:00:00+01:00").unwrap(),
            "2026-12-06T07:00:00Z"
        );
        assert_eq!(
            parse_time("2026-12-06T08:00:00.5Z").unwrap(),
            "2026-12-06T08:00:00Z"
        );
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn the_filter_keeps_the_half_open_interval_and_the_user() {
        let f = Filter {
            since: Some("2026-12-06T00:00:00Z".into()),
            until: Some("2026-12-07T00:00:00Z".into()),
            user: Some("alice".into()),
        };
        assert!(f.keeps(&delivery("2026-12-06T00:00:00Z", "alice", "/a")));
        assert!(f.keeps(&delivery("2026-12-06T23:59:59Z", "alice", "/a")));
        assert!(!f.keeps(&delivery("2026-12-07T00:00:00Z", "alice", "/a")));
        assert!(!f.keeps(&delivery("2026-12-05T23:59:59Z", "alice", "/a")));
        assert!(!f.keeps(&delivery("2026-12-06T12:00:00Z", "bob", "/a")));
    }

    #[test]
    fn csv_quotes_commas_quotes_and_newlines() {
        let d = delivery("2026-12-06T00:00:00Z", "alice", "/a, \"b\"\nc");
        let line = csv_line(&d);
        assert!(
            line.starts_with("2026-12-06T00:00:00Z,alice,\"/a, \"\"b\"\"\nc\",b,"),
            "{line}"
        );
        assert_eq!(CSV_HEADER.split(',').count(), 12);
    }
}
