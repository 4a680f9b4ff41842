//! The demo's job as a benchmark: events per second of the whole per-event path (key context,
//! value, map, list and reducing state updated, a timer registered) and of closing windows
//! (a map iterated and a list cleared per user and window, by event-time timers), on 4
//! instances of 128 key groups, for the heap backend and the RocksDB backend with and without
//! the write-back cache. No checkpoint is taken: the checkpoint benchmarks measure those.
//!
//! 1,500,000 events (the demo's default) at full scale; `STATEBACKEND_BENCH_SCALE` scales it.
//! The three subjects must end in the same state (checked), so the figures compare the same
//! work.

#[path = "../examples/demo/job.rs"]
#[allow(dead_code)]
mod job;
#[path = "support/mod.rs"]
mod support;

use std::time::Instant;

use job::{Job, MAX_PARALLELISM, Summary};
use statebackend::{AnyBackend, BackendConfig, BackendKind, KeyGroupRange, RocksDbOptions};

const INSTANCES: u32 = 4;

/// Runs `events` events on a job of `INSTANCES` instances opened with `options` (RocksDB) or on
/// the heap; returns events per second and the final state.
fn run(kind: BackendKind, options: RocksDbOptions, events: u64) -> (f64, Summary) {
    let backends: Vec<AnyBackend> = (0..INSTANCES)
        .map(|i| {
            let range = KeyGroupRange::for_operator(MAX_PARALLELISM, INSTANCES, i).unwrap();
            let mut config = BackendConfig::heap(MAX_PARALLELISM, range);
            config.kind = kind;
            config.rocksdb = options.clone();
            AnyBackend::open(&config).unwrap()
        })
        .collect();
    let mut job = Job::new(backends).unwrap();
    let started = Instant::now();
    job.run(0, events).unwrap();
    let rate = events as f64 / started.elapsed().as_secs_f64();
    (rate, job.summarize().unwrap())
}

fn main() {
    let events = support::scaled(1_500_000);
    let (heap, expected) = run(BackendKind::Heap, RocksDbOptions::default(), events);
    let cached_options = RocksDbOptions::default();
    let uncached_options = RocksDbOptions {
        write_cache_bytes: 0,
        ..RocksDbOptions::default()
    };
    let (cached, state) = run(BackendKind::RocksDb, cached_options, events);
    assert!(
        state == expected,
        "RocksDB with the write cache: another state"
    );
    let (uncached, state) = run(BackendKind::RocksDb, uncached_options, events);
    assert!(
        state == expected,
        "RocksDB without the write cache: another state"
    );
    println!(
        "job ({events} events, {INSTANCES} instances): heap {heap:.0} events/s; RocksDB with the \
         write cache {cached:.0} events/s ({:.2}x the heap's time), without {uncached:.0} \
         events/s ({:.2}x); the cache {}",
        heap / cached,
        heap / uncached,
        if cached >= uncached {
            format!("speeds the RocksDB job up {:.2}x", cached / uncached)
        } else {
            format!("SLOWS the RocksDB job down {:.2}x", uncached / cached)
        }
    );
}
