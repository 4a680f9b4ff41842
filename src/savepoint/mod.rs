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

pub mod data_file;
pub(crate) mod view;

use crate::any_backend::{AnyBackend, BackendConfig};
use crate::backend::{BackendKind, KeyedStateBackend};
use crate::checkpoint::coordinator::now_ms;
use crate::checkpoint::metadata::{
    FileEntry, InstanceId, InstanceMetadata, METADATA_FILE, SnapshotKind, SnapshotMetadata,
    check_partition,
};
use crate::checkpoint::restore::{RestoreMode, restore_instance};
use crate::codec::{Codec, DefaultCodec};
use crate::error::{Error, Result};
use crate::heap::HeapBackend;
use crate::storage::{CheckpointStorage, StoragePath, is_temporary};
#[cfg(feature = "rocksdb")]
use data_file::DataFileReader;
use data_file::fetch_data_file;
use view::{HeapView, RowView, write_data_file};

/// The synchronous part of a savepoint: a consistent view of one instance.
pub struct PendingSavepoint {
    view: Box<dyn RowView>,
    instance_id: InstanceId,
    backend: BackendKind,
}

impl AnyBackend {
    /// The synchronous part of a savepoint: freezes the heap maps, or makes a native RocksDB
    /// checkpoint and opens it read-only. The backend can be used again right away.
    ///
    /// # Errors
    /// RocksDB and I/O errors.
    pub fn savepoint(&mut self) -> Result<PendingSavepoint> {
        let backend = self.backend_kind();
        let (view, instance_id): (Box<dyn RowView>, InstanceId) = match self {
            AnyBackend::Heap(b) => (
                Box::new(HeapView::new(b.freeze(), b.assigner().max_parallelism())),
                b.instance_id(),
            ),
            #[cfg(feature = "rocksdb")]
            AnyBackend::RocksDb(b) => (Box::new(b.view()?), b.instance_id()),
        };
        Ok(PendingSavepoint {
            view,
            instance_id,
            backend,
        })
    }
}

impl PendingSavepoint {
    /// Writes the instance's canonical data file into the savepoint directory `storage` and
    /// returns the instance's metadata. Streams: memory stays bounded by one (key group, state).
    ///
    /// # Errors
    /// Encoding, I/O and storage errors.
    pub fn write(mut self, storage: &dyn CheckpointStorage) -> Result<InstanceMetadata> {
        let name = format!("{}.sbdf", self.instance_id.hex());
        let dir = tempfile::Builder::new()
            .prefix("statebackend-savepoint-")
            .tempdir()
            .map_err(|e| Error::io(std::env::temp_dir(), e))?;
        let local = dir.path().join(&name);
        let summary = write_data_file(self.view.as_mut(), &local)?;
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
        })
    }
}

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
    write_savepoint_metadata(storage, 0, instances)
}

/// Writes `_metadata` for savepoint `id` (the source checkpoint's id, or 0).
fn write_savepoint_metadata(
    storage: &dyn CheckpointStorage,
    id: u64,
    mut instances: Vec<InstanceMetadata>,
) -> Result<SnapshotMetadata> {
    instances.sort_by_key(|i| i.key_groups.start());
    check_partition(&instances, "savepoint")?;
    let meta = SnapshotMetadata {
        kind: SnapshotKind::Savepoint,
        id,
        created_ms: now_ms(),
        instances,
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
    let range = config.key_groups;
    meta.check_max_parallelism(config.max_parallelism)?;
    let sources = meta.instances_covering(range)?;
    let dir = tempfile::Builder::new()
        .prefix("statebackend-restore-")
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let mut readers = Vec::new();
    for instance in &sources {
        readers.push(fetch_data_file(storage, instance, dir.path())?);
    }
    match config.kind {
        BackendKind::Heap => {
            let mut backend = HeapBackend::new(config.max_parallelism, range)?;
            for reader in &mut readers {
                crate::checkpoint::restore::load_data_file(&mut backend, reader)?;
            }
            Ok(AnyBackend::Heap(backend))
        }
        #[cfg(feature = "rocksdb")]
        BackendKind::RocksDb => {
            // A fresh DB, marked as an unfinished restore until the ingest is done; a failure
            // leaves nothing behind, and a directory that is not empty is refused unless the
            // configuration asks to replace it.
            let backend = crate::rocks::RocksDbBackend::restore_fresh(
                config.max_parallelism,
                range,
                config.working_dir.clone(),
                config.rocksdb.clone(),
                config.replace_existing,
                &mut |b| ingest_data_files(b, &mut readers).map(|_| ()),
            )?;
            Ok(AnyBackend::RocksDb(backend))
        }
        #[cfg(not(feature = "rocksdb"))]
        BackendKind::RocksDb => Err(Error::Incompatible {
            reason: "this build has no RocksDB backend (feature `rocksdb` is off)".into(),
        }),
    }
}

/// Streams the owned key groups of every data file into RocksDB as sorted SST files.
#[cfg(feature = "rocksdb")]
pub(crate) fn ingest_data_files(
    backend: &mut crate::rocks::RocksDbBackend,
    readers: &mut [DataFileReader<std::fs::File>],
) -> Result<u64> {
    // The union of the states, sorted by name; each file's state indices map into it.
    let mut states: Vec<crate::state::StateInfo> = Vec::new();
    for reader in readers.iter() {
        for info in &reader.header().states {
            match states.iter().find(|s| s.name == info.name) {
                Some(existing) if existing != info => {
                    return Err(Error::StateMismatch {
                        name: info.name.clone(),
                        registered: existing.describe(),
                        requested: info.describe(),
                    });
                }
                Some(_) => {}
                None => states.push(info.clone()),
            }
        }
    }
    states.sort_by(|a, b| a.name.cmp(&b.name));
    // Files cover disjoint key groups: reading them in key-group order keeps every state's
    // rows ascending, as SST files need.
    readers.sort_by_key(|r| r.header().key_groups.start());
    let range = backend.key_group_range();
    let maps: Vec<Vec<usize>> = readers
        .iter()
        .map(|r| {
            r.header()
                .states
                .iter()
                .map(|info| states.iter().position(|s| s.name == info.name).unwrap_or(0))
                .collect()
        })
        .collect();
    backend.ingest_sorted(&states, &mut |emit| {
        for (reader, map) in readers.iter_mut().zip(&maps) {
            let groups: Vec<_> = reader
                .index()
                .iter()
                .map(|e| e.key_group)
                .filter(|g| range.contains(*g))
                .collect();
            for group in groups {
                reader.read_key_group(group, &mut |state, key, value| {
                    emit(group, map[state as usize], key, value)
                })?;
            }
        }
        Ok(())
    })
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
    let mut sorted = checkpoint.instances.clone();
    sorted.sort_by_key(|i| i.key_groups.start());
    check_partition(&sorted, &format!("checkpoint {}", checkpoint.id))?;
    let mut instances = Vec::new();
    let total = checkpoint.instances.len();
    for (i, instance) in checkpoint.instances.iter().enumerate() {
        let mut config = BackendConfig::heap(instance.max_parallelism, instance.key_groups);
        config.kind = instance.backend;
        let mut backend = restore_instance(
            checkpoint_storage,
            checkpoint,
            &config,
            RestoreMode::NoClaim,
        )?;
        instances.push(backend.savepoint()?.write(target)?);
        progress(i + 1, total);
    }
    write_savepoint_metadata(target, checkpoint.id, instances)
}
