//! The reference backend as a backend written outside the library (`reference_outside`: the
//! same source compiled in this test crate, from public items only): the conformance suite,
//! and checkpoints and savepoints through the generic runtime, restored at another parallelism.
use crate::common;
use crate::conformance_suite;
use crate::reference_outside::ReferenceBackend as OutsideBackend;

use std::sync::Arc;

use common::checkpointing::assert_matches_model;
use common::model::{Handles, Model, OpGenerator, apply};
use statebackend::checkpoint::{CheckpointCoordinator, RestoreMode, restore_instance_into};
use statebackend::savepoint::{complete_savepoint, read_savepoint, restore_savepoint_into};
use statebackend::storage::{CheckpointStorage, LocalDirStorage};
use statebackend::{BackendConfig, CheckpointedBackend, KeyGroupRange, KeyedStateBackend, Result};

conformance_suite!(|max_parallelism, range| OutsideBackend::new(max_parallelism, range).unwrap());

/// Two instances of the outside backend, each with `ops` random operations of its own keys,
/// and the model of their union.
fn two_instances(ops: usize) -> Result<(Vec<OutsideBackend>, Model)> {
    let mut union = Model::default();
    let mut backends = Vec::new();
    for index in 0..2 {
        let range = KeyGroupRange::for_operator(128, 2, index)?;
        let mut backend = OutsideBackend::new(128, range)?;
        let handles = Handles::register(&mut backend)?;
        let mut model = Model::default();
        let mut generator = OpGenerator::new(40 + u64::from(index), 50, |k| {
            range.contains(backend.key_group_of(k).unwrap())
        });
        for _ in 0..ops {
            let op = generator.next_op();
            let expected = model.apply(&op);
            assert_eq!(apply(&mut backend, &handles, &op)?, expected, "{op:?}");
        }
        union.absorb(model);
        backends.push(backend);
    }
    Ok((backends, union))
}

#[test]
fn an_outside_backend_checkpoints_and_restores_through_the_runtime() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(tmp.path())?);
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
    let (mut backends, union) = two_instances(800)?;
    coordinator.begin(1)?;
    let mut parts = Vec::new();
    for backend in &mut backends {
        parts.push(backend.snapshot(1)?.upload(storage.as_ref())?.0);
    }
    let meta = coordinator.complete(1, parts)?.clone();
    for (backend, part) in backends.iter_mut().zip(&meta.instances) {
        backend.notify_checkpoint_complete(part)?;
    }
    // The same parallelism, then one instance for all key groups (a rescale).
    for q in [2u32, 1] {
        let mut seen = Model::default();
        for i in 0..q {
            let range = KeyGroupRange::for_operator(128, q, i)?;
            let mut restored: OutsideBackend = restore_instance_into(
                storage.as_ref(),
                &meta,
                &BackendConfig::reference(128, range),
                RestoreMode::Claim,
            )?;
            let handles = Handles::register(&mut restored)?;
            let mut own = union.clone();
            own.retain_keys(|k| range.contains(restored.key_group_of(k).unwrap()));
            assert_matches_model(&mut restored, &handles, &own)?;
            seen.absorb(own);
        }
        assert_eq!(seen, union, "2 -> {q}");
    }
    Ok(())
}

#[test]
fn an_outside_backends_savepoint_restores_into_the_heap_backend_and_back() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(tmp.path())?);
    let (mut backends, union) = two_instances(800)?;
    let mut parts = Vec::new();
    for backend in &mut backends {
        parts.push(backend.savepoint()?.write(storage.as_ref())?);
    }
    complete_savepoint(storage.as_ref(), parts)?;
    let meta = read_savepoint(storage.as_ref())?;
    let all = KeyGroupRange::all(128)?;
    let mut heap: statebackend::HeapBackend =
        restore_savepoint_into(storage.as_ref(), &meta, &BackendConfig::heap(128, all))?;
    let handles = Handles::register(&mut heap)?;
    assert_matches_model(&mut heap, &handles, &union)?;
    let mut outside: OutsideBackend =
        restore_savepoint_into(storage.as_ref(), &meta, &BackendConfig::reference(128, all))?;
    let handles = Handles::register(&mut outside)?;
    assert_matches_model(&mut outside, &handles, &union)?;
    Ok(())
}
