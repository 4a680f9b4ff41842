//! One state's entries in the heap backend: a hash map per key group, copy-on-write.
//!
//! Each key group's map is a [`CowGroup`]: owned outright until a snapshot freezes it, then
//! shared with the snapshot behind an `Arc` (constant time per key group, no entry copied). The
//! first write after a freeze takes the map back, copying it only if the snapshot still holds
//! it. So the synchronous part of a checkpoint is O(key groups), copying happens only for key
//! groups written while a snapshot is in flight, and between snapshots a write touches no
//! atomic reference count (a locked instruction per write would stop the CPU from overlapping
//! one access's cache misses with the next access).

use std::any::Any;
use std::sync::Arc;

use crate::model::codec::{Codec, CodecError, DefaultCodec};
use crate::model::error::Result;
use crate::model::state::rows::FastMap;
use crate::model::state::{StateKey, StoredState};

/// The entries of one key group: `(key, namespace) → stored state`.
pub(crate) type GroupMap<K, N, S> = FastMap<(K, N), S>;

/// One key group's map: owned by the live table, or shared with snapshots since a freeze.
pub(crate) enum CowGroup<M> {
    /// No snapshot holds this map: reads and writes go straight to it.
    Owned(M),
    /// Frozen by a snapshot that may still hold it.
    Shared(Arc<M>),
}

impl<M: Clone + Default> CowGroup<M> {
    #[inline]
    pub(crate) fn get(&self) -> &M {
        match self {
            CowGroup::Owned(map) => map,
            CowGroup::Shared(map) => map,
        }
    }

    #[inline]
    pub(crate) fn get_mut(&mut self) -> &mut M {
        if let CowGroup::Shared(_) = self {
            self.take_back();
        }
        match self {
            CowGroup::Owned(map) => map,
            CowGroup::Shared(_) => unreachable!("take_back leaves the group owned"),
        }
    }

    /// The first write after a freeze: reclaims the map, copying it if a snapshot still holds
    /// it.
    #[cold]
    fn take_back(&mut self) {
        if let CowGroup::Shared(shared) = std::mem::replace(self, CowGroup::Owned(M::default())) {
            *self = CowGroup::Owned(Arc::try_unwrap(shared).unwrap_or_else(|s| (*s).clone()));
        }
    }

    /// Shares the map with a snapshot.
    pub(crate) fn freeze(&mut self) -> Arc<M> {
        if let CowGroup::Owned(map) = self {
            *self = CowGroup::Shared(Arc::new(std::mem::take(map)));
        }
        match self {
            CowGroup::Shared(map) => Arc::clone(map),
            CowGroup::Owned(_) => unreachable!("the group was just shared"),
        }
    }
}

/// A typed table: one copy-on-write map per owned key group (index = key group − range start).
pub(crate) struct Table<K, N, S> {
    groups: Vec<CowGroup<GroupMap<K, N, S>>>,
}

impl<K: StateKey, N: StateKey, S: StoredState> Table<K, N, S> {
    pub(crate) fn new(group_count: usize) -> Self {
        Self {
            groups: (0..group_count)
                .map(|_| CowGroup::Owned(FastMap::default()))
                .collect(),
        }
    }

    /// The map of the group at `index` (key group − range start).
    #[inline]
    pub(crate) fn group(&self, index: usize) -> &GroupMap<K, N, S> {
        self.groups[index].get()
    }

    /// The map of the group at `index`, to write.
    #[inline]
    pub(crate) fn group_mut(&mut self, index: usize) -> &mut GroupMap<K, N, S> {
        self.groups[index].get_mut()
    }
}

/// The maps of a typed table as a snapshot froze them.
struct FrozenGroups<K, N, S> {
    groups: Vec<Arc<GroupMap<K, N, S>>>,
}

/// Emits `(row key suffix, value)` pairs; see [`crate::model::state::rows`].
pub(crate) type RowSink<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;

/// The type-erased face of a [`Table`], for what the backend does without knowing the types.
///
/// `Any` is a supertrait so that typed access upcasts `&dyn AnyTable` to `&dyn Any` (a vtable
/// load) and pays one virtual call, `type_id`, per access rather than two.
pub(crate) trait AnyTable: Any + Send + Sync {
    /// Removes `(key, ns)` from group `group`; `key` and `ns` must be the table's `K` and `N`.
    fn remove_erased(&mut self, group: usize, key: &dyn Any, ns: &dyn Any) -> bool;
    /// All `(key, ns)` pairs as `Any` references.
    fn keys_erased(&self) -> Box<dyn Iterator<Item = (&dyn Any, &dyn Any)> + '_>;
    /// A frozen copy-on-write view of the table.
    fn freeze(&mut self) -> Box<dyn FrozenTable>;
    /// Decodes one row and folds it into group `group`.
    fn load_row(&mut self, group: usize, suffix: &[u8], value: &[u8]) -> Result<(), CodecError>;
    /// Number of `(key, namespace)` entries.
    fn len(&self) -> usize;
}

/// An immutable view of a table taken at a snapshot: it shares the maps with the live table.
pub(crate) trait FrozenTable: Send + Sync {
    /// Emits the rows of group `group`, unsorted.
    fn rows(&self, group: usize, state: &str, sink: &mut RowSink<'_>) -> Result<()>;
}

impl<K: StateKey, N: StateKey, S: StoredState> AnyTable for Table<K, N, S> {
    fn remove_erased(&mut self, group: usize, key: &dyn Any, ns: &dyn Any) -> bool {
        let (Some(key), Some(ns)) = (key.downcast_ref::<K>(), ns.downcast_ref::<N>()) else {
            return false;
        };
        let lookup = crate::model::state::rows::KeyNs(key, ns);
        if !self.group(group).contains_key(&lookup) {
            // Do not copy a frozen group just to find nothing to remove.
            return false;
        }
        self.group_mut(group).remove(&lookup).is_some()
    }

    fn keys_erased(&self) -> Box<dyn Iterator<Item = (&dyn Any, &dyn Any)> + '_> {
        Box::new(
            self.groups
                .iter()
                .flat_map(|g| g.get().keys().map(|(k, n)| (k as &dyn Any, n as &dyn Any))),
        )
    }

    fn freeze(&mut self) -> Box<dyn FrozenTable> {
        Box::new(FrozenGroups {
            groups: self.groups.iter_mut().map(CowGroup::freeze).collect(),
        })
    }

    fn load_row(&mut self, group: usize, suffix: &[u8], value: &[u8]) -> Result<(), CodecError> {
        let codec = DefaultCodec::default();
        let (key, used_k): (K, usize) = codec.decode_prefix(suffix)?;
        let (ns, used_n): (N, usize) = codec.decode_prefix(&suffix[used_k..])?;
        let user_key = &suffix[used_k + used_n..];
        let map = self.group_mut(group);
        let entry = (key, ns);
        let mut slot = map.remove(&entry);
        S::decode_row(&mut slot, &codec, user_key, value)?;
        if let Some(s) = slot {
            map.insert(entry, s);
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.groups.iter().map(|g| g.get().len()).sum()
    }
}

impl<K: StateKey, N: StateKey, S: StoredState> FrozenTable for FrozenGroups<K, N, S> {
    fn rows(&self, group: usize, state: &str, sink: &mut RowSink<'_>) -> Result<()> {
        let codec = DefaultCodec::default();
        let mut prefix = Vec::new();
        let mut row_key = Vec::new();
        for ((key, ns), stored) in self.groups[group].iter() {
            prefix.clear();
            codec
                .encode_into(key, &mut prefix)
                .and_then(|_| codec.encode_into(ns, &mut prefix))
                .map_err(|e| crate::model::error::Error::Encode {
                    state: state.to_owned(),
                    message: e.0,
                })?;
            stored.encode_rows(&codec, state, &mut |user_key, value| {
                row_key.clear();
                row_key.extend_from_slice(&prefix);
                row_key.extend_from_slice(user_key);
                sink(&row_key, value)
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Map = FastMap<u32, u32>;

    #[test]
    fn frozen_map_keeps_its_contents_while_the_live_one_changes() {
        let mut group = CowGroup::Owned(Map::default());
        group.get_mut().insert(1, 10);
        let frozen = group.freeze();
        group.get_mut().insert(1, 11);
        group.get_mut().insert(2, 20);
        assert_eq!(frozen.get(&1), Some(&10));
        assert_eq!(frozen.get(&2), None);
        assert_eq!(group.get().get(&1), Some(&11));
        // A second snapshot sees the new contents; the first still its own.
        let second = group.freeze();
        assert_eq!(second.len(), 2);
        assert_eq!(frozen.len(), 1);
    }

    #[test]
    fn a_write_copies_only_while_a_snapshot_holds_the_map() {
        let marker = Arc::new(());
        let mut group = CowGroup::Owned(FastMap::<u32, Arc<()>>::default());
        group.get_mut().insert(1, Arc::clone(&marker));
        let frozen = group.freeze();
        group.get_mut().insert(2, Arc::clone(&marker));
        // Copied: the snapshot's map and the live map each hold the first value.
        assert_eq!(Arc::strong_count(&marker), 4);
        assert_eq!(frozen.len(), 1);
        drop(frozen);
        assert_eq!(Arc::strong_count(&marker), 3);
        // Released before the next write: taken back as it is, the live map holds both.
        let again = group.freeze();
        drop(again);
        group.get_mut().remove(&2);
        assert_eq!(Arc::strong_count(&marker), 2);
        assert!(matches!(group, CowGroup::Owned(_)));
    }
}
