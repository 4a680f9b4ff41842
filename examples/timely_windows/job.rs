//! The job of the `timely_windows` example, shared with its cluster test: a deterministic,
//! replayable source of page views; a keyed operator counting views per user in tumbling
//! event-time windows (closed by timers); a second keyed operator, keyed by window, totalling
//! each window over every user (records cross workers between the two); and an exactly-once
//! sink that writes both operators' results into files, committed with the checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use statebackend::state::key::KeyContext;
use statebackend::storage::{CheckpointStorage, LocalDirStorage};
use statebackend::timely::{
    Checkpointing, CommitReport, Context, FINAL_CHECKPOINT_EPOCH, Job, KeyedLogic, StartFrom,
    Target, TransactionId, TransactionalSink,
};
use statebackend::{
    AnyBackend, BackendConfig, BackendKind, KeyGroupRange, KeyedStateBackend, MapState,
    MapStateDescriptor, Result, Timer, ValueState, ValueStateDescriptor,
};
use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::vec::{Input, Map};
use timely::dataflow::operators::{Concat, Probe};
use timely::worker::Worker;

/// Users the views come from.
pub const USERS: u64 = 2_000;
/// Pages a user views.
pub const PAGES: u64 = 40;
/// Epochs per tumbling window.
pub const WINDOW: u64 = 5;
/// The stable id of the keyed operator counting per user.
pub const OPERATOR: &str = "window-counts";
/// The stable id of the keyed operator totalling per window.
pub const TOTALS_OPERATOR: &str = "window-totals";
/// The stable id of the exactly-once sink.
pub const SINK: &str = "results";

/// One page view: `(user, page)`; its event time is its epoch.
pub type View = (u64, u16);

/// One closed window: `(user, window, views, distinct pages)`.
pub type WindowResult = (u64, u64, u64, u64);

/// What the sink writes: a user's closed window, or a window's total over every user
/// `(window, users, views)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// `U user window views distinct`.
    User(WindowResult),
    /// `W window users views`.
    Window(u64, u64, u64),
}

/// The view at position `i` of the stream: a pure function, so a restored job replays exactly
/// the views after its checkpoint, whatever its worker count.
pub fn view(i: u64) -> View {
    let mut z = i
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 8) % USERS, ((z >> 40) % PAGES) as u16)
}

/// The job's options (`--help` of the example lists them).
#[derive(Debug, Clone)]
pub struct Options {
    /// The checkpoint root, a directory every process sees.
    pub root: PathBuf,
    /// Epochs of the whole stream.
    pub epochs: u64,
    /// Views per epoch.
    pub views_per_epoch: u64,
    /// Epochs per checkpoint.
    pub checkpoint_every: u64,
    /// The backend of every instance.
    pub backend: BackendKind,
    /// Start from a savepoint directory instead of the root's latest checkpoint.
    pub from_savepoint: Option<PathBuf>,
    /// Start empty, ignoring the root's checkpoints.
    pub fresh: bool,
    /// Start empty if the root holds checkpoints and every one is damaged (instead of failing).
    pub start_empty_if_all_damaged: bool,
    /// Savepoints to write: `(epoch, directory)`.
    pub savepoints: Vec<(u64, PathBuf)>,
    /// Where the exactly-once sink writes: `staging/` for transactions not yet committed,
    /// `committed/` for the output.
    pub results: PathBuf,
    /// Where RocksDB instances keep their working directories; temporary ones otherwise.
    pub work_dir: Option<PathBuf>,
    /// The source stops producing at this epoch and waits (to be killed).
    pub stall_at: Option<u64>,
    /// Epochs in flight ahead of the output's frontier.
    pub epochs_in_flight: u64,
    /// Timely's arguments (`-w`, `-n`, `-p`, `-h`).
    pub timely: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            root: PathBuf::from("timely-checkpoints"),
            epochs: 200,
            views_per_epoch: 2_000,
            checkpoint_every: 20,
            backend: BackendKind::RocksDb,
            from_savepoint: None,
            fresh: false,
            start_empty_if_all_damaged: false,
            savepoints: Vec::new(),
            results: PathBuf::from("timely-results"),
            work_dir: None,
            stall_at: None,
            epochs_in_flight: 4,
            timely: Vec::new(),
        }
    }
}

/// Usage of the example's own options (timely's follow `--`).
pub const USAGE: &str = "usage: timely_windows --root DIR [--epochs N] [--views-per-epoch N] \
[--checkpoint-every N] [--backend rocksdb|heap] [--fresh] [--start-empty-if-all-damaged] [--from-savepoint DIR] \
[--savepoint-at EPOCH:DIR]... [--results DIR] [--work-dir DIR] [--stall-at EPOCH] [--epochs-in-flight N] \
[-- TIMELY ARGS: -w THREADS -n PROCESSES -p INDEX -h HOSTFILE]";

impl Options {
    /// Parses the example's arguments (without the program name).
    ///
    /// # Errors
    /// A message naming the bad argument.
    pub fn parse(args: impl IntoIterator<Item = String>) -> std::result::Result<Self, String> {
        let mut o = Options::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "--" {
                o.timely = args.collect();
                break;
            }
            let mut value = || args.next().ok_or(format!("{arg} needs a value"));
            let number = |v: String| v.parse::<u64>().map_err(|e| format!("{arg}: {e}"));
            match arg.as_str() {
                "--root" => o.root = PathBuf::from(value()?),
                "--epochs" => o.epochs = number(value()?)?,
                "--views-per-epoch" => o.views_per_epoch = number(value()?)?,
                "--checkpoint-every" => o.checkpoint_every = number(value()?)?,
                "--backend" => {
                    o.backend = match value()?.as_str() {
                        "rocksdb" => BackendKind::RocksDb,
                        "heap" => BackendKind::Heap,
                        other => return Err(format!("--backend: unknown backend {other}")),
                    }
                }
                "--fresh" => o.fresh = true,
                "--start-empty-if-all-damaged" => o.start_empty_if_all_damaged = true,
                "--from-savepoint" => o.from_savepoint = Some(PathBuf::from(value()?)),
                "--savepoint-at" => {
                    let v = value()?;
                    let (epoch, dir) = v
                        .split_once(':')
                        .ok_or(format!("--savepoint-at {v}: expected EPOCH:DIR"))?;
                    o.savepoints
                        .push((number(epoch.to_owned())?, PathBuf::from(dir)));
                }
                "--results" => o.results = PathBuf::from(value()?),
                "--work-dir" => o.work_dir = Some(PathBuf::from(value()?)),
                "--stall-at" => o.stall_at = Some(number(value()?)?),
                "--epochs-in-flight" => o.epochs_in_flight = number(value()?)?.max(1),
                "-h" | "--help" => return Err(USAGE.into()),
                other => return Err(format!("unknown argument {other}\n{USAGE}")),
            }
        }
        Ok(o)
    }

    fn checkpointing(&self) -> Result<Checkpointing> {
        let storage = |dir: &Path| -> Result<Arc<dyn CheckpointStorage>> {
            Ok(Arc::new(LocalDirStorage::new(dir)?))
        };
        let mut c = Checkpointing::new(storage(&self.root)?, self.checkpoint_every, self.backend);
        c.start = match (&self.from_savepoint, self.fresh) {
            (Some(dir), _) => StartFrom::Savepoint(storage(dir)?),
            (None, true) => StartFrom::Empty,
            (None, false) => StartFrom::LatestCheckpoint,
        };
        c.savepoints = self
            .savepoints
            .iter()
            .map(|(epoch, dir)| Ok((*epoch, storage(dir)?)))
            .collect::<Result<_>>()?;
        c.working_dir = self.work_dir.clone();
        c.start_empty_if_all_damaged = self.start_empty_if_all_damaged;
        Ok(c)
    }
}

/// The keyed operator: per user and window, the views and the views per page; a timer at the
/// window's last epoch emits the window and folds it into the user's totals.
#[derive(Default)]
pub struct WindowCounts {
    handles: Option<Handles>,
}

/// The operator's states.
pub struct Handles {
    /// Views per (user, window).
    pub views: ValueState<u64, u64, u64>,
    /// Views per page, per (user, window).
    pub pages: MapState<u64, u64, u16, u32>,
    /// Per user: (windows closed, views in them).
    pub totals: ValueState<u64, (), (u64, u64)>,
}

impl Handles {
    /// Registers (or finds, on a restored backend) the states.
    ///
    /// # Errors
    /// Registration errors.
    pub fn register(backend: &mut AnyBackend) -> Result<Self> {
        Ok(Self {
            views: backend.value_state(&ValueStateDescriptor::new("views"))?,
            pages: backend.map_state(&MapStateDescriptor::new("pages"))?,
            totals: backend.value_state(&ValueStateDescriptor::new("totals"))?,
        })
    }
}

impl KeyedLogic for WindowCounts {
    type Input = View;
    type Output = WindowResult;
    type Key = u64;
    type Namespace = u64;

    fn key(input: &View) -> u64 {
        input.0
    }

    fn open(&mut self, backend: &mut AnyBackend) -> Result<()> {
        self.handles = Some(Handles::register(backend)?);
        Ok(())
    }

    fn on_record(
        &mut self,
        cx: &mut Context<'_, u64, u64>,
        user: &KeyContext<u64>,
        (_, page): View,
        _output: &mut Vec<WindowResult>,
    ) -> Result<()> {
        let h = self.handles.as_ref().expect("opened");
        let window = cx.epoch / WINDOW;
        let b = &mut *cx.backend;
        let views = h.views.get(b, user, &window)?.unwrap_or(0);
        h.views.put(b, user, &window, views + 1)?;
        let on_page = h.pages.get(b, user, &window, &page)?.unwrap_or(0);
        h.pages.put(b, user, &window, page, on_page + 1)?;
        let end = (window + 1) * WINDOW - 1;
        cx.timers
            .register_event_time_timer(b, user, &window, end as i64)
    }

    fn on_timer(
        &mut self,
        cx: &mut Context<'_, u64, u64>,
        timer: Timer<u64, u64>,
        output: &mut Vec<WindowResult>,
    ) -> Result<()> {
        let h = self.handles.as_ref().expect("opened");
        let b = &mut *cx.backend;
        let (user, window) = (&timer.key, &timer.namespace);
        let views = h.views.get(b, user, window)?.unwrap_or(0);
        let mut distinct = 0;
        for entry in h.pages.entries(b, user, window)? {
            entry?;
            distinct += 1;
        }
        let (windows, total) = h.totals.get(b, user, &())?.unwrap_or((0, 0));
        h.totals.put(b, user, &(), (windows + 1, total + views))?;
        h.views.clear(b, user, window)?;
        h.pages.clear(b, user, window)?;
        output.push((*user.key(), *window, views, distinct));
        Ok(())
    }
}

/// The second keyed operator, keyed by window: per window, the users whose window closed and
/// their views; a timer at the window's last epoch (every user's result of the window has
/// arrived once event time passes it) emits the window's total.
#[derive(Default)]
pub struct WindowTotals {
    totals: Option<ValueState<u64, (), (u64, u64)>>,
}

impl WindowTotals {
    fn register(backend: &mut AnyBackend) -> Result<ValueState<u64, (), (u64, u64)>> {
        backend.value_state(&ValueStateDescriptor::new("window-totals"))
    }
}

impl KeyedLogic for WindowTotals {
    type Input = WindowResult;
    type Output = Output;
    type Key = u64;
    type Namespace = ();

    fn key(input: &WindowResult) -> u64 {
        input.1
    }

    fn open(&mut self, backend: &mut AnyBackend) -> Result<()> {
        self.totals = Some(Self::register(backend)?);
        Ok(())
    }

    fn on_record(
        &mut self,
        cx: &mut Context<'_, u64, ()>,
        window: &KeyContext<u64>,
        (_, _, views, _): WindowResult,
        _output: &mut Vec<Output>,
    ) -> Result<()> {
        let totals = self.totals.as_ref().expect("opened");
        let b = &mut *cx.backend;
        let (users, sum) = totals.get(b, window, &())?.unwrap_or((0, 0));
        totals.put(b, window, &(), (users + 1, sum + views))?;
        let end = (window.key() + 1) * WINDOW - 1;
        cx.timers
            .register_event_time_timer(b, window, &(), end as i64)
    }

    fn on_timer(
        &mut self,
        cx: &mut Context<'_, u64, ()>,
        timer: Timer<u64, ()>,
        output: &mut Vec<Output>,
    ) -> Result<()> {
        let totals = self.totals.as_ref().expect("opened");
        let b = &mut *cx.backend;
        let (users, views) = totals.get(b, &timer.key, &())?.unwrap_or((0, 0));
        totals.clear(b, &timer.key, &())?;
        output.push(Output::Window(*timer.key.key(), users, views));
        Ok(())
    }
}

/// The example's exactly-once sink: a transaction is a file of `staging/`, fsynced when
/// pre-committed, renamed into `committed/` when committed (a rename that already happened is a
/// commit done), deleted when aborted. Readers read `committed/` only.
pub struct FileSink {
    staging: PathBuf,
    committed: PathBuf,
    /// The files of transactions begun and not yet pre-committed.
    open: HashMap<String, File>,
}

impl FileSink {
    /// A sink writing under `dir`.
    ///
    /// # Errors
    /// The directories cannot be created.
    pub fn new(dir: &Path) -> Result<Self> {
        let staging = dir.join("staging");
        let committed = dir.join("committed");
        for d in [&staging, &committed] {
            std::fs::create_dir_all(d).map_err(|e| io_error(d, e))?;
        }
        Ok(Self {
            staging,
            committed,
            open: HashMap::new(),
        })
    }
}

impl TransactionalSink for FileSink {
    type Item = Output;
    type Transaction = String;

    fn begin(&mut self, id: TransactionId) -> Result<String> {
        let name = format!("{id}.txt");
        let path = self.staging.join(&name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        self.open.insert(name.clone(), file);
        Ok(name)
    }

    fn write(&mut self, transaction: &mut String, items: Vec<Output>) -> Result<()> {
        let path = self.staging.join(transaction.as_str());
        let Some(file) = self.open.get_mut(transaction.as_str()) else {
            return Err(io_error(&path, ErrorKind::NotFound.into()));
        };
        let mut text = String::new();
        for item in items {
            match item {
                Output::User((user, window, views, distinct)) => {
                    text.push_str(&format!("U {user} {window} {views} {distinct}\n"))
                }
                Output::Window(window, users, views) => {
                    text.push_str(&format!("W {window} {users} {views}\n"))
                }
            }
        }
        file.write_all(text.as_bytes())
            .map_err(|e| io_error(&path, e))
    }

    fn pre_commit(&mut self, transaction: &mut String) -> Result<()> {
        let path = self.staging.join(transaction.as_str());
        if let Some(file) = self.open.remove(transaction.as_str()) {
            file.sync_all().map_err(|e| io_error(&path, e))?;
        }
        Ok(())
    }

    fn commit(&mut self, transaction: String) -> Result<()> {
        let from = self.staging.join(&transaction);
        let to = self.committed.join(&transaction);
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            // Committed before a crash, and committed again after the restore.
            Err(e) if e.kind() == ErrorKind::NotFound && to.exists() => return Ok(()),
            Err(e) => return Err(io_error(&from, e)),
        }
        File::open(&self.committed)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| io_error(&self.committed, e))
    }

    fn abort(&mut self, transaction: String) -> Result<()> {
        self.open.remove(&transaction);
        let path = self.staging.join(&transaction);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io_error(&path, e)),
            _ => Ok(()),
        }
    }
}

/// What one worker's run did.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// The epoch the run started at.
    pub resumed_at: u64,
    /// Views this worker's source produced.
    pub views: u64,
    /// How long the run took.
    pub elapsed: Duration,
    /// The checkpoint the run restored, if any.
    pub restored: Option<u64>,
    /// Damaged checkpoints the start skipped (newer than the one restored).
    pub skipped: Vec<statebackend::timely::SkippedCheckpoint>,
    /// Snapshots worker 0 committed: the committer's reports.
    pub commits: Vec<CommitReport>,
}

/// Runs the job on one worker (the body of `timely::execute`).
///
/// # Errors
/// Starting, restoring, or a failed savepoint.
pub fn run(worker: &mut Worker, options: &Options) -> Result<RunReport> {
    let started = Instant::now();
    let mut job = Job::start(worker, options.checkpointing()?)?;
    let (index, peers) = (worker.index() as u64, worker.peers() as u64);
    let from = job.resume_epoch();
    println!(
        "worker {index}: resumed at {from} restored {:?}",
        job.restored_checkpoint()
    );
    let commits = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let probe = ProbeHandle::new();
    let sink = FileSink::new(&options.results)?;
    let mut input = worker.dataflow::<u64, _, _>(|scope| -> Result<_> {
        let (input, views) = scope.new_input::<View>();
        let (windows, acks) = job.stateful(views, OPERATOR, WindowCounts::default())?;
        let (totals, totals_acks) =
            job.stateful(windows.clone(), TOTALS_OPERATOR, WindowTotals::default())?;
        let output = windows.map(Output::User).concat(totals.probe_with(&probe));
        let log = std::rc::Rc::clone(&commits);
        job.commit_with_sink(
            acks.concat(totals_acks),
            output,
            SINK,
            sink,
            move |report| {
                print_commit(report);
                log.borrow_mut().push(report.clone());
            },
        )?;
        Ok(input)
    })?;
    input.advance_to(from);
    let mut views = 0;
    for epoch in from..options.epochs {
        if options.stall_at == Some(epoch) {
            // Waits here, with the uploads of earlier checkpoints finishing, until killed.
            loop {
                worker.step_or_park(Some(Duration::from_millis(20)));
            }
        }
        let mut j = index;
        while j < options.views_per_epoch {
            input.send(view(epoch * options.views_per_epoch + j));
            views += 1;
            j += peers;
        }
        input.advance_to(epoch + 1);
        let behind = (epoch + 1).saturating_sub(options.epochs_in_flight);
        while probe.less_than(&behind) {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
    }
    // The operators see the frontier pass the last epoch (and take its checkpoint) before the
    // input closes.
    while probe.less_than(&options.epochs) {
        worker.step_or_park(Some(Duration::from_millis(1)));
    }
    drop(input);
    // Until every operator is done: the last windows fire, the last uploads are acknowledged.
    while worker.step_or_park(Some(Duration::from_millis(1))) {}
    let commits = commits.borrow().clone();
    for report in &commits {
        if let Err(reason) = &report.outcome {
            if matches!(report.target, Target::Savepoint(_)) {
                return Err(statebackend::Error::CheckpointState {
                    id: 0,
                    reason: format!("savepoint at epoch {} failed: {reason}", report.epoch),
                });
            }
        }
    }
    Ok(RunReport {
        resumed_at: from,
        views,
        elapsed: started.elapsed(),
        restored: job.restored_checkpoint(),
        skipped: job.skipped_checkpoints().to_vec(),
        commits,
    })
}

fn print_commit(report: &CommitReport) {
    let what = match report.target {
        Target::Checkpoint(id) if report.epoch == FINAL_CHECKPOINT_EPOCH => {
            format!("final checkpoint {id} (the input ended)")
        }
        Target::Checkpoint(id) => format!("checkpoint {id} at epoch {}", report.epoch),
        Target::Savepoint(i) => format!("savepoint {i} at epoch {}", report.epoch),
    };
    match &report.outcome {
        Ok(()) => println!(
            "  {what}: {} instances, {} bytes uploaded, longest synchronous part {:.1} ms",
            report.instances,
            report.bytes_uploaded,
            report.max_sync_micros as f64 / 1e3
        ),
        Err(reason) => println!("  {what} aborted: {reason}"),
    }
}

fn io_error(path: &Path, e: std::io::Error) -> statebackend::Error {
    statebackend::Error::CheckpointState {
        id: 0,
        reason: format!("{}: {e}", path.display()),
    }
}

/// The committed output: closed windows by (user, window): (views, distinct pages); window
/// totals by window: (users, views).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Results {
    /// Each user's closed windows.
    pub users: BTreeMap<(u64, u64), (u64, u64)>,
    /// Each window's total over every user.
    pub windows: BTreeMap<u64, (u64, u64)>,
}

/// Everything the sink committed under `dir` (its `committed/` files; `staging/` holds what
/// was never committed, and is not read).
///
/// # Errors
/// A message naming an output line committed twice (a duplicate: exactly-once failed), a
/// malformed line, or an unreadable file.
pub fn read_results(dir: &Path) -> std::result::Result<Results, String> {
    let committed = dir.join("committed");
    let mut out = Results::default();
    let entries =
        std::fs::read_dir(&committed).map_err(|e| format!("{}: {e}", committed.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        for line in text.lines() {
            let bad = || format!("{}: bad line {line:?}", path.display());
            let (kind, numbers) = line.split_once(' ').ok_or_else(bad)?;
            let n: Vec<u64> = numbers
                .split(' ')
                .map(|f| f.parse().map_err(|_| bad()))
                .collect::<std::result::Result<_, _>>()?;
            let duplicate = match (kind, &n[..]) {
                ("U", [user, window, views, distinct]) => out
                    .users
                    .insert((*user, *window), (*views, *distinct))
                    .is_some(),
                ("W", [window, users, views]) => {
                    out.windows.insert(*window, (*users, *views)).is_some()
                }
                _ => return Err(bad()),
            };
            if duplicate {
                return Err(format!("{}: {line:?} was committed twice", path.display()));
            }
        }
    }
    Ok(out)
}

/// The state a savepoint holds, read back typed: per user, (windows closed, views in them);
/// per (user, window) still open, (views, distinct pages); per window not yet totalled, (users,
/// views).
pub type Summary = (
    BTreeMap<u64, (u64, u64)>,
    BTreeMap<(u64, u64), (u64, u64)>,
    BTreeMap<u64, (u64, u64)>,
);

/// The state a savepoint holds, read back typed: restored into one heap instance per operator
/// that owns every key group.
///
/// # Errors
/// Restore and read errors.
pub fn summarize_savepoint(dir: &Path) -> Result<Summary> {
    let storage = LocalDirStorage::new(dir)?;
    let meta = statebackend::savepoint::read_savepoint(&storage)?;
    let config = BackendConfig::heap(128, KeyGroupRange::new(0, 128)?);
    let counts = meta.for_operator(OPERATOR)?;
    let mut backend = statebackend::savepoint::restore_savepoint(&storage, &counts, &config)?;
    let h = Handles::register(&mut backend)?;
    let mut totals = BTreeMap::new();
    for item in backend.keys::<u64, ()>(h.totals.id(), None)? {
        let (user, ()) = item?;
        totals.insert(user, h.totals.get(&backend, &user, &())?.unwrap_or((0, 0)));
    }
    let mut open = BTreeMap::new();
    for item in backend.keys::<u64, u64>(h.views.id(), None)? {
        let (user, window) = item?;
        let views = h.views.get(&backend, &user, &window)?.unwrap_or(0);
        let distinct = h.pages.entries(&backend, &user, &window)?.count() as u64;
        open.insert((user, window), (views, distinct));
    }
    let by_window = meta.for_operator(TOTALS_OPERATOR)?;
    let mut backend = statebackend::savepoint::restore_savepoint(&storage, &by_window, &config)?;
    let state = WindowTotals::register(&mut backend)?;
    let mut windows = BTreeMap::new();
    for item in backend.keys::<u64, ()>(state.id(), None)? {
        let (window, ()) = item?;
        windows.insert(window, state.get(&backend, &window, &())?.unwrap_or((0, 0)));
    }
    Ok((totals, open, windows))
}
