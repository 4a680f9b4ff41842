//! The checkpoint coordinator: owns a checkpoint root, writes `_metadata` to complete a
//! checkpoint, keeps the last N completed ones and deletes what none of them needs.
//!
//! Reference counts are never stored: the set of files still needed is rebuilt from the
//! retained `_metadata` files (at open, and kept in memory after), so there is no second source
//! of truth to get out of sync after a crash. What may be deleted is decided by one pure
//! function, [`plan_collection`], which the coordinator and `statectl gc` (dry run or not)
//! share.
//!
//! Safety rules, in the order they are checked (`docs/checkpoint-layout.md` §5):
//! - a coordinator claims an epoch when it opens the root ([`fence`](super::fence)); once a
//!   newer one has opened it, it completes nothing and deletes nothing ([`Error::Fenced`]);
//! - a read error while opening a root fails the open: nothing is deleted on a partial view;
//! - a `_metadata` that cannot be understood (damaged, truncated, a newer format) makes its
//!   checkpoint *unreadable*: its directory and the whole `shared/` area are kept, because any
//!   shared file may be one it lists;
//! - completion requires instances that partition the job's key groups, and reports success
//!   once `_metadata` is durable: cleanup failures after that are kept apart and retried.
//!
//! Request cost: a completion deletes only what the checkpoints it drops listed and no kept one
//! lists, without listing the root (on an object store a listing of thousands of objects is the
//! dominant request cost). The root is listed, to find leftovers of failed checkpoints, when it
//! is opened and at the first quiet moment (nothing in flight) after an abort or a failed
//! cleanup: only failures leave such leftovers.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use crate::backends::any::AnyBackend;
use crate::backends::config::BackendConfig;
use crate::model::error::{Error, Result};
use crate::model::format::layout::{
    NO_CLAIM_MARKER, SHARED_DIR, checkpoint_dir_name, is_collectable, metadata_path,
    no_claim_marker_path, parse_checkpoint_dir,
};
use crate::model::format::metadata::{
    FileEntry, InstanceMetadata, METADATA_FILE, SnapshotKind, SnapshotMetadata, check_partition,
};
use crate::runtime::checkpoint::fence::Epoch;
use crate::runtime::checkpoint::lease::{DEFAULT_LEASE_DURATION, HeldLease, Lease};
use crate::runtime::checkpoint::restore::{RestoreMode, restore_instance};
use crate::storage::{CheckpointStorage, ObjectMeta, StoragePath, checksum, for_each_concurrently};

/// Default number of completed checkpoints kept.
pub const DEFAULT_RETAINED_CHECKPOINTS: usize = 3;

/// A checkpoint whose `_metadata` exists but cannot be understood. Left in place, with every
/// shared file, until an operator repairs it or sets it aside (`statectl discard`); never used for restore.
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

/// What a checkpoint root holds, read without changing anything.
#[derive(Debug, Default)]
pub struct RootState {
    /// Completed checkpoints whose `_metadata` was read, by id.
    pub completed: BTreeMap<u64, SnapshotMetadata>,
    /// Checkpoints whose `_metadata` exists but cannot be understood.
    pub unreadable: Vec<UnreadableCheckpoint>,
    /// Checkpoints restored in no-claim mode: never deleted by this root's retention.
    pub no_claim: BTreeSet<u64>,
    /// The highest checkpoint id with a directory in the root.
    pub highest_id: u64,
    /// Completed checkpoints kept whatever the retention, besides the retained ones: the
    /// newest checkpoint known to restore (verified by `statectl gc`, or the one a
    /// coordinator opened with until it completes a newer one). Retention never drops the
    /// only checkpoint a restore could use.
    pub protected: BTreeSet<u64>,
}

impl RootState {
    /// Reads every `_metadata` of the root.
    ///
    /// # Errors
    /// Any storage error (listing or reading): a partial view of a root must never drive a
    /// deletion, so the caller gets the error instead. A `_metadata` that was read but cannot
    /// be decoded is not an error: its checkpoint is listed as unreadable.
    pub fn read(storage: &dyn CheckpointStorage) -> Result<Self> {
        let listing = storage.list(None)?;
        let mut state = RootState::default();
        let mut with_metadata = BTreeSet::new();
        for object in &listing {
            let mut parts = object.path.components();
            let Some(id) = parts.next().and_then(parse_checkpoint_dir) else {
                continue;
            };
            state.highest_id = state.highest_id.max(id);
            match (parts.next(), parts.next()) {
                (Some(METADATA_FILE), None) => {
                    with_metadata.insert(id);
                }
                (Some(NO_CLAIM_MARKER), None) => {
                    state.no_claim.insert(id);
                }
                _ => {}
            }
        }
        for id in with_metadata {
            match read_checkpoint_metadata(storage, id)? {
                Found::Completed(meta) => {
                    state.completed.insert(id, *meta);
                }
                Found::Unreadable(u) => state.unreadable.push(u),
                // A `_metadata` listed and then missing is an inconsistent view of the root:
                // an error, like any other failed read.
                Found::Absent(e) => return Err(e),
            }
        }
        state.no_claim.retain(|id| state.completed.contains_key(id));
        Ok(state)
    }

    /// [`Error::UnreadableCheckpoint`] for the first unreadable checkpoint, if any: what a tool
    /// that must see the whole root (`statectl gc`) refuses to work on.
    ///
    /// # Errors
    /// As described.
    pub fn require_readable(&self) -> Result<()> {
        match self.unreadable.first() {
            Some(u) => Err(Error::UnreadableCheckpoint {
                id: u.id,
                reason: u.error.to_string(),
            }),
            None => Ok(()),
        }
    }
}

/// How many times a `_metadata` or a checkpoint's files are read before damage is believed: a
/// storage path that flips a bit in one response must not make a good checkpoint unreadable
/// (which stops all collection of `shared/`) or skip it on restore.
const READ_ATTEMPTS: usize = 3;

/// What reading `chk-<id>/_metadata` found.
enum Found {
    /// A completed checkpoint.
    Completed(Box<SnapshotMetadata>),
    /// A `_metadata` that cannot be understood, by every read.
    Unreadable(UnreadableCheckpoint),
    /// No `_metadata` (the error says which file).
    Absent(Error),
}

/// Reads `chk-<id>/_metadata`, again up to [`READ_ATTEMPTS`] times in all while it reads as
/// damaged: it is unreadable only if every read says so.
///
/// # Errors
/// Storage errors other than damage and absence.
fn read_checkpoint_metadata(storage: &dyn CheckpointStorage, id: u64) -> Result<Found> {
    let path = metadata_path(id)?;
    let mut first_damage = None;
    for _ in 0..READ_ATTEMPTS {
        match SnapshotMetadata::read(storage, &path) {
            Ok(meta) if meta.kind == SnapshotKind::Checkpoint && meta.id == id => {
                return Ok(Found::Completed(Box::new(meta)));
            }
            Ok(meta) => {
                first_damage.get_or_insert(Error::corrupt(
                    path.as_str(),
                    format!("describes {} {}", meta.kind, meta.id),
                ));
            }
            Err(e @ Error::MissingFile { .. }) => return Ok(Found::Absent(e)),
            // Read, and not understood: damaged, truncated, or a newer format.
            Err(error) if error.is_damage() => {
                first_damage.get_or_insert(error);
            }
            Err(e) => return Err(e),
        }
    }
    let error = first_damage.unwrap_or_else(|| Error::corrupt(path.as_str(), "unreadable"));
    Ok(Found::Unreadable(UnreadableCheckpoint { id, error }))
}

/// What retention and garbage collection delete, decided by [`plan_collection`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcPlan {
    /// Completed checkpoints kept (retained and no-claim ones), oldest first.
    pub kept: Vec<u64>,
    /// Completed checkpoints beyond the retention, oldest first.
    pub dropped: Vec<u64>,
    /// The files to delete, every `_metadata` first: a crash midway leaves orphans, never a
    /// checkpoint that lists a deleted file.
    pub deletable: Vec<ObjectMeta>,
}

/// Decides what may be deleted from a root in `state`, keeping the newest `retained` completed
/// checkpoints (no-claim checkpoints are kept besides them and do not count; a protected one
/// beyond them is kept too). Only paths the layout names are ever deletable
/// ([`is_collectable`]).
///
/// `in_flight` are checkpoints begun and neither completed nor aborted: their directories are
/// kept, and so is `shared/` while any is in flight (an upload may have written a file that
/// nothing lists yet). `shared/` is also kept whole while the root holds an unreadable
/// checkpoint. With `listing` (the root's objects), every unprotected file under `chk-*` and
/// `shared/` is deletable; without, only the files of the dropped checkpoints are (a
/// listing-free pass, for completions while other checkpoints are in flight).
pub fn plan_collection(
    state: &RootState,
    retained: usize,
    in_flight: &BTreeSet<u64>,
    listing: Option<&[ObjectMeta]>,
) -> GcPlan {
    let owned: Vec<u64> = state
        .completed
        .keys()
        .filter(|id| !state.no_claim.contains(id))
        .copied()
        .collect();
    let split = owned.len().saturating_sub(retained);
    // A protected checkpoint beyond the retention stays (the newest one known to restore).
    let dropped: Vec<u64> = owned[..split]
        .iter()
        .filter(|id| !state.protected.contains(id))
        .copied()
        .collect();
    let kept: Vec<u64> = state
        .completed
        .keys()
        .filter(|id| !dropped.contains(id))
        .copied()
        .collect();
    let mut referenced: HashSet<StoragePath> = HashSet::new();
    for id in &kept {
        referenced.extend(metadata_path(*id));
        referenced.extend(no_claim_marker_path(*id));
        referenced.extend(state.completed[id].files().map(|f| f.path.clone()));
    }
    let unreadable_dirs: HashSet<String> = state
        .unreadable
        .iter()
        .map(|u| checkpoint_dir_name(u.id))
        .collect();
    let keep_shared = !in_flight.is_empty() || !state.unreadable.is_empty();
    let protected = |path: &StoragePath| {
        let Some(top) = path.components().next() else {
            return true;
        };
        if !is_collectable(path) {
            // Not a name of the layout: not ours, whatever directory it is in.
            return true;
        }
        if top == SHARED_DIR {
            return keep_shared || referenced.contains(path);
        }
        let Some(id) = parse_checkpoint_dir(top) else {
            // Not ours: the root may hold other things (a savepoints directory, say).
            return true;
        };
        in_flight.contains(&id) || unreadable_dirs.contains(top) || referenced.contains(path)
    };
    let mut deletable: Vec<ObjectMeta> = match listing {
        Some(listing) => listing
            .iter()
            .filter(|o| !protected(&o.path))
            .cloned()
            .collect(),
        None => {
            let mut seen = HashSet::new();
            let mut out = Vec::new();
            for id in &dropped {
                let meta = &state.completed[id];
                if let Ok(path) = metadata_path(*id) {
                    out.push(ObjectMeta {
                        path,
                        size: meta.encode().len() as u64,
                    });
                }
                for file in meta.files() {
                    if !protected(&file.path) && seen.insert(file.path.clone()) {
                        out.push(ObjectMeta {
                            path: file.path.clone(),
                            size: file.size,
                        });
                    }
                }
            }
            out
        }
    };
    // `_metadata` first (a stable sort keeps the rest in listing order).
    deletable.sort_by_key(|o| o.path.file_name() != METADATA_FILE);
    GcPlan {
        kept,
        dropped,
        deletable,
    }
}

/// [`plan_collection`], confirmed by reads so that no deletion rests on a listing alone.
///
/// A listing may omit objects (some S3-compatible stores and caches do): an omitted
/// `_metadata` would make a completed checkpoint look like an aborted one's leftovers, and
/// its files (and the shared files only it lists) deletable. So before a listing-based
/// plan is executed, every checkpoint directory the listing shows that is neither known
/// nor in flight, and every id above the newest known checkpoint up to one past the
/// highest id seen, has its `_metadata` read directly. A checkpoint found that way joins
/// the known ones (kept by retention until this coordinator completes a newer one), an
/// unreadable one keeps `shared/` whole, and the plan is made again. Before any dropped
/// checkpoint's files go, its no-claim marker is looked up directly as well.
///
/// # Errors
/// Storage errors of those reads: nothing is deleted on an unconfirmed plan.
pub fn confirmed_plan(
    state: &mut RootState,
    storage: &dyn CheckpointStorage,
    retained: usize,
    in_flight: &BTreeSet<u64>,
    listing: Option<&[ObjectMeta]>,
) -> Result<GcPlan> {
    if let Some(listing) = listing {
        learn_unlisted(state, storage, in_flight, listing)?;
    }
    plan_with_confirmed_markers(state, storage, retained, in_flight, listing)
}

/// [`plan_collection`], with the no-claim marker of every checkpoint it would drop looked up
/// directly (a listing may have omitted it): the second half of [`confirmed_plan`], for a
/// caller that already read what the listing may have hidden and plans again (`statectl gc`,
/// after protecting the checkpoint a restore would use).
///
/// # Errors
/// Storage errors of the lookups.
pub fn plan_with_confirmed_markers(
    state: &mut RootState,
    storage: &dyn CheckpointStorage,
    retained: usize,
    in_flight: &BTreeSet<u64>,
    listing: Option<&[ObjectMeta]>,
) -> Result<GcPlan> {
    loop {
        let plan = plan_collection(state, retained, in_flight, listing);
        let mut changed = false;
        for id in &plan.dropped {
            if storage.exists(&no_claim_marker_path(*id)?)? {
                state.no_claim.insert(*id);
                changed = true;
            }
        }
        if !changed {
            return Ok(plan);
        }
    }
}

/// Reads the `_metadata` of checkpoints a listing may have hidden (see [`confirmed_plan`]),
/// and again those found unreadable before.
fn learn_unlisted(
    state: &mut RootState,
    storage: &dyn CheckpointStorage,
    in_flight: &BTreeSet<u64>,
    listing: &[ObjectMeta],
) -> Result<()> {
    let known = |id: &u64| {
        state.completed.contains_key(id)
            || in_flight.contains(id)
            || state.unreadable.iter().any(|u| u.id == *id)
    };
    let listed: BTreeSet<u64> = listing
        .iter()
        .filter_map(|o| o.path.components().next().and_then(parse_checkpoint_dir))
        .collect();
    let highest_seen = listed.last().copied().unwrap_or(0).max(state.highest_id);
    let newest_known = state
        .completed
        .keys()
        .chain(state.unreadable.iter().map(|u| &u.id))
        .max()
        .copied()
        .unwrap_or(0);
    let mut probe: BTreeSet<u64> = listed.into_iter().filter(|id| !known(id)).collect();
    probe.extend((newest_known + 1..=highest_seen.saturating_add(1)).filter(|id| !known(id)));
    // Unreadable ones are read again: one damaged response must not stop collection of
    // `shared/` for a coordinator's whole life.
    probe.extend(state.unreadable.iter().map(|u| u.id));
    for id in probe {
        match read_checkpoint_metadata(storage, id)? {
            Found::Completed(meta) => {
                tracing::warn!(
                    checkpoint = id,
                    "a listing of the root omitted this checkpoint's _metadata; kept"
                );
                state.unreadable.retain(|u| u.id != id);
                state.completed.insert(id, *meta);
                state.protected.insert(id);
                state.highest_id = state.highest_id.max(id);
            }
            Found::Unreadable(u) => {
                state.highest_id = state.highest_id.max(id);
                if !state.unreadable.iter().any(|k| k.id == id) {
                    state.unreadable.push(u);
                }
            }
            Found::Absent(_) => {}
        }
    }
    Ok(())
}

/// Deletes the files of `plan`: every `_metadata` first, one by one, stopping at the first
/// failure; then the other files together ([`CheckpointStorage::delete_many`]: concurrent, or
/// batched on an object store). Returns what was deleted with the first error, if any.
pub fn execute_plan(storage: &dyn CheckpointStorage, plan: &GcPlan) -> (GcReport, Option<Error>) {
    let mut report = GcReport::default();
    let delete = |object: &ObjectMeta| match storage.delete(&object.path) {
        Ok(()) | Err(Error::MissingFile { .. }) => Ok(()),
        Err(e) => Err(e),
    };
    let split = plan
        .deletable
        .iter()
        .position(|o| o.path.file_name() != METADATA_FILE)
        .unwrap_or(plan.deletable.len());
    let (metadata, rest) = plan.deletable.split_at(split);
    for object in metadata {
        if let Err(e) = delete(object) {
            return (report, Some(e));
        }
        report.bytes += object.size;
        report.deleted.push(object.path.clone());
    }
    // Each deletion's own result, so that the report lists every file that went.
    let paths: Vec<StoragePath> = rest.iter().map(|o| o.path.clone()).collect();
    let results = storage.delete_many(&paths);
    let mut error = None;
    for (object, result) in rest.iter().zip(results) {
        match result {
            Ok(()) | Err(Error::MissingFile { .. }) => {
                report.bytes += object.size;
                report.deleted.push(object.path.clone());
            }
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    (report, error)
}

/// Owns one checkpoint root. One coordinator per root at a time (the job's).
pub struct CheckpointCoordinator {
    storage: Arc<dyn CheckpointStorage>,
    retained: usize,
    state: RootState,
    pending: BTreeSet<u64>,
    cleanup_error: Option<String>,
    epoch: Epoch,
    /// Whether the root may hold leftovers that only a listing finds (after an abort or a
    /// failed cleanup): the next cleanup with nothing in flight lists the root.
    sweep_needed: bool,
    /// The lease that tells tools which delete (`statectl gc`) that this coordinator works here.
    lease: HeldLease,
    /// The last failure to renew the lease, if it has not been renewed since.
    lease_error: Option<String>,
}

impl CheckpointCoordinator {
    /// Opens the root: claims the next coordinator epoch (which fences every coordinator that
    /// opened the root before, see [`fence`](super::fence)), writes its lease
    /// ([`lease`](super::lease)), reads every completed checkpoint's `_metadata`, and deletes
    /// every file no completed checkpoint references (leftovers of failed or interrupted
    /// checkpoints). The checkpoints found are dropped by retention only once this coordinator
    /// completed a newer one and read its `_metadata` back: the newest one found may be
    /// damaged, and the job may restore an older one. A failure of that cleanup does not fail
    /// the open; it is kept for [`CheckpointCoordinator::cleanup_error`] and retried later.
    ///
    /// # Errors
    /// [`Error::Incompatible`] if `retained` is 0; any storage error while claiming the epoch,
    /// writing the lease or reading the root (nothing is deleted then).
    pub fn open(storage: Arc<dyn CheckpointStorage>, retained: usize) -> Result<Self> {
        if retained == 0 {
            return Err(Error::Incompatible {
                reason: "at least one completed checkpoint must be retained".into(),
            });
        }
        let epoch = Epoch::claim(storage.as_ref())?;
        let lease = HeldLease::acquire(
            storage.as_ref(),
            epoch.epoch(),
            DEFAULT_LEASE_DURATION,
            now_ms(),
        )?;
        let mut state = RootState::read(storage.as_ref())?;
        // Retention drops what this coordinator found only in favour of a checkpoint it
        // completed and read back itself: the newest checkpoint found may be damaged, and the
        // job may have restored an older one that opening with `retained = 1` would delete.
        state.protected = state.completed.keys().copied().collect();
        let mut coordinator = Self {
            storage,
            retained,
            state,
            pending: BTreeSet::new(),
            cleanup_error: None,
            epoch,
            sweep_needed: true,
            lease,
            lease_error: None,
        };
        coordinator.cleanup();
        Ok(coordinator)
    }

    /// The storage of the root.
    pub fn storage(&self) -> &Arc<dyn CheckpointStorage> {
        &self.storage
    }

    /// The epoch this coordinator claimed when it opened the root.
    pub fn epoch(&self) -> u64 {
        self.epoch.epoch()
    }

    /// The retained completed checkpoints (no-claim ones included), oldest first.
    pub fn completed(&self) -> impl DoubleEndedIterator<Item = &SnapshotMetadata> {
        self.state.completed.values()
    }

    /// The newest completed checkpoint.
    pub fn latest(&self) -> Option<&SnapshotMetadata> {
        self.state.completed.values().next_back()
    }

    /// Checkpoints whose `_metadata` could not be understood at open. While there is one, no
    /// file under `shared/` is deleted.
    pub fn unreadable(&self) -> &[UnreadableCheckpoint] {
        &self.state.unreadable
    }

    /// The last cleanup (retention or garbage collection) failure, if the cleanup has not
    /// succeeded since. Completion and abort never fail because of cleanup: the checkpoint
    /// exists once its `_metadata` is durable, and what was left is deleted by a later
    /// cleanup.
    pub fn cleanup_error(&self) -> Option<&str> {
        self.cleanup_error.as_deref()
    }

    /// Whether the next cleanup with nothing in flight lists the root and deletes every file no
    /// retained or in-flight checkpoint lists (after an abort, a failed cleanup, or a retention
    /// pass that had to keep `shared/`). An engine whose instances may upload a checkpoint
    /// before [`CheckpointCoordinator::begin`] is called for it keeps a checkpoint in flight
    /// while this holds, so that such a sweep cannot take those uploads.
    pub fn sweep_pending(&self) -> bool {
        self.sweep_needed
    }

    /// A fresh checkpoint id, larger than every id seen in this root. After a restart the
    /// coordinator knows only the ids still in storage (an aborted checkpoint whose files were
    /// collected leaves no trace), so an engine whose backends outlive the coordinator keeps
    /// its own counter: backends refuse ids that do not grow.
    pub fn next_checkpoint_id(&self) -> u64 {
        self.state.highest_id + 1
    }

    /// Registers checkpoint `id` as in flight: garbage collection leaves its files alone until
    /// it completes or aborts.
    ///
    /// # Errors
    /// [`Error::CheckpointState`] unless `id` is larger than every checkpoint id seen.
    pub fn begin(&mut self, id: u64) -> Result<()> {
        if id <= self.state.highest_id {
            return Err(Error::CheckpointState {
                id,
                reason: format!("ids must grow; {} was already used", self.state.highest_id),
            });
        }
        self.state.highest_id = id;
        self.pending.insert(id);
        self.renew_lease_quietly();
        Ok(())
    }

    /// Completes checkpoint `id` with the metadata of every backend instance: checks that the
    /// instances partition the job's key groups and that each listed file is in storage with
    /// its size, then writes `_metadata` atomically. From then on the checkpoint exists and
    /// this returns `Ok`; dropping checkpoints beyond the retention and deleting what nothing
    /// retained needs follow, and a failure there is kept apart
    /// ([`CheckpointCoordinator::cleanup_error`]) and retried by the next cleanup.
    ///
    /// # Errors
    /// [`Error::CheckpointState`] if `id` is not in flight or a newer checkpoint completed;
    /// [`Error::Fenced`] if a newer coordinator opened the root;
    /// [`Error::KeyGroupCoverage`] unless the instances hold every key group of the job exactly
    /// once under one max parallelism; [`Error::MissingFile`] / [`Error::SizeMismatch`] for a
    /// file that is not in storage as listed; storage errors writing `_metadata`. On error
    /// the checkpoint is not completed (and stays in flight, so it can be aborted).
    pub fn complete(
        &mut self,
        id: u64,
        instances: Vec<InstanceMetadata>,
    ) -> Result<&SnapshotMetadata> {
        self.complete_with(id, instances, BTreeMap::new())
    }

    /// [`CheckpointCoordinator::complete`], keeping `engine` (the engine's metadata: job id,
    /// watermarks, source positions that are not operator state) in the checkpoint's
    /// `_metadata`, returned on restore as [`SnapshotMetadata::engine`].
    ///
    /// # Errors
    /// As [`CheckpointCoordinator::complete`].
    pub fn complete_with(
        &mut self,
        id: u64,
        mut instances: Vec<InstanceMetadata>,
        engine: BTreeMap<String, Vec<u8>>,
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
        instances.sort_by(|a, b| {
            (a.operator.as_str(), a.key_groups.start())
                .cmp(&(b.operator.as_str(), b.key_groups.start()))
        });
        check_partition(&instances, &format!("checkpoint {id}"))?;
        // One request per file on an object store: asked `transfer_concurrency` at a time.
        let files: Vec<&FileEntry> = instances.iter().flat_map(|i| i.files.iter()).collect();
        let storage = self.storage.as_ref();
        for_each_concurrently(&files, storage.transfer_concurrency(), |file| match storage
            .size(&file.path)?
        {
            None => Err(Error::MissingFile {
                file: file.path.to_string(),
            }),
            Some(size) if size != file.size => Err(Error::SizeMismatch {
                file: file.path.to_string(),
                expected: file.size,
                actual: size,
            }),
            Some(_) => Ok(()),
        })?;
        let meta = SnapshotMetadata {
            kind: SnapshotKind::Checkpoint,
            id,
            created_ms: now_ms(),
            instances,
            engine,
        };
        let path = metadata_path(id)?;
        let bytes = meta.encode();
        self.epoch.check(self.storage.as_ref())?;
        // Created only if absent: a second coordinator of this root (a zombie after a
        // failover) can never replace a completed checkpoint.
        if let Err(e) = self.storage.put_new(&path, &bytes) {
            if let Error::NotDurable { .. } = e {
                // Written, and its directory could not be made durable: a crash may lose it,
                // so it must not count as complete (retention would drop the checkpoints
                // before it). The storage took the name back; make sure, and fail.
                let _ = self.storage.delete(&path);
                return Err(e);
            }
            // A write can fail after the file is in place (a lost response): then the
            // checkpoint exists, and a restart would restore it, so completion must not be
            // reported as failed. A file with other bytes is another coordinator's.
            match self.storage.get(&path) {
                Ok(found) if found == bytes => {}
                Ok(_) if matches!(e, Error::AlreadyExists { .. }) => {
                    return Err(Error::CheckpointState {
                        id,
                        reason: "another coordinator completed a checkpoint of this id in this \
                                 root; this coordinator is stale"
                            .into(),
                    });
                }
                _ => return Err(e),
            }
        }
        // Retention must not drop the checkpoints before this one on the word of a store that
        // acknowledged the write: it may have lost it. Read it back first.
        let confirmed = match self.read_back(id, &path, &bytes) {
            Ok(()) => true,
            // Lost, or other bytes: this checkpoint does not exist.
            Err(e @ Error::CheckpointState { .. }) => return Err(e),
            // The read itself failed: the write was acknowledged, so the checkpoint is taken as
            // complete (a restart would restore it), but nothing is dropped for it.
            Err(e) => {
                tracing::warn!(checkpoint = id, error = %e, "could not read _metadata back");
                self.cleanup_error = Some(format!(
                    "checkpoint {id}'s _metadata could not be read back ({e}); retention waits \
                     for a checkpoint that is"
                ));
                false
            }
        };
        self.pending.remove(&id);
        if confirmed {
            // A checkpoint this coordinator wrote and read back: what it kept for lack of one
            // (found at open, or before an unconfirmed completion) may go now.
            self.state.protected.clear();
        } else {
            self.state
                .protected
                .extend(self.state.completed.keys().copied());
            self.state.protected.insert(id);
        }
        self.state.completed.insert(id, meta);
        self.renew_lease_quietly();
        self.cleanup();
        Ok(&self.state.completed[&id])
    }

    /// Reads `_metadata` back after its write was acknowledged: it must be there with exactly
    /// the bytes written. Read again (up to [`READ_ATTEMPTS`] in all) while it differs, so a
    /// response damaged on its way does not fail a completion that took effect.
    ///
    /// # Errors
    /// [`Error::CheckpointState`] if it is missing or holds other bytes; the read's own error
    /// if reading failed (then nothing is known either way).
    fn read_back(&self, id: u64, path: &StoragePath, bytes: &[u8]) -> Result<()> {
        let mut last = None;
        for _ in 0..READ_ATTEMPTS {
            match self.storage.get(path) {
                Ok(found) if found == bytes => return Ok(()),
                Ok(found) => {
                    last = Some(format!(
                        "{} bytes that differ from the {} written",
                        found.len(),
                        bytes.len()
                    ));
                }
                Err(Error::MissingFile { .. }) => {
                    last = Some("nothing: the store acknowledged the write and lost it".into());
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::CheckpointState {
            id,
            reason: format!(
                "reading {path} back after its write found {}; the checkpoint is not complete",
                last.unwrap_or_default()
            ),
        })
    }

    /// Aborts checkpoint `id`: it never becomes the base of anything; its files are deleted
    /// once no checkpoint is in flight. A cleanup failure is kept apart as for `complete`.
    ///
    /// # Errors
    /// None today; the `Result` leaves room for storages that must be told.
    pub fn abort(&mut self, id: u64) -> Result<()> {
        self.pending.remove(&id);
        // Its uploads are listed nowhere: only a listing finds them.
        self.sweep_needed = true;
        self.renew_lease_quietly();
        self.cleanup();
        Ok(())
    }

    /// The metadata of completed checkpoint `id`, prepared for a restore in `mode` as Apache
    /// Flink's restore modes specify:
    ///
    /// - [`RestoreMode::Claim`]: the job takes the checkpoint over. It stays subject to this
    ///   root's retention, and its shared files stay as long as a retained checkpoint lists
    ///   them (the restored instances reuse them incrementally).
    /// - [`RestoreMode::NoClaim`]: the checkpoint stays the user's. A marker
    ///   (`chk-<id>/_no-claim`, written durably before this returns) keeps it and every file it
    ///   lists out of retention and garbage collection, across restarts, until
    ///   [`CheckpointCoordinator::release`]. The restored instances start with a full
    ///   checkpoint.
    ///
    /// Call it once per restore of the job, before restoring its instances with
    /// [`restore_instance`] (or [`CheckpointCoordinator::restore_instance`]).
    ///
    /// # Errors
    /// [`Error::CheckpointNotFound`] unless `id` is a completed checkpoint of this root;
    /// storage errors writing the marker.
    pub fn prepare_restore(&mut self, id: u64, mode: RestoreMode) -> Result<SnapshotMetadata> {
        let meta = self
            .state
            .completed
            .get(&id)
            .cloned()
            .ok_or(Error::CheckpointNotFound { id })?;
        if mode == RestoreMode::NoClaim && !self.state.no_claim.contains(&id) {
            self.storage.put(&no_claim_marker_path(id)?, b"")?;
            self.state.no_claim.insert(id);
        }
        Ok(meta)
    }

    /// Restores the key groups `config` owns from completed checkpoint `id` of this root:
    /// [`CheckpointCoordinator::prepare_restore`] followed by [`restore_instance`].
    ///
    /// # Errors
    /// As both.
    pub fn restore_instance(
        &mut self,
        id: u64,
        config: &BackendConfig,
        mode: RestoreMode,
    ) -> Result<AnyBackend> {
        let meta = self.prepare_restore(id, mode)?;
        restore_instance(self.storage.as_ref(), &meta, config, mode)
    }

    /// Hands a no-claim checkpoint back to retention: removes its marker. The next cleanup
    /// drops it if it is beyond the newest `retained`.
    ///
    /// # Errors
    /// Storage errors.
    pub fn release(&mut self, id: u64) -> Result<()> {
        if self.state.no_claim.contains(&id) {
            // The marker goes first: if deleting it fails, the checkpoint stays protected.
            self.storage.delete(&no_claim_marker_path(id)?)?;
            self.state.no_claim.remove(&id);
            // Handed back on purpose: retention may take it even before a new completion.
            self.state.protected.remove(&id);
            self.cleanup();
        }
        Ok(())
    }

    /// Checkpoints kept beyond the retention because this coordinator found them when it
    /// opened the root (or a listing had hidden them) and has not completed a newer checkpoint
    /// since: until then it cannot know which of them a restore needs.
    pub fn protected(&self) -> impl Iterator<Item = u64> + '_ {
        self.state.protected.iter().copied()
    }

    /// Checkpoints kept out of retention by a no-claim restore.
    pub fn no_claim(&self) -> impl Iterator<Item = u64> + '_ {
        self.state.no_claim.iter().copied()
    }

    /// Runs retention and garbage collection of the whole root now (listing it), and returns
    /// what was deleted.
    ///
    /// # Errors
    /// The cleanup's failure (also kept for [`CheckpointCoordinator::cleanup_error`]);
    /// [`Error::Fenced`] if a newer coordinator opened the root (nothing is deleted).
    pub fn collect_orphans(&mut self) -> Result<GcReport> {
        self.sweep_needed = true;
        let listing = match self.storage.list(None) {
            Ok(listing) => listing,
            Err(e) => {
                self.cleanup_error =
                    Some(format!("garbage collection could not list the root: {e}"));
                return Err(e);
            }
        };
        let plan = match self.confirmed_plan(Some(&listing)) {
            Ok(plan) => plan,
            Err(e) => {
                self.cleanup_error = Some(format!("garbage collection could not confirm: {e}"));
                return Err(e);
            }
        };
        let (report, error) = self.execute(&plan);
        match error {
            Some(e) => Err(e),
            None => {
                // A sweep with something in flight keeps `shared/`: not a full one.
                if self.pending.is_empty() {
                    self.sweep_needed = false;
                }
                Ok(report)
            }
        }
    }

    /// [`confirmed_plan`] for this coordinator's root, retention and checkpoints in flight.
    fn confirmed_plan(&mut self, listing: Option<&[ObjectMeta]>) -> Result<GcPlan> {
        confirmed_plan(
            &mut self.state,
            self.storage.as_ref(),
            self.retained,
            &self.pending,
            listing,
        )
    }

    /// Files under `chk-*` and `shared/` that garbage collection would delete now (see
    /// [`plan_collection`]), with their sizes.
    ///
    /// # Errors
    /// Storage errors listing the root.
    pub fn orphans(&self) -> Result<Vec<(StoragePath, u64)>> {
        let listing = self.storage.list(None)?;
        let plan = plan_collection(&self.state, self.retained, &self.pending, Some(&listing));
        Ok(plan
            .deletable
            .into_iter()
            .map(|o| (o.path, o.size))
            .collect())
    }

    /// Retention, and garbage collection of the whole root when it may hold leftovers and
    /// nothing is in flight; failures are kept, not returned.
    fn cleanup(&mut self) {
        let result = if self.pending.is_empty() && self.sweep_needed {
            self.collect_orphans().map(|_| ())
        } else {
            let plan = match self.confirmed_plan(None) {
                Ok(plan) => plan,
                Err(e) => {
                    self.cleanup_error = Some(format!("cleanup could not confirm: {e}"));
                    self.sweep_needed = true;
                    return;
                }
            };
            if !self.pending.is_empty() && !plan.dropped.is_empty() {
                // `shared/` is kept while anything is in flight: what the dropped checkpoints
                // alone used waits for the next sweep.
                self.sweep_needed = true;
            }
            match self.execute(&plan).1 {
                Some(e) => Err(e),
                None => Ok(()),
            }
        };
        if result.is_ok() {
            self.cleanup_error = None;
        }
    }

    /// Executes `plan` (after checking the fence, if it deletes anything) and forgets the
    /// dropped checkpoints whose `_metadata` is gone.
    fn execute(&mut self, plan: &GcPlan) -> (GcReport, Option<Error>) {
        if !plan.deletable.is_empty() {
            if let Err(e) = self.epoch.check(self.storage.as_ref()) {
                self.cleanup_error = Some(format!("cleanup refused: {e}"));
                return (GcReport::default(), Some(e));
            }
        }
        let (report, error) = execute_plan(self.storage.as_ref(), plan);
        let deleted: HashSet<&StoragePath> = report.deleted.iter().collect();
        for id in &plan.dropped {
            if metadata_path(*id).is_ok_and(|p| deleted.contains(&p)) {
                self.state.completed.remove(id);
            }
        }
        if let Some(e) = &error {
            self.cleanup_error = Some(format!("cleanup failed, retried later: {e}"));
            self.sweep_needed = true;
        }
        (report, error)
    }

    /// The lease this coordinator holds in its root, as last written.
    pub fn lease(&self) -> Lease {
        self.lease.record()
    }

    /// Sets how long the lease lasts unless renewed (default [`DEFAULT_LEASE_DURATION`]), and
    /// rewrites it now. A job whose checkpoints are further apart than a third of it should
    /// call [`CheckpointCoordinator::renew_lease`] between them, or tools that delete may take
    /// the root for a dead job's.
    ///
    /// # Errors
    /// Storage errors writing the lease.
    pub fn set_lease_duration(&mut self, duration: std::time::Duration) -> Result<()> {
        self.lease
            .set_duration(self.storage.as_ref(), duration, now_ms())
    }

    /// Rewrites the lease now. [`begin`](Self::begin), [`complete`](Self::complete) and
    /// [`abort`](Self::abort) renew it themselves once a third of it has passed.
    ///
    /// # Errors
    /// Storage errors writing the lease.
    pub fn renew_lease(&mut self) -> Result<()> {
        let result = self.lease.renew(self.storage.as_ref(), now_ms(), true);
        self.lease_error = result.as_ref().err().map(ToString::to_string);
        result
    }

    /// The last failure to renew the lease, if it has not been renewed since. Checkpoints do
    /// not fail because of it; a lease that lapses lets `statectl gc` run beside the job.
    pub fn lease_error(&self) -> Option<&str> {
        self.lease_error.as_deref()
    }

    fn renew_lease_quietly(&mut self) {
        match self.lease.renew(self.storage.as_ref(), now_ms(), false) {
            Ok(()) => self.lease_error = None,
            Err(e) => {
                tracing::warn!(error = %e, "could not renew the coordinator's lease");
                self.lease_error = Some(e.to_string());
            }
        }
    }

    /// Checks that every file of `meta` is in storage with its recorded size and crc32.
    ///
    /// # Errors
    /// [`Error::MissingFile`], [`Error::SizeMismatch`] or [`Error::ChecksumMismatch`] naming the
    /// first bad file.
    pub fn verify(&self, meta: &SnapshotMetadata) -> Result<()> {
        verify_files(self.storage.as_ref(), meta)
    }

    /// The newest completed checkpoint whose files all verify (every file of every instance,
    /// streamed; damage is believed when repeated reads agree, [`verify_files_stable`]),
    /// skipping damaged ones, each logged: the automatic fallback on a corrupt or missing file
    /// ([`Error::is_damage`]). It is the job's choice: restore every instance from the
    /// checkpoint it returns, so that no instance falls back alone.
    ///
    /// A read that fails for another reason (I/O, network) is returned, not taken for damage:
    /// falling back would restore older state than needed. Nor does it fall back past a
    /// checkpoint written in a format newer than this build (a rollback to an older release):
    /// that checkpoint is not damaged, and restoring an older one would silently lose what it
    /// holds.
    ///
    /// # Errors
    /// [`Error::UnreadableCheckpoint`] if a checkpoint newer than the one it would return has a
    /// `_metadata` of a newer format; [`Error::NoRestorableCheckpoint`] if the root holds no
    /// checkpoint; [`Error::NoVerifiedCheckpoint`] if it holds some and none verifies (never
    /// a reason to start empty); [`Error::UnstableRead`] if reads of a file disagree; the first
    /// error that is not damage.
    pub fn latest_verified(&self) -> Result<&SnapshotMetadata> {
        newest_verified(&self.state, self.storage.as_ref())
    }
}

impl Drop for CheckpointCoordinator {
    /// Deletes the lease: the job is gone, and tools that delete may work on the root.
    fn drop(&mut self) {
        if let Err(e) = self.lease.release(self.storage.as_ref()) {
            tracing::warn!(error = %e, "could not delete the coordinator's lease");
        }
    }
}

/// What [`CheckpointCoordinator::latest_verified`] returns, found without opening a
/// coordinator: the root is read and verified, and nothing is written or deleted (opening a
/// coordinator collects garbage). How an engine decides what to restore from at start.
///
/// # Errors
/// As [`CheckpointCoordinator::latest_verified`]; storage errors reading the root.
pub fn latest_restorable(storage: &dyn CheckpointStorage) -> Result<SnapshotMetadata> {
    let state = RootState::read(storage)?;
    newest_verified(&state, storage).cloned()
}

/// [`latest_restorable`], with the damaged checkpoints it skipped, `(id, why)` by id (an
/// unreadable `_metadata` counts as damage): those newer than the checkpoint it returns, or
/// every checkpoint of the root if none restores (`None` with a list that is not empty;
/// `None` with an empty list for a root that holds no checkpoint). An engine reports them: a
/// restore that falls back, or a start that the caller allowed to begin empty, is not a
/// silent one.
///
/// # Errors
/// As [`latest_restorable`], except the two errors that say there is nothing to restore.
pub fn latest_restorable_skipping(
    storage: &dyn CheckpointStorage,
) -> Result<(Option<SnapshotMetadata>, Vec<(u64, String)>)> {
    let state = RootState::read(storage)?;
    let (meta, skipped) = newest_verified_skipping(&state, storage)?;
    Ok((meta.cloned(), skipped))
}

/// `id (why); ...`: the `damaged` of [`Error::NoVerifiedCheckpoint`].
fn list_damaged(damaged: &[(u64, String)]) -> String {
    damaged
        .iter()
        .map(|(id, why)| format!("{id} ({why})"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The newest completed checkpoint of `state` whose files all verify in `storage` (see
/// [`CheckpointCoordinator::latest_verified`]).
fn newest_verified<'a>(
    state: &'a RootState,
    storage: &dyn CheckpointStorage,
) -> Result<&'a SnapshotMetadata> {
    match newest_verified_skipping(state, storage)? {
        (Some(meta), _) => Ok(meta),
        (None, damaged) if damaged.is_empty() => Err(Error::NoRestorableCheckpoint {
            root: storage.location(),
        }),
        (None, damaged) => Err(Error::NoVerifiedCheckpoint {
            root: storage.location(),
            damaged: list_damaged(&damaged),
        }),
    }
}

/// [`newest_verified`], with the damaged checkpoints skipped (see
/// [`latest_restorable_skipping`]).
fn newest_verified_skipping<'a>(
    state: &'a RootState,
    storage: &dyn CheckpointStorage,
) -> Result<(Option<&'a SnapshotMetadata>, Vec<(u64, String)>)> {
    let newer_format = |than: u64| {
        state
            .unreadable
            .iter()
            .find(|u| u.id > than && matches!(u.error, Error::UnsupportedFormat { .. }))
    };
    let mut damaged: Vec<(u64, String)> = state
        .unreadable
        .iter()
        .map(|u| (u.id, format!("unreadable _metadata: {}", u.error)))
        .collect();
    for meta in state.completed.values().rev() {
        if let Some(u) = newer_format(meta.id) {
            return Err(Error::UnreadableCheckpoint {
                id: u.id,
                reason: u.error.to_string(),
            });
        }
        match verify_files_stable(storage, meta) {
            Ok(()) => {
                damaged.retain(|(id, _)| *id > meta.id);
                damaged.sort();
                if !damaged.is_empty() {
                    tracing::warn!(
                        checkpoint = meta.id,
                        skipped = %list_damaged(&damaged),
                        "falling back past damaged checkpoints"
                    );
                }
                return Ok((Some(meta), damaged));
            }
            Err(e) if e.is_damage() => damaged.push((meta.id, e.to_string())),
            Err(e) => return Err(e),
        }
    }
    damaged.sort();
    Ok((None, damaged))
}

/// [`verify_files`], with damage believed only when it repeats: each file that fails is read
/// again, up to three reads in all. One read that verifies wins (a crc32 cannot match by
/// accident); three reads that fail with the same figures are damage; reads that fail
/// differently are [`Error::UnstableRead`], not damage, so that a storage path which corrupts
/// responses never makes a restore fall back to older state or start empty.
///
/// # Errors
/// As [`verify_files`]; [`Error::UnstableRead`].
pub fn verify_files_stable(storage: &dyn CheckpointStorage, meta: &SnapshotMetadata) -> Result<()> {
    for file in meta.files() {
        let mut first: Option<Error> = None;
        for _ in 0..READ_ATTEMPTS {
            match verify_file(storage, file) {
                Ok(()) => {
                    first = None;
                    break;
                }
                Err(e) if e.is_damage() => match &first {
                    None => first = Some(e),
                    Some(f) if f.to_string() == e.to_string() => {}
                    Some(f) => {
                        return Err(Error::UnstableRead {
                            file: file.path.to_string(),
                            reason: format!("one read found {f}, another {e}"),
                        });
                    }
                },
                Err(e) => return Err(e),
            }
        }
        if let Some(damage) = first {
            return Err(damage);
        }
    }
    Ok(())
}

/// Checks every file of `meta` in `storage`: present, recorded size, recorded crc32. Streams
/// each file through a fixed buffer: memory does not grow with file sizes.
///
/// # Errors
/// The first bad file, as [`Error::MissingFile`], [`Error::SizeMismatch`] or
/// [`Error::ChecksumMismatch`].
pub fn verify_files(storage: &dyn CheckpointStorage, meta: &SnapshotMetadata) -> Result<()> {
    meta.files().try_for_each(|file| verify_file(storage, file))
}

/// Checks one file against its entry (see [`verify_files`]).
fn verify_file(storage: &dyn CheckpointStorage, file: &FileEntry) -> Result<()> {
    let (size, crc) = match checksum(storage, &file.path) {
        Ok(found) => found,
        Err(Error::MissingFile { .. }) => {
            return Err(Error::MissingFile {
                file: file.path.to_string(),
            });
        }
        Err(e) => return Err(e),
    };
    if size != file.size {
        return Err(Error::SizeMismatch {
            file: file.path.to_string(),
            expected: file.size,
            actual: size,
        });
    }
    if crc != file.crc32 {
        return Err(Error::ChecksumMismatch {
            file: file.path.to_string(),
            expected: file.crc32,
            actual: crc,
        });
    }
    Ok(())
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
