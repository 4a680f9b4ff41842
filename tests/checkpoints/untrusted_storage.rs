//! A store that lies a little (listings that omit objects, a flipped bit in a response, a
//! write acknowledged and lost) never costs a checkpoint: deletion never rests on a listing
//! alone, damage is believed only when reads agree, retention waits for a read-back, and a
//! root whose checkpoints are all damaged is a loud error, never an empty start. The lease
//! tells tools that delete that a coordinator is working in the root.
//!
//! Every test runs every backend, on the root `crate::root::open` gives (a local directory
//! here; an in-memory object store and an S3 server in `s3-loopback`).

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::checkpointing::{assert_matches_model, checkpoint, config_in, kinds, run_ops, scratch};
use common::model::{Handles, Model, OpGenerator};
use common::untrusted::Untrusted;
use statebackend::checkpoint::lease::read_lease;
use statebackend::checkpoint::{
    CheckpointCoordinator, RestoreMode, SnapshotMetadata, latest_restorable, restore_instance,
    verify_files,
};
use statebackend::storage::{CheckpointStorage, LocalDirStorage, StoragePath};
use statebackend::{AnyBackend, BackendKind, Error, KeyGroupRange, Result};

/// One instance owning every key group, with the model of each checkpoint it took.
struct Job {
    kind: BackendKind,
    backend: AnyBackend,
    handles: Handles,
    model: Model,
    ops: OpGenerator,
    at: BTreeMap<u64, Model>,
}

impl Job {
    fn open(kind: BackendKind, dir: &Path) -> Result<Self> {
        let mut backend = AnyBackend::open(&config_in(kind, KeyGroupRange::all(128)?, dir))?;
        let handles = Handles::register(&mut backend)?;
        Ok(Self {
            kind,
            backend,
            handles,
            model: Model::default(),
            ops: OpGenerator::new(17, 40, |_| true),
            at: BTreeMap::new(),
        })
    }

    /// Writes, then takes checkpoint `id`.
    fn checkpoint(&mut self, coordinator: &mut CheckpointCoordinator, id: u64) -> Result<()> {
        run_ops(
            &mut self.backend,
            &self.handles,
            &mut self.model,
            &mut self.ops,
            80,
        )?;
        checkpoint(&mut self.backend, coordinator, id, |_| Ok(()))?;
        self.at.insert(id, self.model.clone());
        Ok(())
    }

    /// Restores `meta` into a fresh backend and checks it against the model of its id.
    fn assert_restores(
        &self,
        storage: &dyn CheckpointStorage,
        meta: &SnapshotMetadata,
        dir: &Path,
    ) -> Result<()> {
        let config = config_in(self.kind, KeyGroupRange::all(128)?, dir);
        let mut restored = restore_instance(storage, meta, &config, RestoreMode::NoClaim)?;
        let handles = Handles::register(&mut restored)?;
        assert_matches_model(&mut restored, &handles, &self.at[&meta.id])
    }
}

/// A root of three checkpoints (retention 3) taken through `storage`, and the job.
fn three_checkpoints(
    kind: BackendKind,
    storage: &Arc<dyn CheckpointStorage>,
    dir: &Path,
) -> Result<Job> {
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(storage), 3)?;
    let mut job = Job::open(kind, dir)?;
    for id in 1..=3 {
        job.checkpoint(&mut coordinator, id)?;
    }
    Ok(job)
}

fn untrusted_root(dir: &Path) -> Result<(Arc<Untrusted>, Arc<dyn CheckpointStorage>)> {
    let untrusted = Arc::new(Untrusted::new(crate::root::open(dir.join("root"))?));
    let storage: Arc<dyn CheckpointStorage> = untrusted.clone();
    Ok((untrusted, storage))
}

// ---------------------------------------------------------------------------------------------
// A listing that omits objects (issue 25, item 12).

#[test]
fn a_listing_that_omits_a_checkpoint_deletes_none_of_its_files() -> Result<()> {
    // The `_metadata` alone, or every object of the checkpoint (its shared files are then
    // listed with nothing naming them).
    for omitted in ["chk-0000000003/_metadata", "chk-0000000003/"] {
        for kind in kinds() {
            let tmp = scratch();
            let (untrusted, storage) = untrusted_root(tmp.path())?;
            let job = three_checkpoints(kind, &storage, tmp.path())?;
            let before = latest_restorable(storage.as_ref())?;
            assert_eq!(before.id, 3);

            // Every listing of the reopen (reading the root, then its sweep) omits it.
            untrusted.omit_from_listings(omitted, u64::MAX);
            let coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 3)?;
            assert_eq!(
                coordinator.latest().map(|m| m.id),
                Some(3),
                "{kind}, {omitted}: the sweep read the unlisted checkpoint"
            );
            drop(coordinator);
            untrusted.omit_from_listings("", 0);

            verify_files(storage.as_ref(), &before)
                .unwrap_or_else(|e| panic!("{kind}, {omitted}: checkpoint 3 lost a file: {e}"));
            job.assert_restores(storage.as_ref(), &before, tmp.path())?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A flipped bit in a response (items 13 and 14).

#[test]
fn a_bit_flip_while_opening_does_not_make_a_checkpoint_unreadable() -> Result<()> {
    for kind in kinds() {
        let tmp = scratch();
        let (untrusted, storage) = untrusted_root(tmp.path())?;
        let mut job = three_checkpoints(kind, &storage, tmp.path())?;
        untrusted.flip_reads("chk-0000000002/_metadata", 1);
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
        assert_eq!(untrusted.fired().1, 1, "{kind}: the flip happened");
        assert!(
            coordinator.unreadable().is_empty(),
            "{kind}: one damaged response made checkpoint 2 unreadable"
        );
        // So collection of `shared/` goes on: a completion with retention 1 leaves nothing
        // but checkpoint 4.
        job.checkpoint(&mut coordinator, 4)?;
        let ids: Vec<u64> = coordinator.completed().map(|m| m.id).collect();
        assert_eq!(ids, vec![4], "{kind}");
        assert!(coordinator.orphans()?.is_empty(), "{kind}: orphans left");
    }
    Ok(())
}

#[test]
fn a_damaged_response_is_not_a_damaged_checkpoint() -> Result<()> {
    for kind in kinds() {
        let tmp = scratch();
        let (untrusted, storage) = untrusted_root(tmp.path())?;
        let job = three_checkpoints(kind, &storage, tmp.path())?;
        let newest = latest_restorable(storage.as_ref())?;
        // A file of checkpoint 3 alone (checkpoint 2 must stay intact for the fallback), and
        // not empty (a flipped bit needs a byte).
        let older = CheckpointCoordinator::open(Arc::clone(&storage), 3)?
            .completed()
            .find(|m| m.id == 2)
            .cloned()
            .expect("checkpoint 2");
        let file = newest
            .files()
            .filter(|f| f.size > 0 && !older.files().any(|g| g.path == f.path))
            .max_by_key(|f| f.size)
            .expect("a file of its own")
            .path
            .to_string();

        // One response of one file damaged: still checkpoint 3, not a fallback to 2.
        untrusted.flip_reads(&file, 1);
        let found = latest_restorable(storage.as_ref())?;
        assert_eq!(untrusted.fired().1, 1, "{kind}: the flip happened");
        assert_eq!(
            found.id, 3,
            "{kind}: a damaged response skipped checkpoint 3"
        );
        job.assert_restores(storage.as_ref(), &found, tmp.path())?;

        // The same damage on every read is damage: the fallback takes checkpoint 2.
        untrusted.flip_reads(&file, u64::MAX);
        assert_eq!(latest_restorable(storage.as_ref())?.id, 2, "{kind}");
        untrusted.flip_reads("", 0);
    }
    Ok(())
}

#[test]
fn a_root_whose_checkpoints_all_fail_to_verify_is_not_an_empty_root() -> Result<()> {
    for kind in kinds() {
        let tmp = scratch();
        let (_, storage) = untrusted_root(tmp.path())?;
        assert!(
            matches!(
                latest_restorable(storage.as_ref()),
                Err(Error::NoRestorableCheckpoint { .. })
            ),
            "{kind}: an empty root"
        );
        let _job = three_checkpoints(kind, &storage, tmp.path())?;
        let coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 3)?;
        let metas: Vec<SnapshotMetadata> = coordinator.completed().cloned().collect();
        drop(coordinator);
        for meta in &metas {
            // Each checkpoint loses a file of its own.
            let own = meta
                .files()
                .find(|f| {
                    metas
                        .iter()
                        .all(|m| m.id == meta.id || !m.files().any(|g| g.path == f.path))
                })
                .or_else(|| meta.files().next())
                .expect("a file");
            storage.delete(&own.path)?;
        }
        match latest_restorable(storage.as_ref()) {
            Err(Error::NoVerifiedCheckpoint { damaged, .. }) => {
                for id in 1..=3 {
                    assert!(damaged.contains(&format!("{id} (")), "{kind}: {damaged}");
                }
            }
            other => panic!("{kind}: every checkpoint damaged read as {other:?}"),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A write acknowledged and lost (item 16), and retention at open (item 2).

#[test]
fn a_lost_metadata_write_fails_the_completion_and_drops_nothing() -> Result<()> {
    for kind in kinds() {
        let tmp = scratch();
        let (untrusted, storage) = untrusted_root(tmp.path())?;
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
        let mut job = Job::open(kind, tmp.path())?;
        job.checkpoint(&mut coordinator, 1)?;
        untrusted.lose_writes("chk-0000000002/_metadata", 1);
        let lost = job.checkpoint(&mut coordinator, 2);
        assert_eq!(untrusted.fired().0, 1, "{kind}: the write was lost");
        assert!(
            matches!(lost, Err(Error::CheckpointState { id: 2, .. })),
            "{kind}: a lost _metadata completed: {lost:?}"
        );
        coordinator.abort(2)?;
        assert_eq!(coordinator.latest().map(|m| m.id), Some(1), "{kind}");
        drop(coordinator);
        let meta = latest_restorable(storage.as_ref())?;
        assert_eq!(
            meta.id, 1,
            "{kind}: checkpoint 1 was dropped for a lost one"
        );
        job.assert_restores(storage.as_ref(), &meta, tmp.path())?;
    }
    Ok(())
}

#[test]
fn a_metadata_whose_directory_sync_fails_is_not_a_completed_checkpoint() -> Result<()> {
    // A local disk only: the directory `fsync` is a local directory's.
    for kind in kinds() {
        let tmp = scratch();
        let local = Arc::new(LocalDirStorage::new(tmp.path().join("root"))?);
        let storage: Arc<dyn CheckpointStorage> = local.clone();
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
        let mut job = Job::open(kind, tmp.path())?;
        job.checkpoint(&mut coordinator, 1)?;
        local.fail_put_new_dir_syncs(1);
        let failed = job.checkpoint(&mut coordinator, 2);
        assert!(
            matches!(failed, Err(Error::NotDurable { .. })),
            "{kind}: a _metadata that may not survive a crash completed: {failed:?}"
        );
        coordinator.abort(2)?;
        let ids: Vec<u64> = coordinator.completed().map(|m| m.id).collect();
        assert_eq!(
            ids,
            vec![1],
            "{kind}: retention ran for a checkpoint that may vanish"
        );
        drop(coordinator);
        let meta = latest_restorable(storage.as_ref())?;
        assert_eq!(meta.id, 1, "{kind}");
        job.assert_restores(storage.as_ref(), &meta, tmp.path())?;
    }
    Ok(())
}

#[test]
fn opening_with_retention_one_keeps_the_checkpoint_the_job_restores() -> Result<()> {
    for kind in kinds() {
        let tmp = scratch();
        let (_, storage) = untrusted_root(tmp.path())?;
        let job = three_checkpoints(kind, &storage, tmp.path())?;
        // Checkpoint 3 loses a file only it lists: the job falls back to 2.
        let metas: Vec<SnapshotMetadata> = {
            let c = CheckpointCoordinator::open(Arc::clone(&storage), 3)?;
            c.completed().cloned().collect()
        };
        let own = metas[2]
            .files()
            .find(|f| !metas[1].files().any(|g| g.path == f.path))
            .expect("checkpoint 3 has a file of its own");
        storage.delete(&own.path)?;
        let chosen = latest_restorable(storage.as_ref())?;
        assert_eq!(chosen.id, 2, "{kind}");

        // The restarted job opens its coordinator with retention 1, then restores.
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
        verify_files(storage.as_ref(), &chosen)
            .unwrap_or_else(|e| panic!("{kind}: opening dropped the checkpoint to restore: {e}"));
        let config = config_in(kind, KeyGroupRange::all(128)?, tmp.path());
        let mut restored = coordinator.restore_instance(2, &config, RestoreMode::Claim)?;
        let handles = Handles::register(&mut restored)?;
        assert_matches_model(&mut restored, &handles, &job.at[&2])?;

        // Its first checkpoint, read back, is what retention then keeps alone.
        let id = coordinator.next_checkpoint_id();
        checkpoint(&mut restored, &mut coordinator, id, |_| Ok(()))?;
        let ids: Vec<u64> = coordinator.completed().map(|m| m.id).collect();
        assert_eq!(ids, vec![id], "{kind}");
        // It holds checkpoint 2's state, and restores.
        let meta = latest_restorable(storage.as_ref())?;
        assert_eq!(meta.id, id, "{kind}");
        let config = config_in(kind, KeyGroupRange::all(128)?, tmp.path());
        let mut again = restore_instance(storage.as_ref(), &meta, &config, RestoreMode::NoClaim)?;
        let handles = Handles::register(&mut again)?;
        assert_matches_model(&mut again, &handles, &job.at[&2])?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The lease (item 3, the library's side).

#[test]
fn a_coordinator_holds_a_lease_while_it_lives() -> Result<()> {
    let tmp = scratch();
    let storage = crate::root::open(tmp.path().join("root"))?;
    assert_eq!(read_lease(storage.as_ref())?, None, "a new root");
    let mut first = CheckpointCoordinator::open(Arc::clone(&storage), 3)?;
    let lease = read_lease(storage.as_ref())?.expect("the coordinator's lease");
    assert_eq!(lease, first.lease());
    assert_eq!(lease.epoch, first.epoch());
    assert!(lease.is_live(lease.renewed_ms));

    // A shorter lease is written at once; a lapsed one is not live.
    first.set_lease_duration(std::time::Duration::from_millis(1))?;
    let short = read_lease(storage.as_ref())?.expect("rewritten");
    assert_eq!(short.expires_ms, short.renewed_ms + 1);
    assert!(!short.is_live(short.expires_ms));

    // A newer coordinator's lease is the one that counts; dropping it frees the root.
    let second = CheckpointCoordinator::open(Arc::clone(&storage), 3)?;
    assert_eq!(
        read_lease(storage.as_ref())?.map(|l| l.epoch),
        Some(second.epoch())
    );
    drop(second);
    assert_eq!(read_lease(storage.as_ref())?, None, "released on drop");
    drop(first);
    let leases = storage.list(Some(&StoragePath::parse("_coordinator")?))?;
    assert!(
        leases
            .iter()
            .all(|o| !o.path.file_name().starts_with("lease-")),
        "every lease released: {leases:?}"
    );
    Ok(())
}
