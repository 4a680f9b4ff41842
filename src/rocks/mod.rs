//! The RocksDB backend: state as serialized rows in an embedded RocksDB.
//!
//! One RocksDB instance per backend instance, one column family per state, rows laid out as
//! [`layout`] describes. The write-ahead log is off: durability comes from checkpoints, as in
//! Flink. This is the only module that names RocksDB types.

mod export;
mod layout;
mod merge;
mod options;
mod snapshot;

use std::path::{Path, PathBuf};

use rocksdb::{ColumnFamily, DB, Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions};

use crate::backend::{BackendKind, KeyedStateBackend, MapEntries, StateKeys, find_registered};
use crate::codec::{Codec, DefaultCodec};
use crate::error::{Error, Result};
use crate::heap::check_range;
use crate::key_group::{KeyGroupAssigner, KeyGroupRange};
use crate::state::rows::{decode_list, encode_list_element};
use crate::state::{StateId, StateInfo, StateKey, StateKind, StateValue, StoredState};

pub use options::{CompactionStyle, Memtable, RocksDbOptions};
pub(crate) use snapshot::RESTORE_MARKER;
pub use snapshot::RocksDbSnapshot;

use crate::checkpoint::metadata::InstanceId;
use snapshot::IncrementalState;

/// Key prefix, in the default column family, of the registered-state records.
const STATE_RECORD_PREFIX: &[u8] = b"statebackend/state/";
/// Key of the instance record: the max parallelism and key-group range the rows were written
/// for (`rocksdb-layout.md` §3).
const INSTANCE_RECORD_KEY: &[u8] = b"statebackend/instance";
/// Version byte of the instance record's value.
const INSTANCE_RECORD_VERSION: u8 = 1;

/// Where the backend keeps its files: a temporary directory removed on drop, or the engine's.
enum WorkingDir {
    Temporary(tempfile::TempDir),
    Explicit(PathBuf),
}

impl WorkingDir {
    /// The engine's directory (created if missing), or a new temporary one.
    fn create(working_dir: Option<PathBuf>) -> Result<Self> {
        Ok(match working_dir {
            Some(path) => {
                std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
                WorkingDir::Explicit(path)
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
            WorkingDir::Explicit(p) => p,
        }
    }
}

struct RocksState {
    info: StateInfo,
    cf_name: String,
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
    incremental: IncrementalState,
    dir: WorkingDir,
}

fn rocks_err(e: rocksdb::Error) -> Error {
    Error::RocksDb {
        message: e.into_string(),
    }
}

fn cf_name(state: &str) -> String {
    format!("state/{state}")
}

/// The state records in `db`'s default column family, in registration order.
fn read_state_records(db: &DB) -> Result<Vec<StateInfo>> {
    let mut read = ReadOptions::default();
    read.set_iterate_range(rocksdb::PrefixRange(STATE_RECORD_PREFIX));
    read.set_total_order_seek(true); // as every iterator (`prefix_read_options`)
    db.iterator_opt(IteratorMode::Start, read)
        .map(|item| {
            let (_, value) = item.map_err(rocks_err)?;
            DefaultCodec::default()
                .decode(&value)
                .map_err(|e| Error::Decode {
                    state: "<state registry>".into(),
                    message: e.0,
                })
        })
        .collect()
}

impl RocksDbBackend {
    /// Opens a backend in `working_dir` (created if missing; kept on drop), or in a new
    /// temporary directory (removed on drop) when `None`. A directory holding a backend's DB is
    /// reopened with its states.
    ///
    /// # Errors
    /// Invalid parallelism or range; [`Error::DirectoryLocked`] if another live backend holds the
    /// directory; [`Error::Incompatible`] if it holds a checkpoint restore that did not finish
    /// (restore again into it); I/O and RocksDB errors.
    pub fn open(
        max_parallelism: u32,
        range: KeyGroupRange,
        working_dir: Option<PathBuf>,
        options: RocksDbOptions,
    ) -> Result<Self> {
        let dir = WorkingDir::create(working_dir)?;
        let marker = dir.path().join(RESTORE_MARKER);
        if marker.exists() && !dir.path().join("db").exists() {
            // A restore stopped before its DB appeared: nothing to protect.
            std::fs::remove_file(&marker).map_err(|e| Error::io(&marker, e))?;
        } else if marker.exists() {
            return Err(Error::Incompatible {
                reason: format!(
                    "{} holds a restore that did not finish ({} is present): restore again into it",
                    dir.path().display(),
                    marker.display()
                ),
            });
        }
        Self::open_in(max_parallelism, range, dir, options)
    }

    /// Opens (or creates) the DB in `dir/db`.
    fn open_in(
        max_parallelism: u32,
        range: KeyGroupRange,
        dir: WorkingDir,
        options: RocksDbOptions,
    ) -> Result<Self> {
        let assigner = KeyGroupAssigner::new(max_parallelism)?;
        check_range(max_parallelism, range)?;
        options.validate()?;
        let db_path = dir.path().join("db");
        let cache = rocksdb::Cache::new_lru_cache(options.block_cache_bytes);
        let db_options = options.db_options();
        let existing_cfs = if db_path.join("CURRENT").exists() {
            DB::list_cf(&db_options, &db_path).map_err(rocks_err)?
        } else {
            Vec::new()
        };
        // A column family's options depend on its state's kind (the memtable), and the kinds
        // are in the state records, so read them first from the default column family alone.
        let records = if existing_cfs.is_empty() || options.memtable == Memtable::SkipList {
            Vec::new()
        } else {
            let db = DB::open_cf_for_read_only(&db_options, &db_path, ["default"], false)
                .map_err(rocks_err)?;
            read_state_records(&db)?
        };
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
                rocksdb::ColumnFamilyDescriptor::new(name, options.cf_options(&cache, kind))
            })
            .collect();
        let db = DB::open_cf_descriptors(&db_options, &db_path, descriptors).map_err(|e| {
            let message = e.into_string();
            // RocksDB reports a held LOCK file as "While lock file: <dir>/LOCK: ...".
            if message.contains("lock file") || message.contains("/LOCK") {
                Error::DirectoryLocked {
                    path: db_path.clone(),
                    message,
                }
            } else {
                Error::RocksDb { message }
            }
        })?;
        let mut write_options = WriteOptions::default();
        write_options.disable_wal(true);
        let mut backend = Self {
            db,
            cache,
            write_options,
            options,
            assigner,
            range,
            states: Vec::new(),
            instance_id: InstanceId::random(),
            incremental: IncrementalState::default(),
            dir,
        };
        backend.check_instance_record()?;
        backend.load_state_records()?;
        Ok(backend)
    }

    /// Checks that the database was written for this max parallelism and key-group range
    /// (rows are addressed by key group, so either differing would make state silently
    /// unreachable), or records them in a database that has no record yet.
    fn check_instance_record(&self) -> Result<()> {
        let found = self.db.get(INSTANCE_RECORD_KEY).map_err(rocks_err)?;
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
            .map_err(rocks_err)
    }

    /// The working directory.
    pub fn working_dir(&self) -> &Path {
        self.dir.path()
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
        self.db.property_value_cf(cf, property).map_err(rocks_err)
    }

    /// Writes every column family's memtables to SST files and waits for it.
    ///
    /// The write-ahead log is off (checkpoints are the durability mechanism), so state written
    /// since the last checkpoint lives only in memtables; a checkpoint flushes on its own. This
    /// is for callers that want the state on disk without taking a checkpoint.
    ///
    /// # Errors
    /// [`Error::RocksDb`].
    pub fn flush(&self) -> Result<()> {
        let names = std::iter::once(rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
            .chain(self.states.iter().map(|s| s.cf_name.as_str()));
        let handles: Vec<_> = names.filter_map(|name| self.db.cf_handle(name)).collect();
        self.db
            .flush_cfs_opt(&handles, &rocksdb::FlushOptions::default())
            .map_err(rocks_err)
    }

    /// Reads the registered states recorded in the default column family.
    fn load_state_records(&mut self) -> Result<()> {
        for info in read_state_records(&self.db)? {
            let cf_name = cf_name(&info.name);
            if self.db.cf_handle(&cf_name).is_none() {
                return Err(Error::corrupt(
                    self.dir.path().display().to_string(),
                    format!("state '{}' has no column family", info.name),
                ));
            }
            self.states.push(RocksState { info, cf_name });
        }
        Ok(())
    }

    /// The id of state `info.name`, creating its column family and its record in the default
    /// column family if it is new; registration and restore share this.
    ///
    /// # Errors
    /// [`Error::StateMismatch`] if the name is registered with another kind or types.
    pub(crate) fn ensure_state(&mut self, info: &StateInfo) -> Result<StateId> {
        let existing = self.states();
        if let Some(id) = find_registered(&existing, info)? {
            return Ok(id);
        }
        let id = StateId(self.states.len() as u32);
        let cf_name = cf_name(&info.name);
        if self.db.cf_handle(&cf_name).is_none() {
            self.db
                .create_cf(&cf_name, &self.options.cf_options(&self.cache, info.kind))
                .map_err(rocks_err)?;
        }
        let mut record_key = STATE_RECORD_PREFIX.to_vec();
        record_key.extend_from_slice(&id.0.to_be_bytes());
        let record = DefaultCodec::default()
            .encode(info)
            .map_err(|e| Error::Encode {
                state: info.name.clone(),
                message: e.0,
            })?;
        self.put_record(&record_key, &record)?;
        self.states.push(RocksState {
            info: info.clone(),
            cf_name,
        });
        Ok(id)
    }

    fn state(&self, id: StateId) -> Result<(&RocksState, &ColumnFamily)> {
        let state = self
            .states
            .get(id.0 as usize)
            .ok_or(Error::UnknownState { id: id.0 })?;
        let cf = self
            .db
            .cf_handle(&state.cf_name)
            .ok_or(Error::UnknownState { id: id.0 })?;
        Ok((state, cf))
    }

    /// Writes `key group ++ key ++ namespace` into `out`, checking the key group is owned.
    fn row_prefix<K: StateKey, N: StateKey>(
        &self,
        state: &str,
        key: &K,
        ns: &N,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let codec = DefaultCodec::default();
        let enc = |e: crate::codec::CodecError| Error::Encode {
            state: state.to_owned(),
            message: e.0,
        };
        out.clear();
        out.extend_from_slice(&[0; layout::KEY_GROUP_PREFIX_LEN]);
        codec.encode_into(key, out).map_err(enc)?;
        let group = self
            .assigner
            .key_group_of_bytes(&out[layout::KEY_GROUP_PREFIX_LEN..]);
        if !self.range.contains(group) {
            return Err(Error::KeyOutsideRange {
                key_group: group,
                range: self.range,
            });
        }
        out[..layout::KEY_GROUP_PREFIX_LEN].copy_from_slice(&layout::key_group_prefix(group));
        codec.encode_into(ns, out).map_err(enc)
    }

    fn map_row<K: StateKey, N: StateKey, UK: StateKey>(
        &self,
        state: &str,
        key: &K,
        ns: &N,
        user_key: &UK,
    ) -> Result<Vec<u8>> {
        let mut row = Vec::with_capacity(32);
        self.row_prefix(state, key, ns, &mut row)?;
        DefaultCodec::default()
            .encode_into(user_key, &mut row)
            .map_err(|e| Error::Encode {
                state: state.to_owned(),
                message: e.0,
            })?;
        Ok(row)
    }

    fn get_raw(
        &self,
        cf: &ColumnFamily,
        row: &[u8],
    ) -> Result<Option<rocksdb::DBPinnableSlice<'_>>> {
        self.db.get_pinned_cf(cf, row).map_err(rocks_err)
    }

    fn decode<T: serde::de::DeserializeOwned>(state: &str, bytes: &[u8]) -> Result<T> {
        DefaultCodec::default()
            .decode(bytes)
            .map_err(|e| Error::Decode {
                state: state.to_owned(),
                message: e.0,
            })
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

    fn register<K: StateKey, N: StateKey, S: StoredState>(
        &mut self,
        info: StateInfo,
    ) -> Result<StateId> {
        // Rows are bytes: the in-memory type `S` does not matter here, the type names do.
        self.ensure_state(&info)
    }

    fn get_cell<K: StateKey, N: StateKey, V: StateValue>(
        &self,
        id: StateId,
        key: &K,
        ns: &N,
    ) -> Result<Option<V>> {
        let (state, cf) = self.state(id)?;
        let mut row = Vec::with_capacity(32);
        self.row_prefix(&state.info.name, key, ns, &mut row)?;
        match self.get_raw(cf, &row)? {
            Some(bytes) => Ok(Some(Self::decode(&state.info.name, &bytes)?)),
            None => Ok(None),
        }
    }

    fn put_cell<K: StateKey, N: StateKey, V: StateValue>(
        &mut self,
        id: StateId,
        key: &K,
        ns: &N,
        value: V,
    ) -> Result<()> {
        let (state, cf) = self.state(id)?;
        let mut row = Vec::with_capacity(32);
        self.row_prefix(&state.info.name, key, ns, &mut row)?;
        let bytes = DefaultCodec::default()
            .encode(&value)
            .map_err(|e| Error::Encode {
                state: state.info.name.clone(),
                message: e.0,
            })?;
        self.db
            .put_cf_opt(cf, row, bytes, &self.write_options)
            .map_err(rocks_err)
    }

    fn clear<K: StateKey, N: StateKey>(&mut self, id: StateId, key: &K, ns: &N) -> Result<()> {
        let (state, cf) = self.state(id)?;
        let mut row = Vec::with_capacity(32);
        self.row_prefix(&state.info.name, key, ns, &mut row)?;
        if state.info.kind != StateKind::Map {
            return self
                .db
                .delete_cf_opt(cf, row, &self.write_options)
                .map_err(rocks_err);
        }
        // All rows of one map in one batch: the map disappears atomically.
        let mut batch = WriteBatch::default();
        let rows =
            self.db
                .iterator_cf_opt(cf, Self::prefix_read_options(&row), IteratorMode::Start);
        for item in rows {
            let (row_key, _) = item.map_err(rocks_err)?;
            batch.delete_cf(cf, row_key);
        }
        self.db
            .write_opt(batch, &self.write_options)
            .map_err(rocks_err)
    }

    fn get_list<K: StateKey, N: StateKey, T: StateValue>(
        &self,
        id: StateId,
        key: &K,
        ns: &N,
    ) -> Result<Vec<T>> {
        let (state, cf) = self.state(id)?;
        let mut row = Vec::with_capacity(32);
        self.row_prefix(&state.info.name, key, ns, &mut row)?;
        match self.get_raw(cf, &row)? {
            Some(bytes) => {
                decode_list(&DefaultCodec::default(), &bytes).map_err(|e| Error::Decode {
                    state: state.info.name.clone(),
                    message: e.0,
                })
            }
            None => Ok(Vec::new()),
        }
    }

    fn append_list<K: StateKey, N: StateKey, T: StateValue>(
        &mut self,
        id: StateId,
        key: &K,
        ns: &N,
        value: T,
    ) -> Result<()> {
        let (state, cf) = self.state(id)?;
        let mut row = Vec::with_capacity(32);
        self.row_prefix(&state.info.name, key, ns, &mut row)?;
        let mut operand = Vec::with_capacity(16);
        encode_list_element(&DefaultCodec::default(), &value, &mut operand).map_err(|e| {
            Error::Encode {
                state: state.info.name.clone(),
                message: e.0,
            }
        })?;
        self.db
            .merge_cf_opt(cf, row, operand, &self.write_options)
            .map_err(rocks_err)
    }

    fn replace_list<K: StateKey, N: StateKey, T: StateValue>(
        &mut self,
        id: StateId,
        key: &K,
        ns: &N,
        values: Vec<T>,
    ) -> Result<()> {
        let (state, cf) = self.state(id)?;
        let mut row = Vec::with_capacity(32);
        self.row_prefix(&state.info.name, key, ns, &mut row)?;
        if values.is_empty() {
            return self
                .db
                .delete_cf_opt(cf, row, &self.write_options)
                .map_err(rocks_err);
        }
        let codec = DefaultCodec::default();
        let mut bytes = Vec::new();
        for v in &values {
            encode_list_element(&codec, v, &mut bytes).map_err(|e| Error::Encode {
                state: state.info.name.clone(),
                message: e.0,
            })?;
        }
        self.db
            .put_cf_opt(cf, row, bytes, &self.write_options)
            .map_err(rocks_err)
    }

    fn get_map_value<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &self,
        id: StateId,
        key: &K,
        ns: &N,
        user_key: &UK,
    ) -> Result<Option<UV>> {
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
        key: &K,
        ns: &N,
        user_key: &UK,
    ) -> Result<bool> {
        let (state, cf) = self.state(id)?;
        let row = self.map_row(&state.info.name, key, ns, user_key)?;
        Ok(self.get_raw(cf, &row)?.is_some())
    }

    fn put_map_value<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        key: &K,
        ns: &N,
        user_key: UK,
        value: UV,
    ) -> Result<()> {
        let (state, cf) = self.state(id)?;
        let row = self.map_row(&state.info.name, key, ns, &user_key)?;
        let bytes = DefaultCodec::default()
            .encode(&value)
            .map_err(|e| Error::Encode {
                state: state.info.name.clone(),
                message: e.0,
            })?;
        self.db
            .put_cf_opt(cf, row, bytes, &self.write_options)
            .map_err(rocks_err)
    }

    fn remove_map_value<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        key: &K,
        ns: &N,
        user_key: &UK,
    ) -> Result<()> {
        let (state, cf) = self.state(id)?;
        let row = self.map_row(&state.info.name, key, ns, user_key)?;
        self.db
            .delete_cf_opt(cf, row, &self.write_options)
            .map_err(rocks_err)
    }

    fn map_entries<'a, K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &'a self,
        id: StateId,
        key: &K,
        ns: &N,
    ) -> Result<MapEntries<'a, UK, UV>> {
        let (state, cf) = self.state(id)?;
        let mut prefix = Vec::with_capacity(32);
        self.row_prefix(&state.info.name, key, ns, &mut prefix)?;
        let name = state.info.name.clone();
        let prefix_len = prefix.len();
        let rows =
            self.db
                .iterator_cf_opt(cf, Self::prefix_read_options(&prefix), IteratorMode::Start);
        Ok(Box::new(rows.map(move |item| {
            let (row_key, value) = item.map_err(rocks_err)?;
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
        let name = state.info.name.clone();
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
                let (row_key, _) = item.map_err(rocks_err)?;
                let codec = DefaultCodec::default();
                let body = &row_key[layout::KEY_GROUP_PREFIX_LEN.min(row_key.len())..];
                let corrupt = |e: crate::codec::CodecError| Error::Decode {
                    state: name.clone(),
                    message: e.0,
                };
                let (key, used_k): (K, usize) = codec.decode_prefix(body).map_err(corrupt)?;
                let (namespace, used_n): (N, usize) =
                    codec.decode_prefix(&body[used_k..]).map_err(corrupt)?;
                let prefix = &row_key[..layout::KEY_GROUP_PREFIX_LEN + used_k + used_n];
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
