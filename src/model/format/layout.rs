//! Names of things in a checkpoint root (see `docs/checkpoint-layout.md`):
//!
//! ```text
//! <root>/chk-<id, 10+ digits>/_metadata              written last: the checkpoint exists
//! <root>/chk-<id>/_no-claim                          restored in no-claim mode: never deleted
//! <root>/chk-<id>/<instance id>/<file>               files private to the checkpoint
//! <root>/shared/<instance id>/<file>.sst             immutable files several checkpoints share
//! <root>/_coordinator/epoch-<n, 20 digits>           one per coordinator that opened the root
//! ```

use crate::model::error::Result;
use crate::model::format::metadata::{InstanceId, METADATA_FILE};
use crate::model::format::path::StoragePath;

/// Name of the empty file that marks a checkpoint restored in no-claim mode: retention and
/// garbage collection leave it, and every file it lists, alone.
pub const NO_CLAIM_MARKER: &str = "_no-claim";

/// Prefix of checkpoint directory names.
pub const CHECKPOINT_DIR_PREFIX: &str = "chk-";
/// The shared area.
pub const SHARED_DIR: &str = "shared";

/// The directory of coordinator epochs: each coordinator that opens the root creates the next
/// `epoch-<n>` in it; one whose successor exists is stale (fenced).
pub const COORDINATOR_DIR: &str = "_coordinator";

/// Prefix of epoch file names in [`COORDINATOR_DIR`].
const EPOCH_PREFIX: &str = "epoch-";

/// `_coordinator/epoch-<n as 20 digits>`.
pub fn epoch_path(epoch: u64) -> Result<StoragePath> {
    StoragePath::parse(&format!("{COORDINATOR_DIR}/{EPOCH_PREFIX}{epoch:020}"))
}

/// The epoch an epoch file's name stands for (canonical spelling only).
pub fn parse_epoch_file(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(EPOCH_PREFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The directory name of checkpoint `id`.
pub fn checkpoint_dir_name(id: u64) -> String {
    format!("{CHECKPOINT_DIR_PREFIX}{id:010}")
}

/// The checkpoint id a top-level directory name stands for, if it is a checkpoint directory.
pub fn parse_checkpoint_dir(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(CHECKPOINT_DIR_PREFIX)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Only the canonical spelling names a checkpoint: `chk-00000000001` is not checkpoint 1,
    // so garbage collection never treats a look-alike directory as one of ours.
    let id: u64 = digits.parse().ok()?;
    (checkpoint_dir_name(id) == name).then_some(id)
}

/// `chk-<id>/_metadata`.
pub fn metadata_path(id: u64) -> Result<StoragePath> {
    StoragePath::parse(&format!("{}/{METADATA_FILE}", checkpoint_dir_name(id)))
}

/// `chk-<id>/_no-claim`.
pub fn no_claim_marker_path(id: u64) -> Result<StoragePath> {
    StoragePath::parse(&format!("{}/{NO_CLAIM_MARKER}", checkpoint_dir_name(id)))
}

/// `chk-<id>/<instance>/<name>`: a file private to one checkpoint.
pub fn private_path(id: u64, instance: InstanceId, name: &str) -> Result<StoragePath> {
    StoragePath::parse(&format!(
        "{}/{}/{name}",
        checkpoint_dir_name(id),
        instance.hex()
    ))
}

/// `shared/<instance>/<name>`: a file shared by checkpoints of one instance lineage.
pub fn shared_path(instance: InstanceId, name: &str) -> Result<StoragePath> {
    StoragePath::parse(&format!("{SHARED_DIR}/{}/{name}", instance.hex()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_dirs_round_trip() {
        assert_eq!(checkpoint_dir_name(42), "chk-0000000042");
        assert_eq!(parse_checkpoint_dir("chk-0000000042"), Some(42));
        assert_eq!(
            parse_checkpoint_dir(&checkpoint_dir_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_checkpoint_dir("chk-42"), None);
        assert_eq!(parse_checkpoint_dir("shared"), None);
        assert_eq!(parse_checkpoint_dir("chk-00000000x2"), None);
        assert_eq!(parse_checkpoint_dir("chk-00000000042"), None);
    }

    #[test]
    fn epoch_files_round_trip() {
        let path = epoch_path(7).unwrap();
        assert_eq!(path.as_str(), "_coordinator/epoch-00000000000000000007");
        assert_eq!(parse_epoch_file(path.file_name()), Some(7));
        assert_eq!(parse_epoch_file("epoch-7"), None);
        assert_eq!(parse_epoch_file("epoch-0000000000000000000x"), None);
        assert_eq!(
            parse_epoch_file(epoch_path(u64::MAX).unwrap().file_name()),
            Some(u64::MAX)
        );
    }
}
