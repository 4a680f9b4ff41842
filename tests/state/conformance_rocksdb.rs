//! The conformance suite on the RocksDB backend, unchanged: with the default memtable, with the
//! hash memtable, and with a small write-back cache.
#![cfg(feature = "rocksdb")]
use crate::conformance_suite;

conformance_suite!(|max_parallelism, range| {
    statebackend::RocksDbBackend::open(max_parallelism, range, None, Default::default()).unwrap()
});

mod hash_memtable {
    use crate::conformance_suite;

    conformance_suite!(|max_parallelism, range| {
        let options = statebackend::RocksDbOptions {
            memtable: statebackend::rocks::Memtable::HashLinkList { buckets: 1 << 12 },
            ..Default::default()
        };
        statebackend::RocksDbBackend::open(max_parallelism, range, None, options).unwrap()
    });
}

/// With a write-back cache small enough to evict on almost every operation, so that every
/// path (hit, miss, eviction of dirty rows, flush before iteration) runs.
mod write_cache {
    use crate::conformance_suite;

    conformance_suite!(|max_parallelism, range| {
        let options = statebackend::RocksDbOptions {
            write_cache_bytes: 4 << 10,
            ..Default::default()
        };
        statebackend::RocksDbBackend::open(max_parallelism, range, None, options).unwrap()
    });
}
