//! The two phases of taking a checkpoint of one backend instance.
//!
//! [`AnyBackend::snapshot`] is the synchronous part, called at the barrier: RocksDB makes a
//! native checkpoint (flush + hard links), the heap backend freezes its copy-on-write maps.
//! [`PendingSnapshot::upload`] is the asynchronous part: it writes to checkpoint storage on any
//! thread while the engine keeps using the backend, and returns the instance's metadata for
//! [`crate::checkpoint::CheckpointCoordinator::complete`].

use crate::any_backend::AnyBackend;
use crate::backend::{BackendKind, KeyedStateBackend};
use crate::checkpoint::layout::private_path;
use crate::checkpoint::metadata::{FileEntry, InstanceId, InstanceMetadata};
use crate::codec::{Codec, DefaultCodec};
use crate::error::{Error, Result};
use crate::heap::{HeapBackend, HeapFrozen};
use crate::savepoint::view::{HeapView, write_data_file};
use crate::storage::CheckpointStorage;

#[cfg(feature = "rocksdb")]
use crate::rocks::RocksDbSnapshot;

/// What the asynchronous part wrote.
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

/// A heap backend's frozen state, ready to be written as a full snapshot.
pub struct HeapSnapshot {
    checkpoint_id: u64,
    instance_id: InstanceId,
    max_parallelism: u32,
    frozen: HeapFrozen,
}

/// The file name of a heap snapshot inside the checkpoint's instance directory.
pub const HEAP_SNAPSHOT_FILE: &str = "state.sbdf";

impl HeapSnapshot {
    pub(crate) fn new(
        backend: &mut HeapBackend,
        checkpoint_id: u64,
        instance_id: InstanceId,
    ) -> Self {
        Self {
            checkpoint_id,
            instance_id,
            max_parallelism: backend.assigner().max_parallelism(),
            frozen: backend.freeze(),
        }
    }

    /// Writes the snapshot as one canonical data file (per key group, checksummed blocks) and
    /// returns the instance's metadata.
    ///
    /// # Errors
    /// Encoding, I/O and storage errors.
    pub fn upload(
        self,
        storage: &dyn CheckpointStorage,
    ) -> Result<(InstanceMetadata, UploadStats)> {
        let dir = tempfile::Builder::new()
            .prefix("statebackend-heap-snapshot-")
            .tempdir()
            .map_err(|e| Error::io(std::env::temp_dir(), e))?;
        let local = dir.path().join(HEAP_SNAPSHOT_FILE);
        let summary = write_data_file(
            &mut HeapView::new(self.frozen.clone(), self.max_parallelism),
            &local,
        )?;
        let path = private_path(self.checkpoint_id, self.instance_id, HEAP_SNAPSHOT_FILE)?;
        storage.put_file(&path, &local)?;
        let instance = InstanceMetadata {
            instance_id: self.instance_id,
            backend: BackendKind::Heap,
            codec: DefaultCodec::ID,
            max_parallelism: self.max_parallelism,
            key_groups: self.frozen.range,
            states: self
                .frozen
                .states
                .iter()
                .map(|(info, _)| info.clone())
                .collect(),
            files: vec![FileEntry {
                path,
                local_name: HEAP_SNAPSHOT_FILE.to_owned(),
                size: summary.size,
                crc32: summary.crc32,
                shared: false,
            }],
        };
        let stats = UploadStats {
            files_uploaded: 1,
            bytes_uploaded: summary.size,
            ..UploadStats::default()
        };
        Ok((instance, stats))
    }
}

/// The synchronous part's result for either backend; [`PendingSnapshot::upload`] finishes it.
pub enum PendingSnapshot {
    /// A frozen heap state.
    Heap(HeapSnapshot),
    /// A staged native RocksDB checkpoint.
    #[cfg(feature = "rocksdb")]
    RocksDb(RocksDbSnapshot),
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
        match self {
            PendingSnapshot::Heap(s) => s.upload(storage),
            #[cfg(feature = "rocksdb")]
            PendingSnapshot::RocksDb(s) => s.upload(storage),
        }
    }
}

impl AnyBackend {
    /// The synchronous part of checkpoint `checkpoint_id` (see the module docs).
    ///
    /// # Errors
    /// [`Error::CheckpointState`] if ids do not grow (RocksDB); RocksDB and I/O errors.
    pub fn snapshot(&mut self, checkpoint_id: u64) -> Result<PendingSnapshot> {
        match self {
            AnyBackend::Heap(b) => {
                let id = b.instance_id();
                Ok(PendingSnapshot::Heap(HeapSnapshot::new(
                    b,
                    checkpoint_id,
                    id,
                )))
            }
            #[cfg(feature = "rocksdb")]
            AnyBackend::RocksDb(b) => Ok(PendingSnapshot::RocksDb(b.snapshot(checkpoint_id)?)),
        }
    }

    /// Tells the backend that a checkpoint it took completed; `metadata` is its part.
    /// RocksDB makes its shared files the base of the next incremental checkpoint; the heap
    /// backend (full snapshots) has nothing to do.
    pub fn notify_checkpoint_complete(&mut self, metadata: &InstanceMetadata) {
        match self {
            AnyBackend::Heap(_) => {
                let _ = metadata;
            }
            #[cfg(feature = "rocksdb")]
            AnyBackend::RocksDb(b) => b.notify_checkpoint_complete(metadata),
        }
    }
}
