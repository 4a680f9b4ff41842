//! A keyed, checkpointed timely-dataflow job across processes: page views counted per user in
//! tumbling event-time windows, with windows closed by timers, totalled per window by a second
//! keyed operator, written exactly once into `--results` (committed with the checkpoints),
//! checkpoints taken when timely's frontier passes an epoch, and restores at another worker
//! count.
//!
//! ```text
//! # one process, two workers
//! cargo run --release --features timely --example timely_windows -- --root /tmp/tw -- -w 2
//!
//! # two processes of two workers each, on this machine (hostfile: one host:port per line)
//! printf '127.0.0.1:2101\n127.0.0.1:2102\n' > /tmp/hosts
//! cargo run --release --features timely --example timely_windows -- --root /tmp/tw \
//!     -- -w 2 -n 2 -p 0 -h /tmp/hosts &
//! cargo run --release --features timely --example timely_windows -- --root /tmp/tw \
//!     -- -w 2 -n 2 -p 1 -h /tmp/hosts
//!
//! # kill them, then restart as three processes of one worker: each restores its key groups
//! # from the latest checkpoint and the source resumes after the checkpoint's epoch
//! ```
//!
//! Worker 0 prints each completed checkpoint; every worker prints its views per second.

// The result and savepoint readers are the cluster test's (`tests/timely_cluster.rs`).
#[allow(dead_code)]
mod job;

use std::process::ExitCode;

fn main() -> ExitCode {
    let options = match job::Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let config = match timely::Config::from_args(options.timely.clone().into_iter()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("timely arguments: {e}");
            return ExitCode::from(2);
        }
    };
    let run_options = options.clone();
    let guards = timely::execute(config, move |worker| {
        let index = worker.index();
        let report = job::run(worker, &run_options);
        match &report {
            Ok(r) if r.resumed_at >= run_options.epochs => println!(
                "worker {index}: nothing to do: the restored checkpoint {:?} is at the input's end",
                r.restored
            ),
            Ok(r) => println!(
                "worker {index}: epochs {}..{} ({}), {} views in {:.2} s, {:.0} views/s",
                r.resumed_at,
                run_options.epochs,
                match (r.restored, &run_options.from_savepoint) {
                    (Some(id), _) => format!("restored checkpoint {id}"),
                    (None, Some(dir)) => format!("from savepoint {}", dir.display()),
                    (None, None) => "fresh: empty state".into(),
                },
                r.views,
                r.elapsed.as_secs_f64(),
                r.views as f64 / r.elapsed.as_secs_f64()
            ),
            Err(e) => eprintln!("worker {index}: {e}"),
        }
        if let Ok(r) = &report {
            if index == 0 {
                for skipped in &r.skipped {
                    println!(
                        "  skipped damaged checkpoint {}: {}",
                        skipped.id, skipped.reason
                    );
                }
                print_job_summary(r, &run_options);
            }
        }
        report.is_ok()
    });
    match guards {
        Ok(guards) => {
            let ok = guards.join().into_iter().all(|r| r == Ok(true));
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("timely: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Worker 0's view of the whole job: every worker's source produced its share of each epoch,
/// so the job's rate is the epochs' views over worker 0's run time.
fn print_job_summary(r: &job::RunReport, o: &job::Options) {
    let views = o.epochs.saturating_sub(r.resumed_at) * o.views_per_epoch;
    let mut pauses: Vec<u64> = r
        .commits
        .iter()
        .filter(|c| {
            c.outcome.is_ok() && matches!(c.target, statebackend::timely::Target::Checkpoint(_))
        })
        .map(|c| c.max_sync_micros)
        .collect();
    pauses.sort_unstable();
    let ms = |us: u64| us as f64 / 1e3;
    println!(
        "job: {views} views in {:.2} s, {:.0} views/s; {} checkpoints, longest synchronous part \
         per checkpoint: median {:.1} ms, max {:.1} ms",
        r.elapsed.as_secs_f64(),
        views as f64 / r.elapsed.as_secs_f64(),
        pauses.len(),
        pauses.get(pauses.len() / 2).map_or(0.0, |&p| ms(p)),
        pauses.last().map_or(0.0, |&p| ms(p)),
    );
}
