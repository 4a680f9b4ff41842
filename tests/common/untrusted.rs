//! A storage that misbehaves the ways some S3-compatible stores, caches and proxies do, for
//! the tests that deletion never rests on a listing alone and that damage is believed only
//! when reads agree: listings that omit objects, responses with a flipped bit, writes that are
//! acknowledged and lost.
//!
//! Each fault applies to paths accepted by a predicate (a substring here, which is what the
//! tests need), for the next `n` matching requests.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use statebackend::storage::{CheckpointStorage, ObjectMeta, StoragePath};
use statebackend::{Error, Result};

/// A fault: paths containing `needle`, for the next `times` matching requests.
#[derive(Debug, Clone, Default)]
struct Fault {
    needle: String,
    times: u64,
}

impl Fault {
    fn hits(&mut self, path: &StoragePath) -> bool {
        if self.times > 0 && path.as_str().contains(&self.needle) {
            self.times -= 1;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Default)]
struct Faults {
    omit_from_listings: Fault,
    flip_reads: Fault,
    lose_writes: Fault,
    lost_writes: u64,
    flipped_reads: u64,
}

/// See the module docs.
pub struct Untrusted {
    inner: Arc<dyn CheckpointStorage>,
    faults: Mutex<Faults>,
}

impl Untrusted {
    pub fn new(inner: Arc<dyn CheckpointStorage>) -> Self {
        Self {
            inner,
            faults: Mutex::new(Faults::default()),
        }
    }

    /// The next `times` listings leave out every object whose path contains `needle`.
    pub fn omit_from_listings(&self, needle: &str, times: u64) {
        self.faults.lock().unwrap().omit_from_listings = Fault {
            needle: needle.into(),
            times,
        };
    }

    /// The next `times` reads (whole or streamed) of a path containing `needle` return its
    /// bytes with one bit flipped in the middle.
    pub fn flip_reads(&self, needle: &str, times: u64) {
        self.faults.lock().unwrap().flip_reads = Fault {
            needle: needle.into(),
            times,
        };
    }

    /// The next `times` writes of a path containing `needle` are acknowledged and not stored.
    pub fn lose_writes(&self, needle: &str, times: u64) {
        self.faults.lock().unwrap().lose_writes = Fault {
            needle: needle.into(),
            times,
        };
    }

    /// How many writes were lost, and reads flipped, so far.
    pub fn fired(&self) -> (u64, u64) {
        let f = self.faults.lock().unwrap();
        (f.lost_writes, f.flipped_reads)
    }

    fn lose(&self, path: &StoragePath) -> bool {
        let mut f = self.faults.lock().unwrap();
        let hit = f.lose_writes.hits(path);
        f.lost_writes += u64::from(hit);
        hit
    }

    fn flip(&self, path: &StoragePath) -> bool {
        let mut f = self.faults.lock().unwrap();
        let hit = f.flip_reads.hits(path);
        f.flipped_reads += u64::from(hit);
        hit
    }
}

fn flipped(mut bytes: Vec<u8>) -> Vec<u8> {
    if !bytes.is_empty() {
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x04;
    }
    bytes
}

impl CheckpointStorage for Untrusted {
    fn put(&self, path: &StoragePath, data: &[u8]) -> Result<()> {
        if self.lose(path) {
            return Ok(());
        }
        self.inner.put(path, data)
    }

    fn put_new(&self, path: &StoragePath, data: &[u8]) -> Result<()> {
        if self.lose(path) {
            return if self.inner.exists(path)? {
                Err(Error::AlreadyExists {
                    path: path.to_string(),
                })
            } else {
                Ok(())
            };
        }
        self.inner.put_new(path, data)
    }

    fn put_file(&self, path: &StoragePath, local: &Path) -> Result<u64> {
        if self.lose(path) {
            return Ok(std::fs::metadata(local).map(|m| m.len()).unwrap_or(0));
        }
        self.inner.put_file(path, local)
    }

    fn get(&self, path: &StoragePath) -> Result<Vec<u8>> {
        let bytes = self.inner.get(path)?;
        Ok(if self.flip(path) {
            flipped(bytes)
        } else {
            bytes
        })
    }

    fn get_to_file(&self, path: &StoragePath, local: &Path) -> Result<u64> {
        if self.flip(path) {
            let bytes = flipped(self.inner.get(path)?);
            std::fs::write(local, &bytes).map_err(|e| Error::Io {
                path: local.to_owned(),
                source: e,
            })?;
            return Ok(bytes.len() as u64);
        }
        self.inner.get_to_file(path, local)
    }

    fn read_to(&self, path: &StoragePath, sink: &mut dyn Write) -> Result<u64> {
        if self.flip(path) {
            let bytes = flipped(self.inner.get(path)?);
            sink.write_all(&bytes).map_err(|e| Error::Io {
                path: path.as_str().into(),
                source: e,
            })?;
            return Ok(bytes.len() as u64);
        }
        self.inner.read_to(path, sink)
    }

    fn read_range(&self, path: &StoragePath, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        let bytes = self.inner.read_range(path, range)?;
        Ok(if self.flip(path) {
            flipped(bytes)
        } else {
            bytes
        })
    }

    fn list(&self, prefix: Option<&StoragePath>) -> Result<Vec<ObjectMeta>> {
        let mut listing = self.inner.list(prefix)?;
        let mut f = self.faults.lock().unwrap();
        let fault = &mut f.omit_from_listings;
        if fault.times > 0 {
            let before = listing.len();
            listing.retain(|o| !o.path.as_str().contains(&fault.needle));
            if listing.len() != before {
                fault.times -= 1;
            }
        }
        Ok(listing)
    }

    fn delete(&self, path: &StoragePath) -> Result<()> {
        self.inner.delete(path)
    }

    fn exists(&self, path: &StoragePath) -> Result<bool> {
        self.inner.exists(path)
    }

    fn size(&self, path: &StoragePath) -> Result<Option<u64>> {
        self.inner.size(path)
    }

    fn prefers_ranged_reads(&self) -> bool {
        self.inner.prefers_ranged_reads()
    }

    fn transfer_concurrency(&self) -> usize {
        self.inner.transfer_concurrency()
    }
}
