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

/// Restores the key groups `config` owns from checkpoint `meta`, into the backend that wrote
/// it (switching backends goes through savepoints). If one instance owned exactly
/// `config.key_groups` it is restored as is; otherwise (the parallelism changed) the
/// overlapping instances are combined, see `docs/checkpoint-layout.md`; a rescaled RocksDB
/// restore never claims. Every file is verified (size and crc32) before it is used.
///
/// # Errors
/// [`Error::Incompatible`] for another max parallelism, key groups no instance covered, or
/// another backend;
/// [`Error::MissingFile`], [`Error::SizeMismatch`], [`Error::ChecksumMismatch`] naming the file.
pub fn restore_instance(
    storage: &dyn CheckpointStorage,
    meta: &SnapshotMetadata,
    config: &BackendConfig,
    mode: RestoreMode,
) -> Result<AnyBackend> {
    meta.check_max_parallelism(config.max_parallelism)?;
    let Some(instance) = meta
        .instances
        .iter()
        .find(|i| i.key_groups == config.key_groups)
    else {
        return restore_rescaled(storage, meta, config);
    };
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
                true,
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

/// Restores key groups that no single instance of `meta` owned exactly (the job's
/// parallelism changed). Heap checkpoints: the owned key groups of every overlapping data file.
/// RocksDB checkpoints: the overlapping instance with the most key groups is restored as the
/// base, the key groups it does not own are dropped with range deletes, and the rows of the
/// others' owned key groups are ingested as sorted SST files.
fn restore_rescaled(
    storage: &dyn CheckpointStorage,
    meta: &SnapshotMetadata,
    config: &BackendConfig,
) -> Result<AnyBackend> {
    let range = config.key_groups;
    #[cfg_attr(not(feature = "rocksdb"), allow(unused_mut))]
    let mut overlapping: Vec<&InstanceMetadata> = meta
        .instances
        .iter()
        .filter(|i| !i.key_groups.intersect(&range).is_empty())
        .collect();
    let covered: u32 = overlapping
        .iter()
        .map(|i| i.key_groups.intersect(&range).len())
        .sum();
    if covered != range.len() {
        return Err(Error::Incompatible {
            reason: format!(
                "{} {} covers {covered} of the {} key groups of {range}",
                meta.kind,
                meta.id,
                range.len()
            ),
        });
    }
    if overlapping.iter().any(|i| i.backend != config.kind) {
        return Err(Error::Incompatible {
            reason: format!(
                "restore a checkpoint into the {} backend through a savepoint",
                config.kind
            ),
        });
    }
    match config.kind {
        BackendKind::Heap => {
            let mut backend = HeapBackend::new(config.max_parallelism, range)?;
            for instance in overlapping {
                load_heap_files(storage, instance, &mut backend)?;
            }
            Ok(AnyBackend::Heap(backend))
        }
        #[cfg(feature = "rocksdb")]
        BackendKind::RocksDb => {
            use crate::rocks::RocksDbBackend;
            overlapping.sort_by_key(|i| std::cmp::Reverse(i.key_groups.intersect(&range).len()));
            let base = overlapping.remove(0);
            let mut fetch = |entry: &crate::checkpoint::FileEntry, local: &std::path::Path| {
                storage.get_to_file(&entry.path, local).map(|_| ())
            };
            // The other instances come first, into temporary directories: once the base is in
            // the engine's working directory only local steps remain, so a failed read never
            // leaves a DB there that the retry would refuse to restore over.
            overlapping.sort_by_key(|i| i.key_groups.start());
            let others = overlapping
                .iter()
                .map(|i| {
                    RocksDbBackend::restore_files(
                        i,
                        None,
                        config.rocksdb.clone(),
                        false,
                        true,
                        &mut fetch,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let mut backend = RocksDbBackend::restore_files(
                base,
                config.working_dir.clone(),
                config.rocksdb.clone(),
                false,
                false,
                &mut fetch,
            )?;
            // Until `finish_restore`, the working directory is marked: a crash while the base
            // is trimmed and merged leaves a `db/` that reopening refuses and a retry replaces.
            let combined = combine_rescaled(&mut backend, &others, range)
                .and_then(|()| backend.finish_restore());
            if let Err(e) = combined {
                // As a failed single-instance restore does: no DB is left for the retry.
                drop(backend);
                if let Some(dir) = &config.working_dir {
                    let _ = std::fs::remove_dir_all(dir.join("db"));
                    let _ = std::fs::remove_file(dir.join(crate::rocks::RESTORE_MARKER));
                }
                return Err(e);
            }
            Ok(AnyBackend::RocksDb(backend))
        }
        #[cfg(not(feature = "rocksdb"))]
        BackendKind::RocksDb => Err(Error::Incompatible {
            reason: "this build has no RocksDB backend (feature `rocksdb` is off)".into(),
        }),
    }
}

/// Drops the key groups the base does not own and ingests the owned key groups of the other
/// instances into it.
#[cfg(feature = "rocksdb")]
fn combine_rescaled(
    backend: &mut crate::rocks::RocksDbBackend,
    others: &[crate::rocks::RocksDbBackend],
    range: crate::key_group::KeyGroupRange,
) -> Result<()> {
    backend.retain_key_groups(range)?;
    let mut states: Vec<crate::state::StateInfo> = Vec::new();
    for other in others {
        for info in other.states() {
            if !states.iter().any(|s| s.name == info.name) {
                states.push(info);
            }
        }
    }
    backend.ingest_sorted(&states, &mut |emit| {
        for other in others {
            for group in other.key_group_range().intersect(&range).iter() {
                for (index, info) in states.iter().enumerate() {
                    if other.states().iter().any(|s| s.name == info.name) {
                        other.for_each_row(&info.name, group, &mut |key, value| {
                            emit(group, index, key, value)
                        })?;
                    }
                }
            }
        }
        Ok(())
    })?;
    Ok(())
}

/// Restores a heap instance from its full-snapshot data file.
fn restore_heap(
    storage: &dyn CheckpointStorage,
    instance: &InstanceMetadata,
) -> Result<HeapBackend> {
    let mut backend = HeapBackend::new(instance.max_parallelism, instance.key_groups)?;
    load_heap_files(storage, instance, &mut backend)?;
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

/// Loads the owned key groups of an instance's verified data files into `backend`.
fn load_heap_files(
    storage: &dyn CheckpointStorage,
    instance: &InstanceMetadata,
    backend: &mut HeapBackend,
) -> Result<()> {
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
        load_data_file(backend, &mut reader)?;
    }
    Ok(())
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
