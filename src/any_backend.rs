//! [`AnyBackend`]: the backend chosen at runtime, and the configuration that chooses it.
//!
//! A closed enum rather than a trait object: the state API has generic methods (typed keys and
//! values), which a `dyn` trait cannot have, and a `match` per call costs less than a virtual
//! call. Adding a backend means adding a variant here.

use std::path::PathBuf;

use crate::backend::{BackendKind, KeyedStateBackend, MapEntries, StateKeys};
#[cfg_attr(feature = "rocksdb", allow(unused_imports))]
use crate::error::{Error, Result};
use crate::heap::HeapBackend;
use crate::key_group::{KeyGroupAssigner, KeyGroupRange};
use crate::state::{StateId, StateInfo, StateKey, StateValue, StoredState};

#[cfg(feature = "rocksdb")]
use crate::rocks::{RocksDbBackend, RocksDbOptions};

/// How to open a backend: which implementation, for which key groups, where.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// Which backend.
    pub kind: BackendKind,
    /// The job's max parallelism (number of key groups).
    pub max_parallelism: u32,
    /// The key groups this instance owns.
    pub key_groups: KeyGroupRange,
    /// Working directory of the RocksDB backend; `None` for a temporary directory that is
    /// removed when the backend is dropped. Ignored by the heap backend.
    pub working_dir: Option<PathBuf>,
    /// RocksDB tuning.
    #[cfg(feature = "rocksdb")]
    pub rocksdb: RocksDbOptions,
    /// Whether a restore (checkpoint or savepoint) into `working_dir` may replace what the
    /// directory holds: a database, or the leftovers of a backend that did not close cleanly
    /// or of a restore that did not finish. Without it (the default), such a restore is
    /// [`Error::UncleanWorkingDirectory`] or [`Error::Incompatible`] naming the directory, and
    /// nothing is touched. Ignored by the heap backend and by [`AnyBackend::open`].
    pub replace_existing: bool,
}

impl BackendConfig {
    /// A heap backend configuration.
    pub fn heap(max_parallelism: u32, key_groups: KeyGroupRange) -> Self {
        Self {
            kind: BackendKind::Heap,
            max_parallelism,
            key_groups,
            working_dir: None,
            #[cfg(feature = "rocksdb")]
            rocksdb: RocksDbOptions::default(),
            replace_existing: false,
        }
    }

    /// This configuration with [`BackendConfig::replace_existing`] set to `replace`.
    #[must_use]
    pub fn with_replace_existing(mut self, replace: bool) -> Self {
        self.replace_existing = replace;
        self
    }

    /// A RocksDB backend configuration in a temporary working directory, default options.
    pub fn rocksdb(max_parallelism: u32, key_groups: KeyGroupRange) -> Self {
        Self {
            kind: BackendKind::RocksDb,
            ..Self::heap(max_parallelism, key_groups)
        }
    }
}

/// One of the backends, chosen at runtime. Implements [`KeyedStateBackend`] by delegation.
// A backend is created once per operator instance and never moved on a hot path; boxing the
// larger variant would add an indirection to every state access instead.
#[allow(clippy::large_enum_variant)]
pub enum AnyBackend {
    /// The heap backend.
    Heap(HeapBackend),
    /// The RocksDB backend.
    #[cfg(feature = "rocksdb")]
    RocksDb(RocksDbBackend),
}

impl AnyBackend {
    /// Opens an empty backend as `config` says.
    ///
    /// # Errors
    /// Invalid parallelism or range; [`Error::Incompatible`] for RocksDB in a build without the
    /// `rocksdb` feature; [`Error::UncleanWorkingDirectory`] for a RocksDB working directory
    /// whose last backend did not close cleanly (restore into it with
    /// [`BackendConfig::replace_existing`] instead); RocksDB open errors.
    pub fn open(config: &BackendConfig) -> Result<Self> {
        match config.kind {
            BackendKind::Heap => Ok(AnyBackend::Heap(HeapBackend::new(
                config.max_parallelism,
                config.key_groups,
            )?)),
            #[cfg(feature = "rocksdb")]
            BackendKind::RocksDb => Ok(AnyBackend::RocksDb(RocksDbBackend::open(
                config.max_parallelism,
                config.key_groups,
                config.working_dir.clone(),
                config.rocksdb.clone(),
            )?)),
            #[cfg(not(feature = "rocksdb"))]
            BackendKind::RocksDb => Err(Error::Incompatible {
                reason: "this build has no RocksDB backend (feature `rocksdb` is off)".into(),
            }),
        }
    }
}

macro_rules! dispatch {
    ($self:expr, $b:ident => $e:expr) => {
        match $self {
            AnyBackend::Heap($b) => $e,
            #[cfg(feature = "rocksdb")]
            AnyBackend::RocksDb($b) => $e,
        }
    };
}

impl KeyedStateBackend for AnyBackend {
    fn backend_kind(&self) -> BackendKind {
        dispatch!(self, b => b.backend_kind())
    }

    fn assigner(&self) -> KeyGroupAssigner {
        dispatch!(self, b => b.assigner())
    }

    fn key_group_range(&self) -> KeyGroupRange {
        dispatch!(self, b => b.key_group_range())
    }

    fn states(&self) -> Vec<StateInfo> {
        dispatch!(self, b => b.states())
    }

    fn register<K: StateKey, N: StateKey, S: StoredState>(
        &mut self,
        info: StateInfo,
    ) -> Result<StateId> {
        dispatch!(self, b => b.register::<K, N, S>(info))
    }

    fn get_cell<K: StateKey, N: StateKey, V: StateValue>(
        &self,
        id: StateId,
        key: &K,
        ns: &N,
    ) -> Result<Option<V>> {
        dispatch!(self, b => b.get_cell(id, key, ns))
    }

    fn put_cell<K: StateKey, N: StateKey, V: StateValue>(
        &mut self,
        id: StateId,
        key: &K,
        ns: &N,
        value: V,
    ) -> Result<()> {
        dispatch!(self, b => b.put_cell(id, key, ns, value))
    }

    fn clear<K: StateKey, N: StateKey>(&mut self, id: StateId, key: &K, ns: &N) -> Result<()> {
        dispatch!(self, b => b.clear(id, key, ns))
    }

    fn get_list<K: StateKey, N: StateKey, T: StateValue>(
        &self,
        id: StateId,
        key: &K,
        ns: &N,
    ) -> Result<Vec<T>> {
        dispatch!(self, b => b.get_list(id, key, ns))
    }

    fn append_list<K: StateKey, N: StateKey, T: StateValue>(
        &mut self,
        id: StateId,
        key: &K,
        ns: &N,
        value: T,
    ) -> Result<()> {
        dispatch!(self, b => b.append_list(id, key, ns, value))
    }

    fn replace_list<K: StateKey, N: StateKey, T: StateValue>(
        &mut self,
        id: StateId,
        key: &K,
        ns: &N,
        values: Vec<T>,
    ) -> Result<()> {
        dispatch!(self, b => b.replace_list(id, key, ns, values))
    }

    fn get_map_value<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &self,
        id: StateId,
        key: &K,
        ns: &N,
        user_key: &UK,
    ) -> Result<Option<UV>> {
        dispatch!(self, b => b.get_map_value::<K, N, UK, UV>(id, key, ns, user_key))
    }

    fn contains_map_key<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &self,
        id: StateId,
        key: &K,
        ns: &N,
        user_key: &UK,
    ) -> Result<bool> {
        dispatch!(self, b => b.contains_map_key::<K, N, UK, UV>(id, key, ns, user_key))
    }

    fn put_map_value<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        key: &K,
        ns: &N,
        user_key: UK,
        value: UV,
    ) -> Result<()> {
        dispatch!(self, b => b.put_map_value(id, key, ns, user_key, value))
    }

    fn remove_map_value<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        key: &K,
        ns: &N,
        user_key: &UK,
    ) -> Result<()> {
        dispatch!(self, b => b.remove_map_value::<K, N, UK, UV>(id, key, ns, user_key))
    }

    fn map_entries<'a, K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &'a self,
        id: StateId,
        key: &K,
        ns: &N,
    ) -> Result<MapEntries<'a, UK, UV>> {
        dispatch!(self, b => b.map_entries(id, key, ns))
    }

    fn keys<'a, K: StateKey, N: StateKey>(
        &'a self,
        id: StateId,
        ns: Option<&N>,
    ) -> Result<StateKeys<'a, K, N>> {
        dispatch!(self, b => b.keys(id, ns))
    }
}
