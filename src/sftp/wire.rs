//! What SFTP replies look like on the wire: the one mapping from [`FsError`] to SSH_FX_*,
//! attributes and `ls -l` long names for spool entries, and packet encoding.
//!
//! Pure encoding and decoding: no I/O and no spool calls (spool types only as values).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use russh_sftp::protocol::{FileAttributes, Packet, Status, StatusCode};

use super::SFTP_STATUS_MESSAGE_BYTES_MAX;
use crate::limits::SFTP_IO_BYTES_MAX;
use crate::num::{usize_from_u32, usize_from_u64};
use crate::spool::{Entry, EntryKind, FsError, FsErrorKind};

/// `S_IFREG | 0644`, what every file looks like to clients.
pub const FILE_MODE: u32 = 0o100_644;
/// `S_IFDIR | 0755`.
pub const DIR_MODE: u32 = 0o040_755;

const SSH_FXP_WRITE: u8 = 6;
const SSH_FXP_DATA: u8 = 103;

/// A decoded client packet. WRITE, which carries nearly every byte of an upload, is decoded
/// here so that its payload stays a slice of the received buffer (russh-sftp copies it into a
/// `Vec`); everything else is decoded by russh-sftp.
#[derive(Debug)]
pub enum Incoming {
    Write {
        id: u32,
        handle: String,
        offset: u64,
        data: Bytes,
    },
    Other(Packet),
}

/// Decodes one packet body (after its length). Bytes after the last field are ignored, as
/// OpenSSH's sftp-server does.
pub fn decode(mut body: Bytes) -> Result<Incoming, String> {
    if body.first() == Some(&SSH_FXP_WRITE) {
        return decode_write(body).ok_or_else(|| "malformed WRITE".to_owned());
    }
    Packet::try_from(&mut body)
        .map(Incoming::Other)
        .map_err(|err| err.to_string())
}

fn decode_write(mut body: Bytes) -> Option<Incoming> {
    body.advance(1);
    let id = body.try_get_u32().ok()?;
    let handle = take_string(&mut body)?;
    let offset = body.try_get_u64().ok()?;
    let data = take_string(&mut body)?;
    // Handles are ours and ASCII; anything else simply matches no handle.
    let handle = String::from_utf8_lossy(&handle).into_owned();
    Some(Incoming::Write {
        id,
        handle,
        offset,
        data,
    })
}

fn take_string(body: &mut Bytes) -> Option<Bytes> {
    let len = usize_from_u32(body.try_get_u32().ok()?);
    (body.remaining() >= len).then(|| body.split_to(len))
}

/// The only place where an error becomes an SFTP status code.
pub fn status_of(err: &FsError) -> (StatusCode, String) {
    let code = match err.kind {
        FsErrorKind::NotFound => StatusCode::NoSuchFile,
        FsErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        // Clients show the message; OpenSSH's sftp-server says the same for ENOSPC.
        FsErrorKind::NoSpace => return (StatusCode::Failure, "No space left on device".to_owned()),
        FsErrorKind::Unsupported => StatusCode::OpUnsupported,
        FsErrorKind::BadName => StatusCode::BadMessage,
        FsErrorKind::AlreadyExists
        | FsErrorKind::IsADirectory
        | FsErrorKind::NotADirectory
        | FsErrorKind::DirectoryNotEmpty
        | FsErrorKind::Failure => StatusCode::Failure,
    };
    (code, truncated(&err.message, SFTP_STATUS_MESSAGE_BYTES_MAX))
}

pub fn status(id: u32, code: StatusCode, message: &str) -> Packet {
    Packet::Status(Status {
        id,
        status_code: code,
        error_message: message.to_owned(),
        language_tag: "en".to_owned(),
    })
}

pub fn ok(id: u32) -> Packet {
    status(id, StatusCode::Ok, "Success")
}

pub fn error(id: u32, err: &FsError) -> Packet {
    let (code, message) = status_of(err);
    status(id, code, &message)
}

/// Encodes a reply with its length prefix. Our replies are bounded far below what the encoder
/// refuses (u32 lengths), so a failure here is a broken invariant; it degrades to a FAILURE
/// status rather than taking the gateway down.
pub fn encode(packet: Packet) -> Bytes {
    let id = packet.get_request_id();
    match Bytes::try_from(packet) {
        Ok(bytes) => bytes,
        Err(err) => {
            tracing::error!(%err, "could not encode an SFTP reply");
            let fallback = status(id, StatusCode::Failure, "internal error encoding the reply");
            Bytes::try_from(fallback).unwrap_or_default()
        }
    }
}

/// SSH_FXP_DATA, encoded by hand to copy the payload once. Callers read at most
/// `SFTP_IO_BYTES_MAX`; a longer payload is a broken invariant and degrades to a FAILURE
/// status, as in [`encode`].
pub fn encode_data(id: u32, data: &[u8]) -> Bytes {
    let Some(data_len) = u32::try_from(data.len())
        .ok()
        .filter(|len| *len <= SFTP_IO_BYTES_MAX)
    else {
        tracing::error!(
            len = data.len(),
            "an SFTP DATA reply longer than a READ may ask"
        );
        let fallback = status(id, StatusCode::Failure, "internal error encoding the reply");
        return encode(fallback);
    };
    let mut out = BytesMut::with_capacity(13 + data.len());
    // Length counts type, id, and the string (4 + payload).
    out.put_u32(1 + 4 + 4 + data_len);
    out.put_u8(SSH_FXP_DATA);
    out.put_u32(id);
    out.put_u32(data_len);
    out.put_slice(data);
    out.freeze()
}

/// Bytes a DATA reply of `len` payload bytes takes on the wire.
pub const fn data_reply_bytes(len: u32) -> u32 {
    len + 13
}

pub fn attrs_of(entry: &Entry) -> FileAttributes {
    let mtime = clamp_u32(entry.mtime_unix);
    FileAttributes {
        size: Some(entry.size),
        uid: Some(0),
        user: None,
        gid: Some(0),
        group: None,
        permissions: Some(match entry.kind {
            EntryKind::Dir => DIR_MODE,
            EntryKind::File => FILE_MODE,
        }),
        atime: Some(mtime),
        mtime: Some(mtime),
    }
}

/// Attributes of an open file known only by its size.
pub fn file_attrs(size: u64, mtime_unix: u64) -> FileAttributes {
    let mtime = clamp_u32(mtime_unix);
    FileAttributes {
        size: Some(size),
        uid: Some(0),
        user: None,
        gid: Some(0),
        group: None,
        permissions: Some(FILE_MODE),
        atime: Some(mtime),
        mtime: Some(mtime),
    }
}

/// A line like `ls -l` prints (OpenSSH's sftp `ls -l` shows it verbatim):
/// `-rw-r--r--   1 alice    alice     3145728 Jan  5 12:00 name`.
pub fn longname(entry: &Entry, owner: &str, now_unix: u64) -> String {
    let (mode, links) = match entry.kind {
        EntryKind::Dir => ("drwxr-xr-x", 2),
        EntryKind::File => ("-rw-r--r--", 1),
    };
    let owner = truncated(owner, 8);
    format!(
        "{mode} {links:>3} {owner:<8} {owner:<8} {size:>8} {date} {name}",
        size = entry.size,
        date = ls_date(entry.mtime_unix, now_unix),
        name = entry.name,
    )
}

/// `ls`'s date column: `Jan  5 12:00` within six months of now, else `Jan  5  2024` (UTC).
fn ls_date(mtime_unix: u64, now_unix: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const HALF_YEAR_SECONDS: u64 = 365 * 24 * 3600 / 2;
    let seconds_of_day = mtime_unix % 86_400;
    let (year, month, day) = civil_from_days(mtime_unix / 86_400);
    let month_name = MONTHS[usize_from_u64(month - 1)];
    let recent =
        mtime_unix + HALF_YEAR_SECONDS > now_unix && mtime_unix < now_unix + HALF_YEAR_SECONDS;
    if recent {
        format!(
            "{month_name} {day:>2} {:02}:{:02}",
            seconds_of_day / 3600,
            seconds_of_day % 3600 / 60
        )
    } else {
        format!("{month_name} {day:>2}  {year}")
    }
}

/// Proleptic Gregorian (year, month 1..=12, day 1..=31) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`, in its unsigned form: mtimes are never before 1970,
/// and every intermediate value stays non-negative).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn truncated(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fs_error_kind_maps_to_the_documented_status() {
        let cases = [
            (FsErrorKind::NotFound, StatusCode::NoSuchFile),
            (FsErrorKind::PermissionDenied, StatusCode::PermissionDenied),
            (FsErrorKind::NoSpace, StatusCode::Failure),
            (FsErrorKind::Unsupported, StatusCode::OpUnsupported),
            (FsErrorKind::AlreadyExists, StatusCode::Failure),
            (FsErrorKind::IsADirectory, StatusCode::Failure),
            (FsErrorKind::NotADirectory, StatusCode::Failure),
            (FsErrorKind::DirectoryNotEmpty, StatusCode::Failure),
            (FsErrorKind::Failure, StatusCode::Failure),
        ];
        for (kind, code) in cases {
            assert_eq!(status_of(&FsError::new(kind, "m")).0, code, "{kind:?}");
        }
        let (_, message) = status_of(&FsError::new(FsErrorKind::NoSpace, "ENOSPC on /data"));
        assert_eq!(message, "No space left on device");
        let (_, message) = status_of(&FsError::new(FsErrorKind::Failure, "é".repeat(300)));
        assert!(message.len() <= SFTP_STATUS_MESSAGE_BYTES_MAX);
    }

    #[test]
    fn longname_looks_like_ls_l() {
        let entry = Entry {
            name: "big.bin".into(),
            kind: EntryKind::File,
            size: 3_145_728,
            mtime_unix: 1_736_078_400, // 2025-01-05 12:00:00 UTC
            state: None,
        };
        assert_eq!(
            longname(&entry, "alice", 1_736_078_400 + 3600),
            "-rw-r--r--   1 alice    alice     3145728 Jan  5 12:00 big.bin"
        );
        assert_eq!(
            longname(&entry, "alice", 1_736_078_400 + 400 * 86_400),
            "-rw-r--r--   1 alice    alice     3145728 Jan  5  2025 big.bin"
        );
        let dir = Entry {
            name: "d".into(),
            kind: EntryKind::Dir,
            size: 0,
            mtime_unix: 0,
            state: None,
        };
        assert!(
            longname(&dir, "a-very-long-user", 0).starts_with("drwxr-xr-x   2 a-very-l a-very-l ")
        );
    }

    #[test]
    fn civil_dates_are_right_across_leap_years() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(2_932_896), (9999, 12, 31));
    }

    #[test]
    fn write_is_decoded_without_copying_and_truncated_writes_are_refused() {
        let write = russh_sftp::protocol::Write {
            id: 3,
            handle: "1f".into(),
            offset: 1 << 40,
            data: vec![9; 300],
        };
        let encoded = Bytes::try_from(Packet::Write(write)).unwrap();
        let body = encoded.slice(4..);
        let Ok(Incoming::Write {
            id,
            handle,
            offset,
            data,
        }) = decode(body.clone())
        else {
            panic!("not a write")
        };
        assert_eq!(
            (id, handle.as_str(), offset, data.len()),
            (3, "1f", 1 << 40, 300)
        );
        assert_eq!(
            data.as_ptr(),
            body[body.len() - 300..].as_ptr(),
            "payload copied"
        );
        for cut in 1..body.len() {
            assert!(
                decode(body.slice(..cut)).is_err(),
                "truncated at {cut} accepted"
            );
        }
        let stat = Packet::Stat(russh_sftp::protocol::Stat {
            id: 4,
            path: "/".into(),
        });
        let body = Bytes::try_from(stat).unwrap().slice(4..);
        assert!(matches!(decode(body), Ok(Incoming::Other(Packet::Stat(_)))));
    }

    #[test]
    fn hand_encoded_data_matches_russh_sftp() {
        let data = vec![7u8; 1000];
        let ours = encode_data(9, &data);
        let theirs =
            Bytes::try_from(Packet::Data(russh_sftp::protocol::Data { id: 9, data })).unwrap();
        assert_eq!(ours, theirs);
        assert_eq!(ours.len() as u32, data_reply_bytes(1000));
        let too_long = encode_data(9, &vec![0; SFTP_IO_BYTES_MAX as usize + 1]);
        assert!(
            too_long.len() < 100,
            "a DATA reply over the READ bound is a FAILURE status"
        );
    }
}
