//! The journal: an append-only log of framed records, the source of truth for every file's
//! state. Generic over the record type, which the spool defines.
//!
//! Frame: `len: u32 LE | crc32c(len bytes ‖ payload): u32 LE | payload (postcard)`, after a file
//! header `b"SFTPGWJ\0" | version: u32 LE`. A torn or corrupt tail is dropped at open.
