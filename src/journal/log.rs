//! The journal file and its writer thread: open and repair, group commit, compaction.
//!
//! Callers enqueue without awaiting ([`Journal::submit`] is called under the caller's own
//! mutex, so the queue order is the order in which the caller applied the records). One
//! dedicated thread owns the file: it drains everything queued, writes it with one `pwrite`,
//! fsyncs once if any of it asked for durability, and only then resolves the tickets. After
//! any I/O error the journal is poisoned: a failed fsync may have dropped dirty pages, so
//! nothing later may be acknowledged as durable.
//!
//! The only part of the journal that touches files and threads; it reads frames through
//! `frame` and `replay` and never looks inside a record (`R` is opaque: postcard encodes it).

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::marker::PhantomData;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::JournalError;
use super::frame;
use super::replay::{self, Damage, HeaderError, ReplayEnd};
use crate::limits::RECORD_BYTES_MAX;
use crate::num::{u64_from_usize, usize_from_u32};

/// Submissions (batches of records) queued for the writer at most; `submit` blocks beyond.
pub const SUBMISSIONS_QUEUED_COUNT_MAX: usize = 4096;
/// The file is preallocated this far ahead of its end, so that a nearly full disk fails
/// uploads before it fails the journal.
pub const PREALLOCATION_CHUNK_BYTES: u64 = 4 * 1024 * 1024;

type Outcome = Result<(), JournalError>;

/// A hook the writer thread calls before a system call; an `Err` is taken as that call failing.
pub type FaultHook = Box<dyn FnMut() -> io::Result<()> + Send>;

/// Fault injection for tests of the journal and of its users.
///
/// The hooks run on the writer thread. Blocking in a hook holds the writer there, which lets a
/// test observe what is (not) acknowledged meanwhile.
#[derive(Default)]
pub struct Faults {
    /// Before every fsync of the journal file or of a compaction snapshot.
    pub before_sync: Option<FaultHook>,
    /// Before every write of appended frames.
    pub before_write: Option<FaultHook>,
}

/// The append-only journal of records `R`. See the module documentation of [`crate::journal`].
pub struct Journal<R> {
    path: Arc<Path>,
    sender: Option<SyncSender<Command>>,
    writer: Option<JoinHandle<()>>,
    size: Arc<AtomicU64>,
    poisoned: Arc<AtomicBool>,
    damage: Option<DamageReport>,
    // `fn() -> R`: the journal holds no `R`, so it is Send + Sync whatever `R` is.
    records: PhantomData<fn() -> R>,
}

/// Records encoded as frames, ready to append.
pub struct Frames(pub(crate) Vec<u8>);

/// What [`Journal::open`] found damaged (see `replay`): the ranges it skipped, and where it
/// kept a copy of the file as it was before it rewrote the journal without them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamageReport {
    /// The damaged ranges, in file order (offsets in the file as it was).
    pub ranges: Vec<Damage>,
    /// The damaged file, byte for byte, for diagnosis.
    pub copy: PathBuf,
    /// Records read from the file (all of those not in a damaged range).
    pub records_kept: usize,
}

/// Resolves once the submitted records are written (and fsynced, if durable).
#[must_use = "a ticket tells whether the records were written"]
pub struct Ticket {
    state: TicketState,
}

enum TicketState {
    Ready(Outcome),
    Pending {
        receiver: oneshot::Receiver<Outcome>,
        path: Arc<Path>,
    },
}

enum Command {
    Append {
        frames: Vec<u8>,
        durable: bool,
        done: oneshot::Sender<Outcome>,
    },
    /// `image` makes a whole file: header and frames; `before` runs first on the writer.
    Compact {
        image: Box<dyn Fn() -> Result<Vec<u8>, JournalError> + Send>,
        before: Box<dyn FnOnce() + Send>,
        done: oneshot::Sender<Outcome>,
    },
}

impl<R> Journal<R>
where
    R: Serialize + DeserializeOwned + Send + 'static,
{
    /// Opens or creates the journal file at `path` (its directory must exist), replays it,
    /// truncates a torn tail, and returns the journal plus the committed records in order.
    ///
    /// A new journal is created atomically (written to a temporary file, fsynced, renamed,
    /// directory fsynced), so a journal file always starts with a durable header.
    pub fn open(path: &Path) -> Result<(Journal<R>, Vec<R>), JournalError> {
        Self::open_with_faults(path, Faults::default())
    }

    /// [`Journal::open`] with fault injection in the writer thread (for tests).
    pub fn open_with_faults(
        path: &Path,
        faults: Faults,
    ) -> Result<(Journal<R>, Vec<R>), JournalError> {
        let Opened {
            file,
            len,
            records,
            damage,
        } = open_and_repair::<R>(path)?;
        let path: Arc<Path> = Arc::from(path);
        let size = Arc::new(AtomicU64::new(len));
        let poisoned = Arc::new(AtomicBool::new(false));
        let mut writer = Writer {
            path: Arc::clone(&path),
            file,
            len,
            allocated_to: len,
            preallocate: true,
            size: Arc::clone(&size),
            poisoned: None,
            poisoned_flag: Arc::clone(&poisoned),
            faults,
        };
        writer.reserve(len);
        let (sender, receiver) = sync_channel(SUBMISSIONS_QUEUED_COUNT_MAX);
        let handle = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run(&receiver))
            .map_err(|error| JournalError::io(&path, "cannot start the writer thread of", error))?;
        let journal = Journal {
            path,
            sender: Some(sender),
            writer: Some(handle),
            size,
            poisoned,
            damage,
            records: PhantomData,
        };
        Ok((journal, records))
    }

    /// Enqueues `records`, in order, without awaiting. The ticket resolves once they are
    /// written, and fsynced if `durable` (an empty `records` with `durable` is a barrier that
    /// makes everything submitted before it durable).
    ///
    /// The records of one submission are written together but are not atomic across a crash:
    /// replay may keep a prefix of them. An `Err` ticket means "not known to be durable".
    /// Blocks briefly if [`SUBMISSIONS_QUEUED_COUNT_MAX`] submissions are already queued.
    pub fn submit(&self, records: Vec<R>, durable: bool) -> Ticket {
        match Self::encode(&records) {
            Ok(frames) => self.submit_encoded(frames, durable),
            Err(error) => Ticket::ready(Err(error)),
        }
    }

    /// The frames of `records`, or why one of them cannot be journalled (a record above
    /// [`RECORD_BYTES_MAX`]): for callers that must know before they act on the records.
    pub fn encode(records: &[R]) -> Result<Frames, JournalError> {
        let mut frames = Vec::new();
        encode_frames(records, &mut frames)?;
        Ok(Frames(frames))
    }

    /// [`Journal::submit`] of records already encoded by [`Journal::encode`].
    pub fn submit_encoded(&self, frames: Frames, durable: bool) -> Ticket {
        self.send(|done| Command::Append {
            frames: frames.0,
            durable,
            done,
        })
    }

    /// Atomically replaces the journal's contents with `records` (temporary file, fsync,
    /// rename, directory fsync). Ordered with submissions: those before it are superseded by
    /// the snapshot (their tickets resolve when it is durable), those after are appended to it.
    ///
    /// The records are encoded on the writer thread, so that a caller holding a lock to take
    /// the snapshot holds it only for as long as the snapshot takes.
    pub fn compact(&self, records: Vec<R>) -> Ticket {
        self.compact_after(records, Box::new(|| {}))
    }

    /// [`Journal::compact`] that runs `before` on the writer thread first, once every record
    /// submitted before it is durable in the journal being replaced (the spool unlinks there
    /// the files those records freed).
    pub fn compact_after(&self, records: Vec<R>, before: Box<dyn FnOnce() + Send>) -> Ticket {
        let image = Box::new(move || {
            let mut image = replay::file_header().to_vec();
            encode_frames(&records, &mut image).map(|()| image)
        });
        self.send(|done| Command::Compact {
            image,
            before,
            done,
        })
    }

    fn send(&self, command: impl FnOnce(oneshot::Sender<Outcome>) -> Command) -> Ticket {
        let closed = || {
            Ticket::ready(Err(JournalError::Closed {
                path: self.path.to_path_buf(),
            }))
        };
        let Some(sender) = &self.sender else {
            return closed();
        };
        let (done, receiver) = oneshot::channel();
        let command = command(done);
        // Try first so the common case never blocks; a full queue blocks until the writer
        // catches up (bounded memory; the brief wait is acceptable for callers).
        let sent = match sender.try_send(command) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(command)) => sender.send(command).map_err(drop),
            Err(TrySendError::Disconnected(_)) => Err(()),
        };
        match sent {
            Ok(()) => Ticket {
                state: TicketState::Pending {
                    receiver,
                    path: Arc::clone(&self.path),
                },
            },
            Err(()) => closed(),
        }
    }
}

impl<R> Journal<R> {
    /// The damage replay skipped when this journal was opened, if any.
    pub fn damage(&self) -> Option<&DamageReport> {
        self.damage.as_ref()
    }

    /// Bytes in the current journal file (for deciding when to compact).
    pub fn size_bytes(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True once an I/O error has made the journal refuse every later submission.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Relaxed)
    }
}

impl<R> Drop for Journal<R> {
    /// Closes the queue and joins the writer, which first finishes everything queued.
    fn drop(&mut self) {
        drop(self.sender.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(path = %self.path.display(), "journal writer thread panicked");
        }
    }
}

impl Ticket {
    fn ready(outcome: Outcome) -> Self {
        Self {
            state: TicketState::Ready(outcome),
        }
    }

    /// Waits until the records are written (and fsynced, if durable).
    pub async fn wait(self) -> Result<(), JournalError> {
        match self.state {
            TicketState::Ready(outcome) => outcome,
            TicketState::Pending { receiver, path } => receiver.await.unwrap_or_else(|_| {
                Err(JournalError::Closed {
                    path: path.to_path_buf(),
                })
            }),
        }
    }

    /// [`Ticket::wait`] for synchronous callers. On an async runtime's thread (a synchronous
    /// start-up step such as `Spool::open`) it blocks that thread, waiting from a helper thread
    /// because tokio refuses blocking receives on its own.
    pub fn wait_blocking(self) -> Result<(), JournalError> {
        match self.state {
            TicketState::Ready(outcome) => outcome,
            TicketState::Pending { receiver, path } => {
                let closed = || {
                    Err(JournalError::Closed {
                        path: path.to_path_buf(),
                    })
                };
                let received = if tokio::runtime::Handle::try_current().is_ok() {
                    std::thread::scope(|scope| {
                        scope
                            .spawn(|| receiver.blocking_recv())
                            .join()
                            .unwrap_or_else(|_| Ok(closed()))
                    })
                } else {
                    receiver.blocking_recv()
                };
                received.unwrap_or_else(|_| closed())
            }
        }
    }
}

/// Appends the frames of `records` to `out`, refusing records above [`RECORD_BYTES_MAX`].
fn encode_frames<R: Serialize>(records: &[R], out: &mut Vec<u8>) -> Result<(), JournalError> {
    for record in records {
        let payload = postcard::to_allocvec(record).map_err(|error| JournalError::Encode {
            message: error.to_string(),
        })?;
        if payload.len() > usize_from_u32(RECORD_BYTES_MAX) {
            return Err(JournalError::RecordTooLarge {
                bytes: payload.len(),
            });
        }
        frame::encode_into(&payload, out);
    }
    Ok(())
}

/// A journal file opened and repaired, with its records.
struct Opened<R> {
    file: File,
    len: u64,
    records: Vec<R>,
    damage: Option<DamageReport>,
}

/// Opens the journal at `path` (creating it if missing), replays it, cuts a torn tail, and
/// rewrites it without damaged ranges after keeping a copy of it as it was.
fn open_and_repair<R: DeserializeOwned>(path: &Path) -> Result<Opened<R>, JournalError> {
    let temp = temp_path(path);
    match fs::remove_file(&temp) {
        Ok(()) => tracing::info!(path = %temp.display(), "removed an unfinished compaction"),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(JournalError::io(&temp, "cannot remove", error)),
    }
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let mut file = write_snapshot(path, &replay::file_header(), &mut Faults::default())?;
            // Read it from the start below, not from where the header was written.
            file.rewind()
                .map_err(|error| JournalError::io(path, "cannot read", error))?;
            file
        }
        Err(error) => return Err(JournalError::io(path, "cannot open", error)),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|error| JournalError::io(path, "cannot read", error))?;
    let replayed = replay::decode_all::<R>(&bytes).map_err(|error| match error {
        HeaderError::NotAJournal => JournalError::NotAJournal {
            path: path.to_path_buf(),
        },
        HeaderError::UnsupportedVersion { found } => JournalError::UnsupportedVersion {
            path: path.to_path_buf(),
            found,
        },
    })?;
    match replayed.end {
        ReplayEnd::Clean => {}
        ReplayEnd::NoHeader => {
            // Only a torn creation leaves a header prefix; nothing in it was ever committed.
            tracing::warn!(path = %path.display(), "journal without a complete header; recreating it");
            file = write_snapshot(path, &replay::file_header(), &mut Faults::default())?;
            return Ok(Opened {
                file,
                len: u64_from_usize(replay::FILE_HEADER_BYTES),
                records: Vec::new(),
                damage: None,
            });
        }
        ReplayEnd::Torn(reason) => {
            tracing::warn!(
                path = %path.display(),
                kept_records = replayed.records.len(),
                dropped_bytes = bytes.len() - replayed.valid_len,
                %reason,
                "journal ends in a torn or corrupt frame; truncating it"
            );
            if replayed.damage.is_empty() {
                file.set_len(u64_from_usize(replayed.valid_len))
                    .and_then(|()| file.sync_all())
                    .map_err(|error| {
                        JournalError::io(path, "cannot truncate the torn tail of", error)
                    })?;
            }
        }
    }
    if replayed.damage.is_empty() {
        return Ok(Opened {
            file,
            len: u64_from_usize(replayed.valid_len),
            records: replayed.records,
            damage: None,
        });
    }
    let report = keep_damaged_copy(path, &bytes, &replayed.damage, replayed.records.len())?;
    let image = without_damage(&bytes[..replayed.valid_len], &replayed.damage);
    let file = write_snapshot(path, &image, &mut Faults::default())?;
    Ok(Opened {
        file,
        len: u64_from_usize(image.len()),
        records: replayed.records,
        damage: Some(report),
    })
}

/// Writes `bytes` (the journal as read) beside the journal as `<name>.damaged-<unix seconds>`,
/// durably, and logs each damaged range once.
fn keep_damaged_copy(
    path: &Path,
    bytes: &[u8],
    damage: &[Damage],
    records_kept: usize,
) -> Result<DamageReport, JournalError> {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".damaged-{seconds}"));
    let copy = path.with_file_name(name);
    File::create(&copy)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .map_err(|error| JournalError::io(&copy, "cannot keep the damaged journal as", error))?;
    sync_parent_dir(&copy)?;
    for range in damage {
        tracing::error!(
            path = %path.display(),
            offset = range.offset,
            bytes = range.len,
            reason = %range.reason,
            copy = %copy.display(),
            "journal damaged: skipped to the next good frame; every record after it is kept"
        );
    }
    Ok(DamageReport {
        ranges: damage.to_vec(),
        copy,
        records_kept,
    })
}

/// `bytes` without the damaged ranges: the good frames, in order, after the header.
fn without_damage(bytes: &[u8], damage: &[Damage]) -> Vec<u8> {
    let mut image = Vec::with_capacity(bytes.len());
    let mut from = 0;
    for range in damage {
        image.extend_from_slice(&bytes[from..range.offset]);
        from = range.offset + range.len;
    }
    image.extend_from_slice(&bytes[from..]);
    image
}

/// Writes `image` as the whole new content of `path`, atomically and durably: temporary file,
/// fsync, rename over `path`, fsync of the directory. Returns the new file, open read-write.
fn write_snapshot(path: &Path, image: &[u8], faults: &mut Faults) -> Result<File, JournalError> {
    let file = write_temp(path, image, faults)?;
    install_temp(path)?;
    Ok(file)
}

/// Writes and fsyncs `image` as `<path>.tmp`. On failure (a full disk, say) the temporary file
/// is removed and `path` is untouched: the journal goes on as it was.
fn write_temp(path: &Path, image: &[u8], faults: &mut Faults) -> Result<File, JournalError> {
    let temp = temp_path(path);
    let written = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(|error| JournalError::io(&temp, "cannot create", error))
        .and_then(|mut file| {
            file.write_all(image)
                .map_err(|error| JournalError::io(&temp, "cannot write", error))?;
            run_hook(&mut faults.before_sync)
                .and_then(|()| file.sync_all())
                .map_err(|error| JournalError::io(&temp, "cannot fsync", error))?;
            Ok(file)
        });
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

/// Renames `<path>.tmp` over `path` and makes the rename durable. A failure here leaves it
/// unknown which file a crash would keep: the journal must stop.
fn install_temp(path: &Path) -> Result<(), JournalError> {
    fs::rename(temp_path(path), path)
        .map_err(|error| JournalError::io(path, "cannot rename over", error))?;
    sync_parent_dir(path)
}

/// `<path>.tmp`: the compaction snapshot before it is renamed over the journal.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".tmp");
    PathBuf::from(name)
}

fn sync_parent_dir(path: &Path) -> Result<(), JournalError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| JournalError::io(dir, "cannot fsync directory", error))
}

fn run_hook(hook: &mut Option<FaultHook>) -> io::Result<()> {
    hook.as_mut().map_or(Ok(()), |hook| hook())
}

/// The state owned by the writer thread.
struct Writer {
    path: Arc<Path>,
    file: File,
    /// End of the good data; appends go here.
    len: u64,
    /// The file's blocks are preallocated up to here.
    allocated_to: u64,
    /// Cleared when the file system does not support preallocation.
    preallocate: bool,
    size: Arc<AtomicU64>,
    /// The first I/O error; once set, every command fails with it.
    poisoned: Option<JournalError>,
    poisoned_flag: Arc<AtomicBool>,
    faults: Faults,
}

impl Writer {
    /// Serves commands until every `Journal` handle is gone and the queue is empty.
    fn run(&mut self, receiver: &Receiver<Command>) {
        while let Ok(first) = receiver.recv() {
            let mut batch = vec![first];
            // Group commit: take everything already queued, bounded so one round cannot grow
            // forever while submitters keep up.
            while batch.len() < SUBMISSIONS_QUEUED_COUNT_MAX {
                match receiver.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
    }

    fn commit(&mut self, batch: Vec<Command>) {
        let mut frames = Vec::new();
        let mut durable = false;
        let mut waiting = Vec::new();
        for command in batch {
            match command {
                Command::Append {
                    frames: more,
                    durable: more_durable,
                    done,
                } => {
                    frames.extend_from_slice(&more);
                    durable |= more_durable;
                    waiting.push(done);
                }
                Command::Compact {
                    image,
                    before,
                    done,
                } => {
                    // Records queued before the snapshot go into this journal first, durably:
                    // `before` may unlink files they free, which a crash before the snapshot
                    // is in place must not find missing.
                    let flushed = self.guarded(|writer| writer.append(&frames, true));
                    frames.clear();
                    durable = false;
                    resolve(waiting.drain(..), &flushed);
                    let outcome = match flushed {
                        Ok(()) => self.compact(&*image, before),
                        Err(error) => Err(error),
                    };
                    let _ = done.send(outcome);
                }
            }
        }
        if waiting.is_empty() {
            return;
        }
        let outcome = self.guarded(|writer| writer.append(&frames, durable));
        resolve(waiting.drain(..), &outcome);
    }

    /// Replaces the journal with the snapshot `image` makes, after `before` and a `syncfs`
    /// (whatever the dropped records made durable only through the journal, such as small
    /// files sealed inline and the unlinks of dropped versions, must be on disk by itself
    /// first). A failure before the snapshot is in place postpones the compaction: the journal
    /// is as it was, appends go on into it, and the spool asks again once it has grown more.
    fn compact(
        &mut self,
        image: &dyn Fn() -> Result<Vec<u8>, JournalError>,
        before: Box<dyn FnOnce() + Send>,
    ) -> Outcome {
        before();
        let synced = rustix::fs::syncfs(&self.file).map_err(|error| {
            JournalError::io(&self.path, "cannot sync the file system of", error.into())
        });
        let written = synced
            .and_then(|()| image())
            .and_then(|image| write_temp(&self.path, &image, &mut self.faults).map(|f| (f, image)));
        match written {
            Ok((file, image)) => self.guarded(|writer| writer.install(file, &image)),
            Err(error) => {
                tracing::warn!(%error, "journal compaction postponed; the journal keeps growing until it can run");
                Err(error)
            }
        }
    }

    /// Runs `operation` unless poisoned; poisons the journal if it fails.
    fn guarded(&mut self, operation: impl FnOnce(&mut Self) -> Outcome) -> Outcome {
        if let Some(first) = &self.poisoned {
            return Err(JournalError::Poisoned {
                path: self.path.to_path_buf(),
                first: Box::new(first.clone()),
            });
        }
        let outcome = operation(self);
        if let Err(error) = &outcome {
            tracing::error!(%error, "journal poisoned: no later record will be acknowledged");
            self.poisoned = Some(error.clone());
            self.poisoned_flag.store(true, Ordering::Relaxed);
        }
        outcome
    }

    fn append(&mut self, frames: &[u8], durable: bool) -> Outcome {
        let path = Arc::clone(&self.path);
        if !frames.is_empty() {
            let end = self.len + u64_from_usize(frames.len());
            self.reserve(end);
            run_hook(&mut self.faults.before_write)
                .and_then(|()| self.file.write_all_at(frames, self.len))
                .map_err(|error| JournalError::io(&path, "cannot write", error))?;
            self.len = end;
            self.size.store(end, Ordering::Relaxed);
        }
        if durable {
            run_hook(&mut self.faults.before_sync)
                .and_then(|()| self.file.sync_data())
                .map_err(|error| JournalError::io(&path, "cannot fsync", error))?;
        }
        Ok(())
    }

    /// Puts the fsynced snapshot `file` (of `image`) in place of the journal.
    fn install(&mut self, file: File, image: &[u8]) -> Outcome {
        install_temp(&self.path)?;
        self.file = file;
        self.len = u64_from_usize(image.len());
        self.allocated_to = self.len;
        self.size.store(self.len, Ordering::Relaxed);
        self.reserve(self.len);
        Ok(())
    }

    /// Preallocates blocks past `end` (without changing the file size) a chunk at a time.
    /// Best effort: the write itself reports a real lack of space.
    fn reserve(&mut self, end: u64) {
        if !self.preallocate || end < self.allocated_to {
            return;
        }
        let target = (end / PREALLOCATION_CHUNK_BYTES + 1) * PREALLOCATION_CHUNK_BYTES;
        let (Ok(offset), Ok(len)) = (
            i64::try_from(self.allocated_to),
            i64::try_from(target - self.allocated_to),
        ) else {
            return;
        };
        let flags = nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match nix::fcntl::fallocate(&self.file, flags, offset, len) {
            Ok(()) => self.allocated_to = target,
            Err(nix::errno::Errno::EOPNOTSUPP) => self.preallocate = false,
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "cannot preallocate the journal");
            }
        }
    }
}

fn resolve(waiting: impl Iterator<Item = oneshot::Sender<Outcome>>, outcome: &Outcome) {
    for done in waiting {
        // A dropped ticket is fine: its owner stopped caring about the outcome.
        let _ = done.send(outcome.clone());
    }
}
