//! Serialization of keys, namespaces and values.
//!
//! All bytes the crate stores or hashes go through one [`Codec`]. A codec has a [`CodecId`]
//! recorded in every format the crate writes, so that a reader knows which codec produced the
//! bytes and a second codec can be added without ambiguity.
//!
//! # Contract
//! Encodings must be **deterministic** (the same value always yields the same bytes: key groups
//! and the canonical savepoint depend on it) and **self-delimiting** (no encoding of a type is a
//! proper prefix of another encoding of the same type). The second property is what lets the
//! RocksDB layout concatenate key, namespace and user key without length prefixes while keeping
//! every (key, namespace) a contiguous key range, and lets [`Codec::decode_prefix`] split them.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::model::key_group::Murmur3Stream;
use key_hash::KeyHasher;

mod decode;
mod key_hash;

/// Identifies the codec that wrote a file. Stored as one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CodecId(pub u8);

impl CodecId {
    /// bincode 2.x, `standard()` configuration (little-endian, variable-length integers).
    pub const BINCODE_STANDARD: CodecId = CodecId(1);

    /// A human-readable name of the codec, or `None` for an unknown id.
    pub fn name(self) -> Option<&'static str> {
        match self {
            CodecId::BINCODE_STANDARD => Some("bincode2-standard"),
            _ => None,
        }
    }
}

impl fmt::Display for CodecId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "unknown codec {}", self.0),
        }
    }
}

/// A codec failure, with the codec's own message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError(pub String);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodecError {}

/// Serializes and deserializes serde types. See the module docs for the contract.
pub trait Codec: Send + Sync + 'static {
    /// The id recorded in the formats this codec writes.
    const ID: CodecId;

    /// Appends the encoding of `value` to `out`.
    ///
    /// # Errors
    /// When the value cannot be serialized (e.g. a serde impl that fails).
    fn encode_into<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError>;

    /// Decodes one value from the front of `bytes`; returns it and the number of bytes read.
    ///
    /// # Errors
    /// When the bytes are not a valid encoding of `T`. Never panics on any input.
    fn decode_prefix<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<(T, usize), CodecError>;

    /// Calls `f` with the encoding of `value`, avoiding a heap allocation where the codec can.
    ///
    /// # Errors
    /// As [`Codec::encode_into`].
    fn with_encoded<T: Serialize + ?Sized, R>(
        &self,
        value: &T,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, CodecError> {
        let mut buf = Vec::new();
        self.encode_into(value, &mut buf)?;
        Ok(f(&buf))
    }

    /// Feeds the encoding of `value` to `hasher`: the key-group hash of a key without
    /// materialising its bytes. The default encodes to a buffer first; codecs that can write
    /// to the hasher directly should.
    ///
    /// # Errors
    /// As [`Codec::encode_into`].
    fn hash_encoded<T: Serialize + ?Sized>(
        &self,
        value: &T,
        hasher: &mut Murmur3Stream,
    ) -> Result<(), CodecError> {
        self.with_encoded(value, |bytes| hasher.write(bytes))
    }

    /// The encoding of `value` as a new vector.
    ///
    /// # Errors
    /// As [`Codec::encode_into`].
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::new();
        self.encode_into(value, &mut out)?;
        Ok(out)
    }

    /// Decodes exactly one value spanning all of `bytes`.
    ///
    /// # Errors
    /// When the bytes are not a valid encoding of `T`, or bytes are left over.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let (value, read) = self.decode_prefix(bytes)?;
        if read != bytes.len() {
            return Err(CodecError(format!(
                "{} trailing bytes after the value",
                bytes.len() - read
            )));
        }
        Ok(value)
    }
}

/// The default codec: bincode 2.x with its `standard()` configuration.
///
/// Its wire format is frozen and specified by bincode (summarised in `docs/key-groups.md` §1
/// and in the `decode` module). Values are encoded by bincode and decoded by this crate's own
/// reader of the same format, which checks every declared length against the bytes present
/// before it allocates: a corrupt length prefix makes decoding fail, never allocate more than
/// the input justifies (bincode's decoder would allocate up to its fixed limit first).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BincodeCodec;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
}

impl Codec for BincodeCodec {
    const ID: CodecId = CodecId::BINCODE_STANDARD;

    fn encode_into<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        bincode::serde::encode_into_std_write(value, out, bincode_config())
            .map(|_| ())
            .map_err(|e| CodecError(e.to_string()))
    }

    fn decode_prefix<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<(T, usize), CodecError> {
        decode::decode_prefix(bytes)
    }

    fn with_encoded<T: Serialize + ?Sized, R>(
        &self,
        value: &T,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, CodecError> {
        // Keys are hashed on every state access; most fit in a small stack buffer.
        let mut buf = [0u8; 64];
        match bincode::serde::encode_into_slice(value, &mut buf, bincode_config()) {
            Ok(n) => Ok(f(&buf[..n])),
            Err(bincode::error::EncodeError::UnexpectedEnd) => {
                let mut out = Vec::new();
                self.encode_into(value, &mut out)?;
                Ok(f(&out))
            }
            Err(e) => Err(CodecError(e.to_string())),
        }
    }

    #[inline]
    fn hash_encoded<T: Serialize + ?Sized>(
        &self,
        value: &T,
        hasher: &mut Murmur3Stream,
    ) -> Result<(), CodecError> {
        let mut streamed = *hasher;
        if value.serialize(&mut KeyHasher(&mut streamed)).is_ok() {
            *hasher = streamed;
            return Ok(());
        }
        // A shape the streaming hasher leaves to bincode (which may also refuse it).
        self.with_encoded(value, |bytes| hasher.write(bytes))
    }
}

/// The codec the backends use.
pub type DefaultCodec = BincodeCodec;

#[cfg(test)]
mod tests {
    use super::*;

    /// The streamed key-group hash must equal the hash of the encoded bytes for every shape
    /// serde can produce, or keys would move between key groups.
    fn assert_hash_matches<T: Serialize>(value: &T) {
        let c = BincodeCodec;
        let bytes = c.encode(value).unwrap();
        let mut streamed = crate::model::key_group::Murmur3Stream::new();
        c.hash_encoded(value, &mut streamed).unwrap();
        assert_eq!(
            streamed.finish(),
            crate::model::key_group::murmur3_32(&bytes, 0),
            "{bytes:?}"
        );
    }

    #[derive(Serialize)]
    enum Shape {
        Unit,
        Tuple(i8, String),
        Struct { a: Option<u128>, b: Vec<f64> },
        Newtype(char),
    }

    #[derive(Serialize)]
    struct Wrapper(u16);

    #[derive(Serialize)]
    struct Marker;

    #[derive(Serialize)]
    struct Pair(i128, u32);

    /// A value serialized with `serialize_bytes` (what `serde_bytes` does).
    struct BytesLike<'a>(&'a [u8]);
    impl Serialize for BytesLike<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }
    fn serde_bytes_like(b: &[u8]) -> BytesLike<'_> {
        BytesLike(b)
    }

    #[test]
    fn varint_boundaries_hash_as_encoded() {
        for v in [
            0u64,
            250,
            251,
            252,
            65535,
            65536,
            u64::from(u32::MAX),
            u64::from(u32::MAX) + 1,
            u64::MAX,
        ] {
            assert_hash_matches(&v);
            assert_hash_matches(&(v as i64));
            assert_hash_matches(&u128::from(v));
            assert_hash_matches(&(u128::from(v) << 64));
            assert_hash_matches(&(-(v as i128)));
        }
    }

    proptest::proptest! {
        #[test]
        fn streamed_key_hash_equals_hash_of_encoding(
            i in proptest::num::i64::ANY,
            u in proptest::num::u128::ANY,
            s in ".{0,40}",
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..70),
            f in proptest::num::f64::ANY,
            flag in proptest::bool::ANY,
            c in proptest::char::any(),
        ) {
            assert_hash_matches(&i);
            assert_hash_matches(&(i as i32, u, flag));
            assert_hash_matches(&s);
            assert_hash_matches(&(s.clone(), i));
            assert_hash_matches(&bytes);
            assert_hash_matches(&Shape::Unit);
            assert_hash_matches(&Shape::Tuple(i as i8, s.clone()));
            assert_hash_matches(&Shape::Struct { a: Some(u).filter(|_| flag), b: vec![f; 3] });
            assert_hash_matches(&Shape::Newtype(c));
            assert_hash_matches(&(Wrapper(i as u16), Marker, Pair(i128::from(i) * i128::from(i), i as u32)));
            assert_hash_matches(&(u as i128, i as i16, i as u16, i as u8, f as f32, c, ()));
            assert_hash_matches(&std::collections::BTreeMap::from([(i, s.clone()), (i ^ 1, String::new())]));
            assert_hash_matches(&serde_bytes_like(&bytes));
        }
    }

    #[test]
    fn bincode_round_trips_and_rejects_trailing_bytes() {
        let c = BincodeCodec;
        let bytes = c.encode(&("alice".to_string(), 7u64)).unwrap();
        let back: (String, u64) = c.decode(&bytes).unwrap();
        assert_eq!(back, ("alice".to_string(), 7));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(c.decode::<(String, u64)>(&longer).is_err());
    }

    #[test]
    fn stack_and_heap_encodings_agree() {
        let c = BincodeCodec;
        let long = "x".repeat(200);
        for v in ["short".to_string(), long] {
            let direct = c.encode(&v).unwrap();
            let via = c.with_encoded(&v, |b| b.to_vec()).unwrap();
            assert_eq!(direct, via);
        }
    }

    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    enum Owned {
        Unit,
        Tuple(i8, String),
        Struct { a: Option<u128>, b: Vec<i64> },
        Newtype(char),
        Map(std::collections::BTreeMap<u16, Vec<u8>>),
    }

    /// This crate's decoder against bincode's on the same bytes: the same value and length, or
    /// both refuse.
    fn same_as_bincode<T>(bytes: &[u8])
    where
        T: DeserializeOwned + PartialEq + fmt::Debug,
    {
        let ours = BincodeCodec.decode_prefix::<T>(bytes);
        // bincode without a limit would try to allocate any length a random prefix declares;
        // 4 KiB is above anything 48 bytes can hold (its claims count in-memory sizes).
        let theirs: Result<(T, usize), _> = bincode::serde::decode_from_slice(
            bytes,
            bincode::config::standard().with_limit::<4096>(),
        );
        match (ours, theirs) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{bytes:?}"),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("{bytes:?}: ours {a:?}, bincode {b:?}"),
        }
    }

    proptest::proptest! {
        #[test]
        fn decoder_agrees_with_bincode_on_any_bytes(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..48),
        ) {
            same_as_bincode::<u16>(&bytes);
            same_as_bincode::<u32>(&bytes);
            same_as_bincode::<u64>(&bytes);
            same_as_bincode::<u128>(&bytes);
            same_as_bincode::<(i8, i16, i32)>(&bytes);
            same_as_bincode::<(i64, i128)>(&bytes);
            same_as_bincode::<(bool, char, u8)>(&bytes);
            same_as_bincode::<String>(&bytes);
            same_as_bincode::<Vec<u8>>(&bytes);
            same_as_bincode::<Vec<u32>>(&bytes);
            same_as_bincode::<Option<String>>(&bytes);
            same_as_bincode::<(String, Vec<String>)>(&bytes);
            same_as_bincode::<std::collections::BTreeMap<u8, String>>(&bytes);
            same_as_bincode::<Owned>(&bytes);
            same_as_bincode::<Vec<Owned>>(&bytes);
            same_as_bincode::<(f32, f64)>(&bytes.iter().map(|b| b & 0x3f).collect::<Vec<_>>());
        }

        #[test]
        fn decoder_reads_what_bincode_writes(
            i in proptest::num::i64::ANY,
            u in proptest::num::u128::ANY,
            s in ".{0,40}",
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..70),
            flag in proptest::bool::ANY,
            c in proptest::char::any(),
        ) {
            let c2 = BincodeCodec;
            let values = vec![
                Owned::Unit,
                Owned::Tuple(i as i8, s.clone()),
                Owned::Struct { a: Some(u).filter(|_| flag), b: vec![i, i / 3, i.wrapping_neg()] },
                Owned::Newtype(c),
                Owned::Map(std::collections::BTreeMap::from([(i as u16, bytes.clone())])),
            ];
            let encoded = c2.encode(&values).unwrap();
            proptest::prop_assert_eq!(c2.decode::<Vec<Owned>>(&encoded).unwrap(), values);
            let tuple = (i as i16, i as i32, u as i128, u as u64, u as u32, u as u16, s.clone());
            let encoded = c2.encode(&tuple).unwrap();
            proptest::prop_assert_eq!(c2.decode::<(i16, i32, i128, u64, u32, u16, String)>(&encoded).unwrap(), tuple);
        }
    }

    proptest::proptest! {
        #[test]
        fn decoder_agrees_with_bincode_on_damaged_encodings(
            i in proptest::num::i64::ANY,
            s in ".{0,12}",
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..12),
            at in proptest::num::usize::ANY,
            xor in 1u8..,
            cut in proptest::num::usize::ANY,
        ) {
            let values = vec![
                Owned::Tuple(i as i8, s.clone()),
                Owned::Struct { a: Some(i as u128), b: vec![i, i.wrapping_neg()] },
                Owned::Map(std::collections::BTreeMap::from([(i as u16, bytes)])),
                Owned::Newtype(s.chars().next().unwrap_or('x')),
            ];
            let mut encoded = BincodeCodec.encode(&values).unwrap();
            let at = at % encoded.len();
            encoded[at] ^= xor;
            same_as_bincode::<Vec<Owned>>(&encoded);
            same_as_bincode::<Vec<Owned>>(&encoded[..cut % (encoded.len() + 1)]);
        }
    }

    #[test]
    fn declared_lengths_beyond_the_input_are_refused() {
        let c = BincodeCodec;
        // Varint u32 discriminant, then 0x3fffffff: a string or byte buffer of about 1 GiB,
        // in 5 bytes.
        let huge = [252u8, 0xff, 0xff, 0xff, 0x3f];
        for err in [
            c.decode::<String>(&huge).map(drop),
            c.decode::<Vec<u8>>(&huge).map(drop),
            c.decode::<Vec<u64>>(&huge).map(drop),
            c.decode::<std::collections::HashMap<u64, u64>>(&huge)
                .map(drop),
        ] {
            assert!(err.is_err());
        }
        let message = c.decode::<String>(&huge).unwrap_err().0;
        assert!(
            message.contains("needs 1073741823 bytes, 0 left"),
            "{message}"
        );
    }

    /// Items of zero-sized types take no bytes: a corrupt length must not make decoding loop
    /// 2^64 times. Lengths such a value can really have still decode.
    #[test]
    fn zero_sized_items_are_bounded() {
        let c = BincodeCodec;
        // Varint u64 marker, then u64::MAX: a `Vec<()>` of 2^64 - 1 elements, in 9 bytes.
        let mut huge = vec![253u8];
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        let message = c.decode::<Vec<()>>(&huge).unwrap_err().0;
        assert!(message.contains("items that take no bytes"), "{message}");
        assert!(
            c.decode::<std::collections::BTreeMap<(), ()>>(&huge)
                .is_err()
        );
        let thousand = c.encode(&vec![(); 1000]).unwrap();
        assert_eq!(c.decode::<Vec<()>>(&thousand).unwrap().len(), 1000);
    }

    #[test]
    fn corrupt_length_prefix_does_not_allocate_unbounded() {
        let c = BincodeCodec;
        // A u64 varint length of 2^62 followed by nothing.
        let bytes = [253u8, 0, 0, 0, 0, 0, 0, 0, 0x40];
        assert!(c.decode::<Vec<u64>>(&bytes).is_err());
        assert!(c.decode::<String>(&bytes).is_err());
    }
}
