//! A fault-injecting [`ObjectStore`] wrapper for drain tests.
//!
//! [`FaultStore`] passes every call to the store it wraps unless a rule of its fault plan fires for
//! that call. Rules are evaluated under one lock in call order, so a plan keyed on operation and
//! call number (or on key and part number, which does not depend on scheduling) is deterministic.
//!
//! ```ignore
//! let store = FaultStore::new(AwsStore::new(&cfg)?);
//! store.inject(Op::UploadPart, 2, Fault::ConnectionReset); // the 2nd UploadPart call
//! store.add_rule(|c| (c.op == Op::CompleteMultipartUpload).then_some(Fault::ResponseLost));
//! ```
//!
//! A test tool: it owns its fault plan and nothing else. May use `store` only (it wraps any
//! [`ObjectStore`]); must not touch the spool, the journal or the drain loop.

use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::store::{
    Body, CompletedPart, ObjectHead, ObjectMetadata, ObjectStore, OpenUpload, S3Error, S3ErrorKind,
    UploadedPart,
};

/// The operations of [`ObjectStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`ObjectStore::put_object`].
    PutObject,
    /// [`ObjectStore::create_multipart_upload`].
    CreateMultipartUpload,
    /// [`ObjectStore::upload_part`].
    UploadPart,
    /// [`ObjectStore::complete_multipart_upload`].
    CompleteMultipartUpload,
    /// [`ObjectStore::abort_multipart_upload`].
    AbortMultipartUpload,
    /// [`ObjectStore::head_object`].
    HeadObject,
    /// [`ObjectStore::list_multipart_uploads`].
    ListMultipartUploads,
}

impl Op {
    const COUNT: usize = 7;

    /// The S3 name, as in [`S3Error::operation`].
    pub fn name(self) -> &'static str {
        match self {
            Op::PutObject => "PutObject",
            Op::CreateMultipartUpload => "CreateMultipartUpload",
            Op::UploadPart => "UploadPart",
            Op::CompleteMultipartUpload => "CompleteMultipartUpload",
            Op::AbortMultipartUpload => "AbortMultipartUpload",
            Op::HeadObject => "HeadObject",
            Op::ListMultipartUploads => "ListMultipartUploads",
        }
    }

    /// The operation's slot in the per-operation counters, below [`Op::COUNT`].
    const fn index(self) -> usize {
        match self {
            Op::PutObject => 0,
            Op::CreateMultipartUpload => 1,
            Op::UploadPart => 2,
            Op::CompleteMultipartUpload => 3,
            Op::AbortMultipartUpload => 4,
            Op::HeadObject => 5,
            Op::ListMultipartUploads => 6,
        }
    }
}

const _: () = assert!(Op::ListMultipartUploads.index() + 1 == Op::COUNT);

/// What goes wrong with one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The store answers 500 InternalError: `Transient`; the inner store is not called.
    ServerError,
    /// The connection drops while the request (e.g. a part body) is on its way: `Transient`;
    /// the inner store is not called, so nothing of the request took effect.
    ConnectionReset,
    /// The inner store does the work, then the response is lost: `Transient` whatever the inner
    /// outcome. On Complete this is the ambiguous case: the object exists, the caller can't know.
    ResponseLost,
    /// The upload is gone (lifecycle expiry, purge): for calls that name an upload, the upload is
    /// really aborted in the inner store first, so the inner state agrees; then `NoSuchUpload`.
    NoSuchUpload,
    /// 403 AccessDenied: `Permanent`; the inner store is not called.
    AccessDenied,
}

impl Fault {
    fn error(self, op: Op) -> S3Error {
        let (kind, message) = match self {
            Fault::ServerError => (
                S3ErrorKind::Transient,
                "InternalError (HTTP 500): injected fault",
            ),
            Fault::ConnectionReset => (
                S3ErrorKind::Transient,
                "connection reset by peer (injected fault)",
            ),
            Fault::ResponseLost => (
                S3ErrorKind::Transient,
                "response lost: connection closed before the response (injected fault)",
            ),
            Fault::NoSuchUpload => (
                S3ErrorKind::NoSuchUpload,
                "NoSuchUpload (HTTP 404): injected fault",
            ),
            Fault::AccessDenied => (
                S3ErrorKind::Permanent,
                "AccessDenied (HTTP 403): injected fault",
            ),
        };
        S3Error::new(kind, op.name(), message)
    }
}

/// One call as a rule sees it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The operation called.
    pub op: Op,
    /// 1-based number of this call among the calls of `op` on this store, faulted ones included.
    pub nth: u64,
    /// The object key; for ListMultipartUploads, the prefix.
    pub key: &'a str,
    /// The multipart upload it is about (UploadPart, Complete, Abort).
    pub upload_id: Option<&'a str>,
    /// The part number of an UploadPart.
    pub part_number: Option<u32>,
    /// The body of PutObject and UploadPart: a rule can see which range of which file a
    /// request would send.
    pub body: Option<&'a Body>,
}

type Rule = Box<dyn FnMut(&Call<'_>) -> Option<Fault> + Send>;

#[derive(Default)]
struct Plan {
    calls: [u64; Op::COUNT],
    faults: [u64; Op::COUNT],
    rules: Vec<Rule>,
}

/// Wraps `S`, failing calls as its plan says. Starts with an empty plan (a transparent wrapper).
pub struct FaultStore<S: ObjectStore> {
    inner: S,
    plan: Mutex<Plan>,
}

impl<S: ObjectStore> FaultStore<S> {
    /// Wraps `inner` with an empty plan: every call goes through until a rule is added.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            plan: Mutex::new(Plan::default()),
        }
    }

    /// The wrapped store (to look at it, or to call it without faults).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The `nth` call (1-based, counted since this store was made) of `op` fails with `fault`.
    pub fn inject(&self, op: Op, nth: u64, fault: Fault) {
        self.add_rule(move |c| (c.op == op && c.nth == nth).then_some(fault));
    }

    /// The next call of `op` fails with `fault`.
    pub fn fail_next(&self, op: Op, fault: Fault) {
        // One lock for reading the count and adding the rule, so no call slips in between.
        let mut plan = self.plan();
        let nth = plan.calls[op.index()] + 1;
        plan.rules.push(Box::new(move |c| {
            (c.op == op && c.nth == nth).then_some(fault)
        }));
    }

    /// Every call of `op` fails with `fault` until [`FaultStore::clear`].
    pub fn fail_always(&self, op: Op, fault: Fault) {
        self.add_rule(move |c| (c.op == op).then_some(fault));
    }

    /// Adds a rule, consulted for every call after the rules added before it; the first rule that
    /// returns a fault decides, and the rules after it are not called for that call.
    pub fn add_rule(&self, rule: impl FnMut(&Call<'_>) -> Option<Fault> + Send + 'static) {
        self.plan().rules.push(Box::new(rule));
    }

    /// Removes all rules; counters keep counting.
    pub fn clear(&self) {
        self.plan().rules.clear();
    }

    /// Calls of `op` so far, faulted ones included.
    pub fn calls(&self, op: Op) -> u64 {
        self.plan().calls[op.index()]
    }

    /// Calls of `op` that a rule failed.
    pub fn faults_injected(&self, op: Op) -> u64 {
        self.plan().faults[op.index()]
    }

    fn plan(&self) -> MutexGuard<'_, Plan> {
        // A rule that panicked poisons the lock; the plan itself is still consistent.
        self.plan.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts the call and returns the fault for it, if any.
    fn arm(
        &self,
        op: Op,
        key: &str,
        upload_id: Option<&str>,
        part_number: Option<u32>,
        body: Option<&Body>,
    ) -> Option<Fault> {
        let mut plan = self.plan();
        plan.calls[op.index()] += 1;
        let call = Call {
            op,
            nth: plan.calls[op.index()],
            key,
            upload_id,
            part_number,
            body,
        };
        let fault = plan.rules.iter_mut().find_map(|rule| rule(&call));
        if fault.is_some() {
            plan.faults[op.index()] += 1;
        }
        fault
    }

    /// Runs one call: `forward` is the inner call, `upload` the (key, upload id) it names.
    async fn run<T, F, Fut>(
        &self,
        op: Op,
        key: &str,
        upload: Option<&str>,
        part_number: Option<u32>,
        body: Option<&Body>,
        forward: F,
    ) -> Result<T, S3Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, S3Error>>,
    {
        match self.arm(op, key, upload, part_number, body) {
            None => forward().await,
            Some(fault @ Fault::ResponseLost) => {
                let outcome = forward().await;
                tracing::debug!(
                    op = op.name(),
                    key,
                    succeeded = outcome.is_ok(),
                    "injected fault: response lost"
                );
                Err(fault.error(op))
            }
            Some(fault @ Fault::NoSuchUpload) => {
                if let Some(upload_id) = upload {
                    // Whatever the inner store says (it may already be gone), the upload is no
                    // more, as after a lifecycle expiry.
                    let _ = self.inner.abort_multipart_upload(key, upload_id).await;
                }
                Err(fault.error(op))
            }
            Some(fault) => Err(fault.error(op)),
        }
    }
}

impl<S: ObjectStore> ObjectStore for FaultStore<S> {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }

    async fn put_object(
        &self,
        key: &str,
        body: Body,
        metadata: &ObjectMetadata,
    ) -> Result<(), S3Error> {
        let sent = body.clone();
        self.run(Op::PutObject, key, None, None, Some(&body), || {
            self.inner.put_object(key, sent, metadata)
        })
        .await
    }

    fn full_object_checksums(&self) -> bool {
        self.inner.full_object_checksums()
    }

    async fn create_multipart_upload(
        &self,
        key: &str,
        metadata: &ObjectMetadata,
        crc32c: bool,
    ) -> Result<String, S3Error> {
        self.run(Op::CreateMultipartUpload, key, None, None, None, || {
            self.inner.create_multipart_upload(key, metadata, crc32c)
        })
        .await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Body,
        crc32c: bool,
    ) -> Result<UploadedPart, S3Error> {
        let sent = body.clone();
        self.run(
            Op::UploadPart,
            key,
            Some(upload_id),
            Some(part_number),
            Some(&body),
            || {
                self.inner
                    .upload_part(key, upload_id, part_number, sent, crc32c)
            },
        )
        .await
    }

    async fn complete_multipart_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> Result<(), S3Error> {
        self.run(
            Op::CompleteMultipartUpload,
            key,
            Some(upload_id),
            None,
            None,
            || self.inner.complete_multipart_upload(key, upload_id, parts),
        )
        .await
    }

    async fn abort_multipart_upload(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        self.run(
            Op::AbortMultipartUpload,
            key,
            Some(upload_id),
            None,
            None,
            || self.inner.abort_multipart_upload(key, upload_id),
        )
        .await
    }

    async fn head_object(&self, key: &str) -> Result<Option<ObjectHead>, S3Error> {
        self.run(Op::HeadObject, key, None, None, None, || {
            self.inner.head_object(key)
        })
        .await
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>, S3Error> {
        self.run(Op::ListMultipartUploads, prefix, None, None, None, || {
            self.inner.list_multipart_uploads(prefix)
        })
        .await
    }
}
