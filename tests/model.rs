//! A model-based test in the pattern of mountpoint-s3's reftests: random sequences of
//! operations run against the real spool, drain and embedded S3 server (through the real
//! aws-sdk-s3 store wrapped in the fault-injecting one), and against a tiny reference model of
//! what the bucket may hold. At the end, once the drain has settled, every path's object is
//! checked against the model.
//!
//! The universe is small on purpose: 2 users × 2 paths, files from empty to a little over two
//! parts (5 MiB parts), most of them small. Operations:
//! - `Put`: open_write(truncate) + writes + close, an acknowledged CLOSE; written in order,
//!   slowly (so that the early drain sends parts before CLOSE), in reverse, or in order and
//!   then its head written again (so that an early part no longer matches the sealed file).
//! - `Abandon`: the same without CLOSE (the session died): the file stays partial and must
//!   never become an object; the path's last acknowledged version must still arrive.
//! - `Resume`: open_write without truncate of that partial file (reput), append, close.
//! - `Remove`: spool.remove. The gateway never deletes objects, and a pending upload is
//!   cancelled: the bucket may then hold nothing or any version acknowledged before.
//! - `Rename`: posix-rename of an acknowledged file onto the user's other path. Accepted while
//!   the file is pending (the new path must end with it; the old key may hold it or not),
//!   refused once it is delivered (nothing changes).
//! - `Crash`: abort the drain, wait until no task holds the spool, drop it, optionally damage
//!   the journal (flip a byte, or cut it, after its 12-byte header), reopen the spool from
//!   disk, start a new drain.
//! - `Fault`: the next N calls of one S3 operation fail transiently (500, connection reset,
//!   response lost) or with NoSuchUpload.
//! - `Slow`: the S3 server's upload rate (so that crashes land in the middle of uploads).
//! - `Tick`: let the drain run a little.
//!
//! Oracle, per (user, path): the object is exactly the last acknowledged version; after a
//! Remove (until the next Put) it is absent or some acknowledged version; a path never
//! acknowledged has no object. After a damaged journal an acknowledged version may instead be
//! in the quarantine (`spool.quarantined()`), never lost. Without journal damage also: no file
//! failed, nothing quarantined, no multipart upload left open that the spool does not know
//! (a partial file's early upload stays open, for a resume), and a restart at the end changes
//! no file's state.
//!
//! Runs `PROPTEST_CASES` cases (16 by default); failures shrink (at most
//! `PROPTEST_MAX_SHRINK_ITERS` steps, 64 by default, for at most `PROPTEST_MAX_SHRINK_TIME`
//! ms, 30 s by default) and are kept in
//! `tests/model.proptest-regressions`. The failure message carries the tail of the product's
//! log (`SFTPGW_LOG` sets the filter, `sftpgw=info` by default; `MODEL_LOG_LINES` how many
//! lines, 120). `MODEL_STATS=1` prints per case the S3 calls and faults and what crashes met;
//! `MODEL_RESTART_DELAY_MS` keeps a crashed run down that long before it restarts (0 by
//! default: requests of the dead run still being processed by the server then meet the new
//! run's, as after a quick restart by systemd).
//!
//! The smallest sequences the model found are also replayed as they are, by name, at the end
//! of this file.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::as_conversions,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    reason = "a test panics on what it did not expect, and may cast what it made itself"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::spool::{PART, spool_options};
use proptest::prelude::*;
use rand::{RngCore, SeedableRng};
use sftpgw::drain::aws::AwsStore;
use sftpgw::drain::fault::{Fault, FaultStore, Op as S3Op};
use sftpgw::drain::store::ObjectStore;
use sftpgw::drain::upload::{Drain, DrainConfig};
use sftpgw::s3server::{S3Server, S3ServerConfig, test_s3_config};
use sftpgw::spool::{FileState, FsErrorKind, OpenMode, Spool, VPath, WriteHandle};
use sha2::{Digest, Sha256};

const PREFIX: &str = "p/";
const USERS: [&str; 2] = ["u1", "u2"];
const PATHS: [&str; 2] = ["a.bin", "b.bin"];
const SLOTS: usize = USERS.len() * PATHS.len();
/// Writes are this long at most, as an SFTP client's would be (sshfs, OpenSSH: smaller).
const CHUNK: usize = 1 << 20;
const ALL_S3_OPS: [S3Op; 7] = [
    S3Op::PutObject,
    S3Op::CreateMultipartUpload,
    S3Op::UploadPart,
    S3Op::CompleteMultipartUpload,
    S3Op::AbortMultipartUpload,
    S3Op::HeadObject,
    S3Op::ListMultipartUploads,
];
const JOURNAL_HEADER_BYTES: usize = 12;
/// How long the drain may take to settle at the end.
const SETTLE_MAX: Duration = Duration::from_secs(60);
/// A whole case, hung or not.
const CASE_MAX: Duration = Duration::from_secs(150);

/// `MODEL_RESTART_DELAY_MS`: how long a crashed run stays down before the spool is reopened.
fn restart_delay() -> Duration {
    Duration::from_millis(
        std::env::var("MODEL_RESTART_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    )
}

fn user(slot: usize) -> &'static str {
    USERS[slot / PATHS.len()]
}

fn path(slot: usize) -> &'static str {
    PATHS[slot % PATHS.len()]
}

fn vpath(slot: usize) -> VPath {
    VPath::resolve(path(slot)).expect("path")
}

fn key(slot: usize) -> String {
    format!("{PREFIX}{}/{}", user(slot), path(slot))
}

/// The other path of the same user.
fn sibling(slot: usize) -> usize {
    slot - slot % PATHS.len() + (slot + 1) % PATHS.len()
}

fn slot_name(slot: usize) -> String {
    format!("{}:{}", user(slot), path(slot))
}

// ---------------------------------------------------------------------------------------------
// Operations

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// 1 MiB appends, back to back.
    Appends,
    /// 1 MiB appends with 25 ms between them: the early drain sends parts before CLOSE.
    Paced,
    /// The last chunk first: never appended, so the drain hashes it and no early upload.
    Reverse,
    /// Paced appends, then the first 4 KiB written again with other bytes: an early part 1
    /// no longer holds the sealed bytes and must be sent again.
    RewriteHead,
}

#[derive(Debug, Clone)]
enum Op {
    Put {
        slot: usize,
        size: u64,
        order: Order,
    },
    Abandon {
        slot: usize,
        size: u64,
    },
    Resume {
        slot: usize,
        extra: u64,
    },
    Remove {
        slot: usize,
    },
    /// posix-rename of the slot's file onto the other path of the same user.
    Rename {
        slot: usize,
    },
    /// Each flip: (position in the journal after its header, in 1/10000, xor mask); a mask
    /// of 0 cuts the journal there instead (everything after it lost).
    Crash {
        flips: Vec<(u16, u8)>,
    },
    Fault {
        op: S3Op,
        fault: Fault,
        count: u8,
    },
    Slow {
        bytes_per_sec: Option<u64>,
    },
    Tick {
        ms: u64,
    },
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => Just(0u64),
        10 => 1u64..=64 * 1024,
        3 => (PART - 2)..=(PART + 2),
        4 => (PART + 1)..=(PART + 256 * 1024),
        1 => (2 * PART + 1)..=(2 * PART + 64 * 1024),
    ]
}

fn extra() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => Just(0u64),
        4 => 1u64..=64 * 1024,
        2 => (PART - 64 * 1024)..=(PART + 64 * 1024),
    ]
}

fn order() -> impl Strategy<Value = Order> {
    prop_oneof![
        4 => Just(Order::Appends),
        2 => Just(Order::Paced),
        1 => Just(Order::Reverse),
        1 => Just(Order::RewriteHead),
    ]
}

fn fault_op() -> impl Strategy<Value = Op> {
    let any_op = prop_oneof![
        Just(S3Op::PutObject),
        Just(S3Op::CreateMultipartUpload),
        Just(S3Op::UploadPart),
        Just(S3Op::CompleteMultipartUpload),
        Just(S3Op::AbortMultipartUpload),
        Just(S3Op::HeadObject),
        Just(S3Op::ListMultipartUploads),
    ];
    let transient = prop_oneof![
        Just(Fault::ServerError),
        Just(Fault::ConnectionReset),
        Just(Fault::ResponseLost),
    ];
    let upload_ops = prop_oneof![Just(S3Op::UploadPart), Just(S3Op::CompleteMultipartUpload)];
    prop_oneof![
        4 => (any_op, transient, 1u8..=3),
        1 => (upload_ops, Just(Fault::NoSuchUpload), 1u8..=2),
    ]
    .prop_map(|(op, fault, count)| Op::Fault { op, fault, count })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..SLOTS, size(), order()).prop_map(|(slot, size, order)| Op::Put { slot, size, order }),
        2 => (0..SLOTS, size()).prop_map(|(slot, size)| Op::Abandon { slot, size }),
        2 => (0..SLOTS, extra()).prop_map(|(slot, extra)| Op::Resume { slot, extra }),
        2 => (0..SLOTS).prop_map(|slot| Op::Remove { slot }),
        2 => (0..SLOTS).prop_map(|slot| Op::Rename { slot }),
        2 => Just(Op::Crash { flips: Vec::new() }),
        2 => prop::collection::vec((0u16..10_000, prop_oneof![5 => 1u8..=255, 1 => Just(0u8)]), 1..=2)
            .prop_map(|flips| Op::Crash { flips }),
        3 => fault_op(),
        2 => prop_oneof![Just(None), (8u64..=40).prop_map(|m| Some(m << 20))]
            .prop_map(|bytes_per_sec| Op::Slow { bytes_per_sec }),
        4 => (0u64..=300).prop_map(|ms| Op::Tick { ms }),
    ]
}

// ---------------------------------------------------------------------------------------------
// The model

type Digest32 = [u8; 32];

fn sha(bytes: &[u8]) -> Digest32 {
    Sha256::digest(bytes).into()
}

fn short(d: &Digest32) -> String {
    hex::encode(&d[..6])
}

/// One acknowledged version of a path.
#[derive(Debug, Clone)]
struct Version {
    /// Index of the operation that acknowledged it.
    op: usize,
    len: u64,
    sha: Digest32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// Never acknowledged: no object.
    Nothing,
    /// Exactly this version (index into `versions`).
    Exact(usize),
    /// Removed since the last acknowledgement: no object, or any acknowledged version.
    AnyOf,
}

/// What `open_write` finds at the path, as far as the model knows.
#[derive(Debug, Clone)]
enum Node {
    None,
    Acked,
    Partial(Vec<u8>),
    /// After a Remove of a partial file (an older version may be visible again) or a
    /// damaged journal.
    Unknown,
}

#[derive(Debug, Clone)]
struct Slot {
    versions: Vec<Version>,
    expect: Expect,
    node: Node,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            versions: Vec::new(),
            expect: Expect::Nothing,
            node: Node::None,
        }
    }

    fn acknowledge(&mut self, op: usize, bytes: &[u8]) {
        self.versions.push(Version {
            op,
            len: bytes.len() as u64,
            sha: sha(bytes),
        });
        self.expect = Expect::Exact(self.versions.len() - 1);
        self.node = Node::Acked;
    }

    fn describe(&self, d: &Digest32, len: u64) -> String {
        match self.versions.iter().rev().find(|v| v.sha == *d) {
            Some(v) => format!(
                "the version of op #{} ({} bytes, sha {})",
                v.op,
                v.len,
                short(&v.sha)
            ),
            None => format!(
                "{len} bytes (sha {}) that are no acknowledged version",
                short(d)
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The system under test

fn drain_config() -> DrainConfig {
    DrainConfig {
        prefix: PREFIX.into(),
        concurrency: 2,
        backoff_base: Duration::from_millis(5),
        backoff_max: Duration::from_millis(40),
        ..common::spool::drain_config()
    }
}

/// As the gateway sets it with early drain on.
fn open_spool(dir: &Path) -> Result<Arc<Spool>, String> {
    Spool::open(spool_options(dir.to_owned())).map_err(|e| format!("Spool::open failed: {e}"))
}

/// Deterministic bytes, different for every salt.
fn content(len: u64, salt: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    rand::rngs::StdRng::seed_from_u64(salt).fill_bytes(&mut v);
    v
}

struct Rig {
    tmp: tempfile::TempDir,
    server: S3Server,
    store: Arc<FaultStore<AwsStore>>,
    spool: Option<Arc<Spool>>,
    drain: Option<tokio::task::JoinHandle<()>>,
}

impl Rig {
    async fn new() -> Result<Rig, String> {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let server = S3Server::start(S3ServerConfig::loopback(tmp.path().join("s3")))
            .await
            .map_err(|e| format!("S3 server: {e}"))?;
        let store = Arc::new(FaultStore::new(
            AwsStore::new(&test_s3_config(&server)).map_err(|e| format!("store: {e}"))?,
        ));
        let spool = open_spool(&tmp.path().join("spool"))?;
        let mut rig = Rig {
            tmp,
            server,
            store,
            spool: Some(spool),
            drain: None,
        };
        rig.start_drain();
        Ok(rig)
    }

    fn spool_dir(&self) -> PathBuf {
        self.tmp.path().join("spool")
    }

    fn spool(&self) -> &Arc<Spool> {
        self.spool.as_ref().expect("spool open")
    }

    fn start_drain(&mut self) {
        let drain = Drain::new(self.store.clone(), self.spool().clone(), drain_config());
        self.drain = Some(tokio::spawn(drain.run()));
    }

    /// Stops the drain and lets go of the spool (every task that held it has ended).
    async fn stop(&mut self) -> Result<(), String> {
        if let Some(task) = self.drain.take() {
            task.abort();
            let _ = task.await;
        }
        if let Some(spool) = self.spool.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Arc::strong_count(&spool) > 1 {
                if Instant::now() > deadline {
                    return Err("drain tasks still hold the spool 20 s after the abort".into());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(())
    }

    /// A crash: stop, damage the journal as asked, reopen from disk, start a new drain.
    async fn crash(&mut self, flips: &[(u16, u8)], trace: &mut Vec<String>) -> Result<(), String> {
        let pending = self.pending();
        if !pending.is_empty() {
            trace.push(format!(
                "crash with {} file(s) pending: {pending:?}",
                pending.len()
            ));
        }
        self.stop().await?;
        if !flips.is_empty() {
            let journal = self.spool_dir().join("journal");
            let mut bytes = std::fs::read(&journal).map_err(|e| format!("read journal: {e}"))?;
            for &(at, xor) in flips {
                if bytes.len() <= JOURNAL_HEADER_BYTES {
                    trace.push("journal holds only its header: nothing flipped".into());
                    continue;
                }
                let body = bytes.len() - JOURNAL_HEADER_BYTES;
                let offset = JOURNAL_HEADER_BYTES + body * usize::from(at) / 10_000;
                if xor == 0 {
                    trace.push(format!("cut the journal at {offset} of {}", bytes.len()));
                    bytes.truncate(offset);
                    continue;
                }
                bytes[offset] ^= xor;
                trace.push(format!(
                    "flipped journal byte {offset} of {} with {xor:#04x}",
                    bytes.len()
                ));
            }
            std::fs::write(&journal, &bytes).map_err(|e| format!("write journal: {e}"))?;
        }
        // A daemon's restart takes a moment; 0 (the default) lets requests of the dead run
        // still being processed by the server meet the new run's.
        let delay = restart_delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let spool = open_spool(&self.spool_dir())?;
        let quarantined = spool.quarantined_count();
        if quarantined > 0 {
            trace.push(format!(
                "after reopening: {quarantined} file(s) in quarantine"
            ));
        }
        self.spool = Some(spool);
        self.start_drain();
        Ok(())
    }

    async fn open(&self, slot: usize, truncate: bool) -> Result<WriteHandle, String> {
        self.spool()
            .open_write(
                user(slot),
                &vpath(slot),
                OpenMode {
                    truncate,
                    exclusive: false,
                },
            )
            .await
            .map_err(|e| {
                format!(
                    "open_write {} (truncate {truncate}): {e:?}",
                    slot_name(slot)
                )
            })
    }

    /// Writes `bytes` at `base` as `order` says; returns what the file then holds from `base`.
    async fn write(
        &self,
        h: &WriteHandle,
        base: u64,
        mut bytes: Vec<u8>,
        order: Order,
        salt: u64,
    ) -> Result<Vec<u8>, String> {
        let mut chunks: Vec<(usize, usize)> = (0..bytes.len())
            .step_by(CHUNK)
            .map(|at| (at, (at + CHUNK).min(bytes.len())))
            .collect();
        if order == Order::Reverse {
            chunks.reverse();
        }
        for (from, to) in chunks {
            h.write_at(base + from as u64, Bytes::copy_from_slice(&bytes[from..to]))
                .await
                .map_err(|e| format!("write_at {}: {e:?}", base + from as u64))?;
            match order {
                Order::Paced | Order::RewriteHead => {
                    tokio::time::sleep(Duration::from_millis(25)).await
                }
                Order::Appends | Order::Reverse => tokio::task::yield_now().await,
            }
        }
        if order == Order::RewriteHead && !bytes.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let head = content(bytes.len().min(4096) as u64, !salt);
            h.write_at(base, Bytes::copy_from_slice(&head))
                .await
                .map_err(|e| format!("write_at {base} (rewrite): {e:?}"))?;
            bytes[..head.len()].copy_from_slice(&head);
        }
        Ok(bytes)
    }

    fn fault(&self, op: S3Op, fault: Fault, count: u8) {
        let mut left = count;
        self.store.add_rule(move |c| {
            (c.op == op && left > 0).then(|| {
                left -= 1;
                fault
            })
        });
    }

    fn pending(&self) -> Vec<String> {
        self.spool()
            .files_in(&[FileState::Sealed, FileState::Uploading])
            .iter()
            .map(|f| format!("{}:{} #{} {:?}", f.user, f.path.display(), f.id, f.state))
            .collect()
    }

    /// (id, user, path, state, size, hidden) of every file, for reports and comparisons.
    fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .spool()
            .files()
            .into_iter()
            .map(|f| {
                format!(
                    "#{} {}:{} {:?} {} bytes{}{}{}",
                    f.id,
                    f.user,
                    f.path.display(),
                    f.state,
                    f.size,
                    if f.hidden { " hidden" } else { "" },
                    f.upload
                        .as_ref()
                        .map(|u| format!(
                            " upload {} parts{}",
                            u.parts.len(),
                            if u.early { " early" } else { "" }
                        ))
                        .unwrap_or_default(),
                    f.last_error
                        .as_ref()
                        .map(|e| format!(" error: {e}"))
                        .unwrap_or_default(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Every object in the bucket: key → (len, sha).
    async fn objects(&self) -> Result<BTreeMap<String, (u64, Digest32)>, String> {
        let client = self.store.inner().client();
        let bucket = self.store.inner().bucket();
        let listed = client
            .list_objects_v2()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| format!("list objects: {e:?}"))?;
        let mut out = BTreeMap::new();
        for o in listed.contents() {
            let Some(key) = o.key() else { continue };
            let got = client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| format!("get {key}: {e:?}"))?;
            let body = got
                .body
                .collect()
                .await
                .map_err(|e| format!("body of {key}: {e:?}"))?
                .into_bytes();
            out.insert(key.to_owned(), (body.len() as u64, sha(&body)));
        }
        Ok(out)
    }

    /// The quarantine: name → (len, sha).
    fn quarantine(&self) -> BTreeMap<String, (u64, Digest32)> {
        let (listed, _) = self.spool().quarantined(usize::MAX);
        listed
            .into_iter()
            .filter_map(|q| {
                let bytes =
                    std::fs::read(self.spool_dir().join("quarantine").join(&q.name)).ok()?;
                Some((q.name, (bytes.len() as u64, sha(&bytes))))
            })
            .collect()
    }

    /// Multipart uploads open in the bucket that no file of the spool knows.
    async fn unknown_open_uploads(&self) -> Result<Vec<String>, String> {
        let open = self
            .store
            .inner()
            .list_multipart_uploads("")
            .await
            .map_err(|e| format!("list uploads: {e}"))?;
        let known: BTreeSet<String> = self
            .spool()
            .files()
            .into_iter()
            .filter_map(|f| f.upload.map(|u| u.upload_id))
            .collect();
        Ok(open
            .into_iter()
            .filter(|u| !known.contains(&u.upload_id))
            .map(|u| format!("{} ({})", u.key, u.upload_id))
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// One case

struct Case {
    rig: Rig,
    model: Vec<Slot>,
    /// The journal was damaged at some point: the looser oracle applies.
    damaged: bool,
    trace: Vec<String>,
}

impl Case {
    async fn apply(&mut self, index: usize, op: &Op) -> Result<(), String> {
        let salt = index as u64 + 1;
        match op {
            Op::Put { slot, size, order } => self.put(index, *slot, *size, *order).await?,
            Op::Abandon { slot, size } => self.abandon(*slot, *size, salt).await?,
            Op::Resume { slot, extra } => self.resume(index, *slot, *extra).await?,
            Op::Remove { slot } => self.remove(index, *slot).await?,
            Op::Rename { slot } => self.rename(index, *slot).await?,
            Op::Crash { flips } => self.crash(flips).await?,
            Op::Fault { op, fault, count } => self.rig.fault(*op, *fault, *count),
            Op::Slow { bytes_per_sec } => self
                .rig
                .server
                .stats()
                .set_upload_bytes_per_sec(*bytes_per_sec),
            Op::Tick { ms } => tokio::time::sleep(Duration::from_millis(*ms)).await,
        }
        Ok(())
    }

    /// `Op::Put`: a new version written and acknowledged.
    async fn put(
        &mut self,
        index: usize,
        slot: usize,
        size: u64,
        order: Order,
    ) -> Result<(), String> {
        let salt = index as u64 + 1;
        let h = self.rig.open(slot, true).await?;
        let bytes = self
            .rig
            .write(&h, 0, content(size, salt), order, salt)
            .await?;
        h.close()
            .await
            .map_err(|e| format!("close of {}: {e:?}", slot_name(slot)))?;
        self.model[slot].acknowledge(index, &bytes);
        Ok(())
    }

    /// `Op::Abandon`: a new version written without CLOSE.
    async fn abandon(&mut self, slot: usize, size: u64, salt: u64) -> Result<(), String> {
        let h = self.rig.open(slot, true).await?;
        let bytes = self
            .rig
            .write(&h, 0, content(size, salt), Order::Paced, salt)
            .await?;
        drop(h);
        self.model[slot].node = Node::Partial(bytes);
        Ok(())
    }

    /// `Op::Resume`: the partial file reopened, appended to and acknowledged.
    async fn resume(&mut self, index: usize, slot: usize, extra: u64) -> Result<(), String> {
        let salt = index as u64 + 1;
        let Node::Partial(partial) = self.model[slot].node.clone() else {
            self.trace
                .push(format!("op #{index}: nothing partial to resume"));
            return Ok(());
        };
        let h = self.rig.open(slot, false).await?;
        if h.size() != partial.len() as u64 {
            return Err(format!(
                "op #{index}: resuming {} opened {} bytes, the partial file had {}",
                slot_name(slot),
                h.size(),
                partial.len()
            ));
        }
        let more = self
            .rig
            .write(
                &h,
                partial.len() as u64,
                content(extra, salt),
                Order::Appends,
                salt,
            )
            .await?;
        h.close()
            .await
            .map_err(|e| format!("close of resumed {}: {e:?}", slot_name(slot)))?;
        let mut bytes = partial;
        bytes.extend_from_slice(&more);
        self.model[slot].acknowledge(index, &bytes);
        Ok(())
    }

    /// `Op::Remove`: the file removed from the spool; the bucket keeps what it has.
    async fn remove(&mut self, index: usize, slot: usize) -> Result<(), String> {
        let removed = self.rig.spool().remove(user(slot), &vpath(slot)).await;
        let m = &mut self.model[slot];
        match (&m.node, &removed) {
            (Node::Unknown, _) | (Node::None, Err(_)) => {}
            (Node::Acked | Node::Partial(_), Ok(())) => {}
            (node, result) => {
                return Err(format!(
                    "op #{index}: remove of {} with the model's node {node:?} gave {result:?}",
                    slot_name(slot)
                ));
            }
        }
        if let Err(e) = &removed
            && e.kind != FsErrorKind::NotFound
        {
            return Err(format!("op #{index}: remove of {}: {e:?}", slot_name(slot)));
        }
        m.node = match m.node {
            Node::Acked | Node::None => Node::None,
            Node::Partial(_) | Node::Unknown => Node::Unknown,
        };
        if !m.versions.is_empty() {
            m.expect = Expect::AnyOf;
        }
        Ok(())
    }

    /// `Op::Rename`: an acknowledged file renamed onto the user's other path.
    async fn rename(&mut self, index: usize, slot: usize) -> Result<(), String> {
        let to = sibling(slot);
        let (Node::Acked, Expect::Exact(v)) = (&self.model[slot].node, &self.model[slot].expect)
        else {
            self.trace
                .push(format!("op #{index}: nothing acknowledged to rename"));
            return Ok(());
        };
        if !matches!(self.model[to].node, Node::None | Node::Acked) {
            self.trace
                .push(format!("op #{index}: the target is partial or unknown"));
            return Ok(());
        }
        let version = self.model[slot].versions[*v].clone();
        let renamed = self
            .rig
            .spool()
            .rename(user(slot), &vpath(slot), &vpath(to), true)
            .await;
        match renamed {
            Ok(()) => {
                let from = &mut self.model[slot];
                from.expect = Expect::AnyOf;
                from.node = Node::None;
                let target = &mut self.model[to];
                target.versions.push(version);
                target.expect = Expect::Exact(target.versions.len() - 1);
                target.node = Node::Acked;
            }
            // Already delivered: it stays where it is.
            Err(e) if e.kind == FsErrorKind::PermissionDenied => {
                self.trace
                    .push(format!("op #{index}: rename refused: {}", e.message));
            }
            Err(e) => {
                return Err(format!(
                    "op #{index}: rename of {} to {}: {e:?}",
                    slot_name(slot),
                    slot_name(to)
                ));
            }
        }
        Ok(())
    }

    /// `Op::Crash`: the drain aborted and the spool reopened, its journal maybe damaged.
    async fn crash(&mut self, flips: &[(u16, u8)]) -> Result<(), String> {
        self.rig.crash(flips, &mut self.trace).await?;
        if !flips.is_empty() {
            self.damaged = true;
            for m in &mut self.model {
                m.node = Node::Unknown;
            }
        }
        Ok(())
    }

    /// Waits until nothing is left to deliver.
    async fn settle(&self) -> Result<(), String> {
        let deadline = Instant::now() + SETTLE_MAX;
        loop {
            let pending = self.rig.pending();
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not delivered {} s after the last operation (faults cleared): {pending:?}",
                    SETTLE_MAX.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn check(&mut self) -> Result<(), String> {
        // Faults armed by the last operations meet the drain before they are cleared.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.rig.store.clear();
        self.rig.server.stats().set_upload_bytes_per_sec(None);
        self.settle().await?;
        let mut problems = Vec::new();
        let objects = self.rig.objects().await?;
        let quarantine = self.rig.quarantine();
        self.check_objects(&objects, &quarantine, &mut problems);
        let files_before = self.rig.files();
        self.check_nothing_failed(&files_before, &quarantine, &mut problems);
        self.check_a_restart_changes_nothing(&files_before, &mut problems)
            .await?;
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{}\n  spool files: {files_before:#?}\n  bucket: {:?}\n  quarantine: {:?}",
                problems.join("\n  "),
                objects
                    .iter()
                    .map(|(k, (len, d))| format!("{k}: {len} bytes sha {}", short(d)))
                    .collect::<Vec<_>>(),
                quarantine
                    .iter()
                    .map(|(k, (len, d))| format!("{k}: {len} bytes sha {}", short(d)))
                    .collect::<Vec<_>>(),
            ))
        }
    }

    /// The oracle, per path: the bucket holds what the model allows, and nothing else.
    fn check_objects(
        &self,
        objects: &BTreeMap<String, (u64, Digest32)>,
        quarantine: &BTreeMap<String, (u64, Digest32)>,
        problems: &mut Vec<String>,
    ) {
        for (slot, m) in self.model.iter().enumerate() {
            let got = objects.get(&key(slot));
            let name = slot_name(slot);
            let holds = |got: Option<&(u64, Digest32)>| match got {
                None => "nothing".to_owned(),
                Some((len, d)) => m.describe(d, *len),
            };
            match &m.expect {
                Expect::Nothing => {
                    if got.is_some() {
                        problems.push(format!(
                            "{name}: never acknowledged, but the bucket holds {}",
                            holds(got)
                        ));
                    }
                }
                Expect::Exact(i) => {
                    let want = &m.versions[*i];
                    let delivered = got.is_some_and(|(_, d)| *d == want.sha);
                    let quarantined = quarantine.values().any(|(_, d)| *d == want.sha);
                    if !(delivered || self.damaged && quarantined) {
                        problems.push(format!(
                            "{name}: expected the version of op #{} ({} bytes, sha {}); the bucket holds {}{}",
                            want.op,
                            want.len,
                            short(&want.sha),
                            holds(got),
                            if quarantined { " (the expected version is in quarantine)" } else { "" }
                        ));
                    }
                }
                Expect::AnyOf => {
                    if let Some((len, d)) = got
                        && !m.versions.iter().any(|v| v.sha == *d)
                    {
                        problems.push(format!(
                            "{name}: removed; the bucket may hold nothing or an acknowledged version, but holds {}",
                            m.describe(d, *len)
                        ));
                    }
                }
            }
        }
        let ours: BTreeSet<String> = (0..SLOTS).map(key).collect();
        for k in objects.keys().filter(|k| !ours.contains(*k)) {
            problems.push(format!("an object under a key no operation wrote: {k}"));
        }
    }

    /// Without journal damage, no file failed and nothing was quarantined.
    fn check_nothing_failed(
        &self,
        files_before: &[String],
        quarantine: &BTreeMap<String, (u64, Digest32)>,
        problems: &mut Vec<String>,
    ) {
        if !self.damaged {
            let failed: Vec<&String> = files_before
                .iter()
                .filter(|f| f.contains(" Failed "))
                .collect();
            if !failed.is_empty() {
                problems.push(format!(
                    "failed files without any permanent fault: {failed:?}"
                ));
            }
            if !quarantine.is_empty() {
                problems.push(format!(
                    "quarantined without journal damage: {:?}",
                    quarantine.keys()
                ));
            }
        }
    }

    /// A restart now changes nothing: nothing comes back to be delivered again, and no
    /// upload the spool does not know stays open.
    async fn check_a_restart_changes_nothing(
        &mut self,
        files_before: &[String],
        problems: &mut Vec<String>,
    ) -> Result<(), String> {
        let mut trace = Vec::new();
        self.rig.crash(&[], &mut trace).await?;
        let files_after = self.rig.files();
        let pending = self.rig.pending();
        if !pending.is_empty() {
            problems.push(format!(
                "pending again after a restart at the end: {pending:?}"
            ));
        }
        if !self.damaged {
            // After the restart, so that its reconciliation of unrecorded uploads has run
            // too; aborts run on the drain's own schedule: give them a moment.
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                let unknown = self.rig.unknown_open_uploads().await?;
                if unknown.is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    problems.push(format!(
                        "multipart uploads left open that the spool does not know, even after a restart: {unknown:?}"
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if !self.damaged && files_after != files_before {
            problems.push(format!(
                "a restart at the end changed the files:\n    before {files_before:#?}\n    after {files_after:#?}"
            ));
        }
        Ok(())
    }
}

async fn run_case(ops: &[Op]) -> Result<(), String> {
    let mut case = Case {
        rig: Rig::new().await?,
        model: (0..SLOTS).map(|_| Slot::new()).collect(),
        damaged: false,
        trace: Vec::new(),
    };
    let mut outcome = Ok(());
    for (index, op) in ops.iter().enumerate() {
        if let Err(e) = case.apply(index, op).await {
            outcome = Err(format!("op #{index} {op:?}: {e}"));
            break;
        }
    }
    if outcome.is_ok() {
        outcome = case.check().await;
    }
    let stopped = case.rig.stop().await;
    if std::env::var_os("MODEL_STATS").is_some() {
        let calls: Vec<String> = ALL_S3_OPS
            .iter()
            .map(|op| {
                format!(
                    "{}={}/{}",
                    op.name(),
                    case.rig.store.calls(*op),
                    case.rig.store.faults_injected(*op)
                )
            })
            .collect();
        eprintln!(
            "case: {} ops, damaged {}, S3 calls/faults {}, trace {:?}",
            ops.len(),
            case.damaged,
            calls.join(" "),
            case.trace
        );
    }
    let Case { rig, trace, .. } = case;
    rig.server.shutdown().await;
    drop(rig.tmp);
    outcome.and(stopped).map_err(|e| {
        if trace.is_empty() {
            e
        } else {
            format!("{e}\n  trace: {trace:#?}")
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Logs: captured per case, the tail goes into the failure message.

static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("SFTPGW_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("sftpgw=info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .try_init();
    });
}

fn take_log_tail(lines: usize) -> String {
    let log = std::mem::take(&mut *LOG.lock().unwrap_or_else(|p| p.into_inner()));
    let text = String::from_utf8_lossy(&log);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn run(ops: &[Op]) -> Result<(), String> {
    // One case at a time in this process, whichever test runs it: the log capture is one
    // buffer, and cases that share 2 cores would only race each other's timing.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    take_log_tail(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let outcome = rt.block_on(async {
        match tokio::time::timeout(CASE_MAX, run_case(ops)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!(
                "the case did not end within {} s",
                CASE_MAX.as_secs()
            )),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    let lines = std::env::var("MODEL_LOG_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    outcome.map_err(|e| {
        format!(
            "{e}\n--- last {lines} log lines ---\n{}",
            take_log_tail(lines)
        )
    })
}

fn config() -> ProptestConfig {
    fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }
    ProptestConfig {
        cases: env("PROPTEST_CASES", 16),
        max_shrink_iters: env("PROPTEST_MAX_SHRINK_ITERS", 64),
        // Milliseconds; a failing case costs a few seconds, and CI should not shrink for long.
        max_shrink_time: env("PROPTEST_MAX_SHRINK_TIME", 30_000),
        // tests/model.proptest-regressions
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_bucket_ends_with_the_last_acknowledged_version_of_every_path(
        ops in prop::collection::vec(op(), 1..=16)
    ) {
        init_logging();
        let outcome = run(&ops);
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}

// ---------------------------------------------------------------------------------------------
// The smallest sequences the model found, replayed as they are.

/// Runs `ops` `times` times (a race may need a few tries); fails with the first failure.
fn replay(ops: &[Op], times: usize) {
    init_logging();
    for attempt in 1..=times {
        if let Err(e) = run(ops) {
            panic!("attempt {attempt} of {times} failed: {ops:?}\n{e}");
        }
    }
}

/// A CreateMultipartUpload whose response is lost (the store made the upload) is retried;
/// the retry's upload is recorded and the intent resolved, so the first upload is never
/// aborted, not even by the reconciliation at the next start.
#[test]
fn a_create_whose_response_was_lost_leaves_no_upload_open() {
    replay(
        &[
            Op::Fault {
                op: S3Op::CreateMultipartUpload,
                fault: Fault::ResponseLost,
                count: 1,
            },
            Op::Put {
                slot: 0,
                size: PART,
                order: Order::Appends,
            },
        ],
        1,
    );
}

/// A CreateMultipartUpload of an early upload loses its response (the store made the
/// upload), the run dies before the retry is recorded, and right after the restart the file is
/// removed, taking its upload intent with it before the start's reconciliation read it: the
/// removal itself asks the drain to look for the key's strays.
#[test]
fn a_file_removed_before_its_lost_create_was_found_leaves_no_upload_open() {
    replay(
        &[
            Op::Put {
                slot: 1,
                size: 5_242_882,
                order: Order::RewriteHead,
            },
            Op::Fault {
                op: S3Op::CreateMultipartUpload,
                fault: Fault::ResponseLost,
                count: 1,
            },
            Op::Put {
                slot: 3,
                size: 26_132,
                order: Order::Appends,
            },
            Op::Rename { slot: 3 },
            Op::Fault {
                op: S3Op::ListMultipartUploads,
                fault: Fault::ServerError,
                count: 1,
            },
            Op::Slow {
                bytes_per_sec: None,
            },
            Op::Put {
                slot: 2,
                size: 5_419_518,
                order: Order::Appends,
            },
            Op::Rename { slot: 0 },
            Op::Crash { flips: vec![] },
            Op::Remove { slot: 2 },
        ],
        3,
    );
}

/// The first version's CompleteMultipartUpload is still being processed by the server when
/// the run dies (the second put, of another user, only makes the server slower); the next
/// run PUTs the newer version at once, and then the old Complete lands over it.
#[test]
fn an_old_complete_still_in_flight_at_a_crash_does_not_overwrite_a_newer_version() {
    replay(
        &[
            Op::Put {
                slot: 0,
                size: PART + 2,
                order: Order::Appends,
            },
            Op::Put {
                slot: 2,
                size: PART,
                order: Order::Appends,
            },
            Op::Put {
                slot: 0,
                size: 100,
                order: Order::Appends,
            },
            Op::Crash { flips: vec![] },
        ],
        8,
    );
}

/// A file renamed while pending, then its `Opened` record damaged: recovery seals it again
/// from its identity, which still names the path it had at CLOSE.
#[test]
fn a_renamed_file_sealed_again_from_its_identity_keeps_its_new_name() {
    replay(
        &[
            Op::Slow {
                bytes_per_sec: Some(8 << 20),
            },
            Op::Put {
                slot: 0,
                size: PART + 1,
                order: Order::Appends,
            },
            Op::Rename { slot: 0 },
            Op::Crash {
                flips: vec![(0, 0x67)],
            },
        ],
        1,
    );
}
