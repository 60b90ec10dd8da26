//! The control socket: a unix socket of the running daemon that answers one JSON request per
//! line with one JSON response per line. `sftpgw status` and `sftpgw retry` are its clients.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::Snapshot;

/// Longest request line accepted.
const REQUEST_BYTES_MAX: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Re-queue failed files: all, or one user's below a path.
    Retry {
        user: Option<String>,
        path: Option<String>,
    },
    /// `sftpgw drain pause [--for D]`: no new part starts until resumed or `for_secs` pass.
    DrainPause {
        for_secs: Option<u64>,
    },
    /// `sftpgw drain resume`: ends an override; the schedule applies again.
    DrainResume,
    /// `sftpgw drain rate R [--for D]`: `bytes_per_sec` `None` is unlimited.
    DrainRate {
        bytes_per_sec: Option<u64>,
        for_secs: Option<u64>,
    },
    /// `sftpgw quarantine list`.
    QuarantineList,
    /// `sftpgw quarantine deliver NAME [--as USER:/PATH]`: without `user` and `path`, where
    /// the file's identity says.
    QuarantineDeliver {
        name: String,
        user: Option<String>,
        path: Option<String>,
    },
    /// `sftpgw quarantine delete NAME`.
    QuarantineDelete {
        name: String,
    },
    /// `sftpgw bans list`.
    BansList,
    /// `sftpgw bans clear [ADDRESS]`: one source's ban (any address of an IPv6 /64), or all.
    BansClear {
        source: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Response {
    Status(Box<Snapshot>),
    Retried {
        count: u64,
    },
    /// The shaper after a `Drain*` request.
    Shaping(Box<super::ShapingStatus>),
    /// The quarantine: up to `QUARANTINE_LISTED_COUNT_MAX` files, and how many in all.
    Quarantine {
        files: Vec<crate::spool::QuarantinedFile>,
        count: usize,
    },
    /// Sources banned now, longest remaining first.
    Bans {
        bans: Vec<crate::sftp::defender::Ban>,
    },
    /// A request that changed something, and what.
    Done {
        message: String,
    },
    Error {
        message: String,
    },
}

/// What the daemon does with a request.
pub type Handler =
    Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the daemon at {0}: {1} (is `sftpgw run` running with this config?)")]
    Connect(PathBuf, std::io::Error),
    #[error("control socket {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("control socket {0}: bad response: {1}")]
    Protocol(PathBuf, String),
}

/// Binds the socket (replacing a stale one) and serves until the task is dropped.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ControlError::Io(path.to_owned(), e))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ControlError::Io(path.to_owned(), e)),
    }
    UnixListener::bind(path).map_err(|e| ControlError::Io(path.to_owned(), e))
}

pub async fn serve(listener: UnixListener, handler: Handler) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let response = if line.len() > REQUEST_BYTES_MAX {
                    Response::Error {
                        message: "request too long".into(),
                    }
                } else {
                    match serde_json::from_str::<Request>(&line) {
                        Ok(req) => handler(req).await,
                        Err(e) => Response::Error {
                            message: format!("bad request: {e}"),
                        },
                    }
                };
                let Ok(mut text) = serde_json::to_string(&response) else {
                    break;
                };
                text.push('\n');
                if write.write_all(text.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Sends one request to the daemon at `path` and returns its response.
pub async fn request(path: &Path, req: &Request) -> Result<Response, ControlError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|e| ControlError::Connect(path.to_owned(), e))?;
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(req)
        .map_err(|e| ControlError::Protocol(path.to_owned(), e.to_string()))?;
    text.push('\n');
    write
        .write_all(text.as_bytes())
        .await
        .map_err(|e| ControlError::Io(path.to_owned(), e))?;
    let mut line = String::new();
    BufReader::new(read)
        .read_line(&mut line)
        .await
        .map_err(|e| ControlError::Io(path.to_owned(), e))?;
    serde_json::from_str(&line).map_err(|e| ControlError::Protocol(path.to_owned(), e.to_string()))
}
