//! A stored value with the timestamp its time to live counts from.

use serde::de::{Deserialize, DeserializeOwned, Deserializer};
use serde::ser::{Serialize, Serializer};

/// What a state with a time to live stores in place of each value, list element or map value:
/// the value and the time (milliseconds, on the state's clock) it was last written or, with
/// [`crate::state::ttl::TtlUpdate::OnReadAndWrite`], read.
///
/// Encoded as the timestamp's 8 bytes, little-endian, followed by the value's own encoding
/// (`docs/savepoint-format.md` §3): fixed-width so that RocksDB's compaction filter and the
/// snapshot writers read it without decoding the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TtlValue<V> {
    /// When the value was last written (or read), on the state's clock.
    pub timestamp: u64,
    /// The value.
    pub value: V,
}

impl<V: Serialize> Serialize for TtlValue<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // An array of 8 bytes is 8 raw bytes in the codec (no length, no varint).
        (self.timestamp.to_le_bytes(), &self.value).serialize(serializer)
    }
}

impl<'de, V: DeserializeOwned> Deserialize<'de> for TtlValue<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (timestamp, value): ([u8; 8], V) = Deserialize::deserialize(deserializer)?;
        Ok(Self {
            timestamp: u64::from_le_bytes(timestamp),
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::codec::{Codec, DefaultCodec};

    #[test]
    fn the_timestamp_is_eight_little_endian_bytes_before_the_value() {
        let codec = DefaultCodec::default();
        let stamped = TtlValue {
            timestamp: 0x0102_0304_0506_0708,
            value: 300u64,
        };
        let bytes = codec.encode(&stamped).unwrap();
        let mut expected = 0x0102_0304_0506_0708u64.to_le_bytes().to_vec();
        expected.extend(codec.encode(&300u64).unwrap());
        assert_eq!(bytes, expected);
        assert_eq!(codec.decode::<TtlValue<u64>>(&bytes).unwrap(), stamped);
    }
}
