//! The whole lifecycle of `statebackend` in one job: keyed state on several parallel RocksDB
//! instances, tumbling windows closed by event-time timers, the source position in operator
//! state, incremental checkpoints run by the checkpoint driver while the job keeps processing,
//! a crash in the middle of a checkpoint with restore, and a savepoint restored into the heap
//! backend at another parallelism. Every step is checked against a run without a crash.
//!
//! ```text
//! cargo run --example demo                      # about 30 s on 2 cores
//! cargo run --example demo -- --events 50000    # a quick run
//! cargo run --example demo -- --dir /tmp/demo   # keep checkpoints and savepoint for statectl
//! ```

mod job;

use job::{Job, MAX_PARALLELISM, USERS};

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use statebackend::checkpoint::{
    CheckpointCoordinator, RestoreMode, latest_restorable, restore_instance,
};
use statebackend::savepoint::{complete_savepoint, read_savepoint, restore_savepoint};
use statebackend::storage::{CheckpointStorage, LocalDirStorage};
use statebackend::{
    AnyBackend, BackendConfig, BackendKind, CheckpointDriver, CheckpointReport, DriverOptions,
    KeyGroupRange, KeyedStateBackend, Result,
};

struct Options {
    events: u64,
    instances: u32,
    restore_instances: u32,
    checkpoints: u64,
    dir: Option<PathBuf>,
    /// The RocksDB instances' write-back cache, MiB (`RocksDbOptions::write_cache_bytes`).
    #[cfg_attr(not(feature = "rocksdb"), allow(dead_code))]
    write_cache_mib: usize,
}

#[cfg(feature = "rocksdb")]
fn default_write_cache_mib() -> usize {
    statebackend::RocksDbOptions::default().write_cache_bytes >> 20
}

#[cfg(not(feature = "rocksdb"))]
fn default_write_cache_mib() -> usize {
    0
}

fn parse_args() -> std::result::Result<Options, String> {
    let mut o = Options {
        events: 1_500_000,
        instances: 4,
        restore_instances: 3,
        checkpoints: 8,
        dir: None,
        write_cache_mib: default_write_cache_mib(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--events" => o.events = value()?.parse().map_err(|e| format!("--events: {e}"))?,
            "--instances" => {
                o.instances = value()?.parse().map_err(|e| format!("--instances: {e}"))?
            }
            "--restore-instances" => {
                o.restore_instances = value()?
                    .parse()
                    .map_err(|e| format!("--restore-instances: {e}"))?
            }
            "--checkpoints" => {
                o.checkpoints = value()?
                    .parse()
                    .map_err(|e| format!("--checkpoints: {e}"))?
            }
            "--dir" => o.dir = Some(PathBuf::from(value()?)),
            "--write-cache-mib" => {
                o.write_cache_mib = value()?
                    .parse()
                    .map_err(|e| format!("--write-cache-mib: {e}"))?
            }
            "-h" | "--help" => {
                return Err(
                    "usage: demo [--events N] [--instances P] [--restore-instances Q] \
                            [--checkpoints C] [--dir DIR] [--write-cache-mib M (0: off)]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if o.instances == 0
        || o.restore_instances == 0
        || o.checkpoints == 0
        || o.events < o.checkpoints * 2
    {
        return Err("instances, restore instances and checkpoints must be positive, events ≥ 2 × checkpoints".into());
    }
    Ok(o)
}

fn ranges(parallelism: u32) -> Result<Vec<KeyGroupRange>> {
    (0..parallelism)
        .map(|i| KeyGroupRange::for_operator(MAX_PARALLELISM, parallelism, i))
        .collect()
}

fn config(kind: BackendKind, range: KeyGroupRange, o: &Options) -> BackendConfig {
    let mut c = BackendConfig::heap(MAX_PARALLELISM, range);
    c.kind = kind;
    #[cfg(feature = "rocksdb")]
    {
        c.rocksdb.write_cache_bytes = o.write_cache_mib << 20;
    }
    #[cfg(not(feature = "rocksdb"))]
    let _ = o;
    c
}

fn print_checkpoint(report: &CheckpointReport, driver: &CheckpointDriver) {
    let size = driver.coordinator().latest().map_or(0, |m| m.total_bytes());
    println!(
        "  {:>4} {:>12} {:>14} {:>9} {:>9} {:>10.1} {:>11.1}",
        report.id,
        human(size),
        human(report.stats.bytes_uploaded),
        report.stats.files_uploaded,
        report.stats.files_reused,
        report.sync_pause.as_secs_f64() * 1e3,
        report.upload_time.as_secs_f64() * 1e3,
    );
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn check(what: &str, ok: bool) -> std::result::Result<(), String> {
    println!("  [{}] {what}", if ok { "ok" } else { "FAILED" });
    if ok {
        Ok(())
    } else {
        Err(format!("self-check failed: {what}"))
    }
}

fn demo(o: &Options) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let tmp = tempfile::tempdir()?;
    let base = o.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let root = base.join("checkpoints");
    let savepoint_dir = base.join("savepoints").join("sp-final");
    let p = o.instances;
    println!(
        "statebackend demo: {} events, {} users, {p} RocksDB instances, {MAX_PARALLELISM} key groups",
        o.events, USERS
    );
    println!("  checkpoint root: {}", root.display());

    // 1. Reference run: the same events on the heap backend, no checkpoints, no crash.
    let t = Instant::now();
    let mut reference = Job::new(
        ranges(p)?
            .into_iter()
            .map(|r| AnyBackend::open(&config(BackendKind::Heap, r, o)))
            .collect::<Result<_>>()?,
    )?;
    reference.run(0, o.events)?;
    let expected = reference.summarize()?;
    drop(reference);
    println!(
        "\n1. reference run on the heap backend: {} users in {:.1} s",
        expected.len(),
        t.elapsed().as_secs_f64()
    );

    // 2. The job on RocksDB, checkpointed by the driver while it keeps processing.
    println!("\n2. RocksDB job with incremental checkpoints (uploads overlap processing)");
    println!(
        "  {:>4} {:>12} {:>14} {:>9} {:>9} {:>10} {:>11}",
        "id", "state size", "uploaded", "files up", "reused", "sync ms", "async ms"
    );
    let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(&root)?);
    let open_driver = || -> Result<CheckpointDriver> {
        Ok(CheckpointDriver::new(
            CheckpointCoordinator::open(Arc::clone(&storage), 3)?,
            DriverOptions::default(),
        ))
    };
    let mut driver = open_driver()?;
    let mut job = Job::new(
        ranges(p)?
            .into_iter()
            .map(|r| AnyBackend::open(&config(BackendKind::RocksDb, r, o)))
            .collect::<Result<_>>()?,
    )?;
    let interval = o.events / (o.checkpoints + 1);
    let crash_at = interval * (o.checkpoints / 2) + interval / 2;
    let mut position = 0;
    let mut crashed = false;
    while position < o.events {
        let next_checkpoint = (position / interval + 1) * interval;
        let stop = next_checkpoint.min(o.events);
        if !crashed && position < crash_at && crash_at < stop {
            job.run(position, crash_at)?;
            // The crash: the process dies with a checkpoint in flight, which never completes.
            println!(
                "  -- crash at event {crash_at}, checkpoint {} in flight: every instance and the coordinator are lost",
                driver
                    .in_flight()
                    .map_or("none".into(), |id| id.to_string())
            );
            drop(job);
            drop(driver);
            crashed = true;
            // What to restore, found without touching the root; then the root's coordinator.
            let latest = latest_restorable(storage.as_ref())?;
            driver = open_driver()?;
            let t = Instant::now();
            job = Job::new(
                ranges(p)?
                    .into_iter()
                    .map(|r| {
                        let mut config = config(BackendKind::RocksDb, r, o);
                        config.replace_existing = true;
                        restore_instance(storage.as_ref(), &latest, &config, RestoreMode::Claim)
                    })
                    .collect::<Result<_>>()?,
            )?;
            // The source resumes where the checkpoint says: its position is operator state.
            position = job.position()?;
            println!(
                "  -- restored checkpoint {} in {:.0} ms; replaying from event {position}",
                latest.id,
                t.elapsed().as_secs_f64() * 1e3
            );
            continue;
        }
        job.run(position, stop)?;
        position = stop;
        if driver.in_flight().is_some() {
            let report = driver.finish(&mut job.backends)?;
            print_checkpoint(&report, &driver);
        }
        if position < o.events {
            job.set_position(position)?;
            driver.trigger(&mut job.backends)?;
        }
    }
    if driver.in_flight().is_some() {
        let report = driver.finish(&mut job.backends)?;
        print_checkpoint(&report, &driver);
    }
    let after_crash = job.summarize()?;
    println!("\n3. exactly-once check after crash and restore");
    check(
        &format!(
            "RocksDB job with a crash == heap reference run ({} users, {} windows closed by timers)",
            after_crash.len(),
            after_crash.values().map(|u| u.4.0).sum::<u64>()
        ),
        after_crash == expected,
    )?;

    // 4. Savepoint, restored into the heap backend at another parallelism. The source has
    // consumed every event: the savepoint records that position, not the last checkpoint's, so
    // a job started from it processes nothing twice.
    job.set_position(position)?;
    let q = o.restore_instances;
    println!("\n4. savepoint of {p} RocksDB instances, restored into {q} heap instances");
    let sp_storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(&savepoint_dir)?);
    let t = Instant::now();
    let mut written = Vec::new();
    for b in job.backends.iter_mut() {
        written.push(b.savepoint()?.write(sp_storage.as_ref())?);
    }
    let meta = complete_savepoint(sp_storage.as_ref(), written)?;
    println!(
        "  savepoint: {} in {} files, written in {:.0} ms ({})",
        human(meta.total_bytes()),
        meta.files().count(),
        t.elapsed().as_secs_f64() * 1e3,
        savepoint_dir.display()
    );
    drop(job);
    let meta = read_savepoint(sp_storage.as_ref())?;
    let t = Instant::now();
    let mut restored = Job::new(
        ranges(q)?
            .into_iter()
            .map(|r| {
                restore_savepoint(sp_storage.as_ref(), &meta, &config(BackendKind::Heap, r, o))
            })
            .collect::<Result<_>>()?,
    )?;
    println!(
        "  restored into {q} heap instances in {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    for (i, (b, h)) in restored.backends.iter().zip(&restored.handles).enumerate() {
        let range = b.key_group_range();
        let mut own = true;
        for item in b.keys::<u64, ()>(h.events.id(), None)? {
            let (user, ()) = item?;
            own &= range.contains(b.key_group_of(&user)?);
        }
        check(
            &format!("heap instance {i} holds only its key groups {range}"),
            own,
        )?;
    }
    check(
        "rescaled heap state == reference run",
        restored.summarize()? == expected,
    )?;
    // Counted apart from the source's bookkeeping: the events the reference run processed,
    // one per count in its per-user event counts.
    let processed: u64 = expected.values().map(|user| user.0).sum();
    let restored_position = restored.position()?;
    check(
        &format!(
            "the source position came through the savepoint, in operator state: \
             {restored_position} == {processed} events processed"
        ),
        restored_position == processed,
    )?;
    println!("\ndone in {:.1} s", started.elapsed().as_secs_f64());
    if o.dir.is_some() {
        println!(
            "inspect with: statectl list {} ; statectl verify {}",
            base.display(),
            base.display()
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match demo(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}
