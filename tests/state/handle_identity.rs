//! A state handle works only on the backend object that issued it: on another backend, or on
//! the backend a restore returned (which may number its states differently), it is
//! `Error::ForeignHandle`, never an access to whichever state has the same index there.
use crate::common;

use std::sync::Arc;

use common::checkpointing::kinds;
use statebackend::checkpoint::{CheckpointCoordinator, RestoreMode, restore_instance};
use statebackend::storage::{CheckpointStorage, LocalDirStorage};
use statebackend::{
    AnyBackend, BackendConfig, Error, KeyGroupRange, KeyedStateBackend, ListStateDescriptor,
    MapStateDescriptor, Result, ValueStateDescriptor,
};

fn config(kind: statebackend::BackendKind) -> BackendConfig {
    let mut config = BackendConfig::heap(128, KeyGroupRange::all(128).unwrap());
    config.kind = kind;
    config
}

fn assert_foreign<T: std::fmt::Debug>(result: Result<T>, what: &str) {
    match result {
        Err(Error::ForeignHandle { .. }) => {}
        other => panic!("{what}: expected ForeignHandle, got {other:?}"),
    }
}

#[test]
fn a_handle_of_another_backend_is_refused() -> Result<()> {
    for kind in kinds() {
        let mut a = AnyBackend::open(&config(kind))?;
        let mut b = AnyBackend::open(&config(kind))?;
        // The same descriptor registered on both: same index, same types.
        let on_a = a.value_state(&ValueStateDescriptor::<u32, (), u64>::new("v"))?;
        let on_b = b.value_state(&ValueStateDescriptor::<u32, (), u64>::new("v"))?;
        assert_eq!(on_a.id().index(), on_b.id().index());
        on_b.put(&mut b, &1, &(), 10)?;
        assert_foreign(on_a.get(&b, &1, &()), "get");
        assert_foreign(on_a.put(&mut b, &1, &(), 11), "put");
        assert_foreign(on_a.clear(&mut b, &1, &()), "clear");
        assert_foreign(b.keys::<u32, ()>(on_a.id(), None).map(|_| ()), "keys");
        let list_a = a.list_state(&ListStateDescriptor::<u32, (), u8>::new("l"))?;
        b.list_state(&ListStateDescriptor::<u32, (), u8>::new("l"))?;
        assert_foreign(list_a.append(&mut b, &1, &(), 1), "append");
        assert_foreign(list_a.get(&b, &1, &()), "list get");
        let map_a = a.map_state(&MapStateDescriptor::<u32, (), u8, u8>::new("m"))?;
        b.map_state(&MapStateDescriptor::<u32, (), u8, u8>::new("m"))?;
        assert_foreign(map_a.put(&mut b, &1, &(), 1, 1), "map put");
        assert_foreign(map_a.entries(&b, &1, &()).map(|_| ()), "map entries");
        // Nothing changed on b; each handle still works on its own backend.
        assert_eq!(on_b.get(&b, &1, &())?, Some(10));
        assert_eq!(on_a.get(&a, &1, &())?, None);
    }
    Ok(())
}

#[test]
fn a_handle_from_before_a_restore_is_refused_by_the_restored_backend() -> Result<()> {
    for kind in kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(tmp.path())?);
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
        let mut b = AnyBackend::open(&config(kind))?;
        // Two states of the same types: a restore may declare them in another order (a heap
        // restore follows its data file's), so an old index may name the other state.
        let zeta = b.value_state(&ValueStateDescriptor::<u32, (), u64>::new("zeta"))?;
        let alpha = b.value_state(&ValueStateDescriptor::<u32, (), u64>::new("alpha"))?;
        zeta.put(&mut b, &1, &(), 26)?;
        alpha.put(&mut b, &1, &(), 1)?;
        coordinator.begin(1)?;
        let (part, _) = b.snapshot(1)?.upload(storage.as_ref())?;
        let meta = coordinator.complete(1, vec![part])?.clone();
        drop(b);
        let mut restored =
            restore_instance(storage.as_ref(), &meta, &config(kind), RestoreMode::NoClaim)?;
        assert_foreign(zeta.get(&restored, &1, &()), "old zeta handle");
        assert_foreign(alpha.get(&restored, &1, &()), "old alpha handle");
        assert_foreign(
            alpha.put(&mut restored, &1, &(), 0),
            "old alpha handle, put",
        );
        // Registered again, each reads its own state.
        let zeta = restored.value_state(&ValueStateDescriptor::<u32, (), u64>::new("zeta"))?;
        let alpha = restored.value_state(&ValueStateDescriptor::<u32, (), u64>::new("alpha"))?;
        assert_eq!(zeta.get(&restored, &1, &())?, Some(26));
        assert_eq!(alpha.get(&restored, &1, &())?, Some(1));
    }
    Ok(())
}
