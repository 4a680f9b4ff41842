//! The coordinator's safety rules (issue 13): what completes, what a read error or an
//! unreadable `_metadata` protects, what completion reports, and the restore modes in one root.

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use common::checkpointing::{
    assert_matches_model, checkpoint, config_in, key_group, kinds, run_ops, scratch,
};
use common::faults::{ReadFault, ReadFaults};
use common::model::{Handles, Model, OpGenerator};
use statebackend::checkpoint::{CheckpointCoordinator, RestoreMode, SnapshotMetadata};
use statebackend::storage::{CheckpointStorage, FaultMode, FaultyStorage, LocalDirStorage};
use statebackend::{AnyBackend, BackendKind, Error, KeyGroupRange, Result};

/// Every file in the root, by path.
/// The files of the root's checkpoints (not the coordinators' epoch files, which every open
/// adds).
fn files(storage: &dyn CheckpointStorage) -> BTreeSet<String> {
    storage
        .list(None)
        .unwrap()
        .into_iter()
        .map(|o| o.path.to_string())
        .filter(|p| !p.starts_with("_coordinator/"))
        .collect()
}

/// One instance owning all 128 key groups, with a model of what it holds.
struct Job {
    backend: AnyBackend,
    handles: Handles,
    model: Model,
    ops: OpGenerator,
}

impl Job {
    fn open(kind: BackendKind, dir: &Path, seed: u64) -> Result<Self> {
        let range = KeyGroupRange::all(128)?;
        let mut backend = AnyBackend::open(&config_in(kind, range, dir))?;
        let handles = Handles::register(&mut backend)?;
        Ok(Self {
            backend,
            handles,
            model: Model::default(),
            ops: OpGenerator::new(seed, 40, |_| true),
        })
    }

    fn run(&mut self, n: usize) -> Result<()> {
        run_ops(
            &mut self.backend,
            &self.handles,
            &mut self.model,
            &mut self.ops,
            n,
        )
    }

    fn checkpoint(
        &mut self,
        coordinator: &mut CheckpointCoordinator,
        id: u64,
    ) -> Result<SnapshotMetadata> {
        self.run(60)?;
        Ok(checkpoint(&mut self.backend, coordinator, id, |_| Ok(()))?.0)
    }
}

fn local_root(dir: &Path) -> Result<Arc<dyn CheckpointStorage>> {
    Ok(Arc::new(LocalDirStorage::new(dir.join("root"))?))
}

// ---------------------------------------------------------------------------------------------
// Item 2: completion requires instances that partition the job's key groups.

#[test]
fn complete_refuses_instance_sets_that_do_not_partition_the_key_groups() -> Result<()> {
    for kind in kinds() {
        let tmp = scratch();
        let storage = local_root(tmp.path())?;
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 3)?;
        coordinator.begin(1)?;
        let mut parts = Vec::new();
        for i in 0..2 {
            let range = KeyGroupRange::for_operator(128, 2, i)?;
            let mut b = AnyBackend::open(&config_in(kind, range, tmp.path()))?;
            let h = Handles::register(&mut b)?;
            let mut g = OpGenerator::new(7 + u64::from(i), 40, |k| range.contains(key_group(k)));
            run_ops(&mut b, &h, &mut Model::default(), &mut g, 50)?;
            parts.push(b.snapshot(1)?.upload(storage.as_ref())?.0);
        }
        let one = coordinator.complete(1, vec![parts[0].clone()]);
        assert!(
            matches!(one, Err(Error::KeyGroupCoverage { .. })),
            "{kind}: one of two instances: {one:?}"
        );
        let doubled = coordinator.complete(1, vec![parts[0].clone(), parts[0].clone()]);
        assert!(
            matches!(doubled, Err(Error::KeyGroupCoverage { .. })),
            "{kind}: an instance twice: {doubled:?}"
        );
        let mut other_max = parts[1].clone();
        other_max.max_parallelism = 256;
        let mixed = coordinator.complete(1, vec![parts[0].clone(), other_max]);
        assert!(
            matches!(mixed, Err(Error::KeyGroupCoverage { .. })),
            "{kind}: two max parallelisms: {mixed:?}"
        );
        assert!(coordinator.latest().is_none(), "nothing completed");
        // The refused attempts left the checkpoint in flight: the whole set completes it.
        let meta = coordinator.complete(1, parts.clone())?;
        assert_eq!(meta.instances.len(), 2);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Item 1: a read error fails the open; an unreadable `_metadata` keeps `shared/` whole.

#[test]
fn a_read_error_while_opening_fails_the_open_and_deletes_nothing() -> Result<()> {
    for kind in kinds() {
        let tmp = scratch();
        let storage = local_root(tmp.path())?;
        {
            let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 3)?;
            let mut job = Job::open(kind, tmp.path(), 1)?;
            for id in 1..=3 {
                job.checkpoint(&mut coordinator, id)?;
            }
            // Checkpoint 4 uploads and never completes: leftovers for the next open's sweep.
            job.run(60)?;
            coordinator.begin(4)?;
            job.backend.snapshot(4)?.upload(storage.as_ref())?;
        }
        // Count the reads of an open (on a copy: retention 1 drops two checkpoints).
        let counted = scratch();
        copy_dir(&tmp.path().join("root"), &counted.path().join("root"));
        let listed_4 = counted.path().join("root/chk-0000000004").is_dir();
        let faulty = Arc::new(ReadFaults::new(LocalDirStorage::new(
            counted.path().join("root"),
        )?));
        faulty.set(ReadFault::None);
        CheckpointCoordinator::open(faulty.clone(), 1).map(|_| ())?;
        let reads = faulty.reads();
        // Reading the root: the epoch listing, the root's listing, the three `_metadata` (each
        // asked for its size, then read). Then the sweep: its listing, the `_metadata` of
        // checkpoints 4 and 5 looked up directly (a listing may omit objects), and the fence
        // check before it deletes.
        // An incremental heap checkpoint's leftovers are all in `shared/`: with no `chk-4`
        // directory listed, the sweep looks up checkpoint 4's `_metadata` alone.
        const READING_THE_ROOT: u64 = 8;
        assert_eq!(reads, READING_THE_ROOT + 3 + u64::from(listed_4), "{kind}");
        assert!(
            files(&LocalDirStorage::new(counted.path().join("root"))?).len()
                < files(storage.as_ref()).len(),
            "{kind}: the sweep deletes checkpoint 4's leftovers when nothing breaks"
        );
        for k in 1..=reads {
            let tmp2 = scratch();
            copy_dir(&tmp.path().join("root"), &tmp2.path().join("root"));
            let root = tmp2.path().join("root");
            let faulty = Arc::new(ReadFaults::new(LocalDirStorage::new(&root)?));
            let listed_before = files(&LocalDirStorage::new(&root)?);
            faulty.set(ReadFault::FailAt(k));
            let opened = CheckpointCoordinator::open(faulty.clone(), 1);
            if k <= READING_THE_ROOT {
                assert!(
                    matches!(opened, Err(Error::InjectedFault { .. })),
                    "{kind}: read {k} of the root broken, open must fail"
                );
            } else {
                // The cleanup's listing or fence check failed: the open stands, the cleanup
                // is reported.
                let opened = opened?;
                assert!(opened.cleanup_error().is_some(), "{kind}");
                assert_eq!(opened.latest().map(|m| m.id), Some(3));
            }
            assert_eq!(
                files(&LocalDirStorage::new(&root)?),
                listed_before,
                "{kind}: read {k} broken: nothing may be deleted"
            );
        }
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Rewrites the format version of `chk-<id>/_metadata` (bytes 4..6): a release newer than this
/// build wrote it. This build cannot know which shared files it lists.
fn make_newer_version(root: &Path, id: u64) {
    let path = root.join(format!("chk-{id:010}")).join("_metadata");
    let mut bytes = std::fs::read(&path).unwrap();
    let newer = statebackend::checkpoint::metadata::METADATA_VERSION + 1;
    bytes[4..6].copy_from_slice(&newer.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn an_unreadable_checkpoint_keeps_every_file_it_may_list() -> Result<()> {
    for kind in kinds() {
        let tmp = scratch();
        let storage = local_root(tmp.path())?;
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
        let mut job = Job::open(kind, tmp.path(), 2)?;
        let mut metas = Vec::new();
        for id in 1..=3 {
            metas.push(job.checkpoint(&mut coordinator, id)?);
        }
        drop(coordinator);
        let listed: Vec<String> = metas[2].files().map(|f| f.path.to_string()).collect();
        make_newer_version(&tmp.path().join("root"), 3);

        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
        assert_eq!(coordinator.unreadable().len(), 1, "{kind}");
        assert!(matches!(
            coordinator.unreadable()[0].error,
            Error::UnsupportedFormat { .. }
        ));
        assert!(
            coordinator.latest().is_none(),
            "{kind}: no readable checkpoint"
        );
        // The job goes on from the state it has (ids continue past the unreadable one).
        let mut job = Job::open(kind, tmp.path(), 3)?;
        for id in 4..=6 {
            assert_eq!(coordinator.next_checkpoint_id(), id);
            job.checkpoint(&mut coordinator, id)?;
        }
        let now = files(storage.as_ref());
        for path in &listed {
            assert!(
                now.contains(path),
                "{kind}: {path} of the unreadable checkpoint was deleted"
            );
        }
        assert!(
            coordinator
                .orphans()?
                .iter()
                .all(|(p, _)| !p.as_str().starts_with("shared/"))
        );

        // The operator decides: removing the unreadable checkpoint's directory releases its
        // files to garbage collection.
        std::fs::remove_dir_all(tmp.path().join("root").join("chk-0000000003")).unwrap();
        let coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
        assert!(coordinator.unreadable().is_empty());
        let latest = coordinator.latest().unwrap().clone();
        let referenced: BTreeSet<String> = latest
            .files()
            .map(|f| f.path.to_string())
            .chain([format!("chk-{:010}/_metadata", latest.id)])
            .collect();
        assert_eq!(
            files(storage.as_ref()),
            referenced,
            "{kind}: only checkpoint 6 is left"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Item 5: completion reports success once `_metadata` is durable.

#[test]
fn a_cleanup_failure_after_completion_is_reported_apart_and_retried() -> Result<()> {
    for kind in kinds() {
        let tmp = scratch();
        let faulty = Arc::new(FaultyStorage::new(
            LocalDirStorage::new(tmp.path().join("root"))?,
            FaultMode::None,
        ));
        let mut coordinator = CheckpointCoordinator::open(faulty.clone(), 1)?;
        let mut job = Job::open(kind, tmp.path(), 4)?;
        job.checkpoint(&mut coordinator, 1)?;
        job.run(60)?;
        coordinator.begin(2)?;
        let (part, _) = job.backend.snapshot(2)?.upload(faulty.as_ref())?;
        // Operation +1 writes `_metadata`; +2 is the first deletion of the retention.
        faulty.set_mode(FaultMode::FailAt(faulty.ops() + 2));
        let meta = coordinator.complete(2, vec![part])?.clone();
        assert_eq!(meta.id, 2);
        assert!(
            coordinator.cleanup_error().is_some(),
            "{kind}: the failed deletion is reported"
        );
        assert_eq!(coordinator.latest().map(|m| m.id), Some(2));
        // A restart sees the completed checkpoint, as the caller was told.
        let reopened = CheckpointCoordinator::open(faulty.clone(), 1)?;
        assert_eq!(reopened.latest().map(|m| m.id), Some(2), "{kind}");
        assert!(
            reopened.cleanup_error().is_none(),
            "{kind}: the retry succeeded"
        );
        assert!(reopened.orphans()?.is_empty());
        // What a restart finds is kept until it completes a checkpoint itself (the newest
        // found might not restore); then the failed drop of checkpoint 1 is done.
        let ids: Vec<u64> = reopened.completed().map(|m| m.id).collect();
        assert_eq!(ids, vec![1, 2], "{kind}: kept through the restart");
        // And it restores exactly.
        let mut restored = statebackend::checkpoint::restore_instance(
            faulty.as_ref(),
            &meta,
            &config_in(kind, KeyGroupRange::all(128)?, tmp.path()),
            RestoreMode::NoClaim,
        )?;
        let h = Handles::register(&mut restored)?;
        assert_matches_model(&mut restored, &h, &job.model)?;
        let mut reopened = reopened;
        let mut probe = Job::open(kind, tmp.path(), 6)?;
        probe.checkpoint(&mut reopened, 3)?;
        let ids: Vec<u64> = reopened.completed().map(|m| m.id).collect();
        assert_eq!(ids, vec![3], "{kind}: checkpoints 1 and 2 are dropped now");
        assert!(reopened.orphans()?.is_empty());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Item 7: restore modes in the root that keeps checkpointing.

#[test]
fn a_no_claim_restore_keeps_the_restored_checkpoint_out_of_retention() -> Result<()> {
    for kind in kinds() {
        let tmp = scratch();
        let storage = local_root(tmp.path())?;
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
        let mut job = Job::open(kind, tmp.path(), 5)?;
        for id in 1..=3 {
            job.checkpoint(&mut coordinator, id)?;
        }
        let model_at_3 = job.model.clone();
        drop(job);

        let config = config_in(kind, KeyGroupRange::all(128)?, tmp.path());
        let mut restored = coordinator.restore_instance(3, &config, RestoreMode::NoClaim)?;
        let handles = Handles::register(&mut restored)?;
        let mut job = Job {
            backend: restored,
            handles,
            model: model_at_3.clone(),
            ops: OpGenerator::new(55, 40, |_| true),
        };
        for id in 4..=7 {
            job.checkpoint(&mut coordinator, id)?;
        }
        let kept: Vec<u64> = coordinator.completed().map(|m| m.id).collect();
        assert_eq!(kept, vec![3, 6, 7], "{kind}: no-claim checkpoint 3 is kept");
        // Across a restart too, and it still restores exactly.
        drop(coordinator);
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
        let kept: Vec<u64> = coordinator.completed().map(|m| m.id).collect();
        assert_eq!(kept, vec![3, 6, 7], "{kind}: after a restart");
        let meta3 = coordinator.completed().next().unwrap().clone();
        coordinator.verify(&meta3)?;
        let mut again = statebackend::checkpoint::restore_instance(
            storage.as_ref(),
            &meta3,
            &config_in(kind, KeyGroupRange::all(128)?, tmp.path()),
            RestoreMode::NoClaim,
        )?;
        let h = Handles::register(&mut again)?;
        assert_matches_model(&mut again, &h, &model_at_3)?;
        // Released, it is retention's again.
        coordinator.release(3)?;
        let kept: Vec<u64> = coordinator.completed().map(|m| m.id).collect();
        assert_eq!(kept, vec![6, 7], "{kind}: released");
        assert!(
            !files(storage.as_ref())
                .iter()
                .any(|p| p.starts_with("chk-0000000003"))
        );
    }
    Ok(())
}

#[test]
fn a_claim_restore_hands_the_checkpoint_to_retention_and_keeps_what_it_reuses() -> Result<()> {
    for kind in kinds() {
        let tmp = scratch();
        let storage = local_root(tmp.path())?;
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
        let mut job = Job::open(kind, tmp.path(), 6)?;
        for id in 1..=2 {
            job.checkpoint(&mut coordinator, id)?;
        }
        let model = job.model.clone();
        drop(job);
        let config = config_in(kind, KeyGroupRange::all(128)?, tmp.path());
        let mut restored = coordinator.restore_instance(2, &config, RestoreMode::Claim)?;
        let handles = Handles::register(&mut restored)?;
        let mut job = Job {
            backend: restored,
            handles,
            model,
            ops: OpGenerator::new(66, 40, |_| true),
        };
        for id in 3..=5 {
            let meta = job.checkpoint(&mut coordinator, id)?;
            let kept: Vec<u64> = coordinator.completed().map(|m| m.id).collect();
            assert_eq!(
                kept,
                vec![id],
                "{kind}: the claimed checkpoint is retention's"
            );
            coordinator.verify(&meta)?;
        }
        let latest = coordinator.latest().unwrap().clone();
        let mut again = statebackend::checkpoint::restore_instance(
            storage.as_ref(),
            &latest,
            &config_in(kind, KeyGroupRange::all(128)?, tmp.path()),
            RestoreMode::Claim,
        )?;
        let h = Handles::register(&mut again)?;
        assert_matches_model(&mut again, &h, &job.model)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Fallback: damage falls back to an older checkpoint, a failed read does not.

#[test]
fn fallback_skips_damaged_checkpoints_but_not_failed_reads() -> Result<()> {
    for kind in kinds() {
        let tmp = scratch();
        let root = tmp.path().join("root");
        let faulty = Arc::new(ReadFaults::new(LocalDirStorage::new(&root)?));
        let mut coordinator = CheckpointCoordinator::open(faulty.clone(), 3)?;
        let mut job = Job::open(kind, tmp.path(), 8)?;
        job.checkpoint(&mut coordinator, 1)?;
        let model_1 = job.model.clone();
        let newest = job.checkpoint(&mut coordinator, 2)?;

        // A storage that stops answering is not damage: no silent fallback to checkpoint 1.
        faulty.set(ReadFault::LostAt(1));
        let verified = coordinator.latest_verified().map(|m| m.id);
        assert!(
            matches!(verified, Err(Error::InjectedFault { .. })),
            "{kind}: {verified:?}"
        );
        faulty.set(ReadFault::None);

        // A flipped byte in a file only checkpoint 2 has is damage: fall back to 1.
        let old: BTreeSet<_> = coordinator
            .completed()
            .next()
            .unwrap()
            .files()
            .map(|f| f.path.clone())
            .collect();
        let own = newest
            .files()
            .filter(|f| !old.contains(&f.path))
            .max_by_key(|f| f.size)
            .unwrap();
        let path = root.join(own.path.as_str());
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
        let chosen = coordinator.latest_verified()?.id;
        assert_eq!(chosen, 1, "{kind}");
        let config = config_in(kind, KeyGroupRange::all(128)?, tmp.path());
        let mut backend = coordinator.restore_instance(chosen, &config, RestoreMode::Claim)?;
        let h = Handles::register(&mut backend)?;
        assert_matches_model(&mut backend, &h, &model_1)?;

        // A newer checkpoint in a format this build does not know is not damage: no
        // fallback past it (a rollback to an older release must not restore older state).
        job.checkpoint(&mut coordinator, 3)?;
        drop(coordinator);
        make_newer_version(&root, 3);
        let coordinator = CheckpointCoordinator::open(faulty.clone(), 3)?;
        let verified = coordinator.latest_verified().map(|m| m.id);
        assert!(
            matches!(verified, Err(Error::UnreadableCheckpoint { id: 3, .. })),
            "{kind}: {verified:?}"
        );
    }
    Ok(())
}
