//! RocksDB backend resources: directories, locks, reopen, and typed decode errors.
#![cfg(feature = "rocksdb")]

use statebackend::state::KeyRef;
use statebackend::{
    Error, KeyGroupRange, KeyedStateBackend, ListStateDescriptor, Result, RocksDbBackend,
    ValueStateDescriptor,
};

fn all() -> KeyGroupRange {
    KeyGroupRange::all(128).unwrap()
}

#[test]
fn temporary_directory_is_removed_on_drop() -> Result<()> {
    let mut b = RocksDbBackend::open(128, all(), None, Default::default())?;
    let s = b.value_state(&ValueStateDescriptor::<u32, (), u32>::new("s"))?;
    s.put(&mut b, &1, &(), 1)?;
    let dir = b.working_dir().to_path_buf();
    assert!(dir.join("db").join("CURRENT").exists());
    drop(b);
    assert!(!dir.exists(), "{} should be gone", dir.display());
    Ok(())
}

#[test]
fn explicit_directory_is_kept_and_reopens_with_its_states() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("work");
    {
        let mut b = RocksDbBackend::open(128, all(), Some(dir.clone()), Default::default())?;
        let v = b.value_state(&ValueStateDescriptor::<String, (), u64>::new("v"))?;
        let l = b.list_state(&ListStateDescriptor::<String, (), u8>::new("l"))?;
        v.put(&mut b, &String::from("k"), &(), 42)?;
        l.append(&mut b, &String::from("k"), &(), 1)?;
        l.append(&mut b, &String::from("k"), &(), 2)?;
    }
    assert!(dir.join("db").exists());
    let mut b = RocksDbBackend::open(128, all(), Some(dir.clone()), Default::default())?;
    assert_eq!(b.states().len(), 2);
    let v = b.value_state(&ValueStateDescriptor::<String, (), u64>::new("v"))?;
    let l = b.list_state(&ListStateDescriptor::<String, (), u8>::new("l"))?;
    assert_eq!(v.get(&b, &String::from("k"), &())?, Some(42));
    assert_eq!(l.get(&b, &String::from("k"), &())?, vec![1, 2]);
    // Reopened states keep their types.
    let wrong = b.value_state(&ValueStateDescriptor::<String, (), i8>::new("v"));
    assert!(matches!(wrong, Err(Error::StateMismatch { .. })));
    Ok(())
}

#[test]
fn a_directory_held_by_a_live_backend_is_a_clear_error() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("work");
    let _first = RocksDbBackend::open(128, all(), Some(dir.clone()), Default::default())?;
    let second = RocksDbBackend::open(128, all(), Some(dir.clone()), Default::default());
    match second {
        Err(Error::DirectoryLocked { path, .. }) => assert!(path.starts_with(&dir)),
        Err(other) => panic!("expected DirectoryLocked, got {other}"),
        Ok(_) => panic!("a second backend opened a locked directory"),
    }
    Ok(())
}

#[test]
fn bytes_of_another_type_are_a_decode_error_naming_the_state() -> Result<()> {
    let mut b = RocksDbBackend::open(128, all(), None, Default::default())?;
    let s = b.value_state(&ValueStateDescriptor::<u32, (), u64>::new("counters"))?;
    s.put(&mut b, &7, &(), 300)?;
    // Read the stored u64 through the primitive API as another type.
    let read = b.get_cell::<u32, (), String>(s.id(), KeyRef::new(&7, b.assigner())?, &());
    match read {
        Err(Error::Decode { state, .. }) => assert_eq!(state, "counters"),
        other => panic!("expected a decode error, got {other:?}"),
    }
    Ok(())
}

#[test]
fn a_directory_reopens_only_with_the_parallelism_and_key_groups_it_was_written_for() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("work");
    let descriptor = ValueStateDescriptor::<String, (), u64>::new("v");
    {
        let mut b = RocksDbBackend::open(128, all(), Some(dir.clone()), Default::default())?;
        let v = b.value_state(&descriptor)?;
        v.put(&mut b, &String::from("k"), &(), 7)?;
    }
    // Another max parallelism maps keys to other key groups; another range would leave rows
    // unreachable or foreign: both are refused, and the refusal changes nothing.
    let half = KeyGroupRange::for_operator(128, 2, 0)?;
    for (max_parallelism, range) in [(256, KeyGroupRange::all(256)?), (128, half)] {
        let opened = RocksDbBackend::open(
            max_parallelism,
            range,
            Some(dir.clone()),
            Default::default(),
        );
        assert!(
            matches!(&opened, Err(Error::Incompatible { reason }) if reason.contains("max parallelism 128")),
            "{:?}",
            opened.err()
        );
    }
    let mut b = RocksDbBackend::open(128, all(), Some(dir), Default::default())?;
    let v = b.value_state(&descriptor)?;
    assert_eq!(v.get(&b, &String::from("k"), &())?, Some(7));
    Ok(())
}

#[test]
fn a_restore_marker_without_a_database_does_not_block_opening() -> Result<()> {
    // A crash after a checkpoint restore created its marker but before its DB appeared.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("work");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("db.restore-incomplete"), b"").unwrap();
    let mut b = RocksDbBackend::open(128, all(), Some(dir.clone()), Default::default())?;
    let v = b.value_state(&ValueStateDescriptor::<String, (), u64>::new("v"))?;
    v.put(&mut b, &String::from("k"), &(), 1)?;
    assert!(!dir.join("db.restore-incomplete").exists());
    Ok(())
}
