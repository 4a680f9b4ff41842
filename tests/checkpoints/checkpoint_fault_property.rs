//! Property: over random sequences of writes, checkpoints, aborts, coordinator restarts,
//! restores and damaged `_metadata` files, with transient *write* faults injected into
//! checkpoints and transient *read* faults into restarts and restores:
//!
//! - no file that a retained checkpoint lists is ever deleted (each verifies: size and crc32);
//! - no file that an unreadable checkpoint listed before it became unreadable is ever deleted;
//! - `complete` returns `Ok` exactly when the checkpoint exists (a restart sees it);
//! - every restore is exact, or a typed error after which a retry is exact.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use common::checkpointing::{assert_matches_model, config_in, kinds, run_ops, scratch};
use common::faults::{ReadFault, ReadFaults};
use common::model::{Handles, Model, OpGenerator};
use proptest::prelude::*;
use statebackend::checkpoint::{
    CheckpointCoordinator, RestoreMode, SnapshotMetadata, restore_instance, verify_files,
};
use statebackend::storage::{FaultMode, FaultyStorage, LocalDirStorage};
use statebackend::{AnyBackend, BackendKind, Error, KeyGroupRange, Result};

/// Reads break below writes: `FaultyStorage` (writes) wraps `ReadFaults` (reads).
type Storage = FaultyStorage<ReadFaults<LocalDirStorage>>;

#[derive(Debug, Clone)]
enum Action {
    Write(usize),
    /// A checkpoint whose `k`-th storage write fails (0: none).
    Checkpoint(u64),
    Abort,
    /// A coordinator restart whose `k`-th storage read fails (0: none).
    Restart(u64),
    /// A restore of the latest checkpoint whose `k`-th read fails (0: none).
    Restore(u64),
    /// The newest `_metadata` is truncated (a torn copy, a bad disk), then the coordinator
    /// restarts.
    Damage,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (30usize..200).prop_map(Action::Write),
        4 => (0u64..8).prop_map(Action::Checkpoint),
        1 => Just(Action::Abort),
        2 => (0u64..6).prop_map(Action::Restart),
        2 => (0u64..12).prop_map(Action::Restore),
        1 => Just(Action::Damage),
    ]
}

const RETAINED: usize = 2;

struct World {
    kind: BackendKind,
    dir: tempfile::TempDir,
    storage: Arc<Storage>,
    coordinator: Option<CheckpointCoordinator>,
    backend: AnyBackend,
    handles: Handles,
    model: Model,
    ops: OpGenerator,
    /// The model at every checkpoint `complete` reported.
    models: BTreeMap<u64, Model>,
    /// Files listed by checkpoints that became unreadable: never to be deleted.
    protected: BTreeSet<(String, u64, u32)>,
    last_id: u64,
}

impl World {
    fn new(kind: BackendKind, seed: u64) -> Result<Self> {
        let dir = scratch();
        let storage = Arc::new(FaultyStorage::new(
            ReadFaults::new(LocalDirStorage::new(dir.path().join("root"))?),
            FaultMode::None,
        ));
        let coordinator = CheckpointCoordinator::open(storage.clone(), RETAINED)?;
        let mut backend = AnyBackend::open(&Self::config(kind, dir.path()))?;
        let handles = Handles::register(&mut backend)?;
        Ok(Self {
            kind,
            dir,
            storage,
            coordinator: Some(coordinator),
            backend,
            handles,
            model: Model::default(),
            ops: OpGenerator::new(seed, 30, |_| true),
            models: BTreeMap::new(),
            protected: BTreeSet::new(),
            last_id: 0,
        })
    }

    fn config(kind: BackendKind, dir: &Path) -> statebackend::BackendConfig {
        config_in(kind, KeyGroupRange::all(128).unwrap(), dir)
    }

    fn coordinator(&mut self) -> Result<&mut CheckpointCoordinator> {
        if self.coordinator.is_none() {
            self.coordinator = Some(CheckpointCoordinator::open(self.storage.clone(), RETAINED)?);
        }
        Ok(self.coordinator.as_mut().unwrap())
    }

    fn next_id(&mut self) -> Result<u64> {
        let proposed = self.coordinator()?.next_checkpoint_id();
        self.last_id = proposed.max(self.last_id + 1);
        Ok(self.last_id)
    }

    fn step(&mut self, action: &Action) -> Result<()> {
        match action {
            Action::Write(n) => run_ops(
                &mut self.backend,
                &self.handles,
                &mut self.model,
                &mut self.ops,
                *n,
            )?,
            Action::Checkpoint(k) => self.checkpoint(*k)?,
            Action::Abort => {
                let id = self.next_id()?;
                self.coordinator()?.begin(id)?;
                self.backend.snapshot(id)?.upload(self.storage.as_ref())?;
                self.coordinator()?.abort(id)?;
            }
            Action::Restart(k) => {
                self.coordinator = None;
                self.storage.inner().set(if *k == 0 {
                    ReadFault::None
                } else {
                    ReadFault::FailAt(*k)
                });
                let opened = CheckpointCoordinator::open(self.storage.clone(), RETAINED);
                self.storage.inner().set(ReadFault::None);
                match opened {
                    Ok(c) => self.coordinator = Some(c),
                    // A broken read fails the open; the next use opens again.
                    Err(Error::InjectedFault { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Action::Restore(k) => self.restore(*k)?,
            Action::Damage => {
                let Some(latest) = self.coordinator()?.latest().cloned() else {
                    return Ok(());
                };
                for f in latest.files() {
                    self.protected.insert((f.path.to_string(), f.size, f.crc32));
                }
                let path = self
                    .dir
                    .path()
                    .join("root")
                    .join(format!("chk-{:010}", latest.id))
                    .join("_metadata");
                let len = std::fs::metadata(&path).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap();
                self.models.remove(&latest.id);
                self.coordinator = None;
                self.coordinator()?;
            }
        }
        self.check()
    }

    fn checkpoint(&mut self, k: u64) -> Result<()> {
        let id = self.next_id()?;
        self.coordinator()?.begin(id)?;
        let ops = self.storage.ops();
        if k > 0 {
            self.storage.set_mode(FaultMode::FailAt(ops + k));
        }
        let uploaded = self
            .backend
            .snapshot(id)
            .and_then(|p| p.upload(self.storage.as_ref()));
        let completed = match uploaded {
            Ok((part, _)) => self
                .coordinator()?
                .complete(id, vec![part.clone()])
                .map(|m| (m.clone(), part)),
            Err(e) => Err(e),
        };
        self.storage.set_mode(FaultMode::None);
        match completed {
            Ok((meta, part)) => {
                let coordinator = self.coordinator()?;
                if coordinator.cleanup_error().is_none() {
                    assert!(
                        coordinator.completed().count() <= RETAINED,
                        "retention after completing {}",
                        meta.id
                    );
                }
                self.backend.notify_checkpoint_complete(&part)?;
                self.models.insert(meta.id, self.model.clone());
                // Completion was reported: a restart must see the checkpoint.
                let seen = CheckpointCoordinator::open(self.storage.clone(), RETAINED)?;
                assert!(seen.completed().any(|m| m.id == id), "checkpoint {id} lost");
                drop(seen);
                self.coordinator = None;
            }
            Err(Error::InjectedFault { .. }) => {
                self.coordinator()?.abort(id)?;
                assert!(
                    !self.coordinator()?.completed().any(|m| m.id == id),
                    "a failed completion must not exist"
                );
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn restore(&mut self, k: u64) -> Result<()> {
        let Some(latest) = self.coordinator()?.latest().cloned() else {
            return Ok(());
        };
        let config = Self::config(self.kind, self.dir.path());
        self.storage.inner().set(if k == 0 {
            ReadFault::None
        } else {
            ReadFault::FailAt(k)
        });
        let first = restore_instance(self.storage.as_ref(), &latest, &config, RestoreMode::Claim);
        self.storage.inner().set(ReadFault::None);
        let mut restored = match first {
            Ok(b) => b,
            Err(Error::InjectedFault { .. }) => {
                restore_instance(self.storage.as_ref(), &latest, &config, RestoreMode::Claim)?
            }
            Err(e) => return Err(e),
        };
        self.handles = Handles::register(&mut restored)?;
        self.backend = restored;
        self.model = self.models[&latest.id].clone();
        assert_matches_model(&mut self.backend, &self.handles, &self.model)
    }

    fn check(&mut self) -> Result<()> {
        let storage = self.storage.clone();
        let coordinator = self.coordinator()?;
        let retained: Vec<SnapshotMetadata> = coordinator.completed().cloned().collect();
        // Beyond the retention only what the coordinator found at open: it drops those once
        // it completed a checkpoint itself.
        let protected: Vec<u64> = coordinator.protected().collect();
        let owned = retained
            .iter()
            .filter(|m| !protected.contains(&m.id))
            .count();
        assert!(
            owned <= RETAINED,
            "{owned} retained beyond the protected {protected:?}"
        );
        for meta in &retained {
            verify_files(storage.as_ref(), meta)?;
        }
        let root = self.dir.path().join("root");
        for (path, size, crc) in &self.protected {
            let bytes = std::fs::read(root.join(path))
                .unwrap_or_else(|e| panic!("{path} of an unreadable checkpoint: {e}"));
            assert_eq!(bytes.len() as u64, *size, "{path}");
            assert_eq!(crc32fast::hash(&bytes), *crc, "{path}");
        }
        Ok(())
    }

    /// At the end: every retained checkpoint restores exactly.
    fn finish(mut self) -> Result<()> {
        let retained: Vec<SnapshotMetadata> = self.coordinator()?.completed().cloned().collect();
        for meta in retained {
            let mut restored = restore_instance(
                self.storage.as_ref(),
                &meta,
                &Self::config(self.kind, self.dir.path()),
                RestoreMode::NoClaim,
            )?;
            let h = Handles::register(&mut restored)?;
            assert_matches_model(&mut restored, &h, &self.models[&meta.id])?;
        }
        Ok(())
    }
}

fn run(kind: BackendKind, actions: &[Action]) -> Result<()> {
    let mut world = World::new(kind, actions.len() as u64)?;
    for action in actions {
        world.step(action)?;
    }
    world.finish()
}

#[test]
fn damage_then_faults_keep_the_unreadable_checkpoints_files() -> Result<()> {
    for kind in kinds() {
        run(
            kind,
            &[
                Action::Write(100),
                Action::Checkpoint(0),
                Action::Write(100),
                Action::Checkpoint(0),
                Action::Damage,
                Action::Write(50),
                Action::Checkpoint(2),
                Action::Checkpoint(0),
                Action::Restart(2),
                Action::Checkpoint(0),
                Action::Checkpoint(0),
                Action::Restore(3),
            ],
        )?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn faults_never_lose_a_retained_or_unreadable_checkpoints_files(
        actions in prop::collection::vec(action(), 4..14)
    ) {
        for kind in kinds() {
            run(kind, &actions).map_err(|e| TestCaseError::fail(format!("{kind}: {e}")))?;
        }
    }
}
