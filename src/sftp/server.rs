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
//! Lifetimes: a connection must log in within `[sftp] login_grace` (30 s; the version exchange
//! included); dead peers are found by keepalives. What one source may hold and what its
//! failures cost it is the [`Defender`]'s business (`defender.rs`): it admits each accepted
//! connection, turns a login into a session if the limits allow, and is told of every failed
//! authentication, failed negotiation and expired grace time. Each SFTP session runs in a
//! task of its own, never inside russh's loop, and is told when its channel goes away (CHANNEL_CLOSE or the end
//! of the connection), because a russh channel writer waiting for window is not woken by that.
//! On shutdown every client is disconnected and `serve` returns once all sessions have ended.
//!
//! Owns listening, connections and logins; what happens inside a channel is `session`'s.
//! Its settings arrive as [`SshSetup`] and [`super::SessionPolicy`]; it may not read the
//! configuration file or touch the spool but through the sessions it starts.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use russh::keys::PrivateKey;
use russh::server::{
    Auth, ChannelOpenHandle, Config, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, Disconnect, MethodKind, MethodSet, SshId, cipher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

pub use super::keys::{generate_ed25519, write_private_key};

use super::Algorithms;
use super::algorithms;
use super::budget::IngestBudget;
use super::defender::{Defender, DefenderConfig, Penalty, SessionPermit, Startup};
use super::namespace::Users;
use super::{
    SSH_AUTH_REJECTION_MILLISECONDS, SSH_CHANNEL_BUFFER_COUNT_MAX,
    SSH_CHANNELS_PER_CONNECTION_COUNT_MAX, SSH_KEEPALIVE_COUNT_MAX, SSH_KEEPALIVE_INTERVAL_SECONDS,
    SSH_PACKET_BYTES_MAX, SSH_WINDOW_BYTES, session,
};
use crate::spool::Spool;

/// Pause after an accept error such as EMFILE, so a full descriptor table does not spin.
const ACCEPT_RETRY_MILLISECONDS: u64 = 100;
/// Longest list of algorithms a failed negotiation's log line repeats from the client.
const NEGOTIATION_OFFER_BYTES_MAX: usize = 512;
const REFUSAL_MESSAGE: &str = "This service only offers SFTP (try: sftp user@host).\r\n";

/// Why the server stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `accept` failed with an error that retrying cannot fix.
    #[error("accepting SSH connections failed: {0}")]
    Accept(io::Error),
}

/// What the SSH server offers: the algorithm profile and the host keys it needs.
pub struct SshSetup {
    /// The algorithm profile offered (`sftp.algorithms`).
    pub algorithms: Algorithms,
    /// Every host key the profile needs (see [`super::load_host_keys`]).
    pub host_keys: Vec<PrivateKey>,
    /// How long a connection may take to log in.
    pub login_grace: Duration,
    /// Connection limits and per-source penalties, shared with the control socket.
    pub defender: Arc<Defender>,
    /// What sessions accept and tolerate.
    pub session: super::SessionPolicy,
}

impl SshSetup {
    /// The default profile with one ed25519 host key, default limits and penalties.
    pub fn modern(host_key: PrivateKey) -> SshSetup {
        SshSetup {
            algorithms: Algorithms::Modern,
            host_keys: vec![host_key],
            login_grace: super::LOGIN_GRACE_DEFAULT,
            defender: Defender::new(DefenderConfig::default()),
            session: super::SessionPolicy::default(),
        }
    }
}

/// russh's configuration for this gateway.
fn ssh_config(setup: SshSetup, users: &Users) -> Config {
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
        keys: setup.host_keys,
        window_size: SSH_WINDOW_BYTES,
        maximum_packet_size: SSH_PACKET_BYTES_MAX,
        channel_buffer_size: SSH_CHANNEL_BUFFER_COUNT_MAX,
        preferred: algorithms::preferred(
            setup.algorithms,
            cipher_preference(has_aes_instructions()),
        ),
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
pub(super) fn cipher_preference(aes: bool) -> Vec<cipher::Name> {
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
    setup: SshSetup,
    users: Arc<Users>,
    spool: Arc<Spool>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (algorithms, login_grace, policy) =
        (setup.algorithms, setup.login_grace, setup.session.clone());
    let defender = Arc::clone(&setup.defender);
    let config = Arc::new(ssh_config(setup, &users));
    // One budget for the request data of every session of this server.
    let ingest = IngestBudget::default();
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
                    let startup = match defender.admit(peer.ip(), Instant::now()) {
                        Ok(startup) => startup,
                        Err(refusal) => {
                            // Banned sources were logged once when banned; the rest are a
                            // flood, logged at debug only so that it cannot flood the log.
                            tracing::debug!(%peer, %refusal, "connection refused");
                            continue;
                        }
                    };
                    let connection = Connection {
                        peer,
                        policy: policy.clone(),
                        defender: Arc::clone(&defender),
                        startup: Some(startup),
                        permit: None,
                        algorithms,
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
                        run_connection(config, socket, connection, login_grace, stop).await;
                        drop(alive);
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
    login_grace: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let (peer, algorithms) = (connection.peer, connection.algorithms);
    let defender = Arc::clone(&connection.defender);
    let grace_secs = login_grace.as_secs();
    if let Err(err) = socket.set_nodelay(true) {
        tracing::debug!(%peer, error = %err, "set_nodelay failed");
    }
    let mut logged_in = connection.logged_in.subscribe();
    let grace = tokio::time::sleep(login_grace);
    tokio::pin!(grace);
    // The version exchange has no timeout of its own (no inactivity timeout is set): bound it
    // by the login grace time and by shutdown.
    let session = tokio::select! {
        started = russh::server::run_stream(config, socket, connection) => match started {
            Ok(session) => session,
            Err(err) => {
                log_connection_error(peer, algorithms, &err);
                if is_negotiation_error(&err) {
                    defender.penalize(peer.ip(), Penalty::Negotiation, Instant::now());
                }
                return;
            }
        },
        () = &mut grace => {
            tracing::warn!(%peer, "no SSH version exchange within {grace_secs} s; closed");
            defender.penalize(peer.ip(), Penalty::GraceExpired, Instant::now());
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
                    log_connection_error(peer, algorithms, &err);
                    if awaiting_login && is_negotiation_error(&err) {
                        defender.penalize(peer.ip(), Penalty::Negotiation, Instant::now());
                    }
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
                tracing::warn!(%peer, "no login within {grace_secs} s; disconnecting");
                defender.penalize(peer.ip(), Penalty::GraceExpired, Instant::now());
                let reason = "login grace time exceeded".to_owned();
                let _ = handle.disconnect(Disconnect::ByApplication, reason, String::new()).await;
            }
        }
    }
}

/// Whether `err` is the peer's fault in the protocol (garbage, no common algorithm), not a
/// plain disconnect: such errors before login count as a penalty of the source.
fn is_negotiation_error(err: &russh::Error) -> bool {
    !matches!(
        err,
        russh::Error::Disconnect
            | russh::Error::HUP
            | russh::Error::ConnectionTimeout
            | russh::Error::KeepaliveTimeout
            | russh::Error::InactivityTimeout
            | russh::Error::IO(_)
    )
}

/// A failed negotiation gets one warning that says what the client offered and which setting
/// would admit it, and counts in status; other connection errors are the client's business.
fn log_connection_error(peer: SocketAddr, algorithms: Algorithms, err: &russh::Error) {
    let russh::Error::NoCommonAlgo { kind, theirs, .. } = err else {
        tracing::debug!(%peer, error = %err, "SSH connection ended with an error");
        return;
    };
    let hint = algorithms::negotiation_hint(algorithms, kind, theirs);
    let offered = super::wire::truncated(&theirs.join(","), NEGOTIATION_OFFER_BYTES_MAX);
    tracing::warn!(%peer, ?kind, offered = %offered, "SSH negotiation failed: {hint}");
    crate::telemetry::record_error(
        crate::telemetry::ErrorKind::SshNegotiation,
        None,
        &format!("{peer}: no common {kind:?} algorithm (client offered {offered}); {hint}"),
    );
}

/// One SSH connection: its login state and its session channels.
struct Connection {
    peer: SocketAddr,
    /// What sessions accept and tolerate.
    policy: super::SessionPolicy,
    defender: Arc<Defender>,
    /// Counts this connection as not logged in yet (released at login or at the end).
    startup: Option<Startup>,
    /// Counts this connection as a session once logged in.
    permit: Option<SessionPermit>,
    /// Decides which user-key signatures are accepted.
    algorithms: Algorithms,
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
    /// Right credentials: a login, unless the source is banned or the session limits are
    /// reached (then refused like wrong credentials, with the reason in the log).
    fn accept(&mut self, user: &str, method: &str) -> Auth {
        let now = Instant::now();
        let Some(startup) = self.startup.take() else {
            return Auth::reject();
        };
        match startup.login(self.peer.ip(), now) {
            Ok(permit) => {
                tracing::info!(peer = %self.peer, user, method, "login");
                self.permit = Some(permit);
                self.user = Some(user.to_owned());
                Auth::Accept
            }
            Err((startup, refusal)) => {
                self.startup = Some(startup);
                self.rejections += 1;
                tracing::warn!(peer = %self.peer, user, method, %refusal, "login refused");
                Auth::reject()
            }
        }
    }

    fn reject(&mut self, user: &str, method: &str) -> Auth {
        self.rejections += 1;
        tracing::warn!(peer = %self.peer, user, method, "login failed");
        let ip = self.peer.ip();
        self.defender
            .penalize(ip, Penalty::AuthFailure, Instant::now());
        Auth::reject()
    }

    /// Whether the source is banned now: nothing it sends is checked any more.
    fn banned(&self) -> bool {
        self.defender.is_banned(self.peer.ip(), Instant::now())
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
        if algorithms::accepts_user_signature(self.algorithms, offer.algorithm)
            && self.users.verify_key(user, offer.public_key)
        {
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
        if !algorithms::accepts_user_signature(self.algorithms, key.algorithm) {
            tracing::warn!(peer = %self.peer, user, algorithm = %key.algorithm,
                "signature algorithm refused by [sftp] algorithms = \"modern\" (\"compatible\" accepts it)");
            Ok(self.reject(user, "publickey"))
        } else if self.users.verify_key(user, key.public_key) {
            Ok(self.accept(user, "publickey"))
        } else {
            Ok(self.reject(user, "publickey"))
        }
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        if self.banned() {
            tracing::debug!(peer = %self.peer, user, "password from a banned source not checked");
            return Ok(Auth::reject());
        }
        let ok = self.users.verify_password_pooled(user, password).await;
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
        let policy = self.policy.clone();
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
            let end =
                session::run(stream, spool, &user, policy, &ingest, closed, channel_end).await;
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
}
