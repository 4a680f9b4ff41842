//! Finding and loading checkpoints and savepoints on the local filesystem, read-only.
//!
//! A checkpoint directory (`<root>/chk-<id>/`) holds a `_metadata` whose file paths are relative
//! to the checkpoint root, its parent. A savepoint directory holds a `_metadata` (kind savepoint)
//! whose file paths are relative to the savepoint directory itself.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::model::error::{Error, Result};
use crate::model::format::layout::{CHECKPOINT_DIR_PREFIX, SHARED_DIR, parse_checkpoint_dir};
use crate::model::format::metadata::{MAX_METADATA_BYTES, METADATA_FILE};
use crate::runtime::checkpoint::{FileEntry, SnapshotKind, SnapshotMetadata};
use crate::storage::{CheckpointStorage, LocalDirStorage};

/// Suffix of canonical data files (heap checkpoints, savepoints).
pub const DATA_FILE_SUFFIX: &str = ".sbdf";

/// How deep [`scan_root`] looks for savepoints below a root.
const MAX_SCAN_DEPTH: usize = 32;

/// A checkpoint or savepoint whose `_metadata` was read.
#[derive(Debug)]
pub struct LoadedSnapshot {
    /// The directory holding `_metadata`.
    pub dir: PathBuf,
    /// The storage the metadata's file paths are relative to: the checkpoint root (the
    /// parent of [`dir`](Self::dir)) for a checkpoint, the directory itself for a savepoint.
    pub storage: LocalDirStorage,
    /// The parsed metadata.
    pub meta: SnapshotMetadata,
    /// The format version in the `_metadata` header.
    pub format_version: u16,
}

impl LoadedSnapshot {
    /// Where the file of `entry` is on the local filesystem.
    pub fn local_path(&self, entry: &FileEntry) -> PathBuf {
        self.storage.local_path(&entry.path)
    }

    /// How messages name the file of `entry`: its full local path.
    pub fn file_name(&self, entry: &FileEntry) -> String {
        self.local_path(entry).display().to_string()
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

    /// Opens the file of `entry` for reading, after checking that it is in storage.
    ///
    /// # Errors
    /// As [`LoadedSnapshot::stored_size`]; I/O errors.
    pub fn open_file(&self, entry: &FileEntry) -> Result<(File, u64)> {
        let size = self.stored_size(entry)?;
        let local = self.local_path(entry);
        let file = File::open(&local).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::MissingFile {
                file: local.display().to_string(),
            },
            _ => Error::Io {
                path: local.clone(),
                source: e,
            },
        })?;
        Ok((file, size))
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

/// Whether `dir` holds a `_metadata` file (not following a symlink).
pub fn has_metadata(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir.join(METADATA_FILE)).is_ok_and(|m| m.is_file())
}

/// Fails with an [`Error::Io`] unless `dir` is an existing directory (the storage would create
/// a missing one; a read-only tool must not).
///
/// # Errors
/// [`Error::Io`] naming `dir`.
pub fn require_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::Io {
            path: dir.to_owned(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        }),
        Err(e) => Err(Error::Io {
            path: dir.to_owned(),
            source: e,
        }),
    }
}

/// Reads and parses `dir/_metadata`; errors name the full path of the file.
///
/// # Errors
/// I/O errors; the format errors of [`SnapshotMetadata::decode`].
pub fn read_metadata(dir: &Path) -> Result<(SnapshotMetadata, u16)> {
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
pub fn load(dir: &Path) -> Result<LoadedSnapshot> {
    require_dir(dir)?;
    let (meta, format_version) = read_metadata(dir)?;
    let metadata_name = dir.join(METADATA_FILE).display().to_string();
    let dir_id = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_checkpoint_dir);
    if let Some(id) = dir_id.filter(|id| meta.kind != SnapshotKind::Checkpoint || meta.id != *id) {
        return Err(Error::Corrupt {
            file: metadata_name,
            reason: format!(
                "describes {} {} but lies in the directory of checkpoint {id}",
                meta.kind, meta.id
            ),
        });
    }
    let storage = match meta.kind {
        SnapshotKind::Checkpoint => {
            let absolute = std::path::absolute(dir).map_err(|e| Error::Io {
                path: dir.to_owned(),
                source: e,
            })?;
            let root = absolute.parent().ok_or_else(|| Error::Corrupt {
                file: metadata_name.clone(),
                reason: "a checkpoint directory must lie in a checkpoint root".into(),
            })?;
            LocalDirStorage::new(root)?
        }
        SnapshotKind::Savepoint => {
            crate::runtime::savepoint::check_self_contained(&meta)?;
            LocalDirStorage::new(dir)?
        }
    };
    Ok(LoadedSnapshot {
        dir: dir.to_owned(),
        storage,
        meta,
        format_version,
    })
}

/// A checkpoint directory of a root that has a `_metadata`.
#[derive(Debug)]
pub struct ScannedCheckpoint {
    /// The id its directory name gives.
    pub id: u64,
    /// The directory.
    pub dir: PathBuf,
    /// The loaded checkpoint, or why its `_metadata` cannot be used.
    pub loaded: Result<LoadedSnapshot>,
}

/// A directory below a root holding a `_metadata` that is not a checkpoint's.
#[derive(Debug)]
pub struct ScannedSavepoint {
    /// The directory.
    pub dir: PathBuf,
    /// The loaded savepoint, or why its `_metadata` cannot be used.
    pub loaded: Result<LoadedSnapshot>,
}

/// What a checkpoint root holds.
#[derive(Debug, Default)]
pub struct RootScan {
    /// Checkpoint directories with a `_metadata`, by ascending id.
    pub checkpoints: Vec<ScannedCheckpoint>,
    /// Checkpoint directories without `_metadata` (in flight, failed or half deleted), by id.
    pub incomplete: Vec<(u64, PathBuf)>,
    /// Savepoints found anywhere below the root, by path.
    pub savepoints: Vec<ScannedSavepoint>,
}

/// Scans `root`: its `chk-<id>` directories, and savepoints (directories with a `_metadata`
/// that is not a checkpoint's) anywhere below it, outside the `chk-*` and `shared` areas. Never
/// follows symlinks.
///
/// # Errors
/// [`Error::Io`] if `root` is not a readable directory.
pub fn scan_root(root: &Path) -> Result<RootScan> {
    require_dir(root)?;
    let mut scan = RootScan::default();
    let mut subdirs = Vec::new();
    for entry in read_dir_sorted(root)? {
        let (name, path, is_dir) = entry;
        if !is_dir {
            continue;
        }
        if let Some(id) = parse_checkpoint_dir(&name) {
            if has_metadata(&path) {
                let loaded = load(&path);
                scan.checkpoints.push(ScannedCheckpoint {
                    id,
                    dir: path,
                    loaded,
                });
            } else {
                scan.incomplete.push((id, path));
            }
        } else if name != SHARED_DIR && !name.starts_with(CHECKPOINT_DIR_PREFIX) {
            subdirs.push(path);
        }
    }
    if has_metadata(root) {
        push_savepoint(&mut scan, root);
    }
    for dir in subdirs {
        find_savepoints(&dir, 1, &mut scan)?;
    }
    scan.checkpoints.sort_by_key(|c| c.id);
    scan.incomplete.sort();
    scan.savepoints.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(scan)
}

fn push_savepoint(scan: &mut RootScan, dir: &Path) {
    let loaded = load(dir);
    // A checkpoint's `_metadata` outside the root's `chk-*` directories belongs to another
    // root (or is a copy): not a savepoint of this one.
    if matches!(&loaded, Ok(s) if s.meta.kind == SnapshotKind::Checkpoint) {
        return;
    }
    scan.savepoints.push(ScannedSavepoint {
        dir: dir.to_owned(),
        loaded,
    });
}

fn find_savepoints(dir: &Path, depth: usize, scan: &mut RootScan) -> Result<()> {
    if has_metadata(dir) {
        push_savepoint(scan, dir);
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
