//! [`RangedReader`]: random access to a stored file through ranged reads, so that a restore
//! that needs some key groups of a data file reads only their blocks (plus header, index and
//! footer) instead of downloading the file.

use std::io::{Read, Seek, SeekFrom};

use crate::model::error::{Error, Result};
use crate::model::format::path::StoragePath;
use crate::storage::CheckpointStorage;

/// Bytes fetched per read request (256 KiB): large enough that the blocks of neighbouring key
/// groups come in one request, small enough that a read overshoots what it needs by little
/// (measured on a 4 MiB savepoint restored at 1 → 4: 1 MiB windows read 74% of the file per
/// quarter, for 5 requests).
pub const RANGED_READ_WINDOW: u64 = 256 << 10;

/// `Read + Seek` over a file of `storage` whose size is known: every read that leaves the
/// current window fetches the next [`RANGED_READ_WINDOW`] bytes with
/// [`CheckpointStorage::read_range`]. Holds at most one window in memory.
pub struct RangedReader<'a> {
    storage: &'a dyn CheckpointStorage,
    path: StoragePath,
    len: u64,
    pos: u64,
    window_start: u64,
    window: Vec<u8>,
}

impl<'a> RangedReader<'a> {
    /// A reader of the file at `path`, after checking that it is there with size `len`.
    ///
    /// # Errors
    /// [`Error::MissingFile`]; [`Error::SizeMismatch`] for another size; storage errors.
    pub fn open(storage: &'a dyn CheckpointStorage, path: &StoragePath, len: u64) -> Result<Self> {
        match storage.size(path)? {
            None => Err(Error::MissingFile {
                file: path.to_string(),
            }),
            Some(actual) if actual != len => Err(Error::SizeMismatch {
                file: path.to_string(),
                expected: len,
                actual,
            }),
            Some(_) => Ok(Self {
                storage,
                path: path.clone(),
                len,
                pos: 0,
                window_start: 0,
                window: Vec::new(),
            }),
        }
    }

    fn in_window(&self) -> bool {
        self.pos >= self.window_start && self.pos < self.window_start + self.window.len() as u64
    }
}

impl Read for RangedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        if !self.in_window() {
            let end = self.len.min(self.pos + RANGED_READ_WINDOW);
            let bytes = self
                .storage
                .read_range(&self.path, self.pos..end)
                .map_err(std::io::Error::other)?;
            if bytes.len() as u64 != end - self.pos {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} is shorter than its recorded {} bytes",
                        self.path, self.len
                    ),
                ));
            }
            self.window_start = self.pos;
            self.window = bytes;
        }
        let offset = (self.pos - self.window_start) as usize;
        let n = buf.len().min(self.window.len() - offset);
        buf[..n].copy_from_slice(&self.window[offset..offset + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for RangedReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(at) => Some(at),
            SeekFrom::End(delta) => self.len.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.pos.checked_add_signed(delta),
        };
        match target {
            Some(at) => {
                self.pos = at;
                Ok(at)
            }
            None => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalDirStorage;

    #[test]
    fn reads_and_seeks_like_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = LocalDirStorage::new(tmp.path()).unwrap();
        let path = StoragePath::parse("f").unwrap();
        let data: Vec<u8> = (0..(RANGED_READ_WINDOW as usize * 2 + 77))
            .map(|i| (i % 251) as u8)
            .collect();
        storage.put(&path, &data).unwrap();
        let mut r = RangedReader::open(&storage, &path, data.len() as u64).unwrap();
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert!(all == data);
        let at = RANGED_READ_WINDOW - 3;
        r.seek(SeekFrom::Start(at)).unwrap();
        let mut six = [0u8; 6];
        r.read_exact(&mut six).unwrap();
        assert_eq!(six, data[at as usize..at as usize + 6]);
        assert_eq!(r.seek(SeekFrom::End(-1)).unwrap(), data.len() as u64 - 1);
        assert!(r.seek(SeekFrom::Current(-(data.len() as i64))).is_err());
        assert!(matches!(
            RangedReader::open(&storage, &path, 5),
            Err(Error::SizeMismatch { .. })
        ));
    }
}
