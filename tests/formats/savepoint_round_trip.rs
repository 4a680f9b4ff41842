//! Savepoints: round trips across every backend pair, byte-identical canonical files, and
//! rescaled restores.
use crate::common;

use std::sync::Arc;

use common::checkpointing::{assert_matches_model, config, key_group, kinds, random_job};
use common::model::{Handles, Model};
use statebackend::savepoint::{complete_savepoint, read_savepoint, restore_savepoint};
use statebackend::storage::{CheckpointStorage, LocalDirStorage};
use statebackend::{
    AnyBackend, Error, KeyGroupRange, KeyedStateBackend, Result, ValueStateDescriptor,
};

fn savepoint_of(
    backends: &mut [AnyBackend],
    dir: &std::path::Path,
) -> Result<Arc<dyn CheckpointStorage>> {
    let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(dir)?);
    let mut instances = Vec::new();
    for b in backends.iter_mut() {
        let pending = b.savepoint()?;
        instances.push(pending.write(storage.as_ref())?);
    }
    complete_savepoint(storage.as_ref(), instances)?;
    Ok(storage)
}

#[test]
fn every_backend_pair_round_trips() -> Result<()> {
    for from in kinds() {
        for to in kinds() {
            let tmp = tempfile::tempdir().unwrap();
            let (mut backends, model) = random_job(from, 1, 31, 1_500)?;
            let storage = savepoint_of(&mut backends, tmp.path())?;
            let meta = read_savepoint(storage.as_ref())?;
            let mut restored = restore_savepoint(
                storage.as_ref(),
                &meta,
                &config(to, KeyGroupRange::all(128)?),
            )?;
            assert_eq!(restored.backend_kind(), to);
            let h = Handles::register(&mut restored)?;
            assert_matches_model(&mut restored, &h, &model)?;
        }
    }
    Ok(())
}

#[test]
fn every_backend_writes_byte_identical_data_files() -> Result<()> {
    if kinds().len() < 2 {
        return Ok(());
    }
    for seed in [1, 2, 3] {
        let mut files = Vec::new();
        for kind in kinds() {
            let tmp = tempfile::tempdir().unwrap();
            let (mut backends, _) = random_job(kind, 1, seed, 1_500)?;
            let storage = savepoint_of(&mut backends, tmp.path())?;
            let meta = read_savepoint(storage.as_ref())?;
            files.push(storage.get(&meta.instances[0].files[0].path)?);
        }
        assert!(files[0].len() > 1_000);
        for (kind, file) in kinds().iter().zip(&files).skip(1) {
            assert!(
                *file == files[0],
                "seed {seed}: the {kind} backend's data file differs from the heap backend's"
            );
        }
    }
    Ok(())
}

#[test]
fn rescaled_restores_hold_exactly_their_key_groups() -> Result<()> {
    for (p, q) in [(1u32, 4u32), (4, 1), (3, 2)] {
        for (n, from) in kinds().into_iter().enumerate() {
            let to = kinds()[(n + 1) % kinds().len()];
            let tmp = tempfile::tempdir().unwrap();
            let (mut backends, union) = random_job(from, p, 40 + u64::from(p), 1_500)?;
            let storage = savepoint_of(&mut backends, tmp.path())?;
            let meta = read_savepoint(storage.as_ref())?;
            assert_eq!(meta.instances.len(), p as usize);
            let mut seen = Model::default();
            for i in 0..q {
                let range = KeyGroupRange::for_operator(128, q, i)?;
                let mut restored = restore_savepoint(storage.as_ref(), &meta, &config(to, range))?;
                let h = Handles::register(&mut restored)?;
                let mut own = union.clone();
                own.retain_keys(|k| range.contains(key_group(k)));
                assert_matches_model(&mut restored, &h, &own)?;
                seen.absorb(own);
            }
            assert_eq!(
                seen, union,
                "{p}->{q}: the restored instances together hold everything"
            );
        }
    }
    Ok(())
}

#[test]
fn restoring_into_other_types_is_a_clear_error() -> Result<()> {
    for kind in kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut backends, _) = random_job(kind, 1, 9, 1_500)?;
        let storage = savepoint_of(&mut backends, tmp.path())?;
        let meta = read_savepoint(storage.as_ref())?;
        for to in kinds() {
            let mut restored = restore_savepoint(
                storage.as_ref(),
                &meta,
                &config(to, KeyGroupRange::all(128)?),
            )?;
            // "value" holds i64 values keyed by String; ask for u8 values.
            let wrong = restored.value_state(&ValueStateDescriptor::<String, u8, u8>::new("value"));
            assert!(
                matches!(wrong, Err(Error::StateMismatch { .. })),
                "{kind}->{to}"
            );
        }
    }
    Ok(())
}
