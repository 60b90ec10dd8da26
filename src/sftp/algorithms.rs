//! The SSH algorithm profiles of `sftp.algorithms`: what the server offers in each, the host
//! keys each needs, which user-key signatures it accepts, and the one log line that tells an
//! operator why a client could not negotiate and which setting would admit it.
//!
//! `modern` (the default) offers only what ssh-audit has nothing against: an ed25519 host
//! key, ML-KEM/curve25519 and 4096/8192-bit DH key exchange, AEAD and CTR ciphers, ETM MACs.
//! `compatible` adds what older libraries need, many of them behind Java ETL tools and Jenkins
//! plugins (JSch 0.1.54/0.1.55, Debian's), old .NET and embedded clients: ECDSA P-256 and
//! RSA host keys (ssh-rsa signatures too), ecdh-sha2-nistp* and diffie-hellman-group14-sha256,
//! non-ETM HMAC-SHA2, and ssh-rsa (SHA-1) signatures from RSA user keys, the only kind JSch
//! 0.1.x can make.
//!
//! Owns the profiles and the host key files each needs; the files themselves are read and
//! made by `keys`. It holds no connection state and may not touch the spool.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use russh::keys::{Algorithm, EcdsaCurve, HashAlg, PrivateKey};
use russh::{AlgorithmKind, Preferred, cipher, kex, mac};
use serde::{Deserialize, Serialize};

use super::keys::{self, HostKeyError, KeyKind};

/// `sftp.algorithms`: the SSH algorithms the server offers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithms {
    /// Current algorithms only (ed25519 host key, curve25519/ML-KEM and large DH groups,
    /// AEAD and CTR ciphers, ETM MACs); ssh-audit finds nothing to warn about.
    #[default]
    Modern,
    /// Also what older SSH libraries need (JSch 0.1.x, old .NET and embedded clients):
    /// ECDSA P-256 and RSA host keys (ssh-rsa signatures included), ecdh-sha2-nistp* and
    /// diffie-hellman-group14-sha256 key exchange, non-ETM HMAC-SHA2, and ssh-rsa (SHA-1)
    /// signatures from RSA user keys.
    Compatible,
}

/// Key exchange in both profiles, then the extension markers russh needs.
const KEX_MODERN: &[kex::Name] = &[
    kex::MLKEM768X25519_SHA256,
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    kex::DH_G16_SHA512,
    kex::DH_G18_SHA512,
];
const KEX_COMPATIBLE_EXTRA: &[kex::Name] = &[
    kex::ECDH_SHA2_NISTP256,
    kex::ECDH_SHA2_NISTP384,
    kex::ECDH_SHA2_NISTP521,
    kex::DH_G14_SHA256,
];
const KEX_EXTENSIONS: &[kex::Name] = &[
    kex::EXTENSION_SUPPORT_AS_SERVER,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];
const MAC_MODERN: &[mac::Name] = &[mac::HMAC_SHA512_ETM, mac::HMAC_SHA256_ETM];
const MAC_COMPATIBLE_EXTRA: &[mac::Name] = &[mac::HMAC_SHA256, mac::HMAC_SHA512];

/// Signature algorithms of user keys and host keys we accept in `modern`: every current one.
/// They are also the `server-sig-algs` we announce, so RSA user keys sign with rsa-sha2-*.
/// Host key algorithms are offered only for the host keys loaded, here ed25519 alone.
const KEY_MODERN: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP256,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP384,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP521,
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha512),
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha256),
    },
];
/// `compatible` also signs host keys and accepts user signatures with ssh-rsa (SHA-1).
const KEY_COMPATIBLE_EXTRA: &[Algorithm] = &[Algorithm::Rsa { hash: None }];

/// `Preferred` for a profile; `ciphers` is the cipher order (it depends on the CPU, see
/// `server`), the same in both profiles: AES-GCM, ChaCha20-Poly1305 and AES-CTR are all
/// current.
pub fn preferred(profile: Algorithms, ciphers: Vec<cipher::Name>) -> Preferred {
    let compatible = profile == Algorithms::Compatible;
    let extra = |list: &'static [kex::Name]| if compatible { list } else { &[] };
    let kex: Vec<kex::Name> = KEX_MODERN
        .iter()
        .chain(extra(KEX_COMPATIBLE_EXTRA))
        .chain(KEX_EXTENSIONS)
        .copied()
        .collect();
    let mut mac = MAC_MODERN.to_vec();
    let mut key = KEY_MODERN.to_vec();
    if compatible {
        mac.extend_from_slice(MAC_COMPATIBLE_EXTRA);
        key.extend_from_slice(KEY_COMPATIBLE_EXTRA);
    }
    Preferred {
        kex: Cow::Owned(kex),
        key: Cow::Owned(key),
        cipher: Cow::Owned(ciphers),
        mac: Cow::Owned(mac),
        // Compression costs CPU on the box and gains nothing on already-compressed files.
        compression: Cow::Borrowed(&[russh::compression::NONE]),
        ..Preferred::DEFAULT
    }
}

/// True if a user key's signature made with `algorithm` is accepted in `profile`.
pub fn accepts_user_signature(profile: Algorithms, algorithm: &Algorithm) -> bool {
    profile == Algorithms::Compatible || KEY_MODERN.contains(algorithm)
}

/// The host key files of a profile: the configured ed25519 key, and in `compatible` an ECDSA
/// P-256 and an RSA key beside it. Their names follow OpenSSH's (`ssh_host_ed25519_key` ->
/// `ssh_host_ecdsa_key`, `ssh_host_rsa_key`); a name without "ed25519" gets `_ecdsa` and
/// `_rsa` appended.
pub fn host_key_files(ed25519: &Path, profile: Algorithms) -> Vec<(PathBuf, KeyKind)> {
    let mut files = vec![(ed25519.to_owned(), KeyKind::Ed25519)];
    if profile == Algorithms::Compatible {
        let name = ed25519
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let sibling = |kind: &str| {
            let file = if name.contains("ed25519") {
                name.replacen("ed25519", kind, 1)
            } else {
                format!("{name}_{kind}")
            };
            ed25519.with_file_name(file)
        };
        files.push((sibling("ecdsa"), KeyKind::EcdsaP256));
        files.push((sibling("rsa"), KeyKind::Rsa));
    }
    files
}

/// Loads (or generates) every host key of `profile`.
pub async fn load_host_keys(
    ed25519: &Path,
    profile: Algorithms,
) -> Result<Vec<PrivateKey>, HostKeyError> {
    let mut keys = Vec::new();
    for (path, kind) in host_key_files(ed25519, profile) {
        keys.push(keys::load_or_generate(&path, kind, "host key").await?);
    }
    Ok(keys)
}

/// What to tell the operator about a client that offered `theirs` for `kind` and found
/// nothing in common with `profile`.
pub fn negotiation_hint(
    profile: Algorithms,
    kind: &AlgorithmKind,
    theirs: &[String],
) -> &'static str {
    let compatible = preferred(
        Algorithms::Compatible,
        super::server::cipher_preference(true),
    );
    let names: Vec<String> = match kind {
        AlgorithmKind::Kex => compatible
            .kex
            .iter()
            .map(|n| n.as_ref().to_owned())
            .collect(),
        AlgorithmKind::Key => compatible.key.iter().map(|a| a.to_string()).collect(),
        AlgorithmKind::Cipher => compatible
            .cipher
            .iter()
            .map(|n| n.as_ref().to_owned())
            .collect(),
        AlgorithmKind::Mac => compatible
            .mac
            .iter()
            .map(|n| n.as_ref().to_owned())
            .collect(),
        AlgorithmKind::Compression => vec!["none".to_owned()],
    };
    let admitted = theirs.iter().any(|t| names.contains(t));
    match (profile, admitted) {
        (Algorithms::Modern, true) => {
            "the client is older than the \"modern\" profile: set [sftp] algorithms = \"compatible\" to admit it"
        }
        _ => "no profile of sftpgw offers any of these: the client needs a newer SSH library",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<T: AsRef<str>>(list: &[T]) -> Vec<String> {
        list.iter().map(|n| n.as_ref().to_owned()).collect()
    }

    #[test]
    fn modern_offers_nothing_ssh_audit_warns_about() {
        let p = preferred(
            Algorithms::Modern,
            super::super::server::cipher_preference(true),
        );
        let kex = names(&p.kex);
        for weak in [
            "diffie-hellman-group14-sha256",
            "diffie-hellman-group14-sha1",
            "diffie-hellman-group1-sha1",
            "diffie-hellman-group-exchange-sha1",
            "ecdh-sha2-nistp256",
            "ecdh-sha2-nistp384",
            "ecdh-sha2-nistp521",
        ] {
            assert!(!kex.contains(&weak.to_owned()), "{weak} in modern");
        }
        assert_eq!(
            names(&p.mac),
            [
                "hmac-sha2-512-etm@openssh.com",
                "hmac-sha2-256-etm@openssh.com"
            ]
        );
        assert!(!p.key.contains(&Algorithm::Rsa { hash: None }));
        assert!(!accepts_user_signature(
            Algorithms::Modern,
            &Algorithm::Rsa { hash: None }
        ));
        assert!(accepts_user_signature(
            Algorithms::Modern,
            &Algorithm::Rsa {
                hash: Some(HashAlg::Sha256)
            }
        ));
    }

    #[test]
    fn compatible_adds_what_jsch_0_1_55_offers() {
        let p = preferred(
            Algorithms::Compatible,
            super::super::server::cipher_preference(true),
        );
        assert!(names(&p.kex).contains(&"ecdh-sha2-nistp256".to_owned()));
        assert!(names(&p.kex).contains(&"diffie-hellman-group14-sha256".to_owned()));
        assert!(names(&p.mac).contains(&"hmac-sha2-256".to_owned()));
        assert!(names(&p.cipher).contains(&"aes128-ctr".to_owned()));
        assert!(p.key.contains(&Algorithm::Rsa { hash: None }));
        assert!(accepts_user_signature(
            Algorithms::Compatible,
            &Algorithm::Rsa { hash: None }
        ));
    }

    #[test]
    fn compatible_host_keys_sit_beside_the_ed25519_one() {
        let files = host_key_files(Path::new("/d/ssh_host_ed25519_key"), Algorithms::Compatible);
        let paths: Vec<_> = files.iter().map(|(p, _)| p.display().to_string()).collect();
        assert_eq!(
            paths,
            [
                "/d/ssh_host_ed25519_key",
                "/d/ssh_host_ecdsa_key",
                "/d/ssh_host_rsa_key"
            ]
        );
        let files = host_key_files(Path::new("/d/host_key"), Algorithms::Compatible);
        assert_eq!(files[1].0, Path::new("/d/host_key_ecdsa"));
        assert_eq!(files[2].0, Path::new("/d/host_key_rsa"));
        assert_eq!(
            host_key_files(Path::new("/d/host_key"), Algorithms::Modern).len(),
            1
        );
    }

    #[test]
    fn the_hint_names_the_setting_only_when_it_would_help() {
        let jsch = [
            "ecdh-sha2-nistp256".to_owned(),
            "diffie-hellman-group14-sha1".to_owned(),
        ];
        assert!(
            negotiation_hint(Algorithms::Modern, &AlgorithmKind::Kex, &jsch)
                .contains("algorithms = \"compatible\"")
        );
        let ancient = ["diffie-hellman-group1-sha1".to_owned()];
        assert!(
            !negotiation_hint(Algorithms::Modern, &AlgorithmKind::Kex, &ancient)
                .contains("algorithms")
        );
        assert!(
            !negotiation_hint(Algorithms::Compatible, &AlgorithmKind::Kex, &jsch)
                .contains("algorithms =")
        );
    }
}
