//! W6: canonical savepoints of W5's state (1,000,000 keys × 100-byte values): write and
//! restore throughput for both backends, RocksDB restore by SST ingest beside a restore by
//! plain puts (the path ingest replaces), and a rescaled restore (1 → 2 instances).

mod support;

use std::time::Instant;

use statebackend::savepoint::data_file::DataFileReader;
use statebackend::savepoint::{complete_savepoint, read_savepoint, restore_savepoint};
use statebackend::storage::LocalDirStorage;
use statebackend::{
    AnyBackend, BackendConfig, BackendKind, Codec, KeyGroupRange, KeyedStateBackend, ValueState,
    ValueStateDescriptor,
};
use support::{scaled, w5_value};

fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

fn build(kind: BackendKind, keys: u64) -> AnyBackend {
    let mut c = BackendConfig::heap(128, KeyGroupRange::all(128).unwrap());
    c.kind = kind;
    let mut b = AnyBackend::open(&c).unwrap();
    let s: ValueState<i64, (), Vec<u8>> =
        b.value_state(&ValueStateDescriptor::new("values")).unwrap();
    for k in 0..keys {
        s.put(&mut b, &(k as i64), &(), w5_value(k, 0)).unwrap();
    }
    b
}

fn config(kind: BackendKind, range: KeyGroupRange) -> BackendConfig {
    let mut c = BackendConfig::heap(128, range);
    c.kind = kind;
    c
}

fn main() {
    let keys = scaled(1_000_000);
    println!("== W6 savepoints of {keys} keys x 100-byte values");
    let mut files = Vec::new();
    for kind in [BackendKind::Heap, BackendKind::RocksDb] {
        let mut b = build(kind, keys);
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalDirStorage::new(dir.path()).unwrap();
        let t = Instant::now();
        let instance = b.savepoint().unwrap().write(&storage).unwrap();
        let meta = complete_savepoint(&storage, vec![instance]).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let bytes = meta.total_bytes();
        println!(
            "write   {kind:<8} {bytes:>12} bytes in {:>7.0} ms = {:>7.1} MB/s",
            secs * 1e3,
            mb_per_s(bytes, secs)
        );
        files.push((kind, dir, bytes));
    }
    // Both backends wrote the same canonical bytes: restore from the first.
    let (_, dir, bytes) = &files[0];
    let storage = LocalDirStorage::new(dir.path()).unwrap();
    let meta = read_savepoint(&storage).unwrap();
    let all = KeyGroupRange::all(128).unwrap();
    let mut ingest_secs = 0.0;
    for kind in [BackendKind::Heap, BackendKind::RocksDb] {
        let t = Instant::now();
        let mut b = restore_savepoint(&storage, &meta, &config(kind, all)).unwrap();
        let s: ValueState<i64, (), Vec<u8>> =
            b.value_state(&ValueStateDescriptor::new("values")).unwrap();
        let secs = t.elapsed().as_secs_f64();
        if kind == BackendKind::RocksDb {
            ingest_secs = secs;
        }
        let label = if kind == BackendKind::RocksDb {
            "rocksdb (SST ingest)"
        } else {
            "heap"
        };
        println!(
            "restore {label:<22} {:>7.0} ms = {:>7.1} MB/s",
            secs * 1e3,
            mb_per_s(*bytes, secs)
        );
        for k in (0..keys).step_by(997) {
            assert_eq!(
                s.get(&b, &(k as i64), &()).unwrap().unwrap(),
                w5_value(k, 0)
            );
        }
    }
    // The path SST ingest replaces: decode every row, put it through the state API, flush.
    let t = Instant::now();
    let mut b = AnyBackend::open(&config(BackendKind::RocksDb, all)).unwrap();
    let s: ValueState<i64, (), Vec<u8>> =
        b.value_state(&ValueStateDescriptor::new("values")).unwrap();
    let path = dir.path().join(meta.instances[0].files[0].path.as_str());
    let mut reader = DataFileReader::open(&path, "savepoint").unwrap();
    let codec = statebackend::BincodeCodec;
    reader
        .for_each_row(&mut |_, _, key, value| {
            let (k, _): (i64, usize) = codec.decode_prefix(key).unwrap();
            s.put(&mut b, &k, &(), codec.decode(value).unwrap())
        })
        .unwrap();
    // Ingest leaves the rows in SST files; puts leave them in memtables (the write-ahead log
    // is off), not yet restorable after a crash. The flush is part of the path.
    if let AnyBackend::RocksDb(r) = &b {
        r.flush().unwrap();
    }
    let put_secs = t.elapsed().as_secs_f64();
    println!(
        "restore {:<22} {:>7.0} ms = {:>7.1} MB/s  (SST ingest is {:.1}x faster)",
        "rocksdb (plain puts)",
        put_secs * 1e3,
        mb_per_s(*bytes, put_secs),
        put_secs / ingest_secs
    );
    // Rescaled: two instances each read only their half of the key groups.
    for kind in [BackendKind::Heap, BackendKind::RocksDb] {
        let t = Instant::now();
        for i in 0..2 {
            let range = KeyGroupRange::for_operator(128, 2, i).unwrap();
            let b = restore_savepoint(&storage, &meta, &config(kind, range)).unwrap();
            assert_eq!(b.key_group_range(), range);
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "restore {:<22} {:>7.0} ms = {:>7.1} MB/s",
            format!("{kind} rescaled 1->2"),
            secs * 1e3,
            mb_per_s(*bytes, secs)
        );
    }
}
