//! Names of things in a checkpoint root (see `docs/checkpoint-layout.md`):
//!
//! ```text
//! <root>/chk-<id, 10+ digits>/_metadata              written last: the checkpoint exists
//! <root>/chk-<id>/_no-claim                          restored in no-claim mode: never deleted
//! <root>/chk-<id>/<instance id>/<file>               files private to the checkpoint
//! <root>/shared/<instance id>/<file>.sst             immutable files several checkpoints share
//! <root>/_coordinator/epoch-<n, 20 digits>           one per coordinator that opened the root
//! <root>/_coordinator/lease-<n, 20 digits>           while coordinator n works in the root
//! ```
//!
//! Garbage collection deletes only paths this layout names ([`is_collectable`]): a root may
//! sit in a directory that holds other things, and a name the layout does not describe is
//! never ours to delete.

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

/// Prefix of lease file names in [`COORDINATOR_DIR`].
const LEASE_PREFIX: &str = "lease-";

/// `_coordinator/lease-<epoch as 20 digits>`: the lease of the coordinator of that epoch.
pub fn lease_path(epoch: u64) -> Result<StoragePath> {
    StoragePath::parse(&format!("{COORDINATOR_DIR}/{LEASE_PREFIX}{epoch:020}"))
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

/// Whether `path` is one garbage collection may delete: a file the layout names under a
/// checkpoint directory (`_metadata`, the no-claim marker, `<instance id>/<file>`) or under
/// `shared/<instance id>/`, or a temporary of one of those (`<name>.tmp-<16 hex>`, left by an
/// interrupted write). Anything else (`shared/notes.txt`, `chk-0000000001/x/y/z`, a directory
/// whose name only looks like a checkpoint's) is not the root's, and is never deleted.
pub fn is_collectable(path: &StoragePath) -> bool {
    let parts: Vec<&str> = path.components().collect();
    let Some(&last) = parts.last() else {
        return false;
    };
    match parts.as_slice() {
        [top, _] if parse_checkpoint_dir(top).is_some() => {
            // A temporary here is an interrupted `_metadata` or marker write (its name may have
            // been shortened, so only its shape is checked).
            [METADATA_FILE, NO_CLAIM_MARKER, DISCARDED_METADATA_FILE].contains(&last)
                || is_temporary_name(last)
        }
        [top, instance, _] => {
            (parse_checkpoint_dir(top).is_some() || *top == SHARED_DIR)
                && is_instance_dir(instance)
                && !last.is_empty()
        }
        _ => false,
    }
}

/// Name of a checkpoint's `_metadata` once `statectl discard` set it aside: the checkpoint no
/// longer exists for restores, retention or garbage collection, and the file stays readable
/// for people until garbage collection deletes the directory.
pub const DISCARDED_METADATA_FILE: &str = "_metadata.discarded";

/// The marker between a file name and the random suffix of its temporary sibling.
pub(crate) const TEMP_MARKER: &str = ".tmp-";

/// Number of hex digits in a temporary suffix.
pub(crate) const TEMP_SUFFIX_DIGITS: usize = 16;

/// Whether a file name has the shape of an atomic write's temporary:
/// `<something>.tmp-<16 lowercase hex digits>`.
pub fn is_temporary_name(name: &str) -> bool {
    match name.rsplit_once(TEMP_MARKER) {
        Some((base, suffix)) => {
            !base.is_empty()
                && suffix.len() == TEMP_SUFFIX_DIGITS
                && suffix
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        None => false,
    }
}

/// Whether `name` is an instance id as paths spell it (32 lower-case hex digits).
fn is_instance_dir(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
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
    fn only_layout_paths_are_collectable() {
        let hex = "0123456789abcdef0123456789abcdef";
        let yes = [
            "chk-0000000003/_metadata".to_string(),
            "chk-0000000003/_no-claim".to_string(),
            "chk-0000000003/_metadata.discarded".to_string(),
            "chk-0000000003/_metadata.tmp-0123456789abcdef".to_string(),
            format!("chk-0000000003/{hex}/state.sbdf"),
            format!("shared/{hex}/000012.sst"),
            format!("shared/{hex}/000012.sst.tmp-0123456789abcdef"),
        ];
        for p in yes {
            assert!(is_collectable(&StoragePath::parse(&p).unwrap()), "{p}");
        }
        let no = [
            "shared/team-docs/plan.txt".to_string(),
            "shared/notes.txt".to_string(),
            format!("shared/{hex}/sub/file"),
            "chk-0000000003/notes.txt".to_string(),
            "chk-3/_metadata".to_string(),
            format!("chk-0000000003/{}/x", &hex[..31]),
            format!("chk-0000000003/{}/x", hex.to_uppercase()),
            "savepoints/sp/_metadata".to_string(),
            "_coordinator/epoch-00000000000000000001".to_string(),
        ];
        for p in no {
            assert!(!is_collectable(&StoragePath::parse(&p).unwrap()), "{p}");
        }
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
