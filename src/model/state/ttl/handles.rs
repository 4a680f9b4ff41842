//! Handles of states with a time to live. Each stores [`TtlValue`]s through the backend's
//! ordinary primitives, so every backend supports TTL without knowing of it; what a backend
//! adds is cleanup of rows nobody reads again (RocksDB's compaction filter, the heap
//! backend's incremental cleanup, and the filter every snapshot writer applies).
//!
//! Reads take the backend mutably: a read drops what it finds expired and, with
//! [`TtlUpdate::OnReadAndWrite`], writes back the refreshed timestamp. `peek` reads without
//! either, through a shared borrow.

use std::marker::PhantomData;
use std::sync::Arc;

use crate::model::error::Result;
use crate::model::state::backend::KeyedStateBackend;
use crate::model::state::descriptor::{AggregateFunction, ReduceFn};
use crate::model::state::key::{AsKey, KeyRef};
use crate::model::state::ttl::{StateTtlConfig, TtlUpdate, TtlValue, TtlVisibility};
use crate::model::state::{ListState, MapState, StateId, StateKey, StateValue, ValueState};

/// What a read found in one stored row.
enum Found<V> {
    /// Live: return it (refreshed if the update type says so).
    Live(V),
    /// Expired: drop it, and return it only if visibility allows.
    Expired(V),
}

impl StateTtlConfig {
    #[inline]
    fn classify<V>(&self, stored: TtlValue<V>, now: u64) -> Found<V> {
        if self.expired(stored.timestamp, now) {
            Found::Expired(stored.value)
        } else {
            Found::Live(stored.value)
        }
    }

    /// What a read returns of an expired value.
    #[inline]
    fn visible_expired<V>(&self, value: V) -> Option<V> {
        match self.visibility {
            TtlVisibility::NeverReturnExpired => None,
            TtlVisibility::ReturnExpiredIfNotCleanedUp => Some(value),
        }
    }

    #[inline]
    fn refreshes_on_read(&self) -> bool {
        self.update == TtlUpdate::OnReadAndWrite
    }

    #[inline]
    fn now<B: KeyedStateBackend>(&self, backend: &B) -> u64 {
        backend.ttl_clock().now(self.time)
    }
}

/// A value, reducing or aggregating state's stored cell: read with expiry applied, dropped if
/// expired, refreshed if the update type says so.
#[inline]
fn read_cell<B, K, N, V>(
    backend: &mut B,
    id: StateId,
    ttl: &StateTtlConfig,
    key: KeyRef<'_, K>,
    ns: &N,
) -> Result<Option<V>>
where
    B: KeyedStateBackend,
    K: StateKey,
    N: StateKey,
    V: StateValue,
{
    // The cleanup step after the read: what the read finds expired it handles itself (and
    // returns once, if visibility allows), whatever the cleanup would have dropped first.
    let read = read_cell_uncleaned(backend, id, ttl, key, ns)?;
    backend.ttl_cleanup(id)?;
    Ok(read)
}

#[inline]
fn read_cell_uncleaned<B, K, N, V>(
    backend: &mut B,
    id: StateId,
    ttl: &StateTtlConfig,
    key: KeyRef<'_, K>,
    ns: &N,
) -> Result<Option<V>>
where
    B: KeyedStateBackend,
    K: StateKey,
    N: StateKey,
    V: StateValue,
{
    let now = ttl.now(backend);
    let Some(stored) = backend.get_cell::<K, N, TtlValue<V>>(id, key, ns)? else {
        return Ok(None);
    };
    let stamp = stored.timestamp;
    match ttl.classify(stored, now) {
        Found::Expired(value) => {
            backend.clear(id, key, ns)?;
            Ok(ttl.visible_expired(value))
        }
        Found::Live(value) => {
            if ttl.refreshes_on_read() && stamp != now {
                let refreshed = TtlValue {
                    timestamp: now,
                    value: value.clone(),
                };
                backend.put_cell(id, key, ns, refreshed)?;
            }
            Ok(Some(value))
        }
    }
}

/// A cell read without cleanup or refresh.
#[inline]
fn peek_cell<B, K, N, V>(
    backend: &B,
    id: StateId,
    ttl: &StateTtlConfig,
    key: KeyRef<'_, K>,
    ns: &N,
) -> Result<Option<V>>
where
    B: KeyedStateBackend,
    K: StateKey,
    N: StateKey,
    V: StateValue,
{
    let now = ttl.now(backend);
    Ok(match backend.get_cell::<K, N, TtlValue<V>>(id, key, ns)? {
        None => None,
        Some(stored) => match ttl.classify(stored, now) {
            Found::Live(value) => Some(value),
            Found::Expired(value) => ttl.visible_expired(value),
        },
    })
}

/// A read-modify-write of a cell: `f` sees the live value (an expired one counts as absent)
/// and the result is stamped now.
#[inline]
fn update_cell<B, K, N, V, F>(
    backend: &mut B,
    id: StateId,
    ttl: &StateTtlConfig,
    key: KeyRef<'_, K>,
    ns: &N,
    f: F,
) -> Result<()>
where
    B: KeyedStateBackend,
    K: StateKey,
    N: StateKey,
    V: StateValue,
    F: FnOnce(Option<&V>) -> Option<V>,
{
    backend.ttl_cleanup(id)?;
    let now = ttl.now(backend);
    backend.update_cell::<K, N, TtlValue<V>, _>(id, key, ns, |current| {
        let live = current.filter(|c| !ttl.expired(c.timestamp, now));
        f(live.map(|c| &c.value)).map(|value| TtlValue {
            timestamp: now,
            value,
        })
    })
}

/// Handle of a value state with a time to live
/// ([`KeyedStateBackend::value_state_with_ttl`]).
///
/// ```
/// use std::time::Duration;
/// use statebackend::{HeapBackend, KeyGroupRange, KeyedStateBackend, ValueStateDescriptor};
/// use statebackend::state::ttl::StateTtlConfig;
/// let mut backend = HeapBackend::new(128, KeyGroupRange::all(128)?)?;
/// let ttl = StateTtlConfig::new(Duration::from_millis(100));
/// let seen = backend.value_state_with_ttl(&ValueStateDescriptor::<u64, (), u64>::new("seen"), ttl)?;
/// backend.ttl_clock().set_processing_time(1_000);
/// seen.put(&mut backend, &7, &(), 1)?;
/// backend.ttl_clock().set_processing_time(1_099);
/// assert_eq!(seen.get(&mut backend, &7, &())?, Some(1));
/// backend.ttl_clock().set_processing_time(1_100);
/// assert_eq!(seen.get(&mut backend, &7, &())?, None);
/// # Ok::<(), statebackend::Error>(())
/// ```
pub struct TtlValueState<K, N, V> {
    pub(crate) inner: ValueState<K, N, TtlValue<V>>,
    pub(crate) ttl: StateTtlConfig,
}

impl<K, N, V> Clone for TtlValueState<K, N, V> {
    #[inline]
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            ttl: self.ttl,
        }
    }
}

impl<K: StateKey, N: StateKey, V: StateValue> TtlValueState<K, N, V> {
    /// The state's id in its backend.
    #[inline]
    pub fn id(&self) -> StateId {
        self.inner.id
    }

    /// The state's time to live.
    #[inline]
    pub fn ttl(&self) -> &StateTtlConfig {
        &self.ttl
    }

    /// The value of `(key, ns)` if it has not expired (or, with
    /// [`TtlVisibility::ReturnExpiredIfNotCleanedUp`], if it is still stored). An expired value
    /// is dropped; a live one is refreshed with [`TtlUpdate::OnReadAndWrite`].
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn get<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: &impl AsKey<K>,
        ns: &N,
    ) -> Result<Option<V>> {
        let key = key.key_ref(&*backend)?;
        read_cell(backend, self.inner.id, &self.ttl, key, ns)
    }

    /// As [`TtlValueState::get`], without dropping or refreshing anything.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn peek<B: KeyedStateBackend>(
        &self,
        backend: &B,
        key: &impl AsKey<K>,
        ns: &N,
    ) -> Result<Option<V>> {
        peek_cell(backend, self.inner.id, &self.ttl, key.key_ref(backend)?, ns)
    }

    /// Sets the value of `(key, ns)`, stamped with the current time.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn put<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: &impl AsKey<K>,
        ns: &N,
        value: V,
    ) -> Result<()> {
        backend.ttl_cleanup(self.inner.id)?;
        let timestamp = self.ttl.now(backend);
        self.inner
            .put(backend, key, ns, TtlValue { timestamp, value })
    }

    /// Read-modify-write: `f` gets the live value (an expired one counts as none) and returns
    /// the new one, stamped with the current time (`None` removes it).
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn update<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: &impl AsKey<K>,
        ns: &N,
        f: impl FnOnce(Option<&V>) -> Option<V>,
    ) -> Result<()> {
        let key = key.key_ref(&*backend)?;
        update_cell(backend, self.inner.id, &self.ttl, key, ns, f)
    }

    /// Removes the value of `(key, ns)`.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn clear<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: &impl AsKey<K>,
        ns: &N,
    ) -> Result<()> {
        self.inner.clear(backend, key, ns)
    }
}

/// Handle of a list state with a time to live: each element expires on its own
/// ([`KeyedStateBackend::list_state_with_ttl`]).
pub struct TtlListState<K, N, T> {
    pub(crate) inner: ListState<K, N, TtlValue<T>>,
    pub(crate) ttl: StateTtlConfig,
}

impl<K, N, T> Clone for TtlListState<K, N, T> {
    #[inline]
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            ttl: self.ttl,
        }
    }
}

impl<K: StateKey, N: StateKey, T: StateValue> TtlListState<K, N, T> {
    /// The state's id in its backend.
    #[inline]
    pub fn id(&self) -> StateId {
        self.inner.id
    }

    /// The state's time to live.
    #[inline]
    pub fn ttl(&self) -> &StateTtlConfig {
        &self.ttl
    }

    /// The live elements of `(key, ns)` in append order (with
    /// [`TtlVisibility::ReturnExpiredIfNotCleanedUp`], the expired ones still stored too).
    /// Expired elements are dropped; with [`TtlUpdate::OnReadAndWrite`] the rest are
    /// refreshed.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn get<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: &impl AsKey<K>,
        ns: &N,
    ) -> Result<Vec<T>> {
        let key = key.key_ref(&*backend)?;
        let read = self.get_uncleaned(backend, key, ns)?;
        backend.ttl_cleanup(self.inner.id)?;
        Ok(read)
    }

    #[inline]
    fn get_uncleaned<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<Vec<T>> {
        let now = self.ttl.now(backend);
        let stored = backend.get_list::<K, N, TtlValue<T>>(self.inner.id, key, ns)?;
        let expired = |e: &TtlValue<T>| self.ttl.expired(e.timestamp, now);
        let any_expired = stored.iter().any(expired);
        let refresh = self.ttl.refreshes_on_read() && stored.iter().any(|e| e.timestamp != now);
        if !any_expired && !refresh {
            return Ok(stored.into_iter().map(|e| e.value).collect());
        }
        // Write back the live elements: without the expired ones, stamped now if refreshed.
        let mut kept = Vec::with_capacity(stored.len());
        let mut shown = Vec::with_capacity(stored.len());
        for element in stored {
            if expired(&element) {
                if let Some(value) = self.ttl.visible_expired(element.value) {
                    shown.push(value);
                }
            } else {
                shown.push(element.value.clone());
                kept.push(TtlValue {
                    timestamp: if refresh { now } else { element.timestamp },
                    value: element.value,
                });
            }
        }
        backend.replace_list(self.inner.id, key, ns, kept)?;
        Ok(shown)
    }

    /// As [`TtlListState::get`], without dropping or refreshing anything.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn peek<B: KeyedStateBackend>(
        &self,
        backend: &B,
        key: &impl AsKey<K>,
        ns: &N,
    ) -> Result<Vec<T>> {
        let now = self.ttl.now(backend);
        Ok(self
            .inner
            .get(backend, key, ns)?
            .into_iter()
            .filter_map(|e| match self.ttl.classify(e, now) {
                Found::Live(value) => Some(value),
                Found::Expired(value) => self.ttl.visible_expired(value),
            })
            .collect())
    }

    /// Appends one element, stamped with the current time. On RocksDB still a merge: no read.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn append<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: &impl AsKey<K>,
        ns: &N,
        value: T,
    ) -> Result<()> {
        backend.ttl_cleanup(self.inner.id)?;
        let timestamp = self.ttl.now(backend);
        self.inner
            .append(backend, key, ns, TtlValue { timestamp, value })
    }

    /// Replaces the elements of `(key, ns)`, each stamped with the current time.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn replace<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: &impl AsKey<K>,
        ns: &N,
        values: Vec<T>,
    ) -> Result<()> {
        backend.ttl_cleanup(self.inner.id)?;
        let timestamp = self.ttl.now(backend);
        let stamped = values
            .into_iter()
            .map(|value| TtlValue { timestamp, value })
            .collect();
        self.inner.replace(backend, key, ns, stamped)
    }

    /// Removes all elements of `(key, ns)`.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn clear<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: &impl AsKey<K>,
        ns: &N,
    ) -> Result<()> {
        self.inner.clear(backend, key, ns)
    }
}

/// Handle of a map state with a time to live: each entry expires on its own
/// ([`KeyedStateBackend::map_state_with_ttl`]).
pub struct TtlMapState<K, N, UK, UV> {
    pub(crate) inner: MapState<K, N, UK, TtlValue<UV>>,
    pub(crate) ttl: StateTtlConfig,
}

impl<K, N, UK, UV> Clone for TtlMapState<K, N, UK, UV> {
    #[inline]
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            ttl: self.ttl,
        }
    }
}

impl<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue> TtlMapState<K, N, UK, UV> {
    /// The state's id in its backend.
    #[inline]
    pub fn id(&self) -> StateId {
        self.inner.id
    }

    /// The state's time to live.
    #[inline]
    pub fn ttl(&self) -> &StateTtlConfig {
        &self.ttl
    }

    /// The value of `user_key` in the map of `(key, ns)`, with expiry applied as
    /// [`TtlValueState::get`] does.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn get<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: &impl AsKey<K>,
        ns: &N,
        user_key: &UK,
    ) -> Result<Option<UV>> {
        let key = key.key_ref(&*backend)?;
        let read = self.get_uncleaned(backend, key, ns, user_key)?;
        backend.ttl_cleanup(self.inner.id)?;
        Ok(read)
    }

    #[inline]
    fn get_uncleaned<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: &UK,
    ) -> Result<Option<UV>> {
        let id = self.inner.id;
        let now = self.ttl.now(backend);
        let Some(stored) =
            backend.get_map_value::<K, N, UK, TtlValue<UV>>(id, key, ns, user_key)?
        else {
            return Ok(None);
        };
        self.settle(backend, key, ns, user_key, stored, now)
    }

    /// What a read returns of the stored entry `user_key`: an expired one is removed (and
    /// returned if visibility allows), a live one refreshed if the update type says so.
    #[inline]
    fn settle<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: &UK,
        stored: TtlValue<UV>,
        now: u64,
    ) -> Result<Option<UV>> {
        let id = self.inner.id;
        let stamp = stored.timestamp;
        match self.ttl.classify(stored, now) {
            Found::Expired(value) => {
                backend.remove_map_value::<K, N, UK, TtlValue<UV>>(id, key, ns, user_key)?;
                Ok(self.ttl.visible_expired(value))
            }
            Found::Live(value) => {
                if self.ttl.refreshes_on_read() && stamp != now {
                    let refreshed = TtlValue {
                        timestamp: now,
                        value: value.clone(),
                    };
                    backend.put_map_value(id, key, ns, user_key.clone(), refreshed)?;
                }
                Ok(Some(value))
            }
        }
    }

    /// Whether `user_key` has a value that [`TtlMapState::get`] would return.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn contains<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: &impl AsKey<K>,
        ns: &N,
        user_key: &UK,
    ) -> Result<bool> {
        Ok(self.get(backend, key, ns, user_key)?.is_some())
    }

    /// Sets `user_key` to `value`, stamped with the current time.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn put<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: &impl AsKey<K>,
        ns: &N,
        user_key: UK,
        value: UV,
    ) -> Result<()> {
        backend.ttl_cleanup(self.inner.id)?;
        let timestamp = self.ttl.now(backend);
        self.inner
            .put(backend, key, ns, user_key, TtlValue { timestamp, value })
    }

    /// Removes `user_key`.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn remove<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: &impl AsKey<K>,
        ns: &N,
        user_key: &UK,
    ) -> Result<()> {
        self.inner.remove(backend, key, ns, user_key)
    }

    /// The map's entries that [`TtlMapState::get`] would return, in the backend's order.
    /// Expired entries are removed; with [`TtlUpdate::OnReadAndWrite`] the others are
    /// refreshed.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn entries<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: &impl AsKey<K>,
        ns: &N,
    ) -> Result<Vec<(UK, UV)>> {
        let key = key.key_ref(&*backend)?;
        let read = self.entries_uncleaned(backend, key, ns)?;
        backend.ttl_cleanup(self.inner.id)?;
        Ok(read)
    }

    #[inline]
    fn entries_uncleaned<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<Vec<(UK, UV)>> {
        let id = self.inner.id;
        let now = self.ttl.now(backend);
        let stored = backend
            .map_entries::<K, N, UK, TtlValue<UV>>(id, key, ns)?
            .collect::<Result<Vec<_>>>()?;
        let mut shown = Vec::with_capacity(stored.len());
        for (user_key, element) in stored {
            if let Some(value) = self.settle(backend, key, ns, &user_key, element, now)? {
                shown.push((user_key, value));
            }
        }
        Ok(shown)
    }

    /// As [`TtlMapState::entries`], without dropping or refreshing anything.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn peek_entries<B: KeyedStateBackend>(
        &self,
        backend: &B,
        key: &impl AsKey<K>,
        ns: &N,
    ) -> Result<Vec<(UK, UV)>> {
        let now = self.ttl.now(backend);
        let mut shown = Vec::new();
        for entry in self.inner.entries(backend, key, ns)? {
            let (user_key, element) = entry?;
            match self.ttl.classify(element, now) {
                Found::Live(value) => shown.push((user_key, value)),
                Found::Expired(value) => {
                    if let Some(value) = self.ttl.visible_expired(value) {
                        shown.push((user_key, value));
                    }
                }
            }
        }
        Ok(shown)
    }

    /// Whether the map has no entry [`TtlMapState::get`] would return.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn is_empty<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: &impl AsKey<K>,
        ns: &N,
    ) -> Result<bool> {
        Ok(self.entries(backend, key, ns)?.is_empty())
    }

    /// Removes every entry of `(key, ns)`.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn clear<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: &impl AsKey<K>,
        ns: &N,
    ) -> Result<()> {
        self.inner.clear(backend, key, ns)
    }
}

/// Handle of a reducing state with a time to live
/// ([`KeyedStateBackend::reducing_state_with_ttl`]): an `add` to an expired value starts
/// from the added value.
pub struct TtlReducingState<K, N, V> {
    pub(crate) id: StateId,
    pub(crate) reduce: ReduceFn<V>,
    pub(crate) ttl: StateTtlConfig,
    pub(crate) _types: PhantomData<fn() -> (K, N)>,
}

impl<K, N, V> Clone for TtlReducingState<K, N, V> {
    #[inline]
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            reduce: Arc::clone(&self.reduce),
            ttl: self.ttl,
            _types: PhantomData,
        }
    }
}

impl<K: StateKey, N: StateKey, V: StateValue> TtlReducingState<K, N, V> {
    /// The state's id in its backend.
    #[inline]
    pub fn id(&self) -> StateId {
        self.id
    }

    /// The state's time to live.
    #[inline]
    pub fn ttl(&self) -> &StateTtlConfig {
        &self.ttl
    }

    /// The reduced value of `(key, ns)`, with expiry applied as [`TtlValueState::get`] does.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn get<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: &impl AsKey<K>,
        ns: &N,
    ) -> Result<Option<V>> {
        let key = key.key_ref(&*backend)?;
        read_cell(backend, self.id, &self.ttl, key, ns)
    }

    /// Folds `value` into the live value of `(key, ns)` and stamps it with the current time.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn add<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: &impl AsKey<K>,
        ns: &N,
        value: V,
    ) -> Result<()> {
        let key = key.key_ref(&*backend)?;
        update_cell::<B, K, N, V, _>(backend, self.id, &self.ttl, key, ns, |current| {
            Some(match current {
                Some(current) => (self.reduce)(current, &value),
                None => value,
            })
        })
    }

    /// Removes the value of `(key, ns)`.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn clear<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: &impl AsKey<K>,
        ns: &N,
    ) -> Result<()> {
        backend.clear(self.id, key.key_ref(&*backend)?, ns)
    }
}

/// Handle of an aggregating state with a time to live
/// ([`KeyedStateBackend::aggregating_state_with_ttl`]): an `add` to an expired accumulator
/// starts from a fresh one.
pub struct TtlAggregatingState<K, N, IN, ACC, OUT> {
    pub(crate) id: StateId,
    pub(crate) function: Arc<dyn AggregateFunction<IN, ACC, OUT>>,
    pub(crate) ttl: StateTtlConfig,
    pub(crate) _types: PhantomData<fn() -> (K, N)>,
}

impl<K, N, IN, ACC, OUT> Clone for TtlAggregatingState<K, N, IN, ACC, OUT> {
    #[inline]
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            function: Arc::clone(&self.function),
            ttl: self.ttl,
            _types: PhantomData,
        }
    }
}

impl<K: StateKey, N: StateKey, IN, ACC: StateValue, OUT> TtlAggregatingState<K, N, IN, ACC, OUT> {
    /// The state's id in its backend.
    #[inline]
    pub fn id(&self) -> StateId {
        self.id
    }

    /// The state's time to live.
    #[inline]
    pub fn ttl(&self) -> &StateTtlConfig {
        &self.ttl
    }

    /// The result of the live accumulator of `(key, ns)`, with expiry applied as
    /// [`TtlValueState::get`] does.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn get<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: &impl AsKey<K>,
        ns: &N,
    ) -> Result<Option<OUT>> {
        let key = key.key_ref(&*backend)?;
        Ok(
            read_cell::<B, K, N, ACC>(backend, self.id, &self.ttl, key, ns)?
                .map(|acc| self.function.get_result(&acc)),
        )
    }

    /// Adds `value` to the live accumulator of `(key, ns)` (a fresh one if it expired) and
    /// stamps it with the current time.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn add<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: &impl AsKey<K>,
        ns: &N,
        value: &IN,
    ) -> Result<()> {
        let key = key.key_ref(&*backend)?;
        update_cell::<B, K, N, ACC, _>(backend, self.id, &self.ttl, key, ns, |acc| {
            let acc = match acc {
                Some(acc) => acc.clone(),
                None => self.function.create_accumulator(),
            };
            Some(self.function.add(value, acc))
        })
    }

    /// Removes the accumulator of `(key, ns)`.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn clear<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        key: &impl AsKey<K>,
        ns: &N,
    ) -> Result<()> {
        backend.clear(self.id, key.key_ref(&*backend)?, ns)
    }
}
