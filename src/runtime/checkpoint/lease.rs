//! The coordinator's lease: a record in the root that says "a job is working here until T".
//!
//! Tools that delete (`statectl gc`, `statectl discard`) must not run while a job's coordinator
//! has checkpoints in flight: their files are listed by no `_metadata` yet. Fencing
//! ([`fence`](super::fence)) stops a *stale* coordinator; the lease lets a tool see a *live*
//! one. Each coordinator writes `_coordinator/lease-<epoch, 20 digits>` when it opens the root,
//! rewrites it as it works (at most once per third of the lease's duration, so a checkpoint
//! costs no extra request), and deletes it when it is dropped. A lease whose holder died
//! expires by itself; a tool compares its expiry with its own clock, and offers an explicit
//! override for a job known to be dead.
//!
//! Only the lease of the root's newest epoch counts: an older coordinator is fenced, completes
//! nothing, and its uploads in flight can never be referenced.
//!
//! The record (`docs/checkpoint-layout.md` §6), little-endian, 33 bytes:
//!
//! ```text
//! magic "SBLS" | version u8 = 1 | epoch u64 | renewed_ms u64 | expires_ms u64 | crc32 u32
//! ```

use std::time::Duration;

use crate::model::error::{Error, Result};
use crate::model::format::layout::{COORDINATOR_DIR, lease_path, parse_epoch_file};
use crate::model::format::{ByteReader, ByteWriter, check_trailing_crc};
use crate::storage::{CheckpointStorage, StoragePath};

/// How long a lease lasts unless renewed: a coordinator renews it at every checkpoint it
/// begins or completes once a third of it has passed, so a job that checkpoints at least every
/// 20 minutes never lets it lapse.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(30 * 60);

const MAGIC: &[u8; 4] = b"SBLS";
const VERSION: u8 = 1;
const ENCODED_LEN: usize = 4 + 1 + 8 + 8 + 8 + 4;

/// A coordinator's claim that it is working in a root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The holder's coordinator epoch.
    pub epoch: u64,
    /// When the holder last wrote it (milliseconds since the Unix epoch, the holder's clock).
    pub renewed_ms: u64,
    /// Until when it holds unless renewed (milliseconds since the Unix epoch).
    pub expires_ms: u64,
}

impl Lease {
    /// Whether the lease still holds at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_ms
    }

    /// The record's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = ByteWriter::new();
        w.raw(MAGIC)
            .u8(VERSION)
            .u64(self.epoch)
            .u64(self.renewed_ms)
            .u64(self.expires_ms)
            .crc_of_all();
        w.into_inner()
    }

    /// Reads a record.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for a record of another length or magic, [`Error::ChecksumMismatch`]
    /// for damaged bytes, [`Error::UnsupportedFormat`] for another version.
    pub fn decode(bytes: &[u8], file: &str) -> Result<Self> {
        if bytes.len() != ENCODED_LEN {
            return Err(Error::corrupt(
                file,
                format!(
                    "a lease is {ENCODED_LEN} bytes, this one {} (truncated or not a lease)",
                    bytes.len()
                ),
            ));
        }
        let body = check_trailing_crc(bytes, file)?;
        let mut r = ByteReader::new(body, file);
        if r.take(4, "magic")? != MAGIC {
            return Err(r.corrupt("not a lease record"));
        }
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(Error::UnsupportedFormat {
                file: file.to_owned(),
                found: format!("lease version {version}"),
                supported: format!("lease version {VERSION}"),
            });
        }
        let lease = Lease {
            epoch: r.u64("epoch")?,
            renewed_ms: r.u64("renewed_ms")?,
            expires_ms: r.u64("expires_ms")?,
        };
        r.expect_end("the lease")?;
        Ok(lease)
    }
}

/// The lease of the root's newest coordinator epoch, if that coordinator holds one (it is
/// running, or died less than a lease's duration ago).
///
/// # Errors
/// Storage errors; a damaged lease record (a tool that deletes must then not assume the root
/// is free).
pub fn read_lease(storage: &dyn CheckpointStorage) -> Result<Option<Lease>> {
    let dir = StoragePath::parse(COORDINATOR_DIR)?;
    let newest = storage
        .list(Some(&dir))?
        .iter()
        .filter_map(|o| parse_epoch_file(o.path.file_name()))
        .max();
    let Some(epoch) = newest else {
        return Ok(None);
    };
    let path = lease_path(epoch)?;
    match storage.get(&path) {
        Ok(bytes) => Lease::decode(&bytes, path.as_str()).map(Some),
        Err(Error::MissingFile { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The lease a coordinator holds: written at open, renewed as it works, deleted when dropped.
#[derive(Debug)]
pub(crate) struct HeldLease {
    record: Lease,
    duration: Duration,
    path: StoragePath,
}

impl HeldLease {
    /// Writes the lease of `epoch`, valid for `duration` from `now_ms`.
    pub(crate) fn acquire(
        storage: &dyn CheckpointStorage,
        epoch: u64,
        duration: Duration,
        now_ms: u64,
    ) -> Result<Self> {
        let mut held = HeldLease {
            record: Lease {
                epoch,
                renewed_ms: 0,
                expires_ms: 0,
            },
            duration,
            path: lease_path(epoch)?,
        };
        held.write(storage, now_ms)?;
        Ok(held)
    }

    /// Rewrites the lease if a third of its duration has passed (or `force`).
    pub(crate) fn renew(
        &mut self,
        storage: &dyn CheckpointStorage,
        now_ms: u64,
        force: bool,
    ) -> Result<()> {
        let third = millis(self.duration) / 3;
        if force || now_ms.saturating_sub(self.record.renewed_ms) >= third {
            self.write(storage, now_ms)?;
        }
        Ok(())
    }

    /// Changes the duration and rewrites the lease.
    pub(crate) fn set_duration(
        &mut self,
        storage: &dyn CheckpointStorage,
        duration: Duration,
        now_ms: u64,
    ) -> Result<()> {
        self.duration = duration;
        self.write(storage, now_ms)
    }

    /// The record as last written.
    pub(crate) fn record(&self) -> Lease {
        self.record
    }

    /// Deletes the lease (the coordinator is going away).
    pub(crate) fn release(&self, storage: &dyn CheckpointStorage) -> Result<()> {
        match storage.delete(&self.path) {
            Ok(()) | Err(Error::MissingFile { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn write(&mut self, storage: &dyn CheckpointStorage, now_ms: u64) -> Result<()> {
        let record = Lease {
            epoch: self.record.epoch,
            renewed_ms: now_ms,
            expires_ms: now_ms.saturating_add(millis(self.duration)),
        };
        storage.put(&self.path, &record.encode())?;
        self.record = record;
        Ok(())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_refused() {
        let lease = Lease {
            epoch: 7,
            renewed_ms: 1_000,
            expires_ms: 61_000,
        };
        let bytes = lease.encode();
        assert_eq!(bytes.len(), ENCODED_LEN);
        assert_eq!(Lease::decode(&bytes, "l").unwrap(), lease);
        assert!(lease.is_live(60_999) && !lease.is_live(61_000));
        for cut in 0..bytes.len() {
            assert!(Lease::decode(&bytes[..cut], "l").is_err());
        }
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x10;
            assert!(Lease::decode(&flipped, "l").is_err(), "byte {i}");
        }
    }
}
