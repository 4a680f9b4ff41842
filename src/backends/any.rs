//! [`AnyBackend`]: the backend chosen at runtime from a [`BackendConfig`].
//!
//! A closed enum rather than a trait object: the state API has generic methods (typed keys and
//! values), which a `dyn` trait cannot have, and a `match` per call costs less than a virtual
//! call. This module is the one place that lists the backends: adding one means a variant here
//! and the arms of `dispatch!` and `by_kind!`; the runtime is generic over
//! [`CheckpointedBackend`] and needs no change.

use crate::backends::config::BackendConfig;
use crate::backends::heap::HeapBackend;
use crate::backends::interface::{
    CheckpointedBackend, PendingSavepoint, PendingSnapshot, SnapshotUpload,
};
use crate::backends::reference::ReferenceBackend;
#[cfg_attr(feature = "rocksdb", allow(unused_imports))]
use crate::model::error::{Error, Result};
use crate::model::format::metadata::{FetchFile, InstanceId, InstanceMetadata};
use crate::model::format::view::{RowSource, RowView};
use crate::model::key_group::{KeyGroupAssigner, KeyGroupRange};
use crate::model::state::backend::{BackendKind, KeyedStateBackend, MapEntries, StateKeys};
use crate::model::state::key::KeyRef;
use crate::model::state::operator::OperatorState;
use crate::model::state::{StateId, StateInfo, StateKey, StateValue, StoredState};

#[cfg(feature = "rocksdb")]
use crate::backends::rocks::RocksDbBackend;

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
    /// The reference backend.
    Reference(ReferenceBackend),
}

/// Evaluates `$e` with `$b` bound to the backend inside `$self`.
macro_rules! dispatch {
    ($self:expr, $b:ident => $e:expr) => {
        match $self {
            AnyBackend::Heap($b) => $e,
            #[cfg(feature = "rocksdb")]
            AnyBackend::RocksDb($b) => $e,
            AnyBackend::Reference($b) => $e,
        }
    };
}

/// Evaluates `$e` with `$b` naming the backend type `config.kind` selects, and wraps the
/// backend it returns in that variant.
macro_rules! by_kind {
    ($config:expr, $b:ident => $e:expr) => {
        match $config.kind {
            BackendKind::Heap => {
                type $b = HeapBackend;
                $e.map(AnyBackend::Heap)
            }
            #[cfg(feature = "rocksdb")]
            BackendKind::RocksDb => {
                type $b = RocksDbBackend;
                $e.map(AnyBackend::RocksDb)
            }
            #[cfg(not(feature = "rocksdb"))]
            BackendKind::RocksDb => Err(Error::Incompatible {
                reason: "this build has no RocksDB backend (feature `rocksdb` is off)".into(),
            }),
            BackendKind::Reference => {
                type $b = ReferenceBackend;
                $e.map(AnyBackend::Reference)
            }
        }
    };
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
        <Self as CheckpointedBackend>::open(config)
    }

    /// The synchronous part of checkpoint `checkpoint_id` ([`CheckpointedBackend::snapshot`]):
    /// RocksDB makes a native checkpoint (flush + hard links), the heap backend freezes its
    /// copy-on-write maps.
    ///
    /// # Errors
    /// [`Error::CheckpointState`] if ids do not grow (RocksDB); RocksDB and I/O errors.
    pub fn snapshot(&mut self, checkpoint_id: u64) -> Result<PendingSnapshot> {
        CheckpointedBackend::snapshot(self, checkpoint_id)
    }

    /// The synchronous part of a savepoint ([`CheckpointedBackend::savepoint`]): freezes the
    /// heap maps, or makes a native RocksDB checkpoint and opens it read-only.
    ///
    /// # Errors
    /// RocksDB and I/O errors.
    pub fn savepoint(&mut self) -> Result<PendingSavepoint> {
        CheckpointedBackend::savepoint(self)
    }

    /// This instance's lineage id: what identifies its part of a checkpoint's metadata
    /// ([`InstanceMetadata::instance_id`]).
    pub fn instance_id(&self) -> InstanceId {
        CheckpointedBackend::instance_id(self)
    }

    /// Tells the backend that a checkpoint it took completed; `metadata` is its part (find it
    /// by instance id: `complete` orders instances by key group, not by caller). RocksDB makes
    /// its shared files the base of the next incremental checkpoint; the heap backend (full
    /// snapshots) only checks that the part is its own.
    ///
    /// # Errors
    /// [`Error::ForeignInstance`] if `metadata` is another instance's part (another instance
    /// id, backend, max parallelism or key-group range); nothing changes then.
    pub fn notify_checkpoint_complete(&mut self, metadata: &InstanceMetadata) -> Result<()> {
        CheckpointedBackend::notify_checkpoint_complete(self, metadata)
    }
}

impl CheckpointedBackend for AnyBackend {
    fn open(config: &BackendConfig) -> Result<Self> {
        by_kind!(config, B => <B as CheckpointedBackend>::open(config))
    }

    fn instance_id(&self) -> InstanceId {
        dispatch!(self, b => CheckpointedBackend::instance_id(b))
    }

    fn operator_state(&self) -> &OperatorState {
        dispatch!(self, b => b.operator_state())
    }

    fn operator_state_mut(&mut self) -> &mut OperatorState {
        dispatch!(self, b => b.operator_state_mut())
    }

    fn snapshot_state(&mut self, checkpoint_id: u64) -> Result<Box<dyn SnapshotUpload>> {
        dispatch!(self, b => b.snapshot_state(checkpoint_id))
    }

    fn notify_checkpoint_complete(&mut self, part: &InstanceMetadata) -> Result<()> {
        dispatch!(self, b => CheckpointedBackend::notify_checkpoint_complete(b, part))
    }

    fn row_view(&mut self) -> Result<Box<dyn RowView>> {
        dispatch!(self, b => b.row_view())
    }

    fn restore_checkpoint(
        config: &BackendConfig,
        sources: &[&InstanceMetadata],
        fetch: &FetchFile<'_>,
        claim: bool,
    ) -> Result<Self> {
        by_kind!(config, B => <B as CheckpointedBackend>::restore_checkpoint(config, sources, fetch, claim))
    }

    fn restore_rows(config: &BackendConfig, rows: &mut dyn RowSource) -> Result<Self> {
        by_kind!(config, B => <B as CheckpointedBackend>::restore_rows(config, rows))
    }
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

    fn ttl_clock(&self) -> &crate::model::state::ttl::TtlClock {
        dispatch!(self, b => b.ttl_clock())
    }

    fn register_expiring<K: StateKey, N: StateKey, S: crate::model::state::ttl::ExpiringState>(
        &mut self,
        info: StateInfo,
    ) -> Result<StateId> {
        dispatch!(self, b => b.register_expiring::<K, N, S>(info))
    }

    #[inline]
    fn ttl_cleanup(&mut self, id: StateId) -> Result<()> {
        dispatch!(self, b => b.ttl_cleanup(id))
    }

    fn states(&self) -> Vec<StateInfo> {
        dispatch!(self, b => b.states())
    }

    fn migrate_rows(&mut self, migration: &crate::model::state::RowMigration) -> Result<()> {
        dispatch!(self, b => b.migrate_rows(migration))
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
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<Option<V>> {
        dispatch!(self, b => b.get_cell(id, key, ns))
    }

    fn put_cell<K: StateKey, N: StateKey, V: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        value: V,
    ) -> Result<()> {
        dispatch!(self, b => b.put_cell(id, key, ns, value))
    }

    fn get_cells<K: StateKey, N: StateKey, V: StateValue>(
        &self,
        id: StateId,
        keys: &[KeyRef<'_, K>],
        ns: &N,
    ) -> Result<Vec<Option<V>>> {
        dispatch!(self, b => b.get_cells(id, keys, ns))
    }

    fn with_cell<K, N, V, R, F>(&self, id: StateId, key: KeyRef<'_, K>, ns: &N, f: F) -> Result<R>
    where
        K: StateKey,
        N: StateKey,
        V: StateValue,
        F: FnOnce(Option<&V>) -> R,
    {
        dispatch!(self, b => b.with_cell(id, key, ns, f))
    }

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
        dispatch!(self, b => b.update_cell(id, key, ns, f))
    }

    fn clear<K: StateKey, N: StateKey>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<()> {
        dispatch!(self, b => b.clear(id, key, ns))
    }

    fn get_list<K: StateKey, N: StateKey, T: StateValue>(
        &self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<Vec<T>> {
        dispatch!(self, b => b.get_list(id, key, ns))
    }

    fn append_list<K: StateKey, N: StateKey, T: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        value: T,
    ) -> Result<()> {
        dispatch!(self, b => b.append_list(id, key, ns, value))
    }

    fn replace_list<K: StateKey, N: StateKey, T: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        values: Vec<T>,
    ) -> Result<()> {
        dispatch!(self, b => b.replace_list(id, key, ns, values))
    }

    fn get_map_value<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: &UK,
    ) -> Result<Option<UV>> {
        dispatch!(self, b => b.get_map_value::<K, N, UK, UV>(id, key, ns, user_key))
    }

    fn contains_map_key<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: &UK,
    ) -> Result<bool> {
        dispatch!(self, b => b.contains_map_key::<K, N, UK, UV>(id, key, ns, user_key))
    }

    fn put_map_value<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: UK,
        value: UV,
    ) -> Result<()> {
        dispatch!(self, b => b.put_map_value(id, key, ns, user_key, value))
    }

    fn remove_map_value<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: &UK,
    ) -> Result<()> {
        dispatch!(self, b => b.remove_map_value::<K, N, UK, UV>(id, key, ns, user_key))
    }

    fn map_entries<'a, K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &'a self,
        id: StateId,
        key: KeyRef<'_, K>,
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
