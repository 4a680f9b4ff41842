//! Incremental checkpoints for backends that checkpoint through a [`RowView`] (the heap
//! backend): a checkpoint uploads the rows that changed since the last completed one, as a
//! chain of canonical data files, instead of the whole state.
//!
//! A chain is a base (`base-<id>.sbdf`, the whole state as a full snapshot writes it) and
//! deltas, each a data file of the rows written or changed since the chain's previous
//! checkpoint (`delta-<id>.sbdf`) and, if rows went away, one of their row keys with empty
//! values (`tombs-<id>.sbdf`). All are shared files of the instance (`shared/<instance>/`), so
//! the coordinator's retention keeps every file a retained checkpoint's chain lists, as it
//! keeps RocksDB's SST files. Specified in `docs/checkpoint-layout.md` §8.
//!
//! What changed is found in the asynchronous part, not on the write path: the frozen view is
//! encoded as for a full snapshot, and each row is compared with a digest of the last
//! completed checkpoint's rows (per state and key group: the row key and a 128-bit hash of the
//! value). No state access pays for the tracking. The digests of a checkpoint become the
//! comparison point only once it completes ([`Chains::confirm`]): a checkpoint that fails
//! leaves its changes to the next one.
//!
//! A chain is materialized (a new base) when it has [`ChainPolicy::max_deltas`] deltas or its
//! deltas add up to more than [`ChainPolicy::max_delta_ratio`] of the base: a restore then
//! reads at most the base plus that fraction again.

use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::{Arc, Mutex};

use crate::backends::full_snapshot::snapshot_dir;
use crate::backends::interface::{CheckpointedBackend, SnapshotUpload, UploadStats};
use crate::model::codec::{Codec, DefaultCodec};
use crate::model::error::{Error, Result};
use crate::model::format::data_file::DataFileReader;
use crate::model::format::layout::shared_path;
use crate::model::format::metadata::{FileEntry, InstanceMetadata};
use crate::model::format::path::StoragePath;
use crate::model::format::view::{
    RowEmit, RowSink, RowSource, RowView, live_rows, write_data_file,
};
use crate::model::key_group::{KeyGroup, KeyGroupRange};
use crate::model::state::StateInfo;
use crate::model::state::operator::OperatorState;
use crate::model::state::ttl::TtlInstant;
use crate::storage::CheckpointStorage;

/// Prefix of a chain's base file.
pub const BASE_PREFIX: &str = "base-";
/// Prefix of a delta's file of changed rows.
pub const DELTA_PREFIX: &str = "delta-";
/// Prefix of a delta's file of removed row keys.
pub const TOMBS_PREFIX: &str = "tombs-";

/// When a chain is materialized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChainPolicy {
    /// A chain with this many deltas gets a new base at the next checkpoint.
    pub max_deltas: usize,
    /// A chain whose deltas' bytes exceed this fraction of its base's gets a new base.
    pub max_delta_ratio: f64,
}

impl Default for ChainPolicy {
    /// At most 10 deltas, at most half the base's bytes: a restore reads at most 1.5× a full
    /// snapshot's bytes.
    fn default() -> Self {
        Self {
            max_deltas: 10,
            max_delta_ratio: 0.5,
        }
    }
}

/// Row key → 128-bit value hash, sorted by row key: one (state, key group) of a checkpoint.
type GroupDigest = Vec<(Box<[u8]>, u128)>;

/// The digests of one checkpoint's rows, by (state name, key group).
type Digests = HashMap<(String, KeyGroup), GroupDigest>;

/// A chain's files and sizes.
#[derive(Debug, Clone, Default)]
struct Chain {
    files: Vec<FileEntry>,
    base_bytes: u64,
    delta_bytes: u64,
    deltas: usize,
}

/// A chain and its digests, for a checkpoint.
struct Link {
    checkpoint_id: u64,
    chain: Chain,
    digests: Arc<Digests>,
}

#[derive(Default)]
struct ChainState {
    /// The last completed checkpoint's.
    confirmed: Option<Link>,
    /// Uploaded, not yet completed.
    pending: Vec<Link>,
}

/// A backend's incremental checkpoint state: the confirmed chain and the uploads awaiting
/// completion. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Chains {
    policy: ChainPolicy,
    state: Arc<Mutex<ChainState>>,
}

impl std::fmt::Debug for Chains {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chains")
            .field("policy", &self.policy)
            .finish()
    }
}

impl Chains {
    /// Incremental checkpoints under `policy`.
    pub fn new(policy: ChainPolicy) -> Self {
        Self {
            policy,
            state: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChainState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The synchronous part of checkpoint `checkpoint_id` of `backend`: its frozen view and the
    /// chain to extend.
    ///
    /// # Errors
    /// What [`CheckpointedBackend::row_view`] returns.
    pub fn snapshot<B: CheckpointedBackend>(
        &self,
        backend: &mut B,
        checkpoint_id: u64,
    ) -> Result<Box<dyn SnapshotUpload>> {
        let previous = self
            .lock()
            .confirmed
            .as_ref()
            .map(|l| (l.chain.clone(), Arc::clone(&l.digests)));
        let instance = InstanceMetadata {
            instance_id: backend.instance_id(),
            backend: backend.backend_kind(),
            codec: DefaultCodec::ID,
            max_parallelism: backend.assigner().max_parallelism(),
            key_groups: backend.key_group_range(),
            states: backend.states(),
            files: Vec::new(),
            operator_state: OperatorState::default(),
            operator: String::new(),
        };
        Ok(Box::new(ChainSnapshot {
            checkpoint_id,
            instance,
            view: backend.row_view()?,
            previous,
            chains: self.clone(),
        }))
    }

    /// Checkpoint `part` completed: its chain and digests become what the next checkpoint
    /// extends and compares with. A part of no upload of these chains (a full snapshot, or
    /// a restored instance's) is ignored.
    pub fn confirm(&self, part: &InstanceMetadata) {
        let mut state = self.lock();
        let paths: Vec<&StoragePath> = part.files.iter().map(|f| &f.path).collect();
        let Some(at) = state.pending.iter().position(|l| {
            l.chain.files.len() == paths.len()
                && l.chain.files.iter().zip(&paths).all(|(f, p)| &f.path == *p)
        }) else {
            return;
        };
        let link = state.pending.remove(at);
        let id = link.checkpoint_id;
        state.pending.retain(|l| l.checkpoint_id > id);
        state.confirmed = Some(link);
    }
}

/// 128 bits of hash of a row value: two SipHash-1-3 runs with different keys (the standard
/// library's, whose keys are fixed), so that a changed row goes unnoticed only if both
/// collide.
fn value_hash(value: &[u8]) -> u128 {
    let mut a = std::collections::hash_map::DefaultHasher::new();
    a.write(value);
    let mut b = std::collections::hash_map::DefaultHasher::new();
    b.write_u64(0x9E37_79B9_7F4A_7C15);
    b.write(value);
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

/// The view a chain's file is written from: the frozen rows, live ones only, each digested;
/// with a previous checkpoint's digests, only the rows that differ from it, and the keys that
/// went away collected as tombstones.
struct DiffView<'a> {
    inner: &'a dyn RowView,
    previous: Option<&'a Digests>,
    digests: Mutex<Digests>,
    tombstones: Mutex<HashMap<(usize, KeyGroup), Vec<Vec<u8>>>>,
}

impl DiffView<'_> {
    /// The live rows of `(key_group, state)`, as written from the view: expired ones left
    /// out, lists trimmed (what `write_data_file` does).
    fn live_rows(&self, key_group: KeyGroup, state: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut rows = Vec::new();
        live_rows(
            self.inner,
            self.inner.ttl_instant(),
            key_group,
            state,
            &mut |key, value| {
                rows.push((key.to_vec(), value.to_vec()));
                Ok(())
            },
        )?;
        Ok(rows)
    }
}

impl RowView for DiffView<'_> {
    fn max_parallelism(&self) -> u32 {
        self.inner.max_parallelism()
    }

    fn key_groups(&self) -> KeyGroupRange {
        self.inner.key_groups()
    }

    fn states(&self) -> &[StateInfo] {
        self.inner.states()
    }

    fn ttl_instant(&self) -> TtlInstant {
        self.inner.ttl_instant()
    }

    fn rows(&self, key_group: KeyGroup, state: usize, sink: &mut RowSink<'_>) -> Result<()> {
        let name = self.inner.states()[state].name.clone();
        let rows = self.live_rows(key_group, state)?;
        let digest: GroupDigest = rows
            .iter()
            .map(|(k, v)| (k.clone().into_boxed_slice(), value_hash(v)))
            .collect();
        match self.previous.map(|p| {
            p.get(&(name.clone(), key_group))
                .map_or(&[][..], Vec::as_slice)
        }) {
            None => {
                for (key, value) in &rows {
                    sink(key, value)?;
                }
            }
            Some(before) => {
                // Both sorted by row key: one merge finds the changed rows and the gone keys.
                let mut gone = Vec::new();
                let mut at = 0;
                for ((key, value), (_, hash)) in rows.iter().zip(&digest) {
                    while at < before.len() && *before[at].0 < **key {
                        gone.push(before[at].0.to_vec());
                        at += 1;
                    }
                    let same = at < before.len() && *before[at].0 == **key && before[at].1 == *hash;
                    if at < before.len() && *before[at].0 == **key {
                        at += 1;
                    }
                    if !same {
                        sink(key, value)?;
                    }
                }
                gone.extend(before[at..].iter().map(|(k, _)| k.to_vec()));
                if !gone.is_empty() {
                    self.tombstones
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert((state, key_group), gone);
                }
            }
        }
        if !digest.is_empty() {
            self.digests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((name, key_group), digest);
        }
        Ok(())
    }
}

/// The removed row keys of a delta, as rows with empty values.
struct TombView<'a> {
    inner: &'a dyn RowView,
    tombstones: HashMap<(usize, KeyGroup), Vec<Vec<u8>>>,
}

impl RowView for TombView<'_> {
    fn max_parallelism(&self) -> u32 {
        self.inner.max_parallelism()
    }

    fn key_groups(&self) -> KeyGroupRange {
        self.inner.key_groups()
    }

    fn states(&self) -> &[StateInfo] {
        self.inner.states()
    }

    fn ttl_instant(&self) -> TtlInstant {
        // Empty values are never judged expired (too short for a timestamp).
        self.inner.ttl_instant()
    }

    fn rows(&self, key_group: KeyGroup, state: usize, sink: &mut RowSink<'_>) -> Result<()> {
        if let Some(keys) = self.tombstones.get(&(state, key_group)) {
            for key in keys {
                sink(key, &[])?;
            }
        }
        Ok(())
    }
}

/// The asynchronous part: writes a base or a delta, uploads it, records the new chain as
/// pending.
struct ChainSnapshot {
    checkpoint_id: u64,
    instance: InstanceMetadata,
    view: Box<dyn RowView>,
    previous: Option<(Chain, Arc<Digests>)>,
    chains: Chains,
}

impl SnapshotUpload for ChainSnapshot {
    fn upload(
        self: Box<Self>,
        storage: &dyn CheckpointStorage,
    ) -> Result<(InstanceMetadata, UploadStats)> {
        let policy = self.chains.policy;
        let previous = self.previous.as_ref().filter(|(chain, _)| {
            chain.deltas < policy.max_deltas
                && (chain.delta_bytes as f64) <= chain.base_bytes as f64 * policy.max_delta_ratio
            // A state registered since the base is rows the base never had: fine; a
            // state's info changed (TTL, migration) rewrites all its rows: also a delta.
        });
        // The full snapshots' directories: swept when their process is gone.
        let dir = snapshot_dir()?;
        let diff = DiffView {
            inner: self.view.as_ref(),
            previous: previous.map(|(_, d)| d.as_ref()),
            digests: Mutex::default(),
            tombstones: Mutex::default(),
        };
        let id = self.checkpoint_id;
        let instance_id = self.instance.instance_id;
        let mut stats = UploadStats::default();
        let mut upload = |name: String, view: &dyn RowView| -> Result<FileEntry> {
            let local = dir.path().join(&name);
            let summary = write_data_file(view, &local)?;
            let path = shared_path(instance_id, &name)?;
            storage.put_file(&path, &local)?;
            stats.files_uploaded += 1;
            stats.bytes_uploaded += summary.size;
            Ok(FileEntry {
                path,
                local_name: name,
                size: summary.size,
                crc32: summary.crc32,
                shared: true,
            })
        };
        let chain = match previous {
            None => {
                let base = upload(format!("{BASE_PREFIX}{id}.sbdf"), &diff)?;
                Chain {
                    base_bytes: base.size,
                    files: vec![base],
                    delta_bytes: 0,
                    deltas: 0,
                }
            }
            Some((chain, _)) => {
                let mut chain = chain.clone();
                let delta = upload(format!("{DELTA_PREFIX}{id}.sbdf"), &diff)?;
                chain.delta_bytes += delta.size;
                chain.files.push(delta);
                let tombstones =
                    std::mem::take(&mut *diff.tombstones.lock().unwrap_or_else(|e| e.into_inner()));
                if !tombstones.is_empty() {
                    let tombs = upload(
                        format!("{TOMBS_PREFIX}{id}.sbdf"),
                        &TombView {
                            inner: self.view.as_ref(),
                            tombstones,
                        },
                    )?;
                    chain.delta_bytes += tombs.size;
                    chain.files.push(tombs);
                }
                chain.deltas += 1;
                chain
            }
        };
        let new_files = stats.files_uploaded as usize;
        for reused in &chain.files[..chain.files.len() - new_files] {
            stats.files_reused += 1;
            stats.bytes_reused += reused.size;
        }
        let digests = Arc::new(std::mem::take(
            &mut *diff.digests.lock().unwrap_or_else(|e| e.into_inner()),
        ));
        let mut instance = self.instance;
        instance.files.clone_from(&chain.files);
        self.chains.lock().pending.push(Link {
            checkpoint_id: id,
            chain,
            digests,
        });
        Ok((instance, stats))
    }
}

/// The role of a chain file, by its local name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainFile {
    /// The whole state.
    Base,
    /// Rows written since the previous link.
    Delta,
    /// Row keys removed since the previous link.
    Tombs,
}

impl ChainFile {
    /// The role of a file named `local_name`, if it is a chain's.
    pub fn of(local_name: &str) -> Option<Self> {
        if local_name.starts_with(BASE_PREFIX) {
            Some(ChainFile::Base)
        } else if local_name.starts_with(DELTA_PREFIX) {
            Some(ChainFile::Delta)
        } else if local_name.starts_with(TOMBS_PREFIX) {
            Some(ChainFile::Tombs)
        } else {
            None
        }
    }
}

/// Checks that `files` form a chain (a base, then deltas each optionally followed by its
/// tombstones) and returns their roles.
///
/// # Errors
/// [`Error::Corrupt`] naming the instance otherwise.
pub(crate) fn chain_roles(instance: &InstanceMetadata) -> Result<Vec<ChainFile>> {
    let corrupt = |why: &str| Error::corrupt(instance.instance_id.hex(), why.to_owned());
    let roles: Vec<ChainFile> = instance
        .files
        .iter()
        .map(|f| ChainFile::of(&f.local_name).ok_or_else(|| corrupt("a file of no chain role")))
        .collect::<Result<_>>()?;
    if roles.first() != Some(&ChainFile::Base) {
        return Err(corrupt("a chain must begin with its base"));
    }
    for (i, role) in roles.iter().enumerate().skip(1) {
        let ok = match role {
            ChainFile::Base => false,
            ChainFile::Delta => true,
            ChainFile::Tombs => roles[i - 1] == ChainFile::Delta,
        };
        if !ok {
            return Err(corrupt("chain files out of order"));
        }
    }
    Ok(roles)
}

/// The rows of some key groups of chains (one per source instance, their key groups disjoint):
/// per key group, the base's rows, then each delta's tombstones removed and rows written, in
/// order. States are united by name; a state's info is the newest file's that records it (a
/// restore may have changed its time to live or migrated it since the base).
pub(crate) struct ChainRows<R: std::io::Read + std::io::Seek> {
    chains: Vec<(KeyGroupRange, Vec<(ChainFile, DataFileReader<R>)>)>,
    range: KeyGroupRange,
    states: Vec<StateInfo>,
}

impl<R: std::io::Read + std::io::Seek> ChainRows<R> {
    /// The rows of `range` in `chains` (each a source instance's key groups and its chain's
    /// files, opened, in chain order).
    pub(crate) fn new(
        mut chains: Vec<(KeyGroupRange, Vec<(ChainFile, DataFileReader<R>)>)>,
        range: KeyGroupRange,
    ) -> Self {
        let mut states: Vec<StateInfo> = Vec::new();
        for (_, files) in &chains {
            for (_, reader) in files {
                for info in &reader.header().states {
                    match states.iter_mut().find(|s| s.name == info.name) {
                        // Later files are newer.
                        Some(existing) => *existing = info.clone(),
                        None => states.push(info.clone()),
                    }
                }
            }
        }
        states.sort_by(|a, b| a.name.cmp(&b.name));
        chains.sort_by_key(|(r, _)| r.start());
        Self {
            chains,
            range,
            states,
        }
    }
}

impl<R: std::io::Read + std::io::Seek> RowSource for ChainRows<R> {
    fn states(&self) -> &[StateInfo] {
        &self.states
    }

    fn emit_rows(&mut self, emit: &mut RowEmit<'_>) -> Result<()> {
        let states = &self.states;
        let index_of = |name: &str| states.iter().position(|s| s.name == name);
        for (owned, files) in &mut self.chains {
            for group in owned.intersect(&self.range).iter() {
                // (state index, row key) → value: sorted as the restore wants them.
                let mut rows: std::collections::BTreeMap<(usize, Vec<u8>), Vec<u8>> =
                    std::collections::BTreeMap::new();
                for (role, reader) in files.iter_mut() {
                    let map: Vec<Option<usize>> = reader
                        .header()
                        .states
                        .iter()
                        .map(|s| index_of(&s.name))
                        .collect();
                    let role = *role;
                    reader.read_key_group(group, &mut |state, key, value| {
                        let Some(Some(state)) = map.get(state as usize).copied() else {
                            return Ok(());
                        };
                        match role {
                            ChainFile::Base | ChainFile::Delta => {
                                rows.insert((state, key.to_vec()), value.to_vec());
                            }
                            ChainFile::Tombs => {
                                rows.remove(&(state, key.to_vec()));
                            }
                        }
                        Ok(())
                    })?;
                }
                for ((state, key), value) in &rows {
                    emit(group, *state, key, value)?;
                }
            }
        }
        Ok(())
    }
}
