//! `statectl`: inspect, verify, dump, convert, garbage-collect, discard, rewrite and compare the
//! checkpoints and savepoints of `statebackend`.
//!
//! Argument parsing only; the commands live in `statebackend::cli`. Exit status: 0 success,
//! 1 failure (the message on stderr as `error: ...`), 2 usage error.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use statebackend::cli::CliError;
use statebackend::cli::convert::convert;
use statebackend::cli::diff::diff_snapshots;
use statebackend::cli::discard::{DiscardOptions, discard, resolve};
use statebackend::cli::dump::{DumpOptions, dump};
use statebackend::cli::gc::{GcOptions, gc};
use statebackend::cli::inspect::inspect;
use statebackend::cli::list::list;
use statebackend::cli::location::Location;
use statebackend::cli::rewrite::{Edit, rewrite};
use statebackend::cli::verify::{VerifyOptions, verify};
use statebackend::key_group::KeyGroup;

/// The exit statuses, shown by `--help`.
const EXIT_STATUS: &str = "Exit status:\n  \
    0  success (verify: every snapshot checked is good)\n  \
    1  failure: an error, a problem found, or a command refused to protect state (the reason \
    on stderr as `error: ...`)\n  \
    2  usage error (unknown command or option, missing or invalid argument)";

/// Inspect, verify, dump, convert, garbage-collect, discard, rewrite and compare statebackend
/// checkpoints and savepoints.
///
/// A checkpoint root holds `chk-<id>/_metadata` directories and a `shared/` area; a savepoint
/// is a directory holding a `_metadata` and one `.sbdf` data file per backend instance. Every
/// directory argument is a local path or, in a build with the features `aws`, `gcp` or `azure`,
/// an object store URL (`s3://bucket/prefix`, `gs://…`, `az://…`; credentials and endpoint from
/// the standard environment variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_REGION`, `AWS_ENDPOINT_URL`, …).
#[derive(Debug, Parser)]
#[command(
    name = "statectl",
    version,
    propagate_version = true,
    after_help = EXIT_STATUS,
    after_long_help = EXIT_STATUS
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the checkpoints of every checkpoint root below a directory, and its savepoints
    ///
    /// Lists the checkpoints of every checkpoint root at or below DIR and the savepoints
    /// anywhere below it (directories holding a savepoint `_metadata`), with their backends,
    /// instances, files, total bytes and new bytes (bytes of files the previous checkpoint does
    /// not reference). Each checkpoint has a state: completed (its `_metadata` reads and every
    /// file it lists is present with its recorded size), damaged (a file missing or of another
    /// size), unreadable (its `_metadata` cannot be used) or incomplete (a `chk-*` directory
    /// without `_metadata`: in flight, aborted, left over or discarded). For each root it says
    /// which checkpoint a restore would pick: the newest whose files all verify (the files of
    /// the checkpoints it looks at are read), or that none would. Never modifies DIR.
    List(ListArgs),
    /// Show what a checkpoint or savepoint holds
    ///
    /// Shows the format version, kind, id, creation time and codec of a checkpoint or
    /// savepoint, and per backend instance its backend, key groups, max parallelism, states
    /// (with their types and, where data files tell, their number of entries) and files.
    Inspect(InspectArgs),
    /// Check the files of a checkpoint, a savepoint, or everything below a directory
    ///
    /// Verifies that every `_metadata` parses and that every file it references exists with
    /// its recorded size and crc32; data files (`.sbdf`) are also read back block by block.
    /// Given a directory without `_metadata`, checks every checkpoint of every checkpoint root
    /// at or below it (newest first) and every savepoint below it, and says which checkpoint a
    /// restore of each root would pick. Stops at the first problem unless `--all` is given;
    /// everything not checked is listed as skipped, with why. Exits 1 if there is any problem,
    /// naming the bad file on stderr.
    Verify(VerifyArgs),
    /// Print a state's entries as JSON lines
    ///
    /// Prints the entries of one state of a savepoint or heap checkpoint, one JSON object per
    /// line: {"key_group":..,"key":..,"namespace":..,"user_key":..,"value":..} (`user_key` for
    /// map states only; list values are arrays). Keys, namespaces and values are decoded by the
    /// state's recorded types (integers, bool, strings, (), `Vec<u8>` as hex); anything else
    /// prints as {"hex": ...}. RocksDB checkpoints must be converted into a savepoint first.
    Dump(DumpArgs),
    /// Convert a checkpoint into a savepoint, offline
    ///
    /// Converts a checkpoint (either backend's) into a self-contained, canonical savepoint:
    /// each instance is restored offline and written as one data file, then `_metadata`.
    Convert(ConvertArgs),
    /// Delete the files of a checkpoint root that no retained checkpoint references
    ///
    /// Deletes what the library's garbage collection deletes: the checkpoints beyond the newest
    /// `--retained`, and every file the layout names under `chk-*` and `shared/` that no
    /// retained checkpoint references; nothing else, ever.
    ///
    /// ROOT must be a checkpoint root: a directory whose top level holds no `_metadata` and
    /// holds a `chk-<id>` directory (id of at least 10 digits, zero-padded) or a
    /// `_coordinator/epoch-<n>` file. Anything else (a savepoint, a `chk-*` directory, the
    /// parent of a root, any other directory) is refused with exit 1. Also refused: a root a
    /// live coordinator holds (its lease has not expired: stop the job first, or pass
    /// `--ignore-lease` if it is dead), and a root holding a checkpoint whose `_metadata`
    /// cannot be understood (repair it, or set it aside with `statectl discard`). The retention
    /// never drops the newest checkpoint that verifies: it is kept beyond `--retained`, and if
    /// no checkpoint verifies gc drops none and fails.
    Gc(GcArgs),
    /// Set a checkpoint aside so that gc can collect it
    ///
    /// Moves the `_metadata` of checkpoint ID of ROOT (or of the checkpoint directory
    /// `ROOT/chk-<id>` given alone) to `chk-<id>/_metadata.discarded`: the checkpoint is no
    /// longer restorable, and the next gc deletes its directory and the shared files no other
    /// checkpoint lists (every file a kept checkpoint lists stays). For a checkpoint that
    /// cannot be read or whose files are damaged. Refuses a checkpoint whose files all verify
    /// unless `--force`, a root a live coordinator holds unless `--ignore-lease`, and anything
    /// that is not a checkpoint root.
    Discard(DiscardArgs),
    /// Write a new savepoint with a state renamed
    ///
    /// Reads the savepoint SAVEPOINT and writes a new one into `--to` (new or empty) in which
    /// state FROM of the operator (`--operator`, default: the job's single operator) is called
    /// NEW_NAME; verifies the new savepoint and prints what changed. The source is never written; a
    /// failure leaves `--to` as it was.
    RenameState(RenameStateArgs),
    /// Write a new savepoint without one state
    ///
    /// As rename-state, dropping state STATE of the operator and all its rows.
    DropState(DropStateArgs),
    /// Write a new savepoint with an operator renamed
    ///
    /// As rename-state, giving operator FROM the id NEW_ID (its data files are copied unchanged).
    RenameOperator(RenameOperatorArgs),
    /// Write a new savepoint without one operator
    ///
    /// As rename-state, dropping operator OPERATOR and all its state.
    DropOperator(DropOperatorArgs),
    /// Write a new savepoint with an operator at another parallelism (rescale offline)
    ///
    /// As rename-state, handing the operator's key groups and operator state out to
    /// `--parallelism` instances as a restore at that parallelism would.
    Rescale(RescaleArgs),
    /// Compare two savepoints (or heap checkpoints) row by row
    ///
    /// Prints per operator and state the rows added, removed, changed and unchanged from A to
    /// B, and their bytes. Exits 0 whether or not they differ.
    Diff(DiffArgs),
}

#[derive(Debug, Args)]
struct RewriteTarget {
    /// The savepoint directory to read.
    savepoint: Location,
    /// The new savepoint directory to create (new or empty).
    #[arg(long, value_name = "SAVEPOINT_DIR")]
    to: Location,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RenameStateArgs {
    #[command(flatten)]
    target: RewriteTarget,
    /// The operator id (default: "", a single-operator job's).
    #[arg(long, default_value = "")]
    operator: String,
    /// The state's name.
    from: String,
    /// Its new name.
    #[arg(value_name = "NEW_NAME")]
    to_name: String,
}

#[derive(Debug, Args)]
struct DropStateArgs {
    #[command(flatten)]
    target: RewriteTarget,
    /// The operator id (default: "", a single-operator job's).
    #[arg(long, default_value = "")]
    operator: String,
    /// The state to drop.
    state: String,
}

#[derive(Debug, Args)]
struct RenameOperatorArgs {
    #[command(flatten)]
    target: RewriteTarget,
    /// The operator's id.
    from: String,
    /// Its new id.
    #[arg(value_name = "NEW_ID")]
    to_name: String,
}

#[derive(Debug, Args)]
struct DropOperatorArgs {
    #[command(flatten)]
    target: RewriteTarget,
    /// The operator to drop.
    operator: String,
}

#[derive(Debug, Args)]
struct RescaleArgs {
    #[command(flatten)]
    target: RewriteTarget,
    /// The operator id (default: "", a single-operator job's).
    #[arg(long, default_value = "")]
    operator: String,
    /// The new number of instances.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    parallelism: u32,
}

#[derive(Debug, Args)]
struct DiffArgs {
    /// The first savepoint or heap checkpoint.
    before: Location,
    /// The second.
    after: Location,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// A checkpoint root, or a directory holding roots and savepoints.
    root: Location,
    /// Print one JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// A checkpoint directory (`<root>/chk-<id>`) or a savepoint directory.
    path: Location,
    /// Also count, for states with a time to live, the rows (list elements) expired at this
    /// time: milliseconds since the epoch for processing time, the watermark for event time.
    #[arg(long, value_name = "TIME")]
    expired_at: Option<u64>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// A checkpoint directory, a savepoint directory, or a directory (a checkpoint root, or one
    /// holding roots and savepoints) to verify everything below.
    path: Location,
    /// Report every problem instead of stopping at the first.
    #[arg(long)]
    all: bool,
    /// Print one JSON object (problems are still reported on stderr).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct DumpArgs {
    /// A savepoint directory or a heap checkpoint directory.
    path: Location,
    /// The state's name.
    #[arg(long)]
    state: String,
    /// Only the entries of this key group.
    #[arg(long, value_name = "N")]
    key_group: Option<KeyGroup>,
    /// Print at most N entries.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
}

#[derive(Debug, Args)]
struct ConvertArgs {
    /// The checkpoint directory (`<root>/chk-<id>`).
    checkpoint: Location,
    /// The savepoint directory to create (new or empty).
    #[arg(long, value_name = "SAVEPOINT_DIR")]
    to: Location,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct GcArgs {
    /// The checkpoint root.
    root: Location,
    /// Only list what would be deleted.
    #[arg(long)]
    dry_run: bool,
    /// How many completed checkpoints to keep.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(1..))]
    retained: u64,
    /// Collect even though a coordinator's lease on the root has not expired (the job is
    /// known to be dead).
    #[arg(long)]
    ignore_lease: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct DiscardArgs {
    /// The checkpoint root, or the checkpoint directory (`<root>/chk-<id>`) without ID.
    target: Location,
    /// The checkpoint id.
    id: Option<u64>,
    /// Discard even a checkpoint whose files all verify.
    #[arg(long)]
    force: bool,
    /// Discard even though a coordinator's lease on the root has not expired (the job is
    /// known to be dead).
    #[arg(long)]
    ignore_lease: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Why `main` stops with status 1.
enum Failure {
    /// A command's error, printed as `error: ...`.
    Command(CliError),
    /// Problems already printed.
    Reported,
    /// Output could not be written.
    Output(io::Error),
}

impl From<CliError> for Failure {
    fn from(e: CliError) -> Self {
        Failure::Command(e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Output(e)
    }
}

fn print_json(out: &mut dyn Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value).map_err(io::Error::other)?;
    writeln!(out)
}

fn run(command: Command, out: &mut dyn Write) -> Result<(), Failure> {
    match command {
        Command::List(a) => {
            let report = list(&a.root)?;
            if a.json {
                print_json(out, &report)?;
            } else {
                report.write_human(out)?;
            }
        }
        Command::Inspect(a) => {
            let report = inspect(&a.path, a.expired_at)?;
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            if a.json {
                print_json(out, &report)?;
            } else {
                report.write_human(out)?;
            }
        }
        Command::Verify(a) => {
            let report = verify(&a.path, VerifyOptions { all: a.all })?;
            for f in &report.failures {
                eprintln!("error: {}", f.message);
            }
            if a.json {
                print_json(out, &report)?;
            } else {
                report.write_human(out)?;
            }
            if !report.ok {
                return Err(Failure::Reported);
            }
        }
        Command::Dump(a) => {
            let options = DumpOptions {
                state: a.state,
                key_group: a.key_group,
                limit: a.limit,
            };
            dump(&a.path, &options, out)?;
        }
        Command::Convert(a) => {
            let report = convert(&a.checkpoint, &a.to)?;
            if a.json {
                print_json(out, &report)?;
            } else {
                report.write_human(out)?;
            }
        }
        Command::Gc(a) => {
            let retained = usize::try_from(a.retained).unwrap_or(usize::MAX);
            let report = gc(
                &a.root,
                GcOptions {
                    dry_run: a.dry_run,
                    retained,
                    ignore_lease: a.ignore_lease,
                },
            )?;
            if a.json {
                print_json(out, &report)?;
            } else {
                report.write_human(out)?;
            }
        }
        Command::RenameState(a) => {
            let edit = Edit::RenameState {
                operator: a.operator,
                from: a.from,
                to: a.to_name,
            };
            run_rewrite(&a.target, &edit, out)?;
        }
        Command::DropState(a) => {
            let edit = Edit::DropState {
                operator: a.operator,
                state: a.state,
            };
            run_rewrite(&a.target, &edit, out)?;
        }
        Command::RenameOperator(a) => {
            let edit = Edit::RenameOperator {
                from: a.from,
                to: a.to_name,
            };
            run_rewrite(&a.target, &edit, out)?;
        }
        Command::DropOperator(a) => {
            let edit = Edit::DropOperator {
                operator: a.operator,
            };
            run_rewrite(&a.target, &edit, out)?;
        }
        Command::Rescale(a) => {
            let edit = Edit::Rescale {
                operator: a.operator,
                parallelism: a.parallelism,
            };
            run_rewrite(&a.target, &edit, out)?;
        }
        Command::Diff(a) => {
            let report = diff_snapshots(&a.before, &a.after)?;
            if a.json {
                print_json(out, &report)?;
            } else {
                report.write_human(out)?;
            }
        }
        Command::Discard(a) => {
            let (root, id) = resolve(&a.target, a.id)?;
            let options = DiscardOptions {
                force: a.force,
                ignore_lease: a.ignore_lease,
            };
            let report = discard(&root, id, options)?;
            if a.json {
                print_json(out, &report)?;
            } else {
                report.write_human(out)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// Runs one of the rewrite commands and prints its report.
fn run_rewrite(target: &RewriteTarget, edit: &Edit, out: &mut dyn Write) -> Result<(), Failure> {
    let report = rewrite(&target.savepoint, &target.to, edit)?;
    if target.json {
        print_json(out, &report)?;
    } else {
        report.write_human(out)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    // Usage errors exit 2 and --help / --version exit 0, inside `parse`.
    let cli = Cli::parse();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match run(cli.command, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(Failure::Output(e)) => {
            eprintln!("error: cannot write the output: {e}");
            ExitCode::from(1)
        }
        Err(Failure::Command(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
        Err(Failure::Reported) => ExitCode::from(1),
    }
}
