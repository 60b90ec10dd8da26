//! The virtual directory (`.sftpgw`): receipts, queue and its refusals, over a session.

use std::sync::atomic::AtomicU64;

use super::*;
use crate::spool::DeliveredObject;
use crate::spool::deliveries::Delivery;

fn policy_with_virtual_dir(drain_rate: u64) -> crate::sftp::SessionPolicy {
    crate::sftp::SessionPolicy {
        virtual_dir: Some(crate::sftp::receipts::VirtualDir::new(
            ".sftpgw",
            Arc::new(AtomicU64::new(drain_rate)),
        )),
        ..Default::default()
    }
}

async fn start_virtual(spool: &Arc<Spool>, drain_rate: u64) -> (Client, JoinHandle<SessionEnd>) {
    let ingest = IngestBudget::default();
    let (mut client, session) = start_with(
        spool,
        1024 * 1024,
        &ingest,
        policy_with_virtual_dir(drain_rate),
    );
    client.init().await;
    (client, session)
}

/// Records alice's `path` as delivered, as the drain does once HEAD found the object.
async fn deliver(spool: &Spool, path: &str, etag: &str) -> u64 {
    let vpath = VPath::resolve(path).expect("path");
    let file = spool
        .files()
        .into_iter()
        .rev()
        .find(|f| f.path == vpath && f.state == FileState::Sealed)
        .expect("a sealed file");
    let object = DeliveredObject {
        bucket: "uploads".into(),
        key: format!("site/alice/{}", vpath.as_str()),
        etag: Some(etag.into()),
        version_id: Some("v1".into()),
    };
    spool
        .record_delivered(file.id, object, |_| true)
        .await
        .expect("delivered");
    file.id
}

impl Client {
    /// Every name of a directory listing, in the order READDIR gave them.
    async fn list(&mut self, path: &str) -> Result<Vec<(String, u64)>, (StatusCode, String)> {
        let handle = self.opendir(path).await?;
        let mut names = Vec::new();
        loop {
            let id = self.id();
            match self
                .call(Packet::ReadDir(ReadDir {
                    id,
                    handle: handle.clone(),
                }))
                .await
            {
                Packet::Name(name) => names.extend(
                    name.files
                        .into_iter()
                        .map(|f| (f.filename, f.attrs.size.unwrap_or(0))),
                ),
                other => {
                    assert_eq!(status_of(other).0, StatusCode::Eof);
                    break;
                }
            }
        }
        let close = self.close(&handle);
        assert_eq!(self.status(close).await.0, StatusCode::Ok);
        Ok(names)
    }

    async fn stat_size(&mut self, path: &str) -> Result<u64, (StatusCode, String)> {
        let id = self.id();
        match self
            .call(Packet::Stat(Stat {
                id,
                path: path.into(),
            }))
            .await
        {
            Packet::Attrs(a) => Ok(a.attrs.size.unwrap_or(0)),
            other => Err(status_of(other)),
        }
    }
}

fn names(list: &[(String, u64)]) -> Vec<&str> {
    list.iter().map(|(n, _)| n.as_str()).collect()
}

#[tokio::test]
async fn a_receipt_appears_once_a_file_is_delivered_and_says_where_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = open_spool(tmp.path(), 0);
    let (mut client, _session) = start_virtual(&spool, 0).await;
    client.put("/a.txt", b"first file").await;
    client.put("/c.txt", b"not delivered").await;
    assert_eq!(client.mkdir("/d").await.0, StatusCode::Ok);
    client.put("/d/b.bin", &pattern(70_000, 3)).await;
    let (code, _) = client
        .stat_size("/.sftpgw/receipts/a.txt.json")
        .await
        .expect_err("no receipt before delivery");
    assert_eq!(code, StatusCode::NoSuchFile);

    let a = deliver(&spool, "/a.txt", "etag-a").await;
    let b = deliver(&spool, "/d/b.bin", "etag-b").await;

    let bytes = client.get("/.sftpgw/receipts/a.txt.json").await;
    let receipt: Delivery = serde_json::from_slice(&bytes).expect("a receipt is JSON");
    assert_eq!(receipt.id, a);
    assert_eq!(receipt.path, "/a.txt");
    assert_eq!(receipt.user, "alice");
    assert_eq!(
        (receipt.bucket.as_str(), receipt.key.as_str()),
        ("uploads", "site/alice/a.txt")
    );
    assert_eq!(receipt.size, 10);
    assert_eq!(
        receipt.sha256.as_deref(),
        Some(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"first file")).as_str())
    );
    assert_eq!(receipt.etag.as_deref(), Some("etag-a"));
    assert_eq!(receipt.version_id.as_deref(), Some("v1"));
    assert_eq!(receipt.box_name, spool.box_name());
    assert_eq!(
        client.stat_size("/.sftpgw/receipts/a.txt.json").await,
        Ok(bytes.len() as u64),
        "STAT's size is the receipt's"
    );
    let nested: Delivery =
        serde_json::from_slice(&client.get("/.sftpgw/receipts/d/b.bin.json").await).expect("json");
    assert_eq!((nested.id, nested.size), (b, 70_000));
    assert_eq!(
        client
            .stat_size("/.sftpgw/receipts/c.txt.json")
            .await
            .expect_err("not delivered")
            .0,
        StatusCode::NoSuchFile
    );

    // Listings: the directory in `/`, its two entries, receipts of delivered files only.
    let root = client.list("/").await.expect("ls /");
    assert_eq!(names(&root), [".sftpgw", "a.txt", "c.txt", "d"]);
    let top = client.list("/.sftpgw").await.expect("ls /.sftpgw");
    assert_eq!(names(&top), ["queue.txt", "receipts"]);
    let receipts = client.list("/.sftpgw/receipts").await.expect("ls receipts");
    assert_eq!(names(&receipts), ["a.txt.json", "d"]);
    assert_eq!(receipts[0].1, bytes.len() as u64);
    let sub = client.list("/.sftpgw/receipts/d/").await.expect("ls d");
    assert_eq!(names(&sub), ["b.bin.json"]);

    // The queue lists what is not delivered, and nothing that is.
    let queue = String::from_utf8(client.get("/.sftpgw/queue.txt").await).expect("utf-8");
    let rows: Vec<&str> = queue.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        rows[0],
        "state\tsent_bytes\tsize_bytes\teta_secs\tpath\tnote"
    );
    assert_eq!(rows[1..], ["sealed\t0\t13\t-\t/c.txt\t"], "{queue}");
}

#[tokio::test]
async fn a_receipt_is_hidden_while_a_newer_version_is_on_its_way_and_outlives_the_catalog() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let spool = Spool::open(SpoolOptions {
        delivered_retention: crate::spool::DeliveredRetention {
            files_count_max: 1,
            age_secs_max: 3600,
        },
        ..SpoolOptions::unlimited(dir)
    })
    .expect("open spool");
    let (mut client, _session) = start_virtual(&spool, 0).await;
    client.put("/a.txt", b"one").await;
    let first = deliver(&spool, "/a.txt", "e1").await;
    // Uploaded again: the old receipt would lie about what is in S3 now.
    client.put("/a.txt", b"two!").await;
    assert_eq!(
        client
            .stat_size("/.sftpgw/receipts/a.txt.json")
            .await
            .expect_err("hidden")
            .0,
        StatusCode::NoSuchFile
    );
    let second = deliver(&spool, "/a.txt", "e2").await;
    let receipt: Delivery =
        serde_json::from_slice(&client.get("/.sftpgw/receipts/a.txt.json").await).expect("json");
    assert_ne!(first, second);
    assert_eq!((receipt.id, receipt.size), (second, 4));

    // Two more deliveries push a.txt out of the catalog (retention 1 file): `ls` no longer
    // shows it, its receipt is still there by name.
    for name in ["/x.txt", "/y.txt"] {
        client.put(name, b"more").await;
        deliver(&spool, name, "e").await;
    }
    spool.prune_delivered();
    let root = client.list("/").await.expect("ls /");
    assert!(!names(&root).contains(&"a.txt"), "{root:?}");
    let receipt: Delivery =
        serde_json::from_slice(&client.get("/.sftpgw/receipts/a.txt.json").await).expect("json");
    assert_eq!(receipt.id, second, "from the delivery log, not the catalog");
}

#[tokio::test]
async fn nothing_in_the_virtual_directory_can_be_changed_and_no_file_takes_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = open_spool(tmp.path(), 0);
    let (mut client, _session) = start_virtual(&spool, 0).await;
    client.put("/a.txt", b"data").await;
    deliver(&spool, "/a.txt", "e").await;
    let denied = |(code, message): (StatusCode, String)| {
        assert_eq!(code, StatusCode::PermissionDenied, "{message}");
        assert!(message.contains("read-only"), "{message}");
    };
    for path in [
        "/.sftpgw",
        "/.sftpgw/new.txt",
        "/.sftpgw/queue.txt",
        "/.sftpgw/receipts/a.txt.json",
        "/.sftpgw/receipts/new.json",
    ] {
        denied(client.open(path, write_flags()).await.expect_err(path));
    }
    denied(client.mkdir("/.sftpgw").await);
    let remove = Packet::Remove(russh_sftp::protocol::Remove {
        id: 31,
        filename: "/.sftpgw/receipts/a.txt.json".into(),
    });
    denied(client.status(remove).await);
    let rmdir = Packet::RmDir(russh_sftp::protocol::RmDir {
        id: 32,
        path: "/.sftpgw/receipts".into(),
    });
    denied(client.status(rmdir).await);
    for (from, to) in [
        ("/a.txt", "/.sftpgw"),
        ("/a.txt", "/.sftpgw/receipts/b.json"),
        ("/.sftpgw/queue.txt", "/q.txt"),
    ] {
        let rename = Packet::Rename(Rename {
            id: 33,
            oldpath: from.into(),
            newpath: to.into(),
        });
        denied(client.status(rename).await);
    }
    let setstat = Packet::SetStat(SetStat {
        id: 34,
        path: "/.sftpgw/queue.txt".into(),
        attrs: FileAttributes::empty(),
    });
    denied(client.status(setstat).await);
    // A read handle of a receipt takes no write.
    let handle = client
        .open("/.sftpgw/receipts/a.txt.json", OpenFlags::READ)
        .await
        .expect("open receipt");
    let write = client.write(&handle, 0, b"x".to_vec());
    assert_eq!(client.status(write).await.0, StatusCode::PermissionDenied);
    // Unknown names below it are simply not there.
    assert_eq!(
        client
            .stat_size("/.sftpgw/other")
            .await
            .expect_err("none")
            .0,
        StatusCode::NoSuchFile
    );
    // The user's files are untouched.
    assert_eq!(client.stat_size("/a.txt").await, Ok(4));

    // With the directory off, the name is an ordinary one.
    let ingest = IngestBudget::default();
    let (mut plain, _s) = start_with(
        &spool,
        1024 * 1024,
        &ingest,
        crate::sftp::SessionPolicy::default(),
    );
    plain.init().await;
    plain.put("/.sftpgw", b"mine").await;
    assert_eq!(plain.get("/.sftpgw").await, b"mine");
}

#[tokio::test]
async fn the_queue_gives_each_waiting_file_an_eta_at_the_drain_rate_oldest_first() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = open_spool(tmp.path(), 0);
    // 1 000 bytes a second.
    let (mut client, _session) = start_virtual(&spool, 1_000).await;
    client.put("/first.bin", &pattern(3_000, 1)).await;
    client.put("/second.bin", &pattern(2_000, 2)).await;
    let queue = String::from_utf8(client.get("/.sftpgw/queue.txt").await).expect("utf-8");
    let rows: Vec<Vec<&str>> = queue
        .lines()
        .filter(|l| !l.starts_with('#'))
        .skip(1)
        .map(|l| l.split('\t').collect())
        .collect();
    assert_eq!(
        rows,
        [
            ["sealed", "0", "3000", "3", "/first.bin", ""],
            ["sealed", "0", "2000", "5", "/second.bin", ""],
        ],
        "{queue}"
    );
    assert!(queue.contains("draining"), "{queue}");
}

#[tokio::test]
async fn a_receipts_listing_of_many_files_goes_page_by_page_and_skips_undelivered_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = open_spool(tmp.path(), 0);
    let (mut client, _session) = start_virtual(&spool, 0).await;
    // 600 files; every third one delivered, and a run of 300 undelivered in the middle,
    // longer than one page of the catalog.
    let mut expected = Vec::new();
    for i in 0..600 {
        let name = format!("/f{i:04}.bin");
        client.put(&name, b"x").await;
        if i % 3 == 0 && !(150..450).contains(&i) {
            deliver(&spool, &name, "e").await;
            expected.push(format!("f{i:04}.bin.json"));
        }
    }
    let listed = client.list("/.sftpgw/receipts").await.expect("ls");
    assert_eq!(names(&listed), expected);
}

#[tokio::test]
async fn the_queue_lists_at_most_its_bound_and_says_how_many_more_there_are() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = open_spool(tmp.path(), 0);
    let (mut client, _session) = start_virtual(&spool, 0).await;
    let bound = crate::sftp::receipts::QUEUE_LINES_COUNT_MAX;
    for i in 0..bound + 5 {
        client.put(&format!("/q{i:05}.bin"), b"x").await;
    }
    let queue = String::from_utf8(client.get("/.sftpgw/queue.txt").await).expect("utf-8");
    let rows: Vec<&str> = queue
        .lines()
        .filter(|l| l.starts_with("sealed\t"))
        .collect();
    assert_eq!(rows.len(), bound);
    assert!(
        rows[0].ends_with("/q00000.bin\t"),
        "oldest first: {}",
        rows[0]
    );
    assert!(
        queue.contains("# ... and 5 more files not listed."),
        "{queue}"
    );
}
