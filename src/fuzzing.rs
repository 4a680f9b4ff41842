//! Entry points for the cargo-fuzz targets in `fuzz/` and for `tests/formats/fuzz_corpus.rs`, which
//! replays their committed corpus in every `cargo test`. Hidden from the docs and not part of
//! the API: the fuzzers and the regression test must drive the very same code, and some of it
//! (restoring a data file into a heap backend) is crate-private.
//!
//! Each function feeds arbitrary bytes to a reader and returns what the reader returned. The
//! property under test is that it returns at all: no panic, no allocation driven by an
//! unchecked length, only a typed [`Error`] or a value. The functions panic only when a value
//! they got back breaks a property every valid result has (a decoded `_metadata` re-encodes to
//! the same bytes; a parsed path stays valid under `join`, `parent` and `temporary_path`):
//! that is a bug too, and a panic is how a fuzzer reports one.
//!
//! The readers check a crc32 before they parse what it covers, so almost every mutation a
//! fuzzer makes would stop at the first checksum and the parsing behind it would never run.
//! The format functions therefore read every input twice: as it is, and *resealed*, with each
//! checksum the format has recomputed over the bytes it covers (as far as the input's own
//! lengths locate them).

use std::io::Cursor;

use crate::backends::config::BackendConfig;
use crate::backends::heap::HeapBackend;
use crate::backends::interface::CheckpointedBackend;
use crate::model::error::{Error, Result};
use crate::model::format::data_file::DataFileReader;
use crate::model::format::layout::{checkpoint_dir_name, parse_checkpoint_dir};
use crate::model::format::view::DataFileRows;
use crate::model::state::backend::KeyedStateBackend;
use crate::model::state::{
    ListStateDescriptor, MapStateDescriptor, ReducingStateDescriptor, ValueStateDescriptor,
};
use crate::runtime::checkpoint::SnapshotMetadata;
use crate::storage::{StoragePath, is_temporary, temporary_path};

/// What reading one input gave: the input as it is, then resealed.
#[derive(Debug)]
pub struct Outcome<T> {
    /// The result for the input's own bytes.
    pub raw: Result<T>,
    /// The result for the input with its checksums recomputed.
    pub resealed: Result<T>,
}

impl<T> Outcome<T> {
    /// Both results, raw first.
    pub fn results(&self) -> [&Result<T>; 2] {
        [&self.raw, &self.resealed]
    }
}

/// Decodes `data` as a checkpoint or savepoint `_metadata`.
///
/// # Panics
/// If a decoded `_metadata` does not re-encode to exactly `data`: the format has one encoding
/// per value, so any difference means the decoder accepted something it misread.
pub fn metadata(data: &[u8]) -> Outcome<SnapshotMetadata> {
    let read = |bytes: &[u8]| {
        let decoded = SnapshotMetadata::decode(bytes, "_metadata");
        if let Ok(meta) = &decoded {
            assert!(
                meta.encode() == bytes,
                "a decoded _metadata re-encodes to other bytes"
            );
        }
        decoded
    };
    Outcome {
        raw: read(data),
        resealed: read(&reseal_metadata(data)),
    }
}

/// Reads `data` as a canonical data file: header, footer and index, then every row of every
/// indexed key group; then restores it into a heap backend that owns the file's key groups and
/// registers the typed states of the committed golden savepoint
/// (`tests/fixtures/savepoint-v1`), which decodes their rows. Returns the number of rows read.
pub fn data_file(data: &[u8]) -> Outcome<u64> {
    Outcome {
        raw: read_data_file(data),
        resealed: read_data_file(&reseal_data_file(data)),
    }
}

/// Validates `data` (lossily as UTF-8) as a [`StoragePath`] and as a checkpoint directory name.
///
/// # Panics
/// If an accepted path is not kept verbatim, or a path derived from it (its components, its
/// parent, its temporary sibling, a join) is invalid or misclassified; or if a parsed
/// checkpoint directory name is not the canonical name of its id.
pub fn storage_path(data: &[u8]) -> Result<StoragePath> {
    let text = String::from_utf8_lossy(data);
    if let Some(id) = parse_checkpoint_dir(&text) {
        assert_eq!(
            checkpoint_dir_name(id),
            text,
            "non-canonical checkpoint dir"
        );
    }
    let path = StoragePath::parse(&text)?;
    assert_eq!(path.as_str(), text, "a parsed path differs from its input");
    for component in path.components() {
        StoragePath::parse(component).expect("components of a valid path parse");
    }
    if let Some(parent) = path.parent() {
        assert!(path.starts_with(&parent), "a path lies below its parent");
        let rejoined = parent.join(path.file_name()).expect("parent/name rejoins");
        assert_eq!(rejoined, path);
    }
    let nonce = data
        .iter()
        .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(*b));
    if let Ok(temp) = temporary_path(&path, nonce) {
        assert!(is_temporary(&temp), "{temp} is not recognised as temporary");
        assert_eq!(temp.parent(), path.parent(), "{temp} left its directory");
    }
    // Only a valid name can be recognised as temporary; recognising it must not panic.
    let _ = is_temporary(&path);
    if let Ok(child) = path.join("_metadata") {
        assert!(child.starts_with(&path));
    }
    Ok(path)
}

fn read_data_file(data: &[u8]) -> Result<u64> {
    let mut reader = DataFileReader::new(Cursor::new(data), "fuzz.sbdf")?;
    let mut rows = 0u64;
    reader.for_each_row(&mut |_, _, _, _| {
        rows += 1;
        Ok(())
    })?;
    let header = reader.header().clone();
    let mut backend = HeapBackend::restore_rows(
        &BackendConfig::heap(header.max_parallelism, header.key_groups),
        &mut DataFileRows::new(vec![reader], header.key_groups)?,
    )?;
    let declared: Vec<String> = backend.states().into_iter().map(|s| s.name).collect();
    let has = |name: &str| declared.iter().any(|d| d == name);
    // The golden savepoint's states: the seeds are written from them, so mutated seeds reach
    // the typed decoding of keys, namespaces, list elements and map entries.
    if has("balances") {
        backend.value_state(&ValueStateDescriptor::<String, (), i64>::new("balances"))?;
    }
    if has("events") {
        backend.list_state(&ListStateDescriptor::<u64, (), String>::new("events"))?;
    }
    if has("prices") {
        backend.map_state(&MapStateDescriptor::<String, u32, u16, u64>::new("prices"))?;
    }
    // The states of the tests' random-operation model (`tests/common/model.rs`), which the
    // checkpoint and savepoint seeds hold.
    if has("value") {
        backend.value_state(&ValueStateDescriptor::<String, u8, i64>::new("value"))?;
    }
    if has("list") {
        backend.list_state(&ListStateDescriptor::<String, u8, String>::new("list"))?;
    }
    if has("map") {
        backend.map_state(&MapStateDescriptor::<String, u8, u16, Vec<u8>>::new("map"))?;
    }
    if has("reducing") {
        backend.reducing_state(&ReducingStateDescriptor::<String, u8, i64>::new(
            "reducing",
            |a: &i64, b: &i64| a.wrapping_add(*b),
        ))?;
    }
    Ok(rows)
}

/// `_metadata` with its trailing crc32 recomputed.
fn reseal_metadata(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    if let Some(body) = out.len().checked_sub(4) {
        seal(&mut out, 0, body);
    }
    out
}

/// A data file with the crc32 of its header, every block it can walk, its index and its
/// footer recomputed, each located by the lengths and offsets the input itself declares.
fn reseal_data_file(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let len = out.len();
    let Some(footer) = len.checked_sub(28) else {
        return out;
    };
    let index_offset = usize::try_from(read_u64(&out, footer)).unwrap_or(usize::MAX);
    let index_offset = index_offset.min(footer);
    // Header: magic, version, body length, body, crc.
    let mut pos = usize::MAX;
    if let Some(header_len) = read_u32(&out, 6) {
        let end = 10usize.saturating_add(header_len as usize);
        if end.saturating_add(4) <= index_offset {
            seal(&mut out, 0, end);
            pos = end + 4;
        }
    }
    // Blocks: length, body, crc of the body; consecutive up to the index.
    while let Some(block_len) = read_u32(&out, pos) {
        let body = pos + 4;
        let end = body.saturating_add(block_len as usize);
        if end.saturating_add(4) > index_offset {
            break;
        }
        seal(&mut out, body, end);
        pos = end + 4;
    }
    // Index: everything between the index offset and the footer, crc last.
    if footer >= index_offset + 4 {
        seal(&mut out, index_offset, footer - 4);
    }
    // Footer: crc32 of its first 20 bytes.
    seal(&mut out, footer, footer + 20);
    out
}

/// Writes the crc32 of `data[from..to]` at `to`, if the four bytes fit.
fn seal(data: &mut [u8], from: usize, to: usize) {
    if from <= to && to.saturating_add(4) <= data.len() {
        let crc = crc32fast::hash(&data[from..to]);
        data[to..to + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn read_u64(data: &[u8], at: usize) -> u64 {
    data.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(u64::MAX, u64::from_le_bytes)
}

/// Whether `e` is one of the errors a reader of in-memory bytes may return. Anything else (an
/// I/O error from a read past the end, say) means a length escaped its check.
pub fn is_format_error(e: &Error) -> bool {
    matches!(
        e,
        Error::Corrupt { .. }
            | Error::ChecksumMismatch { .. }
            | Error::UnsupportedFormat { .. }
            | Error::InvalidPath { .. }
            | Error::InvalidMaxParallelism { .. }
            | Error::InvalidOperator { .. }
            | Error::InvalidStateName { .. }
            | Error::StateMismatch { .. }
            | Error::Decode { .. }
            | Error::Incompatible { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resealing_repairs_only_checksums() {
        let meta = SnapshotMetadata {
            kind: crate::runtime::checkpoint::SnapshotKind::Savepoint,
            id: 7,
            created_ms: 1,
            instances: Vec::new(),
            engine: Default::default(),
        };
        let good = meta.encode();
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            metadata(&bad).raw,
            Err(Error::ChecksumMismatch { .. })
        ));
        assert_eq!(metadata(&bad).resealed.unwrap(), meta);
        // A changed id behind a recomputed crc decodes as that id.
        let mut other = good.clone();
        other[11] = 8;
        assert_eq!(metadata(&other).resealed.unwrap().id, 8);
    }

    #[test]
    fn short_and_empty_inputs_are_errors() {
        for data in [&b""[..], b"SBDF", &[0xff; 40]] {
            let outcome = data_file(data);
            for r in outcome.results() {
                assert!(is_format_error(r.as_ref().unwrap_err()));
            }
            assert!(metadata(data).raw.is_err());
        }
        assert!(storage_path(b"").is_err());
        assert_eq!(
            storage_path(b"chk-0000000001/_metadata").unwrap().as_str(),
            "chk-0000000001/_metadata"
        );
    }
}
