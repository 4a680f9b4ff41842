//! The current key: a key with its key group, computed once and reused by every state
//! operation on it.
//!
//! Every state operation needs the key's key group (the hash of its encoding, then a
//! division), to find where the key's entries live and to check that this instance owns them.
//! An engine processes one record at a time, and touches several states for each. Flink sets
//! the key once per record (`setCurrentKey`); here the engine makes a [`KeyContext`] once per
//! record with [`KeyedStateBackend::key_context`] and passes it to every handle call in place
//! of the key: the handles accept either ([`AsKey`]), so the per-call form stays for
//! convenience and the compiler checks the key's type either way.
//!
//! ```
//! use statebackend::{HeapBackend, KeyGroupRange, KeyedStateBackend, ValueStateDescriptor};
//! let mut backend = HeapBackend::new(128, KeyGroupRange::all(128)?)?;
//! let count = backend.value_state(&ValueStateDescriptor::<String, (), u64>::new("count"))?;
//! let total = backend.value_state(&ValueStateDescriptor::<String, (), u64>::new("total"))?;
//! // Once per record: hashed and range-checked here, not in every call below.
//! let key = backend.key_context("user-7".to_string())?;
//! let n = count.get(&backend, &key, &())?.unwrap_or(0);
//! count.put(&mut backend, &key, &(), n + 1)?;
//! total.put(&mut backend, &key, &(), 42)?;
//! // The per-call form computes the same key group each time.
//! assert_eq!(count.get(&backend, &"user-7".to_string(), &())?, Some(1));
//! # Ok::<(), statebackend::Error>(())
//! ```

use crate::model::error::{Error, Result};
use crate::model::key_group::{KeyGroup, KeyGroupAssigner};
use crate::model::state::StateKey;
use crate::model::state::backend::KeyedStateBackend;

/// A key and its key group, borrowed: what a backend's primitive operations receive.
///
/// Made from a key by [`KeyRef::new`] (hashing it) or from a [`KeyContext`] (no work), so the
/// key group always belongs to the key under the max parallelism it records; a backend checks
/// that max parallelism and its own range, two comparisons, instead of hashing.
#[derive(Debug)]
pub struct KeyRef<'a, K> {
    key: &'a K,
    key_group: KeyGroup,
    max_parallelism: u32,
}

impl<K> Clone for KeyRef<'_, K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for KeyRef<'_, K> {}

impl<'a, K: StateKey> KeyRef<'a, K> {
    /// `key` with its key group under `assigner`.
    ///
    /// # Errors
    /// [`Error::Encode`] if the key cannot be serialized.
    #[inline]
    pub fn new(key: &'a K, assigner: KeyGroupAssigner) -> Result<Self> {
        Ok(Self {
            key,
            key_group: assigner.key_group_of(key)?,
            max_parallelism: assigner.max_parallelism(),
        })
    }

    /// The key.
    #[inline]
    pub fn key(&self) -> &'a K {
        self.key
    }

    /// Its key group.
    #[inline]
    pub fn key_group(&self) -> KeyGroup {
        self.key_group
    }

    /// The key group, checked against the backend that receives it: the same max parallelism,
    /// and a key group it owns.
    ///
    /// # Errors
    /// [`Error::Incompatible`] for a key group computed under another max parallelism;
    /// [`Error::KeyOutsideRange`] for a key group outside `range`.
    #[inline(always)]
    pub fn checked_group(
        &self,
        assigner: KeyGroupAssigner,
        range: crate::model::key_group::KeyGroupRange,
    ) -> Result<KeyGroup> {
        if self.max_parallelism != assigner.max_parallelism() {
            return Err(self.other_parallelism(assigner));
        }
        if !range.contains(self.key_group) {
            return Err(outside(self.key_group, range));
        }
        Ok(self.key_group)
    }

    // The error paths stay out of line: `checked_group` is on every state access, and a small
    // body keeps the backends' accessors inlined into the handles.
    #[cold]
    #[inline(never)]
    fn other_parallelism(&self, assigner: KeyGroupAssigner) -> Error {
        Error::Incompatible {
            reason: format!(
                "a key context made for max parallelism {} used on a backend with {}",
                self.max_parallelism,
                assigner.max_parallelism()
            ),
        }
    }
}

#[cold]
#[inline(never)]
fn outside(key_group: KeyGroup, range: crate::model::key_group::KeyGroupRange) -> Error {
    Error::KeyOutsideRange { key_group, range }
}

/// The key of the record being processed, with its key group computed and checked once
/// ([`KeyedStateBackend::key_context`]). Pass `&context` wherever a handle takes a key.
#[derive(Debug, Clone)]
pub struct KeyContext<K> {
    key: K,
    // A `u32`, not a `KeyGroup` (`u16`): with two 4-byte fields after an 8-byte key the struct
    // has no padding, and the compiler moves it in whole words. With a `u16` it moved the
    // 14 bytes as 4 + 8 + 2 at odd offsets, and the key's reload for the hash probe then
    // straddled two stores; such a load waits until both stores retire, which is behind the
    // previous record's cache miss, so no two records' misses overlapped. W1 on the heap
    // backend: 186 → 46 ns per update (`docs/benchmarks.md`).
    key_group: u32,
    max_parallelism: u32,
}

impl<K: StateKey> KeyContext<K> {
    /// `key` with its key group under `assigner`. [`KeyedStateBackend::key_context`] also
    /// checks that the backend owns it.
    ///
    /// # Errors
    /// [`Error::Encode`] if the key cannot be serialized.
    pub fn new(key: K, assigner: KeyGroupAssigner) -> Result<Self> {
        let key_group = u32::from(assigner.key_group_of(&key)?);
        Ok(Self {
            key,
            key_group,
            max_parallelism: assigner.max_parallelism(),
        })
    }

    /// The key.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Its key group.
    pub fn key_group(&self) -> KeyGroup {
        self.key_group as KeyGroup
    }

    /// The key back.
    pub fn into_key(self) -> K {
        self.key
    }
}

/// What a handle accepts as a key: the key itself (its key group is computed for the call) or
/// a [`KeyContext`] (computed once, reused).
pub trait AsKey<K> {
    /// The key with its key group, for `backend`.
    ///
    /// # Errors
    /// [`Error::Encode`] if the key cannot be serialized.
    fn key_ref<B: KeyedStateBackend + ?Sized>(&self, backend: &B) -> Result<KeyRef<'_, K>>;
}

impl<K: StateKey> AsKey<K> for K {
    #[inline]
    fn key_ref<B: KeyedStateBackend + ?Sized>(&self, backend: &B) -> Result<KeyRef<'_, K>> {
        KeyRef::new(self, backend.assigner())
    }
}

impl<K: StateKey> AsKey<K> for KeyRef<'_, K> {
    #[inline]
    fn key_ref<B: KeyedStateBackend + ?Sized>(&self, _backend: &B) -> Result<KeyRef<'_, K>> {
        Ok(*self)
    }
}

impl<K: StateKey> AsKey<K> for KeyContext<K> {
    #[inline]
    fn key_ref<B: KeyedStateBackend + ?Sized>(&self, _backend: &B) -> Result<KeyRef<'_, K>> {
        Ok(KeyRef {
            key: &self.key,
            key_group: self.key_group as KeyGroup,
            max_parallelism: self.max_parallelism,
        })
    }
}
