//! Stable type identity: states registered with user-chosen type names restore by those names
//! (whatever the compiler's `type_name` says), on every backend, through checkpoints and
//! savepoints; another name, or Rust's own type name, is a typed mismatch.
use crate::common;

use std::sync::Arc;

use common::checkpointing::{config, kinds};
use statebackend::checkpoint::{
    CheckpointCoordinator, RestoreMode, latest_restorable, restore_instance,
};
use statebackend::savepoint::{complete_savepoint, read_savepoint, restore_savepoint};
use statebackend::state::TypeNames;
use statebackend::storage::CheckpointStorage;
use statebackend::{
    AnyBackend, BackendKind, CheckpointDriver, DriverOptions, Error, KeyGroupRange,
    KeyedStateBackend, MapStateDescriptor, Result, ValueStateDescriptor,
};

fn counts() -> ValueStateDescriptor<String, (), u64> {
    ValueStateDescriptor::new("counts")
        .with_type_names(TypeNames::new("user-id", "none", "count/v1"))
}

fn pages() -> MapStateDescriptor<String, u32, u16, u64> {
    MapStateDescriptor::new("pages")
        .with_type_names(TypeNames::new("user-id", "window", "views/v1").with_user_key("page-id"))
}

#[test]
fn states_with_chosen_type_names_restore_by_those_names() -> Result<()> {
    for kind in kinds() {
        let all = KeyGroupRange::all(128)?;
        let mut b = AnyBackend::open(&config(kind, all))?;
        let c = b.value_state(&counts())?;
        let p = b.map_state(&pages())?;
        let info = b.states();
        assert_eq!(info[0].key_type, "user-id");
        assert_eq!(info[1].user_key_type, "page-id");
        for i in 0..50u64 {
            let user = format!("user-{i}");
            c.put(&mut b, &user, &(), i)?;
            p.put(&mut b, &user, &7, i as u16, i * 2)?;
        }
        let tmp = tempfile::tempdir().unwrap();
        let storage: Arc<dyn CheckpointStorage> = crate::root::open(tmp.path().join("root"))?;
        let mut driver = CheckpointDriver::new(
            CheckpointCoordinator::open(Arc::clone(&storage), 2)?,
            DriverOptions::default(),
        );
        driver.checkpoint(std::slice::from_mut(&mut b))?;
        let meta = latest_restorable(storage.as_ref())?;
        assert_eq!(meta.instances[0].states[0].value_type, "count/v1");

        let mut restored = restore_instance(
            storage.as_ref(),
            &meta,
            &config(kind, all),
            RestoreMode::NoClaim,
        )?;
        // Rust's own type names, or other chosen ones, are other types.
        let by_rust_name =
            restored.value_state(&ValueStateDescriptor::<String, (), u64>::new("counts"));
        assert!(
            matches!(by_rust_name, Err(Error::StateMismatch { .. })),
            "{kind}"
        );
        let renamed = restored.value_state(
            &ValueStateDescriptor::<String, (), u64>::new("counts")
                .with_type_names(TypeNames::new("user-id", "none", "count/v2")),
        );
        assert!(
            matches!(renamed, Err(Error::StateMismatch { .. })),
            "{kind}"
        );
        let c = restored.value_state(&counts())?;
        let p = restored.map_state(&pages())?;
        for i in 0..50u64 {
            let user = format!("user-{i}");
            assert_eq!(c.get(&restored, &user, &())?, Some(i));
            assert_eq!(p.get(&restored, &user, &7, &(i as u16))?, Some(i * 2));
        }

        // Through a savepoint into the heap backend.
        let sp: Arc<dyn CheckpointStorage> = crate::root::open(tmp.path().join("sp"))?;
        let part = b.savepoint()?.write(sp.as_ref())?;
        complete_savepoint(sp.as_ref(), vec![part])?;
        let meta = read_savepoint(sp.as_ref())?;
        let mut heap = restore_savepoint(sp.as_ref(), &meta, &config(BackendKind::Heap, all))?;
        let c = heap.value_state(&counts())?;
        assert_eq!(c.get(&heap, &"user-9".to_string(), &())?, Some(9));
    }
    Ok(())
}
