//! Finding and loading checkpoints and savepoints, read-only, in a local directory or on an
//! object store ([`Location`]).
//!
//! A checkpoint directory (`<root>/chk-<id>/`) holds a `_metadata` whose file paths are relative
//! to the checkpoint root, its parent. A savepoint directory holds a `_metadata` (kind savepoint)
//! whose file paths are relative to the savepoint directory itself.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use crate::cli::location::{Location, require_dir};
use crate::model::error::{Error, Result};
use crate::model::format::layout::{CHECKPOINT_DIR_PREFIX, SHARED_DIR, parse_checkpoint_dir};
use crate::model::format::metadata::{MAX_METADATA_BYTES, METADATA_FILE};
use crate::runtime::checkpoint::{FileEntry, SnapshotKind, SnapshotMetadata};
use crate::storage::{CheckpointStorage, StoragePath};

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
    match dir {
        Location::Dir(dir) => {
            std::fs::symlink_metadata(dir.join(METADATA_FILE)).is_ok_and(|m| m.is_file())
        }
        Location::Url(_) => dir.open().is_ok_and(|storage| {
            StoragePath::parse(METADATA_FILE)
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

/// What a checkpoint root holds.
#[derive(Debug, Default)]
pub struct RootScan {
    /// Checkpoint directories with a `_metadata`, by ascending id.
    pub checkpoints: Vec<ScannedCheckpoint>,
    /// Checkpoint directories without `_metadata` (in flight, failed or half deleted), by id.
    pub incomplete: Vec<(u64, Location)>,
    /// Savepoints found anywhere below the root, by path.
    pub savepoints: Vec<ScannedSavepoint>,
}

/// Scans `root`: its `chk-<id>` directories, and savepoints (directories with a `_metadata`
/// that is not a checkpoint's) anywhere below it, outside the `chk-*` and `shared` areas. Never
/// follows symlinks. On an object store, one listing of the root.
///
/// # Errors
/// [`Error::Io`] if a local `root` is not a readable directory; storage errors listing it.
pub fn scan_root(root: &Location) -> Result<RootScan> {
    let mut scan = match root {
        Location::Dir(path) => scan_local_root(path)?,
        Location::Url(_) => scan_listed_root(root)?,
    };
    scan.checkpoints.sort_by_key(|c| c.id);
    scan.incomplete.sort_by_key(|(id, _)| *id);
    scan.savepoints.sort_by_key(|s| s.dir.display());
    Ok(scan)
}

fn scan_local_root(root: &Path) -> Result<RootScan> {
    require_dir(root)?;
    let mut scan = RootScan::default();
    let mut subdirs = Vec::new();
    for entry in read_dir_sorted(root)? {
        let (name, path, is_dir) = entry;
        if !is_dir {
            continue;
        }
        let dir = Location::Dir(path.clone());
        if let Some(id) = parse_checkpoint_dir(&name) {
            if has_metadata(&dir) {
                let loaded = load(&dir);
                scan.checkpoints.push(ScannedCheckpoint { id, dir, loaded });
            } else {
                scan.incomplete.push((id, dir));
            }
        } else if name != SHARED_DIR && !name.starts_with(CHECKPOINT_DIR_PREFIX) {
            subdirs.push(path);
        }
    }
    let root = Location::Dir(root.to_owned());
    if has_metadata(&root) {
        push_savepoint(&mut scan, &root);
    }
    for dir in subdirs {
        find_savepoints(&dir, 1, &mut scan)?;
    }
    Ok(scan)
}

/// [`scan_root`] of a root whose storage can only be listed (an object store).
fn scan_listed_root(root: &Location) -> Result<RootScan> {
    let storage = root.open()?;
    let mut checkpoints: BTreeMap<u64, bool> = BTreeMap::new();
    let mut savepoint_dirs: Vec<String> = Vec::new();
    for object in storage.list(None)? {
        let path = object.path.as_str();
        let top = object.path.components().next().unwrap_or_default();
        if let Some(id) = parse_checkpoint_dir(top) {
            let metadata = path == format!("{top}/{METADATA_FILE}");
            *checkpoints.entry(id).or_insert(false) |= metadata;
        } else if top != SHARED_DIR && !top.starts_with(CHECKPOINT_DIR_PREFIX) {
            if let Some(dir) = path.strip_suffix(METADATA_FILE) {
                if dir.is_empty() || dir.ends_with('/') {
                    savepoint_dirs.push(dir.trim_end_matches('/').to_owned());
                }
            }
        }
    }
    let mut scan = RootScan::default();
    for (id, has_metadata) in checkpoints {
        let dir = root.join(&crate::model::format::layout::checkpoint_dir_name(id));
        if has_metadata {
            let loaded = load(&dir);
            scan.checkpoints.push(ScannedCheckpoint { id, dir, loaded });
        } else {
            scan.incomplete.push((id, dir));
        }
    }
    // As in a local scan, a savepoint's own directory is not searched further.
    savepoint_dirs.sort();
    let mut taken: Vec<&str> = Vec::new();
    for dir in &savepoint_dirs {
        let inside_taken = taken
            .iter()
            .any(|t| t.is_empty() || dir.strip_prefix(t).is_some_and(|r| r.starts_with('/')));
        if inside_taken {
            continue;
        }
        taken.push(dir);
        let location = if dir.is_empty() {
            root.clone()
        } else {
            root.join(dir)
        };
        push_savepoint(&mut scan, &location);
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

fn find_savepoints(dir: &Path, depth: usize, scan: &mut RootScan) -> Result<()> {
    let location = Location::Dir(dir.to_owned());
    if has_metadata(&location) {
        push_savepoint(scan, &location);
        return Ok(());
    }
    if depth >= MAX_SCAN_DEPTH {
        return Ok(());
    }
    for (_, path, is_dir) in read_dir_sorted(dir)? {
        if is_dir {
            find_savepoints(&path, depth + 1, scan)?;
        }
    }
    Ok(())
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
