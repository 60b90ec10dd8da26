//! Replay: the file header, and decoding a whole journal image into records.
//!
//! Pure functions over bytes, so that tests and fuzzers can drive them without files. Replay
//! never panics on any input: it keeps every record up to the first frame that is torn, corrupt
//! or undecodable, and reports where the good part ends.

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
    UnsupportedVersion { found: u32 },
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
    /// The committed records, in order.
    pub records: Vec<R>,
    /// Length of the good prefix of the bytes: header plus every good frame. `0` for
    /// [`ReplayEnd::NoHeader`].
    pub valid_len: usize,
    pub end: ReplayEnd,
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

    let mut records = Vec::new();
    let mut offset = FILE_HEADER_BYTES;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let (payload, frame_len) = match frame::decode(rest) {
            Ok(decoded) => decoded,
            Err(error) => return Ok(torn(records, offset, TailError::Frame(error))),
        };
        match postcard::take_from_bytes::<R>(payload) {
            Ok((record, [])) => records.push(record),
            Ok((_, [_, ..])) | Err(_) => {
                return Ok(torn(records, offset, TailError::Undecodable));
            }
        }
        offset += frame_len;
    }
    Ok(Replayed {
        records,
        valid_len: offset,
        end: ReplayEnd::Clean,
    })
}

fn torn<R>(records: Vec<R>, valid_len: usize, error: TailError) -> Replayed<R> {
    Replayed {
        records,
        valid_len,
        end: ReplayEnd::Torn(error),
    }
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

    proptest! {
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
            // The good prefix alone replays cleanly to the same records.
            let again = decode_all::<Vec<u8>>(&bytes[..replayed.valid_len]).expect("valid header");
            prop_assert_eq!(again.end, ReplayEnd::Clean);
            prop_assert_eq!(again.records, replayed.records);
        }
    }
}
