//! `statectl inspect PATH`: what one checkpoint or savepoint holds.

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::Serialize;

use crate::cli::snapshot::{LoadedSnapshot, Location, chain_rows, is_data_file, load};
use crate::cli::{CliResult, format_time_ms, human_bytes};
use crate::model::error::Result;
use crate::model::format::data_file::DataFileReader;
use crate::model::format::view::RowSource;
use crate::model::state::ttl::StateTtlConfig;
use crate::model::state::ttl::rows::{RowExpiry, row_expiry};
use crate::model::state::{OperatorStateMode, StateKind};
use crate::runtime::checkpoint::InstanceMetadata;

/// A key-group range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KeyGroups {
    /// First key group (inclusive).
    pub start: u32,
    /// End (exclusive).
    pub end: u32,
}

/// One registered state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateReport {
    /// The state name.
    pub name: String,
    /// `value`, `list`, `map`, `reducing` or `aggregating`.
    pub kind: &'static str,
    /// Type name of the keys.
    pub key_type: String,
    /// Type name of the namespaces.
    pub namespace_type: String,
    /// Type name of the map user keys (map states only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_key_type: Option<String>,
    /// Type name of the values (list elements, map values, accumulators).
    pub value_type: String,
    /// The schema version its descriptor declared, if not 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<u32>,
    /// The state's time to live (`ttl 3600000 ms, processing time, ...`), if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// With `--expired-at`: the rows (list elements, for a list state) of a state with a time
    /// to live that had expired at that time; `None` otherwise, or when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expired: Option<u64>,
    /// Rows of the state in the instance's data files (one per (key, namespace), one per map
    /// entry for map states); `None` (unknown) for RocksDB checkpoints or unreadable files.
    pub entries: Option<u64>,
}

/// One referenced file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileReport {
    /// Storage path (relative to the checkpoint root, or to the savepoint directory).
    pub path: String,
    /// Name in the backend's working directory.
    pub local_name: String,
    /// Size in bytes.
    pub size: u64,
    /// crc32 of the whole file.
    pub crc32: u32,
    /// Whether the file is in the shared area.
    pub shared: bool,
}

/// One operator (non-keyed) state of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperatorStateReport {
    /// The state name.
    pub name: String,
    /// `split-list`, `union-list` or `broadcast`.
    pub mode: &'static str,
    /// The element type's name.
    pub element_type: String,
    /// Number of elements (broadcast: entries).
    pub elements: usize,
}

/// One backend instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceReport {
    /// The operator the instance belongs to (omitted for a single-operator job).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub operator: String,
    /// The instance id (hex).
    pub instance_id: String,
    /// `heap` or `rocksdb`.
    pub backend: String,
    /// The codec of keys and values.
    pub codec: String,
    /// The job's max parallelism.
    pub max_parallelism: u32,
    /// The key groups the instance owned.
    pub key_groups: KeyGroups,
    /// The registered states, in registration order.
    pub states: Vec<StateReport>,
    /// The files it needs.
    pub files: Vec<FileReport>,
    /// Their total size.
    pub total_bytes: u64,
    /// Its operator state.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub operator_states: Vec<OperatorStateReport>,
}

/// What `inspect` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InspectReport {
    /// The directory holding `_metadata`.
    pub path: String,
    /// The `_metadata` format version.
    pub format_version: u16,
    /// `checkpoint` or `savepoint`.
    pub kind: String,
    /// The checkpoint id (savepoints: as recorded, usually 0).
    pub id: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
    /// The distinct codecs of the instances.
    pub codecs: Vec<String>,
    /// Total bytes of every file.
    pub total_bytes: u64,
    /// The instances, by key-group start.
    pub instances: Vec<InstanceReport>,
    /// The engine's metadata: keys and value sizes in bytes (the values are the engine's).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub engine_metadata: BTreeMap<String, usize>,
    /// Problems met while counting entries (the metadata itself was readable).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Rows per state name in the instance's data files; `Ok(None)` if it has other files
/// (RocksDB checkpoints).
/// Per state: (rows, expired rows or list elements at `expired_at` for states with a TTL).
type Counts = BTreeMap<String, (u64, Option<u64>)>;

fn count_rows(
    snapshot: &LoadedSnapshot,
    instance: &InstanceMetadata,
    expired_at: Option<u64>,
) -> Result<Option<Counts>> {
    if instance.files.is_empty() || !instance.files.iter().all(is_data_file) {
        return Ok(None);
    }
    if let Some(mut chain) = chain_rows(snapshot, instance, instance.key_groups)? {
        // An incremental chain: the rows a restore would hold.
        let states = chain.states().to_vec();
        let mut per_state = vec![(0u64, 0u64); states.len()];
        chain.emit_rows(&mut |_, state, _, value| {
            let info = &states[state];
            let counted = &mut per_state[state];
            counted.0 += 1;
            if let (Some(ttl), Some(at)) = (&info.ttl, expired_at) {
                counted.1 += expired_in(info.kind, ttl, at, value);
            }
            Ok(())
        })?;
        return Ok(Some(
            states
                .iter()
                .zip(per_state)
                .map(|(info, (rows, expired))| {
                    let expired = (info.ttl.is_some() && expired_at.is_some()).then_some(expired);
                    (info.name.clone(), (rows, expired))
                })
                .collect(),
        ));
    }
    let mut counts = BTreeMap::new();
    for entry in &instance.files {
        let (file, _) = snapshot.open_file(entry)?;
        let mut reader = DataFileReader::new(file, &snapshot.file_name(entry))?;
        let states = reader.header().states.clone();
        let mut per_state = vec![(0u64, 0u64); states.len()];
        reader.for_each_row(&mut |_, state, _, value| {
            let info = &states[state as usize];
            let counted = &mut per_state[state as usize];
            counted.0 += 1;
            if let (Some(ttl), Some(at)) = (&info.ttl, expired_at) {
                counted.1 += expired_in(info.kind, ttl, at, value);
            }
            Ok(())
        })?;
        for (info, (rows, expired)) in states.iter().zip(per_state) {
            let entry = counts.entry(info.name.clone()).or_insert((0, None));
            entry.0 += rows;
            if info.ttl.is_some() && expired_at.is_some() {
                entry.1 = Some(entry.1.unwrap_or(0) + expired);
            }
        }
    }
    Ok(Some(counts))
}

/// Rows (list elements) of one row of a TTL state expired at `at`.
fn expired_in(kind: StateKind, ttl: &StateTtlConfig, at: u64, value: &[u8]) -> u64 {
    match row_expiry(kind, ttl, at, value) {
        RowExpiry::Live => 0,
        RowExpiry::Expired if kind != StateKind::List => 1,
        RowExpiry::Expired => list_len(value),
        RowExpiry::Trimmed(live) => list_len(value) - list_len(&live),
    }
}

/// Elements of a well-formed list row.
fn list_len(mut row: &[u8]) -> u64 {
    let mut n = 0;
    while let Some((len, rest)) = row.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        row = rest.get(len..).unwrap_or_default();
        n += 1;
    }
    n
}

/// Reads the checkpoint or savepoint in `path` (the directory holding `_metadata`) and, for
/// data files, counts the rows of every state; with `expired_at` (a time on the states' clocks:
/// milliseconds, or a watermark for event-time states) also those of states with a time to
/// live that had expired then.
///
/// # Errors
/// I/O and format errors of the `_metadata`. Unreadable data files only leave their counts
/// unknown, with a warning.
pub fn inspect(path: &Location, expired_at: Option<u64>) -> CliResult<InspectReport> {
    let snapshot = load(path)?;
    let meta = &snapshot.meta;
    let mut warnings = Vec::new();
    let mut codecs: Vec<String> = Vec::new();
    let mut instances = Vec::new();
    for instance in &meta.instances {
        let codec = instance.codec.to_string();
        if !codecs.contains(&codec) {
            codecs.push(codec.clone());
        }
        let counts = count_rows(&snapshot, instance, expired_at).unwrap_or_else(|e| {
            warnings.push(format!(
                "cannot count the entries of instance {}: {e}",
                instance.instance_id
            ));
            None
        });
        let states = instance
            .states
            .iter()
            .map(|s| StateReport {
                name: s.name.clone(),
                kind: s.kind.name(),
                key_type: s.key_type.clone(),
                namespace_type: s.namespace_type.clone(),
                user_key_type: (s.kind == StateKind::Map).then(|| s.user_key_type.clone()),
                value_type: s.value_type.clone(),
                schema_version: (s.schema_version != 0).then_some(s.schema_version),
                ttl: s.ttl.map(|t| t.describe()),
                expired: counts
                    .as_ref()
                    .and_then(|c| c.get(&s.name).and_then(|(_, expired)| *expired)),
                entries: counts
                    .as_ref()
                    .map(|c| c.get(&s.name).map_or(0, |(rows, _)| *rows)),
            })
            .collect();
        let files = instance
            .files
            .iter()
            .map(|f| FileReport {
                path: f.path.to_string(),
                local_name: f.local_name.clone(),
                size: f.size,
                crc32: f.crc32,
                shared: f.shared,
            })
            .collect();
        let operator_states = instance
            .operator_state
            .entries()
            .iter()
            .map(|(name, entry)| OperatorStateReport {
                name: name.clone(),
                mode: match entry.mode {
                    OperatorStateMode::SplitList => "split-list",
                    OperatorStateMode::UnionList => "union-list",
                    OperatorStateMode::Broadcast => "broadcast",
                },
                element_type: entry.type_name.clone(),
                elements: entry.elements.len(),
            })
            .collect();
        instances.push(InstanceReport {
            operator: instance.operator.clone(),
            operator_states,
            instance_id: instance.instance_id.hex(),
            backend: instance.backend.to_string(),
            codec,
            max_parallelism: instance.max_parallelism,
            key_groups: KeyGroups {
                start: instance.key_groups.start(),
                end: instance.key_groups.end(),
            },
            states,
            files,
            total_bytes: instance.total_bytes(),
        });
    }
    Ok(InspectReport {
        path: path.display(),
        format_version: snapshot.format_version,
        kind: meta.kind.to_string(),
        id: meta.id,
        created_ms: meta.created_ms,
        created: format_time_ms(meta.created_ms),
        codecs,
        total_bytes: meta.total_bytes(),
        instances,
        engine_metadata: meta
            .engine
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect(),
        warnings,
    })
}

impl InspectReport {
    /// Writes the report for people (without the warnings, which belong on stderr).
    ///
    /// # Errors
    /// Write errors.
    pub fn write_human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{} {}", self.kind, self.path)?;
        writeln!(out, "  format version: {}", self.format_version)?;
        writeln!(out, "  id:             {}", self.id)?;
        writeln!(
            out,
            "  created:        {} ({} ms)",
            self.created, self.created_ms
        )?;
        writeln!(out, "  codec:          {}", self.codecs.join(", "))?;
        writeln!(
            out,
            "  total:          {} ({} bytes) in {} instance{}",
            human_bytes(self.total_bytes),
            self.total_bytes,
            self.instances.len(),
            crate::cli::plural(self.instances.len() as u64)
        )?;
        for (n, i) in self.instances.iter().enumerate() {
            writeln!(out)?;
            writeln!(out, "instance {n}: {}", i.instance_id)?;
            if !i.operator.is_empty() {
                writeln!(out, "  operator:        {}", i.operator)?;
            }
            writeln!(out, "  backend:         {}", i.backend)?;
            writeln!(out, "  codec:           {}", i.codec)?;
            writeln!(
                out,
                "  key groups:      [{}, {}) of max parallelism {}",
                i.key_groups.start, i.key_groups.end, i.max_parallelism
            )?;
            writeln!(out, "  states ({}):", i.states.len())?;
            for s in &i.states {
                let entries = s
                    .entries
                    .map_or_else(|| "unknown".to_owned(), |n| n.to_string());
                writeln!(out, "    {} ({}): entries {entries}", s.name, s.kind)?;
                writeln!(out, "      key:       {}", s.key_type)?;
                writeln!(out, "      namespace: {}", s.namespace_type)?;
                if let Some(uk) = &s.user_key_type {
                    writeln!(out, "      user key:  {uk}")?;
                }
                writeln!(out, "      value:     {}", s.value_type)?;
                if let Some(version) = s.schema_version {
                    writeln!(out, "      schema:    version {version}")?;
                }
                if let Some(ttl) = &s.ttl {
                    writeln!(out, "      ttl:       {ttl}")?;
                }
                if let Some(expired) = s.expired {
                    writeln!(out, "      expired:   {expired}")?;
                }
            }
            writeln!(
                out,
                "  files ({}, {}):",
                i.files.len(),
                human_bytes(i.total_bytes)
            )?;
            let width = i.files.iter().map(|f| f.path.len()).max().unwrap_or(0);
            for f in &i.files {
                writeln!(
                    out,
                    "    {:<width$}  {:>12} bytes  crc32 {:08x}  {}",
                    f.path,
                    f.size,
                    f.crc32,
                    if f.shared { "shared" } else { "private" }
                )?;
            }
            if !i.operator_states.is_empty() {
                writeln!(out, "  operator states ({}):", i.operator_states.len())?;
                for s in &i.operator_states {
                    writeln!(
                        out,
                        "    {} ({}, {}): {} element{}",
                        s.name,
                        s.mode,
                        s.element_type,
                        s.elements,
                        crate::cli::plural(s.elements as u64)
                    )?;
                }
            }
        }
        if !self.engine_metadata.is_empty() {
            writeln!(out)?;
            writeln!(out, "engine metadata:")?;
            for (key, size) in &self.engine_metadata {
                writeln!(out, "  {key}: {size} bytes")?;
            }
        }
        Ok(())
    }
}
