//! The reference backend: every state as canonical rows in ordered maps, one per state and key
//! group, with no cache, no copy-on-write and no files of its own.
//!
//! It is the executable specification of a backend. It is written only against public items:
//! the row layout ([`crate::model::state::rows`]), the codec, [`find_registered`], and the
//! runtime interface ([`CheckpointedBackend`], checkpointing as a [`full_snapshot`]). So it
//! shows what a new backend takes — one module, and a variant in [`crate::AnyBackend`] — and
//! the test suites that run the heap and RocksDB backends run it too, as the model their
//! results are compared with. It is simple rather than fast: a snapshot copies every row.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backends::config::BackendConfig;
use crate::backends::full_snapshot;
use crate::backends::interface::{CheckpointedBackend, SnapshotUpload};
use crate::model::codec::{Codec, CodecError, DefaultCodec};
use crate::model::error::{Error, Result};
use crate::model::format::metadata::{FetchFile, InstanceId, InstanceMetadata};
use crate::model::format::view::{RowSink, RowSource, RowView};
use crate::model::key_group::{KeyGroup, KeyGroupAssigner, KeyGroupRange, check_range};
use crate::model::state::backend::{
    BackendKind, KeyedStateBackend, MapEntries, StateKeys, find_registered, ttl_change,
};
use crate::model::state::key::KeyRef;
use crate::model::state::migration::RowMigration;
use crate::model::state::operator::OperatorState;
use crate::model::state::rows::{decode_list, encode_list_element};
use crate::model::state::ttl::{TtlChange, TtlClock};
use crate::model::state::{
    StateId, StateInfo, StateKey, StateValue, StoredState, next_backend_identity,
};

/// The rows of one state in one key group: row key suffix → value.
type Rows = BTreeMap<Vec<u8>, Vec<u8>>;

/// Keyed state as canonical rows in ordered maps (see the module docs).
pub struct ReferenceBackend {
    assigner: KeyGroupAssigner,
    range: KeyGroupRange,
    instance_id: InstanceId,
    identity: u64,
    states: Vec<StateInfo>,
    /// Per state, per owned key group (index = key group − range start).
    rows: Vec<Vec<Rows>>,
    /// Per state, whether the engine registered it on this backend object (a restored state
    /// is declared but not registered until then; only then may its time to live change).
    registered: Vec<bool>,
    operator_state: OperatorState,
    ttl_clock: TtlClock,
}

impl ReferenceBackend {
    /// An empty backend for `max_parallelism` key groups, owning `range`.
    ///
    /// # Errors
    /// [`Error::InvalidMaxParallelism`]; [`Error::InvalidOperator`] if `range` does not fit.
    pub fn new(max_parallelism: u32, range: KeyGroupRange) -> Result<Self> {
        let assigner = KeyGroupAssigner::new(max_parallelism)?;
        check_range(max_parallelism, range)?;
        Ok(Self {
            assigner,
            range,
            instance_id: InstanceId::random(),
            identity: next_backend_identity(),
            operator_state: OperatorState::default(),
            states: Vec::new(),
            rows: Vec::new(),
            registered: Vec::new(),
            ttl_clock: TtlClock::default(),
        })
    }

    /// The state `id` names, with its info.
    fn state(&self, id: StateId) -> Result<(&StateInfo, &Vec<Rows>)> {
        let index = id.index_in(self.identity)?;
        match (self.states.get(index), self.rows.get(index)) {
            (Some(info), Some(rows)) => Ok((info, rows)),
            _ => Err(Error::UnknownState { id: id.index() }),
        }
    }

    /// The rows of `key`'s key group in state `id`, and the encoding of `(key, ns)`.
    fn locate<K: StateKey, N: StateKey>(
        &self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<(&StateInfo, &Rows, Vec<u8>)> {
        let slot = self.slot_of(key)?;
        let (info, rows) = self.state(id)?;
        let prefix = encode_key(&info.name, key.key(), ns)?;
        Ok((info, &rows[slot], prefix))
    }

    /// As [`ReferenceBackend::locate`], for writing.
    fn locate_mut<K: StateKey, N: StateKey>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<(String, &mut Rows, Vec<u8>)> {
        let slot = self.slot_of(key)?;
        self.state(id)?;
        let index = id.index_in(self.identity)?;
        let name = self.states[index].name.clone();
        let prefix = encode_key(&name, key.key(), ns)?;
        Ok((name, &mut self.rows[index][slot], prefix))
    }

    /// The index of `key`'s key group among the owned ones.
    fn slot_of<K: StateKey>(&self, key: KeyRef<'_, K>) -> Result<usize> {
        let group = key.checked_group(self.assigner, self.range)?;
        Ok((u32::from(group) - self.range.start()) as usize)
    }

    /// Declares `info` (a restored state) and returns its index.
    fn declare(&mut self, info: &StateInfo) -> Result<usize> {
        if let Some(index) = find_registered(&self.states, info)? {
            return Ok(index);
        }
        self.states.push(info.clone());
        self.rows.push(vec![Rows::new(); self.range.len() as usize]);
        self.registered.push(false);
        Ok(self.states.len() - 1)
    }

    /// Registers `info`: declares it, and changes the rows of a restored state whose time to
    /// live `info` changes ([`ttl_change`]).
    fn register_info(&mut self, info: StateInfo) -> Result<usize> {
        let index = self.declare(&info)?;
        let change = ttl_change(
            &self.states[index],
            &info,
            !self.registered[index],
            &self.ttl_clock,
        )?;
        if let Some(change) = change {
            if change != TtlChange::Keep {
                for rows in &mut self.rows[index] {
                    for value in rows.values_mut() {
                        *value = change.apply_to_row(&info, value)?;
                    }
                }
            }
            self.states[index] = info;
        }
        self.registered[index] = true;
        Ok(index)
    }
}

fn encode<T: Serialize + ?Sized>(state: &str, value: &T) -> Result<Vec<u8>> {
    DefaultCodec::default()
        .encode(value)
        .map_err(|e| encode_error(state, e))
}

fn encode_key<K: Serialize, N: Serialize>(state: &str, key: &K, ns: &N) -> Result<Vec<u8>> {
    let mut prefix = encode(state, key)?;
    DefaultCodec::default()
        .encode_into(ns, &mut prefix)
        .map_err(|e| encode_error(state, e))?;
    Ok(prefix)
}

fn decode<T: DeserializeOwned>(state: &str, bytes: &[u8]) -> Result<T> {
    DefaultCodec::default()
        .decode(bytes)
        .map_err(|e| decode_error(state, e))
}

fn encode_error(state: &str, e: CodecError) -> Error {
    Error::Encode {
        state: state.to_owned(),
        message: e.0,
    }
}

fn decode_error(state: &str, e: CodecError) -> Error {
    Error::Decode {
        state: state.to_owned(),
        message: e.0,
    }
}

/// The rows of `rows` whose key starts with `prefix`.
fn with_prefix<'a>(
    rows: &'a Rows,
    prefix: &'a [u8],
) -> impl Iterator<Item = (&'a Vec<u8>, &'a Vec<u8>)> {
    rows.range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |(k, _)| k.starts_with(prefix))
}

impl KeyedStateBackend for ReferenceBackend {
    fn backend_kind(&self) -> BackendKind {
        BackendKind::Reference
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
        self.states.clone()
    }

    fn register<K: StateKey, N: StateKey, S: StoredState>(
        &mut self,
        info: StateInfo,
    ) -> Result<StateId> {
        let index = self.register_info(info)?;
        Ok(StateId::new(self.identity, index))
    }

    fn migrate_rows(&mut self, migration: &RowMigration) -> Result<()> {
        let index = self
            .states
            .iter()
            .position(|s| s.name == migration.state())
            .filter(|&i| !self.registered[i])
            .ok_or_else(|| migration.not_restored())?;
        // Into a copy, swapped in once every row migrated: a failure changes nothing.
        let mut migrated = Vec::with_capacity(self.rows[index].len());
        for rows in &self.rows[index] {
            let mut group: Vec<_> = rows.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            migration.apply_sorted(&mut group)?;
            migrated.push(group.into_iter().collect());
        }
        self.rows[index] = migrated;
        self.states[index] = migration.migrated_info().clone();
        Ok(())
    }

    fn get_cell<K: StateKey, N: StateKey, V: StateValue>(
        &self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<Option<V>> {
        let (info, rows, row) = self.locate(id, key, ns)?;
        rows.get(&row).map(|v| decode(&info.name, v)).transpose()
    }

    fn put_cell<K: StateKey, N: StateKey, V: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        value: V,
    ) -> Result<()> {
        let (name, rows, row) = self.locate_mut(id, key, ns)?;
        rows.insert(row, encode(&name, &value)?);
        Ok(())
    }

    fn clear<K: StateKey, N: StateKey>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<()> {
        let (_, rows, prefix) = self.locate_mut(id, key, ns)?;
        // Encodings are self-delimiting: the rows of `(key, ns)` are exactly those whose key
        // starts with its encoding (one row, or one per user key of a map).
        let doomed: Vec<Vec<u8>> = with_prefix(rows, &prefix).map(|(k, _)| k.clone()).collect();
        for row in doomed {
            rows.remove(&row);
        }
        Ok(())
    }

    fn get_list<K: StateKey, N: StateKey, T: StateValue>(
        &self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<Vec<T>> {
        let (info, rows, row) = self.locate(id, key, ns)?;
        match rows.get(&row) {
            Some(bytes) => decode_list(&DefaultCodec::default(), bytes)
                .map_err(|e| decode_error(&info.name, e)),
            None => Ok(Vec::new()),
        }
    }

    fn append_list<K: StateKey, N: StateKey, T: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        value: T,
    ) -> Result<()> {
        let (name, rows, row) = self.locate_mut(id, key, ns)?;
        let bytes = rows.entry(row).or_default();
        encode_list_element(&DefaultCodec::default(), &value, bytes)
            .map_err(|e| encode_error(&name, e))
    }

    fn replace_list<K: StateKey, N: StateKey, T: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        values: Vec<T>,
    ) -> Result<()> {
        let (name, rows, row) = self.locate_mut(id, key, ns)?;
        if values.is_empty() {
            rows.remove(&row);
            return Ok(());
        }
        let mut bytes = Vec::new();
        for value in &values {
            encode_list_element(&DefaultCodec::default(), value, &mut bytes)
                .map_err(|e| encode_error(&name, e))?;
        }
        rows.insert(row, bytes);
        Ok(())
    }

    fn get_map_value<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: &UK,
    ) -> Result<Option<UV>> {
        let (info, rows, mut row) = self.locate(id, key, ns)?;
        row.extend(encode(&info.name, user_key)?);
        rows.get(&row).map(|v| decode(&info.name, v)).transpose()
    }

    fn contains_map_key<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: &UK,
    ) -> Result<bool> {
        let (info, rows, mut row) = self.locate(id, key, ns)?;
        row.extend(encode(&info.name, user_key)?);
        Ok(rows.contains_key(&row))
    }

    fn put_map_value<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: UK,
        value: UV,
    ) -> Result<()> {
        let (name, rows, mut row) = self.locate_mut(id, key, ns)?;
        row.extend(encode(&name, &user_key)?);
        rows.insert(row, encode(&name, &value)?);
        Ok(())
    }

    fn remove_map_value<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
        user_key: &UK,
    ) -> Result<()> {
        let (name, rows, mut row) = self.locate_mut(id, key, ns)?;
        row.extend(encode(&name, user_key)?);
        rows.remove(&row);
        Ok(())
    }

    fn map_entries<'a, K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &'a self,
        id: StateId,
        key: KeyRef<'_, K>,
        ns: &N,
    ) -> Result<MapEntries<'a, UK, UV>> {
        let (info, rows, prefix) = self.locate(id, key, ns)?;
        let entries: Vec<Result<(UK, UV)>> = with_prefix(rows, &prefix)
            .map(|(row, value)| {
                Ok((
                    decode(&info.name, &row[prefix.len()..])?,
                    decode(&info.name, value)?,
                ))
            })
            .collect();
        Ok(Box::new(entries.into_iter()))
    }

    fn keys<'a, K: StateKey, N: StateKey>(
        &'a self,
        id: StateId,
        ns: Option<&N>,
    ) -> Result<StateKeys<'a, K, N>> {
        let (info, groups) = self.state(id)?;
        let codec = DefaultCodec::default();
        let wanted = ns.map(|n| encode(&info.name, n)).transpose()?;
        let mut keys: Vec<Result<(K, N)>> = Vec::new();
        for rows in groups {
            // A map's rows of one (key, namespace) are adjacent: report it once.
            let mut last: Option<Vec<u8>> = None;
            for row in rows.keys() {
                let decoded = codec.decode_prefix::<K>(row).and_then(|(key, at)| {
                    codec
                        .decode_prefix::<N>(&row[at..])
                        .map(|(n, len)| (key, n, at, len))
                });
                let (key, n, at, len) = match decoded {
                    Ok(parts) => parts,
                    Err(e) => {
                        keys.push(Err(decode_error(&info.name, e)));
                        continue;
                    }
                };
                let key_ns = &row[..at + len];
                if last.as_deref() == Some(key_ns) {
                    continue;
                }
                last = Some(key_ns.to_vec());
                if wanted
                    .as_ref()
                    .is_none_or(|w| w.as_slice() == &row[at..at + len])
                {
                    keys.push(Ok((key, n)));
                }
            }
        }
        Ok(Box::new(keys.into_iter()))
    }
}

impl CheckpointedBackend for ReferenceBackend {
    fn open(config: &BackendConfig) -> Result<Self> {
        Self::new(config.max_parallelism, config.key_groups)
    }

    fn instance_id(&self) -> InstanceId {
        self.instance_id
    }

    fn operator_state(&self) -> &OperatorState {
        &self.operator_state
    }

    fn operator_state_mut(&mut self) -> &mut OperatorState {
        &mut self.operator_state
    }

    fn snapshot_state(&mut self, checkpoint_id: u64) -> Result<Box<dyn SnapshotUpload>> {
        full_snapshot::snapshot(self, checkpoint_id)
    }

    fn notify_checkpoint_complete(&mut self, part: &InstanceMetadata) -> Result<()> {
        part.check_belongs_to(
            self.instance_id,
            BackendKind::Reference,
            self.assigner.max_parallelism(),
            self.range,
        )
    }

    /// A copy of every row, states sorted by name.
    fn row_view(&mut self) -> Result<Box<dyn RowView>> {
        let mut order: Vec<usize> = (0..self.states.len()).collect();
        order.sort_by(|a, b| self.states[*a].name.cmp(&self.states[*b].name));
        Ok(Box::new(ReferenceView {
            max_parallelism: self.assigner.max_parallelism(),
            range: self.range,
            ttl_instant: self.ttl_clock.instant(),
            states: order.iter().map(|i| self.states[*i].clone()).collect(),
            rows: order.iter().map(|i| self.rows[*i].clone()).collect(),
        }))
    }

    fn restore_checkpoint(
        config: &BackendConfig,
        sources: &[&InstanceMetadata],
        fetch: &FetchFile<'_>,
        _claim: bool,
    ) -> Result<Self> {
        full_snapshot::restore(config, sources, fetch)
    }

    fn restore_rows(config: &BackendConfig, source: &mut dyn RowSource) -> Result<Self> {
        let mut backend = Self::new(config.max_parallelism, config.key_groups)?;
        let indices = source
            .states()
            .iter()
            .map(|info| backend.declare(info))
            .collect::<Result<Vec<_>>>()?;
        let range = backend.range;
        source.emit_rows(&mut |group, state, key, value| {
            if !range.contains(group) {
                return Err(Error::KeyOutsideRange {
                    key_group: group,
                    range,
                });
            }
            let slot = (u32::from(group) - range.start()) as usize;
            backend.rows[indices[state]][slot].insert(key.to_vec(), value.to_vec());
            Ok(())
        })?;
        Ok(backend)
    }
}

/// A copy of a reference backend's rows.
struct ReferenceView {
    max_parallelism: u32,
    range: KeyGroupRange,
    ttl_instant: crate::model::state::ttl::TtlInstant,
    states: Vec<StateInfo>,
    rows: Vec<Vec<Rows>>,
}

impl RowView for ReferenceView {
    fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }

    fn key_groups(&self) -> KeyGroupRange {
        self.range
    }

    fn states(&self) -> &[StateInfo] {
        &self.states
    }

    fn ttl_instant(&self) -> crate::model::state::ttl::TtlInstant {
        self.ttl_instant
    }

    fn rows(&self, key_group: KeyGroup, state: usize, sink: &mut RowSink<'_>) -> Result<()> {
        let slot = (u32::from(key_group) - self.range.start()) as usize;
        for (key, value) in &self.rows[state][slot] {
            sink(key, value)?;
        }
        Ok(())
    }
}
