//! [`LocalDirStorage`]: checkpoint storage in a local directory.

use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::io::{self, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{CheckpointStorage, ObjectMeta, StoragePath, temporary_path};
use crate::model::error::{Error, Result};

/// How often a write retries when its directory vanished under it (a concurrent
/// [`delete`](CheckpointStorage::delete) removes directories it emptied) or its random temp
/// name was taken.
const WRITE_ATTEMPTS: usize = 4;

/// Buffer size of streaming copies.
const COPY_BUFFER: usize = 64 * 1024;

/// Checkpoint storage in a directory of the local filesystem (or a mounted network
/// filesystem).
///
/// A [`StoragePath`] `a/b/c` is the file `<root>/a/b/c`; directories are created on demand and
/// removed again when a [`delete`](CheckpointStorage::delete) empties them.
///
/// Guarantees beyond the trait's:
/// - **Durable atomic writes.** [`put`](CheckpointStorage::put) and
///   [`put_file`](CheckpointStorage::put_file) write a temporary sibling
///   (`<name>.tmp-<16 hex>`), `fsync` it, rename it over the target and `fsync` the directory
///   (as well as every directory they create), so that after `Ok` the file survives a power
///   loss and a crash never exposes a partial file.
/// - **No escape through symlinks.** Storage never follows a symlink inside the root:
///   [`list`](CheckpointStorage::list) skips them, and every other operation refuses a path
///   with a symlink component with [`Error::InvalidPath`] (reason `"symlink"`). This protects
///   against links planted in (or restored into) the checkpoint directory; it is checked before
///   each access, so it does not defend against an attacker racing with write access to the
///   root. The root itself may be (or lie below) a symlink.
/// - Files whose names are not valid [`StoragePath`] components (not created through this
///   storage) are invisible to `list`.
/// - **Create-if-absent without hard links.** [`put_new`](CheckpointStorage::put_new) links
///   its fsynced temporary file to the name, which fails if the name exists. On a filesystem
///   without hard links (some FUSE and SMB mounts: the link fails with `EPERM`, `EOPNOTSUPP`,
///   `ENOSYS`, `EXDEV` or `EMLINK`) it renames the temporary file instead with
///   `renameat2(RENAME_NOREPLACE)`, which fails as well if the name exists: the same guarantee.
///   A filesystem with neither is refused with [`Error::Io`] rather than written without it.
/// - **A create that is not durable is undone.** When the directory `fsync` after a
///   `put_new` fails, the new name is removed again (best effort) and the call fails with
///   [`Error::NotDurable`]: the file might not survive a crash, so nobody may take it as
///   written.
#[derive(Debug, Clone)]
pub struct LocalDirStorage {
    root: PathBuf,
    /// Faults the tests switch on; shared by clones.
    hooks: Arc<Hooks>,
}

/// Test hooks of [`LocalDirStorage`]: behaviours of filesystems and disks the test machine does
/// not have.
#[derive(Debug, Default)]
struct Hooks {
    /// Hard links fail as on a filesystem without them (`EPERM`).
    no_hard_links: AtomicBool,
    /// How many directory `fsync`s of `put_new` still fail.
    failing_put_new_dir_syncs: AtomicU32,
}

/// What a storage path refers to on disk, without following symlinks.
enum Entry {
    /// Nothing (or a path through a non-directory).
    Missing,
    /// A path component is a symlink.
    Symlink,
    /// A regular file of this size.
    File(u64),
    /// A directory.
    Dir,
    /// A fifo, socket or device: not an object.
    Other,
}

impl LocalDirStorage {
    /// Storage rooted at `root`, which is created (with its parents) if missing.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when `root` cannot be created or is not a directory.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        let meta = fs::metadata(&root).map_err(|e| Error::io(&root, e))?;
        if !meta.is_dir() {
            return Err(Error::io(
                &root,
                io::Error::new(ErrorKind::NotADirectory, "storage root is not a directory"),
            ));
        }
        Ok(LocalDirStorage {
            root,
            hooks: Arc::default(),
        })
    }

    /// Behaves as on a filesystem without hard links: every hard link `put_new` tries fails
    /// with `EPERM`, as on such mounts, so the no-replace rename does the create. For tests.
    #[doc(hidden)]
    #[must_use]
    pub fn without_hard_links(self) -> Self {
        self.hooks.no_hard_links.store(true, Ordering::Relaxed);
        self
    }

    /// Makes the directory `fsync` of the next `n` [`put_new`](CheckpointStorage::put_new)
    /// calls fail (an injected I/O error), as a failing disk would. For tests.
    #[doc(hidden)]
    pub fn fail_put_new_dir_syncs(&self, n: u32) {
        self.hooks
            .failing_put_new_dir_syncs
            .store(n, Ordering::Relaxed);
    }

    /// Puts the fsynced temporary file `temp` at `target` (`path`) only if nothing is there:
    /// a hard link, or where the filesystem has none, a no-replace rename.
    fn place_new(&self, temp: &Path, target: &Path, path: &StoragePath) -> Result<()> {
        let already_exists = || Error::AlreadyExists {
            path: path.to_string(),
        };
        let linked = if self.hooks.no_hard_links.load(Ordering::Relaxed) {
            Err(no_links_error())
        } else {
            fs::hard_link(temp, target)
        };
        match linked {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Err(already_exists()),
            Err(e) if links_unsupported(&e) => {}
            Err(e) => return Err(Error::io(target, e)),
        }
        match rename_noreplace(temp, target) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(already_exists()),
            Err(e) if renames_unsupported(&e) => Err(Error::io(
                target,
                io::Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "this filesystem has neither hard links nor no-replace renames, so a \
                         file cannot be created only if absent ({e})"
                    ),
                ),
            )),
            Err(e) => Err(Error::io(target, e)),
        }
    }

    /// `fsync`s the directory of a file `put_new` created, or fails as the hook says.
    fn sync_new_entry(&self, target: &Path) -> io::Result<()> {
        let hook = &self.hooks.failing_put_new_dir_syncs;
        if hook
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(io::Error::other("injected failure of the directory fsync"));
        }
        match target.parent() {
            Some(dir) => sync_dir_io(dir),
            None => Ok(()),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `path` lives on the local filesystem (whether or not it exists).
    pub fn local_path(&self, path: &StoragePath) -> PathBuf {
        let mut local = self.root.clone();
        local.extend(path.components());
        local
    }

    /// Makes the stored file at `path` available as the local file `local`, which must not
    /// exist yet: by hard link when possible (no copy, the usual case when restoring from
    /// storage on the same filesystem), by a streaming copy otherwise. Returns the file size.
    ///
    /// A hard-linked `local` shares its content with the stored file, so callers must treat it
    /// as read-only (replace it by rename, never modify it in place) — true of SST files.
    /// Overwriting `path` later is safe: [`put`](CheckpointStorage::put) renames a new file
    /// into place and leaves the linked one alone.
    ///
    /// # Errors
    ///
    /// [`Error::MissingFile`] when there is no file at `path`; [`Error::Io`] when `local`
    /// already exists or cannot be written; [`Error::InvalidPath`] for a symlink in `path`.
    pub fn link_or_copy_to(&self, path: &StoragePath, local: &Path) -> Result<u64> {
        match self.entry(path)? {
            Entry::File(_) => {}
            Entry::Symlink => return Err(symlink_error(path)),
            _ => return Err(missing(path)),
        }
        let stored = self.local_path(path);
        match fs::hard_link(&stored, local) {
            Ok(()) => {
                let meta = fs::symlink_metadata(local).map_err(|e| Error::io(local, e))?;
                return Ok(meta.len());
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Err(Error::io(local, e)),
            // Another filesystem, or one without hard links: copy. The copy reports the real
            // problem if there is one (file vanished, target directory missing).
            Err(_) => {}
        }
        let mut src = self.open_stored(path)?;
        let (temp, written) = download(&mut src, &stored, local)?;
        temp.persist_noclobber(local)
            .map_err(|e| Error::io(local, e.error))?;
        Ok(written)
    }

    /// Looks `path` up without following symlinks, component by component from the root.
    fn entry(&self, path: &StoragePath) -> Result<Entry> {
        let mut current = self.root.clone();
        // Metadata of `current`; `None` stands for the root, a directory.
        let mut meta: Option<fs::Metadata> = None;
        for component in path.components() {
            if meta.as_ref().is_some_and(|m| !m.is_dir()) {
                // A file where a directory should be: the path does not exist.
                return Ok(Entry::Missing);
            }
            current.push(component);
            match fs::symlink_metadata(&current) {
                Ok(m) if m.file_type().is_symlink() => return Ok(Entry::Symlink),
                Ok(m) => meta = Some(m),
                Err(e) if is_absent(&e) => return Ok(Entry::Missing),
                Err(e) => return Err(Error::io(current, e)),
            }
        }
        Ok(match meta {
            Some(m) if m.is_file() => Entry::File(m.len()),
            Some(m) if !m.is_dir() => Entry::Other,
            _ => Entry::Dir,
        })
    }

    /// Opens the stored file at `path` for reading, refusing symlinks.
    fn open_stored(&self, path: &StoragePath) -> Result<File> {
        match self.entry(path)? {
            Entry::File(_) => {}
            Entry::Symlink => return Err(symlink_error(path)),
            _ => return Err(missing(path)),
        }
        let local = self.local_path(path);
        File::open(&local).map_err(|e| {
            if is_absent(&e) {
                missing(path)
            } else {
                Error::io(local, e)
            }
        })
    }

    /// Creates the directories above `path` that are missing (each made durable in its
    /// parent), refusing symlinks and files in the way.
    fn ensure_parent(&self, path: &StoragePath) -> Result<()> {
        let mut dir = self.root.clone();
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        for component in parent.components() {
            dir.push(component);
            let meta = match fs::symlink_metadata(&dir) {
                Ok(meta) => meta,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    match fs::create_dir(&dir) {
                        Ok(()) => sync_parent_dir(&dir)?,
                        // Created concurrently: check what is there now.
                        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(Error::io(dir, e)),
                    }
                    fs::symlink_metadata(&dir).map_err(|e| Error::io(&dir, e))?
                }
                Err(e) => return Err(Error::io(dir, e)),
            };
            if meta.file_type().is_symlink() {
                return Err(symlink_error(path));
            }
            if !meta.is_dir() {
                return Err(Error::io(
                    dir,
                    io::Error::new(ErrorKind::NotADirectory, "a file is in the way"),
                ));
            }
        }
        Ok(())
    }

    /// Creates a fresh temporary sibling of `path`, whose directory [`Self::ensure_parent`]
    /// has created. Returns its local path and the open file.
    fn create_temp(&self, path: &StoragePath) -> Result<(PathBuf, File)> {
        let mut last_error = None;
        for attempt in 0..WRITE_ATTEMPTS {
            if attempt > 0 {
                self.ensure_parent(path)?;
            }
            let temp = self.local_path(&temporary_path(path, nonce())?);
            match OpenOptions::new().write(true).create_new(true).open(&temp) {
                Ok(file) => return Ok((temp, file)),
                // Name taken (vanishingly unlikely) or directory removed by a concurrent
                // delete: try again.
                Err(e) if matches!(e.kind(), ErrorKind::AlreadyExists | ErrorKind::NotFound) => {
                    last_error = Some(Error::io(temp, e));
                }
                Err(e) => return Err(Error::io(temp, e)),
            }
        }
        Err(last_error.unwrap_or_else(|| missing(path)))
    }

    /// The atomic write protocol: temp file, `fill`, `fsync`, rename over the target, `fsync`
    /// the directory. The temp file is removed when any step fails.
    fn write_atomically(
        &self,
        path: &StoragePath,
        fill: impl FnOnce(&mut File, &Path) -> Result<u64>,
    ) -> Result<u64> {
        // Refuse paths without room for a temp sibling before creating any directory.
        temporary_path(path, 0)?;
        self.ensure_parent(path)?;
        let target = self.local_path(path);
        match fs::symlink_metadata(&target) {
            Ok(meta) if meta.file_type().is_symlink() => return Err(symlink_error(path)),
            _ => {}
        }
        let (temp, mut file) = self.create_temp(path)?;
        let written = fill(&mut file, &temp)
            .and_then(|n| file.sync_all().map(|()| n).map_err(|e| Error::io(&temp, e)));
        drop(file);
        let written = written.and_then(|n| {
            fs::rename(&temp, &target)
                .map(|()| n)
                .map_err(|e| Error::io(&target, e))
        });
        match written {
            Ok(n) => {
                sync_parent_dir(&target)?;
                Ok(n)
            }
            Err(e) => {
                let _ = fs::remove_file(&temp);
                Err(e)
            }
        }
    }

    /// Removes the now-empty directories above `path`, up to (not including) the root.
    /// Best effort: stops at the first directory that is not empty or cannot be removed.
    fn remove_empty_parents(&self, path: &StoragePath) {
        let mut parent = path.parent();
        while let Some(dir) = parent {
            if fs::remove_dir(self.local_path(&dir)).is_err() {
                return;
            }
            parent = dir.parent();
        }
    }
}

impl CheckpointStorage for LocalDirStorage {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn put(&self, path: &StoragePath, data: &[u8]) -> Result<()> {
        self.write_atomically(path, |file, temp| {
            file.write_all(data).map_err(|e| Error::io(temp, e))?;
            Ok(data.len() as u64)
        })?;
        Ok(())
    }

    /// The file is written under a temporary name, fsynced, and hard-linked to `path`;
    /// linking fails if `path` exists, which makes the create atomic. Without hard links, a
    /// no-replace rename does the same (see the type's docs). If the directory cannot be made
    /// durable afterwards, `path` is removed again and the error is [`Error::NotDurable`].
    fn put_new(&self, path: &StoragePath, data: &[u8]) -> Result<()> {
        temporary_path(path, 0)?;
        self.ensure_parent(path)?;
        let target = self.local_path(path);
        let (temp, mut file) = self.create_temp(path)?;
        let written = file
            .write_all(data)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(&temp, e));
        drop(file);
        let placed = written.and_then(|()| self.place_new(&temp, &target, path));
        // Linked: the temporary name goes. Renamed: it is gone already.
        let _ = fs::remove_file(&temp);
        placed?;
        if let Err(source) = self.sync_new_entry(&target) {
            // The name may or may not survive a crash: take it back, so that no reader
            // (a completion reading its `_metadata` back) takes the create for done.
            let _ = fs::remove_file(&target);
            let _ = self.sync_new_entry(&target);
            return Err(Error::NotDurable {
                file: path.to_string(),
                source,
            });
        }
        Ok(())
    }

    fn put_file(&self, path: &StoragePath, local: &Path) -> Result<u64> {
        // Opened first so that a missing source leaves no temp file behind.
        let mut src = File::open(local).map_err(|e| Error::io(local, e))?;
        self.write_atomically(path, |file, temp| copy(&mut src, local, file, temp))
    }

    fn get(&self, path: &StoragePath) -> Result<Vec<u8>> {
        let mut file = self.open_stored(path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)
            .map_err(|e| Error::io(self.local_path(path), e))?;
        Ok(data)
    }

    fn get_to_file(&self, path: &StoragePath, local: &Path) -> Result<u64> {
        let mut src = self.open_stored(path)?;
        let (temp, written) = download(&mut src, &self.local_path(path), local)?;
        temp.persist(local).map_err(|e| Error::io(local, e.error))?;
        Ok(written)
    }

    /// Streams the stored file through a 64 KiB buffer.
    fn read_to(&self, path: &StoragePath, sink: &mut dyn Write) -> Result<u64> {
        let mut src = self.open_stored(path)?;
        super::copy_to_sink(&mut src, &self.local_path(path), sink, path)
    }

    fn list(&self, prefix: Option<&StoragePath>) -> Result<Vec<ObjectMeta>> {
        let mut found = Vec::new();
        // Directories still to read: local path and storage path (`None` for the root).
        let mut pending: Vec<(PathBuf, Option<StoragePath>)> = Vec::new();
        match prefix {
            None => pending.push((self.root.clone(), None)),
            Some(prefix) => match self.entry(prefix)? {
                Entry::File(size) => found.push(ObjectMeta {
                    path: prefix.clone(),
                    size,
                }),
                Entry::Dir => pending.push((self.local_path(prefix), Some(prefix.clone()))),
                Entry::Missing | Entry::Symlink | Entry::Other => {}
            },
        }
        while let Some((dir, dir_path)) = pending.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                // Removed since we saw it (a concurrent delete).
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(&dir, e))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let path = match &dir_path {
                    Some(dir_path) => dir_path.join(name),
                    None => StoragePath::parse(name),
                };
                // Not a name this storage could have written.
                let Ok(path) = path else { continue };
                let local = entry.path();
                let meta = match fs::symlink_metadata(&local) {
                    Ok(meta) => meta,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io(local, e)),
                };
                if meta.file_type().is_symlink() {
                    continue;
                } else if meta.is_dir() {
                    pending.push((local, Some(path)));
                } else if meta.is_file() {
                    found.push(ObjectMeta {
                        path,
                        size: meta.len(),
                    });
                }
            }
        }
        found.sort();
        Ok(found)
    }

    fn delete(&self, path: &StoragePath) -> Result<()> {
        match self.entry(path)? {
            Entry::File(_) => {}
            Entry::Symlink => return Err(symlink_error(path)),
            // Only files are objects: nothing to delete.
            Entry::Missing | Entry::Dir | Entry::Other => return Ok(()),
        }
        let local = self.local_path(path);
        match fs::remove_file(&local) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(local, e)),
        }
        self.remove_empty_parents(path);
        Ok(())
    }

    fn exists(&self, path: &StoragePath) -> Result<bool> {
        Ok(self.size(path)?.is_some())
    }

    fn size(&self, path: &StoragePath) -> Result<Option<u64>> {
        match self.entry(path)? {
            Entry::File(size) => Ok(Some(size)),
            Entry::Symlink => Err(symlink_error(path)),
            Entry::Missing | Entry::Dir | Entry::Other => Ok(None),
        }
    }
}

/// Copies `src` into a new temporary file next to `local` (so that it can be renamed into
/// place). The temp file deletes itself if dropped before it is persisted. Returns it and the
/// bytes copied.
fn download(
    src: &mut File,
    src_path: &Path,
    local: &Path,
) -> Result<(tempfile::NamedTempFile, u64)> {
    let dir = match local.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    let temp_path = temp.path().to_path_buf();
    let written = copy(src, src_path, temp.as_file_mut(), &temp_path)?;
    Ok((temp, written))
}

/// Streams `src` into `dst`, attributing errors to the right file. Returns the bytes copied.
fn copy(
    src: &mut impl Read,
    src_path: &Path,
    dst: &mut impl Write,
    dst_path: &Path,
) -> Result<u64> {
    let mut buffer = vec![0u8; COPY_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(n) => n.min(buffer.len()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(src_path, e)),
        };
        dst.write_all(&buffer[..n])
            .map_err(|e| Error::io(dst_path, e))?;
        total += n as u64;
    }
}

/// `fsync`s the directory containing `path`, making a rename or creation in it durable.
fn sync_parent_dir(path: &Path) -> Result<()> {
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    sync_dir(dir)
}

/// `fsync`s a directory. Only Unix can open directories for syncing; elsewhere this is a no-op
/// (NTFS journals metadata).
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    sync_dir_io(dir).map_err(|e| Error::io(dir, e))
}

#[cfg(unix)]
fn sync_dir_io(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

#[cfg(not(unix))]
fn sync_dir_io(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// The error a hard link gets on a filesystem without them (what the test hook injects).
#[cfg(unix)]
fn no_links_error() -> io::Error {
    io::Error::from(rustix::io::Errno::PERM)
}

#[cfg(not(unix))]
fn no_links_error() -> io::Error {
    io::Error::new(ErrorKind::Unsupported, "hard links are not supported")
}

/// Whether a failed hard link means "this filesystem cannot link here", so that a no-replace
/// rename should do the create: `EPERM` (Linux's answer of filesystems without hard links,
/// such as FAT and many FUSE mounts), `EOPNOTSUPP`/`ENOTSUP` and `ENOSYS` (SMB, FUSE without
/// a link operation), `EXDEV` (overlay and union mounts that place the two names apart) and
/// `EMLINK` (the file's link count is at the filesystem's limit). A genuine permission problem
/// lands here too; the rename then reports it.
#[cfg(unix)]
fn links_unsupported(e: &io::Error) -> bool {
    use rustix::io::Errno;
    Errno::from_io_error(e).is_some_and(|errno| {
        [
            Errno::PERM,
            Errno::OPNOTSUPP,
            Errno::NOTSUP,
            Errno::NOSYS,
            Errno::XDEV,
            Errno::MLINK,
        ]
        .contains(&errno)
    })
}

#[cfg(not(unix))]
fn links_unsupported(e: &io::Error) -> bool {
    e.kind() == ErrorKind::Unsupported
}

/// Whether a failed no-replace rename means the filesystem (or kernel) cannot do it at all:
/// `EINVAL` for a filesystem without `RENAME_NOREPLACE`, `ENOSYS` for a kernel without
/// `renameat2`, `EOPNOTSUPP`, or no such call on this platform.
#[cfg(unix)]
fn renames_unsupported(e: &io::Error) -> bool {
    use rustix::io::Errno;
    e.kind() == ErrorKind::Unsupported
        || Errno::from_io_error(e).is_some_and(|errno| {
            [Errno::INVAL, Errno::NOSYS, Errno::OPNOTSUPP, Errno::NOTSUP].contains(&errno)
        })
}

#[cfg(not(unix))]
fn renames_unsupported(e: &io::Error) -> bool {
    e.kind() == ErrorKind::Unsupported
}

/// Renames `from` to `to` only if `to` does not exist, atomically (`renameat2` with
/// `RENAME_NOREPLACE`): an existing `to` is `AlreadyExists` and stays as it was.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE).map_err(io::Error::from)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn rename_noreplace(_from: &Path, _to: &Path) -> io::Result<()> {
    Err(io::Error::new(
        ErrorKind::Unsupported,
        "no no-replace rename on this platform",
    ))
}

/// Whether an I/O error means "this path does not exist".
fn is_absent(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

/// A random-enough temp suffix: per-process random hasher keys, a counter, the pid and the
/// time. Uniqueness is enforced anyway by creating the temp file with `create_new`.
fn nonce() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    if let Ok(now) = SystemTime::now().duration_since(UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish()
}

/// The error for a stored file that is not there.
fn missing(path: &StoragePath) -> Error {
    Error::MissingFile {
        file: path.to_string(),
    }
}

/// The error for a path through a symlink.
fn symlink_error(path: &StoragePath) -> Error {
    Error::InvalidPath {
        path: path.to_string(),
        reason: "symlink",
    }
}

// The no-replace rename is Linux's `renameat2`.
#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;

    fn sp(path: &str) -> StoragePath {
        StoragePath::parse(path).unwrap()
    }

    /// Both ways `put_new` creates: a hard link, and where links fail as on filesystems
    /// without them, a no-replace rename.
    fn storages(dir: &Path) -> Vec<(&'static str, LocalDirStorage)> {
        vec![
            ("links", LocalDirStorage::new(dir.join("links")).unwrap()),
            (
                "no links",
                LocalDirStorage::new(dir.join("no-links"))
                    .unwrap()
                    .without_hard_links(),
            ),
        ]
    }

    fn names(storage: &LocalDirStorage) -> Vec<String> {
        storage
            .list(None)
            .unwrap()
            .into_iter()
            .map(|o| o.path.to_string())
            .collect()
    }

    #[test]
    fn put_new_without_hard_links_creates_only_if_absent() {
        let tmp = tempfile::tempdir().unwrap();
        for (how, storage) in storages(tmp.path()) {
            let path = sp("chk-0000000001/_metadata");
            storage.put_new(&path, b"first").unwrap();
            assert_eq!(storage.get(&path).unwrap(), b"first", "{how}");
            let again = storage.put_new(&path, b"second");
            assert!(
                matches!(&again, Err(Error::AlreadyExists { path: p }) if p == path.as_str()),
                "{how}: {again:?}"
            );
            assert_eq!(storage.get(&path).unwrap(), b"first", "{how}");
            // No temporary file is left, whichever way the create went.
            assert_eq!(names(&storage), [path.to_string()], "{how}");
        }
    }

    /// Racing creates of one name: one wins, the others get `AlreadyExists`, and a reader
    /// polling all along sees nothing or the winner's whole file, never a part of one.
    #[test]
    fn put_new_without_hard_links_is_atomic_among_racing_writers() {
        const WRITERS: usize = 6;
        let tmp = tempfile::tempdir().unwrap();
        for (how, storage) in storages(tmp.path()) {
            let path = sp("_coordinator/epoch-00000000000000000001");
            let payloads: Vec<Vec<u8>> = (0..WRITERS)
                .map(|w| vec![w as u8 + 1; 512 * 1024])
                .collect();
            let done = AtomicBool::new(false);
            let (results, seen) = std::thread::scope(|scope| {
                let reader = scope.spawn(|| {
                    let mut seen = Vec::new();
                    while !done.load(Ordering::SeqCst) {
                        match storage.get(&path) {
                            Ok(data) => seen.push(data),
                            Err(Error::MissingFile { .. }) => {}
                            Err(e) => panic!("{how}: {e:?}"),
                        }
                    }
                    seen
                });
                let writers: Vec<_> = payloads
                    .iter()
                    .map(|payload| scope.spawn(|| storage.put_new(&path, payload)))
                    .collect();
                let results: Vec<Result<()>> =
                    writers.into_iter().map(|w| w.join().unwrap()).collect();
                done.store(true, Ordering::SeqCst);
                (results, reader.join().unwrap())
            });
            let winners: Vec<usize> = (0..WRITERS).filter(|&w| results[w].is_ok()).collect();
            assert_eq!(winners.len(), 1, "{how}: {results:?}");
            for (w, result) in results.iter().enumerate() {
                if w != winners[0] {
                    assert!(
                        matches!(result, Err(Error::AlreadyExists { .. })),
                        "{how}: {result:?}"
                    );
                }
            }
            let winner = &payloads[winners[0]];
            assert!(storage.get(&path).unwrap() == *winner, "{how}");
            assert!(
                seen.iter().all(|data| data == winner),
                "{how}: a partial read"
            );
            assert_eq!(names(&storage), [path.to_string()], "{how}");
        }
    }

    /// Issue 25, item 8: a create whose directory `fsync` fails is taken back and reported as
    /// not durable, never left in place for a read-back to find.
    #[test]
    fn a_create_whose_directory_sync_fails_is_undone_and_not_durable() {
        let tmp = tempfile::tempdir().unwrap();
        for (how, storage) in storages(tmp.path()) {
            let path = sp("chk-0000000002/_metadata");
            storage.fail_put_new_dir_syncs(1);
            let failed = storage.put_new(&path, b"metadata");
            match &failed {
                Err(e @ Error::NotDurable { file, .. }) => {
                    assert_eq!(file, path.as_str(), "{how}");
                    assert!(!e.is_damage(), "{how}");
                }
                other => panic!("{how}: {other:?}"),
            }
            assert!(!storage.exists(&path).unwrap(), "{how}: the name stayed");
            assert!(names(&storage).is_empty(), "{how}: {:?}", names(&storage));
            // The next create of the name succeeds.
            storage.put_new(&path, b"metadata").unwrap();
            assert_eq!(storage.get(&path).unwrap(), b"metadata", "{how}");
        }
    }

    #[test]
    fn link_failures_of_filesystems_without_links_fall_back_and_others_do_not() {
        for errno in [
            rustix::io::Errno::PERM,
            rustix::io::Errno::OPNOTSUPP,
            rustix::io::Errno::NOSYS,
            rustix::io::Errno::XDEV,
            rustix::io::Errno::MLINK,
        ] {
            assert!(links_unsupported(&io::Error::from(errno)), "{errno:?}");
        }
        for errno in [
            rustix::io::Errno::NOENT,
            rustix::io::Errno::NOSPC,
            rustix::io::Errno::IO,
            rustix::io::Errno::ACCESS,
        ] {
            assert!(!links_unsupported(&io::Error::from(errno)), "{errno:?}");
        }
        assert!(renames_unsupported(&io::Error::from(
            rustix::io::Errno::INVAL
        )));
        assert!(!renames_unsupported(&io::Error::from(
            rustix::io::Errno::EXIST
        )));
    }
}
