//! Local recovery, as Flink's task-local recovery: each instance keeps a local copy of the
//! files of its last completed checkpoint, and a restore on the same machine takes from it
//! every file that the checkpoint's `_metadata` vouches for (size and crc32), downloading only
//! what is missing or wrong.
//!
//! The copy is kept as the files are uploaded ([`LocalRecovery::keeping`] wraps the storage an
//! upload writes to: each file uploaded is also hard-linked, or copied where links cannot
//! be made, to `<dir>/<its storage path>`), so it costs no extra read of the state. The
//! [`crate::CheckpointDriver`] does all of it given [`crate::DriverOptions::local_recovery`]. RocksDB's
//! SST files are hard links of its own files; the heap backend's data file is linked from the
//! file it just wrote. Once a checkpoint completes, [`LocalRecovery::retain`] deletes every
//! local file the completed checkpoint does not list: the copy of one checkpoint remains. One
//! directory serves the instances of one job (one checkpoint root) in a process.
//!
//! A restore ([`LocalRecovery::restore_instance`]) trusts nothing local without checking it
//! against the metadata: a local file of the right name whose size or crc32 differs (truncated,
//! damaged, or of another checkpoint) is downloaded instead, and counted in
//! [`RecoveryStats::files_rejected`]. So a wrong local directory costs time, never state.
//!
//! ```no_run
//! use std::sync::Arc;
//! use statebackend::checkpoint::{CheckpointCoordinator, RestoreMode, latest_restorable};
//! use statebackend::checkpoint::local_recovery::LocalRecovery;
//! use statebackend::storage::{CheckpointStorage, LocalDirStorage};
//! use statebackend::{AnyBackend, BackendConfig, CheckpointedBackend, KeyGroupRange};
//! let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new("/shared/checkpoints")?);
//! let local = LocalRecovery::new("/var/lib/job/local-recovery")?;
//! let config = BackendConfig::heap(128, KeyGroupRange::all(128)?);
//! let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 3)?;
//! let mut backend = AnyBackend::open(&config)?;
//! coordinator.begin(1)?;
//! let (part, _) = backend.snapshot(1)?.upload(&local.keeping(&storage))?;
//! local.retain(&coordinator.complete(1, vec![part])?.clone())?;
//! // ... the process restarts on the same machine:
//! let meta = latest_restorable(storage.as_ref())?;
//! let (restored, stats) = local.restore_instance(storage.as_ref(), &meta, &config, RestoreMode::Claim)?;
//! assert_eq!(stats.files_downloaded, 0);
//! # Ok::<(), statebackend::Error>(())
//! ```

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::backends::any::AnyBackend;
use crate::backends::config::BackendConfig;
use crate::backends::interface::CheckpointedBackend;
use crate::model::error::{Error, Result};
use crate::model::format::layout::{SHARED_DIR, parse_checkpoint_dir};
use crate::model::format::metadata::{FetchFile, FileEntry, RandomAccess, SnapshotMetadata};
use crate::model::format::verify_local_file;
use crate::runtime::checkpoint::restore::{RestoreMode, restore_with_fetch};
use crate::storage::{CheckpointStorage, ObjectMeta, RangedReader, StoragePath, fetch_verified};

/// What a restore took from the local copy and what it downloaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Files taken from the local copy (their size and crc32 matched the metadata).
    pub files_local: u64,
    /// Their bytes.
    pub bytes_local: u64,
    /// Files downloaded from the checkpoint storage.
    pub files_downloaded: u64,
    /// Their bytes.
    pub bytes_downloaded: u64,
    /// Local files of a needed name that did not match the metadata (and were downloaded).
    pub files_rejected: u64,
}

/// A directory of local checkpoint copies, for every instance of this process.
#[derive(Debug, Clone)]
pub struct LocalRecovery {
    dir: PathBuf,
}

impl LocalRecovery {
    /// Local recovery in `dir` (created if missing). One directory serves every instance of
    /// a process: files are kept under their storage paths, which name their instance.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be created.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Self { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the local copy of the file at storage path `path` lives.
    fn local_path(&self, path: &StoragePath) -> PathBuf {
        self.dir.join(path.as_str())
    }

    /// `storage`, keeping a local copy of every checkpoint file uploaded through it: pass it
    /// to [`crate::PendingSnapshot::upload`] (the [`crate::CheckpointDriver`] does, given
    /// [`crate::DriverOptions::local_recovery`]).
    pub fn keeping(&self, storage: &Arc<dyn CheckpointStorage>) -> KeepLocalCopies {
        KeepLocalCopies {
            local: self.clone(),
            inner: Arc::clone(storage),
        }
    }

    /// Keeps the local copy of `completed` (a completed checkpoint of the job whose root this
    /// directory mirrors): deletes every local file it does not list, whichever instance wrote
    /// it (instances of an earlier run of the job have other ids), and the directories that
    /// empties. Call it when a checkpoint completes, before the next one begins: a checkpoint
    /// in flight would lose its local copy (it is then downloaded on a restore).
    ///
    /// # Errors
    /// [`Error::Io`] if a file cannot be listed or deleted.
    pub fn retain(&self, completed: &SnapshotMetadata) -> Result<()> {
        let keep: HashSet<PathBuf> = completed
            .files()
            .map(|f| self.local_path(&f.path))
            .collect();
        for top in read_dir_names(&self.dir)? {
            // Only what uploads write: chk-<id>/… and shared/…
            if top != SHARED_DIR && parse_checkpoint_dir(&top).is_none() {
                continue;
            }
            let dir = self.dir.join(&top);
            remove_unlisted(&dir, &keep)?;
            let _ = std::fs::remove_dir(&dir);
        }
        Ok(())
    }

    /// The local copy of `entry`, if there is a file of its path and it matches the entry's
    /// size and crc32. `None` also counts a mismatching file in `stats`.
    fn verified_local(&self, entry: &FileEntry, stats: &Mutex<RecoveryStats>) -> Option<PathBuf> {
        let path = self.local_path(&entry.path);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        let matches =
            meta.is_file() && meta.len() == entry.size && verify_local_file(&path, entry).is_ok();
        if !matches {
            lock(stats).files_rejected += 1;
            return None;
        }
        Some(path)
    }

    /// A fetcher that takes each file from the local copy when it verifies, from `storage`
    /// otherwise, counting both in `stats`.
    pub fn fetcher<'a>(
        &'a self,
        storage: &'a dyn CheckpointStorage,
        stats: &'a Mutex<RecoveryStats>,
    ) -> FetchFile<'a> {
        let fetch = FetchFile::new(storage.transfer_concurrency(), move |entry, local| {
            if let Some(copy) = self.verified_local(entry, stats) {
                link_or_copy(&copy, local)?;
                let mut s = lock(stats);
                s.files_local += 1;
                s.bytes_local += entry.size;
                return Ok(());
            }
            fetch_verified(storage, entry, local)?;
            let mut s = lock(stats);
            s.files_downloaded += 1;
            s.bytes_downloaded += entry.size;
            Ok(())
        });
        if !storage.prefers_ranged_reads() {
            return fetch;
        }
        // A rescaled restore reads parts of data files: from the local copy when it verifies
        // (its blocks are checked again as they are read), in ranges from the store otherwise.
        fetch.with_ranged_reads(move |entry| {
            if let Some(copy) = self.verified_local(entry, stats) {
                let file = std::fs::File::open(&copy).map_err(|e| Error::io(&copy, e))?;
                let mut s = lock(stats);
                s.files_local += 1;
                s.bytes_local += entry.size;
                return Ok(Box::new(file) as Box<dyn RandomAccess>);
            }
            lock(stats).files_downloaded += 1;
            let reader = RangedReader::open(storage, &entry.path, entry.size)?;
            Ok(Box::new(reader) as Box<dyn RandomAccess>)
        })
    }

    /// [`crate::checkpoint::restore_instance`], taking files from the local copy where they
    /// verify; returns the backend and what came from where.
    ///
    /// # Errors
    /// As [`crate::checkpoint::restore_instance`].
    pub fn restore_instance(
        &self,
        storage: &dyn CheckpointStorage,
        meta: &SnapshotMetadata,
        config: &BackendConfig,
        mode: RestoreMode,
    ) -> Result<(AnyBackend, RecoveryStats)> {
        self.restore_instance_into(storage, meta, config, mode)
    }

    /// [`LocalRecovery::restore_instance`] into any [`CheckpointedBackend`].
    ///
    /// # Errors
    /// As [`crate::checkpoint::restore_instance`].
    pub fn restore_instance_into<B: CheckpointedBackend>(
        &self,
        storage: &dyn CheckpointStorage,
        meta: &SnapshotMetadata,
        config: &BackendConfig,
        mode: RestoreMode,
    ) -> Result<(B, RecoveryStats)> {
        let stats = Mutex::new(RecoveryStats::default());
        let backend = restore_with_fetch(meta, config, mode, &self.fetcher(storage, &stats))?;
        let stats = *lock(&stats);
        Ok((backend, stats))
    }
}

fn lock(stats: &Mutex<RecoveryStats>) -> std::sync::MutexGuard<'_, RecoveryStats> {
    stats.lock().unwrap_or_else(|e| e.into_inner())
}

/// The names in `dir` (none if it does not exist).
fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    Ok(entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect())
}

/// Deletes every file below `dir` that is not in `keep`, and the directories it empties.
fn remove_unlisted(dir: &Path, keep: &HashSet<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
    {
        let path = entry.path();
        let file_type = entry.file_type().map_err(|e| Error::io(&path, e))?;
        if file_type.is_dir() {
            remove_unlisted(&path, keep)?;
            let _ = std::fs::remove_dir(&path);
        } else if !keep.contains(&path) {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// Puts `from`'s content at `to`: a hard link for files nobody writes again (SST and data
/// files), or a copy (across filesystems, and for RocksDB's MANIFEST and the like, which a
/// restored DB appends to: a link would change the local copy with it). An existing `to` is
/// replaced.
fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let _ = std::fs::remove_file(to);
    let immutable = from.extension().is_some_and(|x| x == "sst" || x == "sbdf");
    if immutable && std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| Error::io(to, e))
}

/// Whether `path` is a file an upload writes (under `chk-*/` or `shared/`), as opposed to a
/// root's own files (`_metadata`, the coordinator's).
fn is_checkpoint_file(path: &StoragePath) -> bool {
    let top = path.as_str().split('/').next().unwrap_or("");
    top == SHARED_DIR || (parse_checkpoint_dir(top).is_some() && path.components().count() > 2)
}

/// The storage [`LocalRecovery::keeping`] gives: `inner`, plus a local copy of each
/// checkpoint file written. A failure to keep a copy does not fail the upload: the copy only
/// saves a download later, and a restore never trusts it unchecked.
pub struct KeepLocalCopies {
    local: LocalRecovery,
    inner: Arc<dyn CheckpointStorage>,
}

impl KeepLocalCopies {
    fn keep_file(&self, path: &StoragePath, from: &Path) {
        if is_checkpoint_file(path) {
            let _ = link_or_copy(from, &self.local.local_path(path));
        }
    }

    fn keep_bytes(&self, path: &StoragePath, data: &[u8]) {
        if is_checkpoint_file(path) {
            let to = self.local.local_path(path);
            if let Some(parent) = to.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let _ = std::fs::write(&to, data);
        }
    }
}

impl CheckpointStorage for KeepLocalCopies {
    fn put(&self, path: &StoragePath, data: &[u8]) -> Result<()> {
        self.inner.put(path, data)?;
        self.keep_bytes(path, data);
        Ok(())
    }

    fn put_new(&self, path: &StoragePath, data: &[u8]) -> Result<()> {
        self.inner.put_new(path, data)?;
        self.keep_bytes(path, data);
        Ok(())
    }

    fn put_file(&self, path: &StoragePath, local: &Path) -> Result<u64> {
        let written = self.inner.put_file(path, local)?;
        self.keep_file(path, local);
        Ok(written)
    }

    fn get(&self, path: &StoragePath) -> Result<Vec<u8>> {
        self.inner.get(path)
    }

    fn get_to_file(&self, path: &StoragePath, local: &Path) -> Result<u64> {
        self.inner.get_to_file(path, local)
    }

    fn read_to(&self, path: &StoragePath, sink: &mut dyn Write) -> Result<u64> {
        self.inner.read_to(path, sink)
    }

    fn list(&self, prefix: Option<&StoragePath>) -> Result<Vec<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn delete(&self, path: &StoragePath) -> Result<()> {
        self.inner.delete(path)
    }

    fn delete_many(&self, paths: &[StoragePath]) -> Vec<Result<()>> {
        self.inner.delete_many(paths)
    }

    fn exists(&self, path: &StoragePath) -> Result<bool> {
        self.inner.exists(path)
    }

    fn size(&self, path: &StoragePath) -> Result<Option<u64>> {
        self.inner.size(path)
    }

    fn read_range(&self, path: &StoragePath, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        self.inner.read_range(path, range)
    }

    fn prefers_ranged_reads(&self) -> bool {
        self.inner.prefers_ranged_reads()
    }

    fn transfer_concurrency(&self) -> usize {
        self.inner.transfer_concurrency()
    }

    fn location(&self) -> String {
        self.inner.location()
    }
}
