//! The list-append merge operator.
//!
//! A list value is a concatenation of length-prefixed elements (see [`crate::model::state::rows`]), so
//! appending is byte concatenation: `append` issues a merge of the new element's bytes and never
//! reads the list. The operator is associative, so RocksDB may also combine operands early.

use rocksdb::MergeOperands;

/// The name RocksDB records for the operator; a DB written with it must be opened with it.
pub(crate) const LIST_MERGE_OPERATOR: &str = "statebackend.list_append.v1";

/// Concatenates the existing value (if any) and every operand, in order.
pub(crate) fn list_append_merge(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &MergeOperands,
) -> Option<Vec<u8>> {
    let len = existing.map_or(0, <[u8]>::len) + operands.iter().map(<[u8]>::len).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    if let Some(existing) = existing {
        out.extend_from_slice(existing);
    }
    for operand in operands.iter() {
        out.extend_from_slice(operand);
    }
    Some(out)
}
