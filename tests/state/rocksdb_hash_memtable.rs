//! The RocksDB backend with the hash memtable (`Memtable::HashLinkList`): the same state as
//! the default skip list through checkpoints, savepoints, rescaling and reopening. The hash
//! memtable brings a prefix extractor with it, which would turn the backend's range scans into
//! prefix lookups if an iterator forgot `total_order_seek`; these tests scan (`keys`, map
//! entries, snapshots, savepoint export, trimming after rescale) with rows in both memtables
//! and SST files.
#![cfg(feature = "rocksdb")]
use crate::common;

use std::sync::Arc;

use common::checkpointing::{assert_matches_model, checkpoint, key_group, run_ops};
use common::model::{Handles, Model, OpGenerator};
use statebackend::checkpoint::{CheckpointCoordinator, RestoreMode, restore_instance};
use statebackend::rocks::Memtable;
use statebackend::savepoint::{complete_savepoint, read_savepoint, restore_savepoint};
use statebackend::storage::{CheckpointStorage, LocalDirStorage};
use statebackend::{
    AnyBackend, BackendConfig, BackendKind, KeyGroupRange, KeyedStateBackend, Result,
    RocksDbBackend, RocksDbOptions, ValueStateDescriptor,
};

const HASHED: Memtable = Memtable::HashLinkList { buckets: 1 << 12 };

fn hashed(range: KeyGroupRange) -> BackendConfig {
    let mut c = BackendConfig::rocksdb(128, range);
    c.rocksdb.memtable = HASHED;
    c
}

fn all() -> KeyGroupRange {
    KeyGroupRange::all(128).unwrap()
}

/// Random operations on every state kind, with a flush half way so that rows live both in
/// SST files and in the memtables.
fn populated(config: &BackendConfig, seed: u64) -> Result<(AnyBackend, Handles, Model)> {
    let mut b = AnyBackend::open(config)?;
    let h = Handles::register(&mut b)?;
    let mut model = Model::default();
    let range = config.key_groups;
    let mut g = OpGenerator::new(seed, 60, move |k| range.contains(key_group(k)));
    run_ops(&mut b, &h, &mut model, &mut g, 1_500)?;
    if let AnyBackend::RocksDb(r) = &b {
        r.flush()?;
    }
    run_ops(&mut b, &h, &mut model, &mut g, 1_500)?;
    Ok((b, h, model))
}

#[test]
fn checkpoints_restore_exactly_into_either_memtable() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(tmp.path())?);
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 3)?;
    let (mut b, h, mut model) = populated(&hashed(all()), 7)?;
    let (meta1, _) = checkpoint(&mut b, &mut coordinator, 1, |_| Ok(()))?;
    let at_1 = model.clone();
    let mut g = OpGenerator::new(8, 60, |_| true);
    run_ops(&mut b, &h, &mut model, &mut g, 1_000)?;
    let (meta2, stats2) = checkpoint(&mut b, &mut coordinator, 2, |_| Ok(()))?;
    assert!(
        stats2.files_reused > 0,
        "the second checkpoint is incremental"
    );
    drop(b);

    for (meta, expected) in [(&meta1, &at_1), (&meta2, &model)] {
        for config in [hashed(all()), BackendConfig::rocksdb(128, all())] {
            let mut restored =
                restore_instance(storage.as_ref(), meta, &config, RestoreMode::NoClaim)?;
            let h = Handles::register(&mut restored)?;
            assert_matches_model(&mut restored, &h, expected)?;
        }
    }

    // Rescaled: two instances of half the key groups each, restored from the same checkpoint
    // (the RocksDB restore trims the key groups an instance does not own).
    for i in 0..2 {
        let range = KeyGroupRange::for_operator(128, 2, i)?;
        let mut restored = restore_instance(
            storage.as_ref(),
            &meta2,
            &hashed(range),
            RestoreMode::NoClaim,
        )?;
        let h = Handles::register(&mut restored)?;
        let mut owned = model.clone();
        owned.retain_keys(|k| range.contains(key_group(k)));
        assert_matches_model(&mut restored, &h, &owned)?;
    }
    Ok(())
}

#[test]
fn savepoints_round_trip_through_the_hash_memtable() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let storage = LocalDirStorage::new(tmp.path())?;
    let (mut b, _, model) = populated(&hashed(all()), 17)?;
    let instance = b.savepoint()?.write(&storage)?;
    complete_savepoint(&storage, vec![instance])?;
    let meta = read_savepoint(&storage)?;
    let mut heap = BackendConfig::heap(128, all());
    heap.kind = BackendKind::Heap;
    for config in [hashed(all()), heap] {
        let mut restored = restore_savepoint(&storage, &meta, &config)?;
        let h = Handles::register(&mut restored)?;
        assert_matches_model(&mut restored, &h, &model)?;
    }
    Ok(())
}

#[test]
fn a_working_directory_reopens_with_either_memtable() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("work");
    let hashed_options = RocksDbOptions {
        memtable: HASHED,
        ..Default::default()
    };
    let descriptor = ValueStateDescriptor::<u32, (), u32>::new("v");
    {
        let mut b = RocksDbBackend::open(128, all(), Some(dir.clone()), hashed_options.clone())?;
        let v = b.value_state(&descriptor)?;
        for k in 0..500 {
            v.put(&mut b, &k, &(), k * 3)?;
        }
    }
    // The reopen reads the state records before it opens the column families, so each gets the
    // memtable of its kind (RocksDB writes the options it opened with to an OPTIONS file); a
    // reopen with the skip list reads the same rows.
    for (options, factory) in [
        (hashed_options, "HashLinkListRepFactory"),
        (RocksDbOptions::default(), "SkipListFactory"),
    ] {
        let mut b = RocksDbBackend::open(128, all(), Some(dir.clone()), options)?;
        let recorded = memtable_factory_of(&dir.join("db"), "state/v");
        assert!(recorded.contains(factory), "{recorded}");
        let v = b.value_state(&descriptor)?;
        for k in 0..500 {
            assert_eq!(v.get(&b, &k, &())?, Some(k * 3));
        }
        let mut keys: Vec<u32> = b
            .keys::<u32, ()>(v.id(), None)?
            .map(|r| r.map(|(k, _)| k))
            .collect::<Result<_>>()?;
        keys.sort_unstable();
        assert_eq!(keys, (0..500).collect::<Vec<_>>());
    }
    Ok(())
}

/// The `memtable_factory` RocksDB recorded for column family `cf` in the newest OPTIONS file.
fn memtable_factory_of(db: &std::path::Path, cf: &str) -> String {
    let newest = std::fs::read_dir(db)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("OPTIONS-")
        })
        .max_by_key(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name["OPTIONS-".len()..].parse::<u64>().unwrap_or(0)
        })
        .unwrap();
    let text = std::fs::read_to_string(newest).unwrap();
    let section = format!("[CFOptions \"{cf}\"]");
    let body = &text[text.find(&section).expect("column family section")..];
    let line = body
        .lines()
        .find(|l| l.trim_start().starts_with("memtable_factory="))
        .expect("memtable_factory line");
    line.trim_start()["memtable_factory=".len()..].to_owned()
}

#[test]
fn a_hash_memtable_needs_buckets_that_fit_its_write_buffer() {
    for buckets in [0, (64 << 20) / 16 + 1] {
        let options = RocksDbOptions {
            memtable: Memtable::HashLinkList { buckets },
            ..Default::default()
        };
        let opened = RocksDbBackend::open(128, all(), None, options);
        assert!(
            matches!(opened, Err(statebackend::Error::InvalidOptions { .. })),
            "{buckets} buckets"
        );
    }
}
