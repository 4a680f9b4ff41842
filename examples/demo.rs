//! The whole lifecycle of `statebackend` in one job: keyed state on several parallel RocksDB
//! instances, periodic incremental checkpoints, an injected crash with restore, and a
//! savepoint restored into the heap backend at another parallelism. Every step is checked.
//!
//! ```text
//! cargo run --example demo                      # about a minute on 2 cores
//! cargo run --example demo -- --events 50000    # a quick run
//! cargo run --example demo -- --dir /tmp/demo   # keep checkpoints and savepoint for statectl
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use statebackend::checkpoint::{
    CheckpointCoordinator, InstanceMetadata, RestoreMode, UploadStats, restore_instance,
};
use statebackend::savepoint::{complete_savepoint, read_savepoint, restore_savepoint};
use statebackend::storage::{CheckpointStorage, LocalDirStorage};
use statebackend::{
    AnyBackend, BackendConfig, BackendKind, KeyGroupRange, KeyedStateBackend, ListState,
    ListStateDescriptor, MapState, MapStateDescriptor, ReducingState, ReducingStateDescriptor,
    Result, ValueState, ValueStateDescriptor,
};

const MAX_PARALLELISM: u32 = 128;
const USERS: u64 = 20_000;
const PAGES: u64 = 50;
/// Events per tumbling window (the window namespace of the map and list states).
const WINDOW: u64 = 10_000;

struct Options {
    events: u64,
    instances: u32,
    restore_instances: u32,
    checkpoints: u64,
    dir: Option<PathBuf>,
}

fn parse_args() -> std::result::Result<Options, String> {
    let mut o = Options {
        events: 1_500_000,
        instances: 4,
        restore_instances: 3,
        checkpoints: 8,
        dir: None,
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
            "-h" | "--help" => {
                return Err(
                    "usage: demo [--events N] [--instances P] [--restore-instances Q] \
                            [--checkpoints C] [--dir DIR]"
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

/// One generated event: a user viewed a page at a time.
#[derive(Clone, Copy)]
struct Event {
    user: u64,
    page: u16,
    time: u64,
}

/// The event at position `i` of the stream: a pure function, so a restored job replays
/// exactly the events after its checkpoint.
fn event(i: u64) -> Event {
    let mut z = i
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // Skewed users: a quarter of the events come from 1% of the users.
    let user = if z % 4 == 0 {
        (z >> 8) % (USERS / 100)
    } else {
        (z >> 8) % USERS
    };
    Event {
        user,
        page: ((z >> 40) % PAGES) as u16,
        time: i,
    }
}

/// The job's state handles on one instance.
struct Operator {
    backend: AnyBackend,
    events: ValueState<u64, (), u64>,
    views: MapState<u64, u64, u16, u32>,
    recent: ListState<u64, u64, u16>,
    last_seen: ReducingState<u64, (), u64>,
}

impl Operator {
    fn new(mut backend: AnyBackend) -> Result<Self> {
        Ok(Self {
            events: backend.value_state(&ValueStateDescriptor::new("events-per-user"))?,
            views: backend.map_state(&MapStateDescriptor::new("page-views-per-window"))?,
            recent: backend.list_state(&ListStateDescriptor::new("pages-in-window"))?,
            last_seen: backend.reducing_state(&ReducingStateDescriptor::new(
                "last-seen",
                |a: &u64, b: &u64| *a.max(b),
            ))?,
            backend,
        })
    }

    fn process(&mut self, e: Event) -> Result<()> {
        let b = &mut self.backend;
        let window = e.time / WINDOW;
        let n = self.events.get(b, &e.user, &())?.unwrap_or(0);
        self.events.put(b, &e.user, &(), n + 1)?;
        let v = self.views.get(b, &e.user, &window, &e.page)?.unwrap_or(0);
        self.views.put(b, &e.user, &window, e.page, v + 1)?;
        self.recent.append(b, &e.user, &window, e.page)?;
        self.last_seen.add(b, &e.user, &(), e.time)
    }
}

/// Per user: events, last seen, page views summed over windows, list entries over windows.
type Summary = BTreeMap<u64, (u64, u64, u64, u64)>;

fn summarize(ops: &[Operator]) -> Result<Summary> {
    let mut out = Summary::new();
    for op in ops {
        let b = &op.backend;
        for item in b.keys::<u64, ()>(op.events.id(), None)? {
            let (user, ()) = item?;
            let entry = out.entry(user).or_default();
            entry.0 = op.events.get(b, &user, &())?.unwrap_or(0);
            entry.1 = op.last_seen.get(b, &user, &())?.unwrap_or(0);
        }
        for item in b.keys::<u64, u64>(op.views.id(), None)? {
            let (user, window) = item?;
            let mut views = 0u64;
            for e in op.views.entries(b, &user, &window)? {
                views += u64::from(e?.1);
            }
            let listed = op.recent.get(b, &user, &window)?.len() as u64;
            let entry = out.entry(user).or_default();
            entry.2 += views;
            entry.3 += listed;
        }
    }
    Ok(out)
}

fn ranges(parallelism: u32) -> Result<Vec<KeyGroupRange>> {
    (0..parallelism)
        .map(|i| KeyGroupRange::for_operator(MAX_PARALLELISM, parallelism, i))
        .collect()
}

fn config(kind: BackendKind, range: KeyGroupRange) -> BackendConfig {
    let mut c = BackendConfig::heap(MAX_PARALLELISM, range);
    c.kind = kind;
    c
}

/// Runs events `from..to` through the operators, routing each by its key group.
fn run(ops: &mut [Operator], parallelism: u32, from: u64, to: u64) -> Result<()> {
    for i in from..to {
        let e = event(i);
        let group = ops[0].backend.key_group_of(&e.user)?;
        let index = KeyGroupRange::operator_for_key_group(MAX_PARALLELISM, parallelism, group)?;
        ops[index as usize].process(e)?;
    }
    Ok(())
}

/// A checkpoint whose uploads run on background threads while processing continues.
struct InFlight {
    id: u64,
    offset: u64,
    sync_pause: Duration,
    uploads: Vec<JoinHandle<Result<(InstanceMetadata, UploadStats, Duration)>>>,
}

fn start_checkpoint(
    ops: &mut [Operator],
    coordinator: &mut CheckpointCoordinator,
    offset: u64,
) -> Result<InFlight> {
    let id = coordinator.next_checkpoint_id();
    coordinator.begin(id)?;
    let started = Instant::now();
    let mut pending = Vec::new();
    for op in ops.iter_mut() {
        pending.push(op.backend.snapshot(id)?);
    }
    let sync_pause = started.elapsed();
    let uploads = pending
        .into_iter()
        .map(|p| {
            let storage = Arc::clone(coordinator.storage());
            std::thread::spawn(move || {
                let t = Instant::now();
                let (meta, stats) = p.upload(storage.as_ref())?;
                Ok((meta, stats, t.elapsed()))
            })
        })
        .collect();
    Ok(InFlight {
        id,
        offset,
        sync_pause,
        uploads,
    })
}

fn finish_checkpoint(
    flight: InFlight,
    ops: &mut [Operator],
    coordinator: &mut CheckpointCoordinator,
    offsets: &mut HashMap<u64, u64>,
) -> Result<()> {
    let mut instances = Vec::new();
    let mut stats = UploadStats::default();
    let mut async_time = Duration::ZERO;
    for handle in flight.uploads {
        let (meta, s, t) = handle.join().expect("upload thread panicked")?;
        stats.add(&s);
        async_time = async_time.max(t);
        instances.push(meta);
    }
    let meta = coordinator.complete(flight.id, instances)?.clone();
    for op in ops.iter_mut() {
        // Each instance gets its own part (`complete` orders parts by key group).
        let id = op.backend.instance_id();
        let part = meta.instances.iter().find(|i| i.instance_id == id);
        let part = part.expect("every instance is in the checkpoint");
        op.backend.notify_checkpoint_complete(part)?;
    }
    offsets.insert(flight.id, flight.offset);
    println!(
        "  {:>4} {:>12} {:>14} {:>9} {:>9} {:>10.1} {:>11.1}",
        flight.id,
        human(meta.total_bytes()),
        human(stats.bytes_uploaded),
        stats.files_uploaded,
        stats.files_reused,
        flight.sync_pause.as_secs_f64() * 1e3,
        async_time.as_secs_f64() * 1e3,
    );
    Ok(())
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
    let mut reference: Vec<Operator> = ranges(p)?
        .into_iter()
        .map(|r| AnyBackend::open(&config(BackendKind::Heap, r)).and_then(Operator::new))
        .collect::<Result<_>>()?;
    run(&mut reference, p, 0, o.events)?;
    let expected = summarize(&reference)?;
    drop(reference);
    println!(
        "\n1. reference run on the heap backend: {} users in {:.1} s",
        expected.len(),
        t.elapsed().as_secs_f64()
    );

    // 2. The job on RocksDB with periodic incremental checkpoints and a crash.
    println!("\n2. RocksDB job with incremental checkpoints (uploads overlap processing)");
    println!(
        "  {:>4} {:>12} {:>14} {:>9} {:>9} {:>10} {:>11}",
        "id", "state size", "uploaded", "files up", "reused", "sync ms", "async ms"
    );
    let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(&root)?);
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 3)?;
    let mut ops: Vec<Operator> = ranges(p)?
        .into_iter()
        .map(|r| AnyBackend::open(&config(BackendKind::RocksDb, r)).and_then(Operator::new))
        .collect::<Result<_>>()?;
    let interval = o.events / (o.checkpoints + 1);
    let crash_at = interval * (o.checkpoints / 2) + interval / 2;
    let mut offsets = HashMap::new();
    let mut position = 0;
    let mut in_flight: Option<InFlight> = None;
    let mut crashed = false;
    while position < o.events {
        let next_checkpoint = (position / interval + 1) * interval;
        let stop = next_checkpoint.min(o.events);
        if !crashed && position < crash_at && crash_at < stop {
            run(&mut ops, p, position, crash_at)?;
            // 3. The crash: the process dies; in-flight uploads never complete.
            println!("  -- crash at event {crash_at}: every instance and the coordinator are lost");
            if let Some(flight) = in_flight.take() {
                for u in flight.uploads {
                    let _ = u.join();
                }
            }
            drop(ops);
            drop(coordinator);
            crashed = true;
            coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 3)?;
            let latest = coordinator
                .latest()
                .ok_or("no completed checkpoint to restore")?
                .clone();
            let t = Instant::now();
            ops = ranges(p)?
                .into_iter()
                .map(|r| {
                    restore_instance(
                        storage.as_ref(),
                        &latest,
                        &config(BackendKind::RocksDb, r),
                        RestoreMode::Claim,
                    )
                    .and_then(Operator::new)
                })
                .collect::<Result<_>>()?;
            position = offsets[&latest.id];
            println!(
                "  -- restored checkpoint {} in {:.0} ms; replaying from event {position}",
                latest.id,
                t.elapsed().as_secs_f64() * 1e3
            );
            continue;
        }
        run(&mut ops, p, position, stop)?;
        position = stop;
        if let Some(flight) = in_flight.take() {
            finish_checkpoint(flight, &mut ops, &mut coordinator, &mut offsets)?;
        }
        if position < o.events {
            in_flight = Some(start_checkpoint(&mut ops, &mut coordinator, position)?);
        }
    }
    if let Some(flight) = in_flight.take() {
        finish_checkpoint(flight, &mut ops, &mut coordinator, &mut offsets)?;
    }
    let after_crash = summarize(&ops)?;
    println!("\n3. exactly-once check after crash and restore");
    check(
        &format!(
            "RocksDB job with a crash == heap reference run ({} users)",
            after_crash.len()
        ),
        after_crash == expected,
    )?;

    // 4. Savepoint, restored into the heap backend at another parallelism.
    let q = o.restore_instances;
    println!("\n4. savepoint of {p} RocksDB instances, restored into {q} heap instances");
    let sp_storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(&savepoint_dir)?);
    let t = Instant::now();
    let mut written = Vec::new();
    for op in ops.iter_mut() {
        written.push(op.backend.savepoint()?.write(sp_storage.as_ref())?);
    }
    let meta = complete_savepoint(sp_storage.as_ref(), written)?;
    println!(
        "  savepoint: {} in {} files, written in {:.0} ms ({})",
        human(meta.total_bytes()),
        meta.files().count(),
        t.elapsed().as_secs_f64() * 1e3,
        savepoint_dir.display()
    );
    drop(ops);
    let meta = read_savepoint(sp_storage.as_ref())?;
    let t = Instant::now();
    let restored: Vec<Operator> = ranges(q)?
        .into_iter()
        .map(|r| {
            restore_savepoint(sp_storage.as_ref(), &meta, &config(BackendKind::Heap, r))
                .and_then(Operator::new)
        })
        .collect::<Result<_>>()?;
    println!(
        "  restored into {q} heap instances in {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    for (i, op) in restored.iter().enumerate() {
        let range = op.backend.key_group_range();
        let mut own = true;
        for item in op.backend.keys::<u64, ()>(op.events.id(), None)? {
            let (user, ()) = item?;
            own &= range.contains(op.backend.key_group_of(&user)?);
        }
        check(
            &format!("heap instance {i} holds only its key groups {range}"),
            own,
        )?;
    }
    check(
        "rescaled heap state == reference run",
        summarize(&restored)? == expected,
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
