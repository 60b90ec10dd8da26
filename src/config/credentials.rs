//! Reading S3 keys from an AWS shared-credentials file (`s3.credentials_file`).
//!
//! The INI dialect of `~/.aws/credentials`: `[name]` sections (`[profile name]` as in
//! `~/.aws/config` is accepted too), `key = value` lines, `#` and `;` comments. Only
//! `aws_access_key_id` and `aws_secret_access_key` are used; other keys are ignored.
//!
//! Reads that one file and nothing else of the crate; its errors are plain messages, which
//! `config` reports at the `s3.credentials_file` key.

use std::path::Path;

/// A credentials file larger than this is certainly not one.
const CREDENTIALS_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// The access key id and secret of `profile` in the file at `path`. Errors are messages that
/// name the file (and its line where there is one).
pub(super) fn read(path: &Path, profile: &str) -> Result<(String, String), String> {
    let shown = path.display();
    let size = std::fs::metadata(path)
        .map_err(|error| format!("{shown}: {error}"))?
        .len();
    if size > CREDENTIALS_FILE_BYTES_MAX {
        return Err(format!(
            "{shown}: {size} bytes is too large for a credentials file"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|error| format!("{shown}: {error}"))?;
    parse(&text, profile).map_err(|error| match error.line {
        Some(line) => format!("{shown}:{line}: {}", error.message),
        None => format!("{shown}: {}", error.message),
    })
}

/// What is wrong with a credentials file, and on which line if one is to blame.
#[derive(Debug, PartialEq, Eq)]
struct ParseError {
    line: Option<usize>,
    message: String,
}

fn at_line(index: usize, message: &str) -> ParseError {
    ParseError {
        line: Some(index + 1),
        message: message.to_owned(),
    }
}

fn whole_file(message: String) -> ParseError {
    ParseError {
        line: None,
        message,
    }
}

fn parse(text: &str, profile: &str) -> Result<(String, String), ParseError> {
    let mut in_profile = false;
    let mut seen_profile = false;
    let mut key_id = None;
    let mut secret = None;
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[') {
            let Some(section) = section.strip_suffix(']') else {
                return Err(at_line(index, "unterminated section header"));
            };
            let section = section.trim();
            in_profile = section == profile
                || section
                    .strip_prefix("profile")
                    .is_some_and(|name| name.trim() == profile);
            seen_profile |= in_profile;
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(at_line(index, "expected `key = value`"));
        };
        if !in_profile {
            continue;
        }
        let value = value.trim().to_owned();
        match key.trim() {
            "aws_access_key_id" => key_id = Some(value),
            "aws_secret_access_key" => secret = Some(value),
            _ => {}
        }
    }
    if !seen_profile {
        return Err(whole_file(format!("no [{profile}] section")));
    }
    match (key_id, secret) {
        (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => Ok((id, secret)),
        (Some(id), _) if !id.is_empty() => Err(whole_file(format!(
            "[{profile}] has no aws_secret_access_key"
        ))),
        _ => Err(whole_file(format!("[{profile}] has no aws_access_key_id"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# comment
[default]
aws_access_key_id = AKIDDEFAULT
aws_secret_access_key=secret/default
region = eu-west-1

; another
[profile site-a]
aws_access_key_id = AKIDSITEA
aws_secret_access_key = secret-a
";

    #[test]
    fn named_profile_and_default_are_found() {
        let default = ("AKIDDEFAULT".to_owned(), "secret/default".to_owned());
        assert_eq!(parse(FILE, "default"), Ok(default));
        assert_eq!(
            parse(FILE, "site-a"),
            Ok(("AKIDSITEA".to_owned(), "secret-a".to_owned()))
        );
    }

    #[test]
    fn missing_profile_or_key_is_reported() {
        assert_eq!(
            parse(FILE, "other"),
            Err(whole_file("no [other] section".to_owned()))
        );
        let no_secret = "[default]\naws_access_key_id = A\n";
        assert_eq!(
            parse(no_secret, "default"),
            Err(whole_file(
                "[default] has no aws_secret_access_key".to_owned()
            ))
        );
        let no_key = Err(whole_file("[default] has no aws_access_key_id".to_owned()));
        assert_eq!(parse("[default]\n", "default"), no_key);
    }

    #[test]
    fn malformed_line_names_its_line() {
        let error = parse("[default]\n\njunk\n", "default").expect_err("junk line");
        assert_eq!(error, at_line(2, "expected `key = value`"));
    }
}
