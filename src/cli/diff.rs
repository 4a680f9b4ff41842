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
    /// The operators whose operator state differs.
    pub operator_states_differ: Vec<String>,
}

impl DiffReport {
    /// Whether the two hold the same state.
    pub fn same(&self) -> bool {
        self.operator_states_differ.is_empty() && self.states.iter().all(StateDiff::is_same)
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
    let found = diff(&open(before)?, &open(after)?)?;
    Ok(DiffReport {
        before: before.display(),
        after: after.display(),
        states: found.states,
        operator_states_differ: found.operator_states_differ,
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
            if s.info_before != s.info_after {
                let show = |i: &Option<String>| i.clone().unwrap_or_else(|| "absent".into());
                writeln!(
                    out,
                    "  recorded as {} -> {}",
                    show(&s.info_before),
                    show(&s.info_after)
                )?;
            }
        }
        for operator in &self.operator_states_differ {
            writeln!(out, "operator state of {operator:?} differs")?;
        }
        writeln!(
            out,
            "{}",
            if self.same() {
                "the same state"
            } else {
                "the state differs"
            }
        )
    }
}
