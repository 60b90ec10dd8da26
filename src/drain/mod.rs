//! The drain: moves sealed files from the spool to S3 with crash-safe multipart uploads.

pub mod aws;
pub mod failed_retry;
pub mod fault;
pub mod manifests;
pub mod observer;
pub mod shaper;
pub mod store;
pub mod upload;
