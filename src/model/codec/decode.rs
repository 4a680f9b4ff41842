//! Decoding of bincode 2 `standard()` bytes, bounded by the input.
//!
//! bincode's own decoder sizes a string or byte buffer from its length prefix before it reads
//! the bytes, and bounds that only by a fixed limit (which, since it counts in-memory sizes,
//! cannot be set to the input's length without refusing valid values). A corrupt 5-byte
//! value claiming a 1 GiB string would make it allocate 1 GiB. This deserializer reads the
//! same wire format, with every length checked against the bytes left *before* anything is
//! allocated: strings and byte buffers are borrowed from the input, or copied once they are
//! known to be there, and the size hint of a sequence or map never exceeds the bytes
//! left. So decoding allocates no more than the input justifies.
//!
//! The format (bincode 2, `config::standard()`: little-endian, variable-length integers):
//! - `u8`, `i8`: one byte. `bool`: one byte, 0 or 1. `f32`, `f64`: little-endian IEEE 754.
//! - other integers: a varint. A first byte up to 250 is the value; 251, 252, 253, 254 are
//!   followed by the value as little-endian u16, u32, u64, u128, each allowed only for types
//!   at least that wide; 255 is invalid. Signed integers are zigzag-encoded first.
//! - `char`: its UTF-8 bytes. `str`, bytes: varint u64 length, then the bytes (UTF-8 for str).
//! - `Option`: one byte, 0 (none) or 1 (some, then the value).
//! - sequences and maps: varint u64 length, then the elements (key, value, key, value, …).
//! - tuples and structs: the fields in order, no length. Unit types: nothing.
//! - enums: the variant index as varint u32, then the variant's fields.
//!
//! `deserialize_any`, identifiers and ignored values are refused, as bincode refuses them.
//! The differential test in `mod.rs` checks this decoder against bincode's.

use std::fmt;

use serde::de::{
    self, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess, VariantAccess,
    Visitor,
};

use super::CodecError;

/// Decodes one `T` from the front of `bytes`; returns it and the number of bytes read.
pub(crate) fn decode_prefix<T: de::DeserializeOwned>(
    bytes: &[u8],
) -> std::result::Result<(T, usize), CodecError> {
    let mut decoder = Decoder {
        input: bytes,
        free_items: MAX_FREE_ITEMS,
    };
    let value = T::deserialize(&mut decoder).map_err(|e| CodecError(e.0))?;
    Ok((value, bytes.len() - decoder.input.len()))
}

/// A decoding failure.
#[derive(Debug)]
struct DecodeError(String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

impl de::Error for DecodeError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        DecodeError(msg.to_string())
    }
}

type Result<T> = std::result::Result<T, DecodeError>;

/// The widest integer a varint may hold for the type being decoded.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Width {
    U16,
    U32,
    U64,
    U128,
}

/// The bytes not decoded yet.
struct Decoder<'de> {
    input: &'de [u8],
    /// How many more collection items may decode from no input bytes at all.
    free_items: u32,
}

/// Items of zero-sized types (`()`, unit structs) take no bytes, so a corrupt length prefix of
/// a `Vec<()>` could ask for 2^64 of them: no allocation, but a loop that never ends. One value
/// may hold this many such items; more is a decode error.
const MAX_FREE_ITEMS: u32 = 1 << 20;

impl<'de> Decoder<'de> {
    /// The next `n` bytes, if there are that many.
    fn take(&mut self, n: usize, what: &str) -> Result<&'de [u8]> {
        if n > self.input.len() {
            return Err(DecodeError(format!(
                "{what}: needs {n} bytes, {} left",
                self.input.len()
            )));
        }
        let (head, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn byte(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    /// A varint of a type at most `width` wide.
    fn varint(&mut self, width: Width, what: &str) -> Result<u128> {
        Ok(match self.byte(what)? {
            byte @ 0..=250 => u128::from(byte),
            251 => u128::from(u16::from_le_bytes(self.array(what)?)),
            252 if width >= Width::U32 => u128::from(u32::from_le_bytes(self.array(what)?)),
            253 if width >= Width::U64 => u128::from(u64::from_le_bytes(self.array(what)?)),
            254 if width >= Width::U128 => u128::from_le_bytes(self.array(what)?),
            d => {
                return Err(DecodeError(format!(
                    "{what}: invalid varint discriminant {d}"
                )));
            }
        })
    }

    /// A zigzag-encoded varint.
    fn signed(&mut self, width: Width, what: &str) -> Result<i128> {
        let n = self.varint(width, what)?;
        let half = (n / 2) as i128;
        Ok(if n % 2 == 0 { half } else { -half - 1 })
    }

    /// A length prefix (varint u64, which must fit a `usize`).
    fn len(&mut self, what: &str) -> Result<usize> {
        let n = self.varint(Width::U64, what)?;
        usize::try_from(n).map_err(|_| DecodeError(format!("{what}: length {n} is too large")))
    }

    /// A length-prefixed byte string, borrowed from the input.
    fn bytes(&mut self, what: &str) -> Result<&'de [u8]> {
        let len = self.len(what)?;
        self.take(len, what)
    }

    fn str(&mut self) -> Result<&'de str> {
        let bytes = self.bytes("string")?;
        std::str::from_utf8(bytes).map_err(|e| DecodeError(format!("string: {e}")))
    }
}

fn unsupported<T>(what: &str) -> Result<T> {
    Err(DecodeError(format!(
        "{what} is not supported by the bincode format"
    )))
}

impl<'de> de::Deserializer<'de> for &mut Decoder<'de> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        unsupported("deserialize_any")
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.byte("bool")? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            b => Err(DecodeError(format!("bool: invalid value {b}"))),
        }
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i8(self.byte("i8")? as i8)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i16(self.signed(Width::U16, "i16")? as i16)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i32(self.signed(Width::U32, "i32")? as i32)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i64(self.signed(Width::U64, "i64")? as i64)
    }

    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i128(self.signed(Width::U128, "i128")?)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u8(self.byte("u8")?)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u16(self.varint(Width::U16, "u16")? as u16)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u32(self.varint(Width::U32, "u32")? as u32)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u64(self.varint(Width::U64, "u64")? as u64)
    }

    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u128(self.varint(Width::U128, "u128")?)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_f32(f32::from_le_bytes(self.array("f32")?))
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_f64(f64::from_le_bytes(self.array("f64")?))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let first = self.byte("char")?;
        let width = match first {
            0x00..=0x7f => 1,
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => {
                return Err(DecodeError(format!(
                    "char: invalid first byte {first:#04x}"
                )));
            }
        };
        let mut buf = [first, 0, 0, 0];
        buf[1..width].copy_from_slice(self.take(width - 1, "char")?);
        match std::str::from_utf8(&buf[..width])
            .ok()
            .and_then(|s| s.chars().next())
        {
            Some(c) => visitor.visit_char(c),
            None => Err(DecodeError(format!("char: invalid encoding {buf:02x?}"))),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_borrowed_str(self.str()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        // Copied only once the bytes are known to be there.
        visitor.visit_string(self.str()?.to_owned())
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_borrowed_bytes(self.bytes("bytes")?)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_byte_buf(self.bytes("bytes")?.to_vec())
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.byte("option tag")? {
            0 => visitor.visit_none(),
            1 => visitor.visit_some(self),
            t => Err(DecodeError(format!("option: invalid tag {t}"))),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.len("sequence length")?;
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        visitor.visit_seq(Items { de: self, len })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.len("map length")?;
        visitor.visit_map(Items { de: self, len })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_tuple(fields.len(), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_enum(self)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        unsupported("deserialize_identifier")
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        unsupported("deserialize_ignored_any")
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The elements of a sequence, tuple or struct, or the entries of a map.
struct Items<'a, 'de> {
    de: &'a mut Decoder<'de>,
    len: usize,
}

impl Items<'_, '_> {
    /// The declared count, but never more than the bytes left: a collection that
    /// preallocates from it cannot be driven past what the input can hold.
    fn hint(&self) -> Option<usize> {
        Some(self.len.min(self.de.input.len()))
    }
}

impl<'de> Items<'_, 'de> {
    /// Decodes one item, charging it to the free-item budget if it took no bytes.
    fn item<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value> {
        let before = self.de.input.len();
        let value = seed.deserialize(&mut *self.de)?;
        if self.de.input.len() == before {
            self.de.free_items = self.de.free_items.checked_sub(1).ok_or_else(|| {
                DecodeError(format!(
                    "more than {MAX_FREE_ITEMS} items that take no bytes (a corrupt length?)"
                ))
            })?;
        }
        Ok(value)
    }
}

impl<'de> SeqAccess<'de> for Items<'_, 'de> {
    type Error = DecodeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if self.len == 0 {
            return Ok(None);
        }
        self.len -= 1;
        self.item(seed).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        self.hint()
    }
}

impl<'de> MapAccess<'de> for Items<'_, 'de> {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.len == 0 {
            return Ok(None);
        }
        self.len -= 1;
        self.item(seed).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        self.hint()
    }
}

impl<'de> EnumAccess<'de> for &mut Decoder<'de> {
    type Error = DecodeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let index = self.varint(Width::U32, "enum variant")? as u32;
        let value = seed.deserialize(index.into_deserializer())?;
        Ok((value, self))
    }
}

impl<'de> VariantAccess<'de> for &mut Decoder<'de> {
    type Error = DecodeError;

    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        de::Deserializer::deserialize_tuple(self, fields.len(), visitor)
    }
}
