//! Decoding stored rows into JSON by the type names a state recorded
//! ([`StateInfo`]'s `std::any::type_name` strings).
//!
//! Known types: the integers (`i8`..`i64`, `u8`..`u64`, `isize`, `usize`), `f32`, `f64`,
//! `bool`, `char`, `alloc::string::String` and `&str` (JSON strings), `()` (`null`) and
//! `alloc::vec::Vec<u8>` (a hex string). Anything else, or bytes that do not decode as the
//! recorded type, become `{"hex": "<raw bytes>"}`.
//!
//! A row key is `codec(key) ++ codec(namespace) [++ codec(map user key)]` (see
//! [`crate::model::state::rows`]). Only a known type says where its encoding ends, so when the key's
//! type is unknown the whole row key is shown as `{"hex": ...}` under `key` and the namespace
//! (and user key) are left out; likewise an unknown namespace type of a map state swallows the
//! user key.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::model::codec::{BincodeCodec, Codec};
use crate::model::key_group::KeyGroup;
use crate::model::state::{StateInfo, StateKind};

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `{"hex": "<bytes>"}`: bytes of a type the tool cannot decode.
pub fn raw(bytes: &[u8]) -> Value {
    json!({ "hex": hex(bytes) })
}

fn prefix<T: DeserializeOwned>(
    bytes: &[u8],
    to_json: impl FnOnce(T) -> Value,
) -> Option<(Value, usize)> {
    BincodeCodec
        .decode_prefix::<T>(bytes)
        .ok()
        .map(|(v, used)| (to_json(v), used))
}

fn float(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or_else(|| Value::String(v.to_string()), Value::Number)
}

fn is_string_type(type_name: &str) -> bool {
    matches!(
        type_name,
        "alloc::string::String" | "std::string::String" | "&str"
    )
}

/// Decodes one value of `type_name` from the front of `bytes`: the JSON value and the number
/// of bytes it used, or `None` for an unknown type or bytes that do not decode.
pub fn decode_prefix(type_name: &str, bytes: &[u8]) -> Option<(Value, usize)> {
    match type_name {
        "i8" => prefix(bytes, |v: i8| json!(v)),
        "i16" => prefix(bytes, |v: i16| json!(v)),
        "i32" => prefix(bytes, |v: i32| json!(v)),
        "i64" => prefix(bytes, |v: i64| json!(v)),
        "isize" => prefix(bytes, |v: i64| json!(v)),
        "u8" => prefix(bytes, |v: u8| json!(v)),
        "u16" => prefix(bytes, |v: u16| json!(v)),
        "u32" => prefix(bytes, |v: u32| json!(v)),
        "u64" => prefix(bytes, |v: u64| json!(v)),
        "usize" => prefix(bytes, |v: u64| json!(v)),
        "f32" => prefix(bytes, |v: f32| float(f64::from(v))),
        "f64" => prefix(bytes, float),
        "bool" => prefix(bytes, |v: bool| json!(v)),
        "char" => prefix(bytes, |v: char| json!(v)),
        "()" => prefix(bytes, |()| Value::Null),
        "alloc::vec::Vec<u8>" | "std::vec::Vec<u8>" => {
            prefix(bytes, |v: Vec<u8>| Value::String(hex(&v)))
        }
        t if is_string_type(t) => prefix(bytes, |v: String| Value::String(v)),
        _ => None,
    }
}

/// Decodes exactly one value of `type_name` spanning all of `bytes`; `{"hex": ...}` for an
/// unknown type, bytes that do not decode, or bytes left over.
pub fn decode_exact(type_name: &str, bytes: &[u8]) -> Value {
    match decode_prefix(type_name, bytes) {
        Some((value, used)) if used == bytes.len() => value,
        _ => raw(bytes),
    }
}

/// A list state's value: the elements, split at their `u32` little-endian length prefixes and
/// decoded one by one; `{"hex": ...}` for the whole value if the prefixes do not add up.
pub fn decode_list(element_type: &str, bytes: &[u8]) -> Value {
    decode_list_with(bytes, |element| decode_exact(element_type, element))
}

/// A value of a state with a time to live: `{"timestamp": t, "value": v}`, the timestamp
/// being the value's first 8 bytes (little-endian); `{"hex": ...}` if it is shorter.
fn decode_stamped(type_name: &str, bytes: &[u8]) -> Value {
    match bytes.split_first_chunk::<8>() {
        Some((stamp, rest)) => json!({
            "timestamp": u64::from_le_bytes(*stamp),
            "value": decode_exact(type_name, rest),
        }),
        None => raw(bytes),
    }
}

/// The elements of a list value, each decoded by `element`.
fn decode_list_with(bytes: &[u8], element: impl Fn(&[u8]) -> Value) -> Value {
    let mut elements = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return raw(bytes);
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > tail.len() {
            return raw(bytes);
        }
        let (one, tail) = tail.split_at(len);
        elements.push(element(one));
        rest = tail;
    }
    Value::Array(elements)
}

/// One row of a state as `statectl dump` prints it (a JSON line).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DumpRow {
    /// The row's key group.
    pub key_group: KeyGroup,
    /// The key; `{"hex": ...}` of the whole row key when the key type is unknown.
    pub key: Value,
    /// The namespace; absent when it cannot be told apart from the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Value>,
    /// The map user key (map states only); absent when it cannot be told apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_key: Option<Value>,
    /// The value (a JSON array of the elements for list states).
    pub value: Value,
}

/// Decodes one row (`row_key` without the key-group prefix) of the state `info`.
pub fn decode_row(info: &StateInfo, key_group: KeyGroup, row_key: &[u8], value: &[u8]) -> DumpRow {
    let is_map = info.kind == StateKind::Map;
    let (key, namespace, user_key) = match decode_prefix(&info.key_type, row_key) {
        None => (raw(row_key), None, None),
        Some((key, used_k)) => {
            let rest = &row_key[used_k..];
            if is_map {
                match decode_prefix(&info.namespace_type, rest) {
                    None => (key, Some(raw(rest)), None),
                    Some((ns, used_n)) => (
                        key,
                        Some(ns),
                        Some(decode_exact(&info.user_key_type, &rest[used_n..])),
                    ),
                }
            } else {
                (key, Some(decode_exact(&info.namespace_type, rest)), None)
            }
        }
    };
    // A state with a time to live stores each value (list element) after its timestamp.
    let value = match (info.kind == StateKind::List, info.ttl.is_some()) {
        (true, false) => decode_list(&info.value_type, value),
        (true, true) => decode_list_with(value, |e| decode_stamped(&info.value_type, e)),
        (false, false) => decode_exact(&info.value_type, value),
        (false, true) => decode_stamped(&info.value_type, value),
    };
    DumpRow {
        key_group,
        key,
        namespace,
        user_key,
        value,
    }
}
