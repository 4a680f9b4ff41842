//! The row view of state: how typed state becomes bytes and back.
//!
//! Every state is, canonically, a sorted sequence of rows per key group:
//! `(key bytes ++ namespace bytes [++ user key bytes], value bytes)`. The RocksDB backend stores
//! exactly these rows; the heap backend produces them when it snapshots and consumes them when it
//! restores; savepoints write them. Value bytes per kind:
//!
//! - value, reducing, aggregating: the codec's encoding of the value (or accumulator);
//! - list: the elements in order, each as `u32` little-endian length followed by its encoding
//!   (so appending is byte concatenation, which is what the RocksDB merge operator does);
//! - map: one row per user key, the value is the encoding of the map value.

use std::hash::Hash;

use crate::model::codec::{Codec, CodecError};
use crate::model::error::{Error, Result};
use crate::model::state::{StateKey, StateValue};

/// The map type the heap backend keeps (a fast, DoS-resistant hasher).
pub type FastMap<K, V> = hashbrown::HashMap<K, V>;

/// How one kind of state is held in memory by the heap backend and turned into rows.
pub trait StoredState: Clone + Send + Sync + 'static {
    /// Calls `emit(user_key_bytes, value_bytes)` for each row of this (key, namespace); the user
    /// key bytes are empty except for maps. Rows need not come in order.
    ///
    /// # Errors
    /// A value that cannot be encoded, or whatever `emit` returns.
    fn encode_rows<C: Codec>(
        &self,
        codec: &C,
        state: &str,
        emit: &mut dyn FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()>;

    /// Folds one row into `slot` (which holds what earlier rows of the same (key, namespace)
    /// built).
    ///
    /// # Errors
    /// Bytes that do not decode as the state's types.
    fn decode_row<C: Codec>(
        slot: &mut Option<Self>,
        codec: &C,
        user_key: &[u8],
        value: &[u8],
    ) -> Result<(), CodecError>;

    /// Number of rows this entry produces.
    fn row_count(&self) -> usize;
}

/// A single stored value (value, reducing and aggregating states).
#[derive(Debug, Clone, PartialEq)]
pub struct Cell<V>(pub V);

/// The elements of a list state entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ListCell<T>(pub Vec<T>);

/// The user map of a map state entry.
#[derive(Debug, Clone)]
pub struct MapCell<UK, UV>(pub FastMap<UK, UV>);

fn encode_err(state: &str, e: CodecError) -> Error {
    Error::Encode {
        state: state.to_owned(),
        message: e.0,
    }
}

impl<V: StateValue> StoredState for Cell<V> {
    fn encode_rows<C: Codec>(
        &self,
        codec: &C,
        state: &str,
        emit: &mut dyn FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let bytes = codec.encode(&self.0).map_err(|e| encode_err(state, e))?;
        emit(&[], &bytes)
    }

    fn decode_row<C: Codec>(
        slot: &mut Option<Self>,
        codec: &C,
        _user_key: &[u8],
        value: &[u8],
    ) -> Result<(), CodecError> {
        *slot = Some(Cell(codec.decode(value)?));
        Ok(())
    }

    fn row_count(&self) -> usize {
        1
    }
}

impl<T: StateValue> StoredState for ListCell<T> {
    fn encode_rows<C: Codec>(
        &self,
        codec: &C,
        state: &str,
        emit: &mut dyn FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut bytes = Vec::new();
        for element in &self.0 {
            encode_list_element(codec, element, &mut bytes).map_err(|e| encode_err(state, e))?;
        }
        emit(&[], &bytes)
    }

    fn decode_row<C: Codec>(
        slot: &mut Option<Self>,
        codec: &C,
        _user_key: &[u8],
        value: &[u8],
    ) -> Result<(), CodecError> {
        *slot = Some(ListCell(decode_list(codec, value)?));
        Ok(())
    }

    fn row_count(&self) -> usize {
        1
    }
}

impl<UK: StateKey, UV: StateValue> StoredState for MapCell<UK, UV> {
    fn encode_rows<C: Codec>(
        &self,
        codec: &C,
        state: &str,
        emit: &mut dyn FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut uk_bytes = Vec::new();
        let mut value_bytes = Vec::new();
        for (uk, uv) in &self.0 {
            uk_bytes.clear();
            value_bytes.clear();
            codec
                .encode_into(uk, &mut uk_bytes)
                .map_err(|e| encode_err(state, e))?;
            codec
                .encode_into(uv, &mut value_bytes)
                .map_err(|e| encode_err(state, e))?;
            emit(&uk_bytes, &value_bytes)?;
        }
        Ok(())
    }

    fn decode_row<C: Codec>(
        slot: &mut Option<Self>,
        codec: &C,
        user_key: &[u8],
        value: &[u8],
    ) -> Result<(), CodecError> {
        let uk: UK = codec.decode(user_key)?;
        let uv: UV = codec.decode(value)?;
        slot.get_or_insert_with(|| MapCell(FastMap::new()))
            .0
            .insert(uk, uv);
        Ok(())
    }

    fn row_count(&self) -> usize {
        self.0.len()
    }
}

/// Appends one list element (length-prefixed) to `out`.
pub fn encode_list_element<C: Codec, T: serde::Serialize>(
    codec: &C,
    element: &T,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    codec.encode_into(element, out)?;
    let len = u32::try_from(out.len() - at - 4)
        .map_err(|_| CodecError("list element larger than 4 GiB".into()))?;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Splits list value bytes into the element encodings, checking every length.
pub fn split_list(bytes: &[u8]) -> impl Iterator<Item = Result<&[u8], CodecError>> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() < 4 {
            rest = &[];
            return Some(Err(CodecError("truncated list element length".into())));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > rest.len() - 4 {
            rest = &[];
            return Some(Err(CodecError(format!(
                "list element of {len} bytes exceeds the {} bytes left",
                bytes.len()
            ))));
        }
        let element = &rest[4..4 + len];
        rest = &rest[4 + len..];
        Some(Ok(element))
    })
}

/// Decodes list value bytes into elements.
pub fn decode_list<C: Codec, T: serde::de::DeserializeOwned>(
    codec: &C,
    bytes: &[u8],
) -> Result<Vec<T>, CodecError> {
    split_list(bytes)
        .map(|element| codec.decode(element?))
        .collect()
}

/// A borrowed `(key, namespace)` that looks up a `(K, N)` map entry without cloning either.
pub(crate) struct KeyNs<'a, K, N>(pub &'a K, pub &'a N);

impl<K: Hash, N: Hash> Hash for KeyNs<'_, K, N> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Must hash exactly like the tuple `(K, N)`: its Hash impl hashes the fields in order.
        self.0.hash(state);
        self.1.hash(state);
    }
}

impl<K: Eq, N: Eq> hashbrown::Equivalent<(K, N)> for KeyNs<'_, K, N> {
    fn equivalent(&self, key: &(K, N)) -> bool {
        *self.0 == key.0 && *self.1 == key.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::codec::BincodeCodec;

    #[test]
    fn list_bytes_concatenate() {
        let c = BincodeCodec;
        let mut a = Vec::new();
        encode_list_element(&c, &1u32, &mut a).unwrap();
        let mut b = Vec::new();
        encode_list_element(&c, &2u32, &mut b).unwrap();
        encode_list_element(&c, &3u32, &mut b).unwrap();
        a.extend_from_slice(&b);
        assert_eq!(decode_list::<_, u32>(&c, &a).unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn truncated_list_is_an_error() {
        let c = BincodeCodec;
        let mut a = Vec::new();
        encode_list_element(&c, &"hello".to_string(), &mut a).unwrap();
        for cut in 1..a.len() {
            assert!(
                decode_list::<_, String>(&c, &a[..cut]).is_err(),
                "cut {cut}"
            );
        }
    }
}
