//! CompleteMultipartUpload for the embedded server without s3s-fs's second pass over the data.
//!
//! s3s-fs completes an upload by reading every part back through a 64 KiB buffer, hashing it
//! with MD5 (for the multipart ETag) and writing it into the object: a 1 GiB upload costs about
//! 1.5 CPU-s of MD5 and 2 s of wall time after its last part (bench/profile-e2e.sh). The MD5 of
//! each part is already known (it is the ETag UploadPart returned), so the ETag needs no pass,
//! and the parts are concatenated through a 1 MiB buffer.
//!
//! The files written are the ones s3s-fs writes, in its own layout, so that s3s-fs serves the
//! object afterwards as if it had assembled it: the object under the bucket directory (through
//! a temporary file and a rename, never half-written), the upload's attributes file renamed to
//! the object's, the ETag in the object's `internal.json`; the upload marker and the parts are
//! removed. Like s3s-fs, nothing is fsynced: the demo's S3 server is not a durable store.
//!
//! Plain file work over that layout: no s3s types, no counters, nothing of the crate. Whether
//! a Complete may be assembled here (every part's MD5 known, the request valid) is decided by
//! `gateway`, which calls it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use md5::{Digest as _, Md5};

/// Names the temporary files of assemblies (with the process id, so that two servers on one
/// root cannot collide).
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Everything one Complete touches, as paths of s3s-fs's layout.
#[derive(Debug)]
pub(super) struct Assembly {
    /// The s3s-fs root: temporary files are made there (same file system as the object).
    pub root: PathBuf,
    /// `<root>/<bucket>/<key>`.
    pub object: PathBuf,
    /// Part files in order, each with its MD5 (the ETag UploadPart returned).
    pub parts: Vec<(PathBuf, [u8; 16])>,
    /// `.upload-<id>.json`: the upload exists while it does.
    pub marker: PathBuf,
    /// The upload's attributes (content type, user metadata), which become the object's.
    pub upload_attributes: PathBuf,
    pub object_attributes: PathBuf,
    /// The object's `internal.json` (a JSON map): its `e_tag` is what HEAD and GET answer.
    pub internal_info: PathBuf,
    /// The full-object CRC32C the Complete carried (`x-amz-checksum-crc32c`, type
    /// FULL_OBJECT): the assembled bytes must have it, and the object keeps it.
    pub crc32c: Option<u32>,
}

/// Why an assembly failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum AssemblyError {
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The assembled bytes do not have the CRC32C the Complete carried; nothing was stored.
    #[error("the object's CRC32C is {computed:08x}, the request said {expected:08x}")]
    BadDigest { expected: u32, computed: u32 },
}

/// The multipart ETag S3 gives: MD5 of the parts' MD5s, a dash, the number of parts.
pub(super) fn multipart_etag(part_md5s: impl ExactSizeIterator<Item = [u8; 16]>) -> String {
    let count = part_md5s.len();
    let mut md5 = Md5::new();
    for m in part_md5s {
        md5.update(m);
    }
    format!("{}-{count}", hex(&md5.finalize()))
}

/// The 16 bytes of an ETag that is the hex MD5 of a part (as s3s-fs's UploadPart answers).
pub(super) fn part_md5(etag: &str) -> Option<[u8; 16]> {
    let hex = etag.trim_matches('"').as_bytes();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let digit = |b: u8| char::from(b).to_digit(16);
        let (hi, lo) = (digit(pair[0])?, digit(pair[1])?);
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Assembles the object and retires the upload; returns the ETag. Blocking: run it on a
/// blocking thread. On an error before the rename of the object (a CRC32C that does not
/// match included) the upload is left as it was (the temporary file is removed); the caller
/// has checked the parts, their sizes and ETags.
pub(super) fn assemble(a: &Assembly) -> Result<String, AssemblyError> {
    let tmp = tmp_path(&a.root);
    let written = concatenate(&a.parts, &tmp)
        .map_err(AssemblyError::from)
        .and_then(|computed| match a.crc32c {
            Some(expected) if expected != computed => {
                Err(AssemblyError::BadDigest { expected, computed })
            }
            _ => Ok(()),
        })
        .and_then(|()| {
            if let Some(dir) = a.object.parent() {
                fs::create_dir_all(dir)?;
            }
            Ok(fs::rename(&tmp, &a.object)?)
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // The object is in place: from here on the upload is complete whatever fails (as s3s-fs,
    // which forgets the upload id first). What follows is bookkeeping.
    let etag = multipart_etag(a.parts.iter().map(|(_, m)| *m));
    remove_if_present(&a.marker)?;
    match fs::rename(&a.upload_attributes, &a.object_attributes) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    save_info(&a.root, &a.internal_info, &etag, a.crc32c)?;
    for (part, _) in &a.parts {
        remove_if_present(part)?;
    }
    Ok(etag)
}

/// A new temporary file's name under `root`, in s3s-fs's pattern (`.tmp.*.internal.part`).
fn tmp_path(root: &Path) -> PathBuf {
    root.join(format!(
        ".tmp.sftpgw-{}-{}.internal.part",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Bytes read and written at a time while concatenating parts.
const COPY_BUFFER_BYTES: usize = 1 << 20;

/// Copies through one buffer in user space: `std::io::copy` between two files would use
/// `copy_file_range`, which on this kernel (ext4, a VM) spent 40 % of the drain's CPU in the
/// kernel's `__pi_memcpy` and made the demo's 1 GiB drain slower (6.4 s against 5.0 s). Returns
/// the CRC32C of what it wrote (summed from the buffer: no second pass).
fn concatenate(parts: &[(PathBuf, [u8; 16])], to: &Path) -> io::Result<u32> {
    use std::io::{Read as _, Write as _};
    let mut out = fs::File::create(to)?;
    let mut buf = vec![0u8; COPY_BUFFER_BYTES];
    let mut crc = 0u32;
    for (part, _) in parts {
        let mut part = fs::File::open(part)?;
        loop {
            let n = part.read(&mut buf)?;
            if n == 0 {
                break;
            }
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            out.write_all(&buf[..n])?;
        }
    }
    Ok(crc)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Sets `e_tag`, and `checksum_crc32c` (base64, as s3s-fs keeps checksums) if given, in the
/// object's internal JSON map, replacing the file through a rename. Other entries are kept,
/// but a checksum of the object this one replaces is not.
fn save_info(root: &Path, path: &Path, etag: &str, crc32c: Option<u32>) -> io::Result<()> {
    let mut info: serde_json::Map<String, serde_json::Value> = match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => serde_json::Map::new(),
        Err(e) => return Err(e),
    };
    info.retain(|k, _| !k.starts_with("checksum_"));
    info.insert("e_tag".into(), serde_json::Value::String(etag.to_owned()));
    if let Some(crc) = crc32c {
        let b64 = aws_smithy_types::base64::encode(crc.to_be_bytes());
        info.insert("checksum_crc32c".into(), serde_json::Value::String(b64));
    }
    let tmp = tmp_path(root);
    fs::write(&tmp, serde_json::to_vec(&info).map_err(io::Error::other)?)?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An assembly of `parts` into `object` (under `root`), with its upload's files at fixed
    /// names beside them in `root`.
    fn assembly(root: &Path, object: &str, parts: Vec<(PathBuf, [u8; 16])>) -> Assembly {
        Assembly {
            root: root.to_owned(),
            object: root.join(object),
            parts,
            marker: root.join(".upload-x.json"),
            upload_attributes: root.join(".upload-attrs.json"),
            object_attributes: root.join(".object-attrs.json"),
            internal_info: root.join(".object.internal.json"),
            crc32c: None,
        }
    }

    #[test]
    fn the_multipart_etag_is_the_md5_of_the_part_md5s_and_their_count() {
        // Two parts "a" and "b": MD5("a") and MD5("b") as S3 would have answered them.
        let a = part_md5("0cc175b9c0f1b6a831c399e269772661").expect("hex");
        let b = part_md5("\"92eb5ffee6ae2fec3ad71c777531578f\"").expect("quoted hex");
        let mut md5 = Md5::new();
        md5.update(a);
        md5.update(b);
        let expected = format!("{}-2", hex(&md5.finalize()));
        assert_eq!(multipart_etag([a, b].into_iter()), expected);
        assert_eq!(part_md5("0cc175b9"), None);
        assert_eq!(part_md5("zz175b9c0f1b6a831c399e269772661a"), None);
    }

    #[test]
    fn an_assembly_concatenates_the_parts_moves_the_attributes_and_retires_the_upload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let parts: Vec<(PathBuf, [u8; 16])> = (1..=3)
            .map(|n| {
                let p = root.join(format!(".part-{n}"));
                fs::write(&p, vec![b'0' + n; 1000 * usize::from(n)]).expect("part");
                (p, [n; 16])
            })
            .collect();
        let a = assembly(root, "bucket/dir/key.bin", parts);
        fs::write(&a.marker, "null").expect("marker");
        fs::write(&a.upload_attributes, "{\"content_type\":\"x\"}").expect("attrs");
        fs::write(&a.internal_info, "{\"other\":1}").expect("info");
        let etag = assemble(&a).expect("assemble");
        assert_eq!(
            etag,
            multipart_etag([[1; 16], [2; 16], [3; 16]].into_iter())
        );
        let object = fs::read(&a.object).expect("object");
        let expected: Vec<u8> = [(b'1', 1000), (b'2', 2000), (b'3', 3000)]
            .iter()
            .flat_map(|(b, n)| vec![*b; *n])
            .collect();
        assert_eq!(object, expected);
        assert!(!a.marker.exists() && !a.upload_attributes.exists());
        assert!(a.parts.iter().all(|(p, _)| !p.exists()));
        assert_eq!(
            fs::read_to_string(&a.object_attributes).expect("attrs"),
            "{\"content_type\":\"x\"}"
        );
        let info: serde_json::Value =
            serde_json::from_slice(&fs::read(&a.internal_info).expect("info")).expect("json");
        assert_eq!(info["e_tag"], serde_json::Value::String(etag));
        assert_eq!(info["other"], 1);
        let leftovers: Vec<_> = fs::read_dir(root)
            .expect("root")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp."))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn a_missing_part_leaves_the_upload_as_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let a = assembly(root, "bucket/key", vec![(root.join(".part-1"), [0; 16])]);
        fs::write(&a.marker, "null").expect("marker");
        assert!(assemble(&a).is_err());
        assert!(a.marker.exists() && !a.object.exists());
        assert_eq!(
            fs::read_dir(root).expect("root").count(),
            1,
            "only the marker"
        );
    }
}
