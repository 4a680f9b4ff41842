//! Reading the crate's format files from storage, bounded by what the formats allow.

use std::path::Path;

use crate::model::error::{Error, Result};
use crate::model::format::metadata::{
    FetchFile, FileEntry, MAX_METADATA_BYTES, RandomAccess, SnapshotMetadata,
};
use crate::model::format::path::StoragePath;
use crate::model::format::verify_local_file;
use crate::storage::CheckpointStorage;

impl SnapshotMetadata {
    /// Reads and decodes the `_metadata` at `path` of `storage`, holding at most the format's
    /// bound (64 MiB) in memory: the size is asked first and a larger file is refused without
    /// reading it, and the read itself stops at the bound (the file may grow in between).
    ///
    /// # Errors
    /// [`Error::MissingFile`] if there is no file; [`Error::Corrupt`] for a file larger than the
    /// bound; storage errors; the errors of [`SnapshotMetadata::decode`].
    pub fn read(storage: &dyn CheckpointStorage, path: &StoragePath) -> Result<SnapshotMetadata> {
        let name = path.as_str();
        let too_large = |size: String| {
            Error::corrupt(
                name,
                format!("{size} bytes is too large for metadata (at most {MAX_METADATA_BYTES})"),
            )
        };
        match storage.size(path)? {
            None => {
                return Err(Error::MissingFile {
                    file: path.to_string(),
                });
            }
            Some(size) if size > MAX_METADATA_BYTES as u64 => {
                return Err(too_large(size.to_string()));
            }
            Some(_) => {}
        }
        let mut sink = BoundedSink {
            data: Vec::new(),
            limit: MAX_METADATA_BYTES,
            exceeded: false,
        };
        match storage.read_to(path, &mut sink) {
            Ok(_) => {}
            Err(_) if sink.exceeded => return Err(too_large(format!("more than {}", sink.limit))),
            Err(e) => return Err(e),
        }
        Self::decode(&sink.data, name)
    }
}

/// Downloads the file `entry` names from `storage` to `local` and verifies its size and crc32
/// against the entry: the one way a restore fetches a checkpoint's or savepoint's file.
///
/// # Errors
/// Storage errors; [`Error::SizeMismatch`], [`Error::ChecksumMismatch`] naming the file.
pub fn fetch_verified(
    storage: &dyn CheckpointStorage,
    entry: &FileEntry,
    local: &Path,
) -> Result<()> {
    storage.get_to_file(&entry.path, local)?;
    verify_local_file(local, entry)
}

/// [`fetch_verified`] from `storage`, as the closure restores take.
pub fn verified_fetcher(storage: &dyn CheckpointStorage) -> FetchFile<'_> {
    let fetch = FetchFile::new(storage.transfer_concurrency(), move |entry, local| {
        fetch_verified(storage, entry, local)
    });
    if !storage.prefers_ranged_reads() {
        return fetch;
    }
    fetch.with_ranged_reads(move |entry| {
        let reader = crate::storage::RangedReader::open(storage, &entry.path, entry.size)?;
        Ok(Box::new(reader) as Box<dyn RandomAccess>)
    })
}

/// A `Write` collecting at most `limit` bytes; writing more fails and sets `exceeded`.
struct BoundedSink {
    data: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl std::io::Write for BoundedSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > self.limit - self.data.len() {
            self.exceeded = true;
            return Err(std::io::Error::other("more bytes than the bound"));
        }
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
