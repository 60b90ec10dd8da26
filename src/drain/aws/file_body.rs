//! A range of a spool file as the body of one aws-sdk-s3 request.
//!
//! The range is read with `pread` on Tokio's blocking pool, one chunk ahead of the socket, into
//! at most [`BODY_CHUNKS_COUNT_MAX`] buffers of [`BODY_CHUNK_BYTES`] that the body reuses for the
//! whole range: a chunk lent to hyper gives its buffer back when hyper drops it. So a body holds
//! at most `BODY_CHUNKS_COUNT_MAX × BODY_CHUNK_BYTES` whatever the part size, each byte is copied
//! once (kernel → buffer) on its way to the socket, and the CRC32C is summed over each chunk
//! while it is still in the CPU cache, so the drain never reads a part a second time for it.
//!
//! The SDK gets a retryable body: every attempt (and every clone the SDK asks for) starts again
//! from the file. What the last body to reach the end read, or the read error that stopped a
//! body, is left in the request's [`BodyReport`].

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use futures::task::AtomicWaker;
use http_body::{Frame, SizeHint};
use tokio::task::JoinHandle;

use crate::drain::store::FileRange;

/// One read, and one chunk handed to hyper. 128 KiB reads cost about as little CPU per byte as
/// larger ones (one blocking-pool round trip per chunk) while two of them stay in the L2 cache
/// between the read and the CRC.
const BODY_CHUNK_BYTES: usize = 128 * 1024;
/// Buffers of one body: one being read while the other is on its way to the socket.
const BODY_CHUNKS_COUNT_MAX: usize = 2;
/// Bytes of buffers one body holds at most.
const BODY_BUFFER_BYTES_MAX: usize = BODY_CHUNK_BYTES * BODY_CHUNKS_COUNT_MAX;
/// What the bodies of all parts in flight may hold at the largest drain concurrency: a quarter
/// of the daemon's 64 MiB peak-RSS target, the rest being for SFTP sessions and the runtime.
const BODY_BUFFERS_BYTES_BUDGET: usize = 16 * 1024 * 1024;

const _: () = assert!(BODY_CHUNKS_COUNT_MAX >= 1);
const _: () = assert!(
    crate::limits::DRAIN_CONCURRENCY_MAX * BODY_BUFFER_BYTES_MAX <= BODY_BUFFERS_BYTES_BUDGET
);

/// What the bodies of one request found: the CRC32C of the whole range once a body has read it
/// to the end, or the local read error that stopped a body.
#[derive(Debug, Default)]
pub(super) struct BodyReport(Mutex<Option<Result<u32, String>>>);

impl BodyReport {
    /// `None` if no body has read the whole range nor failed.
    pub(super) fn outcome(&self) -> Option<Result<u32, String>> {
        self.lock().clone()
    }

    pub(super) fn set(&self, outcome: Result<u32, String>) {
        *self.lock() = Some(outcome);
    }

    fn lock(&self) -> MutexGuard<'_, Option<Result<u32, String>>> {
        // The value is a plain Option: a panic elsewhere cannot leave it half written.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A retryable SDK body streaming `range` and reporting into `report`.
pub(super) fn byte_stream(range: FileRange, report: Arc<BodyReport>) -> ByteStream {
    ByteStream::new(SdkBody::retryable(move || {
        SdkBody::from_body_1_x(FileRangeBody::new(range.clone(), report.clone()))
    }))
}

/// Buffers of one body, and the waker of a body waiting for one to come back.
#[derive(Default)]
struct Buffers {
    free: Mutex<Vec<Vec<u8>>>,
    returned: AtomicWaker,
}

impl Buffers {
    fn take(&self) -> Option<Vec<u8>> {
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }
}

/// A chunk lent to hyper: the first `len` bytes of `buf`, which go back to `home` on drop.
struct LentChunk {
    buf: Vec<u8>,
    len: usize,
    home: Arc<Buffers>,
}

impl AsRef<[u8]> for LentChunk {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for LentChunk {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.home
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(buf);
        self.home.returned.wake();
    }
}

/// What one read on the blocking pool gives back.
struct ReadDone {
    file: Arc<File>,
    buf: Vec<u8>,
    len: usize,
    /// CRC32C of the range so far, this chunk included.
    crc: u32,
}

struct FileRangeBody {
    range: FileRange,
    /// Opened by the first read.
    file: Option<Arc<File>>,
    /// Bytes read so far, from `range.offset`.
    read: u64,
    crc: u32,
    /// Buffers made so far, at most [`BODY_CHUNKS_COUNT_MAX`].
    made: usize,
    buffers: Arc<Buffers>,
    reading: Option<JoinHandle<io::Result<ReadDone>>>,
    report: Arc<BodyReport>,
}

impl FileRangeBody {
    fn new(range: FileRange, report: Arc<BodyReport>) -> Self {
        Self {
            range,
            file: None,
            read: 0,
            crc: 0,
            made: 0,
            buffers: Arc::default(),
            reading: None,
            report,
        }
    }

    /// Bytes of the range not read yet (saturated on 32-bit targets, where a range is smaller).
    fn left(&self) -> usize {
        usize::try_from(self.range.len - self.read).unwrap_or(usize::MAX)
    }

    /// A buffer for the next read: a returned one, a new one while fewer than the maximum
    /// exist, or `None` after registering to be woken when one comes back.
    fn buffer(&mut self, cx: &mut Context<'_>) -> Option<Vec<u8>> {
        if let Some(buf) = self.buffers.take() {
            return Some(buf);
        }
        if self.made < BODY_CHUNKS_COUNT_MAX {
            self.made += 1;
            // No bigger than what is left: a small file gets a small buffer.
            return Some(vec![0; BODY_CHUNK_BYTES.min(self.left())]);
        }
        self.buffers.returned.register(cx.waker());
        // A chunk may have come back between the first look and the registration.
        self.buffers.take()
    }

    /// Starts reading the next chunk if there is one and a buffer for it.
    fn start_read(&mut self, cx: &mut Context<'_>) {
        if self.reading.is_some() || self.read == self.range.len {
            return;
        }
        let Some(mut buf) = self.buffer(cx) else {
            return;
        };
        let len = buf.len().min(self.left());
        let offset = self.range.offset + self.read;
        let (file, path, crc) = (self.file.clone(), self.range.path.clone(), self.crc);
        self.reading = Some(tokio::task::spawn_blocking(move || {
            let file = match file {
                Some(f) => f,
                None => Arc::new(File::open(&path)?),
            };
            file.read_exact_at(&mut buf[..len], offset)?;
            let crc = crc32c::crc32c_append(crc, &buf[..len]);
            Ok(ReadDone {
                file,
                buf,
                len,
                crc,
            })
        }));
    }

    fn fail(&mut self, err: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let err = io::Error::new(
            err.kind(),
            format!(
                "reading {} bytes at {} of {}: {err}",
                self.range.len,
                self.range.offset,
                self.range.path.display()
            ),
        );
        self.report.set(Err(err.to_string()));
        // Nothing more to send: later polls end the stream instead of reading again.
        self.read = self.range.len;
        Poll::Ready(Some(Err(err)))
    }
}

impl http_body::Body for FileRangeBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.reading.is_none() && this.read == this.range.len {
            if this.range.len == 0 {
                this.report.set(Ok(0));
            }
            return Poll::Ready(None);
        }
        this.start_read(cx);
        let Some(reading) = this.reading.as_mut() else {
            // Waiting for hyper to give a buffer back; its drop wakes us.
            return Poll::Pending;
        };
        let done = match std::task::ready!(Pin::new(reading).poll(cx)) {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                this.reading = None;
                return this.fail(e);
            }
            Err(join) => {
                this.reading = None;
                return this.fail(io::Error::other(join.to_string()));
            }
        };
        this.reading = None;
        this.file = Some(done.file);
        this.read += done.len as u64;
        this.crc = done.crc;
        if this.read == this.range.len {
            this.report.set(Ok(this.crc));
        }
        let chunk = Bytes::from_owner(LentChunk {
            buf: done.buf,
            len: done.len,
            home: this.buffers.clone(),
        });
        // Read ahead into the other buffer while hyper sends this chunk.
        this.start_read(cx);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.reading.is_none() && self.read == self.range.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.range.len - self.read)
    }
}
