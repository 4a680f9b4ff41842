//! Whose files an incremental RocksDB checkpoint may reuse: only its own lineage's, matched by
//! local name and size, and after a claimed restore only files the root it writes to holds.
//!
//! - `notify_checkpoint_complete` with another instance's part of a checkpoint is
//!   `Error::ForeignInstance` and changes nothing (before: the next checkpoint reused the other
//!   lineage's SST files, completed, and failed to restore with RocksDB's "Mismatch in unique
//!   ID on table file").
//! - A base entry whose size differs from the staged file of the same name is not reused.
//! - A restore with claim from root A, then checkpoints into root B: they complete, verify and
//!   restore without A (before: they referenced A's files under B, and every `complete`
//!   failed), and the ones after the first stay incremental.
#![cfg(feature = "rocksdb")]

use std::collections::BTreeMap;
use std::sync::Arc;

use statebackend::checkpoint::{
    CheckpointCoordinator, RestoreMode, SnapshotMetadata, UploadStats, restore_instance,
};
use statebackend::storage::CheckpointStorage;
use statebackend::{
    AnyBackend, BackendConfig, Error, KeyGroupRange, KeyedStateBackend, Result,
    ValueStateDescriptor,
};

type Expected = BTreeMap<u32, u64>;

fn descriptor() -> ValueStateDescriptor<u32, (), u64> {
    ValueStateDescriptor::new("counts")
}

/// Puts `key → key * factor` for every key of `keys` the backend owns.
fn write(
    b: &mut AnyBackend,
    keys: std::ops::Range<u32>,
    factor: u64,
    expected: &mut Expected,
) -> Result<()> {
    let state = b.value_state(&descriptor())?;
    let range = b.key_group_range();
    for k in keys {
        if range.contains(b.key_group_of(&k)?) {
            state.put(b, &k, &(), u64::from(k) * factor)?;
            expected.insert(k, u64::from(k) * factor);
        }
    }
    Ok(())
}

/// Asserts that `b` holds exactly `expected`.
fn assert_holds(b: &mut AnyBackend, expected: &Expected) -> Result<()> {
    let state = b.value_state(&descriptor())?;
    let mut keys: Vec<u32> = b
        .keys::<u32, ()>(state.id(), None)?
        .map(|r| r.map(|(k, ())| k))
        .collect::<Result<_>>()?;
    keys.sort_unstable();
    assert_eq!(keys, expected.keys().copied().collect::<Vec<_>>());
    for (k, v) in expected {
        assert_eq!(state.get(b, k, &())?, Some(*v), "key {k}");
    }
    Ok(())
}

/// Snapshot and upload of every backend, then completion; returns the metadata and each
/// backend's upload statistics. Notification is left to the caller.
fn take(
    backends: &mut [&mut AnyBackend],
    coordinator: &mut CheckpointCoordinator,
    id: u64,
) -> Result<(SnapshotMetadata, Vec<UploadStats>)> {
    coordinator.begin(id)?;
    let storage = Arc::clone(coordinator.storage());
    let mut parts = Vec::new();
    let mut stats = Vec::new();
    for b in backends.iter_mut() {
        let (part, s) = b.snapshot(id)?.upload(storage.as_ref())?;
        parts.push(part);
        stats.push(s);
    }
    Ok((coordinator.complete(id, parts)?.clone(), stats))
}

fn root(path: &std::path::Path) -> Result<(Arc<dyn CheckpointStorage>, CheckpointCoordinator)> {
    let storage: Arc<dyn CheckpointStorage> = crate::root::open(path)?;
    let coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 3)?;
    Ok((storage, coordinator))
}

#[test]
fn another_instances_part_of_a_checkpoint_is_refused_by_notify() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let (storage, mut coordinator) = root(tmp.path())?;
    for kind in [
        statebackend::BackendKind::RocksDb,
        statebackend::BackendKind::Heap,
    ] {
        let mut config = BackendConfig::rocksdb(128, KeyGroupRange::all(128)?);
        config.kind = kind;
        let halves = [
            KeyGroupRange::for_operator(128, 2, 0)?,
            KeyGroupRange::for_operator(128, 2, 1)?,
        ];
        let mut a = AnyBackend::open(&BackendConfig {
            key_groups: halves[0],
            ..config.clone()
        })?;
        let mut b = AnyBackend::open(&BackendConfig {
            key_groups: halves[1],
            ..config.clone()
        })?;
        let mut expected = [Expected::new(), Expected::new()];
        write(&mut a, 0..2000, 1, &mut expected[0])?;
        write(&mut b, 0..2000, 1, &mut expected[1])?;
        let id = coordinator.next_checkpoint_id();
        let (meta, _) = take(&mut [&mut a, &mut b], &mut coordinator, id)?;
        let part = |b: &AnyBackend| {
            let id = b.instance_id();
            meta.instances
                .iter()
                .find(|i| i.instance_id == id)
                .unwrap()
                .clone()
        };
        let (part_a, part_b) = (part(&a), part(&b));
        // Swapped parts: refused, naming both instances.
        for (backend, foreign) in [(&mut a, &part_b), (&mut b, &part_a)] {
            match backend.notify_checkpoint_complete(foreign) {
                Err(Error::ForeignInstance { expected, found }) => {
                    assert!(
                        expected.contains(&backend.instance_id().hex()),
                        "{expected}"
                    );
                    assert!(found.contains(&foreign.instance_id.hex()), "{found}");
                }
                other => panic!("{kind}: a foreign part was accepted: {other:?}"),
            }
        }
        // The instance's own id with other key groups is refused too.
        let mut moved = part_a.clone();
        moved.key_groups = halves[1];
        assert!(matches!(
            a.notify_checkpoint_complete(&moved),
            Err(Error::ForeignInstance { .. })
        ));
        a.notify_checkpoint_complete(&part_a)?;
        b.notify_checkpoint_complete(&part_b)?;

        // The next checkpoint (reusing each instance's own base) restores exactly.
        write(&mut a, 0..500, 3, &mut expected[0])?;
        write(&mut b, 0..500, 3, &mut expected[1])?;
        let id = coordinator.next_checkpoint_id();
        let (meta, _) = take(&mut [&mut a, &mut b], &mut coordinator, id)?;
        drop((a, b));
        for (range, expected) in halves.iter().zip(&expected) {
            let config = BackendConfig {
                key_groups: *range,
                ..config.clone()
            };
            let mut restored =
                restore_instance(storage.as_ref(), &meta, &config, RestoreMode::NoClaim)?;
            assert_holds(&mut restored, expected)?;
        }
    }
    Ok(())
}

#[test]
fn a_base_file_is_reused_only_if_its_size_matches_the_staged_file() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let (storage, mut coordinator) = root(tmp.path())?;
    let mut b = AnyBackend::open(&BackendConfig::rocksdb(128, KeyGroupRange::all(128)?))?;
    let mut expected = Expected::new();
    write(&mut b, 0..3000, 1, &mut expected)?;
    let (meta, _) = take(&mut [&mut b], &mut coordinator, 1)?;
    // Nothing changes between checkpoints 1 and 2, so checkpoint 2 stages the same SST files;
    // one base entry claims another size for its name.
    let mut part = meta.instances[0].clone();
    let shared: Vec<usize> = (0..part.files.len())
        .filter(|&i| part.files[i].shared)
        .collect();
    assert!(!shared.is_empty());
    part.files[shared[0]].size += 1;
    b.notify_checkpoint_complete(&part)?;
    let (meta, stats) = take(&mut [&mut b], &mut coordinator, 2)?;
    assert_eq!(stats[0].files_reused, shared.len() as u64 - 1, "{stats:?}");
    let renamed = &meta.instances[0].files;
    let tampered = &part.files[shared[0]];
    let entry = renamed
        .iter()
        .find(|f| f.local_name == tampered.local_name)
        .unwrap();
    assert_eq!(
        entry.size + 1,
        tampered.size,
        "the staged file was uploaded with its size"
    );
    drop(b);
    let mut restored = restore_instance(
        storage.as_ref(),
        &meta,
        &BackendConfig::rocksdb(128, KeyGroupRange::all(128)?),
        RestoreMode::NoClaim,
    )?;
    assert_holds(&mut restored, &expected)
}

#[test]
fn a_claimed_restore_checkpoints_into_another_root_without_the_old_roots_files() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let all = KeyGroupRange::all(128)?;
    let config = BackendConfig::rocksdb(128, all);
    let mut expected = Expected::new();
    let restored_from = {
        let (_, mut coordinator_a) = root(&tmp.path().join("a"))?;
        let mut b = AnyBackend::open(&config)?;
        write(&mut b, 0..3000, 1, &mut expected)?;
        let (meta, _) = take(&mut [&mut b], &mut coordinator_a, 1)?;
        b.notify_checkpoint_complete(&meta.instances[0])?;
        write(&mut b, 0..300, 2, &mut expected)?;
        let (meta, stats) = take(&mut [&mut b], &mut coordinator_a, 2)?;
        assert!(
            stats[0].files_reused > 0,
            "checkpoint 2 of root A is incremental"
        );
        meta
    };
    let storage_a = crate::root::open(tmp.path().join("a"))?;
    let mut b = restore_instance(
        storage_a.as_ref(),
        &restored_from,
        &config,
        RestoreMode::Claim,
    )?;
    assert_holds(&mut b, &expected)?;

    // Root B: the first checkpoint uploads what B does not hold (all of it), the next ones are
    // incremental on B's own files.
    let (storage_b, mut coordinator_b) = root(&tmp.path().join("b"))?;
    write(&mut b, 100..400, 5, &mut expected)?;
    let (meta, stats) = take(&mut [&mut b], &mut coordinator_b, 3)?;
    assert_eq!(stats[0].files_reused, 0, "{stats:?}");
    coordinator_b.verify(&meta)?;
    b.notify_checkpoint_complete(&meta.instances[0])?;
    let at_3 = expected.clone();
    write(&mut b, 200..260, 7, &mut expected)?;
    let (meta, stats) = take(&mut [&mut b], &mut coordinator_b, 4)?;
    assert!(
        stats[0].files_reused > 0,
        "checkpoint 4 is incremental: {stats:?}"
    );
    coordinator_b.verify(&meta)?;
    b.notify_checkpoint_complete(&meta.instances[0])?;
    drop(b);

    // Root A can go: B's checkpoints stand alone.
    for object in storage_a.list(None)? {
        storage_a.delete(&object.path)?;
    }
    assert!(storage_a.list(None)?.is_empty());
    assert_eq!(coordinator_b.latest_verified()?.id, 4);
    let first_in_b = coordinator_b
        .completed()
        .find(|m| m.id == 3)
        .unwrap()
        .clone();
    for (meta, expected) in [(&meta, &expected), (&first_in_b, &at_3)] {
        let mut restored =
            restore_instance(storage_b.as_ref(), meta, &config, RestoreMode::NoClaim)?;
        assert_holds(&mut restored, expected)?;
    }
    Ok(())
}
