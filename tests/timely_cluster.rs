//! The `timely_windows` example's job as a cluster of processes on 127.0.0.1: run as 2
//! processes × 2 workers, killed with SIGKILL in the middle of the run, restarted as 3
//! processes × 1 worker from the latest checkpoint, and restarted once more as 1 process × 1
//! worker from a savepoint the second run wrote. The final state and the emitted windows must
//! equal those of one process that never crashed.
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
/// The first run's source stops here, so that it is still running when it is killed.
const STALL_AT: u64 = 70;
/// The first run is killed once a checkpoint at this epoch or later has completed.
const KILL_AFTER_EPOCH: u64 = 39;
/// The second run writes a savepoint here, which the third run starts from.
const SAVEPOINT_AT: u64 = 84;
/// A run that takes longer than this is hung: it is killed and the test fails.
const HANG: Duration = Duration::from_secs(600);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--timely-worker") {
        return worker(args[1..].to_vec());
    }
    println!("\nrunning 1 test");
    let outcome = std::panic::catch_unwind(|| {
        a_cluster_killed_mid_run_restores_at_other_worker_counts_to_the_same_result()
    });
    match outcome {
        Ok(()) => {
            println!(
                "test a_cluster_killed_mid_run_restores_at_other_worker_counts_to_the_same_result ... ok"
            );
            ExitCode::SUCCESS
        }
        Err(_) => {
            println!(
                "test a_cluster_killed_mid_run_restores_at_other_worker_counts_to_the_same_result ... FAILED"
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
                println!(
                    "worker {index}: resumed at {} restored {:?} views {}",
                    report.resumed_at, report.restored, report.views
                );
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

fn a_cluster_killed_mid_run_restores_at_other_worker_counts_to_the_same_result() {
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
    let last = EPOCHS - 1;

    // The reference: one process, one worker, no crash.
    let mut reference = common.clone();
    reference.extend(args(&[
        "--root",
        &path("reference-root"),
        "--results",
        &path("reference-results"),
        "--savepoint-at",
        &format!("{last}:{}", path("reference-final")),
    ]));
    Run::start(dir, "reference", 1, 1, &reference).wait();
    let expected_results = job::read_results(&dir.join("reference-results")).expect("results");
    let expected_state = job::summarize_savepoint(&dir.join("reference-final")).expect("state");
    assert!(
        expected_results.len() > 1_000,
        "{} windows",
        expected_results.len()
    );

    // Run 1: 2 processes × 2 workers, killed with SIGKILL once a few checkpoints completed.
    let mut first = common.clone();
    first.extend(args(&[
        "--root",
        &path("root"),
        "--results",
        &path("results"),
        "--stall-at",
        &STALL_AT.to_string(),
    ]));
    let mut run = Run::start(dir, "2x2", 2, 2, &first);
    let deadline = Instant::now() + HANG;
    while latest_checkpoint(&dir.join("root")).is_none_or(|(_, e)| e < KILL_AFTER_EPOCH) {
        for (i, child) in run.children.iter_mut().enumerate() {
            if let Some(status) = child.try_wait().expect("wait") {
                panic!(
                    "process {i} ended before the kill: {status}\n{}",
                    run.logs()
                );
            }
        }
        if Instant::now() > deadline {
            run.kill();
            panic!(
                "no checkpoint reached epoch {KILL_AFTER_EPOCH}\n{}",
                run.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (i, child) in run.children.iter_mut().enumerate() {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "process {i} is still running"
        );
    }
    run.kill();
    let (restored_id, restored_epoch) = latest_checkpoint(&dir.join("root")).expect("a checkpoint");
    assert!((KILL_AFTER_EPOCH..STALL_AT).contains(&restored_epoch));

    // Run 2: 3 processes × 1 worker, from the latest checkpoint; a savepoint midway.
    let mut second = common.clone();
    second.extend(args(&[
        "--root",
        &path("root"),
        "--results",
        &path("results"),
        "--savepoint-at",
        &format!("{SAVEPOINT_AT}:{}", path("savepoint")),
        "--savepoint-at",
        &format!("{last}:{}", path("final-3x1")),
    ]));
    let logs = Run::start(dir, "3x1", 3, 1, &second).wait();
    assert!(
        logs.contains(&format!(
            "worker 0: resumed at {} restored Some({restored_id})",
            restored_epoch + 1
        )),
        "the second run did not restore checkpoint {restored_id}:\n{logs}"
    );
    let expected = (&expected_state, &expected_results);
    assert_same_as_reference(dir, "final-3x1", expected, "the restore at 3 × 1");

    // Run 3: 1 process × 1 worker, from the second run's savepoint, into a fresh root.
    let mut third = common.clone();
    third.extend(args(&[
        "--root",
        &path("root-from-savepoint"),
        "--from-savepoint",
        &path("savepoint"),
        "--results",
        &path("results"),
        "--savepoint-at",
        &format!("{last}:{}", path("final-1x1")),
    ]));
    let logs = Run::start(dir, "1x1", 1, 1, &third).wait();
    assert!(
        logs.contains(&format!(
            "worker 0: resumed at {} restored None",
            SAVEPOINT_AT + 1
        )),
        "the third run did not resume after the savepoint:\n{logs}"
    );
    assert_same_as_reference(dir, "final-1x1", expected, "the savepoint restore at 1 × 1");
}

/// The final state in savepoint `final_savepoint` and the windows every run emitted into
/// `results` equal the reference run's.
fn assert_same_as_reference(
    dir: &Path,
    final_savepoint: &str,
    (state, windows): (&job::Summary, &job::Windows),
    after: &str,
) {
    assert_eq!(
        &job::summarize_savepoint(&dir.join(final_savepoint)).expect("state"),
        state,
        "final state after {after}"
    );
    assert_eq!(
        &job::read_results(&dir.join("results")).expect("results"),
        windows,
        "windows emitted up to {after}"
    );
}
