//! The SFTP session loop driven with raw packets over an in-memory stream, against a real
//! spool in a temporary directory.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use russh_sftp::protocol::{
    Close, Extended, FileAttributes, Init, Open, OpenDir, OpenFlags, Packet, Read, ReadDir,
    ReadLink, RealPath, Rename, SetStat, Stat, StatusCode, Write,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

use super::IngestBudget;
use super::SFTP_SESSION_INGEST_BYTES_MAX;
use super::session::{self, SessionEnd};
use crate::limits::{SFTP_HANDLES_COUNT_MAX, SFTP_IO_BYTES_MAX, SFTP_PACKET_BYTES_MAX};
use crate::spool::{FileState, Spool, SpoolOptions, VPath};

mod ordering;
mod receipts;

/// Long enough for a debug build on a busy machine; a deadlock shows up as this timeout.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

fn open_spool(dir: &std::path::Path, reserve_bytes: u64) -> Arc<Spool> {
    open_spool_max(dir, reserve_bytes, u64::MAX)
}

fn open_spool_max(dir: &std::path::Path, reserve_bytes: u64, max_file_size: u64) -> Arc<Spool> {
    Spool::open(SpoolOptions {
        dir: dir.join("spool"),
        partial_ttl: Duration::from_secs(3600),
        reserve_bytes,
        hash_bytes_max: u64::MAX,
        high_watermark_percent: 100,
        low_watermark_percent: 100,
        max_file_size,
        delivered_retention: Default::default(),
    })
    .expect("open spool")
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The client end of a session.
struct Client {
    io: DuplexStream,
    next_id: u32,
}

fn start(spool: &Arc<Spool>, buffer_bytes: usize) -> (Client, JoinHandle<SessionEnd>) {
    start_sharing(spool, buffer_bytes, &IngestBudget::default())
}

/// A session whose request data is charged to `ingest`, which other sessions may share.
fn start_sharing(
    spool: &Arc<Spool>,
    buffer_bytes: usize,
    ingest: &IngestBudget,
) -> (Client, JoinHandle<SessionEnd>) {
    start_with(
        spool,
        buffer_bytes,
        ingest,
        crate::sftp::SessionPolicy::default(),
    )
}

/// A session under `policy`.
fn start_with(
    spool: &Arc<Spool>,
    buffer_bytes: usize,
    ingest: &IngestBudget,
    policy: crate::sftp::SessionPolicy,
) -> (Client, JoinHandle<SessionEnd>) {
    let (client, server) = tokio::io::duplex(buffer_bytes);
    let closed = std::future::pending();
    let (spool, ingest) = (Arc::clone(spool), ingest.clone());
    let session = tokio::spawn(async move {
        session::run(server, spool, "alice", policy, &ingest, closed, |_| async {
        })
        .await
    });
    (
        Client {
            io: client,
            next_id: 1,
        },
        session,
    )
}

async fn start_initialized(spool: &Arc<Spool>) -> (Client, JoinHandle<SessionEnd>) {
    let (mut client, session) = start(spool, 1024 * 1024);
    client.init().await;
    (client, session)
}

/// What most tests start from: a spool in a temporary directory (kept while the returned
/// directory lives) and a session on it past INIT.
async fn initialized_session() -> (
    tempfile::TempDir,
    Arc<Spool>,
    Client,
    JoinHandle<SessionEnd>,
) {
    let tmp = tempfile::tempdir().unwrap();
    let spool = open_spool(tmp.path(), 0);
    let (client, session) = start_initialized(&spool).await;
    (tmp, spool, client, session)
}

/// Closes the client's end and waits for the session, which must end as after a clean close.
async fn hang_up(client: Client, session: JoinHandle<SessionEnd>) {
    drop(client);
    let end = within(session).await.unwrap();
    assert!(matches!(end, SessionEnd::ClientClosed), "{end:?}");
}

fn encode(packet: Packet) -> Bytes {
    Bytes::try_from(packet).expect("encode")
}

impl Client {
    fn id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    async fn send(&mut self, packet: Packet) {
        self.io.write_all(&encode(packet)).await.expect("send");
    }

    /// The next reply, or `None` once the server closed the stream.
    async fn recv(&mut self) -> Option<Packet> {
        let mut len = [0u8; 4];
        if self.io.read_exact(&mut len).await.is_err() {
            return None;
        }
        let mut body = vec![0; u32::from_be_bytes(len) as usize];
        self.io.read_exact(&mut body).await.expect("reply body");
        Some(Packet::try_from(&mut Bytes::from(body)).expect("decodable reply"))
    }

    async fn call(&mut self, packet: Packet) -> Packet {
        self.send(packet).await;
        self.recv().await.expect("a reply")
    }

    async fn init(&mut self) -> Packet {
        let version = self.call(Packet::Init(Init::new())).await;
        assert!(matches!(version, Packet::Version(_)), "{version:?}");
        version
    }

    async fn open(
        &mut self,
        path: &str,
        pflags: OpenFlags,
    ) -> Result<String, (StatusCode, String)> {
        let id = self.id();
        let open = Open {
            id,
            filename: path.into(),
            pflags,
            attrs: FileAttributes::empty(),
        };
        match self.call(Packet::Open(open)).await {
            Packet::Handle(h) => Ok(h.handle),
            other => Err(status_of(other)),
        }
    }

    fn write(&mut self, handle: &str, offset: u64, data: Vec<u8>) -> Packet {
        let id = self.id();
        Packet::Write(Write {
            id,
            handle: handle.into(),
            offset,
            data,
        })
    }

    fn close(&mut self, handle: &str) -> Packet {
        let id = self.id();
        Packet::Close(Close {
            id,
            handle: handle.into(),
        })
    }

    async fn put(&mut self, path: &str, data: &[u8]) {
        let handle = self
            .open(path, write_flags())
            .await
            .expect("open for write");
        for (i, chunk) in data.chunks(SFTP_IO_BYTES_MAX as usize).enumerate() {
            let write = self.write(
                &handle,
                (i * SFTP_IO_BYTES_MAX as usize) as u64,
                chunk.to_vec(),
            );
            self.send(write).await;
        }
        for _ in data.chunks(SFTP_IO_BYTES_MAX as usize) {
            assert_eq!(
                status_of(self.recv().await.expect("write reply")).0,
                StatusCode::Ok
            );
        }
        let close = self.close(&handle);
        assert_eq!(status_of(self.call(close).await).0, StatusCode::Ok);
    }

    async fn get(&mut self, path: &str) -> Vec<u8> {
        let handle = self
            .open(path, OpenFlags::READ)
            .await
            .expect("open for read");
        let mut out = Vec::new();
        loop {
            let id = self.id();
            let read = Read {
                id,
                handle: handle.clone(),
                offset: out.len() as u64,
                len: 100_000,
            };
            match self.call(Packet::Read(read)).await {
                Packet::Data(d) => out.extend_from_slice(&d.data),
                other => {
                    assert_eq!(status_of(other).0, StatusCode::Eof);
                    break;
                }
            }
        }
        let close = self.close(&handle);
        assert_eq!(status_of(self.call(close).await).0, StatusCode::Ok);
        out
    }

    async fn status(&mut self, packet: Packet) -> (StatusCode, String) {
        status_of(self.call(packet).await)
    }

    /// MKDIR of `path`, answered by a status.
    async fn mkdir(&mut self, path: &str) -> (StatusCode, String) {
        let id = self.id();
        let mkdir = Packet::MkDir(russh_sftp::protocol::MkDir {
            id,
            path: path.into(),
            attrs: FileAttributes::empty(),
        });
        self.status(mkdir).await
    }

    /// The handle OPENDIR of `path` gives, or its status.
    async fn opendir(&mut self, path: &str) -> Result<String, (StatusCode, String)> {
        let id = self.id();
        let open = OpenDir {
            id,
            path: path.into(),
        };
        match self.call(Packet::OpenDir(open)).await {
            Packet::Handle(h) => Ok(h.handle),
            other => Err(status_of(other)),
        }
    }

    /// The one name REALPATH gives for `path`.
    async fn realpath(&mut self, path: &str) -> String {
        let id = self.id();
        let realpath = RealPath {
            id,
            path: path.into(),
        };
        let Packet::Name(name) = self.call(Packet::RealPath(realpath)).await else {
            panic!("realpath {path} is a NAME")
        };
        name.files[0].filename.clone()
    }
}

fn write_flags() -> OpenFlags {
    OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE
}

fn status_of(packet: Packet) -> (StatusCode, String) {
    match packet {
        Packet::Status(s) => (s.status_code, s.error_message),
        other => panic!("expected a status, got {other:?}"),
    }
}

fn reply_id(packet: &Packet) -> u32 {
    match packet {
        Packet::Status(p) => p.id,
        Packet::Handle(p) => p.id,
        Packet::Data(p) => p.id,
        Packet::Name(p) => p.id,
        Packet::Attrs(p) => p.id,
        Packet::ExtendedReply(p) => p.id,
        other => panic!("not a reply: {other:?}"),
    }
}

fn extended(id: u32, request: &str, data: Vec<u8>) -> Packet {
    Packet::Extended(Extended {
        id,
        request: request.into(),
        data,
    })
}

fn ssh_strings(strings: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in strings {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out
}

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, future)
        .await
        .expect("timed out: deadlock?")
}

#[tokio::test]
async fn version_advertises_the_openssh_extensions() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = open_spool(tmp.path(), 0);
    let (mut client, _session) = start(&spool, 64 * 1024);
    let Packet::Version(version) = client.init().await else {
        unreachable!()
    };
    assert_eq!(version.version, 3);
    for (name, revision) in [
        ("limits@openssh.com", "1"),
        ("fsync@openssh.com", "1"),
        ("posix-rename@openssh.com", "1"),
        ("statvfs@openssh.com", "2"),
    ] {
        assert_eq!(
            version.extensions.get(name).map(String::as_str),
            Some(revision),
            "{name}"
        );
    }
}

#[tokio::test]
async fn garbage_packet_ends_the_session() {
    let (_tmp, _spool, mut client, session) = initialized_session().await;
    // Type 0xEE does not exist; a loop that "logs and continues" would parse what follows.
    client
        .io
        .write_all(&[0, 0, 0, 5, 0xEE, 0, 0, 0, 1])
        .await
        .unwrap();
    let stat = Packet::Stat(Stat {
        id: 7,
        path: "/".into(),
    });
    let _ = client.io.write_all(&encode(stat)).await;
    let end = within(session).await.unwrap();
    assert!(matches!(end, SessionEnd::BadPacket(_)), "{end:?}");
    assert!(client.recv().await.is_none(), "no reply after garbage");
}

#[tokio::test]
async fn truncated_packet_body_ends_the_session() {
    let (_tmp, _spool, mut client, session) = initialized_session().await;
    // A STAT whose path string claims more bytes than the packet holds.
    client
        .io
        .write_all(&[0, 0, 0, 9, 17, 0, 0, 0, 1, 0, 0, 0, 200])
        .await
        .unwrap();
    let end = within(session).await.unwrap();
    assert!(matches!(end, SessionEnd::BadPacket(_)), "{end:?}");
}

#[tokio::test]
async fn oversized_length_ends_the_session() {
    let (_tmp, _spool, mut client, session) = initialized_session().await;
    client
        .io
        .write_all(&(SFTP_PACKET_BYTES_MAX + 1).to_be_bytes())
        .await
        .unwrap();
    let end = within(session).await.unwrap();
    assert!(
        matches!(end, SessionEnd::BadLength(len) if len == SFTP_PACKET_BYTES_MAX + 1),
        "{end:?}"
    );
    assert!(client.recv().await.is_none());
}

#[tokio::test]
async fn requests_before_init_or_a_second_init_end_the_session() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = open_spool(tmp.path(), 0);
    let (mut client, session) = start(&spool, 64 * 1024);
    client
        .send(Packet::Stat(Stat {
            id: 1,
            path: "/".into(),
        }))
        .await;
    let end = within(session).await.unwrap();
    assert!(matches!(end, SessionEnd::ProtocolViolation(_)), "{end:?}");

    let (mut client, session) = start_initialized(&spool).await;
    client.send(Packet::Init(Init::new())).await;
    let end = within(session).await.unwrap();
    assert!(matches!(end, SessionEnd::ProtocolViolation(_)), "{end:?}");
}

#[tokio::test]
async fn pipelined_requests_all_get_replies_with_matching_ids() {
    let (_tmp, _spool, mut client, session) = initialized_session().await;
    client.put("/f.bin", &pattern(1000, 1)).await;
    let handle = client.open("/g.bin", write_flags()).await.unwrap();

    let mut sent = HashSet::new();
    for i in 0..300u32 {
        let id = client.id();
        let packet = match i % 6 {
            0 => Packet::RealPath(RealPath {
                id,
                path: ".".into(),
            }),
            1 => Packet::Stat(Stat {
                id,
                path: "/f.bin".into(),
            }),
            2 => Packet::Stat(Stat {
                id,
                path: "/missing".into(),
            }),
            3 => Packet::ReadLink(ReadLink {
                id,
                path: "/f.bin".into(),
            }),
            4 => extended(id, "limits@openssh.com", Vec::new()),
            _ => Packet::Write(Write {
                id,
                handle: handle.clone(),
                offset: u64::from(i) * 10,
                data: vec![7; 10],
            }),
        };
        sent.insert(id);
        client.send(packet).await;
    }
    let mut received = HashSet::new();
    for _ in 0..300 {
        let reply = within(client.recv()).await.expect("reply");
        assert!(received.insert(reply_id(&reply)), "duplicate reply id");
    }
    assert_eq!(sent, received);
    hang_up(client, session).await;
}

#[tokio::test]
async fn writes_to_one_handle_apply_in_arrival_order_and_close_answers_last() {
    let (_tmp, _spool, mut client, _session) = initialized_session().await;
    let handle = client.open("/order.bin", write_flags()).await.unwrap();
    // Overlapping writes: only arrival order gives the expected bytes.
    let writes = [
        (0u64, vec![b'A'; 100]),
        (0, vec![b'B'; 100]),
        (50, vec![b'C'; 10]),
    ];
    let mut write_ids = Vec::new();
    for (offset, data) in writes {
        let write = client.write(&handle, offset, data);
        write_ids.push(write.get_request_id());
        client.send(write).await;
    }
    // A sequential run that the worker may merge, and CLOSE right behind it, unanswered.
    for i in 0..64u64 {
        let write = client.write(&handle, 100 + i * 4096, pattern(4096, i as u8));
        write_ids.push(write.get_request_id());
        client.send(write).await;
    }
    let close = client.close(&handle);
    let close_id = close.get_request_id();
    client.send(close).await;
    for _ in 0..write_ids.len() {
        let reply = within(client.recv()).await.unwrap();
        assert_ne!(
            reply_id(&reply),
            close_id,
            "CLOSE answered before a write of its handle"
        );
        assert_eq!(status_of(reply).0, StatusCode::Ok);
    }
    let reply = within(client.recv()).await.unwrap();
    assert_eq!(
        (reply_id(&reply), status_of(reply).0),
        (close_id, StatusCode::Ok)
    );

    let mut expected = vec![b'B'; 100];
    expected[50..60].fill(b'C');
    for i in 0..64u64 {
        expected.extend(pattern(4096, i as u8));
    }
    assert_eq!(client.get("/order.bin").await, expected);
}

#[tokio::test]
async fn put_then_get_round_trips_a_large_file() {
    let (_tmp, _spool, mut client, _session) = initialized_session().await;
    let data = pattern(3 * 1024 * 1024 + 17, 9);
    client.put("/big.bin", &data).await;
    assert_eq!(client.get("/big.bin").await, data);
    let attrs = client
        .call(Packet::Stat(Stat {
            id: 99,
            path: "/big.bin".into(),
        }))
        .await;
    let Packet::Attrs(attrs) = attrs else {
        panic!("{attrs:?}")
    };
    assert_eq!(attrs.attrs.size, Some(data.len() as u64));
    assert_eq!(attrs.attrs.permissions, Some(0o100644));
}

#[tokio::test]
async fn read_pipeline_beyond_the_reply_budget_with_a_blocked_writer_does_not_deadlock() {
    // paramiko's prefetch sends READs for a whole file before reading any reply. Here the
    // stream holds 16 KiB: replies block at once, so the requests (2000 × 8 KiB = 16 MiB, twice
    // the reply budget) only get through if the session keeps reading while replies wait.
    let tmp = tempfile::tempdir().unwrap();
    let spool = open_spool(tmp.path(), 0);
    let (mut setup, _session) = start_initialized(&spool).await;
    setup.put("/r.bin", &pattern(1024 * 1024, 3)).await;
    drop(setup);

    let (mut client, session) = start(&spool, 16 * 1024);
    client.init().await;
    let handle = client.open("/r.bin", OpenFlags::READ).await.unwrap();
    let (mut rx, mut tx) = tokio::io::split(client.io);
    const READS: u32 = 2000;
    let sender = tokio::spawn(async move {
        for i in 0..READS {
            let offset = u64::from(i % 128) * 8192;
            let read = Read {
                id: 1000 + i,
                handle: handle.clone(),
                offset,
                len: 8192,
            };
            tx.write_all(&encode(Packet::Read(read)))
                .await
                .expect("send READ");
        }
        tx
    });
    let tx = within(sender).await.unwrap();
    let mut ids = HashSet::new();
    for _ in 0..READS {
        let mut len = [0u8; 4];
        within(rx.read_exact(&mut len)).await.unwrap();
        let mut body = vec![0; u32::from_be_bytes(len) as usize];
        rx.read_exact(&mut body).await.unwrap();
        let reply = Packet::try_from(&mut Bytes::from(body)).unwrap();
        let Packet::Data(data) = &reply else {
            panic!("{reply:?}")
        };
        assert_eq!(data.data.len(), 8192);
        ids.insert(data.id);
    }
    assert_eq!(ids.len(), READS as usize);
    drop((rx, tx));
    within(session).await.unwrap();
}

#[tokio::test]
async fn failed_write_poisons_the_handle_close_fails_and_the_file_stays_partial() {
    let tmp = tempfile::tempdir().unwrap();
    // A reserve no disk has: every write is refused for lack of space.
    let spool = open_spool(tmp.path(), u64::MAX / 2);
    let (mut client, _session) = start_initialized(&spool).await;
    let handle = client.open("/full.bin", write_flags()).await.unwrap();
    let write = client.write(&handle, 0, vec![1; 1000]);
    let (code, message) = client.status(write).await;
    assert_eq!(
        (code, message.as_str()),
        (StatusCode::Failure, "No space left on device")
    );
    let close = client.close(&handle);
    let (code, message) = client.status(close).await;
    assert_eq!(
        (code, message.as_str()),
        (StatusCode::Failure, "No space left on device")
    );
    let states: Vec<_> = spool.files().iter().map(|f| f.state).collect();
    assert_eq!(states, vec![FileState::Partial]);
}

#[tokio::test]
async fn session_end_without_close_leaves_the_upload_partial() {
    let (_tmp, spool, mut client, session) = initialized_session().await;
    let handle = client.open("/half.bin", write_flags()).await.unwrap();
    let write = client.write(&handle, 0, pattern(5000, 2));
    assert_eq!(client.status(write).await.0, StatusCode::Ok);
    hang_up(client, session).await;
    let files = spool.files();
    assert_eq!(files.len(), 1);
    assert_eq!(
        (files[0].state, files[0].path.clone()),
        (FileState::Partial, VPath::resolve("half.bin").unwrap())
    );
}

#[tokio::test]
async fn paths_outside_the_jail_are_permission_denied() {
    let (_tmp, _spool, mut client, _session) = initialized_session().await;
    assert_eq!(
        client.open("/../x", write_flags()).await.unwrap_err().0,
        StatusCode::PermissionDenied
    );
    assert_eq!(
        client
            .open("a/../../x", OpenFlags::READ)
            .await
            .unwrap_err()
            .0,
        StatusCode::PermissionDenied
    );
    let stat = Packet::Stat(Stat {
        id: 3,
        path: "../etc/passwd".into(),
    });
    assert_eq!(client.status(stat).await.0, StatusCode::PermissionDenied);
    // REALPATH alone stops `..` at the root, as a chroot does (FileZilla asks for the
    // parent of `/`); it names nothing outside the jail.
    assert_eq!(client.realpath("/..").await, "/");
    assert_eq!(client.realpath(".").await, "/");
    assert_eq!(client.realpath("a/./b/../c").await, "/a/c");
}

#[tokio::test]
async fn rename_refuses_an_existing_target_and_posix_rename_overwrites() {
    let (_tmp, _spool, mut client, _session) = initialized_session().await;
    client.put("/a", b"first").await;
    client.put("/b", b"second").await;
    let rename = Packet::Rename(Rename {
        id: 10,
        oldpath: "/a".into(),
        newpath: "/b".into(),
    });
    assert_eq!(client.status(rename).await.0, StatusCode::Failure);
    assert_eq!(client.get("/b").await, b"second");
    let posix = extended(11, "posix-rename@openssh.com", ssh_strings(&["/a", "/b"]));
    assert_eq!(client.status(posix).await.0, StatusCode::Ok);
    assert_eq!(client.get("/b").await, b"first");
    let stat = Packet::Stat(Stat {
        id: 12,
        path: "/a".into(),
    });
    assert_eq!(client.status(stat).await.0, StatusCode::NoSuchFile);
}

#[tokio::test]
async fn readdir_lists_entries_like_ls_then_eof() {
    let (_tmp, _spool, mut client, _session) = initialized_session().await;
    client.put("/one.txt", b"12345").await;
    assert_eq!(client.mkdir("/sub").await.0, StatusCode::Ok);
    let dir = client.opendir("/").await.expect("opendir");
    let Packet::Name(name) = client
        .call(Packet::ReadDir(ReadDir {
            id: 22,
            handle: dir.clone(),
        }))
        .await
    else {
        panic!("readdir")
    };
    let lines: Vec<_> = name
        .files
        .iter()
        .map(|f| (f.filename.as_str(), f.longname.as_str()))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0].0, "one.txt");
    assert!(
        lines[0]
            .1
            .starts_with("-rw-r--r--   1 alice    alice           5 "),
        "{}",
        lines[0].1
    );
    assert!(lines[0].1.ends_with(" one.txt"));
    assert!(
        lines[1].1.starts_with("drwxr-xr-x   2 alice    alice    "),
        "{}",
        lines[1].1
    );
    let eof = client
        .call(Packet::ReadDir(ReadDir {
            id: 23,
            handle: dir.clone(),
        }))
        .await;
    assert_eq!(status_of(eof).0, StatusCode::Eof);
    let close = client.close(&dir);
    assert_eq!(client.status(close).await.0, StatusCode::Ok);
}

#[tokio::test]
async fn setstat_is_accepted_for_existing_names_only_and_links_are_unsupported() {
    let (_tmp, _spool, mut client, _session) = initialized_session().await;
    client.put("/s", b"x").await;
    let mut attrs = FileAttributes::empty();
    attrs.mtime = Some(1);
    attrs.atime = Some(1);
    let set = Packet::SetStat(SetStat {
        id: 30,
        path: "/s".into(),
        attrs: attrs.clone(),
    });
    assert_eq!(client.status(set).await.0, StatusCode::Ok);
    let set = Packet::SetStat(SetStat {
        id: 31,
        path: "/nope".into(),
        attrs,
    });
    assert_eq!(client.status(set).await.0, StatusCode::NoSuchFile);
    let link = Packet::ReadLink(ReadLink {
        id: 32,
        path: "/s".into(),
    });
    assert_eq!(client.status(link).await.0, StatusCode::OpUnsupported);
    let unknown = extended(33, "hardlink@openssh.com", ssh_strings(&["/s", "/t"]));
    assert_eq!(client.status(unknown).await.0, StatusCode::OpUnsupported);
}

#[tokio::test]
async fn limits_and_statvfs_extensions_report_our_limits_and_the_spool_space() {
    let (_tmp, spool, mut client, _session) = initialized_session().await;
    let Packet::ExtendedReply(limits) = client
        .call(extended(40, "limits@openssh.com", Vec::new()))
        .await
    else {
        panic!("limits reply")
    };
    let mut data = Bytes::from(limits.data);
    let values: Vec<u64> = (0..4).map(|_| data.get_u64()).collect();
    assert_eq!(
        values,
        vec![
            u64::from(SFTP_PACKET_BYTES_MAX),
            u64::from(SFTP_IO_BYTES_MAX),
            u64::from(SFTP_IO_BYTES_MAX),
            SFTP_HANDLES_COUNT_MAX as u64
        ]
    );
    let request = extended(41, "statvfs@openssh.com", ssh_strings(&["/"]));
    let Packet::ExtendedReply(statvfs) = client.call(request).await else {
        panic!("statvfs reply")
    };
    assert_eq!(statvfs.data.len(), 11 * 8);
    let space = spool.space();
    let mut data = Bytes::from(statvfs.data);
    assert_eq!(data.get_u64(), space.block_size);
    let request = extended(42, "statvfs@openssh.com", ssh_strings(&["/.."]));
    assert_eq!(client.status(request).await.0, StatusCode::PermissionDenied);
}

#[tokio::test]
async fn fsync_syncs_write_handles_in_order_and_fstat_sees_the_written_size() {
    let (_tmp, _spool, mut client, _session) = initialized_session().await;
    let handle = client.open("/s.bin", write_flags()).await.unwrap();
    let write = client.write(&handle, 0, vec![5; 12345]);
    client.send(write).await;
    client
        .send(extended(50, "fsync@openssh.com", ssh_strings(&[&handle])))
        .await;
    client
        .send(Packet::Fstat(russh_sftp::protocol::Fstat {
            id: 51,
            handle: handle.clone(),
        }))
        .await;
    assert_eq!(status_of(client.recv().await.unwrap()).0, StatusCode::Ok);
    let fsync = client.recv().await.unwrap();
    assert_eq!((reply_id(&fsync), status_of(fsync).0), (50, StatusCode::Ok));
    let Some(Packet::Attrs(attrs)) = client.recv().await else {
        panic!("fstat")
    };
    assert_eq!(attrs.attrs.size, Some(12345));
}

#[tokio::test]
async fn open_handles_are_capped_per_session() {
    let (_tmp, _spool, mut client, _session) = initialized_session().await;
    client.put("/h", b"h").await;
    for _ in 0..SFTP_HANDLES_COUNT_MAX {
        client
            .open("/h", OpenFlags::READ)
            .await
            .expect("under the cap");
    }
    let (code, message) = client.open("/h", OpenFlags::READ).await.unwrap_err();
    assert_eq!(code, StatusCode::Failure);
    assert!(message.contains("too many open handles"), "{message}");
}

#[tokio::test]
async fn invalid_and_mismatched_handles_are_errors_not_crashes() {
    let (_tmp, _spool, mut client, _session) = initialized_session().await;
    client.put("/r", b"data").await;
    let write = client.write("nope", 0, vec![1]);
    assert_eq!(client.status(write).await.0, StatusCode::Failure);
    let reader = client.open("/r", OpenFlags::READ).await.unwrap();
    let write = client.write(&reader, 0, vec![1]);
    assert_eq!(client.status(write).await.0, StatusCode::PermissionDenied);
    let close = client.close("nope");
    assert_eq!(client.status(close).await.0, StatusCode::Failure);
    let close = client.close(&reader);
    assert_eq!(client.status(close).await.0, StatusCode::Ok);
    let close = client.close(&reader);
    assert_eq!(
        client.status(close).await.0,
        StatusCode::Failure,
        "closed twice"
    );
}

// ---- the process-wide ingest budget -------------------------------------------------------

/// Waits until nothing is charged to `ingest` any more; a charge that is never returned shows
/// up as the test's timeout.
async fn budget_returned(ingest: &IngestBudget) {
    within(async {
        while ingest.available_bytes() != ingest.total_bytes() as usize {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn write_data_waits_for_the_shared_ingest_budget_and_gives_it_back_when_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = open_spool(tmp.path(), 0);
    let ingest = IngestBudget::new(SFTP_SESSION_INGEST_BYTES_MAX);
    let total = ingest.total_bytes() as usize;
    let (mut client, session) = start_sharing(&spool, 1024 * 1024, &ingest);
    client.init().await;
    let handle = client.open("/w.bin", write_flags()).await.unwrap();

    // Someone else holds all of it: the session must not read the WRITE's data.
    let held = ingest.session().charge(ingest.total_bytes()).await;
    let write = client.write(&handle, 0, pattern(100_000, 1));
    client.send(write).await;
    let early = tokio::time::timeout(Duration::from_millis(300), client.recv()).await;
    assert!(
        early.is_err(),
        "a WRITE was read without ingest budget: {early:?}"
    );

    drop(held);
    let reply = within(client.recv()).await.expect("write reply");
    assert_eq!(status_of(reply).0, StatusCode::Ok);
    // Applied to the spool: its data and charge are gone (the io_uring engine may drop its
    // copy a moment after it reports the write done).
    budget_returned(&ingest).await;
    let close = client.close(&handle);
    assert_eq!(status_of(client.call(close).await).0, StatusCode::Ok);
    drop(client);
    within(session).await.unwrap();
    assert_eq!(
        ingest.available_bytes(),
        total,
        "a charge outlived the session"
    );
}

#[tokio::test]
async fn many_sessions_uploading_through_a_small_shared_budget_all_finish_and_return_it() {
    const SESSIONS: usize = 8;
    const FILE_BYTES: usize = 3 * 1024 * 1024 + 12_345;
    let tmp = tempfile::tempdir().unwrap();
    let spool = open_spool(tmp.path(), 0);
    // Room for four largest packets: far less than the sessions send at once.
    let ingest = IngestBudget::new(4 * SFTP_PACKET_BYTES_MAX);

    let sampler_budget = ingest.clone();
    let sampler = tokio::spawn(async move {
        let mut least = usize::MAX;
        loop {
            least = least.min(sampler_budget.available_bytes());
            tokio::time::sleep(Duration::from_millis(1)).await;
            if least < SFTP_PACKET_BYTES_MAX as usize {
                return least;
            }
        }
    });
    let mut uploads = Vec::new();
    for i in 0..SESSIONS {
        let (mut client, session) = start_sharing(&spool, 1024 * 1024, &ingest);
        uploads.push(tokio::spawn(async move {
            client.init().await;
            let path = format!("/u{i}.bin");
            client.put(&path, &pattern(FILE_BYTES, i as u8)).await;
            drop(client);
            session.await.unwrap();
        }));
    }
    for upload in uploads {
        within(upload).await.unwrap();
    }
    let least = within(sampler).await.unwrap();
    assert!(
        least < SFTP_PACKET_BYTES_MAX as usize,
        "the budget was never short"
    );
    budget_returned(&ingest).await;

    let (mut reader, _session) = start_initialized(&spool).await;
    for i in 0..SESSIONS {
        let got = reader.get(&format!("/u{i}.bin")).await;
        assert!(got == pattern(FILE_BYTES, i as u8), "file {i} differs");
    }
}

#[tokio::test]
async fn a_session_that_reads_no_replies_does_not_starve_another_sessions_writes() {
    // The whole budget is one session's share: if a stuck session could keep its share, no
    // one else could write at all.
    let tmp = tempfile::tempdir().unwrap();
    let spool = open_spool(tmp.path(), 0);
    let ingest = IngestBudget::new(SFTP_SESSION_INGEST_BYTES_MAX);

    // Small writes, never a reply read: more replies than the session's reply queue and the
    // stream hold, so its replies block while its writes keep coming.
    let (mut stuck, stuck_session) = start_sharing(&spool, 16 * 1024, &ingest);
    stuck.init().await;
    let handle = stuck.open("/stuck.bin", write_flags()).await.unwrap();
    let (stuck_rx, mut stuck_tx) = tokio::io::split(stuck.io);
    const WRITES: usize = 20_000;
    const WRITE_BYTES: usize = 1024;
    let sender = tokio::spawn(async move {
        for i in 0..WRITES {
            let write = Packet::Write(Write {
                id: 10 + i as u32,
                handle: handle.clone(),
                offset: (i * WRITE_BYTES) as u64,
                data: vec![i as u8; WRITE_BYTES],
            });
            if stuck_tx.write_all(&encode(write)).await.is_err() {
                break;
            }
        }
        stuck_tx
    });

    let (mut other, other_session) = start_sharing(&spool, 1024 * 1024, &ingest);
    other.init().await;
    let data = pattern(4 * 1024 * 1024, 9);
    within(other.put("/other.bin", &data)).await;
    drop(other);
    within(other_session).await.unwrap();

    // The stuck session holds request budget for its unsent replies, but no request data.
    let sender = within(sender).await.unwrap();
    budget_returned(&ingest).await;
    drop((stuck_rx, sender));
    within(stuck_session).await.unwrap();

    let (mut reader, _session) = start_initialized(&spool).await;
    assert!(reader.get("/other.bin").await == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_max_file_size_or_u64_fail_cleanly_and_the_session_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = open_spool_max(tmp.path(), 0, 1 << 20);
    let (mut client, session) = start_initialized(&spool).await;
    let handle = client
        .open("/sparse.bin", write_flags())
        .await
        .expect("open");
    // One byte at 10 TiB would upload 10 TiB of zeros.
    let write = client.write(&handle, 10 << 40, vec![1]);
    let (code, message) = client.status(write).await;
    assert_eq!(code, StatusCode::Failure);
    assert!(message.contains("file too large"), "{message}");
    // An offset whose end passes u64::MAX is refused, never a crash.
    let write = client.write(&handle, u64::MAX - 10, vec![0; 100]);
    assert_eq!(client.status(write).await.0, StatusCode::Failure);
    // The failed handle does not seal; the file stays partial.
    let close = client.close(&handle);
    assert_eq!(client.status(close).await.0, StatusCode::Failure);
    // The session and other files are unaffected.
    let data = pattern(1 << 20, 3);
    client.put("/fits.bin", &data).await;
    assert_eq!(client.get("/fits.bin").await, data);
    // A READ near u64::MAX is the end of the file.
    let reader = client
        .open("/fits.bin", OpenFlags::READ)
        .await
        .expect("open");
    let id = client.id();
    let read = Packet::Read(Read {
        id,
        handle: reader,
        offset: u64::MAX - 1,
        len: 1000,
    });
    let (code, message) = client.status(read).await;
    assert_eq!(code, StatusCode::Eof, "{message}");
    hang_up(client, session).await;
}

/// READDIR reads a large directory a page at a time after the last name handed out: every
/// name once, in order, over several replies; a name made after the cursor during the
/// listing shows, one removed before it was reached does not (POSIX readdir allows both).
#[tokio::test]
async fn readdir_of_a_large_directory_goes_page_by_page_after_the_last_name() {
    let (_tmp, spool, mut client, _session) = initialized_session().await;
    let mut names: Vec<String> = (0..1000).map(|i| format!("d{i:04}")).collect();
    for name in &names {
        assert_eq!(client.mkdir(&format!("/{name}")).await.0, StatusCode::Ok);
    }
    // A subtree below one entry: skipped, not listed.
    assert_eq!(client.mkdir("/d0001/inner").await.0, StatusCode::Ok);
    let dir = client.opendir("/").await.expect("opendir");
    let mut listed: Vec<String> = Vec::new();
    let mut replies = 0;
    loop {
        let reply = client
            .call(Packet::ReadDir(ReadDir {
                id: 6000 + replies,
                handle: dir.clone(),
            }))
            .await;
        let Packet::Name(name) = reply else {
            assert_eq!(status_of(reply).0, StatusCode::Eof);
            break;
        };
        replies += 1;
        listed.extend(name.files.into_iter().map(|f| f.filename));
        if replies == 1 {
            // Mid-listing: one name after the cursor appears, one not yet reached goes.
            spool
                .mkdir("alice", &VPath::resolve("/d0999x").unwrap())
                .await
                .unwrap();
            spool
                .rmdir("alice", &VPath::resolve("/d0998").unwrap())
                .await
                .unwrap();
        }
    }
    names.retain(|n| n != "d0998");
    names.push("d0999x".to_owned());
    assert!(replies >= 4, "{replies} replies: not paged");
    assert_eq!(listed, names);
}

#[tokio::test]
async fn names_with_control_characters_or_bidi_overrides_are_refused_with_a_clear_error() {
    let (_tmp, _spool, mut client, _session) = initialized_session().await;
    for bad in ["/a\nb.txt", "/\u{1b}[2Jx", "/invoice\u{202e}fdp.exe"] {
        let (code, message) = client.open(bad, write_flags()).await.expect_err(bad);
        assert_eq!(code, StatusCode::BadMessage, "{bad:?}");
        assert!(message.contains("control character"), "{message}");
        assert!(
            crate::names::hostile_char(&message).is_none(),
            "escaped: {message:?}"
        );
        assert_eq!(client.mkdir(bad).await.0, StatusCode::BadMessage);
    }
    client.put("/ok.txt", b"fine").await;
    let rename = Packet::Rename(Rename {
        id: 21,
        oldpath: "/ok.txt".into(),
        newpath: "/ok\r.txt".into(),
    });
    assert_eq!(client.status(rename).await.0, StatusCode::BadMessage);
    // The session goes on, and plain non-ASCII names are fine.
    client.put("/Straße ☃.txt", b"fine").await;
    assert_eq!(client.get("/ok.txt").await, b"fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_that_announce_large_packets_and_stall_do_not_stop_other_uploads() {
    // A budget that 8 stalled sessions would take whole if each were charged its announced
    // length (8 × 257 KiB > 1 MiB); charged a piece at a time they hold 8 × 32 KiB.
    let tmp = tempfile::tempdir().unwrap();
    let spool = open_spool(tmp.path(), 0);
    let ingest = IngestBudget::new(1024 * 1024);
    let mut stalled = Vec::new();
    for n in 0..8u32 {
        let (mut client, session) = start_sharing(&spool, 1024 * 1024, &ingest);
        client.init().await;
        // A WRITE's length header for the largest packet, a few bytes of its body, then
        // nothing more.
        let header = crate::limits::SFTP_PACKET_BYTES_MAX.to_be_bytes();
        client.io.write_all(&header).await.unwrap();
        client.io.write_all(&[6, 0, 0, 0, n as u8]).await.unwrap();
        stalled.push((client, session));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (mut other, other_session) = start_sharing(&spool, 1024 * 1024, &ingest);
    other.init().await;
    let data = pattern(4 * 1024 * 1024, 3);
    within(other.put("/other.bin", &data)).await;
    drop(other);
    within(other_session).await.unwrap();
    drop(stalled);
    budget_returned(&ingest).await;
    let (mut reader, _session) = start_initialized(&spool).await;
    assert!(reader.get("/other.bin").await == data);
}

#[tokio::test]
async fn directory_handles_count_against_the_session_cap_and_hold_no_listing() {
    let (_tmp, _spool, mut client, _session) = initialized_session().await;
    for n in 0..SFTP_HANDLES_COUNT_MAX {
        let opened = client.opendir("/").await;
        assert!(opened.is_ok(), "handle {n} under the cap");
    }
    let (code, message) = client.opendir("/").await.unwrap_err();
    assert_eq!(code, StatusCode::Failure);
    assert!(message.contains("too many open handles"), "{message}");
    // Each holds its directory's path and a cursor (the last name sent), not a copy of the
    // listing: its size does not depend on the directory's.
    assert!(std::mem::size_of::<crate::sftp::handles::Listing>() <= 64);
}

#[tokio::test]
async fn a_session_without_requests_for_the_idle_timeout_ends_and_a_busy_one_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = open_spool(tmp.path(), 0);
    let policy = crate::sftp::SessionPolicy {
        idle_timeout: Some(Duration::from_millis(600)),
        ..Default::default()
    };
    let ingest = IngestBudget::default();
    let (mut busy, busy_session) = start_with(&spool, 1024 * 1024, &ingest, policy.clone());
    let (mut idle, idle_session) = start_with(&spool, 1024 * 1024, &ingest, policy);
    busy.init().await;
    idle.init().await;
    // The busy client asks something every 200 ms for 1.8 s: three idle timeouts.
    for i in 0..9 {
        busy.put(&format!("/busy-{i}.txt"), b"still here").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let end = tokio::time::timeout(Duration::from_secs(5), idle_session)
        .await
        .expect("the idle session ended")
        .expect("session task");
    assert!(matches!(end, SessionEnd::Idle(_)), "{end:?}");
    assert_eq!(end.exit_status(), 1);
    assert!(idle.recv().await.is_none(), "the server closed the stream");
    assert!(!busy_session.is_finished(), "the busy session goes on");
    assert_eq!(busy.get("/busy-8.txt").await, b"still here");
}
