//! Memory for request data: the process-wide ingest budget that all SFTP sessions share, each
//! session's share of it, and the packet buffers that hold their charge until they are dropped.
//!
//! Nearly all of the daemon's memory under many uploads is WRITE payloads between the socket
//! and the spool. Every packet body a session reads is charged, before it is read, first to
//! its session's share ([`SFTP_SESSION_INGEST_BYTES_MAX`]) and then to the process-wide
//! budget ([`SFTP_INGEST_BYTES_MAX`]); both are given back when the last slice of the buffer is
//! dropped: for a WRITE when the spool has applied it, for other requests right after decoding
//! (russh-sftp copies what it keeps). A body's first [`SFTP_BODY_CHUNK_BYTES`] are charged
//! before they are read and the rest once they have arrived, not the announced length up
//! front, and a body that stops arriving ends the session after
//! [`super::SFTP_BODY_STALL_SECONDS`]. Nothing that holds a charge waits on the client, except
//! a reader in the middle of a packet body: so a client that stops reading its replies (or
//! stalls) can hold at most its share, never the whole budget, and one that announces a body
//! and sends nothing holds one piece. Waiters are served first come, first served (tokio's semaphore is FIFO), so
//! a session waiting for the budget is not overtaken forever by others.
//!
//! Owns the semaphores and the charged buffers, and reads bytes without knowing what they
//! mean: decoding is `session`'s and `wire`'s. It may not touch the spool.

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use std::time::Duration;

use super::{SFTP_BODY_CHUNK_BYTES, SFTP_INGEST_BYTES_MAX, SFTP_SESSION_INGEST_BYTES_MAX};
use crate::num::{u64_from_usize, usize_from_u32};

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
            global: Arc::new(Semaphore::new(usize_from_u32(total_bytes))),
            total_bytes,
        }
    }

    /// The budget's size, charged or not.
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
            share: Arc::new(Semaphore::new(usize_from_u32(share))),
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

/// A packet buffer and its charges: `Bytes` made from it return them once the last of them
/// is dropped.
struct ChargedBuffer {
    buffer: BytesMut,
    _charges: Vec<Charge>,
}

impl AsRef<[u8]> for ChargedBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

/// Exactly `len` bytes, read into a buffer that is not zero-filled first. The first
/// [`SFTP_BODY_CHUNK_BYTES`] are charged to `ingest` before they are read, the rest once they
/// have arrived, in one charge: a client that announces a body and sends nothing holds one
/// piece, and no reader holds part of a body while it waits for the budget of another part
/// (waiting readers hold a piece each, far less than the budget, so some always go on). The
/// buffer carries the charges for as long as any slice of it lives. A read that gets no byte
/// for `stall` fails with `TimedOut`.
pub(super) async fn read_charged<R: AsyncRead + Unpin>(
    input: &mut R,
    len: u32,
    ingest: &SessionIngest,
    stall: Duration,
) -> io::Result<Bytes> {
    let mut buffer = BytesMut::with_capacity(usize_from_u32(len));
    let first = len.min(SFTP_BODY_CHUNK_BYTES);
    let mut charges = vec![ingest.charge(first).await];
    read_until(input, &mut buffer, usize_from_u32(first), stall).await?;
    if len > first {
        charges.push(ingest.charge(len - first).await);
        read_until(input, &mut buffer, usize_from_u32(len), stall).await?;
    }
    Ok(Bytes::from_owner(ChargedBuffer {
        buffer,
        _charges: charges,
    }))
}

/// Reads into `buffer` until it holds `end` bytes; `TimedOut` if no byte comes for `stall`.
async fn read_until<R: AsyncRead + Unpin>(
    input: &mut R,
    buffer: &mut BytesMut,
    end: usize,
    stall: Duration,
) -> io::Result<()> {
    while buffer.len() < end {
        let limit = u64_from_usize(end - buffer.len());
        let read = tokio::time::timeout(stall, (&mut *input).take(limit).read_buf(buffer))
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "packet body stopped arriving")
            })??;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_charge_is_returned_when_the_last_slice_of_its_buffer_is_dropped() {
        let budget = IngestBudget::new(SFTP_INGEST_BYTES_MAX);
        let session = budget.session();
        let data = vec![7u8; 1000];
        let stall = Duration::from_secs(1);
        let body = read_charged(&mut &data[..], 1000, &session, stall)
            .await
            .unwrap();
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

    #[tokio::test]
    async fn a_body_that_stops_arriving_holds_one_piece_and_times_out() {
        let budget = IngestBudget::new(SFTP_INGEST_BYTES_MAX);
        let session = budget.session();
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        // 100 000 bytes announced, 10 sent, then nothing.
        tokio::io::AsyncWriteExt::write_all(&mut client, &[1u8; 10])
            .await
            .unwrap();
        let total = SFTP_INGEST_BYTES_MAX as usize;
        let reading = read_charged(&mut server, 100_000, &session, Duration::from_millis(600));
        tokio::pin!(reading);
        let waited = tokio::time::timeout(Duration::from_millis(200), &mut reading).await;
        assert!(waited.is_err(), "still waiting for the body");
        assert_eq!(
            budget.available_bytes(),
            total - SFTP_BODY_CHUNK_BYTES as usize,
            "one piece is charged, not the announced length"
        );
        let err = reading.await.expect_err("stalled");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(budget.available_bytes(), total, "given back");
        drop(client);
    }
}
