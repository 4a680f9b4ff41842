//! Restoring a backend instance from checkpoint files, generically over the backend.

use crate::backends::any::AnyBackend;
use crate::backends::config::BackendConfig;
use crate::backends::full_snapshot;
use crate::backends::incremental_snapshot::ChainFile;
use crate::backends::interface::CheckpointedBackend;
use crate::model::error::{Error, Result};
use crate::model::format::metadata::{FetchFile, InstanceMetadata, SnapshotMetadata};
use crate::storage::{CheckpointStorage, verified_fetcher};

/// Who owns the restored checkpoint's files afterwards (as Flink's restore modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestoreMode {
    /// The restored instance continues incremental checkpoints on the restored shared files;
    /// the coordinator of the root may delete the restored checkpoint once it is subsumed.
    #[default]
    Claim,
    /// The first checkpoint after restore is full; nothing of the restored checkpoint is
    /// referenced, so it can be kept or deleted independently of the new checkpoints.
    NoClaim,
}

/// Restores the key groups `config` owns from checkpoint `meta`: [`restore_instance_into`] for
/// the backend `config.kind` names. A checkpoint of canonical rows (the heap and reference
/// backends': full snapshots and incremental chains) restores into any backend; a RocksDB
/// checkpoint only into RocksDB (switching goes through savepoints).
///
/// # Errors
/// As [`restore_instance_into`].
pub fn restore_instance(
    storage: &dyn CheckpointStorage,
    meta: &SnapshotMetadata,
    config: &BackendConfig,
    mode: RestoreMode,
) -> Result<AnyBackend> {
    restore_instance_into(storage, meta, config, mode)
}

/// Restores the key groups `config` owns from checkpoint `meta` into a `B`, which must be the
/// backend kind that wrote it. If one instance owned exactly `config.key_groups` it is
/// restored as is; otherwise (the parallelism changed) the backend combines the overlapping
/// instances, see `docs/checkpoint-layout.md`; a rescaled RocksDB restore never claims. Every
/// file is verified (size and crc32) before it is used.
///
/// The instances overlapping `config.key_groups` must hold each of its key groups exactly
/// once ([`SnapshotMetadata::instances_covering`]); a data file must belong to the instance
/// that lists it (its header's key groups and max parallelism).
///
/// # Errors
/// [`Error::Incompatible`] for another max parallelism or another backend;
/// [`Error::KeyGroupCoverage`] for key groups no instance holds or two instances hold;
/// [`Error::KeyGroupsMismatch`] for a data file of another instance;
/// [`Error::MissingFile`], [`Error::SizeMismatch`], [`Error::ChecksumMismatch`] naming the file.
pub fn restore_instance_into<B: CheckpointedBackend>(
    storage: &dyn CheckpointStorage,
    meta: &SnapshotMetadata,
    config: &BackendConfig,
    mode: RestoreMode,
) -> Result<B> {
    restore_with_fetch(meta, config, mode, &verified_fetcher(storage))
}

/// [`restore_instance_into`], receiving files through `fetch` (which verifies them): the
/// storage's verified fetch, or local recovery's.
pub(crate) fn restore_with_fetch<B: CheckpointedBackend>(
    meta: &SnapshotMetadata,
    config: &BackendConfig,
    mode: RestoreMode,
    fetch: &FetchFile<'_>,
) -> Result<B> {
    meta.check_single_operator()?;
    meta.check_max_parallelism(config.max_parallelism)?;
    let sources = meta.instances_covering(config.key_groups)?;
    let mut backend = if let Some(other) = sources.iter().find(|i| i.backend != config.kind) {
        // Checkpoints of canonical rows (a full snapshot's data file, or a chain of them)
        // restore into any backend; native files (RocksDB's) only into their own.
        if !sources.iter().all(|i| holds_canonical_rows(i)) {
            return Err(Error::Incompatible {
                reason: format!(
                    "the checkpoint was written by the {} backend; restore it into {} through a savepoint",
                    other.backend, config.kind
                ),
            });
        }
        full_snapshot::restore::<B>(config, &sources, fetch)?
    } else {
        B::restore_checkpoint(config, &sources, fetch, mode == RestoreMode::Claim)?
    };
    *backend.operator_state_mut() =
        meta.operator_state_for_instance(config.key_groups, config.parallelism);
    Ok(backend)
}

/// Whether an instance's checkpoint files are canonical rows: one data file (a full snapshot)
/// or a chain of them (`incremental_snapshot`).
fn holds_canonical_rows(instance: &InstanceMetadata) -> bool {
    match instance.files.as_slice() {
        [only] => only.local_name.ends_with(".sbdf"),
        files => files.iter().all(|f| ChainFile::of(&f.local_name).is_some()) && !files.is_empty(),
    }
}
