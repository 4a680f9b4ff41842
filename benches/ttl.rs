//! State time to live: what it costs per operation, and whether it keeps state bounded.
//!
//! - **W1–W4 with TTL** on the heap backend and on RocksDB with the write-back cache (Flink's
//!   512 MiB budget), each beside the same workload without TTL in the same run; the ratio is
//!   TTL ÷ plain. The TTL (1 hour, processing time) never expires here: the figures are the
//!   cost of stamping, checking and cleaning up. Targets: heap ≤ 1.10×, RocksDB ≤ 1.15×.
//! - **W8**: 10,000,000 updates of a value state over a key space that drifts: update `i`
//!   writes a key drawn uniformly from a window of 10,000 keys that starts at
//!   `i × 10,000 ÷ 100,000` (each key is in the window for 1% of the run, 1,010,000 keys seen
//!   in all), with a TTL of 1% of the run in event time, the watermark being `i`. Printed ten
//!   times per backend: keys seen, entries held (heap), estimated keys and disk usage
//!   (RocksDB). Live state stays flat while the keys seen grow.
//!
//! `STATEBACKEND_BENCH_SCALE=0.01` runs a quick subset; `STATEBACKEND_BENCH_ONLY=W8` (or
//! `ops`) one part, `STATEBACKEND_BENCH_BACKENDS=heap` (or `rocksdb`) one backend.

mod support;

use std::time::Duration;

use statebackend::state::ttl::{StateTtlConfig, TtlListState, TtlMapState, TtlTime, TtlValueState};
use statebackend::{
    HeapBackend, KeyGroupRange, KeyedStateBackend, ListState, ListStateDescriptor, MapState,
    MapStateDescriptor, ValueState, ValueStateDescriptor,
};
use support::{ListStore, MapStore, Phase, SplitMix64, ValueStore, report, scaled, w1_w2, w3, w4};

/// An hour: nothing expires during the per-operation workloads.
fn hour() -> StateTtlConfig {
    StateTtlConfig::new(Duration::from_secs(3600))
}

struct Plain<B, S>(B, S);
struct Ttl<B, S>(B, S);

impl<B: KeyedStateBackend> ValueStore for Plain<B, ValueState<i64, (), i64>> {
    fn get(&mut self, k: i64) -> Option<i64> {
        self.1.get(&self.0, &k, &()).unwrap()
    }
    fn put(&mut self, k: i64, v: i64) {
        self.1.put(&mut self.0, &k, &(), v).unwrap()
    }
    fn update(&mut self, k: i64, f: &dyn Fn(Option<i64>) -> i64) {
        let key = self.0.key_context(k).unwrap();
        self.1
            .update(&mut self.0, &key, &(), |c| Some(f(c.copied())))
            .unwrap()
    }
}

impl<B: KeyedStateBackend> ValueStore for Ttl<B, TtlValueState<i64, (), i64>> {
    fn get(&mut self, k: i64) -> Option<i64> {
        self.1.get(&mut self.0, &k, &()).unwrap()
    }
    fn put(&mut self, k: i64, v: i64) {
        self.1.put(&mut self.0, &k, &(), v).unwrap()
    }
    fn update(&mut self, k: i64, f: &dyn Fn(Option<i64>) -> i64) {
        let key = self.0.key_context(k).unwrap();
        self.1
            .update(&mut self.0, &key, &(), |c| Some(f(c.copied())))
            .unwrap()
    }
}

impl<B: KeyedStateBackend> ListStore for Plain<B, ListState<i64, (), i64>> {
    fn append(&mut self, k: i64, v: i64) {
        self.1.append(&mut self.0, &k, &(), v).unwrap()
    }
    fn for_each(&mut self, k: i64, f: &mut dyn FnMut(i64)) {
        for v in self.1.get(&self.0, &k, &()).unwrap() {
            f(v)
        }
    }
}

impl<B: KeyedStateBackend> ListStore for Ttl<B, TtlListState<i64, (), i64>> {
    fn append(&mut self, k: i64, v: i64) {
        self.1.append(&mut self.0, &k, &(), v).unwrap()
    }
    fn for_each(&mut self, k: i64, f: &mut dyn FnMut(i64)) {
        for v in self.1.get(&mut self.0, &k, &()).unwrap() {
            f(v)
        }
    }
}

impl<B: KeyedStateBackend> MapStore for Plain<B, MapState<i64, (), i64, i64>> {
    fn put(&mut self, k: i64, uk: i64, v: i64) {
        self.1.put(&mut self.0, &k, &(), uk, v).unwrap()
    }
    fn get(&mut self, k: i64, uk: i64) -> Option<i64> {
        self.1.get(&self.0, &k, &(), &uk).unwrap()
    }
    fn for_each(&mut self, k: i64, f: &mut dyn FnMut(i64, i64)) {
        for e in self.1.entries(&self.0, &k, &()).unwrap() {
            let (uk, v) = e.unwrap();
            f(uk, v)
        }
    }
}

impl<B: KeyedStateBackend> MapStore for Ttl<B, TtlMapState<i64, (), i64, i64>> {
    fn put(&mut self, k: i64, uk: i64, v: i64) {
        self.1.put(&mut self.0, &k, &(), uk, v).unwrap()
    }
    fn get(&mut self, k: i64, uk: i64) -> Option<i64> {
        self.1.get(&mut self.0, &k, &(), &uk).unwrap()
    }
    fn for_each(&mut self, k: i64, f: &mut dyn FnMut(i64, i64)) {
        for (uk, v) in self.1.entries(&mut self.0, &k, &()).unwrap() {
            f(uk, v)
        }
    }
}

fn heap() -> HeapBackend {
    HeapBackend::new(128, KeyGroupRange::all(128).unwrap()).unwrap()
}

#[cfg(feature = "rocksdb")]
fn rocks() -> statebackend::RocksDbBackend {
    let options = statebackend::RocksDbOptions::with_memory_budget(512 << 20);
    statebackend::RocksDbBackend::open(128, KeyGroupRange::all(128).unwrap(), None, options)
        .unwrap()
}

/// Prints TTL ÷ plain for each phase.
fn compare(subject: &str, plain: &[Phase], ttl: &[Phase], target: f64) {
    for (p, t) in plain.iter().zip(ttl) {
        report("TTL", &format!("{subject}, plain"), p, None);
        report("TTL", &format!("{subject}, ttl"), t, Some(p));
        let ratio = t.ns_per_op() / p.ns_per_op();
        println!(
            "           {}: TTL costs {ratio:.2}x ({}; target {target:.2}x)",
            p.name,
            if ratio <= target { "met" } else { "missed" }
        );
    }
}

fn per_operation<B: KeyedStateBackend>(subject: &str, open: &dyn Fn() -> B, target: f64) {
    let mut b = open();
    let s = b.value_state(&ValueStateDescriptor::new("v")).unwrap();
    let (p1, p2, plain_check) = w1_w2(&mut Plain(b, s));
    let mut b = open();
    let s = b
        .value_state_with_ttl(&ValueStateDescriptor::new("v"), hour())
        .unwrap();
    let (t1, t2, ttl_check) = w1_w2(&mut Ttl(b, s));
    assert_eq!(
        plain_check, ttl_check,
        "{subject}: W2 reads the same with TTL"
    );
    compare(subject, &[p1, p2], &[t1, t2], target);

    let mut b = open();
    let s = b.list_state(&ListStateDescriptor::new("l")).unwrap();
    let (pa, pg, plain_check) = w3(&mut Plain(b, s));
    let mut b = open();
    let s = b
        .list_state_with_ttl(&ListStateDescriptor::new("l"), hour())
        .unwrap();
    let (ta, tg, ttl_check) = w3(&mut Ttl(b, s));
    assert_eq!(
        plain_check, ttl_check,
        "{subject}: W3 reads the same with TTL"
    );
    compare(subject, &[pa, pg], &[ta, tg], target);

    let mut b = open();
    let s = b.map_state(&MapStateDescriptor::new("m")).unwrap();
    let (plain, plain_check) = w4(&mut Plain(b, s));
    let mut b = open();
    let s = b
        .map_state_with_ttl(&MapStateDescriptor::new("m"), hour())
        .unwrap();
    let (ttl, ttl_check) = w4(&mut Ttl(b, s));
    assert_eq!(
        plain_check, ttl_check,
        "{subject}: W4 reads the same with TTL"
    );
    compare(subject, &plain, &ttl, target);
}

/// W8 on `b`; `report_size` prints what the backend holds; `checkpoint` runs at every 1% of
/// the run, as a job's checkpoints would (RocksDB: a flush, so that rows reach SST files and
/// compactions, which drop the expired ones, have something to compact).
fn w8<B: KeyedStateBackend>(
    subject: &str,
    mut b: B,
    report_size: &dyn Fn(&B) -> String,
    checkpoint: &dyn Fn(&B),
) {
    let n = scaled(10_000_000);
    let window = scaled(10_000).max(10);
    let ttl = StateTtlConfig::new(Duration::from_millis(n / 100)).with_time(TtlTime::EventTime);
    let s = b
        .value_state_with_ttl(&ValueStateDescriptor::<u64, (), u64>::new("w8"), ttl)
        .unwrap();
    let mut g = SplitMix64::new(48);
    println!(
        "\n== W8 {subject}: {n} updates, window {window} keys, ttl {} (event time)",
        n / 100
    );
    let start = std::time::Instant::now();
    for i in 0..n {
        b.ttl_clock().advance_watermark(i);
        let base = i * window * 100 / n;
        let key = base + g.below(window);
        s.update(&mut b, &key, &(), |c| Some(c.map_or(1, |c| c + 1)))
            .unwrap();
        if (i + 1) % (n / 100) == 0 {
            checkpoint(&b);
        }
        if (i + 1) % (n / 10) == 0 {
            println!(
                "W8 {subject:<22} {:>3}%  keys seen {:>9}  {}",
                (i + 1) * 100 / n,
                base + window,
                report_size(&b)
            );
        }
    }
    println!(
        "W8 {subject}: {:.0} ns per update",
        start.elapsed().as_nanos() as f64 / n as f64
    );
}

#[cfg(feature = "rocksdb")]
fn dir_bytes(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                    _ => e.metadata().map_or(0, |m| m.len()),
                })
                .sum()
        })
        .unwrap_or(0)
}

fn selected(part: &str) -> bool {
    std::env::var("STATEBACKEND_BENCH_ONLY").map_or(true, |only| only.split(',').any(|o| o == part))
}

/// Whether backend `name` runs: `STATEBACKEND_BENCH_BACKENDS` (`heap`, `rocksdb`) picks one.
fn backend(name: &str) -> bool {
    std::env::var("STATEBACKEND_BENCH_BACKENDS")
        .map_or(true, |only| only.split(',').any(|o| o == name))
}

fn main() {
    if selected("ops") {
        println!("== W1-W4 with and without TTL (ratio = ttl ÷ plain, same run)");
        if backend("heap") {
            per_operation("heap", &heap, 1.10);
        }
        #[cfg(feature = "rocksdb")]
        if backend("rocksdb") {
            per_operation("rocksdb + cache", &rocks, 1.15);
        }
    }
    if selected("W8") && backend("heap") {
        w8(
            "heap",
            heap(),
            &|b| format!("entries held {:>8}", b.entry_count()),
            &|_| {},
        );
    }
    #[cfg(feature = "rocksdb")]
    if selected("W8") && backend("rocksdb") {
        w8(
            "rocksdb + cache",
            rocks(),
            &|b| {
                let keys = b
                    .state_property("w8", "rocksdb.estimate-num-keys")
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                let cached = b.write_cache_stats().map_or(0, |s| s.rows);
                format!(
                    "estimated keys {keys:>8}  cached rows {cached:>8}  disk {:>6.1} MiB",
                    dir_bytes(b.working_dir()) as f64 / (1 << 20) as f64
                )
            },
            &|b| b.flush().unwrap(),
        );
    }
}
