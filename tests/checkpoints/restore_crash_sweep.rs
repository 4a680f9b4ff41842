//! Fault sweep of restores: checkpoint restores (`restore_instance`, at the same parallelism and
//! rescaled 2 → 1) and savepoint restores (`read_savepoint` + `restore_savepoint`), into both
//! backends, each with an explicit working directory that the retry reuses.
//!
//! A restore only reads storage, so the sweep breaks the k-th read, for every k, in three ways:
//! a transient error, a storage that stays gone, and a crash of the process (a panic that skips
//! every error path). Each time the restore must return a typed error (or, for the crash, never
//! return), and a retry with the same configuration must succeed and hold exactly the state
//! that was checkpointed. Every restore also runs under a `FaultyStorage` that crashes at the
//! first write, which proves that no restore writes to storage.
use crate::common;

use std::path::Path;
use std::sync::Arc;

use common::checkpointing::{assert_matches_model, config_in, kinds, run_ops, scratch};
use common::faults::{ReadFault, ReadFaults, surviving_crash};
use common::model::{Handles, Model, OpGenerator};
use statebackend::checkpoint::{
    CheckpointCoordinator, RestoreMode, SnapshotMetadata, restore_instance,
};
use statebackend::savepoint::{complete_savepoint, read_savepoint, restore_savepoint};
use statebackend::storage::{CheckpointStorage, FaultMode, FaultyStorage, LocalDirStorage};
use statebackend::{AnyBackend, BackendConfig, BackendKind, Error, KeyGroupRange, Result};

/// `parallelism` instances of `kind` over 128 key groups, with their union model.
fn job(kind: BackendKind, parallelism: u32, dir: &Path) -> Result<(Vec<AnyBackend>, Model)> {
    let mut backends = Vec::new();
    let mut union = Model::default();
    for i in 0..parallelism {
        let range = KeyGroupRange::for_operator(128, parallelism, i)?;
        let mut b = AnyBackend::open(&config_in(kind, range, dir))?;
        let h = Handles::register(&mut b)?;
        let mut g = OpGenerator::new(70 + u64::from(i), 20, |k| {
            range.contains(statebackend::KeyedStateBackend::key_group_of(&b, k).unwrap())
        });
        let mut model = Model::default();
        run_ops(&mut b, &h, &mut model, &mut g, 200)?;
        union.absorb(model);
        backends.push(b);
    }
    Ok((backends, union))
}

/// Checkpoints 1 and 2 of every backend into `root`; returns checkpoint 2. RocksDB's second
/// checkpoint reuses shared files of the first, so the restore reads files of both.
fn checkpoints(backends: &mut [AnyBackend], root: &Path) -> Result<SnapshotMetadata> {
    let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(root)?);
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
    let mut latest = None;
    for id in 1..=2 {
        coordinator.begin(id)?;
        let mut instances = Vec::new();
        for b in backends.iter_mut() {
            instances.push(b.snapshot(id)?.upload(storage.as_ref())?.0);
        }
        let meta = coordinator.complete(id, instances)?.clone();
        for (b, instance) in backends.iter_mut().zip(&meta.instances) {
            b.notify_checkpoint_complete(instance)?;
        }
        latest = Some(meta);
    }
    Ok(latest.expect("two checkpoints were taken"))
}

/// A restore to sweep: reads what it needs from `storage` and builds a backend for `config`.
type Restore<'a> = Box<dyn Fn(&dyn CheckpointStorage, &BackendConfig) -> Result<AnyBackend> + 'a>;

/// Runs `restore` with every read broken in each way in turn, then retried with the same
/// configuration (a fresh one, with its own working directory, for each attempt and its retry);
/// returns the number of reads a clean restore makes (the points swept per way).
fn sweep(
    what: &str,
    root: &Path,
    config: &dyn Fn() -> BackendConfig,
    model: &Model,
    restore: Restore<'_>,
) -> Result<u64> {
    let reads = ReadFaults::new(LocalDirStorage::new(root)?);
    // Any write would crash this storage, and every read after it would fail.
    let storage = FaultyStorage::new(&reads, FaultMode::CrashAt(1));
    let check = |restored: Result<AnyBackend>, when: &str| -> Result<()> {
        let mut restored = restored.unwrap_or_else(|e| panic!("{what}, {when}: {e:?}"));
        let h = Handles::register(&mut restored)?;
        assert_matches_model(&mut restored, &h, model)?;
        assert_eq!(
            storage.ops(),
            0,
            "{what}, {when}: the restore wrote to storage"
        );
        Ok(())
    };
    let mut points = 0;
    for way in ["fail", "lost", "crash"] {
        for k in 1.. {
            reads.set(match way {
                "fail" => ReadFault::FailAt(k),
                "lost" => ReadFault::LostAt(k),
                _ => ReadFault::CrashAt(k),
            });
            let config = config();
            let attempt = surviving_crash(|| restore(&storage, &config));
            let when = format!("{way} at read {k}");
            if !reads.fired() {
                check(attempt.expect("no crash was injected"), &when)?;
                points = k - 1;
                break;
            }
            match attempt {
                None => assert_eq!(way, "crash", "{what}, {when}: an unexpected crash"),
                Some(Ok(_)) => panic!("{what}, {when}: a restore that lost a read succeeded"),
                Some(Err(Error::InjectedFault { .. })) => {}
                Some(Err(e)) => panic!("{what}, {when}: the fault is reported as {e:?}"),
            }
            reads.set(ReadFault::None);
            check(restore(&storage, &config), &format!("retry after {when}"))?;
        }
        assert!(points >= 1, "{what}: the restore reads storage");
    }
    println!("{what}: {points} reads, each broken 3 ways");
    Ok(points)
}

#[test]
fn every_read_of_a_checkpoint_restore_can_fail_and_be_retried() -> Result<()> {
    for kind in kinds() {
        let tmp = scratch();
        let root = tmp.path().join("root");
        let (mut backends, model) = job(kind, 1, tmp.path())?;
        let meta = checkpoints(&mut backends, &root)?;
        drop(backends);
        let all = KeyGroupRange::all(128)?;
        let config = || config_in(kind, all, tmp.path());
        sweep(
            &format!("{kind} checkpoint"),
            &root,
            &config,
            &model,
            Box::new(|storage: &dyn CheckpointStorage, config: &BackendConfig| {
                restore_instance(storage, &meta, config, RestoreMode::Claim)
            }),
        )?;
    }
    Ok(())
}

#[test]
fn every_read_of_a_rescaled_checkpoint_restore_can_fail_and_be_retried() -> Result<()> {
    for kind in kinds() {
        let tmp = scratch();
        let root = tmp.path().join("root");
        let (mut backends, model) = job(kind, 2, tmp.path())?;
        let meta = checkpoints(&mut backends, &root)?;
        drop(backends);
        let all = KeyGroupRange::all(128)?;
        let config = || config_in(kind, all, tmp.path());
        sweep(
            &format!("{kind} checkpoint, 2 -> 1"),
            &root,
            &config,
            &model,
            Box::new(|storage: &dyn CheckpointStorage, config: &BackendConfig| {
                restore_instance(storage, &meta, config, RestoreMode::NoClaim)
            }),
        )?;
    }
    Ok(())
}

#[test]
fn every_read_of_a_savepoint_restore_can_fail_and_be_retried() -> Result<()> {
    let tmp = scratch();
    let dir = tmp.path().join("savepoint");
    let (mut backends, model) = job(BackendKind::Heap, 2, tmp.path())?;
    let storage = LocalDirStorage::new(&dir)?;
    let mut instances = Vec::new();
    for b in &mut backends {
        instances.push(b.savepoint()?.write(&storage)?);
    }
    complete_savepoint(&storage, instances)?;
    for kind in kinds() {
        let all = KeyGroupRange::all(128)?;
        let config = || config_in(kind, all, tmp.path());
        sweep(
            &format!("savepoint into {kind}"),
            &dir,
            &config,
            &model,
            Box::new(|storage: &dyn CheckpointStorage, config: &BackendConfig| {
                let meta = read_savepoint(storage)?;
                restore_savepoint(storage, &meta, config)
            }),
        )?;
    }
    Ok(())
}
