//! `statectl gc ROOT`: deletes the files of a checkpoint root that no retained checkpoint
//! references.
//!
//! Both runs compute the coordinator's plan ([`confirmed_plan`]: `plan_collection`, the one
//! function that decides what a checkpoint root may lose, confirmed by reads so that a listing
//! that omits a `_metadata` deletes nothing of its checkpoint): the dry run reports it, the
//! real run executes it. Before
//! planning, gc makes sure it cannot destroy state by an operator's mistake:
//!
//! - `ROOT` must be a checkpoint root by its layout ([`require_root`]): a savepoint, a
//!   checkpoint directory, the parent of a root or any other directory is refused;
//! - no live coordinator may hold it ([`require_no_live_lease`]; `--ignore-lease` for a dead
//!   job): a running job has checkpoints in flight whose files nothing lists yet;
//! - every checkpoint's `_metadata` must be understood: which shared files an unreadable one
//!   needs is unknown (`statectl discard` sets it aside);
//! - the retention never drops the newest checkpoint that verifies (every file present with
//!   its recorded size and crc32): when the plan would drop checkpoints, the completed ones
//!   are verified newest first until one verifies, and that one is kept
//!   ([`RootState::protected`]). If none verifies, nothing is dropped and gc fails.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Write};

use serde::Serialize;

use crate::cli::root::{
    Candidate, LeaseInfo, PassedOver, require_no_live_lease, require_root, restore_choice,
};
use crate::cli::snapshot::Location;
use crate::cli::{CliError, CliResult, human_bytes, plural};
use crate::model::error::Error;
use crate::runtime::checkpoint::coordinator::{
    RootState, confirmed_plan, execute_plan, plan_with_confirmed_markers,
};
use crate::storage::{ObjectMeta, StoragePath};

/// How to collect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOptions {
    /// Only report what would be deleted.
    pub dry_run: bool,
    /// How many completed checkpoints to keep (at least 1).
    pub retained: usize,
    /// Collect even though a coordinator's lease on the root has not expired (the operator
    /// knows the job is dead).
    pub ignore_lease: bool,
}

/// A deleted (or, dry run, deletable) file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GcFile {
    /// Storage path, relative to the root.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// A checkpoint kept beyond the retention, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptBeyondRetention {
    /// The checkpoint id.
    pub id: u64,
    /// Why it is kept.
    pub reason: String,
    /// The newer checkpoints that do not verify, with their first bad file.
    pub damaged: Vec<PassedOver>,
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
    /// The checkpoint kept beyond the newest `retained` because it is the newest that
    /// verifies, if the retention would have dropped it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_beyond_retention: Option<KeptBeyondRetention>,
    /// A coordinator's lease found on the root and ignored (`--ignore-lease`), or expired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseInfo>,
    /// The deleted (or deletable) files.
    pub deleted: Vec<GcFile>,
    /// Number of deleted files.
    pub files: usize,
    /// Their total size.
    pub bytes: u64,
}

/// Collects the garbage of the checkpoint root `root` (or, dry run, reports it), with the
/// coordinator's own rules ([`confirmed_plan`]): the same plan, read-only or executed, after
/// the checks of the module docs.
///
/// # Errors
/// [`Error::Io`] if `root` is not a readable directory; [`Error::Incompatible`] if
/// `retained` is 0; [`CliError::Failed`] if `root` is not a checkpoint root, if a live
/// coordinator holds it, if a checkpoint's `_metadata` cannot be understood (nothing is
/// deleted until an operator repairs or discards it), or if the retention would drop
/// checkpoints and none verifies; storage errors.
pub fn gc(root: &Location, options: GcOptions) -> CliResult<GcReport> {
    let storage = root.open()?;
    if options.retained == 0 {
        return Err(Error::Incompatible {
            reason: "at least one completed checkpoint must be retained".into(),
        }
        .into());
    }
    require_root(root, storage.as_ref(), "gc")?;
    let lease = require_no_live_lease(storage.as_ref(), root, options.ignore_lease)?;
    let mut state = RootState::read(storage.as_ref())?;
    let listing = storage.list(None)?;
    let no_flight = BTreeSet::new();
    // Confirmed by reads: a checkpoint a listing omitted is found before anything is planned.
    let first = confirmed_plan(
        &mut state,
        storage.as_ref(),
        options.retained,
        &no_flight,
        Some(&listing),
    )?;
    if let Some(u) = state.unreadable.first() {
        let ids: Vec<String> = state.unreadable.iter().map(|u| u.id.to_string()).collect();
        return Err(CliError::Failed(format!(
            "{}; gc deletes nothing while the root holds a checkpoint whose {} cannot be read \
             (which shared files it needs is unknown). Repair it, or discard it: `statectl \
             discard {} {}` moves its _metadata aside to _metadata.discarded (it is then no \
             longer restorable), and the next gc deletes its directory and the shared files no \
             other checkpoint lists (unreadable: {})",
            Error::UnreadableCheckpoint {
                id: u.id,
                reason: u.error.to_string(),
            },
            crate::model::format::metadata::METADATA_FILE,
            root.display(),
            u.id,
            ids.join(", ")
        )));
    }
    let mut kept_beyond_retention = None;
    if !first.dropped.is_empty() {
        let candidates: Vec<(u64, Candidate<'_>)> = state
            .completed
            .iter()
            .map(|(id, meta)| (*id, Candidate::Readable(meta)))
            .collect();
        let choice = restore_choice(storage.as_ref(), &candidates);
        match choice.checkpoint {
            Some(id) => {
                if first.dropped.contains(&id) {
                    kept_beyond_retention = Some(KeptBeyondRetention {
                        id,
                        reason: "the newest checkpoint that verifies".into(),
                        damaged: choice.passed_over.clone(),
                    });
                }
                state.protected.insert(id);
            }
            None if choice.only_damage => {
                let damaged: Vec<String> = choice
                    .passed_over
                    .iter()
                    .map(|p| format!("{} ({})", p.id, p.reason))
                    .collect();
                return Err(CliError::Failed(format!(
                    "no checkpoint of {} verifies, so gc drops none: damaged {}. Restore from \
                     a savepoint, or repair the files; `statectl discard {} ID` sets a \
                     damaged checkpoint aside for the next gc",
                    root.display(),
                    damaged.join(", "),
                    root.display()
                )));
            }
            None => {
                return Err(CliError::Failed(format!(
                    "gc drops no checkpoint of {} without knowing which one a restore would \
                     use: {}",
                    root.display(),
                    choice.problem.unwrap_or_default()
                )));
            }
        }
    }
    // What the listing hid was read above; only the markers of what is dropped now are new.
    let plan = plan_with_confirmed_markers(
        &mut state,
        storage.as_ref(),
        options.retained,
        &no_flight,
        Some(&listing),
    )?;
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
        kept_beyond_retention,
        lease,
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
        if let Some(lease) = &self.lease {
            writeln!(
                out,
                "{} lease of coordinator epoch {} (until {})",
                if lease.live {
                    "ignored the live"
                } else {
                    "found an expired"
                },
                lease.epoch,
                crate::cli::format_time_ms(lease.expires_ms)
            )?;
        }
        if let Some(kept) = &self.kept_beyond_retention {
            let damaged: Vec<String> = kept
                .damaged
                .iter()
                .map(|d| format!("{} is damaged: {}", d.id, d.reason))
                .collect();
            writeln!(
                out,
                "kept checkpoint {} beyond the newest {}: {}{}",
                kept.id,
                self.retained,
                kept.reason,
                if damaged.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", damaged.join("; "))
                }
            )?;
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
