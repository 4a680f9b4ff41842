//! Bootstrapping a savepoint from typed rows (a database dump, a file), with no backend and no
//! job: [`SavepointBuilder`].

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::backends::interface::PendingSavepoint;
use crate::model::codec::{Codec, DefaultCodec};
use crate::model::error::{Error, Result};
use crate::model::format::metadata::{InstanceId, SnapshotMetadata};
use crate::model::format::view::{RowSink, RowView};
use crate::model::key_group::{KeyGroup, KeyGroupAssigner, KeyGroupRange};
use crate::model::state::backend::find_registered;
use crate::model::state::operator::OperatorState;
use crate::model::state::rows::encode_list_element;
use crate::model::state::ttl::TtlInstant;
use crate::model::state::{
    AggregatingStateDescriptor, BackendKind, ListStateDescriptor, MapStateDescriptor,
    ReducingStateDescriptor, StateInfo, StateKey, StateKind, StateValue, ValueStateDescriptor,
};
use crate::runtime::savepoint::complete_savepoint_with;
use crate::storage::CheckpointStorage;

/// One state's rows: (key group, row key suffix, value), sorted once all are added.
struct BuiltState {
    info: StateInfo,
    rows: Vec<(KeyGroup, Vec<u8>, Vec<u8>)>,
}

/// Builds a savepoint of one operator from typed rows. Rows are encoded as every backend
/// encodes them and written through the savepoint writer the backends use, so the data files
/// are byte for byte those of a backend holding the same state, at the same key groups.
///
/// ```
/// use statebackend::ValueStateDescriptor;
/// use statebackend::savepoint::processor::SavepointBuilder;
/// use statebackend::storage::LocalDirStorage;
/// let dir = tempfile::tempdir()?;
/// let mut builder = SavepointBuilder::new(128)?;
/// let counts = ValueStateDescriptor::<u64, (), u64>::new("counts");
/// builder.value_state(&counts, (0..1000u64).map(|k| (k, (), k * 2)))?;
/// let meta = builder.write(&LocalDirStorage::new(dir.path())?, "", 4)?;
/// assert_eq!(meta.instances.len(), 4);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SavepointBuilder {
    assigner: KeyGroupAssigner,
    states: Vec<BuiltState>,
    engine: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for SavepointBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavepointBuilder")
            .field("max_parallelism", &self.assigner.max_parallelism())
            .field("states", &self.states.len())
            .finish()
    }
}

/// Encodes `value` for state `state`.
fn encode<T: serde::Serialize + ?Sized>(state: &str, value: &T) -> Result<Vec<u8>> {
    DefaultCodec::default()
        .encode(value)
        .map_err(|e| Error::Encode {
            state: state.to_owned(),
            message: e.0,
        })
}

impl SavepointBuilder {
    /// A builder for a job of `max_parallelism` key groups.
    ///
    /// # Errors
    /// [`Error::InvalidMaxParallelism`].
    pub fn new(max_parallelism: u32) -> Result<Self> {
        Ok(Self {
            assigner: KeyGroupAssigner::new(max_parallelism)?,
            states: Vec::new(),
            engine: BTreeMap::new(),
        })
    }

    /// Records the engine's metadata `engine` in the savepoint, as a job's savepoint would.
    #[must_use]
    pub fn with_engine_metadata(mut self, engine: BTreeMap<String, Vec<u8>>) -> Self {
        self.engine = engine;
        self
    }

    /// Adds a state's rows, each `(key, namespace, user key bytes, value bytes)`.
    fn add<K: StateKey, N: StateKey>(
        &mut self,
        info: StateInfo,
        rows: impl Iterator<Item = Result<(K, N, Vec<u8>, Vec<u8>)>>,
    ) -> Result<()> {
        let infos: Vec<StateInfo> = self.states.iter().map(|s| s.info.clone()).collect();
        if find_registered(&infos, &info)?.is_some() {
            return Err(Error::StateMismatch {
                name: info.name.clone(),
                registered: "already bootstrapped".into(),
                requested: info.describe(),
            });
        }
        let codec = DefaultCodec::default();
        let mut built = Vec::new();
        for row in rows {
            let (key, namespace, user_key, value) = row?;
            let mut suffix = Vec::new();
            codec
                .encode_into(&key, &mut suffix)
                .and_then(|()| codec.encode_into(&namespace, &mut suffix))
                .map_err(|e| Error::Encode {
                    state: info.name.clone(),
                    message: e.0,
                })?;
            suffix.extend_from_slice(&user_key);
            built.push((self.assigner.key_group_of(&key)?, suffix, value));
        }
        // Stable: a list's elements keep the order they came in.
        built.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let append = info.kind == StateKind::List;
        let mut rows: Vec<(KeyGroup, Vec<u8>, Vec<u8>)> = Vec::with_capacity(built.len());
        for (group, suffix, value) in built {
            match rows.last_mut() {
                Some(last) if last.0 == group && last.1 == suffix => {
                    if append {
                        last.2.extend_from_slice(&value);
                    } else {
                        // The last value written for a key wins, as in a backend.
                        last.2 = value;
                    }
                }
                _ => rows.push((group, suffix, value)),
            }
        }
        self.states.push(BuiltState { info, rows });
        Ok(())
    }

    /// Adds the rows of a state holding one encoded value per (key, namespace).
    fn cells<K: StateKey, N: StateKey, V: StateValue>(
        &mut self,
        info: StateInfo,
        rows: impl IntoIterator<Item = (K, N, V)>,
    ) -> Result<&mut Self> {
        let name = info.name.clone();
        self.add(
            info,
            rows.into_iter()
                .map(|(k, n, v)| Ok((k, n, Vec::new(), encode(&name, &v)?))),
        )?;
        Ok(self)
    }

    /// Adds a value state: one `(key, namespace, value)` per row; a key given twice keeps its
    /// last value.
    ///
    /// # Errors
    /// [`Error::StateMismatch`] for a state name added before; encoding errors.
    pub fn value_state<K: StateKey, N: StateKey, V: StateValue>(
        &mut self,
        descriptor: &ValueStateDescriptor<K, N, V>,
        rows: impl IntoIterator<Item = (K, N, V)>,
    ) -> Result<&mut Self> {
        self.cells(descriptor.info(), rows)
    }

    /// Adds a reducing state: one `(key, namespace, reduced value)` per row.
    ///
    /// # Errors
    /// As [`SavepointBuilder::value_state`].
    pub fn reducing_state<K: StateKey, N: StateKey, V: StateValue>(
        &mut self,
        descriptor: &ReducingStateDescriptor<K, N, V>,
        rows: impl IntoIterator<Item = (K, N, V)>,
    ) -> Result<&mut Self> {
        self.cells(descriptor.info(), rows)
    }

    /// Adds an aggregating state: one `(key, namespace, accumulator)` per row.
    ///
    /// # Errors
    /// As [`SavepointBuilder::value_state`].
    pub fn aggregating_state<K: StateKey, N: StateKey, IN, ACC: StateValue, OUT>(
        &mut self,
        descriptor: &AggregatingStateDescriptor<K, N, IN, ACC, OUT>,
        rows: impl IntoIterator<Item = (K, N, ACC)>,
    ) -> Result<&mut Self> {
        self.cells(descriptor.info(), rows)
    }

    /// Adds a list state: one `(key, namespace, element)` per element, appended in the order
    /// given.
    ///
    /// # Errors
    /// As [`SavepointBuilder::value_state`].
    pub fn list_state<K: StateKey, N: StateKey, T: StateValue>(
        &mut self,
        descriptor: &ListStateDescriptor<K, N, T>,
        elements: impl IntoIterator<Item = (K, N, T)>,
    ) -> Result<&mut Self> {
        let info = descriptor.info();
        let name = info.name.clone();
        let codec = DefaultCodec::default();
        self.add(
            info,
            elements.into_iter().map(|(k, n, t)| {
                let mut bytes = Vec::new();
                encode_list_element(&codec, &t, &mut bytes).map_err(|e| Error::Encode {
                    state: name.clone(),
                    message: e.0,
                })?;
                Ok((k, n, Vec::new(), bytes))
            }),
        )?;
        Ok(self)
    }

    /// Adds a map state: one `(key, namespace, user key, value)` per entry.
    ///
    /// # Errors
    /// As [`SavepointBuilder::value_state`].
    pub fn map_state<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &mut self,
        descriptor: &MapStateDescriptor<K, N, UK, UV>,
        entries: impl IntoIterator<Item = (K, N, UK, UV)>,
    ) -> Result<&mut Self> {
        let info = descriptor.info();
        let name = info.name.clone();
        self.add(
            info,
            entries
                .into_iter()
                .map(|(k, n, uk, uv)| Ok((k, n, encode(&name, &uk)?, encode(&name, &uv)?))),
        )?;
        Ok(self)
    }

    /// Writes the savepoint of operator `operator` (`""` for a single-operator job) into
    /// `target`, which must hold no files, as `parallelism` instances over the key groups,
    /// `_metadata` last. On failure the files written are removed again.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] if `target` holds files; [`Error::InvalidOperator`] for a
    /// parallelism of 0 or above the max parallelism; write and storage errors.
    pub fn write(
        self,
        target: &dyn CheckpointStorage,
        operator: &str,
        parallelism: u32,
    ) -> Result<SnapshotMetadata> {
        if let Some(existing) = target.list(None)?.first() {
            return Err(Error::AlreadyExists {
                path: format!("{} (the target must hold no files)", existing.path),
            });
        }
        let result = self.write_into(target, operator, parallelism);
        if result.is_err() {
            if let Ok(objects) = target.list(None) {
                for o in objects {
                    let _ = target.delete(&o.path);
                }
            }
        }
        result
    }

    fn write_into(
        self,
        target: &dyn CheckpointStorage,
        operator: &str,
        parallelism: u32,
    ) -> Result<SnapshotMetadata> {
        let max_parallelism = self.assigner.max_parallelism();
        let mut states = self.states;
        states.sort_by(|a, b| a.info.name.cmp(&b.info.name));
        let states = Arc::new(states);
        let mut instances = Vec::new();
        for index in 0..parallelism.max(1) {
            let range = KeyGroupRange::for_operator(max_parallelism, parallelism, index)?;
            let view = BuiltView {
                max_parallelism,
                range,
                infos: states.iter().map(|s| s.info.clone()).collect(),
                states: Arc::clone(&states),
            };
            let mut part = PendingSavepoint::from_view(
                Box::new(view),
                InstanceId::random(),
                BackendKind::Heap,
                OperatorState::default(),
            )
            .write(target)?;
            part.operator = operator.to_owned();
            instances.push(part);
        }
        complete_savepoint_with(target, instances, self.engine)
    }
}

/// The built rows of one instance's key groups.
struct BuiltView {
    max_parallelism: u32,
    range: KeyGroupRange,
    infos: Vec<StateInfo>,
    states: Arc<Vec<BuiltState>>,
}

impl RowView for BuiltView {
    fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }

    fn key_groups(&self) -> KeyGroupRange {
        self.range
    }

    fn states(&self) -> &[StateInfo] {
        &self.infos
    }

    fn rows(&self, key_group: KeyGroup, state: usize, sink: &mut RowSink<'_>) -> Result<()> {
        let rows = &self.states[state].rows;
        let start = rows.partition_point(|r| r.0 < key_group);
        for (_, suffix, value) in rows[start..].iter().take_while(|r| r.0 == key_group) {
            sink(suffix, value)?;
        }
        Ok(())
    }

    fn ttl_instant(&self) -> TtlInstant {
        TtlInstant {
            processing: 0,
            event: 0,
        }
    }
}
