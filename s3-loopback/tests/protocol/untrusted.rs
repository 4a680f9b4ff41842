//! Issue 25, items 12–16 over the S3 protocol, every backend: a server whose listings omit
//! objects, whose GET bodies come back with a flipped bit, and which acknowledges a PUT and
//! loses it (the fault layer of `statebackend_s3_loopback`). A checkpoint is never lost to
//! any of them, and damage is never taken for an empty root.

use std::sync::Arc;

use crate::common::checkpointing::{assert_matches_model, config, kinds, random_job};
use crate::common::model::{Handles, Model};
use statebackend::checkpoint::{
    CheckpointCoordinator, RestoreMode, SnapshotMetadata, latest_restorable, restore_instance,
    verify_files,
};
use statebackend::storage::CheckpointStorage;
use statebackend::{AnyBackend, BackendKind, Error, KeyGroupRange, Result};
use statebackend_s3_loopback::{Fault, FaultRule, LoopbackS3, RequestKind};

/// A root on `server` with checkpoints 1..=3 of one instance (retention 3); returns the
/// storage, the backend and the model of each checkpoint.
fn three_checkpoints(
    server: &LoopbackS3,
    kind: BackendKind,
) -> Result<(Arc<dyn CheckpointStorage>, AnyBackend, Vec<Model>)> {
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(server.storage(&format!("untrusted/{kind}"))?);
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 3)?;
    let mut models = Vec::new();
    let (mut job, model) = random_job(kind, 1, 90, 150)?;
    let mut backend = job.remove(0);
    for id in 1..=3 {
        coordinator.begin(id)?;
        let part = backend.snapshot(id)?.upload(storage.as_ref())?.0;
        let meta = coordinator.complete(id, vec![part])?.clone();
        backend.notify_checkpoint_complete(&meta.instances[0])?;
        models.push(model.clone());
    }
    Ok((storage, backend, models))
}

fn assert_restores(
    storage: &dyn CheckpointStorage,
    meta: &SnapshotMetadata,
    kind: BackendKind,
    model: &Model,
) -> Result<()> {
    let mut b = restore_instance(
        storage,
        meta,
        &config(kind, KeyGroupRange::all(128)?),
        RestoreMode::NoClaim,
    )?;
    let h = Handles::register(&mut b)?;
    assert_matches_model(&mut b, &h, model)
}

#[test]
fn a_listing_that_omits_a_metadata_costs_no_checkpoint() -> Result<()> {
    for kind in kinds() {
        let server = LoopbackS3::start().expect("server");
        let (storage, _, models) = three_checkpoints(&server, kind)?;
        let newest = latest_restorable(storage.as_ref())?;
        server.inject(
            FaultRule::new(Fault::OmitFromListing)
                .key_contains("chk-0000000003/_metadata")
                .always(),
        );
        let coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 3)?;
        assert!(server.counts().faulted > 0, "{kind}: a listing omitted it");
        assert_eq!(coordinator.latest().map(|m| m.id), Some(3), "{kind}");
        drop(coordinator);
        server.clear_faults();
        verify_files(storage.as_ref(), &newest)
            .unwrap_or_else(|e| panic!("{kind}: the sweep deleted a file of checkpoint 3: {e}"));
        assert_restores(storage.as_ref(), &newest, kind, &models[2])?;
    }
    Ok(())
}

#[test]
fn flipped_bits_in_responses_are_neither_damage_nor_an_empty_root() -> Result<()> {
    for kind in kinds() {
        let server = LoopbackS3::start().expect("server");
        let (storage, _, models) = three_checkpoints(&server, kind)?;
        // Item 14: one flipped `_metadata` response while a coordinator opens.
        server.inject(
            FaultRule::new(Fault::FlipBit(17))
                .on(RequestKind::Get)
                .key_contains("chk-0000000002/_metadata"),
        );
        let coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 3)?;
        assert_eq!(server.counts().faulted, 1, "{kind}");
        assert!(
            coordinator.unreadable().is_empty(),
            "{kind}: {:?}",
            coordinator.unreadable()
        );
        let newest = coordinator.latest().cloned().expect("checkpoint 3");
        drop(coordinator);
        // Item 13: one flipped response of each file of the newest checkpoint.
        for file in newest.files().filter(|f| f.size > 0) {
            server.inject(
                FaultRule::new(Fault::FlipBit(file.size / 2))
                    .on(RequestKind::Get)
                    .key_contains(file.path.as_str()),
            );
        }
        let before = server.counts().faulted;
        let found = latest_restorable(storage.as_ref())?;
        assert!(server.counts().faulted > before, "{kind}: a flip happened");
        assert_eq!(
            found.id, 3,
            "{kind}: damaged responses skipped checkpoint 3"
        );
        server.clear_faults();
        assert_restores(storage.as_ref(), &found, kind, &models[2])?;
    }
    Ok(())
}

#[test]
fn an_acknowledged_and_lost_metadata_put_completes_nothing_and_drops_nothing() -> Result<()> {
    for kind in kinds() {
        let server = LoopbackS3::start().expect("server");
        let storage: Arc<dyn CheckpointStorage> = Arc::new(server.storage("lost")?);
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
        let (mut job, model) = random_job(kind, 1, 7, 150)?;
        coordinator.begin(1)?;
        let part = job[0].snapshot(1)?.upload(storage.as_ref())?.0;
        let meta = coordinator.complete(1, vec![part])?.clone();
        job[0].notify_checkpoint_complete(&meta.instances[0])?;
        coordinator.begin(2)?;
        let part = job[0].snapshot(2)?.upload(storage.as_ref())?.0;
        server.inject(
            FaultRule::new(Fault::AcknowledgeAndLose)
                .on(RequestKind::Put)
                .key_contains("chk-0000000002/_metadata"),
        );
        let lost = coordinator.complete(2, vec![part]);
        assert_eq!(server.counts().faulted, 1, "{kind}");
        assert!(
            matches!(lost, Err(Error::CheckpointState { id: 2, .. })),
            "{kind}: {lost:?}"
        );
        coordinator.abort(2)?;
        drop(coordinator);
        let found = latest_restorable(storage.as_ref())?;
        assert_eq!(
            found.id, 1,
            "{kind}: retention dropped checkpoint 1 for a lost one"
        );
        assert_restores(storage.as_ref(), &found, kind, &model)?;
    }
    Ok(())
}
