//! The same random operation sequence on every backend: each read agrees with the reference
//! backend's (canonical rows in ordered maps, the specification the others are held to).
use crate::common;

use common::model::{Handles, OpGenerator, apply};
use statebackend::backends::reference::ReferenceBackend;
use statebackend::{HeapBackend, KeyGroupRange, KeyedStateBackend, Result};

/// Runs `ops` random operations on `backend` and on a reference backend side by side.
fn agrees_with_reference<B: KeyedStateBackend>(
    mut backend: B,
    seed: u64,
    ops: usize,
    range: KeyGroupRange,
) -> Result<()> {
    let mut reference = ReferenceBackend::new(128, range)?;
    let handles = Handles::register(&mut backend)?;
    let reference_handles = Handles::register(&mut reference)?;
    let mut generator = OpGenerator::new(seed, 60, |k| {
        range.contains(reference.key_group_of(k).unwrap())
    });
    for step in 0..ops {
        let op = generator.next_op();
        let expected = apply(&mut reference, &reference_handles, &op)?;
        let actual = apply(&mut backend, &handles, &op)?;
        assert_eq!(actual, expected, "seed {seed}, step {step}: {op:?}");
    }
    Ok(())
}

/// Every backend this build has, each fresh for `range`.
fn run(seed: u64, ops: usize, range: KeyGroupRange) -> Result<()> {
    agrees_with_reference(HeapBackend::new(128, range)?, seed, ops, range)?;
    #[cfg(feature = "rocksdb")]
    agrees_with_reference(
        statebackend::RocksDbBackend::open(128, range, None, Default::default())?,
        seed,
        ops,
        range,
    )?;
    Ok(())
}

#[test]
fn backends_agree_on_every_read() -> Result<()> {
    for seed in 100..104 {
        run(seed, 3_000, KeyGroupRange::all(128)?)?;
    }
    Ok(())
}

#[test]
fn backends_agree_in_a_partial_range() -> Result<()> {
    run(7, 3_000, KeyGroupRange::for_operator(128, 3, 2)?)
}
