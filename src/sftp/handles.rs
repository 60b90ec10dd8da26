//! The open handles of one SFTP session, and the worker that applies the operations on one
//! write handle in arrival order (see `session` for how requests reach it).
//!
//! Owns the session's handle table and the write workers. Files change only through
//! `spool::WriteHandle`, and replies go to the session's reply queue (through [`Acks`]), never
//! to the channel.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use russh_sftp::protocol::{FileAttributes, Packet};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::lane::{self, Fence, Finished, LaneOp, Scope};
use super::session::Ctx;
use super::{SFTP_WRITE_COALESCE_BYTES_MAX, SFTP_WRITE_COALESCE_PART_BYTES_MAX, ops, wire};
use crate::limits::SFTP_HANDLES_COUNT_MAX;
use crate::num::u64_from_usize;
use crate::spool::{FsError, FsErrorKind, ReadHandle, VPath, WriteHandle};

/// The open handles of a session.
#[derive(Default)]
pub(super) struct Handles {
    open: HashMap<String, OpenHandle>,
    /// Write handles whose CLOSE went to their worker and may not be done yet: path requests
    /// on their paths wait for them (see `lane`). Finished ones are dropped at every path
    /// request, and every write handle needs one (its OPEN), so this holds at most the handles
    /// closed since the last path request plus those still closing.
    closing: Vec<(VPath, Finished)>,
    /// Slots reserved by OPEN/OPENDIR requests still executing.
    opening: usize,
    next_id: u64,
    /// Set when the session ends; later inserts are refused.
    closed: bool,
    /// Bytes held by the open [`OpenHandle::Memory`] handles.
    memory_bytes: usize,
}

pub(super) enum OpenHandle {
    Write {
        queue: mpsc::Sender<WriteOp>,
        path: VPath,
        /// Completes when the handle's worker has ended.
        finished: Finished,
    },
    Read {
        handle: Arc<ReadHandle>,
        path: VPath,
    },
    Dir(Listing),
    /// A file of the virtual directory (`receipts`), its bytes taken at OPEN.
    Memory {
        data: Bytes,
        mtime_unix: u64,
    },
}

/// Bytes the virtual files a session holds open may take in all (a `queue.txt` is at most a
/// few hundred KiB, a receipt under 1 KiB).
pub(super) const SFTP_MEMORY_HANDLES_BYTES_MAX: usize = 8 * 1024 * 1024;

/// A directory being listed: READDIR reads it page by page from the catalog, after the last
/// name it handed out (entries made or removed meanwhile may or may not show, as with
/// POSIX readdir), so no listing is ever copied whole.
pub(super) struct Listing {
    pub view: ListingView,
    /// The last name (of the user's) handed out; `None` before the first READDIR.
    pub after: Option<String>,
}

/// What a listing lists.
#[derive(Clone)]
pub(super) enum ListingView {
    /// A directory of the user's; `virtual_first`: the virtual directory's entry comes first
    /// (a listing of `/` before its first READDIR).
    Spool { dir: VPath, virtual_first: bool },
    /// The virtual directory itself; `done` once its entries were handed out.
    Top { done: bool },
    /// `receipts/` of this directory of the user's.
    Receipts(VPath),
}

impl Handles {
    /// Reserves a slot for a handle about to be opened; false if the session has
    /// `SFTP_HANDLES_COUNT_MAX` already.
    pub(super) fn reserve(&mut self) -> bool {
        if self.closed || self.open.len() + self.opening >= SFTP_HANDLES_COUNT_MAX {
            return false;
        }
        self.opening += 1;
        true
    }

    pub(super) fn release(&mut self) {
        assert!(self.opening > 0, "handle slot released twice");
        self.opening -= 1;
    }

    /// True if a virtual file of `bytes` fits the session's [`SFTP_MEMORY_HANDLES_BYTES_MAX`].
    pub(super) fn memory_fits(&self, bytes: usize) -> bool {
        self.memory_bytes + bytes <= SFTP_MEMORY_HANDLES_BYTES_MAX
    }

    /// Turns a reserved slot into a named handle (`None` once the session is ending, or for a
    /// virtual file beyond [`Handles::memory_fits`]).
    pub(super) fn insert(&mut self, handle: OpenHandle) -> Option<String> {
        self.release();
        if self.closed {
            return None;
        }
        if let OpenHandle::Memory { data, .. } = &handle {
            if !self.memory_fits(data.len()) {
                return None;
            }
            self.memory_bytes += data.len();
        }
        let name = format!("{:x}", self.next_id);
        self.next_id += 1;
        self.open.insert(name.clone(), handle);
        Some(name)
    }

    pub(super) fn get_mut(&mut self, name: &str) -> Option<&mut OpenHandle> {
        self.open.get_mut(name)
    }

    /// Removes a write handle whose CLOSE goes to its worker now, remembering it as closing.
    pub(super) fn remove_closing(&mut self, name: &str) -> Option<OpenHandle> {
        let removed = self.open.remove(name);
        match &removed {
            Some(OpenHandle::Write { path, finished, .. }) => {
                self.closing.retain(|(_, f)| !lane::is_finished(f));
                self.closing.push((path.clone(), finished.clone()));
            }
            Some(OpenHandle::Memory { data, .. }) => self.memory_bytes -= data.len(),
            _ => {}
        }
        removed
    }

    /// Registers `op` with every write handle it must be ordered with (see `lane`): returns
    /// the queues to put a fence in, and records the closing handles it must wait for.
    pub(super) fn order(
        &mut self,
        op: &mut LaneOp,
        scopes: &[Scope],
    ) -> Vec<mpsc::Sender<WriteOp>> {
        let touched = |path: &VPath| scopes.iter().any(|scope| scope.touches(path));
        self.closing.retain(|(_, f)| !lane::is_finished(f));
        for (path, finished) in &self.closing {
            if touched(path) {
                op.wait_for(finished.clone());
            }
        }
        self.open
            .values()
            .filter_map(|handle| match handle {
                OpenHandle::Write { queue, path, .. } if touched(path) => Some(queue.clone()),
                _ => None,
            })
            .collect()
    }

    pub(super) fn close(&mut self) {
        self.closed = true;
        self.open.clear();
        self.memory_bytes = 0;
    }
}

pub(super) fn invalid_handle() -> FsError {
    FsError::new(FsErrorKind::Failure, "invalid handle")
}

/// An operation on an open write handle, applied in arrival order by its worker.
pub(super) enum WriteOp {
    Write {
        id: u32,
        offset: u64,
        data: Bytes,
        budget: OwnedSemaphorePermit,
    },
    Fsync {
        id: u32,
        budget: OwnedSemaphorePermit,
    },
    Fstat {
        id: u32,
        budget: OwnedSemaphorePermit,
    },
    SetStat {
        id: u32,
        attrs: FileAttributes,
        budget: OwnedSemaphorePermit,
    },
    Close {
        id: u32,
        budget: OwnedSemaphorePermit,
    },
    /// A path request is ordered here (see `lane`).
    Fence(Fence),
}

impl WriteOp {
    /// The request to answer if the op cannot be applied; `None` for a fence.
    pub(super) fn into_id_budget(self) -> Option<(u32, OwnedSemaphorePermit)> {
        match self {
            WriteOp::Write { id, budget, .. }
            | WriteOp::Fsync { id, budget }
            | WriteOp::Fstat { id, budget }
            | WriteOp::SetStat { id, budget, .. }
            | WriteOp::Close { id, budget } => Some((id, budget)),
            WriteOp::Fence(_) => None,
        }
    }
}

/// Writes to one handle that continue each other, applied as one.
struct WriteBatch {
    offset: u64,
    parts: Vec<Bytes>,
    len: usize,
    requests: Vec<(u32, OwnedSemaphorePermit)>,
}

impl WriteBatch {
    /// Where the batch ends; `None` past u64::MAX (such a write fails in the spool).
    fn end(&self) -> Option<u64> {
        self.offset.checked_add(u64_from_usize(self.len))
    }

    /// Takes the writes already queued that continue the batch, while the batch and each of
    /// them are small: a large one costs a copy and saves little. Returns the operation that
    /// stopped the merge, to be applied next.
    fn merge_queued(&mut self, ops: &mut mpsc::Receiver<WriteOp>) -> Option<WriteOp> {
        while self.len < SFTP_WRITE_COALESCE_PART_BYTES_MAX {
            match ops.try_recv() {
                Ok(WriteOp::Write {
                    id,
                    offset,
                    data,
                    budget,
                }) if Some(offset) == self.end()
                    && data.len() < SFTP_WRITE_COALESCE_PART_BYTES_MAX
                    && self.len + data.len() <= SFTP_WRITE_COALESCE_BYTES_MAX =>
                {
                    self.push(id, data, budget);
                }
                Ok(other) => return Some(other),
                Err(_) => return None,
            }
        }
        None
    }

    fn push(&mut self, id: u32, data: Bytes, budget: OwnedSemaphorePermit) {
        self.len += data.len();
        self.parts.push(data);
        self.requests.push((id, budget));
    }

    /// The batch's bytes. Merging copies, outside the ingest budget; but only small writes are
    /// merged, and the copy lives no longer than the charged parts it duplicates.
    fn data(&mut self) -> Bytes {
        if self.parts.len() == 1 {
            return self.parts[0].clone();
        }
        let mut joined = BytesMut::with_capacity(self.len);
        for part in &self.parts {
            joined.extend_from_slice(part);
        }
        joined.freeze()
    }
}

/// Replies of one write worker (or of the session's lane) not yet in the session's reply
/// queue, in order.
///
/// The worker must not wait for room in that queue while operations are queued for it: their
/// WRITE data holds the process-wide ingest budget until applied, and the queue only drains
/// as fast as the client reads replies. Replies wait here instead, each still holding its
/// request budget, so a client that reads no replies soon stops its own session's reader but
/// never holds request data in memory.
#[derive(Default)]
pub(super) struct Acks {
    /// Each reply with its request budget and, for READDIR, its reply data budget.
    pending: VecDeque<(Bytes, OwnedSemaphorePermit, Option<OwnedSemaphorePermit>)>,
}

impl Acks {
    /// Queues `reply` behind the ones already waiting; `budget` is returned once it is in the
    /// session's reply queue.
    fn push(&mut self, ctx: &Ctx, reply: Packet, budget: OwnedSemaphorePermit) {
        self.push_encoded(ctx, wire::encode(reply), budget, None);
    }

    /// `data_budget`: the reply data budget the reply holds until it is handed to the channel.
    pub(super) fn push_encoded(
        &mut self,
        ctx: &Ctx,
        reply: Bytes,
        budget: OwnedSemaphorePermit,
        data_budget: Option<OwnedSemaphorePermit>,
    ) {
        self.pending.push_back((reply, budget, data_budget));
        self.flush(ctx);
    }

    /// Moves waiting replies into the session's reply queue while it has room.
    fn flush(&mut self, ctx: &Ctx) {
        while let Some((bytes, budget, data_budget)) = self.pending.pop_front() {
            if let Err((bytes, data_budget)) = ctx.try_reply(bytes, data_budget) {
                self.pending.push_front((bytes, budget, data_budget));
                return;
            }
        }
    }

    /// Waits until every waiting reply is queued (or the session's writer is gone).
    pub(super) async fn finish(&mut self, ctx: &Ctx) {
        self.flush(ctx);
        while !self.pending.is_empty() {
            ctx.reply_room().await;
            self.flush(ctx);
        }
    }

    /// Runs `work` to its end while waiting replies move on as the reply queue makes room.
    pub(super) async fn during<T>(&mut self, ctx: &Ctx, work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        loop {
            self.flush(ctx);
            tokio::select! {
                biased;
                out = &mut work => return out,
                () = ctx.reply_room(), if !self.pending.is_empty() => {}
            }
        }
    }

    /// The next item of `queue`, or `None` once its senders are gone.
    pub(super) async fn next<T>(&mut self, ctx: &Ctx, queue: &mut mpsc::Receiver<T>) -> Option<T> {
        self.during(ctx, queue.recv()).await
    }
}

/// Applies the operations of one write handle in arrival order; drops `finished` when it ends
/// (after CLOSE, or once the session dropped the handle's queue).
pub(super) async fn write_worker(
    ctx: Ctx,
    handle: WriteHandle,
    mut ops: mpsc::Receiver<WriteOp>,
    path: VPath,
    finished: oneshot::Sender<()>,
) {
    let _finished = finished;
    let mut worker = WriteWorker {
        ctx,
        handle,
        path,
        failed: None,
        acks: Acks::default(),
    };
    let mut next: Option<WriteOp> = None;
    loop {
        let op = match next.take() {
            Some(op) => op,
            None => match worker.acks.next(&worker.ctx, &mut ops).await {
                Some(op) => op,
                // The session ended without CLOSE: dropping the handle leaves the file partial.
                None => break,
            },
        };
        match op {
            WriteOp::Write {
                id,
                offset,
                data,
                budget,
            } => {
                let mut batch = WriteBatch {
                    offset,
                    parts: Vec::new(),
                    len: 0,
                    requests: Vec::new(),
                };
                batch.push(id, data, budget);
                next = batch.merge_queued(&mut ops);
                worker.write(batch).await;
            }
            WriteOp::Fsync { id, budget } => {
                let handle = &worker.handle;
                let result = worker.unless_failed(|| handle.fsync()).await;
                worker.reply(ok_or_error(id, result), budget);
            }
            WriteOp::Fstat { id, budget } => {
                let attrs = wire::file_attrs(worker.handle.size(), wire::now_unix());
                let reply = Packet::Attrs(russh_sftp::protocol::Attrs { id, attrs });
                worker.reply(reply, budget);
            }
            WriteOp::SetStat { id, attrs, budget } => {
                let result = ops::check_setstat(&attrs, worker.handle.size());
                worker.reply(ok_or_error(id, result), budget);
            }
            WriteOp::Fence(fence) => worker.acks.during(&worker.ctx, fence.pass()).await,
            WriteOp::Close { id, budget } => return worker.close(id, budget).await,
        }
    }
    worker.acks.finish(&worker.ctx).await;
    let WriteWorker { ctx, path, .. } = worker;
    tracing::debug!(user = %ctx.user, path = %path.display(), "write handle dropped without CLOSE");
}

/// What a write worker keeps between operations.
struct WriteWorker {
    ctx: Ctx,
    handle: WriteHandle,
    path: VPath,
    /// The first write error; later writes fail the same way and CLOSE does not seal.
    failed: Option<FsError>,
    acks: Acks,
}

impl WriteWorker {
    /// Queues a reply behind the handle's earlier ones (see [`Acks`]).
    fn reply(&mut self, reply: Packet, budget: OwnedSemaphorePermit) {
        self.acks.push(&self.ctx, reply, budget);
    }

    /// Runs `work` in an execution slot, or fails at once as the first failed write did.
    async fn unless_failed<F>(&self, work: impl FnOnce() -> F) -> Result<(), FsError>
    where
        F: Future<Output = Result<(), FsError>>,
    {
        match &self.failed {
            Some(err) => Err(err.clone()),
            None => {
                let _slot = self.ctx.executing.acquire().await;
                work().await
            }
        }
    }

    /// Applies `batch` and answers each of its WRITE requests; the first failure poisons the
    /// handle.
    async fn write(&mut self, mut batch: WriteBatch) {
        let handle = &self.handle;
        let result = self
            .unless_failed(|| handle.write_at(batch.offset, batch.data()))
            .await;
        if let (Err(err), None) = (&result, &self.failed) {
            tracing::warn!(user = %self.ctx.user, path = %self.path.display(),
                offset = batch.offset, error = %err, "write failed; the file will stay partial");
            record_spool_error(&self.ctx, &self.path, err);
            self.failed = Some(err.clone());
        }
        // The data is no longer needed: give its ingest charge back before the replies.
        drop(batch.parts);
        for (id, budget) in batch.requests {
            self.reply(ok_or_error(id, result.clone()), budget);
        }
    }

    /// Seals the file (unless a write failed), answers CLOSE once that is done, and waits
    /// until every reply of the handle is queued.
    async fn close(self, id: u32, budget: OwnedSemaphorePermit) {
        let WriteWorker {
            ctx,
            handle,
            path,
            failed,
            mut acks,
        } = self;
        let result = match failed {
            Some(err) => {
                // Gone before the client hears of it, so a retry finds the file partial.
                drop(handle);
                Err(FsError::new(
                    err.kind,
                    format!(
                        "an earlier write failed, the file was not sealed: {}",
                        err.message
                    ),
                ))
            }
            None => {
                let _slot = ctx.executing.acquire().await;
                handle.close().await
            }
        };
        match &result {
            Ok(()) => {
                tracing::info!(user = %ctx.user, path = %path.display(), "file received")
            }
            Err(err) => {
                tracing::warn!(user = %ctx.user, path = %path.display(), error = %err,
                "close failed; the file stays partial");
                record_spool_error(&ctx, &path, err);
            }
        }
        acks.push(&ctx, ok_or_error(id, result), budget);
        acks.finish(&ctx).await;
    }
}

/// Counts a failed write or close of `path` in the error telemetry.
fn record_spool_error(ctx: &Ctx, path: &VPath, err: &FsError) {
    crate::telemetry::record_error(
        crate::telemetry::ErrorKind::SpoolWrite,
        Some(format!("{}:{}", ctx.user, path.display())),
        &err.to_string(),
    );
}

pub(super) fn ok_or_error(id: u32, result: Result<(), FsError>) -> Packet {
    match result {
        Ok(()) => wire::ok(id),
        Err(err) => wire::error(id, &err),
    }
}
