//! `statectl verify PATH`: checks a checkpoint, a savepoint, or everything below a directory
//! (every checkpoint root and savepoint there), saying what it checked, what it did not, and
//! which checkpoint a restore of each root would pick.
//!
//! For every snapshot: its `_metadata` parses (and is the one its directory stands for), every
//! referenced file exists with its recorded size and crc32 (read streaming), and every
//! canonical data file (`*.sbdf`) opens and reads back block by block (each block's crc32),
//! agreeing with the metadata on key groups, states and its own row count.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};

use indicatif::ProgressBar;
use serde::Serialize;

use crate::cli::progress::bytes_bar;
use crate::cli::root::{Candidate, RestoreChoice, restore_choice};
use crate::cli::snapshot::{
    LoadedSnapshot, Location, has_metadata, holds_file, is_data_file, load, scan_tree,
};
use crate::cli::{CliError, CliResult, human_bytes, plural};
use crate::model::error::{Error, Result};
use crate::model::format::data_file::DataFileReader;
use crate::model::format::layout::DISCARDED_METADATA_FILE;
use crate::model::format::metadata::METADATA_FILE;
use crate::runtime::checkpoint::{FileEntry, InstanceMetadata, SnapshotKind};

const READ_BUFFER: usize = 1 << 20;

/// How to verify.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Go on after a failure and report every one (otherwise stop at the first).
    pub all: bool,
}

/// The verdict on one checkpoint or savepoint that was checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifiedSnapshot {
    /// `checkpoint` or `savepoint`.
    pub kind: String,
    /// Its id (checkpoints: from the directory name when the metadata is unreadable).
    pub id: u64,
    /// The directory holding `_metadata`.
    pub path: String,
    /// The checkpoint root it belongs to (checkpoints found below a directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// Files it references.
    pub files: usize,
    /// Their total size.
    pub bytes: u64,
    /// Whether everything checked was fine (`false` also when verification stopped inside
    /// it, at its first bad file).
    pub ok: bool,
}

/// Something `verify` did not check, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedItem {
    /// `checkpoint` or `savepoint`.
    pub kind: String,
    /// Its id, when known.
    pub id: Option<u64>,
    /// Its directory.
    pub path: String,
    /// Why it was not checked.
    pub reason: String,
}

/// A checkpoint root `verify` went through, and which checkpoint a restore of it would pick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifiedRoot {
    /// The root.
    pub path: String,
    /// The newest checkpoint whose files all verified (what a restore picks), the ones a
    /// restore would pass over, or why it is not known.
    pub restore: RestoreChoice,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyFailure {
    /// The bad file (full path).
    pub file: String,
    /// What is wrong, naming the file.
    pub message: String,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Whether no problem was found.
    pub ok: bool,
    /// The snapshots checked (every checkpoint of a root newest first, root by root, then the
    /// savepoints).
    pub snapshots: Vec<VerifiedSnapshot>,
    /// Distinct files read.
    pub files_checked: u64,
    /// Their bytes.
    pub bytes_checked: u64,
    /// What was not checked, with why: checkpoint directories without `_metadata` (in flight,
    /// aborted, left over or discarded), and, without `--all`, everything after the first
    /// failure.
    pub skipped: Vec<SkippedItem>,
    /// The checkpoint roots found, with the checkpoint a restore of each would pick.
    pub roots: Vec<VerifiedRoot>,
    /// The problems, in the order found (at most one without `--all`).
    pub failures: Vec<VerifyFailure>,
}

/// Why an item after the first failure was not checked.
pub const STOPPED_EARLY: &str = "not checked: stopped at the first failure; --all checks them";

struct Target {
    kind: SnapshotKind,
    id: u64,
    dir: Location,
    /// Index into the roots, for checkpoints of a root.
    root: Option<usize>,
    loaded: Result<LoadedSnapshot>,
}

/// How a target fared.
enum Outcome {
    NotChecked,
    Ok,
    /// The first failure: its message and whether it is damage.
    Failed(String, bool),
}

/// Verifies `path`: a checkpoint or savepoint directory (holding `_metadata`), or a directory
/// to verify everything under: every checkpoint of every checkpoint root at or below it
/// (newest first), and every savepoint below it.
///
/// Problems with the data are returned in the report (`ok == false`), as is everything that
/// was not checked, with why, and which checkpoint a restore of each root would pick.
///
/// # Errors
/// [`Error::Io`] if `path` is not a readable directory; [`CliError::Failed`] if it holds no
/// checkpoint or savepoint.
pub fn verify(path: &Location, options: VerifyOptions) -> CliResult<VerifyReport> {
    let mut report = VerifyReport::default();
    let mut roots: Vec<Location> = Vec::new();
    let targets = if has_metadata(path) {
        let loaded = load(path);
        let (kind, id) = match &loaded {
            Ok(s) => (s.meta.kind, s.meta.id),
            Err(_) => {
                let id = path
                    .name()
                    .and_then(crate::model::format::layout::parse_checkpoint_dir);
                match id {
                    Some(id) => (SnapshotKind::Checkpoint, id),
                    None => (SnapshotKind::Savepoint, 0),
                }
            }
        };
        vec![Target {
            kind,
            id,
            dir: path.clone(),
            root: None,
            loaded,
        }]
    } else {
        let scan = scan_tree(path)?;
        let mut targets: Vec<Target> = Vec::new();
        for root in scan.roots {
            let index = roots.len();
            roots.push(root.dir.clone());
            for (id, dir) in &root.incomplete {
                let discarded = holds_file(dir, DISCARDED_METADATA_FILE);
                report.skipped.push(SkippedItem {
                    kind: "checkpoint".into(),
                    id: Some(*id),
                    path: dir.display(),
                    reason: if discarded {
                        format!("discarded: no {METADATA_FILE}, only {DISCARDED_METADATA_FILE}")
                    } else {
                        format!("no {METADATA_FILE} (in flight, aborted or left over)")
                    },
                });
            }
            targets.extend(root.checkpoints.into_iter().rev().map(|c| Target {
                kind: SnapshotKind::Checkpoint,
                id: c.id,
                dir: c.dir,
                root: Some(index),
                loaded: c.loaded,
            }));
        }
        targets.extend(scan.savepoints.into_iter().map(|s| Target {
            kind: SnapshotKind::Savepoint,
            id: s.loaded.as_ref().map_or(0, |l| l.meta.id),
            dir: s.dir,
            root: None,
            loaded: s.loaded,
        }));
        if targets.is_empty() && roots.is_empty() {
            return Err(CliError::Failed(format!(
                "no checkpoint or savepoint found in {} (a directory holding {METADATA_FILE}, or a checkpoint root)",
                path.display()
            )));
        }
        targets
    };

    // Each distinct file is read once, even when several checkpoints share it.
    let mut total = 0u64;
    let mut seen = HashSet::new();
    for t in &targets {
        if let Ok(s) = &t.loaded {
            for f in s.meta.files() {
                if seen.insert(s.file_name(f)) {
                    total += f.size;
                }
            }
        }
    }
    let bar = bytes_bar(total);
    bar.set_message("verifying");
    let mut verdicts: HashMap<(String, u64, u32), std::result::Result<(), (String, bool)>> =
        HashMap::new();
    let mut outcomes: Vec<Outcome> = targets.iter().map(|_| Outcome::NotChecked).collect();
    let mut stopped = false;

    for (t, outcome) in targets.iter().zip(outcomes.iter_mut()) {
        if stopped {
            report.skipped.push(SkippedItem {
                kind: t.kind.to_string(),
                id: Some(t.id).filter(|_| t.kind == SnapshotKind::Checkpoint),
                path: t.dir.display(),
                reason: STOPPED_EARLY.into(),
            });
            continue;
        }
        let mut verdict = VerifiedSnapshot {
            kind: t.kind.to_string(),
            id: t.id,
            path: t.dir.display(),
            root: t.root.map(|i| roots[i].display()),
            files: 0,
            bytes: 0,
            ok: true,
        };
        let s = match &t.loaded {
            Ok(s) => s,
            Err(e) => {
                verdict.ok = false;
                report.snapshots.push(verdict);
                report.failures.push(VerifyFailure {
                    file: t.dir.file_name(METADATA_FILE),
                    message: e.to_string(),
                });
                *outcome = Outcome::Failed(e.to_string(), e.is_damage());
                stopped = !options.all;
                continue;
            }
        };
        verdict.files = s.meta.files().count();
        verdict.bytes = s.meta.total_bytes();
        report.snapshots.push(verdict);
        *outcome = Outcome::Ok;
        'files: for instance in &s.meta.instances {
            for entry in &instance.files {
                let key = (s.file_name(entry), entry.size, entry.crc32);
                let result = match verdicts.get(&key) {
                    Some(result) => result.clone(),
                    None => {
                        let result = verify_file(s, instance, entry, &bar);
                        report.files_checked += 1;
                        report.bytes_checked += entry.size;
                        if let Err(e) = &result {
                            report.failures.push(VerifyFailure {
                                file: s.file_name(entry),
                                message: e.to_string(),
                            });
                        }
                        let result = result.map_err(|e| (e.to_string(), e.is_damage()));
                        verdicts.insert(key, result.clone());
                        result
                    }
                };
                if let Err((message, damage)) = result {
                    if let Some(v) = report.snapshots.last_mut() {
                        v.ok = false;
                    }
                    if matches!(outcome, Outcome::Ok) {
                        *outcome = Outcome::Failed(message, damage);
                    }
                    if !options.all {
                        stopped = true;
                        break 'files;
                    }
                }
            }
        }
    }
    bar.finish_and_clear();

    for (index, root) in roots.iter().enumerate() {
        let candidates: Vec<(u64, Candidate<'_>)> = targets
            .iter()
            .zip(&outcomes)
            .filter(|(t, _)| t.root == Some(index))
            .rev()
            .map(|(t, outcome)| {
                let candidate = match (outcome, &t.loaded) {
                    (Outcome::NotChecked, _) => Candidate::NotChecked,
                    (_, Err(e)) => Candidate::Unreadable(e),
                    (Outcome::Ok, Ok(_)) => Candidate::Verified(Ok(())),
                    (Outcome::Failed(message, damage), Ok(_)) => {
                        Candidate::Verified(Err((message.clone(), *damage)))
                    }
                };
                (t.id, candidate)
            })
            .collect();
        // Every candidate is verified already: nothing is read again.
        let storage = root.open()?;
        let mut restore = restore_choice(storage.as_ref(), &candidates);
        if restore.stopped_at.is_some()
            && candidates.iter().any(|(id, c)| {
                Some(*id) == restore.stopped_at && matches!(c, Candidate::NotChecked)
            })
        {
            restore.problem = Some(
                "not determined: verification stopped at the first failure; --all checks every \
                 checkpoint"
                    .into(),
            );
        }
        report.roots.push(VerifiedRoot {
            path: root.display(),
            restore,
        });
    }
    report.ok = report.failures.is_empty();
    Ok(report)
}

/// Checks one file: present, recorded size, recorded crc32 (streaming); data files also
/// block by block.
fn verify_file(
    s: &LoadedSnapshot,
    instance: &InstanceMetadata,
    entry: &FileEntry,
    bar: &ProgressBar,
) -> Result<()> {
    let name = s.file_name(entry);
    let (mut file, size) = s.open_file(entry)?;
    if size != entry.size {
        bar.inc(entry.size);
        return Err(Error::SizeMismatch {
            file: name,
            expected: entry.size,
            actual: size,
        });
    }
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; READ_BUFFER];
    let mut read = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Io {
                    path: name.clone().into(),
                    source: e,
                });
            }
        };
        hasher.update(&buf[..n]);
        read += n as u64;
        bar.inc(n as u64);
    }
    if read != entry.size {
        return Err(Error::SizeMismatch {
            file: name,
            expected: entry.size,
            actual: read,
        });
    }
    let crc = hasher.finalize();
    if crc != entry.crc32 {
        return Err(Error::ChecksumMismatch {
            file: name,
            expected: entry.crc32,
            actual: crc,
        });
    }
    if is_data_file(entry) {
        verify_data_file(s, instance, entry)?;
    }
    Ok(())
}

/// Reads a data file back: header, index, every block (crc32 each), row count.
fn verify_data_file(
    s: &LoadedSnapshot,
    instance: &InstanceMetadata,
    entry: &FileEntry,
) -> Result<()> {
    let name = s.file_name(entry);
    let (file, _) = s.open_file(entry)?;
    let mut reader = DataFileReader::new(file, &name)?;
    reader.check_instance(instance)?;
    let header = reader.header().clone();
    let mut ours = header.states.clone();
    let mut theirs = instance.states.clone();
    ours.sort_by(|a, b| a.name.cmp(&b.name));
    theirs.sort_by(|a, b| a.name.cmp(&b.name));
    if ours != theirs {
        return Err(Error::Corrupt {
            file: name,
            reason: "its states differ from the metadata's".into(),
        });
    }
    let mut rows = 0u64;
    reader.for_each_row(&mut |_, _, _, _| {
        rows += 1;
        Ok(())
    })?;
    if rows != reader.row_count() {
        return Err(Error::Corrupt {
            file: name,
            reason: format!(
                "the footer declares {} rows, the blocks hold {rows}",
                reader.row_count()
            ),
        });
    }
    Ok(())
}

impl VerifyReport {
    /// Writes the verdicts for people (the failures themselves belong on stderr).
    ///
    /// # Errors
    /// Write errors.
    pub fn write_human(&self, out: &mut dyn Write) -> io::Result<()> {
        for s in &self.snapshots {
            let name = if s.kind == "savepoint" && s.id == 0 {
                s.kind.clone()
            } else {
                format!("{} {}", s.kind, s.id)
            };
            writeln!(
                out,
                "{:<6}  {name}  {}  {} file{}, {}",
                if s.ok { "ok" } else { "FAILED" },
                s.path,
                s.files,
                plural(s.files as u64),
                human_bytes(s.bytes)
            )?;
        }
        for item in &self.skipped {
            let name = match item.id {
                Some(id) => format!("{} {id}", item.kind),
                None => item.kind.clone(),
            };
            writeln!(out, "skipped {name}  {}: {}", item.path, item.reason)?;
        }
        for root in &self.roots {
            writeln!(out, "root {}: {}", root.path, root.restore.describe())?;
        }
        let skipped = match self.skipped.len() {
            0 => String::new(),
            n => format!("; {n} not checked (listed above)"),
        };
        if self.ok {
            writeln!(
                out,
                "all good: {} snapshot{}, {} file{}, {} verified{skipped}",
                self.snapshots.len(),
                plural(self.snapshots.len() as u64),
                self.files_checked,
                plural(self.files_checked),
                human_bytes(self.bytes_checked)
            )
        } else {
            writeln!(
                out,
                "verification failed: {} problem{} found{skipped}",
                self.failures.len(),
                plural(self.failures.len() as u64)
            )
        }
    }
}
