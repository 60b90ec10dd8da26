//! The one boundary between the drain and S3: the [`ObjectStore`] trait.
//!
//! The real implementation is [`crate::drain::aws::AwsStore`] (aws-sdk-s3); the fault-injecting
//! wrapper [`crate::drain::fault::FaultStore`] wraps any store for tests. Drain logic is written
//! once, generic over this trait. Errors are classified here, once, so that no retry policy ever
//! matches strings.
//!
//! Owns the trait, its request and answer types and the error kinds. Uses nothing of the
//! crate but `num`: every other part of the drain depends on it, not the reverse.

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::num::u64_from_usize;

/// What kind of failure an S3 call had; the drain's policy keys on this alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum S3ErrorKind {
    /// Connection refused/reset, timeouts, 5xx, SlowDown, throttling: retry forever with backoff.
    Transient,
    /// AccessDenied, NoSuchBucket, InvalidAccessKeyId, other 4xx: the file becomes `failed`.
    Permanent,
    /// The multipart upload id is unknown to the store (expired, purged, or already completed).
    NoSuchUpload,
    /// HEAD of a missing object (404).
    NotFound,
    /// 412: a conditional write (`If-None-Match: *`, `overwrite = "never"`) found the key
    /// taken. Settled by HEAD: ours, the same bytes, or a conflict.
    PreconditionFailed,
}

/// An error from one S3 operation, already classified.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation}: {message}")]
pub struct S3Error {
    /// What the drain does about it (retry, fail, restart, settle).
    pub kind: S3ErrorKind,
    /// The S3 operation, e.g. "UploadPart".
    pub operation: &'static str,
    /// What the service (or the transport) said, for humans: code and message.
    pub message: String,
}

impl S3Error {
    /// An error of `kind` from `operation`, with the message for humans.
    pub fn new(kind: S3ErrorKind, operation: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            operation,
            message: message.into(),
        }
    }

    /// Whether the drain retries it (with backoff, forever): a transient error.
    pub fn is_retryable(&self) -> bool {
        self.kind == S3ErrorKind::Transient
    }
}

/// User metadata we attach to every object (`x-amz-meta-*`), lower-case names without the prefix.
pub type ObjectMetadata = BTreeMap<String, String>;

/// Metadata key holding the hex SHA-256 of the whole file.
pub const META_SHA256: &str = "sha256";
/// Metadata key holding our upload token, which settles an ambiguous Complete by HEAD.
pub const META_TOKEN: &str = "sftpgw-token";
/// Metadata key holding the SFTP user who uploaded the file.
pub const META_UPLOADER: &str = "uploader";
/// Metadata key holding when the file was sealed (RFC 3339 UTC), where known at upload start.
pub const META_SEALED_AT: &str = "sealed-at";
/// Metadata key holding the name of the box that delivered the object.
pub const META_BOX: &str = "box";

/// What HEAD tells about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHead {
    /// Content-Length of the object, in bytes.
    pub size: u64,
    /// Its user metadata (`x-amz-meta-*`), names lower-case without the prefix.
    pub metadata: ObjectMetadata,
    /// As the store answered it, quotes removed.
    pub etag: Option<String>,
    /// Where the bucket has versioning.
    pub version_id: Option<String>,
}

/// A finished part, as Complete needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedPart {
    /// 1-based part number.
    pub number: u32,
    /// The ETag UploadPart answered, quotes removed.
    pub etag: String,
    /// The part's CRC32C and length, for an upload created with a full-object CRC32C: the
    /// object's is combined from them (no pass over the file), and Complete sends both.
    /// `None` for an upload created without one.
    pub crc32c: Option<(u32, u64)>,
}

/// The full-object CRC32C of an object made of `parts` (in part order), if every part has
/// its CRC32C.
pub fn full_object_crc32c(parts: &[CompletedPart]) -> Option<u32> {
    parts.iter().try_fold(None::<u32>, |whole, part| {
        let (crc, len) = part.crc32c?;
        Some(Some(match whole {
            None => crc,
            Some(whole) => crc32c::crc32c_combine(whole, crc, usize::try_from(len).ok()?),
        }))
    })?
}

/// What UploadPart returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedPart {
    /// The ETag the store answered, quotes removed.
    pub etag: String,
    /// CRC32C of the bytes the store read from the body and sent: summed while streaming a
    /// file range, so that the drain need not read the part a second time for it.
    pub crc32c: u32,
}

/// An open multipart upload as ListMultipartUploads reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpload {
    /// The full object key it was created for.
    pub key: String,
    /// Its id, as CreateMultipartUpload returned it.
    pub upload_id: String,
}

/// The body of a PutObject or UploadPart request.
///
/// The drain sends [`Body::File`]: a range of a sealed spool file, which the store streams
/// through a small buffer and opens again on every attempt, so memory does not grow with the
/// part size and every request can be retried. [`Body::Bytes`] is for small in-memory bodies
/// (tests, tools).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Bytes in memory, sent as they are.
    Bytes(Bytes),
    /// A range of a spool file, streamed from the file on every attempt.
    File(FileRange),
}

/// `len` bytes of the file at `path`, from `offset`. The range must not change while a request
/// that names it may still be sent: sealed spool files never do, and the early drain only
/// sends ranges below a receiving file's append frontier (and checks them again at the seal).
///
/// `open`, when set, is read instead of opening `path`: a receiving file is renamed when it is
/// sealed, and a part being sent must not lose its file then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRange {
    /// The spool file (sealed, or receiving for the early drain).
    pub path: PathBuf,
    /// First byte of the range in the file.
    pub offset: u64,
    /// Bytes in the range.
    pub len: u64,
    /// The file already open, read instead of `path` (see above).
    pub open: Option<OpenFile>,
}

/// A file already open, shared by the attempts of one request. Equal when it is the same open
/// file.
#[derive(Debug, Clone)]
pub struct OpenFile(pub Arc<File>);

impl PartialEq for OpenFile {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for OpenFile {}

impl Body {
    /// Length in bytes, as sent in Content-Length.
    pub fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => u64_from_usize(b.len()),
            Body::File(r) => r.len,
        }
    }

    /// Whether the body has no bytes (an empty file's PUT).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Body::Bytes(bytes)
    }
}

impl From<FileRange> for Body {
    fn from(range: FileRange) -> Self {
        Body::File(range)
    }
}

/// The S3 operations the drain needs. Keys are full object keys (prefix included).
/// Bodies are cheap to clone (a file range or shared bytes), so every request is retryable.
pub trait ObjectStore: Send + Sync + 'static {
    /// The bucket every key is in (for delivery records).
    fn bucket(&self) -> &str;

    /// Writes the whole object in one request (files below one part), with `metadata`.
    fn put_object(
        &self,
        key: &str,
        body: Body,
        metadata: &ObjectMetadata,
    ) -> impl Future<Output = Result<(), S3Error>> + Send;

    /// Whether new multipart uploads should carry a full-object CRC32C
    /// (`s3.full_object_checksum`).
    fn full_object_checksums(&self) -> bool;

    /// Returns the upload id. With `crc32c`, the upload is created for a full-object CRC32C
    /// (`x-amz-checksum-algorithm: CRC32C`, `x-amz-checksum-type: FULL_OBJECT`): its parts are
    /// then sent with `crc32c` too, and Complete gets their [`CompletedPart::crc32c`].
    fn create_multipart_upload(
        &self,
        key: &str,
        metadata: &ObjectMetadata,
        crc32c: bool,
    ) -> impl Future<Output = Result<String, S3Error>> + Send;

    /// Returns the part's ETag and the CRC32C of the body as the store read it. With
    /// `crc32c`, the request carries the part's CRC32C (`x-amz-checksum-crc32c`, read from the
    /// body before it is sent), which the store checks.
    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Body,
        crc32c: bool,
    ) -> impl Future<Output = Result<UploadedPart, S3Error>> + Send;

    /// Makes the object of `parts` (in part order), closing the upload. `NoSuchUpload` may
    /// mean it was completed already (an earlier answer lost): the drain settles that by HEAD.
    fn complete_multipart_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> impl Future<Output = Result<(), S3Error>> + Send;

    /// Drops an open upload and its parts; `NoSuchUpload` if it is gone already.
    fn abort_multipart_upload(
        &self,
        key: &str,
        upload_id: &str,
    ) -> impl Future<Output = Result<(), S3Error>> + Send;

    /// `Ok(None)` when the object does not exist.
    fn head_object(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<ObjectHead>, S3Error>> + Send;

    /// All open multipart uploads whose key starts with `prefix` (all pages).
    fn list_multipart_uploads(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<OpenUpload>, S3Error>> + Send;
}
