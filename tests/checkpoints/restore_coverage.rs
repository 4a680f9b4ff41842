//! Key-group coverage (issue 13, item 2): a savepoint completes only with instances that
//! partition the job's key groups, and every restore path refuses a `_metadata` whose
//! instances leave a requested key group out or hold one twice, instead of restoring it empty.
//!
//! The damaged `_metadata` files are built by hand (`SnapshotMetadata { .. }.encode()` written
//! with `storage.put`), bypassing completion, as an old or damaged root would hold them.
use crate::common;

use std::sync::Arc;

use common::checkpointing::{config, kinds, random_job};
use statebackend::checkpoint::layout::metadata_path;
use statebackend::checkpoint::{
    CheckpointCoordinator, RestoreMode, SnapshotMetadata, restore_instance,
};
use statebackend::savepoint::{complete_savepoint, read_savepoint, restore_savepoint};
use statebackend::storage::{CheckpointStorage, LocalDirStorage, StoragePath};
use statebackend::{AnyBackend, BackendKind, Error, KeyGroupRange, Result};

fn half(i: u32) -> KeyGroupRange {
    KeyGroupRange::for_operator(128, 2, i).unwrap()
}

fn all() -> KeyGroupRange {
    KeyGroupRange::all(128).unwrap()
}

fn assert_coverage<T>(result: Result<T>, what: &str) {
    match result {
        Err(Error::KeyGroupCoverage { .. }) => {}
        Err(e) => panic!("{what}: expected KeyGroupCoverage, got {e}"),
        Ok(_) => panic!("{what}: expected KeyGroupCoverage, got Ok"),
    }
}

/// Two heap instances of 128 key groups, written as savepoint parts into `storage` (not
/// completed).
fn savepoint_parts(
    storage: &dyn CheckpointStorage,
) -> Result<Vec<statebackend::checkpoint::InstanceMetadata>> {
    let (mut backends, _) = random_job(BackendKind::Heap, 2, 7, 300)?;
    backends
        .iter_mut()
        .map(|b| b.savepoint()?.write(storage))
        .collect()
}

#[test]
fn complete_savepoint_refuses_an_incomplete_instance_set() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let storage = LocalDirStorage::new(tmp.path())?;
    let mut parts = savepoint_parts(&storage)?;
    let second = parts.pop().unwrap();
    let first = parts.pop().unwrap();

    assert_coverage(
        complete_savepoint(&storage, vec![first.clone()]),
        "one of two",
    );
    assert_coverage(
        complete_savepoint(&storage, vec![second.clone()]),
        "the other one of two",
    );
    assert_coverage(
        complete_savepoint(&storage, vec![first.clone(), first.clone(), second.clone()]),
        "an instance twice",
    );
    let mut other_job = second.clone();
    other_job.max_parallelism = 256;
    assert_coverage(
        complete_savepoint(&storage, vec![first.clone(), other_job]),
        "two max parallelisms",
    );
    assert_coverage(complete_savepoint(&storage, vec![]), "no instances");
    // Nothing was written: the savepoint does not exist.
    assert!(matches!(
        read_savepoint(&storage),
        Err(Error::MissingFile { .. })
    ));

    complete_savepoint(&storage, vec![second, first])?;
    assert_eq!(read_savepoint(&storage)?.instances.len(), 2);
    Ok(())
}

/// A savepoint of two instances whose `_metadata` is then replaced by `edit` of it.
fn damaged_savepoint(
    dir: &std::path::Path,
    edit: impl FnOnce(&mut SnapshotMetadata),
) -> Result<(LocalDirStorage, SnapshotMetadata)> {
    let storage = LocalDirStorage::new(dir)?;
    let parts = savepoint_parts(&storage)?;
    let mut meta = complete_savepoint(&storage, parts)?;
    edit(&mut meta);
    storage.put(&StoragePath::parse("_metadata")?, &meta.encode())?;
    let meta = read_savepoint(&storage)?;
    Ok((storage, meta))
}

#[test]
fn restore_savepoint_refuses_a_missing_instance() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let (storage, meta) = damaged_savepoint(tmp.path(), |m| {
        m.instances.retain(|i| i.key_groups == half(0));
    })?;
    assert_eq!(meta.instances.len(), 1);
    for kind in kinds() {
        let work = tempfile::tempdir().unwrap();
        for range in [half(1), all(), KeyGroupRange::new(60, 70)?] {
            let mut c = config(kind, range);
            c.working_dir = Some(work.path().join(format!("{kind}-{range}")));
            assert_coverage(
                restore_savepoint(&storage, &meta, &c),
                &format!("{kind} restore of {range}"),
            );
        }
        // The key groups that are there still restore.
        let mut c = config(kind, half(0));
        c.working_dir = Some(work.path().join(format!("{kind}-present")));
        restore_savepoint(&storage, &meta, &c)?;
    }
    Ok(())
}

#[test]
fn restore_savepoint_refuses_overlapping_instances() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let (storage, meta) = damaged_savepoint(tmp.path(), |m| {
        let mut again = m.instances[0].clone();
        again.instance_id.0[0] ^= 1;
        m.instances.push(again);
    })?;
    for kind in kinds() {
        let work = tempfile::tempdir().unwrap();
        for range in [half(0), all(), KeyGroupRange::new(0, 10)?] {
            let mut c = config(kind, range);
            c.working_dir = Some(work.path().join(format!("{kind}-{range}")));
            assert_coverage(
                restore_savepoint(&storage, &meta, &c),
                &format!("{kind} restore of {range}"),
            );
        }
        // The key groups held once still restore.
        let mut c = config(kind, half(1));
        c.working_dir = Some(work.path().join(format!("{kind}-single")));
        restore_savepoint(&storage, &meta, &c)?;
    }
    Ok(())
}

/// A completed checkpoint of two `kind` instances whose `_metadata` is then replaced by `edit`
/// of it and read back.
fn damaged_checkpoint(
    dir: &std::path::Path,
    kind: BackendKind,
    edit: impl FnOnce(&mut SnapshotMetadata),
) -> Result<(Arc<dyn CheckpointStorage>, SnapshotMetadata)> {
    let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(dir)?);
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
    let (mut backends, _) = random_job(kind, 2, 11, 300)?;
    coordinator.begin(1)?;
    let instances = backends
        .iter_mut()
        .map(|b| Ok(b.snapshot(1)?.upload(storage.as_ref())?.0))
        .collect::<Result<Vec<_>>>()?;
    let mut meta = coordinator.complete(1, instances)?.clone();
    drop(coordinator);
    edit(&mut meta);
    let path = metadata_path(1)?;
    storage.put(&path, &meta.encode())?;
    let meta = SnapshotMetadata::read(storage.as_ref(), &path)?;
    Ok((storage, meta))
}

fn restore(
    storage: &dyn CheckpointStorage,
    meta: &SnapshotMetadata,
    kind: BackendKind,
    range: KeyGroupRange,
    work: &std::path::Path,
) -> Result<AnyBackend> {
    let mut c = config(kind, range);
    c.working_dir = Some(work.join(format!("{kind}-{range}")));
    restore_instance(storage, meta, &c, RestoreMode::NoClaim)
}

#[test]
fn restore_instance_refuses_a_missing_instance() -> Result<()> {
    for kind in kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let (storage, meta) = damaged_checkpoint(&tmp.path().join("root"), kind, |m| {
            m.instances.retain(|i| i.key_groups == half(0));
        })?;
        let work = tmp.path().join("work");
        // Same parallelism, and rescaled (1 instance, and 4).
        for range in [
            half(1),
            all(),
            KeyGroupRange::for_operator(128, 4, 2)?,
            KeyGroupRange::new(60, 70)?,
        ] {
            assert_coverage(
                restore(storage.as_ref(), &meta, kind, range, &work),
                &format!("{kind} checkpoint restore of {range}"),
            );
        }
        restore(storage.as_ref(), &meta, kind, half(0), &work)?;
        restore(
            storage.as_ref(),
            &meta,
            kind,
            KeyGroupRange::for_operator(128, 4, 0)?,
            &work,
        )?;
    }
    Ok(())
}

#[test]
fn restore_instance_refuses_overlapping_instances() -> Result<()> {
    for kind in kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let (storage, meta) = damaged_checkpoint(&tmp.path().join("root"), kind, |m| {
            // Instance 0's part again, claiming all key groups.
            let mut again = m.instances[0].clone();
            again.key_groups = all();
            m.instances.push(again);
        })?;
        let work = tmp.path().join("work");
        for range in [half(0), half(1), all(), KeyGroupRange::new(0, 3)?] {
            assert_coverage(
                restore(storage.as_ref(), &meta, kind, range, &work),
                &format!("{kind} checkpoint restore of {range}"),
            );
        }
    }
    Ok(())
}

/// The RocksDB branch of `restore_savepoint` goes through the backend's fresh-restore path: a
/// working directory that already holds a DB is refused unless the configuration asks to
/// replace it, and then it is replaced.
#[cfg(feature = "rocksdb")]
#[test]
fn a_rocksdb_savepoint_restore_replaces_a_db_only_when_asked() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let (storage, meta) = damaged_savepoint(&tmp.path().join("sp"), |_| {})?;
    let mut c = config(BackendKind::RocksDb, all());
    c.working_dir = Some(tmp.path().join("work"));
    drop(restore_savepoint(&storage, &meta, &c)?);
    assert!(restore_savepoint(&storage, &meta, &c).is_err());
    let c = c.with_replace_existing(true);
    drop(restore_savepoint(&storage, &meta, &c)?);
    Ok(())
}
