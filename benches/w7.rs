//! W7: a value state larger than its memory budget. 10,000,000 keys of 100-byte values built
//! in ascending order, then 10,000,000 read-modify-writes on YCSB's scrambled Zipfian keys
//! (`support::w7`), with 256 MiB for RocksDB (block cache and write buffers): the miss path of
//! every cache is measured. Subjects: the RocksDB backend, the RocksDB backend with the same
//! budget split by `RocksDbOptions::with_memory_budget` (a quarter of it the write-back cache,
//! whose hit rate is printed), and raw `rocksdb` with the first one's options and budget.
//! `docs/benchmarks.md` gives the definition and the check values.

#[path = "support/mod.rs"]
mod support;

use statebackend::state::key::KeyContext;
use statebackend::{
    KeyGroupRange, KeyedStateBackend, RocksDbBackend, RocksDbOptions, StateKind, ValueState,
    ValueStateDescriptor,
};
use support::{BytesStore, Phase};

/// The whole memory budget.
const BUDGET: usize = 256 << 20;

/// The memory budget without the write-back cache: 192 MiB of block cache and two 32 MiB
/// write buffers.
fn budget() -> RocksDbOptions {
    RocksDbOptions {
        write_cache_bytes: 0,
        block_cache_bytes: 192 << 20,
        write_buffer_bytes: 32 << 20,
        max_write_buffers: 2,
        ..Default::default()
    }
}

struct Ours {
    backend: RocksDbBackend,
    state: ValueState<u64, (), Vec<u8>>,
}

impl BytesStore for Ours {
    fn get(&mut self, k: u64) -> Option<Vec<u8>> {
        let key: KeyContext<u64> = self.backend.key_context(k).unwrap();
        self.state.get(&self.backend, &key, &()).unwrap()
    }
    fn put(&mut self, k: u64, v: &[u8]) {
        let key = self.backend.key_context(k).unwrap();
        self.state
            .put(&mut self.backend, &key, &(), v.to_vec())
            .unwrap();
    }
}

struct Raw {
    db: rocksdb::DB,
    write: rocksdb::WriteOptions,
    _dir: tempfile::TempDir,
}

impl BytesStore for Raw {
    fn get(&mut self, k: u64) -> Option<Vec<u8>> {
        self.db.get(k.to_be_bytes()).unwrap()
    }
    fn put(&mut self, k: u64, v: &[u8]) {
        self.db.put_opt(k.to_be_bytes(), v, &self.write).unwrap();
    }
}

fn run(subject: &str, store: &mut dyn BytesStore) -> (Phase, Phase, (u64, u64, u64)) {
    let (build, rmw, check) = support::w7(store);
    support::report("W7", subject, &build, None);
    support::report("W7", subject, &rmw, None);
    println!("W7 check values ({subject}): hits, counter sum, distinct keys = {check:?}");
    (build, rmw, check)
}

fn open_ours(options: RocksDbOptions) -> Ours {
    let mut backend =
        RocksDbBackend::open(128, KeyGroupRange::all(128).unwrap(), None, options).unwrap();
    let state = backend
        .value_state(&ValueStateDescriptor::new("w7"))
        .unwrap();
    Ours { backend, state }
}

fn main() {
    let ours = run("rocksdb backend, no cache", &mut open_ours(budget()));
    let cached = {
        let mut store = open_ours(RocksDbOptions::with_memory_budget(BUDGET));
        let result = run("rocksdb backend, write cache", &mut store);
        let stats = store.backend.write_cache_stats().expect("the cache is on");
        println!(
            "W7 write cache: hit rate {:.1}% ({} hits, {} misses), {} rows, {:.1} of {:.0} MiB, {} dirty rows written",
            stats.hit_rate() * 100.0,
            stats.hits,
            stats.misses,
            stats.rows,
            stats.charged_bytes as f64 / (1 << 20) as f64,
            stats.capacity_bytes as f64 / (1 << 20) as f64,
            stats.written_rows
        );
        result
    };
    let raw = {
        let dir = tempfile::tempdir().unwrap();
        let mut write = rocksdb::WriteOptions::default();
        write.disable_wal(true);
        let mut store = Raw {
            db: rocksdb::DB::open(&budget().rocksdb_options(StateKind::Value), dir.path()).unwrap(),
            write,
            _dir: dir,
        };
        run("raw rocksdb, same options", &mut store)
    };
    assert_eq!(ours.2, raw.2, "the subjects replay the same operations");
    assert_eq!(cached.2, raw.2, "the subjects replay the same operations");
    println!(
        "W7 zipf-update: rocksdb backend {:.0} ns/op, with the write cache {:.0} ns/op, raw rocksdb {:.0} ns/op ({:.2}x, {:.2}x)",
        ours.1.ns_per_op(),
        cached.1.ns_per_op(),
        raw.1.ns_per_op(),
        ours.1.ns_per_op() / raw.1.ns_per_op(),
        cached.1.ns_per_op() / raw.1.ns_per_op()
    );
}
