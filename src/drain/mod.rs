//! The drain: moves sealed files from the spool to S3 with crash-safe multipart uploads.
//!
//! Owns everything between a sealed spool file and its object in the bucket: the store trait
//! and its aws-sdk-s3 implementation (`store`, `aws`), the delivery loop (`upload`), the WAN
//! shaper, the automatic retry of failed files, the manifests, and a fault-injecting store for
//! tests. It may use `spool`, `journal`, `limits`, `num`, `names`, `telemetry`, `events`, and
//! `config` for its own settings; it must not touch `sftp`, `status`, `console` or `gateway`
//! (they use the drain, never the reverse). One exception remains: the shaper builds the
//! status screen's `ShapingStatus` from `status`.

pub mod aws;
pub mod failed_retry;
pub mod fault;
pub mod manifests;
pub mod observer;
pub mod shaper;
pub mod store;
pub mod upload;
