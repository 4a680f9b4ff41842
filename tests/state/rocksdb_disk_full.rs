//! A full disk under a RocksDB backend: the failures are `Error::NoSpace` naming the working
//! directory, nothing written before is lost, and once space is freed the same backend writes
//! and checkpoints again. Needs a small filesystem to fill: a tmpfs, which only root can mount;
//! elsewhere the test says so and passes.
#![cfg(feature = "rocksdb")]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use statebackend::checkpoint::{CheckpointCoordinator, RestoreMode, restore_instance};
use statebackend::storage::{CheckpointStorage, LocalDirStorage};
use statebackend::{
    AnyBackend, BackendConfig, Error, KeyGroupRange, KeyedStateBackend, Result, RocksDbBackend,
    ValueStateDescriptor,
};

/// A mounted tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).ok()?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?
            .success();
        mounted.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// 1 KiB that compression cannot shrink, different per key and round.
fn value(key: u32, round: u32) -> Vec<u8> {
    let mut x = ((u64::from(key) << 32) | u64::from(round)) ^ 0x9e37_79b9_7f4a_7c15;
    (0..128)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

/// Writes 1 MiB chunks to `path` until the filesystem is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a_u8; 1 << 20];
    while file
        .write_all(&chunk)
        .and_then(|()| file.sync_all())
        .is_ok()
    {}
}

fn no_space<T>(result: Result<T>, what: &str, dir: &Path) {
    match result {
        Err(Error::NoSpace { path, message }) => {
            assert!(path.starts_with(dir), "{what}: {}", path.display());
            assert!(!message.is_empty());
        }
        Err(other) => panic!("{what}: expected NoSpace, got {other:?}"),
        Ok(_) => panic!("{what}: succeeded on a full disk"),
    }
}

#[test]
fn a_full_disk_is_no_space_and_the_backend_recovers_when_space_is_freed() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    // RocksDB resumes once one write buffer (64 MiB by default) is free again.
    let Some(disk) = Tmpfs::mount(&tmp.path().join("disk"), "100m") else {
        println!("skipped: cannot mount a tmpfs here (not root?); disk-full is not tested");
        return Ok(());
    };
    let work = disk.0.join("work");
    let ballast = disk.0.join("ballast");
    let all = KeyGroupRange::all(128)?;
    let descriptor = ValueStateDescriptor::<u32, (), Vec<u8>>::new("values");
    // Without the write-back cache, so that every put below is a RocksDB write (with it, a
    // put is held in the cache and a full disk shows at the next flush or snapshot).
    let options = statebackend::RocksDbOptions {
        write_cache_bytes: 0,
        ..Default::default()
    };
    let mut b = AnyBackend::RocksDb(RocksDbBackend::open(128, all, Some(work.clone()), options)?);
    let state = b.value_state(&descriptor)?;
    for k in 0..4000 {
        state.put(&mut b, &k, &(), value(k, 0))?; // memtables: no disk yet
    }

    fill(&ballast);
    let AnyBackend::RocksDb(rocks) = &b else {
        unreachable!()
    };
    no_space(rocks.flush(), "flush", &work);
    no_space(b.snapshot(1).map(|_| ()), "snapshot", &work);
    // RocksDB stopped writes after the failed flush.
    no_space(state.put(&mut b, &0, &(), value(0, 1)), "put", &work);

    std::fs::remove_file(&ballast).unwrap();
    // RocksDB polls for free space and resumes (every 5 s); the same backend then writes.
    let mut attempts = 0;
    loop {
        match state.put(&mut b, &0, &(), value(0, 1)) {
            Ok(()) => break,
            Err(Error::NoSpace { .. }) if attempts < 240 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            Err(e) => panic!("the backend did not recover after space was freed: {e}"),
        }
    }
    for k in 4000..4100 {
        state.put(&mut b, &k, &(), value(k, 0))?;
    }

    // A checkpoint now works and holds everything, including what was written before the
    // disk filled up.
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::new(tmp.path().join("checkpoints"))?);
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
    coordinator.begin(1)?;
    let (part, _) = b.snapshot(1)?.upload(storage.as_ref())?;
    let meta = coordinator.complete(1, vec![part])?.clone();
    b.notify_checkpoint_complete(&meta.instances[0])?;
    drop(b);
    let mut restored = restore_instance(
        storage.as_ref(),
        &meta,
        &BackendConfig::rocksdb(128, all),
        RestoreMode::NoClaim,
    )?;
    let state = restored.value_state(&descriptor)?;
    assert_eq!(state.get(&restored, &0, &())?, Some(value(0, 1)));
    for k in 1..4100 {
        assert_eq!(state.get(&restored, &k, &())?, Some(value(k, 0)), "key {k}");
    }
    let count = restored.keys::<u32, ()>(state.id(), None)?.count();
    assert_eq!(count, 4100);
    Ok(())
}

/// With the write-back cache: a put whose room in the cache needs a write RocksDB refuses fails
/// as a whole (its change is not applied, earlier cached changes are kept), and once space is
/// freed the retried put and every cached change reach the checkpoint.
#[test]
fn with_the_write_cache_a_refused_write_back_fails_the_put_and_applies_nothing() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&tmp.path().join("disk"), "100m") else {
        println!("skipped: cannot mount a tmpfs here (not root?); disk-full is not tested");
        return Ok(());
    };
    let work = disk.0.join("work");
    let ballast = disk.0.join("ballast");
    let all = KeyGroupRange::all(128)?;
    let options = statebackend::RocksDbOptions {
        write_cache_bytes: 1 << 20,
        write_cache_dirty_bytes: 16 << 10,
        ..Default::default()
    };
    let descriptor = ValueStateDescriptor::<u32, (), Vec<u8>>::new("values");
    let mut b = AnyBackend::RocksDb(RocksDbBackend::open(128, all, Some(work.clone()), options)?);
    let state = b.value_state(&descriptor)?;
    for k in 0..4000 {
        state.put(&mut b, &k, &(), value(k, 0))?;
    }
    fill(&ballast);
    let AnyBackend::RocksDb(rocks) = &b else {
        unreachable!()
    };
    no_space(rocks.flush(), "flush", &work);
    // RocksDB stopped writes: the cache takes changes until it must write some back.
    let mut refused = None;
    for k in 0..100 {
        match state.put(&mut b, &k, &(), value(k, 1)) {
            Ok(()) => {}
            Err(e) => {
                no_space(Err::<(), _>(e), "put that needs a write-back", &work);
                refused = Some(k);
                break;
            }
        }
    }
    let refused = refused.expect("a 16 KiB dirty limit forces a write-back within 100 puts");
    assert!(refused > 0, "the first puts fit in the dirty limit");
    // The refused put changed nothing; the ones before it are there.
    assert_eq!(state.get(&b, &refused, &())?, Some(value(refused, 0)));
    for k in 0..refused {
        assert_eq!(state.get(&b, &k, &())?, Some(value(k, 1)));
    }

    std::fs::remove_file(&ballast).unwrap();
    let mut attempts = 0;
    loop {
        match state.put(&mut b, &refused, &(), value(refused, 1)) {
            Ok(()) => break,
            Err(Error::NoSpace { .. }) if attempts < 240 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            Err(e) => panic!("the backend did not recover after space was freed: {e}"),
        }
    }
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::new(tmp.path().join("checkpoints"))?);
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
    coordinator.begin(1)?;
    let (part, _) = b.snapshot(1)?.upload(storage.as_ref())?;
    let meta = coordinator.complete(1, vec![part])?.clone();
    drop(b);
    let mut restored = restore_instance(
        storage.as_ref(),
        &meta,
        &BackendConfig::rocksdb(128, all),
        RestoreMode::NoClaim,
    )?;
    let state = restored.value_state(&descriptor)?;
    for k in 0..4000 {
        let round = u32::from(k <= refused);
        assert_eq!(
            state.get(&restored, &k, &())?,
            Some(value(k, round)),
            "key {k}"
        );
    }
    Ok(())
}
