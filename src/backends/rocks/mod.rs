//! The RocksDB backend: state as serialized rows in an embedded RocksDB.
//!
//! One RocksDB instance per backend instance, one column family per state, rows laid out as
//! `layout.rs` describes. The write-ahead log is off: durability comes from checkpoints, as in
//! Flink. This is the only module that names RocksDB types.

mod checkpointed;
mod export;
mod layout;
mod merge;
mod options;
mod snapshot;
mod ttl_filter;
mod write_cache;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamily, DB, Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions};

use crate::model::codec::{Codec, CodecError, DefaultCodec};
use crate::model::error::{Error, Result};
use crate::model::key_group::check_range;
use crate::model::key_group::{KeyGroup, KeyGroupAssigner, KeyGroupRange};
use crate::model::state::backend::{
    BackendKind, KeyedStateBackend, MapEntries, StateKeys, find_registered, ttl_change,
};
use crate::model::state::key::KeyRef;
use crate::model::state::migration::RowMigration;
use crate::model::state::rows::{decode_list, encode_list_element};
use crate::model::state::ttl::rows::{RowExpiry, row_expiry};
use crate::model::state::ttl::{StateTtlConfig, TtlChange, TtlClock};
use crate::model::state::{
    StateId, StateInfo, StateKey, StateKind, StateValue, StoredState, next_backend_identity,
};
use layout::{KEY_GROUP_PREFIX_LEN, key_group_span};
use std::collections::BTreeMap;

pub use options::{CompactionStyle, Memtable, RocksDbOptions};
pub(crate) use snapshot::RESTORE_MARKER;
pub use snapshot::RocksDbSnapshot;
pub use write_cache::WriteCacheStats;

use crate::model::format::metadata::InstanceId;
use snapshot::IncrementalState;
use ttl_filter::TtlFilters;
use write_cache::{Cached, CachedRef, DirtyRow, MapChange, RowWrite, Sweep, WriteCache, row_cost};

/// Key prefix, in the default column family, of the registered-state records.
const STATE_RECORD_PREFIX: &[u8] = b"statebackend/state/";
/// Key of the instance record: the max parallelism and key-group range the rows were written
/// for (`rocksdb-layout.md` §3).
const INSTANCE_RECORD_KEY: &[u8] = b"statebackend/instance";
/// Version byte of the instance record's value.
const INSTANCE_RECORD_VERSION: u8 = 1;

/// A file in an explicit working directory while a backend has it open (`rocksdb-layout.md`
/// §9): created (and made durable) when the backend opens, removed (durably) when it closes
/// cleanly. The write-ahead log is off, so a directory a process left without closing holds a
/// DB in a state no checkpoint had: [`RocksDbBackend::open`] refuses it while the marker is
/// there.
pub(crate) const OPEN_MARKER: &str = "db.open";
/// Directory, in the working directory, of snapshot staging areas and savepoint views.
const STAGING_DIR: &str = "staging";
/// Directory a checkpoint restore downloads into before it becomes `db/`.
const RESTORING_DIR: &str = "db.restoring";
/// Prefix of the directories bulk imports write their SST files into.
const IMPORT_DIR_PREFIX: &str = "import-";

/// From this many bytes of changed rows, a checkpoint writes the write-back cache's rows as SST
/// files instead of through the memtables.
const INGEST_AT_CHECKPOINT_BYTES: usize = 256 << 10;

/// Where the backend keeps its files: a temporary directory removed on drop, or the engine's.
enum WorkingDir {
    Temporary(tempfile::TempDir),
    Explicit(ExplicitDir),
}

/// The engine's working directory, and what the open marker ([`OPEN_MARKER`]) says about it.
struct ExplicitDir {
    path: PathBuf,
    /// This backend wrote the open marker.
    marked: bool,
    /// The backend closed cleanly (its memtables are flushed): the marker goes on drop.
    closed_cleanly: bool,
}

impl Drop for ExplicitDir {
    fn drop(&mut self) {
        // Runs after the DB closed (`dir` is the backend's last field).
        if self.marked && self.closed_cleanly {
            let _ = remove_durably(&self.path, OPEN_MARKER);
        }
    }
}

impl WorkingDir {
    /// The engine's directory (created if missing), or a new temporary one.
    fn create(working_dir: Option<PathBuf>) -> Result<Self> {
        Ok(match working_dir {
            Some(path) => {
                std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
                WorkingDir::Explicit(ExplicitDir {
                    path,
                    marked: false,
                    closed_cleanly: false,
                })
            }
            None => WorkingDir::Temporary(
                tempfile::Builder::new()
                    .prefix("statebackend-rocksdb-")
                    .tempdir()
                    .map_err(|e| Error::io(std::env::temp_dir(), e))?,
            ),
        })
    }

    fn path(&self) -> &Path {
        match self {
            WorkingDir::Temporary(t) => t.path(),
            WorkingDir::Explicit(e) => &e.path,
        }
    }

    /// The explicit directory, if this is one.
    fn explicit(&mut self) -> Option<&mut ExplicitDir> {
        match self {
            WorkingDir::Temporary(_) => None,
            WorkingDir::Explicit(e) => Some(e),
        }
    }
}

/// Removes what a backend that did not close cleanly may have left in working directory `path`
/// besides its DB: snapshot staging areas and savepoint views (hard links and copies of DB
/// files), bulk-import directories and a restore's download directory. Only with the DB's lock
/// held.
fn remove_leftovers(path: &Path) -> Result<()> {
    for name in [STAGING_DIR, RESTORING_DIR] {
        remove_dir_if_present(&path.join(name))?;
    }
    for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
        let entry = entry.map_err(|e| Error::io(path, e))?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(IMPORT_DIR_PREFIX)
        {
            remove_dir_if_present(&entry.path())?;
        }
    }
    Ok(())
}

/// Removes `dir` and everything in it; a missing `dir` is fine.
fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Creates the empty file `dir/name` and makes it and its directory entry durable.
fn create_durably(dir: &Path, name: &str) -> Result<()> {
    let file = dir.join(name);
    std::fs::File::create(&file)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(&file, e))?;
    crate::storage::sync_dir(dir)
}

/// Removes the file `dir/name` (a missing one is fine) and makes the removal durable.
fn remove_durably(dir: &Path, name: &str) -> Result<()> {
    let file = dir.join(name);
    match std::fs::remove_file(&file) {
        Ok(()) => crate::storage::sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(&file, e)),
    }
}

struct RocksState {
    info: StateInfo,
    cf_name: String,
    /// Whether the engine registered the state on this backend object; until then (a state
    /// restored or reopened) its time to live may change ([`ttl_change`]).
    registered: bool,
    /// Where the state's sweep of the write cache for expired rows stands.
    sweep: Sweep,
}

/// Keyed state in an embedded RocksDB.
///
/// # Examples
/// ```
/// use statebackend::{KeyGroupRange, KeyedStateBackend, ValueStateDescriptor};
/// use statebackend::rocks::{RocksDbBackend, RocksDbOptions};
/// let mut backend = RocksDbBackend::open(128, KeyGroupRange::all(128)?, None, RocksDbOptions::default())?;
/// let totals = backend.value_state(&ValueStateDescriptor::<u64, (), i64>::new("totals"))?;
/// totals.put(&mut backend, &1, &(), -5)?;
/// assert_eq!(totals.get(&backend, &1, &())?, Some(-5));
/// # Ok::<(), statebackend::Error>(())
/// ```
pub struct RocksDbBackend {
    // Field order matters: the DB closes before the working directory is removed.
    db: DB,
    cache: rocksdb::Cache,
    write_options: WriteOptions,
    options: RocksDbOptions,
    assigner: KeyGroupAssigner,
    range: KeyGroupRange,
    states: Vec<RocksState>,
    instance_id: InstanceId,
    /// Stamped into every handle this backend issues ([`StateId`]).
    identity: u64,
    incremental: IncrementalState,
    /// Rows in front of RocksDB ([`RocksDbOptions::write_cache_bytes`]); reads fill it, so it
    /// changes behind `&self`.
    write_cache: Option<RefCell<WriteCache>>,
    dir: WorkingDir,
    /// The instance's operator (non-keyed) state.
    pub(crate) operator_state: crate::model::state::operator::OperatorState,
    /// The TTL clock and what each column family's compaction filter drops.
    ttl: Arc<TtlFilters>,
    /// Why the backend may not be used any more: a migration failed after it began writing.
    poisoned: Option<String>,
}

impl Drop for RocksDbBackend {
    /// A clean close of an explicit working directory: flushes the memtables (the WAL is off),
    /// then the open marker is removed once the DB has closed. A drop while panicking is not a
    /// clean close, nor is a failed flush: the marker stays and the directory must be restored.
    fn drop(&mut self) {
        let marked = matches!(&self.dir, WorkingDir::Explicit(e) if e.marked);
        // A poisoned backend holds rows of two versions: its directory must not reopen.
        if marked && self.poisoned.is_none() && !std::thread::panicking() && self.flush().is_ok() {
            if let Some(explicit) = self.dir.explicit() {
                explicit.closed_cleanly = true;
            }
        }
    }
}

/// The one mapping of RocksDB's errors: a full disk (RocksDB's `NoSpace` status, "No space
/// left on device") is [`Error::NoSpace`] for `dir`, a held `LOCK` file is
/// [`Error::DirectoryLocked`], everything else [`Error::RocksDb`].
fn rocks_error(dir: &Path, e: rocksdb::Error) -> Error {
    let message = e.into_string();
    if message.contains("No space left on device") {
        Error::NoSpace {
            path: dir.to_path_buf(),
            message,
        }
    } else if message.contains("lock file") || message.contains("/LOCK") {
        // RocksDB reports a held LOCK file as "While lock file: <dir>/LOCK: ...".
        Error::DirectoryLocked {
            path: dir.to_path_buf(),
            message,
        }
    } else {
        Error::RocksDb { message }
    }
}

/// [`rocks_error`] for `dir`, as a `map_err` argument.
fn rocks_err(dir: &Path) -> impl Fn(rocksdb::Error) -> Error + '_ {
    move |e| rocks_error(dir, e)
}

/// [`Error::Encode`] of state `state`, as a `map_err` argument.
fn encode_err(state: &str) -> impl Fn(crate::model::codec::CodecError) -> Error + '_ {
    move |e| Error::Encode {
        state: state.to_owned(),
        message: e.0,
    }
}

/// [`Error::Decode`] of state `state`, as a `map_err` argument.
fn decode_err(state: &str) -> impl Fn(crate::model::codec::CodecError) -> Error + '_ {
    move |e| Error::Decode {
        state: state.to_owned(),
        message: e.0,
    }
}

/// Bytes of cached values one access to a state with a time to live pays to have judged for
/// expiry (`KeyedStateBackend::ttl_cleanup`): a few nanoseconds per access; every cached row is
/// looked at once per `cached value bytes ÷ 64` accesses (at least 8 bytes a row).
const CACHE_SWEEP_PER_ACCESS: usize = 64;

fn cf_name(state: &str) -> String {
    format!("state/{state}")
}

/// The state records in `db`'s default column family (in directory `path`), in registration
/// order.
fn read_state_records(db: &DB, path: &Path) -> Result<Vec<StateInfo>> {
    let mut read = ReadOptions::default();
    read.set_iterate_range(rocksdb::PrefixRange(STATE_RECORD_PREFIX));
    read.set_total_order_seek(true); // as every iterator (`prefix_read_options`)
    db.iterator_opt(IteratorMode::Start, read)
        .map(|item| {
            let (_, value) = item.map_err(rocks_err(path))?;
            decode_state_record(&value).map_err(decode_err("<state registry>"))
        })
        .collect()
}

/// A state's record in the default column family (`docs/rocksdb-layout.md`): the codec's
/// encoding of its info, which leaves out the time to live and schema version (records
/// written before them are exactly this), then, for a state with either, a trailer: the TTL
/// flag (0 or 1), the TTL's 11 bytes if 1, and the schema version (u32 little-endian).
fn encode_state_record(info: &StateInfo) -> Result<Vec<u8>, CodecError> {
    let mut record = DefaultCodec::default().encode(info)?;
    if info.ttl.is_some() || info.schema_version != 0 {
        match &info.ttl {
            Some(ttl) => {
                record.push(1);
                record.extend_from_slice(&ttl.to_bytes());
            }
            None => record.push(0),
        }
        record.extend_from_slice(&info.schema_version.to_le_bytes());
    }
    Ok(record)
}

fn decode_state_record(bytes: &[u8]) -> Result<StateInfo, CodecError> {
    let (mut info, used): (StateInfo, usize) = DefaultCodec::default().decode_prefix(bytes)?;
    let rest = &bytes[used..];
    if rest.is_empty() {
        return Ok(info);
    }
    let bad = || CodecError(format!("the {} bytes after a state record", rest.len()));
    let (ttl, version) = match rest.split_first() {
        Some((0, version)) => (None, version),
        Some((1, tail)) if tail.len() > StateTtlConfig::ENCODED_BYTES => {
            let (ttl, version) = tail.split_at(StateTtlConfig::ENCODED_BYTES);
            (
                Some(StateTtlConfig::from_bytes(ttl).ok_or_else(bad)?),
                version,
            )
        }
        _ => return Err(bad()),
    };
    let version: [u8; 4] = version.try_into().map_err(|_| bad())?;
    info.ttl = ttl;
    info.schema_version = u32::from_le_bytes(version);
    Ok(info)
}

impl RocksDbBackend {
    /// Opens a backend in `working_dir` (created if missing; kept on drop), or in a new
    /// temporary directory (removed on drop) when `None`. A directory holding a backend's DB that
    /// was closed cleanly (dropped, not in a panic) is reopened with its states.
    ///
    /// # Errors
    /// Invalid parallelism or range; [`Error::DirectoryLocked`] if another live backend holds the
    /// directory; [`Error::UncleanWorkingDirectory`] if the directory's last backend did not close
    /// cleanly (its process died, or a restore into it did not finish): the write-ahead log is
    /// off, so its DB may hold state no checkpoint had; restore the instance into the directory
    /// with [`crate::BackendConfig::replace_existing`] set instead; I/O and RocksDB errors.
    pub fn open(
        max_parallelism: u32,
        range: KeyGroupRange,
        working_dir: Option<PathBuf>,
        options: RocksDbOptions,
    ) -> Result<Self> {
        let dir = WorkingDir::create(working_dir)?;
        if dir.path().join(RESTORE_MARKER).exists() {
            if dir.path().join("db").exists() {
                // An unfinished restore (or its removal, cut short): refused before RocksDB
                // opens anything, whatever is left of `db/` (even without its `CURRENT`).
                return Err(Error::UncleanWorkingDirectory {
                    path: dir.path().to_path_buf(),
                });
            }
            // A restore stopped before its DB appeared: nothing to protect.
            remove_durably(dir.path(), RESTORE_MARKER)?;
        }
        Self::open_in(max_parallelism, range, dir, options, true)
    }

    /// Opens (or creates) the DB in `dir/db`. In an explicit directory, once the DB's lock is
    /// held: with `refuse_unclean`, a DB that existed is refused if a marker says it was not
    /// closed cleanly; leftovers of an unclean close are removed, and the open marker written.
    fn open_in(
        max_parallelism: u32,
        range: KeyGroupRange,
        mut dir: WorkingDir,
        options: RocksDbOptions,
        refuse_unclean: bool,
    ) -> Result<Self> {
        let assigner = KeyGroupAssigner::new(max_parallelism)?;
        check_range(max_parallelism, range)?;
        options.validate()?;
        let db_path = dir.path().join("db");
        let cache = rocksdb::Cache::new_lru_cache(options.block_cache_bytes);
        let db_options = options.db_options(&cache);
        let existed = db_path.join("CURRENT").exists();
        // Any `db/` at all: a crash while it was being removed may have taken `CURRENT` first.
        let had_db = db_path.exists();
        let existing_cfs = if existed {
            DB::list_cf(&db_options, &db_path).map_err(rocks_err(&db_path))?
        } else {
            Vec::new()
        };
        // A column family's options depend on its state's kind (the memtable), and the kinds
        // are in the state records, so read them first from the default column family alone.
        let records = if existing_cfs.is_empty() || options.memtable == Memtable::SkipList {
            Vec::new()
        } else {
            let db = DB::open_cf_for_read_only(&db_options, &db_path, ["default"], false)
                .map_err(rocks_err(&db_path))?;
            read_state_records(&db, &db_path)?
        };
        let ttl = Arc::new(TtlFilters::default());
        let descriptors: Vec<_> = existing_cfs
            .iter()
            .filter(|name| name.as_str() != "default")
            .map(|name| {
                // A column family without a record (its state's registration did not reach
                // disk) gets the options that suit every kind.
                let kind = records
                    .iter()
                    .find(|r| cf_name(&r.name) == *name)
                    .map_or(StateKind::Map, |r| r.kind);
                let mut cf_options = options.cf_options(&cache, kind);
                ttl.install(&mut cf_options, name);
                rocksdb::ColumnFamilyDescriptor::new(name, cf_options)
            })
            .collect();
        let db = DB::open_cf_descriptors(&db_options, &db_path, descriptors)
            .map_err(rocks_err(&db_path))?;
        // The DB's lock is held from here on: no live backend uses the directory.
        if let Some(explicit) = dir.explicit() {
            let path = &explicit.path;
            let unclean = [OPEN_MARKER, RESTORE_MARKER]
                .iter()
                .any(|marker| path.join(marker).exists());
            if refuse_unclean && had_db && unclean {
                return Err(Error::UncleanWorkingDirectory { path: path.clone() });
            }
            remove_leftovers(path)?;
            create_durably(path, OPEN_MARKER)?;
            explicit.marked = true;
        }
        let mut write_options = WriteOptions::default();
        write_options.disable_wal(true);
        let write_cache = (options.write_cache_bytes > 0).then(|| {
            RefCell::new(WriteCache::new(
                options.write_cache_bytes,
                options.write_cache_dirty_bytes,
            ))
        });
        let mut backend = Self {
            db,
            cache,
            write_options,
            options,
            assigner,
            range,
            states: Vec::new(),
            instance_id: InstanceId::random(),
            identity: next_backend_identity(),
            operator_state: Default::default(),
            incremental: IncrementalState::default(),
            write_cache,
            dir,
            ttl,
            poisoned: None,
        };
        backend.check_instance_record()?;
        backend.load_state_records()?;
        Ok(backend)
    }

    /// Closes the backend without the clean-close flush and keeps nothing it wrote: its
    /// directory is about to be removed. The open marker stays; the caller removes it.
    pub(crate) fn discard(mut self) {
        if let Some(explicit) = self.dir.explicit() {
            explicit.marked = false;
        }
    }

    /// Checks that the database was written for this max parallelism and key-group range
    /// (rows are addressed by key group, so either differing would make state silently
    /// unreachable), or records them in a database that has no record yet.
    fn check_instance_record(&self) -> Result<()> {
        let found = self.db.get(INSTANCE_RECORD_KEY).map_err(self.rocks())?;
        let Some(bytes) = found else {
            return self.write_instance_record();
        };
        let corrupt = |what: &str| {
            Error::corrupt(
                self.dir.path().display().to_string(),
                format!("instance record: {what}"),
            )
        };
        let (&version, rest) = bytes.split_first().ok_or_else(|| corrupt("empty"))?;
        if version != INSTANCE_RECORD_VERSION {
            return Err(Error::Incompatible {
                reason: format!(
                    "{} was written with instance record version {version}; this build reads {INSTANCE_RECORD_VERSION}",
                    self.dir.path().display()
                ),
            });
        }
        if rest.len() != 12 {
            return Err(corrupt("not 12 bytes after the version"));
        }
        let words: Vec<u32> = rest
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let [max_parallelism, start, end] = words[..] else {
            return Err(corrupt("not 12 bytes after the version"));
        };
        if max_parallelism != self.assigner.max_parallelism()
            || (start, end) != (self.range.start(), self.range.end())
        {
            return Err(Error::Incompatible {
                reason: format!(
                    "{} holds key groups [{start}, {end}) of max parallelism {max_parallelism}, not {} of {}; restore a checkpoint or savepoint to change either",
                    self.dir.path().display(),
                    self.range,
                    self.assigner.max_parallelism()
                ),
            });
        }
        Ok(())
    }

    /// Writes the instance record for the current max parallelism and range.
    fn write_instance_record(&self) -> Result<()> {
        let mut value = vec![INSTANCE_RECORD_VERSION];
        for word in [
            self.assigner.max_parallelism(),
            self.range.start(),
            self.range.end(),
        ] {
            value.extend_from_slice(&word.to_le_bytes());
        }
        self.put_record(INSTANCE_RECORD_KEY, &value)
    }

    /// Writes a record of the `default` column family and flushes it: records are written
    /// rarely and must survive a crash (the WAL is off), or a reopen would miss a state or
    /// accept another key-group range.
    fn put_record(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.db
            .put_opt(key, value, &self.write_options)
            .and_then(|()| self.db.flush())
            .map_err(self.rocks())
    }

    /// The working directory.
    pub fn working_dir(&self) -> &Path {
        self.dir.path()
    }

    /// [`rocks_error`] for this backend's working directory, as a `map_err` argument.
    fn rocks(&self) -> impl Fn(rocksdb::Error) -> Error + '_ {
        rocks_err(self.dir.path())
    }

    /// The options the backend was opened with.
    pub fn options(&self) -> &RocksDbOptions {
        &self.options
    }

    /// A RocksDB property (`rocksdb.stats`, `rocksdb.num-entries-active-mem-table`, ...) of one
    /// state's column family, for monitoring: RocksDB's own figures for the state's memtables,
    /// files and compactions. `None` if the state is not registered or RocksDB does not know the
    /// property.
    ///
    /// # Errors
    /// [`Error::RocksDb`].
    pub fn state_property(&self, state: &str, property: &str) -> Result<Option<String>> {
        let Some(cf) = self.db.cf_handle(&cf_name(state)) else {
            return Ok(None);
        };
        self.db
            .property_value_cf(cf, property)
            .map_err(self.rocks())
    }

    /// Writes every column family's memtables (and the write-back cache's changes before
    /// them) to SST files and waits for it.
    ///
    /// The write-ahead log is off (checkpoints are the durability mechanism), so state written
    /// since the last checkpoint lives only in memtables; a checkpoint flushes on its own. This
    /// is for callers that want the state on disk without taking a checkpoint.
    ///
    /// # Errors
    /// [`Error::RocksDb`].
    pub fn flush(&self) -> Result<()> {
        self.flush_write_cache()?;
        let names = std::iter::once(rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
            .chain(self.states.iter().map(|s| s.cf_name.as_str()));
        let handles: Vec<_> = names.filter_map(|name| self.db.cf_handle(name)).collect();
        self.db
            .flush_cfs_opt(&handles, &rocksdb::FlushOptions::default())
            .map_err(self.rocks())
    }

    /// Compacts every state's column family whole, after writing back the write cache and
    /// flushing the memtables: what RocksDB does over time, at once. Compactions drop the
    /// expired rows of states with a time to live ([`crate::state::ttl`]), so after this
    /// no row whose every element had expired when it started remains on disk.
    ///
    /// # Errors
    /// [`Error::RocksDb`].
    pub fn compact(&self) -> Result<()> {
        self.flush()?;
        let mut options = rocksdb::CompactOptions::default();
        options.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        for state in &self.states {
            if let Some(cf) = self.db.cf_handle(&state.cf_name) {
                self.db
                    .compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &options);
            }
        }
        Ok(())
    }

    /// Reads the registered states recorded in the default column family.
    fn load_state_records(&mut self) -> Result<()> {
        for info in read_state_records(&self.db, self.dir.path())? {
            let cf_name = cf_name(&info.name);
            if self.db.cf_handle(&cf_name).is_none() {
                return Err(Error::corrupt(
                    self.dir.path().display().to_string(),
                    format!("state '{}' has no column family", info.name),
                ));
            }
            self.ttl.set(&cf_name, info.kind, info.ttl);
            self.states.push(RocksState {
                info,
                cf_name,
                registered: false,
                sweep: Sweep::default(),
            });
        }
        Ok(())
    }

    /// The id of state `info.name`, creating its column family and its record in the default
    /// column family if it is new; registration and restore share this.
    ///
    /// # Errors
    /// [`Error::StateMismatch`] if the name is registered with another kind or types.
    pub(crate) fn ensure_state(&mut self, info: &StateInfo) -> Result<StateId> {
        self.check_not_poisoned()?;
        let existing = self.states();
        if let Some(index) = find_registered(&existing, info)? {
            return Ok(StateId::new(self.identity, index));
        }
        let id = StateId::new(self.identity, self.states.len());
        let cf_name = cf_name(&info.name);
        if self.db.cf_handle(&cf_name).is_none() {
            let mut cf_options = self.options.cf_options(&self.cache, info.kind);
            self.ttl.install(&mut cf_options, &cf_name);
            self.db
                .create_cf(&cf_name, &cf_options)
                .map_err(self.rocks())?;
        }
        self.ttl.set(&cf_name, info.kind, info.ttl);
        self.states.push(RocksState {
            info: info.clone(),
            cf_name,
            registered: false,
            sweep: Sweep::default(),
        });
        self.write_state_record(id.index() as usize)?;
        Ok(id)
    }

    /// Writes the record of state `index` (its info) to the default column family.
    fn write_state_record(&self, index: usize) -> Result<()> {
        let info = &self.states[index].info;
        let mut record_key = STATE_RECORD_PREFIX.to_vec();
        record_key.extend_from_slice(&(index as u32).to_be_bytes());
        let record = encode_state_record(info).map_err(encode_err(&info.name))?;
        self.put_record(&record_key, &record)
    }

    /// Registration's part after [`RocksDbBackend::ensure_state`]: a state restored with
    /// another time to live has its rows changed ([`TtlChange`]) and its record rewritten.
    fn register_ttl(&mut self, index: usize, info: &StateInfo) -> Result<()> {
        let state = &self.states[index];
        if let Some(change) = ttl_change(&state.info, info, !state.registered, self.ttl.clock())? {
            if change != TtlChange::Keep {
                // No compaction judges rows while they change layout: the old rule would read
                // the first bytes of a row without its timestamp as one.
                self.ttl.set(&self.states[index].cf_name, info.kind, None);
                self.change_rows(index, info, change)?;
            }
            self.states[index].info = info.clone();
            self.ttl
                .set(&self.states[index].cf_name, info.kind, info.ttl);
            self.write_state_record(index)?;
        }
        self.states[index].registered = true;
        Ok(())
    }

    /// Rewrites every row of state `index` with `change` applied, in batches.
    fn change_rows(&mut self, index: usize, info: &StateInfo, change: TtlChange) -> Result<()> {
        self.rewrite_rows(index, false, true, &mut |_, value| {
            Ok((None, change.apply_to_row(info, value)?))
        })
    }

    /// Migrates the rows of a restored state not registered since ([`RowMigration`]), in two
    /// passes: the first migrates every row without writing (a row that does not decode, a
    /// user function that fails, two user keys migrating onto one: the state is left as it
    /// was), the second writes. A write that fails in the second pass leaves rows of both
    /// versions: the backend is then poisoned (every later registration and snapshot refuses,
    /// and a drop is no clean close, so its working directory must be restored again).
    fn migrate_state(&mut self, migration: &RowMigration) -> Result<()> {
        self.check_not_poisoned()?;
        let index = self
            .states
            .iter()
            .position(|s| s.info.name == migration.state())
            .filter(|&i| !self.states[i].registered)
            .ok_or_else(|| migration.not_restored())?;
        let moves = migration.moves_rows();
        let mut apply = |suffix: &[u8], value: &[u8]| migration.apply(suffix, value);
        self.rewrite_rows(index, moves, false, &mut apply)?;
        // No compaction judges rows while they change: a migration may change their length.
        let info = migration.migrated_info();
        let before = self.states[index].info.ttl;
        self.ttl.set(&self.states[index].cf_name, info.kind, None);
        let written = self
            .rewrite_rows(index, moves, true, &mut apply)
            .and_then(|()| {
                self.states[index].info = info.clone();
                self.write_state_record(index)
            });
        match written {
            Ok(()) => {
                self.ttl
                    .set(&self.states[index].cf_name, info.kind, info.ttl);
                Ok(())
            }
            Err(e) => {
                self.ttl.set(&self.states[index].cf_name, info.kind, before);
                self.poisoned = Some(format!(
                    "the migration of state '{}' failed half way ({e}): restore the backend again",
                    migration.state()
                ));
                Err(e)
            }
        }
    }

    /// [`Error::Incompatible`] if a failed migration poisoned the backend.
    pub(crate) fn check_not_poisoned(&self) -> Result<()> {
        match &self.poisoned {
            Some(reason) => Err(Error::Incompatible {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Rewrites every row of state `index` through `rewrite(suffix, value)`, which gives the
    /// new value and, if the row moves (`moves`), its new suffix; with `write` false, only runs
    /// `rewrite` over every row (and checks moved rows for collisions). Each row is read once
    /// and written once, in batches of 4 MiB. Moving rows are rewritten a key group at a time:
    /// the group is read whole, range-deleted and written again, so that a row moved onto the
    /// key of one not yet read is not deleted with it; two rows moved onto one key are
    /// [`RowMigration::collision`]-like errors from `rewrite`'s caller.
    fn rewrite_rows(
        &mut self,
        index: usize,
        moves: bool,
        write: bool,
        rewrite: &mut dyn FnMut(&[u8], &[u8]) -> Result<(Option<Vec<u8>>, Vec<u8>)>,
    ) -> Result<()> {
        // No cached row of the state may outlive its rewrite.
        self.drop_write_cache()?;
        let name = self.states[index].info.name.clone();
        let cf = self
            .db
            .cf_handle(&self.states[index].cf_name)
            .ok_or(Error::UnknownState { id: index as u32 })?;
        let mut batch = WriteBatch::default();
        let mut read = ReadOptions::default();
        read.set_total_order_seek(true);
        // The key group being gathered, and its rows by new key (moving rows only).
        let mut group: Option<KeyGroup> = None;
        let mut moved: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let collision = || Error::Decode {
            state: name.clone(),
            message: "two rows migrate to one key; one of them would be lost".into(),
        };
        let flush_group =
            |batch: &mut WriteBatch, group: KeyGroup, moved: &mut BTreeMap<Vec<u8>, Vec<u8>>| {
                let (start, end) = key_group_span(u32::from(group), u32::from(group) + 1);
                batch.delete_range_cf(cf, start, end);
                for (key, value) in std::mem::take(moved) {
                    batch.put_cf(cf, key, value);
                }
            };
        for item in self.db.iterator_cf_opt(cf, read, IteratorMode::Start) {
            let (key, value) = item.map_err(self.rocks())?;
            let Some(suffix) = key.get(KEY_GROUP_PREFIX_LEN..) else {
                return Err(Error::Decode {
                    state: name.clone(),
                    message: "a row key shorter than its key-group prefix".into(),
                });
            };
            let (new_suffix, new_value) = rewrite(suffix, &value)?;
            if moves {
                let row_group = u16::from_be_bytes([key[0], key[1]]);
                if let Some(previous) = group.filter(|&g| g != row_group) {
                    flush_group(&mut batch, previous, &mut moved);
                }
                group = Some(row_group);
                let mut new_key = key[..KEY_GROUP_PREFIX_LEN].to_vec();
                new_key.extend_from_slice(new_suffix.as_deref().unwrap_or(suffix));
                if moved.insert(new_key, new_value).is_some() {
                    return Err(collision());
                }
            } else {
                batch.put_cf(cf, &key, new_value);
            }
            if !write {
                batch.clear();
            } else if batch.size_in_bytes() >= 4 << 20 {
                self.db
                    .write_opt(std::mem::take(&mut batch), &self.write_options)
                    .map_err(self.rocks())?;
            }
        }
        if let Some(last) = group {
            flush_group(&mut batch, last, &mut moved);
        }
        if !write {
            return Ok(());
        }
        self.db
            .write_opt(batch, &self.write_options)
            .map_err(self.rocks())
    }

    fn state(&self, id: StateId) -> Result<(&RocksState, &ColumnFamily)> {
        let unknown = || Error::UnknownState { id: id.index() };
        let state = self
            .states
            .get(id.index_in(self.identity)?)
            .ok_or_else(unknown)?;
        let cf = self.db.cf_handle(&state.cf_name).ok_or_else(unknown)?;
        Ok((state, cf))
    }

    /// State `id`, its column family, and the row key of `(key, ns)` in it (the prefix of a
    /// map's rows).
    fn locate<K: StateKey, N: StateKey>(
        &self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<(&RocksState, &ColumnFamily, Vec<u8>)> {
        let (state, cf) = self.state(id)?;
        let mut row = Vec::with_capacity(32);
        self.row_prefix(&state.info.name, key, ns, &mut row)?;
        Ok((state, cf, row))
    }

    /// Writes `key group ++ key ++ namespace` into `out`, checking the key group is owned.
    fn row_prefix<K: StateKey, N: StateKey>(
        &self,
        state: &str,
        key: KeyRef<'_, K>,
        ns: &N,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let group = key.checked_group(self.assigner, self.range)?;
        let codec = DefaultCodec::default();
        let enc = encode_err(state);
        out.clear();
        out.extend_from_slice(&layout::key_group_prefix(group));
        codec.encode_into(key.key(), out).map_err(&enc)?;
        codec.encode_into(ns, out).map_err(enc)
    }

    fn map_row<K: StateKey, N: StateKey, UK: StateKey>(
        &self,
        state: &str,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: &UK,
    ) -> Result<Vec<u8>> {
        let mut row = Vec::with_capacity(32);
        self.row_prefix(state, key, ns, &mut row)?;
        DefaultCodec::default()
            .encode_into(user_key, &mut row)
            .map_err(encode_err(state))?;
        Ok(row)
    }

    /// Appends the encoding of a map's user key to a row prefix (the rest of a map row's key).
    fn user_key_suffix<UK: StateKey>(
        user_key: &UK,
    ) -> impl Fn(&str, &mut Vec<u8>) -> Result<()> + '_ {
        move |state, row| {
            DefaultCodec::default()
                .encode_into(user_key, row)
                .map_err(encode_err(state))
        }
    }

    fn get_raw(
        &self,
        cf: &ColumnFamily,
        row: &[u8],
    ) -> Result<Option<rocksdb::DBPinnableSlice<'_>>> {
        self.db.get_pinned_cf(cf, row).map_err(self.rocks())
    }

    fn decode<T: serde::de::DeserializeOwned>(state: &str, bytes: &[u8]) -> Result<T> {
        DefaultCodec::default()
            .decode(bytes)
            .map_err(decode_err(state))
    }

    /// Read options bounded to the rows starting with `prefix`.
    fn prefix_read_options(prefix: &[u8]) -> ReadOptions {
        let mut read = ReadOptions::default();
        read.set_iterate_range(rocksdb::PrefixRange(prefix.to_vec()));
        // Hash-memtable column families have a prefix extractor; without this, RocksDB would
        // treat a seek as a lookup of that one "prefix" (the whole seek key) and skip rows.
        read.set_total_order_seek(true);
        read
    }

    /// Read options bounded to the key groups this instance owns.
    fn owned_read_options(&self) -> ReadOptions {
        let (start, end) = layout::key_group_span(self.range.start(), self.range.end());
        let mut read = ReadOptions::default();
        read.set_iterate_lower_bound(start);
        read.set_iterate_upper_bound(end);
        read.set_total_order_seek(true); // see `prefix_read_options`
        read
    }

    /// Counters of the write-back cache; `None` when it is off.
    pub fn write_cache_stats(&self) -> Option<WriteCacheStats> {
        self.write_cache.as_ref().map(|c| c.borrow().stats())
    }

    /// Writes the write-back cache's dirty rows to RocksDB in one batch, so that RocksDB
    /// holds all of the state: before a checkpoint, a view, an iteration or a flush.
    pub(crate) fn flush_write_cache(&self) -> Result<()> {
        match &self.write_cache {
            Some(cache) => cache.borrow_mut().flush(|rows| self.write_rows(rows)),
            None => Ok(()),
        }
    }

    /// [`RocksDbBackend::flush_write_cache`] before a checkpoint: many changed rows are written
    /// as SST files and ingested ([`RocksDbBackend::ingest_rows`]), since the checkpoint would
    /// flush them out of the memtable into an SST file right after inserting them; a few are
    /// inserted (a file per state costs more than a few memtable inserts).
    pub(super) fn flush_write_cache_for_checkpoint(&self) -> Result<()> {
        let Some(cache) = &self.write_cache else {
            return Ok(());
        };
        let mut cache = cache.borrow_mut();
        if cache.stats().dirty_bytes >= INGEST_AT_CHECKPOINT_BYTES {
            cache.flush(|rows| self.ingest_rows(rows))
        } else {
            cache.flush(|rows| self.write_rows(rows))
        }
    }

    /// [`RocksDbBackend::flush_write_cache`] for the rows of state `id` whose key starts with
    /// `prefix` only: what an iteration over one map (its rows' prefix) or over the whole state
    /// (an empty prefix) needs RocksDB to hold.
    fn flush_write_cache_of(&self, id: StateId, prefix: &[u8]) -> Result<()> {
        let Some(cache) = &self.write_cache else {
            return Ok(());
        };
        // A map's prefix: its rows were grouped as they changed (`with_cached_row`).
        let map = !prefix.is_empty() && u16::try_from(prefix.len()).is_ok();
        cache
            .borrow_mut()
            .flush_prefix(id.index(), prefix, map, |rows| self.write_rows(rows))
    }

    /// Writes, then forgets, every cached row: for RocksDB changed behind the cache.
    fn drop_write_cache(&self) -> Result<()> {
        self.flush_write_cache()?;
        if let Some(cache) = &self.write_cache {
            cache.borrow_mut().clear();
        }
        Ok(())
    }

    /// Writes rows handed out by the write-back cache as one batch.
    fn write_rows(&self, rows: &mut dyn Iterator<Item = DirtyRow<'_>>) -> Result<()> {
        let mut batch = WriteBatch::default();
        let mut last: Option<(u32, &ColumnFamily)> = None;
        for (state, key, value) in rows {
            let cf = match last {
                Some((s, cf)) if s == state => cf,
                _ => {
                    let cf = self
                        .states
                        .get(state as usize)
                        .and_then(|s| self.db.cf_handle(&s.cf_name))
                        .ok_or(Error::UnknownState { id: state })?;
                    last = Some((state, cf));
                    cf
                }
            };
            match value {
                RowWrite::Delete => batch.delete_cf(cf, key),
                RowWrite::Put(bytes) => batch.put_cf(cf, key, bytes),
                RowWrite::Merge(bytes) => batch.merge_cf(cf, key, bytes),
            }
        }
        self.db
            .write_opt(batch, &self.write_options)
            .map_err(self.rocks())
    }

    /// Reads row `row` of state `state` through `cache`: a cached value, or RocksDB's (then
    /// cached). `present` makes the result from the row's bytes, `absent` without a row.
    fn read_cached<T>(
        &self,
        cache: &mut WriteCache,
        state: u32,
        cf: &ColumnFamily,
        row: &[u8],
        present: impl FnOnce(&[u8]) -> Result<T>,
        absent: impl FnOnce() -> T,
    ) -> Result<T> {
        let appended = match cache.get(state, row) {
            Some(CachedRef::Present(bytes)) => return present(bytes),
            Some(CachedRef::Absent) => return Ok(absent()),
            Some(CachedRef::Appended(operands)) => Some(operands.to_vec()),
            None => None,
        };
        let stored = self.get_raw(cf, row)?;
        let (value, changed) = match (appended, stored) {
            (Some(operands), stored) => {
                // List elements appended to a value not read yet: now it is, with them.
                let mut value = stored.map(|b| b.to_vec()).unwrap_or_default();
                value.extend_from_slice(&operands);
                (Cached::Present(value), true)
            }
            (None, Some(bytes)) => (Cached::Present(bytes.to_vec()), false),
            (None, None) => (Cached::Absent, false),
        };
        let result = match &value {
            Cached::Present(bytes) => present(bytes),
            _ => Ok(absent()),
        };
        // Cached only if there is room: a read does not fail because RocksDB refused the
        // write-back of other rows (they stay dirty; a write or a flush reports it).
        let write = |rows: &mut dyn Iterator<Item = DirtyRow<'_>>| self.write_rows(rows);
        let incoming = row_cost(row.len(), value.len());
        if cache.make_room(incoming, changed, write).is_ok() {
            if changed {
                cache.write(state, row, value);
            } else {
                cache.fill(state, row, value);
            }
            cache.settle(write);
        }
        result
    }

    /// [`RocksDbBackend::read_cached`] of a value row: the decoded value, `None` without a row.
    fn read_value_cached<V: StateValue>(
        &self,
        cache: &mut WriteCache,
        index: u32,
        state: &RocksState,
        cf: &ColumnFamily,
        row: &[u8],
    ) -> Result<Option<V>> {
        let name = &state.info.name;
        self.read_cached(
            cache,
            index,
            cf,
            row,
            |b| Self::decode(name, b).map(Some),
            || None,
        )
    }

    /// Records a change of row `row` of state `state` in `cache`, once there is room for it:
    /// if RocksDB refuses the rows that must make room, the change is not recorded and the
    /// operation fails as a whole.
    fn write_cached(
        &self,
        cache: &mut WriteCache,
        state: u32,
        row: &[u8],
        value: Cached,
    ) -> Result<()> {
        let write = |rows: &mut dyn Iterator<Item = DirtyRow<'_>>| self.write_rows(rows);
        cache.make_room(row_cost(row.len(), value.len()), true, write)?;
        cache.write(state, row, value);
        cache.settle(write);
        Ok(())
    }

    /// Builds the row key of `(key, ns)` (followed by what `user_key` appends, for a map row)
    /// in the cache's scratch buffer and runs `f` with the cache, the state's index, the state,
    /// its column family and the row key; `None` when the cache is off.
    fn with_cached_row<K: StateKey, N: StateKey, T>(
        &self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: Option<&dyn Fn(&str, &mut Vec<u8>) -> Result<()>>,
        f: impl FnOnce(&mut WriteCache, u32, &RocksState, &ColumnFamily, &[u8]) -> Result<T>,
    ) -> Option<Result<T>> {
        let cache = self.write_cache.as_ref()?;
        Some((|| {
            let (state, cf) = self.state(id)?;
            let mut cache = cache.borrow_mut();
            let mut row = std::mem::take(&mut cache.scratch);
            let built = self.row_prefix(&state.info.name, key, ns, &mut row);
            // A map row's changes are grouped by its map (the row key up to the user key), so
            // that an iteration over the map writes back that map's rows only.
            let prefix_len = row.len();
            let built = built.and_then(|()| {
                user_key.map_or(Ok(()), |append| append(&state.info.name, &mut row))
            });
            if user_key.is_some() {
                cache.group_len = u16::try_from(prefix_len).unwrap_or(0);
            }
            let result = built.and_then(|()| f(&mut cache, id.index(), state, cf, &row));
            cache.group_len = 0;
            cache.scratch = row;
            result
        })())
    }
}

impl KeyedStateBackend for RocksDbBackend {
    fn backend_kind(&self) -> BackendKind {
        BackendKind::RocksDb
    }

    fn assigner(&self) -> KeyGroupAssigner {
        self.assigner
    }

    fn key_group_range(&self) -> KeyGroupRange {
        self.range
    }

    fn states(&self) -> Vec<StateInfo> {
        self.states.iter().map(|s| s.info.clone()).collect()
    }

    fn ttl_clock(&self) -> &TtlClock {
        self.ttl.clock()
    }

    fn migrate_rows(&mut self, migration: &RowMigration) -> Result<()> {
        self.migrate_state(migration)
    }

    /// Compactions drop expired rows on disk; what the write-back cache holds is swept here,
    /// 64 bytes of the state's cached values per access to it, so that the cache does not keep
    /// expired rows until its capacity pushes them out.
    #[inline]
    fn ttl_cleanup(&mut self, id: StateId) -> Result<()> {
        let Some(cache) = &self.write_cache else {
            return Ok(());
        };
        let index = id.index_in(self.identity)?;
        let Some(state) = self.states.get_mut(index) else {
            return Ok(());
        };
        let (kind, Some(ttl)) = (state.info.kind, state.info.ttl) else {
            return Ok(());
        };
        // Only the accessed state's rows, as the heap backend cleans per state.
        let now = self.ttl.clock().now(ttl.time);
        cache.borrow_mut().drop_expired(
            &mut state.sweep,
            CACHE_SWEEP_PER_ACCESS,
            |state, value| {
                state as usize == index && row_expiry(kind, &ttl, now, value) == RowExpiry::Expired
            },
        );
        Ok(())
    }

    fn register<K: StateKey, N: StateKey, S: StoredState>(
        &mut self,
        info: StateInfo,
    ) -> Result<StateId> {
        // Rows are bytes: the in-memory type `S` does not matter here, the type names do.
        let id = self.ensure_state(&info)?;
        self.register_ttl(id.index() as usize, &info)?;
        Ok(id)
    }

    fn get_cell<K: StateKey, N: StateKey, V: StateValue>(
        &self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<Option<V>> {
        let cached = self.with_cached_row(id, key, ns, None, |cache, index, state, cf, row| {
            self.read_value_cached(cache, index, state, cf, row)
        });
        if let Some(result) = cached {
            return result;
        }
        let (state, cf, row) = self.locate(id, key, ns)?;
        match self.get_raw(cf, &row)? {
            Some(bytes) => Ok(Some(Self::decode(&state.info.name, &bytes)?)),
            None => Ok(None),
        }
    }

    /// One batched multi-get for all keys (RocksDB sorts the lookups and reads each block
    /// once); with the write-back cache, for the keys it does not hold.
    fn get_cells<K: StateKey, N: StateKey, V: StateValue>(
        &self,
        id: StateId,
        keys: &[KeyRef<'_, K>],
        ns: &N,
    ) -> Result<Vec<Option<V>>> {
        let (state, cf) = self.state(id)?;
        let name = &state.info.name;
        let mut rows = Vec::with_capacity(keys.len());
        for key in keys {
            let mut row = Vec::with_capacity(32);
            self.row_prefix(name, *key, ns, &mut row)?;
            rows.push(row);
        }
        let Some(cache) = &self.write_cache else {
            return self
                .db
                .batched_multi_get_cf(cf, &rows, false)
                .into_iter()
                .map(|found| match found.map_err(self.rocks())? {
                    Some(bytes) => Ok(Some(Self::decode(name, &bytes)?)),
                    None => Ok(None),
                })
                .collect();
        };
        let mut cache = cache.borrow_mut();
        let index = id.index();
        let mut values: Vec<Option<V>> = Vec::with_capacity(keys.len());
        let mut missed = Vec::new();
        let decode = |bytes: &[u8]| Self::decode(name, bytes).map(Some);
        for (i, row) in rows.iter().enumerate() {
            match cache.get(index, row) {
                Some(CachedRef::Present(bytes)) => values.push(decode(bytes)?),
                Some(CachedRef::Absent) => values.push(None),
                // Pending list elements (a list state read through this value API): read
                // as `get_cell` reads them, stored value and elements together.
                Some(CachedRef::Appended(_)) => {
                    values.push(self.read_value_cached(&mut cache, index, state, cf, row)?)
                }
                None => {
                    values.push(None);
                    missed.push(i);
                }
            }
        }
        let lookups: Vec<&[u8]> = missed.iter().map(|&i| rows[i].as_slice()).collect();
        let found = self.db.batched_multi_get_cf(cf, &lookups, false);
        let write = |rows: &mut dyn Iterator<Item = DirtyRow<'_>>| self.write_rows(rows);
        for (&i, found) in missed.iter().zip(found) {
            let value = match found.map_err(self.rocks())? {
                Some(bytes) => {
                    values[i] = decode(&bytes)?;
                    Cached::Present(bytes.to_vec())
                }
                None => Cached::Absent,
            };
            // Cached only if there is room (see `read_cached`).
            let incoming = row_cost(rows[i].len(), value.len());
            if cache.make_room(incoming, false, write).is_ok() {
                cache.fill(index, &rows[i], value);
            }
        }
        cache.settle(write);
        Ok(values)
    }

    fn put_cell<K: StateKey, N: StateKey, V: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        value: V,
    ) -> Result<()> {
        let cached = self.with_cached_row(id, key, ns, None, |cache, index, state, _, row| {
            let bytes = DefaultCodec::default()
                .encode(&value)
                .map_err(encode_err(&state.info.name))?;
            self.write_cached(cache, index, row, Cached::Present(bytes))
        });
        if let Some(result) = cached {
            return result;
        }
        let (state, cf, row) = self.locate(id, key, ns)?;
        let bytes = DefaultCodec::default()
            .encode(&value)
            .map_err(encode_err(&state.info.name))?;
        self.db
            .put_cf_opt(cf, row, bytes, &self.write_options)
            .map_err(self.rocks())
    }

    /// One row key and, with the write-back cache, one lookup for the read and the write.
    fn update_cell<K, N, V, F>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        f: F,
    ) -> Result<()>
    where
        K: StateKey,
        N: StateKey,
        V: StateValue,
        F: FnOnce(Option<&V>) -> Option<V>,
    {
        let encode = |name: &str, value: &V| {
            DefaultCodec::default()
                .encode(value)
                .map_err(encode_err(name))
        };
        let mut f = Some(f);
        let cached = self.with_cached_row(id, key, ns, None, |cache, index, state, cf, row| {
            let name = &state.info.name;
            let current: Option<V> = self.read_value_cached(cache, index, state, cf, row)?;
            let update = f.take().expect("called once");
            match update(current.as_ref()) {
                Some(value) => {
                    self.write_cached(cache, index, row, Cached::Present(encode(name, &value)?))
                }
                None if current.is_some() => self.write_cached(cache, index, row, Cached::Absent),
                None => Ok(()),
            }
        });
        if let Some(result) = cached {
            return result;
        }
        let update = f.take().expect("called once");
        let (state, cf, row) = self.locate(id, key, ns)?;
        let name = &state.info.name;
        let current: Option<V> = match self.get_raw(cf, &row)? {
            Some(bytes) => Some(Self::decode(name, &bytes)?),
            None => None,
        };
        match update(current.as_ref()) {
            Some(value) => self
                .db
                .put_cf_opt(cf, &row, encode(name, &value)?, &self.write_options)
                .map_err(self.rocks()),
            None if current.is_some() => self
                .db
                .delete_cf_opt(cf, &row, &self.write_options)
                .map_err(self.rocks()),
            None => Ok(()),
        }
    }

    fn clear<K: StateKey, N: StateKey>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<()> {
        let (state, cf, row) = self.locate(id, key, ns)?;
        if state.info.kind != StateKind::Map {
            if let Some(cache) = &self.write_cache {
                return self.write_cached(
                    &mut cache.borrow_mut(),
                    id.index(),
                    &row,
                    Cached::Absent,
                );
            }
            return self
                .db
                .delete_cf_opt(cf, row, &self.write_options)
                .map_err(self.rocks());
        }
        // RocksDB must hold every entry of the map to find them all.
        self.flush_write_cache_of(id, &row)?;
        // All rows of one map in one batch: the map disappears atomically.
        let mut batch = WriteBatch::default();
        let mut deleted = Vec::new();
        let rows =
            self.db
                .iterator_cf_opt(cf, Self::prefix_read_options(&row), IteratorMode::Start);
        for item in rows {
            let (row_key, _) = item.map_err(self.rocks())?;
            batch.delete_cf(cf, &row_key);
            if self.write_cache.is_some() {
                deleted.push(row_key);
            }
        }
        self.db
            .write_opt(batch, &self.write_options)
            .map_err(self.rocks())?;
        if let Some(cache) = &self.write_cache {
            let mut cache = cache.borrow_mut();
            for row_key in deleted {
                cache.forget(id.index(), &row_key);
            }
        }
        Ok(())
    }

    fn get_list<K: StateKey, N: StateKey, T: StateValue>(
        &self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<Vec<T>> {
        let cached = self.with_cached_row(id, key, ns, None, |cache, index, state, cf, row| {
            let decode = |bytes: &[u8]| {
                decode_list(&DefaultCodec::default(), bytes).map_err(decode_err(&state.info.name))
            };
            self.read_cached(cache, index, cf, row, decode, Vec::new)
        });
        if let Some(result) = cached {
            return result;
        }
        let (state, cf, row) = self.locate(id, key, ns)?;
        match self.get_raw(cf, &row)? {
            Some(bytes) => {
                decode_list(&DefaultCodec::default(), &bytes).map_err(decode_err(&state.info.name))
            }
            None => Ok(Vec::new()),
        }
    }

    fn append_list<K: StateKey, N: StateKey, T: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        value: T,
    ) -> Result<()> {
        let cached = self.with_cached_row(id, key, ns, None, |cache, index, state, _, row| {
            let mut operand = Vec::with_capacity(16);
            encode_list_element(&DefaultCodec::default(), &value, &mut operand)
                .map_err(encode_err(&state.info.name))?;
            let write = |rows: &mut dyn Iterator<Item = DirtyRow<'_>>| self.write_rows(rows);
            cache.make_room(row_cost(row.len(), operand.len()), true, write)?;
            cache.append(index, row, &operand);
            cache.settle(write);
            Ok(())
        });
        if let Some(result) = cached {
            return result;
        }
        let (state, cf, row) = self.locate(id, key, ns)?;
        let mut operand = Vec::with_capacity(16);
        encode_list_element(&DefaultCodec::default(), &value, &mut operand)
            .map_err(encode_err(&state.info.name))?;
        self.db
            .merge_cf_opt(cf, row, operand, &self.write_options)
            .map_err(self.rocks())
    }

    fn replace_list<K: StateKey, N: StateKey, T: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        values: Vec<T>,
    ) -> Result<()> {
        let cached = self.with_cached_row(id, key, ns, None, |cache, index, state, _, row| {
            let value = if values.is_empty() {
                Cached::Absent
            } else {
                let codec = DefaultCodec::default();
                let mut bytes = Vec::new();
                for v in &values {
                    encode_list_element(&codec, v, &mut bytes)
                        .map_err(encode_err(&state.info.name))?;
                }
                Cached::Present(bytes)
            };
            self.write_cached(cache, index, row, value)
        });
        if let Some(result) = cached {
            return result;
        }
        let (state, cf, row) = self.locate(id, key, ns)?;
        if values.is_empty() {
            return self
                .db
                .delete_cf_opt(cf, row, &self.write_options)
                .map_err(self.rocks());
        }
        let codec = DefaultCodec::default();
        let mut bytes = Vec::new();
        for v in &values {
            encode_list_element(&codec, v, &mut bytes).map_err(encode_err(&state.info.name))?;
        }
        self.db
            .put_cf_opt(cf, row, bytes, &self.write_options)
            .map_err(self.rocks())
    }

    fn get_map_value<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: &UK,
    ) -> Result<Option<UV>> {
        let suffix = Self::user_key_suffix(user_key);
        let cached = self.with_cached_row(
            id,
            key,
            ns,
            Some(&suffix),
            |cache, index, state, cf, row| self.read_value_cached(cache, index, state, cf, row),
        );
        if let Some(result) = cached {
            return result;
        }
        let (state, cf) = self.state(id)?;
        let row = self.map_row(&state.info.name, key, ns, user_key)?;
        match self.get_raw(cf, &row)? {
            Some(bytes) => Ok(Some(Self::decode(&state.info.name, &bytes)?)),
            None => Ok(None),
        }
    }

    fn contains_map_key<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: &UK,
    ) -> Result<bool> {
        let suffix = Self::user_key_suffix(user_key);
        let cached =
            self.with_cached_row(id, key, ns, Some(&suffix), |cache, index, _, cf, row| {
                self.read_cached(cache, index, cf, row, |_| Ok(true), || false)
            });
        if let Some(result) = cached {
            return result;
        }
        let (state, cf) = self.state(id)?;
        let row = self.map_row(&state.info.name, key, ns, user_key)?;
        Ok(self.get_raw(cf, &row)?.is_some())
    }

    fn put_map_value<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: UK,
        value: UV,
    ) -> Result<()> {
        let suffix = Self::user_key_suffix(&user_key);
        let cached =
            self.with_cached_row(id, key, ns, Some(&suffix), |cache, index, state, _, row| {
                let bytes = DefaultCodec::default()
                    .encode(&value)
                    .map_err(encode_err(&state.info.name))?;
                self.write_cached(cache, index, row, Cached::Present(bytes))
            });
        if let Some(result) = cached {
            return result;
        }
        let (state, cf) = self.state(id)?;
        let row = self.map_row(&state.info.name, key, ns, &user_key)?;
        let bytes = DefaultCodec::default()
            .encode(&value)
            .map_err(encode_err(&state.info.name))?;
        self.db
            .put_cf_opt(cf, row, bytes, &self.write_options)
            .map_err(self.rocks())
    }

    fn remove_map_value<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: &UK,
    ) -> Result<()> {
        let suffix = Self::user_key_suffix(user_key);
        let cached = self.with_cached_row(id, key, ns, Some(&suffix), |cache, index, _, _, row| {
            self.write_cached(cache, index, row, Cached::Absent)
        });
        if let Some(result) = cached {
            return result;
        }
        let (state, cf) = self.state(id)?;
        let row = self.map_row(&state.info.name, key, ns, user_key)?;
        self.db
            .delete_cf_opt(cf, row, &self.write_options)
            .map_err(self.rocks())
    }

    fn map_entries<'a, K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &'a self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<MapEntries<'a, UK, UV>> {
        let (state, cf, prefix) = self.locate(id, key, ns)?;
        // The iterator reads RocksDB with the cache's changes of this map applied over it (a
        // map's changes are grouped by its prefix, up to a prefix of `u16::MAX` bytes; a
        // longer one's are written back first).
        let changes = match &self.write_cache {
            Some(cache) if u16::try_from(prefix.len()).is_ok() => {
                cache.borrow().map_changes(id.index(), &prefix)
            }
            Some(_) => {
                self.flush_write_cache_of(id, &prefix)?;
                Vec::new()
            }
            None => Vec::new(),
        };
        let name = state.info.name.clone();
        let dir = self.dir.path();
        let prefix_len = prefix.len();
        let rows = WithChanges::new(
            self.db
                .iterator_cf_opt(cf, Self::prefix_read_options(&prefix), IteratorMode::Start),
            changes,
        );
        Ok(Box::new(rows.map(move |item| {
            let (row_key, value) = item.map_err(rocks_err(dir))?;
            let user_key: UK = Self::decode(&name, &row_key[prefix_len..])?;
            let value: UV = Self::decode(&name, &value)?;
            Ok((user_key, value))
        })))
    }

    fn keys<'a, K: StateKey, N: StateKey>(
        &'a self,
        id: StateId,
        ns: Option<&N>,
    ) -> Result<StateKeys<'a, K, N>> {
        let (state, cf) = self.state(id)?;
        // The iterator reads RocksDB, which must hold the cache's changes of this state.
        self.flush_write_cache_of(id, &[])?;
        let name = state.info.name.clone();
        let dir = self.dir.path();
        let wanted = ns.cloned();
        let rows = self.db.iterator_cf_opt(
            cf,
            self.owned_read_options(),
            IteratorMode::From(&[], Direction::Forward),
        );
        // Map states have one row per user key: report each (key, namespace) once.
        let mut last_prefix: Vec<u8> = Vec::new();
        Ok(Box::new(rows.filter_map(move |item| {
            let decoded = (|| {
                let (row_key, _) = item.map_err(rocks_err(dir))?;
                let codec = DefaultCodec::default();
                let body = &row_key[layout::KEY_GROUP_PREFIX_LEN.min(row_key.len())..];
                let corrupt = decode_err(&name);
                let (key, used_k): (K, usize) = codec.decode_prefix(body).map_err(&corrupt)?;
                let (namespace, used_n): (N, usize) =
                    codec.decode_prefix(&body[used_k..]).map_err(corrupt)?;
                // A row key shorter than its key-group prefix (only a crafted SST holds one)
                // decodes zero-sized keys from nothing: refuse it instead of slicing past it.
                let prefix = row_key
                    .get(..layout::KEY_GROUP_PREFIX_LEN + used_k + used_n)
                    .ok_or_else(|| {
                        Error::corrupt(
                            dir.display().to_string(),
                            format!("state '{name}': a row key of {} bytes", row_key.len()),
                        )
                    })?;
                if prefix == last_prefix.as_slice() {
                    return Ok(None);
                }
                last_prefix = prefix.to_vec();
                if wanted.as_ref().is_some_and(|w| *w != namespace) {
                    return Ok(None);
                }
                Ok(Some((key, namespace)))
            })();
            decoded.transpose()
        })))
    }
}

/// The rows of one map as RocksDB holds them, with the write cache's changes of that map
/// applied: a merge of two sorted sequences, where a change replaces RocksDB's row of the same
/// key, adds a row, or (`None`) deletes it.
struct WithChanges<I: Iterator> {
    rows: std::iter::Peekable<I>,
    changes: std::iter::Peekable<std::vec::IntoIter<MapChange>>,
}

impl<I: Iterator> WithChanges<I> {
    fn new(rows: I, changes: Vec<MapChange>) -> Self {
        Self {
            rows: rows.peekable(),
            changes: changes.into_iter().peekable(),
        }
    }
}

impl<I> Iterator for WithChanges<I>
where
    I: Iterator<Item = std::result::Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>>,
{
    type Item = I::Item;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let change_first = match (self.rows.peek(), self.changes.peek()) {
                (None, None) => return None,
                // An error is reported where it happens.
                (Some(Err(_)), _) | (Some(Ok(_)), None) => return self.rows.next(),
                (None, Some(_)) => std::cmp::Ordering::Less,
                (Some(Ok((row, _))), Some((changed, _))) => changed.as_ref().cmp(row.as_ref()),
            };
            if change_first == std::cmp::Ordering::Greater {
                return self.rows.next();
            }
            if change_first == std::cmp::Ordering::Equal {
                // Replaced (or deleted) by the change.
                self.rows.next();
            }
            if let Some((key, Some(value))) = self.changes.next() {
                return Some(Ok((key, value)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(s: &str) -> Box<[u8]> {
        s.as_bytes().into()
    }

    #[test]
    fn changes_replace_add_and_delete_rows_in_key_order() {
        let rows: Vec<std::result::Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>> =
            ["b", "d", "f"]
                .into_iter()
                .map(|k| Ok((boxed(k), boxed("stored"))))
                .collect();
        let changes: Vec<MapChange> = vec![
            (boxed("a"), Some(boxed("new"))),     // before every row
            (boxed("b"), Some(boxed("changed"))), // replaces a row
            (boxed("c"), None),                   // deletes a row RocksDB lacks
            (boxed("d"), None),                   // deletes a row
            (boxed("g"), Some(boxed("new"))),     // after every row
        ];
        let merged: Vec<(String, String)> = WithChanges::new(rows.into_iter(), changes)
            .map(|r| {
                let (k, v) = r.unwrap();
                (
                    String::from_utf8(k.into()).unwrap(),
                    String::from_utf8(v.into()).unwrap(),
                )
            })
            .collect();
        let expected = [
            ("a", "new"),
            ("b", "changed"),
            ("f", "stored"),
            ("g", "new"),
        ];
        assert_eq!(
            merged,
            expected
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        );
        // No changes: RocksDB's rows as they are; no rows: the changes' values.
        let only_rows = vec![Ok((boxed("x"), boxed("1")))];
        assert_eq!(
            WithChanges::new(only_rows.into_iter(), Vec::new()).count(),
            1
        );
        let none: Vec<std::result::Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>> = Vec::new();
        let only_changes = vec![(boxed("x"), None), (boxed("y"), Some(boxed("2")))];
        assert_eq!(WithChanges::new(none.into_iter(), only_changes).count(), 1);
    }
}
