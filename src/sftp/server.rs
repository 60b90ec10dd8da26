//! The SSH server: host key, russh configuration tuned for bulk transfer, authentication
//! against [`Users`], and one SFTP [`session`](super::session) per "sftp" subsystem channel.
//! Shells and commands are refused with a message.
//!
//! russh's defaults are for terminals (see DESIGN.md): we set TCP_NODELAY, keepalives, and a
//! rejection delay that OpenSSH's first `none` probe does not pay. The window is OpenSSH's
//! 2 MiB on purpose (see `SSH_WINDOW_BYTES`), and channel packets and the channel buffer are
//! small, because russh keeps them outside our ingest budget: a read buffer of one packet per
//! connection and a buffer of whole packets per channel (see `SSH_PACKET_BYTES_MAX`). All
//! sessions share one [`IngestBudget`].
//!
//! Lifetimes: a connection must log in within `SSH_LOGIN_GRACE_SECONDS` (the version exchange
//! included); dead peers are found by keepalives. Each SFTP session runs in a task of its own,
//! never inside russh's loop, and is told when its channel goes away (CHANNEL_CLOSE or the end
//! of the connection), because a russh channel writer waiting for window is not woken by that.
//! On shutdown every client is disconnected and `serve` returns once all sessions have ended.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use russh::keys::PrivateKey;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{HashAlg, LineEnding};
use russh::server::{
    Auth, ChannelOpenHandle, Config, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, Disconnect, MethodKind, MethodSet, Preferred, SshId, cipher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use super::budget::IngestBudget;
use super::namespace::Users;
use super::{
    SSH_AUTH_REJECTION_MILLISECONDS, SSH_CHANNEL_BUFFER_COUNT_MAX,
    SSH_CHANNELS_PER_CONNECTION_COUNT_MAX, SSH_CONNECTIONS_COUNT_MAX, SSH_KEEPALIVE_COUNT_MAX,
    SSH_KEEPALIVE_INTERVAL_SECONDS, SSH_LOGIN_GRACE_SECONDS, SSH_PACKET_BYTES_MAX,
    SSH_WINDOW_BYTES, session,
};
use crate::spool::Spool;

/// Pause after an accept error such as EMFILE, so a full descriptor table does not spin.
const ACCEPT_RETRY_MILLISECONDS: u64 = 100;
const REFUSAL_MESSAGE: &str = "This service only offers SFTP (try: sftp user@host).\r\n";

#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("host key {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("host key {path} is not an OpenSSH private key: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("host key {path} is encrypted; the gateway needs it without a passphrase")]
    Encrypted { path: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("accepting SSH connections failed: {0}")]
    Accept(io::Error),
}

/// Loads the host key at `path`, or creates one (ed25519, OpenSSH format, mode 0600, parent
/// directories created) if there is none.
pub async fn load_or_generate_host_key(path: &Path) -> Result<PrivateKey, HostKeyError> {
    let path = path.to_owned();
    let task_path = path.clone();
    tokio::task::spawn_blocking(move || load_or_generate_blocking(&task_path))
        .await
        .map_err(|join| HostKeyError::Io {
            path,
            source: io::Error::other(join),
        })?
}

fn load_or_generate_blocking(path: &Path) -> Result<PrivateKey, HostKeyError> {
    let io_error = |source| HostKeyError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key =
                PrivateKey::from_openssh(text.as_bytes()).map_err(|e| HostKeyError::Parse {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
            if key.is_encrypted() {
                return Err(HostKeyError::Encrypted {
                    path: path.to_owned(),
                });
            }
            tracing::info!(path = %path.display(), fingerprint = %key.fingerprint(HashAlg::Sha256), "host key loaded");
            Ok(key)
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let key = generate_ed25519("sftpgw host key");
            write_private_key(path, &key).map_err(io_error)?;
            tracing::info!(path = %path.display(), fingerprint = %key.fingerprint(HashAlg::Sha256), "host key generated");
            Ok(key)
        }
        Err(err) => Err(io_error(err)),
    }
}

/// A new ed25519 key from the operating system's random source.
pub fn generate_ed25519(comment: &str) -> PrivateKey {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    key
}

/// Writes `key` in OpenSSH format with mode 0600, durably: temporary file, fsync, rename,
/// fsync of the directory. Parent directories are created.
pub fn write_private_key(path: &Path, key: &PrivateKey) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let text = key.to_openssh(LineEnding::LF).map_err(io::Error::other)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(&dir)?.sync_all()
}

/// russh's configuration for this gateway.
fn ssh_config(host_key: PrivateKey, users: &Users) -> Config {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    if users.any_password() {
        methods.push(MethodKind::Password);
    }
    Config {
        server_id: SshId::Standard(Cow::Owned(format!(
            "SSH-2.0-sftpgw_{}",
            env!("CARGO_PKG_VERSION")
        ))),
        methods,
        auth_rejection_time: Duration::from_millis(SSH_AUTH_REJECTION_MILLISECONDS),
        // OpenSSH's first `none` request only asks which methods exist: nothing to hide.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        window_size: SSH_WINDOW_BYTES,
        maximum_packet_size: SSH_PACKET_BYTES_MAX,
        channel_buffer_size: SSH_CHANNEL_BUFFER_COUNT_MAX,
        preferred: Preferred {
            cipher: Cow::Owned(cipher_preference(has_aes_instructions())),
            // Compression costs CPU on the box and gains nothing on already-compressed files.
            compression: Cow::Borrowed(&[russh::compression::NONE]),
            ..Preferred::DEFAULT
        },
        keepalive_interval: Some(Duration::from_secs(SSH_KEEPALIVE_INTERVAL_SECONDS)),
        keepalive_max: SSH_KEEPALIVE_COUNT_MAX,
        // Dead peers are found by keepalives; an idle but alive client may stay.
        inactivity_timeout: None,
        nodelay: true,
        ..Config::default()
    }
}

/// AES-GCM first where the CPU has AES instructions (about twice as fast as ChaCha20 there),
/// else ChaCha20-Poly1305 first. The client's order decides in the end.
fn cipher_preference(aes: bool) -> Vec<cipher::Name> {
    let gcm = [cipher::AES_256_GCM, cipher::AES_128_GCM];
    let mut order = Vec::new();
    if aes {
        order.extend(gcm);
        order.push(cipher::CHACHA20_POLY1305);
    } else {
        order.push(cipher::CHACHA20_POLY1305);
        order.extend(gcm);
    }
    order.extend([
        cipher::AES_256_CTR,
        cipher::AES_192_CTR,
        cipher::AES_128_CTR,
    ]);
    order
}

fn has_aes_instructions() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Accepts SSH connections on `listener` until `shutdown` completes, then disconnects every
/// client and returns once all their sessions have ended (unclosed uploads are then partial).
pub async fn serve(
    listener: TcpListener,
    host_key: PrivateKey,
    users: Arc<Users>,
    spool: Arc<Spool>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let config = Arc::new(ssh_config(host_key, &users));
    // One budget for the request data of every session of this server.
    let ingest = IngestBudget::default();
    let connections = Arc::new(Semaphore::new(SSH_CONNECTIONS_COUNT_MAX));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection and session holds a clone; `recv` yields `None` once all are gone.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "SFTP server listening");
    }
    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let Ok(permit) = connections.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, limit = SSH_CONNECTIONS_COUNT_MAX, "too many connections; refused");
                        continue;
                    };
                    let connection = Connection {
                        peer,
                        users: Arc::clone(&users),
                        spool: Arc::clone(&spool),
                        ingest: ingest.clone(),
                        user: None,
                        rejections: 0,
                        channels: HashMap::new(),
                        sessions: Arc::new(Semaphore::new(SSH_CHANNELS_PER_CONNECTION_COUNT_MAX)),
                        running: HashMap::new(),
                        alive: alive_tx.clone(),
                        logged_in: watch::channel(false).0,
                    };
                    let config = Arc::clone(&config);
                    let stop = stop_rx.clone();
                    let alive = alive_tx.clone();
                    tokio::spawn(async move {
                        run_connection(config, socket, connection, stop).await;
                        drop((permit, alive));
                    });
                }
                Err(err) if is_transient_accept_error(&err) => {
                    tracing::warn!(error = %err, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MILLISECONDS)).await;
                }
                Err(err) => break Err(ServeError::Accept(err)),
            },
        }
    };
    drop(listener);
    let _ = stop_tx.send(true);
    drop(alive_tx);
    while alive_rx.recv().await.is_some() {}
    tracing::info!("SFTP server stopped");
    result
}

fn is_transient_accept_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || matches!(
        err.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ENOBUFS | nix::libc::ENOMEM)
    )
}

async fn run_connection(
    config: Arc<Config>,
    socket: TcpStream,
    connection: Connection,
    mut stop: watch::Receiver<bool>,
) {
    let peer = connection.peer;
    if let Err(err) = socket.set_nodelay(true) {
        tracing::debug!(%peer, error = %err, "set_nodelay failed");
    }
    let mut logged_in = connection.logged_in.subscribe();
    let grace = tokio::time::sleep(Duration::from_secs(SSH_LOGIN_GRACE_SECONDS));
    tokio::pin!(grace);
    // The version exchange has no timeout of its own (no inactivity timeout is set): bound it
    // by the login grace time and by shutdown.
    let session = tokio::select! {
        started = russh::server::run_stream(config, socket, connection) => match started {
            Ok(session) => session,
            Err(err) => {
                tracing::debug!(%peer, error = %err, "SSH handshake failed");
                return;
            }
        },
        () = &mut grace => {
            tracing::warn!(%peer, "no SSH version exchange within {SSH_LOGIN_GRACE_SECONDS} s; closed");
            return;
        }
        _ = stop.wait_for(|stopping| *stopping) => return,
    };
    let handle = session.handle();
    tokio::pin!(session);
    let mut stopping = false;
    // Until the client logs in (or the grace time is over).
    let mut awaiting_login = true;
    loop {
        tokio::select! {
            result = &mut session => {
                if let Err(err) = result {
                    tracing::debug!(%peer, error = %err, "SSH connection ended with an error");
                }
                return;
            }
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_ok() && *stop.borrow() {
                    let reason = "server shutting down".to_owned();
                    let _ = handle.disconnect(Disconnect::ByApplication, reason, String::new()).await;
                }
            }
            changed = logged_in.changed(), if awaiting_login => {
                awaiting_login = changed.is_ok() && !*logged_in.borrow();
            }
            () = &mut grace, if awaiting_login => {
                awaiting_login = false;
                tracing::warn!(%peer, "no login within {SSH_LOGIN_GRACE_SECONDS} s; disconnecting");
                let reason = "login grace time exceeded".to_owned();
                let _ = handle.disconnect(Disconnect::ByApplication, reason, String::new()).await;
            }
        }
    }
}

/// One SSH connection: its login state and its session channels.
struct Connection {
    peer: SocketAddr,
    users: Arc<Users>,
    spool: Arc<Spool>,
    ingest: IngestBudget,
    /// Set once authenticated.
    user: Option<String>,
    /// Rejected authentication attempts, for the log line when the connection ends.
    rejections: u32,
    /// Opened session channels not yet turned into an SFTP session.
    channels: HashMap<ChannelId, Channel<Msg>>,
    /// SFTP sessions this connection may still start.
    sessions: Arc<Semaphore>,
    /// Running sessions by channel; dropping a sender tells its session the channel is gone
    /// (on CHANNEL_CLOSE, and for all of them when the connection ends and this is dropped).
    running: HashMap<ChannelId, oneshot::Sender<()>>,
    alive: mpsc::Sender<()>,
    logged_in: watch::Sender<bool>,
}

impl Connection {
    fn accept(&mut self, user: &str, method: &str) -> Auth {
        tracing::info!(peer = %self.peer, user, method, "login");
        self.user = Some(user.to_owned());
        Auth::Accept
    }

    fn reject(&mut self, user: &str, method: &str) -> Auth {
        self.rejections += 1;
        tracing::warn!(peer = %self.peer, user, method, "login failed");
        Auth::reject()
    }

    async fn refuse(
        &mut self,
        channel: ChannelId,
        what: &str,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        tracing::info!(peer = %self.peer, user = ?self.user, what, "refused: only SFTP is offered");
        session.channel_success(channel)?;
        session.extended_data(channel, 1, REFUSAL_MESSAGE.as_bytes().to_vec())?;
        session.exit_status_request(channel, 1)?;
        session.eof(channel)?;
        session.close(channel)?;
        self.channels.remove(&channel);
        Ok(())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.user.is_none() && self.rejections > 0 {
            tracing::warn!(peer = %self.peer, rejections = self.rejections, "connection closed without login");
        }
    }
}

impl Handler for Connection {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::reject())
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Only a probe: clients offer every key they have, so a miss is not a failed login.
        if self.users.verify_key(user, offer.public_key) {
            Ok(Auth::Accept)
        } else {
            tracing::debug!(peer = %self.peer, user, "public key not accepted");
            Ok(Auth::reject())
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.users.verify_key(user, key.public_key) {
            Ok(self.accept(user, "publickey"))
        } else {
            Ok(self.reject(user, "publickey"))
        }
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let users = Arc::clone(&self.users);
        let (name, secret) = (user.to_owned(), password.to_owned());
        // argon2 takes tens of milliseconds of CPU: keep it off the async workers.
        let ok = tokio::task::spawn_blocking(move || users.verify_password(&name, &secret))
            .await
            .unwrap_or(false);
        if ok {
            Ok(self.accept(user, "password"))
        } else {
            Ok(self.reject(user, "password"))
        }
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        let _ = self.logged_in.send(true);
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.channels.len() >= SSH_CHANNELS_PER_CONNECTION_COUNT_MAX
            || self.sessions.available_permits() == 0
        {
            reply
                .reject(russh::ChannelOpenFailure::ResourceShortage)
                .await;
            return Ok(());
        }
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        self.running.remove(&channel);
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel_id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(user), "sftp") = (self.user.clone(), name) else {
            tracing::info!(peer = %self.peer, subsystem = name, "unknown subsystem refused");
            session.channel_failure(channel_id)?;
            return Ok(());
        };
        let (Some(channel), Ok(permit)) = (
            self.channels.remove(&channel_id),
            self.sessions.clone().try_acquire_owned(),
        ) else {
            session.channel_failure(channel_id)?;
            return Ok(());
        };
        session.channel_success(channel_id)?;
        let (closed_tx, closed_rx) = oneshot::channel::<()>();
        self.running.insert(channel_id, closed_tx);
        let closed = async move {
            // Nothing is sent: the sender is dropped when the channel is gone.
            let _ = closed_rx.await;
        };
        let (peer, spool, alive) = (self.peer, Arc::clone(&self.spool), self.alive.clone());
        let ingest = self.ingest.clone();
        // As OpenSSH's sshd ends a subsystem: exit-status, EOF, CLOSE. scp (SFTP mode) and
        // `ssh -s` exit with the status, and report failure (-1) when there is none.
        let handle = session.handle();
        let channel_end = move |status: u32| async move {
            let _ = handle.exit_status_request(channel_id, status).await;
            let _ = handle.eof(channel_id).await;
            let _ = handle.close(channel_id).await;
        };
        // The session runs beside russh's loop, never inside it: that loop must keep reading
        // the socket (window adjustments) while the session waits on anything.
        tokio::spawn(async move {
            let _live = crate::telemetry::SessionGuard::enter();
            tracing::info!(%peer, user, "sftp session started");
            let stream = channel.into_stream();
            let end = session::run(stream, spool, &user, &ingest, closed, channel_end).await;
            if end.is_client_error() {
                tracing::warn!(%peer, user, ?end, "sftp session ended by a protocol error");
            } else {
                tracing::info!(%peer, user, ?end, "sftp session ended");
            }
            drop((permit, alive));
        });
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse(channel, "shell", session).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data);
        self.refuse(
            channel,
            &format!("exec {}", super::wire::truncated(&command, 64)),
            session,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_gcm_leads_only_with_aes_instructions() {
        assert_eq!(cipher_preference(true)[0], cipher::AES_256_GCM);
        assert_eq!(cipher_preference(false)[0], cipher::CHACHA20_POLY1305);
        assert_eq!(
            cipher_preference(true).len(),
            cipher_preference(false).len()
        );
    }

    #[tokio::test]
    async fn host_key_is_generated_0600_then_loaded_unchanged() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/ssh_host_ed25519_key");
        let generated = load_or_generate_host_key(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = load_or_generate_host_key(&path).await.unwrap();
        assert_eq!(
            loaded.public_key().key_data(),
            generated.public_key().key_data()
        );
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----")
        );
    }

    #[tokio::test]
    async fn garbage_host_key_is_an_error_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(
            load_or_generate_host_key(&path).await,
            Err(HostKeyError::Parse { .. })
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key");
    }
}
