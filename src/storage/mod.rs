//! Checkpoint storage: where checkpoints and savepoints write their files.
//!
//! [`CheckpointStorage`] is deliberately small and byte-oriented — whole-object `put`/`get`,
//! streaming file upload/download, streaming reads (`read_to`, on which [`checksum`] is
//! built), `list`, `delete` — because it is the seam where an object store (S3, GCS, …) plugs
//! in later, and object stores offer little more. Nothing here knows about RocksDB or the
//! checkpoint format.
//!
//! Names are [`StoragePath`]s: validated relative paths that cannot escape the storage root.
//!
//! Implementations:
//! - [`LocalDirStorage`]: a directory on a local (or mounted) filesystem, with atomic,
//!   durable writes (temp file, `fsync`, rename, `fsync` of the directory).
//! - [`FaultyStorage`]: a wrapper that injects failures and simulated crashes, for
//!   crash-consistency tests.
//!
//! # Temporary files
//!
//! Atomic writes go through a temporary sibling named `<name>.tmp-<16 lowercase hex>` (see
//! [`temporary_path`]). A crash can leave one behind; it is a valid [`StoragePath`], so
//! [`CheckpointStorage::list`] reports it and garbage collection can recognise it with
//! [`is_temporary`] and delete it. Callers must not give their own files names of that shape.

mod faulty;
mod formats;
mod local;
#[cfg(feature = "object-store")]
mod object;
mod ranged;

pub use crate::model::format::path::StoragePath;
pub use faulty::{FaultMode, FaultyStorage};
pub use formats::{fetch_verified, verified_fetcher};
pub use local::LocalDirStorage;
#[cfg(feature = "object-store")]
pub use object::{
    DEFAULT_TRANSFER_CONCURRENCY, MULTIPART_THRESHOLD, ObjectStorage, PUT_NEW_ATTEMPTS,
};
/// The `object_store` crate, for building the stores [`ObjectStorage`] runs on.
#[cfg(feature = "object-store")]
pub use object_store;
pub use ranged::{RANGED_READ_WINDOW, RangedReader};

#[cfg(feature = "rocksdb")]
pub(crate) use local::sync_dir;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use crate::model::error::{Error, Result};
use crate::model::format::layout::{TEMP_MARKER, is_temporary_name};

/// A stored file and its size, as returned by [`CheckpointStorage::list`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectMeta {
    /// Where the file is.
    pub path: StoragePath,
    /// Its size in bytes.
    pub size: u64,
}

/// A place to store checkpoint and savepoint files: a flat namespace of immutable-ish byte
/// objects addressed by [`StoragePath`].
///
/// The trait is object-safe (`Box<dyn CheckpointStorage>`, `Arc<dyn CheckpointStorage>`) and
/// implementations are shared between threads. Only files are objects: a "directory" is just a
/// common path prefix, and asking for one as a file behaves as if nothing were there.
///
/// Concurrent writers of the same path are allowed; the last completed write wins and readers
/// always see one complete version.
pub trait CheckpointStorage: Send + Sync {
    /// Stores `data` at `path`, replacing any previous file.
    ///
    /// Atomic: once this returns `Ok`, readers see exactly `data` and the write is durable. If
    /// the process crashes or the call fails, `path` holds either its previous content (or
    /// nothing) or the complete `data` — never a prefix. A crash may leave a temporary sibling
    /// (see [`is_temporary`]).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when writing fails; [`Error::InvalidPath`] when the implementation refuses
    /// the path (for example because of a symlink, or because `path` is too long to have a
    /// temporary sibling, see [`temporary_path`]).
    fn put(&self, path: &StoragePath, data: &[u8]) -> Result<()>;

    /// Writes `data` at `path` only if nothing is there, atomically: of two writers, one
    /// succeeds and the other gets [`Error::AlreadyExists`], and the file is never replaced.
    /// How `_metadata` is written, so that a second coordinator of the root (a zombie after a
    /// failover) can never overwrite a completed checkpoint.
    ///
    /// The default checks and then writes, which is not atomic; storages that can do better
    /// (local directories: a hard link that fails on an existing name; object stores: a
    /// conditional PUT) override it.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`]; as [`CheckpointStorage::put`].
    fn put_new(&self, path: &StoragePath, data: &[u8]) -> Result<()> {
        if self.exists(path)? {
            return Err(Error::AlreadyExists {
                path: path.to_string(),
            });
        }
        self.put(path, data)
    }

    /// Uploads the local file `local` to `path`, with the same atomicity as
    /// [`put`](Self::put), streaming instead of reading the file into memory. Returns the number
    /// of bytes written.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when `local` cannot be read (the error names `local`) or the upload fails;
    /// [`Error::InvalidPath`] as for [`put`](Self::put).
    fn put_file(&self, path: &StoragePath, local: &Path) -> Result<u64>;

    /// Reads the whole file at `path` into memory. For a file whose size is not bounded by
    /// its format, use [`read_to`](Self::read_to) (streaming) or
    /// [`get_to_file`](Self::get_to_file).
    ///
    /// # Errors
    ///
    /// [`Error::MissingFile`] when there is no file at `path`; [`Error::Io`] when reading
    /// fails; [`Error::InvalidPath`] when the implementation refuses the path.
    fn get(&self, path: &StoragePath) -> Result<Vec<u8>>;

    /// Downloads the file at `path` into the local file `local`, streaming. Returns the number
    /// of bytes written. An existing `local` is replaced; on failure `local` is left as it was
    /// (no partial download appears under that name). Durability of `local` (`fsync`) is the
    /// caller's business.
    ///
    /// # Errors
    ///
    /// [`Error::MissingFile`] when there is no file at `path`; [`Error::Io`] when reading or
    /// writing `local` fails; [`Error::InvalidPath`] when the implementation refuses the path.
    fn get_to_file(&self, path: &StoragePath, local: &Path) -> Result<u64>;

    /// Streams the file at `path` into `sink`, holding a bounded buffer (not the file) in
    /// memory. Returns the number of bytes written to `sink`. On failure `sink` may have
    /// received a prefix of the file.
    ///
    /// The provided implementation downloads the file into a temporary local file with
    /// [`get_to_file`](Self::get_to_file) and streams that; implementations that can stream
    /// directly should.
    ///
    /// # Errors
    ///
    /// [`Error::MissingFile`] when there is no file at `path`; [`Error::Io`] when reading fails
    /// or `sink` refuses bytes; [`Error::InvalidPath`] when the implementation refuses the path.
    fn read_to(&self, path: &StoragePath, sink: &mut dyn Write) -> Result<u64> {
        let dir = tempfile::Builder::new()
            .prefix("statebackend-read-")
            .tempdir()
            .map_err(|e| Error::io(std::env::temp_dir(), e))?;
        let local = dir.path().join("file");
        self.get_to_file(path, &local)?;
        let mut file = std::fs::File::open(&local).map_err(|e| Error::io(&local, e))?;
        copy_to_sink(&mut file, &local, sink, path)
    }

    /// All files at or below `prefix` (every file when `None`), recursively, sorted by path.
    ///
    /// `prefix` matches whole components: `chk-1` covers `chk-1` and `chk-1/x`, not `chk-10`.
    /// Temporary leftovers are included so that garbage collection can find them.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the listing fails.
    fn list(&self, prefix: Option<&StoragePath>) -> Result<Vec<ObjectMeta>>;

    /// Deletes the file at `path`. Idempotent: deleting a missing file succeeds.
    ///
    /// Deletion need not be durable: after a crash a deleted file may reappear, so deleting
    /// callers (garbage collection) must be idempotent too.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the file exists but cannot be removed; [`Error::InvalidPath`] when the
    /// implementation refuses the path.
    fn delete(&self, path: &StoragePath) -> Result<()>;

    /// Deletes the files at `paths`, each as [`delete`](Self::delete) does, and returns one
    /// result per path. The provided implementation deletes them
    /// [`transfer_concurrency`](Self::transfer_concurrency) at a time; object stores batch them
    /// (S3: up to 1,000 keys per request).
    fn delete_many(&self, paths: &[StoragePath]) -> Vec<Result<()>> {
        for_each_concurrently(paths, self.transfer_concurrency(), |path| {
            Ok(self.delete(path))
        })
        .unwrap_or_default()
    }

    /// Whether a file exists at `path`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when that cannot be determined; [`Error::InvalidPath`] when the
    /// implementation refuses the path.
    fn exists(&self, path: &StoragePath) -> Result<bool>;

    /// The size of the file at `path`, or `None` if there is none.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when that cannot be determined; [`Error::InvalidPath`] when the
    /// implementation refuses the path.
    fn size(&self, path: &StoragePath) -> Result<Option<u64>>;

    /// Reads bytes `range` of the file at `path`. The range must lie within the file (callers
    /// know its size): past its end, a store returns fewer bytes or an error. The provided
    /// implementation streams the file from its start and keeps the range; stores with ranged
    /// requests override it.
    ///
    /// # Errors
    /// As [`read_to`](Self::read_to).
    fn read_range(&self, path: &StoragePath, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        struct Window {
            range: std::ops::Range<u64>,
            at: u64,
            out: Vec<u8>,
        }
        impl Write for Window {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let start = self.at;
                self.at += buf.len() as u64;
                let from = self.range.start.clamp(start, self.at);
                let to = self.range.end.clamp(start, self.at);
                self.out
                    .extend_from_slice(&buf[(from - start) as usize..(to - start) as usize]);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut window = Window {
            range,
            at: 0,
            out: Vec::new(),
        };
        self.read_to(path, &mut window)?;
        Ok(window.out)
    }

    /// Whether restores should read only the parts of a file they need
    /// ([`read_range`](Self::read_range)) rather than fetch it whole: true where a request
    /// costs a round trip and bytes cost transfer (object stores), false for a local disk,
    /// where a whole file is a hard link away and its checksum is verified on the way.
    fn prefers_ranged_reads(&self) -> bool {
        false
    }

    /// How many files of one checkpoint to transfer at once ([`for_each_concurrently`]):
    /// 1 for a local disk (the default), more for a store whose requests each wait on the
    /// network.
    fn transfer_concurrency(&self) -> usize {
        1
    }

    /// Where this storage is, for messages: a directory, a bucket and prefix. Errors that
    /// concern the storage as a whole (no savepoint in it, no checkpoint that restores) name
    /// it with this.
    fn location(&self) -> String {
        "checkpoint storage".into()
    }
}

/// Forwards [`CheckpointStorage`] through a pointer type, so that `&S`, `Box<dyn …>` and
/// `Arc<dyn …>` can be used (and wrapped in [`FaultyStorage`]) wherever a storage is expected.
macro_rules! forward_storage {
    ($($ptr:ty),*) => {$(
        impl<T: CheckpointStorage + ?Sized> CheckpointStorage for $ptr {
            fn put(&self, path: &StoragePath, data: &[u8]) -> Result<()> {
                (**self).put(path, data)
            }
            fn put_new(&self, path: &StoragePath, data: &[u8]) -> Result<()> {
                (**self).put_new(path, data)
            }
            fn put_file(&self, path: &StoragePath, local: &Path) -> Result<u64> {
                (**self).put_file(path, local)
            }
            fn get(&self, path: &StoragePath) -> Result<Vec<u8>> {
                (**self).get(path)
            }
            fn get_to_file(&self, path: &StoragePath, local: &Path) -> Result<u64> {
                (**self).get_to_file(path, local)
            }
            fn read_to(&self, path: &StoragePath, sink: &mut dyn Write) -> Result<u64> {
                (**self).read_to(path, sink)
            }
            fn list(&self, prefix: Option<&StoragePath>) -> Result<Vec<ObjectMeta>> {
                (**self).list(prefix)
            }
            fn delete(&self, path: &StoragePath) -> Result<()> {
                (**self).delete(path)
            }
            fn delete_many(&self, paths: &[StoragePath]) -> Vec<Result<()>> {
                (**self).delete_many(paths)
            }
            fn exists(&self, path: &StoragePath) -> Result<bool> {
                (**self).exists(path)
            }
            fn location(&self) -> String {
                (**self).location()
            }
            fn size(&self, path: &StoragePath) -> Result<Option<u64>> {
                (**self).size(path)
            }
            fn read_range(
                &self,
                path: &StoragePath,
                range: std::ops::Range<u64>,
            ) -> Result<Vec<u8>> {
                (**self).read_range(path, range)
            }
            fn prefers_ranged_reads(&self) -> bool {
                (**self).prefers_ranged_reads()
            }
            fn transfer_concurrency(&self) -> usize {
                (**self).transfer_concurrency()
            }
        }
    )*};
}

forward_storage!(&T, Box<T>, Arc<T>);

/// Runs `transfer` on every item, `concurrency` at a time on scoped threads (in the caller's
/// thread when 1), and returns the results in the order of `items`. After the first failure no
/// new transfer starts; the first error (in item order) is returned.
///
/// # Errors
/// The first error of `transfer`.
pub fn for_each_concurrently<T: Sync, R: Send>(
    items: &[T],
    concurrency: usize,
    transfer: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let workers = concurrency.clamp(1, items.len().max(1));
    if workers == 1 {
        return items.iter().map(transfer).collect();
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<R>>>> =
        Mutex::new(std::iter::repeat_with(|| None).take(items.len()).collect());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let result = transfer(item);
                    if result.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(result);
                }
            });
        }
    });
    // Items start in order, so every item not started comes after the one that failed: the
    // first error in item order is met before any gap.
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .flatten()
        .collect()
}

/// Buffer size of streaming reads.
const READ_BUFFER: usize = 64 * 1024;

/// Streams `src` (the local file `src_path`, holding storage file `path`) into `sink` through a
/// fixed buffer. Returns the bytes copied.
pub(crate) fn copy_to_sink(
    src: &mut impl Read,
    src_path: &Path,
    sink: &mut dyn Write,
    path: &StoragePath,
) -> Result<u64> {
    let mut buffer = vec![0u8; READ_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(src_path, e)),
        };
        sink.write_all(&buffer[..n])
            .map_err(|e| Error::io(format!("<reader of {path}>"), e))?;
        total += n as u64;
    }
    sink.flush()
        .map_err(|e| Error::io(format!("<reader of {path}>"), e))?;
    Ok(total)
}

/// The size and crc32 (as in [`FileEntry`](crate::runtime::checkpoint::FileEntry)) of the file at
/// `path`, streamed through [`CheckpointStorage::read_to`]: memory stays bounded by one buffer
/// whatever the file's size.
///
/// # Errors
///
/// As [`CheckpointStorage::read_to`].
pub fn checksum(storage: &dyn CheckpointStorage, path: &StoragePath) -> Result<(u64, u32)> {
    struct Crc {
        hasher: crc32fast::Hasher,
        size: u64,
    }
    impl Write for Crc {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.hasher.update(buf);
            self.size += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut sink = Crc {
        hasher: crc32fast::Hasher::new(),
        size: 0,
    };
    storage.read_to(path, &mut sink)?;
    Ok((sink.size, sink.hasher.finalize()))
}

/// Whether `path` names a temporary file of an atomic write: its last component has the shape
/// `<something>.tmp-<16 lowercase hex digits>`.
///
/// Such files are leftovers of interrupted writes (or writes in progress) and are never part of
/// a completed checkpoint.
pub fn is_temporary(path: &StoragePath) -> bool {
    is_temporary_name(path.file_name())
}

/// The temporary sibling used to write `path` atomically: `<name>.tmp-<nonce as 16 hex>` in the
/// same directory.
///
/// If `<name>` is too long for the suffix to fit the component or path limits, it is shortened
/// (the result is still recognised by [`is_temporary`]; which file it belonged to no longer
/// matters once it is a leftover).
///
/// # Errors
///
/// [`Error::InvalidPath`] when even a one-byte name plus suffix would not fit, that is when
/// `path`'s directory part is within 22 bytes of [`StoragePath::MAX_LEN`].
pub fn temporary_path(path: &StoragePath, nonce: u64) -> Result<StoragePath> {
    let suffix = format!("{TEMP_MARKER}{nonce:016x}");
    let parent = path.parent();
    let dir_len = parent.as_ref().map_or(0, |p| p.as_str().len() + 1);
    let name = path.file_name();
    let budget = (StoragePath::MAX_COMPONENT_LEN - suffix.len())
        .min(StoragePath::MAX_LEN.saturating_sub(dir_len + suffix.len()))
        .min(name.len());
    // `name` is ASCII (a `StoragePath` invariant), so any byte index is a char boundary.
    let base = match name.get(..budget) {
        Some(base) if !base.is_empty() => base,
        _ => {
            return Err(Error::InvalidPath {
                path: path.to_string(),
                reason: "too long to have a temporary sibling",
            });
        }
    };
    let temp_name = format!("{base}{suffix}");
    match parent {
        Some(parent) => parent.join(&temp_name),
        None => StoragePath::parse(&temp_name),
    }
}
