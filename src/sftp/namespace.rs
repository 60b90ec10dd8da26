//! Who may log in, and with which secrets: the users of the configuration with their parsed
//! public keys and argon2 password hashes.
//!
//! A user's namespace itself (the jail below `/`) is [`crate::spool::VPath`]; this module only
//! decides whether a login is allowed. An unknown user and a wrong secret give the same answer
//! (`false`) and, for passwords, take about the same time.
//!
//! Owns the credentials; from the spool it uses only the [`crate::spool::Quota`] type, and it
//! may not touch files or the configuration file (`config` builds its [`User`]s).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use russh::keys::PublicKey;
use russh::keys::ssh_key::authorized_keys::Entry;

/// A user of the configuration (`[[users]]`), as parsed and checked by `config`.
#[derive(Debug, Clone)]
pub struct User {
    /// The login name, unique in the configuration.
    pub name: String,
    /// OpenSSH `authorized_keys` lines.
    pub authorized_keys: Vec<String>,
    /// PHC string, `$argon2id$...`.
    pub password_hash: Option<String>,
    /// What this user may hold in the spool, not yet delivered (`quota_bytes`, `quota_files`).
    pub quota: crate::spool::Quota,
}

/// A user entry of the configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// A line of `authorized_keys` does not parse.
    #[error("user {user:?}: authorized_keys[{index}] is not an OpenSSH public key line: {reason}")]
    InvalidKey {
        /// The user's name.
        user: String,
        /// Which line of `authorized_keys`, from 0.
        index: usize,
        /// What the parser said.
        reason: String,
    },
    /// A line of `authorized_keys` has options (`from=`, `command=`...), which we would not
    /// enforce.
    #[error(
        "user {user:?}: authorized_keys[{index}] has options ({options:?}); key options are not \
         supported, remove them"
    )]
    KeyOptions {
        /// The user's name.
        user: String,
        /// Which line of `authorized_keys`, from 0.
        index: usize,
        /// The options, as written.
        options: String,
    },
    /// `password_hash` is not an argon2 PHC string.
    #[error("user {user:?}: password_hash is not an argon2 PHC string ($argon2id$...): {reason}")]
    InvalidPasswordHash {
        /// The user's name.
        user: String,
        /// What the parser said.
        reason: String,
    },
    /// Two entries have the same name.
    #[error("user {user:?} is listed twice")]
    Duplicate {
        /// The user's name.
        user: String,
    },
}

struct Credentials {
    keys: Vec<PublicKey>,
    /// A PHC string already checked to parse as an argon2 hash.
    password_hash: Option<String>,
}

/// The users allowed to log in.
pub struct Users {
    by_name: HashMap<String, Credentials>,
}

impl Users {
    /// Parses every user's keys and password hash; any unusable entry is an error naming it.
    pub fn new(users: &[User]) -> Result<Users, UsersError> {
        let mut by_name = HashMap::with_capacity(users.len());
        for user in users {
            let credentials = parse_credentials(user)?;
            if by_name.insert(user.name.clone(), credentials).is_some() {
                return Err(UsersError::Duplicate {
                    user: user.name.clone(),
                });
            }
        }
        Ok(Users { by_name })
    }

    /// True if `user` exists and lists `key` (the comment is ignored).
    pub fn verify_key(&self, user: &str, key: &PublicKey) -> bool {
        self.by_name.get(user).is_some_and(|credentials| {
            credentials
                .keys
                .iter()
                .any(|k| k.key_data() == key.key_data())
        })
    }

    /// True if `user` exists, has a password hash, and `password` matches it. Costs one argon2
    /// verification whatever the outcome (a dummy hash stands in for missing users and
    /// passwords), so timing does not tell whether a user exists. Blocking: call it from
    /// `spawn_blocking`.
    pub fn verify_password(&self, user: &str, password: &str) -> bool {
        let stored = self
            .by_name
            .get(user)
            .and_then(|c| c.password_hash.as_deref());
        match stored {
            Some(phc) => argon2_verify(phc, password),
            None => {
                // Same work as a real check; the result is discarded on purpose.
                let _ = argon2_verify(&DUMMY_HASH, password);
                false
            }
        }
    }

    /// [`Users::verify_password`] on the blocking pool, at most one per core at a time: each
    /// argon2 check holds about 19 MiB and a core for tens of milliseconds, so a flood of
    /// attempts waits here instead of taking the memory and every core.
    pub async fn verify_password_pooled(self: &Arc<Self>, user: &str, password: &str) -> bool {
        let Ok(_slot) = ARGON2_SLOTS.acquire().await else {
            return false;
        };
        let users = Arc::clone(self);
        let (name, secret) = (user.to_owned(), password.to_owned());
        tokio::task::spawn_blocking(move || users.verify_password(&name, &secret))
            .await
            .unwrap_or(false)
    }

    /// True if a user of this name is configured.
    pub fn contains(&self, user: &str) -> bool {
        self.by_name.contains_key(user)
    }

    /// True if any user has a password (else the server offers public keys only).
    pub fn any_password(&self) -> bool {
        self.by_name.values().any(|c| c.password_hash.is_some())
    }
}

/// Hashes a password for the configuration file: argon2id with the crate's default cost and a
/// random salt, as a PHC string (`$argon2id$v=19$...`).
#[expect(
    clippy::expect_used,
    reason = "only invalid parameters or salt lengths fail, and both are fixed here"
)]
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters and a generated salt cannot fail")
        .to_string()
}

/// Stand-in hash verified for unknown users, so they cost the same time as known ones.
/// Password checks at once at most: one per core.
static ARGON2_SLOTS: LazyLock<tokio::sync::Semaphore> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    tokio::sync::Semaphore::new(cores)
});

static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| hash_password("no user has this password"));

fn argon2_verify(phc: &str, password: &str) -> bool {
    // The PHC string was validated in `Users::new`; a parse failure here means no match.
    match PasswordHash::new(phc) {
        // `verify_password` compares the derived hash in constant time.
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

fn parse_credentials(user: &User) -> Result<Credentials, UsersError> {
    let mut keys = Vec::with_capacity(user.authorized_keys.len());
    for (index, line) in user.authorized_keys.iter().enumerate() {
        let entry: Entry = line
            .trim()
            .parse()
            .map_err(|e: russh::keys::ssh_key::Error| UsersError::InvalidKey {
                user: user.name.clone(),
                index,
                reason: e.to_string(),
            })?;
        // Options such as from="..." restrict a key; silently ignoring them would widen access.
        if !entry.config_opts().is_empty() {
            return Err(UsersError::KeyOptions {
                user: user.name.clone(),
                index,
                options: entry.config_opts().as_str().to_owned(),
            });
        }
        keys.push(entry.public_key().clone());
    }
    let password_hash = match &user.password_hash {
        None => None,
        Some(phc) => {
            let parsed = PasswordHash::new(phc).map_err(|e| UsersError::InvalidPasswordHash {
                user: user.name.clone(),
                reason: e.to_string(),
            })?;
            if !parsed.algorithm.as_str().starts_with("argon2") {
                return Err(UsersError::InvalidPasswordHash {
                    user: user.name.clone(),
                    reason: format!("algorithm {} is not argon2", parsed.algorithm),
                });
            }
            Some(phc.clone())
        }
    };
    Ok(Credentials {
        keys,
        password_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::ssh_key::private::Ed25519Keypair;
    use russh::keys::{PrivateKey, ssh_key::LineEnding};

    fn key(seed: u8) -> PrivateKey {
        PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
    }

    fn line(key: &PrivateKey, comment: &str) -> String {
        let mut public = key.public_key().clone();
        public.set_comment(comment);
        public.to_openssh().unwrap()
    }

    fn user(name: &str, keys: Vec<String>, password_hash: Option<String>) -> User {
        User {
            name: name.to_owned(),
            authorized_keys: keys,
            password_hash,
            quota: Default::default(),
        }
    }

    #[test]
    fn listed_key_is_accepted_whatever_its_comment_and_others_are_not() {
        let alice_key = key(1);
        let users =
            Users::new(&[user("alice", vec![line(&alice_key, "alice@laptop")], None)]).unwrap();
        let mut offered = alice_key.public_key().clone();
        offered.set_comment("something else");
        assert!(users.verify_key("alice", &offered));
        assert!(!users.verify_key("alice", key(2).public_key()));
        assert!(!users.verify_key("bob", alice_key.public_key()));
    }

    #[test]
    fn password_matches_only_its_own_user_and_unknown_users_fail() {
        let hash = hash_password("correct horse");
        assert!(hash.starts_with("$argon2id$"));
        let users = Users::new(&[
            user("alice", vec![], Some(hash)),
            user("bob", vec![line(&key(3), "")], None),
        ])
        .unwrap();
        assert!(users.verify_password("alice", "correct horse"));
        assert!(!users.verify_password("alice", "wrong"));
        assert!(!users.verify_password("bob", "correct horse"));
        assert!(!users.verify_password("nobody", "correct horse"));
        assert!(users.any_password());
    }

    #[test]
    fn hash_password_salts_every_hash() {
        assert_ne!(hash_password("same"), hash_password("same"));
    }

    #[test]
    fn unusable_entries_are_refused_with_the_user_named() {
        let bad_key = Users::new(&[user(
            "carol",
            vec!["ssh-ed25519 AAAAnotbase64".into()],
            None,
        )]);
        assert!(
            matches!(bad_key, Err(UsersError::InvalidKey { ref user, index: 0, .. }) if user == "carol")
        );

        let with_options = format!("from=\"10.0.0.1\" {}", line(&key(4), "c"));
        let options = Users::new(&[user("carol", vec![with_options], None)]);
        assert!(matches!(options, Err(UsersError::KeyOptions { .. })));

        let bad_hash = Users::new(&[user("carol", vec![], Some("plaintext".into()))]);
        assert!(matches!(
            bad_hash,
            Err(UsersError::InvalidPasswordHash { .. })
        ));

        let twice = Users::new(&[user("dan", vec![], None), user("dan", vec![], None)]);
        assert!(matches!(twice, Err(UsersError::Duplicate { .. })));
    }

    #[test]
    fn private_key_round_trips_through_openssh_format() {
        // The test helpers elsewhere write client keys this way; keep the format honest.
        let k = key(5);
        let text = k.to_openssh(LineEnding::LF).unwrap();
        let back = PrivateKey::from_openssh(text.as_bytes()).unwrap();
        assert_eq!(back.public_key().key_data(), k.public_key().key_data());
    }
}
