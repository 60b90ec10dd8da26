//! What makes a sealed file self-describing: its identity (id, user, path, size, SHA-256,
//! sealed time) in an extended attribute of the file itself, written before the file's fsync
//! at CLOSE, so that the same fsync makes it durable with the bytes.
//!
//! The journal is the source of truth; the identity is what lets the spool rebuild a sealed
//! file's record when the journal lost it (a damaged frame, a lost journal): such a file is
//! sealed again and delivered to its right key instead of being quarantined. An identity is
//! believed only if it parses, names the file's id and matches its length.
//!
//! A file system without user extended attributes (tmpfs before Linux 6.6, some FUSE file
//! systems) cannot hold one: sealing then goes on without it (one warning), and such files
//! are quarantined, never deleted, if the journal forgets them.
//!
//! It reads and writes one extended attribute of a sealed file; it never touches the catalog
//! or the journal.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::{FileId, VPath};

/// The extended attribute that holds a sealed file's identity (JSON).
pub const IDENTITY_XATTR: &str = "user.sftpgw.identity";
/// Largest identity we write or read: a path is at most half an S3 key (512 bytes), so this
/// leaves room to spare and stays within ext4's in-inode attribute space.
pub const IDENTITY_BYTES_MAX: usize = 2048;

/// Who a sealed file belongs to and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedIdentity {
    /// The file version (its name in `sealed/`).
    pub id: FileId,
    /// Whose file.
    pub user: String,
    /// Its name when sealed (or renamed since).
    pub path: VPath,
    /// Its length in bytes.
    pub size: u64,
    /// Hex, if the file was hashed on the way (see `SpoolOptions::hash_bytes_max`).
    pub sha256: Option<String>,
    /// When it was sealed, in seconds since the epoch.
    pub sealed_at_unix: u64,
}

static UNSUPPORTED_WARNED: AtomicBool = AtomicBool::new(false);

/// Stores `identity` on `file`. Not being able to is not an error of the upload: the journal
/// still records the file; only the rebuild without the journal is lost (logged once).
pub fn write(file: &File, identity: &SealedIdentity) {
    let Ok(json) = serde_json::to_vec(identity) else {
        return;
    };
    if json.len() > IDENTITY_BYTES_MAX {
        tracing::warn!(
            id = identity.id,
            bytes = json.len(),
            "sealed file identity too long to store"
        );
        return;
    }
    if let Err(e) =
        rustix::fs::fsetxattr(file, IDENTITY_XATTR, &json, rustix::fs::XattrFlags::empty())
        && !UNSUPPORTED_WARNED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(error = %e, "cannot store sealed files' identity in an extended attribute; \
            a file the journal loses will be quarantined instead of delivered");
    }
}

/// The identity stored on the file at `path`, if it has a believable one.
pub fn read(path: &Path, id: FileId) -> Option<SealedIdentity> {
    let mut buf = vec![0u8; IDENTITY_BYTES_MAX];
    let len = rustix::fs::getxattr(path, IDENTITY_XATTR, &mut buf[..]).ok()?;
    let identity: SealedIdentity = serde_json::from_slice(buf.get(..len)?).ok()?;
    let size = std::fs::metadata(path).ok()?.len();
    (identity.id == id && identity.size == size).then_some(identity)
}

/// Points the identity of the file at `path` (if it has a believable one) at `new_path`, and
/// makes that durable (fsync: an extended attribute is inode metadata). Called after a rename
/// is journalled and before it is acknowledged, so that a file the journal later loses is
/// sealed again under the name the client last saw acknowledged.
pub fn rename(path: &Path, id: FileId, new_path: &VPath) {
    let Some(mut identity) = read(path, id) else {
        return;
    };
    if identity.path == *new_path {
        return;
    }
    identity.path = new_path.clone();
    let Ok(file) = File::open(path) else {
        return;
    };
    write(&file, &identity);
    if let Err(e) = file.sync_all() {
        tracing::warn!(id, error = %e, "could not make a renamed file's identity durable");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_believed_only_for_its_file_id_and_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("7");
        std::fs::write(&path, b"hello").unwrap();
        let identity = SealedIdentity {
            id: 7,
            user: "alice".into(),
            path: VPath::resolve("/d/hello.txt").unwrap(),
            size: 5,
            sha256: None,
            sealed_at_unix: 1_700_000_000,
        };
        write(&File::open(&path).unwrap(), &identity);
        if rustix::fs::getxattr(&path, IDENTITY_XATTR, &mut [0u8; 8][..]).is_err()
            && rustix::fs::getxattr(
                &path,
                IDENTITY_XATTR,
                &mut vec![0u8; IDENTITY_BYTES_MAX][..],
            )
            .is_err()
        {
            eprintln!("skipped: this file system keeps no user extended attributes");
            return;
        }
        assert_eq!(read(&path, 7), Some(identity));
        assert_eq!(read(&path, 8), None, "another file's id");
        let renamed = VPath::resolve("/e/renamed.txt").unwrap();
        rename(&path, 7, &renamed);
        assert_eq!(read(&path, 7).map(|i| i.path), Some(renamed), "renamed");
        std::fs::write(&path, b"hello, longer now").unwrap();
        assert_eq!(read(&path, 7), None, "the length no longer matches");
    }
}
