//! The SFTP front end: SSH server (russh), authentication, and our own pipelined SFTP session
//! loop over russh-sftp's protocol types.
//!
//! `server` accepts SSH connections and authenticates them against `namespace::Users`; each
//! "sftp" subsystem channel runs one `session` against the shared spool. The limits below are
//! the SFTP layer's own (the ones shared with other layers live in [`crate::limits`]).
//!
//! May use: `spool` (and the journal's types only as `spool` hands them out), `limits`, `num`,
//! `names`, `telemetry`. May not use `config`, `drain`, `status` or `gateway`: the
//! configuration arrives as this module's own types ([`SessionPolicy`], [`SshSetup`],
//! `defender::DefenderConfig`, `namespace::User`), and what becomes of a file after the spool
//! is none of its business (`tests/architecture.rs` checks the list).

mod algorithms;
pub use algorithms::Algorithms;
mod budget;
pub mod defender;

/// Which new names a session accepts (`[sftp] allow_control_characters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NamePolicy {
    /// Names with control characters or bidi overrides are refused at OPEN for writing, MKDIR
    /// and RENAME (see `crate::names`).
    #[default]
    RefuseHostile,
    /// Any name the spool accepts (`allow_control_characters = true`).
    AllowAll,
}

/// `sftp.login_grace` unless set (OpenSSH's is 120 s; a LAN client logs in within seconds).
pub const LOGIN_GRACE_DEFAULT: std::time::Duration = std::time::Duration::from_secs(30);

/// What every SFTP session of a server accepts and tolerates (`[sftp]`).
#[derive(Debug, Clone, Default)]
pub struct SessionPolicy {
    /// Which new names it accepts.
    pub names: NamePolicy,
    /// A session from which no request arrives for this long is ended, so that a forgotten
    /// client does not hold a session slot forever (`sftp.idle_timeout`; `None`: never).
    /// Dead peers are found sooner by SSH keepalives.
    pub idle_timeout: Option<std::time::Duration>,
    /// The read-only directory of receipts and queue in `/` (`sftp.virtual_dir`; `None`: off).
    pub virtual_dir: Option<receipts::VirtualDir>,
}
mod handles;
pub mod keys;
mod lane;
pub mod namespace;
pub(crate) mod ops;
pub mod receipts;
pub mod server;
pub mod session;
#[cfg(test)]
mod tests;
pub(crate) mod wire;

pub use algorithms::load_host_keys;
pub use budget::IngestBudget;
pub use keys::{HostKeyError, KeyKind, load_or_generate_host_key};
pub use namespace::{Users, UsersError, hash_password};
pub use server::{ServeError, SshSetup, serve};
pub use session::SessionEnd;

use crate::limits::{SFTP_IO_BYTES_MAX, SFTP_PACKET_BYTES_MAX};
use crate::num::usize_from_u32;

/// Request data (packet bodies) that all sessions together hold in memory: read from their
/// channels but not yet applied to the spool (WRITE) or decoded (everything else). When it is
/// spent, sessions stop reading and data waits in the kernel's socket buffers instead. This is
/// most of the daemon's memory under many uploads (bench/memory.sh); with
/// `SFTP_SESSION_INGEST_BYTES_MAX` per session, 8 uploads at full speed use all of it.
pub const SFTP_INGEST_BYTES_MAX: u32 = 16 * 1024 * 1024;
/// One session's most of `SFTP_INGEST_BYTES_MAX`, so that a few sessions (or clients stalled in
/// the middle of a packet) cannot take all of it. A single upload keeps the spool busy with
/// far less: the reader only needs to stay a few writes ahead of the spool.
pub const SFTP_SESSION_INGEST_BYTES_MAX: u32 = 2 * 1024 * 1024;
/// The first part of a packet body, charged to the budget before it is read; the rest is
/// charged once this part has arrived. A client that sends a packet's length and stalls holds
/// this much, not its whole announced length (64 such sessions hold 2 MiB of the 16).
pub const SFTP_BODY_CHUNK_BYTES: u32 = 32 * 1024;
/// A packet body of which no byte arrives for this long ends the session (its charge, and the
/// partial file, are given back).
pub const SFTP_BODY_STALL_SECONDS: u64 = 30;
/// Bytes of requests a session has read but not yet answered (queued, executing, or waiting
/// for their reply to be queued), charged with `SFTP_REQUEST_OVERHEAD_BYTES` each. When
/// exhausted the session stops reading from the channel. Their data is bounded by the ingest
/// budget; this bounds how many requests wait for replies. It must stay large: a paramiko
/// download sends READs for the whole file before reading a reply, and the session must keep
/// reading them while the replies wait for the client's window (see `session`); OpenSSH keeps
/// 64 requests of 255 KiB in flight (16.3 MiB).
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

/// SSH channel window we grant clients (OpenSSH's sshd grants the same). russh tops it up as
/// data arrives, not as it is consumed, so it is not our back-pressure: it bounds what a
/// client has sent but we have not read, which waits in socket buffers and, above all, in the
/// client's own output buffer. OpenSSH's client handles a large one badly: with 16 MiB and a
/// session waiting for the ingest budget, 16 parallel puts took 4× the client CPU (copying
/// and faulting in its growing buffer) and twice the time. 2 MiB still covers a gigabit LAN's
/// bandwidth-delay product many times over (russh tops it up at half).
pub const SSH_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
/// Largest SSH channel data packet we accept (OpenSSH's sshd: the same; russh 0.65 accepts up
/// to 256 KiB). russh keeps one read buffer this big per connection and up to
/// `SSH_CHANNEL_BUFFER_COUNT_MAX` + 1 packets per channel, all outside the ingest budget; with
/// the window above, 32 KiB packets were as fast as 256 KiB ones (bench/memory.sh, ingest.sh).
pub const SSH_PACKET_BYTES_MAX: u32 = 32 * 1024;
/// Channel messages buffered between russh's session loop and our reader; when they are full,
/// russh stops reading the socket. Enough for the reader to find the next packet waiting
/// while it copies one, and no more: they are outside the ingest budget.
pub const SSH_CHANNEL_BUFFER_COUNT_MAX: usize = 4;
/// Logged-in SSH connections (sessions) at most; `[sftp] max_sessions` (default 64) may
/// only lower it. Connections not logged in yet are limited by `[sftp] max_startups`.
pub const SSH_CONNECTIONS_COUNT_MAX: usize = 64;
/// Session channels per SSH connection (OpenSSH's sftp uses one).
pub const SSH_CHANNELS_PER_CONNECTION_COUNT_MAX: usize = 4;
/// Every rejected authentication takes this long, so timing does not tell users apart; longer
/// than an argon2 verification on the box.
pub const SSH_AUTH_REJECTION_MILLISECONDS: u64 = 500;
/// Keepalive probe interval; a peer missing `SSH_KEEPALIVE_COUNT_MAX` probes is dropped.
pub const SSH_KEEPALIVE_INTERVAL_SECONDS: u64 = 15;
/// Keepalive probes a peer may miss in a row before it is dropped.
pub const SSH_KEEPALIVE_COUNT_MAX: usize = 4;

/// Upload data the SFTP layer can hold in memory at worst, every connection with every
/// channel busy: the ingest budget, plus what russh keeps outside it (a read buffer per
/// connection; per channel its buffered packets and the one it waits to hand over). Kept
/// within `SFTP_UPLOAD_MEMORY_BYTES_MAX` so that the daemon stays small under any load.
pub const SFTP_UPLOAD_BUFFERED_BYTES_MAX: usize = usize_from_u32(SFTP_INGEST_BYTES_MAX)
    + SSH_CONNECTIONS_COUNT_MAX * usize_from_u32(SSH_PACKET_BYTES_MAX)
    + SSH_CONNECTIONS_COUNT_MAX
        * SSH_CHANNELS_PER_CONNECTION_COUNT_MAX
        * (SSH_CHANNEL_BUFFER_COUNT_MAX + 1)
        * usize_from_u32(SSH_PACKET_BYTES_MAX);
/// Cap on that worst case. The measured target is lower: the whole daemon within 64 MiB
/// while 64 sessions (one channel per connection, as OpenSSH's sftp opens) upload, where the
/// bound is 16 + 2 + 10 MiB on top of the idle process's 15 MiB (bench/memory.sh).
pub const SFTP_UPLOAD_MEMORY_BYTES_MAX: usize = 64 * 1024 * 1024;

const _: () =
    assert!(SFTP_PACKET_BYTES_MAX + SFTP_REQUEST_OVERHEAD_BYTES <= SFTP_QUEUED_REQUEST_BYTES_MAX);
// Every packet must fit in a session's share, and the share in the whole budget.
const _: () = assert!(SFTP_PACKET_BYTES_MAX <= SFTP_SESSION_INGEST_BYTES_MAX);
const _: () = assert!(SFTP_BODY_CHUNK_BYTES <= SFTP_PACKET_BYTES_MAX);
const _: () = assert!(SFTP_SESSION_INGEST_BYTES_MAX <= SFTP_INGEST_BYTES_MAX);
const _: () = assert!(SFTP_UPLOAD_BUFFERED_BYTES_MAX <= SFTP_UPLOAD_MEMORY_BYTES_MAX);
// russh tops the window up once half of it is used: a full packet must fit in that half.
const _: () = assert!(2 * SSH_PACKET_BYTES_MAX <= SSH_WINDOW_BYTES);
const _: () = assert!(SFTP_IO_BYTES_MAX + 64 <= SFTP_REPLY_DATA_BYTES_MAX);
const _: () = assert!(SFTP_NAME_REPLY_BYTES_MAX <= SFTP_REPLY_DATA_BYTES_MAX);
const _: () = assert!(crate::limits::SFTP_HANDLES_COUNT_MAX <= SFTP_REPLIES_QUEUED_COUNT_MAX);
const _: () = assert!(usize_from_u32(SFTP_IO_BYTES_MAX) <= SFTP_WRITE_COALESCE_BYTES_MAX);
const _: () = assert!(SFTP_WRITE_COALESCE_PART_BYTES_MAX < SFTP_WRITE_COALESCE_BYTES_MAX);
