//! [`ObjectStore`] over aws-sdk-s3: client construction (without aws-config) and the one place
//! where SDK errors are classified into [`S3ErrorKind`]s.
//!
//! The client is built for a drain that retries by itself, forever, with backoff: SDK retries are
//! off, checksums are only sent where S3 requires them (many S3-compatible stores reject the SDK's
//! default CRC headers and aws-chunked bodies), the behaviour version is pinned, and every call has
//! a timeout so that a dead connection cannot stall a worker. See DESIGN.md, "Known hazards".
//!
//! Bodies that are ranges of spool files are streamed from the file ([`file_body`]), never held
//! in memory whole.
//!
//! Payloads are never signed: every request carries `x-amz-content-sha256: UNSIGNED-PAYLOAD`,
//! over plain HTTP too. SigV4 still signs the headers (who may write where); signing the payload
//! would hash every byte with SHA-256 once more. Measured with `bench/drain_bench.rs` (1 GiB,
//! 16 MiB parts, 4 in flight, embedded server over loopback HTTP): signing in-memory parts cost
//! the drain about 1.6 CPU-s against 0.85 unsigned, and the server hashes again to check; for a
//! file body the SDK would even need the part read twice (hash, then send). The integrity that
//! signing gave over plain HTTP is left to TCP: plain-HTTP endpoints are local stores on the
//! LAN or loopback, WAN stores are HTTPS, and `checksums = "always"` adds a CRC the store checks
//! for those who want one. The embedded server (s3s) accepts UNSIGNED-PAYLOAD with a
//! Content-Length, as S3 does.
//!
//! Owns the SDK client and the mapping of SDK errors; it decides nothing about retries (that is
//! `upload`'s policy, keyed on the kinds found here). May use `store`, `observer`, `shaper`
//! (to pace bodies), `config` and `limits`; must not touch the spool or the journal.

mod file_body;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumType, CompletedMultipartUpload, CompletedPart as SdkCompletedPart,
};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

use self::file_body::BodyReport;
use super::observer::S3Observer;
use super::shaper::Shaper;
use super::store::{
    Body, CompletedPart, ObjectHead, ObjectMetadata, ObjectStore, OpenUpload, S3Error, S3ErrorKind,
    UploadedPart,
};
use crate::config::{ChecksumMode, S3Config};

/// TCP (and TLS) connect.
const CONNECT_TIMEOUT_SECS: u64 = 5;
/// One attempt of a call without a body: HEAD, Create, Abort, List.
const CONTROL_ATTEMPT_TIMEOUT_SECS: u64 = 60;
/// One Complete attempt: S3 may take minutes to assemble a large object (it keeps the connection
/// alive with whitespace meanwhile).
const COMPLETE_ATTEMPT_TIMEOUT_SECS: u64 = 15 * 60;
/// One PutObject/UploadPart attempt. The drain paces bodies, so this is only a backstop against a
/// connection that dies silently after the body was sent; stalled-stream protection catches a
/// body that stops moving. It bounds the slowest usable pace: a 16 MiB part needs > 4.6 KiB/s.
const BODY_ATTEMPT_TIMEOUT_SECS: u64 = 60 * 60;
/// A body slower than 1 B/s for this long fails the attempt (the SDK's default, made explicit).
const STALLED_STREAM_GRACE_SECS: u64 = 20;
/// ListMultipartUploads pages at most; S3 returns at most 1000 uploads per page.
const LIST_PAGES_COUNT_MAX: usize = 10_000;

/// Timeouts of [`AwsStore`]; [`Default`] is what the gateway uses. Tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwsTimeouts {
    /// TCP (and TLS) connect.
    pub connect: Duration,
    /// One attempt of a call without a body: HEAD, Create, Abort, List.
    pub control_attempt: Duration,
    /// One Complete attempt (S3 may take minutes to assemble a large object).
    pub complete_attempt: Duration,
    /// One PutObject or UploadPart attempt: a backstop, the body is paced.
    pub body_attempt: Duration,
}

impl Default for AwsTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(CONNECT_TIMEOUT_SECS),
            control_attempt: Duration::from_secs(CONTROL_ATTEMPT_TIMEOUT_SECS),
            complete_attempt: Duration::from_secs(COMPLETE_ATTEMPT_TIMEOUT_SECS),
            body_attempt: Duration::from_secs(BODY_ATTEMPT_TIMEOUT_SECS),
        }
    }
}

/// The real S3 store.
#[derive(Debug, Clone)]
pub struct AwsStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    timeouts: AwsTimeouts,
    observer: Arc<S3Observer>,
    /// Paces the bodies of spool ranges (PutObject, UploadPart); `None`: unpaced.
    pacer: Option<Arc<Shaper>>,
    /// `If-None-Match: *` on PutObject and CompleteMultipartUpload (`overwrite = "never"`).
    if_none_match: Option<String>,
    /// `s3.full_object_checksum`: PutObject carries `x-amz-checksum-sha256` where the
    /// object's metadata names its SHA-256.
    full_object_checksum: bool,
}

impl AwsStore {
    /// A store for `cfg` with the gateway's timeouts; an invalid configuration (no bucket, a
    /// bad endpoint) is a `Permanent` error of operation "Configure".
    pub fn new(cfg: &S3Config) -> Result<AwsStore, S3Error> {
        Self::with_timeouts(cfg, AwsTimeouts::default())
    }

    /// [`AwsStore::new`] with other timeouts (tests shorten them).
    pub fn with_timeouts(cfg: &S3Config, timeouts: AwsTimeouts) -> Result<AwsStore, S3Error> {
        let invalid = |message: String| S3Error::new(S3ErrorKind::Permanent, "Configure", message);
        if cfg.bucket.is_empty() {
            return Err(invalid("bucket is empty".to_owned()));
        }
        if cfg.region.is_empty() {
            return Err(invalid("region is empty".to_owned()));
        }
        if let Some(url) = cfg.endpoint.as_deref()
            && !url.starts_with("https://")
            && !url.starts_with("http://")
        {
            return Err(invalid(format!(
                "endpoint {url:?} must start with http:// or https://"
            )));
        }
        let checksums = match cfg.checksums {
            ChecksumMode::WhenRequired => (
                RequestChecksumCalculation::WhenRequired,
                ResponseChecksumValidation::WhenRequired,
            ),
            ChecksumMode::Always => (
                RequestChecksumCalculation::WhenSupported,
                ResponseChecksumValidation::WhenSupported,
            ),
        };
        let credentials = Credentials::new(
            cfg.access_key_id.clone(),
            cfg.secret_access_key.clone(),
            None,
            None,
            "sftpgw-config",
        );
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::v2026_01_12())
            .region(Region::new(cfg.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(cfg.path_style)
            .request_checksum_calculation(checksums.0)
            .response_checksum_validation(checksums.1)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(timeouts.connect)
                    .build(),
            )
            .stalled_stream_protection(
                StalledStreamProtectionConfig::enabled()
                    .grace_period(Duration::from_secs(STALLED_STREAM_GRACE_SECS))
                    .build(),
            );
        if let Some(endpoint) = &cfg.endpoint {
            builder = builder.endpoint_url(endpoint.clone());
        }
        let observer = S3Observer::new();
        builder = builder.interceptor(observer.interceptor());
        Ok(AwsStore {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            bucket: cfg.bucket.clone(),
            timeouts,
            observer,
            pacer: None,
            if_none_match: (cfg.overwrite == crate::config::OverwriteMode::Never)
                .then(|| "*".to_owned()),
            full_object_checksum: cfg.full_object_checksum,
        })
    }

    /// Reachability and clock skew seen in every response of this client.
    pub fn observer(&self) -> &Arc<S3Observer> {
        &self.observer
    }

    /// A cheap request (HeadBucket) to learn whether the store answers and what its clock
    /// says, for when the drain has nothing to send. Its outcome lands in [`Self::observer`].
    pub async fn probe(&self) -> Result<(), S3Error> {
        const OP: &str = "HeadBucket";
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .customize()
            .config_override(self.attempt_timeout(self.timeouts.control_attempt))
            .send()
            .await
            .map_err(|e| classify(OP, e))?;
        Ok(())
    }

    /// Paces every upload body that streams a spool range through `shaper`'s limiter.
    #[must_use]
    pub fn with_shaper(mut self, shaper: Arc<Shaper>) -> AwsStore {
        self.pacer = Some(shaper);
        self
    }

    /// The underlying client, for tests and tools that need more than [`ObjectStore`].
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// The bucket every key is in.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Per-call override: connect timeout plus an attempt timeout of `attempt`.
    fn attempt_timeout(&self, attempt: Duration) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::config::Builder::new().timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(self.timeouts.connect)
                .operation_attempt_timeout(attempt)
                .build(),
        )
    }
}

fn sdk_metadata(metadata: &ObjectMetadata) -> Option<HashMap<String, String>> {
    if metadata.is_empty() {
        return None;
    }
    Some(
        metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

fn part_number_i32(operation: &'static str, number: u32) -> Result<i32, S3Error> {
    i32::try_from(number).map_err(|_| {
        S3Error::new(
            S3ErrorKind::Permanent,
            operation,
            format!("part number {number} out of range"),
        )
    })
}

/// The SDK body for `body`, and where it reports the CRC32C of what was read (a range of a
/// spool file is streamed: see [`file_body`]).
fn sdk_body(body: Body, pacer: Option<&Arc<Shaper>>) -> (ByteStream, Arc<BodyReport>) {
    let report = Arc::new(BodyReport::default());
    let stream = match body {
        Body::Bytes(bytes) => {
            report.set(Ok(crc32c::crc32c(&bytes)));
            ByteStream::from(bytes)
        }
        Body::File(range) => file_body::byte_stream(range, report.clone(), pacer.cloned()),
    };
    (stream, report)
}

/// A request that failed because its body could not be read from the spool: a broken spool
/// copy, which no retry mends. (If the file was removed because it was superseded, it is no
/// longer current and the drain drops the error.)
fn body_error(operation: &'static str, report: &BodyReport) -> Option<S3Error> {
    match report.outcome() {
        Some(Err(message)) => Some(S3Error::new(S3ErrorKind::Permanent, operation, message)),
        _ => None,
    }
}

fn missing(operation: &'static str, what: &str) -> S3Error {
    // A success response without a field S3 always sends: the store is broken or something in
    // between mangled the answer. Retrying cannot be worse than giving up.
    S3Error::new(
        S3ErrorKind::Transient,
        operation,
        format!("response without {what}"),
    )
}

impl ObjectStore for AwsStore {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn put_object(
        &self,
        key: &str,
        body: Body,
        metadata: &ObjectMetadata,
    ) -> Result<(), S3Error> {
        const OP: &str = "PutObject";
        let (stream, report) = sdk_body(body, self.pacer.as_ref());
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .set_if_none_match(self.if_none_match.clone())
            .set_checksum_sha256(
                self.full_object_checksum
                    .then(|| sha256_checksum(metadata))
                    .flatten(),
            )
            .set_metadata(sdk_metadata(metadata))
            .body(stream)
            .customize()
            .config_override(self.attempt_timeout(self.timeouts.body_attempt))
            // See the module doc: payloads are never signed. (Streamed bodies would not be
            // anyway; in-memory ones would.)
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| body_error(OP, &report).unwrap_or_else(|| classify(OP, e)))?;
        Ok(())
    }

    fn full_object_checksums(&self) -> bool {
        self.full_object_checksum
    }

    async fn create_multipart_upload(
        &self,
        key: &str,
        metadata: &ObjectMetadata,
        crc32c: bool,
    ) -> Result<String, S3Error> {
        const OP: &str = "CreateMultipartUpload";
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .set_checksum_algorithm(crc32c.then_some(ChecksumAlgorithm::Crc32C))
            .set_checksum_type(crc32c.then_some(ChecksumType::FullObject))
            .set_metadata(sdk_metadata(metadata))
            .customize()
            .config_override(self.attempt_timeout(self.timeouts.control_attempt))
            .send()
            .await
            .map_err(|e| classify(OP, e))?;
        out.upload_id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| missing(OP, "an upload id"))
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Body,
        crc32c: bool,
    ) -> Result<UploadedPart, S3Error> {
        const OP: &str = "UploadPart";
        let checksum = match (&body, crc32c) {
            (_, false) => None,
            (Body::Bytes(bytes), true) => Some(crc32c::crc32c(bytes)),
            (Body::File(range), true) => {
                Some(file_body::range_crc32c(range).await.map_err(|e| {
                    S3Error::new(
                        S3ErrorKind::Permanent,
                        OP,
                        format!("reading the part from the spool: {e}"),
                    )
                })?)
            }
        };
        let (stream, report) = sdk_body(body, self.pacer.as_ref());
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number_i32(OP, part_number)?)
            .set_checksum_crc32_c(checksum.map(crc32c_checksum))
            .body(stream)
            .customize()
            .config_override(self.attempt_timeout(self.timeouts.body_attempt))
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| body_error(OP, &report).unwrap_or_else(|| classify(OP, e)))?;
        let etag = out.e_tag.ok_or_else(|| missing(OP, "an ETag"))?;
        match report.outcome() {
            Some(Ok(crc32c)) => Ok(UploadedPart { etag, crc32c }),
            // A success although the body was not read to its end: whatever the store kept is
            // not known to be this range.
            _ => Err(missing(OP, "the whole body having been read")),
        }
    }

    async fn complete_multipart_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> Result<(), S3Error> {
        const OP: &str = "CompleteMultipartUpload";
        let whole = crate::drain::store::full_object_crc32c(parts);
        let parts = parts
            .iter()
            .map(|p| {
                Ok(SdkCompletedPart::builder()
                    .part_number(part_number_i32(OP, p.number)?)
                    .e_tag(&p.etag)
                    .set_checksum_crc32_c(p.crc32c.map(|(crc, _)| crc32c_checksum(crc)))
                    .build())
            })
            .collect::<Result<Vec<_>, S3Error>>()?;
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .set_if_none_match(self.if_none_match.clone())
            .set_checksum_crc32_c(whole.map(crc32c_checksum))
            .set_checksum_type(whole.map(|_| ChecksumType::FullObject))
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .customize()
            .config_override(self.attempt_timeout(self.timeouts.complete_attempt))
            .send()
            .await
            .map_err(|e| classify(OP, e))?;
        Ok(())
    }

    async fn abort_multipart_upload(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        const OP: &str = "AbortMultipartUpload";
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .customize()
            .config_override(self.attempt_timeout(self.timeouts.control_attempt))
            .send()
            .await
            .map_err(|e| classify(OP, e))?;
        Ok(())
    }

    async fn head_object(&self, key: &str) -> Result<Option<ObjectHead>, S3Error> {
        const OP: &str = "HeadObject";
        let result = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .customize()
            .config_override(self.attempt_timeout(self.timeouts.control_attempt))
            .send()
            .await;
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                let err = classify(OP, e);
                return match err.kind {
                    S3ErrorKind::NotFound => Ok(None),
                    _ => Err(err),
                };
            }
        };
        let size = out
            .content_length
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| missing(OP, "a valid Content-Length"))?;
        let metadata = out
            .metadata
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        Ok(Some(ObjectHead {
            size,
            metadata,
            etag: out.e_tag.map(|e| e.trim_matches('"').to_owned()),
            version_id: out.version_id,
        }))
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>, S3Error> {
        const OP: &str = "ListMultipartUploads";
        let mut uploads = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut upload_id_marker: Option<String> = None;
        for _page in 0..LIST_PAGES_COUNT_MAX {
            let out = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(upload_id_marker.take())
                .customize()
                .config_override(self.attempt_timeout(self.timeouts.control_attempt))
                .send()
                .await
                .map_err(|e| classify(OP, e))?;
            for upload in out.uploads.unwrap_or_default() {
                if let (Some(key), Some(upload_id)) = (upload.key, upload.upload_id) {
                    uploads.push(OpenUpload { key, upload_id });
                }
            }
            if out.is_truncated != Some(true) {
                return Ok(uploads);
            }
            key_marker = out.next_key_marker;
            upload_id_marker = out.next_upload_id_marker;
            if key_marker.is_none() {
                // Truncated without a place to resume: asking again would loop on page one.
                return Err(missing(OP, "NextKeyMarker in a truncated listing"));
            }
        }
        Err(S3Error::new(
            S3ErrorKind::Transient,
            OP,
            format!("more than {LIST_PAGES_COUNT_MAX} pages of open uploads"),
        ))
    }
}

/// The one place where SDK errors become [`S3Error`]s. Callers never look at codes or strings.
fn classify<E>(operation: &'static str, err: SdkError<E, HttpResponse>) -> S3Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code();
            let kind = classify_service_error(operation, code, status);
            let message = format!(
                "{} (HTTP {status}): {}",
                code.unwrap_or("no error code"),
                service.err().message().unwrap_or("no message")
            );
            S3Error::new(kind, operation, message)
        }
        // Nothing was sent: a bug in how we build requests, not something a retry fixes.
        SdkError::ConstructionFailure(_) => S3Error::new(
            S3ErrorKind::Permanent,
            operation,
            DisplayErrorContext(&err).to_string(),
        ),
        // Timeouts, refused/reset connections, DNS, truncated responses, and whatever the SDK adds
        // later: the network's fault until proven otherwise, and a file is never dropped for it.
        _ => S3Error::new(
            S3ErrorKind::Transient,
            operation,
            DisplayErrorContext(&err).to_string(),
        ),
    }
}

/// Service errors by code first, then by HTTP status (HEAD responses carry no code).
fn classify_service_error(operation: &str, code: Option<&str>, status: u16) -> S3ErrorKind {
    const HEAD: &str = "HeadObject";
    match code {
        Some("NoSuchUpload") => S3ErrorKind::NoSuchUpload,
        Some("PreconditionFailed") => S3ErrorKind::PreconditionFailed,
        None if status == 412 => S3ErrorKind::PreconditionFailed,
        Some(
            "SlowDown"
            | "RequestTimeout"
            | "Throttling"
            | "ThrottlingException"
            | "TooManyRequests"
            | "RequestThrottled"
            | "InternalError"
            | "ServiceUnavailable"
            | "OperationAborted"
            // A box that booted with a wrong clock recovers once NTP has synced.
            | "RequestTimeTooSkewed",
        ) => S3ErrorKind::Transient,
        Some("NoSuchKey" | "NotFound") if operation == HEAD => S3ErrorKind::NotFound,
        None if operation == HEAD && status == 404 => S3ErrorKind::NotFound,
        _ if status >= 500 || status == 429 || status == 408 => S3ErrorKind::Transient,
        _ => S3ErrorKind::Permanent,
    }
}

/// `x-amz-checksum-crc32c`: the big-endian CRC32C in base64.
fn crc32c_checksum(crc: u32) -> String {
    aws_smithy_types::base64::encode(crc.to_be_bytes())
}

/// `x-amz-checksum-sha256` (base64) of the object whose metadata names its hex SHA-256.
fn sha256_checksum(metadata: &ObjectMetadata) -> Option<String> {
    let raw = hex::decode(metadata.get(crate::drain::store::META_SHA256)?).ok()?;
    (raw.len() == 32).then(|| aws_smithy_types::base64::encode(&raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_errors_are_classified_by_code_then_status() {
        use S3ErrorKind::*;
        let cases: &[(&str, Option<&str>, u16, S3ErrorKind)] = &[
            ("UploadPart", Some("NoSuchUpload"), 404, NoSuchUpload),
            (
                "CompleteMultipartUpload",
                Some("NoSuchUpload"),
                404,
                NoSuchUpload,
            ),
            ("UploadPart", Some("SlowDown"), 503, Transient),
            ("UploadPart", Some("RequestTimeout"), 400, Transient),
            ("PutObject", Some("InternalError"), 500, Transient),
            ("PutObject", Some("SomethingNew"), 502, Transient),
            ("PutObject", None, 503, Transient),
            ("PutObject", Some("TooManyRequests"), 429, Transient),
            ("PutObject", Some("RequestTimeTooSkewed"), 403, Transient),
            ("PutObject", Some("AccessDenied"), 403, Permanent),
            ("PutObject", Some("NoSuchBucket"), 404, Permanent),
            ("PutObject", Some("InvalidAccessKeyId"), 403, Permanent),
            ("PutObject", Some("SignatureDoesNotMatch"), 403, Permanent),
            (
                "CompleteMultipartUpload",
                Some("InvalidPart"),
                400,
                Permanent,
            ),
            ("HeadObject", Some("NotFound"), 404, NotFound),
            ("HeadObject", None, 404, NotFound),
            ("HeadObject", None, 403, Permanent),
            ("HeadObject", None, 500, Transient),
            // Only HEAD answers "absent"; elsewhere a 404 is a configuration problem.
            ("PutObject", Some("NoSuchKey"), 404, Permanent),
        ];
        for &(op, code, status, want) in cases {
            assert_eq!(
                classify_service_error(op, code, status),
                want,
                "{op} {code:?} {status}"
            );
        }
    }

    #[tokio::test]
    async fn endpoint_without_scheme_is_rejected() {
        // A configuration valid but for its endpoint: the embedded server's.
        let dir = tempfile::tempdir().unwrap();
        let server =
            crate::s3server::S3Server::start(crate::s3server::S3ServerConfig::loopback(dir.path()))
                .await
                .unwrap();
        let cfg = S3Config {
            endpoint: Some("127.0.0.1:9000".to_owned()),
            ..crate::s3server::test_s3_config(&server)
        };
        let err = AwsStore::new(&cfg).unwrap_err();
        assert_eq!(err.kind, S3ErrorKind::Permanent);
        server.shutdown().await;
    }
}
