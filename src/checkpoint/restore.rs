//! Restoring a backend instance from checkpoint (or savepoint) files.

use crate::any_backend::{AnyBackend, BackendConfig};
use crate::backend::{BackendKind, KeyedStateBackend};
use crate::checkpoint::metadata::{InstanceMetadata, SnapshotMetadata};
use crate::error::{Error, Result};
use crate::heap::HeapBackend;
use crate::savepoint::data_file::{DataFileReader, fetch_data_file};
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
/// The instances overlapping `config.key_groups` must hold each of its key groups exactly
/// once ([`SnapshotMetadata::instances_covering`]); a heap data file must belong to the
/// instance that lists it (its header's key groups and max parallelism).
///
/// # Errors
/// [`Error::Incompatible`] for another max parallelism or another backend;
/// [`Error::KeyGroupCoverage`] for key groups no instance holds or two instances hold;
/// [`Error::KeyGroupsMismatch`] for a heap data file of another instance;
/// [`Error::MissingFile`], [`Error::SizeMismatch`], [`Error::ChecksumMismatch`] naming the file.
pub fn restore_instance(
    storage: &dyn CheckpointStorage,
    meta: &SnapshotMetadata,
    config: &BackendConfig,
    mode: RestoreMode,
) -> Result<AnyBackend> {
    meta.check_max_parallelism(config.max_parallelism)?;
    let sources = meta.instances_covering(config.key_groups)?;
    let instance = match sources.as_slice() {
        [only] if only.key_groups == config.key_groups => *only,
        _ => return restore_rescaled(storage, sources, config),
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
                config,
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
/// parallelism changed), from `sources`: the instances [`SnapshotMetadata::instances_covering`]
/// selected, which hold every key group of the range exactly once. Heap checkpoints: the owned
/// key groups of every overlapping data file. RocksDB checkpoints: the overlapping instance with
/// the most key groups is restored as the base, the key groups it does not own are dropped with
/// range deletes, and the rows of the others' owned key groups are ingested as sorted SST files.
fn restore_rescaled(
    storage: &dyn CheckpointStorage,
    sources: Vec<&InstanceMetadata>,
    config: &BackendConfig,
) -> Result<AnyBackend> {
    let range = config.key_groups;
    #[cfg_attr(not(feature = "rocksdb"), allow(unused_mut))]
    let mut overlapping = sources;
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
            if overlapping.is_empty() {
                return Err(Error::Incompatible {
                    reason: format!("no key groups to restore in {range}"),
                });
            }
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
                config,
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
                // As a failed single-instance restore does: no DB and no marker is left for
                // the retry (closing without the clean-close flush, which could fail and
                // leave the open marker behind).
                backend.abandon_restore();
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

/// Loads the owned key groups of a heap instance's data file (downloaded, verified and checked
/// against the instance by `fetch_data_file`) into `backend`.
fn load_heap_files(
    storage: &dyn CheckpointStorage,
    instance: &InstanceMetadata,
    backend: &mut HeapBackend,
) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("statebackend-restore-")
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let mut reader = fetch_data_file(storage, instance, dir.path())?;
    load_data_file(backend, &mut reader)
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
