//! `statectl convert CHECKPOINT --to SAVEPOINT_DIR`: offline conversion of a checkpoint into a
//! savepoint with [`convert_checkpoint`].

use std::io::{self, Write};

use serde::Serialize;

use crate::cli::progress::count_bar;
use crate::cli::snapshot::{Location, load};
use crate::cli::{CliError, CliResult, human_bytes, plural};
use crate::model::error::Error;
use crate::model::format::layout::CHECKPOINT_DIR_PREFIX;
use crate::runtime::checkpoint::SnapshotKind;
use crate::runtime::savepoint::convert_checkpoint;

/// What `convert` wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConvertReport {
    /// The converted checkpoint's id.
    pub checkpoint_id: u64,
    /// The checkpoint directory.
    pub checkpoint: String,
    /// The new savepoint directory.
    pub savepoint: String,
    /// Backend instances converted.
    pub instances: usize,
    /// Files of the savepoint (`_metadata` not included).
    pub files: usize,
    /// Their total size.
    pub total_bytes: u64,
}

/// Converts the checkpoint in `checkpoint` (a `chk-*` directory, whose parent is the
/// checkpoint root) into a new savepoint in `target`, which must not exist or be empty. On
/// failure the files written so far are removed again.
///
/// # Errors
/// [`CliError::Failed`] if `checkpoint` is a savepoint, or `target` is not empty or lies in
/// the `chk-*`/`shared` area of the checkpoint root; the
/// library's restore and write errors (e.g. [`Error::Incompatible`] for a RocksDB checkpoint
/// in a build without the `rocksdb` feature).
pub fn convert(checkpoint: &Location, target: &Location) -> CliResult<ConvertReport> {
    let snapshot = load(checkpoint)?;
    if snapshot.meta.kind != SnapshotKind::Checkpoint {
        return Err(CliError::Failed(format!(
            "{} is already a savepoint",
            checkpoint.display()
        )));
    }
    if in_managed_area(&snapshot.base, target) {
        return Err(CliError::Failed(format!(
            "{} lies in the chk-*/shared area of the checkpoint root, where garbage collection \
             would delete the savepoint: choose another directory",
            target.display()
        )));
    }
    let not_empty = || {
        CliError::Failed(format!(
            "{} is not empty: convert writes a new savepoint into an empty or new directory",
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
    let bar = count_bar(snapshot.meta.instances.len() as u64, "instances");
    bar.set_message("converting");
    let result = convert_checkpoint(
        snapshot.storage.as_ref(),
        &snapshot.meta,
        storage.as_ref(),
        |done, _| {
            bar.set_position(done as u64);
        },
    );
    bar.finish_and_clear();
    let meta = match result {
        Ok(meta) => meta,
        Err(e) => {
            // Nothing but this conversion wrote into the directory: leave it as it was.
            if let Ok(objects) = storage.list(None) {
                for o in objects {
                    let _ = storage.delete(&o.path);
                }
            }
            if let (false, Some(dir)) = (existed, target.local()) {
                let _ = std::fs::remove_dir(dir);
            }
            return Err(e.into());
        }
    };
    Ok(ConvertReport {
        checkpoint_id: snapshot.meta.id,
        checkpoint: checkpoint.display(),
        savepoint: target.display(),
        instances: meta.instances.len(),
        files: meta.files().count(),
        total_bytes: meta.total_bytes(),
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
    top.is_some_and(|top| {
        top == crate::model::format::layout::SHARED_DIR || top.starts_with(CHECKPOINT_DIR_PREFIX)
    })
}

impl ConvertReport {
    /// Writes the report for people.
    ///
    /// # Errors
    /// Write errors.
    pub fn write_human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "converted checkpoint {} ({}) into savepoint {}: {} instance{}, {} file{}, {}",
            self.checkpoint_id,
            self.checkpoint,
            self.savepoint,
            self.instances,
            plural(self.instances as u64),
            self.files,
            plural(self.files as u64),
            human_bytes(self.total_bytes)
        )
    }
}
