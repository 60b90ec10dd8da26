//! What the ring thread holds: requests in the kernel, by slot ([`Slots`]), and per file the
//! requests that must wait because an fsync may not start before the writes submitted ahead
//! of it have completed ([`FileBarriers`]).
//!
//! Bookkeeping of the ring thread only: it submits nothing itself.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, RawFd};

use super::Request;

/// Requests in the kernel, by slot; the slot index is the entry's `user_data`.
#[derive(Default)]
pub(super) struct Slots {
    slots: Vec<Option<Request>>,
    free: Vec<usize>,
}

impl Slots {
    pub(super) fn insert(&mut self, request: Request) -> usize {
        match self.free.pop() {
            Some(index) => {
                self.slots[index] = Some(request);
                index
            }
            None => {
                self.slots.push(Some(request));
                self.slots.len() - 1
            }
        }
    }

    pub(super) fn take(&mut self, index: usize) -> Request {
        let request = self.slots.get_mut(index).and_then(Option::take);
        // A completion names a slot we filled and have not emptied: anything else means the
        // kernel may be using memory we no longer own.
        let request =
            request.unwrap_or_else(|| panic!("io_uring completion for empty slot {index}"));
        self.free.push(index);
        request
    }

    pub(super) fn drain(&mut self) -> impl Iterator<Item = Request> + '_ {
        self.free.clear();
        self.slots.drain(..).flatten()
    }
}

/// Per file: writes in the kernel, and requests that wait for them because an fsync must not
/// start before the writes submitted ahead of it have completed.
#[derive(Default)]
pub(super) struct FileBarriers {
    files: HashMap<RawFd, FileQueue>,
}

#[derive(Default)]
struct FileQueue {
    writes_in_flight: usize,
    waiting: VecDeque<Request>,
}

impl FileBarriers {
    /// The request back if it may start now; otherwise it waits here, in order.
    pub(super) fn admit(&mut self, request: Request) -> Option<Request> {
        let fd = request.file.as_raw_fd();
        let queue = self.files.entry(fd).or_default();
        let must_wait =
            !queue.waiting.is_empty() || (!request.op.is_write() && queue.writes_in_flight > 0);
        if must_wait {
            queue.waiting.push_back(request);
            return None;
        }
        if request.op.is_write() {
            queue.writes_in_flight += 1;
        } else {
            self.forget_if_idle(fd);
        }
        Some(request)
    }

    /// A write to `fd` completed: the requests that may start now, in order.
    pub(super) fn write_done(&mut self, fd: RawFd) -> Vec<Request> {
        let mut ready = Vec::new();
        let Some(queue) = self.files.get_mut(&fd) else {
            panic!("write completed on fd {fd} with no write in flight");
        };
        assert!(
            queue.writes_in_flight > 0,
            "write count of fd {fd} underflows"
        );
        queue.writes_in_flight -= 1;
        while let Some(next) = queue.waiting.front() {
            if !next.op.is_write() && queue.writes_in_flight > 0 {
                break;
            }
            let Some(next) = queue.waiting.pop_front() else {
                break;
            };
            if next.op.is_write() {
                queue.writes_in_flight += 1;
            }
            ready.push(next);
        }
        self.forget_if_idle(fd);
        ready
    }

    fn forget_if_idle(&mut self, fd: RawFd) {
        if self
            .files
            .get(&fd)
            .is_some_and(|q| q.writes_in_flight == 0 && q.waiting.is_empty())
        {
            self.files.remove(&fd);
        }
    }

    /// No file has a write in flight or a request waiting.
    #[cfg(test)]
    pub(super) fn is_idle(&self) -> bool {
        self.files.is_empty()
    }

    pub(super) fn drain(&mut self) -> impl Iterator<Item = Request> + '_ {
        self.files.drain().flat_map(|(_, queue)| queue.waiting)
    }
}
