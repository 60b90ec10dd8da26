//! [`EXAMPLE`]: a complete configuration with every key, its default and what it does.
//!
//! Text only: a test of `config` parses it, so it cannot drift from the schema.

/// A complete, commented configuration file. It parses as it is (a test checks that); its
/// credentials and key are placeholders to replace.
pub const EXAMPLE: &str = r#"# sftpgw configuration.
# Sizes: "16MiB", "5 MiB", "1GiB" or a plain integer (bytes). Durations: "24h", "90s".
# Relative paths are relative to the directory of this file. Unknown keys are errors.

[sftp]
# Address and port the SSH/SFTP server listens on. Required.
listen = "0.0.0.0:22"
# The server's ed25519 host key. Generated (mode 0600) on first start if missing. Required.
host_key = "/data/sftpgw/ssh_host_ed25519_key"
# SSH algorithms offered. "modern" (default): current algorithms only, clean in ssh-audit.
# "compatible": also what older SSH libraries need (JSch 0.1.x behind many Java tools, old
# .NET and embedded clients): ECDSA P-256 and RSA-3072 host keys, generated (0600) beside
# host_key on first start (ssh_host_ed25519_key -> ssh_host_ecdsa_key, ssh_host_rsa_key),
# ssh-rsa signatures, ecdh-sha2-nistp* and diffie-hellman-group14-sha256 key exchange,
# non-ETM hmac-sha2-*, and ssh-rsa (SHA-1) signatures from RSA user keys.
algorithms = "modern"
# New file and directory names with control characters (newline, ESC, ...) or bidi overrides
# are refused (SSH_FX_BAD_MESSAGE with a message) unless this is true; names are escaped
# wherever they are shown (logs, status, console) either way. Default false.
allow_control_characters = false
# A read-only directory in every user's "/" that shows what the box did with their files:
# receipts/<path>.json once <path> is in S3 (bucket, key, size, sha256, ETag, version, times,
# box), and queue.txt with the files not delivered yet (state, bytes sent, ETA). Writes in it
# are refused, and so is a user file or directory of this name. "off" hides it.
# Default ".sftpgw".
virtual_dir = ".sftpgw"
# What one host on the LAN may hold and what its failures cost it (docs/OPERATIONS.md,
# "A hostile LAN"). A source is an IPv4 address or an IPv6 /64.
# A connection must log in within login_grace. Default "30s".
login_grace = "30s"
# A logged-in session from which no request arrives for this long is ended (keepalives find
# dead peers sooner; this frees the slot of a client left open and forgotten). "off" never
# ends one. Default "15m".
idle_timeout = "15m"
# Connections not logged in yet, "start:rate:full" as OpenSSH's MaxStartups: from `start` on
# a new one is dropped with probability rate %, rising to all at `full`. Default "32:30:200".
max_startups = "32:30:200"
# ... of which one source may hold this many. Default 16 (enough for a client that opens 16
# transfers at once): below max_startups' start, so that one source alone never starts the
# random drop that would hit other hosts too.
max_startups_per_source = 16
# Logged-in connections, in all (at most 64) and per source. Defaults 64 and 32.
max_sessions = 64
max_sessions_per_source = 32
# max_auth_failures failed logins, failed negotiations or expired grace times within
# failure_window ban the source for `ban`, doubled at each further ban within a day, up to
# ban_max; a banned source cannot log in even with the right credentials. `sftpgw bans`
# lists and lifts bans. Defaults 5, "10m", "1m", "1h".
max_auth_failures = 5
failure_window = "10m"
ban = "1m"
ban_max = "1h"
# Networks exempt from per-source limits and bans (the global limits still hold), e.g. the
# office's management subnet. Default: none.
allow = []

[spool]
# Where uploads are kept until they are delivered to S3 (partial/, sealed/, the journal).
# Required. Use a local file system that honours fsync.
dir = "/data/spool"
# How long an upload that ended without CLOSE is kept for resuming (reput). Default "24h".
partial_ttl = "24h"
# New uploads are refused while the spool file system is fuller than high_watermark, and
# accepted again once it is below low_watermark. Defaults "90%" and "80%".
high_watermark = "90%"
low_watermark = "80%"
# How spool files are written: "auto" (default) uses io_uring when the kernel allows it and
# falls back to "pwrite" with one log line saying why; "io_uring" refuses to start without it.
engine = "auto"
# The largest file accepted: a WRITE beyond it (a sparse write far past the end too) fails
# with "file too large" and the session goes on. Default: half the spool's file system, so
# that one upload cannot take the spool from everyone; at most 5TiB (S3's largest object).
# max_file_size = "100GiB"
# Delivered files stay listed (ls, status) and in memory until there are more than `files`
# of them or they were delivered longer than `age` ago; then only the delivery log and the
# bucket know them. Defaults 10000 and "30d"; files at most 200000.
delivered_retention = { files = 10000, age = "30d" }

[s3]
# S3-compatible endpoint URL. Omit for AWS.
endpoint = "http://10.0.2.2:9000"
# Region used for signing. Default "us-east-1".
region = "us-east-1"
# Target bucket. Required.
bucket = "uploads"
# Object key = prefix + user + "/" + path. Default "" (no prefix).
prefix = "site-a/"
# Path-style URLs (http://host/bucket/key), needed by most S3-compatible stores. Default false.
path_style = true
# Credentials: either these two keys ...
access_key_id = "AKIAIOSFODNN7EXAMPLE"
secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
# ... or an AWS shared-credentials file (aws_access_key_id, aws_secret_access_key) and the
# section to use in it (default "default"):
# credentials_file = "/data/sftpgw/aws-credentials"
# profile = "default"
# Size of multipart upload parts, from 5MiB to 5GiB. Default "16MiB". S3 allows 10000 parts
# per object, so the largest file is 10000 x part_size (156GiB at 16MiB).
part_size = "16MiB"
# Parts uploaded at the same time, 1 to 64. Default 4.
concurrency = 4
# "when_required" (default): checksum headers only where S3 requires them, which every
# S3-compatible store accepts. "always": the SDK's default CRC checksums on every request.
checksums = "when_required"
# Upload the parts of a file that arrives in order while it is still arriving, so that the
# object is complete soon after CLOSE (default true). Objects of files longer than part_size
# then carry no x-amz-meta-sha256 (S3 fixes metadata before the hash is known; those files are
# not hashed at all); early parts are checked against the sealed file before Complete. Set
# false to have every object carry its SHA-256. Names ending .filepart, .part, .partial or
# .tmp (temporary names renamed after CLOSE) never drain early.
early_drain = true
# Single PUTs (files up to part_size, whose SHA-256 the box takes while they arrive) carry
# x-amz-checksum-sha256: S3 checks the bytes against the hash taken at ingest, refuses them
# if they differ (the file then fails, the spool copy kept), and keeps the checksum with the
# object for `aws s3api head-object --checksum-mode ENABLED`. Multipart uploads are created
# for a full-object CRC32C (ChecksumType FULL_OBJECT): each part carries its CRC32C, which S3
# checks, and Complete the object's, combined from the parts' (no second pass over the file);
# S3 keeps it with the object. Default true; false for stores that reject these headers.
# (Multipart objects carry the SHA-256 in x-amz-meta-sha256 where it is known; see
# early_drain.)
full_object_checksum = true
# A file that failed with a permanent S3 error (AccessDenied, NoSuchBucket: fixed later by
# someone far away) is retried by itself failed_retry after it failed, then after twice
# that, up to failed_retry_max between attempts; `sftpgw retry` retries at once.
# Defaults "15m" and "6h".
failed_retry = "15m"
failed_retry_max = "6h"
# "replace" (default): the newest acknowledged version replaces the object. "never": puts and
# completes carry If-None-Match: * (S3 conditional writes), so an object already at the key
# (another box's, a person's) is never replaced; such a file goes to the "conflict" state
# (status shows it; `sftpgw retry` tries again). The store must support conditional writes.
overwrite = "replace"
# Every manifest_interval the deliveries since the last manifest (the lines of the delivery log
# that `sftpgw report` reads) are written to the bucket as a new object,
# <prefix>_manifests/<YYYY-MM-DD>/<box name>-<n>.jsonl, one JSON line per delivered file; no
# manifest is ever rewritten. Default "5m"; "off" writes none.
manifest_interval = "5m"

[shaping]
# WAN bandwidth of the drain (upload bodies to S3; SFTP uploads on the LAN are never limited).
# Rates: "unlimited", "paused" (no new part starts; parts in flight finish) or a size per
# second like "10MiB/s" (at least "1KiB/s"). Default "unlimited".
rate = "unlimited"
# Windows by weekday and local time; the first window that holds the current time wins, else
# `rate` applies. days: "mon-fri", "sat,sun", "mon", "fri-mon". from/to: "hh:mm", to is
# exclusive, "24:00" ends the day; omit both for the whole day. A window with to <= from crosses
# midnight (from = "22:00", to = "06:00" runs from the named day's evening to the next morning).
schedule = [ { days = "mon-fri", from = "08:00", to = "18:00", rate = "2MiB/s" },
             { days = "sat-sun", rate = "unlimited" } ]
# IANA zone the schedule and the budget periods are read in. Default: the box's local zone
# (/etc/localtime), UTC if it has none.
timezone = "UTC"
# Rate while the clock is not trusted (not NTP-synchronised, and not confirmed by the S3
# server's Date header). Default: `rate`.
clock_unknown_rate = "unlimited"
# Bytes sent to S3 per local day and per calendar month; when spent, no new part starts until
# the next period. Each must be at least s3.part_size. Default: no budget.
# daily_budget = "10GiB"
# monthly_budget = "200GiB"

[control]
# Unix socket for `sftpgw status` and the other control commands.
# Default "<spool.dir>/control.sock".
socket = "/data/spool/control.sock"

[metrics]
# Prometheus metrics (GET /metrics, OpenMetrics text) on this address. Omit the section to
# serve none. Keep it on loopback or a management network: it is plain HTTP without login.
listen = "127.0.0.1:9100"

[events]
# Lifecycle events (sealed, delivered, failed, ...; as `sftpgw events --follow` prints them)
# POSTed to this https:// URL as JSON lines, retried until the receiver takes them (a queue of
# 10 000; ingest and drain never wait for it). Omit the section for none.
webhook = "https://hooks.example.com/sftpgw"
# More CA certificates (PEM) to check the receiver's certificate with, beside the system's.
# webhook_ca = "/etc/sftpgw/hooks-ca.pem"

# One [[users]] entry per SFTP account; at least one must be able to log in.
[[users]]
# Login name and the user's directory in the bucket: letters, digits, '.', '_', '-'. Required.
name = "partner1"
# OpenSSH public keys allowed to log in (lines as in authorized_keys, without options).
authorized_keys = [
  "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK7qhCUo2/Yld4vYzCMCnxkDWzB5FZDD3PJgYh9sx2XI partner1@laptop",
]
# Optional password login: an argon2 PHC string, as written by `sftpgw user passwd`.
# password_hash = "$argon2id$v=19$m=19456,t=2,p=1$4SPpRKzzlc/IoBgigzpFSw$HiONdkBJqkn1uTuCKXFn6kezuOwyxhk14PrjEQWrOZs"
# Optional quotas on what this user may hold in the spool, not yet delivered, so that one user
# cannot fill it for everyone: over them, OPEN (files) or WRITE (bytes) fails with "quota
# exceeded" until files are delivered. Bytes count sealed files and uploads in progress
# (partial uploads count as files only). Default: no quota.
# quota_bytes = "50GiB"
# quota_files = 100000
"#;
