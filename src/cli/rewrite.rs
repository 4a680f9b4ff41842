//! `statectl rename-state | drop-state | rename-operator | drop-operator | rescale`: a new
//! savepoint rewritten from an existing one with the state processor
//! ([`SavepointRewrite`]); the source is only read, the new savepoint is verified, and a
//! failure leaves the target directory as it was.

use std::io::{self, Write};

use serde::Serialize;

use crate::cli::new_savepoint::NewSavepointDir;
use crate::cli::snapshot::{Location, load};
use crate::cli::{CliError, CliResult, human_bytes, plural};
use crate::runtime::checkpoint::SnapshotKind;
use crate::runtime::processor::SavepointRewrite;

/// One edit, as the commands name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// `rename-state`: state `from` of `operator` becomes `to`.
    RenameState {
        /// The operator id (`""` for a single-operator job).
        operator: String,
        /// The state's name now.
        from: String,
        /// Its new name.
        to: String,
    },
    /// `drop-state`.
    DropState {
        /// The operator id.
        operator: String,
        /// The state.
        state: String,
    },
    /// `rename-operator`.
    RenameOperator {
        /// The operator id now.
        from: String,
        /// Its new id.
        to: String,
    },
    /// `drop-operator`.
    DropOperator {
        /// The operator id.
        operator: String,
    },
    /// `rescale`: the operator's instance count.
    Rescale {
        /// The operator id.
        operator: String,
        /// The new number of instances.
        parallelism: u32,
    },
}

/// What a rewrite wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RewriteReport {
    /// The source savepoint.
    pub source: String,
    /// The new savepoint.
    pub savepoint: String,
    /// What changed, one line per edit.
    pub changes: Vec<String>,
    /// Backend instances of the new savepoint.
    pub instances: usize,
    /// Data files copied unchanged from the source.
    pub files_copied: usize,
    /// Data files written anew.
    pub files_written: usize,
    /// Total bytes of the new savepoint's files.
    pub total_bytes: u64,
}

/// Writes the savepoint `source` with `edit` applied as a new savepoint in `target` (new or
/// empty), verifies it, and reports what changed.
///
/// # Errors
/// [`CliError::Failed`] if `source` is a checkpoint (convert it first), or `target` is not
/// empty or lies in a checkpoint root's managed area; the library's errors for an unknown
/// operator or state, a taken name, a bad parallelism, damaged source files.
pub fn rewrite(source: &Location, target: &Location, edit: &Edit) -> CliResult<RewriteReport> {
    let snapshot = load(source)?;
    if snapshot.meta.kind != SnapshotKind::Savepoint {
        return Err(CliError::Failed(format!(
            "{} is a checkpoint: rewrite commands read savepoints. Convert it first with \
             `statectl convert {} --to <savepoint dir>`",
            source.display(),
            source.display()
        )));
    }
    let rewrite = match edit {
        Edit::RenameState { operator, from, to } => {
            SavepointRewrite::new().rename_state(operator, from, to)
        }
        Edit::DropState { operator, state } => SavepointRewrite::new().drop_state(operator, state),
        Edit::RenameOperator { from, to } => SavepointRewrite::new().rename_operator(from, to),
        Edit::DropOperator { operator } => SavepointRewrite::new().drop_operator(operator),
        Edit::Rescale {
            operator,
            parallelism,
        } => SavepointRewrite::new().rescale(operator, *parallelism),
    };
    let target_dir = NewSavepointDir::open(target, &snapshot.base, "this command")?;
    let report = match rewrite.write(snapshot.storage.as_ref(), target_dir.storage.as_ref()) {
        Ok(report) => report,
        Err(e) => {
            target_dir.discard();
            return Err(e.into());
        }
    };
    Ok(RewriteReport {
        source: source.display(),
        savepoint: target.display(),
        changes: report.changes,
        instances: report.meta.instances.len(),
        files_copied: report.files_copied,
        files_written: report.files_written,
        total_bytes: report.meta.total_bytes(),
    })
}

impl RewriteReport {
    /// Writes the report for people.
    ///
    /// # Errors
    /// Write errors.
    pub fn write_human(&self, out: &mut dyn Write) -> io::Result<()> {
        for change in &self.changes {
            writeln!(out, "{change}")?;
        }
        writeln!(
            out,
            "wrote savepoint {} from {}: {} instance{}, {} file{} written, {} copied, {}; \
             verified",
            self.savepoint,
            self.source,
            self.instances,
            plural(self.instances as u64),
            self.files_written,
            plural(self.files_written as u64),
            self.files_copied,
            human_bytes(self.total_bytes)
        )
    }
}
