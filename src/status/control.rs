//! The control socket: a unix socket of the running daemon that answers one JSON request per
//! line with one JSON response per line. `sftpgw status`, `retry`, `drain`, `quarantine`,
//! `bans` and the console are its clients.
//!
//! Who may use it: the file is mode 0660 and of group `sftpgw` (where it exists; the box's
//! `ops` user is a member), set right after bind; each peer's credentials (SO_PEERCRED, and
//! its supplementary groups from /proc) must be root, the daemon's user, or in that group.
//! A request line is read at most `REQUEST_BYTES_MAX` long; a longer one is answered with an
//! error and the connection closed, so a peer cannot make the daemon buffer without bound.
//!
//! Owns the socket, its protocol and its access rule. What a request does is the [`Handler`] the
//! gateway gives it, so this module may not touch the spool, the drain or the sessions; it uses
//! `events` to stream events and the data types of `spool` and `sftp::defender` in its messages.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::Snapshot;

/// Longest request line accepted.
const REQUEST_BYTES_MAX: usize = 64 * 1024;

/// One request line of the control socket, tagged by `cmd`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// `sftpgw status`: the daemon's snapshot.
    Status,
    /// Re-queue failed files: all, or one user's below a path.
    Retry {
        /// Only this user's failed files (needed with `path`).
        user: Option<String>,
        /// Only failed files at or below this path.
        path: Option<String>,
    },
    /// `sftpgw drain pause [--for D]`: no new part starts until resumed or `for_secs` pass.
    DrainPause {
        /// Seconds the pause lasts; `None` until `sftpgw drain resume`.
        for_secs: Option<u64>,
    },
    /// `sftpgw drain resume`: ends an override; the schedule applies again.
    DrainResume,
    /// `sftpgw drain rate R [--for D]`: `bytes_per_sec` `None` is unlimited.
    DrainRate {
        /// The limit in bytes per second.
        bytes_per_sec: Option<u64>,
        /// Seconds the rate holds; `None` until `sftpgw drain resume`.
        for_secs: Option<u64>,
    },
    /// `sftpgw quarantine list`.
    QuarantineList,
    /// `sftpgw quarantine deliver NAME [--as USER:/PATH]`: without `user` and `path`, where
    /// the file's identity says.
    QuarantineDeliver {
        /// The quarantined file's name, as `quarantine list` shows it.
        name: String,
        /// The user to deliver as (with `path`).
        user: Option<String>,
        /// The path to deliver to (with `user`).
        path: Option<String>,
    },
    /// `sftpgw quarantine delete NAME`.
    QuarantineDelete {
        /// The quarantined file's name, as `quarantine list` shows it.
        name: String,
    },
    /// `sftpgw files`: one page of the files in `state`, oldest first, after the file id
    /// `after` (from the start with `None`); at most `limit` (cut to
    /// [`super::FILES_PAGE_COUNT_MAX`]).
    Files {
        /// The state listed.
        state: crate::spool::FileState,
        /// The id of the last file of the previous page.
        after: Option<u64>,
        /// Files wanted at most.
        limit: Option<usize>,
    },
    /// `sftpgw events --follow`: after an `Events` reply, one JSON object per line for each
    /// lifecycle event, until the client goes.
    Events,
    /// `sftpgw bans list`.
    BansList,
    /// `sftpgw bans clear [ADDRESS]`: one source's ban (any address of an IPv6 /64), or all.
    BansClear {
        /// An IP address; `None` lifts every ban.
        source: Option<String>,
    },
}

/// One response line of the control socket, tagged by `reply`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Response {
    /// The snapshot a `Status` request asked for.
    Status(Box<Snapshot>),
    /// What a `Retry` did.
    Retried {
        /// Failed files queued again.
        count: u64,
    },
    /// The shaper after a `Drain*` request.
    Shaping(Box<super::ShapingStatus>),
    /// The quarantine: up to `QUARANTINE_LISTED_COUNT_MAX` files, and how many in all.
    Quarantine {
        /// The files listed, oldest first.
        files: Vec<crate::spool::QuarantinedFile>,
        /// Files in the quarantine, listed or not.
        count: usize,
    },
    /// A page of `Request::Files`: the files, the `after` of the next page (`None`: this was
    /// the last), and how many files are in that state in all.
    Files {
        /// The files of the page, oldest first.
        files: Vec<super::FileStatus>,
        /// The `after` of the next page; `None` on the last.
        next: Option<u64>,
        /// Files in the state asked for, on every page.
        count: u64,
    },
    /// Lifecycle events follow, one JSON object per line.
    Events,
    /// Sources banned now, longest remaining first.
    Bans {
        /// The bans in force.
        bans: Vec<crate::sftp::defender::Ban>,
    },
    /// A request that changed something, and what.
    Done {
        /// One line for the operator.
        message: String,
    },
    /// The request was refused or failed.
    Error {
        /// Why, for the operator.
        message: String,
    },
}

/// A `Retried` response as the `Done` line a client prints for it; any other response as is.
pub fn retried_as_done(response: Response) -> Response {
    match response {
        Response::Retried { count } => Response::Done {
            message: format!("{count} failed file(s) queued again"),
        },
        other => other,
    }
}

/// What the daemon does with a request.
pub type Handler =
    Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// Why a client could not get an answer from the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket does not accept: the daemon is not running, or runs with another config.
    #[error("cannot reach the daemon at {0}: {1} (is `sftpgw run` running with this config?)")]
    Connect(PathBuf, std::io::Error),
    /// Reading or writing the socket failed after connecting.
    #[error("control socket {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// A request or a response line could not be encoded or decoded.
    #[error("control socket {0}: bad response: {1}")]
    Protocol(PathBuf, String),
}

/// The group that may use the control socket besides root and the daemon's own user: the
/// console's `ops` user is a member on the box.
pub const CONTROL_GROUP: &str = "sftpgw";

/// The bound control socket, and the group allowed to use it.
pub struct ControlListener {
    listener: UnixListener,
    /// The socket file's group: `sftpgw` where it exists, else the daemon's own group.
    group: u32,
}

/// Binds the socket (replacing a stale one), then at once makes it mode 0660 and, where the
/// group [`CONTROL_GROUP`] exists, of that group.
pub fn bind(path: &Path) -> Result<ControlListener, ControlError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ControlError::Io(path.to_owned(), e))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ControlError::Io(path.to_owned(), e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| ControlError::Io(path.to_owned(), e))?;
    let io = |e: std::io::Error| ControlError::Io(path.to_owned(), e);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    let mut group = nix::unistd::getegid().as_raw();
    if let Ok(Some(g)) = nix::unistd::Group::from_name(CONTROL_GROUP) {
        match nix::unistd::chown(path, None, Some(g.gid)) {
            Ok(()) => group = g.gid.as_raw(),
            Err(e) => tracing::warn!(path = %path.display(), error = %e,
                "cannot give the control socket to group {CONTROL_GROUP}"),
        }
    }
    Ok(ControlListener { listener, group })
}

/// Whether a peer (its uid, its primary gid, the process's other groups) may use a socket of
/// `group` served by `own_uid`: root, the daemon's own user, or a member of the group.
pub fn peer_allowed(uid: u32, gid: u32, groups: &[u32], own_uid: u32, group: u32) -> bool {
    uid == 0 || uid == own_uid || gid == group || groups.contains(&group)
}

/// The supplementary groups of process `pid` (from /proc), empty if unknown.
fn groups_of(pid: Option<i32>) -> Vec<u32> {
    let Some(pid) = pid else {
        return Vec::new();
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Answers every connection on `control` with `handler`, one request line at a time, until the task
/// is aborted; peers that are not allowed are closed at once.
pub async fn serve(control: ControlListener, handler: Handler) {
    let own_uid = nix::unistd::geteuid().as_raw();
    loop {
        let Ok((stream, _)) = control.listener.accept().await else {
            continue;
        };
        // The file's mode already keeps others out; this holds if it is ever changed.
        let allowed = stream.peer_cred().is_ok_and(|c| {
            peer_allowed(
                c.uid(),
                c.gid(),
                &groups_of(c.pid()),
                own_uid,
                control.group,
            )
        });
        let handler = handler.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut reader = BufReader::new(read);
            loop {
                let response = if allowed {
                    match read_request(&mut reader).await {
                        Ok(Some(line)) => match serde_json::from_slice::<Request>(&line) {
                            Ok(Request::Events) => {
                                stream_events(&mut write).await;
                                break;
                            }
                            Ok(req) => handler(req).await,
                            Err(e) => Response::Error {
                                message: format!("bad request: {e}"),
                            },
                        },
                        Ok(None) => break,
                        Err(message) => Response::Error { message },
                    }
                } else {
                    tracing::warn!(
                        "control socket: a peer that is neither root, the daemon's \
                        user nor in group {CONTROL_GROUP} was refused"
                    );
                    Response::Error {
                        message: format!("permission denied: root or group {CONTROL_GROUP} only"),
                    }
                };
                let fatal = !allowed
                    || matches!(&response, Response::Error { message } if message == TOO_LONG);
                let Ok(mut text) = serde_json::to_string(&response) else {
                    break;
                };
                text.push('\n');
                if write.write_all(text.as_bytes()).await.is_err() || fatal {
                    break;
                }
            }
        });
    }
}

const TOO_LONG: &str = "request too long";

/// Answers `Events`, then writes each lifecycle event as a line until the peer goes. A peer
/// that falls behind by more than the broadcast holds gets a `lagged` line with the number of
/// events it missed; the daemon never waits for it.
async fn stream_events(write: &mut (impl tokio::io::AsyncWrite + Unpin)) {
    use tokio::sync::broadcast::error::RecvError;
    let mut events = crate::events::subscribe();
    let Ok(mut head) = serde_json::to_string(&Response::Events) else {
        return;
    };
    head.push('\n');
    if write.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    loop {
        let line = match events.recv().await {
            Ok(event) => format!("{event}\n"),
            Err(RecvError::Lagged(missed)) => {
                format!("{{\"event\":\"lagged\",\"missed\":{missed}}}\n")
            }
            Err(RecvError::Closed) => return,
        };
        if write.write_all(line.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The next request line (without its newline), `None` at the end, or an error if it is longer
/// than [`REQUEST_BYTES_MAX`]: never more than that is read into memory.
async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Vec<u8>>, String> {
    use tokio::io::AsyncReadExt;
    let mut line = Vec::new();
    let limit = u64::try_from(REQUEST_BYTES_MAX + 1).unwrap_or(u64::MAX);
    let n = (&mut *reader)
        .take(limit)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| e.to_string())?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > REQUEST_BYTES_MAX {
        return Err(TOO_LONG.into());
    }
    Ok(Some(line))
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

/// `sftpgw events --follow`: asks the daemon for its events, calls `started` once the daemon
/// follows (every event from then on comes), then `each` with every line (one JSON object)
/// until the daemon goes or `each` fails.
pub async fn follow_events(
    path: &Path,
    started: impl FnOnce(),
    mut each: impl FnMut(&str) -> std::io::Result<()>,
) -> Result<(), ControlError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|e| ControlError::Connect(path.to_owned(), e))?;
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(&Request::Events)
        .map_err(|e| ControlError::Protocol(path.to_owned(), e.to_string()))?;
    text.push('\n');
    let io = |e| ControlError::Io(path.to_owned(), e);
    write.write_all(text.as_bytes()).await.map_err(io)?;
    let mut lines = BufReader::new(read).lines();
    match lines.next_line().await.map_err(io)? {
        Some(head) if serde_json::from_str::<Response>(&head).ok() == Some(Response::Events) => {
            started();
        }
        Some(other) => {
            return Err(ControlError::Protocol(
                path.to_owned(),
                format!("not an events stream (a daemon older than `sftpgw events`?): {other}"),
            ));
        }
        None => return Ok(()),
    }
    while let Some(line) = lines.next_line().await.map_err(io)? {
        each(&line).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod peer_tests {
    use super::peer_allowed;

    #[test]
    fn only_root_the_daemons_user_and_members_of_the_group_may_use_the_socket() {
        let (daemon, group) = (900, 900);
        assert!(peer_allowed(0, 0, &[], daemon, group), "root");
        assert!(
            peer_allowed(900, 900, &[], daemon, group),
            "the daemon's user"
        );
        assert!(
            peer_allowed(901, 901, &[900], daemon, group),
            "ops, a member"
        );
        assert!(peer_allowed(902, 900, &[], daemon, group), "primary group");
        assert!(
            !peer_allowed(1000, 1000, &[100, 27], daemon, group),
            "anyone else"
        );
    }
}
