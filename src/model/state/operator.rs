//! Operator state: per-instance state that is not keyed, as Apache Flink's operator state.
//! It is where a source keeps its offsets.
//!
//! Three modes, which differ in how a restore at another parallelism hands the state out:
//!
//! - [`OperatorStateMode::SplitList`] ([`OperatorState::list_state`]): at the instance count
//!   of the snapshot, each instance keeps its own list, as in Flink: the new instance with the
//!   key groups of old instance `i` gets exactly the list old instance `i` held, in its order.
//!   At another instance count, the elements of every old instance, concatenated in key-group
//!   order, are split evenly over the new instances: element `j` of `n` (counted from 0) goes to
//!   the instance that owns key group `j * max_parallelism / n`, the division rounded down. So
//!   the instance owning key groups `[a, b)` gets elements `ceil(a * n / max_parallelism)` up
//!   to (not including) `ceil(b * n / max_parallelism)`, a contiguous run in the old order of
//!   `(b - a) * n / max_parallelism` elements rounded up or down.
//! - [`OperatorStateMode::UnionList`] ([`OperatorState::union_list_state`]): every new instance
//!   receives all elements of every old instance.
//! - [`OperatorStateMode::Broadcast`] ([`OperatorState::broadcast_state`]): a map that every
//!   instance holds identically; every new instance receives the map of the old instance with
//!   the lowest key groups.
//!
//! "The instance count of the snapshot" is decided per restore ([`OperatorState::redistribute_at`]):
//! the old instances' key groups must be the ranges of [`KeyGroupRange::for_operator`] at
//! their count `p`, the new instance's key groups one of them, and the new instance count,
//! when the engine gives it (`BackendConfig::parallelism`), `p`. Without the count, the key
//! groups decide alone, which they can only where no other count has a range equal to one of
//! the snapshot's (at max parallelism 128: 1 to 12 instances; 256: 1 to 15 and 18): a restore
//! at 16 of 128 instances that keeps lists at ranges it shares with 15 instances would lose or
//! repeat elements if the job in fact ran at 15. Otherwise the lists are split evenly.
//!
//! Elements are kept encoded (the codec of keyed state), so a snapshot is a copy of a few
//! byte strings taken at the barrier. It is stored in the checkpoint's and savepoint's
//! `_metadata` (format version 2, `docs/checkpoint-layout.md`): meant for offsets and
//! configuration, not bulk data (the whole `_metadata` is at most 64 MiB).
//!
//! ```
//! use statebackend::state::OperatorState;
//! let mut operator = OperatorState::default();
//! let offsets = operator.list_state::<u64>("offsets")?;
//! offsets.update(&mut operator, vec![42])?;
//! assert_eq!(offsets.get(&operator)?, vec![42]);
//! # Ok::<(), statebackend::Error>(())
//! ```

use std::any::type_name;
use std::collections::BTreeMap;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::model::codec::{Codec, DefaultCodec};
use crate::model::error::{Error, Result};
use crate::model::key_group::KeyGroupRange;
use crate::model::state::{StateKey, StateValue};

/// How an operator state is handed out when the parallelism changes (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperatorStateMode {
    /// Elements split evenly over the new instances.
    SplitList = 1,
    /// Every new instance receives every element.
    UnionList = 2,
    /// A map every instance holds identically.
    Broadcast = 3,
}

impl OperatorStateMode {
    /// The mode with byte code `code`, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::SplitList),
            2 => Some(Self::UnionList),
            3 => Some(Self::Broadcast),
            _ => None,
        }
    }

    /// The byte code stored in `_metadata`.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// One named operator state: its mode, its element type's name, and its encoded elements
/// (for broadcast state, one element per map entry: the encoding of `(key, value)`, in
/// ascending order of the key's encoding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorStateEntry {
    /// How it is redistributed.
    pub mode: OperatorStateMode,
    /// The element type (`std::any::type_name`), checked when the state is opened again.
    pub type_name: String,
    /// The encoded elements.
    pub elements: Vec<Vec<u8>>,
}

/// The operator state of one instance: named states, each a list of encoded elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperatorState {
    states: BTreeMap<String, OperatorStateEntry>,
}

impl OperatorState {
    /// The states by name.
    pub fn entries(&self) -> &BTreeMap<String, OperatorStateEntry> {
        &self.states
    }

    /// Sets state `name` as restored or decoded (used by the formats and restores).
    pub fn insert_entry(&mut self, name: String, entry: OperatorStateEntry) {
        self.states.insert(name, entry);
    }

    /// The split list state `name` of elements `T` (created empty on first use).
    ///
    /// # Errors
    /// [`Error::StateMismatch`] if `name` exists with another mode or element type;
    /// [`Error::InvalidStateName`] for an empty name or one over 255 bytes.
    pub fn list_state<T: StateValue>(&mut self, name: &str) -> Result<OperatorListState<T>> {
        self.open(name, OperatorStateMode::SplitList, type_name::<T>())?;
        Ok(OperatorListState::new(name))
    }

    /// The union list state `name` of elements `T` (created empty on first use).
    ///
    /// # Errors
    /// As [`OperatorState::list_state`].
    pub fn union_list_state<T: StateValue>(&mut self, name: &str) -> Result<OperatorListState<T>> {
        self.open(name, OperatorStateMode::UnionList, type_name::<T>())?;
        Ok(OperatorListState::new(name))
    }

    /// The broadcast state `name`, a map from `K` to `V` (created empty on first use).
    ///
    /// # Errors
    /// As [`OperatorState::list_state`].
    pub fn broadcast_state<K: StateKey + Ord, V: StateValue>(
        &mut self,
        name: &str,
    ) -> Result<BroadcastState<K, V>> {
        self.open(name, OperatorStateMode::Broadcast, type_name::<(K, V)>())?;
        Ok(BroadcastState {
            name: name.to_owned(),
            _types: PhantomData,
        })
    }

    fn open(&mut self, name: &str, mode: OperatorStateMode, element: &str) -> Result<()> {
        if name.is_empty() || name.len() > 255 {
            return Err(Error::InvalidStateName {
                name: name.to_owned(),
                reason: "operator state names are 1 to 255 bytes",
            });
        }
        match self.states.get(name) {
            Some(existing) if existing.mode != mode || existing.type_name != element => {
                Err(Error::StateMismatch {
                    name: name.to_owned(),
                    registered: format!("{:?} of {}", existing.mode, existing.type_name),
                    requested: format!("{mode:?} of {element}"),
                })
            }
            Some(_) => Ok(()),
            None => {
                self.states.insert(
                    name.to_owned(),
                    OperatorStateEntry {
                        mode,
                        type_name: element.to_owned(),
                        elements: Vec::new(),
                    },
                );
                Ok(())
            }
        }
    }

    fn elements_mut(&mut self, name: &str) -> Result<&mut Vec<Vec<u8>>> {
        self.states
            .get_mut(name)
            .map(|s| &mut s.elements)
            .ok_or_else(|| unknown(name))
    }

    fn elements(&self, name: &str) -> Result<&[Vec<u8>]> {
        self.states
            .get(name)
            .map(|s| s.elements.as_slice())
            .ok_or_else(|| unknown(name))
    }

    /// The operator state of a new instance owning `range` of `max_parallelism`, from the
    /// operator states of the old instances `parts` (each with the key groups it owned), by
    /// each state's mode (module docs), the new instance count not known:
    /// [`OperatorState::redistribute_at`] with `None`.
    pub fn redistribute(
        parts: &[(KeyGroupRange, &OperatorState)],
        range: KeyGroupRange,
        max_parallelism: u32,
    ) -> OperatorState {
        Self::redistribute_at(parts, range, max_parallelism, None)
    }

    /// As [`OperatorState::redistribute`], for a new instance of an operator of `parallelism`
    /// instances if known: at the old instances' count, every split list stays with the
    /// instance of the same key groups (module docs).
    pub fn redistribute_at(
        parts: &[(KeyGroupRange, &OperatorState)],
        range: KeyGroupRange,
        max_parallelism: u32,
        parallelism: Option<u32>,
    ) -> OperatorState {
        let mut parts: Vec<_> = parts.to_vec();
        parts.sort_by_key(|(r, _)| r.start());
        let own = same_instance(&parts, range, max_parallelism, parallelism);
        let mut out = OperatorState::default();
        for (_, part) in &parts {
            for (name, entry) in &part.states {
                out.states
                    .entry(name.clone())
                    .or_insert_with(|| OperatorStateEntry {
                        mode: entry.mode,
                        type_name: entry.type_name.clone(),
                        elements: Vec::new(),
                    });
            }
        }
        for (name, target) in &mut out.states {
            let all: Vec<&Vec<u8>> = parts
                .iter()
                .filter_map(|(_, p)| p.states.get(name))
                .filter(|e| e.mode == target.mode)
                .flat_map(|e| e.elements.iter())
                .collect();
            target.elements = match (target.mode, own) {
                (OperatorStateMode::UnionList, _) => all.into_iter().cloned().collect(),
                (OperatorStateMode::Broadcast, _) => parts
                    .iter()
                    .find_map(|(_, p)| p.states.get(name))
                    .map(|e| e.elements.clone())
                    .unwrap_or_default(),
                (OperatorStateMode::SplitList, Some(i)) => parts[i]
                    .1
                    .states
                    .get(name)
                    .filter(|e| e.mode == target.mode)
                    .map(|e| e.elements.clone())
                    .unwrap_or_default(),
                (OperatorStateMode::SplitList, None) => {
                    let n = all.len() as u64;
                    all.into_iter()
                        .enumerate()
                        .filter(|(j, _)| {
                            let group = (*j as u64 * u64::from(max_parallelism) / n) as u32;
                            range.contains(group as u16)
                        })
                        .map(|(_, e)| e.clone())
                        .collect()
                }
            };
        }
        out
    }
}

/// The index in `parts` (sorted by start) of the old instance whose split lists the new
/// instance owning `range` keeps, if the restore is at the old instance count (module docs).
fn same_instance(
    parts: &[(KeyGroupRange, &OperatorState)],
    range: KeyGroupRange,
    max_parallelism: u32,
    parallelism: Option<u32>,
) -> Option<usize> {
    let (m, p) = (u64::from(max_parallelism), parts.len() as u64);
    if p == 0 || p > m {
        return None;
    }
    // The old instances are those of `for_operator` at `p`.
    let laid_out = parts.iter().enumerate().all(|(i, (r, _))| {
        let i = i as u64;
        u64::from(r.start()) == (i * m).div_ceil(p)
            && u64::from(r.end()) == ((i + 1) * m).div_ceil(p)
    });
    let own = parts.iter().position(|(r, _)| *r == range)?;
    if !laid_out {
        return None;
    }
    let same_count = match parallelism {
        Some(q) => u64::from(q) == p,
        None => parts
            .iter()
            .all(|(r, _)| !is_range_of_other_count(*r, m, p)),
    };
    same_count.then_some(own)
}

/// Whether `range` is a range of [`KeyGroupRange::for_operator`] at an instance count other
/// than `p`.
fn is_range_of_other_count(range: KeyGroupRange, m: u64, p: u64) -> bool {
    let (a, b) = (u64::from(range.start()), u64::from(range.end()));
    let len = b - a;
    // A range of `q` instances has floor(m / q) or ceil(m / q) key groups, so
    // m / (len + 1) < q < m / (len - 1).
    let low = m / (len + 1) + 1;
    let high = if len > 1 { m.div_ceil(len - 1) } else { m };
    (low..=high.min(m)).filter(|&q| q != p).any(|q| {
        let j = a * q / m;
        (j * m).div_ceil(q) == a && ((j + 1) * m).div_ceil(q) == b
    })
}

#[cold]
fn unknown(name: &str) -> Error {
    Error::Incompatible {
        reason: format!("operator state {name:?} is not open in this operator state"),
    }
}

fn encode<T: Serialize + ?Sized>(name: &str, value: &T) -> Result<Vec<u8>> {
    DefaultCodec::default()
        .encode(value)
        .map_err(|e| Error::Encode {
            state: name.to_owned(),
            message: e.0,
        })
}

fn decode<T: DeserializeOwned>(name: &str, bytes: &[u8]) -> Result<T> {
    DefaultCodec::default()
        .decode(bytes)
        .map_err(|e| Error::Decode {
            state: name.to_owned(),
            message: e.0,
        })
}

/// Handle of a split or union list operator state.
#[derive(Debug, Clone)]
pub struct OperatorListState<T> {
    name: String,
    _types: PhantomData<fn() -> T>,
}

impl<T: StateValue> OperatorListState<T> {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            _types: PhantomData,
        }
    }

    /// The elements.
    ///
    /// # Errors
    /// A decode error if the stored bytes are not `T`s; [`Error::Incompatible`] if the state
    /// was not opened in `state`.
    pub fn get(&self, state: &OperatorState) -> Result<Vec<T>> {
        state
            .elements(&self.name)?
            .iter()
            .map(|e| decode(&self.name, e))
            .collect()
    }

    /// Appends `value`.
    ///
    /// # Errors
    /// An encode error; [`Error::Incompatible`] as for `get`.
    pub fn add(&self, state: &mut OperatorState, value: &T) -> Result<()> {
        let bytes = encode(&self.name, value)?;
        state.elements_mut(&self.name)?.push(bytes);
        Ok(())
    }

    /// Replaces the elements with `values`.
    ///
    /// # Errors
    /// As [`OperatorListState::add`].
    pub fn update(&self, state: &mut OperatorState, values: Vec<T>) -> Result<()> {
        let encoded = values
            .iter()
            .map(|v| encode(&self.name, v))
            .collect::<Result<Vec<_>>>()?;
        *state.elements_mut(&self.name)? = encoded;
        Ok(())
    }
}

/// Handle of a broadcast operator state: a map every instance holds identically.
#[derive(Debug, Clone)]
pub struct BroadcastState<K, V> {
    name: String,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K: StateKey + Ord, V: StateValue> BroadcastState<K, V> {
    /// The whole map.
    ///
    /// # Errors
    /// As [`OperatorListState::get`].
    pub fn entries(&self, state: &OperatorState) -> Result<BTreeMap<K, V>> {
        state
            .elements(&self.name)?
            .iter()
            .map(|e| decode::<(K, V)>(&self.name, e))
            .collect()
    }

    /// The value of `key`.
    ///
    /// # Errors
    /// As [`OperatorListState::get`].
    pub fn get(&self, state: &OperatorState, key: &K) -> Result<Option<V>> {
        Ok(self.entries(state)?.remove(key))
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    /// As [`OperatorListState::add`].
    pub fn put(&self, state: &mut OperatorState, key: K, value: V) -> Result<()> {
        let mut map = self.entries(state)?;
        map.insert(key, value);
        self.store(state, &map)
    }

    /// Removes `key`.
    ///
    /// # Errors
    /// As [`OperatorListState::add`].
    pub fn remove(&self, state: &mut OperatorState, key: &K) -> Result<()> {
        let mut map = self.entries(state)?;
        map.remove(key);
        self.store(state, &map)
    }

    fn store(&self, state: &mut OperatorState, map: &BTreeMap<K, V>) -> Result<()> {
        let encoded = map
            .iter()
            .map(|entry| encode(&self.name, &entry))
            .collect::<Result<Vec<_>>>()?;
        *state.elements_mut(&self.name)? = encoded;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(m: u32, p: u32) -> Vec<KeyGroupRange> {
        (0..p)
            .map(|i| KeyGroupRange::for_operator(m, p, i).unwrap())
            .collect()
    }

    /// `is_range_of_other_count` agrees with comparing every instance count's ranges.
    #[test]
    fn ranges_shared_with_another_count_are_found_as_by_comparing_every_count() {
        for m in [1u32, 7, 128, 200, 256] {
            let all: Vec<Vec<KeyGroupRange>> = (1..=m).map(|q| partition(m, q)).collect();
            for p in 1..=m {
                for r in &all[p as usize - 1] {
                    let expected = (1..=m)
                        .filter(|&q| q != p)
                        .any(|q| all[q as usize - 1].contains(r));
                    assert_eq!(
                        is_range_of_other_count(*r, u64::from(m), u64::from(p)),
                        expected,
                        "m {m} p {p} {r}"
                    );
                }
            }
        }
    }

    /// Which counts keep their lists without being told, as the module docs say.
    #[test]
    fn counts_told_by_their_key_groups_alone() {
        let told = |m: u32| -> Vec<u32> {
            (1..=m)
                .filter(|&p| {
                    partition(m, p)
                        .iter()
                        .all(|r| !is_range_of_other_count(*r, u64::from(m), u64::from(p)))
                })
                .collect()
        };
        assert_eq!(told(128), (1..=12).collect::<Vec<_>>());
        let mut at_256: Vec<u32> = (1..=15).collect();
        at_256.push(18);
        assert_eq!(told(256), at_256);
    }
}
