//! The log line format under systemd: journald adds its own timestamp and reads a leading
//! `<N>` as the syslog priority of the line (`SyslogLevelPrefix=yes`, the default), so each
//! line is `<N>LEVEL target: message field=value ...`, without colours or a time of ours.
//!
//! A plain fmt layer was chosen over the `tracing-journald` crate: it needs no extra crate
//! (binary size), keeps the fields as `key=value` text that `journalctl -u sftpgw` shows as they
//! are, and writes to stderr, which is the same stream outside systemd.
//!
//! It uses `names` to escape and writes to stderr; it may not touch any other module.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::registry::LookupSpan;

/// Syslog priority of a tracing level (sd-daemon(3)).
pub fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// The journald line format: the default fields without time or colour, behind `<N>`.
pub struct Journald {
    inner: format::Format<format::Full, ()>,
}

impl Default for Journald {
    fn default() -> Self {
        Self {
            inner: format::Format::default().without_time().with_ansi(false),
        }
    }
}

impl<S, N> FormatEvent<S, N> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        self.inner.format_event(ctx, writer, event)
    }
}

/// Standard error for log lines, each with hostile characters escaped (`crate::names`): a
/// file name from the LAN cannot start a line of its own or send escape sequences to whoever
/// reads the log.
pub struct EscapingStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for EscapingStderr {
    type Writer = EscapingWriter;

    fn make_writer(&'a self) -> Self::Writer {
        EscapingWriter
    }
}

/// Writes one formatted event (the fmt layer writes each in one call) to standard error.
pub struct EscapingWriter;

impl std::io::Write for EscapingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let line = crate::names::escaped_line(&text);
        std::io::stderr().write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journald_lines_start_with_the_priority_and_have_no_time_or_colour() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("sink").extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .event_format(Journald::default())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(user = "alice", "disk slow");
            tracing::info!("fine");
        });
        let text = String::from_utf8(sink.0.lock().expect("sink").clone()).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("<4> WARN ") || lines[0].starts_with("<4>WARN "),
            "{text}"
        );
        assert!(
            lines[0].contains("disk slow user=\"alice\"") || lines[0].contains("user=\"alice\""),
            "{text}"
        );
        assert!(lines[1].starts_with("<6>"), "{text}");
        assert!(!text.contains('\x1b'), "no colour codes: {text:?}");
        assert!(!text.contains("Z "), "no timestamp: {text}");
    }
}
