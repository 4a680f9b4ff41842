//! One state's entries in the heap backend: a hash map per key group, copy-on-write.
//!
//! Each key group's map sits behind an `Arc`. A snapshot clones the `Arc`s (constant time per key
//! group, no entry copied); a later write to a key group whose map a snapshot still holds copies
//! that one map first (`Arc::make_mut`). So the synchronous part of a checkpoint is O(key
//! groups), and copying happens only for key groups written while a snapshot is in flight.

use std::any::Any;
use std::sync::Arc;

use crate::codec::{Codec, CodecError, DefaultCodec};
use crate::error::Result;
use crate::state::rows::FastMap;
use crate::state::{StateKey, StoredState};

/// The entries of one key group: `(key, namespace) → stored state`.
pub(crate) type GroupMap<K, N, S> = FastMap<(K, N), S>;

/// A typed table: one copy-on-write map per owned key group (index = key group − range start).
#[derive(Clone)]
pub(crate) struct Table<K, N, S> {
    pub(crate) groups: Vec<Arc<GroupMap<K, N, S>>>,
}

impl<K, N, S> Table<K, N, S> {
    pub(crate) fn new(group_count: usize) -> Self {
        Self {
            groups: (0..group_count).map(|_| Arc::new(FastMap::new())).collect(),
        }
    }
}

/// Emits `(row key suffix, value)` pairs; see [`crate::state::rows`].
pub(crate) type RowSink<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;

/// The type-erased face of a [`Table`], for what the backend does without knowing the types.
pub(crate) trait AnyTable: Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Removes `(key, ns)` from group `group`; `key` and `ns` must be the table's `K` and `N`.
    fn remove_erased(&mut self, group: usize, key: &dyn Any, ns: &dyn Any) -> bool;
    /// All `(key, ns)` pairs as `Any` references.
    fn keys_erased(&self) -> Box<dyn Iterator<Item = (&dyn Any, &dyn Any)> + '_>;
    /// A frozen copy-on-write view of the table.
    fn freeze(&self) -> Box<dyn FrozenTable>;
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
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn remove_erased(&mut self, group: usize, key: &dyn Any, ns: &dyn Any) -> bool {
        let (Some(key), Some(ns)) = (key.downcast_ref::<K>(), ns.downcast_ref::<N>()) else {
            return false;
        };
        let lookup = crate::state::rows::KeyNs(key, ns);
        if !self.groups[group].contains_key(&lookup) {
            // Do not copy a frozen group just to find nothing to remove.
            return false;
        }
        Arc::make_mut(&mut self.groups[group])
            .remove(&lookup)
            .is_some()
    }

    fn keys_erased(&self) -> Box<dyn Iterator<Item = (&dyn Any, &dyn Any)> + '_> {
        Box::new(
            self.groups
                .iter()
                .flat_map(|g| g.keys().map(|(k, n)| (k as &dyn Any, n as &dyn Any))),
        )
    }

    fn freeze(&self) -> Box<dyn FrozenTable> {
        Box::new(self.clone())
    }

    fn load_row(&mut self, group: usize, suffix: &[u8], value: &[u8]) -> Result<(), CodecError> {
        let codec = DefaultCodec::default();
        let (key, used_k): (K, usize) = codec.decode_prefix(suffix)?;
        let (ns, used_n): (N, usize) = codec.decode_prefix(&suffix[used_k..])?;
        let user_key = &suffix[used_k + used_n..];
        let map = Arc::make_mut(&mut self.groups[group]);
        let entry = (key, ns);
        let mut slot = map.remove(&entry);
        S::decode_row(&mut slot, &codec, user_key, value)?;
        if let Some(s) = slot {
            map.insert(entry, s);
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.groups.iter().map(|g| g.len()).sum()
    }
}

impl<K: StateKey, N: StateKey, S: StoredState> FrozenTable for Table<K, N, S> {
    fn rows(&self, group: usize, state: &str, sink: &mut RowSink<'_>) -> Result<()> {
        let codec = DefaultCodec::default();
        let mut prefix = Vec::new();
        let mut row_key = Vec::new();
        for ((key, ns), stored) in self.groups[group].iter() {
            prefix.clear();
            codec
                .encode_into(key, &mut prefix)
                .and_then(|_| codec.encode_into(ns, &mut prefix))
                .map_err(|e| crate::Error::Encode {
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
