//! Every kind of bad input names the file, the right line and the right key.

use std::path::Path;
use std::time::Duration;

use super::*;

const ORIGIN: &str = "/etc/sftpgw.toml";
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK7qhCUo2/Yld4vYzCMCnxkDWzB5FZDD3PJgYh9sx2XI a@b";
const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$4SPpRKzzlc/IoBgigzpFSw$HiONdkBJqkn1uTuCKXFn6kezuOwyxhk14PrjEQWrOZs";

/// A minimal valid configuration; tests edit it with [`replace`] or by appending.
fn base() -> String {
    format!(
        r#"[sftp]
listen = "127.0.0.1:2222"
host_key = "/data/host_key"

[spool]
dir = "/data/spool"

[s3]
bucket = "uploads"
access_key_id = "AKID"
secret_access_key = "SECRET"

[[users]]
name = "alice"
authorized_keys = ["{KEY}"]
"#
    )
}

fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not in the config under test");
    text.replacen(from, to, 1)
}

/// [`base`] with `line` added to its `section` (`sftp`, `spool` or `s3`), after the section's
/// first key.
fn base_with(section: &str, line: &str) -> String {
    let anchor = match section {
        "sftp" => "host_key = \"/data/host_key\"",
        "spool" => "dir = \"/data/spool\"",
        "s3" => "bucket = \"uploads\"",
        other => panic!("base() has no section [{other}]"),
    };
    replace(&base(), anchor, &format!("{anchor}\n{line}"))
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new(ORIGIN))
}

/// The 1-based line of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in text"));
    text[..offset].matches('\n').count() + 1
}

/// Parses `text`, expects an `Invalid` error and checks its line, key and message.
#[track_caller]
fn assert_invalid(text: &str, line: usize, key: &str, message_part: &str) {
    match parse(text) {
        Err(ConfigError::Invalid {
            path,
            line: got_line,
            key: got_key,
            message,
        }) => {
            assert_eq!(path, Path::new(ORIGIN));
            assert_eq!(
                (got_line, got_key.as_str()),
                (line, key),
                "message: {message}"
            );
            assert!(
                message.contains(message_part),
                "{message:?} lacks {message_part:?}"
            );
        }
        other => panic!("expected an Invalid error at {line} {key}, got {other:?}"),
    }
}

/// [`assert_invalid`] at the line where the last part of the dotted `key` is first set.
#[track_caller]
fn assert_invalid_key(text: &str, key: &str, message_part: &str) {
    let field = key.rsplit('.').next().expect("key");
    assert_invalid(
        text,
        line_of(text, &format!("{field} =")),
        key,
        message_part,
    );
}

#[test]
fn example_parses_with_the_values_it_documents() {
    let config = parse(EXAMPLE).expect("EXAMPLE parses");
    assert_eq!(config.sftp.listen, "0.0.0.0:22".parse().expect("addr"));
    assert_eq!(config.spool.partial_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(
        (
            config.spool.high_watermark_percent,
            config.spool.low_watermark_percent
        ),
        (90, 80)
    );
    assert_eq!(config.s3.endpoint.as_deref(), Some("http://10.0.2.2:9000"));
    assert_eq!(config.s3.prefix, "site-a/");
    assert!(config.s3.path_style);
    assert_eq!(config.s3.part_size, 16 << 20);
    assert_eq!(config.s3.concurrency, 4);
    assert_eq!(config.s3.checksums, ChecksumMode::WhenRequired);
    assert!(config.s3.early_drain);
    assert_eq!(config.spool.engine, EngineChoice::Auto);
    assert_eq!(config.sftp.algorithms, Algorithms::Modern);
    assert_eq!(config.s3.overwrite, OverwriteMode::Replace);
    assert_eq!(config.control.socket, Path::new("/data/spool/control.sock"));
    assert_eq!(
        config.metrics.map(|m| m.listen),
        Some("127.0.0.1:9100".parse().expect("addr"))
    );
    assert_eq!(config.users.len(), 1);
    assert_eq!(config.users[0].name, "partner1");
    assert_eq!(config.shaping.rate, Rate::Unlimited);
    assert_eq!(config.shaping.schedule.len(), 2);
    assert_eq!(config.shaping.timezone_name, "UTC");
    assert_eq!(config.shaping.clock_unknown_rate, Rate::Unlimited);
}

#[test]
fn metrics_are_off_without_the_section_and_a_bad_address_names_its_line() {
    let without = EXAMPLE
        .replace("[metrics]\n", "")
        .replace("listen = \"127.0.0.1:9100\"\n", "");
    assert!(parse(&without).expect("parses").metrics.is_none());
    let bad = replace(
        EXAMPLE,
        "listen = \"127.0.0.1:9100\"",
        "listen = \"localhost\"",
    );
    let err = parse(&bad).expect_err("bad metrics address").to_string();
    assert!(err.contains("is not an address:port"), "{err}");
    assert!(
        err.contains(&format!(":{}", line_of(&bad, "listen = \"localhost\""))),
        "{err}"
    );
}

#[test]
fn example_commented_keys_are_valid_when_uncommented() {
    let with_password = replace(EXAMPLE, "# password_hash = ", "password_hash = ");
    let config = parse(&with_password).expect("password_hash of EXAMPLE parses");
    let with_budgets = replace(EXAMPLE, "# daily_budget = ", "daily_budget = ");
    let with_budgets = replace(&with_budgets, "# monthly_budget = ", "monthly_budget = ");
    let shaping = parse(&with_budgets)
        .expect("budgets of EXAMPLE parse")
        .shaping;
    assert_eq!(shaping.daily_budget_bytes, Some(10 << 30));
    assert_eq!(shaping.monthly_budget_bytes, Some(200 << 30));
    assert!(
        config.users[0]
            .password_hash
            .as_deref()
            .is_some_and(|h| h.starts_with("$argon2id$"))
    );

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("aws-credentials"),
        "[default]\naws_access_key_id = FROMFILE\naws_secret_access_key = S\n",
    )
    .expect("write credentials");
    let with_file = replace(
        EXAMPLE,
        "access_key_id = \"AKIA",
        "# access_key_id = \"AKIA",
    );
    let with_file = replace(
        &with_file,
        "secret_access_key = \"wJal",
        "# secret_access_key = \"wJal",
    );
    let with_file = replace(
        &with_file,
        "# credentials_file = \"/data/sftpgw/",
        "credentials_file = \"",
    );
    let with_file = replace(&with_file, "# profile = ", "profile = ");
    let config = Config::parse(&with_file, &dir.path().join("sftpgw.toml"))
        .expect("credentials_file of EXAMPLE parses");
    assert_eq!(config.s3.access_key_id, "FROMFILE");
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let config = parse(&base()).expect("base parses");
    assert_eq!(config.spool.partial_ttl, PARTIAL_TTL_DEFAULT);
    assert_eq!(config.spool.high_watermark_percent, 90);
    assert_eq!(config.spool.low_watermark_percent, 80);
    assert_eq!(config.s3.endpoint, None);
    assert_eq!(config.s3.region, "us-east-1");
    assert_eq!(config.s3.prefix, "");
    assert!(!config.s3.path_style);
    assert_eq!(config.s3.part_size, PART_SIZE_BYTES_DEFAULT);
    assert_eq!(config.s3.concurrency, 4);
    assert_eq!(config.s3.checksums, ChecksumMode::WhenRequired);
    assert!(config.s3.early_drain);
    assert_eq!(config.sftp.virtual_dir.as_deref(), Some(".sftpgw"));
    assert_eq!(config.control.socket, Path::new("/data/spool/control.sock"));
    assert_eq!(config.users[0].authorized_keys, vec![KEY.to_owned()]);
    assert_eq!(config.users[0].password_hash, None);
}

#[test]
fn virtual_dir_is_one_name_or_off() {
    let with = |value: &str| base_with("sftp", &format!("virtual_dir = \"{value}\""));
    let off = parse(&with("off")).expect("off parses");
    assert_eq!(off.sftp.virtual_dir, None);
    let named = parse(&with("_box")).expect("a name parses");
    assert_eq!(named.sftp.virtual_dir.as_deref(), Some("_box"));
    for bad in ["a/b", "", "..", "x\\ty"] {
        let text = with(bad);
        assert_invalid_key(&text, "sftp.virtual_dir", "name");
    }
}

#[test]
fn part_size_below_minimum_names_file_line_and_key() {
    let text = base_with("s3", "part_size = \"4MiB\"");
    let error = parse(&text).expect_err("4MiB is too small");
    let line = line_of(&text, "part_size");
    assert_eq!(
        error.to_string(),
        format!(
            "/etc/sftpgw.toml:{line}: s3.part_size: 4MiB is below the minimum part size of 5MiB"
        )
    );
}

#[test]
fn part_size_accepts_units_spaces_and_plain_bytes_within_bounds() {
    for (written, bytes) in [
        ("\"5 MiB\"", 5 << 20),
        ("\"1GiB\"", 1 << 30),
        ("\"5GiB\"", 5 << 30),
        ("8388608", 8 << 20),
        ("\"8388608\"", 8 << 20),
    ] {
        let text = replace(
            &base(),
            "bucket = ",
            &format!("part_size = {written}\nbucket = "),
        );
        let config = parse(&text).unwrap_or_else(|e| panic!("{written}: {e}"));
        assert_eq!(config.s3.part_size, bytes, "{written}");
    }
    for (written, message) in [
        ("\"6GiB\"", "6GiB is above the maximum part size of 5GiB"),
        ("-1", "negative"),
        ("\"lots\"", "is not a size"),
        ("1.5", "expected a size"),
        (
            "5242879",
            "5242879 bytes is below the minimum part size of 5MiB",
        ),
    ] {
        let text = replace(
            &base(),
            "bucket = ",
            &format!("part_size = {written}\nbucket = "),
        );
        assert_invalid(&text, line_of(&text, "part_size"), "s3.part_size", message);
    }
}

#[test]
fn toml_syntax_error_names_file_and_line() {
    let text = replace(&base(), "dir = \"/data/spool\"", "dir = \"/data/spool");
    match parse(&text) {
        Err(error @ ConfigError::Syntax { line, .. }) => {
            assert_eq!(line, line_of(&text, "dir = "));
            let expected = format!("/etc/sftpgw.toml:{line}: ");
            assert!(error.to_string().starts_with(&expected), "{error}");
            assert!(error.to_string().ends_with("in `dir = ...`"), "{error}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    let text = format!("{}\n[spool]\ndir = \"/again\"\n", base());
    match parse(&text) {
        Err(ConfigError::Syntax { line, message, .. }) => {
            assert_eq!(line, text.lines().count() - 1);
            assert!(message.ends_with("in `[spool]`"), "{message}");
        }
        other => panic!("expected a duplicate table error, got {other:?}"),
    }
}

#[test]
fn unknown_keys_and_sections_are_errors_at_their_line() {
    let text = replace(&base(), "bucket = ", "bucket_name = \"x\"\nbucket = ");
    assert_invalid_key(&text, "s3.bucket_name", "unknown field");
    let text = format!("{}\n[telemetry]\nlisten = \"0.0.0.0:9100\"\n", base());
    assert_invalid(
        &text,
        line_of(&text, "[telemetry]"),
        "telemetry",
        "unknown field",
    );
    let text = replace(
        &base(),
        "name = \"alice\"",
        "name = \"alice\"\nshell = \"/bin/sh\"",
    );
    assert_invalid_key(&text, "users[0].shell", "unknown field");
}

#[test]
fn missing_required_keys_are_named() {
    let text = replace(&base(), "bucket = \"uploads\"\n", "");
    assert_invalid(
        &text,
        line_of(&text, "[s3]"),
        "s3.bucket",
        "required key is missing",
    );
    let text = replace(&base(), "listen = \"127.0.0.1:2222\"\n", "");
    assert_invalid(
        &text,
        line_of(&text, "[sftp]"),
        "sftp.listen",
        "required key is missing",
    );
    let text = replace(&base(), "[spool]\ndir = \"/data/spool\"\n", "");
    assert_invalid(&text, 1, "spool", "required section [spool] is missing");
}

#[test]
fn wrong_value_types_name_the_key() {
    let text = replace(&base(), "bucket = \"uploads\"", "bucket = 5");
    assert_invalid_key(&text, "s3.bucket", "invalid type");
    let text = replace(&base(), "bucket = ", "path_style = \"yes\"\nbucket = ");
    assert_invalid_key(&text, "s3.path_style", "invalid type");
}

/// Edits [`base`] with each `(from, to)` and expects the value written in `to` refused at its
/// own line and dotted key, with a message holding `message`.
#[track_caller]
fn assert_bad_values_name_line_and_key(cases: &[(&str, &str, &str, &str)]) {
    for &(from, to, key, message) in cases {
        assert_invalid_key(&replace(&base(), from, to), key, message);
    }
}

#[test]
fn bad_sftp_values_name_line_and_key() {
    assert_bad_values_name_line_and_key(&[
        (
            "listen = \"127.0.0.1:2222\"",
            "listen = \"localhost\"",
            "sftp.listen",
            "address:port",
        ),
        (
            "host_key = \"/data/host_key\"",
            "host_key = \"\"",
            "sftp.host_key",
            "empty",
        ),
        (
            "host_key = \"/data/host_key\"",
            "host_key = \"/data/host_key\"\nalgorithms = \"legacy\"",
            "sftp.algorithms",
            "compatible",
        ),
    ]);
}

#[test]
fn bad_spool_values_name_line_and_key() {
    assert_bad_values_name_line_and_key(&[
        (
            "dir = \"/data/spool\"",
            "dir = \"/data/spool\"\npartial_ttl = \"soon\"",
            "spool.partial_ttl",
            "duration",
        ),
        (
            "dir = \"/data/spool\"",
            "dir = \"/data/spool\"\npartial_ttl = \"0s\"",
            "spool.partial_ttl",
            "longer than zero",
        ),
        (
            "dir = \"/data/spool\"",
            "dir = \"/data/spool\"\nhigh_watermark = 90",
            "spool.high_watermark",
            "percentage",
        ),
        (
            "dir = \"/data/spool\"",
            "dir = \"/data/spool\"\nhigh_watermark = \"101%\"",
            "spool.high_watermark",
            "0%",
        ),
        (
            "dir = \"/data/spool\"",
            "dir = \"/data/spool\"\nengine = \"uring\"",
            "spool.engine",
            "io_uring",
        ),
    ]);
}

#[test]
fn bad_s3_values_name_line_and_key() {
    assert_bad_values_name_line_and_key(&[
        (
            "bucket = ",
            "endpoint = \"10.0.2.2:9000\"\nbucket = ",
            "s3.endpoint",
            "http://",
        ),
        (
            "bucket = ",
            "region = \"\"\nbucket = ",
            "s3.region",
            "empty",
        ),
        (
            "bucket = \"uploads\"",
            "bucket = \"a/b\"",
            "s3.bucket",
            "bucket name",
        ),
        (
            "bucket = ",
            "prefix = \"/site\"\nbucket = ",
            "s3.prefix",
            "leading slash",
        ),
        (
            "bucket = ",
            "concurrency = 0\nbucket = ",
            "s3.concurrency",
            "1..=64",
        ),
        (
            "bucket = ",
            "concurrency = 65\nbucket = ",
            "s3.concurrency",
            "1..=64",
        ),
        (
            "bucket = ",
            "checksums = \"sometimes\"\nbucket = ",
            "s3.checksums",
            "when_required",
        ),
    ]);
}

#[test]
fn low_watermark_above_high_is_refused_at_the_low_watermark() {
    let text = base_with("spool", "high_watermark = \"70%\"\nlow_watermark = \"75%\"");
    assert_invalid_key(&text, "spool.low_watermark", "above the high");
    // A high watermark below the default low one pulls the low one down with it.
    let text = base_with("spool", "high_watermark = \"50%\"");
    let spool = parse(&text).expect("valid").spool;
    assert_eq!(
        (spool.high_watermark_percent, spool.low_watermark_percent),
        (50, 50)
    );
}

#[test]
fn credentials_must_be_keys_or_a_file() {
    let neither = replace(
        &base(),
        "access_key_id = \"AKID\"\nsecret_access_key = \"SECRET\"\n",
        "",
    );
    assert_invalid(&neither, line_of(&neither, "[s3]"), "s3", "no credentials");
    let id_only = replace(&base(), "secret_access_key = \"SECRET\"\n", "");
    assert_invalid(
        &id_only,
        line_of(&id_only, "access_key_id"),
        "s3.secret_access_key",
        "missing",
    );
    let secret_only = replace(&base(), "access_key_id = \"AKID\"\n", "");
    assert_invalid(
        &secret_only,
        line_of(&secret_only, "secret_access_key"),
        "s3.access_key_id",
        "missing",
    );
    let both = replace(&base(), "bucket = ", "credentials_file = \"/x\"\nbucket = ");
    assert_invalid(
        &both,
        line_of(&both, "credentials_file"),
        "s3.credentials_file",
        "not both",
    );
    let profile = replace(&base(), "bucket = ", "profile = \"site\"\nbucket = ");
    assert_invalid(
        &profile,
        line_of(&profile, "profile"),
        "s3.profile",
        "credentials_file",
    );
}

#[test]
fn credentials_file_is_read_relative_to_the_config_and_its_profile_selected() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("creds"),
        "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\n\
         [site]\naws_access_key_id = S\naws_secret_access_key = SS\n",
    )
    .expect("write credentials");
    let origin = dir.path().join("sftpgw.toml");
    let keys = "access_key_id = \"AKID\"\nsecret_access_key = \"SECRET\"\n";
    let text = replace(&base(), keys, "credentials_file = \"creds\"\n");
    let s3 = Config::parse(&text, &origin).expect("default profile").s3;
    assert_eq!(
        (s3.access_key_id.as_str(), s3.secret_access_key.as_str()),
        ("D", "DS")
    );
    let text = replace(
        &base(),
        keys,
        "credentials_file = \"creds\"\nprofile = \"site\"\n",
    );
    let s3 = Config::parse(&text, &origin).expect("site profile").s3;
    assert_eq!(
        (s3.access_key_id.as_str(), s3.secret_access_key.as_str()),
        ("S", "SS")
    );

    let text = replace(
        &base(),
        keys,
        "credentials_file = \"creds\"\nprofile = \"other\"\n",
    );
    match Config::parse(&text, &origin) {
        Err(ConfigError::Invalid {
            line, key, message, ..
        }) => {
            assert_eq!(
                (line, key.as_str()),
                (line_of(&text, "credentials_file"), "s3.credentials_file")
            );
            assert!(message.contains("creds: no [other] section"), "{message}");
        }
        other => panic!("expected a missing profile, got {other:?}"),
    }
    let text = replace(&base(), keys, "credentials_file = \"missing\"\n");
    match Config::parse(&text, &origin) {
        Err(ConfigError::Invalid { key, message, .. }) => {
            assert_eq!(key, "s3.credentials_file");
            assert!(message.contains("missing: No such file"), "{message}");
        }
        other => panic!("expected a missing file, got {other:?}"),
    }
}

#[test]
fn relative_paths_are_relative_to_the_config_file() {
    let text = replace(&base(), "dir = \"/data/spool\"", "dir = \"spool\"");
    let text = replace(
        &text,
        "host_key = \"/data/host_key\"",
        "host_key = \"keys/host\"",
    );
    let config = Config::parse(&text, Path::new("/srv/gw/sftpgw.toml")).expect("valid");
    assert_eq!(config.spool.dir, Path::new("/srv/gw/spool"));
    assert_eq!(config.sftp.host_key, Path::new("/srv/gw/keys/host"));
    assert_eq!(
        config.control.socket,
        Path::new("/srv/gw/spool/control.sock")
    );
}

#[test]
fn user_entries_are_validated_at_their_line() {
    let bad_name = replace(&base(), "name = \"alice\"", "name = \"al ice\"");
    assert_invalid(
        &bad_name,
        line_of(&bad_name, "name ="),
        "users[0].name",
        "letters, digits",
    );
    let empty = replace(&base(), "name = \"alice\"", "name = \"\"");
    assert_invalid(&empty, line_of(&empty, "name ="), "users[0].name", "empty");
    let dots = replace(&base(), "name = \"alice\"", "name = \"..\"");
    assert_invalid(&dots, line_of(&dots, "name ="), "users[0].name", "letters");
    let long = replace(
        &base(),
        "name = \"alice\"",
        &format!("name = \"{}\"", "a".repeat(65)),
    );
    assert_invalid(
        &long,
        line_of(&long, "name ="),
        "users[0].name",
        "longer than 64",
    );

    let second_user = format!(
        "{}\n[[users]]\nname = \"bob\"\nauthorized_keys = [\"{KEY}\", \"ssh-rsa nope\"]\n",
        base()
    );
    assert_invalid(
        &second_user,
        line_of(&second_user, "ssh-rsa nope"),
        "users[1].authorized_keys[1]",
        "OpenSSH public key",
    );

    let hash = replace(
        &base(),
        "name = \"alice\"",
        "name = \"alice\"\npassword_hash = \"hunter2\"",
    );
    assert_invalid(
        &hash,
        line_of(&hash, "password_hash"),
        "users[0].password_hash",
        "$argon2",
    );
    let hash = replace(
        &base(),
        "name = \"alice\"",
        "name = \"alice\"\npassword_hash = \"$argon2id$garbage\"",
    );
    assert_invalid(
        &hash,
        line_of(&hash, "password_hash"),
        "users[0].password_hash",
        "PHC",
    );
    let hash = replace(
        &base(),
        "name = \"alice\"",
        &format!("name = \"alice\"\npassword_hash = \"{HASH}\""),
    );
    assert_eq!(
        parse(&hash).expect("valid hash").users[0]
            .password_hash
            .as_deref(),
        Some(HASH)
    );
}

#[test]
fn duplicate_user_names_are_refused_at_the_second() {
    let text = format!("{}\n[[users]]\nname = \"alice\"\n", base());
    let second = text.rfind("name = \"alice\"").expect("second");
    let line = text[..second].matches('\n').count() + 1;
    assert_invalid(&text, line, "users[1].name", "first defined on line 14");
}

#[test]
fn at_least_one_user_must_be_able_to_log_in() {
    let no_users = replace(
        &base(),
        &format!("[[users]]\nname = \"alice\"\nauthorized_keys = [\"{KEY}\"]\n"),
        "",
    );
    assert_invalid(
        &no_users,
        no_users.trim_end().lines().count(),
        "users",
        "no user can log in",
    );
    let keyless = replace(&base(), &format!("authorized_keys = [\"{KEY}\"]\n"), "");
    assert_invalid(
        &keyless,
        keyless.trim_end().lines().count(),
        "users",
        "no user can log in",
    );
    // One usable user is enough; a user without credentials is allowed (cannot log in).
    let mixed = format!("{}\n[[users]]\nname = \"disabled\"\n", base());
    assert_eq!(parse(&mixed).expect("valid").users.len(), 2);
}

#[test]
fn shaping_schedule_zone_fallback_and_budgets_parse() {
    let text = format!(
        r#"{}
[shaping]
rate = "10MiB/s"
schedule = [ {{ days = "mon-fri", from = "08:00", to = "18:00", rate = "2 MiB/s" }},
             {{ days = "fri", from = "22:00", to = "06:00", rate = "paused" }},
             {{ days = "sat,sun", rate = "unlimited" }} ]
timezone = "Europe/Berlin"
clock_unknown_rate = "paused"
daily_budget = "10GiB"
monthly_budget = "200GiB"
"#,
        base()
    );
    let shaping = parse(&text).expect("valid").shaping;
    assert_eq!(shaping.rate, Rate::BytesPerSec(10 << 20));
    assert_eq!(shaping.schedule.len(), 3);
    let office = &shaping.schedule[0];
    assert_eq!(
        (office.from_minute, office.to_minute, office.rate),
        (8 * 60, 18 * 60, Rate::BytesPerSec(2 << 20))
    );
    assert!(office.days.contains(0) && office.days.contains(4) && !office.days.contains(5));
    assert_eq!(office.label, "mon-fri 08:00-18:00");
    let night = &shaping.schedule[1];
    assert_eq!((night.from_minute, night.to_minute), (22 * 60, 6 * 60));
    let weekend = &shaping.schedule[2];
    assert_eq!((weekend.from_minute, weekend.to_minute), (0, DAY_MINUTES));
    assert_eq!(weekend.label, "sat,sun");
    assert_eq!(shaping.timezone_name, "Europe/Berlin");
    assert_eq!(shaping.clock_unknown_rate, Rate::Paused);
    assert_eq!(shaping.daily_budget_bytes, Some(10 << 30));
    assert_eq!(shaping.monthly_budget_bytes, Some(200 << 30));
}

#[test]
fn shaping_defaults_are_unlimited_and_the_fallback_is_the_rate() {
    let shaping = parse(&base()).expect("valid").shaping;
    assert_eq!(shaping.rate, Rate::Unlimited);
    assert!(shaping.schedule.is_empty());
    let text = format!("{}\n[shaping]\nrate = \"1MiB/s\"\n", base());
    let shaping = parse(&text).expect("valid").shaping;
    assert_eq!(shaping.clock_unknown_rate, Rate::BytesPerSec(1 << 20));
    assert_eq!(shaping.daily_budget_bytes, None);
}

#[test]
fn bad_shaping_values_name_line_and_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("rate = \"fast\"", "shaping.rate", "is not a rate"),
        ("rate = \"10MiB\"", "shaping.rate", "size per second"),
        (
            "rate = \"10B/s\"",
            "shaping.rate",
            "below the slowest rate of 1KiB/s",
        ),
        (
            "schedule = [{ days = \"mon-funday\", rate = \"1MiB/s\" }]",
            "shaping.schedule[0].days",
            "\"funday\" in \"mon-funday\" is not a day",
        ),
        (
            "schedule = [{ days = \"mon\", from = \"8am\", rate = \"1MiB/s\" }]",
            "shaping.schedule[0].from",
            "not a time of day like \"08:00\"",
        ),
        (
            "schedule = [{ days = \"mon\", to = \"24:30\", rate = \"1MiB/s\" }]",
            "shaping.schedule[0].to",
            "not a time of day",
        ),
        (
            "schedule = [{ days = \"mon\", from = \"08:00\", to = \"08:00\", rate = \"1MiB/s\" }]",
            "shaping.schedule[0]",
            "the window is empty",
        ),
        (
            "schedule = [{ days = \"mon\" }]",
            "shaping.schedule[0].rate",
            "required key is missing",
        ),
        (
            "schedule = [{ days = \"mon\", rate = \"1MiB/s\", speed = 1 }]",
            "shaping.schedule[0].speed",
            "unknown field",
        ),
        (
            "timezone = \"Mars/Olympus\"",
            "shaping.timezone",
            "not a known IANA time zone",
        ),
        (
            "clock_unknown_rate = \"slow\"",
            "shaping.clock_unknown_rate",
            "is not a rate",
        ),
        (
            "daily_budget = \"lots\"",
            "shaping.daily_budget",
            "is not a size",
        ),
        (
            "daily_budget = 0",
            "shaping.daily_budget",
            "larger than zero",
        ),
        (
            "monthly_budget = \"1MiB\"",
            "shaping.monthly_budget",
            "below s3.part_size (16MiB)",
        ),
    ];
    for (line_text, key, message) in cases {
        let text = format!("{}\n[shaping]\n{line_text}\n", base());
        let line = line_of(&text, line_text);
        assert_invalid(&text, line, key, message);
    }
}

#[test]
fn dotted_and_inline_tables_report_dotted_keys() {
    let without_spool = replace(&base(), "[spool]\ndir = \"/data/spool\"\n", "");
    let text = format!("spool = {{ dir = \"/d\", partial_ttl = \"x\" }}\n{without_spool}");
    assert_invalid(&text, 1, "spool.partial_ttl", "duration");
    let text = format!("spool.dir = \"/d\"\nspool.partial_ttl = \"x\"\n{without_spool}");
    assert_invalid(&text, 2, "spool.partial_ttl", "duration");
}

#[test]
fn missing_file_is_a_read_error_naming_it() {
    let error = Config::load(Path::new("/nonexistent/sftpgw.toml")).expect_err("missing");
    assert!(matches!(error, ConfigError::Read { .. }));
    assert!(
        error
            .to_string()
            .starts_with("/nonexistent/sftpgw.toml: cannot read"),
        "{error}"
    );
}

#[test]
fn load_reads_and_parses_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sftpgw.toml");
    std::fs::write(&path, base()).expect("write");
    assert_eq!(Config::load(&path).expect("valid").users[0].name, "alice");
}

#[test]
fn debug_output_never_shows_the_secret_key() {
    let config = parse(&base()).expect("valid");
    let debug = format!("{config:?}");
    assert!(!debug.contains("SECRET"), "{debug}");
    assert!(debug.contains("AKID"));
}

#[test]
fn spool_engine_defaults_to_auto_and_can_be_forced_either_way() {
    assert_eq!(
        parse(&base()).expect("base").spool.engine,
        EngineChoice::Auto
    );
    for (value, choice) in [
        ("auto", EngineChoice::Auto),
        ("io_uring", EngineChoice::IoUring),
        ("pwrite", EngineChoice::Pwrite),
    ] {
        let text = base_with("spool", &format!("engine = \"{value}\""));
        assert_eq!(parse(&text).expect(value).spool.engine, choice);
    }
}

#[test]
fn early_drain_can_be_turned_off_and_must_be_a_boolean() {
    let text = base_with("s3", "early_drain = false");
    assert!(!parse(&text).expect("parses").s3.early_drain);
    let text = base_with("s3", "early_drain = \"no\"");
    let line = line_of(&text, "early_drain");
    assert_invalid(&text, line, "s3.early_drain", "");
}

#[test]
fn algorithms_default_to_modern_and_accept_compatible() {
    assert_eq!(
        parse(&base()).expect("base").sftp.algorithms,
        Algorithms::Modern
    );
    let text = base_with("sftp", "algorithms = \"compatible\"");
    assert_eq!(
        parse(&text).expect("compatible").sftp.algorithms,
        Algorithms::Compatible
    );
}

#[test]
fn max_file_size_defaults_to_half_the_spool_and_is_bounded_by_s3() {
    let config = parse(&base()).expect("base");
    assert_eq!(config.spool.max_file_size, None);
    assert_eq!(config.spool.max_file_size_for(100 << 30), 50 << 30);
    assert_eq!(
        config.spool.max_file_size_for(0),
        crate::limits::OBJECT_BYTES_MAX,
        "unknown size"
    );
    let text = base_with("spool", "max_file_size = \"2GiB\"");
    let config = parse(&text).expect("2GiB");
    assert_eq!(config.spool.max_file_size_for(100 << 30), 2 << 30);
    for bad in ["0", "\"6TiB\""] {
        let text = base_with("spool", &format!("max_file_size = {bad}"));
        assert_invalid_key(&text, "spool.max_file_size", "largest S3 object");
    }
}

#[test]
fn delivered_retention_defaults_to_ten_thousand_files_and_thirty_days_and_is_bounded() {
    let config = parse(&base()).expect("base");
    assert_eq!(
        config.spool.delivered_retention,
        crate::spool::DeliveredRetention {
            files_count_max: 10_000,
            age_secs_max: 30 * 24 * 3600,
        }
    );
    let text = base_with(
        "spool",
        "delivered_retention = { files = 500, age = \"7d\" }",
    );
    let config = parse(&text).expect("500 files, 7 days");
    assert_eq!(
        config.spool.delivered_retention,
        crate::spool::DeliveredRetention {
            files_count_max: 500,
            age_secs_max: 7 * 24 * 3600,
        }
    );
    let text = base_with("spool", "delivered_retention = { age = \"1h\" }");
    let config = parse(&text).expect("age only");
    assert_eq!(config.spool.delivered_retention.files_count_max, 10_000);
    assert_eq!(config.spool.delivered_retention.age_secs_max, 3600);
    for (bad, key, message) in [
        (
            "{ files = -1 }",
            "spool.delivered_retention.files",
            "count of files from 0 to 200000",
        ),
        (
            "{ files = 200001 }",
            "spool.delivered_retention.files",
            "count of files from 0 to 200000",
        ),
        (
            "{ age = \"soon\" }",
            "spool.delivered_retention.age",
            "duration",
        ),
        (
            "{ count = 5 }",
            "spool.delivered_retention.count",
            "unknown field",
        ),
    ] {
        let text = base_with("spool", &format!("delivered_retention = {bad}"));
        assert_invalid(&text, line_of(&text, "delivered_retention ="), key, message);
    }
}

#[test]
fn idle_timeout_defaults_to_15_minutes_and_can_be_set_or_turned_off() {
    assert_eq!(
        parse(&base()).expect("base").sftp.idle_timeout,
        Some(IDLE_TIMEOUT_DEFAULT)
    );
    let with = |value: &str| base_with("sftp", &format!("idle_timeout = {value}"));
    let set = parse(&with("\"2m\"")).expect("2m");
    assert_eq!(set.sftp.idle_timeout, Some(Duration::from_secs(120)));
    assert_eq!(
        parse(&with("\"off\"")).expect("off").sftp.idle_timeout,
        None
    );
    let text = with("\"soon\"");
    assert_invalid_key(&text, "sftp.idle_timeout", "\"soon\"");
    let text = with("\"0s\"");
    assert_invalid_key(&text, "sftp.idle_timeout", "longer than zero");
}

#[test]
fn manifest_interval_defaults_to_5_minutes_and_can_be_set_or_turned_off() {
    assert_eq!(
        parse(&base()).expect("base").s3.manifest_interval,
        Some(MANIFEST_INTERVAL_DEFAULT)
    );
    let with = |value: &str| base_with("s3", &format!("manifest_interval = {value}"));
    let set = parse(&with("\"30s\"")).expect("30s");
    assert_eq!(set.s3.manifest_interval, Some(Duration::from_secs(30)));
    assert_eq!(
        parse(&with("\"off\"")).expect("off").s3.manifest_interval,
        None
    );
    let text = with("\"hourly\"");
    assert_invalid_key(&text, "s3.manifest_interval", "\"hourly\"");
}

#[test]
fn events_webhook_must_be_an_https_url_and_its_ca_file_is_optional() {
    assert_eq!(parse(&base()).expect("base").webhook, None);
    let with = |keys: &str| format!("{}\n[events]\n{keys}\n", base());
    let w = parse(&with(
        "webhook = \"https://hooks.example.com:8443/in?site=a\"",
    ))
    .expect("https")
    .webhook
    .expect("a webhook");
    assert_eq!(w.url.as_str(), "https://hooks.example.com:8443/in?site=a");
    assert_eq!(w.ca_file, None);
    let w = parse(&with(
        "webhook = \"https://10.0.0.5/in\"\nwebhook_ca = \"/etc/sftpgw/ca.pem\"",
    ))
    .expect("with a CA")
    .webhook
    .expect("a webhook");
    assert_eq!(w.ca_file.as_deref(), Some(Path::new("/etc/sftpgw/ca.pem")));
    for bad in [
        "\"http://hooks.example.com/in\"",
        "\"hooks.example.com\"",
        "\"https://\"",
    ] {
        let text = with(&format!("webhook = {bad}"));
        assert_invalid_key(&text, "events.webhook", "https://");
    }
}

#[test]
fn full_object_checksum_is_on_unless_turned_off() {
    assert!(parse(&base()).expect("base").s3.full_object_checksum);
    let text = base_with("s3", "full_object_checksum = false");
    assert!(!parse(&text).expect("false").s3.full_object_checksum);
    let text = base_with("s3", "full_object_checksum = \"yes\"");
    assert_invalid_key(&text, "s3.full_object_checksum", "");
}
