//! Data-file identity (issue 13, item 4): a `_metadata` whose instance lists another instance's
//! data file (valid size and crc32) must not restore with the instance's key groups empty. The
//! data file's header records the key groups and max parallelism of the instance that wrote it;
//! every restore path compares them with the metadata's and reports `KeyGroupsMismatch`.
use crate::common;

use std::sync::Arc;

use common::checkpointing::{config, kinds, random_job};
use statebackend::checkpoint::layout::metadata_path;
use statebackend::checkpoint::{
    CheckpointCoordinator, RestoreMode, SnapshotMetadata, restore_instance,
};
use statebackend::savepoint::{complete_savepoint, read_savepoint, restore_savepoint};
use statebackend::storage::{CheckpointStorage, LocalDirStorage, StoragePath};
use statebackend::{BackendKind, Error, KeyGroupRange, Result};

fn half(i: u32) -> KeyGroupRange {
    KeyGroupRange::for_operator(128, 2, i).unwrap()
}

fn assert_mismatch<T>(result: Result<T>, what: &str) {
    match result {
        Err(Error::KeyGroupsMismatch {
            expected, found, ..
        }) => assert_ne!(expected, found, "{what}"),
        Err(e) => panic!("{what}: expected KeyGroupsMismatch, got {e}"),
        Ok(_) => panic!("{what}: expected KeyGroupsMismatch, got Ok"),
    }
}

/// Swaps the file lists of the first two instances.
fn swap_files(meta: &mut SnapshotMetadata) {
    let files = meta.instances[0].files.clone();
    meta.instances[0].files = std::mem::replace(&mut meta.instances[1].files, files);
}

#[test]
fn a_savepoint_listing_another_instances_data_file_is_refused() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let storage = LocalDirStorage::new(tmp.path().join("sp"))?;
    let (mut backends, _) = random_job(BackendKind::Heap, 2, 5, 400)?;
    let parts = backends
        .iter_mut()
        .map(|b| b.savepoint()?.write(&storage))
        .collect::<Result<Vec<_>>>()?;
    let mut meta = complete_savepoint(&storage, parts)?;
    swap_files(&mut meta);
    storage.put(&StoragePath::parse("_metadata")?, &meta.encode())?;
    let meta = read_savepoint(&storage)?;

    for kind in kinds() {
        for range in [half(0), half(1), KeyGroupRange::all(128)?] {
            let mut c = config(kind, range);
            c.working_dir = Some(tmp.path().join(format!("work-{kind}-{range}")));
            assert_mismatch(
                restore_savepoint(&storage, &meta, &c),
                &format!("{kind} restore of {range}"),
            );
        }
    }
    Ok(())
}

#[test]
fn a_heap_checkpoint_listing_another_instances_data_file_is_refused() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::new(tmp.path().join("root"))?);
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
    let (mut backends, _) = random_job(BackendKind::Heap, 2, 9, 400)?;
    coordinator.begin(1)?;
    let parts = backends
        .iter_mut()
        .map(|b| Ok(b.snapshot(1)?.upload(storage.as_ref())?.0))
        .collect::<Result<Vec<_>>>()?;
    let mut meta = coordinator.complete(1, parts)?.clone();
    drop(coordinator);
    swap_files(&mut meta);
    let path = metadata_path(1)?;
    storage.put(&path, &meta.encode())?;
    let meta = SnapshotMetadata::read(storage.as_ref(), &path)?;

    // Same parallelism, and rescaled to 1 and to 4 instances.
    for range in [
        half(0),
        half(1),
        KeyGroupRange::all(128)?,
        KeyGroupRange::for_operator(128, 4, 1)?,
    ] {
        assert_mismatch(
            restore_instance(
                storage.as_ref(),
                &meta,
                &config(BackendKind::Heap, range),
                RestoreMode::NoClaim,
            ),
            &format!("heap checkpoint restore of {range}"),
        );
    }
    Ok(())
}

#[test]
fn a_data_file_of_another_max_parallelism_is_refused() -> Result<()> {
    // One instance of 128 key groups, listed as if written for max parallelism 256: the header
    // disagrees on max parallelism even where the ranges could match.
    let tmp = tempfile::tempdir().unwrap();
    let storage = LocalDirStorage::new(tmp.path().join("sp"))?;
    let (mut backends, _) = random_job(BackendKind::Heap, 1, 3, 200)?;
    let part = backends[0].savepoint()?.write(&storage)?;
    let mut meta = complete_savepoint(&storage, vec![part])?;
    meta.instances[0].max_parallelism = 256;
    storage.put(&StoragePath::parse("_metadata")?, &meta.encode())?;
    let meta = read_savepoint(&storage)?;
    let mut c = config(BackendKind::Heap, KeyGroupRange::all(128)?);
    c.max_parallelism = 256;
    match restore_savepoint(&storage, &meta, &c) {
        Err(Error::KeyGroupsMismatch {
            expected_max_parallelism: 256,
            found_max_parallelism: 128,
            ..
        }) => Ok(()),
        other => panic!("expected KeyGroupsMismatch, got {:?}", other.err()),
    }
}

#[test]
fn an_instance_without_its_data_file_is_refused() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let storage = LocalDirStorage::new(tmp.path().join("sp"))?;
    let (mut backends, _) = random_job(BackendKind::Heap, 2, 4, 200)?;
    let parts = backends
        .iter_mut()
        .map(|b| b.savepoint()?.write(&storage))
        .collect::<Result<Vec<_>>>()?;
    let mut meta = complete_savepoint(&storage, parts)?;
    meta.instances[1].files.clear();
    storage.put(&StoragePath::parse("_metadata")?, &meta.encode())?;
    let meta = read_savepoint(&storage)?;
    for kind in kinds() {
        let mut c = config(kind, half(1));
        c.working_dir = Some(tmp.path().join(format!("work-{kind}")));
        match restore_savepoint(&storage, &meta, &c) {
            Err(Error::Corrupt { reason, .. }) => assert!(reason.contains("0 files"), "{reason}"),
            other => panic!("{kind}: expected Corrupt, got {:?}", other.err()),
        }
    }
    Ok(())
}

/// A data file with one state of name `name` and no rows, built byte by byte as
/// `docs/savepoint-format.md` specifies it.
fn data_file_with_state_name(name: &str) -> Vec<u8> {
    fn str(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u32).to_le_bytes());
        out.extend(s.as_bytes());
    }
    let mut body = vec![1u8, 0];
    for v in [128u32, 0, 128, 1] {
        body.extend(v.to_le_bytes());
    }
    str(&mut body, name);
    body.push(1); // value state
    for type_name in ["K", "N", "", "V"] {
        str(&mut body, type_name);
    }
    let mut file = b"SBDF".to_vec();
    file.extend(1u16.to_le_bytes());
    file.extend((body.len() as u32).to_le_bytes());
    file.extend(&body);
    file.extend(crc32fast::hash(&file).to_le_bytes());
    let index_offset = file.len() as u64;
    let index = 0u32.to_le_bytes();
    file.extend(index);
    file.extend(crc32fast::hash(&index).to_le_bytes());
    let mut footer = index_offset.to_le_bytes().to_vec();
    footer.extend(0u64.to_le_bytes());
    footer.extend(1u16.to_le_bytes());
    footer.extend(0u16.to_le_bytes());
    footer.extend(crc32fast::hash(&footer).to_le_bytes());
    footer.extend(b"SBDF");
    file.extend(footer);
    file
}

#[test]
fn an_empty_state_name_is_refused_by_reader_and_writer() -> Result<()> {
    use statebackend::savepoint::data_file::{DataFileHeader, DataFileReader, DataFileWriter};
    use std::io::Cursor;

    let good = DataFileReader::new(Cursor::new(data_file_with_state_name("s")), "good")?;
    assert_eq!(good.header().states[0].name, "s");
    match DataFileReader::new(Cursor::new(data_file_with_state_name("")), "bad") {
        Err(Error::Corrupt { reason, .. }) => assert!(reason.contains("state name"), "{reason}"),
        other => panic!("expected Corrupt, got {:?}", other.err()),
    }

    let mut info = statebackend::ValueStateDescriptor::<String, (), u64>::new("x").info();
    info.name.clear();
    let header = DataFileHeader {
        codec: statebackend::CodecId::BINCODE_STANDARD,
        max_parallelism: 128,
        key_groups: KeyGroupRange::all(128)?,
        states: vec![info],
    };
    assert!(matches!(
        DataFileWriter::new(Vec::new(), &header),
        Err(Error::Incompatible { .. })
    ));
    Ok(())
}
