//! State time to live on every backend: each state kind expires, both time domains, both
//! visibilities and update types; expired rows leave checkpoints, savepoints, the heap's memory
//! and RocksDB's disk; restores keep each row's remaining lifetime, across backends and
//! parallelisms, and may change the TTL; and a model test advances time at random between
//! operations and savepoint restores.
use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::SplitMix64;
use common::checkpointing::{config_in, kinds, scratch};
use statebackend::checkpoint::{CheckpointCoordinator, RestoreMode, restore_instance};
use statebackend::savepoint::{complete_savepoint, read_savepoint, restore_savepoint};
use statebackend::state::AggregateFunction;
use statebackend::state::ttl::{StateTtlConfig, TtlTime, TtlUpdate, TtlVisibility};
use statebackend::storage::{CheckpointStorage, LocalDirStorage};
use statebackend::{
    AggregatingStateDescriptor, AnyBackend, BackendKind, Error, KeyGroupRange, KeyedStateBackend,
    ListStateDescriptor, MapStateDescriptor, ReducingStateDescriptor, Result, ValueStateDescriptor,
};

const MAX_PARALLELISM: u32 = 128;

fn ttl_ms(ms: u64) -> StateTtlConfig {
    StateTtlConfig::new(Duration::from_millis(ms))
}

fn all() -> KeyGroupRange {
    KeyGroupRange::all(MAX_PARALLELISM).unwrap()
}

/// A fresh backend of every kind this build has, with processing time set to `now`.
fn each_backend(dir: &Path, now: u64) -> Vec<AnyBackend> {
    kinds()
        .into_iter()
        .map(|kind| {
            let b = AnyBackend::open(&config_in(kind, all(), dir)).unwrap();
            b.ttl_clock().set_processing_time(now);
            b
        })
        .collect()
}

struct Sum;
impl AggregateFunction<u64, u64, u64> for Sum {
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, value: &u64, acc: u64) -> u64 {
        acc + value
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
}

#[test]
fn every_state_kind_expires_on_every_backend() -> Result<()> {
    let dir = scratch();
    for mut b in each_backend(dir.path(), 1_000) {
        let kind = b.backend_kind();
        let ttl = ttl_ms(100);
        let value = b.value_state_with_ttl(&ValueStateDescriptor::<u64, (), u64>::new("v"), ttl)?;
        let list = b.list_state_with_ttl(&ListStateDescriptor::<u64, (), u64>::new("l"), ttl)?;
        let map = b.map_state_with_ttl(&MapStateDescriptor::<u64, (), u64, u64>::new("m"), ttl)?;
        let reducing = b.reducing_state_with_ttl(
            &ReducingStateDescriptor::<u64, (), u64>::new("r", |a, b| a + b),
            ttl,
        )?;
        let aggregating = b.aggregating_state_with_ttl(
            &AggregatingStateDescriptor::<u64, (), u64, u64, u64>::new("a", Sum),
            ttl,
        )?;
        value.put(&mut b, &1, &(), 10)?;
        list.append(&mut b, &1, &(), 1)?;
        map.put(&mut b, &1, &(), 7, 70)?;
        reducing.add(&mut b, &1, &(), 5)?;
        aggregating.add(&mut b, &1, &(), &5)?;
        b.ttl_clock().set_processing_time(1_050);
        list.append(&mut b, &1, &(), 2)?;
        map.put(&mut b, &1, &(), 8, 80)?;
        reducing.add(&mut b, &1, &(), 6)?; // refreshes the whole value: 11, written at 1,050
        aggregating.add(&mut b, &1, &(), &6)?;
        b.ttl_clock().set_processing_time(1_099);
        assert_eq!(value.get(&mut b, &1, &())?, Some(10), "{kind}");
        assert_eq!(list.get(&mut b, &1, &())?, vec![1, 2], "{kind}");
        // At 1,100 what was written at 1,000 has expired; what was written at 1,050 lives.
        b.ttl_clock().set_processing_time(1_100);
        assert_eq!(value.get(&mut b, &1, &())?, None, "{kind}");
        assert_eq!(value.peek(&b, &1, &())?, None, "{kind}");
        assert_eq!(list.get(&mut b, &1, &())?, vec![2], "{kind}");
        assert_eq!(map.get(&mut b, &1, &(), &7)?, None, "{kind}");
        assert_eq!(map.entries(&mut b, &1, &())?, vec![(8, 80)], "{kind}");
        assert_eq!(reducing.get(&mut b, &1, &())?, Some(11), "{kind}");
        assert_eq!(aggregating.get(&mut b, &1, &())?, Some(11), "{kind}");
        b.ttl_clock().set_processing_time(1_150);
        assert!(list.get(&mut b, &1, &())?.is_empty(), "{kind}");
        assert!(map.is_empty(&mut b, &1, &())?, "{kind}");
        // An add to an expired value starts again from the added value.
        reducing.add(&mut b, &1, &(), 1)?;
        assert_eq!(reducing.get(&mut b, &1, &())?, Some(1), "{kind}");
        aggregating.add(&mut b, &1, &(), &2)?;
        assert_eq!(aggregating.get(&mut b, &1, &())?, Some(2), "{kind}");
        // What a read found expired is gone from the raw state too.
        assert_eq!(b.keys::<u64, ()>(value.id(), None)?.count(), 0, "{kind}");
        assert_eq!(b.keys::<u64, ()>(list.id(), None)?.count(), 0, "{kind}");
    }
    Ok(())
}

#[test]
fn reads_refresh_with_on_read_and_write() -> Result<()> {
    let dir = scratch();
    for mut b in each_backend(dir.path(), 0) {
        let kind = b.backend_kind();
        let ttl = ttl_ms(100).with_update(TtlUpdate::OnReadAndWrite);
        let value = b.value_state_with_ttl(&ValueStateDescriptor::<u64, (), u64>::new("v"), ttl)?;
        let list = b.list_state_with_ttl(&ListStateDescriptor::<u64, (), u64>::new("l"), ttl)?;
        let map = b.map_state_with_ttl(&MapStateDescriptor::<u64, (), u64, u64>::new("m"), ttl)?;
        value.put(&mut b, &1, &(), 1)?;
        list.append(&mut b, &1, &(), 1)?;
        map.put(&mut b, &1, &(), 1, 1)?;
        // Read every 90 ms: each read restarts the lifetime, so nothing expires.
        for step in 1..=5 {
            b.ttl_clock().set_processing_time(step * 90);
            assert_eq!(value.get(&mut b, &1, &())?, Some(1), "{kind}, step {step}");
            assert_eq!(list.get(&mut b, &1, &())?, vec![1], "{kind}, step {step}");
            assert_eq!(map.entries(&mut b, &1, &())?, vec![(1, 1)], "{kind}");
        }
        // `peek` reads without refreshing: 100 ms after the last read all is gone.
        b.ttl_clock().set_processing_time(5 * 90 + 99);
        assert_eq!(value.peek(&b, &1, &())?, Some(1), "{kind}");
        b.ttl_clock().set_processing_time(5 * 90 + 100);
        assert_eq!(value.peek(&b, &1, &())?, None, "{kind}");
        assert_eq!(value.get(&mut b, &1, &())?, None, "{kind}");
        assert!(list.get(&mut b, &1, &())?.is_empty(), "{kind}");
        assert_eq!(map.get(&mut b, &1, &(), &1)?, None, "{kind}");
    }
    Ok(())
}

#[test]
fn expired_values_are_returned_once_if_visibility_allows() -> Result<()> {
    let dir = scratch();
    for mut b in each_backend(dir.path(), 0) {
        let kind = b.backend_kind();
        let ttl = ttl_ms(10).with_visibility(TtlVisibility::ReturnExpiredIfNotCleanedUp);
        let value = b.value_state_with_ttl(&ValueStateDescriptor::<u64, (), u64>::new("v"), ttl)?;
        let list = b.list_state_with_ttl(&ListStateDescriptor::<u64, (), u64>::new("l"), ttl)?;
        value.put(&mut b, &1, &(), 3)?;
        list.append(&mut b, &1, &(), 4)?;
        b.ttl_clock().set_processing_time(50);
        assert_eq!(value.peek(&b, &1, &())?, Some(3), "{kind}");
        assert_eq!(value.get(&mut b, &1, &())?, Some(3), "{kind}");
        assert_eq!(value.get(&mut b, &1, &())?, None, "{kind}");
        assert_eq!(list.get(&mut b, &1, &())?, vec![4], "{kind}");
        assert!(list.get(&mut b, &1, &())?.is_empty(), "{kind}");
    }
    Ok(())
}

#[test]
fn event_time_follows_the_watermark() -> Result<()> {
    let dir = scratch();
    for mut b in each_backend(dir.path(), 5_000) {
        let kind = b.backend_kind();
        let ttl = ttl_ms(60).with_time(TtlTime::EventTime);
        let value = b.value_state_with_ttl(&ValueStateDescriptor::<u64, (), u64>::new("v"), ttl)?;
        b.ttl_clock().advance_watermark(100);
        value.put(&mut b, &1, &(), 1)?; // stamped with the watermark, 100
        // Processing time moving on changes nothing; the watermark does.
        b.ttl_clock().set_processing_time(1 << 40);
        b.ttl_clock().advance_watermark(159);
        assert_eq!(value.get(&mut b, &1, &())?, Some(1), "{kind}");
        b.ttl_clock().advance_watermark(160);
        assert_eq!(value.get(&mut b, &1, &())?, None, "{kind}");
    }
    Ok(())
}

#[test]
fn a_registered_state_keeps_its_ttl() -> Result<()> {
    let dir = scratch();
    for mut b in each_backend(dir.path(), 0) {
        let kind = b.backend_kind();
        let descriptor = ValueStateDescriptor::<u64, (), u64>::new("v");
        b.value_state_with_ttl(&descriptor, ttl_ms(10))?;
        // Another TTL, or none, under handles already issued: refused, loudly.
        let other = b.value_state_with_ttl(&descriptor, ttl_ms(20)).err();
        assert!(matches!(other, Some(Error::StateMismatch { .. })), "{kind}");
        let none = b.value_state(&descriptor).err();
        assert!(matches!(none, Some(Error::StateMismatch { .. })), "{kind}");
        // The same TTL again is the same state.
        b.value_state_with_ttl(&descriptor, ttl_ms(10))?;
    }
    Ok(())
}

/// A savepoint of `backends` (parts of one job) in `dir`, restored into `kind` at
/// `parallelism`, each instance's processing time set to `now`.
fn savepoint_and_restore(
    backends: &mut [AnyBackend],
    dir: &Path,
    kind: BackendKind,
    parallelism: u32,
    now: u64,
) -> Result<Vec<AnyBackend>> {
    let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(dir)?);
    let written = backends
        .iter_mut()
        .map(|b| b.savepoint()?.write(storage.as_ref()))
        .collect::<Result<Vec<_>>>()?;
    complete_savepoint(storage.as_ref(), written)?;
    let meta = read_savepoint(storage.as_ref())?;
    (0..parallelism)
        .map(|i| {
            let range = KeyGroupRange::for_operator(MAX_PARALLELISM, parallelism, i)?;
            let b = restore_savepoint(storage.as_ref(), &meta, &config_in(kind, range, dir))?;
            b.ttl_clock().set_processing_time(now);
            Ok(b)
        })
        .collect()
}

/// A checkpoint of `backends` (parts of one job) in a fresh root in `dir`, restored into the
/// same backend kind at `parallelism` (RocksDB: its own incremental files, state records
/// included), each instance's processing time set to `now`.
fn checkpoint_and_restore(
    backends: &mut [AnyBackend],
    dir: &Path,
    parallelism: u32,
    now: u64,
) -> Result<Vec<AnyBackend>> {
    let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(dir)?);
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
    coordinator.begin(1)?;
    let parts = backends
        .iter_mut()
        .map(|b| Ok(b.snapshot(1)?.upload(storage.as_ref())?.0))
        .collect::<Result<Vec<_>>>()?;
    let meta = coordinator.complete(1, parts)?.clone();
    let kind = backends[0].backend_kind();
    (0..parallelism)
        .map(|i| {
            let range = KeyGroupRange::for_operator(MAX_PARALLELISM, parallelism, i)?;
            let config = config_in(kind, range, dir);
            let b = restore_instance(storage.as_ref(), &meta, &config, RestoreMode::NoClaim)?;
            b.ttl_clock().set_processing_time(now);
            Ok(b)
        })
        .collect()
}

/// The instance of `backends` (a job at `backends.len()` instances) owning `key`.
fn owner(backends: &[AnyBackend], key: u64) -> usize {
    let group = backends[0].key_group_of(&key).unwrap();
    KeyGroupRange::operator_for_key_group(MAX_PARALLELISM, backends.len() as u32, group).unwrap()
        as usize
}

#[test]
fn restores_keep_each_rows_remaining_lifetime() -> Result<()> {
    let root = scratch();
    let descriptor = ValueStateDescriptor::<u64, (), u64>::new("v");
    let list_descriptor = ListStateDescriptor::<u64, (), u64>::new("l");
    for from in kinds() {
        for to in kinds() {
            let dir = root.path().join(format!("{from}-{to}"));
            let mut source = vec![AnyBackend::open(&config_in(from, all(), &dir))?];
            let b = &mut source[0];
            b.ttl_clock().set_processing_time(1_000);
            let value = b.value_state_with_ttl(&descriptor, ttl_ms(100))?;
            let list = b.list_state_with_ttl(&list_descriptor, ttl_ms(100))?;
            for key in 0..40 {
                value.put(b, &key, &(), key)?;
                list.append(b, &key, &(), key)?;
            }
            b.ttl_clock().set_processing_time(1_060);
            for key in 20..40 {
                value.put(b, &key, &(), key + 1)?;
                list.append(b, &key, &(), key + 1)?;
            }
            // Restored at 1,070 into `to` at parallelism 3: the rows keep their timestamps.
            let sp = dir.join("sp");
            let mut restored = savepoint_and_restore(&mut source, &sp, to, 3, 1_070)?;
            let handles = restored
                .iter_mut()
                .map(|b| {
                    Ok((
                        b.value_state_with_ttl(&descriptor, ttl_ms(100))?,
                        b.list_state_with_ttl(&list_descriptor, ttl_ms(100))?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            for b in &restored {
                b.ttl_clock().set_processing_time(1_100);
            }
            for key in 0..40 {
                let i = owner(&restored, key);
                let (value, list) = &handles[i];
                let b = &mut restored[i];
                let (expected_value, expected_list) = if key < 20 {
                    (None, vec![])
                } else {
                    (Some(key + 1), vec![key + 1])
                };
                assert_eq!(
                    value.get(b, &key, &())?,
                    expected_value,
                    "{from}->{to} {key}"
                );
                assert_eq!(list.get(b, &key, &())?, expected_list, "{from}->{to} {key}");
            }
            for b in &restored {
                b.ttl_clock().set_processing_time(1_160);
            }
            for key in 20..40 {
                let i = owner(&restored, key);
                let (value, _) = &handles[i];
                assert_eq!(
                    value.get(&mut restored[i], &key, &())?,
                    None,
                    "{from}->{to}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn snapshots_leave_expired_rows_out() -> Result<()> {
    let root = scratch();
    for kind in kinds() {
        let dir = root.path().join(kind.to_string());
        let mut source = vec![AnyBackend::open(&config_in(kind, all(), &dir))?];
        let b = &mut source[0];
        b.ttl_clock().set_processing_time(0);
        let descriptor = ValueStateDescriptor::<u64, (), u64>::new("v");
        let list_descriptor = ListStateDescriptor::<u64, (), u64>::new("l");
        let value = b.value_state_with_ttl(&descriptor, ttl_ms(100))?;
        let list = b.list_state_with_ttl(&list_descriptor, ttl_ms(100))?;
        for key in 0..50 {
            value.put(b, &key, &(), key)?;
            list.append(b, &key, &(), key)?;
        }
        b.ttl_clock().set_processing_time(80);
        for key in 0..10 {
            value.put(b, &key, &(), key)?;
            list.append(b, &key, &(), 1_000 + key)?;
        }
        // At 150 only what was written at 80 lives; nothing has read the rest.
        b.ttl_clock().set_processing_time(150);
        let mut restored = savepoint_and_restore(&mut source, &dir.join("sp"), kind, 1, 0)?;
        let b = &mut restored[0];
        // A restore at time 0 would show an expired row again; none is in the savepoint.
        let value = b.value_state_with_ttl(&descriptor, ttl_ms(100))?;
        let list = b.list_state_with_ttl(&list_descriptor, ttl_ms(100))?;
        assert_eq!(b.keys::<u64, ()>(value.id(), None)?.count(), 10, "{kind}");
        for key in 0..10 {
            assert_eq!(list.get(b, &key, &())?, vec![1_000 + key], "{kind}");
        }
    }
    Ok(())
}

#[test]
fn a_restore_may_enable_change_or_disable_the_ttl() -> Result<()> {
    let root = scratch();
    let descriptor = ValueStateDescriptor::<u64, (), u64>::new("v");
    let list_descriptor = ListStateDescriptor::<u64, (), String>::new("l");
    // Through savepoints (rows restored as canonical rows) and checkpoints (RocksDB: its own
    // files, whose rows the registration rewrites in place).
    for through_checkpoints in [false, true] {
        for kind in kinds() {
            let restore = |b: &mut [AnyBackend], dir: &Path, now: u64| {
                if through_checkpoints {
                    checkpoint_and_restore(b, dir, 1, now)
                } else {
                    savepoint_and_restore(b, dir, kind, 1, now)
                }
            };
            let ctx = format!("{kind}, checkpoints: {through_checkpoints}");
            let dir = root.path().join(&ctx);
            // Without TTL at first.
            let mut plain = vec![AnyBackend::open(&config_in(kind, all(), &dir))?];
            let value = plain[0].value_state(&descriptor)?;
            let list = plain[0].list_state(&list_descriptor)?;
            value.put(&mut plain[0], &1, &(), 11)?;
            list.append(&mut plain[0], &1, &(), "a".into())?;
            list.append(&mut plain[0], &1, &(), "b".into())?;
            // Enabled on restore: every row is stamped with the registration time, 5,000.
            let mut enabled = restore(&mut plain, &dir.join("r1"), 5_000)?;
            let value = enabled[0].value_state_with_ttl(&descriptor, ttl_ms(100))?;
            let list = enabled[0].list_state_with_ttl(&list_descriptor, ttl_ms(100))?;
            enabled[0].ttl_clock().set_processing_time(5_099);
            assert_eq!(value.peek(&enabled[0], &1, &())?, Some(11), "{ctx}");
            assert_eq!(list.peek(&enabled[0], &1, &())?, vec!["a", "b"], "{ctx}");
            enabled[0].ttl_clock().set_processing_time(5_100);
            assert_eq!(value.peek(&enabled[0], &1, &())?, None, "{ctx}");
            // A longer TTL on the next restore keeps the timestamps (5,000) and lengthens the
            // lifetime: alive at 5,100, gone at 5,200.
            enabled[0].ttl_clock().set_processing_time(5_050);
            let mut longer = restore(&mut enabled, &dir.join("r2"), 5_100)?;
            let value = longer[0].value_state_with_ttl(&descriptor, ttl_ms(200))?;
            longer[0].list_state_with_ttl(&list_descriptor, ttl_ms(200))?;
            assert_eq!(value.peek(&longer[0], &1, &())?, Some(11), "{ctx}");
            longer[0].ttl_clock().set_processing_time(5_200);
            assert_eq!(value.peek(&longer[0], &1, &())?, None, "{ctx}");
            // Disabled: the rows lose their timestamps and live for ever.
            longer[0].ttl_clock().set_processing_time(5_150);
            let mut disabled = restore(&mut longer, &dir.join("r3"), 0)?;
            let value = disabled[0].value_state(&descriptor)?;
            let list = disabled[0].list_state(&list_descriptor)?;
            assert_eq!(value.get(&disabled[0], &1, &())?, Some(11), "{ctx}");
            assert_eq!(list.get(&disabled[0], &1, &())?, vec!["a", "b"], "{ctx}");
        }
    }
    Ok(())
}

#[test]
fn the_heap_backend_returns_the_memory_of_expired_entries() -> Result<()> {
    let mut b = statebackend::HeapBackend::new(MAX_PARALLELISM, all())?;
    b.ttl_clock().set_processing_time(0);
    let value =
        b.value_state_with_ttl(&ValueStateDescriptor::<u64, (), u64>::new("v"), ttl_ms(10))?;
    for key in 0..10_000 {
        value.put(&mut b, &key, &(), key)?;
    }
    assert_eq!(b.entry_count(), 10_000);
    // Later, other keys: each access pays for one check (the default), so 20,000 accesses
    // visit the whole state and drop the expired entries nobody reads again.
    b.ttl_clock().set_processing_time(100);
    for key in 0..20_000 {
        value.put(&mut b, &(1_000_000 + key % 100), &(), key)?;
    }
    assert_eq!(b.entry_count(), 100);
    // With the cleanup off, nothing but reads and snapshots drops them.
    b.set_ttl_cleanup_entries(0);
    b.ttl_clock().set_processing_time(200);
    for key in 0..1_000 {
        value.put(&mut b, &(2_000_000 + key), &(), key)?;
    }
    assert_eq!(b.entry_count(), 1_100);
    Ok(())
}

#[cfg(feature = "rocksdb")]
#[test]
fn rocksdb_compactions_drop_expired_rows() -> Result<()> {
    let mut b = statebackend::RocksDbBackend::open(
        MAX_PARALLELISM,
        all(),
        None,
        statebackend::RocksDbOptions::default(),
    )?;
    b.ttl_clock().set_processing_time(0);
    let ttl = ttl_ms(10);
    let value = b.value_state_with_ttl(&ValueStateDescriptor::<u64, (), u64>::new("v"), ttl)?;
    let list = b.list_state_with_ttl(&ListStateDescriptor::<u64, (), u64>::new("l"), ttl)?;
    let map = b.map_state_with_ttl(&MapStateDescriptor::<u64, (), u64, u64>::new("m"), ttl)?;
    for key in 0..2_000 {
        value.put(&mut b, &key, &(), key)?;
        list.append(&mut b, &key, &(), key)?;
        map.put(&mut b, &key, &(), key, key)?;
    }
    b.ttl_clock().set_processing_time(5);
    for key in 0..100 {
        value.put(&mut b, &key, &(), key)?;
        list.append(&mut b, &key, &(), key)?;
        map.put(&mut b, &key, &(), key + 1, key)?;
    }
    b.compact()?;
    // Nothing expired yet at 5: every row stays.
    assert_eq!(b.keys::<u64, ()>(value.id(), None)?.count(), 2_000);
    b.ttl_clock().set_processing_time(12);
    b.compact()?;
    // At 12 what was written at 0 has expired: only the rows (list elements, map entries)
    // written at 5 remain, counted without any TTL handle reading them.
    assert_eq!(b.keys::<u64, ()>(value.id(), None)?.count(), 100);
    assert_eq!(b.keys::<u64, ()>(list.id(), None)?.count(), 100);
    let raw_map = b.map_state(&MapStateDescriptor::<u64, (), u64, u64>::new("m"));
    assert!(
        raw_map.is_err(),
        "the TTL state cannot be read as a plain one"
    );
    let mut entries = 0;
    for key in 0..2_000 {
        entries += map.peek_entries(&b, &key, &())?.len();
    }
    assert_eq!(entries, 100);
    Ok(())
}

/// A job whose states have a time to live, driven by random operations while time advances
/// at random, and restored from savepoints into random backends and parallelisms, checked
/// against a model of the rules after every read.
#[test]
fn model_with_random_time_and_restores() -> Result<()> {
    for seed in [0x77_01, 0x77_02, 0x77_03, 0x77_04] {
        run_model(seed, 1_500)?;
    }
    Ok(())
}

const TTL_MS: u64 = 100;

#[derive(Default, Clone)]
struct TtlModel {
    now: u64,
    values: BTreeMap<u64, (u64, u64)>,
    lists: BTreeMap<u64, Vec<(u64, u64)>>,
    maps: BTreeMap<u64, BTreeMap<u64, (u64, u64)>>,
}

impl TtlModel {
    fn live(&self, stamp: u64) -> bool {
        stamp + TTL_MS > self.now
    }
}

struct Job {
    backends: Vec<AnyBackend>,
    handles: Vec<JobHandles>,
}

struct JobHandles {
    value: statebackend::state::ttl::TtlValueState<u64, (), u64>,
    list: statebackend::state::ttl::TtlListState<u64, (), u64>,
    map: statebackend::state::ttl::TtlMapState<u64, (), u64, u64>,
}

impl Job {
    fn new(mut backends: Vec<AnyBackend>) -> Result<Self> {
        let value_ttl = ttl_ms(TTL_MS);
        let list_ttl = ttl_ms(TTL_MS).with_update(TtlUpdate::OnReadAndWrite);
        let handles = backends
            .iter_mut()
            .map(|b| {
                Ok(JobHandles {
                    value: b
                        .value_state_with_ttl(&ValueStateDescriptor::new("value"), value_ttl)?,
                    list: b.list_state_with_ttl(&ListStateDescriptor::new("list"), list_ttl)?,
                    map: b.map_state_with_ttl(&MapStateDescriptor::new("map"), value_ttl)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { backends, handles })
    }

    fn set_time(&self, now: u64) {
        for b in &self.backends {
            b.ttl_clock().set_processing_time(now);
        }
    }
}

fn run_model(seed: u64, steps: usize) -> Result<()> {
    let root = scratch();
    let mut rng = SplitMix64::new(seed);
    let mut model = TtlModel {
        now: 10_000,
        ..Default::default()
    };
    let mut job = Job::new(vec![AnyBackend::open(&config_in(
        BackendKind::Heap,
        all(),
        root.path(),
    ))?])?;
    job.set_time(model.now);
    let mut restores = 0;
    for step in 0..steps {
        let key = rng.below(24);
        let i = owner(&job.backends, key);
        let (b, h) = (&mut job.backends[i], &job.handles[i]);
        let ctx = || format!("seed {seed:#x}, step {step}, key {key}, now {}", model.now);
        match rng.below(100) {
            0..=11 => {
                let v = rng.below(1_000);
                h.value.put(b, &key, &(), v)?;
                model.values.insert(key, (model.now, v));
            }
            12..=23 => {
                let expected = match model.values.get(&key) {
                    Some(&(stamp, v)) if model.live(stamp) => Some(v),
                    _ => None,
                };
                if expected.is_none() {
                    model.values.remove(&key);
                }
                assert_eq!(h.value.get(b, &key, &())?, expected, "{}", ctx());
            }
            24..=31 => {
                h.value
                    .update(b, &key, &(), |c| Some(c.map_or(1, |c| c + 1)))?;
                let next = match model.values.get(&key) {
                    Some(&(stamp, v)) if model.live(stamp) => v + 1,
                    _ => 1,
                };
                model.values.insert(key, (model.now, next));
            }
            32..=45 => {
                let v = rng.below(1_000);
                h.list.append(b, &key, &(), v)?;
                model.lists.entry(key).or_default().push((model.now, v));
            }
            46..=55 => {
                // Reads drop expired elements and refresh the others (on read and write).
                let now = model.now;
                let list = model.lists.entry(key).or_default();
                list.retain(|&(stamp, _)| stamp + TTL_MS > now);
                let expected: Vec<u64> = list.iter().map(|&(_, v)| v).collect();
                for element in list.iter_mut() {
                    element.0 = now;
                }
                assert_eq!(h.list.get(b, &key, &())?, expected, "{}", ctx());
            }
            56..=67 => {
                let (uk, v) = (rng.below(6), rng.below(1_000));
                h.map.put(b, &key, &(), uk, v)?;
                model
                    .maps
                    .entry(key)
                    .or_default()
                    .insert(uk, (model.now, v));
            }
            68..=75 => {
                let uk = rng.below(6);
                let now = model.now;
                let map = model.maps.entry(key).or_default();
                let expected = match map.get(&uk) {
                    Some(&(stamp, v)) if stamp + TTL_MS > now => Some(v),
                    _ => {
                        map.remove(&uk);
                        None
                    }
                };
                assert_eq!(h.map.get(b, &key, &(), &uk)?, expected, "{}", ctx());
            }
            76..=81 => {
                let now = model.now;
                let map = model.maps.entry(key).or_default();
                map.retain(|_, &mut (stamp, _)| stamp + TTL_MS > now);
                let expected: Vec<(u64, u64)> = map.iter().map(|(&uk, &(_, v))| (uk, v)).collect();
                let mut actual = h.map.entries(b, &key, &())?;
                actual.sort_unstable();
                assert_eq!(actual, expected, "{}", ctx());
            }
            82..=97 => {
                model.now += rng.below(40);
                job.set_time(model.now);
            }
            _ => {
                // A savepoint restored into a random backend, or a checkpoint restored into the
                // same one, at a random parallelism, after some time has passed.
                restores += 1;
                let parallelism = 1 + rng.below(3) as u32;
                model.now += rng.below(60);
                let dir = root.path().join(format!("restore-{restores}"));
                let backends = if rng.below(2) == 0 {
                    let all_kinds = kinds();
                    let kind = all_kinds[rng.below(all_kinds.len() as u64) as usize];
                    savepoint_and_restore(&mut job.backends, &dir, kind, parallelism, model.now)?
                } else {
                    checkpoint_and_restore(&mut job.backends, &dir, parallelism, model.now)?
                };
                job = Job::new(backends)?;
            }
        }
    }
    assert!(restores > 0, "seed {seed:#x}: no restore");
    Ok(())
}

#[test]
fn only_snapshots_with_a_ttl_state_use_the_new_format_versions() -> Result<()> {
    let root = scratch();
    for (name, with_ttl) in [("plain", false), ("ttl", true)] {
        let dir = root.path().join(name);
        let mut b = vec![AnyBackend::open(&config_in(
            BackendKind::Heap,
            all(),
            &dir,
        ))?];
        let descriptor = ValueStateDescriptor::<u64, (), u64>::new("v");
        if with_ttl {
            let s = b[0].value_state_with_ttl(&descriptor, ttl_ms(1 << 40))?;
            s.put(&mut b[0], &1, &(), 1)?;
        } else {
            let s = b[0].value_state(&descriptor)?;
            s.put(&mut b[0], &1, &(), 1)?;
        }
        let sp = dir.join("sp");
        savepoint_and_restore(&mut b, &sp, BackendKind::Heap, 1, 0)?;
        let version = |bytes: &[u8]| u16::from_le_bytes([bytes[4], bytes[5]]);
        let metadata = std::fs::read(sp.join("_metadata")).unwrap();
        let data_file = std::fs::read_dir(&sp)
            .unwrap()
            .flatten()
            .find(|e| e.path().extension().is_some_and(|x| x == "sbdf"))
            .map(|e| std::fs::read(e.path()).unwrap())
            .expect("a data file");
        let footer = &data_file[data_file.len() - 28..];
        let expected = if with_ttl { (3, 2) } else { (1, 1) };
        assert_eq!(
            (version(&metadata), version(&data_file)),
            expected,
            "{name}"
        );
        assert_eq!(u16::from_le_bytes([footer[16], footer[17]]), expected.1);
    }
    Ok(())
}

#[cfg(feature = "rocksdb")]
#[test]
fn rocksdb_write_cache_lets_go_of_expired_rows() -> Result<()> {
    let mut b = statebackend::RocksDbBackend::open(
        MAX_PARALLELISM,
        all(),
        None,
        statebackend::RocksDbOptions::default(),
    )?;
    b.ttl_clock().set_processing_time(0);
    let ttl = ttl_ms(10);
    let value = b.value_state_with_ttl(&ValueStateDescriptor::<u64, (), u64>::new("v"), ttl)?;
    let list = b.list_state_with_ttl(&ListStateDescriptor::<u64, (), u64>::new("l"), ttl)?;
    // 1,000 values written back clean (a flush), 1,000 changed, 1,000 appended lists.
    for key in 0..1_000 {
        value.put(&mut b, &key, &(), key)?;
    }
    b.flush()?;
    for key in 1_000..2_000 {
        value.put(&mut b, &key, &(), key)?;
        list.append(&mut b, &key, &(), key)?;
    }
    let cached = |b: &statebackend::RocksDbBackend| b.write_cache_stats().unwrap().rows;
    assert_eq!(cached(&b), 3_000);
    // Later, 10 other keys: each access looks at a few cache slots and drops expired rows;
    // the changed ones leave once their deletions are written back.
    b.ttl_clock().set_processing_time(100);
    for i in 0..2_000 {
        value.put(&mut b, &(10_000 + i % 10), &(), i)?;
        list.append(&mut b, &(10_000 + i % 10), &(), i)?;
    }
    b.flush()?;
    // The 10 live values; the live lists' appends left with their write-back, as they do.
    assert_eq!(cached(&b), 10);
    // What the cache let go of is gone for reads too, on disk included.
    b.compact()?;
    assert_eq!(b.keys::<u64, ()>(value.id(), None)?.count(), 10);
    assert_eq!(b.keys::<u64, ()>(list.id(), None)?.count(), 10);
    assert_eq!(value.peek(&b, &1_500, &())?, None);
    Ok(())
}
