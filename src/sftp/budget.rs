//! Memory for request data: the process-wide ingest budget that all SFTP sessions share, each
//! session's share of it, and the packet buffers that hold their charge until they are dropped.
//!
//! Nearly all of the daemon's memory under many uploads is WRITE payloads between the socket
//! and the spool. Every packet body a session reads is charged, before it is read, first to
//! its session's share ([`SFTP_SESSION_INGEST_BYTES_MAX`]) and then to the process-wide
//! budget ([`SFTP_INGEST_BYTES_MAX`]); both are given back when the last slice of the buffer is
//! dropped: for a WRITE when the spool has applied it, for other requests right after decoding
//! (russh-sftp copies what it keeps). Nothing that holds a charge waits on the client, except
//! a reader in the middle of a packet body, and that is at most the session's share: so a
//! client that stops reading its replies (or stalls) can hold at most its share, never the
//! whole budget. Waiters are served first come, first served (tokio's semaphore is FIFO), so
//! a session waiting for the budget is not overtaken forever by others.

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{SFTP_INGEST_BYTES_MAX, SFTP_SESSION_INGEST_BYTES_MAX};

/// The process-wide budget of request bytes that SFTP sessions hold in memory. Clones share
/// it; a server creates one for all its sessions.
#[derive(Clone, Debug)]
pub struct IngestBudget {
    global: Arc<Semaphore>,
    total_bytes: u32,
}

impl Default for IngestBudget {
    fn default() -> Self {
        Self::new(SFTP_INGEST_BYTES_MAX)
    }
}

impl IngestBudget {
    /// A budget of `total_bytes`; at least one largest packet must fit.
    pub fn new(total_bytes: u32) -> Self {
        assert!(
            total_bytes >= crate::limits::SFTP_PACKET_BYTES_MAX,
            "an ingest budget smaller than one packet would stop every session"
        );
        Self {
            global: Arc::new(Semaphore::new(total_bytes as usize)),
            total_bytes,
        }
    }

    pub fn total_bytes(&self) -> u32 {
        self.total_bytes
    }

    /// Bytes not charged to any session right now.
    pub fn available_bytes(&self) -> usize {
        self.global.available_permits()
    }

    /// The budget as seen by one new session, with a share of its own.
    pub(super) fn session(&self) -> SessionIngest {
        let share = SFTP_SESSION_INGEST_BYTES_MAX.min(self.total_bytes);
        SessionIngest {
            global: Arc::clone(&self.global),
            share: Arc::new(Semaphore::new(share as usize)),
        }
    }
}

/// One session's access to the ingest budget.
pub(super) struct SessionIngest {
    global: Arc<Semaphore>,
    share: Arc<Semaphore>,
}

impl SessionIngest {
    /// Waits until `len` bytes fit in this session's share, then in the global budget. The
    /// share is taken first, so that a session never waits in the global queue for more than
    /// its share.
    pub(super) async fn charge(&self, len: u32) -> Charge {
        // Neither semaphore is ever closed.
        let share = Arc::clone(&self.share).acquire_many_owned(len).await;
        let global = Arc::clone(&self.global).acquire_many_owned(len).await;
        match (share, global) {
            (Ok(share), Ok(global)) => Charge {
                _share: share,
                _global: global,
            },
            _ => unreachable!("ingest semaphores are never closed"),
        }
    }
}

/// Bytes charged to a session's share and to the global budget, given back when dropped.
pub(super) struct Charge {
    _share: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

/// A packet buffer and its charge: `Bytes` made from it return the charge once the last of
/// them is dropped.
struct ChargedBuffer {
    buffer: BytesMut,
    _charge: Charge,
}

impl AsRef<[u8]> for ChargedBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

/// Exactly `len` bytes, read into a buffer that is not zero-filled first and that carries
/// `charge` for as long as any slice of it lives.
pub(super) async fn read_charged<R: AsyncRead + Unpin>(
    input: &mut R,
    len: usize,
    charge: Charge,
) -> io::Result<Bytes> {
    let mut buffer = BytesMut::with_capacity(len);
    while buffer.len() < len {
        let limit = (len - buffer.len()) as u64;
        if (&mut *input).take(limit).read_buf(&mut buffer).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(Bytes::from_owner(ChargedBuffer {
        buffer,
        _charge: charge,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_charge_is_returned_when_the_last_slice_of_its_buffer_is_dropped() {
        let budget = IngestBudget::new(SFTP_INGEST_BYTES_MAX);
        let session = budget.session();
        let data = vec![7u8; 1000];
        let charge = session.charge(1000).await;
        let body = read_charged(&mut &data[..], 1000, charge).await.unwrap();
        let total = SFTP_INGEST_BYTES_MAX as usize;
        assert_eq!(budget.available_bytes(), total - 1000);
        let slice = body.slice(10..20);
        drop(body);
        assert_eq!(
            budget.available_bytes(),
            total - 1000,
            "a slice still holds it"
        );
        drop(slice);
        assert_eq!(budget.available_bytes(), total);
    }

    #[tokio::test]
    async fn a_session_waits_for_its_share_before_taking_global_budget() {
        let budget = IngestBudget::new(SFTP_INGEST_BYTES_MAX);
        let session = budget.session();
        let share = SFTP_SESSION_INGEST_BYTES_MAX;
        let held = session.charge(share).await;
        let total = SFTP_INGEST_BYTES_MAX as usize;
        assert_eq!(budget.available_bytes(), total - share as usize);
        // Over its share: it waits without taking anything more from the global budget.
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), session.charge(1)).await;
        assert!(waiting.is_err(), "a charge over the share must wait");
        assert_eq!(budget.available_bytes(), total - share as usize);
        // Another session is not held up by this one's share being spent.
        let other = budget.session().charge(share).await;
        drop((held, other));
        assert_eq!(budget.available_bytes(), total);
    }
}
