//! The RocksDB row-key layout (specified byte by byte in `docs/rocksdb-layout.md`).
//!
//! ```text
//! row key = key group (u16, big-endian) ++ codec(key) ++ codec(namespace) [++ codec(user key)]
//! ```
//!
//! The key group is the one big-endian field of the crate: big-endian makes RocksDB's bytewise
//! order sort rows by key group, so a key group is one contiguous key range (what snapshots,
//! savepoints and rescaling iterate and range-delete). Because codec encodings are
//! self-delimiting, the rows of one (key, namespace) and of one map are contiguous too.

use crate::model::key_group::KeyGroup;

/// Bytes of the key-group prefix.
pub(crate) const KEY_GROUP_PREFIX_LEN: usize = 2;

/// The key-group prefix of a row key.
pub(crate) fn key_group_prefix(group: KeyGroup) -> [u8; KEY_GROUP_PREFIX_LEN] {
    group.to_be_bytes()
}

/// The row-key range `[start, end)` holding key groups `[first, end_group)`.
pub(crate) fn key_group_span(first: u32, end_group: u32) -> (Vec<u8>, Vec<u8>) {
    // end_group <= 32768, so it always fits the two-byte prefix.
    (
        (first as u16).to_be_bytes().to_vec(),
        (end_group as u16).to_be_bytes().to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_groups_sort_numerically() {
        let mut groups: Vec<u16> = vec![300, 2, 255, 256, 0, 32767];
        let mut prefixes: Vec<_> = groups.iter().map(|g| key_group_prefix(*g)).collect();
        groups.sort();
        prefixes.sort();
        let back: Vec<u16> = prefixes.iter().map(|p| u16::from_be_bytes(*p)).collect();
        assert_eq!(back, groups);
    }
}
