//! The configuration file: schema, defaults and validation.
//!
//! Every error names the file, the line and the key (see [`ConfigError`]), e.g.
//! `/etc/sftpgw.toml:12: s3.part_size: 4MiB is below the minimum part size of 5MiB`.
//!
//! How: the file is parsed into a spanned TOML tree first (syntax errors carry their line), then
//! deserialized into private `Raw*` structs with `deny_unknown_fields` whose fields are small
//! newtypes validating themselves inside `Deserialize`, so that toml attaches the value's span
//! to every error. A span is turned into a line and, by looking it up in the tree, into the
//! dotted key. Checks across keys run afterwards on `Spanned` values. [`EXAMPLE`] is a complete,
//! commented configuration.
//!
//! Relative paths in the file are relative to the directory of the file.
//!
//! # Dependencies
//!
//! `config` owns the file's schema, its defaults and its validation, and only turns text into
//! values. It parses into the types of the modules it configures (`sftp`, `spool`, `webhook`)
//! and uses `limits`; those modules never read it (the drain reads the `[s3]` and `[shaping]`
//! types that `config` owns). It must not use `drain`, `journal`, `status` or `gateway`, nor
//! start, open or connect anything: the binary hands each module its part of the [`Config`].

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::limits::PART_SIZE_BYTES_DEFAULT;
use crate::sftp::defender::DefenderConfig;

mod credentials;
mod example;
mod shaping;
mod values;

use values::{
    AuthorizedKey, Bucket, Concurrency, Endpoint, FilePath, Limit, Listen, MaxFileSize, Net,
    NonEmpty, PartSize, PasswordHash, Percent, Prefix, QuotaBytes, RetainedFiles, SessionsLimit,
    StartupsSpec, Ttl, TtlOrOff, UserName, VirtualDirName, WebhookUrl,
};

pub use example::EXAMPLE;
// Types the SFTP front end owns, read here: `sftp` never reads `config` (docs/ARCHITECTURE.md).
pub use crate::sftp::namespace::User;
pub use crate::sftp::{Algorithms, LOGIN_GRACE_DEFAULT};
pub use shaping::{DAY_MINUTES, Days, RATE_BYTES_PER_SEC_MIN, Rate, ShapingConfig, Window};
pub use values::parse_duration;

/// Longest user name; it is a path component of every object key of the user.
pub const USER_NAME_BYTES_MAX: usize = 64;
/// Default of `spool.partial_ttl`.
pub const PARTIAL_TTL_DEFAULT: Duration = Duration::from_secs(24 * 60 * 60);
/// Default of `spool.high_watermark`, in percent of the spool file system.
pub const HIGH_WATERMARK_PERCENT_DEFAULT: u8 = 90;
/// Default of `spool.low_watermark`, in percent of the spool file system.
pub const LOW_WATERMARK_PERCENT_DEFAULT: u8 = 80;
/// Default of `s3.concurrency`.
pub const CONCURRENCY_DEFAULT: usize = 4;
/// Default of `s3.region`.
pub const REGION_DEFAULT: &str = "us-east-1";
/// Default of `s3.profile`.
pub const PROFILE_DEFAULT: &str = "default";
/// File name of the control socket in the spool directory, when `control.socket` is not set.
pub const CONTROL_SOCKET_FILE_NAME: &str = "control.sock";

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[sftp]`: the SSH/SFTP server.
    pub sftp: SftpConfig,
    /// `[spool]`: where uploads wait for the drain.
    pub spool: SpoolConfig,
    /// `[s3]`: the bucket and how files are delivered to it.
    pub s3: S3Config,
    /// `[control]`: the socket of the control commands.
    pub control: ControlConfig,
    /// `[metrics]`: Prometheus metrics, off unless configured.
    pub metrics: Option<MetricsConfig>,
    /// `[shaping]`: the drain's WAN rate, schedule and budgets.
    pub shaping: ShapingConfig,
    /// `[events] webhook`: where lifecycle events are POSTed, if anywhere.
    pub webhook: Option<crate::webhook::WebhookConfig>,
    /// `[[users]]`, in file order: names are unique and at least one can log in.
    pub users: Vec<User>,
}

/// `[sftp]`, validated.
#[derive(Debug, Clone)]
pub struct SftpConfig {
    /// Address and port the SSH server listens on (`sftp.listen`).
    pub listen: SocketAddr,
    /// Generated (mode 0600) on first start if missing.
    pub host_key: PathBuf,
    /// Which SSH algorithms are offered (`sftp.algorithms`).
    pub algorithms: Algorithms,
    /// How long a connection may take to log in (`sftp.login_grace`).
    pub login_grace: Duration,
    /// A session without requests for this long is ended (`sftp.idle_timeout`; `None`: off).
    pub idle_timeout: Option<Duration>,
    /// Connection limits and per-source penalties (`sftp.max_*`, `ban*`, `allow`).
    pub defender: DefenderConfig,
    /// New names may hold control characters and bidi overrides (`sftp.allow_control_characters`).
    pub allow_control_characters: bool,
    /// The read-only directory of receipts and queue in every user's `/` (`sftp.virtual_dir`;
    /// `None`: "off").
    pub virtual_dir: Option<String>,
}

/// `sftp.virtual_dir` unless set.
pub const VIRTUAL_DIR_DEFAULT: &str = ".sftpgw";

/// `sftp.idle_timeout` unless set: SFTPGo's default. WinSCP and FileZilla reconnect by
/// themselves; a forgotten client no longer holds one of `max_sessions` forever.
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(15 * 60);

/// `[spool]`, validated.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// The spool directory (`spool.dir`): partial and sealed files and the journal.
    pub dir: PathBuf,
    /// How long an upload that ended without CLOSE is kept for resuming (`spool.partial_ttl`;
    /// longer than zero).
    pub partial_ttl: Duration,
    /// New uploads are refused while the spool file system is fuller than this (0..=100).
    pub high_watermark_percent: u8,
    /// ... and accepted again once it is below this (0..=100, at most the high watermark).
    pub low_watermark_percent: u8,
    /// How spool files are written (`spool.engine`).
    pub engine: EngineChoice,
    /// `spool.max_file_size`; `None`: half the spool's file system (see
    /// [`SpoolConfig::max_file_size_for`]).
    pub max_file_size: Option<u64>,
    /// `spool.delivered_retention`: how many delivered files, and for how long, stay listed
    /// (in memory and in the journal's snapshot).
    pub delivered_retention: crate::spool::DeliveredRetention,
}

impl SpoolConfig {
    /// The largest file accepted on a spool file system of `total_bytes`: the configured
    /// `max_file_size`, or by default half the file system, so that one upload can never take
    /// the spool from everyone else; never above the largest S3 object.
    pub fn max_file_size_for(&self, total_bytes: u64) -> u64 {
        let half = match total_bytes {
            0 => crate::limits::OBJECT_BYTES_MAX, // Size unknown: only S3's own limit.
            total => total / 2,
        };
        self.max_file_size
            .unwrap_or(half)
            .clamp(1, crate::limits::OBJECT_BYTES_MAX)
    }
}

/// `spool.engine`; the spool owns the type (config depends on spool, never the reverse).
pub use crate::spool::EngineChoice;

/// Default `s3.manifest_interval`: a manifest of the deliveries every 5 minutes.
pub const MANIFEST_INTERVAL_DEFAULT: Duration = Duration::from_secs(5 * 60);
/// Default `s3.failed_retry`: the first automatic retry of a failed file.
pub const FAILED_RETRY_DEFAULT: Duration = Duration::from_secs(15 * 60);
/// Default `s3.failed_retry_max`: the longest wait between automatic retries.
pub const FAILED_RETRY_MAX_DEFAULT: Duration = Duration::from_secs(6 * 3600);

/// `[s3]`, validated; the keys are read from `s3.credentials_file` when one is given.
#[derive(Clone)]
pub struct S3Config {
    /// `None` for AWS.
    pub endpoint: Option<String>,
    /// The region requests are signed for (`s3.region`).
    pub region: String,
    /// The target bucket (`s3.bucket`), a valid S3 bucket name.
    pub bucket: String,
    /// Object key = prefix + user + "/" + path.
    pub prefix: String,
    /// Path-style URLs (`http://host/bucket/key`) instead of virtual-hosted ones.
    pub path_style: bool,
    /// The access key id requests are signed with.
    pub access_key_id: String,
    /// Its secret; never shown by `Debug`.
    pub secret_access_key: String,
    /// Bytes of each multipart part (`s3.part_size`), from
    /// [`crate::limits::PART_SIZE_BYTES_MIN`] to [`crate::limits::PART_SIZE_BYTES_MAX`].
    pub part_size: u64,
    /// Parts uploaded at the same time (`s3.concurrency`), from 1 to
    /// [`crate::limits::DRAIN_CONCURRENCY_MAX`].
    pub concurrency: usize,
    /// Which checksum headers requests carry (`s3.checksums`).
    pub checksums: ChecksumMode,
    /// Upload parts of a file that arrives in order while it is still arriving.
    pub early_drain: bool,
    /// A failed file is retried by itself this long after it failed, doubling per attempt up
    /// to `failed_retry_max` (`s3.failed_retry`, `s3.failed_retry_max`).
    pub failed_retry: Duration,
    /// The longest wait between two automatic retries of a failed file.
    pub failed_retry_max: Duration,
    /// `s3.overwrite`: what happens when the key already holds an object.
    pub overwrite: OverwriteMode,
    /// `s3.full_object_checksum`: single PUTs carry `x-amz-checksum-sha256` of the whole file,
    /// multipart uploads a full-object CRC32C (S3 checks it on arrival and keeps it with the
    /// object).
    pub full_object_checksum: bool,
    /// `s3.manifest_interval`: how often the delivery log is copied to
    /// `<prefix>_manifests/` in the bucket; `None`: never.
    pub manifest_interval: Option<Duration>,
}

/// `s3.overwrite`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverwriteMode {
    /// The newest acknowledged version replaces the object (S3's own behaviour).
    #[default]
    Replace,
    /// Never replace an object: puts and completes carry `If-None-Match: *`; a key that holds
    /// another object puts the file in the `conflict` state.
    Never,
}

impl S3Config {
    /// The endpoint as people read it: its URL, or "AWS" when none is configured.
    pub fn endpoint_label(&self) -> String {
        self.endpoint.clone().unwrap_or_else(|| "AWS".to_owned())
    }
}

impl fmt::Debug for S3Config {
    /// Like a derived `Debug`, but the secret key never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("part_size", &self.part_size)
            .field("concurrency", &self.concurrency)
            .field("checksums", &self.checksums)
            .field("early_drain", &self.early_drain)
            .field("full_object_checksum", &self.full_object_checksum)
            .finish()
    }
}

/// `s3.checksums`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChecksumMode {
    /// Send checksum headers only where S3 requires them (works with every compatible store).
    WhenRequired,
    /// Let the SDK add its default CRC checksums.
    Always,
}

/// `[metrics]`, validated.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Address of the `GET /metrics` HTTP endpoint, e.g. `127.0.0.1:9100`.
    pub listen: SocketAddr,
}

/// `[control]`, validated.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Unix socket of the running daemon, read by `sftpgw status`.
    pub socket: PathBuf,
}

/// Why a configuration was refused. The `Display` form is `file:line: key: message`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file cannot be read.
    #[error("{}: cannot read: {error}", path.display())]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// The file is not valid TOML.
    #[error("{}:{line}: {message}", path.display())]
    Syntax {
        /// The configuration file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// The TOML parser's message.
        message: String,
    },
    /// Valid TOML, but a key is unknown, missing or has a bad value.
    #[error("{}:{line}: {key}: {message}", path.display())]
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// 1-based line of the key or value at fault.
        line: usize,
        /// The dotted key, e.g. `s3.part_size` or `users[1].name`.
        key: String,
        /// What is wrong with it and what would be right.
        message: String,
    },
}

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&text, path)
    }

    /// Validates configuration `text`; `origin` is the file it came from, named in errors and
    /// the base of relative paths. Reads `s3.credentials_file` if one is given.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let source = Source { text, origin };
        let tree = DeTable::parse(text).map_err(|error| source.syntax_error(&error))?;
        let raw = RawConfig::deserialize(toml::de::Deserializer::from(tree.clone()))
            .map_err(|error| source.schema_error(&tree, &error))?;
        raw.validate(&source)
    }
}

/// The text being parsed and where it came from, for error messages.
struct Source<'a> {
    text: &'a str,
    origin: &'a Path,
}

impl Source<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.text.as_bytes()[..offset]
            .iter()
            .filter(|&&byte| byte == b'\n')
            .count()
            + 1
    }

    fn invalid(&self, offset: usize, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.origin.to_path_buf(),
            line: self.line_of(offset),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn syntax_error(&self, error: &toml::de::Error) -> ConfigError {
        let line = self.line_of(error.span().map_or(0, |span| span.start));
        let mut message = error.message().trim_end().replace('\n', "; ");
        // toml's messages do not say where ("duplicate key"): quote the line, but not a value,
        // which may be a secret.
        if let Some(content) = self.text.lines().nth(line - 1).map(str::trim)
            && !content.is_empty()
        {
            match content.split_once('=') {
                Some((key, _)) => message = format!("{message}, in `{} = ...`", key.trim()),
                None => message = format!("{message}, in `{content}`"),
            }
        }
        ConfigError::Syntax {
            path: self.origin.to_path_buf(),
            line,
            message,
        }
    }

    fn schema_error(&self, tree: &Spanned<DeTable<'_>>, error: &toml::de::Error) -> ConfigError {
        let span = error.span().unwrap_or_default();
        let offset = span.start;
        // An error about the whole document (a missing section) belongs to no key.
        let mut key = if span == tree.span() {
            String::new()
        } else {
            key_path_at(tree.get_ref(), offset)
        };
        let mut message = error.message().to_owned();
        // serde reports a missing key at its table; name the key itself.
        let missing = error
            .message()
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'));
        if let Some(field) = missing {
            message = if key.is_empty() {
                format!("required section [{field}] is missing")
            } else {
                "required key is missing".to_owned()
            };
            key = join_key(&key, field);
        }
        self.invalid(offset, &key, message)
    }

    /// `relative` resolved against the directory of the configuration file.
    fn resolve(&self, relative: PathBuf) -> PathBuf {
        match self.origin.parent() {
            Some(base) if relative.is_relative() && !base.as_os_str().is_empty() => {
                base.join(relative)
            }
            _ => relative,
        }
    }
}

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// The dotted key (`users[1].name`) whose key or value is the smallest one around `offset`.
fn key_path_at(tree: &DeTable<'_>, offset: usize) -> String {
    let mut best = None;
    visit_table(tree, "", offset, &mut best);
    best.map(|(_, path)| path).unwrap_or_default()
}

type BestMatch = Option<(usize, String)>;

fn visit_table(table: &DeTable<'_>, prefix: &str, offset: usize, best: &mut BestMatch) {
    for (key, value) in table.iter() {
        let path = join_key(prefix, key.get_ref());
        consider(key.span(), &path, offset, best);
        visit_value(value, &path, offset, best);
    }
}

fn visit_value(value: &Spanned<DeValue<'_>>, path: &str, offset: usize, best: &mut BestMatch) {
    consider(value.span(), path, offset, best);
    match value.get_ref() {
        DeValue::Table(table) => visit_table(table, path, offset, best),
        DeValue::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                visit_value(item, &format!("{path}[{index}]"), offset, best);
            }
        }
        _ => {}
    }
}

fn consider(span: std::ops::Range<usize>, path: &str, offset: usize, best: &mut BestMatch) {
    let around = span.contains(&offset) || (span.is_empty() && span.start == offset);
    // Ties go to the later visit, which is the deeper one (an array and its first item).
    if around && best.as_ref().is_none_or(|(len, _)| span.len() <= *len) {
        *best = Some((span.len(), path.to_owned()));
    }
}

// ---------------------------------------------------------------------------------------------
// The schema as written in the file.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    sftp: RawSftp,
    spool: RawSpool,
    s3: Spanned<RawS3>,
    shaping: Option<shaping::RawShaping>,
    #[serde(default)]
    control: RawControl,
    metrics: Option<RawMetrics>,
    events: Option<RawEvents>,
    #[serde(default)]
    users: Vec<Spanned<RawUser>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Listen,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    webhook: Option<WebhookUrl>,
    webhook_ca: Option<FilePath>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSftp {
    listen: Listen,
    host_key: FilePath,
    algorithms: Option<Algorithms>,
    login_grace: Option<Ttl>,
    idle_timeout: Option<TtlOrOff>,
    allow_control_characters: Option<bool>,
    virtual_dir: Option<VirtualDirName>,
    max_startups: Option<StartupsSpec>,
    max_startups_per_source: Option<Limit>,
    max_sessions: Option<SessionsLimit>,
    max_sessions_per_source: Option<Limit>,
    max_auth_failures: Option<Limit>,
    failure_window: Option<Ttl>,
    ban: Option<Ttl>,
    ban_max: Option<Ttl>,
    allow: Option<Vec<Net>>,
}

impl RawSftp {
    /// The limits and penalties, defaults filled in.
    fn defender(&self) -> DefenderConfig {
        let d = DefenderConfig::default();
        let ban = self.ban.as_ref().map_or(d.ban, |t| t.0);
        DefenderConfig {
            startups: self.max_startups.as_ref().map_or(d.startups, |s| s.0),
            startups_per_source: self
                .max_startups_per_source
                .as_ref()
                .map_or(d.startups_per_source, |n| n.0),
            sessions: self.max_sessions.as_ref().map_or(d.sessions, |n| n.0),
            sessions_per_source: self
                .max_sessions_per_source
                .as_ref()
                .map_or(d.sessions_per_source, |n| n.0),
            failures_max: self
                .max_auth_failures
                .as_ref()
                .map_or(d.failures_max, |n| u32::try_from(n.0).unwrap_or(u32::MAX)),
            failure_window: self
                .failure_window
                .as_ref()
                .map_or(d.failure_window, |t| t.0),
            ban,
            ban_max: self
                .ban_max
                .as_ref()
                .map_or(d.ban_max.max(ban), |t| t.0.max(ban)),
            allow: self
                .allow
                .as_ref()
                .map(|nets| nets.iter().map(|n| n.0).collect())
                .unwrap_or_default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpool {
    dir: FilePath,
    partial_ttl: Option<Ttl>,
    high_watermark: Option<Percent>,
    low_watermark: Option<Spanned<Percent>>,
    engine: Option<EngineChoice>,
    max_file_size: Option<MaxFileSize>,
    delivered_retention: Option<RawRetention>,
}

/// `spool.delivered_retention = { files = 10000, age = "30d" }`; either may be left out.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    files: Option<RetainedFiles>,
    age: Option<Ttl>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    endpoint: Option<Endpoint>,
    region: Option<NonEmpty>,
    bucket: Bucket,
    prefix: Option<Prefix>,
    #[serde(default)]
    path_style: bool,
    access_key_id: Option<Spanned<NonEmpty>>,
    secret_access_key: Option<Spanned<NonEmpty>>,
    credentials_file: Option<Spanned<FilePath>>,
    profile: Option<Spanned<NonEmpty>>,
    part_size: Option<PartSize>,
    concurrency: Option<Concurrency>,
    checksums: Option<ChecksumMode>,
    early_drain: Option<bool>,
    failed_retry: Option<Ttl>,
    failed_retry_max: Option<Ttl>,
    overwrite: Option<OverwriteMode>,
    full_object_checksum: Option<bool>,
    manifest_interval: Option<TtlOrOff>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawControl {
    socket: Option<FilePath>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: Spanned<UserName>,
    #[serde(default)]
    authorized_keys: Vec<AuthorizedKey>,
    password_hash: Option<PasswordHash>,
    quota_bytes: Option<QuotaBytes>,
    quota_files: Option<Limit>,
}

impl RawConfig {
    /// Checks across keys, defaults, and the final [`Config`].
    fn validate(self, source: &Source<'_>) -> Result<Config, ConfigError> {
        let spool = self.spool.validate(source)?;
        let s3 = validate_s3(self.s3, source)?;
        let shaping = match self.shaping {
            Some(raw) => raw.validate(source, s3.part_size)?,
            None => ShapingConfig::default(),
        };
        let users = validate_users(self.users, source)?;
        let socket = match self.control.socket {
            Some(FilePath(path)) => source.resolve(path),
            None => spool.dir.join(CONTROL_SOCKET_FILE_NAME),
        };
        Ok(Config {
            sftp: SftpConfig {
                defender: self.sftp.defender(),
                allow_control_characters: self.sftp.allow_control_characters.unwrap_or(false),
                virtual_dir: match self.sftp.virtual_dir {
                    Some(VirtualDirName(name)) => name,
                    None => Some(VIRTUAL_DIR_DEFAULT.to_owned()),
                },
                login_grace: self
                    .sftp
                    .login_grace
                    .as_ref()
                    .map_or(LOGIN_GRACE_DEFAULT, |t| t.0),
                idle_timeout: self
                    .sftp
                    .idle_timeout
                    .as_ref()
                    .map_or(Some(IDLE_TIMEOUT_DEFAULT), |t| t.0),
                listen: self.sftp.listen.0,
                host_key: source.resolve(self.sftp.host_key.0),
                algorithms: self.sftp.algorithms.unwrap_or_default(),
            },
            spool,
            s3,
            control: ControlConfig { socket },
            metrics: self.metrics.map(|m| MetricsConfig { listen: m.listen.0 }),
            shaping,
            webhook: self.events.and_then(|e| {
                Some(crate::webhook::WebhookConfig {
                    url: e.webhook?.0,
                    ca_file: e.webhook_ca.map(|p| source.resolve(p.0)),
                })
            }),
            users,
        })
    }
}

impl RawSpool {
    fn validate(self, source: &Source<'_>) -> Result<SpoolConfig, ConfigError> {
        let high = self
            .high_watermark
            .map_or(HIGH_WATERMARK_PERCENT_DEFAULT, |p| p.0);
        let low = match self.low_watermark {
            Some(low) if low.get_ref().0 > high => {
                return Err(source.invalid(
                    low.span().start,
                    "spool.low_watermark",
                    format!(
                        "{}% is above the high watermark of {high}%",
                        low.get_ref().0
                    ),
                ));
            }
            Some(low) => low.into_inner().0,
            None if LOW_WATERMARK_PERCENT_DEFAULT > high => high,
            None => LOW_WATERMARK_PERCENT_DEFAULT,
        };
        Ok(SpoolConfig {
            dir: source.resolve(self.dir.0),
            partial_ttl: self.partial_ttl.map_or(PARTIAL_TTL_DEFAULT, |ttl| ttl.0),
            high_watermark_percent: high,
            low_watermark_percent: low,
            engine: self.engine.unwrap_or_default(),
            max_file_size: self.max_file_size.map(|m| m.0),
            delivered_retention: {
                let default = crate::spool::DeliveredRetention::default();
                let raw = self.delivered_retention;
                crate::spool::DeliveredRetention {
                    files_count_max: raw
                        .as_ref()
                        .and_then(|r| r.files.as_ref())
                        .map_or(default.files_count_max, |f| f.0),
                    age_secs_max: raw
                        .as_ref()
                        .and_then(|r| r.age.as_ref())
                        .map_or(default.age_secs_max, |a| a.0.as_secs()),
                }
            },
        })
    }
}

fn validate_s3(raw: Spanned<RawS3>, source: &Source<'_>) -> Result<S3Config, ConfigError> {
    let table_start = raw.span().start;
    let raw = raw.into_inner();
    let (access_key_id, secret_access_key) = match (
        raw.access_key_id,
        raw.secret_access_key,
        raw.credentials_file,
    ) {
        (Some(id), Some(secret), None) => {
            if let Some(profile) = raw.profile {
                return Err(source.invalid(
                    profile.span().start,
                    "s3.profile",
                    "only applies to credentials_file, which is not set",
                ));
            }
            (id.into_inner().0, secret.into_inner().0)
        }
        (None, None, Some(file)) => {
            let path = source.resolve(file.get_ref().0.clone());
            let profile = raw
                .profile
                .map_or(PROFILE_DEFAULT.to_owned(), |p| p.into_inner().0);
            credentials::read(&path, &profile).map_err(|message| {
                source.invalid(file.span().start, "s3.credentials_file", message)
            })?
        }
        (Some(_), _, Some(file)) | (_, Some(_), Some(file)) => {
            return Err(source.invalid(
                file.span().start,
                "s3.credentials_file",
                "set either access_key_id and secret_access_key, or credentials_file, not both",
            ));
        }
        (Some(id), None, None) => {
            return Err(source.invalid(
                id.span().start,
                "s3.secret_access_key",
                "required key is missing (access_key_id is set)",
            ));
        }
        (None, Some(secret), None) => {
            return Err(source.invalid(
                secret.span().start,
                "s3.access_key_id",
                "required key is missing (secret_access_key is set)",
            ));
        }
        (None, None, None) => {
            return Err(source.invalid(
                table_start,
                "s3",
                "no credentials: set access_key_id and secret_access_key, or credentials_file",
            ));
        }
    };
    Ok(S3Config {
        endpoint: raw.endpoint.map(|e| e.0),
        region: raw.region.map_or(REGION_DEFAULT.to_owned(), |r| r.0),
        bucket: raw.bucket.0,
        prefix: raw.prefix.map(|p| p.0).unwrap_or_default(),
        path_style: raw.path_style,
        access_key_id,
        secret_access_key,
        part_size: raw.part_size.map_or(PART_SIZE_BYTES_DEFAULT, |p| p.0),
        concurrency: raw.concurrency.map_or(CONCURRENCY_DEFAULT, |c| c.0),
        checksums: raw.checksums.unwrap_or(ChecksumMode::WhenRequired),
        early_drain: raw.early_drain.unwrap_or(true),
        failed_retry: raw.failed_retry.map_or(FAILED_RETRY_DEFAULT, |d| d.0),
        failed_retry_max: raw
            .failed_retry_max
            .map_or(FAILED_RETRY_MAX_DEFAULT, |d| d.0),
        overwrite: raw.overwrite.unwrap_or_default(),
        full_object_checksum: raw.full_object_checksum.unwrap_or(true),
        manifest_interval: raw
            .manifest_interval
            .map_or(Some(MANIFEST_INTERVAL_DEFAULT), |t| t.0),
    })
}

fn validate_users(
    raw: Vec<Spanned<RawUser>>,
    source: &Source<'_>,
) -> Result<Vec<User>, ConfigError> {
    let mut users: Vec<User> = Vec::with_capacity(raw.len());
    let mut first_lines = std::collections::HashMap::new();
    for (index, user) in raw.into_iter().enumerate() {
        let user = user.into_inner();
        let name_start = user.name.span().start;
        let name = user.name.into_inner().0;
        if let Some(first_line) = first_lines.insert(name.clone(), source.line_of(name_start)) {
            return Err(source.invalid(
                name_start,
                &format!("users[{index}].name"),
                format!("duplicate user name {name:?} (first defined on line {first_line})"),
            ));
        }
        users.push(User {
            name,
            authorized_keys: user.authorized_keys.into_iter().map(|key| key.0).collect(),
            password_hash: user.password_hash.map(|hash| hash.0),
            quota: crate::spool::Quota {
                bytes: user.quota_bytes.map(|q| q.0),
                files: user
                    .quota_files
                    .map(|n| u64::try_from(n.0).unwrap_or(u64::MAX)),
            },
        });
    }
    let can_log_in = |user: &User| !user.authorized_keys.is_empty() || user.password_hash.is_some();
    if !users.iter().any(can_log_in) {
        return Err(source.invalid(
            // The end of the file, where a [[users]] entry would go.
            source.text.trim_end().len(),
            "users",
            "no user can log in: add a [[users]] entry with authorized_keys or password_hash",
        ));
    }
    Ok(users)
}

#[cfg(test)]
mod tests;
