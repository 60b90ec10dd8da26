//! Replay: the file header, and decoding a whole journal image into records.
//!
//! Pure functions over bytes, so that tests and fuzzers can drive them without files. Replay
//! never panics on any input and never drops a record it can still read. It uses [`frame`] and
//! no I/O: opening, truncating and rewriting the file belong to `log`.
//!
//! A bad frame (torn, corrupt or undecodable) is one of two things. If no good frame follows
//! it, it is a **torn tail**: the last append was cut by a crash and was never acknowledged;
//! replay ends there and the tail is dropped. If a good frame follows it somewhere, it is
//! **damage** (a bad sector, bit rot, an SSD that reordered writes on power loss): the bytes up
//! to the next good frame are skipped and reported, and every record after them is kept.
//! A good frame is one whose length, checksum and record all decode; a false resync needs a
//! 32-bit checksum to match by chance and the payload to be a record.

use serde::de::DeserializeOwned;

use super::frame::{self, FrameError};

/// The first bytes of every journal file.
pub const MAGIC: [u8; 8] = *b"SFTPGWJ\0";
/// The on-disk format this build writes and reads.
pub const VERSION: u32 = 1;
/// Bytes of the file header: magic, then version (u32 LE).
pub const FILE_HEADER_BYTES: usize = 12;

/// The file header of a journal of [`VERSION`].
pub fn file_header() -> [u8; FILE_HEADER_BYTES] {
    let mut header = [0; FILE_HEADER_BYTES];
    header[..8].copy_from_slice(&MAGIC);
    header[8..].copy_from_slice(&VERSION.to_le_bytes());
    header
}

/// The file is not something replay may repair by truncation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// The bytes do not start with [`MAGIC`]: refusing protects a file that is not ours.
    NotAJournal,
    /// A journal of another format version.
    UnsupportedVersion {
        /// The version the header holds.
        found: u32,
    },
}

/// Why replay stopped before the end of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailError {
    /// The frame itself is torn or corrupt.
    Frame(FrameError),
    /// The frame is intact but its payload is not a record (or has bytes left over).
    Undecodable,
}

impl std::fmt::Display for TailError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Frame(error) => error.fmt(f),
            Self::Undecodable => write!(f, "frame payload is not a record"),
        }
    }
}

/// Bytes in the middle of a journal that are not frames, skipped by replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    /// Offset of the first bad byte in the file.
    pub offset: usize,
    /// Bytes skipped until the next good frame.
    pub len: usize,
    /// What was wrong with the frame at `offset`.
    pub reason: TailError,
}

/// How the bytes ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayEnd {
    /// Every byte belongs to a good frame.
    Clean,
    /// Empty, or a strict prefix of the file header: a journal whose creation was torn.
    NoHeader,
    /// Replay stopped at `valid_len` for this reason; the rest is dropped.
    Torn(TailError),
}

/// The result of replaying a journal image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed<R> {
    /// The committed records that could be read, in order.
    pub records: Vec<R>,
    /// Where the bytes worth keeping end: after the last good frame (a torn tail after it is
    /// dropped). `0` for [`ReplayEnd::NoHeader`].
    pub valid_len: usize,
    /// How the bytes ended: cleanly, without a header, or in a torn tail.
    pub end: ReplayEnd,
    /// Damaged ranges before `valid_len`, skipped, in file order.
    pub damage: Vec<Damage>,
}

/// Decodes a whole journal image (file header included).
pub fn decode_all<R: DeserializeOwned>(bytes: &[u8]) -> Result<Replayed<R>, HeaderError> {
    let header = file_header();
    if bytes.len() < FILE_HEADER_BYTES {
        return if header.starts_with(bytes) {
            Ok(Replayed {
                records: Vec::new(),
                valid_len: 0,
                end: ReplayEnd::NoHeader,
                damage: Vec::new(),
            })
        } else {
            Err(HeaderError::NotAJournal)
        };
    }
    if bytes[..8] != MAGIC {
        return Err(HeaderError::NotAJournal);
    }
    let mut version = [0; 4];
    version.copy_from_slice(&bytes[8..FILE_HEADER_BYTES]);
    let version = u32::from_le_bytes(version);
    if version != VERSION {
        return Err(HeaderError::UnsupportedVersion { found: version });
    }

    let mut replayed = Replayed {
        records: Vec::new(),
        valid_len: FILE_HEADER_BYTES,
        end: ReplayEnd::Clean,
        damage: Vec::new(),
    };
    let mut offset = FILE_HEADER_BYTES;
    while offset < bytes.len() {
        match record_at::<R>(bytes, offset) {
            Ok((record, frame_len)) => {
                replayed.records.push(record);
                offset += frame_len;
                replayed.valid_len = offset;
            }
            Err(reason) => match next_good_frame::<R>(bytes, offset + 1) {
                Some(next) => {
                    replayed.damage.push(Damage {
                        offset,
                        len: next - offset,
                        reason,
                    });
                    offset = next;
                }
                None => {
                    replayed.end = ReplayEnd::Torn(reason);
                    break;
                }
            },
        }
    }
    Ok(replayed)
}

/// The record of the frame at `offset` and the frame's length.
fn record_at<R: DeserializeOwned>(bytes: &[u8], offset: usize) -> Result<(R, usize), TailError> {
    let rest = bytes.get(offset..).unwrap_or_default();
    let (payload, frame_len) = frame::decode(rest).map_err(TailError::Frame)?;
    match postcard::take_from_bytes::<R>(payload) {
        Ok((record, [])) => Ok((record, frame_len)),
        Ok((_, [_, ..])) | Err(_) => Err(TailError::Undecodable),
    }
}

/// The offset of the first good frame at or after `from`, if any. Most offsets are refused
/// by the length check alone, before any checksum is computed.
fn next_good_frame<R: DeserializeOwned>(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len()).find(|&offset| record_at::<R>(bytes, offset).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn image(records: &[u64]) -> Vec<u8> {
        let mut bytes = file_header().to_vec();
        for record in records {
            let payload = postcard::to_allocvec(record).expect("u64 encodes");
            frame::encode_into(&payload, &mut bytes);
        }
        bytes
    }

    #[test]
    fn clean_image_replays_every_record() {
        let bytes = image(&[1, 2, 300, u64::MAX]);
        let replayed = decode_all::<u64>(&bytes).expect("valid header");
        assert_eq!(replayed.records, vec![1, 2, 300, u64::MAX]);
        assert_eq!(replayed.valid_len, bytes.len());
        assert_eq!(replayed.end, ReplayEnd::Clean);
    }

    #[test]
    fn header_prefix_is_an_unborn_journal_but_foreign_bytes_are_refused() {
        let header = file_header();
        for cut in 0..FILE_HEADER_BYTES {
            let replayed = decode_all::<u64>(&header[..cut]).expect("prefix of our header");
            assert_eq!(replayed.end, ReplayEnd::NoHeader);
        }
        assert_eq!(
            decode_all::<u64>(b"#!/bin/sh\necho"),
            Err(HeaderError::NotAJournal)
        );
        assert_eq!(
            decode_all::<u64>(b"SFT"),
            Ok(decode_all::<u64>(b"").expect("empty"))
        );
        assert_eq!(decode_all::<u64>(b"SFX"), Err(HeaderError::NotAJournal));
    }

    #[test]
    fn other_format_version_is_refused() {
        let mut bytes = image(&[1]);
        bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(
            decode_all::<u64>(&bytes),
            Err(HeaderError::UnsupportedVersion { found: 7 })
        );
    }

    #[test]
    fn payload_with_left_over_bytes_ends_replay() {
        let mut bytes = image(&[5]);
        let good_len = bytes.len();
        // A valid u64 followed by a stray byte: postcard alone would accept it.
        frame::encode_into(&[1, 0xFF], &mut bytes);
        let replayed = decode_all::<u64>(&bytes).expect("valid header");
        assert_eq!(replayed.records, vec![5]);
        assert_eq!(replayed.valid_len, good_len);
        assert_eq!(replayed.end, ReplayEnd::Torn(TailError::Undecodable));
    }

    /// Offsets of each frame of `image(records)`, and the end.
    fn frame_offsets(records: &[u64]) -> Vec<usize> {
        (0..=records.len())
            .map(|n| image(&records[..n]).len())
            .collect()
    }

    #[test]
    fn a_torn_last_frame_is_dropped_at_every_cut_and_nothing_else_is() {
        let records = [7, 1 << 40, 3, u64::MAX];
        let bytes = image(&records);
        let offsets = frame_offsets(&records);
        let last = offsets[records.len() - 1];
        for cut in last + 1..bytes.len() {
            let replayed = decode_all::<u64>(&bytes[..cut]).expect("valid header");
            assert_eq!(replayed.records, records[..3], "cut at {cut}");
            assert_eq!(replayed.valid_len, last, "cut at {cut}");
            assert!(
                replayed.damage.is_empty(),
                "cut at {cut}: a torn tail is not damage"
            );
            assert!(matches!(replayed.end, ReplayEnd::Torn(_)), "cut at {cut}");
        }
    }

    proptest! {
        /// A flipped bit anywhere in a frame loses that frame's record only: the ones after it
        /// are found again (in the last frame it is a torn tail).
        #[test]
        fn a_flipped_bit_in_any_frame_loses_only_that_record(
            records in proptest::collection::vec(any::<u64>(), 1..12),
            frame_pick in any::<prop::sample::Index>(),
            byte_pick in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut bytes = image(&records);
            let offsets = frame_offsets(&records);
            let frame = frame_pick.index(records.len());
            let (start, end) = (offsets[frame], offsets[frame + 1]);
            bytes[start + byte_pick.index(end - start)] ^= 1 << bit;
            let replayed = decode_all::<u64>(&bytes).expect("valid header");
            let mut expected = records.clone();
            expected.remove(frame);
            prop_assert_eq!(&replayed.records, &expected);
            if frame + 1 == records.len() {
                prop_assert!(replayed.damage.is_empty());
                prop_assert_eq!(replayed.valid_len, start);
            } else {
                prop_assert_eq!(replayed.damage.len(), 1);
                prop_assert_eq!(replayed.damage[0].offset, start);
                prop_assert_eq!(replayed.damage[0].offset + replayed.damage[0].len, end);
                prop_assert_eq!(replayed.valid_len, bytes.len());
            }
        }

        #[test]
        fn random_bytes_never_panic_replay(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_all::<String>(&bytes);
        }

        #[test]
        fn random_frames_after_a_good_header_replay_a_consistent_prefix(
            tail in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut bytes = file_header().to_vec();
            bytes.extend_from_slice(&tail);
            let replayed = decode_all::<Vec<u8>>(&bytes).expect("valid header");
            prop_assert!(replayed.valid_len <= bytes.len());
            // The good prefix replays cleanly to the same records (no new damage in it).
            let again = decode_all::<Vec<u8>>(&bytes[..replayed.valid_len]).expect("valid header");
            prop_assert_eq!(again.end, ReplayEnd::Clean);
            prop_assert_eq!(again.damage, replayed.damage);
            prop_assert_eq!(again.records, replayed.records);
        }
    }
}
