//! [`Job`]: one worker's view of a checkpointed timely job, agreed with the other workers at
//! start.
//!
//! Every worker calls [`Job::start`] before building its dataflow. Worker 0 decides what the
//! job starts from (nothing, the root's latest restorable checkpoint, or a savepoint), opens
//! the root's [`CheckpointCoordinator`] (which fences a coordinator of an earlier run and
//! collects its leftovers) and chooses the id of the run's first checkpoint; a small dataflow
//! broadcasts the decision, so every worker restores from the same snapshot and numbers
//! checkpoints the same way, whatever the worker count now is.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use ::timely::dataflow::ProbeHandle;
use ::timely::dataflow::channels::pact::Pipeline;
use ::timely::dataflow::operators::vec::{Broadcast, Input};
use ::timely::dataflow::operators::{Operator, Probe};
use ::timely::worker::Worker;
use serde::{Deserialize, Serialize};

use crate::backends::any::AnyBackend;
use crate::backends::config::BackendConfig;
use crate::backends::interface::CheckpointedBackend;
use crate::engines::timely::committer::EPOCH_KEY;
use crate::engines::timely::routing::KeyGroupRouting;
use crate::engines::timely::source::PositionLog;
use crate::model::error::{Error, Result};
use crate::model::format::layout::metadata_path;
use crate::model::format::metadata::SnapshotMetadata;
use crate::model::format::view::{RowEmit, RowSource};
use crate::model::key_group::KeyGroupRange;
use crate::model::state::BackendKind;
use crate::model::state::StateInfo;
use crate::model::state::operator::OperatorState;
use crate::runtime::checkpoint::coordinator::{
    CheckpointCoordinator, RootState, latest_restorable_skipping,
};
use crate::runtime::checkpoint::restore::{RestoreMode, restore_instance};
use crate::runtime::savepoint::{read_savepoint, restore_savepoint};
use crate::storage::CheckpointStorage;

/// The broadcast operator state in which every stateful operator records, at each checkpoint
/// and savepoint, the epoch the job resumes from: the source position.
pub const POSITION_STATE: &str = "statebackend.timely";
/// The key of the resume epoch in [`POSITION_STATE`].
pub const RESUME_EPOCH_KEY: &str = "resume-epoch";

/// What a job starts from.
#[derive(Clone)]
pub enum StartFrom {
    /// Empty state, epoch 0.
    Empty,
    /// The newest completed checkpoint of the root whose files verify, or empty state if the
    /// root holds no checkpoint at all.
    ///
    /// Damaged checkpoints (a file missing or corrupt, an unreadable `_metadata`) newer than
    /// the one restored are skipped and reported: a `tracing` warning and
    /// [`Job::skipped_checkpoints`]. If the root holds checkpoints and none of them restores,
    /// the start fails with [`Error::NoVerifiedCheckpoint`] naming each, unless
    /// [`Checkpointing::start_empty_if_all_damaged`] allows starting empty.
    LatestCheckpoint,
    /// A savepoint (a directory or prefix of its own).
    Savepoint(Arc<dyn CheckpointStorage>),
}

/// How a timely job keeps and checkpoints its keyed state; the same on every worker.
#[derive(Clone)]
pub struct Checkpointing {
    /// The checkpoint root, shared by every worker of every process (a directory they all
    /// see, or an object store).
    pub root: Arc<dyn CheckpointStorage>,
    /// Epochs per checkpoint: a checkpoint is taken when the stateful operators' input
    /// frontier passes each epoch `e` with `(e + 1) % interval == 0`. 0 takes none.
    ///
    /// Checkpoints are taken while the input runs: when the input closes, the frontier becomes
    /// empty and no further periodic checkpoint is taken. A bounded source that wants the last
    /// epochs checkpointed advances its input to the end and lets a probe after the operators
    /// reach it before closing the input, so every instance sees the frontier pass them. A job
    /// with an exactly-once sink ([`Job::commit_with_sink`]) also takes a final checkpoint
    /// when its input ends.
    pub interval: u64,
    /// Completed checkpoints the root keeps.
    pub retained: usize,
    /// What the job starts from.
    pub start: StartFrom,
    /// Savepoints to write: when the input frontier passes the epoch, into the storage. A
    /// savepoint at an epoch the input never reaches is written when the input ends, with that
    /// epoch as its position: it holds every record the input sent (held-back ones included)
    /// and the timers up to its epoch fired, and a job restored from it resumes at the next
    /// epoch.
    ///
    /// A savepoint at an epoch before the one the job resumes at (the run has passed it) is
    /// refused by [`Job::start`] with [`Error::InvalidOptions`], not skipped, unless its
    /// storage already holds a completed savepoint at exactly that epoch (an earlier run of
    /// the job wrote it, and this one restarted with the same settings): that one is left as
    /// it is.
    pub savepoints: Vec<(u64, Arc<dyn CheckpointStorage>)>,
    /// The backend of every instance.
    pub backend: BackendKind,
    /// The job's max parallelism (key groups): at most this many workers.
    pub max_parallelism: u32,
    /// Where RocksDB instances keep their working directories (one subdirectory per operator
    /// and worker); `None` for temporary directories.
    ///
    /// What such a directory holds is never state the job starts from: it may be a crashed
    /// run's, newer than any checkpoint, or an earlier job's. See
    /// [`Checkpointing::replace_working_dirs`].
    pub working_dir: Option<PathBuf>,
    /// Whether a start replaces what an instance's working directory holds (a database, the
    /// leftovers of a crash) with the state the job starts from: restored, or empty on a
    /// fresh start. `true` by default. With `false`, a start into a directory that is not
    /// empty fails instead ([`Error::UncleanWorkingDirectory`] or [`Error::Incompatible`],
    /// naming it) and nothing in it is touched. Either way, a leftover database is never
    /// reopened as the job's state.
    pub replace_working_dirs: bool,
    /// Whether a start from [`StartFrom::LatestCheckpoint`] whose root holds checkpoints none
    /// of which restores (each damaged) begins with empty state, at epoch 0, instead of
    /// failing with [`Error::NoVerifiedCheckpoint`]. `false` by default: starting empty loses
    /// the job's state, so only a caller who means it asks for it. The start then warns, lists
    /// the damaged checkpoints in [`Job::skipped_checkpoints`], and deletes none of them: the
    /// run's retention keeps them until it has retained as many checkpoints of its own.
    pub start_empty_if_all_damaged: bool,
    /// The clock processing-time timers fire by: the system's wall clock by default; a test
    /// replaces it. Processing-time timers fire while the input runs (the operator wakes when
    /// the next one is due), not at its end; what they change lands in the next checkpoint, so
    /// a restore may fire a timer again that had fired before the crash, as in Flink.
    pub clock: ProcessingClock,
}

/// The clock of [`Checkpointing::clock`]: milliseconds (since the Unix epoch, for the
/// system's).
#[derive(Clone)]
pub struct ProcessingClock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl ProcessingClock {
    /// The system's wall clock, in milliseconds since the Unix epoch.
    pub fn system() -> Self {
        Self(Arc::new(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        }))
    }

    /// A clock that reads `now`.
    pub fn new(now: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    /// The time now.
    pub fn now(&self) -> i64 {
        (self.0)()
    }
}

impl Default for ProcessingClock {
    fn default() -> Self {
        Self::system()
    }
}

impl std::fmt::Debug for ProcessingClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProcessingClock({})", self.now())
    }
}

impl Checkpointing {
    /// The storage of savepoint `index` of [`Checkpointing::savepoints`].
    pub(crate) fn savepoint_storage(&self, index: usize) -> Result<&Arc<dyn CheckpointStorage>> {
        self.savepoints
            .get(index)
            .map(|(_, storage)| storage)
            .ok_or_else(|| Error::CheckpointState {
                id: 0,
                reason: format!("no savepoint {index} was configured"),
            })
    }

    /// Checkpoints every `interval` epochs into `root`, keeping 3, starting from the latest
    /// checkpoint, on `backend` with 128 key groups.
    pub fn new(root: Arc<dyn CheckpointStorage>, interval: u64, backend: BackendKind) -> Self {
        Self {
            root,
            interval,
            retained: 3,
            start: StartFrom::LatestCheckpoint,
            savepoints: Vec::new(),
            backend,
            max_parallelism: 128,
            working_dir: None,
            replace_working_dirs: true,
            start_empty_if_all_damaged: false,
            clock: ProcessingClock::system(),
        }
    }
}

/// A checkpoint [`Job::start`] skipped because it is damaged: newer than the one the job
/// restored, or, with [`Checkpointing::start_empty_if_all_damaged`], any of a root none of
/// whose checkpoints restores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedCheckpoint {
    /// The checkpoint's id.
    pub id: u64,
    /// Why it does not restore (the first bad file, or why its `_metadata` is unreadable).
    pub reason: String,
}

/// The snapshot the instances restore from.
#[derive(Clone)]
enum Source {
    Checkpoint(SnapshotMetadata),
    Savepoint(Arc<dyn CheckpointStorage>, SnapshotMetadata),
}

/// A worker's message at start, as broadcast: worker 0's decision, and every worker's
/// [`fingerprint`] of its settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Decision {
    /// 0 for empty state, 1 for a checkpoint, 2 for the savepoint.
    source: u8,
    /// The checkpoint's id, for source 1.
    checkpoint: u64,
    /// The id of the run's first checkpoint.
    first_id: u64,
    /// Why worker 0 could not decide.
    error: Option<StartError>,
    /// The sender's fingerprint of its settings.
    fingerprint: String,
    /// The damaged checkpoints worker 0 skipped.
    skipped: Vec<SkippedCheckpoint>,
    /// The run's id, drawn by worker 0 ([`Job::run_id`]).
    run: u64,
}

/// Why worker 0 could not decide, as every worker returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum StartError {
    /// [`Error::NoVerifiedCheckpoint`].
    NoVerifiedCheckpoint { root: String, damaged: String },
    /// Any other error, as text.
    Other(String),
}

impl StartError {
    fn of(e: &Error) -> Self {
        match e {
            Error::NoVerifiedCheckpoint { root, damaged } => Self::NoVerifiedCheckpoint {
                root: root.clone(),
                damaged: damaged.clone(),
            },
            other => Self::Other(other.to_string()),
        }
    }

    fn into_error(self) -> Error {
        match self {
            Self::NoVerifiedCheckpoint { root, damaged } => {
                Error::NoVerifiedCheckpoint { root, damaged }
            }
            Self::Other(reason) => Error::CheckpointState {
                id: 0,
                reason: format!("the job could not start: {reason}"),
            },
        }
    }
}

/// What every worker's settings must agree on: the barriers, the routing, the backend and what
/// the job starts from (a worker that disagreed would take other barriers, route to other
/// workers, or restore something else).
fn fingerprint(settings: &Checkpointing) -> String {
    let start = match settings.start {
        StartFrom::Empty => "empty",
        StartFrom::LatestCheckpoint => "latest checkpoint",
        StartFrom::Savepoint(_) => "savepoint",
    };
    let savepoints: Vec<u64> = settings.savepoints.iter().map(|(e, _)| *e).collect();
    format!(
        "interval {}, savepoints at {savepoints:?}, backend {}, max parallelism {}, start from {start}",
        settings.interval, settings.backend, settings.max_parallelism
    )
}

/// One worker's part of a checkpointed timely job (see the module docs).
pub struct Job {
    settings: Arc<Checkpointing>,
    routing: KeyGroupRouting,
    index: usize,
    source: Option<Source>,
    first_id: u64,
    resume_epoch: u64,
    coordinator: Option<CheckpointCoordinator>,
    skipped: Vec<SkippedCheckpoint>,
    /// What this worker's source records ([`Job::source_position`]), which its stateful
    /// operators snapshot.
    positions: Rc<RefCell<PositionLog>>,
    /// Whether the job takes a final checkpoint when its input ends: set by
    /// [`Job::commit_with_sink`], read by every checkpointed operator's barriers.
    final_checkpoint: Rc<Cell<bool>>,
    run: u64,
}

impl Job {
    /// Agrees with every other worker on what the job starts from (see the module docs). Call
    /// it on every worker, before building the job's dataflow.
    ///
    /// # Errors
    /// [`Error::InvalidOperator`] for more workers than key groups;
    /// [`Error::NoVerifiedCheckpoint`] (on every worker) if the root holds checkpoints and none
    /// restores, unless [`Checkpointing::start_empty_if_all_damaged`]; worker 0's other errors
    /// reading the root or the savepoint (a missing savepoint names its `_metadata` path) and
    /// opening the coordinator (every worker returns them); errors reading the chosen
    /// snapshot's metadata; [`Error::InvalidOptions`] for a savepoint at an epoch before the
    /// resume epoch (see [`Checkpointing::savepoints`]).
    pub fn start(worker: &mut Worker, settings: Checkpointing) -> Result<Job> {
        let routing = KeyGroupRouting::new(settings.max_parallelism, worker.peers())?;
        let index = worker.index();
        let mut coordinator = None;
        let mut mine = Decision {
            fingerprint: fingerprint(&settings),
            ..Decision::default()
        };
        if index == 0 {
            match decide(&settings) {
                Ok((decision, opened)) => {
                    coordinator = Some(opened);
                    mine = decision;
                }
                Err(e) => mine.error = Some(StartError::of(&e)),
            }
        }
        let decision = broadcast_from_first(worker, mine)?;
        if let Some(error) = decision.error {
            return Err(error.into_error());
        }
        let source = match (decision.source, &settings.start) {
            (1, _) => Some(Source::Checkpoint(SnapshotMetadata::read(
                settings.root.as_ref(),
                &metadata_path(decision.checkpoint)?,
            )?)),
            (2, StartFrom::Savepoint(storage)) => Some(Source::Savepoint(
                Arc::clone(storage),
                read_savepoint_named(storage.as_ref())?,
            )),
            _ => None,
        };
        let resume_epoch = match &source {
            Some(Source::Checkpoint(meta) | Source::Savepoint(_, meta)) => resume_epoch_of(meta)?,
            None => 0,
        };
        check_savepoints(&settings.savepoints, resume_epoch)?;
        Ok(Job {
            settings: Arc::new(settings),
            routing,
            index,
            source,
            first_id: decision.first_id,
            resume_epoch,
            coordinator,
            skipped: decision.skipped,
            positions: Rc::default(),
            final_checkpoint: Rc::default(),
            run: decision.run,
        })
    }

    /// The damaged checkpoints this start skipped, by id: those newer than the one it
    /// restored (it fell back past them), or every checkpoint of a root none of whose
    /// checkpoints restores when [`Checkpointing::start_empty_if_all_damaged`] let it start
    /// empty. Empty when nothing was skipped. The same on every worker.
    pub fn skipped_checkpoints(&self) -> &[SkippedCheckpoint] {
        &self.skipped
    }

    /// The first epoch the job's source must produce: 0, or the epoch after the restored
    /// snapshot's.
    pub fn resume_epoch(&self) -> u64 {
        self.resume_epoch
    }

    /// The id of the completed checkpoint the job restored, if it restored one.
    pub fn restored_checkpoint(&self) -> Option<u64> {
        match &self.source {
            Some(Source::Checkpoint(meta)) => Some(meta.id),
            _ => None,
        }
    }

    /// The routing of the job's records to the workers that own their key groups.
    pub fn routing(&self) -> KeyGroupRouting {
        self.routing
    }

    /// This worker's index.
    pub fn worker_index(&self) -> usize {
        self.index
    }

    /// The job's settings.
    pub fn settings(&self) -> &Arc<Checkpointing> {
        &self.settings
    }

    /// The first checkpoint id of this run.
    pub(crate) fn first_id(&self) -> u64 {
        self.first_id
    }

    /// This run's id: drawn at random by worker 0 at every start and the same on every worker,
    /// so what a run names (an exactly-once sink's transactions) differs from what an earlier
    /// run of the job, crashed or restored from the same snapshot, named.
    pub fn run_id(&self) -> u64 {
        self.run
    }

    /// Whether the job takes a final checkpoint when its input ends.
    pub(crate) fn final_checkpoint_flag(&self) -> Rc<Cell<bool>> {
        Rc::clone(&self.final_checkpoint)
    }

    /// This worker's source position log, shared with its stateful operators.
    pub(crate) fn position_log(&self) -> Rc<RefCell<PositionLog>> {
        Rc::clone(&self.positions)
    }

    /// The operator state this worker restores its source position from: that of the first
    /// operator of the restored snapshot (every stateful operator keeps the same position),
    /// for this worker's key groups at the worker count it now runs; `None` on a fresh start.
    pub(crate) fn restored_source_state(&self) -> Result<Option<OperatorState>> {
        let meta = match &self.source {
            Some(Source::Checkpoint(meta) | Source::Savepoint(_, meta)) => meta,
            None => return Ok(None),
        };
        let Some(first) = meta.instances.first() else {
            return Ok(None);
        };
        let range = self.routing.range_of(self.index)?;
        let peers = u32::try_from(self.routing.peers()).unwrap_or(u32::MAX);
        Ok(Some(
            meta.for_operator(&first.operator)?
                .operator_state_for_instance(range, Some(peers)),
        ))
    }

    /// The coordinator (worker 0 only), taken once by the committer.
    pub(crate) fn take_coordinator(&mut self) -> Option<CheckpointCoordinator> {
        self.coordinator.take()
    }

    /// This worker's instance of operator `operator`: the key groups it owns, restored from
    /// what the job starts from, or empty. Its working directory, if the settings give one,
    /// is replaced whatever it holds, or refused if it is not empty, as
    /// [`Checkpointing::replace_working_dirs`] says: a fresh start is empty too.
    ///
    /// # Errors
    /// Restore errors (naming the file); [`Error::Incompatible`] for a snapshot of another max
    /// parallelism; with [`Checkpointing::replace_working_dirs`] off,
    /// [`Error::UncleanWorkingDirectory`] or [`Error::Incompatible`] for a working directory
    /// that is not empty.
    pub fn open_instance(&self, operator: &str) -> Result<AnyBackend> {
        self.open_instance_as(operator, self.settings.backend, false)
    }

    /// [`Job::open_instance`] on backend `kind`, whatever the job's; with `empty_if_new`, an
    /// operator the restored snapshot does not hold (one added to the job since) starts empty
    /// instead of failing with [`Error::OperatorNotFound`].
    pub(crate) fn open_instance_as(
        &self,
        operator: &str,
        kind: BackendKind,
        empty_if_new: bool,
    ) -> Result<AnyBackend> {
        let range = self.routing.range_of(self.index)?;
        let mut config = BackendConfig::heap(self.settings.max_parallelism, range);
        config.kind = kind;
        config.working_dir = self
            .settings
            .working_dir
            .as_ref()
            .map(|dir| dir.join(format!("{operator}-{}", self.index)));
        config.replace_existing = self.settings.replace_working_dirs;
        // The worker count, so a restore at the snapshot's count keeps each split list with its
        // worker at every count, not only where the key groups alone tell.
        config.parallelism = u32::try_from(self.routing.peers()).ok();
        let restored = match &self.source {
            Some(Source::Checkpoint(meta) | Source::Savepoint(_, meta)) => {
                match meta.for_operator(operator) {
                    Ok(part) => Some(part),
                    Err(Error::OperatorNotFound { .. }) if empty_if_new => None,
                    Err(e) => return Err(e),
                }
            }
            None => None,
        };
        match (&self.source, restored) {
            // A fresh start into a working directory goes through the restore path, with no
            // rows: what the directory holds (a crashed run's database, an earlier run's) is
            // replaced or refused, never reopened as the job's state.
            (_, None) if config.working_dir.is_some() && config.kind == BackendKind::RocksDb => {
                <AnyBackend as CheckpointedBackend>::restore_rows(&config, &mut NoRows)
            }
            (_, None) => AnyBackend::open(&config),
            (Some(Source::Savepoint(storage, _)), Some(part)) => {
                restore_savepoint(storage.as_ref(), &part, &config)
            }
            (_, Some(part)) => restore_instance(
                self.settings.root.as_ref(),
                &part,
                &config,
                RestoreMode::Claim,
            ),
        }
    }
}

/// The rows of an empty instance: what a fresh start restores.
struct NoRows;

impl RowSource for NoRows {
    fn states(&self) -> &[StateInfo] {
        &[]
    }

    fn emit_rows(&mut self, _emit: &mut RowEmit<'_>) -> Result<()> {
        Ok(())
    }
}

/// [`read_savepoint`], with a missing `_metadata` named by its storage's location: "missing
/// file _metadata" alone does not say which directory was expected to hold a savepoint.
fn read_savepoint_named(storage: &dyn CheckpointStorage) -> Result<SnapshotMetadata> {
    read_savepoint(storage).map_err(|e| match e {
        Error::MissingFile { file } => Error::MissingFile {
            file: format!(
                "{file} in {} (no savepoint there: none was written, or it did not complete)",
                storage.location()
            ),
        },
        other => other,
    })
}

/// Refuses savepoints at epochs before `resume_epoch`: the run has passed them and would write
/// nothing. One whose storage already holds a completed savepoint at exactly that epoch (an
/// earlier run of this job wrote it) is left as it is.
fn check_savepoints(
    savepoints: &[(u64, Arc<dyn CheckpointStorage>)],
    resume_epoch: u64,
) -> Result<()> {
    for (epoch, storage) in savepoints.iter().filter(|(e, _)| *e < resume_epoch) {
        let written = read_savepoint(storage.as_ref())
            .ok()
            .and_then(|meta| meta.engine.get(EPOCH_KEY).cloned())
            .is_some_and(|bytes| bytes == epoch.to_le_bytes());
        if written {
            tracing::info!(
                epoch,
                savepoint = %storage.location(),
                "savepoint written by an earlier run: left as it is"
            );
            continue;
        }
        return Err(Error::InvalidOptions {
            reason: format!(
                "a savepoint at epoch {epoch} (into {}) cannot be taken: the job resumes at \
                 epoch {resume_epoch}, past it; ask for one at epoch {resume_epoch} or later",
                storage.location()
            ),
        });
    }
    Ok(())
}

/// Worker 0's decision: what to start from, the coordinator opened on the root, and the first
/// checkpoint id (begun at once if a sweep is pending, see [`crate::engines::timely::committer`]).
fn decide(settings: &Checkpointing) -> Result<(Decision, CheckpointCoordinator)> {
    let mut skipped = Vec::new();
    let chosen = match &settings.start {
        StartFrom::Empty => (0, 0),
        StartFrom::LatestCheckpoint => {
            let root = settings.root.as_ref();
            let (found, damaged) = latest_restorable_skipping(root)?;
            skipped = damaged
                .iter()
                .map(|(id, reason)| SkippedCheckpoint {
                    id: *id,
                    reason: reason.clone(),
                })
                .collect();
            let list = || {
                damaged
                    .iter()
                    .map(|(id, why)| format!("{id} ({why})"))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            match found {
                Some(meta) => {
                    if !damaged.is_empty() {
                        tracing::warn!(
                            restored = meta.id,
                            skipped = %list(),
                            "the job restores an older checkpoint: newer ones are damaged"
                        );
                    }
                    (1, meta.id)
                }
                None if damaged.is_empty() => (0, 0),
                None if settings.start_empty_if_all_damaged => {
                    tracing::warn!(
                        root = %root.location(),
                        damaged = %list(),
                        "no checkpoint of the root restores: the job starts empty, as its \
                         settings allow; the damaged checkpoints are kept"
                    );
                    (0, 0)
                }
                None => {
                    return Err(Error::NoVerifiedCheckpoint {
                        root: root.location(),
                        damaged: list(),
                    });
                }
            }
        }
        StartFrom::Savepoint(storage) => {
            read_savepoint_named(storage.as_ref())?;
            (2, 0)
        }
    };
    // Chosen before the coordinator opens, which drops what lies beyond the retention. A
    // fallback past damaged newer checkpoints may lie beyond it: the retention of this run
    // then widens to keep it (and the damaged ones, which a user may want to inspect). An
    // empty start past a root of damaged checkpoints keeps them all until the run has
    // retained as many of its own.
    let retained = if chosen.0 == 1 {
        let newer = RootState::read(settings.root.as_ref())?
            .completed
            .range(chosen.1 + 1..)
            .count();
        settings.retained.max(newer + 1)
    } else if !skipped.is_empty() {
        settings.retained.saturating_add(skipped.len())
    } else {
        settings.retained
    };
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&settings.root), retained)?;
    if chosen.0 == 1 {
        coordinator.prepare_restore(chosen.1, RestoreMode::Claim)?;
    }
    let first_id = coordinator.next_checkpoint_id();
    if coordinator.sweep_pending() {
        // The sweep at open failed: the first id goes in flight before any worker can upload.
        coordinator.begin(first_id)?;
    }
    Ok((
        Decision {
            source: chosen.0,
            checkpoint: chosen.1,
            first_id,
            error: None,
            fingerprint: fingerprint(settings),
            skipped,
            run: draw_run_id(),
        },
        coordinator,
    ))
}

/// A run id no earlier run is likely to have drawn: the clock's nanoseconds and the process
/// id through a 64-bit mixer (two runs would need the same nanosecond and process id).
fn draw_run_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = nanos ^ (u64::from(std::process::id()) << 32);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The epoch after the one `meta` was taken at, from its operator state.
fn resume_epoch_of(meta: &SnapshotMetadata) -> Result<u64> {
    let Some(first) = meta.instances.first() else {
        return Err(Error::Incompatible {
            reason: "the snapshot holds no instance".into(),
        });
    };
    let range = KeyGroupRange::new(0, first.max_parallelism)?;
    let mut state: OperatorState = meta
        .for_operator(&first.operator)?
        .operator_state_for(range);
    let position = state.broadcast_state::<String, u64>(POSITION_STATE)?;
    position
        .get(&state, &RESUME_EPOCH_KEY.to_owned())?
        .ok_or_else(|| Error::Incompatible {
            reason: format!(
                "the snapshot records no resume epoch ({POSITION_STATE} operator state): it was \
                 not written by a timely job, and replaying from epoch 0 would count everything \
                 again"
            ),
        })
}

/// Sends every worker's message to every worker through a one-epoch dataflow: worker 0's is
/// its decision, the others' carry only their settings' fingerprint. Returns worker 0's
/// decision once all have arrived.
///
/// # Errors
/// [`Error::Incompatible`] on every worker if any worker's settings differ from worker 0's:
/// each worker sees every fingerprint, so all of them refuse, and none waits for a peer that
/// left.
fn broadcast_from_first(worker: &mut Worker, message: Decision) -> Result<Decision> {
    let index = worker.index() as u64;
    let peers = worker.peers();
    let received: Rc<RefCell<Vec<(u64, Decision)>>> = Rc::new(RefCell::new(Vec::new()));
    let sink = Rc::clone(&received);
    let probe = ProbeHandle::new();
    let mut input = worker.dataflow::<u64, _, _>(|scope| {
        let (input, stream) = scope.new_input::<(u64, Decision)>();
        stream
            .broadcast()
            .probe_with(&probe)
            .sink(Pipeline, "StartDecision", move |(input, _)| {
                input.for_each(|_, data| sink.borrow_mut().append(data));
            });
        input
    });
    input.send((index, message));
    input.advance_to(1);
    drop(input);
    while probe.less_than(&1) || received.borrow().len() < peers {
        if !worker.step_or_park(Some(std::time::Duration::from_millis(10))) {
            break;
        }
    }
    let mut all = received.take();
    all.sort_by_key(|(from, _)| *from);
    let Some((0, decision)) = all.first().cloned() else {
        return Err(Error::CheckpointState {
            id: 0,
            reason: "worker 0's start decision never arrived".into(),
        });
    };
    if let Some((other, theirs)) = all
        .iter()
        .find(|(_, d)| d.fingerprint != decision.fingerprint)
    {
        return Err(Error::Incompatible {
            reason: format!(
                "worker {other} runs with other settings than worker 0: {} against {}",
                theirs.fingerprint, decision.fingerprint
            ),
        });
    }
    Ok(decision)
}
