//! The exactly-once sink ([`Job::commit_with_sink`]) in one process, against an in-memory
//! external system that outlives the runs: every record reaches the committed output once,
//! whether the input ends between checkpoints, a worker crashes between a checkpoint's
//! completion and its commit, or any single write to the root fails.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use statebackend::checkpoint::latest_restorable;
use statebackend::state::key::KeyContext;
use statebackend::storage::{CheckpointStorage, FaultMode, FaultyStorage, LocalDirStorage};
use statebackend::timely::{
    Checkpointing, CommitReport, Context, EPOCH_KEY, FINAL_CHECKPOINT_EPOCH, Job, KeyedLogic,
    TransactionId, TransactionalSink,
};
use statebackend::{
    AnyBackend, BackendKind, KeyedStateBackend, Result, Timer, ValueState, ValueStateDescriptor,
};
use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::Probe;
use timely::dataflow::operators::vec::Input;

const PER_EPOCH: u64 = 40;

/// Record `j` of epoch `e`: unique over the job.
fn record(epoch: u64, j: u64) -> u64 {
    epoch * 1_000 + j
}

/// Fails unless `output` holds every record of epochs `0..epochs` exactly once, naming the
/// first records missing and committed twice.
fn assert_exactly_once(output: &[u64], epochs: u64, context: &str) {
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for r in output {
        *seen.entry(*r).or_default() += 1;
    }
    let twice: Vec<u64> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(r, _)| *r)
        .collect();
    let missing: Vec<u64> = (0..epochs)
        .flat_map(|e| (0..PER_EPOCH).map(move |j| record(e, j)))
        .filter(|r| !seen.contains_key(r))
        .collect();
    let unexpected = seen.len() + missing.len() != (epochs * PER_EPOCH) as usize;
    assert!(
        twice.is_empty() && missing.is_empty() && !unexpected,
        "{context}: {} committed twice (first {:?}), {} missing (first {:?}), unexpected: {unexpected}",
        twice.len(),
        &twice[..twice.len().min(5)],
        missing.len(),
        &missing[..missing.len().min(5)],
    );
}

/// Counts records per key and emits each record at its epoch: keyed state and output that
/// must agree after any restore.
#[derive(Default)]
struct Echo {
    seen: Option<ValueState<u64, (), u64>>,
}

impl KeyedLogic for Echo {
    type Input = u64;
    type Output = u64;
    type Key = u64;
    type Namespace = ();

    fn key(input: &u64) -> u64 {
        input % 13
    }

    fn open(&mut self, backend: &mut AnyBackend) -> Result<()> {
        self.seen = Some(backend.value_state(&ValueStateDescriptor::new("seen"))?);
        Ok(())
    }

    fn on_record(
        &mut self,
        cx: &mut Context<'_, u64, ()>,
        key: &KeyContext<u64>,
        input: u64,
        output: &mut Vec<u64>,
    ) -> Result<()> {
        let seen = self.seen.as_ref().expect("opened");
        let n = seen.get(cx.backend, key, &())?.unwrap_or(0);
        seen.put(cx.backend, key, &(), n + 1)?;
        output.push(input);
        Ok(())
    }

    fn on_timer(
        &mut self,
        _cx: &mut Context<'_, u64, ()>,
        _timer: Timer<u64, ()>,
        _output: &mut Vec<u64>,
    ) -> Result<()> {
        Ok(())
    }
}

/// The external system: it outlives a crashed run, as a broker or a file system would.
#[derive(Default)]
struct External {
    /// Transactions begun and not committed (pre-committed or not), by name.
    staged: HashMap<String, Vec<u64>>,
    pre_committed: HashSet<String>,
    /// What readers see, by transaction.
    committed: BTreeMap<String, Vec<u64>>,
    aborted: Vec<String>,
}

impl External {
    /// Every committed record, sorted.
    fn output(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self.committed.values().flatten().copied().collect();
        all.sort_unstable();
        all
    }
}

struct MemorySink {
    external: Arc<Mutex<External>>,
    /// Set: the next commit crashes the worker first.
    crash_on_commit: Arc<AtomicBool>,
}

impl TransactionalSink for MemorySink {
    type Item = u64;
    type Transaction = String;

    fn begin(&mut self, id: TransactionId) -> Result<String> {
        let name = id.to_string();
        let mut external = self.external.lock().unwrap();
        assert!(
            !external.committed.contains_key(&name),
            "transaction {name} begun twice"
        );
        external.staged.insert(name.clone(), Vec::new());
        Ok(name)
    }

    fn write(&mut self, transaction: &mut String, items: Vec<u64>) -> Result<()> {
        let mut external = self.external.lock().unwrap();
        assert!(!external.pre_committed.contains(transaction.as_str()));
        external
            .staged
            .get_mut(transaction.as_str())
            .expect("begun")
            .extend(items);
        Ok(())
    }

    fn pre_commit(&mut self, transaction: &mut String) -> Result<()> {
        let mut external = self.external.lock().unwrap();
        external.pre_committed.insert(transaction.clone());
        Ok(())
    }

    fn commit(&mut self, transaction: String) -> Result<()> {
        if self.crash_on_commit.swap(false, Ordering::SeqCst) {
            panic!("the worker crashes before committing {transaction}");
        }
        let mut external = self.external.lock().unwrap();
        if external.committed.contains_key(&transaction) {
            return Ok(());
        }
        assert!(
            external.pre_committed.remove(&transaction),
            "{transaction} committed without a pre-commit"
        );
        let items = external.staged.remove(&transaction).expect("staged");
        external.committed.insert(transaction, items);
        Ok(())
    }

    fn abort(&mut self, transaction: String) -> Result<()> {
        let mut external = self.external.lock().unwrap();
        assert!(!external.committed.contains_key(&transaction));
        external.staged.remove(&transaction);
        external.aborted.push(transaction);
        Ok(())
    }
}

/// Runs epochs `0..epochs` (from the resume epoch) on `workers` threads, every worker sending
/// all its epochs before it steps; returns worker 0's commit reports, or the first error or
/// panic.
fn run(
    workers: usize,
    epochs: u64,
    settings: Checkpointing,
    external: &Arc<Mutex<External>>,
    crash_on_commit: &Arc<AtomicBool>,
) -> std::result::Result<Vec<CommitReport>, String> {
    run_with(workers, epochs, settings, external, crash_on_commit, true)
}

/// [`run`], with the sink or, without `with_sink`, a plain committer (the output dropped).
fn run_with(
    workers: usize,
    epochs: u64,
    settings: Checkpointing,
    external: &Arc<Mutex<External>>,
    crash_on_commit: &Arc<AtomicBool>,
    with_sink: bool,
) -> std::result::Result<Vec<CommitReport>, String> {
    let commits = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&commits);
    let external = Arc::clone(external);
    let crash = Arc::clone(crash_on_commit);
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let mut job = Job::start(worker, settings.clone()).map_err(|e| e.to_string())?;
        let (index, peers) = (worker.index() as u64, worker.peers());
        let from = job.resume_epoch();
        let probe = ProbeHandle::new();
        let log = Arc::clone(&log);
        let sink = MemorySink {
            external: Arc::clone(&external),
            crash_on_commit: Arc::clone(&crash),
        };
        let mut input = worker
            .dataflow::<u64, _, _>(|scope| -> Result<_> {
                let (input, records) = scope.new_input::<u64>();
                let (echoed, acks) = job.stateful(records, "echo", Echo::default())?;
                let echoed = echoed.probe_with(&probe);
                let on_commit =
                    move |report: &CommitReport| log.lock().unwrap().push(report.clone());
                if with_sink {
                    job.commit_with_sink(acks, echoed, "sink", sink, on_commit)?;
                } else {
                    job.commit(acks, on_commit);
                }
                Ok(input)
            })
            .map_err(|e| e.to_string())?;
        input.advance_to(from);
        for epoch in from..epochs {
            for j in (index..PER_EPOCH).step_by(peers) {
                input.send(record(epoch, j));
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

fn settings(root: Arc<dyn CheckpointStorage>) -> Checkpointing {
    Checkpointing::new(root, 10, BackendKind::Heap)
}

fn local_root(dir: &tempfile::TempDir) -> Arc<dyn CheckpointStorage> {
    Arc::new(LocalDirStorage::new(dir.path()).unwrap())
}

#[test]
fn output_after_the_last_checkpoint_commits_with_the_final_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let external = Arc::default();
    let no_crash = Arc::default();
    // Epochs 0..25 with a checkpoint every 10: epochs 20..25 follow the last one (19).
    let commits = run(2, 25, settings(local_root(&dir)), &external, &no_crash).unwrap();
    let epochs: Vec<u64> = commits.iter().map(|c| c.epoch).collect();
    assert_eq!(epochs, vec![9, 19, FINAL_CHECKPOINT_EPOCH]);
    assert!(commits.iter().all(|c| c.outcome.is_ok()));
    assert_exactly_once(&external.lock().unwrap().output(), 25, "the run");
    {
        let external = external.lock().unwrap();
        assert!(external.staged.is_empty() && external.pre_committed.is_empty());
    }
    // The root's latest checkpoint is the final one: a restart of the finished job resumes
    // past its input's end, commits nothing more and takes no checkpoint.
    let latest = latest_restorable(local_root(&dir).as_ref()).unwrap();
    assert_eq!(
        latest.engine.get(EPOCH_KEY).map(Vec::as_slice),
        Some(FINAL_CHECKPOINT_EPOCH.to_le_bytes().as_slice())
    );
    let again = run(3, 25, settings(local_root(&dir)), &external, &no_crash).unwrap();
    assert!(again.is_empty(), "{again:?}");
    assert_exactly_once(&external.lock().unwrap().output(), 25, "the restart");
}

#[test]
fn a_crash_between_a_completion_and_its_commit_is_committed_by_the_restore() {
    let dir = tempfile::tempdir().unwrap();
    let external: Arc<Mutex<External>> = Arc::default();
    let crash = Arc::new(AtomicBool::new(true));
    let crashed = run(1, 45, settings(local_root(&dir)), &external, &crash);
    assert!(crashed.is_err(), "the worker did not crash");
    // The crash came at the first commit: a checkpoint completed, nothing is committed yet,
    // and its transactions are pre-committed.
    let latest = latest_restorable(local_root(&dir).as_ref()).unwrap();
    {
        let external = external.lock().unwrap();
        assert!(external.committed.is_empty());
        assert!(!external.pre_committed.is_empty());
    }
    // Restarted at another worker count: the restore commits what the checkpoint recorded as
    // pre-committed, the replay writes the rest into new transactions.
    let commits = run(3, 45, settings(local_root(&dir)), &external, &crash).unwrap();
    assert!(commits.iter().all(|c| c.outcome.is_ok()));
    let external = external.lock().unwrap();
    assert_exactly_once(&external.output(), 45, "after the restore");
    assert!(
        external.committed.len() > 1 && latest.id >= 1,
        "{:?}",
        external.committed.keys()
    );
}

#[test]
fn a_failed_write_at_any_point_never_loses_nor_duplicates_committed_output() {
    // A clean run counts the mutating operations on the root.
    let clean_dir = tempfile::tempdir().unwrap();
    let clean = Arc::new(FaultyStorage::new(
        LocalDirStorage::new(clean_dir.path()).unwrap(),
        FaultMode::None,
    ));
    let external = Arc::default();
    let no_crash = Arc::default();
    run(2, 25, settings(clean.clone()), &external, &no_crash).unwrap();
    let operations = clean.ops();
    assert!(operations > 10, "{operations} operations");
    let (mut aborted, mut failed) = (0, 0);
    for k in 1..=operations {
        let dir = tempfile::tempdir().unwrap();
        let root = Arc::new(FaultyStorage::new(
            LocalDirStorage::new(dir.path()).unwrap(),
            FaultMode::FailAt(k),
        ));
        let external: Arc<Mutex<External>> = Arc::default();
        match run(2, 25, settings(root), &external, &no_crash) {
            Ok(commits) => {
                aborted += commits.iter().filter(|c| c.outcome.is_err()).count();
            }
            Err(e) => {
                // The start failed, or the final checkpoint aborted (the sinks then fail their
                // workers, holding pre-committed output): loud, and a restart on a storage
                // that works finishes the job.
                failed += 1;
                let final_completed = latest_restorable(local_root(&dir).as_ref())
                    .ok()
                    .and_then(|meta| meta.engine.get(EPOCH_KEY).cloned())
                    == Some(FINAL_CHECKPOINT_EPOCH.to_le_bytes().to_vec());
                let held = !external.lock().unwrap().pre_committed.is_empty();
                assert!(
                    k <= 2 || (!final_completed && held),
                    "fault at {k} failed the job: {e}"
                );
                run(2, 25, settings(local_root(&dir)), &external, &no_crash)
                    .unwrap_or_else(|e| panic!("fault at {k}: the restart failed: {e}"));
            }
        }
        assert_exactly_once(
            &external.lock().unwrap().output(),
            25,
            &format!("fault at {k}"),
        );
    }
    assert!(aborted > 0, "no fault aborted a checkpoint");
    assert!(failed > 2, "no fault hit the final checkpoint");
}

#[test]
fn a_sink_added_to_a_job_since_its_checkpoint_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let external: Arc<Mutex<External>> = Arc::default();
    let no_crash = Arc::default();
    // The job without a sink: checkpoints at 9 and 19.
    run_with(
        2,
        25,
        settings(local_root(&dir)),
        &external,
        &no_crash,
        false,
    )
    .unwrap();
    assert!(external.lock().unwrap().committed.is_empty());
    // The same job with a sink restores checkpoint 19 (the sink's state starts empty) and
    // writes what follows it exactly once.
    run(2, 30, settings(local_root(&dir)), &external, &no_crash).unwrap();
    let output = external.lock().unwrap().output();
    let expected: Vec<u64> = (20..30)
        .flat_map(|e| (0..PER_EPOCH).map(move |j| record(e, j)))
        .collect();
    assert_eq!(output.len(), expected.len());
    assert!(output == expected, "the output after checkpoint 19, once");
}
