//! The ordering rule of a session: the effects of requests are observed in arrival order, as
//! in OpenSSH's serial sftp-server, while WRITE and READ at different offsets stay parallel.
//!
//! Clients pipeline requests that depend on each other without waiting for the replies in
//! between: sshfs sends LSTAT, FSTAT and SETSTAT on a path right behind OPEN(CREAT) of it, and
//! rsync renames its temporary file right behind CLOSE. Run concurrently, the LSTAT could be
//! answered "no such file" before the OPEN had created it (`cp` onto an sshfs mount failed
//! that way most of the time).
//!
//! How the rule is kept:
//! - **Path requests** (OPEN, STAT, LSTAT, SETSTAT, OPENDIR, REMOVE, MKDIR, RMDIR, RENAME,
//!   posix-rename) run one at a time in arrival order in the session's lane (this module).
//!   They are cheap except those that wait for a journal fsync, which OpenSSH's server runs
//!   serially too; other sessions are not held up.
//! - **Operations on a write handle** (WRITE, FSTAT, FSETSTAT, fsync, CLOSE) are applied in
//!   arrival order by the handle's worker (`handles`).
//! - Between the two: when a path request arrives, every open write handle whose path it
//!   [`Scope::touches`] gets a [`Fence`] in its queue. The request starts only once every
//!   fence is reached (the handle's earlier operations are applied) and the handles it
//!   closes are closed; the fence holds the handle's later operations back until the request
//!   has run. A CLOSE already sent to a worker counts until the worker has finished it.
//! - READDIR runs in the lane too, once it has its share of the reply data budget: each one
//!   reads on from where the previous one on its handle stopped, and sshfs takes the replies
//!   in the order it sent two READDIRs (an EOF answered before the entries hid them all).
//! - Requests that name no path whose state they could observe (REALPATH, statvfs, limits,
//!   READ, operations on read handles) run in parallel as before.
//!
//! Nothing here waits on the client: the lane queues its replies like a write worker does
//! (`handles::Acks`), and releases its fences before that, so handles' queued WRITE data,
//! which holds the process-wide ingest budget, never waits for a client to read replies.
//!
//! Owns the lane and its fences. A request runs through `ops`; write handles are reached
//! only through their queues (`handles`), never their data.

use bytes::Bytes;
use futures::FutureExt;
use futures::future::Shared;
use russh_sftp::protocol::Packet;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::handles::Acks;
use super::ops;
use super::session::Ctx;
use super::wire;
use crate::spool::VPath;

/// What part of the namespace a path request observes or changes, for finding the write
/// handles it must be ordered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Scope {
    /// The entry itself (STAT, OPEN, REMOVE, ...).
    Exact(VPath),
    /// The entries directly inside a directory (OPENDIR takes their sizes into the listing).
    Children(VPath),
    /// The entry and everything below it (RENAME, RMDIR).
    Subtree(VPath),
}

impl Scope {
    /// True if a file open for writing at `path` is seen or changed by a request of this scope.
    pub(super) fn touches(&self, path: &VPath) -> bool {
        match self {
            Scope::Exact(p) => path == p,
            Scope::Children(dir) => path.parent().as_ref() == Some(dir),
            Scope::Subtree(p) => path.starts_with(p),
        }
    }
}

/// The scopes of a request that must run in the lane, or `None` if it runs in parallel. A path
/// that does not resolve has no scope: the request fails without touching anything.
pub(super) fn scopes_of(packet: &Packet) -> Option<Vec<Scope>> {
    let exact = |raw: &str| VPath::resolve(raw).ok().map(Scope::Exact);
    let subtree = |raw: &str| VPath::resolve(raw).ok().map(Scope::Subtree);
    let scopes = match packet {
        Packet::Open(open) => exact(&open.filename).into_iter().collect(),
        Packet::Stat(stat) => exact(&stat.path).into_iter().collect(),
        Packet::Lstat(stat) => exact(&stat.path).into_iter().collect(),
        Packet::SetStat(set) => exact(&set.path).into_iter().collect(),
        Packet::Remove(remove) => exact(&remove.filename).into_iter().collect(),
        Packet::MkDir(mkdir) => exact(&mkdir.path).into_iter().collect(),
        Packet::OpenDir(open) => VPath::resolve(&open.path)
            .ok()
            .map(Scope::Children)
            .into_iter()
            .collect(),
        Packet::RmDir(rmdir) => subtree(&rmdir.path).into_iter().collect(),
        Packet::Rename(rename) => [subtree(&rename.oldpath), subtree(&rename.newpath)]
            .into_iter()
            .flatten()
            .collect(),
        Packet::Extended(ext) if ext.request == ops::POSIX_RENAME => {
            match ops::parse_rename(&ext.data) {
                Ok((from, to)) => [subtree(&from), subtree(&to)]
                    .into_iter()
                    .flatten()
                    .collect(),
                Err(_) => Vec::new(),
            }
        }
        _ => return None,
    };
    Some(scopes)
}

/// Completes once a write handle's worker has ended (after CLOSE, or when the session dropped
/// the handle); cloned by every path request that must wait for it.
pub(super) type Finished = Shared<oneshot::Receiver<()>>;

/// A marker in a write handle's queue: the worker says when it gets there, then applies
/// nothing more until the path request that placed it has run.
pub(super) struct Fence {
    reached: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

impl Fence {
    /// Called by the worker: reports the fence reached, then waits for its release (or for
    /// the request to be dropped, when the session ends).
    pub(super) async fn pass(self) {
        let _ = self.reached.send(());
        let _ = self.release.await;
    }
}

/// A path request waiting in the lane, with what it must wait for.
pub(super) struct LaneOp {
    packet: Packet,
    budget: OwnedSemaphorePermit,
    /// READDIR's share of the reply data budget, held until its reply is sent.
    reply_budget: Option<OwnedSemaphorePermit>,
    /// Each completes once its fence is reached (or its worker is gone).
    reached: Vec<oneshot::Receiver<()>>,
    /// Dropped after the request ran: releases the fences.
    release: Vec<oneshot::Sender<()>>,
    /// Write handles being closed whose paths the request touches.
    closing: Vec<Finished>,
}

impl LaneOp {
    pub(super) fn new(packet: Packet, budget: OwnedSemaphorePermit) -> LaneOp {
        LaneOp {
            packet,
            budget,
            reply_budget: None,
            reached: Vec::new(),
            release: Vec::new(),
            closing: Vec::new(),
        }
    }

    pub(super) fn with_reply_budget(mut self, permit: OwnedSemaphorePermit) -> LaneOp {
        self.reply_budget = Some(permit);
        self
    }

    /// A fence to put in the queue of a write handle the request touches.
    pub(super) fn fence(&mut self) -> Fence {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        self.reached.push(reached_rx);
        self.release.push(release_tx);
        Fence {
            reached: reached_tx,
            release: release_rx,
        }
    }

    /// The request must also wait until this handle's CLOSE is done.
    pub(super) fn wait_for(&mut self, finished: Finished) {
        self.closing.push(finished);
    }
}

/// The lane of one session: runs path requests one at a time in arrival order, until the
/// dispatcher drops the queue's sender; what is still queued then is run too, unless the
/// session must stop at once (`stop` set).
pub(super) async fn run_lane(
    ctx: Ctx,
    mut queue: mpsc::Receiver<LaneOp>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let mut acks = Acks::default();
    while let Some(op) = acks.next(&ctx, &mut queue).await {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            continue; // Dropped unanswered, like the dispatcher's queues.
        }
        let LaneOp {
            packet,
            budget,
            reply_budget,
            reached,
            release,
            closing,
        } = op;
        // A fence whose worker is gone reports an error: nothing is left to wait for.
        for fence in reached {
            let _ = fence.await;
        }
        for finished in closing {
            let _ = finished.await;
        }
        let id = packet.get_request_id();
        let reply: Bytes = {
            let _slot = ctx.executing.acquire().await;
            match ops::execute(&ctx, packet).await {
                Ok(bytes) => bytes,
                Err(err) => wire::encode(wire::error(id, &err)),
            }
        };
        // The effects are in place: later operations of the handles may go on.
        drop(release);
        acks.push_encoded(&ctx, reply, budget, reply_budget);
    }
    acks.finish(&ctx).await;
}

/// The `Finished` signal of a new write worker, and the sender it drops when it ends.
pub(super) fn finished_signal() -> (oneshot::Sender<()>, Finished) {
    let (tx, rx) = oneshot::channel();
    (tx, rx.shared())
}

/// True if the worker behind `finished` has ended.
pub(super) fn is_finished(finished: &Finished) -> bool {
    finished.peek().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> VPath {
        VPath::resolve(s).unwrap()
    }

    #[test]
    fn scopes_touch_the_handles_whose_state_they_see_or_change() {
        assert!(Scope::Exact(p("a/b")).touches(&p("a/b")));
        assert!(!Scope::Exact(p("a")).touches(&p("a/b")));
        assert!(Scope::Children(p("a")).touches(&p("a/b")));
        assert!(!Scope::Children(p("a")).touches(&p("a/b/c")));
        assert!(Scope::Children(VPath::root()).touches(&p("f")));
        assert!(Scope::Subtree(p("a")).touches(&p("a/b/c")));
        assert!(Scope::Subtree(p("a")).touches(&p("a")));
        assert!(!Scope::Subtree(p("a")).touches(&p("ab")));
    }
}
