//! The checkpoint driver: one call per barrier for a job's instances, uploads on a bounded pool,
//! completion with notification by identity, and an abort on a failed or stuck upload that
//! leaves the previous checkpoint as the base.
use crate::common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::checkpointing::{assert_matches_model, config, key_group, kinds, random_job};
use common::model::Handles;
use statebackend::checkpoint::{
    CheckpointCoordinator, RestoreMode, latest_restorable, restore_instance,
};
use statebackend::storage::{CheckpointStorage, FaultMode, FaultyStorage, ObjectMeta, StoragePath};
use statebackend::{BackendKind, CheckpointDriver, DriverOptions, Error, KeyGroupRange, Result};

fn driver(storage: Arc<dyn CheckpointStorage>, options: DriverOptions) -> Result<CheckpointDriver> {
    Ok(CheckpointDriver::new(
        CheckpointCoordinator::open(storage, 2)?,
        options,
    ))
}

#[test]
fn one_call_per_barrier_checkpoints_every_instance_and_notifies_each_by_identity() -> Result<()> {
    for kind in kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let storage: Arc<dyn CheckpointStorage> = crate::root::open(tmp.path())?;
        let mut driver = driver(Arc::clone(&storage), DriverOptions::default())?;
        let (mut backends, union) = random_job(kind, 3, 5, 600)?;
        // Not in key-group order: notification must find each instance by its id.
        backends.reverse();
        let first = driver.checkpoint(&mut backends)?;
        assert_eq!((first.id, first.instances), (1, 3));
        assert!(first.stats.files_uploaded >= 3 && first.stats.bytes_uploaded > 0);
        // Triggered, then polled to completion while the engine could go on.
        let id = driver.trigger(&mut backends)?;
        assert_eq!(driver.in_flight(), Some(id));
        let second = loop {
            if let Some(report) = driver.poll(&mut backends)? {
                break report;
            }
            std::thread::yield_now();
        };
        assert_eq!(second.id, 2);
        assert_eq!(driver.in_flight(), None);
        if kind == BackendKind::RocksDb {
            // Notified by identity, every instance reused the first checkpoint's files.
            assert!(second.stats.files_reused >= 3, "{kind}: {second:?}");
        }
        let meta = latest_restorable(storage.as_ref())?;
        assert_eq!(meta.id, 2);
        for part in &meta.instances {
            let mut restored = restore_instance(
                storage.as_ref(),
                &meta,
                &config(kind, part.key_groups),
                RestoreMode::NoClaim,
            )?;
            let h = Handles::register(&mut restored)?;
            let mut own = union.clone();
            own.retain_keys(|k| part.key_groups.contains(key_group(k)));
            assert_matches_model(&mut restored, &h, &own)?;
        }
    }
    Ok(())
}

#[test]
fn a_failed_upload_aborts_the_checkpoint_and_the_next_one_succeeds() -> Result<()> {
    for kind in kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let faulty = Arc::new(FaultyStorage::new(
            crate::root::open(tmp.path())?,
            FaultMode::None,
        ));
        let storage: Arc<dyn CheckpointStorage> = faulty.clone();
        let mut driver = driver(Arc::clone(&storage), DriverOptions::default())?;
        let (mut backends, union) = random_job(kind, 2, 11, 500)?;
        driver.checkpoint(&mut backends)?;
        // The next write fails: an upload of checkpoint 2.
        faulty.set_mode(FaultMode::FailAt(faulty.ops() + 1));
        let failed = driver.checkpoint(&mut backends);
        assert!(
            matches!(failed, Err(Error::InjectedFault { .. })),
            "{kind}: {failed:?}"
        );
        assert_eq!(driver.in_flight(), None);
        assert_eq!(driver.coordinator().latest().map(|m| m.id), Some(1));
        faulty.set_mode(FaultMode::None);
        let third = driver.checkpoint(&mut backends)?;
        assert_eq!(third.id, 3);
        if kind == BackendKind::RocksDb {
            // The aborted checkpoint notified nobody: checkpoint 1 stayed the base.
            assert!(third.stats.files_reused >= 2, "{kind}: {third:?}");
        }
        let meta = latest_restorable(storage.as_ref())?;
        assert_eq!(meta.id, 3);
        let all = KeyGroupRange::all(128)?;
        let mut restored = restore_instance(
            storage.as_ref(),
            &meta,
            &config(kind, all),
            RestoreMode::NoClaim,
        )?;
        let h = Handles::register(&mut restored)?;
        assert_matches_model(&mut restored, &h, &union)?;
    }
    Ok(())
}

/// A storage whose `put_file` waits while the gate is closed, and that counts how many
/// `put_file` calls run at once.
struct GatedStorage {
    inner: Arc<dyn CheckpointStorage>,
    closed: Mutex<bool>,
    opened: Condvar,
    running: AtomicUsize,
    most_running: AtomicUsize,
    entered: AtomicBool,
}

impl GatedStorage {
    fn new(dir: &Path, closed: bool) -> Result<Self> {
        Ok(Self {
            inner: crate::root::open(dir)?,
            closed: Mutex::new(closed),
            opened: Condvar::new(),
            running: AtomicUsize::new(0),
            most_running: AtomicUsize::new(0),
            entered: AtomicBool::new(false),
        })
    }

    fn open_gate(&self) {
        *self.closed.lock().unwrap() = false;
        self.opened.notify_all();
    }
}

impl CheckpointStorage for GatedStorage {
    fn put(&self, path: &StoragePath, data: &[u8]) -> Result<()> {
        self.inner.put(path, data)
    }
    fn put_file(&self, path: &StoragePath, local: &Path) -> Result<u64> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        self.entered.store(true, Ordering::SeqCst);
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
        drop(closed);
        // Let the others overlap with this one, if the pool lets them run.
        std::thread::yield_now();
        let result = self.inner.put_file(path, local);
        self.running.fetch_sub(1, Ordering::SeqCst);
        result
    }
    fn get(&self, path: &StoragePath) -> Result<Vec<u8>> {
        self.inner.get(path)
    }
    fn get_to_file(&self, path: &StoragePath, local: &Path) -> Result<u64> {
        self.inner.get_to_file(path, local)
    }
    fn list(&self, prefix: Option<&StoragePath>) -> Result<Vec<ObjectMeta>> {
        self.inner.list(prefix)
    }
    fn delete(&self, path: &StoragePath) -> Result<()> {
        self.inner.delete(path)
    }
    fn exists(&self, path: &StoragePath) -> Result<bool> {
        self.inner.exists(path)
    }
    fn size(&self, path: &StoragePath) -> Result<Option<u64>> {
        self.inner.size(path)
    }
}

#[test]
fn a_stuck_upload_times_out_aborts_and_the_next_checkpoint_succeeds() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let gated = Arc::new(GatedStorage::new(tmp.path(), true)?);
    let storage: Arc<dyn CheckpointStorage> = gated.clone();
    let options = DriverOptions {
        upload_timeout: Some(Duration::from_millis(50)),
        ..DriverOptions::default()
    };
    let mut driver = driver(Arc::clone(&storage), options)?;
    let (mut backends, union) = random_job(BackendKind::Heap, 2, 3, 300)?;
    // The gate stays closed until the driver gave up: the upload cannot finish in time.
    let stuck = driver.checkpoint(&mut backends);
    assert!(
        matches!(&stuck, Err(Error::CheckpointState { id: 1, reason }) if reason.contains("did not finish")),
        "{stuck:?}"
    );
    assert!(gated.entered.load(Ordering::SeqCst));
    assert!(driver.coordinator().latest().is_none());
    gated.open_gate();
    let next = driver.checkpoint(&mut backends)?;
    assert_eq!(next.id, 2);
    let meta = latest_restorable(storage.as_ref())?;
    let mut restored = restore_instance(
        storage.as_ref(),
        &meta,
        &config(BackendKind::Heap, KeyGroupRange::all(128)?),
        RestoreMode::NoClaim,
    )?;
    let h = Handles::register(&mut restored)?;
    assert_matches_model(&mut restored, &h, &union)?;
    Ok(())
}

#[test]
fn uploads_run_on_at_most_the_configured_threads() -> Result<()> {
    for threads in [1usize, 2] {
        let tmp = tempfile::tempdir().unwrap();
        // Closed: every upload that starts waits at the gate, so all the pool's threads are
        // inside `put_file` at once, and a thread beyond the bound would be too.
        let gated = Arc::new(GatedStorage::new(tmp.path(), true)?);
        let storage: Arc<dyn CheckpointStorage> = gated.clone();
        let options = DriverOptions {
            upload_threads: threads,
            ..DriverOptions::default()
        };
        let mut driver = driver(storage, options)?;
        let (mut backends, _) = random_job(BackendKind::Heap, 6, 21, 100)?;
        driver.trigger(&mut backends)?;
        while gated.running.load(Ordering::SeqCst) < threads {
            std::thread::yield_now();
        }
        // Room for an extra thread to show up, if the pool had started one.
        for _ in 0..10_000 {
            std::thread::yield_now();
        }
        assert_eq!(gated.running.load(Ordering::SeqCst), threads);
        gated.open_gate();
        let report = driver.finish(&mut backends)?;
        assert_eq!(report.instances, 6);
        let most = gated.most_running.load(Ordering::SeqCst);
        assert!(
            most <= threads,
            "{most} uploads at once with {threads} threads"
        );
    }
    Ok(())
}

#[test]
fn latest_restorable_deletes_nothing() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let storage: Arc<dyn CheckpointStorage> = crate::root::open(tmp.path())?;
    let mut driver = driver(Arc::clone(&storage), DriverOptions::default())?;
    let (mut backends, _) = random_job(BackendKind::Heap, 1, 1, 100)?;
    driver.checkpoint(&mut backends)?;
    // Leftovers of a crashed checkpoint 2: a coordinator opening the root would delete them.
    let orphan = StoragePath::parse("chk-0000000002/leftover")?;
    storage.put(&orphan, b"partial")?;
    let before = storage.list(None)?.len();
    assert_eq!(latest_restorable(storage.as_ref())?.id, 1);
    assert_eq!(storage.list(None)?.len(), before);
    assert!(storage.exists(&orphan)?);
    Ok(())
}

/// Issue 25, item 11: a checkpoint polled long after its uploads ended reports the time to the
/// last upload's end, not to the poll. The upload threads hold the storage while they run, so
/// once its count of holders is back to the driver's own, every upload has ended (and recorded
/// its end) before `uploads_ended`.
#[test]
fn upload_time_ends_where_the_last_upload_ended_not_at_a_late_poll() -> Result<()> {
    for kind in kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let storage: Arc<dyn CheckpointStorage> = crate::root::open(tmp.path())?;
        let mut driver = driver(Arc::clone(&storage), DriverOptions::default())?;
        let (mut backends, _) = random_job(kind, 3, 8, 300)?;
        let holders = Arc::strong_count(&storage);
        let triggered = std::time::Instant::now();
        driver.trigger(&mut backends)?;
        while Arc::strong_count(&storage) > holders {
            std::thread::sleep(Duration::from_millis(1));
        }
        let uploads_ended = std::time::Instant::now();
        // The engine is busy and polls late.
        std::thread::sleep(Duration::from_millis(300));
        let polled = std::time::Instant::now();
        let report = driver.poll(&mut backends)?.expect("every upload has ended");
        assert!(
            triggered + report.upload_time <= uploads_ended,
            "{kind}: upload time {:?} runs past the uploads' end ({:?} after the trigger, \
             polled {:?} after it)",
            report.upload_time,
            uploads_ended - triggered,
            polled - triggered,
        );
        assert!(report.upload_time > Duration::ZERO, "{kind}: {report:?}");
    }
    Ok(())
}
