//! Rescaling from checkpoints (RocksDB incremental and heap): a checkpoint written by P
//! instances restores into Q instances for P→Q of 1→4, 4→1 and 3→2; the union of the restored
//! instances equals the original state and each holds only its own key groups.
mod common;

use std::sync::Arc;

use common::checkpointing::{assert_matches_model, config, kinds, run_ops};
use common::model::{Handles, Model, OpGenerator};
use statebackend::checkpoint::{CheckpointCoordinator, RestoreMode, restore_instance};
use statebackend::storage::{CheckpointStorage, LocalDirStorage};
use statebackend::{AnyBackend, KeyGroupAssigner, KeyGroupRange, KeyedStateBackend, Result};

fn key_group(key: &String) -> u16 {
    let bytes = statebackend::Codec::encode(&statebackend::BincodeCodec, key).unwrap();
    KeyGroupAssigner::new(128)
        .unwrap()
        .key_group_of_bytes(&bytes)
}

#[test]
fn checkpoints_restore_at_another_parallelism() -> Result<()> {
    for kind in kinds() {
        for (p, q) in [(1u32, 4u32), (4, 1), (3, 2)] {
            let tmp = tempfile::tempdir().unwrap();
            let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(tmp.path())?);
            let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
            let mut union = Model::default();
            let mut backends = Vec::new();
            for i in 0..p {
                let range = KeyGroupRange::for_operator(128, p, i)?;
                let mut b = AnyBackend::open(&config(kind, range))?;
                let h = Handles::register(&mut b)?;
                let mut model = Model::default();
                let mut g =
                    OpGenerator::new(60 + u64::from(i), 40, |k| range.contains(key_group(k)));
                run_ops(&mut b, &h, &mut model, &mut g, 1_200)?;
                union.absorb(model);
                backends.push(b);
            }
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
                    b.notify_checkpoint_complete(instance);
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
