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

use super::{
    OPEN_MARKER, RESTORING_DIR, RocksDbBackend, STAGING_DIR, create_durably, remove_dir_if_present,
    remove_durably,
};
use crate::backends::interface::UploadStats;
use crate::model::codec::{Codec, DefaultCodec};
use crate::model::error::{Error, Result};
use crate::model::format::file_size_and_crc32;
use crate::model::format::layout::{private_path, shared_path};
use crate::model::format::metadata::{FetchFile, FileEntry, InstanceId, InstanceMetadata};
use crate::model::key_group::KeyGroupRange;
use crate::model::state::StateInfo;
use crate::model::state::backend::{BackendKind, KeyedStateBackend};
use crate::storage::{CheckpointStorage, for_each_concurrently};

/// What the backend remembers between checkpoints.
#[derive(Debug, Default)]
pub(crate) struct IncrementalState {
    /// Shared SST files of the last completed checkpoint, by local file name.
    pub(crate) base: HashMap<String, FileEntry>,
    /// The highest checkpoint id snapshotted so far: ids must grow, which is what makes it
    /// safe to reuse files of the last completed checkpoint (see `docs/checkpoint-layout.md`).
    pub(crate) last_snapshot: Option<u64>,
    /// The base was claimed by a restore, from a checkpoint root the next checkpoints may not
    /// be written to: until a checkpoint of this backend completes, an upload reuses a base
    /// file only if the target storage holds it with its size.
    pub(crate) base_from_restore: bool,
}

/// The result of the synchronous part: a staged native checkpoint, ready to upload.
#[derive(Debug)]
pub struct RocksDbSnapshot {
    checkpoint_id: u64,
    staging: PathBuf,
    instance: InstanceMetadata,
    base: HashMap<String, FileEntry>,
    /// Check that the target storage holds each base file before reusing it.
    check_base_in_storage: bool,
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
        self.check_not_poisoned()?;
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
        // The checkpoint holds the state at this call: the cache's changes included.
        self.flush_write_cache_for_checkpoint()?;
        let staging_root = self.dir.path().join(STAGING_DIR);
        std::fs::create_dir_all(&staging_root).map_err(|e| Error::io(&staging_root, e))?;
        let staging = staging_root.join(format!("chk-{checkpoint_id}"));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        }
        rocksdb::checkpoint::Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(&staging))
            .map_err(self.rocks())?;
        self.incremental.last_snapshot = Some(checkpoint_id);
        Ok(RocksDbSnapshot {
            checkpoint_id,
            staging,
            instance: self.instance_metadata(Vec::new()),
            base: self.incremental.base.clone(),
            check_base_in_storage: self.incremental.base_from_restore,
        })
    }

    /// Records that checkpoint `metadata` (this instance's part of it) completed: its shared
    /// files become the base the next checkpoints reference instead of uploading.
    /// Aborted checkpoints are simply never reported here.
    ///
    /// # Errors
    /// [`Error::ForeignInstance`] if `metadata` is not this instance's part (another instance
    /// id, backend, max parallelism or key-group range; for example the part of another
    /// instance of the same checkpoint): its files are another lineage's, and reusing them
    /// would make the next checkpoint unrestorable. Nothing changes then.
    pub fn notify_checkpoint_complete(&mut self, metadata: &InstanceMetadata) -> Result<()> {
        metadata.check_belongs_to(
            self.instance_id,
            BackendKind::RocksDb,
            self.assigner.max_parallelism(),
            self.range,
        )?;
        self.incremental.base = base_of(metadata);
        self.incremental.base_from_restore = false;
        Ok(())
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
            // Taken at the barrier by `CheckpointedBackend::snapshot`, set on upload.
            operator_state: Default::default(),
            operator: String::new(),
        }
    }

    /// Restores a backend from an instance's checkpoint files. `fetch(entry, local_path)` puts
    /// each file into the new DB directory (a copy); every file's size and crc32 are
    /// verified before the DB is opened. With `claim`, the restored shared files become the
    /// base of the next incremental checkpoint; without, the next checkpoint uploads everything.
    ///
    /// `target`: the working directory (`None`: a temporary one), and whether a directory that
    /// is not empty (a DB, or a marker of an unclean close or an unfinished restore) may be
    /// replaced; an `Option<PathBuf>` alone never replaces, a [`crate::BackendConfig`] says.
    ///
    /// `complete`: the restored DB is the whole restored state. A rescaled restore passes
    /// `false` for its base instance, keeps the working directory marked as an interrupted
    /// restore (`RESTORE_MARKER`) while it trims and merges, and calls
    /// [`RocksDbBackend::finish_restore`] at the end.
    ///
    /// # Errors
    /// [`Error::UncleanWorkingDirectory`] / [`Error::Incompatible`] naming a directory that is
    /// not empty, unless `target` allows replacing it; [`Error::DirectoryLocked`] if a live
    /// backend holds it; [`Error::SizeMismatch`] / [`Error::ChecksumMismatch`] naming the file;
    /// RocksDB errors. A failed restore leaves no DB and no marker behind.
    pub(crate) fn restore_files(
        metadata: &InstanceMetadata,
        target: impl Into<RestoreTarget>,
        options: super::RocksDbOptions,
        claim: bool,
        complete: bool,
        fetch: &FetchFile<'_>,
    ) -> Result<Self> {
        let target = target.into();
        let dir = super::WorkingDir::create(target.working_dir)?;
        prepare_restore_dir(
            dir.path(),
            matches!(dir, super::WorkingDir::Explicit(_)),
            target.replace_existing,
            &options,
        )?;
        let db_path = dir.path().join("db");
        // Files are fetched into a staging directory and it becomes `db` only once every file
        // is verified: a crash mid-download leaves just the staging directory, which the retry
        // clears, instead of a partial `db`.
        let staging = dir.path().join(RESTORING_DIR);
        remove_dir_if_present(&staging)?;
        std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        let path = dir.path().to_path_buf();
        let restored = Self::restore_into(metadata, dir, &staging, &db_path, options, claim, fetch)
            .and_then(|backend| {
                if complete {
                    backend.finish_restore()?;
                }
                Ok(backend)
            });
        if restored.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
            discard_restore(&path);
        }
        restored
    }

    /// A restore that builds its DB from nothing (a savepoint's rows): prepares `working_dir`
    /// (refuses a directory that is not empty, or replaces it with `replace_existing`, as
    /// [`RocksDbBackend::restore_files`]), writes the restore marker durably, opens a fresh DB,
    /// runs `fill` (the ingest), then [`RocksDbBackend::finish_restore`]. On any error the DB
    /// and the markers are removed, so a retry starts clean; a crash leaves the restore marker,
    /// so the directory is refused on open and replaced by a retry that asks to.
    ///
    /// # Errors
    /// As [`RocksDbBackend::restore_files`], and whatever `fill` returns.
    pub(crate) fn restore_fresh(
        max_parallelism: u32,
        range: KeyGroupRange,
        working_dir: Option<PathBuf>,
        options: super::RocksDbOptions,
        replace_existing: bool,
        fill: &mut dyn FnMut(&mut RocksDbBackend) -> Result<()>,
    ) -> Result<RocksDbBackend> {
        let dir = super::WorkingDir::create(working_dir)?;
        let explicit = matches!(dir, super::WorkingDir::Explicit(_));
        prepare_restore_dir(dir.path(), explicit, replace_existing, &options)?;
        let path = dir.path().to_path_buf();
        if explicit {
            create_durably(&path, RESTORE_MARKER)?;
        }
        let mut backend = match Self::open_in(max_parallelism, range, dir, options, false) {
            Ok(backend) => backend,
            Err(e) => {
                discard_restore(&path);
                return Err(e);
            }
        };
        match fill(&mut backend).and_then(|()| backend.finish_restore()) {
            Ok(()) => Ok(backend),
            Err(e) => {
                backend.discard();
                discard_restore(&path);
                Err(e)
            }
        }
    }

    /// Declares the restored DB complete: flushes it (a rescaled restore's range deletes and
    /// instance record are in memtables, and the WAL is off), then removes the working
    /// directory's interrupted-restore marker, durably, so that the directory can be reopened.
    ///
    /// # Errors
    /// RocksDB and I/O errors.
    pub(crate) fn finish_restore(&self) -> Result<()> {
        self.flush()?;
        remove_durably(self.dir.path(), RESTORE_MARKER)
    }

    fn restore_into(
        metadata: &InstanceMetadata,
        dir: super::WorkingDir,
        staging: &Path,
        db_path: &Path,
        options: super::RocksDbOptions,
        claim: bool,
        fetch: &FetchFile<'_>,
    ) -> Result<Self> {
        for entry in &metadata.files {
            crate::model::format::metadata::validate_local_name(&entry.local_name)?;
        }
        // `fetch` verifies each file's size and crc32; several files at once where the
        // storage allows.
        for_each_concurrently(&metadata.files, fetch.concurrency(), |entry| {
            fetch.fetch(entry, &staging.join(&entry.local_name))
        })?;
        // The marker is durable before `db/` can exist, and removed only when the caller
        // declares the DB complete: a crash in between leaves a `db/` that reopening refuses
        // and a restore that asks to replaces.
        create_durably(dir.path(), RESTORE_MARKER)?;
        std::fs::rename(staging, db_path).map_err(|e| Error::io(db_path, e))?;
        let mut backend = Self::open_in(
            metadata.max_parallelism,
            metadata.key_groups,
            dir,
            options,
            false,
        )?;
        let restored: Vec<StateInfo> = backend.states();
        if restored != metadata.states {
            backend.discard();
            return Err(Error::corrupt(
                metadata.instance_id.hex(),
                "the restored DB's states differ from the metadata's",
            ));
        }
        if claim {
            backend.incremental.base = base_of(metadata);
            backend.incremental.base_from_restore = true;
        }
        Ok(backend)
    }
}

/// Where a restore puts its DB, and whether it may replace what is there.
#[derive(Debug)]
pub(crate) struct RestoreTarget {
    /// The working directory; `None` for a temporary one.
    pub(crate) working_dir: Option<PathBuf>,
    /// Replace a working directory that is not empty.
    pub(crate) replace_existing: bool,
}

impl From<Option<PathBuf>> for RestoreTarget {
    fn from(working_dir: Option<PathBuf>) -> Self {
        Self {
            working_dir,
            replace_existing: false,
        }
    }
}

impl From<&crate::backends::config::BackendConfig> for RestoreTarget {
    fn from(config: &crate::backends::config::BackendConfig) -> Self {
        Self {
            working_dir: config.working_dir.clone(),
            replace_existing: config.replace_existing,
        }
    }
}

/// Makes the explicit working directory `dir` ready for a restore. A directory whose last
/// backend did not close cleanly (open marker), that holds an unfinished restore (restore
/// marker and `db/`) or a DB is refused, unless `replace`: then, once no live backend holds the
/// DB, the restore marker is written (so a crash during the replacement still leaves the
/// directory marked) and the DB, the open marker and every leftover are removed.
fn prepare_restore_dir(
    dir: &Path,
    explicit: bool,
    replace: bool,
    options: &super::RocksDbOptions,
) -> Result<()> {
    if !explicit {
        return Ok(());
    }
    let db = dir.join("db");
    let has_db = db.exists();
    let unclean = dir.join(OPEN_MARKER).exists() || (has_db && dir.join(RESTORE_MARKER).exists());
    if !replace {
        if unclean {
            return Err(Error::UncleanWorkingDirectory {
                path: dir.to_path_buf(),
            });
        }
        if has_db {
            return Err(Error::Incompatible {
                reason: format!(
                    "restore target {} already holds a backend's database; restore with replace_existing to replace it",
                    dir.display()
                ),
            });
        }
    } else if has_db || unclean {
        if has_db {
            check_not_in_use(&db, options)?;
        }
        create_durably(dir, RESTORE_MARKER)?;
        remove_dir_if_present(&db)?;
        remove_durably(dir, OPEN_MARKER)?;
    }
    for leftover in [STAGING_DIR, RESTORING_DIR] {
        remove_dir_if_present(&dir.join(leftover))?;
    }
    Ok(())
}

/// Fails with [`Error::DirectoryLocked`] if a live backend holds the DB in `db` (RocksDB's lock
/// is the only reliable sign, so the DB is opened, without compactions, and closed again). A DB
/// that cannot be opened for any other reason is not in use.
fn check_not_in_use(db: &Path, options: &super::RocksDbOptions) -> Result<()> {
    let mut db_options = options.db_options(&rocksdb::Cache::new_lru_cache(1 << 20));
    db_options.create_if_missing(false);
    db_options.set_disable_auto_compactions(true);
    let Ok(families) = rocksdb::DB::list_cf(&db_options, db) else {
        return Ok(());
    };
    match rocksdb::DB::open_cf(&db_options, db, families) {
        Err(e) => match super::rocks_error(db, e) {
            locked @ Error::DirectoryLocked { .. } => Err(locked),
            _ => Ok(()),
        },
        Ok(_) => Ok(()),
    }
}

impl RocksDbBackend {
    /// Gives up a restore in progress: closes the DB without the clean-close flush, then
    /// removes it and both markers (durably), so that a retry into the directory starts clean.
    pub(crate) fn abandon_restore(self) {
        let path = self.dir.path().to_path_buf();
        let explicit = matches!(self.dir, super::WorkingDir::Explicit(_));
        self.discard();
        if explicit {
            discard_restore(&path);
        }
    }
}

/// Removes what a failed restore left in working directory `dir`: its DB and its markers.
fn discard_restore(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir.join("db"));
    let _ = remove_durably(dir, OPEN_MARKER);
    let _ = remove_durably(dir, RESTORE_MARKER);
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
        let id = self.instance.instance_id;
        // Each file is reused from the base or uploaded, `transfer_concurrency` at a time.
        let outcomes = for_each_concurrently(&names, storage.transfer_concurrency(), |name| {
            let local = self.staging.join(name);
            let is_sst = name.ends_with(".sst");
            if is_sst {
                if let Some(reused) = self.reusable(name, &local, storage)? {
                    return Ok((reused.clone(), false));
                }
            }
            let (size, crc32) = file_size_and_crc32(&local)?;
            let path = if is_sst {
                shared_path(id, name)?
            } else {
                private_path(self.checkpoint_id, id, name)?
            };
            storage.put_file(&path, &local)?;
            let entry = FileEntry {
                path,
                local_name: name.clone(),
                size,
                crc32,
                shared: is_sst,
            };
            Ok((entry, true))
        })?;
        let mut stats = UploadStats::default();
        let mut files = Vec::with_capacity(outcomes.len());
        for (entry, uploaded) in outcomes {
            if uploaded {
                stats.files_uploaded += 1;
                stats.bytes_uploaded += entry.size;
            } else {
                stats.files_reused += 1;
                stats.bytes_reused += entry.size;
            }
            files.push(entry);
        }
        let mut instance = self.instance.clone();
        instance.files = files;
        Ok((instance, stats))
    }
}

impl RocksDbSnapshot {
    /// The base entry the staged SST file `name` (at `local`) may reference instead of being
    /// uploaded: a shared file of the base with the same local name and the same size (SST
    /// file names are unique within one DB lineage, never across lineages, so a name alone
    /// proves nothing). After a claimed restore, also only if `storage` holds the entry's
    /// file with its size: the restored checkpoint's root may not be the one written to now.
    fn reusable(
        &self,
        name: &str,
        local: &Path,
        storage: &dyn CheckpointStorage,
    ) -> Result<Option<&FileEntry>> {
        let Some(entry) = self.base.get(name) else {
            return Ok(None);
        };
        if !entry.shared || entry.local_name != name {
            return Ok(None);
        }
        let size = std::fs::metadata(local)
            .map_err(|e| Error::io(local, e))?
            .len();
        if size != entry.size {
            return Ok(None);
        }
        if self.check_base_in_storage && storage.size(&entry.path)? != Some(entry.size) {
            return Ok(None);
        }
        Ok(Some(entry))
    }
}

impl Drop for RocksDbSnapshot {
    fn drop(&mut self) {
        // The staging directory holds hard links only; removing it frees nothing the DB needs.
        let _ = std::fs::remove_dir_all(&self.staging);
    }
}
