//! The RocksDB backend's write-back cache stays within its bound, counted in bytes actually
//! allocated: this binary's global allocator counts every live byte the Rust side holds
//! (RocksDB's own memory is C++'s and not counted), and the test compares that count, taken
//! between operations, with the configured capacity while far more rows than fit are written
//! and read.
//!
//! Its own test binary: the allocator counts the whole process, so no other test may run
//! beside this one.
#![cfg(feature = "rocksdb")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use statebackend::{
    KeyGroupRange, KeyedStateBackend, ListStateDescriptor, MapStateDescriptor, RocksDbBackend,
    RocksDbOptions, ValueStateDescriptor,
};

/// Bytes allocated through the global allocator and not freed yet.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call forwards to `System` unchanged; the counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as `alloc`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Writes and reads rows of three states over `keys` keys (far more than fit) and returns the
/// largest growth of the live bytes seen between operations, asserting the cache's own count
/// against the bound after every operation.
fn largest_growth(capacity: usize, keys: u64, operations: u64) -> isize {
    let options = RocksDbOptions {
        write_cache_bytes: capacity,
        ..Default::default()
    };
    let mut b = RocksDbBackend::open(128, KeyGroupRange::all(128).unwrap(), None, options).unwrap();
    let values = b
        .value_state(&ValueStateDescriptor::<u64, (), Vec<u8>>::new("values"))
        .unwrap();
    let lists = b
        .list_state(&ListStateDescriptor::<u64, (), u32>::new("lists"))
        .unwrap();
    let maps = b
        .map_state(&MapStateDescriptor::<u64, (), u16, u64>::new("maps"))
        .unwrap();
    // Whatever the first operations allocate once (RocksDB's Rust-side handles).
    values.put(&mut b, &0, &(), vec![0; 100]).unwrap();
    assert_eq!(values.get(&b, &0, &()).unwrap(), Some(vec![0; 100]));
    let baseline = live();
    let mut largest = 0;
    let mut x = 0x5eed_u64;
    for i in 0..operations {
        // SplitMix64.
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let key = z % keys;
        match i % 6 {
            0 | 1 => values.put(&mut b, &key, &(), vec![key as u8; 100]).unwrap(),
            2 => {
                let found = values.get(&b, &key, &()).unwrap();
                assert!(found.is_none_or(|v| v == vec![key as u8; 100]));
            }
            3 => lists.append(&mut b, &key, &(), i as u32).unwrap(),
            4 => maps.put(&mut b, &key, &(), (i % 7) as u16, i).unwrap(),
            _ => {
                let _ = maps.get(&b, &key, &(), &((i % 7) as u16)).unwrap();
            }
        }
        let stats = b.write_cache_stats().unwrap();
        assert!(stats.charged_bytes <= capacity, "{stats:?}");
        largest = largest.max(live() - baseline);
    }
    let stats = b.write_cache_stats().unwrap();
    assert!(stats.evicted_rows > 0 && stats.rows > 0, "{stats:?}");
    largest
}

#[test]
fn the_cache_holds_no_more_bytes_than_its_capacity() {
    // Transient buffers of one operation (a row key, an encoded value, a victims list).
    const SLACK: isize = 16 << 10;
    for capacity in [64usize << 10, 1 << 20] {
        let largest = largest_growth(capacity, 200_000, 120_000);
        assert!(
            largest <= capacity as isize + SLACK,
            "{largest} bytes live for a cache of {capacity}"
        );
        // The count sees the cache: it fills up to near its bound.
        assert!(
            largest >= capacity as isize / 2,
            "{largest} bytes live for a cache of {capacity}"
        );
    }
}
