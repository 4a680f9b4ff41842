//! `statectl discard ROOT ID` (or `statectl discard ROOT/chk-<id>`): sets a checkpoint aside,
//! the way out of a checkpoint that can no longer be used.
//!
//! Its `_metadata` is moved to `chk-<id>/_metadata.discarded`
//! ([`DISCARDED_METADATA_FILE`]): written whole first, then the `_metadata` deleted, through
//! the root's storage (on an object store: a GET, a PUT and a DELETE). From then on the
//! checkpoint does not exist for restores, retention or garbage collection: the next `gc` (or
//! the job's coordinator) deletes its directory and every shared file no other checkpoint
//! lists, and keeps every file a kept checkpoint lists. A crash between the two steps leaves
//! both files: the checkpoint still exists, and discarding it again finishes the move.
//!
//! Refused (nothing changes): on a directory that is not a checkpoint root, while a live
//! coordinator holds the root (unless `--ignore-lease`), and for a checkpoint whose files all
//! verify (unless `--force`: a restore could still use it).

use std::io::{self, Write};

use serde::Serialize;

use crate::cli::root::{LeaseInfo, require_no_live_lease, require_root};
use crate::cli::snapshot::Location;
use crate::cli::{CliError, CliResult};
use crate::model::error::Error;
use crate::model::format::layout::{
    DISCARDED_METADATA_FILE, checkpoint_dir_name, metadata_path, parse_checkpoint_dir,
};
use crate::model::format::metadata::METADATA_FILE;
use crate::model::format::path::StoragePath;
use crate::runtime::checkpoint::coordinator::verify_files_stable;
use crate::runtime::checkpoint::{SnapshotKind, SnapshotMetadata};

/// How to discard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiscardOptions {
    /// Discard even a checkpoint whose files all verify.
    pub force: bool,
    /// Discard even though a coordinator's lease on the root has not expired (the operator
    /// knows the job is dead).
    pub ignore_lease: bool,
}

/// What `discard` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiscardReport {
    /// The checkpoint root.
    pub root: String,
    /// The discarded checkpoint.
    pub id: u64,
    /// How the checkpoint stood: `unreadable` (its `_metadata` cannot be used), `damaged` (a
    /// file it lists is missing or bad) or `verified` (discarded with `--force`).
    pub was: &'static str,
    /// Why it could not be used (the first problem found), if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Where its `_metadata` went, relative to the root.
    pub moved_to: String,
    /// A coordinator's lease found on the root and ignored (`--ignore-lease`), or expired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseInfo>,
}

/// Where a `discard` argument points: the root and the checkpoint id.
///
/// `target` is the root when `id` is given; otherwise it must be a checkpoint directory
/// (`<root>/chk-<id>`), whose parent is the root.
///
/// # Errors
/// [`CliError::Failed`] when no id is given and `target` is not a `chk-<id>` directory.
pub fn resolve(target: &Location, id: Option<u64>) -> CliResult<(Location, u64)> {
    if let Some(id) = id {
        return Ok((target.clone(), id));
    }
    let Some(id) = target.name().and_then(parse_checkpoint_dir) else {
        return Err(CliError::Failed(format!(
            "{} is not a checkpoint directory (chk-<id>): give the root and the checkpoint id, \
             `statectl discard ROOT ID`",
            target.display()
        )));
    };
    let root = target
        .parent()
        .ok_or_else(|| CliError::Failed(format!("{} has no parent directory", target.display())))?;
    Ok((root, id))
}

/// Discards checkpoint `id` of the checkpoint root `root` (module docs).
///
/// # Errors
/// [`CliError::Failed`] if `root` is not a checkpoint root, a live coordinator holds it, it
/// has no checkpoint `id` (or it is discarded already), or the checkpoint verifies and
/// `force` is not set; storage errors (a `_metadata` that cannot be read for another reason
/// than damage is an error, not a reason to discard).
pub fn discard(root: &Location, id: u64, options: DiscardOptions) -> CliResult<DiscardReport> {
    let storage = root.open()?;
    require_root(root, storage.as_ref(), "discard")?;
    let lease = require_no_live_lease(storage.as_ref(), root, options.ignore_lease)?;
    let dir = checkpoint_dir_name(id);
    let metadata = metadata_path(id)?;
    let discarded = StoragePath::parse(&format!("{dir}/{DISCARDED_METADATA_FILE}"))?;
    let bytes = match storage.get(&metadata) {
        Ok(bytes) => bytes,
        Err(Error::MissingFile { .. }) => {
            let already = storage.exists(&discarded)?;
            return Err(CliError::Failed(if already {
                format!(
                    "checkpoint {id} of {} is discarded already ({dir}/{DISCARDED_METADATA_FILE}); \
                     `statectl gc {}` deletes its files",
                    root.display(),
                    root.display()
                )
            } else {
                format!(
                    "{} has no checkpoint {id} (no {dir}/{METADATA_FILE}); `statectl list {}` \
                     shows its checkpoints",
                    root.display(),
                    root.display()
                )
            }));
        }
        Err(e) => return Err(e.into()),
    };
    let name = root.file_name(metadata.as_str());
    let (was, problem) = match SnapshotMetadata::decode(&bytes, &name) {
        Ok(meta) if meta.kind == SnapshotKind::Checkpoint && meta.id == id => {
            match verify_files_stable(storage.as_ref(), &meta) {
                Ok(()) if options.force => ("verified", None),
                Ok(()) => {
                    return Err(CliError::Failed(format!(
                        "checkpoint {id} of {} verifies (every file present with its recorded \
                         size and crc32): a restore can use it, so it is not discarded; pass \
                         --force to discard it anyway",
                        root.display()
                    )));
                }
                Err(e) if e.is_damage() => ("damaged", Some(e.to_string())),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(meta) => (
            "unreadable",
            Some(format!(
                "{name} describes {} {}, not checkpoint {id}",
                meta.kind, meta.id
            )),
        ),
        Err(e) => ("unreadable", Some(e.to_string())),
    };
    // The copy first, whole: a crash in between leaves the checkpoint as it was.
    storage.put(&discarded, &bytes)?;
    storage.delete(&metadata)?;
    Ok(DiscardReport {
        root: root.display(),
        id,
        was,
        problem,
        moved_to: discarded.to_string(),
        lease,
    })
}

impl DiscardReport {
    /// Writes the report for people.
    ///
    /// # Errors
    /// Write errors.
    pub fn write_human(&self, out: &mut dyn Write) -> io::Result<()> {
        if let Some(lease) = &self.lease {
            writeln!(
                out,
                "{} lease of coordinator epoch {}",
                if lease.live {
                    "ignored the live"
                } else {
                    "found an expired"
                },
                lease.epoch
            )?;
        }
        match &self.problem {
            Some(problem) => writeln!(out, "checkpoint {} was {}: {problem}", self.id, self.was)?,
            None => writeln!(
                out,
                "checkpoint {} verified; discarded as asked (--force)",
                self.id
            )?,
        }
        writeln!(
            out,
            "discarded checkpoint {} of {}: its {METADATA_FILE} is now {}; it is no longer \
             restorable, and the next `statectl gc {}` deletes its directory and the shared \
             files no other checkpoint lists",
            self.id, self.root, self.moved_to, self.root
        )
    }
}
