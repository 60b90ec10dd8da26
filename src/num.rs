//! Audited numeric conversions: the only place outside tests where `as` may convert a number.
//!
//! The crate denies `clippy::as_conversions` and the lossy-cast lints (`Cargo.toml`,
//! `[lints.clippy]`): a silent `as` on a wire offset or a length is how a 4 GiB file turns into
//! a 0-byte one. Code converts with `From`/`TryFrom` where the types allow it, and with the
//! helpers here where they do not but the conversion is lossless on every target we build for
//! (64-bit: `usize` and `u64` have the same width, checked below) or where the loss is the point
//! (a rate shown as a float, a float rounded back to whole bytes). Each helper says which.
//!
//! A leaf: it uses nothing of the crate, and every module may use it.
#![allow(
    clippy::as_conversions,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "the audited conversions themselves; each function states why it is sound"
)]

// The gateway ships for x86_64 and runs its tests there; `usize` ⇄ `u64` below are lossless
// only because the two have the same width. A 32-bit target fails to build here, not at run time
// on a 4 GiB file.
const _: () = assert!(usize::BITS == u64::BITS);

/// A length or index as a `u64` (byte counts, offsets, counters). Lossless: `usize` is 64 bits.
#[must_use]
pub const fn u64_from_usize(n: usize) -> u64 {
    n as u64
}

/// A `u64` length or offset as a `usize` (to index memory or size a buffer). Lossless: `usize`
/// is 64 bits. Whether the memory exists is the caller's bound to check, not this one's.
#[must_use]
pub const fn usize_from_u64(n: u64) -> usize {
    n as usize
}

/// A `u32` (a wire length, a count from a protocol) as a `usize`. Lossless on 32 and 64 bits.
#[must_use]
pub const fn usize_from_u32(n: u32) -> usize {
    n as usize
}

/// A count or byte total as a float, for rates, ratios and displays. Exact below 2^53 (8 PiB),
/// rounded to the nearest float above: fine for a rate, never used to compute an offset.
#[must_use]
pub const fn f64_from_u64(n: u64) -> f64 {
    n as f64
}

/// A non-negative float (bytes from a rate × seconds, a rounded size) as whole units,
/// truncated toward zero and saturating: NaN and negatives give 0, values above `u64::MAX`
/// give `u64::MAX`. This is Rust's defined float-to-int `as`, named so a reader sees the
/// choice.
#[must_use]
pub const fn u64_from_f64_saturating(x: f64) -> u64 {
    x as u64
}

/// The low 32 bits of a `u64`: for hashes and checksums that fold a wider value on purpose.
#[must_use]
pub const fn u32_low_bits(n: u64) -> u32 {
    n as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_to_int_saturates_and_truncates() {
        assert_eq!(u64_from_f64_saturating(f64::NAN), 0);
        assert_eq!(u64_from_f64_saturating(-1.5), 0);
        assert_eq!(u64_from_f64_saturating(2.9), 2);
        assert_eq!(u64_from_f64_saturating(f64::INFINITY), u64::MAX);
    }

    #[test]
    fn widths_round_trip() {
        assert_eq!(usize_from_u64(u64::MAX), usize::MAX);
        assert_eq!(u64_from_usize(usize::MAX), u64::MAX);
        assert_eq!(usize_from_u32(u32::MAX), 4_294_967_295);
        assert_eq!(u32_low_bits(0x1_0000_0002), 2);
        assert_eq!(f64_from_u64(1 << 53), 9_007_199_254_740_992.0);
    }
}
