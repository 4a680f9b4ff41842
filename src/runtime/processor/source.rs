//! A snapshot opened for offline work: its metadata, its instances' data files fetched once
//! and verified, and [`SourceView`], the rows of some key groups of them as a [`RowView`] that
//! the savepoint writer turns into a new data file.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::backends::config::BackendConfig;
use crate::backends::interface::CheckpointedBackend;
use crate::model::error::{Error, Result};
use crate::model::format::data_file::DataFileReader;
use crate::model::format::metadata::{InstanceMetadata, SnapshotMetadata};
use crate::model::format::view::{RowSink, RowView, unite_states, write_data_file};
use crate::model::key_group::{KeyGroup, KeyGroupRange};
use crate::model::state::StateInfo;
use crate::model::state::ttl::TtlInstant;
use crate::runtime::checkpoint::restore::{RestoreMode, restore_instance};
use crate::storage::{CheckpointStorage, fetch_verified};

/// Suffix of canonical data files.
const DATA_FILE_SUFFIX: &str = ".sbdf";

/// A savepoint or full-snapshot (heap, reference) checkpoint whose data files are fetched into
/// a temporary directory and verified against `_metadata` (size, crc32, key groups).
pub struct SnapshotFiles {
    meta: SnapshotMetadata,
    /// Local copy of each instance's data file, by instance index.
    local: Vec<PathBuf>,
    /// Kept for the lifetime of the copies.
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for SnapshotFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotFiles")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

impl SnapshotFiles {
    /// Fetches and verifies every data file `meta` lists from `storage` (where its paths are
    /// relative to). An instance of a checkpoint without a canonical data file (RocksDB's
    /// incremental checkpoints: SST files) is restored into a temporary backend of its kind,
    /// its files verified as every restore verifies them, and written as the canonical data
    /// file its savepoint would hold: every snapshot then reads the same way.
    ///
    /// # Errors
    /// Storage errors; size and checksum errors naming the file; [`Error::KeyGroupsMismatch`]
    /// for a file of another instance; [`Error::Incompatible`] for a RocksDB checkpoint in a
    /// build without the `rocksdb` feature.
    pub fn open(storage: &dyn CheckpointStorage, meta: SnapshotMetadata) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("statebackend-processor-")
            .tempdir()
            .map_err(|e| Error::io(std::env::temp_dir(), e))?;
        let mut local = Vec::with_capacity(meta.instances.len());
        for (i, instance) in meta.instances.iter().enumerate() {
            let path = dir.path().join(format!("{i}{DATA_FILE_SUFFIX}"));
            match instance.files.as_slice() {
                [entry] if entry.local_name.ends_with(DATA_FILE_SUFFIX) => {
                    fetch_verified(storage, entry, &path)?;
                    DataFileReader::open(&path, entry.path.as_ref())?.check_instance(instance)?;
                }
                _ => write_canonical(storage, &meta, instance, &path)?,
            }
            local.push(path);
        }
        Ok(Self {
            meta,
            local,
            _dir: dir,
        })
    }

    /// The snapshot's metadata.
    pub fn meta(&self) -> &SnapshotMetadata {
        &self.meta
    }

    /// The instances of `operator`, in key-group order.
    ///
    /// # Errors
    /// [`Error::OperatorNotFound`].
    pub fn instances(&self, operator: &str) -> Result<Vec<(usize, &InstanceMetadata)>> {
        let mut found: Vec<(usize, &InstanceMetadata)> = self
            .meta
            .instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.operator == operator)
            .collect();
        if found.is_empty() {
            // The metadata's own lookup names what the snapshot holds.
            self.meta.for_operator(operator)?;
        }
        found.sort_by_key(|(_, i)| i.key_groups.start());
        Ok(found)
    }

    /// The local copy of instance `index`'s data file, opened.
    ///
    /// # Errors
    /// I/O and format errors.
    pub fn reader(&self, index: usize) -> Result<DataFileReader<File>> {
        let entry = &self.meta.instances[index].files[0];
        DataFileReader::open(&self.local[index], entry.path.as_ref())
    }

    /// The local copy of instance `index`'s data file.
    pub(crate) fn local_file(&self, index: usize) -> &std::path::Path {
        &self.local[index]
    }

    /// The states of `operator`, united over its instances, sorted by name.
    ///
    /// # Errors
    /// [`Error::OperatorNotFound`]; [`Error::StateMismatch`] if two instances record one state
    /// differently.
    pub fn states(&self, operator: &str) -> Result<Vec<StateInfo>> {
        let instances = self.instances(operator)?;
        unite_states(instances.iter().map(|(_, i)| i.states.as_slice()))
    }

    /// The rows of `operator`'s state `state` in `key_group` (empty if none), in row-key order.
    ///
    /// # Errors
    /// Format errors naming the file.
    pub fn rows(
        &self,
        operator: &str,
        state: &str,
        key_group: KeyGroup,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut rows = Vec::new();
        for (index, instance) in self.instances(operator)? {
            if !instance.key_groups.contains(key_group) {
                continue;
            }
            let mut reader = self.reader(index)?;
            let Some(wanted) = reader.header().states.iter().position(|s| s.name == state) else {
                continue;
            };
            reader.read_key_group(key_group, &mut |s, key, value| {
                if s as usize == wanted {
                    rows.push((key.to_vec(), value.to_vec()));
                }
                Ok(())
            })?;
        }
        Ok(rows)
    }
}

/// Restores checkpoint instance `instance` of `meta` into a temporary backend of its kind and
/// writes its state as a canonical data file at `path`.
fn write_canonical(
    storage: &dyn CheckpointStorage,
    meta: &SnapshotMetadata,
    instance: &InstanceMetadata,
    path: &std::path::Path,
) -> Result<()> {
    let mut config = BackendConfig::heap(instance.max_parallelism, instance.key_groups);
    config.kind = instance.backend;
    let mut backend = restore_instance(
        storage,
        &meta.for_operator(&instance.operator)?,
        &config,
        RestoreMode::NoClaim,
    )?;
    write_data_file(backend.row_view()?.as_ref(), path)?;
    Ok(())
}

/// Turns a row of a source state into the row written, or drops it (`None`).
pub type RowFn = Arc<dyn Fn(&[u8], &[u8]) -> Result<Option<Vec<u8>>> + Send + Sync>;

/// One state of a [`SourceView`]: what it is written as, which source state it reads, and how
/// each row changes.
#[derive(Clone)]
pub(crate) struct SourceState {
    /// The state as the new file records it (a rename changes the name).
    pub(crate) info: StateInfo,
    /// The name it has in the source.
    pub(crate) source: String,
    /// How rows change, if they do.
    pub(crate) rows: Option<RowFn>,
}

/// The rows of key groups `range` of some source data files (disjoint key groups, one
/// operator's instances), states renamed, dropped or changed per [`SourceState`]: the view a
/// rewritten or rescaled savepoint instance is written from.
///
/// The writer asks for one (key group, state) at a time, from several threads; each key group
/// is read from its file once, all its states together, and held until its last state is
/// taken, so memory stays within the key groups being encoded.
pub(crate) struct SourceView {
    max_parallelism: u32,
    range: KeyGroupRange,
    states: Vec<StateInfo>,
    plan: Vec<SourceState>,
    /// Source files whose key groups overlap `range`, with their key groups.
    readers: Vec<(KeyGroupRange, Mutex<DataFileReader<File>>)>,
    /// Key groups read and not yet fully taken: rows per output state.
    pending: Mutex<HashMap<KeyGroup, Vec<Option<Vec<(Vec<u8>, Vec<u8>)>>>>>,
}

impl SourceView {
    /// A view of `range` over `files`' instances `sources`, writing `plan` (sorted by name).
    pub(crate) fn new(
        files: &SnapshotFiles,
        sources: &[(usize, &InstanceMetadata)],
        max_parallelism: u32,
        range: KeyGroupRange,
        mut plan: Vec<SourceState>,
    ) -> Result<Self> {
        plan.sort_by(|a, b| a.info.name.cmp(&b.info.name));
        let readers = sources
            .iter()
            .filter(|(_, i)| !i.key_groups.intersect(&range).is_empty())
            .map(|&(index, i)| Ok((i.key_groups, Mutex::new(files.reader(index)?))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            max_parallelism,
            range,
            states: plan.iter().map(|s| s.info.clone()).collect(),
            plan,
            readers,
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// Reads `key_group` from its file: rows per output state.
    fn read_group(&self, key_group: KeyGroup) -> Result<Vec<Option<Vec<(Vec<u8>, Vec<u8>)>>>> {
        let mut out: Vec<Option<Vec<(Vec<u8>, Vec<u8>)>>> = vec![Some(Vec::new()); self.plan.len()];
        let Some((_, reader)) = self.readers.iter().find(|(r, _)| r.contains(key_group)) else {
            return Ok(out);
        };
        let mut reader = reader.lock().unwrap_or_else(|e| e.into_inner());
        // Source state index → output state index.
        let targets: Vec<Option<usize>> = reader
            .header()
            .states
            .iter()
            .map(|s| self.plan.iter().position(|p| p.source == s.name))
            .collect();
        reader.read_key_group(key_group, &mut |state, key, value| {
            let Some(target) = targets.get(state as usize).copied().flatten() else {
                return Ok(());
            };
            let row = match &self.plan[target].rows {
                None => Some(value.to_vec()),
                Some(change) => change(key, value)?,
            };
            if let (Some(row), Some(rows)) = (row, out[target].as_mut()) {
                rows.push((key.to_vec(), row));
            }
            Ok(())
        })?;
        Ok(out)
    }
}

impl RowView for SourceView {
    fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }

    fn key_groups(&self) -> KeyGroupRange {
        self.range
    }

    fn states(&self) -> &[StateInfo] {
        &self.states
    }

    fn rows(&self, key_group: KeyGroup, state: usize, sink: &mut RowSink<'_>) -> Result<()> {
        let taken = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let mut group = match pending.remove(&key_group) {
                Some(group) => group,
                None => {
                    drop(pending);
                    let group = self.read_group(key_group)?;
                    pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                    group
                }
            };
            let taken = group
                .get_mut(state)
                .and_then(Option::take)
                .unwrap_or_default();
            if group.iter().any(Option::is_some) {
                pending.insert(key_group, group);
            }
            taken
        };
        for (key, value) in &taken {
            sink(key, value)?;
        }
        Ok(())
    }

    fn ttl_instant(&self) -> TtlInstant {
        // Rows are copied as the source holds them: nothing is judged expired here.
        TtlInstant {
            processing: 0,
            event: 0,
        }
    }
}
