//! One journal frame: `len: u32 LE | crc32c(len bytes ‖ payload): u32 LE | payload`.
//!
//! The checksum covers the length field too, so a torn or flipped length is caught like a
//! torn payload. Decoding checks the length against [`RECORD_BYTES_MAX`] before looking at (or
//! allocating for) the payload, so a garbage length can never make us allocate gigabytes.
//!
//! Pure functions over bytes: no I/O, nothing of the journal but [`RECORD_BYTES_MAX`] from
//! `limits`. Files, replay and repair belong to `log` and `replay`.

use crate::limits::RECORD_BYTES_MAX;

/// Bytes in front of every payload: the length and the checksum.
pub const FRAME_HEADER_BYTES: usize = 8;

/// Why the bytes at some offset are not a frame. Any of these ends replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the header or than the announced payload: a torn write.
    Short,
    /// The length field announces more than [`RECORD_BYTES_MAX`].
    Oversized {
        /// The length the frame announces, in bytes.
        len: u32,
    },
    /// The checksum does not match the length and payload.
    BadChecksum,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Short => write!(f, "short frame"),
            Self::Oversized { len } => {
                write!(
                    f,
                    "frame length {len} exceeds the limit of {RECORD_BYTES_MAX} bytes"
                )
            }
            Self::BadChecksum => write!(f, "frame checksum mismatch"),
        }
    }
}

/// The checksum stored in a frame: crc32c over the length bytes, then the payload.
pub fn checksum(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload)
}

/// Appends the frame of `payload` to `out`.
///
/// # Panics
/// If `payload` is longer than [`RECORD_BYTES_MAX`]: callers check the size first (the journal
/// refuses such a record with an error), so reaching this is a programmer error.
pub fn encode_into(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len <= RECORD_BYTES_MAX)
        .unwrap_or_else(|| {
            panic!(
                "journal payload of {} bytes exceeds RECORD_BYTES_MAX",
                payload.len()
            )
        });
    let len_bytes = len.to_le_bytes();
    out.reserve(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&checksum(len_bytes, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The frame of `payload`. Panics like [`encode_into`].
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    encode_into(payload, &mut out);
    out
}

/// Decodes the frame at the start of `bytes`: its payload and the bytes the frame occupies.
pub fn decode(bytes: &[u8]) -> Result<(&[u8], usize), FrameError> {
    let (Some(len_bytes), Some(crc_bytes)) = (bytes.get(0..4), bytes.get(4..8)) else {
        return Err(FrameError::Short);
    };
    let len_bytes: [u8; 4] = len_bytes.try_into().map_err(|_| FrameError::Short)?;
    let crc_bytes: [u8; 4] = crc_bytes.try_into().map_err(|_| FrameError::Short)?;
    let len = u32::from_le_bytes(len_bytes);
    if len > RECORD_BYTES_MAX {
        return Err(FrameError::Oversized { len });
    }
    // `len <= RECORD_BYTES_MAX` fits in usize on every target we build for; were it not to,
    // the frame would be as unreadable as an oversized one.
    let len_usize = usize::try_from(len).map_err(|_| FrameError::Oversized { len })?;
    let end = FRAME_HEADER_BYTES + len_usize;
    let payload = bytes
        .get(FRAME_HEADER_BYTES..end)
        .ok_or(FrameError::Short)?;
    if checksum(len_bytes, payload) != u32::from_le_bytes(crc_bytes) {
        return Err(FrameError::BadChecksum);
    }
    Ok((payload, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_frame_decodes_to_its_payload_and_length() {
        for payload in [&b""[..], b"x", b"hello journal", &[0xAB; 1000]] {
            let mut bytes = encode(payload);
            let frame_len = bytes.len();
            bytes.extend_from_slice(b"trailing bytes belong to the next frame");
            assert_eq!(decode(&bytes), Ok((payload, frame_len)));
        }
    }

    #[test]
    fn every_strict_prefix_of_a_frame_is_short() {
        let frame = encode(b"some payload");
        for cut in 0..frame.len() {
            assert_eq!(
                decode(&frame[..cut]),
                Err(FrameError::Short),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn oversized_length_is_refused_before_reading_the_payload() {
        let mut bytes = u32::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 4]);
        assert_eq!(decode(&bytes), Err(FrameError::Oversized { len: u32::MAX }));
        let mut bytes = (RECORD_BYTES_MAX + 1).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 4]);
        assert!(matches!(decode(&bytes), Err(FrameError::Oversized { .. })));
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let frame = encode(b"payload under test");
        for byte in 0..frame.len() {
            for bit in 0..8 {
                let mut bad = frame.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    decode(&bad).is_err(),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn zero_filled_tail_is_not_a_frame() {
        // A crash can leave a file extended with zeros; they must not read as an empty record.
        assert_eq!(decode(&[0; 64]), Err(FrameError::BadChecksum));
    }

    #[test]
    #[should_panic(expected = "exceeds RECORD_BYTES_MAX")]
    fn encoding_an_oversized_payload_is_a_programmer_error() {
        let payload = vec![0; RECORD_BYTES_MAX as usize + 1];
        let _ = encode(&payload);
    }
}
