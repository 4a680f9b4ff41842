//! Checkpoints on an object store (`object_store`'s in-memory store, feature `object-store`):
//! the storage contract (atomic puts, streamed multipart uploads, listing under a prefix,
//! typed errors), and checkpoints, retention, restore and rescale of every backend through it.
#![cfg(feature = "object-store")]
use crate::common;

use std::sync::Arc;

use common::checkpointing::{assert_matches_model, config, key_group, kinds, random_job};
use common::model::Handles;
use statebackend::checkpoint::{
    CheckpointCoordinator, RestoreMode, latest_restorable, restore_instance,
};
use statebackend::storage::{CheckpointStorage, MULTIPART_THRESHOLD, ObjectStorage, StoragePath};
use statebackend::{CheckpointDriver, DriverOptions, Error, KeyGroupRange, Result};

fn sp(path: &str) -> StoragePath {
    StoragePath::parse(path).unwrap()
}

#[test]
fn the_storage_contract_holds_on_an_object_store() -> Result<()> {
    let storage = ObjectStorage::in_memory()?;
    storage.put(&sp("chk-0000000001/_metadata"), b"one")?;
    storage.put(&sp("chk-0000000001/_metadata"), b"two")?;
    storage.put(&sp("shared/a/000001.sst"), b"sst")?;
    assert_eq!(storage.get(&sp("chk-0000000001/_metadata"))?, b"two");
    assert_eq!(storage.size(&sp("shared/a/000001.sst"))?, Some(3));
    assert!(storage.exists(&sp("shared/a/000001.sst"))?);
    assert_eq!(storage.size(&sp("shared/a/missing.sst"))?, None);
    assert!(matches!(
        storage.get(&sp("shared/a/missing.sst")),
        Err(Error::MissingFile { .. })
    ));
    let listed: Vec<String> = storage
        .list(None)?
        .iter()
        .map(|o| o.path.to_string())
        .collect();
    assert_eq!(listed, ["chk-0000000001/_metadata", "shared/a/000001.sst"]);
    // A prefix is whole segments: `chk-0000000001` does not list `chk-00000000010`.
    storage.put(&sp("chk-00000000010/_metadata"), b"x")?;
    assert_eq!(storage.list(Some(&sp("chk-0000000001")))?.len(), 1);
    storage.delete(&sp("shared/a/000001.sst"))?;
    storage.delete(&sp("shared/a/000001.sst"))?;
    assert!(!storage.exists(&sp("shared/a/000001.sst"))?);
    Ok(())
}

#[test]
fn large_files_go_up_in_parts_and_come_back_whole() -> Result<()> {
    let storage = ObjectStorage::in_memory()?;
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("big.sst");
    let size = MULTIPART_THRESHOLD as usize + 3 * 1024 * 1024 + 17;
    let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&local, &data).unwrap();
    assert_eq!(
        storage.put_file(&sp("shared/x/big.sst"), &local)?,
        size as u64
    );
    let back = tmp.path().join("back.sst");
    assert_eq!(
        storage.get_to_file(&sp("shared/x/big.sst"), &back)?,
        size as u64
    );
    assert!(std::fs::read(&back).unwrap() == data);
    assert_eq!(storage.size(&sp("shared/x/big.sst"))?, Some(size as u64));
    Ok(())
}

#[test]
fn roots_under_prefixes_of_one_store_are_independent() -> Result<()> {
    use statebackend::storage::object_store::{ObjectStore, memory::InMemory};
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let a = ObjectStorage::new(Arc::clone(&store), "jobs/a")?;
    let b = ObjectStorage::new(Arc::clone(&store), "jobs/b/")?;
    a.put(&sp("chk-0000000001/_metadata"), b"a")?;
    b.put(&sp("chk-0000000001/_metadata"), b"b")?;
    assert_eq!(a.get(&sp("chk-0000000001/_metadata"))?, b"a");
    assert_eq!(b.get(&sp("chk-0000000001/_metadata"))?, b"b");
    a.delete(&sp("chk-0000000001/_metadata"))?;
    assert!(b.exists(&sp("chk-0000000001/_metadata"))?);
    assert!(matches!(
        ObjectStorage::new(Arc::clone(&store), "jobs//a"),
        Err(Error::InvalidPath { .. })
    ));
    Ok(())
}

#[test]
fn checkpoints_retention_restore_and_rescale_run_on_an_object_store() -> Result<()> {
    for kind in kinds() {
        let storage: Arc<dyn CheckpointStorage> = Arc::new(ObjectStorage::in_memory()?);
        let mut driver = CheckpointDriver::new(
            CheckpointCoordinator::open(Arc::clone(&storage), 2)?,
            DriverOptions::default(),
        );
        let (mut backends, model) = random_job(kind, 2, 31, 800)?;
        for _ in 0..4 {
            driver.checkpoint(&mut backends)?;
        }
        // Retention: two checkpoints kept, the files of the others gone.
        let ids: Vec<u64> = driver.coordinator().completed().map(|m| m.id).collect();
        assert_eq!(ids, [3, 4], "{kind}");
        assert!(
            storage.list(Some(&sp("chk-0000000001")))?.is_empty(),
            "{kind}"
        );
        let meta = latest_restorable(storage.as_ref())?;
        assert_eq!(meta.id, 4);
        for q in [2u32, 3] {
            for i in 0..q {
                let range = KeyGroupRange::for_operator(128, q, i)?;
                let mut b = restore_instance(
                    storage.as_ref(),
                    &meta,
                    &config(kind, range),
                    RestoreMode::NoClaim,
                )?;
                let h = Handles::register(&mut b)?;
                let mut own = model.clone();
                own.retain_keys(|k| range.contains(key_group(k)));
                assert_matches_model(&mut b, &h, &own)?;
            }
        }
    }
    Ok(())
}
