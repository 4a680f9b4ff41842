//! Fencing of stale coordinators: one epoch file per coordinator that opens a root.
//!
//! After a failover the old coordinator may still be running (a zombie: a paused JVM-like
//! process, a partitioned machine). It must neither complete checkpoints nor delete files, or
//! its retention would remove what the new coordinator's checkpoints still reference.
//!
//! Each coordinator, when it opens a root, creates `_coordinator/epoch-<n>` with `n` one above
//! the highest epoch there, by a create-if-absent write ([`CheckpointStorage::put_new`]): of
//! two coordinators opening at once, one gets `n` and the other retries with `n + 1`. The
//! file holds `n` and a random nonce, so no two openers ever write the same bytes. Epoch
//! files are never deleted, so "someone opened the root after me" is exactly "the file of my
//! epoch + 1 exists": one existence check (a HEAD on an object store), made before every
//! `_metadata` write and before every deletion pass. A fenced coordinator stays fenced.
//!
//! What this does not close: a coordinator that passed the check and then stalls before its
//! writes or deletions land. The create-if-absent `_metadata` write still protects completed
//! checkpoints of the same id; deletions already decided can land late. Object stores offer no
//! conditional delete that could close it.

use crate::model::error::{Error, Result};
use crate::model::format::layout::{COORDINATOR_DIR, epoch_path, parse_epoch_file};
use crate::model::format::metadata::InstanceId;
use crate::model::format::path::StoragePath;
use crate::storage::CheckpointStorage;

/// The content of an epoch file: the epoch in decimal, a space and a random nonce of 32 hex
/// digits. Nothing reads it (the name is the record); the nonce makes every opener's bytes its
/// own, so a create retried after a lost response can tell its own file (same bytes) from
/// another opener's that took the epoch ([`CheckpointStorage::put_new`]).
fn epoch_content(epoch: u64) -> String {
    format!("{epoch} {}", InstanceId::random().hex())
}

/// How many concurrent openers one open tolerates before giving up.
const CLAIM_ATTEMPTS: u32 = 64;

/// A coordinator's claim on a root.
#[derive(Debug, Clone)]
pub struct Epoch {
    epoch: u64,
    successor: StoragePath,
    fenced_by: Option<u64>,
}

impl Epoch {
    /// Claims the next epoch of the root in `storage`.
    ///
    /// # Errors
    /// Storage errors; [`Error::CheckpointState`] if `CLAIM_ATTEMPTS` creates in a row lost the
    /// race to other openers.
    pub fn claim(storage: &dyn CheckpointStorage) -> Result<Self> {
        let dir = StoragePath::parse(COORDINATOR_DIR)?;
        let highest = storage
            .list(Some(&dir))?
            .iter()
            .filter_map(|o| parse_epoch_file(o.path.file_name()))
            .max()
            .unwrap_or(0);
        let mut epoch = highest;
        for _ in 0..CLAIM_ATTEMPTS {
            epoch = epoch.checked_add(1).ok_or_else(|| Error::CheckpointState {
                id: 0,
                reason: "coordinator epochs exhausted".into(),
            })?;
            match storage.put_new(&epoch_path(epoch)?, epoch_content(epoch).as_bytes()) {
                Ok(()) => {
                    return Ok(Self {
                        epoch,
                        successor: epoch_path(epoch.saturating_add(1))?,
                        fenced_by: None,
                    });
                }
                Err(Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::CheckpointState {
            id: 0,
            reason: format!("{CLAIM_ATTEMPTS} coordinators opened the root at once"),
        })
    }

    /// This coordinator's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Fails with [`Error::Fenced`] if a newer coordinator opened the root.
    ///
    /// # Errors
    /// [`Error::Fenced`]; storage errors of the check (which also stop the caller: a write or
    /// deletion must not go ahead on an unknown fence).
    pub fn check(&mut self, storage: &dyn CheckpointStorage) -> Result<()> {
        if self.fenced_by.is_none() && storage.exists(&self.successor)? {
            self.fenced_by = Some(self.epoch + 1);
        }
        match self.fenced_by {
            Some(newer) => Err(Error::Fenced {
                epoch: self.epoch,
                newer,
            }),
            None => Ok(()),
        }
    }
}
