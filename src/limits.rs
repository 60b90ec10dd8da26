//! Named limits of the whole gateway, with their units last (TigerBeetle style).
//! Relations between limits are checked at compile time.
//!
//! A leaf: every module may read these limits, and this module uses nothing of the crate but
//! the audited conversions of `crate::num` (which its compile-time checks need).

use crate::num::{u64_from_usize, usize_from_u32};

/// S3's smallest part (all but the last part of a multipart upload).
pub const PART_SIZE_BYTES_MIN: u64 = 5 * 1024 * 1024;
/// S3's largest part.
pub const PART_SIZE_BYTES_MAX: u64 = 5 * 1024 * 1024 * 1024;
/// S3's most parts in one multipart upload.
pub const PARTS_COUNT_MAX: u64 = 10_000;
/// The largest object S3 stores (5 TiB): no file may grow beyond it.
pub const OBJECT_BYTES_MAX: u64 = 5 * 1024 * 1024 * 1024 * 1024;
/// Default part size.
pub const PART_SIZE_BYTES_DEFAULT: u64 = 16 * 1024 * 1024;
/// Largest journal record payload; a frame announcing more is treated as torn.
pub const RECORD_BYTES_MAX: u32 = 64 * 1024;
/// A file at most this long is sealed with its bytes inside the journal's `Sealed` record pair
/// (`Record::InlineData`): one journal fsync, shared with other sessions' CLOSEs, makes it
/// durable, instead of fsyncs of the file, of two directories and of the journal in a row.
pub const SEAL_INLINE_BYTES_MAX: u64 = 32 * 1024;
/// S3's longest object key.
pub const KEY_BYTES_MAX: usize = 1024;
/// Largest SFTP packet we accept from a client (a WRITE of 256 KiB plus headers).
pub const SFTP_PACKET_BYTES_MAX: u32 = 256 * 1024 + 1024;
/// Largest READ/WRITE payload we advertise in limits@openssh.com.
pub const SFTP_IO_BYTES_MAX: u32 = 256 * 1024;
/// Open handles per SFTP session.
pub const SFTP_HANDLES_COUNT_MAX: usize = 1024;
/// Concurrent S3 part uploads at most.
pub const DRAIN_CONCURRENCY_MAX: usize = 64;

const _: () = assert!(PART_SIZE_BYTES_MIN <= PART_SIZE_BYTES_DEFAULT);
const _: () = assert!(PART_SIZE_BYTES_DEFAULT <= PART_SIZE_BYTES_MAX);
const _: () = assert!(SFTP_IO_BYTES_MAX < SFTP_PACKET_BYTES_MAX);
// An inline record (the bytes, an id, a length) must fit in one journal frame.
const _: () =
    assert!(SEAL_INLINE_BYTES_MAX + 1024 <= u64_from_usize(usize_from_u32(RECORD_BYTES_MAX)));
