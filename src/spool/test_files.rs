//! Helpers the spool's unit tests share (the engines' tests and the ring's): files in a
//! temporary directory. Test code only; it touches nothing outside the directory it is given.

use std::fs::{File, OpenOptions};
use std::sync::Arc;

/// A new, empty file `name` in `dir`, open for reading and writing.
pub(super) fn new_file(dir: &tempfile::TempDir, name: &str) -> Arc<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.path().join(name))
        .expect("create file");
    Arc::new(file)
}
