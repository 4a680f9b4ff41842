//! The keyed-state backend trait engines program against. [`crate::AnyBackend`], the closed
//! enum over the backends for choosing one at runtime from configuration, implements it too.
//!
//! The trait's required methods are the primitive operations every backend implements (cells,
//! lists, maps, key iteration); typed handles ([`crate::ValueState`] and friends) are built on
//! them, so reducing and aggregating state behave identically on every backend. The provided
//! `*_state` methods register a descriptor and return its handle.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::model::error::{Error, Result};
use crate::model::key_group::{KeyGroup, KeyGroupAssigner, KeyGroupRange};
use crate::model::state::key::{KeyContext, KeyRef};
use crate::model::state::migration::{Migrations, RowMigration};
use crate::model::state::ttl::{
    ExpiringState, StateTtlConfig, TtlAggregatingState, TtlChange, TtlClock, TtlListState,
    TtlMapState, TtlReducingState, TtlValue, TtlValueState,
};
use crate::model::state::{
    AggregatingState, AggregatingStateDescriptor, Cell, ListCell, ListState, ListStateDescriptor,
    MapCell, MapState, MapStateDescriptor, ReducingState, ReducingStateDescriptor, StateId,
    StateInfo, StateKey, StateValue, StoredState, ValueState, ValueStateDescriptor,
};

/// Which backend implementation holds the state. Stored as one byte in metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// [`crate::HeapBackend`]: typed values in memory.
    Heap = 1,
    /// The RocksDB backend: serialized rows in an embedded RocksDB.
    RocksDb = 2,
    /// [`crate::backends::reference::ReferenceBackend`]: canonical rows in ordered maps, the
    /// executable specification the other backends are tested against.
    Reference = 3,
}

impl BackendKind {
    /// The kind with byte code `code`, if any.
    pub fn from_code(code: u8) -> Option<BackendKind> {
        match code {
            1 => Some(BackendKind::Heap),
            2 => Some(BackendKind::RocksDb),
            3 => Some(BackendKind::Reference),
            _ => None,
        }
    }

    /// The byte code of the kind.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Heap => "heap",
            BackendKind::RocksDb => "rocksdb",
            BackendKind::Reference => "reference",
        })
    }
}

/// Boxed iterator over map entries, as [`KeyedStateBackend::map_entries`] returns.
pub type MapEntries<'a, UK, UV> = Box<dyn Iterator<Item = Result<(UK, UV)>> + 'a>;

/// Boxed iterator over `(key, namespace)` pairs, as [`KeyedStateBackend::keys`] returns.
pub type StateKeys<'a, K, N> = Box<dyn Iterator<Item = Result<(K, N)>> + 'a>;

/// A keyed-state backend: holds the state of the key groups one operator instance owns.
///
/// Every operation addresses `(state, key, namespace)`; the key's key group must lie in
/// [`KeyedStateBackend::key_group_range`], otherwise the operation fails with
/// [`Error::KeyOutsideRange`].
pub trait KeyedStateBackend {
    /// Which implementation this is.
    fn backend_kind(&self) -> BackendKind;

    /// The job's key-group assigner (its `max_parallelism`).
    fn assigner(&self) -> KeyGroupAssigner;

    /// The key groups this instance owns.
    fn key_group_range(&self) -> KeyGroupRange;

    /// The registered states, in registration order (index = [`StateId::index`]).
    fn states(&self) -> Vec<StateInfo>;

    /// The clocks this backend's states with a time to live are measured on
    /// ([`crate::state::ttl`]): set processing time or advance the watermark through it.
    fn ttl_clock(&self) -> &TtlClock;

    /// Registers a state with a time to live: [`KeyedStateBackend::register`], plus whatever
    /// cleanup the backend runs on the stored type `S` (the heap backend's incremental
    /// cleanup). The `*_with_ttl` methods call it.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::register`].
    fn register_expiring<K: StateKey, N: StateKey, S: ExpiringState>(
        &mut self,
        info: StateInfo,
    ) -> Result<StateId> {
        self.register::<K, N, S>(info)
    }

    /// One step of the background cleanup of state `id`'s expired rows, which TTL handles
    /// take on every access (the heap backend checks a bounded number of entries; RocksDB
    /// leaves it to compactions, the default).
    ///
    /// # Errors
    /// [`Error::UnknownState`], [`Error::ForeignHandle`].
    #[inline]
    fn ttl_cleanup(&mut self, id: StateId) -> Result<()> {
        let _ = id;
        Ok(())
    }

    /// Registers a state whose entries are held as `S`, or returns the id of the state already
    /// registered under that name with identical info.
    ///
    /// # Errors
    /// [`Error::StateMismatch`] if the name is registered with another kind or types.
    fn register<K: StateKey, N: StateKey, S: StoredState>(
        &mut self,
        info: StateInfo,
    ) -> Result<StateId>;

    /// Migrates a restored state to the schema version `info` declares, if it was written at
    /// another one ([`crate::state::migration`]), and returns `info` for registration. Every
    /// `*_state` method calls it before [`KeyedStateBackend::register`]. A state that is not
    /// restored, or restored at `info`'s version, is left alone.
    ///
    /// # Errors
    /// [`Error::NoMigrationPath`] or [`Error::IncompatibleMigration`] (no row has changed);
    /// [`Error::StateMismatch`] if the state was registered since it was restored;
    /// [`Error::Decode`] for a row that does not decode as the old version (the backend's
    /// copy of the state is then partly migrated: drop the backend).
    fn migrate_restored(&mut self, info: StateInfo, migrations: &Migrations) -> Result<StateInfo> {
        let restored = self.states().into_iter().find(|s| s.name == info.name);
        if let Some(restored) = restored.filter(|s| s.schema_version != info.schema_version) {
            let migration = RowMigration::plan(&restored, &info, migrations)?;
            self.migrate_rows(&migration)?;
        }
        Ok(info)
    }

    /// Rewrites every row of the restored state `migration` names through it
    /// ([`RowMigration::apply`]) and records the state as [`RowMigration::migrated_info`].
    ///
    /// # Errors
    /// [`Error::StateMismatch`] if the state was registered since it was restored (handles read
    /// the old layout); [`Error::Decode`] for a row that does not migrate.
    fn migrate_rows(&mut self, migration: &RowMigration) -> Result<()>;

    /// The single value of `(key, ns)` in a value, reducing or aggregating state.
    ///
    /// # Errors
    /// Key outside range, decode errors, backend errors.
    fn get_cell<K: StateKey, N: StateKey, V: StateValue>(
        &self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<Option<V>>;

    /// Sets the single value of `(key, ns)`.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::get_cell`].
    fn put_cell<K: StateKey, N: StateKey, V: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        value: V,
    ) -> Result<()>;

    /// The values of many keys of one state and namespace, in the order of `keys`: one call
    /// for a container of records (RocksDB answers it with one batched multi-get).
    ///
    /// # Errors
    /// As [`KeyedStateBackend::get_cell`], for the first key that fails.
    fn get_cells<K: StateKey, N: StateKey, V: StateValue>(
        &self,
        id: StateId,
        keys: &[KeyRef<'_, K>],
        ns: &N,
    ) -> Result<Vec<Option<V>>> {
        keys.iter().map(|key| self.get_cell(id, *key, ns)).collect()
    }

    /// Calls `f` with the value of `(key, ns)` borrowed (no copy where the backend holds typed
    /// values) and returns its result.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::get_cell`].
    #[inline]
    fn with_cell<K, N, V, R, F>(&self, id: StateId, key: KeyRef<'_, K>, ns: &N, f: F) -> Result<R>
    where
        K: StateKey,
        N: StateKey,
        V: StateValue,
        F: FnOnce(Option<&V>) -> R,
    {
        Ok(f(self.get_cell::<K, N, V>(id, key, ns)?.as_ref()))
    }

    /// Read-modify-write of the value of `(key, ns)`: `f` gets the current value and returns
    /// the new one (`None` removes it). The heap backend does it with one lookup when the
    /// value exists; the default reads and then writes.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::get_cell`].
    #[inline]
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
        let current = self.get_cell::<K, N, V>(id, key, ns)?;
        match f(current.as_ref()) {
            Some(value) => self.put_cell(id, key, ns, value),
            None if current.is_some() => self.clear(id, key, ns),
            None => Ok(()),
        }
    }

    /// Removes everything `(key, ns)` holds in state `id`, whatever its kind.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::get_cell`].
    fn clear<K: StateKey, N: StateKey>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<()>;

    /// The list of `(key, ns)`; empty if none.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::get_cell`].
    fn get_list<K: StateKey, N: StateKey, T: StateValue>(
        &self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<Vec<T>>;

    /// Appends to the list of `(key, ns)`.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::get_cell`].
    fn append_list<K: StateKey, N: StateKey, T: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        value: T,
    ) -> Result<()>;

    /// Replaces the list of `(key, ns)`; an empty list removes it.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::get_cell`].
    fn replace_list<K: StateKey, N: StateKey, T: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        values: Vec<T>,
    ) -> Result<()>;

    /// The value of `user_key` in the map of `(key, ns)`.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::get_cell`].
    fn get_map_value<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: &UK,
    ) -> Result<Option<UV>>;

    /// Whether the map of `(key, ns)` holds `user_key`.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::get_cell`].
    fn contains_map_key<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: &UK,
    ) -> Result<bool>;

    /// Sets `user_key` in the map of `(key, ns)`.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::get_cell`].
    fn put_map_value<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: UK,
        value: UV,
    ) -> Result<()>;

    /// Removes `user_key` from the map of `(key, ns)`.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::get_cell`].
    fn remove_map_value<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: &UK,
    ) -> Result<()>;

    /// The entries of the map of `(key, ns)`, in no specified order.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::get_cell`].
    fn map_entries<'a, K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &'a self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<MapEntries<'a, UK, UV>>;

    /// Every `(key, namespace)` that holds data in state `id`, optionally only those of
    /// namespace `ns`, each once, in no specified order.
    ///
    /// # Errors
    /// Decode errors, backend errors.
    fn keys<'a, K: StateKey, N: StateKey>(
        &'a self,
        id: StateId,
        ns: Option<&N>,
    ) -> Result<StateKeys<'a, K, N>>;

    /// The key group of `key`.
    ///
    /// # Errors
    /// [`Error::Encode`] if the key cannot be serialized.
    #[inline]
    fn key_group_of<K: StateKey>(&self, key: &K) -> Result<KeyGroup> {
        self.assigner().key_group_of(key)
    }

    /// The key of the record being processed, with its key group computed and checked once:
    /// pass `&context` to every handle call for this record instead of the key
    /// ([`crate::model::state::key`]).
    ///
    /// # Errors
    /// [`Error::Encode`] if the key cannot be serialized; [`Error::KeyOutsideRange`] if this
    /// instance does not own its key group.
    #[inline]
    fn key_context<K: StateKey>(&self, key: K) -> Result<KeyContext<K>> {
        let context = KeyContext::new(key, self.assigner())?;
        let range = self.key_group_range();
        if !range.contains(context.key_group()) {
            return Err(Error::KeyOutsideRange {
                key_group: context.key_group(),
                range,
            });
        }
        Ok(context)
    }

    /// Registers (or looks up) a value state.
    ///
    /// # Errors
    /// [`Error::StateMismatch`] if the name is taken by another kind or types.
    fn value_state<K: StateKey, N: StateKey, V: StateValue>(
        &mut self,
        descriptor: &ValueStateDescriptor<K, N, V>,
    ) -> Result<ValueState<K, N, V>>
    where
        Self: Sized,
    {
        let info = self.migrate_restored(descriptor.info(), descriptor.migrations())?;
        let id = self.register::<K, N, Cell<V>>(info)?;
        Ok(ValueState {
            id,
            _types: PhantomData,
        })
    }

    /// Registers (or looks up) a list state.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::value_state`].
    fn list_state<K: StateKey, N: StateKey, T: StateValue>(
        &mut self,
        descriptor: &ListStateDescriptor<K, N, T>,
    ) -> Result<ListState<K, N, T>>
    where
        Self: Sized,
    {
        let info = self.migrate_restored(descriptor.info(), descriptor.migrations())?;
        let id = self.register::<K, N, ListCell<T>>(info)?;
        Ok(ListState {
            id,
            _types: PhantomData,
        })
    }

    /// Registers (or looks up) a map state.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::value_state`].
    fn map_state<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        descriptor: &MapStateDescriptor<K, N, UK, UV>,
    ) -> Result<MapState<K, N, UK, UV>>
    where
        Self: Sized,
    {
        let info = self.migrate_restored(
            descriptor.info(),
            &descriptor.migrations().for_map::<K, N>(),
        )?;
        let id = self.register::<K, N, MapCell<UK, UV>>(info)?;
        Ok(MapState {
            id,
            _types: PhantomData,
        })
    }

    /// Registers (or looks up) a reducing state.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::value_state`].
    fn reducing_state<K: StateKey, N: StateKey, V: StateValue>(
        &mut self,
        descriptor: &ReducingStateDescriptor<K, N, V>,
    ) -> Result<ReducingState<K, N, V>>
    where
        Self: Sized,
    {
        let info = self.migrate_restored(descriptor.info(), descriptor.migrations())?;
        let id = self.register::<K, N, Cell<V>>(info)?;
        Ok(ReducingState {
            id,
            reduce: Arc::clone(&descriptor.reduce),
            _types: PhantomData,
        })
    }

    /// Registers (or looks up) an aggregating state.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::value_state`].
    fn aggregating_state<K: StateKey, N: StateKey, IN, ACC: StateValue, OUT>(
        &mut self,
        descriptor: &AggregatingStateDescriptor<K, N, IN, ACC, OUT>,
    ) -> Result<AggregatingState<K, N, IN, ACC, OUT>>
    where
        Self: Sized,
    {
        let info = self.migrate_restored(descriptor.info(), descriptor.migrations())?;
        let id = self.register::<K, N, Cell<ACC>>(info)?;
        Ok(AggregatingState {
            id,
            function: Arc::clone(&descriptor.function),
            _types: PhantomData,
        })
    }

    /// Registers (or looks up) a value state whose values expire `ttl` after they were last
    /// written ([`crate::state::ttl`]). A restored state may come back with another TTL, or
    /// without one: see [`TtlChange`].
    ///
    /// # Errors
    /// As [`KeyedStateBackend::value_state`]; [`Error::StateMismatch`] also if the state is
    /// registered here with another TTL.
    fn value_state_with_ttl<K: StateKey, N: StateKey, V: StateValue>(
        &mut self,
        descriptor: &ValueStateDescriptor<K, N, V>,
        ttl: StateTtlConfig,
    ) -> Result<TtlValueState<K, N, V>>
    where
        Self: Sized,
    {
        let info = self.migrate_restored(descriptor.info(), descriptor.migrations())?;
        let id = self.register_expiring::<K, N, Cell<TtlValue<V>>>(info.with_ttl(ttl))?;
        Ok(TtlValueState {
            inner: ValueState {
                id,
                _types: PhantomData,
            },
            ttl,
        })
    }

    /// Registers (or looks up) a list state whose elements expire one by one, `ttl` after each
    /// was last written.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::value_state_with_ttl`].
    fn list_state_with_ttl<K: StateKey, N: StateKey, T: StateValue>(
        &mut self,
        descriptor: &ListStateDescriptor<K, N, T>,
        ttl: StateTtlConfig,
    ) -> Result<TtlListState<K, N, T>>
    where
        Self: Sized,
    {
        let info = self.migrate_restored(descriptor.info(), descriptor.migrations())?;
        let id = self.register_expiring::<K, N, ListCell<TtlValue<T>>>(info.with_ttl(ttl))?;
        Ok(TtlListState {
            inner: ListState {
                id,
                _types: PhantomData,
            },
            ttl,
        })
    }

    /// Registers (or looks up) a map state whose entries expire one by one, `ttl` after each
    /// was last written.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::value_state_with_ttl`].
    fn map_state_with_ttl<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        descriptor: &MapStateDescriptor<K, N, UK, UV>,
        ttl: StateTtlConfig,
    ) -> Result<TtlMapState<K, N, UK, UV>>
    where
        Self: Sized,
    {
        let info = self.migrate_restored(
            descriptor.info(),
            &descriptor.migrations().for_map::<K, N>(),
        )?;
        let id = self.register_expiring::<K, N, MapCell<UK, TtlValue<UV>>>(info.with_ttl(ttl))?;
        Ok(TtlMapState {
            inner: MapState {
                id,
                _types: PhantomData,
            },
            ttl,
        })
    }

    /// Registers (or looks up) a reducing state whose value expires `ttl` after its last
    /// `add`.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::value_state_with_ttl`].
    fn reducing_state_with_ttl<K: StateKey, N: StateKey, V: StateValue>(
        &mut self,
        descriptor: &ReducingStateDescriptor<K, N, V>,
        ttl: StateTtlConfig,
    ) -> Result<TtlReducingState<K, N, V>>
    where
        Self: Sized,
    {
        let info = self.migrate_restored(descriptor.info(), descriptor.migrations())?;
        let id = self.register_expiring::<K, N, Cell<TtlValue<V>>>(info.with_ttl(ttl))?;
        Ok(TtlReducingState {
            id,
            reduce: Arc::clone(&descriptor.reduce),
            ttl,
            _types: PhantomData,
        })
    }

    /// Registers (or looks up) an aggregating state whose accumulator expires `ttl` after its
    /// last `add`.
    ///
    /// # Errors
    /// As [`KeyedStateBackend::value_state_with_ttl`].
    fn aggregating_state_with_ttl<K: StateKey, N: StateKey, IN, ACC: StateValue, OUT>(
        &mut self,
        descriptor: &AggregatingStateDescriptor<K, N, IN, ACC, OUT>,
        ttl: StateTtlConfig,
    ) -> Result<TtlAggregatingState<K, N, IN, ACC, OUT>>
    where
        Self: Sized,
    {
        let info = self.migrate_restored(descriptor.info(), descriptor.migrations())?;
        let id = self.register_expiring::<K, N, Cell<TtlValue<ACC>>>(info.with_ttl(ttl))?;
        Ok(TtlAggregatingState {
            id,
            function: Arc::clone(&descriptor.function),
            ttl,
            _types: PhantomData,
        })
    }
}

/// Checks a registration against the states registered so far: `Ok(Some(index))` if the same
/// state is already registered (its time to live may differ: [`ttl_change`] decides whether
/// that is allowed), `Ok(None)` if the name is free. Every backend registers
/// through it, so names and type checks are the same everywhere.
///
/// # Errors
/// [`Error::InvalidStateName`] for an empty name or one over 255 bytes;
/// [`Error::StateMismatch`] if the name is registered with another kind or types.
pub fn find_registered(existing: &[StateInfo], info: &StateInfo) -> Result<Option<usize>> {
    if info.name.is_empty() {
        return Err(Error::InvalidStateName {
            name: info.name.clone(),
            reason: "state names must not be empty",
        });
    }
    if info.name.len() > 255 {
        return Err(Error::InvalidStateName {
            name: info.name.clone(),
            reason: "state names are at most 255 bytes",
        });
    }
    match existing.iter().position(|s| s.name == info.name) {
        None => Ok(None),
        Some(i) if existing[i].same_but_ttl(info) => Ok(Some(i)),
        Some(i) => Err(Error::StateMismatch {
            name: info.name.clone(),
            registered: existing[i].describe(),
            requested: info.describe(),
        }),
    }
}

/// What registering `info` does to the registered state `existing` (the same state but for
/// its time to live, as [`find_registered`] found it): `Ok(None)` if the time to live is the
/// same, `Ok(Some(change))` for the rows' change and a new recorded TTL. Only a state that was
/// restored and not registered since may change: a handle issued under the old TTL reads the
/// rows in the old layout, so changing the TTL under it is refused.
///
/// # Errors
/// [`Error::StateMismatch`] if the TTL differs and `restored` is false.
pub fn ttl_change(
    existing: &StateInfo,
    info: &StateInfo,
    restored: bool,
    clock: &TtlClock,
) -> Result<Option<TtlChange>> {
    if existing.ttl == info.ttl {
        return Ok(None);
    }
    if !restored {
        return Err(Error::StateMismatch {
            name: info.name.clone(),
            registered: existing.describe(),
            requested: info.describe(),
        });
    }
    let now = info.ttl.map_or(0, |ttl| clock.now(ttl.time));
    Ok(Some(TtlChange::between(
        existing.ttl.as_ref(),
        info.ttl.as_ref(),
        now,
    )))
}
