//! The SFTP front end: SSH server (russh), authentication, and our own pipelined SFTP session
//! loop over russh-sftp's protocol types.
//!
//! `server` accepts SSH connections and authenticates them against `namespace::Users`; each
//! "sftp" subsystem channel runs one `session` against the shared spool. The limits below are
//! the SFTP layer's own (the ones shared with other layers live in [`crate::limits`]).

mod handles;
pub mod namespace;
mod ops;
pub mod server;
pub mod session;
#[cfg(test)]
mod tests;
mod wire;

pub use namespace::{Users, UsersError, hash_password};
pub use server::{HostKeyError, ServeError, load_or_generate_host_key, serve};
pub use session::SessionEnd;

use crate::limits::{SFTP_IO_BYTES_MAX, SFTP_PACKET_BYTES_MAX};

/// Bytes of requests a session has read but not yet answered (queued, executing, or waiting
/// for their reply to be queued). When exhausted the session stops reading from the channel.
/// OpenSSH keeps 64 requests of 255 KiB in flight (16.3 MiB); this must stay above that so a
/// well-behaved client never stalls on it.
pub const SFTP_QUEUED_REQUEST_BYTES_MAX: u32 = 24 * 1024 * 1024;
/// Charged to every request on top of its length: covers the parsed request and its small
/// reply, and bounds the number of queued requests (24 MiB / 128 B = 196 608).
pub const SFTP_REQUEST_OVERHEAD_BYTES: u32 = 128;
/// Requests of one session executing against the spool at once (including per-handle writes).
pub const SFTP_REQUESTS_EXECUTING_COUNT_MAX: usize = 64;
/// Bytes of READ and READDIR replies queued for the client but not yet handed to the channel.
/// Reads wait for this budget in a queue of their own, so replies stuck behind the client's
/// window never stop the session from reading (see `session` for the deadlock this avoids).
pub const SFTP_REPLY_DATA_BYTES_MAX: u32 = 8 * 1024 * 1024;
/// Replies queued for the writer task. Every reply answers one outstanding request, so only a
/// client with this many requests outstanding and not reading replies can fill it.
pub const SFTP_REPLIES_QUEUED_COUNT_MAX: usize = 8192;
/// Adjacent small writes to one handle are merged up to this size before reaching the spool.
pub const SFTP_WRITE_COALESCE_BYTES_MAX: usize = 1024 * 1024;
/// Writes at least this big are not merged (OpenSSH sends 255 KiB): merging costs a copy and
/// saves a spool call per write, which only pays for small writes (32 KiB from some clients).
pub const SFTP_WRITE_COALESCE_PART_BYTES_MAX: usize = 64 * 1024;
/// Largest NAME reply for READDIR.
pub const SFTP_NAME_REPLY_BYTES_MAX: u32 = 64 * 1024;
/// Longest error message in a STATUS reply.
pub const SFTP_STATUS_MESSAGE_BYTES_MAX: usize = 256;
/// Small replies of the writer task merged into one channel write.
pub const SFTP_REPLY_BATCH_BYTES_MAX: usize = 64 * 1024;

/// SSH channel window we grant clients (russh tops it up as data arrives).
pub const SSH_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
/// Largest SSH channel data packet we accept (russh 0.65 accepts 256 KiB of channel data).
pub const SSH_PACKET_BYTES_MAX: u32 = 256 * 1024;
/// Channel messages buffered between russh's session loop and our reader. With 256 KiB
/// packets, 32 of them are 8 MiB.
pub const SSH_CHANNEL_BUFFER_COUNT_MAX: usize = 32;
/// Concurrent SSH connections; more are refused at accept.
pub const SSH_CONNECTIONS_COUNT_MAX: usize = 64;
/// Session channels per SSH connection (OpenSSH's sftp uses one).
pub const SSH_CHANNELS_PER_CONNECTION_COUNT_MAX: usize = 4;
/// A connection that has not logged in after this long is dropped (OpenSSH's LoginGraceTime).
pub const SSH_LOGIN_GRACE_SECONDS: u64 = 120;
/// Every rejected authentication takes this long, so timing does not tell users apart; longer
/// than an argon2 verification on the box.
pub const SSH_AUTH_REJECTION_MILLISECONDS: u64 = 500;
/// Keepalive probe interval; a peer missing `SSH_KEEPALIVE_COUNT_MAX` probes is dropped.
pub const SSH_KEEPALIVE_INTERVAL_SECONDS: u64 = 15;
pub const SSH_KEEPALIVE_COUNT_MAX: usize = 4;

const _: () =
    assert!(SFTP_PACKET_BYTES_MAX + SFTP_REQUEST_OVERHEAD_BYTES <= SFTP_QUEUED_REQUEST_BYTES_MAX);
const _: () = assert!(SFTP_IO_BYTES_MAX + 64 <= SFTP_REPLY_DATA_BYTES_MAX);
const _: () = assert!(SFTP_NAME_REPLY_BYTES_MAX <= SFTP_REPLY_DATA_BYTES_MAX);
const _: () = assert!(crate::limits::SFTP_HANDLES_COUNT_MAX <= SFTP_REPLIES_QUEUED_COUNT_MAX);
const _: () = assert!(SFTP_IO_BYTES_MAX as usize <= SFTP_WRITE_COALESCE_BYTES_MAX);
const _: () = assert!(SFTP_WRITE_COALESCE_PART_BYTES_MAX < SFTP_WRITE_COALESCE_BYTES_MAX);
