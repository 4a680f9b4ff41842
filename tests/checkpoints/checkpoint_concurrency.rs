//! Checkpoints under concurrency:
//!
//! - writes keep going on the task thread while the asynchronous part uploads, and the
//!   checkpoint holds exactly the state at the snapshot;
//! - several backend instances, each on its own thread, upload into one root at once and the
//!   main thread completes the job's checkpoint;
//! - garbage collection (explicit `collect_orphans`, and retention triggered by completing
//!   another checkpoint) runs while an upload is in flight and never takes its files;
//! - at the end nothing is lost (every retained checkpoint verifies and restores exactly) and
//!   nothing leaked (no orphans, and reopening the root deletes nothing).
use crate::common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::checkpointing::{assert_matches_model, config, config_in, kinds, run_ops, scratch};
use common::model::{Handles, Model, OpGenerator};
use statebackend::checkpoint::{
    CheckpointCoordinator, InstanceMetadata, RestoreMode, SnapshotMetadata, layout,
    restore_instance, verify_files,
};
use statebackend::storage::{CheckpointStorage, ObjectMeta, StoragePath, is_temporary};
use statebackend::{AnyBackend, BackendKind, KeyGroup, KeyGroupRange, KeyedStateBackend, Result};

const MAX_PARALLELISM: u32 = 128;

/// `STATEBACKEND_LONG_TESTS=1` runs 20 times as many rounds.
fn scale() -> usize {
    match std::env::var("STATEBACKEND_LONG_TESTS") {
        Ok(v) if !v.is_empty() && v != "0" => 20,
        _ => 1,
    }
}

fn key_group(key: &String) -> KeyGroup {
    let bytes = statebackend::Codec::encode(&statebackend::BincodeCodec, key).unwrap();
    statebackend::KeyGroupAssigner::new(MAX_PARALLELISM)
        .unwrap()
        .key_group_of_bytes(&bytes)
}

fn restricted(model: &Model, range: KeyGroupRange) -> Model {
    let mut own = model.clone();
    own.retain_keys(|k| range.contains(key_group(k)));
    own
}

/// Restores every instance of `meta` at `parallelism` and compares the union with `expected`.
fn assert_restores(
    storage: &dyn CheckpointStorage,
    meta: &SnapshotMetadata,
    parallelism: u32,
    expected: &Model,
) -> Result<()> {
    let kind = meta.instances[0].backend;
    let mut seen = Model::default();
    for i in 0..parallelism {
        let range = KeyGroupRange::for_operator(MAX_PARALLELISM, parallelism, i)?;
        let mut b = restore_instance(storage, meta, &config(kind, range), RestoreMode::NoClaim)?;
        let h = Handles::register(&mut b)?;
        let own = restricted(expected, range);
        assert_matches_model(&mut b, &h, &own)?;
        seen.absorb(own);
    }
    assert_eq!(&seen, expected, "checkpoint {}", meta.id);
    Ok(())
}

/// Nothing lost, nothing leaked: every retained checkpoint verifies, no file is unreferenced,
/// and reopening the root (which collects orphans) deletes nothing.
fn assert_no_lost_or_leaked(coordinator: &CheckpointCoordinator, retained: usize) -> Result<()> {
    let storage = Arc::clone(coordinator.storage());
    for meta in coordinator.completed() {
        verify_files(storage.as_ref(), meta)?;
    }
    let orphans = coordinator.orphans()?;
    assert!(orphans.is_empty(), "leaked files: {orphans:?}");
    // Reopening adds its epoch file (`_coordinator/`) and must delete nothing.
    let checkpoint_files = || -> Result<Vec<ObjectMeta>> {
        let mut files = storage.list(None)?;
        files.retain(|o| !o.path.as_str().starts_with("_coordinator/"));
        Ok(files)
    };
    let before = checkpoint_files()?;
    let reopened = CheckpointCoordinator::open(Arc::clone(&storage), retained)?;
    assert_eq!(checkpoint_files()?, before, "reopening deleted files");
    let ids = |c: &CheckpointCoordinator| c.completed().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(ids(&reopened), ids(coordinator));
    Ok(())
}

/// One backend instance of `kind` owning every key group, with a fresh root.
struct Single {
    _tmp: tempfile::TempDir,
    storage: Arc<dyn CheckpointStorage>,
    coordinator: CheckpointCoordinator,
    b: AnyBackend,
    h: Handles,
    model: Model,
    g: OpGenerator,
    last_id: u64,
}

impl Single {
    fn new(kind: BackendKind, seed: u64, retained: usize) -> Result<Self> {
        let tmp = scratch();
        let storage: Arc<dyn CheckpointStorage> = crate::root::open(tmp.path().join("root"))?;
        Self::with_storage(kind, seed, retained, tmp, storage)
    }

    fn with_storage(
        kind: BackendKind,
        seed: u64,
        retained: usize,
        tmp: tempfile::TempDir,
        storage: Arc<dyn CheckpointStorage>,
    ) -> Result<Self> {
        let coordinator = CheckpointCoordinator::open(Arc::clone(&storage), retained)?;
        let range = KeyGroupRange::all(MAX_PARALLELISM)?;
        let mut b = AnyBackend::open(&config_in(kind, range, tmp.path()))?;
        let h = Handles::register(&mut b)?;
        Ok(Self {
            _tmp: tmp,
            storage,
            coordinator,
            b,
            h,
            model: Model::default(),
            g: OpGenerator::new(seed, 40, |_| true),
            last_id: 0,
        })
    }

    fn next_id(&mut self) -> u64 {
        self.last_id = self.coordinator.next_checkpoint_id().max(self.last_id + 1);
        self.last_id
    }

    fn ops(&mut self, n: usize) -> Result<()> {
        run_ops(&mut self.b, &self.h, &mut self.model, &mut self.g, n)
    }
}

/// Writes during the asynchronous phase: snapshot, upload on another thread while the task
/// thread keeps writing, complete; every 50 rounds the checkpoint is restored and must equal
/// the model at the snapshot (not the model at completion).
#[test]
fn writes_during_upload_never_leak_into_the_checkpoint() -> Result<()> {
    const OPS_DURING: usize = 10;
    const RESTORE_EVERY: usize = 50;
    let rounds: usize = 1_000 * scale();
    for kind in kinds() {
        let started = Instant::now();
        let mut s = Single::new(kind, 7, 2)?;
        s.ops(300)?;
        let mut restores = 0;
        let mut total_ops_during = 0;
        for round in 1..=rounds {
            let id = s.next_id();
            s.coordinator.begin(id)?;
            let pending = s.b.snapshot(id)?;
            let at_snapshot = s.model.clone();
            let storage = Arc::clone(&s.storage);
            let upload = std::thread::spawn(move || pending.upload(storage.as_ref()));
            s.ops(OPS_DURING)?;
            total_ops_during += OPS_DURING;
            let (instance, _) = upload.join().expect("upload thread panicked")?;
            let meta = s.coordinator.complete(id, vec![instance])?.clone();
            s.b.notify_checkpoint_complete(&meta.instances[0])?;
            if round % RESTORE_EVERY == 0 {
                verify_files(s.storage.as_ref(), &meta)?;
                let mut restored = restore_instance(
                    s.storage.as_ref(),
                    &meta,
                    &config(kind, KeyGroupRange::all(MAX_PARALLELISM)?),
                    RestoreMode::NoClaim,
                )?;
                let rh = Handles::register(&mut restored)?;
                assert_matches_model(&mut restored, &rh, &at_snapshot)?;
                assert_ne!(
                    at_snapshot, s.model,
                    "the writes during the upload changed something"
                );
                restores += 1;
            }
        }
        assert_no_lost_or_leaked(&s.coordinator, 2)?;
        println!(
            "{kind}: {rounds} rounds, {rounds} checkpoints, {total_ops_during} ops during uploads, \
             {restores} restores in {:?}",
            started.elapsed()
        );
    }
    Ok(())
}

/// What the main thread asks a worker (one backend instance on its own thread).
enum Command {
    /// Snapshot and upload checkpoint `id`, writing during the upload.
    Checkpoint(u64),
    /// The checkpoint completed: this is the instance's part.
    Complete(InstanceMetadata),
    /// Stop; reply with the final model.
    Stop,
}

/// What a worker answers to `Command::Checkpoint`.
struct Uploaded {
    index: usize,
    instance: Result<InstanceMetadata>,
    at_snapshot: Model,
}

fn worker(
    kind: BackendKind,
    parallelism: u32,
    index: usize,
    dir: PathBuf,
    storage: Arc<dyn CheckpointStorage>,
    commands: mpsc::Receiver<Command>,
    replies: mpsc::Sender<Uploaded>,
) -> Result<Model> {
    let range = KeyGroupRange::for_operator(MAX_PARALLELISM, parallelism, index as u32)?;
    let mut b = AnyBackend::open(&config_in(kind, range, &dir))?;
    let h = Handles::register(&mut b)?;
    let mut model = Model::default();
    let mut g = OpGenerator::new(1_000 + index as u64, 30, |k| range.contains(key_group(k)));
    run_ops(&mut b, &h, &mut model, &mut g, 200)?;
    while let Ok(command) = commands.recv() {
        match command {
            Command::Checkpoint(id) => {
                run_ops(&mut b, &h, &mut model, &mut g, 20)?;
                let pending = b.snapshot(id)?;
                let at_snapshot = model.clone();
                let instance = std::thread::scope(|scope| {
                    let storage = Arc::clone(&storage);
                    let upload = scope.spawn(move || pending.upload(storage.as_ref()));
                    let during = run_ops(&mut b, &h, &mut model, &mut g, 10);
                    let uploaded = upload.join().expect("upload thread panicked");
                    during.map(|()| uploaded.map(|(meta, _)| meta))
                })?;
                let reply = Uploaded {
                    index,
                    instance,
                    at_snapshot,
                };
                if replies.send(reply).is_err() {
                    break;
                }
            }
            Command::Complete(instance) => {
                assert_eq!(instance.key_groups, range);
                b.notify_checkpoint_complete(&instance)?;
            }
            Command::Stop => break,
        }
    }
    Ok(model)
}

/// P=3 instances, each on its own thread with its own backend, checkpoint into one root at
/// once; the main thread completes (or, every 7th round, aborts) the job's checkpoint.
#[test]
fn parallel_instances_checkpoint_into_one_root() -> Result<()> {
    const P: u32 = 3;
    const RETAINED: usize = 2;
    let rounds: usize = 60 * scale();
    for kind in kinds() {
        let started = Instant::now();
        let tmp = scratch();
        let storage: Arc<dyn CheckpointStorage> = crate::root::open(tmp.path().join("root"))?;
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), RETAINED)?;
        let (reply_tx, reply_rx) = mpsc::channel();
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for index in 0..P as usize {
            let (tx, rx) = mpsc::channel();
            let storage = Arc::clone(&storage);
            let replies = reply_tx.clone();
            let dir = tmp.path().to_path_buf();
            senders.push(tx);
            threads.push(std::thread::spawn(move || {
                worker(kind, P, index, dir, storage, rx, replies)
            }));
        }
        drop(reply_tx);
        let mut models: BTreeMap<u64, Model> = BTreeMap::new();
        let (mut completed, mut aborted, mut restores) = (0, 0, 0);
        let mut last_id = 0;
        for round in 1..=rounds {
            let id = coordinator.next_checkpoint_id().max(last_id + 1);
            last_id = id;
            coordinator.begin(id)?;
            for tx in &senders {
                tx.send(Command::Checkpoint(id)).expect("worker alive");
            }
            let mut instances = Vec::new();
            let mut union = Model::default();
            for _ in 0..P {
                let Uploaded {
                    index,
                    instance,
                    at_snapshot,
                } = reply_rx.recv().expect("worker alive");
                let instance = instance?;
                assert_eq!(
                    instance.key_groups,
                    KeyGroupRange::for_operator(MAX_PARALLELISM, P, index as u32)?
                );
                instances.push((index, instance));
                union.absorb(at_snapshot);
            }
            if round % 7 == 0 {
                coordinator.abort(id)?;
                aborted += 1;
            } else {
                let meta = coordinator
                    .complete(id, instances.iter().map(|(_, i)| i.clone()).collect())?
                    .clone();
                for (index, instance) in instances {
                    senders[index]
                        .send(Command::Complete(instance))
                        .expect("worker alive");
                }
                models.insert(id, union);
                completed += 1;
                if round % 10 == 0 {
                    assert_restores(storage.as_ref(), &meta, P, &models[&id])?;
                    restores += P;
                }
            }
            assert!(coordinator.orphans()?.is_empty());
        }
        for tx in &senders {
            tx.send(Command::Stop).expect("worker alive");
        }
        for t in threads {
            t.join().expect("worker panicked")?;
        }
        // Every instance restores from the latest, at P and rescaled.
        let latest = coordinator
            .latest()
            .cloned()
            .expect("a completed checkpoint");
        for parallelism in [P, 2, 4] {
            assert_restores(storage.as_ref(), &latest, parallelism, &models[&latest.id])?;
            restores += parallelism;
        }
        assert_no_lost_or_leaked(&coordinator, RETAINED)?;
        println!(
            "{kind}: P={P}, {rounds} rounds, {completed} checkpoints completed, {aborted} aborted, \
             {restores} instance restores in {:?}",
            started.elapsed()
        );
    }
    Ok(())
}

/// A storage that slows down writes (to widen race windows) and records every deletion.
struct SlowStorage {
    inner: Arc<dyn CheckpointStorage>,
    slow: AtomicBool,
    delay: Duration,
    deleted: Mutex<Vec<StoragePath>>,
    writes: AtomicU64,
}

impl SlowStorage {
    fn pause(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        if self.slow.load(Ordering::Relaxed) {
            std::thread::sleep(self.delay);
        }
    }
}

impl CheckpointStorage for SlowStorage {
    fn put(&self, path: &StoragePath, data: &[u8]) -> Result<()> {
        self.pause();
        self.inner.put(path, data)
    }
    fn put_file(&self, path: &StoragePath, local: &Path) -> Result<u64> {
        self.pause();
        self.inner.put_file(path, local)
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
        self.deleted.lock().unwrap().push(path.clone());
        self.inner.delete(path)
    }
    fn exists(&self, path: &StoragePath) -> Result<bool> {
        self.inner.exists(path)
    }
    fn size(&self, path: &StoragePath) -> Result<Option<u64>> {
        self.inner.size(path)
    }
}

/// The files in storage that no completed checkpoint references and that GC must still leave
/// because of checkpoint `in_flight`: its own directory, and `shared/`. Temporary files of
/// writes in progress are left out (they are renamed away).
fn unprotected_in_flight(
    coordinator: &CheckpointCoordinator,
    in_flight: u64,
) -> Result<Vec<StoragePath>> {
    let mut referenced: HashSet<StoragePath> = HashSet::new();
    for meta in coordinator.completed() {
        referenced.insert(layout::metadata_path(meta.id)?);
        referenced.extend(meta.files().map(|f| f.path.clone()));
    }
    let own_dir = layout::checkpoint_dir_name(in_flight);
    Ok(coordinator
        .storage()
        .list(None)?
        .into_iter()
        .map(|o| o.path)
        .filter(|p| !referenced.contains(p) && !is_temporary(p))
        .filter(|p| {
            p.components()
                .next()
                .is_some_and(|top| top == layout::SHARED_DIR || top == own_dir)
        })
        .collect())
}

/// GC racing a checkpoint: checkpoint B's upload runs on a thread (slowed down) while the main
/// thread completes (or aborts) the older checkpoint A — retention with 1 retained checkpoint
/// drops the checkpoint B's base came from — and calls `collect_orphans()` in a loop. B must
/// then complete, verify and restore exactly, and nothing B lists may have been deleted.
#[test]
fn gc_never_takes_the_files_of_an_upload_in_flight() -> Result<()> {
    const RETAINED: usize = 1;
    let rounds: usize = 40 * scale();
    for kind in kinds() {
        let started = Instant::now();
        let tmp = scratch();
        let slow = Arc::new(SlowStorage {
            inner: crate::root::open(tmp.path().join("root"))?,
            slow: AtomicBool::new(false),
            delay: Duration::from_millis(3),
            deleted: Mutex::new(Vec::new()),
            writes: AtomicU64::new(0),
        });
        let storage: Arc<dyn CheckpointStorage> = slow.clone();
        let mut s = Single::with_storage(kind, 11, RETAINED, tmp, storage)?;
        s.ops(400)?;
        // A completed checkpoint to be the base of the first round.
        let id = s.next_id();
        s.coordinator.begin(id)?;
        let (first, _) = s.b.snapshot(id)?.upload(s.storage.as_ref())?;
        let meta = s.coordinator.complete(id, vec![first])?.clone();
        s.b.notify_checkpoint_complete(&meta.instances[0])?;

        let (mut collections, mut completed, mut aborted, mut restores) = (0, 0, 0, 0);
        let mut files_deleted_during = 0;
        let mut exposed_files = 0;
        for round in 0..rounds {
            s.ops(60)?;
            let a = s.next_id();
            s.coordinator.begin(a)?;
            let pending_a = s.b.snapshot(a)?;
            let model_a = s.model.clone();
            // Half the rounds, A's files are all rewritten by B's time (more for retention to
            // drop); otherwise few writes in between.
            s.ops(if round % 2 == 0 { 200 } else { 5 })?;
            let b_id = s.next_id();
            s.coordinator.begin(b_id)?;
            let pending_b = s.b.snapshot(b_id)?;
            let model_b = s.model.clone();

            slow.slow.store(true, Ordering::Relaxed);
            let deleted_before = slow.deleted.lock().unwrap().len();
            let storage = Arc::clone(&s.storage);
            let upload_b = std::thread::spawn(move || pending_b.upload(storage.as_ref()));
            // Meanwhile: A uploads and completes (retention drops the previous checkpoint),
            // or is aborted; then orphan collection runs until B's upload is done.
            let (instance_a, _) = pending_a.upload(s.storage.as_ref())?;
            let abort_a = round % 3 == 2;
            if abort_a {
                s.coordinator.abort(a)?;
                aborted += 1;
            } else {
                let meta_a = s.coordinator.complete(a, vec![instance_a])?.clone();
                s.b.notify_checkpoint_complete(&meta_a.instances[0])?;
                completed += 1;
                // A restores exactly while B is still uploading.
                let mut restored = restore_instance(
                    s.storage.as_ref(),
                    &meta_a,
                    &config(kind, KeyGroupRange::all(MAX_PARALLELISM)?),
                    RestoreMode::NoClaim,
                )?;
                let rh = Handles::register(&mut restored)?;
                assert_matches_model(&mut restored, &rh, &model_a)?;
                restores += 1;
            }
            loop {
                let finished = upload_b.is_finished();
                // Files only the in-flight checkpoints protect (B's directory, and `shared/`
                // files no completed checkpoint lists): GC must leave every one of them.
                let exposed = unprotected_in_flight(&s.coordinator, b_id)?;
                s.coordinator.collect_orphans()?;
                collections += 1;
                for path in &exposed {
                    assert!(
                        s.storage.exists(path)?,
                        "{kind} round {round}: GC deleted {path} of in-flight checkpoint {b_id}"
                    );
                }
                exposed_files += exposed.len();
                s.ops(3)?;
                if finished {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let (instance_b, _) = upload_b.join().expect("upload thread panicked")?;
            slow.slow.store(false, Ordering::Relaxed);
            // One more collection with B still in flight and its upload finished.
            s.coordinator.collect_orphans()?;
            collections += 1;

            let deleted: BTreeSet<StoragePath> = slow.deleted.lock().unwrap()[deleted_before..]
                .iter()
                .cloned()
                .collect();
            files_deleted_during += deleted.len();
            for file in &instance_b.files {
                assert!(
                    !deleted.contains(&file.path),
                    "{kind} round {round}: {} of in-flight checkpoint {b_id} was deleted",
                    file.path
                );
            }
            let meta_b = s.coordinator.complete(b_id, vec![instance_b])?.clone();
            s.b.notify_checkpoint_complete(&meta_b.instances[0])?;
            completed += 1;
            verify_files(s.storage.as_ref(), &meta_b)?;
            let mut restored = restore_instance(
                s.storage.as_ref(),
                &meta_b,
                &config(kind, KeyGroupRange::all(MAX_PARALLELISM)?),
                RestoreMode::NoClaim,
            )?;
            let rh = Handles::register(&mut restored)?;
            assert_matches_model(&mut restored, &rh, &model_b)?;
            restores += 1;
            assert_eq!(s.coordinator.completed().count(), RETAINED);
            assert!(s.coordinator.orphans()?.is_empty());
        }
        assert_no_lost_or_leaked(&s.coordinator, RETAINED)?;
        println!(
            "{kind}: {rounds} rounds, {completed} checkpoints completed, {aborted} aborted, \
             {collections} orphan collections during uploads ({exposed_files} times a file only \
             the in-flight checkpoint protected was there), {files_deleted_during} files \
             deleted meanwhile, {} storage writes, {restores} restores in {:?}",
            slow.writes.load(Ordering::Relaxed),
            started.elapsed()
        );
    }
    Ok(())
}

/// Overlapping checkpoints of P=2 instances with uploads on threads: the newer completes
/// while the older is still uploading, the older is refused as subsumed and aborted; GC runs
/// in between. No retained checkpoint loses a file, no file leaks.
#[test]
fn subsumed_uploads_in_flight_leave_nothing_behind() -> Result<()> {
    const P: u32 = 2;
    const RETAINED: usize = 2;
    let rounds: usize = 30 * scale();
    for kind in kinds() {
        let started = Instant::now();
        let tmp = scratch();
        let storage: Arc<dyn CheckpointStorage> = crate::root::open(tmp.path().join("root"))?;
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), RETAINED)?;
        let mut backends = Vec::new();
        let mut handles = Vec::new();
        let mut gens = Vec::new();
        let mut models = Vec::new();
        for i in 0..P {
            let range = KeyGroupRange::for_operator(MAX_PARALLELISM, P, i)?;
            let mut b = AnyBackend::open(&config_in(kind, range, tmp.path()))?;
            handles.push(Handles::register(&mut b)?);
            backends.push(b);
            gens.push(OpGenerator::new(77 + u64::from(i), 30, |k| {
                range.contains(key_group(k))
            }));
            models.push(Model::default());
        }
        let mut expected: HashMap<u64, Model> = HashMap::new();
        let (mut completed, mut subsumed, mut restores) = (0, 0, 0);
        let mut last_id = 0;
        let mut next_id = |c: &CheckpointCoordinator| {
            last_id = c.next_checkpoint_id().max(last_id + 1);
            last_id
        };
        for round in 1..=rounds {
            let mut ids = Vec::new();
            let mut pending = Vec::new();
            let mut snapshot_models = Vec::new();
            for _ in 0..2 {
                for i in 0..P as usize {
                    run_ops(
                        &mut backends[i],
                        &handles[i],
                        &mut models[i],
                        &mut gens[i],
                        40,
                    )?;
                }
                let id = next_id(&coordinator);
                coordinator.begin(id)?;
                let snaps = backends
                    .iter_mut()
                    .map(|b| b.snapshot(id))
                    .collect::<Result<Vec<_>>>()?;
                let mut union = Model::default();
                for m in &models {
                    union.absorb(m.clone());
                }
                ids.push(id);
                pending.push(snaps);
                snapshot_models.push(union);
            }
            let newer = pending.pop().unwrap();
            let older = pending.pop().unwrap();
            let spawn_all = |snaps: Vec<statebackend::checkpoint::PendingSnapshot>| {
                snaps
                    .into_iter()
                    .map(|p| {
                        let storage = Arc::clone(&storage);
                        std::thread::spawn(move || p.upload(storage.as_ref()))
                    })
                    .collect::<Vec<_>>()
            };
            let older_threads = spawn_all(older);
            let newer_threads = spawn_all(newer);
            let newer_instances = newer_threads
                .into_iter()
                .map(|t| t.join().expect("upload panicked").map(|(m, _)| m))
                .collect::<Result<Vec<_>>>()?;
            let meta = coordinator.complete(ids[1], newer_instances)?.clone();
            for b in backends.iter_mut() {
                let range = b.key_group_range();
                let part = meta
                    .instances
                    .iter()
                    .find(|i| i.key_groups == range)
                    .unwrap();
                b.notify_checkpoint_complete(part)?;
            }
            expected.insert(ids[1], snapshot_models.pop().unwrap());
            completed += 1;
            // The older upload may still run: GC must leave its files (it is in flight).
            coordinator.collect_orphans()?;
            let older_instances = older_threads
                .into_iter()
                .map(|t| t.join().expect("upload panicked").map(|(m, _)| m))
                .collect::<Result<Vec<_>>>()?;
            let late = coordinator.complete(ids[0], older_instances);
            assert!(
                matches!(late, Err(statebackend::Error::CheckpointState { .. })),
                "{late:?}"
            );
            coordinator.abort(ids[0])?;
            subsumed += 1;
            assert!(coordinator.orphans()?.is_empty());
            for meta in coordinator.completed() {
                verify_files(storage.as_ref(), meta)?;
            }
            if round % 5 == 0 {
                assert_restores(storage.as_ref(), &meta, P, &expected[&meta.id])?;
                restores += P;
            }
        }
        let retained: Vec<_> = coordinator.completed().cloned().collect();
        for meta in &retained {
            assert_restores(storage.as_ref(), meta, P, &expected[&meta.id])?;
            restores += P;
        }
        assert_no_lost_or_leaked(&coordinator, RETAINED)?;
        println!(
            "{kind}: {rounds} rounds, {completed} checkpoints completed, {subsumed} subsumed \
             and aborted, {restores} instance restores in {:?}",
            started.elapsed()
        );
    }
    Ok(())
}
