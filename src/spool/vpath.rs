//! Paths inside a user's namespace (the jail).
//!
//! A [`VPath`] is normalised and can never name anything outside the user's root: `..` that
//! would climb above `/` is refused rather than clamped, so a client learns it asked for
//! something outside its jail.
//!
//! A leaf of the spool: it uses only `limits`, and every module may use it.

use super::{FsError, FsErrorKind};
use crate::limits::KEY_BYTES_MAX;

/// A normalised path below a user's root: components joined by `/`, no leading slash;
/// the root itself is the empty path.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct VPath(String);

impl VPath {
    /// The home directory: the root of a user's namespace.
    pub fn root() -> Self {
        VPath(String::new())
    }

    /// Resolves a client path, absolute or relative to the root (every session's working
    /// directory is `/`), against the jail.
    pub fn resolve(raw: &str) -> Result<VPath, FsError> {
        if raw.contains('\0') {
            return Err(FsError::new(
                FsErrorKind::PermissionDenied,
                "path contains NUL",
            ));
        }
        if raw.contains(char::REPLACEMENT_CHARACTER) {
            return Err(FsError::new(
                FsErrorKind::PermissionDenied,
                "path is not valid UTF-8",
            ));
        }
        let mut parts: Vec<&str> = Vec::new();
        for component in raw.split('/') {
            match component {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(FsError::new(
                            FsErrorKind::PermissionDenied,
                            "path leads outside your home directory",
                        ));
                    }
                }
                other => parts.push(other),
            }
        }
        let joined = parts.join("/");
        if joined.len() > KEY_BYTES_MAX / 2 {
            return Err(FsError::new(FsErrorKind::PermissionDenied, "path too long"));
        }
        Ok(VPath(joined))
    }

    /// Like [`VPath::resolve`], but `..` at the root stays at the root, as in a chroot: what
    /// REALPATH answers, so that a GUI client's "parent directory" at the top of the jail shows
    /// the top again instead of an error. Only REALPATH uses it; every request that acts on a
    /// path refuses one that climbs out.
    pub fn resolve_clamped(raw: &str) -> Result<VPath, FsError> {
        let mut kept: Vec<&str> = Vec::new();
        for component in raw.split('/') {
            match component {
                ".." => {
                    kept.pop();
                }
                "" | "." => {}
                other => kept.push(other),
            }
        }
        VPath::resolve(&kept.join("/"))
    }

    /// Wraps a string that is already normalised (components joined by `/`, no `.`/`..`).
    pub(crate) fn from_normalized(s: String) -> Self {
        VPath(s)
    }

    /// Whether this is the home directory.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// Relative form, `a/b/c` (empty for the root); used in object keys.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form a client sees, `/a/b/c`.
    pub fn display(&self) -> String {
        format!("/{}", self.0)
    }

    /// The directory that holds it; `None` for the root.
    pub fn parent(&self) -> Option<VPath> {
        if self.is_root() {
            return None;
        }
        Some(match self.0.rfind('/') {
            Some(i) => VPath(self.0[..i].to_owned()),
            None => VPath::root(),
        })
    }

    /// Last component (empty for the root).
    pub fn name(&self) -> &str {
        match self.0.rfind('/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// `name` (one component or a relative path) below this directory.
    pub fn join(&self, name: &str) -> VPath {
        if self.is_root() {
            VPath(name.to_owned())
        } else {
            VPath(format!("{}/{}", self.0, name))
        }
    }

    /// True if `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &VPath) -> bool {
        other.is_root()
            || self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotdot_above_root_is_refused_not_clamped() {
        assert_eq!(
            VPath::resolve("/../etc/passwd").unwrap_err().kind,
            FsErrorKind::PermissionDenied
        );
        assert_eq!(
            VPath::resolve("a/../../b").unwrap_err().kind,
            FsErrorKind::PermissionDenied
        );
        assert_eq!(VPath::resolve("a/../b").unwrap().as_str(), "b");
        assert_eq!(VPath::resolve("//a/./b/").unwrap().as_str(), "a/b");
        assert!(VPath::resolve("/").unwrap().is_root());
        assert!(VPath::resolve(".").unwrap().is_root());
    }

    #[test]
    fn clamped_resolution_stops_dotdot_at_the_root() {
        assert!(VPath::resolve_clamped("..").unwrap().is_root());
        assert!(VPath::resolve_clamped("/a/../..").unwrap().is_root());
        assert_eq!(
            VPath::resolve_clamped("/../a/./b/..").unwrap().as_str(),
            "a"
        );
        assert!(VPath::resolve_clamped("a\0b").is_err());
    }

    #[test]
    fn starts_with_respects_component_boundaries() {
        let ab = VPath::resolve("a/b").unwrap();
        assert!(ab.starts_with(&VPath::resolve("a").unwrap()));
        assert!(
            !VPath::resolve("ab")
                .unwrap()
                .starts_with(&VPath::resolve("a").unwrap())
        );
        assert!(ab.starts_with(&VPath::root()));
        assert_eq!(ab.parent().unwrap().as_str(), "a");
        assert_eq!(ab.name(), "b");
    }
}
