//! What each SFTP request does to the spool, for requests that do not go through a write
//! handle's worker (see `session`). Every function returns the encoded reply or an [`FsError`]
//! that `wire::status_of` turns into SSH_FX_*.
//!
//! Owns the mapping from a request to spool calls. It may not touch files but through `spool`,
//! nor write to the channel: it returns bytes, and the session queues them.

use std::sync::Arc;

use bytes::Bytes;
use russh_sftp::extensions::{LimitsExtension, Statvfs, StatvfsExtension};
use russh_sftp::protocol::{
    Attrs, Extended, ExtendedReply, File, FileAttributes, Handle, Name, Open, OpenFlags, Packet,
    Read, StatusCode,
};

use super::handles::{Listing, ListingView, OpenHandle, invalid_handle};
use super::receipts;
use super::session::Ctx;
use super::{SFTP_NAME_REPLY_BYTES_MAX, wire};
use crate::limits::{SFTP_HANDLES_COUNT_MAX, SFTP_IO_BYTES_MAX, SFTP_PACKET_BYTES_MAX};
use crate::num::{u64_from_usize, usize_from_u32};
use crate::spool::{Entry, EntryKind, FsError, FsErrorKind, OpenMode, VPath};

pub const LIMITS: &str = "limits@openssh.com";
pub const FSYNC: &str = "fsync@openssh.com";
pub const POSIX_RENAME: &str = "posix-rename@openssh.com";
pub const STATVFS: &str = "statvfs@openssh.com";

/// Extensions advertised in VERSION, with the revision OpenSSH's client checks for
/// (statvfs@openssh.com is revision "2" in OpenSSH; the client ignores it otherwise).
pub const EXTENSIONS: &[(&str, &str)] = &[
    (LIMITS, "1"),
    (FSYNC, "1"),
    (POSIX_RENAME, "1"),
    (STATVFS, "2"),
];

/// Longest file name statvfs reports.
const NAME_BYTES_MAX: u64 = 255;
/// Entries one READDIR takes from the catalog (OpenSSH's server sends 100 a reply); the reply
/// then holds as many as fit [`SFTP_NAME_REPLY_BYTES_MAX`], the next READDIR going on after
/// the last one sent.
const READDIR_PAGE_ENTRIES_COUNT: usize = 256;
/// Bytes a NAME entry takes besides its two strings (lengths, attribute flags and fields).
const NAME_ENTRY_OVERHEAD_BYTES: usize = 64;

pub(super) async fn execute(ctx: &Ctx, packet: Packet) -> Result<Bytes, FsError> {
    let id = packet.get_request_id();
    match packet {
        Packet::Open(open) => open_file(ctx, open).await,
        Packet::Read(read) => read_file(ctx, read).await,
        Packet::Fstat(fstat) => fstat_readable(ctx, id, &fstat.handle),
        Packet::FSetStat(set) => match ctx.handles().get_mut(&set.handle) {
            Some(OpenHandle::Read { .. } | OpenHandle::Dir(_) | OpenHandle::Memory { .. }) => {
                Ok(ok(id))
            }
            _ => Err(invalid_handle()),
        },
        Packet::Stat(stat) => stat_path(ctx, id, &stat.path).await,
        Packet::Lstat(stat) => stat_path(ctx, id, &stat.path).await,
        Packet::SetStat(set) => {
            // Accepted and ignored (OpenSSH `put -p` sends it), but only for names that exist.
            let path = changeable(ctx, &set.path)?;
            let entry = ctx.spool.stat(&ctx.user, &path)?;
            check_setstat(&set.attrs, entry.size)?;
            Ok(ok(id))
        }
        Packet::OpenDir(open) => open_dir(ctx, id, &open.path),
        Packet::ReadDir(read) => read_dir(ctx, id, &read.handle).await,
        Packet::Remove(remove) => {
            let path = changeable(ctx, &remove.filename)?;
            ctx.spool.remove(&ctx.user, &path).await?;
            Ok(ok(id))
        }
        Packet::MkDir(mkdir) => {
            let path = changeable(ctx, &mkdir.path)?;
            check_new_name(ctx, &path)?;
            ctx.spool.mkdir(&ctx.user, &path).await?;
            Ok(ok(id))
        }
        Packet::RmDir(rmdir) => {
            let path = changeable(ctx, &rmdir.path)?;
            ctx.spool.rmdir(&ctx.user, &path).await?;
            Ok(ok(id))
        }
        Packet::Rename(rename) => {
            rename_path(ctx, &rename.oldpath, &rename.newpath, false).await?;
            Ok(ok(id))
        }
        Packet::RealPath(realpath) => {
            // Every session's working directory is `/` of its jail; `..` above it stays there,
            // as in OpenSSH's chroot (FileZilla asks for the parent of `/`).
            let path = VPath::resolve_clamped(&realpath.path)?.display();
            let file = File {
                filename: path.clone(),
                longname: path,
                attrs: FileAttributes::empty(),
            };
            Ok(wire::encode(Packet::Name(Name {
                id,
                files: vec![file],
            })))
        }
        Packet::ReadLink(_) | Packet::Symlink(_) => Err(FsError::new(
            FsErrorKind::Unsupported,
            "symbolic links are not supported",
        )),
        Packet::Extended(ext) if ext.request == POSIX_RENAME => {
            let (from, to) = parse_rename(&ext.data)?;
            rename_path(ctx, &from, &to, true).await?;
            Ok(ok(id))
        }
        Packet::Extended(ext) => extended(ctx, id, ext),
        // The dispatcher routes everything else elsewhere or ends the session.
        _ => Err(FsError::new(FsErrorKind::Failure, "unexpected request")),
    }
}

/// The path a request would change, resolved in the jail; refused in the virtual directory.
fn changeable(ctx: &Ctx, name: &str) -> Result<VPath, FsError> {
    let path = VPath::resolve(name)?;
    receipts::refuse_change(ctx, &path)?;
    Ok(path)
}

/// Refuses a new name with a control character or a bidi override, unless allowed.
fn check_new_name(ctx: &Ctx, path: &VPath) -> Result<(), FsError> {
    let Some(c) = crate::names::hostile_char(path.as_str()) else {
        return Ok(());
    };
    if ctx.names == crate::sftp::NamePolicy::AllowAll {
        return Ok(());
    }
    Err(FsError::new(
        FsErrorKind::BadName,
        format!(
            "{}: name holds U+{:04X}, a control character or bidi override; refused \
             ([sftp] allow_control_characters)",
            crate::names::escaped(&path.display()),
            u32::from(c)
        ),
    ))
}

fn ok(id: u32) -> Bytes {
    wire::encode(wire::ok(id))
}

async fn open_file(ctx: &Ctx, open: Open) -> Result<Bytes, FsError> {
    let path = VPath::resolve(&open.filename)?;
    let flags = open.pflags;
    if let Some(place) = receipts::place(ctx, &path) {
        if flags.contains(OpenFlags::WRITE) {
            receipts::refuse_change(ctx, &path)?;
        }
        return open_virtual(ctx, open.id, &path, place).await;
    }
    if !ctx.handles().reserve() {
        return Err(too_many_handles());
    }
    let opened = if flags.contains(OpenFlags::WRITE) {
        if let Err(e) = check_new_name(ctx, &path) {
            ctx.handles().release();
            return Err(e);
        }
        open_for_write(ctx, &path, flags)
            .await
            .map(|handle| ctx.register_write(handle, path.clone()))
    } else if flags.contains(OpenFlags::READ) {
        match ctx.spool.open_read(&ctx.user, &path).await {
            Ok(handle) => Ok(ctx.handles().insert(OpenHandle::Read {
                handle: Arc::new(handle),
                path: path.clone(),
            })),
            Err(err) => Err(err),
        }
    } else {
        Err(FsError::new(
            FsErrorKind::Failure,
            "open needs READ or WRITE",
        ))
    };
    let name = match opened {
        Ok(Some(name)) => name,
        Ok(None) => return Err(FsError::new(FsErrorKind::Failure, "session is ending")),
        Err(err) => {
            ctx.handles().release();
            return Err(err);
        }
    };
    tracing::debug!(user = %ctx.user, path = %path.display(), handle = %name, ?flags, "opened");
    Ok(wire::encode(Packet::Handle(Handle {
        id: open.id,
        handle: name,
    })))
}

/// OPEN for reading of a file of the virtual directory: its bytes as they are now.
async fn open_virtual(
    ctx: &Ctx,
    id: u32,
    path: &VPath,
    place: receipts::Place,
) -> Result<Bytes, FsError> {
    let (data, mtime_unix) = receipts::open_read(ctx, path, place).await?;
    let mut handles = ctx.handles();
    if !handles.memory_fits(data.len()) {
        return Err(FsError::new(
            FsErrorKind::Failure,
            "too many receipts and queue files open in this session: close some",
        ));
    }
    if !handles.reserve() {
        return Err(too_many_handles());
    }
    let name = handles
        .insert(OpenHandle::Memory { data, mtime_unix })
        .ok_or_else(|| FsError::new(FsErrorKind::Failure, "session is ending"))?;
    Ok(wire::encode(Packet::Handle(Handle { id, handle: name })))
}

async fn open_for_write(
    ctx: &Ctx,
    path: &VPath,
    flags: OpenFlags,
) -> Result<crate::spool::WriteHandle, FsError> {
    if !flags.contains(OpenFlags::CREATE) {
        // Without CREATE the file must exist already (POSIX open without O_CREAT).
        let entry = ctx.spool.stat(&ctx.user, path)?;
        if entry.kind == EntryKind::Dir {
            return Err(FsError::new(FsErrorKind::IsADirectory, "is a directory"));
        }
    }
    // APPEND needs nothing: clients send explicit offsets at the end of the file.
    let mode = OpenMode {
        truncate: flags.contains(OpenFlags::TRUNCATE),
        exclusive: flags.contains(OpenFlags::EXCLUDE),
    };
    ctx.spool.open_write(&ctx.user, path, mode).await
}

fn too_many_handles() -> FsError {
    FsError::new(
        FsErrorKind::Failure,
        format!("too many open handles (at most {SFTP_HANDLES_COUNT_MAX} per session)"),
    )
}

async fn read_file(ctx: &Ctx, read: Read) -> Result<Bytes, FsError> {
    let handle = match ctx.handles().get_mut(&read.handle) {
        Some(OpenHandle::Read { handle, .. }) => Arc::clone(handle),
        Some(OpenHandle::Memory { data, .. }) => {
            let len = usize_from_u32(read.len.min(SFTP_IO_BYTES_MAX));
            let start = usize::try_from(read.offset)
                .unwrap_or(usize::MAX)
                .min(data.len());
            let end = start.saturating_add(len).min(data.len());
            return Ok(if start == end {
                wire::encode(wire::status(read.id, StatusCode::Eof, "End of file"))
            } else {
                wire::encode_data(read.id, &data.slice(start..end))
            });
        }
        Some(OpenHandle::Write { .. }) => {
            return Err(FsError::new(
                FsErrorKind::PermissionDenied,
                "the handle was opened for writing",
            ));
        }
        Some(OpenHandle::Dir(_)) | None => return Err(invalid_handle()),
    };
    // The dispatcher reserved reply budget for at most this much.
    let len = read.len.min(SFTP_IO_BYTES_MAX);
    let data = handle.read_at(read.offset, len).await?;
    if data.is_empty() {
        return Ok(wire::encode(wire::status(
            read.id,
            StatusCode::Eof,
            "End of file",
        )));
    }
    let len = usize_from_u32(len);
    let data = if data.len() > len {
        data.slice(..len)
    } else {
        data
    };
    Ok(wire::encode_data(read.id, &data))
}

fn fstat_readable(ctx: &Ctx, id: u32, name: &str) -> Result<Bytes, FsError> {
    let (size, path) = match ctx.handles().get_mut(name) {
        Some(OpenHandle::Read { handle, path }) => (handle.size(), path.clone()),
        Some(OpenHandle::Memory { data, mtime_unix }) => {
            let attrs = wire::file_attrs(u64_from_usize(data.len()), *mtime_unix);
            return Ok(wire::encode(Packet::Attrs(Attrs { id, attrs })));
        }
        // Write handles are answered by their worker; a directory handle has no FSTAT here.
        _ => return Err(invalid_handle()),
    };
    let mtime = ctx
        .spool
        .stat(&ctx.user, &path)
        .map(|e| e.mtime_unix)
        .unwrap_or_else(|_| wire::now_unix());
    let attrs = wire::file_attrs(size, mtime);
    Ok(wire::encode(Packet::Attrs(Attrs { id, attrs })))
}

async fn stat_path(ctx: &Ctx, id: u32, raw: &str) -> Result<Bytes, FsError> {
    let path = VPath::resolve(raw)?;
    let entry = match receipts::place(ctx, &path) {
        Some(place) => receipts::stat(ctx, &path, place).await?,
        None => ctx.spool.stat(&ctx.user, &path)?,
    };
    Ok(wire::encode(Packet::Attrs(Attrs {
        id,
        attrs: wire::attrs_of(&entry),
    })))
}

/// SETSTAT and FSETSTAT change nothing; a size change would be a truncation we do not do.
pub(super) fn check_setstat(attrs: &FileAttributes, size: u64) -> Result<(), FsError> {
    match attrs.size {
        Some(wanted) if wanted != size => Err(FsError::new(
            FsErrorKind::Unsupported,
            "changing a file's size is not supported",
        )),
        _ => Ok(()),
    }
}

fn open_dir(ctx: &Ctx, id: u32, raw: &str) -> Result<Bytes, FsError> {
    let path = VPath::resolve(raw)?;
    let view = match receipts::place(ctx, &path) {
        Some(place) => match receipts::open_dir(ctx, &path, place)? {
            receipts::View::Top => ListingView::Top { done: false },
            receipts::View::Receipts(dir) => ListingView::Receipts(dir),
        },
        None => {
            // Only checks that the directory is there; READDIR reads it a page at a time.
            ctx.spool.list_dir_page(&ctx.user, &path, None, 0)?;
            ListingView::Spool {
                virtual_first: path.is_root() && ctx.virtual_dir.is_some(),
                dir: path,
            }
        }
    };
    if !ctx.handles().reserve() {
        return Err(too_many_handles());
    }
    let name = ctx
        .handles()
        .insert(OpenHandle::Dir(Listing { view, after: None }))
        .ok_or_else(|| FsError::new(FsErrorKind::Failure, "session is ending"))?;
    Ok(wire::encode(Packet::Handle(Handle { id, handle: name })))
}

async fn read_dir(ctx: &Ctx, id: u32, name: &str) -> Result<Bytes, FsError> {
    let now = wire::now_unix();
    let (view, after) = {
        let mut handles = ctx.handles();
        let Some(OpenHandle::Dir(listing)) = handles.get_mut(name) else {
            return Err(invalid_handle());
        };
        (listing.view.clone(), listing.after.clone())
    };
    // READDIRs of one handle run one at a time (the session's path lane), so the cursor
    // read above is still the handle's when it is written below. A directory removed
    // meanwhile has simply ended. Each entry comes with the user's name to go on after
    // (`None` for the virtual directory's own entries).
    let page: Vec<(Entry, Option<String>)> = match &view {
        ListingView::Spool { dir, virtual_first } => {
            let top = virtual_first.then(|| receipts::top_entry(ctx)).flatten();
            let page = ctx
                .spool
                .list_dir_page(&ctx.user, dir, after.as_deref(), READDIR_PAGE_ENTRIES_COUNT)
                .unwrap_or_default();
            top.map(|e| (e, None))
                .into_iter()
                .chain(page.into_iter().map(|e| {
                    let key = e.name.clone();
                    (e, Some(key))
                }))
                .collect()
        }
        ListingView::Top { done: false } => receipts::top_entries(ctx)
            .await?
            .into_iter()
            .map(|e| (e, None))
            .collect(),
        ListingView::Top { done: true } => Vec::new(),
        ListingView::Receipts(dir) => receipts::receipts_page(ctx, dir, after)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|(e, key)| (e, Some(key)))
            .collect(),
    };
    let mut files = Vec::new();
    let mut last_key = None;
    // Fill the reply up to the budget the dispatcher reserved for it.
    let mut bytes = 9; // length, type, id
    for (entry, key) in page {
        let longname = wire::longname(&entry, &ctx.user, now);
        let entry_bytes = entry.name.len() + longname.len() + NAME_ENTRY_OVERHEAD_BYTES;
        if bytes + entry_bytes > usize_from_u32(SFTP_NAME_REPLY_BYTES_MAX) && !files.is_empty() {
            break;
        }
        bytes += entry_bytes;
        last_key = key.or(last_key);
        files.push(File {
            filename: entry.name.clone(),
            longname,
            attrs: wire::attrs_of(&entry),
        });
    }
    if files.is_empty() {
        return Ok(wire::encode(wire::status(
            id,
            StatusCode::Eof,
            "End of directory",
        )));
    }
    if let Some(OpenHandle::Dir(listing)) = ctx.handles().get_mut(name) {
        match &mut listing.view {
            ListingView::Spool { virtual_first, .. } => *virtual_first = false,
            ListingView::Top { done } => *done = true,
            ListingView::Receipts(_) => {}
        }
        if last_key.is_some() {
            listing.after = last_key;
        }
    }
    Ok(wire::encode(Packet::Name(Name { id, files })))
}

async fn rename_path(ctx: &Ctx, from: &str, to: &str, overwrite: bool) -> Result<(), FsError> {
    let from = VPath::resolve(from)?;
    let to = VPath::resolve(to)?;
    receipts::refuse_change(ctx, &from)?;
    receipts::refuse_change(ctx, &to)?;
    check_new_name(ctx, &to)?;
    ctx.spool.rename(&ctx.user, &from, &to, overwrite).await
}

#[derive(serde::Deserialize)]
struct PosixRename {
    oldpath: String,
    newpath: String,
}

#[derive(serde::Deserialize)]
struct Fsync {
    handle: String,
}

fn parse<T: for<'de> serde::Deserialize<'de>>(data: &[u8]) -> Result<T, FsError> {
    let mut bytes = Bytes::copy_from_slice(data);
    russh_sftp::de::from_bytes(&mut bytes)
        .map_err(|_| FsError::new(FsErrorKind::Failure, "malformed extended request"))
}

/// The old and new path of a posix-rename@openssh.com request.
pub(crate) fn parse_rename(data: &[u8]) -> Result<(String, String), FsError> {
    parse::<PosixRename>(data).map(|r| (r.oldpath, r.newpath))
}

/// The handle named by a fsync@openssh.com request.
pub(crate) fn parse_fsync(data: &[u8]) -> Result<String, FsError> {
    parse::<Fsync>(data).map(|f| f.handle)
}

fn extended(ctx: &Ctx, id: u32, ext: Extended) -> Result<Bytes, FsError> {
    match ext.request.as_str() {
        LIMITS => {
            let limits = LimitsExtension {
                max_packet_len: u64::from(SFTP_PACKET_BYTES_MAX),
                max_read_len: u64::from(SFTP_IO_BYTES_MAX),
                max_write_len: u64::from(SFTP_IO_BYTES_MAX),
                max_open_handles: u64_from_usize(SFTP_HANDLES_COUNT_MAX),
            };
            extended_reply(id, &limits)
        }
        STATVFS => {
            let request: StatvfsExtension = parse(&ext.data)?;
            VPath::resolve(&request.path)?;
            let space = ctx.spool.space();
            let statvfs = Statvfs {
                block_size: space.block_size,
                fragment_size: space.block_size,
                blocks: space.blocks_total,
                blocks_free: space.blocks_free,
                blocks_avail: space.blocks_avail,
                inodes: 0,
                inodes_free: 0,
                inodes_avail: 0,
                fs_id: 0,
                flags: 0,
                name_max: NAME_BYTES_MAX,
            };
            extended_reply(id, &statvfs)
        }
        FSYNC => {
            // Write handles are synced by their worker; a read handle has nothing to sync.
            let handle = parse_fsync(&ext.data)?;
            match ctx.handles().get_mut(&handle) {
                Some(OpenHandle::Read { .. }) => Ok(ok(id)),
                _ => Err(invalid_handle()),
            }
        }
        other => Err(FsError::new(
            FsErrorKind::Unsupported,
            format!("extension {} is not supported", wire::truncated(other, 64)),
        )),
    }
}

fn extended_reply<T: serde::Serialize>(id: u32, value: &T) -> Result<Bytes, FsError> {
    let data = russh_sftp::ser::to_bytes(value)
        .map_err(|err| FsError::new(FsErrorKind::Failure, err.to_string()))?
        .to_vec();
    Ok(wire::encode(Packet::ExtendedReply(ExtendedReply {
        id,
        data,
    })))
}
