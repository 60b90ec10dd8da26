//! The read-only directory in every user's `/` (`[sftp] virtual_dir`, `.sftpgw` by default)
//! that shows the uploader what became of their files, with any SFTP client:
//!
//! ```text
//! /.sftpgw/queue.txt               the user's files not in S3 yet: state, bytes sent, ETA
//! /.sftpgw/receipts/<dir>/         one per directory of the user's namespace
//! /.sftpgw/receipts/<path>.json    exists once <path> is delivered: bucket, key, size, sha256,
//!                                  ETag, version id, sealed and delivered times, box
//! ```
//!
//! A receipt comes from the delivery log (`spool::deliveries`), so it outlives the catalog's
//! delivered files; a receipt of a path whose newer version is still on its way is hidden
//! until that version is delivered too, so a script that uploads and then waits for the
//! receipt never reads the previous version's. A listing of `receipts/<dir>/` shows the
//! subdirectories and the delivered files the catalog still lists (as `ls` does); older
//! receipts stay readable by name for as long as the log holds them.
//!
//! Nothing here can be written, renamed or removed, and no user file or directory may take the
//! directory's name: each such request gets SSH_FX_PERMISSION_DENIED with a message.
//!
//! Reads the catalog and the delivery log through `spool` and may change nothing in it; it
//! knows the drain only by the rate its [`VirtualDir`] is handed.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::session::Ctx;
use crate::num::{f64_from_u64, u64_from_usize};
use crate::spool::catalog::FileRecord;
use crate::spool::deliveries::Delivery;
use crate::spool::{Entry, EntryKind, FileState, FsError, FsErrorKind, Spool, VPath};

const RECEIPTS: &str = "receipts";
const QUEUE: &str = "queue.txt";
const RECEIPT_SUFFIX: &str = ".json";

/// Lines of files `queue.txt` lists at most; a line says how many more there are.
pub const QUEUE_LINES_COUNT_MAX: usize = 1_000;
/// Files of the queue (all users) `queue.txt` looks at at most, so that rendering it costs
/// the same with a million files waiting; beyond, the file says where it stopped.
pub const QUEUE_FILES_SCANNED_MAX: usize = 100_000;
/// Catalog records taken per lock while scanning the queue.
const QUEUE_PAGE_FILES_COUNT: usize = 4_096;
/// Entries of a user's directory one READDIR of `receipts/<dir>/` looks at.
pub const RECEIPTS_PAGE_ENTRIES_COUNT: usize = 256;

/// `[sftp] virtual_dir` for the sessions: its name, and the drain's rate for ETAs.
#[derive(Debug, Clone)]
pub struct VirtualDir {
    name: Arc<str>,
    drain_rate: Arc<AtomicU64>,
}

impl VirtualDir {
    /// `drain_rate` holds the drain's bytes per second (the status meter's), kept up to date
    /// by whoever samples it.
    pub fn new(name: &str, drain_rate: Arc<AtomicU64>) -> VirtualDir {
        VirtualDir {
            name: Arc::from(name),
            drain_rate,
        }
    }

    /// The directory's name in `/` (`sftp.virtual_dir`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Where in the virtual directory a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Place {
    /// The directory itself.
    Top,
    /// `receipts/` followed by this path (the root for `receipts` itself).
    Receipts(VPath),
    Queue,
    /// Any other name below the directory: there is none.
    Unknown,
}

/// What a path below `receipts/` names.
enum Target {
    /// A directory of the user's (its receipts' directory).
    Dir(VPath),
    /// The receipt of this file of the user's.
    Receipt(VPath),
}

/// The place of `path` in the session's virtual directory; `None` for the user's own names
/// (or when the directory is off).
pub(super) fn place(ctx: &Ctx, path: &VPath) -> Option<Place> {
    let dir = ctx.virtual_dir.as_ref()?;
    let rest = path.as_str().strip_prefix(dir.name())?;
    let rest = match rest {
        "" => return Some(Place::Top),
        r => r.strip_prefix('/')?,
    };
    Some(match rest.split_once('/') {
        None if rest == QUEUE => Place::Queue,
        None if rest == RECEIPTS => Place::Receipts(VPath::root()),
        Some((RECEIPTS, below)) => Place::Receipts(VPath::from_normalized(below.to_owned())),
        _ => Place::Unknown,
    })
}

/// Refuses a request that would create, change or remove anything at `path` if it lies in
/// the virtual directory (or is its name).
pub(super) fn refuse_change(ctx: &Ctx, path: &VPath) -> Result<(), FsError> {
    match (place(ctx, path), &ctx.virtual_dir) {
        (Some(_), Some(dir)) => Err(FsError::new(
            FsErrorKind::PermissionDenied,
            format!(
                "{}: /{} is the box's read-only view of receipts and queue; \
                 nothing in it can be written, renamed or removed, and no file may take its name",
                crate::names::escaped(&path.display()),
                crate::names::escaped(dir.name())
            ),
        )),
        _ => Ok(()),
    }
}

fn not_found(path: &VPath, why: &str) -> FsError {
    FsError::new(
        FsErrorKind::NotFound,
        format!("{}: {why}", crate::names::escaped(&path.display())),
    )
}

fn dir_entry(name: &str) -> Entry {
    Entry {
        name: name.to_owned(),
        kind: EntryKind::Dir,
        size: 0,
        mtime_unix: crate::spool::now_unix(),
        state: None,
    }
}

fn file_entry(name: String, size: usize, mtime_unix: u64) -> Entry {
    Entry {
        name,
        kind: EntryKind::File,
        size: u64_from_usize(size),
        mtime_unix,
        state: None,
    }
}

/// What `below` (a path below `receipts/`) names, if anything.
fn target(ctx: &Ctx, below: &VPath) -> Option<Target> {
    if below.is_root() {
        return Some(Target::Dir(VPath::root()));
    }
    if let Ok(entry) = ctx.spool.stat(&ctx.user, below)
        && entry.kind == EntryKind::Dir
    {
        return Some(Target::Dir(below.clone()));
    }
    let file = below.as_str().strip_suffix(RECEIPT_SUFFIX)?;
    (!file.is_empty() && !file.ends_with('/'))
        .then(|| Target::Receipt(VPath::from_normalized(file.to_owned())))
}

/// A receipt as its file holds it: pretty JSON and a newline.
pub fn receipt_bytes(delivery: &Delivery) -> Bytes {
    let mut json = serde_json::to_vec_pretty(delivery).unwrap_or_default();
    json.push(b'\n');
    Bytes::from(json)
}

fn delivered_unix(delivery: &Delivery) -> u64 {
    delivery
        .delivered_at
        .parse::<jiff::Timestamp>()
        .ok()
        .and_then(|t| u64::try_from(t.as_second()).ok())
        .unwrap_or(0)
}

async fn receipt_of(ctx: &Ctx, file: &VPath, asked: &VPath) -> Result<Delivery, FsError> {
    ctx.spool
        .receipts(&ctx.user, vec![file.clone()])
        .await?
        .pop()
        .flatten()
        .ok_or_else(|| {
            not_found(
                asked,
                "no receipt: the file is not delivered (yet), or the delivery log no longer \
                 holds it; see queue.txt",
            )
        })
}

/// STAT/LSTAT of a virtual path.
pub(super) async fn stat(ctx: &Ctx, path: &VPath, place: Place) -> Result<Entry, FsError> {
    let name = path.name();
    match place {
        Place::Top => Ok(dir_entry(name)),
        Place::Queue => {
            let text = queue_text(ctx).await?;
            Ok(file_entry(
                name.to_owned(),
                text.len(),
                crate::spool::now_unix(),
            ))
        }
        Place::Receipts(below) => match target(ctx, &below) {
            Some(Target::Dir(_)) => Ok(dir_entry(name)),
            Some(Target::Receipt(file)) => {
                let delivery = receipt_of(ctx, &file, path).await?;
                let size = receipt_bytes(&delivery).len();
                Ok(file_entry(name.to_owned(), size, delivered_unix(&delivery)))
            }
            None => Err(not_found(path, "no such receipt or directory")),
        },
        Place::Unknown => Err(not_found(path, "no such file")),
    }
}

/// The bytes and time of a virtual file opened for reading: fixed at OPEN, as a snapshot.
pub(super) async fn open_read(
    ctx: &Ctx,
    path: &VPath,
    place: Place,
) -> Result<(Bytes, u64), FsError> {
    let is_dir = || FsError::new(FsErrorKind::IsADirectory, "is a directory");
    match place {
        Place::Top => Err(is_dir()),
        Place::Queue => Ok((
            Bytes::from(queue_text(ctx).await?),
            crate::spool::now_unix(),
        )),
        Place::Receipts(below) => match target(ctx, &below) {
            Some(Target::Dir(_)) => Err(is_dir()),
            Some(Target::Receipt(file)) => {
                let delivery = receipt_of(ctx, &file, path).await?;
                Ok((receipt_bytes(&delivery), delivered_unix(&delivery)))
            }
            None => Err(not_found(path, "no such receipt")),
        },
        Place::Unknown => Err(not_found(path, "no such file")),
    }
}

/// What an OPENDIR of a virtual path lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum View {
    /// `receipts` and `queue.txt`.
    Top,
    /// The receipts of this directory of the user's.
    Receipts(VPath),
}

/// OPENDIR of a virtual path: what its READDIRs list.
pub(super) fn open_dir(ctx: &Ctx, path: &VPath, place: Place) -> Result<View, FsError> {
    match place {
        Place::Top => Ok(View::Top),
        Place::Receipts(below) => match target(ctx, &below) {
            Some(Target::Dir(dir)) => Ok(View::Receipts(dir)),
            Some(Target::Receipt(_)) => Err(FsError::new(
                FsErrorKind::NotADirectory,
                format!(
                    "{}: not a directory",
                    crate::names::escaped(&path.display())
                ),
            )),
            None => Err(not_found(path, "no such directory")),
        },
        Place::Queue => Err(FsError::new(
            FsErrorKind::NotADirectory,
            format!(
                "{}: not a directory",
                crate::names::escaped(&path.display())
            ),
        )),
        Place::Unknown => Err(not_found(path, "no such directory")),
    }
}

/// The entries of the virtual directory itself.
pub(super) async fn top_entries(ctx: &Ctx) -> Result<Vec<Entry>, FsError> {
    let queue = queue_text(ctx).await?;
    Ok(vec![
        file_entry(QUEUE.to_owned(), queue.len(), crate::spool::now_unix()),
        dir_entry(RECEIPTS),
    ])
}

/// The entry of the virtual directory in a listing of `/`.
pub(super) fn top_entry(ctx: &Ctx) -> Option<Entry> {
    ctx.virtual_dir.as_ref().map(|dir| dir_entry(dir.name()))
}

/// One page of `receipts/<dir>/`: the subdirectories of the user's `dir` and a `<name>.json`
/// for each delivered file with a receipt, after the user's name `after`; each entry with
/// the user's name it stands for (to go on after). Empty at the end. Looks at pages of
/// [`RECEIPTS_PAGE_ENTRIES_COUNT`] names until one gives an entry: O(page) receipt lookups
/// a page, plus the names of undelivered files passed over.
pub(super) async fn receipts_page(
    ctx: &Ctx,
    dir: &VPath,
    after: Option<String>,
) -> Result<Vec<(Entry, String)>, FsError> {
    let mut after = after;
    loop {
        let page = ctx.spool.list_dir_page(
            &ctx.user,
            dir,
            after.as_deref(),
            RECEIPTS_PAGE_ENTRIES_COUNT,
        )?;
        let Some(last) = page.last() else {
            return Ok(Vec::new());
        };
        after = Some(last.name.clone());
        let delivered: Vec<VPath> = page
            .iter()
            .filter(|e| e.kind == EntryKind::File && e.state == Some(FileState::Delivered))
            .map(|e| dir.join(&e.name))
            .collect();
        let mut receipts = ctx.spool.receipts(&ctx.user, delivered).await?.into_iter();
        let mut entries = Vec::new();
        for entry in page {
            match entry.kind {
                EntryKind::Dir => entries.push((dir_entry(&entry.name), entry.name)),
                EntryKind::File if entry.state == Some(FileState::Delivered) => {
                    if let Some(Some(delivery)) = receipts.next() {
                        let receipt = file_entry(
                            format!("{}{RECEIPT_SUFFIX}", entry.name),
                            receipt_bytes(&delivery).len(),
                            delivered_unix(&delivery),
                        );
                        entries.push((receipt, entry.name));
                    }
                }
                EntryKind::File => {}
            }
        }
        if !entries.is_empty() {
            return Ok(entries);
        }
    }
}

/// `queue.txt` of the session's user.
async fn queue_text(ctx: &Ctx) -> Result<String, FsError> {
    let rate = ctx
        .virtual_dir
        .as_ref()
        .map_or(0, |d| d.drain_rate.load(Ordering::Relaxed));
    let (spool, user) = (Arc::clone(&ctx.spool), ctx.user.to_string());
    tokio::task::spawn_blocking(move || render_queue(&spool, &user, rate, crate::spool::now_unix()))
        .await
        .map_err(|e| FsError::new(FsErrorKind::Failure, format!("queue: {e}")))
}

/// One line of `queue.txt`.
struct QueueLine {
    state: FileState,
    sent: u64,
    size: u64,
    eta_secs: Option<u64>,
    path: String,
    note: String,
}

/// The files of `user` not in S3 yet, as `queue.txt` shows them: tab-separated columns under
/// a header, the uploads in flight first, then what waits in the order the drain takes it,
/// then what is arriving or needs a look. ETAs assume the drain goes on at `drain_rate` and
/// takes files oldest first, every user's.
pub fn render_queue(spool: &Spool, user: &str, drain_rate: u64, now_unix: u64) -> String {
    let listing = queue_of(spool, user, drain_rate);
    format_queue(&listing, user, drain_rate, now_unix)
}

/// The lines of a user's queue, and what was left out.
struct QueueListing {
    lines: Vec<QueueLine>,
    /// Files beyond [`QUEUE_LINES_COUNT_MAX`].
    more: usize,
    /// The scan stopped at [`QUEUE_FILES_SCANNED_MAX`].
    cut: bool,
}

/// The files of `user` not in S3 yet, in the order `queue.txt` lists them, with their ETAs.
fn queue_of(spool: &Spool, user: &str, drain_rate: u64) -> QueueListing {
    let mut lines: Vec<QueueLine> = Vec::new();
    let mut more = 0usize;
    let mut scanned = 0usize;
    let mut cut = false;
    let mut push = |lines: &mut Vec<QueueLine>, line: QueueLine| {
        if lines.len() < QUEUE_LINES_COUNT_MAX {
            lines.push(line);
        } else {
            more += 1;
        }
    };
    // Uploads in flight share the rate; what waits starts after all of them.
    let mut uploading = Vec::new();
    scan_state(spool, FileState::Uploading, &mut scanned, &mut cut, |f| {
        uploading.push(
            (f.user == user)
                .then(|| f.clone())
                .ok_or(f.size.saturating_sub(f.bytes_sent())),
        );
    });
    let in_flight = u64_from_usize(uploading.len());
    let share = drain_rate / in_flight.max(1);
    let mut ahead: u64 = 0;
    for f in uploading {
        match f {
            Ok(f) => {
                let left = f.size.saturating_sub(f.bytes_sent());
                ahead += left;
                let line = line_of(&f, f.size, (share > 0).then(|| left.div_ceil(share)));
                push(&mut lines, line);
            }
            Err(left) => ahead += left,
        }
    }
    scan_state(spool, FileState::Sealed, &mut scanned, &mut cut, |f| {
        ahead += f.size;
        if f.user == user {
            let eta = (drain_rate > 0).then(|| ahead.div_ceil(drain_rate));
            push(&mut lines, line_of(f, f.size, eta));
        }
    });
    for state in [
        FileState::Receiving,
        FileState::Partial,
        FileState::Failed,
        FileState::Conflict,
    ] {
        scan_state(spool, state, &mut scanned, &mut cut, |f| {
            if f.user == user {
                // A file still arriving has no final size yet: its live one.
                let size = match state {
                    FileState::Receiving | FileState::Partial => {
                        spool.stat(user, &f.path).map_or(f.size, |entry| entry.size)
                    }
                    _ => f.size,
                };
                push(&mut lines, line_of(f, size, None));
            }
        });
    }
    QueueListing { lines, more, cut }
}

/// `queue.txt` of `listing`: a header, tab-separated lines, what was left out.
fn format_queue(listing: &QueueListing, user: &str, drain_rate: u64, now_unix: u64) -> String {
    let QueueListing { lines, more, cut } = listing;
    let mut out = String::new();
    let rate = match drain_rate {
        0 => "no upload in the last minute".to_owned(),
        r => format!("draining {:.1} MiB/s", f64_from_u64(r) / (1024.0 * 1024.0)),
    };
    let _ = writeln!(
        out,
        "# Files of {user} not in S3 yet, {}; {rate}.",
        crate::spool::deliveries::rfc3339(now_unix)
    );
    let _ = writeln!(
        out,
        "# Delivered files have a receipt in receipts/<path>.json. ETA in seconds, - unknown."
    );
    let _ = writeln!(out, "state\tsent_bytes\tsize_bytes\teta_secs\tpath\tnote");
    for l in lines {
        let eta = l.eta_secs.map_or_else(|| "-".to_owned(), |e| e.to_string());
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{eta}\t{}\t{}",
            l.state.name(),
            l.sent,
            l.size,
            l.path,
            l.note
        );
    }
    if *more > 0 {
        let _ = writeln!(out, "# ... and {more} more files not listed.");
    }
    if *cut {
        let _ = writeln!(
            out,
            "# The queue holds more than {QUEUE_FILES_SCANNED_MAX} files; those beyond were not \
             looked at."
        );
    }
    let _ = writeln!(out, "# {} files listed.", lines.len());
    out
}

fn line_of(f: &FileRecord, size: u64, eta_secs: Option<u64>) -> QueueLine {
    let note = f
        .last_error
        .as_deref()
        .map(|e| crate::names::escaped_line(e).replace('\t', " "))
        .unwrap_or_default();
    QueueLine {
        state: f.state,
        sent: f.bytes_sent(),
        size,
        eta_secs,
        path: crate::names::escaped(&f.path.display()).replace('\t', "\\t"),
        note,
    }
}

/// Calls `each` with the files in `state`, oldest first, a page per catalog lock, until
/// [`QUEUE_FILES_SCANNED_MAX`] files in all have been looked at (`cut` says so then). Holds
/// one page at a time, whatever the queue's length.
fn scan_state(
    spool: &Spool,
    state: FileState,
    scanned: &mut usize,
    cut: &mut bool,
    mut each: impl FnMut(&FileRecord),
) {
    let mut after = None;
    loop {
        let room = QUEUE_FILES_SCANNED_MAX.saturating_sub(*scanned);
        if room == 0 {
            *cut = true;
            return;
        }
        let (page, next) = spool.files_page(state, after, room.min(QUEUE_PAGE_FILES_COUNT));
        *scanned += page.len();
        page.iter().for_each(&mut each);
        match next {
            Some(next) => after = Some(next),
            None => return,
        }
    }
}
