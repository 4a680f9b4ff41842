//! `statectl gc ROOT`: deletes the files of a checkpoint root that no retained checkpoint
//! references.
//!
//! Both runs compute the coordinator's plan ([`plan_collection`], the one function that decides
//! what a checkpoint root may lose): the dry run reports it, the real run executes it. A root
//! holding a checkpoint whose `_metadata` cannot be understood is refused: which shared files
//! it needs is unknown, so an operator repairs it or removes its directory first.
//!
//! Never run it on the root of a running job: the job's coordinator may have a checkpoint in
//! flight whose files are not referenced yet.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Write};

use serde::Serialize;

use crate::cli::snapshot::Location;
use crate::cli::{CliResult, human_bytes, plural};
use crate::model::error::Error;
use crate::runtime::checkpoint::coordinator::{RootState, execute_plan, plan_collection};
use crate::storage::{ObjectMeta, StoragePath};

/// How to collect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOptions {
    /// Only report what would be deleted.
    pub dry_run: bool,
    /// How many completed checkpoints to keep (at least 1).
    pub retained: usize,
}

/// A deleted (or, dry run, deletable) file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GcFile {
    /// Storage path, relative to the root.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// What `gc` deleted (or would delete).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// The checkpoint root.
    pub root: String,
    /// Whether nothing was deleted (dry run).
    pub dry_run: bool,
    /// How many completed checkpoints are kept.
    pub retained: usize,
    /// The ids of the kept checkpoints.
    pub retained_checkpoints: Vec<u64>,
    /// Completed checkpoints dropped (or to drop) because of the retention.
    pub dropped_checkpoints: Vec<u64>,
    /// The deleted (or deletable) files.
    pub deleted: Vec<GcFile>,
    /// Number of deleted files.
    pub files: usize,
    /// Their total size.
    pub bytes: u64,
}

/// Collects the garbage of the checkpoint root `root` (or, dry run, reports it), with the
/// coordinator's own rules ([`plan_collection`]): the same plan, read-only or executed.
///
/// # Errors
/// [`Error::Io`] if `root` is not a readable directory; [`Error::Incompatible`] if
/// `retained` is 0; [`Error::UnreadableCheckpoint`] if a checkpoint's `_metadata` cannot be
/// understood (which shared files it needs is unknown: nothing is deleted until an operator
/// repairs it or removes its directory); storage errors.
pub fn gc(root: &Location, options: GcOptions) -> CliResult<GcReport> {
    let storage = root.open()?;
    if options.retained == 0 {
        return Err(Error::Incompatible {
            reason: "at least one completed checkpoint must be retained".into(),
        }
        .into());
    }
    let state = RootState::read(storage.as_ref())?;
    state.require_readable()?;
    let listing = storage.list(None)?;
    let plan = plan_collection(&state, options.retained, &BTreeSet::new(), Some(&listing));
    let deleted = if options.dry_run {
        plan.deletable.clone()
    } else {
        let (report, error) = execute_plan(storage.as_ref(), &plan);
        if let Some(e) = error {
            return Err(e.into());
        }
        let sizes: HashMap<&StoragePath, u64> =
            plan.deletable.iter().map(|o| (&o.path, o.size)).collect();
        report
            .deleted
            .iter()
            .map(|p| ObjectMeta {
                path: p.clone(),
                size: sizes.get(p).copied().unwrap_or(0),
            })
            .collect()
    };
    let deleted: Vec<GcFile> = deleted
        .into_iter()
        .map(|o| GcFile {
            path: o.path.to_string(),
            size: o.size,
        })
        .collect();
    Ok(GcReport {
        root: root.display(),
        dry_run: options.dry_run,
        retained: options.retained,
        retained_checkpoints: plan.kept,
        dropped_checkpoints: plan.dropped,
        files: deleted.len(),
        bytes: deleted.iter().map(|f| f.size).sum(),
        deleted,
    })
}

impl GcReport {
    /// Writes the report for people.
    ///
    /// # Errors
    /// Write errors.
    pub fn write_human(&self, out: &mut dyn Write) -> io::Result<()> {
        let verb = if self.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        for f in &self.deleted {
            writeln!(out, "{verb} {} ({} bytes)", f.path, f.size)?;
        }
        if !self.dropped_checkpoints.is_empty() {
            let ids: Vec<String> = self
                .dropped_checkpoints
                .iter()
                .map(u64::to_string)
                .collect();
            writeln!(
                out,
                "{} checkpoint{} beyond the newest {}: {}",
                if self.dry_run {
                    "would drop"
                } else {
                    "dropped"
                },
                plural(ids.len() as u64),
                self.retained,
                ids.join(", ")
            )?;
        }
        writeln!(
            out,
            "{}{verb} {} file{} ({}) in {}",
            if self.dry_run { "dry run: " } else { "" },
            self.files,
            plural(self.files as u64),
            human_bytes(self.bytes),
            self.root
        )
    }
}
