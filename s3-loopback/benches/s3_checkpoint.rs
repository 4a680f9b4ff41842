//! W5 (`../shared/WORKLOADS.md`) on the S3 protocol beside a local directory: a value state of
//! 1,000,000 keys × 100 bytes, a full first checkpoint, then rounds of 10,000 updates each
//! followed by a checkpoint, then a restore from the last checkpoint. For each storage: bytes
//! uploaded and downloaded, requests by kind, upload and restore time and MB/s. The loopback S3
//! server runs twice, with one file of a checkpoint in flight at a time and with 8, which shows
//! what concurrent transfers buy; `STATEBACKEND_BENCH_S3_LATENCY_MS` adds a per-request delay
//! (a remote store's round trip) to the server.
//!
//! Every run also keeps a local copy of each checkpoint (local recovery) and restores the last
//! checkpoint a second time from it, downloading only what the copy lacks: the two restore
//! times side by side.
//!
//! Backends: heap (full checkpoints, one file per instance), and RocksDB (incremental, many
//! files) when built with `--features rocksdb`. `STATEBACKEND_BENCH_SCALE` scales the key
//! count, `STATEBACKEND_BENCH_ROUNDS` the rounds (default 5).

#[path = "../../benches/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use statebackend::checkpoint::local_recovery::{LocalRecovery, RecoveryStats};
use statebackend::checkpoint::{CheckpointCoordinator, RestoreMode, restore_instance};
use statebackend::storage::{CheckpointStorage, LocalDirStorage};
use statebackend::{
    AnyBackend, BackendConfig, BackendKind, KeyGroupRange, KeyedStateBackend, ValueState,
    ValueStateDescriptor,
};
use statebackend_s3_loopback::{LoopbackS3, RequestCounts};
use support::{SplitMix64, env_u64, scaled, w5_value};

/// Where a run keeps its checkpoints.
enum Target {
    Local,
    S3 { concurrency: usize },
}

struct Outcome {
    uploaded: u64,
    upload_time: Duration,
    restore_time: Duration,
    restored_bytes: u64,
    requests: Option<(RequestCounts, RequestCounts)>,
    local_restore_time: Duration,
    local: RecoveryStats,
}

fn run(kind: BackendKind, target: &Target, keys: u64, rounds: u64, latency: Duration) -> Outcome {
    let tmp = tempfile::tempdir().unwrap();
    let server = match target {
        Target::Local => None,
        Target::S3 { .. } => {
            let server = LoopbackS3::start().unwrap();
            server.set_latency(latency);
            Some(server)
        }
    };
    let storage: Arc<dyn CheckpointStorage> = match (target, &server) {
        (Target::S3 { concurrency }, Some(server)) => Arc::new(
            server
                .storage("w5")
                .unwrap()
                .with_transfer_concurrency(*concurrency),
        ),
        _ => Arc::new(LocalDirStorage::new(tmp.path().join("root")).unwrap()),
    };
    let all = KeyGroupRange::all(128).unwrap();
    let mut config = BackendConfig::heap(128, all);
    config.kind = kind;
    config.working_dir = Some(tmp.path().join("work"));
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 1).unwrap();
    let local = LocalRecovery::new(tmp.path().join("local-recovery")).unwrap();
    let mut b = AnyBackend::open(&config).unwrap();
    let s: ValueState<i64, (), Vec<u8>> =
        b.value_state(&ValueStateDescriptor::new("values")).unwrap();
    for k in 0..keys {
        s.put(&mut b, &(k as i64), &(), w5_value(k, 0)).unwrap();
    }
    let counts_before = server.as_ref().map(LoopbackS3::counts);
    let mut uploaded = 0;
    let mut upload_time = Duration::ZERO;
    let mut last_round = vec![0u64; keys as usize];
    let mut g = SplitMix64::new(47);
    let updates = keys / 100;
    for id in 1..=rounds + 1 {
        if id > 1 {
            for _ in 0..updates {
                let k = g.below(keys);
                s.put(&mut b, &(k as i64), &(), w5_value(k, id - 1))
                    .unwrap();
                last_round[k as usize] = id - 1;
            }
        }
        coordinator.begin(id).unwrap();
        let pending = b.snapshot(id).unwrap();
        let t = Instant::now();
        let (part, stats) = pending.upload(&local.keeping(&storage)).unwrap();
        let meta = coordinator.complete(id, vec![part]).unwrap().clone();
        upload_time += t.elapsed();
        uploaded += stats.bytes_uploaded;
        b.notify_checkpoint_complete(&meta.instances[0]).unwrap();
        local.retain(&meta).unwrap();
    }
    let counts_uploaded = server.as_ref().map(LoopbackS3::counts);
    let latest = coordinator.latest().unwrap().clone();
    drop(b);
    let mut restore_config = config.clone();
    restore_config.working_dir = Some(tmp.path().join("restored"));
    let t = Instant::now();
    let mut restored = restore_instance(
        storage.as_ref(),
        &latest,
        &restore_config,
        RestoreMode::NoClaim,
    )
    .unwrap();
    let restore_time = t.elapsed();
    let requests = match (counts_before, counts_uploaded, &server) {
        (Some(before), Some(after), Some(server)) => {
            Some((after.since(&before), server.counts().since(&after)))
        }
        _ => None,
    };
    check(&mut restored, keys, rounds, &last_round);
    drop(restored);
    // The same restore from the local copy.
    restore_config.working_dir = Some(tmp.path().join("restored-locally"));
    let t = Instant::now();
    let (mut restored, local_stats) = local
        .restore_instance(
            storage.as_ref(),
            &latest,
            &restore_config,
            RestoreMode::NoClaim,
        )
        .unwrap();
    let local_restore_time = t.elapsed();
    assert_eq!(local_stats.files_downloaded, 0, "{local_stats:?}");
    check(&mut restored, keys, rounds, &last_round);
    Outcome {
        uploaded,
        upload_time,
        restore_time,
        restored_bytes: latest.total_bytes(),
        requests,
        local_restore_time,
        local: local_stats,
    }
}

/// Checks every key of a restored W5 state.
fn check(restored: &mut AnyBackend, keys: u64, rounds: u64, last_round: &[u64]) {
    let s: ValueState<i64, (), Vec<u8>> = restored
        .value_state(&ValueStateDescriptor::new("values"))
        .unwrap();
    let mut sum = 0u64;
    for k in 0..keys {
        let v = s.get(restored, &(k as i64), &()).unwrap().unwrap();
        assert_eq!(v, w5_value(k, last_round[k as usize]), "key {k}");
        sum += v.iter().map(|b| u64::from(*b)).sum::<u64>();
    }
    if support::full_scale() && rounds == 5 {
        assert_eq!(sum, 12_750_798_814, "W5 check value");
    }
}

fn mb_per_s(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / 1e6 / time.as_secs_f64().max(1e-9)
}

fn describe(counts: &RequestCounts) -> String {
    counts
        .by_kind
        .iter()
        .map(|(kind, n)| format!("{kind:?} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    let keys = scaled(1_000_000);
    let rounds = env_u64("STATEBACKEND_BENCH_ROUNDS", 5);
    let latency = Duration::from_millis(env_u64("STATEBACKEND_BENCH_S3_LATENCY_MS", 0));
    let mut kinds = vec![BackendKind::Heap];
    if cfg!(feature = "rocksdb") {
        kinds.push(BackendKind::RocksDb);
    }
    println!(
        "== W5 on storage: {keys} keys x 100 B, {rounds} rounds of {} updates; S3 on loopback, {} ms added per request",
        keys / 100,
        latency.as_millis()
    );
    for kind in kinds {
        let mut upload_times = Vec::new();
        for (label, target) in [
            ("local directory", Target::Local),
            ("S3, 1 file at a time", Target::S3 { concurrency: 1 }),
            ("S3, 8 files at a time", Target::S3 { concurrency: 8 }),
        ] {
            let o = run(kind, &target, keys, rounds, latency);
            println!(
                "{kind} / {label}: uploaded {} B in {:.0} ms ({:.1} MB/s) over {} checkpoints; restore of {} B in {:.0} ms ({:.1} MB/s); every key verified",
                o.uploaded,
                o.upload_time.as_secs_f64() * 1e3,
                mb_per_s(o.uploaded, o.upload_time),
                rounds + 1,
                o.restored_bytes,
                o.restore_time.as_secs_f64() * 1e3,
                mb_per_s(o.restored_bytes, o.restore_time),
            );
            println!(
                "    restore from the local copy: {:.0} ms ({} files, {} B local, {} downloaded); every key verified",
                o.local_restore_time.as_secs_f64() * 1e3,
                o.local.files_local,
                o.local.bytes_local,
                o.local.files_downloaded
            );
            if let Some((up, down)) = &o.requests {
                println!(
                    "    checkpoints: {} requests ({}), {} B sent",
                    up.total(),
                    describe(up),
                    up.bytes_in
                );
                println!(
                    "    restore: {} requests ({}), {} B received",
                    down.total(),
                    describe(down),
                    down.bytes_out
                );
            }
            upload_times.push(o.upload_time);
        }
        println!(
            "{kind}: upload speedup of 8 concurrent files over 1 on S3: {:.2}x",
            upload_times[1].as_secs_f64() / upload_times[2].as_secs_f64().max(1e-9)
        );
    }
}
