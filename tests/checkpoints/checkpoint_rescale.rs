//! Rescaling from checkpoints (RocksDB incremental and heap): a checkpoint written by P
//! instances restores into Q instances for P→Q of 1→4, 4→1 and 3→2; the union of the restored
//! instances equals the original state and each holds only its own key groups.
use crate::common;

use std::sync::Arc;

use common::checkpointing::{assert_matches_model, config, key_group, kinds, random_job};
use common::model::{Handles, Model};
use statebackend::checkpoint::{CheckpointCoordinator, RestoreMode, restore_instance};
use statebackend::storage::CheckpointStorage;
use statebackend::{KeyGroupRange, KeyedStateBackend, Result};

#[test]
fn checkpoints_restore_at_another_parallelism() -> Result<()> {
    for kind in kinds() {
        for (p, q) in [(1u32, 4u32), (4, 1), (3, 2)] {
            let tmp = tempfile::tempdir().unwrap();
            let storage: Arc<dyn CheckpointStorage> = crate::root::open(tmp.path())?;
            let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
            let (mut backends, union) = random_job(kind, p, 60, 1_200)?;
            // Two checkpoints, so the second one is incremental for RocksDB.
            let mut meta = None;
            for id in 1..=2 {
                coordinator.begin(id)?;
                let mut instances = Vec::new();
                for b in backends.iter_mut() {
                    instances.push(b.snapshot(id)?.upload(storage.as_ref())?.0);
                }
                let m = coordinator.complete(id, instances)?.clone();
                for (b, instance) in backends.iter_mut().zip(&m.instances) {
                    b.notify_checkpoint_complete(instance)?;
                }
                meta = Some(m);
            }
            let meta = meta.unwrap();
            drop(backends);
            let mut seen = Model::default();
            for i in 0..q {
                let range = KeyGroupRange::for_operator(128, q, i)?;
                let mut restored = restore_instance(
                    storage.as_ref(),
                    &meta,
                    &config(kind, range),
                    RestoreMode::NoClaim,
                )?;
                assert_eq!(restored.key_group_range(), range);
                let h = Handles::register(&mut restored)?;
                let mut own = union.clone();
                own.retain_keys(|k| range.contains(key_group(k)));
                // Also proves nothing foreign survived: keys() of every state is compared.
                assert_matches_model(&mut restored, &h, &own)?;
                seen.absorb(own);
            }
            assert_eq!(seen, union, "{kind} {p}->{q}");
        }
    }
    Ok(())
}

/// Checkpoint 1 of a job of two RocksDB instances with random state, in `root/storage`; returns
/// the storage, the checkpoint's metadata and the job's model.
#[cfg(feature = "rocksdb")]
fn two_instance_checkpoint(
    root: &std::path::Path,
    seed: u64,
) -> Result<(
    Arc<dyn CheckpointStorage>,
    statebackend::checkpoint::SnapshotMetadata,
    Model,
)> {
    use statebackend::BackendKind;
    let storage: Arc<dyn CheckpointStorage> = crate::root::open(root.join("storage"))?;
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
    let (mut backends, union) = random_job(BackendKind::RocksDb, 2, seed, 800)?;
    coordinator.begin(1)?;
    let instances = backends
        .iter_mut()
        .map(|b| Ok(b.snapshot(1)?.upload(storage.as_ref())?.0))
        .collect::<Result<Vec<_>>>()?;
    let meta = coordinator.complete(1, instances)?.clone();
    Ok((storage, meta, union))
}

/// A process that dies while a rescaled RocksDB restore trims and merges its base instance
/// leaves `db/` and the `db.restore-incomplete` marker in the working directory (no storage
/// operation happens in that window, so the crash sweeps cannot reach it; the state is built
/// here directly). Reopening must refuse that DB, and a restore into the directory must refuse
/// it too unless the configuration asks to replace it; then it replaces it. A `db/` without the
/// marker is never overwritten without that request either.
#[cfg(feature = "rocksdb")]
#[test]
fn an_interrupted_rescaled_restore_is_refused_on_open_and_replaced_by_a_retry() -> Result<()> {
    use statebackend::{BackendKind, Error, RocksDbBackend};
    let tmp = tempfile::tempdir().unwrap();
    let (storage, meta, union) = two_instance_checkpoint(tmp.path(), 80)?;

    // The crash state: the base instance alone in db/, and the marker.
    let work = tmp.path().join("work");
    let mut base_only = config(BackendKind::RocksDb, meta.instances[0].key_groups);
    base_only.working_dir = Some(work.clone());
    drop(restore_instance(
        storage.as_ref(),
        &meta,
        &base_only,
        RestoreMode::NoClaim,
    )?);
    let all = KeyGroupRange::all(128)?;
    let mut whole = config(BackendKind::RocksDb, all);
    whole.working_dir = Some(work.clone());
    // Without the marker, db/ is a complete DB: a restore refuses to overwrite it.
    assert!(matches!(
        restore_instance(storage.as_ref(), &meta, &whole, RestoreMode::NoClaim),
        Err(Error::Incompatible { .. })
    ));
    std::fs::write(work.join("db.restore-incomplete"), b"").unwrap();

    let reopened = RocksDbBackend::open(
        128,
        meta.instances[0].key_groups,
        Some(work.clone()),
        Default::default(),
    );
    assert!(
        matches!(&reopened, Err(Error::UncleanWorkingDirectory { path }) if *path == work),
        "{:?}",
        reopened.err()
    );
    // A restore replaces the directory only when asked to.
    let refused = restore_instance(storage.as_ref(), &meta, &whole, RestoreMode::NoClaim);
    assert!(
        matches!(&refused, Err(Error::UncleanWorkingDirectory { path }) if *path == work),
        "{:?}",
        refused.err()
    );
    assert!(work.join("db.restore-incomplete").exists());

    let whole = whole.with_replace_existing(true);
    let mut restored = restore_instance(storage.as_ref(), &meta, &whole, RestoreMode::NoClaim)?;
    let h = Handles::register(&mut restored)?;
    assert_matches_model(&mut restored, &h, &union)?;
    drop(restored);
    assert!(!work.join("db.restore-incomplete").exists());
    // Complete now: it reopens.
    RocksDbBackend::open(128, all, Some(work), Default::default())?;
    Ok(())
}

/// Child-process half of `a_crash_after_a_rescaled_restore_needs_a_replacing_restore`:
/// restores the latest checkpoint of the storage in `root` at parallelism 1 into `root/work`,
/// then exits without closing the database (no destructor runs, as in a crash).
#[cfg(feature = "rocksdb")]
fn crash_right_after_a_rescaled_restore(root: &std::path::Path) -> ! {
    use statebackend::BackendKind;
    let storage: Arc<dyn CheckpointStorage> = crate::root::open(root.join("storage")).unwrap();
    let coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2).unwrap();
    let meta = coordinator.latest().unwrap().clone();
    let mut whole = config(BackendKind::RocksDb, KeyGroupRange::all(128).unwrap());
    whole.working_dir = Some(root.join("work"));
    let restored = restore_instance(storage.as_ref(), &meta, &whole, RestoreMode::NoClaim).unwrap();
    std::mem::forget(restored);
    std::process::exit(0)
}

/// The WAL is off, so a process that dies with a backend open (here right after a rescaled
/// restore returned) leaves a directory that may hold state no checkpoint had: reopening it is
/// refused, even though the restore had finished (its marker is gone), and a restore that asks
/// to replace it brings back exactly the checkpointed state.
#[cfg(feature = "rocksdb")]
#[test]
fn a_crash_after_a_rescaled_restore_needs_a_replacing_restore() -> Result<()> {
    use statebackend::RocksDbBackend;
    const CHILD: &str = "STATEBACKEND_TEST_RESCALED_RESTORE_CHILD";
    if let Some(root) = std::env::var_os(CHILD) {
        crash_right_after_a_rescaled_restore(std::path::Path::new(&root));
    }
    if !crate::root::SEEN_BY_OTHER_PROCESSES {
        // The child process must find the checkpoint: not with roots in this process's memory.
        eprintln!("skipped: this binary's roots are not seen by a child process");
        return Ok(());
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, union) = two_instance_checkpoint(tmp.path(), 90)?;

    common::run_child_test(
        module_path!(),
        "a_crash_after_a_rescaled_restore_needs_a_replacing_restore",
        CHILD,
        tmp.path(),
    );

    let all = KeyGroupRange::all(128)?;
    let work = tmp.path().join("work");
    assert!(
        !work.join("db.restore-incomplete").exists(),
        "the restore finished"
    );
    let reopened = RocksDbBackend::open(128, all, Some(work.clone()), Default::default());
    assert!(
        matches!(&reopened, Err(statebackend::Error::UncleanWorkingDirectory { path }) if *path == work),
        "{:?}",
        reopened.err()
    );
    let storage: Arc<dyn CheckpointStorage> = crate::root::open(tmp.path().join("storage"))?;
    let meta = CheckpointCoordinator::open(Arc::clone(&storage), 2)?
        .latest()
        .unwrap()
        .clone();
    let mut whole = config(statebackend::BackendKind::RocksDb, all).with_replace_existing(true);
    whole.working_dir = Some(work);
    let mut restored = restore_instance(storage.as_ref(), &meta, &whole, RestoreMode::NoClaim)?;
    let h = Handles::register(&mut restored)?;
    assert_matches_model(&mut restored, &h, &union)?;
    Ok(())
}
