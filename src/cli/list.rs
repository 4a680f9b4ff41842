//! `statectl list ROOT`: the checkpoints of a checkpoint root and the savepoints below it.
//!
//! Read-only: the `_metadata` files are read directly, never through a
//! [`CheckpointCoordinator`](crate::runtime::checkpoint::CheckpointCoordinator) (which garbage-collects
//! when it opens a root).

use std::collections::HashSet;
use std::io::{self, Write};

use serde::Serialize;

use crate::cli::snapshot::{LoadedSnapshot, Location, has_metadata, scan_root};
use crate::cli::{CliError, CliResult, format_time_ms, human_bytes};
use crate::model::error::Result;
use crate::model::format::layout::parse_checkpoint_dir;
use crate::runtime::checkpoint::SnapshotKind;
use crate::storage::StoragePath;

/// One checkpoint or savepoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListEntry {
    /// The checkpoint id (savepoints: the id recorded in their metadata, usually 0).
    pub id: u64,
    /// `checkpoint` or `savepoint`.
    pub kind: &'static str,
    /// `completed`, or `unreadable` when the `_metadata` cannot be used.
    pub state: &'static str,
    /// The directory holding `_metadata`.
    pub path: String,
    /// The distinct backends of the instances (`heap`, `rocksdb`).
    pub backends: Vec<String>,
    /// Number of backend instances (`None` when unreadable).
    pub instances: Option<usize>,
    /// Bytes of every referenced file.
    pub total_bytes: Option<u64>,
    /// Bytes of the files the previous completed checkpoint (by id) does not reference: what
    /// this checkpoint added. The total for the first checkpoint and for savepoints.
    pub new_bytes: Option<u64>,
    /// Number of referenced files.
    pub files: Option<usize>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: Option<u64>,
    /// Creation time, RFC 3339 UTC.
    pub created: Option<String>,
    /// Why the entry is unreadable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `list` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ListReport {
    /// Checkpoints by id, then savepoints by path.
    pub entries: Vec<ListEntry>,
}

fn entry(
    kind: SnapshotKind,
    id: u64,
    path: &Location,
    loaded: &Result<LoadedSnapshot>,
    previous: Option<&HashSet<StoragePath>>,
) -> ListEntry {
    let path = path.display();
    match loaded {
        Ok(s) => {
            let mut backends: Vec<String> = Vec::new();
            for i in &s.meta.instances {
                let name = i.backend.to_string();
                if !backends.contains(&name) {
                    backends.push(name);
                }
            }
            let new_bytes = s
                .meta
                .files()
                .filter(|f| previous.is_none_or(|p| !p.contains(&f.path)))
                .map(|f| f.size)
                .sum();
            ListEntry {
                id: s.meta.id,
                kind: kind_name(kind),
                state: "completed",
                path,
                backends,
                instances: Some(s.meta.instances.len()),
                total_bytes: Some(s.meta.total_bytes()),
                new_bytes: Some(new_bytes),
                files: Some(s.meta.files().count()),
                created_ms: Some(s.meta.created_ms),
                created: Some(format_time_ms(s.meta.created_ms)),
                error: None,
            }
        }
        Err(e) => ListEntry {
            id,
            kind: kind_name(kind),
            state: "unreadable",
            path,
            backends: Vec::new(),
            instances: None,
            total_bytes: None,
            new_bytes: None,
            files: None,
            created_ms: None,
            created: None,
            error: Some(e.to_string()),
        },
    }
}

fn kind_name(kind: SnapshotKind) -> &'static str {
    match kind {
        SnapshotKind::Checkpoint => "checkpoint",
        SnapshotKind::Savepoint => "savepoint",
    }
}

/// Lists the checkpoints (`chk-*` directories with a `_metadata`) of `root` and the
/// savepoints anywhere below it.
///
/// # Errors
/// [`crate::Error::Io`] if `root` is not a readable directory; [`CliError::Failed`] if it is a
/// checkpoint directory rather than a root.
pub fn list(root: &Location) -> CliResult<ListReport> {
    let scan = scan_root(root)?;
    if scan.checkpoints.is_empty()
        && scan.savepoints.is_empty()
        && root.name().and_then(parse_checkpoint_dir).is_some()
        && has_metadata(root)
    {
        return Err(CliError::Failed(format!(
            "{} is a checkpoint directory, not a checkpoint root: list its parent, or inspect it",
            root.display()
        )));
    }
    let mut entries = Vec::new();
    let mut previous: Option<HashSet<StoragePath>> = None;
    for c in &scan.checkpoints {
        entries.push(entry(
            SnapshotKind::Checkpoint,
            c.id,
            &c.dir,
            &c.loaded,
            previous.as_ref(),
        ));
        if let Ok(s) = &c.loaded {
            previous = Some(s.meta.files().map(|f| f.path.clone()).collect());
        }
    }
    for s in &scan.savepoints {
        let id = s.loaded.as_ref().map_or(0, |l| l.meta.id);
        entries.push(entry(SnapshotKind::Savepoint, id, &s.dir, &s.loaded, None));
    }
    Ok(ListReport { entries })
}

impl ListReport {
    /// Writes the report as a table for people.
    ///
    /// # Errors
    /// Write errors.
    pub fn write_human(&self, out: &mut dyn Write) -> io::Result<()> {
        if self.entries.is_empty() {
            return writeln!(out, "no checkpoints or savepoints found");
        }
        let rows: Vec<[String; 10]> = self
            .entries
            .iter()
            .map(|e| {
                let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                [
                    if e.kind == "savepoint" && e.id == 0 {
                        "-".into()
                    } else {
                        e.id.to_string()
                    },
                    e.kind.to_owned(),
                    e.state.to_owned(),
                    if e.backends.is_empty() {
                        "-".into()
                    } else {
                        e.backends.join(",")
                    },
                    opt(e.instances.map(|n| n.to_string())),
                    opt(e.files.map(|n| n.to_string())),
                    opt(e.total_bytes.map(human_bytes)),
                    opt(e.new_bytes.map(human_bytes)),
                    opt(e.created.clone()),
                    e.path.clone(),
                ]
            })
            .collect();
        let header = [
            "ID",
            "KIND",
            "STATE",
            "BACKEND",
            "INSTANCES",
            "FILES",
            "TOTAL",
            "NEW",
            "CREATED",
            "PATH",
        ];
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        let last = header.len() - 1;
        let line = |out: &mut dyn Write, cells: &[&str]| -> io::Result<()> {
            for (i, cell) in cells.iter().enumerate() {
                if i == last {
                    writeln!(out, "{cell}")?;
                } else {
                    write!(out, "{cell:<width$}  ", width = widths[i])?;
                }
            }
            Ok(())
        };
        line(out, &header)?;
        for row in &rows {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            line(out, &cells)?;
        }
        for e in &self.entries {
            if let Some(error) = &e.error {
                writeln!(out, "{} {} is unreadable: {error}", e.kind, e.path)?;
            }
        }
        Ok(())
    }
}
