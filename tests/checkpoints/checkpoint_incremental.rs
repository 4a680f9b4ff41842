//! Incrementality measured in bytes: after updating 1% of a ~1,000,000-key RocksDB state, the
//! next checkpoint uploads a small fraction of what the first (full) one uploaded.
#![cfg(feature = "rocksdb")]
use crate::common;

use std::sync::Arc;

use common::SplitMix64;
use common::checkpointing::checkpoint;
use statebackend::checkpoint::CheckpointCoordinator;
use statebackend::storage::CheckpointStorage;
use statebackend::{
    AnyBackend, BackendConfig, KeyGroupRange, KeyedStateBackend, Result, ValueStateDescriptor,
};

/// W5's value: 100 bytes from SplitMix64((round << 32) | key).
fn value(key: u64, round: u64) -> Vec<u8> {
    let mut h = SplitMix64::new((round << 32) | key);
    let mut out = Vec::with_capacity(104);
    while out.len() < 100 {
        out.extend_from_slice(&h.next_u64().to_le_bytes());
    }
    out.truncate(100);
    out
}

#[test]
fn one_percent_update_uploads_a_small_fraction() -> Result<()> {
    assert_eq!(
        value(0, 0)[..16],
        [
            0xaf, 0xcd, 0x1d, 0x7b, 0x39, 0xa8, 0x20, 0xe2, 0xf4, 0x65, 0xb9, 0xa1, 0x6a, 0x9e,
            0x78, 0x6e
        ]
    );
    const KEYS: u64 = 1_000_000;
    let tmp = tempfile::tempdir().unwrap();
    let storage: Arc<dyn CheckpointStorage> = crate::root::open(tmp.path().join("root"))?;
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 3)?;
    let mut b = AnyBackend::open(&BackendConfig::rocksdb(128, KeyGroupRange::all(128)?))?;
    let state = b.value_state(&ValueStateDescriptor::<i64, (), Vec<u8>>::new("values"))?;
    for k in 0..KEYS {
        state.put(&mut b, &(k as i64), &(), value(k, 0))?;
    }
    let (_, full) = checkpoint(&mut b, &mut coordinator, 1, |_| Ok(()))?;

    let mut g = SplitMix64::new(47);
    for _ in 0..KEYS / 100 {
        let k = g.below(KEYS);
        state.put(&mut b, &(k as i64), &(), value(k, 1))?;
    }
    let (meta, step) = checkpoint(&mut b, &mut coordinator, 2, |_| Ok(()))?;
    let ratio = step.bytes_uploaded as f64 / full.bytes_uploaded as f64;
    println!(
        "full checkpoint: {} bytes in {} files; after 1% updates: {} bytes in {} files ({:.2}%), {} files reused",
        full.bytes_uploaded,
        full.files_uploaded,
        step.bytes_uploaded,
        step.files_uploaded,
        ratio * 100.0,
        step.files_reused
    );
    assert!(
        full.bytes_uploaded > 100_000_000,
        "the full state is ~110 MB: {full:?}"
    );
    assert!(
        ratio <= 0.05,
        "incremental checkpoint uploaded {:.2}% of the full one",
        ratio * 100.0
    );
    assert!(step.files_reused > 0);
    assert_eq!(meta.total_bytes(), step.bytes_uploaded + step.bytes_reused);
    Ok(())
}
