//! W5: incremental checkpoints of a RocksDB state of 1,000,000 keys × 100-byte values. A full
//! first checkpoint, then rounds of 10,000 random updates (1%) each followed by a checkpoint:
//! bytes uploaded per checkpoint and amortized, as a multiple of the bytes actually changed;
//! synchronous pause; asynchronous duration; restore time. The heap backend's full snapshot of
//! the same state beside it. RocksDB runs with its default options (a 64 MiB write-back cache)
//! and again without the cache.
//!
//! `STATEBACKEND_BENCH_ROUNDS` (default 5; 20 for the amortized figures),
//! `STATEBACKEND_BENCH_UPDATE_PERCENT` (default 1), `STATEBACKEND_BENCH_SCALE` (key count),
//! `STATEBACKEND_BENCH_COMPACTION=1` also compares compaction settings (`=only`: just those).
//! `STATEBACKEND_BENCH_MEMTABLE=hash` runs the RocksDB backend with the hash memtable
//! (`Memtable::HashLinkList`, a bucket per row a 64 MiB memtable of small rows holds).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use statebackend::checkpoint::{CheckpointCoordinator, RestoreMode, UploadStats, restore_instance};
use statebackend::storage::{CheckpointStorage, LocalDirStorage};
use statebackend::{
    AnyBackend, BackendConfig, BackendKind, KeyGroupRange, KeyedStateBackend, ValueState,
    ValueStateDescriptor,
};
use support::{SplitMix64, env_u64, scaled, w5_value};

struct Round {
    id: u64,
    state_bytes: u64,
    stats: UploadStats,
    changed_bytes: u64,
    sync: Duration,
    async_: Duration,
}

fn take(
    b: &mut AnyBackend,
    coordinator: &mut CheckpointCoordinator,
    id: u64,
) -> (u64, UploadStats, Duration, Duration) {
    coordinator.begin(id).unwrap();
    let t = Instant::now();
    let pending = b.snapshot(id).unwrap();
    let sync = t.elapsed();
    let t = Instant::now();
    let (instance, stats) = pending.upload(coordinator.storage().as_ref()).unwrap();
    let async_ = t.elapsed();
    let meta = coordinator.complete(id, vec![instance]).unwrap().clone();
    b.notify_checkpoint_complete(&meta.instances[0]).unwrap();
    (meta.total_bytes(), stats, sync, async_)
}

/// Runs W5 on `config`; returns the rounds and the restore time from the last checkpoint.
fn w5(label: &str, config: &BackendConfig, rounds: u64, percent: u64) -> Vec<Round> {
    // STATEBACKEND_BENCH_W5_KEYS and _W5_UPDATES change the state size and the updates per
    // round (default 1,000,000 and `percent`% of them), to show how the synchronous pause
    // depends on state size with the amount changed per round fixed.
    let keys = env_u64("STATEBACKEND_BENCH_W5_KEYS", scaled(1_000_000));
    let updates = env_u64("STATEBACKEND_BENCH_W5_UPDATES", keys * percent / 100);
    let tmp = tempfile::tempdir().unwrap();
    let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(tmp.path()).unwrap());
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 3).unwrap();
    let mut b = AnyBackend::open(config).unwrap();
    let s: ValueState<i64, (), Vec<u8>> =
        b.value_state(&ValueStateDescriptor::new("values")).unwrap();
    let t = Instant::now();
    for k in 0..keys {
        s.put(&mut b, &(k as i64), &(), w5_value(k, 0)).unwrap();
    }
    println!(
        "{label}: built {keys} keys in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut out = Vec::new();
    let (size, stats, sync, async_) = take(&mut b, &mut coordinator, 1);
    out.push(Round {
        id: 1,
        state_bytes: size,
        stats,
        changed_bytes: keys * 100,
        sync,
        async_,
    });
    let mut last_round = vec![0u64; keys as usize];
    let mut g = SplitMix64::new(47);
    for r in 1..=rounds {
        for _ in 0..updates {
            let k = g.below(keys);
            s.put(&mut b, &(k as i64), &(), w5_value(k, r)).unwrap();
            last_round[k as usize] = r;
        }
        let (size, stats, sync, async_) = take(&mut b, &mut coordinator, r + 1);
        out.push(Round {
            id: r + 1,
            state_bytes: size,
            stats,
            changed_bytes: updates * 100,
            sync,
            async_,
        });
    }
    println!(
        "  {:>3} {:>12} {:>12} {:>8} {:>8} {:>9} {:>9} {:>10}",
        "id", "state bytes", "uploaded", "files", "reused", "x changed", "sync ms", "async ms"
    );
    for r in &out {
        println!(
            "  {:>3} {:>12} {:>12} {:>8} {:>8} {:>9.2} {:>9.1} {:>10.1}",
            r.id,
            r.state_bytes,
            r.stats.bytes_uploaded,
            r.stats.files_uploaded,
            r.stats.files_reused,
            r.stats.bytes_uploaded as f64 / r.changed_bytes as f64,
            r.sync.as_secs_f64() * 1e3,
            r.async_.as_secs_f64() * 1e3
        );
    }
    let incremental = &out[1..];
    let uploaded: u64 = incremental.iter().map(|r| r.stats.bytes_uploaded).sum();
    let changed: u64 = incremental.iter().map(|r| r.changed_bytes).sum();
    let max_sync = incremental.iter().map(|r| r.sync).max().unwrap_or_default();
    println!(
        "  amortized over {rounds} rounds of {updates} updates: uploaded {uploaded} bytes = {:.2}x the changed bytes ({:.2}% of the full state per round); max sync pause {:.1} ms",
        uploaded as f64 / changed as f64,
        100.0 * uploaded as f64 / rounds as f64 / out[0].state_bytes as f64,
        max_sync.as_secs_f64() * 1e3
    );

    // Restore from the last checkpoint, timed; full verification outside the timed part.
    let latest = coordinator.latest().unwrap().clone();
    drop(b);
    let t = Instant::now();
    let mut restored =
        restore_instance(storage.as_ref(), &latest, config, RestoreMode::Claim).unwrap();
    let restore_time = t.elapsed();
    let s: ValueState<i64, (), Vec<u8>> = restored
        .value_state(&ValueStateDescriptor::new("values"))
        .unwrap();
    let mut sum = 0u64;
    for k in 0..keys {
        let v = s.get(&restored, &(k as i64), &()).unwrap().unwrap();
        assert_eq!(v, w5_value(k, last_round[k as usize]), "key {k}");
        sum += v.iter().map(|b| u64::from(*b)).sum::<u64>();
    }
    println!(
        "  restore from checkpoint {}: {:.0} ms; every key verified",
        latest.id,
        restore_time.as_secs_f64() * 1e3
    );
    if support::full_scale() && rounds == 5 && keys == 1_000_000 && updates == 10_000 {
        assert_eq!(sum, 12_750_798_814, "W5 check value");
        println!("  check: sum of value bytes = {sum} (matches WORKLOADS.md)");
    }
    out
}

fn main() {
    // Criterion's `--bench` flag (or none, under `cargo test`) is accepted and ignored: W5 is a
    // single scripted run whose figures are bytes and pauses, not a sampled latency.
    let rounds = env_u64("STATEBACKEND_BENCH_ROUNDS", 5);
    let percent = env_u64("STATEBACKEND_BENCH_UPDATE_PERCENT", 1);
    let all = KeyGroupRange::all(128).unwrap();
    let compaction = std::env::var("STATEBACKEND_BENCH_COMPACTION").ok();
    // STATEBACKEND_BENCH_ONLY=heap: the heap backend's two ways alone.
    let heap_only = std::env::var("STATEBACKEND_BENCH_ONLY").as_deref() == Ok("heap");
    if heap_only {
        heap_full_and_chains(all, rounds, percent);
        return;
    }
    if compaction.as_deref() != Some("only") {
        default_and_heap(all, rounds, percent);
    }
    if compaction.is_some() {
        compaction_variants(all, rounds, percent);
    }
    if compaction.as_deref() != Some("only") {
        timers_pause(all);
    }
}

/// The synchronous part of a checkpoint with 1,000,000 pending timers (scaled) against none, on
/// each backend: timers are keyed state, so the pause should follow the state, not the count.
fn timers_pause(all: KeyGroupRange) {
    let timers = scaled(1_000_000);
    println!(
        "\n== timers: synchronous part of a checkpoint with {timers} pending event-time timers"
    );
    for (kind, write_cache) in [
        (BackendKind::Heap, false),
        (BackendKind::RocksDb, true),
        (BackendKind::RocksDb, false),
    ] {
        let mut config = BackendConfig::heap(128, all);
        config.kind = kind;
        if !write_cache {
            config.rocksdb.write_cache_bytes = 0;
        }
        let kind = match (kind, write_cache) {
            (BackendKind::RocksDb, false) => "rocksdb, no cache".to_owned(),
            _ => kind.to_string(),
        };
        for count in [0, timers] {
            let mut b = AnyBackend::open(&config).unwrap();
            let mut service =
                statebackend::TimerService::<u64, u64>::new(&mut b, "windows").unwrap();
            let t = Instant::now();
            for i in 0..count {
                service
                    .register_event_time_timer(&mut b, &(i % 100_000), &(i / 100_000), i as i64)
                    .unwrap();
            }
            let registered = t.elapsed();
            let tmp = tempfile::tempdir().unwrap();
            let storage: Arc<dyn CheckpointStorage> =
                Arc::new(LocalDirStorage::new(tmp.path()).unwrap());
            let mut coordinator = CheckpointCoordinator::open(storage, 1).unwrap();
            let (_, _, sync, async_) = take(&mut b, &mut coordinator, 1);
            assert_eq!(service.pending().0 as u64, count);
            println!(
                "{kind:<17} {count:>8} timers: sync {:>8.2} ms, async {:>8.1} ms, registering {:>6.0} ns/timer",
                sync.as_secs_f64() * 1e3,
                async_.as_secs_f64() * 1e3,
                registered.as_nanos() as f64 / count.max(1) as f64
            );
        }
    }
}

/// W5 with the default options on RocksDB, then without the write-back cache, and the heap
/// backend's full snapshots beside them.
fn default_and_heap(all: KeyGroupRange, rounds: u64, percent: u64) {
    println!("== W5 checkpoints, RocksDB backend (default options)");
    let mut rocksdb = BackendConfig::rocksdb(128, all);
    if std::env::var("STATEBACKEND_BENCH_MEMTABLE").as_deref() == Ok("hash") {
        println!("(hash memtable)");
        rocksdb.rocksdb.memtable = statebackend::rocks::Memtable::HashLinkList { buckets: 1 << 20 };
    }
    w5("rocksdb", &rocksdb, rounds, percent);
    println!("\n== W5 checkpoints, RocksDB backend without the write-back cache");
    rocksdb.rocksdb.write_cache_bytes = 0;
    w5("rocksdb", &rocksdb, rounds, percent);
    heap_full_and_chains(all, rounds, percent);
}

/// W5 on the heap backend: full snapshots (3 rounds at most: each uploads the whole state),
/// then incremental checkpoints (chains of a base and deltas).
fn heap_full_and_chains(all: KeyGroupRange, rounds: u64, percent: u64) {
    println!("\n== W5 checkpoints, heap backend (full snapshots)");
    let mut heap = BackendConfig::heap(128, all);
    heap.kind = BackendKind::Heap;
    w5("heap", &heap, rounds.min(3), percent);
    println!("\n== W5 checkpoints, heap backend (incremental: a base and deltas)");
    heap.heap_chains = Some(statebackend::backends::incremental_snapshot::ChainPolicy::default());
    w5("heap chains", &heap, rounds, percent);
}

/// W5 under other compaction settings, to choose the default from.
fn compaction_variants(all: KeyGroupRange, rounds: u64, percent: u64) {
    use statebackend::rocks::CompactionStyle;
    {
        for (style, target_mb, trigger) in [
            // Leveled with 32 MiB files and trigger 4 was the default before W5 chose universal.
            (CompactionStyle::Level, 32u64, 4),
            (CompactionStyle::Level, 8, 4),
            (CompactionStyle::Level, 64, 4),
            (CompactionStyle::Level, 32, 16),
            (CompactionStyle::Universal, 32, 4),
        ] {
            let mut c = BackendConfig::rocksdb(128, all);
            c.rocksdb.compaction_style = style;
            c.rocksdb.target_file_size_bytes = target_mb << 20;
            c.rocksdb.level0_compaction_trigger = trigger;
            println!(
                "\n== W5 with {style:?} compaction, {target_mb} MiB target files, level-0 trigger {trigger}"
            );
            w5("rocksdb", &c, rounds, percent);
        }
    }
}
