//! Helpers for checkpoint scenarios: open backends of either kind, take a checkpoint with the
//! upload on another thread, compare a backend with a model.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use statebackend::checkpoint::{CheckpointCoordinator, SnapshotMetadata, UploadStats};
use statebackend::storage::CheckpointStorage;
use statebackend::{
    AnyBackend, BackendConfig, BackendKind, KeyGroupAssigner, KeyGroupRange, KeyedStateBackend,
    Result,
};

use super::model::{Handles, Model, Observation, OpGenerator, apply};

/// The backend kinds this build has.
pub fn kinds() -> Vec<BackendKind> {
    let mut kinds = vec![BackendKind::Heap, BackendKind::Reference];
    if cfg!(feature = "rocksdb") {
        kinds.push(BackendKind::RocksDb);
    }
    kinds
}

/// A configuration of `kind` for the whole key-group space of 128.
pub fn config(kind: BackendKind, range: KeyGroupRange) -> BackendConfig {
    let mut c = BackendConfig::heap(128, range);
    c.kind = kind;
    // The heap backend checkpoints incrementally in every suite (the reference backend keeps
    // full snapshots), materializing often so that chains of every length are crossed.
    c.heap_chains = Some(statebackend::backends::incremental_snapshot::ChainPolicy {
        max_deltas: 3,
        max_delta_ratio: 0.5,
    });
    c
}

/// Applies `n` generated operations to the backend and the model.
pub fn run_ops(
    b: &mut AnyBackend,
    h: &Handles,
    model: &mut Model,
    g: &mut OpGenerator,
    n: usize,
) -> Result<()> {
    for _ in 0..n {
        let op = g.next_op();
        let expected = model.apply(&op);
        let actual = apply(b, h, &op)?;
        assert_eq!(actual, expected, "{op:?}");
    }
    Ok(())
}

/// Asserts that the backend holds exactly what the model holds.
pub fn assert_matches_model<B: KeyedStateBackend>(
    b: &mut B,
    h: &Handles,
    model: &Model,
) -> Result<()> {
    let mut model = model.clone();
    for op in model.full_read_ops() {
        let expected = model.apply(&op);
        assert_ne!(expected, Observation::None);
        assert_eq!(apply(b, h, &op)?, expected, "{op:?}");
    }
    Ok(())
}

/// Takes checkpoint `id`: synchronous part here, upload on another thread while `during`
/// keeps using the backend, then completion and notification.
pub fn checkpoint(
    b: &mut AnyBackend,
    coordinator: &mut CheckpointCoordinator,
    id: u64,
    during: impl FnOnce(&mut AnyBackend) -> Result<()>,
) -> Result<(SnapshotMetadata, UploadStats)> {
    coordinator.begin(id)?;
    let pending = b.snapshot(id)?;
    let storage: Arc<dyn CheckpointStorage> = Arc::clone(coordinator.storage());
    let uploaded = std::thread::scope(|scope| {
        let upload = scope.spawn(move || pending.upload(storage.as_ref()));
        let during_result = during(b);
        let uploaded = upload.join().expect("upload thread panicked");
        during_result.and(uploaded)
    });
    let (instance, stats) = match uploaded {
        Ok(done) => done,
        Err(e) => {
            coordinator.abort(id)?;
            return Err(e);
        }
    };
    let meta = coordinator.complete(id, vec![instance])?.clone();
    b.notify_checkpoint_complete(&meta.instances[0])?;
    Ok((meta, stats))
}

/// A scratch directory, in memory (`/dev/shm`) where there is one: tests that take thousands
/// of checkpoints check state, not durability, and would otherwise spend their time in `fsync`.
pub fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new()
            .prefix("statebackend-test-")
            .tempdir_in(shm)
        {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

/// A configuration of `kind` whose RocksDB working directory is a fresh directory in `dir`.
pub fn config_in(kind: BackendKind, range: KeyGroupRange, dir: &Path) -> BackendConfig {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut c = config(kind, range);
    c.working_dir = Some(dir.join(format!("backend-{}", NEXT.fetch_add(1, Ordering::Relaxed))));
    c
}

/// The key group of a model key at max parallelism 128.
pub fn key_group(key: &String) -> u16 {
    let bytes = statebackend::Codec::encode(&statebackend::BincodeCodec, key).unwrap();
    KeyGroupAssigner::new(128)
        .unwrap()
        .key_group_of_bytes(&bytes)
}

/// A job of `parallelism` instances of `kind` over 128 key groups, instance `i` driven by
/// `ops` random operations (seed `seed + i`) on keys it owns; returns the instances and the
/// union of their models.
pub fn random_job(
    kind: BackendKind,
    parallelism: u32,
    seed: u64,
    ops: usize,
) -> Result<(Vec<AnyBackend>, Model)> {
    let mut backends = Vec::new();
    let mut union = Model::default();
    for i in 0..parallelism {
        let range = KeyGroupRange::for_operator(128, parallelism, i)?;
        let mut b = AnyBackend::open(&config(kind, range))?;
        let h = Handles::register(&mut b)?;
        let mut model = Model::default();
        let mut g = OpGenerator::new(seed + u64::from(i), 40, |k| range.contains(key_group(k)));
        run_ops(&mut b, &h, &mut model, &mut g, ops)?;
        union.absorb(model);
        backends.push(b);
    }
    Ok((backends, union))
}
