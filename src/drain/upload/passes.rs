//! Whole-file passes over a sealed spool file: one bounded helper, `Ctx::sealed_pass`, reads
//! ranges of the file once, through one buffer, at most `FILE_HASH_PASSES_COUNT_MAX` passes
//! at once; its two callers are small folds on top of it (the SHA-256 of a file not hashed on
//! arrival, the CRC32C check of early parts).
//!
//! May read the spool's sealed files; it sends nothing to the store.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

use super::{Ctx, Stop};
use crate::drain::store::ObjectStore;
use crate::num::u64_from_usize;
use crate::spool::catalog::{FileRecord, UploadProgress};

/// Read buffer of the SHA-256 pass over a whole file (only for files written out of order).
const FILE_HASH_BUFFER_BYTES: usize = 1024 * 1024;

/// Whole-file SHA-256 passes at once. They are CPU-bound, so more than the box has cores only
/// adds buffers; the bound also keeps their memory independent of `concurrency`.
pub(super) const FILE_HASH_PASSES_COUNT_MAX: usize = 2;

impl<S: ObjectStore> Ctx<S> {
    pub(super) async fn file_sha256(&self, file: &FileRecord) -> Result<[u8; 32], Stop> {
        if let Some(h) = file.sha256 {
            return Ok(h);
        }
        let whole = vec![(0, file.size)];
        let hasher = self
            .sealed_pass(
                file,
                "hashing the spool file",
                whole,
                Sha256::new(),
                |h, _, b| {
                    h.update(b);
                },
            )
            .await?;
        Ok(hasher.finalize().into())
    }

    /// The drain's one kind of read besides request bodies: a pass over `ranges` (offset,
    /// length) of the sealed file, at most [`FILE_HASH_PASSES_COUNT_MAX`] at once, through one
    /// [`FILE_HASH_BUFFER_BYTES`] buffer on a blocking thread; `step(acc, range, bytes)` sees
    /// each range's bytes in order. A read that fails is `what` failing (see `local_error`).
    async fn sealed_pass<A, F>(
        &self,
        file: &FileRecord,
        what: &str,
        ranges: Vec<(u64, u64)>,
        acc: A,
        step: F,
    ) -> Result<A, Stop>
    where
        A: Send + 'static,
        F: Fn(&mut A, usize, &[u8]) + Send + 'static,
    {
        let _permit = self
            .hash_permits
            .acquire()
            .await
            .map_err(|_| Stop::Cancelled)?;
        let path = self.spool.sealed_path(file.id);
        let done = tokio::task::spawn_blocking(move || -> std::io::Result<A> {
            let f = File::open(path)?;
            let mut buf = vec![0u8; FILE_HASH_BUFFER_BYTES];
            let mut acc = acc;
            for (i, (start, len)) in ranges.into_iter().enumerate() {
                let (mut at, end) = (start, start + len);
                while at < end {
                    let n = usize::try_from(end - at).map_or(buf.len(), |left| left.min(buf.len()));
                    f.read_exact_at(&mut buf[..n], at)?;
                    step(&mut acc, i, &buf[..n]);
                    at += u64_from_usize(n);
                }
            }
            Ok(acc)
        })
        .await;
        match done {
            Ok(Ok(acc)) => Ok(acc),
            Ok(Err(e)) => Err(self.local_error(file.id, what, &e)),
            Err(_) => Err(Stop::Cancelled),
        }
    }

    /// The parts of an early upload whose bytes the sealed file still holds: each part's
    /// CRC32C, as journalled when it was sent, against the sealed file's range.
    pub(super) async fn check_early_parts(
        &self,
        file: &FileRecord,
        upload: &UploadProgress,
        parts_count: u64,
    ) -> Result<HashSet<u32>, Stop> {
        let (part_size, size) = (upload.part_size, file.size);
        let sent: Vec<(u32, u32)> = upload
            .parts
            .iter()
            .filter(|(n, _)| u64::from(**n) <= parts_count)
            .map(|(n, r)| (*n, r.crc32c))
            .collect();
        let ranges = sent
            .iter()
            .map(|(number, _)| {
                let start = u64::from(number - 1) * part_size;
                (start, part_size.min(size - start))
            })
            .collect();
        let crcs = self
            .sealed_pass(
                file,
                "checking early parts",
                ranges,
                vec![0u32; sent.len()],
                |crcs, i, bytes| crcs[i] = crc32c::crc32c_append(crcs[i], bytes),
            )
            .await?;
        let mut valid = HashSet::new();
        for ((number, crc_sent), crc) in sent.into_iter().zip(crcs) {
            if crc == crc_sent {
                valid.insert(number);
            } else {
                tracing::info!(
                    number,
                    "an early part no longer matches the sealed file; sending it again"
                );
            }
        }
        Ok(valid)
    }
}
