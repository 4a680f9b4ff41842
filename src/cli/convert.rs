//! `statectl convert CHECKPOINT --to SAVEPOINT_DIR`: offline conversion of a checkpoint into a
//! savepoint with [`convert_checkpoint`].

use std::io::{self, Write};

use serde::Serialize;

use crate::cli::new_savepoint::NewSavepointDir;
use crate::cli::progress::count_bar;
use crate::cli::snapshot::{Location, load};
use crate::cli::{CliError, CliResult, human_bytes, plural};
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
/// library's restore and write errors (e.g. [`crate::Error::Incompatible`] for a RocksDB checkpoint
/// in a build without the `rocksdb` feature).
pub fn convert(checkpoint: &Location, target: &Location) -> CliResult<ConvertReport> {
    let snapshot = load(checkpoint)?;
    if snapshot.meta.kind != SnapshotKind::Checkpoint {
        return Err(CliError::Failed(format!(
            "{} is already a savepoint",
            checkpoint.display()
        )));
    }
    let target_dir = NewSavepointDir::open(target, &snapshot.base, "convert")?;
    let storage = std::sync::Arc::clone(&target_dir.storage);
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
            target_dir.discard();
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
