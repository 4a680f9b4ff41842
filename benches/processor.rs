//! The state processor and schema migrations, on W6's state (1,000,000 keys × 100-byte
//! values): bootstrap of a savepoint from 1,000,000 rows; rewrite of a two-state savepoint
//! dropping one; offline rescale 1 → 4 of the W6 savepoint; and the cost of a migration on
//! restore into RocksDB against restoring and then rewriting every row once, and the unmigrated
//! restore.

mod support;

use std::time::Instant;

use statebackend::savepoint::processor::{SavepointBuilder, SavepointRewrite};
use statebackend::savepoint::{read_savepoint, restore_savepoint};
use statebackend::state::Migration;
use statebackend::storage::LocalDirStorage;
use statebackend::{
    BackendConfig, BackendKind, KeyGroupRange, KeyedStateBackend, ValueState, ValueStateDescriptor,
};
use support::{scaled, w5_value};

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn values() -> ValueStateDescriptor<i64, (), Vec<u8>> {
    ValueStateDescriptor::new("values")
}

fn main() {
    let keys = scaled(1_000_000);
    println!("== state processor on W6's state: {keys} keys x 100-byte values");
    let root = tempfile::tempdir().unwrap();

    // Bootstrap: W6's state from an iterator, one instance (the W6 savepoint) and four.
    let w6 = root.path().join("w6");
    let t = Instant::now();
    let mut builder = SavepointBuilder::new(128).unwrap();
    builder
        .value_state(&values(), (0..keys).map(|k| (k as i64, (), w5_value(k, 0))))
        .unwrap();
    let meta = builder
        .write(&LocalDirStorage::new(&w6).unwrap(), "", 1)
        .unwrap();
    println!(
        "bootstrap {keys} rows -> 1 instance   {:>8.0} ms  ({} bytes)",
        ms(t),
        meta.total_bytes()
    );

    // Rewrite: a two-state savepoint (W6's values and a u64 per key), one state dropped.
    let two = root.path().join("two");
    let mut builder = SavepointBuilder::new(128).unwrap();
    builder
        .value_state(&values(), (0..keys).map(|k| (k as i64, (), w5_value(k, 0))))
        .unwrap()
        .value_state(
            &ValueStateDescriptor::<i64, (), u64>::new("counts"),
            (0..keys).map(|k| (k as i64, (), k)),
        )
        .unwrap();
    builder
        .write(&LocalDirStorage::new(&two).unwrap(), "", 1)
        .unwrap();
    let dropped = root.path().join("dropped");
    let t = Instant::now();
    let report = SavepointRewrite::new()
        .drop_state("", "counts")
        .write(
            &LocalDirStorage::new(&two).unwrap(),
            &LocalDirStorage::new(&dropped).unwrap(),
        )
        .unwrap();
    println!(
        "rewrite: drop one of two states        {:>8.0} ms  ({} bytes written, verified)",
        ms(t),
        report.meta.total_bytes()
    );

    // Offline rescale of the W6 savepoint, 1 -> 4 instances.
    let rescaled = root.path().join("rescaled");
    let t = Instant::now();
    let report = SavepointRewrite::new()
        .rescale("", 4)
        .write(
            &LocalDirStorage::new(&w6).unwrap(),
            &LocalDirStorage::new(&rescaled).unwrap(),
        )
        .unwrap();
    println!(
        "rescale 1 -> 4 instances               {:>8.0} ms  ({} files, verified)",
        ms(t),
        report.meta.instances.len()
    );

    // Migration on restore into RocksDB.
    let storage = LocalDirStorage::new(&w6).unwrap();
    let meta = read_savepoint(&storage).unwrap();
    let mut config = BackendConfig::heap(128, KeyGroupRange::all(128).unwrap());
    config.kind = BackendKind::RocksDb;
    let t = Instant::now();
    let mut b = restore_savepoint(&storage, &meta, &config).unwrap();
    let _: ValueState<i64, (), Vec<u8>> = b.value_state(&values()).unwrap();
    let restore_ms = ms(t);
    drop(b);
    // Restore, then rewrite every row once through the handle (what a migration must beat).
    let t = Instant::now();
    let mut b = restore_savepoint(&storage, &meta, &config).unwrap();
    let s2: ValueState<i64, (), Vec<u8>> = b.value_state(&values()).unwrap();
    for k in 0..keys as i64 {
        let mut v = s2.get(&b, &k, &()).unwrap().unwrap();
        v[0] ^= 1;
        s2.put(&mut b, &k, &(), v).unwrap();
    }
    let rewrite_ms = ms(t);
    drop(b);
    let migrated = ValueStateDescriptor::<i64, (), Vec<u8>>::new("values")
        .with_schema_version(1)
        .with_migration(Migration::new(0, 1, |mut v: Vec<u8>| {
            v[0] ^= 1;
            v
        }));
    let t = Instant::now();
    let mut b = restore_savepoint(&storage, &meta, &config).unwrap();
    let m: ValueState<i64, (), Vec<u8>> = b.value_state(&migrated).unwrap();
    let migrate_ms = ms(t);
    let mut first = w5_value(0, 0);
    first[0] ^= 1;
    assert_eq!(m.get(&b, &0, &()).unwrap(), Some(first));
    println!("rocksdb restore                        {restore_ms:>8.0} ms");
    println!("rocksdb restore + rewrite every row    {rewrite_ms:>8.0} ms");
    println!(
        "rocksdb restore + migration            {migrate_ms:>8.0} ms  ({:.2}x the restore and rewrite)",
        migrate_ms / rewrite_ms
    );
}
