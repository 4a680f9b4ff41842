//! Checkpoint and restore on both backends: the restored state equals the state at the
//! synchronous part, even with writes during the asynchronous upload.
use crate::common;

use std::sync::Arc;

use common::checkpointing::{assert_matches_model, checkpoint, config, kinds, run_ops};
use common::model::{Handles, Model, OpGenerator};
use statebackend::checkpoint::{CheckpointCoordinator, RestoreMode, restore_instance};
use statebackend::storage::CheckpointStorage;
use statebackend::{AnyBackend, KeyGroupRange, KeyedStateBackend, Result};

#[test]
fn restored_state_equals_state_at_checkpoint_time() -> Result<()> {
    for kind in kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let storage: Arc<dyn CheckpointStorage> = crate::root::open(tmp.path())?;
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 3)?;
        let range = KeyGroupRange::all(128)?;
        let mut b = AnyBackend::open(&config(kind, range))?;
        let h = Handles::register(&mut b)?;
        let mut model = Model::default();
        let mut g = OpGenerator::new(11, 50, |_| true);
        run_ops(&mut b, &h, &mut model, &mut g, 2_000)?;

        // Checkpoint 1, with 500 operations running during its upload.
        let at_checkpoint_1 = model.clone();
        let mut later = model.clone();
        let mut g_during = OpGenerator::new(12, 50, |_| true);
        let (meta1, stats1) = checkpoint(&mut b, &mut coordinator, 1, |b| {
            run_ops(b, &h, &mut later, &mut g_during, 500)
        })?;
        model = later;
        assert!(stats1.bytes_uploaded > 0);

        // Checkpoint 2 after more writes.
        run_ops(&mut b, &h, &mut model, &mut g, 1_000)?;
        let at_checkpoint_2 = model.clone();
        let (meta2, _) = checkpoint(&mut b, &mut coordinator, 2, |_| Ok(()))?;
        drop(b);

        for (meta, expected) in [(&meta1, &at_checkpoint_1), (&meta2, &at_checkpoint_2)] {
            let mut restored = restore_instance(
                storage.as_ref(),
                meta,
                &config(kind, range),
                RestoreMode::Claim,
            )?;
            assert_eq!(restored.backend_kind(), kind);
            let h = Handles::register(&mut restored)?;
            assert_matches_model(&mut restored, &h, expected)?;
        }
    }
    Ok(())
}

#[test]
fn a_restored_instance_keeps_checkpointing() -> Result<()> {
    for kind in kinds() {
        for mode in [RestoreMode::Claim, RestoreMode::NoClaim] {
            let tmp = tempfile::tempdir().unwrap();
            let storage: Arc<dyn CheckpointStorage> = crate::root::open(tmp.path())?;
            let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
            let range = KeyGroupRange::all(128)?;
            let mut b = AnyBackend::open(&config(kind, range))?;
            let h = Handles::register(&mut b)?;
            let mut model = Model::default();
            let mut g = OpGenerator::new(21, 40, |k| range.contains(b.key_group_of(k).unwrap()));
            run_ops(&mut b, &h, &mut model, &mut g, 1_500)?;
            let (meta, _) = checkpoint(&mut b, &mut coordinator, 1, |_| Ok(()))?;
            drop(b);

            let mut restored =
                restore_instance(storage.as_ref(), &meta, &config(kind, range), mode)?;
            let h = Handles::register(&mut restored)?;
            run_ops(&mut restored, &h, &mut model, &mut g, 500)?;
            let (meta2, stats) = checkpoint(&mut restored, &mut coordinator, 2, |_| Ok(()))?;
            match mode {
                RestoreMode::NoClaim => {
                    assert_eq!(
                        stats.files_reused, 0,
                        "{kind}: no-claim starts with a full checkpoint"
                    )
                }
                RestoreMode::Claim if kind == statebackend::BackendKind::RocksDb => {
                    assert!(
                        stats.files_reused > 0,
                        "claim continues incrementally: {stats:?}"
                    )
                }
                RestoreMode::Claim => {}
            }
            drop(restored);
            let mut again = restore_instance(
                storage.as_ref(),
                &meta2,
                &config(kind, range),
                RestoreMode::Claim,
            )?;
            let h = Handles::register(&mut again)?;
            assert_matches_model(&mut again, &h, &model)?;
        }
    }
    Ok(())
}
