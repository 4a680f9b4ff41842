//! The RocksDB backend with a write-back cache so small that it evicts on almost every
//! operation: random operations with checkpoints (and savepoints) at random points, each
//! restored and compared with the model of the state at its synchronous part, although
//! operations kept running during every upload.
#![cfg(feature = "rocksdb")]
use crate::common;

use std::sync::Arc;

use common::SplitMix64;
use common::checkpointing::{assert_matches_model, checkpoint, config, run_ops};
use common::model::{Handles, Model, OpGenerator};
use statebackend::checkpoint::{CheckpointCoordinator, RestoreMode, restore_instance};
use statebackend::savepoint::{complete_savepoint, read_savepoint, restore_savepoint};
use statebackend::storage::{CheckpointStorage, LocalDirStorage};
use statebackend::{AnyBackend, BackendConfig, BackendKind, KeyGroupRange, Result};

/// Small enough that a few hundred rows of the model's states do not fit.
const CACHE_BYTES: usize = 8 << 10;

/// A small cache whose changed rows are written back beyond `dirty_bytes`.
fn cached_config(range: KeyGroupRange, dirty_bytes: usize) -> BackendConfig {
    let mut c = config(BackendKind::RocksDb, range);
    c.rocksdb.write_cache_bytes = CACHE_BYTES;
    c.rocksdb.write_cache_dirty_bytes = dirty_bytes;
    c
}

fn cache_of(b: &AnyBackend) -> statebackend::rocks::WriteCacheStats {
    match b {
        AnyBackend::RocksDb(r) => r.write_cache_stats().expect("the cache is on"),
        _ => unreachable!("a RocksDB backend"),
    }
}

#[test]
fn checkpoints_taken_through_an_evicting_cache_restore_to_the_model() -> Result<()> {
    // Without a dirty limit below the cache's size, and with two that write back constantly.
    for (seed, dirty_bytes) in [(1u64, CACHE_BYTES), (2, 512), (3, 2048)] {
        let tmp = tempfile::tempdir().unwrap();
        let storage: Arc<dyn CheckpointStorage> = crate::root::open(tmp.path())?;
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 100)?;
        let range = KeyGroupRange::all(128)?;
        let mut b = AnyBackend::open(&cached_config(range, dirty_bytes))?;
        let h = Handles::register(&mut b)?;
        let mut model = Model::default();
        let mut rng = SplitMix64::new(seed);
        let mut g = OpGenerator::new(seed * 100, 60, |_| true);
        let mut taken = Vec::new();
        let mut dirty_at_checkpoints = 0;
        for id in 1..=8u64 {
            run_ops(&mut b, &h, &mut model, &mut g, 1 + rng.below(600) as usize)?;
            // Rows only the cache holds when the synchronous part starts.
            dirty_at_checkpoints += cache_of(&b).dirty_rows;
            let at_checkpoint = model.clone();
            let mut during = OpGenerator::new(seed * 100 + id, 60, |_| true);
            let during_ops = rng.below(300) as usize;
            let (meta, _) = checkpoint(&mut b, &mut coordinator, id, |b| {
                run_ops(b, &h, &mut model, &mut during, during_ops)
            })?;
            taken.push((meta, at_checkpoint));
        }
        let stats = cache_of(&b);
        assert!(stats.evicted_rows > 1_000, "the cache evicted: {stats:?}");
        assert!(stats.written_rows > 0 && stats.hits > 0, "{stats:?}");
        assert!(stats.charged_bytes <= CACHE_BYTES, "{stats:?}");
        assert!(dirty_at_checkpoints > 0);

        // A savepoint of the live state, through the same cache.
        let savepoint_dir = tempfile::tempdir().unwrap();
        let savepoint = LocalDirStorage::new(savepoint_dir.path())?;
        let at_savepoint = model.clone();
        let pending = b.savepoint()?;
        run_ops(&mut b, &h, &mut model, &mut g, 200)?;
        let part = pending.write(&savepoint)?;
        complete_savepoint(&savepoint, vec![part])?;
        drop(b);

        for (meta, expected) in &taken {
            // Restored with and without the cache: both read what the checkpoint holds.
            let mut uncached = config(BackendKind::RocksDb, range);
            uncached.rocksdb.write_cache_bytes = 0;
            for restored_config in [cached_config(range, dirty_bytes), uncached] {
                let mut restored = restore_instance(
                    storage.as_ref(),
                    meta,
                    &restored_config,
                    RestoreMode::NoClaim,
                )?;
                let h = Handles::register(&mut restored)?;
                assert_matches_model(&mut restored, &h, expected)?;
            }
        }
        let read = read_savepoint(&savepoint)?;
        assert_eq!(read.instances.len(), 1);
        let mut restored =
            restore_savepoint(&savepoint, &read, &cached_config(range, dirty_bytes))?;
        let h = Handles::register(&mut restored)?;
        assert_matches_model(&mut restored, &h, &at_savepoint)?;
    }
    Ok(())
}

/// A list read once (so cached whole), then grown by many small appends with a small bound on
/// changed rows: what reaches RocksDB is what was appended (merged after the stored list), not
/// the whole list at every write-back, read from the cache's own counters. The list reads back
/// whole, and a checkpoint of it restores whole.
#[test]
fn appends_to_a_cached_list_write_their_own_bytes_not_the_list_again() -> Result<()> {
    use statebackend::{KeyedStateBackend, ListStateDescriptor};
    let tmp = tempfile::tempdir().unwrap();
    let range = KeyGroupRange::all(128)?;
    let mut config = config(BackendKind::RocksDb, range);
    config.rocksdb.write_cache_dirty_bytes = 16 << 10;
    let mut b = AnyBackend::open(&config)?;
    let list = b.list_state(&ListStateDescriptor::<String, (), String>::new("events"))?;
    let key = b.key_context("user-1".to_string())?;
    let element = "x".repeat(40);
    for _ in 0..2_000 {
        list.append(&mut b, &key, &(), element.clone())?;
    }
    assert_eq!(
        list.get(&b, &key, &())?.len(),
        2_000,
        "read once: cached whole"
    );
    let before = cache_of(&b).written_bytes;
    let appends = 30_000u64;
    for _ in 0..appends {
        list.append(&mut b, &key, &(), element.clone())?;
    }
    match &mut b {
        AnyBackend::RocksDb(r) => r.flush()?,
        _ => unreachable!("a RocksDB backend"),
    }
    let written = cache_of(&b).written_bytes - before;
    // Each element is 40 bytes and a length prefix.
    let appended = appends * 41;
    assert!(
        written <= 2 * appended,
        "{written} bytes reached RocksDB for {appended} appended"
    );
    let all = list.get(&b, &key, &())?;
    assert_eq!(all.len(), 32_000);
    assert!(all.iter().all(|e| *e == element));

    let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(tmp.path())?);
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
    let (meta, _) = checkpoint(&mut b, &mut coordinator, 1, |_| Ok(()))?;
    let mut restored = restore_instance(storage.as_ref(), &meta, &config, RestoreMode::NoClaim)?;
    let list = restored.list_state(&ListStateDescriptor::<String, (), String>::new("events"))?;
    assert_eq!(
        list.get(&restored, &"user-1".to_string(), &())?.len(),
        32_000
    );
    Ok(())
}

/// Iterating a map reads RocksDB with the cache's changes of that map applied: it writes
/// nothing back (the cache's own counters), and every map reads back whole, with changed,
/// added and removed entries. Clearing one map writes back that map's changed rows only.
#[test]
fn iterating_a_map_applies_its_changes_without_writing_them_back() -> Result<()> {
    use statebackend::{KeyedStateBackend, MapStateDescriptor};
    let range = KeyGroupRange::all(128)?;
    let mut b = AnyBackend::open(&config(BackendKind::RocksDb, range))?;
    let pages = b.map_state(&MapStateDescriptor::<u64, u64, u32, u64>::new("pages"))?;
    let (users, windows, entries) = (50u64, 4u64, 10u32);
    for user in 0..users {
        let key = b.key_context(user)?;
        for window in 0..windows {
            for page in 0..entries {
                pages.put(&mut b, &key, &window, page, user * window)?;
            }
        }
    }
    // RocksDB holds half of the maps; then some entries change, some go, some are new.
    match &mut b {
        AnyBackend::RocksDb(r) => r.flush()?,
        _ => unreachable!("a RocksDB backend"),
    }
    for user in 0..users {
        let key = b.key_context(user)?;
        pages.put(&mut b, &key, &1, 3, 1_000 + user)?;
        pages.remove(&mut b, &key, &1, &5)?;
        pages.put(&mut b, &key, &1, 99, 7)?;
    }
    let dirty = cache_of(&b).dirty_rows;
    assert_eq!(dirty as u64, users * 3);
    let before = cache_of(&b).written_rows;
    for user in 0..users {
        let key = b.key_context(user)?;
        let read: Vec<(u32, u64)> = pages.entries(&b, &key, &1)?.collect::<Result<Vec<_>>>()?;
        let mut expected: Vec<(u32, u64)> = (0..entries)
            .filter(|p| *p != 5)
            .map(|p| (p, if p == 3 { 1_000 + user } else { user }))
            .collect();
        expected.push((99, 7));
        assert_eq!(read, expected, "map {user}/1");
        assert_eq!(pages.entries(&b, &key, &2)?.count(), entries as usize);
    }
    assert_eq!(
        cache_of(&b).written_rows,
        before,
        "an iteration wrote rows back"
    );
    assert_eq!(cache_of(&b).dirty_rows, dirty);
    // Clearing one map writes back (then deletes) that map's changed rows only.
    let key = b.key_context(7)?;
    pages.clear(&mut b, &key, &1)?;
    assert_eq!(cache_of(&b).written_rows - before, 3);
    assert_eq!(pages.entries(&b, &key, &1)?.count(), 0);
    assert_eq!(pages.entries(&b, &key, &3)?.count(), entries as usize);
    Ok(())
}

/// A checkpoint taken with many changed rows in the cache (puts, deletes, appends to lists
/// never read and to a list read whole) writes them as SST files rather than through the
/// memtable: the live backend and the restored checkpoint both read exactly what was written.
#[test]
fn a_checkpoint_of_many_changed_rows_holds_each_of_them() -> Result<()> {
    use statebackend::{KeyedStateBackend, ListStateDescriptor, ValueState, ValueStateDescriptor};
    let tmp = tempfile::tempdir().unwrap();
    let range = KeyGroupRange::all(128)?;
    let config = config(BackendKind::RocksDb, range);
    let mut b = AnyBackend::open(&config)?;
    let values = b.value_state(&ValueStateDescriptor::<u64, (), Vec<u8>>::new("values"))?;
    let lists = b.list_state(&ListStateDescriptor::<u64, (), u64>::new("lists"))?;
    // What RocksDB holds before: values and lists written back through the memtable.
    for k in 0..5_000u64 {
        let key = b.key_context(k)?;
        values.put(&mut b, &key, &(), vec![1; 10])?;
        if k < 2_000 {
            lists.append(&mut b, &key, &(), k)?;
        }
    }
    match &mut b {
        AnyBackend::RocksDb(r) => r.flush()?,
        _ => unreachable!("a RocksDB backend"),
    }
    // Changed since: every value replaced (100 bytes), a tenth cleared, every list appended
    // to without a read, and one list read whole, then appended to.
    let read_first = b.key_context(7u64)?;
    assert_eq!(lists.get(&b, &read_first, &())?, vec![7]);
    for k in 0..5_000u64 {
        let key = b.key_context(k)?;
        if k % 10 == 0 {
            values.clear(&mut b, &key, &())?;
        } else {
            values.put(&mut b, &key, &(), vec![(k % 251) as u8; 100])?;
        }
        if k < 2_000 {
            lists.append(&mut b, &key, &(), k + 1)?;
        }
    }
    let dirty = cache_of(&b).dirty_bytes;
    assert!(
        dirty >= 256 << 10,
        "{dirty} bytes changed: below the ingestion threshold"
    );
    let check = |b: &AnyBackend,
                 values: &ValueState<u64, (), Vec<u8>>,
                 lists: &statebackend::ListState<u64, (), u64>|
     -> Result<()> {
        for k in 0..5_000u64 {
            let expected = (k % 10 != 0).then(|| vec![(k % 251) as u8; 100]);
            assert_eq!(values.get(b, &k, &())?, expected, "value {k}");
            let list = lists.get(b, &k, &())?;
            let expected: Vec<u64> = if k < 2_000 { vec![k, k + 1] } else { vec![] };
            assert_eq!(list, expected, "list {k}");
        }
        Ok(())
    };
    let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(tmp.path())?);
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
    let (meta, _) = checkpoint(&mut b, &mut coordinator, 1, |_| Ok(()))?;
    assert_eq!(cache_of(&b).dirty_rows, 0);
    check(&b, &values, &lists)?;
    let mut restored = restore_instance(storage.as_ref(), &meta, &config, RestoreMode::NoClaim)?;
    let values = restored.value_state(&ValueStateDescriptor::new("values"))?;
    let lists = restored.list_state(&ListStateDescriptor::new("lists"))?;
    check(&restored, &values, &lists)
}
