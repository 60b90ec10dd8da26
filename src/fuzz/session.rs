//! The SFTP session state machine under fuzzed scripts: sequences of requests from a small
//! grammar (OPEN, WRITE, READ, CLOSE, directory and path requests, extended requests, with
//! handles learnt from earlier replies or made up) mixed with packets of random bytes, run
//! against one real spool in a temporary directory.
//!
//! What must hold whatever the script: nothing panics; every reply decodes and answers the
//! request just sent (or the session ends, after garbage); the session ends once the client
//! closes its end, and then no file of it is left `Receiving` (every write handle was dropped
//! and its file made partial or sealed); a script of a well-behaved client (INIT once, first,
//! then requests only) ends cleanly (exit status 0, as from OpenSSH's sftp-server), and any
//! other end reports failure.
//!
//! It drives the session only through `sftp::session::run` and the spool's public API, as
//! the server does.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use russh_sftp::protocol::{
    Close, Extended, FileAttributes, Init, MkDir, Open, OpenDir, OpenFlags, Packet, Read, ReadDir,
    RealPath, Remove, Rename, RmDir, SetStat, Stat, Write,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use crate::sftp::{IngestBudget, SessionEnd, SessionPolicy};
use crate::spool::{FileState, Spool, SpoolOptions};

/// Paths a script uses: ordinary ones, a directory, escapes, a hostile name, the empty path,
/// the read-only virtual directory's.
const PATHS: [&str; 12] = [
    "/a.bin",
    "/b.bin",
    "/d",
    "/d/x.bin",
    "/../../etc/passwd",
    "",
    "/line\nbreak",
    "/d/..",
    "relative.bin",
    "/.sftpgw/queue.txt",
    "/.sftpgw/receipts/a.bin.json",
    "/.sftpgw/receipts",
];

/// Extended request names: the two we implement, one we do not.
const EXTENDED: [&str; 3] = ["posix-rename@openssh.com", "fsync@openssh.com", "nope@x"];

/// How long one step may take before the session counts as hung.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
enum Step {
    Init,
    Open {
        path: usize,
        flags: u32,
    },
    /// `handle` indexes the handles learnt so far; beyond them it is a made-up handle.
    Write {
        handle: usize,
        offset: u64,
        len: usize,
    },
    Read {
        handle: usize,
        offset: u64,
        len: u32,
    },
    Close {
        handle: usize,
    },
    OpenDir {
        path: usize,
    },
    ReadDir {
        handle: usize,
    },
    Remove {
        path: usize,
    },
    Rename {
        from: usize,
        to: usize,
    },
    MkDir {
        path: usize,
    },
    RmDir {
        path: usize,
    },
    Stat {
        path: usize,
    },
    RealPath {
        path: usize,
    },
    Truncate {
        path: usize,
        size: u64,
    },
    Extended {
        name: usize,
        data: Vec<u8>,
    },
    /// A packet of random bytes (its length prefix right).
    Garbage(Vec<u8>),
}

/// Open flags: mostly what clients send (so that handles come back and the deep paths run),
/// sometimes any bits.
fn open_flags() -> impl Strategy<Value = u32> {
    let (r, w, a, c, t, x) = (
        OpenFlags::READ,
        OpenFlags::WRITE,
        OpenFlags::APPEND,
        OpenFlags::CREATE,
        OpenFlags::TRUNCATE,
        OpenFlags::EXCLUDE,
    );
    prop_oneof![
        4 => prop::sample::select(vec![r, w | c | t, w | c | a, w | c | x, r | w | c, w])
            .prop_map(|f| f.bits()),
        1 => any::<u32>(),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    // The first four paths are ordinary ones: chosen most of the time.
    let path = prop_oneof![3 => 0usize..4, 1 => 0..PATHS.len()];
    let handle = 0usize..6;
    prop_oneof![
        1 => Just(Step::Init),
        6 => (path.clone(), open_flags()).prop_map(|(path, flags)| Step::Open { path, flags }),
        4 => (handle.clone(), 0u64..100_000, 0usize..40_000)
            .prop_map(|(handle, offset, len)| Step::Write { handle, offset, len }),
        2 => (handle.clone(), 0u64..100_000, any::<u32>())
            .prop_map(|(handle, offset, len)| Step::Read { handle, offset, len }),
        3 => handle.clone().prop_map(|handle| Step::Close { handle }),
        1 => path.clone().prop_map(|path| Step::OpenDir { path }),
        1 => handle.prop_map(|handle| Step::ReadDir { handle }),
        1 => path.clone().prop_map(|path| Step::Remove { path }),
        1 => (path.clone(), path.clone()).prop_map(|(from, to)| Step::Rename { from, to }),
        1 => path.clone().prop_map(|path| Step::MkDir { path }),
        1 => path.clone().prop_map(|path| Step::RmDir { path }),
        1 => path.clone().prop_map(|path| Step::Stat { path }),
        1 => path.clone().prop_map(|path| Step::RealPath { path }),
        1 => (path, 0u64..100_000).prop_map(|(path, size)| Step::Truncate { path, size }),
        1 => (0..EXTENDED.len(), proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(name, data)| Step::Extended { name, data }),
        1 => proptest::collection::vec(any::<u8>(), 1..64).prop_map(Step::Garbage),
    ]
}

/// A script: INIT first most of the time (a session without it must refuse everything).
fn script() -> impl Strategy<Value = (bool, Vec<Step>)> {
    (
        prop::bool::weighted(0.9),
        proptest::collection::vec(step(), 0..24),
    )
}

/// The client side of one script.
struct Driver {
    io: DuplexStream,
    next_id: u32,
    handles: Vec<String>,
}

impl Driver {
    fn handle(&self, index: usize) -> String {
        self.handles
            .get(index)
            .cloned()
            .unwrap_or_else(|| format!("made-up-{index}"))
    }

    /// The packet of a step, or `None` for garbage (sent as it is).
    fn packet(&mut self, step: &Step) -> Option<Packet> {
        self.next_id += 1;
        let id = self.next_id;
        let path = |i: &usize| PATHS[*i].to_owned();
        Some(match step {
            Step::Init => Packet::Init(Init::new()),
            Step::Open { path: p, flags } => Packet::Open(Open {
                id,
                filename: path(p),
                pflags: OpenFlags::from_bits_truncate(*flags),
                attrs: FileAttributes::empty(),
            }),
            Step::Write {
                handle,
                offset,
                len,
            } => Packet::Write(Write {
                id,
                handle: self.handle(*handle),
                offset: *offset,
                data: vec![0x5a; *len],
            }),
            Step::Read {
                handle,
                offset,
                len,
            } => Packet::Read(Read {
                id,
                handle: self.handle(*handle),
                offset: *offset,
                len: *len,
            }),
            Step::Close { handle } => Packet::Close(Close {
                id,
                handle: self.handle(*handle),
            }),
            Step::OpenDir { path: p } => Packet::OpenDir(OpenDir { id, path: path(p) }),
            Step::ReadDir { handle } => Packet::ReadDir(ReadDir {
                id,
                handle: self.handle(*handle),
            }),
            Step::Remove { path: p } => Packet::Remove(Remove {
                id,
                filename: path(p),
            }),
            Step::Rename { from, to } => Packet::Rename(Rename {
                id,
                oldpath: path(from),
                newpath: path(to),
            }),
            Step::MkDir { path: p } => Packet::MkDir(MkDir {
                id,
                path: path(p),
                attrs: FileAttributes::empty(),
            }),
            Step::RmDir { path: p } => Packet::RmDir(RmDir { id, path: path(p) }),
            Step::Stat { path: p } => Packet::Stat(Stat { id, path: path(p) }),
            Step::RealPath { path: p } => Packet::RealPath(RealPath { id, path: path(p) }),
            Step::Truncate { path: p, size } => {
                let mut attrs = FileAttributes::empty();
                attrs.size = Some(*size);
                Packet::SetStat(SetStat {
                    id,
                    path: path(p),
                    attrs,
                })
            }
            Step::Extended { name, data } => Packet::Extended(Extended {
                id,
                request: EXTENDED[*name].to_owned(),
                data: data.clone(),
            }),
            Step::Garbage(_) => return None,
        })
    }

    /// The next reply, `Ok(None)` once the server closed the stream.
    async fn recv(&mut self) -> Result<Option<Packet>, String> {
        let mut len = [0u8; 4];
        if self.io.read_exact(&mut len).await.is_err() {
            return Ok(None);
        }
        let mut body = vec![0; u32::from_be_bytes(len) as usize];
        self.io
            .read_exact(&mut body)
            .await
            .map_err(|e| format!("a reply cut short: {e}"))?;
        Packet::try_from(&mut Bytes::from(body))
            .map(Some)
            .map_err(|e| format!("a reply that does not decode: {e}"))
    }

    /// Sends one step and waits for its reply. `Ok(false)` once the session is over.
    async fn run(&mut self, step: &Step) -> Result<bool, String> {
        let (bytes, id) = match self.packet(step) {
            Some(packet) => {
                let id = packet.get_request_id();
                let bytes = Bytes::try_from(packet).map_err(|e| format!("encode: {e}"))?;
                (bytes.to_vec(), Some(id))
            }
            None => {
                let Step::Garbage(body) = step else {
                    unreachable!("only garbage has no packet")
                };
                let mut bytes = u32::try_from(body.len())
                    .expect("short")
                    .to_be_bytes()
                    .to_vec();
                bytes.extend_from_slice(body);
                (bytes, None)
            }
        };
        if self.io.write_all(&bytes).await.is_err() {
            return Ok(false);
        }
        let Some(reply) = self.recv().await? else {
            return Ok(false);
        };
        match (&reply, id) {
            // The version answers INIT (it has no request id on the wire).
            (Packet::Version(_), _) if matches!(step, Step::Init) => {}
            (_, Some(id)) if reply_id(&reply) == Some(id) => {}
            // Garbage that decoded as some request gets that request's answer.
            (_, None) => {}
            _ => {
                return Err(format!(
                    "{step:?} got a reply to another request: {reply:?}"
                ));
            }
        }
        if let Packet::Handle(h) = reply {
            self.handles.push(h.handle);
        }
        Ok(true)
    }
}

/// The request id a reply answers (`None` for a packet that is no reply).
fn reply_id(reply: &Packet) -> Option<u32> {
    Some(match reply {
        Packet::Status(r) => r.id,
        Packet::Handle(r) => r.id,
        Packet::Data(r) => r.id,
        Packet::Name(r) => r.id,
        Packet::Attrs(r) => r.id,
        Packet::ExtendedReply(r) => r.id,
        _ => return None,
    })
}

async fn run_script(spool: &Arc<Spool>, init: bool, steps: &[Step]) -> Result<(), TestCaseError> {
    // Relative to before: the spool is shared by all cases, so that a file a failing case
    // left behind does not make every later (shrunk) case fail too.
    let receiving_before = spool.counts().files(FileState::Receiving);
    let (client, server) = tokio::io::duplex(1 << 20);
    let session = {
        let spool = Arc::clone(spool);
        tokio::spawn(async move {
            let ingest = IngestBudget::default();
            crate::sftp::session::run(
                server,
                spool,
                "fuzz",
                SessionPolicy {
                    virtual_dir: Some(crate::sftp::receipts::VirtualDir::new(
                        ".sftpgw",
                        Arc::default(),
                    )),
                    ..SessionPolicy::default()
                },
                &ingest,
                std::future::pending(),
                |_| async {},
            )
            .await
        })
    };
    let mut driver = Driver {
        io: client,
        next_id: 0,
        handles: Vec::new(),
    };
    let all = init
        .then_some(Step::Init)
        .into_iter()
        .chain(steps.iter().cloned());
    for step in all {
        match tokio::time::timeout(STEP_TIMEOUT, driver.run(&step)).await {
            Err(_) => return Err(TestCaseError::fail(format!("{step:?}: no reply, hung"))),
            Ok(Err(e)) => return Err(TestCaseError::fail(e)),
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => break,
        }
    }
    drop(driver);
    let end = tokio::time::timeout(STEP_TIMEOUT, session)
        .await
        .map_err(|_| TestCaseError::fail("the session did not end after the client left"))?
        .map_err(|e| TestCaseError::fail(format!("the session task failed: {e}")))?;
    // INIT once and first, then requests only: a well-behaved client, which ends cleanly.
    let well_behaved = init
        && !steps
            .iter()
            .any(|s| matches!(s, Step::Garbage(_) | Step::Init));
    if well_behaved {
        prop_assert!(
            matches!(end, SessionEnd::ClientClosed),
            "well-formed requests only, yet the session ended with {end:?}"
        );
    } else if !matches!(end, SessionEnd::ClientClosed) {
        prop_assert_eq!(end.exit_status(), 1, "{:?} ends with a failure status", end);
    }
    let receiving = spool.counts().files(FileState::Receiving);
    prop_assert!(
        receiving <= receiving_before,
        "a file is still receiving after its session ended ({receiving_before} -> {receiving})"
    );
    Ok(())
}

/// The SFTP session state machine: scripts of requests and garbage against a real spool.
/// Cases: a twentieth of `FUZZ_CASES` (each runs a session), at least 50.
#[test]
fn fuzz_sftp_session() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(SpoolOptions::unlimited(tmp.path().join("spool"))).expect("spool");
    let mut runner = TestRunner::new(Config {
        cases: (super::cases() / 20).max(50),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/fuzz-session.txt",
        ))),
        ..Config::default()
    });
    let result = runner.run(&script(), |(init, steps)| {
        rt.block_on(run_script(&spool, init, &steps))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
