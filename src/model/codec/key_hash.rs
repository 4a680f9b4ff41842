//! The key-group hash of a key, computed straight from its serde representation.
//!
//! Every state access hashes its key to find the key group, so this is the hottest code in the
//! crate. Going through bincode's encoder costs about 90 instructions for an `i64` (its
//! `Result`s carry a large error type through every byte written); this serializer produces
//! exactly the bytes of bincode 2's `standard()` configuration (little-endian, variable-length
//! integers) and feeds them to [`Murmur3Stream`] without materialising them, in about 20.
//! A unit test compares it with bincode for every shape serde has. Anything it does not handle
//! the way bincode does (a sequence of unknown length, `collect_str`) returns [`Unsupported`],
//! and the caller falls back to encoding with bincode.

use serde::ser::{
    Serialize, SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant, SerializeTuple,
    SerializeTupleStruct, SerializeTupleVariant, Serializer,
};

use crate::model::key_group::Murmur3Stream;

/// The value has a shape this serializer leaves to bincode.
#[derive(Debug)]
pub(crate) struct Unsupported;

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("left to the bincode encoder")
    }
}

impl std::error::Error for Unsupported {}

impl serde::ser::Error for Unsupported {
    fn custom<T: std::fmt::Display>(_msg: T) -> Self {
        Unsupported
    }
}

/// Hashes the bincode `standard()` encoding of what is serialized into it.
pub(crate) struct KeyHasher<'a>(pub(crate) &'a mut Murmur3Stream);

// bincode's variable-length integer markers.
const SINGLE_BYTE_MAX: u8 = 250;
const U16_BYTE: u8 = 251;
const U32_BYTE: u8 = 252;
const U64_BYTE: u8 = 253;
const U128_BYTE: u8 = 254;

impl KeyHasher<'_> {
    #[inline]
    fn varint(&mut self, v: u64) {
        if v <= u64::from(SINGLE_BYTE_MAX) {
            self.0.write(&[v as u8]);
        } else if v <= u64::from(u16::MAX) {
            self.0.write(&[U16_BYTE]);
            self.0.write(&(v as u16).to_le_bytes());
        } else if v <= u64::from(u32::MAX) {
            self.0.write(&[U32_BYTE]);
            self.0.write(&(v as u32).to_le_bytes());
        } else {
            self.0.write(&[U64_BYTE]);
            self.0.write(&v.to_le_bytes());
        }
    }

    #[inline]
    fn varint128(&mut self, v: u128) {
        match u64::try_from(v) {
            Ok(v) => self.varint(v),
            Err(_) => {
                self.0.write(&[U128_BYTE]);
                self.0.write(&v.to_le_bytes());
            }
        }
    }

    #[inline]
    fn zigzag(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }

    #[inline]
    fn bytes(&mut self, v: &[u8]) {
        self.varint(v.len() as u64);
        self.0.write(v);
    }
}

impl<'b> Serializer for &mut KeyHasher<'b> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<(), Unsupported> {
        self.0.write(&[u8::from(v)]);
        Ok(())
    }
    #[inline]
    fn serialize_i8(self, v: i8) -> Result<(), Unsupported> {
        self.0.write(&[v as u8]);
        Ok(())
    }
    #[inline]
    fn serialize_i16(self, v: i16) -> Result<(), Unsupported> {
        self.zigzag(i64::from(v));
        Ok(())
    }
    #[inline]
    fn serialize_i32(self, v: i32) -> Result<(), Unsupported> {
        self.zigzag(i64::from(v));
        Ok(())
    }
    #[inline]
    fn serialize_i64(self, v: i64) -> Result<(), Unsupported> {
        self.zigzag(v);
        Ok(())
    }
    #[inline]
    fn serialize_i128(self, v: i128) -> Result<(), Unsupported> {
        self.varint128(((v << 1) ^ (v >> 127)) as u128);
        Ok(())
    }
    #[inline]
    fn serialize_u8(self, v: u8) -> Result<(), Unsupported> {
        self.0.write(&[v]);
        Ok(())
    }
    #[inline]
    fn serialize_u16(self, v: u16) -> Result<(), Unsupported> {
        self.varint(u64::from(v));
        Ok(())
    }
    #[inline]
    fn serialize_u32(self, v: u32) -> Result<(), Unsupported> {
        self.varint(u64::from(v));
        Ok(())
    }
    #[inline]
    fn serialize_u64(self, v: u64) -> Result<(), Unsupported> {
        self.varint(v);
        Ok(())
    }
    #[inline]
    fn serialize_u128(self, v: u128) -> Result<(), Unsupported> {
        self.varint128(v);
        Ok(())
    }
    #[inline]
    fn serialize_f32(self, v: f32) -> Result<(), Unsupported> {
        self.0.write(&v.to_le_bytes());
        Ok(())
    }
    #[inline]
    fn serialize_f64(self, v: f64) -> Result<(), Unsupported> {
        self.0.write(&v.to_le_bytes());
        Ok(())
    }
    #[inline]
    fn serialize_char(self, v: char) -> Result<(), Unsupported> {
        self.0.write(v.encode_utf8(&mut [0; 4]).as_bytes());
        Ok(())
    }
    #[inline]
    fn serialize_str(self, v: &str) -> Result<(), Unsupported> {
        self.bytes(v.as_bytes());
        Ok(())
    }
    #[inline]
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Unsupported> {
        self.bytes(v);
        Ok(())
    }
    #[inline]
    fn serialize_none(self) -> Result<(), Unsupported> {
        self.0.write(&[0]);
        Ok(())
    }
    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Unsupported> {
        self.0.write(&[1]);
        value.serialize(self)
    }
    #[inline]
    fn serialize_unit(self) -> Result<(), Unsupported> {
        Ok(())
    }
    #[inline]
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Unsupported> {
        Ok(())
    }
    #[inline]
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        variant_index: u32,
        _variant: &'static str,
    ) -> Result<(), Unsupported> {
        self.varint(u64::from(variant_index));
        Ok(())
    }
    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        value.serialize(self)
    }
    #[inline]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        variant_index: u32,
        _variant: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        self.varint(u64::from(variant_index));
        value.serialize(self)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, Unsupported> {
        // bincode refuses a sequence without a length; the fallback reports its error.
        self.varint(len.ok_or(Unsupported)? as u64);
        Ok(self)
    }
    #[inline]
    fn serialize_tuple(self, _len: usize) -> Result<Self, Unsupported> {
        Ok(self)
    }
    #[inline]
    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Self, Unsupported> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        variant_index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self, Unsupported> {
        self.varint(u64::from(variant_index));
        Ok(self)
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Self, Unsupported> {
        self.varint(len.ok_or(Unsupported)? as u64);
        Ok(self)
    }
    #[inline]
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self, Unsupported> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        variant_index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self, Unsupported> {
        self.varint(u64::from(variant_index));
        Ok(self)
    }
    fn collect_str<T: std::fmt::Display + ?Sized>(self, _value: &T) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn is_human_readable(&self) -> bool {
        // As bincode: types with two representations choose the compact one.
        false
    }
}

/// Compound values are their elements in order, as in bincode.
macro_rules! elements {
    ($trait:ident, $method:ident $(, $key:ident)?) => {
        impl<'b> $trait for &mut KeyHasher<'b> {
            type Ok = ();
            type Error = Unsupported;
            #[inline]
            fn $method<T: Serialize + ?Sized>(
                &mut self,
                $($key: &'static str,)?
                value: &T,
            ) -> Result<(), Unsupported> {
                value.serialize(&mut **self)
            }
            #[inline]
            fn end(self) -> Result<(), Unsupported> {
                Ok(())
            }
        }
    };
}

elements!(SerializeSeq, serialize_element);
elements!(SerializeTuple, serialize_element);
elements!(SerializeTupleStruct, serialize_field);
elements!(SerializeTupleVariant, serialize_field);
elements!(SerializeStruct, serialize_field, _key);
elements!(SerializeStructVariant, serialize_field, _key);

impl<'b> SerializeMap for &mut KeyHasher<'b> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Unsupported> {
        key.serialize(&mut **self)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), Unsupported> {
        Ok(())
    }
}
