//! Crash-consistency sweep: a storage that "crashes" at the k-th write, rename or delete of a
//! checkpoint-plus-GC cycle, for every k. After each crash and a restart, the newest completed
//! checkpoint restores to its exact state, no completed checkpoint references a missing file,
//! and garbage collection leaves no unreferenced file.
use crate::common;

use std::sync::Arc;

use common::checkpointing::{assert_matches_model, checkpoint, config, kinds, run_ops};
use common::model::{Handles, Model, OpGenerator};
use statebackend::checkpoint::{
    CheckpointCoordinator, RestoreMode, restore_instance, verify_files,
};
use statebackend::storage::{CheckpointStorage, FaultMode, FaultyStorage};
use statebackend::{AnyBackend, BackendKind, KeyGroupRange, Result};

/// Runs the cycle with a crash at mutating operation `k` (counted from the cycle's start);
/// returns whether the crash happened before the cycle finished.
fn crash_at(kind: BackendKind, k: u64) -> Result<bool> {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let faulty = Arc::new(FaultyStorage::new(
        crate::root::open(&root)?,
        FaultMode::None,
    ));
    let storage: Arc<dyn CheckpointStorage> = faulty.clone();
    let mut coordinator = CheckpointCoordinator::open(storage, 1)?;
    let range = KeyGroupRange::all(128)?;
    let mut b = AnyBackend::open(&config(kind, range))?;
    let h = Handles::register(&mut b)?;
    let mut model = Model::default();
    let mut g = OpGenerator::new(5, 40, |_| true);
    run_ops(&mut b, &h, &mut model, &mut g, 800)?;
    checkpoint(&mut b, &mut coordinator, 1, |_| Ok(()))?;
    let at_1 = model.clone();
    run_ops(&mut b, &h, &mut model, &mut g, 400)?;
    let at_2 = model.clone();

    faulty.set_mode(FaultMode::CrashAt(faulty.ops() + k));
    let cycle = checkpoint(&mut b, &mut coordinator, 2, |_| Ok(()));
    let crashed = matches!(faulty.mode(), FaultMode::CrashAt(at) if faulty.ops() >= at);
    // Completion reports success once `_metadata` is durable: a crash in the cleanup after it
    // leaves `complete` returning `Ok`, and the checkpoint exists (checked after the restart).
    assert!(cycle.is_ok() || crashed, "k={k}: {cycle:?}");
    let reported_complete = cycle.is_ok();
    drop(coordinator);
    drop(b);

    // Restart on the same root without faults: recovery collects what the crash left.
    let storage: Arc<dyn CheckpointStorage> = crate::root::open(&root)?;
    let coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
    for meta in coordinator.completed() {
        verify_files(storage.as_ref(), meta)?;
    }
    assert!(
        coordinator.orphans()?.is_empty(),
        "k={k}: orphans left after recovery"
    );
    let referenced: std::collections::HashSet<String> = coordinator
        .completed()
        .flat_map(|m| m.files().map(|f| f.path.to_string()))
        .collect();
    for object in storage.list(None)? {
        let p = object.path.to_string();
        assert!(
            p.ends_with("/_metadata") || p.starts_with("_coordinator/") || referenced.contains(&p),
            "k={k}: leaked {p}"
        );
    }
    let latest = coordinator
        .latest()
        .expect("checkpoint 1 was completed before the crash");
    assert!(
        latest.id == 2 || crashed,
        "k={k}: an uncrashed cycle completes checkpoint 2"
    );
    assert!(
        latest.id == 2 || !reported_complete,
        "k={k}: checkpoint 2 was reported complete but is not there after a restart"
    );
    let expected = if latest.id == 2 { &at_2 } else { &at_1 };
    let mut restored = restore_instance(
        storage.as_ref(),
        latest,
        &config(kind, range),
        RestoreMode::Claim,
    )?;
    let h = Handles::register(&mut restored)?;
    assert_matches_model(&mut restored, &h, expected)?;
    Ok(crashed)
}

#[test]
fn every_crash_point_of_a_checkpoint_and_gc_cycle_recovers() -> Result<()> {
    for kind in kinds() {
        let mut swept = 0;
        for k in 1.. {
            swept += 1;
            if !crash_at(kind, k)? {
                break;
            }
        }
        println!("{kind}: swept {swept} crash points");
        assert!(swept >= 3, "{kind}: the cycle has several mutating steps");
    }
    Ok(())
}
