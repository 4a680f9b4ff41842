//! The directory a command writes a new savepoint into (`convert`, and the rewrite commands):
//! new or empty, never in the area of a checkpoint root that garbage collection manages, and
//! left as it was found when the command fails.

use std::io;
use std::sync::Arc;

use crate::cli::location::Location;
use crate::cli::{CliError, CliResult};
use crate::model::error::Error;
use crate::model::format::layout::{
    CHECKPOINT_DIR_PREFIX, COORDINATOR_DIR, SHARED_DIR, parse_checkpoint_dir,
};
use crate::storage::CheckpointStorage;

/// A new savepoint's directory, opened for writing.
pub struct NewSavepointDir {
    location: Location,
    /// The storage rooted at the directory.
    pub storage: Arc<dyn CheckpointStorage>,
    /// Whether the directory existed before (local directories only).
    existed: bool,
}

impl NewSavepointDir {
    /// Opens `target` for a new savepoint written by `command`; `source_root` is the
    /// directory the source's files are relative to (a checkpoint root or a savepoint).
    ///
    /// # Errors
    /// [`CliError::Failed`] if `target` holds anything or lies in the `chk-*`/`shared` area of
    /// `source_root`; storage errors.
    pub fn open(target: &Location, source_root: &Location, command: &str) -> CliResult<Self> {
        if in_managed_area(source_root, target) || in_some_roots_managed_area(target) {
            return Err(CliError::Failed(format!(
                "{} lies in the chk-*/shared area of the checkpoint root, where garbage \
                 collection would delete the savepoint: choose another directory",
                target.display()
            )));
        }
        let not_empty = || {
            CliError::Failed(format!(
                "{} is not empty: {command} writes a new savepoint into an empty or new directory",
                target.display()
            ))
        };
        let existed = match target {
            Location::Dir(dir) => match std::fs::read_dir(dir) {
                Ok(mut entries) => {
                    if entries.next().is_some() {
                        return Err(not_empty());
                    }
                    true
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => {
                    return Err(Error::Io {
                        path: dir.to_owned(),
                        source: e,
                    }
                    .into());
                }
            },
            Location::Url(_) => true,
        };
        let storage = target.open_or_create()?;
        if !storage.list(None)?.is_empty() {
            return Err(not_empty());
        }
        Ok(Self {
            location: target.clone(),
            storage,
            existed,
        })
    }

    /// Removes whatever the failed command wrote, and the directory if it created it.
    pub fn discard(self) {
        if let Ok(objects) = self.storage.list(None) {
            for o in objects {
                let _ = self.storage.delete(&o.path);
            }
        }
        if let (false, Some(dir)) = (self.existed, self.location.local()) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Whether `target` lies below a `chk-<id>` or `shared` directory of what looks like a
/// checkpoint root (for a URL: below a `chk-<id>` or `shared` segment), whatever root the
/// source came from: garbage collection there would delete the savepoint.
fn in_some_roots_managed_area(target: &Location) -> bool {
    let managed = |name: &str| name == SHARED_DIR || parse_checkpoint_dir(name).is_some();
    match target {
        Location::Dir(dir) => {
            let Ok(dir) = std::path::absolute(dir) else {
                return false;
            };
            dir.ancestors().any(|a| {
                let (Some(name), Some(parent)) =
                    (a.file_name().and_then(|n| n.to_str()), a.parent())
                else {
                    return false;
                };
                managed(name) && looks_like_root(parent)
            })
        }
        Location::Url(url) => url
            .split('/')
            .skip(3) // scheme, empty, bucket
            .any(managed),
    }
}

/// Whether a local directory has a checkpoint root's marks: a coordinator directory or a
/// checkpoint directory.
fn looks_like_root(dir: &std::path::Path) -> bool {
    dir.join(COORDINATOR_DIR).is_dir()
        || std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| parse_checkpoint_dir(n).is_some())
            })
        })
}

/// Whether `target` lies in an area of `root` that garbage collection manages (a `chk-*`
/// directory or `shared/`), where a savepoint would be deleted.
fn in_managed_area(root: &Location, target: &Location) -> bool {
    let top = match (root, target) {
        (Location::Dir(root), Location::Dir(target)) => {
            let (Ok(root), Ok(target)) = (std::path::absolute(root), std::path::absolute(target))
            else {
                return false;
            };
            target
                .strip_prefix(&root)
                .ok()
                .and_then(|rest| rest.components().next())
                .and_then(|c| c.as_os_str().to_str())
                .map(str::to_owned)
        }
        (Location::Url(root), Location::Url(target)) => target
            .strip_prefix(root.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|rest| rest.split('/').next())
            .map(str::to_owned),
        _ => None,
    };
    top.is_some_and(|top| top == SHARED_DIR || top.starts_with(CHECKPOINT_DIR_PREFIX))
}
