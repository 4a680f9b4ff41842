//! End-to-end model test: a *job* of P backend instances (P changes over time) driven by random
//! steps and checked against ONE reference [`Model`] after every step.
//!
//! Steps: state operations routed to the instance owning the key's key group; checkpoints that
//! complete (with writes while the uploads run); checkpoints that abort (some instances never
//! upload); crashes (every backend and the coordinator are dropped, optionally in the middle of
//! a checkpoint, optionally with the storage "crashing" at a mutating operation; the
//! coordinator is reopened and the job restores the latest completed checkpoint, the model
//! rolls back to that checkpoint's); restores at another parallelism (1..=4) from the latest
//! checkpoint; savepoints restored into the other backend kind at a random parallelism
//! (with writes while the savepoint is written, which must not leak into it).
//!
//! After every step a few random reads are compared with the model; every ~10 steps every
//! instance is compared in full with the model restricted to its key groups, and every retained
//! checkpoint is verified. `STATEBACKEND_LONG_TESTS=1` runs 20 times as many steps.
use crate::common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use common::SplitMix64;
use common::checkpointing::{assert_matches_model, config_in, kinds, scratch};
use common::model::{Handles, Key, Model, Ns, Observation, Op, OpGenerator, apply};
use statebackend::checkpoint::{
    CheckpointCoordinator, InstanceMetadata, PendingSnapshot, RestoreMode, SnapshotMetadata,
    restore_instance, verify_files,
};
use statebackend::savepoint::{complete_savepoint, read_savepoint, restore_savepoint};
use statebackend::storage::{CheckpointStorage, FaultMode, FaultyStorage, LocalDirStorage};
use statebackend::{AnyBackend, BackendKind, KeyGroup, KeyGroupRange, KeyedStateBackend, Result};

const MAX_PARALLELISM: u32 = 128;
const KEYS: usize = 60;
const SEEDS: [u64; 6] = [
    0x5eed_0001,
    0x5eed_0002,
    0x5eed_0003,
    0x5eed_0004,
    0x5eed_0005,
    0x5eed_0006,
];
const STEPS_PER_SEED: usize = 45;

fn long_runs() -> bool {
    std::env::var("STATEBACKEND_LONG_TESTS").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The key of every operation but `Op::Keys`.
fn op_key(op: &Op) -> Option<&Key> {
    use Op::*;
    match op {
        ValueGet(k, _)
        | ValuePut(k, ..)
        | ValueClear(k, _)
        | ListGet(k, _)
        | ListAppend(k, ..)
        | ListReplace(k, ..)
        | ListClear(k, _)
        | MapGet(k, ..)
        | MapPut(k, ..)
        | MapRemove(k, ..)
        | MapContains(k, ..)
        | MapEntries(k, _)
        | MapIsEmpty(k, _)
        | MapClear(k, _)
        | ReducingAdd(k, ..)
        | ReducingGet(k, _)
        | AggregatingAdd(k, ..)
        | AggregatingGet(k, _) => Some(k),
        Keys(..) => None,
    }
}

/// The running instances of the job.
struct Job {
    kind: BackendKind,
    backends: Vec<AnyBackend>,
    handles: Vec<Handles>,
}

impl Job {
    fn parallelism(&self) -> u32 {
        self.backends.len() as u32
    }

    fn from_backends(kind: BackendKind, mut backends: Vec<AnyBackend>) -> Result<Self> {
        let parallelism = backends.len() as u32;
        let mut handles = Vec::new();
        for (i, b) in backends.iter_mut().enumerate() {
            assert_eq!(b.backend_kind(), kind);
            assert_eq!(
                b.key_group_range(),
                KeyGroupRange::for_operator(MAX_PARALLELISM, parallelism, i as u32)?
            );
            handles.push(Handles::register(b)?);
        }
        Ok(Self {
            kind,
            backends,
            handles,
        })
    }

    fn empty(kind: BackendKind, parallelism: u32, dir: &Path) -> Result<Self> {
        let backends = (0..parallelism)
            .map(|i| {
                let range = KeyGroupRange::for_operator(MAX_PARALLELISM, parallelism, i)?;
                AnyBackend::open(&config_in(kind, range, dir))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_backends(kind, backends)
    }

    /// The instance owning `key`, routed as an engine would.
    fn owner(&self, key: &Key) -> Result<usize> {
        let group = self.backends[0].key_group_of(key)?;
        Ok(
            KeyGroupRange::operator_for_key_group(MAX_PARALLELISM, self.parallelism(), group)?
                as usize,
        )
    }

    /// Applies `op` to the instance owning its key; `Op::Keys` to every instance, as the union.
    fn apply(&mut self, op: &Op) -> Result<Observation> {
        if let Some(key) = op_key(op) {
            let i = self.owner(key)?;
            return apply(&mut self.backends[i], &self.handles[i], op);
        }
        let mut union = BTreeSet::new();
        for (b, h) in self.backends.iter_mut().zip(&self.handles) {
            match apply(b, h, op)? {
                Observation::Keys(keys) => {
                    for pair in keys {
                        assert!(union.insert(pair.clone()), "{pair:?} in two instances");
                    }
                }
                other => panic!("{op:?} observed {other:?}"),
            }
        }
        Ok(Observation::Keys(union))
    }
}

#[derive(Debug, Default)]
struct Stats {
    steps: usize,
    ops: usize,
    ops_during_upload: usize,
    completed: usize,
    aborted: usize,
    crashes: usize,
    crashes_mid_checkpoint: usize,
    injected_storage_crashes: usize,
    rescales: usize,
    switches: usize,
    restores: usize,
    full_checks: usize,
    cheap_reads: usize,
    /// Wall time per step kind.
    time: BTreeMap<&'static str, std::time::Duration>,
}

struct Engine {
    seed: u64,
    root: tempfile::TempDir,
    faulty: Arc<FaultyStorage<LocalDirStorage>>,
    storage: Arc<dyn CheckpointStorage>,
    coordinator: CheckpointCoordinator,
    /// Completed checkpoints kept: 1 to 3 depending on the seed.
    retained: usize,
    job: Job,
    model: Model,
    /// The model at the snapshot of every checkpoint that may have completed.
    models: BTreeMap<u64, Model>,
    last_id: u64,
    rng: SplitMix64,
    ops: OpGenerator,
    groups: HashMap<Key, KeyGroup>,
    savepoints: usize,
    step: usize,
    stats: Stats,
}

impl Engine {
    fn new(seed: u64) -> Result<Self> {
        let root = scratch();
        let faulty = Arc::new(FaultyStorage::new(
            LocalDirStorage::new(root.path().join("checkpoints"))?,
            FaultMode::None,
        ));
        let storage: Arc<dyn CheckpointStorage> = faulty.clone();
        let retained = 1 + (seed % 3) as usize;
        let coordinator = CheckpointCoordinator::open(Arc::clone(&storage), retained)?;
        let mut rng = SplitMix64::new(seed);
        let all = kinds();
        let kind = all[rng.below(all.len() as u64) as usize];
        let parallelism = 1 + rng.below(4) as u32;
        let job = Job::empty(kind, parallelism, root.path())?;
        let mut groups = HashMap::new();
        for i in 0..KEYS {
            let key = format!("key-{i}");
            let group = job.backends[0].key_group_of(&key)?;
            groups.insert(key, group);
        }
        Ok(Self {
            seed,
            root,
            faulty,
            storage,
            coordinator,
            retained,
            job,
            model: Model::default(),
            models: BTreeMap::new(),
            last_id: 0,
            rng,
            ops: OpGenerator::new(seed ^ 0xA5A5_A5A5, KEYS, |_| true),
            groups,
            savepoints: 0,
            step: 0,
            stats: Stats::default(),
        })
    }

    fn next_id(&mut self) -> u64 {
        self.last_id = self.coordinator.next_checkpoint_id().max(self.last_id + 1);
        self.last_id
    }

    fn ctx(&self) -> String {
        format!(
            "seed {:#x} step {} (retained {}, {} x{})",
            self.seed,
            self.step,
            self.retained,
            self.job.kind,
            self.job.parallelism()
        )
    }

    fn op(&mut self) -> Result<()> {
        let op = self.ops.next_op();
        let expected = self.model.apply(&op);
        let actual = self.job.apply(&op)?;
        assert_eq!(actual, expected, "{}: {op:?}", self.ctx());
        self.stats.ops += 1;
        Ok(())
    }

    fn run_ops(&mut self, n: usize) -> Result<()> {
        for _ in 0..n {
            self.op()?;
        }
        Ok(())
    }

    /// A few random point reads, routed like writes.
    fn cheap_check(&mut self) -> Result<()> {
        for _ in 0..6 {
            let key = format!("key-{}", self.rng.below(KEYS as u64));
            let ns = self.rng.below(3) as Ns;
            let op = match self.rng.below(6) {
                0 => Op::ValueGet(key, ns),
                1 => Op::ListGet(key, ns),
                2 => Op::MapEntries(key, ns),
                3 => Op::ReducingGet(key, ns),
                4 => Op::AggregatingGet(key, ns),
                _ => Op::Keys("map", Some(ns)),
            };
            let expected = self.model.apply(&op);
            assert_eq!(self.job.apply(&op)?, expected, "{}: {op:?}", self.ctx());
            self.stats.cheap_reads += 1;
        }
        Ok(())
    }

    /// Every instance holds exactly the model restricted to its key groups.
    fn full_check(&mut self) -> Result<()> {
        let parallelism = self.job.parallelism();
        let mut seen = Model::default();
        for i in 0..self.job.backends.len() {
            let range = self.job.backends[i].key_group_range();
            assert_eq!(
                range,
                KeyGroupRange::for_operator(MAX_PARALLELISM, parallelism, i as u32)?
            );
            let own = restricted(&self.model, &self.groups, range);
            assert_matches_model(&mut self.job.backends[i], &self.job.handles[i], &own)?;
            seen.absorb(own);
        }
        assert_eq!(seen, self.model, "{}", self.ctx());
        for meta in self.coordinator.completed() {
            verify_files(self.storage.as_ref(), meta)?;
        }
        self.stats.full_checks += 1;
        Ok(())
    }

    /// No checkpoint in flight: nothing unreferenced survives, retention holds.
    fn check_root(&self) -> Result<()> {
        assert!(self.coordinator.completed().count() <= self.retained);
        let orphans = self.coordinator.orphans()?;
        assert!(orphans.is_empty(), "{}: orphans {orphans:?}", self.ctx());
        Ok(())
    }

    /// The synchronous part on every instance.
    fn snapshot_all(&mut self, id: u64) -> Result<Vec<PendingSnapshot>> {
        self.job
            .backends
            .iter_mut()
            .map(|b| b.snapshot(id))
            .collect()
    }

    /// Uploads `pending` on one thread each while `during` operations run on the job.
    fn upload_during_ops(
        &mut self,
        pending: Vec<PendingSnapshot>,
        during: usize,
    ) -> Result<Vec<InstanceMetadata>> {
        let storage = Arc::clone(&self.storage);
        let (ops, uploads) = std::thread::scope(|scope| {
            let threads: Vec<_> = pending
                .into_iter()
                .map(|p| {
                    let storage = Arc::clone(&storage);
                    scope.spawn(move || p.upload(storage.as_ref()))
                })
                .collect();
            let ops = self.run_ops(during);
            let uploads: Vec<_> = threads
                .into_iter()
                .map(|t| t.join().expect("upload thread panicked"))
                .collect();
            (ops, uploads)
        });
        ops?;
        self.stats.ops_during_upload += during;
        uploads
            .into_iter()
            .map(|u| u.map(|(meta, _)| meta))
            .collect()
    }

    /// A checkpoint of the whole job that completes; operations continue during the uploads.
    fn checkpoint_complete(&mut self) -> Result<SnapshotMetadata> {
        let id = self.next_id();
        self.coordinator.begin(id)?;
        let pending = self.snapshot_all(id)?;
        let at_snapshot = self.model.clone();
        let during = self.rng.below(40) as usize;
        let instances = self.upload_during_ops(pending, during)?;
        self.models.insert(id, at_snapshot);
        let meta = self.coordinator.complete(id, instances)?.clone();
        assert_eq!(meta.instances.len(), self.job.backends.len());
        for b in &mut self.job.backends {
            let range = b.key_group_range();
            let part = meta
                .instances
                .iter()
                .find(|i| i.key_groups == range)
                .expect("every instance is in the checkpoint");
            b.notify_checkpoint_complete(part)?;
        }
        let retained: BTreeSet<u64> = self.coordinator.completed().map(|m| m.id).collect();
        self.models.retain(|id, _| retained.contains(id));
        self.stats.completed += 1;
        Ok(meta)
    }

    /// A checkpoint that aborts: some instances upload, the others never do.
    fn checkpoint_abort(&mut self) -> Result<()> {
        let id = self.next_id();
        self.coordinator.begin(id)?;
        let mut pending = self.snapshot_all(id)?;
        let uploaded = self.rng.below(pending.len() as u64 + 1) as usize;
        pending.truncate(uploaded);
        let during = self.rng.below(20) as usize;
        self.upload_during_ops(pending, during)?;
        self.coordinator.abort(id)?;
        self.stats.aborted += 1;
        Ok(())
    }

    /// Restores every instance of `meta` into a job of the checkpoint's kind at `parallelism`.
    fn restore_job(&mut self, meta: &SnapshotMetadata, parallelism: u32) -> Result<()> {
        let kind = meta.instances[0].backend;
        assert!(meta.instances.iter().all(|i| i.backend == kind));
        let mut backends = Vec::new();
        for i in 0..parallelism {
            let range = KeyGroupRange::for_operator(MAX_PARALLELISM, parallelism, i)?;
            let mode = if self.rng.below(2) == 0 {
                RestoreMode::Claim
            } else {
                RestoreMode::NoClaim
            };
            backends.push(restore_instance(
                self.storage.as_ref(),
                meta,
                &config_in(kind, range, self.root.path()),
                mode,
            )?);
            self.stats.restores += 1;
        }
        self.job = Job::from_backends(kind, backends)?;
        self.model = self
            .models
            .get(&meta.id)
            .unwrap_or_else(|| panic!("{}: no model for checkpoint {}", self.ctx(), meta.id))
            .clone();
        Ok(())
    }

    /// Drops the job and the coordinator (optionally mid-checkpoint, optionally with the storage
    /// failing from some mutating operation on), reopens, restores the latest checkpoint.
    fn crash(&mut self) -> Result<()> {
        match self.rng.below(3) {
            0 => {}
            1 => {
                // Killed while a checkpoint is in flight: some instances uploaded.
                let id = self.next_id();
                self.coordinator.begin(id)?;
                let mut pending = self.snapshot_all(id)?;
                let uploaded = self.rng.below(pending.len() as u64 + 1) as usize;
                pending.truncate(uploaded);
                self.upload_during_ops(pending, 5)?;
                self.stats.crashes_mid_checkpoint += 1;
            }
            _ => {
                // The storage dies at the k-th mutating operation of the next checkpoint (if
                // the checkpoint needs fewer, it completes and the crash happens afterwards).
                let k = 1 + self.rng.below(24);
                self.faulty
                    .set_mode(FaultMode::CrashAt(self.faulty.ops() + k));
                let outcome = self.checkpoint_complete();
                let crashed =
                    matches!(self.faulty.mode(), FaultMode::CrashAt(at) if self.faulty.ops() >= at);
                // Completion reports success once `_metadata` is durable, so a crash in the
                // cleanup after it still returns `Ok`; the checkpoint must then survive.
                assert!(outcome.is_ok() || crashed, "{}: {outcome:?}", self.ctx());
                self.faulty.set_mode(FaultMode::None);
                self.stats.injected_storage_crashes += usize::from(crashed);
                if let Ok(meta) = &outcome {
                    let id = meta.id;
                    let reopened =
                        CheckpointCoordinator::open(Arc::clone(&self.storage), self.retained)?;
                    assert_eq!(
                        reopened.latest().map(|m| m.id),
                        Some(id),
                        "{}: a reported completion is lost",
                        self.ctx()
                    );
                }
            }
        }
        // Everything in memory is lost.
        self.job.backends.clear();
        self.job.handles.clear();
        self.coordinator = CheckpointCoordinator::open(Arc::clone(&self.storage), self.retained)?;
        assert!(self.coordinator.unreadable().is_empty());
        self.check_root()?;
        let latest = self
            .coordinator
            .latest()
            .cloned()
            .expect("the first step completes a checkpoint");
        let parallelism = latest.instances.len() as u32;
        self.restore_job(&latest, parallelism)?;
        self.stats.crashes += 1;
        Ok(())
    }

    /// Restores the latest checkpoint at a random parallelism (after completing one, half the
    /// time; otherwise the job rolls back to it).
    fn rescale(&mut self) -> Result<()> {
        if self.rng.below(2) == 0 {
            self.checkpoint_complete()?;
        }
        let latest = self.coordinator.latest().cloned().expect("a checkpoint");
        let parallelism = 1 + self.rng.below(4) as u32;
        self.restore_job(&latest, parallelism)?;
        self.stats.rescales += 1;
        Ok(())
    }

    /// A savepoint (written on threads while operations continue), restored into the other
    /// backend kind at a random parallelism. The job resumes from the savepoint: writes made
    /// while it was written are not in it.
    fn switch_backend(&mut self) -> Result<()> {
        self.savepoints += 1;
        let dir = self
            .root
            .path()
            .join(format!("savepoint-{}", self.savepoints));
        let sp_storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(&dir)?);
        let pending = self
            .job
            .backends
            .iter_mut()
            .map(|b| b.savepoint())
            .collect::<Result<Vec<_>>>()?;
        let at_savepoint = self.model.clone();
        let during = self.rng.below(30) as usize;
        let (ops, written) = std::thread::scope(|scope| {
            let threads: Vec<_> = pending
                .into_iter()
                .map(|p| {
                    let storage = Arc::clone(&sp_storage);
                    scope.spawn(move || p.write(storage.as_ref()))
                })
                .collect();
            let ops = self.run_ops(during);
            let written: Vec<_> = threads
                .into_iter()
                .map(|t| t.join().expect("savepoint thread panicked"))
                .collect();
            (ops, written)
        });
        ops?;
        let instances = written.into_iter().collect::<Result<Vec<_>>>()?;
        complete_savepoint(sp_storage.as_ref(), instances)?;
        let meta = read_savepoint(sp_storage.as_ref())?;
        let all = kinds();
        let position = all.iter().position(|k| *k == self.job.kind).unwrap_or(0);
        let to = all[(position + 1) % all.len()];
        let parallelism = 1 + self.rng.below(4) as u32;
        let mut backends = Vec::new();
        for i in 0..parallelism {
            let range = KeyGroupRange::for_operator(MAX_PARALLELISM, parallelism, i)?;
            backends.push(restore_savepoint(
                sp_storage.as_ref(),
                &meta,
                &config_in(to, range, self.root.path()),
            )?);
            self.stats.restores += 1;
        }
        self.job = Job::from_backends(to, backends)?;
        self.model = at_savepoint;
        self.stats.switches += 1;
        Ok(())
    }

    fn step(&mut self) -> Result<()> {
        self.step += 1;
        self.stats.steps += 1;
        if self.step == 1 {
            // Every crash and rescale has a checkpoint to go back to.
            let n = 50 + self.rng.below(150) as usize;
            self.run_ops(n)?;
            self.checkpoint_complete()?;
        } else {
            let started = Instant::now();
            let name = match self.rng.below(100) {
                0..=39 => {
                    let n = 20 + self.rng.below(180) as usize;
                    self.run_ops(n)?;
                    "ops"
                }
                40..=59 => {
                    self.checkpoint_complete()?;
                    "complete"
                }
                60..=67 => {
                    self.checkpoint_abort()?;
                    "abort"
                }
                68..=77 => {
                    self.crash()?;
                    "crash"
                }
                78..=88 => {
                    self.rescale()?;
                    "rescale"
                }
                _ => {
                    self.switch_backend()?;
                    "switch"
                }
            };
            *self.stats.time.entry(name).or_default() += started.elapsed();
        }
        let started = Instant::now();
        self.check_root()?;
        self.cheap_check()?;
        if self.step % 10 == 0 {
            self.full_check()?;
        }
        *self.stats.time.entry("checks").or_default() += started.elapsed();
        Ok(())
    }

    /// Every retained checkpoint restores exactly, at its own parallelism and at another.
    fn check_retained(&mut self) -> Result<()> {
        let retained: Vec<_> = self.coordinator.completed().cloned().collect();
        for meta in retained {
            verify_files(self.storage.as_ref(), &meta)?;
            let expected = self.models[&meta.id].clone();
            let kind = meta.instances[0].backend;
            let own = meta.instances.len() as u32;
            for parallelism in [own, 1 + (own % 4)] {
                let mut seen = Model::default();
                for i in 0..parallelism {
                    let range = KeyGroupRange::for_operator(MAX_PARALLELISM, parallelism, i)?;
                    let mut b = restore_instance(
                        self.storage.as_ref(),
                        &meta,
                        &config_in(kind, range, self.root.path()),
                        RestoreMode::NoClaim,
                    )?;
                    let h = Handles::register(&mut b)?;
                    let part = restricted(&expected, &self.groups, range);
                    assert_matches_model(&mut b, &h, &part)?;
                    seen.absorb(part);
                    self.stats.restores += 1;
                }
                assert_eq!(seen, expected);
            }
        }
        Ok(())
    }
}

fn restricted(model: &Model, groups: &HashMap<Key, KeyGroup>, range: KeyGroupRange) -> Model {
    let mut own = model.clone();
    own.retain_keys(|k| range.contains(groups[k]));
    own
}

#[test]
fn job_matches_one_model_through_checkpoints_crashes_rescales_and_switches() -> Result<()> {
    let steps = STEPS_PER_SEED * if long_runs() { 20 } else { 1 };
    let started = Instant::now();
    let mut total = Stats::default();
    for seed in SEEDS {
        let seed_started = Instant::now();
        let mut engine = Engine::new(seed)?;
        for _ in 0..steps {
            if let Err(e) = engine.step() {
                panic!("{}: {e}", engine.ctx());
            }
        }
        if let Err(e) = engine.full_check().and_then(|()| engine.check_retained()) {
            panic!("{} (final checks): {e}", engine.ctx());
        }
        let s = &engine.stats;
        println!(
            "seed {seed:#x}: {} steps, {} ops ({} during uploads), {} checkpoints completed, \
             {} aborted, {} crashes ({} mid-checkpoint, {} storage crashes), {} rescales, \
             {} backend switches, {} instance restores, {} full checks, {} point reads, {:?} \
             (by step kind: {:?})",
            s.steps,
            s.ops,
            s.ops_during_upload,
            s.completed,
            s.aborted,
            s.crashes,
            s.crashes_mid_checkpoint,
            s.injected_storage_crashes,
            s.rescales,
            s.switches,
            s.restores,
            s.full_checks,
            s.cheap_reads,
            seed_started.elapsed(),
            s.time
        );
        total.steps += s.steps;
        total.ops += s.ops;
        total.completed += s.completed;
        total.aborted += s.aborted;
        total.crashes += s.crashes;
        total.rescales += s.rescales;
        total.switches += s.switches;
        total.restores += s.restores;
        total.full_checks += s.full_checks;
    }
    println!(
        "total: {} steps, {} ops, {} checkpoints completed, {} aborted, {} crashes, \
         {} rescales, {} backend switches, {} instance restores, {} full checks in {:?}",
        total.steps,
        total.ops,
        total.completed,
        total.aborted,
        total.crashes,
        total.rescales,
        total.switches,
        total.restores,
        total.full_checks,
        started.elapsed()
    );
    Ok(())
}
