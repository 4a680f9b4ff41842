//! The heap backend: state as typed values in in-memory hash maps.
//!
//! No serialization on the access path: values are stored as the Rust values the engine put.
//! The only bytes computed per access are the key's encoding, hashed to find its key group.
//! Entries are organised per key group (`table.rs`), so a snapshot writes key groups
//! independently and a rescaled restore reads only the key groups an instance owns.

mod checkpointed;
mod raw;
pub(crate) mod table;
mod ttl_cleanup;
mod view;

use std::any::{Any, type_name};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::error::{Error, Result};
use crate::model::format::metadata::InstanceId;
use crate::model::key_group::{KeyGroup, KeyGroupAssigner, KeyGroupRange, check_range};
use crate::model::state::backend::{
    BackendKind, KeyedStateBackend, MapEntries, StateKeys, find_registered, ttl_change,
};
use crate::model::state::key::KeyRef;
use crate::model::state::migration::RowMigration;
use crate::model::state::operator::OperatorState;
use crate::model::state::rows::{FastMap, KeyNs};
use crate::model::state::ttl::{ExpiringState, TtlChange, TtlClock};
use crate::model::state::{
    Cell, ListCell, MapCell, StateId, StateInfo, StateKey, StateValue, StoredState,
    next_backend_identity,
};
use raw::RawTable;
use table::{AnyTable, FrozenTable, Table};
pub use ttl_cleanup::DEFAULT_CLEANUP_ENTRIES;
use ttl_cleanup::TtlCleanup;

struct HeapState {
    info: StateInfo,
    table: Box<dyn AnyTable>,
    /// The incremental cleanup of a state with a time to live.
    cleanup: Option<TtlCleanup>,
}

/// Keyed state held as typed values in memory.
///
/// # Examples
/// ```
/// use statebackend::{HeapBackend, KeyGroupRange, KeyedStateBackend, ListStateDescriptor};
/// let mut backend = HeapBackend::new(128, KeyGroupRange::all(128)?)?;
/// let events = backend.list_state(&ListStateDescriptor::<u64, (), String>::new("events"))?;
/// events.append(&mut backend, &7, &(), "login".into())?;
/// events.append(&mut backend, &7, &(), "click".into())?;
/// assert_eq!(events.get(&backend, &7, &())?, vec!["login", "click"]);
/// # Ok::<(), statebackend::Error>(())
/// ```
pub struct HeapBackend {
    assigner: KeyGroupAssigner,
    range: KeyGroupRange,
    states: Vec<HeapState>,
    instance_id: InstanceId,
    /// Stamped into every handle this backend issues ([`StateId`]).
    identity: u64,
    /// The instance's operator (non-keyed) state.
    pub(crate) operator_state: OperatorState,
    /// The clocks of states with a time to live.
    ttl_clock: TtlClock,
    /// Checks an access to a TTL state earns for its incremental cleanup (`ttl_cleanup.rs`).
    ttl_cleanup_entries: usize,
    /// Incremental checkpoints, if configured (`BackendConfig::heap_chains`).
    pub(crate) chains: Option<crate::backends::incremental_snapshot::Chains>,
}

impl HeapBackend {
    /// An empty backend for `max_parallelism` key groups, owning `range`.
    ///
    /// # Errors
    /// [`Error::InvalidMaxParallelism`]; [`Error::InvalidOperator`] if `range` does not fit in
    /// `max_parallelism`.
    pub fn new(max_parallelism: u32, range: KeyGroupRange) -> Result<Self> {
        let assigner = KeyGroupAssigner::new(max_parallelism)?;
        check_range(max_parallelism, range)?;
        Ok(Self {
            assigner,
            range,
            states: Vec::new(),
            instance_id: InstanceId::random(),
            identity: next_backend_identity(),
            operator_state: OperatorState::default(),
            ttl_clock: TtlClock::default(),
            ttl_cleanup_entries: DEFAULT_CLEANUP_ENTRIES,
            chains: None,
        })
    }

    /// Sets how many values, list elements and map entries of a state with a time to live
    /// each access to it pays to have checked for expiry by the incremental cleanup (default
    /// [`DEFAULT_CLEANUP_ENTRIES`]; 0 turns it off, leaving expired entries to reads and
    /// snapshots).
    pub fn set_ttl_cleanup_entries(&mut self, entries: usize) {
        self.ttl_cleanup_entries = entries;
    }

    /// This instance's id in checkpoint metadata.
    pub fn instance_id(&self) -> InstanceId {
        self.instance_id
    }

    /// Number of `(key, namespace)` entries over all states.
    pub fn entry_count(&self) -> usize {
        self.states.iter().map(|s| s.table.len()).sum()
    }

    /// Index of `key`'s key group in this instance's tables (its key group already computed:
    /// two comparisons).
    #[inline(always)]
    fn group_index<K: StateKey>(&self, key: KeyRef<'_, K>) -> Result<usize> {
        let group = key.checked_group(self.assigner, self.range)?;
        Ok((u32::from(group) - self.range.start()) as usize)
    }

    #[inline]
    fn index_of_group(&self, group: KeyGroup) -> Result<usize> {
        if self.range.contains(group) {
            Ok((u32::from(group) - self.range.start()) as usize)
        } else {
            Err(key_outside_range(group, self.range))
        }
    }

    #[inline]
    fn state(&self, id: StateId) -> Result<&HeapState> {
        self.states
            .get(id.index_in(self.identity)?)
            .ok_or_else(|| unknown_state(id))
    }

    #[inline]
    fn state_mut(&mut self, id: StateId) -> Result<&mut HeapState> {
        self.states
            .get_mut(id.index_in(self.identity)?)
            .ok_or_else(|| unknown_state(id))
    }

    #[inline]
    fn table<K: StateKey, N: StateKey, S: StoredState>(
        &self,
        id: StateId,
    ) -> Result<&Table<K, N, S>> {
        let state = self.state(id)?;
        let table: &dyn Any = state.table.as_ref();
        table
            .downcast_ref()
            .ok_or_else(|| type_mismatch::<K, N, S>(&state.info))
    }

    #[inline]
    fn table_mut<K: StateKey, N: StateKey, S: StoredState>(
        &mut self,
        id: StateId,
    ) -> Result<&mut Table<K, N, S>> {
        let state = self.state_mut(id)?;
        let info = &state.info;
        let table: &mut dyn Any = state.table.as_mut();
        match table.downcast_mut() {
            Some(table) => Ok(table),
            None => Err(type_mismatch::<K, N, S>(info)),
        }
    }

    /// Freezes the current state: a consistent view that shares the maps copy-on-write, for
    /// snapshots written while the backend keeps changing.
    pub(crate) fn freeze(&mut self) -> HeapFrozen {
        HeapFrozen {
            range: self.range,
            ttl_instant: self.ttl_clock.instant(),
            states: self
                .states
                .iter_mut()
                .map(|s| (s.info.clone(), Arc::from(s.table.freeze())))
                .collect(),
        }
    }

    /// Folds one row (as [`crate::model::state::rows`] defines them) of `state` into key group `group`.
    pub(crate) fn load_row(
        &mut self,
        id: StateId,
        group: KeyGroup,
        suffix: &[u8],
        value: &[u8],
    ) -> Result<()> {
        let index = self.index_of_group(group)?;
        let state = self.state_mut(id)?;
        state
            .table
            .load_row(index, suffix, value)
            .map_err(|e| Error::Decode {
                state: state.info.name.clone(),
                message: e.0,
            })
    }

    /// Declares a restored state whose rows follow through [`HeapBackend::load_row`]; the
    /// rows stay raw until the engine registers the state with its types.
    ///
    /// # Errors
    /// [`Error::StateMismatch`] if `info.name` is already registered differently.
    pub(crate) fn declare_restored(&mut self, info: StateInfo) -> Result<StateId> {
        let existing: Vec<StateInfo> = self.states();
        if let Some(index) = find_registered(&existing, &info)? {
            return Ok(StateId::new(self.identity, index));
        }
        let id = StateId::new(self.identity, self.states.len());
        self.states.push(HeapState {
            info,
            table: Box::new(RawTable::new()),
            cleanup: None,
        });
        Ok(id)
    }
}

/// A frozen, shareable view of a heap backend's state.
#[derive(Clone)]
pub(crate) struct HeapFrozen {
    pub(crate) range: KeyGroupRange,
    /// Both TTL clocks when the state was frozen.
    pub(crate) ttl_instant: crate::model::state::ttl::TtlInstant,
    pub(crate) states: Vec<(StateInfo, Arc<dyn FrozenTable>)>,
}

#[cold]
fn unknown_state(id: StateId) -> Error {
    Error::UnknownState { id: id.index() }
}

#[cold]
fn key_outside_range(key_group: KeyGroup, range: KeyGroupRange) -> Error {
    Error::KeyOutsideRange { key_group, range }
}

#[cold]
fn type_mismatch<K, N, S>(info: &StateInfo) -> Error {
    Error::StateMismatch {
        name: info.name.clone(),
        registered: info.describe(),
        requested: format!(
            "key={}, namespace={}, stored={}",
            type_name::<K>(),
            type_name::<N>(),
            type_name::<S>()
        ),
    }
}

impl KeyedStateBackend for HeapBackend {
    fn backend_kind(&self) -> BackendKind {
        BackendKind::Heap
    }

    fn assigner(&self) -> KeyGroupAssigner {
        self.assigner
    }

    fn key_group_range(&self) -> KeyGroupRange {
        self.range
    }

    fn ttl_clock(&self) -> &TtlClock {
        &self.ttl_clock
    }

    fn states(&self) -> Vec<StateInfo> {
        self.states.iter().map(|s| s.info.clone()).collect()
    }

    fn register<K: StateKey, N: StateKey, S: StoredState>(
        &mut self,
        info: StateInfo,
    ) -> Result<StateId> {
        let existing: Vec<StateInfo> = self.states();
        if let Some(index) = find_registered(&existing, &info)? {
            let id = StateId::new(self.identity, index);
            let raw = (self.states[index].table.as_ref() as &dyn Any).downcast_ref::<RawTable>();
            let change = ttl_change(
                &self.states[index].info,
                &info,
                raw.is_some(),
                &self.ttl_clock,
            )?;
            if let Some(raw) = raw {
                // A restored state registered again: decode its rows into a typed table, with
                // their timestamps changed if the registration changed the time to live.
                let raw = raw.clone();
                let mut table = Table::<K, N, S>::new(self.range.len() as usize);
                let decode = |message: String| Error::Decode {
                    state: info.name.clone(),
                    message,
                };
                for (&group, rows) in &raw.groups {
                    for (suffix, value) in rows.iter() {
                        let value = match change {
                            Some(change) if change != TtlChange::Keep => {
                                Cow::Owned(change.apply_to_row(&info, value)?)
                            }
                            _ => Cow::Borrowed(value.as_slice()),
                        };
                        table
                            .load_row(group, suffix, &value)
                            .map_err(|e| decode(e.0))?;
                    }
                }
                self.states[index].table = Box::new(table);
            }
            if change.is_some() {
                self.states[index].info = info;
            }
            // Same name and type names; also check the in-memory representation matches.
            self.table::<K, N, S>(id)?;
            return Ok(id);
        }
        let id = StateId::new(self.identity, self.states.len());
        self.states.push(HeapState {
            info,
            table: Box::new(Table::<K, N, S>::new(self.range.len() as usize)),
            cleanup: None,
        });
        Ok(id)
    }

    fn migrate_rows(&mut self, migration: &RowMigration) -> Result<()> {
        let state = self
            .states
            .iter_mut()
            .find(|s| s.info.name == migration.state())
            .ok_or_else(|| migration.not_restored())?;
        let raw = (state.table.as_mut() as &mut dyn Any)
            .downcast_mut::<RawTable>()
            .ok_or_else(|| migration.not_restored())?;
        // Into a copy, swapped in once every row migrated: a failure changes nothing.
        let mut migrated = BTreeMap::new();
        for (&group, rows) in &raw.groups {
            let mut rows = rows.as_ref().clone();
            migration.apply_sorted(&mut rows)?;
            migrated.insert(group, Arc::new(rows));
        }
        raw.groups = migrated;
        state.info = migration.migrated_info().clone();
        Ok(())
    }

    fn register_expiring<K: StateKey, N: StateKey, S: ExpiringState>(
        &mut self,
        info: StateInfo,
    ) -> Result<StateId> {
        let ttl = info.ttl;
        let id = self.register::<K, N, S>(info)?;
        let state = self.state_mut(id)?;
        state.cleanup = ttl.map(TtlCleanup::new::<K, N, S>);
        Ok(id)
    }

    #[inline]
    fn ttl_cleanup(&mut self, id: StateId) -> Result<()> {
        let entries = self.ttl_cleanup_entries;
        let groups = self.range.len() as usize;
        let clock = &self.ttl_clock;
        let index = id.index_in(self.identity)?;
        let state = self
            .states
            .get_mut(index)
            .ok_or_else(|| unknown_state(id))?;
        if let Some(cleanup) = &mut state.cleanup {
            cleanup.step(state.table.as_mut(), groups, entries, |ttl| {
                clock.now(ttl.time)
            });
        }
        Ok(())
    }

    #[inline(always)]
    fn get_cell<K: StateKey, N: StateKey, V: StateValue>(
        &self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<Option<V>> {
        let group = self.group_index(key)?;
        let table = self.table::<K, N, Cell<V>>(id)?;
        Ok(table
            .group(group)
            .get(&KeyNs(key.key(), ns))
            .map(|c| c.0.clone()))
    }

    #[inline(always)]
    fn put_cell<K: StateKey, N: StateKey, V: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        value: V,
    ) -> Result<()> {
        let group = self.group_index(key)?;
        let map = self.table_mut::<K, N, Cell<V>>(id)?.group_mut(group);
        match map.get_mut(&KeyNs(key.key(), ns)) {
            Some(cell) => cell.0 = value,
            None => {
                map.insert((key.key().clone(), ns.clone()), Cell(value));
            }
        }
        Ok(())
    }

    #[inline(always)]
    fn with_cell<K, N, V, R, F>(&self, id: StateId, key: KeyRef<'_, K>, ns: &N, f: F) -> Result<R>
    where
        K: StateKey,
        N: StateKey,
        V: StateValue,
        F: FnOnce(Option<&V>) -> R,
    {
        let group = self.group_index(key)?;
        let table = self.table::<K, N, Cell<V>>(id)?;
        Ok(f(table
            .group(group)
            .get(&KeyNs(key.key(), ns))
            .map(|c| &c.0)))
    }

    /// One probe when the value exists: the new value is written through the entry found.
    #[inline(always)]
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
        let group = self.group_index(key)?;
        let map = self.table_mut::<K, N, Cell<V>>(id)?.group_mut(group);
        match map.get_mut(&KeyNs(key.key(), ns)) {
            Some(cell) => match f(Some(&cell.0)) {
                Some(value) => cell.0 = value,
                None => {
                    map.remove(&KeyNs(key.key(), ns));
                }
            },
            None => {
                if let Some(value) = f(None) {
                    map.insert((key.key().clone(), ns.clone()), Cell(value));
                }
            }
        }
        Ok(())
    }

    #[inline]
    fn clear<K: StateKey, N: StateKey>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<()> {
        let group = self.group_index(key)?;
        self.state_mut(id)?
            .table
            .remove_erased(group, key.key(), ns);
        Ok(())
    }

    #[inline(always)]
    fn get_list<K: StateKey, N: StateKey, T: StateValue>(
        &self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<Vec<T>> {
        let group = self.group_index(key)?;
        let table = self.table::<K, N, ListCell<T>>(id)?;
        Ok(table
            .group(group)
            .get(&KeyNs(key.key(), ns))
            .map(|l| l.0.clone())
            .unwrap_or_default())
    }

    #[inline(always)]
    fn append_list<K: StateKey, N: StateKey, T: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        value: T,
    ) -> Result<()> {
        let group = self.group_index(key)?;
        let map = self.table_mut::<K, N, ListCell<T>>(id)?.group_mut(group);
        match map.get_mut(&KeyNs(key.key(), ns)) {
            Some(list) => list.0.push(value),
            None => {
                map.insert((key.key().clone(), ns.clone()), ListCell(vec![value]));
            }
        }
        Ok(())
    }

    #[inline]
    fn replace_list<K: StateKey, N: StateKey, T: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        values: Vec<T>,
    ) -> Result<()> {
        let group = self.group_index(key)?;
        let map = self.table_mut::<K, N, ListCell<T>>(id)?.group_mut(group);
        if values.is_empty() {
            map.remove(&KeyNs(key.key(), ns));
        } else {
            map.insert((key.key().clone(), ns.clone()), ListCell(values));
        }
        Ok(())
    }

    #[inline(always)]
    fn get_map_value<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: &UK,
    ) -> Result<Option<UV>> {
        let group = self.group_index(key)?;
        let table = self.table::<K, N, MapCell<UK, UV>>(id)?;
        Ok(table
            .group(group)
            .get(&KeyNs(key.key(), ns))
            .and_then(|m| m.0.get(user_key).cloned()))
    }

    #[inline]
    fn contains_map_key<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: &UK,
    ) -> Result<bool> {
        let group = self.group_index(key)?;
        let table = self.table::<K, N, MapCell<UK, UV>>(id)?;
        Ok(table
            .group(group)
            .get(&KeyNs(key.key(), ns))
            .is_some_and(|m| m.0.contains_key(user_key)))
    }

    #[inline(always)]
    fn put_map_value<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: UK,
        value: UV,
    ) -> Result<()> {
        let group = self.group_index(key)?;
        let map = self
            .table_mut::<K, N, MapCell<UK, UV>>(id)?
            .group_mut(group);
        match map.get_mut(&KeyNs(key.key(), ns)) {
            Some(m) => {
                m.0.insert(user_key, value);
            }
            None => {
                let mut m = FastMap::new();
                m.insert(user_key, value);
                map.insert((key.key().clone(), ns.clone()), MapCell(m));
            }
        }
        Ok(())
    }

    #[inline]
    fn remove_map_value<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: &UK,
    ) -> Result<()> {
        let group = self.group_index(key)?;
        let table = self.table_mut::<K, N, MapCell<UK, UV>>(id)?;
        let holds = table
            .group(group)
            .get(&KeyNs(key.key(), ns))
            .is_some_and(|m| m.0.contains_key(user_key));
        if holds {
            let map = table.group_mut(group);
            if let Some(m) = map.get_mut(&KeyNs(key.key(), ns)) {
                m.0.remove(user_key);
                if m.0.is_empty() {
                    // An empty map is no entry, as on RocksDB where it has no rows.
                    map.remove(&KeyNs(key.key(), ns));
                }
            }
        }
        Ok(())
    }

    fn map_entries<'a, K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &'a self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<MapEntries<'a, UK, UV>> {
        let group = self.group_index(key)?;
        let table = self.table::<K, N, MapCell<UK, UV>>(id)?;
        match table.group(group).get(&KeyNs(key.key(), ns)) {
            Some(m) => Ok(Box::new(
                m.0.iter().map(|(k, v)| Ok((k.clone(), v.clone()))),
            )),
            None => Ok(Box::new(std::iter::empty())),
        }
    }

    fn keys<'a, K: StateKey, N: StateKey>(
        &'a self,
        id: StateId,
        ns: Option<&N>,
    ) -> Result<StateKeys<'a, K, N>> {
        let state = self.state(id)?;
        let wanted = ns.cloned();
        let info = &state.info;
        Ok(Box::new(state.table.keys_erased().filter_map(
            move |(k, n)| match (k.downcast_ref::<K>(), n.downcast_ref::<N>()) {
                (Some(k), Some(n)) => {
                    if wanted.as_ref().is_some_and(|w| w != n) {
                        None
                    } else {
                        Some(Ok((k.clone(), n.clone())))
                    }
                }
                _ => Some(Err(type_mismatch::<K, N, ()>(info))),
            },
        )))
    }
}
