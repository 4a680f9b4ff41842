//! `statectl`: inspect, verify, dump, convert and garbage-collect the checkpoints and
//! savepoints of `statebackend`.
//!
//! Argument parsing only; the commands live in `statebackend::cli`. Exit status: 0 success,
//! 1 failure (the message on stderr as `error: ...`), 2 usage error.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use statebackend::cli::CliError;
use statebackend::cli::convert::convert;
use statebackend::cli::dump::{DumpOptions, dump};
use statebackend::cli::gc::{GcOptions, gc};
use statebackend::cli::inspect::inspect;
use statebackend::cli::list::list;
use statebackend::cli::location::Location;
use statebackend::cli::verify::{VerifyOptions, verify};
use statebackend::key_group::KeyGroup;

/// Inspect, verify, dump, convert and garbage-collect statebackend checkpoints and savepoints.
///
/// A checkpoint root holds `chk-<id>/_metadata` directories and a `shared/` area; a savepoint
/// is a directory holding a `_metadata` and one `.sbdf` data file per backend instance. Every
/// directory argument is a local path or, in a build with the features `aws`, `gcp` or `azure`,
/// an object store URL (`s3://bucket/prefix`, `gs://…`, `az://…`; credentials and endpoint from
/// the standard environment variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_REGION`, `AWS_ENDPOINT_URL`, …).
#[derive(Debug, Parser)]
#[command(name = "statectl", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the checkpoints of a checkpoint root and the savepoints below it
    ///
    /// Lists the checkpoints of ROOT (`chk-*` directories with a `_metadata`; unreadable ones
    /// are shown as such) and the savepoints anywhere below it (directories holding a savepoint
    /// `_metadata`), with their backends, instances, files, total bytes and new bytes (bytes of
    /// files the previous checkpoint does not reference). Reads `_metadata` files only: never
    /// modifies ROOT.
    List(ListArgs),
    /// Show what a checkpoint or savepoint holds
    ///
    /// Shows the format version, kind, id, creation time and codec of a checkpoint or
    /// savepoint, and per backend instance its backend, key groups, max parallelism, states
    /// (with their types and, where data files tell, their number of entries) and files.
    Inspect(InspectArgs),
    /// Check the files of a checkpoint, a savepoint or a whole root
    ///
    /// Verifies that every `_metadata` parses and that every file it references exists with
    /// its recorded size and crc32; data files (`.sbdf`) are also read back block by block.
    /// Stops at the first problem unless `--all` is given. Exits 1 if there is any problem,
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
    /// `--retained`, and every file under `chk-*` and `shared/` that no retained checkpoint
    /// references. Refuses a root holding a checkpoint whose `_metadata` cannot be understood
    /// (repair it or remove its directory first). Never run it on the root of a running job:
    /// the files of a checkpoint in flight are not referenced yet.
    Gc(GcArgs),
}

#[derive(Debug, Args)]
struct ListArgs {
    /// The checkpoint root.
    root: Location,
    /// Print one JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// A checkpoint directory (`<root>/chk-<id>`) or a savepoint directory.
    path: Location,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// A checkpoint directory, a savepoint directory, or a root to verify everything under.
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
            let report = inspect(&a.path)?;
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
                },
            )?;
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
