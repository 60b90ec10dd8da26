//! The ordering rule (`lane`): a request on a path or handle sees the effects of every request
//! sent before it, even when the client sends them all without waiting for a reply, as sshfs
//! and rsync do.

use std::collections::HashMap;

use russh_sftp::protocol::{Attrs, Lstat, Remove};

use super::*;

/// Sends `packets` in one write, without waiting, and returns the replies by request id.
async fn pipeline(client: &mut Client, packets: Vec<Packet>) -> HashMap<u32, Packet> {
    let ids: Vec<u32> = packets.iter().map(Packet::get_request_id).collect();
    let mut bytes = Vec::new();
    for packet in packets {
        bytes.extend_from_slice(&encode(packet));
    }
    client.io.write_all(&bytes).await.expect("send");
    let mut replies = HashMap::new();
    while replies.len() < ids.len() {
        let reply = client.recv().await.expect("a reply");
        replies.insert(reply_id(&reply), reply);
    }
    replies
}

fn open_packet(client: &mut Client, path: &str) -> Packet {
    let id = client.id();
    Packet::Open(Open {
        id,
        filename: path.into(),
        pflags: write_flags(),
        attrs: FileAttributes::empty(),
    })
}

fn lstat_packet(client: &mut Client, path: &str) -> Packet {
    let id = client.id();
    Packet::Lstat(Lstat {
        id,
        path: path.into(),
    })
}

fn size_of(packet: &Packet) -> u64 {
    match packet {
        Packet::Attrs(Attrs { attrs, .. }) => attrs.size.expect("size"),
        other => panic!("expected attributes, got {other:?}"),
    }
}

// Several workers, so that requests run in parallel unless the lane orders them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lstat_and_setstat_pipelined_behind_open_see_the_created_file() {
    let (_tmp, _spool, mut client, _session) = initialized_session().await;
    // sshfs's `cp`: OPEN(CREAT), then LSTAT and SETSTAT of the path, before the handle is known.
    // Run concurrently they were answered "no such file" most of the time: try many.
    for i in 0..50 {
        let path = format!("/copy-{i}.bin");
        let open = open_packet(&mut client, &path);
        let lstat = lstat_packet(&mut client, &path);
        let id = client.id();
        let setstat = Packet::SetStat(SetStat {
            id,
            path: path.clone(),
            attrs: FileAttributes {
                mtime: Some(1_700_000_000),
                atime: Some(1_700_000_000),
                ..FileAttributes::empty()
            },
        });
        let (open_id, lstat_id, setstat_id) = (open.get_request_id(), lstat.get_request_id(), id);
        let mut replies = within(pipeline(&mut client, vec![open, lstat, setstat])).await;
        let Some(Packet::Handle(handle)) = replies.remove(&open_id) else {
            panic!("OPEN of {path} failed: {replies:?}");
        };
        assert_eq!(size_of(&replies[&lstat_id]), 0, "{path}");
        assert_eq!(
            status_of(replies.remove(&setstat_id).unwrap()).0,
            StatusCode::Ok,
            "{path}"
        );
        let close = client.close(&handle.handle);
        assert_eq!(status_of(client.call(close).await).0, StatusCode::Ok);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stat_or_listing_behind_writes_sees_their_bytes() {
    let (_tmp, _spool, mut client, _session) = initialized_session().await;
    client.mkdir("/d").await;
    let handle = client.open("/d/f", write_flags()).await.expect("open");
    for round in 0..10u64 {
        let chunk = 32 * 1024;
        let mut packets: Vec<Packet> = (0..4u64)
            .map(|i| {
                let offset = (round * 4 + i) * chunk;
                client.write(&handle, offset, pattern(chunk as usize, i as u8))
            })
            .collect();
        let lstat = lstat_packet(&mut client, "/d/f");
        let lstat_id = lstat.get_request_id();
        packets.push(lstat);
        let id = client.id();
        packets.push(Packet::OpenDir(OpenDir {
            id,
            path: "/d".into(),
        }));
        let replies = within(pipeline(&mut client, packets)).await;
        let written = (round + 1) * 4 * chunk;
        assert_eq!(
            size_of(&replies[&lstat_id]),
            written,
            "LSTAT after round {round}"
        );
        let Packet::Handle(dir) = &replies[&id] else {
            panic!("OPENDIR failed: {:?}", replies[&id]);
        };
        let id = client.id();
        let listing = client
            .call(Packet::ReadDir(ReadDir {
                id,
                handle: dir.handle.clone(),
            }))
            .await;
        let Packet::Name(name) = listing else {
            panic!("READDIR: {listing:?}");
        };
        assert_eq!(
            name.files[0].attrs.size,
            Some(written),
            "listing after round {round}"
        );
        let close = client.close(&dir.handle);
        client.call(close).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_and_remove_pipelined_behind_close_act_on_the_sealed_file() {
    let (_tmp, spool, mut client, _session) = initialized_session().await;
    for i in 0..20 {
        // rsync: write a temporary name, CLOSE, rename it over the real one at once.
        let (tmp_name, name) = (format!("/.f{i}.XXXX"), format!("/f{i}"));
        let handle = client.open(&tmp_name, write_flags()).await.expect("open");
        let data = pattern(100_000, i as u8);
        let write = client.write(&handle, 0, data.clone());
        let close = client.close(&handle);
        let id = client.id();
        let rename = extended(
            id,
            "posix-rename@openssh.com",
            ssh_strings(&[&tmp_name, &name]),
        );
        let lstat = lstat_packet(&mut client, &name);
        let lstat_id = lstat.get_request_id();
        let mut replies = within(pipeline(&mut client, vec![write, close, rename, lstat])).await;
        assert_eq!(
            size_of(&replies.remove(&lstat_id).unwrap()),
            data.len() as u64
        );
        for (_, reply) in replies {
            assert_eq!(status_of(reply).0, StatusCode::Ok, "{name}");
        }
        let entry = spool
            .stat("alice", &VPath::resolve(&name).unwrap())
            .unwrap();
        assert_eq!(entry.state, Some(FileState::Sealed), "{name}");
        assert_eq!(client.get(&name).await, data);
    }
    // CLOSE then REMOVE at once: the sealed file is removed, not a receiving one refused.
    let handle = client.open("/gone", write_flags()).await.expect("open");
    let write = client.write(&handle, 0, pattern(10_000, 9));
    let close = client.close(&handle);
    let id = client.id();
    let remove = Packet::Remove(Remove {
        id,
        filename: "/gone".into(),
    });
    let replies = within(pipeline(&mut client, vec![write, close, remove])).await;
    for (_, reply) in replies {
        assert_eq!(status_of(reply).0, StatusCode::Ok);
    }
    assert!(
        spool
            .stat("alice", &VPath::resolve("/gone").unwrap())
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readdirs_pipelined_on_one_handle_hand_out_the_listing_in_request_order() {
    let (_tmp, _spool, mut client, _session) = initialized_session().await;
    // Long names, so that the listing takes several NAME replies.
    let names: Vec<String> = (0..400)
        .map(|i| format!("{i:04}-{}", "n".repeat(200)))
        .collect();
    for name in &names {
        let handle = client
            .open(&format!("/{name}"), write_flags())
            .await
            .expect("open");
        let close = client.close(&handle);
        assert_eq!(status_of(client.call(close).await).0, StatusCode::Ok);
    }
    for round in 0..5 {
        let dir = client.opendir("/").await.expect("OPENDIR failed");
        // sshfs sends READDIRs back to back and takes the replies in the order it sent them.
        let readdirs: Vec<Packet> = (0..12)
            .map(|_| {
                let id = client.id();
                Packet::ReadDir(ReadDir {
                    id,
                    handle: dir.clone(),
                })
            })
            .collect();
        let ids: Vec<u32> = readdirs.iter().map(Packet::get_request_id).collect();
        let mut replies = within(pipeline(&mut client, readdirs)).await;
        let mut listed = Vec::new();
        let mut ended = false;
        for id in ids {
            match replies.remove(&id).unwrap() {
                Packet::Name(name) => {
                    assert!(!ended, "round {round}: entries after EOF");
                    listed.extend(name.files.into_iter().map(|f| f.filename));
                }
                other => {
                    assert_eq!(status_of(other).0, StatusCode::Eof);
                    ended = true;
                }
            }
        }
        assert!(
            ended,
            "round {round}: the listing did not end within 12 READDIRs"
        );
        assert_eq!(listed, names, "round {round}");
        let close = client.close(&dir);
        client.call(close).await;
    }
}
