//! What a directory is and who holds it: the checks the commands that change a checkpoint
//! root (`gc`, `discard`) make before anything else, and the restore choice `list`, `verify`
//! and `gc` report.
//!
//! **The root rule** (`docs/checkpoint-layout.md` §2): a directory is a checkpoint root when
//! its top level holds no `_metadata` file and holds at least one checkpoint directory
//! (`chk-<id>` spelled canonically, [`parse_checkpoint_dir`], holding something) or at least
//! one coordinator epoch file (`_coordinator/epoch-<20 digits>`). A `_metadata` at the top
//! makes it a checkpoint or savepoint directory, whatever else it holds. Anything else (an
//! empty directory, `/etc`, the parent of a root, a directory with only a `shared/` folder) is
//! not a root, and nothing in it is ever deleted by `statectl`.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;

use crate::cli::location::Location;
use crate::cli::snapshot::read_metadata;
use crate::cli::{CliError, CliResult, format_time_ms};
use crate::model::error::{Error, Result};
use crate::model::format::layout::{
    COORDINATOR_DIR, SHARED_DIR, parse_checkpoint_dir, parse_epoch_file,
};
use crate::model::format::metadata::METADATA_FILE;
use crate::runtime::checkpoint::coordinator::verify_files_stable;
use crate::runtime::checkpoint::lease;
use crate::runtime::checkpoint::{SnapshotKind, SnapshotMetadata};
use crate::storage::CheckpointStorage;

/// How deep the search for the roots a mistyped path may have meant goes.
const SUGGESTION_DEPTH: usize = 4;

/// How many directories that search looks at, at most (a path such as `/` must not make it
/// walk a whole disk).
const SUGGESTION_DIRS: usize = 4096;

/// What the top level of a directory holds, as far as the root rule is concerned.
#[derive(Debug, Default)]
struct TopLevel {
    /// A `_metadata` file.
    metadata: bool,
    /// Canonical `chk-<id>` directories.
    checkpoint_dirs: usize,
    /// Coordinator epoch files in `_coordinator/`.
    epochs: usize,
}

impl TopLevel {
    fn is_root(&self) -> bool {
        !self.metadata && (self.checkpoint_dirs > 0 || self.epochs > 0)
    }
}

/// Reads the top level of a local directory (not following symlinks).
fn local_top_level(dir: &Path) -> Result<TopLevel> {
    let io_err = |e| Error::Io {
        path: dir.to_owned(),
        source: e,
    };
    let mut top = TopLevel::default();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let file_type = entry.file_type().map_err(io_err)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name == METADATA_FILE && file_type.is_file() {
            top.metadata = true;
        } else if file_type.is_dir() && parse_checkpoint_dir(name).is_some() {
            top.checkpoint_dirs += 1;
        } else if file_type.is_dir() && name == COORDINATOR_DIR {
            if let Ok(epochs) = std::fs::read_dir(entry.path()) {
                top.epochs += epochs
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .filter(|e| e.file_name().to_str().and_then(parse_epoch_file).is_some())
                    .count();
            }
        }
    }
    Ok(top)
}

/// Reads the top level of a root on an object store from its listing.
fn listed_top_level(storage: &dyn CheckpointStorage) -> Result<TopLevel> {
    let mut top = TopLevel::default();
    let mut dirs = BTreeSet::new();
    for object in storage.list(None)? {
        let parts: Vec<&str> = object.path.components().collect();
        match parts.as_slice() {
            [METADATA_FILE] => top.metadata = true,
            [COORDINATOR_DIR, name] if parse_epoch_file(name).is_some() => top.epochs += 1,
            [dir, _, ..] if parse_checkpoint_dir(dir).is_some() => {
                dirs.insert(dir.to_string());
            }
            _ => {}
        }
    }
    top.checkpoint_dirs = dirs.len();
    Ok(top)
}

/// Whether `location` is a checkpoint root by the root rule (module docs).
///
/// # Errors
/// I/O and storage errors reading its top level.
pub fn is_root(location: &Location, storage: &dyn CheckpointStorage) -> Result<bool> {
    Ok(top_level(location, storage)?.is_root())
}

fn top_level(location: &Location, storage: &dyn CheckpointStorage) -> Result<TopLevel> {
    match location {
        Location::Dir(dir) => local_top_level(dir),
        Location::Url(_) => listed_top_level(storage),
    }
}

/// Fails with [`CliError::Failed`] unless `location` is a checkpoint root (module docs),
/// saying what it is instead: a savepoint, a checkpoint directory (and its root), or a
/// directory that is neither (and which roots below it the user may have meant). `command`
/// names the refused command in the message.
///
/// # Errors
/// As described; I/O and storage errors reading the directory.
pub fn require_root(
    location: &Location,
    storage: &dyn CheckpointStorage,
    command: &str,
) -> CliResult<()> {
    let top = top_level(location, storage)?;
    if top.is_root() {
        return Ok(());
    }
    let name = location.display();
    if top.metadata {
        let kind = read_metadata(location).map(|(meta, _)| (meta.kind, meta.id));
        let chk_dir = location.name().and_then(parse_checkpoint_dir);
        let message = match (kind, chk_dir) {
            (Ok((SnapshotKind::Savepoint, _)), _) => format!(
                "{name} is a savepoint, not a checkpoint root: {command} works on checkpoint \
                 roots only (a savepoint is the user's: delete it yourself once no job needs it)"
            ),
            (Ok((SnapshotKind::Checkpoint, id)), _) | (Err(_), Some(id)) => format!(
                "{name} is the directory of checkpoint {id}, not a checkpoint root{}",
                location.parent().map_or(String::new(), |parent| format!(
                    ": its root is {}",
                    parent.display()
                ))
            ),
            (Err(_), None) => format!(
                "{name} holds a {METADATA_FILE} at its top (a checkpoint or savepoint \
                 directory), not a checkpoint root"
            ),
        };
        return Err(CliError::Failed(message));
    }
    let below = roots_below(location);
    let hint = if below.is_empty() {
        format!("; {command} changes nothing here")
    } else {
        format!(
            "; checkpoint root{} below it: {} (did you mean {}?)",
            if below.len() == 1 { "" } else { "s" },
            below.join(", "),
            if below.len() == 1 {
                "it"
            } else {
                "one of them"
            }
        )
    };
    Err(CliError::Failed(format!(
        "{name} is not a checkpoint root: its top level holds no chk-<id> directory and no \
         {COORDINATOR_DIR}/epoch-<n> file{hint}"
    )))
}

/// Checkpoint roots below `location` (not itself), for the message of a refused non-root: a
/// bounded search (depth, directories looked at); on an object store, from one listing.
fn roots_below(location: &Location) -> Vec<String> {
    match location {
        Location::Dir(dir) => {
            let mut found = Vec::new();
            let mut budget = SUGGESTION_DIRS;
            local_roots_below(dir, 1, &mut budget, &mut found);
            found
        }
        Location::Url(_) => {
            let Ok(storage) = location.open() else {
                return Vec::new();
            };
            let Ok(listing) = storage.list(None) else {
                return Vec::new();
            };
            let mut roots = BTreeSet::new();
            for object in &listing {
                let parts: Vec<&str> = object.path.components().collect();
                for i in 1..parts.len() {
                    let checkpoint =
                        parse_checkpoint_dir(parts[i]).is_some() && i + 1 < parts.len();
                    let epoch = parts[i] == COORDINATOR_DIR
                        && i + 2 == parts.len()
                        && parse_epoch_file(parts[i + 1]).is_some();
                    if checkpoint || epoch {
                        roots.insert(parts[..i].join("/"));
                        break;
                    }
                }
            }
            roots
                .into_iter()
                .map(|r| location.join(&r).display())
                .collect()
        }
    }
}

fn local_roots_below(dir: &Path, depth: usize, budget: &mut usize, found: &mut Vec<String>) {
    if depth > SUGGESTION_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut subdirs: Vec<_> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    subdirs.sort();
    for sub in subdirs {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        match local_top_level(&sub) {
            Ok(top) if top.is_root() => found.push(sub.display().to_string()),
            Ok(top) if !top.metadata => local_roots_below(&sub, depth + 1, budget, found),
            _ => {}
        }
    }
}

/// The lease of the coordinator that holds a root, as `statectl` needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LeaseInfo {
    /// The coordinator's epoch.
    pub epoch: u64,
    /// When it was last renewed, milliseconds since the Unix epoch.
    pub renewed_ms: u64,
    /// When it expires unless renewed, milliseconds since the Unix epoch.
    pub expires_ms: u64,
    /// Whether it was live when read.
    pub live: bool,
}

/// The lease of the newest coordinator epoch of the root, if it holds one, with whether it is
/// live by this machine's clock: the adapter between `statectl` and the coordinator's lease
/// ([`lease::read_lease`]).
///
/// # Errors
/// Storage errors; a damaged lease record.
pub fn read_lease(storage: &dyn CheckpointStorage) -> Result<Option<LeaseInfo>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Ok(lease::read_lease(storage)?.map(|l| LeaseInfo {
        epoch: l.epoch,
        renewed_ms: l.renewed_ms,
        expires_ms: l.expires_ms,
        live: l.is_live(now),
    }))
}

/// Fails with [`CliError::Failed`] if a live coordinator holds the root (its lease has not
/// expired), or if the lease cannot be read (a coordinator may hold the root), unless
/// `ignore` says the operator knows the job is dead. Returns the lease found, live or not.
///
/// # Errors
/// As described; storage errors reading the lease.
pub fn require_no_live_lease(
    storage: &dyn CheckpointStorage,
    root: &Location,
    ignore: bool,
) -> CliResult<Option<LeaseInfo>> {
    let lease = match read_lease(storage) {
        Ok(lease) => lease,
        Err(e) if e.is_damage() && ignore => None,
        Err(e) if e.is_damage() => {
            return Err(CliError::Failed(format!(
                "the coordinator lease of {} cannot be read ({e}), so a coordinator may hold \
                 the root; stop the job first, or pass --ignore-lease if it is dead",
                root.display()
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(lease) = lease.filter(|l| l.live && !ignore) {
        return Err(CliError::Failed(format!(
            "a coordinator (epoch {}) holds {} until {} (renewed {}); stop the job first, or \
             pass --ignore-lease if it is dead",
            lease.epoch,
            root.display(),
            format_time_ms(lease.expires_ms),
            format_time_ms(lease.renewed_ms),
        )));
    }
    Ok(lease)
}

/// A checkpoint a restore would pass over, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PassedOver {
    /// The checkpoint id.
    pub id: u64,
    /// Why a restore does not use it: the first bad file, or why its `_metadata` is unusable.
    pub reason: String,
}

/// Which checkpoint of a root a restore would pick, found as
/// [`latest_restorable`](crate::runtime::checkpoint::latest_restorable) finds it: the newest
/// completed checkpoint whose files all verify (present, recorded size, crc32), passing over
/// damaged ones, never past a failed read or a checkpoint of a newer format.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RestoreChoice {
    /// The checkpoint a restore would pick; `None` if none would restore.
    pub checkpoint: Option<u64>,
    /// Newer checkpoints a restore passes over, newest first.
    pub passed_over: Vec<PassedOver>,
    /// Why a restore would pick nothing (`None` when it picks a checkpoint).
    pub problem: Option<String>,
    /// The checkpoint at which a restore would stop with an error (a failed read, a newer
    /// format), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<u64>,
    /// Whether [`problem`](Self::problem) is damage only (every checkpoint damaged or none at
    /// all), rather than a failed read or a newer format that stops the search.
    #[serde(skip)]
    pub only_damage: bool,
}

impl RestoreChoice {
    /// The choice for people: `checkpoint 3`, `checkpoint 3 (passing over 5, 4)`, or why none.
    pub fn describe(&self) -> String {
        match (self.checkpoint, &self.problem) {
            (Some(id), _) => {
                let mut text = format!("a restore would pick checkpoint {id}");
                if !self.passed_over.is_empty() {
                    let reasons: Vec<String> = self
                        .passed_over
                        .iter()
                        .map(|p| format!("{} is damaged: {}", p.id, p.reason))
                        .collect();
                    text.push_str(&format!(" ({})", reasons.join("; ")));
                }
                text
            }
            (None, Some(problem)) if problem.starts_with("not determined") => {
                format!("which checkpoint a restore would pick is {problem}")
            }
            (None, Some(problem)) => format!("no checkpoint would restore: {problem}"),
            (None, None) => "no checkpoint would restore".into(),
        }
    }
}

/// How one checkpoint of a root stands, as the restore choice sees it.
pub enum Candidate<'a> {
    /// A completed checkpoint: its files are verified with [`verify_files_stable`] (a failing file is read again before damage is believed).
    Readable(&'a SnapshotMetadata),
    /// A completed checkpoint the caller verified: `Err((message, is damage))` for the first
    /// failure, if any.
    Verified(std::result::Result<(), (String, bool)>),
    /// Not verified by the caller (it stopped before): the choice cannot go past it.
    NotChecked,
    /// A `_metadata` that cannot be used, with why.
    Unreadable(&'a Error),
}

/// Finds the checkpoint a restore would pick among `candidates` (ascending ids), verifying
/// [`Candidate::Readable`] ones in `storage` newest first until one verifies (module docs of
/// [`RestoreChoice`]).
pub fn restore_choice(
    storage: &dyn CheckpointStorage,
    candidates: &[(u64, Candidate<'_>)],
) -> RestoreChoice {
    let mut choice = RestoreChoice::default();
    for (id, candidate) in candidates.iter().rev() {
        let verdict: std::result::Result<(), String> = match candidate {
            Candidate::Unreadable(e) if matches!(e, Error::UnsupportedFormat { .. }) => {
                choice.stopped_at = Some(*id);
                choice.problem = Some(format!(
                    "checkpoint {id} has a format this build does not know, and a restore does \
                     not fall back past it ({e})"
                ));
                return choice;
            }
            Candidate::Unreadable(e) => Err(format!("its {METADATA_FILE} cannot be read: {e}")),
            Candidate::NotChecked => {
                choice.stopped_at = Some(*id);
                choice.problem = Some(format!("not determined: checkpoint {id} was not checked"));
                return choice;
            }
            Candidate::Verified(Ok(())) => Ok(()),
            Candidate::Verified(Err((e, true))) => Err(e.clone()),
            Candidate::Verified(Err((e, false))) => {
                choice.stopped_at = Some(*id);
                choice.problem = Some(format!("a restore would fail reading checkpoint {id}: {e}"));
                return choice;
            }
            Candidate::Readable(meta) => match verify_files_stable(storage, meta) {
                Ok(()) => Ok(()),
                Err(e) if e.is_damage() => Err(e.to_string()),
                Err(e) => {
                    choice.stopped_at = Some(*id);
                    choice.problem =
                        Some(format!("a restore would fail reading checkpoint {id}: {e}"));
                    return choice;
                }
            },
        };
        match verdict {
            Ok(()) => {
                choice.checkpoint = Some(*id);
                return choice;
            }
            Err(reason) => choice.passed_over.push(PassedOver { id: *id, reason }),
        }
    }
    choice.only_damage = true;
    choice.problem = Some(if choice.passed_over.is_empty() {
        "the root holds no completed checkpoint".into()
    } else {
        let ids: Vec<String> = choice
            .passed_over
            .iter()
            .map(|p| p.id.to_string())
            .collect();
        format!("every checkpoint is damaged ({})", ids.join(", "))
    });
    choice
}

/// Whether `dir` is the directory `shared` or `_coordinator` of a root, or a `chk-*` one:
/// areas of the layout that never hold savepoints or other roots.
pub(crate) fn is_layout_area(name: &str) -> bool {
    name == SHARED_DIR
        || name == COORDINATOR_DIR
        || name.starts_with(crate::model::format::layout::CHECKPOINT_DIR_PREFIX)
}
