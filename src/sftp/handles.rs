//! The open handles of one SFTP session, and the worker that applies the operations on one
//! write handle in arrival order (see `session` for how requests reach it).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use russh_sftp::protocol::{FileAttributes, Packet};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::session::Ctx;
use super::{SFTP_WRITE_COALESCE_BYTES_MAX, SFTP_WRITE_COALESCE_PART_BYTES_MAX, ops, wire};
use crate::limits::SFTP_HANDLES_COUNT_MAX;
use crate::spool::{Entry, FsError, FsErrorKind, ReadHandle, VPath, WriteHandle};

/// The open handles of a session.
#[derive(Default)]
pub(super) struct Handles {
    open: HashMap<String, OpenHandle>,
    /// Slots reserved by OPEN/OPENDIR requests still executing.
    opening: usize,
    next_id: u64,
    /// Set when the session ends; later inserts are refused.
    closed: bool,
}

pub(super) enum OpenHandle {
    Write(mpsc::Sender<WriteOp>),
    Read {
        handle: Arc<ReadHandle>,
        path: VPath,
    },
    Dir(Listing),
}

/// A directory listing taken at OPENDIR and handed out by READDIR.
pub(super) struct Listing {
    pub entries: Vec<Entry>,
    pub next: usize,
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

    /// Turns a reserved slot into a named handle.
    pub(super) fn insert(&mut self, handle: OpenHandle) -> Option<String> {
        self.release();
        if self.closed {
            return None;
        }
        let name = format!("{:x}", self.next_id);
        self.next_id += 1;
        self.open.insert(name.clone(), handle);
        Some(name)
    }

    pub(super) fn get_mut(&mut self, name: &str) -> Option<&mut OpenHandle> {
        self.open.get_mut(name)
    }

    pub(super) fn remove(&mut self, name: &str) -> Option<OpenHandle> {
        self.open.remove(name)
    }

    pub(super) fn close(&mut self) {
        self.closed = true;
        self.open.clear();
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
}

impl WriteOp {
    pub(super) fn into_id_budget(self) -> (u32, OwnedSemaphorePermit) {
        match self {
            WriteOp::Write { id, budget, .. }
            | WriteOp::Fsync { id, budget }
            | WriteOp::Fstat { id, budget }
            | WriteOp::SetStat { id, budget, .. }
            | WriteOp::Close { id, budget } => (id, budget),
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
    fn end(&self) -> u64 {
        self.offset + self.len as u64
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

/// Replies of one write worker not yet in the session's reply queue, in order.
///
/// The worker must not wait for room in that queue while operations are queued for it: their
/// WRITE data holds the process-wide ingest budget until applied, and the queue only drains
/// as fast as the client reads replies. Replies wait here instead, each still holding its
/// request budget, so a client that reads no replies soon stops its own session's reader but
/// never holds request data in memory.
struct Acks {
    pending: VecDeque<(Bytes, OwnedSemaphorePermit)>,
}

impl Acks {
    /// Queues `reply` behind the ones already waiting; `budget` is returned once it is in the
    /// session's reply queue.
    fn push(&mut self, ctx: &Ctx, reply: Packet, budget: OwnedSemaphorePermit) {
        self.pending.push_back((wire::encode(reply), budget));
        self.flush(ctx);
    }

    /// Moves waiting replies into the session's reply queue while it has room.
    fn flush(&mut self, ctx: &Ctx) {
        while let Some((bytes, budget)) = self.pending.pop_front() {
            if let Err(bytes) = ctx.try_reply(bytes) {
                self.pending.push_front((bytes, budget));
                return;
            }
        }
    }

    /// Waits until every waiting reply is queued (or the session's writer is gone).
    async fn finish(&mut self, ctx: &Ctx) {
        self.flush(ctx);
        while !self.pending.is_empty() {
            ctx.reply_room().await;
            self.flush(ctx);
        }
    }
}

/// The next operation for the worker, or `None` once the session dropped the handle's queue.
/// While waiting, waiting replies move on as the reply queue makes room.
async fn next_op(ctx: &Ctx, ops: &mut mpsc::Receiver<WriteOp>, acks: &mut Acks) -> Option<WriteOp> {
    loop {
        acks.flush(ctx);
        tokio::select! {
            biased;
            op = ops.recv() => return op,
            () = ctx.reply_room(), if !acks.pending.is_empty() => {}
        }
    }
}

pub(super) async fn write_worker(
    ctx: Ctx,
    handle: WriteHandle,
    mut ops: mpsc::Receiver<WriteOp>,
    path: VPath,
) {
    // The first write error; later writes fail the same way and CLOSE does not seal.
    let mut failed: Option<FsError> = None;
    let mut next: Option<WriteOp> = None;
    let mut acks = Acks {
        pending: VecDeque::new(),
    };
    loop {
        let op = match next.take() {
            Some(op) => op,
            None => match next_op(&ctx, &mut ops, &mut acks).await {
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
                // Only small writes are merged: a large one costs a copy and saves little.
                while batch.len < SFTP_WRITE_COALESCE_PART_BYTES_MAX {
                    match ops.try_recv() {
                        Ok(WriteOp::Write {
                            id,
                            offset,
                            data,
                            budget,
                        }) if offset == batch.end()
                            && data.len() < SFTP_WRITE_COALESCE_PART_BYTES_MAX
                            && batch.len + data.len() <= SFTP_WRITE_COALESCE_BYTES_MAX =>
                        {
                            batch.push(id, data, budget);
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let result = match &failed {
                    Some(err) => Err(err.clone()),
                    None => {
                        let _slot = ctx.executing.acquire().await;
                        handle.write_at(batch.offset, batch.data()).await
                    }
                };
                if let (Err(err), None) = (&result, &failed) {
                    tracing::warn!(user = %ctx.user, path = %path.display(), offset = batch.offset,
                        error = %err, "write failed; the file will stay partial");
                    crate::telemetry::record_error(
                        crate::telemetry::ErrorKind::SpoolWrite,
                        Some(format!("{}:{}", ctx.user, path.display())),
                        &err.to_string(),
                    );
                    failed = Some(err.clone());
                }
                // The data is no longer needed: give its ingest charge back before the replies.
                drop(batch.parts);
                for (id, budget) in batch.requests {
                    acks.push(&ctx, ok_or_error(id, result.clone()), budget);
                }
            }
            WriteOp::Fsync { id, budget } => {
                let result = match &failed {
                    Some(err) => Err(err.clone()),
                    None => {
                        let _slot = ctx.executing.acquire().await;
                        handle.fsync().await
                    }
                };
                acks.push(&ctx, ok_or_error(id, result), budget);
            }
            WriteOp::Fstat { id, budget } => {
                let attrs = wire::file_attrs(handle.size(), wire::now_unix());
                let reply = Packet::Attrs(russh_sftp::protocol::Attrs { id, attrs });
                acks.push(&ctx, reply, budget);
            }
            WriteOp::SetStat { id, attrs, budget } => {
                let result = ops::check_setstat(&attrs, handle.size());
                acks.push(&ctx, ok_or_error(id, result), budget);
            }
            WriteOp::Close { id, budget } => {
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
                        crate::telemetry::record_error(
                            crate::telemetry::ErrorKind::SpoolWrite,
                            Some(format!("{}:{}", ctx.user, path.display())),
                            &err.to_string(),
                        );
                    }
                }
                acks.push(&ctx, ok_or_error(id, result), budget);
                acks.finish(&ctx).await;
                return;
            }
        }
    }
    acks.finish(&ctx).await;
    tracing::debug!(user = %ctx.user, path = %path.display(), "write handle dropped without CLOSE");
}

pub(super) fn ok_or_error(id: u32, result: Result<(), FsError>) -> Packet {
    match result {
        Ok(()) => wire::ok(id),
        Err(err) => wire::error(id, &err),
    }
}
