//! Lifecycle events for `sftpgw events --follow`: every log event with an `event` field
//! (sealed, upload_started, delivered, failed, conflict, partial, expired, retried,
//! quarantined) as one JSON object, broadcast to whoever follows on the control socket.
//!
//! The events are the log's own lifecycle lines, taken by a tracing layer ([`EventTap`]) that
//! sees them whatever the log level, so that there is one place where an event is described.
//! The broadcast holds the last [`EVENTS_QUEUED_COUNT_MAX`]; a follower that falls behind is
//! told how many it missed, and nobody ever waits for a follower: ingest and drain never block.
//!
//! A tracing layer and a broadcast: it uses `spool::deliveries` only for the shared timestamp
//! format, and may not touch any state; senders never wait on it.

use std::fmt::Debug;
use std::sync::{Arc, OnceLock};

use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Events a slow follower may be behind before it misses some.
pub const EVENTS_QUEUED_COUNT_MAX: usize = 1024;

fn channel() -> &'static broadcast::Sender<Arc<str>> {
    static SENDER: OnceLock<broadcast::Sender<Arc<str>>> = OnceLock::new();
    SENDER.get_or_init(|| broadcast::channel(EVENTS_QUEUED_COUNT_MAX).0)
}

/// A new follower: every event from now on (JSON, one object each).
pub fn subscribe() -> broadcast::Receiver<Arc<str>> {
    channel().subscribe()
}

/// The tracing layer that turns lifecycle log events into broadcast JSON objects; use it
/// through [`layer`], which filters it to those events.
pub struct EventTap;

fn is_lifecycle(meta: &Metadata<'_>) -> bool {
    meta.is_event() && meta.fields().field("event").is_some()
}

/// [`EventTap`] with a filter of its own (per layer: it enables lifecycle events for itself
/// without enabling anything for the log, and the log's level does not limit it).
pub fn layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    EventTap.with_filter(tracing_subscriber::filter::filter_fn(is_lifecycle))
}

impl<S: Subscriber> Layer<S> for EventTap {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if channel().receiver_count() == 0 {
            return;
        }
        let mut fields = serde_json::Map::new();
        fields.insert(
            "at".into(),
            crate::spool::deliveries::rfc3339(crate::spool::now_unix()).into(),
        );
        fields.insert(
            "level".into(),
            event
                .metadata()
                .level()
                .as_str()
                .to_ascii_lowercase()
                .into(),
        );
        event.record(&mut JsonFields(&mut fields));
        if let Ok(text) = serde_json::to_string(&fields) {
            // No follower left meanwhile is not an error.
            let _ = channel().send(Arc::from(text));
        }
    }
}

struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    #[test]
    fn lifecycle_events_are_broadcast_as_json_and_other_events_are_not() {
        let mut rx = subscribe();
        let subscriber = tracing_subscriber::registry().with(layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(event = "sealed", id = 7u64, user = "alice", path = %"/a b.txt", "file sealed");
            tracing::info!(id = 8u64, "not a lifecycle event");
            tracing::debug!(event = "delivered", id = 7u64, "at any level");
        });
        let first: serde_json::Value =
            serde_json::from_str(&rx.try_recv().expect("one")).expect("json");
        assert_eq!(first["event"], "sealed");
        assert_eq!(first["id"], 7);
        assert_eq!(first["path"], "/a b.txt");
        assert_eq!(first["message"], "file sealed");
        assert_eq!(first["level"], "info");
        let second: serde_json::Value =
            serde_json::from_str(&rx.try_recv().expect("two")).expect("json");
        assert_eq!(second["event"], "delivered");
        assert!(rx.try_recv().is_err(), "only lifecycle events");
    }
}
