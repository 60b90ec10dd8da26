//! The io_uring engine: completions handled right (short writes, interrupted writes, failed
//! fsyncs), an fsync ordered after the writes submitted before it, and many requests at once.

use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::spool::test_files::new_file;

/// A request and the receiver of its answer.
fn request(file: &Arc<File>, op: Op) -> (Request, oneshot::Receiver<io::Result<()>>) {
    let (reply, answer) = oneshot::channel();
    let request = Request {
        file: file.clone(),
        op,
        reply,
    };
    (request, answer)
}

fn write(offset: u64, data: &'static [u8]) -> Op {
    Op::Write {
        offset,
        data: Bytes::from_static(data),
    }
}

#[test]
fn a_short_write_is_resubmitted_for_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = new_file(&dir, "f");
    let (req, _answer) = request(&file, write(10, b"0123456789"));
    let Progress::Again(req) = progress(req, 4) else {
        panic!("a short write must continue");
    };
    match &req.op {
        Op::Write { offset, data } => {
            assert_eq!((*offset, &data[..]), (14, &b"456789"[..]));
        }
        Op::Fsync(_) => panic!("became an fsync"),
    }
    assert!(matches!(progress(req, 6), Progress::Done(_, Ok(()))));
}

#[test]
fn an_interrupted_write_is_resubmitted_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = new_file(&dir, "f");
    for errno in [Errno::EINTR, Errno::EAGAIN] {
        let (req, _answer) = request(&file, write(3, b"abc"));
        let Progress::Again(req) = progress(req, -(errno as i32)) else {
            panic!("{errno:?} must be retried");
        };
        assert!(matches!(&req.op, Op::Write { offset: 3, data } if &data[..] == b"abc"));
    }
}

#[test]
fn write_errors_and_empty_writes_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = new_file(&dir, "f");
    let (req, _answer) = request(&file, write(0, b"abc"));
    match progress(req, -(Errno::ENOSPC as i32)) {
        Progress::Done(_, Err(err)) => assert_eq!(err.raw_os_error(), Some(Errno::ENOSPC as i32)),
        _ => panic!("ENOSPC must be reported"),
    }
    let (req, _answer) = request(&file, write(0, b"abc"));
    match progress(req, 0) {
        Progress::Done(_, Err(err)) => assert_eq!(err.kind(), io::ErrorKind::WriteZero),
        _ => panic!("a write of nothing must fail, not loop"),
    }
}

#[test]
fn a_failed_fsync_is_reported_never_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = new_file(&dir, "f");
    for errno in [Errno::EIO, Errno::EINTR] {
        let (req, _answer) = request(&file, Op::Fsync(SyncScope::All));
        match progress(req, -(errno as i32)) {
            Progress::Done(_, Err(err)) => assert_eq!(err.raw_os_error(), Some(errno as i32)),
            _ => panic!("a failed fsync ({errno:?}) must be reported as it is"),
        }
    }
}

#[test]
fn an_fsync_waits_for_the_writes_submitted_before_it_and_later_requests_queue_behind_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (new_file(&dir, "a"), new_file(&dir, "b"));
    let mut barriers = FileBarriers::default();
    let started = |r: Option<Request>| r.is_some();
    assert!(started(barriers.admit(request(&a, write(0, b"1")).0)));
    assert!(started(barriers.admit(request(&a, write(1, b"2")).0)));
    // The fsync must not overtake the two writes in the kernel, nor a write overtake it.
    assert!(!started(
        barriers.admit(request(&a, Op::Fsync(SyncScope::Data)).0)
    ));
    assert!(!started(barriers.admit(request(&a, write(2, b"3")).0)));
    assert!(!started(
        barriers.admit(request(&a, Op::Fsync(SyncScope::All)).0)
    ));
    // Another file is not held up.
    assert!(started(
        barriers.admit(request(&b, Op::Fsync(SyncScope::All)).0)
    ));

    let fd = a.as_raw_fd();
    assert!(
        barriers.write_done(fd).is_empty(),
        "one write still in flight"
    );
    let ready = barriers.write_done(fd);
    let kinds: Vec<bool> = ready.iter().map(|r| r.op.is_write()).collect();
    // The first fsync and the write after it start; the second fsync waits for that write.
    assert_eq!(kinds, [false, true]);
    let ready = barriers.write_done(fd);
    assert_eq!(ready.len(), 1);
    assert!(!ready[0].op.is_write());
    assert!(barriers.is_idle(), "idle files are forgotten");
}

fn pattern(file_index: usize, chunk: usize, len: usize) -> Bytes {
    let byte = (file_index * 31 + chunk * 7) as u8;
    Bytes::from(vec![byte; len])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_writes_and_fsyncs_all_land_where_they_belong() {
    let Some(engine) = crate::spool::engine::tests::uring_or_skip() else {
        return;
    };
    const FILES: usize = 4;
    const CHUNKS: usize = 300;
    const CHUNK_BYTES: usize = 4096 + 17;
    let engine = Arc::new(engine);
    let dir = tempfile::tempdir().expect("tempdir");
    let files: Vec<Arc<File>> = (0..FILES).map(|i| new_file(&dir, &i.to_string())).collect();
    // More requests than the ring holds and the channel queues: back-pressure is exercised.
    const _: () = assert!(FILES * CHUNKS > REQUESTS_HELD_COUNT_MAX + REQUESTS_QUEUED_COUNT_MAX);
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..CHUNKS {
        for (index, file) in files.iter().enumerate() {
            let (writer, target) = (engine.clone(), file.clone());
            tasks.spawn(async move {
                let offset = (chunk * CHUNK_BYTES) as u64;
                writer
                    .write_at(&target, offset, pattern(index, chunk, CHUNK_BYTES))
                    .await
            });
            if chunk % 50 == 49 {
                let (engine, file) = (engine.clone(), file.clone());
                tasks.spawn(async move { engine.fsync(&file, SyncScope::Data).await });
            }
        }
    }
    let finished = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(done) = tasks.join_next().await {
            done.expect("task").expect("write or fsync succeeds");
        }
    })
    .await;
    finished.expect("every request is answered");
    for (index, file) in files.iter().enumerate() {
        engine
            .fsync(file, SyncScope::All)
            .await
            .expect("final fsync");
        let content = std::fs::read(dir.path().join(index.to_string())).expect("read");
        assert_eq!(content.len(), CHUNKS * CHUNK_BYTES);
        for (chunk, got) in content.chunks(CHUNK_BYTES).enumerate() {
            assert!(
                got == &pattern(index, chunk, CHUNK_BYTES)[..],
                "file {index} chunk {chunk} differs"
            );
        }
    }
}

#[tokio::test]
async fn a_write_of_several_mebibytes_is_written_whole() {
    let Some(engine) = crate::spool::engine::tests::uring_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = new_file(&dir, "f");
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 5)
        .map(|i: u32| (i % 251) as u8)
        .collect();
    engine
        .write_at(&file, 7, Bytes::from(data.clone()))
        .await
        .expect("write");
    let content = std::fs::read(dir.path().join("f")).expect("read");
    assert_eq!(&content[7..], &data[..]);
}

#[test]
fn dropping_the_engine_ends_its_thread_after_answering_what_it_held() {
    let Some(mut engine) = crate::spool::engine::tests::uring_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = new_file(&dir, "f");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(engine.write_at(&file, 0, Bytes::from_static(b"hello")))
        .expect("write");
    let thread = engine.take_thread();
    drop(engine);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(thread.join().is_ok());
    });
    let joined = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the ring thread exits after the engine is dropped");
    assert!(joined, "the ring thread ended cleanly");
    assert_eq!(std::fs::read(dir.path().join("f")).expect("read"), b"hello");
}
