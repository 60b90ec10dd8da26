//! What every S3 response tells about the store besides its answer: whether the store is
//! reachable (the outcome of the last request) and the clock skew between the S3 server and
//! this box, from the `Date` header of every response.
//!
//! SigV4 signatures are refused beyond 15 minutes of skew (`RequestTimeTooSkewed`), and a box
//! without an RTC or NTP may boot with any clock: the skew is what the shaper's "clock
//! unsynchronised" fallback and the status screen need. It is captured by an aws-sdk-s3
//! interceptor ([`S3Observer::interceptor`]) on every attempt, so no call site has to care.
//!
//! The skew is published on a [`tokio::sync::watch`] channel ([`S3Observer::subscribe_skew`]):
//! whoever needs it (the shaper) waits for changes there.
//!
//! Owns the reachability and skew last seen. May use the SDK's interceptor API and `num`; must
//! not touch the spool, the journal or the drain loop (it only observes).

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::date_time::{DateTime, Format};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::num::f64_from_u64;

/// The `Date` header has whole seconds and is truncated: on average it is half a second
/// behind the moment the server answered. Adding this centres the estimate.
const DATE_HEADER_RESOLUTION_HALF_SECS: f64 = 0.5;

/// One measurement of the S3 server's clock against ours.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ServerClockSkew {
    /// S3 `Date` − our clock, seconds (positive: our clock is behind).
    pub skew_secs: f64,
    /// When it was measured, by our clock.
    pub measured_unix: u64,
}

/// The outcome of the last S3 request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct S3Reachability {
    /// The last attempt got an HTTP response (any status: even an error answer means the
    /// store is there). `None` before the first request.
    pub reachable: Option<bool>,
    /// When the last attempt ended.
    pub last_request_unix: Option<u64>,
    /// Why the last attempt got no response (connect refused, timeout, DNS, TLS).
    pub last_error: Option<String>,
}

/// Shared between the interceptor (writer) and status (reader).
#[derive(Debug)]
pub struct S3Observer {
    reachability: Mutex<S3Reachability>,
    skew: watch::Sender<Option<ServerClockSkew>>,
}

impl Default for S3Observer {
    fn default() -> Self {
        Self {
            reachability: Mutex::new(S3Reachability::default()),
            skew: watch::channel(None).0,
        }
    }
}

impl S3Observer {
    /// An observer that has seen no response yet (reachability unknown, no skew).
    pub fn new() -> Arc<S3Observer> {
        Arc::new(Self::default())
    }

    /// The interceptor to register on the S3 client's config.
    pub fn interceptor(self: &Arc<Self>) -> ObserveResponses {
        ObserveResponses(self.clone())
    }

    /// What the last response (or failed attempt) said about reaching the store.
    pub fn reachability(&self) -> S3Reachability {
        self.reachability
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The latest skew measurement, if any response carried a `Date` header yet.
    pub fn skew(&self) -> Option<ServerClockSkew> {
        *self.skew.borrow()
    }

    /// A receiver that sees every new skew measurement: the hook for the shaper, e.g.
    /// `while rx.changed().await.is_ok() { if let Some(s) = *rx.borrow() { shaper.note_server_clock_skew(s.skew_secs) } }`.
    pub fn subscribe_skew(&self) -> watch::Receiver<Option<ServerClockSkew>> {
        self.skew.subscribe()
    }

    fn note(&self, outcome: Result<Option<&str>, String>) {
        let now = SystemTime::now();
        let now_unix = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if let Ok(Some(date)) = outcome
            && let Some(skew_secs) = skew_from_date(date, now)
        {
            self.skew.send_replace(Some(ServerClockSkew {
                skew_secs,
                measured_unix: now_unix,
            }));
        }
        let mut r = self.reachability.lock().unwrap_or_else(|p| p.into_inner());
        r.last_request_unix = Some(now_unix);
        match outcome {
            Ok(_) => {
                r.reachable = Some(true);
                r.last_error = None;
            }
            Err(e) => {
                r.reachable = Some(false);
                r.last_error = Some(e);
            }
        }
    }
}

/// `Date` − `now` in seconds, centred for the header's whole-second resolution.
pub fn skew_from_date(date: &str, now: SystemTime) -> Option<f64> {
    let server = DateTime::from_str(date, Format::HttpDate).ok()?;
    let ours = DateTime::from(now);
    let secs = server.secs() - ours.secs();
    // Whole seconds as a float by magnitude and sign (a skew is far below 2^53 s).
    let secs = match f64_from_u64(secs.unsigned_abs()) {
        magnitude if secs < 0 => -magnitude,
        magnitude => magnitude,
    };
    let diff = secs + (f64::from(server.subsec_nanos()) - f64::from(ours.subsec_nanos())) / 1e9;
    Some(diff + DATE_HEADER_RESOLUTION_HALF_SECS)
}

/// The aws-sdk-s3 interceptor of [`S3Observer`]: runs after every attempt.
#[derive(Debug)]
pub struct ObserveResponses(Arc<S3Observer>);

impl Intercept for ObserveResponses {
    fn name(&self) -> &'static str {
        "sftpgw::ObserveResponses"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(response) = context.response() {
            self.0.note(Ok(response.headers().get("date")));
        } else if let Some(Err(e)) = context.output_or_error() {
            // No response: only a transport failure (connect, timeout, TLS) says the store
            // cannot be reached; a body we failed to read from the spool does not.
            if e.is_timeout_error() || e.is_connector_error() {
                self.0.note(Err(format!("{e}")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn skew_is_the_date_header_minus_our_clock() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
        // Sun, 06 Nov 1994 08:49:37 GMT is 784111777.
        let s = skew_from_date("Sun, 06 Nov 1994 08:49:37 GMT", now).expect("parse");
        assert!((s - 0.5).abs() < 1e-9, "{s}");
        let later = skew_from_date("Sun, 06 Nov 1994 08:59:37 GMT", now).expect("parse");
        assert!((later - 600.5).abs() < 1e-9, "{later}");
        assert_eq!(skew_from_date("not a date", now), None);
    }

    #[test]
    fn reachability_follows_the_last_attempt() {
        let o = S3Observer::default();
        assert_eq!(o.reachability().reachable, None);
        o.note(Err("connection refused".into()));
        assert_eq!(o.reachability().reachable, Some(false));
        let rx = o.subscribe_skew();
        o.note(Ok(Some("Sun, 06 Nov 1994 08:49:37 GMT")));
        assert_eq!(o.reachability().reachable, Some(true));
        assert!(rx.has_changed().expect("open"));
        assert!(o.skew().is_some_and(|s| s.skew_secs < -1e6));
    }
}
