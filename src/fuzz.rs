//! Fuzz targets on the stable toolchain: proptest with arbitrary and mutated inputs for every
//! decoder that reads bytes from outside (issue 15). Each target asserts that nothing panics
//! and what must hold of the result. `FUZZ_CASES` sets the cases per target (CI: the default,
//! a short smoke; `bench/fuzz.sh`: 10^6 each). A failing input is shrunk and written by
//! proptest to `proptest-regressions/fuzz.txt`, which is committed: every crash found stays a
//! regression test that runs first. The SFTP session state machine, which runs a whole
//! session per case, is in [`session`].
//!
//! Test code (`cfg(test)`): it feeds the decoders through the same entry points as the
//! daemon, may use any module, and nothing in the library may use it.

mod session;

use bytes::Bytes;
use proptest::prelude::*;

use crate::journal::replay;
use crate::spool::VPath;
use crate::spool::catalog::Record;

/// Cases per target: `FUZZ_CASES`, or 2 000.
fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        ..ProptestConfig::default()
    }
}

/// `base` with a few bytes flipped, inserted or removed (mutations of valid inputs reach the
/// deep paths that random bytes never do).
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len().max(1);
    proptest::collection::vec((0..len, any::<u8>(), 0u8..3), 1..8).prop_map(move |edits| {
        let mut out = base.clone();
        for (at, byte, kind) in edits {
            let at = at.min(out.len());
            match kind {
                0 if at < out.len() => out[at] ^= byte | 1,
                1 => out.insert(at, byte),
                _ if at < out.len() => {
                    out.remove(at);
                }
                _ => out.push(byte),
            }
        }
        out
    })
}

/// A valid journal image: the header and the frames of some records.
fn journal_image() -> Vec<u8> {
    let records = vec![
        Record::Mkdir {
            user: "alice".into(),
            path: VPath::resolve("/d").expect("path"),
        },
        Record::Opened {
            id: 1,
            user: "alice".into(),
            path: VPath::resolve("/d/f").expect("path"),
            at_unix: 1,
        },
        Record::InlineData {
            id: 1,
            data: b"hello".to_vec(),
        },
        Record::Sealed {
            id: 1,
            size: 5,
            sha256: Some([7; 32]),
            at_unix: 2,
        },
        Record::Delivered { id: 1, at_unix: 3 },
    ];
    let mut image = replay::file_header().to_vec();
    let frames = crate::journal::Journal::<Record>::encode(&records).expect("encode");
    image.extend_from_slice(&frames.0);
    image
}

proptest! {
    #![proptest_config(config())]

    /// SFTP packet bodies from the network: any bytes decode to a request or an error.
    #[test]
    fn fuzz_sftp_packet_decoder(body in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = crate::sftp::wire::decode(Bytes::from(body));
    }

    /// Packets with a valid type byte and plausible lengths, so the field decoders run.
    #[test]
    fn fuzz_sftp_packet_decoder_typed(
        kind in prop_oneof![Just(1u8), 3..=20u8, Just(200u8)],
        rest in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut body = vec![kind];
        body.extend_from_slice(&rest);
        let _ = crate::sftp::wire::decode(Bytes::from(body));
    }

    /// Extended requests' payloads (posix-rename, fsync).
    #[test]
    fn fuzz_sftp_extended_payloads(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = crate::sftp::ops::parse_rename(&data);
        let _ = crate::sftp::ops::parse_fsync(&data);
    }

    /// Journal images as a damaged disk leaves them: random bytes never panic, and a replay
    /// never claims more valid bytes than there are.
    #[test]
    fn fuzz_journal_replay_random(image in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(replayed) = replay::decode_all::<Record>(&image) {
            prop_assert!(replayed.valid_len <= image.len());
        }
    }

    /// A valid journal with a few bytes flipped, inserted or removed.
    #[test]
    fn fuzz_journal_replay_mutated(image in mutated(journal_image())) {
        if let Ok(replayed) = replay::decode_all::<Record>(&image) {
            prop_assert!(replayed.valid_len <= image.len());
            prop_assert!(replayed.records.len() <= 5 + image.len() / 8);
        }
    }

    /// Configuration files: the complete example, mutated; parsing never panics.
    #[test]
    fn fuzz_config_parse_mutated(text in mutated(crate::config::EXAMPLE.as_bytes().to_vec())) {
        let text = String::from_utf8_lossy(&text);
        let _ = crate::config::Config::parse(&text, std::path::Path::new("/fuzz/sftpgw.toml"));
    }

    /// Values of the config's own little languages.
    #[test]
    fn fuzz_config_values(text in "\\PC{0,24}") {
        let _ = crate::config::parse_duration(&text);
        let _ = crate::config::Rate::parse(&text);
        let _ = crate::config::Days::parse(&text);
    }

    /// Paths from clients: whatever is accepted stays inside the jail.
    #[test]
    fn fuzz_vpath_resolve(raw in "[/.a-z\\\\\u{0}-\u{1f}\u{202e}]{0,40}") {
        if let Ok(path) = VPath::resolve(&raw) {
            prop_assert!(path.as_str().split('/').all(|c| c != ".." && c != "."), "{:?}", path);
            prop_assert!(!path.as_str().starts_with('/'));
            prop_assert!(!path.as_str().contains('\0'));
        }
    }

    /// Control socket requests (a local peer may send anything on its line).
    #[test]
    fn fuzz_control_requests(line in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = serde_json::from_slice::<crate::status::control::Request>(&line);
    }
}
