//! Schema versions: recorded with each state in checkpoints, savepoints and RocksDB's state
//! records, compared on registration like the type names, and written in the format versions
//! the time to live introduced (so one new version serves both).
use crate::common;

use std::path::Path;
use std::sync::Arc;

use common::checkpointing::{config_in, kinds, scratch};
use statebackend::checkpoint::{CheckpointCoordinator, RestoreMode, restore_instance};
use statebackend::savepoint::{complete_savepoint, read_savepoint, restore_savepoint};
use statebackend::storage::{CheckpointStorage, LocalDirStorage};
use statebackend::{
    AnyBackend, Error, KeyGroupRange, KeyedStateBackend, MapStateDescriptor, Result,
    ValueStateDescriptor,
};

fn all() -> KeyGroupRange {
    KeyGroupRange::all(128).unwrap()
}

/// A savepoint or a checkpoint of `b` in `dir`, restored into the same kind.
pub(crate) fn restore(
    b: &mut AnyBackend,
    dir: &Path,
    through_checkpoint: bool,
) -> Result<AnyBackend> {
    let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(dir)?);
    let config = config_in(b.backend_kind(), b.key_group_range(), dir);
    if through_checkpoint {
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
        coordinator.begin(1)?;
        let part = b.snapshot(1)?.upload(storage.as_ref())?.0;
        let meta = coordinator.complete(1, vec![part])?.clone();
        restore_instance(storage.as_ref(), &meta, &config, RestoreMode::NoClaim)
    } else {
        let part = b.savepoint()?.write(storage.as_ref())?;
        complete_savepoint(storage.as_ref(), vec![part])?;
        let meta = read_savepoint(storage.as_ref())?;
        restore_savepoint(storage.as_ref(), &meta, &config)
    }
}

#[test]
fn a_restore_keeps_the_schema_version_and_refuses_another() -> Result<()> {
    let root = scratch();
    let v2 = ValueStateDescriptor::<u64, (), u64>::new("balances").with_schema_version(2);
    let map_v7 = MapStateDescriptor::<u64, (), u32, u64>::new("prices").with_schema_version(7);
    for kind in kinds() {
        for through_checkpoint in [false, true] {
            let ctx = format!("{kind}, checkpoint: {through_checkpoint}");
            let dir = root.path().join(&ctx);
            let mut b = AnyBackend::open(&config_in(kind, all(), &dir))?;
            let balances = b.value_state(&v2)?;
            let prices = b.map_state(&map_v7)?;
            balances.put(&mut b, &1, &(), 100)?;
            prices.put(&mut b, &1, &(), 3, 30)?;
            // The same version restores.
            let mut same = restore(&mut b, &dir.join("same"), through_checkpoint)?;
            let balances = same.value_state(&v2)?;
            assert_eq!(balances.get(&same, &1, &())?, Some(100), "{ctx}");
            assert_eq!(
                same.states()
                    .iter()
                    .find(|s| s.name == "prices")
                    .map(|s| s.schema_version),
                Some(7),
                "{ctx}"
            );
            // Another version, or none, without a migration is refused by name, with both
            // versions.
            let mut other = restore(&mut same, &dir.join("other"), through_checkpoint)?;
            let refused = other
                .value_state(
                    &ValueStateDescriptor::<u64, (), u64>::new("balances").with_schema_version(3),
                )
                .err();
            match refused {
                Some(Error::NoMigrationPath {
                    state,
                    from,
                    to,
                    stuck_at,
                }) => {
                    assert_eq!(state, "balances", "{ctx}");
                    assert_eq!((from, to, stuck_at), (2, 3, 2), "{ctx}");
                }
                e => panic!("{ctx}: {e:?}"),
            }
            let unversioned = other
                .value_state(&ValueStateDescriptor::<u64, (), u64>::new("balances"))
                .err();
            assert!(
                matches!(
                    unversioned,
                    Some(Error::NoMigrationPath { from: 2, to: 0, .. })
                ),
                "{ctx}: {unversioned:?}"
            );
            // A registered state cannot change version, even with a migration: handles issued
            // for it read the old layout.
            let registered = same
                .value_state(
                    &ValueStateDescriptor::<u64, (), u64>::new("balances")
                        .with_schema_version(3)
                        .with_migration(statebackend::state::Migration::same_encoding(2, 3)),
                )
                .err();
            assert!(
                matches!(registered, Some(Error::StateMismatch { .. })),
                "{ctx}: {registered:?}"
            );
            // Nothing was changed by the refusals: the right version still reads the state.
            let balances = other.value_state(&v2)?;
            assert_eq!(balances.get(&other, &1, &())?, Some(100), "{ctx}");
        }
    }
    Ok(())
}

#[test]
fn a_schema_version_uses_the_extended_format_versions() -> Result<()> {
    let root = scratch();
    let mut b = AnyBackend::open(&config_in(kinds()[0], all(), root.path()))?;
    let s =
        b.value_state(&ValueStateDescriptor::<u64, (), u64>::new("v").with_schema_version(1))?;
    s.put(&mut b, &1, &(), 1)?;
    let sp = root.path().join("sp");
    let storage = LocalDirStorage::new(&sp)?;
    let part = b.savepoint()?.write(&storage)?;
    complete_savepoint(&storage, vec![part])?;
    let version = |bytes: &[u8]| u16::from_le_bytes([bytes[4], bytes[5]]);
    let metadata = std::fs::read(sp.join("_metadata")).unwrap();
    assert_eq!(version(&metadata), 3);
    let data = std::fs::read_dir(&sp)
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "sbdf"))
        .map(|e| std::fs::read(e.path()).unwrap())
        .unwrap();
    assert_eq!(version(&data), 2);
    Ok(())
}
