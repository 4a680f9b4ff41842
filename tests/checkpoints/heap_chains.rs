//! Incremental heap checkpoints (chains of a base and deltas): each checkpoint uploads what
//! changed (bounded by twice the changed rows' bytes), deletions and expired rows leave as
//! tombstones and never come back, a chain is materialized by its policy, a checkpoint that
//! never completed is folded into the next, and a chain restores at other parallelisms into
//! every backend. The crash sweeps, fault and retention properties cross chains too: their
//! heap configuration (`common::checkpointing::config`) checkpoints incrementally.
use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::checkpointing::{config_in, kinds, scratch};
use statebackend::backends::incremental_snapshot::{ChainFile, ChainPolicy};
use statebackend::checkpoint::{
    CheckpointCoordinator, InstanceMetadata, RestoreMode, SnapshotMetadata, restore_instance,
};
use statebackend::state::ttl::StateTtlConfig;
use statebackend::storage::{CheckpointStorage, LocalDirStorage};
use statebackend::{
    AnyBackend, BackendConfig, BackendKind, KeyGroupRange, KeyedStateBackend, Result,
    ValueStateDescriptor,
};

const KEYS: u64 = 20_000;

fn values() -> ValueStateDescriptor<u64, (), Vec<u8>> {
    ValueStateDescriptor::new("values")
}

fn value(k: u64, round: u64) -> Vec<u8> {
    let mut v = vec![(k % 251) as u8; 100];
    v[..8].copy_from_slice(&(k ^ (round << 40)).to_le_bytes());
    v
}

fn heap_config(dir: &std::path::Path, policy: ChainPolicy) -> BackendConfig {
    let mut c = config_in(BackendKind::Heap, KeyGroupRange::all(128).unwrap(), dir);
    c.heap_chains = Some(policy);
    c
}

/// Checkpoint `id` of `b`, completed and notified.
fn checkpoint(
    b: &mut AnyBackend,
    coordinator: &mut CheckpointCoordinator,
    storage: &dyn CheckpointStorage,
    id: u64,
) -> Result<(
    InstanceMetadata,
    statebackend::checkpoint::UploadStats,
    SnapshotMetadata,
)> {
    coordinator.begin(id)?;
    let (part, stats) = b.snapshot(id)?.upload(storage)?;
    let meta = coordinator.complete(id, vec![part.clone()])?.clone();
    b.notify_checkpoint_complete(&part)?;
    Ok((part, stats, meta))
}

fn roles(part: &InstanceMetadata) -> Vec<ChainFile> {
    part.files
        .iter()
        .map(|f| ChainFile::of(&f.local_name).expect("a chain file"))
        .collect()
}

/// Reads every key of `values` from `b` (its key groups only).
fn read_all(b: &mut AnyBackend) -> Result<BTreeMap<u64, Vec<u8>>> {
    let s = b.value_state(&values())?;
    let mut out = BTreeMap::new();
    for k in 0..KEYS {
        if let Ok(key) = b.key_context(k) {
            if let Some(v) = s.get(b, &key, &())? {
                out.insert(k, v);
            }
        }
    }
    Ok(out)
}

#[test]
fn each_checkpoint_uploads_what_changed_and_restores_exactly() -> Result<()> {
    let root = scratch();
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::new(root.path().join("root"))?);
    let policy = ChainPolicy {
        max_deltas: 4,
        max_delta_ratio: 0.5,
    };
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
    let mut b = AnyBackend::open(&heap_config(root.path(), policy))?;
    let s = b.value_state(&values())?;
    let mut model = BTreeMap::new();
    for k in 0..KEYS {
        s.put(&mut b, &k, &(), value(k, 0))?;
        model.insert(k, value(k, 0));
    }
    let (part, stats, _) = checkpoint(&mut b, &mut coordinator, storage.as_ref(), 1)?;
    assert_eq!(roles(&part), [ChainFile::Base]);
    let base_bytes = stats.bytes_uploaded;
    for round in 1..=6u64 {
        // 1% of the keys written, 0.25% removed.
        let mut changed_bytes = 0u64;
        for i in 0..KEYS / 100 {
            let k = (i * 7919 + round * 104_729) % KEYS;
            s.put(&mut b, &k, &(), value(k, round))?;
            model.insert(k, value(k, round));
            changed_bytes += 110;
        }
        for i in 0..KEYS / 400 {
            let k = (i * 6151 + round * 3) % KEYS;
            s.clear(&mut b, &k, &())?;
            model.remove(&k);
            changed_bytes += 10;
        }
        let (part, stats, meta) =
            checkpoint(&mut b, &mut coordinator, storage.as_ref(), round + 1)?;
        let chain = roles(&part);
        if round == 5 {
            // Four deltas: the fifth checkpoint after the base writes a new one.
            assert_eq!(chain, [ChainFile::Base], "round {round}");
            assert!(
                stats.bytes_uploaded > base_bytes / 2,
                "round {round}: {stats:?}"
            );
        } else {
            let deltas = chain.iter().filter(|r| **r == ChainFile::Delta).count();
            assert_eq!(
                deltas,
                if round < 5 { round as usize } else { 1 },
                "round {round}: {chain:?}"
            );
            assert!(
                stats.bytes_uploaded <= 2 * changed_bytes + 2048,
                "round {round}: uploaded {} for {changed_bytes} changed bytes",
                stats.bytes_uploaded
            );
            assert!(stats.files_reused >= 1, "round {round}: the base is reused");
        }
        // Restored from the chain: exactly the model.
        let restored_dir = root.path().join(format!("restored-{round}"));
        let mut restored = restore_instance(
            storage.as_ref(),
            &meta,
            &heap_config(&restored_dir, policy),
            RestoreMode::NoClaim,
        )?;
        assert_eq!(read_all(&mut restored)?, model, "round {round}");
    }
    Ok(())
}

#[test]
fn a_checkpoint_that_never_completed_is_folded_into_the_next() -> Result<()> {
    let root = scratch();
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::new(root.path().join("root"))?);
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
    let mut b = AnyBackend::open(&heap_config(root.path(), ChainPolicy::default()))?;
    let s = b.value_state(&values())?;
    let mut model = BTreeMap::new();
    for k in 0..1000 {
        s.put(&mut b, &k, &(), value(k, 0))?;
        model.insert(k, value(k, 0));
    }
    checkpoint(&mut b, &mut coordinator, storage.as_ref(), 1)?;
    // Checkpoint 2 uploads its delta and is aborted: its changes are not confirmed.
    for k in 0..100 {
        s.put(&mut b, &k, &(), value(k, 2))?;
        model.insert(k, value(k, 2));
    }
    coordinator.begin(2)?;
    b.snapshot(2)?.upload(storage.as_ref())?;
    coordinator.abort(2)?;
    for k in 500..520 {
        s.clear(&mut b, &k, &())?;
        model.remove(&k);
    }
    let (part, _, meta) = checkpoint(&mut b, &mut coordinator, storage.as_ref(), 3)?;
    assert_eq!(
        roles(&part),
        [ChainFile::Base, ChainFile::Delta, ChainFile::Tombs]
    );
    let mut restored = restore_instance(
        storage.as_ref(),
        &meta,
        &heap_config(&root.path().join("restored"), ChainPolicy::default()),
        RestoreMode::NoClaim,
    )?;
    let read: BTreeMap<u64, Vec<u8>> = read_all(&mut restored)?
        .into_iter()
        .filter(|(k, _)| *k < 1000)
        .collect();
    assert_eq!(read, model);
    Ok(())
}

#[test]
fn expired_rows_leave_the_chain_as_tombstones() -> Result<()> {
    let root = scratch();
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::new(root.path().join("root"))?);
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
    let ttl = StateTtlConfig::new(Duration::from_millis(1000));
    let config = heap_config(root.path(), ChainPolicy::default());
    let mut b = AnyBackend::open(&config)?;
    b.ttl_clock().set_processing_time(10_000);
    let s = b.value_state_with_ttl(&values(), ttl)?;
    for k in 0..200 {
        // Keys below 100 written at 10,000, the others at 10,800.
        b.ttl_clock()
            .set_processing_time(if k < 100 { 10_000 } else { 10_800 });
        s.put(&mut b, &k, &(), value(k, 0))?;
    }
    checkpoint(&mut b, &mut coordinator, storage.as_ref(), 1)?;
    // At 11,500 the first hundred have expired: the next delta removes them.
    b.ttl_clock().set_processing_time(11_500);
    let (part, _, meta) = checkpoint(&mut b, &mut coordinator, storage.as_ref(), 2)?;
    assert_eq!(
        roles(&part),
        [ChainFile::Base, ChainFile::Delta, ChainFile::Tombs]
    );
    // Restored with a clock before they expired: had the chain kept them, they would be live.
    let mut restored = restore_instance(
        storage.as_ref(),
        &meta,
        &heap_config(&root.path().join("restored"), ChainPolicy::default()),
        RestoreMode::NoClaim,
    )?;
    restored.ttl_clock().set_processing_time(10_000);
    let s = restored.value_state_with_ttl(&values(), ttl)?;
    for k in 0..200 {
        assert_eq!(s.peek(&restored, &k, &())?.is_some(), k >= 100, "key {k}");
    }
    Ok(())
}

#[test]
fn a_chain_restores_at_other_parallelisms_into_every_backend() -> Result<()> {
    let root = scratch();
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::new(root.path().join("root"))?);
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
    let policy = ChainPolicy::default();
    let halves: Vec<KeyGroupRange> = (0..2)
        .map(|i| KeyGroupRange::for_operator(128, 2, i))
        .collect::<Result<_>>()?;
    let mut backends = halves
        .iter()
        .map(|&r| {
            let mut c = config_in(BackendKind::Heap, r, root.path());
            c.heap_chains = Some(policy);
            AnyBackend::open(&c)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut model = BTreeMap::new();
    let mut meta = None;
    for round in 0..4u64 {
        for b in &mut backends {
            let s = b.value_state(&values())?;
            for k in (round * 37..KEYS).step_by(9) {
                if let Ok(key) = b.key_context(k) {
                    if round == 3 && k % 2 == 0 {
                        s.clear(b, &key, &())?;
                        model.remove(&k);
                    } else {
                        s.put(b, &key, &(), value(k, round))?;
                        model.insert(k, value(k, round));
                    }
                }
            }
        }
        let id = round + 1;
        coordinator.begin(id)?;
        let parts = backends
            .iter_mut()
            .map(|b| Ok(b.snapshot(id)?.upload(storage.as_ref())?.0))
            .collect::<Result<Vec<_>>>()?;
        let completed = coordinator.complete(id, parts.clone())?.clone();
        for (b, part) in backends.iter_mut().zip(&parts) {
            b.notify_checkpoint_complete(part)?;
        }
        meta = Some(completed);
    }
    let meta = meta.expect("checkpoints");
    assert!(meta.instances.iter().all(|i| i.files.len() > 1), "chains");
    for kind in kinds() {
        for parallelism in [1, 3] {
            let mut read = BTreeMap::new();
            for i in 0..parallelism {
                let range = KeyGroupRange::for_operator(128, parallelism, i)?;
                let config = config_in(
                    kind,
                    range,
                    &root.path().join(format!("{kind}-{parallelism}-{i}")),
                );
                let mut restored =
                    restore_instance(storage.as_ref(), &meta, &config, RestoreMode::NoClaim)?;
                read.extend(read_all(&mut restored)?);
            }
            assert_eq!(read, model, "{kind} at parallelism {parallelism}");
        }
    }
    Ok(())
}
