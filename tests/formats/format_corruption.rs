//! Corrupt, truncated, extended, swapped and hostile files: every case is a typed error (or,
//! where the damage misses everything that matters, exactly the original state), never a
//! panic, never wrong state, never a huge allocation.
use crate::common;

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use common::checkpointing::{config, run_ops};
use common::model::{Handles, Model, OpGenerator};
use proptest::prelude::*;
use statebackend::checkpoint::SnapshotMetadata;
use statebackend::savepoint::data_file::DataFileReader;
use statebackend::savepoint::{complete_savepoint, read_savepoint, restore_savepoint};
use statebackend::storage::{CheckpointStorage, LocalDirStorage};
use statebackend::{AnyBackend, BackendKind, Error, KeyGroupRange, Result};

type Rows = Vec<(u16, u32, Vec<u8>, Vec<u8>)>;

/// A heap savepoint of `parallelism` instances in `dir`; returns the `_metadata` bytes.
fn savepoint(dir: &Path, parallelism: u32) -> Result<Vec<u8>> {
    let storage = LocalDirStorage::new(dir)?;
    let mut instances = Vec::new();
    for i in 0..parallelism {
        let range = KeyGroupRange::for_operator(128, parallelism, i)?;
        let mut b = AnyBackend::open(&config(BackendKind::Heap, range))?;
        let h = Handles::register(&mut b)?;
        let mut g = OpGenerator::new(3 + u64::from(i), 30, |k| {
            range.contains(statebackend::KeyedStateBackend::key_group_of(&b, k).unwrap())
        });
        run_ops(&mut b, &h, &mut Model::default(), &mut g, 400)?;
        instances.push(b.savepoint()?.write(&storage)?);
    }
    Ok(complete_savepoint(&storage, instances)?.encode())
}

/// Every row of a data file, or the first error.
fn read_all(bytes: Vec<u8>) -> Result<Rows> {
    let mut reader = DataFileReader::new(Cursor::new(bytes), "data")?;
    let mut rows = Vec::new();
    reader.for_each_row(&mut |g, s, k, v| {
        rows.push((g, s, k.to_vec(), v.to_vec()));
        Ok(())
    })?;
    Ok(rows)
}

fn data_file(dir: &Path) -> Result<Vec<u8>> {
    let storage = LocalDirStorage::new(dir)?;
    let meta = read_savepoint(&storage)?;
    storage.get(&meta.instances[0].files[0].path)
}

#[test]
fn every_single_bit_flip_of_metadata_is_detected() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let good = savepoint(tmp.path(), 2)?;
    SnapshotMetadata::decode(&good, "_metadata")?;
    let mut cases = 0;
    for i in 0..good.len() {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[i] ^= 1 << bit;
            assert!(
                SnapshotMetadata::decode(&bad, "_metadata").is_err(),
                "byte {i} bit {bit}"
            );
            cases += 1;
        }
    }
    for len in 0..good.len() {
        assert!(
            SnapshotMetadata::decode(&good[..len], "_metadata").is_err(),
            "truncated to {len}"
        );
        cases += 1;
    }
    for extra in [&[0u8][..], &[0xff; 7], b"garbage"] {
        let mut longer = good.clone();
        longer.extend_from_slice(extra);
        assert!(SnapshotMetadata::decode(&longer, "_metadata").is_err());
        cases += 1;
    }
    println!(
        "metadata: {} bytes, {cases} corrupted variants rejected",
        good.len()
    );
    Ok(())
}

#[test]
fn data_file_damage_is_an_error_or_changes_nothing() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    savepoint(tmp.path(), 1)?;
    let good = data_file(tmp.path())?;
    let original = read_all(good.clone())?;
    assert!(original.len() > 100);
    let (mut flips, mut truncations, mut silent) = (0, 0, 0);
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 1 << (i % 8);
        match read_all(bad) {
            Err(_) => {}
            Ok(rows) => {
                assert_eq!(rows, original, "flip at byte {i} returned different rows");
                silent += 1;
            }
        }
        flips += 1;
    }
    for len in (0..good.len()).step_by(3) {
        assert!(
            read_all(good[..len].to_vec()).is_err(),
            "truncated to {len}"
        );
        truncations += 1;
    }
    let mut longer = good.clone();
    longer.extend_from_slice(b"appended garbage");
    assert!(read_all(longer).is_err());
    println!(
        "data file: {} bytes, {flips} bit flips ({silent} harmless), {truncations} truncations",
        good.len()
    );
    Ok(())
}

#[test]
fn restore_names_the_corrupt_or_swapped_file() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    savepoint(tmp.path(), 2)?;
    let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(tmp.path())?);
    let meta = read_savepoint(storage.as_ref())?;
    let (a, b) = (&meta.instances[0].files[0], &meta.instances[1].files[0]);
    let (bytes_a, bytes_b) = (storage.get(&a.path)?, storage.get(&b.path)?);
    let all = config(BackendKind::Heap, KeyGroupRange::all(128)?);

    // One flipped bit in the middle of a data file.
    let mut bad = bytes_a.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x10;
    storage.put(&a.path, &bad)?;
    match restore_savepoint(storage.as_ref(), &meta, &all) {
        Err(Error::ChecksumMismatch { file, .. }) => assert_eq!(file, a.path.to_string()),
        other => panic!("expected a checksum error, got {:?}", other.err()),
    }
    // The two data files swapped.
    storage.put(&a.path, &bytes_b)?;
    storage.put(&b.path, &bytes_a)?;
    let swapped = restore_savepoint(storage.as_ref(), &meta, &all);
    assert!(
        matches!(
            swapped,
            Err(Error::SizeMismatch { .. } | Error::ChecksumMismatch { .. })
        ),
        "{:?}",
        swapped.err()
    );
    // A missing data file.
    storage.delete(&a.path)?;
    assert!(matches!(
        restore_savepoint(storage.as_ref(), &meta, &all),
        Err(Error::MissingFile { ref file }) if file.contains(a.path.as_str())
    ));
    Ok(())
}

/// Re-seals patched metadata bytes with a valid crc, so only the hostile field is wrong.
fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
    let n = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..n]);
    bytes[n..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn patch(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern present");
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    reseal(out)
}

#[test]
fn hostile_metadata_is_rejected_before_any_file_is_touched() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let good = savepoint(tmp.path(), 1)?;
    let meta = SnapshotMetadata::decode(&good, "_metadata")?;
    let name = meta.instances[0].files[0].path.to_string();
    let n = name.len();
    let hostile: [(&str, String); 4] = [
        ("parent", format!("../{}", &name[3..])),
        ("absolute", format!("/{}", &name[1..])),
        ("dot", format!("./{}", &name[2..])),
        ("backslash", format!("a\\{}", &name[2..])),
    ];
    for (what, path) in hostile {
        assert_eq!(path.len(), n);
        let bad = patch(&good, name.as_bytes(), path.as_bytes());
        match SnapshotMetadata::decode(&bad, "_metadata") {
            Err(Error::InvalidPath { .. }) => {}
            other => panic!("{what}: expected InvalidPath, got {other:?}"),
        }
    }
    // Enormous instance count: rejected by the count check, not by an allocation failure.
    let count_at = 4 + 2 + 4 + 1 + 8 + 8;
    let mut bad = good.clone();
    bad[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        SnapshotMetadata::decode(&reseal(bad), "_metadata"),
        Err(Error::Corrupt { .. })
    ));
    // An unknown format version is its own error.
    let mut bad = good.clone();
    bad[4] = 9;
    assert!(matches!(
        SnapshotMetadata::decode(&bad, "_metadata"),
        Err(Error::UnsupportedFormat { .. })
    ));
    Ok(())
}

#[cfg(unix)]
#[test]
fn a_symlink_in_a_savepoint_is_not_followed() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sp");
    savepoint(&dir, 1)?;
    let storage = LocalDirStorage::new(&dir)?;
    let meta = read_savepoint(&storage)?;
    let file = dir.join(meta.instances[0].files[0].path.as_str());
    let outside = tmp.path().join("outside.sbdf");
    std::fs::rename(&file, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &file).unwrap();
    let restored = restore_savepoint(
        &storage,
        &meta,
        &config(BackendKind::Heap, KeyGroupRange::all(128)?),
    );
    assert!(
        matches!(restored, Err(Error::InvalidPath { .. })),
        "{:?}",
        restored.err()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn random_bytes_never_panic_the_readers(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = SnapshotMetadata::decode(&bytes, "_metadata");
        let _ = read_all(bytes);
    }

    #[test]
    fn random_bytes_after_a_valid_prefix_never_panic(tail in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut bytes = b"SBDF\x01\x00".to_vec();
        bytes.extend_from_slice(&tail);
        let _ = read_all(bytes.clone());
        let mut meta = b"SBMD\x01\x00".to_vec();
        meta.extend_from_slice(&tail);
        let _ = SnapshotMetadata::decode(&meta, "_metadata");
    }
}
