//! Key files: the server's host keys and the demo's client key, loaded from OpenSSH private
//! key files or generated (mode 0600, written durably) on first start.
//!
//! Owns the key files at the paths it is given, and nothing else on disk; it knows nothing of
//! SSH connections, of the spool or of the configuration.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use getrandom::SysRng;
use getrandom::rand_core::UnwrapErr;
use russh::keys::PrivateKey;
use russh::keys::ssh_key::private::{EcdsaKeypair, Ed25519Keypair, KeypairData, RsaKeypair};
use russh::keys::ssh_key::{EcdsaCurve, HashAlg, LineEnding};

/// RSA host keys we generate: 3072 bits, the size NIST and ssh-audit expect from now on.
pub const RSA_KEY_BITS: usize = 3072;

/// Why a key file could not be loaded or generated; the message names the key and its file.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    /// Reading, creating or writing the file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// Which key: "host key", "demo client key".
        what: &'static str,
        /// The key file.
        path: PathBuf,
        /// The failed operation's error.
        source: io::Error,
    },
    /// The file is not an OpenSSH private key.
    #[error("{what} {path} is not an OpenSSH private key: {reason}")]
    Parse {
        /// Which key: "host key", "demo client key".
        what: &'static str,
        /// The key file.
        path: PathBuf,
        /// What the key parser said.
        reason: String,
    },
    /// The key has a passphrase, which a daemon cannot type.
    #[error("{what} {path} is encrypted; the gateway needs it without a passphrase")]
    Encrypted {
        /// Which key: "host key", "demo client key".
        what: &'static str,
        /// The key file.
        path: PathBuf,
    },
    /// The key is not of the kind the caller asked for.
    #[error("{what} {path} is a {found} key; a {wanted} key belongs there")]
    WrongType {
        /// Which key: "host key", "demo client key".
        what: &'static str,
        /// The key file.
        path: PathBuf,
        /// The algorithm of the key in the file.
        found: String,
        /// The kind asked for ([`KeyKind`]'s label).
        wanted: &'static str,
    },
    /// Generating a new key failed (the system's random source or the key encoder).
    #[error("generating the {what} {path}: {reason}")]
    Generate {
        /// Which key: "host key", "demo client key".
        what: &'static str,
        /// The key file.
        path: PathBuf,
        /// What the generator said.
        reason: String,
    },
}

/// The kinds of key we load or generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Ed25519: the host key every server has, and the demo client key.
    Ed25519,
    /// ECDSA on NIST P-256.
    EcdsaP256,
    /// RSA of [`RSA_KEY_BITS`] when generated.
    Rsa,
}

impl KeyKind {
    fn label(self) -> &'static str {
        match self {
            KeyKind::Ed25519 => "ed25519",
            KeyKind::EcdsaP256 => "ECDSA P-256",
            KeyKind::Rsa => "RSA",
        }
    }

    fn matches(self, key: &PrivateKey) -> bool {
        matches!(
            (self, key.key_data()),
            (KeyKind::Ed25519, KeypairData::Ed25519(_))
                | (
                    KeyKind::EcdsaP256,
                    KeypairData::Ecdsa(EcdsaKeypair::NistP256 { .. })
                )
                | (KeyKind::Rsa, KeypairData::Rsa(_))
        )
    }

    fn generate(self, comment: &str) -> Result<PrivateKey, String> {
        let mut rng = UnwrapErr(SysRng);
        let data = match self {
            KeyKind::Ed25519 => KeypairData::from(Ed25519Keypair::random(&mut rng)),
            KeyKind::EcdsaP256 => KeypairData::from(
                EcdsaKeypair::random(&mut rng, EcdsaCurve::NistP256).map_err(|e| e.to_string())?,
            ),
            KeyKind::Rsa => KeypairData::from(
                RsaKeypair::random(&mut rng, RSA_KEY_BITS).map_err(|e| e.to_string())?,
            ),
        };
        PrivateKey::new(data, comment).map_err(|e| e.to_string())
    }
}

/// Loads the `kind` key at `path`, or creates one (OpenSSH format, mode 0600, parent
/// directories created) if there is none. `what` names the key in errors and in the log
/// line ("host key", "demo client key").
pub async fn load_or_generate(
    path: &Path,
    kind: KeyKind,
    what: &'static str,
) -> Result<PrivateKey, HostKeyError> {
    let path = path.to_owned();
    let task_path = path.clone();
    tokio::task::spawn_blocking(move || load_or_generate_blocking(&task_path, kind, what))
        .await
        .map_err(|join| HostKeyError::Io {
            what,
            path,
            source: io::Error::other(join),
        })?
}

/// The ed25519 host key at `path`, generated if missing.
pub async fn load_or_generate_host_key(path: &Path) -> Result<PrivateKey, HostKeyError> {
    load_or_generate(path, KeyKind::Ed25519, "host key").await
}

fn load_or_generate_blocking(
    path: &Path,
    kind: KeyKind,
    what: &'static str,
) -> Result<PrivateKey, HostKeyError> {
    let io_error = |source| HostKeyError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key =
                PrivateKey::from_openssh(text.as_bytes()).map_err(|e| HostKeyError::Parse {
                    what,
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
            if key.is_encrypted() {
                return Err(HostKeyError::Encrypted {
                    what,
                    path: path.to_owned(),
                });
            }
            if !kind.matches(&key) {
                return Err(HostKeyError::WrongType {
                    what,
                    path: path.to_owned(),
                    found: key.algorithm().to_string(),
                    wanted: kind.label(),
                });
            }
            tracing::info!(path = %path.display(), kind = kind.label(), fingerprint = %key.fingerprint(HashAlg::Sha256), "{what} loaded");
            Ok(key)
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let key = kind.generate(&format!("sftpgw {what}")).map_err(|reason| {
                HostKeyError::Generate {
                    what,
                    path: path.to_owned(),
                    reason,
                }
            })?;
            write_private_key(path, &key).map_err(io_error)?;
            tracing::info!(path = %path.display(), kind = kind.label(), fingerprint = %key.fingerprint(HashAlg::Sha256), "{what} generated");
            Ok(key)
        }
        Err(err) => Err(io_error(err)),
    }
}

/// A new ed25519 key from the operating system's random source.
pub fn generate_ed25519(comment: &str) -> PrivateKey {
    let mut key = PrivateKey::from(Ed25519Keypair::random(&mut UnwrapErr(SysRng)));
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn ecdsa_and_rsa_keys_are_generated_with_their_kind_and_checked_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let ecdsa = dir.path().join("ecdsa");
        let key = load_or_generate(&ecdsa, KeyKind::EcdsaP256, "host key")
            .await
            .unwrap();
        assert_eq!(key.algorithm().as_str(), "ecdsa-sha2-nistp256");
        let rsa = dir.path().join("rsa");
        let key = load_or_generate(&rsa, KeyKind::Rsa, "host key")
            .await
            .unwrap();
        let KeypairData::Rsa(pair) = key.key_data() else {
            panic!("not RSA: {:?}", key.algorithm());
        };
        assert_eq!(pair.key_size(), RSA_KEY_BITS as u32);
        // A key of another kind in the place of one is refused, not used or replaced.
        assert!(matches!(
            load_or_generate(&rsa, KeyKind::EcdsaP256, "host key").await,
            Err(HostKeyError::WrongType { .. })
        ));
    }
}
