//! [`UringEngine`]: spool writes and syncs through one io_uring, driven by a dedicated thread.
//!
//! Callers send requests over a bounded channel and wait on a oneshot answer. The ring thread
//! owns every request (the file and the `Bytes` the kernel reads from) from submission until
//! its completion arrives, so no buffer is ever freed or reused under the kernel, even when the
//! caller stops waiting. Short writes are continued from where they stopped.
//!
//! io_uring starts submissions in any order: an fsync queued with writes may complete before
//! them. So an fsync of a file waits in the thread until the writes already submitted for that
//! file have completed, and requests for the file that arrive after it queue behind it.
//!
//! The thread sleeps in `io_uring_enter`. To wake it for a new request without a system call
//! per request, it keeps a read posted on a pipe and says when it is about to sleep; only then
//! does a caller write a byte to the pipe.
//!
//! It owns its ring and its thread; like every engine it never names a path nor touches the
//! catalog or the journal.

use std::fs::File;
use std::io::{self, PipeReader, PipeWriter, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};

use bytes::{Buf, Bytes};
use io_uring::{IoUring, Probe, opcode, types};
use nix::errno::Errno;
use tokio::sync::{mpsc, oneshot};

use super::engine::SyncScope;
use crate::num::{u64_from_usize, usize_from_u32};

mod held;

use held::{FileBarriers, Slots};

/// Submission queue entries of the ring (its completion queue has twice as many).
const RING_ENTRIES_COUNT: u32 = 256;
/// Requests the ring thread holds at once, in the kernel or waiting behind an fsync. One
/// entry stays free for the wake-up read, so the queues can never overflow.
const REQUESTS_HELD_COUNT_MAX: usize = usize_from_u32(RING_ENTRIES_COUNT) - 1;
/// Requests waiting in the channel to the ring thread; senders wait beyond this.
const REQUESTS_QUEUED_COUNT_MAX: usize = 64;
/// Most bytes one write entry carries (its length field has 32 bits); the rest of a larger
/// write continues like a short write.
const WRITE_ENTRY_BYTES_MAX: usize = 1 << 30;
/// Bytes one wake-up read takes from the pipe.
const WAKE_READ_BYTES: u32 = 64;
/// `user_data` of the wake-up read; requests use their slot index, which stays far below.
const WAKE_TOKEN: u64 = u64::MAX;

const _: () = assert!(REQUESTS_HELD_COUNT_MAX < usize_from_u32(RING_ENTRIES_COUNT));
const _: () = assert!(WRITE_ENTRY_BYTES_MAX <= usize_from_u32(u32::MAX));

/// Why io_uring cannot be used. The message names the cause an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The ring could not be created.
    #[error("io_uring_setup failed: {}", explain(.0))]
    Setup(io::Error),
    /// The kernel would not say which operations it supports.
    #[error("the io_uring opcode probe failed: {}", explain(.0))]
    Probe(io::Error),
    /// An operation the engine needs is missing.
    #[error("the kernel's io_uring lacks the {0} operation")]
    MissingOpcode(&'static str),
    /// The ring was made but a first no-op through it failed.
    #[error("a NOP submitted to io_uring failed: {}", explain(.0))]
    Nop(io::Error),
    /// The thread that serves the ring could not start.
    #[error("cannot start the io_uring thread: {0}")]
    Thread(io::Error),
}

/// The errno's name, its text, and what it usually means here.
fn explain(err: &io::Error) -> String {
    let Some(errno) = err.raw_os_error().map(Errno::from_raw) else {
        return err.to_string();
    };
    let why = match errno {
        Errno::EPERM => {
            "refused by policy: a seccomp profile (Docker's default blocks io_uring) or the \
             sysctl kernel.io_uring_disabled"
        }
        Errno::ENOSYS => "the kernel has no io_uring (CONFIG_IO_URING off), or seccomp hides it",
        Errno::ENOMEM => {
            "not enough locked memory for the ring: raise RLIMIT_MEMLOCK (ulimit -l); \
             kernels before 5.12 charge rings to it"
        }
        Errno::EINVAL => "the kernel is too old for the ring this engine sets up",
        _ => return format!("{errno:?}, {}", errno.desc()),
    };
    format!("{errno:?}, {} ({why})", errno.desc())
}

/// One write or sync, owned by the ring thread until its completion.
struct Request {
    file: Arc<File>,
    op: Op,
    reply: oneshot::Sender<io::Result<()>>,
}

enum Op {
    /// `data` is what remains to be written, at `offset`.
    Write {
        offset: u64,
        data: Bytes,
    },
    Fsync(SyncScope),
}

impl Op {
    fn is_write(&self) -> bool {
        matches!(self, Op::Write { .. })
    }
}

/// Wakes the ring thread when it sleeps.
struct Waker {
    /// Set by the ring thread just before it may sleep in `io_uring_enter`.
    asleep: AtomicBool,
    /// The ring thread keeps a read posted on the other end. Non-blocking: a full pipe
    /// already wakes the thread.
    pipe: PipeWriter,
}

impl Waker {
    /// Called after a request was queued.
    fn wake(&self) {
        // Pairs with the fence in `RingThread::run`: either the thread sees the request
        // before sleeping, or we see that it sleeps.
        fence(Ordering::SeqCst);
        if self.asleep.swap(false, Ordering::SeqCst) {
            self.poke();
        }
    }

    fn poke(&self) {
        let _ = (&self.pipe).write(&[1]);
    }
}

/// Spool writes and syncs through io_uring. Dropping it lets the ring thread finish what it
/// holds and exit.
pub struct UringEngine {
    requests: Option<mpsc::Sender<Request>>,
    waker: Arc<Waker>,
    /// The ring thread; detached on drop (it exits once it has answered what it holds).
    #[cfg_attr(not(test), expect(dead_code, reason = "joined only by tests"))]
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UringEngine")
    }
}

impl UringEngine {
    /// Probes io_uring (setup, opcode probe, one NOP) on a new thread that, if all went well,
    /// goes on to drive the ring.
    pub fn start() -> Result<UringEngine, ProbeError> {
        let (wake_reader, wake_writer) = io::pipe().map_err(ProbeError::Thread)?;
        nix::fcntl::fcntl(
            &wake_writer,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| ProbeError::Thread(e.into()))?;
        let waker = Arc::new(Waker {
            asleep: AtomicBool::new(false),
            pipe: wake_writer,
        });
        let (requests, receiver) = mpsc::channel(REQUESTS_QUEUED_COUNT_MAX);
        let (probed_tx, probed_rx) = std::sync::mpsc::sync_channel(1);
        let thread_waker = waker.clone();
        let thread = std::thread::Builder::new()
            .name("spool-uring".to_owned())
            .spawn(move || match probe() {
                Ok(ring) => {
                    let _ = probed_tx.send(Ok(()));
                    RingThread::new(ring, receiver, thread_waker, wake_reader).run();
                }
                Err(err) => {
                    let _ = probed_tx.send(Err(err));
                }
            })
            .map_err(ProbeError::Thread)?;
        probed_rx.recv().map_err(|_| {
            ProbeError::Thread(io::Error::other(
                "the io_uring thread ended during the probe",
            ))
        })??;
        Ok(UringEngine {
            requests: Some(requests),
            waker,
            thread: Some(thread),
        })
    }

    /// Writes all of `data` at `offset`.
    pub async fn write_at(&self, file: &Arc<File>, offset: u64, data: Bytes) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.call(file, Op::Write { offset, data }).await
    }

    /// Makes every write to `file` submitted before this call durable.
    pub async fn fsync(&self, file: &Arc<File>, scope: SyncScope) -> io::Result<()> {
        self.call(file, Op::Fsync(scope)).await
    }

    /// The ring thread, for a test that it ends.
    #[cfg(test)]
    pub(super) fn take_thread(&mut self) -> std::thread::JoinHandle<()> {
        self.thread.take().expect("thread taken once")
    }

    async fn call(&self, file: &Arc<File>, op: Op) -> io::Result<()> {
        let (reply, answer) = oneshot::channel();
        let requests = self.requests.as_ref().ok_or_else(engine_stopped)?;
        requests
            .send(Request {
                file: file.clone(),
                op,
                reply,
            })
            .await
            .map_err(|_| engine_stopped())?;
        self.waker.wake();
        answer.await.map_err(|_| engine_stopped())?
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        // Closing the channel first, then waking, so that the thread sees it closed.
        self.requests = None;
        self.waker.poke();
    }
}

fn engine_stopped() -> io::Error {
    io::Error::other("the io_uring engine has stopped")
}

/// Sets up the ring and proves it works before anything depends on it.
fn probe() -> Result<IoUring, ProbeError> {
    let mut ring = IoUring::new(RING_ENTRIES_COUNT).map_err(ProbeError::Setup)?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(ProbeError::Probe)?;
    for (code, name) in [
        (opcode::Nop::CODE, "NOP"),
        (opcode::Read::CODE, "READ"),
        (opcode::Write::CODE, "WRITE"),
        (opcode::Fsync::CODE, "FSYNC"),
    ] {
        if !probe.is_supported(code) {
            return Err(ProbeError::MissingOpcode(name));
        }
    }
    let nop = opcode::Nop::new().build().user_data(0);
    // SAFETY: a NOP refers to no memory.
    unsafe { ring.submission().push(&nop) }
        .map_err(|_| ProbeError::Nop(io::Error::other("the submission queue is full")))?;
    ring.submit_and_wait(1).map_err(ProbeError::Nop)?;
    let nop_result = ring.completion().next().map(|cqe| cqe.result());
    match nop_result {
        Some(res) if res >= 0 => Ok(ring),
        Some(res) => Err(ProbeError::Nop(io::Error::from_raw_os_error(-res))),
        None => Err(ProbeError::Nop(io::Error::other("no completion arrived"))),
    }
}

/// What a completion means for its request.
enum Progress {
    /// Submit it again (the rest of a short write, or an interrupted one).
    Again(Request),
    Done(Request, io::Result<()>),
}

fn progress(mut request: Request, res: i32) -> Progress {
    match &mut request.op {
        Op::Write { .. } if res == -nix::libc::EINTR || res == -nix::libc::EAGAIN => {
            Progress::Again(request)
        }
        Op::Write { .. } if res < 0 => {
            Progress::Done(request, Err(io::Error::from_raw_os_error(-res)))
        }
        Op::Write { .. } if res == 0 => Progress::Done(
            request,
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the write wrote nothing",
            )),
        ),
        Op::Write { offset, data } => {
            let written = usize_from_u32(res.unsigned_abs());
            assert!(
                written <= data.len(),
                "the kernel wrote more than it was given"
            );
            data.advance(written);
            *offset += u64_from_usize(written);
            if data.is_empty() {
                Progress::Done(request, Ok(()))
            } else {
                Progress::Again(request)
            }
        }
        // A failed fsync is reported, never retried: the kernel may have dropped the pages.
        Op::Fsync(_) if res < 0 => Progress::Done(request, Err(io::Error::from_raw_os_error(-res))),
        Op::Fsync(_) => Progress::Done(request, Ok(())),
    }
}

/// The ring and everything the kernel may be using.
struct RingThread {
    ring: IoUring,
    requests: mpsc::Receiver<Request>,
    waker: Arc<Waker>,
    wake_pipe: PipeReader,
    /// Target of the wake-up read; the kernel may write it while `wake_armed`.
    wake_buf: Box<[u8; usize_from_u32(WAKE_READ_BYTES)]>,
    wake_armed: bool,
    in_flight: Slots,
    barriers: FileBarriers,
    /// Requests taken from the channel and not yet answered.
    held: usize,
    /// The engine was dropped: finish what is held, then exit.
    closed: bool,
    reaped: Vec<(u64, i32)>,
}

impl RingThread {
    fn new(
        ring: IoUring,
        requests: mpsc::Receiver<Request>,
        waker: Arc<Waker>,
        wake_pipe: PipeReader,
    ) -> Self {
        RingThread {
            ring,
            requests,
            waker,
            wake_pipe,
            wake_buf: Box::new([0; usize_from_u32(WAKE_READ_BYTES)]),
            wake_armed: false,
            in_flight: Slots::default(),
            barriers: FileBarriers::default(),
            held: 0,
            closed: false,
            reaped: Vec::new(),
        }
    }

    fn run(mut self) {
        self.arm_wake();
        loop {
            self.take_requests();
            if self.closed && self.held == 0 {
                if !self.wake_armed {
                    // Nothing is in the kernel any more: the ring and the buffers may go.
                    return;
                }
                // Complete our own wake-up read rather than leave it posted.
                self.waker.poke();
            }
            let may_take_more = !self.closed && self.held < REQUESTS_HELD_COUNT_MAX;
            if may_take_more {
                self.waker.asleep.store(true, Ordering::SeqCst);
                // Pairs with the fence in `Waker::wake`.
                fence(Ordering::SeqCst);
                match self.requests.try_recv() {
                    Ok(request) => {
                        self.waker.asleep.store(false, Ordering::SeqCst);
                        self.accept(request);
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        self.waker.asleep.store(false, Ordering::SeqCst);
                        self.closed = true;
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
            }
            let entered = self.ring.submit_and_wait(1);
            self.waker.asleep.store(false, Ordering::SeqCst);
            match entered.map_err(|e| (e.raw_os_error().map(Errno::from_raw), e)) {
                Ok(_) => {}
                // Interrupted, or the kernel is short of resources right now: reap and retry.
                Err((Some(Errno::EINTR | Errno::EAGAIN | Errno::EBUSY), _)) => {}
                Err((_, err)) => return self.abandon(&err),
            }
            self.reap();
        }
    }

    fn take_requests(&mut self) {
        while !self.closed && self.held < REQUESTS_HELD_COUNT_MAX {
            match self.requests.try_recv() {
                Ok(request) => self.accept(request),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => self.closed = true,
            }
        }
    }

    fn accept(&mut self, request: Request) {
        self.held += 1;
        if let Some(request) = self.barriers.admit(request) {
            self.start(request);
        }
    }

    fn reap(&mut self) {
        let mut reaped = std::mem::take(&mut self.reaped);
        reaped.extend(
            self.ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result())),
        );
        for &(user_data, res) in &reaped {
            self.complete(user_data, res);
        }
        reaped.clear();
        self.reaped = reaped;
    }

    fn complete(&mut self, user_data: u64, res: i32) {
        if user_data == WAKE_TOKEN {
            self.wake_armed = false;
            if res < 0 {
                tracing::error!(
                    error = %io::Error::from_raw_os_error(-res),
                    "io_uring wake-up read failed"
                );
            }
            if !self.closed {
                self.arm_wake();
            }
            return;
        }
        let Ok(slot) = usize::try_from(user_data) else {
            panic!("io_uring completion with foreign user_data {user_data}");
        };
        match progress(self.in_flight.take(slot), res) {
            Progress::Again(request) => self.start(request),
            Progress::Done(request, result) => self.finish(request, result),
        }
    }

    fn finish(&mut self, request: Request, result: io::Result<()>) {
        self.held -= 1;
        if request.op.is_write() {
            for ready in self.barriers.write_done(request.file.as_raw_fd()) {
                self.start(ready);
            }
        }
        // The caller may have stopped waiting; the result then has no one to go to.
        let _ = request.reply.send(result);
    }

    fn start(&mut self, request: Request) {
        let fd = types::Fd(request.file.as_raw_fd());
        let entry = match &request.op {
            Op::Write { offset, data } => {
                // Fits: WRITE_ENTRY_BYTES_MAX is below u32::MAX (asserted above).
                let len = u32::try_from(data.len().min(WRITE_ENTRY_BYTES_MAX)).unwrap_or(u32::MAX);
                opcode::Write::new(fd, data.as_ptr(), len)
                    .offset(*offset)
                    .build()
            }
            Op::Fsync(scope) => opcode::Fsync::new(fd)
                .flags(match scope {
                    SyncScope::Data => types::FsyncFlags::DATASYNC,
                    SyncScope::All => types::FsyncFlags::empty(),
                })
                .build(),
        };
        let slot = self.in_flight.insert(request);
        self.push(&entry.user_data(u64_from_usize(slot)));
    }

    fn arm_wake(&mut self) {
        let entry = opcode::Read::new(
            types::Fd(self.wake_pipe.as_raw_fd()),
            self.wake_buf.as_mut_ptr(),
            WAKE_READ_BYTES,
        )
        .build()
        .user_data(WAKE_TOKEN);
        self.push(&entry);
        self.wake_armed = true;
    }

    fn push(&mut self, entry: &io_uring::squeue::Entry) {
        loop {
            // SAFETY: the entry points at memory that stays valid and unmoved until its
            // completion is reaped: the heap buffer of a `Bytes` and the file of a request
            // held in `in_flight` (taken out only by `complete`), or `wake_buf`, which is
            // boxed and not freed while `wake_armed`.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return;
            }
            // Cannot happen with at most RING_ENTRIES_COUNT entries held, but handing the
            // queued entries to the kernel makes room if it does.
            if let Err(err) = self.ring.submit() {
                tracing::warn!(error = %err, "io_uring submit failed while the queue was full");
            }
        }
    }

    /// The ring failed in a way that cannot be retried. Every caller gets an error; what the
    /// kernel may still be using is leaked rather than freed under it.
    fn abandon(mut self, err: &io::Error) {
        tracing::error!(error = %err, "io_uring engine stopped; spool writes fail from now on");
        let failure = || io::Error::other(format!("the io_uring engine stopped: {err}"));
        for request in self.in_flight.drain() {
            let Request { file, op, reply } = request;
            let _ = reply.send(Err(failure()));
            std::mem::forget((file, op));
        }
        for request in self.barriers.drain() {
            let _ = request.reply.send(Err(failure()));
        }
        if self.wake_armed {
            std::mem::forget(self.wake_buf);
        }
    }
}

#[cfg(test)]
mod tests;
