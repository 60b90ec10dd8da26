//! The configuration file: schema, defaults and validation.
//!
//! Every error names the file, the line and the key (see [`ConfigError`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub sftp: SftpConfig,
    pub spool: SpoolConfig,
    pub s3: S3Config,
    pub control: ControlConfig,
    pub users: Vec<User>,
}

#[derive(Debug, Clone)]
pub struct SftpConfig {
    pub listen: SocketAddr,
    /// Generated (mode 0600) on first start if missing.
    pub host_key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub partial_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct S3Config {
    /// `None` for AWS.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Object key = prefix + user + "/" + path.
    pub prefix: String,
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub part_size: u64,
    pub concurrency: usize,
    pub checksums: ChecksumMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumMode {
    /// Send checksum headers only where S3 requires them (works with every compatible store).
    WhenRequired,
    /// Let the SDK add its default CRC checksums.
    Always,
}

#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Unix socket of the running daemon, read by `sftpgw status`.
    pub socket: PathBuf,
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    /// OpenSSH `authorized_keys` lines.
    pub authorized_keys: Vec<String>,
    /// PHC string, `$argon2id$...`.
    pub password_hash: Option<String>,
}
