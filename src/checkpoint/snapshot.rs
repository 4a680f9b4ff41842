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
        let dir = heap_snapshot_dir()?;
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

/// Prefix of the temporary directories heap snapshots are written in, in the system's temporary
/// directory: `statebackend-heap-snapshot-<pid>-<start>-<random>`, where `<pid>` and `<start>`
/// (the process's start time, field 22 of `/proc/<pid>/stat`) name the process that owns it.
const HEAP_SNAPSHOT_DIR_PREFIX: &str = "statebackend-heap-snapshot-";

/// A new temporary directory for one heap snapshot's data file, removed when dropped. A process
/// that dies during an upload leaves its directory behind, so the first call in each process
/// also removes the directories whose owner process is gone.
fn heap_snapshot_dir() -> Result<tempfile::TempDir> {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    let owner = process_owner_tag();
    SWEPT.call_once(|| {
        if let Some(own) = owner {
            remove_orphaned_heap_snapshot_dirs(&std::env::temp_dir(), own);
        }
    });
    let prefix = match owner {
        Some(own) => format!("{HEAP_SNAPSHOT_DIR_PREFIX}{own}-"),
        None => HEAP_SNAPSHOT_DIR_PREFIX.to_owned(),
    };
    tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), e))
}

/// `<pid>-<start>` of this process, where the platform tells process start times (Linux's
/// `/proc`); `None` elsewhere, where no directory is ever removed as orphaned.
fn process_owner_tag() -> Option<&'static str> {
    static TAG: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let pid = std::process::id();
        process_start(pid).map(|start| format!("{pid}-{start}"))
    })
    .as_deref()
}

/// The start time of process `pid` (clock ticks after boot, field 22 of `/proc/<pid>/stat`),
/// if it is alive and visible.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything: count after it.
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Removes the heap snapshot directories in `temp` whose owner process (the `<pid>-<start>` in
/// the name) is gone: no process with that pid, or one started at another time (the pid was
/// reused). Directories of live processes, this one's (`own`), and names without an owner are
/// kept; errors are ignored (the next process tries again).
fn remove_orphaned_heap_snapshot_dirs(temp: &std::path::Path, own: &str) {
    let Ok(entries) = std::fs::read_dir(temp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|n| n.strip_prefix(HEAP_SNAPSHOT_DIR_PREFIX))
        else {
            continue;
        };
        let mut fields = owner.splitn(3, '-');
        let (Some(pid), Some(start), Some(_)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
            continue;
        };
        if owner.starts_with(&format!("{own}-")) || process_start(pid) == Some(start) {
            continue;
        }
        let _ = std::fs::remove_dir_all(entry.path());
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

    /// This instance's lineage id: what identifies its part of a checkpoint's metadata
    /// ([`InstanceMetadata::instance_id`]).
    pub fn instance_id(&self) -> InstanceId {
        match self {
            AnyBackend::Heap(b) => b.instance_id(),
            #[cfg(feature = "rocksdb")]
            AnyBackend::RocksDb(b) => b.instance_id(),
        }
    }

    /// Tells the backend that a checkpoint it took completed; `metadata` is its part (find it
    /// by instance id: `complete` orders instances by key group, not by caller).
    /// RocksDB makes its shared files the base of the next incremental checkpoint; the heap
    /// backend (full snapshots) only checks that the part is its own.
    ///
    /// # Errors
    /// [`Error::ForeignInstance`] if `metadata` is another instance's part (another instance
    /// id, backend, max parallelism or key-group range); nothing changes then.
    pub fn notify_checkpoint_complete(&mut self, metadata: &InstanceMetadata) -> Result<()> {
        match self {
            AnyBackend::Heap(b) => metadata.check_belongs_to(
                b.instance_id(),
                BackendKind::Heap,
                b.assigner().max_parallelism(),
                b.key_group_range(),
            ),
            #[cfg(feature = "rocksdb")]
            AnyBackend::RocksDb(b) => b.notify_checkpoint_complete(metadata),
        }
    }
}
