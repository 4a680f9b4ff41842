//! [`StoragePath`]: the only kind of name a [`CheckpointStorage`](crate::storage::CheckpointStorage)
//! accepts.
//!
//! Storage paths come from callers and, on restore, from metadata files that may be corrupt or
//! hostile. Validating them once, at construction, means no storage implementation has to worry
//! about `..`, absolute paths, separators of other platforms or names an object store would
//! reject: every `StoragePath` is a relative path that stays below the storage root, spelled the
//! same on every platform and in every backend.

use std::fmt;

use crate::model::error::{Error, Result};

/// A validated, relative, `/`-separated storage path such as `chk-00000001/_metadata`.
///
/// Guarantees (checked by [`StoragePath::parse`] and every other constructor):
/// - it is not empty and at most [`StoragePath::MAX_LEN`] bytes long;
/// - it does not start or end with `/` and has no empty components (`a//b`);
/// - every component is 1 to [`StoragePath::MAX_COMPONENT_LEN`] bytes of `[A-Za-z0-9._-]`
///   (so ASCII only: no backslash, NUL, spaces or other separators) and is neither `.` nor `..`.
///
/// The ordering is byte-wise on the string, which is the order
/// [`CheckpointStorage::list`](crate::storage::CheckpointStorage::list) returns.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoragePath(String);

impl StoragePath {
    /// The longest accepted path, in bytes.
    pub const MAX_LEN: usize = 1024;

    /// The longest accepted path component, in bytes (the usual file-name limit).
    pub const MAX_COMPONENT_LEN: usize = 255;

    /// Validates `path`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPath`] with the reason when `path` breaks one of the rules listed on
    /// [`StoragePath`].
    pub fn parse(path: &str) -> Result<StoragePath> {
        let invalid = |reason| Error::InvalidPath {
            path: path.to_owned(),
            reason,
        };
        if path.is_empty() {
            return Err(invalid("empty path"));
        }
        if path.len() > Self::MAX_LEN {
            return Err(invalid("longer than 1024 bytes"));
        }
        if path.starts_with('/') {
            return Err(invalid("absolute path"));
        }
        for component in path.split('/') {
            check_component(component).map_err(invalid)?;
        }
        Ok(StoragePath(path.to_owned()))
    }

    /// The path as a string, components separated by `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `self/component`.
    ///
    /// `component` must be a single component: use [`StoragePath::parse`] for a multi-component
    /// path.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPath`] (reporting the joined path) when `component` is not a valid single
    /// component or the result would exceed [`StoragePath::MAX_LEN`].
    pub fn join(&self, component: &str) -> Result<StoragePath> {
        let joined = format!("{}/{component}", self.0);
        let invalid = |reason| Error::InvalidPath {
            path: joined.clone(),
            reason,
        };
        if component.contains('/') {
            return Err(invalid("join takes a single component"));
        }
        check_component(component).map_err(invalid)?;
        if joined.len() > Self::MAX_LEN {
            return Err(invalid("longer than 1024 bytes"));
        }
        Ok(StoragePath(joined))
    }

    /// The path without its last component, or `None` for a single-component path.
    pub fn parent(&self) -> Option<StoragePath> {
        // A prefix made of whole components of a valid path is itself valid.
        self.0
            .rsplit_once('/')
            .map(|(parent, _)| StoragePath(parent.to_owned()))
    }

    /// The last component (never empty).
    pub fn file_name(&self) -> &str {
        self.0
            .rsplit_once('/')
            .map_or(self.0.as_str(), |(_, name)| name)
    }

    /// The components, first to last.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Whether `self` is `prefix` or lies below it, comparing whole components (`a/bc` does not
    /// start with `a/b`).
    pub fn starts_with(&self, prefix: &StoragePath) -> bool {
        match self.0.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

/// Checks one component against the rules on [`StoragePath`].
fn check_component(component: &str) -> std::result::Result<(), &'static str> {
    if component.is_empty() {
        return Err("empty component (leading, trailing or doubled '/')");
    }
    if component.len() > StoragePath::MAX_COMPONENT_LEN {
        return Err("component longer than 255 bytes");
    }
    if component == "." || component == ".." {
        return Err("'.' and '..' components are not allowed");
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if !component.bytes().all(allowed) {
        return Err("only ASCII letters, digits, '.', '_' and '-' are allowed in components");
    }
    Ok(())
}

impl fmt::Display for StoragePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for StoragePath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for StoragePath {
    type Error = Error;

    fn try_from(path: &str) -> Result<StoragePath> {
        StoragePath::parse(path)
    }
}

impl std::str::FromStr for StoragePath {
    type Err = Error;

    fn from_str(path: &str) -> Result<StoragePath> {
        StoragePath::parse(path)
    }
}
