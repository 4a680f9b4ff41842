//! The RocksDB working directory across crashes: the WAL is off, so a directory whose backend
//! did not close cleanly may hold state no checkpoint had (an aborted snapshot's flush, say).
//! Such a directory is refused on open (`Error::UncleanWorkingDirectory`), a restore replaces it
//! only when the configuration asks to (`BackendConfig::replace_existing`), and the leftovers of
//! a crash (snapshot staging, savepoint views, bulk-import directories) go when the directory is
//! opened again.

#![cfg(feature = "rocksdb")]

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use statebackend::checkpoint::{CheckpointCoordinator, RestoreMode, restore_instance};
use statebackend::savepoint::{complete_savepoint, read_savepoint, restore_savepoint};
use statebackend::storage::{CheckpointStorage, LocalDirStorage};
use statebackend::{
    AnyBackend, BackendConfig, Error, KeyGroupRange, KeyedStateBackend, Result, RocksDbBackend,
    ValueStateDescriptor,
};

/// The open marker (`docs/rocksdb-layout.md` §9).
const OPEN_MARKER: &str = "db.open";

fn all() -> KeyGroupRange {
    KeyGroupRange::all(128).unwrap()
}

fn descriptor() -> ValueStateDescriptor<u32, (), u64> {
    ValueStateDescriptor::new("counts")
}

fn config_in(dir: &Path) -> BackendConfig {
    let mut config = BackendConfig::rocksdb(128, all());
    config.working_dir = Some(dir.to_path_buf());
    config
}

/// Puts `k → k * factor` for `k` in `keys`.
fn write(b: &mut AnyBackend, keys: std::ops::Range<u32>, factor: u64) -> Result<()> {
    let state = b.value_state(&descriptor())?;
    for k in keys {
        state.put(b, &k, &(), u64::from(k) * factor)?;
    }
    Ok(())
}

/// Asserts that `b` holds exactly `k → k * factor` for `k` in `keys`.
fn assert_holds(b: &mut AnyBackend, keys: std::ops::Range<u32>, factor: u64) -> Result<()> {
    let state = b.value_state(&descriptor())?;
    let held: BTreeMap<u32, u64> = b
        .keys::<u32, ()>(state.id(), None)?
        .map(|r| {
            let (k, ()) = r?;
            Ok((k, state.get(b, &k, &())?.unwrap()))
        })
        .collect::<Result<_>>()?;
    let expected: BTreeMap<u32, u64> = keys.map(|k| (k, u64::from(k) * factor)).collect();
    assert_eq!(held, expected);
    Ok(())
}

/// Child-process half of `a_directory_left_by_a_crash_is_refused_and_a_restore_replaces_it`:
/// in `root/work`, writes keys 0..1000 (×1), completes checkpoint 1 into `root/checkpoints`,
/// overwrites them (×2) and adds 1000..1500, takes the synchronous part of checkpoint 2 (a
/// flush of that state, and its staging directory) and exits without closing the backend.
fn crash_after_a_snapshot(root: &Path) -> ! {
    let run = || -> Result<()> {
        let storage: Arc<dyn CheckpointStorage> =
            Arc::new(LocalDirStorage::new(root.join("checkpoints"))?);
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
        let mut b = AnyBackend::open(&config_in(&root.join("work")))?;
        write(&mut b, 0..1000, 1)?;
        coordinator.begin(1)?;
        let (part, _) = b.snapshot(1)?.upload(storage.as_ref())?;
        let meta = coordinator.complete(1, vec![part])?.clone();
        b.notify_checkpoint_complete(&meta.instances[0])?;
        write(&mut b, 0..1500, 2)?;
        let pending = b.snapshot(2)?;
        // A crash: no destructor runs, neither the pending snapshot's nor the backend's.
        std::mem::forget(pending);
        std::mem::forget(b);
        Ok(())
    };
    run().unwrap();
    std::process::exit(0)
}

#[test]
fn a_directory_left_by_a_crash_is_refused_and_a_restore_replaces_it() -> Result<()> {
    const CHILD: &str = "STATEBACKEND_TEST_CRASH_AFTER_SNAPSHOT_CHILD";
    if let Some(root) = std::env::var_os(CHILD) {
        crash_after_a_snapshot(Path::new(&root));
    }
    let tmp = tempfile::tempdir().unwrap();
    common::run_child_test(
        module_path!(),
        "a_directory_left_by_a_crash_is_refused_and_a_restore_replaces_it",
        CHILD,
        tmp.path(),
    );
    let work = tmp.path().join("work");
    assert!(work.join(OPEN_MARKER).exists());
    assert!(
        work.join("staging").exists(),
        "the snapshot's staging is left over"
    );

    // The DB on disk holds the flushed state of the aborted checkpoint 2, which no completed
    // checkpoint has: opening it is refused, naming the directory, and changes nothing.
    for _ in 0..2 {
        match RocksDbBackend::open(128, all(), Some(work.clone()), Default::default()) {
            Err(Error::UncleanWorkingDirectory { path }) => assert_eq!(path, work),
            Err(other) => panic!("expected UncleanWorkingDirectory, got {other}"),
            Ok(_) => panic!("a directory left by a crash reopened"),
        }
    }
    match AnyBackend::open(&config_in(&work)) {
        Err(Error::UncleanWorkingDirectory { path }) => assert_eq!(path, work),
        other => panic!("expected UncleanWorkingDirectory, got {:?}", other.err()),
    }
    assert!(work.join(OPEN_MARKER).exists());

    let storage = LocalDirStorage::new(tmp.path().join("checkpoints"))?;
    let coordinator = CheckpointCoordinator::open(Arc::new(storage.clone()), 2)?;
    let meta = coordinator
        .latest()
        .expect("checkpoint 1 completed")
        .clone();
    assert_eq!(meta.id, 1);
    // A restore does not replace it unless asked to.
    match restore_instance(&storage, &meta, &config_in(&work), RestoreMode::Claim) {
        Err(Error::UncleanWorkingDirectory { path }) => assert_eq!(path, work),
        other => panic!("expected UncleanWorkingDirectory, got {:?}", other.err()),
    }
    let replace = config_in(&work).with_replace_existing(true);
    let mut restored = restore_instance(&storage, &meta, &replace, RestoreMode::Claim)?;
    assert_holds(&mut restored, 0..1000, 1)?;
    assert!(!work.join("staging").exists(), "leftovers are removed");
    // The restored backend works and closes cleanly: it reopens with what it held.
    write(&mut restored, 2000..2010, 3)?;
    drop(restored);
    assert!(!work.join(OPEN_MARKER).exists());
    let mut reopened = AnyBackend::open(&config_in(&work))?;
    let state = reopened.value_state(&descriptor())?;
    assert_eq!(state.get(&reopened, &2005, &())?, Some(6015));
    assert_eq!(state.get(&reopened, &5, &())?, Some(5));
    assert_eq!(state.get(&reopened, &1200, &())?, None);
    Ok(())
}

#[test]
fn a_clean_close_keeps_unflushed_state_and_a_panic_is_no_clean_close() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    {
        let mut b = AnyBackend::open(&config_in(&work))?;
        assert!(
            work.join(OPEN_MARKER).exists(),
            "the marker is there while open"
        );
        write(&mut b, 0..100, 4)?; // in memtables only: the WAL is off
    }
    assert!(!work.join(OPEN_MARKER).exists());
    let mut b = AnyBackend::open(&config_in(&work))?;
    assert_holds(&mut b, 0..100, 4)?;

    // A backend dropped while its thread panics did not close cleanly.
    let panicked = std::thread::spawn(move || {
        let _held = b;
        panic!("the operator failed");
    })
    .join();
    assert!(panicked.is_err());
    assert!(matches!(
        AnyBackend::open(&config_in(&work)),
        Err(Error::UncleanWorkingDirectory { .. })
    ));
    // Temporary working directories have no marker at all.
    let b = RocksDbBackend::open(128, all(), None, Default::default())?;
    assert!(!b.working_dir().join(OPEN_MARKER).exists());
    Ok(())
}

#[test]
fn a_restore_into_a_directory_with_a_database_needs_replace_existing() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::new(tmp.path().join("checkpoints"))?);
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
    let mut source = AnyBackend::open(&BackendConfig::rocksdb(128, all()))?;
    write(&mut source, 0..300, 9)?;
    coordinator.begin(1)?;
    let (part, _) = source.snapshot(1)?.upload(storage.as_ref())?;
    let meta = coordinator.complete(1, vec![part])?.clone();
    let savepoint_dir = tmp.path().join("savepoint");
    let savepoint_storage = LocalDirStorage::new(&savepoint_dir)?;
    let instance = source.savepoint()?.write(&savepoint_storage)?;
    complete_savepoint(&savepoint_storage, vec![instance])?;
    let savepoint = read_savepoint(&savepoint_storage)?;

    // A cleanly closed directory with another state.
    {
        let mut b = AnyBackend::open(&config_in(&work))?;
        write(&mut b, 1000..1100, 1)?;
    }
    match restore_instance(
        storage.as_ref(),
        &meta,
        &config_in(&work),
        RestoreMode::NoClaim,
    ) {
        Err(Error::Incompatible { reason }) => {
            assert!(reason.contains(&work.display().to_string()), "{reason}")
        }
        other => panic!("expected Incompatible, got {:?}", other.err()),
    }
    match restore_savepoint(&savepoint_storage, &savepoint, &config_in(&work)) {
        Err(Error::Incompatible { reason }) => {
            assert!(reason.contains(&work.display().to_string()), "{reason}")
        }
        other => panic!("expected Incompatible, got {:?}", other.err()),
    }
    // Refusals changed nothing.
    assert_holds(&mut AnyBackend::open(&config_in(&work))?, 1000..1100, 1)?;

    // A live backend's directory is never replaced.
    let live = AnyBackend::open(&config_in(&work))?;
    let replace = config_in(&work).with_replace_existing(true);
    assert!(matches!(
        restore_instance(storage.as_ref(), &meta, &replace, RestoreMode::NoClaim),
        Err(Error::DirectoryLocked { .. })
    ));
    drop(live);

    let mut restored = restore_instance(storage.as_ref(), &meta, &replace, RestoreMode::NoClaim)?;
    assert_holds(&mut restored, 0..300, 9)?;
    drop(restored);
    let mut restored = restore_savepoint(&savepoint_storage, &savepoint, &replace)?;
    assert_holds(&mut restored, 0..300, 9)?;
    Ok(())
}

#[test]
fn leftovers_of_a_crash_are_removed_when_the_directory_opens() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    {
        let mut b = AnyBackend::open(&config_in(&work))?;
        write(&mut b, 0..10, 1)?;
    }
    // What a process that died during a checkpoint, a savepoint, a bulk import and a restore
    // download would have left (hard links and copies of DB files).
    let leftovers: Vec<PathBuf> = [
        "staging/chk-7",
        "staging/view-x1y2",
        "import-a1b2",
        "db.restoring",
    ]
    .iter()
    .map(|d| work.join(d))
    .collect();
    for dir in &leftovers {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("000012.sst"), b"leftover").unwrap();
    }
    let mut b = AnyBackend::open(&config_in(&work))?;
    for dir in &leftovers {
        assert!(!dir.exists(), "{} is left", dir.display());
    }
    assert_holds(&mut b, 0..10, 1)?;
    Ok(())
}

#[test]
fn an_unfinished_savepoint_restore_is_refused_and_replaced_on_request() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let mut source = AnyBackend::open(&BackendConfig::heap(128, all()))?;
    write(&mut source, 0..200, 5)?;
    let savepoint_storage = LocalDirStorage::new(tmp.path().join("savepoint"))?;
    let instance = source.savepoint()?.write(&savepoint_storage)?;
    complete_savepoint(&savepoint_storage, vec![instance])?;
    let savepoint = read_savepoint(&savepoint_storage)?;

    // A savepoint restore whose process died during the ingest leaves its DB and the restore
    // marker (built here directly: a DB closed cleanly, and the marker put back).
    let mut restored = restore_savepoint(&savepoint_storage, &savepoint, &config_in(&work))?;
    assert!(
        !work.join("db.restore-incomplete").exists(),
        "the restore finished"
    );
    write(&mut restored, 1000..1010, 1)?;
    drop(restored);
    std::fs::write(work.join("db.restore-incomplete"), b"").unwrap();

    match AnyBackend::open(&config_in(&work)) {
        Err(Error::UncleanWorkingDirectory { path }) => assert_eq!(path, work),
        other => panic!("expected UncleanWorkingDirectory, got {:?}", other.err()),
    }
    match restore_savepoint(&savepoint_storage, &savepoint, &config_in(&work)) {
        Err(Error::UncleanWorkingDirectory { path }) => assert_eq!(path, work),
        other => panic!("expected UncleanWorkingDirectory, got {:?}", other.err()),
    }
    let replace = config_in(&work).with_replace_existing(true);
    let mut restored = restore_savepoint(&savepoint_storage, &savepoint, &replace)?;
    assert_holds(&mut restored, 0..200, 5)?;
    drop(restored);
    assert!(!work.join("db.restore-incomplete").exists());
    assert!(!work.join(OPEN_MARKER).exists());
    assert_holds(&mut AnyBackend::open(&config_in(&work))?, 0..200, 5)
}
