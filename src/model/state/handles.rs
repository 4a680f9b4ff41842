//! Typed state handles. A handle is a small token returned by registration; its methods take
//! the backend that issued it, so handles can be stored freely by operators without borrowing
//! the backend.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::error::Result;
use crate::model::state::backend::KeyedStateBackend;
use crate::model::state::descriptor::{AggregateFunction, ReduceFn};
use crate::model::state::key::AsKey;
use crate::model::state::{StateKey, StateValue};

/// A registered state: its index within its backend, and the identity of the backend object
/// that issued it.
///
/// Every backend object gets a process-unique identity when it is created, and a restore
/// creates a new one, so a handle used on a backend that did not issue it (another instance, or
/// the same instance after a restore, which may number its states differently) is
/// [`crate::Error::ForeignHandle`] instead of an access to whichever state has that index there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateId {
    pub(crate) backend: u64,
    pub(crate) index: u32,
}

impl StateId {
    /// The id of state `index` of the backend with identity `backend` (from
    /// [`next_backend_identity`]): how a backend issues handles.
    pub fn new(backend: u64, index: usize) -> Self {
        Self {
            backend,
            index: index as u32,
        }
    }

    /// The raw index.
    pub fn index(self) -> u32 {
        self.index
    }

    /// The index as a `usize`, if this id was issued by backend `identity`; one comparison on
    /// every state access.
    ///
    /// # Errors
    /// [`crate::Error::ForeignHandle`].
    #[inline]
    pub fn index_in(self, identity: u64) -> crate::model::error::Result<usize> {
        if self.backend == identity {
            Ok(self.index as usize)
        } else {
            Err(self.foreign())
        }
    }

    #[cold]
    fn foreign(self) -> crate::model::error::Error {
        crate::model::error::Error::ForeignHandle { index: self.index }
    }
}

/// A new process-unique backend identity (never 0), for [`StateId`]s: each backend instance
/// takes one when it is created, so that a handle it did not issue is refused.
pub fn next_backend_identity() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl fmt::Display for StateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.index)
    }
}

/// Handle of a value state: one `V` per (key `K`, namespace `N`).
pub struct ValueState<K, N, V> {
    pub(crate) id: StateId,
    pub(crate) _types: PhantomData<fn() -> (K, N, V)>,
}

impl<K, N, V> Clone for ValueState<K, N, V> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            _types: PhantomData,
        }
    }
}

impl<K: StateKey, N: StateKey, V: StateValue> ValueState<K, N, V> {
    /// The state's id in its backend.
    pub fn id(&self) -> StateId {
        self.id
    }

    /// The value of `(key, ns)`, if any.
    ///
    /// # Errors
    /// [`crate::Error::KeyOutsideRange`] for a key of another instance;
    /// [`crate::Error::ForeignHandle`] if `backend` did not issue this handle (another backend,
    /// or one a restore returned); a decode error if the stored bytes do not match `V`; backend
    /// errors.
    #[inline]
    pub fn get<B: KeyedStateBackend>(
        &self,
        backend: &B,
        key: &impl AsKey<K>,
        ns: &N,
    ) -> Result<Option<V>> {
        backend.get_cell(self.id, key.key_ref(backend)?, ns)
    }

    /// Sets the value of `(key, ns)`.
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
        backend.put_cell(self.id, key.key_ref(backend)?, ns, value)
    }

    /// The values of `keys` in namespace `ns`, in order: one call for a container of
    /// records (one batched multi-get on RocksDB). Keys may be keys or key contexts.
    ///
    /// # Errors
    /// As [`ValueState::get`], for the first key that fails.
    pub fn get_many<'k, B: KeyedStateBackend, Q: AsKey<K> + 'k>(
        &self,
        backend: &B,
        keys: impl IntoIterator<Item = &'k Q>,
        ns: &N,
    ) -> Result<Vec<Option<V>>> {
        let keys = keys
            .into_iter()
            .map(|key| key.key_ref(backend))
            .collect::<Result<Vec<_>>>()?;
        backend.get_cells(self.id, &keys, ns)
    }

    /// Calls `f` with the value of `(key, ns)` borrowed, without copying it where the backend
    /// holds typed values (the heap backend), and returns what `f` returns.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn with<B: KeyedStateBackend, R>(
        &self,
        backend: &B,
        key: &impl AsKey<K>,
        ns: &N,
        f: impl FnOnce(Option<&V>) -> R,
    ) -> Result<R> {
        backend.with_cell::<K, N, V, R, _>(self.id, key.key_ref(backend)?, ns, f)
    }

    /// Read-modify-write: `f` gets the current value of `(key, ns)` and returns the new one
    /// (`None` removes it). One lookup on the heap backend when the value exists, where `get`
    /// then `put` take two and copy the value out.
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
        let key = key.key_ref(backend)?;
        backend.update_cell::<K, N, V, _>(self.id, key, ns, f)
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
        backend.clear(self.id, key.key_ref(backend)?, ns)
    }
}

/// Handle of a list state: an ordered `Vec<T>` per (key `K`, namespace `N`).
pub struct ListState<K, N, T> {
    pub(crate) id: StateId,
    pub(crate) _types: PhantomData<fn() -> (K, N, T)>,
}

impl<K, N, T> Clone for ListState<K, N, T> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            _types: PhantomData,
        }
    }
}

impl<K: StateKey, N: StateKey, T: StateValue> ListState<K, N, T> {
    /// The state's id in its backend.
    pub fn id(&self) -> StateId {
        self.id
    }

    /// The elements of `(key, ns)` in append order; empty if there are none.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn get<B: KeyedStateBackend>(
        &self,
        backend: &B,
        key: &impl AsKey<K>,
        ns: &N,
    ) -> Result<Vec<T>> {
        backend.get_list(self.id, key.key_ref(backend)?, ns)
    }

    /// Appends one element. On RocksDB this is a merge: no read of the existing list.
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
        backend.append_list(self.id, key.key_ref(backend)?, ns, value)
    }

    /// Replaces the elements of `(key, ns)`; an empty vector clears it.
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
        backend.replace_list(self.id, key.key_ref(backend)?, ns, values)
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
        backend.clear(self.id, key.key_ref(backend)?, ns)
    }
}

/// Handle of a map state: a map `UK → UV` per (key `K`, namespace `N`).
pub struct MapState<K, N, UK, UV> {
    pub(crate) id: StateId,
    pub(crate) _types: PhantomData<fn() -> (K, N, UK, UV)>,
}

impl<K, N, UK, UV> Clone for MapState<K, N, UK, UV> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            _types: PhantomData,
        }
    }
}

impl<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue> MapState<K, N, UK, UV> {
    /// The state's id in its backend.
    pub fn id(&self) -> StateId {
        self.id
    }

    /// The value of `user_key` in the map of `(key, ns)`.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn get<B: KeyedStateBackend>(
        &self,
        backend: &B,
        key: &impl AsKey<K>,
        ns: &N,
        user_key: &UK,
    ) -> Result<Option<UV>> {
        backend.get_map_value::<K, N, UK, UV>(self.id, key.key_ref(backend)?, ns, user_key)
    }

    /// Sets `user_key` to `value` in the map of `(key, ns)`.
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
        backend.put_map_value(self.id, key.key_ref(backend)?, ns, user_key, value)
    }

    /// Removes `user_key` from the map of `(key, ns)`.
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
        backend.remove_map_value::<K, N, UK, UV>(self.id, key.key_ref(backend)?, ns, user_key)
    }

    /// Whether the map of `(key, ns)` holds `user_key`.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn contains<B: KeyedStateBackend>(
        &self,
        backend: &B,
        key: &impl AsKey<K>,
        ns: &N,
        user_key: &UK,
    ) -> Result<bool> {
        backend.contains_map_key::<K, N, UK, UV>(self.id, key.key_ref(backend)?, ns, user_key)
    }

    /// The entries of the map of `(key, ns)`, in no specified order.
    ///
    /// # Errors
    /// As [`ValueState::get`]; decode errors also come per item.
    pub fn entries<'b, B: KeyedStateBackend>(
        &self,
        backend: &'b B,
        key: &impl AsKey<K>,
        ns: &N,
    ) -> Result<Box<dyn Iterator<Item = Result<(UK, UV)>> + 'b>> {
        backend.map_entries::<K, N, UK, UV>(self.id, key.key_ref(backend)?, ns)
    }

    /// The user keys of the map of `(key, ns)`, in no specified order.
    ///
    /// # Errors
    /// As [`MapState::entries`].
    pub fn keys<'b, B: KeyedStateBackend>(
        &self,
        backend: &'b B,
        key: &impl AsKey<K>,
        ns: &N,
    ) -> Result<impl Iterator<Item = Result<UK>> + 'b> {
        Ok(self.entries(backend, key, ns)?.map(|e| e.map(|(k, _)| k)))
    }

    /// The values of the map of `(key, ns)`, in no specified order.
    ///
    /// # Errors
    /// As [`MapState::entries`].
    pub fn values<'b, B: KeyedStateBackend>(
        &self,
        backend: &'b B,
        key: &impl AsKey<K>,
        ns: &N,
    ) -> Result<impl Iterator<Item = Result<UV>> + 'b> {
        Ok(self.entries(backend, key, ns)?.map(|e| e.map(|(_, v)| v)))
    }

    /// Whether the map of `(key, ns)` is empty.
    ///
    /// # Errors
    /// As [`MapState::entries`].
    pub fn is_empty<B: KeyedStateBackend>(
        &self,
        backend: &B,
        key: &impl AsKey<K>,
        ns: &N,
    ) -> Result<bool> {
        match self.entries(backend, key, ns)?.next() {
            None => Ok(true),
            Some(entry) => entry.map(|_| false),
        }
    }

    /// Removes the whole map of `(key, ns)`.
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
        backend.clear(self.id, key.key_ref(backend)?, ns)
    }
}

/// Handle of a reducing state: one `V` per (key, namespace), folded by the descriptor's function.
pub struct ReducingState<K, N, V> {
    pub(crate) id: StateId,
    pub(crate) reduce: ReduceFn<V>,
    pub(crate) _types: PhantomData<fn() -> (K, N)>,
}

impl<K, N, V> Clone for ReducingState<K, N, V> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            reduce: Arc::clone(&self.reduce),
            _types: PhantomData,
        }
    }
}

impl<K: StateKey, N: StateKey, V: StateValue> ReducingState<K, N, V> {
    /// The state's id in its backend.
    pub fn id(&self) -> StateId {
        self.id
    }

    /// The reduced value of `(key, ns)`, if anything was added.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn get<B: KeyedStateBackend>(
        &self,
        backend: &B,
        key: &impl AsKey<K>,
        ns: &N,
    ) -> Result<Option<V>> {
        backend.get_cell(self.id, key.key_ref(backend)?, ns)
    }

    /// Folds `value` into `(key, ns)`: the first value is stored as is, later ones are reduced
    /// into it.
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
        // One read-modify-write: one lookup on the heap backend.
        let key = key.key_ref(backend)?;
        backend.update_cell::<K, N, V, _>(self.id, key, ns, |current| {
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
        backend.clear(self.id, key.key_ref(backend)?, ns)
    }
}

/// Handle of an aggregating state: one accumulator per (key, namespace).
pub struct AggregatingState<K, N, IN, ACC, OUT> {
    pub(crate) id: StateId,
    pub(crate) function: Arc<dyn AggregateFunction<IN, ACC, OUT>>,
    pub(crate) _types: PhantomData<fn() -> (K, N)>,
}

impl<K, N, IN, ACC, OUT> Clone for AggregatingState<K, N, IN, ACC, OUT> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            function: Arc::clone(&self.function),
            _types: PhantomData,
        }
    }
}

impl<K: StateKey, N: StateKey, IN, ACC: StateValue, OUT> AggregatingState<K, N, IN, ACC, OUT> {
    /// The state's id in its backend.
    pub fn id(&self) -> StateId {
        self.id
    }

    /// The aggregate result of `(key, ns)`, if anything was added.
    ///
    /// # Errors
    /// As [`ValueState::get`].
    #[inline]
    pub fn get<B: KeyedStateBackend>(
        &self,
        backend: &B,
        key: &impl AsKey<K>,
        ns: &N,
    ) -> Result<Option<OUT>> {
        Ok(backend
            .get_cell::<K, N, ACC>(self.id, key.key_ref(backend)?, ns)?
            .map(|acc| self.function.get_result(&acc)))
    }

    /// Adds `value` to the accumulator of `(key, ns)` (created on first use).
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
        let key = key.key_ref(backend)?;
        backend.update_cell::<K, N, ACC, _>(self.id, key, ns, |acc| {
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
        backend.clear(self.id, key.key_ref(backend)?, ns)
    }
}
