//! The backend interface: what the runtime (checkpoints, savepoints, restore and rescale)
//! needs from a backend beyond the state operations of [`KeyedStateBackend`].
//!
//! A backend implements [`CheckpointedBackend`] and the runtime does the rest, generically:
//! ids and completion, retention and garbage collection, key-group coverage, fetching and
//! verifying files, restore modes. A backend without files of its own (in memory) checkpoints
//! as a full snapshot: it gives a [`RowView`] and rebuilds itself from a [`RowSource`], and
//! [`crate::backends::full_snapshot`] does the rest. A backend with native files (RocksDB's
//! SSTs) gives its own upload task and its own restore from those files.

use std::fmt;

use crate::backends::config::BackendConfig;
use crate::model::codec::{Codec, DefaultCodec};
use crate::model::error::Result;
use crate::model::format::data_file::DataFileSummary;
use crate::model::format::metadata::{FetchFile, FileEntry, InstanceId, InstanceMetadata};
use crate::model::format::path::StoragePath;
use crate::model::format::view::{RowSource, RowView, write_data_file};
use crate::model::state::KeyedStateBackend;
use crate::model::state::operator::OperatorState;
use crate::storage::CheckpointStorage;

/// A backend the runtime can checkpoint, savepoint and restore.
///
/// Restores receive checkpoint parts that the runtime has already checked: they hold each key
/// group of `config.key_groups` exactly once, under one max parallelism, and were written by
/// this backend kind. Files arrive through `fetch`, which puts a file at a local path and
/// verifies its size and crc32.
pub trait CheckpointedBackend: KeyedStateBackend + Sized {
    /// Opens an empty backend as `config` says.
    ///
    /// # Errors
    /// Invalid parallelism or range; the backend's own open errors.
    fn open(config: &BackendConfig) -> Result<Self>;

    /// This instance's lineage id: what identifies its part of a checkpoint's metadata.
    fn instance_id(&self) -> InstanceId;

    /// The instance's operator (non-keyed) state: part of every checkpoint and savepoint of
    /// the instance, redistributed by mode on a restore at another parallelism.
    fn operator_state(&self) -> &OperatorState;

    /// The instance's operator state, to change.
    fn operator_state_mut(&mut self) -> &mut OperatorState;

    /// The keyed part of the synchronous part of checkpoint `checkpoint_id`: the task that
    /// uploads the keyed state. [`CheckpointedBackend::snapshot`] adds the operator state.
    ///
    /// # Errors
    /// [`crate::Error::CheckpointState`] if ids do not grow (where the backend relies on it);
    /// the backend's errors.
    fn snapshot_state(&mut self, checkpoint_id: u64) -> Result<Box<dyn SnapshotUpload>>;

    /// The synchronous part of checkpoint `checkpoint_id`, called at the barrier: it must be
    /// short, and the backend can be used again as soon as it returns. Keyed state as the
    /// backend snapshots it, operator state copied.
    ///
    /// # Errors
    /// As [`CheckpointedBackend::snapshot_state`].
    fn snapshot(&mut self, checkpoint_id: u64) -> Result<PendingSnapshot> {
        Ok(PendingSnapshot {
            task: self.snapshot_state(checkpoint_id)?,
            operator_state: self.operator_state().clone(),
        })
    }

    /// Tells the backend that a checkpoint it took completed; `part` is its part of the
    /// metadata.
    ///
    /// # Errors
    /// [`crate::Error::ForeignInstance`] if `part` is another instance's; nothing changes then.
    fn notify_checkpoint_complete(&mut self, part: &InstanceMetadata) -> Result<()>;

    /// A consistent view of the state as canonical rows, frozen now (the synchronous part of a
    /// savepoint, and of a full-snapshot checkpoint).
    ///
    /// # Errors
    /// The backend's errors.
    fn row_view(&mut self) -> Result<Box<dyn RowView>>;

    /// Restores the key groups `config` owns from this backend's checkpoint parts `sources`.
    /// With `claim`, later checkpoints may reference the restored files.
    ///
    /// # Errors
    /// What `fetch` returns; format and backend errors; a failed restore leaves nothing that
    /// a retry with the same configuration would refuse.
    fn restore_checkpoint(
        config: &BackendConfig,
        sources: &[&InstanceMetadata],
        fetch: &FetchFile<'_>,
        claim: bool,
    ) -> Result<Self>;

    /// A backend owning `config.key_groups`, holding exactly `rows` (a savepoint's, or a full
    /// snapshot's). States stay as restored until the engine registers them.
    ///
    /// # Errors
    /// Read and format errors of `rows`; the backend's errors.
    fn restore_rows(config: &BackendConfig, rows: &mut dyn RowSource) -> Result<Self>;

    /// The synchronous part of a savepoint: [`CheckpointedBackend::row_view`] with the
    /// instance's identity.
    ///
    /// # Errors
    /// As [`CheckpointedBackend::row_view`].
    fn savepoint(&mut self) -> Result<PendingSavepoint> {
        Ok(PendingSavepoint {
            instance_id: self.instance_id(),
            backend: self.backend_kind(),
            view: self.row_view()?,
            operator_state: self.operator_state().clone(),
        })
    }
}

/// What the asynchronous part of a checkpoint wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadStats {
    /// Files written to storage.
    pub files_uploaded: u64,
    /// Bytes written to storage.
    pub bytes_uploaded: u64,
    /// Shared files referenced from the previous completed checkpoint instead of uploaded.
    pub files_reused: u64,
    /// Bytes of the reused files.
    pub bytes_reused: u64,
}

impl UploadStats {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &UploadStats) {
        self.files_uploaded += other.files_uploaded;
        self.bytes_uploaded += other.bytes_uploaded;
        self.files_reused += other.files_reused;
        self.bytes_reused += other.bytes_reused;
    }
}

/// The asynchronous part of one instance's checkpoint, as a backend implements it.
pub trait SnapshotUpload: Send {
    /// Writes the checkpoint's files to `storage`; returns the instance's part of the metadata
    /// and what was written.
    ///
    /// # Errors
    /// Storage, I/O and encoding errors.
    fn upload(
        self: Box<Self>,
        storage: &dyn CheckpointStorage,
    ) -> Result<(InstanceMetadata, UploadStats)>;
}

/// The synchronous part's result: [`PendingSnapshot::upload`] finishes it, on any thread.
pub struct PendingSnapshot {
    task: Box<dyn SnapshotUpload>,
    operator_state: OperatorState,
}

impl PendingSnapshot {
    /// The asynchronous part: writes to `storage`, returns the instance's metadata and what
    /// was written.
    ///
    /// # Errors
    /// Storage, I/O and encoding errors.
    pub fn upload(
        self,
        storage: &dyn CheckpointStorage,
    ) -> Result<(InstanceMetadata, UploadStats)> {
        let (mut instance, stats) = self.task.upload(storage)?;
        instance.operator_state = self.operator_state;
        Ok((instance, stats))
    }
}

impl fmt::Debug for PendingSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PendingSnapshot")
    }
}

/// The synchronous part of a savepoint: a consistent view of one instance.
pub struct PendingSavepoint {
    view: Box<dyn RowView>,
    instance_id: InstanceId,
    backend: crate::model::state::BackendKind,
    operator_state: OperatorState,
}

impl PendingSavepoint {
    /// A savepoint part written from `view`, recorded as instance `instance_id` of a `backend`
    /// with operator state `operator_state`: how backends and the offline state processor
    /// write savepoints through one writer, so that the same rows give the same bytes.
    pub fn from_view(
        view: Box<dyn RowView>,
        instance_id: InstanceId,
        backend: crate::model::state::BackendKind,
        operator_state: OperatorState,
    ) -> Self {
        Self {
            view,
            instance_id,
            backend,
            operator_state,
        }
    }

    /// Writes the instance's canonical data file into the savepoint directory `storage` and
    /// returns the instance's metadata. Streams: memory stays bounded by one (key group, state).
    ///
    /// # Errors
    /// Encoding, I/O and storage errors.
    pub fn write(self, storage: &dyn CheckpointStorage) -> Result<InstanceMetadata> {
        let name = format!("{}.sbdf", self.instance_id.hex());
        let dir = tempfile::Builder::new()
            .prefix("statebackend-savepoint-")
            .tempdir()
            .map_err(|e| crate::model::error::Error::io(std::env::temp_dir(), e))?;
        let local = dir.path().join(&name);
        let summary: DataFileSummary = write_data_file(self.view.as_ref(), &local)?;
        let path = StoragePath::parse(&name)?;
        storage.put_file(&path, &local)?;
        Ok(InstanceMetadata {
            instance_id: self.instance_id,
            backend: self.backend,
            codec: DefaultCodec::ID,
            max_parallelism: self.view.max_parallelism(),
            key_groups: self.view.key_groups(),
            states: self.view.states().to_vec(),
            files: vec![FileEntry {
                path,
                local_name: name,
                size: summary.size,
                crc32: summary.crc32,
                shared: false,
            }],
            operator_state: self.operator_state,
            // The caller names the operator (`complete_savepoint` takes parts of any).
            operator: String::new(),
        })
    }
}
