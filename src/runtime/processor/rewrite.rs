//! Rewriting a savepoint into a new one, offline: drop or rename states and operators, change
//! an operator's instance count, change a state's rows with a function ([`SavepointRewrite`]).
//! The source is only read; the target is written whole and verified, or removed again.

use std::collections::BTreeMap;

use crate::backends::interface::PendingSavepoint;
use crate::model::error::{Error, Result};
use crate::model::format::metadata::{
    InstanceId, InstanceMetadata, METADATA_FILE, SnapshotMetadata,
};
use crate::model::key_group::KeyGroupRange;
use crate::model::state::StateInfo;
use crate::runtime::processor::source::{RowFn, SnapshotFiles, SourceState, SourceView};
use crate::runtime::savepoint::{read_savepoint, write_savepoint_metadata};
use crate::storage::{CheckpointStorage, StoragePath, fetch_verified};

/// What happens to one state.
#[derive(Clone)]
enum StateEdit {
    Drop,
    Rename(String),
    Rows(RowFn, Option<StateInfo>),
}

/// Edits of one operator.
#[derive(Clone, Default)]
struct OperatorEdits {
    drop: bool,
    rename: Option<String>,
    parallelism: Option<u32>,
    states: Vec<(String, StateEdit)>,
}

/// A rewrite of a savepoint into a new savepoint: a list of edits, checked against the source
/// before anything is written, then applied in one pass.
///
/// Operators untouched by the edits keep their data files byte for byte (copied); operators
/// whose states change or whose instance count changes get new data files from the savepoint
/// writer the backends use. Engine metadata is kept.
///
/// ```no_run
/// use statebackend::savepoint::processor::SavepointRewrite;
/// use statebackend::storage::LocalDirStorage;
/// let source = LocalDirStorage::new("savepoints/sp-1")?;
/// let target = LocalDirStorage::new("savepoints/sp-1-v2")?;
/// let report = SavepointRewrite::new()
///     .rename_state("", "counts", "visits")
///     .drop_state("", "debug-buffer")
///     .rescale("", 8)
///     .write(&source, &target)?;
/// println!("{report:?}");
/// # Ok::<(), statebackend::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct SavepointRewrite {
    operators: BTreeMap<String, OperatorEdits>,
}

impl std::fmt::Debug for SavepointRewrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavepointRewrite")
            .field("operators", &self.operators.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What a rewrite wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteReport {
    /// The new savepoint's metadata.
    pub meta: SnapshotMetadata,
    /// Data files copied unchanged.
    pub files_copied: usize,
    /// Data files written anew.
    pub files_written: usize,
    /// One line per edit applied, as tools print them.
    pub changes: Vec<String>,
}

impl SavepointRewrite {
    /// A rewrite that changes nothing yet (it would copy the savepoint).
    pub fn new() -> Self {
        Self::default()
    }

    fn operator(&mut self, operator: &str) -> &mut OperatorEdits {
        self.operators.entry(operator.to_owned()).or_default()
    }

    /// Drops state `state` of `operator`. Every state edit names the state as the source
    /// savepoint does, whatever other edits do to it.
    #[must_use]
    pub fn drop_state(mut self, operator: &str, state: &str) -> Self {
        self.operator(operator)
            .states
            .push((state.to_owned(), StateEdit::Drop));
        self
    }

    /// Renames state `from` of `operator` to `to`.
    #[must_use]
    pub fn rename_state(mut self, operator: &str, from: &str, to: &str) -> Self {
        self.operator(operator)
            .states
            .push((from.to_owned(), StateEdit::Rename(to.to_owned())));
        self
    }

    /// Passes every row of state `state` of `operator` through `rows` (row key suffix and
    /// value in, new value or `None` to drop the row out), recording the state as `info` if
    /// given: another schema version or value type name; its kind, key, namespace and user key
    /// types and its time to live must be the source's ([`Error::StateMismatch`] otherwise).
    /// [`crate::savepoint::processor::typed`] builds such functions from typed closures; the
    /// rows of a state with a time to live carry their timestamps (`savepoint-format.md` §3),
    /// which typed functions refuse to decode.
    #[must_use]
    pub fn change_rows(
        mut self,
        operator: &str,
        state: &str,
        rows: RowFn,
        info: Option<StateInfo>,
    ) -> Self {
        self.operator(operator)
            .states
            .push((state.to_owned(), StateEdit::Rows(rows, info)));
        self
    }

    /// Drops operator `operator` and all its state.
    #[must_use]
    pub fn drop_operator(mut self, operator: &str) -> Self {
        self.operator(operator).drop = true;
        self
    }

    /// Renames operator `from` to `to`.
    #[must_use]
    pub fn rename_operator(mut self, from: &str, to: &str) -> Self {
        self.operator(from).rename = Some(to.to_owned());
        self
    }

    /// Writes `operator` as `parallelism` instances (rescale offline): its key groups and
    /// operator state are handed out as a restore at that parallelism would.
    #[must_use]
    pub fn rescale(mut self, operator: &str, parallelism: u32) -> Self {
        self.operator(operator).parallelism = Some(parallelism);
        self
    }

    /// Reads the savepoint in `source`, writes the rewritten one into `target` (which must
    /// hold no files), and verifies it by reading back every file against its `_metadata`.
    /// On any failure every file written to `target` is removed again: a failed rewrite leaves
    /// no savepoint behind, and the source is never written.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] if `target` holds files; [`Error::OperatorNotFound`];
    /// [`Error::UnknownStateName`] for an edit of a state the operator does not have;
    /// [`Error::InvalidStateName`] or [`Error::StateMismatch`] for a rename onto a bad or taken
    /// name; [`Error::Incompatible`] for a rename onto a taken operator id; the source's format
    /// and checksum errors; what the row functions return; storage errors.
    pub fn write(
        &self,
        source: &dyn CheckpointStorage,
        target: &dyn CheckpointStorage,
    ) -> Result<RewriteReport> {
        if let Some(existing) = target.list(None)?.first() {
            return Err(Error::AlreadyExists {
                path: format!("{} (the target must hold no files)", existing.path),
            });
        }
        let meta = read_savepoint(source)?;
        let files = SnapshotFiles::open(source, meta)?;
        let plan = self.plan(&files)?;
        let mut written: Vec<StoragePath> = Vec::new();
        let result = write_plan(&files, &plan, target, &mut written)
            .and_then(|report| verify(target).map(|()| report));
        if result.is_err() {
            let _ = target.delete(&StoragePath::parse(METADATA_FILE)?);
            for path in &written {
                let _ = target.delete(path);
            }
        }
        result
    }

    /// Checks every edit against the source: the operators' plans, in operator order.
    fn plan(&self, files: &SnapshotFiles) -> Result<Vec<OperatorPlan>> {
        let operators = files.meta().operators();
        for name in self.operators.keys() {
            if !operators.iter().any(|o| o == name) {
                files.meta().for_operator(name)?;
            }
        }
        let mut plans = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for operator in operators {
            let edits = self.operators.get(operator).cloned().unwrap_or_default();
            let mut changes = Vec::new();
            if edits.drop {
                changes.push(format!("dropped operator {operator:?}"));
                plans.push(OperatorPlan {
                    source: operator.to_owned(),
                    name: None,
                    parallelism: None,
                    states: None,
                    changes,
                });
                continue;
            }
            let name = edits.rename.clone().unwrap_or_else(|| operator.to_owned());
            if names.contains(&name) {
                return Err(Error::Incompatible {
                    reason: format!(
                        "two operators would be called {name:?} (renaming {operator:?})"
                    ),
                });
            }
            names.push(name.clone());
            if name != operator {
                changes.push(format!("renamed operator {operator:?} to {name:?}"));
            }
            let states = if edits.states.is_empty() && edits.parallelism.is_none() {
                None
            } else {
                Some(state_plan(files, operator, &edits.states, &mut changes)?)
            };
            if let Some(p) = edits.parallelism {
                let before = files.instances(operator)?.len();
                changes.push(format!(
                    "rescaled operator {operator:?} from {before} to {p} instances"
                ));
            }
            plans.push(OperatorPlan {
                source: operator.to_owned(),
                name: Some(name),
                parallelism: edits.parallelism,
                states,
                changes,
            });
        }
        Ok(plans)
    }
}

/// What becomes of one source operator.
struct OperatorPlan {
    source: String,
    /// `None`: dropped.
    name: Option<String>,
    parallelism: Option<u32>,
    /// `None`: files copied unchanged.
    states: Option<Vec<SourceState>>,
    changes: Vec<String>,
}

/// The states `operator` is written with after `edits`.
fn state_plan(
    files: &SnapshotFiles,
    operator: &str,
    edits: &[(String, StateEdit)],
    changes: &mut Vec<String>,
) -> Result<Vec<SourceState>> {
    let mut plan: Vec<SourceState> = files
        .states(operator)?
        .into_iter()
        .map(|info| SourceState {
            source: info.name.clone(),
            info,
            rows: None,
        })
        .collect();
    for (state, edit) in edits {
        // Edits name states as the source does, whatever edits came before.
        let Some(at) = plan.iter().position(|s| &s.source == state) else {
            return Err(Error::UnknownStateName {
                state: state.clone(),
                operator: operator.to_owned(),
                found: plan.iter().map(|s| s.source.clone()).collect(),
            });
        };
        match edit {
            StateEdit::Drop => {
                plan.remove(at);
                changes.push(format!("dropped state {state:?} of operator {operator:?}"));
            }
            StateEdit::Rename(to) => {
                let mut renamed = plan[at].info.clone();
                renamed.name.clone_from(to);
                let others: Vec<StateInfo> = plan
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| i != at)
                    .map(|(_, s)| s.info.clone())
                    .collect();
                if crate::model::state::backend::find_registered(&others, &renamed)?.is_some()
                    || others.iter().any(|s| s.name == *to)
                {
                    return Err(Error::StateMismatch {
                        name: to.clone(),
                        registered: "an existing state of the operator".into(),
                        requested: format!("the new name of state {state:?}"),
                    });
                }
                plan[at].info = renamed;
                changes.push(format!(
                    "renamed state {state:?} of operator {operator:?} to {to:?}"
                ));
            }
            StateEdit::Rows(rows, info) => {
                if let Some(info) = info {
                    let mut info = info.clone();
                    info.name.clone_from(&plan[at].info.name);
                    let source = &plan[at].info;
                    // Another schema version or type names, nothing that changes how rows
                    // are laid out: the kind, keys, namespaces and time to live stay.
                    if info.kind != source.kind
                        || info.key_type != source.key_type
                        || info.namespace_type != source.namespace_type
                        || info.user_key_type != source.user_key_type
                        || info.ttl != source.ttl
                    {
                        return Err(Error::StateMismatch {
                            name: state.clone(),
                            registered: source.describe(),
                            requested: info.describe(),
                        });
                    }
                    plan[at].info = info;
                }
                plan[at].rows = Some(rows.clone());
                changes.push(format!(
                    "changed the rows of state {state:?} of operator {operator:?}"
                ));
            }
        }
    }
    Ok(plan)
}

/// Writes the planned savepoint into `target`, recording every path written in `written`.
fn write_plan(
    files: &SnapshotFiles,
    plans: &[OperatorPlan],
    target: &dyn CheckpointStorage,
    written: &mut Vec<StoragePath>,
) -> Result<RewriteReport> {
    let mut instances: Vec<InstanceMetadata> = Vec::new();
    let (mut files_copied, mut files_written) = (0, 0);
    let mut changes = Vec::new();
    for plan in plans {
        changes.extend(plan.changes.iter().cloned());
        let Some(name) = &plan.name else {
            continue;
        };
        let sources = files.instances(&plan.source)?;
        let Some(states) = &plan.states else {
            for &(index, instance) in &sources {
                let mut copy = instance.clone();
                copy.operator.clone_from(name);
                let entry = &copy.files[0];
                written.push(entry.path.clone());
                target.put_file(&entry.path, files.local_file(index))?;
                files_copied += 1;
                instances.push(copy);
            }
            continue;
        };
        let max_parallelism = sources[0].1.max_parallelism;
        let backend = sources[0].1.backend;
        let ranges: Vec<(
            KeyGroupRange,
            InstanceId,
            crate::model::state::operator::OperatorState,
        )> = match plan.parallelism {
            None => sources
                .iter()
                .map(|(_, i)| (i.key_groups, i.instance_id, i.operator_state.clone()))
                .collect(),
            Some(parallelism) => {
                let operator_meta = files.meta().for_operator(&plan.source)?;
                (0..parallelism.max(1))
                    .map(|index| {
                        let range =
                            KeyGroupRange::for_operator(max_parallelism, parallelism, index)?;
                        let state =
                            operator_meta.operator_state_for_instance(range, Some(parallelism));
                        Ok((range, InstanceId::random(), state))
                    })
                    .collect::<Result<_>>()?
            }
        };
        for (range, instance_id, operator_state) in ranges {
            let view = SourceView::new(files, &sources, max_parallelism, range, states.clone())?;
            written.push(StoragePath::parse(&format!("{}.sbdf", instance_id.hex()))?);
            let mut part =
                PendingSavepoint::from_view(Box::new(view), instance_id, backend, operator_state)
                    .write(target)?;
            part.operator.clone_from(name);
            files_written += 1;
            instances.push(part);
        }
    }
    let source = files.meta();
    let meta = write_savepoint_metadata(target, source.id, instances, source.engine.clone())?;
    Ok(RewriteReport {
        meta,
        files_copied,
        files_written,
        changes,
    })
}

/// Reads the written savepoint back: `_metadata`, then every file against its entry.
fn verify(target: &dyn CheckpointStorage) -> Result<()> {
    let meta = read_savepoint(target)?;
    let dir = tempfile::Builder::new()
        .prefix("statebackend-verify-")
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), e))?;
    for (i, instance) in meta.instances.iter().enumerate() {
        for entry in &instance.files {
            let local = dir.path().join(format!("{i}.sbdf"));
            fetch_verified(target, entry, &local)?;
            crate::model::format::data_file::DataFileReader::open(&local, entry.path.as_ref())?
                .check_instance(instance)?;
            let _ = std::fs::remove_file(&local);
        }
    }
    Ok(())
}
