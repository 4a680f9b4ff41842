//! Finding and loading checkpoints and savepoints, read-only, in a local directory or on an
//! object store ([`Location`]).
//!
//! A checkpoint directory (`<root>/chk-<id>/`) holds a `_metadata` whose file paths are relative
//! to the checkpoint root, its parent. A savepoint directory holds a `_metadata` (kind savepoint)
//! whose file paths are relative to the savepoint directory itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::backends::incremental_snapshot::{ChainFile, ChainRows, chain_roles};
pub use crate::cli::location::{Location, require_dir};
use crate::cli::root::is_layout_area;
use crate::model::error::{Error, Result};
use crate::model::format::data_file::DataFileReader;
use crate::model::format::layout::{
    COORDINATOR_DIR, checkpoint_dir_name, parse_checkpoint_dir, parse_epoch_file,
};
use crate::model::format::metadata::InstanceMetadata;
use crate::model::format::metadata::{MAX_METADATA_BYTES, METADATA_FILE};
use crate::runtime::checkpoint::{FileEntry, SnapshotKind, SnapshotMetadata};
use crate::storage::{CheckpointStorage, StoragePath};

/// The rows of `instance`'s key groups in `range` if its files are an incremental chain
/// (`backends::incremental_snapshot`): the base with every delta applied, as a restore reads
/// them. `Ok(None)` for any other instance.
///
/// # Errors
/// [`Error::Corrupt`] for files out of chain order; I/O and format errors naming the file.
pub(crate) fn chain_rows(
    snapshot: &LoadedSnapshot,
    instance: &InstanceMetadata,
    range: crate::model::key_group::KeyGroupRange,
) -> Result<Option<ChainRows<File>>> {
    let chained = instance
        .files
        .first()
        .is_some_and(|f| ChainFile::of(&f.local_name) == Some(ChainFile::Base));
    if !chained {
        return Ok(None);
    }
    let roles = chain_roles(instance)?;
    let mut files = Vec::with_capacity(roles.len());
    for (entry, role) in instance.files.iter().zip(roles) {
        let (file, _) = snapshot.open_file(entry)?;
        let reader = DataFileReader::new(file, &snapshot.file_name(entry))?;
        reader.check_instance(instance)?;
        files.push((role, reader));
    }
    Ok(Some(ChainRows::new(
        vec![(instance.key_groups, files)],
        range,
    )))
}

/// Suffix of canonical data files (heap checkpoints, savepoints).
pub const DATA_FILE_SUFFIX: &str = ".sbdf";

/// How deep [`scan_root`] looks for savepoints below a local root.
const MAX_SCAN_DEPTH: usize = 32;

/// A checkpoint or savepoint whose `_metadata` was read.
pub struct LoadedSnapshot {
    /// The directory holding `_metadata`.
    pub dir: Location,
    /// The directory the metadata's file paths are relative to: the checkpoint root (the parent
    /// of [`dir`](Self::dir)) for a checkpoint, the directory itself for a savepoint.
    pub base: Location,
    /// The storage rooted at [`base`](Self::base).
    pub storage: Arc<dyn CheckpointStorage>,
    /// The parsed metadata.
    pub meta: SnapshotMetadata,
    /// The format version in the `_metadata` header.
    pub format_version: u16,
    /// Files of an object store downloaded for reading, by storage path.
    downloads: Mutex<Option<(tempfile::TempDir, HashMap<StoragePath, PathBuf>)>>,
}

impl std::fmt::Debug for LoadedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedSnapshot")
            .field("dir", &self.dir)
            .field("base", &self.base)
            .field("meta", &self.meta)
            .field("format_version", &self.format_version)
            .finish_non_exhaustive()
    }
}

impl LoadedSnapshot {
    /// How messages name the file of `entry`: its full local path or URL.
    pub fn file_name(&self, entry: &FileEntry) -> String {
        self.base.file_name(entry.path.as_str())
    }

    /// The size of the file of `entry` in storage; [`Error::MissingFile`] (naming the full
    /// path) if there is none. Refuses symlinks like the storage does.
    ///
    /// # Errors
    /// [`Error::MissingFile`], [`Error::InvalidPath`] for a symlink, I/O errors.
    pub fn stored_size(&self, entry: &FileEntry) -> Result<u64> {
        self.storage
            .size(&entry.path)?
            .ok_or_else(|| Error::MissingFile {
                file: self.file_name(entry),
            })
    }

    /// Opens the file of `entry` for reading, after checking that it is in storage. A file of
    /// an object store is downloaded once (streamed to a temporary file) and read from there.
    ///
    /// # Errors
    /// As [`LoadedSnapshot::stored_size`]; I/O and storage errors.
    pub fn open_file(&self, entry: &FileEntry) -> Result<(File, u64)> {
        let size = self.stored_size(entry)?;
        let local = match self.base.local() {
            Some(dir) => {
                let mut local = dir.to_owned();
                local.extend(entry.path.components());
                local
            }
            None => self.download(entry)?,
        };
        let file = File::open(&local).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::MissingFile {
                file: self.file_name(entry),
            },
            _ => Error::Io {
                path: local.clone(),
                source: e,
            },
        })?;
        Ok((file, size))
    }

    fn download(&self, entry: &FileEntry) -> Result<PathBuf> {
        let mut downloads = self.downloads.lock().unwrap_or_else(|p| p.into_inner());
        if downloads.is_none() {
            let dir = tempfile::Builder::new()
                .prefix("statectl-")
                .tempdir()
                .map_err(|e| Error::io(std::env::temp_dir(), e))?;
            *downloads = Some((dir, HashMap::new()));
        }
        let Some((dir, files)) = downloads.as_mut() else {
            unreachable!("set above");
        };
        if let Some(local) = files.get(&entry.path) {
            return Ok(local.clone());
        }
        let local = dir.path().join(files.len().to_string());
        self.storage.get_to_file(&entry.path, &local)?;
        files.insert(entry.path.clone(), local.clone());
        Ok(local)
    }

    /// The name of the snapshot for people: `checkpoint 7` or `savepoint <dir>`.
    pub fn describe(&self) -> String {
        match self.meta.kind {
            SnapshotKind::Checkpoint => format!("checkpoint {}", self.meta.id),
            SnapshotKind::Savepoint => format!("savepoint {}", self.dir.display()),
        }
    }
}

/// Whether `entry` is a canonical data file (heap checkpoints, savepoints).
pub fn is_data_file(entry: &FileEntry) -> bool {
    entry.local_name.ends_with(DATA_FILE_SUFFIX)
}

/// Whether `dir` holds a `_metadata` file (locally: not following a symlink).
pub fn has_metadata(dir: &Location) -> bool {
    holds_file(dir, METADATA_FILE)
}

/// Whether `dir` holds a file `name` (locally: not following a symlink).
pub fn holds_file(dir: &Location, name: &str) -> bool {
    match dir {
        Location::Dir(dir) => std::fs::symlink_metadata(dir.join(name)).is_ok_and(|m| m.is_file()),
        Location::Url(_) => dir.open().is_ok_and(|storage| {
            StoragePath::parse(name)
                .and_then(|p| storage.exists(&p))
                .unwrap_or(false)
        }),
    }
}

/// Reads and parses `dir/_metadata`; errors name the full path of the file.
///
/// # Errors
/// I/O and storage errors; the format errors of [`SnapshotMetadata::decode`].
pub fn read_metadata(dir: &Location) -> Result<(SnapshotMetadata, u16)> {
    let Location::Dir(dir) = dir else {
        let storage = dir.open()?;
        let meta = SnapshotMetadata::read(storage.as_ref(), &StoragePath::parse(METADATA_FILE)?)?;
        // Every accepted `_metadata` has one encoding (the readers check it): its version is
        // that of the re-encoded bytes.
        let bytes = meta.encode();
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        return Ok((meta, version));
    };
    read_local_metadata(dir)
}

fn read_local_metadata(dir: &Path) -> Result<(SnapshotMetadata, u16)> {
    let path = dir.join(METADATA_FILE);
    let name = path.display().to_string();
    let io_error = |e: io::Error| match e.kind() {
        io::ErrorKind::NotFound => Error::MissingFile { file: name.clone() },
        _ => Error::Io {
            path: path.clone(),
            source: e,
        },
    };
    // The size bound is checked before reading: a huge file must not cost its size in memory.
    let file = File::open(&path).map_err(io_error)?;
    let size = file.metadata().map_err(io_error)?.len();
    if size > MAX_METADATA_BYTES as u64 {
        return Err(Error::corrupt(
            &name,
            format!("{size} bytes is too large for metadata"),
        ));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    io::Read::read_to_end(
        &mut io::Read::take(file, MAX_METADATA_BYTES as u64 + 1),
        &mut bytes,
    )
    .map_err(io_error)?;
    let meta = SnapshotMetadata::decode(&bytes, &name)?;
    // decode accepted the header, so the version field is there.
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    Ok((meta, version))
}

/// Loads the checkpoint or savepoint in `dir` (the directory holding `_metadata`).
///
/// Applies the checks the library applies before using one: a `chk-<id>` directory must
/// describe checkpoint `<id>` (as [`CheckpointCoordinator::open`] requires), and a savepoint's
/// files must be plain files of its directory (as [`read_savepoint`] requires).
///
/// [`CheckpointCoordinator::open`]: crate::runtime::checkpoint::CheckpointCoordinator::open
/// [`read_savepoint`]: crate::runtime::savepoint::read_savepoint
///
/// # Errors
/// I/O and format errors naming the `_metadata` file.
pub fn load(dir: &Location) -> Result<LoadedSnapshot> {
    if let Location::Dir(path) = dir {
        require_dir(path)?;
    }
    let (meta, format_version) = read_metadata(dir)?;
    let metadata_name = dir.file_name(METADATA_FILE);
    let dir_id = dir.name().and_then(parse_checkpoint_dir);
    if let Some(id) = dir_id.filter(|id| meta.kind != SnapshotKind::Checkpoint || meta.id != *id) {
        return Err(Error::Corrupt {
            file: metadata_name,
            reason: format!(
                "describes {} {} but lies in the directory of checkpoint {id}",
                meta.kind, meta.id
            ),
        });
    }
    let base = match meta.kind {
        SnapshotKind::Checkpoint => dir.parent().ok_or_else(|| Error::Corrupt {
            file: metadata_name.clone(),
            reason: "a checkpoint directory must lie in a checkpoint root".into(),
        })?,
        SnapshotKind::Savepoint => {
            crate::runtime::savepoint::check_self_contained(&meta)?;
            dir.clone()
        }
    };
    let storage = base.open()?;
    Ok(LoadedSnapshot {
        dir: dir.clone(),
        base,
        storage,
        meta,
        format_version,
        downloads: Mutex::new(None),
    })
}

/// A checkpoint directory of a root that has a `_metadata`.
#[derive(Debug)]
pub struct ScannedCheckpoint {
    /// The id its directory name gives.
    pub id: u64,
    /// The directory.
    pub dir: Location,
    /// The loaded checkpoint, or why its `_metadata` cannot be used.
    pub loaded: Result<LoadedSnapshot>,
}

/// A directory below a root holding a `_metadata` that is not a checkpoint's.
#[derive(Debug)]
pub struct ScannedSavepoint {
    /// The directory.
    pub dir: Location,
    /// The loaded savepoint, or why its `_metadata` cannot be used.
    pub loaded: Result<LoadedSnapshot>,
}

/// A checkpoint root found by [`scan_tree`] (the rule of [`crate::cli::root`]).
#[derive(Debug)]
pub struct ScannedRoot {
    /// The root.
    pub dir: Location,
    /// Checkpoint directories with a `_metadata`, by ascending id.
    pub checkpoints: Vec<ScannedCheckpoint>,
    /// Checkpoint directories without `_metadata` (in flight, failed, aborted or half
    /// deleted; discarded ones hold `_metadata.discarded`), by id.
    pub incomplete: Vec<(u64, Location)>,
}

/// What a directory and everything below it hold.
#[derive(Debug, Default)]
pub struct RootScan {
    /// The checkpoint roots, the directory itself or any directory below it, by path.
    pub roots: Vec<ScannedRoot>,
    /// Savepoints found anywhere below (or at) the directory, by path.
    pub savepoints: Vec<ScannedSavepoint>,
}

/// Scans `dir` and everything below it for checkpoint roots (directories without a `_metadata`
/// whose top level holds `chk-<id>` directories or `_coordinator/epoch-*` files) and
/// savepoints (directories with a `_metadata` that is not a checkpoint's), outside the
/// `chk-*`, `shared` and `_coordinator` areas of the roots. A directory holding `_metadata` is
/// not searched further. Never follows symlinks. On an object store, one listing of `dir`.
///
/// # Errors
/// [`Error::Io`] if a local `dir` is not a readable directory; storage errors listing it.
pub fn scan_tree(dir: &Location) -> Result<RootScan> {
    let mut scan = match dir {
        Location::Dir(path) => {
            require_dir(path)?;
            let mut scan = RootScan::default();
            scan_local_dir(path, 0, &mut scan)?;
            scan
        }
        Location::Url(_) => scan_listed_tree(dir)?,
    };
    for root in &mut scan.roots {
        root.checkpoints.sort_by_key(|c| c.id);
        root.incomplete.sort_by_key(|(id, _)| *id);
    }
    scan.roots.sort_by_key(|r| r.dir.display());
    scan.savepoints.sort_by_key(|s| s.dir.display());
    Ok(scan)
}

fn scan_local_dir(dir: &Path, depth: usize, scan: &mut RootScan) -> Result<()> {
    let location = Location::Dir(dir.to_owned());
    if has_metadata(&location) {
        push_savepoint(scan, &location);
        return Ok(());
    }
    let entries = read_dir_sorted(dir)?;
    let mut root = ScannedRoot {
        dir: location,
        checkpoints: Vec::new(),
        incomplete: Vec::new(),
    };
    let mut epochs = false;
    for (name, path, is_dir) in &entries {
        if !is_dir {
            continue;
        }
        let dir = Location::Dir(path.clone());
        if let Some(id) = parse_checkpoint_dir(name) {
            if has_metadata(&dir) {
                let loaded = load(&dir);
                root.checkpoints.push(ScannedCheckpoint { id, dir, loaded });
            } else {
                root.incomplete.push((id, dir));
            }
        } else if name == COORDINATOR_DIR {
            epochs = read_dir_sorted(path)?
                .iter()
                .any(|(name, _, is_dir)| !is_dir && parse_epoch_file(name).is_some());
        }
    }
    let is_root = epochs || !root.checkpoints.is_empty() || !root.incomplete.is_empty();
    if depth >= MAX_SCAN_DEPTH {
        if is_root {
            scan.roots.push(root);
        }
        return Ok(());
    }
    for (name, path, is_dir) in entries {
        // A root's own areas hold neither savepoints nor other roots.
        if is_dir && !(is_root && is_layout_area(&name)) {
            scan_local_dir(&path, depth + 1, scan)?;
        }
    }
    if is_root {
        scan.roots.push(root);
    }
    Ok(())
}

/// [`scan_tree`] of a directory whose storage can only be listed (an object store).
fn scan_listed_tree(dir: &Location) -> Result<RootScan> {
    let storage = dir.open()?;
    let listing = storage.list(None)?;
    let paths: Vec<Vec<&str>> = listing
        .iter()
        .map(|o| o.path.components().collect())
        .collect();
    let join = |parts: &[&str]| parts.join("/");
    // Directories with a `_metadata` at their top, and candidate roots.
    let mut metadata_dirs: BTreeSet<String> = BTreeSet::new();
    let mut candidates: BTreeSet<String> = BTreeSet::new();
    for parts in &paths {
        for i in 0..parts.len() {
            let checkpoint = parse_checkpoint_dir(parts[i]).is_some() && i + 1 < parts.len();
            let epoch = parts[i] == COORDINATOR_DIR
                && i + 2 == parts.len()
                && parse_epoch_file(parts[i + 1]).is_some();
            if checkpoint || epoch {
                candidates.insert(join(&parts[..i]));
            }
        }
        if parts.last() == Some(&METADATA_FILE) {
            metadata_dirs.insert(join(&parts[..parts.len() - 1]));
        }
    }
    // `inner` lies below `outer` ("" is the top).
    let below = |inner: &str, outer: &str| -> Option<String> {
        if outer.is_empty() {
            return (!inner.is_empty()).then(|| inner.to_owned());
        }
        inner
            .strip_prefix(outer)
            .and_then(|r| r.strip_prefix('/'))
            .map(str::to_owned)
    };
    let first = |rest: &str| rest.split('/').next().unwrap_or_default().to_owned();
    // Shorter paths first: whether a candidate counts depends on the roots above it.
    let mut ordered: Vec<&String> = candidates.iter().collect();
    ordered.sort_by_key(|c| {
        (
            c.matches('/').count() + usize::from(!c.is_empty()),
            c.as_str(),
        )
    });
    let mut roots: Vec<String> = Vec::new();
    for candidate in ordered {
        let in_snapshot = metadata_dirs
            .iter()
            .any(|m| m == candidate || below(candidate, m).is_some());
        let in_area = roots
            .iter()
            .any(|r| below(candidate, r).is_some_and(|rest| is_layout_area(&first(&rest))));
        if !in_snapshot && !in_area {
            roots.push(candidate.clone());
        }
    }
    let location = |relative: &str| {
        if relative.is_empty() {
            dir.clone()
        } else {
            dir.join(relative)
        }
    };
    let mut scan = RootScan::default();
    for root in &roots {
        let mut checkpoints: BTreeMap<u64, bool> = BTreeMap::new();
        for parts in &paths {
            let path = join(parts);
            let Some(rest) = below(&path, root) else {
                continue;
            };
            let mut rest = rest.split('/');
            let (Some(top), Some(second)) = (rest.next(), rest.next()) else {
                continue;
            };
            if let Some(id) = parse_checkpoint_dir(top) {
                *checkpoints.entry(id).or_insert(false) |=
                    second == METADATA_FILE && rest.next().is_none();
            }
        }
        let mut scanned = ScannedRoot {
            dir: location(root),
            checkpoints: Vec::new(),
            incomplete: Vec::new(),
        };
        for (id, has_metadata) in checkpoints {
            let dir = scanned.dir.join(&checkpoint_dir_name(id));
            if has_metadata {
                let loaded = load(&dir);
                scanned
                    .checkpoints
                    .push(ScannedCheckpoint { id, dir, loaded });
            } else {
                scanned.incomplete.push((id, dir));
            }
        }
        scan.roots.push(scanned);
    }
    // Savepoints: directories with a `_metadata` outside the roots' areas; as in a local scan,
    // a savepoint's own directory is not searched further.
    let mut taken: Vec<&str> = Vec::new();
    for m in &metadata_dirs {
        let in_area = roots
            .iter()
            .any(|r| below(m, r).is_some_and(|rest| is_layout_area(&first(&rest))));
        let inside_taken = taken.iter().any(|t| below(m, t).is_some());
        if in_area || inside_taken {
            continue;
        }
        taken.push(m);
        push_savepoint(&mut scan, &location(m));
    }
    Ok(scan)
}

fn push_savepoint(scan: &mut RootScan, dir: &Location) {
    let loaded = load(dir);
    // A checkpoint's `_metadata` outside the root's `chk-*` directories belongs to another
    // root (or is a copy): not a savepoint of this one.
    if matches!(&loaded, Ok(s) if s.meta.kind == SnapshotKind::Checkpoint) {
        return;
    }
    scan.savepoints.push(ScannedSavepoint {
        dir: dir.clone(),
        loaded,
    });
}

/// The entries of `dir`, sorted by name: (name, path, is a directory and not a symlink).
fn read_dir_sorted(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>> {
    let io_err = |e| Error::Io {
        path: dir.to_owned(),
        source: e,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let is_dir = entry.file_type().map_err(io_err)?.is_dir();
        let name = entry.file_name().to_string_lossy().into_owned();
        out.push((name, entry.path(), is_dir));
    }
    out.sort();
    Ok(out)
}
