//! Restoring a backend instance from checkpoint (or savepoint) files.

use std::path::PathBuf;

use crate::any_backend::{AnyBackend, BackendConfig};
use crate::backend::{BackendKind, KeyedStateBackend};
use crate::checkpoint::metadata::{InstanceMetadata, SnapshotMetadata};
use crate::error::{Error, Result};
use crate::heap::HeapBackend;
use crate::savepoint::data_file::DataFileReader;
use crate::storage::CheckpointStorage;

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

/// Restores the instance of `meta` that owns exactly `config.key_groups`, into the backend
/// `config` asks for (which must be the backend that wrote it; other combinations go through
/// savepoints). Every file is verified (size and crc32) before it is used.
///
/// # Errors
/// [`Error::Incompatible`] if no instance owns exactly that range, or the backends differ;
/// [`Error::MissingFile`], [`Error::SizeMismatch`], [`Error::ChecksumMismatch`] naming the file.
pub fn restore_instance(
    storage: &dyn CheckpointStorage,
    meta: &SnapshotMetadata,
    config: &BackendConfig,
    mode: RestoreMode,
) -> Result<AnyBackend> {
    let instance = meta
        .instances
        .iter()
        .find(|i| i.key_groups == config.key_groups && i.max_parallelism == config.max_parallelism)
        .ok_or_else(|| Error::Incompatible {
            reason: format!(
                "{} {} has no instance owning key groups {} of {}",
                meta.kind, meta.id, config.key_groups, config.max_parallelism
            ),
        })?;
    if instance.backend != config.kind {
        return Err(Error::Incompatible {
            reason: format!(
                "the checkpoint was written by the {} backend; restore it into {} through a savepoint",
                instance.backend, config.kind
            ),
        });
    }
    match instance.backend {
        BackendKind::Heap => Ok(AnyBackend::Heap(restore_heap(storage, instance)?)),
        #[cfg(feature = "rocksdb")]
        BackendKind::RocksDb => {
            let backend = crate::rocks::RocksDbBackend::restore_files(
                instance,
                config.working_dir.clone(),
                config.rocksdb.clone(),
                mode == RestoreMode::Claim,
                &mut |entry, local| {
                    storage.get_to_file(&entry.path, local)?;
                    Ok(())
                },
            )?;
            Ok(AnyBackend::RocksDb(backend))
        }
        #[cfg(not(feature = "rocksdb"))]
        BackendKind::RocksDb => {
            let _ = mode;
            Err(Error::Incompatible {
                reason: "this build has no RocksDB backend (feature `rocksdb` is off)".into(),
            })
        }
    }
}

/// Restores a heap instance from its full-snapshot data file.
fn restore_heap(
    storage: &dyn CheckpointStorage,
    instance: &InstanceMetadata,
) -> Result<HeapBackend> {
    let mut backend = HeapBackend::new(instance.max_parallelism, instance.key_groups)?;
    let dir = tempfile::Builder::new()
        .prefix("statebackend-restore-")
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), e))?;
    for entry in &instance.files {
        crate::checkpoint::metadata::validate_local_name(&entry.local_name)?;
        let local: PathBuf = dir.path().join(&entry.local_name);
        storage.get_to_file(&entry.path, &local)?;
        crate::checkpoint::verify_local_file(&local, entry)?;
        let mut reader = DataFileReader::open(&local, entry.path.as_str())?;
        load_data_file(&mut backend, &mut reader)?;
    }
    let mut restored = backend.states();
    let mut expected = instance.states.clone();
    restored.sort_by(|a, b| a.name.cmp(&b.name));
    expected.sort_by(|a, b| a.name.cmp(&b.name));
    if restored != expected {
        return Err(Error::corrupt(
            instance.instance_id.hex(),
            "the snapshot's states differ from the metadata's",
        ));
    }
    Ok(backend)
}

/// Loads the rows of every key group `backend` owns from a data file. Restored states stay
/// raw until the engine registers them with their types.
pub(crate) fn load_data_file<R: std::io::Read + std::io::Seek>(
    backend: &mut HeapBackend,
    reader: &mut DataFileReader<R>,
) -> Result<()> {
    let header = reader.header().clone();
    if header.max_parallelism != backend.assigner().max_parallelism() {
        return Err(Error::Incompatible {
            reason: format!(
                "data written for max parallelism {}, backend has {}",
                header.max_parallelism,
                backend.assigner().max_parallelism()
            ),
        });
    }
    let ids = header
        .states
        .iter()
        .map(|info| backend.declare_restored(info.clone()))
        .collect::<Result<Vec<_>>>()?;
    let range = backend.key_group_range();
    let groups: Vec<_> = reader
        .index()
        .iter()
        .map(|e| e.key_group)
        .filter(|g| range.contains(*g))
        .collect();
    for group in groups {
        reader.read_key_group(group, &mut |state, key, value| {
            backend.load_row(ids[state as usize], group, key, value)
        })?;
    }
    Ok(())
}
