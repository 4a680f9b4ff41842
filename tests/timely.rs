//! The timely integration in one process: every checkpoint holds exactly the state at its
//! epoch although records of later epochs arrive early, timers fire up to the barrier and no
//! further, the resume epoch is in operator state, and a failed write at any point of a job's
//! life aborts a snapshot without touching a completed one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use statebackend::checkpoint::coordinator::RootState;
use statebackend::checkpoint::{RestoreMode, restore_instance};
use statebackend::state::key::KeyContext;
use statebackend::storage::{CheckpointStorage, FaultMode, FaultyStorage, LocalDirStorage};
use statebackend::timely::{
    Checkpointing, CommitReport, Context, Delivery, EPOCH_KEY, Job, KeyedLogic, POSITION_STATE,
    ProcessingClock, RESUME_EPOCH_KEY, Rescale, StartFrom, Target, TimeDomain,
};
use statebackend::{
    AnyBackend, BackendConfig, BackendKind, CheckpointedBackend, KeyGroupRange, KeyedStateBackend,
    Result, Timer, ValueState, ValueStateDescriptor,
};
use timely::dataflow::ProbeHandle;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::vec::Input;
use timely::dataflow::operators::{Operator, Probe};

const KEYS: u64 = 97;
const PER_EPOCH: u64 = 60;
/// A record of epoch `e` sets a timer at `e + TIMER_DELAY`.
const TIMER_DELAY: u64 = 2;

/// Record `j` of epoch `e`: its key.
fn key_of(epoch: u64, j: u64) -> u64 {
    (epoch * 31 + j * 7) % KEYS
}

/// Records per key, and timers fired per key.
type States = (ValueState<u64, (), u64>, ValueState<u64, (), u64>);

/// Counts records per key, and timers fired per key (one timer per key and epoch).
#[derive(Default)]
struct Counting {
    states: Option<States>,
}

fn register(backend: &mut AnyBackend) -> Result<States> {
    Ok((
        backend.value_state(&ValueStateDescriptor::new("records"))?,
        backend.value_state(&ValueStateDescriptor::new("fired"))?,
    ))
}

impl KeyedLogic for Counting {
    type Input = u64;
    type Output = (u64, u64);
    type Key = u64;
    type Namespace = u64;

    fn key(input: &u64) -> u64 {
        *input
    }

    fn open(&mut self, backend: &mut AnyBackend) -> Result<()> {
        self.states = Some(register(backend)?);
        Ok(())
    }

    fn on_record(
        &mut self,
        cx: &mut Context<'_, u64, u64>,
        key: &KeyContext<u64>,
        _input: u64,
        _output: &mut Vec<(u64, u64)>,
    ) -> Result<()> {
        let (records, _) = self.states.as_ref().expect("opened");
        let n = records.get(cx.backend, key, &())?.unwrap_or(0);
        records.put(cx.backend, key, &(), n + 1)?;
        let at = cx.epoch + TIMER_DELAY;
        cx.timers
            .register_event_time_timer(cx.backend, key, &cx.epoch, at as i64)
    }

    fn on_timer(
        &mut self,
        cx: &mut Context<'_, u64, u64>,
        timer: Timer<u64, u64>,
        output: &mut Vec<(u64, u64)>,
    ) -> Result<()> {
        let (_, fired) = self.states.as_ref().expect("opened");
        let n = fired.get(cx.backend, &timer.key, &())?.unwrap_or(0);
        fired.put(cx.backend, &timer.key, &(), n + 1)?;
        output.push((*timer.key.key(), timer.namespace));
        Ok(())
    }
}

/// The expected state at epoch `b`: per key, (records up to `b`, timers fired up to `b`).
fn model_at(b: u64) -> BTreeMap<u64, (u64, u64)> {
    let mut out: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for epoch in 0..=b {
        let mut keys_this_epoch = std::collections::BTreeSet::new();
        for j in 0..PER_EPOCH {
            let key = key_of(epoch, j);
            out.entry(key).or_default().0 += 1;
            keys_this_epoch.insert(key);
        }
        if epoch + TIMER_DELAY <= b {
            for key in keys_this_epoch {
                out.entry(key).or_default().1 += 1;
            }
        }
    }
    out
}

/// Runs `epochs` epochs on `workers` threads into `root`. Every worker sends all its epochs
/// before it steps once, so the operators receive records of later epochs before the frontier
/// passes earlier ones. Returns worker 0's commit reports, or the first worker's error.
fn run_job(
    workers: usize,
    epochs: u64,
    settings: Checkpointing,
) -> std::result::Result<Vec<CommitReport>, String> {
    run_job_with(workers, epochs, settings, Close::AfterLastEpoch, None).map(|(c, _)| c)
}

/// How the workers close their input.
#[derive(Clone, Copy, PartialEq)]
enum Close {
    /// After a probe saw the frontier pass the last epoch (the last barriers are taken).
    AfterLastEpoch,
    /// At once, before stepping: the frontier may jump to empty with records held back.
    AtOnce,
}

/// [`run_job`], closing the input as `close` says, with worker 1's checkpoint interval
/// replaced by `worker_1_interval` if given; also returns how many timers fired (outputs).
fn run_job_with(
    workers: usize,
    epochs: u64,
    settings: Checkpointing,
    close: Close,
    worker_1_interval: Option<u64>,
) -> std::result::Result<(Vec<CommitReport>, usize), String> {
    let fired = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let outputs = Arc::clone(&fired);
    let commits = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&commits);
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let mut settings = settings.clone();
        if let (1, Some(interval)) = (worker.index(), worker_1_interval) {
            settings.interval = interval;
        }
        let mut job = Job::start(worker, settings).map_err(|e| e.to_string())?;
        let outputs = Arc::clone(&outputs);
        let (index, peers) = (worker.index() as u64, worker.peers() as u64);
        let from = job.resume_epoch();
        let probe = ProbeHandle::new();
        let log = Arc::clone(&log);
        let mut input = worker
            .dataflow::<u64, _, _>(|scope| -> Result<_> {
                let (input, records) = scope.new_input::<u64>();
                let (fired, acks) = job.stateful(records, "counting", Counting::default())?;
                job.commit(acks, move |report| log.lock().unwrap().push(report.clone()));
                fired
                    .probe_with(&probe)
                    .sink(Pipeline, "Count", move |(input, _)| {
                        input.for_each(|_, data| {
                            outputs.fetch_add(data.len(), std::sync::atomic::Ordering::Relaxed);
                            data.clear()
                        })
                    });
                Ok(input)
            })
            .map_err(|e| e.to_string())?;
        input.advance_to(from);
        for epoch in from..epochs {
            for j in (index..PER_EPOCH).step_by(peers as usize) {
                input.send(key_of(epoch, j));
            }
            input.advance_to(epoch + 1);
        }
        // The operators see the frontier pass the last epochs before the input closes.
        while close == Close::AfterLastEpoch && probe.less_than(&epochs) {
            worker.step();
        }
        drop(input);
        while worker.step() {}
        Ok::<_, String>(())
    })?;
    for result in guards.join() {
        result??;
    }
    let commits = commits.lock().unwrap().clone();
    Ok((commits, fired.load(std::sync::atomic::Ordering::Relaxed)))
}

/// Per key, (records, timers fired) in `backend`, and the resume epoch its operator state
/// records.
fn counts_and_position(backend: &mut AnyBackend) -> (BTreeMap<u64, (u64, u64)>, Option<u64>) {
    let (records, fired) = register(backend).unwrap();
    let mut found = BTreeMap::new();
    for item in backend.keys::<u64, ()>(records.id(), None).unwrap() {
        let (key, ()) = item.unwrap();
        let n = records.get(&*backend, &key, &()).unwrap().unwrap_or(0);
        let f = fired.get(&*backend, &key, &()).unwrap().unwrap_or(0);
        found.insert(key, (n, f));
    }
    let operator = backend.operator_state_mut();
    let position = operator
        .broadcast_state::<String, u64>(POSITION_STATE)
        .unwrap();
    let resume = position.get(operator, &RESUME_EPOCH_KEY.into()).unwrap();
    (found, resume)
}

/// The epoch a completed snapshot's engine metadata records.
fn epoch_of(meta: &statebackend::checkpoint::SnapshotMetadata) -> u64 {
    u64::from_le_bytes(
        meta.engine[EPOCH_KEY]
            .as_slice()
            .try_into()
            .expect("8 bytes"),
    )
}

/// Checkpoint `meta` of `root`, restored into one instance owning every key group: the state
/// of `operator` and its resume epoch.
fn checkpoint_state(
    root: &dyn CheckpointStorage,
    meta: &statebackend::checkpoint::SnapshotMetadata,
    operator: &str,
) -> (BTreeMap<u64, (u64, u64)>, Option<u64>) {
    let mut config = BackendConfig::heap(128, KeyGroupRange::new(0, 128).unwrap());
    config.kind = meta.instances[0].backend;
    let mut backend = restore_instance(
        root,
        &meta.for_operator(operator).unwrap(),
        &config,
        RestoreMode::NoClaim,
    )
    .expect("restore");
    counts_and_position(&mut backend)
}

/// The savepoint in `storage`, restored into one heap instance owning every key group: the
/// state of `operator` and its resume epoch.
fn savepoint_state(
    storage: &dyn CheckpointStorage,
    operator: &str,
) -> (BTreeMap<u64, (u64, u64)>, Option<u64>) {
    let meta = statebackend::savepoint::read_savepoint(storage).expect("a savepoint");
    let config = BackendConfig::heap(128, KeyGroupRange::new(0, 128).unwrap());
    let mut backend = statebackend::savepoint::restore_savepoint(
        storage,
        &meta.for_operator(operator).unwrap(),
        &config,
    )
    .expect("restore");
    counts_and_position(&mut backend)
}

/// Every completed checkpoint of `root`, restored into one instance owning every key group,
/// compared with the model at its epoch; returns the epochs checked.
fn check_every_checkpoint(root: &dyn CheckpointStorage) -> Vec<u64> {
    let state = RootState::read(root).expect("root");
    let mut epochs = Vec::new();
    for meta in state.completed.values() {
        let epoch = epoch_of(meta);
        let (found, resume) = checkpoint_state(root, meta, "counting");
        assert_eq!(
            found,
            model_at(epoch),
            "checkpoint {} at epoch {epoch}",
            meta.id
        );
        assert_eq!(resume, Some(epoch + 1));
        epochs.push(epoch);
    }
    epochs
}

fn settings(root: Arc<dyn CheckpointStorage>, kind: BackendKind) -> Checkpointing {
    let mut s = Checkpointing::new(root, 3, kind);
    s.retained = 100;
    s
}

fn kinds() -> Vec<BackendKind> {
    vec![BackendKind::Heap, BackendKind::RocksDb]
}

#[test]
fn every_checkpoint_holds_exactly_the_state_at_its_epoch() {
    for kind in kinds() {
        let dir = tempfile::tempdir().unwrap();
        let root: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(dir.path()).unwrap());
        let commits = run_job(3, 20, settings(Arc::clone(&root), kind)).unwrap();
        // Barriers at epochs 2, 5, ..., 17; 20 epochs end before the next.
        let expected: Vec<u64> = (0..6).map(|n| n * 3 + 2).collect();
        assert_eq!(check_every_checkpoint(root.as_ref()), expected, "{kind:?}");
        assert_eq!(commits.len(), 6);
        assert!(
            commits
                .iter()
                .all(|c| c.outcome.is_ok() && c.instances == 3)
        );
    }
}

#[test]
fn a_restored_job_resumes_after_its_checkpoint_at_another_worker_count() {
    for kind in kinds() {
        let dir = tempfile::tempdir().unwrap();
        let root: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(dir.path()).unwrap());
        run_job(4, 10, settings(Arc::clone(&root), kind)).unwrap();
        // The first run ended at epoch 10 with its last checkpoint at epoch 8; the second
        // replays 9 and goes on to 20 on two workers.
        let commits = run_job(2, 20, settings(Arc::clone(&root), kind)).unwrap();
        let epochs: Vec<u64> = commits.iter().map(|c| c.epoch).collect();
        assert_eq!(epochs, vec![11, 14, 17], "{kind:?}");
        assert_eq!(
            check_every_checkpoint(root.as_ref()),
            vec![2, 5, 8, 11, 14, 17]
        );
    }
}

#[test]
fn a_savepoint_restores_into_a_fresh_root_at_one_worker() {
    let dir = tempfile::tempdir().unwrap();
    let root: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::new(dir.path().join("root")).unwrap());
    let savepoint: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::new(dir.path().join("savepoint")).unwrap());
    let mut first = settings(Arc::clone(&root), BackendKind::RocksDb);
    first.savepoints = vec![(6, Arc::clone(&savepoint))];
    let commits = run_job(3, 12, first).unwrap();
    assert!(
        commits
            .iter()
            .any(|c| c.target == Target::Savepoint(0) && c.epoch == 6 && c.outcome.is_ok())
    );
    let fresh: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::new(dir.path().join("fresh")).unwrap());
    let mut second = settings(Arc::clone(&fresh), BackendKind::Heap);
    second.start = StartFrom::Savepoint(savepoint);
    let commits = run_job(1, 12, second).unwrap();
    // Resumed at epoch 7: the checkpoints at 8 and 11 hold the state a run without the
    // savepoint would have.
    assert_eq!(
        commits.iter().map(|c| c.epoch).collect::<Vec<_>>(),
        vec![8, 11]
    );
    assert_eq!(check_every_checkpoint(fresh.as_ref()), vec![8, 11]);
}

#[test]
fn a_failed_write_at_any_point_aborts_a_snapshot_and_never_damages_a_completed_one() {
    // A clean run counts the mutating operations of the job's whole life on its root.
    let clean_dir = tempfile::tempdir().unwrap();
    let clean = Arc::new(FaultyStorage::new(
        LocalDirStorage::new(clean_dir.path()).unwrap(),
        FaultMode::None,
    ));
    run_job(2, 12, settings(clean.clone(), BackendKind::Heap)).unwrap();
    let operations = clean.ops();
    assert!(operations > 10, "{operations} operations");
    let mut aborted = 0;
    for k in 1..=operations {
        let dir = tempfile::tempdir().unwrap();
        let root = Arc::new(FaultyStorage::new(
            LocalDirStorage::new(dir.path()).unwrap(),
            FaultMode::FailAt(k),
        ));
        // A failure claiming the coordinator epoch or writing its lease (operations 1 and 2)
        // fails the start on every worker; any later one aborts at most the snapshot it hit.
        match run_job(2, 12, settings(root.clone(), BackendKind::Heap)) {
            Ok(commits) => {
                aborted += commits.iter().filter(|c| c.outcome.is_err()).count();
                let completed: Vec<u64> = commits
                    .iter()
                    .filter(|c| c.outcome.is_ok())
                    .map(|c| c.epoch)
                    .collect();
                assert_eq!(
                    check_every_checkpoint(root.inner()),
                    completed,
                    "fault at {k}"
                );
            }
            Err(e) => assert!(k <= 2, "fault at {k} failed the job: {e}"),
        }
    }
    assert!(aborted > 0, "no fault hit a snapshot");
}

/// Files of `root` no completed checkpoint lists (and that are not `_metadata` or markers):
/// what a sweep would delete now.
fn unreferenced(root: &dyn CheckpointStorage) -> Vec<String> {
    let state = RootState::read(root).expect("root");
    let listing = root.list(None).expect("listing");
    let plan = statebackend::checkpoint::coordinator::plan_collection(
        &state,
        usize::MAX,
        &std::collections::BTreeSet::new(),
        Some(&listing),
    );
    plan.deletable.iter().map(|o| o.path.to_string()).collect()
}

#[test]
fn retention_deletes_what_dropped_checkpoints_alone_used_while_the_job_runs() {
    let dir = tempfile::tempdir().unwrap();
    let root: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(dir.path()).unwrap());
    let mut s = Checkpointing::new(Arc::clone(&root), 1, BackendKind::RocksDb);
    s.retained = 2;
    let commits = run_job(2, 30, s).unwrap();
    assert_eq!(commits.len(), 30);
    assert!(commits.iter().all(|c| c.outcome.is_ok()));
    let state = RootState::read(root.as_ref()).unwrap();
    assert_eq!(state.completed.len(), 2);
    // Every file left is listed by one of the two retained checkpoints.
    assert_eq!(unreferenced(root.as_ref()), Vec::<String>::new());
    assert_eq!(check_every_checkpoint(root.as_ref()), vec![28, 29]);
}

/// Timers that fire by the end of a run of `epochs` epochs: one per key and epoch with records.
fn timers_of(epochs: u64) -> usize {
    (0..epochs)
        .map(|e| {
            (0..PER_EPOCH)
                .map(|j| key_of(e, j))
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        })
        .sum()
}

#[test]
fn records_held_back_at_a_barrier_are_processed_when_the_input_ends_first() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let root: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(dir.path()).unwrap());
        let (_, fired) = run_job_with(
            3,
            20,
            settings(root, BackendKind::Heap),
            Close::AtOnce,
            None,
        )
        .unwrap();
        // Every record counted: the end of the input fires every timer once.
        assert_eq!(fired, timers_of(20));
    }
}

#[test]
fn workers_with_other_settings_than_worker_0_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let root: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(dir.path()).unwrap());
    let refused = run_job_with(
        2,
        10,
        settings(root, BackendKind::Heap),
        Close::AfterLastEpoch,
        Some(4),
    );
    assert!(
        matches!(&refused, Err(e) if e.contains("other settings than worker 0")),
        "{refused:?}"
    );
}

#[test]
fn a_snapshot_without_a_resume_epoch_is_refused_not_replayed_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let savepoint: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::new(dir.path().join("savepoint")).unwrap());
    // A savepoint of the same state written outside a timely job: no position in it.
    let mut backend = AnyBackend::open(&BackendConfig::heap(
        128,
        KeyGroupRange::new(0, 128).unwrap(),
    ))
    .unwrap();
    let (records, _) = register(&mut backend).unwrap();
    records.put(&mut backend, &7u64, &(), 1).unwrap();
    let mut part = backend
        .savepoint()
        .unwrap()
        .write(savepoint.as_ref())
        .unwrap();
    part.operator = "counting".into();
    statebackend::savepoint::complete_savepoint(savepoint.as_ref(), vec![part]).unwrap();
    let root: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::new(dir.path().join("root")).unwrap());
    let mut s = settings(root, BackendKind::Heap);
    s.start = StartFrom::Savepoint(savepoint);
    let refused = run_job(2, 10, s);
    assert!(
        matches!(&refused, Err(e) if e.contains("no resume epoch")),
        "{refused:?}"
    );
}

#[test]
fn a_fallback_past_damaged_checkpoints_is_kept_and_restored_whatever_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let root: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(dir.path()).unwrap());
    let commits = run_job(2, 20, settings(Arc::clone(&root), BackendKind::Heap)).unwrap();
    assert_eq!(commits.len(), 6);
    // The two newest checkpoints (epochs 14 and 17) lose a file each.
    let state = RootState::read(root.as_ref()).unwrap();
    for meta in state.completed.values().rev().take(2) {
        let file = &meta.files().next().unwrap().path;
        root.delete(file).unwrap();
    }
    // A restart that keeps one checkpoint falls back to epoch 11, which lies beyond its
    // retention: the open must not drop it.
    let mut s = settings(Arc::clone(&root), BackendKind::Heap);
    s.retained = 1;
    let commits = run_job(2, 20, s).unwrap();
    assert_eq!(
        commits
            .iter()
            .map(|c| (c.epoch, c.outcome.is_ok()))
            .collect::<Vec<_>>(),
        vec![(14, true), (17, true)]
    );
    let newest = RootState::read(root.as_ref()).unwrap();
    let latest = newest.completed.values().next_back().unwrap();
    assert_eq!(latest.engine[EPOCH_KEY], 17u64.to_le_bytes().to_vec());
}

/// The state after a run of epochs `0..epochs` whose input ended: every record counted and
/// every timer fired.
fn model_ended(epochs: u64) -> BTreeMap<u64, (u64, u64)> {
    let mut out: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for epoch in 0..epochs {
        let mut keys_this_epoch = std::collections::BTreeSet::new();
        for j in 0..PER_EPOCH {
            let key = key_of(epoch, j);
            out.entry(key).or_default().0 += 1;
            keys_this_epoch.insert(key);
        }
        for key in keys_this_epoch {
            out.entry(key).or_default().1 += 1;
        }
    }
    out
}

#[test]
fn a_savepoint_at_input_end_holds_the_records_held_back_for_a_dropped_checkpoint() {
    for kind in kinds() {
        let dir = tempfile::tempdir().unwrap();
        let root: Arc<dyn CheckpointStorage> =
            Arc::new(LocalDirStorage::new(dir.path().join("root")).unwrap());
        let savepoint: Arc<dyn CheckpointStorage> =
            Arc::new(LocalDirStorage::new(dir.path().join("savepoint")).unwrap());
        let at_12: Arc<dyn CheckpointStorage> =
            Arc::new(LocalDirStorage::new(dir.path().join("at-12")).unwrap());
        let mut s = Checkpointing::new(root, 10, kind);
        s.savepoints = vec![(1000, Arc::clone(&savepoint)), (12, Arc::clone(&at_12))];
        // Epochs 0..=15 sent and the input dropped before the first step: the records of 10..=15
        // wait for the checkpoint at 9, which the end of the input drops.
        let (commits, _) = run_job_with(1, 16, s, Close::AtOnce, None).unwrap();
        assert!(
            commits
                .iter()
                .any(|c| c.target == Target::Savepoint(0) && c.epoch == 1000 && c.outcome.is_ok()),
            "{commits:?}"
        );
        let (state, resume) = savepoint_state(savepoint.as_ref(), "counting");
        assert_eq!(resume, Some(1001), "{kind:?}");
        // Every record is in it, and every timer up to 1000 fired: a job restored from it and
        // resumed at 1001 has lost nothing.
        assert_eq!(state, model_ended(16), "{kind:?}");
        // The one at 12, taken at the end of the input too, holds exactly the state at 12:
        // the held-back records of 10..=12 in, those of 13..=15 out.
        assert_eq!(
            savepoint_state(at_12.as_ref(), "counting"),
            (model_at(12), Some(13)),
            "{kind:?}"
        );
    }
}

/// A record of the two-operator pipeline: `(a, b)`; the first operator is keyed by `a`, the
/// second by `b`.
type Pair = (u64, u64);

/// Records per epoch in the pipeline.
const PAIRS_PER_EPOCH: u64 = 8;

fn pair_of(epoch: u64, j: u64) -> Pair {
    ((epoch * 7 + j) % 13, (epoch * 3 + j * 5) % 11)
}

/// Which field of a [`Pair`] an operator is keyed by, and whether it passes records on.
trait Pick: 'static {
    const PASS: bool;
    fn pick(pair: &Pair) -> u64;
}

/// Keyed by `a`, passes every record on.
struct ByA;
impl Pick for ByA {
    const PASS: bool = true;
    fn pick(pair: &Pair) -> u64 {
        pair.0
    }
}

/// Keyed by `b`, emits nothing.
struct ByB;
impl Pick for ByB {
    const PASS: bool = false;
    fn pick(pair: &Pair) -> u64 {
        pair.1
    }
}

/// Counts records per key (in the `records` state of [`register`]).
struct Tally<P> {
    states: Option<States>,
    pick: std::marker::PhantomData<P>,
}

impl<P> Default for Tally<P> {
    fn default() -> Self {
        Self {
            states: None,
            pick: std::marker::PhantomData,
        }
    }
}

impl<P: Pick> KeyedLogic for Tally<P> {
    type Input = Pair;
    type Output = Pair;
    type Key = u64;
    type Namespace = u64;

    fn key(input: &Pair) -> u64 {
        P::pick(input)
    }

    fn open(&mut self, backend: &mut AnyBackend) -> Result<()> {
        self.states = Some(register(backend)?);
        Ok(())
    }

    fn on_record(
        &mut self,
        cx: &mut Context<'_, u64, u64>,
        key: &KeyContext<u64>,
        input: Pair,
        output: &mut Vec<Pair>,
    ) -> Result<()> {
        let (records, _) = self.states.as_ref().expect("opened");
        let n = records.get(cx.backend, key, &())?.unwrap_or(0);
        records.put(cx.backend, key, &(), n + 1)?;
        if P::PASS {
            output.push(input);
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        _cx: &mut Context<'_, u64, u64>,
        _timer: Timer<u64, u64>,
        _output: &mut Vec<Pair>,
    ) -> Result<()> {
        Ok(())
    }
}

/// Per key of `pick`, the records of epochs `0..epochs`.
fn pipeline_model(epochs: u64, pick: fn(&Pair) -> u64) -> BTreeMap<u64, (u64, u64)> {
    let mut out: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for epoch in 0..epochs {
        for j in 0..PAIRS_PER_EPOCH {
            out.entry(pick(&pair_of(epoch, j))).or_default().0 += 1;
        }
    }
    out
}

/// Runs the pipeline A (keyed by `a`, passing records on) → B (keyed by `b`, counting) on
/// `workers` threads for epochs up to `epochs`, every worker sending all its epochs before it
/// steps once; both operators' acknowledgements go to one committer. Returns the reports.
fn run_pipeline(
    workers: usize,
    epochs: u64,
    settings: Checkpointing,
) -> std::result::Result<Vec<CommitReport>, String> {
    let commits = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&commits);
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let mut job = Job::start(worker, settings.clone()).map_err(|e| e.to_string())?;
        let (index, peers) = (worker.index() as u64, worker.peers() as u64);
        let from = job.resume_epoch();
        let probe = ProbeHandle::new();
        let log = Arc::clone(&log);
        let mut input = worker
            .dataflow::<u64, _, _>(|scope| -> Result<_> {
                use timely::dataflow::operators::Concatenate;
                let (input, records) = scope.new_input::<Pair>();
                let (passed, acks_a) = job.stateful(records, "a", Tally::<ByA>::default())?;
                let (out, acks_b) = job.stateful(passed, "b", Tally::<ByB>::default())?;
                let acks = scope.concatenate(vec![acks_a, acks_b]);
                job.commit(acks, move |report| log.lock().unwrap().push(report.clone()));
                out.probe_with(&probe);
                Ok(input)
            })
            .map_err(|e| e.to_string())?;
        input.advance_to(from);
        for epoch in from..epochs {
            for j in (index..PAIRS_PER_EPOCH).step_by(peers as usize) {
                input.send(pair_of(epoch, j));
            }
            input.advance_to(epoch + 1);
        }
        while probe.less_than(&epochs) {
            worker.step();
        }
        drop(input);
        while worker.step() {}
        Ok::<_, String>(())
    })?;
    for result in guards.join() {
        result??;
    }
    let commits = commits.lock().unwrap().clone();
    Ok(commits)
}

#[test]
fn chained_stateful_operators_restore_to_one_cut_and_count_nothing_twice() {
    for kind in kinds() {
        let dir = tempfile::tempdir().unwrap();
        let root: Arc<dyn CheckpointStorage> =
            Arc::new(LocalDirStorage::new(dir.path().join("root")).unwrap());
        let mut s = Checkpointing::new(Arc::clone(&root), 10, kind);
        s.retained = 100;
        // Epochs 0..=25, all sent before the first step: checkpoints at 9 and 19.
        let commits = run_pipeline(2, 26, s.clone()).unwrap();
        assert!(commits.iter().all(|c| c.outcome.is_ok()), "{commits:?}");
        // Every checkpoint holds both operators at exactly its epoch.
        let state = RootState::read(root.as_ref()).unwrap();
        assert_eq!(state.completed.len(), 2, "{kind:?}");
        for meta in state.completed.values() {
            let epoch = epoch_of(meta);
            let (a, _) = checkpoint_state(root.as_ref(), meta, "a");
            let (b, _) = checkpoint_state(root.as_ref(), meta, "b");
            assert_eq!(
                a,
                pipeline_model(epoch + 1, |p| p.0),
                "a at {epoch}, {kind:?}"
            );
            assert_eq!(
                b,
                pipeline_model(epoch + 1, |p| p.1),
                "b at {epoch}, {kind:?}"
            );
        }
        // A crash after the checkpoint at 9 completed: the one at 19 never did.
        let newest = *state.completed.keys().next_back().unwrap();
        root.delete(&statebackend::checkpoint::layout::metadata_path(newest).unwrap())
            .unwrap();
        // The restart replays 10..=25 and writes a savepoint at the last epoch.
        let savepoint: Arc<dyn CheckpointStorage> =
            Arc::new(LocalDirStorage::new(dir.path().join("savepoint")).unwrap());
        s.savepoints = vec![(25, Arc::clone(&savepoint))];
        run_pipeline(2, 26, s).unwrap();
        let (b, resume) = savepoint_state(savepoint.as_ref(), "b");
        assert_eq!(resume, Some(26));
        let counted: u64 = b.values().map(|(n, _)| n).sum();
        assert_eq!(counted, 26 * PAIRS_PER_EPOCH, "{kind:?}");
        assert_eq!(b, pipeline_model(26, |p| p.1), "{kind:?}");
        let (a, _) = savepoint_state(savepoint.as_ref(), "a");
        assert_eq!(a, pipeline_model(26, |p| p.0), "{kind:?}");
    }
}

#[test]
fn a_fresh_start_never_reopens_a_leftover_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let run = |name: &str, replace: bool| {
        let root: Arc<dyn CheckpointStorage> =
            Arc::new(LocalDirStorage::new(dir.path().join(format!("root-{name}"))).unwrap());
        let savepoint: Arc<dyn CheckpointStorage> =
            Arc::new(LocalDirStorage::new(dir.path().join(format!("savepoint-{name}"))).unwrap());
        let mut s = Checkpointing::new(root, 3, BackendKind::RocksDb);
        s.working_dir = Some(work.clone());
        s.replace_working_dirs = replace;
        s.savepoints = vec![(9, Arc::clone(&savepoint))];
        run_job_with(1, 10, s, Close::AfterLastEpoch, None)
            .map(|_| savepoint_state(savepoint.as_ref(), "counting").0)
    };
    // The savepoint at the last epoch, 9, taken while the input runs.
    let expected = model_at(9);
    assert_eq!(run("first", true).unwrap(), expected);
    // A second fresh run (a new root: nothing to restore) into the same working directory
    // starts empty, not from the first run's database.
    assert_eq!(run("second", true).unwrap(), expected);
    // A run that died leaves its database marked as not closed cleanly: a fresh start
    // replaces it.
    std::fs::write(work.join("counting-0").join("db.open"), b"").unwrap();
    assert_eq!(run("after-crash", true).unwrap(), expected);
    // Told not to replace, a fresh start refuses the directory, naming it, and leaves it as
    // it is.
    let refused = run("refused", false);
    assert!(
        matches!(&refused, Err(e) if e.contains("counting-0")),
        "{refused:?}"
    );
    assert!(work.join("counting-0").join("db").exists());
}

/// What [`Job::start`] returned on each worker: the checkpoint restored, the resume epoch and
/// the skipped checkpoints' ids; or the error, with whether it is
/// [`statebackend::Error::NoVerifiedCheckpoint`].
type Started = std::result::Result<(Option<u64>, u64, Vec<u64>), (bool, String)>;

/// Starts a job on `workers` threads and stops there (no dataflow).
fn start_only(workers: usize, settings: Checkpointing) -> Vec<Started> {
    let guards = timely::execute(
        timely::Config::process(workers),
        move |worker| match Job::start(worker, settings.clone()) {
            Ok(job) => Ok((
                job.restored_checkpoint(),
                job.resume_epoch(),
                job.skipped_checkpoints().iter().map(|s| s.id).collect(),
            )),
            Err(e) => Err((
                matches!(e, statebackend::Error::NoVerifiedCheckpoint { .. }),
                e.to_string(),
            )),
        },
    )
    .unwrap();
    guards.join().into_iter().map(|r| r.unwrap()).collect()
}

/// Deletes a file of each of the `n` newest checkpoints of `root`; returns their ids.
fn damage_newest(root: &dyn CheckpointStorage, n: usize) -> Vec<u64> {
    let state = RootState::read(root).unwrap();
    let mut ids = Vec::new();
    for meta in state.completed.values().rev().take(n) {
        root.delete(&meta.files().next().unwrap().path).unwrap();
        ids.push(meta.id);
    }
    ids.sort_unstable();
    ids
}

/// Every path in `root`.
fn listing(root: &dyn CheckpointStorage) -> std::collections::BTreeSet<String> {
    root.list(None)
        .unwrap()
        .into_iter()
        .map(|o| o.path.to_string())
        .collect()
}

#[test]
fn a_root_whose_every_checkpoint_is_damaged_fails_the_start_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let root: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(dir.path()).unwrap());
    run_job(2, 20, settings(Arc::clone(&root), BackendKind::Heap)).unwrap();
    let damaged = damage_newest(root.as_ref(), usize::MAX);
    assert_eq!(damaged.len(), 6);
    let before = listing(root.as_ref());
    for started in start_only(2, settings(Arc::clone(&root), BackendKind::Heap)) {
        let Err((typed, message)) = started else {
            panic!("started on a root of damaged checkpoints: {started:?}");
        };
        assert!(typed, "{message}");
        for id in &damaged {
            assert!(message.contains(&format!("{id} (")), "{id}: {message}");
        }
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
    }
    // Nothing of the checkpoints was touched.
    let after = listing(root.as_ref());
    assert!(
        before
            .iter()
            .filter(|p| p.starts_with("chk-"))
            .all(|p| after.contains(p))
    );
}

#[test]
fn starting_empty_past_a_damaged_root_must_be_asked_for_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(dir.path()).unwrap());
    run_job(2, 20, settings(Arc::clone(&root), BackendKind::Heap)).unwrap();
    let damaged = damage_newest(root.as_ref(), usize::MAX);
    let before = listing(root.as_ref());
    let mut s = settings(Arc::clone(&root), BackendKind::Heap);
    s.retained = 2;
    s.start_empty_if_all_damaged = true;
    for started in start_only(2, s.clone()) {
        assert_eq!(started, Ok((None, 0, damaged.clone())));
    }
    // A run from empty state, with a retention of two: its checkpoints hold the state from
    // epoch 0, and every damaged checkpoint's files are still there after it (the run keeps
    // them until it has retained two checkpoints of its own).
    let commits = run_job(2, 6, s).unwrap();
    assert_eq!(
        commits
            .iter()
            .map(|c| (c.epoch, c.outcome.is_ok()))
            .collect::<Vec<_>>(),
        vec![(2, true), (5, true)]
    );
    let after = listing(root.as_ref());
    let lost: Vec<&String> = before
        .iter()
        .filter(|p| p.starts_with("chk-") || p.starts_with("shared"))
        .filter(|p| !after.contains(*p))
        .collect();
    assert!(lost.is_empty(), "deleted: {lost:?}");
    let state = RootState::read(root.as_ref()).unwrap();
    let newest = state.completed.values().next_back().unwrap();
    assert_eq!(epoch_of(newest), 5);
    assert_eq!(
        checkpoint_state(root.as_ref(), newest, "counting"),
        (model_at(5), Some(6))
    );
}

#[test]
fn a_fallback_past_a_damaged_newest_checkpoint_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(dir.path()).unwrap());
    run_job(2, 20, settings(Arc::clone(&root), BackendKind::Heap)).unwrap();
    let newest = damage_newest(root.as_ref(), 1);
    let state = RootState::read(root.as_ref()).unwrap();
    let previous = *state.completed.keys().rev().nth(1).unwrap();
    for started in start_only(2, settings(Arc::clone(&root), BackendKind::Heap)) {
        // Restored the checkpoint at epoch 14, resumed at 15, the one at 17 skipped.
        assert_eq!(started, Ok((Some(previous), 15, newest.clone())));
    }
}

#[test]
fn a_savepoint_at_an_epoch_the_run_has_passed_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let root: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::new(dir.path().join("root")).unwrap());
    let early: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::new(dir.path().join("early")).unwrap());
    let mut first = settings(Arc::clone(&root), BackendKind::Heap);
    first.savepoints = vec![(5, Arc::clone(&early))];
    run_job(2, 20, first.clone()).unwrap();
    // A restart with the same settings: the savepoint at 5 was written by the first run.
    assert!(
        start_only(2, first.clone()).iter().all(|s| s.is_ok()),
        "a savepoint written before refused the restart"
    );
    // One at 5 into a directory that holds none: the run resumes at 18 and would write nothing.
    let missed = dir.path().join("missed");
    let mut second = first;
    second.savepoints = vec![(
        5,
        Arc::new(LocalDirStorage::new(&missed).unwrap()) as Arc<dyn CheckpointStorage>,
    )];
    for started in start_only(2, second) {
        let Err((_, message)) = started else {
            panic!("started with a passed savepoint epoch: {started:?}");
        };
        assert!(message.contains("epoch 5"), "{message}");
        assert!(message.contains("18"), "{message}");
        assert!(message.contains(&missed.display().to_string()), "{message}");
    }
}

#[test]
fn a_start_from_a_missing_savepoint_names_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::new(dir.path().join("root")).unwrap());
    let nowhere = dir.path().join("no-savepoint-here");
    let mut s = settings(root, BackendKind::Heap);
    s.start = StartFrom::Savepoint(Arc::new(LocalDirStorage::new(&nowhere).unwrap()));
    for started in start_only(2, s) {
        let Err((_, message)) = started else {
            panic!("started from a missing savepoint: {started:?}");
        };
        assert!(message.contains("_metadata"), "{message}");
        assert!(
            message.contains(&nowhere.display().to_string()),
            "{message}"
        );
    }
}

/// Each record `k` of epoch `e` sets two event-time timers at `e + 1`: namespace 0, and a
/// victim, namespace 100. Timer 0 deletes the victim and sets timer 1 at the same time; timers
/// 1 and 2 set the next one, up to 3. Every timer emits `(key, namespace)`.
#[derive(Default)]
struct Chain;

impl KeyedLogic for Chain {
    type Input = u64;
    type Output = (u64, u64, TimeDomain);
    type Key = u64;
    type Namespace = u64;

    fn key(input: &u64) -> u64 {
        *input
    }

    fn open(&mut self, _backend: &mut AnyBackend) -> Result<()> {
        Ok(())
    }

    fn on_record(
        &mut self,
        cx: &mut Context<'_, u64, u64>,
        key: &KeyContext<u64>,
        _input: u64,
        _output: &mut Vec<(u64, u64, TimeDomain)>,
    ) -> Result<()> {
        let at = (cx.epoch + 1) as i64;
        cx.timers
            .register_event_time_timer(cx.backend, key, &0, at)?;
        cx.timers
            .register_event_time_timer(cx.backend, key, &100, at)
    }

    fn on_timer(
        &mut self,
        cx: &mut Context<'_, u64, u64>,
        timer: Timer<u64, u64>,
        output: &mut Vec<(u64, u64, TimeDomain)>,
    ) -> Result<()> {
        let n = timer.namespace;
        if n == 0 {
            cx.timers
                .delete_event_time_timer(cx.backend, &timer.key, &100, timer.timestamp)?;
        }
        if n < 3 {
            // At the same time: due now.
            cx.timers.register_event_time_timer(
                cx.backend,
                &timer.key,
                &(n + 1),
                timer.timestamp,
            )?;
        }
        output.push((*timer.key.key(), n, cx.domain));
        Ok(())
    }
}

/// Runs `logic` on one worker: the records of `epochs` (epoch, keys) sent, the input
/// advanced past each; `between(epoch)` runs after each epoch was sent and the output's
/// frontier passed it. Returns every output with its time.
fn run_one_worker<L, F>(
    logic: L,
    settings: Checkpointing,
    epochs: Vec<(u64, Vec<u64>)>,
    close: Close,
    between: F,
) -> Vec<(u64, (u64, u64, TimeDomain))>
where
    L: KeyedLogic<Input = u64, Output = (u64, u64, TimeDomain)> + Send,
    F: Fn(u64) + Send + Sync + 'static,
{
    let outputs = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&outputs);
    let logic = Mutex::new(Some(logic));
    timely::execute(timely::Config::thread(), move |worker| {
        let mut job = Job::start(worker, settings.clone()).unwrap();
        let logic = logic.lock().unwrap().take().unwrap();
        let probe = ProbeHandle::new();
        let sink = Arc::clone(&sink);
        let mut input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, records) = scope.new_input::<u64>();
            let (out, acks) = job.stateful(records, "logic", logic).unwrap();
            job.commit(acks, |_| {});
            out.probe_with(&probe)
                .sink(Pipeline, "Collect", move |(input, _)| {
                    input.for_each(|time, data| {
                        let t = *time.least().expect("a time");
                        sink.lock().unwrap().extend(data.drain(..).map(|d| (t, d)));
                    })
                });
            input
        });
        for (epoch, records) in &epochs {
            input.advance_to(*epoch);
            for r in records {
                input.send(*r);
            }
            input.advance_to(epoch + 1);
            if close == Close::AfterLastEpoch {
                while probe.less_than(&(epoch + 1)) {
                    worker.step();
                }
                between(*epoch);
            }
        }
        drop(input);
        while worker.step() {}
    })
    .unwrap();
    outputs.lock().unwrap().clone()
}

#[test]
fn timers_set_or_deleted_by_a_firing_timer_count_in_the_same_pass() {
    for close in [Close::AfterLastEpoch, Close::AtOnce] {
        let dir = tempfile::tempdir().unwrap();
        let root: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(dir.path()).unwrap());
        let epochs: Vec<(u64, Vec<u64>)> = (0..4)
            .map(|e| (e, (0..5).map(|j| e * 10 + j).collect()))
            .collect();
        let outputs = run_one_worker(
            Chain,
            Checkpointing::new(root, 2, BackendKind::Heap),
            epochs,
            close,
            |_| {},
        );
        let mut per_namespace: BTreeMap<u64, usize> = BTreeMap::new();
        for (time, (key, n, domain)) in &outputs {
            assert_eq!(*domain, TimeDomain::EventTime);
            // At the timer's own time, the epoch after its record's.
            assert_eq!(*time, key / 10 + 1, "timer {n} of key {key}");
            *per_namespace.entry(*n).or_default() += 1;
        }
        // Every chain ran to its end, the last ones at the end of the input; no victim fired.
        assert_eq!(
            per_namespace,
            BTreeMap::from([(0, 20), (1, 20), (2, 20), (3, 20)]),
            "input closed {}",
            if close == Close::AtOnce {
                "at once"
            } else {
                "after the last epoch"
            }
        );
    }
}

/// Each record `k` sets a processing-time timer at 1,000; the timer emits `(key, 0)`.
#[derive(Default)]
struct Alarm;

impl KeyedLogic for Alarm {
    type Input = u64;
    type Output = (u64, u64, TimeDomain);
    type Key = u64;
    type Namespace = u64;

    fn key(input: &u64) -> u64 {
        *input
    }

    fn open(&mut self, _backend: &mut AnyBackend) -> Result<()> {
        Ok(())
    }

    fn on_record(
        &mut self,
        cx: &mut Context<'_, u64, u64>,
        key: &KeyContext<u64>,
        _input: u64,
        _output: &mut Vec<(u64, u64, TimeDomain)>,
    ) -> Result<()> {
        cx.timers
            .register_processing_time_timer(cx.backend, key, &0, 1_000)
    }

    fn on_timer(
        &mut self,
        cx: &mut Context<'_, u64, u64>,
        timer: Timer<u64, u64>,
        output: &mut Vec<(u64, u64, TimeDomain)>,
    ) -> Result<()> {
        output.push((*timer.key.key(), cx.epoch, cx.domain));
        Ok(())
    }
}

#[test]
fn processing_time_timers_fire_by_the_jobs_clock() {
    let dir = tempfile::tempdir().unwrap();
    let root: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(dir.path()).unwrap());
    let now = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let mut s = Checkpointing::new(root, 0, BackendKind::Heap);
    let clock = Arc::clone(&now);
    s.clock = ProcessingClock::new(move || clock.load(std::sync::atomic::Ordering::SeqCst));
    // Epoch 0 registers the timers at 1,000; the clock then reads 2,000 from epoch 1 on.
    let epochs = vec![(0, vec![1, 2, 3]), (1, vec![]), (2, vec![])];
    let hands = Arc::clone(&now);
    let outputs = run_one_worker(Alarm, s, epochs, Close::AfterLastEpoch, move |epoch| {
        if epoch == 0 {
            hands.store(2_000, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let mut fired: Vec<(u64, u64)> = outputs
        .iter()
        .map(|(time, (key, epoch, domain))| {
            assert_eq!(*domain, TimeDomain::ProcessingTime);
            assert_eq!(time, epoch, "sent at the epoch the logic was told");
            (*key, *epoch)
        })
        .collect();
    fired.sort_unstable();
    // Each fired once, while epoch 1 was open.
    assert_eq!(fired, vec![(1, 1), (2, 1), (3, 1)]);
}

/// A record of the order-sensitive job: `(key, value)`; the value is `epoch * 1000 + j`.
type Keyed = (u64, u64);

/// Records per epoch in the order-sensitive job, over [`CHAIN_KEYS`] keys: several per key and
/// epoch, sent by different workers.
const CHAIN_PER_EPOCH: u64 = 12;
const CHAIN_KEYS: u64 = 5;

fn keyed_of(epoch: u64, j: u64) -> Keyed {
    ((epoch * 3 + j) % CHAIN_KEYS, epoch * 1000 + j)
}

/// The next running hash of a key after `value`: depends on the order of the values.
fn chain(hash: u64, value: u64) -> u64 {
    hash.wrapping_mul(1_000_003).wrapping_add(value + 1)
}

/// Per key, a running hash of its values in the order the logic gets them (in the `records`
/// state of [`register`]) and how many it got (in `fired`): order-sensitive logic, as
/// sessions and pattern matching are.
#[derive(Default)]
struct RunningHash {
    states: Option<States>,
}

impl KeyedLogic for RunningHash {
    type Input = Keyed;
    type Output = ();
    type Key = u64;
    type Namespace = u64;

    fn key(input: &Keyed) -> u64 {
        input.0
    }

    fn open(&mut self, backend: &mut AnyBackend) -> Result<()> {
        self.states = Some(register(backend)?);
        Ok(())
    }

    fn on_record(
        &mut self,
        cx: &mut Context<'_, u64, u64>,
        key: &KeyContext<u64>,
        input: Keyed,
        _output: &mut Vec<()>,
    ) -> Result<()> {
        let (hash, count) = self.states.as_ref().expect("opened");
        let h = hash.get(cx.backend, key, &())?.unwrap_or(0);
        hash.put(cx.backend, key, &(), chain(h, input.1))?;
        let n = count.get(cx.backend, key, &())?.unwrap_or(0);
        count.put(cx.backend, key, &(), n + 1)
    }

    fn on_timer(
        &mut self,
        _cx: &mut Context<'_, u64, u64>,
        _timer: Timer<u64, u64>,
        _output: &mut Vec<()>,
    ) -> Result<()> {
        Ok(())
    }
}

/// Per key, (the running hash of its values of epochs `0..epochs` in epoch order and, within
/// an epoch, by value; how many).
fn hash_model(epochs: u64) -> BTreeMap<u64, (u64, u64)> {
    let mut out: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for epoch in 0..epochs {
        for j in 0..CHAIN_PER_EPOCH {
            let (key, value) = keyed_of(epoch, j);
            let entry = out.entry(key).or_default();
            *entry = (chain(entry.0, value), entry.1 + 1);
        }
    }
    out
}

/// Runs the order-sensitive job on `workers` threads for epochs up to `epochs`, its records
/// delivered as `delivery` says; every worker sends all its epochs before it steps once.
fn run_chain(
    workers: usize,
    epochs: u64,
    settings: Checkpointing,
    delivery: Delivery<Keyed>,
) -> std::result::Result<Vec<CommitReport>, String> {
    let commits = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&commits);
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let mut job = Job::start(worker, settings.clone()).map_err(|e| e.to_string())?;
        let (index, peers) = (worker.index() as u64, worker.peers() as u64);
        let from = job.resume_epoch();
        let probe = ProbeHandle::new();
        let log = Arc::clone(&log);
        let mut input = worker
            .dataflow::<u64, _, _>(|scope| -> Result<_> {
                let (input, records) = scope.new_input::<Keyed>();
                let (out, acks) =
                    job.stateful_with(records, "hash", RunningHash::default(), delivery)?;
                job.commit(acks, move |report| log.lock().unwrap().push(report.clone()));
                out.probe_with(&probe);
                Ok(input)
            })
            .map_err(|e| e.to_string())?;
        input.advance_to(from);
        for epoch in from..epochs {
            for j in (index..CHAIN_PER_EPOCH).step_by(peers as usize) {
                input.send(keyed_of(epoch, j));
            }
            input.advance_to(epoch + 1);
        }
        while probe.less_than(&epochs) {
            worker.step();
        }
        drop(input);
        while worker.step() {}
        Ok::<_, String>(())
    })?;
    for result in guards.join() {
        result??;
    }
    let commits = commits.lock().unwrap().clone();
    Ok(commits)
}

/// Runs the order-sensitive job fresh into a root of its own, with checkpoints every 5 epochs
/// and a savepoint at the end of the input; returns the savepoint's state.
fn chain_result(
    workers: usize,
    epochs: u64,
    delivery: Delivery<Keyed>,
) -> BTreeMap<u64, (u64, u64)> {
    let dir = tempfile::tempdir().unwrap();
    let root: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::new(dir.path().join("root")).unwrap());
    let savepoint: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::new(dir.path().join("savepoint")).unwrap());
    let mut s = Checkpointing::new(root, 5, BackendKind::Heap);
    s.savepoints = vec![(1000, Arc::clone(&savepoint))];
    run_chain(workers, epochs, s, delivery).unwrap();
    let (state, resume) = savepoint_state(savepoint.as_ref(), "hash");
    assert_eq!(resume, Some(1001));
    state
}

fn by_value(a: &Keyed, b: &Keyed) -> std::cmp::Ordering {
    a.1.cmp(&b.1)
}

#[test]
fn epoch_order_gives_order_sensitive_logic_one_result_at_any_worker_count_and_restore() {
    const EPOCHS: u64 = 30;
    let single = chain_result(1, EPOCHS, Delivery::Arrival);
    // One worker gets its records in the order it sent them: epoch order, by value within.
    assert_eq!(single, hash_model(EPOCHS));
    // The logic is order-sensitive: the same records of each epoch in reverse order give
    // another result (so arrival order, in which several workers' records of a key interleave
    // as they come, gives whatever the interleaving makes of it; not asserted, it is timing).
    let mut reversed: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for epoch in 0..EPOCHS {
        for j in (0..CHAIN_PER_EPOCH).rev() {
            let (key, value) = keyed_of(epoch, j);
            let entry = reversed.entry(key).or_default();
            *entry = (chain(entry.0, value), entry.1 + 1);
        }
    }
    assert_ne!(
        reversed, single,
        "the logic must depend on the order within an epoch"
    );
    for workers in [1, 2, 3] {
        assert_eq!(
            chain_result(workers, EPOCHS, Delivery::EpochOrderBy(by_value)),
            single,
            "epoch order at {workers} workers"
        );
    }

    // At 2 workers, a crash after the checkpoint at epoch 14 (the later ones never completed),
    // restored at 3 workers.
    for kind in kinds() {
        let dir = tempfile::tempdir().unwrap();
        let root: Arc<dyn CheckpointStorage> =
            Arc::new(LocalDirStorage::new(dir.path().join("root")).unwrap());
        let mut s = Checkpointing::new(Arc::clone(&root), 5, kind);
        s.retained = 100;
        run_chain(2, EPOCHS, s.clone(), Delivery::EpochOrderBy(by_value)).unwrap();
        let state = RootState::read(root.as_ref()).unwrap();
        for (id, meta) in &state.completed {
            let epoch = epoch_of(meta);
            let (found, _) = checkpoint_state(root.as_ref(), meta, "hash");
            assert_eq!(
                found,
                hash_model(epoch + 1),
                "checkpoint at {epoch}, {kind:?}"
            );
            if epoch > 14 {
                root.delete(&statebackend::checkpoint::layout::metadata_path(*id).unwrap())
                    .unwrap();
            }
        }
        let savepoint: Arc<dyn CheckpointStorage> =
            Arc::new(LocalDirStorage::new(dir.path().join("savepoint")).unwrap());
        s.savepoints = vec![(1000, Arc::clone(&savepoint))];
        run_chain(3, EPOCHS, s, Delivery::EpochOrderBy(by_value)).unwrap();
        let (restored, resume) = savepoint_state(savepoint.as_ref(), "hash");
        assert_eq!(resume, Some(1001));
        assert_eq!(restored, single, "restored at 3 workers, {kind:?}");
    }
}

/// Partitions of the offset source, and how many records partition `p` holds.
const PARTITIONS: u64 = 5;
fn partition_len(p: u64) -> u64 {
    30 + 7 * p
}

/// The record at `offset` of partition `p`.
fn partition_record(p: u64, offset: u64) -> u64 {
    p * 1000 + offset
}

/// Counts records per key (`records` of [`register`]) and sums them (`fired`).
#[derive(Default)]
struct Sum {
    states: Option<States>,
}

impl KeyedLogic for Sum {
    type Input = u64;
    type Output = ();
    type Key = u64;
    type Namespace = u64;

    fn key(input: &u64) -> u64 {
        input % 13
    }

    fn open(&mut self, backend: &mut AnyBackend) -> Result<()> {
        self.states = Some(register(backend)?);
        Ok(())
    }

    fn on_record(
        &mut self,
        cx: &mut Context<'_, u64, u64>,
        key: &KeyContext<u64>,
        input: u64,
        _output: &mut Vec<()>,
    ) -> Result<()> {
        let (count, sum) = self.states.as_ref().expect("opened");
        let n = count.get(cx.backend, key, &())?.unwrap_or(0);
        count.put(cx.backend, key, &(), n + 1)?;
        let s = sum.get(cx.backend, key, &())?.unwrap_or(0);
        sum.put(cx.backend, key, &(), s + input)
    }

    fn on_timer(
        &mut self,
        _cx: &mut Context<'_, u64, u64>,
        _timer: Timer<u64, u64>,
        _output: &mut Vec<()>,
    ) -> Result<()> {
        Ok(())
    }
}

/// Per key, (records, sum) of every record of every partition, each once.
fn partitions_model() -> BTreeMap<u64, (u64, u64)> {
    let mut out: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for p in 0..PARTITIONS {
        for offset in 0..partition_len(p) {
            let record = partition_record(p, offset);
            let entry = out.entry(record % 13).or_default();
            *entry = (entry.0 + 1, entry.1 + record);
        }
    }
    out
}

/// Positions the source recorded: per epoch, per partition, the offset.
type Recorded = Arc<Mutex<BTreeMap<u64, BTreeMap<u64, u64>>>>;

/// Runs a job over the partitions on `workers` threads for epochs up to `epochs`: each worker
/// reads its partitions from the position it restored (or, fresh, partitions `p % peers ==
/// index` from 0), a few records a partition and epoch (how many depends on the worker, so
/// offsets are no function of the epoch), records its position after each epoch into the job
/// and into `recorded`. Returns the positions the workers restored.
fn run_partitions(
    workers: usize,
    epochs: u64,
    settings: Checkpointing,
    rescale: Rescale,
    recorded: Recorded,
) -> std::result::Result<Vec<(u64, u64)>, String> {
    let restored = Arc::new(Mutex::new(Vec::new()));
    let restored_log = Arc::clone(&restored);
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let mut job = Job::start(worker, settings.clone()).map_err(|e| e.to_string())?;
        let (index, peers) = (worker.index() as u64, worker.peers() as u64);
        let from = job.resume_epoch();
        let position = job
            .source_position::<(u64, u64)>(rescale)
            .map_err(|e| e.to_string())?;
        let mut mine: Vec<(u64, u64)> = match (job.restored_checkpoint(), rescale) {
            (None, _) => (0..PARTITIONS)
                .filter(|p| p % peers == index)
                .map(|p| (p, 0))
                .collect(),
            (Some(_), Rescale::Split) => position.restored().to_vec(),
            (Some(_), Rescale::Union) => position
                .restored()
                .iter()
                .copied()
                .filter(|(p, _)| p % peers == index)
                .collect(),
        };
        restored_log.lock().unwrap().extend(
            position
                .restored()
                .iter()
                .copied()
                .filter(|e| mine.contains(e)),
        );
        let probe = ProbeHandle::new();
        let mut input = worker
            .dataflow::<u64, _, _>(|scope| -> Result<_> {
                let (input, records) = scope.new_input::<u64>();
                let (out, acks) = job.stateful(records, "sum", Sum::default())?;
                job.commit(acks, |_| {});
                out.probe_with(&probe);
                Ok(input)
            })
            .map_err(|e| e.to_string())?;
        input.advance_to(from);
        for epoch in from..epochs {
            for (p, offset) in &mut mine {
                let take = 1 + (epoch + *p + index) % 3;
                let end = (*offset + take).min(partition_len(*p));
                for o in *offset..end {
                    input.send(partition_record(*p, o));
                }
                *offset = end;
            }
            position
                .record(epoch, mine.clone())
                .map_err(|e| e.to_string())?;
            recorded
                .lock()
                .unwrap()
                .entry(epoch)
                .or_default()
                .extend(mine.iter().copied());
            input.advance_to(epoch + 1);
            worker.step();
        }
        while probe.less_than(&epochs) {
            worker.step();
        }
        drop(input);
        while worker.step() {}
        Ok::<_, String>(())
    })?;
    for result in guards.join() {
        result??;
    }
    let mut restored = restored.lock().unwrap().clone();
    restored.sort_unstable();
    Ok(restored)
}

#[test]
fn a_source_with_offsets_resumes_exactly_at_another_worker_count() {
    for (rescale, kind) in [
        (Rescale::Split, BackendKind::Heap),
        (Rescale::Union, BackendKind::RocksDb),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let root: Arc<dyn CheckpointStorage> =
            Arc::new(LocalDirStorage::new(dir.path().join("root")).unwrap());
        let mut s = Checkpointing::new(Arc::clone(&root), 4, kind);
        s.retained = 100;
        // Killed after epoch 8: the records read in epoch 8 are in no checkpoint; the latest
        // completed checkpoint is at epoch 7, the partitions only partly read.
        let first: Recorded = Arc::default();
        run_partitions(2, 9, s.clone(), rescale, Arc::clone(&first)).unwrap();
        let state = RootState::read(root.as_ref()).unwrap();
        let newest = state.completed.values().next_back().expect("a checkpoint");
        assert_eq!(epoch_of(newest), 7, "{rescale:?}");
        let at_7: Vec<(u64, u64)> = first.lock().unwrap()[&7].clone().into_iter().collect();
        assert!(
            at_7.iter().any(|(p, o)| *o > 0 && *o < partition_len(*p)),
            "partly read at the checkpoint: {at_7:?}"
        );

        // Restarted at 3 workers from the checkpoint at 7: the offsets restored are those at
        // 7, and every record is counted exactly once when the partitions are read to the end.
        let savepoint: Arc<dyn CheckpointStorage> =
            Arc::new(LocalDirStorage::new(dir.path().join("savepoint")).unwrap());
        s.savepoints = vec![(1000, Arc::clone(&savepoint))];
        let restored = run_partitions(3, 40, s, rescale, Arc::default()).unwrap();
        assert_eq!(restored, at_7, "restored offsets, {rescale:?}");
        let (found, resume) = savepoint_state(savepoint.as_ref(), "sum");
        assert_eq!(resume, Some(1001));
        assert_eq!(found, partitions_model(), "{rescale:?}, {kind:?}");
    }
}

/// Counts each key's records in a value state with an event-time TTL of 3 epochs, and emits
/// the count after each record: a key seen again within 3 epochs keeps counting, one seen after
/// a longer gap starts again, because the operator's frontier is the TTL's watermark.
struct ExpiringCount {
    count: Option<statebackend::state::ttl::TtlValueState<u64, (), u64>>,
    ttl: statebackend::state::ttl::StateTtlConfig,
}

impl KeyedLogic for ExpiringCount {
    type Input = u64;
    type Output = (u64, u64, TimeDomain);
    type Key = u64;
    type Namespace = u64;

    fn key(input: &u64) -> u64 {
        *input
    }

    fn open(&mut self, backend: &mut AnyBackend) -> Result<()> {
        let descriptor = ValueStateDescriptor::new("count");
        self.count = Some(backend.value_state_with_ttl(&descriptor, self.ttl)?);
        Ok(())
    }

    fn on_record(
        &mut self,
        cx: &mut Context<'_, u64, u64>,
        key: &KeyContext<u64>,
        _input: u64,
        output: &mut Vec<(u64, u64, TimeDomain)>,
    ) -> Result<()> {
        let count = self.count.as_ref().expect("opened");
        count.update(cx.backend, key, &(), |c| Some(c.map_or(1, |c| c + 1)))?;
        let now = count.get(cx.backend, key, &())?.unwrap_or(0);
        output.push((*key.key(), now, TimeDomain::EventTime));
        Ok(())
    }

    fn on_timer(
        &mut self,
        _cx: &mut Context<'_, u64, u64>,
        _timer: Timer<u64, u64>,
        _output: &mut Vec<(u64, u64, TimeDomain)>,
    ) -> Result<()> {
        Ok(())
    }
}

#[test]
fn event_time_ttl_follows_the_operators_frontier() {
    let dir = tempfile::tempdir().unwrap();
    let root: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(dir.path()).unwrap());
    let settings = Checkpointing::new(root, 0, BackendKind::Heap);
    // Key 1 at epochs 0, 2, 4 (gaps of 2: it lives on), then at 8 (a gap of 4: expired, since
    // a row written at watermark w lives until the watermark reaches w + 3).
    let epochs = vec![
        (0, vec![1]),
        (1, vec![]),
        (2, vec![1]),
        (3, vec![]),
        (4, vec![1]),
        (5, vec![]),
        (6, vec![]),
        (7, vec![]),
        (8, vec![1]),
    ];
    let ttl = statebackend::state::ttl::StateTtlConfig::new(std::time::Duration::from_millis(3))
        .with_time(statebackend::state::ttl::TtlTime::EventTime);
    let outputs = run_one_worker(
        ExpiringCount { count: None, ttl },
        settings,
        epochs,
        Close::AfterLastEpoch,
        |_| {},
    );
    let counts: Vec<(u64, u64)> = outputs.iter().map(|(t, (_, c, _))| (*t, *c)).collect();
    assert_eq!(counts, vec![(0, 1), (2, 2), (4, 3), (8, 1)]);
}

#[test]
fn processing_time_ttl_follows_the_jobs_clock() {
    let dir = tempfile::tempdir().unwrap();
    let root: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(dir.path()).unwrap());
    let now = Arc::new(std::sync::atomic::AtomicI64::new(1_000));
    let mut settings = Checkpointing::new(root, 0, BackendKind::Heap);
    let clock = Arc::clone(&now);
    settings.clock = ProcessingClock::new(move || clock.load(std::sync::atomic::Ordering::SeqCst));
    // A TTL of 100 ms on the job's clock: 1,000 at epochs 0 and 1, 1,050 at 2, 1,200 at 3.
    let ttl = statebackend::state::ttl::StateTtlConfig::new(std::time::Duration::from_millis(100));
    let epochs = vec![(0, vec![1]), (1, vec![1]), (2, vec![1]), (3, vec![1])];
    let hands = Arc::clone(&now);
    let outputs = run_one_worker(
        ExpiringCount { count: None, ttl },
        settings,
        epochs,
        Close::AfterLastEpoch,
        move |epoch| {
            let next = match epoch {
                1 => 1_050,
                2 => 1_200,
                _ => return,
            };
            hands.store(next, std::sync::atomic::Ordering::SeqCst);
        },
    );
    let counts: Vec<(u64, u64)> = outputs.iter().map(|(t, (_, c, _))| (*t, *c)).collect();
    // Written at 1,050 (epoch 2), the count has expired by 1,200 (epoch 3): it starts again.
    assert_eq!(counts, vec![(0, 1), (1, 2), (2, 3), (3, 1)]);
}
