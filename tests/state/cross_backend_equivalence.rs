//! The same random operation sequence on the heap and the RocksDB backend: every read agrees.
#![cfg(feature = "rocksdb")]
use crate::common;

use common::model::{Handles, OpGenerator, apply};
use statebackend::{HeapBackend, KeyGroupRange, KeyedStateBackend, Result, RocksDbBackend};

fn run(seed: u64, ops: usize, range: KeyGroupRange) -> Result<()> {
    let mut heap = HeapBackend::new(128, range)?;
    let mut rocks = RocksDbBackend::open(128, range, None, Default::default())?;
    let heap_handles = Handles::register(&mut heap)?;
    let rocks_handles = Handles::register(&mut rocks)?;
    let mut generator =
        OpGenerator::new(seed, 60, |k| range.contains(heap.key_group_of(k).unwrap()));
    for step in 0..ops {
        let op = generator.next_op();
        let from_heap = apply(&mut heap, &heap_handles, &op)?;
        let from_rocks = apply(&mut rocks, &rocks_handles, &op)?;
        assert_eq!(from_heap, from_rocks, "seed {seed}, step {step}: {op:?}");
    }
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
