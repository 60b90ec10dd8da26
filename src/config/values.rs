//! Values of the configuration file that validate themselves while being deserialized, so that
//! toml attaches the value's span (hence its line and key) to every error.
//!
//! Each value checks only itself, against `limits` and the bounds `sftp` sets; checks across
//! keys run in `config` once the whole file is deserialized.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::USER_NAME_BYTES_MAX;
use super::shaping::Rate;
use crate::limits::{
    DRAIN_CONCURRENCY_MAX, KEY_BYTES_MAX, PART_SIZE_BYTES_MAX, PART_SIZE_BYTES_MIN,
};

/// Deserializes a string through `parse`.
fn parse_str<'de, D, T>(
    deserializer: D,
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct StrVisitor<T> {
        expecting: &'static str,
        parse: fn(&str) -> Result<T, String>,
    }
    impl<T> Visitor<'_> for StrVisitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
            (self.parse)(text).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(StrVisitor { expecting, parse })
}

/// Implements `Deserialize` for a newtype over a string-parsing function.
macro_rules! parsed_from_str {
    ($name:ident, $expecting:literal, $parse:expr) => {
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                parse_str(deserializer, $expecting, $parse).map($name)
            }
        }
    };
}

pub(super) struct Listen(pub(super) SocketAddr);
parsed_from_str!(Listen, "a socket address like \"0.0.0.0:22\"", |text| {
    text.parse()
        .map_err(|_| format!("{text:?} is not an address:port like \"0.0.0.0:22\""))
});

pub(super) struct FilePath(pub(super) PathBuf);
parsed_from_str!(FilePath, "a path", |text| {
    if text.is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(PathBuf::from(text))
    }
});

pub(super) struct NonEmpty(pub(super) String);
parsed_from_str!(NonEmpty, "a non-empty string", |text| {
    if text.trim().is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(text.to_owned())
    }
});

/// A duration longer than zero like `"24h"` or `"90s"`; also parses `sftpgw drain ... --for`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be longer than zero".to_owned()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(format!(
            "{text:?} is not a duration like \"24h\" or \"90s\": {error}"
        )),
    }
}

pub(super) struct Ttl(pub(super) Duration);
parsed_from_str!(Ttl, "a duration like \"24h\"", parse_duration);

/// A duration, or `"off"` for none.
pub(super) struct TtlOrOff(pub(super) Option<Duration>);
parsed_from_str!(
    TtlOrOff,
    "a duration like \"15m\", or \"off\"",
    |text: &str| {
        if text.trim() == "off" {
            Ok(None)
        } else {
            parse_duration(text).map(Some)
        }
    }
);

pub(super) struct Percent(pub(super) u8);
parsed_from_str!(Percent, "a percentage like \"90%\"", |text| {
    let bad = || format!("{text:?} is not a whole percentage from \"0%\" to \"100%\"");
    let number = text.trim().strip_suffix('%').ok_or_else(bad)?.trim_end();
    match number.parse::<u8>() {
        Ok(percent) if percent <= 100 => Ok(percent),
        _ => Err(bad()),
    }
});

pub(super) struct Endpoint(pub(super) String);
parsed_from_str!(Endpoint, "a URL like \"http://10.0.2.2:9000\"", |text| {
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !text.contains(char::is_whitespace) => {
            Ok(text.to_owned())
        }
        _ => Err(format!("{text:?} is not an http:// or https:// URL")),
    }
});

pub(super) struct WebhookUrl(pub(super) url::Url);
parsed_from_str!(WebhookUrl, "an https:// URL", |text| {
    match url::Url::parse(text) {
        Ok(u) if u.scheme() == "https" && u.host_str().is_some_and(|h| !h.is_empty()) => Ok(u),
        Ok(_) => Err(format!("{text:?} is not an https:// URL with a host")),
        Err(e) => Err(format!(
            "{text:?} is not a URL like \"https://host/path\": {e}"
        )),
    }
});

pub(super) struct Bucket(pub(super) String);
parsed_from_str!(Bucket, "a bucket name", |text| {
    if text.is_empty() || text.contains(['/', ' ']) {
        Err(format!("{text:?} is not a bucket name"))
    } else {
        Ok(text.to_owned())
    }
});

pub(super) struct Prefix(pub(super) String);
parsed_from_str!(Prefix, "a key prefix like \"site-a/\"", |text| {
    if text.starts_with('/') {
        Err(format!(
            "{text:?} must not start with '/' (S3 keys have no leading slash)"
        ))
    } else if text.len() >= KEY_BYTES_MAX / 2 {
        Err(format!(
            "longer than {} bytes leaves too little of the key",
            KEY_BYTES_MAX / 2 - 1
        ))
    } else {
        Ok(text.to_owned())
    }
});

pub(super) struct UserName(pub(super) String);
parsed_from_str!(UserName, "a user name", |text| {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if text.is_empty() {
        Err("must not be empty".to_owned())
    } else if text.len() > USER_NAME_BYTES_MAX {
        Err(format!("longer than {USER_NAME_BYTES_MAX} bytes"))
    } else if !text.chars().all(allowed) || text == "." || text == ".." {
        Err(format!(
            "{text:?} may only use letters, digits, '.', '_' and '-'"
        ))
    } else {
        Ok(text.to_owned())
    }
});

/// `sftp.virtual_dir`: one name in every user's `/`, or "off" (`None`).
pub(super) struct VirtualDirName(pub(super) Option<String>);
parsed_from_str!(VirtualDirName, "a directory name or \"off\"", |text| {
    if text == "off" {
        Ok(None)
    } else if text.is_empty() || text == "." || text == ".." {
        Err("must be a directory name like \".sftpgw\", or \"off\"".to_owned())
    } else if text.len() > 255 || text.contains('/') || text.chars().any(char::is_control) {
        Err(format!(
            "{text:?} must be one name (no '/', no control characters, at most 255 bytes)"
        ))
    } else {
        Ok(Some(text.to_owned()))
    }
});

pub(super) struct AuthorizedKey(pub(super) String);
parsed_from_str!(AuthorizedKey, "an OpenSSH public key line", |text| {
    let line = text.trim();
    match russh::keys::PublicKey::from_openssh(line) {
        Ok(_) => Ok(line.to_owned()),
        Err(error) => Err(format!(
            "not an OpenSSH public key line like \"ssh-ed25519 AAAA... comment\" ({error})"
        )),
    }
});

pub(super) struct PasswordHash(pub(super) String);
parsed_from_str!(PasswordHash, "an argon2 PHC string", |text| {
    if !text.starts_with("$argon2") {
        return Err("must be an argon2 PHC string starting with \"$argon2\"".to_owned());
    }
    let hash = argon2::PasswordHash::new(text)
        .map_err(|error| format!("not a valid PHC string: {error}"))?;
    argon2::Algorithm::try_from(hash.algorithm)
        .and_then(|_| argon2::Params::try_from(&hash))
        .map_err(|error| format!("not a valid argon2 PHC string: {error}"))?;
    match (hash.salt, hash.hash) {
        (Some(_), Some(_)) => Ok(text.to_owned()),
        _ => Err("not a valid argon2 PHC string: salt or hash missing".to_owned()),
    }
});

/// A byte count: an integer (bytes) or a string like `"16MiB"` or `"5 MiB"`.
struct Bytes(u64);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl Visitor<'_> for BytesVisitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"16MiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<Bytes, E> {
                Ok(Bytes(bytes))
            }
            fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<Bytes, E> {
                u64::try_from(bytes)
                    .map(Bytes)
                    .map_err(|_| E::custom(format!("{bytes} is not a size: negative")))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Bytes, E> {
                match text.trim().parse::<bytesize::ByteSize>() {
                    Ok(size) => Ok(Bytes(size.as_u64())),
                    Err(_) => Err(E::custom(format!(
                        "{text:?} is not a size like \"16MiB\", \"5 MiB\" or 1048576"
                    ))),
                }
            }
        }
        deserializer.deserialize_any(BytesVisitor)
    }
}

/// `bytes` the way a user would write it in the file: `5MiB`, `1GiB`, or `5000000 bytes`.
pub(crate) fn display_bytes(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{name}", bytes / unit);
        }
    }
    format!("{bytes} bytes")
}

pub(super) struct PartSize(pub(super) u64);

impl<'de> Deserialize<'de> for PartSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Bytes(bytes) = Bytes::deserialize(deserializer)?;
        if bytes < PART_SIZE_BYTES_MIN {
            Err(de::Error::custom(format!(
                "{} is below the minimum part size of {}",
                display_bytes(bytes),
                display_bytes(PART_SIZE_BYTES_MIN)
            )))
        } else if bytes > PART_SIZE_BYTES_MAX {
            Err(de::Error::custom(format!(
                "{} is above the maximum part size of {}",
                display_bytes(bytes),
                display_bytes(PART_SIZE_BYTES_MAX)
            )))
        } else {
            Ok(PartSize(bytes))
        }
    }
}

/// `spool.max_file_size`: at least one byte, at most the largest S3 object.
pub(super) struct MaxFileSize(pub(super) u64);

impl<'de> Deserialize<'de> for MaxFileSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Bytes(bytes) = Bytes::deserialize(deserializer)?;
        if bytes == 0 || bytes > crate::limits::OBJECT_BYTES_MAX {
            Err(de::Error::custom(format!(
                "{} is not between 1 byte and the largest S3 object, {}",
                display_bytes(bytes),
                display_bytes(crate::limits::OBJECT_BYTES_MAX)
            )))
        } else {
            Ok(MaxFileSize(bytes))
        }
    }
}

/// `spool.delivered_retention.files`: how many delivered files stay listed, at most
/// [`RETAINED_FILES_COUNT_MAX`] so that memory stays bounded.
pub(super) struct RetainedFiles(pub(super) usize);

/// The largest `delivered_retention.files` accepted (about 100 MiB of catalog).
pub const RETAINED_FILES_COUNT_MAX: u64 = 200_000;

impl<'de> Deserialize<'de> for RetainedFiles {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(deserializer)?;
        match u64::try_from(n) {
            Ok(n) if n <= RETAINED_FILES_COUNT_MAX => Ok(RetainedFiles(
                usize::try_from(n).map_err(de::Error::custom)?,
            )),
            _ => Err(de::Error::custom(format!(
                "{n} is not a count of files from 0 to {RETAINED_FILES_COUNT_MAX}"
            ))),
        }
    }
}

pub(super) struct Concurrency(pub(super) usize);

impl<'de> Deserialize<'de> for Concurrency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CountVisitor;
        impl Visitor<'_> for CountVisitor {
            type Value = Concurrency;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "a number of parts in flight from 1 to {DRAIN_CONCURRENCY_MAX}"
                )
            }
            fn visit_i64<E: de::Error>(self, count: i64) -> Result<Concurrency, E> {
                match usize::try_from(count) {
                    Ok(count) if (1..=DRAIN_CONCURRENCY_MAX).contains(&count) => {
                        Ok(Concurrency(count))
                    }
                    _ => Err(E::custom(format!(
                        "{count} is outside 1..={DRAIN_CONCURRENCY_MAX} parts in flight"
                    ))),
                }
            }
            fn visit_u64<E: de::Error>(self, count: u64) -> Result<Concurrency, E> {
                self.visit_i64(i64::try_from(count).unwrap_or(i64::MAX))
            }
        }
        deserializer.deserialize_i64(CountVisitor)
    }
}

// ---------------------------------------------------------------------------------------------
// [shaping]

pub(super) struct RateValue(pub(super) Rate);
parsed_from_str!(
    RateValue,
    "a rate like \"10MiB/s\", \"unlimited\" or \"paused\"",
    Rate::parse
);

/// A time of day `"hh:mm"`, in minutes after midnight; `"24:00"` is the end of the day.
pub(super) struct TimeOfDay(pub(super) u16);
parsed_from_str!(TimeOfDay, "a time of day like \"08:00\"", |text| {
    let bad =
        || format!("{text:?} is not a time of day like \"08:00\" or \"18:30\" (00:00 to 24:00)");
    let (hours, minutes) = text.trim().split_once(':').ok_or_else(bad)?;
    let valid_digits =
        |s: &str| (1..=2).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    if !valid_digits(hours) || minutes.len() != 2 || !valid_digits(minutes) {
        return Err(bad());
    }
    let (hours, minutes): (u16, u16) = (
        hours.parse().map_err(|_| bad())?,
        minutes.parse().map_err(|_| bad())?,
    );
    match (hours, minutes) {
        (24, 0) => Ok(24 * 60),
        (0..=23, 0..=59) => Ok(hours * 60 + minutes),
        _ => Err(bad()),
    }
});

/// An IANA time zone name, looked up in the system's tz database.
pub(super) struct ZoneName(pub(super) (String, jiff::tz::TimeZone));
parsed_from_str!(
    ZoneName,
    "an IANA time zone like \"Europe/Berlin\"",
    |text| {
        match jiff::tz::TimeZone::get(text) {
            Ok(zone) => Ok((text.to_owned(), zone)),
            Err(error) => Err(format!(
                "{text:?} is not a known IANA time zone like \"Europe/Berlin\" or \"UTC\" \
             (looked up in /usr/share/zoneinfo): {error}"
            )),
        }
    }
);

/// A byte budget: a size larger than zero.
pub(super) struct Budget(pub(super) u64);

impl<'de> Deserialize<'de> for Budget {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Bytes::deserialize(deserializer)? {
            Bytes(0) => Err(de::Error::custom(
                "must be larger than zero (omit the key for no budget)",
            )),
            Bytes(bytes) => Ok(Budget(bytes)),
        }
    }
}

/// `sftp.max_startups = "start:rate:full"` (OpenSSH's `MaxStartups`).
pub(super) struct StartupsSpec(pub(super) crate::sftp::defender::Startups);
parsed_from_str!(
    StartupsSpec,
    "\"start:rate:full\" like \"10:30:100\"",
    |text| {
        let bad = || {
            format!(
                "{text:?} is not \"start:rate:full\" (like \"10:30:100\": from 10 connections not \
                 logged in, drop 30 % of new ones, rising to all at 100)"
            )
        };
        let parts: Vec<&str> = text.split(':').collect();
        let [start, rate, full] = parts.as_slice() else {
            return Err(bad());
        };
        let (Ok(start), Ok(rate_percent), Ok(full)) = (
            start.parse::<usize>(),
            rate.parse::<u8>(),
            full.parse::<usize>(),
        ) else {
            return Err(bad());
        };
        if full == 0 || start > full || rate_percent > 100 {
            return Err(format!("{}: need 0 < start ≤ full and rate ≤ 100", bad()));
        }
        Ok(crate::sftp::defender::Startups {
            start,
            rate_percent,
            full,
        })
    }
);

/// A network of `sftp.allow`, like "192.168.1.0/24", or one address.
pub(super) struct Net(pub(super) ipnet::IpNet);
parsed_from_str!(Net, "a network like \"192.168.1.0/24\"", |text| {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or a network like \"192.168.1.0/24\""))
});

/// A count from 1 to 100 000 (connection limits, failures).
pub(super) struct Limit(pub(super) usize);

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(deserializer)?;
        match usize::try_from(n) {
            Ok(n) if (1..=100_000).contains(&n) => Ok(Limit(n)),
            _ => Err(de::Error::custom(format!(
                "{n} is not a count from 1 to 100000"
            ))),
        }
    }
}

/// `sftp.max_sessions`: at most [`crate::sftp::SSH_CONNECTIONS_COUNT_MAX`], the number the
/// daemon's memory bound is computed for.
pub(super) struct SessionsLimit(pub(super) usize);

impl<'de> Deserialize<'de> for SessionsLimit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(deserializer)?;
        let max = crate::sftp::SSH_CONNECTIONS_COUNT_MAX;
        match usize::try_from(n) {
            Ok(n) if (1..=max).contains(&n) => Ok(SessionsLimit(n)),
            _ => Err(de::Error::custom(format!(
                "{n} is not a count from 1 to {max} (the sessions the daemon's memory bound \
                 is computed for)"
            ))),
        }
    }
}

/// `users[].quota_bytes`: a size of at least 1 byte.
pub(super) struct QuotaBytes(pub(super) u64);

impl<'de> Deserialize<'de> for QuotaBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Bytes(bytes) = Bytes::deserialize(deserializer)?;
        if bytes == 0 {
            Err(de::Error::custom(
                "a quota of 0 bytes would refuse every upload",
            ))
        } else {
            Ok(QuotaBytes(bytes))
        }
    }
}
