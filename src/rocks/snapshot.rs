//! Incremental checkpoints of the RocksDB backend.
//!
//! Synchronous part ([`RocksDbBackend::snapshot`]): a native RocksDB checkpoint (flush, then
//! hard links of the live SST files, copies of MANIFEST, CURRENT and OPTIONS) into a staging
//! directory. It costs a flush and a few links, whatever the state size.
//!
//! Asynchronous part ([`RocksDbSnapshot::upload`]): SST files the last *completed* checkpoint
//! already holds are referenced, not copied; new SST files go to `shared/<instance>/`; the
//! other files (which change content under the same name) go to the checkpoint's private
//! directory every time. The backend keeps serving reads and writes meanwhile: the staging
//! directory is independent of the live DB.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{RocksDbBackend, rocks_err};
use crate::backend::{BackendKind, KeyedStateBackend};
use crate::checkpoint::layout::{private_path, shared_path};
use crate::checkpoint::metadata::{FileEntry, InstanceId, InstanceMetadata};
use crate::checkpoint::snapshot::UploadStats;
use crate::codec::{Codec, DefaultCodec};
use crate::error::{Error, Result};
use crate::format::{file_size_and_crc32, verify_local_file};
use crate::state::StateInfo;
use crate::storage::CheckpointStorage;

/// What the backend remembers between checkpoints.
#[derive(Debug, Default)]
pub(crate) struct IncrementalState {
    /// Shared SST files of the last completed checkpoint, by local file name.
    pub(crate) base: HashMap<String, FileEntry>,
    /// The highest checkpoint id snapshotted so far: ids must grow, which is what makes it
    /// safe to reuse files of the last completed checkpoint (see `docs/checkpoint-layout.md`).
    pub(crate) last_snapshot: Option<u64>,
}

/// The result of the synchronous part: a staged native checkpoint, ready to upload.
#[derive(Debug)]
pub struct RocksDbSnapshot {
    checkpoint_id: u64,
    staging: PathBuf,
    instance: InstanceMetadata,
    base: HashMap<String, FileEntry>,
}

/// A file in the working directory that marks its `db/` as an unfinished restore (see
/// `RocksDbBackend::restore_files`).
pub(crate) const RESTORE_MARKER: &str = "db.restore-incomplete";

impl RocksDbBackend {
    /// The synchronous part of checkpoint `checkpoint_id`: flushes and hard-links a native
    /// checkpoint into the working directory's staging area.
    ///
    /// # Errors
    /// [`Error::CheckpointState`] if `checkpoint_id` is not larger than every earlier one;
    /// RocksDB and I/O errors.
    pub fn snapshot(&mut self, checkpoint_id: u64) -> Result<RocksDbSnapshot> {
        if self
            .incremental
            .last_snapshot
            .is_some_and(|last| checkpoint_id <= last)
        {
            return Err(Error::CheckpointState {
                id: checkpoint_id,
                reason: "checkpoint ids must grow".into(),
            });
        }
        let staging_root = self.dir.path().join("staging");
        std::fs::create_dir_all(&staging_root).map_err(|e| Error::io(&staging_root, e))?;
        let staging = staging_root.join(format!("chk-{checkpoint_id}"));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        }
        rocksdb::checkpoint::Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(&staging))
            .map_err(rocks_err)?;
        self.incremental.last_snapshot = Some(checkpoint_id);
        Ok(RocksDbSnapshot {
            checkpoint_id,
            staging,
            instance: self.instance_metadata(Vec::new()),
            base: self.incremental.base.clone(),
        })
    }

    /// Records that checkpoint `metadata` (this instance's part of it) completed: its shared
    /// files become the base the next checkpoints reference instead of uploading.
    /// Aborted checkpoints are simply never reported here.
    pub fn notify_checkpoint_complete(&mut self, metadata: &InstanceMetadata) {
        self.incremental.base = base_of(metadata);
    }

    /// This instance's lineage id: shared files are named under it.
    pub fn instance_id(&self) -> InstanceId {
        self.instance_id
    }

    pub(crate) fn instance_metadata(&self, files: Vec<FileEntry>) -> InstanceMetadata {
        InstanceMetadata {
            instance_id: self.instance_id,
            backend: BackendKind::RocksDb,
            codec: DefaultCodec::ID,
            max_parallelism: self.assigner.max_parallelism(),
            key_groups: self.range,
            states: self.states.iter().map(|s| s.info.clone()).collect(),
            files,
        }
    }

    /// Restores a backend from an instance's checkpoint files. `fetch(entry, local_path)` puts
    /// each file into the new DB directory (a copy); every file's size and crc32 are
    /// verified before the DB is opened. With `claim`, the restored shared files become the
    /// base of the next incremental checkpoint; without, the next checkpoint uploads everything.
    ///
    /// `complete`: the restored DB is the whole restored state. A rescaled restore passes
    /// `false` for its base instance, keeps the working directory marked as an interrupted
    /// restore (`RESTORE_MARKER`) while it trims and merges, and calls
    /// [`RocksDbBackend::finish_restore`] at the end. A restore into a directory whose `db/` is
    /// so marked replaces that `db/`; an unmarked `db/` is refused.
    ///
    /// # Errors
    /// [`Error::SizeMismatch`] / [`Error::ChecksumMismatch`] naming the file; RocksDB errors.
    pub(crate) fn restore_files(
        metadata: &InstanceMetadata,
        working_dir: Option<PathBuf>,
        options: super::RocksDbOptions,
        claim: bool,
        complete: bool,
        fetch: &mut dyn FnMut(&FileEntry, &Path) -> Result<()>,
    ) -> Result<Self> {
        let dir = super::WorkingDir::create(working_dir)?;
        let db_path = dir.path().join("db");
        let marker = dir.path().join(RESTORE_MARKER);
        if db_path.exists() {
            if !marker.exists() {
                return Err(Error::Incompatible {
                    reason: format!("restore target {} already holds a DB", db_path.display()),
                });
            }
            // The leftover of a restore that stopped before its DB was complete.
            std::fs::remove_dir_all(&db_path).map_err(|e| Error::io(&db_path, e))?;
        }
        // Files are fetched into a staging directory and it becomes `db` only once every file
        // is verified: a crash mid-download leaves just the staging directory, which the retry
        // clears, instead of a partial `db` that every later restore would refuse.
        let staging = dir.path().join("db.restoring");
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        }
        std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        let restored = Self::restore_into(metadata, dir, &staging, &db_path, options, claim, fetch)
            .and_then(|backend| {
                if complete {
                    backend.finish_restore()?;
                }
                Ok(backend)
            });
        if restored.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
            // A failed restore leaves no half-written DB behind: a retry starts clean.
            let _ = std::fs::remove_dir_all(&db_path);
            let _ = std::fs::remove_file(&marker);
        }
        restored
    }

    /// Declares the restored DB complete: flushes it (a rescaled restore's range deletes and
    /// instance record are in memtables, and the WAL is off), then removes the working
    /// directory's interrupted-restore marker, durably, so that the directory can be reopened.
    ///
    /// # Errors
    /// RocksDB and I/O errors.
    pub(crate) fn finish_restore(&self) -> Result<()> {
        self.flush()?;
        let marker = self.dir.path().join(RESTORE_MARKER);
        match std::fs::remove_file(&marker) {
            Ok(()) => crate::storage::sync_dir(self.dir.path()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&marker, e)),
        }
    }

    fn restore_into(
        metadata: &InstanceMetadata,
        dir: super::WorkingDir,
        staging: &Path,
        db_path: &Path,
        options: super::RocksDbOptions,
        claim: bool,
        fetch: &mut dyn FnMut(&FileEntry, &Path) -> Result<()>,
    ) -> Result<Self> {
        for entry in &metadata.files {
            crate::checkpoint::metadata::validate_local_name(&entry.local_name)?;
            let local = staging.join(&entry.local_name);
            fetch(entry, &local)?;
            verify_local_file(&local, entry)?;
        }
        // The marker is durable before `db/` can exist, and removed only when the caller
        // declares the DB complete: a crash in between leaves a `db/` that reopening refuses
        // and the next restore replaces.
        let marker = dir.path().join(RESTORE_MARKER);
        std::fs::File::create(&marker)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&marker, e))?;
        crate::storage::sync_dir(dir.path())?;
        std::fs::rename(staging, db_path).map_err(|e| Error::io(db_path, e))?;
        let mut backend =
            Self::open_in(metadata.max_parallelism, metadata.key_groups, dir, options)?;
        let restored: Vec<StateInfo> = backend.states();
        if restored != metadata.states {
            return Err(Error::corrupt(
                metadata.instance_id.hex(),
                "the restored DB's states differ from the metadata's",
            ));
        }
        if claim {
            backend.incremental.base = base_of(metadata);
        }
        Ok(backend)
    }
}

fn base_of(metadata: &InstanceMetadata) -> HashMap<String, FileEntry> {
    metadata
        .files
        .iter()
        .filter(|f| f.shared)
        .map(|f| (f.local_name.clone(), f.clone()))
        .collect()
}

impl RocksDbSnapshot {
    /// The checkpoint id.
    pub fn checkpoint_id(&self) -> u64 {
        self.checkpoint_id
    }

    /// The asynchronous part: uploads what the base does not hold and returns this instance's
    /// metadata. Runs on any thread; the backend keeps working meanwhile.
    ///
    /// # Errors
    /// Storage and I/O errors. Nothing is registered anywhere on failure: the files uploaded so
    /// far are orphans that the checkpoint coordinator's garbage collection removes.
    pub fn upload(
        self,
        storage: &dyn CheckpointStorage,
    ) -> Result<(InstanceMetadata, UploadStats)> {
        let mut names: Vec<String> = Vec::new();
        for entry in std::fs::read_dir(&self.staging).map_err(|e| Error::io(&self.staging, e))? {
            let entry = entry.map_err(|e| Error::io(&self.staging, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            names.push(name);
        }
        names.sort();
        let mut stats = UploadStats::default();
        let mut files = Vec::with_capacity(names.len());
        let id = self.instance.instance_id;
        for name in names {
            let local = self.staging.join(&name);
            let is_sst = name.ends_with(".sst");
            if is_sst {
                if let Some(reused) = self.base.get(&name) {
                    stats.files_reused += 1;
                    stats.bytes_reused += reused.size;
                    files.push(reused.clone());
                    continue;
                }
            }
            let (size, crc32) = file_size_and_crc32(&local)?;
            let path = if is_sst {
                shared_path(id, &name)?
            } else {
                private_path(self.checkpoint_id, id, &name)?
            };
            storage.put_file(&path, &local)?;
            stats.files_uploaded += 1;
            stats.bytes_uploaded += size;
            files.push(FileEntry {
                path,
                local_name: name,
                size,
                crc32,
                shared: is_sst,
            });
        }
        let mut instance = self.instance.clone();
        instance.files = files;
        Ok((instance, stats))
    }
}

impl Drop for RocksDbSnapshot {
    fn drop(&mut self) {
        // The staging directory holds hard links only; removing it frees nothing the DB needs.
        let _ = std::fs::remove_dir_all(&self.staging);
    }
}
