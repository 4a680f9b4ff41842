//! A second coordinator on one root (a zombie after a failover) cannot complete a checkpoint or
//! delete what the live one wrote: opening the root fences every older coordinator, and
//! `_metadata` is created only if absent (`CheckpointStorage::put_new`); on a local directory and
//! on an object store.
use crate::common;

use std::sync::Arc;

use common::checkpointing::{assert_matches_model, config, random_job};
use common::model::Handles;
use statebackend::checkpoint::{
    CheckpointCoordinator, RestoreMode, latest_restorable, restore_instance,
};
use statebackend::storage::{CheckpointStorage, LocalDirStorage, StoragePath};
use statebackend::{BackendKind, Error, KeyGroupRange, Result};

fn stale_coordinator_cannot_replace_a_completed_checkpoint(
    storage: Arc<dyn CheckpointStorage>,
) -> Result<()> {
    let all = KeyGroupRange::all(128)?;
    let mut zombie = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
    let mut live = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
    // Both believe checkpoint 1 is theirs to take.
    zombie.begin(1)?;
    live.begin(1)?;
    let (mut live_job, live_model) = random_job(BackendKind::Heap, 1, 1, 300)?;
    let (mut zombie_job, _) = random_job(BackendKind::Heap, 1, 2, 300)?;
    let part = live_job[0].snapshot(1)?.upload(storage.as_ref())?.0;
    live.complete(1, vec![part])?;
    let stale = zombie_job[0].snapshot(1)?.upload(storage.as_ref())?.0;
    // The live coordinator opened the root after the zombie: the zombie is fenced.
    let refused = zombie.complete(1, vec![stale]);
    assert!(
        matches!(&refused, Err(Error::Fenced { epoch: 1, newer: 2 })),
        "{refused:?}"
    );
    zombie.abort(1)?;
    assert!(zombie.cleanup_error().is_some_and(|e| e.contains("fenced")));
    // What the live coordinator completed is what restores.
    let meta = latest_restorable(storage.as_ref())?;
    let mut restored = restore_instance(
        storage.as_ref(),
        &meta,
        &config(BackendKind::Heap, all),
        RestoreMode::NoClaim,
    )?;
    let h = Handles::register(&mut restored)?;
    assert_matches_model(&mut restored, &h, &live_model)?;
    // The storage primitive itself: a second create of one path fails and changes nothing.
    let path = StoragePath::parse("elsewhere/marker")?;
    storage.put_new(&path, b"first")?;
    assert!(matches!(
        storage.put_new(&path, b"second"),
        Err(Error::AlreadyExists { .. })
    ));
    assert_eq!(storage.get(&path)?, b"first");
    Ok(())
}

#[test]
fn on_a_local_directory() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    stale_coordinator_cannot_replace_a_completed_checkpoint(Arc::new(LocalDirStorage::new(
        tmp.path(),
    )?))
}

#[cfg(feature = "object-store")]
#[test]
fn on_an_object_store() -> Result<()> {
    stale_coordinator_cannot_replace_a_completed_checkpoint(Arc::new(
        statebackend::storage::ObjectStorage::in_memory()?,
    ))
}
