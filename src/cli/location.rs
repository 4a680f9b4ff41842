//! Where a command looks: a local directory, or a directory of an object store given as a URL
//! (`s3://bucket/prefix`, `gs://…`, `az://…`; needs the library's `aws`, `gcp` or `azure`
//! feature, and reads credentials and endpoint from the clouds' environment variables).
//!
//! On an object store a "directory" is a prefix: its storage is an
//! `storage::ObjectStorage` under that prefix.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::model::error::{Error, Result};
use crate::storage::{CheckpointStorage, LocalDirStorage};

/// A directory holding a checkpoint root, a checkpoint or a savepoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local directory.
    Dir(PathBuf),
    /// A prefix of an object store, as a URL without a trailing slash.
    Url(String),
}

impl Location {
    /// `s3://…`, `gs://…`, `az://…` (any `scheme://` other than `file://`) is a URL; `file://`
    /// and anything else is a local path.
    pub fn parse(text: &str) -> Self {
        if let Some(path) = text.strip_prefix("file://") {
            return Location::Dir(PathBuf::from(path));
        }
        match text.split_once("://") {
            Some((scheme, _))
                if !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                Location::Url(text.trim_end_matches('/').to_owned())
            }
            _ => Location::Dir(PathBuf::from(text)),
        }
    }

    /// The location as people write it.
    pub fn display(&self) -> String {
        match self {
            Location::Dir(path) => path.display().to_string(),
            Location::Url(url) => url.clone(),
        }
    }

    /// The last component of the location (`chk-0000000007`), if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            Location::Dir(path) => path.file_name().and_then(|n| n.to_str()),
            Location::Url(url) => url
                .split_once("://")
                .and_then(|(_, rest)| rest.split_once('/'))
                .and_then(|(_, path)| path.rsplit('/').next())
                .filter(|n| !n.is_empty()),
        }
    }

    /// The enclosing directory (for a URL: one path segment up, never above the bucket).
    pub fn parent(&self) -> Option<Location> {
        match self {
            Location::Dir(path) => {
                let absolute = std::path::absolute(path).ok()?;
                absolute.parent().map(|p| Location::Dir(p.to_owned()))
            }
            Location::Url(url) => {
                let (scheme, rest) = url.split_once("://")?;
                let (bucket, path) = rest.split_once('/')?;
                let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
                Some(Location::Url(if parent.is_empty() {
                    format!("{scheme}://{bucket}")
                } else {
                    format!("{scheme}://{bucket}/{parent}")
                }))
            }
        }
    }

    /// The location of `relative` (a `/`-separated storage path) inside this one.
    pub fn join(&self, relative: &str) -> Location {
        match self {
            Location::Dir(path) => Location::Dir(path.join(relative)),
            Location::Url(url) => Location::Url(format!("{url}/{relative}")),
        }
    }

    /// How messages name the file at `relative` inside this location.
    pub fn file_name(&self, relative: &str) -> String {
        self.join(relative).display()
    }

    /// The local directory, if this is one.
    pub fn local(&self) -> Option<&Path> {
        match self {
            Location::Dir(path) => Some(path),
            Location::Url(_) => None,
        }
    }

    /// The storage rooted here, for reading: a local directory must exist (the storage would
    /// create a missing one; a read-only tool must not).
    ///
    /// # Errors
    /// [`Error::Io`] for a local path that is not a readable directory;
    /// [`Error::InvalidOptions`] for a URL this build cannot open (see the module docs).
    pub fn open(&self) -> Result<Arc<dyn CheckpointStorage>> {
        if let Location::Dir(path) = self {
            require_dir(path)?;
        }
        self.open_or_create()
    }

    /// The storage rooted here, creating a missing local directory (for writing).
    ///
    /// # Errors
    /// As [`Location::open`], without the existence check.
    pub fn open_or_create(&self) -> Result<Arc<dyn CheckpointStorage>> {
        match self {
            Location::Dir(path) => Ok(Arc::new(LocalDirStorage::new(path)?)),
            #[cfg(feature = "object-store")]
            Location::Url(url) => Ok(Arc::new(crate::storage::ObjectStorage::from_url(url)?)),
            #[cfg(not(feature = "object-store"))]
            Location::Url(url) => Err(Error::InvalidOptions {
                reason: format!(
                    "{url}: this build reads local directories only (build statectl with \
                     --features aws, gcp or azure for object stores)"
                ),
            }),
        }
    }
}

impl std::str::FromStr for Location {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        Ok(Location::parse(text))
    }
}

/// Fails with an [`Error::Io`] unless `dir` is an existing directory.
///
/// # Errors
/// [`Error::Io`] naming `dir`.
pub fn require_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::Io {
            path: dir.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        }),
        Err(e) => Err(Error::Io {
            path: dir.to_owned(),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths_are_told_apart_and_walked() {
        let url = Location::parse("s3://bucket/jobs/clicks/chk-0000000007/");
        assert_eq!(
            url,
            Location::Url("s3://bucket/jobs/clicks/chk-0000000007".into())
        );
        assert_eq!(url.name(), Some("chk-0000000007"));
        assert_eq!(
            url.parent(),
            Some(Location::Url("s3://bucket/jobs/clicks".into()))
        );
        assert_eq!(
            Location::parse("s3://bucket/top").parent(),
            Some(Location::Url("s3://bucket".into()))
        );
        assert_eq!(Location::parse("s3://bucket").name(), None);
        assert_eq!(
            url.file_name("x/_metadata"),
            "s3://bucket/jobs/clicks/chk-0000000007/x/_metadata"
        );
        assert_eq!(
            Location::parse("file:///tmp/root"),
            Location::Dir("/tmp/root".into())
        );
        assert_eq!(
            Location::parse("relative/dir"),
            Location::Dir("relative/dir".into())
        );
        assert_eq!(
            Location::parse("odd name://x"),
            Location::Dir("odd name://x".into())
        );
    }
}
