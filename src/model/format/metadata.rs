//! The `_metadata` file of a checkpoint or savepoint: which backend instances it holds and
//! every file each one needs, with sizes and checksums. Specified byte by byte in
//! `docs/checkpoint-layout.md`.
//!
//! A checkpoint or savepoint exists exactly when its `_metadata` exists: it is written last,
//! atomically (temporary name, fsync, rename), after every file it lists.

use std::collections::BTreeMap;
use std::fmt;

use crate::model::codec::CodecId;
use crate::model::error::{Error, Result};
use crate::model::format::data_file::{
    any_extended, min_state_info_bytes, read_state_info, write_state_info,
};
use crate::model::format::path::StoragePath;
use crate::model::format::{ByteReader, ByteWriter, check_declared_length, check_trailing_crc};
use crate::model::key_group::{KeyGroupRange, MAX_MAX_PARALLELISM};
use crate::model::state::StateInfo;
use crate::model::state::backend::BackendKind;
use crate::model::state::operator::{OperatorState, OperatorStateEntry, OperatorStateMode};

/// Magic at the start of a `_metadata` file.
pub const METADATA_MAGIC: [u8; 4] = *b"SBMD";
/// The newest metadata format version this build writes and reads. Version 2 adds operator
/// state per instance and the engine's metadata; version 3 adds each state's time to live to
/// its StateInfo. A snapshot is written in the lowest version that holds it: one with neither
/// is version 1, byte for byte what earlier releases wrote and read.
pub const METADATA_VERSION: u16 = 3;
/// Name of the metadata file in a checkpoint or savepoint directory.
pub const METADATA_FILE: &str = "_metadata";

/// The largest `_metadata` any reader accepts (64 MiB); readers check the size before reading.
pub const MAX_METADATA_BYTES: usize = 64 << 20;

/// Puts the file a [`FileEntry`] names at a local path and verifies it against the entry (size
/// and crc32): how restores receive files, whatever storage they come from. One restore may
/// fetch up to [`concurrency`](FetchFile::concurrency) files at once, from several threads.
pub struct FetchFile<'a> {
    fetch: Box<dyn Fn(&FileEntry, &std::path::Path) -> Result<()> + Sync + 'a>,
    ranged: Option<Box<OpenRanged<'a>>>,
    concurrency: usize,
}

/// A stored file opened for random access, read in ranges.
pub trait RandomAccess: std::io::Read + std::io::Seek + Send {}

impl<T: std::io::Read + std::io::Seek + Send> RandomAccess for T {}

/// Opens the file of an entry for ranged reads.
type OpenRanged<'a> = dyn Fn(&FileEntry) -> Result<Box<dyn RandomAccess + 'a>> + Sync + 'a;

impl<'a> FetchFile<'a> {
    /// A fetcher running `fetch(entry, local)`, at most `concurrency` (at least 1) at once.
    pub fn new(
        concurrency: usize,
        fetch: impl Fn(&FileEntry, &std::path::Path) -> Result<()> + Sync + 'a,
    ) -> Self {
        Self {
            fetch: Box::new(fetch),
            ranged: None,
            concurrency: concurrency.max(1),
        }
    }

    /// Also offers ranged reads: `open(entry)` gives random access to the stored file
    /// (checked to have the entry's size), for a restore that needs only some key groups of a
    /// data file. Such a read checks each block's crc32, not the whole file's.
    #[must_use]
    pub fn with_ranged_reads(
        mut self,
        open: impl Fn(&FileEntry) -> Result<Box<dyn RandomAccess + 'a>> + Sync + 'a,
    ) -> Self {
        self.ranged = Some(Box::new(open));
        self
    }

    /// Random access to the file of `entry`, if this fetcher offers ranged reads.
    pub fn open_ranged(&self, entry: &FileEntry) -> Option<Result<Box<dyn RandomAccess + 'a>>> {
        self.ranged.as_ref().map(|open| open(entry))
    }

    /// Puts the file of `entry` at `local`, verified.
    ///
    /// # Errors
    /// The storage's errors; [`Error::SizeMismatch`] or [`Error::ChecksumMismatch`] for a file
    /// that is not the one the entry describes.
    pub fn fetch(&self, entry: &FileEntry, local: &std::path::Path) -> Result<()> {
        (self.fetch)(entry, local)
    }

    /// How many files may be fetched at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }
}

/// Whether a `_metadata` describes a checkpoint (owned by the library) or a savepoint (owned
/// by the user).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// Incremental (RocksDB) or full (heap) recovery snapshot; may reference `shared/` files.
    Checkpoint = 1,
    /// Canonical, self-contained snapshot.
    Savepoint = 2,
}

impl fmt::Display for SnapshotKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SnapshotKind::Checkpoint => "checkpoint",
            SnapshotKind::Savepoint => "savepoint",
        })
    }
}

/// A 128-bit id naming one backend instance's lineage; shared files are named under it, so
/// two histories never produce the same shared file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(pub [u8; 16]);

impl InstanceId {
    /// A new random id.
    pub fn random() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS per process; mixing in time and a counter gives
        // distinct ids for every call without another dependency.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut out = [0u8; 16];
        for (i, chunk) in out.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            h.write_usize(i);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
        InstanceId(out)
    }

    /// Lower-case hex, as used in storage paths.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// One file a backend instance needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Where the file is, relative to the checkpoint root (checkpoints) or the savepoint
    /// directory (savepoints).
    pub path: StoragePath,
    /// The file's name in the backend's working directory (one path component).
    pub local_name: String,
    /// Size in bytes.
    pub size: u64,
    /// crc32 of the whole file.
    pub crc32: u32,
    /// Whether the file is in the `shared/` area (referenced by several checkpoints) rather
    /// than private to this checkpoint.
    pub shared: bool,
}

/// What one backend instance contributed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceMetadata {
    /// The instance's lineage id.
    pub instance_id: InstanceId,
    /// The backend that wrote the files.
    pub backend: BackendKind,
    /// The codec of every key and value.
    pub codec: CodecId,
    /// The job's max parallelism.
    pub max_parallelism: u32,
    /// The key groups the instance owned.
    pub key_groups: KeyGroupRange,
    /// The registered states.
    pub states: Vec<StateInfo>,
    /// Every file needed to restore the instance.
    pub files: Vec<FileEntry>,
    /// The instance's operator (non-keyed) state, taken at the barrier.
    pub operator_state: OperatorState,
    /// The operator the instance belongs to (a stable id the engine chooses); empty for the one
    /// operator of a single-operator job. A snapshot's instances partition the key groups per
    /// operator, each operator with its own parallelism and max parallelism.
    pub operator: String,
}

impl InstanceMetadata {
    /// Total bytes of the instance's files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Checks that this metadata describes the backend instance identified by the arguments
    /// (its lineage id, backend, max parallelism and key groups): what a backend checks before
    /// taking a completed checkpoint's part as its own.
    ///
    /// # Errors
    /// [`Error::ForeignInstance`] naming both instances.
    pub fn check_belongs_to(
        &self,
        instance_id: InstanceId,
        backend: BackendKind,
        max_parallelism: u32,
        key_groups: KeyGroupRange,
    ) -> Result<()> {
        if self.instance_id == instance_id
            && self.backend == backend
            && self.max_parallelism == max_parallelism
            && self.key_groups == key_groups
        {
            return Ok(());
        }
        Err(Error::ForeignInstance {
            expected: format!(
                "{} ({backend}, key groups {key_groups} of {max_parallelism})",
                instance_id.hex()
            ),
            found: format!(
                "{} ({}, key groups {} of {})",
                self.instance_id.hex(),
                self.backend,
                self.key_groups,
                self.max_parallelism
            ),
        })
    }
}

/// The content of a `_metadata` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMetadata {
    /// Checkpoint or savepoint.
    pub kind: SnapshotKind,
    /// The checkpoint id (savepoints: the id of the checkpoint they were converted from, or 0).
    pub id: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The backend instances, ordered by key-group start.
    pub instances: Vec<InstanceMetadata>,
    /// What the engine chose to keep with the snapshot (job id, watermarks, source positions
    /// that are not operator state), by key; returned on restore as written.
    pub engine: BTreeMap<String, Vec<u8>>,
}

impl SnapshotMetadata {
    /// Total bytes of every file of every instance.
    pub fn total_bytes(&self) -> u64 {
        self.instances
            .iter()
            .map(InstanceMetadata::total_bytes)
            .sum()
    }

    /// Every file entry of every instance.
    pub fn files(&self) -> impl Iterator<Item = &FileEntry> {
        self.instances.iter().flat_map(|i| i.files.iter())
    }

    /// Checks that every instance was written for `max_parallelism`: key groups are only
    /// meaningful within one max parallelism, so a restore with another is refused.
    ///
    /// # Errors
    /// [`Error::Incompatible`] naming both values.
    pub fn check_max_parallelism(&self, max_parallelism: u32) -> Result<()> {
        match self
            .instances
            .iter()
            .find(|i| i.max_parallelism != max_parallelism)
        {
            Some(i) => Err(Error::Incompatible {
                reason: format!(
                    "{} {} was written for max parallelism {}, restoring with {max_parallelism}",
                    self.kind, self.id, i.max_parallelism
                ),
            }),
            None => Ok(()),
        }
    }

    /// The operators of the snapshot, in order (a single-operator job's is the empty id).
    pub fn operators(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.instances.iter().map(|i| i.operator.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The snapshot restricted to operator `id`: what every restore of that operator's
    /// instances takes. A restore given a snapshot of several operators refuses it.
    ///
    /// # Errors
    /// [`Error::OperatorNotFound`] if the snapshot has no instance of operator `id`.
    pub fn for_operator(&self, id: &str) -> Result<SnapshotMetadata> {
        let instances: Vec<InstanceMetadata> = self
            .instances
            .iter()
            .filter(|i| i.operator == id)
            .cloned()
            .collect();
        if instances.is_empty() {
            return Err(Error::OperatorNotFound {
                operator: id.to_owned(),
                found: self.operators().iter().map(|o| o.to_string()).collect(),
            });
        }
        Ok(SnapshotMetadata {
            instances,
            ..self.clone()
        })
    }

    /// Checks that a new job with `operators` can restore this snapshot: every operator of the
    /// snapshot must be one of them, unless `allow_non_restored` (Flink's
    /// `--allowNonRestoredState`) lets its state be dropped. Operators of the new job that the
    /// snapshot lacks start empty.
    ///
    /// # Errors
    /// [`Error::NonRestoredState`] naming the snapshot's operators that the job lacks.
    pub fn check_operators(&self, operators: &[&str], allow_non_restored: bool) -> Result<()> {
        let missing: Vec<String> = self
            .operators()
            .into_iter()
            .filter(|o| !operators.contains(o))
            .map(str::to_owned)
            .collect();
        if missing.is_empty() || allow_non_restored {
            Ok(())
        } else {
            Err(Error::NonRestoredState { operators: missing })
        }
    }

    /// [`Error::Incompatible`] if the snapshot holds more than one operator: a restore works on
    /// one operator's instances ([`SnapshotMetadata::for_operator`]).
    ///
    /// # Errors
    /// As described.
    pub fn check_single_operator(&self) -> Result<()> {
        let operators = self.operators();
        if operators.len() > 1 {
            return Err(Error::Incompatible {
                reason: format!(
                    "{} {} holds operators {operators:?}: restore each with for_operator",
                    self.kind, self.id
                ),
            });
        }
        Ok(())
    }

    /// The instances whose key groups overlap `range`, ordered by key group, after checking
    /// that together they hold every key group of `range` exactly once. Every restore path
    /// selects its sources through this check, so a snapshot missing an instance is an error,
    /// never a restore that returns fewer key groups.
    ///
    /// # Errors
    /// [`Error::KeyGroupCoverage`] naming the first key group that is missing or held twice.
    pub fn instances_covering(&self, range: KeyGroupRange) -> Result<Vec<&InstanceMetadata>> {
        let mut sources: Vec<&InstanceMetadata> = self
            .instances
            .iter()
            .filter(|i| !i.key_groups.intersect(&range).is_empty())
            .collect();
        sources.sort_by_key(|i| i.key_groups.start());
        let what = || format!("{} {}", self.kind, self.id);
        let mut next = range.start();
        for instance in &sources {
            let part = instance.key_groups.intersect(&range);
            if part.start() != next {
                return Err(Error::KeyGroupCoverage {
                    what: what(),
                    reason: if part.start() > next {
                        format!("no instance holds key group {next} of the requested {range}")
                    } else {
                        format!("key group {} is held by two instances", part.start())
                    },
                });
            }
            next = part.end();
        }
        if next != range.end() {
            return Err(Error::KeyGroupCoverage {
                what: what(),
                reason: format!("no instance holds key group {next} of the requested {range}"),
            });
        }
        Ok(sources)
    }

    /// The operator state of a new instance owning `range`, from every instance's (not only
    /// the overlapping ones: union and split lists draw on all of them), by each state's mode
    /// ([`OperatorState::redistribute`]; the new instance count not known).
    pub fn operator_state_for(&self, range: KeyGroupRange) -> OperatorState {
        self.operator_state_for_instance(range, None)
    }

    /// As [`SnapshotMetadata::operator_state_for`], for an instance of an operator that runs
    /// `parallelism` instances, if known ([`OperatorState::redistribute_at`]).
    pub fn operator_state_for_instance(
        &self,
        range: KeyGroupRange,
        parallelism: Option<u32>,
    ) -> OperatorState {
        let parts: Vec<(KeyGroupRange, &OperatorState)> = self
            .instances
            .iter()
            .map(|i| (i.key_groups, &i.operator_state))
            .collect();
        let max_parallelism = self.instances.first().map_or(0, |i| i.max_parallelism);
        OperatorState::redistribute_at(&parts, range, max_parallelism, parallelism)
    }

    /// Serializes to the `_metadata` byte format.
    pub fn encode(&self) -> Vec<u8> {
        let version = if any_extended(self.instances.iter().flat_map(|i| i.states.iter())) {
            3
        } else if self.engine.is_empty()
            && self
                .instances
                .iter()
                .all(|i| i.operator_state.entries().is_empty() && i.operator.is_empty())
        {
            1
        } else {
            2
        };
        let mut body = ByteWriter::new();
        body.u8(self.kind as u8)
            .u64(self.id)
            .u64(self.created_ms)
            .u32(self.instances.len() as u32);
        for inst in &self.instances {
            body.raw(&inst.instance_id.0)
                .u8(inst.backend.code())
                .u8(inst.codec.0)
                .u32(inst.max_parallelism)
                .u32(inst.key_groups.start())
                .u32(inst.key_groups.end())
                .u32(inst.states.len() as u32);
            for s in &inst.states {
                write_state_info(&mut body, s, version >= 3);
            }
            body.u32(inst.files.len() as u32);
            for f in &inst.files {
                body.str(f.path.as_str())
                    .str(&f.local_name)
                    .u64(f.size)
                    .u32(f.crc32)
                    .u8(u8::from(f.shared));
            }
            if version >= 2 {
                write_operator_state(&mut body, &inst.operator_state);
                body.str(&inst.operator);
            }
        }
        if version >= 2 {
            body.u32(self.engine.len() as u32);
            for (key, value) in &self.engine {
                body.str(key).bytes(value);
            }
        }
        let mut w = ByteWriter::new();
        w.raw(&METADATA_MAGIC)
            .u16(version)
            .bytes(&body.into_inner())
            .crc_of_all();
        w.into_inner()
    }

    /// Parses `_metadata` bytes; `file` names the file in errors. Every path is validated.
    ///
    /// # Errors
    /// [`Error::UnsupportedFormat`] for another magic or version, [`Error::ChecksumMismatch`],
    /// [`Error::Corrupt`] for structural damage, [`Error::InvalidPath`] for unsafe paths.
    pub fn decode(data: &[u8], file: &str) -> Result<Self> {
        if data.len() > MAX_METADATA_BYTES {
            return Err(Error::corrupt(
                file,
                format!("{} bytes is too large for metadata", data.len()),
            ));
        }
        if data.len() >= 6 && data[..4] != METADATA_MAGIC {
            return Err(Error::UnsupportedFormat {
                file: file.to_owned(),
                found: format!("magic {:02x?}", &data[..4]),
                supported: format!("magic {METADATA_MAGIC:02x?}"),
            });
        }
        let mut version = METADATA_VERSION;
        if data.len() >= 6 {
            version = u16::from_le_bytes([data[4], data[5]]);
            if !(1..=METADATA_VERSION).contains(&version) {
                return Err(Error::UnsupportedFormat {
                    file: file.to_owned(),
                    found: format!("metadata version {version}"),
                    supported: format!("metadata versions 1 to {METADATA_VERSION}"),
                });
            }
        }
        check_declared_length(data, 10, 6, file)?;
        let all = check_trailing_crc(data, file)?;
        let mut r = ByteReader::new(all, file);
        r.take(6, "magic and version")?;
        let body = r.bytes(MAX_METADATA_BYTES, "metadata body")?;
        r.expect_end("the metadata body")?;
        let mut r = ByteReader::new(body, file);
        let kind = match r.u8("kind")? {
            1 => SnapshotKind::Checkpoint,
            2 => SnapshotKind::Savepoint,
            k => return Err(r.corrupt(format!("unknown snapshot kind {k}"))),
        };
        let id = r.u64("checkpoint id")?;
        let created_ms = r.u64("creation time")?;
        // The smallest instance: 38 bytes in version 1; versions 2 and 3 add the operator
        // state count and the operator id's length.
        let n = r.count(if version >= 2 { 46 } else { 38 }, "instances")?;
        let mut instances = r.vec_for(n);
        for _ in 0..n {
            instances.push(read_instance(&mut r, version)?);
        }
        let mut engine = BTreeMap::new();
        if version >= 2 {
            let entries = r.count(9, "engine metadata entries")?;
            for _ in 0..entries {
                let key = r.str(255, "engine metadata key")?;
                if key.is_empty() {
                    return Err(r.corrupt("an empty engine metadata key"));
                }
                let value = r
                    .bytes(MAX_METADATA_BYTES, "engine metadata value")?
                    .to_vec();
                // Ascending, each once: the one encoding of a map.
                if engine
                    .last_key_value()
                    .is_some_and(|(last, _)| *last >= key)
                {
                    return Err(r.corrupt("engine metadata keys out of order or repeated"));
                }
                engine.insert(key, value);
            }
            if version == 2
                && engine.is_empty()
                && instances
                    .iter()
                    .all(|i| i.operator_state.entries().is_empty() && i.operator.is_empty())
            {
                return Err(r.corrupt(
                    "version 2 without operator state or engine metadata (written as version 1)",
                ));
            }
        }
        if version >= 3 && !any_extended(instances.iter().flat_map(|i| i.states.iter())) {
            return Err(r.corrupt(
                "version 3 without a state with a TTL or a schema version (written as version 2)",
            ));
        }
        r.expect_end("the instances")?;
        Ok(SnapshotMetadata {
            kind,
            id,
            created_ms,
            instances,
            engine,
        })
    }
}

/// Checks that `instances` (sorted by key-group start) partition `[0, max_parallelism)` under
/// one max parallelism: what completing a checkpoint or savepoint requires, so that every
/// completed snapshot can restore any key group of the job. `what` names the snapshot in the
/// error.
///
/// # Errors
/// [`Error::KeyGroupCoverage`] for no instances, mixed max parallelisms, a gap or an overlap.
pub fn check_partition(instances: &[InstanceMetadata], what: &str) -> Result<()> {
    if instances.is_empty() {
        return Err(Error::KeyGroupCoverage {
            what: what.to_owned(),
            reason: "no instances".into(),
        });
    }
    let mut operators: BTreeMap<&str, Vec<&InstanceMetadata>> = BTreeMap::new();
    for instance in instances {
        operators
            .entry(instance.operator.as_str())
            .or_default()
            .push(instance);
    }
    for (operator, mut group) in operators {
        group.sort_by_key(|i| i.key_groups.start());
        let what = if operator.is_empty() {
            what.to_owned()
        } else {
            format!("{what}, operator {operator:?}")
        };
        check_operator_partition(&group, &what)?;
    }
    Ok(())
}

/// [`check_partition`] for the instances of one operator, sorted by key-group start.
fn check_operator_partition(instances: &[&InstanceMetadata], what: &str) -> Result<()> {
    let coverage = |reason: String| Error::KeyGroupCoverage {
        what: what.to_owned(),
        reason,
    };
    let Some(first) = instances.first() else {
        return Err(coverage("no instances".into()));
    };
    let max_parallelism = first.max_parallelism;
    let mut next = 0;
    for instance in instances {
        if instance.max_parallelism != max_parallelism {
            return Err(coverage(format!(
                "instances of max parallelism {max_parallelism} and {}",
                instance.max_parallelism
            )));
        }
        let range = instance.key_groups;
        if range.start() > next {
            return Err(coverage(format!(
                "no instance holds key groups [{next}, {}) of {max_parallelism}",
                range.start()
            )));
        }
        if range.start() < next {
            return Err(coverage(format!(
                "key group {} is held by two instances",
                range.start()
            )));
        }
        next = range.end();
    }
    if next != max_parallelism {
        return Err(coverage(format!(
            "no instance holds key groups [{next}, {max_parallelism}) of {max_parallelism}"
        )));
    }
    Ok(())
}

/// Writes an instance's operator state section (version 2).
fn write_operator_state(w: &mut ByteWriter, state: &OperatorState) {
    w.u32(state.entries().len() as u32);
    for (name, entry) in state.entries() {
        w.str(name)
            .u8(entry.mode.code())
            .str(&entry.type_name)
            .u32(entry.elements.len() as u32);
        for element in &entry.elements {
            w.bytes(element);
        }
    }
}

/// Reads an instance's operator state section (version 2).
fn read_operator_state(r: &mut ByteReader<'_>) -> Result<OperatorState> {
    let mut state = OperatorState::default();
    let n = r.count(14, "operator states")?;
    for _ in 0..n {
        let name = r.str(255, "operator state name")?;
        let in_order = state
            .entries()
            .last_key_value()
            .is_none_or(|(last, _)| *last < name);
        if name.is_empty() || !in_order {
            return Err(r.corrupt(format!(
                "operator state name {name:?} empty, out of order or repeated"
            )));
        }
        let code = r.u8("operator state mode")?;
        let mode = OperatorStateMode::from_code(code)
            .ok_or_else(|| r.corrupt(format!("unknown operator state mode {code}")))?;
        let type_name = r.str(65_536, "operator state type name")?;
        let count = r.count(4, "operator state elements")?;
        let mut elements = r.vec_for(count);
        for _ in 0..count {
            elements.push(
                r.bytes(MAX_METADATA_BYTES, "operator state element")?
                    .to_vec(),
            );
        }
        state.insert_entry(
            name,
            OperatorStateEntry {
                mode,
                type_name,
                elements,
            },
        );
    }
    Ok(state)
}

fn read_instance(r: &mut ByteReader<'_>, version: u16) -> Result<InstanceMetadata> {
    let mut id = [0u8; 16];
    id.copy_from_slice(r.take(16, "instance id")?);
    let backend_code = r.u8("backend kind")?;
    let backend = BackendKind::from_code(backend_code)
        .ok_or_else(|| r.corrupt(format!("unknown backend kind {backend_code}")))?;
    let codec = CodecId(r.u8("codec id")?);
    if codec.name().is_none() {
        return Err(r.corrupt(format!("{codec} is not known to this build")));
    }
    let max_parallelism = r.u32("max parallelism")?;
    let start = r.u32("key group start")?;
    let end = r.u32("key group end")?;
    if max_parallelism == 0
        || max_parallelism > MAX_MAX_PARALLELISM
        || start > end
        || end > max_parallelism
    {
        return Err(r.corrupt(format!(
            "key groups [{start}, {end}) of {max_parallelism} are invalid"
        )));
    }
    let key_groups = KeyGroupRange::new(start, end)?;
    let extended = version >= 3;
    let n_states = r.count(min_state_info_bytes(extended), "states")?;
    let mut states = r.vec_for(n_states);
    for _ in 0..n_states {
        states.push(read_state_info(r, extended)?);
    }
    let n_files = r.count(23, "files")?;
    let mut files = r.vec_for(n_files);
    for _ in 0..n_files {
        let path = StoragePath::parse(&r.str(1024, "file path")?)?;
        let local_name = r.str(255, "local file name")?;
        validate_local_name(&local_name)?;
        let size = r.u64("file size")?;
        let crc32 = r.u32("file crc32")?;
        let shared = match r.u8("file flags")? {
            0 => false,
            1 => true,
            f => return Err(r.corrupt(format!("unknown file flags {f}"))),
        };
        files.push(FileEntry {
            path,
            local_name,
            size,
            crc32,
            shared,
        });
    }
    let (operator_state, operator) = if version >= 2 {
        (read_operator_state(r)?, r.str(255, "operator id")?)
    } else {
        (OperatorState::default(), String::new())
    };
    Ok(InstanceMetadata {
        instance_id: InstanceId(id),
        backend,
        codec,
        max_parallelism,
        key_groups,
        states,
        files,
        operator_state,
        operator,
    })
}

/// A local file name from metadata must be one plain path component.
pub(crate) fn validate_local_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidPath {
            path: name.to_owned(),
            reason: "local file names must be one component of [A-Za-z0-9._-]",
        })
    }
}
