//! The checkpoint coordinator: owns a checkpoint root, writes `_metadata` to complete a
//! checkpoint, keeps the last N completed ones and deletes what none of them needs.
//!
//! Reference counts are never stored: the set of files still needed is rebuilt from the
//! retained `_metadata` files (at open, and kept in memory after), so there is no second source
//! of truth to get out of sync after a crash.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use crate::checkpoint::layout::{
    CHECKPOINT_DIR_PREFIX, SHARED_DIR, checkpoint_dir_name, metadata_path, parse_checkpoint_dir,
};
use crate::checkpoint::metadata::{InstanceMetadata, SnapshotKind, SnapshotMetadata};
use crate::error::{Error, Result};
use crate::storage::{CheckpointStorage, StoragePath};

/// Default number of completed checkpoints kept.
pub const DEFAULT_RETAINED_CHECKPOINTS: usize = 3;

/// A checkpoint whose `_metadata` exists but cannot be read. Left in place (not deleted) so
/// that an operator can inspect it; never used for restore.
#[derive(Debug)]
pub struct UnreadableCheckpoint {
    /// The checkpoint id.
    pub id: u64,
    /// Why it cannot be read.
    pub error: Error,
}

/// What a garbage collection deleted (or, dry run, would delete).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// The deleted files.
    pub deleted: Vec<StoragePath>,
    /// Their total size.
    pub bytes: u64,
}

/// Owns one checkpoint root. One coordinator per root at a time (the job's).
pub struct CheckpointCoordinator {
    storage: Arc<dyn CheckpointStorage>,
    retained: usize,
    completed: BTreeMap<u64, SnapshotMetadata>,
    unreadable: Vec<UnreadableCheckpoint>,
    pending: BTreeSet<u64>,
    highest_id: u64,
}

impl CheckpointCoordinator {
    /// Opens the root: reads every completed checkpoint's `_metadata`, drops those beyond the
    /// newest `retained`, and deletes every file no retained checkpoint references (leftovers
    /// of failed or interrupted checkpoints).
    ///
    /// # Errors
    /// [`Error::Incompatible`] if `retained` is 0; storage errors.
    pub fn open(storage: Arc<dyn CheckpointStorage>, retained: usize) -> Result<Self> {
        if retained == 0 {
            return Err(Error::Incompatible {
                reason: "at least one completed checkpoint must be retained".into(),
            });
        }
        let mut coordinator = Self {
            storage,
            retained,
            completed: BTreeMap::new(),
            unreadable: Vec::new(),
            pending: BTreeSet::new(),
            highest_id: 0,
        };
        for id in coordinator.checkpoint_ids_in_storage()? {
            coordinator.highest_id = coordinator.highest_id.max(id);
            let path = metadata_path(id)?;
            if !coordinator.storage.exists(&path)? {
                continue;
            }
            let loaded = coordinator
                .storage
                .get(&path)
                .and_then(|bytes| SnapshotMetadata::decode(&bytes, path.as_str()));
            match loaded {
                Ok(meta) if meta.kind == SnapshotKind::Checkpoint && meta.id == id => {
                    coordinator.completed.insert(id, meta);
                }
                Ok(meta) => coordinator.unreadable.push(UnreadableCheckpoint {
                    id,
                    error: Error::corrupt(
                        path.as_str(),
                        format!("describes {} {}", meta.kind, meta.id),
                    ),
                }),
                Err(error) => coordinator
                    .unreadable
                    .push(UnreadableCheckpoint { id, error }),
            }
        }
        coordinator.enforce_retention()?;
        coordinator.collect_orphans()?;
        Ok(coordinator)
    }

    fn checkpoint_ids_in_storage(&self) -> Result<BTreeSet<u64>> {
        Ok(self
            .storage
            .list(None)?
            .iter()
            .filter_map(|o| o.path.components().next().and_then(parse_checkpoint_dir))
            .collect())
    }

    /// The storage of the root.
    pub fn storage(&self) -> &Arc<dyn CheckpointStorage> {
        &self.storage
    }

    /// The retained completed checkpoints, oldest first.
    pub fn completed(&self) -> impl DoubleEndedIterator<Item = &SnapshotMetadata> {
        self.completed.values()
    }

    /// The newest completed checkpoint.
    pub fn latest(&self) -> Option<&SnapshotMetadata> {
        self.completed.values().next_back()
    }

    /// Checkpoints whose `_metadata` could not be read at open.
    pub fn unreadable(&self) -> &[UnreadableCheckpoint] {
        &self.unreadable
    }

    /// A fresh checkpoint id, larger than every id seen in this root. After a restart the
    /// coordinator knows only the ids still in storage (an aborted checkpoint whose files were
    /// collected leaves no trace), so an engine whose backends outlive the coordinator keeps
    /// its own counter: backends refuse ids that do not grow.
    pub fn next_checkpoint_id(&self) -> u64 {
        self.highest_id + 1
    }

    /// Registers checkpoint `id` as in flight: garbage collection leaves its files alone until
    /// it completes or aborts.
    ///
    /// # Errors
    /// [`Error::CheckpointState`] unless `id` is larger than every checkpoint id seen.
    pub fn begin(&mut self, id: u64) -> Result<()> {
        if id <= self.highest_id {
            return Err(Error::CheckpointState {
                id,
                reason: format!("ids must grow; {} was already used", self.highest_id),
            });
        }
        self.highest_id = id;
        self.pending.insert(id);
        Ok(())
    }

    /// Completes checkpoint `id` with the metadata of every backend instance: checks that each
    /// listed file is in storage with its size, writes `_metadata` atomically (from then on
    /// the checkpoint exists), then drops checkpoints beyond the retention and deletes the
    /// files nothing retained needs.
    ///
    /// # Errors
    /// [`Error::CheckpointState`] if `id` is not in flight; [`Error::MissingFile`] /
    /// [`Error::SizeMismatch`] for a file that is not in storage as listed; storage errors.
    /// On error the checkpoint is not completed (and stays in flight, so it can be aborted).
    pub fn complete(
        &mut self,
        id: u64,
        mut instances: Vec<InstanceMetadata>,
    ) -> Result<&SnapshotMetadata> {
        if !self.pending.contains(&id) {
            return Err(Error::CheckpointState {
                id,
                reason: "not in flight".into(),
            });
        }
        if self.latest().is_some_and(|latest| latest.id > id) {
            // A newer checkpoint completed first; the files this one reuses may already be
            // gone with the checkpoints that newer one subsumed.
            return Err(Error::CheckpointState {
                id,
                reason: "subsumed by a newer completed checkpoint".into(),
            });
        }
        for file in instances.iter().flat_map(|i| i.files.iter()) {
            match self.storage.size(&file.path)? {
                None => {
                    return Err(Error::MissingFile {
                        file: file.path.to_string(),
                    });
                }
                Some(size) if size != file.size => {
                    return Err(Error::SizeMismatch {
                        file: file.path.to_string(),
                        expected: file.size,
                        actual: size,
                    });
                }
                Some(_) => {}
            }
        }
        instances.sort_by_key(|i| i.key_groups.start());
        let meta = SnapshotMetadata {
            kind: SnapshotKind::Checkpoint,
            id,
            created_ms: now_ms(),
            instances,
        };
        self.storage.put(&metadata_path(id)?, &meta.encode())?;
        self.pending.remove(&id);
        self.completed.insert(id, meta);
        self.enforce_retention()?;
        if self.pending.is_empty() {
            self.collect_orphans()?;
        }
        Ok(&self.completed[&id])
    }

    /// Aborts checkpoint `id`: it never becomes the base of anything; its files are deleted
    /// once no checkpoint is in flight.
    ///
    /// # Errors
    /// Storage errors.
    pub fn abort(&mut self, id: u64) -> Result<()> {
        self.pending.remove(&id);
        if self.pending.is_empty() {
            self.collect_orphans()?;
        }
        Ok(())
    }

    /// Drops completed checkpoints beyond the retention, oldest first. `_metadata` goes first,
    /// so a crash midway leaves an orphaned directory (collected later), never a checkpoint
    /// that references deleted files.
    fn enforce_retention(&mut self) -> Result<()> {
        while self.completed.len() > self.retained {
            let Some((&oldest, _)) = self.completed.iter().next() else {
                break;
            };
            self.storage.delete(&metadata_path(oldest)?)?;
            let dropped = self.completed.remove(&oldest);
            let referenced = self.referenced();
            if let Some(dropped) = dropped {
                for file in dropped.files() {
                    if !referenced.contains(&file.path) && !self.in_pending_dir(&file.path) {
                        self.storage.delete(&file.path)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Every path a retained checkpoint needs, `_metadata` files included.
    fn referenced(&self) -> HashSet<StoragePath> {
        let mut set = HashSet::new();
        for (id, meta) in &self.completed {
            if let Ok(p) = metadata_path(*id) {
                set.insert(p);
            }
            set.extend(meta.files().map(|f| f.path.clone()));
        }
        set
    }

    fn in_pending_dir(&self, path: &StoragePath) -> bool {
        path.components()
            .next()
            .and_then(parse_checkpoint_dir)
            .is_some_and(|id| self.pending.contains(&id))
    }

    /// Files under `chk-*` and `shared/` that no retained checkpoint references (and that do
    /// not belong to an in-flight checkpoint or an unreadable one).
    ///
    /// # Errors
    /// Storage errors.
    pub fn orphans(&self) -> Result<Vec<(StoragePath, u64)>> {
        let referenced = self.referenced();
        let unreadable: HashSet<String> = self
            .unreadable
            .iter()
            .map(|u| checkpoint_dir_name(u.id))
            .collect();
        let mut out = Vec::new();
        for object in self.storage.list(None)? {
            let Some(top) = object.path.components().next() else {
                continue;
            };
            let managed = top == SHARED_DIR || top.starts_with(CHECKPOINT_DIR_PREFIX);
            if !managed || unreadable.contains(top) || referenced.contains(&object.path) {
                continue;
            }
            if self.in_pending_dir(&object.path) || (!self.pending.is_empty() && top == SHARED_DIR)
            {
                // An in-flight checkpoint may have uploaded it and not completed yet.
                continue;
            }
            out.push((object.path, object.size));
        }
        Ok(out)
    }

    /// Deletes every orphan (see [`CheckpointCoordinator::orphans`]).
    ///
    /// # Errors
    /// Storage errors.
    pub fn collect_orphans(&mut self) -> Result<GcReport> {
        let mut report = GcReport::default();
        for (path, size) in self.orphans()? {
            self.storage.delete(&path)?;
            report.bytes += size;
            report.deleted.push(path);
        }
        Ok(report)
    }

    /// Checks that every file of `meta` is in storage with its recorded size and crc32.
    ///
    /// # Errors
    /// [`Error::MissingFile`], [`Error::SizeMismatch`] or [`Error::ChecksumMismatch`] naming the
    /// first bad file.
    pub fn verify(&self, meta: &SnapshotMetadata) -> Result<()> {
        verify_files(self.storage.as_ref(), meta)
    }

    /// The newest completed checkpoint whose files all verify, skipping damaged ones: the
    /// automatic fallback on a corrupt or missing file.
    ///
    /// # Errors
    /// [`Error::NoRestorableCheckpoint`] if none verifies.
    pub fn latest_verified(&self) -> Result<&SnapshotMetadata> {
        self.completed
            .values()
            .rev()
            .find(|m| self.verify(m).is_ok())
            .ok_or_else(|| Error::NoRestorableCheckpoint {
                root: "checkpoint storage".into(),
            })
    }
}

/// Checks every file of `meta` in `storage`: present, recorded size, recorded crc32.
///
/// # Errors
/// The first bad file, as [`Error::MissingFile`], [`Error::SizeMismatch`] or
/// [`Error::ChecksumMismatch`].
pub fn verify_files(storage: &dyn CheckpointStorage, meta: &SnapshotMetadata) -> Result<()> {
    for file in meta.files() {
        let bytes = match storage.get(&file.path) {
            Ok(bytes) => bytes,
            Err(Error::MissingFile { .. }) => {
                return Err(Error::MissingFile {
                    file: file.path.to_string(),
                });
            }
            Err(e) => return Err(e),
        };
        if bytes.len() as u64 != file.size {
            return Err(Error::SizeMismatch {
                file: file.path.to_string(),
                expected: file.size,
                actual: bytes.len() as u64,
            });
        }
        let crc = crc32fast::hash(&bytes);
        if crc != file.crc32 {
            return Err(Error::ChecksumMismatch {
                file: file.path.to_string(),
                expected: file.crc32,
                actual: crc,
            });
        }
    }
    Ok(())
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
