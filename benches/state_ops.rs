//! W1–W4 on each backend, each beside its limit: a raw `HashMap` (std SipHash and a fast
//! hasher) for the heap backend, the raw `rocksdb` crate with the same options for the RocksDB
//! backend, and raw `rocksdb` with its plain defaults to show what our options buy. The RocksDB
//! backend runs without its write-back cache (every operation a RocksDB call), with the
//! optional hash memtable (W1–W3; `Memtable::HashLinkList`, map states keep the skip list), and
//! with the cache at Flink's memory budget (`RocksDbOptions::with_memory_budget(512 MiB)`: a
//! 128 MiB write cache, 384 MiB of block cache holding the memtables), whose hit rate is printed.
//!
//! `cargo bench --bench state_ops` runs the specified sizes and asserts WORKLOADS.md's check
//! values; `STATEBACKEND_BENCH_SCALE=0.01` runs a quick subset of the sizes. Criterion then
//! measures the per-operation latency of a value update on a populated state.

mod support;

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{BatchSize, Criterion};
use statebackend::{
    HeapBackend, KeyGroupRange, KeyedStateBackend, ListState, ListStateDescriptor, MapState,
    MapStateDescriptor, ValueState, ValueStateDescriptor,
};
use support::{ListStore, MapStore, Phase, ValueStore, report, w1_w2, w3, w4};

#[cfg(feature = "rocksdb")]
use statebackend::{rocks::Memtable, state::StateKind};

struct OurValue<B> {
    b: B,
    s: ValueState<i64, (), i64>,
}
impl<B: KeyedStateBackend> ValueStore for OurValue<B> {
    fn get(&mut self, k: i64) -> Option<i64> {
        self.s.get(&self.b, &k, &()).unwrap()
    }
    fn put(&mut self, k: i64, v: i64) {
        self.s.put(&mut self.b, &k, &(), v).unwrap()
    }
    /// As an engine does per record: the key context once, then one read-modify-write.
    fn update(&mut self, k: i64, f: &dyn Fn(Option<i64>) -> i64) {
        let key = self.b.key_context(k).unwrap();
        self.s
            .update(&mut self.b, &key, &(), |c| Some(f(c.copied())))
            .unwrap()
    }
}

struct OurList<B> {
    b: B,
    s: ListState<i64, (), i64>,
}
impl<B: KeyedStateBackend> ListStore for OurList<B> {
    fn append(&mut self, k: i64, v: i64) {
        self.s.append(&mut self.b, &k, &(), v).unwrap()
    }
    fn for_each(&mut self, k: i64, f: &mut dyn FnMut(i64)) {
        for v in self.s.get(&self.b, &k, &()).unwrap() {
            f(v)
        }
    }
}

struct OurMap<B> {
    b: B,
    s: MapState<i64, (), i64, i64>,
}
impl<B: KeyedStateBackend> MapStore for OurMap<B> {
    fn put(&mut self, k: i64, uk: i64, v: i64) {
        self.s.put(&mut self.b, &k, &(), uk, v).unwrap()
    }
    fn get(&mut self, k: i64, uk: i64) -> Option<i64> {
        self.s.get(&self.b, &k, &(), &uk).unwrap()
    }
    fn for_each(&mut self, k: i64, f: &mut dyn FnMut(i64, i64)) {
        for e in self.s.entries(&self.b, &k, &()).unwrap() {
            let (uk, v) = e.unwrap();
            f(uk, v)
        }
    }
}

fn heap() -> HeapBackend {
    HeapBackend::new(128, KeyGroupRange::all(128).unwrap()).unwrap()
}

fn our_value<B: KeyedStateBackend>(mut b: B) -> OurValue<B> {
    let s = b.value_state(&ValueStateDescriptor::new("v")).unwrap();
    OurValue { b, s }
}
fn our_list<B: KeyedStateBackend>(mut b: B) -> OurList<B> {
    let s = b.list_state(&ListStateDescriptor::new("l")).unwrap();
    OurList { b, s }
}
fn our_map<B: KeyedStateBackend>(mut b: B) -> OurMap<B> {
    let s = b.map_state(&MapStateDescriptor::new("m")).unwrap();
    OurMap { b, s }
}

/// Raw hash maps: the heap backend's limit.
struct RawMap<M>(M);
impl<S: std::hash::BuildHasher> ValueStore for RawMap<HashMap<i64, i64, S>> {
    fn get(&mut self, k: i64) -> Option<i64> {
        self.0.get(&k).copied()
    }
    fn put(&mut self, k: i64, v: i64) {
        self.0.insert(k, v);
    }
}
impl ValueStore for RawMap<hashbrown::HashMap<i64, i64>> {
    fn get(&mut self, k: i64) -> Option<i64> {
        self.0.get(&k).copied()
    }
    fn put(&mut self, k: i64, v: i64) {
        self.0.insert(k, v);
    }
}
impl ListStore for RawMap<hashbrown::HashMap<i64, Vec<i64>>> {
    fn append(&mut self, k: i64, v: i64) {
        self.0.entry(k).or_default().push(v)
    }
    fn for_each(&mut self, k: i64, f: &mut dyn FnMut(i64)) {
        for v in self.0.get(&k).into_iter().flatten() {
            f(*v)
        }
    }
}
impl MapStore for RawMap<hashbrown::HashMap<i64, hashbrown::HashMap<i64, i64>>> {
    fn put(&mut self, k: i64, uk: i64, v: i64) {
        self.0.entry(k).or_default().insert(uk, v);
    }
    fn get(&mut self, k: i64, uk: i64) -> Option<i64> {
        self.0.get(&k).and_then(|m| m.get(&uk)).copied()
    }
    fn for_each(&mut self, k: i64, f: &mut dyn FnMut(i64, i64)) {
        for (uk, v) in self.0.get(&k).into_iter().flatten() {
            f(*uk, *v)
        }
    }
}

#[cfg(feature = "rocksdb")]
mod raw_rocks {
    //! The raw `rocksdb` crate doing the same gets, puts, merges and scans.
    use super::*;
    use rocksdb::{DB, IteratorMode, Options, ReadOptions, WriteOptions};

    pub struct Raw {
        pub db: DB,
        write: WriteOptions,
        _dir: tempfile::TempDir,
    }

    fn concat(_: &[u8], existing: Option<&[u8]>, ops: &rocksdb::MergeOperands) -> Option<Vec<u8>> {
        let mut out = existing.map(<[u8]>::to_vec).unwrap_or_default();
        for op in ops.iter() {
            out.extend_from_slice(op);
        }
        Some(out)
    }

    /// `Some(kind)`: the RocksDB backend's default options for a state of `kind` (WAL off
    /// too); `None`: RocksDB's defaults (plus the merge operator W3 needs, and the WAL on, as
    /// a default DB has it).
    pub fn open(ours: Option<StateKind>) -> Raw {
        let dir = tempfile::tempdir().unwrap();
        let (opts, write) = if let Some(kind) = ours {
            let mut w = WriteOptions::default();
            w.disable_wal(true);
            (
                statebackend::RocksDbOptions::default().rocksdb_options(kind),
                w,
            )
        } else {
            let mut o = Options::default();
            o.create_if_missing(true);
            o.set_merge_operator_associative("concat", concat);
            (o, WriteOptions::default())
        };
        Raw {
            db: DB::open(&opts, dir.path()).unwrap(),
            write,
            _dir: dir,
        }
    }

    fn key(k: i64) -> [u8; 8] {
        k.to_be_bytes()
    }
    fn key2(k: i64, uk: i64) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&k.to_be_bytes());
        out[8..].copy_from_slice(&uk.to_be_bytes());
        out
    }
    fn int(b: &[u8]) -> i64 {
        i64::from_le_bytes(b.try_into().unwrap())
    }

    impl ValueStore for Raw {
        fn get(&mut self, k: i64) -> Option<i64> {
            self.db.get_pinned(key(k)).unwrap().map(|v| int(&v))
        }
        fn put(&mut self, k: i64, v: i64) {
            self.db
                .put_opt(key(k), v.to_le_bytes(), &self.write)
                .unwrap()
        }
    }
    impl ListStore for Raw {
        fn append(&mut self, k: i64, v: i64) {
            self.db
                .merge_opt(key(k), v.to_le_bytes(), &self.write)
                .unwrap()
        }
        fn for_each(&mut self, k: i64, f: &mut dyn FnMut(i64)) {
            if let Some(bytes) = self.db.get_pinned(key(k)).unwrap() {
                for chunk in bytes.chunks_exact(8) {
                    f(int(chunk))
                }
            }
        }
    }
    impl MapStore for Raw {
        fn put(&mut self, k: i64, uk: i64, v: i64) {
            self.db
                .put_opt(key2(k, uk), v.to_le_bytes(), &self.write)
                .unwrap()
        }
        fn get(&mut self, k: i64, uk: i64) -> Option<i64> {
            self.db.get_pinned(key2(k, uk)).unwrap().map(|v| int(&v))
        }
        fn for_each(&mut self, k: i64, f: &mut dyn FnMut(i64, i64)) {
            let mut read = ReadOptions::default();
            read.set_iterate_range(rocksdb::PrefixRange(key(k).to_vec()));
            for item in self.db.iterator_opt(IteratorMode::Start, read) {
                let (kk, v) = item.unwrap();
                f(i64::from_be_bytes(kk[8..16].try_into().unwrap()), int(&v))
            }
        }
    }
}

fn value_rows(
    bench: &str,
    subject: &str,
    store: &mut dyn ValueStore,
    base: Option<&(Phase, Phase)>,
) -> (Phase, Phase) {
    let (w1, w2, _) = w1_w2(store);
    report(bench, subject, &w1, base.map(|b| &b.0));
    report(bench, subject, &w2, base.map(|b| &b.1));
    (w1, w2)
}

/// Whether workload `w` runs: `STATEBACKEND_BENCH_ONLY` (e.g. `W4`, or `W1,W3`) picks some;
/// all run without it.
fn selected(w: &str) -> bool {
    std::env::var("STATEBACKEND_BENCH_ONLY").map_or(true, |only| only.split(',').any(|o| o == w))
}

fn workloads() {
    if selected("W1") {
        println!("\n== W1/W2 value state (ratio = ns/op against the row's limit)");
        let fast = value_rows(
            "W1-W2",
            "HashMap (fast hash) [limit]",
            &mut RawMap(hashbrown::HashMap::new()),
            None,
        );
        value_rows(
            "W1-W2",
            "HashMap (SipHash)",
            &mut RawMap(HashMap::new()),
            Some(&fast),
        );
        value_rows("W1-W2", "heap backend", &mut our_value(heap()), Some(&fast));
        #[cfg(feature = "rocksdb")]
        {
            let raw = value_rows(
                "W1-W2",
                "raw rocksdb, our options [limit]",
                &mut raw_rocks::open(Some(StateKind::Value)),
                None,
            );
            let ours = value_rows(
                "W1-W2",
                "rocksdb backend, no cache",
                &mut our_value(rocks(Memtable::SkipList)),
                Some(&raw),
            );
            let hashed = value_rows(
                "W1-W2",
                "rocksdb, no cache, hash memtable",
                &mut our_value(rocks(HASH_MEMTABLE)),
                Some(&raw),
            );
            let mut cached_store = our_value(rocks_cached());
            let cached = value_rows(
                "W1-W2",
                "rocksdb backend, write cache",
                &mut cached_store,
                Some(&raw),
            );
            print_cache_stats(&cached_store.b);
            drop(cached_store);
            let plain = value_rows(
                "W1-W2",
                "raw rocksdb, default options",
                &mut raw_rocks::open(None),
                Some(&raw),
            );
            print_default_ratio("W1", &ours.0, &plain.0);
            print_default_ratio("W2", &ours.1, &plain.1);
            print_default_ratio("W1, the hash memtable", &hashed.0, &plain.0);
            print_default_ratio("W2, the hash memtable", &hashed.1, &plain.1);
            print_default_ratio("W1, the write cache", &cached.0, &plain.0);
            print_default_ratio("W2, the write cache", &cached.1, &plain.1);
        }
    }
    if selected("W3") {
        println!("\n== W3 list state");
        let (la, lg, _) = w3(&mut RawMap(hashbrown::HashMap::<i64, Vec<i64>>::new()));
        report("W3", "HashMap<Vec> [limit]", &la, None);
        report("W3", "HashMap<Vec> [limit]", &lg, None);
        let (a, g, _) = w3(&mut our_list(heap()));
        report("W3", "heap backend", &a, Some(&la));
        report("W3", "heap backend", &g, Some(&lg));
        #[cfg(feature = "rocksdb")]
        {
            let (ra, rg, _) = w3(&mut raw_rocks::open(Some(StateKind::List)));
            report("W3", "raw rocksdb, our options [limit]", &ra, None);
            report("W3", "raw rocksdb, our options [limit]", &rg, None);
            let (a, g, _) = w3(&mut our_list(rocks(Memtable::SkipList)));
            report("W3", "rocksdb backend, no cache", &a, Some(&ra));
            report("W3", "rocksdb backend, no cache", &g, Some(&rg));
            let (ha, hg, _) = w3(&mut our_list(rocks(HASH_MEMTABLE)));
            report("W3", "rocksdb, no cache, hash memtable", &ha, Some(&ra));
            report("W3", "rocksdb, no cache, hash memtable", &hg, Some(&rg));
            let mut cached_store = our_list(rocks_cached());
            let (ca, cg, _) = w3(&mut cached_store);
            report("W3", "rocksdb backend, write cache", &ca, Some(&ra));
            report("W3", "rocksdb backend, write cache", &cg, Some(&rg));
            print_cache_stats(&cached_store.b);
            drop(cached_store);
            let (pa, pg, _) = w3(&mut raw_rocks::open(None));
            report("W3", "raw rocksdb, default options", &pa, Some(&ra));
            report("W3", "raw rocksdb, default options", &pg, Some(&rg));
            print_default_ratio("W3 append", &a, &pa);
            print_default_ratio("W3 get", &g, &pg);
            print_default_ratio("W3 append, the hash memtable", &ha, &pa);
            print_default_ratio("W3 get, the hash memtable", &hg, &pg);
            print_default_ratio("W3 append, the write cache", &ca, &pa);
            print_default_ratio("W3 get, the write cache", &cg, &pg);
        }
    }
    if selected("W4") {
        println!("\n== W4 map state");
        let (limit, _) = w4(&mut RawMap(hashbrown::HashMap::<
            i64,
            hashbrown::HashMap<i64, i64>,
        >::new()));
        for p in &limit {
            report("W4", "HashMap<HashMap> [limit]", p, None);
        }
        let (ours, _) = w4(&mut our_map(heap()));
        for (p, l) in ours.iter().zip(&limit) {
            report("W4", "heap backend", p, Some(l));
        }
        #[cfg(feature = "rocksdb")]
        {
            let (raw, _) = w4(&mut raw_rocks::open(Some(StateKind::Map)));
            for p in &raw {
                report("W4", "raw rocksdb, our options [limit]", p, None);
            }
            let (ours, _) = w4(&mut our_map(rocks(Memtable::SkipList)));
            for (p, l) in ours.iter().zip(&raw) {
                report("W4", "rocksdb backend, no cache", p, Some(l));
            }
            let mut cached_store = our_map(rocks_cached());
            let (cached, _) = w4(&mut cached_store);
            for (p, l) in cached.iter().zip(&raw) {
                report("W4", "rocksdb backend, write cache", p, Some(l));
            }
            print_cache_stats(&cached_store.b);
            drop(cached_store);
            let (plain, _) = w4(&mut raw_rocks::open(None));
            for (p, l) in plain.iter().zip(&raw) {
                report("W4", "raw rocksdb, default options", p, Some(l));
            }
            for (o, p) in ours.iter().zip(&plain) {
                print_default_ratio(o.name, o, p);
            }
            for (o, p) in cached.iter().zip(&plain) {
                print_default_ratio(&format!("{}, the write cache", o.name), o, p);
            }
        }
    }
}

/// The hash memtable variant: a bucket per row a 64 MiB memtable of small rows can hold.
#[cfg(feature = "rocksdb")]
const HASH_MEMTABLE: Memtable = Memtable::HashLinkList { buckets: 1 << 20 };

#[cfg(feature = "rocksdb")]
/// The RocksDB backend without the write-back cache: every operation a RocksDB call.
fn rocks(memtable: Memtable) -> statebackend::RocksDbBackend {
    let options = statebackend::RocksDbOptions {
        memtable,
        write_cache_bytes: 0,
        ..Default::default()
    };
    statebackend::RocksDbBackend::open(128, KeyGroupRange::all(128).unwrap(), None, options)
        .unwrap()
}

/// The memory budget of the write-cache rows: Flink's managed memory in the figures we compare
/// with (`docs/benchmarks.md`).
#[cfg(feature = "rocksdb")]
const MEMORY_BUDGET: usize = 512 << 20;

/// The RocksDB backend with all of its memory in one budget, a quarter of it the write cache.
#[cfg(feature = "rocksdb")]
fn rocks_cached() -> statebackend::RocksDbBackend {
    let options = statebackend::RocksDbOptions::with_memory_budget(MEMORY_BUDGET);
    statebackend::RocksDbBackend::open(128, KeyGroupRange::all(128).unwrap(), None, options)
        .unwrap()
}

#[cfg(feature = "rocksdb")]
fn print_cache_stats(b: &statebackend::RocksDbBackend) {
    if let Some(stats) = b.write_cache_stats() {
        println!(
            "           write cache: hit rate {:.1}%, {} rows, {:.1} MiB of {:.0} MiB, {} rows written by eviction or flush",
            stats.hit_rate() * 100.0,
            stats.rows,
            stats.charged_bytes as f64 / (1 << 20) as f64,
            stats.capacity_bytes as f64 / (1 << 20) as f64,
            stats.written_rows
        );
    }
}

#[cfg(feature = "rocksdb")]
/// `what` names the workload and, after a comma, a variant of our options if any.
fn print_default_ratio(what: &str, ours: &Phase, plain: &Phase) {
    let (workload, options) = what.split_once(", ").unwrap_or((what, "no cache"));
    println!(
        "{workload}: rocksdb backend with {options} is {:.2}x the speed of raw rocksdb with plain defaults",
        plain.ns_per_op() / ours.ns_per_op()
    );
}

/// Per-operation latency of a value update on a populated state, with criterion's statistics.
fn micro(c: &mut Criterion) {
    let keys = support::scaled(1_000_000);
    let mut group = c.benchmark_group("value_update");
    group.sample_size(20);
    let mut measure = |name: &str, mut store: Box<dyn ValueStore>| {
        for k in 0..keys as i64 {
            store.put(k, k);
        }
        let mut g = support::SplitMix64::new(7);
        group.bench_function(name, |b| {
            b.iter_batched(
                || g.below(keys) as i64,
                |k| store.update(k, &|c| black_box(c.map_or(1, |c| c + 1))),
                BatchSize::SmallInput,
            )
        });
    };
    // One subject at a time, each dropped before the next is built: a RocksDB subject's
    // background flushes and compactions must not run while an in-memory one is measured.
    measure("hashmap_fast", Box::new(RawMap(hashbrown::HashMap::new())));
    measure("heap", Box::new(our_value(heap())));
    #[cfg(feature = "rocksdb")]
    {
        measure(
            "rocksdb_raw",
            Box::new(raw_rocks::open(Some(StateKind::Value))),
        );
        measure("rocksdb", Box::new(our_value(rocks(Memtable::SkipList))));
        measure("rocksdb_write_cache", Box::new(our_value(rocks_cached())));
    }
    group.finish();
}

/// Resident set size of this process, from `/proc/self/statm` (Linux), in bytes.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Memory per million value-state entries (i64 → i64): RSS growth while building, heap backend
/// beside a raw fast-hash `HashMap`. Run first, before other workloads grow the process.
fn memory() {
    let entries = support::scaled(1_000_000);
    let per_million =
        |before: u64, after: u64| (after.saturating_sub(before)) as f64 * 1e6 / entries as f64;
    let Some(start) = rss_bytes() else {
        println!("memory: /proc/self/statm unavailable, skipped");
        return;
    };
    let mut raw = hashbrown::HashMap::new();
    for k in 0..entries as i64 {
        raw.insert(k, k);
    }
    let raw_rss = rss_bytes().unwrap_or(start);
    let mut heap_store = our_value(heap());
    let before = rss_bytes().unwrap_or(raw_rss);
    for k in 0..entries as i64 {
        heap_store.put(k, k);
    }
    let after = rss_bytes().unwrap_or(before);
    println!("\n== memory: RSS growth per 1,000,000 value entries (i64 -> i64)");
    println!(
        "HashMap (fast hash)   {:>8.1} MiB",
        per_million(start, raw_rss) / (1 << 20) as f64
    );
    println!(
        "heap backend          {:>8.1} MiB",
        per_million(before, after) / (1 << 20) as f64
    );
    black_box((&raw, &heap_store.b));
}

fn main() {
    if selected("memory") {
        memory();
    }
    workloads();
    let mut c = Criterion::default().configure_from_args();
    micro(&mut c);
    c.final_summary();
}
