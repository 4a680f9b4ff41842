//! `statectl list DIR`: the checkpoints of every checkpoint root at or below a directory, with
//! their state, the checkpoint a restore would pick, and the savepoints below it.
//!
//! Read-only: the `_metadata` files are read directly, never through a
//! [`CheckpointCoordinator`](crate::runtime::checkpoint::CheckpointCoordinator) (which garbage-collects
//! when it opens a root).

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};

use serde::Serialize;

use crate::cli::root::{Candidate, RestoreChoice, restore_choice};
use crate::cli::snapshot::{LoadedSnapshot, Location, has_metadata, holds_file, scan_tree};
use crate::cli::{CliError, CliResult, format_time_ms, human_bytes};
use crate::model::error::Result;
use crate::model::format::layout::{DISCARDED_METADATA_FILE, parse_checkpoint_dir};
use crate::model::format::metadata::METADATA_FILE;
use crate::runtime::checkpoint::SnapshotKind;
use crate::storage::StoragePath;

/// One checkpoint or savepoint, or a checkpoint directory without `_metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListEntry {
    /// The checkpoint id (savepoints: the id recorded in their metadata, usually 0).
    pub id: u64,
    /// `checkpoint` or `savepoint`.
    pub kind: &'static str,
    /// `completed` (its `_metadata` reads and every file it lists is present with its recorded
    /// size), `damaged` (a listed file is missing or has another size), `unreadable` (its
    /// `_metadata` cannot be used), `incomplete` (a `chk-*` directory without `_metadata`: in
    /// flight, aborted or a leftover) or `discarded` (set aside by `statectl discard`: only
    /// `_metadata.discarded` is left).
    pub state: &'static str,
    /// The `_metadata`: `ok`, `unreadable`, `missing` or `discarded`.
    pub metadata: &'static str,
    /// The checkpoint root it belongs to (checkpoints only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
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
    /// Whether every referenced file is in storage with its recorded size (from a listing:
    /// contents are not read; `statectl verify` reads them). `None` when unreadable.
    pub files_present: Option<bool>,
    /// The referenced files that are missing or have another size than recorded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub file_problems: Vec<String>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: Option<u64>,
    /// Creation time, RFC 3339 UTC.
    pub created: Option<String>,
    /// What a restore of its root does with it (checkpoints only): `picked` (the newest
    /// checkpoint whose files all verify: a restore uses it), `passed over: <why>` (newer than
    /// the pick, damaged), `stops a restore: <why>` (a restore fails here); absent for older
    /// checkpoints and savepoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore: Option<String>,
    /// Why the entry is unreadable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A checkpoint root `list` found, and which checkpoint a restore of it would pick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListedRoot {
    /// The root.
    pub path: String,
    /// The checkpoint a restore would pick, and the ones it passes over.
    pub restore: RestoreChoice,
}

/// What `list` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ListReport {
    /// Checkpoints by root and id (directories without `_metadata` among them), then
    /// savepoints by path.
    pub entries: Vec<ListEntry>,
    /// The checkpoint roots, by path (in the JSON output through each entry's `root` and
    /// `restore`).
    #[serde(skip)]
    pub roots: Vec<ListedRoot>,
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
            let file_problems = file_problems(s);
            ListEntry {
                id: s.meta.id,
                kind: kind_name(kind),
                state: if file_problems.is_empty() {
                    "completed"
                } else {
                    "damaged"
                },
                metadata: "ok",
                root: None,
                path,
                backends,
                instances: Some(s.meta.instances.len()),
                total_bytes: Some(s.meta.total_bytes()),
                new_bytes: Some(new_bytes),
                files: Some(s.meta.files().count()),
                files_present: Some(file_problems.is_empty()),
                file_problems,
                created_ms: Some(s.meta.created_ms),
                created: Some(format_time_ms(s.meta.created_ms)),
                restore: None,
                error: None,
            }
        }
        Err(e) => ListEntry {
            id,
            kind: kind_name(kind),
            state: "unreadable",
            metadata: "unreadable",
            root: None,
            path,
            backends: Vec::new(),
            instances: None,
            total_bytes: None,
            new_bytes: None,
            files: None,
            files_present: None,
            file_problems: Vec::new(),
            created_ms: None,
            created: None,
            restore: None,
            error: Some(e.to_string()),
        },
    }
}

/// The files of `s` that its storage's listing shows missing or with another size. A failed
/// listing is reported as the one problem.
fn file_problems(s: &LoadedSnapshot) -> Vec<String> {
    let listing = match s.storage.list(None) {
        Ok(listing) => listing,
        Err(e) => return vec![format!("cannot list {}: {e}", s.base.display())],
    };
    let sizes: HashMap<&StoragePath, u64> = listing.iter().map(|o| (&o.path, o.size)).collect();
    let mut problems = Vec::new();
    for f in s.meta.files() {
        match sizes.get(&f.path) {
            None => problems.push(format!("missing file {}", s.file_name(f))),
            Some(size) if *size != f.size => problems.push(format!(
                "size mismatch in {}: expected {} bytes, found {size}",
                s.file_name(f),
                f.size
            )),
            Some(_) => {}
        }
    }
    problems
}

fn incomplete_entry(id: u64, dir: &Location, root: &Location) -> ListEntry {
    let discarded = holds_file(dir, DISCARDED_METADATA_FILE);
    ListEntry {
        id,
        kind: kind_name(SnapshotKind::Checkpoint),
        state: if discarded { "discarded" } else { "incomplete" },
        metadata: if discarded { "discarded" } else { "missing" },
        root: Some(root.display()),
        path: dir.display(),
        backends: Vec::new(),
        instances: None,
        total_bytes: None,
        new_bytes: None,
        files: None,
        files_present: None,
        file_problems: Vec::new(),
        created_ms: None,
        created: None,
        restore: None,
        error: Some(if discarded {
            format!(
                "its {METADATA_FILE} was set aside ({DISCARDED_METADATA_FILE}): the next gc deletes its directory"
            )
        } else {
            format!("no {METADATA_FILE}: in flight, aborted or left over (gc deletes it)")
        }),
    }
}

fn kind_name(kind: SnapshotKind) -> &'static str {
    match kind {
        SnapshotKind::Checkpoint => "checkpoint",
        SnapshotKind::Savepoint => "savepoint",
    }
}

/// Lists the checkpoints of every checkpoint root at or below `dir` (`chk-*` directories, with
/// or without `_metadata`, with the state of each) and the savepoints anywhere below it, and
/// which checkpoint a restore of each root would pick (its newest checkpoint whose files all
/// verify: the files of the checkpoints it looks at are read).
///
/// # Errors
/// [`crate::Error::Io`] if `dir` is not a readable directory; [`CliError::Failed`] if it is a
/// checkpoint directory rather than a root.
pub fn list(dir: &Location) -> CliResult<ListReport> {
    let scan = scan_tree(dir)?;
    if scan.roots.is_empty()
        && scan.savepoints.is_empty()
        && dir.name().and_then(parse_checkpoint_dir).is_some()
        && has_metadata(dir)
    {
        return Err(CliError::Failed(format!(
            "{} is a checkpoint directory, not a checkpoint root: list its parent, or inspect it",
            dir.display()
        )));
    }
    let mut report = ListReport::default();
    for root in &scan.roots {
        let storage = root.dir.open()?;
        let candidates: Vec<(u64, Candidate<'_>)> = root
            .checkpoints
            .iter()
            .map(|c| {
                let candidate = match &c.loaded {
                    Ok(s) => Candidate::Readable(&s.meta),
                    Err(e) => Candidate::Unreadable(e),
                };
                (c.id, candidate)
            })
            .collect();
        let choice = restore_choice(storage.as_ref(), &candidates);
        let mut entries: Vec<ListEntry> = Vec::new();
        let mut previous: Option<HashSet<StoragePath>> = None;
        for c in &root.checkpoints {
            let mut e = entry(
                SnapshotKind::Checkpoint,
                c.id,
                &c.dir,
                &c.loaded,
                previous.as_ref(),
            );
            e.root = Some(root.dir.display());
            e.restore = restore_note(&choice, c.id);
            entries.push(e);
            if let Ok(s) = &c.loaded {
                previous = Some(s.meta.files().map(|f| f.path.clone()).collect());
            }
        }
        for (id, dir) in &root.incomplete {
            entries.push(incomplete_entry(*id, dir, &root.dir));
        }
        entries.sort_by_key(|e| e.id);
        report.entries.extend(entries);
        report.roots.push(ListedRoot {
            path: root.dir.display(),
            restore: choice,
        });
    }
    for s in &scan.savepoints {
        let id = s.loaded.as_ref().map_or(0, |l| l.meta.id);
        report
            .entries
            .push(entry(SnapshotKind::Savepoint, id, &s.dir, &s.loaded, None));
    }
    Ok(report)
}

/// What a restore does with checkpoint `id`, by `choice`.
fn restore_note(choice: &RestoreChoice, id: u64) -> Option<String> {
    if choice.checkpoint == Some(id) {
        return Some("picked".into());
    }
    if let Some(p) = choice.passed_over.iter().find(|p| p.id == id) {
        return Some(format!("passed over: {}", p.reason));
    }
    (choice.stopped_at == Some(id)).then(|| {
        format!(
            "stops a restore: {}",
            choice.problem.clone().unwrap_or_default()
        )
    })
}

impl ListReport {
    /// Writes the report as a table for people, then a line per root saying which checkpoint a
    /// restore would pick, and the problems of each damaged, unreadable or incomplete entry.
    ///
    /// # Errors
    /// Write errors.
    pub fn write_human(&self, out: &mut dyn Write) -> io::Result<()> {
        if self.entries.is_empty() && self.roots.is_empty() {
            return writeln!(out, "no checkpoints or savepoints found");
        }
        let rows: Vec<[String; 11]> = self
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
                    match e.restore.as_deref() {
                        Some("picked") => "picked".into(),
                        Some(note) if note.starts_with("passed over") => "passed over".into(),
                        Some(_) => "stops".into(),
                        None => "-".into(),
                    },
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
            "RESTORE",
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
        if !rows.is_empty() {
            line(out, &header)?;
            for row in &rows {
                let cells: Vec<&str> = row.iter().map(String::as_str).collect();
                line(out, &cells)?;
            }
        }
        for root in &self.roots {
            writeln!(out, "root {}: {}", root.path, root.restore.describe())?;
        }
        for e in &self.entries {
            let name = format!("{} {}", e.kind, e.path);
            match e.state {
                "unreadable" | "discarded" => writeln!(
                    out,
                    "{name} is {}: {}",
                    e.state,
                    e.error.as_deref().unwrap_or_default()
                )?,
                "incomplete" => writeln!(
                    out,
                    "{name} is incomplete: {}",
                    e.error.as_deref().unwrap_or_default()
                )?,
                "damaged" => {
                    for problem in &e.file_problems {
                        writeln!(out, "{name} is damaged: {problem}")?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}
