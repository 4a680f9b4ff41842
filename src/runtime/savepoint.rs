//! Savepoints: the user's portable backups in one canonical format.
//!
//! A savepoint is a directory (any [`CheckpointStorage`] root): one canonical data file per
//! backend instance ([`data_file`]) and a `_metadata` (the checkpoint metadata format, kind
//! savepoint) written last. It is self-contained: it references no checkpoint's `shared/`
//! files, and no garbage collection ever deletes it.
//!
//! Either backend writes it ([`AnyBackend::savepoint`], then [`PendingSavepoint::write`] on
//! any thread, then [`complete_savepoint`]); either backend restores it, at any parallelism
//! ([`restore_savepoint`]): each instance downloads the data files of the instances whose key
//! groups overlap its own and reads only the key groups it owns from them.

pub use crate::model::format::data_file;
pub use crate::runtime::processor;

use std::collections::BTreeMap;

use crate::backends::any::AnyBackend;
use crate::backends::config::BackendConfig;
use crate::backends::interface::CheckpointedBackend;
use crate::model::error::{Error, Result};
use crate::model::format::data_file::open_instance_data_file;
use crate::model::format::metadata::{
    InstanceMetadata, METADATA_FILE, SnapshotKind, SnapshotMetadata, check_partition,
};
use crate::model::format::view::DataFileRows;
use crate::runtime::checkpoint::coordinator::now_ms;
use crate::runtime::checkpoint::restore::{RestoreMode, restore_instance};
use crate::storage::{CheckpointStorage, StoragePath, is_temporary, verified_fetcher};

pub use crate::backends::interface::PendingSavepoint;

/// Writes the savepoint's `_metadata` (atomically, last): from now on the savepoint exists.
/// Then removes temporary files a crashed earlier attempt left in the directory (every instance
/// has finished writing when this is called); a failure to remove one is ignored, as such a
/// file is never read.
///
/// The instances must partition the job's key groups `[0, max_parallelism)` under one max
/// parallelism: a savepoint missing an instance would restore its key groups empty.
///
/// # Errors
/// [`Error::KeyGroupCoverage`] if the instances leave a key group out, hold one twice or differ
/// in max parallelism (nothing is written); storage errors.
pub fn complete_savepoint(
    storage: &dyn CheckpointStorage,
    instances: Vec<InstanceMetadata>,
) -> Result<SnapshotMetadata> {
    write_savepoint_metadata(storage, 0, instances, BTreeMap::new())
}

/// [`complete_savepoint`], keeping the engine's metadata `engine` in the savepoint.
///
/// # Errors
/// As [`complete_savepoint`].
pub fn complete_savepoint_with(
    storage: &dyn CheckpointStorage,
    instances: Vec<InstanceMetadata>,
    engine: BTreeMap<String, Vec<u8>>,
) -> Result<SnapshotMetadata> {
    write_savepoint_metadata(storage, 0, instances, engine)
}

/// Writes `_metadata` for savepoint `id` (the source checkpoint's id, or 0).
pub(crate) fn write_savepoint_metadata(
    storage: &dyn CheckpointStorage,
    id: u64,
    mut instances: Vec<InstanceMetadata>,
    engine: BTreeMap<String, Vec<u8>>,
) -> Result<SnapshotMetadata> {
    instances.sort_by(|a, b| {
        (a.operator.as_str(), a.key_groups.start())
            .cmp(&(b.operator.as_str(), b.key_groups.start()))
    });
    check_partition(&instances, "savepoint")?;
    let meta = SnapshotMetadata {
        kind: SnapshotKind::Savepoint,
        id,
        created_ms: now_ms(),
        instances,
        engine,
    };
    storage.put(&StoragePath::parse(METADATA_FILE)?, &meta.encode())?;
    remove_temporary_leftovers(storage);
    Ok(meta)
}

/// Best-effort removal of the temporary files of interrupted writes (`storage::is_temporary`).
/// Only the directory's own level: a savepoint has no subdirectories, so a temporary file
/// deeper down is not one of its writes.
fn remove_temporary_leftovers(storage: &dyn CheckpointStorage) {
    if let Ok(objects) = storage.list(None) {
        let leftovers = objects
            .iter()
            .filter(|o| o.path.components().count() == 1 && is_temporary(&o.path));
        for object in leftovers {
            let _ = storage.delete(&object.path);
        }
    }
}

/// Reads and validates a savepoint's `_metadata`.
///
/// # Errors
/// [`Error::MissingFile`] if there is none; format errors; [`Error::Incompatible`] if it is not
/// a self-contained savepoint.
pub fn read_savepoint(storage: &dyn CheckpointStorage) -> Result<SnapshotMetadata> {
    let path = StoragePath::parse(METADATA_FILE)?;
    let meta = SnapshotMetadata::read(storage, &path)?;
    if meta.kind != SnapshotKind::Savepoint {
        return Err(Error::Incompatible {
            reason: format!("{} describes a {}, not a savepoint", path, meta.kind),
        });
    }
    check_self_contained(&meta)?;
    Ok(meta)
}

/// Checks that every file a savepoint's metadata lists is a plain file of the savepoint
/// directory (no shared files, no subdirectories), so the directory can be moved or copied
/// on its own.
///
/// # Errors
/// [`Error::InvalidPath`] naming the first file that is not.
pub(crate) fn check_self_contained(meta: &SnapshotMetadata) -> Result<()> {
    match meta
        .files()
        .find(|f| f.shared || f.path.components().count() != 1)
    {
        Some(f) => Err(Error::InvalidPath {
            path: f.path.to_string(),
            reason: "savepoint files must be plain files of the savepoint directory",
        }),
        None => Ok(()),
    }
}

/// Restores the key groups `config` owns from a savepoint into the backend `config` asks for,
/// whatever backend and parallelism wrote it. The instances whose key groups overlap
/// `config.key_groups` must hold each of them exactly once
/// ([`SnapshotMetadata::instances_covering`]). Their data files are downloaded whole into a
/// temporary directory and verified (size, crc32, and the key groups and max parallelism of
/// the header against the metadata) before use; then only the owned key groups are read from
/// them (the data files' index gives offsets). States stay as restored until the engine
/// registers them; registering with another kind or types is [`Error::StateMismatch`].
///
/// # Errors
/// [`Error::Incompatible`] for another max parallelism; [`Error::KeyGroupCoverage`] when the
/// savepoint's instances leave a requested key group out or hold one twice;
/// [`Error::KeyGroupsMismatch`] for a data file of another instance; file errors naming the
/// file.
pub fn restore_savepoint(
    storage: &dyn CheckpointStorage,
    meta: &SnapshotMetadata,
    config: &BackendConfig,
) -> Result<AnyBackend> {
    restore_savepoint_into(storage, meta, config)
}

/// [`restore_savepoint`] into a `B`: any [`CheckpointedBackend`].
///
/// # Errors
/// As [`restore_savepoint`].
pub fn restore_savepoint_into<B: CheckpointedBackend>(
    storage: &dyn CheckpointStorage,
    meta: &SnapshotMetadata,
    config: &BackendConfig,
) -> Result<B> {
    meta.check_single_operator()?;
    meta.check_max_parallelism(config.max_parallelism)?;
    let sources = meta.instances_covering(config.key_groups)?;
    let dir = tempfile::Builder::new()
        .prefix("statebackend-restore-")
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let fetch = verified_fetcher(storage);
    let readers = sources
        .iter()
        .map(|instance| open_instance_data_file(instance, dir.path(), &fetch, config.key_groups))
        .collect::<Result<Vec<_>>>()?;
    let mut backend = B::restore_rows(config, &mut DataFileRows::new(readers, config.key_groups)?)?;
    *backend.operator_state_mut() =
        meta.operator_state_for_instance(config.key_groups, config.parallelism);
    Ok(backend)
}

/// Converts a checkpoint (either backend's) into a savepoint in `target`, offline: each
/// instance is restored into a temporary backend of its own kind and written canonically.
///
/// # Errors
/// Restore errors (naming bad files), write errors.
pub fn convert_checkpoint(
    checkpoint_storage: &dyn CheckpointStorage,
    checkpoint: &SnapshotMetadata,
    target: &dyn CheckpointStorage,
    mut progress: impl FnMut(usize, usize),
) -> Result<SnapshotMetadata> {
    // Checked before any data file is written, not only when `_metadata` is.
    check_partition(
        &checkpoint.instances,
        &format!("checkpoint {}", checkpoint.id),
    )?;
    let mut instances = Vec::new();
    let total = checkpoint.instances.len();
    for (i, instance) in checkpoint.instances.iter().enumerate() {
        let mut config = BackendConfig::heap(instance.max_parallelism, instance.key_groups);
        config.kind = instance.backend;
        let mut backend = restore_instance(
            checkpoint_storage,
            &checkpoint.for_operator(&instance.operator)?,
            &config,
            RestoreMode::NoClaim,
        )?;
        let mut part = backend.savepoint()?.write(target)?;
        part.operator = instance.operator.clone();
        instances.push(part);
        progress(i + 1, total);
    }
    write_savepoint_metadata(target, checkpoint.id, instances, checkpoint.engine.clone())
}
