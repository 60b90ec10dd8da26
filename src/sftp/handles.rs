//! The open handles of one SFTP session, and the worker that applies the operations on one
//! write handle in arrival order (see `session` for how requests reach it).

use std::collections::HashMap;
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

pub(super) async fn write_worker(
    ctx: Ctx,
    handle: WriteHandle,
    mut ops: mpsc::Receiver<WriteOp>,
    path: VPath,
) {
    // The first write error; later writes fail the same way and CLOSE does not seal.
    let mut failed: Option<FsError> = None;
    let mut next: Option<WriteOp> = None;
    loop {
        let op = match next.take() {
            Some(op) => op,
            None => match ops.recv().await {
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
                    failed = Some(err.clone());
                }
                for (id, budget) in batch.requests {
                    let reply = match &result {
                        Ok(()) => wire::ok(id),
                        Err(err) => wire::error(id, err),
                    };
                    ctx.reply(wire::encode(reply), None).await;
                    drop(budget);
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
                ctx.reply(wire::encode(ok_or_error(id, result)), None).await;
                drop(budget);
            }
            WriteOp::Fstat { id, budget } => {
                let attrs = wire::file_attrs(handle.size(), wire::now_unix());
                let reply = Packet::Attrs(russh_sftp::protocol::Attrs { id, attrs });
                ctx.reply(wire::encode(reply), None).await;
                drop(budget);
            }
            WriteOp::SetStat { id, attrs, budget } => {
                let result = ops::check_setstat(&attrs, handle.size());
                ctx.reply(wire::encode(ok_or_error(id, result)), None).await;
                drop(budget);
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
                        "close failed; the file stays partial")
                    }
                }
                ctx.reply(wire::encode(ok_or_error(id, result)), None).await;
                drop(budget);
                return;
            }
        }
    }
    tracing::debug!(user = %ctx.user, path = %path.display(), "write handle dropped without CLOSE");
}

pub(super) fn ok_or_error(id: u32, result: Result<(), FsError>) -> Packet {
    match result {
        Ok(()) => wire::ok(id),
        Err(err) => wire::error(id, &err),
    }
}
