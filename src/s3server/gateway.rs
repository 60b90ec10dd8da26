//! [`GatewayFs`], the embedded server's [`s3s::S3`] implementation. It calls s3s-fs for every
//! operation and only adds what s3s-fs lacks or does differently from AWS S3, because the drain's
//! crash recovery is tested against this server and must see AWS semantics:
//! - `ListMultipartUploads` (s3s-fs does not implement it), read from s3s-fs's on-disk layout;
//! - `NoSuchUpload` for an unknown upload id (s3s-fs answers `AccessDenied` or `InvalidRequest`);
//! - `NoSuchBucket` on writes (s3s-fs silently creates the bucket directory on `PutObject`);
//! - Complete is validated before s3s-fs sees it (part present, size, ETag), because s3s-fs forgets
//!   the upload id first and then fails with a 500, losing the upload;
//! - Complete assembles the object itself ([`super::assemble`]) when it knows every part's MD5,
//!   instead of s3s-fs's second MD5 pass over the whole object;
//! - request counters, received body bytes and the upload throttle of [`S3Stats`].
//!
//! Left as s3s-fs does it: a PutObject whose body does not match its `x-amz-checksum-*` is
//! answered `BadDigest` after the object was written (S3 stores nothing); no client of ours
//! relies on it (the drain fails such a file and tries again later).
//!
//! Of the crate it uses only its parent's [`S3Stats`], [`super::assemble`] and `limits`; the
//! listener, authentication and start-up belong to the parent.

use std::collections::HashMap;
use std::future::Future as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::Stream;
use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, CompleteMultipartUploadInput,
    CompleteMultipartUploadOutput, CopyObjectInput, CopyObjectOutput, CreateBucketInput,
    CreateBucketOutput, CreateMultipartUploadInput, CreateMultipartUploadOutput, DeleteBucketInput,
    DeleteBucketOutput, DeleteObjectInput, DeleteObjectOutput, DeleteObjectsInput,
    DeleteObjectsOutput, GetBucketLocationInput, GetBucketLocationOutput, GetObjectInput,
    GetObjectOutput, HeadBucketInput, HeadBucketOutput, HeadObjectInput, HeadObjectOutput,
    ListBucketsInput, ListBucketsOutput, ListMultipartUploadsInput, ListMultipartUploadsOutput,
    ListObjectsInput, ListObjectsOutput, ListObjectsV2Input, ListObjectsV2Output, ListPartsInput,
    ListPartsOutput, MultipartUpload, PutObjectInput, PutObjectOutput, StreamingBlob, Timestamp,
    UploadPartCopyInput, UploadPartCopyOutput, UploadPartInput, UploadPartOutput,
};
use s3s::stream::{ByteStream, RemainingLength};
use s3s::{S3, S3Error, S3Request, S3Response, S3Result, StdError, s3_error};
use tokio::time::Sleep;

use super::assemble::{self, Assembly};
use super::{S3Stats, ServerOp};
use crate::limits::PART_SIZE_BYTES_MIN;

/// S3's default and largest page of `ListMultipartUploads`.
const LIST_UPLOADS_COUNT_MAX: usize = 1000;

/// A request body that counts what it yields and holds each chunk back under the throttle.
struct MeteredBody {
    inner: StreamingBlob,
    stats: Arc<S3Stats>,
    held: Option<(Bytes, Pin<Box<Sleep>>)>,
    /// The CRC32C of the bytes passed so far, where asked for (an UploadPart with
    /// `x-amz-checksum-crc32c`): summed on the way, so the part is not read back.
    crc32c: Option<Arc<AtomicU32>>,
}

impl MeteredBody {
    fn wrap(
        body: Option<StreamingBlob>,
        stats: &Arc<S3Stats>,
        crc32c: Option<Arc<AtomicU32>>,
    ) -> Option<StreamingBlob> {
        body.map(|inner| {
            StreamingBlob::new(MeteredBody {
                inner,
                stats: Arc::clone(stats),
                held: None,
                crc32c,
            })
        })
    }
}

impl Stream for MeteredBody {
    type Item = Result<Bytes, StdError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some((_, sleep)) = &mut this.held {
            ready!(sleep.as_mut().poll(cx));
            return Poll::Ready(this.held.take().map(|(bytes, _)| Ok(bytes)));
        }
        let next = ready!(Pin::new(&mut this.inner).poll_next(cx));
        if let (Some(Ok(bytes)), Some(crc)) = (&next, &this.crc32c) {
            // One stream, polled by one task at a time: the load and the store do not race.
            let sum = crc32c::crc32c_append(crc.load(Ordering::Relaxed), bytes);
            crc.store(sum, Ordering::Relaxed);
        }
        match next {
            Some(Ok(bytes)) => match this.stats.admit(bytes.len()) {
                None => Poll::Ready(Some(Ok(bytes))),
                Some(deadline) => {
                    let mut sleep = Box::pin(tokio::time::sleep_until(deadline));
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Ok(bytes)));
                    }
                    this.held = Some((bytes, sleep));
                    Poll::Pending
                }
            },
            other => Poll::Ready(other),
        }
    }
}

impl ByteStream for MeteredBody {
    fn remaining_length(&self) -> RemainingLength {
        self.inner.remaining_length()
    }
}

/// Names of the files s3s-fs 0.14 keeps directly under its root. We read them (never write them)
/// to list open uploads and to tell an unknown upload id apart.
#[derive(Debug)]
struct FsLayout {
    root: PathBuf,
}

impl FsLayout {
    fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.root.join(bucket)
    }

    /// Exists from CreateMultipartUpload until Complete or Abort.
    fn upload_marker(&self, upload_id: &str) -> PathBuf {
        self.root.join(format!(".upload-{upload_id}.json"))
    }

    /// Written by CreateMultipartUpload (always, even without user metadata); names the key.
    fn upload_attributes(&self, bucket: &str, key: &str, upload_id: &str) -> PathBuf {
        self.root.join(format!(
            "{}{upload_id}.metadata.json",
            Self::attributes_stem(bucket, key)
        ))
    }

    /// Where s3s-fs keeps an object, if the key names a plain relative path (no `.`, `..` or
    /// leading `/`, which s3s-fs would resolve first).
    fn object(&self, bucket: &str, key: &str) -> Option<PathBuf> {
        let plain = Path::new(key)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        (plain && !key.is_empty()).then(|| self.bucket_dir(bucket).join(key))
    }

    /// The object's attributes (content type, user metadata), as s3s-fs names them.
    fn object_attributes(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(format!(
            ".bucket-{}.object-{}.metadata.json",
            encode_name(bucket),
            encode_name(key)
        ))
    }

    /// The object's internal JSON map (its `e_tag`), as s3s-fs names it.
    fn internal_info(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(format!(
            ".bucket-{}.object-{}.internal.json",
            encode_name(bucket),
            encode_name(key)
        ))
    }

    fn part(&self, upload_id: &str, part_number: i32) -> PathBuf {
        self.root
            .join(format!(".upload_id-{upload_id}.part-{part_number}"))
    }

    fn attributes_stem(bucket: &str, key: &str) -> String {
        format!(
            ".bucket-{}.object-{}.upload-",
            encode_name(bucket),
            encode_name(key)
        )
    }

    /// `(key, upload_id)` if `file_name` is the attributes file of an upload in `bucket`.
    fn parse_upload_attributes(bucket: &str, file_name: &str) -> Option<(String, String)> {
        let rest = file_name.strip_prefix(&format!(".bucket-{}.object-", encode_name(bucket)))?;
        let rest = rest.strip_suffix(".metadata.json")?;
        // The base64url alphabet has no '.', so the first ".upload-" ends the encoded key.
        let (encoded_key, upload_id) = rest.split_once(".upload-")?;
        if !is_upload_id(upload_id) {
            return None;
        }
        let key = base64_simd::URL_SAFE_NO_PAD
            .decode_to_vec(encoded_key)
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())?;
        Some((key, upload_id.to_owned()))
    }
}

fn encode_name(name: &str) -> String {
    base64_simd::URL_SAFE_NO_PAD.encode_to_string(name)
}

/// s3s-fs upload ids are lower-case hyphenated UUIDs. Checking the exact shape also keeps a
/// client-chosen id from naming any other file under the root.
fn is_upload_id(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

/// Completes an upload with [`assemble::assemble`], with s3s-fs's answers: `If-None-Match: *`
/// on an existing object is `PreconditionFailed` before anything changes.
async fn complete_by_assembly(
    input: CompleteMultipartUploadInput,
    assembly: Assembly,
) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
    if input.if_none_match.as_ref().is_some_and(|c| c.is_any())
        && tokio::fs::try_exists(&assembly.object)
            .await
            .unwrap_or(false)
    {
        return Err(s3_error!(PreconditionFailed, "Object already exists"));
    }
    let etag = tokio::task::spawn_blocking(move || assemble::assemble(&assembly))
        .await
        .map_err(|e| s3_error!(InternalError, "assembly task failed: {e}"))?
        .map_err(|e| match e {
            assemble::AssemblyError::BadDigest { .. } => {
                s3_error!(BadDigest, "checksum_crc32c mismatch: {e}")
            }
            assemble::AssemblyError::Io(e) => S3Error::internal_error(e),
        })?;
    Ok(S3Response::new(CompleteMultipartUploadOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        e_tag: Some(s3s::dto::ETag::Strong(etag)),
        ..Default::default()
    }))
}

/// The CRC32C of an `x-amz-checksum-crc32c` value (base64 of the big-endian bytes).
fn decode_crc32c(b64: &str) -> Option<u32> {
    let bytes = aws_smithy_types::base64::decode(b64).ok()?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

async fn is_file(path: &Path) -> bool {
    tokio::fs::metadata(path).await.is_ok_and(|m| m.is_file())
}

/// s3s-fs plus the AWS semantics the drain relies on (see the module doc).
pub(super) struct GatewayFs {
    /// Shared so that a Complete can run to its end in a task of its own.
    fs: Arc<s3s_fs::FileSystem>,
    layout: FsLayout,
    stats: Arc<S3Stats>,
    /// ETags returned by UploadPart, checked on Complete as S3 does. Lost on restart; parts
    /// without an entry are then not checked.
    part_etags: Mutex<HashMap<(String, i32), String>>,
    /// One lock per upload id being completed or aborted, so that the two are linearised as
    /// on S3: an Abort answered after a Complete began sees the upload completed (the object
    /// is in place by then), never a half-assembled one that lands later.
    settling: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl GatewayFs {
    /// `root` is the canonical path `fs` was opened at.
    pub(super) fn new(fs: s3s_fs::FileSystem, root: PathBuf, stats: Arc<S3Stats>) -> Self {
        Self {
            fs: Arc::new(fs),
            layout: FsLayout { root },
            stats,
            part_etags: Mutex::new(HashMap::new()),
            settling: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for any Complete or Abort of `upload_id` under way, and holds the upload until the
    /// guard is handed back to [`GatewayFs::settled`].
    async fn settle(&self, upload_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = Arc::clone(
            self.settling
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(upload_id.to_owned())
                .or_default(),
        );
        lock.lock_owned().await
    }

    fn settled(&self, upload_id: &str, guard: tokio::sync::OwnedMutexGuard<()>) {
        drop(guard);
        let mut settling = self
            .settling
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Forgotten once nobody else waits on it (the map stays bounded by uploads in flight).
        if settling
            .get(upload_id)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            settling.remove(upload_id);
        }
    }

    async fn check_bucket(&self, bucket: &str) -> S3Result<()> {
        if !s3s::path::check_bucket_name(bucket) {
            return Err(s3_error!(InvalidBucketName));
        }
        match tokio::fs::metadata(self.layout.bucket_dir(bucket)).await {
            Ok(m) if m.is_dir() => Ok(()),
            _ => Err(s3_error!(
                NoSuchBucket,
                "The specified bucket does not exist"
            )),
        }
    }

    async fn check_upload(&self, bucket: &str, key: &str, upload_id: &str) -> S3Result<()> {
        self.check_bucket(bucket).await?;
        let known = is_upload_id(upload_id)
            && is_file(&self.layout.upload_marker(upload_id)).await
            && is_file(&self.layout.upload_attributes(bucket, key, upload_id)).await;
        if known {
            Ok(())
        } else {
            Err(s3_error!(
                NoSuchUpload,
                "The specified multipart upload does not exist"
            ))
        }
    }

    fn etags(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i32), String>> {
        self.part_etags
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn forget_etags(&self, upload_id: &str) {
        self.etags().retain(|(id, _), _| id != upload_id);
    }

    /// What S3 checks on Complete, done before s3s-fs forgets the upload id.
    async fn validate_complete(&self, input: &CompleteMultipartUploadInput) -> S3Result<()> {
        let parts = input
            .multipart_upload
            .as_ref()
            .and_then(|m| m.parts.as_deref())
            .unwrap_or_default();
        if parts.is_empty() {
            return Err(s3_error!(
                MalformedXML,
                "You must specify at least one part"
            ));
        }
        let last = parts.len();
        for (i, part) in parts.iter().enumerate() {
            let number = part.part_number.unwrap_or(0);
            // s3s-fs assembles parts 1..=n only; S3 would also accept gaps.
            if usize::try_from(number).ok() != Some(i + 1) {
                return Err(s3_error!(
                    InvalidPartOrder,
                    "parts must be numbered 1..=n in order (got {number} at position {})",
                    i + 1
                ));
            }
            let path = self.layout.part(&input.upload_id, number);
            let size = match tokio::fs::metadata(&path).await {
                Ok(m) if m.is_file() => m.len(),
                _ => return Err(s3_error!(InvalidPart, "part {number} was not uploaded")),
            };
            if i + 1 < last && size < PART_SIZE_BYTES_MIN {
                return Err(s3_error!(
                    EntityTooSmall,
                    "part {number} has {size} bytes, less than the minimum"
                ));
            }
            let recorded = self
                .etags()
                .get(&(input.upload_id.clone(), number))
                .cloned();
            let given = part.e_tag.as_ref().map(|e| e.value());
            if let Some(recorded) = recorded
                && given != Some(recorded.as_str())
            {
                return Err(s3_error!(
                    InvalidPart,
                    "ETag of part {number} does not match ({given:?} != {recorded:?})"
                ));
            }
        }
        Ok(())
    }

    /// How to complete this upload without s3s-fs's second pass over the data
    /// ([`super::assemble`]): only when every part's MD5 is known (this server answered its
    /// UploadPart since it started), the key is a plain path and no `If-Match` is asked (s3s-fs
    /// handles the rest). Call after [`GatewayFs::validate_complete`].
    fn assembly(
        &self,
        input: &CompleteMultipartUploadInput,
        crc32c: Option<u32>,
    ) -> Option<Assembly> {
        if input.if_match.is_some() {
            return None;
        }
        let (bucket, key, upload_id) = (&input.bucket, &input.key, &input.upload_id);
        let etags = self.etags();
        let parts = input
            .multipart_upload
            .as_ref()?
            .parts
            .as_deref()?
            .iter()
            .map(|p| {
                let number = p.part_number?;
                let md5 = assemble::part_md5(etags.get(&(upload_id.clone(), number))?)?;
                Some((self.layout.part(upload_id, number), md5))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Assembly {
            root: self.layout.root.clone(),
            object: self.layout.object(bucket, key)?,
            parts,
            marker: self.layout.upload_marker(upload_id),
            upload_attributes: self.layout.upload_attributes(bucket, key, upload_id),
            object_attributes: self.layout.object_attributes(bucket, key),
            internal_info: self.layout.internal_info(bucket, key),
            crc32c,
        })
    }

    async fn open_uploads(&self, bucket: &str, prefix: &str) -> S3Result<Vec<MultipartUpload>> {
        let mut uploads = Vec::new();
        let mut dir = tokio::fs::read_dir(&self.layout.root)
            .await
            .map_err(S3Error::internal_error)?;
        while let Some(entry) = dir.next_entry().await.map_err(S3Error::internal_error)? {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some((key, upload_id)) = FsLayout::parse_upload_attributes(bucket, name) else {
                continue;
            };
            if !key.starts_with(prefix) {
                continue;
            }
            // Abort removes the attributes before the marker, Complete the marker first: only
            // uploads with both are open.
            let Ok(marker) = tokio::fs::metadata(self.layout.upload_marker(&upload_id)).await
            else {
                continue;
            };
            let initiated = marker.modified().ok().map(Timestamp::from);
            uploads.push(MultipartUpload {
                key: Some(key),
                upload_id: Some(upload_id),
                initiated,
                ..Default::default()
            });
        }
        uploads.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
        Ok(uploads)
    }
}

#[async_trait::async_trait]
impl S3 for GatewayFs {
    async fn put_object(
        &self,
        mut req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.stats.count(ServerOp::PutObject);
        self.check_bucket(&req.input.bucket).await?;
        req.input.body = MeteredBody::wrap(req.input.body.take(), &self.stats, None);
        self.fs.put_object(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.stats.count(ServerOp::CreateMultipartUpload);
        self.check_bucket(&req.input.bucket).await?;
        self.fs.create_multipart_upload(req).await
    }

    async fn upload_part(
        &self,
        mut req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.stats.count(ServerOp::UploadPart);
        let input = &req.input;
        self.check_upload(&input.bucket, &input.key, &input.upload_id)
            .await?;
        let slot = (input.upload_id.clone(), input.part_number);
        let claimed = match input.checksum_crc32c.as_deref().map(decode_crc32c) {
            Some(Some(crc)) => Some(crc),
            Some(None) => {
                return Err(s3_error!(
                    InvalidRequest,
                    "x-amz-checksum-crc32c is not a CRC32C"
                ));
            }
            None => None,
        };
        let summed = claimed.map(|_| Arc::new(AtomicU32::new(0)));
        req.input.body = MeteredBody::wrap(req.input.body.take(), &self.stats, summed.clone());
        let resp = self.fs.upload_part(req).await?;
        // s3s-fs takes the part whatever checksum came with it; S3 refuses one whose bytes do
        // not match and keeps nothing.
        if let (Some(claimed), Some(summed)) = (claimed, summed)
            && summed.load(Ordering::Relaxed) != claimed
        {
            let _ = tokio::fs::remove_file(self.layout.part(&slot.0, slot.1)).await;
            self.etags().remove(&slot);
            return Err(s3_error!(BadDigest, "checksum_crc32c mismatch"));
        }
        if let Some(etag) = &resp.output.e_tag {
            self.etags().insert(slot, etag.value().to_owned());
        }
        Ok(resp)
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let input = &req.input;
        self.check_upload(&input.bucket, &input.key, &input.upload_id)
            .await?;
        self.fs.upload_part_copy(req).await
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        self.stats.count(ServerOp::ListParts);
        let input = &req.input;
        self.check_upload(&input.bucket, &input.key, &input.upload_id)
            .await?;
        self.fs.list_parts(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.stats.count(ServerOp::CompleteMultipartUpload);
        let upload_id = req.input.upload_id.clone();
        let guard = self.settle(&upload_id).await;
        let input = &req.input;
        let checked = match self
            .check_upload(&input.bucket, &input.key, &input.upload_id)
            .await
        {
            Ok(()) => self.validate_complete(input).await,
            Err(e) => Err(e),
        };
        if let Err(e) = checked {
            self.settled(&upload_id, guard);
            return Err(e);
        }
        // Like S3, a Complete that has started finishes even if the client hangs up: s3s-fs
        // forgets the upload id before it assembles the object, so a Complete cancelled in
        // between (hyper drops the handler when the connection closes) would lose both. The
        // task holds the upload's lock to its end, for the same reason.
        let crc32c = match req.input.checksum_crc32c.as_deref().map(decode_crc32c) {
            Some(Some(crc)) => Some(crc),
            Some(None) => {
                self.settled(&upload_id, guard);
                return Err(s3_error!(
                    InvalidRequest,
                    "x-amz-checksum-crc32c is not a CRC32C"
                ));
            }
            None => None,
        };
        let fs = Arc::clone(&self.fs);
        let assembly = self.assembly(&req.input, crc32c);
        let done = tokio::spawn(async move {
            let resp = match assembly {
                Some(a) => complete_by_assembly(req.input, a).await,
                None => fs.complete_multipart_upload(req).await,
            };
            (resp, guard)
        })
        .await
        .map_err(|e| s3_error!(InternalError, "complete task failed: {e}"))?;
        let (resp, guard) = done;
        self.settled(&upload_id, guard);
        let resp = resp?;
        self.forget_etags(&upload_id);
        Ok(resp)
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.stats.count(ServerOp::AbortMultipartUpload);
        let upload_id = req.input.upload_id.clone();
        let guard = self.settle(&upload_id).await;
        let input = &req.input;
        let resp = match self
            .check_upload(&input.bucket, &input.key, &input.upload_id)
            .await
        {
            Ok(()) => self.fs.abort_multipart_upload(req).await,
            Err(e) => Err(e),
        };
        self.settled(&upload_id, guard);
        let resp = resp?;
        self.forget_etags(&upload_id);
        Ok(resp)
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.stats.count(ServerOp::ListMultipartUploads);
        let input = req.input;
        self.check_bucket(&input.bucket).await?;
        if input.delimiter.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "ListMultipartUploads with a delimiter"
            ));
        }
        let prefix = input.prefix.clone().unwrap_or_default();
        let mut uploads = self.open_uploads(&input.bucket, &prefix).await?;
        // S3's markers: with an upload id marker, the rest of that key's uploads come first;
        // without one, listing resumes after the key.
        if let Some(key_marker) = input.key_marker.as_deref().filter(|m| !m.is_empty()) {
            let id_marker = input.upload_id_marker.as_deref().unwrap_or_default();
            uploads.retain(|u| {
                let key = u.key.as_deref().unwrap_or_default();
                let id = u.upload_id.as_deref().unwrap_or_default();
                key > key_marker || (key == key_marker && !id_marker.is_empty() && id > id_marker)
            });
        }
        let max = input
            .max_uploads
            .and_then(|m| usize::try_from(m).ok())
            .map_or(LIST_UPLOADS_COUNT_MAX, |m| m.min(LIST_UPLOADS_COUNT_MAX));
        let is_truncated = uploads.len() > max;
        uploads.truncate(max);
        let (next_key_marker, next_upload_id_marker) = match uploads.last() {
            Some(last) if is_truncated => (last.key.clone(), last.upload_id.clone()),
            _ => (None, None),
        };
        let output = ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            max_uploads: i32::try_from(max).ok(),
            is_truncated: Some(is_truncated),
            next_key_marker,
            next_upload_id_marker,
            uploads: Some(uploads),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.stats.count(ServerOp::HeadObject);
        let mut resp = self.fs.head_object(req).await?;
        // Every checksum this server keeps is of the whole object (single PUTs, and Completes
        // with a full-object CRC32C).
        let out = &mut resp.output;
        if out.checksum_crc32c.is_some() || out.checksum_sha256.is_some() {
            out.checksum_type = Some(s3s::dto::ChecksumType::from_static(
                s3s::dto::ChecksumType::FULL_OBJECT,
            ));
        }
        Ok(resp)
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.stats.count(ServerOp::GetObject);
        self.fs.get_object(req).await
    }

    // The rest is s3s-fs unchanged.

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.fs.create_bucket(req).await
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        self.fs.copy_object(req).await
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.fs.delete_bucket(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.fs.delete_object(req).await
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.fs.delete_objects(req).await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.fs.get_bucket_location(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.fs.head_bucket(req).await
    }

    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        self.fs.list_buckets(req).await
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        self.fs.list_objects(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.fs.list_objects_v2(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_id_shape_is_checked_exactly() {
        assert!(is_upload_id("0f8e3c2a-1b2c-4d5e-8f90-a1b2c3d4e5f6"));
        assert!(!is_upload_id("0F8E3C2A-1B2C-4D5E-8F90-A1B2C3D4E5F6"));
        assert!(!is_upload_id("../../../../etc/passwd-aaaaaaaaaaaaaaaa"));
        assert!(!is_upload_id("0f8e3c2a-1b2c-4d5e-8f90-a1b2c3d4e5f"));
        assert!(!is_upload_id(""));
    }

    #[test]
    fn upload_attributes_name_round_trips() {
        let layout = FsLayout {
            root: PathBuf::from("/r"),
        };
        let id = "0f8e3c2a-1b2c-4d5e-8f90-a1b2c3d4e5f6";
        let path = layout.upload_attributes("uploads", "site/é x.bin", id);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap();
        assert_eq!(
            FsLayout::parse_upload_attributes("uploads", name),
            Some(("site/é x.bin".to_owned(), id.to_owned()))
        );
        assert_eq!(FsLayout::parse_upload_attributes("other", name), None);
        // The object's own attributes file (no upload) is not an open upload.
        let object_attrs = format!(
            ".bucket-{}.object-{}.metadata.json",
            encode_name("uploads"),
            encode_name("k")
        );
        assert_eq!(
            FsLayout::parse_upload_attributes("uploads", &object_attrs),
            None
        );
    }
}
