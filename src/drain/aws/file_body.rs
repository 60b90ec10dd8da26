//! A range of a spool file as the body of one aws-sdk-s3 request.
//!
//! The range is read one chunk ahead of the socket into at most [`BODY_CHUNKS_COUNT_MAX`]
//! buffers of [`BODY_CHUNK_BYTES`] that the body reuses for the whole range: a chunk lent to
//! hyper gives its buffer back when hyper drops it. So a body holds at most
//! `BODY_CHUNKS_COUNT_MAX × BODY_CHUNK_BYTES` whatever the part size, each byte is copied once
//! (kernel → buffer) on its way to the socket, and the CRC32C is summed over each chunk while it
//! is still in the CPU cache, so the drain never reads a part a second time for it.
//!
//! Reads try the page cache first, where the spool has just written the file: `preadv2` with
//! `RWF_NOWAIT` in the poll itself (a 128 KiB copy), and only what is not cached goes to Tokio's
//! blocking pool. A round trip through the pool per chunk measured a quarter of the drain's CPU
//! on our 2-core boxes (thread wake-ups); the first read, which opens the file, always takes it.
//!
//! With a [`Shaper`], each chunk's bytes are taken from the shared limiter before the chunk is
//! handed out (the body sleeps on Tokio's timer meanwhile, reading ahead), and chunks shrink to
//! about 1/16 s of the rate, so that a paced body never stops long enough for the SDK's
//! stalled-stream protection.
//!
//! The SDK gets a retryable body: every attempt (and every clone the SDK asks for) starts again
//! from the file. What the last body to reach the end read, or the read error that stopped a
//! body, is left in the request's [`BodyReport`].
//!
//! Owns the reading of spool ranges for request bodies. May use `store`'s [`FileRange`], the
//! shaper (pacing), `limits` and `num`; it reads spool files only through the ranges it is
//! given and never looks at the catalog or the journal.

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

use crate::drain::shaper::Shaper;
use crate::drain::store::FileRange;
use crate::num::u64_from_usize;

/// One read, and one chunk handed to hyper: 256 KiB measured no cheaper, and two 128 KiB
/// buffers stay in the L2 cache between the read and the CRC.
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

/// A retryable SDK body streaming `range` and reporting into `report`, paced by `pacer`
/// (every attempt paces again).
pub(super) fn byte_stream(
    range: FileRange,
    report: Arc<BodyReport>,
    pacer: Option<Arc<Shaper>>,
) -> ByteStream {
    ByteStream::new(SdkBody::retryable(move || {
        let mut body = FileRangeBody::new(range.clone(), report.clone());
        body.pacer = pacer.clone();
        SdkBody::from_body_1_x(body)
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

/// Reads what of `buf.len()` bytes at `offset` the page cache holds, without blocking
/// (`preadv2` with `RWF_NOWAIT`): all of it, a prefix, or nothing (also where the kernel or the
/// filesystem does not support the flag). An error is a real read error.
fn read_cached(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use rustix::io::{Errno, ReadWriteFlags, preadv2};
    let mut done = 0;
    while done < buf.len() {
        let mut slice = [io::IoSliceMut::new(&mut buf[done..])];
        match preadv2(
            file,
            &mut slice,
            offset + u64_from_usize(done),
            ReadWriteFlags::NOWAIT,
        ) {
            Ok(0) => break, // End of file: the blocking read reports the short range.
            Ok(n) => done += n,
            Err(Errno::AGAIN | Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => break,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

/// Read buffer of [`range_crc32c`].
const CRC_PASS_BUFFER_BYTES: usize = 256 * 1024;

/// The CRC32C of a file range, read through a small buffer on a blocking thread: the part
/// checksum an UploadPart of an upload with a full-object CRC32C sends ahead of its body. The
/// body is read again as it is sent (and its CRC32C summed again): were the two to differ, the
/// store would refuse the part.
pub(super) async fn range_crc32c(range: &FileRange) -> io::Result<u32> {
    let range = range.clone();
    tokio::task::spawn_blocking(move || {
        let file = match &range.open {
            Some(open) => Arc::clone(&open.0),
            None => Arc::new(File::open(&range.path)?),
        };
        let mut buf =
            vec![0u8; CRC_PASS_BUFFER_BYTES.min(usize::try_from(range.len).unwrap_or(usize::MAX))];
        let (mut crc, mut at) = (0u32, 0u64);
        while at < range.len {
            let n = usize::try_from(range.len - at)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            file.read_exact_at(&mut buf[..n], range.offset + at)?;
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            at += u64_from_usize(n);
        }
        Ok(crc)
    })
    .await
    .map_err(io::Error::other)?
}

/// What one read gives back.
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
    /// The next chunk: read already (from the page cache), or being read on the blocking pool.
    next: Option<Next>,
    report: Arc<BodyReport>,
    /// The shaper whose limiter paces this body, if any.
    pacer: Option<Arc<Shaper>>,
    /// A chunk paid for and waiting for its time to go out.
    delayed: Option<(Pin<Box<tokio::time::Sleep>>, Bytes)>,
    /// Tests make the page cache seem to hold only this much of each chunk.
    #[cfg(test)]
    cached_bytes_max: usize,
}

enum Next {
    Ready(io::Result<ReadDone>),
    Reading(JoinHandle<io::Result<ReadDone>>),
}

impl FileRangeBody {
    fn new(range: FileRange, report: Arc<BodyReport>) -> Self {
        Self {
            file: range.open.as_ref().map(|f| f.0.clone()),
            range,
            read: 0,
            crc: 0,
            made: 0,
            buffers: Arc::default(),
            next: None,
            report,
            pacer: None,
            delayed: None,
            #[cfg(test)]
            cached_bytes_max: usize::MAX,
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
        if self.next.is_some() || self.read == self.range.len {
            return;
        }
        let Some(mut buf) = self.buffer(cx) else {
            return;
        };
        let mut len = buf.len().min(self.left());
        if let Some(pacer) = &self.pacer {
            len = len.min(pacer.chunk_bytes(BODY_CHUNK_BYTES));
        }
        let offset = self.range.offset + self.read;
        // Most chunks are still in the page cache (the spool wrote them moments ago): read them
        // here, without a round trip through the blocking pool. What is not cached is read there.
        let mut cached = 0;
        if let Some(file) = &self.file {
            #[cfg(test)]
            let len = len.min(self.cached_bytes_max);
            cached = match read_cached(file, &mut buf[..len], offset) {
                Ok(n) => n,
                Err(e) => {
                    self.next = Some(Next::Ready(Err(e)));
                    return;
                }
            };
            if cached == len {
                let crc = crc32c::crc32c_append(self.crc, &buf[..len]);
                self.next = Some(Next::Ready(Ok(ReadDone {
                    file: file.clone(),
                    buf,
                    len,
                    crc,
                })));
                return;
            }
        }
        let (file, path, crc) = (self.file.clone(), self.range.path.clone(), self.crc);
        self.next = Some(Next::Reading(tokio::task::spawn_blocking(move || {
            let file = match file {
                Some(f) => f,
                None => Arc::new(File::open(&path)?),
            };
            file.read_exact_at(&mut buf[cached..len], offset + u64_from_usize(cached))?;
            let crc = crc32c::crc32c_append(crc, &buf[..len]);
            Ok(ReadDone {
                file,
                buf,
                len,
                crc,
            })
        })));
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
        if let Some((sleep, _)) = this.delayed.as_mut() {
            std::task::ready!(sleep.as_mut().poll(cx));
            let chunk = this.delayed.take().map(|(_, chunk)| chunk);
            return Poll::Ready(chunk.map(|c| Ok(Frame::data(c))));
        }
        if this.next.is_none() && this.read == this.range.len {
            if this.range.len == 0 {
                this.report.set(Ok(0));
            }
            return Poll::Ready(None);
        }
        this.start_read(cx);
        let read = match this.next.as_mut() {
            // Waiting for hyper to give a buffer back; its drop wakes us.
            None => return Poll::Pending,
            Some(Next::Reading(handle)) => match std::task::ready!(Pin::new(handle).poll(cx)) {
                Ok(read) => read,
                Err(join) => Err(io::Error::other(join.to_string())),
            },
            Some(Next::Ready(_)) => match this.next.take() {
                Some(Next::Ready(read)) => read,
                _ => unreachable!("matched Ready just above"),
            },
        };
        this.next = None;
        let done = match read {
            Ok(done) => done,
            Err(e) => return this.fail(e),
        };
        this.file = Some(done.file);
        this.read += u64_from_usize(done.len);
        this.crc = done.crc;
        if this.read == this.range.len {
            this.report.set(Ok(this.crc));
        }
        let chunk = Bytes::from_owner(LentChunk {
            buf: done.buf,
            len: done.len,
            home: this.buffers.clone(),
        });
        // Read ahead into the other buffer while hyper sends this chunk (or it waits).
        this.start_read(cx);
        if let Some(pacer) = &this.pacer {
            let wait = pacer.pace(chunk.len());
            if !wait.is_zero() {
                let mut sleep = Box::pin(tokio::time::sleep(wait));
                if sleep.as_mut().poll(cx).is_pending() {
                    this.delayed = Some((sleep, chunk));
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.delayed.is_none() && self.next.is_none() && self.read == self.range.len
    }

    fn size_hint(&self) -> SizeHint {
        let delayed = self
            .delayed
            .as_ref()
            .map_or(0, |(_, c)| u64_from_usize(c.len()));
        SizeHint::with_exact(self.range.len - self.read + delayed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Waker;

    use futures::task::ArcWake;
    use http_body::Body as _;

    use super::*;

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sealed");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    /// The whole of `file`, written at `path`, as a range.
    fn whole(path: std::path::PathBuf, file: &[u8]) -> FileRange {
        FileRange {
            path,
            offset: 0,
            len: file.len() as u64,
            open: None,
        }
    }

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 131 + i / 977) as u8).collect()
    }

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl ArcWake for CountingWaker {
        fn wake_by_ref(this: &Arc<Self>) {
            this.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Polls until the body yields a frame or ends, with `waker`; `None` at the end.
    async fn next_chunk(body: &mut FileRangeBody, waker: &Waker) -> Option<Bytes> {
        loop {
            let mut cx = Context::from_waker(waker);
            match Pin::new(&mut *body).poll_frame(&mut cx) {
                Poll::Ready(Some(frame)) => return Some(frame.unwrap().into_data().unwrap()),
                Poll::Ready(None) => return None,
                // The blocking pool is working; look again soon.
                Poll::Pending => tokio::time::sleep(std::time::Duration::from_millis(1)).await,
            }
        }
    }

    #[tokio::test]
    async fn chunks_read_partly_from_the_cache_and_partly_by_the_blocking_pool_are_exact() {
        let file = bytes(3 * BODY_CHUNK_BYTES + 5_000);
        let (_dir, path) = file_with(&file);
        let (offset, len) = (333, 3 * BODY_CHUNK_BYTES + 1_000);
        let report = Arc::new(BodyReport::default());
        let range = FileRange {
            path,
            offset: offset as u64,
            len: len as u64,
            open: None,
        };
        let mut body = FileRangeBody::new(range, report.clone());
        body.cached_bytes_max = 1_000;
        let waker = futures::task::noop_waker();
        let mut sent = Vec::new();
        while let Some(chunk) = next_chunk(&mut body, &waker).await {
            sent.extend_from_slice(&chunk);
        }
        assert!(sent == file[offset..offset + len]);
        assert_eq!(
            report.outcome(),
            Some(Ok(crc32c::crc32c(&file[offset..offset + len])))
        );
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn a_paced_body_hands_out_small_chunks_at_the_shapers_rate() {
        use crate::config::{Rate, ShapingConfig};
        use crate::drain::shaper::clock::ManualClock;
        const RATE_BYTES_PER_SEC: u64 = 256 * 1024;
        let file = bytes(256 * 1024);
        let (_dir, path) = file_with(&file);
        let config = ShapingConfig {
            rate: Rate::BytesPerSec(RATE_BYTES_PER_SEC),
            clock_unknown_rate: Rate::BytesPerSec(RATE_BYTES_PER_SEC),
            ..ShapingConfig::default()
        };
        let clock = ManualClock::new(jiff::Timestamp::now(), true);
        let shaper = Shaper::with_clock(config, None, Arc::new(clock));
        let range = whole(path, &file);
        let mut body = FileRangeBody::new(range, Arc::default());
        body.pacer = Some(shaper.clone());
        let waker = futures::task::noop_waker();
        let started = std::time::Instant::now();
        let mut sent = Vec::new();
        while let Some(chunk) = next_chunk(&mut body, &waker).await {
            assert!(chunk.len() <= 16 * 1024, "a chunk of {} bytes", chunk.len());
            sent.extend_from_slice(&chunk);
        }
        let secs = started.elapsed().as_secs_f64();
        assert!(sent == file);
        // One second of the rate, less the bucket's first 100 ms.
        assert!((0.8..1.3).contains(&secs), "took {secs} s");
        assert_eq!(shaper.wan_bytes_total(), file.len() as u64);
    }

    #[tokio::test]
    async fn every_attempt_of_a_retryable_body_is_paced_again() {
        let file = bytes(3 * BODY_CHUNK_BYTES + 7);
        let (_dir, path) = file_with(&file);
        let shaper = Shaper::unlimited();
        let range = whole(path, &file);
        let first = byte_stream(range, Arc::default(), Some(shaper.clone())).into_inner();
        // What the SDK does for a retry: a fresh body from the same request.
        let retry = first.try_clone().expect("a retryable body");
        for body in [first, retry] {
            // Chunk by chunk, dropping each as hyper does (collecting them all would keep the
            // body's buffers, and it would wait for one forever).
            let mut stream = ByteStream::new(body);
            let mut sent = Vec::new();
            while let Some(chunk) = stream.next().await {
                sent.extend_from_slice(&chunk.unwrap());
            }
            assert!(sent == file);
        }
        assert_eq!(shaper.wan_bytes_total(), 2 * file.len() as u64);
    }

    #[tokio::test]
    async fn a_body_holds_two_buffers_and_waits_for_hyper_to_give_one_back() {
        let file = bytes(5 * BODY_CHUNK_BYTES);
        let (_dir, path) = file_with(&file);
        let range = whole(path, &file);
        let mut body = FileRangeBody::new(range, Arc::default());
        let wakes = Arc::new(CountingWaker::default());
        let waker = futures::task::waker(wakes.clone());
        // Hyper keeps both chunks (a slow socket): the body has no buffer left to read into.
        let first = next_chunk(&mut body, &waker).await.unwrap();
        let second = next_chunk(&mut body, &waker).await.unwrap();
        assert_eq!(body.made, BODY_CHUNKS_COUNT_MAX);
        for _ in 0..3 {
            let mut cx = Context::from_waker(&waker);
            assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        }
        let wakes_before = wakes.0.load(Ordering::SeqCst);
        drop(first);
        assert!(
            wakes.0.load(Ordering::SeqCst) > wakes_before,
            "a returned buffer wakes the body"
        );
        let third = next_chunk(&mut body, &waker).await.unwrap();
        assert_eq!(body.made, BODY_CHUNKS_COUNT_MAX, "the buffer was reused");
        assert!(second[..] == file[BODY_CHUNK_BYTES..2 * BODY_CHUNK_BYTES]);
        assert!(third[..] == file[2 * BODY_CHUNK_BYTES..3 * BODY_CHUNK_BYTES]);
    }
}
