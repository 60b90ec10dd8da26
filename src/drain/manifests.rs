//! Manifests in the bucket: the box copies its delivery log (`spool::deliveries`) in batches
//! to `<prefix>_manifests/<date>/<box>-<n>.jsonl`, so that the bucket itself holds the audit
//! trail of every box of a fleet.
//!
//! - A manifest holds the log's lines byte for byte (lines that do not parse, cut by a crash,
//!   are left out), all of one UTC delivery date; `n` counts the box's manifests, so a batch
//!   is a new object and no object is ever written twice with other contents.
//! - Where the log has been copied up to (its file and offset) and the next `n` are kept in
//!   `<spool>/deliveries/manifests.cursor`, saved (renamed into place and fsynced) after each
//!   manifest is in the bucket. A crash in between sends the same batch again under the same
//!   key: HEAD finds it with the same size and ETag (the MD5 of a single PUT) and the cursor
//!   moves on. Any other object under that key (another box of the same name, a spool
//!   formatted again) is left alone and the next `n` is taken.
//! - A manifest goes out every `[s3] manifest_interval` (and the log's backlog in batches of
//!   at most [`BATCH_BYTES_MAX`]); S3 errors wait for the next interval. The log is bounded
//!   (64 MiB): a box kept off the WAN long enough for the log to rotate past the cursor says so
//!   in its log, and the lines in between are missing from the bucket (not from S3's objects).
//!
//! Owns the manifest cursor and the manifest keys. May use `store` (HEAD, PUT), the spool's
//! delivery log (`spool::deliveries`, read only) and `num`; must not touch the catalog, the
//! journal or the drain loop.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::drain::store::{META_BOX, ObjectMetadata, ObjectStore};
use crate::num::u64_from_usize;
use crate::spool::deliveries::{self, Delivery, LogPosition};

/// The folder under the key prefix that holds the manifests.
pub const MANIFESTS_FOLDER: &str = "_manifests/";
/// The largest manifest, in bytes of log lines (a single longer line still goes alone).
pub const BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Keys taken by other objects skipped at most in one go, before trying again later.
const TAKEN_KEYS_SKIPPED_MAX: u32 = 16;
const CURSOR_FILE: &str = "manifests.cursor";

/// How far the log has been copied to the bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The first byte of the log not yet in a manifest.
    pub at: LogPosition,
    /// The number of the next manifest.
    pub next: u64,
}

fn cursor_path(spool_dir: &Path) -> PathBuf {
    spool_dir.join("deliveries").join(CURSOR_FILE)
}

/// The saved cursor; the start of the log if there is none (or it cannot be read: the
/// manifests then start again from the oldest line kept, under new numbers taken past any
/// key already in the bucket).
pub fn load_cursor(spool_dir: &Path) -> Cursor {
    std::fs::read(cursor_path(spool_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_cursor(spool_dir: &Path, cursor: &Cursor) -> io::Result<()> {
    use std::io::Write as _;
    let path = cursor_path(spool_dir);
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(cursor).map_err(io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The key of manifest `n` of `box_name` for deliveries of `date` (YYYY-MM-DD).
pub fn manifest_key(prefix: &str, date: &str, box_name: &str, n: u64) -> String {
    format!("{prefix}{MANIFESTS_FOLDER}{date}/{box_name}-{n:06}.jsonl")
}

/// One manifest's worth of the log: the lines of the first valid line's date, and where the
/// log goes on after them.
#[derive(Debug, PartialEq, Eq)]
struct Batch {
    date: Option<String>,
    body: Vec<u8>,
    next: LogPosition,
}

/// Splits `lines` (read at `at`) at the first change of delivery date.
fn batch_of(lines: &[u8], at: LogPosition) -> Batch {
    let (mut date, mut body, mut used) = (None::<String>, Vec::new(), 0usize);
    for line in lines.split_inclusive(|b| *b == b'\n') {
        if let Ok(d) = serde_json::from_slice::<Delivery>(line) {
            let day = d
                .delivered_at
                .get(..10)
                .unwrap_or(&d.delivered_at)
                .to_owned();
            match &date {
                Some(current) if *current != day => break,
                Some(_) => {}
                None => date = Some(day),
            }
            body.extend_from_slice(line);
        }
        used += line.len();
    }
    Batch {
        date,
        body,
        next: LogPosition {
            file: at.file,
            offset: at.offset + u64_from_usize(used),
        },
    }
}

/// Copies the delivery log to the bucket every `interval`, for as long as it runs.
pub async fn run<S: ObjectStore>(
    store: Arc<S>,
    spool_dir: PathBuf,
    prefix: String,
    box_name: String,
    interval: Duration,
) {
    let mut cursor = load_cursor(&spool_dir);
    loop {
        tokio::time::sleep(interval).await;
        loop {
            match ship_one(&*store, &spool_dir, &prefix, &box_name, &mut cursor).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "manifest not sent; trying again at the next interval");
                    break;
                }
            }
        }
    }
}

/// Sends the next manifest, if the log has new lines; `Ok(false)` when it has none.
pub async fn ship_one<S: ObjectStore>(
    store: &S,
    spool_dir: &Path,
    prefix: &str,
    box_name: &str,
    cursor: &mut Cursor,
) -> Result<bool, String> {
    let (dir, at) = (spool_dir.to_owned(), cursor.at);
    let chunk =
        tokio::task::spawn_blocking(move || deliveries::read_from(&dir, at, BATCH_BYTES_MAX))
            .await
            .map_err(|e| format!("reading the delivery log: {e}"))?
            .map_err(|e| format!("reading the delivery log: {e}"))?;
    if chunk.skipped {
        tracing::warn!(
            from = ?cursor.at, to = ?chunk.next,
            "the delivery log rotated past what the manifests had copied: deliveries in between are missing from them"
        );
    }
    if chunk.lines.is_empty() {
        return Ok(false);
    }
    let read_at = LogPosition {
        file: chunk.next.file,
        offset: chunk.next.offset - u64_from_usize(chunk.lines.len()),
    };
    let batch = batch_of(&chunk.lines, read_at);
    let mut next = cursor.next;
    if let Some(date) = &batch.date {
        let taken =
            put_manifest(store, spool_dir, prefix, box_name, cursor, date, batch.body).await?;
        next = taken + 1;
    }
    let saved = Cursor {
        at: batch.next,
        next,
    };
    save_cursor_blocking(spool_dir, saved).await?;
    *cursor = saved;
    Ok(true)
}

/// Puts one batch of `date` under the cursor's next manifest number, or the first one after
/// it whose key is free, and returns the number it took. A key that already holds this very
/// batch (sent before a crash kept the cursor from moving) counts as sent.
async fn put_manifest<S: ObjectStore>(
    store: &S,
    spool_dir: &Path,
    prefix: &str,
    box_name: &str,
    cursor: &mut Cursor,
    date: &str,
    body: Vec<u8>,
) -> Result<u64, String> {
    let mut next = cursor.next;
    let mut metadata = ObjectMetadata::new();
    metadata.insert(META_BOX.to_owned(), box_name.to_owned());
    let size = u64_from_usize(body.len());
    // What S3 gives a single PUT as its ETag (where the bucket does not encrypt with KMS).
    let md5 = {
        use md5::Digest as _;
        hex::encode(md5::Md5::digest(&body))
    };
    let body = Bytes::from(body);
    let mut skipped = 0;
    loop {
        let key = manifest_key(prefix, date, box_name, next);
        match store.head_object(&key).await.map_err(|e| e.to_string())? {
            // Sent before a crash kept the cursor from moving: done. (A store whose
            // ETags are not MD5s makes this a new number: a manifest twice, none lost.)
            Some(head) if head.size == size && head.etag.as_deref() == Some(md5.as_str()) => {
                break;
            }
            Some(_) => {
                skipped += 1;
                if skipped > TAKEN_KEYS_SKIPPED_MAX {
                    // Keep the numbers passed, so that the next interval goes on from
                    // there (a lost cursor may find hundreds of its own manifests).
                    let passed = Cursor {
                        at: cursor.at,
                        next: next + 1,
                    };
                    save_cursor_blocking(spool_dir, passed).await?;
                    *cursor = passed;
                    return Err(format!(
                        "{skipped} manifest keys in a row hold other objects"
                    ));
                }
                tracing::warn!(
                    key,
                    "a manifest key holds another object; taking the next number"
                );
                next += 1;
            }
            None => {
                store
                    .put_object(&key, body.clone().into(), &metadata)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(
                    event = "manifest",
                    key,
                    bytes = size,
                    "manifest written to the bucket"
                );
                break;
            }
        }
    }
    Ok(next)
}

async fn save_cursor_blocking(spool_dir: &Path, cursor: Cursor) -> Result<(), String> {
    let dir = spool_dir.to_owned();
    tokio::task::spawn_blocking(move || save_cursor(&dir, &cursor))
        .await
        .map_err(|e| format!("saving the manifest cursor: {e}"))?
        .map_err(|e| format!("saving the manifest cursor: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(day: &str, id: u64) -> String {
        let d = Delivery {
            delivered_at: format!("{day}T10:00:00Z"),
            user: "alice".into(),
            path: format!("/f{id}"),
            bucket: "b".into(),
            key: format!("p/alice/f{id}"),
            size: id,
            sha256: None,
            etag: None,
            version_id: None,
            sealed_at: format!("{day}T09:59:59Z"),
            box_name: "box".into(),
            id,
        };
        format!("{}\n", serde_json::to_string(&d).expect("json"))
    }

    #[test]
    fn a_batch_holds_one_date_and_skips_lines_that_do_not_parse() {
        let a1 = line("2026-12-06", 1);
        let a2 = line("2026-12-06", 2);
        let b1 = line("2026-12-07", 3);
        let text = format!("{a1}{{\"cut\n{a2}{b1}");
        let at = LogPosition {
            file: 3,
            offset: 100,
        };
        let batch = batch_of(text.as_bytes(), at);
        assert_eq!(batch.date.as_deref(), Some("2026-12-06"));
        assert_eq!(batch.body, format!("{a1}{a2}").into_bytes());
        let used = a1.len() + "{\"cut\n".len() + a2.len();
        assert_eq!(
            batch.next,
            LogPosition {
                file: 3,
                offset: 100 + used as u64
            }
        );
        let rest = batch_of(b1.as_bytes(), batch.next);
        assert_eq!(rest.date.as_deref(), Some("2026-12-07"));
    }

    #[test]
    fn manifest_keys_sort_by_date_then_number() {
        assert_eq!(
            manifest_key("site-a/", "2026-12-07", "box-1", 42),
            "site-a/_manifests/2026-12-07/box-1-000042.jsonl"
        );
    }
}
