//! Operator state and engine metadata: in checkpoints and savepoints, restored at another
//! parallelism by mode (split lists divided, union lists whole everywhere, broadcast state
//! copied), on every backend; at the same parallelism each instance keeps its own split lists;
//! `_metadata` stays version 1 when neither is used.
use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::checkpointing::{config, kinds};
use statebackend::checkpoint::{
    CheckpointCoordinator, RestoreMode, SnapshotMetadata, latest_restorable, restore_instance,
};
use statebackend::savepoint::{complete_savepoint_with, read_savepoint, restore_savepoint};
use statebackend::storage::{CheckpointStorage, StoragePath};
use statebackend::{
    AnyBackend, BackendKind, CheckpointDriver, CheckpointedBackend, DriverOptions, Error,
    KeyGroupRange, Result,
};

/// A job of `p` instances: instance `i` holds split-list offsets `i*1000 + 0..=i+4`, every
/// instance the union-list entry `"from-<i>"`, and the same broadcast map.
fn job(kind: BackendKind, p: u32) -> Result<Vec<AnyBackend>> {
    let mut backends = Vec::new();
    for i in 0..p {
        let mut b = AnyBackend::open(&config(kind, KeyGroupRange::for_operator(128, p, i)?))?;
        let ops = b.operator_state_mut();
        let offsets = ops.list_state::<u64>("offsets")?;
        offsets.update(
            ops,
            (0..=u64::from(i) + 4)
                .map(|j| u64::from(i) * 1000 + j)
                .collect(),
        )?;
        let seen = ops.union_list_state::<String>("seen")?;
        seen.add(ops, &format!("from-{i}"))?;
        let rules = ops.broadcast_state::<String, u32>("rules")?;
        rules.put(ops, "max".into(), 10)?;
        rules.put(ops, "min".into(), 1)?;
        backends.push(b);
    }
    Ok(backends)
}

/// Checks the operator state of `restored` (q instances of a job of `p`).
fn check_redistributed(p: u32, restored: &mut [AnyBackend]) -> Result<()> {
    let q = restored.len() as u64;
    let expected_offsets: BTreeSet<u64> = (0..u64::from(p))
        .flat_map(|i| (0..=i + 4).map(move |j| i * 1000 + j))
        .collect();
    let expected_seen: Vec<String> = (0..p).map(|i| format!("from-{i}")).collect();
    let total = expected_offsets.len() as u64;
    let mut all_offsets = Vec::new();
    for b in restored.iter_mut() {
        let ops = b.operator_state_mut();
        let offsets = ops.list_state::<u64>("offsets")?.get(ops)?;
        // Split evenly: each of q instances gets its share, within one element per key group
        // of difference between the instances' ranges.
        let share = offsets.len() as u64;
        assert!(
            share + 2 >= total / q && share <= total / q + 2,
            "{share} of {total} over {q}"
        );
        all_offsets.extend(offsets);
        assert_eq!(
            ops.union_list_state::<String>("seen")?.get(ops)?,
            expected_seen
        );
        let rules = ops.broadcast_state::<String, u32>("rules")?.entries(ops)?;
        assert_eq!(
            rules,
            BTreeMap::from([("max".into(), 10), ("min".into(), 1)])
        );
    }
    let unique: BTreeSet<u64> = all_offsets.iter().copied().collect();
    assert_eq!(unique.len(), all_offsets.len(), "an offset restored twice");
    assert_eq!(unique, expected_offsets);
    Ok(())
}

fn engine() -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([
        ("job".to_string(), b"clicks-per-user".to_vec()),
        ("watermark".to_string(), 42i64.to_le_bytes().to_vec()),
    ])
}

#[test]
fn operator_state_is_redistributed_by_mode_from_checkpoints_and_savepoints() -> Result<()> {
    for kind in kinds() {
        for (p, q) in [(1u32, 3u32), (3, 2), (2, 2)] {
            let tmp = tempfile::tempdir().unwrap();
            let storage: Arc<dyn CheckpointStorage> =
                crate::root::open(tmp.path().join("checkpoints"))?;
            let mut driver = CheckpointDriver::new(
                CheckpointCoordinator::open(Arc::clone(&storage), 2)?,
                DriverOptions::default(),
            );
            let mut backends = job(kind, p)?;
            driver.trigger_with(&mut backends, engine())?;
            driver.finish(&mut backends)?;
            // After the barrier: not in the checkpoint.
            let ops = backends[0].operator_state_mut();
            ops.list_state::<u64>("offsets")?.add(ops, &999_999)?;
            let meta = latest_restorable(storage.as_ref())?;
            assert_eq!(meta.engine, engine(), "{kind}");
            let mut restored = (0..q)
                .map(|i| {
                    let range = KeyGroupRange::for_operator(128, q, i)?;
                    restore_instance(
                        storage.as_ref(),
                        &meta,
                        &config(kind, range),
                        RestoreMode::NoClaim,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            check_redistributed(p, &mut restored)?;

            // The same through a savepoint, restored into the heap backend.
            let sp: Arc<dyn CheckpointStorage> = crate::root::open(tmp.path().join("savepoint"))?;
            let mut fresh = job(kind, p)?;
            let parts = fresh
                .iter_mut()
                .map(|b| b.savepoint()?.write(sp.as_ref()))
                .collect::<Result<Vec<_>>>()?;
            complete_savepoint_with(sp.as_ref(), parts, engine())?;
            let meta = read_savepoint(sp.as_ref())?;
            assert_eq!(meta.engine, engine());
            let mut restored = (0..q)
                .map(|i| {
                    let range = KeyGroupRange::for_operator(128, q, i)?;
                    restore_savepoint(sp.as_ref(), &meta, &config(BackendKind::Heap, range))
                })
                .collect::<Result<Vec<_>>>()?;
            check_redistributed(p, &mut restored)?;
        }
    }
    Ok(())
}

/// Instance `i` of a restored job of `p` instances holds exactly the split list it held.
fn check_kept(restored: &mut [AnyBackend], what: &str) -> Result<()> {
    for (i, b) in restored.iter_mut().enumerate() {
        let ops = b.operator_state_mut();
        let i = i as u64;
        let expected: Vec<u64> = (0..=i + 4).map(|j| i * 1000 + j).collect();
        assert_eq!(
            ops.list_state::<u64>("offsets")?.get(ops)?,
            expected,
            "{what}: instance {i}"
        );
    }
    Ok(())
}

#[test]
fn split_lists_stay_with_their_instance_when_the_parallelism_is_unchanged() -> Result<()> {
    for kind in kinds() {
        // (old count, new count, the count given to the restore): 3 -> 3 is told by its key
        // groups alone; 16 -> 16 only when the count is given (15 instances share ranges with
        // 16), and re-dealt evenly otherwise; 16 -> 15 is a rescale, with ranges in common.
        for (p, q, given) in [
            (3u32, 3u32, None),
            (3, 3, Some(3)),
            (16, 16, Some(16)),
            (16, 16, None),
            (16, 15, Some(15)),
            (16, 15, None),
        ] {
            let what = format!("{kind} {p}->{q} given {given:?}");
            let tmp = tempfile::tempdir().unwrap();
            let storage: Arc<dyn CheckpointStorage> =
                crate::root::open(tmp.path().join("checkpoints"))?;
            let mut driver = CheckpointDriver::new(
                CheckpointCoordinator::open(Arc::clone(&storage), 2)?,
                DriverOptions::default(),
            );
            let mut backends = job(kind, p)?;
            driver.checkpoint(&mut backends)?;
            let sp: Arc<dyn CheckpointStorage> = crate::root::open(tmp.path().join("savepoint"))?;
            let parts = backends
                .iter_mut()
                .map(|b| b.savepoint()?.write(sp.as_ref()))
                .collect::<Result<Vec<_>>>()?;
            complete_savepoint_with(sp.as_ref(), parts, engine())?;
            drop(backends);
            let meta = latest_restorable(storage.as_ref())?;
            let sp_meta = read_savepoint(sp.as_ref())?;
            let configure = |kind, i| -> Result<_> {
                let mut c = config(kind, KeyGroupRange::for_operator(128, q, i)?);
                c.parallelism = given;
                Ok(c)
            };
            let mut from_checkpoint = (0..q)
                .map(|i| {
                    restore_instance(
                        storage.as_ref(),
                        &meta,
                        &configure(kind, i)?,
                        RestoreMode::NoClaim,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let mut from_savepoint = (0..q)
                .map(|i| {
                    restore_savepoint(sp.as_ref(), &sp_meta, &configure(BackendKind::Heap, i)?)
                })
                .collect::<Result<Vec<_>>>()?;
            for restored in [&mut from_checkpoint, &mut from_savepoint] {
                if p == q && (given.is_some() || p == 3) {
                    check_kept(restored, &what)?;
                } else {
                    // The even re-deal: no element lost or repeated, and a kept list would
                    // differ (the lists grow by one element per instance).
                    check_redistributed(p, restored)?;
                    let ops = restored[0].operator_state_mut();
                    let first = ops.list_state::<u64>("offsets")?.get(ops)?;
                    assert_ne!(first, (0..=4).collect::<Vec<u64>>(), "{what}");
                }
            }
        }
    }
    Ok(())
}

#[test]
fn metadata_stays_version_1_without_operator_state_or_engine_metadata() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let storage: Arc<dyn CheckpointStorage> = crate::root::open(tmp.path())?;
    let mut driver = CheckpointDriver::new(
        CheckpointCoordinator::open(Arc::clone(&storage), 2)?,
        DriverOptions::default(),
    );
    let mut plain = vec![AnyBackend::open(&config(
        BackendKind::Heap,
        KeyGroupRange::all(128)?,
    ))?];
    driver.checkpoint(&mut plain)?;
    let version = |id: u64| -> Result<u16> {
        let bytes = storage.get(&StoragePath::parse(&format!("chk-{id:010}/_metadata"))?)?;
        Ok(u16::from_le_bytes([bytes[4], bytes[5]]))
    };
    assert_eq!(version(1)?, 1);
    let ops = plain[0].operator_state_mut();
    ops.list_state::<u64>("offsets")?.add(ops, &7)?;
    driver.checkpoint(&mut plain)?;
    assert_eq!(version(2)?, 2);
    Ok(())
}

#[test]
fn opening_an_operator_state_with_another_mode_or_type_is_refused() -> Result<()> {
    let mut b = AnyBackend::open(&config(BackendKind::Heap, KeyGroupRange::all(128)?))?;
    let ops = b.operator_state_mut();
    ops.list_state::<u64>("offsets")?;
    assert!(matches!(
        ops.union_list_state::<u64>("offsets"),
        Err(Error::StateMismatch { .. })
    ));
    assert!(matches!(
        ops.list_state::<String>("offsets"),
        Err(Error::StateMismatch { .. })
    ));
    assert!(matches!(
        ops.list_state::<u64>(""),
        Err(Error::InvalidStateName { .. })
    ));
    Ok(())
}

#[test]
fn version_2_metadata_round_trips_and_every_truncation_or_flip_is_a_typed_result() -> Result<()> {
    let mut b = job(BackendKind::Heap, 2)?;
    let tmp = tempfile::tempdir().unwrap();
    let storage = crate::root::open(tmp.path())?;
    let parts = b
        .iter_mut()
        .map(|b| b.savepoint()?.write(storage.as_ref()))
        .collect::<Result<Vec<_>>>()?;
    let meta = complete_savepoint_with(storage.as_ref(), parts, engine())?;
    let bytes = meta.encode();
    assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 2);
    assert_eq!(SnapshotMetadata::decode(&bytes, "m")?, meta);
    for len in 0..bytes.len() {
        assert!(
            SnapshotMetadata::decode(&bytes[..len], "m").is_err(),
            "truncated to {len}"
        );
    }
    let mut structural_errors = 0;
    for at in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x5a;
        // Raw, the crc catches the flip; resealed (the crc recomputed), the structure is
        // decoded: a typed result either way, never a panic or an I/O error.
        let outcome = statebackend::fuzzing::metadata(&flipped);
        assert!(outcome.raw.is_err(), "flip at {at}");
        if let Err(e) = &outcome.resealed {
            assert!(
                statebackend::fuzzing::is_format_error(e),
                "flip at {at}: {e}"
            );
            structural_errors += 1;
        }
    }
    assert!(
        structural_errors > bytes.len() / 4,
        "{structural_errors} of {}",
        bytes.len()
    );
    Ok(())
}
