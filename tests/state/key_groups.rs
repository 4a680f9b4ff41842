//! Key-group assignment: pinned across processes, ranges partition every parallelism.

use proptest::prelude::*;
use statebackend::{Error, HeapBackend, KeyGroupAssigner, KeyGroupRange, KeyedStateBackend};

/// Known keys pinned to their key groups (max parallelism 128). These values are part of the
/// format: a change here means every savepoint and RocksDB directory would move keys.
#[test]
fn known_keys_map_to_pinned_key_groups() -> statebackend::Result<()> {
    let b = HeapBackend::new(128, KeyGroupRange::all(128)?)?;
    // Strings (bincode: varint length + UTF-8 bytes).
    assert_eq!(b.key_group_of(&"alice".to_string())?, PINNED_ALICE);
    assert_eq!(b.key_group_of(&"bob".to_string())?, PINNED_BOB);
    // Integers (bincode standard: zig-zag varint for signed, varint for unsigned).
    assert_eq!(b.key_group_of(&0i64)?, PINNED_I64_0);
    assert_eq!(b.key_group_of(&42u64)?, PINNED_U64_42);
    // The hash is over the encoding: the same bytes give the same key group.
    let assigner = KeyGroupAssigner::new(128)?;
    assert_eq!(
        assigner.key_group_of_bytes(&[5, b'a', b'l', b'i', b'c', b'e']),
        PINNED_ALICE
    );
    assert_eq!(assigner.key_group_of_bytes(&[0]), PINNED_I64_0);
    Ok(())
}

// Computed with the independent Python implementation in docs/key-groups.md.
const PINNED_ALICE: u16 = 105;
const PINNED_BOB: u16 = 76;
const PINNED_I64_0: u16 = 55;
const PINNED_U64_42: u16 = 28;

#[test]
fn max_parallelism_bounds_are_checked() {
    for bad in [0, 32769, u32::MAX] {
        assert!(matches!(
            KeyGroupAssigner::new(bad),
            Err(Error::InvalidMaxParallelism { max_parallelism }) if max_parallelism == bad
        ));
        assert!(matches!(
            HeapBackend::new(bad, KeyGroupRange::new(0, 0).unwrap()),
            Err(Error::InvalidMaxParallelism { .. })
        ));
        assert!(KeyGroupRange::for_operator(bad, 1, 0).is_err());
    }
    assert!(KeyGroupAssigner::new(1).is_ok());
    assert!(KeyGroupAssigner::new(32768).is_ok());
    assert!(matches!(
        KeyGroupRange::for_operator(128, 0, 0),
        Err(Error::InvalidOperator { .. })
    ));
    assert!(matches!(
        KeyGroupRange::for_operator(128, 129, 0),
        Err(Error::InvalidOperator { .. })
    ));
    assert!(matches!(
        KeyGroupRange::for_operator(128, 4, 4),
        Err(Error::InvalidOperator { .. })
    ));
    assert!(matches!(
        HeapBackend::new(64, KeyGroupRange::all(128).unwrap()),
        Err(Error::InvalidOperator { .. })
    ));
}

#[test]
fn ranges_partition_every_parallelism_of_128() {
    for p in 1..=128 {
        check_partition(128, p);
    }
}

fn check_partition(max_parallelism: u32, parallelism: u32) {
    let mut next = 0;
    for i in 0..parallelism {
        let r = KeyGroupRange::for_operator(max_parallelism, parallelism, i).unwrap();
        assert_eq!(
            r.start(),
            next,
            "contiguous at operator {i} of {parallelism}"
        );
        assert!(!r.is_empty(), "operator {i} of {parallelism} owns nothing");
        for g in r.iter() {
            assert_eq!(
                KeyGroupRange::operator_for_key_group(max_parallelism, parallelism, g).unwrap(),
                i
            );
        }
        next = r.end();
    }
    assert_eq!(next, max_parallelism, "ranges cover all key groups");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn ranges_partition_any_parallelism(max_parallelism in 1u32..=32768, p_seed in any::<u32>()) {
        let parallelism = 1 + p_seed % max_parallelism;
        check_partition(max_parallelism, parallelism);
    }

    #[test]
    fn key_groups_are_within_bounds(max_parallelism in 1u32..=32768, key in any::<Vec<u8>>()) {
        let a = KeyGroupAssigner::new(max_parallelism).unwrap();
        prop_assert!(u32::from(a.key_group_of_bytes(&key)) < max_parallelism);
    }
}
