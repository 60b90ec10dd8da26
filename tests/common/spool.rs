//! The spool and the drain run inside the test's own process (no daemon): their options as the
//! gateway sets them, and a client's acknowledged upload. May use only the library's public
//! API; not the daemon harness of `common`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sftpgw::drain::upload::DrainConfig;
use sftpgw::spool::{FileState, OpenMode, Spool, SpoolOptions, VPath};

/// The part size the tests' drains use: S3's smallest.
pub const PART: u64 = 5 << 20;

/// A spool in `dir` as the gateway sets it with early drain on (files larger than a part are
/// hashed by the drain), without limits of size, disk or age (partial files live an hour).
pub fn spool_options(dir: PathBuf) -> SpoolOptions {
    SpoolOptions {
        hash_bytes_max: PART,
        ..SpoolOptions::unlimited(dir)
    }
}

/// A drain under prefix `p/` with early parts, quick backoff, no settle time, and automatic
/// retries of failed files so late (an hour) that no test sees one unless it asks.
pub fn drain_config() -> DrainConfig {
    DrainConfig {
        prefix: "p/".into(),
        part_size: PART,
        concurrency: 4,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        settle: Duration::ZERO,
        early: true,
        failed_retry_first: Duration::from_secs(3600),
        failed_retry_max: Duration::from_secs(3600),
    }
}

/// Uploads `bytes` as `user`'s new version of `name` and seals it (CLOSE acknowledged).
pub async fn put(spool: &Arc<Spool>, user: &str, name: &str, bytes: &[u8]) {
    let h = spool
        .open_write(
            user,
            &VPath::resolve(name).expect("path"),
            OpenMode {
                truncate: true,
                exclusive: false,
            },
        )
        .await
        .expect("open");
    h.write_at(0, Bytes::copy_from_slice(bytes))
        .await
        .expect("write");
    h.close().await.expect("close acknowledged");
}

/// The state of `user`'s file `name`, if the spool knows it.
pub fn state(spool: &Spool, user: &str, name: &str) -> Option<FileState> {
    spool
        .stat(user, &VPath::resolve(name).expect("path"))
        .ok()
        .and_then(|e| e.state)
}

/// Waits (a minute at most) until `user`'s file `name` is in state `want`; panics with `why`
/// and the spool's files if it never is.
pub async fn wait_state(spool: &Spool, user: &str, name: &str, want: FileState, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while state(spool, user, name) != Some(want) {
        assert!(
            Instant::now() < deadline,
            "{why}: {name} never became {want:?}: {:?}",
            spool.files()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
