//! `statectl gc ROOT`: deletes the files of a checkpoint root that no retained checkpoint
//! references.
//!
//! The real run opens a [`CheckpointCoordinator`], which drops the checkpoints beyond the newest
//! `retained` and collects orphans when it opens; what it deleted is the difference of the
//! root's listings before and after. The dry run computes the same set read-only: the files
//! under `chk-*` and `shared/` that neither the newest `retained` readable checkpoints
//! reference nor belong to an unreadable checkpoint's directory (which is left for an operator
//! to inspect).
//!
//! Never run it on the root of a running job: the job's coordinator may have a checkpoint in
//! flight whose files are not referenced yet.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::checkpoint::layout::{
    CHECKPOINT_DIR_PREFIX, SHARED_DIR, checkpoint_dir_name, metadata_path, parse_checkpoint_dir,
};
use crate::checkpoint::{CheckpointCoordinator, SnapshotKind, SnapshotMetadata};
use crate::cli::snapshot::require_dir;
use crate::cli::{CliResult, human_bytes, plural};
use crate::error::{Error, Result};
use crate::storage::{CheckpointStorage, LocalDirStorage, ObjectMeta, StoragePath};

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

/// A checkpoint whose `_metadata` cannot be read: left in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnreadableCheckpoint {
    /// The id of its directory.
    pub id: u64,
    /// Why it cannot be read.
    pub error: String,
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
    /// Checkpoints left in place because their `_metadata` is unreadable.
    pub unreadable_checkpoints: Vec<UnreadableCheckpoint>,
    /// The deleted (or deletable) files.
    pub deleted: Vec<GcFile>,
    /// Number of deleted files.
    pub files: usize,
    /// Their total size.
    pub bytes: u64,
}

struct Plan {
    objects: Vec<ObjectMeta>,
    completed: BTreeMap<u64, SnapshotMetadata>,
    unreadable: Vec<UnreadableCheckpoint>,
    kept: Vec<u64>,
    dropped: Vec<u64>,
    deletable: Vec<ObjectMeta>,
}

/// The coordinator's view of the root, computed read-only.
fn plan(storage: &LocalDirStorage, retained: usize) -> Result<Plan> {
    let objects = storage.list(None)?;
    let ids: BTreeSet<u64> = objects
        .iter()
        .filter_map(|o| o.path.components().next().and_then(parse_checkpoint_dir))
        .collect();
    let mut completed = BTreeMap::new();
    let mut unreadable = Vec::new();
    for id in ids {
        let path = metadata_path(id)?;
        if !storage.exists(&path)? {
            continue;
        }
        let name = storage.local_path(&path).display().to_string();
        match storage
            .get(&path)
            .and_then(|bytes| SnapshotMetadata::decode(&bytes, &name))
        {
            Ok(meta) if meta.kind == SnapshotKind::Checkpoint && meta.id == id => {
                completed.insert(id, meta);
            }
            Ok(meta) => unreadable.push(UnreadableCheckpoint {
                id,
                error: format!("{name} describes {} {}", meta.kind, meta.id),
            }),
            Err(e) => unreadable.push(UnreadableCheckpoint {
                id,
                error: e.to_string(),
            }),
        }
    }
    let split = completed.len().saturating_sub(retained);
    let dropped: Vec<u64> = completed.keys().take(split).copied().collect();
    let kept: Vec<u64> = completed.keys().skip(split).copied().collect();
    let mut referenced: HashSet<StoragePath> = HashSet::new();
    for id in &kept {
        referenced.insert(metadata_path(*id)?);
        referenced.extend(completed[id].files().map(|f| f.path.clone()));
    }
    let unreadable_dirs: HashSet<String> = unreadable
        .iter()
        .map(|u| checkpoint_dir_name(u.id))
        .collect();
    let deletable = objects
        .iter()
        .filter(|o| {
            let top = o.path.components().next().unwrap_or_default();
            let managed = top == SHARED_DIR || top.starts_with(CHECKPOINT_DIR_PREFIX);
            managed && !unreadable_dirs.contains(top) && !referenced.contains(&o.path)
        })
        .cloned()
        .collect();
    Ok(Plan {
        objects,
        completed,
        unreadable,
        kept,
        dropped,
        deletable,
    })
}

/// Collects the garbage of the checkpoint root `root` (or, dry run, reports it).
///
/// # Errors
/// [`Error::Io`] if `root` is not a readable directory; [`Error::Incompatible`] if
/// `retained` is 0; storage errors.
pub fn gc(root: &Path, options: GcOptions) -> CliResult<GcReport> {
    require_dir(root)?;
    if options.retained == 0 {
        return Err(Error::Incompatible {
            reason: "at least one completed checkpoint must be retained".into(),
        }
        .into());
    }
    let storage = LocalDirStorage::new(root)?;
    let plan = plan(&storage, options.retained)?;
    let (deleted, kept, dropped, unreadable) = if options.dry_run {
        (plan.deletable, plan.kept, plan.dropped, plan.unreadable)
    } else {
        let coordinator = CheckpointCoordinator::open(Arc::new(storage.clone()), options.retained)?;
        let after: HashSet<StoragePath> = storage.list(None)?.into_iter().map(|o| o.path).collect();
        let deleted = plan
            .objects
            .into_iter()
            .filter(|o| !after.contains(&o.path))
            .collect();
        let kept: Vec<u64> = coordinator.completed().map(|m| m.id).collect();
        let dropped = plan
            .completed
            .keys()
            .filter(|id| !kept.contains(id))
            .copied()
            .collect();
        let unreadable = coordinator
            .unreadable()
            .iter()
            .map(|u| UnreadableCheckpoint {
                id: u.id,
                error: u.error.to_string(),
            })
            .collect();
        (deleted, kept, dropped, unreadable)
    };
    let deleted: Vec<GcFile> = deleted
        .into_iter()
        .map(|o| GcFile {
            path: o.path.to_string(),
            size: o.size,
        })
        .collect();
    Ok(GcReport {
        root: root.display().to_string(),
        dry_run: options.dry_run,
        retained: options.retained,
        retained_checkpoints: kept,
        dropped_checkpoints: dropped,
        unreadable_checkpoints: unreadable,
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
        for u in &self.unreadable_checkpoints {
            writeln!(
                out,
                "left in place: checkpoint {} is unreadable: {}",
                u.id, u.error
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
