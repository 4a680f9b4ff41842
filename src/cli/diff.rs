//! `statectl diff A B`: two savepoints (or heap checkpoints) compared row by row, per
//! operator and state ([`crate::runtime::processor::diff`]).

use std::io::{self, Write};

use serde::Serialize;

use crate::cli::snapshot::{Location, load};
use crate::cli::{CliResult, human_bytes};
use crate::runtime::processor::{SnapshotFiles, StateDiff, diff};

/// What `diff` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffReport {
    /// The first snapshot.
    pub before: String,
    /// The second.
    pub after: String,
    /// One entry per (operator, state) of either.
    pub states: Vec<StateDiff>,
}

impl DiffReport {
    /// Whether the two hold the same rows.
    pub fn same(&self) -> bool {
        self.states.iter().all(StateDiff::is_same)
    }
}

/// Compares the snapshots in `before` and `after`.
///
/// # Errors
/// The library's errors: a RocksDB checkpoint (convert it first), another max parallelism,
/// damaged files.
pub fn diff_snapshots(before: &Location, after: &Location) -> CliResult<DiffReport> {
    let open = |location: &Location| -> CliResult<SnapshotFiles> {
        let snapshot = load(location)?;
        Ok(SnapshotFiles::open(
            snapshot.storage.as_ref(),
            snapshot.meta.clone(),
        )?)
    };
    let states = diff(&open(before)?, &open(after)?)?;
    Ok(DiffReport {
        before: before.display(),
        after: after.display(),
        states,
    })
}

impl DiffReport {
    /// Writes the report for people: one line per state.
    ///
    /// # Errors
    /// Write errors.
    pub fn write_human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "--- {}\n+++ {}", self.before, self.after)?;
        for s in &self.states {
            let operator = if s.operator.is_empty() {
                String::new()
            } else {
                format!("{}/", s.operator)
            };
            writeln!(
                out,
                "{operator}{}: {} added, {} removed, {} changed, {} unchanged; {} -> {}",
                s.state,
                s.added,
                s.removed,
                s.changed,
                s.unchanged,
                human_bytes(s.bytes_before),
                human_bytes(s.bytes_after)
            )?;
        }
        writeln!(
            out,
            "{}",
            if self.same() {
                "the same rows"
            } else {
                "the rows differ"
            }
        )
    }
}
