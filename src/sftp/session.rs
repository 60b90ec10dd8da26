//! One SFTP session over one channel stream: our own pipelined loop over russh-sftp's protocol
//! types (never `russh_sftp::server::run`, which handles one request at a time and carries on
//! after garbage).
//!
//! Four kinds of task share the work:
//! - the **reader** reads length-prefixed packets and decodes them. A length above
//!   [`SFTP_PACKET_BYTES_MAX`] or an undecodable packet ends the session: parsing on after
//!   garbage would read misaligned bytes as requests. Every request is charged its length plus
//!   [`SFTP_REQUEST_OVERHEAD_BYTES`] against [`SFTP_QUEUED_REQUEST_BYTES_MAX`] until its reply is
//!   queued, and its body is charged to the process-wide ingest budget (see `budget`) until
//!   the body is dropped; when either is spent the reader stops, which stops russh reading the
//!   socket (back-pressure to the client).
//! - the **dispatcher** routes requests in arrival order: operations on a write handle go to
//!   that handle's worker; READ and READDIR first wait, in a queue of their own, for reply budget
//!   ([`SFTP_REPLY_DATA_BYTES_MAX`]); everything else waits only for one of the
//!   [`SFTP_REQUESTS_EXECUTING_COUNT_MAX`] execution slots and then runs in a task of its own.
//! - one **write worker** per open write handle applies WRITE, FSYNC, FSTAT, FSETSTAT and CLOSE
//!   in arrival order, merging adjacent writes already queued (up to
//!   [`SFTP_WRITE_COALESCE_BYTES_MAX`]). CLOSE is answered only after `WriteHandle::close`
//!   returned (the durability point), which is after every earlier write of the handle. A
//!   failed write poisons the handle: later writes fail the same way and CLOSE reports failure
//!   and leaves the file partial, so a file with a hole is never sealed. A worker never waits
//!   for room in the reply queue while operations wait for it: their data would hold the
//!   ingest budget for as long as the client does not read replies.
//! - one **writer** sends replies in the order they are ready, merging small ones.
//!
//! Why the budgets are split: russh's session loop blocks when a channel's buffer is full and
//! then stops reading WINDOW_ADJUST from the client. If replies waiting for the client's window
//! could fill the reader's budget, the reader would stop, russh would stop, the window would
//! never open: a deadlock (seen with paramiko's unbounded READ pipelines). Here data replies
//! hold their own budget, READs parked behind it cost the reader only their small request, and
//! small replies are bounded by count ([`SFTP_REPLIES_QUEUED_COUNT_MAX`]), which only a client
//! with that many requests outstanding and unread can reach. The ingest budget is shared by
//! all sessions, so nothing that holds it may wait on one client: WRITE data gives it back
//! once applied, and write workers never wait for the reply queue (see `handles::Acks`).
//!
//! When the input ends (EOF, or a bad packet), the requests read before are still executed and
//! answered; when the session must stop at once (protocol violation, channel gone) queued
//! requests are dropped. Either way writes already queued on a handle are applied, then every
//! write handle that was not closed is dropped, which leaves its file `partial` in the spool.
//!
//! Owns the tasks and budgets of one session. What a request does is `ops`', `handles`' and
//! `lane`'s, what bytes go on the wire is `wire`'s; it sees a stream, never SSH, and may not
//! touch the spool but through them.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use russh_sftp::protocol::{Extended, Packet, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::budget::{IngestBudget, SessionIngest, read_charged};
use super::handles::{Handles, OpenHandle, WriteOp, invalid_handle, write_worker};
use super::lane::{self, LaneOp};
use super::{
    SFTP_BODY_STALL_SECONDS, SFTP_NAME_REPLY_BYTES_MAX, SFTP_QUEUED_REQUEST_BYTES_MAX,
    SFTP_REPLIES_QUEUED_COUNT_MAX, SFTP_REPLY_BATCH_BYTES_MAX, SFTP_REPLY_DATA_BYTES_MAX,
    SFTP_REQUEST_OVERHEAD_BYTES, SFTP_REQUESTS_EXECUTING_COUNT_MAX, ops, wire,
};
use crate::limits::{SFTP_IO_BYTES_MAX, SFTP_PACKET_BYTES_MAX};
use crate::num::usize_from_u32;
use crate::spool::{FsError, FsErrorKind, Spool, VPath, WriteHandle};

/// Requests that can be queued at once, implied by the request budget; channels sized with it
/// never make a sender wait.
const REQUESTS_QUEUED_COUNT_MAX: usize =
    usize_from_u32(SFTP_QUEUED_REQUEST_BYTES_MAX / SFTP_REQUEST_OVERHEAD_BYTES);
/// Replies at least this big are written on their own instead of being merged.
const REPLY_ALONE_BYTES_MIN: usize = 16 * 1024;

/// Why a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The client closed the stream between packets.
    ClientClosed,
    /// The stream ended in the middle of a packet.
    Truncated,
    /// A packet announced a length of zero or above `SFTP_PACKET_BYTES_MAX`.
    BadLength(u32),
    /// A packet could not be decoded.
    BadPacket(String),
    /// A well-formed packet that makes no sense here (a second INIT, a reply type, ...).
    ProtocolViolation(&'static str),
    /// Reading the stream failed.
    ReadFailed(io::Error),
    /// Writing replies failed (the client went away).
    WriteFailed(io::Error),
    /// No request arrived for the session policy's idle timeout.
    Idle(Duration),
}

impl SessionEnd {
    /// The `exit-status` the channel reports, as OpenSSH's sftp-server exits: 0 after the
    /// client ended the session between packets, 1 for anything else (scp and `ssh -s`
    /// report it as their own exit code).
    pub fn exit_status(&self) -> u32 {
        match self {
            Self::ClientClosed => 0,
            _ => 1,
        }
    }

    /// True if the client did something a correct client never does.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Self::BadLength(_) | Self::BadPacket(_) | Self::ProtocolViolation(_)
        )
    }
}

/// Runs one SFTP session for `user` over `stream` until it ends, then waits until every
/// request it started has finished and every unclosed write handle is dropped. Request data
/// it holds in memory is charged to `ingest`, which all sessions of a server share.
///
/// `closed` must complete when the stream's channel is gone (closed by the client, or the
/// connection ended). A russh channel writer waiting for window that will never come is not
/// woken when its channel goes away; `closed` is what stops it.
///
/// `channel_end` is called with [`SessionEnd::exit_status`] once every reply is written and
/// before the stream is dropped, so that the channel can report the status ahead of its EOF
/// and CLOSE (dropping a russh channel stream closes the channel). It is not called when
/// replies could not be written: then nobody is listening.
pub async fn run<S, E, F>(
    stream: S,
    spool: Arc<Spool>,
    user: &str,
    policy: super::SessionPolicy,
    ingest: &IngestBudget,
    closed: impl Future<Output = ()> + Send + 'static,
    channel_end: E,
) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    E: FnOnce(u32) -> F + Send + 'static,
    F: Future<Output = ()> + Send,
{
    let (input, output) = tokio::io::split(stream);
    let request_budget = Arc::new(Semaphore::new(usize_from_u32(
        SFTP_QUEUED_REQUEST_BYTES_MAX,
    )));
    let (request_tx, request_rx) = mpsc::channel(REQUESTS_QUEUED_COUNT_MAX);
    let reader = tokio::spawn(read_requests(
        input,
        request_budget,
        ingest.session(),
        policy.idle_timeout,
        request_tx,
    ));
    let (reply_tx, reply_rx) = mpsc::channel(SFTP_REPLIES_QUEUED_COUNT_MAX);
    let (status_tx, status_rx) = oneshot::channel::<u32>();
    let mut writer = tokio::spawn(async move {
        // Wrapped: only what the task captures must be 'static, not `channel_end`'s future.
        write_then_end(output, reply_rx, closed, status_rx, channel_end).await
    });

    let (tracker, token) = TaskTracker::new();
    let ctx = Ctx {
        spool,
        user: Arc::from(user),
        names: policy.names,
        virtual_dir: policy.virtual_dir,
        handles: Arc::new(Mutex::new(Handles::default())),
        replies: reply_tx,
        executing: Arc::new(Semaphore::new(SFTP_REQUESTS_EXECUTING_COUNT_MAX)),
        token,
    };
    let (lane_tx, lane_rx) = mpsc::channel(REQUESTS_QUEUED_COUNT_MAX);
    let lane_stop = Arc::new(AtomicBool::new(false));
    ctx.spawn(lane::run_lane(ctx.clone(), lane_rx, Arc::clone(&lane_stop)));
    let mut dispatcher = Dispatcher {
        ctx: ctx.clone(),
        lane: lane_tx,
        initialized: false,
        reply_budget: Arc::new(Semaphore::new(usize_from_u32(SFTP_REPLY_DATA_BYTES_MAX))),
        parked: VecDeque::new(),
        ready: VecDeque::new(),
    };
    let dispatched = dispatcher.run(request_rx, &mut writer).await;
    drop(dispatcher);

    let mut writer_result = None;
    let end = match dispatched {
        Dispatched::InputEnded => match reader.await {
            Ok(end) => end,
            Err(join) => SessionEnd::ReadFailed(io::Error::other(join)),
        },
        Dispatched::Stopped(end, writer_done) => {
            lane_stop.store(true, Ordering::Relaxed);
            reader.abort();
            let _ = reader.await;
            writer_result = writer_done;
            end
        }
    };

    // The writer ends once every task has queued its last reply, after this.
    let _ = status_tx.send(end.exit_status());
    // Unclosed write handles: their workers finish what is queued, then drop the handle.
    ctx.handles().close();
    drop(ctx);
    tracker.wait().await;
    let writer_result = match writer_result {
        Some(result) => result,
        None => writer
            .await
            .unwrap_or_else(|join| Err(io::Error::other(join))),
    };
    match (end, writer_result) {
        // A broken pipe after the client's EOF is just the client having left first.
        (SessionEnd::ClientClosed, Err(err)) if err.kind() != io::ErrorKind::BrokenPipe => {
            SessionEnd::WriteFailed(err)
        }
        (end, _) => end,
    }
}

/// The writer task: writes replies until every sender is gone or `closed` completes, then,
/// if they were all written, reports the session's exit status through `channel_end` before
/// `output` is dropped (which closes a russh channel).
async fn write_then_end<W, E, F>(
    mut output: W,
    replies: mpsc::Receiver<Reply>,
    closed: impl Future<Output = ()>,
    status: oneshot::Receiver<u32>,
    channel_end: E,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
    E: FnOnce(u32) -> F,
    F: Future<Output = ()>,
{
    let result = tokio::select! {
        result = write_replies(&mut output, replies) => result,
        () = closed => Err(io::Error::new(io::ErrorKind::BrokenPipe, "the channel is closed")),
    };
    // The replies end only once the session has decided how it ended (see `run`).
    if result.is_ok()
        && let Ok(status) = status.await
    {
        channel_end(status).await;
    }
    drop(output);
    result
}

/// A packet as read, with its share of the request budget (its data carries its ingest charge).
struct Arrival {
    incoming: wire::Incoming,
    budget: OwnedSemaphorePermit,
}

/// A decoded request and its share of the request budget, returned when its reply is queued.
struct Request {
    packet: Packet,
    budget: OwnedSemaphorePermit,
}

/// An encoded reply; `budget` (reply data budget) is returned once it is handed to the channel.
struct Reply {
    bytes: Bytes,
    _budget: Option<OwnedSemaphorePermit>,
}

/// What every request task needs.
#[derive(Clone)]
pub(super) struct Ctx {
    pub spool: Arc<Spool>,
    pub user: Arc<str>,
    pub names: super::NamePolicy,
    pub virtual_dir: Option<super::receipts::VirtualDir>,
    handles: Arc<Mutex<Handles>>,
    replies: mpsc::Sender<Reply>,
    pub executing: Arc<Semaphore>,
    token: TaskToken,
}

impl Ctx {
    pub(super) fn handles(&self) -> MutexGuard<'_, Handles> {
        // Poisoning needs a panic while locked, and panics abort this program.
        self.handles.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spawns a task the session waits for before it ends.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let token = self.token.clone();
        tokio::spawn(async move {
            task.await;
            drop(token);
        });
    }

    /// Queues a reply; fails silently once the writer is gone (the session is ending).
    pub(super) async fn reply(&self, bytes: Bytes, budget: Option<OwnedSemaphorePermit>) {
        let _ = self
            .replies
            .send(Reply {
                bytes,
                _budget: budget,
            })
            .await;
    }

    /// Queues a reply (with the reply data budget it holds, if any) if the queue has room;
    /// gives it back if not. Once the writer is gone the reply is dropped (the session is
    /// ending).
    pub(super) fn try_reply(
        &self,
        bytes: Bytes,
        budget: Option<OwnedSemaphorePermit>,
    ) -> Result<(), (Bytes, Option<OwnedSemaphorePermit>)> {
        let reply = Reply {
            bytes,
            _budget: budget,
        };
        match self.replies.try_send(reply) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Full(reply)) => Err((reply.bytes, reply._budget)),
        }
    }

    /// Waits until the reply queue has room for one reply, or the writer is gone.
    pub(super) async fn reply_room(&self) {
        // The reserved slot is given back at once: the caller then uses `try_reply`.
        let _ = self.replies.reserve().await;
    }

    /// Queues a reply from the dispatcher, which must never wait on the writer.
    fn reply_soon(&self, bytes: Bytes, request_budget: OwnedSemaphorePermit) {
        match self.replies.try_send(Reply {
            bytes,
            _budget: None,
        }) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => drop(request_budget),
            Err(mpsc::error::TrySendError::Full(reply)) => {
                let ctx = self.clone();
                self.spawn(async move {
                    ctx.reply(reply.bytes, None).await;
                    drop(request_budget);
                });
            }
        }
    }

    /// Starts a write worker for a freshly opened handle and registers it; `None` if the
    /// session is ending (the handle is then dropped: the file stays partial).
    pub(super) fn register_write(&self, handle: WriteHandle, path: VPath) -> Option<String> {
        let (ops_tx, ops_rx) = mpsc::channel(REQUESTS_QUEUED_COUNT_MAX);
        let (finished_tx, finished) = lane::finished_signal();
        let name = self.handles().insert(OpenHandle::Write {
            queue: ops_tx,
            path: path.clone(),
            finished,
        })?;
        let ctx = self.clone();
        self.spawn(write_worker(ctx, handle, ops_rx, path, finished_tx));
        Some(name)
    }
}

/// Lets the session wait until every task it spawned has ended: each task holds a clone of
/// the sender; the receiver sees `None` once all clones are gone.
#[derive(Clone)]
struct TaskToken(#[allow(dead_code)] mpsc::Sender<()>);

struct TaskTracker(mpsc::Receiver<()>);

impl TaskTracker {
    fn new() -> (TaskTracker, TaskToken) {
        let (tx, rx) = mpsc::channel(1);
        (TaskTracker(rx), TaskToken(tx))
    }

    async fn wait(mut self) {
        // Nothing is ever sent; `None` means every token was dropped.
        while self.0.recv().await.is_some() {}
    }
}

async fn read_requests<R: AsyncRead + Unpin>(
    mut input: R,
    budget: Arc<Semaphore>,
    ingest: SessionIngest,
    idle: Option<Duration>,
    requests: mpsc::Sender<Arrival>,
) -> SessionEnd {
    loop {
        let next = match idle {
            Some(idle) => match tokio::time::timeout(idle, read_length(&mut input)).await {
                Ok(next) => next,
                Err(_) => return SessionEnd::Idle(idle),
            },
            None => read_length(&mut input).await,
        };
        let len = match next {
            Ok(Some(len)) => len,
            Ok(None) => return SessionEnd::ClientClosed,
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return SessionEnd::Truncated,
            Err(err) => return SessionEnd::ReadFailed(err),
        };
        if len == 0 || len > SFTP_PACKET_BYTES_MAX {
            return SessionEnd::BadLength(len);
        }
        let Ok(permit) = budget
            .clone()
            .acquire_many_owned(len + SFTP_REQUEST_OVERHEAD_BYTES)
            .await
        else {
            return SessionEnd::ClientClosed; // The budget is never closed.
        };
        // Charged as it arrives (its first piece just before): the memory it takes is what
        // the budget bounds, and a client that announces a body and stalls holds one piece.
        let stall = Duration::from_secs(SFTP_BODY_STALL_SECONDS);
        let body = match read_charged(&mut input, len, &ingest, stall).await {
            Ok(body) => body,
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return SessionEnd::Truncated,
            Err(err) => return SessionEnd::ReadFailed(err),
        };
        let incoming = match wire::decode(body) {
            Ok(incoming) => incoming,
            Err(err) => return SessionEnd::BadPacket(err),
        };
        let arrival = Arrival {
            incoming,
            budget: permit,
        };
        if requests.send(arrival).await.is_err() {
            return SessionEnd::ClientClosed; // The dispatcher stopped first.
        }
    }
}

/// The next packet length, or `None` at a clean end of stream.
async fn read_length<R: AsyncRead + Unpin>(input: &mut R) -> io::Result<Option<u32>> {
    let mut buf = [0u8; 4];
    let mut filled = 0;
    while filled < buf.len() {
        let n = input.read(&mut buf[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        filled += n;
    }
    Ok(Some(u32::from_be_bytes(buf)))
}

async fn write_replies<W: AsyncWrite + Unpin>(
    output: &mut W,
    mut replies: mpsc::Receiver<Reply>,
) -> io::Result<()> {
    let mut batch = BytesMut::new();
    // Replies merged into `batch` keep their budget until the batch is written.
    let mut held = Vec::new();
    while let Some(first) = replies.recv().await {
        let mut next = Some(first);
        while let Some(reply) = next.take() {
            if reply.bytes.len() >= REPLY_ALONE_BYTES_MIN {
                flush_batch(output, &mut batch, &mut held).await?;
                output.write_all(&reply.bytes).await?;
            } else {
                if batch.len() + reply.bytes.len() > SFTP_REPLY_BATCH_BYTES_MAX {
                    flush_batch(output, &mut batch, &mut held).await?;
                }
                batch.extend_from_slice(&reply.bytes);
                held.push(reply);
            }
            // Merge only what is already queued: never delay a reply to wait for another.
            next = replies.try_recv().ok();
        }
        flush_batch(output, &mut batch, &mut held).await?;
        output.flush().await?;
    }
    // No shutdown: on a russh channel that would send EOF before the exit status.
    Ok(())
}

async fn flush_batch<W: AsyncWrite + Unpin>(
    output: &mut W,
    batch: &mut BytesMut,
    held: &mut Vec<Reply>,
) -> io::Result<()> {
    if !batch.is_empty() {
        output.write_all(batch).await?;
        batch.clear();
    }
    held.clear();
    Ok(())
}

enum Dispatched {
    /// The reader stopped and everything it read was dispatched.
    InputEnded,
    /// The session must stop now; carries the writer's result if the writer is why.
    Stopped(SessionEnd, Option<io::Result<()>>),
}

struct Dispatcher {
    ctx: Ctx,
    /// Path requests, run one at a time in arrival order (see `lane`).
    lane: mpsc::Sender<LaneOp>,
    initialized: bool,
    reply_budget: Arc<Semaphore>,
    /// READ and READDIR waiting for reply budget, with the bytes their reply may take.
    parked: VecDeque<(Request, u32)>,
    /// Requests waiting for an execution slot, with their reply budget if they needed one.
    ready: VecDeque<(Request, Option<OwnedSemaphorePermit>)>,
}

impl Dispatcher {
    async fn run(
        &mut self,
        mut requests: mpsc::Receiver<Arrival>,
        writer: &mut JoinHandle<io::Result<()>>,
    ) -> Dispatched {
        let mut input_open = true;
        loop {
            if !input_open && self.parked.is_empty() && self.ready.is_empty() {
                return Dispatched::InputEnded;
            }
            let parked_bytes = self.parked.front().map(|(_, bytes)| *bytes);
            tokio::select! {
                biased;
                result = &mut *writer => {
                    let result = result.unwrap_or_else(|join| Err(io::Error::other(join)));
                    let err = match &result {
                        Ok(()) => io::Error::other("reply writer stopped"),
                        Err(err) => io::Error::new(err.kind(), err.to_string()),
                    };
                    return Dispatched::Stopped(SessionEnd::WriteFailed(err), Some(result));
                }
                permit = self.reply_budget.clone().acquire_many_owned(parked_bytes.unwrap_or(0)),
                    if parked_bytes.is_some() =>
                {
                    let Ok(permit) = permit else { unreachable!("reply budget is never closed") };
                    match self.parked.pop_front() {
                        // READDIRs of a handle read on from where the last one stopped: they
                        // run in the lane, in arrival order (parked ones leave in order).
                        Some((Request { packet: packet @ Packet::ReadDir(_), budget }, _)) => {
                            let op = LaneOp::new(packet, budget).with_reply_budget(permit);
                            self.queue_in_lane(op, &[]).await;
                        }
                        Some((request, _)) => self.ready.push_back((request, Some(permit))),
                        None => {}
                    }
                }
                slot = self.ctx.executing.clone().acquire_owned(), if !self.ready.is_empty() => {
                    let Ok(slot) = slot else { unreachable!("execution slots are never closed") };
                    if let Some((request, reply_budget)) = self.ready.pop_front() {
                        let ctx = self.ctx.clone();
                        self.ctx.spawn(execute(ctx, request, reply_budget, slot));
                    }
                }
                incoming = requests.recv(), if input_open => match incoming {
                    Some(request) => {
                        if let Err(violation) = self.route(request).await {
                            return Dispatched::Stopped(SessionEnd::ProtocolViolation(violation), None);
                        }
                    }
                    None => input_open = false,
                },
            }
        }
    }

    /// Sends one request where it will be executed.
    async fn route(&mut self, arrival: Arrival) -> Result<(), &'static str> {
        let Arrival { incoming, budget } = arrival;
        let packet = match incoming {
            wire::Incoming::Write { .. } if !self.initialized => return Err("request before INIT"),
            wire::Incoming::Write {
                id,
                handle,
                offset,
                data,
            } => {
                let op = WriteOp::Write {
                    id,
                    offset,
                    data,
                    budget,
                };
                self.queue_on_write_handle(&handle, op).await;
                return Ok(());
            }
            wire::Incoming::Other(packet) => packet,
        };
        if let Packet::Init(init) = &packet {
            if self.initialized {
                return Err("INIT sent twice");
            }
            self.initialized = true;
            tracing::debug!(version = init.version, "sftp client version");
            self.ctx
                .reply_soon(wire::encode(Packet::Version(version())), budget);
            return Ok(());
        }
        if !self.initialized {
            return Err("request before INIT");
        }
        self.route_request(packet, budget).await
    }

    /// Sends one request after INIT (other than WRITE) to the queue it runs from: its write
    /// handle's worker, the reply budget's queue, the lane, or the execution slots.
    async fn route_request(
        &mut self,
        packet: Packet,
        budget: OwnedSemaphorePermit,
    ) -> Result<(), &'static str> {
        let id = packet.get_request_id();
        match packet {
            Packet::Close(close) => self.close(id, &close.handle, budget).await,
            Packet::Fstat(fstat) if self.is_write_handle(&fstat.handle) => {
                self.queue_on_write_handle(&fstat.handle, WriteOp::Fstat { id, budget })
                    .await;
            }
            Packet::FSetStat(set) if self.is_write_handle(&set.handle) => {
                let op = WriteOp::SetStat {
                    id,
                    attrs: set.attrs,
                    budget,
                };
                self.queue_on_write_handle(&set.handle, op).await;
            }
            Packet::Extended(ext) if ext.request == ops::FSYNC => self.fsync(id, ext, budget).await,
            Packet::Read(read) => {
                let len = read.len.min(SFTP_IO_BYTES_MAX);
                let request = Request {
                    packet: Packet::Read(read),
                    budget,
                };
                self.parked
                    .push_back((request, wire::data_reply_bytes(len)));
            }
            packet @ Packet::ReadDir(_) => {
                self.parked
                    .push_back((Request { packet, budget }, SFTP_NAME_REPLY_BYTES_MAX));
            }
            Packet::Init(_)
            | Packet::Version(_)
            | Packet::Status(_)
            | Packet::Handle(_)
            | Packet::Data(_)
            | Packet::Name(_)
            | Packet::Attrs(_)
            | Packet::ExtendedReply(_) => return Err("client sent a server packet"),
            packet => match lane::scopes_of(&packet) {
                Some(scopes) => {
                    self.queue_in_lane(LaneOp::new(packet, budget), &scopes)
                        .await
                }
                None => self.ready.push_back((Request { packet, budget }, None)),
            },
        }
        Ok(())
    }

    /// CLOSE: forgets the handle; a write handle's worker answers it.
    async fn close(&mut self, id: u32, handle: &str, budget: OwnedSemaphorePermit) {
        let removed = self.ctx.handles().remove_closing(handle);
        match removed {
            Some(OpenHandle::Write { queue, .. }) => {
                // The worker answers after every earlier write of the handle.
                if let Err(mpsc::error::SendError(op)) =
                    queue.send(WriteOp::Close { id, budget }).await
                {
                    self.fail(op, invalid_handle());
                }
            }
            Some(OpenHandle::Read { .. } | OpenHandle::Dir(_) | OpenHandle::Memory { .. }) => {
                self.ctx.reply_soon(wire::encode(wire::ok(id)), budget);
            }
            None => self
                .ctx
                .reply_soon(wire::encode(wire::error(id, &invalid_handle())), budget),
        }
    }

    /// fsync@openssh.com: ordered with the writes of a write handle by its worker.
    async fn fsync(&mut self, id: u32, ext: Extended, budget: OwnedSemaphorePermit) {
        match ops::parse_fsync(&ext.data) {
            Ok(handle) if self.is_write_handle(&handle) => {
                self.queue_on_write_handle(&handle, WriteOp::Fsync { id, budget })
                    .await;
            }
            // Read handles have nothing to sync; unknown ones fail in the task.
            _ => self.ready.push_back((
                Request {
                    packet: Packet::Extended(ext),
                    budget,
                },
                None,
            )),
        }
    }

    /// Queues a path request in the lane behind the fences that order it with the write
    /// handles it touches (see `lane`). Neither queue ever makes the dispatcher wait: both
    /// hold as many entries as the request budget allows requests.
    async fn queue_in_lane(&mut self, mut op: LaneOp, scopes: &[lane::Scope]) {
        let queues = self.ctx.handles().order(&mut op, scopes);
        for queue in queues {
            // A worker that is gone has nothing left to order with.
            let _ = queue.send(WriteOp::Fence(op.fence())).await;
        }
        if let Err(mpsc::error::SendError(op)) = self.lane.send(op).await {
            drop(op); // The lane is gone only when the session is ending.
        }
    }

    fn is_write_handle(&self, name: &str) -> bool {
        matches!(
            self.ctx.handles().get_mut(name),
            Some(OpenHandle::Write { .. })
        )
    }

    /// Queues `op` on its handle's worker, or answers it with an error.
    async fn queue_on_write_handle(&mut self, name: &str, op: WriteOp) {
        let queue = match self.ctx.handles().get_mut(name) {
            Some(OpenHandle::Write { queue, .. }) => Ok(queue.clone()),
            Some(OpenHandle::Read { .. } | OpenHandle::Memory { .. }) => Err(FsError::new(
                FsErrorKind::PermissionDenied,
                "the handle was opened for reading",
            )),
            Some(OpenHandle::Dir(_)) | None => Err(invalid_handle()),
        };
        match queue {
            // The queue holds as many requests as the request budget allows: never waits.
            Ok(queue) => {
                if let Err(mpsc::error::SendError(op)) = queue.send(op).await {
                    self.fail(op, invalid_handle());
                }
            }
            Err(err) => self.fail(op, err),
        }
    }

    fn fail(&self, op: WriteOp, err: FsError) {
        if let Some((id, budget)) = op.into_id_budget() {
            self.ctx
                .reply_soon(wire::encode(wire::error(id, &err)), budget);
        }
    }
}

fn version() -> Version {
    let mut version = Version::new();
    for (name, revision) in ops::EXTENSIONS {
        version
            .extensions
            .insert((*name).to_owned(), (*revision).to_owned());
    }
    version
}

/// Runs one request in its own task and queues its reply.
async fn execute(
    ctx: Ctx,
    request: Request,
    reply_budget: Option<OwnedSemaphorePermit>,
    slot: OwnedSemaphorePermit,
) {
    let Request { packet, budget } = request;
    let id = packet.get_request_id();
    let reply = match ops::execute(&ctx, packet).await {
        Ok(bytes) => bytes,
        Err(err) => wire::encode(wire::error(id, &err)),
    };
    drop(slot);
    ctx.reply(reply, reply_budget).await;
    drop(budget);
}
