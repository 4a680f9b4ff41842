//! The `timely_windows` example's job (two keyed operators, keyed by user and by window, and
//! an exactly-once sink) as a cluster of processes on 127.0.0.1, killed with SIGKILL at four
//! moments and restarted at other process × worker shapes:
//!
//! 1. 2 processes × 2 workers, killed before the first checkpoint (the sink has staged output);
//! 2. 3 × 1, from the root (nothing completed: empty state), killed right after a checkpoint
//!    completes;
//! 3. 1 × 3, from that checkpoint, writing a savepoint, killed mid-run after it: the savepoint
//!    is abandoned, so its completion must have committed nothing;
//! 4. 2 × 1, from the root's latest checkpoint (before that savepoint), stopped with a
//!    savepoint: killed right after it;
//! 5. 1 × 2, from that savepoint into a fresh root, to the end.
//!
//! The committed output (every run's sink, one directory) must equal that of one process that
//! never crashed, line for line, with no line committed twice; and the final state must too.
//!
//! The binary is its own worker: started with `--timely-worker`, it runs the job (the
//! example's `job.rs`, compiled in) instead of the test. `harness = false` (Cargo.toml).

#[path = "../examples/timely_windows/job.rs"]
#[allow(dead_code)]
mod job;

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use statebackend::LocalDirStorage;
use statebackend::checkpoint::latest_restorable;
use statebackend::timely::EPOCH_KEY;

const EPOCHS: u64 = 100;
const VIEWS_PER_EPOCH: u64 = 1_000;
const CHECKPOINT_EVERY: u64 = 10;
/// Run 1's source stops here, before the first checkpoint (epoch 9), after the first window
/// closed (epoch 4): the sink has output it never commits.
const STALL_BEFORE_CHECKPOINT: u64 = 7;
/// Run 2 is killed as soon as a checkpoint at this epoch or later has completed.
const KILL_AFTER_EPOCH: u64 = 29;
/// Run 3 writes a savepoint here, stalls 3 epochs later and is killed; the savepoint is
/// never restored.
const ABANDONED_SAVEPOINT_AT: u64 = 74;
/// Run 4 writes a savepoint here, stalls 3 epochs later (before the next checkpoint) and is
/// killed; run 5 starts from it.
const SAVEPOINT_AT: u64 = 84;
/// A source that stops here never ends: runs to be killed stall at the latest here.
const STALL_LATE: u64 = 95;
/// A run that takes longer than this is hung: it is killed and the test fails.
const HANG: Duration = Duration::from_secs(600);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--timely-worker") {
        return worker(args[1..].to_vec());
    }
    println!("\nrunning 1 test");
    let outcome =
        std::panic::catch_unwind(a_pipeline_killed_four_times_commits_its_output_exactly_once);
    match outcome {
        Ok(()) => {
            println!("test a_pipeline_killed_four_times_commits_its_output_exactly_once ... ok");
            ExitCode::SUCCESS
        }
        Err(_) => {
            println!(
                "test a_pipeline_killed_four_times_commits_its_output_exactly_once ... FAILED"
            );
            ExitCode::FAILURE
        }
    }
}

/// Worker mode: the example's job, its options as given.
fn worker(args: Vec<String>) -> ExitCode {
    let options = match job::Options::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let config = timely::Config::from_args(options.timely.clone().into_iter())
        .unwrap_or_else(|e| panic!("timely arguments: {e}"));
    let guards = timely::execute(config, move |worker| {
        let index = worker.index();
        match job::run(worker, &options) {
            Ok(report) => {
                println!("worker {index}: done, {} views", report.views);
                true
            }
            Err(e) => {
                eprintln!("worker {index}: {e}");
                false
            }
        }
    })
    .unwrap_or_else(|e| panic!("timely: {e}"));
    if guards.join().into_iter().all(|r| r == Ok(true)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One run of the job: `processes` processes of `workers` workers each.
struct Run {
    children: Vec<Child>,
    logs: Vec<PathBuf>,
}

impl Run {
    fn start(dir: &Path, name: &str, processes: usize, workers: usize, args: &[String]) -> Run {
        let hostfile = dir.join(format!("{name}.hosts"));
        let hosts: Vec<String> = (0..processes)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        std::fs::write(&hostfile, hosts.join("\n") + "\n").expect("hostfile");
        let exe = std::env::current_exe().expect("test binary");
        // RocksDB working directories inside the test's directory: a killed process cannot
        // remove temporary ones.
        let work = dir.join(format!("{name}-work"));
        let mut run = Run {
            children: Vec::new(),
            logs: Vec::new(),
        };
        for p in 0..processes {
            let log = dir.join(format!("{name}-{p}.log"));
            let out = File::create(&log).expect("log");
            let mut command = Command::new(&exe);
            command
                .arg("--timely-worker")
                .args(args)
                .args(["--work-dir", work.to_str().expect("utf-8 path")])
                .arg("--")
                .args(["-w", &workers.to_string()])
                .stdout(out.try_clone().expect("log"))
                .stderr(out);
            if processes > 1 {
                command.args([
                    "-n",
                    &processes.to_string(),
                    "-p",
                    &p.to_string(),
                    "-h",
                    hostfile.to_str().expect("utf-8 path"),
                ]);
            }
            run.children
                .push(command.spawn().expect("spawn a worker process"));
            run.logs.push(log);
        }
        run
    }

    fn logs(&self) -> String {
        self.logs
            .iter()
            .map(|l| {
                format!(
                    "--- {}\n{}",
                    l.display(),
                    std::fs::read_to_string(l).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Waits for every process to exit successfully.
    fn wait(mut self) -> String {
        let deadline = Instant::now() + HANG;
        for i in 0..self.children.len() {
            loop {
                match self.children[i].try_wait().expect("wait") {
                    Some(status) if status.success() => break,
                    Some(status) => panic!("process {i} failed: {status}\n{}", self.logs()),
                    None if Instant::now() > deadline => {
                        self.kill();
                        panic!("the run hung\n{}", self.logs());
                    }
                    None => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        self.logs()
    }

    /// Polls `done` until it holds; fails if a process exits first or the run hangs.
    fn wait_for(&mut self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + HANG;
        while !done() {
            for i in 0..self.children.len() {
                if let Some(status) = self.children[i].try_wait().expect("wait") {
                    self.kill();
                    panic!("process {i} ended before {what}: {status}\n{}", self.logs());
                }
            }
            if Instant::now() > deadline {
                self.kill();
                panic!("no {what} before the deadline\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL to every process (`Child::kill` on Unix), then reaps them.
    fn kill(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The epoch and id of the root's latest restorable checkpoint.
fn latest_checkpoint(root: &Path) -> Option<(u64, u64)> {
    let storage = LocalDirStorage::new(root).ok()?;
    let meta = latest_restorable(&storage).ok()?;
    let epoch = u64::from_le_bytes(meta.engine.get(EPOCH_KEY)?.as_slice().try_into().ok()?);
    Some((meta.id, epoch))
}

fn a_pipeline_killed_four_times_commits_its_output_exactly_once() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let path = |name: &str| dir.join(name).to_str().expect("utf-8").to_owned();
    let common = args(&[
        "--epochs",
        &EPOCHS.to_string(),
        "--views-per-epoch",
        &VIEWS_PER_EPOCH.to_string(),
        "--checkpoint-every",
        &CHECKPOINT_EVERY.to_string(),
        "--backend",
        "rocksdb",
    ]);
    let with = |extra: &[&str]| {
        let mut all = common.clone();
        all.extend(args(extra));
        all
    };
    let last = EPOCHS - 1;

    // The reference: one process, one worker, no crash.
    let reference = with(&[
        "--root",
        &path("reference-root"),
        "--results",
        &path("reference-results"),
        "--savepoint-at",
        &format!("{last}:{}", path("reference-final")),
    ]);
    Run::start(dir, "reference", 1, 1, &reference).wait();
    let expected_results = job::read_results(&dir.join("reference-results")).expect("results");
    let expected_state = job::summarize_savepoint(&dir.join("reference-final")).expect("state");
    assert!(
        expected_results.users.len() > 1_000 && expected_results.windows.len() as u64 == EPOCHS / 5,
        "{} user windows, {} windows",
        expected_results.users.len(),
        expected_results.windows.len()
    );
    let root = dir.join("root");
    let results = dir.join("results");

    // Run 1: 2 processes × 2 workers, killed before the first checkpoint, once its sink has
    // staged output (the first window closed) that it will never commit.
    let first = with(&[
        "--root",
        &path("root"),
        "--results",
        &path("results"),
        "--stall-at",
        &STALL_BEFORE_CHECKPOINT.to_string(),
    ]);
    let mut run = Run::start(dir, "2x2", 2, 2, &first);
    run.wait_for("staged output", || {
        count_files(&results.join("staging")) > 0
    });
    run.kill();
    assert_eq!(
        latest_checkpoint(&root),
        None,
        "run 1 completed a checkpoint"
    );
    assert_eq!(
        count_files(&results.join("committed")),
        0,
        "run 1 committed output"
    );

    // Run 2: 3 × 1 from the root, which holds no checkpoint (empty state, the crashed run's
    // working directories replaced); killed right after a checkpoint completes.
    let second = with(&[
        "--root",
        &path("root"),
        "--results",
        &path("results"),
        "--stall-at",
        &STALL_LATE.to_string(),
    ]);
    let mut run = Run::start(dir, "3x1", 3, 1, &second);
    run.wait_for("a checkpoint", || {
        latest_checkpoint(&root).is_some_and(|(_, e)| e >= KILL_AFTER_EPOCH)
    });
    run.kill();
    let logs = run.logs();
    assert!(
        logs.contains("worker 0: resumed at 0 restored None"),
        "run 2 did not start empty:\n{logs}"
    );
    let (restored_id, restored_epoch) = latest_checkpoint(&root).expect("a checkpoint");
    assert!((KILL_AFTER_EPOCH..STALL_LATE).contains(&restored_epoch));

    // Run 3: 1 × 3 from that checkpoint; a savepoint, then killed mid-run, between
    // checkpoints. The savepoint is never restored: its completion must have committed nothing.
    let at = |epoch: u64, savepoint: &str| {
        with(&[
            "--root",
            &path("root"),
            "--results",
            &path("results"),
            "--savepoint-at",
            &format!("{epoch}:{}", path(savepoint)),
            "--stall-at",
            &(epoch + 3).to_string(),
        ])
    };
    let third = at(ABANDONED_SAVEPOINT_AT, "abandoned-savepoint");
    let logs = kill_after_savepoint(dir, "1x3", (1, 3), &third, "abandoned-savepoint");
    assert_restored(&logs, "run 3", restored_id, restored_epoch);
    let (restored_id, restored_epoch) = latest_checkpoint(&root).expect("a checkpoint");
    assert!(restored_epoch < ABANDONED_SAVEPOINT_AT);

    // Run 4: 2 × 1 from the root's latest checkpoint (before that savepoint); stopped with a
    // savepoint: its source goes no further (it stalls before the next checkpoint) and it is
    // killed.
    let fourth = at(SAVEPOINT_AT, "savepoint");
    let logs = kill_after_savepoint(dir, "2x1", (2, 1), &fourth, "savepoint");
    assert_restored(&logs, "run 4", restored_id, restored_epoch);

    // Run 5: 1 × 2 from the savepoint, into a fresh root, to the end.
    let fifth = with(&[
        "--root",
        &path("root-from-savepoint"),
        "--from-savepoint",
        &path("savepoint"),
        "--results",
        &path("results"),
        "--savepoint-at",
        &format!("{last}:{}", path("final")),
    ]);
    let logs = Run::start(dir, "1x2", 1, 2, &fifth).wait();
    assert!(
        logs.contains(&format!(
            "worker 0: resumed at {} restored None",
            SAVEPOINT_AT + 1
        )),
        "run 5 did not resume after the savepoint:\n{logs}"
    );

    assert_eq!(
        job::summarize_savepoint(&dir.join("final")).expect("state"),
        expected_state,
        "the final state"
    );
    let committed = job::read_results(&results).unwrap_or_else(|e| panic!("{e}"));
    let missing: Vec<_> = expected_results
        .users
        .iter()
        .filter(|(k, v)| committed.users.get(k) != Some(v))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "user windows missing or different: {missing:?}"
    );
    assert_eq!(committed, expected_results, "the committed output");
    // The crashed runs' staged transactions were never committed: they are still staged, or
    // were aborted at a restore.
    assert!(count_files(&results.join("staging")) > 0);
}

/// Runs the job at `shape` (processes, workers) with `args` until the savepoint in
/// `dir/savepoint` is complete, then kills it; returns its logs.
fn kill_after_savepoint(
    dir: &Path,
    name: &str,
    (processes, workers): (usize, usize),
    args: &[String],
    savepoint: &str,
) -> String {
    let mut run = Run::start(dir, name, processes, workers, args);
    run.wait_for(savepoint, || {
        job::summarize_savepoint(&dir.join(savepoint)).is_ok()
    });
    run.kill();
    run.logs()
}

/// Fails unless `logs` show worker 0 restoring checkpoint `id`, taken at `epoch`.
fn assert_restored(logs: &str, run: &str, id: u64, epoch: u64) {
    assert!(
        logs.contains(&format!(
            "worker 0: resumed at {} restored Some({id})",
            epoch + 1
        )),
        "{run} did not restore checkpoint {id}:\n{logs}"
    );
}

/// Files in `dir` (0 if it does not exist).
fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| entries.count())
}
