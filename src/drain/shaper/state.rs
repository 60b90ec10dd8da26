//! What the shaper keeps across restarts, in `<spool>/shaping-state.json`: the runtime override
//! with its expiry as wall time, and the bytes sent in the current day and month.
//!
//! Written atomically (temporary file, fsync, rename, fsync of the directory), so a crash leaves
//! the old or the new state, never a torn one. An unreadable file is logged and ignored: the
//! shaper then starts without override and with empty budgets, which is the configured
//! behaviour.
//!
//! Owns the state file's format and its atomic write; may use `config`'s `Rate` and nothing
//! else of the crate (the shaper decides what the state means).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Rate;

/// File name of the state in the spool directory.
pub const STATE_FILE_NAME: &str = "shaping-state.json";
/// A state file larger than this is not ours.
const STATE_FILE_BYTES_MAX: u64 = 64 * 1024;

/// A runtime override (`sftpgw drain pause|rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// The rate it sets (`Paused` for `sftpgw drain pause`).
    pub rate: Rate,
    /// Wall time (Unix seconds) when it ends; `None`: until `sftpgw drain resume`.
    pub until_unix: Option<u64>,
}

/// Bytes sent in one budget period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodUsage {
    /// The period, in the schedule's zone: "2026-11-27" for a day, "2026-11" for a month.
    pub period: String,
    /// Upload body bytes handed to the network in the period (every attempt counts).
    pub used_bytes: u64,
}

/// What the shaper keeps across restarts, in [`STATE_FILE_NAME`] (JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedState {
    /// The runtime override in force, if any.
    #[serde(default, rename = "override")]
    pub override_: Option<Override>,
    /// Bytes sent in the current day, for the daily budget.
    #[serde(default)]
    pub daily: Option<PeriodUsage>,
    /// Bytes sent in the current month, for the monthly budget.
    #[serde(default)]
    pub monthly: Option<PeriodUsage>,
}

/// The state file under `spool_dir`.
pub fn path_in(spool_dir: &Path) -> PathBuf {
    spool_dir.join(STATE_FILE_NAME)
}

/// The saved state; the default one if there is none or it cannot be read.
pub fn load(path: &Path) -> PersistedState {
    let read = std::fs::File::open(path).and_then(|file| {
        if file.metadata()?.len() > STATE_FILE_BYTES_MAX {
            return Err(io::Error::other("larger than a state file can be"));
        }
        serde_json::from_reader(io::BufReader::new(file)).map_err(io::Error::other)
    });
    match read {
        Ok(state) => state,
        Err(e) if e.kind() == io::ErrorKind::NotFound => PersistedState::default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "shaping state unreadable; starting without override and with empty budgets");
            PersistedState::default()
        }
    }
}

/// Replaces the state at `path` atomically and durably.
pub fn save(path: &Path, state: &PersistedState) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(&serde_json::to_vec_pretty(state).map_err(io::Error::other)?)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_a_torn_file_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        assert_eq!(load(&path), PersistedState::default());
        let state = PersistedState {
            override_: Some(Override {
                rate: Rate::BytesPerSec(5 << 20),
                until_unix: Some(1_800_000_000),
            }),
            daily: Some(PeriodUsage {
                period: "2026-11-27".into(),
                used_bytes: 42,
            }),
            monthly: None,
        };
        save(&path, &state).unwrap();
        assert_eq!(load(&path), state);
        std::fs::write(&path, b"{\"override\": {\"ra").unwrap();
        assert_eq!(load(&path), PersistedState::default());
    }
}
