//! The engines are interchangeable: the same random writes through both give the same file,
//! and start-up falls back to pwrite (saying why) when io_uring is refused.

use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use proptest::prelude::*;
use rand::{RngCore, SeedableRng};

use super::*;
use crate::spool::test_files::new_file;

/// The io_uring engine, or `None` (said loudly) where this machine refuses io_uring.
pub(crate) fn uring_or_skip() -> Option<UringEngine> {
    match UringEngine::start() {
        Ok(engine) => Some(engine),
        Err(err) => {
            eprintln!("SKIPPED: io_uring is unavailable on this machine: {err}");
            None
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn bytes_from_seed(seed: u64, len: usize) -> Bytes {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    Bytes::from(data)
}

/// One step of a random write stream.
#[derive(Debug, Clone)]
struct Step {
    offset: u64,
    len: usize,
    seed: u64,
    fsync: bool,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            0u64..512 * 1024,
            0usize..64 * 1024,
            any::<u64>(),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(offset, len, seed, fsync)| Step {
                offset,
                len,
                seed,
                fsync,
            }),
        1..48,
    )
}

/// Applies `steps` through `engine` and to `model`.
async fn apply(engine: &SpoolEngine, file: &Arc<File>, steps: &[Step]) -> io::Result<()> {
    for step in steps {
        let data = bytes_from_seed(step.seed, step.len);
        engine.write_at(file, step.offset, data).await?;
        if step.fsync {
            engine.fsync(file, SyncScope::Data).await?;
        }
    }
    engine.fsync(file, SyncScope::All).await
}

fn model(steps: &[Step]) -> Vec<u8> {
    let mut model = Vec::new();
    for step in steps {
        let data = bytes_from_seed(step.seed, step.len);
        if data.is_empty() {
            continue;
        }
        let (start, end) = (step.offset as usize, step.offset as usize + data.len());
        if model.len() < end {
            model.resize(end, 0);
        }
        model[start..end].copy_from_slice(&data);
    }
    model
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn both_engines_write_the_same_random_stream_into_identical_files(steps in steps()) {
        let Some(uring) = uring_or_skip() else { return Ok(()) };
        let engines = [SpoolEngine::Pwrite(PwriteEngine), SpoolEngine::IoUring(uring)];
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = runtime();
        let mut contents = Vec::new();
        for engine in &engines {
            let file = new_file(&dir, engine.name());
            rt.block_on(apply(engine, &file, &steps)).expect("writes succeed");
            contents.push(std::fs::read(dir.path().join(engine.name())).expect("read back"));
        }
        let expected = model(&steps);
        prop_assert!(contents[0] == expected, "pwrite file differs from the model");
        prop_assert!(contents[1] == expected, "io_uring file differs from the model");
    }
}

/// Collects what tracing writes while a closure runs.
fn captured_log(run: impl FnOnce()) -> String {
    let buffer = Arc::new(Mutex::new(Vec::<u8>::new()));
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let sink = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || Sink(sink.clone()))
        .finish();
    tracing::subscriber::with_default(subscriber, run);
    let text = buffer.lock().expect("log buffer").clone();
    String::from_utf8(text).expect("utf-8 log")
}

fn refused(errno: nix::errno::Errno) -> impl FnOnce() -> Result<UringEngine, ProbeError> {
    move || {
        Err(ProbeError::Setup(io::Error::from_raw_os_error(
            errno as i32,
        )))
    }
}

#[test]
fn auto_falls_back_to_pwrite_with_one_log_line_naming_the_cause() {
    use nix::errno::Errno;
    for (errno, cause) in [
        (Errno::EPERM, "seccomp"),
        (Errno::ENOSYS, "CONFIG_IO_URING"),
        (Errno::ENOMEM, "RLIMIT_MEMLOCK"),
        (Errno::EINVAL, "too old"),
    ] {
        let mut selected = None;
        let log = captured_log(|| {
            selected = Some(SpoolEngine::select_with(EngineChoice::Auto, refused(errno)));
        });
        let engine = selected.expect("ran").expect("auto never fails");
        assert_eq!(engine.name(), "pwrite");
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 1, "one log line, got {log:?}");
        for part in ["WARN", "pwrite", &format!("{errno:?}"), cause] {
            assert!(lines[0].contains(part), "{:?} lacks {part:?}", lines[0]);
        }
    }
}

#[test]
fn forced_io_uring_refuses_to_start_and_says_why() {
    let err = SpoolEngine::select_with(EngineChoice::IoUring, refused(nix::errno::Errno::EPERM))
        .expect_err("no fallback when forced");
    let message = err.to_string();
    for part in [
        "spool.engine",
        "io_uring",
        "EPERM",
        "kernel.io_uring_disabled",
    ] {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
}

#[test]
fn forced_pwrite_never_probes_io_uring() {
    let engine = SpoolEngine::select_with(EngineChoice::Pwrite, || -> Result<UringEngine, _> {
        panic!("probed although pwrite was configured")
    })
    .expect("pwrite");
    assert_eq!(engine.name(), "pwrite");
}

#[test]
fn auto_picks_io_uring_where_the_kernel_allows_it() {
    if uring_or_skip().is_none() {
        return;
    }
    let engine = SpoolEngine::select(EngineChoice::Auto).expect("auto");
    assert_eq!(engine.name(), "io_uring");
}

#[tokio::test]
async fn a_write_error_reaches_the_caller_from_both_engines() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ro"), b"x").expect("create");
    let read_only = Arc::new(File::open(dir.path().join("ro")).expect("open"));
    let mut engines = vec![SpoolEngine::Pwrite(PwriteEngine)];
    engines.extend(uring_or_skip().map(SpoolEngine::IoUring));
    for engine in &engines {
        let err = engine
            .write_at(&read_only, 0, Bytes::from_static(b"data"))
            .await
            .expect_err("writing a read-only file fails");
        assert_eq!(
            err.raw_os_error(),
            Some(nix::errno::Errno::EBADF as i32),
            "{}: {err}",
            engine.name()
        );
    }
}
