//! `sftpgw demo`: the gateway plus the embedded S3 server on loopback, with a generated,
//! commented config and a client key for user `demo`. Running it again reuses the directory
//! (keys, spool, journal and S3 data stay).
//!
//! It writes only in its own directory, and runs the gateway (`gateway::run`) and the embedded S3
//! server (`s3server`); it may not reach into either beyond their public entry points.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

use crate::config::Config;
use crate::gateway::BoxError;
use crate::s3server::{S3Server, S3ServerConfig};
use crate::sftp::KeyKind;

/// The embedded S3 server's bucket.
const DEMO_BUCKET: &str = "uploads";
/// The embedded S3 server's credentials: loopback only, so fixed and public.
const DEMO_ACCESS_KEY: &str = "sftpgw-demo";
const DEMO_SECRET_KEY: &str = "sftpgw-demo-secret";

/// The config `demo` writes: a complete example, commented.
pub fn demo_config_text(
    dir: &Path,
    sftp_port: u16,
    s3_endpoint: &str,
    client_public_key: &str,
) -> String {
    let d = dir.display();
    format!(
        r#"# sftpgw configuration written by `sftpgw demo`. Every key is explained; edit and run it with
#   sftpgw run --config {d}/sftpgw.toml
# (check it first with `sftpgw check-config FILE`). Sizes: 16MiB, 1GiB. Durations: 90s, 24h.

[sftp]
# Address and port the SFTP server listens on.
listen = "127.0.0.1:{sftp_port}"
# Ed25519 host key; generated (mode 0600) on first start if missing.
host_key = "{d}/ssh_host_ed25519_key"

[spool]
# Local directory holding files until they are delivered, and the journal.
dir = "{d}/spool"
# How long a file whose upload was interrupted (no CLOSE) is kept for `reput` to resume it.
partial_ttl = "24h"

[s3]
# S3 endpoint; omit for AWS. The demo's embedded S3-compatible server:
endpoint = "{s3_endpoint}"
region = "us-east-1"
bucket = "{DEMO_BUCKET}"
# Object key = prefix + user + "/" + path.
prefix = "site-a/"
# Path-style addressing (http://host/bucket/key), needed by most S3-compatible stores.
path_style = true
access_key_id = "{DEMO_ACCESS_KEY}"
secret_access_key = "{DEMO_SECRET_KEY}"
# Multipart part size (minimum 5MiB) and parts in flight.
part_size = "16MiB"
concurrency = 4
# "when_required" sends checksum headers only where S3 requires them (works with every
# S3-compatible store); "always" lets the AWS SDK add its default CRC checksums.
checksums = "when_required"
# How often the deliveries since the last time go to the bucket as a manifest,
# site-a/_manifests/<date>/<box>-<n>.jsonl (one JSON line per delivered file); "off": never.
manifest_interval = "5m"

[control]
# Unix socket of the running daemon, read by `sftpgw status`.
socket = "{d}/control.sock"

[[users]]
name = "demo"
# OpenSSH public keys that may log in as this user.
authorized_keys = ["{client_public_key}"]
# Optional password login: an argon2id hash printed by `sftpgw user passwd`.
# password_hash = "$argon2id$v=19$..."
"#
    )
}

/// Runs the demo until `shutdown`.
pub async fn run(
    dir: &Path,
    sftp_port: u16,
    s3_port: u16,
    shutdown: impl Future<Output = ()>,
) -> anyhow_free::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let dir = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let s3 = S3Server::start(S3ServerConfig {
        root: dir.join("s3"),
        listen: SocketAddr::from(([127, 0, 0, 1], s3_port)),
        access_key: DEMO_ACCESS_KEY.to_owned(),
        secret_key: DEMO_SECRET_KEY.to_owned(),
        bucket: DEMO_BUCKET.to_owned(),
    })
    .await
    .map_err(|e| {
        format!("starting the embedded S3 server on 127.0.0.1:{s3_port}: {e} (try --s3-port 0)")
    })?;

    let key_path = dir.join("client_ed25519");
    let client_key =
        crate::sftp::keys::load_or_generate(&key_path, KeyKind::Ed25519, "demo client key").await?;
    let public = client_key
        .public_key()
        .to_openssh()
        .map_err(|e| format!("encoding the client public key: {e}"))?;
    std::fs::write(
        dir.join("client_ed25519.pub"),
        format!("{public} demo@sftpgw\n"),
    )
    .map_err(|e| format!("writing the client public key: {e}"))?;

    let config_path = dir.join("sftpgw.toml");
    std::fs::write(
        &config_path,
        demo_config_text(&dir, sftp_port, &s3.endpoint(), &public),
    )
    .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
    let config = Config::load(&config_path)?;

    let bucket_dir = dir.join("s3").join(DEMO_BUCKET);
    let key_arg = key_path.display();
    let on_ready = || {
        println!(
            "sftpgw demo is running.\n\n  \
             Connect:   sftp -i {key_arg} -P {sftp_port} demo@127.0.0.1\n  \
             Status:    sftpgw status --config {cfg}\n  \
             Objects:   {bucket} (bucket \"{DEMO_BUCKET}\", S3 endpoint {ep}, keys under site-a/demo/)\n  \
             Config:    {cfg}\n\nPress Ctrl-C to stop.",
            cfg = config_path.display(),
            bucket = bucket_dir.display(),
            ep = s3.endpoint(),
        );
    };
    crate::gateway::run(config, shutdown, on_ready).await?;
    s3.shutdown().await;
    Ok(())
}

/// Errors of the demo, boxed (anyhow stays in `main`).
mod anyhow_free {
    pub type Result<T> = std::result::Result<T, super::BoxError>;
}
